//! `corral ctl` drives every API operation against a real cluster, honouring CORRAL_ADDR and
//! CORRAL_TOKEN, in JSON and table output.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{TestCluster, ADMIN_KEY};
use serde_json::{json, Value};

struct Ctl<'a> {
    cluster: &'a TestCluster,
    addr: String,
    token: &'a str,
}

impl Ctl<'_> {
    fn run(&self, args: &[&str]) -> (bool, String, String) {
        let out = Command::new(env!("CARGO_BIN_EXE_corral"))
            .arg("ctl")
            .args(args)
            .env("CORRAL_ADDR", &self.addr)
            .env("CORRAL_TOKEN", self.token)
            .env_remove("CORRAL_ORGANIZATION")
            .output()
            .expect("run corral ctl");
        let stdout: String = String::from_utf8_lossy(&out.stdout).into();
        // Every secret ctl sees or prints is checked for leaks when the cluster is dropped.
        let printed = serde_json::from_str(&stdout).unwrap_or(Value::Null);
        self.cluster.remember_secrets(&[&json!({ "token": self.token }), &printed]);
        (out.status.success(), stdout, String::from_utf8_lossy(&out.stderr).into())
    }

    fn json(&self, args: &[&str]) -> Value {
        let mut full = vec!["--output", "json"];
        full.extend_from_slice(args);
        let (ok, stdout, stderr) = self.run(&full);
        assert!(ok, "corral ctl {args:?} failed: {stderr}");
        serde_json::from_str(&stdout).unwrap_or(Value::Null)
    }
}

#[test]
fn ctl_covers_every_operation() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(30));
    let follower = (1..=3).find(|&n| n != leader).expect("follower");
    let addr = format!("http://{}", c.node(follower).api_addr);
    let admin = Ctl { cluster: &c, addr: addr.clone(), token: ADMIN_KEY };

    let org = admin.json(&["admin", "organization", "create", "ctl-org"]);
    let org_id = org["id"].as_str().expect("id").to_string();
    let key = org["apiKey"].as_str().expect("apiKey").to_string();
    assert!(admin
        .json(&["admin", "organization", "list"])
        .as_array()
        .is_some_and(|l| l.iter().any(|o| o["id"] == org["id"])));
    let extra = admin.json(&["admin", "organization", "create-key", &org_id, "--name", "second"]);
    assert!(extra["apiKey"].is_string());

    let ctl = Ctl { cluster: &c, addr: addr.clone(), token: &key };

    // API keys: a member key made by the organization's admin key, listed without secrets,
    // refused where it lacks the role, then revoked; quotas set by the operator.
    let member = ctl.json(&["api-key", "create", "--name", "ci", "--role", "member"]);
    assert_eq!((member["role"].as_str(), member["name"].as_str()), (Some("member"), Some("ci")), "{member}");
    let member_key = member["apiKey"].as_str().expect("apiKey").to_string();
    let listed = ctl.json(&["api-key", "list"]);
    let names: Vec<&str> = listed.as_array().into_iter().flatten().filter_map(|k| k["name"].as_str()).collect();
    assert_eq!(names, ["ci", "default", "second"]);
    assert!(!listed.to_string().contains(&member_key), "a listing shows no key");
    let as_member = Ctl { cluster: &c, addr: addr.clone(), token: &member_key };
    let (ok, _, stderr) = as_member.run(&["region", "create", "not-mine"]);
    assert!(!ok && stderr.contains("forbidden") && stderr.contains("write:regions"), "{stderr}");
    assert_eq!(admin.json(&["admin", "organization", "keys", &org_id]).as_array().map(Vec::len), Some(3));
    let (ok, _, stderr) = ctl.run(&["api-key", "delete", "ci"]);
    assert!(ok, "{stderr}");
    let (ok, _, stderr) = as_member.run(&["region", "list"]);
    assert!(!ok && stderr.contains("unauthorized"), "a revoked key is refused: {stderr}");
    let (ok, _, stderr) = admin.run(&["admin", "organization", "delete-key", &org_id, "second"]);
    assert!(ok, "{stderr}");
    let org = admin.json(&["admin", "organization", "quota", &org_id, "--cpu", "4", "--sandboxes", "2"]);
    assert_eq!((org["quota"]["cpu"].as_u64(), org["quota"]["memoryGiB"].as_u64()), (Some(4), None), "{org}");
    let quota = ctl.json(&["quota"]);
    assert_eq!((quota["quota"]["sandboxes"].as_u64(), quota["used"]["sandboxes"].as_u64()), (Some(2), Some(0)));
    let region = ctl.json(&["region", "create", "ctl-region", "--proxy-url", "https://proxy.example.com"]);
    let region_id = region["id"].as_str().expect("id").to_string();
    assert!(region["proxyApiKey"].is_string());
    assert!(ctl.json(&["region", "list"]).as_array().is_some_and(|l| l.iter().any(|r| r["id"] == region["id"])));
    assert_eq!(ctl.json(&["--stale", "region", "get", &region_id])["name"], "ctl-region");
    let updated =
        ctl.json(&["region", "update", &region_id, "--ssh-gateway-url", "ssh://gw.example.com", "--clear-proxy-url"]);
    assert_eq!(
        (updated["proxyUrl"].clone(), updated["sshGatewayUrl"].as_str()),
        (Value::Null, Some("ssh://gw.example.com"))
    );
    assert!(ctl.json(&["region", "regenerate-ssh-gateway-api-key", &region_id])["apiKey"].is_string());
    ctl.json(&[
        "region",
        "update",
        &region_id,
        "--proxy-url",
        "https://p.example.com",
        "--snapshot-manager-url",
        "https://s.example.com",
    ]);
    assert!(ctl.json(&["region", "regenerate-proxy-api-key", &region_id])["apiKey"].is_string());
    assert!(ctl.json(&["region", "regenerate-snapshot-manager-credentials", &region_id])["password"].is_string());

    let runner = ctl.json(&["runner", "create", "ctl-runner", "--region", &region_id]);
    let runner_id = runner["id"].as_str().expect("id").to_string();
    assert!(runner["apiKey"].is_string());
    assert_eq!(ctl.json(&["runner", "list", "--region", &region_id]).as_array().map(Vec::len), Some(1));
    assert_eq!(ctl.json(&["runner", "get", &runner_id])["state"], "initializing");
    let token = ctl.json(&["runner", "regenerate-token", &runner_id]);
    assert!(token["apiKey"].as_str().is_some_and(|t| t.starts_with("crl_") && t != runner["apiKey"]), "{token}");
    assert_eq!(ctl.json(&["runner", "scheduling", &runner_id])["schedulable"], false);
    assert_eq!(ctl.json(&["runner", "scheduling", &runner_id, "--schedulable", "true"])["schedulable"], true);
    // Placement settings: --tag replaces the tags, --clear-tags and --no-max-sandboxes remove.
    let updated =
        ctl.json(&["runner", "update", &runner_id, "--tag", "zone=a", "--tag", "disk=ssd", "--max-sandboxes", "3"]);
    assert_eq!(
        (updated["tags"].clone(), updated["maxSandboxes"].clone()),
        (json!({ "zone": "a", "disk": "ssd" }), json!(3))
    );
    let updated = ctl.json(&["runner", "update", &runner_id, "--clear-tags", "--no-max-sandboxes"]);
    assert_eq!((updated["tags"].clone(), updated["maxSandboxes"].clone()), (json!({}), Value::Null), "{updated}");
    let (ok, _, stderr) = ctl.run(&["runner", "update", &runner_id, "--tag", "no-equals-sign"]);
    assert!(!ok && stderr.contains("KEY=VALUE"), "{stderr}");

    // Table output: a header line and one row per runner.
    let (ok, table, _) = ctl.run(&["runner", "list"]);
    assert!(ok);
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].starts_with("id") && lines[0].contains("schedulable"), "{table}");
    assert!(lines.iter().any(|l| l.contains(&runner_id) && l.contains("ctl-runner")), "{table}");

    // Errors: non-zero exit and the server's code on stderr.
    let (ok, _, stderr) = ctl.run(&["region", "delete", &region_id]);
    assert!(!ok && stderr.contains("region_has_runners"), "{stderr}");
    let (ok, _, stderr) = ctl.run(&["admin", "runner", "list"]);
    assert!(!ok && stderr.contains("403"), "an organization key is not the admin key: {stderr}");

    let admin_runner = admin.json(&[
        "admin",
        "runner",
        "create",
        "ctl-admin-runner",
        "--region",
        &region_id,
        "--api-key",
        "dtn_abcdefghijkl",
        "--api-version",
        "0",
        "--cpu",
        "4",
        "--memory-gib",
        "8",
        "--disk-gib",
        "50",
        "--tag",
        "pool=admin",
        "--max-sandboxes",
        "7",
    ]);
    assert_eq!(
        (admin_runner["tags"]["pool"].as_str(), admin_runner["maxSandboxes"].as_u64()),
        (Some("admin"), Some(7))
    );
    let admin_runner_id = admin_runner["id"].as_str().expect("id").to_string();
    assert_eq!(admin_runner["capacity"]["cpu"], 4);
    assert_eq!(admin.json(&["admin", "runner", "list", "--region", &region_id]).as_array().map(Vec::len), Some(2));
    assert_eq!(admin.json(&["admin", "runner", "get", &admin_runner_id])["apiVersion"], "0");
    assert_eq!(
        admin.json(&["admin", "runner", "scheduling", &admin_runner_id, "--schedulable", "false"])["schedulable"],
        false
    );
    let (ok, out, _) = admin.run(&["admin", "runner", "delete", &admin_runner_id]);
    assert!(ok && out.contains("204"), "{out}");

    let (ok, _, _) = ctl.run(&["runner", "delete", &runner_id]);
    assert!(ok);
    let (ok, _, _) = ctl.run(&["region", "delete", &region_id]);
    assert!(ok);
    let (ok, _, stderr) = ctl.run(&["region", "get", &region_id]);
    assert!(!ok && stderr.contains("not_found"), "{stderr}");

    let status = admin.json(&["cluster", "status"]);
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    assert_eq!(status["leaderId"], leader);

    // Idempotent POST through ctl: same key, same answer.
    let first = ctl.json(&["--idempotency-key", "k1", "region", "create", "again"]);
    let second = ctl.json(&["--idempotency-key", "k1", "region", "create", "again"]);
    assert_eq!(first, second);
}
