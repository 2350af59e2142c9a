//! Security with real processes:
//! - gRPC and QUIC between nodes are mutual TLS from the cluster CA: a certificate from a
//!   foreign CA is refused at the handshake, and a runner's certificate (right CA, wrong role)
//!   may neither call Raft RPCs nor gossip;
//! - REST over HTTPS; no key, a wrong key and another organization's key get their documented
//!   statuses; per-key rate limits answer 429; oversized headers 431; connections over the
//!   limit are closed;
//! - secrets are stored only hashed or encrypted and never logged (checked for every test by
//!   the harness when a cluster is dropped, and here explicitly for a snapshot manager password).

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::TestCluster;
use corral_net::quic::{client_endpoint, ALPN_GOSSIP, ALPN_RUNNER, SERVER_NAME};
use corral_net::tls::{CertDir, ClusterTls, Role};
use corral_net::{NetError, PeerClients};
use serde_json::json;

/// A second, foreign CA with a node and a runner certificate of its own.
fn foreign_certs(dir: &std::path::Path) -> CertDir {
    let foreign = CertDir::new(dir);
    foreign.init().expect("foreign CA");
    foreign.issue(Role::Node, "node-x", &["127.0.0.1".into()]).expect("foreign node");
    foreign.issue(Role::Runner, "runner-x", &[]).expect("foreign runner");
    foreign
}

/// Presents `foreign`'s certificate `name` while trusting the real cluster CA, so only the
/// cluster's refusal of the certificate can fail the connection.
fn impostor(cluster: &CertDir, foreign: &CertDir, name: &str) -> ClusterTls {
    ClusterTls::load(&cluster.ca_cert(), &foreign.cert(name), &foreign.key(name)).expect("impostor tls")
}

/// Whether a QUIC connection with `tls` and `alpn` to `addr` stays open (the node accepted
/// it) rather than failing or being closed by the node within a second.
async fn quic_accepted(tls: &ClusterTls, alpn: &[u8], addr: SocketAddr) -> bool {
    let endpoint = client_endpoint(tls, alpn, Duration::from_secs(5)).expect("client endpoint");
    let connecting = match endpoint.connect(addr, SERVER_NAME) {
        Ok(c) => c,
        Err(_) => return false,
    };
    let connection = match tokio::time::timeout(Duration::from_secs(5), connecting).await {
        Ok(Ok(c)) => c,
        _ => return false,
    };
    // TLS 1.3: the client finishes first; the node's verdict on our certificate arrives as a
    // close (alert) right after.
    let accepted = tokio::time::timeout(Duration::from_secs(1), connection.closed()).await.is_err();
    connection.close(0u32.into(), b"done");
    endpoint.wait_idle().await;
    accepted
}

#[test]
fn nodes_refuse_peers_without_a_certificate_from_the_cluster_ca() {
    let c = TestCluster::start(3, &[]);
    let leader = c.wait_leader(Duration::from_secs(20));
    let dir = tempfile::tempdir().expect("tempdir");
    let foreign = foreign_certs(dir.path());
    let raft_addr = c.node(leader).raft_addr.clone();
    let quic_addr: SocketAddr = raft_addr.parse().expect("socket addr");

    let genuine_node = c.certs.load("node-2").expect("node cert");
    let genuine_runner = c.certs.load("runner").expect("runner cert");
    let foreign_node = impostor(&c.certs, &foreign, "node-x");
    let foreign_runner = impostor(&c.certs, &foreign, "runner-x");

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime");
    runtime.block_on(async {
        // gRPC: a node of this cluster is served ...
        let read_index = PeerClients::with_tls(&genuine_node).read_index(&raft_addr, Duration::from_secs(5)).await;
        assert!(matches!(read_index, Ok(Ok(_))), "a cluster node reads the leader's index: {read_index:?}");
        // ... a foreign CA's node fails the handshake ...
        let refused = PeerClients::with_tls(&foreign_node).read_index(&raft_addr, Duration::from_secs(5)).await;
        assert!(refused.is_err(), "foreign CA must be refused: {refused:?}");
        // ... a runner of this cluster gets through TLS but is not a node ...
        let runner = PeerClients::with_tls(&genuine_runner).read_index(&raft_addr, Duration::from_secs(5)).await;
        match runner {
            Err(NetError::Rpc { status, .. }) => assert!(status.contains("not a node"), "{status}"),
            other => panic!("a runner certificate must not call Raft RPCs: {other:?}"),
        }
        // ... and plaintext gets nowhere.
        let plain = PeerClients::default().read_index(&raft_addr, Duration::from_secs(5)).await;
        assert!(plain.is_err(), "plaintext must be refused: {plain:?}");

        // QUIC: gossip only from nodes of this cluster, runner sessions only from its runners.
        assert!(quic_accepted(&genuine_node, ALPN_GOSSIP, quic_addr).await, "a cluster node may gossip");
        assert!(!quic_accepted(&foreign_node, ALPN_GOSSIP, quic_addr).await, "foreign CA may not gossip");
        assert!(!quic_accepted(&genuine_runner, ALPN_GOSSIP, quic_addr).await, "a runner may not gossip");
        assert!(quic_accepted(&genuine_runner, ALPN_RUNNER, quic_addr).await, "a cluster runner may connect");
        assert!(!quic_accepted(&foreign_runner, ALPN_RUNNER, quic_addr).await, "foreign runner refused");
        assert!(!quic_accepted(&genuine_node, ALPN_RUNNER, quic_addr).await, "a node is not a runner");
    });

    // The refusals are counted where an operator looks.
    let metrics = c.http.get(c.url(leader, "/metrics")).send().and_then(|r| r.text()).expect("metrics");
    for transport in ["grpc", "quic"] {
        assert!(
            metrics.contains(&format!("corral_tls_refused_total{{transport=\"{transport}\"}}")),
            "no {transport} refusal counted"
        );
    }
    // The cluster itself is unharmed.
    c.wait_converged(Duration::from_secs(20));
}

/// Sends raw bytes to `addr` and returns what comes back before the node closes or 3 s pass.
fn raw_exchange(addr: &str, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(3))).expect("timeout");
    let _ = stream.write_all(request);
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply);
    String::from_utf8_lossy(&reply).into_owned()
}

#[test]
fn https_statuses_rate_limits_and_stored_secrets() {
    let c = TestCluster::start_https(
        3,
        // Roomy enough for the harness's own polling with the admin key (about 10/s per node).
        &["--rate-limit-per-second", "50", "--rate-limit-burst", "100", "--max-connections", "16"],
    );
    let leader = c.wait_leader(Duration::from_secs(20));
    assert!(c.url(leader, "/").starts_with("https://"));

    // Plain HTTP to the HTTPS port is not served.
    let plain = reqwest::blocking::Client::new().get(format!("http://{}/healthz", c.node(leader).api_addr)).send();
    assert!(plain.map(|r| !r.status().is_success()).unwrap_or(true), "plain HTTP must not be served");

    let (_, key_a) = c.create_organization(leader, "org-a");
    let (org_b, key_b) = c.create_organization(leader, "org-b");
    let (s, region) = c.call(
        leader,
        "POST",
        "/api/regions",
        Some(&key_a),
        Some(&json!({ "name": "vault", "snapshotManagerUrl": "https://snapshots.example.com" })),
        &[],
    );
    assert_eq!(s, 201, "{region}");
    let region_id = region["id"].as_str().expect("id").to_string();
    let password = region["snapshotManagerPassword"].as_str().expect("password shown once").to_string();

    // The documented statuses: no key 401, a wrong key 401, another organization's key 404
    // (ids do not leak), a key with another organization's header 403, an org key on admin 403.
    let path = format!("/api/regions/{region_id}");
    let (s, body) = c.call(leader, "GET", &path, None, None, &[]);
    assert_eq!((s, body["code"].as_str()), (401, Some("unauthorized")), "{body}");
    let (s, _) = c.call(leader, "GET", &path, Some("wrong-key-0123456789"), None, &[]);
    assert_eq!(s, 401);
    let (s, body) = c.call(leader, "GET", &path, Some(&key_b), None, &[]);
    assert_eq!((s, body["code"].as_str()), (404, Some("not_found")), "{body}");
    let (s, _) = c.call(leader, "GET", "/api/regions", Some(&key_a), None, &[("X-Organization-ID", &org_b)]);
    assert_eq!(s, 403);
    let (s, _) = c.call(leader, "GET", "/api/admin/runners", Some(&key_a), None, &[]);
    assert_eq!(s, 403);

    // Rate limit: key A over its burst gets 429 with Retry-After; key B is unaffected.
    let limited = (0..1_000)
        .map(|_| {
            c.http.get(c.url(leader, "/api/regions?consistency=stale")).bearer_auth(&key_a).send().expect("request")
        })
        .find(|r| r.status().as_u16() == 429)
        .expect("key A must hit its rate limit");
    assert!(limited.headers().contains_key("retry-after"));
    let body: serde_json::Value = limited.json().expect("json");
    assert_eq!(body["code"], "rate_limited", "{body}");
    let (s, _) = c.call(leader, "GET", "/api/regions", Some(&key_b), None, &[]);
    assert_eq!(s, 200, "another key has its own bucket");

    // The CLI speaks HTTPS when told which CA to trust.
    let ctl = std::process::Command::new(env!("CARGO_BIN_EXE_corral"))
        .args(["ctl", "--addr", &c.url(leader, ""), "-o", "json", "region", "list"])
        .arg("--cacert")
        .arg(c.certs.ca_cert())
        .env("CORRAL_TOKEN", &key_b)
        .output()
        .expect("corral ctl");
    assert!(ctl.status.success(), "ctl over https: {}", String::from_utf8_lossy(&ctl.stderr));

    // The password is stored encrypted, and no secret is in any log (the harness checks
    // every remembered secret again on drop).
    let leaks: Vec<_> = c.leaked_secrets().into_iter().filter(|(s, _)| s == &password).collect();
    assert!(leaks.is_empty(), "snapshot manager password stored in clear: {leaks:?}");
}

#[test]
fn oversized_headers_and_excess_connections_are_refused() {
    let c = TestCluster::start(1, &["--max-connections", "4"]);
    let node = c.wait_leader(Duration::from_secs(20));
    let addr = c.node(node).api_addr.clone();

    let big = "x".repeat(64 * 1024);
    let reply = raw_exchange(&addr, format!("GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: {big}\r\n\r\n").as_bytes());
    assert!(reply.starts_with("HTTP/1.1 431"), "oversized headers: {:?}", reply.lines().next());

    // Four idle connections hold every slot; a fifth is closed at once without an answer.
    let held: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&addr).expect("connect")).collect();
    std::thread::sleep(Duration::from_millis(300));
    let reply = raw_exchange(&addr, b"GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n");
    assert!(reply.is_empty(), "a connection over the limit must be closed: {reply:?}");
    drop(held);
    std::thread::sleep(Duration::from_millis(300));
    let (s, _) = c.call(node, "GET", "/healthz", None, None, &[]);
    assert_eq!(s, 200, "slots free again once the idle connections go");
}

/// The leak scan is not blind: a secret planted in a node's data directory, and one planted
/// in its log, are both found (and removed again, so the scan on drop passes).
#[test]
fn the_leak_scan_finds_planted_secrets() {
    let mut c = TestCluster::start(1, &[]);
    c.wait_leader(Duration::from_secs(30));
    let in_data = "planted-in-data-0123456789abcdef";
    let in_log = "planted-in-log-0123456789abcdef";
    c.remember_secrets(&[&json!({ "apiKey": in_data, "token": in_log })]);
    assert!(c.leaked_secrets().is_empty(), "nothing planted yet");
    let data_dir = c.node(1).data_dir.clone();
    let planted = data_dir.join("db").join("planted.txt");
    std::fs::create_dir_all(planted.parent().expect("parent")).expect("db dir");
    std::fs::write(&planted, format!("some bytes {in_data} more bytes")).expect("plant in data");
    c.stop(1);
    let log = c.node(1).log_path.clone();
    let original = std::fs::read(&log).expect("node log");
    let mut with_secret = original.clone();
    with_secret.extend_from_slice(format!("INFO request token={in_log}\n").as_bytes());
    std::fs::write(&log, with_secret).expect("plant in log");
    let leaks = c.leaked_secrets();
    assert!(leaks.iter().any(|(s, p)| s == in_data && *p == planted), "{leaks:?}");
    assert!(leaks.iter().any(|(s, p)| s == in_log && *p == log), "{leaks:?}");
    assert_eq!(leaks.len(), 2, "{leaks:?}");
    std::fs::remove_file(&planted).expect("unplant");
    std::fs::write(&log, original).expect("restore log");
    assert!(c.leaked_secrets().is_empty());
}
