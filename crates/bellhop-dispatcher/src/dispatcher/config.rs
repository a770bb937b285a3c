//! The dispatcher's settings ([`DispatcherConfig`]): queue size, batch size, publish deadline and
//! the breaker's, with their defaults and the check that rejects nonsense.

use std::time::Duration;

use crate::breaker::BreakerConfig;

/// Settings of the dispatcher's queue.
#[derive(Clone, Debug)]
pub struct DispatcherConfig {
    /// Most publishes handed to the broker in one call (64).
    pub max_batch: usize,
    /// Most publishes waiting; beyond it publishes fail fast with `unavailable` (10,000).
    pub max_pending: usize,
    /// A waiting lower priority is passed over at most this many times in a row (16).
    pub starvation_limit: u32,
    /// What `retryAfterMs` says when the queue is full (100 ms).
    pub overload_retry_after: Duration,
    /// Longest a publish may wait in the queue, from the moment it is queued (5 s, the breaker's
    /// call timeout); past it, it fails with `unavailable` and is not sent.
    pub publish_timeout: Duration,
    /// The circuit breaker around the broker's write path (call timeout 5 s, opens at 50 %
    /// failures over at least 10 of the last 20 calls, half-open after 30 s).
    pub breaker: BreakerConfig,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        let breaker = BreakerConfig::default();
        DispatcherConfig {
            max_batch: 64,
            max_pending: 10_000,
            starvation_limit: 16,
            overload_retry_after: Duration::from_millis(100),
            publish_timeout: breaker.call_timeout,
            breaker,
        }
    }
}

impl DispatcherConfig {
    /// Rejects settings that cannot work, naming the setting. [`Dispatcher::new`] does not call
    /// it (it clamps instead); whoever builds the config from outside input should.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_batch == 0 {
            return Err("dispatcher max_batch must be at least 1".into());
        }
        if self.max_pending == 0 {
            return Err("dispatcher max_pending must be at least 1".into());
        }
        if self.publish_timeout.is_zero() {
            return Err("dispatcher publish_timeout must be greater than zero".into());
        }
        self.breaker.validate()
    }
}
