//! The queue's far side: the entry a publish waits in ([`Pending`]), the state the handle and
//! the worker share ([`Shared`]), and the worker that takes batches, most urgent first, hands
//! them to the broker through the circuit breaker and answers each publisher, run by a supervisor
//! that restarts it if it panics. It never queues anything itself: [`super::Dispatcher`] does.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::breaker::{Breaker, Outcome, Permit};
use crate::broker::{Broker, BrokerError, Publish, Published};
use crate::queue::PriorityQueue;

use super::PublishError;

/// What `retryAfterMs` says after a broker call timed out, a publish waited past its deadline or
/// the worker stopped, while the breaker stays closed.
pub(super) const TIMEOUT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// [`Pending::state`]: waiting in the queue.
pub(super) const QUEUED: u8 = 0;
/// [`Pending::state`]: taken by the worker, which answers it.
pub(super) const TAKEN: u8 = 1;
/// [`Pending::state`]: its publisher stopped waiting at its deadline; the worker drops it.
pub(super) const ABANDONED: u8 = 2;

/// One publish waiting for the broker.
#[derive(Debug)]
pub(super) struct Pending {
    /// The message to store.
    pub(super) publish: Publish,
    /// Where the stored offset (or the failure) goes.
    pub(super) reply: oneshot::Sender<Result<Published, PublishError>>,
    /// When the publisher stops waiting unless the worker has taken it.
    pub(super) deadline: Instant,
    /// [`QUEUED`], [`TAKEN`] or [`ABANDONED`]: exactly one of the publisher and the worker moves
    /// it out of `QUEUED`, and that one answers.
    pub(super) state: Arc<AtomicU8>,
}

impl Pending {
    /// Claims the publish for the worker; false when its publisher already gave up.
    pub(super) fn take(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// State shared by the handle, the worker and its supervisor.
#[derive(Debug)]
pub(super) struct Shared {
    /// Waiting publishes.
    pub(super) queue: Mutex<PriorityQueue<Pending>>,
    /// Wakes the worker when something is queued or the dispatcher closes.
    pub(super) wake: Notify,
    /// Set when the last handle is dropped.
    pub(super) closed: AtomicBool,
    /// Guards the broker's write path. Locked only briefly, never across a broker call.
    pub(super) breaker: Mutex<Breaker>,
    /// The permit of the broker call the worker is making, so that the supervisor can record it
    /// as failed when the worker dies during the call.
    pub(super) in_flight: Mutex<Option<Permit>>,
    /// How often the worker was restarted.
    pub(super) restarts: AtomicU64,
    /// How long a publish may wait in the queue.
    pub(super) publish_timeout: Duration,
}

impl Shared {
    /// A publish waited past its deadline without being sent: counted as a failure by the
    /// breaker, and answered `unavailable` (retry when the breaker lets calls through again, if
    /// this opened it).
    pub(super) fn expired(&self, now: Instant) -> PublishError {
        let open_for = {
            let mut breaker = self.breaker.lock();
            breaker.record_expired(now);
            breaker.check(now).err().map(|open| open.retry_after)
        };
        PublishError::Broker(BrokerError::Unavailable {
            reason: format!(
                "the publish waited {:?} in the dispatcher's queue without reaching the broker",
                self.publish_timeout
            ),
            retry_after: open_for.map_or(TIMEOUT_RETRY_AFTER, |o| o.max(TIMEOUT_RETRY_AFTER)),
        })
    }
}

/// What a publisher is told when the worker stopped while holding its publish.
pub(super) fn worker_stopped() -> PublishError {
    PublishError::Broker(BrokerError::Unavailable {
        reason: "the dispatcher's worker stopped while storing this publish (it was restarted); \
                 it may or may not have been stored"
            .into(),
        retry_after: TIMEOUT_RETRY_AFTER,
    })
}

/// Takes up to `max_batch` publishes off the queue, most urgent first: the ones to send, and the
/// ones whose deadline has passed. Publishes whose publishers gave up are dropped.
pub(super) fn take_batch(
    shared: &Shared,
    max_batch: usize,
    now: Instant,
) -> (Vec<Pending>, Vec<Pending>) {
    let mut queue = shared.queue.lock();
    let (mut batch, mut expired) = (Vec::new(), Vec::new());
    while batch.len() < max_batch {
        let Some((_, pending)) = queue.pop() else {
            break;
        };
        if !pending.take() {
            continue;
        }
        if pending.deadline <= now {
            expired.push(pending);
        } else {
            batch.push(pending);
        }
    }
    (batch, expired)
}

/// The task that stores what the queue holds: what it reads and writes, and the settings of its
/// batches and calls. The supervisor and each worker it starts share one.
#[derive(Clone)]
pub(super) struct Worker {
    /// Where batches are stored.
    pub(super) broker: Arc<dyn Broker>,
    /// The queue, the breaker and the counters it shares with the dispatcher's handle.
    pub(super) shared: Arc<Shared>,
    /// The most publishes in one broker call (at least 1).
    pub(super) max_batch: usize,
    /// How long one broker call may take before its batch fails as unavailable.
    pub(super) call_timeout: Duration,
}

impl Worker {
    /// Runs the worker, and starts it again whenever it panics, until it returns (the dispatcher
    /// closed) or the runtime shuts down.
    pub(super) async fn supervise(self) {
        let shared = self.shared.clone();
        loop {
            let run = tokio::spawn(self.clone().run());
            let error = match run.await {
                Ok(()) => return,
                Err(error) if error.is_panic() => error,
                // Cancelled: the runtime is shutting down.
                Err(_) => return,
            };
            let restarts = shared.restarts.fetch_add(1, Ordering::Relaxed) + 1;
            // The call it was making never reported: a failure, so a half-open breaker is not left
            // waiting forever for its trial.
            if let Some(permit) = shared.in_flight.lock().take() {
                shared
                    .breaker
                    .lock()
                    .record(permit, Outcome::Failure, Instant::now());
            }
            let panic = error.into_panic();
            let reason = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            tracing::error!(
                restarts,
                %reason,
                "the dispatcher's worker panicked; its batch failed with unavailable, restarting it"
            );
        }
    }

    /// Takes batches off the queue, most urgent first, and stores them through the breaker.
    async fn run(self) {
        let Worker {
            broker,
            shared,
            max_batch,
            call_timeout,
        } = self;
        loop {
            let now = Instant::now();
            let (batch, expired) = take_batch(&shared, max_batch, now);
            for pending in expired {
                let _ = pending.reply.send(Err(shared.expired(now)));
            }
            if batch.is_empty() {
                if !shared.queue.lock().is_empty() {
                    continue;
                }
                if shared.closed.load(Ordering::Acquire) {
                    return;
                }
                shared.wake.notified().await;
                continue;
            }
            let (publishes, replies): (Vec<_>, Vec<_>) =
                batch.into_iter().map(|p| (p.publish, p.reply)).unzip();
            let acquired = shared.breaker.lock().try_acquire(now);
            let permit = match acquired {
                Ok(permit) => permit,
                Err(open) => {
                    // Publishes queued before the breaker opened fail as fast as new ones.
                    for reply in replies {
                        let _ = reply.send(Err(PublishError::CircuitOpen {
                            retry_after: open.retry_after,
                        }));
                    }
                    continue;
                }
            };
            *shared.in_flight.lock() = Some(permit);
            let n = publishes.len();
            let call = tokio::time::timeout(call_timeout, broker.publish_batch(publishes)).await;
            let Some(permit) = shared.in_flight.lock().take() else {
                // Only the supervisor takes it, after this task is gone.
                continue;
            };
            let timed_out = call.is_err();
            let mut results = call.unwrap_or_default();
            let failed = timed_out
                || results
                    .iter()
                    .any(|r| matches!(r, Err(BrokerError::Unavailable { .. })));
            let outcome = if failed {
                Outcome::Failure
            } else {
                Outcome::Success
            };
            let now = Instant::now();
            let open_for = {
                let mut breaker = shared.breaker.lock();
                breaker.record(permit, outcome, now);
                breaker.check(now).err().map(|open| open.retry_after)
            };
            if timed_out {
                // The call was abandoned; Redis may still have stored some of it (see the Redis
                // backend's notes on `unavailable` after a lost reply).
                results = vec![
                    Err(BrokerError::Unavailable {
                        reason: format!("broker call timed out after {call_timeout:?}"),
                        retry_after: TIMEOUT_RETRY_AFTER,
                    });
                    n
                ];
            }
            let mut results = results.into_iter();
            for reply in replies {
                let result = match results.next() {
                    Some(Ok(published)) => Ok(published),
                    Some(Err(BrokerError::Unavailable {
                        reason,
                        retry_after,
                    })) => Err(BrokerError::Unavailable {
                        reason,
                        // When this call opened the breaker, retrying sooner is refused anyway.
                        retry_after: open_for.map_or(retry_after, |o| o.max(retry_after)),
                    }),
                    Some(Err(e)) => Err(e),
                    None => Err(BrokerError::Internal(
                        "broker returned too few results".into(),
                    )),
                };
                // A publisher that gave up waiting is not an error.
                let _ = reply.send(result.map_err(PublishError::Broker));
            }
        }
    }
}
