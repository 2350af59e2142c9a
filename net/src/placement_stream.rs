//! [`PlacementStreams`]: a follower's sandbox requests to the leader's scheduler over one
//! long-lived gRPC stream per leader address (`PlacementStream` in `proto/raft.proto`).
//!
//! Why a stream and not batched unary calls: a unary call costs a new HTTP/2 stream, headers
//! and trailers each way and a pass through the service stack, so the follower had to gather
//! requests into few calls, and a request waited for its batch to fill beside the calls in
//! flight (measured: 1.3 ms of a follower's 6.6 ms at 64 connections). On a stream a message
//! costs one DATA frame: a request leaves as soon as the writer is free, together with
//! whatever queued while it was busy, and each answer comes back as soon as the scheduler
//! gives it, matched to its request by an id, not when the slowest request of its batch is
//! done.
//!
//! One stream per address, opened on the first request and kept while it works. When it
//! fails (the leader died, the connection dropped, HTTP/2 keep-alive gave up on a paused
//! peer), every request waiting on it gets the error, which the caller retries (requests
//! carry idempotency keys), and the next request opens a new one. A leader built before
//! this stream answers `Unimplemented`: requests then get [`NetError::Unsupported`] and the
//! caller falls back to the unary `PlaceSandboxes`.
//!
//! Bounded everywhere: the queue per stream ([`QUEUE_CAPACITY`]; full is `Overloaded`), the
//! messages handed to HTTP/2 ([`MESSAGES_IN_FLIGHT`]), the requests per message
//! ([`MAX_BATCH`]). Requests waiting on the leader are bounded by the leader's scheduler
//! queue, which answers `Overloaded` when full.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use corral_model::{codec, SandboxRequest};
use tokio::sync::{mpsc, oneshot};

use crate::leader_ops::{ForwardError, PlacementReply};
use crate::pb::Payload;
use crate::{NetError, PeerClients};

/// Requests that may wait for the stream's writer; more are answered `Overloaded`.
pub const QUEUE_CAPACITY: usize = 16_384;
/// Most requests (or answers) in one message.
pub const MAX_BATCH: usize = 512;
/// Messages handed to HTTP/2 and not yet sent.
pub const MESSAGES_IN_FLIGHT: usize = 16;

/// A request as it travels on the stream: an id the answer carries back, and the request.
pub type StreamedRequest = (u64, SandboxRequest);
/// An answer as it travels on the stream.
pub type StreamedReply = (u64, PlacementReply);

/// What a request waiting in the queue carries: itself, and where its answer goes.
struct Queued {
    request: SandboxRequest,
    answer: oneshot::Sender<Result<PlacementReply, NetError>>,
}

/// The requests sent on one stream and not answered yet.
#[derive(Default)]
struct Waiting {
    next_id: u64,
    answers: HashMap<u64, oneshot::Sender<Result<PlacementReply, NetError>>>,
    /// Set once the stream has failed: what every later request is answered.
    failed: Option<NetError>,
}

impl Waiting {
    fn fail(&mut self, error: NetError) {
        for (_, answer) in self.answers.drain() {
            let _ = answer.send(Err(error.clone()));
        }
        self.failed.get_or_insert(error);
    }
}

/// The follower's placement streams, one per leader address; cheap to clone.
#[derive(Clone)]
pub struct PlacementStreams {
    clients: PeerClients,
    queues: Arc<Mutex<HashMap<String, mpsc::Sender<Queued>>>>,
}

impl PlacementStreams {
    pub fn new(clients: PeerClients) -> Self {
        PlacementStreams { clients, queues: Arc::default() }
    }

    /// Hands `request` to the scheduler of the leader at `addr` and waits for its answer (the
    /// caller bounds the wait). Must run on a tokio runtime: it may start the stream's tasks.
    pub async fn place(&self, addr: &str, request: SandboxRequest) -> Result<PlacementReply, NetError> {
        let (answer, answered) = oneshot::channel();
        let mut queued = Queued { request, answer };
        // A queue found closed belongs to a stream that just ended: the second try opens a
        // new one.
        for _ in 0..2 {
            let queue = self.queue(addr);
            match queue.try_send(queued) {
                Ok(()) => {
                    return answered.await.unwrap_or_else(|_| {
                        Err(NetError::Unreachable {
                            addr: addr.to_string(),
                            reason: "the placement stream ended".into(),
                        })
                    })
                }
                Err(mpsc::error::TrySendError::Full(_)) => return Ok(Err(ForwardError::Overloaded)),
                Err(mpsc::error::TrySendError::Closed(back)) => {
                    self.forget(addr, &queue);
                    queued = back;
                }
            }
        }
        Err(NetError::Unreachable { addr: addr.to_string(), reason: "the placement stream keeps closing".into() })
    }

    /// The queue of the working stream to `addr`, opening one if there is none.
    fn queue(&self, addr: &str) -> mpsc::Sender<Queued> {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(queue) = queues.get(addr).filter(|q| !q.is_closed()) {
            return queue.clone();
        }
        let (queue, requests) = mpsc::channel(QUEUE_CAPACITY);
        tokio::spawn(run_stream(self.clients.clone(), addr.to_string(), requests));
        queues.insert(addr.to_string(), queue.clone());
        queue
    }

    fn forget(&self, addr: &str, closed: &mpsc::Sender<Queued>) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        if queues.get(addr).is_some_and(|q| q.same_channel(closed)) {
            queues.remove(addr);
        }
    }
}

/// One stream's life: opens it, then writes whatever queued as one message at a time while a
/// second task reads the answers. Ends when the stream fails; dropping `requests` then
/// closes the queue, so the next request opens a new stream.
async fn run_stream(clients: PeerClients, addr: String, mut requests: mpsc::Receiver<Queued>) {
    let (to_leader, outgoing) = mpsc::channel::<Payload>(MESSAGES_IN_FLIGHT);
    let outgoing = futures::stream::unfold(outgoing, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let mut inbound = match clients.open_placement_stream(&addr, outgoing).await {
        Ok(inbound) => inbound,
        Err(error) => {
            requests.close();
            while let Ok(queued) = requests.try_recv() {
                let _ = queued.answer.send(Err(error.clone()));
            }
            return;
        }
    };
    metrics::counter!("corral_placement_streams_opened_total").increment(1);
    let (reader_done, mut reader_ended) = oneshot::channel::<()>();
    let answers = waiting.clone();
    let reader_addr = addr.clone();
    tokio::spawn(async move {
        let error = loop {
            match inbound.message().await {
                Ok(Some(message)) => match codec::decode::<Vec<StreamedReply>>(&message.body) {
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
        tracing::debug!(addr = %reader_addr, %error, "placement stream ended");
        answers.lock().unwrap_or_else(|p| p.into_inner()).fail(error);
        drop(reader_done);
    });
    let mut batch: Vec<StreamedRequest> = Vec::with_capacity(MAX_BATCH);
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
        metrics::histogram!("corral_placement_stream_batch_size", "direction" => "requests").record(batch.len() as f64);
        let message = codec::encode(&batch);
        let ids: Vec<u64> = batch.drain(..).map(|(id, _)| id).collect();
        let sent = match message {
            Ok(body) => to_leader.send(Payload { body }).await.is_ok(),
            Err(e) => {
                // Cannot happen for these types; answered rather than left waiting.
                let mut waiting = waiting.lock().unwrap_or_else(|p| p.into_inner());
                for id in ids {
                    if let Some(answer) = waiting.answers.remove(&id) {
                        let _ = answer.send(Err(NetError::Decode { addr: addr.clone(), reason: e.to_string() }));
                    }
                }
                true
            }
        };
        if !sent {
            let error = NetError::Unreachable { addr: addr.clone(), reason: "the placement stream closed".into() };
            waiting.lock().unwrap_or_else(|p| p.into_inner()).fail(error);
            break;
        }
    }
    // Requests still queued see their answer channel dropped: "the placement stream ended".
    requests.close();
}
