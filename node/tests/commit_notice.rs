//! The held commit index (`commit_notice_delay_us`, Corral's patch of openraft in
//! `vendor/openraft`), on three in-process Rafts on RocksDB over real gRPC on loopback, with
//! openraft's heartbeats off, so that nothing but the patch decides when a commit index
//! reaches the followers:
//! - a write that follows a commit carries the new index, and no AppendEntries goes out with
//!   the index alone (upstream sends one to each follower after every commit);
//! - when no write follows, the index still reaches the followers alone once the delay is over,
//!   and they apply everything.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{free_ports, EchoLeader};
use corral_model::{Command, Proposal};
use corral_net::{GrpcNetworkFactory, GrpcPeer, RaftLiveness};
use corral_raft_types::{CorralNode, NodeId, ProposalBatch, Raft, TypeConfig};
use openraft::error::{InstallSnapshotError, RPCError, RaftError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};

/// Long beside the few milliseconds a write takes here, so that the writes below always come
/// within it.
const DELAY: Duration = Duration::from_millis(1_500);

/// AppendEntries the leader sent, by whether they carried entries.
#[derive(Default)]
struct Sent {
    with_entries: AtomicU64,
    commit_only: AtomicU64,
}

/// Corral's gRPC network, counting what goes out.
#[derive(Clone)]
struct CountingFactory {
    inner: GrpcNetworkFactory,
    sent: Arc<Sent>,
}

struct CountingPeer {
    inner: GrpcPeer,
    sent: Arc<Sent>,
}

impl RaftNetworkFactory<TypeConfig> for CountingFactory {
    type Network = CountingPeer;

    async fn new_client(&mut self, target: NodeId, node: &CorralNode) -> CountingPeer {
        CountingPeer { inner: self.inner.new_client(target, node).await, sent: self.sent.clone() }
    }
}

impl RaftNetwork<TypeConfig> for CountingPeer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, CorralNode, RaftError<NodeId>>> {
        let counter = if rpc.entries.is_empty() { &self.sent.commit_only } else { &self.sent.with_entries };
        counter.fetch_add(1, Ordering::SeqCst);
        self.inner.append_entries(rpc, option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, RPCError<NodeId, CorralNode, RaftError<NodeId, InstallSnapshotError>>>
    {
        self.inner.install_snapshot(rpc, option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, CorralNode, RaftError<NodeId>>> {
        self.inner.vote(rpc, option).await
    }
}

struct Member {
    raft: Raft,
    sent: Arc<Sent>,
    _dir: tempfile::TempDir,
}

async fn start_member(id: NodeId, port: u16) -> Member {
    let dir = tempfile::tempdir().expect("tempdir");
    let (log, sm, _shared) =
        corral_storage::open_storage(dir.path(), corral_storage::StorageConfig { fsync: false }).expect("storage");
    let config = openraft::Config {
        heartbeat_interval: 3_000,
        election_timeout_min: 10_000,
        election_timeout_max: 15_000,
        enable_heartbeat: false,
        enable_elect: false,
        commit_notice_delay_us: DELAY.as_micros() as u64,
        ..Default::default()
    }
    .validate()
    .expect("config");
    let sent = Arc::new(Sent::default());
    let network = CountingFactory { inner: GrpcNetworkFactory::default(), sent: sent.clone() };
    let raft = Raft::new(id, Arc::new(config), network, log, sm).await.expect("raft");
    // The service's leader operations (forwarding, placements) are not called here.
    let leader_ops = Arc::new(EchoLeader { release: Arc::new(tokio::sync::Notify::new()) });
    let service = corral_net::unguarded_raft_transport(raft.clone(), leader_ops, RaftLiveness::default());
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder().add_service(service).serve(addr).await;
    });
    Member { raft, sent, _dir: dir }
}

fn write(i: usize) -> ProposalBatch {
    ProposalBatch::from(Proposal::new(Command::DeleteRegion { id: format!("missing-{i}") }, 1))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commit_index_rides_the_next_write_and_reaches_idle_followers_alone_after_the_delay() {
    let base = free_ports(3);
    let mut members = Vec::new();
    for id in 1..=3u64 {
        members.push(start_member(id, base + id as u16 - 1).await);
    }
    let nodes: BTreeMap<NodeId, CorralNode> = (1..=3u64)
        .map(|id| {
            let addr = format!("127.0.0.1:{}", base + id as u16 - 1);
            (id, CorralNode { raft_addr: addr.clone(), api_addr: addr })
        })
        .collect();
    let leader = &members[0];
    leader.raft.initialize(nodes).await.expect("initialize");
    leader.raft.wait(Some(Duration::from_secs(20))).current_leader(1, "leader").await.expect("node 1 leads");
    // Settle: the leader's first entry (its blank log) and its commit reach both followers.
    for member in &members {
        let last = leader.raft.metrics().borrow().last_log_index;
        member.raft.wait(Some(Duration::from_secs(20))).applied_index_at_least(last, "settled").await.expect("settle");
    }

    // Writes one after another, each proposed once the one before is applied: each carries
    // the commit index of the one before, so none is sent alone (upstream: one per follower
    // after every write, 2 × WRITES).
    const WRITES: usize = 30;
    let commit_only_before = leader.sent.commit_only.load(Ordering::SeqCst);
    let with_entries_before = leader.sent.with_entries.load(Ordering::SeqCst);
    let started = std::time::Instant::now();
    let mut last_index = 0;
    for i in 0..WRITES {
        last_index = leader.raft.client_write(write(i)).await.expect("write").log_id.index;
    }
    let took = started.elapsed();
    let commit_only = leader.sent.commit_only.load(Ordering::SeqCst) - commit_only_before;
    let with_entries = leader.sent.with_entries.load(Ordering::SeqCst) - with_entries_before;
    assert!(with_entries >= WRITES as u64, "each write went to a follower ({with_entries} AppendEntries with entries)");
    if took < DELAY {
        assert_eq!(commit_only, 0, "a commit index went out alone although a write followed within the delay");
    } else {
        // A machine stalled past the delay may send a held index alone; never one per write.
        assert!(commit_only < WRITES as u64, "{commit_only} commit-only AppendEntries for {WRITES} writes");
    }

    // No write follows the last one: its commit index goes alone once the delay is over, and
    // both followers apply it (heartbeats are off; nothing else would tell them).
    for member in &members[1..] {
        member
            .raft
            .wait(Some(DELAY * 10))
            .applied_index_at_least(Some(last_index), "the last write's commit")
            .await
            .expect("a follower learns the last commit without another write");
    }
    assert!(
        leader.sent.commit_only.load(Ordering::SeqCst) > commit_only_before + commit_only,
        "the held commit index was sent alone"
    );
    for member in &members {
        let _ = member.raft.shutdown().await;
    }
}
