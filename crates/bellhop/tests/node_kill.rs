//! A gateway node killed with SIGKILL while its clients are subscribed: two real `bellhop serve`
//! processes on one real `redis-server`, clients on node A, a publisher (HTTP API) on node B.
//! Node A dies mid-stream without a drain or a close frame; its clients reconnect to node B and
//! resume with `since` = the last offset they received, and must end with every acknowledged
//! message exactly once, in order. Prints its figures (`-- --nocapture`).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use support::{serve, token};

use std::time::Duration;

use bellhop_protocol::Role;
use bellhop_testkit::{Figures, Follower, HttpPublisher, PublishLog, RedisServer};
use tokio::sync::watch;
use tokio::time::Instant;

/// Longest the whole case may run.
const CASE_DEADLINE: Duration = Duration::from_secs(28);
/// The publisher alternates between these.
const CHANNELS: [&str; 2] = ["room:7", "room:8"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_mid_stream_loses_its_clients_nothing() {
    const N: u64 = 600;
    const FOLLOWERS: usize = 3;
    let started = Instant::now();
    let deadline = started + CASE_DEADLINE;
    let redis = RedisServer::start().await;
    let mut a = serve(&redis.url(), "node-a", &[]).await;
    let b = serve(&redis.url(), "node-b", &[]).await;

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
