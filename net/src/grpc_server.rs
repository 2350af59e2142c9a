//! The gRPC service a node serves to its peers: Raft's own RPCs go to the local
//! `openraft::Raft`; the leader operations (forwarded writes, read index, sandbox placement,
//! campaign, membership) go to the node's [`LeaderService`]. Every call must come from a node
//! of the cluster (mutual TLS, and a certificate whose role is `node`).

use std::sync::Arc;

use corral_model::{codec, Proposal, SandboxRequest};
use corral_raft_types::{NodeId, Raft, TypeConfig};
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::leader_ops::{LeaderService, LeadershipProbe, MembershipChange, PreVoteRequest};
use crate::leader_stream::{Placements, Reply, StreamedCall, StreamedReply, StreamedRequest, Writes};
use crate::liveness::RaftLiveness;
use crate::pb::raft_transport_server::{RaftTransport, RaftTransportServer};
use crate::pb::Payload;
use crate::raft_network::SnapshotChunk;
use crate::{tls, MAX_MESSAGE_BYTES};

pub(crate) fn encode<T: Serialize>(value: &T) -> Result<Payload, tonic::Status> {
    codec::encode(value).map(|body| Payload { body }).map_err(|e| tonic::Status::internal(e.to_string()))
}

fn decode_request<T: DeserializeOwned>(payload: &Payload) -> Result<T, tonic::Status> {
    codec::decode(&payload.body).map_err(|e| tonic::Status::invalid_argument(e.to_string()))
}

/// Answers of one leader stream waiting to be sent; the tasks that serve its requests wait
/// beyond this.
const STREAM_ANSWERS_IN_FLIGHT: usize = 4_096;

/// The messages a leader stream sends back.
pub type LeaderStreamAnswers = futures::stream::BoxStream<'static, Result<Payload, tonic::Status>>;

/// The gRPC service a node serves to its peers.
pub struct RaftTransportService {
    raft: Raft,
    leader: Arc<dyn LeaderService>,
    liveness: RaftLiveness,
}

/// The gRPC service with its peer check in front.
pub type GuardedRaftTransport = tonic::service::interceptor::InterceptedService<
    RaftTransportServer<RaftTransportService>,
    fn(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status>,
>;

/// The gRPC service without the peer check ([`unguarded_raft_transport`]).
pub type UnguardedRaftTransport = RaftTransportServer<RaftTransportService>;

/// Builds the tonic service for `raft` and the node's leader operations, with message size
/// limits. Every
/// call must come from a peer whose certificate names a node ([`tls::peer_role`]): the TLS
/// handshake already proved the certificate comes from the cluster CA, and this refuses a
/// runner's certificate from the same CA. Serve it with [`tls::ClusterTls::grpc_server`].
/// Accepted AppendEntries are recorded in `liveness` (this node heard from its leader).
pub fn raft_transport_server(
    raft: Raft,
    leader: Arc<dyn LeaderService>,
    liveness: RaftLiveness,
) -> GuardedRaftTransport {
    tonic::service::interceptor::InterceptedService::new(
        unguarded_raft_transport(raft, leader, liveness),
        require_node_peer,
    )
}

/// The same service without the peer-certificate check, for a transport that has no TLS and
/// only nodes on it: the simulation's network (`corral-sim`). A node serves
/// [`raft_transport_server`].
pub fn unguarded_raft_transport(
    raft: Raft,
    leader: Arc<dyn LeaderService>,
    liveness: RaftLiveness,
) -> UnguardedRaftTransport {
    RaftTransportServer::new(RaftTransportService { raft, leader, liveness })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// Admits a gRPC call only from a node of this cluster.
fn require_node_peer(request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    let role = request.peer_certs().and_then(|chain| chain.first().and_then(tls::peer_role));
    if role == Some(tls::Role::Node) {
        Ok(request)
    } else {
        metrics::counter!("corral_tls_refused_total", "transport" => "grpc").increment(1);
        Err(tonic::Status::permission_denied("peer is not a node of this cluster"))
    }
}

#[tonic::async_trait]
impl RaftTransport for RaftTransportService {
    async fn append_entries(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let rpc: AppendEntriesRequest<TypeConfig> = decode_request(request.get_ref())?;
        let term = rpc.vote.leader_id().term;
        let kind = if rpc.entries.is_empty() { "commit_or_heartbeat" } else { "entries" };
        let started = std::time::Instant::now();
        let reply = self.raft.append_entries(rpc).await;
        metrics::histogram!("corral_raft_append_entries_handling_seconds", "kind" => kind)
            .record(started.elapsed().as_secs_f64());
        self.liveness.record_append_received(term, &reply);
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn vote(&self, request: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let rpc: VoteRequest<NodeId> = decode_request(request.get_ref())?;
        let reply = self.raft.vote(rpc).await;
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn install_snapshot(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let rpc: InstallSnapshotRequest<TypeConfig> = decode_request::<SnapshotChunk>(request.get_ref())?.into();
        let leader_vote = rpc.vote;
        let reply = self.raft.install_snapshot(rpc).await;
        self.liveness.record_snapshot_received(&leader_vote, &reply);
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn forward_writes(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let proposals: Vec<Proposal> = decode_request(request.get_ref())?;
        let replies = self.leader.write_batch(proposals).await;
        Ok(tonic::Response::new(encode(&replies)?))
    }

    async fn place_sandboxes(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let requests: Vec<SandboxRequest> = decode_request(request.get_ref())?;
        let replies = self.leader.place_sandboxes(requests).await;
        Ok(tonic::Response::new(encode(&replies)?))
    }

    type PlacementStreamStream = LeaderStreamAnswers;

    /// Each request of each message goes to the scheduler at once, as its own task; each
    /// answer goes back in the next message out, with the others ready by then (see
    /// [`crate::leader_stream`]).
    async fn placement_stream(
        &self,
        request: tonic::Request<tonic::Streaming<Payload>>,
    ) -> Result<tonic::Response<Self::PlacementStreamStream>, tonic::Status> {
        let answers =
            answer_stream::<Placements, _, _>(request.into_inner(), self.leader.clone(), |leader, r| async move {
                leader.place_sandbox(r).await
            });
        Ok(tonic::Response::new(answers))
    }

    type WriteStreamStream = LeaderStreamAnswers;

    /// The same for proposals, into the leader's write path.
    async fn write_stream(
        &self,
        request: tonic::Request<tonic::Streaming<Payload>>,
    ) -> Result<tonic::Response<Self::WriteStreamStream>, tonic::Status> {
        let answers =
            answer_stream::<Writes, _, _>(request.into_inner(), self.leader.clone(), |leader, p| async move {
                leader.write_one(p).await
            });
        Ok(tonic::Response::new(answers))
    }

    async fn read_index(&self, _request: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let reply = self.leader.read_index().await;
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn pre_vote(&self, request: tonic::Request<Payload>) -> Result<tonic::Response<Payload>, tonic::Status> {
        let pre_vote: PreVoteRequest = decode_request(request.get_ref())?;
        let reply = self.leader.pre_vote(pre_vote).await;
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn probe_leadership(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let probe: LeadershipProbe = decode_request(request.get_ref())?;
        let reply = crate::liveness::answer_probe(&self.raft, &self.liveness, &probe);
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn trigger_election(
        &self,
        _request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let reply = self.leader.campaign().await;
        Ok(tonic::Response::new(encode(&reply)?))
    }

    async fn change_membership(
        &self,
        request: tonic::Request<Payload>,
    ) -> Result<tonic::Response<Payload>, tonic::Status> {
        let change: MembershipChange = decode_request(request.get_ref())?;
        let reply = self.leader.change_membership(change).await;
        Ok(tonic::Response::new(encode(&reply)?))
    }
}

/// Serves one follower's stream of `C`: each request of each message is handed to `serve` as
/// its own task, and each answer goes back in the next message out, with the others ready by
/// then. The stream ends once the follower ends its side and every request it sent is
/// answered.
fn answer_stream<C, F, Fut>(
    mut inbound: tonic::Streaming<Payload>,
    leader: Arc<dyn LeaderService>,
    serve: F,
) -> LeaderStreamAnswers
where
    C: StreamedCall,
    F: Fn(Arc<dyn LeaderService>, C::Request) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Reply<C>> + Send + 'static,
{
    let label = C::KIND.label();
    let (answered, answers) = tokio::sync::mpsc::channel::<StreamedReply<C>>(STREAM_ANSWERS_IN_FLIGHT);
    tokio::spawn(async move {
        loop {
            let message = match inbound.message().await {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(status) => {
                    tracing::debug!(%status, stream = label, "a follower's stream ended");
                    break;
                }
            };
            let requests: Vec<StreamedRequest<C>> = match codec::decode(&message.body) {
                Ok(requests) => requests,
                Err(e) => {
                    tracing::warn!(error = %e, stream = label, "an undecodable message; ending the stream");
                    break;
                }
            };
            for (id, request) in requests {
                let answered = answered.clone();
                let serving = serve(leader.clone(), request);
                tokio::spawn(async move {
                    let reply = serving.await;
                    // The follower has gone: nobody waits for this answer.
                    let _ = answered.send((id, reply)).await;
                });
            }
        }
    });
    Box::pin(futures::stream::unfold(answers, move |mut answers| async move {
        let first = answers.recv().await?;
        let mut batch = vec![first];
        // As the follower's writer does: once around the runtime first, so that the answers
        // of requests that complete together (one applied entry) go out in one message.
        tokio::task::yield_now().await;
        while batch.len() < crate::leader_stream::MAX_BATCH {
            match answers.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        metrics::histogram!("corral_leader_stream_batch_size", "stream" => label, "direction" => "answers")
            .record(batch.len() as f64);
        Some((encode(&batch), answers))
    }))
}
