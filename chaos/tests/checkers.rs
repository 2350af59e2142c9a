//! The checkers against histories known to be good and known to be broken: each kind of
//! violation the chaos run looks for is caught, and legal histories pass.

use std::collections::{BTreeMap, HashMap};

use corral_chaos::check::{
    check_converged, check_final_state, check_linearizable, check_placements, PlacedSandbox, RunnerCapacity, Violation,
};
use corral_chaos::history::History;

const BUDGET: u64 = 1_000_000;

#[test]
fn sequential_and_concurrent_legal_histories_pass() {
    let mut h = History::default();
    h.write(1, "k", "a", 0, 10);
    h.read(2, "k", Some("a"), 20, 30);
    // Two concurrent writes; readers may see them in either order, but consistently.
    h.write(1, "k", "b", 40, 60);
    h.write(2, "k", "c", 45, 65);
    h.read(3, "k", Some("c"), 50, 70);
    h.read(3, "k", Some("b"), 75, 80);
    h.delete(1, "k", 90, 100);
    h.read(2, "k", None, 110, 120);
    // An untouched key reads absent.
    h.read(2, "other", None, 0, 5);
    assert_eq!(check_linearizable(&h, BUDGET), vec![]);
}

#[test]
fn a_stale_read_is_caught() {
    let mut h = History::default();
    h.write(1, "k", "a", 0, 10);
    h.write(1, "k", "b", 20, 30);
    // Invoked after b was acknowledged, yet sees a: a read served from a stale replica.
    let stale = h.read(2, "k", Some("a"), 40, 50);
    let violations = check_linearizable(&h, BUDGET);
    assert!(
        matches!(&violations[..], [Violation::NotLinearizable { key, ops }] if key == "k" && ops.contains(&stale)),
        "{violations:?}"
    );
}

#[test]
fn unknown_outcomes_may_or_may_not_have_happened_but_only_once() {
    let mut h = History::default();
    h.write(1, "k", "a", 0, 10);
    h.write_unknown(2, "k", "b", 15);
    h.read(3, "k", Some("b"), 40, 50);
    assert_eq!(check_linearizable(&h, BUDGET), vec![], "the timed-out write took effect");

    let mut never = History::default();
    never.write(1, "k", "a", 0, 10);
    never.write_unknown(2, "k", "b", 15);
    never.read(3, "k", Some("a"), 40, 50);
    assert_eq!(check_linearizable(&never, BUDGET), vec![], "the timed-out write never took effect");

    // Once it is seen, it cannot be unseen: b then a again would need a second write of a.
    h.read(3, "k", Some("a"), 60, 70);
    assert_eq!(check_linearizable(&h, BUDGET).len(), 1);
}

/// A busy key with many timed-out writes (as under a partition): the search must stay
/// conclusive on a small budget, passing the legal history and catching the broken one.
#[test]
fn many_timed_out_writes_keep_the_search_conclusive() {
    let mut h = History::default();
    // 40 writes that timed out, all invoked early and open to the end; one of them was seen.
    for j in 0..40u64 {
        h.write_unknown(100 + j, "k", &format!("u{j}"), j);
    }
    let mut t = 100;
    for i in 0..60u64 {
        h.write(1, "k", &format!("v{i}"), t, t + 5);
        h.read(2, "k", Some(&format!("v{i}")), t + 10, t + 15);
        t += 20;
    }
    h.read(3, "k", Some("u7"), t, t + 5);
    h.read(3, "k", Some("u7"), t + 10, t + 15);
    assert_eq!(check_linearizable(&h, 200_000), vec![]);

    // v59 was overwritten by u7 and nothing wrote v59 again: reading it now is stale.
    h.read(4, "k", Some("v59"), t + 20, t + 25);
    let violations = check_linearizable(&h, 200_000);
    assert!(matches!(&violations[..], [Violation::NotLinearizable { .. }]), "{violations:?}");
}

#[test]
fn a_failed_write_must_not_be_visible() {
    let mut h = History::default();
    h.write(1, "k", "a", 0, 10);
    h.write_failed(2, "k", "b", 15, 20);
    h.read(3, "k", Some("b"), 40, 50);
    assert_eq!(check_linearizable(&h, BUDGET).len(), 1);
}

#[test]
fn a_lost_write_is_caught_on_the_node_that_lost_it() {
    let mut h = History::default();
    h.write(1, "k", "a", 0, 10);
    h.write(1, "j", "x", 0, 10);
    h.write_unknown(2, "j", "y", 20);
    let mut good: HashMap<String, String> = HashMap::new();
    good.insert("k".into(), "a".into());
    good.insert("j".into(), "y".into());
    let mut lossy = good.clone();
    lossy.remove("k");
    let violations = check_final_state(&h, &[(1, good.clone()), (2, lossy)], BUDGET);
    assert_eq!(violations, vec![Violation::LostWrite { key: "k".into(), node: 2, final_value: None }]);
    // "j" may hold x or y (the unknown write) on any node.
    good.insert("j".into(), "x".into());
    assert_eq!(check_final_state(&h, &[(3, good)], BUDGET), vec![]);
}

fn sandbox(id: &str, runner: &str, request: &str, cpu: u64) -> PlacedSandbox {
    PlacedSandbox {
        id: id.into(),
        runner_id: runner.into(),
        request: Some(request.into()),
        resources: [cpu, 1, 1],
        destroyed: false,
        rescheduled: false,
    }
}

#[test]
fn double_placement_missing_sandbox_and_overcommit_are_caught() {
    // The runner's allocation as a node would report it: the sum of its live sandboxes.
    let r1 = |sandboxes: &[PlacedSandbox]| {
        let mut allocated = [0u64; 3];
        for s in sandboxes.iter().filter(|s| !s.destroyed && s.runner_id == "r1") {
            for (a, r) in allocated.iter_mut().zip(s.resources) {
                *a += r;
            }
        }
        vec![RunnerCapacity { id: "r1".into(), capacity: [4, 8, 8], allocated }]
    };
    let ok = vec![sandbox("s1", "r1", "req-1", 2), sandbox("s2", "r1", "req-2", 2)];
    let acked = vec!["req-1".to_string(), "req-2".to_string()];
    assert_eq!(check_placements(1, &ok, &r1(&ok), &acked), vec![]);

    let twice = vec![sandbox("s1", "r1", "req-1", 1), sandbox("s3", "r1", "req-1", 1), sandbox("s2", "r1", "req-2", 1)];
    assert_eq!(
        check_placements(1, &twice, &r1(&twice), &acked),
        vec![Violation::DoublePlacement {
            request: "req-1".into(),
            node: 1,
            sandboxes: vec!["s1".into(), "s3".into()]
        }]
    );

    let missing = vec![sandbox("s1", "r1", "req-1", 1)];
    assert_eq!(
        check_placements(2, &missing, &r1(&missing), &acked),
        vec![Violation::MissingSandbox { request: "req-2".into(), node: 2 }]
    );

    let over = vec![sandbox("s1", "r1", "req-1", 3), sandbox("s2", "r1", "req-2", 2)];
    assert_eq!(
        check_placements(3, &over, &r1(&over), &acked),
        vec![Violation::OverCapacity { runner: "r1".into(), node: 3 }]
    );
    // Destroyed sandboxes hold nothing.
    let mut freed = over.clone();
    freed[0].destroyed = true;
    assert_eq!(check_placements(3, &freed, &r1(&freed), &acked), vec![]);
}

/// A rescheduled sandbox is on one runner: a move that charged the new runner but did not
/// free the old one, or a sandbox on a runner nobody knows, is caught.
#[test]
fn a_sandbox_charged_to_two_runners_is_caught() {
    let runner = |id: &str, allocated: [u64; 3]| RunnerCapacity { id: id.into(), capacity: [8, 8, 8], allocated };
    let (none, one): ([u64; 3], [u64; 3]) = ([0, 0, 0], [2, 1, 1]);
    let moved = vec![sandbox("s1", "r2", "req-1", 2)];
    let acked = vec!["req-1".to_string()];
    assert_eq!(check_placements(1, &moved, &[runner("r1", none), runner("r2", one)], &acked), vec![]);
    assert_eq!(
        check_placements(1, &moved, &[runner("r1", one), runner("r2", one)], &acked),
        vec![Violation::AllocationMismatch { runner: "r1".into(), node: 1, allocated: one, sandboxes: none }]
    );
    assert_eq!(
        check_placements(1, &moved, &[runner("r1", none)], &acked),
        vec![Violation::UnknownRunner { sandbox: "s1".into(), runner: "r2".into(), node: 1 }]
    );
}

#[test]
fn divergent_nodes_are_caught() {
    let same: BTreeMap<u64, String> = [(1, "h".to_string()), (2, "h".to_string())].into();
    assert_eq!(check_converged(&same), vec![]);
    let split: BTreeMap<u64, String> = [(1, "h".to_string()), (2, "g".to_string())].into();
    assert_eq!(check_converged(&split).len(), 1);
}

#[test]
fn a_search_out_of_budget_is_inconclusive_not_a_pass() {
    let mut h = History::default();
    // Many overlapping writes and one impossible read at the end.
    for c in 0..12u64 {
        h.write(c, "k", &format!("v{c}"), 0, 100);
    }
    h.read(99, "k", Some("never-written"), 200, 210);
    let violations = check_linearizable(&h, 10);
    assert!(matches!(&violations[..], [Violation::Inconclusive { .. }]), "{violations:?}");
    // With enough budget the memoized search refutes it.
    let violations = check_linearizable(&h, BUDGET);
    assert!(matches!(&violations[..], [Violation::NotLinearizable { .. }]), "{violations:?}");
}

#[test]
fn a_final_state_search_out_of_budget_is_inconclusive_not_a_pass() {
    let mut h = History::default();
    // Twelve overlapping writes: the history alone is quickly linearized, but a final value
    // nobody wrote makes the search try every order before it can say no.
    for c in 0..12u64 {
        h.write(c, "k", &format!("v{c}"), 0, 100);
    }
    let finals = vec![(1, HashMap::from([("k".to_string(), "never-written".to_string())]))];
    assert_eq!(
        check_final_state(&h, &finals, 100),
        vec![Violation::FinalStateInconclusive { key: "k".into(), node: 1 }]
    );
    let violations = check_final_state(&h, &finals, BUDGET);
    assert!(matches!(&violations[..], [Violation::LostWrite { node: 1, .. }]), "{violations:?}");
}
