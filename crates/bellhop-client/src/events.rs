//! What a client reports: the connection's [`State`] and its [`Event`]s, a subscription's
//! [`SubState`] and [`SubEvent`]s, the [`Error`]s of requests (and which a retry can help), and
//! the answers of requests ([`PublishAck`], [`HistoryPage`], [`ReadAck`]). Plain data.

use std::sync::Arc;
use std::time::Duration;

use bellhop_protocol::{Envelope, ErrorCode, HistoryEntry, Offset, Welcome};

/// The connection's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not connected and not trying: before `connect()`, after `disconnect()`, or after a close
    /// that forbids reconnecting.
    Disconnected,
    /// Opening a connection, or waiting to reconnect.
    Connecting,
    /// Welcomed by a node.
    Connected,
    /// `close()` was called: for good.
    Closed,
}

/// Something that happened to the client.
#[derive(Clone, Debug)]
pub enum Event {
    /// The state changed.
    State {
        /// Before.
        old: State,
        /// After.
        new: State,
    },
    /// A node welcomed the client.
    Connected {
        /// The node's URL.
        url: String,
        /// The welcome (session id, node, user, role, property, heartbeat).
        welcome: Welcome,
    },
    /// A reconnect is scheduled.
    Reconnecting {
        /// The close code that ended the connection (`1006`: no close frame, or a failed attempt).
        code: u16,
        /// Why.
        reason: String,
        /// The wait before the attempt.
        delay: Duration,
        /// Failed attempts since the last welcome.
        attempt: u32,
        /// Where the attempt goes.
        url: String,
    },
    /// Stopped: `disconnect()`, or a close that forbids reconnecting.
    Disconnected {
        /// The close code.
        code: u16,
        /// Why.
        reason: String,
    },
    /// `close()`.
    Closed,
    /// The connection re-authenticated with a fresh token.
    TokenRefreshed {
        /// The new token's `exp`.
        exp: Option<u64>,
    },
    /// A request failed and will be sent again after `delay`.
    Retry {
        /// The request's frame type (`publish`, `history`, ...).
        request: &'static str,
        /// Sends so far.
        attempt: u32,
        /// Why it failed.
        error: Error,
        /// The wait before the next send (then, if needed, the wait for a connection).
        delay: Duration,
    },
    /// A failure: `token`, `refresh`, `transport`, `server` (an `error` frame without id).
    Error {
        /// Where.
        kind: &'static str,
        /// What.
        message: String,
    },
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The node answered with an `error` frame.
    #[error("{}: {message}", code.as_str())]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The node's message.
        message: String,
        /// When to retry.
        retry_after: Option<Duration>,
    },
    /// No reply in time.
    #[error("no reply within the timeout")]
    Timeout,
    /// The connection ended before the reply, or there is none.
    #[error("not connected")]
    Disconnected,
    /// `close()` was called.
    #[error("the client is closed")]
    Closed,
    /// The request is invalid before it is sent (a bad channel, key, or offset).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Whether the same request may succeed later.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Server { code, .. } => code.retryable(),
            Error::Timeout | Error::Disconnected => true,
            Error::Closed | Error::Invalid(_) => false,
        }
    }
}

/// A stored publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishAck {
    /// The stored message's id.
    pub message_id: String,
    /// Its offset.
    pub offset: Offset,
    /// True when the node had already stored a publish with this key (the original's ack).
    pub duplicate: bool,
    /// The key sent.
    pub idempotency_key: String,
    /// How many sends it took.
    pub attempts: u32,
}

/// One page of history.
#[derive(Clone, Debug)]
pub struct HistoryPage {
    /// Oldest first.
    pub messages: Vec<HistoryEntry>,
    /// Newer messages follow the last one.
    pub more: bool,
}

/// A saved read marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadAck {
    /// The marker.
    pub offset: Offset,
    /// Messages still unread after it.
    pub unread: u64,
}

/// A subscription's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubState {
    /// Not wanted (never subscribed, unsubscribed, refused).
    Unsubscribed,
    /// Wanted, waiting for the node's `subscribed` (or for a connection).
    Subscribing,
    /// Live.
    Subscribed,
}

/// Something that happened on a subscription, in order.
#[derive(Clone, Debug)]
pub enum SubEvent {
    /// The node's `subscribed`.
    Subscribed {
        /// The channel's newest offset when the subscription started.
        offset: Offset,
        /// False when the node could not vouch for every message after `since`.
        recovered: bool,
        /// Unread messages for this user.
        unread: u64,
        /// The `since` sent (`None` on a first subscribe without one).
        since: Option<Offset>,
    },
    /// `recovered: false` after a resume: messages after `since` may be missing; what the node
    /// still holds is replayed next. Reload the gap from your own store.
    RecoveryFailed {
        /// The offset resumed after.
        since: Offset,
        /// The channel's newest offset.
        offset: Offset,
    },
    /// A message, exactly once per offset, in offset order.
    Message {
        /// Its offset.
        offset: Offset,
        /// The message.
        message: Arc<Envelope>,
    },
    /// A user's first connection subscribed.
    Join(String),
    /// A user's last connection left.
    Leave(String),
    /// A user is typing.
    Typing(String),
    /// The node ended the subscription (a re-auth narrowed the rights) or refused it.
    Unsubscribed {
        /// Why.
        reason: String,
    },
    /// A refusal or a transient failure (retried when retryable).
    Error(Error),
}
