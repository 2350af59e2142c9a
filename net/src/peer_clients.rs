//! [`PeerClients`]: the gRPC client side, one lazily connected channel per peer address, with
//! a deadline on every call.

use corral_model::codec;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use corral_model::{Proposal, SandboxRequest};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use serde::Serialize;
use tonic::codegen::http::Uri;
use tonic::transport::{Channel, Endpoint};

use crate::leader_ops::{
    CommittedWrite, ForwardError, LeadershipProbe, MembershipChange, MembershipChanged, PlacementReply, PreVoteReply,
    PreVoteRequest, ProbeReply,
};
use crate::pb::raft_transport_client::RaftTransportClient;
use crate::pb::Payload;
use crate::peer_tcp::{self, PeerDialer};
use crate::{tls, NetError, CONNECT_TIMEOUT, MAX_MESSAGE_BYTES};

/// A pool of lazily connected channels to peers, keyed by address. tonic channels reconnect
/// on their own, so one per peer is kept for the life of the node.
///
/// With TLS ([`PeerClients::with_tls`]) every channel is mutual TLS from the cluster CA; the
/// default, plaintext, is only for single-process tests that never dial a peer, and for the
/// simulation ([`PeerClients::with_dialer`]).
#[derive(Clone, Default)]
pub struct PeerClients {
    channels: Arc<Mutex<HashMap<String, Channel>>>,
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Opens the connections instead of the host's TCP (the simulation's network).
    dialer: Option<Arc<dyn PeerDialer>>,
}

impl PeerClients {
    pub fn with_tls(tls: &tls::ClusterTls) -> Self {
        Self { channels: Arc::default(), tls: Some(tls.grpc_client()), dialer: None }
    }

    /// Plaintext gRPC over the connections `dialer` opens: the simulation's seam, which runs
    /// the same channels, calls and deadlines over a simulated network.
    pub fn with_dialer(dialer: Arc<dyn PeerDialer>) -> Self {
        Self { channels: Arc::default(), tls: None, dialer: Some(dialer) }
    }

    /// Whether a connection to `addr` is refused within `timeout` (nothing listens there,
    /// while the host answers): how the election driver tells a dead leader from a silent one.
    pub async fn refuses_connections(&self, addr: &str, timeout: Duration) -> bool {
        match &self.dialer {
            None => crate::liveness::refuses_connections(addr, timeout).await,
            Some(dialer) => match tokio::time::timeout(timeout, dialer.dial(addr)).await {
                Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
                Ok(Ok(_)) | Err(_) => false,
            },
        }
    }

    fn client(&self, addr: &str) -> Result<RaftTransportClient<Channel>, NetError> {
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        let channel = match channels.get(addr) {
            Some(c) => c.clone(),
            None => {
                let bad =
                    |e: tonic::transport::Error| NetError::BadAddress { addr: addr.to_string(), reason: e.to_string() };
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}")).map_err(bad)?;
                if let Some(tls) = &self.tls {
                    endpoint = endpoint.tls_config(tls.clone()).map_err(bad)?;
                }
                let endpoint = endpoint
                    .connect_timeout(CONNECT_TIMEOUT)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(5));
                // Our own dialler (no Nagle, and the unacknowledged-data bound of
                // `peer_tcp`), or the injected one; tonic adds TLS and the connect timeout
                // around it.
                let channel = match &self.dialer {
                    None => endpoint.connect_with_connector_lazy(tower::service_fn(peer_tcp::dial)),
                    Some(dialer) => {
                        let dialer = dialer.clone();
                        endpoint.connect_with_connector_lazy(tower::service_fn(move |uri: Uri| {
                            let dialing = peer_tcp::authority(&uri).map(|authority| dialer.dial(authority));
                            async move { dialing?.await.map(TokioIo::new) }
                        }))
                    }
                };
                channels.insert(addr.to_string(), channel.clone());
                channel
            }
        };
        Ok(RaftTransportClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES))
    }

    pub(crate) async fn call<Req: Serialize, Reply: DeserializeOwned>(
        &self,
        addr: &str,
        method: Method,
        request: &Req,
        timeout: Duration,
    ) -> Result<Reply, NetError> {
        let body =
            codec::encode(request).map_err(|e| NetError::Decode { addr: addr.to_string(), reason: e.to_string() })?;
        self.call_encoded(addr, method, body, timeout).await
    }

    /// [`call`](Self::call) with the request already encoded (`corral_model::codec`).
    pub(crate) async fn call_encoded<Reply: DeserializeOwned>(
        &self,
        addr: &str,
        method: Method,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Reply, NetError> {
        let mut client = self.client(addr)?;
        let mut request = tonic::Request::new(Payload { body });
        request.set_timeout(timeout);
        let reply = match method {
            Method::AppendEntries => client.append_entries(request).await,
            Method::Vote => client.vote(request).await,
            Method::InstallSnapshot => client.install_snapshot(request).await,
            Method::ForwardWrites => client.forward_writes(request).await,
            Method::PlaceSandboxes => client.place_sandboxes(request).await,
            Method::ReadIndex => client.read_index(request).await,
            Method::TriggerElection => client.trigger_election(request).await,
            Method::PreVote => client.pre_vote(request).await,
            Method::ProbeLeadership => client.probe_leadership(request).await,
            Method::ChangeMembership => client.change_membership(request).await,
        };
        let reply = reply.map_err(|status| status_error(addr, &status))?;
        codec::decode(&reply.get_ref().body)
            .map_err(|e| NetError::Decode { addr: addr.to_string(), reason: e.to_string() })
    }

    /// Opens a stream of `kind` to the leader at `addr` (see [`crate::leader_stream`]):
    /// `requests` are the messages it sends; the answer is the stream of messages back. No
    /// deadline: the stream lives as long as it works, and HTTP/2 keep-alive ends it when the
    /// peer stops answering.
    pub(crate) async fn open_leader_stream(
        &self,
        kind: crate::leader_stream::StreamKind,
        addr: &str,
        requests: impl futures::Stream<Item = Payload> + Send + 'static,
    ) -> Result<tonic::Streaming<Payload>, NetError> {
        use crate::leader_stream::StreamKind;
        let mut client = self.client(addr)?;
        let opening = async {
            match kind {
                StreamKind::Placements => client.placement_stream(requests).await,
                StreamKind::Writes => client.write_stream(requests).await,
            }
        };
        match tokio::time::timeout(CONNECT_TIMEOUT * 4, opening).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(status_error(addr, &status)),
            Err(_) => {
                Err(NetError::Unreachable { addr: addr.to_string(), reason: "the leader stream did not open".into() })
            }
        }
    }

    /// Sends a batch of proposals to the leader at `addr` in one call; returns once every one
    /// is committed and applied there (or refused), with an answer for each, in order.
    pub async fn forward_writes(
        &self,
        addr: &str,
        proposals: &[Proposal],
        timeout: Duration,
    ) -> Result<Vec<Result<CommittedWrite, ForwardError>>, NetError> {
        let replies: Vec<Result<CommittedWrite, ForwardError>> =
            self.call(addr, Method::ForwardWrites, &proposals, timeout).await?;
        same_length(addr, proposals.len(), replies)
    }

    /// Hands a batch of sandbox requests to the scheduler of the leader at `addr` in one call;
    /// an answer for each, in order.
    pub async fn place_sandboxes(
        &self,
        addr: &str,
        requests: &[SandboxRequest],
        timeout: Duration,
    ) -> Result<Vec<PlacementReply>, NetError> {
        let replies: Vec<PlacementReply> = self.call(addr, Method::PlaceSandboxes, &requests, timeout).await?;
        same_length(addr, requests.len(), replies)
    }

    /// Asks the voter at `addr` whether it still follows this (fenced) leader.
    pub async fn probe_leadership(
        &self,
        addr: &str,
        probe: &LeadershipProbe,
        timeout: Duration,
    ) -> Result<ProbeReply, NetError> {
        self.call(addr, Method::ProbeLeadership, probe, timeout).await
    }

    /// Asks the voter at `addr` whether it would elect the candidate now.
    pub async fn pre_vote(
        &self,
        addr: &str,
        request: &PreVoteRequest,
        timeout: Duration,
    ) -> Result<PreVoteReply, NetError> {
        self.call(addr, Method::PreVote, request, timeout).await
    }

    /// Asks the node at `addr` to campaign for leadership now.
    pub async fn trigger_election(&self, addr: &str, timeout: Duration) -> Result<Result<(), ForwardError>, NetError> {
        self.call(addr, Method::TriggerElection, &(), timeout).await
    }

    /// Hands a membership change to the leader at `addr`.
    pub async fn change_membership(
        &self,
        addr: &str,
        change: &MembershipChange,
        timeout: Duration,
    ) -> Result<Result<MembershipChanged, ForwardError>, NetError> {
        self.call(addr, Method::ChangeMembership, change, timeout).await
    }

    /// Asks the leader at `addr` for a read index.
    pub async fn read_index(&self, addr: &str, timeout: Duration) -> Result<Result<u64, ForwardError>, NetError> {
        self.call(addr, Method::ReadIndex, &(), timeout).await
    }
}

/// What a gRPC status from `addr` means to the caller.
pub(crate) fn status_error(addr: &str, status: &tonic::Status) -> NetError {
    match status.code() {
        tonic::Code::Unavailable => NetError::Unreachable { addr: addr.to_string(), reason: status.to_string() },
        tonic::Code::Unimplemented => {
            NetError::Unsupported { addr: addr.to_string(), what: status.message().to_string() }
        }
        _ => NetError::Rpc { addr: addr.to_string(), status: status.to_string() },
    }
}

/// A batch call's replies, checked to answer every request of the batch.
fn same_length<T>(addr: &str, sent: usize, replies: Vec<T>) -> Result<Vec<T>, NetError> {
    if replies.len() == sent {
        Ok(replies)
    } else {
        Err(NetError::Decode {
            addr: addr.to_string(),
            reason: format!("{} replies to {sent} requests", replies.len()),
        })
    }
}

#[derive(Clone, Copy)]
pub(crate) enum Method {
    AppendEntries,
    Vote,
    InstallSnapshot,
    ForwardWrites,
    PlaceSandboxes,
    ReadIndex,
    TriggerElection,
    PreVote,
    ProbeLeadership,
    ChangeMembership,
}

#[cfg(test)]
mod tests {
    use super::status_error;
    use crate::NetError;

    #[test]
    fn a_leader_without_a_call_is_told_apart_from_one_that_is_down_or_failing() {
        let unsupported = status_error("a:1", &tonic::Status::unimplemented("PlacementStream"));
        assert!(matches!(unsupported, NetError::Unsupported { .. }), "{unsupported:?}");
        let down = status_error("a:1", &tonic::Status::unavailable("connection refused"));
        assert!(matches!(down, NetError::Unreachable { .. }), "{down:?}");
        let failing = status_error("a:1", &tonic::Status::internal("boom"));
        assert!(matches!(failing, NetError::Rpc { .. }), "{failing:?}");
    }
}
