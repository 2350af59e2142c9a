//! `apply` decides access and quotas by itself: a key's role, revocation and expiry, and an
//! organization's quota in shared regions hold whatever the proposing node believed.

use corral_model::*;

const T0: Millis = 1_700_000_000_000;

fn as_key(state: &mut State, credential: &str, command: Command, at: Millis) -> ApplyResult {
    let proposal =
        Proposal { credential: Some(credential.into()), ..Proposal::scoped(command, at, Some("org".into())) };
    apply(state, &proposal)
}

fn operator(state: &mut State, command: Command) -> ApplyResult {
    apply(state, &Proposal::new(command, T0))
}

fn key(hash: &str, name: &str, role: Role, expires_at: Option<Millis>) -> Command {
    Command::CreateApiKey {
        key_hash: hash.into(),
        organization_id: "org".into(),
        name: name.into(),
        role,
        prefix: format!("corral_{hash}"),
        expires_at,
    }
}

fn resources(cpu: u64) -> Resources {
    Resources { cpu, memory_gib: cpu, disk_gib: cpu, gpu: 0 }
}

fn placement(sandbox: &str, region: &str, runner: &str, cpu: u64, credential: Option<&str>) -> Placement {
    Placement {
        sandbox_id: sandbox.into(),
        organization_id: "org".into(),
        target: region.into(),
        region_id: region.into(),
        runner_id: runner.into(),
        resources: resources(cpu),
        labels: Default::default(),
        runner_tags: Default::default(),
        idempotency_key: None,
        credential: credential.map(String::from),
    }
}

/// Organization `org` with an admin key `ka` and a member key `km`; a shared region `shared`
/// and the organization's custom region `custom`, each with one ready runner of 100 cpu.
fn world() -> State {
    let mut s = State::default();
    operator(&mut s, Command::CreateOrganization { id: "org".into(), name: "acme".into() }).expect("org");
    operator(&mut s, key("ka", "admin-key", Role::Admin, None)).expect("admin key");
    operator(&mut s, key("km", "member-key", Role::Member, None)).expect("member key");
    for (region, kind) in [("shared", RegionType::Shared), ("custom", RegionType::Custom)] {
        let owner = if kind == RegionType::Shared { "" } else { "org" };
        operator(&mut s, Command::CreateRegion(NewRegion::new(region, owner, region, kind))).expect("region");
        let runner = NewRunner::new(format!("{region}-runner"), region, "r", format!("tok-{region}"), resources(100));
        operator(&mut s, Command::CreateRunner(runner)).expect("runner");
        operator(&mut s, Command::SetRunnerState { id: format!("{region}-runner"), state: RunnerState::Ready })
            .expect("ready");
    }
    s
}

fn custom_region(id: &str) -> Command {
    Command::CreateRegion(NewRegion::new(id, "org", id, RegionType::Custom))
}

#[test]
fn a_member_works_with_sandboxes_but_not_with_regions_runners_or_admin_keys() {
    let mut s = world();
    let refused = as_key(&mut s, "km", custom_region("r2"), T0);
    assert_eq!(refused, Err(Rejection::Forbidden { permission: "write:regions".into(), role: Role::Member }));
    let drain = Command::SetRunnerDraining { id: "custom-runner".into(), draining: true };
    assert!(matches!(as_key(&mut s, "km", drain.clone(), T0), Err(Rejection::Forbidden { .. })));
    assert!(matches!(as_key(&mut s, "km", key("k2", "x", Role::Admin, None), T0), Err(Rejection::Forbidden { .. })));
    let revoke_admin = Command::DeleteApiKey { organization_id: "org".into(), name: "admin-key".into() };
    assert!(matches!(as_key(&mut s, "km", revoke_admin, T0), Err(Rejection::Forbidden { .. })));
    assert!(matches!(as_key(&mut s, "km", key("k3", "helper", Role::Member, None), T0), Ok(Outcome::ApiKey(_))));

    let place = Command::PlaceSandboxes { placements: vec![placement("sb", "custom", "custom-runner", 1, Some("km"))] };
    let Ok(Outcome::Placed(results)) = operator(&mut s, place) else { panic!("placed") };
    assert!(results[0].is_ok(), "{results:?}");
    assert!(
        as_key(&mut s, "km", Command::SetSandboxState { id: "sb".into(), state: SandboxState::Stopped }, T0).is_ok()
    );

    assert!(as_key(&mut s, "ka", custom_region("r2"), T0).is_ok());
    assert!(as_key(&mut s, "ka", drain, T0).is_ok());
    // No organization key acts as the operator, whatever its role.
    let quota = Command::SetOrganizationQuota { id: "org".into(), quota: Quota::default() };
    assert!(matches!(as_key(&mut s, "ka", quota, T0), Err(Rejection::Forbidden { .. })));
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn a_revoked_or_expired_key_gets_nothing_not_even_a_replay() {
    let mut s = world();
    operator(&mut s, key("kt", "temporary", Role::Admin, Some(T0 + 1_000))).expect("expiring key");
    assert!(as_key(&mut s, "kt", custom_region("before-expiry"), T0 + 999).is_ok());
    assert!(matches!(as_key(&mut s, "kt", custom_region("at-expiry"), T0 + 1_000), Err(Rejection::Unauthorized(_))));

    // A request with an idempotency key, answered once, then the key is revoked.
    let mut with_key = Proposal {
        credential: Some("ka".into()),
        idempotency_key: Some("org/retry-me".into()),
        ..Proposal::scoped(custom_region("r3"), T0, Some("org".into()))
    };
    assert!(apply(&mut s, &with_key).is_ok());
    let revoke = Command::DeleteApiKey { organization_id: "org".into(), name: "admin-key".into() };
    assert!(matches!(as_key(&mut s, "km", revoke.clone(), T0), Err(Rejection::Forbidden { .. })));
    assert!(operator(&mut s, revoke.clone()).is_ok());
    assert!(matches!(operator(&mut s, revoke), Err(Rejection::NotFound { kind: ObjectKind::ApiKey, .. })));
    with_key.at += 1;
    assert!(matches!(apply(&mut s, &with_key), Err(Rejection::Unauthorized(_))));
    let place = Command::PlaceSandboxes { placements: vec![placement("sb", "custom", "custom-runner", 1, Some("ka"))] };
    let Ok(Outcome::Placed(results)) = operator(&mut s, place) else { panic!("placed") };
    assert!(matches!(results[0], Err(Rejection::Unauthorized(_))));
    // A key of another organization is no key here.
    operator(&mut s, Command::CreateOrganization { id: "other".into(), name: "other".into() }).expect("org");
    let foreign = Command::CreateApiKey {
        key_hash: "kf".into(),
        organization_id: "other".into(),
        name: "foreign".into(),
        role: Role::Admin,
        prefix: String::new(),
        expires_at: None,
    };
    operator(&mut s, foreign).expect("foreign key");
    assert!(matches!(as_key(&mut s, "kf", custom_region("r4"), T0), Err(Rejection::Unauthorized(_))));
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn key_names_are_unique_per_organization_and_last_use_only_moves_on() {
    let mut s = world();
    assert!(matches!(
        operator(&mut s, key("other-hash", "admin-key", Role::Member, None)),
        Err(Rejection::DuplicateName { kind: ObjectKind::ApiKey, .. })
    ));
    assert!(matches!(operator(&mut s, key("k9", "late", Role::Member, Some(T0))), Err(Rejection::Conflict(_))));
    let uses = |at| Command::RecordApiKeyUse {
        uses: vec![KeyUse { key_hash: "ka".into(), at }, KeyUse { key_hash: "gone".into(), at }],
    };
    assert_eq!(operator(&mut s, uses(T0 - 10)), Ok(Outcome::KeysTouched(1)));
    assert_eq!(operator(&mut s, uses(T0 - 20)), Ok(Outcome::KeysTouched(0)));
    // Never past the replicated clock.
    assert_eq!(operator(&mut s, uses(T0 + 1_000_000)), Ok(Outcome::KeysTouched(1)));
    assert_eq!(s.api_keys.get("ka").and_then(|k| k.last_used_at), Some(T0));
}

#[test]
fn quotas_bound_sandboxes_in_shared_regions_only() {
    let mut s = world();
    let quota = Quota { cpu: Some(5), sandboxes: Some(3), ..Quota::default() };
    operator(&mut s, Command::SetOrganizationQuota { id: "org".into(), quota }).expect("quota");
    // One batch of four: 2 + 2 cpu fit, the third (2 more cpu) passes the cpu limit, the
    // fourth (1 cpu) fits cpu and is the third sandbox.
    let batch = ["a", "b", "c", "d"]
        .iter()
        .zip([2, 2, 2, 1])
        .map(|(id, cpu)| placement(id, "shared", "shared-runner", cpu, Some("km")))
        .collect();
    let Ok(Outcome::Placed(results)) = operator(&mut s, Command::PlaceSandboxes { placements: batch }) else {
        panic!("placed")
    };
    assert!(results[0].is_ok() && results[1].is_ok() && results[3].is_ok(), "{results:?}");
    assert!(
        matches!(&results[2], Err(Rejection::QuotaExceeded { limit, quota: 5, used: 4, asked: 2, .. }) if limit == "cpu")
    );
    let one_more = Command::PlaceSandboxes { placements: vec![placement("e", "shared", "shared-runner", 0, None)] };
    let Ok(Outcome::Placed(results)) = operator(&mut s, one_more.clone()) else { panic!("placed") };
    assert!(matches!(&results[0], Err(Rejection::QuotaExceeded { limit, .. }) if limit == "sandboxes"));
    // Custom regions have no limits.
    let custom = (0..5).map(|i| placement(&format!("c{i}"), "custom", "custom-runner", 10, None)).collect();
    let Ok(Outcome::Placed(results)) = operator(&mut s, Command::PlaceSandboxes { placements: custom }) else {
        panic!("placed")
    };
    assert!(results.iter().all(Result::is_ok));
    // A stopped sandbox keeps its share; a deleted one frees it.
    operator(&mut s, Command::SetSandboxState { id: "a".into(), state: SandboxState::Stopped }).expect("stopped");
    let Ok(Outcome::Placed(results)) = operator(&mut s, one_more.clone()) else { panic!("placed") };
    assert!(results[0].is_err());
    operator(&mut s, Command::DeleteSandbox { id: "a".into() }).expect("deleted");
    assert_eq!(s.quota_usage_of("org"), QuotaUsage { resources: resources(3), sandboxes: 2 });
    let Ok(Outcome::Placed(results)) = operator(&mut s, one_more) else { panic!("placed") };
    assert!(results[0].is_ok());
    assert_eq!(s.validate(), Ok(()));
    let restored = State::decode(&s.encode().expect("encode")).expect("decode");
    assert_eq!(restored.quota_usage, s.quota_usage);
}

#[test]
fn a_runner_token_can_be_replaced_but_never_shared() {
    let mut s = world();
    let rotate_runner = |id: &str, hash: &str| Command::SetRunnerToken {
        id: id.into(),
        api_key_hash: hash.into(),
        api_key_hint: "crl_…new".into(),
    };
    let rotate = |hash: &str| rotate_runner("custom-runner", hash);
    assert!(matches!(as_key(&mut s, "km", rotate("new"), T0), Err(Rejection::Forbidden { .. })));
    assert!(matches!(as_key(&mut s, "ka", rotate("tok-shared"), T0), Err(Rejection::Conflict(_))));
    let Ok(Outcome::Runner(runner)) = as_key(&mut s, "ka", rotate("new"), T0) else { panic!("rotated") };
    assert_eq!(runner.api_key_hash, "new");
    assert_eq!(s.runner_keys.get("new").map(String::as_str), Some("custom-runner"));
    assert!(!s.runner_keys.contains_key("tok-custom"));
    // The shared region's runner is the operator's, not the organization's.
    assert!(matches!(as_key(&mut s, "ka", rotate_runner("shared-runner", "x"), T0), Err(Rejection::NotFound { .. })));
    assert_eq!(s.validate(), Ok(()));
}

#[test]
fn a_key_that_expires_cannot_mint_one_that_outlives_it() {
    let mut s = world();
    operator(&mut s, key("kx", "expiring", Role::Admin, Some(T0 + 10_000))).expect("expiring admin key");
    let refused = |s: &mut State, expires_at| {
        matches!(as_key(s, "kx", key("child", "child", Role::Member, expires_at), T0), Err(Rejection::Forbidden { .. }))
    };
    assert!(refused(&mut s, None), "a key without expiry outlives its maker");
    assert!(refused(&mut s, Some(T0 + 10_001)));
    assert!(as_key(&mut s, "kx", key("child", "child", Role::Member, Some(T0 + 10_000)), T0).is_ok());
}

#[test]
fn a_credential_acts_only_within_its_organization_scope() {
    let mut s = world();
    let unscoped = Proposal { credential: Some("ka".into()), ..Proposal::new(custom_region("r9"), T0) };
    assert!(matches!(apply(&mut s, &unscoped), Err(Rejection::Unauthorized(_))));
}

#[test]
fn keys_written_before_names_were_unique_replay_as_they_applied() {
    let mut s = world();
    // Entries from before carry no prefix: a second key of a name was accepted then.
    let old = |hash: &str| Command::CreateApiKey {
        key_hash: hash.into(),
        organization_id: "org".into(),
        name: "cli".into(),
        role: Role::Admin,
        prefix: String::new(),
        expires_at: None,
    };
    assert!(operator(&mut s, old("old-1")).is_ok());
    assert!(operator(&mut s, old("old-2")).is_ok());
    assert!(matches!(operator(&mut s, key("new-3", "cli", Role::Admin, None)), Err(Rejection::DuplicateName { .. })));
    // Revoking by name revokes both.
    operator(&mut s, Command::DeleteApiKey { organization_id: "org".into(), name: "cli".into() }).expect("revoked");
    assert!(!s.api_keys.contains_key("old-1") && !s.api_keys.contains_key("old-2"));
}

#[test]
fn rotating_to_the_current_token_is_refused() {
    let mut s = world();
    let same = Command::SetRunnerToken {
        id: "custom-runner".into(),
        api_key_hash: "tok-custom".into(),
        api_key_hint: "…".into(),
    };
    assert!(matches!(operator(&mut s, same), Err(Rejection::Conflict(_))));
}
