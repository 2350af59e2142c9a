//! The placement core: the one capacity rule ([`fits`]) and eligibility ([`eligible`]) that
//! `apply` re-checks too, and a pure function over an indexed view of one region's runners. The
//! leader's scheduler builds a [`RegionPlacementIndex`] for each region in a batch and calls
//! [`RegionPlacementIndex::place`] once per request; criterion measures it on its own.
//!
//! Score (higher is better), in basis points (0–10 000):
//!
//! ```text
//! score = 10 000 × min(free_cpu / cpu, free_memory / memory, free_disk / disk)
//! ```
//!
//! i.e. the free fraction of the runner's scarcest resource, capped by the headroom the
//! runner's latest health report shows (`10 000 × (1 − max(cpu%, memory%, disk%) / 100)`), so
//! a runner that is busy for reasons allocation does not see (noisy tenants, a full disk) is
//! ranked down. Placing on the runner with the most headroom spreads load;
//! choosing at random among the best [`TOP_K`] fitting runners keeps concurrent schedulers and
//! bursts from all landing on one runner ("herding").
//!
//! Index: runners ranked in a `BTreeSet` by (score descending, slot); a placement scans from
//! the best down, at most [`MAX_SCAN`] entries, for [`TOP_K`] runners with room, picks one,
//! and re-ranks only that runner: O(TOP_K + log n). When none of those fits (a big request
//! among small runners), the runners in the request's free-cpu bucket and above are checked,
//! most free first, so a request is refused only when no indexed runner can hold it.

use std::cmp::Reverse;
use std::collections::BTreeSet;

use rand::Rng;

use crate::health::HealthReport;
use crate::types::{Resources, Runner, RunnerState};

/// How many of the best-fitting runners a placement chooses among.
pub const TOP_K: usize = 4;
/// How many ranked runners one placement looks at before giving up on finding `TOP_K`.
pub const MAX_SCAN: usize = 64;
/// Scores are in basis points.
pub const SCORE_MAX: u32 = 10_000;

/// Free fraction of the scarcest resource, in basis points; 0 when any capacity is 0.
pub fn availability_score(capacity: Resources, allocated: Resources) -> u32 {
    let free = |cap: u64, used: u64| -> u64 {
        if cap == 0 {
            0
        } else {
            (cap.saturating_sub(used) as u128 * SCORE_MAX as u128 / cap as u128) as u64
        }
    };
    let score = free(capacity.cpu, allocated.cpu)
        .min(free(capacity.memory_gib, allocated.memory_gib))
        .min(free(capacity.disk_gib, allocated.disk_gib));
    // GPUs count only on runners that have them; most have none.
    let score = if capacity.gpu > 0 { score.min(free(capacity.gpu, allocated.gpu)) } else { score };
    score as u32
}

/// The one capacity rule, used by the scheduler's placement and by `apply`'s re-check alike:
/// `request` fits on a runner with `capacity` of which `allocated` is taken when no resource
/// would go over.
pub fn fits(capacity: Resources, allocated: Resources, request: Resources) -> bool {
    allocated.saturating_add(&request).fits_within(&capacity)
}

/// Whether a sandbox may be placed on `runner` at all (by the scheduler, and on `apply`):
/// ready, schedulable and not draining.
pub fn eligible(runner: &Runner) -> bool {
    runner.state == RunnerState::Ready && runner.schedulable && !runner.draining
}

#[derive(Debug, Clone)]
struct Slot {
    runner_id: String,
    capacity: Resources,
    allocated: Resources,
    /// Headroom from reported usage, in basis points ([`SCORE_MAX`] when none was reported).
    usage_cap: u32,
    score: u32,
}

/// Headroom from a health report, in basis points.
pub fn usage_headroom(report: &HealthReport) -> u32 {
    ((100.0 - report.max_usage_pct()) * 100.0).round().clamp(0.0, SCORE_MAX as f32) as u32
}

/// One region's eligible runners, ranked by availability, and bucketed by free cpu for the
/// fallback that makes placement complete.
#[derive(Debug, Clone, Default)]
pub struct RegionPlacementIndex {
    slots: Vec<Slot>,
    ranked: BTreeSet<(Reverse<u32>, u32)>,
    /// Slots by the power of two of their free cpu: bucket `b` holds free cpu in
    /// `[2^b, 2^(b+1))` (bucket 0 also 0). The runners that could hold a request's cpu are in
    /// the buckets from the request's up. A placement moves a slot only when its free cpu
    /// crosses a power of two, so keeping them costs almost nothing.
    cpu_buckets: Vec<Vec<u32>>,
    /// Per slot: (bucket, position in it).
    bucket_of: Vec<(usize, usize)>,
    /// Requests this index found no room for. Free capacity only shrinks while an index lives
    /// (it is rebuilt when anything else changes the runners), so a request at least as large
    /// in every resource is refused at once, without scanning the fleet again.
    refused: Vec<Resources>,
}

/// Refused request sizes remembered per index.
const REFUSED_KEPT: usize = 8;

/// The bucket of a free cpu count.
fn cpu_bucket(free_cpu: u64) -> usize {
    free_cpu.checked_ilog2().unwrap_or(0) as usize
}

/// Buckets of free cpu: one per power of two of a u64.
const CPU_BUCKETS: usize = 64;

impl RegionPlacementIndex {
    /// Indexes the eligible runners among `runners`.
    pub fn build<'a>(runners: impl IntoIterator<Item = &'a Runner>) -> Self {
        Self::build_with_usage(runners, |_| None)
    }

    /// Indexes the eligible runners, capping each score by `headroom(runner id)` (see
    /// [`usage_headroom`]).
    pub fn build_with_usage<'a>(
        runners: impl IntoIterator<Item = &'a Runner>,
        headroom: impl Fn(&str) -> Option<u32>,
    ) -> Self {
        let mut index = RegionPlacementIndex::default();
        for runner in runners.into_iter().filter(|r| eligible(r)) {
            let cap = headroom(&runner.id).unwrap_or(SCORE_MAX);
            index.insert_with_usage(&runner.id, runner.capacity, runner.allocated, cap);
        }
        index
    }

    /// Adds a runner with no usage reported (used by benchmarks and tests).
    pub fn insert(&mut self, runner_id: &str, capacity: Resources, allocated: Resources) {
        self.insert_with_usage(runner_id, capacity, allocated, SCORE_MAX);
    }

    /// Adds a runner whose score is capped by `usage_cap` basis points of headroom.
    pub fn insert_with_usage(&mut self, runner_id: &str, capacity: Resources, allocated: Resources, usage_cap: u32) {
        let slot = self.slots.len() as u32;
        let score = availability_score(capacity, allocated).min(usage_cap);
        self.slots.push(Slot { runner_id: runner_id.to_string(), capacity, allocated, usage_cap, score });
        self.ranked.insert((Reverse(score), slot));
        if self.cpu_buckets.is_empty() {
            self.cpu_buckets = vec![Vec::new(); CPU_BUCKETS];
        }
        let bucket = cpu_bucket(capacity.cpu.saturating_sub(allocated.cpu));
        self.bucket_of.push((bucket, self.cpu_buckets[bucket].len()));
        self.cpu_buckets[bucket].push(slot);
    }

    /// Moves `slot` to the bucket of its free cpu, if that changed.
    fn rebucket(&mut self, slot: u32) {
        let s = &self.slots[slot as usize];
        let bucket = cpu_bucket(s.capacity.cpu.saturating_sub(s.allocated.cpu));
        let (old, position) = self.bucket_of[slot as usize];
        if bucket == old {
            return;
        }
        self.cpu_buckets[old].swap_remove(position);
        if let Some(&moved) = self.cpu_buckets[old].get(position) {
            self.bucket_of[moved as usize].1 = position;
        }
        self.bucket_of[slot as usize] = (bucket, self.cpu_buckets[bucket].len());
        self.cpu_buckets[bucket].push(slot);
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }

    /// Chooses a runner with room for `request` and reserves it there; `None` only when no
    /// indexed runner has room.
    ///
    /// First among the best [`MAX_SCAN`] by score (one of the best [`TOP_K`] that fit, at
    /// random). The score is a free *fraction*, so a big runner with room can rank below
    /// small full ones; when none of the best fits, the runners with enough free cpu (one
    /// bucket and those above, most free first) are checked in turn, so a fitting runner is
    /// always found. Near a full fleet those buckets are short.
    pub fn place(&mut self, request: Resources, rng: &mut impl Rng) -> Option<&str> {
        let mut fitting = [0u32; TOP_K];
        let mut found = 0;
        for &(_, slot) in self.ranked.iter().take(MAX_SCAN) {
            let s = &self.slots[slot as usize];
            if fits(s.capacity, s.allocated, request) {
                fitting[found] = slot;
                found += 1;
                if found == TOP_K {
                    break;
                }
            }
        }
        let chosen = if found > 0 {
            fitting[rng.gen_range(0..found)]
        } else {
            if self.refused.iter().any(|smaller| smaller.fits_within(&request)) {
                return None;
            }
            let slots = &self.slots;
            let buckets = self.cpu_buckets.get(cpu_bucket(request.cpu)..).unwrap_or_default();
            let found = buckets
                .iter()
                .rev()
                .flatten()
                .find(|slot| fits(slots[**slot as usize].capacity, slots[**slot as usize].allocated, request));
            match found {
                Some(slot) => *slot,
                None => {
                    if self.refused.len() == REFUSED_KEPT {
                        self.refused.remove(0);
                    }
                    self.refused.push(request);
                    return None;
                }
            }
        };
        let slot = &mut self.slots[chosen as usize];
        self.ranked.remove(&(Reverse(slot.score), chosen));
        slot.allocated = slot.allocated.saturating_add(&request);
        slot.score = availability_score(slot.capacity, slot.allocated).min(slot.usage_cap);
        self.ranked.insert((Reverse(slot.score), chosen));
        self.rebucket(chosen);
        Some(&self.slots[chosen as usize].runner_id)
    }

    /// Current allocation of every indexed runner (for tests).
    pub fn allocations(&self) -> impl Iterator<Item = (&str, Resources, Resources)> {
        self.slots.iter().map(|s| (s.runner_id.as_str(), s.capacity, s.allocated))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::SeedableRng;

    fn res(cpu: u64, memory_gib: u64, disk_gib: u64) -> Resources {
        Resources { cpu, memory_gib, disk_gib, gpu: 0 }
    }

    #[test]
    fn score_is_the_scarcest_free_fraction() {
        assert_eq!(availability_score(res(4, 8, 100), res(0, 0, 0)), 10_000);
        assert_eq!(availability_score(res(4, 8, 100), res(1, 6, 10)), 2_500);
        assert_eq!(availability_score(res(0, 8, 100), res(0, 0, 0)), 0);
    }

    #[test]
    fn prefers_the_emptiest_runners() {
        let mut index = RegionPlacementIndex::default();
        for i in 0..10 {
            // Runner i already has i cpu allocated out of 10.
            index.insert(&format!("r{i}"), res(10, 100, 100), res(i, 0, 0));
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let chosen = index.place(res(1, 1, 1), &mut rng).map(String::from);
        assert!(matches!(chosen.as_deref(), Some("r0" | "r1" | "r2" | "r3")), "{chosen:?}");
    }

    #[test]
    fn reported_usage_ranks_a_busy_runner_down() {
        let mut index = RegionPlacementIndex::default();
        // Empty by allocation, but the hosts of r0–r3 report 90 % usage.
        for i in 0..8 {
            let cap = if i < 4 { 1_000 } else { SCORE_MAX };
            index.insert_with_usage(&format!("r{i}"), res(10, 100, 100), res(0, 0, 0), cap);
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..4 {
            let chosen = index.place(res(1, 1, 1), &mut rng).map(String::from);
            assert!(matches!(chosen.as_deref(), Some("r4" | "r5" | "r6" | "r7")), "{chosen:?}");
        }
    }

    #[test]
    fn none_when_nothing_fits() {
        let mut index = RegionPlacementIndex::default();
        index.insert("small", res(2, 2, 2), res(0, 0, 0));
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        assert!(index.place(res(3, 1, 1), &mut rng).is_none());
        assert!(index.place(res(2, 2, 2), &mut rng).is_some());
        assert!(index.place(res(1, 1, 1), &mut rng).is_none(), "full");
    }

    /// A big request among many small, partly full runners: the best-ranked ones cannot take
    /// it, a big runner far down the ranking can.
    #[test]
    fn a_big_runner_below_the_scan_window_is_found() {
        let mut index = RegionPlacementIndex::default();
        for i in 0..1_000 {
            index.insert(&format!("small-{i}"), res(2, 4, 20), res(0, 0, 0));
        }
        // Half full, so it ranks below every empty small runner.
        index.insert("big", res(64, 256, 2_000), res(32, 128, 1_000));
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        assert_eq!(index.place(res(16, 32, 100), &mut rng), Some("big"));
        assert_eq!(index.place(res(16, 32, 100), &mut rng), Some("big"));
        assert_eq!(index.place(res(16, 32, 100), &mut rng), None, "the big runner is full now");
    }

    proptest! {
        /// Whatever the fleet and the requests, no runner ends over capacity, and a request is
        /// refused only when no indexed runner could hold it (within the scan window, which
        /// covers the whole fleet here).
        #[test]
        fn never_exceeds_capacity(
            fleet in prop::collection::vec((1u64..16, 1u64..32, 1u64..200, 0u64..8), 1..40),
            requests in prop::collection::vec((1u64..6, 1u64..8, 1u64..40), 1..200),
            seed in any::<u64>(),
        ) {
            let mut index = RegionPlacementIndex::default();
            for (i, (cpu, mem, disk, used)) in fleet.iter().enumerate() {
                index.insert(&format!("r{i}"), res(*cpu, *mem, *disk), res((*used).min(*cpu), 0, 0));
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for (cpu, mem, disk) in requests {
                let request = res(cpu, mem, disk);
                let could_fit = index.allocations().any(|(_, cap, alloc)| fits(cap, alloc, request));
                let placed = index.place(request, &mut rng).is_some();
                prop_assert_eq!(placed, could_fit);
                for (id, cap, alloc) in index.allocations() {
                    prop_assert!(fits(cap, Resources::default(), alloc), "{} over capacity: {:?} > {:?}", id, alloc, cap);
                }
            }
        }

        /// Thousands of runners of mixed sizes, checked against a brute-force scan: a request is
        /// placed exactly when some runner could hold it, never over capacity.
        #[test]
        fn placement_is_complete_against_brute_force(
            fleet in prop::collection::vec((0usize..4, 0u64..100), 500..3_000),
            requests in prop::collection::vec((0usize..4, 1u64..3), 1..300),
            seed in any::<u64>(),
        ) {
            const SIZES: [(u64, u64, u64); 4] = [(2, 4, 20), (8, 16, 100), (32, 128, 500), (96, 384, 4_000)];
            let mut index = RegionPlacementIndex::default();
            for (i, (size, used_pct)) in fleet.iter().enumerate() {
                let (cpu, mem, disk) = SIZES[*size];
                let used = res(cpu * used_pct / 100, mem * used_pct / 100, disk * used_pct / 100);
                index.insert(&format!("r{i}"), res(cpu, mem, disk), used);
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for (size, times) in requests {
                let (cpu, mem, disk) = SIZES[size];
                let request = res(cpu / 2 * times, mem / 2 * times, disk / 2 * times);
                let could_fit = index.allocations().any(|(_, cap, alloc)| fits(cap, alloc, request));
                let placed = index.place(request, &mut rng).is_some();
                prop_assert_eq!(placed, could_fit);
            }
            for (id, cap, alloc) in index.allocations() {
                prop_assert!(fits(cap, Resources::default(), alloc), "{} over capacity", id);
            }
        }
    }
}
