//! Sandboxes: placement batches (with the capacity re-check), state changes, delete.

use super::{in_scope, not_found};
use crate::command::Placement;
use crate::outcome::{ApplyResult, Outcome, Rejection};
use crate::placement::{eligible, fits, tags_match, under_sandbox_limit};
use crate::state::{IdempotencyRecord, State};
use crate::types::{Millis, ObjectKind, Sandbox, SandboxState};

/// One Raft entry for a whole scheduler batch; each placement succeeds or fails alone.
pub(super) fn place_all(state: &mut State, placements: &[Placement], at: Millis) -> ApplyResult {
    let results = placements.iter().map(|p| place_idempotent(state, p, at)).collect();
    Ok(Outcome::Placed(results))
}

pub(super) fn set_state(
    state: &mut State,
    id: &str,
    scope: Option<&str>,
    new_state: SandboxState,
    at: Millis,
) -> ApplyResult {
    if !state.sandboxes.get(id).is_some_and(|s| in_scope(scope, &s.organization_id)) {
        return Err(not_found(ObjectKind::Sandbox, id));
    }
    set_sandbox_state(state, id, new_state, at)
}

/// Destroys the sandbox (freeing its allocation) and forgets it.
pub(super) fn delete(state: &mut State, id: &str, scope: Option<&str>, at: Millis) -> ApplyResult {
    let current = state
        .sandboxes
        .get(id)
        .filter(|s| in_scope(scope, &s.organization_id))
        .ok_or_else(|| not_found(ObjectKind::Sandbox, id))?;
    if current.state != SandboxState::Destroyed {
        set_sandbox_state(state, id, SandboxState::Destroyed, at)?;
    }
    state.sandboxes.remove(id);
    Ok(Outcome::Deleted { kind: ObjectKind::Sandbox, id: id.to_string() })
}

/// The result a placement's idempotency key recorded, if any.
pub fn recorded_placement(state: &State, key: &str) -> Option<Result<Sandbox, Rejection>> {
    state.idempotency.get(key).map(|record| match &record.result {
        Ok(Outcome::Sandbox(sandbox)) => Ok(sandbox.clone()),
        Ok(_) => Err(Rejection::IdempotencyKeyReused),
        Err(e) => Err(e.clone()),
    })
}

fn place_idempotent(state: &mut State, p: &Placement, at: Millis) -> Result<Sandbox, Rejection> {
    let Some(key) = &p.idempotency_key else {
        return place_one(state, p, at);
    };
    if let Some(first) = recorded_placement(state, key) {
        return first;
    }
    let result = place_one(state, p, at);
    // Only successes are remembered: a failed placement changed nothing, and a retry may fit.
    if let Ok(sandbox) = &result {
        let record = IdempotencyRecord { at, fingerprint: None, result: Ok(Outcome::Sandbox(sandbox.clone())) };
        state.idempotency.insert(key.clone(), record);
        state.idempotency_by_age.insert((at, key.clone()));
    }
    result
}

/// Re-checks capacity on apply: whatever a stale leader decided, a runner is never overcommitted.
fn place_one(state: &mut State, p: &Placement, at: Millis) -> Result<Sandbox, Rejection> {
    if state.sandboxes.contains_key(&p.sandbox_id) {
        return Err(Rejection::DuplicateId { kind: ObjectKind::Sandbox, id: p.sandbox_id.clone() });
    }
    let runner = state.runners.get_mut(&p.runner_id).ok_or_else(|| not_found(ObjectKind::Runner, &p.runner_id))?;
    if runner.region_id != p.region_id {
        return Err(Rejection::Conflict(format!("runner '{}' is not in region '{}'", runner.id, p.region_id)));
    }
    if !eligible(runner) {
        return Err(Rejection::RunnerNotSchedulable {
            runner_id: runner.id.clone(),
            state: runner.state,
            schedulable: runner.schedulable,
            draining: runner.draining,
        });
    }
    if !tags_match(&runner.tags, &p.runner_tags) {
        return Err(Rejection::RunnerTagsMismatch { runner_id: runner.id.clone() });
    }
    let hosted = state.runner_sandboxes.get(&p.runner_id).map_or(0, |ids| ids.len() as u64);
    if !fits(runner.capacity, runner.allocated, p.resources) || !under_sandbox_limit(runner.max_sandboxes, hosted) {
        return Err(Rejection::InsufficientCapacity { runner_id: runner.id.clone() });
    }
    runner.allocated = runner.allocated.saturating_add(&p.resources);
    runner.started_sandboxes += 1;
    runner.updated_at = at;
    state.runner_sandboxes.entry(p.runner_id.clone()).or_default().insert(p.sandbox_id.clone(), SandboxState::Started);
    state.runner_journals.record(&p.runner_id, &p.sandbox_id, false);
    let sandbox = Sandbox {
        id: p.sandbox_id.clone(),
        organization_id: p.organization_id.clone(),
        target: p.target.clone(),
        region_id: p.region_id.clone(),
        runner_id: p.runner_id.clone(),
        resources: p.resources,
        labels: p.labels.clone(),
        runner_tags: p.runner_tags.clone(),
        state: SandboxState::Started,
        created_at: at,
        updated_at: at,
    };
    state.sandboxes.insert(sandbox.id.clone(), sandbox.clone());
    Ok(sandbox)
}

/// Moves a sandbox between states, keeping the runner's allocation and started count in step:
/// a started sandbox holds its resources and counts as started; a stopped one holds its
/// resources (it may be started again on the same runner) but is not counted; a destroyed one
/// holds nothing.
fn set_sandbox_state(state: &mut State, id: &str, new_state: SandboxState, at: Millis) -> ApplyResult {
    let sandbox = state.sandboxes.get(id).ok_or_else(|| not_found(ObjectKind::Sandbox, id))?;
    let old_state = sandbox.state;
    if old_state == SandboxState::Destroyed && new_state != SandboxState::Destroyed {
        return Err(Rejection::Conflict(format!("sandbox '{id}' is destroyed")));
    }
    let runner_id = sandbox.runner_id.clone();
    let resources = sandbox.resources;
    let runner = state.runners.get_mut(&runner_id).ok_or_else(|| not_found(ObjectKind::Runner, &runner_id))?;
    let was_started = old_state == SandboxState::Started;
    let is_started = new_state == SandboxState::Started;
    if was_started && !is_started {
        runner.started_sandboxes = runner.started_sandboxes.saturating_sub(1);
    }
    if !was_started && is_started {
        runner.started_sandboxes += 1;
    }
    if new_state == SandboxState::Destroyed && old_state != SandboxState::Destroyed {
        runner.allocated = runner.allocated.saturating_sub(&resources);
        if let Some(ids) = state.runner_sandboxes.get_mut(&runner_id) {
            ids.remove(id);
            if ids.is_empty() {
                state.runner_sandboxes.remove(&runner_id);
            }
        }
    } else if let Some(indexed) = state.runner_sandboxes.get_mut(&runner_id).and_then(|ids| ids.get_mut(id)) {
        *indexed = new_state;
    }
    state.runner_journals.record(&runner_id, id, new_state == SandboxState::Destroyed);
    runner.updated_at = at;
    let sandbox = state.sandboxes.get_mut(id).ok_or_else(|| not_found(ObjectKind::Sandbox, id))?;
    sandbox.state = new_state;
    sandbox.updated_at = at;
    Ok(Outcome::Sandbox(sandbox.clone()))
}
