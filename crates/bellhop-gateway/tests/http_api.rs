//! The HTTP API for hotel systems (publish, history, presence) and the admin port (health,
//! readiness, metrics), over real sockets against a real node: what integrations rely on, status
//! codes and JSON error bodies included.

#![allow(clippy::unwrap_used)]

mod support;
use support::*;

use bellhop_protocol::Role;
use serde_json::{json, Value};

const PUBLISH: &str = "/api/v1/publish";

/// Asserts an API error: the status and `{"error": {"code": <code>, "message": <non-empty>}}`.
#[track_caller]
fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    let (s, body) = got;
    assert_eq!(*s, status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an error carries a message: {body}"
    );
}

async fn publish_http(node: &TestNode, token: &str, body: Value) -> (u16, Value) {
    http_json(node.addr, "POST", PUBLISH, Some(token), Some(body)).await
}

/// Publishes over HTTP and returns the offset, asserting success.
async fn publish_ok(
    node: &TestNode,
    token: &str,
    channel: &str,
    event: &str,
    payload: Value,
) -> String {
    let (status, body) = publish_http(
        node,
        token,
        json!({"channel": channel, "event": event, "payload": payload}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    body["offset"].as_str().unwrap().to_string()
}

async fn history(node: &TestNode, token: &str, channel_and_query: &str) -> (u16, Value) {
    let path = format!("/api/v1/channels/{channel_and_query}");
    http_json(node.addr, "GET", &path, Some(token), None).await
}

/// The presence of `channel`, as `token` sees it.
async fn presence(node: &TestNode, token: &str, channel: &str) -> (u16, Value) {
    let path = format!("/api/v1/channels/{channel}/presence");
    http_json(node.addr, "GET", &path, Some(token), None).await
}

/// The string at `pointer` (a JSON pointer) of every message in a history reply, in order.
fn history_strs<'a>(body: &'a Value, pointer: &str) -> Vec<&'a str> {
    body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.pointer(pointer).and_then(Value::as_str).unwrap())
        .collect()
}

/// The `payload.n` of every message in a history reply, in order.
fn history_ns(body: &Value) -> Vec<i64> {
    body["messages"]
        .as_array()
        .unwrap_or_else(|| panic!("messages array: {body}"))
        .iter()
        .map(|m| m["message"]["payload"]["n"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_publish_is_acknowledged_and_delivered_to_websocket_subscribers() {
    let node = TestNode::start(Backend::Memory).await;
    let mut subscriber = node.connect(&staff("alice", &["housekeeping"])).await;
    subscriber.subscribe("room:101").await;

    let (status, body) = publish_http(
        &node,
        &service("pms"),
        json!({
            "channel": "room:101",
            "event": "GUEST_CHECKIN",
            "payload": {"guest": "Ms. Smith", "nights": 3},
            "correlationId": "res-42",
        }),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let message_id = body["messageId"].as_str().expect("messageId").to_string();
    let offset = body["offset"].as_str().expect("offset").to_string();
    assert!(!message_id.is_empty());
    assert!(
        offset
            .split_once('-')
            .is_some_and(|(ms, seq)| ms.parse::<u64>().is_ok() && seq.parse::<u64>().is_ok()),
        "offset is <ms>-<seq>: {offset}"
    );

    let frame = subscriber.wait_type("message").await;
    assert_eq!(frame["channel"], "room:101", "{frame}");
    assert_eq!(frame["offset"], offset.as_str(), "{frame}");
    let m = &frame["message"];
    assert_eq!(m["messageId"], message_id.as_str(), "{frame}");
    assert_eq!(m["event"], "GUEST_CHECKIN");
    assert_eq!(m["namespace"], "h1");
    assert_eq!(m["channel"], "room:101");
    assert_eq!(m["payload"], json!({"guest": "Ms. Smith", "nights": 3}));
    assert_eq!(m["sender"]["id"], "pms");
    assert_eq!(m["sender"]["role"], "service");
    assert_eq!(m["priority"], "high", "GUEST_CHECKIN defaults to high");
    assert_eq!(m["correlationId"], "res-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_and_admin_tokens_may_use_the_api() {
    let node = TestNode::start(Backend::Memory).await;
    let admin = token("root", Role::Admin, "h1", &[], &[]);
    for (who, t) in [("manager", manager("mgr")), ("admin", admin)] {
        let (status, body) = publish_http(
            &node,
            &t,
            json!({"channel": "broadcast", "event": "ANNOUNCEMENT", "payload": {"by": who}}),
        )
        .await;
        assert_eq!(status, 200, "{who}: {body}");
        assert!(body["messageId"].is_string(), "{who}: {body}");
        let (status, body) = history(&node, &t, "broadcast/history").await;
        assert_eq!(status, 200, "{who}: {body}");
        let (status, body) = presence(&node, &t, "broadcast").await;
        assert_eq!(status, 200, "{who}: {body}");
    }
    let (_, body) = history(&node, &manager("mgr"), "broadcast/history").await;
    let senders = history_strs(&body, "/message/sender/role");
    assert_eq!(senders, ["manager", "admin"], "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guest_and_staff_tokens_are_forbidden_and_bad_tokens_unauthorized() {
    let node = TestNode::start(Backend::Memory).await;
    let body = json!({"channel": "room:101", "event": "SERVICE_REQUEST", "payload": {}});
    for t in [guest("g1", &["101"]), staff("s1", &["housekeeping"])] {
        assert_error(
            &publish_http(&node, &t, body.clone()).await,
            403,
            "forbidden",
        );
        // Even channels they could read over WebSocket: the API is not for them.
        assert_error(
            &history(&node, &t, "room:101/history").await,
            403,
            "forbidden",
        );
        let presence = presence(&node, &t, "room:101").await;
        assert_error(&presence, 403, "forbidden");
    }

    let none = http_json(node.addr, "POST", PUBLISH, None, Some(body.clone())).await;
    assert_error(&none, 401, "unauthorized");
    let none = http_json(
        node.addr,
        "GET",
        "/api/v1/channels/room:101/history",
        None,
        None,
    )
    .await;
    assert_error(&none, 401, "unauthorized");

    for bad in [
        "garbage".to_string(),
        "a.b.c".to_string(),
        signed(&claims("pms", Role::Service, "h1", &[], &[], -3600)),
    ] {
        assert_error(
            &publish_http(&node, &bad, body.clone()).await,
            401,
            "unauthorized",
        );
    }

    // A token signed with another secret.
    let forged = bellhop_gateway::auth::mint(
        b"not-the-node-secret-0123456789abcdef",
        &bellhop_gateway::auth::Claims {
            sub: "pms".into(),
            role: Role::Service,
            prop: "h1".into(),
            rooms: vec![],
            depts: vec![],
            exp: 4_000_000_000,
            iat: None,
            nbf: None,
            iss: None,
            aud: None,
        },
    )
    .unwrap();
    assert_error(
        &publish_http(&node, &forged, body.clone()).await,
        401,
        "unauthorized",
    );

    // Nothing got published by any refused request.
    let (status, h) = history(&node, &service("pms"), "room:101/history").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["messages"], json!([]), "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_with_the_documented_codes() {
    let node = TestNode::start(Backend::Memory).await;
    let svc = service("pms");
    let auth = format!("Bearer {svc}");
    let headers = [
        ("content-type", "application/json"),
        ("authorization", auth.as_str()),
    ];

    // Invalid JSON.
    let (status, _, text) = http(node.addr, "POST", PUBLISH, &headers, b"{\"channel\": ").await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_error(&(status, body), 400, "bad_request");

    for body in [
        // Missing event.
        json!({"channel": "room:101", "payload": {}}),
        // Unknown channel kind.
        json!({"channel": "floor:3", "event": "SERVICE_REQUEST", "payload": {}}),
        // Invalid channel id.
        json!({"channel": "room:1 01", "event": "SERVICE_REQUEST", "payload": {}}),
        // Events are UPPER_SNAKE.
        json!({"channel": "room:101", "event": "service_request", "payload": {}}),
    ] {
        assert_error(&publish_http(&node, &svc, body).await, 400, "bad_request");
    }

    // Text up to 10,000 characters is fine; 10,001 is too large.
    let ok = publish_http(
        &node,
        &svc,
        json!({"channel": "room:101", "event": "CHAT_MESSAGE", "payload": {"text": "é".repeat(10_000)}}),
    )
    .await;
    assert_eq!(ok.0, 200, "{}", ok.1);
    for payload in [
        json!({"text": "x".repeat(10_001)}),
        // A bare string payload counts too.
        json!("x".repeat(10_001)),
    ] {
        let body = json!({"channel": "room:101", "event": "CHAT_MESSAGE", "payload": payload});
        assert_error(&publish_http(&node, &svc, body).await, 413, "too_large");
    }

    // A body over 64 KiB, even made of short strings.
    let parts: Vec<String> = (0..8_000).map(|i| format!("part-{i}")).collect();
    let big = json!({"channel": "room:101", "event": "CHAT_MESSAGE", "payload": {"parts": parts}});
    assert!(big.to_string().len() > 64 * 1024);
    assert_error(&publish_http(&node, &svc, big).await, 413, "too_large");

    // History query parameters.
    for path in [
        "room:101/history?limit=500",
        "room:101/history?limit=0",
        "room:101/history?limit=ten",
        "room:101/history?since=yesterday",
        "floor:3/history",
    ] {
        assert_error(&history(&node, &svc, path).await, 400, "bad_request");
    }

    // Only the one valid publish was stored.
    let (status, h) = history(&node, &svc, "room:101/history").await;
    assert_eq!(status, 200, "{h}");
    assert_eq!(h["messages"].as_array().unwrap().len(), 1, "{h}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_oldest_first_and_respects_limit_and_since() {
    let node = TestNode::start(Backend::Memory).await;
    let svc = service("pms");
    let mut offsets = Vec::new();
    for n in 1..=5 {
        offsets.push(
            publish_ok(
                &node,
                &svc,
                "room:101",
                "ROOM_STATUS_UPDATE",
                json!({"n": n}),
            )
            .await,
        );
    }
    // Another channel's messages stay out of it.
    publish_ok(
        &node,
        &svc,
        "room:102",
        "ROOM_STATUS_UPDATE",
        json!({"n": 99}),
    )
    .await;

    let (status, body) = history(&node, &svc, "room:101/history").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channel"], "room:101");
    assert_eq!(history_ns(&body), [1, 2, 3, 4, 5]);
    let got: Vec<&str> = body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["offset"].as_str().unwrap())
        .collect();
    assert_eq!(got, offsets, "history offsets are the publish offsets");
    for m in body["messages"].as_array().unwrap() {
        assert_eq!(m["message"]["channel"], "room:101");
        assert_eq!(m["message"]["sender"]["role"], "service");
    }

    // The channel may be percent-encoded.
    let (status, encoded) = history(&node, &svc, "room%3A101/history").await;
    assert_eq!(status, 200, "{encoded}");
    assert_eq!(encoded["channel"], "room:101");
    assert_eq!(history_ns(&encoded), [1, 2, 3, 4, 5]);

    // `since` is exclusive: what came after that offset, oldest first.
    let (status, body) = history(
        &node,
        &svc,
        &format!("room:101/history?since={}", offsets[1]),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(history_ns(&body), [3, 4, 5]);

    // `since` and `limit` together: the next page.
    let (_, body) = history(
        &node,
        &svc,
        &format!("room%3A101/history?since={}&limit=2", offsets[0]),
    )
    .await;
    assert_eq!(history_ns(&body), [2, 3]);

    // `limit` alone: the newest that many, oldest first (docs/PROTOCOL.md, `history`).
    let (status, body) = history(&node, &svc, "room:101/history?limit=2").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(history_ns(&body), [4, 5]);

    // After the newest: nothing.
    let (_, body) = history(
        &node,
        &svc,
        &format!("room:101/history?since={}", offsets[4]),
    )
    .await;
    assert_eq!(history_ns(&body), Vec::<i64>::new());

    // An empty channel has an empty history.
    let (status, body) = history(&node, &svc, "dept:kitchen/history").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"], json!([]));
}

/// The presence list at `path`, which must be `want`. Joins are in place when `subscribed`
/// arrives and leaves before a connection is released, so callers wait for those events first.
async fn assert_presence(node: &TestNode, token: &str, path: &str, want: Value) -> Value {
    let (status, body) = http_json(node.addr, "GET", path, Some(token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["users"], want, "{body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_lists_websocket_subscribers_until_they_disconnect() {
    let node = TestNode::start(Backend::Memory).await;
    let svc = service("pms");
    let path = "/api/v1/channels/room:101/presence";

    let (status, body) = http_json(node.addr, "GET", path, Some(&svc), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["channel"], "room:101");
    assert_eq!(body["users"], json!([]));

    let mut zoe = node.connect(&staff("zoe", &[])).await;
    zoe.subscribe("room:101").await;
    let mut adam = node.connect(&staff("adam", &[])).await;
    adam.subscribe("room:101").await;
    // Someone on another channel is not listed.
    let mut other = node.connect(&staff("mallory", &[])).await;
    other.subscribe("room:102").await;

    let body = assert_presence(&node, &svc, path, json!(["adam", "zoe"])).await;
    assert_eq!(body["channel"], "room:101");
    // Percent-encoded channel names the same channel.
    assert_presence(
        &node,
        &svc,
        "/api/v1/channels/room%3A101/presence",
        json!(["adam", "zoe"]),
    )
    .await;

    zoe.ws.close(None).await.unwrap();
    node.wait_connections_at_most(2).await;
    assert_presence(&node, &svc, path, json!(["adam"])).await;
    drop(adam);
    node.wait_connections_at_most(1).await;
    assert_presence(&node, &svc, path, json!([])).await;
    assert_presence(
        &node,
        &svc,
        "/api/v1/channels/room:102/presence",
        json!(["mallory"]),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_token_stays_inside_its_property() {
    let node = TestNode::start(Backend::Memory).await;
    let h1 = service("pms-h1");
    let h2 = token("pms-h2", Role::Service, "h2", &[], &[]);

    let h1_offset = publish_ok(
        &node,
        &h1,
        "room:101",
        "SERVICE_REQUEST",
        json!({"from": "h1"}),
    )
    .await;
    let mut h1_staff = node.connect(&staff("alice", &[])).await;
    h1_staff.subscribe("room:101").await;

    // h2 does not see h1's history or presence.
    let (status, body) = history(&node, &h2, "room:101/history").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"], json!([]), "{body}");
    let (_, body) = history(&node, &h2, "room:101/history?since=0-0").await;
    assert_eq!(body["messages"], json!([]), "{body}");
    assert_presence(
        &node,
        &h1,
        "/api/v1/channels/room:101/presence",
        json!(["alice"]),
    )
    .await;
    let (status, body) = presence(&node, &h2, "room:101").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["users"], json!([]), "{body}");

    // h2's publish lands in h2 only.
    let (status, body) = publish_http(
        &node,
        &h2,
        json!({"channel": "room:101", "event": "SERVICE_REQUEST", "payload": {"from": "h2"}}),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let h2_offset = body["offset"].as_str().unwrap().to_string();
    let marker = publish_ok(
        &node,
        &h1,
        "room:101",
        "SERVICE_REQUEST",
        json!({"from": "h1-after"}),
    )
    .await;
    let first = h1_staff.wait_type("message").await;
    assert_eq!(
        first["message"]["payload"]["from"], "h1-after",
        "the h1 subscriber's first message is h1's, not h2's: {first}"
    );
    assert_eq!(first["offset"], marker.as_str());

    let (_, body) = history(&node, &h2, "room:101/history").await;
    let msgs = body["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 1, "{body}");
    assert_eq!(msgs[0]["offset"], h2_offset.as_str());
    assert_eq!(msgs[0]["message"]["namespace"], "h2");
    assert_eq!(msgs[0]["message"]["payload"]["from"], "h2");

    let (_, body) = history(&node, &h1, "room:101/history").await;
    let from = history_strs(&body, "/message/payload/from");
    assert_eq!(from, ["h1", "h1-after"], "{body}");
    assert_eq!(body["messages"][0]["offset"], h1_offset.as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_endpoints_and_wrong_methods_get_json_errors() {
    let node = TestNode::start(Backend::Memory).await;
    let svc = service("pms");

    // 404 and 405 have no code of their own: `bad_request` (docs/PROTOCOL.md, HTTP API).
    for path in [
        "/api/v1/nothing",
        "/api/v2/publish",
        "/api/v1/channels/room:101/members",
        "/api/v1/channels/room:101",
    ] {
        let got = http_json(node.addr, "GET", path, Some(&svc), None).await;
        assert_error(&got, 404, "bad_request");
        assert!(
            got.1["error"]["message"]
                .as_str()
                .unwrap()
                .contains("no such endpoint"),
            "{path}: {}",
            got.1
        );
    }
    // The token is checked before the route.
    let got = http_json(node.addr, "GET", "/api/v1/nothing", None, None).await;
    assert_error(&got, 401, "unauthorized");
    // Outside /api/ and the WebSocket path, too.
    let (status, _, text) = http(node.addr, "GET", "/favicon.ico", &[], b"").await;
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_error(&(status, body), 404, "bad_request");

    let got = http_json(node.addr, "GET", PUBLISH, Some(&svc), None).await;
    assert_error(&got, 405, "bad_request");
    assert!(
        got.1["error"]["message"].as_str().unwrap().contains("POST"),
        "{}",
        got.1
    );
    let got = http_json(
        node.addr,
        "POST",
        "/api/v1/channels/room:101/history",
        Some(&svc),
        Some(json!({})),
    )
    .await;
    assert_error(&got, 405, "bad_request");
    assert!(
        got.1["error"]["message"].as_str().unwrap().contains("GET"),
        "{}",
        got.1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_port_reports_health_readiness_and_metrics() {
    let node = TestNode::start(Backend::Memory).await;

    let (status, headers, text) = http(node.admin, "GET", "/healthz", &[], b"").await;
    assert_eq!(status, 200, "{text}");
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("application/json")),
        "{headers:?}"
    );
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["status"], "ok", "{body}");

    let (status, _, text) = http(node.admin, "GET", "/readyz", &[], b"").await;
    assert_eq!(status, 200, "{text}");
    let body: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(body["ready"], true, "{body}");

    // Some traffic: a connection, a publish, a refused request.
    let svc = service("pms");
    let mut client = node.connect(&staff("alice", &[])).await;
    client.subscribe("room:101").await;
    publish_ok(&node, &svc, "room:101", "SERVICE_REQUEST", json!({})).await;
    client.wait_type("message").await;
    let refused = publish_http(
        &node,
        &guest("g1", &["101"]),
        json!({"channel": "room:101", "event": "SERVICE_REQUEST", "payload": {}}),
    )
    .await;
    assert_error(&refused, 403, "forbidden");

    let (status, headers, metrics) = http(node.admin, "GET", "/metrics", &[], b"").await;
    assert_eq!(status, 200);
    assert!(
        headers
            .iter()
            .any(|(k, v)| k == "content-type" && v.starts_with("text/plain")),
        "{headers:?}"
    );
    for name in [
        "bellhop_connections",
        "bellhop_messages_published_total",
        "bellhop_publish_duration_seconds",
        "bellhop_errors_total",
    ] {
        assert!(metrics.contains(name), "/metrics lacks {name}:\n{metrics}");
    }
    assert_eq!(
        metric_value(&metrics, "bellhop_connections"),
        1.0,
        "{metrics}"
    );
    assert!(metric_value(&metrics, "bellhop_messages_published_total") >= 1.0);
    assert!(metric_value(&metrics, "bellhop_publish_duration_seconds_count") >= 1.0);
    assert!(metric_value(&metrics, "bellhop_errors_total{code=\"forbidden\"}") >= 1.0);

    // Every 403 counts.
    let before = node
        .metric("bellhop_errors_total{code=\"forbidden\"}")
        .await;
    let refused = history(&node, &staff("s1", &[]), "room:101/history").await;
    assert_error(&refused, 403, "forbidden");
    let after = node
        .metric("bellhop_errors_total{code=\"forbidden\"}")
        .await;
    assert_eq!(after, before + 1.0);

    // And 401s under their own code.
    let before = node
        .metric("bellhop_errors_total{code=\"unauthorized\"}")
        .await;
    assert_error(
        &http_json(node.addr, "POST", PUBLISH, None, Some(json!({}))).await,
        401,
        "unauthorized",
    );
    let after = node
        .metric("bellhop_errors_total{code=\"unauthorized\"}")
        .await;
    assert_eq!(after, before + 1.0);

    let (status, _, _) = http(node.admin, "GET", "/nothing", &[], b"").await;
    assert_eq!(status, 404);
}

#[tokio::test]
async fn paths_and_queries_are_percent_decoded_and_a_plus_in_a_path_stays_a_plus() {
    let node = TestNode::start(Backend::Memory).await;
    let t = service("pms");
    let offset = publish_ok(&node, &t, "room:101", "NOTE", json!({"n": 1})).await;
    publish_ok(&node, &t, "room:101", "NOTE", json!({"n": 2})).await;
    // `room%3A101` is `room:101`; the query's escapes are decoded too (`%2D` is `-`).
    let escaped_since = offset.replace('-', "%2D");
    let (status, body) = history(
        &node,
        &t,
        &format!("room%3A101/history?since={escaped_since}"),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(history_ns(&body), [2]);
    // In a path, `+` is a plus sign (only form-encoded queries use it for a space): the
    // channel the node refuses is the one that was sent.
    let got = history(&node, &t, "room:a+b/history").await;
    assert_error(&got, 400, "bad_request");
    let message = got.1["error"]["message"].as_str().unwrap();
    assert!(message.contains("a+b"), "{message}");
}

/// A `POST /api/v1/publish` head announcing `length` body bytes, with a service token.
fn publish_head(length: usize) -> String {
    format!(
        "POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Authorization: Bearer {}\r\nContent-Length: {length}\r\n\r\n",
        service("pms")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_gets_408_and_others_are_served() {
    use tokio::io::AsyncWriteExt;
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.edge.body_timeout = std::time::Duration::from_millis(300);
    })
    .await;
    // A body dribbled one byte at a time, then nothing: the node gives up on it.
    let mut slow = tokio::net::TcpStream::connect(node.addr).await.unwrap();
    slow.write_all(publish_head(64).as_bytes()).await.unwrap();
    let started = tokio::time::Instant::now();
    for b in br#"{"chan"#.iter() {
        slow.write_all(&[*b]).await.unwrap();
    }
    // Meanwhile others are served.
    publish_ok(
        &node,
        &service("other"),
        "broadcast",
        "NOTE",
        json!({"n": 1}),
    )
    .await;
    let (status, headers) = read_head(&mut slow).await;
    let waited = started.elapsed();
    assert_eq!(status, 408, "{headers:?}");
    assert_eq!(header(&headers, "connection"), Some("close"));
    assert!(
        waited >= std::time::Duration::from_millis(280),
        "cut off by the body timeout, not at once: {waited:?}"
    );
    assert!(
        node.metric("bellhop_errors_total{code=\"bad_request\"}")
            .await
            >= 1.0,
        "counted"
    );
}

#[tokio::test]
async fn a_request_the_node_cannot_answer_in_time_gets_503() {
    let broker = FaultyBroker::new();
    let node = TestNode::start_on(broker.clone(), |c| {
        c.edge.body_timeout = std::time::Duration::from_millis(200);
        c.edge.request_timeout = std::time::Duration::from_millis(400);
    })
    .await;
    broker
        .presence_hangs
        .store(true, std::sync::atomic::Ordering::SeqCst);
    let started = tokio::time::Instant::now();
    let got = presence(&node, &service("pms"), "broadcast").await;
    assert_error(&got, 503, "unavailable");
    assert!(
        got.1["error"]["retryAfterMs"].as_u64().is_some(),
        "{}",
        got.1
    );
    assert!(started.elapsed() >= std::time::Duration::from_millis(380));
    broker
        .presence_hangs
        .store(false, std::sync::atomic::Ordering::SeqCst);
    let (status, body) = presence(&node, &service("pms"), "broadcast").await;
    assert_eq!(status, 200, "{body}");
}

const APP: &str = "https://app.hotel.example";

/// A CORS preflight for `GET` with an Authorization header, from `origin`.
async fn preflight(node: &TestNode, origin: &str) -> (u16, Vec<(String, String)>) {
    let (status, headers, _) = http(
        node.addr,
        "OPTIONS",
        "/api/v1/channels/broadcast/history",
        &[
            ("origin", origin),
            ("access-control-request-method", "GET"),
            ("access-control-request-headers", "authorization"),
        ],
        b"",
    )
    .await;
    (status, headers)
}

#[tokio::test]
async fn browser_pages_of_cors_allowed_origins_may_call_the_api() {
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.edge.cors_allowed_origins = vec![APP.into()];
    })
    .await;
    // The preflight needs no token.
    let (status, headers) = preflight(&node, APP).await;
    assert_eq!(status, 204, "{headers:?}");
    assert_eq!(header(&headers, "access-control-allow-origin"), Some(APP));
    let methods = header(&headers, "access-control-allow-methods").unwrap();
    assert!(
        methods.contains("GET") && methods.contains("POST"),
        "{methods}"
    );
    let allowed = header(&headers, "access-control-allow-headers").unwrap();
    assert!(allowed.contains("authorization"), "{allowed}");
    assert!(header(&headers, "access-control-max-age").is_some());
    assert!(header(&headers, "access-control-allow-credentials").is_none());
    // The request itself, and its errors, can be read by the page (Retry-After too).
    let auth = format!("Bearer {}", service("pms"));
    for (auth, want) in [(auth.as_str(), 200), ("Bearer nope", 401)] {
        let (status, headers, body) = http(
            node.addr,
            "GET",
            "/api/v1/channels/broadcast/history",
            &[("origin", APP), ("authorization", auth)],
            b"",
        )
        .await;
        assert_eq!(status, want, "{body}");
        assert_eq!(header(&headers, "access-control-allow-origin"), Some(APP));
        assert_eq!(header(&headers, "vary"), Some("origin"));
        assert_eq!(
            header(&headers, "access-control-expose-headers"),
            Some("retry-after")
        );
    }
}

#[tokio::test]
async fn other_origins_get_no_cors_and_cors_is_separate_from_allowed_origins() {
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.edge.cors_allowed_origins = vec![APP.into()];
        c.allowed_origins = vec!["https://guest.hotel.example".into()];
    })
    .await;
    // Another origin: its preflight is refused, its requests are answered without CORS
    // headers (the browser keeps the response from the page).
    let (status, headers) = preflight(&node, "https://evil.example").await;
    assert_eq!(status, 403, "{headers:?}");
    assert!(header(&headers, "access-control-allow-origin").is_none());
    let auth = format!("Bearer {}", service("pms"));
    let (status, headers, _) = http(
        node.addr,
        "GET",
        "/api/v1/channels/broadcast/history",
        &[("origin", "https://evil.example"), ("authorization", &auth)],
        b"",
    )
    .await;
    assert_eq!(status, 200);
    assert!(header(&headers, "access-control-allow-origin").is_none());
    // ALLOWED_ORIGINS guards WebSocket upgrades only, CORS_ALLOWED_ORIGINS the API only.
    let (status, _) = preflight(&node, "https://guest.hotel.example").await;
    assert_eq!(
        status, 403,
        "an ALLOWED_ORIGINS origin is not a CORS origin"
    );
    let upgrade = |origin: &str| {
        format!(
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
             Origin: {origin}\r\n\r\n"
        )
    };
    let (status, _) = raw_request(node.addr, upgrade(APP).as_bytes()).await;
    assert_eq!(status, 403, "a CORS origin may not open WebSockets");
    let (status, _) =
        raw_request(node.addr, upgrade("https://guest.hotel.example").as_bytes()).await;
    assert_eq!(status, 101);
}

#[tokio::test]
async fn without_cors_allowed_origins_no_origin_gets_cors() {
    let node = TestNode::start(Backend::Memory).await;
    let (status, headers) = preflight(&node, APP).await;
    assert_eq!(status, 403, "{headers:?}");
    assert!(header(&headers, "access-control-allow-origin").is_none());
}
