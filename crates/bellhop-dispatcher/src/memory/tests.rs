//! Behaviour specific to the embedded broker: retention, the per-channel cap, sweeping,
//! restarts, clock steps and subscriber buffers. Time is a hand-driven clock, so nothing
//! here waits.

use std::sync::atomic::{AtomicU64, Ordering};

use bellhop_protocol::{Channel, Envelope, Priority, Role, Sender};

use super::*;
use crate::broker::SubscriptionEvent;

/// An arbitrary, realistic wall-clock start (November 2023).
const START: u64 = 1_700_000_000_000;

/// A message for `channel` of `property`, recognisable by its `id`.
fn envelope(property: &str, channel: &Channel, id: &str) -> Arc<Envelope> {
    Arc::new(Envelope {
        message_id: id.into(),
        event: "CHAT_MESSAGE".into(),
        namespace: property.into(),
        channel: channel.clone(),
        payload: serde_json::Value::Null,
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        sender: Sender {
            id: "u1".into(),
            role: Role::Staff,
        },
        priority: Priority::Normal,
        correlation_id: None,
    })
}

fn key(channel: &str) -> ChannelKey {
    ChannelKey::new("h1", Channel::Room(channel.into()))
}

/// A clock the test sets by hand, starting at [`START`].
fn clock() -> Arc<AtomicU64> {
    Arc::new(AtomicU64::new(START))
}

fn set(clock: &AtomicU64, ms: u64) {
    clock.store(ms, Ordering::SeqCst);
}

/// A broker reading time from `clock`.
fn broker_on(clock: &Arc<AtomicU64>, config: MemoryConfig) -> MemoryBroker {
    let clock = clock.clone();
    MemoryBroker::with_clock(config, Arc::new(move || clock.load(Ordering::SeqCst)))
}

fn retention_10s() -> MemoryConfig {
    MemoryConfig {
        retention: Duration::from_secs(10),
        ..MemoryConfig::default()
    }
}

async fn publish(broker: &MemoryBroker, key: &ChannelKey, id: &str) -> Offset {
    let mut results = broker
        .publish_batch(vec![envelope(&key.property, &key.channel, id).into()])
        .await;
    results.pop().unwrap().unwrap().offset
}

/// The message ids of a read, oldest first.
fn ids(read: &ReadResult) -> Vec<&str> {
    read.messages
        .iter()
        .map(|m| m.envelope.message_id.as_str())
        .collect()
}

#[tokio::test]
async fn retention_trims_old_messages_and_recovery_follows_what_was_trimmed() {
    let now = clock();
    let broker = broker_on(&now, retention_10s());
    let k = key("101");
    let before = broker.read(&k, None, 50).await.unwrap().last;
    let a = publish(&broker, &k, "a").await;
    set(&now, START + 1);
    let b = publish(&broker, &k, "b").await;
    set(&now, START + 5_000);
    let c = publish(&broker, &k, "c").await;
    let _d = publish(&broker, &k, "d").await;
    assert_eq!(
        ids(&broker.read(&k, None, 50).await.unwrap()),
        ["a", "b", "c", "d"]
    );

    // The cut-off is now START + 2: a and b are out of the window, c and d in.
    set(&now, START + 10_002);
    let read = broker.read(&k, None, 50).await.unwrap();
    assert_eq!(ids(&read), ["c", "d"]);
    assert_eq!(
        broker.unread(&k, "u9").await.unwrap(),
        2,
        "only retained count"
    );

    // Positions before or among the trimmed messages lost something: not recovered, but
    // the retained messages still come back.
    for since in [before, a] {
        let read = broker.read(&k, Some(since), 50).await.unwrap();
        assert!(!read.recovered, "since {since} precedes trimmed b");
        assert_eq!(ids(&read), ["c", "d"]);
    }
    // At the newest trimmed message or later, nothing is missing.
    let read = broker.read(&k, Some(b), 50).await.unwrap();
    assert!(read.recovered);
    assert_eq!(ids(&read), ["c", "d"]);
    let read = broker.read(&k, Some(c), 50).await.unwrap();
    assert!(read.recovered);
    assert_eq!(ids(&read), ["d"]);
}

#[tokio::test]
async fn the_per_channel_cap_keeps_the_newest_messages() {
    let now = clock();
    let config = MemoryConfig {
        max_messages_per_channel: 3,
        ..MemoryConfig::default()
    };
    let broker = broker_on(&now, config);
    let k = key("101");
    let mut offsets = Vec::new();
    for id in ["m0", "m1", "m2", "m3", "m4"] {
        offsets.push(publish(&broker, &k, id).await);
    }
    let read = broker.read(&k, None, 50).await.unwrap();
    assert_eq!(ids(&read), ["m2", "m3", "m4"]);

    let read = broker.read(&k, Some(offsets[0]), 50).await.unwrap();
    assert!(!read.recovered, "m1 was trimmed after m0");
    assert_eq!(ids(&read), ["m2", "m3", "m4"]);
    let read = broker.read(&k, Some(offsets[1]), 50).await.unwrap();
    assert!(
        read.recovered,
        "m1 is the newest trimmed: nothing after it is missing"
    );
    assert_eq!(ids(&read), ["m2", "m3", "m4"]);
}

#[tokio::test]
async fn sweep_forgets_channels_that_hold_nothing() {
    let now = clock();
    let broker = broker_on(&now, retention_10s());
    publish(&broker, &key("a"), "a0").await;
    publish(&broker, &key("b"), "b0").await;
    // Neither a read nor an ephemeral event of an unused channel leaves state behind.
    broker.read(&key("c"), None, 50).await.unwrap();
    let typing = ChannelEvent::Typing {
        user_id: "u1".into(),
    };
    broker.publish_ephemeral(&key("d"), typing).await.unwrap();
    assert_eq!(broker.sweep(), 2, "retained messages keep a and b");

    set(&now, START + 10_001);
    assert_eq!(broker.sweep(), 0);
}

#[tokio::test]
async fn sweep_keeps_channels_with_a_subscriber_or_presence() {
    let now = clock();
    let broker = broker_on(&now, retention_10s());
    let (watched, occupied) = (key("watched"), key("occupied"));
    let mut sub = broker.subscribe(&watched).await.unwrap();
    publish(&broker, &watched, "old").await;
    broker.presence_join(&occupied, "u1", "s1").await.unwrap();

    set(&now, START + 60_000);
    assert_eq!(broker.sweep(), 2);
    assert_eq!(broker.presence(&occupied).await.unwrap(), ["u1"]);
    // The subscriber still hangs off the same channel: a publish after the sweep reaches it
    // (had the sweep replaced the channel, it would silently miss everything from now on).
    assert!(matches!(
        sub.recv().await,
        SubscriptionEvent::Event(ChannelEvent::Message(m)) if m.envelope.message_id == "old"
    ));
    let fresh = publish(&broker, &watched, "fresh").await;
    assert_eq!(
        sub.recv().await,
        SubscriptionEvent::Event(ChannelEvent::Message(StoredMessage::new(
            fresh,
            envelope("h1", &watched.channel, "fresh"),
        )))
    );

    drop(sub);
    broker.presence_leave(&occupied, "u1", "s1").await.unwrap();
    set(&now, START + 120_000);
    assert_eq!(broker.sweep(), 0);
}

#[tokio::test]
async fn a_position_from_before_a_sweep_resumes_within_retention() {
    let now = clock();
    let broker = broker_on(&now, retention_10s());
    let k = key("quiet");
    // A client subscribes to a quiet channel and learns its position.
    set(&now, START + 100);
    let sub = broker.subscribe(&k).await.unwrap();
    let position = broker.read(&k, None, 50).await.unwrap().last;
    drop(sub);

    set(&now, START + 3_000);
    assert_eq!(broker.sweep(), 0, "nothing holds the channel");

    set(&now, START + 5_000);
    let read = broker.read(&k, Some(position), 50).await.unwrap();
    assert!(read.recovered, "nothing was published, nothing is missing");
    assert!(read.messages.is_empty());
    publish(&broker, &k, "m0").await;
    let read = broker.read(&k, Some(position), 50).await.unwrap();
    assert!(read.recovered);
    assert_eq!(ids(&read), ["m0"]);
}

#[tokio::test]
async fn a_restarted_broker_does_not_recover_the_previous_ones_offsets() {
    let now = clock();
    let old = broker_on(&now, MemoryConfig::default());
    let o = publish(&old, &key("101"), "m0").await;
    set(&now, START + 500);
    let empty_position = old.read(&key("102"), None, 50).await.unwrap().last;
    drop(old);

    // The process restarts a minute later with an empty memory.
    set(&now, START + 60_000);
    let new = broker_on(&now, MemoryConfig::default());
    for (k, since) in [(key("101"), o), (key("102"), empty_position)] {
        let read = new.read(&k, Some(since), 50).await.unwrap();
        assert!(!read.recovered, "{since} was handed out by the old broker");
        assert!(read.messages.is_empty());
    }
    // The new broker's own positions are good.
    let position = new.read(&key("101"), None, 50).await.unwrap().last;
    publish(&new, &key("101"), "m1").await;
    let read = new.read(&key("101"), Some(position), 50).await.unwrap();
    assert!(read.recovered);
    assert_eq!(ids(&read), ["m1"]);
}

#[tokio::test]
async fn offsets_never_go_backwards_when_the_clock_does() {
    let now = clock();
    let broker = broker_on(&now, MemoryConfig::default());
    let k = key("101");
    let mut offsets = Vec::new();
    set(&now, START + 1_000);
    offsets.push(publish(&broker, &k, "m0").await);
    offsets.push(publish(&broker, &k, "m1").await);
    // NTP steps the clock back half a second.
    set(&now, START + 500);
    offsets.push(publish(&broker, &k, "m2").await);
    let batch = ["m3", "m4"]
        .iter()
        .map(|id| envelope("h1", &k.channel, id).into())
        .collect();
    offsets.extend(
        broker
            .publish_batch(batch)
            .await
            .into_iter()
            .map(|r| r.unwrap().offset),
    );
    set(&now, START + 2_000);
    offsets.push(publish(&broker, &k, "m5").await);

    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets must strictly increase: {offsets:?}"
    );
    let read = broker.read(&k, None, 50).await.unwrap();
    assert_eq!(ids(&read), ["m0", "m1", "m2", "m3", "m4", "m5"]);
    let stored: Vec<Offset> = read.messages.iter().map(|m| m.offset).collect();
    assert_eq!(stored, offsets);
    let read = broker.read(&k, Some(offsets[1]), 50).await.unwrap();
    assert_eq!(ids(&read), ["m2", "m3", "m4", "m5"]);
}

#[tokio::test]
async fn a_position_handed_out_for_an_unused_channel_survives_a_clock_step_back() {
    let now = clock();
    let broker = broker_on(&now, MemoryConfig::default());
    let k = key("101");
    set(&now, START + 1_000);
    let position = broker.read(&k, None, 50).await.unwrap().last;
    // The clock steps back 50 ms and someone publishes.
    set(&now, START + 950);
    let o = publish(&broker, &k, "m0").await;
    // The client resumes once the clock has caught up.
    set(&now, START + 2_000);
    let read = broker.read(&k, Some(position), 50).await.unwrap();
    // What the client sees: m0, or recovered=false so it reloads; never a silent loss.
    assert!(
        !read.recovered || ids(&read) == ["m0"],
        "recovered={} but m0 is missing: {:?}",
        read.recovered,
        ids(&read)
    );
    assert!(
        o > position,
        "m0 at {o} is not after the handed-out position {position}"
    );
}

#[tokio::test]
async fn offsets_handed_out_ahead_of_the_clock_are_recovered() {
    let now = clock();
    let broker = broker_on(&now, MemoryConfig::default());
    let k = key("101");
    set(&now, START + 1_000);
    let o0 = publish(&broker, &k, "m0").await;
    set(&now, START + 900);
    let o1 = publish(&broker, &k, "m1").await;
    assert!(o1 > o0);

    let read = broker.read(&k, Some(o0), 50).await.unwrap();
    assert!(
        read.recovered,
        "since {o0} (now {}) is a real position",
        START + 900
    );
    assert_eq!(ids(&read), ["m1"]);
    let read = broker.read(&k, Some(o1), 50).await.unwrap();
    assert!(read.recovered, "since {o1} is the newest offset");
    assert!(read.messages.is_empty());
}

#[tokio::test]
async fn a_subscriber_that_falls_behind_gets_a_gap() {
    let now = clock();
    let config = MemoryConfig {
        subscriber_buffer: 4,
        ..MemoryConfig::default()
    };
    let broker = broker_on(&now, config);
    let k = key("101");
    let position = broker.read(&k, None, 50).await.unwrap().last;
    let mut slow = broker.subscribe(&k).await.unwrap();
    let mut fast = broker.subscribe(&k).await.unwrap();

    let mut offsets = Vec::new();
    for i in 0..10 {
        let o = publish(&broker, &k, &format!("m{i}")).await;
        offsets.push(o);
        // A subscriber that keeps up never sees a gap, whatever the others do.
        match fast.recv().await {
            SubscriptionEvent::Event(ChannelEvent::Message(m)) => assert_eq!(m.offset, o),
            other => panic!("fast subscriber got {other:?}"),
        }
    }

    assert_eq!(slow.recv().await, SubscriptionEvent::Gap);
    // After the gap, the subscription carries on with what is still buffered, in order, up
    // to the newest message (no publish here: it would overflow the full buffer again)...
    let mut previous = position;
    let mut live_after_gap = 0;
    while previous != offsets[9] {
        match slow.recv().await {
            SubscriptionEvent::Event(ChannelEvent::Message(m)) => {
                assert!(m.offset > previous, "live order after a gap");
                assert!(offsets.contains(&m.offset));
                previous = m.offset;
                live_after_gap += 1;
            }
            other => panic!("slow subscriber got {other:?}"),
        }
    }
    assert!(live_after_gap < 10, "the gap must have cost something");
    // ...and re-reading from the last offset it had delivered repairs the gap.
    let read = broker.read(&k, Some(position), 50).await.unwrap();
    assert!(read.recovered);
    let stored: Vec<Offset> = read.messages.iter().map(|m| m.offset).collect();
    assert_eq!(stored, offsets);
}

#[tokio::test]
async fn an_idempotency_result_lasts_exactly_the_window_and_their_number_is_capped() {
    let now = clock();
    let config = MemoryConfig {
        idempotency_window: Duration::from_secs(600),
        max_idempotency_keys: 3,
        ..MemoryConfig::default()
    };
    let broker = broker_on(&now, config);
    let k = key("101");
    let publish = |id: &str, key: &str| {
        let p = Publish::with_key(envelope("h1", &k.channel, id), key);
        let broker = &broker;
        async move { broker.publish_batch(vec![p]).await.pop().unwrap().unwrap() }
    };
    let first = publish("m0", "u1:a").await;
    assert!(!first.duplicate);
    set(&now, START + 599_999);
    let repeat = publish("m0-retry", "u1:a").await;
    assert!(repeat.duplicate);
    assert_eq!(
        (repeat.offset, repeat.message_id.as_str()),
        (first.offset, "m0")
    );
    // The window is over: the same key is a new message.
    set(&now, START + 600_000);
    let second = publish("m1", "u1:a").await;
    assert!(!second.duplicate);
    assert!(second.offset > first.offset);
    assert!(publish("m1-retry", "u1:a").await.duplicate);

    // Three results at most: a fourth key pushes out the oldest (u1:a) early.
    for (id, key) in [("b", "u1:b"), ("c", "u1:c"), ("d", "u1:d")] {
        assert!(!publish(id, key).await.duplicate);
    }
    assert!(!publish("m1-late", "u1:a").await.duplicate, "forgotten");
    let (results, order) = {
        let idempotency = broker.idempotency.lock();
        (idempotency.results.len(), idempotency.order.len())
    };
    assert!(results <= 3, "{results} results remembered");
    assert!(order <= 4, "the order queue is bounded too: {order}");
    let read = broker.read(&k, None, 50).await.unwrap();
    assert_eq!(ids(&read), ["m0", "m1", "b", "c", "d", "m1-late"]);
}

#[tokio::test]
async fn a_read_marker_of_a_channel_nobody_used_is_the_floor_and_leaves_nothing() {
    let now = clock();
    let broker = broker_on(&now, retention_10s());
    let k = key("quiet");
    set(&now, START + 20_000);
    let (marker, unread) = broker
        .mark_read(&k, "u1", Offset::new(START + 19_000, 0))
        .await
        .unwrap();
    assert_eq!((marker, unread), (Offset::new(START + 10_000, 0), 0));
    assert_eq!(broker.unread(&k, "u1").await.unwrap(), 0);
    assert_eq!(broker.channels.lock().len(), 0, "no state was created");
    publish(&broker, &k, "m0").await;
    assert_eq!(broker.unread(&k, "u1").await.unwrap(), 1);
}

#[tokio::test]
async fn dropping_the_broker_closes_its_subscriptions() {
    let now = clock();
    let broker = broker_on(&now, MemoryConfig::default());
    let mut sub = broker.subscribe(&key("101")).await.unwrap();
    drop(broker);
    assert_eq!(sub.recv().await, SubscriptionEvent::Closed);
}

#[cfg(target_pointer_width = "64")]
#[test]
fn a_channels_state_fits_a_128_byte_allocation() {
    // Most channels are a connection's own `user:` channel: one such state per connection.
    // docs/BENCHMARKS.md, "Idle connection memory".
    let size = std::mem::size_of::<ChannelState>();
    assert!(size <= 128, "ChannelState is {size} B");
}
