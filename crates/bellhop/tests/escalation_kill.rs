//! Escalation survives a SIGKILL: two real `bellhop serve` processes on one real `redis-server`
//! with `ESCALATION_AFTER_SECONDS=2` and `ESCALATION_MAX_LEVEL=4`. An urgent request is opened
//! through node A, A is killed with SIGKILL at once, and node B must fire every level (2, 3, 4;
//! 4 also to `dept:management`) exactly once; and a restart of every node across a due time
//! neither stops nor duplicates a level. Prints its figures (`-- --nocapture`).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use support::{serve, token};

/// Escalations fast enough for a test.
const ESCALATION: &[(&str, &str)] = &[
    ("ESCALATION_AFTER_SECONDS", "2"),
    ("ESCALATION_MAX_LEVEL", "4"),
];

use std::net::SocketAddr;
use std::time::Duration;

use bellhop_protocol::Role;
use bellhop_testkit::RedisServer;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

/// Longest the whole case may run.
const CASE_DEADLINE: Duration = Duration::from_secs(40);

/// One HTTP/1.1 request to the API; the JSON body of the answer.
async fn http(addr: SocketAddr, method: &str, path: &str, token: &str, body: &str) -> Value {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let (_, body) = out.split_once("\r\n\r\n").unwrap();
    serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {out}"))
}

/// Escalations in a channel's history on `node`: their levels.
async fn levels(node: SocketAddr, token: &str, channel: &str, id: &str) -> Vec<u64> {
    let v = http(
        node,
        "GET",
        &format!("/api/v1/channels/{channel}/history?limit=100"),
        token,
        "",
    )
    .await;
    v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| &e["message"])
        .filter(|m| m["event"] == "ESCALATION" && m["payload"]["requestId"] == id)
        .map(|m| m["payload"]["level"].as_u64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_levels_fire_exactly_once_after_the_accepting_node_is_killed() {
    let started = Instant::now();
    let deadline = started + CASE_DEADLINE;
    let redis = RedisServer::start().await;
    let mut a = serve(&redis.url(), "node-a", ESCALATION).await;
    let b = serve(&redis.url(), "node-b", ESCALATION).await;
    let t = token("pms", Role::Service);
    let body = r#"{"channel":"dept:maintenance","event":"SERVICE_REQUEST","priority":"urgent","payload":{"text":"the sink is leaking","room":"101"}}"#;
    let ack = http(a.local, "POST", "/api/v1/publish", &t, body).await;
    let id = ack["messageId"].as_str().unwrap().to_owned();
    // SIGKILL right after the ack: the request and its timer are in Redis, not in A.
    a.child.kill().await.unwrap();
    let killed_at = started.elapsed();
    let mut level = 0;
    while Instant::now() < deadline {
        let v = http(b.local, "GET", &format!("/api/v1/requests/{id}"), &t, "").await;
        level = v["request"]["level"].as_u64().unwrap();
        if level == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(level, 4, "every level fired by node B");
    let dept = levels(b.local, &t, "dept:maintenance", &id).await;
    let management = levels(b.local, &t, "dept:management", &id).await;
    println!(
        "node-kill-escalation: killed_after_ms={} dept_levels={dept:?} management_levels={management:?} elapsed_ms={}",
        killed_at.as_millis(),
        started.elapsed().as_millis()
    );
    assert_eq!(dept, vec![2, 3, 4], "each level once, in order");
    assert_eq!(management, vec![4], "management from level 4");
}

/// Every node down across a due time, then a fresh node: the overdue level fires once when the
/// cluster is back, and the later levels follow on schedule, none twice (the timers are in
/// Redis, not in any node).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escalation_survives_a_restart_of_every_node() {
    let started = Instant::now();
    let deadline = started + CASE_DEADLINE;
    let redis = RedisServer::start().await;
    let mut a = serve(&redis.url(), "node-a", ESCALATION).await;
    let t = token("pms", Role::Service);
    let body = r#"{"channel":"dept:maintenance","event":"SERVICE_REQUEST","priority":"urgent","payload":{"text":"the sink is leaking","room":"101"}}"#;
    let ack = http(a.local, "POST", "/api/v1/publish", &t, body).await;
    let id = ack["messageId"].as_str().unwrap().to_owned();
    a.child.kill().await.unwrap();
    // The whole cluster stays down past level 2's due time (2 s after the request): this wait
    // is the outage being tested, not a pause for something to settle.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let b = serve(&redis.url(), "node-b", ESCALATION).await;
    let mut level = 0;
    while Instant::now() < deadline {
        let v = http(b.local, "GET", &format!("/api/v1/requests/{id}"), &t, "").await;
        level = v["request"]["level"].as_u64().unwrap();
        if level == 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(level, 4, "every level fired after the restart");
    let dept = levels(b.local, &t, "dept:maintenance", &id).await;
    let management = levels(b.local, &t, "dept:management", &id).await;
    println!(
        "full-restart-escalation: down_ms=3000 dept_levels={dept:?} management_levels={management:?} elapsed_ms={}",
        started.elapsed().as_millis()
    );
    assert_eq!(dept, vec![2, 3, 4], "each level once, in order");
    assert_eq!(management, vec![4], "management from level 4");
}
