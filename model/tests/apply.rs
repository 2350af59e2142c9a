//! `apply`: every command, every rejection, idempotency, and determinism (proptest).

use corral_model::*;
use proptest::prelude::*;

const T0: Millis = 1_700_000_000_000;

fn run(state: &mut State, command: Command) -> ApplyResult {
    apply(state, &Proposal::new(command, T0))
}

fn create_region(id: &str, org: &str, name: &str) -> Command {
    Command::CreateRegion(NewRegion {
        proxy_url: Some("https://proxy.example.com".into()),
        proxy_api_key_hash: Some("h".into()),
        ..NewRegion::new(id, org, name, RegionType::Custom)
    })
}

fn create_runner(id: &str, region: &str, name: &str, cpu: u64) -> Command {
    Command::CreateRunner(NewRunner {
        id: id.into(),
        region_id: region.into(),
        name: name.into(),
        api_key_hash: format!("k-{id}"),
        api_key_hint: "k…".into(),
        api_version: "2".into(),
        domain: None,
        api_url: None,
        proxy_url: None,
        capacity: Resources { cpu, memory_gib: cpu * 2, disk_gib: cpu * 10, gpu: 0 },
        tags: Default::default(),
        max_sandboxes: None,
    })
}

fn placement(sandbox: &str, region: &str, runner: &str, cpu: u64) -> Placement {
    Placement {
        sandbox_id: sandbox.into(),
        organization_id: "org".into(),
        target: "r".into(),
        region_id: region.into(),
        runner_id: runner.into(),
        resources: Resources { cpu, memory_gib: cpu, disk_gib: cpu, gpu: 0 },
        labels: Default::default(),
        runner_tags: Default::default(),
        idempotency_key: None,
        credential: None,
    }
}

fn api_key(hash: &str, org: &str, name: &str, role: Role) -> Command {
    Command::CreateApiKey {
        key_hash: hash.into(),
        organization_id: org.into(),
        name: name.into(),
        role,
        prefix: String::new(),
        expires_at: None,
    }
}

/// A region with one ready runner of 4 cpu.
fn fleet() -> State {
    let mut s = State::default();
    run(&mut s, create_region("reg", "org", "r")).expect("region");
    run(&mut s, create_runner("run", "reg", "runner-1", 4)).expect("runner");
    run(&mut s, Command::SetRunnerState { id: "run".into(), state: RunnerState::Ready }).expect("ready");
    s
}

#[test]
fn organizations_and_keys() {
    let mut s = State::default();
    let org = run(&mut s, Command::CreateOrganization { id: "o1".into(), name: "acme".into() });
    assert!(matches!(org, Ok(Outcome::Organization(ref o)) if o.name == "acme" && o.created_at == T0));
    assert!(matches!(
        run(&mut s, Command::CreateOrganization { id: "o1".into(), name: "other".into() }),
        Err(Rejection::DuplicateId { .. })
    ));
    assert!(matches!(
        run(&mut s, Command::CreateOrganization { id: "o2".into(), name: "acme".into() }),
        Err(Rejection::DuplicateName { .. })
    ));
    let key = api_key("kh", "o1", "ci", Role::Admin);
    assert!(matches!(run(&mut s, key.clone()), Ok(Outcome::ApiKey(_))));
    assert!(matches!(run(&mut s, key), Err(Rejection::DuplicateId { .. })));
    assert!(matches!(
        run(&mut s, api_key("x", "nope", "n", Role::Admin)),
        Err(Rejection::NotFound { kind: ObjectKind::Organization, .. })
    ));
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn regions_create_update_credentials_delete() {
    let mut s = State::default();
    let created = run(&mut s, create_region("a", "org", "eu-custom")).expect("created");
    assert!(matches!(created, Outcome::Region(ref r) if r.region_type == RegionType::Custom));
    // Same name in the same organization: rejected; in another organization: fine.
    assert_eq!(
        run(&mut s, create_region("b", "org", "eu-custom")),
        Err(Rejection::DuplicateName { kind: ObjectKind::Region, name: "eu-custom".into() })
    );
    assert!(run(&mut s, create_region("b", "org2", "eu-custom")).is_ok());
    assert!(matches!(run(&mut s, create_region("b", "org3", "x")), Err(Rejection::DuplicateId { .. })));

    let update = Command::UpdateRegionUrls {
        id: "a".into(),
        proxy_url: FieldUpdate::Clear,
        ssh_gateway_url: FieldUpdate::Set("ssh://gw".into()),
        snapshot_manager_url: FieldUpdate::Keep,
    };
    let Ok(Outcome::Region(r)) = run(&mut s, update) else { panic!("update") };
    assert_eq!((r.proxy_url, r.ssh_gateway_url), (None, Some("ssh://gw".into())));
    assert!(matches!(
        run(
            &mut s,
            Command::UpdateRegionUrls {
                id: "zz".into(),
                proxy_url: FieldUpdate::Keep,
                ssh_gateway_url: FieldUpdate::Keep,
                snapshot_manager_url: FieldUpdate::Keep
            }
        ),
        Err(Rejection::NotFound { .. })
    ));

    // Credentials exist only for configured services: the proxy URL was just cleared.
    let proxy_key =
        Command::SetRegionCredential { id: "a".into(), credential: RegionCredential::ProxyApiKey, secret: "x".into() };
    assert!(matches!(run(&mut s, proxy_key), Err(Rejection::Conflict(_))));
    let urls = Command::UpdateRegionUrls {
        id: "a".into(),
        proxy_url: FieldUpdate::Set("https://p".into()),
        ssh_gateway_url: FieldUpdate::Keep,
        snapshot_manager_url: FieldUpdate::Set("https://s".into()),
    };
    run(&mut s, urls).expect("urls");
    for credential in
        [RegionCredential::ProxyApiKey, RegionCredential::SshGatewayApiKey, RegionCredential::SnapshotManager]
    {
        let cmd = Command::SetRegionCredential { id: "a".into(), credential, secret: "new".into() };
        assert!(run(&mut s, cmd).is_ok());
    }
    let r = &s.regions["a"];
    assert_eq!(r.proxy_api_key_hash.as_deref(), Some("new"));
    assert_eq!(r.ssh_gateway_api_key_hash.as_deref(), Some("new"));
    assert_eq!(r.snapshot_manager_password.as_deref(), Some("new"));
    assert!(matches!(
        run(
            &mut s,
            Command::SetRegionCredential {
                id: "zz".into(),
                credential: RegionCredential::ProxyApiKey,
                secret: "s".into()
            }
        ),
        Err(Rejection::NotFound { .. })
    ));

    assert!(matches!(run(&mut s, Command::DeleteRegion { id: "a".into() }), Ok(Outcome::Deleted { .. })));
    assert!(matches!(run(&mut s, Command::DeleteRegion { id: "a".into() }), Err(Rejection::NotFound { .. })));
    // The name is free again.
    assert!(run(&mut s, create_region("c", "org", "eu-custom")).is_ok());
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn region_with_runners_cannot_be_deleted() {
    let mut s = fleet();
    assert_eq!(
        run(&mut s, Command::DeleteRegion { id: "reg".into() }),
        Err(Rejection::RegionHasRunners { region_id: "reg".into(), runners: 1 })
    );
    run(&mut s, Command::DeleteRunner { id: "run".into() }).expect("runner deleted");
    assert!(run(&mut s, Command::DeleteRegion { id: "reg".into() }).is_ok());
}

#[test]
fn runners() {
    let mut s = fleet();
    assert!(matches!(
        run(&mut s, create_runner("x", "missing", "n", 1)),
        Err(Rejection::NotFound { kind: ObjectKind::Region, .. })
    ));
    assert!(matches!(run(&mut s, create_runner("run", "reg", "other", 1)), Err(Rejection::DuplicateId { .. })));
    assert!(matches!(run(&mut s, create_runner("x", "reg", "runner-1", 1)), Err(Rejection::DuplicateName { .. })));
    let Ok(Outcome::Runner(r)) =
        run(&mut s, Command::SetRunnerSchedulable { id: "run".into(), schedulable: Some(false) })
    else {
        panic!("schedulable")
    };
    assert!(!r.schedulable);
    // No value toggles.
    let Ok(Outcome::Runner(r)) = run(&mut s, Command::SetRunnerSchedulable { id: "run".into(), schedulable: None })
    else {
        panic!("toggle")
    };
    assert!(r.schedulable);
    assert!(matches!(
        run(&mut s, Command::SetRunnerSchedulable { id: "no".into(), schedulable: Some(true) }),
        Err(Rejection::NotFound { .. })
    ));
    assert!(matches!(
        run(&mut s, Command::SetRunnerState { id: "no".into(), state: RunnerState::Ready }),
        Err(Rejection::NotFound { .. })
    ));
    run(&mut s, Command::SetRunnerState { id: "run".into(), state: RunnerState::Decommissioned })
        .expect("decommission");
    assert!(matches!(
        run(&mut s, Command::SetRunnerState { id: "run".into(), state: RunnerState::Ready }),
        Err(Rejection::Conflict(_))
    ));
    assert!(matches!(run(&mut s, Command::DeleteRunner { id: "no".into() }), Err(Rejection::NotFound { .. })));
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn two_runners_cannot_share_a_token() {
    let mut s = State::default();
    run(&mut s, create_region("reg", "org", "r")).expect("region");
    run(&mut s, create_runner("a", "reg", "a", 4)).expect("runner");
    let Command::CreateRunner(NewRunner { api_key_hash, .. }) = create_runner("a", "reg", "a", 4) else {
        unreachable!()
    };
    let twin = Command::CreateRunner(NewRunner {
        id: "b".into(),
        region_id: "reg".into(),
        name: "b".into(),
        api_key_hash,
        api_key_hint: "k…".into(),
        api_version: "2".into(),
        domain: None,
        api_url: None,
        proxy_url: None,
        capacity: Resources::default(),
        tags: Default::default(),
        max_sandboxes: None,
    });
    assert!(matches!(run(&mut s, twin), Err(Rejection::Conflict(_))));
    assert_eq!(s.runner_keys.get("k-a").map(String::as_str), Some("a"));
    run(&mut s, Command::DeleteRunner { id: "a".into() }).expect("deleted");
    assert!(s.runner_keys.is_empty(), "a deleted runner's token opens nothing");
}

#[test]
fn runner_health_moves_only_between_ready_and_unresponsive() {
    let mut s = State::default();
    run(&mut s, create_region("reg", "org", "r")).expect("region");
    for (id, name) in [("fresh", "a"), ("ready", "b"), ("off", "c"), ("gone", "d")] {
        run(&mut s, create_runner(id, "reg", name, 4)).expect("runner");
    }
    run(&mut s, Command::SetRunnerState { id: "ready".into(), state: RunnerState::Ready }).expect("ready");
    run(&mut s, Command::SetRunnerState { id: "off".into(), state: RunnerState::Disabled }).expect("disabled");
    run(&mut s, Command::DeleteRunner { id: "gone".into() }).expect("deleted");

    // Reports from `fresh`, `off` and a deleted runner; `ready` fell silent.
    let health = Command::RecordRunnerHealth {
        reporting: vec!["fresh".into(), "off".into(), "gone".into()],
        silent: vec!["ready".into()],
    };
    let Ok(Outcome::RunnersChanged(changed)) = run(&mut s, health) else { panic!("recorded") };
    assert_eq!(changed, vec!["fresh".to_string(), "ready".to_string()]);
    assert_eq!(s.runners["fresh"].state, RunnerState::Ready);
    assert_eq!(s.runners["ready"].state, RunnerState::Unresponsive);
    assert_eq!(s.runners["off"].state, RunnerState::Disabled, "an operator's state wins over health");
    assert!(!s.runners.contains_key("gone"));

    // Silence never demotes a runner that is not ready; reports bring an unresponsive one back.
    let again = Command::RecordRunnerHealth { reporting: vec!["ready".into()], silent: vec!["off".into()] };
    let Ok(Outcome::RunnersChanged(changed)) = run(&mut s, again) else { panic!("recorded") };
    assert_eq!(changed, vec!["ready".to_string()]);
    assert_eq!(s.runners["ready"].state, RunnerState::Ready);
    assert_eq!(s.runners["off"].state, RunnerState::Disabled);
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn a_refused_creation_leaves_the_state_as_it_was_and_the_id_is_checked_first() {
    let mut s = fleet();
    run(&mut s, Command::PlaceSandboxes { placements: vec![placement("s1", "reg", "run", 1)] }).expect("placed");
    let before = s.clone();
    // A taken id and a taken name: the id is reported, as it always was; nothing changes.
    assert!(matches!(run(&mut s, create_region("reg", "org", "r")), Err(Rejection::DuplicateId { .. })));
    // A free id with a taken name: refused, and the new id is not left behind.
    assert!(matches!(run(&mut s, create_region("reg2", "org", "r")), Err(Rejection::DuplicateName { .. })));
    assert!(!s.regions.contains_key("reg2"));
    let placements = vec![
        // A taken id on a runner that could not take it either: the id is reported.
        placement("s1", "reg", "nope", 1),
        // A free id the runner refuses: no sandbox is left behind.
        placement("s2", "reg", "run", 99),
    ];
    let Ok(Outcome::Placed(results)) = run(&mut s, Command::PlaceSandboxes { placements }) else { panic!("placed") };
    assert!(matches!(results[0], Err(Rejection::DuplicateId { .. })), "{:?}", results[0]);
    assert!(matches!(results[1], Err(Rejection::InsufficientCapacity { .. })), "{:?}", results[1]);
    assert_eq!(s.sandboxes, before.sandboxes);
    assert_eq!(s.regions, before.regions);
    assert_eq!(s.hash(), before.hash());
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn placement_respects_capacity_and_state() {
    let mut s = fleet();
    let batch = Command::PlaceSandboxes {
        placements: vec![
            placement("s1", "reg", "run", 3),
            placement("s2", "reg", "run", 2), // 3 + 2 > 4 cpu: rejected alone
            placement("s3", "reg", "run", 1),
            placement("s1", "reg", "run", 0), // duplicate id
            placement("s4", "reg", "nope", 1),
            placement("s5", "other-region", "run", 1),
        ],
    };
    let Ok(Outcome::Placed(results)) = run(&mut s, batch) else { panic!("placed") };
    assert!(results[0].is_ok());
    assert_eq!(results[1], Err(Rejection::InsufficientCapacity { runner_id: "run".into() }));
    assert!(results[2].is_ok());
    assert!(matches!(results[3], Err(Rejection::DuplicateId { .. })));
    assert!(matches!(results[4], Err(Rejection::NotFound { .. })));
    assert!(matches!(results[5], Err(Rejection::Conflict(_))));
    let runner = &s.runners["run"];
    assert_eq!(runner.allocated.cpu, 4);
    assert_eq!(runner.started_sandboxes, 2);

    // An unschedulable runner takes nothing.
    run(&mut s, Command::SetRunnerSchedulable { id: "run".into(), schedulable: Some(false) }).expect("ok");
    let Ok(Outcome::Placed(results)) =
        run(&mut s, Command::PlaceSandboxes { placements: vec![placement("s9", "reg", "run", 0)] })
    else {
        panic!("placed")
    };
    assert!(matches!(results[0], Err(Rejection::RunnerNotSchedulable { .. })));

    // A runner with sandboxes cannot be deleted.
    assert!(matches!(
        run(&mut s, Command::DeleteRunner { id: "run".into() }),
        Err(Rejection::RunnerHasSandboxes { sandboxes: 2, .. })
    ));
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn sandbox_lifecycle_updates_runner_allocation() {
    let mut s = fleet();
    run(&mut s, Command::PlaceSandboxes { placements: vec![placement("s1", "reg", "run", 2)] }).expect("placed");
    assert_eq!(s.runners["run"].started_sandboxes, 1);

    run(&mut s, Command::SetSandboxState { id: "s1".into(), state: SandboxState::Stopped }).expect("stop");
    assert_eq!(s.runners["run"].started_sandboxes, 0);
    assert_eq!(s.runners["run"].allocated.cpu, 2, "a stopped sandbox keeps its reservation");

    run(&mut s, Command::SetSandboxState { id: "s1".into(), state: SandboxState::Started }).expect("start");
    assert_eq!(s.runners["run"].started_sandboxes, 1);

    assert!(matches!(run(&mut s, Command::DeleteSandbox { id: "s1".into() }), Ok(Outcome::Deleted { .. })));
    assert_eq!(s.runners["run"].allocated, Resources::default());
    assert_eq!(s.runners["run"].started_sandboxes, 0);
    assert!(matches!(run(&mut s, Command::DeleteSandbox { id: "s1".into() }), Err(Rejection::NotFound { .. })));
    assert!(matches!(
        run(&mut s, Command::SetSandboxState { id: "s1".into(), state: SandboxState::Started }),
        Err(Rejection::NotFound { .. })
    ));

    run(&mut s, Command::PlaceSandboxes { placements: vec![placement("s2", "reg", "run", 1)] }).expect("placed");
    run(&mut s, Command::SetSandboxState { id: "s2".into(), state: SandboxState::Destroyed }).expect("destroy");
    assert!(matches!(
        run(&mut s, Command::SetSandboxState { id: "s2".into(), state: SandboxState::Started }),
        Err(Rejection::Conflict(_))
    ));
    // Runner can go once its only sandbox is destroyed.
    assert!(run(&mut s, Command::DeleteRunner { id: "run".into() }).is_ok());
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn idempotency_returns_the_first_result_and_changes_nothing() {
    let mut s = State::default();
    let mut p = Proposal::new(create_region("a", "org", "x"), T0);
    p.idempotency_key = Some("org/k1".into());
    let first = apply(&mut s, &p);
    let hash = s.hash();
    // Same key, different command: still the first result, no new region.
    let mut replay = Proposal::new(create_region("b", "org", "y"), T0 + 1);
    replay.idempotency_key = Some("org/k1".into());
    assert_eq!(apply(&mut s, &replay), first);
    assert_eq!(s.regions.len(), 1);
    // Only the clock moved.
    s.clock = T0;
    assert_eq!(s.hash(), hash);
}

#[test]
fn idempotency_key_reused_for_another_request_is_refused() {
    let mut s = State::default();
    let mut p = Proposal::new(create_region("a", "org", "x"), T0);
    p.idempotency_key = Some("k".into());
    p.fingerprint = Some("f1".into());
    apply(&mut s, &p).expect("first");
    let mut other = Proposal::new(create_region("b", "org", "y"), T0);
    other.idempotency_key = Some("k".into());
    other.fingerprint = Some("f2".into());
    assert_eq!(apply(&mut s, &other), Err(Rejection::IdempotencyKeyReused));
    assert!(matches!(apply(&mut s, &p), Ok(Outcome::Region(ref r)) if r.id == "a"));
    assert_eq!(s.regions.len(), 1);
}

#[test]
fn a_scope_sees_only_its_organization() {
    let mut s = State::default();
    run(&mut s, create_region("mine", "o1", "r")).expect("region");
    run(&mut s, create_region("theirs", "o2", "r")).expect("region");
    let shared = Command::CreateRegion(NewRegion::new("us", "", "us", RegionType::Shared));
    run(&mut s, shared).expect("shared");
    let as_o1 = |c: Command| Proposal::scoped(c, T0, Some("o1".into()));

    // Another organization's region is "not found", for every kind of touch.
    for cmd in [
        Command::DeleteRegion { id: "theirs".into() },
        Command::UpdateRegionUrls {
            id: "theirs".into(),
            proxy_url: FieldUpdate::Keep,
            ssh_gateway_url: FieldUpdate::Keep,
            snapshot_manager_url: FieldUpdate::Keep,
        },
        Command::SetRegionCredential {
            id: "theirs".into(),
            credential: RegionCredential::ProxyApiKey,
            secret: "s".into(),
        },
        create_runner("r2", "theirs", "n", 1),
    ] {
        assert!(matches!(apply(&mut s, &as_o1(cmd)), Err(Rejection::NotFound { kind: ObjectKind::Region, .. })));
    }
    // Shared regions take no custom runners from organizations; the operator may add them.
    assert!(matches!(apply(&mut s, &as_o1(create_runner("r3", "us", "n", 1))), Err(Rejection::Conflict(_))));
    assert!(run(&mut s, create_runner("r3", "us", "n", 1)).is_ok());

    let Ok(Outcome::Runner(r)) = apply(&mut s, &as_o1(create_runner("r1", "mine", "n", 1))) else { panic!("runner") };
    assert_eq!(r.organization_id, "o1", "a runner belongs to its region's organization");
    let as_o2 = |c: Command| Proposal::scoped(c, T0, Some("o2".into()));
    for cmd in [
        Command::SetRunnerSchedulable { id: "r1".into(), schedulable: None },
        Command::SetRunnerState { id: "r1".into(), state: RunnerState::Ready },
        Command::DeleteRunner { id: "r1".into() },
    ] {
        assert!(matches!(apply(&mut s, &as_o2(cmd)), Err(Rejection::NotFound { kind: ObjectKind::Runner, .. })));
    }
    assert!(apply(&mut s, &as_o1(Command::DeleteRunner { id: "r1".into() })).is_ok());
    assert!(apply(&mut s, &as_o1(Command::DeleteRegion { id: "mine".into() })).is_ok());
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn a_placement_with_an_idempotency_key_is_placed_once() {
    let mut s = fleet();
    let mut p = placement("s1", "reg", "run", 1);
    p.idempotency_key = Some("org|k".into());
    let Ok(Outcome::Placed(first)) = run(&mut s, Command::PlaceSandboxes { placements: vec![p.clone()] }) else {
        panic!("placed")
    };
    // The retry carries a new sandbox id (chosen by whichever node got the retry).
    let mut retry = p.clone();
    retry.sandbox_id = "s2".into();
    let Ok(Outcome::Placed(second)) = run(&mut s, Command::PlaceSandboxes { placements: vec![retry] }) else {
        panic!("placed")
    };
    assert_eq!(first, second);
    assert_eq!(s.sandboxes.len(), 1);
    assert_eq!(s.runners["run"].allocated.cpu, 1);
}

#[test]
fn idempotency_records_expire() {
    let mut s = State::default();
    let mut p = Proposal::new(create_region("a", "org", "x"), T0);
    p.idempotency_key = Some("k".into());
    apply(&mut s, &p).expect("ok");
    assert!(s.idempotency.contains_key("k"));
    apply(&mut s, &Proposal::new(Command::DeleteRegion { id: "a".into() }, T0 + IDEMPOTENCY_TTL_MS + 1)).expect("ok");
    assert!(!s.idempotency.contains_key("k"));
    assert!(s.idempotency_by_age.is_empty());
}

#[test]
fn snapshot_round_trip_rebuilds_indexes() {
    let mut s = fleet();
    run(&mut s, Command::PlaceSandboxes { placements: vec![placement("s1", "reg", "run", 1)] }).expect("placed");
    let decoded = State::decode(&s.encode().expect("encode")).expect("decode");
    assert_eq!(decoded, s);
    assert_eq!(decoded.hash(), s.hash());
}

#[test]
fn the_indexes_share_the_sandbox_maps_ids() {
    // The map's key, the runner's sandbox index and the runner journal's two maps hold one
    // allocation of the id: four references to it, whether `apply` placed the sandbox or a
    // snapshot decode rebuilt the indexes.
    let shares = |state: &State| {
        let (key, _) = state.sandboxes.get_key_value("s1").expect("s1 is in the map");
        let (indexed, _) = state.runner_sandboxes["run"].get_key_value("s1").expect("s1 is on its runner");
        (std::sync::Arc::ptr_eq(key, indexed), std::sync::Arc::strong_count(key))
    };
    let mut s = fleet();
    run(&mut s, Command::PlaceSandboxes { placements: vec![placement("s1", "reg", "run", 1)] }).expect("placed");
    assert_eq!(shares(&s), (true, 4));
    run(&mut s, Command::SetSandboxState { id: "s1".into(), state: SandboxState::Stopped }).expect("stopped");
    assert_eq!(shares(&s), (true, 4), "a change journals the same id again");
    let decoded = State::decode(&s.encode().expect("encode")).expect("decode");
    assert_eq!(shares(&decoded), (true, 4));
}

#[test]
fn the_replicated_view_encodes_as_the_state_and_keeps_its_moment() {
    let mut s = fleet();
    run(&mut s, Command::PlaceSandboxes { placements: vec![placement("s1", "reg", "run", 1)] }).expect("placed");
    // Byte for byte what encoding the whole state writes (its indexes are skipped).
    let whole = corral_model::codec::encode(&s).expect("encode the state");
    let view = s.replicated_view();
    assert_eq!(view.encode().expect("encode the view"), whole);
    let mut streamed = Vec::new();
    view.encode_to(&mut streamed).expect("encode to a writer");
    assert_eq!(streamed, whole);
    assert_eq!(view.hash(), s.hash());
    // Changes applied after the view was taken do not reach it.
    run(&mut s, Command::PlaceSandboxes { placements: vec![placement("s2", "reg", "run", 1)] }).expect("placed");
    run(&mut s, Command::DeleteRegion { id: "reg".into() }).expect_err("the region still has a runner");
    assert_eq!(view.encode().expect("encode the view"), whole);
    assert_ne!(view.hash(), s.hash());
    let decoded = State::decode(&whole).expect("decode the view's bytes");
    assert!(decoded.sandboxes.contains_key("s1") && !decoded.sandboxes.contains_key("s2"));
}

// ---- determinism ------------------------------------------------------------------------

fn arb_command() -> impl Strategy<Value = Command> {
    let id = prop::sample::select(vec!["a", "b", "c", "d"]);
    let name = prop::sample::select(vec!["n1", "n2", "n3"]);
    let org = prop::sample::select(vec!["o1", "o2"]);
    prop_oneof![
        (id.clone(), org.clone(), name.clone()).prop_map(|(i, o, n)| create_region(&format!("reg-{i}"), o, n)),
        id.clone().prop_map(|i| Command::DeleteRegion { id: format!("reg-{i}") }),
        (id.clone(), id.clone(), name.clone(), 0u64..6).prop_map(|(r, g, n, cpu)| create_runner(
            &format!("run-{r}"),
            &format!("reg-{g}"),
            n,
            cpu
        )),
        (id.clone(), prop::sample::select(vec![RunnerState::Ready, RunnerState::Unresponsive, RunnerState::Disabled]))
            .prop_map(|(i, st)| Command::SetRunnerState { id: format!("run-{i}"), state: st }),
        (id.clone(), any::<Option<bool>>())
            .prop_map(|(i, b)| Command::SetRunnerSchedulable { id: format!("run-{i}"), schedulable: b }),
        id.clone().prop_map(|i| Command::DeleteRunner { id: format!("run-{i}") }),
        prop::collection::vec((0u32..20, id.clone(), id.clone(), 0u64..4), 0..6).prop_map(|ps| {
            Command::PlaceSandboxes {
                placements: ps
                    .into_iter()
                    .map(|(s, g, r, cpu)| placement(&format!("sb-{s}"), &format!("reg-{g}"), &format!("run-{r}"), cpu))
                    .collect(),
            }
        }),
        (0u32..20, prop::sample::select(vec![SandboxState::Started, SandboxState::Stopped, SandboxState::Destroyed]))
            .prop_map(|(s, st)| Command::SetSandboxState { id: format!("sb-{s}"), state: st }),
        (0u32..20).prop_map(|s| Command::DeleteSandbox { id: format!("sb-{s}") }),
        (prop::collection::vec(id.clone(), 0..3), prop::collection::vec(id.clone(), 0..3)).prop_map(|(r, q)| {
            Command::RecordRunnerHealth {
                reporting: r.into_iter().map(|i| format!("run-{i}")).collect(),
                silent: q.into_iter().map(|i| format!("run-{i}")).collect(),
            }
        }),
        (org.clone(), name.clone()).prop_map(|(o, n)| Command::CreateOrganization { id: o.into(), name: n.into() }),
        // Quotas and keys: the placements' organization is "org"; shared regions count.
        (id.clone(), name.clone()).prop_map(|(i, n)| Command::CreateRegion(NewRegion::new(
            format!("reg-{i}"),
            "",
            n,
            RegionType::Shared
        ))),
        Just(Command::CreateOrganization { id: "org".into(), name: "the-org".into() }),
        (prop::option::of(0u64..8), prop::option::of(0u64..4)).prop_map(|(cpu, sandboxes)| {
            Command::SetOrganizationQuota { id: "org".into(), quota: Quota { cpu, sandboxes, ..Quota::default() } }
        }),
        (prop::sample::select(vec!["ka", "kb"]), prop::sample::select(vec!["org", "o1"]), name.clone(), any::<bool>())
            .prop_map(|(k, o, n, admin)| api_key(k, o, n, if admin { Role::Admin } else { Role::Member })),
        (prop::sample::select(vec!["org", "o1"]), name)
            .prop_map(|(o, n)| Command::DeleteApiKey { organization_id: o.into(), name: n.into() }),
    ]
}

fn arb_proposals() -> impl Strategy<Value = Vec<Proposal>> {
    let scope = prop::option::of(prop::sample::select(vec!["o1", "o2"]));
    let credential = prop::option::weighted(0.2, prop::sample::select(vec!["ka", "kb"]));
    prop::collection::vec((arb_command(), 0u64..1000, prop::option::of(0u8..5), scope, credential), 0..80).prop_map(
        |cmds| {
            cmds.into_iter()
                .map(|(command, dt, key, scope, credential)| Proposal {
                    credential: credential.map(String::from),
                    fingerprint: key.map(|_| format!("{command:?}")),
                    command,
                    at: T0 + dt,
                    idempotency_key: key.map(|k| format!("k{k}")),
                    scope: scope.map(String::from),
                })
                .collect()
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Two replicas fed the same proposals reach the same results and the same hash; the
    /// invariants (allocation = sum of live sandboxes ≤ capacity, indexes in step) always hold;
    /// and a snapshot taken at the end decodes to the same state.
    #[test]
    fn same_proposals_same_state(proposals in arb_proposals()) {
        let mut a = State::default();
        let mut b = State::default();
        for p in &proposals {
            let ra = apply(&mut a, p);
            // Replica b gets the proposal the way replication delivers it: through JSON.
            let wire: Proposal = serde_json::from_slice(&serde_json::to_vec(p).expect("encode")).expect("decode");
            prop_assert_eq!(&wire, p);
            let rb = apply(&mut b, &wire);
            prop_assert_eq!(ra, rb);
            prop_assert_eq!(a.validate(), Ok(()));
        }
        prop_assert_eq!(a.hash(), b.hash());
        let restored = State::decode(&a.encode().expect("encode")).expect("decode");
        prop_assert_eq!(restored.hash(), a.hash());
        prop_assert_eq!(restored, a);
    }

    /// A snapshot taken halfway, then the rest of the log, gives the state of the full log.
    #[test]
    fn snapshot_then_replay_equals_full_replay(proposals in arb_proposals(), cut in 0usize..80) {
        let cut = cut.min(proposals.len());
        let mut full = State::default();
        for p in &proposals { let _ = apply(&mut full, p); }
        let mut half = State::default();
        for p in &proposals[..cut] { let _ = apply(&mut half, p); }
        let mut resumed = State::decode(&half.encode().expect("encode")).expect("decode");
        for p in &proposals[cut..] { let _ = apply(&mut resumed, p); }
        prop_assert_eq!(resumed.hash(), full.hash());
    }
}

#[test]
fn refusals_recorded_before_the_conflict_rename_still_decode() {
    let old: Rejection = serde_json::from_str(r#"{"Invalid":"sandbox 's' is destroyed"}"#).expect("old record");
    assert_eq!(old, Rejection::Conflict("sandbox 's' is destroyed".into()));
    let new = serde_json::to_string(&old).expect("encode");
    assert_eq!(new, r#"{"Conflict":"sandbox 's' is destroyed"}"#);
}

#[test]
fn a_runner_takes_its_agents_capacity_until_the_operator_sets_one() {
    let mut s = State::default();
    run(&mut s, create_region("reg", "org", "r")).expect("region");
    let new = NewRunner::new("a", "reg", "a", "k-a", Resources::default());
    let Ok(Outcome::Runner(created)) = run(&mut s, Command::CreateRunner(new)) else { panic!("runner") };
    assert_eq!((created.capacity, created.capacity_source()), (Resources::default(), CapacitySource::Agent));
    let host = Resources { cpu: 8, memory_gib: 32, disk_gib: 200, gpu: 1 };
    let report = |capacity| Command::SetRunnerCapacity { id: "a".into(), capacity, source: CapacitySource::Agent };
    let Ok(Outcome::Runner(r)) = run(&mut s, report(host)) else { panic!("capacity") };
    assert_eq!(r.capacity, host);

    // The operator's capacity wins; later reports leave it alone.
    let operator = Resources { cpu: 4, memory_gib: 8, disk_gib: 50, gpu: 0 };
    let set = Command::SetRunnerCapacity { id: "a".into(), capacity: operator, source: CapacitySource::Operator };
    run(&mut s, set).expect("operator capacity");
    let Ok(Outcome::Runner(r)) = run(&mut s, report(host)) else { panic!("report") };
    assert_eq!((r.capacity, r.capacity_source()), (operator, CapacitySource::Operator));
    assert_eq!(s.validate(), Ok(()));

    // A runner created with a capacity has the operator's.
    let sized = NewRunner::new("b", "reg", "b", "k-b", operator);
    let Ok(Outcome::Runner(b)) = run(&mut s, Command::CreateRunner(sized)) else { panic!("runner b") };
    assert_eq!(b.capacity_source(), CapacitySource::Operator);

    // An entry written before the field existed decodes to the same rule, on every replica.
    let mut encoded: serde_json::Value = serde_json::to_value(&s).expect("json");
    for runner in encoded["runners"].as_object_mut().expect("runners").values_mut() {
        runner.as_object_mut().expect("runner").remove("capacity_source");
    }
    let old = State::decode(&serde_json::to_vec(&encoded).expect("encodes")).expect("decodes");
    assert_eq!(old.runners["b"].capacity_source, Some(CapacitySource::Operator));
    assert_eq!(old.runners["a"].capacity_source, Some(CapacitySource::Operator), "a's was set by the operator");
    assert_eq!(old.hash(), s.hash());
}

#[test]
fn capacity_never_drops_below_the_allocation() {
    let mut s = State::default();
    run(&mut s, create_region("reg", "org", "r")).expect("region");
    run(&mut s, Command::CreateRunner(NewRunner::new("a", "reg", "a", "k-a", Resources::default()))).expect("runner");
    let report = |cpu| Command::SetRunnerCapacity {
        id: "a".into(),
        capacity: Resources { cpu, memory_gib: cpu, disk_gib: cpu, gpu: 0 },
        source: CapacitySource::Agent,
    };
    run(&mut s, report(4)).expect("capacity");
    run(&mut s, Command::SetRunnerState { id: "a".into(), state: RunnerState::Ready }).expect("ready");
    let Ok(Outcome::Placed(placed)) =
        run(&mut s, Command::PlaceSandboxes { placements: vec![placement("x", "reg", "a", 3)] })
    else {
        panic!("placed")
    };
    assert!(placed.iter().all(Result::is_ok), "{placed:?}");
    assert!(matches!(run(&mut s, report(2)), Err(Rejection::Conflict(_))), "below the 3 allocated");
    assert_eq!(s.runners["a"].capacity.cpu, 4);
    run(&mut s, report(3)).expect("down to the allocation");
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn a_draining_runner_takes_no_new_sandbox_and_keeps_its_own() {
    let mut s = fleet();
    let place = |id: &str| Command::PlaceSandboxes { placements: vec![placement(id, "reg", "run", 1)] };
    let Ok(Outcome::Placed(first)) = run(&mut s, place("a")) else { panic!("placed") };
    assert!(first[0].is_ok());
    let drain = |draining| Command::SetRunnerDraining { id: "run".into(), draining };
    let Ok(Outcome::Runner(r)) = run(&mut s, drain(true)) else { panic!("draining") };
    assert!(r.draining && !placement::eligible(&r));
    assert_eq!(corral_model::placement::RegionPlacementIndex::for_region(&s, "reg").len(), 0);
    let Ok(Outcome::Placed(refused)) = run(&mut s, place("b")) else { panic!("applied") };
    assert!(matches!(refused[0], Err(Rejection::RunnerNotSchedulable { .. })), "{refused:?}");
    assert_eq!(s.sandboxes["a"].state, SandboxState::Started, "what runs keeps running");
    run(&mut s, drain(false)).expect("undrained");
    let Ok(Outcome::Placed(again)) = run(&mut s, place("b")) else { panic!("placed") };
    assert!(again[0].is_ok(), "{again:?}");
    assert_eq!(s.validate(), Ok(()));
}

/// Tags and the sandbox limit are re-checked on apply, like capacity: a placement planned on
/// a runner whose tags changed, or that reached its limit, is rejected and changes nothing.
#[test]
fn runner_tags_and_sandbox_limits_hold_on_apply() {
    let mut s = fleet();
    let zone_a: std::collections::BTreeMap<String, String> = [("zone".to_string(), "a".to_string())].into();
    let update = |tags: Option<std::collections::BTreeMap<String, String>>, max: FieldUpdate<u64>| {
        Command::UpdateRunner { id: "run".into(), tags, max_sandboxes: max }
    };
    let Ok(Outcome::Runner(r)) = run(&mut s, update(Some(zone_a.clone()), FieldUpdate::Set(2))) else {
        panic!("updated")
    };
    assert_eq!((r.tags.clone(), r.max_sandboxes), (zone_a.clone(), Some(2)));
    let constrained = |id: &str, zone: &str| Placement {
        runner_tags: [("zone".to_string(), zone.to_string())].into(),
        ..placement(id, "reg", "run", 1)
    };
    let Ok(Outcome::Placed(results)) =
        run(&mut s, Command::PlaceSandboxes { placements: vec![constrained("a", "a"), constrained("b", "b")] })
    else {
        panic!("applied")
    };
    assert!(results[0].as_ref().is_ok_and(|sb| sb.runner_tags == zone_a), "{results:?}");
    assert_eq!(results[1], Err(Rejection::RunnerTagsMismatch { runner_id: "run".into() }));
    let place = |id: &str| Command::PlaceSandboxes { placements: vec![placement(id, "reg", "run", 1)] };
    let Ok(Outcome::Placed(second)) = run(&mut s, place("c")) else { panic!("applied") };
    assert!(second[0].is_ok(), "the second of two: {second:?}");
    let Ok(Outcome::Placed(third)) = run(&mut s, place("d")) else { panic!("applied") };
    assert_eq!(third[0], Err(Rejection::InsufficientCapacity { runner_id: "run".into() }), "limit 2 reached");
    // A stopped sandbox keeps its place; a destroyed one frees it.
    run(&mut s, Command::SetSandboxState { id: "a".into(), state: SandboxState::Stopped }).expect("stopped");
    let Ok(Outcome::Placed(still)) = run(&mut s, place("d")) else { panic!("applied") };
    assert!(still[0].is_err(), "{still:?}");
    run(&mut s, Command::DeleteSandbox { id: "a".into() }).expect("deleted");
    let Ok(Outcome::Placed(freed)) = run(&mut s, place("d")) else { panic!("applied") };
    assert!(freed[0].is_ok(), "{freed:?}");
    // Lowering the limit below what the runner holds moves nothing; clearing it lifts it.
    let Ok(Outcome::Runner(r)) = run(&mut s, update(None, FieldUpdate::Set(1))) else { panic!("lowered") };
    assert_eq!((r.tags, r.max_sandboxes), (zone_a, Some(1)), "tags kept when not given");
    assert_eq!(s.runner_sandboxes["run"].len(), 2);
    run(&mut s, update(Some(Default::default()), FieldUpdate::Clear)).expect("cleared");
    let Ok(Outcome::Placed(unlimited)) = run(&mut s, place("e")) else { panic!("applied") };
    assert!(unlimited[0].is_ok(), "{unlimited:?}");
    assert!(s.runners["run"].tags.is_empty() && s.runners["run"].max_sandboxes.is_none());
    assert_eq!(s.validate(), Ok(()));
}

/// Rescheduling: sandboxes on a runner unresponsive long enough (or decommissioned) move to
/// another runner of the region, exactly once, with the allocations following; a started one
/// with nowhere to go is marked `error` and moves once room appears; a runner that came back
/// keeps its sandboxes.
#[test]
fn sandboxes_move_off_a_runner_that_stays_unresponsive() {
    let at = |ms: u64, command: Command| Proposal::new(command, T0 + ms);
    let mut s = fleet(); // "run", 4 cpu, ready
    for id in ["a", "b"] {
        let Ok(Outcome::Placed(r)) =
            run(&mut s, Command::PlaceSandboxes { placements: vec![placement(id, "reg", "run", 1)] })
        else {
            panic!("placed")
        };
        assert!(r[0].is_ok(), "{r:?}");
    }
    run(&mut s, Command::SetSandboxState { id: "b".into(), state: SandboxState::Stopped }).expect("stopped");
    let silent = Command::RecordRunnerHealth { reporting: vec![], silent: vec!["run".into()] };
    apply(&mut s, &at(1_000, silent)).expect("unresponsive");
    assert_eq!(s.runners["run"].state_since(), T0 + 1_000);
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(1);
    // Not yet long enough; and nowhere to go anyway.
    assert!(placement::plan_reschedules(&s, T0 + 1_500, 1_000, 100, &mut rng).is_empty());
    let moves = placement::plan_reschedules(&s, T0 + 2_000, 1_000, 100, &mut rng);
    assert_eq!(
        moves,
        vec![Reschedule { sandbox_id: "a".into(), from_runner_id: "run".into(), to_runner_id: None }],
        "only the started one is marked"
    );
    let round = |moves| Command::RescheduleSandboxes { moves, unresponsive_for_ms: 1_000 };
    let Ok(Outcome::Placed(r)) = apply(&mut s, &at(2_000, round(moves))) else { panic!("applied") };
    let stranded = r[0].as_ref().expect("marked");
    assert_eq!((stranded.state, stranded.runner_id.as_str()), (SandboxState::Error, "run"));
    assert!(stranded.error_reason.as_deref().is_some_and(|e| e.contains("unresponsive")), "{stranded:?}");
    assert_eq!(s.runners["run"].allocated.cpu, 2, "it stays where it is, holding its resources");

    // Room appears: both move (the error one starts, the stopped one stays stopped), once.
    run(&mut s, create_runner("spare", "reg", "runner-2", 4)).expect("runner");
    run(&mut s, Command::SetRunnerState { id: "spare".into(), state: RunnerState::Ready }).expect("ready");
    let moves = placement::plan_reschedules(&s, T0 + 3_000, 1_000, 100, &mut rng);
    assert_eq!(moves.len(), 2, "{moves:?}");
    assert!(moves.iter().all(|m| m.to_runner_id.as_deref() == Some("spare")));
    let Ok(Outcome::Placed(r)) = apply(&mut s, &at(3_000, round(moves.clone()))) else { panic!("applied") };
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert_eq!((s.sandboxes["a"].state, s.sandboxes["b"].state), (SandboxState::Started, SandboxState::Stopped));
    for id in ["a", "b"] {
        let sb = &s.sandboxes[id];
        assert_eq!(
            (sb.runner_id.as_str(), sb.rescheduled_from.as_deref(), sb.error_reason.as_deref()),
            ("spare", Some("run"), None)
        );
    }
    assert_eq!((s.runners["run"].allocated.cpu, s.runners["spare"].allocated.cpu), (0, 2));
    assert_eq!((s.runners["run"].started_sandboxes, s.runners["spare"].started_sandboxes), (0, 1));
    assert!(!s.runner_sandboxes.contains_key("run"));
    // The same round again (a retried entry) moves nothing.
    let Ok(Outcome::Placed(again)) = apply(&mut s, &at(3_100, round(moves))) else { panic!("applied") };
    assert!(again.iter().all(|r| matches!(r, Err(Rejection::Conflict(_)))), "{again:?}");
    assert_eq!(s.validate(), Ok(()));

    // A runner that is back keeps what it has, whatever a stale round says.
    let Ok(Outcome::Placed(c)) =
        run(&mut s, Command::PlaceSandboxes { placements: vec![placement("c", "reg", "spare", 1)] })
    else {
        panic!("placed")
    };
    assert!(c[0].is_ok());
    let stale =
        vec![Reschedule { sandbox_id: "c".into(), from_runner_id: "spare".into(), to_runner_id: Some("run".into()) }];
    let Ok(Outcome::Placed(kept)) = apply(&mut s, &at(4_000, round(stale))) else { panic!("applied") };
    assert!(matches!(kept[0], Err(Rejection::Conflict(_))), "{kept:?}");
    assert_eq!(s.sandboxes["c"].runner_id, "spare");

    // Decommissioned: moves at once, whatever the unresponsive delay.
    run(&mut s, Command::SetRunnerState { id: "run".into(), state: RunnerState::Ready }).expect("back");
    run(&mut s, Command::SetRunnerState { id: "spare".into(), state: RunnerState::Decommissioned })
        .expect("decommissioned");
    let moves = placement::plan_reschedules(&s, T0 + 4_000, 0, 100, &mut rng);
    assert_eq!(moves.len(), 3, "{moves:?}");
    let Ok(Outcome::Placed(r)) =
        apply(&mut s, &at(4_000, Command::RescheduleSandboxes { moves, unresponsive_for_ms: 0 }))
    else {
        panic!("applied")
    };
    assert!(r.iter().all(Result::is_ok), "{r:?}");
    assert!(s.sandboxes.values().all(|sb| sb.runner_id == "run" && sb.rescheduled_from.as_deref() == Some("spare")));
    assert_eq!(s.validate(), Ok(()));
}
