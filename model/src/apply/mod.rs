//! [`apply`]: one committed [`Proposal`] into the [`State`]. Pure and deterministic: the
//! result depends only on the state and the proposal, so every replica that applies the same
//! log reaches the same state. One file per entity; this one holds what they share
//! (idempotency, scope, the replicated clock).
//!
//! Time: the proposer stamps `at` into the proposal. Proposers are different nodes whose
//! clocks differ, so `apply` takes `max(at, state.clock)` as the command's time: the
//! replicated clock, and every timestamp it writes, never goes backwards (by construction),
//! and every replica computes the same value.

mod organization;
mod region;
mod runner;
mod sandbox;

use crate::access::authorize;
use crate::command::{Command, Proposal};
use crate::outcome::{ApplyResult, Rejection};
use crate::state::{IdempotencyRecord, ReplicatedMap, State, IDEMPOTENCY_RECORDS_MAX, IDEMPOTENCY_TTL_MS};
use crate::types::{Millis, ObjectKind, Region, Runner};

pub use sandbox::{admit_to_quota, recorded_placement};

/// Applies one committed proposal. Pure: the result depends only on `state` and `proposal`.
/// A proposal whose idempotency key was applied before returns the first result unchanged.
pub fn apply(state: &mut State, proposal: &Proposal) -> ApplyResult {
    // A proposer whose clock is behind the replicated one (another node's, or a leader after
    // a failover) neither moves the clock back nor stamps an object in the past.
    state.clock = state.clock.max(proposal.at);
    let at = state.clock;
    expire_idempotency(state);
    // Before any replay: a revoked or expired key gets nothing, not even a recorded answer.
    if let Some(credential) = &proposal.credential {
        authorize(state, credential, proposal.scope.as_deref(), &proposal.command, at)?;
    }
    if let Some(key) = &proposal.idempotency_key {
        if let Some(record) = state.idempotency.get(key) {
            if record.fingerprint.is_some()
                && proposal.fingerprint.is_some()
                && record.fingerprint != proposal.fingerprint
            {
                return Err(Rejection::IdempotencyKeyReused);
            }
            return record.result.clone();
        }
    }
    let result = apply_command(state, &proposal.command, at, proposal.scope.as_deref());
    if touches_runners(&proposal.command) {
        state.runner_epoch.0 = state.runner_epoch.0.wrapping_add(1);
    }
    debug_assert_eq!(state.validate(), Ok(()), "after {:?}", proposal.command);
    if let Some(key) = &proposal.idempotency_key {
        let record = IdempotencyRecord { at, fingerprint: proposal.fingerprint.clone(), result: result.clone() };
        state.idempotency.insert(key.clone(), record);
        state.idempotency_by_age.insert((at, key.clone()));
    }
    result
}

fn apply_command(state: &mut State, command: &Command, at: Millis, scope: Option<&str>) -> ApplyResult {
    match command {
        Command::CreateOrganization { id, name } => organization::create(state, id, name, at),
        Command::CreateApiKey { key_hash, organization_id, name, role, prefix, expires_at } => {
            let new = organization::NewApiKey {
                key_hash,
                organization_id,
                name,
                role: *role,
                prefix,
                expires_at: *expires_at,
            };
            organization::create_api_key(state, new, scope, at)
        }
        Command::DeleteApiKey { organization_id, name } => {
            organization::delete_api_key(state, organization_id, name, scope)
        }
        Command::RecordApiKeyUse { uses } => organization::record_use(state, uses, at),
        Command::SetOrganizationQuota { id, quota } => organization::set_quota(state, id, *quota),
        Command::CreateRegion(new) => region::create(state, new, at),
        Command::UpdateRegionUrls { id, proxy_url, ssh_gateway_url, snapshot_manager_url } => {
            region::update_urls(state, id, scope, [proxy_url, ssh_gateway_url, snapshot_manager_url], at)
        }
        Command::SetRegionCredential { id, credential, secret } => {
            region::set_credential(state, id, scope, *credential, secret, at)
        }
        Command::DeleteRegion { id } => region::delete(state, id, scope),
        Command::CreateRunner(new) => runner::create(state, new, scope, at),
        Command::SetRunnerSchedulable { id, schedulable } => {
            runner::set_schedulable(state, id, scope, *schedulable, at)
        }
        Command::SetRunnerState { id, state: new_state } => runner::set_state(state, id, scope, *new_state, at),
        Command::SetRunnerDraining { id, draining } => runner::set_draining(state, id, scope, *draining, at),
        Command::SetRunnerCapacity { id, capacity, source } => {
            runner::set_capacity(state, id, scope, *capacity, *source, at)
        }
        Command::RecordRunnerHealth { reporting, silent } => runner::record_health(state, reporting, silent, at),
        Command::UpdateRunner { id, tags, max_sandboxes } => {
            runner::update(state, id, scope, tags.as_ref(), max_sandboxes, at)
        }
        Command::DeleteRunner { id } => runner::delete(state, id, scope),
        Command::SetRunnerToken { id, api_key_hash, api_key_hint } => {
            runner::set_token(state, id, scope, api_key_hash, api_key_hint, at)
        }
        Command::PlaceSandboxes { placements } => sandbox::place_all(state, placements, at),
        Command::SetSandboxState { id, state: new_state } => sandbox::set_state(state, id, scope, *new_state, at),
        Command::RescheduleSandboxes { moves, unresponsive_for_ms } => {
            sandbox::reschedule_all(state, moves, *unresponsive_for_ms, at)
        }
        Command::DeleteSandbox { id } => sandbox::delete(state, id, scope, at),
    }
}

fn expire_idempotency(state: &mut State) {
    let horizon = state.clock.saturating_sub(IDEMPOTENCY_TTL_MS);
    while let Some((at, key)) = state.idempotency_by_age.first().cloned() {
        if at >= horizon && state.idempotency.len() < IDEMPOTENCY_RECORDS_MAX {
            break;
        }
        state.idempotency_by_age.pop_first();
        state.idempotency.remove(&key);
    }
}

/// Inserts a new object under `id`, refusing (and leaving the map as it was) when `id` is
/// taken. One walk down the map where `contains_key` then `insert` took two: with hundreds of
/// thousands of random ids, each walk costs a cache miss per key compared, and the lookup was
/// the largest share of creating a region or placing a sandbox. A caller whose later check
/// fails removes the object again.
fn insert_new<K, V>(map: &mut ReplicatedMap<V, K>, id: K, value: V, kind: ObjectKind) -> Result<(), Rejection>
where
    K: Ord + Clone + std::borrow::Borrow<str>,
    V: Clone,
{
    if let Some(previous) = map.insert(id.clone(), value) {
        let duplicate = id.borrow().to_string();
        map.insert(id, previous);
        return Err(Rejection::DuplicateId { kind, id: duplicate });
    }
    Ok(())
}

fn not_found(kind: ObjectKind, id: &str) -> Rejection {
    Rejection::NotFound { kind, id: id.to_string() }
}

fn touches_runners(command: &Command) -> bool {
    !matches!(
        command,
        Command::CreateOrganization { .. }
            | Command::CreateApiKey { .. }
            | Command::DeleteApiKey { .. }
            | Command::RecordApiKeyUse { .. }
            | Command::SetOrganizationQuota { .. }
            | Command::CreateRegion(_)
            | Command::UpdateRegionUrls { .. }
            | Command::SetRegionCredential { .. }
            | Command::DeleteRegion { .. }
    )
}

/// Whether an object owned by `owner` is visible to a caller acting for `scope`.
pub(crate) fn in_scope(scope: Option<&str>, owner: &str) -> bool {
    scope.is_none_or(|org| org == owner)
}

fn owned_region<'a>(state: &'a mut State, id: &str, scope: Option<&str>) -> Result<&'a mut Region, Rejection> {
    state
        .regions
        .get_mut(id)
        .filter(|r| in_scope(scope, &r.organization_id))
        .ok_or_else(|| not_found(ObjectKind::Region, id))
}

fn owned_runner<'a>(state: &'a mut State, id: &str, scope: Option<&str>) -> Result<&'a mut Runner, Rejection> {
    state
        .runners
        .get_mut(id)
        .filter(|r| in_scope(scope, &r.organization_id))
        .ok_or_else(|| not_found(ObjectKind::Runner, id))
}
