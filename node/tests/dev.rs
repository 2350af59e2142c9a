//! `corral dev` on a laptop: a `kill -9` of the leader is reported, the other nodes keep
//! serving (a new leader is elected and takes writes), and the dead node is started again on
//! its data and catches up.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::free_ports;
use corral_api::{ClusterStatus, StateHash};

/// A port base whose next three ports are free now (node i listens on base + i).
fn free_base() -> u16 {
    free_ports(4)
}

fn status(http: &reqwest::blocking::Client, api: &str, key: &str) -> Option<ClusterStatus> {
    http.get(format!("http://{api}/api/admin/cluster")).bearer_auth(key).send().ok()?.json().ok()
}

fn state_hash(http: &reqwest::blocking::Client, api: &str, key: &str) -> Option<StateHash> {
    http.get(format!("http://{api}/api/admin/cluster/hash")).bearer_auth(key).send().ok()?.json().ok()
}

#[test]
fn a_killed_dev_node_is_restarted_while_the_others_keep_serving() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (api_base, raft_base) = (free_base(), free_base());
    let mut dev = Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["dev", "--api-port-base", &api_base.to_string(), "--raft-port-base", &raft_base.to_string()])
        .arg("--data-dir")
        .arg(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("corral dev");
    let (lines_tx, lines) = mpsc::channel::<String>();
    for stream in [
        dev.stdout.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
        dev.stderr.take().map(|s| Box::new(s) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = lines_tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
    }
    let mut seen = Vec::new();
    let mut wait_line = |what: &str, timeout: Duration, ok: &dyn Fn(&str) -> bool| -> String {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(line) = seen.iter().find(|l: &&String| ok(l)) {
                return line.clone();
            }
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) => seen.push(line),
                Err(_) => panic!("corral dev never said {what}; it said:\n{}", seen.join("\n")),
            }
        }
    };
    wait_line("that the cluster is up", Duration::from_secs(60), &|l| l.contains("cluster is up"));
    let key = std::fs::read_to_string(dir.path().join("admin-key")).expect("admin key").trim().to_string();
    let http = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).build().expect("client");
    let api = |id: u64| format!("127.0.0.1:{}", u64::from(api_base) + id);
    let leader = status(&http, &api(1), &key).and_then(|s| s.leader_id).expect("a leader");
    let pid_line =
        wait_line("the leader's pid", Duration::from_secs(5), &|l| l.contains(&format!("node {leader}  REST")));
    let pid: i32 = pid_line
        .split("pid ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .expect("pid in the listing");

    // SAFETY: kill has no memory preconditions; the pid is the leader node `corral dev` started.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
    }
    wait_line("that the node exited", Duration::from_secs(10), &|l| l.contains(&format!("node {leader} exited")));
    // The others keep serving: a write through a survivor is acknowledged (by a new leader:
    // the old one comes back a follower, see `election::never_resume_leadership`).
    let survivor = (1..=3).find(|&n| n != leader).expect("survivor");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let write = http
            .post(format!("http://{}/api/admin/organizations", api(survivor)))
            .bearer_auth(&key)
            .header("Idempotency-Key", "written-during-the-outage")
            .json(&serde_json::json!({ "name": "written-during-the-outage" }))
            .send();
        let status = write.as_ref().map(|r| r.status().as_u16()).ok();
        if status == Some(201) {
            break;
        }
        assert!(Instant::now() < deadline, "the survivors took no write: last {status:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // The dead node comes back on its data and catches up.
    wait_line("that the node started again", Duration::from_secs(20), &|l| {
        l.contains(&format!("node {leader} started again"))
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let views: Vec<Option<StateHash>> = (1..=3).map(|id| state_hash(&http, &api(id), &key)).collect();
        let first = views[0].as_ref().map(|s| (s.applied_index, s.state_hash.clone()));
        let caught_up = first.as_ref().is_some_and(|(applied, _)| applied.is_some())
            && views.iter().all(|v| v.as_ref().map(|s| (s.applied_index, s.state_hash.clone())) == first);
        if caught_up {
            break;
        }
        assert!(Instant::now() < deadline, "the restarted node did not catch up: {views:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    // SAFETY: as above; SIGTERM asks corral dev to stop every node.
    unsafe {
        libc::kill(dev.id() as i32, libc::SIGTERM);
    }
    let stopped = dev.wait().expect("corral dev exits");
    assert!(stopped.success(), "{stopped}");
}
