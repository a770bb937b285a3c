//! Client-address bans shared between the nodes of one deployment: the small interface a gateway
//! uses to tell the other nodes whom it banned and to learn whom they banned. It is beside the
//! [`crate::Broker`] (a ban is the edge's decision, not a message), and the backends implement
//! it: [`crate::RedisBroker`] shares bans through Redis (`redis/bans.rs`); the embedded
//! [`crate::MemoryBroker`] serves one node, whose own limits already hold its bans, so it shares
//! nothing. It never decides who is banned, nor for how long.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::broadcast;

use crate::broker::BrokerError;
use crate::memory::MemoryBroker;

/// Where the nodes of a deployment share the client addresses they banned. The provided
/// methods share nothing (a single node).
#[async_trait]
pub trait BanStore: Send + Sync + std::fmt::Debug {
    /// Announces that `subject` (a client address) is banned for `ttl` to every node sharing
    /// this store, so each enforces it.
    async fn ban(&self, _subject: &str, _ttl: Duration) -> Result<(), BrokerError> {
        Ok(())
    }

    /// The bans announced by any node that are still in force, with the time each has left.
    async fn bans(&self) -> Result<Vec<(String, Duration)>, BrokerError> {
        Ok(Vec::new())
    }

    /// Bans as other nodes announce them (subject, time left); `None` when the store shares
    /// none. A receiver that lags misses some: callers also poll [`BanStore::bans`].
    fn feed(&self) -> Option<broadcast::Receiver<(String, Duration)>> {
        None
    }
}

/// The embedded broker serves one node: nothing to share.
impl BanStore for MemoryBroker {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::MemoryConfig;

    #[tokio::test]
    async fn the_embedded_broker_shares_no_bans() {
        let broker = MemoryBroker::new(MemoryConfig::default());
        broker
            .ban("10.0.0.1", Duration::from_secs(60))
            .await
            .unwrap();
        assert!(broker.bans().await.unwrap().is_empty());
        assert!(broker.feed().is_none());
    }
}
