//! A gateway node for the Autobahn WebSocket conformance run (`tests/autobahn/run.sh`): the
//! product's `Gateway` (listener, HTTP upgrade, `?token=` authentication, connection limit,
//! WebSocket configuration with its 64 KiB frame and message limits, session read loop with
//! heartbeats and close codes, outbound queue and writer) on the embedded broker, with one
//! difference: sessions echo each text and binary message instead of decoding it as a protocol
//! frame, and send no `welcome`. Built only with the test-only `autobahn` feature.
//!
//! Prints one line, `ws://127.0.0.1:<port>/ws?token=<jwt>`, then serves until killed.
//!
//! Usage: `cargo run -p bellhop-gateway --features autobahn --example autobahn_echo [port]`

#![allow(clippy::print_stdout)]

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bellhop_dispatcher::{Dispatcher, DispatcherConfig, MemoryBroker, MemoryConfig};
use bellhop_gateway::auth::{mint, Claims};
use bellhop_gateway::{Gateway, GatewayConfig, SessionMode};
use bellhop_protocol::Role;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port: u16 = match std::env::args().nth(1) {
        Some(p) => p.parse()?,
        None => 0,
    };
    let secret = b"autobahn-conformance-secret-not-for-production".to_vec();
    let mut config = GatewayConfig::new(secret.clone());
    config.listen = SocketAddr::from(([127, 0, 0, 1], port));
    config.admin_listen = None;
    config.node_id = "autobahn".into();
    config.session_mode = SessionMode::Echo;
    // The suite opens ~500 connections from one address and sends thousands of frames a second
    // on some: the rate limits (tested in tests/limits.rs) would refuse it; this run is about the
    // WebSocket layer.
    config.rate_limits.connections_per_ip_per_minute = 1_000_000;
    config.rate_limits.frames_per_second = 1_000_000;
    config.rate_limits.ban_threshold = 1_000_000;
    let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
    let dispatcher = Arc::new(Dispatcher::new(broker.clone(), DispatcherConfig::default()));
    let gateway = Gateway::bind(config, dispatcher, broker).await?;

    let now = SystemTime::now().duration_since(UNIX_EPOCH)?;
    let claims = Claims {
        sub: "autobahn".into(),
        role: Role::Staff,
        prop: "h1".into(),
        rooms: Vec::new(),
        depts: Vec::new(),
        exp: (now + Duration::from_secs(24 * 3600)).as_secs(),
        iat: Some(now.as_secs()),
        nbf: None,
        iss: None,
        aud: None,
    };
    let token = mint(&secret, &claims)?;
    println!("ws://{}/ws?token={token}", gateway.local_addr());
    std::io::stdout().flush()?;

    tokio::signal::ctrl_c().await?;
    gateway.shutdown().await;
    Ok(())
}
