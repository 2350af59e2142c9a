//! [`CorralRuntime`]: openraft's tokio runtime with one change, its random numbers. openraft
//! draws its election timeouts from `AsyncRuntime::thread_rng()`; tokio's runtime answers
//! with `rand::thread_rng()`, seeded from the OS, so no two runs of a cluster elect alike.
//! Here a thread may install a seeded generator ([`seed_thread_rng`]): the simulation does,
//! once per seed, so that a seed replays exactly. Without it (every real node) the numbers
//! come from `rand::thread_rng()` as before.

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use openraft::{AsyncRuntime, OptionalSend, TokioRuntime};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

thread_local! {
    static SEEDED: RefCell<Option<StdRng>> = const { RefCell::new(None) };
}

/// From now on, openraft's random numbers on this thread come from `seed`.
pub fn seed_thread_rng(seed: u64) {
    SEEDED.with(|rng| *rng.borrow_mut() = Some(StdRng::seed_from_u64(seed)));
}

/// Back to the OS-seeded generator on this thread.
pub fn unseed_thread_rng() {
    SEEDED.with(|rng| *rng.borrow_mut() = None);
}

/// The generator openraft gets: the thread's seeded one when installed, else `thread_rng`.
#[derive(Debug, Default, Clone, Copy)]
pub struct RaftRng;

impl RaftRng {
    fn with<T>(f: impl FnOnce(&mut dyn RngCore) -> T) -> T {
        SEEDED.with(|seeded| match seeded.borrow_mut().as_mut() {
            Some(rng) => f(rng),
            None => f(&mut rand::thread_rng()),
        })
    }
}

impl RngCore for RaftRng {
    fn next_u32(&mut self) -> u32 {
        RaftRng::with(|r| r.next_u32())
    }
    fn next_u64(&mut self) -> u64 {
        RaftRng::with(|r| r.next_u64())
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        RaftRng::with(|r| r.fill_bytes(dest))
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand::Error> {
        RaftRng::with(|r| r.try_fill_bytes(dest))
    }
}

/// openraft's tokio runtime, with [`RaftRng`] for its random numbers.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CorralRuntime;

impl AsyncRuntime for CorralRuntime {
    type JoinError = <TokioRuntime as AsyncRuntime>::JoinError;
    type JoinHandle<T: OptionalSend + 'static> = <TokioRuntime as AsyncRuntime>::JoinHandle<T>;
    type Sleep = <TokioRuntime as AsyncRuntime>::Sleep;
    type Instant = <TokioRuntime as AsyncRuntime>::Instant;
    type TimeoutError = <TokioRuntime as AsyncRuntime>::TimeoutError;
    type Timeout<R, T: Future<Output = R> + OptionalSend> = <TokioRuntime as AsyncRuntime>::Timeout<R, T>;
    type ThreadLocalRng = RaftRng;
    type OneshotSender<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotSender<T>;
    type OneshotReceiverError = <TokioRuntime as AsyncRuntime>::OneshotReceiverError;
    type OneshotReceiver<T: OptionalSend> = <TokioRuntime as AsyncRuntime>::OneshotReceiver<T>;

    fn spawn<T>(future: T) -> Self::JoinHandle<T::Output>
    where
        T: Future + OptionalSend + 'static,
        T::Output: OptionalSend + 'static,
    {
        TokioRuntime::spawn(future)
    }

    fn sleep(duration: Duration) -> Self::Sleep {
        TokioRuntime::sleep(duration)
    }

    fn sleep_until(deadline: Self::Instant) -> Self::Sleep {
        TokioRuntime::sleep_until(deadline)
    }

    fn timeout<R, F: Future<Output = R> + OptionalSend>(duration: Duration, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout(duration, future)
    }

    fn timeout_at<R, F: Future<Output = R> + OptionalSend>(deadline: Self::Instant, future: F) -> Self::Timeout<R, F> {
        TokioRuntime::timeout_at(deadline, future)
    }

    fn is_panic(join_error: &Self::JoinError) -> bool {
        TokioRuntime::is_panic(join_error)
    }

    fn thread_rng() -> Self::ThreadLocalRng {
        RaftRng
    }

    fn oneshot<T>() -> (Self::OneshotSender<T>, Self::OneshotReceiver<T>)
    where
        T: OptionalSend,
    {
        TokioRuntime::oneshot()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn a_seeded_thread_repeats_its_numbers_and_an_unseeded_one_does_not_use_the_seed() {
        seed_thread_rng(7);
        let first: Vec<u64> = (0..4).map(|_| CorralRuntime::thread_rng().gen_range(150..300)).collect();
        seed_thread_rng(7);
        let again: Vec<u64> = (0..4).map(|_| CorralRuntime::thread_rng().gen_range(150..300)).collect();
        assert_eq!(first, again);
        unseed_thread_rng();
        let free: Vec<u64> = (0..16).map(|_| CorralRuntime::thread_rng().next_u64()).collect();
        seed_thread_rng(7);
        let seeded: Vec<u64> = (0..16).map(|_| CorralRuntime::thread_rng().next_u64()).collect();
        assert_ne!(free, seeded);
    }
}
