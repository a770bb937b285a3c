//! The session over in-memory channels with paused time: heartbeats and token expiry are
//! checked against tokio's clock, with no real waiting.

use std::pin::Pin;
use std::task::{Context, Poll};

use bellhop_dispatcher::{ChannelKey, Dispatcher, DispatcherConfig, MemoryBroker, MemoryConfig};
use bellhop_protocol::Role;
use futures_channel::mpsc;
use tokio::sync::Semaphore;

use futures_util::{Sink, SinkExt};

use super::*;
use crate::config::GatewayConfig;

/// The writer's side of an in-memory peer: what the writer writes, decoded back into
/// messages, goes into the peer's sink.
struct MessageWire<K>(K);

impl<K> Wire for MessageWire<K>
where
    K: Sink<Message, Error = WsError> + Send + Unpin + 'static,
{
    async fn write(&mut self, frames: &[WireFrame]) -> Result<(), WsError> {
        for frame in frames {
            for message in crate::wire::decode(frame.bytes()) {
                self.0.feed(message).await?;
            }
        }
        self.0.flush().await
    }

    async fn close(
        &mut self,
        frame: tokio_tungstenite::tungstenite::protocol::CloseFrame,
    ) -> Result<(), WsError> {
        self.0.send(Message::Close(Some(frame))).await
    }
}

/// Runs a session over an in-memory duplex of messages.
async fn run_duplex<S>(node: Arc<Node>, duplex: S, opening: Opening)
where
    S: Stream<Item = Result<Message, WsError>>
        + Sink<Message, Error = WsError>
        + Send
        + Unpin
        + 'static,
{
    let (sink, stream) = duplex.split();
    run(node, stream, MessageWire(sink), opening).await;
}

/// One end of an in-memory WebSocket: what the server reads, and `outgoing`, where it writes:
/// an unbounded channel, or a bounded one for a peer that reads at its own pace (the server's
/// writes then wait for it, as they wait for a real client's TCP window).
struct Duplex<O> {
    incoming: mpsc::UnboundedReceiver<Result<Message, WsError>>,
    outgoing: O,
}

impl<O: Unpin> Stream for Duplex<O> {
    type Item = Result<Message, WsError>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.incoming.poll_next_unpin(cx)
    }
}

impl<O: Sink<Message> + Unpin> Sink<Message> for Duplex<O> {
    type Error = WsError;
    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        self.outgoing
            .poll_ready_unpin(cx)
            .map_err(|_| WsError::ConnectionClosed)
    }
    fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
        self.outgoing
            .start_send_unpin(item)
            .map_err(|_| WsError::ConnectionClosed)
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
        Poll::Ready(Ok(()))
    }
}

/// Runs a session of a node with `config` on `broker` for `principal`, writing to `outgoing`;
/// returns where the peer's frames go in, and the session's task.
fn spawn_session<O>(
    config: GatewayConfig,
    broker: Arc<dyn bellhop_dispatcher::Broker>,
    principal: Principal,
    outgoing: O,
) -> (
    mpsc::UnboundedSender<Result<Message, WsError>>,
    tokio::task::JoinHandle<()>,
)
where
    O: Sink<Message> + Send + Unpin + 'static,
{
    let dispatcher = Arc::new(Dispatcher::new(broker, DispatcherConfig::default()));
    let verifier = Arc::new(crate::auth::Verifier::new(&config.auth).unwrap());
    let node = Arc::new(Node::new(config, dispatcher, verifier));
    let (to_server, incoming) = mpsc::unbounded();
    let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
    let opening = Opening {
        principal: Some(Box::new(principal)),
        codec: Codec::Json,
        permit,
    };
    let session = tokio::spawn(run_duplex(node, Duplex { incoming, outgoing }, opening));
    (to_server, session)
}

/// The client's end: `from_server` is unbounded, or bounded for a slow peer.
struct Peer<R = mpsc::UnboundedReceiver<Message>> {
    to_server: mpsc::UnboundedSender<Result<Message, WsError>>,
    from_server: R,
}

/// A peer that reads at its own pace (see [`Duplex`]).
type SlowPeer = Peer<mpsc::Receiver<Message>>;

impl<R: Stream<Item = Message> + Unpin> Peer<R> {
    fn send(&self, frame: serde_json::Value) {
        self.to_server
            .unbounded_send(Ok(Message::text(frame.to_string())))
            .unwrap();
    }

    fn pong(&self) {
        self.to_server
            .unbounded_send(Ok(Message::Pong(Default::default())))
            .unwrap();
    }

    async fn next(&mut self) -> Message {
        self.from_server.next().await.expect("server still writing")
    }
}

fn principal(expires_in_secs: u64) -> Principal {
    Principal {
        user_id: "u1".into(),
        role: Role::Staff,
        property: "h1".into(),
        rooms: Default::default(),
        depts: Default::default(),
        expires_at: bellhop_dispatcher::now_ms() / 1000 + expires_in_secs,
    }
}

fn start(principal: Principal) -> Peer {
    start_with_leeway(principal, Duration::ZERO)
}

fn start_with_leeway(principal: Principal, leeway: Duration) -> Peer {
    let mut config = GatewayConfig::new("secret");
    config.auth.leeway = leeway;
    let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
    let (outgoing, from_server) = mpsc::unbounded();
    let (to_server, _) = spawn_session(config, broker, principal, outgoing);
    Peer {
        to_server,
        from_server,
    }
}

fn close_code(m: &Message) -> Option<u16> {
    match m {
        Message::Close(Some(f)) => Some(f.code.into()),
        _ => None,
    }
}

impl SlowPeer {
    /// Reads the next frame after `pace` (a client reading ~1/pace frames a second); pings
    /// are answered at once, as a live client's WebSocket library does.
    async fn next_after(&mut self, pace: Duration) -> Message {
        loop {
            tokio::time::sleep(pace).await;
            let m = self.next().await;
            if let Message::Ping(_) = m {
                self.pong();
                continue;
            }
            return m;
        }
    }
}

/// A node with a one-second heartbeat (closed after two silent seconds) and a small
/// outbound queue, holding `stored` messages on `room:101` after the returned offset; and a
/// slow peer on it.
async fn slow_peer_with_backlog(principal: Principal, stored: usize) -> (SlowPeer, Offset) {
    let mut config = GatewayConfig::new("secret");
    config.heartbeat_interval = Duration::from_secs(1);
    config.heartbeat_timeout = Duration::from_secs(2);
    config.outbound.max_frames = 64;
    config.auth.leeway = Duration::ZERO;
    let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
    let key = ChannelKey::new("h1", Channel::Room("101".into()));
    let start = bellhop_dispatcher::Broker::read(broker.as_ref(), &key, None, 0)
        .await
        .unwrap()
        .last;
    let envelopes: Vec<_> = (0..stored)
        .map(|i| {
            Arc::new(bellhop_protocol::Envelope {
                payload: serde_json::json!({ "n": i }),
                timestamp: "2026-12-01T10:00:00.000Z".into(),
                sender: bellhop_testkit::envelope::sender("g1", Role::Guest),
                ..bellhop_testkit::envelope::chat("h1", key.channel.clone(), &format!("m{i}"))
            })
        })
        .collect();
    for chunk in envelopes.chunks(500) {
        let batch = chunk.iter().cloned().map(bellhop_dispatcher::Publish::new);
        let stored =
            bellhop_dispatcher::Broker::publish_batch(broker.as_ref(), batch.collect()).await;
        assert!(stored.iter().all(Result::is_ok));
    }
    let (outgoing, from_server) = mpsc::channel(0);
    let (to_server, _) = spawn_session(config, broker, principal, outgoing);
    (
        SlowPeer {
            to_server,
            from_server,
        },
        start,
    )
}

/// Reproduces issue 10 A.1: before, the session stopped reading during a replay, so the
/// client's pongs sat unread and the heartbeat closed it with 4002 when the replay ended,
/// and a `ping` sent after the `subscribe` was answered only after the whole replay.
#[tokio::test(start_paused = true)]
async fn a_replay_longer_than_the_heartbeat_timeout_keeps_a_live_reader_connected() {
    const STORED: usize = 6_000;
    let (mut peer, since) = slow_peer_with_backlog(principal(86_400), STORED).await;
    let pace = Duration::from_micros(1_666); // ~600 frames a second
    assert!(json(peer.next_after(pace).await)["type"] == "welcome");
    let started = Instant::now();
    peer.send(
        serde_json::json!({"type": "subscribe", "id": 1, "channel": "room:101", "since": since}),
    );
    peer.send(serde_json::json!({"type": "ping", "id": 2}));
    let mut next_n = 0u64;
    let mut pong_after = None;
    let mut subscribed = false;
    while next_n < STORED as u64 {
        let frame = peer.next_after(pace).await;
        assert!(
            !matches!(frame, Message::Close(_)),
            "closed mid-replay: {frame:?}"
        );
        let frame = json(frame);
        match frame["type"].as_str() {
            Some("message") => {
                assert_eq!(frame["message"]["payload"]["n"], next_n, "in order, no gap");
                next_n += 1;
            }
            Some("pong") => {
                assert_eq!(frame["id"], 2);
                pong_after = Some((next_n, started.elapsed()));
            }
            // The pong may come first: the reader answers pings itself.
            Some("subscribed") => subscribed = true,
            _ => panic!("unexpected {frame}"),
        }
    }
    assert!(subscribed);
    let replay = started.elapsed();
    assert!(
        replay > Duration::from_secs(2),
        "the replay outlasted the heartbeat timeout: {replay:?}"
    );
    let (messages_before_pong, waited) = pong_after.expect("the ping was answered");
    assert!(
        messages_before_pong < 200 && waited < Duration::from_millis(500),
        "pong after {messages_before_pong} messages and {waited:?}, not after the replay"
    );
    // Still connected and served after the replay.
    peer.send(serde_json::json!({"type": "ping", "id": 3}));
    let pong = json(peer.next_after(pace).await);
    assert_eq!(
        (pong["type"].as_str(), &pong["id"]),
        (Some("pong"), &3.into())
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_that_expires_during_a_long_replay_ends_the_connection_on_time() {
    let (mut peer, since) = slow_peer_with_backlog(principal(5), 6_000).await;
    let pace = Duration::from_millis(2);
    let started = Instant::now();
    peer.next_after(pace).await; // welcome
    peer.send(
        serde_json::json!({"type": "subscribe", "id": 1, "channel": "room:101", "since": since}),
    );
    let closed = loop {
        match peer.next_after(pace).await {
            Message::Close(frame) => break frame,
            Message::Text(_) => {}
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(closed.map(|f| u16::from(f.code)), Some(close::UNAUTHORIZED));
    let elapsed = started.elapsed();
    // 6,000 frames at 2 ms would take 12 s; the token ended it at 5 s (plus what was queued).
    assert!(elapsed < Duration::from_secs(6), "closed after {elapsed:?}");
}

#[tokio::test(start_paused = true)]
async fn a_silent_peer_is_pinged_then_closed_with_4002_after_the_timeout() {
    let started = Instant::now();
    let mut peer = start(principal(86_400));
    assert!(matches!(peer.next().await, Message::Text(t) if t.contains("welcome")));
    let ping = peer.next().await;
    assert!(matches!(ping, Message::Ping(_)), "{ping:?}");
    assert_eq!(
        started.elapsed().as_secs(),
        30,
        "first ping after one interval"
    );
    let close = peer.next().await;
    assert_eq!(
        close_code(&close),
        Some(close::HEARTBEAT_TIMEOUT),
        "{close:?}"
    );
    assert_eq!(
        started.elapsed().as_secs(),
        60,
        "closed after two silent intervals"
    );
}

#[tokio::test(start_paused = true)]
async fn a_peer_that_answers_pings_stays_connected() {
    let started = Instant::now();
    let mut peer = start(principal(86_400));
    peer.next().await; // welcome
    for _ in 0..10 {
        let ping = peer.next().await;
        assert!(matches!(ping, Message::Ping(_)), "{ping:?}");
        peer.to_server
            .unbounded_send(Ok(Message::Pong(Default::default())))
            .unwrap();
    }
    assert_eq!(started.elapsed().as_secs(), 300);
}

/// A token the test node accepts (its secret is `"secret"`), for user `sub` of `h1`.
fn token(sub: &str, expires_in_secs: u64) -> String {
    let claims = crate::auth::Claims {
        sub: sub.into(),
        role: Role::Staff,
        prop: "h1".into(),
        rooms: vec![],
        depts: vec![],
        exp: bellhop_dispatcher::now_ms() / 1000 + expires_in_secs,
        iat: None,
        nbf: None,
        iss: None,
        aud: None,
    };
    crate::auth::mint(b"secret", &claims).unwrap()
}

impl Peer {
    /// The next frame that is not a ping, answering pings on the way (a live client).
    async fn next_answering_pings(&mut self) -> Message {
        loop {
            match self.next().await {
                Message::Ping(_) => self.pong(),
                other => return other,
            }
        }
    }

    /// Checks that the next frames (answering pings) are the `token expired` warning and a
    /// 4001 close.
    async fn closed_for_expiry(&mut self) {
        let error = json(self.next_answering_pings().await);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("token expired"),
            "{error}"
        );
        assert_eq!(close_code(&self.next().await), Some(close::UNAUTHORIZED));
    }

    /// Answers pings until tokio's clock reaches `until`; every other frame is returned.
    async fn live_until(&mut self, until: Instant) -> Vec<Message> {
        let mut others = Vec::new();
        while Instant::now() < until {
            match tokio::time::timeout_at(until, self.next_answering_pings()).await {
                Ok(m) => others.push(m),
                Err(_) => break,
            }
        }
        others
    }
}

fn json(m: Message) -> serde_json::Value {
    serde_json::from_str(m.to_text().expect("a text frame")).expect("JSON")
}

#[tokio::test(start_paused = true)]
async fn an_expired_token_ends_a_live_connection_with_4001() {
    let started = Instant::now();
    let mut peer = start(principal(75));
    peer.next().await; // welcome
                       // The client is told why before the close: an error without id, then 4001.
    let error = json(peer.next_answering_pings().await);
    assert_eq!(error["type"], "error", "{error}");
    assert_eq!(error["code"], "unauthorized", "{error}");
    assert!(error.get("id").is_none(), "{error}");
    let message = error["message"].as_str().unwrap();
    assert!(message.starts_with("token expired"), "{error}");
    let close = peer.next().await;
    assert_eq!(close_code(&close), Some(close::UNAUTHORIZED));
    let Message::Close(Some(frame)) = close else {
        unreachable!()
    };
    assert_eq!(
        frame.reason.as_str(),
        message,
        "same reason in the close frame"
    );
    let elapsed = started.elapsed().as_secs();
    assert!((74..=76).contains(&elapsed), "closed at {elapsed} s");
}

#[tokio::test(start_paused = true)]
async fn reauthenticating_before_expiry_extends_the_deadline_and_keeps_the_connection() {
    let started = Instant::now();
    let mut peer = start(principal(75));
    peer.next().await; // welcome
    let before_expiry = peer.live_until(started + Duration::from_secs(60)).await;
    assert!(before_expiry.is_empty(), "{before_expiry:?}");
    // A fresh token for the same user, an hour long, 15 s before the old one expires.
    peer.send(serde_json::json!({"type": "auth", "id": 9, "token": token("u1", 3600)}));
    let welcome = json(peer.next_answering_pings().await);
    assert_eq!(
        (welcome["type"].as_str(), &welcome["id"]),
        (Some("welcome"), &9.into())
    );
    // Well past the first token's expiry the connection is alive and answers requests.
    let later = peer.live_until(started + Duration::from_secs(600)).await;
    assert!(later.is_empty(), "no error and no close: {later:?}");
    peer.send(serde_json::json!({"type": "ping", "id": 10}));
    let pong = json(peer.next_answering_pings().await);
    assert_eq!(
        (pong["type"].as_str(), &pong["id"]),
        (Some("pong"), &10.into())
    );
    // And the new token's expiry still ends it, with the same warning.
    peer.closed_for_expiry().await;
    let elapsed = started.elapsed().as_secs();
    assert!(
        (3659..=3661).contains(&elapsed),
        "closed at {elapsed} s, not 60 + 3600"
    );
}

#[tokio::test(start_paused = true)]
async fn a_refused_reauthentication_keeps_the_old_deadline() {
    let started = Instant::now();
    let mut peer = start(principal(75));
    peer.next().await; // welcome
    peer.send(serde_json::json!({"type": "auth", "id": 1, "token": token("u2", 3600)}));
    let other_user = json(peer.next_answering_pings().await);
    assert_eq!(other_user["code"], "unauthorized", "{other_user}");
    assert!(other_user["message"]
        .as_str()
        .unwrap()
        .contains("cannot change its user"));
    peer.send(serde_json::json!({"type": "auth", "id": 2, "token": "garbage"}));
    let garbage = json(peer.next_answering_pings().await);
    assert_eq!(
        (garbage["code"].as_str(), &garbage["id"]),
        (Some("unauthorized"), &2.into())
    );
    // Both refusals leave the connection open, and the first token's expiry in force.
    peer.closed_for_expiry().await;
    let elapsed = started.elapsed().as_secs();
    assert!((74..=76).contains(&elapsed), "closed at {elapsed} s");
}

#[tokio::test(start_paused = true)]
async fn a_token_accepted_inside_the_leeway_lives_only_until_exp_plus_leeway() {
    let started = Instant::now();
    let mut p = principal(0);
    p.expires_at -= 10; // expired ten seconds ago, inside a 30 s leeway
    let mut peer = start_with_leeway(p, Duration::from_secs(30));
    peer.next().await; // welcome
    let error = peer.next().await.into_text().unwrap();
    assert!(error.contains("expired"), "{error}");
    let elapsed = started.elapsed().as_secs();
    assert!(
        (19..=21).contains(&elapsed),
        "closed after {elapsed} s, not 20"
    );
}

/// A node on the embedded broker and a peer connected to it, with the broker at hand.
fn start_on_broker(principal: Principal) -> (Peer, Arc<MemoryBroker>, tokio::task::JoinHandle<()>) {
    let config = GatewayConfig::new("secret");
    let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
    let (outgoing, from_server) = mpsc::unbounded();
    let (to_server, session) = spawn_session(config, broker.clone(), principal, outgoing);
    (
        Peer {
            to_server,
            from_server,
        },
        broker,
        session,
    )
}

/// Publishes a client sent before it went away are stored, even those still queued behind a
/// slow handler when it left: the node had read them (before the reader/handler split, every
/// frame read was answered before the next was read, so none was lost this way).
#[tokio::test(start_paused = true)]
async fn publishes_read_before_the_peer_left_are_stored() {
    let (mut peer, broker, session) = start_on_broker(principal(86_400));
    peer.next().await; // welcome
    for n in 0..50 {
        peer.send(
            serde_json::json!({"type": "publish", "id": n, "channel": "room:7",
            "event": "CHAT_MESSAGE", "payload": {"n": n}}),
        );
    }
    // The client goes away at once (end of stream), without waiting for a single ack.
    drop(peer);
    tokio::time::timeout(Duration::from_secs(30), session)
        .await
        .expect("the session ends")
        .unwrap();
    let key = ChannelKey::new("h1", Channel::Room("7".into()));
    let stored = bellhop_dispatcher::Broker::read(broker.as_ref(), &key, None, 100)
        .await
        .unwrap();
    let numbers: Vec<u64> = stored
        .messages
        .iter()
        .map(|m| m.envelope.payload["n"].as_u64().unwrap())
        .collect();
    assert_eq!(
        numbers,
        (0..50).collect::<Vec<_>>(),
        "every publish, in order"
    );
}

/// The embedded broker, with each batch of publishes taking 20 ms and counted: a handler that
/// waited for each publish's ack before taking the next would make one batch per publish.
#[derive(Debug)]
struct SlowBatches {
    inner: MemoryBroker,
    batches: parking_lot::Mutex<Vec<usize>>,
}

mod slow_batches {
    use super::SlowBatches;
    use bellhop_dispatcher::{
        Broker, BrokerError, ChannelEvent, ChannelKey, Publish, Published, ReadResult, Subscription,
    };
    use bellhop_protocol::Offset;

    bellhop_testkit::forward_broker! {
        impl Broker for SlowBatches => inner,
        forward [
            publish_ephemeral, subscribe, read, presence_join, presence_leave, presence, mark_read,
            unread,
        ]
        {
            async fn publish_batch(&self, batch: Vec<Publish>) -> Vec<Result<Published, BrokerError>> {
                self.batches.lock().push(batch.len());
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                self.inner.publish_batch(batch).await
            }
        }
    }
}

/// Publishes sent back to back are pipelined: they reach the broker together, in the order
/// sent, and are acknowledged in that order; a request that is not a publish is answered only
/// after the publishes before it.
#[tokio::test(start_paused = true)]
async fn back_to_back_publishes_share_batches_and_are_answered_in_order() {
    let broker = Arc::new(SlowBatches {
        inner: MemoryBroker::new(MemoryConfig::default()),
        batches: Default::default(),
    });
    let (outgoing, from_server) = mpsc::unbounded();
    let (to_server, _session) = spawn_session(
        GatewayConfig::new("secret"),
        broker.clone(),
        principal(86_400),
        outgoing,
    );
    let mut peer = Peer {
        to_server,
        from_server,
    };
    peer.next().await; // welcome
    const N: u64 = 24;
    for n in 0..N {
        peer.send(
            serde_json::json!({"type": "publish", "id": n, "channel": "room:7",
            "event": "CHAT_MESSAGE", "payload": {"n": n}}),
        );
    }
    peer.send(serde_json::json!({"type": "subscribe", "id": N, "channel": "room:7"}));
    let mut offsets = Vec::new();
    for n in 0..N {
        let ack = json(peer.next().await);
        assert_eq!(
            (ack["type"].as_str(), ack["id"].as_u64()),
            (Some("ack"), Some(n)),
            "{ack}"
        );
        offsets.push(ack["offset"].as_str().unwrap().parse::<Offset>().unwrap());
    }
    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "stored in the order sent: {offsets:?}"
    );
    let subscribed = json(peer.next().await);
    assert_eq!(subscribed["type"], "subscribed", "{subscribed}");
    assert_eq!(subscribed["offset"], offsets[offsets.len() - 1].to_string());
    let batches = broker.batches.lock().clone();
    assert_eq!(batches.iter().sum::<usize>(), N as usize);
    assert!(
        batches.len() <= 3,
        "{N} pipelined publishes took {} broker calls: {batches:?}",
        batches.len()
    );
}
