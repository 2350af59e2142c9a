//! Every REST endpoint against a real 3-node cluster, once through a follower and once
//! through the leader, with its error cases; plus 503 when there is no leader.

mod common;

use std::time::Duration;

use common::{TestCluster, ADMIN_KEY};
use serde_json::{json, Value};

fn code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or("<no code>")
}

/// Exercises every endpoint through node `via`; names are suffixed so two passes do not clash.
fn exercise(c: &TestCluster, via: u64, org_key: &str, suffix: &str) {
    let key = Some(org_key);
    let admin = Some(ADMIN_KEY);
    let region_name = format!("region-{suffix}");

    // --- regions ---------------------------------------------------------------------
    let (s, created) = c.call(
        via,
        "POST",
        "/api/regions",
        key,
        Some(&json!({ "name": region_name, "proxyUrl": "https://proxy.example.com" })),
        &[],
    );
    assert_eq!(s, 201, "{created}");
    let region_id = created["id"].as_str().expect("id").to_string();
    assert!(created["proxyApiKey"].as_str().is_some_and(|k| k.len() > 20), "{created}");
    assert!(created.get("sshGatewayApiKey").is_none(), "no SSH gateway configured: {created}");
    assert!(created.get("snapshotManagerPassword").is_none(), "{created}");
    assert_eq!(created["regionType"], "custom");

    let (s, body) = c.call(via, "POST", "/api/regions", key, Some(&json!({ "name": region_name })), &[]);
    assert_eq!((s, code(&body)), (409, "already_exists"), "{body}");
    let (s, body) = c.call(via, "POST", "/api/regions", key, Some(&json!({ "name": "no spaces allowed" })), &[]);
    assert_eq!((s, code(&body)), (422, "invalid_request"), "{body}");
    let (s, body) = c.call(via, "POST", "/api/regions", key, Some(&json!({ "name": "x".repeat(64) })), &[]);
    assert_eq!(s, 422, "{body}");
    let (s, body) = c.call(via, "POST", "/api/regions", key, Some(&json!({ "name": "ok", "proxyUrl": "nope" })), &[]);
    assert_eq!(s, 422, "{body}");
    let (s, body) = c.call(via, "POST", "/api/regions", key, Some(&json!({ "name": "ok", "color": "red" })), &[]);
    assert_eq!(s, 422, "unknown field: {body}");
    let (s, body) = c.call(via, "POST", "/api/regions", key, Some(&json!({})), &[]);
    assert_eq!(s, 422, "missing name: {body}");

    let (s, list) = c.call(via, "GET", "/api/regions", key, None, &[]);
    assert_eq!(s, 200);
    let names: Vec<&str> = list.as_array().expect("list").iter().filter_map(|r| r["name"].as_str()).collect();
    assert!(names.contains(&region_name.as_str()) && names.contains(&"us") && names.contains(&"eu"), "{names:?}");
    let (s, _) = c.call(via, "GET", "/api/regions?consistency=stale", key, None, &[]);
    assert_eq!(s, 200);
    let (s, body) = c.call(via, "GET", "/api/regions?consistency=sometimes", key, None, &[]);
    assert_eq!((s, code(&body)), (400, "invalid_query"), "{body}");

    let (s, got) = c.call(via, "GET", &format!("/api/regions/{region_id}"), key, None, &[]);
    assert_eq!((s, got["name"].as_str()), (200, Some(region_name.as_str())), "{got}");
    let (s, body) = c.call(via, "GET", "/api/regions/nope", key, None, &[]);
    assert_eq!((s, code(&body)), (404, "not_found"));

    let path = format!("/api/regions/{region_id}");
    let (s, patched) = c.call(
        via,
        "PATCH",
        &path,
        key,
        Some(&json!({ "proxyUrl": null, "sshGatewayUrl": "ssh://gw.example.com" })),
        &[],
    );
    assert_eq!(s, 200, "{patched}");
    assert_eq!(
        (patched["proxyUrl"].clone(), patched["sshGatewayUrl"].clone()),
        (Value::Null, json!("ssh://gw.example.com"))
    );
    let (s, body) = c.call(via, "PATCH", &path, key, Some(&json!({ "proxyUrl": "bad url" })), &[]);
    assert_eq!(s, 422, "{body}");
    let (s, body) = c.call(via, "PATCH", &path, key, Some(&json!({ "name": "renamed" })), &[]);
    assert_eq!(s, 422, "name cannot be patched: {body}");
    // An array is no object (serde alone would read it as the fields in order and clear them;
    // schemathesis found that). The SSH gateway regenerated below proves nothing was cleared.
    let (s, body) = c.call(via, "PATCH", &path, key, Some(&json!([null, null])), &[]);
    assert_eq!((s, code(&body)), (422, "invalid_request"), "{body}");
    let (s, body) =
        c.call(via, "PATCH", &path, key, Some(&json!({ "proxyUrl": "https://u:p@proxy.example.com" })), &[]);
    assert_eq!(s, 422, "no credentials inside a URL: {body}");
    let (s, body) = c.call(
        via,
        "POST",
        "/api/regions",
        key,
        Some(&json!({ "name": "spaced-key" })),
        &[("Idempotency-Key", "two words")],
    );
    assert_eq!((s, code(&body)), (400, "invalid_header"), "{body}");
    let (s, body) = c.call(via, "PATCH", "/api/regions/nope", key, Some(&json!({})), &[]);
    assert_eq!(s, 404, "{body}");

    // Credentials only for configured services.
    let (s, body) = c.call(via, "POST", &format!("{path}/regenerate-proxy-api-key"), key, None, &[]);
    assert_eq!((s, code(&body)), (409, "conflict"), "proxy was cleared: {body}");
    let (s, body) = c.call(via, "POST", &format!("{path}/regenerate-ssh-gateway-api-key"), key, None, &[]);
    assert_eq!(s, 200, "{body}");
    assert!(body["apiKey"].as_str().is_some_and(|k| k.starts_with("ssh_")), "{body}");
    let (s, body) = c.call(via, "POST", &format!("{path}/regenerate-snapshot-manager-credentials"), key, None, &[]);
    assert_eq!(s, 409, "{body}");
    c.call(
        via,
        "PATCH",
        &path,
        key,
        Some(&json!({ "proxyUrl": "https://p2.example.com", "snapshotManagerUrl": "https://s.example.com" })),
        &[],
    );
    let (s, first) = c.call(via, "POST", &format!("{path}/regenerate-proxy-api-key"), key, None, &[]);
    let (_, second) = c.call(via, "POST", &format!("{path}/regenerate-proxy-api-key"), key, None, &[]);
    assert_eq!(s, 200);
    assert_ne!(first["apiKey"], second["apiKey"], "each regeneration makes a new key");
    let (s, body) = c.call(via, "POST", &format!("{path}/regenerate-snapshot-manager-credentials"), key, None, &[]);
    assert_eq!(s, 200, "{body}");
    assert!(body["username"].is_string() && body["password"].as_str().is_some_and(|p| p.len() >= 20), "{body}");
    let (s, _) = c.call(via, "POST", "/api/regions/nope/regenerate-proxy-api-key", key, None, &[]);
    assert_eq!(s, 404);

    // --- custom runners ----------------------------------------------------------------
    let runner_name = format!("runner-{suffix}");
    let (s, runner) =
        c.call(via, "POST", "/api/runners", key, Some(&json!({ "name": runner_name, "regionId": region_id })), &[]);
    assert_eq!(s, 201, "{runner}");
    let runner_id = runner["id"].as_str().expect("id").to_string();
    assert!(runner["apiKey"].as_str().is_some_and(|k| k.len() > 20), "{runner}");
    let (s, body) =
        c.call(via, "POST", "/api/runners", key, Some(&json!({ "name": runner_name, "regionId": region_id })), &[]);
    assert_eq!((s, code(&body)), (409, "already_exists"));
    let (s, body) = c.call(via, "POST", "/api/runners", key, Some(&json!({ "name": "r", "regionId": "us" })), &[]);
    assert_eq!((s, code(&body)), (409, "conflict"), "shared regions take no custom runners: {body}");
    let (s, _) = c.call(via, "POST", "/api/runners", key, Some(&json!({ "name": "r", "regionId": "nope" })), &[]);
    assert_eq!(s, 404);
    let (s, _) =
        c.call(via, "POST", "/api/runners", key, Some(&json!({ "name": "bad/name", "regionId": region_id })), &[]);
    assert_eq!(s, 422);

    let (s, list) = c.call(via, "GET", &format!("/api/runners?regionId={region_id}"), key, None, &[]);
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(1)), "{list}");
    let (s, got) = c.call(via, "GET", &format!("/api/runners/{runner_id}"), key, None, &[]);
    assert_eq!(s, 200, "{got}");
    assert_eq!(
        (got["state"].as_str(), got["schedulable"].as_bool(), got["regionId"].as_str()),
        (Some("initializing"), Some(true), Some(region_id.as_str()))
    );
    for field in [
        "capacity",
        "allocated",
        "availabilityScore",
        "currentSnapshotCount",
        "startedSandboxes",
        "createdAt",
        "updatedAt",
    ] {
        assert!(got.get(field).is_some(), "runner lacks {field}: {got}");
    }
    assert!(got.get("apiKey").is_none() && got.get("apiKeyHint").is_none(), "no token material on custom endpoints");
    let (s, _) = c.call(via, "GET", "/api/runners/nope", key, None, &[]);
    assert_eq!(s, 404);

    let sched = format!("/api/runners/{runner_id}/scheduling");
    let (s, toggled) = c.call(via, "PATCH", &sched, key, None, &[]);
    assert_eq!((s, toggled["schedulable"].as_bool()), (200, Some(false)), "{toggled}");
    let (s, set) = c.call(via, "PATCH", &sched, key, Some(&json!({ "schedulable": true })), &[]);
    assert_eq!((s, set["schedulable"].as_bool()), (200, Some(true)));
    let (s, _) = c.call(via, "PATCH", &sched, key, Some(&json!({ "schedulable": "yes" })), &[]);
    assert_eq!(s, 422);

    let (s, body) = c.call(via, "DELETE", &path, key, None, &[]);
    assert_eq!((s, code(&body)), (409, "region_has_runners"), "{body}");
    assert!(body["error"].as_str().is_some_and(|m| m.contains("runner")), "clear message: {body}");

    // --- admin runners -----------------------------------------------------------------
    let admin_runner = json!({
        "name": format!("admin-runner-{suffix}"), "regionId": region_id, "apiKey": format!("dtn_{suffix}_1234567890abcdef"),
        "apiVersion": "2", "domain": "runner1.example.com", "apiUrl": "https://api.runner1.example.com",
        "proxyUrl": "https://proxy.runner1.example.com", "cpu": 8, "memoryGiB": 16, "diskGiB": 100
    });
    let (s, full) = c.call(via, "POST", "/api/admin/runners", admin, Some(&admin_runner), &[]);
    assert_eq!(s, 201, "{full}");
    let admin_runner_id = full["id"].as_str().expect("id").to_string();
    assert_eq!(
        (full["regionType"].as_str(), full["apiKeyHint"].as_str()),
        (Some("custom"), Some("dtn_…cdef")),
        "{full}"
    );
    assert_eq!(full["capacity"], json!({ "cpu": 8, "memoryGiB": 16, "diskGiB": 100, "gpu": 0 }));
    let mut bad = admin_runner.clone();
    bad["apiVersion"] = json!("1");
    bad["name"] = json!("other");
    let (s, body) = c.call(via, "POST", "/api/admin/runners", admin, Some(&bad), &[]);
    assert_eq!(s, 422, "{body}");
    let (s, body) = c.call(via, "POST", "/api/admin/runners", key, Some(&admin_runner), &[]);
    assert_eq!((s, code(&body)), (403, "forbidden"), "organization key on an admin route");
    let (s, list) = c.call(via, "GET", &format!("/api/admin/runners?regionId={region_id}"), admin, None, &[]);
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(2)), "{list}");
    let (s, list) = c.call(via, "GET", "/api/admin/runners", admin, None, &[]);
    assert!(s == 200 && list.as_array().is_some_and(|l| l.len() >= 2));
    let (s, got) = c.call(via, "GET", &format!("/api/admin/runners/{admin_runner_id}"), admin, None, &[]);
    assert_eq!((s, got["organizationId"].is_string()), (200, true), "{got}");
    let (s, got) = c.call(via, "PATCH", &format!("/api/admin/runners/{admin_runner_id}/scheduling"), admin, None, &[]);
    assert_eq!((s, got["schedulable"].as_bool()), (200, Some(false)));
    let (s, _) = c.call(via, "GET", "/api/admin/runners/nope", admin, None, &[]);
    assert_eq!(s, 404);
    let (s, _) = c.call(via, "DELETE", &format!("/api/admin/runners/{admin_runner_id}"), admin, None, &[]);
    assert_eq!(s, 204);
    let (s, _) = c.call(via, "DELETE", &format!("/api/admin/runners/{admin_runner_id}"), admin, None, &[]);
    assert_eq!(s, 404);

    // --- deletes -----------------------------------------------------------------------
    let (s, _) = c.call(via, "DELETE", &format!("/api/runners/{runner_id}"), key, None, &[]);
    assert_eq!(s, 204);
    let (s, _) = c.call(via, "DELETE", &format!("/api/runners/{runner_id}"), key, None, &[]);
    assert_eq!(s, 404);
    let (s, _) = c.call(via, "DELETE", &path, key, None, &[]);
    assert_eq!(s, 204);
    let (s, _) = c.call(via, "GET", &path, key, None, &[]);
    assert_eq!(s, 404);
    let (s, _) = c.call(via, "DELETE", "/api/regions/us", key, None, &[]);
    assert_eq!(s, 404, "an organization cannot delete a shared region");

    // --- organizations -----------------------------------------------------------------
    let (s, orgs) = c.call(via, "GET", "/api/admin/organizations", admin, None, &[]);
    assert!(s == 200 && orgs.as_array().is_some_and(|l| !l.is_empty()));
    let org_id = orgs[0]["id"].as_str().expect("id").to_string();
    let (s, new_key) = c.call(
        via,
        "POST",
        &format!("/api/admin/organizations/{org_id}/api-keys"),
        admin,
        Some(&json!({ "name": format!("k-{suffix}") })),
        &[],
    );
    assert_eq!(s, 201, "{new_key}");
    let (s, _) = c.call(via, "GET", "/api/regions", new_key["apiKey"].as_str(), None, &[]);
    assert_eq!(s, 200, "a new key works at once");
    let (s, _) =
        c.call(via, "POST", "/api/admin/organizations/nope/api-keys", admin, Some(&json!({ "name": "k" })), &[]);
    assert_eq!(s, 404);
    let (s, body) = c.call(via, "POST", "/api/admin/organizations", admin, Some(&json!({ "name": "bad name" })), &[]);
    assert_eq!(s, 422, "{body}");

    // --- auth and transport errors -----------------------------------------------------
    let (s, body) = c.call(via, "GET", "/api/regions", None, None, &[]);
    assert_eq!((s, code(&body)), (401, "unauthorized"));
    let (s, body) = c.call(via, "GET", "/api/regions", Some("not-a-key"), None, &[]);
    assert_eq!((s, code(&body)), (401, "unauthorized"));
    let (s, body) = c.call(via, "GET", "/api/admin/cluster", key, None, &[]);
    assert_eq!((s, code(&body)), (403, "forbidden"));
    let (s, body) = c.call(via, "GET", "/api/admin/cluster/hash", key, None, &[]);
    assert_eq!((s, code(&body)), (403, "forbidden"));
    // The state hash is its own call (it reads the whole state); the polled status has none.
    let (s, status) = c.call(via, "GET", "/api/admin/cluster", admin, None, &[]);
    assert_eq!(s, 200, "{status}");
    assert!(status.get("stateHash").is_none() && status["appliedIndex"].is_u64(), "{status}");
    let (s, hash) = c.call(via, "GET", "/api/admin/cluster/hash", admin, None, &[]);
    assert_eq!(s, 200, "{hash}");
    assert_eq!(hash["nodeId"], json!(via), "{hash}");
    assert!(hash["appliedIndex"].as_u64() >= status["appliedIndex"].as_u64(), "{hash} after {status}");
    let digest = hash["stateHash"].as_str().unwrap_or_default();
    assert!(digest.len() == 64 && digest.chars().all(|ch| ch.is_ascii_hexdigit()), "{hash}");
    let (s, body) = c.call(via, "GET", "/api/nothing-here", key, None, &[]);
    assert_eq!((s, code(&body)), (404, "not_found"));
    let (s, body) = c.call(via, "PUT", "/api/regions", key, None, &[]);
    assert_eq!((s, code(&body)), (405, "method_not_allowed"));
    let raw = |content_type: &str, body: String| {
        let resp = c
            .http
            .post(c.url(via, "/api/regions"))
            .bearer_auth(org_key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .expect("send");
        let status = resp.status().as_u16();
        (status, resp.json::<Value>().unwrap_or(Value::Null))
    };
    let (s, body) = raw("application/json", "{\"name\": ".into());
    assert_eq!((s, code(&body)), (400, "malformed_json"));
    let (s, body) = raw("text/plain", "{}".into());
    assert_eq!((s, code(&body)), (415, "unsupported_media_type"));
    // The server answers 413 as soon as it sees the length and closes the connection, which
    // can cut the client off while it is still writing the 2 MiB (broken pipe, reset) before it
    // reads the answer, or leave a pooled connection the next request finds closed: such an
    // attempt says nothing either way, and is made again.
    let answered = |request: &dyn Fn() -> reqwest::blocking::RequestBuilder| {
        (0..5)
            .find_map(|_| match request().send() {
                Ok(resp) => Some((resp.status().as_u16(), resp.json::<Value>().unwrap_or(Value::Null))),
                Err(e) if e.is_request() => None,
                Err(e) => panic!("request: {e}"),
            })
            .expect("an answer in five attempts")
    };
    let oversized = format!("{{\"name\":\"{}\"}}", "x".repeat(2 << 20));
    let (s, body) = answered(&|| {
        c.http
            .post(c.url(via, "/api/regions"))
            .bearer_auth(org_key)
            .header("content-type", "application/json")
            .body(oversized.clone())
    });
    assert_eq!((s, code(&body)), (413, "payload_too_large"));

    // Errors axum's own extractors answer are JSON too: a path segment that is not UTF-8, a
    // raw body over the limit; malformed JSON is 400 on the scheduling route as everywhere.
    let (s, body) = answered(&|| c.http.get(c.url(via, "/api/regions/%FF")).bearer_auth(org_key));
    assert_eq!((s, code(&body)), (400, "bad_request"), "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()), "{body}");
    let patch = |body: String| {
        answered(&|| {
            c.http
                .patch(c.url(via, "/api/runners/some-runner/scheduling"))
                .bearer_auth(org_key)
                .header("content-type", "application/json")
                .body(body.clone())
        })
    };
    let (s, body) = patch(format!("{{\"schedulable\": true, \"pad\": \"{}\"}}", "x".repeat(2 << 20)));
    assert_eq!((s, code(&body)), (413, "payload_too_large"), "{body}");
    let (s, body) = patch("{\"schedulable\": tru".into());
    assert_eq!((s, code(&body)), (400, "malformed_json"), "{body}");
}

#[test]
fn every_endpoint_through_follower_and_leader() {
    let mut c = TestCluster::start(3, &["--request-timeout-ms", "3000"]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let follower = (1..=3).find(|&n| n != leader).expect("follower");
    let (_, org_key) = c.create_organization(follower, "acme");
    c.wait_shared_regions(follower, &org_key);

    exercise(&c, follower, &org_key, "f");
    exercise(&c, leader, &org_key, "l");

    let (s, doc) = c.call(follower, "GET", "/api/openapi.json", None, None, &[]);
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")), "{doc}");
    for path in
        ["/api/regions", "/api/regions/{region_id}", "/api/runners/{runner_id}/scheduling", "/api/admin/runners"]
    {
        assert!(doc["paths"].get(path).is_some(), "OpenAPI lacks {path}");
    }
    let docs = c.http.get(c.url(leader, "/docs")).send().expect("docs");
    assert_eq!(docs.status().as_u16(), 200);
    assert!(docs.text().unwrap_or_default().contains("/api/openapi.json"));

    // Without a quorum there is no leader: writes and linearizable reads get 503, stale reads work.
    let others: Vec<u64> = (1..=3).filter(|&n| n != follower).collect();
    for n in others {
        c.kill(n);
    }
    let (s, body) = c.call(follower, "POST", "/api/regions", Some(&org_key), Some(&json!({ "name": "lonely" })), &[]);
    assert_eq!(s, 503, "{body}");
    assert!(["no_leader", "timeout", "unavailable"].contains(&code(&body)), "{body}");
    let (s, _) = c.call(follower, "GET", "/api/regions", Some(&org_key), None, &[]);
    assert_eq!(s, 503);
    let (s, _) = c.call(follower, "GET", "/api/regions?consistency=stale", Some(&org_key), None, &[]);
    assert_eq!(s, 200);
}
