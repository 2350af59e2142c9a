//! Sandboxes through the leader's batched scheduler on a real 3-node cluster: placement within
//! capacity, no_capacity, lifecycle and allocation, idempotency, concurrency, and a leader kill.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{TestCluster, ADMIN_KEY};
use serde_json::{json, Value};

/// A region with `runners` ready runners of 4 cpu / 8 GiB / 40 GiB each; returns the region name.
fn fleet(c: &TestCluster, via: u64, key: &str, name: &str, runners: usize) -> String {
    let (s, region) = c.call(via, "POST", "/api/regions", Some(key), Some(&json!({ "name": name })), &[]);
    assert_eq!(s, 201, "{region}");
    let region_id = region["id"].as_str().expect("id").to_string();
    for i in 0..runners {
        let body = json!({ "name": format!("{name}-r{i}"), "regionId": region_id, "apiKey": format!("tok-{name}-{i}-0123456789"),
            "apiVersion": "2", "cpu": 4, "memoryGiB": 8, "diskGiB": 40 });
        let (s, runner) = c.call(via, "POST", "/api/admin/runners", Some(ADMIN_KEY), Some(&body), &[]);
        assert_eq!(s, 201, "{runner}");
        let path = format!("/api/admin/runners/{}/state", runner["id"].as_str().expect("id"));
        let (s, ready) = c.call(via, "PATCH", &path, Some(ADMIN_KEY), Some(&json!({ "state": "ready" })), &[]);
        assert_eq!((s, ready["state"].as_str()), (200, Some("ready")), "{ready}");
    }
    name.to_string()
}

fn allocation(c: &TestCluster, via: u64) -> HashMap<String, (u64, u64)> {
    let (_, runners) = c.call(via, "GET", "/api/admin/runners", Some(ADMIN_KEY), None, &[]);
    runners
        .as_array()
        .expect("list")
        .iter()
        .map(|r| {
            let id = r["id"].as_str().expect("id").to_string();
            (id, (r["allocated"]["cpu"].as_u64().unwrap_or(0), r["capacity"]["cpu"].as_u64().unwrap_or(0)))
        })
        .collect()
}

#[test]
fn sandboxes_are_placed_within_capacity_and_follow_their_lifecycle() {
    let mut c = TestCluster::start(3, &["--request-timeout-ms", "5000"]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let follower = (1..=3).find(|&n| n != leader).expect("follower");
    let (_, key) = c.create_organization(follower, "sbx");
    let k = Some(key.as_str());
    let target = fleet(&c, follower, &key, "compute", 3); // 12 cpu in all

    // Validation and unknown targets.
    let (s, body) = c.call(follower, "POST", "/api/sandboxes", k, Some(&json!({ "target": "nowhere" })), &[]);
    assert_eq!((s, body["code"].as_str()), (404, Some("not_found")), "{body}");
    let (s, _) = c.call(follower, "POST", "/api/sandboxes", k, Some(&json!({ "target": target, "cpu": 0 })), &[]);
    assert_eq!(s, 422);
    let (s, _) =
        c.call(follower, "POST", "/api/sandboxes", k, Some(&json!({ "target": target, "memoryGiB": 100000 })), &[]);
    assert_eq!(s, 422);
    let (s, body) = c.call(follower, "POST", "/api/sandboxes", k, Some(&json!({ "target": "us" })), &[]);
    assert_eq!((s, body["code"].as_str()), (409, Some("no_capacity")), "shared region without runners: {body}");

    // Defaults: 1 cpu / 1 GiB / 3 GiB; labels kept.
    let (s, first) = c.call(
        follower,
        "POST",
        "/api/sandboxes",
        k,
        Some(&json!({ "target": target, "labels": { "app": "web" } })),
        &[],
    );
    assert_eq!(s, 201, "{first}");
    assert_eq!(
        (first["cpu"].as_u64(), first["memoryGiB"].as_u64(), first["diskGiB"].as_u64()),
        (Some(1), Some(1), Some(3))
    );
    assert_eq!((first["state"].as_str(), first["labels"]["app"].as_str()), (Some("started"), Some("web")));

    // Fill the region through both nodes: 11 more cpu fit, the 12th request does not.
    let mut placed = vec![first.clone()];
    for i in 0..11 {
        let via = if i % 2 == 0 { leader } else { follower };
        let (s, sb) = c.call(via, "POST", "/api/sandboxes", k, Some(&json!({ "target": target })), &[]);
        assert_eq!(s, 201, "sandbox {i}: {sb}");
        placed.push(sb);
    }
    let (s, body) = c.call(leader, "POST", "/api/sandboxes", k, Some(&json!({ "target": target })), &[]);
    assert_eq!((s, body["code"].as_str()), (409, Some("no_capacity")), "{body}");
    for (id, (allocated, capacity)) in allocation(&c, follower) {
        assert!(allocated <= capacity, "runner {id} over capacity");
        assert_eq!(allocated, 4, "12 one-cpu sandboxes spread over three 4-cpu runners fill each");
    }

    // List with filters; get; stop keeps the reservation; delete frees it.
    let (_, all) = c.call(follower, "GET", "/api/sandboxes", k, None, &[]);
    assert_eq!(all.as_array().map(Vec::len), Some(12));
    let runner_id = first["runnerId"].as_str().expect("runner").to_string();
    let (_, on_runner) = c.call(follower, "GET", &format!("/api/sandboxes?runnerId={runner_id}"), k, None, &[]);
    assert_eq!(on_runner.as_array().map(Vec::len), Some(4));
    let id = first["id"].as_str().expect("id").to_string();
    let (s, stopped) = c.call(leader, "POST", &format!("/api/sandboxes/{id}/stop"), k, None, &[]);
    assert_eq!((s, stopped["state"].as_str()), (200, Some("stopped")));
    let (_, list) = c.call(follower, "GET", "/api/sandboxes?state=stopped", k, None, &[]);
    assert_eq!(list.as_array().map(Vec::len), Some(1));
    let (s, body) = c.call(leader, "POST", "/api/sandboxes", k, Some(&json!({ "target": target })), &[]);
    assert_eq!(s, 409, "a stopped sandbox keeps its reservation: {body}");
    let (s, started) = c.call(follower, "POST", &format!("/api/sandboxes/{id}/start"), k, None, &[]);
    assert_eq!((s, started["state"].as_str()), (200, Some("started")));
    let (s, _) = c.call(follower, "DELETE", &format!("/api/sandboxes/{id}"), k, None, &[]);
    assert_eq!(s, 204);
    let (s, _) = c.call(follower, "GET", &format!("/api/sandboxes/{id}"), k, None, &[]);
    assert_eq!(s, 404);
    let freed = allocation(&c, follower)[&runner_id].0;
    assert_eq!(freed, 3);

    // Idempotent creation: the replay returns the first sandbox and places nothing.
    let header = [("Idempotency-Key", "sbx-1")];
    let (s, one) = c.call(follower, "POST", "/api/sandboxes", k, Some(&json!({ "target": target })), &header);
    assert_eq!(s, 201, "{one}");
    let (s, again) = c.call(leader, "POST", "/api/sandboxes", k, Some(&json!({ "target": target })), &header);
    assert_eq!((s, &again), (201, &one));

    // Another organization sees none of it.
    let (_, other_key) = c.create_organization(leader, "other");
    let (_, list) = c.call(follower, "GET", "/api/sandboxes", Some(&other_key), None, &[]);
    assert_eq!(list.as_array().map(Vec::len), Some(0));
    let one_id = one["id"].as_str().expect("id");
    for (method, path) in [
        ("GET", format!("/api/sandboxes/{one_id}")),
        ("POST", format!("/api/sandboxes/{one_id}/stop")),
        ("DELETE", format!("/api/sandboxes/{one_id}")),
    ] {
        let (s, _) = c.call(follower, method, &path, Some(&other_key), None, &[]);
        assert_eq!(s, 404, "{method} {path}");
    }

    // The scheduler moves with leadership: kill the leader, free room, place again.
    let some = placed[1]["id"].as_str().expect("id").to_string();
    let (s, _) = c.call(follower, "DELETE", &format!("/api/sandboxes/{some}"), k, None, &[]);
    assert_eq!(s, 204);
    c.kill(leader);
    let (s, after) = c.call(follower, "POST", "/api/sandboxes", k, Some(&json!({ "target": target })), &[]);
    assert_eq!(s, 201, "placed by the new leader: {after}");
    c.start_node(leader);
    c.wait_converged(Duration::from_secs(60));
    for (id, (allocated, capacity)) in allocation(&c, leader) {
        assert!(allocated <= capacity, "runner {id} over capacity on the restarted node");
    }
}

#[test]
fn concurrent_requests_are_batched_and_never_overcommit() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let follower = (1..=3).find(|&n| n != leader).expect("follower");
    let (_, key) = c.create_organization(leader, "burst");
    let target = fleet(&c, leader, &key, "burst", 5); // 20 cpu

    // 16 threads × 3 requests of 1 cpu = 48 requests for 20 cpu: exactly 20 succeed.
    let results: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|t| {
                let (c, key, target) = (&c, &key, &target);
                scope.spawn(move || {
                    (0..3)
                        .map(|_| {
                            let via = if t % 2 == 0 { leader } else { follower };
                            c.call(via, "POST", "/api/sandboxes", Some(key), Some(&json!({ "target": target })), &[])
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("thread")).collect()
    });
    let created = results.iter().filter(|(s, _)| *s == 201).count();
    let refused = results.iter().filter(|(s, b)| *s == 409 && b["code"] == "no_capacity").count();
    assert_eq!((created, refused), (20, 28), "{results:?}");
    for (id, (allocated, capacity)) in allocation(&c, follower) {
        assert_eq!((allocated, capacity), (4, 4), "runner {id}");
    }
}

#[test]
fn leader_kill_mid_load_leaves_every_acknowledged_sandbox_placed_once() {
    let mut c = TestCluster::start(3, &["--request-timeout-ms", "4000"]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let (_, key) = c.create_organization(leader, "chaos");
    let target = {
        let (s, region) = c.call(leader, "POST", "/api/regions", Some(&key), Some(&json!({ "name": "big" })), &[]);
        assert_eq!(s, 201);
        let region_id = region["id"].as_str().expect("id").to_string();
        for i in 0..3 {
            let body = json!({ "name": format!("big-{i}"), "regionId": region_id, "apiKey": format!("big-token-{i}-0123456789"),
                "apiVersion": "2", "cpu": 100000, "memoryGiB": 100000, "diskGiB": 1000000 });
            let (_, r) = c.call(leader, "POST", "/api/admin/runners", Some(ADMIN_KEY), Some(&body), &[]);
            let path = format!("/api/admin/runners/{}/state", r["id"].as_str().expect("id"));
            c.call(leader, "PATCH", &path, Some(ADMIN_KEY), Some(&json!({ "state": "ready" })), &[]);
        }
        "big".to_string()
    };
    let survivors: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();
    let leader_pid = c.pid(leader).expect("leader running") as libc::pid_t;

    // 8 clients × 100 sandboxes, each with its own Idempotency-Key, retried (same key) until
    // acknowledged; they talk only to the two nodes that survive. The leader dies once a
    // quarter of them are acknowledged, so the kill lands mid-load.
    const PER_WORKER: usize = 100;
    let acked_so_far = std::sync::atomic::AtomicUsize::new(0);
    let retried = std::sync::atomic::AtomicUsize::new(0);
    let acknowledged: Vec<(String, String)> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..8)
            .map(|w| {
                let (c, key, target, survivors) = (&c, &key, &target, &survivors);
                let (acked_so_far, retried) = (&acked_so_far, &retried);
                scope.spawn(move || {
                    let mut acked = Vec::new();
                    for i in 0..PER_WORKER {
                        let idem = format!("w{w}-{i}");
                        let via = survivors[(w + i) % survivors.len()];
                        let deadline = std::time::Instant::now() + Duration::from_secs(60);
                        loop {
                            let (s, body) = c.call(
                                via,
                                "POST",
                                "/api/sandboxes",
                                Some(key),
                                Some(&json!({ "target": target })),
                                &[("Idempotency-Key", idem.as_str())],
                            );
                            if s == 201 {
                                acked.push((idem.clone(), body["id"].as_str().expect("id").to_string()));
                                acked_so_far.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                                break;
                            }
                            retried.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            assert!(s == 503, "only 'retry later' is acceptable during failover: {s} {body}");
                            assert!(std::time::Instant::now() < deadline, "no success within 60 s for {idem}");
                            std::thread::sleep(Duration::from_millis(50));
                        }
                    }
                    acked
                })
            })
            .collect();
        while acked_so_far.load(std::sync::atomic::Ordering::Relaxed) < 200 {
            std::thread::sleep(Duration::from_millis(5));
        }
        // SIGKILL now, reaped by `kill` below once the workers are done.
        unsafe {
            libc::kill(leader_pid, libc::SIGKILL);
        }
        workers.into_iter().flat_map(|w| w.join().expect("worker")).collect()
    });
    assert_eq!(acknowledged.len(), 800);
    println!("retries during failover: {}", retried.load(std::sync::atomic::Ordering::Relaxed));

    c.kill(leader);
    c.start_node(leader);
    c.wait_converged(Duration::from_secs(60));
    for node in 1..=3 {
        let (_, list) = c.call(node, "GET", "/api/sandboxes?consistency=stale", Some(&key), None, &[]);
        let ids: std::collections::BTreeSet<&str> =
            list.as_array().expect("list").iter().filter_map(|s| s["id"].as_str()).collect();
        assert_eq!(ids.len(), 800, "node {node}: exactly one sandbox per request, retries included");
        for (idem, id) in &acknowledged {
            assert!(ids.contains(id.as_str()), "node {node} lacks acknowledged sandbox {id} ({idem})");
        }
    }
    let total: u64 = allocation(&c, leader).values().map(|(allocated, _)| allocated).sum();
    assert_eq!(total, 800, "allocation matches the sandboxes exactly");
}

/// Creates a ready runner from an admin-API body; returns its id.
fn ready_runner(c: &TestCluster, via: u64, body: Value) -> String {
    let (s, runner) = c.call(via, "POST", "/api/admin/runners", Some(ADMIN_KEY), Some(&body), &[]);
    assert_eq!(s, 201, "{runner}");
    let id = runner["id"].as_str().expect("id").to_string();
    let path = format!("/api/admin/runners/{id}/state");
    let (s, _) = c.call(via, "PATCH", &path, Some(ADMIN_KEY), Some(&json!({ "state": "ready" })), &[]);
    assert_eq!(s, 200);
    id
}

/// Tag, GPU and sandbox-limit constraints through a follower: each sandbox lands on a runner
/// that satisfies it, and a sandbox no runner can satisfy gets 409 `no_capacity`; tags and the
/// limit change with `PATCH /api/runners/{id}` (and the admin twin) and every node sees them.
#[test]
fn tag_gpu_and_sandbox_limit_constraints_are_honoured() {
    let c = TestCluster::start(3, &["--request-timeout-ms", "5000"]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let follower = (1..=3).find(|&n| n != leader).expect("follower");
    let (_, key) = c.create_organization(follower, "tags");
    let k = Some(key.as_str());
    let (s, region) = c.call(follower, "POST", "/api/regions", k, Some(&json!({ "name": "tagged" })), &[]);
    assert_eq!(s, 201, "{region}");
    let region_id = region["id"].as_str().expect("id");
    let runner = |name: &str, extra: Value| {
        let mut body = json!({ "name": name, "regionId": region_id, "apiKey": format!("tok-{name}-0123456789"),
            "apiVersion": "2", "cpu": 8, "memoryGiB": 16, "diskGiB": 100 });
        body.as_object_mut().expect("object").extend(extra.as_object().expect("object").clone());
        ready_runner(&c, follower, body)
    };
    let zone_a = runner("zone-a", json!({ "tags": { "zone": "a" }, "maxSandboxes": 2 }));
    let gpus = runner("gpus", json!({ "tags": { "zone": "b" }, "gpu": 2 }));
    let plain = runner("plain", json!({}));
    let create = |body: Value| c.call(follower, "POST", "/api/sandboxes", k, Some(&body), &[]);
    let placed_on = |body: Value| {
        let (s, sandbox) = create(body);
        assert_eq!(s, 201, "{sandbox}");
        sandbox["runnerId"].as_str().expect("runnerId").to_string()
    };

    // Tags, up to the runner's limit of two sandboxes (it has cpu for eight).
    for _ in 0..2 {
        assert_eq!(placed_on(json!({ "target": "tagged", "runnerTags": { "zone": "a" } })), zone_a);
    }
    let (s, full) = create(json!({ "target": "tagged", "runnerTags": { "zone": "a" } }));
    assert_eq!((s, full["code"].as_str()), (409, Some("no_capacity")), "limit reached: {full}");
    let (s, nowhere) = create(json!({ "target": "tagged", "runnerTags": { "zone": "z" } }));
    assert_eq!((s, nowhere["code"].as_str()), (409, Some("no_capacity")), "no runner carries zone=z: {nowhere}");
    // GPUs: only the runner with two takes them, twice.
    for _ in 0..2 {
        let (s, sandbox) = create(json!({ "target": "tagged", "gpu": 1 }));
        assert_eq!((s, sandbox["runnerId"].as_str(), sandbox["gpu"].as_u64()), (201, Some(gpus.as_str()), Some(1)));
    }
    let (s, no_gpu) = create(json!({ "target": "tagged", "gpu": 1 }));
    assert_eq!((s, no_gpu["code"].as_str()), (409, Some("no_capacity")), "{no_gpu}");
    // Both constraints at once.
    let (s, both) = create(json!({ "target": "tagged", "gpu": 1, "runnerTags": { "zone": "a" } }));
    assert_eq!((s, both["code"].as_str()), (409, Some("no_capacity")), "{both}");

    // The plain runner takes the tag; every node's view shows it.
    let (s, tagged) =
        c.call(follower, "PATCH", &format!("/api/runners/{plain}"), k, Some(&json!({ "tags": { "zone": "a" } })), &[]);
    assert_eq!((s, tagged["tags"].clone(), tagged["maxSandboxes"].clone()), (200, json!({ "zone": "a" }), Value::Null));
    for node in 1..=3 {
        let (_, view) = c.call(node, "GET", &format!("/api/runners/{plain}"), k, None, &[]);
        assert_eq!(view["tags"], json!({ "zone": "a" }), "node {node}: {view}");
    }
    let sandbox = json!({ "target": "tagged", "runnerTags": { "zone": "a" } });
    let (s, on_plain) = create(sandbox.clone());
    assert_eq!(
        (s, on_plain["runnerId"].as_str(), on_plain["runnerTags"].clone()),
        (201, Some(plain.as_str()), json!({ "zone": "a" }))
    );
    // The operator lifts zone-a's limit: it takes sandboxes again.
    let path = format!("/api/admin/runners/{zone_a}");
    let (s, lifted) = c.call(follower, "PATCH", &path, Some(ADMIN_KEY), Some(&json!({ "maxSandboxes": null })), &[]);
    assert_eq!((s, lifted["maxSandboxes"].clone(), lifted["tags"].clone()), (200, Value::Null, json!({ "zone": "a" })));
    let mut hosts = std::collections::BTreeSet::new();
    for _ in 0..8 {
        hosts.insert(placed_on(sandbox.clone()));
    }
    assert!(hosts.contains(&zone_a) && hosts.iter().all(|h| *h == zone_a || *h == plain), "{hosts:?}");

    // Bad settings are refused with a JSON error and change nothing.
    let path = format!("/api/runners/{plain}");
    for (body, status) in [
        (json!({ "maxSandboxes": 0 }), 422),
        (json!({ "tags": { "": "x" } }), 422),
        (json!({ "tags": "zone=a" }), 422),
        (json!({ "name": "renamed" }), 422),
    ] {
        let (s, e) = c.call(follower, "PATCH", &path, k, Some(&body), &[]);
        assert_eq!(s, status, "{body}: {e}");
        assert!(e["code"].is_string() && e["error"].is_string(), "{e}");
    }
    let (s, bad) = create(json!({ "target": "tagged", "gpu": 65 }));
    assert_eq!(s, 422, "{bad}");
    let (_, view) = c.call(follower, "GET", &path, k, None, &[]);
    assert_eq!(view["tags"], json!({ "zone": "a" }), "unchanged: {view}");
    let (s, missing) = c.call(follower, "PATCH", "/api/runners/no-such-runner", k, Some(&json!({ "tags": {} })), &[]);
    assert_eq!((s, missing["code"].as_str()), (404, Some("not_found")));

    // Every node agrees on the result.
    c.wait_converged(Duration::from_secs(20));
}
