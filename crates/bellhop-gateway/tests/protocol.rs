//! Wire protocol v1 end to end: real nodes, real WebSocket clients, every frame type, the
//! policy over the wire, recovery, and the error codes. The whole suite runs once per broker
//! backend: the embedded broker, one Redis server, and a 3-master Redis Cluster.

#![allow(clippy::unwrap_used)]

mod support;

use bellhop_protocol::Role;
use serde_json::{json, Value};
use support::*;

backend_suite!(
    a_guest_service_request_reaches_housekeeping,
    an_urgent_message_never_overtakes_its_own_channel,
    resume_replays_missed_messages_then_goes_live_without_gap_or_duplicate,
    resume_during_a_publish_burst_loses_and_duplicates_nothing,
    unknown_or_expired_offsets_are_not_recovered,
    unsubscribe_stops_delivery_and_releases_the_channel,
    history_returns_the_newest_or_those_after_since,
    presence_joins_and_leaves_follow_a_users_first_and_last_connection,
    typing_reaches_the_others_but_not_the_typist,
    read_markers_give_unread_counts,
    ping_gets_pong_with_the_same_id,
    msgpack_clients_get_binary_frames_with_the_same_content,
    the_policy_is_enforced_over_the_wire,
    nobody_crosses_properties,
    every_device_of_a_user_receives_user_messages,
    bad_frames_get_clear_errors_and_the_connection_stays_usable,
);

fn offset(v: &Value) -> String {
    v["offset"].as_str().expect("offset").to_string()
}

/// The offsets of the messages of a `history` reply, in order.
fn offsets_of(history: &Value) -> Vec<String> {
    history["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(offset)
        .collect()
}

/// Publishes `{"n": 0}` to `{"n": count - 1}` one after the other; their offsets.
async fn publish_n(client: &mut Client, channel: &str, event: &str, count: u64) -> Vec<String> {
    let mut offsets = Vec::new();
    for n in 0..count {
        offsets.push(offset(
            &client.publish(channel, event, json!({"n": n})).await,
        ));
    }
    offsets
}

async fn a_guest_service_request_reaches_housekeeping(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut housekeeping = node.connect(&staff("s1", &["housekeeping"])).await;
    housekeeping.subscribe("dept:housekeeping").await;
    let mut guest = node.connect(&guest("g1", &["101"])).await;
    let ack = guest
        .request(json!({
            "type": "publish", "channel": "dept:housekeeping", "event": "SERVICE_REQUEST",
            "payload": {"room": "101", "item": "towels", "count": 2}, "correlationId": "req-1"
        }))
        .await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let got = housekeeping.wait_type("message").await;
    assert_eq!(got["channel"], "dept:housekeeping");
    assert_eq!(got["offset"], ack["offset"]);
    let m = &got["message"];
    assert_eq!(m["messageId"], ack["messageId"]);
    assert_eq!(m["event"], "SERVICE_REQUEST");
    assert_eq!(m["namespace"], "h1");
    assert_eq!(
        m["payload"],
        json!({"room": "101", "item": "towels", "count": 2})
    );
    assert_eq!(m["sender"], json!({"id": "g1", "role": "guest"}));
    assert_eq!(m["priority"], "normal");
    assert_eq!(m["correlationId"], "req-1");
    assert!(m["timestamp"].as_str().unwrap().ends_with('Z'));
}

async fn resume_replays_missed_messages_then_goes_live_without_gap_or_duplicate(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut publisher = node.connect(&manager("m1")).await;
    let offsets = publish_n(&mut publisher, "room:101", "CHAT_MESSAGE", 5).await;
    // A client that saw up to the second message comes back.
    let mut client = node.connect(&staff("s1", &[])).await;
    let sub = client
        .request(json!({"type": "subscribe", "channel": "room:101", "since": offsets[1]}))
        .await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    assert_eq!(sub["recovered"], true);
    assert_eq!(
        sub["offset"],
        offsets[4].as_str(),
        "subscribed carries the newest offset"
    );
    for expected in &offsets[2..] {
        let m = client.wait_type("message").await;
        assert_eq!(&offset(&m), expected);
    }
    let live = offset(
        &publisher
            .publish("room:101", "CHAT_MESSAGE", json!({"n": 5}))
            .await,
    );
    let m = client.wait_type("message").await;
    assert_eq!(
        offset(&m),
        live,
        "the next frame is the live message, nothing repeated"
    );
}

async fn resume_during_a_publish_burst_loses_and_duplicates_nothing(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut publisher = node.connect(&manager("m1")).await;
    let start = offset(
        &publisher
            .publish("room:7", "CHAT_MESSAGE", json!({"n": -1}))
            .await,
    );
    const N: usize = 300;
    // Publish N messages while the subscriber resumes from `start` in the middle of the burst.
    let burst = tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..N {
            acked.push(offset(
                &publisher
                    .publish("room:7", "CHAT_MESSAGE", json!({"n": i}))
                    .await,
            ));
        }
        acked
    });
    let mut client = node.connect(&staff("s1", &[])).await;
    let sub = client
        .request(json!({"type": "subscribe", "channel": "room:7", "since": start}))
        .await;
    assert_eq!(sub["recovered"], true, "{sub}");
    let acked = burst.await.unwrap();
    let mut received = Vec::new();
    while received.len() < N {
        let m = client.wait_type("message").await;
        received.push(offset(&m));
    }
    assert_eq!(
        received, acked,
        "every acknowledged message once, in offset order"
    );
    // And nothing extra follows: no further message arrives before the reply to a ping.
    let pong = client.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
    let extra: Vec<Value> = client
        .take_pending()
        .into_iter()
        .filter(|f| f["type"] == "message")
        .collect();
    assert!(extra.is_empty(), "duplicates: {extra:?}");
}

async fn an_urgent_message_never_overtakes_its_own_channel(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut m = node.connect(&manager("m1")).await;
    let start = offset(&m.publish("room:12", "CHAT_MESSAGE", json!({})).await);
    let mut acked = Vec::new();
    for i in 0..200 {
        acked.push(offset(
            &m.publish("room:12", "CHAT_MESSAGE", json!({"n": i})).await,
        ));
    }
    acked.push(offset(
        &m.publish("room:12", "EMERGENCY_ALERT", json!({"leak": "204"}))
            .await,
    ));
    acked.push(offset(
        &m.publish("room:12", "CHAT_MESSAGE", json!({"after": true}))
            .await,
    ));
    // The replay queues everything at once: the urgent message must still come in its place.
    let mut c = node.connect(&staff("s1", &[])).await;
    c.request(json!({"type": "subscribe", "channel": "room:12", "since": start}))
        .await;
    let mut got = Vec::new();
    while got.len() < acked.len() {
        got.push(offset(&c.wait_type("message").await));
    }
    assert_eq!(got, acked);
}

async fn unknown_or_expired_offsets_are_not_recovered(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut publisher = node.connect(&manager("m1")).await;
    let first = offset(&publisher.publish("room:5", "CHAT_MESSAGE", json!({})).await);
    let mut client = node.connect(&staff("s1", &[])).await;
    // An offset older than this broker's history: messages may be missing.
    let sub = client
        .request(json!({"type": "subscribe", "channel": "room:5", "since": "1-0"}))
        .await;
    assert_eq!(sub["recovered"], false, "{sub}");
    let m = client.wait_type("message").await;
    assert_eq!(offset(&m), first, "what is retained is still delivered");
    // An offset from the future is unknown too.
    let mut other = node.connect(&staff("s2", &[])).await;
    let sub = other
        .request(json!({"type": "subscribe", "channel": "room:5", "since": "99999999999999-0"}))
        .await;
    assert_eq!(sub["recovered"], false, "{sub}");
    // ... and must not hide the live messages that follow.
    let next = offset(&publisher.publish("room:5", "CHAT_MESSAGE", json!({})).await);
    assert_eq!(offset(&other.wait_type("message").await), next);
}

async fn unsubscribe_stops_delivery_and_releases_the_channel(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut client = node.connect(&staff("s1", &[])).await;
    client.subscribe("room:9").await;
    assert_eq!(node.metric("bellhop_channels").await, 1.0);
    let reply = client
        .request(json!({"type": "unsubscribe", "channel": "room:9"}))
        .await;
    assert_eq!(
        reply,
        json!({"type": "unsubscribed", "id": reply["id"], "channel": "room:9"})
    );
    // The node holds no subscription for the channel anymore, so nothing can be delivered.
    assert_eq!(node.metric("bellhop_channels").await, 0.0);
    assert_eq!(node.metric("bellhop_subscriptions").await, 0.0);
    let mut publisher = node.connect(&manager("m1")).await;
    publisher.publish("room:9", "CHAT_MESSAGE", json!({})).await;
    client.subscribe("user:s1").await;
    let direct = offset(
        &publisher
            .publish("user:s1", "CHAT_MESSAGE", json!({}))
            .await,
    );
    let m = client.wait_type("message").await;
    assert_eq!(
        (m["channel"].as_str(), offset(&m)),
        (Some("user:s1"), direct)
    );
    let again = client
        .request(json!({"type": "unsubscribe", "channel": "room:9"}))
        .await;
    assert_eq!(
        again["code"], "bad_request",
        "unsubscribing twice is an error: {again}"
    );
}

async fn history_returns_the_newest_or_those_after_since(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut m = node.connect(&manager("m1")).await;
    let offsets = publish_n(&mut m, "dept:maintenance", "MAINTENANCE_ALERT", 4).await;
    let h = m
        .request(json!({"type": "history", "channel": "dept:maintenance", "limit": 2}))
        .await;
    assert_eq!(h["type"], "history");
    let got = offsets_of(&h);
    assert_eq!(got, offsets[2..], "newest two, oldest first");
    assert_eq!(h["messages"][0]["message"]["payload"]["n"], 2);
    let h = m
        .request(json!({"type": "history", "channel": "dept:maintenance", "since": offsets[0]}))
        .await;
    let got = offsets_of(&h);
    assert_eq!(got, offsets[1..]);
    let bad = m
        .request(json!({"type": "history", "channel": "dept:maintenance", "limit": 101}))
        .await;
    assert_eq!(bad["code"], "bad_request", "{bad}");
    let empty = m
        .request(json!({"type": "history", "channel": "room:nobody"}))
        .await;
    assert_eq!(empty["messages"], json!([]));
}

async fn presence_joins_and_leaves_follow_a_users_first_and_last_connection(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut watcher = node.connect(&staff("s1", &[])).await;
    watcher.subscribe("room:101").await;
    let g = guest("g1", &["101"]);
    let mut phone = node.connect(&g).await;
    phone.subscribe("room:101").await;
    let join = watcher.wait_type("join").await;
    assert_eq!(
        join,
        json!({"type": "join", "channel": "room:101", "userId": "g1"})
    );
    let mut tablet = node.connect(&g).await;
    tablet.subscribe("room:101").await;
    let p = watcher
        .request(json!({"type": "presence", "channel": "room:101"}))
        .await;
    assert_eq!(
        p["users"],
        json!(["g1", "s1"]),
        "one entry per user, sorted"
    );
    drop(phone);
    // g1 is still present through the tablet: no leave yet.
    node.wait_connections_at_most(2).await;
    let p = watcher
        .request(json!({"type": "presence", "channel": "room:101"}))
        .await;
    assert_eq!(p["users"], json!(["g1", "s1"]));
    drop(tablet);
    let leave = watcher.wait_type("leave").await;
    assert_eq!(
        leave,
        json!({"type": "leave", "channel": "room:101", "userId": "g1"})
    );
    let joins_and_leaves = watcher
        .request(json!({"type": "presence", "channel": "room:101"}))
        .await;
    assert_eq!(joins_and_leaves["users"], json!(["s1"]));
    // Exactly one join and one leave were delivered for g1.
    let spurious = watcher.take_pending();
    assert!(
        spurious
            .iter()
            .all(|f| f["type"] != "join" && f["type"] != "leave"),
        "{spurious:?}"
    );
}

async fn typing_reaches_the_others_but_not_the_typist(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut s = node.connect(&staff("s1", &[])).await;
    s.subscribe("room:101").await;
    let mut g = node.connect(&guest("g1", &["101"])).await;
    g.subscribe("room:101").await;
    g.send(json!({"type": "typing", "channel": "room:101"}))
        .await;
    let t = s.wait_type("typing").await;
    assert_eq!(
        t,
        json!({"type": "typing", "channel": "room:101", "userId": "g1"})
    );
    s.send(json!({"type": "typing", "channel": "room:101"}))
        .await;
    // One channel task delivers in order: had g1's own notice been echoed, it would come first.
    let t = g.wait_type("typing").await;
    assert_eq!(t["userId"], "s1");
    // A guest may not type where it may not publish.
    let denied = g
        .request(json!({"type": "typing", "channel": "broadcast"}))
        .await;
    assert_eq!(denied["code"], "forbidden");
}

async fn read_markers_give_unread_counts(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut m = node.connect(&manager("m1")).await;
    let mut offsets = Vec::new();
    for _ in 0..3 {
        offsets.push(offset(
            &m.publish("dept:frontdesk", "GUEST_CHECKIN", json!({}))
                .await,
        ));
    }
    let t = staff("s1", &["frontdesk"]);
    let mut s = node.connect(&t).await;
    let sub = s.subscribe("dept:frontdesk").await;
    assert_eq!(sub["unread"], 3);
    let ack = s
        .request(json!({"type": "read", "channel": "dept:frontdesk", "offset": offsets[0]}))
        .await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["offset"], offsets[0].as_str());
    assert_eq!(ack["unread"], 2);
    // A marker never moves back.
    let ack = s
        .request(json!({"type": "read", "channel": "dept:frontdesk", "offset": "1-0"}))
        .await;
    assert_eq!(
        (ack["offset"].as_str(), &ack["unread"]),
        (Some(offsets[0].as_str()), &json!(2))
    );
    // Another device of the same user sees the same count.
    let mut other = node.connect(&t).await;
    assert_eq!(other.subscribe("dept:frontdesk").await["unread"], 2);
    // A marker beyond the newest message is clamped to it, so later messages still count.
    let future = json!({"type": "read", "channel": "dept:frontdesk", "offset": "99999999999999-0"});
    let ack = s.request(future).await;
    assert_eq!(
        (ack["offset"].as_str(), &ack["unread"]),
        (Some(offsets[2].as_str()), &json!(0))
    );
    m.publish("dept:frontdesk", "GUEST_CHECKIN", json!({}))
        .await;
    let mut third = node.connect(&t).await;
    assert_eq!(third.subscribe("dept:frontdesk").await["unread"], 1);
}

async fn ping_gets_pong_with_the_same_id(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut c = node.connect(&guest("g1", &["101"])).await;
    c.send(json!({"type": "ping", "id": 42})).await;
    assert_eq!(c.next().await, json!({"type": "pong", "id": 42}));
    c.send(json!({"type": "ping"})).await;
    assert_eq!(c.next().await, json!({"type": "pong"}));
}

async fn msgpack_clients_get_binary_frames_with_the_same_content(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut binary = node.connect_msgpack(&staff("s1", &["housekeeping"])).await;
    assert_eq!(
        binary.subscribe("dept:housekeeping").await["recovered"],
        true
    );
    let mut text = node.connect(&staff("s2", &["housekeeping"])).await;
    text.subscribe("dept:housekeeping").await;
    let mut g = node.connect(&guest("g1", &["101"])).await;
    let ack = g
        .publish(
            "dept:housekeeping",
            "SERVICE_REQUEST",
            json!({"room": "101", "note": "ünïcødé"}),
        )
        .await;
    let a = binary.wait_type("message").await;
    let b = text.wait_type("message").await;
    assert_eq!(a, b, "both codecs carry the same frame");
    assert_eq!(a["offset"], ack["offset"]);
    let ack = binary
        .publish(
            "dept:housekeeping",
            "SERVICE_REQUEST_UPDATED",
            json!({"status": "done"}),
        )
        .await;
    let m = text.wait_type("message").await;
    assert_eq!(m["offset"], ack["offset"]);
    assert_eq!(m["message"]["sender"]["id"], "s1");
}

async fn the_policy_is_enforced_over_the_wire(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut g = node.connect(&guest("g1", &["101"])).await;
    let mut s = node.connect(&staff("s1", &["housekeeping"])).await;
    let mut m = node.connect(&manager("m1")).await;
    let forbidden = [
        json!({"type": "subscribe", "channel": "dept:housekeeping"}),
        json!({"type": "subscribe", "channel": "room:102"}),
        json!({"type": "subscribe", "channel": "user:s1"}),
        json!({"type": "publish", "channel": "broadcast", "event": "ANNOUNCEMENT"}),
        json!({"type": "publish", "channel": "user:s1", "event": "CHAT_MESSAGE"}),
        json!({"type": "history", "channel": "room:102"}),
        json!({"type": "presence", "channel": "dept:housekeeping"}),
        json!({"type": "read", "channel": "room:102", "offset": "1-0"}),
        json!({"type": "publish", "channel": "room:101", "event": "CHAT_MESSAGE", "priority": "high"}),
    ];
    for frame in forbidden {
        let reply = g.request(frame.clone()).await;
        assert_eq!(reply["type"], "error", "{frame} -> {reply}");
        assert_eq!(reply["code"], "forbidden", "{frame} -> {reply}");
    }
    for frame in [
        json!({"type": "subscribe", "channel": "dept:maintenance"}),
        json!({"type": "publish", "channel": "broadcast", "event": "ANNOUNCEMENT"}),
        json!({"type": "publish", "channel": "room:1", "event": "CHAT_MESSAGE", "priority": "urgent"}),
    ] {
        let reply = s.request(frame.clone()).await;
        assert_eq!(reply["code"], "forbidden", "{frame} -> {reply}");
    }
    // What is allowed works: a guest may lower a priority, staff may raise to high, a manager
    // may broadcast an urgent drill that the guest receives.
    g.subscribe("broadcast").await;
    let low = g.request(json!({"type": "publish", "channel": "room:101", "event": "CHAT_MESSAGE", "priority": "low"})).await;
    assert_eq!(low["type"], "ack", "{low}");
    let high = s.request(json!({"type": "publish", "channel": "room:1", "event": "CHAT_MESSAGE", "priority": "high"})).await;
    assert_eq!(high["type"], "ack", "{high}");
    let drill = m
        .request(json!({"type": "publish", "channel": "broadcast", "event": "EMERGENCY_ALERT", "payload": {"drill": true}}))
        .await;
    assert_eq!(drill["type"], "ack");
    let got = g.wait_type("message").await;
    assert_eq!(got["message"]["priority"], "urgent");
    assert_eq!(got["message"]["event"], "EMERGENCY_ALERT");
}

async fn nobody_crosses_properties(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut h1 = node.connect(&staff("s1", &[])).await;
    h1.subscribe("room:101").await;
    let mut h2 = node
        .connect(&token("s9", Role::Manager, "h2", &[], &[]))
        .await;
    h2.subscribe("room:101").await;
    let other = h2
        .publish("room:101", "CHAT_MESSAGE", json!({"from": "h2"}))
        .await;
    let mut m = node.connect(&manager("m1")).await;
    let own = m
        .publish("room:101", "CHAT_MESSAGE", json!({"from": "h1"}))
        .await;
    let got = h1.wait_type("message").await;
    assert_eq!(got["offset"], own["offset"], "h1 sees only h1's room:101");
    assert_eq!(got["message"]["namespace"], "h1");
    let got = h2.wait_type("message").await;
    assert_eq!(got["offset"], other["offset"]);
    let history = h2
        .request(json!({"type": "history", "channel": "room:101"}))
        .await;
    assert_eq!(history["messages"].as_array().unwrap().len(), 1);
    assert_eq!(history["messages"][0]["message"]["namespace"], "h2");
}

async fn every_device_of_a_user_receives_user_messages(backend: Backend) {
    let node = TestNode::start(backend).await;
    let t = staff("s1", &[]);
    let mut phone = node.connect(&t).await;
    let mut pager = node.connect(&t).await;
    phone.subscribe("user:s1").await;
    pager.subscribe("user:s1").await;
    let mut m = node.connect(&manager("m1")).await;
    let ack = m
        .publish("user:s1", "STAFF_ASSIGNED", json!({"task": "leak in 204"}))
        .await;
    assert_eq!(phone.wait_type("message").await["offset"], ack["offset"]);
    assert_eq!(pager.wait_type("message").await["offset"], ack["offset"]);
}

async fn bad_frames_get_clear_errors_and_the_connection_stays_usable(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut c = node.connect(&staff("s1", &["housekeeping"])).await;
    c.send_raw(tokio_tungstenite::tungstenite::Message::text("{not json"))
        .await;
    let e = c.next().await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str()),
        (Some("error"), Some("bad_request")),
        "{e}"
    );
    assert!(e.get("id").is_none());
    let cases = [
        (json!({"type": "shout"}), "bad_request"),
        (json!({"type": "subscribe"}), "bad_request"),
        (
            json!({"type": "subscribe", "channel": "lobby:1"}),
            "bad_request",
        ),
        (
            json!({"type": "subscribe", "channel": "room:a b"}),
            "bad_request",
        ),
        (
            json!({"type": "subscribe", "channel": "room:1", "since": "yesterday"}),
            "bad_request",
        ),
        (
            json!({"type": "publish", "channel": "room:1", "event": "chat"}),
            "bad_request",
        ),
        (
            json!({"type": "publish", "channel": "room:1", "event": "CHAT", "priority": "asap"}),
            "bad_request",
        ),
        (
            json!({"type": "publish", "channel": "room:1", "event": "CHAT", "correlationId": ""}),
            "bad_request",
        ),
        (
            json!({"type": "publish", "channel": "room:1", "event": "CHAT", "payload": {"text": "x".repeat(10_001)}}),
            "too_large",
        ),
        (
            json!({"type": "history", "channel": "room:1", "limit": 0}),
            "bad_request",
        ),
        (
            json!({"type": "unsubscribe", "channel": "room:1"}),
            "bad_request",
        ),
    ];
    for (frame, code) in cases {
        let reply = c.request(frame.clone()).await;
        assert_eq!(reply["type"], "error", "{frame} -> {reply}");
        assert_eq!(reply["code"], code, "{frame} -> {reply}");
        assert!(reply["message"].as_str().is_some_and(|m| !m.is_empty()));
    }
    c.subscribe("room:1").await;
    let twice = c
        .request(json!({"type": "subscribe", "channel": "room:1"}))
        .await;
    assert_eq!(twice["code"], "bad_request");
    // Still usable after all of that.
    c.publish(
        "room:1",
        "CHAT_MESSAGE",
        json!({"text": "x".repeat(10_000)}),
    )
    .await;
    assert_eq!(c.wait_type("message").await["channel"], "room:1");
    assert!(
        node.metric("bellhop_errors_total{code=\"bad_request\"}")
            .await
            >= 12.0
    );
}
