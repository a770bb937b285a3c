//! The gateway's configuration: one plain struct, defaults in one place, and `validate()`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
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
    /// What a connection may cost before it is a WebSocket session: pending connections, request
    /// heads and bodies, request deadlines, and CORS for the HTTP API.
    pub edge: EdgeConfig,
    /// TLS on the main port (`SSL_ENABLED`); `None` serves plain `ws`/`http`. The admin port is
    /// always plain HTTP: it is scraped and probed from inside the cluster.
    pub tls: Option<TlsConfig>,
    /// Rate limits, bans and per-user connection caps (see `docs/SECURITY.md`).
    pub rate_limits: crate::RateLimitConfig,
    /// Origins allowed to open WebSocket connections (`ALLOWED_ORIGINS`, comma separated, e.g.
    /// `https://app.hotel.example`); empty allows any. Browsers send `Origin`; other clients
    /// usually do not, and a request without one is allowed.
    pub allowed_origins: Vec<String>,
    /// Most bytes of messages in one `history` reply, in their largest encoding (1 MiB); a page
    /// cut short says `more`. At least one largest stored message; a page is also never larger
    /// than the outbound budget.
    pub history_max_bytes: usize,
    /// The property's departments (`DEPARTMENTS`, comma separated): `dept:<name>` outside the
    /// list does not exist, and every request naming it is refused with `bad_request`.
    pub departments: Vec<String>,
    /// The hotel-floor policies that bound what one user makes the node do for others.
    pub hotel: HotelPolicy,
    /// Test-only, and only in builds with the `autobahn` feature (never a product build):
    /// sessions send no `welcome` and echo every text and binary message back unchanged instead
    /// of decoding it as a protocol frame, so the Autobahn testsuite can check the WebSocket
    /// layer (`tests/autobahn/`). Everything else (listener, upgrade, auth, limits, outbound
    /// queue, close codes) stays the product's.
    #[cfg(feature = "autobahn")]
    #[doc(hidden)]
    pub session_mode: SessionMode,
}

/// The departments a property has unless `DEPARTMENTS` says otherwise.
pub const DEFAULT_DEPARTMENTS: &[&str] = &[
    "frontdesk",
    "concierge",
    "housekeeping",
    "laundry",
    "maintenance",
    "engineering",
    "roomservice",
    "kitchen",
    "security",
    "spa",
    "management",
];

/// Limits on what one user's frames cost everyone else (see `docs/SECURITY.md`).
#[derive(Clone, Debug)]
pub struct HotelPolicy {
    /// One `typing` notice per user and channel reaches the others at most this often (2 s);
    /// the rest are dropped on the node where they arrive.
    pub typing_interval: Duration,
    /// Join and leave notices of one user on one channel reach the others at most this often
    /// (2 s); a subscribe/unsubscribe storm is coalesced into the state it ends in.
    pub presence_notice_interval: Duration,
    /// Where a guest's `EMERGENCY_ALERT` may go (`dept:frontdesk`): a guest emergency keeps its
    /// urgent priority, but only to the desk that answers it.
    pub guest_emergency_channel: bellhop_protocol::Channel,
    /// Guest emergencies one guest may raise per window (3 per 10 minutes).
    pub guest_emergencies_per_window: u32,
    /// The window of `guest_emergencies_per_window` (10 minutes).
    pub guest_emergency_window: Duration,
    /// Bytes of payload (in their largest encoding) one user may publish per minute on one node
    /// (`PUBLISH_BYTES_PER_USER_PER_MINUTE`, 1 MiB), beside the count limit: what a user can
    /// make the node store for 24 hours.
    pub publish_bytes_per_user_per_minute: u32,
}

impl Default for HotelPolicy {
    fn default() -> Self {
        HotelPolicy {
            typing_interval: Duration::from_secs(2),
            presence_notice_interval: Duration::from_secs(2),
            guest_emergency_channel: bellhop_protocol::Channel::Dept("frontdesk".into()),
            guest_emergencies_per_window: 3,
            guest_emergency_window: Duration::from_secs(600),
            publish_bytes_per_user_per_minute: 1 << 20,
        }
    }
}

/// Limits of the main port before a connection becomes a WebSocket session (see
/// `docs/SECURITY.md`, "Attacks and limits"). A connection is *pending* from the moment it is
/// accepted until it is upgraded to a WebSocket (then `MAX_CONNECTIONS` counts it) or closed;
/// HTTP API connections stay pending for their whole life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EdgeConfig {
    /// Most pending connections on the port (`MAX_PENDING_CONNECTIONS`, 1,024). At the cap the
    /// node stops accepting until one ends; the kernel's backlog holds the rest.
    pub max_pending: usize,
    /// Most pending connections from one client address (`MAX_PENDING_PER_IP`, 32), checked
    /// when the connection is accepted, before TLS and before any byte is read. Connections from
    /// `TRUSTED_PROXIES` are not capped by address (their clients are told apart by
    /// `X-Forwarded-For`, which is only known after the request head).
    pub max_pending_per_ip: usize,
    /// Largest request head, request line and headers together (`MAX_HEADER_BYTES`, 16 KiB):
    /// larger gets 431 and the connection is closed. The node never buffers more than this (or
    /// 8 KiB, whichever is larger) of an unfinished head.
    pub max_header_bytes: usize,
    /// An HTTP API request body must arrive whole within this time of its head
    /// (`HTTP_BODY_TIMEOUT_SECONDS`, 10 s); otherwise 408 and the connection is closed.
    pub body_timeout: std::time::Duration,
    /// An HTTP API request must be answered within this time of its head, body included
    /// (`HTTP_REQUEST_TIMEOUT_SECONDS`, 30 s); otherwise 503 `unavailable`.
    pub request_timeout: std::time::Duration,
    /// Origins whose browser pages may call the HTTP API (`CORS_ALLOWED_ORIGINS`, comma
    /// separated, none by default; `*` allows any). Separate from `allowed_origins`, which
    /// guards WebSocket upgrades.
    pub cors_allowed_origins: Vec<String>,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        EdgeConfig {
            max_pending: 1024,
            max_pending_per_ip: 32,
            max_header_bytes: 16 * 1024,
            body_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            cors_allowed_origins: Vec::new(),
        }
    }
}

/// Smallest `MAX_HEADER_BYTES`: room for a request line with a `?token=` and the usual headers.
pub(crate) const MIN_HEADER_BYTES: usize = 4 * 1024;
/// Largest `MAX_HEADER_BYTES`.
pub(crate) const MAX_HEADER_BYTES: usize = 1024 * 1024;

impl EdgeConfig {
    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_pending == 0 {
            return Err("MAX_PENDING_CONNECTIONS must be at least 1".into());
        }
        if self.max_pending_per_ip == 0 {
            return Err("MAX_PENDING_PER_IP must be at least 1".into());
        }
        if !(MIN_HEADER_BYTES..=MAX_HEADER_BYTES).contains(&self.max_header_bytes) {
            return Err(format!(
                "MAX_HEADER_BYTES must be between {MIN_HEADER_BYTES} and {MAX_HEADER_BYTES}"
            ));
        }
        if self.body_timeout.is_zero() {
            return Err("HTTP_BODY_TIMEOUT_SECONDS must be at least 1".into());
        }
        if self.request_timeout < self.body_timeout {
            return Err(
                "HTTP_REQUEST_TIMEOUT_SECONDS must be at least HTTP_BODY_TIMEOUT_SECONDS".into(),
            );
        }
        if let Some(bad) = self
            .cors_allowed_origins
            .iter()
            .find(|o| o.as_str() != "*" && !is_origin(o))
        {
            return Err(format!(
                "CORS_ALLOWED_ORIGINS: {bad:?} is not an origin like https://app.hotel.example (scheme://host[:port], no path) or *"
            ));
        }
        Ok(())
    }
}

/// Whether `s` looks like a serialized origin: `http://` or `https://`, a host, perhaps a port,
/// nothing after it.
fn is_origin(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    matches!(scheme, "http" | "https")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '@', ' ', ','])
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

/// The JWS algorithm a node accepts. Exactly one is pinned by configuration: a token whose
/// header names any other (`none`, `HS256` on an RS256 node, ...) is refused before any key is
/// looked at, which is what defeats algorithm confusion.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret (`JWT_SECRET`).
    Hs256,
    /// RSASSA-PKCS1-v1_5 with SHA-256 and an RSA public key (at least 2048 bits).
    Rs256,
    /// ECDSA on P-256 with SHA-256.
    Es256,
}

impl JwtAlgorithm {
    /// The name in a token's header and in `JWT_ALGORITHM`.
    pub fn as_str(self) -> &'static str {
        match self {
            JwtAlgorithm::Hs256 => "HS256",
            JwtAlgorithm::Rs256 => "RS256",
            JwtAlgorithm::Es256 => "ES256",
        }
    }

    /// Parses `HS256`, `RS256` or `ES256`, in any case; `None` for anything else.
    pub fn parse(name: &str) -> Option<JwtAlgorithm> {
        [
            JwtAlgorithm::Hs256,
            JwtAlgorithm::Rs256,
            JwtAlgorithm::Es256,
        ]
        .into_iter()
        .find(|a| a.as_str().eq_ignore_ascii_case(name.trim()))
    }
}

impl std::fmt::Display for JwtAlgorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the keys that verify tokens come from. Exactly one source per node.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// The HS256 secret (`JWT_SECRET`).
    Secret(Vec<u8>),
    /// A PEM public key file (`JWT_PUBLIC_KEY_PATH`): `-----BEGIN PUBLIC KEY-----` (either
    /// algorithm) or `-----BEGIN RSA PUBLIC KEY-----` (RS256). Reloaded when it changes.
    PublicKeyFile(PathBuf),
    /// A JSON Web Key Set file (`JWT_JWKS_PATH`); tokens pick their key by `kid`. Reloaded when
    /// it changes.
    JwksFile(PathBuf),
}

impl KeySource {
    /// The setting that configures this source, for error messages.
    pub fn setting(&self) -> &'static str {
        match self {
            KeySource::Secret(_) => "JWT_SECRET",
            KeySource::PublicKeyFile(_) => "JWT_PUBLIC_KEY_PATH",
            KeySource::JwksFile(_) => "JWT_JWKS_PATH",
        }
    }

    /// The file to watch, for the file sources.
    pub fn path(&self) -> Option<&Path> {
        match self {
            KeySource::Secret(_) => None,
            KeySource::PublicKeyFile(p) | KeySource::JwksFile(p) => Some(p),
        }
    }
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Secret(s) => write!(f, "Secret(<{} bytes>)", s.len()),
            KeySource::PublicKeyFile(p) => f.debug_tuple("PublicKeyFile").field(p).finish(),
            KeySource::JwksFile(p) => f.debug_tuple("JwksFile").field(p).finish(),
        }
    }
}

/// Largest clock-skew leeway accepted (`JWT_LEEWAY_SECONDS`): ten minutes. More would keep
/// expired tokens alive for long, and a leeway larger than the clock would underflow.
pub const MAX_LEEWAY: Duration = Duration::from_secs(600);

/// How tokens are checked.
#[derive(Clone, Debug)]
pub struct AuthConfig {
    /// The one algorithm accepted (`JWT_ALGORITHM`; HS256 by default).
    pub algorithm: JwtAlgorithm,
    /// The verification key(s): a secret for HS256, a key or JWKS file for RS256 and ES256.
    pub keys: KeySource,
    /// When set, tokens must carry exactly this `iss` (`JWT_ISSUER`).
    pub issuer: Option<String>,
    /// When set, tokens must carry this audience in `aud` (`JWT_AUDIENCE`). When unset, a
    /// token's `aud` is not checked.
    pub audience: Option<String>,
    /// Clock skew tolerated on `exp` and `nbf` (`JWT_LEEWAY_SECONDS`, 30 s, at most 600 s).
    pub leeway: Duration,
    /// A connection that did not authenticate within this time is closed with 4001 (5 s).
    pub auth_timeout: Duration,
    /// How often a key or JWKS file is read again to pick up a rotation
    /// (`JWT_KEYS_RELOAD_SECS`, 10 s).
    pub keys_reload_interval: Duration,
}

impl AuthConfig {
    /// HS256 with `secret`, and the defaults for everything else.
    pub fn hs256(secret: impl Into<Vec<u8>>) -> Self {
        AuthConfig {
            algorithm: JwtAlgorithm::Hs256,
            keys: KeySource::Secret(secret.into()),
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(30),
            auth_timeout: Duration::from_secs(5),
            keys_reload_interval: Duration::from_secs(10),
        }
    }

    /// `algorithm` with the keys of `keys`, and the defaults for everything else.
    pub fn with_keys(algorithm: JwtAlgorithm, keys: KeySource) -> Self {
        AuthConfig {
            algorithm,
            keys,
            ..AuthConfig::hs256(Vec::new())
        }
    }

    /// Rejects combinations that cannot work, naming the setting. Does not read key files
    /// (`auth::Verifier::new` does, and reports what is wrong with them).
    pub fn validate(&self) -> Result<(), String> {
        match (&self.keys, self.algorithm) {
            (KeySource::Secret(s), JwtAlgorithm::Hs256) if s.is_empty() => {
                return Err("JWT_SECRET must not be empty".into());
            }
            (KeySource::Secret(_), JwtAlgorithm::Hs256) => {}
            (KeySource::Secret(_), alg) => {
                return Err(format!(
                    "JWT_ALGORITHM={alg} verifies with a public key: set JWT_PUBLIC_KEY_PATH or JWT_JWKS_PATH (and not JWT_SECRET)"
                ));
            }
            (file, JwtAlgorithm::Hs256) => {
                return Err(format!(
                    "{} is set but JWT_ALGORITHM is HS256: set JWT_ALGORITHM=RS256 or ES256 to verify with it",
                    file.setting()
                ));
            }
            (file, _) if file.path().is_some_and(|p| p.as_os_str().is_empty()) => {
                return Err(format!("{} must not be empty", file.setting()));
            }
            _ => {}
        }
        if self.issuer.as_deref() == Some("") {
            return Err("JWT_ISSUER must not be empty when set".into());
        }
        if self.audience.as_deref() == Some("") {
            return Err("JWT_AUDIENCE must not be empty when set".into());
        }
        if self.leeway > MAX_LEEWAY {
            return Err(format!(
                "JWT_LEEWAY_SECONDS must be at most {}",
                MAX_LEEWAY.as_secs()
            ));
        }
        if self.auth_timeout.is_zero() {
            return Err("AUTH_TIMEOUT_SECONDS must be at least 1".into());
        }
        if self.keys_reload_interval.is_zero() {
            return Err("JWT_KEYS_RELOAD_SECS must be at least 1".into());
        }
        Ok(())
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
    /// Defaults for everything but the HS256 secret (see [`AuthConfig`] for public keys).
    pub fn new(secret: impl Into<Vec<u8>>) -> Self {
        GatewayConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 3001)),
            admin_listen: Some(SocketAddr::from(([0, 0, 0, 0], 9090))),
            ws_path: "/ws".into(),
            node_id: "bellhop-1".into(),
            max_connections: 10_000,
            auth: AuthConfig::hs256(secret),
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
            edge: EdgeConfig::default(),
            tls: None,
            rate_limits: crate::RateLimitConfig::default(),
            allowed_origins: Vec::new(),
            history_max_bytes: 1 << 20,
            departments: DEFAULT_DEPARTMENTS.iter().map(|d| d.to_string()).collect(),
            hotel: HotelPolicy::default(),
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
        self.rate_limits.validate()?;
        self.edge.validate()?;
        if self.max_connections == 0 {
            return Err("MAX_CONNECTIONS must be at least 1".into());
        }
        self.auth.validate()?;
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
        // A stored message is at most `max_payload_bytes` plus its envelope's bounded fields.
        let largest_entry = self.limits.max_payload_bytes + 4096;
        if self.history_max_bytes < largest_entry {
            return Err(format!(
                "HISTORY_MAX_BYTES must be at least {largest_entry} (one largest message)"
            ));
        }
        if self.departments.is_empty() {
            return Err("DEPARTMENTS must name at least one department".into());
        }
        if let Some(bad) = self.departments.iter().find(|d| {
            format!("dept:{d}")
                .parse::<bellhop_protocol::Channel>()
                .is_err()
        }) {
            return Err(format!(
                "DEPARTMENTS: {bad:?} is not a department name ([A-Za-z0-9_.-]{{1,64}})"
            ));
        }
        if self.hotel.guest_emergencies_per_window == 0
            || self.hotel.guest_emergency_window.is_zero()
        {
            return Err("the guest emergency limit must allow at least one per window".into());
        }
        if (self.hotel.publish_bytes_per_user_per_minute as usize) < self.limits.max_payload_bytes {
            return Err(format!(
                "PUBLISH_BYTES_PER_USER_PER_MINUTE must allow at least one largest message ({} bytes)",
                self.limits.max_payload_bytes
            ));
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
    fn edge_settings_are_checked() {
        let check = |tweak: fn(&mut EdgeConfig)| {
            let mut c = GatewayConfig::new("s");
            tweak(&mut c.edge);
            c.validate()
        };
        assert!(check(|_| {}).is_ok());
        type Tweak = fn(&mut EdgeConfig);
        let cases: [(Tweak, &str); 7] = [
            (|e| e.max_pending = 0, "MAX_PENDING_CONNECTIONS"),
            (|e| e.max_pending_per_ip = 0, "MAX_PENDING_PER_IP"),
            (|e| e.max_header_bytes = 1000, "MAX_HEADER_BYTES"),
            (|e| e.max_header_bytes = 2 << 20, "MAX_HEADER_BYTES"),
            (
                |e| e.body_timeout = Duration::ZERO,
                "HTTP_BODY_TIMEOUT_SECONDS",
            ),
            (
                |e| e.request_timeout = Duration::from_secs(5),
                "HTTP_REQUEST_TIMEOUT_SECONDS",
            ),
            (
                |e| e.cors_allowed_origins = vec!["https://app.example/path".into()],
                "CORS_ALLOWED_ORIGINS",
            ),
        ];
        for (tweak, name) in cases {
            let err = check(tweak).unwrap_err();
            assert!(err.contains(name), "{name}: {err}");
        }
        assert!(check(|e| e.cors_allowed_origins = vec![
            "*".into(),
            "http://localhost:5173".into(),
            "https://app.hotel.example".into()
        ])
        .is_ok());
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

    #[test]
    fn the_algorithm_and_the_key_source_must_agree() {
        let file = || KeySource::PublicKeyFile("/keys/public.pem".into());
        let ok = |a, k| AuthConfig::with_keys(a, k).validate();
        assert!(ok(JwtAlgorithm::Rs256, file()).is_ok());
        assert!(ok(JwtAlgorithm::Es256, KeySource::JwksFile("/k.json".into())).is_ok());
        let err = ok(JwtAlgorithm::Hs256, file()).unwrap_err();
        assert!(
            err.contains("JWT_PUBLIC_KEY_PATH") && err.contains("JWT_ALGORITHM"),
            "{err}"
        );
        let err = ok(JwtAlgorithm::Rs256, KeySource::Secret(b"s".to_vec())).unwrap_err();
        assert!(err.contains("JWT_ALGORITHM=RS256"), "{err}");
        let err = ok(JwtAlgorithm::Es256, KeySource::JwksFile("".into())).unwrap_err();
        assert!(err.contains("JWT_JWKS_PATH"), "{err}");
        let mut c = AuthConfig::hs256("s");
        c.leeway = Duration::from_secs(601);
        assert!(c.validate().unwrap_err().contains("JWT_LEEWAY_SECONDS"));
        let mut c = AuthConfig::hs256("s");
        c.issuer = Some(String::new());
        assert!(c.validate().unwrap_err().contains("JWT_ISSUER"));
        let mut c = AuthConfig::hs256("s");
        c.keys_reload_interval = Duration::ZERO;
        assert!(c.validate().unwrap_err().contains("JWT_KEYS_RELOAD_SECS"));
    }

    #[test]
    fn algorithm_names_parse_in_any_case_and_nothing_else_does() {
        assert_eq!(JwtAlgorithm::parse("rs256"), Some(JwtAlgorithm::Rs256));
        assert_eq!(JwtAlgorithm::parse("ES256"), Some(JwtAlgorithm::Es256));
        for bad in ["none", "HS512", "PS256", ""] {
            assert_eq!(JwtAlgorithm::parse(bad), None, "{bad}");
        }
    }
}
