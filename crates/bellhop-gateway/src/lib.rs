//! The Bellhop edge: the listener, WebSocket sessions, JWT authentication, the channel policy,
//! each connection's outbound queue, the node's local fan-out hub, the HTTP API, metrics,
//! health, and graceful drain.
//!
//! Architecture invariant: this is the only crate that knows hyper and tungstenite; it never
//! touches a storage backend except through the dispatcher.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use std::sync::Arc;
//! use bellhop_dispatcher::{Dispatcher, DispatcherConfig, MemoryBroker, MemoryConfig};
//! use bellhop_gateway::{Gateway, GatewayConfig};
//!
//! let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
//! let dispatcher = Arc::new(Dispatcher::new(broker, DispatcherConfig::default()));
//! let gateway = Gateway::bind(GatewayConfig::new("secret"), dispatcher).await?;
//! println!("listening on {}", gateway.local_addr());
//! gateway.shutdown().await; // what SIGTERM does
//! # Ok(()) }
//! ```

mod api;
pub mod auth;
mod config;
mod hub;
mod metrics;
mod node;
pub mod outbound;
pub mod policy;
mod server;
mod session;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bellhop_dispatcher::Dispatcher;
use bellhop_protocol::close;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[cfg(feature = "autobahn")]
#[doc(hidden)]
pub use config::SessionMode;
pub use config::{AuthConfig, GatewayConfig, OutboundConfig};
pub use metrics::Metrics;

use node::Node;

/// A running gateway node.
#[derive(Debug)]
pub struct Gateway {
    /// Shared state.
    node: Arc<Node>,
    /// The main port's actual address (port 0 resolved).
    local_addr: SocketAddr,
    /// The admin port's actual address.
    admin_addr: Option<SocketAddr>,
    /// Tells the main accept loop to stop.
    stop_main: watch::Sender<bool>,
    /// Tells the admin accept loop to stop.
    stop_admin: watch::Sender<bool>,
    /// The accept loops.
    tasks: Vec<JoinHandle<()>>,
}

impl Gateway {
    /// Validates the configuration, binds both ports and starts serving.
    pub async fn bind(
        config: GatewayConfig,
        dispatcher: Arc<Dispatcher>,
    ) -> std::io::Result<Gateway> {
        config
            .validate()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let listener = TcpListener::bind(config.listen).await?;
        let local_addr = listener.local_addr()?;
        let admin = match config.admin_listen {
            Some(addr) => Some(TcpListener::bind(addr).await?),
            None => None,
        };
        let admin_addr = admin.as_ref().map(|l| l.local_addr()).transpose()?;
        let timeout = config.header_read_timeout;
        let node = Arc::new(Node::new(config, dispatcher));
        let (stop_main, main_rx) = watch::channel(false);
        let (stop_admin, admin_rx) = watch::channel(false);
        let mut tasks = Vec::new();
        let n = node.clone();
        tasks.push(tokio::spawn(server::accept_loop(
            listener,
            main_rx,
            timeout,
            move |req, remote| server::main_handler(n.clone(), req, remote),
        )));
        if let Some(admin) = admin {
            let n = node.clone();
            tasks.push(tokio::spawn(server::accept_loop(
                admin,
                admin_rx,
                timeout,
                move |req, _| server::admin_handler(n.clone(), req),
            )));
        }
        let admin = admin_addr.map_or_else(|| "disabled".to_string(), |a| a.to_string());
        tracing::info!(%local_addr, admin_addr = %admin, node = %node.config.node_id, "gateway listening");
        Ok(Gateway {
            node,
            local_addr,
            admin_addr,
            stop_main,
            stop_admin,
            tasks,
        })
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
        &self.node.metrics
    }

    /// Open WebSocket connections.
    pub fn connection_count(&self) -> usize {
        self.node.connections.lock().len()
    }

    /// Graceful drain: readiness turns false, the listener stops accepting, connected clients are
    /// closed with 1012 (reconnect elsewhere and resume) spread evenly over the drain period, and
    /// this returns once they are gone (or the period plus the write timeout has passed).
    pub async fn shutdown(self) {
        let node = self.node.clone();
        node.ready.store(false, Ordering::Release);
        let _ = self.stop_main.send(true);
        let connections: Vec<_> = node.connections.lock().values().cloned().collect();
        let period = node.config.drain_period;
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
        let deadline = start + period + node.config.write_timeout * 2;
        loop {
            let ended = node.connection_ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if node.connections.lock().is_empty() {
                break;
            }
            if tokio::time::timeout_at(deadline, ended).await.is_err() {
                tracing::warn!(
                    left = node.connections.lock().len(),
                    "drain deadline passed"
                );
                break;
            }
        }
        let _ = self.stop_admin.send(true);
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
}
