//! The node's Prometheus metrics. One registry per node, so several nodes in one test process do
//! not share counters.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

/// Every metric a node exports on `/metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry that `/metrics` renders.
    registry: Registry,
    /// Open WebSocket connections (authenticated or not).
    pub connections: IntGauge,
    /// Connections refused before or at the upgrade, by reason (`capacity`, `unauthorized`,
    /// `bad_request`, `draining`).
    pub connections_rejected: IntCounterVec,
    /// Channel subscriptions held by local connections.
    pub subscriptions: IntGauge,
    /// Channels this node subscribes to in the broker.
    pub channels: IntGauge,
    /// Messages accepted for publishing (WebSocket and HTTP API), by priority.
    pub messages_in: IntCounterVec,
    /// Message frames queued to local connections, by priority.
    pub messages_out: IntCounterVec,
    /// Time from a publish request to its acknowledgement, by priority.
    pub publish_seconds: HistogramVec,
    /// Error frames and HTTP API errors sent, by code.
    pub errors: IntCounterVec,
    /// Outbound frames dropped: `ephemeral` (typing/presence under pressure) or `slow_consumer`
    /// (the whole queue of a disconnected slow client).
    pub queue_drops: IntCounterVec,
    /// Connections closed because they could not keep up.
    pub slow_consumers: IntCounter,
    /// The circuit breaker around the broker's write path: 0 closed, 1 half-open, 2 open. Read
    /// from the dispatcher when `/metrics` is scraped (it is one lock and a comparison).
    pub breaker_state: IntGauge,
    /// 1 while the broker's live delivery works, 0 while its subscriber connection is down or
    /// silent (Redis); updated on each scrape.
    pub broker_live: IntGauge,
    /// Publishes refused because the circuit breaker was open.
    pub breaker_rejections: IntCounter,
    /// Key or JWKS file reloads, by result: `ok` (new keys in use) or `error` (a changed file
    /// refused; the previous keys stay in use).
    pub jwt_key_reloads: IntCounterVec,
    /// Verification keys in use (1 for a secret or a PEM key, the usable keys of a JWKS).
    pub jwt_keys: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric. `node` becomes a constant label.
    pub fn new(node: &str) -> Self {
        let registry =
            Registry::new_custom(None, Some([("node".to_string(), node.to_string())].into()))
                .unwrap_or_default();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric name");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let publish_seconds = HistogramVec::new(
            HistogramOpts::new(
                "bellhop_publish_duration_seconds",
                "Publish request to acknowledgement.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
            &["priority"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(publish_seconds.clone()))
            .expect("unique metric");
        let slow_consumers = IntCounter::new(
            "bellhop_slow_consumer_disconnects_total",
            "Connections closed with 4008.",
        )
        .expect("valid metric name");
        registry
            .register(Box::new(slow_consumers.clone()))
            .expect("unique metric");
        let breaker = |opts: Opts| opts.const_label("target", "redis");
        let breaker_state = IntGauge::with_opts(breaker(Opts::new(
            "bellhop_breaker_state",
            "Circuit breaker state: 0 closed, 1 half-open, 2 open.",
        )))
        .expect("valid metric name");
        registry
            .register(Box::new(breaker_state.clone()))
            .expect("unique metric");
        let broker_live = IntGauge::with_opts(breaker(Opts::new(
            "bellhop_broker_live_healthy",
            "1 while live delivery from the broker works, 0 while its subscriber connection is down.",
        )))
        .expect("valid metric name");
        registry
            .register(Box::new(broker_live.clone()))
            .expect("unique metric");
        let breaker_rejections = IntCounter::with_opts(breaker(Opts::new(
            "bellhop_breaker_rejections_total",
            "Publishes refused because the circuit breaker was open.",
        )))
        .expect("valid metric name");
        registry
            .register(Box::new(breaker_rejections.clone()))
            .expect("unique metric");
        Metrics {
            connections: gauge("bellhop_connections", "Open WebSocket connections."),
            connections_rejected: counter_vec(
                "bellhop_connections_rejected_total",
                "Upgrades refused, by reason.",
                &["reason"],
            ),
            subscriptions: gauge(
                "bellhop_subscriptions",
                "Channel subscriptions of local connections.",
            ),
            channels: gauge(
                "bellhop_channels",
                "Channels this node subscribes to in the broker.",
            ),
            messages_in: counter_vec(
                "bellhop_messages_published_total",
                "Messages acknowledged to publishers, by priority.",
                &["priority"],
            ),
            messages_out: counter_vec(
                "bellhop_messages_delivered_total",
                "Message frames queued to local connections, by priority.",
                &["priority"],
            ),
            publish_seconds,
            errors: counter_vec(
                "bellhop_errors_total",
                "Errors sent to clients, by code.",
                &["code"],
            ),
            queue_drops: counter_vec(
                "bellhop_queue_drops_total",
                "Outbound frames dropped, by reason.",
                &["reason"],
            ),
            jwt_key_reloads: counter_vec(
                "bellhop_jwt_key_reloads_total",
                "JWT key file reloads, by result (ok, error).",
                &["result"],
            ),
            jwt_keys: gauge("bellhop_jwt_keys", "JWT verification keys in use."),
            slow_consumers,
            breaker_state,
            broker_live,
            breaker_rejections,
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
