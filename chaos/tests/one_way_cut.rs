//! A leader behind a one-way cut, on real `corral serve` processes in network namespaces
//! (issue 17): whichever way the cut runs, the leader stops acting as leader within about a
//! lease (fenced: `/readyz` fails, writes get 503 `no_leader` at once) and the majority
//! elects a new leader and takes writes; after the cut heals, the old leader follows it.
//!
//! - **Deaf leader**: the followers' packets no longer reach it. Its heartbeats still arrive,
//!   so only its fence (it sends nothing once no quorum acknowledges it) lets them elect.
//! - **Mute leader**: its packets no longer reach the followers; they elect on silence, and
//!   it fences itself for want of acknowledgements.
//!
//! Partitions need root, `ip` and `nft`. Without them the test fails, unless
//! `CORRAL_SKIP_PARTITIONS=1` switches it off explicitly.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use corral_chaos::cluster::{namespaces_available, Cluster, Network, ADMIN_KEY};
use serde_json::{json, Value};

fn corral_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("own path");
    // target/<profile>/deps/one_way_cut-… → target/<profile>/corral
    let bin = exe.parent().and_then(|deps| deps.parent()).expect("target dir").join("corral");
    assert!(bin.exists(), "{} is missing; build the workspace first", bin.display());
    bin
}

async fn post(cluster: &Cluster, node: u64, path: &str, token: &str, body: &Value) -> (u16, Value) {
    let sent = cluster.http.post(cluster.url(node, path)).bearer_auth(token).json(body).send().await;
    match sent {
        Ok(r) => {
            let status = r.status().as_u16();
            (status, r.json().await.unwrap_or(Value::Null))
        }
        Err(e) => (0, json!({ "error": e.to_string() })),
    }
}

async fn ready(cluster: &Cluster, node: u64) -> bool {
    let sent = cluster.http.get(cluster.url(node, "/readyz")).send().await;
    sent.is_ok_and(|r| r.status().is_success())
}

/// Cuts `directions` around the leader and checks the fence and the new majority leader;
/// returns (time to the fence, time to the first write acknowledged by the majority).
async fn cut_and_check(cluster: &Cluster, org_key: &str, leader: u64, deaf: bool, round: &str) -> (Duration, Duration) {
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|&n| n != leader).collect();
    let cuts: Vec<(u64, u64)> = followers.iter().map(|&f| if deaf { (f, leader) } else { (leader, f) }).collect();
    cluster.partition(&cuts).expect("partition");
    let cut_at = Instant::now();

    let limit = Duration::from_secs(20);
    // The fence and the majority's first write, watched side by side (a write may wait).
    let fence = async {
        while ready(cluster, leader).await {
            assert!(cut_at.elapsed() < limit, "{round}: the cut-off leader still reports ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let fenced_after = cut_at.elapsed();
        // A fenced leader refuses at once, with the retryable no_leader.
        let asked = Instant::now();
        let (status, body) =
            post(cluster, leader, "/api/regions", org_key, &json!({ "name": format!("{round}-fenced") })).await;
        assert_eq!((status, body["code"].as_str()), (503, Some("no_leader")), "{round}: {body}");
        assert!(asked.elapsed() < Duration::from_secs(2), "{round}: refused after {:?}", asked.elapsed());
        fenced_after
    };
    let majority = async {
        let mut attempt = 0;
        loop {
            assert!(cut_at.elapsed() < limit, "{round}: the majority took no write");
            let via = followers[attempt % followers.len()];
            let name = format!("{round}-majority-{attempt}");
            let (status, _) = post(cluster, via, "/api/regions", org_key, &json!({ "name": name })).await;
            if status == 201 {
                return cut_at.elapsed();
            }
            attempt += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    let (fenced_after, written_after) = tokio::join!(fence, majority);
    let new_leader = cluster.leader().await;
    assert!(new_leader.is_some_and(|l| l != leader), "{round}: the majority's leader is {new_leader:?}");
    cluster.heal();
    cluster.wait_converged(Duration::from_secs(60)).await.expect("converged after healing");
    let status = cluster.status(leader).await.expect("old leader answers");
    assert_eq!(status.role, "follower", "{round}: the old leader follows after healing");
    (fenced_after, written_after)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_behind_a_one_way_cut_steps_down_and_the_majority_writes() {
    if !namespaces_available() {
        if std::env::var_os("CORRAL_SKIP_PARTITIONS").is_some() {
            println!("one-way cut test switched off (CORRAL_SKIP_PARTITIONS)");
            return;
        }
        panic!("partitions need root, ip and nft; set CORRAL_SKIP_PARTITIONS=1 to switch this test off");
    }
    let dir = tempfile::Builder::new().prefix("corral-oneway-").tempdir().expect("tempdir");
    let pid = std::process::id();
    let network = Network::Namespaces { tag: format!("cow{:04x}", pid % 0xffff), subnet: 230 + (pid % 20) as u8 };
    let mut cluster = Cluster::create(3, network, corral_bin(), dir.path().to_path_buf()).expect("cluster");
    for id in cluster.ids() {
        cluster.start(id).expect("start");
    }
    cluster.wait_converged(Duration::from_secs(60)).await.expect("converged");
    let (status, org) = post(&cluster, 1, "/api/admin/organizations", ADMIN_KEY, &json!({ "name": "one-way" })).await;
    assert_eq!(status, 201, "{org}");
    let org_key = org["apiKey"].as_str().expect("apiKey").to_string();

    for (deaf, round) in [(true, "deaf"), (false, "mute")] {
        let leader = cluster.leader().await.expect("a leader");
        let (fenced, written) = cut_and_check(&cluster, &org_key, leader, deaf, round).await;
        println!("{round} leader {leader}: fenced {fenced:?} after the cut, the majority wrote after {written:?}");
    }
}
