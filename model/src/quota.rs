//! Organization quotas: limits the operator sets on what an organization's sandboxes hold in
//! **shared** regions (custom and dedicated regions have none, as the seeds say of custom
//! regions). A sandbox counts from its placement until it is destroyed: a stopped sandbox
//! keeps its resources on its runner, so it keeps its share of the quota too.
//!
//! [`admits`] is the one rule. `apply` checks it for every placement, so concurrent requests
//! through different nodes cannot pass a quota together; the leader's scheduler checks it
//! first (with what its batch already planned) to answer over-quota requests without a Raft
//! entry.

use serde::{Deserialize, Serialize};

use crate::outcome::Rejection;
use crate::types::{Region, RegionType, Resources};

/// Limits on an organization's sandboxes in shared regions; `None`: no limit.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Quota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_gib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gib: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandboxes: Option<u64>,
}

impl Quota {
    pub fn is_unlimited(&self) -> bool {
        *self == Quota::default()
    }
}

/// What an organization's sandboxes hold in shared regions (derived from the sandboxes).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaUsage {
    pub resources: Resources,
    pub sandboxes: u64,
}

impl QuotaUsage {
    /// One more sandbox of `resources`.
    pub fn add(&mut self, resources: Resources) {
        self.resources = self.resources.saturating_add(&resources);
        self.sandboxes = self.sandboxes.saturating_add(1);
    }

    /// One sandbox of `resources` fewer.
    pub fn remove(&mut self, resources: Resources) {
        self.resources = self.resources.saturating_sub(&resources);
        self.sandboxes = self.sandboxes.saturating_sub(1);
    }

    pub fn plus(mut self, other: &QuotaUsage) -> QuotaUsage {
        self.resources = self.resources.saturating_add(&other.resources);
        self.sandboxes = self.sandboxes.saturating_add(other.sandboxes);
        self
    }
}

/// Whether sandboxes in `region` count against their organization's quota.
pub fn counts_against_quota(region: &Region) -> bool {
    region.region_type == RegionType::Shared
}

/// Whether one more sandbox of `asked` fits `quota` on top of `used`; the refusal names the
/// first limit it would pass.
pub fn admits(organization_id: &str, quota: &Quota, used: &QuotaUsage, asked: Resources) -> Result<(), Rejection> {
    let limits = [
        ("cpu", quota.cpu, used.resources.cpu, asked.cpu),
        ("memoryGiB", quota.memory_gib, used.resources.memory_gib, asked.memory_gib),
        ("diskGiB", quota.disk_gib, used.resources.disk_gib, asked.disk_gib),
        ("sandboxes", quota.sandboxes, used.sandboxes, 1),
    ];
    for (limit, quota, used, asked) in limits {
        if let Some(quota) = quota {
            if used.saturating_add(asked) > quota {
                return Err(Rejection::QuotaExceeded {
                    organization_id: organization_id.to_string(),
                    limit: limit.to_string(),
                    quota,
                    used,
                    asked,
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cpu(n: u64) -> Resources {
        Resources { cpu: n, memory_gib: 1, disk_gib: 1, gpu: 0 }
    }

    #[test]
    fn every_limit_is_checked_and_named() {
        let quota = Quota { cpu: Some(4), sandboxes: Some(2), ..Quota::default() };
        let mut used = QuotaUsage::default();
        assert_eq!(admits("o", &quota, &used, cpu(4)), Ok(()));
        used.add(cpu(3));
        assert!(
            matches!(admits("o", &quota, &used, cpu(2)), Err(Rejection::QuotaExceeded { limit, .. }) if limit == "cpu")
        );
        used.add(cpu(1));
        assert!(
            matches!(admits("o", &quota, &used, cpu(0)), Err(Rejection::QuotaExceeded { limit, .. }) if limit == "sandboxes")
        );
        used.remove(cpu(3));
        assert_eq!(admits("o", &quota, &used, cpu(3)), Ok(()));
        assert_eq!(admits("o", &Quota::default(), &used, cpu(u64::MAX)), Ok(()));
    }
}
