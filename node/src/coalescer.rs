//! [`Coalescer`]: many concurrent requests, few batched calls. Callers queue a request and wait
//! for its answer; one task takes everything waiting (up to `max_batch`) whenever one of
//! `max_in_flight` slots is free and runs the batch as one call, which answers each request on
//! its own. Under light load a request goes out at once, alone (after the runtime has polled
//! its sockets once more, so that requests read in the same turn join it); under heavy load,
//! requests pile up while the slots are busy and leave together, so the batch size follows the
//! load (the only timer is the floor's patience, below). A request never joins a call that
//! started before it was queued, which is what makes coalesced read-index rounds
//! linearizable.
//!
//! A free slot alone does not start a call while others run: the batch first grows to
//! `min_batch_while_busy` or waits for a running call to finish. Without that rule, the
//! requests arriving just after a large batch left went out one by one in the other free
//! slots, and under load half of all Raft entries and two thirds of the forwarded calls
//! carried a single request (benches/peers, region creations), each paying a call's, an
//! fsync's and a replication round's cost for one command.
//!
//! That wait is bounded: once the oldest request of the batch has waited half as long as
//! calls recently took ([`PATIENCE_SHARE`] of a moving average), the batch leaves as it is.
//! Under load the floor fills long before; under light load a request no longer waits out a
//! whole running call (the seeded simulation's clients, which send a request at a time, lost
//! a sixth of their operations to that wait).
//!
//! Used for the write path (proposals into one Raft entry on the leader; forwarded writes and
//! sandbox placements into one gRPC call from a follower) and for read-index rounds.
//! The queue is bounded: a full queue answers [`CoalesceError::Full`] at once.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tokio::time::{Duration, Instant};

/// How long, as a share of the calls' moving-average duration, the oldest request of a batch
/// waits for the batch to reach `min_batch_while_busy` beside running calls.
pub const PATIENCE_SHARE: f64 = 0.5;

/// The weight of the newest call in the moving average of call durations.
const DURATION_WEIGHT: f64 = 0.2;

/// How a [`Coalescer`] batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoalescerConfig {
    /// Requests that may wait; more are refused with [`CoalesceError::Full`].
    pub queue_capacity: usize,
    /// Most requests in one call.
    pub max_batch: usize,
    /// Calls running at once.
    pub max_in_flight: usize,
    /// While another call runs, a new one starts only with this many requests, once a
    /// running call has finished, or once its oldest request has waited [`PATIENCE_SHARE`] of
    /// the calls' average duration.
    pub min_batch_while_busy: usize,
}

/// Why a request got no answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CoalesceError {
    #[error("the queue is full")]
    Full,
    #[error("the batching task has stopped")]
    Stopped,
}

struct Waiting<Req, Rep> {
    request: Req,
    reply: oneshot::Sender<Rep>,
    queued_at: Instant,
}

/// A moving average of how long calls take, in microseconds (tokio's clock, which the
/// simulation controls).
#[derive(Default)]
struct CallDurations(AtomicU64);

impl CallDurations {
    fn record(&self, took: Duration) {
        let took = took.as_micros().min(u128::from(u64::MAX)) as u64;
        // One update at a time: two calls that finish together both count.
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |average| {
            let next = if average == 0 {
                took
            } else {
                (average as f64 * (1.0 - DURATION_WEIGHT) + took as f64 * DURATION_WEIGHT) as u64
            };
            Some(next.max(1))
        });
    }

    /// How long the oldest request of a batch waits for the floor; `None` (until a running call
    /// finishes) before any call has finished.
    fn patience(&self) -> Option<Duration> {
        match self.0.load(Ordering::Relaxed) {
            0 => None,
            average => Some(Duration::from_micros((average as f64 * PATIENCE_SHARE) as u64)),
        }
    }
}

/// The queue side of a coalescer; cheap to clone. The batching task stops when the last clone
/// is dropped.
pub struct Coalescer<Req, Rep> {
    queue: mpsc::Sender<Waiting<Req, Rep>>,
}

impl<Req, Rep> Clone for Coalescer<Req, Rep> {
    fn clone(&self) -> Self {
        Coalescer { queue: self.queue.clone() }
    }
}

impl<Req: Send + 'static, Rep: Send + 'static> Coalescer<Req, Rep> {
    /// Starts the batching task (on the current tokio runtime). `run` gets a batch and must
    /// answer one reply per request, in order; a request left without one sees
    /// [`CoalesceError::Stopped`]. `path` labels the metrics.
    pub fn start<F, Fut>(path: &'static str, config: CoalescerConfig, run: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Rep>> + Send + 'static,
    {
        let (queue, waiting) = mpsc::channel(config.queue_capacity.max(1));
        tokio::spawn(drive(path, config, waiting, run));
        Coalescer { queue }
    }

    /// Queues `request` and waits for its answer.
    pub async fn call(&self, request: Req) -> Result<Rep, CoalesceError> {
        let (reply, answer) = oneshot::channel();
        self.queue.try_send(Waiting { request, reply, queued_at: Instant::now() }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => CoalesceError::Full,
            mpsc::error::TrySendError::Closed(_) => CoalesceError::Stopped,
        })?;
        answer.await.map_err(|_| CoalesceError::Stopped)
    }
}

async fn drive<Req, Rep, F, Fut>(
    path: &'static str,
    config: CoalescerConfig,
    mut waiting: mpsc::Receiver<Waiting<Req, Rep>>,
    run: F,
) where
    Req: Send + 'static,
    Rep: Send + 'static,
    F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Vec<Rep>> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(config.max_in_flight.max(1)));
    let max_batch = config.max_batch.max(1);
    let min_while_busy = config.min_batch_while_busy.clamp(1, max_batch);
    let running = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(Notify::new());
    let durations = Arc::new(CallDurations::default());
    loop {
        // A slot first: while every slot is busy, requests gather in the queue.
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let Some(first) = waiting.recv().await else { return };
        let give_up_at = durations.patience().map(|patience| first.queued_at + patience);
        let out_of_patience = async move {
            match give_up_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(out_of_patience);
        let mut batch = vec![first];
        // Let the runtime poll its sockets once first: requests that arrived with this one
        // are still being read, and they join this call instead of the next.
        tokio::task::yield_now().await;
        take_waiting(&mut waiting, &mut batch, max_batch);
        // Other calls running: grow the batch, or wait for one of them to finish, but not
        // longer than the oldest request's patience.
        while batch.len() < min_while_busy {
            let one_finished = finished.notified();
            if running.load(Ordering::Acquire) == 0 {
                break;
            }
            tokio::select! {
                _ = one_finished => break,
                _ = &mut out_of_patience => break,
                next = waiting.recv() => match next {
                    Some(next) => {
                        batch.push(next);
                        take_waiting(&mut waiting, &mut batch, max_batch);
                    }
                    None => break,
                },
            }
        }
        metrics::histogram!("corral_coalesced_batch_size", "path" => path).record(batch.len() as f64);
        metrics::gauge!("corral_coalescer_queue_depth", "path" => path).set(waiting.len() as f64);
        let (requests, replies): (Vec<Req>, Vec<oneshot::Sender<Rep>>) =
            batch.into_iter().map(|w| (w.request, w.reply)).unzip();
        let call = run(requests);
        running.fetch_add(1, Ordering::AcqRel);
        let (running, finished, durations) = (running.clone(), finished.clone(), durations.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let answers = call.await;
            durations.record(started.elapsed());
            for (reply, answer) in replies.into_iter().zip(answers) {
                // The caller may have given up (its client went away); the answer is dropped.
                let _ = reply.send(answer);
            }
            running.fetch_sub(1, Ordering::AcqRel);
            drop(slot);
            finished.notify_waiters();
        });
    }
}

/// Moves what is waiting now into `batch`, up to `max_batch` requests in all.
fn take_waiting<T>(waiting: &mut mpsc::Receiver<T>, batch: &mut Vec<T>, max_batch: usize) {
    while batch.len() < max_batch {
        match waiting.try_recv() {
            Ok(next) => batch.push(next),
            Err(_) => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    fn config(queue_capacity: usize, max_in_flight: usize) -> CoalescerConfig {
        CoalescerConfig { queue_capacity, max_batch: 64, max_in_flight, min_batch_while_busy: 1 }
    }

    #[tokio::test]
    async fn requests_waiting_behind_a_busy_call_leave_together_and_each_gets_its_own_answer() {
        let calls = Arc::new(AtomicUsize::new(0));
        let counted = calls.clone();
        let doubler = Coalescer::start("test", config(100, 1), move |batch: Vec<u32>| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                batch.into_iter().map(|n| n * 2).collect::<Vec<_>>()
            }
        });
        // One request takes the only slot; the 49 that queue while it runs leave together.
        let first = tokio::spawn({
            let doubler = doubler.clone();
            async move { doubler.call(0).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let rest = futures_join((1..50).map(|n| {
            let doubler = doubler.clone();
            async move { doubler.call(n).await }
        }))
        .await;
        assert_eq!(first.await.ok(), Some(Ok(0)));
        for (n, answer) in (1..50).zip(rest) {
            assert_eq!(answer, Ok(n * 2));
        }
        assert_eq!(calls.load(Ordering::SeqCst), 2, "the 49 requests behind the first share one call");
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_instead_of_waiting() {
        let (release, released) = tokio::sync::watch::channel(false);
        let stuck = Coalescer::start("test", config(2, 1), move |batch: Vec<u32>| {
            let mut released = released.clone();
            async move {
                let _ = released.wait_for(|r| *r).await;
                batch
            }
        });
        // One call holds the only slot; two more fill the queue.
        let first = tokio::spawn({
            let stuck = stuck.clone();
            async move { stuck.call(1).await }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let queued: Vec<_> = (2..4)
            .map(|n| {
                let stuck = stuck.clone();
                tokio::spawn(async move { stuck.call(n).await })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(20)).await;
        let refused = tokio::time::timeout(Duration::from_secs(1), stuck.call(9)).await;
        assert_eq!(refused, Ok(Err(CoalesceError::Full)));
        let _ = release.send(true);
        assert_eq!(first.await.ok(), Some(Ok(1)));
        for (n, q) in (2..4).zip(queued) {
            assert_eq!(q.await.ok(), Some(Ok(n)));
        }
    }

    type Sizes = Arc<std::sync::Mutex<Vec<usize>>>;
    type Pending = tokio::task::JoinHandle<Result<u32, CoalesceError>>;

    /// A coalescer (4 slots, at least 4 requests beside a running call) whose calls record
    /// their batch sizes and wait for the returned gate to open; one call, for `first`, is
    /// already running.
    async fn one_call_running(first: u32) -> (tokio::sync::watch::Sender<bool>, Coalescer<u32, u32>, Sizes, Pending) {
        let (open, gate) = tokio::sync::watch::channel(false);
        let busy = CoalescerConfig { queue_capacity: 100, max_batch: 64, max_in_flight: 4, min_batch_while_busy: 4 };
        let sizes = Sizes::default();
        let seen = sizes.clone();
        let coalescer = Coalescer::start("test", busy, move |batch: Vec<u32>| {
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(batch.len());
            let mut gate = gate.clone();
            async move {
                let _ = gate.wait_for(|open| *open).await;
                batch
            }
        });
        let running = spawn_call(&coalescer, first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        (open, coalescer, sizes, running)
    }

    fn spawn_call(coalescer: &Coalescer<u32, u32>, n: u32) -> Pending {
        let coalescer = coalescer.clone();
        tokio::spawn(async move { coalescer.call(n).await })
    }

    fn sizes_now(sizes: &Sizes) -> Vec<usize> {
        sizes.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    #[tokio::test]
    async fn beside_a_running_call_a_new_one_waits_until_its_batch_is_large_enough() {
        let (_open, coalescer, sizes, _running) = one_call_running(0).await;
        let mut rest: Vec<_> = (1..4).map(|n| spawn_call(&coalescer, n)).collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sizes_now(&sizes), vec![1], "three requests wait for a fourth");
        rest.push(spawn_call(&coalescer, 4));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sizes_now(&sizes), vec![1, 4], "four leave together beside the first");
    }

    #[tokio::test]
    async fn a_small_batch_leaves_once_the_running_call_finishes() {
        let (open, coalescer, sizes, running) = one_call_running(7).await;
        let second = spawn_call(&coalescer, 8);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sizes_now(&sizes), vec![1]);
        let _ = open.send(true);
        assert_eq!(running.await.ok(), Some(Ok(7)));
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), second).await.ok().and_then(|r| r.ok()), Some(Ok(8)));
        assert_eq!(sizes_now(&sizes), vec![1, 1], "alone, once nothing else ran");
    }

    #[tokio::test]
    async fn beside_a_running_call_a_small_batch_leaves_once_its_oldest_request_waited_half_a_call() {
        // Each call sleeps as many milliseconds as its first request says.
        let sizes = Sizes::default();
        let seen = sizes.clone();
        let busy = CoalescerConfig { queue_capacity: 100, max_batch: 64, max_in_flight: 4, min_batch_while_busy: 4 };
        let sleeper = Coalescer::start("test", busy, move |batch: Vec<u32>| {
            seen.lock().unwrap_or_else(|p| p.into_inner()).push(batch.len());
            async move {
                tokio::time::sleep(Duration::from_millis(u64::from(batch[0]))).await;
                batch
            }
        });
        // One call of a second: patience is now half a second.
        assert_eq!(sleeper.call(1_000).await, Ok(1_000));
        let long = spawn_call(&sleeper, 10_000);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let queued = Instant::now();
        let short = spawn_call(&sleeper, 1);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sizes_now(&sizes), vec![1, 1], "below the floor, within its patience: it waits");
        assert_eq!(tokio::time::timeout(Duration::from_secs(5), short).await.ok().and_then(|r| r.ok()), Some(Ok(1)));
        assert!(queued.elapsed() >= Duration::from_millis(480), "it waited its patience: {:?}", queued.elapsed());
        assert_eq!(sizes_now(&sizes), vec![1, 1, 1], "out of patience, it left alone beside the long call");
        assert!(!long.is_finished(), "the long call still runs");
        long.abort();
    }

    #[tokio::test]
    async fn a_request_left_without_an_answer_is_told_so() {
        let short = Coalescer::start("test", config(10, 1), |_batch: Vec<u32>| async { Vec::<u32>::new() });
        assert_eq!(short.call(1).await, Err(CoalesceError::Stopped));
    }

    async fn futures_join<F>(futures: impl Iterator<Item = F>) -> Vec<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let handles: Vec<_> = futures.map(tokio::spawn).collect();
        let mut out = Vec::new();
        for h in handles {
            out.push(h.await.expect("task"));
        }
        out
    }
}
