//! The dashboard in a real browser: Debian's headless Chromium, driven through ChromeDriver
//! (W3C WebDriver), against a real 3-node cluster with a real runner agent. The user path:
//! sign in, create a region (credentials shown once), create a runner (token and command line
//! shown once), see it turn ready with its capacity bars once its agent runs, create a sandbox
//! and see it placed, read a refusal as a message, drain the runner, then kill the leader and
//! see the cluster page show the new one. Screenshots of every page at 1280 and 390 px wide go
//! to a temporary directory, or with `CORRAL_UPDATE_SCREENSHOTS=1` to `docs/screenshots/`
//! (the README shows them), so that a test run leaves the working tree alone.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::browser::Browser;
use common::{Agent, TestCluster, ADMIN_KEY};
use serde_json::json;

const WIDE: (u32, u32) = (1280, 900);
const NARROW: (u32, u32) = (390, 844);

fn screenshots_dir() -> PathBuf {
    if std::env::var_os("CORRAL_UPDATE_SCREENSHOTS").is_some_and(|v| v == "1") {
        return PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/screenshots");
    }
    std::env::temp_dir().join(format!("corral-screenshots-{}", std::process::id()))
}

/// Saves the current page at both widths as `<name>-1280.png` and `<name>-390.png`.
fn screenshots(browser: &Browser, name: &str) {
    let dir = screenshots_dir();
    std::fs::create_dir_all(&dir).expect("screenshots dir");
    for (width, height) in [NARROW, WIDE] {
        browser.resize(width, height);
        std::thread::sleep(Duration::from_millis(300));
        let png = browser.screenshot();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(dir.join(format!("{name}-{width}.png")), png).expect("write screenshot");
    }
}

fn open_page(browser: &Browser, page: &str) {
    browser.click(&format!("nav a[data-page='{page}']"));
    browser.wait_for(&format!("main[data-page='{page}']"), Duration::from_secs(20));
}

#[test]
fn the_dashboard_drives_a_fleet_through_a_leader_failover() {
    let mut c = TestCluster::start(
        3,
        &["--runner-silence-ms", "3000", "--runner-report-interval-ms", "500", "--gossip-suspect-ms", "1500"],
    );
    let leader = c.wait_leader(Duration::from_secs(30));
    let (org_id, _) = c.create_organization(leader, "browser");
    // Every node serves the dashboard, from assets in its binary.
    for node in 1..=3 {
        let page = c.http.get(c.url(node, "/")).send().expect("GET /");
        assert!(page.headers()["content-type"].to_str().is_ok_and(|t| t.starts_with("text/html")));
        assert!(page.text().is_ok_and(|t| t.contains("/ui/app.js")));
    }
    let home = (1..=3).find(|&n| n != leader).expect("a follower serves the page");
    let browser = Browser::start();
    browser.resize(WIDE.0, WIDE.1);
    browser.goto(&c.url(home, "/"));

    // Sign in with the admin key acting for the organization.
    browser.wait_for("#sign-in", Duration::from_secs(20));
    screenshots(&browser, "sign-in");
    browser.type_into("#key", ADMIN_KEY);
    browser.type_into("#org", &org_id);
    browser.click("#sign-in button[type=submit]");
    browser.wait_for("main[data-page='regions']", Duration::from_secs(20));
    browser.wait_text("#regions-empty", Duration::from_secs(5), |t| t.contains("Create one below"));

    // A region: its proxy key is shown once.
    browser.type_into("#region-name", "edge");
    browser.type_into("#region-proxyUrl", "https://proxy.edge.example.com");
    browser.click("#create-region button[type=submit]");
    let proxy_key = browser.wait_text("#secret-dialog[open] code.secret", Duration::from_secs(20), |t| !t.is_empty());
    c.remember_secrets(&[&json!({ "apiKey": proxy_key })]);
    browser.click("#secret-close");
    browser.wait_for("tr[data-region='edge']", Duration::from_secs(20));
    screenshots(&browser, "regions");

    // A runner: token and the command line to start its agent, shown once.
    open_page(&browser, "runners");
    browser.type_into("#runner-name", "edge-1");
    browser.click("#create-runner button[type=submit]");
    let token =
        browser.wait_text("#secret-dialog[open] code.secret", Duration::from_secs(20), |t| t.starts_with("crl_"));
    c.remember_secrets(&[&json!({ "apiKey": token })]);
    let command = browser.text("#runner-command").unwrap_or_default();
    assert!(command.contains("corral runner --endpoints") && command.contains(&c.node(1).raft_addr), "{command}");
    browser.click("#secret-close");
    let endpoints = c.nodes.iter().map(|n| n.raft_addr.clone()).collect::<Vec<_>>().join(",");
    let dir = tempfile::tempdir().expect("tempdir");
    let _agent = Agent::start(&token, &endpoints, &c.certs, "runner", &dir.path().join("agent.log"));
    browser.wait_text("tr[data-runner='edge-1'] td.state", Duration::from_secs(30), |t| t.contains("ready"));
    browser.wait_until("capacity bars from the agent's host", Duration::from_secs(30), || {
        let capacity = browser.eval(
            "const b = document.querySelector(\"tr[data-runner='edge-1'] .bar[data-resource='cpu']\"); \
             return b ? Number(b.dataset.capacity) : 0;",
            json!([]),
        );
        capacity.as_f64().is_some_and(|cpu| cpu >= 1.0)
    });
    // Runners per region: the filter keeps the region's runner.
    browser.click("#runners-region option:nth-child(2)");
    browser.wait_text("tr[data-runner='edge-1'] td:nth-child(2)", Duration::from_secs(10), |t| t == "edge");
    screenshots(&browser, "runners");

    // A sandbox in the region, placed on the runner.
    open_page(&browser, "sandboxes");
    browser.click("#sandbox-target option[value='edge']");
    browser.click("#create-sandbox button[type=submit]");
    browser.wait_text("#alert", Duration::from_secs(20), |t| t.contains("placed on runner edge-1"));
    browser.wait_text("tr[data-sandbox] td.state", Duration::from_secs(20), |t| t.contains("started"));
    assert_eq!(browser.text("tr[data-sandbox] td.runner").as_deref(), Some("edge-1"));
    screenshots(&browser, "sandboxes");

    // A refusal reads as a message with its code, never as raw JSON.
    open_page(&browser, "regions");
    browser.click("tr[data-region='edge'] button[data-action='delete-region']");
    let refusal = browser.wait_text("#alert", Duration::from_secs(20), |t| t.contains("region_has_runners"));
    assert!(refusal.contains("delete them first") && !refusal.contains('{'), "{refusal}");

    // Drain the runner.
    open_page(&browser, "runners");
    browser.click("tr[data-runner='edge-1'] button[data-action='drain']");
    browser.wait_text("tr[data-runner='edge-1'] td.state", Duration::from_secs(20), |t| t.contains("draining"));

    // The cluster page follows a failover.
    open_page(&browser, "cluster");
    let shown = browser.wait_text("#leader", Duration::from_secs(20), |t| t.starts_with("node "));
    assert_eq!(shown, format!("node {leader}"));
    // State hashes only on demand; the members agree (a write landing between two hashes shows
    // as differing indexes, so it is compared again).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        browser.click("#compare-hashes");
        let verdict = browser.wait_text("#hash-verdict", Duration::from_secs(15), |t| !t.contains("not compared"));
        assert!(!verdict.contains("DIVERGED"), "{verdict}");
        if verdict.contains("in step") {
            break;
        }
        assert!(Instant::now() < deadline, "the members' hashes never agreed: {verdict}");
        std::thread::sleep(Duration::from_millis(300));
    }
    c.kill(leader);
    let killed = Instant::now();
    let deadline = Instant::now() + Duration::from_secs(30);
    let new_leader = loop {
        if let Some(id) = c.status(home).and_then(|s| s.leader_id).filter(|&id| id != leader) {
            break id;
        }
        assert!(Instant::now() < deadline, "no new leader within 30 s");
        std::thread::sleep(Duration::from_millis(50));
    };
    let elected = Instant::now();
    browser.wait_text("#leader", Duration::from_secs(5), |t| t == format!("node {new_leader}"));
    eprintln!(
        "leader {leader} killed; node {home} knew of leader {new_leader} after {:.2} s; the page showed it {:.2} s later",
        elected.duration_since(killed).as_secs_f64(),
        elected.elapsed().as_secs_f64()
    );
    browser.wait_text(&format!("tr[data-node='{leader}']"), Duration::from_secs(10), |t| t.contains("unreachable"));
    screenshots(&browser, "cluster");
}
