//! Real `bellhop serve` processes for the binary's end-to-end tests: a node on a real Redis, on
//! free ports, started and found through its JSON log; tokens it accepts.

#![allow(dead_code, unreachable_pub, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bellhop_gateway::auth::{mint, Claims};
use bellhop_protocol::Role;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_bellhop");
pub const SECRET: &str = "node-kill-test-secret-0123456789abcdef0123";
/// Longest a node may take to start.
pub const START_DEADLINE: Duration = Duration::from_secs(15);

/// A `bellhop serve` child and where it listens.
pub struct Node {
    pub child: Child,
    pub local: SocketAddr,
}

impl Node {
    pub fn url(&self) -> String {
        format!("ws://{}/ws", self.local)
    }
}

/// A socket address from a log field.
fn addr_field(v: &Value) -> SocketAddr {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("address field: {v}"))
}

/// Starts a node on Redis, on free ports, with the per-client limits raised (the tests'
/// publishers and followers are far faster than people) and `env` on top, and waits for its
/// `gateway listening` log line.
pub async fn serve(redis_url: &str, node_id: &str, env: &[(&str, &str)]) -> Node {
    let mut with_redis = vec![("REDIS_URL", redis_url)];
    with_redis.extend_from_slice(env);
    serve_with(SECRET, node_id, &with_redis).await
}

/// Starts a node accepting tokens signed with `secret`, with the per-client limits raised and
/// `env` on top (no `REDIS_URL` in it: the embedded broker), on free ports (`WS_PORT` in `env`:
/// that port, for a node restarted on the same address), and waits for its `gateway listening`
/// log line.
pub async fn serve_with(secret: &str, node_id: &str, env: &[(&str, &str)]) -> Node {
    let port = env
        .iter()
        .find(|(k, _)| *k == "WS_PORT")
        .map_or("0", |(_, v)| *v);
    let mut command = Command::new(BIN);
    command
        .args(["serve", "--port", port, "--metrics-port", "0"])
        .args(["--bind", "127.0.0.1"])
        .env_clear()
        .env("JWT_SECRET", secret)
        .env("NODE_ID", node_id)
        .env("LOG_FORMAT", "json")
        .env("RATE_LIMIT_PUBLISHES_PER_MINUTE", "10000000")
        .env("RATE_LIMIT_FRAMES_PER_SECOND", "1000000")
        .env("RATE_LIMIT_PER_IP", "1000000")
        .env("MAX_PENDING_PER_IP", "1000000");
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = tokio::time::timeout(START_DEADLINE, async {
        let mut seen = Vec::new();
        loop {
            let Some(line) = lines.next_line().await.unwrap() else {
                panic!("{node_id}: stderr ended before `gateway listening`: {seen:#?}");
            };
            seen.push(line.clone());
            let v: Value = serde_json::from_str(&line)
                .unwrap_or_else(|_| panic!("{node_id}: log line is not JSON: {line:?}"));
            if v["fields"]["message"] == "gateway listening" {
                return v;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{node_id}: no `gateway listening` within {START_DEADLINE:?}"));
    // Keep reading, so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Node {
        child,
        local: addr_field(&listening["fields"]["local_addr"]),
    }
}

/// A token of property `h1` for `sub`, valid for an hour, signed with [`SECRET`].
pub fn token(sub: &str, role: Role) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = Claims {
        sub: sub.into(),
        role,
        prop: "h1".into(),
        rooms: Vec::new(),
        depts: Vec::new(),
        exp: now + 3600,
        iat: Some(now),
        nbf: None,
        iss: None,
        aud: None,
    };
    mint(SECRET.as_bytes(), &claims).unwrap()
}
