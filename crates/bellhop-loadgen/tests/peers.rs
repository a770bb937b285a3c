//! The peer adapters against the real peer servers: a nats-server started with
//! `systems::nats::server_config` (single, and a two-server cluster), and
//! `bench/peers/socketio/server.js` on Node. Two connections each, driven through the `Wire`
//! directly: one subscribes, the other publishes, and every payload must arrive once, in order,
//! on the right channel. Skipped (with a message, not a failure) when nats-server, node or the
//! Socket.IO server's node_modules are missing: `bench/peers/install.sh` installs them.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use bellhop_loadgen::systems::{nats, Event, Payload, Sub, System, User, Wire, WireOptions};
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// How long any single step may take before the test fails.
const STEP: Duration = Duration::from_secs(20);

/// A free loopback port (never one of the local services' 4222 and 6379).
fn free_port() -> u16 {
    loop {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        if port != 4222 && port != 6379 {
            return port;
        }
    }
}

fn scratch_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let dir = std::env::temp_dir().join(format!(
        "bellhop-peers-{tag}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn have(program: &str) -> bool {
    std::process::Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// How many times a nats-server (or a cluster of them) is started again on fresh free ports
/// when a port picked free was taken before the server bound it.
const PORT_ATTEMPTS: usize = 5;

/// A nats-server on free ports with the benchmark's configuration; returns it and its
/// WebSocket base URL.
async fn start_nats(dir: &Path, name: &str) -> (Child, String) {
    for _ in 0..PORT_ATTEMPTS {
        if let Some(started) = try_start_nats(dir, name, None).await {
            return started;
        }
    }
    panic!("nats-server {name}: a port was taken on each of {PORT_ATTEMPTS} attempts");
}

/// Two nats-servers routed to each other, on free ports; returns them and their WebSocket base
/// URLs. A route port is in both configurations, so a taken one restarts both.
async fn start_nats_cluster(dir: &Path) -> [(Child, String); 2] {
    for _ in 0..PORT_ATTEMPTS {
        let (route_a, route_b) = (free_port(), free_port());
        let Some(a) = try_start_nats(dir, "a", Some((route_a, vec![route_b]))).await else {
            continue;
        };
        if let Some(b) = try_start_nats(dir, "b", Some((route_b, vec![route_a]))).await {
            return [a, b];
        }
    }
    panic!("nats cluster: a port was taken on each of {PORT_ATTEMPTS} attempts");
}

/// Starts a nats-server on free ports with the benchmark's configuration and waits until it
/// says it listens for WebSocket clients and, in a cluster, for routes (it binds the route
/// port last, after "Server is ready", and exits when that fails). `None` when it exited
/// because a port was taken meanwhile; any other failure fails the test with its log.
async fn try_start_nats(
    dir: &Path,
    name: &str,
    cluster: Option<(u16, Vec<u16>)>,
) -> Option<(Child, String)> {
    let client = free_port();
    let ws = free_port();
    let clustered = cluster.is_some();
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(&conf, nats::server_config(client, ws, cluster)).unwrap();
    let check = std::process::Command::new("nats-server")
        .arg("-t")
        .arg("-c")
        .arg(&conf)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "nats-server refuses the configuration:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    // The log goes to stderr, read here as it comes and copied to `{name}.log`.
    let mut child = Command::new("nats-server")
        .arg("-c")
        .arg(&conf)
        .kill_on_drop(true)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let mut seen = String::new();
    let listening = timeout(STEP, async {
        let (mut on_ws, mut on_routes) = (false, !clustered);
        while let Ok(Some(line)) = lines.next_line().await {
            on_ws |= line.contains("Listening for websocket clients on");
            on_routes |= line.contains("Listening for route connections on");
            seen.push_str(&line);
            seen.push('\n');
            if on_ws && on_routes {
                return true;
            }
        }
        false
    })
    .await
    .unwrap_or_else(|_| panic!("nats-server {name} not listening after {STEP:?}:\n{seen}"));
    std::io::Write::write_all(&mut log, seen.as_bytes()).unwrap();
    if !listening {
        let status = child.wait().await.unwrap();
        if seen.contains("address already in use") {
            return None;
        }
        panic!("nats-server {name} exited ({status}) before listening:\n{seen}");
    }
    // Keep copying, so the log is there for a failure and the child never blocks on the pipe.
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            let _ = std::io::Write::write_all(&mut log, format!("{line}\n").as_bytes());
        }
    });
    Some((child, format!("ws://127.0.0.1:{ws}")))
}

/// One WebSocket connection driven through a `Wire`, as the load generator's driver does.
struct Conn {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    wire: Box<dyn Wire>,
    chans: Vec<String>,
    events: VecDeque<Event>,
}

impl Conn {
    async fn open(system: System, base: &str, id: &str) -> Conn {
        let wire = system.wire(&WireOptions::default());
        let user = User {
            id: id.to_owned(),
            token: String::new(),
        };
        let url = wire.url(base, &user);
        let (ws, _) = timeout(STEP, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .unwrap_or_else(|_| panic!("connecting to {url} timed out"))
            .unwrap_or_else(|e| panic!("connecting to {url}: {e}"));
        let mut conn = Conn {
            ws,
            wire,
            chans: Vec::new(),
            events: VecDeque::new(),
        };
        for m in conn.wire.hello(&user) {
            conn.ws.send(m).await.unwrap();
        }
        match conn.next().await {
            Event::Ready => conn,
            other => panic!("{id}: expected Ready, got {other:?}"),
        }
    }

    /// The next event that is not a reply (replies are sent back at once).
    async fn next(&mut self) -> Event {
        loop {
            if let Some(event) = self.events.pop_front() {
                match event {
                    Event::Reply(m) => self.ws.send(m).await.unwrap(),
                    Event::Error(e) => panic!("the server reported an error: {e}"),
                    other => return other,
                }
                continue;
            }
            let message = timeout(STEP, self.ws.next())
                .await
                .expect("no message from the server in time")
                .expect("the server closed the connection")
                .unwrap();
            let mut out = Vec::new();
            self.wire.decode(&message, &self.chans, &mut out);
            self.events.extend(out);
        }
    }

    async fn subscribe(&mut self, chans: &[&str]) {
        self.chans = chans.iter().map(|c| (*c).to_owned()).collect();
        let subs: Vec<Sub> = self
            .chans
            .iter()
            .map(|c| Sub {
                channel: c.clone(),
                since: None,
            })
            .collect();
        for m in self.wire.subscribe(&subs) {
            self.ws.send(m).await.unwrap();
        }
        for want in 0..subs.len() {
            match self.next().await {
                Event::Subscribed { index, .. } => assert_eq!(index, want),
                other => panic!("expected Subscribed {want}, got {other:?}"),
            }
        }
    }

    async fn publish(&mut self, channel: &str, payload: &Payload) {
        let m = self.wire.publish(channel, &payload.encode(16), 0);
        self.ws.send(m).await.unwrap();
    }

    /// The next delivery: (channel index, payload).
    async fn delivery(&mut self) -> (usize, Payload) {
        match self.next().await {
            Event::Delivery(d) => (d.index, d.payload),
            other => panic!("expected a delivery, got {other:?}"),
        }
    }
}

/// `a` subscribes to a room and its user channel, `b` to the room only; `b` publishes on both
/// channels, interleaved, then a last message on each. `a` must get exactly the sequence sent
/// (one publisher, one subscriber: the order is total) and `b` its own room messages back.
async fn round_trip(system: System, base_a: &str, base_b: &str) {
    let mut a = Conn::open(system, base_a, "lg-1").await;
    let mut b = Conn::open(system, base_b, "lg-2").await;
    a.subscribe(&["room:12", "user:lg-1"]).await;
    b.subscribe(&["room:12"]).await;

    let chans = ["room:12", "user:lg-1"];
    let mut sent = Vec::new();
    for s in 0..12u64 {
        let ch = (s % 2) as usize;
        let p = Payload {
            t: 1_000 + s,
            s,
            p: 2,
        };
        b.publish(chans[ch], &p).await;
        sent.push((ch, p));
    }
    for (i, ch) in chans.iter().enumerate() {
        let p = Payload {
            t: 9_999,
            s: 1_000 + i as u64,
            p: 2,
        };
        b.publish(ch, &p).await;
        sent.push((i, p));
    }
    let mut got = Vec::new();
    while got.len() < sent.len() {
        got.push(a.delivery().await);
    }
    assert_eq!(got, sent, "{system:?}: the subscriber's deliveries");

    let own: Vec<(usize, Payload)> = sent
        .iter()
        .filter(|(ch, _)| *ch == 0)
        .map(|(_, p)| (0, *p))
        .collect();
    let mut echoed = Vec::new();
    while echoed.len() < own.len() {
        echoed.push(b.delivery().await);
    }
    assert_eq!(echoed, own, "{system:?}: the publisher's own room messages");
}

#[tokio::test]
async fn nats_single_server_delivers_every_payload_once_in_order() {
    if !have("nats-server") {
        bellhop_testkit::skip::skip(
            "nats_single_server_delivers_every_payload_once_in_order",
            "nats-server is not installed (run bench/peers/install.sh)",
        );
        return;
    }
    let dir = scratch_dir("nats");
    let (_server, base) = start_nats(&dir, "single").await;
    round_trip(System::Nats, &base, &base).await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn nats_cluster_of_two_carries_messages_between_servers() {
    if !have("nats-server") {
        bellhop_testkit::skip::skip(
            "nats_cluster_of_two_carries_messages_between_servers",
            "nats-server is not installed (run bench/peers/install.sh)",
        );
        return;
    }
    let dir = scratch_dir("nats-cluster");
    let [(_a, base_a), (_b, base_b)] = start_nats_cluster(&dir).await;

    // Interest crosses the route asynchronously: probe until a message published on b reaches
    // a subscriber on a, then the real run starts on fresh connections.
    let mut sub = Conn::open(System::Nats, &base_a, "probe-sub").await;
    sub.subscribe(&["room:probe"]).await;
    let mut publ = Conn::open(System::Nats, &base_b, "probe-pub").await;
    let deadline = Instant::now() + STEP;
    loop {
        publ.publish("room:probe", &Payload { t: 0, s: 0, p: 0 })
            .await;
        match timeout(Duration::from_millis(100), sub.delivery()).await {
            Ok(_) => break,
            Err(_) => assert!(
                Instant::now() < deadline,
                "the two nats-servers never routed a message:\n{}",
                std::fs::read_to_string(dir.join("a.log")).unwrap_or_default()
            ),
        }
    }
    // A subscription made now still has to cross the route: wait for it the same way, with the
    // room the run uses, before publishing what is counted.
    let mut a = Conn::open(System::Nats, &base_a, "lg-1").await;
    a.subscribe(&["room:12", "user:lg-1"]).await;
    let mut b = Conn::open(System::Nats, &base_b, "lg-2").await;
    let deadline = Instant::now() + STEP;
    for (index, ch) in ["room:12", "user:lg-1"].iter().enumerate() {
        loop {
            b.publish(ch, &Payload { t: 0, s: 0, p: 0 }).await;
            match timeout(Duration::from_millis(100), a.delivery()).await {
                Ok((got, _)) => {
                    assert_eq!(got, index);
                    break;
                }
                Err(_) => assert!(Instant::now() < deadline, "{ch} never crossed the route"),
            }
        }
    }
    // Drain extra probes already in flight: publish a marker and skip up to it.
    b.publish(
        "room:12",
        &Payload {
            t: 1,
            s: u64::MAX,
            p: 0,
        },
    )
    .await;
    loop {
        if a.delivery().await.1.s == u64::MAX {
            break;
        }
    }
    for s in 0..12u64 {
        let ch = ["room:12", "user:lg-1"][(s % 2) as usize];
        b.publish(ch, &Payload { t: 2, s, p: 2 }).await;
    }
    for s in 0..12u64 {
        let (index, p) = a.delivery().await;
        assert_eq!((index, p.s), ((s % 2) as usize, s));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn socketio_delivers_every_payload_once_in_order_and_stops_on_sigterm() {
    let dir = repo_root().join("bench/peers/socketio");
    if !have("node") || !dir.join("node_modules/socket.io").is_dir() {
        bellhop_testkit::skip::skip(
            "socketio_delivers_every_payload_once_in_order_and_stops_on_sigterm",
            &format!(
                "node or {}/node_modules is missing (run bench/peers/install.sh)",
                dir.display()
            ),
        );
        return;
    }
    let mut child = Command::new("node")
        .arg("server.js")
        .current_dir(&dir)
        .env("PORT", "0")
        .env("BIND", "127.0.0.1")
        .env_remove("REDIS_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let line = timeout(STEP, lines.next_line())
        .await
        .expect("server.js did not say `listening` in time")
        .unwrap()
        .expect("server.js exited before listening");
    let port: u16 = line
        .strip_prefix("listening ")
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("unexpected first line from server.js: {line:?}"));
    assert!(port != 4222 && port != 6379);
    let base = format!("ws://127.0.0.1:{port}");
    round_trip(System::Socketio, &base, &base).await;

    // SIGTERM: a clean exit, promptly.
    let pid = child.id().unwrap();
    let killed = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status()
        .unwrap();
    assert!(killed.success());
    let status = timeout(STEP, child.wait())
        .await
        .expect("server.js did not exit after SIGTERM")
        .unwrap();
    assert!(status.success(), "server.js exited with {status}");
}
