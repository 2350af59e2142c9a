//! Acceptance: three real `corral serve` processes; 200 regions through a follower; SIGKILL
//! the leader; 200 more through a survivor; restart the killed node; every node converges to
//! the same applied index and state hash, and all 400 regions are readable from every node.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::TestCluster;
use serde_json::{json, Value};

fn create_regions(cluster: &TestCluster, via: u64, range: std::ops::Range<u32>) -> f64 {
    let started = Instant::now();
    let count = range.len();
    for i in range {
        let (status, body) = cluster.post(via, "/api/regions", &json!({ "name": format!("region-{i}") }));
        assert_eq!(status, 201, "creating region-{i} via node {via}: {body}");
        assert!(body["id"].as_str().is_some_and(|id| !id.is_empty()), "{body}");
    }
    count as f64 / started.elapsed().as_secs_f64()
}

fn region_names(cluster: &TestCluster, node: u64, consistency: &str) -> BTreeSet<String> {
    let (status, body) = cluster.get(node, &format!("/api/regions?consistency={consistency}"));
    assert_eq!(status, 200, "{body}");
    body.as_array()
        .expect("a list")
        .iter()
        .filter(|r| r["regionType"] == "custom")
        .filter_map(|r| r["name"].as_str().map(str::to_string))
        .collect()
}

#[test]
fn survives_leader_kill_and_converges() {
    let mut cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let follower = (1..=3).find(|&n| n != leader).expect("a follower");

    let rate = create_regions(&cluster, follower, 0..200);
    println!("200 regions through follower {follower}: {rate:.0} writes/s");

    cluster.kill(leader);
    let survivor = (1..=3).find(|&n| n != leader).expect("a survivor");
    let rate = create_regions(&cluster, survivor, 200..400);
    println!("200 regions through survivor {survivor} after killing leader {leader}: {rate:.0} writes/s");
    let new_leader = cluster.wait_leader(Duration::from_secs(30));
    assert_ne!(new_leader, leader);

    cluster.start_node(leader);
    let (applied, hash) = cluster.wait_converged(Duration::from_secs(60));
    println!("converged at applied index {applied}, state hash {hash}");

    let expected: BTreeSet<String> = (0..400).map(|i| format!("region-{i}")).collect();
    for node in 1..=3 {
        assert_eq!(region_names(&cluster, node, "stale"), expected, "stale read on node {node}");
        assert_eq!(region_names(&cluster, node, "linearizable"), expected, "linearizable read on node {node}");
    }
    // Every region can be fetched by id from every node.
    let (_, list) = cluster.get(1, "/api/regions");
    let ids: Vec<String> = list
        .as_array()
        .expect("list")
        .iter()
        .filter(|r| r["regionType"] == "custom")
        .filter_map(|r| r["id"].as_str().map(String::from))
        .collect();
    assert_eq!(ids.len(), 400);
    for node in 1..=3 {
        for id in ids.iter().step_by(37) {
            let (status, body) = cluster.get(node, &format!("/api/regions/{id}?consistency=stale"));
            assert_eq!(status, 200, "{body}");
            assert_eq!(body["id"], Value::String(id.clone()));
        }
    }
}

#[test]
fn rejects_bad_requests_with_json_errors() {
    let cluster = TestCluster::start(3, &[]);
    let leader = cluster.wait_leader(Duration::from_secs(30));
    let follower = (1..=3).find(|&n| n != leader).expect("a follower");

    let (status, body) = cluster.post(follower, "/api/regions", &json!({ "name": "bad name!" }));
    assert_eq!((status, body["code"].as_str()), (422, Some("invalid_request")), "{body}");
    let (status, body) = cluster.post(follower, "/api/regions", &json!({ "name": "ok", "bogus": 1 }));
    assert_eq!(status, 422, "unknown field: {body}");
    let (status, body) = cluster.post(follower, "/api/regions", &json!({ "name": "ok", "proxyUrl": "not a url" }));
    assert_eq!(status, 422, "{body}");
    let (status, _) = cluster.post(follower, "/api/regions", &json!({ "name": "dup" }));
    assert_eq!(status, 201);
    let (status, body) = cluster.post(leader, "/api/regions", &json!({ "name": "dup" }));
    assert_eq!((status, body["code"].as_str()), (409, Some("already_exists")), "{body}");
    let (status, body) = cluster.get(follower, "/api/regions/does-not-exist");
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");

    let resp = cluster.http.get(cluster.url(follower, "/api/regions")).send().expect("request");
    assert_eq!(resp.status().as_u16(), 401);
    let body: Value = resp.json().expect("json error");
    assert_eq!(body["code"], "unauthorized");

    let resp = cluster
        .http
        .post(cluster.url(follower, "/api/regions"))
        .bearer_auth(common::ADMIN_KEY)
        .header("X-Organization-ID", common::ADMIN_ORGANIZATION)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .expect("request");
    assert_eq!(resp.status().as_u16(), 400);
    let body: Value = resp.json().expect("json error");
    assert_eq!(body["code"], "malformed_json");

    // The node answers 413 on seeing the length and closes; a client still writing the body
    // may be cut off (broken pipe) before it reads the answer, which says nothing: try again.
    let big = "x".repeat(2 * 1024 * 1024);
    let resp = (0..5)
        .find_map(|_| {
            cluster
                .http
                .post(cluster.url(follower, "/api/regions"))
                .bearer_auth(common::ADMIN_KEY)
                .header("X-Organization-ID", common::ADMIN_ORGANIZATION)
                .header("content-type", "application/json")
                .body(format!("{{\"name\":\"{big}\"}}"))
                .send()
                .ok()
        })
        .expect("an answer in five attempts");
    assert_eq!(resp.status().as_u16(), 413);
    let body: Value = resp.json().expect("json error");
    assert_eq!(body["code"], "payload_too_large");
}
