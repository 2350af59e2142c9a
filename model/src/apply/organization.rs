//! Organizations, their API keys (create, revoke, last use) and their quotas.

use super::not_found;
use crate::access::Role;
use crate::command::KeyUse;
use crate::outcome::{ApplyResult, Outcome, Rejection};
use crate::quota::Quota;
use crate::state::State;
use crate::types::{ApiKeyRecord, Millis, ObjectKind, Organization};

pub(super) fn create(state: &mut State, id: &str, name: &str, at: Millis) -> ApplyResult {
    if state.organizations.contains_key(id) {
        return Err(Rejection::DuplicateId { kind: ObjectKind::Organization, id: id.to_string() });
    }
    if state.organizations.values().any(|o| o.name == name) {
        return Err(Rejection::DuplicateName { kind: ObjectKind::Organization, name: name.to_string() });
    }
    let org = Organization { id: id.to_string(), name: name.to_string(), created_at: at, quota: Quota::default() };
    state.organizations.insert(id.to_string(), org.clone());
    Ok(Outcome::Organization(org))
}

/// A new key of the organization; names are unique within it.
pub(super) struct NewApiKey<'a> {
    pub key_hash: &'a str,
    pub organization_id: &'a str,
    pub name: &'a str,
    pub role: Role,
    pub prefix: &'a str,
    pub expires_at: Option<Millis>,
}

pub(super) fn create_api_key(state: &mut State, new: NewApiKey<'_>, scope: Option<&str>, at: Millis) -> ApplyResult {
    if !state.organizations.contains_key(new.organization_id) || !super::in_scope(scope, new.organization_id) {
        return Err(not_found(ObjectKind::Organization, new.organization_id));
    }
    if state.api_keys.contains_key(new.key_hash) {
        return Err(Rejection::DuplicateId { kind: ObjectKind::ApiKey, id: new.name.to_string() });
    }
    // Names are unique from the version that made them so: its entries carry the key's prefix,
    // older ones (which allowed a second key of a name) replay as they applied then.
    let checks_names = !new.prefix.is_empty();
    if checks_names && state.api_keys.values().any(|k| k.organization_id == new.organization_id && k.name == new.name) {
        return Err(Rejection::DuplicateName { kind: ObjectKind::ApiKey, name: new.name.to_string() });
    }
    if new.expires_at.is_some_and(|expiry| expiry <= at) {
        return Err(Rejection::Conflict("expiresAt is not in the future".into()));
    }
    let record = ApiKeyRecord {
        key_hash: new.key_hash.to_string(),
        organization_id: new.organization_id.to_string(),
        name: new.name.to_string(),
        created_at: at,
        role: new.role,
        prefix: new.prefix.to_string(),
        expires_at: new.expires_at,
        last_used_at: None,
    };
    state.api_keys.insert(new.key_hash.to_string(), record.clone());
    Ok(Outcome::ApiKey(record))
}

/// Revokes the organization's key named `name` (every one of that name, should a state from
/// before names were unique hold two).
pub(super) fn delete_api_key(state: &mut State, organization_id: &str, name: &str, scope: Option<&str>) -> ApplyResult {
    if !super::in_scope(scope, organization_id) {
        return Err(not_found(ObjectKind::Organization, organization_id));
    }
    let revoked: Vec<String> = state
        .api_keys
        .iter()
        .filter(|(_, k)| k.organization_id == organization_id && k.name == name)
        .map(|(hash, _)| hash.clone())
        .collect();
    if revoked.is_empty() {
        return Err(not_found(ObjectKind::ApiKey, name));
    }
    for hash in &revoked {
        state.api_keys.remove(hash);
    }
    Ok(Outcome::Deleted { kind: ObjectKind::ApiKey, id: name.to_string() })
}

/// `last_used_at` only moves forward and never past the replicated clock; uses of keys
/// revoked meanwhile are dropped.
pub(super) fn record_use(state: &mut State, uses: &[KeyUse], at: Millis) -> ApplyResult {
    let mut touched = 0;
    for used in uses {
        if let Some(key) = state.api_keys.get_mut(&used.key_hash) {
            let when = used.at.min(at);
            if key.last_used_at.is_none_or(|last| last < when) {
                key.last_used_at = Some(when);
                touched += 1;
            }
        }
    }
    Ok(Outcome::KeysTouched(touched))
}

pub(super) fn set_quota(state: &mut State, id: &str, quota: Quota) -> ApplyResult {
    let org = state.organizations.get_mut(id).ok_or_else(|| not_found(ObjectKind::Organization, id))?;
    org.quota = quota;
    Ok(Outcome::Organization(org.clone()))
}
