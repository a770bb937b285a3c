//! The scenarios against a real Bellhop node (in this process, on real sockets), on the embedded
//! broker and on a real `redis-server`: what the benchmark reports must be right before it is
//! fast. Small sizes; the figures themselves belong to `make bench`, never to a test.

use std::sync::Arc;
use std::time::Duration;

use bellhop_dispatcher::{
    BanStore, Broker, Dispatcher, DispatcherConfig, MemoryBroker, MemoryConfig, RedisBroker,
    RedisConfig,
};
use bellhop_gateway::{Gateway, GatewayConfig};
use bellhop_loadgen::scenarios::{self, Target};
use bellhop_loadgen::stats::ProcSet;
use bellhop_loadgen::systems::System;
use bellhop_testkit::RedisServer;

/// One scenario at a time: a scenario reads the latencies every thread of this process recorded
/// (and this process's CPU), so two at once take each other's samples (seen: a chat step with
/// 800 deliveries/s and no latency sample, its samples taken by the other chat test).
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SECRET: &str = "loadgen-test-secret-0123456789abcdef0123456789";

#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Redis,
}

struct Node {
    gateway: Gateway,
    _redis: Option<RedisServer>,
}

async fn node(backend: Backend) -> Node {
    let (broker, bans, redis): (Arc<dyn Broker>, Arc<dyn BanStore>, _) = match backend {
        Backend::Memory => {
            let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
            (broker.clone(), broker, None)
        }
        Backend::Redis => {
            let server = RedisServer::start().await;
            let broker = RedisBroker::connect(RedisConfig {
                url: server.url(),
                ..RedisConfig::default()
            })
            .await
            .expect("redis broker connects");
            let broker = Arc::new(broker);
            (broker.clone(), broker, Some(server))
        }
    };
    let mut c = GatewayConfig::new(SECRET.as_bytes().to_vec());
    c.listen = "127.0.0.1:0".parse().expect("address");
    c.admin_listen = None;
    c.node_id = "loadgen-test".into();
    // The load generator's clients come from one or two addresses, as in `make bench`.
    c.rate_limits.publishes_per_user_per_minute = 10_000_000;
    c.rate_limits.frames_per_second = 1_000_000;
    c.rate_limits.connections_per_ip_per_minute = 1_000_000;
    c.edge.max_pending_per_ip = 1_000_000;
    c.edge.max_pending = 1_000_000;
    c.hotel.publish_bytes_per_user_per_minute = u32::MAX;
    let dispatcher = Arc::new(Dispatcher::new(broker, DispatcherConfig::default()));
    let gateway = Gateway::bind(c, dispatcher, bans)
        .await
        .expect("gateway binds");
    Node {
        gateway,
        _redis: redis,
    }
}

fn target(node: &Node) -> Target {
    Target {
        system: System::Bellhop,
        urls: vec![format!("ws://{}/ws", node.gateway.local_addr())],
        procs: ProcSet {
            pids: vec![i32::try_from(std::process::id()).expect("pid")],
            broker: Vec::new(),
        },
        secret: SECRET.to_owned(),
        topology: "test".to_owned(),
    }
}

async fn chat_delivers_every_message_once_in_order(backend: Backend) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let node = node(backend).await;
    let r = scenarios::chat(&target(&node), 10, 4, &[200.0], Duration::from_secs(1)).await;
    assert_eq!(r.connected, 40, "{backend:?}: {:?}", r.error_samples);
    assert_eq!(r.errors, 0, "{backend:?}: {:?}", r.error_samples);
    let step = &r.steps[0];
    assert!(step.publish_rate > 100.0, "{backend:?}: {step:?}");
    // Every message reaches the 4 members of its room, its publisher included.
    assert!(
        step.deliveries_per_second > 3.0 * step.publish_rate,
        "{step:?}"
    );
    assert!(
        step.latency.count > 0 && step.latency.p50_ms > 0.0,
        "{step:?}"
    );
    assert_eq!(r.losses.lost, 0, "{backend:?}");
    assert_eq!(r.losses.duplicated, 0, "{backend:?}");
    assert_eq!(r.losses.out_of_order, 0, "{backend:?}");
}

async fn a_storm_loses_nothing_and_every_client_comes_back(backend: Backend) {
    let _alone = ONE_AT_A_TIME.lock().await;
    let node = node(backend).await;
    let r = scenarios::storm(&target(&node), 40, 200.0).await;
    assert!(r.reconnect_ms.is_some(), "{backend:?}: {r:?}");
    assert!(r.recovery_ms.is_some(), "{backend:?}: {r:?}");
    assert_eq!(r.not_recovered, 0, "{backend:?}");
    assert_eq!(r.losses.lost, 0, "{backend:?}: {r:?}");
    assert_eq!(r.losses.duplicated, 0, "{backend:?}: {r:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_on_the_embedded_broker() {
    chat_delivers_every_message_once_in_order(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_on_redis() {
    chat_delivers_every_message_once_in_order(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_on_the_embedded_broker() {
    a_storm_loses_nothing_and_every_client_comes_back(Backend::Memory).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_on_redis() {
    a_storm_loses_nothing_and_every_client_comes_back(Backend::Redis).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_reports_each_step_and_idle_counts_its_connections() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let node = node(Backend::Memory).await;
    let t = target(&node);
    let f = scenarios::fanout(&t, 20, &[20.0, 40.0], Duration::from_secs(1)).await;
    assert_eq!(f.connected, 20);
    assert_eq!(f.steps.len(), 2, "{f:?}");
    assert!(f.steps[1].deliveries_per_second > 20.0 * 20.0, "{f:?}");
    assert_eq!(f.losses.lost, 0);
    assert_eq!(f.errors, 0, "{:?}", f.error_samples);
    let i = scenarios::idle(&t, 60).await;
    assert_eq!(i.connected, 60, "{:?}", i.error_samples);
    assert!(i.rss_after > 0 && !i.rss_curve.is_empty());
}
