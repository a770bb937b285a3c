//! The service request workflow end to end on both stores: escalation timing on the embedded
//! broker with tokio's clock paused, and on a real Redis two workflows ("nodes") sharing one
//! server with 1,000 requests opened at once, half answered before their deadline.

#![allow(clippy::unwrap_used, clippy::print_stdout)]

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bellhop_dispatcher::requests::{
    Actor, EscalationConfig, MemoryRequestStore, RedisRequestStore, Requests, RequestsClock,
    RequestsConfig, Status, ESCALATION,
};
use bellhop_dispatcher::{
    Broker, ChannelEvent, ChannelKey, Dispatcher, DispatcherConfig, MemoryBroker, MemoryConfig,
    RedisBroker, RedisConfig, Subscription, SubscriptionEvent,
};
use bellhop_protocol::{Channel, Envelope, Priority, Role};
use bellhop_testkit::RedisServer;
use serde_json::json;
use tokio::time::Instant;

fn departments() -> Vec<String> {
    ["frontdesk", "maintenance", "housekeeping", "management"]
        .map(String::from)
        .to_vec()
}

fn guest() -> Actor {
    Actor {
        id: "g1".into(),
        role: Role::Guest,
        depts: Vec::new(),
        rooms: vec!["101".into()],
    }
}

fn staff() -> Actor {
    Actor {
        id: "s1".into(),
        role: Role::Staff,
        depts: vec!["maintenance".into()],
        rooms: Vec::new(),
    }
}

fn envelope(channel: Channel, event: &str, payload: serde_json::Value, p: Priority) -> Envelope {
    Envelope {
        message_id: uuid::Uuid::new_v4().to_string(),
        event: event.into(),
        payload,
        timestamp: "2026-11-23T09:30:00.000Z".into(),
        sender: bellhop_testkit::envelope::sender("g1", Role::Guest),
        priority: p,
        ..bellhop_testkit::envelope::chat("h1", channel, "")
    }
}

fn key(channel: &str) -> ChannelKey {
    ChannelKey::new("h1", channel.parse().unwrap())
}

/// The next `ESCALATION` on a subscription: (request id, level).
async fn next_escalation(sub: &mut bellhop_dispatcher::Subscription) -> (String, u64) {
    loop {
        match sub.recv().await {
            SubscriptionEvent::Event(ChannelEvent::Message(m))
                if m.envelope.event == ESCALATION =>
            {
                let p = &m.envelope.payload;
                assert_eq!(m.envelope.priority, Priority::Urgent);
                assert_eq!(p["department"], "maintenance");
                assert_eq!(p["request"]["event"], "SERVICE_REQUEST");
                return (
                    p["requestId"].as_str().unwrap().to_owned(),
                    p["level"].as_u64().unwrap(),
                );
            }
            SubscriptionEvent::Closed => panic!("subscription closed"),
            _ => {}
        }
    }
}

#[tokio::test(start_paused = true)]
async fn an_unanswered_urgent_request_escalates_on_time_to_the_department_then_management() {
    let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
    let dispatcher = Arc::new(Dispatcher::new(broker.clone(), DispatcherConfig::default()));
    let store = Arc::new(MemoryRequestStore::new(Duration::from_secs(24 * 3600)));
    let requests = Requests::start(dispatcher, store, RequestsConfig::new(departments())).unwrap();
    let mut dept = broker.subscribe(&key("dept:maintenance")).await.unwrap();
    let mut management = broker.subscribe(&key("dept:management")).await.unwrap();
    let mut room = broker.subscribe(&key("room:101")).await.unwrap();

    // A guest's "the sink is leaking" to its room is routed to maintenance, and seen in the room.
    let opened = Instant::now();
    let leak = envelope(
        Channel::Room("101".into()),
        "SERVICE_REQUEST",
        json!({"text": "the sink is leaking"}),
        Priority::High,
    );
    let published = requests.open(&guest(), leak, None).await.unwrap();
    let id = published.message_id.clone();
    let stored = requests.get("h1", &id).await.unwrap().unwrap();
    assert_eq!(stored.department, "maintenance");
    assert_eq!(stored.rule.as_deref(), Some("maintenance"));
    assert_eq!((stored.status, stored.level), (Status::Open, 1));
    let SubscriptionEvent::Event(ChannelEvent::Message(m)) = dept.recv().await else {
        panic!("the request reaches maintenance")
    };
    assert_eq!(m.envelope.message_id, id);
    assert_eq!(m.envelope.payload["routing"]["rule"], "maintenance");
    let SubscriptionEvent::Event(ChannelEvent::Message(m)) = room.recv().await else {
        panic!("and the guest's room")
    };
    assert_eq!(m.envelope.message_id, id);

    // A second request, answered after its first escalation.
    let answered = requests
        .open(
            &guest(),
            envelope(
                Channel::Room("101".into()),
                "SERVICE_REQUEST",
                json!({"text": "a light is broken"}),
                Priority::High,
            ),
            None,
        )
        .await
        .unwrap()
        .message_id;
    // And one below the minimum priority, which never escalates.
    requests
        .open(
            &guest(),
            envelope(
                Channel::Room("101".into()),
                "SERVICE_REQUEST",
                json!({"text": "the lamp flickers"}),
                Priority::Normal,
            ),
            None,
        )
        .await
        .unwrap();

    let tick = Duration::from_secs(1);
    let mut seen = Vec::new();
    for level in 2..=5u64 {
        let due = Duration::from_secs(300 * (level - 1));
        if level == 3 {
            // After level 2: staff acknowledge the second request.
            let ack = envelope(
                Channel::Dept("maintenance".into()),
                "SERVICE_REQUEST_UPDATED",
                json!({"requestId": answered, "status": "acknowledged"}),
                Priority::Normal,
            );
            requests.update(&staff(), ack, None).await.unwrap();
        }
        let mut at_level = Vec::new();
        let want = if level == 2 { 2 } else { 1 };
        while at_level.len() < want {
            let (rid, l) = next_escalation(&mut dept).await;
            assert_eq!(l, level, "levels in order");
            let elapsed = opened.elapsed();
            assert!(
                elapsed >= due && elapsed <= due + tick * 2,
                "level {level} at {elapsed:?}, due {due:?}"
            );
            at_level.push(rid);
        }
        if level >= 4 {
            let (rid, l) = next_escalation(&mut management).await;
            assert_eq!(
                (rid.as_str(), l),
                (id.as_str(), level),
                "management from level 4"
            );
        }
        seen.push((level, at_level));
    }
    assert_eq!(seen[0].1.len(), 2);
    assert!(seen[1..].iter().all(|(_, ids)| *ids == vec![id.clone()]));
    // Level 5 is the last: nothing more, however long nobody answers.
    let quiet = tokio::time::timeout(Duration::from_secs(3000), next_escalation(&mut dept)).await;
    assert!(quiet.is_err(), "no escalation past level 5: {quiet:?}");
    let r = requests.get("h1", &id).await.unwrap().unwrap();
    assert_eq!(r.level, 5);
    let a = requests.get("h1", &answered).await.unwrap().unwrap();
    assert_eq!((a.level, a.status), (2, Status::Acknowledged));
}

#[tokio::test(start_paused = true)]
async fn request_events_are_checked_and_mirrored_to_the_department_and_the_room() {
    let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
    let dispatcher = Arc::new(Dispatcher::new(broker.clone(), DispatcherConfig::default()));
    let store = Arc::new(MemoryRequestStore::new(Duration::from_secs(3600)));
    let requests = Requests::start(dispatcher, store, RequestsConfig::new(departments())).unwrap();
    let room = Channel::Room("101".into());
    let id = requests
        .open(
            &guest(),
            envelope(
                room.clone(),
                "SERVICE_REQUEST",
                json!("more towels"),
                Priority::Normal,
            ),
            None,
        )
        .await
        .unwrap()
        .message_id;
    let hk = Channel::Dept("housekeeping".into());
    let update = |payload: serde_json::Value, channel: &Channel| {
        envelope(
            channel.clone(),
            "SERVICE_REQUEST_UPDATED",
            payload,
            Priority::Normal,
        )
    };
    // Staff of another department, an unknown id, a bad status, a wrong channel.
    let e = requests
        .update(
            &staff(),
            update(json!({"requestId": id, "status": "resolved"}), &hk),
            None,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("dept:housekeeping"), "{e}");
    let e = requests
        .update(
            &staff(),
            update(json!({"requestId": "nope", "status": "resolved"}), &hk),
            None,
        )
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "unknown request \"nope\"");
    let e = requests
        .update(
            &staff(),
            update(json!({"requestId": id, "status": "done"}), &hk),
            None,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("payload.status"), "{e}");
    let e = requests
        .update(
            &staff(),
            update(
                json!({"requestId": id, "status": "resolved"}),
                &Channel::Dept("maintenance".into()),
            ),
            None,
        )
        .await
        .unwrap_err();
    assert!(
        e.to_string()
            .contains("goes to its channel dept:housekeeping or room:101"),
        "{e}"
    );
    // The guest cancels its own request in its room; the department sees it too.
    let mut dept_sub = broker.subscribe(&key("dept:housekeeping")).await.unwrap();
    requests
        .update(
            &guest(),
            update(json!({"requestId": id, "status": "cancelled"}), &room),
            None,
        )
        .await
        .unwrap();
    let SubscriptionEvent::Event(ChannelEvent::Message(m)) = dept_sub.recv().await else {
        panic!("the update reaches the department")
    };
    assert_eq!(m.envelope.event, "SERVICE_REQUEST_UPDATED");
    assert_eq!(m.envelope.correlation_id.as_deref(), Some(id.as_str()));
    let r = requests.get("h1", &id).await.unwrap().unwrap();
    assert_eq!(r.status, Status::Cancelled);
    assert_eq!(r.message.payload["text"], "more towels");
    let e = requests
        .update(
            &guest(),
            update(json!({"requestId": id, "status": "cancelled"}), &room),
            None,
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("already cancelled"), "{e}");
}

/// Counts of `ESCALATION`s in a channel's log, by (request id, level).
async fn escalations(broker: &dyn Broker, channel: &str) -> HashMap<(String, u64), usize> {
    let read = broker.read(&key(channel), None, 10_000).await.unwrap();
    let mut counts = HashMap::new();
    for m in read.messages {
        if m.envelope.event == ESCALATION {
            let p = &m.envelope.payload;
            let k = (
                p["requestId"].as_str().unwrap().to_owned(),
                p["level"].as_u64().unwrap(),
            );
            *counts.entry(k).or_default() += 1;
        }
    }
    counts
}

/// Waits until `want` distinct `ESCALATION`s (request id, level) were published on `channel` of
/// `broker`, or until `deadline`: the checks after it say what is missing. `sub`, subscribed
/// before the call, delivers those to come; those before it (and after a gap, as a subscriber
/// that fell behind re-reads) are counted from what the channel stores.
async fn wait_escalations(
    broker: &dyn Broker,
    channel: &str,
    sub: &mut Subscription,
    want: usize,
    deadline: Instant,
) {
    let mut seen: HashSet<_> = escalations(broker, channel).await.into_keys().collect();
    while seen.len() < want {
        let Ok(event) = tokio::time::timeout_at(deadline, sub.recv()).await else {
            return;
        };
        match event {
            SubscriptionEvent::Event(ChannelEvent::Message(m))
                if m.envelope.event == ESCALATION =>
            {
                let p = &m.envelope.payload;
                seen.insert((
                    p["requestId"].as_str().unwrap().to_owned(),
                    p["level"].as_u64().unwrap(),
                ));
            }
            SubscriptionEvent::Gap => seen.extend(escalations(broker, channel).await.into_keys()),
            SubscriptionEvent::Closed => panic!("subscription to {channel} closed"),
            SubscriptionEvent::Event(_) => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_on_redis_half_answered_escalate_exactly_the_other_half_per_level() {
    let redis = RedisServer::start().await;
    let config = RedisConfig {
        url: redis.url(),
        ..RedisConfig::default()
    };
    thousand_requests_half_answered(config, "redis").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_requests_on_a_redis_cluster_half_answered_escalate_exactly_the_other_half_per_level(
) {
    let cluster = bellhop_testkit::RedisCluster::shared().await;
    let config = RedisConfig {
        url: cluster.url(),
        cluster: true,
        key_prefix: "req1000".into(),
        ..RedisConfig::default()
    };
    thousand_requests_half_answered(config, "redis-cluster").await;
}

/// Two workflows ("nodes") on one Redis deployment: 1,000 urgent requests opened at once, half
/// acknowledged by the other node before their deadline; every level of the other half is
/// published exactly once, and none of the answered half escalates.
///
/// The nodes share a clock that stands still while the requests are opened and half of them
/// answered, and is then moved past each level's deadline: how fast this machine opens and
/// answers 1,000 requests through Redis does not decide which of them are due (tokio's paused
/// clock cannot be used, as it would not wait for Redis).
async fn thousand_requests_half_answered(config: RedisConfig, backend: &str) {
    const N: usize = 1000;
    // A minute: far longer than opening and answering take, so it is the clock moved below,
    // not real time, that makes requests due.
    const AFTER_MS: u64 = 60_000;
    let t0 = bellhop_dispatcher::now_ms();
    let now = Arc::new(AtomicU64::new(t0));
    let clock: RequestsClock = {
        let now = now.clone();
        Arc::new(move || now.load(Ordering::SeqCst))
    };
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let broker = Arc::new(RedisBroker::connect(config.clone()).await.unwrap());
        let dispatcher = Arc::new(Dispatcher::new(broker.clone(), DispatcherConfig::default()));
        let store = Arc::new(RedisRequestStore::connect(&config).await.unwrap());
        let mut rc = RequestsConfig::new(departments());
        rc.escalation = EscalationConfig {
            after_ms: AFTER_MS,
            max_level: 3,
            management_level: 3,
            ..EscalationConfig::default()
        };
        rc.tick = Duration::from_millis(100);
        let requests = Requests::start_with_clock(dispatcher, store, rc, clock.clone()).unwrap();
        nodes.push((broker, requests));
    }
    let started = Instant::now();
    let opens = (0..N).map(|i| {
        let requests = nodes[i % 2].1.clone();
        async move {
            let e = envelope(
                Channel::Dept("maintenance".into()),
                "SERVICE_REQUEST",
                json!({"text": format!("leak {i}"), "room": "101"}),
                Priority::Urgent,
            );
            requests.open(&guest(), e, None).await.unwrap().message_id
        }
    });
    let ids = futures_util::future::join_all(opens).await;
    let opened_in = started.elapsed();
    // Half answered, by the other node, before the deadline.
    let acks = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| i % 2 == 0)
        .map(|(i, id)| {
            let requests = nodes[(i + 1) % 2].1.clone();
            async move {
                let e = envelope(
                    Channel::Dept("maintenance".into()),
                    "SERVICE_REQUEST_UPDATED",
                    json!({"requestId": id, "status": "acknowledged"}),
                    Priority::Normal,
                );
                requests.update(&staff(), e, None).await.unwrap();
            }
        });
    futures_util::future::join_all(acks).await;
    let acked_in = started.elapsed();

    // Nothing is due yet: nothing escalated, however long the above took.
    let broker = nodes[0].0.clone();
    let mut dept = broker.subscribe(&key("dept:maintenance")).await.unwrap();
    let mut mgmt = broker.subscribe(&key("dept:management")).await.unwrap();
    assert!(escalations(broker.as_ref(), "dept:maintenance")
        .await
        .is_empty());

    // Past the first deadline, then the second: wait (with a deadline) for the ESCALATIONs of
    // every unanswered request, to level 2, then to level 3 on the department and on management.
    let deadline = Instant::now() + Duration::from_secs(30);
    now.store(t0 + AFTER_MS, Ordering::SeqCst);
    wait_escalations(
        broker.as_ref(),
        "dept:maintenance",
        &mut dept,
        N / 2,
        deadline,
    )
    .await;
    now.store(t0 + 2 * AFTER_MS, Ordering::SeqCst);
    wait_escalations(broker.as_ref(), "dept:maintenance", &mut dept, N, deadline).await;
    wait_escalations(
        broker.as_ref(),
        "dept:management",
        &mut mgmt,
        N / 2,
        deadline,
    )
    .await;
    // Every unanswered request at level 3 and not due any more.
    for id in ids.iter().skip(1).step_by(2) {
        let r = nodes[0].1.get("h1", id).await.unwrap().unwrap();
        assert_eq!(r.level, 3, "{id}");
    }
    let counts = escalations(broker.as_ref(), "dept:maintenance").await;
    let management = escalations(broker.as_ref(), "dept:management").await;
    let per_level = |c: &HashMap<(String, u64), usize>, level: u64| {
        c.iter()
            .filter(|((_, l), _)| *l == level)
            .map(|(_, n)| n)
            .sum::<usize>()
    };
    let answered: std::collections::HashSet<&String> = ids.iter().step_by(2).collect();
    let escalated_answered = counts
        .keys()
        .filter(|(id, _)| answered.contains(id))
        .count();
    let duplicates = counts.values().filter(|n| **n > 1).count();
    println!(
        "requests-1000 ({backend}): opened={N} opened_ms={} acknowledged={} acknowledged_ms={} level2={} level3={} management_level3={} escalated_answered={escalated_answered} duplicates={duplicates} elapsed_ms={}",
        opened_in.as_millis(),
        answered.len(),
        acked_in.as_millis(),
        per_level(&counts, 2),
        per_level(&counts, 3),
        per_level(&management, 3),
        started.elapsed().as_millis()
    );
    assert_eq!(per_level(&counts, 2), N / 2);
    assert_eq!(per_level(&counts, 3), N / 2);
    assert_eq!(per_level(&management, 3), N / 2);
    assert_eq!(escalated_answered, 0);
    assert_eq!(duplicates, 0);
}
