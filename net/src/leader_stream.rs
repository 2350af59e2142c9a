//! [`LeaderStreams`]: a follower's requests to the leader over one long-lived gRPC stream per
//! leader address and kind: sandbox requests to its scheduler ([`PlacementStreams`],
//! `PlacementStream` in `proto/raft.proto`) and proposals to its write path ([`WriteStreams`],
//! `WriteStream`).
//!
//! Why a stream and not batched unary calls: a unary call costs a new HTTP/2 stream, headers
//! and trailers each way and a pass through the service stack, so the follower had to gather
//! requests into few calls, and a request waited for its batch to fill beside the calls in
//! flight (measured: 1.3 ms of a follower's 6.6 ms for sandbox creations at 64 connections).
//! On a stream a message costs one DATA frame: a request leaves as soon as the writer is free,
//! together with whatever queued while it was busy or while the runtime polled its sockets once
//! more (a `yield_now`: without it, 1.04 requests per message at 64 connections, each paying a
//! frame, a write and a wake-up on both nodes; with it 4.9, for microseconds), and each answer
//! comes back as soon as the leader has it, matched to its request by an id, not when the
//! slowest request of its batch is done (the leader's side yields once too before it drains its
//! answers, so those of one applied entry share a message: 11.6 per message instead of 4.9). The leader still coalesces: placements into the
//! scheduler's batches, proposals into shared Raft entries.
//!
//! One stream per address and kind, opened on the first request and kept while it works. When
//! it fails (the leader died, the connection dropped, HTTP/2 keep-alive gave up on a paused
//! peer), every request waiting on it gets the error, which the caller retries (requests carry
//! idempotency keys), and the next request opens a new one. A leader built before these
//! streams answers `Unimplemented`: requests then get [`NetError::Unsupported`] and the caller
//! falls back to the batched unary calls (`PlaceSandboxes`, `ForwardWrites`).
//!
//! Bounded everywhere: the queue per stream ([`QUEUE_CAPACITY`]; full is `Overloaded`), the
//! messages handed to HTTP/2 ([`MESSAGES_IN_FLIGHT`]), the requests per message
//! ([`MAX_BATCH`]). Requests waiting on the leader are bounded by the leader's queues, which
//! answer `Overloaded` when full.

use std::collections::{BTreeMap, HashMap};
use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use corral_model::{codec, Proposal, Rejection, SandboxRequest, SharedSandbox};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::leader_ops::{CommittedWrite, ForwardError};
use crate::pb::Payload;
use crate::{NetError, PeerClients};

/// Requests that may wait for the stream's writer; more are answered `Overloaded`.
pub const QUEUE_CAPACITY: usize = 16_384;
/// Most requests (or answers) in one message.
pub const MAX_BATCH: usize = 512;
/// Messages handed to HTTP/2 and not yet sent.
pub const MESSAGES_IN_FLIGHT: usize = 16;

/// Which of the leader's streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamKind {
    /// Sandbox requests to the scheduler.
    Placements,
    /// Proposals to the write path.
    Writes,
}

impl StreamKind {
    /// The label of its metrics.
    pub fn label(self) -> &'static str {
        match self {
            StreamKind::Placements => "placements",
            StreamKind::Writes => "writes",
        }
    }
}

/// What one kind of stream carries: a request type, and what the leader answers to it
/// (`Result<Self::Answer, ForwardError>`).
pub trait StreamedCall: Send + Sync + 'static {
    type Request: Serialize + DeserializeOwned + Send + 'static;
    type Answer: Serialize + DeserializeOwned + Send + 'static;
    const KIND: StreamKind;
}

/// Sandbox requests to the leader's scheduler.
pub struct Placements;

impl StreamedCall for Placements {
    type Request = SandboxRequest;
    type Answer = Result<SharedSandbox, Rejection>;
    const KIND: StreamKind = StreamKind::Placements;
}

/// Proposals to the leader's write path.
pub struct Writes;

impl StreamedCall for Writes {
    type Request = Proposal;
    type Answer = CommittedWrite;
    const KIND: StreamKind = StreamKind::Writes;
}

/// The leader's answer to one request.
pub type Reply<C> = Result<<C as StreamedCall>::Answer, ForwardError>;
/// A request as it travels on the stream: an id the answer carries back, and the request.
pub type StreamedRequest<C> = (u64, <C as StreamedCall>::Request);
/// An answer as it travels on the stream.
pub type StreamedReply<C> = (u64, Reply<C>);

/// A follower's sandbox-request streams.
pub type PlacementStreams = LeaderStreams<Placements>;
/// A follower's proposal streams.
pub type WriteStreams = LeaderStreams<Writes>;

/// Where a request's answer goes.
type AnswerTo<C> = oneshot::Sender<Result<Reply<C>, NetError>>;

/// What a request waiting in the queue carries: itself, and where its answer goes.
struct Queued<C: StreamedCall> {
    request: C::Request,
    answer: AnswerTo<C>,
}

/// The requests sent on one stream and not answered yet, by id: ordered, so that a failed
/// stream answers them in the order they were sent (the simulation replays a seed exactly).
struct Waiting<C: StreamedCall> {
    next_id: u64,
    answers: BTreeMap<u64, AnswerTo<C>>,
    /// Set once the stream has failed: what every later request is answered.
    failed: Option<NetError>,
}

impl<C: StreamedCall> Default for Waiting<C> {
    fn default() -> Self {
        Waiting { next_id: 0, answers: BTreeMap::new(), failed: None }
    }
}

impl<C: StreamedCall> Waiting<C> {
    fn fail(&mut self, error: NetError) {
        for (_, answer) in std::mem::take(&mut self.answers) {
            let _ = answer.send(Err(error.clone()));
        }
        self.failed.get_or_insert(error);
    }
}

/// A follower's streams of one kind, one per leader address; cheap to clone.
pub struct LeaderStreams<C: StreamedCall> {
    clients: PeerClients,
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<Queued<C>>>>>,
    kind: PhantomData<C>,
}

impl<C: StreamedCall> Clone for LeaderStreams<C> {
    fn clone(&self) -> Self {
        LeaderStreams { clients: self.clients.clone(), queues: self.queues.clone(), kind: PhantomData }
    }
}

impl<C: StreamedCall> LeaderStreams<C> {
    pub fn new(clients: PeerClients) -> Self {
        LeaderStreams { clients, queues: Arc::default(), kind: PhantomData }
    }

    /// Hands `request` to the leader at `addr` and waits for its answer (the caller bounds
    /// the wait). Must run on a tokio runtime: it may start the stream's tasks.
    pub async fn call(&self, addr: &str, request: C::Request) -> Result<Reply<C>, NetError> {
        let (answer, answered) = oneshot::channel();
        let mut queued = Queued { request, answer };
        // A queue found closed belongs to a stream that just ended: the second try opens a
        // new one.
        for _ in 0..2 {
            let queue = self.queue(addr);
            match queue.try_send(queued) {
                Ok(()) => {
                    return answered.await.unwrap_or_else(|_| {
                        Err(NetError::Unreachable { addr: addr.to_string(), reason: "the leader stream ended".into() })
                    })
                }
                Err(mpsc::error::TrySendError::Full(_)) => return Ok(Err(ForwardError::Overloaded)),
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    self.forget(addr, &queue);
                    queued = back;
                }
            }
        }
        Err(NetError::Unreachable { addr: addr.to_string(), reason: "the leader stream keeps closing".into() })
    }

    /// The queue of the working stream to `addr`, opening one if there is none.
    fn queue(&self, addr: &str) -> mpsc::Sender<Queued<C>> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queues.get(addr).filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run_stream::<C>(self.clients.clone(), addr.to_string(), requests));
        queues.insert(addr.to_string(), queue.clone());
        queue
    }

    fn forget(&self, addr: &str, closed: &mpsc::Sender<Queued<C>>) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if queues.get(addr).is_some_and(|q| q.same_channel(closed)) {
            queues.remove(addr);
        }
    }
}

/// One stream's life: opens it, then writes whatever queued as one message at a time while a
/// second task reads the answers. Ends when the stream fails; dropping `requests` then
/// closes the queue, so the next request opens a new stream.
async fn run_stream<C: StreamedCall>(clients: PeerClients, addr: String, mut requests: mpsc::Receiver<Queued<C>>) {
    let label = C::KIND.label();
    let (to_leader, outgoing) = mpsc::channel::<Payload>(MESSAGES_IN_FLIGHT);
    let outgoing = futures::stream::unfold(outgoing, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let waiting = Arc::new(Mutex::new(Waiting::<C>::default()));
    let mut inbound = match clients.open_leader_stream(C::KIND, &addr, outgoing).await {
        Ok(inbound) => inbound,
        Err(error) => {
            requests.close();
            while let Ok(queued) = requests.try_recv() {
                let _ = queued.answer.send(Err(error.clone()));
            }
            return;
        }
    };
    metrics::counter!("corral_leader_streams_opened_total", "stream" => label).increment(1);
    let (reader_done, mut reader_ended) = oneshot::channel::<()>();
    let answers = waiting.clone();
    let reader_addr = addr.clone();
    tokio::spawn(async move {
        let error = loop {
            match inbound.message().await {
                Ok(Some(message)) => match codec::decode::<Vec<StreamedReply<C>>>(&message.body) {
                    Ok(replies) => {
                        let mut waiting = answers.lock().unwrap_or_else(|p| p.into_inner());
                        for (id, reply) in replies {
                            if let Some(answer) = waiting.answers.remove(&id) {
                                let _ = answer.send(Ok(reply));
                            }
                        }
                    }
                    Err(e) => break NetError::Decode { addr: reader_addr.clone(), reason: e.to_string() },
                },
                Ok(None) => {
                    break NetError::Unreachable {
                        addr: reader_addr.clone(),
                        reason: "the leader ended the stream".into(),
                    }
                }
                Err(status) => break crate::peer_clients::status_error(&reader_addr, &status),
            }
        };
        tracing::debug!(addr = %reader_addr, stream = label, %error, "leader stream ended");
        answers.lock().unwrap_or_else(|p| p.into_inner()).fail(error);
        drop(reader_done);
    });
    let mut batch: Vec<StreamedRequest<C>> = Vec::with_capacity(MAX_BATCH);
    loop {
        let first = tokio::select! {
            biased;
            _ = &mut reader_ended => break,
            first = requests.recv() => match first {
                Some(first) => first,
                None => break,
            },
        };
        let mut queued = vec![first];
        // Let the runtime poll its sockets once before taking the rest: requests that arrived
        // with this one are still being read, and one message for several of them costs the
        // follower and the leader one frame, one write and one wake-up instead of several.
        tokio::task::yield_now().await;
        while queued.len() < MAX_BATCH {
            match requests.try_recv() {
                Ok(more) => queued.push(more),
                Err(_) => break,
            }
        }
        {
            let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(error) = waiting.failed.clone() {
                for q in queued {
                    let _ = q.answer.send(Err(error.clone()));
                }
                break;
            }
            for q in queued {
                let id = waiting.next_id;
                waiting.next_id += 1;
                waiting.answers.insert(id, q.answer);
                batch.push((id, q.request));
            }
        }
        metrics::histogram!("corral_leader_stream_batch_size", "stream" => label, "direction" => "requests")
            .record(batch.len() as f64);
        let sent = match codec::encode(&batch) {
            Ok(body) => {
                batch.clear();
                to_leader.send(Payload { body }).await.is_ok()
            }
            Err(e) => {
                // Cannot happen for these types; answered rather than left waiting.
                let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
                for (id, _) in batch.drain(..) {
                    if let Some(answer) = waiting.answers.remove(&id) {
                        let _ = answer.send(Err(NetError::Decode { addr: addr.clone(), reason: e.to_string() }));
                    }
                }
                true
            }
        };
        if !sent {
            let error = NetError::Unreachable { addr: addr.clone(), reason: "the leader stream closed".into() };
            waiting.lock().unwrap_or_else(|p| p.into_inner()).fail(error);
            break;
        }
    }
    // Requests still queued see their answer channel dropped: "the leader stream ended".
    requests.close();
}
