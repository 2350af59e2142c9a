//! The assignment diff: what a runner should run against what its session already sent, from
//! the runner's sandboxes in the state and, when it can tell, only what its journal says
//! changed since the session's cursor.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::state::{RunnerSandboxes, State};
use crate::types::{Resources, SandboxState};

/// What a runner is told to do with one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum AssignmentAction {
    Start,
    Stop,
    Destroy,
}

/// One sandbox as a runner session sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub sandbox_id: String,
    pub action: AssignmentAction,
    pub target: String,
    pub resources: Resources,
}

/// What the node knows of a runner's sandboxes right now.
pub enum AssignmentPoll {
    /// The runner is gone (deleted): end the session.
    Gone,
    /// Nothing changed since the cursor.
    Unchanged,
    /// What changed against what the session sent: sandboxes to send (new, or in another
    /// state) and ids sent before that are gone (destroyed), as of `cursor`.
    Changes { cursor: u64, changed: Vec<Assignment>, gone: Vec<String> },
}

/// A session's poll: `Gone` when the runner was deleted, `Unchanged` when its journal has not
/// moved since `cursor`, else what changed against `sent` as of the journal's new position.
pub fn poll(
    state: &State,
    runner_id: &str,
    cursor: Option<u64>,
    sent: &HashMap<String, AssignmentAction>,
) -> AssignmentPoll {
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
    let empty = RunnerSandboxes::default();
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
            let mut hosted: Vec<(&str, &SandboxState)> = on_runner.iter().map(|(id, s)| (&**id, s)).collect();
            hosted.sort_unstable_by_key(|(id, _)| *id);
            hosted.into_iter().for_each(|(id, sandbox_state)| look_at(id, Some(sandbox_state)));
            // `sent` is hashed with a per-process seed: sorted, the destroys come out in one
            // order in every process (the seeded simulation replays a seed only so).
            let mut not_hosted: Vec<&String> = sent.keys().filter(|id| !on_runner.contains_key(id.as_str())).collect();
            not_hosted.sort_unstable();
            not_hosted.into_iter().for_each(|id| look_at(id, None));
        }
    }
    (changed, gone)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, NewRegion, NewRunner, Placement, Proposal};
    use crate::types::{RegionType, RunnerState};

    const AT: u64 = 1_700_000_000_000;

    /// A ready runner "run" in region "reg" with the sandboxes `ids` placed on it, in that order.
    fn runner_hosting(ids: &[&str]) -> State {
        let mut state = State::default();
        let region = Command::CreateRegion(NewRegion::new("reg", "org", "r", RegionType::Custom));
        let create = Command::CreateRunner(NewRunner::new(
            "run",
            "reg",
            "run",
            "h",
            Resources { cpu: 64, memory_gib: 64, disk_gib: 640, gpu: 0 },
        ));
        let ready = Command::SetRunnerState { id: "run".into(), state: RunnerState::Ready };
        let placements = ids
            .iter()
            .map(|id| Placement {
                sandbox_id: (*id).into(),
                organization_id: "org".into(),
                target: "r".into(),
                region_id: "reg".into(),
                runner_id: "run".into(),
                resources: Resources { cpu: 1, memory_gib: 1, disk_gib: 1, gpu: 0 },
                labels: Default::default(),
                runner_tags: Default::default(),
                idempotency_key: None,
                credential: None,
            })
            .collect();
        for command in [region, create, ready, Command::PlaceSandboxes { placements }] {
            crate::apply(&mut state, &Proposal::new(command, AT)).expect("applied");
        }
        state
    }

    #[test]
    fn the_whole_set_goes_out_in_id_order() {
        let ids: Vec<String> = (0..40).rev().map(|n| format!("sandbox-{n:02}")).collect();
        let state = runner_hosting(&ids.iter().map(String::as_str).collect::<Vec<_>>());
        let (changed, _) = assignment_changes(&state, "run", None, &HashMap::new());
        let mut sorted = ids.clone();
        sorted.sort();
        assert_eq!(changed.into_iter().map(|a| a.sandbox_id).collect::<Vec<_>>(), sorted);
    }

    #[test]
    fn assignment_changes_send_only_what_differs() {
        let mut state = runner_hosting(&["a", "b", "c"]);
        let at = AT;
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
            crate::apply(&mut state, &Proposal::new(command, at)).expect("applied");
        }
        // The whole set, the changes since the cursor, and a cursor from before a rebuild
        // (which the journal refuses, so the whole set again) all agree.
        let mut rebuilt = State::decode(&state.encode().expect("encodes")).expect("decodes");
        rebuilt.carry_local_from(&state);
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
}
