//! `bellhop connect`: a small line-oriented client, enough to try the protocol by hand and to
//! script the README's tour. Every frame received is printed as one JSON line; every line of
//! standard input is sent as a text frame (an `id` is added when missing, so the client can wait
//! for every reply before it exits). `wss://` URLs are verified against the public web CAs, or
//! against `--ca` only.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

/// Replies that answer a request (and so end the wait for it).
const REPLIES: &[&str] = &[
    "welcome",
    "subscribed",
    "unsubscribed",
    "ack",
    "history",
    "presence",
    "pong",
    "error",
];

/// How `bellhop connect` behaves, beside where it connects and with which token.
#[derive(Debug)]
pub(crate) struct Options {
    /// `--ca`: a PEM file of CA certificates to trust (instead of the public web CAs) for wss.
    pub(crate) ca: Option<PathBuf>,
    /// `--subscribe`: channels to subscribe to right after connecting.
    pub(crate) subscribe: Vec<String>,
    /// `--follow`: keep running after standard input ends.
    pub(crate) follow: bool,
}

/// A TLS client configuration that trusts exactly the CA certificates in `path`.
fn trusting(path: &Path) -> Result<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("--ca {}: cannot read PEM certificates", path.display()))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        anyhow::bail!("--ca {}: no usable CA certificate in it", path.display());
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS client")?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Most bytes of a refusal's body shown: the server's reason is one short JSON object.
const MAX_REASON_BYTES: usize = 512;

/// An upgrade the server refused (401, 403, 429, 503, ...) becomes its status and the reason
/// the server gave in the body (`{"error":{"code":..,"message":..}}`), instead of the status
/// alone; every other error is kept as it is.
fn refusal(error: tokio_tungstenite::tungstenite::Error) -> anyhow::Error {
    use tokio_tungstenite::tungstenite::Error;
    let Error::Http(response) = &error else {
        return error.into();
    };
    let status = response.status();
    let body = response.body().as_deref().unwrap_or_default();
    let body = &body[..body.len().min(MAX_REASON_BYTES)];
    let reason = match serde_json::from_slice::<Value>(body) {
        Ok(v) => match v.pointer("/error/message").and_then(Value::as_str) {
            Some(message) => {
                let code = v.pointer("/error/code").and_then(Value::as_str);
                format!("{}: {message}", code.unwrap_or("error"))
            }
            None => v.to_string(),
        },
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    };
    let retry = response
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .map(|s| format!(" (retry after {s} s)"))
        .unwrap_or_default();
    if reason.is_empty() {
        anyhow::anyhow!("the server refused the upgrade: HTTP {status}{retry}")
    } else {
        anyhow::anyhow!("the server refused the upgrade: HTTP {status}: {reason}{retry}")
    }
}

#[allow(clippy::print_stdout)]
pub(crate) async fn run(url: &str, token: &str, options: &Options) -> Result<()> {
    let Options {
        ca,
        subscribe,
        follow,
    } = options;
    let follow = *follow;
    let mut request = url.into_client_request().context("invalid URL")?;
    request.headers_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().context("invalid token")?,
    );
    // Without --ca, tokio-tungstenite trusts the public web CAs for wss:// URLs.
    let connector = match ca {
        Some(path) => Some(Connector::Rustls(Arc::new(trusting(path)?))),
        None => None,
    };
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(request, None, true, connector)
        .await
        .map_err(refusal)
        .with_context(|| format!("cannot connect to {url}"))?;
    let (mut tx, mut rx) = ws.split();
    let mut next_id = 1u64;
    let mut waiting = HashSet::new();
    for channel in subscribe {
        let frame = serde_json::json!({"type": "subscribe", "channel": channel, "id": next_id});
        waiting.insert(next_id);
        next_id += 1;
        tx.send(Message::text(frame.to_string())).await?;
    }
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut input_open = true;
    loop {
        if !input_open && waiting.is_empty() && !follow {
            let _ = tx.close().await;
            return Ok(());
        }
        tokio::select! {
            line = lines.next_line(), if input_open => match line? {
                None => input_open = false,
                Some(line) if line.trim().is_empty() => {}
                Some(line) => {
                    let mut value: Value = serde_json::from_str(&line).with_context(|| format!("not JSON: {line}"))?;
                    if let Value::Object(map) = &mut value {
                        let id = match map.get("id").and_then(Value::as_u64) {
                            Some(id) => id,
                            None => {
                                let id = next_id;
                                next_id += 1;
                                map.insert("id".into(), id.into());
                                id
                            }
                        };
                        // typing has no reply
                        if map.get("type").and_then(Value::as_str) != Some("typing") {
                            waiting.insert(id);
                        }
                    }
                    tx.send(Message::text(value.to_string())).await?;
                }
            },
            frame = rx.next() => match frame {
                None => return Ok(()),
                Some(Err(e)) => return Err(e).context("connection failed"),
                Some(Ok(Message::Text(text))) => {
                    println!("{text}");
                    if let Ok(v) = serde_json::from_str::<Value>(&text) {
                        let is_reply = v.get("type").and_then(Value::as_str).is_some_and(|t| REPLIES.contains(&t));
                        if let (true, Some(id)) = (is_reply, v.get("id").and_then(Value::as_u64)) {
                            waiting.remove(&id);
                        }
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    if let Some(f) = frame {
                        eprintln!("closed by server: {} {}", u16::from(f.code), f.reason);
                    }
                    return Ok(());
                }
                Some(Ok(_)) => {}
            },
        }
    }
}
