//! The gateway's configuration: one plain struct, defaults in one place, and `validate()`.

use std::net::SocketAddr;
use std::path::PathBuf;
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
    /// TLS on the main port (`SSL_ENABLED`); `None` serves plain `ws`/`http`. The admin port is
    /// always plain HTTP: it is scraped and probed from inside the cluster.
    pub tls: Option<TlsConfig>,
    /// Rate limits, bans and per-user connection caps (see `docs/SECURITY.md`).
    pub rate_limits: crate::RateLimitConfig,
    /// Origins allowed to open WebSocket connections (`ALLOWED_ORIGINS`, comma separated, e.g.
    /// `https://app.hotel.example`); empty allows any. Browsers send `Origin`; other clients
    /// usually do not, and a request without one is allowed.
    pub allowed_origins: Vec<String>,
}

/// TLS termination on the main port: where the certificate and key are, which protocol versions
/// are offered, and how often the files are re-read (see `docs/SECURITY.md`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsConfig {
    /// PEM file with the certificate chain, the server's own certificate first (`SSL_CERT_PATH`).
    pub cert_path: PathBuf,
    /// PEM file with the private key, PKCS#8, PKCS#1 (RSA) or SEC1 (EC) (`SSL_KEY_PATH`).
    pub key_path: PathBuf,
    /// Oldest protocol version offered (`SSL_MIN_VERSION`, 1.2). Nothing older than TLS 1.2 can be
    /// configured.
    pub min_version: TlsVersion,
    /// How often both files are re-read to pick up a rotated certificate
    /// (`SSL_RELOAD_INTERVAL_SECONDS`, 10 s); `None` reads them once, at startup.
    pub reload_interval: Option<Duration>,
    /// Longest a client may take to complete the TLS handshake before its connection is dropped
    /// (10 s), so a slow or hostile handshake holds nothing but its own task for long.
    pub handshake_timeout: Duration,
}

/// A TLS protocol version that may be the oldest one offered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3 (the default: some hotel systems and older devices speak only 1.2).
    Tls12,
    /// TLS 1.3 only.
    Tls13,
}

impl TlsConfig {
    /// TLS with the certificate and key at these paths, and the defaults for everything else.
    pub fn new(cert_path: impl Into<PathBuf>, key_path: impl Into<PathBuf>) -> Self {
        TlsConfig {
            cert_path: cert_path.into(),
            key_path: key_path.into(),
            min_version: TlsVersion::Tls12,
            reload_interval: Some(Duration::from_secs(10)),
            handshake_timeout: Duration::from_secs(10),
        }
    }
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
            tls: None,
            rate_limits: crate::RateLimitConfig::default(),
            allowed_origins: Vec::new(),
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
        self.rate_limits.validate()?;
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
        if let Some(tls) = &self.tls {
            if tls.cert_path.as_os_str().is_empty() {
                return Err("SSL_CERT_PATH must be set when SSL_ENABLED=true".into());
            }
            if tls.key_path.as_os_str().is_empty() {
                return Err("SSL_KEY_PATH must be set when SSL_ENABLED=true".into());
            }
            if tls.reload_interval.is_some_and(|i| i.is_zero()) {
                return Err(
                    "SSL_RELOAD_INTERVAL_SECONDS must be at least 1 (or 0 for never)".into(),
                );
            }
            if tls.handshake_timeout.is_zero() {
                return Err("the TLS handshake timeout must not be zero".into());
            }
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

    #[test]
    fn tls_settings_are_checked() {
        let mut c = GatewayConfig::new("s");
        c.tls = Some(TlsConfig::new("/tls/tls.crt", "/tls/tls.key"));
        assert!(c.validate().is_ok());
        c.tls = Some(TlsConfig::new("", "/tls/tls.key"));
        assert!(c.validate().unwrap_err().contains("SSL_CERT_PATH"));
        c.tls = Some(TlsConfig::new("/tls/tls.crt", ""));
        assert!(c.validate().unwrap_err().contains("SSL_KEY_PATH"));
        let mut tls = TlsConfig::new("/tls/tls.crt", "/tls/tls.key");
        tls.reload_interval = Some(Duration::ZERO);
        c.tls = Some(tls);
        assert!(c
            .validate()
            .unwrap_err()
            .contains("SSL_RELOAD_INTERVAL_SECONDS"));
    }
}
