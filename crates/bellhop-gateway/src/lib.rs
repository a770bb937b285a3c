//! The Bellhop edge: the listener (with TLS termination), WebSocket sessions, JWT
//! authentication, the channel policy, each connection's outbound queue, the node's local fan-out
//! hub, the HTTP API, metrics, health, and graceful drain.
//!
//! Architecture invariant: this is the only crate that knows hyper and the only one that serves
//! WebSockets and TLS (docs/ARCHITECTURE.md); it never touches a storage backend except through
//! the dispatcher (its `Dispatcher`, `BanStore` and request store).
//!
//! ```no_run
//! # async fn demo() -> Result<(), bellhop_gateway::BindError> {
//! use std::sync::Arc;
//! use bellhop_dispatcher::{Dispatcher, DispatcherConfig, MemoryBroker, MemoryConfig};
//! use bellhop_gateway::{Gateway, GatewayConfig};
//!
//! let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
//! let dispatcher = Arc::new(Dispatcher::new(broker.clone(), DispatcherConfig::default()));
//! // The broker is also where bans are shared (the embedded one: with nobody).
//! let gateway = Gateway::bind(GatewayConfig::new("secret"), dispatcher, broker).await?;
//! println!("listening on {}", gateway.local_addr());
//! gateway.shutdown().await; // what SIGTERM does
//! # Ok(()) }
//! ```

mod api;
pub mod auth;
mod config;
mod connections;
mod edge;
mod fairness;
mod frame;
mod http;
mod hub;
mod limits;
mod metrics;
mod node;
pub mod outbound;
pub mod policy;
mod server;
mod session;
pub mod tls;
mod upgrade;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bellhop_dispatcher::requests::Requests;
use bellhop_dispatcher::{BanStore, Dispatcher};
use bellhop_protocol::close;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[cfg(feature = "autobahn")]
#[doc(hidden)]
pub use config::SessionMode;
pub use config::{
    AuthConfig, EdgeConfig, GatewayConfig, HotelPolicy, JwtAlgorithm, KeySource, OutboundConfig,
    TlsConfig, TlsVersion, DEFAULT_DEPARTMENTS, MAX_LEEWAY,
};
pub use ipnet::IpNet;
pub use limits::RateLimitConfig;
pub use metrics::Metrics;

use node::Node;
use tls::{CertStore, Reload, TlsError};

/// Why a gateway could not start. Each message is complete by itself (the cause is part of it,
/// not a separate `source`), so the binary prints one line.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A setting that cannot work (the message names it).
    #[error("{0}")]
    Config(String),
    /// A port could not be bound (in use, no permission).
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// What the OS said.
        error: std::io::Error,
    },
    /// The TLS certificate or key cannot be used (the message names the file).
    #[error("cannot use the TLS certificate: {0}")]
    Tls(TlsError),
}

impl From<TlsError> for BindError {
    fn from(e: TlsError) -> Self {
        BindError::Tls(e)
    }
}

/// A running gateway node.
#[derive(Debug)]
pub struct Gateway {
    /// Shared state.
    node: Arc<Node>,
    /// The main port's actual address (port 0 resolved).
    local_addr: SocketAddr,
    /// The admin port's actual address.
    admin_addr: Option<SocketAddr>,
    /// The served TLS certificate, when the main port speaks TLS.
    cert_store: Option<Arc<CertStore>>,
    /// Tells the main accept loop to stop.
    stop_main: watch::Sender<bool>,
    /// Tells the admin accept loop to stop.
    stop_admin: watch::Sender<bool>,
    /// The accept loops.
    tasks: Vec<JoinHandle<()>>,
    /// Limits housekeeping and shared-ban listening: endless loops, aborted at shutdown.
    housekeeping: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Validates the configuration, loads the TLS certificate (if enabled), binds both ports and
    /// starts serving.
    /// `bans`: where the node shares the client addresses it bans with the other nodes (the
    /// broker's backend: [`bellhop_dispatcher::RedisBroker`], or the embedded broker, which shares
    /// with nobody).
    /// Service requests live in this node's memory: see [`Gateway::bind_with_requests`].
    pub async fn bind(
        config: GatewayConfig,
        dispatcher: Arc<Dispatcher>,
        bans: Arc<dyn BanStore>,
    ) -> Result<Gateway, BindError> {
        config.validate().map_err(BindError::Config)?;
        let requests = node::default_requests(&config, &dispatcher);
        Gateway::bind_with_requests(config, dispatcher, requests, bans).await
    }

    /// [`Gateway::bind`] with the service request workflow given (its store shared with the
    /// other nodes, its settings and rules).
    pub async fn bind_with_requests(
        config: GatewayConfig,
        dispatcher: Arc<Dispatcher>,
        requests: Arc<Requests>,
        bans: Arc<dyn BanStore>,
    ) -> Result<Gateway, BindError> {
        config.validate().map_err(BindError::Config)?;
        let verifier =
            auth::Verifier::new(&config.auth).map_err(|e| BindError::Config(e.to_string()))?;
        let verifier = Arc::new(verifier);
        let node = Arc::new(Node::with_requests(
            config,
            dispatcher,
            verifier.clone(),
            requests,
            bans,
        ));
        let config = &node.config();
        // The certificate first: a bad file should stop the node before it takes its ports.
        let tls = match &config.tls {
            Some(tls) => {
                let metrics = node.metrics().register_tls();
                let store = Arc::new(CertStore::load(tls, metrics.clone()).await?);
                let acceptor = tls::acceptor(store.clone(), tls.min_version)
                    .map_err(|e| BindError::Config(format!("TLS: {e}")))?;
                let terminator = tls::Terminator::new(acceptor, tls.handshake_timeout, metrics);
                Some((store, terminator, tls.reload_interval))
            }
            None => None,
        };
        let listen = |addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|error| BindError::Listen { addr, error })
        };
        let listener = listen(config.listen).await?;
        let local_addr = listener.local_addr().map_err(|error| BindError::Listen {
            addr: config.listen,
            error,
        })?;
        let admin = match config.admin_listen {
            Some(addr) => {
                let listener = listen(addr).await?;
                let bound = listener
                    .local_addr()
                    .map_err(|error| BindError::Listen { addr, error })?;
                Some((listener, bound))
            }
            None => None,
        };
        let admin_addr = admin.as_ref().map(|(_, addr)| *addr);
        let http = server::HttpSettings::of(config);
        let (stop_main, main_rx) = watch::channel(false);
        let (stop_admin, admin_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let (cert_store, terminator) = match tls {
            Some((store, terminator, reload_interval)) => {
                if let Some(interval) = reload_interval {
                    // Stops with the main listener: after that, no handshake needs a certificate.
                    tasks.push(tokio::spawn(store.clone().poll(interval, main_rx.clone())));
                }
                (Some(store), Some(terminator))
            }
            None => (None, None),
        };
        // Limits and fairness housekeeping, and the bans other nodes share (read at start and every sweep, so
        // one missed while the broker was away still arrives).
        let mut housekeeping = Vec::new();
        let n = node.clone();
        housekeeping.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(limits::SWEEP_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                n.limits().sweep();
                n.fairness().sweep(tokio::time::Instant::now());
                n.sync_bans().await;
            }
        }));
        if let Some(mut feed) = node.ban_feed() {
            let n = node.clone();
            housekeeping.push(tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    match feed.recv().await {
                        Ok((subject, left)) => n.apply_ban(&subject, left),
                        Err(RecvError::Lagged(_)) => n.sync_bans().await,
                        Err(RecvError::Closed) => return,
                    }
                }
            }));
        }
        let edge = edge::Edge::new(node.clone());
        tasks.push(tokio::spawn(server::accept_loop(
            listener,
            main_rx,
            http,
            terminator,
            Some(edge.clone()),
            move |req, remote| server::main_handler(edge.clone(), req, remote),
        )));
        if let Some((admin, _)) = admin {
            // Plain HTTP on purpose: Prometheus and the kubelet's probes reach it from inside the
            // cluster, and it serves nothing a client could use (see docs/SECURITY.md).
            let n = node.clone();
            tasks.push(tokio::spawn(server::accept_loop(
                admin,
                admin_rx,
                http,
                None,
                None,
                move |req, _| server::admin_handler(n.clone(), req),
            )));
        }
        if verifier.key_file().is_some() {
            tasks.push(tokio::spawn(auth::watch_keys(
                Arc::downgrade(&verifier),
                node.metrics().clone(),
                node.config().auth.keys_reload_interval,
                stop_admin.subscribe(),
            )));
        }
        tracing::info!(
            algorithm = %verifier.algorithm(),
            source = verifier.key_setting(),
            path = %verifier.key_file().map(|p| p.display().to_string()).unwrap_or_default(),
            count = verifier.key_count(),
            "token verification"
        );
        let admin = admin_addr.map_or_else(|| "disabled".to_string(), |a| a.to_string());
        let scheme = if cert_store.is_some() { "tls" } else { "plain" };
        tracing::info!(%local_addr, admin_addr = %admin, node = %node.config().node_id, scheme, "gateway listening");
        Ok(Gateway {
            node,
            local_addr,
            admin_addr,
            cert_store,
            stop_main,
            stop_admin,
            tasks,
            housekeeping,
        })
    }

    /// Re-reads the TLS certificate and key now, as the periodic poll does (`None` without TLS).
    /// A changed, valid pair is served to every new handshake; a bad one is logged, counted and
    /// ignored.
    pub async fn reload_tls(&self) -> Option<Reload> {
        match &self.cert_store {
            Some(store) => Some(store.reload().await),
            None => None,
        }
    }

    /// The address WebSocket clients and the HTTP API connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin address (`/metrics`, `/healthz`, `/readyz`), if enabled.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Metrics {
        self.node.metrics()
    }

    /// Open WebSocket connections.
    pub fn connection_count(&self) -> usize {
        self.node.connections().len()
    }

    /// Returns once at most `n` WebSocket connections are open: each connection's end (after
    /// its presence leave) wakes it. Callers bound it with a timeout.
    pub async fn wait_connections_at_most(&self, n: usize) {
        self.node.connections().wait_at_most(n).await
    }

    /// Graceful drain: readiness turns false, the listener stops accepting, connected clients are
    /// closed with 1012 (reconnect elsewhere and resume) spread evenly over the drain period, and
    /// this returns once they are gone (or the period plus the write timeout has passed).
    pub async fn shutdown(self) {
        let node = self.node.clone();
        node.stop_ready();
        let _ = self.stop_main.send(true);
        let connections: Vec<_> = node.connections().outbounds();
        let period = node.config().drain_period;
        tracing::info!(connections = connections.len(), ?period, "draining");
        let start = Instant::now();
        for (at, outbound) in drain_schedule(connections.len(), period)
            .into_iter()
            .zip(connections)
        {
            tokio::time::sleep_until(start + at).await;
            outbound.close(
                close::RESTART,
                "node restarting: reconnect and resume from your offsets",
            );
        }
        let deadline = start + period + node.config().write_timeout * 2;
        if tokio::time::timeout_at(deadline, self.wait_connections_at_most(0))
            .await
            .is_err()
        {
            tracing::warn!(left = node.connections().len(), "drain deadline passed");
        }
        let _ = self.stop_admin.send(true);
        for task in self.housekeeping {
            task.abort();
        }
        for task in self.tasks {
            let _ = task.await;
        }
        tracing::info!("drained");
    }
}

/// When each of `n` connections is closed during a drain of length `period`: evenly spread,
/// the first at once, so a fleet of reconnecting clients does not arrive at another node at the
/// same instant.
pub fn drain_schedule(n: usize, period: Duration) -> Vec<Duration> {
    (0..n)
        .map(|i| period.mul_f64(i as f64 / n as f64))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drain_closes_are_spread_evenly_over_the_period() {
        let s = drain_schedule(4, Duration::from_secs(8));
        assert_eq!(s, [0, 2, 4, 6].map(Duration::from_secs));
        assert!(drain_schedule(0, Duration::from_secs(8)).is_empty());
        assert_eq!(drain_schedule(1, Duration::from_secs(8)), [Duration::ZERO]);
    }

    #[test]
    fn the_http_api_does_not_depend_on_the_listener() {
        // `server` routes requests to `api`; what both need lives in `http`, so the dependency
        // goes one way only (issue 10, E).
        let api = include_str!("api.rs");
        assert!(!api.contains("crate::server"), "api.rs uses crate::server");
        let http = include_str!("http.rs");
        assert!(!http.contains("crate::server") && !http.contains("crate::api"));
    }
}
