//! The dispatcher: a priority queue with batching in front of a [`Broker`].
//!
//! Publishes wait in a bounded [`PriorityQueue`]; one worker takes up to `max_batch` of them at a
//! time, most urgent first, and hands them to the broker in one call (one pipeline for Redis).
//! Each publisher is answered only after the broker confirmed the write, with the stored offset.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bellhop_protocol::{Envelope, Offset, Priority};
use parking_lot::Mutex;
use tokio::sync::{oneshot, Notify};

use crate::broker::{Broker, BrokerError};
use crate::queue::PriorityQueue;

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
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        DispatcherConfig {
            max_batch: 64,
            max_pending: 10_000,
            starvation_limit: 16,
            overload_retry_after: Duration::from_millis(100),
        }
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
    /// The broker refused or failed the write.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    /// The dispatcher is shutting down.
    #[error("dispatcher is shutting down")]
    ShuttingDown,
}

/// One publish waiting for the broker.
#[derive(Debug)]
struct Pending {
    /// The message to store.
    envelope: Arc<Envelope>,
    /// Where the stored offset (or the failure) goes.
    reply: oneshot::Sender<Result<Offset, BrokerError>>,
}

/// State shared by the handle and the worker.
#[derive(Debug)]
struct Shared {
    /// Waiting publishes.
    queue: Mutex<PriorityQueue<Pending>>,
    /// Wakes the worker when something is queued or the dispatcher closes.
    wake: Notify,
    /// Set when the last handle is dropped.
    closed: AtomicBool,
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
    /// Starts a dispatcher (and its worker task) in front of `broker`. Must run inside a tokio
    /// runtime.
    pub fn new(broker: Arc<dyn Broker>, config: DispatcherConfig) -> Self {
        let shared = Arc::new(Shared {
            queue: Mutex::new(PriorityQueue::new(config.starvation_limit)),
            wake: Notify::new(),
            closed: AtomicBool::new(false),
        });
        tokio::spawn(worker(
            broker.clone(),
            shared.clone(),
            config.max_batch.max(1),
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

    /// Publishes waiting for the broker now.
    pub fn pending(&self) -> usize {
        self.shared.queue.lock().len()
    }

    /// Queues a message by its priority and waits until the broker stored it.
    pub async fn publish(&self, envelope: Arc<Envelope>) -> Result<Offset, PublishError> {
        let (reply, rx) = oneshot::channel();
        {
            let mut queue = self.shared.queue.lock();
            if queue.len() >= self.config.max_pending {
                return Err(PublishError::Overloaded {
                    pending: queue.len(),
                    retry_after: self.config.overload_retry_after,
                });
            }
            let priority: Priority = envelope.priority;
            queue.push(priority, Pending { envelope, reply });
        }
        self.shared.wake.notify_one();
        match rx.await {
            Ok(result) => result.map_err(PublishError::Broker),
            Err(_) => Err(PublishError::ShuttingDown),
        }
    }
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.shared.closed.store(true, Ordering::Release);
        self.shared.wake.notify_one();
    }
}

/// Takes batches off the queue, most urgent first, and stores them.
async fn worker(broker: Arc<dyn Broker>, shared: Arc<Shared>, max_batch: usize) {
    loop {
        let batch: Vec<Pending> = {
            let mut queue = shared.queue.lock();
            std::iter::from_fn(|| queue.pop().map(|(_, p)| p))
                .take(max_batch)
                .collect()
        };
        if batch.is_empty() {
            if shared.closed.load(Ordering::Acquire) {
                return;
            }
            shared.wake.notified().await;
            continue;
        }
        let (envelopes, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.envelope, p.reply)).unzip();
        let results = broker.publish_batch(envelopes).await;
        let mut results = results.into_iter();
        for reply in replies {
            let result = results.next().unwrap_or_else(|| {
                Err(BrokerError::Internal(
                    "broker returned too few results".into(),
                ))
            });
            // A publisher that gave up waiting is not an error.
            let _ = reply.send(result);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::{ChannelEvent, ChannelKey, ReadResult, Subscription};
    use crate::{MemoryBroker, MemoryConfig};
    use async_trait::async_trait;
    use bellhop_protocol::{Channel, Role, Sender};
    use tokio::sync::Semaphore;

    fn envelope(id: &str, priority: Priority) -> Arc<Envelope> {
        Arc::new(Envelope {
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
        })
    }

    /// A broker that stores into a memory broker, but only as fast as the test lets it: each
    /// `publish_batch` waits for one permit. Lets a test fill the queue while the worker is busy.
    #[derive(Debug)]
    struct GatedBroker {
        inner: MemoryBroker,
        gate: Semaphore,
        batches: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl Broker for GatedBroker {
        async fn publish_batch(
            &self,
            batch: Vec<Arc<Envelope>>,
        ) -> Vec<Result<Offset, BrokerError>> {
            self.batches
                .lock()
                .push(batch.iter().map(|e| e.message_id.clone()).collect());
            self.gate.acquire().await.expect("gate open").forget();
            self.inner.publish_batch(batch).await
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
        let broker = Arc::new(GatedBroker {
            inner: MemoryBroker::new(MemoryConfig::default()),
            gate: Semaphore::new(0),
            batches: Mutex::new(Vec::new()),
        });
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
        let urgent_offset = urgent.await.unwrap().unwrap();
        let mut normal_offsets = Vec::new();
        for h in handles {
            normal_offsets.push(h.await.unwrap().unwrap());
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
        let broker = Arc::new(GatedBroker {
            inner: MemoryBroker::new(MemoryConfig::default()),
            gate: Semaphore::new(0),
            batches: Mutex::new(Vec::new()),
        });
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
                    .unwrap(),
            );
        }
        let key = ChannelKey::new("h1", Channel::Room("101".into()));
        let read = broker.read(&key, None, 100).await.unwrap();
        let stored: Vec<_> = read.messages.iter().map(|m| m.offset).collect();
        assert_eq!(stored, offsets);
        assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    }
}
