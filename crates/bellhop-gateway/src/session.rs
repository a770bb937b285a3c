//! One WebSocket connection: authentication, the request loop, heartbeats, token expiry, and
//! clean-up. Generic over any `Sink + Stream` of WebSocket messages, so it is unit-tested with
//! in-memory channels and paused time, and run in production over a real socket.
//!
//! A connection is three parts that never wait on each other:
//! - the **reader** reads every frame as it arrives, whatever else is going on: it records
//!   liveness (so a client reading a long replay is not taken for dead), enforces the heartbeat,
//!   the token's expiry and the frame rate, answers `ping` at once, and hands every other request
//!   to the handler through a small bounded queue ([`Inbox`]). When that queue is full the
//!   request is refused with `rate_limited` (its `id` echoed), never by stopping the read;
//! - the **handler** answers requests one at a time, in order, so replies to pipelined requests
//!   keep their order (pongs and refusals, which the reader sends itself, may overtake them);
//! - the **writer** sends the outbound queue to the socket: everything queued at once, as the
//!   frames' wire bytes, in one vectored write per wake-up (see [`crate::wire`]).
//!
//! The reader and the handler run in the connection's task (joined, not spawned), the writer in
//! a task of its own.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bellhop_dispatcher::{ChannelEvent, ChannelKey};
use bellhop_protocol::{
    close, Channel, ClientFrame, Codec, ErrorCode, Offset, Request, ServerFrame, Welcome,
};
use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit};
use tokio::time::{sleep_until, Instant};
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::Message;

use crate::auth::{AuthError, Principal};
use crate::hub::{self, Activation, Subscriber};
use crate::limits::{FrameLimiter, FrameVerdict};
use crate::node::{ms_ceil, Node, RequestError};
use crate::outbound::{channel_tag, Batch, Class, Outbound, Sent};
use crate::policy::{self, Access};
use crate::wire::{Wire, WireFrame};

/// Most frames the writer takes from the queue for one write.
const MAX_BATCH: usize = 1024;

/// Messages per broker read while replaying a subscription.
const REPLAY_PAGE: usize = 500;
/// Requests the reader may hand to a busy handler before it refuses more with `rate_limited`:
/// above the frame limiter's burst (twice `RATE_LIMIT_FRAMES_PER_SECOND`, 100 by default), so a
/// client within the frame rate (resubscribing to many channels at once, say) never meets it.
const MAX_QUEUED_REQUESTS: usize = 128;
/// Bytes (of the frames they came in) of the requests queued for the handler, at most.
const MAX_QUEUED_BYTES: usize = 256 << 10;
/// What `retryAfterMs` says when a request finds the handler's queue full.
const QUEUE_FULL_RETRY_AFTER_MS: u64 = 100;

/// How a connection starts.
#[derive(Debug)]
pub(crate) struct Opening {
    /// Who the upgrade request authenticated, if it carried a token.
    pub(crate) principal: Option<Principal>,
    /// The negotiated codec.
    pub(crate) codec: Codec,
    /// The connection's slot under `MAX_CONNECTIONS`, released when it ends.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// Runs a connection to its end: `stream` is what the peer sends, `wire` where the writer
/// writes. Returns both when the writer finished in time (its close frame sent), so the caller
/// can linger on the socket before dropping it (see `server::linger`).
pub(crate) async fn run<R, W>(
    node: Arc<Node>,
    mut stream: R,
    mut wire: W,
    opening: Opening,
) -> Option<(R, W)>
where
    R: Stream<Item = Result<Message, WsError>> + Send + Unpin + 'static,
    W: Wire,
{
    let conn_id = node
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let outbound = Arc::new(Outbound::new(node.config.outbound.clone()));
    node.connections.lock().insert(conn_id, outbound.clone());
    node.metrics.connections.inc();
    node.metrics.connections_opened.inc();
    wire.attach(&outbound);
    let writer = tokio::spawn(write_loop(
        wire,
        outbound.clone(),
        node.config.write_timeout,
    ));
    let inbox = Inbox::new(Instant::now() + node.config.auth.auth_timeout);
    let mut session = Session {
        node: node.clone(),
        conn_id,
        session_id: uuid::Uuid::new_v4().to_string(),
        outbound: outbound.clone(),
        codec: opening.codec,
        principal: None,
        inbox: &inbox,
        subscriptions: HashSet::new(),
        counted: None,
    };
    // The futures of the rare steps are boxed: a connection's task is as large as its largest
    // step, and most of its life it only waits for the next frame (docs/BENCHMARKS.md).
    if let Some(p) = opening.principal {
        Box::pin(session.welcome(None, p)).await;
    }
    let reader = Reader {
        node: &node,
        outbound: &outbound,
        inbox: &inbox,
        codec: opening.codec,
        frames: node.limits.frame_limiter(),
    };
    tokio::join!(reader.run(&mut stream), session.serve());
    // The peer may have simply gone away: make sure the writer finishes either way.
    outbound.close(close::NORMAL, "");
    Box::pin(session.leave_all()).await;
    if let Some((property, user)) = session.counted.take() {
        node.limits.remove_user_connection(&property, &user);
    }
    // The writer sends what is left and the close frame, bounded by the write timeout.
    let sink = tokio::time::timeout(node.config.write_timeout * 2, writer).await;
    node.connections.lock().remove(&conn_id);
    node.metrics.connections.dec();
    drop(opening.permit);
    node.connection_ended.notify_waiters();
    match sink {
        Ok(Ok(wire)) => Some((stream, wire)),
        _ => None,
    }
}

/// Sends the outbound queue to the socket: on every wake-up everything queued, in one write,
/// until the close frame is sent or a write fails or stalls past `write_timeout`. Gives the wire
/// back.
async fn write_loop<W: Wire>(mut wire: W, outbound: Arc<Outbound>, write_timeout: Duration) -> W {
    let mut batch: Vec<WireFrame> = Vec::new();
    while let Some(next) = outbound.next_batch(&mut batch, MAX_BATCH).await {
        let close = match next {
            Batch::Frames => None,
            Batch::Close(frame) => Some(frame),
        };
        let last = close.is_some();
        let write = async {
            if !batch.is_empty() || !last {
                wire.write(&batch).await?;
            }
            if let Some(frame) = close {
                wire.close(frame).await?;
            }
            Ok::<_, WsError>(())
        };
        let written = tokio::time::timeout(write_timeout, write).await;
        batch.clear();
        if batch.capacity() > 64 {
            // A burst's buffer is not kept for the rest of an idle connection's life.
            batch = Vec::new();
        }
        match written {
            Ok(Ok(())) if !last => {}
            Ok(Ok(())) => break,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "write failed");
                outbound.close(close::INTERNAL, "write failed");
                break;
            }
            Err(_) => {
                tracing::info!("write stalled past the write timeout; dropping the connection");
                outbound.close(close::SLOW_CONSUMER, "write timeout");
                break;
            }
        }
    }
    wire
}

/// What the reader hands to the handler.
#[derive(Debug)]
enum Work {
    /// A decoded request (never a `ping` once authenticated: the reader answers those).
    Request(Request),
}

/// The hand-over between a connection's reader and its handler: the bounded request queue, and
/// the deadline the handler moves when it authenticates.
#[derive(Debug)]
struct Inbox {
    /// Queue and deadline.
    state: Mutex<InboxState>,
    /// Wakes the handler: work was queued, or the reader ended.
    work: Notify,
    /// Wakes the reader: the deadline moved.
    deadline_moved: Notify,
}

#[derive(Debug)]
struct InboxState {
    /// Requests not yet taken by the handler, with the size of the frame each came in.
    queue: VecDeque<(Work, usize)>,
    /// The sum of those sizes.
    bytes: usize,
    /// When the token expires (or, before authentication, when the auth timeout runs out).
    deadline: Instant,
    /// Whether the connection is authenticated (the reader answers pings only then).
    authenticated: bool,
    /// The reader has ended: nothing more will be queued.
    ended: bool,
}

impl Inbox {
    fn new(deadline: Instant) -> Self {
        Inbox {
            state: Mutex::new(InboxState {
                queue: VecDeque::new(),
                bytes: 0,
                deadline,
                authenticated: false,
                ended: false,
            }),
            work: Notify::new(),
            deadline_moved: Notify::new(),
        }
    }

    /// Queues work for the handler; false (the work dropped) when the queue is full.
    fn offer(&self, work: Work, bytes: usize) -> bool {
        let mut state = self.state.lock();
        // One request always fits, however large its frame: the frame limit bounds it.
        if state.queue.len() >= MAX_QUEUED_REQUESTS
            || (!state.queue.is_empty() && state.bytes + bytes > MAX_QUEUED_BYTES)
        {
            return false;
        }
        state.queue.push_back((work, bytes));
        state.bytes += bytes;
        drop(state);
        self.work.notify_one();
        true
    }

    /// The next request, or `None` once the reader ended and the queue is empty.
    async fn next(&self) -> Option<Work> {
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock();
                if let Some((work, bytes)) = state.queue.pop_front() {
                    state.bytes -= bytes;
                    if state.queue.is_empty() {
                        // A burst's buffer is not kept for the rest of an idle connection's life.
                        state.queue = VecDeque::new();
                    }
                    return Some(work);
                }
                if state.ended {
                    return None;
                }
            }
            notified.await;
        }
    }

    fn end(&self) {
        self.state.lock().ended = true;
        self.work.notify_one();
    }

    fn deadline(&self) -> (Instant, bool) {
        let state = self.state.lock();
        (state.deadline, state.authenticated)
    }

    fn authenticated(&self, deadline: Instant) {
        {
            let mut state = self.state.lock();
            state.deadline = deadline;
            state.authenticated = true;
        }
        self.deadline_moved.notify_one();
    }
}

/// A connection's reader (see the module documentation).
struct Reader<'a> {
    node: &'a Node,
    outbound: &'a Outbound,
    inbox: &'a Inbox,
    /// The codec replies of the reader's own are encoded in.
    codec: Codec,
    /// The connection's frame rate.
    frames: FrameLimiter,
}

impl Reader<'_> {
    async fn run<R>(mut self, stream: &mut R)
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        self.read(stream).await;
        self.inbox.end();
    }

    async fn read<R>(&mut self, stream: &mut R)
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        let interval = self.node.config.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + interval, interval);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_seen = Instant::now();
        let outbound = self.outbound;
        loop {
            let (deadline, authenticated) = self.inbox.deadline();
            tokio::select! {
                biased;
                _ = outbound.closed() => return,
                _ = self.inbox.deadline_moved.notified() => {}
                _ = sleep_until(deadline) => {
                    let message = if authenticated {
                        "token expired: reconnect with a fresh token"
                    } else {
                        "authentication timed out"
                    };
                    self.reply(ServerFrame::error(None, ErrorCode::Unauthorized, message));
                    self.node.count_error(ErrorCode::Unauthorized);
                    outbound.close(close::UNAUTHORIZED, message);
                    return;
                }
                _ = heartbeat.tick() => {
                    if last_seen.elapsed() >= self.node.config.heartbeat_timeout {
                        outbound.close(close::HEARTBEAT_TIMEOUT, "no traffic within the heartbeat timeout");
                        return;
                    }
                    outbound.push_control(Message::Ping(Default::default()));
                }
                incoming = stream.next() => {
                    last_seen = Instant::now();
                    match incoming {
                        None => return,
                        #[cfg(feature = "autobahn")]
                        Some(Ok(message @ (Message::Text(_) | Message::Binary(_))))
                            if self.node.config.session_mode == crate::config::SessionMode::Echo =>
                        {
                            // Conformance builds only: echo, with the writer's back-pressure.
                            outbound.send(Class::Control, message).await;
                        }
                        Some(Ok(message @ (Message::Text(_) | Message::Binary(_)))) => {
                            if !self.data(message, authenticated) {
                                return;
                            }
                        }
                        Some(Ok(Message::Close(_))) => {
                            outbound.close(close::NORMAL, "");
                            return;
                        }
                        // A client's WebSocket pings make the node write pongs: they count
                        // against the frame rate like any frame (over it, a flood closes).
                        Some(Ok(Message::Ping(_))) => {
                            if self.frames.check() == FrameVerdict::Close {
                                self.flood_close();
                                return;
                            }
                        }
                        Some(Ok(_)) => {} // pong, raw frames: liveness only
                        Some(Err(e)) => {
                            protocol_failure(self.node, outbound, e);
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Takes one data frame: refused over the frame rate, answered here when it is a `ping` or
    /// cannot be decoded, otherwise queued for the handler. False when the connection must end.
    fn data(&mut self, message: Message, authenticated: bool) -> bool {
        let (codec, bytes): (Codec, &[u8]) = match &message {
            Message::Text(text) => (Codec::Json, text.as_bytes()),
            Message::Binary(bytes) => (Codec::MsgPack, bytes),
            _ => return true,
        };
        match self.frames.check() {
            FrameVerdict::Allow => {}
            FrameVerdict::Refuse(wait) => {
                self.node
                    .metrics
                    .rate_limited
                    .with_label_values(&["frame"])
                    .inc();
                let message = format!(
                    "too many frames: at most {} a second; this one was not processed",
                    self.node.config.rate_limits.frames_per_second
                );
                self.refuse(codec.peek_id(bytes), message, ms_ceil(wait));
                return true;
            }
            FrameVerdict::Close => {
                self.flood_close();
                return false;
            }
        }
        let request = match codec.decode_request(bytes) {
            Ok(r) => r,
            Err(e) => {
                self.node.count_error(ErrorCode::BadRequest);
                self.reply(ServerFrame::error(e.id, ErrorCode::BadRequest, e.message));
                return true;
            }
        };
        if authenticated && matches!(request.frame, ClientFrame::Ping) {
            self.reply(ServerFrame::Pong { id: request.id });
            return true;
        }
        let id = request.id;
        if !self.inbox.offer(Work::Request(request), bytes.len()) {
            self.node
                .metrics
                .rate_limited
                .with_label_values(&["requests_queued"])
                .inc();
            let message = format!(
                "too many requests waiting: at most {MAX_QUEUED_REQUESTS} are queued behind the one being answered; this one was not processed"
            );
            self.refuse(id, message, QUEUE_FULL_RETRY_AFTER_MS);
        }
        true
    }

    /// Answers a frame that was not processed with `rate_limited`, echoing its id.
    fn refuse(&self, id: Option<u64>, message: String, retry_after_ms: u64) {
        self.node.count_error(ErrorCode::RateLimited);
        self.reply(ServerFrame::Error {
            id,
            code: ErrorCode::RateLimited,
            message,
            retry_after_ms: Some(retry_after_ms),
        });
    }

    fn flood_close(&self) {
        self.node
            .metrics
            .rate_limited
            .with_label_values(&["flood_close"])
            .inc();
        self.outbound.close(
            close::POLICY_VIOLATION,
            "frame rate exceeded after rate_limited errors",
        );
    }

    /// Queues one of the reader's own replies. Never waits: a peer that does not read is not
    /// worth blocking for (it ends as a slow consumer).
    fn reply(&self, frame: ServerFrame) {
        if let Some(message) = hub::encode(self.codec, &frame) {
            self.outbound.push_control(message);
        }
    }
}

/// Closes the connection with the code that names what the peer did wrong.
fn protocol_failure(node: &Node, outbound: &Outbound, e: WsError) {
    let max = node.config.max_frame_bytes;
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            node.count_error(ErrorCode::TooLarge);
            outbound.close(close::TOO_BIG, &format!("frame exceeds {max} bytes"));
        }
        WsError::Capacity(_) => outbound.close(close::TOO_BIG, "frame too large"),
        WsError::Utf8(_) => outbound.close(close::INVALID_PAYLOAD, "text frame is not valid UTF-8"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | WsError::ConnectionClosed
        | WsError::Io(_) => outbound.close(close::NORMAL, ""),
        WsError::Protocol(p) => outbound.close(close::PROTOCOL_ERROR, &p.to_string()),
        other => {
            tracing::debug!(error = %other, "connection failed");
            outbound.close(close::PROTOCOL_ERROR, "protocol error");
        }
    }
}

/// One connection's protocol state, owned by its handler.
struct Session<'a> {
    node: Arc<Node>,
    conn_id: u64,
    /// Identifies this connection in presence and in `welcome`.
    session_id: String,
    outbound: Arc<Outbound>,
    codec: Codec,
    /// `None` until authenticated.
    principal: Option<Principal>,
    /// Where the reader hands requests over, and where authentication moves the deadline.
    inbox: &'a Inbox,
    /// Channels this connection subscribed to.
    subscriptions: HashSet<Channel>,
    /// The (property, user) this connection is counted under, for the per-user cap.
    counted: Option<(String, String)>,
}

/// When a token's `exp` (Unix seconds) plus the leeway passes, on tokio's clock.
fn expiry_instant(expires_at: u64, leeway: Duration) -> Instant {
    let now_ms = bellhop_dispatcher::now_ms();
    let end_ms = expires_at
        .saturating_add(leeway.as_secs())
        .saturating_mul(1000);
    let left = Duration::from_millis(end_ms.saturating_sub(now_ms));
    Instant::now() + left.min(Duration::from_secs(10 * 365 * 24 * 3600))
}

impl Session<'_> {
    /// Answers the reader's requests one at a time until the connection closes. A request still
    /// running when it closes (a replay, say, when the token expires) is abandoned.
    async fn serve(&mut self) {
        let outbound = self.outbound.clone();
        loop {
            let work = tokio::select! {
                biased;
                _ = outbound.closed() => return,
                work = self.inbox.next() => match work {
                    Some(work) => work,
                    None => return,
                },
            };
            tokio::select! {
                biased;
                _ = outbound.closed() => return,
                _ = Box::pin(self.work(work)) => {}
            }
        }
    }

    async fn work(&mut self, work: Work) {
        match work {
            Work::Request(request) => self.handle(request).await,
        }
    }

    /// Sends a reply, waiting for room. A reply larger than the whole outbound budget is
    /// replaced by a `too_large` error with the same id: never silence.
    async fn send_reply(&self, id: Option<u64>, frame: &ServerFrame) {
        let Some(message) = hub::encode(self.codec, frame) else {
            return;
        };
        if let Sent::TooLarge { bytes, limit } = self.outbound.send(Class::Control, message).await {
            tracing::warn!(
                frame = frame.type_name(),
                bytes,
                limit,
                "reply larger than the outbound budget"
            );
            self.error(
                id,
                ErrorCode::TooLarge,
                format!(
                    "the {} reply is {bytes} bytes, over this connection's outbound budget of {limit} bytes: ask for less",
                    frame.type_name()
                ),
            )
            .await;
        }
    }

    async fn send(&self, frame: &ServerFrame) {
        if let Some(message) = hub::encode(self.codec, frame) {
            self.outbound.send(Class::Control, message).await;
        }
    }

    async fn error(&self, id: Option<u64>, code: ErrorCode, message: impl Into<String>) {
        self.node.count_error(code);
        self.send(&ServerFrame::error(id, code, message)).await;
    }

    async fn fail(&self, id: Option<u64>, e: RequestError) {
        self.node.count_error(e.code);
        let frame = ServerFrame::Error {
            id,
            code: e.code,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        };
        self.send(&frame).await;
    }

    async fn welcome(&mut self, id: Option<u64>, p: Principal) {
        if self.counted.is_none() {
            if !self
                .node
                .limits
                .add_user_connection(&p.property, &p.user_id)
            {
                self.node
                    .metrics
                    .rate_limited
                    .with_label_values(&["user_connections"])
                    .inc();
                let max = self.node.config.rate_limits.max_connections_per_user;
                self.error(
                    id,
                    ErrorCode::RateLimited,
                    format!("too many connections for this user: at most {max} on one node"),
                )
                .await;
                self.outbound.close(
                    close::POLICY_VIOLATION,
                    "too many connections for this user",
                );
                return;
            }
            self.counted = Some((p.property.clone(), p.user_id.clone()));
        }
        let frame = ServerFrame::Welcome(Welcome {
            id,
            session_id: self.session_id.clone(),
            node: self.node.config.node_id.clone(),
            user_id: p.user_id.clone(),
            role: p.role,
            property: p.property.clone(),
            heartbeat_seconds: self.node.config.heartbeat_interval.as_secs(),
        });
        tracing::debug!(user = %p.user_id, property = %p.property, "authenticated");
        self.inbox
            .authenticated(expiry_instant(p.expires_at, self.node.config.auth.leeway));
        self.principal = Some(p);
        #[cfg(feature = "autobahn")]
        if self.node.config.session_mode == crate::config::SessionMode::Echo {
            return;
        }
        self.send(&frame).await;
    }

    /// Answers one client frame.
    async fn handle(&mut self, request: Request) {
        let Request { id, frame } = request;
        if let ClientFrame::Auth { token } = &frame {
            return self.authenticate(id, token).await;
        }
        let Some(p) = self.principal.clone() else {
            let message = "authenticate first: send {\"type\":\"auth\",\"token\":\"<jwt>\"}";
            self.error(id, ErrorCode::Unauthorized, message).await;
            self.outbound
                .close(close::UNAUTHORIZED, "not authenticated");
            return;
        };
        let result = match frame {
            ClientFrame::Auth { .. } => Ok(()),
            ClientFrame::Ping => {
                self.send(&ServerFrame::Pong { id }).await;
                Ok(())
            }
            ClientFrame::Subscribe { channel, since } => {
                self.subscribe(id, &p, channel, since).await
            }
            ClientFrame::Unsubscribe { channel } => self.unsubscribe(id, &p, channel).await,
            ClientFrame::Publish(publish) => match self.node.publish(&p, publish).await {
                Ok(acked) => {
                    let ack = ServerFrame::Ack {
                        id,
                        message_id: Some(acked.message_id),
                        offset: acked.offset,
                        unread: None,
                        duplicate: acked.duplicate,
                    };
                    self.send(&ack).await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            ClientFrame::History {
                channel,
                since,
                limit,
            } => match self.node.history(&p, &channel, since, limit).await {
                Ok(page) => {
                    let frame = ServerFrame::History {
                        id,
                        channel,
                        messages: page.messages,
                        more: page.more,
                    };
                    self.send_reply(id, &frame).await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            ClientFrame::Presence { channel } => match self.node.presence(&p, &channel).await {
                Ok(users) => {
                    self.send_reply(id, &ServerFrame::Presence { id, channel, users })
                        .await;
                    Ok(())
                }
                Err(e) => Err(e),
            },
            ClientFrame::Typing { channel } => self.typing(&p, channel).await,
            ClientFrame::Read { channel, offset } => {
                self.read_marker(id, &p, channel, offset).await
            }
        };
        if let Err(e) = result {
            self.fail(id, e).await;
        }
    }

    async fn authenticate(&mut self, id: Option<u64>, token: &str) {
        match (self.node.verifier.verify(token), &self.principal) {
            (Ok(p), None) => self.welcome(id, p).await,
            // Re-authentication extends a live connection with a fresh token of the same user;
            // subscriptions the new token no longer allows are dropped.
            (Ok(p), Some(current))
                if p.user_id == current.user_id && p.property == current.property =>
            {
                let old = current.clone();
                self.welcome(id, p.clone()).await;
                let lost: Vec<Channel> = self
                    .subscriptions
                    .iter()
                    .filter(|c| policy::check(&p, Access::Read, c).is_err())
                    .cloned()
                    .collect();
                for channel in lost {
                    self.leave(&old, &channel, true).await;
                    self.send(&ServerFrame::Unsubscribed { id: None, channel })
                        .await;
                }
            }
            (Ok(_), Some(_)) => {
                self.error(
                    id,
                    ErrorCode::Unauthorized,
                    "a connection cannot change its user or property",
                )
                .await
            }
            (Err(e), current) => {
                let message = match e {
                    AuthError::Expired => "token expired".to_string(),
                    other => other.to_string(),
                };
                self.error(id, ErrorCode::Unauthorized, message).await;
                if current.is_none() {
                    self.outbound
                        .close(close::UNAUTHORIZED, "authentication failed");
                }
            }
        }
    }

    async fn subscribe(
        &mut self,
        id: Option<u64>,
        p: &Principal,
        channel: Channel,
        since: Option<Offset>,
    ) -> Result<(), RequestError> {
        self.node.authorize(p, Access::Read, &channel)?;
        if self.subscriptions.contains(&channel) {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("already subscribed to {channel}; unsubscribe first to resubscribe"),
            ));
        }
        let max = self.node.config.max_subscriptions_per_connection;
        if self.subscriptions.len() >= max {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("a connection may hold at most {max} subscriptions"),
            ));
        }
        let key = Node::key(p, &channel);
        let subscriber = Subscriber {
            conn_id: self.conn_id,
            user_id: p.user_id.clone(),
            codec: self.codec,
            outbound: self.outbound.clone(),
            sees_presence: policy::check(p, Access::Presence, &channel).is_ok(),
        };
        self.node.hub.join(&key, subscriber).await?;
        self.subscriptions.insert(channel.clone());
        self.node.metrics.subscriptions.inc();
        // Everything that can fail after the join is rolled back, `subscribed` sent or not: the
        // client's `error` (same id) means "not subscribed", and a retry starts clean.
        if let Err(e) = self.start_delivery(id, p, &key, since).await {
            self.leave(p, &channel, false).await;
            return Err(e);
        }
        // Presence is best-effort: a failure to record or announce it must not undo a
        // subscription whose messages are already flowing.
        let broker = self.node.dispatcher.broker();
        match broker
            .presence_join(&key, &p.user_id, &self.session_id)
            .await
        {
            Ok(true) => self.node.announce_presence(&key, &p.user_id, true).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, channel = %key, "presence join failed"),
        }
        Ok(())
    }

    /// Replays what the client missed and hands the subscription over to live delivery.
    async fn start_delivery(
        &mut self,
        id: Option<u64>,
        p: &Principal,
        key: &ChannelKey,
        since: Option<Offset>,
    ) -> Result<(), RequestError> {
        let mut cursor = self.replay(id, p, key, since).await?;
        while self.node.hub.activate(key, self.conn_id, cursor) == Activation::Reread {
            cursor = self.replay_pages(key, cursor).await?;
        }
        Ok(())
    }

    /// Sends `subscribed` and the messages after `since`; returns the last offset covered.
    async fn replay(
        &mut self,
        id: Option<u64>,
        p: &Principal,
        key: &ChannelKey,
        since: Option<Offset>,
    ) -> Result<Offset, RequestError> {
        let broker = self.node.dispatcher.broker().clone();
        let unread = broker.unread(key, &p.user_id).await?;
        let Some(since) = since else {
            let last = broker.read(key, None, 0).await?.last;
            let frame = ServerFrame::Subscribed {
                id,
                channel: key.channel.clone(),
                offset: last,
                recovered: true,
                unread,
            };
            self.send(&frame).await;
            return Ok(last);
        };
        let first = broker.read(key, Some(since), REPLAY_PAGE).await?;
        self.node
            .metrics
            .resumes
            .with_label_values(&[if first.recovered { "true" } else { "false" }])
            .inc();
        let frame = ServerFrame::Subscribed {
            id,
            channel: key.channel.clone(),
            offset: first.last,
            recovered: first.recovered,
            unread,
        };
        self.send(&frame).await;
        // A `since` beyond the channel's newest offset (unknown, so not recovered) must not hide
        // the live messages that follow the newest one.
        let mut cursor = since.min(first.last);
        let tag = channel_tag(key);
        for m in &first.messages {
            if let Some(frame) = hub::encode_message(self.codec, key, m) {
                let class = Class::of(m.envelope.priority);
                self.outbound.send_in(class, tag, frame).await;
            }
            cursor = m.offset;
        }
        if first.more {
            cursor = self.replay_pages(key, cursor).await?;
        }
        Ok(cursor)
    }

    /// Sends every stored message after `cursor`, page by page, waiting for the client to read.
    async fn replay_pages(
        &self,
        key: &ChannelKey,
        mut cursor: Offset,
    ) -> Result<Offset, RequestError> {
        let broker = self.node.dispatcher.broker().clone();
        let tag = channel_tag(key);
        loop {
            let page = broker.read(key, Some(cursor), REPLAY_PAGE).await?;
            for m in &page.messages {
                if let Some(frame) = hub::encode_message(self.codec, key, m) {
                    let sent = self
                        .outbound
                        .send_in(Class::of(m.envelope.priority), tag, frame)
                        .await;
                    if sent != Sent::Queued {
                        return Ok(cursor);
                    }
                }
                cursor = m.offset;
            }
            if !page.more {
                return Ok(cursor);
            }
        }
    }

    async fn unsubscribe(
        &mut self,
        id: Option<u64>,
        p: &Principal,
        channel: Channel,
    ) -> Result<(), RequestError> {
        if !self.subscriptions.contains(&channel) {
            return Err(RequestError::new(
                ErrorCode::BadRequest,
                format!("not subscribed to {channel}"),
            ));
        }
        self.leave(p, &channel, true).await;
        self.send(&ServerFrame::Unsubscribed { id, channel }).await;
        Ok(())
    }

    /// Drops a subscription: hub, presence, and a `leave` when it was the user's last session.
    async fn leave(&mut self, p: &Principal, channel: &Channel, announce: bool) {
        if !self.subscriptions.remove(channel) {
            return;
        }
        self.node.metrics.subscriptions.dec();
        let key = Node::key(p, channel);
        self.node.hub.leave(&key, self.conn_id);
        let broker = self.node.dispatcher.broker();
        match broker
            .presence_leave(&key, &p.user_id, &self.session_id)
            .await
        {
            Ok(true) if announce => self.node.announce_presence(&key, &p.user_id, false).await,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, channel = %key, "presence leave failed"),
        }
    }

    async fn leave_all(&mut self) {
        let Some(p) = self.principal.clone() else {
            return;
        };
        let channels: Vec<Channel> = self.subscriptions.iter().cloned().collect();
        for channel in channels {
            self.leave(&p, &channel, true).await;
        }
    }

    async fn typing(&self, p: &Principal, channel: Channel) -> Result<(), RequestError> {
        self.node.authorize(p, Access::Publish, &channel)?;
        let key = Node::key(p, &channel);
        // Coalesced where it arrives: a typist costs the audience one notice per interval.
        if !self
            .node
            .fairness
            .typing_allowed(&key, &p.user_id, Instant::now())
        {
            self.node
                .metrics
                .queue_drops
                .with_label_values(&["typing_coalesced"])
                .inc();
            return Ok(());
        }
        let event = ChannelEvent::Typing {
            user_id: p.user_id.clone(),
        };
        self.node
            .dispatcher
            .broker()
            .publish_ephemeral(&key, event)
            .await?;
        Ok(())
    }

    async fn read_marker(
        &self,
        id: Option<u64>,
        p: &Principal,
        channel: Channel,
        offset: Offset,
    ) -> Result<(), RequestError> {
        self.node.authorize(p, Access::Read, &channel)?;
        let key = Node::key(p, &channel);
        let (marker, unread) = self
            .node
            .dispatcher
            .broker()
            .mark_read(&key, &p.user_id, offset)
            .await?;
        self.send(&ServerFrame::Ack {
            id,
            message_id: None,
            offset: marker,
            unread: Some(unread),
            duplicate: false,
        })
        .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The session over in-memory channels with paused time: heartbeats and token expiry are
    //! checked against tokio's clock, with no real waiting.

    use std::pin::Pin;
    use std::task::{Context, Poll};

    use bellhop_dispatcher::{Dispatcher, DispatcherConfig, MemoryBroker, MemoryConfig};
    use bellhop_protocol::Role;
    use futures_channel::mpsc;
    use tokio::sync::Semaphore;

    use futures_util::{Sink, SinkExt};

    use super::*;
    use crate::config::GatewayConfig;

    /// The writer's side of an in-memory peer: what the writer writes, decoded back into
    /// messages, goes into the peer's sink.
    struct MessageWire<K>(K);

    impl<K> Wire for MessageWire<K>
    where
        K: Sink<Message, Error = WsError> + Send + Unpin + 'static,
    {
        async fn write(&mut self, frames: &[WireFrame]) -> Result<(), WsError> {
            for frame in frames {
                for message in crate::wire::decode(frame.bytes()) {
                    self.0.feed(message).await?;
                }
            }
            self.0.flush().await
        }

        async fn close(
            &mut self,
            frame: tokio_tungstenite::tungstenite::protocol::CloseFrame,
        ) -> Result<(), WsError> {
            self.0.send(Message::Close(Some(frame))).await
        }
    }

    /// Runs a session over an in-memory duplex of messages.
    async fn run_duplex<S>(node: Arc<Node>, duplex: S, opening: Opening)
    where
        S: Stream<Item = Result<Message, WsError>>
            + Sink<Message, Error = WsError>
            + Send
            + Unpin
            + 'static,
    {
        let (sink, stream) = duplex.split();
        run(node, stream, MessageWire(sink), opening).await;
    }

    /// One end of an in-memory WebSocket: what the server reads and where it writes.
    struct Duplex {
        incoming: mpsc::UnboundedReceiver<Result<Message, WsError>>,
        outgoing: mpsc::UnboundedSender<Message>,
    }

    impl Stream for Duplex {
        type Item = Result<Message, WsError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.incoming.poll_next_unpin(cx)
        }
    }

    impl Sink<Message> for Duplex {
        type Error = WsError;
        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn start_send(self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
            self.outgoing
                .unbounded_send(item)
                .map_err(|_| WsError::ConnectionClosed)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    struct Peer {
        to_server: mpsc::UnboundedSender<Result<Message, WsError>>,
        from_server: mpsc::UnboundedReceiver<Message>,
    }

    impl Peer {
        async fn next(&mut self) -> Message {
            self.from_server.next().await.expect("server still writing")
        }
    }

    fn principal(expires_in_secs: u64) -> Principal {
        Principal {
            user_id: "u1".into(),
            role: Role::Staff,
            property: "h1".into(),
            rooms: Default::default(),
            depts: Default::default(),
            expires_at: bellhop_dispatcher::now_ms() / 1000 + expires_in_secs,
        }
    }

    fn start(principal: Principal) -> Peer {
        start_with_leeway(principal, Duration::ZERO)
    }

    fn start_with_leeway(principal: Principal, leeway: Duration) -> Peer {
        let mut config = GatewayConfig::new("secret");
        config.auth.leeway = leeway;
        let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
        let dispatcher = Arc::new(Dispatcher::new(broker, DispatcherConfig::default()));
        let verifier = Arc::new(crate::auth::Verifier::new(&config.auth).unwrap());
        let node = Arc::new(Node::new(config, dispatcher, verifier));
        let (to_server, incoming) = mpsc::unbounded();
        let (outgoing, from_server) = mpsc::unbounded();
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let opening = Opening {
            principal: Some(principal),
            codec: Codec::Json,
            permit,
        };
        tokio::spawn(run_duplex(node, Duplex { incoming, outgoing }, opening));
        Peer {
            to_server,
            from_server,
        }
    }

    fn close_code(m: &Message) -> Option<u16> {
        match m {
            Message::Close(Some(f)) => Some(f.code.into()),
            _ => None,
        }
    }

    /// A socket whose peer reads at its own pace: the server's writes wait for it (a bounded
    /// channel), as they wait for a real client's TCP window.
    struct SlowDuplex {
        incoming: mpsc::UnboundedReceiver<Result<Message, WsError>>,
        outgoing: mpsc::Sender<Message>,
    }

    impl Stream for SlowDuplex {
        type Item = Result<Message, WsError>;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.incoming.poll_next_unpin(cx)
        }
    }

    impl Sink<Message> for SlowDuplex {
        type Error = WsError;
        fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            self.outgoing
                .poll_ready(cx)
                .map_err(|_| WsError::ConnectionClosed)
        }
        fn start_send(mut self: Pin<&mut Self>, item: Message) -> Result<(), WsError> {
            self.outgoing
                .start_send(item)
                .map_err(|_| WsError::ConnectionClosed)
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    struct SlowPeer {
        to_server: mpsc::UnboundedSender<Result<Message, WsError>>,
        from_server: mpsc::Receiver<Message>,
    }

    impl SlowPeer {
        fn send(&self, frame: serde_json::Value) {
            self.to_server
                .unbounded_send(Ok(Message::text(frame.to_string())))
                .unwrap();
        }

        /// Reads the next frame after `pace` (a client reading ~1/pace frames a second); pings
        /// are answered at once, as a live client's WebSocket library does.
        async fn next_after(&mut self, pace: Duration) -> Message {
            loop {
                tokio::time::sleep(pace).await;
                let m = self.from_server.next().await.expect("server still writing");
                if let Message::Ping(_) = m {
                    self.to_server
                        .unbounded_send(Ok(Message::Pong(Default::default())))
                        .unwrap();
                    continue;
                }
                return m;
            }
        }
    }

    /// A node with a one-second heartbeat (closed after two silent seconds) and a small
    /// outbound queue, holding `stored` messages on `room:101` after the returned offset; and a
    /// slow peer on it.
    async fn slow_peer_with_backlog(principal: Principal, stored: usize) -> (SlowPeer, Offset) {
        let mut config = GatewayConfig::new("secret");
        config.heartbeat_interval = Duration::from_secs(1);
        config.heartbeat_timeout = Duration::from_secs(2);
        config.outbound.max_frames = 64;
        config.auth.leeway = Duration::ZERO;
        let broker = Arc::new(MemoryBroker::new(MemoryConfig::default()));
        let key = ChannelKey::new("h1", Channel::Room("101".into()));
        let start = bellhop_dispatcher::Broker::read(broker.as_ref(), &key, None, 0)
            .await
            .unwrap()
            .last;
        let envelopes: Vec<_> = (0..stored)
            .map(|i| {
                Arc::new(bellhop_protocol::Envelope {
                    message_id: format!("m{i}"),
                    event: "CHAT_MESSAGE".into(),
                    namespace: "h1".into(),
                    channel: key.channel.clone(),
                    payload: serde_json::json!({ "n": i }),
                    timestamp: "2026-12-01T10:00:00.000Z".into(),
                    sender: bellhop_protocol::Sender {
                        id: "g1".into(),
                        role: Role::Guest,
                    },
                    priority: bellhop_protocol::Priority::Normal,
                    correlation_id: None,
                })
            })
            .collect();
        for chunk in envelopes.chunks(500) {
            let batch = chunk.iter().cloned().map(bellhop_dispatcher::Publish::new);
            let stored =
                bellhop_dispatcher::Broker::publish_batch(broker.as_ref(), batch.collect()).await;
            assert!(stored.iter().all(Result::is_ok));
        }
        let dispatcher = Arc::new(Dispatcher::new(broker, DispatcherConfig::default()));
        let verifier = Arc::new(crate::auth::Verifier::new(&config.auth).unwrap());
        let node = Arc::new(Node::new(config, dispatcher, verifier));
        let (to_server, incoming) = mpsc::unbounded();
        let (outgoing, from_server) = mpsc::channel(0);
        let permit = Arc::new(Semaphore::new(1)).try_acquire_owned().unwrap();
        let opening = Opening {
            principal: Some(principal),
            codec: Codec::Json,
            permit,
        };
        tokio::spawn(run_duplex(node, SlowDuplex { incoming, outgoing }, opening));
        (
            SlowPeer {
                to_server,
                from_server,
            },
            start,
        )
    }

    /// Reproduces issue 10 A.1: before, the session stopped reading during a replay, so the
    /// client's pongs sat unread and the heartbeat closed it with 4002 when the replay ended,
    /// and a `ping` sent after the `subscribe` was answered only after the whole replay.
    #[tokio::test(start_paused = true)]
    async fn a_replay_longer_than_the_heartbeat_timeout_keeps_a_live_reader_connected() {
        const STORED: usize = 6_000;
        let (mut peer, since) = slow_peer_with_backlog(principal(86_400), STORED).await;
        let pace = Duration::from_micros(1_666); // ~600 frames a second
        assert!(json(peer.next_after(pace).await)["type"] == "welcome");
        let started = Instant::now();
        peer.send(serde_json::json!({"type": "subscribe", "id": 1, "channel": "room:101", "since": since}));
        peer.send(serde_json::json!({"type": "ping", "id": 2}));
        let mut next_n = 0u64;
        let mut pong_after = None;
        let mut subscribed = false;
        while next_n < STORED as u64 {
            let frame = peer.next_after(pace).await;
            assert!(
                !matches!(frame, Message::Close(_)),
                "closed mid-replay: {frame:?}"
            );
            let frame = json(frame);
            match frame["type"].as_str() {
                Some("message") => {
                    assert_eq!(frame["message"]["payload"]["n"], next_n, "in order, no gap");
                    next_n += 1;
                }
                Some("pong") => {
                    assert_eq!(frame["id"], 2);
                    pong_after = Some((next_n, started.elapsed()));
                }
                // The pong may come first: the reader answers pings itself.
                Some("subscribed") => subscribed = true,
                _ => panic!("unexpected {frame}"),
            }
        }
        assert!(subscribed);
        let replay = started.elapsed();
        assert!(
            replay > Duration::from_secs(2),
            "the replay outlasted the heartbeat timeout: {replay:?}"
        );
        let (messages_before_pong, waited) = pong_after.expect("the ping was answered");
        assert!(
            messages_before_pong < 200 && waited < Duration::from_millis(500),
            "pong after {messages_before_pong} messages and {waited:?}, not after the replay"
        );
        // Still connected and served after the replay.
        peer.send(serde_json::json!({"type": "ping", "id": 3}));
        let pong = json(peer.next_after(pace).await);
        assert_eq!(
            (pong["type"].as_str(), &pong["id"]),
            (Some("pong"), &3.into())
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_that_expires_during_a_long_replay_ends_the_connection_on_time() {
        let (mut peer, since) = slow_peer_with_backlog(principal(5), 6_000).await;
        let pace = Duration::from_millis(2);
        let started = Instant::now();
        peer.next_after(pace).await; // welcome
        peer.send(serde_json::json!({"type": "subscribe", "id": 1, "channel": "room:101", "since": since}));
        let closed = loop {
            match peer.next_after(pace).await {
                Message::Close(frame) => break frame,
                Message::Text(_) => {}
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(closed.map(|f| u16::from(f.code)), Some(close::UNAUTHORIZED));
        let elapsed = started.elapsed();
        // 6,000 frames at 2 ms would take 12 s; the token ended it at 5 s (plus what was queued).
        assert!(elapsed < Duration::from_secs(6), "closed after {elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_pinged_then_closed_with_4002_after_the_timeout() {
        let started = Instant::now();
        let mut peer = start(principal(86_400));
        assert!(matches!(peer.next().await, Message::Text(t) if t.contains("welcome")));
        let ping = peer.next().await;
        assert!(matches!(ping, Message::Ping(_)), "{ping:?}");
        assert_eq!(
            started.elapsed().as_secs(),
            30,
            "first ping after one interval"
        );
        let close = peer.next().await;
        assert_eq!(
            close_code(&close),
            Some(close::HEARTBEAT_TIMEOUT),
            "{close:?}"
        );
        assert_eq!(
            started.elapsed().as_secs(),
            60,
            "closed after two silent intervals"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_peer_that_answers_pings_stays_connected() {
        let started = Instant::now();
        let mut peer = start(principal(86_400));
        peer.next().await; // welcome
        for _ in 0..10 {
            let ping = peer.next().await;
            assert!(matches!(ping, Message::Ping(_)), "{ping:?}");
            peer.to_server
                .unbounded_send(Ok(Message::Pong(Default::default())))
                .unwrap();
        }
        assert_eq!(started.elapsed().as_secs(), 300);
    }

    /// A token the test node accepts (its secret is `"secret"`), for user `sub` of `h1`.
    fn token(sub: &str, expires_in_secs: u64) -> String {
        let claims = crate::auth::Claims {
            sub: sub.into(),
            role: Role::Staff,
            prop: "h1".into(),
            rooms: vec![],
            depts: vec![],
            exp: bellhop_dispatcher::now_ms() / 1000 + expires_in_secs,
            iat: None,
            nbf: None,
            iss: None,
            aud: None,
        };
        crate::auth::mint(b"secret", &claims).unwrap()
    }

    impl Peer {
        fn send(&self, frame: serde_json::Value) {
            self.to_server
                .unbounded_send(Ok(Message::text(frame.to_string())))
                .unwrap();
        }

        /// The next frame that is not a ping, answering pings on the way (a live client).
        async fn next_answering_pings(&mut self) -> Message {
            loop {
                match self.next().await {
                    Message::Ping(_) => self
                        .to_server
                        .unbounded_send(Ok(Message::Pong(Default::default())))
                        .unwrap(),
                    other => return other,
                }
            }
        }

        /// Answers pings until tokio's clock reaches `until`; every other frame is returned.
        async fn live_until(&mut self, until: Instant) -> Vec<Message> {
            let mut others = Vec::new();
            while Instant::now() < until {
                match tokio::time::timeout_at(until, self.next_answering_pings()).await {
                    Ok(m) => others.push(m),
                    Err(_) => break,
                }
            }
            others
        }
    }

    fn json(m: Message) -> serde_json::Value {
        serde_json::from_str(m.to_text().expect("a text frame")).expect("JSON")
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_token_ends_a_live_connection_with_4001() {
        let started = Instant::now();
        let mut peer = start(principal(75));
        peer.next().await; // welcome
                           // The client is told why before the close: an error without id, then 4001.
        let error = json(peer.next_answering_pings().await);
        assert_eq!(error["type"], "error", "{error}");
        assert_eq!(error["code"], "unauthorized", "{error}");
        assert!(error.get("id").is_none(), "{error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.starts_with("token expired"), "{error}");
        let close = peer.next().await;
        assert_eq!(close_code(&close), Some(close::UNAUTHORIZED));
        let Message::Close(Some(frame)) = close else {
            unreachable!()
        };
        assert_eq!(
            frame.reason.as_str(),
            message,
            "same reason in the close frame"
        );
        let elapsed = started.elapsed().as_secs();
        assert!((74..=76).contains(&elapsed), "closed at {elapsed} s");
    }

    #[tokio::test(start_paused = true)]
    async fn reauthenticating_before_expiry_extends_the_deadline_and_keeps_the_connection() {
        let started = Instant::now();
        let mut peer = start(principal(75));
        peer.next().await; // welcome
        let before_expiry = peer.live_until(started + Duration::from_secs(60)).await;
        assert!(before_expiry.is_empty(), "{before_expiry:?}");
        // A fresh token for the same user, an hour long, 15 s before the old one expires.
        peer.send(serde_json::json!({"type": "auth", "id": 9, "token": token("u1", 3600)}));
        let welcome = json(peer.next_answering_pings().await);
        assert_eq!(
            (welcome["type"].as_str(), &welcome["id"]),
            (Some("welcome"), &9.into())
        );
        // Well past the first token's expiry the connection is alive and answers requests.
        let later = peer.live_until(started + Duration::from_secs(600)).await;
        assert!(later.is_empty(), "no error and no close: {later:?}");
        peer.send(serde_json::json!({"type": "ping", "id": 10}));
        let pong = json(peer.next_answering_pings().await);
        assert_eq!(
            (pong["type"].as_str(), &pong["id"]),
            (Some("pong"), &10.into())
        );
        // And the new token's expiry still ends it, with the same warning.
        let error = json(peer.next_answering_pings().await);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("token expired"),
            "{error}"
        );
        assert_eq!(close_code(&peer.next().await), Some(close::UNAUTHORIZED));
        let elapsed = started.elapsed().as_secs();
        assert!(
            (3659..=3661).contains(&elapsed),
            "closed at {elapsed} s, not 60 + 3600"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_reauthentication_keeps_the_old_deadline() {
        let started = Instant::now();
        let mut peer = start(principal(75));
        peer.next().await; // welcome
        peer.send(serde_json::json!({"type": "auth", "id": 1, "token": token("u2", 3600)}));
        let other_user = json(peer.next_answering_pings().await);
        assert_eq!(other_user["code"], "unauthorized", "{other_user}");
        assert!(other_user["message"]
            .as_str()
            .unwrap()
            .contains("cannot change its user"));
        peer.send(serde_json::json!({"type": "auth", "id": 2, "token": "garbage"}));
        let garbage = json(peer.next_answering_pings().await);
        assert_eq!(
            (garbage["code"].as_str(), &garbage["id"]),
            (Some("unauthorized"), &2.into())
        );
        // Both refusals leave the connection open, and the first token's expiry in force.
        let error = json(peer.next_answering_pings().await);
        assert!(
            error["message"]
                .as_str()
                .unwrap()
                .starts_with("token expired"),
            "{error}"
        );
        assert_eq!(close_code(&peer.next().await), Some(close::UNAUTHORIZED));
        let elapsed = started.elapsed().as_secs();
        assert!((74..=76).contains(&elapsed), "closed at {elapsed} s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_accepted_inside_the_leeway_lives_only_until_exp_plus_leeway() {
        let started = Instant::now();
        let mut p = principal(0);
        p.expires_at -= 10; // expired ten seconds ago, inside a 30 s leeway
        let mut peer = start_with_leeway(p, Duration::from_secs(30));
        peer.next().await; // welcome
        let error = peer.next().await.into_text().unwrap();
        assert!(error.contains("expired"), "{error}");
        let elapsed = started.elapsed().as_secs();
        assert!(
            (19..=21).contains(&elapsed),
            "closed after {elapsed} s, not 20"
        );
    }
}
