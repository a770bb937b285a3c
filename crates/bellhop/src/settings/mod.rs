//! Turning the environment, an optional TOML file and command-line flags into the node's
//! configuration: each setting's value is resolved and applied to the gateway's, the broker's and
//! the request workflow's configs, with the checks that span several settings. Precedence: flags,
//! then environment, then file, then defaults. The environment is read through [`Env`] so tests
//! pass a map.
//!
//! The settings themselves (names, file keys, types, documented defaults) are declared once, in
//! [`table`]; this module reads them only through its typed keys (`s.get(WS_PORT)?`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bellhop_dispatcher::requests::{RequestsConfig, RoutingTable};
use bellhop_dispatcher::{MemoryConfig, RedisConfig};
use bellhop_gateway::{GatewayConfig, JwtAlgorithm, KeySource, TlsConfig, TlsVersion};
use bellhop_protocol::Priority;

mod table;

use table::*;
pub(crate) use table::{FileSettings, BELLHOP_CONFIG, LOG_LEVEL};

/// The development secret used when `JWT_SECRET` is unset outside production. Public on purpose:
/// it protects nothing, and production refuses it.
pub(crate) const DEV_SECRET: &str = "bellhop-development-secret-do-not-use-in-production";

/// Shortest `JWT_SECRET` accepted in production (256 bits).
const MIN_PRODUCTION_SECRET: usize = 32;

/// Where settings come from: the process environment, or a map in tests.
pub(crate) trait Env {
    /// The value of a variable, if set and not empty.
    fn get(&self, key: &str) -> Option<String>;
}

/// The process environment.
#[derive(Debug)]
pub(crate) struct ProcessEnv;

impl Env for ProcessEnv {
    fn get(&self, key: &str) -> Option<String> {
        std::env::var(key).ok().filter(|v| !v.is_empty())
    }
}

impl Env for HashMap<String, String> {
    fn get(&self, key: &str) -> Option<String> {
        self.get(key).cloned().filter(|v| !v.is_empty())
    }
}

/// Values given on the command line (they win over everything else).
#[derive(Debug, Default, Clone)]
pub(crate) struct Overrides {
    /// `--port`.
    pub(crate) ws_port: Option<u16>,
    /// `--metrics-port`.
    pub(crate) metrics_port: Option<u16>,
    /// `--bind`.
    pub(crate) bind_addr: Option<IpAddr>,
}

/// The broker a node uses: the embedded one unless Redis is configured.
#[derive(Debug)]
pub(crate) enum BrokerSettings {
    /// One node, state in its own memory.
    Embedded(MemoryConfig),
    /// One of many nodes sharing a Redis server.
    Redis(Box<RedisConfig>),
}

impl BrokerSettings {
    /// How long messages are kept.
    pub(crate) fn retention(&self) -> Duration {
        match self {
            BrokerSettings::Embedded(c) => c.retention,
            BrokerSettings::Redis(c) => c.retention,
        }
    }
}

/// The Redis URL from `REDIS_URL`, or built from `REDIS_HOST`, `REDIS_PORT` and
/// `REDIS_PASSWORD`; `None` for the embedded broker. `REDIS_TLS_ENABLED=true` makes it a
/// `rediss://` (TLS) URL; a `rediss://` `REDIS_URL` is TLS by itself.
fn redis_url(s: &Sources<'_>) -> Result<Option<String>> {
    let url = s.string(REDIS_URL);
    let host = s.string(REDIS_HOST);
    let password = s.string(REDIS_PASSWORD);
    let tls = s.get(REDIS_TLS_ENABLED)?.unwrap_or(false);
    match (url, host) {
        (Some(_), _) if password.is_some() => {
            bail!("REDIS_PASSWORD is set together with REDIS_URL: put the password in the URL (redis://:<password>@host:port)")
        }
        (Some(url), _) => match url.strip_prefix("redis://") {
            Some(rest) if tls => Ok(Some(format!("rediss://{rest}"))),
            _ => Ok(Some(url)),
        },
        (None, Some(host)) => {
            let port = s.get(REDIS_PORT)?.unwrap_or(6379u16);
            let auth = password
                .map(|p| format!(":{}@", url_encode(&p)))
                .unwrap_or_default();
            let scheme = if tls { "rediss" } else { "redis" };
            Ok(Some(format!("{scheme}://{auth}{host}:{port}")))
        }
        (None, None) if tls => {
            bail!("REDIS_TLS_ENABLED=true needs REDIS_URL or REDIS_HOST")
        }
        (None, None) => Ok(None),
    }
}

/// `TRUSTED_PROXIES`: comma-separated addresses or CIDR networks (`10.0.0.0/8, 192.0.2.7`).
fn parse_networks(list: &str) -> Result<Vec<bellhop_gateway::IpNet>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| {
            s.parse::<bellhop_gateway::IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(bellhop_gateway::IpNet::from))
                .map_err(|_| {
                    anyhow::anyhow!(
                        "TRUSTED_PROXIES: {s:?} is not an address or a network like 10.0.0.0/8"
                    )
                })
        })
        .collect()
}

/// A comma-separated list of origins (`ALLOWED_ORIGINS`, `CORS_ALLOWED_ORIGINS`): trimmed, without
/// a trailing `/`, empty entries dropped.
fn origin_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(|o| o.trim().trim_end_matches('/').to_owned())
        .filter(|o| !o.is_empty())
        .collect()
}

/// Percent-encodes everything but unreserved URL characters.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Development or production: production refuses the development secret.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Environment {
    /// Local use: a missing `JWT_SECRET` falls back to [`DEV_SECRET`] with a warning.
    Development,
    /// `BELLHOP_ENV=production`: `JWT_SECRET` must be set, not the development secret, and at
    /// least 32 bytes.
    Production,
}

/// How logs are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line (production).
    Json,
}

/// Everything `bellhop serve` needs.
#[derive(Debug)]
pub(crate) struct ServeSettings {
    /// The gateway's configuration.
    pub(crate) gateway: GatewayConfig,
    /// Which broker, and its configuration.
    pub(crate) broker: BrokerSettings,
    /// Development or production.
    pub(crate) environment: Environment,
    /// True when the development secret is in use (the binary warns loudly).
    pub(crate) dev_secret: bool,
    /// Log output format.
    pub(crate) log_format: LogFormat,
    /// True when the node binds loopback only because the development secret is in use and no
    /// address was configured (`BIND_ADDR`, `bind_addr`, `--bind`); the binary says so.
    pub(crate) loopback_for_dev_secret: bool,
    /// True when `SSL_CERT_PATH` or `SSL_KEY_PATH` is set but `SSL_ENABLED` is not true: the node
    /// serves plain `ws`/`http`, and says so loudly, since that is rarely what was meant.
    pub(crate) tls_paths_ignored: bool,
    /// The service request workflow: routing rules and escalation.
    pub(crate) requests: RequestsConfig,
}

/// The service request settings (`ROUTING_RULES_PATH`, `ESCALATION_*`).
fn requests_settings(s: &Sources<'_>, departments: Vec<String>) -> Result<RequestsConfig> {
    let mut config = RequestsConfig::new(departments);
    config.rules_path = s.string(ROUTING_RULES_PATH).map(Into::into);
    let e = &mut config.escalation;
    if let Some(text) = s.string(ESCALATION_MIN_PRIORITY) {
        e.min_priority = Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "ESCALATION_MIN_PRIORITY={text:?} is invalid: use low, normal, high or urgent"
                )
            })?;
    }
    if let Some(secs) = s.get(ESCALATION_AFTER_SECONDS)? {
        e.after_ms = secs.saturating_mul(1000);
    }
    if let Some(n) = s.get(ESCALATION_MANAGEMENT_LEVEL)? {
        e.management_level = n;
    }
    if let Some(text) = s.string(ESCALATION_MANAGEMENT_CHANNEL) {
        e.management_channel = text.parse().map_err(|err| {
            anyhow::anyhow!("ESCALATION_MANAGEMENT_CHANNEL={text:?} is invalid: {err}")
        })?;
    }
    if let Some(n) = s.get(ESCALATION_MAX_LEVEL)? {
        e.max_level = n;
    }
    e.validate().map_err(anyhow::Error::msg)?;
    if let bellhop_protocol::Channel::Dept(d) = &e.management_channel {
        if !config.departments.contains(d) {
            bail!(
                "ESCALATION_MANAGEMENT_CHANNEL={} is not a configured department (DEPARTMENTS)",
                e.management_channel
            );
        }
    }
    // Read the rule file now, so a bad one stops the node with its line named.
    RoutingTable::new(config.rules_path.clone(), config.departments.clone())?;
    Ok(config)
}

/// A settings reader over one environment and one file.
struct Sources<'a> {
    env: &'a dyn Env,
    file: &'a FileSettings,
}

impl Sources<'_> {
    /// The environment's value of `key`, else the file's; `None` when neither has one. A value
    /// from the environment that does not read names the variable.
    fn get<T: Value>(&self, key: Key<T>) -> Result<Option<T>> {
        match self.env.get(key.env) {
            Some(raw) => T::from_env(key.env, &raw).map(Some),
            None => Ok((key.file)(self.file).clone()),
        }
    }

    /// A string setting: the environment's, else the file's (taken as they are).
    fn string(&self, key: Key<String>) -> Option<String> {
        self.env
            .get(key.env)
            .or_else(|| (key.file)(self.file).clone())
    }
}

/// The TLS settings, when `SSL_ENABLED=true`.
fn tls_settings(s: &Sources<'_>) -> Result<TlsConfig> {
    let cert = s
        .string(SSL_CERT_PATH)
        .context("SSL_ENABLED=true needs SSL_CERT_PATH: the PEM file with the certificate chain")?;
    let key = s
        .string(SSL_KEY_PATH)
        .context("SSL_ENABLED=true needs SSL_KEY_PATH: the PEM file with the private key")?;
    let mut tls = TlsConfig::new(cert, key);
    if let Some(v) = s.string(SSL_MIN_VERSION) {
        tls.min_version = match v
            .trim()
            .to_ascii_lowercase()
            .trim_start_matches("tls")
            .trim_start_matches('v')
        {
            "1.2" => TlsVersion::Tls12,
            "1.3" => TlsVersion::Tls13,
            _ => bail!(
                "SSL_MIN_VERSION={v:?} is invalid: use 1.2 or 1.3 (nothing older than TLS 1.2 is ever offered)"
            ),
        };
    }
    if let Some(secs) = s.get(SSL_RELOAD_INTERVAL_SECONDS)? {
        if secs > 86_400 {
            bail!("SSL_RELOAD_INTERVAL_SECONDS must be between 0 (never) and 86400");
        }
        tls.reload_interval = (secs > 0).then(|| Duration::from_secs(secs));
    }
    Ok(tls)
}

/// Reads the TOML file at `path`.
pub(crate) fn read_file(path: &Path) -> Result<FileSettings> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn environment(s: &Sources<'_>) -> Result<Environment> {
    match s
        .string(BELLHOP_ENV)
        .as_deref()
        .map(str::to_ascii_lowercase)
    {
        None => Ok(Environment::Development),
        Some(e) if e == "development" || e == "dev" => Ok(Environment::Development),
        Some(e) if e == "production" || e == "prod" => Ok(Environment::Production),
        Some(e) => bail!("BELLHOP_ENV={e:?} is invalid: use development or production"),
    }
}

/// Resolves the HS256 secret `bellhop token` and `bellhop serve` sign and verify with.
pub(crate) fn resolve_secret(
    env: &dyn Env,
    file: &FileSettings,
) -> Result<(Vec<u8>, Environment, bool)> {
    let s = Sources { env, file };
    let environment = environment(&s)?;
    match (s.string(JWT_SECRET), environment) {
        (None, Environment::Development) => Ok((DEV_SECRET.as_bytes().to_vec(), environment, true)),
        (None, Environment::Production) => {
            bail!("JWT_SECRET must be set when BELLHOP_ENV=production (or verify RS256/ES256 tokens with JWT_ALGORITHM and JWT_PUBLIC_KEY_PATH or JWT_JWKS_PATH)")
        }
        (Some(secret), Environment::Production) if secret == DEV_SECRET => {
            bail!("JWT_SECRET is the public development secret; BELLHOP_ENV=production refuses it")
        }
        (Some(secret), Environment::Production) if secret.len() < MIN_PRODUCTION_SECRET => {
            bail!("JWT_SECRET must be at least {MIN_PRODUCTION_SECRET} bytes when BELLHOP_ENV=production")
        }
        (Some(secret), environment) => Ok((secret.into_bytes(), environment, secret_is_dev(&s))),
    }
}

/// How `bellhop serve` verifies tokens: the pinned algorithm and exactly one key source.
pub(crate) struct TokenKeys {
    pub(crate) algorithm: JwtAlgorithm,
    pub(crate) keys: KeySource,
    pub(crate) environment: Environment,
    /// True when the development secret is in use.
    pub(crate) dev_secret: bool,
}

/// Resolves `JWT_ALGORITHM` and its key source: HS256 (the default) with `JWT_SECRET` under
/// the secret rule; RS256 or ES256 with exactly one of `JWT_PUBLIC_KEY_PATH` and
/// `JWT_JWKS_PATH`, and no `JWT_SECRET`.
pub(crate) fn resolve_keys(env: &dyn Env, file: &FileSettings) -> Result<TokenKeys> {
    let s = Sources { env, file };
    let named = s.string(JWT_ALGORITHM);
    let algorithm = match &named {
        None => None,
        Some(name) => Some(JwtAlgorithm::parse(name).ok_or_else(|| {
            anyhow::anyhow!("JWT_ALGORITHM={name:?} is invalid: use HS256, RS256 or ES256")
        })?),
    };
    let pem = s.string(JWT_PUBLIC_KEY_PATH);
    let jwks = s.string(JWT_JWKS_PATH);
    let file_setting = match (&pem, &jwks) {
        (Some(_), Some(_)) => {
            bail!("JWT_PUBLIC_KEY_PATH and JWT_JWKS_PATH are both set: set exactly one key source")
        }
        (Some(_), None) => Some("JWT_PUBLIC_KEY_PATH"),
        (None, Some(_)) => Some("JWT_JWKS_PATH"),
        (None, None) => None,
    };
    match (algorithm, file_setting) {
        (None, Some(setting)) => bail!(
            "{setting} is set but JWT_ALGORITHM is not: set JWT_ALGORITHM=RS256 or ES256 (the algorithm is pinned by configuration; the default, HS256, uses JWT_SECRET)"
        ),
        (Some(JwtAlgorithm::Hs256), Some(setting)) => bail!(
            "{setting} is set but JWT_ALGORITHM=HS256 verifies with JWT_SECRET: set JWT_ALGORITHM=RS256 or ES256, or unset {setting}"
        ),
        (None | Some(JwtAlgorithm::Hs256), None) => {
            let (secret, environment, dev_secret) = resolve_secret(env, file)?;
            Ok(TokenKeys {
                algorithm: JwtAlgorithm::Hs256,
                keys: KeySource::Secret(secret),
                environment,
                dev_secret,
            })
        }
        (Some(alg), None) => {
            bail!("JWT_ALGORITHM={alg} needs JWT_PUBLIC_KEY_PATH or JWT_JWKS_PATH")
        }
        (Some(alg), Some(_)) => {
            if s.string(JWT_SECRET).is_some() {
                bail!("JWT_SECRET is set but JWT_ALGORITHM={alg} verifies with a public key: unset JWT_SECRET (exactly one key source)");
            }
            let keys = match (pem, jwks) {
                (Some(path), _) => KeySource::PublicKeyFile(path.into()),
                (None, Some(path)) => KeySource::JwksFile(path.into()),
                (None, None) => bail!("JWT_ALGORITHM={alg} needs JWT_PUBLIC_KEY_PATH or JWT_JWKS_PATH"),
            };
            Ok(TokenKeys {
                algorithm: alg,
                keys,
                environment: environment(&s)?,
                dev_secret: false,
            })
        }
    }
}

fn secret_is_dev(s: &Sources<'_>) -> bool {
    s.string(JWT_SECRET).as_deref() == Some(DEV_SECRET)
}

fn default_node_id(env: &dyn Env) -> String {
    env.get("HOSTNAME")
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| bellhop_protocol::is_valid_id(h))
        .unwrap_or_else(|| "bellhop-1".into())
}

/// Builds the settings of `bellhop serve`.
pub(crate) fn serve_settings(
    env: &dyn Env,
    file: &FileSettings,
    flags: &Overrides,
) -> Result<ServeSettings> {
    let s = Sources { env, file };
    let tls = if s.get(SSL_ENABLED)?.unwrap_or(false) {
        Some(tls_settings(&s)?)
    } else {
        None
    };
    let tls_paths_ignored =
        tls.is_none() && (s.string(SSL_CERT_PATH).is_some() || s.string(SSL_KEY_PATH).is_some());
    let redis_cluster = s.get(REDIS_CLUSTER)?.unwrap_or(false);
    let redis_url = redis_url(&s)?;
    let TokenKeys {
        algorithm,
        keys,
        environment,
        dev_secret,
    } = resolve_keys(env, file)?;
    let mut gateway = GatewayConfig::new(Vec::new());
    gateway.auth.algorithm = algorithm;
    gateway.auth.keys = keys;
    gateway.auth.issuer = s.string(JWT_ISSUER);
    gateway.auth.audience = s.string(JWT_AUDIENCE);
    if let Some(secs) = s.get(JWT_LEEWAY_SECONDS)? {
        gateway.auth.leeway = Duration::from_secs(secs);
    }
    if let Some(secs) = s.get(JWT_KEYS_RELOAD_SECS)? {
        gateway.auth.keys_reload_interval = Duration::from_secs(secs);
    }
    gateway.tls = tls;
    let bind_in_file = (BIND_ADDR.file)(file);
    let bind: IpAddr = match (flags.bind_addr, env.get(BIND_ADDR.env), bind_in_file) {
        (Some(ip), _, _) => ip,
        (None, Some(raw), _) => parse_env(BIND_ADDR.env, &raw)?,
        (None, None, Some(text)) => text.parse().map_err(|e| {
            anyhow::anyhow!("bind_addr = {text:?} in the config file is invalid: {e}")
        })?,
        // Nothing said where to listen: every interface, except with the public development
        // secret, with which anyone who can reach the node can mint tokens for it.
        (None, None, None) if dev_secret => IpAddr::from([127, 0, 0, 1]),
        (None, None, None) => IpAddr::from([0, 0, 0, 0]),
    };
    let loopback_for_dev_secret = dev_secret
        && flags.bind_addr.is_none()
        && env.get(BIND_ADDR.env).is_none()
        && bind_in_file.is_none();
    let ws_port = flags.ws_port.or(s.get(WS_PORT)?).unwrap_or(3001);
    gateway.listen = SocketAddr::new(bind, ws_port);
    if let Some(path) = s.string(WS_PATH) {
        gateway.ws_path = path;
    }
    let metrics_port = flags.metrics_port.or(s.get(METRICS_PORT)?).unwrap_or(9090);
    let metrics = s.get(ENABLE_METRICS)?.unwrap_or(true);
    gateway.admin_listen = metrics.then(|| SocketAddr::new(bind, metrics_port));
    if let Some(n) = s.get(MAX_CONNECTIONS)? {
        gateway.max_connections = n;
    }
    let limits = &mut gateway.rate_limits;
    if let Some(n) = s.get(RATE_LIMIT_PER_IP)? {
        limits.connections_per_ip_per_minute = n;
    }
    if let Some(n) = s.get(RATE_LIMIT_FRAMES_PER_SECOND)? {
        limits.frames_per_second = n;
    }
    if let Some(n) = s.get(RATE_LIMIT_PUBLISHES_PER_MINUTE)? {
        limits.publishes_per_user_per_minute = n;
    }
    if let Some(n) = s.get(BAN_THRESHOLD)? {
        limits.ban_threshold = n;
    }
    if let Some(n) = s.get(BAN_SECONDS)? {
        limits.ban_duration = Duration::from_secs(n);
    }
    if let Some(n) = s.get(MAX_CONNECTIONS_PER_USER)? {
        limits.max_connections_per_user = n;
    }
    if let Some(list) = s.string(TRUSTED_PROXIES) {
        limits.trusted_proxies = parse_networks(&list)?;
    }
    if let Some(list) = s.string(ALLOWED_ORIGINS) {
        gateway.allowed_origins = origin_list(&list);
    }
    let edge = &mut gateway.edge;
    if let Some(list) = s.string(CORS_ALLOWED_ORIGINS) {
        edge.cors_allowed_origins = origin_list(&list);
    }
    if let Some(n) = s.get(MAX_PENDING_CONNECTIONS)? {
        edge.max_pending = n;
    }
    if let Some(n) = s.get(MAX_PENDING_PER_IP)? {
        edge.max_pending_per_ip = n;
    }
    if let Some(n) = s.get(MAX_HEADER_BYTES)? {
        edge.max_header_bytes = n;
    }
    if let Some(secs) = s.get(HTTP_BODY_TIMEOUT_SECONDS)? {
        edge.body_timeout = Duration::from_secs(secs);
    }
    if let Some(secs) = s.get(HTTP_REQUEST_TIMEOUT_SECONDS)? {
        edge.request_timeout = Duration::from_secs(secs);
    }
    gateway.node_id = s.string(NODE_ID).unwrap_or_else(|| default_node_id(env));
    if !bellhop_protocol::is_valid_id(&gateway.node_id) {
        bail!(
            "NODE_ID={:?} is invalid: use [A-Za-z0-9_.-]{{1,64}}",
            gateway.node_id
        );
    }
    if let Some(secs) = s.get(DRAIN_SECONDS)? {
        gateway.drain_period = Duration::from_secs(secs);
    }
    if let Some(secs) = s.get(HEARTBEAT_SECONDS)? {
        if secs > 3600 {
            bail!("HEARTBEAT_SECONDS must be between 1 and 3600");
        }
        gateway.heartbeat_interval = Duration::from_secs(secs);
        gateway.heartbeat_timeout = Duration::from_secs(secs * 2);
    }
    if let Some(secs) = s.get(AUTH_TIMEOUT_SECONDS)? {
        gateway.auth.auth_timeout = Duration::from_secs(secs);
    }
    if let Some(list) = s.string(DEPARTMENTS) {
        gateway.departments = list
            .split(',')
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
            .collect();
    }
    if let Some(n) = s.get(PUBLISH_BYTES_PER_USER_PER_MINUTE)? {
        gateway.hotel.publish_bytes_per_user_per_minute = n;
    }
    if let Some(n) = s.get(HISTORY_MAX_BYTES)? {
        gateway.history_max_bytes = n;
    }
    gateway.validate().map_err(anyhow::Error::msg)?;
    // Read the key file now, so a missing or bad one stops the node with its setting named.
    bellhop_gateway::auth::Verifier::new(&gateway.auth)?;
    let mut retention = Duration::from_secs(24 * 3600);
    if let Some(hours) = s.get(MESSAGE_RETENTION_HOURS)? {
        if hours == 0 || hours > 24 * 365 {
            bail!("MESSAGE_RETENTION_HOURS must be between 1 and 8760");
        }
        retention = Duration::from_secs(hours * 3600);
    }
    let mut idempotency_window = Duration::from_secs(600);
    if let Some(secs) = s.get(IDEMPOTENCY_WINDOW_SECONDS)? {
        // Escalations are published with an idempotency key and re-fired by another node when a
        // claim's lease (30 s) lapses: the window must outlast the lease, or a crash between the
        // publish and its confirmation could publish one level twice.
        if !(60..=24 * 3600).contains(&secs) {
            bail!("IDEMPOTENCY_WINDOW_SECONDS must be between 60 and 86400 (it must outlast the 30 s escalation claim)");
        }
        idempotency_window = Duration::from_secs(secs);
    }
    let max_messages_per_channel = match s.get(MAX_MESSAGES_PER_CHANNEL)? {
        Some(n) if !(100..=1_000_000).contains(&n) => {
            bail!("MAX_MESSAGES_PER_CHANNEL must be between 100 and 1000000")
        }
        Some(n) => n,
        None => MemoryConfig::default().max_messages_per_channel,
    };
    let broker = match redis_url {
        None if redis_cluster => {
            bail!("REDIS_CLUSTER=true needs REDIS_URL (or REDIS_HOST): any one node of the cluster")
        }
        None => BrokerSettings::Embedded(MemoryConfig {
            retention,
            idempotency_window,
            max_messages_per_channel,
            ..MemoryConfig::default()
        }),
        Some(url) => {
            let config = RedisConfig {
                url,
                cluster: redis_cluster,
                tls_ca_path: s.string(REDIS_TLS_CA_PATH).map(Into::into),
                retention,
                idempotency_window,
                max_messages_per_channel,
                ..RedisConfig::default()
            };
            config.validate().map_err(anyhow::Error::msg)?;
            BrokerSettings::Redis(Box::new(config))
        }
    };
    let log_format = match s.string(LOG_FORMAT).as_deref() {
        None if environment == Environment::Production => LogFormat::Json,
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => bail!("LOG_FORMAT={other:?} is invalid: use text or json"),
    };
    let requests = requests_settings(&s, gateway.departments.clone())?;
    Ok(ServeSettings {
        requests,
        loopback_for_dev_secret,
        tls_paths_ignored,
        gateway,
        broker,
        environment,
        dev_secret,
        log_format,
    })
}

#[cfg(test)]
mod docs_tests;
#[cfg(test)]
mod tests;
