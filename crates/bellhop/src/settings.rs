//! Turning the environment, an optional TOML file and command-line flags into the node's
//! configuration. Precedence: flags, then environment, then file, then defaults. The environment
//! is read through [`Env`] so tests pass a map.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use bellhop_dispatcher::requests::{RequestsConfig, RoutingTable};
use bellhop_dispatcher::{MemoryConfig, RedisConfig};
use bellhop_gateway::{GatewayConfig, JwtAlgorithm, KeySource, TlsConfig, TlsVersion};
use bellhop_protocol::Priority;
use serde::Deserialize;

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

/// The optional TOML file: the same settings as the environment, in lower case
/// (`ws_port = 3001`, `jwt_secret = "..."`).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FileSettings {
    bind_addr: Option<String>,
    ws_port: Option<u16>,
    ws_path: Option<String>,
    ssl_enabled: Option<bool>,
    ssl_cert_path: Option<String>,
    ssl_key_path: Option<String>,
    ssl_min_version: Option<String>,
    ssl_reload_interval_seconds: Option<u64>,
    redis_url: Option<String>,
    redis_host: Option<String>,
    redis_port: Option<u16>,
    redis_password: Option<String>,
    redis_tls_enabled: Option<bool>,
    redis_tls_ca_path: Option<String>,
    redis_cluster: Option<bool>,
    max_connections: Option<usize>,
    rate_limit_per_ip: Option<u32>,
    rate_limit_frames_per_second: Option<u32>,
    rate_limit_publishes_per_minute: Option<u32>,
    ban_threshold: Option<u32>,
    ban_seconds: Option<u64>,
    max_connections_per_user: Option<usize>,
    trusted_proxies: Option<String>,
    allowed_origins: Option<String>,
    cors_allowed_origins: Option<String>,
    max_pending_connections: Option<usize>,
    max_pending_per_ip: Option<usize>,
    max_header_bytes: Option<usize>,
    http_body_timeout_seconds: Option<u64>,
    http_request_timeout_seconds: Option<u64>,
    message_retention_hours: Option<u64>,
    enable_metrics: Option<bool>,
    metrics_port: Option<u16>,
    jwt_secret: Option<String>,
    jwt_algorithm: Option<String>,
    jwt_public_key_path: Option<String>,
    jwt_jwks_path: Option<String>,
    jwt_issuer: Option<String>,
    jwt_audience: Option<String>,
    jwt_leeway_seconds: Option<u64>,
    jwt_keys_reload_secs: Option<u64>,
    node_id: Option<String>,
    bellhop_env: Option<String>,
    drain_seconds: Option<u64>,
    heartbeat_seconds: Option<u64>,
    auth_timeout_seconds: Option<u64>,
    log_format: Option<String>,
    departments: Option<String>,
    publish_bytes_per_user_per_minute: Option<u32>,
    history_max_bytes: Option<usize>,
    idempotency_window_seconds: Option<u64>,
    max_messages_per_channel: Option<usize>,
    routing_rules_path: Option<String>,
    escalation_min_priority: Option<String>,
    escalation_after_seconds: Option<u64>,
    escalation_management_level: Option<u32>,
    escalation_management_channel: Option<String>,
    escalation_max_level: Option<u32>,
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
    let url = s.string("REDIS_URL", &s.file.redis_url);
    let host = s.string("REDIS_HOST", &s.file.redis_host);
    let password = s.string("REDIS_PASSWORD", &s.file.redis_password);
    let tls = s
        .flag("REDIS_TLS_ENABLED", s.file.redis_tls_enabled)?
        .unwrap_or(false);
    match (url, host) {
        (Some(_), _) if password.is_some() => {
            bail!("REDIS_PASSWORD is set together with REDIS_URL: put the password in the URL (redis://:<password>@host:port)")
        }
        (Some(url), _) => match url.strip_prefix("redis://") {
            Some(rest) if tls => Ok(Some(format!("rediss://{rest}"))),
            _ => Ok(Some(url)),
        },
        (None, Some(host)) => {
            let port = s.parse("REDIS_PORT", s.file.redis_port)?.unwrap_or(6379u16);
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
    let file = s.file;
    let mut config = RequestsConfig::new(departments);
    config.rules_path = s
        .string("ROUTING_RULES_PATH", &file.routing_rules_path)
        .map(Into::into);
    let e = &mut config.escalation;
    if let Some(text) = s.string("ESCALATION_MIN_PRIORITY", &file.escalation_min_priority) {
        e.min_priority = Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "ESCALATION_MIN_PRIORITY={text:?} is invalid: use low, normal, high or urgent"
                )
            })?;
    }
    if let Some(secs) = s.parse::<u64>("ESCALATION_AFTER_SECONDS", file.escalation_after_seconds)? {
        e.after_ms = secs.saturating_mul(1000);
    }
    if let Some(n) = s.parse(
        "ESCALATION_MANAGEMENT_LEVEL",
        file.escalation_management_level,
    )? {
        e.management_level = n;
    }
    if let Some(text) = s.string(
        "ESCALATION_MANAGEMENT_CHANNEL",
        &file.escalation_management_channel,
    ) {
        e.management_channel = text.parse().map_err(|err| {
            anyhow::anyhow!("ESCALATION_MANAGEMENT_CHANNEL={text:?} is invalid: {err}")
        })?;
    }
    if let Some(n) = s.parse("ESCALATION_MAX_LEVEL", file.escalation_max_level)? {
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
    fn string(&self, key: &str, file: &Option<String>) -> Option<String> {
        self.env.get(key).or_else(|| file.clone())
    }

    fn parse<T: std::str::FromStr>(&self, key: &str, file: Option<T>) -> Result<Option<T>>
    where
        T::Err: std::fmt::Display,
    {
        match self.env.get(key) {
            Some(v) => v
                .trim()
                .parse()
                .map(Some)
                .map_err(|e| anyhow::anyhow!("{key}={v:?} is invalid: {e}")),
            None => Ok(file),
        }
    }

    fn flag(&self, key: &str, file: Option<bool>) -> Result<Option<bool>> {
        match self.env.get(key) {
            Some(v) => match v.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => Ok(Some(true)),
                "0" | "false" | "no" | "off" => Ok(Some(false)),
                _ => bail!("{key}={v:?} is invalid: use true or false"),
            },
            None => Ok(file),
        }
    }
}

/// The TLS settings, when `SSL_ENABLED=true`.
fn tls_settings(s: &Sources<'_>) -> Result<TlsConfig> {
    let cert = s
        .string("SSL_CERT_PATH", &s.file.ssl_cert_path)
        .context("SSL_ENABLED=true needs SSL_CERT_PATH: the PEM file with the certificate chain")?;
    let key = s
        .string("SSL_KEY_PATH", &s.file.ssl_key_path)
        .context("SSL_ENABLED=true needs SSL_KEY_PATH: the PEM file with the private key")?;
    let mut tls = TlsConfig::new(cert, key);
    if let Some(v) = s.string("SSL_MIN_VERSION", &s.file.ssl_min_version) {
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
    if let Some(secs) = s.parse::<u64>(
        "SSL_RELOAD_INTERVAL_SECONDS",
        s.file.ssl_reload_interval_seconds,
    )? {
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
        .string("BELLHOP_ENV", &s.file.bellhop_env)
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
    match (s.string("JWT_SECRET", &file.jwt_secret), environment) {
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
    let named = s.string("JWT_ALGORITHM", &file.jwt_algorithm);
    let algorithm = match &named {
        None => None,
        Some(name) => Some(JwtAlgorithm::parse(name).ok_or_else(|| {
            anyhow::anyhow!("JWT_ALGORITHM={name:?} is invalid: use HS256, RS256 or ES256")
        })?),
    };
    let pem = s.string("JWT_PUBLIC_KEY_PATH", &file.jwt_public_key_path);
    let jwks = s.string("JWT_JWKS_PATH", &file.jwt_jwks_path);
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
            if s.string("JWT_SECRET", &file.jwt_secret).is_some() {
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
    s.string("JWT_SECRET", &s.file.jwt_secret).as_deref() == Some(DEV_SECRET)
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
    let tls = if s.flag("SSL_ENABLED", file.ssl_enabled)?.unwrap_or(false) {
        Some(tls_settings(&s)?)
    } else {
        None
    };
    let tls_paths_ignored = tls.is_none()
        && (s.string("SSL_CERT_PATH", &file.ssl_cert_path).is_some()
            || s.string("SSL_KEY_PATH", &file.ssl_key_path).is_some());
    let redis_cluster = s
        .flag("REDIS_CLUSTER", file.redis_cluster)?
        .unwrap_or(false);
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
    gateway.auth.issuer = s.string("JWT_ISSUER", &file.jwt_issuer);
    gateway.auth.audience = s.string("JWT_AUDIENCE", &file.jwt_audience);
    if let Some(secs) = s.parse::<u64>("JWT_LEEWAY_SECONDS", file.jwt_leeway_seconds)? {
        gateway.auth.leeway = Duration::from_secs(secs);
    }
    if let Some(secs) = s.parse::<u64>("JWT_KEYS_RELOAD_SECS", file.jwt_keys_reload_secs)? {
        gateway.auth.keys_reload_interval = Duration::from_secs(secs);
    }
    gateway.tls = tls;
    let bind: IpAddr = match (flags.bind_addr, env.get("BIND_ADDR"), &file.bind_addr) {
        (Some(ip), _, _) => ip,
        (None, Some(_), _) => s
            .parse("BIND_ADDR", None)?
            .unwrap_or(IpAddr::from([0, 0, 0, 0])),
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
        && env.get("BIND_ADDR").is_none()
        && file.bind_addr.is_none();
    let ws_port = flags
        .ws_port
        .or(s.parse("WS_PORT", file.ws_port)?)
        .unwrap_or(3001);
    gateway.listen = SocketAddr::new(bind, ws_port);
    if let Some(path) = s.string("WS_PATH", &file.ws_path) {
        gateway.ws_path = path;
    }
    let metrics_port = flags
        .metrics_port
        .or(s.parse("METRICS_PORT", file.metrics_port)?)
        .unwrap_or(9090);
    let metrics = s
        .flag("ENABLE_METRICS", file.enable_metrics)?
        .unwrap_or(true);
    gateway.admin_listen = metrics.then(|| SocketAddr::new(bind, metrics_port));
    if let Some(n) = s.parse("MAX_CONNECTIONS", file.max_connections)? {
        gateway.max_connections = n;
    }
    let limits = &mut gateway.rate_limits;
    if let Some(n) = s.parse("RATE_LIMIT_PER_IP", file.rate_limit_per_ip)? {
        limits.connections_per_ip_per_minute = n;
    }
    if let Some(n) = s.parse(
        "RATE_LIMIT_FRAMES_PER_SECOND",
        file.rate_limit_frames_per_second,
    )? {
        limits.frames_per_second = n;
    }
    if let Some(n) = s.parse(
        "RATE_LIMIT_PUBLISHES_PER_MINUTE",
        file.rate_limit_publishes_per_minute,
    )? {
        limits.publishes_per_user_per_minute = n;
    }
    if let Some(n) = s.parse("BAN_THRESHOLD", file.ban_threshold)? {
        limits.ban_threshold = n;
    }
    if let Some(n) = s.parse::<u64>("BAN_SECONDS", file.ban_seconds)? {
        limits.ban_duration = Duration::from_secs(n);
    }
    if let Some(n) = s.parse("MAX_CONNECTIONS_PER_USER", file.max_connections_per_user)? {
        limits.max_connections_per_user = n;
    }
    if let Some(list) = s.string("TRUSTED_PROXIES", &file.trusted_proxies) {
        limits.trusted_proxies = parse_networks(&list)?;
    }
    if let Some(list) = s.string("ALLOWED_ORIGINS", &file.allowed_origins) {
        gateway.allowed_origins = origin_list(&list);
    }
    let edge = &mut gateway.edge;
    if let Some(list) = s.string("CORS_ALLOWED_ORIGINS", &file.cors_allowed_origins) {
        edge.cors_allowed_origins = origin_list(&list);
    }
    if let Some(n) = s.parse("MAX_PENDING_CONNECTIONS", file.max_pending_connections)? {
        edge.max_pending = n;
    }
    if let Some(n) = s.parse("MAX_PENDING_PER_IP", file.max_pending_per_ip)? {
        edge.max_pending_per_ip = n;
    }
    if let Some(n) = s.parse("MAX_HEADER_BYTES", file.max_header_bytes)? {
        edge.max_header_bytes = n;
    }
    if let Some(secs) =
        s.parse::<u64>("HTTP_BODY_TIMEOUT_SECONDS", file.http_body_timeout_seconds)?
    {
        edge.body_timeout = Duration::from_secs(secs);
    }
    if let Some(secs) = s.parse::<u64>(
        "HTTP_REQUEST_TIMEOUT_SECONDS",
        file.http_request_timeout_seconds,
    )? {
        edge.request_timeout = Duration::from_secs(secs);
    }
    gateway.node_id = s
        .string("NODE_ID", &file.node_id)
        .unwrap_or_else(|| default_node_id(env));
    if !bellhop_protocol::is_valid_id(&gateway.node_id) {
        bail!(
            "NODE_ID={:?} is invalid: use [A-Za-z0-9_.-]{{1,64}}",
            gateway.node_id
        );
    }
    if let Some(secs) = s.parse::<u64>("DRAIN_SECONDS", file.drain_seconds)? {
        gateway.drain_period = Duration::from_secs(secs);
    }
    if let Some(secs) = s.parse::<u64>("HEARTBEAT_SECONDS", file.heartbeat_seconds)? {
        if secs > 3600 {
            bail!("HEARTBEAT_SECONDS must be between 1 and 3600");
        }
        gateway.heartbeat_interval = Duration::from_secs(secs);
        gateway.heartbeat_timeout = Duration::from_secs(secs * 2);
    }
    if let Some(secs) = s.parse::<u64>("AUTH_TIMEOUT_SECONDS", file.auth_timeout_seconds)? {
        gateway.auth.auth_timeout = Duration::from_secs(secs);
    }
    if let Some(list) = s.string("DEPARTMENTS", &file.departments) {
        gateway.departments = list
            .split(',')
            .map(|d| d.trim().to_owned())
            .filter(|d| !d.is_empty())
            .collect();
    }
    if let Some(n) = s.parse(
        "PUBLISH_BYTES_PER_USER_PER_MINUTE",
        file.publish_bytes_per_user_per_minute,
    )? {
        gateway.hotel.publish_bytes_per_user_per_minute = n;
    }
    if let Some(n) = s.parse("HISTORY_MAX_BYTES", file.history_max_bytes)? {
        gateway.history_max_bytes = n;
    }
    gateway.validate().map_err(anyhow::Error::msg)?;
    // Read the key file now, so a missing or bad one stops the node with its setting named.
    bellhop_gateway::auth::Verifier::new(&gateway.auth)?;
    let mut retention = Duration::from_secs(24 * 3600);
    if let Some(hours) = s.parse::<u64>("MESSAGE_RETENTION_HOURS", file.message_retention_hours)? {
        if hours == 0 || hours > 24 * 365 {
            bail!("MESSAGE_RETENTION_HOURS must be between 1 and 8760");
        }
        retention = Duration::from_secs(hours * 3600);
    }
    let mut idempotency_window = Duration::from_secs(600);
    if let Some(secs) = s.parse::<u64>(
        "IDEMPOTENCY_WINDOW_SECONDS",
        file.idempotency_window_seconds,
    )? {
        // Escalations are published with an idempotency key and re-fired by another node when a
        // claim's lease (30 s) lapses: the window must outlast the lease, or a crash between the
        // publish and its confirmation could publish one level twice.
        if !(60..=24 * 3600).contains(&secs) {
            bail!("IDEMPOTENCY_WINDOW_SECONDS must be between 60 and 86400 (it must outlast the 30 s escalation claim)");
        }
        idempotency_window = Duration::from_secs(secs);
    }
    let max_messages_per_channel =
        match s.parse::<usize>("MAX_MESSAGES_PER_CHANNEL", file.max_messages_per_channel)? {
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
                tls_ca_path: s
                    .string("REDIS_TLS_CA_PATH", &file.redis_tls_ca_path)
                    .map(Into::into),
                retention,
                idempotency_window,
                max_messages_per_channel,
                ..RedisConfig::default()
            };
            config.validate().map_err(anyhow::Error::msg)?;
            BrokerSettings::Redis(Box::new(config))
        }
    };
    let log_format = match s.string("LOG_FORMAT", &file.log_format).as_deref() {
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
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn settings(pairs: &[(&str, &str)]) -> Result<ServeSettings> {
        serve_settings(&env(pairs), &FileSettings::default(), &Overrides::default())
    }

    #[test]
    fn escalation_settings_are_read_and_checked() {
        let s = settings(&[]).unwrap();
        let e = &s.requests.escalation;
        assert_eq!(
            (e.after_ms, e.management_level, e.max_level),
            (300_000, 4, 5)
        );
        assert_eq!(e.min_priority, Priority::High);
        assert_eq!(e.management_channel.to_string(), "dept:management");
        let s = settings(&[
            ("ESCALATION_AFTER_SECONDS", "3"),
            ("ESCALATION_MIN_PRIORITY", "urgent"),
            ("ESCALATION_MANAGEMENT_LEVEL", "3"),
            ("ESCALATION_MANAGEMENT_CHANNEL", "dept:security"),
            ("ESCALATION_MAX_LEVEL", "4"),
        ])
        .unwrap();
        let e = &s.requests.escalation;
        assert_eq!((e.after_ms, e.management_level, e.max_level), (3_000, 3, 4));
        assert_eq!(e.min_priority, Priority::Urgent);
        for (key, value, named) in [
            ("ESCALATION_MIN_PRIORITY", "soon", "ESCALATION_MIN_PRIORITY"),
            ("ESCALATION_AFTER_SECONDS", "0", "ESCALATION_AFTER_SECONDS"),
            ("ESCALATION_MAX_LEVEL", "1", "ESCALATION_MAX_LEVEL"),
            (
                "ESCALATION_MANAGEMENT_CHANNEL",
                "dept:nowhere",
                "ESCALATION_MANAGEMENT_CHANNEL",
            ),
            (
                "ROUTING_RULES_PATH",
                "/nonexistent/rules.toml",
                "ROUTING_RULES_PATH",
            ),
        ] {
            let e = settings(&[(key, value)]).unwrap_err().to_string();
            assert!(e.contains(named), "{key}={value}: {e}");
        }
    }

    #[test]
    fn defaults_match_the_design() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.gateway.listen.port(), 3001);
        assert_eq!(s.gateway.ws_path, "/ws");
        assert_eq!(s.gateway.admin_listen.unwrap().port(), 9090);
        assert_eq!(s.gateway.max_connections, 10_000);
        assert_eq!(s.broker.retention(), Duration::from_secs(24 * 3600));
        assert!(s.dev_secret);
        assert_eq!(s.environment, Environment::Development);
    }

    #[test]
    fn the_development_secret_binds_loopback_unless_an_address_is_given() {
        let s = settings(&[]).unwrap();
        assert_eq!(s.gateway.listen.ip(), IpAddr::from([127, 0, 0, 1]));
        assert_eq!(
            s.gateway.admin_listen.unwrap().ip(),
            IpAddr::from([127, 0, 0, 1])
        );
        assert!(s.loopback_for_dev_secret);
        let s = settings(&[("JWT_SECRET", DEV_SECRET)]).unwrap();
        assert!(s.loopback_for_dev_secret && s.gateway.listen.ip().is_loopback());
        // A real secret, or an address asked for, keeps every interface.
        let s = settings(&[("JWT_SECRET", "s3cret")]).unwrap();
        assert!(s.gateway.listen.ip().is_unspecified() && !s.loopback_for_dev_secret);
        let s = settings(&[("BIND_ADDR", "0.0.0.0")]).unwrap();
        assert!(s.gateway.listen.ip().is_unspecified() && !s.loopback_for_dev_secret);
        let flags = Overrides {
            bind_addr: Some(IpAddr::from([0, 0, 0, 0])),
            ..Default::default()
        };
        let s = serve_settings(&env(&[]), &FileSettings::default(), &flags).unwrap();
        assert!(s.gateway.listen.ip().is_unspecified() && !s.loopback_for_dev_secret);
    }

    #[test]
    fn environment_variables_are_read_and_flags_win() {
        let e = env(&[
            ("WS_PORT", "4000"),
            ("WS_PATH", "/socket"),
            ("METRICS_PORT", "9100"),
            ("MAX_CONNECTIONS", "5"),
            ("MESSAGE_RETENTION_HOURS", "2"),
            ("NODE_ID", "node-a"),
            ("JWT_SECRET", "s3cret"),
            ("ENABLE_METRICS", "true"),
        ]);
        let flags = Overrides {
            ws_port: Some(5000),
            ..Default::default()
        };
        let s = serve_settings(&e, &FileSettings::default(), &flags).unwrap();
        assert_eq!(s.gateway.listen.port(), 5000);
        assert_eq!(s.gateway.ws_path, "/socket");
        assert_eq!(s.gateway.admin_listen.unwrap().port(), 9100);
        assert_eq!(s.gateway.max_connections, 5);
        assert_eq!(s.broker.retention(), Duration::from_secs(7200));
        assert_eq!(s.gateway.node_id, "node-a");
        assert_eq!(
            s.gateway.auth.keys,
            bellhop_gateway::KeySource::Secret(b"s3cret".to_vec())
        );
        assert!(!s.dev_secret);
        assert!(settings(&[("ENABLE_METRICS", "false")])
            .unwrap()
            .gateway
            .admin_listen
            .is_none());
    }

    #[test]
    fn the_file_is_used_below_the_environment() {
        let file: FileSettings = toml::from_str("ws_port = 4100\nnode_id = \"from-file\"").unwrap();
        let s = serve_settings(
            &env(&[("NODE_ID", "from-env")]),
            &file,
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(s.gateway.listen.port(), 4100);
        assert_eq!(s.gateway.node_id, "from-env");
        assert!(
            toml::from_str::<FileSettings>("wsport = 1").is_err(),
            "typos in the file are errors"
        );
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (k, v) in [
            ("WS_PORT", "http"),
            ("MAX_CONNECTIONS", "0"),
            ("MESSAGE_RETENTION_HOURS", "0"),
            ("ENABLE_METRICS", "maybe"),
            ("NODE_ID", "bad id"),
            ("LOG_FORMAT", "xml"),
            ("BELLHOP_ENV", "staging"),
        ] {
            let err = settings(&[(k, v)]).unwrap_err().to_string();
            let named =
                err.contains(k) || (k == "MAX_CONNECTIONS" && err.contains("MAX_CONNECTIONS"));
            assert!(named, "{k}={v}: {err}");
        }
    }

    #[test]
    fn production_refuses_missing_weak_and_development_secrets() {
        let prod = |secret: Option<&str>| {
            let mut pairs = vec![("BELLHOP_ENV", "production")];
            if let Some(s) = secret {
                pairs.push(("JWT_SECRET", s));
            }
            settings(&pairs)
        };
        assert!(prod(None)
            .unwrap_err()
            .to_string()
            .contains("JWT_SECRET must be set"));
        assert!(prod(Some(DEV_SECRET))
            .unwrap_err()
            .to_string()
            .contains("development secret"));
        assert!(prod(Some("short"))
            .unwrap_err()
            .to_string()
            .contains("at least 32"));
        let ok = prod(Some("0123456789abcdef0123456789abcdef")).unwrap();
        assert_eq!(ok.log_format, LogFormat::Json);
        assert!(!ok.dev_secret);
    }

    #[test]
    fn tls_is_configured_by_ssl_settings() {
        assert!(settings(&[]).unwrap().gateway.tls.is_none());
        let on = [
            ("SSL_ENABLED", "true"),
            ("SSL_CERT_PATH", "/tls/tls.crt"),
            ("SSL_KEY_PATH", "/tls/tls.key"),
        ];
        let tls = settings(&on).unwrap().gateway.tls.unwrap();
        assert_eq!(tls, TlsConfig::new("/tls/tls.crt", "/tls/tls.key"));
        assert_eq!(tls.min_version, TlsVersion::Tls12);
        assert_eq!(tls.reload_interval, Some(Duration::from_secs(10)));

        let with = |extra: &[(&str, &str)]| {
            let mut pairs = on.to_vec();
            pairs.extend_from_slice(extra);
            settings(&pairs)
        };
        for v in ["1.3", "TLSv1.3", " tlsv1.3 ", "TLS1.3"] {
            let tls = with(&[("SSL_MIN_VERSION", v)])
                .unwrap()
                .gateway
                .tls
                .unwrap();
            assert_eq!(tls.min_version, TlsVersion::Tls13, "{v}");
        }
        for v in ["1.1", "1.0", "ssl3", "1.4"] {
            let e = with(&[("SSL_MIN_VERSION", v)]).unwrap_err().to_string();
            assert!(e.contains("SSL_MIN_VERSION"), "{v}: {e}");
        }
        let tls = with(&[("SSL_RELOAD_INTERVAL_SECONDS", "0")])
            .unwrap()
            .gateway
            .tls
            .unwrap();
        assert_eq!(tls.reload_interval, None, "0 turns the poll off");
        let e = with(&[("SSL_RELOAD_INTERVAL_SECONDS", "x")]).unwrap_err();
        assert!(e.to_string().contains("SSL_RELOAD_INTERVAL_SECONDS"), "{e}");

        // A path missing is named.
        let e = settings(&[("SSL_ENABLED", "1"), ("SSL_KEY_PATH", "/k")]).unwrap_err();
        assert!(e.to_string().contains("SSL_CERT_PATH"), "{e}");
        let e = settings(&[("SSL_ENABLED", "yes"), ("SSL_CERT_PATH", "/c")]).unwrap_err();
        assert!(e.to_string().contains("SSL_KEY_PATH"), "{e}");

        // From the file, below the environment.
        let file: FileSettings = toml::from_str(
            "ssl_enabled = true\nssl_cert_path = \"/f.crt\"\nssl_key_path = \"/f.key\"\nssl_min_version = \"1.3\"\nssl_reload_interval_seconds = 30",
        )
        .unwrap();
        let s = serve_settings(
            &env(&[("SSL_KEY_PATH", "/env.key")]),
            &file,
            &Overrides::default(),
        )
        .unwrap();
        let tls = s.gateway.tls.unwrap();
        assert_eq!(tls.cert_path, std::path::Path::new("/f.crt"));
        assert_eq!(tls.key_path, std::path::Path::new("/env.key"));
        assert_eq!(tls.min_version, TlsVersion::Tls13);
        assert_eq!(tls.reload_interval, Some(Duration::from_secs(30)));

        // Paths without SSL_ENABLED: plain, flagged so the node can warn.
        let s = settings(&[("SSL_CERT_PATH", "/c"), ("SSL_KEY_PATH", "/k")]).unwrap();
        assert!(s.gateway.tls.is_none() && s.tls_paths_ignored);
        assert!(!settings(&on).unwrap().tls_paths_ignored);
    }

    #[test]
    fn public_keys_pin_rs256_or_es256_and_need_exactly_one_key_source() {
        use bellhop_testkit::{jwks, KeyFiles, TestSigningKey};
        let files = KeyFiles::new();
        let ec = TestSigningKey::ec("e1");
        let pem = files.write("ec.pem", &ec.public_pem);
        let set = files.write("jwks.json", &jwks(&[&ec]));
        let (pem, set) = (pem.to_str().unwrap(), set.to_str().unwrap());
        let s = settings(&[
            ("BELLHOP_ENV", "production"),
            ("JWT_ALGORITHM", "es256"),
            ("JWT_PUBLIC_KEY_PATH", pem),
            ("JWT_ISSUER", "https://id.example"),
            ("JWT_AUDIENCE", "bellhop"),
            ("JWT_LEEWAY_SECONDS", "5"),
            ("JWT_KEYS_RELOAD_SECS", "3"),
        ])
        .unwrap();
        let auth = &s.gateway.auth;
        assert_eq!(auth.algorithm, JwtAlgorithm::Es256);
        assert_eq!(auth.keys, KeySource::PublicKeyFile(pem.into()));
        assert_eq!(auth.issuer.as_deref(), Some("https://id.example"));
        assert_eq!(auth.audience.as_deref(), Some("bellhop"));
        assert_eq!(auth.leeway, Duration::from_secs(5));
        assert_eq!(auth.keys_reload_interval, Duration::from_secs(3));
        assert!(!s.dev_secret, "no JWT_SECRET is needed in production");
        let file: FileSettings = toml::from_str(&format!(
            "jwt_algorithm = \"ES256\"\njwt_jwks_path = {set:?}"
        ))
        .unwrap();
        let s = serve_settings(&env(&[]), &file, &Overrides::default()).unwrap();
        assert_eq!(s.gateway.auth.keys, KeySource::JwksFile(set.into()));
        let defaults = settings(&[]).unwrap().gateway.auth;
        assert_eq!(defaults.algorithm, JwtAlgorithm::Hs256);
        assert_eq!(defaults.leeway, Duration::from_secs(30));
        assert_eq!(defaults.keys_reload_interval, Duration::from_secs(10));
        let missing = files.path("absent.pem");
        let missing = missing.to_str().unwrap();
        for (pairs, needles) in [
            (
                vec![("JWT_PUBLIC_KEY_PATH", pem)],
                vec!["JWT_ALGORITHM=RS256 or ES256"],
            ),
            (
                vec![("JWT_ALGORITHM", "HS256"), ("JWT_JWKS_PATH", set)],
                vec!["JWT_JWKS_PATH is set", "HS256"],
            ),
            (
                vec![("JWT_ALGORITHM", "ES256")],
                vec!["JWT_PUBLIC_KEY_PATH or JWT_JWKS_PATH"],
            ),
            (
                vec![
                    ("JWT_ALGORITHM", "ES256"),
                    ("JWT_PUBLIC_KEY_PATH", pem),
                    ("JWT_JWKS_PATH", set),
                ],
                vec!["both set"],
            ),
            (
                vec![
                    ("JWT_ALGORITHM", "ES256"),
                    ("JWT_PUBLIC_KEY_PATH", pem),
                    ("JWT_SECRET", "x"),
                ],
                vec!["JWT_SECRET is set"],
            ),
            (
                vec![("JWT_ALGORITHM", "none")],
                vec!["JWT_ALGORITHM=\"none\" is invalid"],
            ),
            (
                vec![("JWT_ALGORITHM", "RS256"), ("JWT_PUBLIC_KEY_PATH", pem)],
                vec!["JWT_PUBLIC_KEY_PATH=", "not an RSA public key"],
            ),
            (
                vec![("JWT_ALGORITHM", "ES256"), ("JWT_PUBLIC_KEY_PATH", missing)],
                vec!["JWT_PUBLIC_KEY_PATH=", "cannot read"],
            ),
            (
                vec![("JWT_LEEWAY_SECONDS", "601")],
                vec!["JWT_LEEWAY_SECONDS"],
            ),
            (
                vec![("JWT_LEEWAY_SECONDS", "soon")],
                vec!["JWT_LEEWAY_SECONDS"],
            ),
            (
                vec![("JWT_KEYS_RELOAD_SECS", "0")],
                vec!["JWT_KEYS_RELOAD_SECS"],
            ),
        ] {
            let err = format!("{:#}", settings(&pairs).unwrap_err());
            for needle in needles {
                assert!(err.contains(needle), "{pairs:?}: {err}");
            }
        }
    }

    #[test]
    fn redis_is_configured_by_url_or_by_host_port_and_password() {
        let redis = |pairs: &[(&str, &str)]| match settings(pairs).unwrap().broker {
            BrokerSettings::Redis(c) => c,
            other => panic!("expected redis, got {other:?}"),
        };
        let c = redis(&[
            ("REDIS_URL", "redis://10.0.0.5:6380/0"),
            ("MESSAGE_RETENTION_HOURS", "2"),
        ]);
        assert_eq!(c.url, "redis://10.0.0.5:6380/0");
        assert_eq!(c.retention, Duration::from_secs(7200));
        let c = redis(&[("REDIS_HOST", "redis"), ("REDIS_PASSWORD", "p@ss word")]);
        assert_eq!(c.url, "redis://:p%40ss%20word@redis:6379");
        assert_eq!(
            redis(&[("REDIS_HOST", "r"), ("REDIS_PORT", "7000")]).url,
            "redis://r:7000"
        );
        assert!(matches!(
            settings(&[]).unwrap().broker,
            BrokerSettings::Embedded(_)
        ));
        let both = settings(&[("REDIS_URL", "redis://r"), ("REDIS_PASSWORD", "x")]).unwrap_err();
        assert!(both.to_string().contains("REDIS_PASSWORD"));
        assert!(settings(&[("REDIS_URL", "sentinel://r")])
            .unwrap_err()
            .to_string()
            .contains("REDIS_URL"));
        assert!(settings(&[("REDIS_HOST", "r"), ("REDIS_PORT", "x")])
            .unwrap_err()
            .to_string()
            .contains("REDIS_PORT"));
    }

    #[test]
    fn tls_to_redis_is_a_rediss_url_with_an_optional_authority() {
        let redis = |pairs: &[(&str, &str)]| match settings(pairs).unwrap().broker {
            BrokerSettings::Redis(c) => c,
            other => panic!("expected redis, got {other:?}"),
        };
        let c = redis(&[
            ("REDIS_HOST", "r"),
            ("REDIS_PASSWORD", "pw"),
            ("REDIS_TLS_ENABLED", "true"),
            ("REDIS_TLS_CA_PATH", "/etc/redis-ca.pem"),
        ]);
        assert_eq!(c.url, "rediss://:pw@r:6379");
        assert_eq!(
            c.tls_ca_path.as_deref(),
            Some(std::path::Path::new("/etc/redis-ca.pem"))
        );
        let c = redis(&[
            ("REDIS_URL", "redis://r:7000"),
            ("REDIS_TLS_ENABLED", "true"),
        ]);
        assert_eq!(c.url, "rediss://r:7000");
        let c = redis(&[("REDIS_URL", "rediss://r:7000")]);
        assert!(c.uses_tls() && c.tls_ca_path.is_none());
        let no_redis = settings(&[("REDIS_TLS_ENABLED", "true")]).unwrap_err();
        assert!(no_redis.to_string().contains("REDIS_URL"), "{no_redis}");
        let plain =
            settings(&[("REDIS_URL", "redis://r"), ("REDIS_TLS_CA_PATH", "/ca.pem")]).unwrap_err();
        assert!(plain.to_string().contains("REDIS_TLS_CA_PATH"), "{plain}");
    }

    #[test]
    fn edge_limits_and_cors_are_read_with_their_defaults() {
        let defaults = settings(&[]).unwrap().gateway.edge;
        assert_eq!(defaults, bellhop_gateway::EdgeConfig::default());
        assert_eq!(defaults.max_pending, 1024);
        assert_eq!(defaults.max_pending_per_ip, 32);
        assert_eq!(defaults.max_header_bytes, 16 * 1024);
        assert_eq!(defaults.body_timeout, Duration::from_secs(10));
        assert_eq!(defaults.request_timeout, Duration::from_secs(30));
        assert!(defaults.cors_allowed_origins.is_empty());
        let s = settings(&[
            ("MAX_PENDING_CONNECTIONS", "500"),
            ("MAX_PENDING_PER_IP", "8"),
            ("MAX_HEADER_BYTES", "8192"),
            ("HTTP_BODY_TIMEOUT_SECONDS", "5"),
            ("HTTP_REQUEST_TIMEOUT_SECONDS", "20"),
            (
                "CORS_ALLOWED_ORIGINS",
                "https://app.hotel.example/, http://localhost:5173",
            ),
            ("ALLOWED_ORIGINS", "https://guest.hotel.example"),
        ])
        .unwrap()
        .gateway;
        assert_eq!(
            (
                s.edge.max_pending,
                s.edge.max_pending_per_ip,
                s.edge.max_header_bytes
            ),
            (500, 8, 8192)
        );
        assert_eq!(s.edge.body_timeout, Duration::from_secs(5));
        assert_eq!(s.edge.request_timeout, Duration::from_secs(20));
        assert_eq!(
            s.edge.cors_allowed_origins,
            ["https://app.hotel.example", "http://localhost:5173"]
        );
        assert_eq!(
            s.allowed_origins,
            ["https://guest.hotel.example"],
            "separate lists"
        );
        let file: FileSettings =
            toml::from_str("cors_allowed_origins = \"*\"\nmax_header_bytes = 32768").unwrap();
        let s = serve_settings(&env(&[]), &file, &Overrides::default()).unwrap();
        assert_eq!(s.gateway.edge.cors_allowed_origins, ["*"]);
        assert_eq!(s.gateway.edge.max_header_bytes, 32768);
        for (k, v) in [
            ("MAX_PENDING_CONNECTIONS", "0"),
            ("MAX_PENDING_PER_IP", "none"),
            ("MAX_HEADER_BYTES", "100"),
            ("HTTP_BODY_TIMEOUT_SECONDS", "0"),
            ("HTTP_REQUEST_TIMEOUT_SECONDS", "1"),
            ("CORS_ALLOWED_ORIGINS", "app.hotel.example"),
        ] {
            let err = settings(&[(k, v)]).unwrap_err().to_string();
            assert!(err.contains(k), "{k}={v}: {err}");
        }
    }

    #[test]
    fn redis_cluster_mode_takes_one_node_of_the_cluster() {
        let cluster = settings(&[("REDIS_URL", "redis://r1:7000"), ("REDIS_CLUSTER", "true")]);
        match cluster.unwrap().broker {
            BrokerSettings::Redis(c) => {
                assert!(c.cluster);
                assert_eq!(c.url, "redis://r1:7000");
            }
            other => panic!("expected redis, got {other:?}"),
        }
        match settings(&[("REDIS_URL", "redis://r1:7000")])
            .unwrap()
            .broker
        {
            BrokerSettings::Redis(c) => assert!(!c.cluster),
            other => panic!("expected redis, got {other:?}"),
        }
        let alone = settings(&[("REDIS_CLUSTER", "true")]).unwrap_err();
        assert!(alone.to_string().contains("REDIS_URL"), "{alone}");
    }
}
