//! Clients for fault-injection tests, over real sockets and speaking protocol v1 in JSON:
//!
//! - [`Follower`]: a subscriber that outlives its connections. Whenever one ends (a close frame,
//!   a reset, a node that died), it connects again (to the first of its URLs that answers) and
//!   resumes every channel with `since` = the last offset it received, as docs/PROTOCOL.md §7
//!   tells clients to. It keeps every `message` it receives, for [`crate::ledger::Figures`].
//! - [`WsPublisher`] and [`HttpPublisher`]: publish one message at a time and retry a failed
//!   attempt (after the server's `retryAfterMs`) until it is acknowledged, recording every
//!   attempt in a [`PublishLog`].
//!
//! Every wait has a deadline; the only sleeps are the server's `retryAfterMs` and short pauses
//! between attempts to reach a node that is not accepting connections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::ledger::{Ack, Offset, PublishLog, Received};

/// A client WebSocket connection.
pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Longest one connection attempt (TCP, upgrade and `welcome`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The event every test message is published as.
pub const EVENT: &str = "CHAT_MESSAGE";

/// Connects to `url` with `token` in the `Authorization` header and waits for `welcome`.
pub async fn open(url: &str, token: &str) -> Result<Ws, String> {
    let mut request = url
        .into_client_request()
        .map_err(|e| format!("bad url {url}: {e}"))?;
    let bearer = format!("Bearer {token}")
        .parse()
        .map_err(|e| format!("bad token: {e}"))?;
    request.headers_mut().insert("authorization", bearer);
    let connecting = async {
        let (mut ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        loop {
            match ws.next().await {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text)
                        .map_err(|e| format!("{url}: not JSON: {e}: {text}"))?;
                    if frame["type"] == "welcome" {
                        return Ok(ws);
                    }
                    return Err(format!("{url}: expected welcome, got {frame}"));
                }
                Some(Ok(Message::Close(c))) => return Err(format!("{url}: closed: {c:?}")),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(format!("{url}: {e}")),
                None => return Err(format!("{url}: ended before welcome")),
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .unwrap_or_else(|_| Err(format!("{url}: no welcome within {CONNECT_TIMEOUT:?}")))
}

/// How a connection read ended, or the frame it gave.
enum Read {
    /// A JSON frame.
    Frame(Value),
    /// The connection is over; why.
    Ended(String),
}

fn read_result(
    next: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
) -> Option<Read> {
    match next {
        Some(Ok(Message::Text(text))) => Some(Read::Frame(
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON: {e}: {text}")),
        )),
        Some(Ok(Message::Close(Some(c)))) => Some(Read::Ended(format!(
            "close {} {}",
            u16::from(c.code),
            c.reason
        ))),
        Some(Ok(Message::Close(None))) => Some(Read::Ended("close without a code".into())),
        Some(Ok(Message::Binary(_))) => panic!("binary frame on a JSON connection"),
        Some(Ok(_)) => None,
        Some(Err(e)) => Some(Read::Ended(format!("error: {e}"))),
        None => Some(Read::Ended("ended without a close frame".into())),
    }
}

/// Where a follower is expected to get to: the newest acknowledged offset of each channel
/// (`None` while the publisher is still at work).
pub type Targets = watch::Receiver<Option<HashMap<String, Offset>>>;

/// A subscriber that reconnects and resumes with `since` whenever its connection ends.
#[derive(Debug)]
pub struct Follower {
    /// For messages.
    name: String,
    /// Nodes to connect to; the current one is tried first, then the others in order.
    urls: Vec<String>,
    /// Index of the node in use.
    at: usize,
    /// Sent with every connection.
    token: String,
    /// Channels to keep subscribed.
    channels: Vec<String>,
    /// Per channel, the offset to resume after: the last message received, or `subscribed.offset`
    /// before any arrived.
    resume: HashMap<String, Offset>,
    /// The open connection, if any.
    ws: Option<Ws>,
    /// Next request id.
    next_id: u64,
    /// Subscribe requests not answered yet on this connection: id → (channel, since given).
    awaiting: HashMap<u64, (String, bool)>,
    /// Every `message` received, in order.
    pub received: Vec<Received>,
    /// Connections opened (the first included).
    pub connections: u32,
    /// How each connection ended, and subscribe attempts that failed.
    pub endings: Vec<String>,
    /// Resumes answered with `recovered: false`.
    pub not_recovered: u32,
}

impl Follower {
    /// Connects to `urls[0]` and subscribes to every channel (without `since`); returns once each
    /// is confirmed, so everything published afterwards is the follower's to receive.
    pub async fn start(
        name: &str,
        urls: Vec<String>,
        token: &str,
        channels: &[&str],
        deadline: Instant,
    ) -> Follower {
        let mut f = Follower {
            name: name.into(),
            urls,
            at: 0,
            token: token.into(),
            channels: channels.iter().map(|c| c.to_string()).collect(),
            resume: HashMap::new(),
            ws: None,
            next_id: 1,
            awaiting: HashMap::new(),
            received: Vec::new(),
            connections: 0,
            endings: Vec::new(),
            not_recovered: 0,
        };
        let ws = open(&f.urls[0], &f.token)
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        f.ws = Some(ws);
        f.connections = 1;
        f.subscribe_all().await;
        while !f.awaiting.is_empty() {
            let ws =
                f.ws.as_mut()
                    .unwrap_or_else(|| panic!("{name}: connection lost while subscribing"));
            let next = tokio::time::timeout_at(deadline, ws.next())
                .await
                .unwrap_or_else(|_| panic!("{name}: no `subscribed` before the deadline"));
            match read_result(next) {
                Some(Read::Frame(frame)) => f.handle(frame),
                Some(Read::Ended(why)) => {
                    panic!("{name}: connection ended while subscribing: {why}")
                }
                None => {}
            }
        }
        f
    }

    /// Receives until every channel in the targets is reached, resuming on a new connection
    /// whenever one ends. Panics at `deadline`, saying where it got to.
    pub async fn follow(mut self, mut targets: Targets, deadline: Instant) -> Follower {
        let mut publisher_gone = false;
        loop {
            if let Some(t) = targets.borrow().as_ref() {
                if self.reached(t) {
                    return self;
                }
            }
            if self.ws.is_none() {
                self.reconnect(deadline).await;
                continue;
            }
            let Some(ws) = self.ws.as_mut() else { continue };
            tokio::select! {
                next = ws.next() => match read_result(next) {
                    Some(Read::Frame(frame)) => self.handle(frame),
                    Some(Read::Ended(why)) => self.lost(why),
                    None => {}
                },
                changed = targets.changed(), if !publisher_gone => {
                    publisher_gone = changed.is_err();
                }
                () = tokio::time::sleep_until(deadline) => {
                    panic!(
                        "{}: deadline passed: resume offsets {:?}, targets {:?}, {} received, \
                         connections {}, endings {:?}",
                        self.name,
                        self.resume,
                        targets.borrow().as_ref(),
                        self.received.len(),
                        self.connections,
                        self.endings
                    );
                }
            }
        }
    }

    /// The follower's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    fn reached(&self, targets: &HashMap<String, Offset>) -> bool {
        targets
            .iter()
            .all(|(channel, target)| self.resume.get(channel).is_some_and(|o| o >= target))
    }

    /// The connection ended: forget it (and the unanswered requests on it).
    fn lost(&mut self, why: String) {
        self.endings.push(why);
        self.ws = None;
        self.awaiting.clear();
    }

    async fn subscribe_all(&mut self) {
        for channel in self.channels.clone() {
            let id = self.next_id;
            self.next_id += 1;
            let mut frame = json!({"type": "subscribe", "id": id, "channel": channel});
            if let Some(since) = self.resume.get(&channel) {
                frame["since"] = since.to_string().into();
            }
            self.awaiting
                .insert(id, (channel, frame.get("since").is_some()));
            let Some(ws) = self.ws.as_mut() else { return };
            if let Err(e) = ws.send(Message::text(frame.to_string())).await {
                self.lost(format!("send failed: {e}"));
                return;
            }
        }
    }

    /// Opens a connection to the first node that answers (the current one first) and resumes
    /// every channel.
    async fn reconnect(&mut self, deadline: Instant) {
        let mut pause = Duration::from_millis(20);
        let mut errors = Vec::new();
        loop {
            for i in 0..self.urls.len() {
                let at = (self.at + i) % self.urls.len();
                match open(&self.urls[at], &self.token).await {
                    Ok(ws) => {
                        self.at = at;
                        self.ws = Some(ws);
                        self.connections += 1;
                        self.subscribe_all().await;
                        return;
                    }
                    Err(e) => errors.push(e),
                }
            }
            assert!(
                Instant::now() + pause < deadline,
                "{}: could not reconnect before the deadline: {errors:?}",
                self.name
            );
            // Nothing to wait for but a node that accepts connections again.
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(500));
        }
    }

    fn handle(&mut self, frame: Value) {
        let name = &self.name;
        match frame["type"].as_str().unwrap_or_default() {
            "message" => {
                let channel = frame["channel"].as_str().unwrap_or_default().to_string();
                assert!(
                    self.channels.contains(&channel),
                    "{name}: message on a channel it did not subscribe to: {frame}"
                );
                let offset = Offset::parse(frame["offset"].as_str().unwrap_or_default());
                self.resume.insert(channel.clone(), offset);
                self.received.push(Received {
                    channel,
                    offset,
                    message_id: frame["message"]["messageId"]
                        .as_str()
                        .unwrap_or_else(|| panic!("{name}: message without messageId: {frame}"))
                        .to_string(),
                    n: frame["message"]["payload"]["n"].as_u64(),
                });
            }
            "subscribed" => {
                let id = frame["id"].as_u64().unwrap_or_default();
                let Some((channel, resumed)) = self.awaiting.remove(&id) else {
                    panic!("{name}: `subscribed` for no request: {frame}");
                };
                if resumed && frame["recovered"] != true {
                    self.not_recovered += 1;
                    self.endings.push(format!("not recovered: {frame}"));
                }
                let offset = Offset::parse(frame["offset"].as_str().unwrap_or_default());
                self.resume.entry(channel).or_insert(offset);
            }
            "error" => {
                let id = frame["id"].as_u64().unwrap_or_default();
                match self.awaiting.remove(&id) {
                    // A resume that failed (say, the broker is unreachable for a moment): drop
                    // this connection and resume everything on a fresh one.
                    Some((channel, _)) if frame["code"] == "unavailable" => {
                        self.lost(format!("subscribe to {channel} failed: {frame}"));
                    }
                    _ => panic!("{name}: unexpected error: {frame}"),
                }
            }
            "join" | "leave" | "typing" | "pong" => {}
            _ => panic!("{name}: unexpected frame: {frame}"),
        }
    }
}

/// Publishes over one WebSocket connection, reconnecting when it ends.
#[derive(Debug)]
pub struct WsPublisher {
    /// The node.
    url: String,
    /// Sent with every connection.
    token: String,
    /// The open connection, if any.
    ws: Option<Ws>,
    /// Next request id.
    next_id: u64,
    /// How each connection ended.
    pub endings: Vec<String>,
}

/// How one publish attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Stored: the ack's message id and offset.
    Acked(String, Offset),
    /// Refused (`unavailable`, with the wait the server asked for) or cut off (the connection
    /// ended first: the message may have been stored).
    Failed(String, Duration),
}

impl WsPublisher {
    /// Connects to `url` (and waits for `welcome`).
    pub async fn connect(url: &str, token: &str) -> WsPublisher {
        let ws = open(url, token).await.unwrap_or_else(|e| panic!("{e}"));
        WsPublisher {
            url: url.into(),
            token: token.into(),
            ws: Some(ws),
            next_id: 1,
            endings: Vec::new(),
        }
    }

    /// Publishes `{"n": n}` on `channel`, retrying until it is acknowledged; every attempt goes
    /// into `log`.
    pub async fn publish(
        &mut self,
        log: &mut PublishLog,
        channel: &str,
        n: u64,
        deadline: Instant,
    ) {
        log.start();
        while let Some(wait) = log_attempt(
            log,
            channel,
            n,
            deadline,
            Box::pin(self.attempt(channel, n)),
        )
        .await
        {
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt to publish `{"n": n}` on `channel`, without retrying.
    pub async fn attempt(&mut self, channel: &str, n: u64) -> Attempt {
        if self.ws.is_none() {
            match open(&self.url, &self.token).await {
                Ok(ws) => self.ws = Some(ws),
                Err(e) => return Attempt::Failed(e, Duration::from_millis(50)),
            }
        }
        let Some(ws) = self.ws.as_mut() else {
            unreachable!("connected above")
        };
        let id = self.next_id;
        self.next_id += 1;
        let frame = json!({"type": "publish", "id": id, "channel": channel, "event": EVENT,
                           "payload": {"n": n}});
        if let Err(e) = ws.send(Message::text(frame.to_string())).await {
            self.ws = None;
            self.endings.push(format!("send failed: {e}"));
            return Attempt::Failed(format!("send failed: {e}"), Duration::ZERO);
        }
        let outcome = loop {
            match read_result(ws.next().await) {
                Some(Read::Frame(reply)) if reply["id"] == id => break Ok(reply),
                Some(Read::Frame(_)) | None => {}
                Some(Read::Ended(why)) => break Err(why),
            }
        };
        let reply = match outcome {
            Ok(reply) => reply,
            Err(why) => {
                // The message may or may not have been stored: a retry can store it twice.
                self.ws = None;
                self.endings.push(why.clone());
                return Attempt::Failed(format!("connection ended: {why}"), Duration::ZERO);
            }
        };
        match reply["type"].as_str() {
            Some("ack") => Attempt::Acked(
                reply["messageId"].as_str().unwrap_or_default().to_string(),
                Offset::parse(reply["offset"].as_str().unwrap_or_default()),
            ),
            Some("error") if reply["code"] == "unavailable" => {
                let retry = reply["retryAfterMs"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("`unavailable` without retryAfterMs: {reply}"));
                Attempt::Failed(
                    format!("unavailable: {}", reply["message"]),
                    Duration::from_millis(retry),
                )
            }
            _ => panic!("publish of n={n}: unexpected reply {reply}"),
        }
    }
}

/// Makes one attempt to publish `{"n": n}` on `channel` and logs it (one that outlives
/// `deadline` fails the test); `Some(wait)` when it failed and the next one should wait that
/// long, `None` when it was acknowledged.
async fn log_attempt(
    log: &mut PublishLog,
    channel: &str,
    n: u64,
    deadline: Instant,
    attempt: impl std::future::Future<Output = Attempt>,
) -> Option<Duration> {
    let started = Instant::now();
    let attempt = tokio::time::timeout_at(deadline, attempt)
        .await
        .unwrap_or_else(|_| panic!("publish of n={n} not acknowledged before the deadline"));
    match attempt {
        Attempt::Acked(message_id, offset) => {
            log.acked(Ack {
                n,
                channel: channel.into(),
                message_id,
                offset,
            });
            None
        }
        Attempt::Failed(why, wait) => {
            log.failed(n, started.elapsed(), why);
            Some(wait)
        }
    }
}

/// Publishes through the HTTP API (`POST /api/v1/publish`), one connection per request.
#[derive(Debug, Clone)]
pub struct HttpPublisher {
    /// The node's main address.
    addr: SocketAddr,
    /// A service, manager or admin token.
    token: String,
}

impl HttpPublisher {
    /// A publisher to the node at `addr`.
    pub fn new(addr: SocketAddr, token: &str) -> HttpPublisher {
        HttpPublisher {
            addr,
            token: token.into(),
        }
    }

    /// Publishes `{"n": n}` on `channel`, retrying until it is acknowledged; every attempt goes
    /// into `log`.
    pub async fn publish(&self, log: &mut PublishLog, channel: &str, n: u64, deadline: Instant) {
        log.start();
        while let Some(wait) =
            log_attempt(log, channel, n, deadline, self.attempt(channel, n)).await
        {
            tokio::time::sleep(wait).await;
        }
    }

    /// One attempt to publish `{"n": n}` on `channel`, without retrying.
    pub async fn attempt(&self, channel: &str, n: u64) -> Attempt {
        let body = json!({"channel": channel, "event": EVENT, "payload": {"n": n}}).to_string();
        let request = format!(
            "POST /api/v1/publish HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
             Authorization: Bearer {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            self.token,
            body.len()
        );
        let exchange = async {
            let mut stream = TcpStream::connect(self.addr).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = match exchange.await {
            Ok(raw) => raw,
            // Refused (the node is down) or cut mid-request: the message may have been stored.
            Err(e) => return Attempt::Failed(format!("http: {e}"), Duration::from_millis(50)),
        };
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        let status: u16 = head
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let value: Value = serde_json::from_str(body).unwrap_or(Value::Null);
        match status {
            200 => Attempt::Acked(
                value["messageId"].as_str().unwrap_or_default().to_string(),
                Offset::parse(value["offset"].as_str().unwrap_or_default()),
            ),
            503 if value["error"]["code"] == "unavailable" => {
                let retry = value["error"]["retryAfterMs"]
                    .as_u64()
                    .unwrap_or_else(|| panic!("503 without retryAfterMs: {text}"));
                Attempt::Failed(
                    format!("http 503: {}", value["error"]["message"]),
                    Duration::from_millis(retry),
                )
            }
            // No status at all: the connection was cut before an answer.
            0 => Attempt::Failed(
                format!("http: no answer: {text:?}"),
                Duration::from_millis(50),
            ),
            _ => panic!("publish of n={n}: unexpected answer {text}"),
        }
    }
}

/// Reads a channel's whole history through the HTTP API after `since`, 100 at a time, oldest
/// first, as [`Received`] (for checking that every acknowledged message is stored once).
pub async fn http_history(
    addr: SocketAddr,
    token: &str,
    channel: &str,
    since: Offset,
    deadline: Instant,
) -> Vec<Received> {
    let mut out = Vec::new();
    let mut cursor = since;
    loop {
        let request = format!(
            "GET /api/v1/channels/{channel}/history?since={cursor}&limit=100 HTTP/1.1\r\n\
             Host: {addr}\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        let exchange = async {
            let mut stream = TcpStream::connect(addr).await?;
            stream.write_all(request.as_bytes()).await?;
            let mut raw = Vec::new();
            stream.read_to_end(&mut raw).await?;
            Ok::<_, std::io::Error>(raw)
        };
        let raw = tokio::time::timeout_at(deadline, exchange)
            .await
            .expect("history before the deadline")
            .expect("history request");
        let text = String::from_utf8_lossy(&raw);
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
        assert!(head.starts_with("HTTP/1.1 200"), "history: {text}");
        let page: Value = serde_json::from_str(body).expect("history body is JSON");
        let messages = page["messages"].as_array().cloned().unwrap_or_default();
        if messages.is_empty() {
            return out;
        }
        for m in messages {
            let offset = Offset::parse(m["offset"].as_str().unwrap_or_default());
            out.push(Received {
                channel: channel.into(),
                offset,
                message_id: m["message"]["messageId"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                n: m["message"]["payload"]["n"].as_u64(),
            });
            cursor = offset;
        }
    }
}
