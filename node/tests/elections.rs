//! Elections with pre-vote and leader fencing, on real `corral serve` processes (issue 17):
//! - a follower paused (SIGSTOP) for 10 s, while the others keep writing, is resumed behind
//!   the log and stays a follower: no term change, the same leader;
//! - a leader whose followers all stop answering (both paused) fences itself within about a
//!   lease: `/readyz` fails and a write is refused at once with 503 `no_leader`, not after the
//!   request timeout; once they resume, the cluster has one serving leader again.

mod common;

use std::time::{Duration, Instant};

use common::TestCluster;
use serde_json::json;

fn signal(cluster: &TestCluster, node: u64, sig: &str) {
    let pid = cluster.pid(node).expect("a running node");
    let status = std::process::Command::new("kill").args([sig, &pid.to_string()]).status().expect("kill");
    assert!(status.success(), "kill {sig} {pid}");
}

fn term_and_leader(cluster: &TestCluster, node: u64) -> (u64, Option<u64>) {
    let status = cluster.status(node).expect("cluster status");
    (status.term, status.leader_id)
}

#[test]
fn a_paused_follower_resumed_after_ten_seconds_does_not_change_the_leader() {
    let cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let (term, _) = term_and_leader(&cluster, leader);
    let paused = (1..=3).find(|&n| n != leader).expect("a follower");
    let other = (1..=3).find(|&n| n != leader && n != paused).expect("another follower");

    signal(&cluster, paused, "-STOP");
    let started = Instant::now();
    let mut written = 0;
    while started.elapsed() < Duration::from_secs(10) {
        let (status, body) = cluster.post(other, "/api/regions", &json!({ "name": format!("while-paused-{written}") }));
        assert_eq!(status, 201, "{body}");
        written += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    signal(&cluster, paused, "-CONT");
    // The resumed node's election timer has long passed; it must ask, be refused, catch up.
    let resumed = Instant::now();
    while resumed.elapsed() < Duration::from_secs(5) {
        let (status, body) = cluster.post(other, "/api/regions", &json!({ "name": format!("after-{written}") }));
        assert_eq!(status, 201, "{body}");
        written += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    for node in 1..=3 {
        assert_eq!(
            term_and_leader(&cluster, node),
            (term, Some(leader)),
            "node {node}: the term and the leader stay as they were ({written} writes)"
        );
    }
    let (applied, _) = cluster.wait_converged(Duration::from_secs(30));
    println!("{written} writes while a follower was paused and after; converged at {applied}; term {term} unchanged");
}

#[test]
fn a_leader_that_hears_from_no_follower_fences_itself_and_refuses_writes_at_once() {
    let cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let followers: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();
    let (status, body) = cluster.post(leader, "/api/regions", &json!({ "name": "before" }));
    assert_eq!(status, 201, "{body}");

    for &f in &followers {
        signal(&cluster, f, "-STOP");
    }
    // Fenced within about a lease (900 ms by default); allow a loaded machine some slack.
    let paused = Instant::now();
    let fenced = loop {
        let (status, _) = cluster.get(leader, "/readyz");
        if status == 503 {
            break paused.elapsed();
        }
        assert!(paused.elapsed() < Duration::from_secs(5), "the leader still reports ready");
        std::thread::sleep(Duration::from_millis(20));
    };
    let asked = Instant::now();
    let (status, body) = cluster.post(leader, "/api/regions", &json!({ "name": "while-fenced" }));
    let answered = asked.elapsed();
    for &f in &followers {
        signal(&cluster, f, "-CONT");
    }
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], "no_leader", "{body}");
    assert!(answered < Duration::from_secs(2), "refused at once, not after the request timeout: {answered:?}");
    println!("fenced {fenced:?} after the followers stopped; a write was refused in {answered:?}");

    let serving = cluster.wait_leader(Duration::from_secs(30));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = cluster.post(serving, "/api/regions", &json!({ "name": "after" }));
        if status == 201 {
            break;
        }
        assert!(Instant::now() < deadline, "writes do not resume: {status} {body}");
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.wait_converged(Duration::from_secs(30));
}
