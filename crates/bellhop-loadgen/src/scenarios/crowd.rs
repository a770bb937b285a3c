//! The crowd of clients a workload drives: each client's user (and token), source address and
//! plan, started behind a gate on handshakes in flight; how many are ready, how the publish rate
//! is set, what a drain finds missing, and the errors they met; and waiting for the server to go
//! quiet before a measurement. It measures nothing itself: the workloads in `mod.rs` do.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use bellhop_gateway::auth::{mint, Claims};
use bellhop_protocol::Role;
use indicatif::ProgressBar;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::client::{self, Channels, Command, Plan, Run, State};
use crate::stats::{Counters, ProcSet, Tracker};
use crate::systems::{System, User, WireOptions};

use super::{Losses, Target, PAD, PROPERTY};

/// Connections per source address before the next one (127.0.0.2, 127.0.0.3, ...) is used:
/// below the ~28,000 ephemeral ports of one address pair.
const PER_SOURCE_ADDRESS: usize = 20_000;
/// Handshakes in flight at once.
const HANDSHAKES_IN_FLIGHT: usize = 256;

fn user(target: &Target, n: usize) -> User {
    let id = format!("lg-{n}");
    let token = if target.system == System::Bellhop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let claims = Claims {
            sub: id.clone(),
            role: Role::Staff,
            prop: PROPERTY.to_owned(),
            rooms: Vec::new(),
            depts: Vec::new(),
            exp: now + 6 * 3600,
            iat: Some(now),
            nbf: None,
            iss: None,
            aud: None,
        };
        mint(target.secret.as_bytes(), &claims).unwrap_or_default()
    } else {
        String::new()
    };
    User { id, token }
}

/// The source address of client `n`.
fn local_addr(n: usize) -> IpAddr {
    let k = u8::try_from(n / PER_SOURCE_ADDRESS + 2).unwrap_or(254);
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, k))
}

/// The clients of one workload, running.
pub(super) struct Clients {
    /// What they share: the wire, the channels, the counters, the handshake gate and the
    /// command every client follows.
    pub(super) run: Arc<Run>,
    /// Each client's state, in client order.
    pub(super) states: Vec<Arc<State>>,
    /// Their tasks.
    pub(super) tasks: JoinSet<()>,
    /// The publish rate every publisher follows (publishes per second, each).
    pub(super) rate: watch::Sender<f64>,
}
/// What one client does: the channels it subscribes to and those it publishes to.
pub(super) struct PlanSpec {
    /// Channel numbers it subscribes to.
    pub(super) subs: Vec<usize>,
    /// Channel numbers it publishes to (none: it only listens).
    pub(super) publishes: Vec<usize>,
}
pub(super) fn start(
    target: &Target,
    channels: Vec<String>,
    wire: WireOptions,
    specs: Vec<PlanSpec>,
) -> Clients {
    let (control, _) = watch::channel(Command::Run);
    let run = Arc::new(Run {
        system: target.system,
        wire,
        channels: Channels::new(channels),
        counters: Counters::default(),
        pad: PAD,
        gate: Semaphore::new(HANDSHAKES_IN_FLIGHT),
        control,
    });
    let (rate, rate_rx) = watch::channel(0.0);
    let mut tasks = JoinSet::new();
    let mut states = Vec::with_capacity(specs.len());
    for (n, spec) in specs.into_iter().enumerate() {
        let plan = Plan {
            number: u32::try_from(n).unwrap_or(u32::MAX),
            user: user(target, n),
            url: target.urls[n % target.urls.len()].clone(),
            local: local_addr(n),
            rate: (!spec.publishes.is_empty()).then(|| rate_rx.clone()),
            subs: spec.subs,
            publishes: spec.publishes,
        };
        let state = Arc::new(State::new(&plan.subs));
        states.push(state.clone());
        tasks.spawn(client::run(run.clone(), plan, state));
    }
    Clients {
        run,
        states,
        tasks,
        rate,
    }
}

impl Clients {
    pub(super) fn ready(&self) -> u64 {
        Counters::get(&self.run.counters.ready)
    }

    /// Waits until `n` clients are connected and subscribed; false at the deadline.
    pub(super) async fn wait_ready(&self, n: usize, within: Duration, bar: &ProgressBar) -> bool {
        let deadline = Instant::now() + within;
        let mut samples = Vec::new();
        self.wait_ready_sampling(n, deadline, bar, None, &mut samples)
            .await
    }

    pub(super) async fn wait_ready_sampling(
        &self,
        n: usize,
        deadline: Instant,
        bar: &ProgressBar,
        procs: Option<&ProcSet>,
        samples: &mut Vec<(u64, u64)>,
    ) -> bool {
        let mut next_sample = 0u64;
        let step = (n as u64 / 20).max(1);
        loop {
            let ready = self.ready();
            bar.set_position(ready);
            if let Some(procs) = procs {
                if ready >= next_sample {
                    samples.push((ready, procs.sample().rss));
                    next_sample = ready + step;
                }
            }
            if ready >= n as u64 {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Calls `f` with every subscriber's tracker of every channel it subscribes to, and how many
    /// messages were published on that channel.
    pub(super) fn for_each_tracker(&self, mut f: impl FnMut(&Tracker, u64, &BTreeSet<u64>)) {
        let refused: Vec<BTreeSet<u64>> = (0..self.run.channels.len())
            .map(|ch| self.run.channels.refused(ch))
            .collect();
        for state in &self.states {
            let trackers = state.trackers.lock();
            for (t, ch) in trackers.iter().zip(&state.subs) {
                f(t, self.run.channels.published(*ch), &refused[*ch]);
            }
        }
    }

    /// Sets every publisher's rate to zero and waits (at most `within`) until each has seen it:
    /// a publish already under way when the rate changed is then counted, so a drain that
    /// follows compares what arrived with everything that was published.
    pub(super) async fn stop_publishing(&self, within: Duration) {
        let _ = self.rate.send(0.0);
        let deadline = Instant::now() + within;
        while self
            .states
            .iter()
            .any(|s| s.publishing.load(std::sync::atomic::Ordering::SeqCst))
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Waits until nothing published is missing, or nothing has arrived for [`QUIET`] (what is
    /// missing then is not coming: a peer without resume lost it), or `within` passed; exact
    /// losses afterwards.
    pub(super) async fn drain(&self, within: Duration) -> Losses {
        let deadline = Instant::now() + within;
        let delivered = || Counters::get(&self.run.counters.delivered);
        let (mut seen, mut since) = (delivered(), Instant::now());
        loop {
            let mut behind = 0;
            self.for_each_tracker(|t, published, refused| {
                behind += published.saturating_sub(t.distinct() + refused.len() as u64);
            });
            let now = Instant::now();
            if delivered() != seen {
                (seen, since) = (delivered(), now);
            }
            if behind == 0 || now >= deadline || now.duration_since(since) >= QUIET {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut losses = Losses {
            refused: self
                .run
                .counters
                .refused
                .load(std::sync::atomic::Ordering::Relaxed),
            ..Losses::default()
        };
        self.for_each_tracker(|t, published, refused| {
            losses.lost += t.missing(published, refused);
            losses.duplicated += t.duplicated;
            losses.out_of_order += t.out_of_order;
        });
        losses
    }

    pub(super) async fn stop(mut self) {
        let _ = self.rate.send(0.0);
        self.run.control.send_replace(Command::Stop);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while tokio::time::timeout_at(deadline, self.tasks.join_next())
            .await
            .ok()
            .flatten()
            .is_some()
        {}
        self.tasks.abort_all();
    }

    pub(super) fn errors(&self) -> (u64, Vec<String>) {
        (
            Counters::get(&self.run.counters.errors),
            self.run.counters.samples.lock().clone(),
        )
    }
}

/// Waits until the server is quiet (under 5 % of a core over a quarter of a second; at most
/// 60 s) before a measurement begins, so that work left over from the connection phase (for
/// Bellhop: presence notices to everyone already in the channel) is not measured as latency.
/// Returns how long the server stayed busy, in ms: a figure of its own.
pub(super) async fn settle(procs: &ProcSet) -> f64 {
    let start = Instant::now();
    let mut previous = procs.sample();
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = procs.sample();
        if now.cores_since(&previous) < 0.05 || start.elapsed() > Duration::from_secs(60) {
            return start.elapsed().as_secs_f64() * 1000.0;
        }
        previous = now;
    }
}

/// How long [`Clients::drain`] waits with no delivery arriving before it counts what is missing.
const QUIET: Duration = Duration::from_secs(3);
