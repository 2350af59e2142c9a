//! The seed documents' curl examples, replayed with real curl (host and token swapped); the
//! isolation of organizations over every endpoint; and an idempotent POST retried across a
//! leader kill.

mod common;

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use common::{TestCluster, ADMIN_KEY};
use serde_json::{json, Value};

/// Runs curl with the seed's arguments, `https://app.daytona.io` swapped for the node and
/// `YOUR_SECRET_TOKEN` for `token`. Returns (HTTP status, parsed body).
fn curl(c: &TestCluster, node: u64, token: &str, args: &[&str]) -> (u16, Value) {
    let base = format!("http://{}", c.node(node).api_addr);
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-w", "\n%{http_code}"]);
    for arg in args {
        cmd.arg(arg.replace("https://app.daytona.io", &base).replace("YOUR_SECRET_TOKEN", token));
    }
    let out = cmd.output().expect("curl must be installed (.ci/prereqs installs it)");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, status) = text.rsplit_once('\n').expect("status line");
    let reply = serde_json::from_str(body).unwrap_or(Value::Null);
    // Every secret this helper sees (the key, request bodies, responses) is checked for leaks.
    let sent: Vec<Value> = args.iter().filter_map(|a| serde_json::from_str(a).ok()).collect();
    c.remember_secrets(&[&json!({ "token": token }), &reply]);
    c.remember_secrets(&sent.iter().collect::<Vec<_>>());
    (status.trim().parse().expect("status"), reply)
}

#[test]
fn seed_curl_examples_get_the_documented_responses() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let via = (1..=3).find(|&n| n != leader).expect("follower");
    let (_, token) = c.create_organization(via, "seed-org");
    let t = token.as_str();

    // Create a custom region.
    let (s, region) = curl(
        &c,
        via,
        t,
        &[
            "https://app.daytona.io/api/regions",
            "--request",
            "POST",
            "--header",
            "Content-Type: application/json",
            "--header",
            "Authorization: Bearer YOUR_SECRET_TOKEN",
            "--data",
            r#"{ "name": "my-custom-region", "proxyUrl": "https://proxy.example.com", "sshGatewayUrl": "ssh://ssh-gateway.example.com", "snapshotManagerUrl": "https://snapshot-manager.example.com" }"#,
        ],
    );
    assert_eq!(s, 201, "{region}");
    for field in ["id", "proxyApiKey", "sshGatewayApiKey", "snapshotManagerUsername", "snapshotManagerPassword"] {
        assert!(region[field].as_str().is_some_and(|v| !v.is_empty()), "response lacks {field}: {region}");
    }
    let region_id = region["id"].as_str().expect("id").to_string();

    // List, get, update.
    let (s, list) = curl(
        &c,
        via,
        t,
        &["https://app.daytona.io/api/regions", "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"],
    );
    assert_eq!(s, 200);
    assert!(list.as_array().expect("list").iter().any(|r| r["id"] == region["id"] && r["name"] == "my-custom-region"));
    let region_url = format!("https://app.daytona.io/api/regions/{region_id}");
    let (s, got) = curl(&c, via, t, &[&region_url, "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"]);
    assert_eq!(s, 200);
    for field in ["name", "id", "createdAt", "proxyUrl", "sshGatewayUrl", "snapshotManagerUrl"] {
        assert!(got.get(field).is_some(), "region lacks {field}: {got}");
    }
    let (s, updated) = curl(
        &c,
        via,
        t,
        &[
            &region_url,
            "--request",
            "PATCH",
            "--header",
            "Content-Type: application/json",
            "--header",
            "Authorization: Bearer YOUR_SECRET_TOKEN",
            "--data",
            r#"{ "proxyUrl": "https://new-proxy.example.com", "sshGatewayUrl": "ssh://new-ssh-gateway.example.com", "snapshotManagerUrl": "https://new-snapshot-manager.example.com" }"#,
        ],
    );
    assert_eq!(s, 200, "{updated}");
    assert_eq!(updated["proxyUrl"], "https://new-proxy.example.com");
    assert_eq!(updated["sshGatewayUrl"], "ssh://new-ssh-gateway.example.com");
    assert_eq!(updated["snapshotManagerUrl"], "https://new-snapshot-manager.example.com");

    // Regenerate credentials.
    for (suffix, field) in [
        ("regenerate-proxy-api-key", "apiKey"),
        ("regenerate-ssh-gateway-api-key", "apiKey"),
        ("regenerate-snapshot-manager-credentials", "password"),
    ] {
        let url = format!("{region_url}/{suffix}");
        let (s, body) =
            curl(&c, via, t, &[&url, "--request", "POST", "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"]);
        assert_eq!(s, 200, "{suffix}: {body}");
        assert!(body[field].as_str().is_some_and(|v| !v.is_empty()), "{suffix}: {body}");
    }

    // Custom runners.
    let data = format!(r#"{{ "name": "my-custom-runner", "regionId": "{region_id}" }}"#);
    let (s, runner) = curl(
        &c,
        via,
        t,
        &[
            "https://app.daytona.io/api/runners",
            "--request",
            "POST",
            "--header",
            "Content-Type: application/json",
            "--header",
            "Authorization: Bearer YOUR_SECRET_TOKEN",
            "--data",
            &data,
        ],
    );
    assert_eq!(s, 201, "{runner}");
    assert!(runner["id"].is_string() && runner["apiKey"].is_string(), "{runner}");
    let runner_id = runner["id"].as_str().expect("id").to_string();
    let (s, list) = curl(
        &c,
        via,
        t,
        &["https://app.daytona.io/api/runners", "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"],
    );
    assert_eq!(s, 200);
    let row = list.as_array().and_then(|l| l.iter().find(|r| r["id"] == runner["id"]).cloned()).expect("listed");
    for field in ["id", "name", "regionId", "state", "schedulable"] {
        assert!(row.get(field).is_some(), "list row lacks {field}");
    }
    let runner_url = format!("https://app.daytona.io/api/runners/{runner_id}");
    let (s, got) = curl(&c, via, t, &[&runner_url, "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"]);
    assert_eq!(s, 200);
    for field in [
        "name",
        "id",
        "state",
        "schedulable",
        "regionId",
        "availabilityScore",
        "startedSandboxes",
        "currentSnapshotCount",
        "capacity",
        "createdAt",
        "updatedAt",
    ] {
        assert!(got.get(field).is_some(), "runner lacks {field}: {got}");
    }
    let sched_url = format!("{runner_url}/scheduling");
    let (s, toggled) =
        curl(&c, via, t, &[&sched_url, "--request", "PATCH", "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"]);
    assert_eq!((s, toggled["schedulable"].as_bool()), (200, Some(false)), "{toggled}");
    let (s, _) =
        curl(&c, via, t, &[&runner_url, "--request", "DELETE", "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"]);
    assert_eq!(s, 204);

    // Admin runners (admin key; no organization header).
    let data = format!(
        r#"{{ "name": "my-custom-runner", "regionId": "{region_id}", "apiKey": "dtn_1234567890", "apiVersion": "2", "domain": "runner1.example.com", "apiUrl": "https://api.runner1.example.com", "proxyUrl": "https://proxy.runner1.example.com", "cpu": 8, "memoryGiB": 16, "diskGiB": 100 }}"#
    );
    let (s, full) = curl(
        &c,
        via,
        ADMIN_KEY,
        &[
            "https://app.daytona.io/api/admin/runners",
            "--request",
            "POST",
            "--header",
            "Content-Type: application/json",
            "--header",
            "Authorization: Bearer YOUR_SECRET_TOKEN",
            "--data",
            &data,
        ],
    );
    assert_eq!(s, 201, "{full}");
    assert_eq!((full["regionType"].as_str(), full["domain"].as_str()), (Some("custom"), Some("runner1.example.com")));
    let admin_runner_id = full["id"].as_str().expect("id").to_string();
    let (s, all) = curl(
        &c,
        via,
        ADMIN_KEY,
        &["https://app.daytona.io/api/admin/runners", "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"],
    );
    assert!(s == 200 && all.as_array().is_some_and(|l| l.iter().any(|r| r["id"] == full["id"])));
    let filtered_url = format!("https://app.daytona.io/api/admin/runners?regionId={region_id}");
    let (s, filtered) =
        curl(&c, via, ADMIN_KEY, &[&filtered_url, "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"]);
    assert_eq!((s, filtered.as_array().map(Vec::len)), (200, Some(1)));
    let admin_url = format!("https://app.daytona.io/api/admin/runners/{admin_runner_id}");
    let (s, got) = curl(&c, via, ADMIN_KEY, &[&admin_url, "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"]);
    assert!(s == 200 && got["apiKeyHint"].is_string() && got["regionType"].is_string(), "{got}");
    let sched_url = format!("{admin_url}/scheduling");
    let (s, _) = curl(
        &c,
        via,
        ADMIN_KEY,
        &[&sched_url, "--request", "PATCH", "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"],
    );
    assert_eq!(s, 200);
    let (s, _) = curl(
        &c,
        via,
        ADMIN_KEY,
        &[&admin_url, "--request", "DELETE", "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"],
    );
    assert_eq!(s, 204);

    // Delete the region (no runners left).
    let (s, _) =
        curl(&c, via, t, &[&region_url, "--request", "DELETE", "--header", "Authorization: Bearer YOUR_SECRET_TOKEN"]);
    assert_eq!(s, 204);
}

#[test]
fn organizations_never_see_or_touch_each_other() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let follower = (1..=3).find(|&n| n != leader).expect("follower");
    let (org_a, key_a) = c.create_organization(leader, "org-a");
    let (_, key_b) = c.create_organization(follower, "org-b");
    let (a, b) = (Some(key_a.as_str()), Some(key_b.as_str()));

    let (_, region) = c.call(
        follower,
        "POST",
        "/api/regions",
        a,
        Some(&json!({ "name": "a-region", "proxyUrl": "https://p.example.com" })),
        &[],
    );
    let region_id = region["id"].as_str().expect("region id").to_string();
    let (_, runner) =
        c.call(leader, "POST", "/api/runners", a, Some(&json!({ "name": "a-runner", "regionId": region_id })), &[]);
    let runner_id = runner["id"].as_str().expect("runner id").to_string();
    // B may use the same names in its own organization.
    let (s, b_region) = c.call(follower, "POST", "/api/regions", b, Some(&json!({ "name": "a-region" })), &[]);
    assert_eq!(s, 201, "names are per organization: {b_region}");

    for via in [leader, follower] {
        // Lists show none of A's objects to B.
        let (_, regions) = c.call(via, "GET", "/api/regions", b, None, &[]);
        assert!(!regions.as_array().expect("list").iter().any(|r| r["id"] == region["id"]), "B lists A's region");
        let (_, runners) = c.call(via, "GET", "/api/runners", b, None, &[]);
        assert_eq!(runners.as_array().map(Vec::len), Some(0), "B lists A's runner");
        let (_, runners) = c.call(via, "GET", &format!("/api/runners?regionId={region_id}"), b, None, &[]);
        assert_eq!(runners.as_array().map(Vec::len), Some(0));

        // Every read and write of A's objects by B is 404, and changes nothing.
        let r = format!("/api/regions/{region_id}");
        let n = format!("/api/runners/{runner_id}");
        let attempts: Vec<(&str, String, Option<Value>)> = vec![
            ("GET", r.clone(), None),
            ("PATCH", r.clone(), Some(json!({ "proxyUrl": "https://evil.example.com" }))),
            ("POST", format!("{r}/regenerate-proxy-api-key"), None),
            ("POST", format!("{r}/regenerate-ssh-gateway-api-key"), None),
            ("POST", format!("{r}/regenerate-snapshot-manager-credentials"), None),
            ("POST", "/api/runners".into(), Some(json!({ "name": "intruder", "regionId": region_id }))),
            ("GET", n.clone(), None),
            ("PATCH", format!("{n}/scheduling"), None),
            ("DELETE", n.clone(), None),
            ("DELETE", r.clone(), None),
        ];
        for (method, path, body) in &attempts {
            let (s, resp) = c.call(via, method, path, b, body.as_ref(), &[]);
            assert_eq!(s, 404, "B {method} {path} via {via}: {resp}");
        }
        // B's key naming A's organization is refused outright.
        let (s, _) = c.call(via, "GET", "/api/regions", b, None, &[("X-Organization-ID", org_a.as_str())]);
        assert_eq!(s, 403);
    }

    // A still sees everything unchanged; the admin acting for A too.
    let (_, got) = c.call(leader, "GET", &format!("/api/regions/{region_id}"), a, None, &[]);
    assert_eq!(got["proxyUrl"], "https://p.example.com");
    let (_, got) = c.call(leader, "GET", &format!("/api/runners/{runner_id}"), a, None, &[]);
    assert_eq!(got["schedulable"], true);
    let (s, _) = c.call(
        follower,
        "GET",
        &format!("/api/regions/{region_id}"),
        Some(ADMIN_KEY),
        None,
        &[("X-Organization-ID", org_a.as_str())],
    );
    assert_eq!(s, 200);
}

#[test]
fn idempotent_post_retried_across_a_leader_kill_creates_one_object() {
    let mut c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let follower = (1..=3).find(|&n| n != leader).expect("follower");
    let (_, key) = c.create_organization(follower, "idem");
    let body = json!({ "name": "once", "proxyUrl": "https://proxy.example.com" });
    let header = [("Idempotency-Key", "create-once-1")];

    let (s, first) = c.call(follower, "POST", "/api/regions", Some(&key), Some(&body), &header);
    assert_eq!(s, 201, "{first}");
    c.kill(leader);
    let survivor = follower;
    let (s, second) = c.call(survivor, "POST", "/api/regions", Some(&key), Some(&body), &header);
    assert_eq!(s, 201, "{second}");
    assert_eq!(first, second, "the replay returns the first response, secrets included");
    let other = (1..=3).find(|&n| n != leader && n != follower).expect("other");
    let (s, third) = c.call(other, "POST", "/api/regions", Some(&key), Some(&body), &header);
    assert_eq!((s, &third), (201, &first), "same answer from any node");

    let (_, list) = c.call(survivor, "GET", "/api/regions", Some(&key), None, &[]);
    let count = list.as_array().expect("list").iter().filter(|r| r["name"] == "once").count();
    assert_eq!(count, 1, "exactly one region");

    // The same key with another body is refused and creates nothing.
    let (s, resp) = c.call(survivor, "POST", "/api/regions", Some(&key), Some(&json!({ "name": "twice" })), &header);
    assert_eq!((s, resp["code"].as_str()), (422, Some("idempotency_key_reused")), "{resp}");
    let (_, list) = c.call(survivor, "GET", "/api/regions", Some(&key), None, &[]);
    let names: BTreeSet<&str> = list.as_array().expect("list").iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(!names.contains("twice"));

    c.start_node(leader);
    c.wait_converged(Duration::from_secs(60));
}
