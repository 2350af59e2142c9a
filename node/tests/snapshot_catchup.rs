//! Acceptance: with a low snapshot threshold the leader snapshots and purges its log; a
//! follower that was down meanwhile, and a follower whose disk was wiped, both catch up by
//! snapshot and end with the same state hash.

mod common;

fn custom_regions(regions: &serde_json::Value) -> Option<usize> {
    regions.as_array().map(|l| l.iter().filter(|r| r["regionType"] == "custom").count())
}

use std::time::{Duration, Instant};

use common::TestCluster;
use serde_json::json;

#[test]
fn lagging_and_wiped_followers_catch_up_by_snapshot() {
    let mut cluster = TestCluster::start(3, &["--snapshot-threshold", "20", "--keep-logs-after-snapshot", "0"]);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let lagging = (1..=3).find(|&n| n != leader).expect("a follower");
    let other = (1..=3).find(|&n| n != leader && n != lagging).expect("another follower");

    cluster.kill(lagging);
    for i in 0..100 {
        let (status, body) = cluster.post(other, "/api/regions", &json!({ "name": format!("r{i}") }));
        assert_eq!(status, 201, "{body}");
    }
    // The leader purges once no replication stream is using the entries; the stream to the
    // dead follower releases them each time a retry fails, so this happens within a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = cluster.status(leader).expect("leader status");
        assert!(status.snapshots_built >= 1, "leader built no snapshot: {status:?}");
        if status.purged_index.is_some_and(|p| p >= 20) {
            break;
        }
        assert!(Instant::now() < deadline, "leader did not purge its log: {status:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    cluster.start_node(lagging);
    cluster.wait_converged(Duration::from_secs(60));
    let status = cluster.status(lagging).expect("status");
    assert!(status.snapshots_installed >= 1, "lagging follower did not install a snapshot: {status:?}");
    let (_, regions) = cluster.get(lagging, "/api/regions?consistency=stale");
    assert_eq!(custom_regions(&regions), Some(100));

    // Now a follower loses its disk entirely and comes back empty.
    cluster.kill(other);
    cluster.wipe(other);
    for i in 100..130 {
        let (status, body) = cluster.post(leader, "/api/regions", &json!({ "name": format!("r{i}") }));
        assert_eq!(status, 201, "{body}");
    }
    cluster.start_node(other);
    cluster.wait_converged(Duration::from_secs(60));
    let status = cluster.status(other).expect("status");
    assert!(status.snapshots_installed >= 1, "wiped follower did not install a snapshot: {status:?}");
    let (_, regions) = cluster.get(other, "/api/regions?consistency=stale");
    assert_eq!(custom_regions(&regions), Some(130));
}
