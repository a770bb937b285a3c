//! The node: state shared by every connection and request, and the operations that the
//! WebSocket sessions and the HTTP API have in common (publish, history, presence), so both
//! edges apply the same validation, policy and error mapping.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bellhop_dispatcher::requests::{
    self, Actor, MemoryRequestStore, RequestError as WorkflowError, Requests, RequestsConfig,
};
use bellhop_dispatcher::{
    BanStore, BreakerState, BrokerError, ChannelKey, Dispatcher, MemoryBroker, MemoryConfig,
    Publish, PublishError,
};
use bellhop_protocol::validate::{self, ValidationError};
use bellhop_protocol::{Channel, Envelope, ErrorCode, HistoryEntry, Offset, PublishFrame, Sender};

use crate::auth::{Principal, Verifier};
use crate::config::GatewayConfig;
use crate::connections::Connections;
use crate::hub::Hub;
use crate::metrics::Metrics;
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

/// A stored (or, for a repeated idempotency key, earlier stored) publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Acked {
    pub(crate) message_id: String,
    pub(crate) offset: Offset,
    /// The publish repeated an earlier one's idempotency key: nothing new was stored.
    pub(crate) duplicate: bool,
}

/// One page of a `history` reply.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct HistoryPage {
    /// Oldest first.
    pub(crate) messages: Vec<HistoryEntry>,
    /// Newer messages follow the last one: read again with `since` set to its offset.
    pub(crate) more: bool,
}

/// Everything a node shares among its connections. Its parts are private: each edge reaches
/// what it needs through a method (the components by reference, the node's own state through
/// operations on it).
#[derive(Debug)]
pub(crate) struct Node {
    /// The gateway's settings, fixed at start.
    config: GatewayConfig,
    /// Publishes, and the broker behind it for reads, presence and live delivery.
    dispatcher: Arc<Dispatcher>,
    /// This node's local fan-out of each channel to its subscribed sessions.
    hub: Hub,
    /// Verifies tokens; shared with the task that reloads its key file.
    verifier: Arc<Verifier>,
    /// The node's Prometheus metrics.
    metrics: Metrics,
    /// Open WebSocket connections: their permits, ids and queues (for drain).
    connections: Connections,
    /// False while draining: `/readyz` answers 503 and upgrades are refused.
    ready: AtomicBool,
    /// Rate limiters, bans and per-user connection counts.
    limits: crate::limits::Limits,
    /// Where this node shares its bans with the other nodes and learns theirs.
    bans: Arc<dyn BanStore>,
    /// Byte budgets, guest emergencies, typing and presence notice coalescing.
    fairness: crate::fairness::Fairness,
    /// The service request workflow (lifecycle, routing, escalation), in the dispatcher.
    requests: Arc<Requests>,
}

impl Node {
    /// A node alone: its service requests live in its memory and its bans are its own (the
    /// session tests use it).
    #[cfg_attr(not(test), allow(dead_code))]
    pub(crate) fn new(
        config: GatewayConfig,
        dispatcher: Arc<Dispatcher>,
        verifier: Arc<Verifier>,
    ) -> Self {
        let requests = default_requests(&config, &dispatcher);
        let bans = Arc::new(MemoryBroker::new(MemoryConfig::default()));
        Node::with_requests(config, dispatcher, verifier, requests, bans)
    }

    pub(crate) fn with_requests(
        config: GatewayConfig,
        dispatcher: Arc<Dispatcher>,
        verifier: Arc<Verifier>,
        requests: Arc<Requests>,
        bans: Arc<dyn BanStore>,
    ) -> Self {
        let metrics = Metrics::new(&config.node_id);
        metrics
            .jwt_keys
            .set(i64::try_from(verifier.key_count()).unwrap_or(i64::MAX));
        metrics.ready.set(1);
        requests.set_observer(Arc::new(metrics.clone()));
        metrics
            .max_connections
            .set(i64::try_from(config.max_connections).unwrap_or(i64::MAX));
        Node {
            verifier,
            hub: Hub::new(dispatcher.broker().clone(), metrics.clone()),
            connections: Connections::new(config.max_connections),
            metrics,
            dispatcher,
            ready: AtomicBool::new(true),
            limits: crate::limits::Limits::new(config.rate_limits.clone()),
            bans,
            fairness: crate::fairness::Fairness::new(config.hotel.clone()),
            requests,
            config,
        }
    }

    /// Shares a ban this node decided with every node on the same broker (in the background:
    /// the refusal does not wait for Redis).
    pub(crate) fn announce_ban(&self, ip: std::net::IpAddr) {
        let bans = self.bans.clone();
        let ttl = self.config.rate_limits.ban_duration;
        tokio::spawn(async move {
            if let Err(error) = bans.ban(&ip.to_string(), ttl).await {
                tracing::warn!(%ip, %error, "could not share a ban with the other nodes");
            }
        });
    }

    /// Applies the bans other nodes announced that are still in force.
    pub(crate) async fn sync_bans(&self) {
        match self.bans.bans().await {
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

    /// The gateway's settings.
    pub(crate) fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// The broker behind the dispatcher: reads, presence, read markers and live delivery.
    pub(crate) fn broker(&self) -> &Arc<dyn bellhop_dispatcher::Broker> {
        self.dispatcher.broker()
    }

    /// This node's local fan-out hub.
    pub(crate) fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The token verifier.
    pub(crate) fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// The node's metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The open WebSocket connections.
    pub(crate) fn connections(&self) -> &Connections {
        &self.connections
    }

    /// Rate limiters, bans and per-user connection counts.
    pub(crate) fn limits(&self) -> &crate::limits::Limits {
        &self.limits
    }

    /// Byte budgets, guest emergencies, typing and presence notice coalescing.
    pub(crate) fn fairness(&self) -> &crate::fairness::Fairness {
        &self.fairness
    }

    /// The service request workflow.
    pub(crate) fn requests(&self) -> &Requests {
        &self.requests
    }

    /// The bans other nodes announce as they decide them, where the ban store has such a feed.
    pub(crate) fn ban_feed(
        &self,
    ) -> Option<tokio::sync::broadcast::Receiver<(String, std::time::Duration)>> {
        self.bans.feed()
    }

    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Starts the drain: readiness turns false (and its gauge with it) for good.
    pub(crate) fn stop_ready(&self) {
        self.ready.store(false, Ordering::Release);
        self.metrics.ready.set(0);
    }

    /// The state of the circuit breaker around the broker, and the gauge brought up to date.
    pub(crate) fn breaker_state(&self) -> BreakerState {
        let state = self.dispatcher.breaker_state();
        self.metrics.breaker_state.set(state.as_gauge());
        // Read at the same moments (every scrape and readiness probe).
        let restarts = i64::try_from(self.dispatcher.worker_restarts()).unwrap_or(i64::MAX);
        self.metrics.worker_restarts.set(restarts);
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

    /// Whether `p` may `access` `channel`: the channel must exist (a department outside
    /// `DEPARTMENTS` does not) and the policy must allow it.
    pub(crate) fn authorize(
        &self,
        p: &Principal,
        access: Access,
        channel: &Channel,
    ) -> Result<(), RequestError> {
        if let Channel::Dept(d) = channel {
            if !self.config.departments.iter().any(|known| known == d) {
                return Err(RequestError::new(
                    ErrorCode::BadRequest,
                    format!(
                        "unknown department {channel}: this property's departments are {}",
                        self.config.departments.join(", ")
                    ),
                ));
            }
        }
        Ok(policy::check(p, access, channel)?)
    }

    /// Announces that `user` joined or left `key`, coalesced (see `fairness`): a deferred notice
    /// is sent by a short task when its interval ends.
    pub(crate) async fn announce_presence(
        self: &Arc<Self>,
        key: &ChannelKey,
        user: &str,
        present: bool,
    ) {
        use crate::fairness::Announce;
        match self
            .fairness
            .presence_changed(key, user, present, tokio::time::Instant::now())
        {
            Announce::Now(state) => self.publish_presence(key, user, state).await,
            Announce::At(when) => {
                let node = self.clone();
                let (key, user) = (key.clone(), user.to_owned());
                tokio::spawn(async move {
                    tokio::time::sleep_until(when).await;
                    let due = node
                        .fairness
                        .presence_due(&key, &user, tokio::time::Instant::now());
                    if let Some(state) = due {
                        node.publish_presence(&key, &user, state).await;
                    }
                });
            }
            Announce::Nothing => {}
        }
    }

    async fn publish_presence(&self, key: &ChannelKey, user: &str, present: bool) {
        let user_id = user.to_owned();
        let event = if present {
            bellhop_dispatcher::ChannelEvent::Join { user_id }
        } else {
            bellhop_dispatcher::ChannelEvent::Leave { user_id }
        };
        if let Err(e) = self.dispatcher.broker().publish_ephemeral(key, event).await {
            tracing::debug!(error = %e, channel = %key, "could not announce presence");
        }
    }

    /// Validates, authorizes, stores and acknowledges one publish. Returns the message id and
    /// offset once the broker confirmed the write.
    pub(crate) async fn publish(
        &self,
        p: &Principal,
        frame: PublishFrame,
    ) -> Result<Acked, RequestError> {
        validate::publish(&frame, &self.config.limits)?;
        self.authorize(p, Access::Publish, &frame.channel)?;
        let desk = &self.config.hotel.guest_emergency_channel;
        if policy::guest_emergency(p, &frame.event, &frame.channel, desk)? {
            if let Err(wait) = self.fairness.take_emergency(&p.property, &p.user_id) {
                self.metrics
                    .rate_limited
                    .with_label_values(&["guest_emergency"])
                    .inc();
                let h = &self.config.hotel;
                return Err(RequestError {
                    code: ErrorCode::RateLimited,
                    message: format!(
                        "at most {} emergency alerts per {} minutes from one guest: call the front desk",
                        h.guest_emergencies_per_window,
                        h.guest_emergency_window.as_secs() / 60
                    ),
                    retry_after_ms: Some(ms_ceil(wait.0)),
                });
            }
        }
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
        let (json, msgpack) = validate::encoded_sizes(&frame.payload);
        if let Err(wait) = self
            .fairness
            .spend_bytes(&p.property, &p.user_id, json.max(msgpack))
        {
            self.metrics
                .rate_limited
                .with_label_values(&["publish_bytes"])
                .inc();
            return Err(RequestError {
                code: ErrorCode::RateLimited,
                message: format!(
                    "too many bytes published: at most {} a minute per user",
                    self.config.hotel.publish_bytes_per_user_per_minute
                ),
                retry_after_ms: Some(ms_ceil(wait.0)),
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
        let started = tokio::time::Instant::now();
        if requests::is_request_event(&envelope.event, &envelope.payload) {
            let key = frame.idempotency_key.map(|k| format!("{}:{k}", p.user_id));
            let actor = actor(p);
            let published = if envelope.event == requests::SERVICE_REQUEST {
                self.requests.open(&actor, envelope, key).await
            } else {
                self.requests.update(&actor, envelope, key).await
            };
            let published = match published {
                Ok(published) => published,
                Err(e) => {
                    if matches!(e, WorkflowError::Publish(PublishError::CircuitOpen { .. })) {
                        self.metrics.breaker_rejections.inc();
                    }
                    return Err(e.into());
                }
            };
            self.count_published(priority, started, published.duplicate);
            return Ok(Acked {
                message_id: published.message_id,
                offset: published.offset,
                duplicate: published.duplicate,
            });
        }
        // Scoped to the user: two users' keys never collide (the backend adds the property and
        // the channel).
        let publish = match frame.idempotency_key {
            Some(key) => Publish::with_key(Arc::new(envelope), format!("{}:{key}", p.user_id)),
            None => Publish::new(Arc::new(envelope)),
        };
        let published = match self.dispatcher.publish(publish).await {
            Ok(published) => published,
            Err(e) => {
                if matches!(e, PublishError::CircuitOpen { .. }) {
                    self.metrics.breaker_rejections.inc();
                }
                return Err(e.into());
            }
        };
        self.count_published(priority, started, published.duplicate);
        Ok(Acked {
            message_id: published.message_id,
            offset: published.offset,
            duplicate: published.duplicate,
        })
    }

    fn count_published(
        &self,
        priority: bellhop_protocol::Priority,
        started: tokio::time::Instant,
        duplicate: bool,
    ) {
        if duplicate {
            self.metrics.idempotent_repeats.inc();
        } else {
            self.metrics
                .publish_seconds
                .with_label_values(&[priority.as_str()])
                .observe(started.elapsed().as_secs_f64());
            self.metrics
                .messages_in
                .with_label_values(&[priority.as_str()])
                .inc();
        }
    }

    /// Reads stored messages of a channel the principal may read: at most `limit` of them, and
    /// at most `HISTORY_MAX_BYTES` in their largest encoding, so that every page fits in a
    /// connection's outbound budget whatever its codec. A page cut short says `more`.
    pub(crate) async fn history(
        &self,
        p: &Principal,
        channel: &Channel,
        since: Option<Offset>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, RequestError> {
        self.authorize(p, Access::Read, channel)?;
        let limit = validate::history_limit(limit, &self.config.limits)?;
        let read = self
            .dispatcher
            .broker()
            .read(&Self::key(p, channel), since, limit)
            .await?;
        let budget = self
            .config
            .history_max_bytes
            .min(self.config.outbound.max_bytes);
        let mut used = 0usize;
        let mut messages = Vec::with_capacity(read.messages.len());
        let mut cut = false;
        for m in read.messages {
            let entry = HistoryEntry {
                offset: m.offset,
                message: m.envelope,
            };
            let (json, msgpack) = validate::encoded_sizes(&entry);
            let size = json.max(msgpack);
            // The first entry always goes: a stored message fits the budget by construction
            // (`max_payload_bytes` is validated below `history_max_bytes`).
            if !messages.is_empty() && used + size > budget {
                cut = true;
                break;
            }
            used += size;
            messages.push(entry);
        }
        // Without `since`, `read.more` would say older messages exist (there is no paging
        // backwards); the page is the newest ones, and `more` says only that it was cut.
        let more = cut || (since.is_some() && read.more);
        Ok(HistoryPage { messages, more })
    }

    /// The users on a channel the principal may read.
    pub(crate) async fn presence(
        &self,
        p: &Principal,
        channel: &Channel,
    ) -> Result<Vec<String>, RequestError> {
        self.authorize(p, Access::Presence, channel)?;
        Ok(self
            .dispatcher
            .broker()
            .presence(&Self::key(p, channel))
            .await?)
    }
}

/// The workflow with the default settings for the configured departments, its requests in
/// memory.
pub(crate) fn default_requests(
    config: &GatewayConfig,
    dispatcher: &Arc<Dispatcher>,
) -> Arc<Requests> {
    let store = Arc::new(MemoryRequestStore::new(std::time::Duration::from_secs(
        24 * 3600,
    )));
    Requests::start(
        dispatcher.clone(),
        store,
        RequestsConfig::new(config.departments.clone()),
    )
    .expect("the default request settings are valid")
}

impl From<WorkflowError> for RequestError {
    fn from(e: WorkflowError) -> Self {
        match e {
            WorkflowError::BadRequest(m) => RequestError::new(ErrorCode::BadRequest, m),
            WorkflowError::Forbidden(m) => RequestError::new(ErrorCode::Forbidden, m),
            e @ WorkflowError::NotFound(_) => {
                RequestError::new(ErrorCode::BadRequest, e.to_string())
            }
            WorkflowError::Publish(e) => e.into(),
            WorkflowError::Broker(e) => e.into(),
        }
    }
}

/// The workflow's view of who publishes.
pub(crate) fn actor(p: &Principal) -> Actor {
    Actor {
        id: p.user_id.clone(),
        role: p.role,
        depts: p.depts.iter().cloned().collect(),
        rooms: p.rooms.iter().cloned().collect(),
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
