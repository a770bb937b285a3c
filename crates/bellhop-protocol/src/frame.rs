//! Every frame of wire protocol v1 as a typed value, and the message envelope.
//!
//! A frame is an object with a `"type"`; a client request may carry a numeric `"id"` that the reply
//! echoes. Field names are camelCase on the wire.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{Channel, Offset, Priority};

/// Who a token says its bearer is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A hotel guest: their own rooms, their own user channel, and the broadcast.
    Guest,
    /// Staff: their departments, any room, users, and the broadcast.
    Staff,
    /// A manager: everything in their property.
    Manager,
    /// An administrator: everything in their property.
    Admin,
    /// A hotel system using the HTTP API.
    Service,
}

impl Role {
    /// The lowercase wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Guest => "guest",
            Role::Staff => "staff",
            Role::Manager => "manager",
            Role::Admin => "admin",
            Role::Service => "service",
        }
    }
}

/// Who sent a message, as the server saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sender {
    /// The sender's user id (the token's `sub`).
    pub id: String,
    /// The sender's role.
    pub role: Role,
}

/// The message format of the original service. The server sets every field but `event`,
/// `payload`, `priority` and `correlationId`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// Unique id of the message (a UUID chosen by the server).
    pub message_id: String,
    /// What happened, in `UPPER_SNAKE` (`SERVICE_REQUEST`, `ROOM_STATUS_UPDATE`, ...).
    pub event: String,
    /// The property the message belongs to.
    pub namespace: String,
    /// The channel it was published to.
    pub channel: Channel,
    /// Any JSON value chosen by the publisher.
    pub payload: Value,
    /// When the server accepted it, RFC 3339 with milliseconds, UTC.
    pub timestamp: String,
    /// Who published it.
    pub sender: Sender,
    /// Its delivery priority.
    pub priority: Priority,
    /// Ties a message to an earlier one (a request and its updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
}

/// The body of a `publish` request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PublishFrame {
    /// Where to publish.
    pub channel: Channel,
    /// What happened, `UPPER_SNAKE`.
    pub event: String,
    /// Any JSON value (`null` when absent).
    #[serde(default)]
    pub payload: Value,
    /// Raise or lower the event's default priority, as the sender's role allows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
    /// Ties this message to an earlier one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// Makes a retried publish safe: a repeat by the same user with the same key, to the same
    /// channel, inside the idempotency window gets the original `ack` and stores nothing new.
    /// 1 to 64 characters of `[A-Za-z0-9_.:-]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<String>,
}

/// Every frame a client may send.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ClientFrame {
    /// Authenticate with a JWT (when the upgrade request carried none).
    Auth {
        /// The JWT.
        token: String,
    },
    /// Receive a channel's messages, first the ones after `since` if given.
    Subscribe {
        /// The channel.
        channel: Channel,
        /// Resume after this offset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Offset>,
    },
    /// Stop receiving a channel.
    Unsubscribe {
        /// The channel.
        channel: Channel,
    },
    /// Publish a message; answered by `ack` once it is stored.
    Publish(PublishFrame),
    /// Read stored messages.
    History {
        /// The channel.
        channel: Channel,
        /// Only messages after this offset (else the newest ones).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        since: Option<Offset>,
        /// How many, 1 to 100 (default 50).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// Who is on a channel now.
    Presence {
        /// The channel.
        channel: Channel,
    },
    /// Tell the others on a channel that this user is typing (ephemeral, never stored).
    Typing {
        /// The channel.
        channel: Channel,
    },
    /// Mark a channel read up to and including `offset`.
    Read {
        /// The channel.
        channel: Channel,
        /// The last offset read.
        offset: Offset,
    },
    /// Keep-alive; answered by `pong`.
    Ping,
}

impl ClientFrame {
    /// The wire name of the frame's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            ClientFrame::Auth { .. } => "auth",
            ClientFrame::Subscribe { .. } => "subscribe",
            ClientFrame::Unsubscribe { .. } => "unsubscribe",
            ClientFrame::Publish(_) => "publish",
            ClientFrame::History { .. } => "history",
            ClientFrame::Presence { .. } => "presence",
            ClientFrame::Typing { .. } => "typing",
            ClientFrame::Read { .. } => "read",
            ClientFrame::Ping => "ping",
        }
    }
}

/// A client frame with the request id the reply must echo.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    /// The client's request id, echoed in the reply.
    pub id: Option<u64>,
    /// The frame.
    pub frame: ClientFrame,
}

impl Request {
    /// The request as a JSON object, `id` included: what a client puts on the wire.
    pub fn to_value(&self) -> Value {
        let mut value = serde_json::to_value(&self.frame).unwrap_or(Value::Null);
        if let (Some(id), Value::Object(map)) = (self.id, &mut value) {
            map.insert("id".into(), Value::from(id));
        }
        value
    }
}

/// The first frame of every authenticated connection, and the reply to every `auth`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Welcome {
    /// Echo of the `auth` request's id (absent when the upgrade request carried the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// This connection's id, for logs and support.
    pub session_id: String,
    /// The node that serves the connection.
    pub node: String,
    /// The authenticated user.
    pub user_id: String,
    /// Their role.
    pub role: Role,
    /// Their property.
    pub property: String,
    /// The server pings this often; a peer silent for twice as long is closed.
    pub heartbeat_seconds: u64,
}

/// One stored message in a `history` reply.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// Its offset in the channel.
    pub offset: Offset,
    /// The message.
    pub message: Arc<Envelope>,
}

/// Error codes carried by `error` frames (and HTTP API error bodies).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The frame was malformed or a field was invalid; fix the request, do not retry it as is.
    BadRequest,
    /// No valid token; authenticate again with a fresh one.
    Unauthorized,
    /// The token is valid but its role or property does not allow this.
    Forbidden,
    /// A payload or field is over its size limit.
    TooLarge,
    /// Too many requests; retry after `retryAfterMs`.
    RateLimited,
    /// The node cannot serve this now (broker down, draining); retry after `retryAfterMs`.
    Unavailable,
    /// A bug or an unexpected failure on the server.
    Internal,
}

impl ErrorCode {
    /// The wire name, also used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether sending the same request again later can succeed.
    pub fn retryable(self) -> bool {
        matches!(
            self,
            ErrorCode::RateLimited | ErrorCode::Unavailable | ErrorCode::Internal
        )
    }

    /// The HTTP status the HTTP API answers with for this code.
    pub fn http_status(self) -> u16 {
        match self {
            ErrorCode::BadRequest => 400,
            ErrorCode::Unauthorized => 401,
            ErrorCode::Forbidden => 403,
            ErrorCode::TooLarge => 413,
            ErrorCode::RateLimited => 429,
            ErrorCode::Unavailable => 503,
            ErrorCode::Internal => 500,
        }
    }
}

/// Every frame the server sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(
    tag = "type",
    rename_all = "snake_case",
    rename_all_fields = "camelCase"
)]
pub enum ServerFrame {
    /// Authentication succeeded.
    Welcome(Welcome),
    /// The subscription is live; missed messages follow, then live ones.
    Subscribed {
        /// Echo of the request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: Channel,
        /// The channel's newest offset when the subscription started (any replayed messages end
        /// at or after it; live ones follow).
        offset: Offset,
        /// False when `since` is older than the retention window (or unknown to this broker):
        /// messages may be missing and the client must reload from its own store.
        recovered: bool,
        /// Messages after this user's read marker.
        unread: u64,
    },
    /// The channel is no longer delivered to this connection.
    Unsubscribed {
        /// Echo of the request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: Channel,
    },
    /// A publish was stored (`messageId` set) or a read marker was saved (`unread` set).
    Ack {
        /// Echo of the request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The stored message's id (publish).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message_id: Option<String>,
        /// The stored message's offset (publish) or the saved read marker (read).
        offset: Offset,
        /// Messages still unread after the marker (read).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        unread: Option<u64>,
        /// True when this publish repeated an earlier one's `idempotencyKey`: the offset and id
        /// are the original message's, and nothing new was stored.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        duplicate: bool,
    },
    /// Stored messages, oldest first.
    History {
        /// Echo of the request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: Channel,
        /// The messages, oldest first.
        messages: Vec<HistoryEntry>,
        /// True when the page was cut short (by the count asked for or by the node's byte budget
        /// for one reply) and newer messages follow the last one: ask again with `since` set to
        /// the last message's offset to get them.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        more: bool,
    },
    /// Users on a channel now.
    Presence {
        /// Echo of the request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// The channel.
        channel: Channel,
        /// User ids, sorted.
        users: Vec<String>,
    },
    /// A message on a subscribed channel.
    Message {
        /// The channel.
        channel: Channel,
        /// Its offset: resume after it with `subscribe.since`.
        offset: Offset,
        /// The message.
        message: Arc<Envelope>,
    },
    /// A user's first connection subscribed to the channel.
    Join {
        /// The channel.
        channel: Channel,
        /// Who joined.
        user_id: String,
    },
    /// A user's last connection left the channel.
    Leave {
        /// The channel.
        channel: Channel,
        /// Who left.
        user_id: String,
    },
    /// Someone on the channel is typing.
    Typing {
        /// The channel.
        channel: Channel,
        /// Who is typing.
        user_id: String,
    },
    /// A request failed, or the server is about to close the connection.
    Error {
        /// Echo of the failed request's id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
        /// What kind of failure.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
        /// When to retry (`rate_limited`, `unavailable`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    /// Answer to `ping`.
    Pong {
        /// Echo of the request id.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<u64>,
    },
}

impl ServerFrame {
    /// An `error` frame.
    pub fn error(id: Option<u64>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            id,
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }

    /// Whether frames of the type named `type_name` (a wire name, as [`ServerFrame::type_name`]
    /// gives) answer a client's request and carry its `id`; the others (`message`, `join`,
    /// `leave`, `typing`) arrive unasked. An `error` may also arrive unasked, without an `id`.
    pub fn is_reply_type(type_name: &str) -> bool {
        matches!(
            type_name,
            "welcome"
                | "subscribed"
                | "unsubscribed"
                | "ack"
                | "history"
                | "presence"
                | "pong"
                | "error"
        )
    }

    /// The wire name of the frame's type.
    pub fn type_name(&self) -> &'static str {
        match self {
            ServerFrame::Welcome(_) => "welcome",
            ServerFrame::Subscribed { .. } => "subscribed",
            ServerFrame::Unsubscribed { .. } => "unsubscribed",
            ServerFrame::Ack { .. } => "ack",
            ServerFrame::History { .. } => "history",
            ServerFrame::Presence { .. } => "presence",
            ServerFrame::Message { .. } => "message",
            ServerFrame::Join { .. } => "join",
            ServerFrame::Leave { .. } => "leave",
            ServerFrame::Typing { .. } => "typing",
            ServerFrame::Error { .. } => "error",
            ServerFrame::Pong { .. } => "pong",
        }
    }
}

/// WebSocket close codes the server uses. Codes 4xxx are Bellhop's own.
pub mod close {
    /// Normal closure (the client asked).
    pub const NORMAL: u16 = 1000;
    /// The peer violated the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The client kept exceeding a limit after being told (`rate_limited`): a frame flood, or
    /// more connections for one user than a node allows.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// A frame exceeded the maximum frame size (64 KiB by default).
    pub const TOO_BIG: u16 = 1009;
    /// The server failed unexpectedly.
    pub const INTERNAL: u16 = 1011;
    /// The node is restarting or draining: reconnect (to any node) and resume from your offsets.
    pub const RESTART: u16 = 1012;
    /// The node is at capacity: reconnect later or elsewhere.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// No valid token: authentication failed, timed out, or the token expired.
    pub const UNAUTHORIZED: u16 = 4001;
    /// The peer sent nothing (not even a pong) for two heartbeat intervals.
    pub const HEARTBEAT_TIMEOUT: u16 = 4002;
    /// The client read too slowly and its outbound queue filled: reconnect and resume from the
    /// last offset of each channel.
    pub const SLOW_CONSUMER: u16 = 4008;
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn error_codes_map_to_http_statuses_and_retry_hints() {
        assert_eq!(ErrorCode::TooLarge.http_status(), 413);
        assert!(ErrorCode::Unavailable.retryable());
        assert!(!ErrorCode::Forbidden.retryable());
        assert_eq!(
            serde_json::to_value(ErrorCode::RateLimited).unwrap(),
            json!("rate_limited")
        );
    }

    #[test]
    fn request_to_value_carries_the_id() {
        let req = Request {
            id: Some(7),
            frame: ClientFrame::Ping,
        };
        assert_eq!(req.to_value(), json!({"type": "ping", "id": 7}));
    }
}
