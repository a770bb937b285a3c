//! The node's Prometheus metrics. One registry per node, so several nodes in one test process do
//! not share counters.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every metric a node exports on `/metrics`.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// The registry that `/metrics` renders.
    registry: Registry,
    /// Open WebSocket connections (authenticated or not).
    pub connections: IntGauge,
    /// Connections on the main port accepted and not yet upgraded to a WebSocket or closed:
    /// TLS handshakes, request heads being read, HTTP API connections.
    pub pending_connections: IntGauge,
    /// Connections refused before or at the upgrade, by reason (`capacity`, `unauthorized`,
    /// `bad_request`, `draining`, `origin`, `rate_limited`, `pending`).
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
    /// WebSocket connections opened (upgraded), for connects per second.
    pub connections_opened: IntCounter,
    /// Subscribes with `since`, by whether the replay was complete (`recovered`).
    pub resumes: IntCounterVec,
    /// Publishes answered with an earlier ack because they repeated its idempotency key.
    pub idempotent_repeats: IntCounter,
    /// Times the dispatcher's worker died and was restarted (read from the dispatcher).
    pub worker_restarts: IntGauge,
    /// Requests refused by a rate limit, by what was limited (`connection`, `banned`, `frame`,
    /// `publish`, `user_connections`) and connections closed for flooding (`flood_close`).
    pub rate_limited: IntCounterVec,
    /// Client addresses banned by this node (a ban announced by another node is not counted).
    pub bans: IntCounter,
    /// Key or JWKS file reloads, by result: `ok` (new keys in use) or `error` (a changed file
    /// refused; the previous keys stay in use).
    pub jwt_key_reloads: IntCounterVec,
    /// Verification keys in use (1 for a secret or a PEM key, the usable keys of a JWKS).
    pub jwt_keys: IntGauge,
    /// 1 while `/readyz` answers 200, 0 once draining has begun (the admin port keeps serving
    /// `/metrics` until the process exits, so a node stuck unready can be alerted on).
    pub ready: IntGauge,
    /// The configured `MAX_CONNECTIONS`, so dashboards and alerts can compare
    /// `bellhop_connections` with it.
    pub max_connections: IntGauge,
    /// Service requests opened through this node that nobody has answered yet, by department
    /// and priority (a request answered through another node is subtracted there: sum over
    /// nodes for the cluster's count).
    pub requests_open: IntGaugeVec,
    /// Time from a request's opening to its first answer (acknowledged, assigned, worked on,
    /// resolved or cancelled), by department.
    pub request_acknowledge_seconds: HistogramVec,
    /// `ESCALATION`s this node published, by level.
    pub escalations: IntCounterVec,
}

impl bellhop_dispatcher::requests::RequestObserver for Metrics {
    fn opened(&self, r: &bellhop_dispatcher::requests::ServiceRequest) {
        self.requests_open
            .with_label_values(&[r.department.as_str(), r.priority.as_str()])
            .inc();
    }

    fn answered(
        &self,
        r: &bellhop_dispatcher::requests::ServiceRequest,
        after: std::time::Duration,
    ) {
        self.requests_open
            .with_label_values(&[r.department.as_str(), r.priority.as_str()])
            .dec();
        self.request_acknowledge_seconds
            .with_label_values(&[r.department.as_str()])
            .observe(after.as_secs_f64());
    }

    fn escalated(&self, _r: &bellhop_dispatcher::requests::ServiceRequest, level: u32) {
        self.escalations
            .with_label_values(&[level.to_string().as_str()])
            .inc();
    }
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
        let requests_open = IntGaugeVec::new(
            Opts::new(
                "bellhop_requests_open",
                "Service requests opened through this node and not answered yet.",
            ),
            &["department", "priority"],
        )
        .expect("valid metric name");
        registry
            .register(Box::new(requests_open.clone()))
            .expect("unique metric");
        let request_acknowledge_seconds = HistogramVec::new(
            HistogramOpts::new(
                "bellhop_request_acknowledge_seconds",
                "Service request opened to first answered.",
            )
            .buckets(vec![
                5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 900.0, 1800.0, 3600.0,
            ]),
            &["department"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(request_acknowledge_seconds.clone()))
            .expect("unique metric");
        Metrics {
            connections: gauge("bellhop_connections", "Open WebSocket connections."),
            pending_connections: gauge(
                "bellhop_pending_connections",
                "Main-port connections accepted and not yet upgraded or closed.",
            ),
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
            rate_limited: counter_vec(
                "bellhop_rate_limited_total",
                "Requests refused by a rate limit, by what was limited.",
                &["what"],
            ),
            connections_opened: {
                let c = IntCounter::new(
                    "bellhop_connections_opened_total",
                    "WebSocket connections opened (upgraded) on this node.",
                )
                .expect("valid metric name");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            resumes: {
                let c = counter_vec(
                    "bellhop_resumes_total",
                    "Subscribes with since (resumes), by whether nothing was missing (recovered).",
                    &["recovered"],
                );
                // Both series exist from the start, so a dashboard shows 0 rather than nothing.
                c.with_label_values(&["true"]);
                c.with_label_values(&["false"]);
                c
            },
            idempotent_repeats: {
                let c = IntCounter::new(
                    "bellhop_idempotent_repeats_total",
                    "Publishes that repeated an idempotency key: answered with the original ack, nothing stored.",
                )
                .expect("valid metric name");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            worker_restarts: {
                let g = IntGauge::new(
                    "bellhop_dispatcher_worker_restarts",
                    "Times the dispatcher's worker task died and was restarted since the node started.",
                )
                .expect("valid metric name");
                registry
                    .register(Box::new(g.clone()))
                    .expect("unique metric");
                g
            },
            bans: {
                let c = IntCounter::new(
                    "bellhop_bans_total",
                    "Client addresses banned by this node for repeatedly exceeding the connection rate.",
                )
                .expect("valid metric name");
                registry
                    .register(Box::new(c.clone()))
                    .expect("unique metric");
                c
            },
            jwt_key_reloads: counter_vec(
                "bellhop_jwt_key_reloads_total",
                "JWT key file reloads, by result (ok, error).",
                &["result"],
            ),
            jwt_keys: gauge("bellhop_jwt_keys", "JWT verification keys in use."),
            max_connections: gauge(
                "bellhop_connections_max",
                "MAX_CONNECTIONS: most open WebSocket connections this node accepts.",
            ),
            ready: gauge(
                "bellhop_ready",
                "1 while the node is ready for new connections (/readyz 200), 0 while draining.",
            ),
            slow_consumers,
            breaker_state,
            broker_live,
            breaker_rejections,
            requests_open,
            request_acknowledge_seconds,
            escalations: counter_vec(
                "bellhop_escalations_total",
                "ESCALATION events published, by level.",
                &["level"],
            ),
            registry,
        }
    }

    /// Registers the TLS metrics. Called only when the main port serves TLS, so a node without
    /// TLS exports no certificate expiry that an alert could mistake for an expired certificate.
    pub(crate) fn register_tls(&self) -> TlsMetrics {
        let handshake_failures = IntCounterVec::new(
            Opts::new(
                "bellhop_tls_handshake_failures_total",
                "TLS handshakes on the main port that failed, by reason.",
            ),
            &["reason"],
        )
        .expect("valid metric name");
        let reloads = IntCounterVec::new(
            Opts::new(
                "bellhop_tls_certificate_reloads_total",
                "Changed certificate or key files read from disk, by result (success: now served; failure: rejected, the previous certificate is kept).",
            ),
            &["result"],
        )
        .expect("valid metric name");
        let expiry = IntGauge::new(
            "bellhop_tls_certificate_expiry_timestamp_seconds",
            "Expiry (notAfter, Unix seconds) of the certificate the main port serves.",
        )
        .expect("valid metric name");
        for metric in [
            Box::new(handshake_failures.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(reloads.clone()),
            Box::new(expiry.clone()),
        ] {
            // Called once per node, so nothing collides; were it called twice, the series would
            // already exist, which is what the caller wants.
            let _ = self.registry.register(metric);
        }
        // Both results exist from the start, so `increase()` sees the first failure.
        for result in ["success", "failure"] {
            reloads.with_label_values(&[result]);
        }
        TlsMetrics {
            handshake_failures,
            reloads,
            expiry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// The metrics of TLS termination (registered only when TLS is on).
#[derive(Debug, Clone)]
pub(crate) struct TlsMetrics {
    /// Failed handshakes, by reason: `timeout`, `incompatible` (no common version, cipher suite
    /// or ALPN protocol: e.g. a TLS 1.1 client), `malformed` (not TLS at all: plain HTTP on the
    /// TLS port), `peer_alert` (the client refused us, e.g. it does not trust the certificate),
    /// `closed` (the client went away), `other`.
    pub(crate) handshake_failures: IntCounterVec,
    /// Reloads of changed files, by result (`success`, `failure`).
    pub(crate) reloads: IntCounterVec,
    /// The served certificate's notAfter in Unix seconds, for expiry alerts.
    pub(crate) expiry: IntGauge,
}
