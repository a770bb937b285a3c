//! Connecting to Redis: the client configuration for one server or a cluster ([`fred_config`]),
//! TLS trusting a given CA file (`bellhop_tls`), the client with its timeouts and reconnect policy
//! ([`build_client`]), and the mapping of client errors to [`BrokerError`] (`Unavailable` when a
//! retry can help) in words an operator reads. Shared by the broker and the request store.

use std::time::Duration;

use fred::prelude::{
    Builder, Config as FredConfig, Error as FredError, ErrorKind, ReconnectPolicy,
};
use fred::types::config::TlsConnector;

use super::RedisConfig;
use crate::broker::BrokerError;

/// What fred says, with no error kind of its own, when a command could not be sent or answered
/// because a connection went away (`ErrorKind::Unknown`): a command that used up its write attempts
/// across reconnects, a reply lost with its connection, a router with no connection for the
/// command. Found by a publish sent while Redis was being killed, which was answered `internal`.
const CLIENT_CONNECTION_TROUBLE: [&str; 7] = [
    "Too many failed write attempts",
    "Max attempts exceeded",
    "Max redirections exceeded",
    "Failed to route command",
    "Missing expected connection",
    "Missing response",
    "Failed to send command to router",
];

/// Maps a client error: connection trouble and a server that cannot serve now are `Unavailable`
/// (a retry can help), anything else `Internal`.
pub(crate) fn broker_error(error: &FredError, retry_after: Duration) -> BrokerError {
    const TRANSIENT_REPLIES: [&str; 8] = [
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "READONLY",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "NOREPLICAS",
        "OOM",
    ];
    let transient = matches!(
        error.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Routing
            | ErrorKind::Cluster
    ) || TRANSIENT_REPLIES
        .iter()
        .chain(CLIENT_CONNECTION_TROUBLE.iter())
        .any(|p| error.details().starts_with(p));
    if transient {
        BrokerError::Unavailable {
            reason: format!("redis: {}", in_words(error)),
            retry_after,
        }
    } else {
        BrokerError::Internal(format!("redis: {}", in_words(error)))
    }
}

/// A client error as an operator reads it. fred keeps an I/O error only as its debug text
/// (`Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }`), so the message
/// is taken back out of it; and a command that timed out while the connection is down is said
/// to be that, not a bare "Request timed out".
fn in_words(error: &FredError) -> String {
    let details = error.details();
    match error.kind() {
        ErrorKind::IO => {
            let message = details
                .split_once("message: \"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(m, _)| m);
            let code = details
                .split_once("code: ")
                .and_then(|(_, rest)| rest.split_once(','))
                .map(|(c, _)| c);
            match (message, code) {
                (Some(m), Some(c)) => format!("cannot reach Redis: {m} (os error {c})"),
                (Some(m), None) => format!("cannot reach Redis: {m}"),
                _ => format!("cannot reach Redis: {}", details.trim_end_matches('.')),
            }
        }
        ErrorKind::Timeout => "no reply within the command timeout: Redis is down, unreachable \
             or overloaded (the node keeps reconnecting)"
            .into(),
        _ => error.to_string(),
    }
}
/// The client configuration for `config`: one server, or (with [`RedisConfig::cluster`]) a
/// cluster discovered from the node the URL names.
pub(crate) fn fred_config(config: &RedisConfig) -> Result<FredConfig, BrokerError> {
    let invalid = |e: FredError| BrokerError::Internal(format!("REDIS_URL: {}", e.details()));
    // rustls picks its crypto from the process default; ours is ring (no C toolchain needed).
    // Whoever installed one first wins, which is fine: any installed provider is a safe one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut fred_config = if config.cluster {
        // fred names a cluster by scheme; the URL stays an ordinary one for operators.
        let url = if let Some(rest) = config.url.strip_prefix("redis://") {
            format!("redis-cluster://{rest}")
        } else if let Some(rest) = config.url.strip_prefix("rediss://") {
            format!("rediss-cluster://{rest}")
        } else {
            config.url.clone()
        };
        FredConfig::from_url_clustered(&url).map_err(invalid)?
    } else {
        let fred_config = FredConfig::from_url(&config.url).map_err(invalid)?;
        if fred_config.server.is_clustered() || fred_config.server.is_sentinel() {
            return Err(BrokerError::Internal(
                "REDIS_URL: Sentinel is not supported; for a Redis Cluster set REDIS_CLUSTER=true"
                    .into(),
            ));
        }
        fred_config
    };
    if let Some(path) = &config.tls_ca_path {
        let tls = bellhop_tls::trusting(path)
            .map_err(|e| BrokerError::Internal(format!("REDIS_TLS_CA_PATH {e}")))?;
        fred_config.tls = Some(TlsConnector::from(tls).into());
    }
    Ok(fred_config)
}

/// A client for `config` that tries a command `attempts` times and buffers `events_buffer`
/// pub/sub messages and events; it reconnects forever, backing off exponentially.
pub(crate) fn build_client(
    config: &RedisConfig,
    fred_config: FredConfig,
    attempts: u32,
    events_buffer: usize,
) -> Result<fred::clients::Client, BrokerError> {
    let ms = |d: Duration| d.as_millis().min(u32::MAX as u128) as u32;
    let mut builder = Builder::from_config(fred_config);
    builder
        .with_config(|c| c.fail_fast = true)
        .with_connection_config(|c| {
            c.connection_timeout = config.command_timeout;
            c.internal_command_timeout = config.command_timeout;
            c.max_command_attempts = attempts;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = config.command_timeout;
            p.broadcast_channel_capacity = events_buffer;
        })
        .set_policy(ReconnectPolicy::new_exponential(
            0, // never give up
            ms(config.reconnect_min_delay),
            ms(config.reconnect_max_delay),
            2,
        ));
    builder
        .build()
        .map_err(|e| BrokerError::Internal(format!("redis client: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_errors_are_printed_in_words() {
        let refused = FredError::new(
            ErrorKind::IO,
            r#"Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }"#,
        );
        assert_eq!(
            in_words(&refused),
            "cannot reach Redis: Connection refused (os error 111)"
        );
        let closed = FredError::new(ErrorKind::IO, "Connection closed.");
        assert_eq!(in_words(&closed), "cannot reach Redis: Connection closed");
        let timeout = in_words(&FredError::new(ErrorKind::Timeout, "Request timed out."));
        assert!(
            timeout.starts_with("no reply within the command timeout"),
            "{timeout}"
        );
        assert!(!timeout.contains("Request timed out"), "{timeout}");
        let reply = FredError::new(ErrorKind::Unknown, "ERR syntax error");
        assert!(in_words(&reply).contains("ERR syntax error"));
    }

    #[test]
    fn connection_trouble_is_unavailable_and_the_rest_internal() {
        let retry = Duration::from_secs(1);
        for error in [
            FredError::new(ErrorKind::IO, "broken pipe"),
            FredError::new(ErrorKind::Timeout, "timed out"),
            FredError::new(ErrorKind::Unknown, "LOADING Redis is loading the dataset"),
            FredError::new(ErrorKind::Unknown, "BUSY Redis is busy running a script"),
            FredError::new(ErrorKind::Canceled, "Connection closed unexpectedly."),
            FredError::new(ErrorKind::Unknown, "Too many failed write attempts."),
            FredError::new(ErrorKind::Unknown, "Missing response."),
        ] {
            assert!(
                matches!(broker_error(&error, retry), BrokerError::Unavailable { retry_after, .. } if retry_after == retry),
                "{error:?}"
            );
        }
        for error in [
            FredError::new(ErrorKind::Unknown, "ERR syntax error"),
            FredError::new(ErrorKind::Auth, "WRONGPASS"),
        ] {
            assert!(
                matches!(broker_error(&error, retry), BrokerError::Internal(_)),
                "{error:?}"
            );
        }
    }
}
