//! Runner health on the node: the directory runner sessions use (token check, assignments,
//! reports into the health table and out to gossip), and the leader's health monitor, which
//! turns reports and silences into `ready` / `unresponsive` through Raft.
//!
//! The monitor's decision is a pure function ([`health_verdict`]) of the replicated state,
//! the health table and the clock, tested on its own. Silence is measured from the later of
//! the runner's last report seen here and the moment this node started watching (became
//! leader), so a new leader whose table is still filling does not demote a healthy fleet.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use corral_api::auth::hash_secret;
use corral_api::ClusterHandle;
use corral_net::gossip::Gossip;
use corral_net::runner_session::{Assignment, AssignmentAction, AssignmentPoll, RunnerDirectory};
use corral_storage::health::{HealthReport, HealthTable, SharedHealth};
use corral_storage::model::{Command, Proposal, RunnerState, SandboxState, State};
use corral_storage::{Raft, SharedState};
use tokio::sync::watch;

/// The node's side of runner sessions.
pub struct NodeRunnerDirectory {
    pub node_id: u64,
    pub shared: SharedState,
    pub health: SharedHealth,
    pub gossip: Gossip,
}

impl RunnerDirectory for NodeRunnerDirectory {
    fn authenticate(&self, token: &str) -> Option<String> {
        let hash = hash_secret(token);
        self.shared.read().state.runner_keys.get(&hash).cloned()
    }

    fn poll_assignments(
        &self,
        runner_id: &str,
        cursor: Option<u64>,
        sent: &HashMap<String, AssignmentAction>,
    ) -> AssignmentPoll {
        let machine = self.shared.read();
        let state = &machine.state;
        if !state.runners.contains_key(runner_id) {
            return AssignmentPoll::Gone;
        }
        let position = state.runner_journals.position(runner_id);
        if cursor == Some(position) {
            return AssignmentPoll::Unchanged;
        }
        let (changed, gone) = assignment_changes(state, runner_id, cursor, sent);
        AssignmentPoll::Changes { cursor: position, changed, gone }
    }

    fn record(&self, report: HealthReport) {
        if self.health.write().merge(report.clone(), Instant::now()) {
            self.gossip.publish(report);
        }
    }

    fn node_id(&self) -> u64 {
        self.node_id
    }
}

/// What a runner should run, against what its session already sent: each sandbox on it that
/// is not destroyed (started or stopped) whose action differs from `sent`, and the ids in
/// `sent` that are no longer on it (to destroy). With `since` (a position of the runner's
/// journal) only the sandboxes that changed after it are looked at, when the journal can tell;
/// otherwise the runner's whole set.
pub fn assignment_changes(
    state: &State,
    runner_id: &str,
    since: Option<u64>,
    sent: &HashMap<String, AssignmentAction>,
) -> (Vec<Assignment>, Vec<String>) {
    let empty = BTreeMap::new();
    let on_runner = state.runner_sandboxes.get(runner_id).unwrap_or(&empty);
    let action_of = |sandbox_state: &SandboxState| match sandbox_state {
        SandboxState::Started | SandboxState::Pending => Some(AssignmentAction::Start),
        SandboxState::Stopped => Some(AssignmentAction::Stop),
        SandboxState::Error | SandboxState::Destroyed => None,
    };
    let assignment = |id: &str, action: AssignmentAction| {
        let s = state.sandboxes.get(id)?;
        Some(Assignment { sandbox_id: s.id.clone(), action, target: s.target.clone(), resources: s.resources })
    };
    let was_sent = |id: &str| sent.get(id).is_some_and(|action| *action != AssignmentAction::Destroy);
    let mut changed = Vec::new();
    let mut gone = Vec::new();
    // One sandbox, with its state on the runner (`None`: not on it, or destroyed).
    let mut look_at = |id: &str, on_runner: Option<&SandboxState>| match on_runner {
        Some(sandbox_state) => {
            if let Some(action) = action_of(sandbox_state).filter(|action| sent.get(id) != Some(action)) {
                changed.extend(assignment(id, action));
            }
        }
        None if was_sent(id) => gone.push(id.to_string()),
        None => {}
    };
    match since.and_then(|cursor| state.runner_journals.changed_since(runner_id, cursor)) {
        Some(ids) => ids.into_iter().for_each(|id| look_at(id, on_runner.get(id))),
        None => {
            on_runner.iter().for_each(|(id, sandbox_state)| look_at(id, Some(sandbox_state)));
            sent.keys().filter(|id| !on_runner.contains_key(*id)).for_each(|id| look_at(id, None));
        }
    }
    (changed, gone)
}

/// Runners to move to `ready` (they report) and to `unresponsive` (silent for longer than
/// `silence`, counted from no earlier than `watching_since`).
pub fn health_verdict(
    state: &State,
    health: &HealthTable,
    now: Instant,
    silence: Duration,
    watching_since: Instant,
) -> (Vec<String>, Vec<String>) {
    let mut reporting = Vec::new();
    let mut silent = Vec::new();
    for runner in state.runners.values() {
        let last_seen = health.get(&runner.id).map(|e| e.seen_at);
        let fresh = last_seen.is_some_and(|seen| now.saturating_duration_since(seen) <= silence);
        match runner.state {
            RunnerState::Initializing | RunnerState::Unresponsive if fresh => reporting.push(runner.id.clone()),
            RunnerState::Ready => {
                let since = last_seen.map_or(watching_since, |seen| seen.max(watching_since));
                if now.saturating_duration_since(since) > silence {
                    silent.push(runner.id.clone());
                }
            }
            _ => {}
        }
    }
    (reporting, silent)
}

/// How the monitor runs.
#[derive(Debug, Clone)]
pub struct MonitorConfig {
    /// Silence after which a ready runner becomes unresponsive; `None` turns the monitor off
    /// (runners then change state only through the admin API).
    pub silence: Option<Duration>,
    pub interval: Duration,
}

/// Most runners one health entry carries.
const MAX_RUNNERS_PER_ENTRY: usize = 5_000;

/// The leader's loop: every `interval`, commit the verdict (if any) through Raft. Also drops
/// health entries of deleted runners, on every node.
pub async fn run_monitor(
    raft: Raft,
    cluster: Arc<dyn ClusterHandle>,
    health: SharedHealth,
    node_id: u64,
    config: MonitorConfig,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut leading_since: Option<Instant> = None;
    let mut last_prune = Instant::now();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        if last_prune.elapsed() > Duration::from_secs(30) {
            last_prune = Instant::now();
            let machine = cluster.state().read();
            health.write().retain(|id| machine.state.runners.contains_key(id));
        }
        let leading = raft.metrics().borrow().current_leader == Some(node_id);
        if !leading {
            leading_since = None;
            continue;
        }
        let since = *leading_since.get_or_insert_with(Instant::now);
        let Some(silence) = config.silence else { continue };
        let (reporting, silent) = {
            let machine = cluster.state().read();
            let table = health.read();
            health_verdict(&machine.state, &table, Instant::now(), silence, since)
        };
        if reporting.is_empty() && silent.is_empty() {
            continue;
        }
        tracing::info!(ready = reporting.len(), unresponsive = silent.len(), "runner health changes");
        let (reporting_chunks, silent_chunks) =
            (reporting.chunks(MAX_RUNNERS_PER_ENTRY), silent.chunks(MAX_RUNNERS_PER_ENTRY));
        for chunk in reporting_chunks {
            commit(&cluster, Command::RecordRunnerHealth { reporting: chunk.to_vec(), silent: Vec::new() }).await;
        }
        for chunk in silent_chunks {
            commit(&cluster, Command::RecordRunnerHealth { reporting: Vec::new(), silent: chunk.to_vec() }).await;
        }
    }
}

async fn commit(cluster: &Arc<dyn ClusterHandle>, command: Command) {
    let proposal = Proposal::new(command, corral_api::now_millis());
    match cluster.propose(proposal).await {
        Ok(Ok(corral_storage::model::Outcome::RunnersChanged(ids))) => {
            metrics::counter!("corral_runner_health_transitions_total").increment(ids.len() as u64);
        }
        Ok(other) => tracing::warn!(?other, "unexpected outcome of a runner health entry"),
        Err(e) => tracing::warn!(error = %e, "runner health entry not committed; retrying next round"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use corral_storage::model::{Resources, Runner};

    fn runner(id: &str, state: RunnerState) -> Runner {
        Runner {
            id: id.into(),
            name: id.into(),
            region_id: "reg".into(),
            organization_id: "org".into(),
            state,
            schedulable: true,
            api_version: "2".into(),
            domain: None,
            api_url: None,
            proxy_url: None,
            capacity: Resources { cpu: 4, memory_gib: 8, disk_gib: 40 },
            allocated: Resources::default(),
            started_sandboxes: 0,
            api_key_hash: format!("hash-{id}"),
            api_key_hint: String::new(),
            created_at: 0,
            updated_at: 0,
        }
    }

    fn report(id: &str, seq: u64) -> HealthReport {
        HealthReport {
            runner_id: id.into(),
            seq,
            cpu_pct: 1.0,
            memory_pct: 1.0,
            disk_pct: 1.0,
            version: "t".into(),
            snapshot_count: 0,
            started_sandboxes: 0,
            measured_at: 0,
            via_node: 1,
            received_at: 0,
        }
    }

    #[test]
    fn verdict_follows_reports_and_silence() {
        let start = Instant::now();
        let silence = Duration::from_secs(10);
        let mut state = State::default();
        for (id, st) in [
            ("new", RunnerState::Initializing),
            ("ok", RunnerState::Ready),
            ("quiet", RunnerState::Ready),
            ("back", RunnerState::Unresponsive),
            ("off", RunnerState::Disabled),
        ] {
            state.runners.insert(id.into(), runner(id, st));
        }
        let mut table = HealthTable::default();
        table.merge(report("new", 1), start);
        table.merge(report("ok", 1), start + Duration::from_secs(15));
        table.merge(report("quiet", 1), start);
        table.merge(report("back", 1), start + Duration::from_secs(15));
        table.merge(report("off", 1), start + Duration::from_secs(15));

        let now = start + Duration::from_secs(16);
        let (reporting, silent) = health_verdict(&state, &table, now, silence, start);
        assert_eq!(reporting, vec!["back".to_string()], "`new` reported, but 16 s ago");
        assert_eq!(silent, vec!["quiet".to_string()]);

        // A leader that started watching 5 s ago gives every runner the full silence first.
        let (_, silent) = health_verdict(&state, &table, now, silence, now - Duration::from_secs(5));
        assert!(silent.is_empty());
    }

    #[test]
    fn assignment_changes_send_only_what_differs() {
        use corral_storage::model::{Command, Proposal, RegionType};
        let mut state = State::default();
        let at = 1_700_000_000_000;
        let region = Command::CreateRegion {
            id: "reg".into(),
            organization_id: "org".into(),
            name: "r".into(),
            region_type: RegionType::Custom,
            proxy_url: None,
            ssh_gateway_url: None,
            snapshot_manager_url: None,
            proxy_api_key_hash: None,
            ssh_gateway_api_key_hash: None,
            snapshot_manager_username: None,
            snapshot_manager_password: None,
        };
        let create = Command::CreateRunner {
            id: "run".into(),
            region_id: "reg".into(),
            name: "run".into(),
            api_key_hash: "h".into(),
            api_key_hint: String::new(),
            api_version: "2".into(),
            domain: None,
            api_url: None,
            proxy_url: None,
            capacity: Resources { cpu: 8, memory_gib: 8, disk_gib: 80 },
        };
        let ready = Command::SetRunnerState { id: "run".into(), state: RunnerState::Ready };
        let placements = ["a", "b", "c"]
            .iter()
            .map(|id| corral_storage::model::Placement {
                sandbox_id: (*id).into(),
                organization_id: "org".into(),
                target: "r".into(),
                region_id: "reg".into(),
                runner_id: "run".into(),
                resources: Resources { cpu: 1, memory_gib: 1, disk_gib: 1 },
                labels: Default::default(),
                idempotency_key: None,
            })
            .collect();
        for command in [region, create, ready, Command::PlaceSandboxes { placements }] {
            corral_storage::model::apply(&mut state, &Proposal::new(command, at)).expect("applied");
        }
        let (changed, gone) = assignment_changes(&state, "run", None, &HashMap::new());
        assert_eq!(changed.len(), 3);
        assert!(gone.is_empty());

        let mut sent: HashMap<String, AssignmentAction> =
            changed.into_iter().map(|a| (a.sandbox_id, a.action)).collect();
        let cursor = state.runner_journals.position("run");
        assert_eq!(assignment_changes(&state, "run", Some(cursor), &sent), (Vec::new(), Vec::new()));
        for command in [
            Command::SetSandboxState { id: "a".into(), state: SandboxState::Stopped },
            Command::DeleteSandbox { id: "b".into() },
        ] {
            corral_storage::model::apply(&mut state, &Proposal::new(command, at)).expect("applied");
        }
        // The whole set, the changes since the cursor, and a cursor from before a rebuild
        // (which the journal refuses, so the whole set again) all agree.
        let rebuilt = State::decode(&state.encode().expect("encodes")).expect("decodes");
        for (state, since) in [(&state, None), (&state, Some(cursor)), (&rebuilt, Some(cursor))] {
            let (changed, gone) = assignment_changes(state, "run", since, &sent);
            assert_eq!(
                changed.iter().map(|a| (a.sandbox_id.as_str(), a.action)).collect::<Vec<_>>(),
                vec![("a", AssignmentAction::Stop)],
                "since {since:?}"
            );
            assert_eq!(gone, vec!["b".to_string()], "since {since:?}");
        }
        assert_eq!(rebuilt.runner_journals.changed_since("run", cursor), None);
        assert_eq!(
            state.runner_journals.changed_since("run", cursor).map(|mut ids| {
                ids.sort_unstable();
                ids
            }),
            Some(vec!["a", "b"]),
            "only what changed is looked at"
        );
        sent.insert("b".into(), AssignmentAction::Destroy);
        sent.insert("a".into(), AssignmentAction::Stop);
        assert_eq!(assignment_changes(&state, "run", None, &sent), (Vec::new(), Vec::new()));
        assert_eq!(assignment_changes(&state, "run", Some(cursor), &sent), (Vec::new(), Vec::new()));
    }

    #[test]
    fn a_runner_that_never_reported_is_demoted_after_the_silence() {
        let start = Instant::now();
        let mut state = State::default();
        state.runners.insert("mute".into(), runner("mute", RunnerState::Ready));
        let table = HealthTable::default();
        let silence = Duration::from_secs(10);
        let (_, silent) = health_verdict(&state, &table, start + Duration::from_secs(9), silence, start);
        assert!(silent.is_empty());
        let (_, silent) = health_verdict(&state, &table, start + Duration::from_secs(11), silence, start);
        assert_eq!(silent, vec!["mute".to_string()]);
    }
}
