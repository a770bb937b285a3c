//! The Bellhop delivery engine. It stores messages in per-channel logs with offsets, keeps the
//! retention window, answers history and recovery reads, tracks presence and read markers, and puts
//! a priority queue with batching in front of the storage backend.
//!
//! Backends implement [`Broker`]: [`MemoryBroker`] is the embedded single-node broker (a product
//! feature, not a test double); [`RedisBroker`] keeps the same semantics in a Redis server shared by
//! every node. A circuit breaker ([`breaker`]) in the [`Dispatcher`] guards the write path, so a
//! broken Redis makes publishes fail fast instead of piling up behind call timeouts.
//!
//! Service requests ([`requests`]) are a workflow on top: lifecycle, department routing and
//! escalation, with their own store ([`requests::RequestStore`]) beside the broker; client-address
//! bans shared between nodes have theirs too ([`BanStore`]).
//!
//! Architecture invariant: this crate knows nothing of WebSockets, HTTP or sessions. It speaks in
//! channel keys, envelopes and offsets.

mod bans;
pub mod breaker;
mod broker;
mod dispatcher;
mod memory;
pub mod queue;
mod redis;
pub mod requests;

pub use bans::BanStore;
pub use breaker::{BreakerConfig, BreakerState};
pub use broker::{
    Attachment, Broker, BrokerError, ChannelEvent, ChannelKey, ChannelName, LiveSink, Publish,
    Published, ReadResult, StoredMessage, Subscription, SubscriptionEvent,
    MAX_IDEMPOTENCY_KEY_BYTES,
};
pub use dispatcher::{Dispatcher, DispatcherConfig, PublishError};
pub use memory::{MemoryBroker, MemoryConfig};
pub use redis::{RedisBroker, RedisConfig};

/// Milliseconds since the Unix epoch, from the system clock. Offsets are wall-clock based (like
/// Redis stream IDs); monotonicity is restored by [`bellhop_protocol::Offset::next_after`].
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
