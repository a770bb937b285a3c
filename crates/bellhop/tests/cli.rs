//! The `bellhop` binary as operators and scripts use it: `bellhop token` output, `bellhop serve`
//! refusing unsafe or invalid configuration, and a real node that announces its addresses,
//! answers readiness, serves clients, and drains and exits cleanly on SIGTERM.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::process::{Output, Stdio};
use std::time::Duration;

use bellhop_gateway::auth::Verifier;
use bellhop_gateway::{AuthConfig, JwtAlgorithm, KeySource};
use bellhop_testkit::{jwks, KeyFiles, KeyKind, TestSigningKey};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const BIN: &str = env!("CARGO_BIN_EXE_bellhop");
const DEV_SECRET: &str = "bellhop-development-secret-do-not-use-in-production";
const SECRET: &str = "cli-test-secret-0123456789abcdef0123456789";
/// Longest any single wait may take.
const DEADLINE: Duration = Duration::from_secs(15);

/// The binary with a clean environment (nothing from the developer's shell leaks in).
fn bellhop(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

/// Runs the binary to completion (with a deadline: a `serve` that should have refused to start
/// but did not fails here instead of hanging).
async fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let child = bellhop(args, env)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("bellhop {args:?} did not exit within {DEADLINE:?}"))
        .unwrap()
}

/// Decodes base64url without padding (the JWT alphabet).
fn base64url_decode(s: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'-' => 62,
            b'_' => 63,
            _ => panic!("not base64url: {:?}", c as char),
        }
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        acc = (acc << 6) | value(c);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

#[test]
fn base64url_decoder_works() {
    assert_eq!(base64url_decode("eyJhIjoxfQ"), br#"{"a":1}"#);
    assert_eq!(base64url_decode("_-8"), [0xff, 0xef]);
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The claims of a JWT, from its middle part.
fn claims(token: &str) -> Value {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "a JWT has three parts: {token:?}");
    assert!(parts.iter().all(|p| !p.is_empty()), "{token:?}");
    serde_json::from_slice(&base64url_decode(parts[1])).unwrap()
}

fn verifier(secret: &str) -> Verifier {
    let mut config = AuthConfig::hs256(secret.as_bytes());
    config.leeway = Duration::ZERO;
    Verifier::new(&config).unwrap()
}

/// `bellhop token` for staff user `u1` of `h1`, the options of a test after it.
const TOKEN_U1: [&str; 7] = ["token", "--sub", "u1", "--role", "staff", "--prop", "h1"];

/// Mints a token with the binary (JWT_SECRET set to `secret`).
async fn mint(secret: &str, args: &[&str]) -> String {
    let mut all = vec!["token"];
    all.extend_from_slice(args);
    let out = run(&all, &[("JWT_SECRET", secret)]).await;
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[tokio::test]
async fn token_prints_one_jwt_with_the_requested_claims() {
    let before = now_secs();
    let args = [&TOKEN_U1[..], &["--depts", "housekeeping,maintenance"]].concat();
    let out = run(&args, &[]).await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "exactly one line on stdout: {stdout:?}");
    let token = lines[0].trim();

    let c = claims(token);
    assert_eq!(c["sub"], "u1", "{c}");
    assert_eq!(c["role"], "staff", "{c}");
    assert_eq!(c["prop"], "h1", "{c}");
    assert_eq!(c["depts"], json!(["housekeeping", "maintenance"]), "{c}");
    let exp = c["exp"].as_u64().expect("numeric exp");
    let after = now_secs();
    assert!(
        (before + 3600..=after + 3600).contains(&exp),
        "default lifetime is an hour: exp {exp}, now {after}"
    );

    // With JWT_SECRET unset it says loudly that the public development secret signed it...
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("JWT_SECRET") && stderr.contains("development secret"),
        "warns about the development secret: {stderr:?}"
    );
    // ...and it is a token a node with the development secret accepts.
    let p = verifier(DEV_SECRET).verify(token).unwrap();
    assert_eq!(p.user_id, "u1");
    assert!(p.depts.contains("maintenance"));
}

#[tokio::test]
async fn token_uses_jwt_secret_and_honours_rooms_and_ttl() {
    let out = run(
        &[
            "token", "--sub", "g7", "--role", "guest", "--prop", "h2", "--rooms", "101,102",
            "--ttl", "120",
        ],
        &[("JWT_SECRET", SECRET)],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("development secret"),
        "no warning with JWT_SECRET set: {stderr:?}"
    );
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let c = claims(&token);
    assert_eq!(c["role"], "guest");
    assert_eq!(c["prop"], "h2");
    assert_eq!(c["rooms"], json!(["101", "102"]));
    let exp = c["exp"].as_u64().unwrap();
    assert!(exp.abs_diff(now_secs() + 120) <= 5, "exp {exp}");

    assert!(verifier(SECRET).verify(&token).is_ok());
    assert!(
        verifier(DEV_SECRET).verify(&token).is_err(),
        "signed with JWT_SECRET, not the development secret"
    );

    // An unknown role is a usage error, not a token.
    let bad = run(
        &["token", "--sub", "u1", "--role", "owner", "--prop", "h1"],
        &[],
    )
    .await;
    assert!(!bad.status.success());
    assert!(bad.stdout.is_empty(), "{bad:?}");
}

/// A verifier of `alg` tokens against `set` (a JWKS file), with an issuer and an audience.
fn jwks_verifier(alg: JwtAlgorithm, set: &std::path::Path, iss: &str, aud: &str) -> Verifier {
    let mut config = AuthConfig::with_keys(alg, KeySource::JwksFile(set.to_owned()));
    config.issuer = Some(iss.into());
    config.audience = Some(aud.into());
    Verifier::new(&config).unwrap()
}

#[tokio::test]
async fn token_signs_rs256_and_es256_with_a_private_key_file() {
    let files = KeyFiles::new();
    for kind in [KeyKind::Rsa, KeyKind::Ec] {
        let key = TestSigningKey::generate(kind, "k1");
        let private = files.write(&format!("{}.key", kind.alg()), &key.private_pem);
        let set = files.write(&format!("{}.json", kind.alg()), &jwks(&[&key]));
        let signing = [
            "--alg",
            kind.alg(),
            "--key",
            private.to_str().unwrap(),
            "--kid",
            "k1",
        ];
        let iss_aud = ["--iss", "https://id.example", "--aud", "bellhop"];
        let out = run(&[&TOKEN_U1[..], &signing, &iss_aud].concat(), &[]).await;
        assert!(out.status.success(), "{out:?}");
        assert!(
            out.stderr.is_empty(),
            "no development-secret warning: {out:?}"
        );
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        let header: Value =
            serde_json::from_slice(&base64url_decode(token.split('.').next().unwrap())).unwrap();
        assert_eq!(header["alg"], kind.alg(), "{header}");
        assert_eq!(header["kid"], "k1", "{header}");
        let c = claims(&token);
        assert_eq!(
            (c["iss"].as_str(), c["aud"].as_str()),
            (Some("https://id.example"), Some("bellhop"))
        );
        let alg = JwtAlgorithm::parse(kind.alg()).unwrap();
        let p = jwks_verifier(alg, &set, "https://id.example", "bellhop")
            .verify(&token)
            .unwrap();
        assert_eq!(p.user_id, "u1");
    }
    let ec = TestSigningKey::ec("k1");
    let private = files.write("ec.key", &ec.private_pem);
    let private = private.to_str().unwrap();
    let public = files.write("ec.pub", &ec.public_pem);
    for (extra, needle) in [
        (vec!["--key", private], "--alg RS256 or --alg ES256"),
        (vec!["--alg", "ES256"], "needs --key"),
        (
            vec!["--alg", "none", "--key", private],
            "--alg \"none\" is invalid",
        ),
        (
            vec!["--alg", "RS256", "--key", private],
            "not an RSA private key",
        ),
        (
            vec!["--alg", "ES256", "--key", public.to_str().unwrap()],
            "expected a private key",
        ),
    ] {
        let args = [&TOKEN_U1[..], &extra].concat();
        let out = run(&args, &[]).await;
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && out.stdout.is_empty(),
            "{extra:?}: {out:?}"
        );
        assert!(stderr.contains(needle), "{extra:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_production_node_verifies_es256_tokens_with_a_public_key_and_no_secret() {
    let files = KeyFiles::new();
    let key = TestSigningKey::ec("k1");
    let private = files.write("signing.key", &key.private_pem);
    let public = files.write("public.pem", &key.public_pem);
    let env = [
        ("LOG_FORMAT", "json"),
        ("BELLHOP_ENV", "production"),
        ("JWT_ALGORITHM", "ES256"),
        ("JWT_PUBLIC_KEY_PATH", public.to_str().unwrap()),
    ];
    let (mut node, _) = serve(&env).await;
    let who = ["token", "--sub", "alice", "--role", "staff", "--prop", "h1"];
    let out = run(
        &[
            &who[..],
            &["--alg", "ES256", "--key", private.to_str().unwrap()],
        ]
        .concat(),
        &[],
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let (_ws, welcome) = connect(node.local, &token).await;
    assert_eq!(welcome["userId"], "alice", "{welcome}");
    // An HS256 token (here: the development secret's) is refused by an ES256 node.
    let hs256 = mint(
        DEV_SECRET,
        &["--sub", "mallory", "--role", "admin", "--prop", "h1"],
    )
    .await;
    let (status, body) = http(
        node.local,
        "GET",
        "/api/v1/channels/broadcast/presence",
        Some(&hs256),
        "",
    )
    .await;
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("HS256") && body.contains("ES256"), "{body}");
    sigterm(&node.child).await;
    let status = tokio::time::timeout(DEADLINE, node.child.wait())
        .await
        .expect("exit within the deadline")
        .unwrap();
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn serve_refuses_public_key_settings_that_cannot_work() {
    let files = KeyFiles::new();
    let key = TestSigningKey::ec("k1");
    let public = files.write("public.pem", &key.public_pem);
    let public = public.to_str().unwrap();
    let absent = files.path("absent.pem");
    assert_serve_refuses(&[("JWT_PUBLIC_KEY_PATH", public)], "JWT_ALGORITHM").await;
    assert_serve_refuses(
        &[
            ("JWT_ALGORITHM", "ES256"),
            ("JWT_PUBLIC_KEY_PATH", absent.to_str().unwrap()),
        ],
        "JWT_PUBLIC_KEY_PATH",
    )
    .await;
    assert_serve_refuses(
        &[("JWT_ALGORITHM", "RS256"), ("JWT_PUBLIC_KEY_PATH", public)],
        "not an RSA public key",
    )
    .await;
    assert_serve_refuses(
        &[
            ("JWT_ALGORITHM", "ES256"),
            ("JWT_PUBLIC_KEY_PATH", public),
            ("JWT_SECRET", SECRET),
        ],
        "JWT_SECRET",
    )
    .await;
}

/// `bellhop serve` must refuse to start: non-zero exit, and stderr names `what`.
async fn assert_serve_refuses(env: &[(&str, &str)], what: &str) {
    let out = run(
        &["serve", "--metrics-port", "0", "--bind", "127.0.0.1"],
        env,
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{env:?}: {out:?}");
    assert!(
        stderr.contains(what),
        "{env:?}: stderr does not name {what}: {stderr}"
    );
}

#[tokio::test]
async fn serve_refuses_production_without_a_real_secret() {
    assert_serve_refuses(&[("BELLHOP_ENV", "production")], "JWT_SECRET").await;
    assert_serve_refuses(
        &[("BELLHOP_ENV", "production"), ("JWT_SECRET", DEV_SECRET)],
        "JWT_SECRET",
    )
    .await;
    assert_serve_refuses(
        &[("BELLHOP_ENV", "production"), ("JWT_SECRET", "short")],
        "JWT_SECRET",
    )
    .await;
}

#[tokio::test]
async fn serve_refuses_invalid_settings_naming_the_variable() {
    assert_serve_refuses(&[("WS_PORT", "abc")], "WS_PORT").await;
    assert_serve_refuses(&[("METRICS_PORT", "99999")], "METRICS_PORT").await;
    assert_serve_refuses(&[("BELLHOP_ENV", "staging")], "BELLHOP_ENV").await;
}

/// A `bellhop serve` child and where it listens.
struct Served {
    child: Child,
    local: SocketAddr,
    admin: SocketAddr,
}

/// A socket address from a log field; tolerates `Some(..)` around it.
fn addr_field(v: &Value) -> SocketAddr {
    let s = v.as_str().unwrap_or_else(|| panic!("address field: {v}"));
    let s = s
        .strip_prefix("Some(")
        .and_then(|s| s.strip_suffix(')'))
        .unwrap_or(s);
    s.parse()
        .unwrap_or_else(|e| panic!("address field {v}: {e}"))
}

/// `bellhop serve` on free loopback ports.
const SERVE_ON_FREE_PORTS: [&str; 7] = [
    "serve",
    "--port",
    "0",
    "--metrics-port",
    "0",
    "--bind",
    "127.0.0.1",
];

/// Starts a node on free ports and waits for its `gateway listening` log line.
async fn serve(env: &[(&str, &str)]) -> (Served, Value) {
    let mut child = bellhop(&SERVE_ON_FREE_PORTS, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let listening = tokio::time::timeout(DEADLINE, async {
        let mut seen = Vec::new();
        loop {
            let Some(line) = lines.next_line().await.unwrap() else {
                panic!("stderr ended before `gateway listening`: {seen:#?}");
            };
            seen.push(line.clone());
            let Ok(v) = serde_json::from_str::<Value>(&line) else {
                panic!("LOG_FORMAT=json log line is not JSON: {line:?}");
            };
            if v["fields"]["message"] == "gateway listening" {
                return v;
            }
        }
    })
    .await
    .expect("`gateway listening` within the deadline");
    // Keep reading, so the child never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    let served = Served {
        child,
        local: addr_field(&listening["fields"]["local_addr"]),
        admin: addr_field(&listening["fields"]["admin_addr"]),
    };
    (served, listening)
}

/// Sends SIGTERM to the child.
async fn sigterm(child: &Child) {
    let pid = child.id().expect("still running").to_string();
    let status = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap();
    assert!(status.success(), "kill -TERM {pid}");
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// The next JSON frame from the node (deadline: [`DEADLINE`]).
async fn next_frame(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a frame within the deadline")
            .expect("connection open")
            .expect("frame");
        match m {
            Message::Text(t) => return serde_json::from_str(&t).unwrap(),
            Message::Close(c) => panic!("closed while waiting for a frame: {c:?}"),
            _ => continue,
        }
    }
}

/// A minimal HTTP/1.1 request: status and body.
async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// Connects a WebSocket client with `token` and returns it after its `welcome`.
async fn connect(addr: SocketAddr, token: &str) -> (Ws, Value) {
    let mut request = format!("ws://{addr}/ws").into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio::time::timeout(DEADLINE, tokio_tungstenite::connect_async(request))
        .await
        .expect("upgrade within the deadline")
        .unwrap();
    let welcome = next_frame(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// Reads until the server closes the connection; returns the close code.
async fn close_code(ws: &mut Ws) -> u16 {
    loop {
        let m = tokio::time::timeout(DEADLINE, ws.next())
            .await
            .expect("a close frame within the deadline");
        match m {
            Some(Ok(Message::Close(Some(c)))) => return u16::from(c.code),
            Some(Ok(Message::Close(None))) => panic!("close frame without a code"),
            Some(Ok(_)) => continue,
            other => panic!("connection ended without a close frame: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_node_serves_clients_and_drains_them_on_sigterm() {
    let env = [
        ("LOG_FORMAT", "json"),
        ("JWT_SECRET", SECRET),
        ("NODE_ID", "cli-test"),
        ("DRAIN_SECONDS", "4"),
    ];
    let (mut node, listening) = serve(&env).await;
    assert_eq!(listening["fields"]["node"], "cli-test", "{listening}");
    assert!(node.local.ip().is_loopback() && node.local.port() != 0);
    assert!(node.admin.ip().is_loopback() && node.admin.port() != 0);
    assert_ne!(node.local, node.admin);

    let (status, body) = http(node.admin, "GET", "/readyz", None, "").await;
    assert_eq!(status, 200, "{body}");
    let ready: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(ready["ready"], true, "{ready}");
    assert_eq!(ready["node"], "cli-test", "{ready}");

    // `bellhop token` with the same JWT_SECRET mints tokens this node accepts.
    let alice = mint(
        SECRET,
        &["--sub", "alice", "--role", "staff", "--prop", "h1"],
    )
    .await;
    let bob = mint(SECRET, &["--sub", "bob", "--role", "staff", "--prop", "h1"]).await;
    let service = mint(
        SECRET,
        &["--sub", "pms", "--role", "service", "--prop", "h1"],
    )
    .await;
    let (mut ws_a, welcome) = connect(node.local, &alice).await;
    assert_eq!(welcome["node"], "cli-test", "{welcome}");
    assert_eq!(welcome["userId"], "alice", "{welcome}");
    let (mut ws_b, _) = connect(node.local, &bob).await;
    ws_a.send(Message::text(
        json!({"type": "subscribe", "id": 1, "channel": "room:101"}).to_string(),
    ))
    .await
    .unwrap();
    let subscribed = next_frame(&mut ws_a).await;
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    let (status, body) = http(
        node.local,
        "POST",
        "/api/v1/publish",
        Some(&service),
        &json!({"channel": "room:101", "event": "SERVICE_REQUEST", "payload": {"n": 1}})
            .to_string(),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let message = next_frame(&mut ws_a).await;
    assert_eq!(message["type"], "message", "{message}");
    assert_eq!(message["message"]["payload"]["n"], 1, "{message}");

    // SIGTERM: readiness turns false, new connections are refused, connected clients are told to
    // reconnect elsewhere (1012), and the process exits 0.
    let terminated = tokio::time::Instant::now();
    sigterm(&node.child).await;
    let draining = tokio::time::timeout(DEADLINE, async {
        loop {
            let (status, body) = http(node.admin, "GET", "/readyz", None, "").await;
            if status == 503 {
                return serde_json::from_str::<Value>(&body).unwrap();
            }
            assert_eq!(status, 200, "{body}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("/readyz turns 503 after SIGTERM");
    assert_eq!(draining["ready"], false, "{draining}");
    assert_eq!(draining["state"], "draining", "{draining}");
    tokio::time::timeout(DEADLINE, async {
        while TcpStream::connect(node.local).await.is_ok() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the main port stops accepting after SIGTERM");

    assert_eq!(close_code(&mut ws_a).await, 1012);
    assert_eq!(close_code(&mut ws_b).await, 1012);
    let status = tokio::time::timeout(DEADLINE, node.child.wait())
        .await
        .expect("exits within 15 s of SIGTERM")
        .unwrap();
    assert_eq!(
        status.code(),
        Some(0),
        "exit status after SIGTERM: {status:?}"
    );
    assert!(terminated.elapsed() < DEADLINE);
}

/// The lifecycle of docs/CONFIGURATION.md: once the node logged `gateway listening` and `/readyz`
/// answers 200, SIGTERM drains it and it exits 0. Ten rounds, since the failure is a race.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_node_exits_zero_on_sigterm_after_ready() {
    let env = [
        ("LOG_FORMAT", "json"),
        ("JWT_SECRET", SECRET),
        ("NODE_ID", "cli-test"),
    ];
    for round in 0..10 {
        let (mut node, _) = serve(&env).await;
        let (status, body) = http(node.admin, "GET", "/readyz", None, "").await;
        assert_eq!(status, 200, "{body}");
        sigterm(&node.child).await;
        let status = tokio::time::timeout(DEADLINE, node.child.wait())
            .await
            .expect("exits within 15 s of SIGTERM")
            .unwrap();
        assert_eq!(status.code(), Some(0), "round {round}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_logged_addresses_are_plain_socket_addresses() {
    let env = [("LOG_FORMAT", "json"), ("JWT_SECRET", SECRET)];
    let (_node, listening) = serve(&env).await;
    for field in ["local_addr", "admin_addr"] {
        let v = &listening["fields"][field];
        assert!(
            v.as_str().is_some_and(|s| s.parse::<SocketAddr>().is_ok()),
            "{field} is not a socket address: {listening}"
        );
    }
}

/// Starts the node and sends SIGTERM the moment its first log line appears (from a shell, so the
/// signal follows within microseconds), ten times. Every run must drain and exit 0 within 5 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_right_after_startup_still_drains_and_exits_zero() {
    let script = r#"
bin="$1"; dir=$(mktemp -d)
for i in 1 2 3 4 5 6 7 8 9 10; do
  f="$dir/err$i"; : > "$f"
  "$bin" serve --port 0 --metrics-port 0 --bind 127.0.0.1 2>"$f" &
  pid=$!
  until [ -s "$f" ]; do :; done
  kill -TERM $pid
  n=0; while kill -0 $pid 2>/dev/null && [ $n -lt 50 ]; do sleep 0.1; n=$((n+1)); done
  if kill -0 $pid 2>/dev/null; then echo hung; kill -KILL $pid; wait $pid; else wait $pid; echo "exit=$?"; fi
done
rm -rf "$dir"
"#;
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new("sh")
            .args(["-c", script, "sh", BIN])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("LOG_FORMAT", "json")
            .env("JWT_SECRET", SECRET)
            .env("NODE_ID", "cli-test")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    let outcomes = String::from_utf8_lossy(&out.stdout);
    let outcomes: Vec<&str> = outcomes.lines().collect();
    assert_eq!(outcomes.len(), 10, "{outcomes:?} {out:?}");
    assert!(
        outcomes.iter().all(|o| *o == "exit=0"),
        "every early SIGTERM should drain and exit 0: {outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_nodes_on_a_redis_cluster_deliver_across_nodes() {
    let cluster = bellhop_testkit::RedisCluster::shared().await;
    // Any one node of the cluster: the rest is discovered.
    let seed = format!("redis://127.0.0.1:{}", cluster.ports()[1]);
    let env = |node: &'static str| {
        [
            ("LOG_FORMAT", "json"),
            ("JWT_SECRET", SECRET),
            ("NODE_ID", node),
            ("REDIS_URL", seed.as_str()),
            ("REDIS_CLUSTER", "true"),
        ]
    };
    let (a, _) = serve(&env("cluster-a")).await;
    let (b, _) = serve(&env("cluster-b")).await;
    let alice = mint(
        SECRET,
        &["--sub", "alice", "--role", "staff", "--prop", "hc"],
    )
    .await;
    let service = mint(
        SECRET,
        &["--sub", "pms", "--role", "service", "--prop", "hc"],
    )
    .await;
    let (mut ws, welcome) = connect(a.local, &alice).await;
    assert_eq!(welcome["node"], "cluster-a", "{welcome}");
    // Channels on different slots, so on different shards of the three.
    let rooms: Vec<String> = (0..6).map(|i| format!("room:{i}")).collect();
    for (i, room) in rooms.iter().enumerate() {
        ws.send(Message::text(
            json!({"type": "subscribe", "id": i, "channel": room}).to_string(),
        ))
        .await
        .unwrap();
        let subscribed = next_frame(&mut ws).await;
        assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    }
    for (i, room) in rooms.iter().enumerate() {
        let (status, body) = http(
            b.local,
            "POST",
            "/api/v1/publish",
            Some(&service),
            &json!({"channel": room, "event": "SERVICE_REQUEST", "payload": {"n": i}}).to_string(),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let message = next_frame(&mut ws).await;
        assert_eq!(message["type"], "message", "{message}");
        assert_eq!(message["channel"], room.as_str(), "{message}");
        assert_eq!(message["message"]["payload"]["n"], i, "{message}");
    }
    // History is in the cluster too: node A reads what node B stored.
    let (status, body) = http(
        a.local,
        "GET",
        "/api/v1/channels/room:3/history",
        Some(&service),
        "",
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let history: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        history["messages"][0]["message"]["payload"]["n"], 3,
        "{history}"
    );
}

#[tokio::test]
async fn serve_with_tls_refuses_missing_or_bad_files_naming_them() {
    let on = ("SSL_ENABLED", "true");
    assert_serve_refuses(&[on], "SSL_CERT_PATH").await;
    assert_serve_refuses(&[on, ("SSL_CERT_PATH", "/c.pem")], "SSL_KEY_PATH").await;
    let missing = [
        on,
        ("SSL_CERT_PATH", "/nonexistent/bellhop/tls.crt"),
        ("SSL_KEY_PATH", "/nonexistent/bellhop/tls.key"),
    ];
    assert_serve_refuses(&missing, "/nonexistent/bellhop/tls.crt").await;

    let ca = bellhop_testkit::tls::TestCa::new();
    let leaf = ca.issue("cli", 2090);
    let dir = bellhop_testkit::tls::CertDir::new(&ca, &leaf);
    let cert = dir.cert_path().to_str().unwrap().to_string();
    let key = dir.key_path().to_str().unwrap().to_string();
    let files = [on, ("SSL_CERT_PATH", &cert), ("SSL_KEY_PATH", &key)];
    let mut old = files.to_vec();
    old.push(("SSL_MIN_VERSION", "1.1"));
    assert_serve_refuses(&old, "SSL_MIN_VERSION").await;
    dir.overwrite(b"garbage", leaf.key_pem.as_bytes());
    assert_serve_refuses(&files, &cert).await;
    let other = ca.issue("other", 2090);
    dir.overwrite(leaf.cert_pem.as_bytes(), other.key_pem.as_bytes());
    assert_serve_refuses(&files, "does not match").await;
}

/// Runs `bellhop connect` with `input` on its standard input.
async fn connect_cli(args: &[&str], env: &[(&str, &str)], input: &str) -> Output {
    let mut all = vec!["connect"];
    all.extend_from_slice(args);
    let mut child = bellhop(&all, env)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(input.as_bytes()).await.unwrap();
    drop(stdin);
    tokio::time::timeout(DEADLINE, child.wait_with_output())
        .await
        .expect("bellhop connect exits within the deadline")
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_node_serves_wss_and_bellhop_connect_trusts_its_ca() {
    let ca = bellhop_testkit::tls::TestCa::new();
    let leaf = ca.issue("cli-node", 2090);
    let dir = bellhop_testkit::tls::CertDir::new(&ca, &leaf);
    let (cert, key) = (dir.cert_path(), dir.key_path());
    let env = [
        ("LOG_FORMAT", "json"),
        ("JWT_SECRET", SECRET),
        ("SSL_ENABLED", "true"),
        ("SSL_CERT_PATH", cert.to_str().unwrap()),
        ("SSL_KEY_PATH", key.to_str().unwrap()),
    ];
    let (mut node, listening) = serve(&env).await;
    assert_eq!(listening["fields"]["scheme"], "tls", "{listening}");
    let token = mint(SECRET, &["--sub", "s1", "--role", "staff", "--prop", "h1"]).await;
    let url = format!("wss://{}/ws", node.local);
    let ca_path = dir.ca_path();
    let out = connect_cli(
        &[
            "--url",
            &url,
            "--ca",
            ca_path.to_str().unwrap(),
            "--token",
            &token,
        ],
        &[],
        "{\"type\":\"ping\"}\n",
    )
    .await;
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let types: Vec<String> = stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["type"].to_string())
        .collect();
    assert_eq!(types, ["\"welcome\"", "\"pong\""], "{stdout}");

    // Without --ca the test CA is not trusted: a clear failure, not a connection.
    let out = connect_cli(&["--url", &url, "--token", &token], &[], "").await;
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("cannot connect"), "{stderr}");

    // The admin port stays plain HTTP.
    let (status, body) = http(node.admin, "GET", "/readyz", None, "").await;
    assert_eq!(status, 200, "{body}");
    sigterm(&node.child).await;
    let status = tokio::time::timeout(DEADLINE, node.child.wait())
        .await
        .expect("exits after SIGTERM")
        .unwrap();
    assert_eq!(status.code(), Some(0));
}

/// With the development secret and no address configured, the node listens on loopback only and
/// says so; its text logs carry no colour codes when stderr is not a terminal (here, a pipe).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_development_secret_binds_loopback_and_piped_logs_have_no_colours() {
    let mut child = bellhop(&["serve", "--port", "0", "--metrics-port", "0"], &[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let seen = tokio::time::timeout(DEADLINE, async {
        let mut seen = Vec::new();
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains("gateway listening");
            seen.push(line);
            if done {
                return seen;
            }
        }
        panic!("stderr ended before `gateway listening`: {seen:#?}");
    })
    .await
    .expect("`gateway listening` within the deadline");
    let text = seen.join("\n");
    assert!(
        !text.contains('\u{1b}'),
        "ANSI escapes in piped logs: {text}"
    );
    assert!(
        text.contains("listening on 127.0.0.1 only, because the development secret is in use"),
        "{text}"
    );
    assert!(text.contains("local_addr=127.0.0.1:"), "{text}");
    assert!(!text.contains("addr=0.0.0.0"), "{text}");
}

/// A refused upgrade shows the server's reason, not only the HTTP status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bellhop_connect_shows_why_the_server_refused_the_upgrade() {
    let (node, _) = serve(&[("LOG_FORMAT", "json"), ("JWT_SECRET", SECRET)]).await;
    let foreign = mint(
        "another-secret-0123456789abcdef0123456789",
        &["--sub", "u1", "--role", "staff", "--prop", "h1"],
    )
    .await;
    let url = format!("ws://{}/ws", node.local);
    let out = connect_cli(&["--url", &url, "--token", &foreign], &[], "").await;
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the server refused the upgrade: HTTP 401 Unauthorized: unauthorized: "),
        "{stderr}"
    );
    assert!(
        stderr.contains("signature"),
        "the verifier's reason: {stderr}"
    );
}

/// Reads stderr lines into `seen` until one contains `until` (deadline 40 s: the subscriber
/// probe runs every 15 s).
async fn read_until(
    lines: &mut tokio::io::Lines<BufReader<tokio::process::ChildStderr>>,
    seen: &mut Vec<String>,
    until: &str,
) {
    let found = tokio::time::timeout(Duration::from_secs(40), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let done = line.contains(until);
            seen.push(line);
            if done {
                return true;
            }
        }
        false
    })
    .await;
    assert!(
        matches!(found, Ok(true)),
        "no {until:?} in the log: {seen:#?}"
    );
}

/// When the node's Redis dies, the log says so in words, with no debug structs from the Redis
/// client, and a publish is told what is wrong (not "Request timed out").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_redis_is_reported_in_words() {
    let redis = bellhop_testkit::RedisServer::start().await;
    let url = redis.url();
    let mut child = bellhop(
        &SERVE_ON_FREE_PORTS,
        &[("JWT_SECRET", SECRET), ("REDIS_URL", &url)],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    read_until(&mut lines, &mut seen, "gateway listening").await;
    let local: SocketAddr = seen
        .last()
        .and_then(|l| l.split("local_addr=").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    redis.kill().await;
    let service = mint(
        SECRET,
        &["--sub", "pms", "--role", "service", "--prop", "h1"],
    )
    .await;
    let (status, body) = http(
        local,
        "POST",
        "/api/v1/publish",
        Some(&service),
        r#"{"channel":"dept:housekeeping","event":"ROOM_STATUS_UPDATE","payload":{}}"#,
    )
    .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("\"code\":\"unavailable\""), "{body}");
    assert!(!body.contains("Request timed out"), "{body}");
    // Whichever of the two 5 s deadlines ends first: the Redis client's, or the dispatcher's
    // around each broker call.
    assert!(
        [
            "cannot reach Redis",
            "Redis is down, unreachable",
            "broker call timed out"
        ]
        .iter()
        .any(|words| body.contains(words)),
        "{body}"
    );
    read_until(&mut lines, &mut seen, "live delivery from Redis is down").await;
    let text = seen.join("\n");
    assert!(
        !text.contains("Error {"),
        "a debug struct in the log: {text}"
    );
    assert!(!text.contains("Os {"), "a debug struct in the log: {text}");
    let _ = child.kill().await;
}
