//! Who may do what: organization API keys carry a [`Role`], each [`Command`] needs a
//! [`Permission`], and [`authorize`] decides, from the replicated state alone, whether a key
//! may propose a command at a time.
//!
//! The API checks with [`authorize`] before it proposes (a quick 403 without a Raft round
//! trip) and `apply` checks again with the replicated clock, so a key revoked or expired before
//! a command commits cannot slip that command through a replica that had not heard yet.
//!
//! Roles (two, ordered): `member` reads everything of its organization, works with sandboxes
//! and manages member keys; `admin` can also change regions, runners and their credentials
//! and manage admin keys. A key manages keys up to its own role: it can neither create nor
//! revoke a key with more power than its own. Operator commands (organizations, quotas,
//! health verdicts, rescheduling, key-use records) are never allowed to an organization key.

use serde::{Deserialize, Serialize};

use crate::command::Command;
use crate::outcome::Rejection;
use crate::state::State;
use crate::types::{ApiKeyRecord, Millis};

/// What an organization API key may do. Ordered: `Member < Admin`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Member,
    /// Keys created before roles existed could do everything their organization could.
    #[default]
    Admin,
}

impl Role {
    pub const ALL: [Role; 2] = [Role::Member, Role::Admin];

    /// The name the API uses (as serialized).
    pub fn label(self) -> &'static str {
        match self {
            Role::Member => "member",
            Role::Admin => "admin",
        }
    }

    pub fn is_admin(&self) -> bool {
        *self == Role::Admin
    }

    /// Whether a key of this role holds `permission`.
    pub fn grants(self, permission: Permission) -> bool {
        match permission {
            Permission::Read | Permission::WriteSandboxes | Permission::WriteApiKeys => true,
            Permission::WriteRegions | Permission::WriteRunners => self == Role::Admin,
            Permission::Operator => false,
        }
    }

    /// Every permission the role holds, for documents and listings.
    pub fn permissions(self) -> Vec<Permission> {
        Permission::ALL.into_iter().filter(|p| self.grants(*p)).collect()
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

/// What a request needs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// Read the organization's regions, runners, sandboxes, keys and quota.
    Read,
    /// Create, stop, start and delete sandboxes.
    WriteSandboxes,
    /// Create and revoke API keys, up to the key's own role.
    WriteApiKeys,
    /// Create, change and delete regions, and regenerate their credentials.
    WriteRegions,
    /// Create, change and delete runners, and regenerate their tokens.
    WriteRunners,
    /// The cluster's operator (the admin key) and the system only.
    Operator,
}

impl Permission {
    pub const ALL: [Permission; 6] = [
        Permission::Read,
        Permission::WriteSandboxes,
        Permission::WriteApiKeys,
        Permission::WriteRegions,
        Permission::WriteRunners,
        Permission::Operator,
    ];

    /// The name errors and documents use.
    pub fn name(self) -> &'static str {
        match self {
            Permission::Read => "read",
            Permission::WriteSandboxes => "write:sandboxes",
            Permission::WriteApiKeys => "write:api-keys",
            Permission::WriteRegions => "write:regions",
            Permission::WriteRunners => "write:runners",
            Permission::Operator => "operator",
        }
    }
}

impl std::fmt::Display for Permission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl Command {
    /// The permission a caller needs to propose this command.
    pub fn permission(&self) -> Permission {
        match self {
            Command::CreateRegion(_)
            | Command::UpdateRegionUrls { .. }
            | Command::SetRegionCredential { .. }
            | Command::DeleteRegion { .. } => Permission::WriteRegions,
            Command::CreateRunner(_)
            | Command::SetRunnerSchedulable { .. }
            | Command::SetRunnerState { .. }
            | Command::SetRunnerDraining { .. }
            | Command::SetRunnerCapacity { .. }
            | Command::UpdateRunner { .. }
            | Command::SetRunnerToken { .. }
            | Command::DeleteRunner { .. } => Permission::WriteRunners,
            Command::PlaceSandboxes { .. } | Command::SetSandboxState { .. } | Command::DeleteSandbox { .. } => {
                Permission::WriteSandboxes
            }
            Command::CreateApiKey { .. } | Command::DeleteApiKey { .. } => Permission::WriteApiKeys,
            Command::CreateOrganization { .. }
            | Command::SetOrganizationQuota { .. }
            | Command::RecordApiKeyUse { .. }
            | Command::RecordRunnerHealth { .. }
            | Command::RescheduleSandboxes { .. } => Permission::Operator,
        }
    }
}

/// The live key behind `credential` (a key hash) for organization `scope` at time `at`:
/// refused when it was revoked (or never existed), belongs to another organization, or has
/// expired.
pub fn live_key<'a>(
    state: &'a State,
    credential: &str,
    scope: Option<&str>,
    at: Millis,
) -> Result<&'a ApiKeyRecord, Rejection> {
    let key =
        state.api_keys.get(credential).ok_or_else(|| Rejection::Unauthorized("unknown or revoked API key".into()))?;
    if scope.is_some_and(|org| org != key.organization_id) {
        return Err(Rejection::Unauthorized("the API key belongs to another organization".into()));
    }
    if key.expires_at.is_some_and(|expiry| expiry <= at) {
        return Err(Rejection::Unauthorized(format!("API key '{}' has expired", key.name)));
    }
    Ok(key)
}

/// Whether the key `credential` may propose `command` for organization `scope` at `at`.
pub fn authorize(
    state: &State,
    credential: &str,
    scope: Option<&str>,
    command: &Command,
    at: Millis,
) -> Result<(), Rejection> {
    // A key acts for its own organization only, never across organizations.
    if scope.is_none() {
        return Err(Rejection::Unauthorized("an organization API key acts only for its own organization".into()));
    }
    let key = live_key(state, credential, scope, at)?;
    require(key.role, command.permission())?;
    match command {
        Command::CreateApiKey { role, .. } if *role > key.role => Err(Rejection::Forbidden {
            permission: format!("{} (a key may create keys up to its own role)", Permission::WriteApiKeys),
            role: key.role,
        }),
        // Expiry bounds access: a key cannot mint one that outlives it.
        Command::CreateApiKey { expires_at, .. }
            if key.expires_at.is_some_and(|limit| expires_at.is_none_or(|e| e > limit)) =>
        {
            Err(Rejection::Forbidden {
                permission: format!(
                    "{} (a key that expires may create keys that expire no later than itself)",
                    Permission::WriteApiKeys
                ),
                role: key.role,
            })
        }
        Command::DeleteApiKey { organization_id, name } => {
            let stronger = state
                .api_keys
                .values()
                .any(|k| k.organization_id == *organization_id && k.name == *name && k.role > key.role);
            if stronger {
                Err(Rejection::Forbidden {
                    permission: format!("{} (a key may revoke keys up to its own role)", Permission::WriteApiKeys),
                    role: key.role,
                })
            } else {
                Ok(())
            }
        }
        _ => Ok(()),
    }
}

/// Whether the key `credential` (if any: `None` is the operator) may place a sandbox for
/// `organization_id` at `at`: the check of every placement, in `apply` and in the
/// scheduler's plan alike.
pub fn authorize_placement(
    state: &State,
    credential: Option<&str>,
    organization_id: &str,
    at: Millis,
) -> Result<(), Rejection> {
    match credential {
        Some(credential) => live_key(state, credential, Some(organization_id), at)
            .and_then(|key| require(key.role, Permission::WriteSandboxes)),
        None => Ok(()),
    }
}

/// Whether a key of `role` holds `permission`; the refusal names both.
pub fn require(role: Role, permission: Permission) -> Result<(), Rejection> {
    if role.grants(permission) {
        Ok(())
    } else {
        Err(Rejection::Forbidden { permission: permission.name().to_string(), role })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_work_with_sandboxes_and_admins_with_everything_of_their_organization() {
        assert!(Role::Member.grants(Permission::WriteSandboxes));
        assert!(!Role::Member.grants(Permission::WriteRegions));
        assert!(!Role::Member.grants(Permission::WriteRunners));
        assert!(Role::Admin.grants(Permission::WriteRunners));
        for role in Role::ALL {
            assert!(!role.grants(Permission::Operator), "{role} must not act as the operator");
            assert!(role.grants(Permission::Read));
        }
        assert!(Role::Member < Role::Admin);
        assert_eq!(Role::Member.permissions().len() + 2, Role::Admin.permissions().len());
    }

    #[test]
    fn labels_are_the_serialized_names() {
        for role in Role::ALL {
            assert_eq!(serde_json::to_value(role).ok(), Some(role.label().into()));
        }
    }
}
