//! What only the Redis backend has to get right, against a real `redis-server` per test: gaps on
//! a reconnect or a sequence jump, several nodes sharing one server, unsubscribing when the last
//! local subscription goes, expiry of dead nodes' presence, the script cache, the key layout the
//! module docs promise, failures reported as `unavailable`, and the probe that catches a
//! subscriber connection gone silent.
//!
//! Nothing here sleeps to let things settle: each test waits for the event it expects, with a
//! deadline.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use bellhop_dispatcher::{
    Broker, BrokerError, ChannelEvent, ChannelKey, RedisBroker, RedisConfig, StoredMessage,
    Subscription, SubscriptionEvent,
};
use bellhop_protocol::{Channel, Envelope, Offset};

mod support;

use support::proxy::Proxy;
use support::redis_server::{RedisOptions, RedisServer};

/// How long any expected event may take.
const DEADLINE: Duration = Duration::from_secs(5);

fn key() -> ChannelKey {
    ChannelKey::new("h1", Channel::Room("101".into()))
}

fn envelope(key: &ChannelKey, id: &str) -> Arc<Envelope> {
    Arc::new(bellhop_testkit::envelope::chat(
        &key.property,
        key.channel.clone(),
        id,
    ))
}

async fn broker_on(server: &RedisServer, tweak: impl FnOnce(&mut RedisConfig)) -> RedisBroker {
    let mut config = RedisConfig {
        url: server.url(),
        ..RedisConfig::default()
    };
    tweak(&mut config);
    RedisBroker::connect(config).await.unwrap()
}

async fn publish(broker: &RedisBroker, key: &ChannelKey, id: &str) -> Offset {
    let mut results = broker.publish_batch(vec![envelope(key, id).into()]).await;
    results.pop().unwrap().unwrap().offset
}

async fn next_event(sub: &mut Subscription) -> SubscriptionEvent {
    tokio::time::timeout(DEADLINE, sub.recv())
        .await
        .expect("no live event within the deadline")
}

async fn next_message(sub: &mut Subscription) -> StoredMessage {
    match next_event(sub).await {
        SubscriptionEvent::Event(ChannelEvent::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

/// Polls `check` until it holds, failing after the deadline. For state that changes in the
/// background with no event to wait on (the server's view of subscriptions and expiries).
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within {DEADLINE:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_killed_subscriber_connection_yields_a_gap_and_the_channel_carries_on() {
    let server = RedisServer::start().await;
    let broker = broker_on(&server, |_| {}).await;
    let k = key();
    let mut sub = broker.subscribe(&k).await.unwrap();
    let m0 = publish(&broker, &k, "m0").await;
    assert_eq!(next_message(&mut sub).await.offset, m0);

    let killed = server.command(&["CLIENT", "KILL", "TYPE", "pubsub"]).await;
    assert_eq!(killed, ["1"], "exactly our subscriber connection");
    // Published while the subscriber is (probably) still reconnecting: live delivery may miss it.
    let m1 = publish(&broker, &k, "m1").await;

    // Whatever arrived before it, a gap comes, and only after the channel is subscribed again.
    let mut live = Vec::new();
    loop {
        match next_event(&mut sub).await {
            SubscriptionEvent::Gap => break,
            SubscriptionEvent::Event(ChannelEvent::Message(m)) => live.push(m.offset),
            other => panic!("unexpected {other:?}"),
        }
    }
    // The re-read a reader does on a gap finds m1 whether or not it came live.
    let read = broker.read(&k, Some(m0), 50).await.unwrap();
    assert!(read.recovered);
    assert_eq!(
        read.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [m1]
    );
    assert!(
        live.iter().all(|o| *o == m1),
        "only m1 could come live: {live:?}"
    );

    // And the subscription is live again.
    let m2 = publish(&broker, &k, "m2").await;
    let next = next_message(&mut sub).await;
    assert!(next.offset == m2 || (next.offset == m1 && live.is_empty()));
    if next.offset == m1 {
        assert_eq!(next_message(&mut sub).await.offset, m2);
    }
}

#[tokio::test]
async fn a_sequence_jump_on_the_live_channel_yields_a_gap_before_the_message() {
    let server = RedisServer::start().await;
    let broker = broker_on(&server, |_| {}).await;
    let k = key();
    let mut sub = broker.subscribe(&k).await.unwrap();
    let m0 = publish(&broker, &k, "m0").await; // sequence 1
    assert_eq!(next_message(&mut sub).await.offset, m0);

    // Messages published straight to the live channel, as another node's script would.
    let live = "bh:{h1|room:101}:live";
    let inject = |seq: u64, id: &str| {
        let offset = Offset::new(m0.ms, m0.seq + seq);
        let json = serde_json::to_string(envelope(&k, id).as_ref()).unwrap();
        (
            offset,
            format!(r#"{{"k":"m","o":"{offset}","s":{seq},"e":{json}}}"#),
        )
    };

    // The next sequence number: no gap.
    let (o2, payload) = inject(2, "fake2");
    assert_eq!(server.command(&["PUBLISH", live, &payload]).await, ["1"]);
    assert_eq!(next_message(&mut sub).await.offset, o2);

    // Sequence 4 after 2: number 3 went missing, so a gap comes first, then the message.
    let (o4, payload) = inject(4, "fake4");
    assert_eq!(server.command(&["PUBLISH", live, &payload]).await, ["1"]);
    assert_eq!(next_event(&mut sub).await, SubscriptionEvent::Gap);
    let m = next_message(&mut sub).await;
    assert_eq!((m.offset, m.envelope.message_id.as_str()), (o4, "fake4"));
}

#[tokio::test]
async fn nodes_sharing_a_server_see_each_others_messages_presence_and_markers() {
    let server = RedisServer::start().await;
    let (a, b) = (
        broker_on(&server, |_| {}).await,
        broker_on(&server, |_| {}).await,
    );
    let k = key();
    let mut on_a = a.subscribe(&k).await.unwrap();
    let o = publish(&b, &k, "from-b").await;
    let m = next_message(&mut on_a).await;
    assert_eq!((m.offset, m.envelope.message_id.as_str()), (o, "from-b"));
    let typing = ChannelEvent::Typing {
        user_id: "u7".into(),
    };
    b.publish_ephemeral(&k, typing.clone()).await.unwrap();
    assert_eq!(
        next_event(&mut on_a).await,
        SubscriptionEvent::Event(typing)
    );

    assert!(a.presence_join(&k, "mia", "s-on-a").await.unwrap());
    assert!(!b.presence_join(&k, "mia", "s-on-b").await.unwrap());
    assert_eq!(b.presence(&k).await.unwrap(), ["mia"]);
    assert!(!a.presence_leave(&k, "mia", "s-on-a").await.unwrap());
    assert!(b.presence_leave(&k, "mia", "s-on-b").await.unwrap());

    assert_eq!(a.mark_read(&k, "mia", o).await.unwrap(), (o, 0));
    publish(&a, &k, "later").await;
    assert_eq!(b.unread(&k, "mia").await.unwrap(), 1);
}

#[tokio::test]
async fn the_channel_is_unsubscribed_when_the_last_local_subscription_is_dropped() {
    let server = RedisServer::start().await;
    let broker = broker_on(&server, |_| {}).await;
    let k = key();
    let live = "bh:{h1|room:101}:live";
    let numsub = || async { server.command(&["PUBSUB", "NUMSUB", live]).await[1].clone() };

    let first = broker.subscribe(&k).await.unwrap();
    let mut second = broker.subscribe(&k).await.unwrap();
    assert_eq!(numsub().await, "1", "one Redis subscription per node");
    drop(first);
    let o = publish(&broker, &k, "m0").await;
    assert_eq!(next_message(&mut second).await.offset, o);
    assert_eq!(numsub().await, "1");

    drop(second);
    eventually("unsubscribed after the last drop", || async {
        numsub().await == "0"
    })
    .await;
    // Subscribing again works.
    let mut again = broker.subscribe(&k).await.unwrap();
    assert_eq!(numsub().await, "1");
    let o = publish(&broker, &k, "m1").await;
    assert_eq!(next_message(&mut again).await.offset, o);
}

#[tokio::test]
async fn dropping_the_broker_closes_its_subscriptions() {
    let server = RedisServer::start().await;
    let broker = broker_on(&server, |_| {}).await;
    let mut sub = broker.subscribe(&key()).await.unwrap();
    drop(broker);
    assert_eq!(next_event(&mut sub).await, SubscriptionEvent::Closed);
}

#[tokio::test]
async fn sessions_of_a_node_that_stopped_refreshing_expire() {
    let server = RedisServer::start().await;
    let broker = broker_on(&server, |_| {}).await;
    let k = key();
    // A node that died left "ghost" behind; its entry expired a second ago.
    let presence = "bh:{h1|room:101}:presence";
    let users = "bh:{h1|room:101}:users";
    server
        .command(&["ZADD", presence, "1000", "ghost\u{1f}s-dead"])
        .await;
    server.command(&["HINCRBY", users, "ghost", "1"]).await;
    assert!(broker.presence_join(&k, "mia", "s1").await.unwrap());

    assert_eq!(broker.presence(&k).await.unwrap(), ["mia"]);
    assert_eq!(server.command(&["HEXISTS", users, "ghost"]).await, ["0"]);
    assert!(
        broker.presence_join(&k, "ghost", "s-new").await.unwrap(),
        "the ghost's expired session does not count"
    );
}

#[tokio::test]
async fn this_brokers_sessions_are_refreshed_before_they_expire() {
    let server = RedisServer::start().await;
    let broker = broker_on(&server, |c| {
        c.presence_refresh = Duration::from_millis(100);
        c.presence_ttl = Duration::from_secs(2);
    })
    .await;
    let k = key();
    let presence = "bh:{h1|room:101}:presence";
    broker.presence_join(&k, "mia", "s1").await.unwrap();
    let score = || async {
        server.command(&["ZSCORE", presence, "mia\u{1f}s1"]).await[0]
            .parse::<u64>()
            .unwrap()
    };
    let joined = score().await;
    eventually("the session's expiry moves forward", || async {
        score().await > joined
    })
    .await;

    // After a leave, nothing brings it back.
    broker.presence_leave(&k, "mia", "s1").await.unwrap();
    assert_eq!(
        server.command(&["ZSCORE", presence, "mia\u{1f}s1"]).await,
        ["nil"]
    );
}

#[tokio::test]
async fn a_flushed_script_cache_is_reloaded() {
    let server = RedisServer::start().await;
    let broker = broker_on(&server, |_| {}).await;
    let k = key();
    let o0 = publish(&broker, &k, "m0").await;
    assert_eq!(server.command(&["SCRIPT", "FLUSH"]).await, ["OK"]);
    let batch = vec![envelope(&k, "m1").into(), envelope(&k, "m2").into()];
    let results: Vec<Offset> = broker
        .publish_batch(batch)
        .await
        .into_iter()
        .map(|r| r.unwrap().offset)
        .collect();
    assert!(o0 < results[0] && results[0] < results[1]);
    let read = broker.read(&k, Some(o0), 10).await.unwrap();
    assert_eq!(read.messages.len(), 2);
}

#[tokio::test]
async fn the_keys_are_laid_out_as_documented_and_expire_with_the_window() {
    let server = RedisServer::start().await;
    let retention = Duration::from_secs(3600);
    let broker = broker_on(&server, |c| c.retention = retention).await;
    let k = key();
    let o = publish(&broker, &k, "m0").await;
    broker.mark_read(&k, "mia", o).await.unwrap();
    broker.presence_join(&k, "mia", "s1").await.unwrap();

    let base = "bh:{h1|room:101}";
    for (suffix, kind) in [
        ("log", "stream"),
        ("meta", "hash"),
        ("read", "hash"),
        ("presence", "zset"),
        ("users", "hash"),
    ] {
        let name = format!("{base}:{suffix}");
        assert_eq!(server.command(&["TYPE", &name]).await, [kind], "{name}");
        let ttl: i64 = server.command(&["PTTL", &name]).await[0].parse().unwrap();
        assert!(
            ttl > 0 && ttl as u128 <= retention.as_millis(),
            "{name} must expire within the window, PTTL {ttl}"
        );
    }
    assert_eq!(
        server
            .command(&["HMGET", &format!("{base}:meta"), "seq", "last"])
            .await,
        ["1".to_owned(), o.to_string()]
    );
    // The server's origin never expires, and the channel's history starts there.
    assert_eq!(server.command(&["TYPE", "bh:origin"]).await, ["string"]);
    assert_eq!(server.command(&["PTTL", "bh:origin"]).await, ["-1"]);
    let origin = server.command(&["GET", "bh:origin"]).await;
    assert_eq!(
        server
            .command(&["HGET", &format!("{base}:meta"), "origin"])
            .await,
        origin
    );
    let entry = server
        .command(&["XRANGE", &format!("{base}:log"), "-", "+"])
        .await;
    assert_eq!(
        entry[..4],
        [o.to_string(), "s".into(), "1".into(), "e".into()]
    );
    let stored: Envelope = serde_json::from_str(&entry[4]).unwrap();
    assert_eq!(stored, *envelope(&k, "m0"));
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable_with_a_retry_hint() {
    let server = RedisServer::start().await;
    let url = server.url();
    let broker = broker_on(&server, |c| {
        c.command_timeout = Duration::from_millis(500);
        c.retry_after = Duration::from_millis(1500);
    })
    .await;
    let k = key();
    publish(&broker, &k, "m0").await;
    drop(server);

    let result = tokio::time::timeout(
        DEADLINE,
        broker.publish_batch(vec![envelope(&k, "m1").into()]),
    )
    .await
    .expect("a publish must fail within the command timeout, not hang");
    match &result[..] {
        [Err(BrokerError::Unavailable { retry_after, .. })] => {
            assert_eq!(*retry_after, Duration::from_millis(1500))
        }
        other => panic!("expected unavailable, got {other:?}"),
    }
    assert!(matches!(
        broker.read(&k, None, 10).await,
        Err(BrokerError::Unavailable { .. })
    ));

    // Connecting to nothing fails fast, too.
    let config = RedisConfig {
        url,
        command_timeout: Duration::from_millis(500),
        ..RedisConfig::default()
    };
    let connect = tokio::time::timeout(DEADLINE, RedisBroker::connect(config))
        .await
        .expect("connect must fail fast");
    assert!(
        matches!(connect, Err(BrokerError::Unavailable { .. })),
        "{connect:?}"
    );
}

#[tokio::test]
async fn a_subscriber_connection_gone_silent_is_caught_by_the_probe_and_replaced() {
    let server = RedisServer::start().await;
    let proxy = Proxy::start(server.port()).await;
    let broker = broker_on(&server, |c| {
        c.url = proxy.url();
        c.probe_interval = Duration::from_millis(100);
        c.probe_timeout = Duration::from_millis(300);
    })
    .await;
    // The command connection is accepted first, then the subscriber's.
    assert_eq!(proxy.connections(), 2);
    let k = key();
    let mut sub = broker.subscribe(&k).await.unwrap();
    let m0 = publish(&broker, &k, "m0").await;
    assert_eq!(next_message(&mut sub).await.offset, m0);
    assert!(broker.subscriber_healthy());

    // The subscriber connection stays open but hears nothing any more.
    proxy.silence(1);
    let m1 = publish(&broker, &k, "m1").await;
    // A lost probe replaces the connection; the channel is subscribed again and gets a gap.
    assert_eq!(next_event(&mut sub).await, SubscriptionEvent::Gap);
    assert_eq!(proxy.connections(), 3, "a new subscriber connection");
    let read = broker.read(&k, Some(m0), 10).await.unwrap();
    assert_eq!(
        read.messages.iter().map(|m| m.offset).collect::<Vec<_>>(),
        [m1],
        "the re-read after the gap finds what the silent connection swallowed"
    );
    let m2 = publish(&broker, &k, "m2").await;
    assert_eq!(next_message(&mut sub).await.offset, m2);
    eventually("health recovers once a probe comes back", || async {
        broker.subscriber_healthy()
    })
    .await;
}

/// What `connect` says, with a deadline: a refused connection must fail, not hang.
async fn connect_error(config: RedisConfig) -> String {
    match tokio::time::timeout(DEADLINE * 3, RedisBroker::connect(config)).await {
        Ok(Ok(_)) => panic!("connected although it should not have"),
        Ok(Err(e)) => e.to_string(),
        Err(_) => panic!("connect neither succeeded nor failed within the deadline"),
    }
}

#[tokio::test]
async fn a_password_protected_server_needs_the_right_password() {
    let server = RedisServer::start_with(RedisOptions {
        password: Some("right-pass".into()),
        ..RedisOptions::default()
    })
    .await;
    // The right password (in the URL, as REDIS_PASSWORD ends up): it works.
    let broker = broker_on(&server, |_| {}).await;
    let offset = publish(&broker, &key(), "m1").await;
    let read = broker.read(&key(), None, 10).await.unwrap();
    assert_eq!(read.messages.last().map(|m| m.offset), Some(offset));
    // None, or a wrong one: a clear refusal naming authentication.
    let bare = format!("redis://127.0.0.1:{}", server.port());
    let error = connect_error(RedisConfig {
        url: bare,
        ..RedisConfig::default()
    })
    .await;
    assert!(
        error.contains("NOAUTH") || error.contains("auth"),
        "{error}"
    );
    let wrong = format!("redis://:wrong-pass@127.0.0.1:{}", server.port());
    let error = connect_error(RedisConfig {
        url: wrong,
        ..RedisConfig::default()
    })
    .await;
    assert!(
        error.contains("WRONGPASS") || error.contains("invalid password"),
        "{error}"
    );
}

#[tokio::test]
async fn tls_is_verified_against_the_configured_authority() {
    let server = RedisServer::start_with(RedisOptions {
        tls: true,
        ..RedisOptions::default()
    })
    .await;
    // Trusting the CA that signed the server's certificate: it works, over TLS.
    let broker = RedisBroker::connect(RedisConfig {
        url: server.tls_url(),
        tls_ca_path: Some(server.ca_path()),
        ..RedisConfig::default()
    })
    .await
    .unwrap();
    let offset = publish(&broker, &key(), "m1").await;
    assert_eq!(
        broker.read(&key(), None, 1).await.unwrap().messages[0].offset,
        offset
    );
    // Trusting another authority: the server's certificate is refused.
    let other = bellhop_testkit::TestCerts::new("elsewhere");
    let error = connect_error(RedisConfig {
        url: server.tls_url(),
        tls_ca_path: Some(other.ca()),
        ..RedisConfig::default()
    })
    .await;
    assert!(
        error.to_lowercase().contains("certificate") || error.contains("Tls"),
        "{error}"
    );
    // Plain text to the TLS port is not silently accepted either.
    let plain = server.tls_url().replacen("rediss://", "redis://", 1);
    let _ = connect_error(RedisConfig {
        url: plain,
        ..RedisConfig::default()
    })
    .await;
    // A CA file that is not one: a clear error naming the setting.
    let bogus = other.dir().join("bogus.pem");
    std::fs::write(&bogus, "not a certificate").unwrap();
    let error = connect_error(RedisConfig {
        url: server.tls_url(),
        tls_ca_path: Some(bogus),
        ..RedisConfig::default()
    })
    .await;
    assert!(error.contains("REDIS_TLS_CA_PATH"), "{error}");
}

/// The number of keys in the server's current database.
async fn dbsize(server: &RedisServer) -> u64 {
    server.command(&["DBSIZE"]).await[0].parse().unwrap()
}

#[tokio::test]
async fn reads_of_channels_nobody_published_to_create_no_keys() {
    let server = RedisServer::start().await;
    let broker = broker_on(&server, |_| {}).await;
    let before = dbsize(&server).await;
    let started = tokio::time::Instant::now();
    let channels = 100;
    for i in 0..channels {
        let k = ChannelKey::new("h1", Channel::Room(format!("quiet{i}")));
        let read = broker.read(&k, None, 50).await.unwrap();
        assert!(read.messages.is_empty());
        let again = broker.read(&k, Some(read.last), 50).await.unwrap();
        assert!(again.recovered, "the position just handed out is good");
        assert_eq!(broker.unread(&k, "u1").await.unwrap(), 0);
        let (_marker, unread) = broker.mark_read(&k, "u1", read.last).await.unwrap();
        assert_eq!(unread, 0);
        drop(broker.subscribe(&k).await.unwrap());
    }
    let elapsed = started.elapsed();
    let after = dbsize(&server).await;
    eprintln!(
        "DBSIZE before {before}, after {after} reads of {channels} unknown channels: {} keys created in {elapsed:?} ({:.0} keys/s)",
        after - before,
        (after - before) as f64 / elapsed.as_secs_f64()
    );
    assert_eq!(after, before, "reads must not write");
}

/// Subscribes to 1,000 channels at once through a link with a 2 ms round trip; every subscription
/// must work, and they share round trips (one `SUBSCRIBE` and one `PING` per round) instead of
/// queueing behind a lock for one each (1,000 round trips: 2 s and more).
#[tokio::test]
async fn a_thousand_concurrent_subscribes_share_round_trips_and_all_deliver() {
    let server = RedisServer::start().await;
    let rtt = Duration::from_millis(2);
    let proxy = Proxy::start_with_latency(server.port(), rtt).await;
    let broker = Arc::new(broker_on(&server, |c| c.url = proxy.url()).await);
    let keys: Vec<ChannelKey> = (0..1000)
        .map(|i| ChannelKey::new("h1", Channel::Room(format!("r{i}"))))
        .collect();
    let started = tokio::time::Instant::now();
    let tasks: Vec<_> = keys
        .iter()
        .cloned()
        .map(|k| {
            let broker = broker.clone();
            tokio::spawn(async move { broker.subscribe(&k).await })
        })
        .collect();
    let mut subs = Vec::new();
    for task in tasks {
        subs.push(task.await.unwrap().unwrap());
    }
    let elapsed = started.elapsed();
    eprintln!("1000 concurrent subscribes over a {rtt:?} round trip took {elapsed:?}");
    assert!(
        elapsed < 250 * rtt,
        "1,000 subscribes took {elapsed:?}: they are not sharing round trips"
    );
    let batch = keys.iter().map(|k| envelope(k, "m").into()).collect();
    let offsets: Vec<Offset> = broker
        .publish_batch(batch)
        .await
        .into_iter()
        .map(|r| r.unwrap().offset)
        .collect();
    for ((k, sub), o) in keys.iter().zip(&mut subs).zip(offsets) {
        assert_eq!(next_message(sub).await.offset, o, "{k}");
    }
    // Dropping them all unsubscribes every channel (in shared rounds too).
    drop(subs);
    eventually("every channel unsubscribed", || async {
        server
            .command(&[
                "PUBSUB",
                "NUMSUB",
                "bh:{h1|room:0}:live",
                "bh:{h1|room:999}:live",
            ])
            .await
            == ["bh:{h1|room:0}:live", "0", "bh:{h1|room:999}:live", "0"]
    })
    .await;
}

#[tokio::test]
async fn positions_from_before_the_server_lost_its_data_are_not_recovered() {
    let server = RedisServer::start().await;
    let broker = broker_on(&server, |_| {}).await;
    let busy = key();
    let quiet = ChannelKey::new("h1", Channel::Room("quiet".into()));
    let o = publish(&broker, &busy, "m0").await;
    let position = broker.read(&quiet, None, 50).await.unwrap().last;
    assert!(
        broker
            .read(&quiet, Some(position), 50)
            .await
            .unwrap()
            .recovered
    );

    // The loss comes later than the positions (not in the same millisecond).
    let after = o.ms.max(position.ms) + 2;
    eventually("the server's clock moves on", || async {
        let time = server.command(&["TIME"]).await;
        time[0].parse::<u64>().unwrap() * 1000 + time[1].parse::<u64>().unwrap() / 1000 > after
    })
    .await;
    // A restart without persistence, as far as the data goes.
    assert_eq!(server.command(&["FLUSHALL"]).await, ["OK"]);
    let read = broker.read(&busy, Some(o), 50).await.unwrap();
    assert!(!read.recovered, "m0 is gone");
    let read = broker.read(&quiet, Some(position), 50).await.unwrap();
    assert!(
        !read.recovered,
        "whatever was published after it is gone too"
    );
    let o1 = publish(&broker, &busy, "m1").await;
    let read = broker.read(&busy, Some(o), 50).await.unwrap();
    assert!(!read.recovered, "the new history starts after the loss");
    assert_eq!(read.messages.len(), 1);
    assert_eq!(read.messages[0].offset, o1);
    // The new history's own positions are good.
    let read = broker.read(&busy, Some(o1), 50).await.unwrap();
    assert!(read.recovered);
}
