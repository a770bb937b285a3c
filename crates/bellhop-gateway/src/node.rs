//! The node: state shared by every connection and request, and the operations that the
//! WebSocket sessions and the HTTP API have in common (publish, history, presence), so both
//! edges apply the same validation, policy and error mapping.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bellhop_dispatcher::{BreakerState, BrokerError, ChannelKey, Dispatcher, PublishError};
use bellhop_protocol::validate::{self, ValidationError};
use bellhop_protocol::{Channel, Envelope, ErrorCode, HistoryEntry, Offset, PublishFrame, Sender};
use parking_lot::Mutex;
use tokio::sync::{Notify, Semaphore};

use crate::auth::{Principal, Verifier};
use crate::config::GatewayConfig;
use crate::hub::Hub;
use crate::metrics::Metrics;
use crate::outbound::Outbound;
use crate::policy::{self, Access, Denied};

/// A failed request, as the client will see it: a wire error code (and HTTP status), a message,
/// and when to retry.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub(crate) struct RequestError {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
    pub(crate) retry_after_ms: Option<u64>,
}

impl RequestError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        RequestError {
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

impl From<Denied> for RequestError {
    fn from(d: Denied) -> Self {
        RequestError::new(ErrorCode::Forbidden, d.0)
    }
}

impl From<ValidationError> for RequestError {
    fn from(e: ValidationError) -> Self {
        RequestError::new(e.code(), e.to_string())
    }
}

impl From<BrokerError> for RequestError {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::Unavailable {
                reason,
                retry_after,
            } => RequestError {
                code: ErrorCode::Unavailable,
                message: reason,
                retry_after_ms: Some(retry_after.as_millis() as u64),
            },
            BrokerError::Internal(reason) => {
                tracing::error!(%reason, "broker failure");
                RequestError::new(ErrorCode::Internal, "internal error")
            }
        }
    }
}

impl From<PublishError> for RequestError {
    fn from(e: PublishError) -> Self {
        match e {
            PublishError::Overloaded { retry_after, .. } => RequestError {
                code: ErrorCode::Unavailable,
                message: "node overloaded".into(),
                retry_after_ms: Some(retry_after.as_millis() as u64),
            },
            PublishError::CircuitOpen { retry_after } => RequestError {
                code: ErrorCode::Unavailable,
                message: "broker unavailable (circuit open)".into(),
                // Rounded up: retrying a moment early would only be refused again.
                retry_after_ms: Some(retry_after.as_nanos().div_ceil(1_000_000) as u64),
            },
            PublishError::Broker(e) => e.into(),
            PublishError::ShuttingDown => RequestError {
                code: ErrorCode::Unavailable,
                message: "node shutting down".into(),
                retry_after_ms: Some(1000),
            },
        }
    }
}

/// Everything a node shares among its connections.
#[derive(Debug)]
pub(crate) struct Node {
    pub(crate) config: GatewayConfig,
    pub(crate) dispatcher: Arc<Dispatcher>,
    pub(crate) hub: Hub,
    /// Verifies tokens; shared with the task that reloads its key file.
    pub(crate) verifier: Arc<Verifier>,
    pub(crate) metrics: Metrics,
    /// Open WebSocket connections, for drain.
    pub(crate) connections: Mutex<HashMap<u64, Arc<Outbound>>>,
    /// Notified whenever a connection ends.
    pub(crate) connection_ended: Notify,
    /// One permit per allowed connection (`MAX_CONNECTIONS`).
    pub(crate) slots: Arc<Semaphore>,
    /// Source of connection ids.
    pub(crate) next_id: AtomicU64,
    /// False while draining: `/readyz` answers 503 and upgrades are refused.
    pub(crate) ready: AtomicBool,
    /// Rate limiters, bans and per-user connection counts.
    pub(crate) limits: crate::limits::Limits,
}

impl Node {
    pub(crate) fn new(
        config: GatewayConfig,
        dispatcher: Arc<Dispatcher>,
        verifier: Arc<Verifier>,
    ) -> Self {
        let metrics = Metrics::new(&config.node_id);
        metrics
            .jwt_keys
            .set(i64::try_from(verifier.key_count()).unwrap_or(i64::MAX));
        metrics.ready.set(1);
        metrics
            .max_connections
            .set(i64::try_from(config.max_connections).unwrap_or(i64::MAX));
        Node {
            verifier,
            hub: Hub::new(dispatcher.broker().clone(), metrics.clone()),
            slots: Arc::new(Semaphore::new(config.max_connections)),
            metrics,
            dispatcher,
            connections: Mutex::new(HashMap::new()),
            connection_ended: Notify::new(),
            next_id: AtomicU64::new(1),
            ready: AtomicBool::new(true),
            limits: crate::limits::Limits::new(config.rate_limits.clone()),
            config,
        }
    }

    /// Shares a ban this node decided with every node on the same broker (in the background:
    /// the refusal does not wait for Redis).
    pub(crate) fn announce_ban(&self, ip: std::net::IpAddr) {
        let broker = self.dispatcher.broker().clone();
        let ttl = self.config.rate_limits.ban_duration;
        tokio::spawn(async move {
            if let Err(error) = broker.ban(&ip.to_string(), ttl).await {
                tracing::warn!(%ip, %error, "could not share a ban with the other nodes");
            }
        });
    }

    /// Applies the bans other nodes announced that are still in force.
    pub(crate) async fn sync_bans(&self) {
        match self.dispatcher.broker().bans().await {
            Ok(bans) => {
                for (subject, left) in bans {
                    self.apply_ban(&subject, left);
                }
            }
            Err(error) => tracing::debug!(%error, "could not read the shared bans"),
        }
    }

    /// Enforces a ban of `subject` (an address) here for `left`.
    pub(crate) fn apply_ban(&self, subject: &str, left: std::time::Duration) {
        match subject.parse() {
            Ok(ip) if !left.is_zero() => self.limits.ban(ip, left),
            Ok(_) => {}
            Err(_) => tracing::warn!(
                subject,
                "ignoring a ban of something that is not an address"
            ),
        }
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The state of the circuit breaker around the broker, and the gauge brought up to date.
    pub(crate) fn breaker_state(&self) -> BreakerState {
        let state = self.dispatcher.breaker_state();
        self.metrics.breaker_state.set(state.as_gauge());
        state
    }

    /// Whether the broker's live delivery works, and the gauge brought up to date.
    pub(crate) fn broker_live(&self) -> bool {
        let healthy = self.dispatcher.broker().live_healthy();
        self.metrics.broker_live.set(i64::from(healthy));
        healthy
    }

    pub(crate) fn key(p: &Principal, channel: &Channel) -> ChannelKey {
        ChannelKey::new(p.property.clone(), channel.clone())
    }

    pub(crate) fn count_error(&self, code: ErrorCode) {
        self.metrics
            .errors
            .with_label_values(&[code.as_str()])
            .inc();
    }

    /// Validates, authorizes, stores and acknowledges one publish. Returns the message id and
    /// offset once the broker confirmed the write.
    pub(crate) async fn publish(
        &self,
        p: &Principal,
        frame: PublishFrame,
    ) -> Result<(String, Offset), RequestError> {
        validate::publish(&frame, &self.config.limits)?;
        policy::check(p, Access::Publish, &frame.channel)?;
        if let Err(wait) = self.limits.check_publish(&p.property, &p.user_id) {
            self.metrics
                .rate_limited
                .with_label_values(&["publish"])
                .inc();
            return Err(RequestError {
                code: ErrorCode::RateLimited,
                message: format!(
                    "too many publishes: at most {} a minute per user",
                    self.config.rate_limits.publishes_per_user_per_minute
                ),
                retry_after_ms: Some(ms_ceil(wait)),
            });
        }
        let priority = policy::priority(p, &frame.event, frame.priority)?;
        let envelope = Envelope {
            message_id: uuid::Uuid::new_v4().to_string(),
            event: frame.event,
            namespace: p.property.clone(),
            channel: frame.channel,
            payload: frame.payload,
            timestamp: now_rfc3339(),
            sender: Sender {
                id: p.user_id.clone(),
                role: p.role,
            },
            priority,
            correlation_id: frame.correlation_id,
        };
        let message_id = envelope.message_id.clone();
        let started = tokio::time::Instant::now();
        let offset = match self.dispatcher.publish(Arc::new(envelope)).await {
            Ok(offset) => offset,
            Err(e) => {
                if matches!(e, PublishError::CircuitOpen { .. }) {
                    self.metrics.breaker_rejections.inc();
                }
                return Err(e.into());
            }
        };
        self.metrics
            .publish_seconds
            .with_label_values(&[priority.as_str()])
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .messages_in
            .with_label_values(&[priority.as_str()])
            .inc();
        Ok((message_id, offset))
    }

    /// Reads stored messages of a channel the principal may read.
    pub(crate) async fn history(
        &self,
        p: &Principal,
        channel: &Channel,
        since: Option<Offset>,
        limit: Option<u32>,
    ) -> Result<Vec<HistoryEntry>, RequestError> {
        policy::check(p, Access::Read, channel)?;
        let limit = validate::history_limit(limit, &self.config.limits)?;
        let read = self
            .dispatcher
            .broker()
            .read(&Self::key(p, channel), since, limit)
            .await?;
        Ok(read
            .messages
            .into_iter()
            .map(|m| HistoryEntry {
                offset: m.offset,
                message: m.envelope,
            })
            .collect())
    }

    /// The users on a channel the principal may read.
    pub(crate) async fn presence(
        &self,
        p: &Principal,
        channel: &Channel,
    ) -> Result<Vec<String>, RequestError> {
        policy::check(p, Access::Read, channel)?;
        Ok(self
            .dispatcher
            .broker()
            .presence(&Self::key(p, channel))
            .await?)
    }
}

/// The current time as RFC 3339 with milliseconds, UTC (`2026-11-23T09:30:00.123Z`).
pub(crate) fn now_rfc3339() -> String {
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    time::OffsetDateTime::now_utc()
        .format(&format)
        .unwrap_or_default()
}

/// `d` in whole milliseconds, rounded up (a retry hint must never be early), at least 1.
pub(crate) fn ms_ceil(d: std::time::Duration) -> u64 {
    (d.as_micros().div_ceil(1000)).clamp(1, u64::MAX as u128) as u64
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bellhop_dispatcher::PublishError;
    use bellhop_protocol::ErrorCode;

    use super::RequestError;

    #[test]
    fn an_open_breaker_is_unavailable_with_its_retry_hint_rounded_up() {
        let e = RequestError::from(PublishError::CircuitOpen {
            retry_after: Duration::from_micros(29_999_001),
        });
        assert_eq!(e.code, ErrorCode::Unavailable);
        assert_eq!(e.retry_after_ms, Some(30_000));
        assert!(e.message.contains("circuit open"), "{}", e.message);
    }

    #[test]
    fn timestamps_are_rfc3339_with_milliseconds() {
        let t = super::now_rfc3339();
        assert_eq!(t.len(), "2026-11-23T09:30:00.123Z".len(), "{t}");
        assert!(t.ends_with('Z') && t.as_bytes()[10] == b'T' && t.as_bytes()[19] == b'.');
    }
}
