//! Organizations and their API keys.

use super::not_found;
use crate::outcome::{ApplyResult, Outcome, Rejection};
use crate::state::State;
use crate::types::{ApiKeyRecord, Millis, ObjectKind, Organization};

pub(super) fn create(state: &mut State, id: &str, name: &str, at: Millis) -> ApplyResult {
    if state.organizations.contains_key(id) {
        return Err(Rejection::DuplicateId { kind: ObjectKind::Organization, id: id.to_string() });
    }
    if state.organizations.values().any(|o| o.name == name) {
        return Err(Rejection::DuplicateName { kind: ObjectKind::Organization, name: name.to_string() });
    }
    let org = Organization { id: id.to_string(), name: name.to_string(), created_at: at };
    state.organizations.insert(id.to_string(), org.clone());
    Ok(Outcome::Organization(org))
}

pub(super) fn create_api_key(
    state: &mut State,
    key_hash: &str,
    organization_id: &str,
    name: &str,
    at: Millis,
) -> ApplyResult {
    if !state.organizations.contains_key(organization_id) {
        return Err(not_found(ObjectKind::Organization, organization_id));
    }
    if state.api_keys.contains_key(key_hash) {
        return Err(Rejection::DuplicateId { kind: ObjectKind::ApiKey, id: name.to_string() });
    }
    let record = ApiKeyRecord {
        key_hash: key_hash.to_string(),
        organization_id: organization_id.to_string(),
        name: name.to_string(),
        created_at: at,
    };
    state.api_keys.insert(key_hash.to_string(), record.clone());
    Ok(Outcome::ApiKey(record))
}
