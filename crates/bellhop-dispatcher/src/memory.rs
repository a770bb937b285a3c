//! The embedded broker: every channel's log, presence and read markers in this process's memory.
//!
//! It keeps the same semantics as the Redis backend: offsets in stream-ID form, a time-based
//! retention window (like `XADD ... MINID ~ now-retention`), history and recovery reads with
//! `recovered: false` when `since` fell out of the window, presence and read markers. Memory stays
//! bounded: each channel keeps at most `max_messages_per_channel` messages, and channels with no
//! messages, subscribers or presence are dropped by [`MemoryBroker::sweep`].
//!
//! Everything here is lost when the process stops; clients that come back are told
//! `recovered: false` because their offsets are older than this broker's history.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bellhop_protocol::{Envelope, Offset};
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::broker::{
    Broker, BrokerError, ChannelEvent, ChannelKey, ReadResult, StoredMessage, Subscription,
};

/// Settings of the embedded broker.
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    /// How long messages stay readable (`MESSAGE_RETENTION_HOURS`, 24 h).
    pub retention: Duration,
    /// Most messages kept per channel; older ones are trimmed first (10,000).
    pub max_messages_per_channel: usize,
    /// Events buffered per channel for a live subscriber before it is told it has a gap (4,096).
    pub subscriber_buffer: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            retention: Duration::from_secs(24 * 3600),
            max_messages_per_channel: 10_000,
            subscriber_buffer: 4096,
        }
    }
}

/// A wall clock in milliseconds; injectable so retention is tested without waiting.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The in-memory broker of a single node.
pub struct MemoryBroker {
    /// All channels this broker knows.
    channels: Mutex<HashMap<ChannelKey, ChannelState>>,
    /// Retention and size limits.
    config: MemoryConfig,
    /// Where this broker's history begins: offsets before it were never seen here.
    origin: Offset,
    /// Source of wall-clock time.
    clock: Clock,
}

impl std::fmt::Debug for MemoryBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryBroker")
            .field("channels", &self.channels.lock().len())
            .field("config", &self.config)
            .field("origin", &self.origin)
            .finish()
    }
}

/// One channel's log and side state.
#[derive(Debug)]
struct ChannelState {
    /// Retained messages, oldest first.
    log: VecDeque<StoredMessage>,
    /// The newest offset handed out (or the starting point of an empty channel).
    last: Offset,
    /// Messages at or before this offset may have been trimmed: a `since` below it is not
    /// recoverable.
    floor: Offset,
    /// Live subscribers.
    tx: broadcast::Sender<ChannelEvent>,
    /// Sessions on the channel, by user.
    presence: HashMap<String, HashSet<String>>,
    /// Read markers by user.
    markers: HashMap<String, Offset>,
}

impl ChannelState {
    fn count_after(&self, offset: Offset) -> u64 {
        let start = self.log.partition_point(|m| m.offset <= offset);
        (self.log.len() - start) as u64
    }
}

impl MemoryBroker {
    /// A broker on the system clock.
    pub fn new(config: MemoryConfig) -> Self {
        Self::with_clock(config, Arc::new(crate::now_ms))
    }

    /// A broker on a given clock (milliseconds since the Unix epoch).
    pub fn with_clock(config: MemoryConfig, clock: Clock) -> Self {
        let origin = Offset::new(clock(), 0);
        MemoryBroker {
            channels: Mutex::new(HashMap::new()),
            config,
            origin,
            clock,
        }
    }

    fn retention_ms(&self) -> u64 {
        self.config.retention.as_millis().min(u64::MAX as u128) as u64
    }

    /// The state a channel starts with now: its floor is the later of this broker's origin and
    /// the retention cut-off, since anything older is gone either way.
    fn fresh_state(&self, now: u64) -> ChannelState {
        let floor = self
            .origin
            .max(Offset::new(now.saturating_sub(self.retention_ms()), 0));
        let last = floor.max(Offset::new(now.saturating_sub(1), 0));
        let (tx, _) = broadcast::channel(self.config.subscriber_buffer.max(1));
        ChannelState {
            log: VecDeque::new(),
            last,
            floor,
            tx,
            presence: HashMap::new(),
            markers: HashMap::new(),
        }
    }

    /// Drops messages that left the retention window or exceed the per-channel cap.
    fn trim(&self, state: &mut ChannelState, now: u64) {
        let cutoff = now.saturating_sub(self.retention_ms());
        while let Some(front) = state.log.front() {
            if front.offset.ms < cutoff || state.log.len() > self.config.max_messages_per_channel {
                state.floor = state.floor.max(front.offset);
                state.log.pop_front();
            } else {
                break;
            }
        }
    }

    fn with_state<R>(&self, key: &ChannelKey, f: impl FnOnce(&mut ChannelState, u64) -> R) -> R {
        let now = (self.clock)();
        let mut channels = self.channels.lock();
        let state = channels
            .entry(key.clone())
            .or_insert_with(|| self.fresh_state(now));
        self.trim(state, now);
        f(state, now)
    }

    /// Trims every channel and forgets the ones that hold nothing anymore. Returns how many
    /// channels remain.
    pub fn sweep(&self) -> usize {
        let now = (self.clock)();
        let mut channels = self.channels.lock();
        channels.retain(|_, state| {
            self.trim(state, now);
            !(state.log.is_empty() && state.tx.receiver_count() == 0 && state.presence.is_empty())
        });
        channels.len()
    }

    /// Runs [`MemoryBroker::sweep`] every `every` until the broker is dropped.
    pub fn spawn_sweeper(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(broker) = weak.upgrade() else { return };
                let remaining = broker.sweep();
                tracing::debug!(channels = remaining, "memory broker swept");
            }
        })
    }
}

#[async_trait]
impl Broker for MemoryBroker {
    async fn publish_batch(&self, batch: Vec<Arc<Envelope>>) -> Vec<Result<Offset, BrokerError>> {
        batch
            .into_iter()
            .map(|envelope| {
                let key = ChannelKey::of(&envelope);
                Ok(self.with_state(&key, |state, now| {
                    let offset = state.last.next_after(now);
                    state.last = offset;
                    let message = StoredMessage { offset, envelope };
                    state.log.push_back(message.clone());
                    self.trim(state, now);
                    // No receivers is fine: the message is stored for history and recovery.
                    let _ = state.tx.send(ChannelEvent::Message(message));
                    offset
                }))
            })
            .collect()
    }

    async fn publish_ephemeral(
        &self,
        key: &ChannelKey,
        event: ChannelEvent,
    ) -> Result<(), BrokerError> {
        if let Some(state) = self.channels.lock().get(key) {
            let _ = state.tx.send(event);
        }
        Ok(())
    }

    async fn subscribe(&self, key: &ChannelKey) -> Result<Subscription, BrokerError> {
        Ok(self.with_state(key, |state, _| Subscription::new(state.tx.subscribe())))
    }

    async fn read(
        &self,
        key: &ChannelKey,
        since: Option<Offset>,
        limit: usize,
    ) -> Result<ReadResult, BrokerError> {
        let now = (self.clock)();
        let mut channels = self.channels.lock();
        let fresh;
        let state = match channels.get_mut(key) {
            Some(state) => {
                self.trim(state, now);
                &*state
            }
            None => {
                fresh = self.fresh_state(now);
                &fresh
            }
        };
        let (start, end, recovered) = match since {
            Some(since) => {
                let start = state.log.partition_point(|m| m.offset <= since);
                let recovered = since >= state.floor && since.ms <= now;
                (start, (start + limit).min(state.log.len()), recovered)
            }
            None => (state.log.len().saturating_sub(limit), state.log.len(), true),
        };
        Ok(ReadResult {
            messages: state.log.range(start..end).cloned().collect(),
            recovered,
            last: state.last,
            more: end < state.log.len(),
        })
    }

    async fn presence_join(
        &self,
        key: &ChannelKey,
        user_id: &str,
        session: &str,
    ) -> Result<bool, BrokerError> {
        Ok(self.with_state(key, |state, _| {
            let sessions = state.presence.entry(user_id.to_owned()).or_default();
            let first = sessions.is_empty();
            sessions.insert(session.to_owned());
            first
        }))
    }

    async fn presence_leave(
        &self,
        key: &ChannelKey,
        user_id: &str,
        session: &str,
    ) -> Result<bool, BrokerError> {
        let mut channels = self.channels.lock();
        let Some(state) = channels.get_mut(key) else {
            return Ok(false);
        };
        let Some(sessions) = state.presence.get_mut(user_id) else {
            return Ok(false);
        };
        let removed = sessions.remove(session);
        let last = removed && sessions.is_empty();
        if sessions.is_empty() {
            state.presence.remove(user_id);
        }
        Ok(last)
    }

    async fn presence(&self, key: &ChannelKey) -> Result<Vec<String>, BrokerError> {
        let channels = self.channels.lock();
        let mut users: Vec<String> = channels
            .get(key)
            .map(|s| s.presence.keys().cloned().collect())
            .unwrap_or_default();
        users.sort();
        Ok(users)
    }

    async fn mark_read(
        &self,
        key: &ChannelKey,
        user_id: &str,
        offset: Offset,
    ) -> Result<(Offset, u64), BrokerError> {
        Ok(self.with_state(key, |state, _| {
            let marker = state
                .markers
                .entry(user_id.to_owned())
                .or_insert(Offset::ZERO);
            *marker = (*marker).max(offset);
            let marker = *marker;
            (marker, state.count_after(marker))
        }))
    }

    async fn unread(&self, key: &ChannelKey, user_id: &str) -> Result<u64, BrokerError> {
        let now = (self.clock)();
        let mut channels = self.channels.lock();
        let Some(state) = channels.get_mut(key) else {
            return Ok(0);
        };
        self.trim(state, now);
        let marker = state.markers.get(user_id).copied().unwrap_or(Offset::ZERO);
        Ok(state.count_after(marker))
    }
}
