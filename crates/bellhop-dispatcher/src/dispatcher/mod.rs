//! The dispatcher: a priority queue with batching in front of a [`Broker`].
//!
//! Publishes wait in a bounded [`PriorityQueue`]; one worker takes up to `max_batch` of them at a
//! time, most urgent first, and hands them to the broker in one call (one pipeline for Redis).
//! Each publisher is answered only after the broker confirmed the write, with the stored offset.
//!
//! A circuit breaker ([`Breaker`]) guards the broker's write path. Every `publish_batch` call asks
//! it for a permit and is bounded by its call timeout; a timeout, or a batch in which any message
//! failed with [`BrokerError::Unavailable`], counts as one failed call. [`BrokerError::Internal`]
//! counts as a success: the backend answered, and a retry or a pause would not help, so one
//! poison message must not stop every publisher. While the breaker is open, `publish` fails at
//! once with [`PublishError::CircuitOpen`] (and so does every publish still queued when it opened),
//! carrying the time until it lets a trial call through. Reads, subscriptions, presence and read
//! markers go to the broker directly (through [`Dispatcher::broker`]) and are not guarded: they
//! are bounded by the backend's own command timeout, and the hub's gap recovery must keep trying
//! so it heals as soon as the backend does.
//!
//! This file is the handle ([`Dispatcher`]: `publish`, the broker, the breaker's state) and
//! what a publish can fail with ([`PublishError`]); `config.rs` holds the settings, `worker.rs`
//! the worker, its supervisor and the queue entries, `tests.rs` the unit tests.
//!
//! # Deadlines
//!
//! Each publish has a deadline that starts when it is queued (`publish_timeout`, 5 s). One that is
//! still queued when it passes fails at that moment with `unavailable` (a
//! [`BrokerError::Unavailable`] with a retry hint) and is never sent: the worker drops it when it
//! comes to it. Each such expired wait counts as a failure for the breaker
//! ([`Breaker::record_expired`]), so a Redis that answers, but slower than publishes arrive, opens
//! the breaker instead of making every publisher wait minutes behind the queue. A publish already
//! handed to the broker waits for its batch, which the call timeout bounds: a publisher waits at
//! most `publish_timeout` plus the breaker's `call_timeout`.
//!
//! # Supervision
//!
//! The worker runs under a supervisor task. If it stops (a panic in a backend), the publishes of
//! the batch it held fail at once with `unavailable` (their replies are dropped with it), the call
//! it was making counts as failed for the breaker (so a half-open breaker is not left waiting for
//! a trial that never reports), and a new worker starts on the same queue; the publishes still
//! queued are not lost. [`Dispatcher::worker_restarts`] counts the restarts.

mod config;
#[cfg(test)]
mod tests;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bellhop_protocol::Priority;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerState};
use crate::broker::{Broker, BrokerError, Publish, Published};
use crate::queue::PriorityQueue;

pub use config::DispatcherConfig;
use worker::{worker_stopped, Pending, Shared, Worker, ABANDONED, QUEUED};

/// Why a publish was not stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// Too many publishes are waiting; retry after the given time.
    #[error("dispatcher overloaded: {pending} publishes waiting")]
    Overloaded {
        /// Publishes waiting when this one was refused.
        pending: usize,
        /// When to retry.
        retry_after: Duration,
    },
    /// The circuit breaker around the broker is open: the write was not tried.
    #[error("broker circuit open; retry in {retry_after:?}")]
    CircuitOpen {
        /// Time until the breaker lets a trial call through.
        retry_after: Duration,
    },
    /// The broker refused or failed the write; also ([`BrokerError::Unavailable`]) a publish that
    /// waited past its deadline in the queue, or whose batch was lost when the worker stopped.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The dispatcher is shutting down.
    #[error("dispatcher is shutting down")]
    ShuttingDown,
}

/// The delivery engine's front door. Cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct Dispatcher {
    /// The storage and fan-out backend.
    broker: Arc<dyn Broker>,
    /// Queue shared with the worker.
    shared: Arc<Shared>,
    /// Queue settings.
    config: DispatcherConfig,
}

impl Dispatcher {
    /// Starts a dispatcher (and its supervised worker task) in front of `broker`. Must run inside
    /// a tokio runtime. Out-of-range settings are clamped (see [`DispatcherConfig::validate`]).
    pub fn new(broker: Arc<dyn Broker>, config: DispatcherConfig) -> Self {
        let breaker = Breaker::new(config.breaker.clone());
        let call_timeout = breaker.config().call_timeout;
        let shared = Arc::new(Shared {
            queue: Mutex::new(PriorityQueue::new(config.starvation_limit)),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
            breaker: Mutex::new(breaker),
            in_flight: Mutex::new(None),
            restarts: AtomicU64::new(0),
            publish_timeout: config.publish_timeout.max(Duration::from_millis(1)),
        });
        let worker = Worker {
            broker: broker.clone(),
            shared: shared.clone(),
            max_batch: config.max_batch.max(1),
            call_timeout,
        };
        tokio::spawn(worker.supervise());
        Dispatcher {
            broker,
            shared,
            config,
        }
    }

    /// The backend, for reads, subscriptions, presence and read markers.
    pub fn broker(&self) -> &Arc<dyn Broker> {
        &self.broker
    }

    /// Publishes waiting for the broker now (including ones whose publishers gave up at their
    /// deadline and that the worker has not dropped yet).
    pub fn pending(&self) -> usize {
        self.shared.queue.lock().len()
    }

    /// The state of the circuit breaker around the broker's write path, now.
    pub fn breaker_state(&self) -> BreakerState {
        self.shared.breaker.lock().state(Instant::now())
    }

    /// How many times the worker stopped (panicked) and was started again since this dispatcher
    /// started (for `bellhop_dispatcher_worker_restarts_total`).
    pub fn worker_restarts(&self) -> u64 {
        self.shared.restarts.load(Ordering::Relaxed)
    }

    /// Queues a message by its priority and waits until the broker stored it (or, for a repeated
    /// idempotency key, found the original). Fails at once while the circuit breaker is open or
    /// the queue is full, and with `unavailable` when it is still queued `publish_timeout` after
    /// this call.
    pub async fn publish(&self, publish: Publish) -> Result<Published, PublishError> {
        let now = Instant::now();
        self.shared
            .breaker
            .lock()
            .check(now)
            .map_err(|open| PublishError::CircuitOpen {
                retry_after: open.retry_after,
            })?;
        let (reply, mut rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        let deadline = now + self.shared.publish_timeout;
        {
            let mut queue = self.shared.queue.lock();
            if queue.len() >= self.config.max_pending {
                return Err(PublishError::Overloaded {
                    pending: queue.len(),
                    retry_after: self.config.overload_retry_after,
                });
            }
            let priority: Priority = publish.envelope.priority;
            let pending = Pending {
                publish,
                reply,
                deadline,
                state: state.clone(),
            };
            queue.push(priority, pending);
        }
        self.shared.wake.notify_one();
        let answer = match tokio::time::timeout_at(deadline, &mut rx).await {
            Ok(answer) => answer,
            Err(_) => {
                let gave_up = state
                    .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
                    .is_ok();
                if gave_up {
                    return Err(self.shared.expired(Instant::now()));
                }
                // The worker has it: its batch is bounded by the call timeout.
                rx.await
            }
        };
        // The reply was dropped unanswered: the worker died with it.
        answer.unwrap_or_else(|_| Err(worker_stopped()))
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}
