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

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bellhop_protocol::Priority;
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use crate::breaker::{Breaker, BreakerConfig, BreakerState, Outcome, Permit};
use crate::broker::{Broker, BrokerError, Publish, Published};
use crate::queue::PriorityQueue;

/// What `retryAfterMs` says after a broker call timed out, a publish waited past its deadline or
/// the worker stopped, while the breaker stays closed.
const TIMEOUT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// Settings of the dispatcher's queue.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Most publishes handed to the broker in one call (64).
    pub max_batch: usize,
    /// Most publishes waiting; beyond it publishes fail fast with `unavailable` (10,000).
    pub max_pending: usize,
    /// A waiting lower priority is passed over at most this many times in a row (16).
    pub starvation_limit: u32,
    /// What `retryAfterMs` says when the queue is full (100 ms).
    pub overload_retry_after: Duration,
    /// Longest a publish may wait in the queue, from the moment it is queued (5 s, the breaker's
    /// call timeout); past it, it fails with `unavailable` and is not sent.
    pub publish_timeout: Duration,
    /// The circuit breaker around the broker's write path (call timeout 5 s, opens at 50 %
    /// failures over at least 10 of the last 20 calls, half-open after 30 s).
    pub breaker: BreakerConfig,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        let breaker = BreakerConfig::default();
        DispatcherConfig {
            max_batch: 64,
            max_pending: 10_000,
            starvation_limit: 16,
            overload_retry_after: Duration::from_millis(100),
            publish_timeout: breaker.call_timeout,
            breaker,
        }
    }
}

impl DispatcherConfig {
    /// Rejects settings that cannot work, naming the setting. [`Dispatcher::new`] does not call
    /// it (it clamps instead); whoever builds the config from outside input should.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch == 0 {
            return Err("dispatcher max_batch must be at least 1".into());
        }
        if self.max_pending == 0 {
            return Err("dispatcher max_pending must be at least 1".into());
        }
        if self.publish_timeout.is_zero() {
            return Err("dispatcher publish_timeout must be greater than zero".into());
        }
        self.breaker.validate()
    }
}

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

/// [`Pending::state`]: waiting in the queue.
const QUEUED: u8 = 0;
/// [`Pending::state`]: taken by the worker, which answers it.
const TAKEN: u8 = 1;
/// [`Pending::state`]: its publisher stopped waiting at its deadline; the worker drops it.
const ABANDONED: u8 = 2;

/// One publish waiting for the broker.
#[derive(Debug)]
struct Pending {
    /// The message to store.
    publish: Publish,
    /// Where the stored offset (or the failure) goes.
    reply: oneshot::Sender<Result<Published, PublishError>>,
    /// When the publisher stops waiting unless the worker has taken it.
    deadline: Instant,
    /// [`QUEUED`], [`TAKEN`] or [`ABANDONED`]: exactly one of the publisher and the worker moves
    /// it out of `QUEUED`, and that one answers.
    state: Arc<AtomicU8>,
}

impl Pending {
    /// Claims the publish for the worker; false when its publisher already gave up.
    fn take(&self) -> bool {
        self.state
            .compare_exchange(QUEUED, TAKEN, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }
}

/// State shared by the handle, the worker and its supervisor.
#[derive(Debug)]
struct Shared {
    /// Waiting publishes.
    queue: Mutex<PriorityQueue<Pending>>,
    /// Wakes the worker when something is queued or the dispatcher closes.
    wake: Notify,
    /// Set when the last handle is dropped.
    closed: AtomicBool,
    /// Guards the broker's write path. Locked only briefly, never across a broker call.
    breaker: Mutex<Breaker>,
    /// The permit of the broker call the worker is making, so that the supervisor can record it
    /// as failed when the worker dies during the call.
    in_flight: Mutex<Option<Permit>>,
    /// How often the worker was restarted.
    restarts: AtomicU64,
    /// How long a publish may wait in the queue.
    publish_timeout: Duration,
}

impl Shared {
    /// A publish waited past its deadline without being sent: counted as a failure by the
    /// breaker, and answered `unavailable` (retry when the breaker lets calls through again, if
    /// this opened it).
    fn expired(&self, now: Instant) -> PublishError {
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
fn worker_stopped() -> PublishError {
    PublishError::Broker(BrokerError::Unavailable {
        reason: "the dispatcher's worker stopped while storing this publish (it was restarted); \
                 it may or may not have been stored"
            .into(),
        retry_after: TIMEOUT_RETRY_AFTER,
    })
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
        tokio::spawn(supervise(
            broker.clone(),
            shared.clone(),
            config.max_batch.max(1),
            call_timeout,
        ));
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

/// Runs the worker, and starts it again whenever it panics, until it returns (the dispatcher
/// closed) or the runtime shuts down.
async fn supervise(
    broker: Arc<dyn Broker>,
    shared: Arc<Shared>,
    max_batch: usize,
    call_timeout: Duration,
) {
    loop {
        let run = tokio::spawn(worker(
            broker.clone(),
            shared.clone(),
            max_batch,
            call_timeout,
        ));
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

/// Takes up to `max_batch` publishes off the queue, most urgent first: the ones to send, and the
/// ones whose deadline has passed. Publishes whose publishers gave up are dropped.
fn take_batch(shared: &Shared, max_batch: usize, now: Instant) -> (Vec<Pending>, Vec<Pending>) {
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

/// Takes batches off the queue, most urgent first, and stores them through the breaker.
async fn worker(
    broker: Arc<dyn Broker>,
    shared: Arc<Shared>,
    max_batch: usize,
    call_timeout: Duration,
) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{ChannelEvent, ChannelKey, ReadResult, Subscription};
    use crate::{MemoryBroker, MemoryConfig};
    use async_trait::async_trait;
    use bellhop_protocol::{Channel, Envelope, Offset, Role, Sender};
    use tokio::sync::Semaphore;

    /// A publish (without an idempotency key) of a message recognisable by its `id`.
    fn envelope(id: &str, priority: Priority) -> Publish {
        Publish::new(Arc::new(Envelope {
            message_id: id.into(),
            event: "CHAT_MESSAGE".into(),
            namespace: "h1".into(),
            channel: Channel::Room("101".into()),
            payload: serde_json::Value::Null,
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            sender: Sender {
                id: "u1".into(),
                role: Role::Staff,
            },
            priority,
            correlation_id: None,
        }))
    }

    /// How [`GatedBroker::publish_batch`] fails, when told to.
    #[derive(Clone, Debug)]
    enum Fault {
        /// Every message fails with this error.
        Error(BrokerError),
        /// The call never returns.
        Hang,
        /// The call panics (a backend bug).
        Panic,
        /// The call stores, but only after this long (a slow-but-answering Redis).
        Slow(Duration),
    }

    /// A broker that stores into a memory broker, but only as fast as the test lets it: each
    /// `publish_batch` waits for one permit. Lets a test fill the queue while the worker is busy.
    /// With a fault set, it fails (after the permit) instead of storing.
    #[derive(Debug)]
    struct GatedBroker {
        inner: MemoryBroker,
        gate: Semaphore,
        batches: Mutex<Vec<Vec<String>>>,
        fault: Mutex<Option<Fault>>,
    }

    impl GatedBroker {
        fn new(permits: usize) -> Arc<GatedBroker> {
            Arc::new(GatedBroker {
                inner: MemoryBroker::new(MemoryConfig::default()),
                gate: Semaphore::new(permits),
                batches: Mutex::new(Vec::new()),
                fault: Mutex::new(None),
            })
        }

        fn fail_with(&self, fault: Option<Fault>) {
            *self.fault.lock() = fault;
        }

        fn calls(&self) -> usize {
            self.batches.lock().len()
        }
    }

    #[async_trait]
    impl Broker for GatedBroker {
        async fn publish_batch(&self, batch: Vec<Publish>) -> Vec<Result<Published, BrokerError>> {
            self.batches.lock().push(
                batch
                    .iter()
                    .map(|p| p.envelope.message_id.clone())
                    .collect(),
            );
            self.gate.acquire().await.expect("gate open").forget();
            let fault = self.fault.lock().clone();
            match fault {
                None => self.inner.publish_batch(batch).await,
                Some(Fault::Error(e)) => batch.iter().map(|_| Err(e.clone())).collect(),
                Some(Fault::Hang) => std::future::pending().await,
                Some(Fault::Panic) => panic!("injected backend bug"),
                Some(Fault::Slow(delay)) => {
                    tokio::time::sleep(delay).await;
                    self.inner.publish_batch(batch).await
                }
            }
        }
        async fn publish_ephemeral(
            &self,
            key: &ChannelKey,
            event: ChannelEvent,
        ) -> Result<(), BrokerError> {
            self.inner.publish_ephemeral(key, event).await
        }
        async fn subscribe(&self, key: &ChannelKey) -> Result<Subscription, BrokerError> {
            self.inner.subscribe(key).await
        }
        async fn read(
            &self,
            key: &ChannelKey,
            since: Option<Offset>,
            limit: usize,
        ) -> Result<ReadResult, BrokerError> {
            self.inner.read(key, since, limit).await
        }
        async fn presence_join(
            &self,
            key: &ChannelKey,
            u: &str,
            s: &str,
        ) -> Result<bool, BrokerError> {
            self.inner.presence_join(key, u, s).await
        }
        async fn presence_leave(
            &self,
            key: &ChannelKey,
            u: &str,
            s: &str,
        ) -> Result<bool, BrokerError> {
            self.inner.presence_leave(key, u, s).await
        }
        async fn presence(&self, key: &ChannelKey) -> Result<Vec<String>, BrokerError> {
            self.inner.presence(key).await
        }
        async fn mark_read(
            &self,
            key: &ChannelKey,
            u: &str,
            o: Offset,
        ) -> Result<(Offset, u64), BrokerError> {
            self.inner.mark_read(key, u, o).await
        }
        async fn unread(&self, key: &ChannelKey, u: &str) -> Result<u64, BrokerError> {
            self.inner.unread(key, u).await
        }
    }

    async fn wait_for_batches(broker: &GatedBroker, n: usize) {
        while broker.batches.lock().len() < n {
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_urgent_publish_overtakes_a_backlog_of_normal_ones() {
        let broker = GatedBroker::new(0);
        let config = DispatcherConfig {
            max_batch: 4,
            ..Default::default()
        };
        let dispatcher = Arc::new(Dispatcher::new(broker.clone(), config));
        // The first publish occupies the worker; 40 normal ones pile up behind it.
        let mut handles = Vec::new();
        for i in 0..41 {
            let d = dispatcher.clone();
            handles.push(tokio::spawn(async move {
                d.publish(envelope(&format!("n{i}"), Priority::Normal))
                    .await
            }));
            if i == 0 {
                wait_for_batches(&broker, 1).await;
            }
        }
        while dispatcher.pending() < 40 {
            tokio::task::yield_now().await;
        }
        let d = dispatcher.clone();
        let urgent =
            tokio::spawn(async move { d.publish(envelope("urgent", Priority::Urgent)).await });
        while dispatcher.pending() < 41 {
            tokio::task::yield_now().await;
        }
        broker.gate.add_permits(1000);
        let urgent_offset = urgent.await.unwrap().unwrap().offset;
        let mut normal_offsets = Vec::new();
        for h in handles {
            normal_offsets.push(h.await.unwrap().unwrap().offset);
        }
        // The urgent message was the first of the backlog to be stored: only the message already
        // in flight precedes it.
        let before = normal_offsets
            .iter()
            .filter(|o| **o < urgent_offset)
            .count();
        assert_eq!(
            before, 1,
            "urgent publish was stored after {before} normal ones"
        );
        let batches = broker.batches.lock().clone();
        assert_eq!(
            batches[1][0], "urgent",
            "second batch must lead with the urgent message: {batches:?}"
        );
        assert!(
            batches.iter().skip(1).all(|b| b.len() <= 4),
            "batches are capped at max_batch"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_fails_fast_with_a_retry_hint() {
        let broker = GatedBroker::new(0);
        let config = DispatcherConfig {
            max_batch: 1,
            max_pending: 2,
            ..Default::default()
        };
        let dispatcher = Arc::new(Dispatcher::new(broker.clone(), config));
        let d = dispatcher.clone();
        let first = tokio::spawn(async move { d.publish(envelope("a", Priority::Normal)).await });
        wait_for_batches(&broker, 1).await;
        let mut waiting = Vec::new();
        for id in ["b", "c"] {
            let d = dispatcher.clone();
            waiting.push(tokio::spawn(async move {
                d.publish(envelope(id, Priority::Normal)).await
            }));
        }
        while dispatcher.pending() < 2 {
            tokio::task::yield_now().await;
        }
        let refused = dispatcher.publish(envelope("d", Priority::Urgent)).await;
        assert!(
            matches!(refused, Err(PublishError::Overloaded { pending: 2, .. })),
            "{refused:?}"
        );
        broker.gate.add_permits(10);
        assert!(first.await.unwrap().is_ok());
        for w in waiting {
            assert!(w.await.unwrap().is_ok());
        }
    }

    #[tokio::test]
    async fn acknowledged_offsets_are_readable_in_order() {
        let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(MemoryConfig::default()));
        let dispatcher = Dispatcher::new(broker.clone(), DispatcherConfig::default());
        let mut offsets = Vec::new();
        for i in 0..10 {
            offsets.push(
                dispatcher
                    .publish(envelope(&format!("m{i}"), Priority::Normal))
                    .await
                    .unwrap()
                    .offset,
            );
        }
        let key = ChannelKey::new("h1", Channel::Room("101".into()));
        let read = broker.read(&key, None, 100).await.unwrap();
        let stored: Vec<_> = read.messages.iter().map(|m| m.offset).collect();
        assert_eq!(stored, offsets);
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    }

    const SECOND: Duration = Duration::from_secs(1);

    fn unavailable() -> Fault {
        Fault::Error(BrokerError::Unavailable {
            reason: "redis: connection refused".into(),
            retry_after: SECOND,
        })
    }

    /// The retry hint of a failed publish, if it is `unavailable` of either kind.
    fn retry_after(result: &Result<Published, PublishError>) -> Option<Duration> {
        match result {
            Err(PublishError::CircuitOpen { retry_after })
            | Err(PublishError::Broker(BrokerError::Unavailable { retry_after, .. })) => {
                Some(*retry_after)
            }
            _ => None,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_unavailable_broker_opens_the_breaker_then_publishes_fail_fast_until_it_recovers() {
        let broker = GatedBroker::new(usize::MAX >> 4);
        let dispatcher = Dispatcher::new(broker.clone(), DispatcherConfig::default());
        assert_eq!(dispatcher.breaker_state(), BreakerState::Closed);
        broker.fail_with(Some(unavailable()));
        for i in 0..9 {
            let r = dispatcher
                .publish(envelope(&format!("m{i}"), Priority::Normal))
                .await;
            assert_eq!(
                retry_after(&r),
                Some(SECOND),
                "the broker's own hint: {r:?}"
            );
            assert_eq!(
                dispatcher.breaker_state(),
                BreakerState::Closed,
                "after {i}"
            );
        }
        // The tenth failed call opens it; its publisher is told to come back when it half-opens.
        let r = dispatcher.publish(envelope("m9", Priority::Normal)).await;
        assert!(matches!(r, Err(PublishError::Broker(_))), "{r:?}");
        assert_eq!(retry_after(&r), Some(30 * SECOND));
        assert_eq!(dispatcher.breaker_state(), BreakerState::Open);

        // Open: refused without touching the broker, with the time left until half-open.
        let started = Instant::now();
        let r = dispatcher.publish(envelope("fast", Priority::Urgent)).await;
        assert_eq!(
            r,
            Err(PublishError::CircuitOpen {
                retry_after: 30 * SECOND
            })
        );
        assert_eq!(started.elapsed(), Duration::ZERO, "fails fast");
        tokio::time::advance(12 * SECOND).await;
        let r = dispatcher
            .publish(envelope("later", Priority::Normal))
            .await;
        assert_eq!(
            r,
            Err(PublishError::CircuitOpen {
                retry_after: 18 * SECOND
            })
        );
        assert_eq!(broker.calls(), 10, "no call reached the broker while open");

        // Redis is back; after the open period the next publish is the trial and closes it.
        broker.fail_with(None);
        tokio::time::advance(18 * SECOND).await;
        assert_eq!(dispatcher.breaker_state(), BreakerState::HalfOpen);
        let r = dispatcher
            .publish(envelope("trial", Priority::Normal))
            .await;
        assert!(r.is_ok(), "{r:?}");
        assert_eq!(dispatcher.breaker_state(), BreakerState::Closed);
        assert!(dispatcher
            .publish(envelope("after", Priority::Low))
            .await
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_hanging_broker_times_out_opens_the_breaker_and_a_failed_trial_reopens_it() {
        let broker = GatedBroker::new(usize::MAX >> 4);
        let dispatcher = Dispatcher::new(broker.clone(), DispatcherConfig::default());
        broker.fail_with(Some(Fault::Hang));
        for i in 0..10 {
            let started = Instant::now();
            let r = dispatcher
                .publish(envelope(&format!("m{i}"), Priority::Normal))
                .await;
            assert_eq!(started.elapsed(), 5 * SECOND, "bounded by the call timeout");
            let Err(PublishError::Broker(BrokerError::Unavailable { reason, .. })) = &r else {
                panic!("{r:?}");
            };
            assert!(reason.contains("timed out"), "{reason}");
            let hint = if i < 9 { SECOND } else { 30 * SECOND };
            assert_eq!(retry_after(&r), Some(hint), "after {i}");
        }
        assert_eq!(dispatcher.breaker_state(), BreakerState::Open);

        // Still hanging after the open period: the trial times out and the breaker reopens.
        tokio::time::advance(30 * SECOND).await;
        assert_eq!(dispatcher.breaker_state(), BreakerState::HalfOpen);
        let r = dispatcher
            .publish(envelope("trial", Priority::Normal))
            .await;
        assert_eq!(retry_after(&r), Some(30 * SECOND), "{r:?}");
        assert_eq!(dispatcher.breaker_state(), BreakerState::Open);
        assert_eq!(
            dispatcher
                .publish(envelope("refused", Priority::Normal))
                .await,
            Err(PublishError::CircuitOpen {
                retry_after: 30 * SECOND
            })
        );
        assert_eq!(broker.calls(), 11);
    }

    #[tokio::test(start_paused = true)]
    async fn publishes_queued_when_the_breaker_opens_fail_fast_too() {
        let broker = GatedBroker::new(0);
        let config = DispatcherConfig {
            max_batch: 1,
            breaker: BreakerConfig {
                minimum_calls: 1,
                window: 1,
                ..BreakerConfig::default()
            },
            ..DispatcherConfig::default()
        };
        let dispatcher = Arc::new(Dispatcher::new(broker.clone(), config));
        broker.fail_with(Some(unavailable()));
        let d = dispatcher.clone();
        let first = tokio::spawn(async move { d.publish(envelope("a", Priority::Normal)).await });
        wait_for_batches(&broker, 1).await;
        let mut queued = Vec::new();
        for i in 0..5 {
            let d = dispatcher.clone();
            queued.push(tokio::spawn(async move {
                d.publish(envelope(&format!("q{i}"), Priority::Normal))
                    .await
            }));
        }
        while dispatcher.pending() < 5 {
            tokio::task::yield_now().await;
        }
        broker.gate.add_permits(100);
        assert_eq!(retry_after(&first.await.unwrap()), Some(30 * SECOND));
        for q in queued {
            assert_eq!(
                q.await.unwrap(),
                Err(PublishError::CircuitOpen {
                    retry_after: 30 * SECOND
                })
            );
        }
        assert_eq!(broker.calls(), 1, "the backlog never reached the broker");
    }

    #[tokio::test(start_paused = true)]
    async fn internal_errors_do_not_open_the_breaker() {
        let broker = GatedBroker::new(usize::MAX >> 4);
        let dispatcher = Dispatcher::new(broker.clone(), DispatcherConfig::default());
        broker.fail_with(Some(Fault::Error(BrokerError::Internal(
            "bad reply".into(),
        ))));
        for i in 0..30 {
            let r = dispatcher
                .publish(envelope(&format!("m{i}"), Priority::Normal))
                .await;
            assert!(
                matches!(r, Err(PublishError::Broker(BrokerError::Internal(_)))),
                "{r:?}"
            );
        }
        assert_eq!(dispatcher.breaker_state(), BreakerState::Closed);
        assert_eq!(broker.calls(), 30);
    }

    /// The message ids stored in the test channel, oldest first.
    async fn stored(broker: &GatedBroker) -> Vec<String> {
        let key = ChannelKey::new("h1", Channel::Room("101".into()));
        let read = broker.inner.read(&key, None, 1000).await.unwrap();
        read.messages
            .iter()
            .map(|m| m.envelope.message_id.clone())
            .collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_panics_is_restarted_and_counted_and_its_publisher_fails_fast() {
        let broker = GatedBroker::new(usize::MAX >> 4);
        let dispatcher = Dispatcher::new(broker.clone(), DispatcherConfig::default());
        assert_eq!(dispatcher.worker_restarts(), 0);
        broker.fail_with(Some(Fault::Panic));
        let started = Instant::now();
        let r = dispatcher
            .publish(envelope("doomed", Priority::Normal))
            .await;
        assert_eq!(started.elapsed(), Duration::ZERO, "fails fast: {r:?}");
        let Err(PublishError::Broker(BrokerError::Unavailable {
            reason,
            retry_after,
        })) = &r
        else {
            panic!("{r:?}");
        };
        assert!(reason.contains("worker stopped"), "{reason}");
        assert_eq!(*retry_after, SECOND);

        broker.fail_with(None);
        let r = dispatcher.publish(envelope("next", Priority::Normal)).await;
        assert!(r.is_ok(), "the restarted worker stores it: {r:?}");
        assert_eq!(dispatcher.worker_restarts(), 1);
        assert_eq!(stored(&broker).await, ["next"]);
        assert_eq!(dispatcher.breaker_state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_worker_that_panics_during_the_trial_call_reopens_the_breaker_instead_of_wedging_it()
    {
        let broker = GatedBroker::new(usize::MAX >> 4);
        let config = DispatcherConfig {
            breaker: BreakerConfig {
                minimum_calls: 1,
                window: 1,
                ..BreakerConfig::default()
            },
            ..DispatcherConfig::default()
        };
        let dispatcher = Dispatcher::new(broker.clone(), config);
        broker.fail_with(Some(unavailable()));
        assert!(dispatcher
            .publish(envelope("a", Priority::Normal))
            .await
            .is_err());
        assert_eq!(dispatcher.breaker_state(), BreakerState::Open);
        tokio::time::advance(30 * SECOND).await;
        broker.fail_with(Some(Fault::Panic));
        let r = dispatcher
            .publish(envelope("trial", Priority::Normal))
            .await;
        assert!(retry_after(&r).is_some(), "{r:?}");
        // The trial never reported; had its permit been forgotten, the breaker would refuse
        // every call from now on while waiting for it.
        assert_eq!(dispatcher.breaker_state(), BreakerState::Open);
        assert_eq!(
            dispatcher
                .publish(envelope("refused", Priority::Normal))
                .await,
            Err(PublishError::CircuitOpen {
                retry_after: 30 * SECOND
            })
        );
        broker.fail_with(None);
        tokio::time::advance(30 * SECOND).await;
        assert!(dispatcher
            .publish(envelope("healed", Priority::Normal))
            .await
            .is_ok());
        assert_eq!(dispatcher.breaker_state(), BreakerState::Closed);
        assert_eq!(dispatcher.worker_restarts(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_publish_behind_a_slow_broker_fails_at_its_deadline_from_enqueue_and_opens_the_breaker(
    ) {
        let broker = GatedBroker::new(usize::MAX >> 4);
        let config = DispatcherConfig {
            max_batch: 1,
            ..DispatcherConfig::default()
        };
        assert_eq!(config.publish_timeout, 5 * SECOND, "the call timeout");
        let dispatcher = Arc::new(Dispatcher::new(broker.clone(), config));
        // Redis answers every call, but each takes 4 s: a queue of 30 would take 2 minutes.
        broker.fail_with(Some(Fault::Slow(4 * SECOND)));
        let started = Instant::now();
        let publishers: Vec<_> = (0..30)
            .map(|i| {
                let d = dispatcher.clone();
                tokio::spawn(async move {
                    let r = d
                        .publish(envelope(&format!("m{i}"), Priority::Normal))
                        .await;
                    (r, started.elapsed())
                })
            })
            .collect();
        let mut outcomes = Vec::new();
        for p in publishers {
            outcomes.push(p.await.unwrap());
        }
        // m0 went out at once and took 4 s; m1 went out at 4 s, before its deadline, and its
        // batch took 4 s more. Everyone else was still queued at 5 s, and failed right then.
        assert!(
            outcomes[0].0.is_ok() && outcomes[0].1 == 4 * SECOND,
            "{:?}",
            outcomes[0]
        );
        assert!(
            outcomes[1].0.is_ok() && outcomes[1].1 == 8 * SECOND,
            "{:?}",
            outcomes[1]
        );
        for (i, (r, took)) in outcomes.iter().enumerate().skip(2) {
            assert_eq!(
                *took,
                5 * SECOND,
                "m{i} failed at its deadline from enqueue"
            );
            let Err(PublishError::Broker(BrokerError::Unavailable { reason, .. })) = r else {
                panic!("m{i}: {r:?}");
            };
            assert!(reason.contains("queue"), "{reason}");
            assert!(retry_after(r).is_some_and(|d| d >= SECOND), "m{i}: {r:?}");
        }
        assert_eq!(
            dispatcher.breaker_state(),
            BreakerState::Open,
            "expired waits count as failures"
        );
        let refused = dispatcher.publish(envelope("late", Priority::Normal)).await;
        assert!(
            matches!(refused, Err(PublishError::CircuitOpen { .. })),
            "{refused:?}"
        );
        // The expired ones were dropped, never sent.
        while dispatcher.pending() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(broker.calls(), 2);
        assert_eq!(stored(&broker).await, ["m0", "m1"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_publish_the_worker_reaches_after_its_deadline_is_dropped_not_sent() {
        // The worker is busy for 6 s with one call that the breaker's call timeout allows; the
        // publish queued behind it is past its 2 s deadline when the worker comes to it.
        let broker = GatedBroker::new(usize::MAX >> 4);
        let config = DispatcherConfig {
            max_batch: 1,
            publish_timeout: 2 * SECOND,
            breaker: BreakerConfig {
                call_timeout: 10 * SECOND,
                ..BreakerConfig::default()
            },
            ..DispatcherConfig::default()
        };
        let dispatcher = Arc::new(Dispatcher::new(broker.clone(), config));
        broker.fail_with(Some(Fault::Slow(6 * SECOND)));
        let d = dispatcher.clone();
        let first =
            tokio::spawn(async move { d.publish(envelope("first", Priority::Normal)).await });
        wait_for_batches(&broker, 1).await;
        let started = Instant::now();
        let r = dispatcher
            .publish(envelope("behind", Priority::Normal))
            .await;
        assert_eq!(started.elapsed(), 2 * SECOND);
        assert!(retry_after(&r).is_some(), "{r:?}");
        assert!(first.await.unwrap().is_ok());
        while dispatcher.pending() > 0 {
            tokio::task::yield_now().await;
        }
        assert_eq!(broker.calls(), 1, "the expired publish was never sent");
        assert_eq!(stored(&broker).await, ["first"]);
    }

    #[test]
    fn config_validation_covers_the_breaker() {
        assert_eq!(DispatcherConfig::default().validate(), Ok(()));
        let bad = DispatcherConfig {
            breaker: BreakerConfig {
                failure_rate: 2.0,
                ..BreakerConfig::default()
            },
            ..DispatcherConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("failure_rate"));
        let bad = DispatcherConfig {
            max_batch: 0,
            ..DispatcherConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("max_batch"));
        let bad = DispatcherConfig {
            publish_timeout: Duration::ZERO,
            ..DispatcherConfig::default()
        };
        assert!(bad.validate().unwrap_err().contains("publish_timeout"));
    }
}
