//! The embedded broker: every channel's log, presence and read markers in this process's memory.
//!
//! It keeps the same semantics as the Redis backend: offsets in stream-ID form, a time-based
//! retention window (like `XADD ... MINID ~ now-retention`), history and recovery reads with
//! `recovered: false` when `since` fell out of the window, presence and read markers. Memory stays
//! bounded: each channel keeps at most `max_messages_per_channel` messages, channels with no
//! messages, subscribers or presence are dropped by [`MemoryBroker::sweep`], and the results of
//! idempotent publishes are remembered for `idempotency_window`, at most `max_idempotency_keys`
//! of them (the oldest go first when there are more).
//!
//! Reads do not create state: a read, a read marker or an unread count of a channel nobody
//! published to leaves nothing behind (a marker there is not saved: nothing precedes it).
//!
//! Everything here is lost when the process stops; clients that come back are told
//! `recovered: false` because their offsets are older than this broker's history.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use async_trait::async_trait;
use bellhop_protocol::Offset;
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::broker::{
    Attachment, Broker, BrokerError, ChannelEvent, ChannelKey, LiveSink, Publish, Published,
    ReadResult, StoredMessage, Subscription, SubscriptionEvent,
};

mod idempotency;
mod presence;

use idempotency::Idempotency;
use presence::Presence;

/// Settings of the embedded broker.
#[derive(Clone, Debug)]
pub struct MemoryConfig {
    /// How long messages stay readable (`MESSAGE_RETENTION_HOURS`, 24 h).
    pub retention: Duration,
    /// Most messages kept per channel; older ones are trimmed first (10,000, the same as the
    /// Redis backend's). A `since` older than a message trimmed this way is `recovered: false`.
    pub max_messages_per_channel: usize,
    /// How long the result of a publish with an idempotency key is remembered (600 s,
    /// `IDEMPOTENCY_WINDOW_SECONDS`): a repeat within it is answered with the original.
    pub idempotency_window: Duration,
    /// Most idempotency results remembered at once (100,000, about 30 MB at most); beyond it the
    /// oldest are forgotten before their window ends.
    pub max_idempotency_keys: usize,
    /// Events buffered per channel for a live [`Broker::subscribe`] subscriber before it is told
    /// it has a gap (32). The buffer is allocated in full for every channel with such a
    /// subscriber, so it is small: a subscriber that falls behind re-reads the log. Sinks
    /// ([`Broker::attach`], what a node's hub uses) are handed each event as it happens and have
    /// no buffer here.
    pub subscriber_buffer: usize,
}

impl Default for MemoryConfig {
    fn default() -> Self {
        MemoryConfig {
            retention: Duration::from_secs(24 * 3600),
            max_messages_per_channel: 10_000,
            idempotency_window: Duration::from_secs(600),
            max_idempotency_keys: 100_000,
            subscriber_buffer: 32,
        }
    }
}

/// A wall clock in milliseconds; injectable so retention is tested without waiting.
type Clock = Arc<dyn Fn() -> u64 + Send + Sync>;

/// The in-memory broker of a single node.
pub struct MemoryBroker {
    /// All channels this broker knows (shared with the [`Attachment`]s, which detach their sink
    /// when dropped).
    channels: Arc<Mutex<Channels>>,
    /// Numbers the attached sinks, so that an attachment detaches its own.
    next_sink: AtomicU64,
    /// Retention and size limits.
    config: MemoryConfig,
    /// Where this broker's history begins: offsets before it were never seen here.
    origin: Offset,
    /// The highest `last` handed out for a channel that then kept no state (never stored, or
    /// swept). A channel created later starts above it, so a clock that steps back cannot give
    /// a new message an offset a client already holds. Locked only while `channels` is held.
    high_water: Mutex<Offset>,
    /// Results of recent idempotent publishes. Locked only while `channels` is held, so the check
    /// and the write of a publish are one step.
    idempotency: Mutex<Idempotency>,
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

/// Every channel's state, by key. Boxed: most channels are a connection's own `user:` channel
/// with next to nothing in it, and the table's spare slots are then pointers, not whole states.
type Channels = HashMap<ChannelKey, Box<ChannelState>>;

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
    /// Live subscribers of [`Broker::subscribe`]; made with the first of them.
    tx: Option<broadcast::Sender<ChannelEvent>>,
    /// Attached sinks, by number.
    sinks: Vec<(u64, Arc<dyn LiveSink>)>,
    /// Sessions on the channel, by user.
    presence: Presence,
    /// Read markers by user; made with the first of them (most channels never have one, and
    /// an empty table takes 48 B of every channel's state).
    #[allow(
        clippy::box_collection,
        reason = "an empty table's 48 B would be in every channel's state"
    )]
    markers: Option<Box<HashMap<String, Offset>>>,
}

impl ChannelState {
    /// Hands a live event to every subscriber and sink, in the order events happen (the caller
    /// holds the channels' lock).
    fn emit(&self, event: ChannelEvent) {
        for (_, sink) in &self.sinks {
            sink.deliver(SubscriptionEvent::Event(event.clone()));
        }
        if let Some(tx) = &self.tx {
            // No receivers is fine: the message is stored for history and recovery.
            let _ = tx.send(event);
        }
    }

    /// Whether anyone listens to the channel's live events.
    fn has_listeners(&self) -> bool {
        !self.sinks.is_empty() || self.tx.as_ref().is_some_and(|tx| tx.receiver_count() > 0)
    }

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
            channels: Arc::new(Mutex::new(HashMap::new())),
            next_sink: AtomicU64::new(1),
            config,
            origin,
            high_water: Mutex::new(Offset::ZERO),
            idempotency: Mutex::new(Idempotency::default()),
            clock,
        }
    }

    fn retention_ms(&self) -> u64 {
        self.config.retention.as_millis().min(u64::MAX as u128) as u64
    }

    /// The floor of a channel with no state: the later of this broker's origin and the retention
    /// cut-off.
    fn fresh_floor(&self, now: u64) -> Offset {
        self.origin
            .max(Offset::new(now.saturating_sub(self.retention_ms()), 0))
    }

    /// Stores one publish (or finds its original), with `channels` locked.
    fn publish_one(
        &self,
        channels: &mut Channels,
        publish: Publish,
        now: u64,
    ) -> Result<Published, BrokerError> {
        let idempotency_key = publish.checked_key()?.map(str::to_owned);
        let key = ChannelKey::of(&publish.envelope);
        let remembered = idempotency_key.map(|k| (key.clone(), k));
        let mut idempotency = self.idempotency.lock();
        if let Some(remembered) = &remembered {
            idempotency.evict(now, self.config.max_idempotency_keys);
            if let Some(original) = idempotency.get(remembered, now) {
                return Ok(original);
            }
        }
        let state = channels.entry(key).or_insert_with(|| self.fresh_state(now));
        self.trim(state, now);
        let offset = state.last.next_after(now);
        state.last = offset;
        let published = Published {
            offset,
            message_id: publish.envelope.message_id.clone(),
            duplicate: false,
        };
        let message = StoredMessage::new(offset, publish.envelope);
        state.log.push_back(message.clone());
        self.trim(state, now);
        state.emit(ChannelEvent::Message(message));
        if let Some(remembered) = remembered {
            let window = self
                .config
                .idempotency_window
                .as_millis()
                .min(u64::MAX as u128) as u64;
            idempotency.insert(remembered, &published, now.saturating_add(window));
            idempotency.evict(now, self.config.max_idempotency_keys);
        }
        Ok(published)
    }

    /// The state a channel starts with now: its floor is the later of this broker's origin and
    /// the retention cut-off, since anything older is gone either way; its `last` is just below
    /// now, and above every position handed out for a channel that kept no state. Called with
    /// `channels` locked.
    fn fresh_state(&self, now: u64) -> Box<ChannelState> {
        let floor = self.fresh_floor(now);
        let last = floor
            .max(Offset::new(now.saturating_sub(1), 0))
            .max(*self.high_water.lock());
        Box::new(ChannelState {
            log: VecDeque::new(),
            last,
            floor,
            tx: None,
            sinks: Vec::new(),
            presence: Presence::default(),
            markers: None,
        })
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
            let keep =
                !(state.log.is_empty() && !state.has_listeners() && state.presence.is_empty());
            if !keep {
                let mut high_water = self.high_water.lock();
                *high_water = (*high_water).max(state.last);
            }
            keep
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
    async fn publish_batch(&self, batch: Vec<Publish>) -> Vec<Result<Published, BrokerError>> {
        let now = (self.clock)();
        let mut channels = self.channels.lock();
        batch
            .into_iter()
            .map(|publish| self.publish_one(&mut channels, publish, now))
            .collect()
    }

    async fn publish_ephemeral(
        &self,
        key: &ChannelKey,
        event: ChannelEvent,
    ) -> Result<(), BrokerError> {
        if let Some(state) = self.channels.lock().get(key) {
            state.emit(event);
        }
        Ok(())
    }

    async fn subscribe(&self, key: &ChannelKey) -> Result<Subscription, BrokerError> {
        let capacity = self.config.subscriber_buffer.max(1);
        Ok(self.with_state(key, |state, _| {
            let tx = state
                .tx
                .get_or_insert_with(|| broadcast::channel(capacity).0);
            Subscription::new(tx.subscribe())
        }))
    }

    async fn attach(
        &self,
        key: &ChannelKey,
        sink: Arc<dyn LiveSink>,
    ) -> Result<Attachment, BrokerError> {
        let id = self.next_sink.fetch_add(1, Ordering::Relaxed);
        self.with_state(key, |state, _| {
            // Usually the one node's hub: no room kept for more.
            state.sinks.reserve_exact(1);
            state.sinks.push((id, sink));
        });
        Ok(Attachment::new(Box::new(Detach {
            channels: Arc::downgrade(&self.channels),
            key: key.clone(),
            id,
        })))
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
                let mut high_water = self.high_water.lock();
                *high_water = (*high_water).max(fresh.last);
                &fresh
            }
        };
        let (start, end, recovered) = match since {
            Some(since) => {
                let start = state.log.partition_point(|m| m.offset <= since);
                // A position is known if it is not older than the floor and not beyond both the
                // clock and the newest offset handed out (after a clock step back, offsets run
                // ahead of the clock).
                let known = since.ms <= now || since <= state.last;
                let recovered = since >= state.floor && known;
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
        Ok(self.with_state(key, |state, _| state.presence.join(user_id, session)))
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
        Ok(state.presence.leave(user_id, session))
    }

    async fn presence(&self, key: &ChannelKey) -> Result<Vec<String>, BrokerError> {
        let channels = self.channels.lock();
        Ok(channels
            .get(key)
            .map(|s| s.presence.users())
            .unwrap_or_default())
    }

    async fn mark_read(
        &self,
        key: &ChannelKey,
        user_id: &str,
        offset: Offset,
    ) -> Result<(Offset, u64), BrokerError> {
        let now = (self.clock)();
        let mut channels = self.channels.lock();
        let Some(state) = channels.get_mut(key) else {
            // Nothing was ever published here (or it all left): a marker would precede nothing,
            // so none is saved, and nothing is unread.
            return Ok((self.fresh_floor(now), 0));
        };
        self.trim(state, now);
        Ok({
            let last = state.last;
            let marker = state
                .markers
                .get_or_insert_with(Default::default)
                .entry(user_id.to_owned())
                .or_insert(Offset::ZERO);
            // A marker beyond the newest message would hide every future one: clamp it.
            *marker = (*marker).max(offset.min(last));
            let marker = *marker;
            (marker, state.count_after(marker))
        })
    }

    async fn unread(&self, key: &ChannelKey, user_id: &str) -> Result<u64, BrokerError> {
        let now = (self.clock)();
        let mut channels = self.channels.lock();
        let Some(state) = channels.get_mut(key) else {
            return Ok(0);
        };
        self.trim(state, now);
        let marker = state
            .markers
            .as_ref()
            .and_then(|markers| markers.get(user_id))
            .copied()
            .unwrap_or(Offset::ZERO);
        Ok(state.count_after(marker))
    }
}

/// Detaches a sink from its channel when dropped (an [`Attachment`] of the embedded broker).
struct Detach {
    /// The broker's channels; gone with the broker.
    channels: Weak<Mutex<Channels>>,
    /// The sink's channel.
    key: ChannelKey,
    /// The sink's number.
    id: u64,
}

impl Drop for Detach {
    fn drop(&mut self) {
        let Some(channels) = self.channels.upgrade() else {
            return;
        };
        let mut channels = channels.lock();
        if let Some(state) = channels.get_mut(&self.key) {
            state.sinks.retain(|(id, _)| *id != self.id);
        }
    }
}

#[cfg(test)]
mod tests;
