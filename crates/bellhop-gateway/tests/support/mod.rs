//! Test support: a real gateway node on port 0 (on a chosen broker backend, plain or TLS), real
//! WebSocket clients speaking the protocol over real sockets (`ws` or `wss`), and a minimal
//! HTTP/1.1 client (plain or over TLS). Every wait has a deadline; nothing sleeps to let things
//! settle.

#![allow(dead_code, unreachable_pub, missing_docs, clippy::unwrap_used)]

/// Runs each named `async fn(Backend)` once per broker backend: the embedded broker, one Redis
/// server and a 3-master Redis Cluster (the same suite on every backend).
#[macro_export]
macro_rules! backend_suite {
    ($($name:ident),* $(,)?) => {
        suite_on!(memory, Memory, $($name),*);
        redis_suite!($($name),*);
    };
}

/// Runs each named `async fn(Backend)` on one Redis server and on a Redis Cluster: for what
/// needs several nodes sharing a broker (the embedded broker serves one node).
#[macro_export]
macro_rules! redis_suite {
    ($($name:ident),* $(,)?) => {
        suite_on!(redis, Redis, $($name),*);
        suite_on!(redis_cluster, RedisCluster, $($name),*);
    };
}

/// The module `$module` of tests: each named `async fn(Backend)` on `Backend::$backend`.
#[macro_export]
macro_rules! suite_on {
    ($module:ident, $backend:ident, $($name:ident),*) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Backend::$backend).await
                }
            )*
        }
    };
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

// The names the forwarded `Broker` methods of `FaultyBroker` use (see `forward_broker!`).
use bellhop_dispatcher::{
    Attachment, BanStore, Broker, BrokerError, ChannelEvent, ChannelKey, Dispatcher,
    DispatcherConfig, LiveSink, MemoryBroker, MemoryConfig, RedisBroker, RedisConfig, Subscription,
};
use bellhop_gateway::auth::{mint, Claims};
use bellhop_gateway::{Gateway, GatewayConfig, TlsConfig};
use bellhop_protocol::{Codec, Offset, Role, MSGPACK_SUBPROTOCOL};
use bellhop_testkit::tls::{CertDir, TestCa};
use bellhop_testkit::{RedisCluster, RedisServer};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub const SECRET: &[u8] = b"integration-test-secret-0123456789abcdef";
/// Longest any single wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// The broker backends every protocol test runs against.
#[derive(Clone, Copy, Debug)]
pub enum Backend {
    /// The embedded broker.
    Memory,
    /// A real `redis-server` started for the test on a free port.
    Redis,
    /// A real 3-master Redis Cluster (sharded pub/sub), shared by the test binary; each node
    /// set keeps to a key prefix of its own.
    RedisCluster,
}

pub struct TestNode {
    pub gateway: Option<Gateway>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub broker: Arc<dyn Broker>,
    /// The Redis server behind the node, kept alive as long as the node.
    pub redis: Option<Arc<RedisServer>>,
    /// The node's certificate files and the CA clients trust, when it serves TLS.
    pub tls: Option<TlsFixture>,
}

/// What a TLS node's clients need: the CA that issued its certificate, the files the node reads.
pub struct TlsFixture {
    pub ca: TestCa,
    pub dir: CertDir,
    /// The certificate the node starts with.
    pub first: bellhop_testkit::tls::Leaf,
    /// A client for TLS 1.3 and 1.2 that trusts the CA.
    pub client: Arc<rustls::ClientConfig>,
}

/// A Redis broker on `server`, as a node would connect to it.
pub async fn redis_broker(server: &RedisServer) -> Arc<RedisBroker> {
    let config = RedisConfig {
        url: server.url(),
        ..RedisConfig::default()
    };
    connected(config).await
}

/// A broker on the shared Redis Cluster under a key prefix no other test uses: brokers made
/// with the same `prefix` share data, as a deployment's nodes do.
pub async fn cluster_broker(prefix: &str) -> Arc<RedisBroker> {
    cluster_broker_on(RedisCluster::shared().await, prefix).await
}

/// A broker on `cluster` under `prefix`.
pub async fn cluster_broker_on(cluster: &RedisCluster, prefix: &str) -> Arc<RedisBroker> {
    let config = RedisConfig {
        url: cluster.url(),
        cluster: true,
        key_prefix: prefix.to_owned(),
        ..RedisConfig::default()
    };
    connected(config).await
}

/// A Redis broker connected with `config`.
async fn connected(config: RedisConfig) -> Arc<RedisBroker> {
    let cluster = if config.cluster { "cluster " } else { "" };
    match RedisBroker::connect(config).await {
        Ok(broker) => Arc::new(broker),
        Err(e) => panic!("redis {cluster}broker connects: {e:?}"),
    }
}

/// A key prefix of its own for one deployment in this test process.
pub fn fresh_prefix() -> String {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "t{}",
        NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// `n` nodes of one deployment on `backend` (Redis or Redis Cluster), as behind a load
/// balancer. Each node keeps what its broker needs alive.
pub async fn nodes_on(backend: Backend, n: usize) -> Vec<TestNode> {
    match backend {
        Backend::Memory => panic!("the embedded broker serves one node only"),
        Backend::Redis => redis_nodes(n).await.1,
        Backend::RedisCluster => {
            let prefix = fresh_prefix();
            let mut nodes = Vec::new();
            for i in 0..n {
                let broker = cluster_broker(&prefix).await;
                nodes.push(TestNode::start_on(broker, |c| c.node_id = format!("node-{i}")).await);
            }
            nodes
        }
    }
}

/// `n` nodes sharing one Redis server, as behind a load balancer.
pub async fn redis_nodes(n: usize) -> (Arc<RedisServer>, Vec<TestNode>) {
    let server = Arc::new(RedisServer::start().await);
    let mut nodes = Vec::new();
    for i in 0..n {
        let broker = redis_broker(&server).await;
        let mut node = TestNode::start_on(broker, |c| c.node_id = format!("node-{i}")).await;
        node.redis = Some(server.clone());
        nodes.push(node);
    }
    (server, nodes)
}

pub fn config() -> GatewayConfig {
    let mut c = GatewayConfig::new(SECRET.to_vec());
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.admin_listen = Some("127.0.0.1:0".parse().unwrap());
    c.node_id = "test-node".into();
    // Generous rate limits: the suites publish and ping far faster than a person would. The
    // limits themselves are tested in tests/limits.rs with the defaults or tight settings.
    c.rate_limits.publishes_per_user_per_minute = 10_000_000;
    c.rate_limits.frames_per_second = 1_000_000;
    c.rate_limits.connections_per_ip_per_minute = 1_000_000;
    c.hotel.publish_bytes_per_user_per_minute = u32::MAX;
    // Every test client comes from 127.0.0.1; tests/limits.rs checks the pending caps.
    c.edge.max_pending_per_ip = 100_000;
    c
}

impl TestNode {
    pub async fn start(backend: Backend) -> TestNode {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut GatewayConfig)) -> TestNode {
        match backend {
            Backend::Memory => {
                Self::start_on(Arc::new(MemoryBroker::new(MemoryConfig::default())), tweak).await
            }
            Backend::Redis => {
                let server = Arc::new(RedisServer::start().await);
                let mut node = Self::start_on(redis_broker(&server).await, tweak).await;
                node.redis = Some(server);
                node
            }
            Backend::RedisCluster => {
                Self::start_on(cluster_broker(&fresh_prefix()).await, tweak).await
            }
        }
    }

    /// A node on `broker`, which is also where it shares its bans.
    pub async fn start_on<B: Broker + BanStore + 'static>(
        broker: Arc<B>,
        tweak: impl FnOnce(&mut GatewayConfig),
    ) -> TestNode {
        let mut c = config();
        tweak(&mut c);
        let bans: Arc<dyn BanStore> = broker.clone();
        let broker: Arc<dyn Broker> = broker;
        let dispatcher = Arc::new(Dispatcher::new(broker.clone(), DispatcherConfig::default()));
        let gateway = Gateway::bind(c, dispatcher, bans)
            .await
            .expect("gateway binds");
        TestNode {
            addr: gateway.local_addr(),
            admin: gateway.admin_addr().expect("admin enabled"),
            gateway: Some(gateway),
            broker,
            redis: None,
            tls: None,
        }
    }

    /// A node on the embedded broker serving TLS on its main port, with a certificate `CN=first`
    /// issued by a fresh test CA. The files are only re-read when the test says so
    /// (`reload_tls`), unless `tweak` sets a reload interval.
    pub async fn start_tls(tweak: impl FnOnce(&mut GatewayConfig)) -> TestNode {
        let ca = TestCa::new();
        let first = ca.issue("first", 2090);
        let dir = CertDir::new(&ca, &first);
        let mut tls = TlsConfig::new(dir.cert_path(), dir.key_path());
        tls.reload_interval = None;
        let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
        let mut node = Self::start_on(broker, |c| {
            c.tls = Some(tls);
            tweak(c);
        })
        .await;
        node.tls = Some(TlsFixture {
            client: ca.default_client(),
            ca,
            dir,
            first,
        });
        node
    }

    fn connector(&self) -> Option<Connector> {
        self.tls
            .as_ref()
            .map(|t| Connector::Rustls(t.client.clone()))
    }

    pub fn gateway(&self) -> &Gateway {
        self.gateway.as_ref().expect("running")
    }

    /// `ws://` or, for a TLS node, `wss://` (verified against the test CA: the certificate is
    /// issued for 127.0.0.1).
    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() { "wss" } else { "ws" };
        format!("{scheme}://{}/ws", self.addr)
    }

    /// Connects with the token in the Authorization header and waits for `welcome`.
    pub async fn connect(&self, token: &str) -> Client {
        self.connect_welcomed(token, Codec::Json).await
    }

    pub async fn connect_msgpack(&self, token: &str) -> Client {
        self.connect_welcomed(token, Codec::MsgPack).await
    }

    async fn connect_welcomed(&self, token: &str, codec: Codec) -> Client {
        let mut client = self
            .connect_with(Some(token), codec)
            .await
            .expect("upgrade accepted");
        let welcome = client.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        client
    }

    /// Connects without waiting for anything; the token (if any) goes in the header.
    pub async fn connect_with(
        &self,
        token: Option<&str>,
        codec: Codec,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let mut request = self.url().into_client_request().unwrap();
        if let Some(token) = token {
            request
                .headers_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        if codec == Codec::MsgPack {
            request.headers_mut().insert(
                "sec-websocket-protocol",
                MSGPACK_SUBPROTOCOL.parse().unwrap(),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async_tls_with_config(
            request,
            None,
            false,
            self.connector(),
        )
        .await?;
        Ok(Client {
            ws,
            codec,
            next_id: 1,
            pending: Vec::new(),
        })
    }

    /// Connects to an arbitrary URL (query tokens, other paths).
    pub async fn connect_url(
        &self,
        url: &str,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) =
            tokio_tungstenite::connect_async_tls_with_config(url, None, false, self.connector())
                .await?;
        Ok(Client {
            ws,
            codec: Codec::Json,
            next_id: 1,
            pending: Vec::new(),
        })
    }

    /// Connects with `token` in each of the three ways a client can present it (the
    /// Authorization header, `?token=`, a first `auth` frame), each waited for its `welcome`.
    pub async fn connect_three_ways(&self, token: &str) -> Vec<(&'static str, Client)> {
        let header = self.connect(token).await;
        let mut query = self
            .connect_url(&format!("{}?token={token}", self.url()))
            .await
            .expect("upgrade accepted");
        let welcome = query.next().await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        let mut frame = self.connect_with(None, Codec::Json).await.unwrap();
        let welcome = frame.request(json!({"type": "auth", "token": token})).await;
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        vec![("header", header), ("query", query), ("auth frame", frame)]
    }

    /// Checks that `token` is refused every way it can be presented, with the documented
    /// status and codes, and a reason containing `reason`: HTTP 401 with an `unauthorized` body
    /// at the upgrade (header and query) and on the HTTP API; `error unauthorized` (echoing the
    /// request id) then close 4001 after a first `auth` frame.
    pub async fn assert_token_refused(&self, token: &str, reason: &str) {
        let check_body = |way: &str, status: u16, body: &Value| {
            assert_eq!(status, 401, "{way}: {body}");
            assert_eq!(body["error"]["code"], "unauthorized", "{way}: {body}");
            let message = body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(reason),
                "{way}: {message:?} lacks {reason:?}"
            );
        };
        let (status, body) = upgrade_refusal(self.connect_with(Some(token), Codec::Json).await);
        check_body("header", status, &body);
        let query = self
            .connect_url(&format!("{}?token={token}", self.url()))
            .await;
        let (status, body) = upgrade_refusal(query);
        check_body("query", status, &body);
        let (status, body) = http_json(
            self.addr,
            "GET",
            "/api/v1/channels/broadcast/presence",
            Some(token),
            None,
        )
        .await;
        check_body("HTTP API", status, &body);
        let mut c = self.connect_with(None, Codec::Json).await.unwrap();
        c.send(json!({"type": "auth", "id": 1, "token": token}))
            .await;
        let (code, close_reason, frames) = c.closed().await;
        assert_eq!(
            code,
            bellhop_protocol::close::UNAUTHORIZED,
            "auth frame: {frames:?}"
        );
        assert_eq!(close_reason, "authentication failed");
        assert_eq!(frames.len(), 1, "one error, then the close: {frames:?}");
        assert_eq!(frames[0]["type"], "error", "{frames:?}");
        assert_eq!(frames[0]["code"], "unauthorized", "{frames:?}");
        assert_eq!(frames[0]["id"], 1, "{frames:?}");
        let message = frames[0]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains(reason),
            "auth frame: {message:?} lacks {reason:?}"
        );
    }

    pub async fn metric(&self, name_and_labels: &str) -> f64 {
        let (_, _, body) = http(self.admin, "GET", "/metrics", &[], b"").await;
        metric_value(&body, name_and_labels)
    }

    /// Waits (with a deadline) until at most `n` WebSocket connections are open on this node.
    pub async fn wait_connections_at_most(&self, n: usize) {
        tokio::time::timeout(DEADLINE, self.gateway().wait_connections_at_most(n))
            .await
            .unwrap_or_else(|_| panic!("more than {n} connections stayed open"));
    }

    /// Waits (with a deadline) until a metric reaches at least `value`.
    pub async fn wait_metric(&self, name_and_labels: &str, value: f64) {
        let waited = tokio::time::timeout(DEADLINE, async {
            loop {
                if self.metric(name_and_labels).await >= value {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "metric {name_and_labels} never reached {value}"
        );
    }
}

impl TestNode {
    /// Waits (with a deadline) until a metric is at most `value`.
    pub async fn wait_metric_at_most(&self, name_and_labels: &str, value: f64) {
        let waited = tokio::time::timeout(DEADLINE, async {
            while self.metric(name_and_labels).await > value {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(
            waited.is_ok(),
            "metric {name_and_labels} stayed above {value}"
        );
    }
}

/// The status and JSON body of an upgrade the server refused.
pub fn upgrade_refusal(
    result: Result<Client, tokio_tungstenite::tungstenite::Error>,
) -> (u16, Value) {
    match result {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).to_string())
                .unwrap_or_default();
            let body = serde_json::from_str(&body).unwrap_or(Value::String(body));
            (response.status().as_u16(), body)
        }
        Err(other) => panic!("expected an HTTP refusal, got {other}"),
        Ok(_) => panic!("expected an HTTP refusal, got an upgrade"),
    }
}

/// Reads one sample of the Prometheus text format; 0 when absent.
pub fn metric_value(body: &str, name_and_labels: &str) -> f64 {
    let (name, labels) = name_and_labels
        .split_once('{')
        .map_or((name_and_labels, ""), |(n, l)| (n, l.trim_end_matches('}')));
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(|(series, _)| {
            let (n, ls) = series
                .split_once('{')
                .map_or((*series, ""), |(n, l)| (n, l));
            n == name
                && labels
                    .split(',')
                    .filter(|x| !x.is_empty())
                    .all(|want| ls.contains(want))
        })
        .map(|(_, v)| v.parse::<f64>().unwrap_or(0.0))
        .sum()
}

pub fn token(sub: &str, role: Role, prop: &str, rooms: &[&str], depts: &[&str]) -> String {
    signed(&claims(sub, role, prop, rooms, depts, 3600))
}

/// A token of `claims`, signed with the suite's secret.
pub fn signed(claims: &Claims) -> String {
    mint(SECRET, claims).unwrap()
}

pub fn now_secs() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// Claims of a token that expires `ttl` seconds from now (no `iss`, `aud` or `nbf`).
pub fn claims(
    sub: &str,
    role: Role,
    prop: &str,
    rooms: &[&str],
    depts: &[&str],
    ttl: i64,
) -> Claims {
    let now = now_secs();
    Claims {
        sub: sub.into(),
        role,
        prop: prop.into(),
        rooms: rooms.iter().map(|s| s.to_string()).collect(),
        depts: depts.iter().map(|s| s.to_string()).collect(),
        exp: (now + ttl) as u64,
        iat: Some(now as u64),
        nbf: None,
        iss: None,
        aud: None,
    }
}

pub fn guest(sub: &str, rooms: &[&str]) -> String {
    token(sub, Role::Guest, "h1", rooms, &[])
}

pub fn staff(sub: &str, depts: &[&str]) -> String {
    token(sub, Role::Staff, "h1", &[], depts)
}

pub fn manager(sub: &str) -> String {
    token(sub, Role::Manager, "h1", &[], &[])
}

pub fn service(sub: &str) -> String {
    token(sub, Role::Service, "h1", &[], &[])
}

pub struct Client {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    pub codec: Codec,
    next_id: u64,
    /// Frames read while waiting for something else, returned first by `next`.
    pending: Vec<Value>,
}

impl Client {
    pub fn from_ws(ws: WebSocketStream<MaybeTlsStream<TcpStream>>) -> Client {
        Client {
            ws,
            codec: Codec::Json,
            next_id: 1,
            pending: Vec::new(),
        }
    }

    /// The next frame if one arrives before the caller's timeout; never returns pending frames.
    pub async fn maybe_next(&mut self) -> Option<Value> {
        Some(self.read().await)
    }

    pub async fn send(&mut self, frame: Value) {
        let message = match self.codec {
            Codec::Json => Message::text(frame.to_string()),
            Codec::MsgPack => Message::binary(rmp_serde::to_vec_named(&frame).unwrap()),
        };
        self.ws.send(message).await.expect("send");
    }

    /// Sends a frame; an error (the server closed meanwhile) is returned, not a panic.
    pub async fn try_send(
        &mut self,
        frame: Value,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::text(frame.to_string())).await
    }

    pub async fn send_raw(&mut self, message: Message) {
        self.ws.send(message).await.expect("send");
    }

    /// Sends a request with a fresh id and returns the reply with that id (frames that arrive
    /// meanwhile are kept for `next`).
    pub async fn request(&mut self, mut frame: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        frame["id"] = id.into();
        self.send(frame).await;
        self.wait_for(|f| f["id"] == id).await
    }

    /// The next frame from the server (deadline: [`DEADLINE`]).
    pub async fn next(&mut self) -> Value {
        if !self.pending.is_empty() {
            return self.pending.remove(0);
        }
        self.read().await
    }

    async fn read(&mut self) -> Value {
        loop {
            let message = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("a frame within the deadline")
                .expect("connection open")
                .expect("frame");
            match message {
                Message::Text(t) => return serde_json::from_str(&t).expect("server sends JSON"),
                Message::Binary(b) => {
                    return rmp_serde::from_slice(&b).expect("server sends MessagePack");
                }
                Message::Close(c) => panic!("connection closed while waiting for a frame: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Frames received while waiting for others and not consumed yet.
    pub fn take_pending(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.pending)
    }

    /// Waits for the first frame matching `pred`, keeping the others for `next`.
    pub async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        if let Some(i) = self.pending.iter().position(&pred) {
            return self.pending.remove(i);
        }
        loop {
            let frame = self.read().await;
            if pred(&frame) {
                return frame;
            }
            self.pending.push(frame);
        }
    }

    pub async fn wait_type(&mut self, t: &str) -> Value {
        self.wait_for(|f| f["type"] == t).await
    }

    pub async fn subscribe(&mut self, channel: &str) -> Value {
        let reply = self
            .request(json!({"type": "subscribe", "channel": channel}))
            .await;
        assert_eq!(reply["type"], "subscribed", "{reply}");
        reply
    }

    pub async fn publish(&mut self, channel: &str, event: &str, payload: Value) -> Value {
        let reply = self
            .request(
                json!({"type": "publish", "channel": channel, "event": event, "payload": payload}),
            )
            .await;
        assert_eq!(reply["type"], "ack", "{reply}");
        reply
    }

    /// Reads until the server closes; returns the close code and reason. Frames before the
    /// close are returned too.
    pub async fn closed(&mut self) -> (u16, String, Vec<Value>) {
        let mut frames = std::mem::take(&mut self.pending);
        loop {
            let next = tokio::time::timeout(DEADLINE, self.ws.next())
                .await
                .expect("close within the deadline");
            match next {
                Some(Ok(Message::Close(Some(frame)))) => {
                    return (u16::from(frame.code), frame.reason.to_string(), frames)
                }
                Some(Ok(Message::Close(None))) => {
                    return (u16::from(CloseCode::Status), String::new(), frames)
                }
                Some(Ok(Message::Text(t))) => frames.push(serde_json::from_str(&t).unwrap()),
                Some(Ok(Message::Binary(b))) => frames.push(rmp_serde::from_slice(&b).unwrap()),
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("connection failed before a close frame: {e}"),
                None => panic!("connection ended without a close frame"),
            }
        }
    }
}

/// A minimal HTTP/1.1 request over a real socket: returns status, headers (lowercase names)
/// and body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let stream = TcpStream::connect(addr).await.expect("connect");
    http_over(stream, addr, method, path, headers, body).await
}

/// The same request over TLS, trusting the test CA of `client`.
pub async fn https(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let stream = bellhop_testkit::tls::connect(addr, client)
        .await
        .expect("TLS handshake");
    http_over(stream, addr, method, path, headers, body).await
}

/// One HTTP/1.1 request and its whole response over any stream.
pub async fn http_over<S: AsyncRead + AsyncWrite + Unpin>(
    mut stream: S,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, String) {
    let mut head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .unwrap();
    parse_response(&raw)
}

/// An HTTP/1.1 response read to its end: the status (0 when there is none), the headers (names
/// in lower case) and the body.
pub fn parse_response(raw: &[u8]) -> (u16, Vec<(String, String)>, String) {
    let text = String::from_utf8_lossy(raw).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let (status, headers) = parse_head(head.lines());
    (status, headers, body.to_string())
}

/// The status (0 when the first line has none) and the headers (names in lower case) of a
/// response head's `lines`, the status line first.
fn parse_head<'a>(mut lines: impl Iterator<Item = &'a str>) -> (u16, Vec<(String, String)>) {
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

pub async fn http_json(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let mut headers = vec![("content-type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("authorization", a));
    }
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let (status, _, text) = http(addr, method, path, &headers, body.as_bytes()).await;
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// A memory broker whose writes can be made to fail, to check how failures reach clients.
#[derive(Debug)]
pub struct FaultyBroker {
    pub inner: MemoryBroker,
    pub publish_error: parking_lot::Mutex<Option<BrokerError>>,
    /// When set, `presence_join` fails with it.
    pub presence_error: parking_lot::Mutex<Option<BrokerError>>,
    /// When set, reads with a `since` fail with it (a replay fails after `subscribed`).
    pub read_error: parking_lot::Mutex<Option<BrokerError>>,
    /// While true, presence reads never answer (a broker that hangs).
    pub presence_hangs: std::sync::atomic::AtomicBool,
}

impl FaultyBroker {
    pub fn new() -> Arc<FaultyBroker> {
        Arc::new(FaultyBroker {
            inner: MemoryBroker::new(MemoryConfig::default()),
            publish_error: Default::default(),
            presence_error: Default::default(),
            read_error: Default::default(),
            presence_hangs: Default::default(),
        })
    }
}

/// Shares no bans, as the embedded broker.
impl BanStore for FaultyBroker {}

/// Fails with the error a test put in `fault`, if there is one.
fn injected(fault: &parking_lot::Mutex<Option<BrokerError>>) -> Result<(), BrokerError> {
    fault.lock().clone().map_or(Ok(()), Err)
}

bellhop_testkit::forward_broker! {
    impl Broker for FaultyBroker => inner,
    forward [publish_ephemeral, subscribe, attach, presence_leave, mark_read, unread]
    {
        async fn publish_batch(
            &self,
            batch: Vec<bellhop_dispatcher::Publish>,
        ) -> Vec<Result<bellhop_dispatcher::Published, bellhop_dispatcher::BrokerError>> {
            let failure = self.publish_error.lock().clone();
            match failure {
                Some(e) => batch.iter().map(|_| Err(e.clone())).collect(),
                None => self.inner.publish_batch(batch).await,
            }
        }

        async fn read(
            &self,
            key: &bellhop_dispatcher::ChannelKey,
            since: Option<bellhop_protocol::Offset>,
            limit: usize,
        ) -> Result<bellhop_dispatcher::ReadResult, bellhop_dispatcher::BrokerError> {
            if since.is_some() {
                injected(&self.read_error)?;
            }
            self.inner.read(key, since, limit).await
        }

        async fn presence_join(
            &self,
            key: &bellhop_dispatcher::ChannelKey,
            u: &str,
            s: &str,
        ) -> Result<bool, bellhop_dispatcher::BrokerError> {
            injected(&self.presence_error)?;
            self.inner.presence_join(key, u, s).await
        }

        async fn presence(
            &self,
            key: &bellhop_dispatcher::ChannelKey,
        ) -> Result<Vec<String>, bellhop_dispatcher::BrokerError> {
            if self
                .presence_hangs
                .load(std::sync::atomic::Ordering::SeqCst)
            {
                std::future::pending::<()>().await;
            }
            self.inner.presence(key).await
        }
    }
}

/// Sends `request` (raw bytes: a request head, perhaps a body) over a fresh socket and reads the
/// response head: the status (0 when the node closed without one) and the headers (lower-case
/// names). Does not wait for the connection to end, so keep-alive responses work too.
pub async fn raw_request(addr: SocketAddr, request: &[u8]) -> (u16, Vec<(String, String)>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    // The node may answer (and close) before all of a large request is written.
    let _ = stream.write_all(request).await;
    read_head(&mut stream).await
}

/// [`raw_request`] from the loopback address `source`.
pub async fn raw_request_from(
    source: &str,
    addr: SocketAddr,
    request: &[u8],
) -> (u16, Vec<(String, String)>) {
    let mut stream = tcp_from(source, addr).await.expect("connect");
    let _ = stream.write_all(request).await;
    read_head(&mut stream).await
}

/// Reads a response head from `stream` (deadline: [`DEADLINE`]); status 0 when the stream ended
/// (or was reset) first.
pub async fn read_head<S: AsyncRead + Unpin>(stream: &mut S) -> (u16, Vec<(String, String)>) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    tokio::time::timeout(DEADLINE, async {
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("a response head (or the end of the connection) within the deadline");
    let text = String::from_utf8_lossy(&raw).to_string();
    // The head ends at the first empty line after the status line; a body may follow.
    let mut lines = text.lines();
    let status_line = lines.next();
    parse_head(
        status_line
            .into_iter()
            .chain(lines.take_while(|l| !l.is_empty())),
    )
}

/// The value of header `name` (lower case) in `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// A TCP connection to `addr` from the loopback address `source` (any 127.x.y.z works on
/// Linux), so one test can be several clients the node tells apart by address.
pub async fn tcp_from(source: &str, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source.parse().unwrap(), 0))?;
    socket.connect(addr).await
}

/// A TLS handshake with `node` (a TLS node) over a connection from `source`.
pub async fn tls_from(
    node: &TestNode,
    source: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = tcp_from(source, node.addr).await?;
    let config = node.tls.as_ref().expect("a TLS node").client.clone();
    let name = rustls::pki_types::ServerName::IpAddress(node.addr.ip().into());
    tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
}

/// One HTTP/1.1 request from `source` over a fresh connection: the status and the JSON body
/// (`Null` when there is none), or status 0 when the node closed without answering.
pub async fn http_from(
    source: &str,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, Vec<(String, String)>, Value) {
    let Ok(stream) = tcp_from(source, addr).await else {
        return (0, Vec::new(), Value::Null);
    };
    let mut stream = stream;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let _ = stream.write_all(head.as_bytes()).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(DEADLINE, stream.read_to_end(&mut raw))
        .await
        .expect("a response (or the end of the connection) within the deadline");
    let (status, headers, body) = parse_response(&raw);
    (
        status,
        headers,
        serde_json::from_str(&body).unwrap_or(Value::Null),
    )
}
