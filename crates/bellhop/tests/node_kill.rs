//! A gateway node killed with SIGKILL while its clients are subscribed: two real `bellhop serve`
//! processes on one real `redis-server`, clients on node A, a publisher (HTTP API) on node B.
//! Node A dies mid-stream without a drain or a close frame; its clients reconnect to node B and
//! resume with `since` = the last offset they received, and must end with every acknowledged
//! message exactly once, in order. Prints its figures (`-- --nocapture`).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use bellhop_gateway::auth::{mint, Claims};
use bellhop_protocol::Role;
use bellhop_testkit::{Figures, Follower, HttpPublisher, PublishLog, RedisServer};
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_bellhop");
const SECRET: &str = "node-kill-test-secret-0123456789abcdef0123";
/// Longest a node may take to start.
const START_DEADLINE: Duration = Duration::from_secs(15);
/// Longest the whole case may run.
const CASE_DEADLINE: Duration = Duration::from_secs(28);
/// The publisher alternates between these.
const CHANNELS: [&str; 2] = ["room:7", "room:8"];

/// A `bellhop serve` child and where it listens.
struct Node {
    child: Child,
    local: SocketAddr,
}

impl Node {
    fn url(&self) -> String {
        format!("ws://{}/ws", self.local)
    }
}

/// A socket address from a log field.
fn addr_field(v: &Value) -> SocketAddr {
    v.as_str()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("address field: {v}"))
}

/// Starts a node on Redis, on free ports, and waits for its `gateway listening` log line.
async fn serve(redis_url: &str, node_id: &str) -> Node {
    let mut child = Command::new(BIN)
        .args(["serve", "--port", "0", "--metrics-port", "0"])
        .args(["--bind", "127.0.0.1"])
        .env_clear()
        .env("REDIS_URL", redis_url)
        .env("JWT_SECRET", SECRET)
        .env("NODE_ID", node_id)
        .env("LOG_FORMAT", "json")
        // The test's publisher and followers are far faster than people.
        .env("RATE_LIMIT_PUBLISHES_PER_MINUTE", "10000000")
        .env("RATE_LIMIT_FRAMES_PER_SECOND", "1000000")
        .env("RATE_LIMIT_PER_IP", "1000000")
        .env("MAX_PENDING_PER_IP", "1000000")
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

fn token(sub: &str, role: Role) -> String {
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_loses_its_clients_nothing() {
    const N: u64 = 600;
    const FOLLOWERS: usize = 3;
    let started = Instant::now();
    let deadline = started + CASE_DEADLINE;
    let redis = RedisServer::start().await;
    let mut a = serve(&redis.url(), "node-a").await;
    let b = serve(&redis.url(), "node-b").await;

    // Clients on A; when A is gone they reconnect to the first node that answers: B.
    let (targets, rx) = watch::channel(None);
    let mut handles = Vec::new();
    for i in 0..FOLLOWERS {
        let urls = vec![a.url(), b.url()];
        let t = token(&format!("s{i}"), Role::Staff);
        let f = Follower::start(&format!("follower-{i}"), urls, &t, &CHANNELS, deadline).await;
        handles.push(tokio::spawn(f.follow(rx.clone(), deadline)));
    }
    let publisher = HttpPublisher::new(b.local, &token("pms", Role::Service));
    let mut log = PublishLog::default();
    let mut killed_after = None;
    for n in 0..N {
        if n == N / 3 {
            // SIGKILL: no drain, no close frames; the kernel resets A's sockets.
            a.child.kill().await.unwrap();
            killed_after = Some(log.acks.len());
        }
        publisher
            .publish(&mut log, CHANNELS[n as usize % 2], n, deadline)
            .await;
    }
    targets.send_replace(Some(log.targets()));
    let mut done = Vec::new();
    for h in handles {
        done.push(h.await.expect("follower task"));
    }
    let received: Vec<&[_]> = done.iter().map(|f| f.received.as_slice()).collect();
    let figures = Figures::tally(&log, &received);
    let reconnects: u32 = done.iter().map(|f| f.connections - 1).sum();
    let not_recovered: u32 = done.iter().map(|f| f.not_recovered).sum();
    println!(
        "{}",
        figures.line(
            "node-sigkill",
            &format!(
                "killed_after_acks={} client_reconnects={reconnects} not_recovered={not_recovered} \
                 elapsed_ms={}",
                killed_after.unwrap_or_default(),
                started.elapsed().as_millis()
            )
        )
    );
    figures.assert_clean();
    assert_eq!(
        figures.failed_attempts, 0,
        "the publisher's node stayed up: {:?}",
        log.failure_reasons
    );
    assert_eq!(not_recovered, 0, "every resume on B recovers");
    for f in &done {
        assert_eq!(
            f.connections,
            2,
            "{} reconnects once, to B: {:?}",
            f.name(),
            f.endings
        );
        assert!(
            f.endings.iter().all(|e| !e.starts_with("close")),
            "{}: a killed node sends no close frame: {:?}",
            f.name(),
            f.endings
        );
    }
}
