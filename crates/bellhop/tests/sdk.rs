//! The Rust SDK (crates/bellhop-client) against real `bellhop serve` processes and a real
//! `redis-server`: every request kind; a node SIGKILLed while 1,000 messages are published, the
//! clients resuming on the other node with none lost, duplicated or reordered; token refresh
//! and a 4001; a drain (1012); the backoff schedule under tokio's paused clock. Prints its
//! figures (`-- --nocapture`).

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bellhop_client::protocol::{Offset, Role};
use bellhop_client::{
    Client, ClientOptions, Error, Event, PublishAck, PublishOptions, State, SubEvent, SubState,
    Subscription, Token,
};
use bellhop_gateway::auth::{mint, Claims};
use bellhop_testkit::ledger::Ack;
use bellhop_testkit::{Figures, HttpPublisher, PublishLog, Received, RedisServer};
use serde_json::{json, Value};
use tokio::process::Command;
use tokio::sync::broadcast;
use tokio::time::Instant;

const SECRET: &str = "sdk-rust-test-secret-0123456789abcdef0123";
/// Longest any wait for an event may take.
const WAIT: Duration = Duration::from_secs(15);

mod support;

use support::Node;

/// Starts `bellhop serve` on free ports with `env`, waits for `gateway listening`.
async fn serve(node_id: &str, env: &[(&str, &str)]) -> Node {
    support::serve_with(SECRET, node_id, env).await
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn token_for(sub: &str, role: Role, depts: &[&str], lifetime_s: i64, secret: &str) -> String {
    let now = now();
    let claims = Claims {
        sub: sub.into(),
        role,
        prop: "h1".into(),
        rooms: vec!["101".into()],
        depts: depts.iter().map(|d| d.to_string()).collect(),
        exp: now.saturating_add_signed(lifetime_s),
        iat: Some(now),
        nbf: None,
        iss: None,
        aud: None,
    };
    mint(secret.as_bytes(), &claims).unwrap()
}

fn token(sub: &str, role: Role) -> String {
    token_for(sub, role, &["housekeeping"], 3600, SECRET)
}

/// Publishes a `CHAT_MESSAGE` with `payload` and the default options.
async fn chat(client: &Client, channel: &str, payload: Value) -> Result<PublishAck, Error> {
    client
        .publish(channel, "CHAT_MESSAGE", payload, PublishOptions::default())
        .await
}

fn client(urls: Vec<String>, token: Token) -> Client {
    let client = Client::new(ClientOptions::new(urls, token));
    client.connect();
    client
}

/// What yields events one at a time: a subscription, or a client's event feed.
trait Events {
    type Event;
    /// The next event (panics when the source ended).
    async fn next_event(&mut self) -> Self::Event;
    /// What the events are, for a failure message.
    fn what(&self) -> String;
}

impl Events for Subscription {
    type Event = SubEvent;
    async fn next_event(&mut self) -> SubEvent {
        self.next().await.expect("subscription open")
    }
    fn what(&self) -> String {
        format!("event on {}", self.channel())
    }
}

impl Events for broadcast::Receiver<Event> {
    type Event = Event;
    async fn next_event(&mut self) -> Event {
        self.recv().await.expect("events open")
    }
    fn what(&self) -> String {
        "client event".into()
    }
}

/// The next event of `events` that `pick` accepts, within [`WAIT`].
async fn first_picked<E: Events, T>(
    events: &mut E,
    mut pick: impl FnMut(E::Event) -> Option<T>,
) -> T {
    let picked = tokio::time::timeout(WAIT, async {
        loop {
            if let Some(t) = pick(events.next_event().await) {
                return t;
            }
        }
    })
    .await;
    picked.unwrap_or_else(|_| panic!("no matching {} within {WAIT:?}", events.what()))
}

/// The next subscription event that `pick` accepts, within [`WAIT`].
async fn next_matching<T>(sub: &mut Subscription, pick: impl FnMut(SubEvent) -> Option<T>) -> T {
    first_picked(sub, pick).await
}

/// Waits until every thread of process `pid` is stopped (state `T` in /proc).
async fn stopped(pid: &str) {
    let all_stopped = || {
        std::fs::read_dir(format!("/proc/{pid}/task"))
            .unwrap()
            .filter_map(Result::ok)
            .all(|task| {
                let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
                // `pid (comm) S ...`: the state follows the last ')'.
                stat.rsplit_once(')')
                    .is_some_and(|(_, rest)| rest.trim_start().starts_with(['T', 't']))
            })
    };
    tokio::time::timeout(WAIT, async {
        while !all_stopped() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("process {pid} not stopped within {WAIT:?}"));
}

/// The next client event that `pick` accepts, within [`WAIT`].
async fn next_event<T>(
    events: &mut broadcast::Receiver<Event>,
    mut pick: impl FnMut(&Event) -> Option<T>,
) -> T {
    first_picked(events, |e| pick(&e)).await
}

async fn subscribed(sub: &mut Subscription) -> (Offset, bool, u64) {
    next_matching(sub, |e| match e {
        SubEvent::Subscribed {
            offset,
            recovered,
            unread,
            ..
        } => Some((offset, recovered, unread)),
        SubEvent::Error(e) => panic!("subscribe refused: {e}"),
        _ => None,
    })
    .await
}

async fn message(sub: &mut Subscription) -> (Offset, Value, String) {
    next_matching(sub, |e| match e {
        SubEvent::Message { offset, message } => {
            Some((offset, message.payload.clone(), message.event.clone()))
        }
        _ => None,
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_kind_against_a_real_node() {
    let node = serve("node-1", &[]).await;
    let alice = client(vec![node.url()], Token::Fixed(token("alice", Role::Staff)));
    let bob = client(vec![node.url()], Token::Fixed(token("bob", Role::Staff)));
    let mut states = alice.watch_state();
    alice.ready(WAIT).await.unwrap();
    bob.ready(WAIT).await.unwrap();
    assert_eq!(*states.borrow_and_update(), State::Connected);
    let session = alice.session().unwrap();
    assert_eq!(
        (session.user_id.as_str(), session.node.as_str()),
        ("alice", "node-1")
    );

    // subscribe / subscribed, join
    let mut a_room = alice.subscribe("room:101", None).unwrap();
    let (start, recovered, _) = subscribed(&mut a_room).await;
    assert!(recovered);
    assert_eq!(a_room.state(), SubState::Subscribed);
    assert_eq!(a_room.last_offset(), Some(start));
    let mut b_room = bob.subscribe("room:101", None).unwrap();
    subscribed(&mut b_room).await;
    let joined = next_matching(&mut a_room, |e| match e {
        SubEvent::Join(u) => Some(u),
        _ => None,
    })
    .await;
    assert_eq!(joined, "bob");
    assert!(
        alice.subscribe("room:101", None).is_err(),
        "one per channel"
    );

    // presence
    assert_eq!(
        alice.presence("room:101").await.unwrap(),
        vec!["alice".to_string(), "bob".to_string()]
    );

    // publish / ack, then the same key again: the original ack, duplicate, nothing stored
    let options = || PublishOptions {
        idempotency_key: Some("order-991".into()),
        ..PublishOptions::default()
    };
    let towels = || {
        alice.publish(
            "room:101",
            "SERVICE_REQUEST",
            json!({"item": "towels"}),
            options(),
        )
    };
    let first = towels().await.unwrap();
    assert!(!first.duplicate);
    assert_eq!(
        (first.attempts, first.idempotency_key.as_str()),
        (1, "order-991")
    );
    let again = towels().await.unwrap();
    assert!(
        again.duplicate,
        "the node answers a repeated key with duplicate: true"
    );
    assert_eq!(
        (again.offset, &again.message_id),
        (first.offset, &first.message_id)
    );
    let (offset, payload, event) = message(&mut b_room).await;
    assert_eq!((offset, event.as_str()), (first.offset, "SERVICE_REQUEST"));
    // (the node may add to a SERVICE_REQUEST's payload: its routing)
    assert_eq!(payload["item"], "towels");

    // five more, then history in pages of two (`more`), oldest first
    for n in 0..5 {
        chat(&alice, "room:101", json!({"n": n})).await.unwrap();
    }
    let mut pages = alice.history_pages("room:101", None, 2);
    let mut offsets = Vec::new();
    let mut page_count = 0;
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        page_count += 1;
        offsets.extend(page.messages.iter().map(|m| m.offset));
    }
    assert_eq!(offsets.len(), 6, "{offsets:?}");
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));
    assert!(page_count >= 3, "pages of two: {page_count}");
    let newest = alice.history("room:101", None, Some(1)).await.unwrap();
    assert_eq!(newest.messages.len(), 1);
    assert_eq!(newest.messages[0].offset, offsets[5]);

    // bob gets the five in order, exactly once
    for n in 0..5 {
        let (_, payload, _) = message(&mut b_room).await;
        assert_eq!(payload, json!({"n": n}));
    }
    assert_eq!((b_room.delivered(), b_room.duplicates_dropped()), (6, 0));

    // read: the marker at bob's last message, nothing unread
    let read = b_room.read().await.unwrap();
    assert_eq!((read.offset, read.unread), (offsets[5], 0));
    let earlier = alice.read("room:101", offsets[3]).await.unwrap();
    assert_eq!(earlier.unread, 2);

    // typing, throttled; bob sees it
    assert!(a_room.typing());
    assert!(!a_room.typing(), "throttled");
    let typing = next_matching(&mut b_room, |e| match e {
        SubEvent::Typing(u) => Some(u),
        _ => None,
    })
    .await;
    assert_eq!(typing, "alice");

    // ping / pong
    alice.ping().await.unwrap();

    // A frame over the node's 64 KiB is refused before it is sent (the node would close 1009).
    let big = chat(&alice, "room:101", json!({"text": "x".repeat(70_000)})).await;
    assert!(
        matches!(
            big,
            Err(Error::Server {
                code: bellhop_client::protocol::ErrorCode::TooLarge,
                ..
            })
        ),
        "{big:?}"
    );
    assert_eq!(alice.state(), State::Connected);

    // refusals: a bad channel before sending, a forbidden one from the node
    assert!(matches!(
        alice
            .publish("nope:1", "X", Value::Null, PublishOptions::default())
            .await,
        Err(Error::Invalid(_))
    ));
    let mut other_dept = alice.subscribe("dept:kitchen", None).unwrap();
    let refused = next_matching(&mut other_dept, |e| match e {
        SubEvent::Error(e) => Some(e),
        _ => None,
    })
    .await;
    assert!(
        matches!(
            refused,
            Error::Server {
                code: bellhop_client::protocol::ErrorCode::Forbidden,
                ..
            }
        ),
        "{refused:?}"
    );
    assert_eq!(other_dept.state(), SubState::Unsubscribed);

    // unsubscribe (drop): alice sees bob leave
    drop(b_room);
    let left = next_matching(&mut a_room, |e| match e {
        SubEvent::Leave(u) => Some(u),
        _ => None,
    })
    .await;
    assert_eq!(left, "bob");

    // disconnect / connect: the subscription resumes after its offset
    alice.disconnect();
    wait_state(&alice, State::Disconnected).await;
    chat(&bob, "room:101", json!({"n": "while away"}))
        .await
        .unwrap();
    alice.connect();
    let (_, payload, _) = message(&mut a_room).await;
    assert_eq!(payload, json!({"n": "while away"}));

    alice.close();
    wait_state(&alice, State::Closed).await;
    assert_eq!(
        alice.presence("room:101").await,
        Err(Error::Closed),
        "a closed client refuses requests"
    );
    println!("sdk-rust every-request-kind: ok history_pages={page_count}");
}

async fn wait_state(client: &Client, want: State) {
    let mut states = client.watch_state();
    tokio::time::timeout(WAIT, states.wait_for(|s| *s == want))
        .await
        .unwrap_or_else(|_| panic!("state {want:?} within {WAIT:?}"))
        .unwrap();
}

/// Reads a follower's two subscriptions until both reached their targets.
async fn follow(
    name: String,
    client: Client,
    mut subs: Vec<Subscription>,
    mut targets: tokio::sync::watch::Receiver<Option<HashMap<String, bellhop_testkit::Offset>>>,
    deadline: Instant,
) -> (String, Vec<Received>, u64, Client) {
    let mut received = Vec::new();
    let mut not_recovered = 0;
    let mut last: HashMap<String, bellhop_testkit::Offset> = HashMap::new();
    loop {
        if let Some(t) = targets.borrow().as_ref() {
            if t.iter()
                .all(|(ch, top)| last.get(ch).is_some_and(|l| l >= top))
            {
                return (name, received, not_recovered, client);
            }
        }
        let (a, b) = subs.split_at_mut(1);
        let event = tokio::select! {
            e = a[0].next() => (a[0].channel(), e),
            e = b[0].next() => (b[0].channel(), e),
            _ = targets.changed() => continue,
            _ = tokio::time::sleep_until(deadline) => panic!("{name}: deadline; last={last:?}"),
        };
        match event {
            (channel, Some(SubEvent::Message { offset, message })) => {
                let offset = bellhop_testkit::Offset::parse(&offset.to_string());
                last.insert(channel.clone(), offset);
                received.push(Received {
                    channel,
                    offset,
                    message_id: message.message_id.clone(),
                    n: message.payload["n"].as_u64(),
                });
            }
            (_, Some(SubEvent::RecoveryFailed { .. })) => not_recovered += 1,
            (channel, None) => panic!("{name}: {channel} ended"),
            _ => {}
        }
    }
}

/// Counts `Connected` events of a client.
fn count_connections(client: &Client) -> Arc<AtomicU32> {
    let count = Arc::new(AtomicU32::new(0));
    let mut events = client.events();
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(Event::Connected { .. }) => {
                    c.fetch_add(1, Ordering::SeqCst);
                }
                Ok(Event::Closed) | Err(broadcast::error::RecvError::Closed) => return,
                _ => {}
            }
        }
    });
    count
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_sigkilled_mid_stream_the_sdk_resumes_on_the_other_with_nothing_lost() {
    const N: u64 = 1000;
    const FOLLOWERS: usize = 3;
    const CHANNELS: [&str; 2] = ["room:7", "room:8"];
    let started = Instant::now();
    let deadline = started + Duration::from_secs(60);
    let redis = RedisServer::start().await;
    let mut a = serve("node-a", &[("REDIS_URL", &redis.url())]).await;
    let b = serve("node-b", &[("REDIS_URL", &redis.url())]).await;
    let urls = vec![a.url(), b.url()];

    let (targets_tx, targets) = tokio::sync::watch::channel(None);
    let mut followers = Vec::new();
    let mut connections = Vec::new();
    for i in 0..FOLLOWERS {
        let c = client(
            urls.clone(),
            Token::Fixed(token(&format!("s{i}"), Role::Staff)),
        );
        connections.push(count_connections(&c));
        c.ready(WAIT).await.unwrap();
        assert_eq!(c.session().unwrap().node, "node-a");
        let mut subs = Vec::new();
        for ch in CHANNELS {
            let mut s = c.subscribe(ch, None).unwrap();
            subscribed(&mut s).await;
            subs.push(s);
        }
        followers.push(tokio::spawn(follow(
            format!("follower-{i}"),
            c,
            subs,
            targets.clone(),
            deadline,
        )));
    }
    // The publisher is on A too: its in-flight publish is retried on B with the same key.
    let publisher = client(urls.clone(), Token::Fixed(token("pms", Role::Staff)));
    let publisher_connections = count_connections(&publisher);
    publisher.ready(WAIT).await.unwrap();
    let mut log = PublishLog::default();
    let mut killed_after = 0;
    let mut duplicate_acks = 0;
    for n in 0..N {
        if n == N / 3 {
            a.child.kill().await.unwrap(); // SIGKILL: no drain, no close frame
            killed_after = log.acks.len();
        }
        let channel = CHANNELS[n as usize % 2];
        log.start();
        let sent = Instant::now();
        let ack = chat(&publisher, channel, json!({"n": n}))
            .await
            .unwrap_or_else(|e| panic!("publish n={n}: {e}"));
        for _ in 1..ack.attempts {
            log.failed(n, sent.elapsed(), "retried by the SDK".into());
        }
        duplicate_acks += u64::from(ack.duplicate);
        log.acked(Ack {
            n,
            channel: channel.into(),
            message_id: ack.message_id,
            offset: bellhop_testkit::Offset::parse(&ack.offset.to_string()),
        });
    }
    targets_tx.send_replace(Some(log.targets()));
    let mut done = Vec::new();
    for f in followers {
        done.push(f.await.expect("follower task"));
    }
    let received: Vec<&[Received]> = done.iter().map(|d| d.1.as_slice()).collect();
    let figures = Figures::tally(&log, &received);
    let not_recovered: u64 = done.iter().map(|d| d.2).sum();
    let reconnects: u32 = connections
        .iter()
        .map(|c| c.load(Ordering::SeqCst) - 1)
        .sum();
    println!(
        "sdk-rust node-sigkill: published={} acknowledged={} delivered={} lost={} duplicated={} \
         reordered={} followers={FOLLOWERS} killed_after_acks={killed_after} \
         client_reconnects={reconnects} publisher_retries={} duplicate_acks={duplicate_acks} \
         not_recovered={not_recovered} elapsed_ms={}",
        figures.published,
        figures.acked,
        figures.delivered,
        figures.lost,
        figures.duplicated,
        figures.out_of_order,
        figures.failed_attempts,
        started.elapsed().as_millis()
    );
    figures.assert_clean();
    assert_eq!(
        figures.ambiguous, 0,
        "idempotent retries store nothing twice"
    );
    assert_eq!(figures.delivered, N * FOLLOWERS as u64);
    assert_eq!(not_recovered, 0);
    for (name, _, _, c) in &done {
        assert_eq!(c.session().unwrap().node, "node-b", "{name} resumed on B");
    }
    assert_eq!(publisher.session().unwrap().node, "node-b");
    assert_eq!(publisher_connections.load(Ordering::SeqCst), 2);
    assert_eq!(
        reconnects, FOLLOWERS as u32,
        "each follower reconnects once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_refreshed_before_expiry_and_after_a_4001() {
    let node = serve("node-t", &[]).await;

    // A 6 s token refreshed 4 s early: an `auth` frame on the same session, no reconnect.
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let mut opts = ClientOptions::new(
        vec![node.url()],
        Token::callback(move || {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok(token_for("rita", Role::Staff, &[], 6, SECRET)) }
        }),
    );
    opts.token_refresh_lead = Some(Duration::from_secs(4));
    let client = Client::new(opts);
    let mut events = client.events();
    client.connect();
    client.ready(WAIT).await.unwrap();
    let session = client.session().unwrap().session_id;
    let mut sub = client.subscribe("room:101", None).unwrap();
    subscribed(&mut sub).await;
    let exp = next_event(&mut events, |e| match e {
        Event::TokenRefreshed { exp } => Some(*exp),
        Event::Reconnecting { code, .. } => panic!("a refresh must not reconnect ({code})"),
        _ => None,
    })
    .await;
    assert!(exp.unwrap() >= now() + 3, "the new token's exp");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    assert_eq!(
        client.session().unwrap().session_id,
        session,
        "same session"
    );
    // The subscription still works after the re-auth.
    chat(&client, "room:101", json!({"n": 1})).await.unwrap();
    let (_, payload, _) = message(&mut sub).await;
    assert_eq!(payload, json!({"n": 1}));
    client.close();

    // The first token is refused (4001): the client asks for another and connects.
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let client = Client::new(ClientOptions::new(
        vec![node.url()],
        Token::callback(move || {
            let first = c.fetch_add(1, Ordering::SeqCst) == 0;
            async move {
                let secret = if first {
                    "a-foreign-secret-0123456789abcdef012345"
                } else {
                    SECRET
                };
                Ok(token_for("rita", Role::Staff, &[], 600, secret))
            }
        }),
    ));
    let mut events = client.events();
    client.connect();
    let code = next_event(&mut events, |e| match e {
        Event::Reconnecting { code, .. } => Some(*code),
        _ => None,
    })
    .await;
    assert_eq!(code, 4001);
    client.ready(WAIT).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    client.close();

    // A fixed token that is refused: the client stops, it does not retry.
    let expired = token_for("rita", Role::Staff, &[], -30, SECRET);
    let client = Client::new(ClientOptions::new(vec![node.url()], Token::Fixed(expired)));
    let mut events = client.events();
    client.connect();
    let code = next_event(&mut events, |e| match e {
        Event::Disconnected { code, .. } => Some(*code),
        Event::Reconnecting { .. } => panic!("a fixed refused token must not reconnect"),
        _ => None,
    })
    .await;
    assert_eq!(code, 4001);
    assert_eq!(client.state(), State::Disconnected);
    println!("sdk-rust token: refresh on the same session, 4001 -> new token, fixed token stops");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_moves_the_client_to_the_other_node_soon_with_nothing_lost() {
    let redis = RedisServer::start().await;
    let a = serve(
        "node-a",
        &[("REDIS_URL", &redis.url()), ("DRAIN_SECONDS", "1")],
    )
    .await;
    let b = serve("node-b", &[("REDIS_URL", &redis.url())]).await;
    let mut opts = ClientOptions::new(
        vec![a.url(), b.url()],
        Token::Fixed(token("dana", Role::Staff)),
    );
    opts.backoff.drain_jitter = Duration::from_millis(800);
    let client = Client::new(opts);
    let mut events = client.events();
    client.connect();
    client.ready(WAIT).await.unwrap();
    let mut sub = client.subscribe("room:9", None).unwrap();
    subscribed(&mut sub).await;
    let http = HttpPublisher::new(b.local, &token("pms", Role::Service));
    let mut log = PublishLog::default();
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in 0..20 {
        http.publish(&mut log, "room:9", n, deadline).await;
    }
    let pid = a.child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await
        .unwrap()
        .success());
    let (code, delay) = next_event(&mut events, |e| match e {
        Event::Reconnecting { code, delay, .. } => Some((*code, *delay)),
        _ => None,
    })
    .await;
    assert_eq!(code, 1012);
    assert!(
        delay < Duration::from_millis(800),
        "within the drain jitter: {delay:?}"
    );
    for n in 20..40 {
        http.publish(&mut log, "room:9", n, deadline).await;
    }
    let mut got = Vec::new();
    while got.len() < 40 {
        let (_, payload, _) = message(&mut sub).await;
        got.push(payload["n"].as_u64().unwrap());
    }
    assert_eq!(got, (0..40).collect::<Vec<_>>(), "each once, in order");
    assert_eq!(client.session().unwrap().node, "node-b");
    println!(
        "sdk-rust drain: code=1012 delay_ms={} delivered=40 lost=0 duplicated=0",
        delay.as_millis()
    );
}

/// The reconnect schedule under tokio's paused clock, against real refused connections: each
/// delay is drawn from `[0, min(cap, base * 2^attempt))` and the next attempt waits exactly it.
#[tokio::test(start_paused = true)]
async fn backoff_timing_with_a_paused_clock() {
    // A free port with nothing listening: every attempt is refused at once.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = ClientOptions::new(
        vec![format!("ws://127.0.0.1:{port}/ws")],
        Token::Fixed(token("x", Role::Staff)),
    );
    opts.backoff.base = Duration::from_millis(500);
    opts.backoff.cap = Duration::from_secs(4);
    opts.seed = Some(42);
    let backoff = opts.backoff;
    let client = Client::new(opts);
    let mut events = client.events();
    client.connect();
    let mut previous: Option<(Instant, Duration)> = None;
    let mut delays = Vec::new();
    for expected_attempt in 0..8u32 {
        let (attempt, delay) = next_event(&mut events, |e| match e {
            Event::Reconnecting { attempt, delay, .. } => Some((*attempt, *delay)),
            _ => None,
        })
        .await;
        let at = Instant::now();
        assert_eq!(attempt, expected_attempt);
        assert!(
            delay < backoff.ceiling(attempt),
            "{delay:?} at attempt {attempt}"
        );
        if let Some((then, waited)) = previous {
            let gap = at - then;
            assert!(
                gap >= waited && gap < waited + Duration::from_millis(50),
                "gap {gap:?} after a {waited:?} delay"
            );
        }
        previous = Some((at, delay));
        delays.push(delay.as_millis());
    }
    // The ceiling stops at the cap: later delays are spread up to 4 s, never beyond.
    assert_eq!(backoff.ceiling(7), Duration::from_secs(4));
    client.close();
    println!("sdk-rust backoff: delays_ms={delays:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_on_a_node_that_cannot_vouch_for_the_offset_fires_recovery_failed() {
    // Two nodes on their own embedded brokers; Y starts after X stored x1, so it cannot vouch
    // that nothing after x1 is missing.
    let mut x = serve("node-x", &[]).await;
    let port_y = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
        .to_string();
    let url_y = format!("ws://127.0.0.1:{port_y}/ws");
    let c = client(
        vec![x.url(), url_y],
        Token::Fixed(token("eve", Role::Staff)),
    );
    c.ready(WAIT).await.unwrap();
    let mut sub = c.subscribe("room:3", None).unwrap();
    subscribed(&mut sub).await;
    let x1 = chat(&c, "room:3", json!({"n": "x1"})).await.unwrap();
    assert_eq!(message(&mut sub).await.0, x1.offset);
    let y = serve("node-y", &[("WS_PORT", &port_y)]).await;
    let on_y = client(vec![y.url()], Token::Fixed(token("pms", Role::Service)));
    on_y.ready(WAIT).await.unwrap();
    let y1 = chat(&on_y, "room:3", json!({"n": "y1"})).await.unwrap();
    x.child.kill().await.unwrap();
    let (since, _) = next_matching(&mut sub, |e| match e {
        SubEvent::RecoveryFailed { since, offset } => Some((since, offset)),
        _ => None,
    })
    .await;
    assert_eq!(since, x1.offset, "resumed after the last delivered offset");
    assert_eq!(sub.recovered(), Some(false));
    // What Y holds after `since` is replayed, then live.
    assert_eq!(message(&mut sub).await.0, y1.offset);
    let y2 = chat(&on_y, "room:3", json!({"n": "y2"})).await.unwrap();
    assert_eq!(message(&mut sub).await.0, y2.offset);
    println!("sdk-rust recovery-failed: since={since} surfaced, y1 replayed, y2 live");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1008_stops_the_client_without_reconnecting() {
    let node = serve("node-p", &[("MAX_CONNECTIONS_PER_USER", "1")]).await;
    let first = client(vec![node.url()], Token::Fixed(token("sam", Role::Staff)));
    first.ready(WAIT).await.unwrap();
    let second = Client::new(ClientOptions::new(
        vec![node.url()],
        Token::Fixed(token("sam", Role::Staff)),
    ));
    let mut events = second.events();
    second.connect();
    let code = next_event(&mut events, |e| match e {
        Event::Disconnected { code, .. } => Some(*code),
        Event::Reconnecting { code, .. } => panic!("a {code} must not reconnect"),
        _ => None,
    })
    .await;
    assert_eq!(code, 1008);
    assert_eq!(second.state(), State::Disconnected);
    assert_eq!(first.state(), State::Connected);
    println!("sdk-rust policy: 1008 -> disconnected, no reconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_is_retried_after_retry_after_and_a_timeout_on_another_node() {
    let redis = RedisServer::start().await;
    let a = serve("node-a", &[("REDIS_URL", &redis.url())]).await;
    let b = serve("node-b", &[("REDIS_URL", &redis.url())]).await;

    // Redis down: the node answers `unavailable` with retryAfterMs; the SDK waits and sends the
    // same key again until Redis is back.
    let c = client(vec![a.url()], Token::Fixed(token("pat", Role::Staff)));
    c.ready(WAIT).await.unwrap();
    redis.kill().await;
    let mut events = c.events();
    let publish = {
        let c = c.clone();
        tokio::spawn(async move { chat(&c, "room:5", json!({"n": 1})).await })
    };
    // Redis comes back once the publish was refused and is waiting to retry.
    let (code, delay) = next_event(&mut events, |e| match e {
        Event::Retry {
            request: "publish",
            error: Error::Server { code, .. },
            delay,
            ..
        } => Some((*code, *delay)),
        _ => None,
    })
    .await;
    assert_eq!(code, bellhop_client::protocol::ErrorCode::Unavailable);
    assert!(delay > Duration::ZERO, "after the node's retryAfterMs");
    redis.restart().await;
    let ack = tokio::time::timeout(WAIT, publish)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(ack.attempts > 1, "retried: {ack:?}");
    assert!(!ack.duplicate);
    let stored = c.history("room:5", None, Some(100)).await.unwrap();
    assert_eq!(stored.messages.len(), 1, "stored once");

    // A stopped node: the request times out, the connection is replaced (next URL: B) and the
    // publish is sent again there with the same key.
    let mut opts = ClientOptions::new(
        vec![a.url(), b.url()],
        Token::Fixed(token("pat", Role::Staff)),
    );
    opts.request_timeout = Duration::from_millis(1500);
    let d = Client::new(opts);
    d.connect();
    d.ready(WAIT).await.unwrap();
    assert_eq!(
        d.session().unwrap().node,
        "node-a",
        "connected to the first URL"
    );
    let pid = a.child.id().unwrap().to_string();
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .await
        .unwrap()
        .success());
    // kill(2) only queues the signal: a thread of A running on another core may still answer
    // for a moment, so wait (with a deadline) until every thread of A is stopped.
    stopped(&pid).await;
    let ack2 = chat(&d, "room:5", json!({"n": 2})).await.unwrap();
    assert!(ack2.attempts >= 2, "{ack2:?}");
    assert_eq!(d.session().unwrap().node, "node-b");
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .await
        .unwrap()
        .success());
    println!(
        "sdk-rust retry: unavailable attempts={} stored=1; timeout on a stopped node attempts={} then node-b",
        ack.attempts, ack2.attempts
    );
}
