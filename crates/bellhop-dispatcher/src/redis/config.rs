//! The Redis backend's settings: [`RedisConfig`], its defaults, the checks that reject settings
//! that cannot work ([`RedisConfig::validate`], naming the setting), and the redaction that keeps
//! the password in the URL out of every log.

use std::fmt;
use std::time::Duration;

/// Settings of the Redis backend.
#[derive(Clone)]
pub struct RedisConfig {
    /// Where Redis is: `redis://[[user]:password@]host[:port][/db]` (`REDIS_URL`), or
    /// `rediss://...` for TLS; in cluster mode, any one node of the cluster (the others are
    /// discovered).
    pub url: String,
    /// With `rediss://`: a PEM file of the certificate authorities that sign the server's
    /// certificate (`REDIS_TLS_CA_PATH`), instead of the system's roots. The certificate must
    /// name the host in the URL (and, in a cluster, each node as it announces itself).
    pub tls_ca_path: Option<std::path::PathBuf>,
    /// The URL is a node of a Redis Cluster (`REDIS_CLUSTER`): keys are spread over its slots,
    /// live events travel by sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) and the channel script is
    /// loaded on every primary.
    pub cluster: bool,
    /// Prefix of every key and pub/sub channel (`bh`), so several deployments can share a
    /// server. Must not contain `{`, `}` or whitespace.
    pub key_prefix: String,
    /// How long messages stay readable (`MESSAGE_RETENTION_HOURS`, 24 h); also how long an idle
    /// channel's keys live.
    pub retention: Duration,
    /// How long a session stays present without a refresh (90 s): a node that dies leaves its
    /// sessions behind for at most this long.
    pub presence_ttl: Duration,
    /// How often this broker refreshes the sessions it added (30 s); well under `presence_ttl`.
    pub presence_refresh: Duration,
    /// Most messages kept per channel (10,000, the same as the embedded broker's): each publish
    /// trims the stream to it exactly, oldest first, and a `since` older than a message trimmed
    /// this way is `recovered: false`.
    pub max_messages_per_channel: usize,
    /// How long the result of a publish with an idempotency key is remembered (600 s,
    /// `IDEMPOTENCY_WINDOW_SECONDS`): a repeat within it is answered with the original (a key
    /// `<prefix>:{<property>|<channel>}:idem:<key>` with that expiry).
    pub idempotency_window: Duration,
    /// Longest a Redis call may take before it fails with `unavailable` (5 s, the circuit
    /// breaker's call timeout). Also bounds connecting.
    pub command_timeout: Duration,
    /// What `retryAfterMs` says when Redis is unreachable (1 s).
    pub retry_after: Duration,
    /// First delay before reconnecting (100 ms); doubles on each failed attempt. Reconnecting
    /// never gives up.
    pub reconnect_min_delay: Duration,
    /// Longest delay between reconnect attempts (10 s).
    pub reconnect_max_delay: Duration,
    /// Events buffered per channel for a live [`Broker::subscribe`](crate::Broker::subscribe)
    /// subscriber before it is told it has a gap (32). The buffer is allocated in full for every
    /// channel with such a subscriber, so it is small: a subscriber that falls behind re-reads
    /// the log. Sinks ([`Broker::attach`](crate::Broker::attach), what a node's hub uses) are
    /// handed each event as it is routed and have no buffer here.
    pub subscriber_buffer: usize,
    /// Pub/sub messages buffered between the subscriber connection and the task that routes them
    /// to channels, before every channel is told it has a gap (16,384).
    pub pubsub_buffer: usize,
    /// How often a probe is published to this broker's own pub/sub channel, to catch a subscriber
    /// connection that went silent without closing (15 s).
    pub probe_interval: Duration,
    /// How long a probe may take to come back before the subscriber connection is replaced and
    /// every channel told it has a gap (5 s).
    pub probe_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            tls_ca_path: None,
            key_prefix: "bh".into(),
            retention: Duration::from_secs(24 * 3600),
            presence_ttl: Duration::from_secs(90),
            presence_refresh: Duration::from_secs(30),
            max_messages_per_channel: 10_000,
            idempotency_window: Duration::from_secs(600),
            command_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(10),
            subscriber_buffer: 32,
            pubsub_buffer: 16_384,
            probe_interval: Duration::from_secs(15),
            probe_timeout: Duration::from_secs(5),
        }
    }
}

/// Written by hand so the password in the URL never reaches a log.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("cluster", &self.cluster)
            .field("tls_ca_path", &self.tls_ca_path)
            .field("key_prefix", &self.key_prefix)
            .field("retention", &self.retention)
            .field("presence_ttl", &self.presence_ttl)
            .field("presence_refresh", &self.presence_refresh)
            .field("max_messages_per_channel", &self.max_messages_per_channel)
            .field("idempotency_window", &self.idempotency_window)
            .field("command_timeout", &self.command_timeout)
            .field("retry_after", &self.retry_after)
            .field("reconnect_min_delay", &self.reconnect_min_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("subscriber_buffer", &self.subscriber_buffer)
            .field("pubsub_buffer", &self.pubsub_buffer)
            .field("probe_interval", &self.probe_interval)
            .field("probe_timeout", &self.probe_timeout)
            .finish()
    }
}

/// The URL with any credentials replaced by `***`.
pub(super) fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl RedisConfig {
    /// The URL with its credentials replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// Whether Redis is reached over TLS (`rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }

    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !self.url.starts_with("redis://") && !self.url.starts_with("rediss://") {
            return Err(format!(
                "REDIS_URL must be a redis:// or rediss:// (TLS) URL; Sentinel is not supported, and for a Redis Cluster give one node's URL and set REDIS_CLUSTER=true: {:?}",
                redact(&self.url)
            ));
        }
        if self.tls_ca_path.is_some() && !self.uses_tls() {
            return Err("REDIS_TLS_CA_PATH is set but Redis is not reached over TLS: use a rediss:// URL or REDIS_TLS_ENABLED=true".into());
        }
        if self.key_prefix.is_empty()
            || self
                .key_prefix
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_whitespace())
        {
            return Err(format!(
                "the Redis key prefix must be non-empty without braces or spaces: {:?}",
                self.key_prefix
            ));
        }
        if self.retention < Duration::from_secs(1)
            || self.retention > Duration::from_secs(3650 * 24 * 3600)
        {
            return Err(
                "MESSAGE_RETENTION_HOURS must give a retention between 1 s and 10 years".into(),
            );
        }
        if self.presence_ttl > Duration::from_secs(24 * 3600) {
            return Err("the presence TTL must be at most a day".into());
        }
        if self.presence_refresh.is_zero() || self.presence_ttl <= self.presence_refresh {
            return Err(
                "the presence TTL must be longer than the (non-zero) presence refresh interval"
                    .into(),
            );
        }
        if self.max_messages_per_channel == 0 {
            return Err("the per-channel message cap must be at least 1".into());
        }
        if self.idempotency_window.as_millis() == 0
            || self.idempotency_window > Duration::from_secs(7 * 24 * 3600)
        {
            return Err("the idempotency window must be between 1 ms and 7 days".into());
        }
        if self.command_timeout.is_zero() {
            return Err("the Redis command timeout must be positive".into());
        }
        if self.reconnect_min_delay.is_zero() || self.reconnect_max_delay < self.reconnect_min_delay
        {
            return Err(
                "the Redis reconnect delays must be positive, the maximum at least the minimum"
                    .into(),
            );
        }
        if self.subscriber_buffer == 0 || self.pubsub_buffer == 0 {
            return Err("the Redis subscriber buffers must hold at least one event".into());
        }
        if self.probe_interval.is_zero() || self.probe_timeout.is_zero() {
            return Err("the Redis subscriber probe interval and timeout must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_passwords_never_printed() {
        assert!(RedisConfig::default().validate().is_ok());
        let with = |f: fn(&mut RedisConfig)| {
            let mut config = RedisConfig::default();
            f(&mut config);
            config.validate()
        };
        assert!(with(|c| c.url = "rediss://h:6380".into()).is_ok());
        assert!(with(|c| c.url = "redis-sentinel://h:26379".into())
            .unwrap_err()
            .contains("REDIS_URL"));
        assert!(with(|c| c.tls_ca_path = Some("/ca.pem".into()))
            .unwrap_err()
            .contains("REDIS_TLS_CA_PATH"));
        assert!(with(|c| c.key_prefix = "b{h}".into()).is_err());
        assert!(with(|c| c.presence_refresh = c.presence_ttl).is_err());
        assert!(with(|c| c.max_messages_per_channel = 0).is_err());
        assert!(with(|c| c.idempotency_window = Duration::ZERO).is_err());
        assert!(with(|c| c.retention = Duration::ZERO)
            .unwrap_err()
            .contains("MESSAGE_RETENTION_HOURS"));

        let config = RedisConfig {
            url: "redis://app:s3cret@redis:6379/0".into(),
            ..RedisConfig::default()
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("redis://***@redis:6379/0"), "{printed}");
    }
}
