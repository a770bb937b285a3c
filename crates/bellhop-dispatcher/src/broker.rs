//! The broker interface: what every storage and fan-out backend provides.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bellhop_protocol::{Channel, Envelope, Offset};
use tokio::sync::broadcast;

/// A channel inside a property: the unit of storage, ordering and fan-out.
///
/// Cheap to clone: the names are stored once, behind a shared pointer, and every holder of the
/// key (the hub's channel map and channel, the broker's channel table, an attachment) holds
/// that pointer. Most channels are a connection's own `user:` channel, held by four such tables;
/// their slots are then a pointer each, not two strings each. Reads of the names go through
/// [`ChannelName`] (`key.property`, `key.channel`); equality, hashing and order are the names'.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelKey(Arc<ChannelName>);

/// The names of a [`ChannelKey`]: its property and its channel.
#[derive(Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ChannelName {
    /// The property (the token's `prop`).
    pub property: String,
    /// The channel inside it.
    pub channel: Channel,
}

impl ChannelKey {
    /// The key of a channel in a property.
    pub fn new(property: impl Into<String>, channel: Channel) -> Self {
        ChannelKey(Arc::new(ChannelName {
            property: property.into(),
            channel,
        }))
    }

    /// The key a message belongs to.
    pub fn of(envelope: &Envelope) -> Self {
        ChannelKey::new(envelope.namespace.clone(), envelope.channel.clone())
    }
}

impl std::ops::Deref for ChannelKey {
    type Target = ChannelName;

    fn deref(&self) -> &ChannelName {
        &self.0
    }
}

impl fmt::Debug for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChannelKey")
            .field("property", &self.property)
            .field("channel", &self.channel)
            .finish()
    }
}

impl fmt::Display for ChannelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.property, self.channel)
    }
}

/// A message as stored: its offset and the envelope (shared, never copied per subscriber).
#[derive(Clone, Debug)]
pub struct StoredMessage {
    /// Position in the channel.
    pub offset: Offset,
    /// The message.
    pub envelope: Arc<Envelope>,
    /// The envelope as JSON, where the backend stores it so (Redis): JSON subscribers get
    /// these bytes as they are (`Codec::json_message_prefix`), so a node does not write again what it
    /// just parsed. A representation of `envelope`, not part of a message's identity.
    pub json: Option<Arc<str>>,
}

impl StoredMessage {
    /// A stored message with no JSON kept beside it.
    pub fn new(offset: Offset, envelope: Arc<Envelope>) -> Self {
        StoredMessage {
            offset,
            envelope,
            json: None,
        }
    }
}

impl PartialEq for StoredMessage {
    fn eq(&self, other: &Self) -> bool {
        self.offset == other.offset && self.envelope == other.envelope
    }
}

/// Longest idempotency key a backend accepts, in bytes. The gateway admits client keys of at most
/// 64 characters and scopes them by the user id (at most 64 more), so this leaves room; a longer
/// key is refused with [`BrokerError::Internal`] rather than stored.
pub const MAX_IDEMPOTENCY_KEY_BYTES: usize = 256;

/// One message to store: what [`Broker::publish_batch`] and
/// [`Dispatcher::publish`](crate::Dispatcher::publish) take.
#[derive(Clone, Debug, PartialEq)]
pub struct Publish {
    /// The message; its namespace (the property) and channel say where it goes.
    pub envelope: Arc<Envelope>,
    /// Makes the publish idempotent: a repeat with the same key to the same channel of the same
    /// property within the backend's `idempotency_window` stores and delivers nothing and is
    /// answered with the original message id and offset (`duplicate: true`).
    ///
    /// The key is scoped by the caller to whoever may not collide (the gateway passes
    /// `"<user id>:<client key>"`); the backend scopes it further per property and channel, so the
    /// same key sent to two channels makes two messages. (In Redis the remembered result must
    /// share the channel's hash tag to be checked and written in the same script as the message,
    /// which is what makes the check atomic in a Redis Cluster.) At most
    /// [`MAX_IDEMPOTENCY_KEY_BYTES`].
    pub idempotency_key: Option<String>,
}

impl Publish {
    /// A publish without an idempotency key.
    pub fn new(envelope: Arc<Envelope>) -> Self {
        Publish {
            envelope,
            idempotency_key: None,
        }
    }

    /// A publish that a repeat with the same `key` (to the same channel) does not store again.
    pub fn with_key(envelope: Arc<Envelope>, key: impl Into<String>) -> Self {
        Publish {
            envelope,
            idempotency_key: Some(key.into()),
        }
    }

    /// The idempotency key, refused when it is empty or longer than
    /// [`MAX_IDEMPOTENCY_KEY_BYTES`].
    pub(crate) fn checked_key(&self) -> Result<Option<&str>, BrokerError> {
        match self.idempotency_key.as_deref() {
            None => Ok(None),
            Some(key) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_BYTES => Ok(Some(key)),
            Some(key) => Err(BrokerError::Internal(format!(
                "idempotency key of {} bytes: must be 1 to {MAX_IDEMPOTENCY_KEY_BYTES}",
                key.len()
            ))),
        }
    }
}

impl From<Arc<Envelope>> for Publish {
    fn from(envelope: Arc<Envelope>) -> Self {
        Publish::new(envelope)
    }
}

/// What a stored publish is answered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Published {
    /// Where the message is in its channel.
    pub offset: Offset,
    /// The stored message's id: the publish's own, or for a duplicate the original's.
    pub message_id: String,
    /// True when the publish repeated an idempotency key within the window: nothing was stored
    /// or delivered, and `offset` and `message_id` are the original's.
    pub duplicate: bool,
}

/// Something that happened on a channel, as a live subscription sees it.
#[derive(Clone, Debug, PartialEq)]
pub enum ChannelEvent {
    /// A stored message.
    Message(StoredMessage),
    /// A user's first connection joined the channel (ephemeral, not stored).
    Join {
        /// Who.
        user_id: String,
    },
    /// A user's last connection left the channel (ephemeral, not stored).
    Leave {
        /// Who.
        user_id: String,
    },
    /// A user is typing (ephemeral, not stored).
    Typing {
        /// Who.
        user_id: String,
    },
}

/// What a live subscription yields.
#[derive(Clone, Debug, PartialEq)]
pub enum SubscriptionEvent {
    /// The next event, in order.
    Event(ChannelEvent),
    /// Events may have been missed (the subscriber fell behind, or the backend reconnected):
    /// re-read the channel from the last offset delivered, then carry on.
    Gap,
    /// The subscription ended (the broker shut down).
    Closed,
}

/// A live subscription to one channel. Dropping it unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    /// Where the events come from.
    source: Source,
}

/// What a backend's broadcast carries when the backend detects gaps itself (the Redis backend:
/// a sequence jump or a reconnect), so that the gap reaches each subscriber in order with the
/// events around it.
#[derive(Clone, Debug)]
pub(crate) enum Feed {
    /// The next event.
    Event(ChannelEvent),
    /// Events may have been missed before the next one.
    Gap,
}

/// Something a backend keeps alive for as long as a subscription exists; dropping it tells the
/// backend the subscription ended (the Redis backend unsubscribes when the last one goes).
pub(crate) type Lease = Box<dyn std::any::Any + Send + Sync>;

/// The two kinds of backend feeds.
#[derive(Debug)]
enum Source {
    /// Only lag is a gap (the embedded broker).
    Events(broadcast::Receiver<ChannelEvent>),
    /// The backend also reports gaps in band.
    Feed {
        /// The channel's events and gaps. Declared before `_lease`, so it is dropped first and
        /// the backend sees this receiver gone when the lease tells it to look.
        rx: broadcast::Receiver<Feed>,
        /// Held for its `Drop`.
        _lease: Lease,
    },
}

impl Subscription {
    /// Wraps a backend's broadcast receiver.
    pub fn new(rx: broadcast::Receiver<ChannelEvent>) -> Self {
        Subscription {
            source: Source::Events(rx),
        }
    }

    /// Wraps a feed that carries explicit gaps, and the lease that ends the subscription on drop.
    pub(crate) fn with_feed(rx: broadcast::Receiver<Feed>, lease: Lease) -> Self {
        Subscription {
            source: Source::Feed { rx, _lease: lease },
        }
    }

    /// The next event. Cancel-safe.
    pub async fn recv(&mut self) -> SubscriptionEvent {
        match &mut self.source {
            Source::Events(rx) => match rx.recv().await {
                Ok(event) => SubscriptionEvent::Event(event),
                Err(broadcast::error::RecvError::Lagged(_)) => SubscriptionEvent::Gap,
                Err(broadcast::error::RecvError::Closed) => SubscriptionEvent::Closed,
            },
            Source::Feed { rx, .. } => match rx.recv().await {
                Ok(Feed::Event(event)) => SubscriptionEvent::Event(event),
                Ok(Feed::Gap) | Err(broadcast::error::RecvError::Lagged(_)) => {
                    SubscriptionEvent::Gap
                }
                Err(broadcast::error::RecvError::Closed) => SubscriptionEvent::Closed,
            },
        }
    }
}

/// Where a broker pushes one channel's live events, in order, as they happen (see
/// [`Broker::attach`]): the alternative to a [`Subscription`] for a consumer that holds many
/// channels, most of them quiet. A subscription is a buffer allocated in full and a task to read
/// it for every channel; a sink is whatever the consumer makes of it (the gateway's hub queues
/// the event and wakes a task only while there is something to deliver).
pub trait LiveSink: Send + Sync + fmt::Debug + 'static {
    /// Takes the channel's next event: a message, an ephemeral event, a
    /// [`SubscriptionEvent::Gap`] when events may have been missed (the backend's connection came
    /// back, a sequence jumped), or [`SubscriptionEvent::Closed`] when the backend ends the
    /// attachment. Called with the backend's locks held, in the order the events happened: it
    /// must return at once, and must not call the broker or drop an [`Attachment`].
    fn deliver(&self, event: SubscriptionEvent);
}

/// A sink attached to a channel by [`Broker::attach`]. Dropping it detaches the sink (the
/// backend takes its own lock to do so: never drop it while holding a lock the sink takes).
pub struct Attachment {
    /// What the backend keeps alive for as long as the sink is attached.
    _lease: Lease,
}

impl fmt::Debug for Attachment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Attachment")
    }
}

impl Attachment {
    /// An attachment that ends when `lease` is dropped.
    pub(crate) fn new(lease: Lease) -> Self {
        Attachment { _lease: lease }
    }
}

/// Ends a forwarding task when dropped (the default [`Broker::attach`]).
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The answer to a read of a channel's log.
#[derive(Clone, Debug, PartialEq)]
pub struct ReadResult {
    /// Messages, oldest first.
    pub messages: Vec<StoredMessage>,
    /// False when `since` is older than what the broker still holds (trimmed by retention, or from
    /// before this broker's history began): messages may be missing.
    pub recovered: bool,
    /// The newest offset of the channel when it was read (the floor when it is empty).
    pub last: Offset,
    /// More messages follow the last one returned (read again from its offset).
    pub more: bool,
}

/// Why a broker call failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum BrokerError {
    /// The backend cannot take the call now; retrying later can succeed.
    #[error("broker unavailable: {reason}")]
    Unavailable {
        /// What is wrong.
        reason: String,
        /// When a retry makes sense.
        retry_after: Duration,
    },
    /// The call itself is wrong or the backend failed unexpectedly.
    #[error("broker failure: {0}")]
    Internal(String),
}

/// A storage and fan-out backend. Every method is safe to call concurrently.
///
/// Semantics every backend keeps: offsets of one channel strictly increase in the order messages
/// are stored; a stored message stays readable until it leaves the retention window; a live
/// subscription yields messages in offset order, or a [`SubscriptionEvent::Gap`] when it may have
/// missed some.
#[async_trait]
pub trait Broker: Send + Sync + fmt::Debug + 'static {
    /// Stores each envelope in its channel (named by its namespace and channel), assigns its
    /// offset and publishes it to live subscribers. Results are in the order of `batch`.
    ///
    /// A publish with an idempotency key that was stored within the window (earlier, or earlier
    /// in the same batch) is not stored or delivered again: its result is the original's offset
    /// and message id with `duplicate: true`. The check and the write are atomic.
    async fn publish_batch(&self, batch: Vec<Publish>) -> Vec<Result<Published, BrokerError>>;

    /// Publishes an ephemeral event (never stored) to a channel's live subscribers.
    async fn publish_ephemeral(
        &self,
        key: &ChannelKey,
        event: ChannelEvent,
    ) -> Result<(), BrokerError>;

    /// Subscribes to a channel's live events.
    async fn subscribe(&self, key: &ChannelKey) -> Result<Subscription, BrokerError>;

    /// Attaches `sink` to a channel's live events: every event from now on is handed to it, in
    /// order, until the returned [`Attachment`] is dropped. The same guarantees as
    /// [`Broker::subscribe`] (a gap is signalled, never silent), without a buffer or a task per
    /// channel in the backends that implement it natively; this default reads a subscription
    /// from a task of its own.
    async fn attach(
        &self,
        key: &ChannelKey,
        sink: Arc<dyn LiveSink>,
    ) -> Result<Attachment, BrokerError> {
        let mut subscription = self.subscribe(key).await?;
        let task = tokio::spawn(async move {
            loop {
                let event = subscription.recv().await;
                let closed = event == SubscriptionEvent::Closed;
                sink.deliver(event);
                if closed {
                    return;
                }
            }
        });
        Ok(Attachment::new(Box::new(AbortOnDrop(task.abort_handle()))))
    }

    /// Reads messages after `since` (oldest first, at most `limit`), or with no `since` the
    /// newest `limit` messages.
    async fn read(
        &self,
        key: &ChannelKey,
        since: Option<Offset>,
        limit: usize,
    ) -> Result<ReadResult, BrokerError>;

    /// Records that `session` of `user_id` is on the channel; true when it is the user's first.
    async fn presence_join(
        &self,
        key: &ChannelKey,
        user_id: &str,
        session: &str,
    ) -> Result<bool, BrokerError>;

    /// Records that `session` left; true when it was the user's last.
    async fn presence_leave(
        &self,
        key: &ChannelKey,
        user_id: &str,
        session: &str,
    ) -> Result<bool, BrokerError>;

    /// The users on a channel now, sorted.
    async fn presence(&self, key: &ChannelKey) -> Result<Vec<String>, BrokerError>;

    /// Saves a user's read marker (never moving it back) and returns the count of retained
    /// messages after it.
    async fn mark_read(
        &self,
        key: &ChannelKey,
        user_id: &str,
        offset: Offset,
    ) -> Result<(Offset, u64), BrokerError>;

    /// The count of retained messages after the user's read marker (all retained messages when
    /// the user has none).
    async fn unread(&self, key: &ChannelKey, user_id: &str) -> Result<u64, BrokerError>;

    /// Whether live delivery is working now: false while a backend's subscriber connection is
    /// down or silent (it reconnects by itself; subscribers get a gap and re-read afterwards).
    /// For readiness bodies and metrics, never for decisions on the message path.
    fn live_healthy(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// Records, when dropped, how many receivers its channel still had.
    struct Probe {
        tx: broadcast::Sender<Feed>,
        receivers_at_drop: Arc<AtomicUsize>,
    }

    impl Drop for Probe {
        fn drop(&mut self) {
            self.receivers_at_drop
                .store(self.tx.receiver_count(), Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_feed_delivers_gaps_in_order_and_releases_its_lease_after_its_receiver() {
        let (tx, rx) = broadcast::channel(8);
        let receivers_at_drop = Arc::new(AtomicUsize::new(usize::MAX));
        let lease = Probe {
            tx: tx.clone(),
            receivers_at_drop: receivers_at_drop.clone(),
        };
        let mut sub = Subscription::with_feed(rx, Box::new(lease));
        let typing = ChannelEvent::Typing {
            user_id: "u1".into(),
        };
        tx.send(Feed::Event(typing.clone())).unwrap();
        tx.send(Feed::Gap).unwrap();
        tx.send(Feed::Event(typing.clone())).unwrap();
        assert_eq!(sub.recv().await, SubscriptionEvent::Event(typing.clone()));
        assert_eq!(sub.recv().await, SubscriptionEvent::Gap);
        assert_eq!(sub.recv().await, SubscriptionEvent::Event(typing));

        drop(sub);
        assert_eq!(
            receivers_at_drop.load(Ordering::SeqCst),
            0,
            "the backend must see the receiver gone when the lease drops"
        );
    }
}
