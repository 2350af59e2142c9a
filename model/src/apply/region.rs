//! Regions: create, change URLs, replace a credential, delete.

use super::{in_scope, insert_new, not_found, owned_region};
use crate::command::{FieldUpdate, NewRegion, RegionCredential};
use crate::outcome::{ApplyResult, Outcome, Rejection};
use crate::state::State;
use crate::types::{Millis, ObjectKind, Region};

pub(super) fn create(state: &mut State, new: &NewRegion, at: Millis) -> ApplyResult {
    let region = Region {
        id: new.id.clone(),
        name: new.name.clone(),
        region_type: new.region_type,
        organization_id: new.organization_id.clone(),
        proxy_url: new.proxy_url.clone(),
        ssh_gateway_url: new.ssh_gateway_url.clone(),
        snapshot_manager_url: new.snapshot_manager_url.clone(),
        proxy_api_key_hash: new.proxy_api_key_hash.clone(),
        ssh_gateway_api_key_hash: new.ssh_gateway_api_key_hash.clone(),
        snapshot_manager_username: new.snapshot_manager_username.clone(),
        snapshot_manager_password: new.snapshot_manager_password.clone(),
        created_at: at,
        updated_at: at,
    };
    // Inserted first, checked after (one walk down the map, where a lookup then an insert
    // took two; see `insert_new`), in the order the checks always had: the id, then the name.
    insert_new(&mut state.regions, new.id.to_string(), region.clone(), ObjectKind::Region)?;
    let name_key = (new.organization_id.clone(), new.name.clone());
    if state.region_names.contains_key(&name_key) {
        state.regions.remove(&new.id);
        return Err(Rejection::DuplicateName { kind: ObjectKind::Region, name: new.name.clone() });
    }
    state.region_names.insert(name_key, new.id.clone());
    Ok(Outcome::Region(region))
}

/// `urls` are the proxy, SSH gateway and snapshot manager URLs, in that order.
pub(super) fn update_urls(
    state: &mut State,
    id: &str,
    scope: Option<&str>,
    [proxy_url, ssh_gateway_url, snapshot_manager_url]: [&FieldUpdate<String>; 3],
    at: Millis,
) -> ApplyResult {
    let region = owned_region(state, id, scope)?;
    proxy_url.apply_to(&mut region.proxy_url);
    ssh_gateway_url.apply_to(&mut region.ssh_gateway_url);
    snapshot_manager_url.apply_to(&mut region.snapshot_manager_url);
    region.updated_at = at;
    Ok(Outcome::Region(region.clone()))
}

pub(super) fn set_credential(
    state: &mut State,
    id: &str,
    scope: Option<&str>,
    credential: RegionCredential,
    secret: &str,
    at: Millis,
) -> ApplyResult {
    let region = owned_region(state, id, scope)?;
    let (configured, service) = match credential {
        RegionCredential::ProxyApiKey => (region.proxy_url.is_some(), "proxy"),
        RegionCredential::SshGatewayApiKey => (region.ssh_gateway_url.is_some(), "SSH gateway"),
        RegionCredential::SnapshotManager => (region.snapshot_manager_url.is_some(), "snapshot manager"),
    };
    if !configured {
        return Err(Rejection::Conflict(format!("region '{id}' has no {service} configured")));
    }
    let secret = Some(secret.to_string());
    match credential {
        RegionCredential::ProxyApiKey => region.proxy_api_key_hash = secret,
        RegionCredential::SshGatewayApiKey => region.ssh_gateway_api_key_hash = secret,
        RegionCredential::SnapshotManager => region.snapshot_manager_password = secret,
    }
    region.updated_at = at;
    Ok(Outcome::Region(region.clone()))
}

/// Refused while the region has runners.
pub(super) fn delete(state: &mut State, id: &str, scope: Option<&str>) -> ApplyResult {
    let Some(region) = state.regions.get(id).filter(|r| in_scope(scope, &r.organization_id)) else {
        return Err(not_found(ObjectKind::Region, id));
    };
    let runners = state.runners_in_region(id).count();
    if runners > 0 {
        return Err(Rejection::RegionHasRunners { region_id: id.to_string(), runners });
    }
    let name_key = (region.organization_id.clone(), region.name.clone());
    state.region_names.remove(&name_key);
    state.regions.remove(id);
    Ok(Outcome::Deleted { kind: ObjectKind::Region, id: id.to_string() })
}
