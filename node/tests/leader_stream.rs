//! The follower's streams to the leader (`corral_net::leader_stream`) against the real gRPC
//! service over loopback: each request gets its own answer, matched by id and sent as soon as
//! it is ready, not when the rest of its message is done; and a leader that goes away fails
//! the requests waiting on it at once, while the next request opens a new stream. The leader
//! behind the service is a stand-in that answers each request with its own id, so that the
//! test can see which answer went where; the cluster tests (`sandboxes.rs`, `operations.rs`)
//! run the real scheduler and write path behind it.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{free_port, one_node_raft, sandbox_request, EchoLeader};
use corral_model::{Command, Proposal, Rejection};
use corral_net::{CommittedWrite, NetError, PeerClients, PlacementReply, PlacementStreams, RaftLiveness, WriteStreams};
use tokio::sync::Notify;

/// The id an [`EchoLeader`] answer carries.
fn echoed(reply: Result<PlacementReply, NetError>) -> String {
    match reply {
        Ok(Ok(Err(Rejection::NoCapacity { region_id }))) => region_id,
        other => panic!("unexpected answer {other:?}"),
    }
}

/// A leader's gRPC service on `port`, on a runtime of its own (built on a thread of its own,
/// outside the test's runtime), once it listens: dropping the returned runtime ends the server
/// and every connection and stream it holds, as a dead process would.
async fn serve(port: u16, release: Arc<Notify>) -> tokio::runtime::Runtime {
    let runtime = std::thread::spawn(move || build_server(port, release)).join().expect("server");
    wait_listening(port).await;
    runtime
}

fn build_server(port: u16, release: Arc<Notify>) -> tokio::runtime::Runtime {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("rt");
    let dir = tempfile::tempdir().expect("tempdir");
    let raft = runtime.block_on(async { one_node_raft(dir.path(), false).await.0 });
    let service = corral_net::unguarded_raft_transport(raft, Arc::new(EchoLeader { release }), RaftLiveness::default());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    runtime.spawn(async move {
        let _dir = dir;
        let _ = tonic::transport::Server::builder().add_service(service).serve(addr).await;
    });
    runtime
}

async fn wait_listening(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("nothing listens on {port}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_gets_its_own_answer_as_soon_as_it_is_ready() {
    let port = free_port();
    let release = Arc::new(Notify::new());
    let server = serve(port, release.clone()).await;
    let addr = format!("127.0.0.1:{port}");
    let streams = PlacementStreams::new(PeerClients::default());

    // A held request first, then 300 more on the same stream: every one comes back with its
    // own id, none waits behind the held one, which is answered only once released.
    let held = tokio::spawn({
        let (streams, addr) = (streams.clone(), addr.clone());
        async move { streams.call(&addr, sandbox_request("held-0")).await }
    });
    let many: Vec<_> = (0..300)
        .map(|i| {
            let (streams, addr) = (streams.clone(), addr.clone());
            tokio::spawn(async move { (i, streams.call(&addr, sandbox_request(&format!("s-{i}"))).await) })
        })
        .collect();
    for task in many {
        let (i, reply) = tokio::time::timeout(Duration::from_secs(20), task).await.expect("answered").expect("task");
        assert_eq!(echoed(reply), format!("s-{i}"));
    }
    assert!(!held.is_finished(), "the held request is answered only once released");
    release.notify_one();
    let reply = tokio::time::timeout(Duration::from_secs(20), held).await.expect("answered").expect("task");
    assert_eq!(echoed(reply), "held-0");
    tokio::task::spawn_blocking(move || drop(server)).await.expect("server stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_that_goes_away_fails_the_waiting_requests_and_the_next_one_opens_a_new_stream() {
    let port = free_port();
    let release = Arc::new(Notify::new());
    let first = serve(port, release.clone()).await;
    let addr = format!("127.0.0.1:{port}");
    let streams = PlacementStreams::new(PeerClients::default());
    assert_eq!(echoed(streams.call(&addr, sandbox_request("s-first")).await), "s-first");

    let waiting: Vec<_> = (0..10)
        .map(|i| {
            let (streams, addr) = (streams.clone(), addr.clone());
            tokio::spawn(async move { streams.call(&addr, sandbox_request(&format!("hang-{i}"))).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    // The leader's process dies: its runtime, server, connections and streams go at once.
    tokio::task::spawn_blocking(move || first.shutdown_background()).await.expect("stopped");
    for task in waiting {
        let reply = tokio::time::timeout(Duration::from_secs(20), task).await.expect("not left waiting").expect("task");
        assert!(reply.is_err(), "a request on the lost stream fails (the caller retries it): {reply:?}");
    }

    let second = serve(port, release).await;
    let mut answered = None;
    for _ in 0..100 {
        match streams.call(&addr, sandbox_request("s-again")).await {
            Ok(reply) => {
                answered = Some(reply);
                break;
            }
            // The channel may need a moment to reconnect.
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    assert_eq!(echoed(Ok(answered.expect("a new stream answers"))), "s-again");
    tokio::task::spawn_blocking(move || drop(second)).await.expect("server stopped");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_forwarded_proposal_gets_its_own_answer() {
    let port = free_port();
    let server = serve(port, Arc::new(Notify::new())).await;
    let addr = format!("127.0.0.1:{port}");
    let streams = WriteStreams::new(PeerClients::default());
    let writes: Vec<_> = (0..200)
        .map(|i| {
            let (streams, addr) = (streams.clone(), addr.clone());
            tokio::spawn(async move {
                let mut proposal = Proposal::new(Command::DeleteRegion { id: format!("r-{i}") }, 1);
                proposal.idempotency_key = Some(format!("k-{i}"));
                (i, streams.call(&addr, proposal).await)
            })
        })
        .collect();
    for task in writes {
        let (i, reply) = tokio::time::timeout(Duration::from_secs(20), task).await.expect("answered").expect("task");
        match reply {
            Ok(Ok(CommittedWrite { response: Err(Rejection::NoCapacity { region_id }), .. })) => {
                assert_eq!(region_id, format!("k-{i}"))
            }
            other => panic!("unexpected answer {other:?}"),
        }
    }
    tokio::task::spawn_blocking(move || drop(server)).await.expect("server stopped");
}
