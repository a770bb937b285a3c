//! The workloads: `idle`, `fanout`, `chat` and `storm`. Each opens its clients against a
//! [`Target`], drives them, and returns a serialisable result. The crowd of clients they drive
//! (users, source addresses, plans, readiness, drain) is in `crowd.rs`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use crate::client::Command;
use crate::stats::{self, Counters, Percentiles, ProcSet};
use crate::systems::{System, WireOptions};

mod crowd;
use crowd::{settle, start, Clients, PlanSpec};

/// The property every load-generator token names.
pub const PROPERTY: &str = "bench";

/// The system under test, already running.
#[derive(Clone, Debug)]
pub struct Target {
    /// Which system.
    pub system: System,
    /// Its WebSocket base URLs (one per node); clients are spread over them in turn.
    pub urls: Vec<String>,
    /// Its processes, for RSS and CPU.
    pub procs: ProcSet,
    /// The HS256 secret Bellhop verifies tokens with.
    pub secret: String,
    /// A label for the topology ("1 node", "3 nodes + Redis").
    pub topology: String,
}

/// Payload padding: with the measurement fields, a payload of about 100 bytes, a typical
/// chat message.
pub const PAD: usize = 60;

/// Messages lost, duplicated or reordered, counted per subscriber.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Losses {
    /// Published while the subscriber was subscribed (or resumable) and never received.
    pub lost: u64,
    /// Received more than once.
    pub duplicated: u64,
    /// Received after a newer one from the same publisher.
    pub out_of_order: u64,
    /// Publishes the system refused with an error naming them (over a rate, its request queue
    /// full): not stored, so not lost. Bellhop only (the other wires have no request ids).
    pub refused: u64,
}

fn bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>24} [{bar:40}] {pos}/{len} {per_sec} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what.to_owned());
    bar
}

/// `idle`: result.
#[derive(Clone, Debug, Serialize)]
pub struct IdleResult {
    /// Connections asked for.
    pub connections: usize,
    /// Connections that were open and subscribed at the end.
    pub connected: u64,
    /// Seconds from the first connect to the last confirmed subscription.
    pub connect_seconds: f64,
    /// Handshakes (connect, authenticate, two subscriptions) per second.
    pub connects_per_second: f64,
    /// Server RSS before the clients connected, bytes.
    pub rss_before: u64,
    /// Server RSS with every client connected, bytes.
    pub rss_after: u64,
    /// (RSS after − RSS before) / connections, bytes.
    pub rss_per_connection: f64,
    /// (connections, RSS) while connecting, for the chart.
    pub rss_curve: Vec<(u64, u64)>,
    /// Errors seen.
    pub errors: u64,
    /// The first error messages.
    pub error_samples: Vec<String>,
}

/// `idle`: N connections, each subscribed to its `user:` channel and one room (4 per room).
pub async fn idle(target: &Target, n: usize) -> IdleResult {
    let rooms = n.div_ceil(4);
    let mut names: Vec<String> = (0..n).map(|i| format!("user:lg-{i}")).collect();
    names.extend((0..rooms).map(|r| format!("room:{r}")));
    let specs: Vec<PlanSpec> = (0..n)
        .map(|i| PlanSpec {
            subs: vec![i, n + i / 4],
            publishes: Vec::new(),
        })
        .collect();
    let rss_before = target.procs.sample().rss;
    let started = Instant::now();
    let clients = start(target, names, WireOptions::default(), specs);
    let bar = bar(n as u64, &format!("{} idle", target.system.label()));
    let mut curve = Vec::new();
    clients
        .wait_ready_sampling(
            n,
            started + Duration::from_secs(300),
            &bar,
            Some(&target.procs),
            &mut curve,
        )
        .await;
    let connect_seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let connected = clients.ready();
    settle(&target.procs).await;
    let rss_after = target.procs.sample().rss;
    curve.push((connected, rss_after));
    let (errors, error_samples) = clients.errors();
    clients.stop().await;
    IdleResult {
        connections: n,
        connected,
        connect_seconds,
        connects_per_second: connected as f64 / connect_seconds,
        rss_before,
        rss_after,
        rss_per_connection: rss_after.saturating_sub(rss_before) as f64 / connected.max(1) as f64,
        rss_curve: curve,
        errors,
        error_samples,
    }
}

/// One step of a rate ramp.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Step {
    /// Publishes per second asked for.
    pub target_publish_rate: f64,
    /// Publishes per second written.
    pub publish_rate: f64,
    /// Deliveries per second received.
    pub deliveries_per_second: f64,
    /// End-to-end latency.
    pub latency: Percentiles,
    /// CPU cores the server used (with its broker).
    pub server_cores: f64,
    /// Of those, the cores the broker behind a cluster (its Redis) used; `None` without one.
    pub broker_cores: Option<f64>,
    /// Server RSS at the end of the step, bytes.
    pub server_rss: u64,
}

async fn measure(
    clients: &Clients,
    target: &Target,
    rate: f64,
    warmup: Duration,
    length: Duration,
) -> Step {
    let _ = clients.rate.send(rate);
    tokio::time::sleep(warmup).await;
    let _ = stats::take_latencies();
    let c = &clients.run.counters;
    let (pub0, del0) = (Counters::get(&c.published), Counters::get(&c.delivered));
    let s0 = target.procs.sample();
    let t0 = Instant::now();
    tokio::time::sleep(length).await;
    let elapsed = t0.elapsed().as_secs_f64();
    let s1 = target.procs.sample();
    let h = stats::take_latencies();
    Step {
        target_publish_rate: rate,
        publish_rate: (Counters::get(&c.published) - pub0) as f64 / elapsed,
        deliveries_per_second: (Counters::get(&c.delivered) - del0) as f64 / elapsed,
        latency: Percentiles::of(&h),
        server_cores: s1.cores_since(&s0),
        broker_cores: (!target.procs.broker.is_empty()).then(|| s1.broker_cores_since(&s0)),
        server_rss: s1.rss,
    }
}

/// `fanout`: result.
#[derive(Clone, Debug, Serialize)]
pub struct FanoutResult {
    /// Subscribers of the one channel.
    pub subscribers: usize,
    /// Subscribers that connected.
    pub connected: u64,
    /// How long the server stayed busy after every subscriber had joined, ms.
    pub settle_ms: f64,
    /// The ramp.
    pub steps: Vec<Step>,
    /// The most deliveries per second of a step whose p99 stayed under 50 ms.
    pub best_deliveries_under_50ms: f64,
    /// Counted after the ramp, once the last message had time to arrive.
    pub losses: Losses,
    /// Errors seen.
    pub errors: u64,
    /// The first error messages.
    pub error_samples: Vec<String>,
}

/// `fanout`: one channel with `subscribers`, one publisher ramping through `rates`.
pub async fn fanout(
    target: &Target,
    subscribers: usize,
    rates: &[f64],
    step: Duration,
) -> FanoutResult {
    let mut specs: Vec<PlanSpec> = (0..subscribers)
        .map(|_| PlanSpec {
            subs: vec![0],
            publishes: Vec::new(),
        })
        .collect();
    specs.push(PlanSpec {
        subs: Vec::new(),
        publishes: vec![0],
    });
    let clients = start(
        target,
        vec!["room:fanout".to_owned()],
        WireOptions::default(),
        specs,
    );
    let b = bar(
        subscribers as u64 + 1,
        &format!("{} fanout", target.system.label()),
    );
    clients
        .wait_ready(subscribers + 1, Duration::from_secs(120), &b)
        .await;
    b.finish_and_clear();
    let connected = clients.ready().saturating_sub(1);
    let settle_ms = settle(&target.procs).await;
    let mut steps = Vec::new();
    let ramp = bar(
        rates.len() as u64,
        &format!("{} fanout ramp", target.system.label()),
    );
    for rate in rates {
        let s = measure(&clients, target, *rate, Duration::from_secs(1), step).await;
        ramp.inc(1);
        ramp.set_message(format!(
            "{:.0} deliveries/s p99 {:.1} ms",
            s.deliveries_per_second, s.latency.p99_ms
        ));
        let saturated =
            s.latency.p99_ms > 1000.0 || s.deliveries_per_second < 0.5 * rate * subscribers as f64;
        steps.push(s);
        if saturated {
            break;
        }
    }
    ramp.finish_and_clear();
    clients.stop_publishing(Duration::from_secs(5)).await;
    let losses = clients.drain(Duration::from_secs(30)).await;
    let best = steps
        .iter()
        .filter(|s| s.latency.p99_ms < 50.0 && s.latency.count > 0)
        .map(|s| s.deliveries_per_second)
        .fold(0.0, f64::max);
    let (errors, error_samples) = clients.errors();
    clients.stop().await;
    FanoutResult {
        subscribers,
        connected,
        settle_ms,
        steps,
        best_deliveries_under_50ms: best,
        losses,
        errors,
        error_samples,
    }
}

/// `chat`: result.
#[derive(Clone, Debug, Serialize)]
pub struct ChatResult {
    /// Topology label.
    pub topology: String,
    /// Rooms.
    pub rooms: usize,
    /// Members per room (each a connection).
    pub members: usize,
    /// Connections that were subscribed when publishing began.
    pub connected: u64,
    /// How long the server stayed busy after every member had joined, ms.
    pub settle_ms: f64,
    /// One measured window per total rate.
    pub steps: Vec<Step>,
    /// Counted once publishing stopped.
    pub losses: Losses,
    /// Errors seen.
    pub errors: u64,
    /// The first error messages.
    pub error_samples: Vec<String>,
}

/// `chat`: `rooms` rooms of `members`, every member publishing so that the total is each of
/// `rates` in turn.
pub async fn chat(
    target: &Target,
    rooms: usize,
    members: usize,
    rates: &[f64],
    length: Duration,
) -> ChatResult {
    let n = rooms * members;
    let names: Vec<String> = (0..rooms).map(|r| format!("room:c{r}")).collect();
    let specs: Vec<PlanSpec> = (0..n)
        .map(|i| PlanSpec {
            subs: vec![i / members],
            publishes: vec![i / members],
        })
        .collect();
    let clients = start(target, names, WireOptions::default(), specs);
    let b = bar(n as u64, &format!("{} chat connect", target.system.label()));
    clients.wait_ready(n, Duration::from_secs(180), &b).await;
    b.finish_and_clear();
    let connected = clients.ready();
    let settle_ms = settle(&target.procs).await;
    let mut steps = Vec::new();
    let ramp = bar(
        rates.len() as u64,
        &format!("{} chat", target.system.label()),
    );
    for (i, rate) in rates.iter().enumerate() {
        let warmup = Duration::from_secs(if i == 0 { 2 } else { 1 });
        let mut step = measure(&clients, target, rate / n as f64, warmup, length).await;
        step.target_publish_rate = *rate;
        ramp.inc(1);
        steps.push(step);
    }
    ramp.finish_and_clear();
    clients.stop_publishing(Duration::from_secs(5)).await;
    let losses = clients.drain(Duration::from_secs(30)).await;
    let (errors, error_samples) = clients.errors();
    clients.stop().await;
    ChatResult {
        topology: target.topology.clone(),
        rooms,
        members,
        connected,
        settle_ms,
        steps,
        losses,
        errors,
        error_samples,
    }
}

/// `storm`: result.
#[derive(Clone, Debug, Serialize)]
pub struct StormResult {
    /// Clients that dropped and reconnected.
    pub clients: usize,
    /// Publishes per second during the storm.
    pub publish_rate: f64,
    /// From the drop until every client was connected and subscribed again, ms.
    pub reconnect_ms: Option<f64>,
    /// From the drop until every client had every message published before the last one
    /// resubscribed, ms; `None` when that never happened (messages lost), and for a system
    /// without resume, which is not waited for.
    pub recovery_ms: Option<f64>,
    /// Resubscriptions whose `since` the system could not honour.
    pub not_recovered: u64,
    /// Counted once publishing stopped.
    pub losses: Losses,
    /// Errors seen (each dropped connection is not an error; failed reconnects are).
    pub errors: u64,
    /// The first error messages.
    pub error_samples: Vec<String>,
}

/// `storm`: `n` clients on 4-member rooms and their `user:` channels while a publisher sends
/// `rate` messages per second over the rooms; every client drops and reconnects at once,
/// resuming with `since` where the system supports it.
pub async fn storm(target: &Target, n: usize, rate: f64) -> StormResult {
    let rooms = n.div_ceil(4);
    let mut names: Vec<String> = (0..rooms).map(|r| format!("room:s{r}")).collect();
    names.extend((0..n).map(|i| format!("user:lg-{i}")));
    let mut specs: Vec<PlanSpec> = (0..n)
        .map(|i| PlanSpec {
            subs: vec![i / 4, rooms + i],
            publishes: Vec::new(),
        })
        .collect();
    specs.push(PlanSpec {
        subs: Vec::new(),
        publishes: (0..rooms).collect(),
    });
    let clients = start(
        target,
        names,
        WireOptions {
            track_offsets: true,
            resend_unanswered: true,
        },
        specs,
    );
    let b = bar(
        n as u64 + 1,
        &format!("{} storm connect", target.system.label()),
    );
    clients
        .wait_ready(n + 1, Duration::from_secs(180), &b)
        .await;
    b.finish_and_clear();
    settle(&target.procs).await;
    let _ = clients.rate.send(rate);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let dropped = Instant::now();
    clients.run.control.send_replace(Command::Reconnect(1));
    let b = bar(
        n as u64,
        &format!("{} storm reconnect", target.system.label()),
    );
    let deadline = dropped + Duration::from_secs(120);
    let mut reconnect_ms = None;
    loop {
        let back = clients
            .states
            .iter()
            .take(n)
            .filter(|s| {
                s.sessions.load(Ordering::Relaxed) >= 2 && s.subscribed.load(Ordering::Acquire)
            })
            .count();
        b.set_position(back as u64);
        if back == n {
            reconnect_ms = Some(dropped.elapsed().as_secs_f64() * 1000.0);
            break;
        }
        if Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    b.finish_and_clear();
    let snapshot: Vec<u64> = (0..clients.run.channels.len())
        .map(|c| clients.run.channels.published(c))
        .collect();
    let mut recovery_ms = None;
    // A system without resume cannot catch up on what was published while its clients were
    // away: waiting for it would only pass the deadline.
    if reconnect_ms.is_some() && target.system.resumes() {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            // A publish the node refused was never stored: nobody is behind for lacking it.
            let refused: Vec<_> = (0..clients.run.channels.len())
                .map(|ch| clients.run.channels.refused(ch))
                .collect();
            let behind = clients.states.iter().any(|s| {
                let trackers = s.trackers.lock();
                trackers
                    .iter()
                    .zip(&s.subs)
                    .any(|(t, ch)| t.behind(snapshot[*ch], &refused[*ch]))
            });
            if !behind {
                recovery_ms = Some(dropped.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    clients.stop_publishing(Duration::from_secs(5)).await;
    let losses = clients.drain(Duration::from_secs(15)).await;
    let (errors, error_samples) = clients.errors();
    let not_recovered = Counters::get(&clients.run.counters.not_recovered);
    clients.stop().await;
    StormResult {
        clients: n,
        publish_rate: rate,
        reconnect_ms,
        recovery_ms,
        not_recovered,
        losses,
        errors,
        error_samples,
    }
}
