//! A connection's reader: reads every frame as it arrives, records liveness, runs the heartbeat,
//! the token or auth deadline and the frame limiter, answers `ping` itself, and hands every other
//! request to the handler through the bounded [`Inbox`]. It never awaits anything but the socket
//! and timers, so a busy handler never turns into a dead connection.

use std::collections::VecDeque;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::sleep_until;
use tokio_tungstenite::tungstenite::error::{CapacityError, ProtocolError};

use super::*;
use crate::limits::{FrameLimiter, FrameVerdict};

/// What the reader hands to the handler.
#[derive(Debug)]
pub(super) enum Work {
    /// A decoded request (never a `ping` once authenticated: the reader answers those).
    Request(Request),
}

impl Work {
    /// Whether doing it changes what others see (a publish, a read marker): such requests are
    /// still done after their connection closed.
    pub(super) fn changes_state(&self) -> bool {
        match self {
            Work::Request(r) => {
                matches!(r.frame, ClientFrame::Publish(_) | ClientFrame::Read { .. })
            }
        }
    }
}

/// The hand-over between a connection's reader and its handler: the bounded request queue, and
/// the deadline the handler moves when it authenticates.
#[derive(Debug)]
pub(super) struct Inbox {
    /// Queue and deadline.
    state: Mutex<InboxState>,
    /// Wakes the handler: work was queued, or the reader ended.
    work: Notify,
    /// Wakes the reader: the deadline moved.
    deadline_moved: Notify,
    /// Wakes the handler: the connection was closed for what its peer did (token expired, a
    /// flood, a protocol error): nothing more it sent is to be done.
    abort: Notify,
}

#[derive(Debug)]
pub(super) struct InboxState {
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
    /// The connection was closed for what its peer did: queued requests are dropped, and the
    /// one being answered is abandoned.
    aborted: bool,
}

impl Inbox {
    pub(super) fn new(deadline: Instant) -> Self {
        Inbox {
            state: Mutex::new(InboxState {
                queue: VecDeque::new(),
                bytes: 0,
                deadline,
                authenticated: false,
                ended: false,
                aborted: false,
            }),
            work: Notify::new(),
            deadline_moved: Notify::new(),
            abort: Notify::new(),
        }
    }

    /// Queues work for the handler; false (the work dropped) when the queue is full.
    pub(super) fn offer(&self, work: Work, bytes: usize) -> bool {
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

    /// The next request, or `None` once the reader ended and the queue is empty, or at once
    /// when the connection was aborted (what it queued is not done).
    pub(super) async fn next(&self) -> Option<Work> {
        loop {
            let notified = self.work.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state.lock();
                if state.aborted {
                    return None;
                }
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

    pub(super) fn end(&self) {
        self.state.lock().ended = true;
        self.work.notify_one();
    }

    /// Ends the connection's work for what its peer did: what it queued is dropped.
    pub(super) fn abort(&self) {
        {
            let mut state = self.state.lock();
            state.aborted = true;
            state.ended = true;
            state.queue = VecDeque::new();
            state.bytes = 0;
        }
        self.work.notify_one();
        self.abort.notify_waiters();
    }

    /// Resolves once [`Inbox::abort`] was called.
    pub(super) async fn aborted(&self) {
        loop {
            let notified = self.abort.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.lock().aborted {
                return;
            }
            notified.await;
        }
    }

    pub(super) fn deadline(&self) -> (Instant, bool) {
        let state = self.state.lock();
        (state.deadline, state.authenticated)
    }

    pub(super) fn authenticated(&self, deadline: Instant) {
        {
            let mut state = self.state.lock();
            state.deadline = deadline;
            state.authenticated = true;
        }
        self.deadline_moved.notify_one();
    }
}

/// A connection's reader (see the module documentation).
pub(super) struct Reader<'a> {
    pub(super) node: &'a Node,
    pub(super) outbound: &'a Outbound,
    pub(super) inbox: &'a Inbox,
    /// The codec replies of the reader's own are encoded in.
    pub(super) codec: Codec,
    /// The connection's frame rate.
    pub(super) frames: FrameLimiter,
}

impl Reader<'_> {
    pub(super) async fn read<R>(&mut self, stream: &mut R)
    where
        R: Stream<Item = Result<Message, WsError>> + Unpin,
    {
        // One timer for both the deadline and the heartbeat (whichever comes first), so an idle
        // connection holds one timer, not two.
        let mut next_beat = Instant::now() + self.node.config().heartbeat_interval;
        let timer = sleep_until(next_beat);
        tokio::pin!(timer);
        let mut last_seen = Instant::now();
        let outbound = self.outbound;
        loop {
            let (deadline, authenticated) = self.inbox.deadline();
            {
                let wake = next_beat.min(deadline);
                if timer.deadline() != wake {
                    timer.as_mut().reset(wake);
                }
            }
            tokio::select! {
                biased;
                _ = outbound.closed() => return,
                _ = self.inbox.deadline_moved.notified() => {}
                _ = &mut timer => {
                    if Instant::now() >= deadline {
                        let message = if authenticated {
                            "token expired: reconnect with a fresh token"
                        } else {
                            "authentication timed out"
                        };
                        self.reply(ServerFrame::error(None, ErrorCode::Unauthorized, message));
                        self.node.count_error(ErrorCode::Unauthorized);
                        outbound.close(close::UNAUTHORIZED, message);
                        self.inbox.abort();
                        return;
                    }
                    if last_seen.elapsed() >= self.node.config().heartbeat_timeout {
                        outbound.close(close::HEARTBEAT_TIMEOUT, "no traffic within the heartbeat timeout");
                        return;
                    }
                    outbound.push_control(Message::Ping(Default::default()));
                    // Like an interval that delays missed ticks: the next beat is a whole
                    // interval after this one was seen.
                    next_beat = Instant::now() + self.node.config().heartbeat_interval;
                }
                incoming = stream.next() => {
                    last_seen = Instant::now();
                    match incoming {
                        None => return,
                        #[cfg(feature = "autobahn")]
                        Some(Ok(message @ (Message::Text(_) | Message::Binary(_))))
                            if self.node.config().session_mode == crate::config::SessionMode::Echo =>
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
                            if protocol_failure(self.node, outbound, e) {
                                self.inbox.abort();
                            }
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Takes one data frame: refused over the frame rate, answered here when it is a `ping` or
    /// cannot be decoded, otherwise queued for the handler. False when the connection must end.
    pub(super) fn data(&mut self, message: Message, authenticated: bool) -> bool {
        let (codec, bytes): (Codec, &[u8]) = match &message {
            Message::Text(text) => (Codec::Json, text.as_bytes()),
            Message::Binary(bytes) => (Codec::MsgPack, bytes),
            _ => return true,
        };
        match self.frames.check() {
            FrameVerdict::Allow => {}
            FrameVerdict::Refuse(wait) => {
                self.node
                    .metrics()
                    .rate_limited
                    .with_label_values(&["frame"])
                    .inc();
                let message = format!(
                    "too many frames: at most {} a second; this one was not processed",
                    self.node.config().rate_limits.frames_per_second
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
                .metrics()
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
    pub(super) fn refuse(&self, id: Option<u64>, message: String, retry_after_ms: u64) {
        self.node.count_error(ErrorCode::RateLimited);
        self.reply(ServerFrame::Error {
            id,
            code: ErrorCode::RateLimited,
            message,
            retry_after_ms: Some(retry_after_ms),
        });
    }

    pub(super) fn flood_close(&self) {
        self.node
            .metrics()
            .rate_limited
            .with_label_values(&["flood_close"])
            .inc();
        self.outbound.close(
            close::POLICY_VIOLATION,
            "frame rate exceeded after rate_limited errors",
        );
        self.inbox.abort();
    }

    /// Queues one of the reader's own replies. Never waits: a peer that does not read is not
    /// worth blocking for (it ends as a slow consumer).
    pub(super) fn reply(&self, frame: ServerFrame) {
        if let Some(message) = hub::encode(self.codec, &frame) {
            self.outbound.push_control(message);
        }
    }
}

/// Closes the connection with the code that names what the peer did wrong; true when it did
/// something wrong (rather than simply going away), so what it queued is not to be done.
fn protocol_failure(node: &Node, outbound: &Outbound, e: WsError) -> bool {
    let max = node.config().max_frame_bytes;
    match e {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => {
            node.count_error(ErrorCode::TooLarge);
            outbound.close(close::TOO_BIG, &format!("frame exceeds {max} bytes"));
        }
        WsError::Capacity(_) => outbound.close(close::TOO_BIG, "frame too large"),
        WsError::Utf8(_) => outbound.close(close::INVALID_PAYLOAD, "text frame is not valid UTF-8"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | WsError::ConnectionClosed
        | WsError::Io(_) => {
            outbound.close(close::NORMAL, "");
            return false;
        }
        WsError::Protocol(p) => outbound.close(close::PROTOCOL_ERROR, &p.to_string()),
        other => {
            tracing::debug!(error = %other, "connection failed");
            outbound.close(close::PROTOCOL_ERROR, "protocol error");
        }
    }
    true
}
