//! The gateway's configuration: one plain struct, defaults in one place, and `validate()`.

use std::net::SocketAddr;
use std::time::Duration;

use bellhop_protocol::validate::Limits;

/// Everything a gateway node needs to know. Built by the binary from the environment, a TOML file
/// and flags (see `docs/CONFIGURATION.md`); every field has a documented default.
#[derive(Clone, Debug)]
pub struct GatewayConfig {
    /// Where WebSocket clients and the HTTP API connect (`BIND_ADDR`:`WS_PORT`, 0.0.0.0:3001).
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`METRICS_PORT`, 9090); `None`
    /// when `ENABLE_METRICS=false`.
    pub admin_listen: Option<SocketAddr>,
    /// The WebSocket path (`WS_PATH`, `/ws`).
    pub ws_path: String,
    /// This node's name in `welcome` frames, logs and metrics (`NODE_ID`, the host name).
    pub node_id: String,
    /// Most concurrent WebSocket connections; beyond it upgrades get 503 (`MAX_CONNECTIONS`,
    /// 10,000).
    pub max_connections: usize,
    /// Token verification.
    pub auth: AuthConfig,
    /// The server pings every connection this often (30 s).
    pub heartbeat_interval: Duration,
    /// A connection that sent nothing, not even a pong, for this long is closed (60 s).
    pub heartbeat_timeout: Duration,
    /// Largest WebSocket frame or message accepted; larger ones close the connection with 1009
    /// before they are buffered (64 KiB).
    pub max_frame_bytes: usize,
    /// Content limits (text length, event names, history limits).
    pub limits: Limits,
    /// Most channels one connection may subscribe to (256).
    pub max_subscriptions_per_connection: usize,
    /// Bounds of each connection's outbound queue.
    pub outbound: OutboundConfig,
    /// A write to a client that does not complete in this time drops the connection (10 s).
    pub write_timeout: Duration,
    /// On SIGTERM, connections are closed with 1012 spread over this period (10 s).
    pub drain_period: Duration,
    /// Slowest time allowed to send the HTTP request head (slowloris guard, 10 s).
    pub header_read_timeout: Duration,
    /// Largest HTTP API request body (64 KiB).
    pub max_body_bytes: usize,
    /// Test-only, and only in builds with the `autobahn` feature (never a product build):
    /// sessions send no `welcome` and echo every text and binary message back unchanged instead
    /// of decoding it as a protocol frame, so the Autobahn testsuite can check the WebSocket
    /// layer (`tests/autobahn/`). Everything else (listener, upgrade, auth, limits, outbound
    /// queue, close codes) stays the product's.
    #[cfg(feature = "autobahn")]
    #[doc(hidden)]
    pub session_mode: SessionMode,
}

/// What a session does with the data messages it reads (test builds only).
#[cfg(feature = "autobahn")]
#[doc(hidden)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SessionMode {
    /// Decode protocol frames and answer them: the product.
    #[default]
    Protocol,
    /// Echo each message back (conformance testing only).
    Echo,
}

/// How tokens are checked.
#[derive(Clone)]
pub struct AuthConfig {
    /// The HS256 secret (`JWT_SECRET`).
    pub secret: Vec<u8>,
    /// Clock skew tolerated on `exp` and `nbf` (30 s).
    pub leeway: Duration,
    /// A connection that did not authenticate within this time is closed with 4001 (5 s).
    pub auth_timeout: Duration,
}

impl std::fmt::Debug for AuthConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthConfig")
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("leeway", &self.leeway)
            .field("auth_timeout", &self.auth_timeout)
            .finish()
    }
}

/// Bounds of one connection's outbound queue. A client whose queue is full when a message must
/// be queued is disconnected with close code 4008 (resume from your offsets).
#[derive(Clone, Debug)]
pub struct OutboundConfig {
    /// Most frames queued (1,024).
    pub max_frames: usize,
    /// Most bytes queued (4 MiB; the bytes of one message are shared by every connection).
    pub max_bytes: usize,
}

impl Default for OutboundConfig {
    fn default() -> Self {
        OutboundConfig {
            max_frames: 1024,
            max_bytes: 4 << 20,
        }
    }
}

impl GatewayConfig {
    /// Defaults for everything but the secret.
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 3001)),
            admin_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
            ws_path: "/ws".into(),
            node_id: "bellhop-1".into(),
            max_connections: 10_000,
            auth: AuthConfig {
                secret: secret.into(),
                leeway: Duration::from_secs(30),
                auth_timeout: Duration::from_secs(5),
            },
            heartbeat_interval: Duration::from_secs(30),
            heartbeat_timeout: Duration::from_secs(60),
            max_frame_bytes: 64 * 1024,
            limits: Limits::default(),
            max_subscriptions_per_connection: 256,
            outbound: OutboundConfig::default(),
            write_timeout: Duration::from_secs(10),
            drain_period: Duration::from_secs(10),
            header_read_timeout: Duration::from_secs(10),
            max_body_bytes: 64 * 1024,
            #[cfg(feature = "autobahn")]
            session_mode: SessionMode::Protocol,
        }
    }

    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !self.ws_path.starts_with('/') || self.ws_path.starts_with("/api/") {
            return Err(format!(
                "WS_PATH must start with '/' and not be under /api/: {:?}",
                self.ws_path
            ));
        }
        if self.max_connections == 0 {
            return Err("MAX_CONNECTIONS must be at least 1".into());
        }
        if self.auth.secret.is_empty() {
            return Err("JWT_SECRET must not be empty".into());
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_timeout <= self.heartbeat_interval {
            return Err(
                "HEARTBEAT_SECONDS must be at least 1 (the timeout is twice the interval)".into(),
            );
        }
        if self.max_frame_bytes < 1024 {
            return Err("the maximum frame size must be at least 1024 bytes".into());
        }
        if self.outbound.max_frames < 16 || self.outbound.max_bytes < self.max_frame_bytes {
            return Err(
                "the outbound queue must hold at least 16 frames and one maximum-size frame".into(),
            );
        }
        if self.auth.auth_timeout.is_zero() {
            return Err("AUTH_TIMEOUT_SECONDS must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_nonsense_is_named() {
        assert!(GatewayConfig::new("s").validate().is_ok());
        let mut c = GatewayConfig::new("s");
        c.ws_path = "ws".into();
        assert!(c.validate().unwrap_err().contains("WS_PATH"));
        let mut c = GatewayConfig::new("s");
        c.max_connections = 0;
        assert!(c.validate().unwrap_err().contains("MAX_CONNECTIONS"));
        assert!(GatewayConfig::new("")
            .validate()
            .unwrap_err()
            .contains("JWT_SECRET"));
    }
}
