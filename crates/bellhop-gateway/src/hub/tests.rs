//! The hand-over from replay to live delivery and the de-duplication by offset, against the
//! embedded broker (the product's own, not a double): what a subscriber's queue receives.

use std::time::Duration;

use bellhop_dispatcher::{MemoryBroker, MemoryConfig, Publish};
use bellhop_protocol::{Channel, Envelope, Priority, Role, Sender};

use super::*;
use crate::config::OutboundConfig;
use crate::outbound::Batch;

const DEADLINE: Duration = Duration::from_secs(5);

fn key() -> ChannelKey {
    ChannelKey::new("h1", Channel::Room("101".into()))
}

/// Stores messages `n` in `range` on the channel; their offsets.
async fn store(broker: &MemoryBroker, range: std::ops::Range<u64>) -> Vec<Offset> {
    let batch = range
        .map(|n| {
            Publish::new(Arc::new(Envelope {
                message_id: format!("m{n}"),
                event: "CHAT_MESSAGE".into(),
                namespace: "h1".into(),
                channel: key().channel.clone(),
                payload: serde_json::json!({ "n": n }),
                timestamp: "2026-12-01T10:00:00.000Z".into(),
                sender: Sender {
                    id: "g1".into(),
                    role: Role::Guest,
                },
                priority: Priority::Normal,
                correlation_id: None,
            }))
        })
        .collect();
    broker
        .publish_batch(batch)
        .await
        .into_iter()
        .map(|r| r.unwrap().offset)
        .collect()
}

fn subscriber(conn_id: u64) -> (Subscriber, Arc<Outbound>) {
    let outbound = Arc::new(Outbound::new(OutboundConfig::default()));
    let sub = Subscriber {
        conn_id,
        user_id: format!("u{conn_id}"),
        codec: Codec::Json,
        outbound: outbound.clone(),
        sees_presence: true,
    };
    (sub, outbound)
}

/// The `n` of the next `count` messages queued for the subscriber, waiting for them with a
/// deadline.
async fn received(outbound: &Outbound, count: usize) -> Vec<u64> {
    let mut got = Vec::new();
    let mut batch = Vec::new();
    while got.len() < count {
        let next = tokio::time::timeout(DEADLINE, outbound.next_batch(&mut batch, 64))
            .await
            .expect("the messages within the deadline");
        assert!(matches!(next, Some(Batch::Frames)), "{next:?}");
        for frame in batch.drain(..) {
            for m in crate::wire::decode(frame.bytes()) {
                let v: serde_json::Value = serde_json::from_str(m.to_text().unwrap()).unwrap();
                got.push(v["message"]["payload"]["n"].as_u64().unwrap());
            }
        }
    }
    got
}

/// Waits (yielding to the channel task, with a deadline) until the pending subscriber has
/// buffered `n` live messages.
async fn buffered(hub: &Hub, conn_id: u64, n: usize) {
    let started = tokio::time::Instant::now();
    loop {
        let len = {
            let channels = hub.channels.lock();
            let state = channels[&key()].state.lock();
            match &state.subs[&conn_id].mode {
                Mode::Pending { buffer, .. } => buffer.len(),
                Mode::Live { .. } => usize::MAX,
            }
        };
        if len >= n {
            return;
        }
        assert!(started.elapsed() < DEADLINE, "buffered {len} of {n}");
        tokio::task::yield_now().await;
    }
}

#[tokio::test]
async fn live_messages_during_a_replay_are_handed_over_once_and_in_order() {
    let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
    let hub = Hub::new(broker.clone(), Metrics::new("t"));
    store(&broker, 0..3).await;
    let (sub, outbound) = subscriber(1);
    hub.join(&key(), sub).await.unwrap();
    // While the session replays, 3 and 4 are published live: they wait in the buffer.
    let live = store(&broker, 3..5).await;
    buffered(&hub, 1, 2).await;
    assert!(outbound.is_empty(), "nothing goes out before the hand-over");
    // The replay covered up to 3: only 4 is flushed; 3 is not sent twice.
    assert_eq!(hub.activate(&key(), 1, live[0]), Activation::Live);
    assert_eq!(received(&outbound, 1).await, vec![4]);
    // From now on, live.
    store(&broker, 5..7).await;
    assert_eq!(received(&outbound, 2).await, vec![5, 6]);
}

/// A hub with one subscriber (connection 1) that is live from the channel's start.
async fn live_subscriber() -> (Arc<MemoryBroker>, Hub, Arc<Outbound>, Offset) {
    let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
    let hub = Hub::new(broker.clone(), Metrics::new("t"));
    let (sub, outbound) = subscriber(1);
    hub.join(&key(), sub).await.unwrap();
    let start = broker.read(&key(), None, 0).await.unwrap().last;
    assert_eq!(hub.activate(&key(), 1, start), Activation::Live);
    (broker, hub, outbound, start)
}

#[tokio::test]
async fn a_message_delivered_again_by_a_catch_up_is_dropped() {
    let (broker, hub, outbound, start) = live_subscriber().await;
    store(&broker, 0..2).await;
    assert_eq!(received(&outbound, 2).await, vec![0, 1]);
    // A gap's catch-up re-reads from the channel's last offset; anything it hands the hub
    // again (at or below what was delivered) is dropped, and what is new is delivered.
    let channel = hub.channels.lock()[&key()].clone();
    let again = broker.read(&key(), Some(start), 10).await.unwrap();
    for m in &again.messages {
        channel.deliver_message(m, &hub.shared.metrics);
    }
    store(&broker, 2..3).await;
    assert_eq!(received(&outbound, 1).await, vec![2], "0 and 1 not twice");
}

#[tokio::test]
async fn a_quiet_channel_holds_no_task_and_no_queue() {
    let (broker, hub, outbound, _) = live_subscriber().await;
    store(&broker, 0..3).await;
    assert_eq!(received(&outbound, 3).await, vec![0, 1, 2]);
    // Once everything is delivered, the delivery task ends and gives its queue back.
    let started = tokio::time::Instant::now();
    loop {
        let quiet = {
            let channels = hub.channels.lock();
            let state = channels[&key()].state.lock();
            !state.delivering && state.queue.capacity() == 0
        };
        if quiet {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "the channel stayed busy");
        tokio::task::yield_now().await;
    }
    // And the next message starts one again.
    store(&broker, 3..4).await;
    assert_eq!(received(&outbound, 1).await, vec![3]);
}

#[tokio::test]
async fn a_replay_that_took_too_long_is_told_to_read_again() {
    let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
    let hub = Hub::new(broker.clone(), Metrics::new("t"));
    let (sub, outbound) = subscriber(1);
    hub.join(&key(), sub).await.unwrap();
    let start = broker.read(&key(), None, 0).await.unwrap().last;
    // More live messages arrive during the replay than the pending buffer holds.
    let total = PENDING_BUFFER as u64 + 10;
    let mut newest = start;
    for chunk in (0..total).step_by(500) {
        newest = *store(&broker, chunk..(chunk + 500).min(total))
            .await
            .last()
            .unwrap();
        tokio::task::yield_now().await;
    }
    // Wait (with a deadline) until the channel task has handled every one of them.
    let started = tokio::time::Instant::now();
    while hub.channels.lock()[&key()].state.lock().last < newest {
        assert!(started.elapsed() < DEADLINE, "the channel task fell behind");
        tokio::task::yield_now().await;
    }
    // The buffer overflowed: the hand-over refuses, and the session must re-read.
    assert_eq!(hub.activate(&key(), 1, start), Activation::Reread);
    assert!(outbound.is_empty(), "nothing half-delivered");
    // The session's re-read covered up to the newest: the second hand-over succeeds and
    // sends nothing stale; the next live message is the first frame.
    assert_eq!(hub.activate(&key(), 1, newest), Activation::Live);
    store(&broker, total..total + 1).await;
    assert_eq!(received(&outbound, 1).await, vec![total]);
}

#[tokio::test]
async fn a_message_with_its_stored_json_is_framed_as_if_encoded_anew() {
    let broker = MemoryBroker::new(MemoryConfig::default());
    store(&broker, 0..1).await;
    let read = broker
        .read(&key(), Some(Offset::ZERO), 1)
        .await
        .expect("read");
    let fresh = read.messages[0].clone();
    let kept = StoredMessage {
        json: Some(Arc::from(
            serde_json::to_string(fresh.envelope.as_ref()).expect("JSON"),
        )),
        ..fresh.clone()
    };
    for codec in [Codec::Json, Codec::MsgPack] {
        let anew = encode_message(codec, &key(), &fresh).expect("frame");
        let passed = encode_message(codec, &key(), &kept).expect("frame");
        assert_eq!(passed.len(), anew.len(), "{codec:?}");
        assert_eq!(passed, anew, "{codec:?}");
    }
}
