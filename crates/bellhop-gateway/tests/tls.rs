//! TLS termination on the main port, over real sockets: `wss` clients and `https` API calls,
//! protocol versions (with rustls clients and, when installed, `openssl s_client`), certificate
//! rotation (triggered and polled, in place and by a Kubernetes-style symlink swap), and clients
//! that do not speak TLS or never finish the handshake.

#![allow(clippy::unwrap_used)]

mod support;

use std::process::Stdio;
use std::time::Duration;

use bellhop_gateway::tls::Reload;
use bellhop_gateway::TlsVersion;
use bellhop_protocol::Codec;
use bellhop_testkit::tls::{connect, served_certificate};
use serde_json::json;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const TLS12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
const TLS13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];

/// The certificate the node serves to a new connection now.
async fn served(node: &TestNode) -> rustls::pki_types::CertificateDer<'static> {
    let tls = node.tls.as_ref().unwrap();
    let stream = tokio::time::timeout(DEADLINE, connect(node.addr, tls.client.clone()))
        .await
        .expect("handshake within the deadline")
        .expect("handshake");
    served_certificate(&stream)
}

#[tokio::test]
async fn wss_clients_authenticate_publish_and_receive() {
    let node = TestNode::start_tls(|_| {}).await;
    assert!(node.url().starts_with("wss://"), "{}", node.url());
    let mut maria = node.connect(&staff("maria", &["housekeeping"])).await;
    maria.subscribe("dept:housekeeping").await;
    let mut guest = node.connect(&guest("g101", &["101"])).await;
    let ack = guest
        .publish(
            "dept:housekeeping",
            "SERVICE_REQUEST",
            json!({"room": "101", "item": "towels"}),
        )
        .await;
    let message = maria.wait_type("message").await;
    assert_eq!(message["offset"], ack["offset"], "{message}");
    assert_eq!(message["message"]["payload"]["item"], "towels", "{message}");

    // The first-frame auth path works over TLS too.
    let mut late = node.connect_with(None, Codec::Json).await.expect("upgrade");
    late.send(json!({"type": "auth", "token": staff("late", &[])}))
        .await;
    assert_eq!(late.next().await["type"], "welcome");

    // The admin port stays plain HTTP.
    let (status, _, body) = http(node.admin, "GET", "/readyz", &[], b"").await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn the_http_api_works_over_https_with_alpn_http11() {
    let node = TestNode::start_tls(|_| {}).await;
    let client = node.tls.as_ref().unwrap().client.clone();
    let stream = connect(node.addr, client.clone()).await.unwrap();
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    drop(stream);
    // A client that wants only HTTP/2 is refused rather than spoken to in the wrong protocol.
    let mut h2 = (*client).clone();
    h2.alpn_protocols = vec![b"h2".to_vec()];
    assert!(connect(node.addr, std::sync::Arc::new(h2)).await.is_err());
    node.wait_metric(
        "bellhop_tls_handshake_failures_total{reason=\"incompatible\"}",
        1.0,
    )
    .await;

    let token = format!("Bearer {}", service("pms"));
    let headers = [
        ("authorization", token.as_str()),
        ("content-type", "application/json"),
    ];
    let body = json!({"channel": "room:101", "event": "ROOM_STATUS_UPDATE", "payload": {"status": "clean"}});
    let (status, _, text) = https(
        node.addr,
        client.clone(),
        "POST",
        "/api/v1/publish",
        &headers,
        body.to_string().as_bytes(),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    let (status, _, text) = https(
        node.addr,
        client,
        "GET",
        "/api/v1/channels/room:101/history",
        &headers,
        b"",
    )
    .await;
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("clean"), "{text}");
}

#[tokio::test]
async fn a_tls12_only_client_connects_while_tls12_is_on() {
    let node = TestNode::start_tls(|_| {}).await;
    let ca = &node.tls.as_ref().unwrap().ca;
    let stream = connect(node.addr, ca.client(TLS12)).await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let stream = connect(node.addr, ca.client(TLS13)).await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );

    // A whole wss session over TLS 1.2.
    let request = format!("wss://{}/ws?token={}", node.addr, staff("s12", &[]));
    let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        None,
        false,
        Some(tokio_tungstenite::Connector::Rustls(ca.client(TLS12))),
    )
    .await
    .unwrap();
    let mut client = Client::from_ws(ws);
    assert_eq!(client.next().await["type"], "welcome");
}

#[tokio::test]
async fn with_tls12_switched_off_a_tls12_client_is_refused() {
    let node = TestNode::start_tls(|c| {
        c.tls.as_mut().unwrap().min_version = TlsVersion::Tls13;
    })
    .await;
    let ca = &node.tls.as_ref().unwrap().ca;
    let refused = connect(node.addr, ca.client(TLS12)).await;
    assert!(refused.is_err(), "TLS 1.2 must be refused");
    node.wait_metric(
        "bellhop_tls_handshake_failures_total{reason=\"incompatible\"}",
        1.0,
    )
    .await;
    let stream = connect(node.addr, ca.client(TLS13)).await.unwrap();
    assert_eq!(
        stream.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    node.connect(&staff("s13", &[])).await;
}

/// `openssl s_client` against the node: exit status and what it printed.
async fn s_client(node: &TestNode, args: &[&str]) -> (bool, String) {
    let ca = node.tls.as_ref().unwrap().dir.ca_path();
    let connect = node.addr.to_string();
    let mut all = vec![
        "s_client",
        "-connect",
        &connect,
        "-CAfile",
        ca.to_str().unwrap(),
        "-verify_return_error",
        "-alpn",
        "http/1.1",
    ];
    all.extend_from_slice(args);
    let out = tokio::time::timeout(
        DEADLINE,
        tokio::process::Command::new("openssl")
            .args(&all)
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("openssl within the deadline")
    .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn openssl_s_client_gets_tls13_and_tls12_and_never_older() {
    if !bellhop_testkit::tls::openssl_available() {
        bellhop_testkit::skip::skip(
            "openssl_s_client_gets_tls13_and_tls12_and_never_older",
            "`openssl` is not on PATH",
        );
        return;
    }
    let node = TestNode::start_tls(|_| {}).await;
    for (flag, version) in [("-tls1_3", "TLSv1.3"), ("-tls1_2", "TLSv1.2")] {
        let (ok, text) = s_client(&node, &[flag]).await;
        assert!(ok, "{flag}: {text}");
        assert!(
            text.contains(&format!("New, {version}, Cipher is")),
            "{flag}: {text}"
        );
        assert!(
            text.contains("Verify return code: 0 (ok)"),
            "{flag}: {text}"
        );
        assert!(text.contains("ALPN protocol: http/1.1"), "{flag}: {text}");
    }
    // TLS 1.1 and 1.0: OpenSSL's own security level would refuse to even offer them, so lower
    // it; then it is the node that says no (and counts it).
    for flag in ["-tls1_1", "-tls1"] {
        let (ok, text) = s_client(&node, &[flag, "-cipher", "DEFAULT@SECLEVEL=0"]).await;
        assert!(!ok, "{flag} must be refused: {text}");
        assert!(text.contains("Cipher is (NONE)"), "{flag}: {text}");
        assert!(
            text.contains("no peer certificate available"),
            "{flag}: {text}"
        );
    }
    node.wait_metric(
        "bellhop_tls_handshake_failures_total{reason=\"incompatible\"}",
        2.0,
    )
    .await;
}

#[tokio::test]
async fn openssl_s_client_tls12_is_refused_when_switched_off() {
    if !bellhop_testkit::tls::openssl_available() {
        bellhop_testkit::skip::skip(
            "openssl_s_client_tls12_is_refused_when_switched_off",
            "`openssl` is not on PATH",
        );
        return;
    }
    let node = TestNode::start_tls(|c| {
        c.tls.as_mut().unwrap().min_version = TlsVersion::Tls13;
    })
    .await;
    let (ok, text) = s_client(&node, &["-tls1_2"]).await;
    assert!(!ok, "-tls1_2 must be refused: {text}");
    let (ok, text) = s_client(&node, &["-tls1_3"]).await;
    assert!(ok, "-tls1_3: {text}");
}

#[tokio::test]
async fn a_rotated_certificate_reaches_new_connections_while_open_ones_keep_working() {
    let node = TestNode::start_tls(|_| {}).await;
    let tls = node.tls.as_ref().unwrap();
    assert_eq!(served(&node).await, tls.first.der);
    let expiry = "bellhop_tls_certificate_expiry_timestamp_seconds";
    assert_eq!(node.metric(expiry).await as i64, tls.first.not_after);

    let mut before = node.connect(&staff("before", &["housekeeping"])).await;
    before.subscribe("dept:housekeeping").await;
    assert!(matches!(
        node.gateway().reload_tls().await,
        Some(Reload::Unchanged)
    ));

    // Written over the files in place, as `cp` would.
    let second = tls.ca.issue("second", 2091);
    tls.dir
        .overwrite(second.cert_pem.as_bytes(), second.key_pem.as_bytes());
    match node.gateway().reload_tls().await {
        Some(Reload::Reloaded(Some(info))) => assert_eq!(info.subject, "CN=second"),
        other => panic!("expected a reload: {other:?}"),
    }
    assert_eq!(served(&node).await, second.der);
    assert_eq!(node.metric(expiry).await as i64, second.not_after);
    assert_eq!(
        node.metric("bellhop_tls_certificate_reloads_total{result=\"success\"}")
            .await,
        1.0
    );

    // The connection made before the rotation still works, both ways.
    let mut after = node.connect(&staff("after", &["housekeeping"])).await;
    after.subscribe("dept:housekeeping").await;
    for (n, publisher) in [(1, &mut before), (2, &mut after)].into_iter() {
        let ack = publisher
            .publish("dept:housekeeping", "HOUSEKEEPING_ALERT", json!({"n": n}))
            .await;
        assert_ne!(ack["offset"], serde_json::Value::Null, "{ack}");
    }
    for client in [&mut before, &mut after] {
        for n in [1, 2] {
            let m = client
                .wait_for(|f| f["type"] == "message" && f["message"]["payload"]["n"] == n)
                .await;
            assert_eq!(m["channel"], "dept:housekeeping", "{m}");
        }
    }

    // Garbage is rejected, counted once, and the second certificate keeps serving.
    let failures = "bellhop_tls_certificate_reloads_total{result=\"failure\"}";
    assert_eq!(node.metric(failures).await, 0.0);
    tls.dir
        .overwrite(b"not a certificate", second.key_pem.as_bytes());
    assert!(matches!(
        node.gateway().reload_tls().await,
        Some(Reload::Rejected(_))
    ));
    assert!(matches!(
        node.gateway().reload_tls().await,
        Some(Reload::Unchanged)
    ));
    assert_eq!(node.metric(failures).await, 1.0);
    assert_eq!(served(&node).await, second.der);
    assert_eq!(node.metric(expiry).await as i64, second.not_after);
    // A key that belongs to another certificate is rejected the same way.
    let third = tls.ca.issue("third", 2092);
    tls.dir
        .overwrite(third.cert_pem.as_bytes(), second.key_pem.as_bytes());
    match node.gateway().reload_tls().await {
        Some(Reload::Rejected(e)) => assert!(e.to_string().contains("does not match"), "{e}"),
        other => panic!("expected a rejection: {other:?}"),
    }
    assert_eq!(node.metric(failures).await, 2.0);
    assert_eq!(served(&node).await, second.der);
    node.connect(&staff("still", &[])).await;
}

#[tokio::test]
async fn the_poll_picks_up_a_kubernetes_style_symlink_swap() {
    let node = TestNode::start_tls(|c| {
        c.tls.as_mut().unwrap().reload_interval = Some(Duration::from_millis(50));
    })
    .await;
    let tls = node.tls.as_ref().unwrap();
    assert_eq!(served(&node).await, tls.first.der);
    let open = node.connect(&staff("open", &[])).await;

    let rotated = tls.ca.issue("rotated", 2093);
    tls.dir.swap(&rotated);
    tokio::time::timeout(DEADLINE, async {
        while served(&node).await != rotated.der {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the rotated certificate is served within the deadline");
    node.wait_metric(
        "bellhop_tls_certificate_reloads_total{result=\"success\"}",
        1.0,
    )
    .await;
    assert_eq!(
        node.metric("bellhop_tls_certificate_reloads_total{result=\"failure\"}")
            .await,
        0.0,
        "an atomic swap is never seen half-done"
    );
    let mut open = open;
    assert_eq!(open.request(json!({"type": "ping"})).await["type"], "pong");

    // A bad file through the poll: counted, old certificate kept.
    tls.dir.overwrite(b"garbage", b"garbage");
    node.wait_metric(
        "bellhop_tls_certificate_reloads_total{result=\"failure\"}",
        1.0,
    )
    .await;
    assert_eq!(served(&node).await, rotated.der);
}

#[tokio::test]
async fn a_plain_client_on_the_tls_port_fails_cleanly_and_others_are_served() {
    let node = TestNode::start_tls(|_| {}).await;
    // Plain HTTP: no HTTP response comes back, the connection just ends.
    let mut plain = TcpStream::connect(node.addr).await.unwrap();
    plain
        .write_all(b"GET /api/v1/channels/room:1/history HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, plain.read_to_end(&mut raw))
        .await
        .expect("the node ends the connection");
    assert!(
        !raw.starts_with(b"HTTP/"),
        "{:?}",
        String::from_utf8_lossy(&raw)
    );
    node.wait_metric(
        "bellhop_tls_handshake_failures_total{reason=\"malformed\"}",
        1.0,
    )
    .await;

    // A plain WebSocket client fails to connect.
    let ws = format!("ws://{}/ws", node.addr);
    let refused = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(ws))
        .await
        .expect("fails within the deadline");
    assert!(refused.is_err());

    // Everyone else is served.
    let mut ok = node.connect(&staff("ok", &[])).await;
    assert_eq!(ok.request(json!({"type": "ping"})).await["type"], "pong");
}

#[tokio::test]
async fn a_stalled_handshake_times_out_without_holding_up_other_clients() {
    let node = TestNode::start_tls(|c| {
        c.tls.as_mut().unwrap().handshake_timeout = Duration::from_millis(300);
    })
    .await;
    // Many connections that never send a ClientHello, and one that sends half of one.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        stalled.push(TcpStream::connect(node.addr).await.unwrap());
    }
    let mut half = TcpStream::connect(node.addr).await.unwrap();
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01])
        .await
        .unwrap();
    // Served meanwhile.
    let mut ok = node.connect(&staff("ok", &[])).await;
    assert_eq!(ok.request(json!({"type": "ping"})).await["type"], "pong");
    // Then each stalled one is dropped by the node.
    for mut s in stalled.into_iter().chain([half]) {
        let mut buf = Vec::new();
        tokio::time::timeout(DEADLINE, s.read_to_end(&mut buf))
            .await
            .expect("the node closes a stalled handshake")
            .ok();
    }
    node.wait_metric(
        "bellhop_tls_handshake_failures_total{reason=\"timeout\"}",
        21.0,
    )
    .await;
}

#[tokio::test]
async fn a_bad_certificate_stops_the_node_from_starting() {
    use bellhop_dispatcher::{Dispatcher, DispatcherConfig, MemoryBroker, MemoryConfig};
    use bellhop_gateway::{Gateway, TlsConfig};
    use std::sync::Arc;
    let ca = bellhop_testkit::tls::TestCa::new();
    let leaf = ca.issue("x", 2090);
    let dir = bellhop_testkit::tls::CertDir::new(&ca, &leaf);
    let start = |tls: TlsConfig| async move {
        let mut c = config();
        c.tls = Some(tls);
        let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
        let dispatcher = Arc::new(Dispatcher::new(broker.clone(), DispatcherConfig::default()));
        Gateway::bind(c, dispatcher, broker)
            .await
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    let missing = dir.path().join("missing.crt");
    let e = start(TlsConfig::new(&missing, dir.key_path())).await;
    assert!(
        e.contains(missing.to_str().unwrap()) && e.contains("SSL_CERT_PATH"),
        "{e}"
    );
    dir.overwrite(leaf.cert_pem.as_bytes(), b"garbage");
    let e = start(TlsConfig::new(dir.cert_path(), dir.key_path())).await;
    assert!(e.contains(dir.key_path().to_str().unwrap()), "{e}");
    let other = ca.issue("other", 2090);
    dir.overwrite(leaf.cert_pem.as_bytes(), other.key_pem.as_bytes());
    let e = start(TlsConfig::new(dir.cert_path(), dir.key_path())).await;
    assert!(e.contains("does not match"), "{e}");
}

/// Symlink swaps racing a fast poll: a swap that lands between the read of the certificate and
/// the read of the key must not be reported as a mismatched pair.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_symlink_swaps_are_never_reported_as_failures() {
    let node = TestNode::start_tls(|c| {
        c.tls.as_mut().unwrap().reload_interval = Some(Duration::from_millis(1));
    })
    .await;
    let tls = node.tls.as_ref().unwrap();
    let leaves: Vec<_> = (0..100)
        .map(|i| tls.ca.issue(&format!("swap-{i}"), 2090))
        .collect();
    let last = leaves.last().unwrap().der.clone();
    let dir = tls.dir.path().to_owned();
    let swapper = {
        let ca_leaves = leaves.clone();
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || {
            for leaf in &ca_leaves {
                bellhop_testkit::tls::CertDir::swap_in(&dir, leaf);
            }
        })
    };
    swapper.await.unwrap();
    tokio::time::timeout(DEADLINE, async {
        while served(&node).await != last {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the last certificate is served within the deadline");
    assert_eq!(
        node.metric("bellhop_tls_certificate_reloads_total{result=\"failure\"}")
            .await,
        0.0
    );
    assert!(
        node.metric("bellhop_tls_certificate_reloads_total{result=\"success\"}")
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_banned_address_is_closed_before_the_handshake_and_others_are_served() {
    let node = TestNode::start_tls(|c| {
        c.rate_limits.connections_per_ip_per_minute = 2;
        c.rate_limits.ban_threshold = 2;
    })
    .await;
    // Each connection is an attempt, counted before the handshake: two complete...
    for _ in 0..2 {
        tls_from(&node, "127.0.0.5").await.expect("within the rate");
    }
    // ...the next two are refused before it (and ban the address).
    for _ in 0..2 {
        assert!(tls_from(&node, "127.0.0.5").await.is_err());
    }
    node.wait_metric("bellhop_bans_total", 1.0).await;
    // A banned address gets no handshake at all: nothing is even counted as a failed one.
    let failures = node.metric("bellhop_tls_handshake_failures_total").await;
    for _ in 0..20 {
        assert!(
            tls_from(&node, "127.0.0.5").await.is_err(),
            "handshake done"
        );
    }
    assert_eq!(
        node.metric("bellhop_tls_handshake_failures_total").await,
        failures
    );
    assert!(
        node.metric("bellhop_rate_limited_total{what=\"banned\"}")
            .await
            >= 20.0
    );
    // Everyone else is served, over wss and https.
    let mut ok = node.connect(&staff("ok", &[])).await;
    assert_eq!(ok.request(json!({"type": "ping"})).await["type"], "pong");
    let auth = format!("Bearer {}", service("pms"));
    let (status, _, body) = https(
        node.addr,
        node.tls.as_ref().unwrap().client.clone(),
        "GET",
        "/api/v1/channels/broadcast/history",
        &[("authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(status, 200, "{body}");
}
