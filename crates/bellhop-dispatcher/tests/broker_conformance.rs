//! Backend-agnostic conformance suite for [`Broker`]: the semantics users and the gateway rely on
//! (offsets, history reads, recovery, live delivery, presence, read markers), whatever the storage.
//!
//! Every check is an `async fn check_xxx(broker: Arc<dyn Broker>)`. The `conformance!` macro turns
//! the list of checks into one `#[tokio::test]` per check for a given backend factory, so a new
//! backend is one more line at the bottom of this file. A factory returns the broker, or the
//! broker and whatever must outlive it (the Redis checks each get their own `redis-server`, which
//! is killed when the check ends).
//!
//! Checks must hold on a shared, persistent backend too: each one works in its own property
//! (suffixed with a per-run id, so a rerun against the same Redis never sees an earlier run's data),
//! and none assumes the broker is empty.

// The checks are plain async fns (not `#[test]`s), which `allow-unwrap-in-tests` does not cover;
// a failed unwrap is a failed check here.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bellhop_dispatcher::{
    now_ms, Broker, BrokerError, ChannelEvent, ChannelKey, LiveSink, Publish, Published,
    StoredMessage, Subscription, SubscriptionEvent, MAX_IDEMPOTENCY_KEY_BYTES,
};
use bellhop_dispatcher::{MemoryBroker, MemoryConfig, RedisBroker, RedisConfig};
use bellhop_protocol::{Channel, Envelope, Offset};

mod support;

use support::redis_server::{RedisOptions, RedisServer};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A message for `channel` of `property`, recognisable by its `id`.
fn envelope(property: &str, channel: &Channel, id: &str) -> Arc<Envelope> {
    Arc::new(bellhop_testkit::envelope::chat(
        property,
        channel.clone(),
        id,
    ))
}

/// A property name of its own for one check, unique per test run (see the module docs).
fn property(check: &str) -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    let run = RUN.get_or_init(|| format!("{}-{}", now_ms(), std::process::id()));
    format!("{check}.{run}")
}

fn room(id: &str) -> Channel {
    Channel::Room(id.into())
}

/// Publishes one message per id to `key` (one call each, as the dispatcher may) and returns
/// their offsets.
async fn publish_each(broker: &Arc<dyn Broker>, key: &ChannelKey, ids: &[String]) -> Vec<Offset> {
    let mut offsets = Vec::with_capacity(ids.len());
    for id in ids {
        let result = broker
            .publish_batch(vec![envelope(&key.property, &key.channel, id).into()])
            .await;
        assert_eq!(result.len(), 1, "one result per envelope");
        let published = result.into_iter().next().unwrap().unwrap();
        assert_eq!(published.message_id, *id);
        assert!(!published.duplicate);
        offsets.push(published.offset);
    }
    offsets
}

/// `prefix0`, `prefix1`, ... `prefix{n-1}`.
fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

/// The `(offset, message id)` pairs of some stored messages, for compact comparisons.
fn pairs(messages: &[StoredMessage]) -> Vec<(Offset, String)> {
    messages
        .iter()
        .map(|m| (m.offset, m.envelope.message_id.clone()))
        .collect()
}

/// Zips offsets and ids into the pairs a read is expected to return.
fn expected(offsets: &[Offset], ids: &[String]) -> Vec<(Offset, String)> {
    offsets.iter().copied().zip(ids.iter().cloned()).collect()
}

/// The next live event. Not a sleep: an in-process backend has the event buffered already and
/// answers at once; the timeout only turns a missing event into a failure instead of a hang (and
/// gives a networked backend time to deliver).
async fn next_event(sub: &mut Subscription) -> SubscriptionEvent {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("no live event within 5 s")
}

/// The next live event, which must be a stored message.
async fn next_message(sub: &mut Subscription) -> StoredMessage {
    match next_event(sub).await {
        SubscriptionEvent::Event(ChannelEvent::Message(m)) => m,
        other => panic!("expected a message, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------------
// Checks: offsets and isolation
// ---------------------------------------------------------------------------------------------

/// Offsets of one channel strictly increase in publish order, across single publishes and
/// batches, and reads return the messages at exactly the offsets publish reported.
async fn check_offsets_strictly_increase_in_publish_order(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("offsets"), room("101"));
    let singles = ids("s", 5);
    let mut offsets = publish_each(&broker, &key, &singles).await;

    let batch_ids = ids("b", 5);
    let batch = batch_ids
        .iter()
        .map(|id| envelope(&key.property, &key.channel, id).into())
        .collect();
    let results = broker.publish_batch(batch).await;
    assert_eq!(results.len(), batch_ids.len(), "one result per envelope");
    offsets.extend(results.into_iter().map(|r| r.unwrap().offset));

    assert!(
        offsets.windows(2).all(|w| w[0] < w[1]),
        "offsets must strictly increase: {offsets:?}"
    );
    let all_ids: Vec<String> = singles.into_iter().chain(batch_ids).collect();
    let read = broker.read(&key, None, 100).await.unwrap();
    assert_eq!(pairs(&read.messages), expected(&offsets, &all_ids));
    assert_eq!(read.last, *offsets.last().unwrap());
}

/// `publish_batch` answers in batch order: result `i` is the offset envelope `i` was stored at,
/// even when the batch interleaves channels.
async fn check_publish_batch_results_are_in_batch_order(broker: Arc<dyn Broker>) {
    let prop = property("batch-order");
    let a = ChannelKey::new(prop.clone(), room("a"));
    let b = ChannelKey::new(prop.clone(), Channel::Dept("housekeeping".into()));
    // a0 b0 a1 b1 ... so a result list that is grouped or reordered is caught.
    let plan: Vec<(&ChannelKey, String)> = (0..4)
        .flat_map(|i| [(&a, format!("a{i}")), (&b, format!("b{i}"))])
        .collect();
    let batch = plan
        .iter()
        .map(|(key, id)| envelope(&key.property, &key.channel, id).into())
        .collect();
    let results = broker.publish_batch(batch).await;
    assert_eq!(results.len(), plan.len(), "one result per envelope");

    for key in [&a, &b] {
        let read = broker.read(key, None, 100).await.unwrap();
        let want: Vec<(Offset, String)> = plan
            .iter()
            .zip(&results)
            .filter(|((k, _), _)| *k == key)
            .map(|((_, id), r)| (r.as_ref().unwrap().offset, id.clone()))
            .collect();
        assert_eq!(pairs(&read.messages), want, "channel {key}");
    }
}

/// Messages stay in their own channel of their own property: the same channel name in another
/// property, and another channel of the same property, never see them (neither in reads nor
/// live).
async fn check_channels_and_properties_are_isolated(broker: Arc<dyn Broker>) {
    let p1 = property("isolation-1");
    let p2 = property("isolation-2");
    let p1_room = ChannelKey::new(p1.clone(), room("101"));
    let p2_room = ChannelKey::new(p2.clone(), room("101"));
    let p1_other = ChannelKey::new(p1.clone(), room("102"));

    let mut live = broker.subscribe(&p2_room).await.unwrap();
    let mut published = Vec::new();
    for (i, key) in [&p1_room, &p2_room, &p1_other]
        .into_iter()
        .cycle()
        .take(9)
        .enumerate()
    {
        let id = format!("{}-{}-{i}", key.property, key.channel);
        let offset = publish_each(&broker, key, std::slice::from_ref(&id)).await[0];
        published.push((key, offset, id));
    }

    for key in [&p1_room, &p2_room, &p1_other] {
        let want: Vec<(Offset, String)> = published
            .iter()
            .filter(|(k, _, _)| *k == key)
            .map(|(_, o, id)| (*o, id.clone()))
            .collect();
        assert_eq!(want.len(), 3);
        let read = broker.read(key, None, 100).await.unwrap();
        assert_eq!(pairs(&read.messages), want, "channel {key}");
        for m in &read.messages {
            assert_eq!(ChannelKey::of(&m.envelope), *key);
        }
    }
    // The live subscriber of p2/room:101 gets its three and nothing from the others; the
    // sentinel shows nothing foreign arrived after the last of them either.
    let sentinel = "sentinel".to_owned();
    let sentinel_offset = publish_each(&broker, &p2_room, std::slice::from_ref(&sentinel)).await[0];
    let own = published.iter().filter(|(k, _, _)| *k == &p2_room);
    for (offset, id) in own
        .map(|(_, o, id)| (o, id))
        .chain([(&sentinel_offset, &sentinel)])
    {
        let m = next_message(&mut live).await;
        assert_eq!((m.offset, &m.envelope.message_id), (*offset, id));
    }
}

// ---------------------------------------------------------------------------------------------
// Checks: history reads
// ---------------------------------------------------------------------------------------------

/// With no `since`, a read returns the newest `limit` messages, oldest first.
async fn check_read_without_since_returns_newest_oldest_first(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("read-newest"), room("101"));
    let names = ids("m", 7);
    let offsets = publish_each(&broker, &key, &names).await;

    let read = broker.read(&key, None, 3).await.unwrap();
    assert_eq!(pairs(&read.messages), expected(&offsets[4..], &names[4..]));
    assert!(read.recovered);
    assert_eq!(read.last, offsets[6]);

    // A limit above the count returns everything.
    let read = broker.read(&key, None, 50).await.unwrap();
    assert_eq!(pairs(&read.messages), expected(&offsets, &names));
}

/// With `since`, a read returns only messages strictly after it, at most `limit`, and `more`
/// says whether others follow.
async fn check_read_since_is_exclusive_limited_and_reports_more(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("read-since"), room("101"));
    let names = ids("m", 7);
    let o = publish_each(&broker, &key, &names).await;

    let read = broker.read(&key, Some(o[1]), 3).await.unwrap();
    assert_eq!(pairs(&read.messages), expected(&o[2..5], &names[2..5]));
    assert!(read.more, "m5 and m6 remain");
    assert!(read.recovered);
    assert_eq!(read.last, o[6]);

    // Exactly the remaining count: nothing more follows.
    let read = broker.read(&key, Some(o[4]), 2).await.unwrap();
    assert_eq!(pairs(&read.messages), expected(&o[5..], &names[5..]));
    assert!(!read.more, "m6 was the last one");

    // One short of the remaining count.
    let read = broker.read(&key, Some(o[3]), 2).await.unwrap();
    assert_eq!(pairs(&read.messages), expected(&o[4..6], &names[4..6]));
    assert!(read.more, "m6 remains");

    // Since the newest: nothing, and the position is still good.
    let read = broker.read(&key, Some(o[6]), 10).await.unwrap();
    assert!(read.messages.is_empty());
    assert!(!read.more);
    assert!(read.recovered);
}

/// Paging with the last offset of each page yields every message exactly once, in order, and
/// `more` is false exactly on the last page.
async fn check_paging_yields_every_message_once_in_order(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("paging"), room("101"));
    let start = broker.read(&key, None, 1).await.unwrap().last;
    let names = ids("m", 10);
    let offsets = publish_each(&broker, &key, &names).await;

    let mut seen = Vec::new();
    let mut since = start;
    let mut pages = 0;
    loop {
        let page = broker.read(&key, Some(since), 3).await.unwrap();
        assert!(page.recovered);
        assert!(
            page.messages.len() <= 3,
            "a page holds at most limit messages"
        );
        pages += 1;
        assert!(pages <= 4, "10 messages in pages of 3 take 4 pages");
        seen.extend(pairs(&page.messages));
        if !page.more {
            break;
        }
        since = page.messages.last().expect("more implies a message").offset;
    }
    assert_eq!(pages, 4);
    assert_eq!(seen, expected(&offsets, &names));
}

// ---------------------------------------------------------------------------------------------
// Checks: recovery
// ---------------------------------------------------------------------------------------------

/// A client that reads a channel nobody used yet gets a position (`last`); resuming from it
/// later is recovered and yields exactly what was published since.
async fn check_resume_from_the_last_of_a_fresh_channel(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("fresh-resume"), room("101"));
    let first = broker.read(&key, None, 50).await.unwrap();
    assert!(first.messages.is_empty());
    assert!(first.recovered);
    assert!(!first.more);
    let last = first.last;

    let again = broker.read(&key, Some(last), 50).await.unwrap();
    assert!(again.recovered, "the position just handed out must be good");
    assert!(again.messages.is_empty());

    let names = ids("m", 3);
    let offsets = publish_each(&broker, &key, &names).await;
    assert!(
        offsets[0] > last,
        "new messages come after the handed-out position"
    );
    let resumed = broker.read(&key, Some(last), 50).await.unwrap();
    assert!(resumed.recovered);
    assert_eq!(pairs(&resumed.messages), expected(&offsets, &names));
    assert!(!resumed.more);
}

/// A `since` in the future (more than a day ahead) was never handed out: not recovered.
async fn check_since_in_the_future_is_not_recovered(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("future"), room("101"));
    publish_each(&broker, &key, &ids("m", 2)).await;
    let future = Offset::new(now_ms() + 24 * 3600 * 1000 + 60_000, 0);
    let read = broker.read(&key, Some(future), 50).await.unwrap();
    assert!(!read.recovered, "{future} cannot be a real position");
    assert!(read.messages.is_empty());
}

/// `since = 0-0` is older than any history: not recovered, but the retained messages come back
/// so the client can rebuild from them.
async fn check_since_zero_is_not_recovered_but_returns_retained(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("zero"), room("101"));
    let names = ids("m", 3);
    let offsets = publish_each(&broker, &key, &names).await;
    let read = broker.read(&key, Some(Offset::ZERO), 50).await.unwrap();
    assert!(!read.recovered);
    assert_eq!(pairs(&read.messages), expected(&offsets, &names));
}

// ---------------------------------------------------------------------------------------------
// Checks: live subscriptions
// ---------------------------------------------------------------------------------------------

/// A subscriber sees each message published after it subscribed, at the offset publish
/// reported, in order.
async fn check_subscription_yields_published_messages_in_order(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("live"), room("101"));
    let mut sub = broker.subscribe(&key).await.unwrap();
    let names = ids("m", 5);
    let mut offsets = publish_each(&broker, &key, &names[..2]).await;
    let batch = names[2..]
        .iter()
        .map(|id| envelope(&key.property, &key.channel, id).into())
        .collect();
    let published = broker.publish_batch(batch).await;
    offsets.extend(published.into_iter().map(|r| r.unwrap().offset));

    for (offset, id) in offsets.iter().zip(&names) {
        let m = next_message(&mut sub).await;
        assert_eq!((m.offset, &m.envelope.message_id), (*offset, id));
        assert_eq!(ChannelKey::of(&m.envelope), key);
    }
}

/// A [`LiveSink`] that records what it is handed.
#[derive(Debug, Default)]
struct Recorder {
    events: parking_lot::Mutex<Vec<SubscriptionEvent>>,
    arrived: tokio::sync::Notify,
}

impl LiveSink for Recorder {
    fn deliver(&self, event: SubscriptionEvent) {
        self.events.lock().push(event);
        self.arrived.notify_waiters();
    }
}

impl Recorder {
    /// The first `n` events, once they have arrived (with a deadline, as [`next_event`]).
    async fn first(&self, n: usize) -> Vec<SubscriptionEvent> {
        let wait = async {
            loop {
                let arrived = self.arrived.notified();
                tokio::pin!(arrived);
                arrived.as_mut().enable();
                {
                    let events = self.events.lock();
                    if events.len() >= n {
                        return events[..n].to_vec();
                    }
                }
                arrived.await;
            }
        };
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("the events within 5 s")
    }
}

/// An attached sink is handed every message and ephemeral event from then on, in order, at the
/// offsets publish reported, and nothing once its attachment is dropped.
async fn check_an_attached_sink_sees_events_in_order_until_detached(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("sink"), room("101"));
    let sink = Arc::new(Recorder::default());
    let attachment = broker.attach(&key, sink.clone()).await.unwrap();
    let mut sub = broker.subscribe(&key).await.unwrap();
    let names = ids("m", 3);
    let mut offsets = publish_each(&broker, &key, &names[..2]).await;
    let typing = ChannelEvent::Typing {
        user_id: "u2".into(),
    };
    broker
        .publish_ephemeral(&key, typing.clone())
        .await
        .unwrap();
    offsets.extend(publish_each(&broker, &key, &names[2..]).await);
    let got = sink.first(4).await;
    let message = |i: usize| match &got[i] {
        SubscriptionEvent::Event(ChannelEvent::Message(m)) => {
            (m.offset, m.envelope.message_id.clone())
        }
        other => panic!("expected a message, got {other:?}"),
    };
    assert_eq!(message(0), (offsets[0], names[0].clone()));
    assert_eq!(message(1), (offsets[1], names[1].clone()));
    assert_eq!(got[2], SubscriptionEvent::Event(typing));
    assert_eq!(message(3), (offsets[2], names[2].clone()));

    drop(attachment);
    let after = publish_each(&broker, &key, &["after".to_owned()]).await[0];
    // The subscription sees everything the sink saw, then the message published after the
    // detach: by then the sink would have had it too.
    for _ in 0..4 {
        next_event(&mut sub).await;
    }
    assert_eq!(next_message(&mut sub).await.offset, after);
    assert_eq!(sink.events.lock().len(), 4, "nothing after the detach");
}

/// Ephemeral events (join, typing) reach live subscribers in order with the messages around
/// them, and are never stored.
async fn check_ephemeral_events_are_live_only(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("ephemeral"), room("101"));
    let mut sub = broker.subscribe(&key).await.unwrap();
    let before = publish_each(&broker, &key, &["before".to_owned()]).await[0];
    let join = ChannelEvent::Join {
        user_id: "u2".into(),
    };
    let typing = ChannelEvent::Typing {
        user_id: "u2".into(),
    };
    broker.publish_ephemeral(&key, join.clone()).await.unwrap();
    broker
        .publish_ephemeral(&key, typing.clone())
        .await
        .unwrap();
    let after = publish_each(&broker, &key, &["after".to_owned()]).await[0];

    assert_eq!(next_message(&mut sub).await.offset, before);
    assert_eq!(next_event(&mut sub).await, SubscriptionEvent::Event(join));
    assert_eq!(next_event(&mut sub).await, SubscriptionEvent::Event(typing));
    assert_eq!(next_message(&mut sub).await.offset, after);

    let read = broker.read(&key, None, 50).await.unwrap();
    assert_eq!(
        pairs(&read.messages),
        vec![(before, "before".to_owned()), (after, "after".to_owned())],
        "ephemeral events must not be stored"
    );
    let read = broker.read(&key, Some(before), 50).await.unwrap();
    assert_eq!(pairs(&read.messages), vec![(after, "after".to_owned())]);
}

/// The resume path of a reconnecting client: read the backlog after its offset page by page,
/// then go live. Together they yield every message after the offset exactly once, in order.
async fn check_resume_reads_then_live_without_gap_or_duplicate(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("resume"), room("101"));
    let names = ids("m", 15);
    let mut offsets = publish_each(&broker, &key, &names[..10]).await;
    // The client had seen up to m4.
    let resume_from = offsets[4];

    let mut received = Vec::new();
    let mut since = resume_from;
    loop {
        let page = broker.read(&key, Some(since), 2).await.unwrap();
        assert!(page.recovered);
        received.extend(pairs(&page.messages));
        match page.messages.last() {
            Some(m) if page.more => since = m.offset,
            Some(m) => {
                since = m.offset;
                break;
            }
            None => break,
        }
    }
    // Subscribing after the backlog is drained is safe here because nothing is published in
    // between; a client racing live publishers subscribes first and skips offsets <= `since`,
    // which the filter below also does.
    let mut sub = broker.subscribe(&key).await.unwrap();
    offsets.extend(publish_each(&broker, &key, &names[10..]).await);
    while received.len() < names.len() - 5 {
        let m = next_message(&mut sub).await;
        if m.offset > since {
            received.push((m.offset, m.envelope.message_id.clone()));
        }
    }
    assert_eq!(received, expected(&offsets[5..], &names[5..]));
}

// ---------------------------------------------------------------------------------------------
// Checks: presence
// ---------------------------------------------------------------------------------------------

/// Presence counts users, not sessions: join/leave report the first and last session, users are
/// listed once and sorted, and unknown sessions change nothing.
async fn check_presence_tracks_users_across_sessions(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("presence"), room("101"));
    assert!(broker.presence(&key).await.unwrap().is_empty());

    assert!(
        broker.presence_join(&key, "mia", "s1").await.unwrap(),
        "first session"
    );
    assert!(
        !broker.presence_join(&key, "mia", "s2").await.unwrap(),
        "second session"
    );
    assert_eq!(broker.presence(&key).await.unwrap(), ["mia"]);

    assert!(broker.presence_join(&key, "zed", "s3").await.unwrap());
    assert!(broker.presence_join(&key, "amy", "s4").await.unwrap());
    assert_eq!(broker.presence(&key).await.unwrap(), ["amy", "mia", "zed"]);

    assert!(
        !broker.presence_leave(&key, "mia", "s1").await.unwrap(),
        "s2 remains"
    );
    assert_eq!(broker.presence(&key).await.unwrap(), ["amy", "mia", "zed"]);
    assert!(
        !broker.presence_leave(&key, "mia", "nope").await.unwrap(),
        "unknown session"
    );
    assert!(
        !broker.presence_leave(&key, "nobody", "s1").await.unwrap(),
        "unknown user"
    );
    assert_eq!(broker.presence(&key).await.unwrap(), ["amy", "mia", "zed"]);

    assert!(
        broker.presence_leave(&key, "mia", "s2").await.unwrap(),
        "last session"
    );
    assert_eq!(broker.presence(&key).await.unwrap(), ["amy", "zed"]);
    assert!(
        !broker.presence_leave(&key, "mia", "s2").await.unwrap(),
        "already gone"
    );

    // Presence is per channel.
    let other = ChannelKey::new(key.property.clone(), room("102"));
    assert!(broker.presence(&other).await.unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Checks: read markers
// ---------------------------------------------------------------------------------------------

/// Read markers give unread counts, per user, and never move back.
async fn check_read_markers_count_unread_and_never_move_back(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("markers"), room("101"));
    let o = publish_each(&broker, &key, &ids("m", 5)).await;

    assert_eq!(
        broker.unread(&key, "u1").await.unwrap(),
        5,
        "no marker: all retained"
    );
    assert_eq!(broker.mark_read(&key, "u1", o[2]).await.unwrap(), (o[2], 2));
    assert_eq!(broker.unread(&key, "u1").await.unwrap(), 2);

    // An older marker (a stale device) does not move it back.
    assert_eq!(broker.mark_read(&key, "u1", o[0]).await.unwrap(), (o[2], 2));
    assert_eq!(broker.unread(&key, "u1").await.unwrap(), 2);

    publish_each(&broker, &key, &ids("n", 2)).await;
    assert_eq!(broker.unread(&key, "u1").await.unwrap(), 4);
    // Other users have their own markers.
    assert_eq!(broker.unread(&key, "u2").await.unwrap(), 7);

    assert_eq!(broker.mark_read(&key, "u1", o[4]).await.unwrap(), (o[4], 2));

    // A marker beyond the newest message is saved as the newest, so later messages count.
    let newest = broker.read(&key, None, 0).await.unwrap().last;
    let far = Offset::new(newest.ms + 86_400_000, 0);
    assert_eq!(
        broker.mark_read(&key, "u3", far).await.unwrap(),
        (newest, 0)
    );
    publish_each(&broker, &key, &ids("p", 1)).await;
    assert_eq!(broker.unread(&key, "u3").await.unwrap(), 1);
}

/// A read marker of a channel nobody published to: nothing is unread, the marker is at most the
/// position a read hands out, and what is published afterwards counts as unread.
async fn check_a_read_marker_of_an_unused_channel_counts_what_comes_later(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("markers-unused"), room("101"));
    let position = broker.read(&key, None, 50).await.unwrap().last;
    let (marker, unread) = broker.mark_read(&key, "u1", position).await.unwrap();
    assert_eq!(unread, 0);
    assert!(marker <= position, "{marker} after the position {position}");
    assert_eq!(broker.unread(&key, "u1").await.unwrap(), 0);
    let o = publish_each(&broker, &key, &ids("m", 2)).await;
    assert_eq!(broker.unread(&key, "u1").await.unwrap(), 2);
    assert_eq!(broker.mark_read(&key, "u1", o[0]).await.unwrap(), (o[0], 1));
}

// ---------------------------------------------------------------------------------------------
// Checks: the length cap
// ---------------------------------------------------------------------------------------------

/// Each channel keeps its newest `max_messages_per_channel` messages. A `since` before the newest
/// message trimmed for length is not recovered (messages are missing); one at or after it is.
async fn check_the_length_cap_keeps_the_newest_and_recovery_follows_it(broker: Arc<dyn Broker>) {
    let cap = LENGTH_CAP.max_messages_per_channel;
    let key = ChannelKey::new(property("length-cap"), room("101"));
    let start = broker.read(&key, None, 1).await.unwrap().last;
    let names = ids("m", cap + 3);
    let o = publish_each(&broker, &key, &names).await;
    let kept = expected(&o[3..], &names[3..]);

    let read = broker.read(&key, None, 50).await.unwrap();
    assert_eq!(pairs(&read.messages), kept, "the newest {cap}");
    assert_eq!(read.last, o[cap + 2]);
    for since in [start, o[0], o[1]] {
        let read = broker.read(&key, Some(since), 50).await.unwrap();
        assert!(!read.recovered, "m2 was trimmed after {since}");
        assert_eq!(pairs(&read.messages), kept);
    }
    let read = broker.read(&key, Some(o[2]), 50).await.unwrap();
    assert!(
        read.recovered,
        "m2 is the newest trimmed: nothing after it is missing"
    );
    assert_eq!(pairs(&read.messages), kept);
    let read = broker.read(&key, Some(o[4]), 2).await.unwrap();
    assert!(read.recovered);
    assert_eq!(pairs(&read.messages), expected(&o[5..7], &names[5..7]));
    assert!(read.more);
    assert_eq!(
        broker.unread(&key, "u1").await.unwrap(),
        cap as u64,
        "only kept count"
    );
    assert_eq!(
        broker.mark_read(&key, "u1", o[1]).await.unwrap().1,
        cap as u64
    );
}

// ---------------------------------------------------------------------------------------------
// Checks: idempotent publishes
// ---------------------------------------------------------------------------------------------

/// Publishes one message with `id` and idempotency key `key` to `key`'s channel.
async fn publish_keyed(
    broker: &Arc<dyn Broker>,
    channel: &ChannelKey,
    id: &str,
    key: &str,
) -> Published {
    let publish = Publish::with_key(envelope(&channel.property, &channel.channel, id), key);
    let mut results = broker.publish_batch(vec![publish]).await;
    assert_eq!(results.len(), 1, "one result per publish");
    results.pop().unwrap().unwrap()
}

/// A repeat of an idempotency key within the window is answered with the original message id
/// and offset, `duplicate: true`, and stores and delivers nothing; the key is scoped per property
/// and channel, and another key is another message.
async fn check_a_repeated_idempotency_key_stores_and_delivers_nothing(broker: Arc<dyn Broker>) {
    let prop = property("idempotent");
    let key = ChannelKey::new(prop.clone(), room("101"));
    let mut live = broker.subscribe(&key).await.unwrap();

    let first = publish_keyed(&broker, &key, "m0", "u1:k1").await;
    assert!(!first.duplicate);
    assert_eq!(first.message_id, "m0");
    // The client retries (a new message id, as a gateway mints one per request).
    for retry in ["m0-retry", "m0-retry-2"] {
        let again = publish_keyed(&broker, &key, retry, "u1:k1").await;
        assert_eq!(
            again,
            Published {
                offset: first.offset,
                message_id: "m0".into(),
                duplicate: true,
            }
        );
    }
    let after = publish_each(&broker, &key, &["after".to_owned()]).await[0];

    let read = broker.read(&key, None, 50).await.unwrap();
    assert_eq!(
        pairs(&read.messages),
        vec![(first.offset, "m0".to_owned()), (after, "after".to_owned())],
        "the repeats stored nothing"
    );
    // Live: m0, then directly the next message; no repeat in between.
    assert_eq!(next_message(&mut live).await.offset, first.offset);
    let next = next_message(&mut live).await;
    assert_eq!(
        (next.offset, next.envelope.message_id.as_str()),
        (after, "after")
    );

    // Another key is another message; the same key elsewhere too.
    let other_key = publish_keyed(&broker, &key, "m1", "u1:k2").await;
    assert!(!other_key.duplicate);
    assert!(other_key.offset > after);
    let other_room = ChannelKey::new(prop.clone(), room("102"));
    let elsewhere = publish_keyed(&broker, &other_room, "m2", "u1:k1").await;
    assert!(!elsewhere.duplicate, "the key is scoped per channel");
    let other_prop = ChannelKey::new(property("idempotent-other"), room("101"));
    let other = publish_keyed(&broker, &other_prop, "m3", "u1:k1").await;
    assert!(!other.duplicate, "the key is scoped per property");
    assert_eq!(
        broker
            .read(&other_room, None, 50)
            .await
            .unwrap()
            .messages
            .len(),
        1
    );
}

/// Repeats inside one batch: the first publish of a key is stored, later ones in the same batch
/// get its result.
async fn check_repeats_within_one_batch_are_stored_once(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("idempotent-batch"), room("101"));
    let e = |id: &str| envelope(&key.property, &key.channel, id);
    let batch = vec![
        Publish::with_key(e("a"), "u1:a"),
        Publish::with_key(e("a-again"), "u1:a"),
        Publish::new(e("plain")),
        Publish::with_key(e("a-third"), "u1:a"),
        Publish::with_key(e("b"), "u1:b"),
    ];
    let results: Vec<Published> = broker
        .publish_batch(batch)
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let duplicates: Vec<bool> = results.iter().map(|r| r.duplicate).collect();
    assert_eq!(duplicates, [false, true, false, true, false]);
    for repeat in [&results[1], &results[3]] {
        assert_eq!(
            (repeat.offset, repeat.message_id.as_str()),
            (results[0].offset, "a")
        );
    }
    let read = broker.read(&key, None, 50).await.unwrap();
    assert_eq!(
        pairs(&read.messages),
        vec![
            (results[0].offset, "a".to_owned()),
            (results[2].offset, "plain".to_owned()),
            (results[4].offset, "b".to_owned()),
        ]
    );
}

/// Once the window has passed, the same key makes a new message. The check runs with a short
/// window and polls (each poll a repeat that must still be the original) up to a deadline.
async fn check_after_the_window_a_repeat_is_a_new_message(broker: Arc<dyn Broker>) {
    let window = SHORT_WINDOW.idempotency_window;
    let key = ChannelKey::new(property("idempotent-window"), room("101"));
    let started = tokio::time::Instant::now();
    let first = publish_keyed(&broker, &key, "m0", "u1:k").await;
    let deadline = started + window + Duration::from_secs(10);
    let mut polls = 0;
    let fresh = loop {
        polls += 1;
        let again = publish_keyed(&broker, &key, &format!("poll{polls}"), "u1:k").await;
        if !again.duplicate {
            break again;
        }
        assert_eq!(
            (again.offset, again.message_id.as_str()),
            (first.offset, "m0")
        );
        assert!(
            tokio::time::Instant::now() < deadline,
            "still a duplicate {:?} after the window",
            started.elapsed()
        );
        tokio::time::sleep(window / 5).await;
    };
    assert!(
        started.elapsed() >= window,
        "a new message after {:?}, inside the {window:?} window",
        started.elapsed()
    );
    assert!(fresh.offset > first.offset);
    assert_eq!(fresh.message_id, format!("poll{polls}"));
    let read = broker.read(&key, None, 50).await.unwrap();
    assert_eq!(
        pairs(&read.messages),
        vec![
            (first.offset, "m0".to_owned()),
            (fresh.offset, fresh.message_id.clone())
        ]
    );
}

/// An idempotency key longer than the backends accept is refused, and nothing is stored.
async fn check_an_oversized_idempotency_key_is_refused(broker: Arc<dyn Broker>) {
    let key = ChannelKey::new(property("idempotent-long"), room("101"));
    let long = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES + 1);
    for bad in [long, String::new()] {
        let publish = Publish::with_key(envelope(&key.property, &key.channel, "m0"), bad);
        let result = broker.publish_batch(vec![publish]).await.pop().unwrap();
        assert!(
            matches!(result, Err(BrokerError::Internal(_))),
            "{result:?}"
        );
    }
    let longest = "k".repeat(MAX_IDEMPOTENCY_KEY_BYTES);
    let ok = publish_keyed(&broker, &key, "m1", &longest).await;
    let read = broker.read(&key, None, 50).await.unwrap();
    assert_eq!(pairs(&read.messages), vec![(ok.offset, "m1".to_owned())]);
}

// ---------------------------------------------------------------------------------------------
// Wiring: one test per check per backend
// ---------------------------------------------------------------------------------------------

/// The settings a check needs of a backend; every backend's factory applies them.
#[derive(Clone, Copy, Debug)]
struct Tuning {
    /// `max_messages_per_channel`.
    max_messages_per_channel: usize,
    /// `idempotency_window`.
    idempotency_window: Duration,
}

/// The backends' defaults (which must agree, see `the_backends_share_their_defaults`).
const DEFAULTS: Tuning = Tuning {
    max_messages_per_channel: 10_000,
    idempotency_window: Duration::from_secs(600),
};

/// A cap small enough to pass.
const LENGTH_CAP: Tuning = Tuning {
    max_messages_per_channel: 5,
    ..DEFAULTS
};

/// A window short enough to wait out.
const SHORT_WINDOW: Tuning = Tuning {
    idempotency_window: Duration::from_millis(400),
    ..DEFAULTS
};

#[test]
fn the_backends_share_their_defaults() {
    let (memory, redis) = (MemoryConfig::default(), RedisConfig::default());
    assert_eq!(
        memory.max_messages_per_channel,
        DEFAULTS.max_messages_per_channel
    );
    assert_eq!(memory.idempotency_window, DEFAULTS.idempotency_window);
    assert_eq!(redis.idempotency_window, DEFAULTS.idempotency_window);
    assert_eq!(
        redis.max_messages_per_channel,
        DEFAULTS.max_messages_per_channel
    );
}

/// What a backend factory hands a check: the broker, and what must live until the check is done.
trait Fixture {
    fn into_parts(self) -> (Arc<dyn Broker>, Box<dyn std::any::Any>);
}

impl Fixture for Arc<dyn Broker> {
    fn into_parts(self) -> (Arc<dyn Broker>, Box<dyn std::any::Any>) {
        (self, Box::new(()))
    }
}

impl<Keep: 'static> Fixture for (Arc<dyn Broker>, Keep) {
    fn into_parts(self) -> (Arc<dyn Broker>, Box<dyn std::any::Any>) {
        (self.0, Box::new(self.1))
    }
}

/// `conformance!(backend, factory)` defines `mod backend` with one `#[tokio::test]` per check,
/// each on a fresh broker from `factory` (a closure taking the check's [`Tuning`] and returning a
/// future of a [`Fixture`]: the broker, or the broker and what must outlive it). A check listed
/// as `check = TUNING` runs with those settings, the others with [`DEFAULTS`].
macro_rules! conformance {
    ($backend:ident, $factory:expr) => {
        conformance!(@tests $backend, $factory, [
            check_offsets_strictly_increase_in_publish_order,
            check_publish_batch_results_are_in_batch_order,
            check_channels_and_properties_are_isolated,
            check_read_without_since_returns_newest_oldest_first,
            check_read_since_is_exclusive_limited_and_reports_more,
            check_paging_yields_every_message_once_in_order,
            check_resume_from_the_last_of_a_fresh_channel,
            check_since_in_the_future_is_not_recovered,
            check_since_zero_is_not_recovered_but_returns_retained,
            check_subscription_yields_published_messages_in_order,
            check_ephemeral_events_are_live_only,
            check_an_attached_sink_sees_events_in_order_until_detached,
            check_resume_reads_then_live_without_gap_or_duplicate,
            check_presence_tracks_users_across_sessions,
            check_read_markers_count_unread_and_never_move_back,
            check_a_read_marker_of_an_unused_channel_counts_what_comes_later,
            check_the_length_cap_keeps_the_newest_and_recovery_follows_it = LENGTH_CAP,
            check_a_repeated_idempotency_key_stores_and_delivers_nothing,
            check_repeats_within_one_batch_are_stored_once,
            check_after_the_window_a_repeat_is_a_new_message = SHORT_WINDOW,
            check_an_oversized_idempotency_key_is_refused,
        ]);
    };
    (@tests $backend:ident, $factory:expr, [$($check:ident $(= $tuning:expr)?),* $(,)?]) => {
        mod $backend {
            use super::*;
            $(
                #[tokio::test]
                async fn $check() {
                    let tuning = conformance!(@tuning $($tuning)?);
                    let (broker, _keep) = Fixture::into_parts(($factory)(tuning).await);
                    super::$check(broker).await;
                }
            )*
        }
    };
    (@tuning) => { DEFAULTS };
    (@tuning $tuning:expr) => { $tuning };
}

fn memory_config(tuning: Tuning) -> MemoryConfig {
    MemoryConfig {
        max_messages_per_channel: tuning.max_messages_per_channel,
        idempotency_window: tuning.idempotency_window,
        ..MemoryConfig::default()
    }
}

fn redis_config(url: String, tuning: Tuning) -> RedisConfig {
    RedisConfig {
        url,
        max_messages_per_channel: tuning.max_messages_per_channel,
        idempotency_window: tuning.idempotency_window,
        ..RedisConfig::default()
    }
}

conformance!(memory, |tuning| async move {
    Arc::new(MemoryBroker::new(memory_config(tuning))) as Arc<dyn Broker>
});

conformance!(redis, |tuning| async move {
    let server = RedisServer::start().await;
    let config = redis_config(server.url(), tuning);
    let broker = RedisBroker::connect(config).await.unwrap();
    (Arc::new(broker) as Arc<dyn Broker>, server)
});

// A real 3-master Redis Cluster, shared by this test binary; each check keeps to a key prefix of
// its own, as deployments sharing a cluster do.
conformance!(redis_cluster, |tuning| async move {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let cluster = bellhop_testkit::RedisCluster::shared().await;
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let config = RedisConfig {
        cluster: true,
        key_prefix: format!("conf{n}"),
        ..redis_config(cluster.url(), tuning)
    };
    let broker = RedisBroker::connect(config).await.unwrap();
    Arc::new(broker) as Arc<dyn Broker>
});

// One `redis-server` reached over TLS (`rediss://`, trusting only the test CA) with a password.
conformance!(redis_tls_password, |tuning| async move {
    let server = RedisServer::start_with(RedisOptions {
        tls: true,
        password: Some("s3cret-pass".into()),
        ..RedisOptions::default()
    })
    .await;
    let config = RedisConfig {
        tls_ca_path: Some(server.ca_path()),
        ..redis_config(server.tls_url(), tuning)
    };
    let broker = RedisBroker::connect(config).await.unwrap();
    (Arc::new(broker) as Arc<dyn Broker>, server)
});
