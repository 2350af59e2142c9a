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
//!
//! Constraints: a request may name tags its runner must carry ([`tags_match`]), and a runner
//! may cap how many sandboxes it holds ([`under_sandbox_limit`]). The index keeps, per tag set
//! asked for, a ranking of just the runners that carry it (built on first use, kept in step on
//! every placement), and places a constrained request on it as above: the best [`MAX_SCAN`],
//! then the whole ranking of that tag set, so constrained placement is as complete as
//! unconstrained placement, and as fast whether the tags are common or rare.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use rand::Rng;

use crate::command::Reschedule;
use crate::health::HealthReport;
use crate::state::State;
use crate::types::{Millis, Resources, Runner, RunnerState, SandboxState};

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

/// The placement constraint: the runner carries every wanted tag with the wanted value.
pub fn tags_match(runner_tags: &BTreeMap<String, String>, wanted: &BTreeMap<String, String>) -> bool {
    wanted.iter().all(|(key, value)| runner_tags.get(key) == Some(value))
}

/// The sandbox limit: a runner holding `hosted` sandboxes takes one more.
pub fn under_sandbox_limit(max_sandboxes: Option<u64>, hosted: u64) -> bool {
    max_sandboxes.is_none_or(|max| hosted < max)
}

/// Whether the sandboxes on `runner` must move elsewhere at `now`: it is decommissioned, or
/// it has been unresponsive for at least `unresponsive_for_ms` (0: never).
pub fn needs_rescheduling(runner: &Runner, now: Millis, unresponsive_for_ms: u64) -> bool {
    match runner.state {
        RunnerState::Decommissioned => true,
        RunnerState::Unresponsive => {
            unresponsive_for_ms > 0 && now.saturating_sub(runner.state_since()) >= unresponsive_for_ms
        }
        _ => false,
    }
}

/// The leader's rescheduling round, decided on one view of the state: every sandbox (not
/// destroyed) on a runner that [`needs_rescheduling`] gets a new runner of its region that
/// takes it (tags, room, limit), chosen like any placement, or `None` when a started one fits
/// nowhere (it will be marked `error` and retried). Stopped or already-`error` sandboxes with
/// nowhere to go are left out: nothing would change. At most `limit` moves.
pub fn plan_reschedules(
    state: &State,
    now: Millis,
    unresponsive_for_ms: u64,
    limit: usize,
    rng: &mut impl Rng,
) -> Vec<Reschedule> {
    let mut indexes: BTreeMap<&str, RegionPlacementIndex> = BTreeMap::new();
    let mut moves = Vec::new();
    let leaving = state.runners.values().filter(|r| needs_rescheduling(r, now, unresponsive_for_ms));
    for runner in leaving {
        let Some(on_runner) = state.runner_sandboxes.get(&runner.id) else { continue };
        let mut ids: Vec<&str> = on_runner.keys().map(|id| &**id).collect();
        ids.sort_unstable();
        for sandbox in ids.into_iter().filter_map(|id| state.sandboxes.get(id)) {
            if moves.len() == limit {
                return moves;
            }
            let index = indexes
                .entry(sandbox.region_id.as_str())
                .or_insert_with(|| RegionPlacementIndex::for_region(state, &sandbox.region_id));
            let to = index.place_matching(sandbox.resources, &sandbox.runner_tags, rng).map(str::to_string);
            if to.is_none() && sandbox.state != SandboxState::Started {
                continue;
            }
            moves.push(Reschedule {
                sandbox_id: sandbox.id.clone(),
                from_runner_id: runner.id.clone(),
                to_runner_id: to,
            });
        }
    }
    moves
}

/// Whether a sandbox may be placed on `runner` at all (by the scheduler, and on `apply`):
/// ready, schedulable and not draining.
pub fn eligible(runner: &Runner) -> bool {
    runner.state == RunnerState::Ready && runner.schedulable && !runner.draining
}

/// What a placement reads of one runner; its tags (read only for constrained requests) live
/// beside it.
#[derive(Debug, Clone)]
struct Slot {
    runner_id: String,
    capacity: Resources,
    allocated: Resources,
    /// Headroom from reported usage, in basis points ([`SCORE_MAX`] when none was reported).
    usage_cap: u32,
    score: u32,
    /// How many more sandboxes the runner takes under its limit (`u64::MAX`: no limit).
    sandboxes_left: u64,
}

impl Slot {
    #[inline]
    fn has_room(&self, request: Resources) -> bool {
        self.sandboxes_left > 0 && fits(self.capacity, self.allocated, request)
    }
}

/// The runners that carry one tag set, ranked like the whole index.
#[derive(Debug, Clone)]
struct TagView {
    wanted: BTreeMap<String, String>,
    ranked: BTreeSet<(Reverse<u32>, u32)>,
}

/// A runner as the index takes it: its id, capacity and allocation, and what constrains
/// placement on it.
#[derive(Debug, Clone, Default)]
pub struct IndexedRunner<'a> {
    pub runner_id: &'a str,
    pub capacity: Resources,
    pub allocated: Resources,
    /// Headroom from reported usage, in basis points ([`SCORE_MAX`]: none reported).
    pub usage_cap: u32,
    pub tags: BTreeMap<String, String>,
    pub hosted: u64,
    pub max_sandboxes: Option<u64>,
}

impl<'a> IndexedRunner<'a> {
    /// A runner's own fields, with no usage reported and no sandboxes counted.
    pub fn of(runner: &'a Runner) -> Self {
        IndexedRunner {
            runner_id: &runner.id,
            capacity: runner.capacity,
            allocated: runner.allocated,
            usage_cap: SCORE_MAX,
            tags: runner.tags.clone(),
            hosted: 0,
            max_sandboxes: runner.max_sandboxes,
        }
    }
}

/// No tags asked for.
static NO_TAGS: BTreeMap<String, String> = BTreeMap::new();

/// Tag sets whose rankings an index keeps; the oldest is dropped (and rebuilt if asked for
/// again) beyond this.
const TAG_SETS_KEPT: usize = 16;

/// Headroom from a health report, in basis points.
pub fn usage_headroom(report: &HealthReport) -> u32 {
    ((100.0 - report.max_usage_pct()) * 100.0).round().clamp(0.0, SCORE_MAX as f32) as u32
}

/// One region's eligible runners, ranked by availability, and bucketed by free cpu for the
/// fallback that makes placement complete.
#[derive(Debug, Clone, Default)]
pub struct RegionPlacementIndex {
    slots: Vec<Slot>,
    /// Per slot, its runner's tags (apart from `slots`, which every scan reads); empty until
    /// a runner with tags is indexed, so an untagged fleet carries nothing here.
    slot_tags: Vec<BTreeMap<String, String>>,
    ranked: BTreeSet<(Reverse<u32>, u32)>,
    /// Slots by the power of two of their free cpu: bucket `b` holds free cpu in
    /// `[2^b, 2^(b+1))` (bucket 0 also 0). The runners that could hold a request's cpu are in
    /// the buckets from the request's up. A placement moves a slot only when its free cpu
    /// crosses a power of two, so keeping them costs almost nothing.
    cpu_buckets: Vec<Vec<u32>>,
    /// Per slot: (bucket, position in it).
    bucket_of: Vec<(usize, usize)>,
    /// Requests (with their tag constraint) this index found no room for. Free capacity only
    /// shrinks while an index lives (it is rebuilt when anything else changes the runners), so
    /// a request with the same tags, at least as large in every resource, is refused at once,
    /// without scanning the fleet again.
    refused: Vec<(Resources, BTreeMap<String, String>)>,
    /// Per tag set asked for, the ranking of the slots that carry it.
    views: Vec<TagView>,
}

/// One of the best [`TOP_K`] among the first [`MAX_SCAN`] of `ranked` with room for the
/// request, at random.
#[inline]
fn best_fitting(
    ranked: &BTreeSet<(Reverse<u32>, u32)>,
    slots: &[Slot],
    request: Resources,
    rng: &mut impl Rng,
) -> Option<u32> {
    let mut fitting = [0u32; TOP_K];
    let mut found = 0;
    for &(_, slot) in ranked.iter().take(MAX_SCAN) {
        if slots[slot as usize].has_room(request) {
            fitting[found] = slot;
            found += 1;
            if found == TOP_K {
                break;
            }
        }
    }
    (found > 0).then(|| fitting[rng.gen_range(0..found)])
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
    /// Indexes the eligible runners of region `region_id` in `state`.
    pub fn for_region(state: &State, region_id: &str) -> Self {
        Self::for_region_with_usage(state, region_id, |_| None)
    }

    /// Indexes the eligible runners of a region, capping each score by `headroom(runner id)`
    /// (see [`usage_headroom`]).
    pub fn for_region_with_usage(state: &State, region_id: &str, headroom: impl Fn(&str) -> Option<u32>) -> Self {
        let mut index = RegionPlacementIndex::default();
        for runner in state.runners_in_region(region_id).filter(|r| eligible(r)) {
            index.insert_runner(IndexedRunner {
                usage_cap: headroom(&runner.id).unwrap_or(SCORE_MAX),
                hosted: state.runner_sandboxes.get(&runner.id).map_or(0, |ids| ids.len() as u64),
                ..IndexedRunner::of(runner)
            });
        }
        index
    }

    /// Adds an unconstrained runner with no usage reported (used by benchmarks and tests).
    pub fn insert(&mut self, runner_id: &str, capacity: Resources, allocated: Resources) {
        self.insert_with_usage(runner_id, capacity, allocated, SCORE_MAX);
    }

    /// Adds an unconstrained runner whose score is capped by `usage_cap` basis points of headroom.
    pub fn insert_with_usage(&mut self, runner_id: &str, capacity: Resources, allocated: Resources, usage_cap: u32) {
        self.insert_runner(IndexedRunner { runner_id, capacity, allocated, usage_cap, ..IndexedRunner::default() });
    }

    /// Adds a runner.
    pub fn insert_runner(&mut self, runner: IndexedRunner<'_>) {
        let IndexedRunner { runner_id, capacity, allocated, usage_cap, tags, hosted, max_sandboxes } = runner;
        let slot = self.slots.len() as u32;
        let score = availability_score(capacity, allocated).min(usage_cap);
        // A new runner may hold what was refused before.
        self.refused.clear();
        for view in &mut self.views {
            if tags_match(&tags, &view.wanted) {
                view.ranked.insert((Reverse(score), slot));
            }
        }
        let sandboxes_left = max_sandboxes.map_or(u64::MAX, |max| max.saturating_sub(hosted));
        self.slots.push(Slot {
            runner_id: runner_id.to_string(),
            capacity,
            allocated,
            usage_cap,
            score,
            sandboxes_left,
        });
        if !tags.is_empty() || !self.slot_tags.is_empty() {
            self.slot_tags.resize_with(slot as usize, BTreeMap::new);
            self.slot_tags.push(tags);
        }
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
    /// indexed runner has room. Unconstrained: see [`RegionPlacementIndex::place_matching`].
    pub fn place(&mut self, request: Resources, rng: &mut impl Rng) -> Option<&str> {
        self.place_matching(request, &NO_TAGS, rng)
    }

    /// Chooses a runner that carries every tag in `wanted` and has room for `request` (and
    /// for one more sandbox), and reserves it there; `None` only when no indexed runner can
    /// take it.
    ///
    /// First among the best [`MAX_SCAN`] by score (one of the best [`TOP_K`] that fit, at
    /// random). The score is a free *fraction*, so a big runner with room can rank below
    /// small full ones; when none of the best fits, the runners with enough free cpu (one
    /// bucket and those above, most free first) are checked in turn, so a fitting runner is
    /// always found. Near a full fleet those buckets are short. With tags, the same on the
    /// tag set's own ranking, whose fallback is the rest of that ranking.
    pub fn place_matching(
        &mut self,
        request: Resources,
        wanted: &BTreeMap<String, String>,
        rng: &mut impl Rng,
    ) -> Option<&str> {
        let view = if wanted.is_empty() { None } else { Some(self.view_of(wanted)) };
        let ranked = match view {
            Some(at) => &self.views[at].ranked,
            None => &self.ranked,
        };
        let chosen = match best_fitting(ranked, &self.slots, request, rng) {
            Some(slot) => slot,
            None => {
                if self.refused.iter().any(|(smaller, tags)| tags == wanted && smaller.fits_within(&request)) {
                    return None;
                }
                let found = match view {
                    // The tag set's ranking beyond the scan window, in order.
                    Some(_) => ranked
                        .iter()
                        .skip(MAX_SCAN)
                        .map(|(_, slot)| *slot)
                        .find(|slot| self.slots[*slot as usize].has_room(request)),
                    None => self.first_in_cpu_buckets(request),
                };
                match found {
                    Some(slot) => slot,
                    None => {
                        if self.refused.len() == REFUSED_KEPT {
                            self.refused.remove(0);
                        }
                        self.refused.push((request, wanted.clone()));
                        return None;
                    }
                }
            }
        };
        let slot = &mut self.slots[chosen as usize];
        let old = (Reverse(slot.score), chosen);
        slot.allocated = slot.allocated.saturating_add(&request);
        slot.sandboxes_left = slot.sandboxes_left.saturating_sub(1);
        slot.score = availability_score(slot.capacity, slot.allocated).min(slot.usage_cap);
        let new = (Reverse(slot.score), chosen);
        if old != new {
            self.ranked.remove(&old);
            self.ranked.insert(new);
            if !self.views.is_empty() {
                let tags = self.slot_tags.get(chosen as usize).unwrap_or(&NO_TAGS);
                for view in self.views.iter_mut().filter(|v| tags_match(tags, &v.wanted)) {
                    view.ranked.remove(&old);
                    view.ranked.insert(new);
                }
            }
        }
        self.rebucket(chosen);
        Some(&self.slots[chosen as usize].runner_id)
    }

    fn tags_of(&self, slot: u32) -> &BTreeMap<String, String> {
        self.slot_tags.get(slot as usize).unwrap_or(&NO_TAGS)
    }

    /// The unconstrained fallback: the first runner with room among those with enough free
    /// cpu, most free first.
    fn first_in_cpu_buckets(&self, request: Resources) -> Option<u32> {
        let buckets = self.cpu_buckets.get(cpu_bucket(request.cpu)..).unwrap_or_default();
        buckets.iter().rev().flatten().copied().find(|slot| self.slots[*slot as usize].has_room(request))
    }

    /// Where the ranking of the slots carrying `wanted` is, built on first use.
    fn view_of(&mut self, wanted: &BTreeMap<String, String>) -> usize {
        if let Some(at) = self.views.iter().position(|v| &v.wanted == wanted) {
            return at;
        }
        if self.views.len() == TAG_SETS_KEPT {
            self.views.remove(0);
        }
        let ranked = self.ranked.iter().filter(|(_, slot)| tags_match(self.tags_of(*slot), wanted)).copied().collect();
        self.views.push(TagView { wanted: wanted.clone(), ranked });
        self.views.len() - 1
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

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn tags_must_all_match() {
        let runner = tags(&[("zone", "a"), ("gpu", "a100")]);
        assert!(tags_match(&runner, &BTreeMap::new()));
        assert!(tags_match(&runner, &tags(&[("zone", "a")])));
        assert!(tags_match(&runner, &tags(&[("zone", "a"), ("gpu", "a100")])));
        assert!(!tags_match(&runner, &tags(&[("zone", "b")])));
        assert!(!tags_match(&runner, &tags(&[("zone", "a"), ("disk", "ssd")])));
    }

    #[test]
    fn a_sandbox_limit_caps_placements_on_a_runner() {
        let mut index = RegionPlacementIndex::default();
        let capped = IndexedRunner {
            runner_id: "capped",
            capacity: res(64, 64, 640),
            usage_cap: SCORE_MAX,
            hosted: 1,
            max_sandboxes: Some(3),
            ..IndexedRunner::default()
        };
        index.insert_runner(capped);
        let mut rng = rand::rngs::StdRng::seed_from_u64(2);
        assert_eq!(index.place(res(1, 1, 1), &mut rng), Some("capped"));
        assert_eq!(index.place(res(1, 1, 1), &mut rng), Some("capped"));
        assert_eq!(index.place(res(1, 1, 1), &mut rng), None, "3 sandboxes: the limit, with room to spare");
    }

    #[test]
    fn a_rare_tag_is_found_among_thousands_and_a_missing_one_refused() {
        let mut index = RegionPlacementIndex::default();
        for i in 0..5_000 {
            let zone = if i == 4_321 { "rare" } else { "common" };
            let id = format!("r{i}");
            index.insert_runner(IndexedRunner {
                runner_id: &id,
                capacity: res(8, 16, 100),
                usage_cap: SCORE_MAX,
                tags: tags(&[("zone", zone)]),
                ..IndexedRunner::default()
            });
        }
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        assert_eq!(index.place_matching(res(4, 4, 4), &tags(&[("zone", "rare")]), &mut rng), Some("r4321"));
        assert_eq!(index.place_matching(res(4, 4, 4), &tags(&[("zone", "rare")]), &mut rng), Some("r4321"));
        assert_eq!(index.place_matching(res(1, 1, 1), &tags(&[("zone", "rare")]), &mut rng), None, "full");
        assert_eq!(index.place_matching(res(1, 1, 1), &tags(&[("zone", "nowhere")]), &mut rng), None);
        let common = index.place_matching(res(1, 1, 1), &tags(&[("zone", "common")]), &mut rng);
        assert!(common.is_some_and(|id| id != "r4321"), "{common:?}");
        // A new runner is in the lists the index already keeps.
        index.insert_runner(IndexedRunner {
            runner_id: "late",
            capacity: res(8, 16, 100),
            usage_cap: SCORE_MAX,
            tags: tags(&[("zone", "rare")]),
            ..IndexedRunner::default()
        });
        assert_eq!(index.place_matching(res(1, 1, 1), &tags(&[("zone", "rare")]), &mut rng), Some("late"));
    }

    proptest! {
        /// Runners of mixed sizes, tags and sandbox limits, against a brute-force scan: a
        /// request is placed exactly when some runner carries its tags and has room (for its
        /// resources and one more sandbox), on such a runner, and never over capacity or limit.
        #[test]
        fn constrained_placement_is_complete_against_brute_force(
            fleet in prop::collection::vec((1u64..32, 0usize..3, 0usize..3, prop::option::of(1u64..6)), 1..600),
            requests in prop::collection::vec((1u64..8, 0usize..4, 0usize..3), 1..300),
            seed in any::<u64>(),
        ) {
            const ZONES: [&str; 3] = ["a", "b", "c"];
            const DISKS: [&str; 3] = ["ssd", "hdd", "nvme"];
            let mut index = RegionPlacementIndex::default();
            // id, tags, capacity, allocated, sandboxes, max sandboxes
            #[allow(clippy::type_complexity)]
            let mut brute: Vec<(String, BTreeMap<String, String>, Resources, Resources, u64, Option<u64>)> = Vec::new();
            for (i, (cpu, zone, disk, max)) in fleet.iter().enumerate() {
                let id = format!("r{i}");
                // A few runners carry no disk tag at all.
                let runner_tags = if i % 7 == 0 { tags(&[("zone", ZONES[*zone])]) }
                    else { tags(&[("zone", ZONES[*zone]), ("disk", DISKS[*disk])]) };
                index.insert_runner(IndexedRunner {
                    runner_id: &id,
                    capacity: res(*cpu, cpu * 2, cpu * 10),
                    usage_cap: SCORE_MAX,
                    tags: runner_tags.clone(),
                    max_sandboxes: *max,
                    ..IndexedRunner::default()
                });
                brute.push((id, runner_tags, res(*cpu, cpu * 2, cpu * 10), Resources::default(), 0, *max));
            }
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            for (cpu, zone, disk) in requests {
                let request = res(cpu, cpu, cpu);
                // zone index 3: no zone constraint.
                let mut wanted = BTreeMap::new();
                if zone < 3 { wanted.insert("zone".to_string(), ZONES[zone].to_string()); }
                if disk < 2 { wanted.insert("disk".to_string(), DISKS[disk].to_string()); }
                let takes = |(_, t, cap, alloc, hosted, max): &(String, BTreeMap<String, String>, Resources, Resources, u64, Option<u64>)| {
                    tags_match(t, &wanted) && fits(*cap, *alloc, request) && under_sandbox_limit(*max, *hosted)
                };
                let could = brute.iter().any(takes);
                let placed = index.place_matching(request, &wanted, &mut rng).map(String::from);
                prop_assert_eq!(placed.is_some(), could, "request {:?} {:?}", request, wanted);
                if let Some(id) = placed {
                    let entry = brute.iter_mut().find(|e| e.0 == id).expect("a known runner");
                    prop_assert!(takes(entry), "{} could not take {:?} {:?}", id, request, wanted);
                    entry.3 = entry.3.saturating_add(&request);
                    entry.4 += 1;
                }
            }
        }

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
