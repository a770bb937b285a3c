//! The dispatcher's unit tests: priority order, back-pressure, the breaker around a failing or
//! hanging broker, deadlines and worker supervision, against a broker whose calls a test gates.

use super::*;
use crate::breaker::BreakerConfig;
use crate::broker::{ChannelEvent, ChannelKey, ReadResult, Subscription};
use crate::{MemoryBroker, MemoryConfig};
use bellhop_protocol::{Channel, Envelope, Offset, Role, Sender};
use tokio::sync::Semaphore;

/// A publish (without an idempotency key) of a message recognisable by its `id`.
fn envelope(id: &str, priority: Priority) -> Publish {
    Publish::new(Arc::new(Envelope {
        message_id: id.into(),
        event: "CHAT_MESSAGE".into(),
        namespace: "h1".into(),
        channel: Channel::Room("101".into()),
        payload: serde_json::Value::Null,
        timestamp: "2026-01-01T00:00:00.000Z".into(),
        sender: Sender {
            id: "u1".into(),
            role: Role::Staff,
        },
        priority,
        correlation_id: None,
    }))
}

/// How [`GatedBroker::publish_batch`] fails, when told to.
#[derive(Clone, Debug)]
enum Fault {
    /// Every message fails with this error.
    Error(BrokerError),
    /// The call never returns.
    Hang,
    /// The call panics (a backend bug).
    Panic,
    /// The call stores, but only after this long (a slow-but-answering Redis).
    Slow(Duration),
}

/// A broker that stores into a memory broker, but only as fast as the test lets it: each
/// `publish_batch` waits for one permit. Lets a test fill the queue while the worker is busy.
/// With a fault set, it fails (after the permit) instead of storing.
#[derive(Debug)]
struct GatedBroker {
    inner: MemoryBroker,
    gate: Semaphore,
    batches: Mutex<Vec<Vec<String>>>,
    fault: Mutex<Option<Fault>>,
}

impl GatedBroker {
    fn new(permits: usize) -> Arc<GatedBroker> {
        Arc::new(GatedBroker {
            inner: MemoryBroker::new(MemoryConfig::default()),
            gate: Semaphore::new(permits),
            batches: Mutex::new(Vec::new()),
            fault: Mutex::new(None),
        })
    }

    fn fail_with(&self, fault: Option<Fault>) {
        *self.fault.lock() = fault;
    }

    fn calls(&self) -> usize {
        self.batches.lock().len()
    }
}

bellhop_testkit::forward_broker! {
    impl Broker for GatedBroker => inner,
    forward [
        publish_ephemeral, subscribe, read, presence_join, presence_leave, presence, mark_read,
        unread,
    ]
    {
        async fn publish_batch(&self, batch: Vec<Publish>) -> Vec<Result<Published, BrokerError>> {
            self.batches.lock().push(
                batch
                    .iter()
                    .map(|p| p.envelope.message_id.clone())
                    .collect(),
            );
            self.gate.acquire().await.expect("gate open").forget();
            let fault = self.fault.lock().clone();
            match fault {
                None => self.inner.publish_batch(batch).await,
                Some(Fault::Error(e)) => batch.iter().map(|_| Err(e.clone())).collect(),
                Some(Fault::Hang) => std::future::pending().await,
                Some(Fault::Panic) => panic!("injected backend bug"),
                Some(Fault::Slow(delay)) => {
                    tokio::time::sleep(delay).await;
                    self.inner.publish_batch(batch).await
                }
            }
        }
    }
}

async fn wait_for_batches(broker: &GatedBroker, n: usize) {
    while broker.batches.lock().len() < n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn an_urgent_publish_overtakes_a_backlog_of_normal_ones() {
    let broker = GatedBroker::new(0);
    let config = DispatcherConfig {
        max_batch: 4,
        ..Default::default()
    };
    let dispatcher = Arc::new(Dispatcher::new(broker.clone(), config));
    // The first publish occupies the worker; 40 normal ones pile up behind it.
    let mut handles = Vec::new();
    for i in 0..41 {
        let d = dispatcher.clone();
        handles.push(tokio::spawn(async move {
            d.publish(envelope(&format!("n{i}"), Priority::Normal))
                .await
        }));
        if i == 0 {
            wait_for_batches(&broker, 1).await;
        }
    }
    while dispatcher.pending() < 40 {
        tokio::task::yield_now().await;
    }
    let d = dispatcher.clone();
    let urgent = tokio::spawn(async move { d.publish(envelope("urgent", Priority::Urgent)).await });
    while dispatcher.pending() < 41 {
        tokio::task::yield_now().await;
    }
    broker.gate.add_permits(1000);
    let urgent_offset = urgent.await.unwrap().unwrap().offset;
    let mut normal_offsets = Vec::new();
    for h in handles {
        normal_offsets.push(h.await.unwrap().unwrap().offset);
    }
    // The urgent message was the first of the backlog to be stored: only the message already
    // in flight precedes it.
    let before = normal_offsets
        .iter()
        .filter(|o| **o < urgent_offset)
        .count();
    assert_eq!(
        before, 1,
        "urgent publish was stored after {before} normal ones"
    );
    let batches = broker.batches.lock().clone();
    assert_eq!(
        batches[1][0], "urgent",
        "second batch must lead with the urgent message: {batches:?}"
    );
    assert!(
        batches.iter().skip(1).all(|b| b.len() <= 4),
        "batches are capped at max_batch"
    );
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_fails_fast_with_a_retry_hint() {
    let broker = GatedBroker::new(0);
    let config = DispatcherConfig {
        max_batch: 1,
        max_pending: 2,
        ..Default::default()
    };
    let dispatcher = Arc::new(Dispatcher::new(broker.clone(), config));
    let d = dispatcher.clone();
    let first = tokio::spawn(async move { d.publish(envelope("a", Priority::Normal)).await });
    wait_for_batches(&broker, 1).await;
    let mut waiting = Vec::new();
    for id in ["b", "c"] {
        let d = dispatcher.clone();
        waiting.push(tokio::spawn(async move {
            d.publish(envelope(id, Priority::Normal)).await
        }));
    }
    while dispatcher.pending() < 2 {
        tokio::task::yield_now().await;
    }
    let refused = dispatcher.publish(envelope("d", Priority::Urgent)).await;
    assert!(
        matches!(refused, Err(PublishError::Overloaded { pending: 2, .. })),
        "{refused:?}"
    );
    broker.gate.add_permits(10);
    assert!(first.await.unwrap().is_ok());
    for w in waiting {
        assert!(w.await.unwrap().is_ok());
    }
}

#[tokio::test]
async fn acknowledged_offsets_are_readable_in_order() {
    let broker: Arc<dyn Broker> = Arc::new(MemoryBroker::new(MemoryConfig::default()));
    let dispatcher = Dispatcher::new(broker.clone(), DispatcherConfig::default());
    let mut offsets = Vec::new();
    for i in 0..10 {
        offsets.push(
            dispatcher
                .publish(envelope(&format!("m{i}"), Priority::Normal))
                .await
                .unwrap()
                .offset,
        );
    }
    let key = ChannelKey::new("h1", Channel::Room("101".into()));
    let read = broker.read(&key, None, 100).await.unwrap();
    let stored: Vec<_> = read.messages.iter().map(|m| m.offset).collect();
    assert_eq!(stored, offsets);
    assert!(offsets.windows(2).all(|w| w[0] < w[1]));
}

const SECOND: Duration = Duration::from_secs(1);

fn unavailable() -> Fault {
    Fault::Error(BrokerError::Unavailable {
        reason: "redis: connection refused".into(),
        retry_after: SECOND,
    })
}

/// What a publish gets from a breaker that has just opened: refused, 30 s until half-open.
fn open_for_30s() -> Result<Published, PublishError> {
    Err(PublishError::CircuitOpen {
        retry_after: 30 * SECOND,
    })
}

/// The breaker has just opened: a publish is refused at once, 30 s until half-open.
async fn assert_just_opened(dispatcher: &Dispatcher) {
    assert_eq!(dispatcher.breaker_state(), BreakerState::Open);
    let refused = dispatcher
        .publish(envelope("refused", Priority::Normal))
        .await;
    assert_eq!(refused, open_for_30s());
}

/// The retry hint of a failed publish, if it is `unavailable` of either kind.
fn retry_after(result: &Result<Published, PublishError>) -> Option<Duration> {
    match result {
        Err(PublishError::CircuitOpen { retry_after })
        | Err(PublishError::Broker(BrokerError::Unavailable { retry_after, .. })) => {
            Some(*retry_after)
        }
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn an_unavailable_broker_opens_the_breaker_then_publishes_fail_fast_until_it_recovers() {
    let broker = GatedBroker::new(usize::MAX >> 4);
    let dispatcher = Dispatcher::new(broker.clone(), DispatcherConfig::default());
    assert_eq!(dispatcher.breaker_state(), BreakerState::Closed);
    broker.fail_with(Some(unavailable()));
    for i in 0..9 {
        let r = dispatcher
            .publish(envelope(&format!("m{i}"), Priority::Normal))
            .await;
        assert_eq!(
            retry_after(&r),
            Some(SECOND),
            "the broker's own hint: {r:?}"
        );
        assert_eq!(
            dispatcher.breaker_state(),
            BreakerState::Closed,
            "after {i}"
        );
    }
    // The tenth failed call opens it; its publisher is told to come back when it half-opens.
    let r = dispatcher.publish(envelope("m9", Priority::Normal)).await;
    assert!(matches!(r, Err(PublishError::Broker(_))), "{r:?}");
    assert_eq!(retry_after(&r), Some(30 * SECOND));
    assert_eq!(dispatcher.breaker_state(), BreakerState::Open);

    // Open: refused without touching the broker, with the time left until half-open.
    let started = Instant::now();
    let r = dispatcher.publish(envelope("fast", Priority::Urgent)).await;
    assert_eq!(r, open_for_30s());
    assert_eq!(started.elapsed(), Duration::ZERO, "fails fast");
    tokio::time::advance(12 * SECOND).await;
    let r = dispatcher
        .publish(envelope("later", Priority::Normal))
        .await;
    assert_eq!(
        r,
        Err(PublishError::CircuitOpen {
            retry_after: 18 * SECOND
        })
    );
    assert_eq!(broker.calls(), 10, "no call reached the broker while open");

    // Redis is back; after the open period the next publish is the trial and closes it.
    broker.fail_with(None);
    tokio::time::advance(18 * SECOND).await;
    assert_eq!(dispatcher.breaker_state(), BreakerState::HalfOpen);
    let r = dispatcher
        .publish(envelope("trial", Priority::Normal))
        .await;
    assert!(r.is_ok(), "{r:?}");
    assert_eq!(dispatcher.breaker_state(), BreakerState::Closed);
    assert!(dispatcher
        .publish(envelope("after", Priority::Low))
        .await
        .is_ok());
}

#[tokio::test(start_paused = true)]
async fn a_hanging_broker_times_out_opens_the_breaker_and_a_failed_trial_reopens_it() {
    let broker = GatedBroker::new(usize::MAX >> 4);
    let dispatcher = Dispatcher::new(broker.clone(), DispatcherConfig::default());
    broker.fail_with(Some(Fault::Hang));
    for i in 0..10 {
        let started = Instant::now();
        let r = dispatcher
            .publish(envelope(&format!("m{i}"), Priority::Normal))
            .await;
        assert_eq!(started.elapsed(), 5 * SECOND, "bounded by the call timeout");
        let Err(PublishError::Broker(BrokerError::Unavailable { reason, .. })) = &r else {
            panic!("{r:?}");
        };
        assert!(reason.contains("timed out"), "{reason}");
        let hint = if i < 9 { SECOND } else { 30 * SECOND };
        assert_eq!(retry_after(&r), Some(hint), "after {i}");
    }
    assert_eq!(dispatcher.breaker_state(), BreakerState::Open);

    // Still hanging after the open period: the trial times out and the breaker reopens.
    tokio::time::advance(30 * SECOND).await;
    assert_eq!(dispatcher.breaker_state(), BreakerState::HalfOpen);
    let r = dispatcher
        .publish(envelope("trial", Priority::Normal))
        .await;
    assert_eq!(retry_after(&r), Some(30 * SECOND), "{r:?}");
    assert_just_opened(&dispatcher).await;
    assert_eq!(broker.calls(), 11);
}

#[tokio::test(start_paused = true)]
async fn publishes_queued_when_the_breaker_opens_fail_fast_too() {
    let broker = GatedBroker::new(0);
    let config = DispatcherConfig {
        max_batch: 1,
        breaker: BreakerConfig {
            minimum_calls: 1,
            window: 1,
            ..BreakerConfig::default()
        },
        ..DispatcherConfig::default()
    };
    let dispatcher = Arc::new(Dispatcher::new(broker.clone(), config));
    broker.fail_with(Some(unavailable()));
    let d = dispatcher.clone();
    let first = tokio::spawn(async move { d.publish(envelope("a", Priority::Normal)).await });
    wait_for_batches(&broker, 1).await;
    let mut queued = Vec::new();
    for i in 0..5 {
        let d = dispatcher.clone();
        queued.push(tokio::spawn(async move {
            d.publish(envelope(&format!("q{i}"), Priority::Normal))
                .await
        }));
    }
    while dispatcher.pending() < 5 {
        tokio::task::yield_now().await;
    }
    broker.gate.add_permits(100);
    assert_eq!(retry_after(&first.await.unwrap()), Some(30 * SECOND));
    for q in queued {
        assert_eq!(q.await.unwrap(), open_for_30s());
    }
    assert_eq!(broker.calls(), 1, "the backlog never reached the broker");
}

#[tokio::test(start_paused = true)]
async fn internal_errors_do_not_open_the_breaker() {
    let broker = GatedBroker::new(usize::MAX >> 4);
    let dispatcher = Dispatcher::new(broker.clone(), DispatcherConfig::default());
    broker.fail_with(Some(Fault::Error(BrokerError::Internal(
        "bad reply".into(),
    ))));
    for i in 0..30 {
        let r = dispatcher
            .publish(envelope(&format!("m{i}"), Priority::Normal))
            .await;
        assert!(
            matches!(r, Err(PublishError::Broker(BrokerError::Internal(_)))),
            "{r:?}"
        );
    }
    assert_eq!(dispatcher.breaker_state(), BreakerState::Closed);
    assert_eq!(broker.calls(), 30);
}

/// The message ids stored in the test channel, oldest first.
async fn stored(broker: &GatedBroker) -> Vec<String> {
    let key = ChannelKey::new("h1", Channel::Room("101".into()));
    let read = broker.inner.read(&key, None, 1000).await.unwrap();
    read.messages
        .iter()
        .map(|m| m.envelope.message_id.clone())
        .collect()
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_panics_is_restarted_and_counted_and_its_publisher_fails_fast() {
    let broker = GatedBroker::new(usize::MAX >> 4);
    let dispatcher = Dispatcher::new(broker.clone(), DispatcherConfig::default());
    assert_eq!(dispatcher.worker_restarts(), 0);
    broker.fail_with(Some(Fault::Panic));
    let started = Instant::now();
    let r = dispatcher
        .publish(envelope("doomed", Priority::Normal))
        .await;
    assert_eq!(started.elapsed(), Duration::ZERO, "fails fast: {r:?}");
    let Err(PublishError::Broker(BrokerError::Unavailable {
        reason,
        retry_after,
    })) = &r
    else {
        panic!("{r:?}");
    };
    assert!(reason.contains("worker stopped"), "{reason}");
    assert_eq!(*retry_after, SECOND);

    broker.fail_with(None);
    let r = dispatcher.publish(envelope("next", Priority::Normal)).await;
    assert!(r.is_ok(), "the restarted worker stores it: {r:?}");
    assert_eq!(dispatcher.worker_restarts(), 1);
    assert_eq!(stored(&broker).await, ["next"]);
    assert_eq!(dispatcher.breaker_state(), BreakerState::Closed);
}

#[tokio::test(start_paused = true)]
async fn a_worker_that_panics_during_the_trial_call_reopens_the_breaker_instead_of_wedging_it() {
    let broker = GatedBroker::new(usize::MAX >> 4);
    let config = DispatcherConfig {
        breaker: BreakerConfig {
            minimum_calls: 1,
            window: 1,
            ..BreakerConfig::default()
        },
        ..DispatcherConfig::default()
    };
    let dispatcher = Dispatcher::new(broker.clone(), config);
    broker.fail_with(Some(unavailable()));
    assert!(dispatcher
        .publish(envelope("a", Priority::Normal))
        .await
        .is_err());
    assert_eq!(dispatcher.breaker_state(), BreakerState::Open);
    tokio::time::advance(30 * SECOND).await;
    broker.fail_with(Some(Fault::Panic));
    let r = dispatcher
        .publish(envelope("trial", Priority::Normal))
        .await;
    assert!(retry_after(&r).is_some(), "{r:?}");
    // The trial never reported; had its permit been forgotten, the breaker would refuse
    // every call from now on while waiting for it.
    assert_just_opened(&dispatcher).await;
    broker.fail_with(None);
    tokio::time::advance(30 * SECOND).await;
    assert!(dispatcher
        .publish(envelope("healed", Priority::Normal))
        .await
        .is_ok());
    assert_eq!(dispatcher.breaker_state(), BreakerState::Closed);
    assert_eq!(dispatcher.worker_restarts(), 1);
}

#[tokio::test(start_paused = true)]
async fn a_publish_behind_a_slow_broker_fails_at_its_deadline_from_enqueue_and_opens_the_breaker() {
    let broker = GatedBroker::new(usize::MAX >> 4);
    let config = DispatcherConfig {
        max_batch: 1,
        ..DispatcherConfig::default()
    };
    assert_eq!(config.publish_timeout, 5 * SECOND, "the call timeout");
    let dispatcher = Arc::new(Dispatcher::new(broker.clone(), config));
    // Redis answers every call, but each takes 4 s: a queue of 30 would take 2 minutes.
    broker.fail_with(Some(Fault::Slow(4 * SECOND)));
    let started = Instant::now();
    let publishers: Vec<_> = (0..30)
        .map(|i| {
            let d = dispatcher.clone();
            tokio::spawn(async move {
                let r = d
                    .publish(envelope(&format!("m{i}"), Priority::Normal))
                    .await;
                (r, started.elapsed())
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for p in publishers {
        outcomes.push(p.await.unwrap());
    }
    // m0 went out at once and took 4 s; m1 went out at 4 s, before its deadline, and its
    // batch took 4 s more. Everyone else was still queued at 5 s, and failed right then.
    assert!(
        outcomes[0].0.is_ok() && outcomes[0].1 == 4 * SECOND,
        "{:?}",
        outcomes[0]
    );
    assert!(
        outcomes[1].0.is_ok() && outcomes[1].1 == 8 * SECOND,
        "{:?}",
        outcomes[1]
    );
    for (i, (r, took)) in outcomes.iter().enumerate().skip(2) {
        assert_eq!(
            *took,
            5 * SECOND,
            "m{i} failed at its deadline from enqueue"
        );
        let Err(PublishError::Broker(BrokerError::Unavailable { reason, .. })) = r else {
            panic!("m{i}: {r:?}");
        };
        assert!(reason.contains("queue"), "{reason}");
        assert!(retry_after(r).is_some_and(|d| d >= SECOND), "m{i}: {r:?}");
    }
    assert_eq!(
        dispatcher.breaker_state(),
        BreakerState::Open,
        "expired waits count as failures"
    );
    let refused = dispatcher.publish(envelope("late", Priority::Normal)).await;
    assert!(
        matches!(refused, Err(PublishError::CircuitOpen { .. })),
        "{refused:?}"
    );
    // The expired ones were dropped, never sent.
    while dispatcher.pending() > 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(broker.calls(), 2);
    assert_eq!(stored(&broker).await, ["m0", "m1"]);
}

#[tokio::test(start_paused = true)]
async fn a_publish_the_worker_reaches_after_its_deadline_is_dropped_not_sent() {
    // The worker is busy for 6 s with one call that the breaker's call timeout allows; the
    // publish queued behind it is past its 2 s deadline when the worker comes to it.
    let broker = GatedBroker::new(usize::MAX >> 4);
    let config = DispatcherConfig {
        max_batch: 1,
        publish_timeout: 2 * SECOND,
        breaker: BreakerConfig {
            call_timeout: 10 * SECOND,
            ..BreakerConfig::default()
        },
        ..DispatcherConfig::default()
    };
    let dispatcher = Arc::new(Dispatcher::new(broker.clone(), config));
    broker.fail_with(Some(Fault::Slow(6 * SECOND)));
    let d = dispatcher.clone();
    let first = tokio::spawn(async move { d.publish(envelope("first", Priority::Normal)).await });
    wait_for_batches(&broker, 1).await;
    let started = Instant::now();
    let r = dispatcher
        .publish(envelope("behind", Priority::Normal))
        .await;
    assert_eq!(started.elapsed(), 2 * SECOND);
    assert!(retry_after(&r).is_some(), "{r:?}");
    assert!(first.await.unwrap().is_ok());
    while dispatcher.pending() > 0 {
        tokio::task::yield_now().await;
    }
    assert_eq!(broker.calls(), 1, "the expired publish was never sent");
    assert_eq!(stored(&broker).await, ["first"]);
}

#[test]
fn config_validation_covers_the_breaker() {
    assert_eq!(DispatcherConfig::default().validate(), Ok(()));
    let bad = DispatcherConfig {
        breaker: BreakerConfig {
            failure_rate: 2.0,
            ..BreakerConfig::default()
        },
        ..DispatcherConfig::default()
    };
    assert!(bad.validate().unwrap_err().contains("failure_rate"));
    let bad = DispatcherConfig {
        max_batch: 0,
        ..DispatcherConfig::default()
    };
    assert!(bad.validate().unwrap_err().contains("max_batch"));
    let bad = DispatcherConfig {
        publish_timeout: Duration::ZERO,
        ..DispatcherConfig::default()
    };
    assert!(bad.validate().unwrap_err().contains("publish_timeout"));
}
