//! The connection driver: one task per simulated client owns its socket, runs the system's
//! [`Wire`] codec, publishes on an open-loop schedule and records what arrives.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures_util::{SinkExt, StreamExt};
use std::collections::BTreeSet;

use parking_lot::Mutex;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{watch, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::stats::{self, Counters, Tracker};
use crate::systems::{Event, Payload, Sub, System, User, Wire, WireOptions};

/// How long a handshake (connect, authenticate, subscribe) may take before it counts as failed.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// The channels of a run and how many messages were published on each.
#[derive(Debug)]
pub struct Channels {
    names: Vec<String>,
    published: Vec<AtomicU64>,
    /// Per channel, the sequence numbers the system refused (not stored: nobody misses them).
    refused: Vec<Mutex<BTreeSet<u64>>>,
}

impl Channels {
    /// A table of channels (Bellhop names).
    pub fn new(names: Vec<String>) -> Self {
        let published = names.iter().map(|_| AtomicU64::new(0)).collect();
        let refused = names.iter().map(|_| Mutex::new(BTreeSet::new())).collect();
        Self {
            names,
            published,
            refused,
        }
    }

    /// The channel's name.
    pub fn name(&self, id: usize) -> &str {
        &self.names[id]
    }

    /// Messages published on the channel so far.
    pub fn published(&self, id: usize) -> u64 {
        self.published[id].load(Ordering::Acquire)
    }

    /// Records that the system refused the publish `seq` of `channel`.
    pub fn refuse(&self, channel: usize, seq: u64) {
        if let Some(r) = self.refused.get(channel) {
            r.lock().insert(seq);
        }
    }

    /// The sequence numbers refused on the channel so far.
    pub fn refused(&self, id: usize) -> BTreeSet<u64> {
        self.refused[id].lock().clone()
    }

    /// Number of channels.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// What the scenario tells every client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Stay connected (reconnect after a failure).
    Run,
    /// Drop the connection without a closing handshake and reconnect, resuming where the
    /// system supports it. The number tells storms apart. Publishers ignore it.
    Reconnect(u32),
    /// Close and end.
    Stop,
}

/// Everything the clients of one run share.
#[derive(Debug)]
pub struct Run {
    /// The system under test.
    pub system: System,
    /// Codec options.
    pub wire: WireOptions,
    /// The channel table.
    pub channels: Channels,
    /// Counters.
    pub counters: Counters,
    /// Payload padding, bytes.
    pub pad: usize,
    /// Limits handshakes in flight, so the measured connect rate is not a SYN-backlog overflow.
    pub gate: Semaphore,
    /// What clients should do.
    pub control: watch::Sender<Command>,
}

/// One simulated client.
#[derive(Debug)]
pub struct Plan {
    /// Its number, also its publisher number in payloads.
    pub number: u32,
    /// Who it is.
    pub user: User,
    /// The WebSocket base URL of the node it uses.
    pub url: String,
    /// Its source address (127.0.0.2, 127.0.0.3, ...).
    pub local: IpAddr,
    /// Channel ids it subscribes to.
    pub subs: Vec<usize>,
    /// Channel ids it publishes to, in turn.
    pub publishes: Vec<usize>,
    /// Its publish rate in messages per second (0: none), changeable during the run.
    pub rate: Option<watch::Receiver<f64>>,
}

/// What a client's task shares with the scenario.
#[derive(Debug, Default)]
pub struct State {
    /// The channel ids it subscribes to (`Plan::subs`).
    pub subs: Vec<usize>,
    /// Per subscribed channel, in `Plan::subs` order.
    pub trackers: Mutex<Vec<Tracker>>,
    /// The last offset received per subscribed channel (Bellhop, when tracked).
    pub offsets: Mutex<Vec<Option<String>>>,
    /// Connected and every subscription confirmed.
    pub subscribed: AtomicBool,
    /// Times the client connected and subscribed.
    pub sessions: AtomicU64,
    /// Publishes sent and not yet answered, in the order sent (kept only with
    /// [`WireOptions::resend_unanswered`]).
    pub unanswered: Mutex<Unanswered>,
    /// The client may publish: it is connected and follows a rate above zero. Raised before it
    /// reads the rate and lowered once it has read a zero rate or lost its connection, so that
    /// once the rate is zero and every publisher's flag is down, every publish is counted in
    /// [`Channels::published`] and no more will be ([`Publishing`]).
    pub publishing: AtomicBool,
}

/// Lowers [`State::publishing`] when a session ends, however it ends.
struct Publishing<'a>(&'a AtomicBool);

impl Publishing<'_> {
    /// Reads the rate: raises the flag first, lowers it again if the rate is zero.
    fn read(&self, rate: &mut Option<watch::Receiver<f64>>) -> f64 {
        self.0.store(true, Ordering::SeqCst);
        let per_second = rate.as_mut().map_or(0.0, |r| *r.borrow_and_update());
        self.0.store(per_second > 0.0, Ordering::SeqCst);
        per_second
    }
}

impl Publishing<'_> {
    /// Lowers the flag: no more publishes in this session.
    fn stop(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

impl Drop for Publishing<'_> {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Publishes awaiting their answer (an `ack` or a refusal), oldest first.
#[derive(Debug, Default)]
pub struct Unanswered {
    /// By send number: the publish id and its frame.
    sent: std::collections::BTreeMap<u64, (u64, Message)>,
    /// Send number by publish id.
    by_id: std::collections::HashMap<u64, u64>,
    next: u64,
}

impl Unanswered {
    fn sent(&mut self, id: u64, message: Message) {
        let n = self.next;
        self.next += 1;
        if let Some(old) = self.by_id.insert(id, n) {
            self.sent.remove(&old);
        }
        self.sent.insert(n, (id, message));
    }

    fn answered(&mut self, id: u64) {
        if let Some(n) = self.by_id.remove(&id) {
            self.sent.remove(&n);
        }
    }

    /// The unanswered publishes, oldest first, to send again.
    fn pending(&self) -> Vec<(u64, Message)> {
        self.sent.values().cloned().collect()
    }

    /// How many wait for an answer.
    pub fn len(&self) -> usize {
        self.sent.len()
    }

    /// Whether none does.
    pub fn is_empty(&self) -> bool {
        self.sent.is_empty()
    }
}

impl State {
    /// Fresh state for a client subscribing to the channel ids `subs`.
    pub fn new(subs: &[usize]) -> Self {
        Self {
            subs: subs.to_vec(),
            trackers: Mutex::new(subs.iter().map(|_| Tracker::default()).collect()),
            offsets: Mutex::new(vec![None; subs.len()]),
            ..Self::default()
        }
    }
}

type Ws = WebSocketStream<TcpStream>;

enum End {
    Stop,
    Reconnect,
    Failed(anyhow::Error),
}

/// Runs one client until [`Command::Stop`].
pub async fn run(run: Arc<Run>, plan: Plan, state: Arc<State>) {
    let mut control = run.control.subscribe();
    let mut rate = plan.rate.clone();
    let mut seen_reconnect = match *control.borrow() {
        Command::Reconnect(n) => n,
        _ => 0,
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        if *control.borrow() == Command::Stop {
            return;
        }
        let mut wire = run.system.wire(&run.wire);
        let opened = open(&run, &plan, &state, wire.as_mut()).await;
        let (mut ws, chans) = match opened {
            Ok(v) => v,
            Err(e) => {
                run.counters.error(format!("client {}: {e:#}", plan.number));
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
        };
        backoff = Duration::from_millis(50);
        state.subscribed.store(true, Ordering::Release);
        state.sessions.fetch_add(1, Ordering::Relaxed);
        run.counters.ready.fetch_add(1, Ordering::Relaxed);
        let end = session(
            &run,
            &plan,
            &state,
            wire.as_mut(),
            &mut ws,
            &chans,
            &mut control,
            &mut rate,
            &mut seen_reconnect,
        )
        .await;
        state.subscribed.store(false, Ordering::Release);
        run.counters.ready.fetch_sub(1, Ordering::Relaxed);
        match end {
            End::Stop => {
                let _ = tokio::time::timeout(Duration::from_secs(2), ws.close(None)).await;
                return;
            }
            // Dropping the socket: no closing handshake, as when a network path fails.
            End::Reconnect => drop(ws),
            End::Failed(e) => {
                run.counters
                    .error(format!("client {}: connection lost: {e:#}", plan.number));
                drop(ws);
            }
        }
    }
}

/// Connects, completes the system's handshake and confirms every subscription.
async fn open(
    run: &Run,
    plan: &Plan,
    state: &State,
    wire: &mut dyn Wire,
) -> anyhow::Result<(Ws, Vec<String>)> {
    let _permit = run.gate.acquire().await?;
    let chans: Vec<String> = plan
        .subs
        .iter()
        .map(|id| run.channels.name(*id).to_owned())
        .collect();
    let url = wire.url(&plan.url, &plan.user);
    let handshake = async {
        let stream = connect_from(&url, plan.local).await?;
        let config = WebSocketConfig::default()
            .read_buffer_size(16 * 1024)
            .write_buffer_size(0);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url.as_str(), stream, Some(config))
                .await
                .with_context(|| format!("WebSocket handshake with {url}"))?;
        for m in wire.hello(&plan.user) {
            ws.feed(m).await?;
        }
        ws.flush().await?;
        let mut events = Vec::new();
        let mut ready = false;
        while !ready {
            let m = next(&mut ws).await?;
            wire.decode(&m, &chans, &mut events);
            for e in events.drain(..) {
                match e {
                    Event::Ready => ready = true,
                    Event::Reply(r) => ws.send(r).await?,
                    Event::Error(e) => bail!("handshake refused: {e}"),
                    _ => {}
                }
            }
        }
        let subs: Vec<Sub> = {
            let offsets = state.offsets.lock();
            chans
                .iter()
                .zip(offsets.iter())
                .map(|(channel, since)| Sub {
                    channel: channel.clone(),
                    since: since.clone(),
                })
                .collect()
        };
        if !subs.is_empty() {
            for m in wire.subscribe(&subs) {
                ws.feed(m).await?;
            }
            ws.flush().await?;
        }
        let mut confirmed = vec![false; subs.len()];
        while confirmed.iter().any(|c| !c) {
            let m = next(&mut ws).await?;
            wire.decode(&m, &chans, &mut events);
            for e in events.drain(..) {
                match e {
                    Event::Subscribed {
                        index,
                        recovered,
                        offset,
                    } => {
                        if let Some(c) = confirmed.get_mut(index) {
                            *c = true;
                        }
                        // Resume from the subscription's position when no message arrived
                        // since (a quiet channel): otherwise what is published while the client
                        // is away would be skipped by a plain subscribe.
                        if let Some(offset) = offset {
                            if let Some(slot) = state.offsets.lock().get_mut(index) {
                                if slot.is_none() {
                                    *slot = Some(offset);
                                }
                            }
                        }
                        let resumed = subs.get(index).is_some_and(|s| s.since.is_some());
                        if resumed && recovered == Some(false) {
                            run.counters.not_recovered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    other => handle(run, state, &mut ws, other).await?,
                }
            }
        }
        Ok::<_, anyhow::Error>(ws)
    };
    let ws = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
        .await
        .map_err(|_| anyhow!("handshake took longer than {HANDSHAKE_TIMEOUT:?}"))??;
    Ok((ws, chans))
}

/// A TCP connection to the URL's host and port from `local`.
async fn connect_from(url: &str, local: IpAddr) -> anyhow::Result<TcpStream> {
    let uri: tokio_tungstenite::tungstenite::http::Uri = url.parse()?;
    let host = uri.host().ok_or_else(|| anyhow!("{url} has no host"))?;
    let port = uri.port_u16().unwrap_or(80);
    let ip: IpAddr = host
        .parse()
        .with_context(|| format!("{host} is not an IP address (loopback only)"))?;
    let socket = bind_source(local)?;
    let stream = socket
        .connect(SocketAddr::new(ip, port))
        .await
        .with_context(|| format!("connecting to {ip}:{port} from {local}"))?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Source ports are handed out in turn from this range rather than left to the kernel: binding
/// to port 0 makes the kernel search its bind table for a free port, and with tens of thousands
/// of sockets on one address that search cost more CPU than the rest of a handshake (the
/// profile in docs/BENCHMARKS.md). `SO_REUSEADDR` lets a port whose last connection is in
/// TIME_WAIT be bound again (every scenario talks to fresh servers on new ports, so the old
/// connection's addresses never repeat); a port still in use is skipped.
const SOURCE_PORTS: std::ops::Range<u16> = 10_000..60_000;

fn bind_source(local: IpAddr) -> anyhow::Result<TcpSocket> {
    static NEXT: std::sync::OnceLock<AtomicU64> = std::sync::OnceLock::new();
    // Each run starts at another point of the range, away from the ports the previous run
    // left in TIME_WAIT.
    let next = NEXT.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::from(d.subsec_nanos()));
        AtomicU64::new(nanos ^ u64::from(std::process::id()).wrapping_mul(7919))
    });
    let span = u64::from(SOURCE_PORTS.end - SOURCE_PORTS.start);
    let mut last = None;
    for _ in 0..256 {
        let offset = next.fetch_add(1, Ordering::Relaxed) % span;
        let port = SOURCE_PORTS.start + u16::try_from(offset).unwrap_or(0);
        let socket = TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        match socket.bind(SocketAddr::new(local, port)) {
            Ok(()) => return Ok(socket),
            Err(e) => last = Some(e),
        }
    }
    Err(anyhow!(
        "no free source port on {local} after 256 tries: {last:?}"
    ))
}

async fn next(ws: &mut Ws) -> anyhow::Result<Message> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(frame))) => bail!("closed by the server: {frame:?}"),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            Some(Ok(m)) => return Ok(m),
            Some(Err(e)) => return Err(e.into()),
            None => bail!("connection ended"),
        }
    }
}

/// Records a delivery or acts on a control event.
async fn handle(run: &Run, state: &State, ws: &mut Ws, event: Event) -> anyhow::Result<()> {
    match event {
        Event::Delivery(d) => {
            stats::record_latency(stats::now_us().saturating_sub(d.payload.t));
            run.counters.delivered.fetch_add(1, Ordering::Relaxed);
            if let Some(t) = state.trackers.lock().get_mut(d.index) {
                t.note(d.payload.p, d.payload.s);
            }
            if let Some(offset) = d.offset {
                if let Some(slot) = state.offsets.lock().get_mut(d.index) {
                    *slot = Some(offset);
                }
            }
        }
        Event::Reply(r) => ws.send(r).await?,
        Event::Error(e) => run.counters.error(e),
        Event::Acked { id } => state.unanswered.lock().answered(id),
        Event::Refused { id, reason } => {
            state.unanswered.lock().answered(id);
            let (channel, seq) = crate::systems::publish_of(id);
            run.channels.refuse(channel, seq);
            run.counters.refused.fetch_add(1, Ordering::Relaxed);
            run.counters.error(reason);
        }
        Event::Ready | Event::Subscribed { .. } => {}
    }
    Ok(())
}

/// The connected part: read, publish on schedule, obey the scenario.
#[allow(clippy::too_many_arguments)]
async fn session(
    run: &Run,
    plan: &Plan,
    state: &State,
    wire: &mut dyn Wire,
    ws: &mut Ws,
    chans: &[String],
    control: &mut watch::Receiver<Command>,
    rate: &mut Option<watch::Receiver<f64>>,
    seen_reconnect: &mut u32,
) -> End {
    let mut events = Vec::new();
    let flag = Publishing(&state.publishing);
    let mut per_second = flag.read(rate);
    // Publishers start at different points of their period, so that many slow publishers add
    // up to a steady rate rather than synchronised bursts.
    let phase = (f64::from(plan.number) * 0.618_033_988_749_895).fract();
    let first_due = |per_second: f64| {
        let offset = if per_second > 0.0 {
            phase / per_second
        } else {
            0.0
        };
        Instant::now() + Duration::from_secs_f64(offset)
    };
    let mut due = first_due(per_second);
    let mut turn = 0usize;
    if run.wire.resend_unanswered {
        // What the last connection sent without an answer may or may not be stored: sent again
        // first (same idempotency key, so stored at most once), before anything newer.
        let pending = state.unanswered.lock().pending();
        for (_, message) in pending {
            if let Err(e) = ws.feed(message).await {
                return End::Failed(e.into());
            }
        }
        if let Err(e) = ws.flush().await {
            return End::Failed(e.into());
        }
    }
    loop {
        let publishing = per_second > 0.0 && !plan.publishes.is_empty();
        let due_now = due;
        let tick = async move {
            if publishing {
                tokio::time::sleep_until(due_now).await;
            } else {
                std::future::pending::<()>().await;
            }
        };
        let rate_changed = async {
            match rate.as_mut() {
                Some(r) => r.changed().await.is_ok(),
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            m = ws.next() => {
                let m = match m {
                    Some(Ok(Message::Close(frame))) => {
                        return End::Failed(anyhow!("closed by the server: {frame:?}"))
                    }
                    Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m,
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => return End::Failed(e.into()),
                    None => return End::Failed(anyhow!("connection ended")),
                };
                wire.decode(&m, chans, &mut events);
                for e in events.drain(..) {
                    if let Err(e) = handle(run, state, ws, e).await {
                        return End::Failed(e);
                    }
                }
            }
            () = tick => {
                let channel = plan.publishes[turn % plan.publishes.len()];
                turn += 1;
                let seq = run.channels.published[channel].fetch_add(1, Ordering::AcqRel);
                let t = u64::try_from(due.saturating_duration_since(stats::epoch()).as_micros()).unwrap_or(0);
                let payload = Payload { t, s: seq, p: plan.number }.encode(run.pad);
                let id = crate::systems::publish_id(channel, seq);
                let message = wire.publish(run.channels.name(channel), &payload, id);
                if run.wire.resend_unanswered {
                    state.unanswered.lock().sent(id, message.clone());
                }
                if let Err(e) = ws.send(message).await {
                    return End::Failed(e.into());
                }
                run.counters.published.fetch_add(1, Ordering::Relaxed);
                due += Duration::from_secs_f64(1.0 / per_second);
            }
            ok = rate_changed => {
                if ok {
                    per_second = flag.read(rate);
                    due = first_due(per_second);
                } else {
                    *rate = None;
                    per_second = 0.0;
                    flag.stop();
                }
            }
            changed = control.changed() => {
                if changed.is_err() {
                    return End::Stop;
                }
                let command = *control.borrow_and_update();
                match command {
                    Command::Stop => return End::Stop,
                    Command::Reconnect(n) if n != *seen_reconnect => {
                        *seen_reconnect = n;
                        if plan.publishes.is_empty() {
                            return End::Reconnect;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_publisher_is_publishing_only_while_connected_at_a_rate_above_zero() {
        let (tx, rx) = watch::channel(200.0);
        let mut rate = Some(rx);
        let flag = AtomicBool::new(false);
        {
            let session = Publishing(&flag);
            assert_eq!(session.read(&mut rate), 200.0);
            assert!(flag.load(Ordering::SeqCst));
            tx.send(0.0).unwrap();
            assert!(rate.as_ref().unwrap().has_changed().unwrap());
            assert_eq!(session.read(&mut rate), 0.0);
            assert!(!flag.load(Ordering::SeqCst));
            // The change was consumed: the session does not see it again.
            assert!(!rate.as_ref().unwrap().has_changed().unwrap());
            tx.send(50.0).unwrap();
            assert_eq!(session.read(&mut rate), 50.0);
            assert!(flag.load(Ordering::SeqCst));
        }
        // The session ended (its connection lost): it publishes nothing until the next one.
        assert!(!flag.load(Ordering::SeqCst));
    }

    #[test]
    fn unanswered_publishes_are_sent_again_oldest_first_until_answered() {
        let mut u = Unanswered::default();
        for id in [30, 10, 20] {
            u.sent(id, Message::text(id.to_string()));
        }
        u.answered(10);
        // Sent again after a reconnect: still unanswered, now the newest.
        u.sent(30, Message::text("30 again"));
        let order: Vec<u64> = u.pending().into_iter().map(|(id, _)| id).collect();
        assert_eq!(order, [20, 30]);
        u.answered(20);
        u.answered(30);
        u.answered(99);
        assert!(u.is_empty());
    }
}
