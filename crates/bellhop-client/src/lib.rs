//! The Rust client for Bellhop, with the semantics of the TypeScript SDK (`clients/typescript`):
//!
//! - connection states ([`State`]: `Disconnected`, `Connecting`, `Connected`, `Closed`) on a
//!   [`tokio::sync::watch`], and every transition and notable thing as an [`Event`] on a
//!   [`tokio::sync::broadcast`];
//! - the token as a string or an async callback ([`Token`]) that is called again before the
//!   token expires (an `auth` frame on the open connection, no reconnect) and after a `4001`;
//! - reconnects with full-jitter exponential backoff, decided by the close code
//!   ([`backoff::plan_after_close`]), across every node URL given;
//! - subscriptions ([`Subscription`]) that own the offset of the last message they delivered,
//!   resubscribe with `since` after any reconnect, drop anything at or before it, and surface
//!   `recovered: false` as [`SubEvent::RecoveryFailed`];
//! - [`Client::publish`] resolving with the stored message's ack, with an idempotency key that
//!   every retry (`unavailable`, `rate_limited`, timeouts, lost connections) reuses;
//! - history with paging (`more`), presence, throttled typing, read markers.
//!
//! All JSON; frames are the protocol crate's types.

pub mod backoff;
pub mod token;
pub mod transport;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bellhop_protocol::{
    close, Channel, ClientFrame, Codec, Envelope, ErrorCode, HistoryEntry, Offset, Priority,
    PublishFrame, Request, ServerFrame, Welcome,
};
use futures_util::{SinkExt, StreamExt};
use parking_lot::{Mutex, MutexGuard};
use rand::SeedableRng;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

pub use backoff::{Backoff, Plan};
pub use bellhop_protocol as protocol;

/// An async function returning a fresh token (`Err`: the user has no session; the client stops).
pub type TokenFn =
    Arc<dyn Fn() -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>> + Send + Sync>;

/// Where the client's token comes from.
#[derive(Clone)]
pub enum Token {
    /// Used as is; when it expires the node closes with `4001` and the client stops.
    Fixed(String),
    /// Called when connecting without a usable token, before the token's `exp`, after a `4001`.
    Callback(TokenFn),
}

impl Token {
    /// A token callback from an async closure.
    pub fn callback<F, Fut>(f: F) -> Token
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, String>> + Send + 'static,
    {
        Token::Callback(Arc::new(move || Box::pin(f())))
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Token::Fixed(_) => f.write_str("Token::Fixed(..)"),
            Token::Callback(_) => f.write_str("Token::Callback(..)"),
        }
    }
}

/// How the client behaves.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Node URLs (`ws://` or `wss://`); after a failure the next one is tried.
    pub urls: Vec<String>,
    /// The token or the function that gets one.
    pub token: Token,
    /// Reconnect timing.
    pub backoff: Backoff,
    /// A reply must come within this (default 10 s).
    pub request_timeout: Duration,
    /// Opening and authenticating must finish within this (default 10 s).
    pub connect_timeout: Duration,
    /// A publish gives up after this long (default 60 s) ...
    pub publish_deadline: Duration,
    /// ... or this many sends (default 10).
    pub publish_max_attempts: u32,
    /// Re-authenticate this long before `exp` (default: a minute, or a tenth of the lifetime).
    pub token_refresh_lead: Option<Duration>,
    /// At most one `typing` per channel this often (default 3 s).
    pub typing_throttle: Duration,
    /// TLS configuration for `wss://` (default: the public web CAs).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Seed of the jitter's random source (tests fix it; default from the OS).
    pub seed: Option<u64>,
    /// Events a subscription buffers before the connection waits for the app to read them
    /// (default 1,024). A slow reader slows the connection, and the node may then close it with
    /// `4008`; the subscription resumes from its offset.
    pub subscription_buffer: usize,
}

impl ClientOptions {
    /// Options with the defaults for `urls` and `token`.
    pub fn new(urls: impl IntoIterator<Item = impl Into<String>>, token: Token) -> Self {
        ClientOptions {
            urls: urls.into_iter().map(Into::into).collect(),
            token,
            backoff: Backoff::default(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(10),
            publish_deadline: Duration::from_secs(60),
            publish_max_attempts: 10,
            token_refresh_lead: None,
            typing_throttle: Duration::from_secs(3),
            tls: None,
            seed: None,
            subscription_buffer: 1024,
        }
    }
}

/// The connection's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Not connected and not trying: before `connect()`, after `disconnect()`, or after a close
    /// that forbids reconnecting.
    Disconnected,
    /// Opening a connection, or waiting to reconnect.
    Connecting,
    /// Welcomed by a node.
    Connected,
    /// `close()` was called: for good.
    Closed,
}

/// Something that happened to the client.
#[derive(Clone, Debug)]
pub enum Event {
    /// The state changed.
    State {
        /// Before.
        old: State,
        /// After.
        new: State,
    },
    /// A node welcomed the client.
    Connected {
        /// The node's URL.
        url: String,
        /// The welcome (session id, node, user, role, property, heartbeat).
        welcome: Welcome,
    },
    /// A reconnect is scheduled.
    Reconnecting {
        /// The close code that ended the connection (`1006`: no close frame, or a failed attempt).
        code: u16,
        /// Why.
        reason: String,
        /// The wait before the attempt.
        delay: Duration,
        /// Failed attempts since the last welcome.
        attempt: u32,
        /// Where the attempt goes.
        url: String,
    },
    /// Stopped: `disconnect()`, or a close that forbids reconnecting.
    Disconnected {
        /// The close code.
        code: u16,
        /// Why.
        reason: String,
    },
    /// `close()`.
    Closed,
    /// The connection re-authenticated with a fresh token.
    TokenRefreshed {
        /// The new token's `exp`.
        exp: Option<u64>,
    },
    /// A request failed and will be sent again after `delay`.
    Retry {
        /// The request's frame type (`publish`, `history`, ...).
        request: &'static str,
        /// Sends so far.
        attempt: u32,
        /// Why it failed.
        error: Error,
        /// The wait before the next send (then, if needed, the wait for a connection).
        delay: Duration,
    },
    /// A failure: `token`, `refresh`, `transport`, `server` (an `error` frame without id).
    Error {
        /// Where.
        kind: &'static str,
        /// What.
        message: String,
    },
}

/// Why a request failed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The node answered with an `error` frame.
    #[error("{}: {message}", code.as_str())]
    Server {
        /// The error code.
        code: ErrorCode,
        /// The node's message.
        message: String,
        /// When to retry.
        retry_after: Option<Duration>,
    },
    /// No reply in time.
    #[error("no reply within the timeout")]
    Timeout,
    /// The connection ended before the reply, or there is none.
    #[error("not connected")]
    Disconnected,
    /// `close()` was called.
    #[error("the client is closed")]
    Closed,
    /// The request is invalid before it is sent (a bad channel, key, or offset).
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// Whether the same request may succeed later.
    pub fn retryable(&self) -> bool {
        match self {
            Error::Server { code, .. } => code.retryable(),
            Error::Timeout | Error::Disconnected => true,
            Error::Closed | Error::Invalid(_) => false,
        }
    }
}

/// A stored publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishAck {
    /// The stored message's id.
    pub message_id: String,
    /// Its offset.
    pub offset: Offset,
    /// True when the node had already stored a publish with this key (the original's ack).
    pub duplicate: bool,
    /// The key sent.
    pub idempotency_key: String,
    /// How many sends it took.
    pub attempts: u32,
}

/// Optional parts of a publish.
#[derive(Clone, Debug, Default)]
pub struct PublishOptions {
    /// Raise or lower the event's default priority, as the role allows.
    pub priority: Option<Priority>,
    /// Ties this message to an earlier one.
    pub correlation_id: Option<String>,
    /// Default: a random UUID. 1 to 64 characters of `[A-Za-z0-9_.:-]`.
    pub idempotency_key: Option<String>,
    /// Default: [`ClientOptions::publish_deadline`].
    pub deadline: Option<Duration>,
}

/// One page of history.
#[derive(Clone, Debug)]
pub struct HistoryPage {
    /// Oldest first.
    pub messages: Vec<HistoryEntry>,
    /// Newer messages follow the last one.
    pub more: bool,
}

/// A saved read marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadAck {
    /// The marker.
    pub offset: Offset,
    /// Messages still unread after it.
    pub unread: u64,
}

/// A subscription's state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubState {
    /// Not wanted (never subscribed, unsubscribed, refused).
    Unsubscribed,
    /// Wanted, waiting for the node's `subscribed` (or for a connection).
    Subscribing,
    /// Live.
    Subscribed,
}

/// Something that happened on a subscription, in order.
#[derive(Clone, Debug)]
pub enum SubEvent {
    /// The node's `subscribed`.
    Subscribed {
        /// The channel's newest offset when the subscription started.
        offset: Offset,
        /// False when the node could not vouch for every message after `since`.
        recovered: bool,
        /// Unread messages for this user.
        unread: u64,
        /// The `since` sent (`None` on a first subscribe without one).
        since: Option<Offset>,
    },
    /// `recovered: false` after a resume: messages after `since` may be missing; what the node
    /// still holds is replayed next. Reload the gap from your own store.
    RecoveryFailed {
        /// The offset resumed after.
        since: Offset,
        /// The channel's newest offset.
        offset: Offset,
    },
    /// A message, exactly once per offset, in offset order.
    Message {
        /// Its offset.
        offset: Offset,
        /// The message.
        message: Arc<Envelope>,
    },
    /// A user's first connection subscribed.
    Join(String),
    /// A user's last connection left.
    Leave(String),
    /// A user is typing.
    Typing(String),
    /// The node ended the subscription (a re-auth narrowed the rights) or refused it.
    Unsubscribed {
        /// Why.
        reason: String,
    },
    /// A refusal or a transient failure (retried when retryable).
    Error(Error),
}

struct SubInner {
    state: SubState,
    wanted: bool,
    last_offset: Option<Offset>,
    delivered: u64,
    duplicates: u64,
    unread: u64,
    recovered: Option<bool>,
    /// The connection (its number) on which a `subscribe` was last sent: sent once per
    /// connection (a second one would be refused as a repeat).
    sent_on: u64,
}

struct SubShared {
    channel: Channel,
    inner: Mutex<SubInner>,
    tx: mpsc::Sender<SubEvent>,
}

enum Command {
    Connect,
    Disconnect,
    Close,
    Request {
        frame: ClientFrame,
        reply: oneshot::Sender<Result<ServerFrame, Error>>,
    },
    Send(ClientFrame),
    Subscribe(String),
    Unsubscribe(Channel),
    TimedOut(Instant),
    NewToken(Result<String, String>),
}

struct Shared {
    opts: ClientOptions,
    state: watch::Sender<State>,
    events: broadcast::Sender<Event>,
    commands: mpsc::UnboundedSender<Command>,
    subs: Mutex<HashMap<String, Arc<SubShared>>>,
    session: Mutex<Option<Welcome>>,
    typing: Mutex<HashMap<String, Instant>>,
    /// Numbers the connections, from 1.
    connections: std::sync::atomic::AtomicU64,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

impl Shared {
    fn set_state(&self, new: State) {
        let old = self.state.send_replace(new);
        if old != new {
            let _ = self.events.send(Event::State { old, new });
        }
    }

    fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }
}

/// A Bellhop client. Cheap to clone; every clone is the same connection. Create it inside a
/// tokio runtime: it spawns the task that owns the connection.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
    _last: Arc<LastClone>,
}

/// Closes the connection when the last clone of a [`Client`] (and of its subscriptions) is gone.
struct LastClone(mpsc::UnboundedSender<Command>);

impl Drop for LastClone {
    fn drop(&mut self) {
        let _ = self.0.send(Command::Close);
    }
}

/// The largest frame a node accepts (`MAX_FRAME_BYTES`, 64 KiB by default): a bigger one would
/// be closed with `1009`, so it is refused here instead.
const MAX_FRAME_BYTES: usize = 64 * 1024;

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("state", &self.state())
            .field("urls", &self.shared.opts.urls)
            .finish()
    }
}

impl Client {
    /// A client in state `Disconnected`; call [`Client::connect`].
    pub fn new(opts: ClientOptions) -> Client {
        let (commands, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            opts,
            state: watch::channel(State::Disconnected).0,
            events: broadcast::channel(1024).0,
            commands,
            subs: Mutex::new(HashMap::new()),
            session: Mutex::new(None),
            typing: Mutex::new(HashMap::new()),
            connections: std::sync::atomic::AtomicU64::new(0),
        });
        tokio::spawn(drive(shared.clone(), rx));
        Client {
            _last: Arc::new(LastClone(shared.commands.clone())),
            shared,
        }
    }

    fn command(&self, command: Command) {
        let _ = self.shared.commands.send(command);
    }

    /// Starts connecting (and reconnecting until told otherwise).
    pub fn connect(&self) {
        // At once, so that a `ready()` right after this call waits instead of failing.
        if !self.shared.opts.urls.is_empty() && self.state() == State::Disconnected {
            self.shared.set_state(State::Connecting);
        }
        self.command(Command::Connect);
    }

    /// Closes the connection; subscriptions wait and resume on the next `connect()`.
    pub fn disconnect(&self) {
        self.command(Command::Disconnect);
    }

    /// Closes for good: pending requests fail with [`Error::Closed`].
    pub fn close(&self) {
        self.command(Command::Close);
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.shared.state.borrow()
    }

    /// Follows the state.
    pub fn watch_state(&self) -> watch::Receiver<State> {
        self.shared.state.subscribe()
    }

    /// Every event from now on.
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// The current connection's welcome.
    pub fn session(&self) -> Option<Welcome> {
        lock(&self.shared.session).clone()
    }

    /// Waits until connected, at most `timeout`; fails at once if the client stopped.
    pub async fn ready(&self, timeout: Duration) -> Result<(), Error> {
        let mut state = self.watch_state();
        let wait = async {
            loop {
                match *state.borrow_and_update() {
                    State::Connected => return Ok(()),
                    State::Closed => return Err(Error::Closed),
                    State::Disconnected => return Err(Error::Disconnected),
                    State::Connecting => {}
                }
                if state.changed().await.is_err() {
                    return Err(Error::Closed);
                }
            }
        };
        tokio::time::timeout(timeout, wait)
            .await
            .unwrap_or(Err(Error::Timeout))
    }

    /// One request on the current connection, without retrying.
    async fn request(&self, frame: ClientFrame) -> Result<ServerFrame, Error> {
        let (reply, rx) = oneshot::channel();
        let sent = Instant::now();
        self.command(Command::Request { frame, reply });
        match tokio::time::timeout(self.shared.opts.request_timeout, rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(Error::Closed),
            Err(_) => {
                // Nothing received since it was sent: the link is dead, replace it.
                self.command(Command::TimedOut(sent));
                Err(Error::Timeout)
            }
        }
    }

    /// A request retried (after `retryAfterMs`, or once connected again) while it fails with a
    /// retryable error, at most `attempts` sends before `deadline`.
    async fn retrying(
        &self,
        frame: ClientFrame,
        attempts: u32,
        deadline: Instant,
    ) -> (Result<ServerFrame, Error>, u32) {
        let mut sent = 0;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if let Err(e) = self.ready(remaining).await {
                if e != Error::Timeout && e != Error::Closed && remaining > Duration::ZERO {
                    // disconnected: give up at once
                }
                return (Err(e), sent);
            }
            sent += 1;
            let result = self.request(frame.clone()).await;
            let error = match result {
                Ok(frame) => return (Ok(frame), sent),
                Err(e) if !e.retryable() || sent >= attempts => return (Err(e), sent),
                Err(e) => e,
            };
            let wait = match &error {
                Error::Server {
                    retry_after: Some(d),
                    ..
                } => *d,
                Error::Server { .. } => self.shared.opts.backoff.base,
                _ => Duration::ZERO,
            };
            if Instant::now() + wait >= deadline {
                return (Err(error), sent);
            }
            tracing::debug!(attempt = sent, %error, ?wait, "retrying a request");
            self.shared.emit(Event::Retry {
                request: frame.type_name(),
                attempt: sent,
                error: error.clone(),
                delay: wait,
            });
            tokio::time::sleep(wait).await;
        }
    }

    /// Publishes and resolves once the node has stored the message. Retries `unavailable`,
    /// `rate_limited`, `internal`, timeouts and lost connections with the same idempotency key.
    pub async fn publish(
        &self,
        channel: &str,
        event: &str,
        payload: Value,
        options: PublishOptions,
    ) -> Result<PublishAck, Error> {
        let channel = parse_channel(channel)?;
        let key = options
            .idempotency_key
            .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
        if key.is_empty()
            || key.len() > 64
            || !key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.:-".contains(&b))
        {
            return Err(Error::Invalid(
                "idempotency key: 1 to 64 characters of [A-Za-z0-9_.:-]".into(),
            ));
        }
        let frame = ClientFrame::Publish(PublishFrame {
            channel,
            event: event.into(),
            payload,
            priority: options.priority,
            correlation_id: options.correlation_id,
            idempotency_key: Some(key.clone()),
        });
        let deadline = Instant::now()
            + options
                .deadline
                .unwrap_or(self.shared.opts.publish_deadline);
        let (result, attempts) = self
            .retrying(frame, self.shared.opts.publish_max_attempts, deadline)
            .await;
        match result? {
            ServerFrame::Ack {
                message_id: Some(message_id),
                offset,
                duplicate,
                ..
            } => Ok(PublishAck {
                message_id,
                offset,
                duplicate,
                idempotency_key: key,
                attempts,
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// One page of stored messages after `since` (else the newest), at most `limit` (1 to 100).
    pub async fn history(
        &self,
        channel: &str,
        since: Option<Offset>,
        limit: Option<u32>,
    ) -> Result<HistoryPage, Error> {
        let frame = ClientFrame::History {
            channel: parse_channel(channel)?,
            since,
            limit,
        };
        match self.retrying(frame, 3, self.deadline()).await.0? {
            ServerFrame::History { messages, more, .. } => Ok(HistoryPage { messages, more }),
            other => Err(unexpected(&other)),
        }
    }

    /// Every retained message after `since` (from the oldest when `None`), page by page while
    /// the node says `more`.
    pub fn history_pages(&self, channel: &str, since: Option<Offset>, limit: u32) -> HistoryPages {
        HistoryPages {
            client: self.clone(),
            channel: channel.into(),
            since: Some(since.unwrap_or(Offset::ZERO)),
            limit: limit.clamp(1, 100),
            done: false,
        }
    }

    /// Who is on a channel now (sorted user ids).
    pub async fn presence(&self, channel: &str) -> Result<Vec<String>, Error> {
        let frame = ClientFrame::Presence {
            channel: parse_channel(channel)?,
        };
        match self.retrying(frame, 3, self.deadline()).await.0? {
            ServerFrame::Presence { users, .. } => Ok(users),
            other => Err(unexpected(&other)),
        }
    }

    /// Marks a channel read up to `offset` (a marker never moves back).
    pub async fn read(&self, channel: &str, offset: Offset) -> Result<ReadAck, Error> {
        let frame = ClientFrame::Read {
            channel: parse_channel(channel)?,
            offset,
        };
        match self.retrying(frame, 3, self.deadline()).await.0? {
            ServerFrame::Ack { offset, unread, .. } => Ok(ReadAck {
                offset,
                unread: unread.unwrap_or(0),
            }),
            other => Err(unexpected(&other)),
        }
    }

    /// Tells the channel this user is typing; false when throttled or not connected.
    pub fn typing(&self, channel: &str) -> bool {
        let Ok(parsed) = parse_channel(channel) else {
            return false;
        };
        if self.state() != State::Connected {
            return false;
        }
        let now = Instant::now();
        let mut last = lock(&self.shared.typing);
        if last
            .get(channel)
            .is_some_and(|t| now.duration_since(*t) < self.shared.opts.typing_throttle)
        {
            return false;
        }
        last.insert(channel.into(), now);
        self.command(Command::Send(ClientFrame::Typing { channel: parsed }));
        true
    }

    /// A round trip to the node.
    pub async fn ping(&self) -> Result<Duration, Error> {
        let started = Instant::now();
        match self.request(ClientFrame::Ping).await? {
            ServerFrame::Pong { .. } => Ok(started.elapsed()),
            other => Err(unexpected(&other)),
        }
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.shared.opts.request_timeout * 3
    }

    /// Subscribes to `channel`, resuming after `since` when given (a saved offset). One
    /// subscription per channel per client; dropping it unsubscribes.
    pub fn subscribe(&self, channel: &str, since: Option<Offset>) -> Result<Subscription, Error> {
        let parsed = parse_channel(channel)?;
        let (tx, rx) = mpsc::channel(self.shared.opts.subscription_buffer.max(1));
        let sub = Arc::new(SubShared {
            channel: parsed,
            inner: Mutex::new(SubInner {
                state: SubState::Subscribing,
                wanted: true,
                last_offset: since,
                delivered: 0,
                duplicates: 0,
                unread: 0,
                recovered: None,
                sent_on: 0,
            }),
            tx,
        });
        {
            let mut subs = lock(&self.shared.subs);
            if subs.contains_key(channel) {
                return Err(Error::Invalid(format!("already subscribed to {channel}")));
            }
            subs.insert(channel.into(), sub.clone());
        }
        self.command(Command::Subscribe(channel.into()));
        Ok(Subscription {
            client: self.clone(),
            shared: sub,
            rx,
        })
    }
}

/// Pages of history ([`Client::history_pages`]).
#[derive(Debug)]
pub struct HistoryPages {
    client: Client,
    channel: String,
    since: Option<Offset>,
    limit: u32,
    done: bool,
}

impl HistoryPages {
    /// The next page, or `None` after the last.
    pub async fn next(&mut self) -> Option<Result<HistoryPage, Error>> {
        if self.done {
            return None;
        }
        let page = self
            .client
            .history(&self.channel, self.since, Some(self.limit))
            .await;
        match &page {
            Ok(p) => {
                self.done = !p.more || p.messages.is_empty();
                if let Some(last) = p.messages.last() {
                    self.since = Some(last.offset);
                }
            }
            Err(_) => self.done = true,
        }
        Some(page)
    }
}

/// A channel's subscription. Read its events with [`Subscription::next`]; drop it to unsubscribe.
#[derive(Debug)]
pub struct Subscription {
    client: Client,
    shared: Arc<SubShared>,
    rx: mpsc::Receiver<SubEvent>,
}

impl std::fmt::Debug for SubShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubShared")
            .field("channel", &self.channel.to_string())
            .finish()
    }
}

impl Subscription {
    /// The next event (`None` once unsubscribed and drained).
    pub async fn next(&mut self) -> Option<SubEvent> {
        self.rx.recv().await
    }

    /// The channel.
    pub fn channel(&self) -> String {
        self.shared.channel.to_string()
    }

    /// The state.
    pub fn state(&self) -> SubState {
        lock(&self.shared.inner).state
    }

    /// The offset of the last message delivered (or the channel's position when it started):
    /// save it, and pass it as `since` to resume after a restart.
    pub fn last_offset(&self) -> Option<Offset> {
        lock(&self.shared.inner).last_offset
    }

    /// Messages delivered.
    pub fn delivered(&self) -> u64 {
        lock(&self.shared.inner).delivered
    }

    /// Messages dropped because their offset was not after the last one.
    pub fn duplicates_dropped(&self) -> u64 {
        lock(&self.shared.inner).duplicates
    }

    /// Unread messages (from the last `subscribed` or `read`).
    pub fn unread(&self) -> u64 {
        lock(&self.shared.inner).unread
    }

    /// The last `subscribed`'s `recovered`.
    pub fn recovered(&self) -> Option<bool> {
        lock(&self.shared.inner).recovered
    }

    /// Marks the channel read up to the last delivered message.
    pub async fn read(&self) -> Result<ReadAck, Error> {
        let offset = self
            .last_offset()
            .ok_or_else(|| Error::Invalid("nothing delivered yet".into()))?;
        let ack = self.client.read(&self.channel(), offset).await?;
        lock(&self.shared.inner).unread = ack.unread;
        Ok(ack)
    }

    /// Throttled `typing` on this channel.
    pub fn typing(&self) -> bool {
        self.client.typing(&self.channel())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let name = self.shared.channel.to_string();
        let mut subs = lock(&self.client.shared.subs);
        if subs
            .get(&name)
            .is_some_and(|s| Arc::ptr_eq(s, &self.shared))
        {
            subs.remove(&name);
            let _ = self
                .client
                .shared
                .commands
                .send(Command::Unsubscribe(self.shared.channel.clone()));
        }
    }
}

fn parse_channel(channel: &str) -> Result<Channel, Error> {
    channel
        .parse()
        .map_err(|e: bellhop_protocol::ChannelError| Error::Invalid(e.to_string()))
}

fn unexpected(frame: &ServerFrame) -> Error {
    Error::Invalid(format!("unexpected reply: {}", frame.type_name()))
}

fn now_unix() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// How a connection ended.
enum Outcome {
    Ended {
        code: u16,
        reason: String,
        welcomed: bool,
    },
    Stop {
        code: u16,
        reason: String,
    },
    Disconnect,
    Close,
}

/// The task that owns the connection: connects, reconnects, and serves the commands.
async fn drive(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Command>) {
    let mut rng = match shared.opts.seed {
        Some(seed) => rand::rngs::StdRng::seed_from_u64(seed),
        None => rand::rngs::StdRng::from_os_rng(),
    };
    let mut token: Option<String> = None;
    let mut force_new_token = false;
    let mut attempt = 0u32;
    let mut url_index = 0usize;
    let urls = shared.opts.urls.clone();
    if urls.is_empty() {
        shared.emit(Event::Error {
            kind: "transport",
            message: "no node URL given".into(),
        });
    }
    let mut wanted = false;
    loop {
        while !wanted {
            match rx.recv().await {
                None | Some(Command::Close) => return finish(&shared, &mut rx),
                Some(Command::Connect) if !urls.is_empty() => wanted = true,
                Some(Command::Request { reply, .. }) => {
                    let _ = reply.send(Err(Error::Disconnected));
                }
                Some(_) => {}
            }
        }
        shared.set_state(State::Connecting);
        let url = &urls[url_index % urls.len()];
        let outcome = session(
            &shared,
            &mut rx,
            url,
            &mut token,
            &mut force_new_token,
            &mut rng,
        )
        .await;
        *lock(&shared.session) = None;
        for sub in lock(&shared.subs).values() {
            let mut inner = lock(&sub.inner);
            if inner.wanted {
                inner.state = SubState::Subscribing;
            }
        }
        let (code, reason) = match outcome {
            Outcome::Close => return finish(&shared, &mut rx),
            Outcome::Disconnect => {
                wanted = false;
                shared.set_state(State::Disconnected);
                shared.emit(Event::Disconnected {
                    code: close::NORMAL,
                    reason: "disconnect called".into(),
                });
                continue;
            }
            Outcome::Stop { code, reason } => {
                wanted = false;
                shared.set_state(State::Disconnected);
                shared.emit(Event::Disconnected { code, reason });
                continue;
            }
            Outcome::Ended {
                code,
                reason,
                welcomed,
            } => {
                if welcomed {
                    attempt = 0;
                }
                // Requests now wait (`ready`) for the next connection instead of failing.
                shared.set_state(State::Connecting);
                (code, reason)
            }
        };
        let delay = match backoff::plan_after_close(code) {
            Plan::Stop => {
                wanted = false;
                shared.emit(Event::Error {
                    kind: "transport",
                    message: format!("closed with {code} {reason}: not reconnecting"),
                });
                shared.set_state(State::Disconnected);
                shared.emit(Event::Disconnected { code, reason });
                continue;
            }
            Plan::NewToken => {
                if matches!(shared.opts.token, Token::Fixed(_)) {
                    wanted = false;
                    shared.emit(Event::Error {
                        kind: "token",
                        message: format!("unauthorized ({reason}) and the token is fixed"),
                    });
                    shared.set_state(State::Disconnected);
                    shared.emit(Event::Disconnected { code, reason });
                    continue;
                }
                force_new_token = true;
                shared.opts.backoff.delay(attempt, &mut rng)
            }
            Plan::Drain => shared.opts.backoff.drain_delay(&mut rng),
            Plan::Backoff => shared.opts.backoff.delay(attempt, &mut rng),
        };
        url_index += 1;
        shared.emit(Event::Reconnecting {
            code,
            reason,
            delay,
            attempt,
            url: urls[url_index % urls.len()].clone(),
        });
        attempt = attempt.saturating_add(1);
        let wake = tokio::time::sleep(delay);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => break,
                command = rx.recv() => match command {
                    None | Some(Command::Close) => return finish(&shared, &mut rx),
                    Some(Command::Disconnect) => {
                        wanted = false;
                        shared.set_state(State::Disconnected);
                        shared.emit(Event::Disconnected { code: close::NORMAL, reason: "disconnect called".into() });
                        break;
                    }
                    Some(Command::Request { reply, .. }) => { let _ = reply.send(Err(Error::Disconnected)); }
                    Some(_) => {}
                },
            }
        }
    }
}

fn finish(shared: &Shared, rx: &mut mpsc::UnboundedReceiver<Command>) {
    rx.close();
    while let Ok(command) = rx.try_recv() {
        if let Command::Request { reply, .. } = command {
            let _ = reply.send(Err(Error::Closed));
        }
    }
    for sub in lock(&shared.subs).values() {
        let mut inner = lock(&sub.inner);
        inner.wanted = false;
        inner.state = SubState::Unsubscribed;
    }
    shared.set_state(State::Closed);
    shared.emit(Event::Closed);
}

enum Pending {
    Request(oneshot::Sender<Result<ServerFrame, Error>>),
    Subscribe(String, Option<Offset>),
    Auth(Option<u64>),
    Ignore,
}

fn encode(id: Option<u64>, frame: ClientFrame) -> Message {
    Message::text(Request { id, frame }.to_value().to_string())
}

/// Gets a token: the fixed one, the one held, or a fresh one from the callback.
async fn get_token(
    shared: &Shared,
    held: &mut Option<String>,
    force: &mut bool,
) -> Result<String, String> {
    match &shared.opts.token {
        Token::Fixed(t) => Ok(t.clone()),
        Token::Callback(f) => {
            let usable = held.as_ref().filter(|t| {
                !*force && token::token_times(t).is_none_or(|(exp, _)| (exp as f64) > now_unix())
            });
            if let Some(t) = usable {
                return Ok(t.clone());
            }
            let previous = held.take();
            let fresh = tokio::time::timeout(shared.opts.connect_timeout, f())
                .await
                .map_err(|_| "getToken timed out".to_owned())??;
            if fresh.is_empty() {
                return Err("getToken returned no token".into());
            }
            if *force && previous.as_deref() == Some(fresh.as_str()) {
                return Err("getToken returned the token the node refused".into());
            }
            *force = false;
            *held = Some(fresh.clone());
            Ok(fresh)
        }
    }
}

/// When the held token should be renewed.
fn refresh_at(shared: &Shared, token: &str) -> Option<Instant> {
    if !matches!(shared.opts.token, Token::Callback(_)) {
        return None;
    }
    let (exp, iat) = token::token_times(token)?;
    Some(Instant::now() + token::refresh_in(exp, iat, now_unix(), shared.opts.token_refresh_lead))
}

fn close_of(frame: Option<CloseFrame>) -> (u16, String) {
    match frame {
        Some(f) => (u16::from(f.code), f.reason.to_string()),
        None => (1005, "closed without a code".into()),
    }
}

/// One connection: open, authenticate, resubscribe, then serve until it ends.
async fn session(
    shared: &Arc<Shared>,
    rx: &mut mpsc::UnboundedReceiver<Command>,
    url: &str,
    held: &mut Option<String>,
    force_new_token: &mut bool,
    rng: &mut rand::rngs::StdRng,
) -> Outcome {
    let ended = |code: u16, reason: String| Outcome::Ended {
        code,
        reason,
        welcomed: false,
    };
    let token = match get_token(shared, held, force_new_token).await {
        Ok(t) => t,
        Err(e) => {
            shared.emit(Event::Error {
                kind: "token",
                message: e.clone(),
            });
            return Outcome::Stop {
                code: close::UNAUTHORIZED,
                reason: e,
            };
        }
    };
    let opened = tokio::time::timeout(
        shared.opts.connect_timeout,
        transport::open(url, shared.opts.tls.clone(), None),
    )
    .await;
    let ws = match opened {
        Err(_) => return ended(1006, format!("{url}: connect timed out")),
        Ok(Err(e)) => {
            shared.emit(Event::Error {
                kind: "transport",
                message: format!("{url}: {e}"),
            });
            return ended(1006, format!("{url}: {e}"));
        }
        Ok(Ok(ws)) => ws,
    };
    let (mut sink, mut stream) = ws.split();
    if sink
        .send(encode(
            Some(1),
            ClientFrame::Auth {
                token: token.clone(),
            },
        ))
        .await
        .is_err()
    {
        return ended(1006, "connection lost before auth".into());
    }
    // Wait for the welcome; an error frame says why the close that follows came.
    let welcome = tokio::time::timeout(shared.opts.connect_timeout, async {
        let mut refusal = None;
        loop {
            match stream.next().await {
                None | Some(Err(_)) => {
                    return Err((1006, refusal.unwrap_or_else(|| "connection lost".into())))
                }
                Some(Ok(Message::Close(f))) => {
                    let (code, reason) = close_of(f);
                    return Err((code, refusal.unwrap_or(reason)));
                }
                Some(Ok(Message::Text(text))) => match Codec::Json.decode_server(text.as_bytes()) {
                    Ok(ServerFrame::Welcome(w)) => return Ok(w),
                    Ok(ServerFrame::Error { message, code, .. }) => {
                        refusal = Some(format!("{}: {message}", code.as_str()));
                    }
                    _ => {}
                },
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    let welcome = match welcome {
        Err(_) => return ended(1006, "no welcome within the connect timeout".into()),
        Ok(Err((code, reason))) => return ended(code, reason),
        Ok(Ok(w)) => w,
    };
    let this = shared
        .connections
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        + 1;
    // Marked before `Connected` is visible, so a `subscribe()` racing with it is sent once.
    let wanted: Vec<(String, Option<Offset>)> = lock(&shared.subs)
        .iter()
        .filter_map(|(name, s)| {
            let mut inner = lock(&s.inner);
            if !inner.wanted {
                return None;
            }
            inner.sent_on = this;
            Some((name.clone(), inner.last_offset))
        })
        .collect();
    *lock(&shared.session) = Some(welcome.clone());
    shared.set_state(State::Connected);
    shared.emit(Event::Connected {
        url: url.into(),
        welcome: welcome.clone(),
    });

    let mut next_id = 2u64;
    let mut pending: HashMap<u64, Pending> = HashMap::new();
    // Resubscribe every wanted subscription after its last offset.
    let welcomed = |code: u16, reason: String| Outcome::Ended {
        code,
        reason,
        welcomed: true,
    };
    for (name, since) in wanted {
        let Ok(channel) = parse_channel(&name) else {
            continue;
        };
        let id = next_id;
        next_id += 1;
        pending.insert(id, Pending::Subscribe(name, since));
        if sink
            .send(encode(Some(id), ClientFrame::Subscribe { channel, since }))
            .await
            .is_err()
        {
            return welcomed(1006, "connection lost".into());
        }
    }

    let mut last_received = Instant::now();
    let heartbeat = Duration::from_secs(welcome.heartbeat_seconds.max(1));
    let mut idle_check = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    let mut refresh = refresh_at(shared, &token);
    let mut refreshing = false;
    let far = || Instant::now() + Duration::from_secs(86_400 * 365);

    let outcome = loop {
        let refresh_sleep = tokio::time::sleep_until(refresh.unwrap_or_else(far));
        tokio::select! {
            command = rx.recv() => match command {
                None | Some(Command::Close) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "client closed".into() }))).await;
                    break Outcome::Close;
                }
                Some(Command::Disconnect) => {
                    let _ = sink.send(Message::Close(Some(CloseFrame { code: CloseCode::Normal, reason: "client disconnected".into() }))).await;
                    break Outcome::Disconnect;
                }
                Some(Command::Connect) => {}
                Some(Command::Request { frame, reply }) => {
                    let id = next_id;
                    next_id += 1;
                    let message = encode(Some(id), frame);
                    if message.len() > MAX_FRAME_BYTES {
                        let _ = reply.send(Err(Error::Server {
                            code: ErrorCode::TooLarge,
                            message: format!("the frame is {} bytes, over the node's {MAX_FRAME_BYTES}", message.len()),
                            retry_after: None,
                        }));
                        continue;
                    }
                    if sink.send(message).await.is_err() {
                        let _ = reply.send(Err(Error::Disconnected));
                        break welcomed(1006, "connection lost".into());
                    }
                    pending.insert(id, Pending::Request(reply));
                }
                Some(Command::Send(frame)) => {
                    if sink.send(encode(None, frame)).await.is_err() {
                        break welcomed(1006, "connection lost".into());
                    }
                }
                Some(Command::Subscribe(name)) => {
                    let since = lock(&shared.subs).get(&name).and_then(|s| {
                        let mut inner = lock(&s.inner);
                        if !inner.wanted || inner.sent_on == this {
                            return None;
                        }
                        inner.sent_on = this;
                        Some(inner.last_offset)
                    });
                    if let (Some(since), Ok(channel)) = (since, parse_channel(&name)) {
                        let id = next_id;
                        next_id += 1;
                        pending.insert(id, Pending::Subscribe(name, since));
                        if sink.send(encode(Some(id), ClientFrame::Subscribe { channel, since })).await.is_err() {
                            break welcomed(1006, "connection lost".into());
                        }
                    }
                }
                Some(Command::Unsubscribe(channel)) => {
                    let id = next_id;
                    next_id += 1;
                    pending.insert(id, Pending::Ignore);
                    if sink.send(encode(Some(id), ClientFrame::Unsubscribe { channel })).await.is_err() {
                        break welcomed(1006, "connection lost".into());
                    }
                }
                Some(Command::TimedOut(sent)) => {
                    if last_received <= sent {
                        break welcomed(1006, "a request timed out and nothing came since it was sent".into());
                    }
                }
                Some(Command::NewToken(Ok(fresh))) => {
                    let id = next_id;
                    next_id += 1;
                    pending.insert(id, Pending::Auth(token::token_times(&fresh).map(|t| t.0)));
                    *held = Some(fresh.clone());
                    if sink.send(encode(Some(id), ClientFrame::Auth { token: fresh })).await.is_err() {
                        break welcomed(1006, "connection lost".into());
                    }
                }
                Some(Command::NewToken(Err(e))) => {
                    refreshing = false;
                    shared.emit(Event::Error { kind: "refresh", message: e });
                    refresh = Some(Instant::now() + shared.opts.backoff.delay(2, rng));
                }
            },
            frame = stream.next() => {
                last_received = Instant::now();
                let text = match frame {
                    None => break welcomed(1006, "connection lost".into()),
                    Some(Err(e)) => break welcomed(1006, format!("connection lost: {e}")),
                    Some(Ok(Message::Close(f))) => {
                        let (code, reason) = close_of(f);
                        break welcomed(code, reason);
                    }
                    Some(Ok(Message::Text(text))) => text,
                    Some(Ok(_)) => continue,
                };
                let frame = match Codec::Json.decode_server(text.as_bytes()) {
                    Ok(frame) => frame,
                    Err(e) => {
                        shared.emit(Event::Error { kind: "protocol", message: e.to_string() });
                        continue;
                    }
                };
                match on_frame(shared, &mut pending, frame).await {
                    FrameResult::None => {}
                    FrameResult::Refreshed(exp) => {
                        refreshing = false;
                        refresh = held.as_deref().and_then(|t| refresh_at(shared, t));
                        shared.emit(Event::TokenRefreshed { exp });
                    }
                    FrameResult::RefreshFailed(message) => {
                        refreshing = false;
                        shared.emit(Event::Error { kind: "refresh", message });
                        refresh = Some(Instant::now() + shared.opts.backoff.delay(2, rng));
                    }
                }
            }
            _ = refresh_sleep, if refresh.is_some() && !refreshing => {
                refreshing = true;
                if let Token::Callback(f) = &shared.opts.token {
                    let f = f.clone();
                    let commands = shared.commands.clone();
                    let timeout = shared.opts.connect_timeout;
                    tokio::spawn(async move {
                        let fresh = tokio::time::timeout(timeout, f()).await.unwrap_or_else(|_| Err("getToken timed out".into()));
                        let _ = commands.send(Command::NewToken(fresh));
                    });
                }
            }
            _ = idle_check.tick() => {
                if last_received.elapsed() > heartbeat * 2 + Duration::from_secs(5) {
                    break welcomed(close::HEARTBEAT_TIMEOUT, "nothing from the node for two heartbeats".into());
                }
            }
        }
    };
    for (_, p) in pending.drain() {
        if let Pending::Request(reply) = p {
            let _ = reply.send(Err(if matches!(outcome, Outcome::Close) {
                Error::Closed
            } else {
                Error::Disconnected
            }));
        }
    }
    outcome
}

enum FrameResult {
    None,
    Refreshed(Option<u64>),
    RefreshFailed(String),
}

fn sub_of(shared: &Shared, channel: &Channel) -> Option<Arc<SubShared>> {
    lock(&shared.subs).get(&channel.to_string()).cloned()
}

async fn on_frame(
    shared: &Arc<Shared>,
    pending: &mut HashMap<u64, Pending>,
    frame: ServerFrame,
) -> FrameResult {
    let id = match &frame {
        ServerFrame::Welcome(w) => w.id,
        ServerFrame::Subscribed { id, .. }
        | ServerFrame::Unsubscribed { id, .. }
        | ServerFrame::Ack { id, .. }
        | ServerFrame::History { id, .. }
        | ServerFrame::Presence { id, .. }
        | ServerFrame::Error { id, .. }
        | ServerFrame::Pong { id } => *id,
        _ => None,
    };
    let waiting = id.and_then(|id| pending.remove(&id));
    match (frame, waiting) {
        (
            ServerFrame::Message {
                channel,
                offset,
                message,
            },
            _,
        ) => {
            let Some(sub) = sub_of(shared, &channel) else {
                return FrameResult::None;
            };
            {
                let mut inner = lock(&sub.inner);
                if !inner.wanted {
                    return FrameResult::None;
                }
                if inner.last_offset.is_some_and(|last| offset <= last) {
                    inner.duplicates += 1;
                    return FrameResult::None;
                }
                inner.last_offset = Some(offset);
                inner.delivered += 1;
            }
            // Waits while the app's buffer is full: backpressure onto the socket.
            let _ = sub.tx.send(SubEvent::Message { offset, message }).await;
        }
        (
            ServerFrame::Subscribed {
                offset,
                recovered,
                unread,
                ..
            },
            Some(Pending::Subscribe(name, since)),
        ) => {
            let Some(sub) = lock(&shared.subs).get(&name).cloned() else {
                return FrameResult::None;
            };
            {
                let mut inner = lock(&sub.inner);
                inner.state = SubState::Subscribed;
                inner.recovered = Some(recovered);
                inner.unread = unread;
                match inner.last_offset {
                    None => inner.last_offset = Some(offset),
                    // A position the node never handed out: it restarts from its newest.
                    Some(last) if last > offset => inner.last_offset = Some(offset),
                    Some(_) => {}
                }
            }
            let _ = sub
                .tx
                .send(SubEvent::Subscribed {
                    offset,
                    recovered,
                    unread,
                    since,
                })
                .await;
            if let (false, Some(since)) = (recovered, since) {
                let _ = sub
                    .tx
                    .send(SubEvent::RecoveryFailed { since, offset })
                    .await;
            }
        }
        (
            ServerFrame::Error {
                code,
                message,
                retry_after_ms,
                ..
            },
            Some(waiting),
        ) => {
            let error = Error::Server {
                code,
                message,
                retry_after: retry_after_ms.map(Duration::from_millis),
            };
            match waiting {
                Pending::Request(reply) => {
                    let _ = reply.send(Err(error));
                }
                Pending::Subscribe(name, _) => {
                    let Some(sub) = lock(&shared.subs).get(&name).cloned() else {
                        return FrameResult::None;
                    };
                    let retry = error.retryable();
                    {
                        let mut inner = lock(&sub.inner);
                        inner.sent_on = 0;
                        if !retry {
                            inner.wanted = false;
                            inner.state = SubState::Unsubscribed;
                        }
                    }
                    let _ = sub.tx.try_send(SubEvent::Error(error.clone()));
                    if retry {
                        let wait = match error {
                            Error::Server {
                                retry_after: Some(d),
                                ..
                            } => d,
                            _ => shared.opts.backoff.base,
                        };
                        let commands = shared.commands.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(wait).await;
                            let _ = commands.send(Command::Subscribe(name));
                        });
                    } else {
                        let _ = sub.tx.try_send(SubEvent::Unsubscribed {
                            reason: error.to_string(),
                        });
                    }
                }
                Pending::Auth(_) => return FrameResult::RefreshFailed(error.to_string()),
                Pending::Ignore => {}
            }
        }
        (ServerFrame::Error { code, message, .. }, None) => {
            shared.emit(Event::Error {
                kind: "server",
                message: format!("{}: {message}", code.as_str()),
            });
        }
        (ServerFrame::Welcome(w), Some(Pending::Auth(exp))) => {
            *lock(&shared.session) = Some(w);
            return FrameResult::Refreshed(exp);
        }
        (ServerFrame::Unsubscribed { channel, .. }, None) => {
            // The node ended it: a re-auth narrowed the rights.
            if let Some(sub) = sub_of(shared, &channel) {
                {
                    let mut inner = lock(&sub.inner);
                    inner.wanted = false;
                    inner.state = SubState::Unsubscribed;
                }
                let _ = sub.tx.try_send(SubEvent::Unsubscribed {
                    reason: "server".into(),
                });
            }
        }
        (
            ServerFrame::Join { channel, user_id }
            | ServerFrame::Leave { channel, user_id }
            | ServerFrame::Typing { channel, user_id },
            _,
        ) if sub_of(shared, &channel).is_none() => {
            let _ = user_id;
        }
        (ServerFrame::Join { channel, user_id }, _) => {
            if let Some(sub) = sub_of(shared, &channel) {
                let _ = sub.tx.try_send(SubEvent::Join(user_id));
            }
        }
        (ServerFrame::Leave { channel, user_id }, _) => {
            if let Some(sub) = sub_of(shared, &channel) {
                let _ = sub.tx.try_send(SubEvent::Leave(user_id));
            }
        }
        (ServerFrame::Typing { channel, user_id }, _) => {
            if let Some(sub) = sub_of(shared, &channel) {
                let _ = sub.tx.try_send(SubEvent::Typing(user_id));
            }
        }
        (frame, Some(Pending::Request(reply))) => {
            let _ = reply.send(Ok(frame));
        }
        _ => {}
    }
    FrameResult::None
}
