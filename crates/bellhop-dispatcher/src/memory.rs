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

use std::collections::{HashMap, HashSet, VecDeque};
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

/// Every channel's state, by key.
type Channels = HashMap<ChannelKey, ChannelState>;

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
    presence: HashMap<String, HashSet<String>>,
    /// Read markers by user.
    markers: HashMap<String, Offset>,
}

/// The results of recent publishes with an idempotency key, by channel and key.
#[derive(Debug, Default)]
struct Idempotency {
    /// The original's offset, message id and when it is forgotten (ms).
    results: HashMap<(ChannelKey, String), (Offset, String, u64)>,
    /// Keys in the order they were remembered, with their expiry: every window is the same
    /// length, so this is expiry order too (unless the clock stepped back, which only delays
    /// forgetting).
    order: VecDeque<(u64, (ChannelKey, String))>,
}

impl Idempotency {
    /// Forgets what expired by `now`, and the oldest beyond `cap`.
    fn evict(&mut self, now: u64, cap: usize) {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now && self.results.len() <= cap {
                break;
            }
            let Some((expires, key)) = self.order.pop_front() else {
                break;
            };
            // A key remembered again after it expired has a newer entry further back.
            if self.results.get(&key).is_some_and(|r| r.2 == expires) {
                self.results.remove(&key);
            }
        }
    }

    /// The original result for `key`, if it is still in its window at `now`.
    fn get(&self, key: &(ChannelKey, String), now: u64) -> Option<Published> {
        self.results
            .get(key)
            .filter(|(_, _, expires)| *expires > now)
            .map(|(offset, message_id, _)| Published {
                offset: *offset,
                message_id: message_id.clone(),
                duplicate: true,
            })
    }

    /// Remembers a stored publish's result until `expires`.
    fn insert(&mut self, key: (ChannelKey, String), published: &Published, expires: u64) {
        self.order.push_back((expires, key.clone()));
        self.results.insert(
            key,
            (published.offset, published.message_id.clone(), expires),
        );
    }
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
        channels: &mut HashMap<ChannelKey, ChannelState>,
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
        let message = StoredMessage {
            offset,
            envelope: publish.envelope,
        };
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
    fn fresh_state(&self, now: u64) -> ChannelState {
        let floor = self.fresh_floor(now);
        let last = floor
            .max(Offset::new(now.saturating_sub(1), 0))
            .max(*self.high_water.lock());
        ChannelState {
            log: VecDeque::new(),
            last,
            floor,
            tx: None,
            sinks: Vec::new(),
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
        let marker = state.markers.get(user_id).copied().unwrap_or(Offset::ZERO);
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
mod tests {
    //! Behaviour specific to the embedded broker: retention, the per-channel cap, sweeping,
    //! restarts, clock steps and subscriber buffers. Time is a hand-driven clock, so nothing
    //! here waits.

    use std::sync::atomic::{AtomicU64, Ordering};

    use bellhop_protocol::{Channel, Envelope, Priority, Role, Sender};

    use super::*;
    use crate::broker::SubscriptionEvent;

    /// An arbitrary, realistic wall-clock start (November 2023).
    const START: u64 = 1_700_000_000_000;

    /// A message for `channel` of `property`, recognisable by its `id`.
    fn envelope(property: &str, channel: &Channel, id: &str) -> Arc<Envelope> {
        Arc::new(Envelope {
            message_id: id.into(),
            event: "CHAT_MESSAGE".into(),
            namespace: property.into(),
            channel: channel.clone(),
            payload: serde_json::Value::Null,
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            sender: Sender {
                id: "u1".into(),
                role: Role::Staff,
            },
            priority: Priority::Normal,
            correlation_id: None,
        })
    }

    fn key(channel: &str) -> ChannelKey {
        ChannelKey::new("h1", Channel::Room(channel.into()))
    }

    /// A clock the test sets by hand, starting at [`START`].
    fn clock() -> Arc<AtomicU64> {
        Arc::new(AtomicU64::new(START))
    }

    fn set(clock: &AtomicU64, ms: u64) {
        clock.store(ms, Ordering::SeqCst);
    }

    /// A broker reading time from `clock`.
    fn broker_on(clock: &Arc<AtomicU64>, config: MemoryConfig) -> MemoryBroker {
        let clock = clock.clone();
        MemoryBroker::with_clock(config, Arc::new(move || clock.load(Ordering::SeqCst)))
    }

    fn retention_10s() -> MemoryConfig {
        MemoryConfig {
            retention: Duration::from_secs(10),
            ..MemoryConfig::default()
        }
    }

    async fn publish(broker: &MemoryBroker, key: &ChannelKey, id: &str) -> Offset {
        let mut results = broker
            .publish_batch(vec![envelope(&key.property, &key.channel, id).into()])
            .await;
        results.pop().unwrap().unwrap().offset
    }

    /// The message ids of a read, oldest first.
    fn ids(read: &ReadResult) -> Vec<&str> {
        read.messages
            .iter()
            .map(|m| m.envelope.message_id.as_str())
            .collect()
    }

    #[tokio::test]
    async fn retention_trims_old_messages_and_recovery_follows_what_was_trimmed() {
        let now = clock();
        let broker = broker_on(&now, retention_10s());
        let k = key("101");
        let before = broker.read(&k, None, 50).await.unwrap().last;
        let a = publish(&broker, &k, "a").await;
        set(&now, START + 1);
        let b = publish(&broker, &k, "b").await;
        set(&now, START + 5_000);
        let c = publish(&broker, &k, "c").await;
        let _d = publish(&broker, &k, "d").await;
        assert_eq!(
            ids(&broker.read(&k, None, 50).await.unwrap()),
            ["a", "b", "c", "d"]
        );

        // The cut-off is now START + 2: a and b are out of the window, c and d in.
        set(&now, START + 10_002);
        let read = broker.read(&k, None, 50).await.unwrap();
        assert_eq!(ids(&read), ["c", "d"]);
        assert_eq!(
            broker.unread(&k, "u9").await.unwrap(),
            2,
            "only retained count"
        );

        // Positions before or among the trimmed messages lost something: not recovered, but
        // the retained messages still come back.
        for since in [before, a] {
            let read = broker.read(&k, Some(since), 50).await.unwrap();
            assert!(!read.recovered, "since {since} precedes trimmed b");
            assert_eq!(ids(&read), ["c", "d"]);
        }
        // At the newest trimmed message or later, nothing is missing.
        let read = broker.read(&k, Some(b), 50).await.unwrap();
        assert!(read.recovered);
        assert_eq!(ids(&read), ["c", "d"]);
        let read = broker.read(&k, Some(c), 50).await.unwrap();
        assert!(read.recovered);
        assert_eq!(ids(&read), ["d"]);
    }

    #[tokio::test]
    async fn the_per_channel_cap_keeps_the_newest_messages() {
        let now = clock();
        let config = MemoryConfig {
            max_messages_per_channel: 3,
            ..MemoryConfig::default()
        };
        let broker = broker_on(&now, config);
        let k = key("101");
        let mut offsets = Vec::new();
        for id in ["m0", "m1", "m2", "m3", "m4"] {
            offsets.push(publish(&broker, &k, id).await);
        }
        let read = broker.read(&k, None, 50).await.unwrap();
        assert_eq!(ids(&read), ["m2", "m3", "m4"]);

        let read = broker.read(&k, Some(offsets[0]), 50).await.unwrap();
        assert!(!read.recovered, "m1 was trimmed after m0");
        assert_eq!(ids(&read), ["m2", "m3", "m4"]);
        let read = broker.read(&k, Some(offsets[1]), 50).await.unwrap();
        assert!(
            read.recovered,
            "m1 is the newest trimmed: nothing after it is missing"
        );
        assert_eq!(ids(&read), ["m2", "m3", "m4"]);
    }

    #[tokio::test]
    async fn sweep_forgets_channels_that_hold_nothing() {
        let now = clock();
        let broker = broker_on(&now, retention_10s());
        publish(&broker, &key("a"), "a0").await;
        publish(&broker, &key("b"), "b0").await;
        // Neither a read nor an ephemeral event of an unused channel leaves state behind.
        broker.read(&key("c"), None, 50).await.unwrap();
        let typing = ChannelEvent::Typing {
            user_id: "u1".into(),
        };
        broker.publish_ephemeral(&key("d"), typing).await.unwrap();
        assert_eq!(broker.sweep(), 2, "retained messages keep a and b");

        set(&now, START + 10_001);
        assert_eq!(broker.sweep(), 0);
    }

    #[tokio::test]
    async fn sweep_keeps_channels_with_a_subscriber_or_presence() {
        let now = clock();
        let broker = broker_on(&now, retention_10s());
        let (watched, occupied) = (key("watched"), key("occupied"));
        let mut sub = broker.subscribe(&watched).await.unwrap();
        publish(&broker, &watched, "old").await;
        broker.presence_join(&occupied, "u1", "s1").await.unwrap();

        set(&now, START + 60_000);
        assert_eq!(broker.sweep(), 2);
        assert_eq!(broker.presence(&occupied).await.unwrap(), ["u1"]);
        // The subscriber still hangs off the same channel: a publish after the sweep reaches it
        // (had the sweep replaced the channel, it would silently miss everything from now on).
        assert!(matches!(
            sub.recv().await,
            SubscriptionEvent::Event(ChannelEvent::Message(m)) if m.envelope.message_id == "old"
        ));
        let fresh = publish(&broker, &watched, "fresh").await;
        assert_eq!(
            sub.recv().await,
            SubscriptionEvent::Event(ChannelEvent::Message(StoredMessage {
                offset: fresh,
                envelope: envelope("h1", &watched.channel, "fresh"),
            }))
        );

        drop(sub);
        broker.presence_leave(&occupied, "u1", "s1").await.unwrap();
        set(&now, START + 120_000);
        assert_eq!(broker.sweep(), 0);
    }

    #[tokio::test]
    async fn a_position_from_before_a_sweep_resumes_within_retention() {
        let now = clock();
        let broker = broker_on(&now, retention_10s());
        let k = key("quiet");
        // A client subscribes to a quiet channel and learns its position.
        set(&now, START + 100);
        let sub = broker.subscribe(&k).await.unwrap();
        let position = broker.read(&k, None, 50).await.unwrap().last;
        drop(sub);

        set(&now, START + 3_000);
        assert_eq!(broker.sweep(), 0, "nothing holds the channel");

        set(&now, START + 5_000);
        let read = broker.read(&k, Some(position), 50).await.unwrap();
        assert!(read.recovered, "nothing was published, nothing is missing");
        assert!(read.messages.is_empty());
        publish(&broker, &k, "m0").await;
        let read = broker.read(&k, Some(position), 50).await.unwrap();
        assert!(read.recovered);
        assert_eq!(ids(&read), ["m0"]);
    }

    #[tokio::test]
    async fn a_restarted_broker_does_not_recover_the_previous_ones_offsets() {
        let now = clock();
        let old = broker_on(&now, MemoryConfig::default());
        let o = publish(&old, &key("101"), "m0").await;
        set(&now, START + 500);
        let empty_position = old.read(&key("102"), None, 50).await.unwrap().last;
        drop(old);

        // The process restarts a minute later with an empty memory.
        set(&now, START + 60_000);
        let new = broker_on(&now, MemoryConfig::default());
        for (k, since) in [(key("101"), o), (key("102"), empty_position)] {
            let read = new.read(&k, Some(since), 50).await.unwrap();
            assert!(!read.recovered, "{since} was handed out by the old broker");
            assert!(read.messages.is_empty());
        }
        // The new broker's own positions are good.
        let position = new.read(&key("101"), None, 50).await.unwrap().last;
        publish(&new, &key("101"), "m1").await;
        let read = new.read(&key("101"), Some(position), 50).await.unwrap();
        assert!(read.recovered);
        assert_eq!(ids(&read), ["m1"]);
    }

    #[tokio::test]
    async fn offsets_never_go_backwards_when_the_clock_does() {
        let now = clock();
        let broker = broker_on(&now, MemoryConfig::default());
        let k = key("101");
        let mut offsets = Vec::new();
        set(&now, START + 1_000);
        offsets.push(publish(&broker, &k, "m0").await);
        offsets.push(publish(&broker, &k, "m1").await);
        // NTP steps the clock back half a second.
        set(&now, START + 500);
        offsets.push(publish(&broker, &k, "m2").await);
        let batch = ["m3", "m4"]
            .iter()
            .map(|id| envelope("h1", &k.channel, id).into())
            .collect();
        offsets.extend(
            broker
                .publish_batch(batch)
                .await
                .into_iter()
                .map(|r| r.unwrap().offset),
        );
        set(&now, START + 2_000);
        offsets.push(publish(&broker, &k, "m5").await);

        assert!(
            offsets.windows(2).all(|w| w[0] < w[1]),
            "offsets must strictly increase: {offsets:?}"
        );
        let read = broker.read(&k, None, 50).await.unwrap();
        assert_eq!(ids(&read), ["m0", "m1", "m2", "m3", "m4", "m5"]);
        let stored: Vec<Offset> = read.messages.iter().map(|m| m.offset).collect();
        assert_eq!(stored, offsets);
        let read = broker.read(&k, Some(offsets[1]), 50).await.unwrap();
        assert_eq!(ids(&read), ["m2", "m3", "m4", "m5"]);
    }

    #[tokio::test]
    async fn a_position_handed_out_for_an_unused_channel_survives_a_clock_step_back() {
        let now = clock();
        let broker = broker_on(&now, MemoryConfig::default());
        let k = key("101");
        set(&now, START + 1_000);
        let position = broker.read(&k, None, 50).await.unwrap().last;
        // The clock steps back 50 ms and someone publishes.
        set(&now, START + 950);
        let o = publish(&broker, &k, "m0").await;
        // The client resumes once the clock has caught up.
        set(&now, START + 2_000);
        let read = broker.read(&k, Some(position), 50).await.unwrap();
        // What the client sees: m0, or recovered=false so it reloads; never a silent loss.
        assert!(
            !read.recovered || ids(&read) == ["m0"],
            "recovered={} but m0 is missing: {:?}",
            read.recovered,
            ids(&read)
        );
        assert!(
            o > position,
            "m0 at {o} is not after the handed-out position {position}"
        );
    }

    #[tokio::test]
    async fn offsets_handed_out_ahead_of_the_clock_are_recovered() {
        let now = clock();
        let broker = broker_on(&now, MemoryConfig::default());
        let k = key("101");
        set(&now, START + 1_000);
        let o0 = publish(&broker, &k, "m0").await;
        set(&now, START + 900);
        let o1 = publish(&broker, &k, "m1").await;
        assert!(o1 > o0);

        let read = broker.read(&k, Some(o0), 50).await.unwrap();
        assert!(
            read.recovered,
            "since {o0} (now {}) is a real position",
            START + 900
        );
        assert_eq!(ids(&read), ["m1"]);
        let read = broker.read(&k, Some(o1), 50).await.unwrap();
        assert!(read.recovered, "since {o1} is the newest offset");
        assert!(read.messages.is_empty());
    }

    #[tokio::test]
    async fn a_subscriber_that_falls_behind_gets_a_gap() {
        let now = clock();
        let config = MemoryConfig {
            subscriber_buffer: 4,
            ..MemoryConfig::default()
        };
        let broker = broker_on(&now, config);
        let k = key("101");
        let position = broker.read(&k, None, 50).await.unwrap().last;
        let mut slow = broker.subscribe(&k).await.unwrap();
        let mut fast = broker.subscribe(&k).await.unwrap();

        let mut offsets = Vec::new();
        for i in 0..10 {
            let o = publish(&broker, &k, &format!("m{i}")).await;
            offsets.push(o);
            // A subscriber that keeps up never sees a gap, whatever the others do.
            match fast.recv().await {
                SubscriptionEvent::Event(ChannelEvent::Message(m)) => assert_eq!(m.offset, o),
                other => panic!("fast subscriber got {other:?}"),
            }
        }

        assert_eq!(slow.recv().await, SubscriptionEvent::Gap);
        // After the gap, the subscription carries on with what is still buffered, in order, up
        // to the newest message (no publish here: it would overflow the full buffer again)...
        let mut previous = position;
        let mut live_after_gap = 0;
        while previous != offsets[9] {
            match slow.recv().await {
                SubscriptionEvent::Event(ChannelEvent::Message(m)) => {
                    assert!(m.offset > previous, "live order after a gap");
                    assert!(offsets.contains(&m.offset));
                    previous = m.offset;
                    live_after_gap += 1;
                }
                other => panic!("slow subscriber got {other:?}"),
            }
        }
        assert!(live_after_gap < 10, "the gap must have cost something");
        // ...and re-reading from the last offset it had delivered repairs the gap.
        let read = broker.read(&k, Some(position), 50).await.unwrap();
        assert!(read.recovered);
        let stored: Vec<Offset> = read.messages.iter().map(|m| m.offset).collect();
        assert_eq!(stored, offsets);
    }

    #[tokio::test]
    async fn an_idempotency_result_lasts_exactly_the_window_and_their_number_is_capped() {
        let now = clock();
        let config = MemoryConfig {
            idempotency_window: Duration::from_secs(600),
            max_idempotency_keys: 3,
            ..MemoryConfig::default()
        };
        let broker = broker_on(&now, config);
        let k = key("101");
        let publish = |id: &str, key: &str| {
            let p = Publish::with_key(envelope("h1", &k.channel, id), key);
            let broker = &broker;
            async move { broker.publish_batch(vec![p]).await.pop().unwrap().unwrap() }
        };
        let first = publish("m0", "u1:a").await;
        assert!(!first.duplicate);
        set(&now, START + 599_999);
        let repeat = publish("m0-retry", "u1:a").await;
        assert!(repeat.duplicate);
        assert_eq!(
            (repeat.offset, repeat.message_id.as_str()),
            (first.offset, "m0")
        );
        // The window is over: the same key is a new message.
        set(&now, START + 600_000);
        let second = publish("m1", "u1:a").await;
        assert!(!second.duplicate);
        assert!(second.offset > first.offset);
        assert!(publish("m1-retry", "u1:a").await.duplicate);

        // Three results at most: a fourth key pushes out the oldest (u1:a) early.
        for (id, key) in [("b", "u1:b"), ("c", "u1:c"), ("d", "u1:d")] {
            assert!(!publish(id, key).await.duplicate);
        }
        assert!(!publish("m1-late", "u1:a").await.duplicate, "forgotten");
        let (results, order) = {
            let idempotency = broker.idempotency.lock();
            (idempotency.results.len(), idempotency.order.len())
        };
        assert!(results <= 3, "{results} results remembered");
        assert!(order <= 4, "the order queue is bounded too: {order}");
        let read = broker.read(&k, None, 50).await.unwrap();
        assert_eq!(ids(&read), ["m0", "m1", "b", "c", "d", "m1-late"]);
    }

    #[tokio::test]
    async fn a_read_marker_of_a_channel_nobody_used_is_the_floor_and_leaves_nothing() {
        let now = clock();
        let broker = broker_on(&now, retention_10s());
        let k = key("quiet");
        set(&now, START + 20_000);
        let (marker, unread) = broker
            .mark_read(&k, "u1", Offset::new(START + 19_000, 0))
            .await
            .unwrap();
        assert_eq!((marker, unread), (Offset::new(START + 10_000, 0), 0));
        assert_eq!(broker.unread(&k, "u1").await.unwrap(), 0);
        assert_eq!(broker.channels.lock().len(), 0, "no state was created");
        publish(&broker, &k, "m0").await;
        assert_eq!(broker.unread(&k, "u1").await.unwrap(), 1);
    }

    #[tokio::test]
    async fn dropping_the_broker_closes_its_subscriptions() {
        let now = clock();
        let broker = broker_on(&now, MemoryConfig::default());
        let mut sub = broker.subscribe(&key("101")).await.unwrap();
        drop(broker);
        assert_eq!(sub.recv().await, SubscriptionEvent::Closed);
    }
}
