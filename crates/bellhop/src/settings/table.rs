//! The settings of `bellhop serve`, each declared once: its environment name, its key in the
//! optional TOML file, its flag if it has one, its type, and its default as docs/CONFIGURATION.md
//! states it. From this one table come the file's accepted keys ([`FileSettings`], typos refused),
//! a typed [`Key`] per setting that the resolution in `settings/mod.rs` reads through (the reading
//! code never spells an environment name or a file key; error messages still name the variable in
//! their text), and [`SETTINGS`] (tests only), which `settings/docs_tests.rs` compares with the
//! settings table of docs/CONFIGURATION.md row by row, and with the flags of `bellhop serve`.
//!
//! Decision: a `macro_rules!` table rather than figment or clap's `env` feature. figment would
//! layer the environment over the file, but its errors, its empty-means-unset rule and its boolean
//! spellings differ from the ones operators rely on (`WS_PORT="http" is invalid: ...`,
//! `yes`/`on`, numbers trimmed but strings not), so it would need as much glue as it saves; clap's
//! `env` would make every setting a command-line flag, where only four exist. How a value is
//! applied stays code in `settings/mod.rs`, because half of them act together (`REDIS_*`, `JWT_*`,
//! `SSL_*`, `BIND_ADDR` with the development secret). Each [`Key`] is a constant of this crate that
//! only the resolution uses, so a setting declared here but applied nowhere fails the build
//! (`dead_code`, denied by clippy).
//!
//! To add a setting: one line below, one row in docs/CONFIGURATION.md, and its application in
//! `settings/mod.rs`; the build and the docs tests say which is missing.

use anyhow::{bail, Result};
use serde::Deserialize;

/// One setting as the documentation lists it (the docs check reads them).
#[cfg(test)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Setting {
    /// The environment variable (`WS_PORT`).
    pub(super) env: &'static str,
    /// The key in the TOML file (`ws_port`); `None` for the settings only the environment and a
    /// flag give (`BELLHOP_CONFIG`, `LOG_LEVEL`).
    pub(super) file_key: Option<&'static str>,
    /// The flag of `bellhop serve` that beats the environment (`--port`), if any.
    pub(super) flag: Option<&'static str>,
    /// The default, word for word as docs/CONFIGURATION.md's table states it (Markdown).
    pub(super) default: &'static str,
}

/// A setting read from the environment, else the file: its environment name and where the file
/// holds it. `T` is the file's type, and how the environment's text is read ([`Value`]).
pub(super) struct Key<T: 'static> {
    /// The environment variable, also the name every error gives.
    pub(super) env: &'static str,
    /// The file's value.
    pub(super) file: fn(&FileSettings) -> &Option<T>,
}

// Every key is a constant, copied where it is used.
impl<T> Clone for Key<T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for Key<T> {}

/// How an environment variable's text becomes a value (the file's values are typed by TOML).
pub(super) trait Value: Sized + Clone {
    /// Reads `raw`, the value of `key`; an error names the variable and the value.
    fn from_env(key: &str, raw: &str) -> Result<Self>;
}

/// Strings are taken as they are (a secret or a path may hold spaces).
impl Value for String {
    fn from_env(_: &str, raw: &str) -> Result<Self> {
        Ok(raw.to_owned())
    }
}

/// Booleans: `true`/`1`/`yes`/`on` and `false`/`0`/`no`/`off`, any case, trimmed.
impl Value for bool {
    fn from_env(key: &str, raw: &str) -> Result<Self> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            _ => bail!("{key}={raw:?} is invalid: use true or false"),
        }
    }
}

/// Reads a trimmed value of `key` with its `FromStr`: `WS_PORT="http" is invalid: ...`.
pub(super) fn parse_env<T: std::str::FromStr>(key: &str, raw: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    raw.trim()
        .parse()
        .map_err(|e| anyhow::anyhow!("{key}={raw:?} is invalid: {e}"))
}

macro_rules! numbers {
    ($($t:ty),*) => {$(
        impl Value for $t {
            fn from_env(key: &str, raw: &str) -> Result<Self> {
                parse_env(key, raw)
            }
        }
    )*};
}
numbers!(u16, u32, u64, usize);

/// Declares the settings: `ENV / file_key: Type = "documented default" [, flag "--flag"];` for
/// those the file may hold too, `ENV = "documented default" [, flag "--flag"];` for the others.
macro_rules! settings {
    (
        file { $($env:ident / $key:ident : $ty:ty = $default:literal $(, flag $flag:literal)?;)* }
        env_only { $($only:ident = $only_default:literal $(, flag $only_flag:literal)?;)* }
    ) => {
        /// The optional TOML file: the same settings as the environment, in lower case
        /// (`ws_port = 3001`, `jwt_secret = "..."`). An unknown key is an error.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(crate) struct FileSettings {
            $($key: Option<$ty>,)*
        }

        $(
            /// Read only from the environment (or its flag), by `main.rs`.
            pub(crate) const $only: &str = stringify!($only);
        )*

        $(
            pub(super) const $env: Key<$ty> = Key {
                env: stringify!($env),
                file: |f: &FileSettings| &f.$key,
            };
        )*

        #[cfg(test)]
        /// Every setting: those of the file, then those of the environment only.
        pub(super) const SETTINGS: &[Setting] = &[
            $(Setting {
                env: stringify!($env),
                file_key: Some(stringify!($key)),
                flag: first(&[$($flag)?]),
                default: $default,
            },)*
            $(Setting {
                env: stringify!($only),
                file_key: None,
                flag: first(&[$($only_flag)?]),
                default: $only_default,
            },)*
        ];
    };
}

/// The flag of a declaration: none or one.
#[cfg(test)]
const fn first(flags: &[&'static str]) -> Option<&'static str> {
    match flags {
        [flag] => Some(*flag),
        _ => None,
    }
}

// The file's settings are applied in `settings/mod.rs`; `BELLHOP_CONFIG` (clap's `env`) and
// `LOG_LEVEL` (the log filter) in `main.rs`.
settings! {
    file {
        BIND_ADDR / bind_addr: String = "`0.0.0.0`; `127.0.0.1` while the [development secret](#the-secret-rule) is in use", flag "--bind";
        WS_PORT / ws_port: u16 = "`3001`", flag "--port";
        WS_PATH / ws_path: String = "`/ws`";
        ENABLE_METRICS / enable_metrics: bool = "`true`";
        METRICS_PORT / metrics_port: u16 = "`9090`", flag "--metrics-port";
        MAX_CONNECTIONS / max_connections: usize = "`10000`";
        MESSAGE_RETENTION_HOURS / message_retention_hours: u64 = "`24`";
        JWT_SECRET / jwt_secret: String = "development secret (development only, HS256 only)";
        JWT_ALGORITHM / jwt_algorithm: String = "`HS256`";
        JWT_PUBLIC_KEY_PATH / jwt_public_key_path: String = "none";
        JWT_JWKS_PATH / jwt_jwks_path: String = "none";
        JWT_ISSUER / jwt_issuer: String = "none (not checked)";
        JWT_AUDIENCE / jwt_audience: String = "none (not checked)";
        JWT_LEEWAY_SECONDS / jwt_leeway_seconds: u64 = "`30`";
        JWT_KEYS_RELOAD_SECS / jwt_keys_reload_secs: u64 = "`10`";
        BELLHOP_ENV / bellhop_env: String = "`development`";
        NODE_ID / node_id: String = "`$HOSTNAME`, else the content of `/etc/hostname`; `bellhop-1` when that name is not a valid id";
        DRAIN_SECONDS / drain_seconds: u64 = "`10`";
        HEARTBEAT_SECONDS / heartbeat_seconds: u64 = "`30`";
        AUTH_TIMEOUT_SECONDS / auth_timeout_seconds: u64 = "`5`";
        LOG_FORMAT / log_format: String = "`text`; `json` when `BELLHOP_ENV=production`";
        RATE_LIMIT_PER_IP / rate_limit_per_ip: u32 = "`100`";
        RATE_LIMIT_FRAMES_PER_SECOND / rate_limit_frames_per_second: u32 = "`50`";
        RATE_LIMIT_PUBLISHES_PER_MINUTE / rate_limit_publishes_per_minute: u32 = "`600`";
        PUBLISH_BYTES_PER_USER_PER_MINUTE / publish_bytes_per_user_per_minute: u32 = "`1048576` (1 MiB)";
        DEPARTMENTS / departments: String = "`frontdesk,concierge,housekeeping,laundry,maintenance,engineering,roomservice,kitchen,security,spa,management`";
        HISTORY_MAX_BYTES / history_max_bytes: usize = "`1048576` (1 MiB)";
        IDEMPOTENCY_WINDOW_SECONDS / idempotency_window_seconds: u64 = "`600`";
        MAX_MESSAGES_PER_CHANNEL / max_messages_per_channel: usize = "`10000`";
        ROUTING_RULES_PATH / routing_rules_path: String = "built-in rules";
        ESCALATION_MIN_PRIORITY / escalation_min_priority: String = "`high`";
        ESCALATION_AFTER_SECONDS / escalation_after_seconds: u64 = "`300`";
        ESCALATION_MANAGEMENT_LEVEL / escalation_management_level: u32 = "`4`";
        ESCALATION_MANAGEMENT_CHANNEL / escalation_management_channel: String = "`dept:management`";
        ESCALATION_MAX_LEVEL / escalation_max_level: u32 = "`5`";
        BAN_THRESHOLD / ban_threshold: u32 = "`20`";
        BAN_SECONDS / ban_seconds: u64 = "`600`";
        MAX_CONNECTIONS_PER_USER / max_connections_per_user: usize = "`20`";
        TRUSTED_PROXIES / trusted_proxies: String = "none";
        ALLOWED_ORIGINS / allowed_origins: String = "none (any)";
        CORS_ALLOWED_ORIGINS / cors_allowed_origins: String = "none";
        MAX_PENDING_CONNECTIONS / max_pending_connections: usize = "`1024`";
        MAX_PENDING_PER_IP / max_pending_per_ip: usize = "`32`";
        MAX_HEADER_BYTES / max_header_bytes: usize = "`16384`";
        HTTP_BODY_TIMEOUT_SECONDS / http_body_timeout_seconds: u64 = "`10`";
        HTTP_REQUEST_TIMEOUT_SECONDS / http_request_timeout_seconds: u64 = "`30`";
        SSL_ENABLED / ssl_enabled: bool = "`false`";
        SSL_CERT_PATH / ssl_cert_path: String = "none";
        SSL_KEY_PATH / ssl_key_path: String = "none";
        SSL_MIN_VERSION / ssl_min_version: String = "`1.2`";
        SSL_RELOAD_INTERVAL_SECONDS / ssl_reload_interval_seconds: u64 = "`10`";
        REDIS_URL / redis_url: String = "none (embedded broker)";
        REDIS_HOST / redis_host: String = "none";
        REDIS_PORT / redis_port: u16 = "`6379`";
        REDIS_PASSWORD / redis_password: String = "none";
        REDIS_TLS_ENABLED / redis_tls_enabled: bool = "`false`";
        REDIS_TLS_CA_PATH / redis_tls_ca_path: String = "none (system roots)";
        REDIS_CLUSTER / redis_cluster: bool = "`false`";
    }
    env_only {
        BELLHOP_CONFIG = "none", flag "--config";
        LOG_LEVEL = "`info,fred=error`";
    }
}
