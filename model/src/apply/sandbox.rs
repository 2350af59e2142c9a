//! Sandboxes: placement batches (with the capacity re-check), rescheduling rounds, state
//! changes, delete.

use super::{in_scope, insert_new, not_found};
use std::collections::BTreeMap;
use std::sync::Arc;

use crate::access::authorize_placement;
use crate::command::{Placement, Reschedule};
use crate::outcome::{ApplyResult, Outcome, Rejection};
use crate::placement::{eligible, fits, needs_rescheduling, tags_match, under_sandbox_limit};
use crate::quota::{admits, counts_against_quota, QuotaUsage};
use crate::state::{IdempotencyRecord, RunnerSandboxes, SharedId, State};
use crate::types::{Millis, ObjectKind, Resources, Sandbox, SandboxState, SharedSandbox};

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
pub fn recorded_placement(state: &State, key: &str) -> Option<Result<SharedSandbox, Rejection>> {
    state.idempotency.get(key).map(|record| match &record.result {
        Ok(Outcome::Sandbox(sandbox)) => Ok(sandbox.clone()),
        Ok(_) => Err(Rejection::IdempotencyKeyReused),
        Err(e) => Err(e.clone()),
    })
}

fn place_idempotent(state: &mut State, p: &Placement, at: Millis) -> Result<SharedSandbox, Rejection> {
    // Before any replay, as for every other command: a revoked or expired key gets nothing.
    authorize_placement(state, p.credential.as_deref(), &p.organization_id, at)?;
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

/// Whether runner `runner_id` may take a sandbox of `region_id` with these constraints and
/// resources now: the re-check of every placement and move on apply, so that whatever a stale
/// leader decided, a runner is never overcommitted and never runs what it must not.
fn check_target(
    state: &State,
    runner_id: &str,
    region_id: &str,
    runner_tags: &BTreeMap<String, String>,
    resources: Resources,
) -> Result<(), Rejection> {
    let runner = state.runners.get(runner_id).ok_or_else(|| not_found(ObjectKind::Runner, runner_id))?;
    if runner.region_id != region_id {
        return Err(Rejection::Conflict(format!("runner '{}' is not in region '{region_id}'", runner.id)));
    }
    if !eligible(runner) {
        return Err(Rejection::RunnerNotSchedulable {
            runner_id: runner.id.clone(),
            state: runner.state,
            schedulable: runner.schedulable,
            draining: runner.draining,
        });
    }
    if !tags_match(&runner.tags, runner_tags) {
        return Err(Rejection::RunnerTagsMismatch { runner_id: runner.id.clone() });
    }
    let hosted = state.runner_sandboxes.get(runner_id).map_or(0, |ids| ids.len() as u64);
    let recheck = !crate::injected::injected(crate::injected::InjectedBug::SkipCapacityRecheck);
    if recheck
        && (!fits(runner.capacity, runner.allocated, resources) || !under_sandbox_limit(runner.max_sandboxes, hosted))
    {
        return Err(Rejection::InsufficientCapacity { runner_id: runner.id.clone() });
    }
    Ok(())
}

/// One Raft entry for a rescheduling round; each sandbox moves (or is marked) or not alone.
pub(super) fn reschedule_all(
    state: &mut State,
    moves: &[Reschedule],
    unresponsive_for_ms: u64,
    at: Millis,
) -> ApplyResult {
    let results = moves.iter().map(|m| reschedule_one(state, m, unresponsive_for_ms, at)).collect();
    Ok(Outcome::Placed(results))
}

/// Moves one sandbox off a runner that needs it (frees the old allocation, charges the new
/// runner, tells both runners' journals), or marks a started one `error` when no runner was
/// found for it. A sandbox is on exactly one runner before and after.
fn reschedule_one(
    state: &mut State,
    m: &Reschedule,
    unresponsive_for_ms: u64,
    at: Millis,
) -> Result<SharedSandbox, Rejection> {
    let sandbox =
        state.sandboxes.get(m.sandbox_id.as_str()).ok_or_else(|| not_found(ObjectKind::Sandbox, &m.sandbox_id))?;
    if sandbox.state == SandboxState::Destroyed || sandbox.runner_id != m.from_runner_id {
        return Err(Rejection::Conflict(format!(
            "sandbox '{}' is no longer on runner '{}'",
            m.sandbox_id, m.from_runner_id
        )));
    }
    let from = state.runners.get(&m.from_runner_id).ok_or_else(|| not_found(ObjectKind::Runner, &m.from_runner_id))?;
    if !needs_rescheduling(from, at, unresponsive_for_ms) {
        return Err(Rejection::Conflict(format!("runner '{}' keeps its sandboxes ({})", from.id, from.state.label())));
    }
    let (resources, old_state) = (sandbox.resources, sandbox.state);
    let Some(to) = &m.to_runner_id else {
        let reason = format!(
            "runner '{}' is {}; no other runner of region '{}' can take the sandbox now (retrying)",
            from.id,
            from.state.label(),
            sandbox.region_id
        );
        if old_state != SandboxState::Started {
            return Err(Rejection::Conflict(format!("sandbox '{}' is not started", m.sandbox_id)));
        }
        set_sandbox_state(state, &m.sandbox_id, SandboxState::Error, at)?;
        let sandbox = state
            .sandboxes
            .get_mut(m.sandbox_id.as_str())
            .ok_or_else(|| not_found(ObjectKind::Sandbox, &m.sandbox_id))?;
        Arc::make_mut(sandbox).error_reason = Some(reason);
        return Ok(sandbox.clone());
    };
    if *to == m.from_runner_id {
        return Err(Rejection::Conflict(format!("sandbox '{}' cannot move to the runner it is on", m.sandbox_id)));
    }
    check_target(state, to, &sandbox.region_id, &sandbox.runner_tags, resources)?;
    // A stopped sandbox stays stopped; a started one, or one marked error for want of room,
    // starts on its new runner.
    let new_state = if old_state == SandboxState::Stopped { SandboxState::Stopped } else { SandboxState::Started };
    let id = release(state, &m.from_runner_id, &m.sandbox_id, resources, old_state, at);
    charge(state, to, &id, resources, new_state, at);
    let shared =
        state.sandboxes.get_mut(m.sandbox_id.as_str()).ok_or_else(|| not_found(ObjectKind::Sandbox, &m.sandbox_id))?;
    let sandbox = Arc::make_mut(shared);
    sandbox.runner_id = to.clone();
    sandbox.rescheduled_from = Some(m.from_runner_id.clone());
    sandbox.error_reason = None;
    sandbox.state = new_state;
    sandbox.updated_at = at;
    Ok(shared.clone())
}

/// Re-checks capacity on apply: whatever a stale leader decided, a runner is never overcommitted.
fn place_one(state: &mut State, p: &Placement, at: Millis) -> Result<SharedSandbox, Rejection> {
    let sandbox = Arc::new(Sandbox {
        rescheduled_from: None,
        error_reason: None,
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
    });
    // Inserted first, checked after, in the order the checks always had (the id, then the
    // target, then the quota); see `insert_new`.
    let id = SharedId::from(p.sandbox_id.as_str());
    insert_new(&mut state.sandboxes, id.clone(), sandbox.clone(), ObjectKind::Sandbox)?;
    let admitted = check_target(state, &p.runner_id, &p.region_id, &p.runner_tags, p.resources)
        .and_then(|()| admit_to_quota(state, &p.organization_id, &p.region_id, p.resources, &QuotaUsage::default()));
    let counted = match admitted {
        Ok(counted) => counted,
        Err(rejection) => {
            state.sandboxes.remove(p.sandbox_id.as_str());
            return Err(rejection);
        }
    };
    if counted {
        state.quota_usage.entry(p.organization_id.clone()).or_default().add(p.resources);
    }
    charge(state, &p.runner_id, &id, p.resources, SandboxState::Started, at);
    Ok(sandbox)
}

/// Whether one more sandbox of `resources` for `organization_id` in `region_id` fits its quota
/// on top of what it holds and `planned` (what a scheduler batch already planned for it).
/// `Ok(true)`: it counts against the quota (a shared region), `Ok(false)`: no quota applies.
pub fn admit_to_quota(
    state: &State,
    organization_id: &str,
    region_id: &str,
    resources: Resources,
    planned: &QuotaUsage,
) -> Result<bool, Rejection> {
    if !state.regions.get(region_id).is_some_and(counts_against_quota) {
        return Ok(false);
    }
    if let Some(org) = state.organizations.get(organization_id).filter(|o| !o.quota.is_unlimited()) {
        let used = state.quota_usage_of(organization_id).plus(planned);
        admits(organization_id, &org.quota, &used, resources)?;
    }
    Ok(true)
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
    if !state.runners.contains_key(&runner_id) {
        return Err(not_found(ObjectKind::Runner, &runner_id));
    }
    if new_state == SandboxState::Destroyed && old_state != SandboxState::Destroyed {
        let (organization_id, region_id) = (sandbox.organization_id.clone(), sandbox.region_id.clone());
        if state.regions.get(&region_id).is_some_and(counts_against_quota) {
            if let Some(usage) = state.quota_usage.get_mut(&organization_id) {
                usage.remove(resources);
                if *usage == QuotaUsage::default() {
                    state.quota_usage.remove(&organization_id);
                }
            }
        }
        release(state, &runner_id, id, resources, old_state, at);
    } else {
        let runner = state.runners.get_mut(&runner_id).ok_or_else(|| not_found(ObjectKind::Runner, &runner_id))?;
        let was_started = old_state == SandboxState::Started;
        let is_started = new_state == SandboxState::Started;
        if was_started && !is_started {
            runner.started_sandboxes = runner.started_sandboxes.saturating_sub(1);
        }
        if !was_started && is_started {
            runner.started_sandboxes += 1;
        }
        runner.updated_at = at;
        if let Some(indexed) = state.runner_sandboxes.get_mut(&runner_id).and_then(|ids| ids.get_mut(id)) {
            *indexed = new_state;
        }
        let id = shared_id(state, id);
        state.runner_journals.record(&runner_id, &id, new_state == SandboxState::Destroyed);
    }
    let shared = state.sandboxes.get_mut(id).ok_or_else(|| not_found(ObjectKind::Sandbox, id))?;
    let sandbox = Arc::make_mut(shared);
    sandbox.state = new_state;
    if new_state != SandboxState::Error {
        sandbox.error_reason = None;
    }
    sandbox.updated_at = at;
    Ok(Outcome::Sandbox(shared.clone()))
}

/// Puts sandbox `id` (in `sandbox_state`, not destroyed) on runner `runner_id`: charges its
/// resources, counts it if started, indexes it and tells the runner's journal.
fn charge(
    state: &mut State,
    runner_id: &str,
    id: &SharedId,
    resources: Resources,
    sandbox_state: SandboxState,
    at: Millis,
) {
    if let Some(runner) = state.runners.get_mut(runner_id) {
        runner.allocated = runner.allocated.saturating_add(&resources);
        if sandbox_state == SandboxState::Started {
            runner.started_sandboxes += 1;
        }
        runner.updated_at = at;
    }
    // Looked up before inserting: the runner almost always has its index already, and an
    // `entry` would allocate a copy of its id for every placement only to drop it.
    if !state.runner_sandboxes.contains_key(runner_id) {
        state.runner_sandboxes.insert(runner_id.to_string(), RunnerSandboxes::default());
    }
    if let Some(ids) = state.runner_sandboxes.get_mut(runner_id) {
        ids.insert(id.clone(), sandbox_state);
    }
    state.runner_journals.record(runner_id, id, false);
}

/// Takes sandbox `id` (in `sandbox_state`, not destroyed) off runner `runner_id`: frees its
/// resources, uncounts it if started, drops it from the runner's index and journals it gone.
fn release(
    state: &mut State,
    runner_id: &str,
    id: &str,
    resources: Resources,
    sandbox_state: SandboxState,
    at: Millis,
) -> SharedId {
    if let Some(runner) = state.runners.get_mut(runner_id) {
        runner.allocated = runner.allocated.saturating_sub(&resources);
        if sandbox_state == SandboxState::Started {
            runner.started_sandboxes = runner.started_sandboxes.saturating_sub(1);
        }
        runner.updated_at = at;
    }
    if let Some(ids) = state.runner_sandboxes.get_mut(runner_id) {
        ids.remove(id);
        if ids.is_empty() {
            state.runner_sandboxes.remove(runner_id);
        }
    }
    let id = shared_id(state, id);
    state.runner_journals.record(runner_id, &id, true);
    id
}

/// Sandbox `id` in its shared form: the sandbox map's own key, which the runner index and the
/// journal share, or a new one for an id the map does not hold.
fn shared_id(state: &State, id: &str) -> SharedId {
    state.sandboxes.get_key_value(id).map_or_else(|| SharedId::from(id), |(key, _)| key.clone())
}
