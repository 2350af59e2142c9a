//! Runners: create, schedulable, draining, tags and sandbox limit, capacity, state (operator or
//! health verdict), delete.

use std::collections::BTreeMap;

use super::{in_scope, not_found, owned_runner};
use crate::command::{FieldUpdate, NewRunner};
use crate::outcome::{ApplyResult, Outcome, Rejection};
use crate::state::State;
use crate::types::{CapacitySource, Millis, ObjectKind, RegionType, Resources, Runner, RunnerState};

/// An organization (`scope`) may add runners only to its own custom regions; the operator
/// (no scope) to any region.
pub(super) fn create(state: &mut State, new: &NewRunner, scope: Option<&str>, at: Millis) -> ApplyResult {
    let region_id = &new.region_id;
    let region = state.regions.get(region_id).ok_or_else(|| not_found(ObjectKind::Region, region_id))?;
    if scope.is_some() {
        // Shared regions are visible to every organization, so say why, not "not found".
        if region.region_type == RegionType::Shared {
            return Err(Rejection::Conflict(format!(
                "region '{region_id}' is a shared region; runners can be added only to custom regions"
            )));
        }
        if !in_scope(scope, &region.organization_id) {
            return Err(not_found(ObjectKind::Region, region_id));
        }
        if region.region_type != RegionType::Custom {
            return Err(Rejection::Conflict(format!(
                "region '{region_id}' is not a custom region; runners can be added only to custom regions"
            )));
        }
    }
    let organization_id = region.organization_id.clone();
    if state.runners.contains_key(&new.id) {
        return Err(Rejection::DuplicateId { kind: ObjectKind::Runner, id: new.id.clone() });
    }
    let name_key = (region_id.clone(), new.name.clone());
    if state.runner_names.contains_key(&name_key) {
        return Err(Rejection::DuplicateName { kind: ObjectKind::Runner, name: new.name.clone() });
    }
    // A runner agent is known by its token alone, so no two runners may share one.
    if state.runner_keys.contains_key(&new.api_key_hash) {
        return Err(Rejection::Conflict("another runner already uses this token; each runner needs its own".into()));
    }
    let runner = Runner {
        id: new.id.clone(),
        name: new.name.clone(),
        region_id: region_id.clone(),
        organization_id,
        state: RunnerState::Initializing,
        state_changed_at: at,
        schedulable: true,
        draining: false,
        api_version: new.api_version.clone(),
        domain: new.domain.clone(),
        api_url: new.api_url.clone(),
        proxy_url: new.proxy_url.clone(),
        capacity: new.capacity,
        tags: new.tags.clone(),
        max_sandboxes: new.max_sandboxes,
        // Created with a capacity, the operator chose it; without, the agent will report it.
        capacity_source: Some(CapacitySource::for_capacity(new.capacity)),
        allocated: Resources::default(),
        started_sandboxes: 0,
        api_key_hash: new.api_key_hash.clone(),
        api_key_hint: new.api_key_hint.clone(),
        created_at: at,
        updated_at: at,
    };
    state.runner_names.insert(name_key, new.id.clone());
    state.runner_keys.insert(runner.api_key_hash.clone(), new.id.clone());
    state.runners.insert(new.id.clone(), runner.clone());
    Ok(Outcome::Runner(runner))
}

/// `None` toggles.
pub(super) fn set_schedulable(
    state: &mut State,
    id: &str,
    scope: Option<&str>,
    schedulable: Option<bool>,
    at: Millis,
) -> ApplyResult {
    let runner = owned_runner(state, id, scope)?;
    runner.schedulable = schedulable.unwrap_or(!runner.schedulable);
    runner.updated_at = at;
    Ok(Outcome::Runner(runner.clone()))
}

pub(super) fn set_draining(
    state: &mut State,
    id: &str,
    scope: Option<&str>,
    draining: bool,
    at: Millis,
) -> ApplyResult {
    let runner = owned_runner(state, id, scope)?;
    runner.draining = draining;
    runner.updated_at = at;
    Ok(Outcome::Runner(runner.clone()))
}

/// New tags (replacing the old ones whole) and sandbox limit. Sandboxes already on the runner
/// stay, whatever their constraints or the new limit say: like draining, this steers only new
/// placements.
pub(super) fn update(
    state: &mut State,
    id: &str,
    scope: Option<&str>,
    tags: Option<&BTreeMap<String, String>>,
    max_sandboxes: &FieldUpdate<u64>,
    at: Millis,
) -> ApplyResult {
    let runner = owned_runner(state, id, scope)?;
    if let Some(tags) = tags {
        runner.tags = tags.clone();
    }
    max_sandboxes.apply_to(&mut runner.max_sandboxes);
    runner.updated_at = at;
    Ok(Outcome::Runner(runner.clone()))
}

/// Replaces the runner's token; like on create, no two runners may share one.
pub(super) fn set_token(
    state: &mut State,
    id: &str,
    scope: Option<&str>,
    api_key_hash: &str,
    api_key_hint: &str,
    at: Millis,
) -> ApplyResult {
    if state.runner_keys.get(api_key_hash).is_some_and(|holder| holder != id) {
        return Err(Rejection::Conflict("another runner already uses this token; each runner needs its own".into()));
    }
    let runner = owned_runner(state, id, scope)?;
    if runner.api_key_hash == api_key_hash {
        return Err(Rejection::Conflict(
            "the new token is the runner's current one; rotation needs a new token".into(),
        ));
    }
    let old = std::mem::replace(&mut runner.api_key_hash, api_key_hash.to_string());
    runner.api_key_hint = api_key_hint.to_string();
    runner.updated_at = at;
    let runner = runner.clone();
    if state.runner_keys.get(&old).map(String::as_str) == Some(id) {
        state.runner_keys.remove(&old);
    }
    state.runner_keys.insert(api_key_hash.to_string(), id.to_string());
    Ok(Outcome::Runner(runner))
}

/// A decommissioned runner stays decommissioned.
pub(super) fn set_state(
    state: &mut State,
    id: &str,
    scope: Option<&str>,
    new_state: RunnerState,
    at: Millis,
) -> ApplyResult {
    let runner = owned_runner(state, id, scope)?;
    if runner.state == RunnerState::Decommissioned && new_state != RunnerState::Decommissioned {
        return Err(Rejection::Conflict(format!("runner '{id}' is decommissioned")));
    }
    if runner.state != new_state {
        runner.state_changed_at = at;
    }
    runner.state = new_state;
    runner.updated_at = at;
    Ok(Outcome::Runner(runner.clone()))
}

/// The operator's capacity always applies; the agent's only while the operator has set none
/// (then the runner is answered unchanged). Capacity never drops below the allocation: a host
/// that shrank under its sandboxes is refused until they are gone.
pub(super) fn set_capacity(
    state: &mut State,
    id: &str,
    scope: Option<&str>,
    capacity: Resources,
    source: CapacitySource,
    at: Millis,
) -> ApplyResult {
    let runner = owned_runner(state, id, scope)?;
    if source == CapacitySource::Agent && runner.capacity_source() == CapacitySource::Operator {
        return Ok(Outcome::Runner(runner.clone()));
    }
    if !runner.allocated.fits_within(&capacity) {
        return Err(Rejection::Conflict(format!(
            "runner '{id}' has more allocated ({:?}) than the capacity {:?}",
            runner.allocated, capacity
        )));
    }
    runner.capacity = capacity;
    runner.capacity_source = Some(source);
    runner.updated_at = at;
    Ok(Outcome::Runner(runner.clone()))
}

/// The leader's health verdict: only `initializing`/`unresponsive` → `ready` (reporting) and
/// `ready` → `unresponsive` (silent); other runners, and deleted ones, are left alone.
pub(super) fn record_health(state: &mut State, reporting: &[String], silent: &[String], at: Millis) -> ApplyResult {
    let mut changed = Vec::new();
    for (ids, from, to) in [
        (reporting, &[RunnerState::Initializing, RunnerState::Unresponsive][..], RunnerState::Ready),
        (silent, &[RunnerState::Ready][..], RunnerState::Unresponsive),
    ] {
        for id in ids {
            if let Some(runner) = state.runners.get_mut(id).filter(|r| from.contains(&r.state)) {
                runner.state = to;
                runner.state_changed_at = at;
                runner.updated_at = at;
                changed.push(id.clone());
            }
        }
    }
    Ok(Outcome::RunnersChanged(changed))
}

/// Refused while sandboxes are on the runner.
pub(super) fn delete(state: &mut State, id: &str, scope: Option<&str>) -> ApplyResult {
    let Some(runner) = state.runners.get(id).filter(|r| in_scope(scope, &r.organization_id)) else {
        return Err(not_found(ObjectKind::Runner, id));
    };
    let sandboxes = state.runner_sandboxes.get(id).map_or(0, |ids| ids.len());
    if sandboxes > 0 {
        return Err(Rejection::RunnerHasSandboxes { runner_id: id.to_string(), sandboxes });
    }
    let name_key = (runner.region_id.clone(), runner.name.clone());
    state.runner_names.remove(&name_key);
    if state.runner_keys.get(&runner.api_key_hash).map(String::as_str) == Some(id) {
        let key_hash = runner.api_key_hash.clone();
        state.runner_keys.remove(&key_hash);
    }
    state.runners.remove(id);
    state.runner_sandboxes.remove(id);
    state.runner_journals.forget(id);
    Ok(Outcome::Deleted { kind: ObjectKind::Runner, id: id.to_string() })
}
