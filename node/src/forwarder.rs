//! [`Forwarder`]: what a follower sends to the leader. Proposals and sandbox requests go on
//! long-lived streams to the leader ([`corral_net::leader_stream`]): each leaves as soon as
//! the stream's writer is free and its answer comes back on its own, so none waits for a
//! batch to fill; a leader built before those streams gets them in batched calls
//! (`ForwardWrites`, `PlaceSandboxes`), as many as wait together in one call. Read-index
//! requests that wait together share one round, which answers every read that was waiting
//! before it started (see [`crate::coalescer`]). Each request gets its own answer, and the
//! caller ([`crate::cluster::RaftCluster`]) keeps retrying it on its own while leadership
//! moves.

use std::future::Future;
use std::time::Duration;

use corral_model::{Proposal, SandboxRequest};
use corral_net::leader_stream::StreamedCall;
use corral_net::{
    CommittedWrite, ForwardError, LeaderStreams, NetError, PeerClients, PlacementReply, PlacementStreams, WriteStreams,
};

use crate::coalescer::{CoalesceError, Coalescer, CoalescerConfig};

/// A forwarded request's answer: the leader's, or why the call failed.
type Forwarded<T> = Result<Result<T, ForwardError>, NetError>;

/// Batches per destination: a queue as deep as the leader's, a few calls in flight. Four
/// slots measured better than sixteen (sandboxes 9,030/s against 7,803/s at 256 connections,
/// same run; benches/peers/run): fewer, larger calls cost less CPU on a saturated machine.
/// For the same reason a call starts beside running ones only with 16 requests (or once the
/// oldest has waited half a call): with none,
/// two thirds of the forwarded calls carried one request (region creations, 256 connections).
const FORWARD_BATCHING: CoalescerConfig =
    CoalescerConfig { queue_capacity: 16_384, max_batch: 512, max_in_flight: 4, min_batch_while_busy: 16 };

/// The follower's calls to the leader; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    writes: WriteStreams,
    placements: PlacementStreams,
    /// Batched unary calls, for a leader that does not serve the streams.
    batched_writes: Coalescer<(String, Proposal), Forwarded<CommittedWrite>>,
    batched_placements: Coalescer<(String, SandboxRequest), Result<PlacementReply, NetError>>,
    read_indexes: Coalescer<(String, ()), Forwarded<u64>>,
}

impl Forwarder {
    /// Starts the batching tasks; every call has `call_timeout` as its deadline.
    pub fn start(clients: PeerClients, call_timeout: Duration) -> Forwarder {
        let writes = WriteStreams::new(clients.clone());
        let c = clients.clone();
        let batched_writes =
            Coalescer::start("forward_writes", FORWARD_BATCHING, move |batch: Vec<(String, Proposal)>| {
                let clients = c.clone();
                per_leader(batch, move |addr, proposals| {
                    let clients = clients.clone();
                    async move { clients.forward_writes(&addr, &proposals, call_timeout).await }
                })
            });
        let placements = PlacementStreams::new(clients.clone());
        let c = clients.clone();
        let batched_placements =
            Coalescer::start("forward_placements", FORWARD_BATCHING, move |batch: Vec<(String, SandboxRequest)>| {
                let clients = c.clone();
                per_leader(batch, move |addr, requests| {
                    let clients = clients.clone();
                    async move { clients.place_sandboxes(&addr, &requests, call_timeout).await }
                })
            });
        let read_indexes = Coalescer::start("forward_read_index", FORWARD_BATCHING, move |batch: Vec<(String, ())>| {
            let clients = clients.clone();
            // One round per leader address: every read waiting on it shares the answer.
            per_leader(batch, move |addr, waiting| {
                let clients = clients.clone();
                async move { Ok(vec![clients.read_index(&addr, call_timeout).await?; waiting.len()]) }
            })
        });
        Forwarder { writes, placements, batched_writes, batched_placements, read_indexes }
    }

    /// Commits `proposal` on the leader at `addr`.
    pub async fn write(&self, addr: String, proposal: Proposal, timeout: Duration) -> Forwarded<CommittedWrite> {
        streamed_or_batched(&self.writes, &self.batched_writes, addr, proposal, timeout).await
    }

    /// Hands a sandbox request to the scheduler of the leader at `addr`.
    pub async fn place(
        &self,
        addr: String,
        request: SandboxRequest,
        timeout: Duration,
    ) -> Result<PlacementReply, NetError> {
        streamed_or_batched(&self.placements, &self.batched_placements, addr, request, timeout).await
    }

    /// A read index from the leader at `addr`, from a round that started after this call.
    pub async fn read_index(&self, addr: String, timeout: Duration) -> Forwarded<u64> {
        within(timeout, addr.clone(), self.read_indexes.call((addr, ()))).await
    }
}

/// Sends `request` on the stream to the leader at `addr`, or, to a leader that does not serve
/// the stream, in a batched call; waits at most `timeout` for the answer.
async fn streamed_or_batched<C: StreamedCall>(
    streams: &LeaderStreams<C>,
    batched: &Coalescer<(String, C::Request), Forwarded<C::Answer>>,
    addr: String,
    request: C::Request,
    timeout: Duration,
) -> Forwarded<C::Answer>
where
    C::Request: Clone,
{
    let deadline = tokio::time::Instant::now() + timeout;
    match tokio::time::timeout_at(deadline, streams.call(&addr, request.clone())).await {
        Ok(Err(NetError::Unsupported { .. })) => {
            let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
            within(remaining, addr.clone(), batched.call((addr, request))).await
        }
        Ok(answer) => answer,
        Err(_) => Err(NetError::Rpc { addr, status: "deadline exceeded while waiting".into() }),
    }
}

/// Waits at most `timeout` for a coalesced call's answer; a full queue is the leader being
/// overloaded as far as the caller can tell.
async fn within<T>(
    timeout: Duration,
    addr: String,
    answer: impl Future<Output = Result<Forwarded<T>, CoalesceError>>,
) -> Forwarded<T> {
    match tokio::time::timeout(timeout, answer).await {
        Ok(Ok(answer)) => answer,
        Ok(Err(CoalesceError::Full)) => Ok(Err(ForwardError::Overloaded)),
        Ok(Err(CoalesceError::Stopped)) => Ok(Err(ForwardError::Unavailable("the forwarder has stopped".into()))),
        Err(_) => Err(NetError::Rpc { addr, status: "deadline exceeded while waiting".into() }),
    }
}

/// Sends a batch addressed to leaders as one call per address (one address, but for a
/// leader change while the batch gathered), and answers each request in its place.
async fn per_leader<Req, Rep, F, Fut>(batch: Vec<(String, Req)>, call: F) -> Vec<Result<Rep, NetError>>
where
    Rep: Clone,
    F: Fn(String, Vec<Req>) -> Fut,
    Fut: Future<Output = Result<Vec<Rep>, NetError>>,
{
    let total = batch.len();
    let mut groups: Vec<(String, Vec<usize>, Vec<Req>)> = Vec::new();
    for (position, (addr, request)) in batch.into_iter().enumerate() {
        match groups.iter_mut().find(|(a, _, _)| *a == addr) {
            Some((_, positions, requests)) => {
                positions.push(position);
                requests.push(request);
            }
            None => groups.push((addr, vec![position], vec![request])),
        }
    }
    let mut answers: Vec<Option<Result<Rep, NetError>>> = vec![None; total];
    for (addr, positions, requests) in groups {
        match call(addr, requests).await {
            Ok(replies) => {
                for (position, reply) in positions.into_iter().zip(replies) {
                    answers[position] = Some(Ok(reply));
                }
            }
            Err(e) => {
                for position in positions {
                    answers[position] = Some(Err(e.clone()));
                }
            }
        }
    }
    // `forward_writes` and `place_sandboxes` check that every request got a reply.
    answers.into_iter().map(|a| a.unwrap_or_else(|| Err(missing_reply()))).collect()
}

fn missing_reply() -> NetError {
    NetError::Decode { addr: String::new(), reason: "the leader's batch reply missed a request".into() }
}
