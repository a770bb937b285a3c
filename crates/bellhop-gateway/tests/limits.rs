//! Rate limits, bans and the other refusals of abusive clients, against real nodes and real
//! sockets: each refusal has its documented status or code, and a well-behaved client on the same
//! node keeps being served while another floods. The flood cases print the well-behaved client's
//! ping round trip with and without the flood (`cargo test --test limits -- --nocapture`); the
//! figures are reported, never asserted.
//!
//! Clients are told apart by address through `X-Forwarded-For` from a trusted proxy (the tests'
//! loopback address), which is also how a node behind a load balancer sees them.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod support;

use std::time::Duration;

use bellhop_gateway::{GatewayConfig, IpNet};
use serde_json::{json, Value};
use support::*;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Behind a trusted proxy (the loopback address the tests connect from).
fn behind_proxy(c: &mut GatewayConfig) {
    c.rate_limits.trusted_proxies = vec!["127.0.0.1/32".parse::<IpNet>().unwrap()];
}

/// A WebSocket client that the node sees as coming from `ip`.
async fn connect_from(node: &TestNode, token: &str, ip: &str) -> Client {
    let mut request = node.url().into_client_request().unwrap();
    let headers = request.headers_mut();
    headers.insert("authorization", format!("Bearer {token}").parse().unwrap());
    headers.insert("x-forwarded-for", ip.parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    let mut client = Client::from_ws(ws);
    assert_eq!(client.next().await["type"], "welcome");
    client
}

/// One upgrade attempt from `ip` with a token the node refuses after its limits: 401 while
/// within the rate, 429 beyond it. Returns the status and `Retry-After`.
async fn attempt_from(node: &TestNode, ip: &str) -> (u16, Option<u64>) {
    attempt_at(node.addr, ip).await
}

async fn attempt_at(addr: std::net::SocketAddr, ip: &str) -> (u16, Option<u64>) {
    let response = upgrade_request(
        addr,
        &[
            ("authorization", "Bearer not-a-token"),
            ("x-forwarded-for", ip),
        ],
    )
    .await;
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let retry = response
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("retry-after"))
        .map(|(_, v)| v.trim().parse().unwrap());
    (status, retry)
}

/// A WebSocket upgrade request with `headers` over a fresh socket; the response head (read up
/// to its end, or to the first bytes of a 101).
async fn upgrade_request(addr: std::net::SocketAddr, headers: &[(&str, &str)]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut head = String::from(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    let mut buf = [0u8; 1024];
    tokio::time::timeout(DEADLINE, async {
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = stream.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            raw.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("a response head within the deadline");
    String::from_utf8_lossy(&raw).into_owned()
}

/// Ping round trips of `client`, in milliseconds, sorted.
async fn ping_times(client: &mut Client, n: usize) -> Vec<f64> {
    let mut times = Vec::with_capacity(n);
    for _ in 0..n {
        let started = Instant::now();
        let pong = client.request(json!({"type": "ping"})).await;
        assert_eq!(pong["type"], "pong", "{pong}");
        times.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    times.sort_by(f64::total_cmp);
    times
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_flood_from_one_address_is_limited_while_others_are_served() {
    let node = TestNode::start_with(Backend::Memory, |c| {
        behind_proxy(c);
        c.rate_limits.connections_per_ip_per_minute = 20;
        c.rate_limits.ban_threshold = 1_000_000; // this case is about the rate, not bans
        c.rate_limits.frames_per_second = 10_000; // nor about frames
    })
    .await;
    let mut good = connect_from(&node, &staff("good", &[]), "203.0.113.5").await;
    let calm = ping_times(&mut good, 200).await;

    // The flood: two tasks hammering the upgrade from one address for as long as the good
    // client measures.
    let flooding = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut flooders = Vec::new();
    for _ in 0..2 {
        let addr = node.addr;
        let flooding = flooding.clone();
        flooders.push(tokio::spawn(async move {
            let mut seen = Vec::new();
            while flooding.load(std::sync::atomic::Ordering::Relaxed) {
                seen.push(attempt_at(addr, "198.51.100.7").await);
            }
            seen
        }));
    }
    let stormy = ping_times(&mut good, 200).await;
    // A newcomer from another address is let in during the flood.
    let mut newcomer = connect_from(&node, &staff("new", &[]), "203.0.113.6").await;
    assert_eq!(
        newcomer.request(json!({"type": "ping"})).await["type"],
        "pong"
    );
    flooding.store(false, std::sync::atomic::Ordering::Relaxed);
    let mut attempts = Vec::new();
    for f in flooders {
        attempts.extend(f.await.unwrap());
    }
    let allowed = attempts.iter().filter(|(s, _)| *s == 401).count();
    let limited: Vec<_> = attempts.iter().filter(|(s, _)| *s == 429).collect();
    println!(
        "flood=connections attempts={} let_through={allowed} refused_429={} good_ping_ms p50={:.2} p99={:.2} max={:.2} | without flood p50={:.2} p99={:.2} max={:.2}",
        attempts.len(),
        limited.len(),
        quantile(&stormy, 0.5),
        quantile(&stormy, 0.99),
        quantile(&stormy, 1.0),
        quantile(&calm, 0.5),
        quantile(&calm, 0.99),
        quantile(&calm, 1.0),
    );
    // Within the minute, at most the burst (20) got as far as the token check.
    assert!(allowed <= 20, "{allowed} attempts passed the limit");
    assert!(!limited.is_empty(), "the flood was never limited");
    assert_eq!(allowed + limited.len(), attempts.len(), "only 401 or 429");
    for (_, retry) in &limited {
        let retry = retry.expect("429 carries Retry-After");
        assert!((1..=60).contains(&retry), "Retry-After {retry}");
    }
    assert!(
        node.metric("bellhop_rate_limited_total{what=\"connection\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_keeps_hitting_the_limit_is_banned_on_every_node() {
    let nodes = {
        let mut nodes = Vec::new();
        let server = std::sync::Arc::new(bellhop_testkit::RedisServer::start().await);
        for i in 0..2 {
            let broker = redis_broker(&server).await;
            let mut node = TestNode::start_on(broker, |c| {
                c.node_id = format!("node-{i}");
                behind_proxy(c);
                c.rate_limits.connections_per_ip_per_minute = 3;
                c.rate_limits.ban_threshold = 5;
            })
            .await;
            node.redis = Some(server.clone());
            nodes.push(node);
        }
        nodes
    };
    let (a, b) = (&nodes[0], &nodes[1]);
    // Node B has not seen this address at all: it is let through (to the token check).
    assert_eq!(attempt_from(b, "198.51.100.9").await.0, 401);
    // Three within the rate, then five refusals: banned.
    for _ in 0..3 {
        assert_eq!(attempt_from(a, "198.51.100.9").await.0, 401);
    }
    for _ in 0..5 {
        assert_eq!(attempt_from(a, "198.51.100.9").await.0, 429);
    }
    a.wait_metric("bellhop_bans_total", 1.0).await;
    let (status, retry) = attempt_from(a, "198.51.100.9").await;
    assert_eq!(status, 429);
    assert!(
        retry.unwrap() > 500,
        "a ban lasts BAN_SECONDS (600): {retry:?}"
    );
    // Node B learns of the ban through Redis (wait for it, with a deadline).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (status, retry) = attempt_from(b, "198.51.100.9").await;
        if status == 429 && retry.unwrap() > 500 {
            break;
        }
        assert!(Instant::now() < deadline, "node B never enforced the ban");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        b.metric("bellhop_rate_limited_total{what=\"banned\"}")
            .await,
        1.0
    );
    // Other addresses are unaffected on both nodes.
    connect_from(a, &staff("s1", &[]), "203.0.113.5").await;
    connect_from(b, &staff("s2", &[]), "203.0.113.5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_flood_is_rate_limited_then_closed_with_1008_while_others_are_served() {
    let node = TestNode::start_with(Backend::Memory, |c| {
        // Bursts of 400: the good client's 200 pings stay within them.
        c.rate_limits.frames_per_second = 200;
        c.rate_limits.strikes_before_close = 20;
    })
    .await;
    let mut good = node.connect(&staff("good", &[])).await;
    let calm = ping_times(&mut good, 100).await;
    let mut flooder = node.connect(&staff("flood", &[])).await;
    let flood = tokio::spawn(async move {
        // Far more than the burst (400) in well under a second, without reading.
        for i in 0..2000u64 {
            if flooder
                .try_send(json!({"type": "ping", "id": i}))
                .await
                .is_err()
            {
                break; // closed on us: what the close says is read below
            }
        }
        flooder.closed().await
    });
    let stormy = ping_times(&mut good, 100).await;
    let (code, _reason, frames) = flood.await.unwrap();
    let pongs = frames.iter().filter(|f| f["type"] == "pong").count();
    let limited: Vec<&Value> = frames
        .iter()
        .filter(|f| f["type"] == "error" && f["code"] == "rate_limited")
        .collect();
    println!(
        "flood=frames sent=2000 answered={pongs} rate_limited={} close={code} good_ping_ms p50={:.2} p99={:.2} max={:.2} | without flood p50={:.2} p99={:.2} max={:.2}",
        limited.len(),
        quantile(&stormy, 0.5),
        quantile(&stormy, 0.99),
        quantile(&stormy, 1.0),
        quantile(&calm, 0.5),
        quantile(&calm, 0.99),
        quantile(&calm, 1.0),
    );
    assert_eq!(code, 1008, "a flood that goes on is closed with 1008");
    assert!(pongs >= 400, "the burst is served: {pongs}");
    assert!(pongs < 2000, "not every frame was served");
    assert!(!limited.is_empty());
    for f in &limited {
        assert!(f["retryAfterMs"].as_u64().unwrap() >= 1, "{f}");
    }
    // The good client is still connected and served.
    assert_eq!(good.request(json!({"type": "ping"})).await["type"], "pong");
    assert_eq!(
        node.metric("bellhop_rate_limited_total{what=\"flood_close\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_beyond_a_users_rate_are_refused_on_both_interfaces() {
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.rate_limits.publishes_per_user_per_minute = 30; // bursts of 3
    })
    .await;
    let mut m = node.connect(&manager("m1")).await;
    for _ in 0..3 {
        let ack = m.publish("room:1", "CHAT_MESSAGE", json!({"t": 1})).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let refused = m
        .request(
            json!({"type": "publish", "channel": "room:1", "event": "CHAT_MESSAGE", "payload": {}}),
        )
        .await;
    assert_eq!(refused["type"], "error", "{refused}");
    assert_eq!(refused["code"], "rate_limited", "{refused}");
    let wait = refused["retryAfterMs"].as_u64().unwrap();
    assert!((1..=2000).contains(&wait), "one token every 2 s: {wait}");
    // Another user is unaffected; the same user over the HTTP API is the same budget.
    let mut other = node.connect(&manager("m2")).await;
    assert_eq!(
        other.publish("room:1", "CHAT_MESSAGE", json!({})).await["type"],
        "ack"
    );
    let (status, headers, body) = http(
        node.addr,
        "POST",
        "/api/v1/publish",
        &[
            ("authorization", &format!("Bearer {}", manager("m1"))),
            ("content-type", "application/json"),
        ],
        json!({"channel": "room:1", "event": "CHAT_MESSAGE", "payload": {}})
            .to_string()
            .as_bytes(),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        headers.iter().any(|(k, _)| k == "retry-after"),
        "{headers:?}"
    );
    let body: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(body["error"]["code"], "rate_limited");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_user_are_capped_per_node() {
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.rate_limits.max_connections_per_user = 2;
    })
    .await;
    let token = staff("s1", &[]);
    let first = node.connect(&token).await;
    let _second = node.connect(&token).await;
    let mut third = node
        .connect_with(Some(&token), bellhop_protocol::Codec::Json)
        .await
        .unwrap();
    let (code, _, frames) = third.closed().await;
    assert_eq!(code, 1008);
    assert_eq!(frames[0]["code"], "rate_limited", "{frames:?}");
    // Another user is unaffected; a slot frees when a connection ends.
    // (Kept open: dropped at once, its end could bring the count to 2 before `first` ended.)
    let _s2 = node.connect(&staff("s2", &[])).await;
    drop(first);
    // `second` and `s2` remain: once the others have ended, their slot is free.
    node.wait_connections_at_most(2).await;
    let mut c = node
        .connect_with(Some(&token), bellhop_protocol::Codec::Json)
        .await
        .unwrap();
    assert_eq!(c.next().await["type"], "welcome", "the slot freed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allow_list_are_refused() {
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.allowed_origins = vec!["https://app.hotel.example".into()];
    })
    .await;
    let upgrade = |origin: Option<&'static str>| {
        let addr = node.addr;
        async move {
            let headers: Vec<(&str, &str)> = origin.map(|o| ("origin", o)).into_iter().collect();
            let response = upgrade_request(addr, &headers).await;
            response.split(' ').nth(1).unwrap().parse::<u16>().unwrap()
        }
    };
    assert_eq!(upgrade(Some("https://evil.example")).await, 403);
    assert_eq!(upgrade(Some("https://app.hotel.example")).await, 101);
    // Not a browser: no Origin, allowed (authentication still applies).
    assert_eq!(upgrade(None).await, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slowloris_request_head_is_cut_off_and_others_are_served() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.header_read_timeout = Duration::from_secs(1);
    })
    .await;
    // Half a request head, then silence.
    let mut slow = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    slow.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")
        .await
        .unwrap();
    let started = Instant::now();
    // Meanwhile a normal client is served.
    let mut good = node.connect(&staff("good", &[])).await;
    assert_eq!(good.request(json!({"type": "ping"})).await["type"], "pong");
    // The node gives up on the slow one: its socket ends (an error response or EOF).
    let mut rest = Vec::new();
    tokio::time::timeout(DEADLINE, slow.read_to_end(&mut rest))
        .await
        .expect("the node closes a request head that never completes")
        .ok();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900),
        "cut off by the header timeout, not at once: {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_protocol_violation_is_closed_with_1002() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let node = TestNode::start(Backend::Memory).await;
    let token = staff("s1", &[]);
    let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    // A client frame without a mask: forbidden by RFC 6455 §5.1.
    stream.write_all(&[0x81, 0x02, b'h', b'i']).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("the node closes the connection")
        .ok();
    // After the 101 head and the welcome frame, a close frame (0x88) with code 1002.
    let body = &raw[raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    let mut at = 0;
    let mut close = None;
    while at + 2 <= body.len() {
        let (op, len) = (body[at] & 0x0f, (body[at + 1] & 0x7f) as usize);
        let (start, len) = match len {
            126 => (
                at + 4,
                u16::from_be_bytes([body[at + 2], body[at + 3]]) as usize,
            ),
            n => (at + 2, n),
        };
        if op == 0x8 {
            close = Some(u16::from_be_bytes([body[start], body[start + 1]]));
            break;
        }
        at = start + len;
    }
    assert_eq!(close, Some(1002), "{:?}", String::from_utf8_lossy(body));
}

/// An upgrade request head with `token`, as raw bytes.
fn upgrade_head(token: &str) -> String {
    format!(
        "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Authorization: Bearer {token}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_connections_per_address_are_capped_before_a_byte_is_read() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start_with(Backend::Memory, |c| c.edge.max_pending_per_ip = 3).await;
    // Three connections from one address that send nothing: pending until the head timeout.
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tcp_from("127.0.0.2", node.addr).await.unwrap());
    }
    node.wait_metric("bellhop_pending_connections", 3.0).await;
    // A fourth from the same address is refused at once, before its head is read: a complete
    // 429 with Retry-After, then the end of the connection.
    let mut fourth = tcp_from("127.0.0.2", node.addr).await.unwrap();
    let (status, headers) = read_head(&mut fourth).await;
    assert_eq!(status, 429, "{headers:?}");
    assert_eq!(header(&headers, "retry-after"), Some("1"));
    assert!(
        node.metric("bellhop_rate_limited_total{what=\"pending\"}")
            .await
            >= 1.0,
        "counted"
    );
    assert!(
        node.metric("bellhop_connections_rejected_total{reason=\"pending\"}")
            .await
            >= 1.0
    );
    // Another address is served meanwhile.
    let mut good = node.connect(&staff("good", &[])).await;
    assert_eq!(good.request(json!({"type": "ping"})).await["type"], "pong");
    // Once one of the three sends a head and is upgraded, it is no longer pending.
    idle[0]
        .write_all(upgrade_head(&staff("s1", &[])).as_bytes())
        .await
        .unwrap();
    let (status, _) = read_head(&mut idle[0]).await;
    assert_eq!(status, 101);
    node.wait_metric_at_most("bellhop_pending_connections", 2.0)
        .await;
    let (status, _) = raw_request_from(
        "127.0.0.2",
        node.addr,
        upgrade_head(&staff("s2", &[])).as_bytes(),
    )
    .await;
    assert_eq!(status, 101, "the address has a free place again");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_pending_total_the_node_stops_accepting_until_one_ends() {
    let node = TestNode::start_with(Backend::Memory, |c| c.edge.max_pending = 4).await;
    let mut idle = Vec::new();
    for i in 0..4 {
        idle.push(
            tcp_from(&format!("127.0.0.{}", 10 + i), node.addr)
                .await
                .unwrap(),
        );
    }
    node.wait_metric("bellhop_pending_connections", 4.0).await;
    // A fifth connection waits in the kernel's backlog: its upgrade is not answered...
    let mut fifth = tokio::spawn({
        let addr = node.addr;
        async move { raw_request(addr, upgrade_head(&staff("s5", &[])).as_bytes()).await }
    });
    let early = tokio::time::timeout(Duration::from_millis(300), &mut fifth).await;
    assert!(early.is_err(), "served while every pending place was taken");
    // ...until one of the four goes away.
    drop(idle.pop());
    let (status, _) = tokio::time::timeout(DEADLINE, fifth)
        .await
        .expect("served once a place is free")
        .unwrap();
    assert_eq!(status, 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_beyond_max_header_bytes_get_431_without_waiting_for_the_rest() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start(Backend::Memory).await;
    let padding = format!("X-Pad: {}\r\n", "a".repeat(1000));
    // A complete head of 20 KiB (the default cap is 16 KiB).
    let big = format!(
        "GET /api/v1/channels/broadcast/history HTTP/1.1\r\nHost: x\r\n{}\r\n",
        padding.repeat(20)
    );
    let (status, _) = raw_request(node.addr, big.as_bytes()).await;
    assert_eq!(status, 431);
    // An unfinished head of 100 KiB: refused once the cap is reached, not after the head
    // timeout (10 s), and never buffered whole.
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    let unfinished = format!("GET /ws HTTP/1.1\r\nHost: x\r\n{}", padding.repeat(100));
    let _ = stream.write_all(unfinished.as_bytes()).await;
    let (status, _) = read_head(&mut stream).await;
    assert!(
        status == 431 || status == 0,
        "431, or a reset that overtook it: {status}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    // A head within the cap is served.
    let (status, body) = http_json(
        node.addr,
        "GET",
        "/api/v1/channels/broadcast/history",
        Some(&service("pms")),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_is_limited_per_address_and_a_ban_applies_to_it_before_the_token() {
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.rate_limits.connections_per_ip_per_minute = 3;
        c.rate_limits.ban_threshold = 2;
    })
    .await;
    let auth = format!("Bearer {}", service("pms"));
    let get = |source: &'static str, auth: String| {
        let addr = node.addr;
        async move {
            http_from(
                source,
                addr,
                "GET",
                "/api/v1/channels/broadcast/history",
                &[("authorization", &auth)],
            )
            .await
        }
    };
    // Each new connection is an attempt: three are served, the next are refused at once.
    for _ in 0..3 {
        assert_eq!(get("127.0.0.3", auth.clone()).await.0, 200);
    }
    let (status, headers, body) = get("127.0.0.3", auth.clone()).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert!(header(&headers, "retry-after").is_some());
    // A second refusal within the minute bans the address: still 429, now saying so, with a
    // valid token or without one (the token is never looked at).
    get("127.0.0.3", auth.clone()).await;
    node.wait_metric("bellhop_bans_total", 1.0).await;
    let unauthorized = node
        .metric("bellhop_errors_total{code=\"unauthorized\"}")
        .await;
    for auth in [auth.clone(), "Bearer not-a-token".to_string()] {
        let (status, _, body) = get("127.0.0.3", auth).await;
        assert_eq!(status, 429, "{body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("refused for a while"), "{message}");
    }
    assert_eq!(
        node.metric("bellhop_errors_total{code=\"unauthorized\"}")
            .await,
        unauthorized,
        "no token was verified for the banned address"
    );
    // Another address is served.
    assert_eq!(get("127.0.0.4", auth.clone()).await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_each_api_request_counts_for_the_forwarded_client() {
    let node = TestNode::start_with(Backend::Memory, |c| {
        behind_proxy(c);
        c.rate_limits.connections_per_ip_per_minute = 2;
        c.rate_limits.ban_threshold = 1_000;
    })
    .await;
    let token = service("pms");
    let get = |client: &'static str| {
        let (addr, token) = (node.addr, token.clone());
        async move {
            let auth = format!("Bearer {token}");
            http(
                addr,
                "GET",
                "/api/v1/channels/broadcast/history",
                &[("authorization", &auth), ("x-forwarded-for", client)],
                b"",
            )
            .await
            .0
        }
    };
    assert_eq!(get("203.0.113.5").await, 200);
    assert_eq!(get("203.0.113.5").await, 200);
    assert_eq!(get("203.0.113.5").await, 429);
    assert_eq!(get("203.0.113.6").await, 200, "another client of the proxy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_its_responses_is_dropped_after_the_write_timeout() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.write_timeout = Duration::from_millis(300);
    })
    .await;
    // Pipelined requests (no token needed: 404s will do), and never a byte read: the node's
    // answers fill the socket buffers and its writes stall.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(node.addr).await.unwrap();
    let (_read, mut write) = stream.into_split();
    let pipeline = "GET /x HTTP/1.1\r\nHost: x\r\n\r\n".repeat(200_000);
    let writer = tokio::spawn(async move {
        // Blocks once the node stops reading; ends with an error when the node drops us.
        let _ = write.write_all(pipeline.as_bytes()).await;
        write
    });
    node.wait_metric("bellhop_pending_connections", 1.0).await;
    let started = Instant::now();
    // The node gives up on it: it is no longer pending (nor open).
    node.wait_metric_at_most("bellhop_pending_connections", 0.0)
        .await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "{:?}",
        started.elapsed()
    );
    // Others are served meanwhile and after.
    let mut good = node.connect(&staff("good", &[])).await;
    assert_eq!(good.request(json!({"type": "ping"})).await["type"], "pong");
    drop(writer);
}
