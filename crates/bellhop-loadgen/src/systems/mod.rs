//! The systems under test, each behind the same small interface: a [`Wire`] turns the load
//! generator's intents (open, subscribe, publish) into WebSocket messages of that system's
//! protocol, and decodes what the system sends back into [`Event`]s.
//!
//! Every system carries the same payload, a small JSON object written by [`Payload::encode`]:
//! `{"t":<µs since the run began>,"s":<sequence on its channel>,"p":<publisher>,"x":"<padding>"}`.
//! The receiver reads `t` back to measure end-to-end latency and `s` to count losses and
//! duplicates, whatever the system wraps around it.

use serde::Deserialize;
use tokio_tungstenite::tungstenite::Message;

pub mod bellhop;
pub mod nats;
pub mod socketio;

/// Which system a run measures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum System {
    /// Bellhop, wire protocol v1 (JSON codec).
    Bellhop,
    /// nats-server's WebSocket listener, NATS core protocol.
    Nats,
    /// Socket.IO 4 on Node (Engine.IO 4 over WebSocket), `bench/peers/socketio/server.js`.
    Socketio,
    /// The ceiling server ([`crate::ceiling`], `bellhop-loadgen ceiling-server`): Bellhop's wire
    /// subset with nothing but pre-framed bytes written to every subscriber, to find this
    /// machine's fan-out limit. Fan-out only.
    Ceiling,
}

impl System {
    /// Whether a client can resume a subscription where it left off (Bellhop's `since`).
    pub fn resumes(self) -> bool {
        self == System::Bellhop
    }

    /// The name used in reports.
    pub fn label(self) -> &'static str {
        match self {
            System::Bellhop => "Bellhop",
            System::Nats => "NATS",
            System::Socketio => "Socket.IO",
            System::Ceiling => "ceiling",
        }
    }

    /// A fresh per-connection codec.
    pub fn wire(self, opts: &WireOptions) -> Box<dyn Wire> {
        match self {
            System::Bellhop => Box::new(bellhop::BellhopWire::new(opts)),
            System::Nats => Box::new(nats::NatsWire::new(opts)),
            System::Socketio => Box::new(socketio::SocketIoWire::new(opts)),
            // The same codec: the ceiling server speaks Bellhop's wire subset.
            System::Ceiling => Box::new(bellhop::BellhopWire::new(opts)),
        }
    }
}

/// What every connection's codec is told.
#[derive(Clone, Debug, Default)]
pub struct WireOptions {
    /// Keep each delivery's offset (Bellhop only), to resume with `since` after a reconnect.
    pub track_offsets: bool,
    /// Publish with idempotency keys and, after a reconnect, send again every publish that was
    /// neither acknowledged nor refused (Bellhop only), as the SDKs do: a publish whose
    /// connection dropped before its answer may or may not have been stored.
    pub resend_unanswered: bool,
}

/// A simulated user.
#[derive(Clone, Debug)]
pub struct User {
    /// Its id, unique in the run (`lg-<n>`).
    pub id: String,
    /// A Bellhop token for it (empty for systems without authentication).
    pub token: String,
}

/// One channel to subscribe to. Channel names are Bellhop's (`room:12`, `user:lg-3`); other
/// systems map them to their own names (NATS subject `room.12`, Socket.IO room `room:12`).
#[derive(Clone, Debug)]
pub struct Sub {
    /// Bellhop channel name.
    pub channel: String,
    /// Resume after this offset (Bellhop); ignored by systems without resume.
    pub since: Option<String>,
}

/// What a codec decoded from one received message.
#[derive(Debug)]
pub enum Event {
    /// The connection's handshake finished (Bellhop `welcome`, NATS `PONG` to the first `PING`,
    /// Socket.IO namespace `40`): subscribing may start.
    Ready,
    /// The subscription to `chans[index]` is confirmed. `recovered` is Bellhop's resume answer.
    Subscribed {
        /// Index into the channel list given to `decode`.
        index: usize,
        /// Whether a `since` was honoured (Bellhop); `None` elsewhere.
        recovered: Option<bool>,
        /// The channel's position at subscribe time (Bellhop, when offsets are tracked): where
        /// to resume from if no message arrives before a reconnect.
        offset: Option<String>,
    },
    /// A message published by the load generator arrived.
    Delivery(Delivery),
    /// Send this back at once (NATS `PONG`, Engine.IO `3`).
    Reply(Message),
    /// The system refused something; counted as an error.
    Error(String),
    /// The system acknowledged (stored) the publish with this id (Bellhop `ack`).
    Acked {
        /// The id given to [`Wire::publish`].
        id: u64,
    },
    /// The system refused the publish with this id (Bellhop's `error` echoing it: over a rate,
    /// the request queue full, unavailable): it was not stored, so no subscriber misses it.
    Refused {
        /// The id given to [`Wire::publish`].
        id: u64,
        /// The refusal, for the report.
        reason: String,
    },
}

/// A message the load generator published, as received.
#[derive(Debug)]
pub struct Delivery {
    /// Index into the channel list given to `decode`.
    pub index: usize,
    /// The payload's fields.
    pub payload: Payload,
    /// Bellhop's offset of the message, when offsets are tracked.
    pub offset: Option<String>,
}

/// The measurement payload every system carries.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct Payload {
    /// When it was due to be sent, µs since the run's epoch.
    pub t: u64,
    /// Its sequence number on its channel.
    pub s: u64,
    /// The publisher's number.
    pub p: u32,
}

impl Payload {
    /// The JSON object carried as the payload, padded with `pad` bytes of `x` so every system
    /// moves the same number of payload bytes.
    pub fn encode(&self, pad: usize) -> String {
        format!(
            r#"{{"t":{},"s":{},"p":{},"x":"{}"}}"#,
            self.t,
            self.s,
            self.p,
            "x".repeat(pad)
        )
    }
}

/// One system's protocol, per connection. Encoding is synchronous and decoding is pure: the
/// driver in [`crate::client`] owns the socket, so a codec never awaits.
pub trait Wire: Send + 'static {
    /// The WebSocket URL to open for `user`, given the endpoint's base URL.
    fn url(&self, base: &str, user: &User) -> String;
    /// Messages to send as soon as the WebSocket is open. The handshake is over when
    /// [`Event::Ready`] is decoded.
    fn hello(&mut self, user: &User) -> Vec<Message>;
    /// Messages that subscribe to `subs`; each is confirmed by an [`Event::Subscribed`] whose
    /// index is its position in `subs`.
    fn subscribe(&mut self, subs: &[Sub]) -> Vec<Message>;
    /// A message publishing `payload` (a JSON object from [`Payload::encode`]) on `channel`.
    /// `id` identifies the publish in a refusal ([`Event::Refused`]), where the wire has request
    /// ids (Bellhop); the others ignore it.
    fn publish(&mut self, channel: &str, payload: &str, id: u64) -> Message;
    /// Decodes one received message; `chans` are the Bellhop names of the subscribed channels,
    /// in the order given to [`Wire::subscribe`].
    fn decode(&mut self, message: &Message, chans: &[String], out: &mut Vec<Event>);
}

/// The position of `name` in `chans`.
pub fn index_of(chans: &[String], name: &str) -> Option<usize> {
    chans.iter().position(|c| c == name)
}

/// Request ids of publishes start here (subscribe ids count up from 1): below 2^53, so any JSON
/// reader keeps them exact.
pub const PUBLISH_IDS: u64 = 1 << 52;

/// The request id of the `seq`-th publish on channel `channel` (fewer than 2^20 channels, 2^32
/// publishes each).
pub fn publish_id(channel: usize, seq: u64) -> u64 {
    PUBLISH_IDS | ((channel as u64 & 0xF_FFFF) << 32) | (seq & 0xFFFF_FFFF)
}

/// The channel and sequence number of a publish id.
pub fn publish_of(id: u64) -> (usize, u64) {
    (((id >> 32) & 0xF_FFFF) as usize, id & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_encode_to_json_that_decodes_back() {
        let p = Payload {
            t: 123_456,
            s: 7,
            p: 3,
        };
        let text = p.encode(10);
        assert_eq!(text, r#"{"t":123456,"s":7,"p":3,"x":"xxxxxxxxxx"}"#);
        let back: Payload = serde_json::from_str(&text).expect("decodes");
        assert_eq!(back, p);
    }
}
