//! `bellhop connect`: a small line-oriented client, enough to try the protocol by hand and to
//! script the README's tour. Every frame received is printed as one JSON line; every line of
//! standard input is sent as a text frame (an `id` is added when missing, so the client can wait
//! for every reply before it exits). `wss://` URLs are verified against the public web CAs, or
//! against `--ca` only.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use bellhop_client::transport::{self, OpenError};
use bellhop_protocol::ServerFrame;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio_tungstenite::tungstenite::Message;

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

#[allow(clippy::print_stdout)]
pub(crate) async fn run(url: &str, token: &str, options: &Options) -> Result<()> {
    let Options {
        ca,
        subscribe,
        follow,
    } = options;
    let follow = *follow;
    // Without --ca, the public web CAs are trusted for wss:// URLs.
    let tls = match ca {
        Some(path) => Some(Arc::new(
            transport::trusting(path).map_err(|e| anyhow::anyhow!("--ca {e}"))?,
        )),
        None => None,
    };
    // The SDK's transport (bellhop-client): TLS, the bearer header, a refused upgrade turned into
    // its status and the node's reason. The frames stay raw: this tool prints every one.
    let ws = match transport::open(url, tls, Some(token)).await {
        Ok(ws) => ws,
        Err(OpenError::Invalid(e)) => return Err(anyhow::anyhow!(e)),
        Err(e) => return Err(anyhow::Error::new(e).context(format!("cannot connect to {url}"))),
    };
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
                        // A reply ends the wait for its request.
                        let is_reply = v.get("type").and_then(Value::as_str).is_some_and(ServerFrame::is_reply_type);
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
