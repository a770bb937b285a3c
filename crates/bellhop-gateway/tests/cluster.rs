//! Several gateway nodes of one deployment, as behind a load balancer, on one real Redis server
//! and on a real Redis Cluster (sharded pub/sub): delivery across nodes, resuming on another
//! node, and presence across nodes.

#![allow(clippy::unwrap_used)]

mod support;

use serde_json::json;
use support::*;

redis_suite!(
    a_message_published_on_one_node_reaches_subscribers_on_the_others,
    a_client_resumes_on_another_node_with_nothing_lost_or_repeated,
    presence_and_typing_cross_nodes,
);

async fn a_message_published_on_one_node_reaches_subscribers_on_the_others(backend: Backend) {
    let nodes = nodes_on(backend, 3).await;
    let mut watchers = Vec::new();
    for node in &nodes[1..] {
        let mut c = node.connect(&staff("s1", &["housekeeping"])).await;
        c.subscribe("dept:housekeeping").await;
        watchers.push(c);
    }
    let (status, _, body) = http(nodes[0].admin, "GET", "/readyz", &[], b"").await;
    assert_eq!(status, 200);
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        body["broker"],
        json!({"breaker": "closed", "live": "healthy"}),
        "{body}"
    );
    let mut guest_client = nodes[0].connect(&guest("g1", &["101"])).await;
    let ack = guest_client
        .publish(
            "dept:housekeeping",
            "SERVICE_REQUEST",
            json!({"room": "101"}),
        )
        .await;
    for w in &mut watchers {
        let m = w.wait_type("message").await;
        assert_eq!(m["offset"], ack["offset"]);
        assert_eq!(m["message"]["sender"]["id"], "g1");
    }
}

async fn a_client_resumes_on_another_node_with_nothing_lost_or_repeated(backend: Backend) {
    let nodes = nodes_on(backend, 2).await;
    let mut publisher = nodes[1].connect(&manager("m1")).await;
    let mut client = nodes[0].connect(&staff("s1", &[])).await;
    client.subscribe("room:7").await;
    let first = publisher
        .publish("room:7", "CHAT_MESSAGE", json!({"n": 0}))
        .await;
    let seen = client.wait_type("message").await;
    assert_eq!(seen["offset"], first["offset"]);
    drop(client); // node 0 goes away for this client (say, a drain)
    let mut missed = Vec::new();
    for i in 1..=20 {
        missed.push(
            publisher
                .publish("room:7", "CHAT_MESSAGE", json!({"n": i}))
                .await["offset"]
                .clone(),
        );
    }
    let mut back = nodes[1].connect(&staff("s1", &[])).await;
    let sub = back
        .request(json!({"type": "subscribe", "channel": "room:7", "since": seen["offset"]}))
        .await;
    assert_eq!(sub["recovered"], true, "{sub}");
    let live = publisher
        .publish("room:7", "CHAT_MESSAGE", json!({"n": 21}))
        .await["offset"]
        .clone();
    missed.push(live);
    let mut got = Vec::new();
    while got.len() < missed.len() {
        got.push(back.wait_type("message").await["offset"].clone());
    }
    assert_eq!(got, missed);
}

async fn presence_and_typing_cross_nodes(backend: Backend) {
    let nodes = nodes_on(backend, 2).await;
    let mut a = nodes[0].connect(&staff("s1", &[])).await;
    a.subscribe("room:101").await;
    let mut b = nodes[1].connect(&guest("g1", &["101"])).await;
    b.subscribe("room:101").await;
    assert_eq!(a.wait_type("join").await["userId"], "g1");
    let p = a
        .request(json!({"type": "presence", "channel": "room:101"}))
        .await;
    assert_eq!(p["users"], json!(["g1", "s1"]));
    b.send(json!({"type": "typing", "channel": "room:101"}))
        .await;
    assert_eq!(a.wait_type("typing").await["userId"], "g1");
    drop(b);
    assert_eq!(a.wait_type("leave").await["userId"], "g1");
}
