//! Issue 10, "safe to face guests": each test reproduces an attack or a slow-but-honest client
//! that hurt a node before, against real nodes and real sockets, on the embedded broker, one
//! Redis server and a Redis Cluster.

#![allow(clippy::unwrap_used)]

mod support;

use futures_util::SinkExt;
use serde_json::{json, Value};
use support::*;

backend_suite!(
    control_characters_cannot_wedge_a_staff_history,
    departments_outside_the_list_do_not_exist,
    typing_is_coalesced_per_user_and_channel,
    a_subscribe_toggle_storm_costs_the_audience_at_most_a_few_notices,
    guests_see_no_other_guests_on_broadcast,
    a_guest_emergency_goes_to_the_front_desk_urgent_and_rarely,
    a_retried_publish_with_its_idempotency_key_is_stored_once,
);

/// Issue 10 C.6: a client that retries after a timeout must not create a second message.
async fn a_retried_publish_with_its_idempotency_key_is_stored_once(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut listener = node.connect(&staff("s1", &["housekeeping"])).await;
    listener.subscribe("dept:housekeeping").await;
    let mut g = node.connect(&guest("g1", &["101"])).await;
    let frame = json!({"type": "publish", "channel": "dept:housekeeping", "event": "SERVICE_REQUEST",
        "payload": {"text": "towels"}, "idempotencyKey": "req-7"});
    let first = g.request(frame.clone()).await;
    assert_eq!(first["type"], "ack", "{first}");
    assert!(first.get("duplicate").is_none(), "{first}");
    let again = g.request(frame.clone()).await;
    assert_eq!(again["duplicate"], true, "{again}");
    assert_eq!(
        (&again["messageId"], &again["offset"]),
        (&first["messageId"], &first["offset"])
    );
    // The same key from another user is another message.
    let mut other = node.connect(&guest("g2", &["102"])).await;
    let theirs = other.request(frame.clone()).await;
    assert!(theirs.get("duplicate").is_none(), "{theirs}");
    // Over HTTP, with the header: its own key space (the service user), repeated once.
    let body = json!({"channel": "dept:housekeeping", "event": "SERVICE_REQUEST", "payload": {"text": "pms"}});
    let auth = format!("Bearer {}", service("pms"));
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
        ("idempotency-key", "pms-1"),
    ];
    let body = body.to_string();
    let mut acks = Vec::new();
    for _ in 0..2 {
        let (status, _, text) = http(
            node.addr,
            "POST",
            "/api/v1/publish",
            &headers,
            body.as_bytes(),
        )
        .await;
        assert_eq!(status, 200, "{text}");
        acks.push(serde_json::from_str::<Value>(&text).unwrap());
    }
    assert_eq!(acks[0]["messageId"], acks[1]["messageId"]);
    assert_eq!(acks[1]["duplicate"], true, "{}", acks[1]);
    // The listener got exactly three messages: the first, the other guest's, the PMS's.
    let mut got = Vec::new();
    while got.len() < 3 {
        let m = listener.wait_type("message").await;
        got.push(m["message"]["messageId"].as_str().unwrap().to_owned());
    }
    assert_eq!(got[0], first["messageId"].as_str().unwrap());
    let h = listener
        .request(json!({"type": "history", "channel": "dept:housekeeping"}))
        .await;
    assert_eq!(h["messages"].as_array().unwrap().len(), 3, "{h}");
    let bad = g
        .request(json!({"type": "publish", "channel": "dept:housekeeping", "event": "SERVICE_REQUEST", "idempotencyKey": "has space"}))
        .await;
    assert_eq!(bad["code"], "bad_request", "{bad}");
}

/// A payload of `strings` strings of 10,000 U+0001 each: 10 KB apiece as MessagePack, 60 KB
/// as JSON.
fn control_payload(strings: usize) -> Value {
    let s = "\u{1}".repeat(10_000);
    Value::Array(vec![Value::String(s); strings])
}

/// Before: a guest's 12 MessagePack publishes of six such strings each made the default
/// `history` of its room 4.3 MB of JSON, over the 4 MiB outbound budget; the reply was never
/// sent and the staff connection got nothing more, ever.
async fn control_characters_cannot_wedge_a_staff_history(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut guest = node.connect_msgpack(&guest("g1", &["101"])).await;
    let big = guest
        .request(json!({"type": "publish", "channel": "room:101", "event": "CHAT_MESSAGE", "payload": control_payload(6)}))
        .await;
    assert_eq!(big["type"], "error", "{big}");
    assert_eq!(big["code"], "too_large", "{big}");
    assert!(big["message"].as_str().unwrap().contains("JSON"), "{big}");
    // One string (60 KB as JSON) fits; 40 of them are 2.4 MB of history.
    for _ in 0..40 {
        let ack = guest
            .request(json!({"type": "publish", "channel": "room:101", "event": "CHAT_MESSAGE", "payload": control_payload(1)}))
            .await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let mut staff = node.connect(&staff("s1", &["housekeeping"])).await;
    let first = staff
        .request(json!({"type": "history", "channel": "room:101"}))
        .await;
    assert_eq!(first["type"], "history", "{first}");
    assert_eq!(first["more"], true, "a page cut by bytes says so");
    let mut got = first["messages"].as_array().unwrap().len();
    assert!(
        (1..40).contains(&got),
        "a page of at most HISTORY_MAX_BYTES, not all 40: {got}"
    );
    // The rest, by paging with `since` = the last offset.
    let mut since = first["messages"][got - 1]["offset"].clone();
    loop {
        let page = staff
            .request(json!({"type": "history", "channel": "room:101", "since": since}))
            .await;
        let messages = page["messages"].as_array().unwrap();
        got += messages.len();
        if page["more"] != true {
            break;
        }
        since = messages.last().unwrap()["offset"].clone();
    }
    assert_eq!(got, 40, "every message reached by paging");
    // The connection is as responsive as before.
    let pong = staff.request(json!({"type": "ping"})).await;
    assert_eq!(pong["type"], "pong");
}

async fn departments_outside_the_list_do_not_exist(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut g = node.connect(&guest("g1", &["101"])).await;
    let refused = g
        .request(json!({"type": "publish", "channel": "dept:x7f3", "event": "SERVICE_REQUEST", "payload": {"text": "towels"}}))
        .await;
    assert_eq!(refused["code"], "bad_request", "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("housekeeping"),
        "names the departments: {refused}"
    );
    let ok = g
        .request(json!({"type": "publish", "channel": "dept:housekeeping", "event": "SERVICE_REQUEST", "payload": {"text": "towels"}}))
        .await;
    assert_eq!(ok["type"], "ack", "{ok}");
    let mut m = node.connect(&manager("m1")).await;
    for frame in [
        json!({"type": "subscribe", "channel": "dept:nowhere"}),
        json!({"type": "history", "channel": "dept:nowhere"}),
        json!({"type": "presence", "channel": "dept:nowhere"}),
    ] {
        let reply = m.request(frame.clone()).await;
        assert_eq!(reply["code"], "bad_request", "{frame} -> {reply}");
    }
}

/// Before: every `typing` frame reached every listener, one for one (~855/s each from 20
/// connections of one guest).
async fn typing_is_coalesced_per_user_and_channel(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut s = node.connect(&staff("s1", &["housekeeping"])).await;
    s.subscribe("room:101").await;
    let mut g = node.connect(&guest("g1", &["101"])).await;
    g.subscribe("room:101").await;
    // 120 notices, in bursts that fit the request queue; each history reply (answered in
    // order, unlike pongs) says the burst before it was processed.
    for _ in 0..4 {
        for _ in 0..30 {
            g.send(json!({"type": "typing", "channel": "room:101"}))
                .await;
        }
        let h = g
            .request(json!({"type": "history", "channel": "room:101", "limit": 1}))
            .await;
        assert_eq!(h["type"], "history", "{h}");
    }
    // All but the first were coalesced away where they arrived.
    assert_eq!(
        node.metric("bellhop_queue_drops_total{reason=\"typing_coalesced\"}")
            .await,
        119.0
    );
    let first = s.wait_type("typing").await;
    assert_eq!(first["userId"], "g1");
    // A message after the burst: at most the one notice came before it.
    g.publish("room:101", "CHAT_MESSAGE", json!({"text": "done"}))
        .await;
    s.wait_type("message").await;
    let typing = s
        .take_pending()
        .into_iter()
        .filter(|f| f["type"] == "typing")
        .count();
    assert_eq!(typing, 0, "one notice for the whole burst");
}

/// Before: each subscribe/unsubscribe of `broadcast` sent a join or a leave to every member.
async fn a_subscribe_toggle_storm_costs_the_audience_at_most_a_few_notices(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut audience = node.connect(&staff("s1", &["housekeeping"])).await;
    audience.subscribe("broadcast").await;
    let mut toggler = node.connect(&staff("s2", &["housekeeping"])).await;
    for _ in 0..50 {
        toggler.subscribe("broadcast").await;
        let off = toggler
            .request(json!({"type": "unsubscribe", "channel": "broadcast"}))
            .await;
        assert_eq!(off["type"], "unsubscribed");
    }
    // It ended unsubscribed: the audience learns that, once the coalescing interval is over.
    let mut notices = Vec::new();
    loop {
        let f = audience
            .wait_for(|f| f["type"] == "join" || f["type"] == "leave")
            .await;
        assert_eq!(f["userId"], "s2");
        notices.push(f["type"].as_str().unwrap().to_owned());
        if f["type"] == "leave" {
            break;
        }
    }
    assert!(
        notices.len() <= 3,
        "100 transitions cost the audience {notices:?}"
    );
}

async fn guests_see_no_other_guests_on_broadcast(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut watcher = node.connect(&staff("s1", &["frontdesk"])).await;
    watcher.subscribe("broadcast").await;
    let mut g2 = node.connect(&guest("g2", &["202"])).await;
    g2.subscribe("broadcast").await;
    let listing = g2
        .request(json!({"type": "presence", "channel": "broadcast"}))
        .await;
    assert_eq!(listing["code"], "forbidden", "{listing}");
    let mut g1 = node.connect(&guest("g1", &["101"])).await;
    g1.subscribe("broadcast").await;
    // Staff see the guest arrive...
    let join = watcher
        .wait_for(|f| f["type"] == "join" && f["userId"] == "g1")
        .await;
    assert_eq!(join["channel"], "broadcast");
    // ...another guest does not: the next thing it gets is the announcement.
    let mut m = node.connect(&manager("m1")).await;
    m.publish("broadcast", "ANNOUNCEMENT", json!({"text": "pool open"}))
        .await;
    let next = g2.wait_for(|f| f["type"] != "pong").await;
    assert_eq!(next["type"], "message", "{next}");
    // Guests sharing a room see each other there.
    let mut roommate = node.connect(&guest("g3", &["101"])).await;
    roommate.subscribe("room:101").await;
    g1.subscribe("room:101").await;
    let users = g1
        .request(json!({"type": "presence", "channel": "room:101"}))
        .await;
    assert_eq!(users["users"], json!(["g1", "g3"]), "{users}");
}

/// Before: a guest could publish `EMERGENCY_ALERT` (urgent) to any department, as often as its
/// publish limit allowed, jumping every queue.
async fn a_guest_emergency_goes_to_the_front_desk_urgent_and_rarely(backend: Backend) {
    let node = TestNode::start(backend).await;
    let mut desk = node.connect(&staff("d1", &["frontdesk"])).await;
    desk.subscribe("dept:frontdesk").await;
    let mut g = node.connect(&guest("g1", &["101"])).await;
    let elsewhere = g
        .request(json!({"type": "publish", "channel": "dept:housekeeping", "event": "EMERGENCY_ALERT", "payload": {"text": "fire"}}))
        .await;
    assert_eq!(elsewhere["code"], "forbidden", "{elsewhere}");
    assert!(elsewhere["message"]
        .as_str()
        .unwrap()
        .contains("dept:frontdesk"));
    let raised = g
        .request(json!({"type": "publish", "channel": "room:101", "event": "SYSTEM_ALERT", "payload": {}, "priority": "urgent"}))
        .await;
    assert_eq!(raised["code"], "forbidden", "{raised}");
    for _ in 0..3 {
        g.publish(
            "dept:frontdesk",
            "EMERGENCY_ALERT",
            json!({"text": "smoke in 101"}),
        )
        .await;
        let alert = desk.wait_type("message").await;
        assert_eq!(alert["message"]["priority"], "urgent");
    }
    let fourth = g
        .request(json!({"type": "publish", "channel": "dept:frontdesk", "event": "EMERGENCY_ALERT", "payload": {"text": "again"}}))
        .await;
    assert_eq!(fourth["code"], "rate_limited", "{fourth}");
    assert!(fourth["retryAfterMs"].as_u64().unwrap() > 60_000);
}

/// Before: the frame-rate `rate_limited` error had no id, so a client could not tell which
/// request was dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refused_frame_echoes_its_id() {
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.rate_limits.frames_per_second = 5;
        c.rate_limits.strikes_before_close = 1_000;
    })
    .await;
    let mut c = node.connect(&staff("s1", &["housekeeping"])).await;
    for id in 1..=40u64 {
        c.send(json!({"type": "ping", "id": id})).await;
    }
    let mut refused = Vec::new();
    let mut answered = 0;
    while answered + refused.len() < 40 {
        let f = c.next().await;
        match f["type"].as_str() {
            Some("pong") => answered += 1,
            Some("error") => {
                assert_eq!(f["code"], "rate_limited", "{f}");
                refused.push(f["id"].as_u64().expect("the refused frame's id"));
            }
            _ => panic!("{f}"),
        }
    }
    assert!(
        !refused.is_empty() && answered >= 10,
        "{answered} {refused:?}"
    );
    let mut sorted = refused.clone();
    sorted.dedup();
    assert_eq!(sorted.len(), refused.len(), "each id once");
}

/// A guest's bytes per minute are bounded beside the count: what it can make the node keep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_users_publish_bytes_are_budgeted() {
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.hotel.publish_bytes_per_user_per_minute = 100_000;
    })
    .await;
    let mut g = node.connect(&guest("g1", &["101"])).await;
    let text = "x".repeat(9_000);
    let payload = json!({"a": text, "b": text, "c": text, "d": text, "e": text, "f": text});
    g.publish("room:101", "CHAT_MESSAGE", payload.clone()).await;
    let second = g
        .request(json!({"type": "publish", "channel": "room:101", "event": "CHAT_MESSAGE", "payload": payload}))
        .await;
    assert_eq!(second["code"], "rate_limited", "{second}");
    assert!(second["message"].as_str().unwrap().contains("bytes"));
    assert!(second["retryAfterMs"].as_u64().unwrap() > 1_000);
}

/// A subscribe whose presence fails after `subscribed` was sent still delivers, and a retry is
/// not "already subscribed" (before: the channel stayed half-registered).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_presence_failure_does_not_leave_a_subscription_half_made() {
    let broker = FaultyBroker::new();
    *broker.presence_error.lock() = Some(bellhop_dispatcher::BrokerError::Unavailable {
        reason: "presence down".into(),
        retry_after: std::time::Duration::from_secs(1),
    });
    let node = TestNode::start_on(broker.clone(), |_| {}).await;
    let mut s = node.connect(&staff("s1", &["housekeeping"])).await;
    let sub = s
        .request(json!({"type": "subscribe", "channel": "dept:housekeeping"}))
        .await;
    assert_eq!(sub["type"], "subscribed", "{sub}");
    let mut m = node.connect(&manager("m1")).await;
    m.publish("dept:housekeeping", "CHAT_MESSAGE", json!({"n": 1}))
        .await;
    assert_eq!(s.wait_type("message").await["message"]["payload"]["n"], 1);
    // A replay that fails after `subscribed` rolls the subscription back: retry works.
    *broker.presence_error.lock() = None;
    *broker.read_error.lock() = Some(bellhop_dispatcher::BrokerError::Unavailable {
        reason: "read down".into(),
        retry_after: std::time::Duration::from_secs(1),
    });
    let failed = s
        .request(json!({"type": "subscribe", "channel": "room:101", "since": "1-0"}))
        .await;
    assert_eq!(failed["code"], "unavailable", "{failed}");
    *broker.read_error.lock() = None;
    let retried = s
        .request(json!({"type": "subscribe", "channel": "room:101"}))
        .await;
    assert_eq!(retried["type"], "subscribed", "{retried}");
}

/// Before: a client's WebSocket pings were not counted by the frame limiter, so a ping flood
/// (each one making the node write a pong) was never refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_websocket_pings_is_closed_like_any_frame_flood() {
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.rate_limits.frames_per_second = 5;
        c.rate_limits.strikes_before_close = 3;
    })
    .await;
    let mut c = node.connect(&staff("s1", &["housekeeping"])).await;
    for _ in 0..200 {
        let ping = tokio_tungstenite::tungstenite::Message::Ping(Default::default());
        if c.ws.send(ping).await.is_err() {
            break;
        }
    }
    let (code, reason, _) = c.closed().await;
    assert_eq!(code, 1008, "{reason}");
    assert!(reason.contains("frame rate"), "{reason}");
}
