//! The node's local fan-out hub: one broker subscription per channel that at least one local
//! connection wants, shared by all of them, and each message encoded once per codec.
//!
//! Ordering and exactly-once delivery per connection: the hub remembers the last offset it
//! delivered for each channel (dropping anything at or below it) and a watermark per
//! subscriber. A new subscriber starts *pending*: live messages are buffered while its session
//! replays history from the broker, then [`Hub::activate`] flushes the buffered messages that are
//! newer than the replay and turns the subscriber live. A gap reported by the broker makes the
//! channel re-read the log from its last offset, so nothing is skipped.
//!
//! An idle channel costs no task and no buffer: the hub attaches each channel to the broker as a
//! [`LiveSink`], which queues what the broker hands it and starts a task to deliver it only
//! while there is something queued (the task ends when the queue is empty). Events of one
//! channel are delivered by one task at a time, in the order the broker handed them over.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bellhop_dispatcher::{
    Attachment, Broker, BrokerError, ChannelEvent, ChannelKey, LiveSink, StoredMessage,
    SubscriptionEvent,
};
use bellhop_protocol::{close, Codec, Offset, ServerFrame};
use parking_lot::Mutex;
use tokio::sync::OnceCell;

use crate::metrics::Metrics;
use crate::outbound::{channel_tag, Class, Outbound, Pushed};
use crate::wire::WireFrame;

/// Live messages buffered for a pending subscriber before it must re-read from the broker.
const PENDING_BUFFER: usize = 4096;
/// Messages per broker read when catching up after a gap.
const PAGE: usize = 500;
/// Live events a channel queues while its delivery task is busy (catching up after a gap,
/// say) before the queue is dropped for a gap: what was dropped is re-read from the log.
const QUEUED_EVENTS: usize = 4096;

/// A local connection's interest in a channel.
#[derive(Debug, Clone)]
pub(crate) struct Subscriber {
    /// The connection.
    pub(crate) conn_id: u64,
    /// Its user: typing notices are not echoed to the typist.
    pub(crate) user_id: String,
    /// The codec its frames use.
    pub(crate) codec: Codec,
    /// Where its frames go.
    pub(crate) outbound: Arc<Outbound>,
    /// Whether it receives `join`, `leave` and `typing` notices (the policy's
    /// `Access::Presence`: guests do not on `broadcast`).
    pub(crate) sees_presence: bool,
}

/// Where a subscriber is in the hand-over from replay to live delivery.
#[derive(Debug)]
enum Mode {
    /// Its session is replaying; live messages wait here.
    Pending {
        /// Live messages that arrived during the replay.
        buffer: Vec<StoredMessage>,
        /// The buffer overflowed and was emptied: the session must re-read.
        overflowed: bool,
    },
    /// Receives live messages newer than `watermark`.
    Live {
        /// The newest offset delivered to it.
        watermark: Offset,
    },
}

#[derive(Debug)]
struct LocalSub {
    sub: Subscriber,
    mode: Mode,
}

/// A channel's local subscribers by connection id. Most channels (each connection's own `user:`
/// channel) have exactly one, which is held inline, without a table; a table holds two or more
/// (boxed: its spare slots are then pointers, not whole subscribers), and gives way to the
/// inline form again when one is left.
#[derive(Debug, Default)]
enum Subs {
    #[default]
    Empty,
    One(LocalSub),
    Many(HashMap<u64, Box<LocalSub>>),
}

impl Subs {
    fn insert(&mut self, conn_id: u64, local: Box<LocalSub>) {
        match std::mem::take(self) {
            Subs::Empty => *self = Subs::One(*local),
            Subs::One(only) if only.sub.conn_id == conn_id => *self = Subs::One(*local),
            Subs::One(only) => {
                let mut many = HashMap::with_capacity(2);
                many.insert(only.sub.conn_id, Box::new(only));
                many.insert(conn_id, local);
                *self = Subs::Many(many);
            }
            Subs::Many(mut many) => {
                many.insert(conn_id, local);
                *self = Subs::Many(many);
            }
        }
    }

    fn get_mut(&mut self, conn_id: &u64) -> Option<&mut LocalSub> {
        match self {
            Subs::Empty => None,
            Subs::One(only) => (only.sub.conn_id == *conn_id).then_some(only),
            Subs::Many(many) => many.get_mut(conn_id).map(|b| &mut **b),
        }
    }

    fn remove(&mut self, conn_id: &u64) {
        match self {
            Subs::Empty => {}
            Subs::One(only) => {
                if only.sub.conn_id == *conn_id {
                    *self = Subs::Empty;
                }
            }
            Subs::Many(many) => {
                many.remove(conn_id);
                if many.len() <= 1 {
                    let last = many.drain().next();
                    *self = match last {
                        Some((_, last)) => Subs::One(*last),
                        None => Subs::Empty,
                    };
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Subs::Empty)
    }

    #[cfg(test)]
    fn get(&self, conn_id: &u64) -> Option<&LocalSub> {
        self.values().find(|local| local.sub.conn_id == *conn_id)
    }

    fn values(&self) -> impl Iterator<Item = &LocalSub> {
        let (one, many) = match self {
            Subs::Empty => (None, None),
            Subs::One(only) => (Some(only), None),
            Subs::Many(many) => (None, Some(many.values().map(|b| &**b))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }

    fn values_mut(&mut self) -> impl Iterator<Item = &mut LocalSub> {
        let (one, many) = match self {
            Subs::Empty => (None, None),
            Subs::One(only) => (Some(only), None),
            Subs::Many(many) => (None, Some(many.values_mut().map(|b| &mut **b))),
        };
        one.into_iter().chain(many.into_iter().flatten())
    }
}

#[cfg(test)]
impl std::ops::Index<&u64> for Subs {
    type Output = LocalSub;

    fn index(&self, conn_id: &u64) -> &LocalSub {
        self.get(conn_id).expect("no such subscriber")
    }
}

/// What every channel of the hub shares.
#[derive(Debug)]
struct Shared {
    /// The broker: attachments and catch-up reads.
    broker: Arc<dyn Broker>,
    /// Delivery metrics.
    metrics: Metrics,
}

/// One channel's local state; the broker's [`LiveSink`] for the channel.
#[derive(Debug)]
struct ChannelHub {
    /// Which channel.
    key: ChannelKey,
    /// The channel's tag in outbound queues.
    tag: u64,
    /// Set once the broker attachment is up and delivery may start.
    init: OnceCell<()>,
    /// Subscribers, the channel's delivery position and its queue of live events.
    state: Mutex<HubState>,
    /// The hub's broker and metrics.
    shared: Arc<Shared>,
    /// This channel itself, for the delivery task the sink starts.
    me: Weak<ChannelHub>,
}

#[derive(Debug, Default)]
struct HubState {
    /// Local subscribers by connection id.
    subs: Subs,
    /// The newest offset delivered on this channel.
    last: Offset,
    /// Live events the broker handed over and no task delivered yet; empty (and unallocated)
    /// while the channel is quiet.
    queue: VecDeque<SubscriptionEvent>,
    /// A delivery task is running (it ends when it finds the queue empty).
    delivering: bool,
    /// Delivery may start: the attachment is up and `last` is known.
    ready: bool,
    /// The broker attachment; dropped (outside the lock) when the last subscriber leaves.
    attachment: Option<Attachment>,
    /// Set when the last subscriber left; a joiner that finds it set starts over.
    closed: bool,
}

/// Result of [`Hub::activate`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Activation {
    /// The subscriber is live.
    Live,
    /// Too much arrived during the replay: read again from the cursor, then activate again.
    Reread,
}

/// The node's fan-out hub.
#[derive(Debug)]
pub(crate) struct Hub {
    /// Channels with at least one local subscriber (or one joining).
    channels: Mutex<HashMap<ChannelKey, Arc<ChannelHub>>>,
    /// The broker whose attachments feed the hub, and the delivery metrics.
    shared: Arc<Shared>,
}

impl Hub {
    pub(crate) fn new(broker: Arc<dyn Broker>, metrics: Metrics) -> Self {
        Hub {
            channels: Mutex::new(HashMap::new()),
            shared: Arc::new(Shared { broker, metrics }),
        }
    }

    /// Adds a pending subscriber to a channel, subscribing the node to it in the broker first if
    /// it is the channel's first local subscriber.
    pub(crate) async fn join(&self, key: &ChannelKey, sub: Subscriber) -> Result<(), BrokerError> {
        loop {
            let hub = self
                .channels
                .lock()
                .entry(key.clone())
                .or_insert_with(|| {
                    Arc::new_cyclic(|me| ChannelHub {
                        key: key.clone(),
                        tag: channel_tag(key),
                        init: OnceCell::new(),
                        state: Mutex::default(),
                        shared: self.shared.clone(),
                        me: me.clone(),
                    })
                })
                .clone();
            let started = hub.init.get_or_try_init(|| self.start(hub.clone())).await;
            if let Err(e) = started {
                let mut channels = self.channels.lock();
                if channels.get(key).is_some_and(|h| Arc::ptr_eq(h, &hub))
                    && hub.state.lock().subs.is_empty()
                {
                    channels.remove(key);
                }
                return Err(e);
            }
            let mut state = hub.state.lock();
            if state.closed {
                continue;
            }
            let mode = Mode::Pending {
                buffer: Vec::new(),
                overflowed: false,
            };
            state
                .subs
                .insert(sub.conn_id, Box::new(LocalSub { sub, mode }));
            return Ok(());
        }
    }

    async fn start(&self, hub: Arc<ChannelHub>) -> Result<(), BrokerError> {
        let broker = &self.shared.broker;
        let attachment = broker.attach(&hub.key, hub.clone()).await?;
        // Everything up to `last` is covered by each subscriber's own replay. Events the broker
        // hands over meanwhile wait in the queue (they are newer, or dropped as not).
        let last = broker.read(&hub.key, None, 0).await?.last;
        {
            let mut state = hub.state.lock();
            state.last = state.last.max(last);
            state.attachment = Some(attachment);
            state.ready = true;
            hub.wake(&mut state);
        }
        self.shared.metrics.channels.inc();
        tracing::debug!(channel = %hub.key, "node subscribed to channel");
        Ok(())
    }

    /// Flushes what arrived during the replay (newer than `cursor`, the last replayed offset) and
    /// makes the subscriber live.
    pub(crate) fn activate(&self, key: &ChannelKey, conn_id: u64, cursor: Offset) -> Activation {
        let Some(hub) = self.channels.lock().get(key).cloned() else {
            return Activation::Live;
        };
        let mut state = hub.state.lock();
        let Some(local) = state.subs.get_mut(&conn_id) else {
            return Activation::Live;
        };
        let Mode::Pending { buffer, overflowed } = &mut local.mode else {
            return Activation::Live;
        };
        if *overflowed {
            *overflowed = false;
            buffer.clear();
            return Activation::Reread;
        }
        let mut watermark = cursor;
        let buffered = std::mem::take(buffer);
        for m in buffered.iter().filter(|m| m.offset > cursor) {
            if let Some(frame) = encode_message(local.sub.codec, &hub.key, m) {
                push_message(&local.sub.outbound, hub.tag, m, frame, &self.shared.metrics);
            }
            watermark = m.offset;
        }
        local.mode = Mode::Live { watermark };
        Activation::Live
    }

    /// Removes a subscriber; the node unsubscribes from the broker when it was the last.
    pub(crate) fn leave(&self, key: &ChannelKey, conn_id: u64) {
        let attachment = {
            let mut channels = self.channels.lock();
            let Some(hub) = channels.get(key).cloned() else {
                return;
            };
            let mut state = hub.state.lock();
            state.subs.remove(&conn_id);
            if !(state.subs.is_empty() && hub.init.initialized()) {
                return;
            }
            state.closed = true;
            state.queue = VecDeque::new();
            channels.remove(key);
            self.shared.metrics.channels.dec();
            tracing::debug!(channel = %key, "node unsubscribed from channel");
            state.attachment.take()
        };
        // Detaching takes the broker's lock, under which the broker takes this channel's: so
        // never with this channel's lock held.
        drop(attachment);
    }

    /// Channels the node is subscribed to.
    pub(crate) fn channel_count(&self) -> usize {
        self.channels.lock().len()
    }
}

/// Encodes a message frame for one codec, as the bytes that go on the wire. For JSON, a
/// message whose backend kept its JSON (Redis) is framed around that text as it is.
pub(crate) fn encode_message(
    codec: Codec,
    key: &ChannelKey,
    m: &StoredMessage,
) -> Option<WireFrame> {
    if let (Codec::Json, Some(json)) = (codec, &m.json) {
        // The envelope's text is copied once, into the frame.
        match Codec::json_message_prefix(&key.channel, m.offset) {
            Ok(prefix) => {
                let parts = [&prefix[..], json.as_bytes(), Codec::JSON_MESSAGE_SUFFIX];
                return Some(WireFrame::text_parts(&parts));
            }
            Err(e) => tracing::error!(error = %e, "cannot frame the stored JSON; encoding anew"),
        }
    }
    let frame = ServerFrame::Message {
        channel: key.channel.clone(),
        offset: m.offset,
        message: m.envelope.clone(),
    };
    encode(codec, &frame)
}

/// Encodes any server frame into a complete WebSocket frame of the codec's kind.
pub(crate) fn encode(codec: Codec, frame: &ServerFrame) -> Option<WireFrame> {
    match codec.encode(frame) {
        Ok(bytes) if codec.is_binary() => Some(WireFrame::binary(&bytes)),
        Ok(bytes) => match std::str::from_utf8(&bytes) {
            Ok(_) => Some(WireFrame::text(&bytes)),
            Err(e) => {
                tracing::error!(error = %e, "JSON encoder produced invalid UTF-8");
                None
            }
        },
        Err(e) => {
            tracing::error!(error = %e, frame = frame.type_name(), "cannot encode frame");
            None
        }
    }
}

fn push_message(
    outbound: &Outbound,
    tag: u64,
    m: &StoredMessage,
    frame: WireFrame,
    metrics: &Metrics,
) {
    if outbound.push_in(Class::of(m.envelope.priority), tag, frame) == Pushed::Overflow {
        metrics.slow_consumers.inc();
        metrics
            .queue_drops
            .with_label_values(&["slow_consumer"])
            .inc();
        tracing::info!(channel = %m.envelope.channel, "slow consumer disconnected");
    }
}

impl LiveSink for ChannelHub {
    fn deliver(&self, event: SubscriptionEvent) {
        let mut state = self.state.lock();
        if state.closed {
            return;
        }
        if state.queue.len() >= QUEUED_EVENTS {
            // The delivery task is far behind (a long catch-up): what is dropped here is in the
            // log, and the gap makes the task re-read it.
            tracing::debug!(channel = %self.key, "live queue full; re-reading the log");
            state.queue.clear();
            state.queue.push_back(SubscriptionEvent::Gap);
        }
        state.queue.push_back(event);
        self.wake(&mut state);
    }
}

impl ChannelHub {
    /// Starts the delivery task when events wait, delivery may start, and none runs.
    fn wake(&self, state: &mut HubState) {
        if state.delivering || !state.ready || state.queue.is_empty() {
            return;
        }
        let Some(hub) = self.me.upgrade() else {
            return;
        };
        state.delivering = true;
        tokio::spawn(run_channel(hub));
    }

    /// Delivers one stored message to every subscriber that has not seen it.
    fn deliver_message(&self, m: &StoredMessage, metrics: &Metrics) {
        let mut state = self.state.lock();
        if m.offset <= state.last {
            return;
        }
        state.last = m.offset;
        // Framed once per codec; every subscriber's queue holds the same bytes.
        let mut encoded: [Option<WireFrame>; 2] = [None, None];
        let mut delivered = 0u64;
        for local in state.subs.values_mut() {
            match &mut local.mode {
                Mode::Pending { buffer, overflowed } => {
                    if buffer.len() < PENDING_BUFFER {
                        buffer.push(m.clone());
                    } else {
                        *overflowed = true;
                        buffer.clear();
                    }
                }
                Mode::Live { watermark } if m.offset > *watermark => {
                    *watermark = m.offset;
                    let slot = &mut encoded[local.sub.codec.is_binary() as usize];
                    if slot.is_none() {
                        *slot = encode_message(local.sub.codec, &self.key, m);
                    }
                    if let Some(frame) = slot.clone() {
                        push_message(&local.sub.outbound, self.tag, m, frame, metrics);
                        delivered += 1;
                    }
                }
                Mode::Live { .. } => {}
            }
        }
        metrics
            .messages_out
            .with_label_values(&[m.envelope.priority.as_str()])
            .inc_by(delivered);
    }

    /// Delivers a typing or presence notice to the other users' live subscribers (dropped first
    /// under pressure).
    fn deliver_ephemeral(&self, event: &ChannelEvent, metrics: &Metrics) {
        let channel = self.key.channel.clone();
        // Notices are about a user, for the others: never echoed to that user's own connections.
        let (frame, subject) = match event {
            ChannelEvent::Join { user_id } => (
                ServerFrame::Join {
                    channel,
                    user_id: user_id.clone(),
                },
                user_id,
            ),
            ChannelEvent::Leave { user_id } => (
                ServerFrame::Leave {
                    channel,
                    user_id: user_id.clone(),
                },
                user_id,
            ),
            ChannelEvent::Typing { user_id } => (
                ServerFrame::Typing {
                    channel,
                    user_id: user_id.clone(),
                },
                user_id,
            ),
            ChannelEvent::Message(_) => return,
        };
        let state = self.state.lock();
        let mut encoded: [Option<WireFrame>; 2] = [None, None];
        for local in state.subs.values() {
            if !matches!(local.mode, Mode::Live { .. })
                || !local.sub.sees_presence
                || *subject == local.sub.user_id
            {
                continue;
            }
            let slot = &mut encoded[local.sub.codec.is_binary() as usize];
            if slot.is_none() {
                *slot = encode(local.sub.codec, &frame);
            }
            if let Some(msg) = slot.clone() {
                if local.sub.outbound.push(Class::Ephemeral, msg) == Pushed::Dropped {
                    metrics.queue_drops.with_label_values(&["ephemeral"]).inc();
                }
            }
        }
    }

    fn close_all(&self, code: u16, reason: &str) {
        for local in self.state.lock().subs.values() {
            local.sub.outbound.close(code, reason);
        }
    }
}

/// Delivers a channel's queued events, in order, until the queue is empty or the last
/// subscriber left.
async fn run_channel(hub: Arc<ChannelHub>) {
    let metrics = &hub.shared.metrics;
    loop {
        let events = {
            let mut state = hub.state.lock();
            if state.closed || state.queue.is_empty() {
                // A quiet channel keeps no buffer.
                state.queue = VecDeque::new();
                state.delivering = false;
                return;
            }
            std::mem::take(&mut state.queue)
        };
        for event in events {
            match event {
                SubscriptionEvent::Event(ChannelEvent::Message(m)) => {
                    hub.deliver_message(&m, metrics)
                }
                SubscriptionEvent::Event(event) => hub.deliver_ephemeral(&event, metrics),
                SubscriptionEvent::Gap => Box::pin(catch_up(&hub)).await,
                SubscriptionEvent::Closed => {
                    tracing::warn!(channel = %hub.key, "broker ended the subscription");
                    hub.close_all(
                        close::RESTART,
                        "channel subscription lost: reconnect and resume from your offsets",
                    );
                }
            }
        }
    }
}

/// Re-reads the channel's log after the last delivered offset, retrying until it succeeds or
/// the last subscriber left.
async fn catch_up(hub: &ChannelHub) {
    let (broker, metrics) = (hub.shared.broker.as_ref(), &hub.shared.metrics);
    let mut backoff = Duration::from_millis(50);
    loop {
        let from = {
            let state = hub.state.lock();
            if state.closed {
                return;
            }
            state.last
        };
        match broker.read(&hub.key, Some(from), PAGE).await {
            Ok(read) => {
                if !read.recovered {
                    tracing::warn!(channel = %hub.key, %from, "messages expired before this node could deliver them");
                }
                for m in &read.messages {
                    hub.deliver_message(m, metrics);
                }
                if !read.more {
                    return;
                }
                backoff = Duration::from_millis(50);
            }
            Err(e) => {
                tracing::warn!(channel = %hub.key, error = %e, "catch-up read failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests;
