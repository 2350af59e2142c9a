//! API keys with roles, expiry and revocation, and organization quotas, against a real
//! 3-node cluster:
//! - every role against every organization route (a table), and organization keys of either
//!   role against the admin routes;
//! - a revoked key is refused on all three nodes as soon as the revocation returns, for reads
//!   and writes; an expired key likewise; `lastUsedAt` is recorded lazily;
//! - many concurrent sandbox creations through all three nodes never pass the quota.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{TestCluster, ADMIN_KEY};
use serde_json::{json, Value};

/// Runner health is left to the operator here (`--runner-silence-ms 0`): runners made ready
/// with the admin state route stay ready without an agent, so sandboxes can be placed.
const NODE_ARGS: &[&str] = &["--runner-silence-ms", "0"];

fn created(c: &TestCluster, via: u64, path: &str, token: &str, body: Value) -> Value {
    let (status, reply) = c.call(via, "POST", path, Some(token), Some(&body), &[]);
    assert_eq!(status, 201, "POST {path}: {reply}");
    reply
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap_or_else(|| panic!("no id in {v}")).to_string()
}

/// A key of `role` for the organization whose admin key is `admin_key`.
fn new_key(c: &TestCluster, via: u64, admin_key: &str, name: &str, role: &str) -> String {
    let key = created(c, via, "/api/api-keys", admin_key, json!({ "name": name, "role": role }));
    assert_eq!(key["role"], role);
    key["apiKey"].as_str().expect("apiKey").to_string()
}

/// A runner with room in `region_id`, made ready by the operator.
fn ready_runner(c: &TestCluster, via: u64, region_id: &str, name: &str) -> String {
    let token = format!("crl_{name}_0123456789abcdef0123");
    let body = json!({ "name": name, "regionId": region_id, "apiKey": token, "apiVersion": "2",
        "cpu": 1000, "memoryGiB": 1000, "diskGiB": 1000 });
    let runner = created(c, via, "/api/admin/runners", ADMIN_KEY, body);
    let runner_id = id(&runner);
    let path = format!("/api/admin/runners/{runner_id}/state");
    let (s, r) = c.call(via, "PATCH", &path, Some(ADMIN_KEY), Some(&json!({ "state": "ready" })), &[]);
    assert_eq!(s, 200, "{r}");
    runner_id
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Needs {
    /// Any key of the organization.
    Member,
    /// An admin key of the organization.
    Admin,
    /// The admin key only (organization keys get 403 whatever their role).
    Operator,
}

/// One row: method, path (with `{name}` placeholders filled per role), body, who may call it,
/// and the status an allowed caller gets.
struct Route {
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    needs: Needs,
    ok: u16,
}

fn route(method: &'static str, path: &'static str, body: Option<Value>, needs: Needs, ok: u16) -> Route {
    Route { method, path, body, needs, ok }
}

fn fill(template: &str, objects: &HashMap<&'static str, String>) -> String {
    objects.iter().fold(template.to_string(), |path, (name, value)| path.replace(&format!("{{{name}}}"), value))
}

/// Every organization route, and the admin routes, with a member key and an admin key. Each
/// role gets its own objects to change and delete, so that one role's allowed call does not
/// change what the other's finds.
#[test]
fn every_role_against_every_route() {
    let c = TestCluster::start(3, NODE_ARGS);
    c.wait_leader(Duration::from_secs(30));
    let via = 2;
    let (org_id, owner_key) = c.create_organization(via, "roles");
    c.wait_shared_regions(via, &owner_key);
    let keys: Vec<(&str, String)> = vec![
        ("member", new_key(&c, via, &owner_key, "the-member", "member")),
        ("admin", new_key(&c, via, &owner_key, "the-admin", "admin")),
    ];
    let edge = created(
        &c,
        via,
        "/api/regions",
        &owner_key,
        json!({ "name": "edge", "proxyUrl": "https://p.example.com",
        "sshGatewayUrl": "ssh://gw.example.com", "snapshotManagerUrl": "https://s.example.com" }),
    );
    let edge_id = id(&edge);
    ready_runner(&c, via, &edge_id, "edge-host");

    let mut objects: HashMap<&str, HashMap<&'static str, String>> = HashMap::new();
    for (role, _) in &keys {
        let doomed_region = created(&c, via, "/api/regions", &owner_key, json!({ "name": format!("doomed-{role}") }));
        let runner =
            created(&c, via, "/api/runners", &owner_key, json!({ "name": format!("r-{role}"), "regionId": edge_id }));
        let doomed_runner =
            created(&c, via, "/api/runners", &owner_key, json!({ "name": format!("d-{role}"), "regionId": edge_id }));
        let sandbox = created(&c, via, "/api/sandboxes", &owner_key, json!({ "target": "edge", "cpu": 1 }));
        let doomed_sandbox = created(&c, via, "/api/sandboxes", &owner_key, json!({ "target": "edge", "cpu": 1 }));
        new_key(&c, via, &owner_key, &format!("doomed-member-{role}"), "member");
        new_key(&c, via, &owner_key, &format!("doomed-admin-{role}"), "admin");
        let filled: HashMap<&'static str, String> = [
            ("role", role.to_string()),
            ("org", org_id.clone()),
            ("region", edge_id.clone()),
            ("doomed_region", id(&doomed_region)),
            ("runner", id(&runner)),
            ("doomed_runner", id(&doomed_runner)),
            ("sandbox", id(&sandbox)),
            ("doomed_sandbox", id(&doomed_sandbox)),
        ]
        .into();
        objects.insert(role, filled);
    }

    use Needs::*;
    let routes = vec![
        route("GET", "/api/regions", None, Member, 200),
        route("GET", "/api/regions/{region}", None, Member, 200),
        route("POST", "/api/regions", Some(json!({ "name": "new-{role}" })), Admin, 201),
        route("PATCH", "/api/regions/{region}", Some(json!({ "proxyUrl": "https://p2.example.com" })), Admin, 200),
        route("POST", "/api/regions/{region}/regenerate-proxy-api-key", None, Admin, 200),
        route("POST", "/api/regions/{region}/regenerate-ssh-gateway-api-key", None, Admin, 200),
        route("POST", "/api/regions/{region}/regenerate-snapshot-manager-credentials", None, Admin, 200),
        route("DELETE", "/api/regions/{doomed_region}", None, Admin, 204),
        route("GET", "/api/runners", None, Member, 200),
        route("GET", "/api/runners/{runner}", None, Member, 200),
        route("POST", "/api/runners", Some(json!({ "name": "new-{role}", "regionId": "{region}" })), Admin, 201),
        route("PATCH", "/api/runners/{runner}", Some(json!({ "maxSandboxes": 9 })), Admin, 200),
        route("PATCH", "/api/runners/{runner}/scheduling", Some(json!({ "schedulable": true })), Admin, 200),
        route("PATCH", "/api/runners/{runner}/draining", Some(json!({ "draining": false })), Admin, 200),
        route("POST", "/api/runners/{runner}/regenerate-token", None, Admin, 200),
        route("DELETE", "/api/runners/{doomed_runner}", None, Admin, 204),
        route("GET", "/api/sandboxes", None, Member, 200),
        route("GET", "/api/sandboxes/{sandbox}", None, Member, 200),
        route("POST", "/api/sandboxes", Some(json!({ "target": "edge", "cpu": 1 })), Member, 201),
        route("POST", "/api/sandboxes/{sandbox}/stop", None, Member, 200),
        route("POST", "/api/sandboxes/{sandbox}/start", None, Member, 200),
        route("DELETE", "/api/sandboxes/{doomed_sandbox}", None, Member, 204),
        route("GET", "/api/quota", None, Member, 200),
        route("GET", "/api/api-keys", None, Member, 200),
        route("POST", "/api/api-keys", Some(json!({ "name": "made-by-{role}", "role": "member" })), Member, 201),
        route("POST", "/api/api-keys", Some(json!({ "name": "admin-by-{role}", "role": "admin" })), Admin, 201),
        route("DELETE", "/api/api-keys/doomed-member-{role}", None, Member, 204),
        route("DELETE", "/api/api-keys/doomed-admin-{role}", None, Admin, 204),
        route("GET", "/api/admin/organizations", None, Operator, 200),
        route("GET", "/api/admin/organizations/{org}/api-keys", None, Operator, 200),
        route("POST", "/api/admin/organizations/{org}/api-keys", Some(json!({ "name": "x-{role}" })), Operator, 201),
        route("PUT", "/api/admin/organizations/{org}/quota", Some(json!({ "cpu": 1 })), Operator, 200),
        route("POST", "/api/admin/runners/{runner}/regenerate-token", None, Operator, 200),
        route("GET", "/api/admin/runners", None, Operator, 200),
    ];
    let mut checked = 0;
    for r in &routes {
        for (role, key) in &keys {
            let filled = &objects[role];
            let path = fill(r.path, filled);
            let body = r
                .body
                .as_ref()
                .map(|b| serde_json::from_str::<Value>(&fill(&b.to_string(), filled)).expect("body template is JSON"));
            let (status, reply) = c.call(via, r.method, &path, Some(key), body.as_ref(), &[]);
            let allowed = match r.needs {
                Member => true,
                Admin => *role == "admin",
                Operator => false,
            };
            if allowed {
                assert_eq!(status, r.ok, "{role} key, {} {path}: {reply}", r.method);
            } else {
                assert_eq!(status, 403, "{role} key, {} {path}: {reply}", r.method);
                assert_eq!(reply["code"], "forbidden", "{reply}");
                if r.needs == Admin {
                    let message = reply["error"].as_str().unwrap_or_default();
                    assert!(message.contains("write:") && message.contains("member"), "names the permission: {reply}");
                }
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * 2);
    // The organization's own admin key (from its creation) may do all an admin key may.
    let (s, body) = c.call(via, "POST", "/api/regions", Some(&owner_key), Some(&json!({ "name": "owner" })), &[]);
    assert_eq!(s, 201, "{body}");
    c.wait_converged(Duration::from_secs(20));
}

fn refused_everywhere(c: &TestCluster, key: &str, what: &str) {
    for node in 1..=3 {
        let (s, body) = c.call(node, "GET", "/api/regions", Some(key), None, &[]);
        assert_eq!(s, 401, "{what}: node {node} still reads with the key: {body}");
        let create = json!({ "target": "us", "cpu": 1 });
        let (s, body) = c.call(node, "POST", "/api/sandboxes", Some(key), Some(&create), &[]);
        assert_eq!(s, 401, "{what}: node {node} still writes with the key: {body}");
    }
}

fn accepted_everywhere(c: &TestCluster, key: &str) {
    for node in 1..=3 {
        let (s, body) = c.call(node, "GET", "/api/regions", Some(key), None, &[]);
        assert_eq!(s, 200, "node {node}: {body}");
    }
}

#[test]
fn revoked_and_expired_keys_are_refused_on_every_node() {
    let c = TestCluster::start(3, NODE_ARGS);
    let leader = c.wait_leader(Duration::from_secs(30));
    let followers: Vec<u64> = (1..=3).filter(|&n| n != leader).collect();
    let (_, owner_key) = c.create_organization(leader, "revocation");
    c.wait_shared_regions(leader, &owner_key);

    // Revoked through one follower; the very next request, on any node, is refused.
    let doomed = new_key(&c, followers[0], &owner_key, "doomed", "member");
    accepted_everywhere(&c, &doomed);
    let (s, body) = c.call(followers[1], "DELETE", "/api/api-keys/doomed", Some(&owner_key), None, &[]);
    assert_eq!(s, 204, "{body}");
    refused_everywhere(&c, &doomed, "revoked");
    let (s, body) = c.call(leader, "DELETE", "/api/api-keys/doomed", Some(&owner_key), None, &[]);
    assert_eq!((s, body["code"].as_str()), (404, Some("not_found")), "{body}");

    // Expiry: refused from expiresAt on, on every node, and listed as expired.
    let expires = corral_api::now_millis() + 3_000;
    let body = json!({ "name": "short-lived", "role": "member", "expiresAt": corral_api::rfc3339(expires) });
    let short = created(&c, leader, "/api/api-keys", &owner_key, body);
    let short_key = short["apiKey"].as_str().expect("apiKey").to_string();
    assert!(short["expiresAt"].is_string() && short["expired"] == false, "{short}");
    accepted_everywhere(&c, &short_key);
    let wait = Duration::from_millis(expires.saturating_sub(corral_api::now_millis()) + 200);
    std::thread::sleep(wait);
    refused_everywhere(&c, &short_key, "expired");
    let past = json!({ "name": "late", "expiresAt": "2001-01-01T00:00:00Z" });
    let (s, body) = c.call(leader, "POST", "/api/api-keys", Some(&owner_key), Some(&past), &[]);
    assert_eq!((s, body["code"].as_str()), (409, Some("conflict")), "an expiry in the past is refused: {body}");

    // lastUsedAt: recorded lazily (a node records a key's use within a round of ~10 s).
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let (s, keys) = c.call(followers[0], "GET", "/api/api-keys", Some(&owner_key), None, &[]);
        assert_eq!(s, 200, "{keys}");
        let listed = keys.as_array().cloned().unwrap_or_default();
        let expired = listed.iter().find(|k| k["name"] == "short-lived").expect("short-lived listed");
        assert_eq!(expired["expired"], true, "{expired}");
        assert!(!keys.to_string().contains(&short_key), "listings never show a key");
        let default = listed.iter().find(|k| k["name"] == "default").expect("default listed");
        if default["lastUsedAt"].is_string() {
            assert!(default["prefix"].as_str().is_some_and(|p| p.starts_with("corral_") && owner_key.starts_with(p)));
            break;
        }
        assert!(Instant::now() < deadline, "lastUsedAt was never recorded: {default}");
        std::thread::sleep(Duration::from_millis(500));
    }
    c.wait_converged(Duration::from_secs(20));
}

#[test]
fn concurrent_creations_through_every_node_never_pass_the_quota() {
    let c = TestCluster::start(3, NODE_ARGS);
    c.wait_leader(Duration::from_secs(30));
    let (org_id, key) = c.create_organization(1, "quota");
    c.wait_shared_regions(1, &key);
    let (_, regions) = c.call(1, "GET", "/api/regions", Some(&key), None, &[]);
    let us = regions.as_array().into_iter().flatten().find(|r| r["name"] == "us").expect("shared region us");
    ready_runner(&c, 1, us["id"].as_str().expect("id"), "shared-host");
    // Also a custom region: no limits there.
    let edge = created(&c, 1, "/api/regions", &key, json!({ "name": "edge" }));
    ready_runner(&c, 1, &id(&edge), "edge-host");
    let quota = json!({ "cpu": 10, "sandboxes": 6 });
    let path = format!("/api/admin/organizations/{org_id}/quota");
    let (s, body) = c.call(1, "PUT", &path, Some(ADMIN_KEY), Some(&quota), &[]);
    assert_eq!(s, 200, "{body}");

    // 30 creations of 2 cpu at once, spread over the three nodes: 5 fit the cpu limit.
    let results: Vec<(u16, Value)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..30u64)
            .map(|i| {
                let (c, key) = (&c, &key);
                scope.spawn(move || {
                    let body = json!({ "target": "us", "cpu": 2 });
                    c.call(1 + i % 3, "POST", "/api/sandboxes", Some(key), Some(&body), &[])
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("request thread")).collect()
    });
    let placed = results.iter().filter(|(s, _)| *s == 201).count();
    let over: Vec<&Value> = results.iter().filter(|(s, _)| *s == 409).map(|(_, b)| b).collect();
    assert_eq!(placed, 5, "{results:?}");
    assert_eq!(over.len(), 25, "{results:?}");
    for body in over {
        assert_eq!(body["code"], "quota_exceeded", "{body}");
        assert!(body["error"].as_str().is_some_and(|e| e.contains("cpu")), "names the limit: {body}");
    }
    for node in 1..=3 {
        let (s, status) = c.call(node, "GET", "/api/quota", Some(&key), None, &[]);
        assert_eq!(s, 200);
        assert_eq!((status["used"]["cpu"].as_u64(), status["used"]["sandboxes"].as_u64()), (Some(10), Some(5)));
    }
    // The custom region is not limited.
    for _ in 0..3 {
        created(&c, 2, "/api/sandboxes", &key, json!({ "target": "edge", "cpu": 8 }));
    }
    c.wait_converged(Duration::from_secs(20));
}
