//! The handle an application holds ([`Client`]): it checks what it can locally (channel names,
//! frame size), sends commands to the connection task, and waits for the answers, retrying
//! publishes with one idempotency key; and paging of history ([`HistoryPages`]). It never owns the
//! socket: the connection task does. A [`Subscription`] (`subscription.rs`) is a handle of the
//! client's too: it holds the client and asks it, so the two live in one module.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bellhop_protocol::{ClientFrame, Offset, PublishFrame, ServerFrame, Welcome};
use parking_lot::Mutex;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::connection::drive;
use crate::events::{Error, Event, HistoryPage, PublishAck, ReadAck, State, SubState};
use crate::options::{ClientOptions, PublishOptions};
use crate::shared::{lock, parse_channel, Command, Shared, SubInner, SubShared};

mod subscription;

pub use subscription::Subscription;

/// A Bellhop client. Cheap to clone; every clone is the same connection. Create it inside a
/// tokio runtime: it spawns the task that owns the connection.
#[derive(Clone)]
pub struct Client {
    pub(crate) shared: Arc<Shared>,
    pub(crate) _last: Arc<LastClone>,
}

/// Closes the connection when the last clone of a [`Client`] (and of its subscriptions) is gone.
pub(crate) struct LastClone(pub(crate) mpsc::UnboundedSender<Command>);

impl Drop for LastClone {
    fn drop(&mut self) {
        let _ = self.0.send(Command::Close);
    }
}

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
    pub(crate) client: Client,
    pub(crate) channel: String,
    pub(crate) since: Option<Offset>,
    pub(crate) limit: u32,
    pub(crate) done: bool,
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

pub(crate) fn unexpected(frame: &ServerFrame) -> Error {
    Error::Invalid(format!("unexpected reply: {}", frame.type_name()))
}
