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
//! - the **handler** answers requests in order, so replies to pipelined requests keep their
//!   order (pongs and refusals, which the reader sends itself, may overtake them). Consecutive
//!   publishes are pipelined: up to [`MAX_PIPELINED`] go to the dispatcher without waiting for
//!   the one before to be stored (they are queued in the order sent, and the dispatcher keeps
//!   that order within a priority), and their acks go out in that order; any other request
//!   waits until every publish before it is answered. So one connection's publishes share the
//!   dispatcher's batches instead of paying a broker round trip each;
//! - the **writer** sends the outbound queue to the socket: everything queued at once, as the
//!   frames' wire bytes, in one vectored write per wake-up (see [`crate::wire`]).
//!
//! The reader and the handler run in the connection's task (joined, not spawned), the writer in
//! a task of its own. Files: the reader (`reader.rs`), the writer (`writer.rs`), pipelined
//! publishes (`pipeline.rs`), subscriptions with their replay and hand-over
//! (`subscriptions.rs`); this one holds the start, the handler's loop and authentication.

use std::sync::Arc;
use std::time::Duration;

use bellhop_dispatcher::ChannelEvent;
use bellhop_protocol::{
    close, Channel, ClientFrame, Codec, ErrorCode, Offset, Request, ServerFrame, Welcome,
};
use futures_util::{Stream, StreamExt};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::Message;

use crate::auth::{AuthError, Principal};
use crate::hub;
use crate::node::{ms_ceil, Node, RequestError};
use crate::outbound::{Batch, Class, Outbound, Sent};
use crate::policy::{self, Access};
use crate::wire::{Wire, WireFrame};

mod pipeline;
mod reader;
mod subscriptions;
#[cfg(test)]
mod tests;
mod writer;

use pipeline::{next_answer, Pipeline, Step, MAX_PIPELINED};
use reader::{Inbox, Reader, Work};
use subscriptions::Subscriptions;
use writer::write_loop;

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
    /// Who the upgrade request authenticated, if it carried a token (boxed: the connection's
    /// task holds it until the session takes it).
    pub(crate) principal: Option<Box<Principal>>,
    /// The negotiated codec.
    pub(crate) codec: Codec,
    /// The connection's slot under `MAX_CONNECTIONS`, released when it ends.
    pub(crate) permit: OwnedSemaphorePermit,
}

/// Runs a connection to its end: `stream` is what the peer sends, `wire` where the writer
/// writes. Returns both when the writer finished in time (its close frame sent), so the caller
/// can linger on the socket before dropping it (see `upgrade::linger`).
///
/// Registers the connection and starts its writer at once, and returns the rest as a future
/// that holds only what the connection needs while it runs. (An `async fn` keeps its arguments
/// for as long as it runs, beside the locals they were moved into: the wire, moved into the
/// writer task, and the opening would then take room in every idle connection's task.)
pub(crate) fn run<R, W>(
    node: Arc<Node>,
    mut stream: R,
    mut wire: W,
    opening: Opening,
) -> impl std::future::Future<Output = Option<(R, W)>> + Send
where
    R: Stream<Item = Result<Message, WsError>> + Send + Unpin + 'static,
    W: Wire,
{
    let conn_id = node.connections().next_id();
    let outbound = Arc::new(Outbound::new(node.config().outbound.clone()));
    node.connections().insert(conn_id, outbound.clone());
    node.metrics().connections.inc();
    node.metrics().connections_opened.inc();
    wire.attach(&outbound);
    let writer = tokio::spawn(write_loop(
        wire,
        outbound.clone(),
        node.config().write_timeout,
    ));
    let Opening {
        principal,
        codec,
        permit,
    } = opening;
    async move {
        let inbox = Inbox::new(Instant::now() + node.config().auth.auth_timeout);
        let mut session = Session {
            node: node.clone(),
            conn_id,
            session_id: uuid::Uuid::new_v4(),
            outbound: outbound.clone(),
            codec,
            principal: None,
            inbox: &inbox,
            subscriptions: Subscriptions::default(),
            counted: false,
        };
        // The futures of the rare steps are boxed: a connection's task is as large as its
        // largest step, and most of its life it only waits for the next frame
        // (docs/BENCHMARKS.md).
        if let Some(p) = principal {
            Box::pin(session.welcome(None, *p)).await;
        }
        let mut reader = Reader {
            node: &node,
            outbound: &outbound,
            inbox: &inbox,
            codec,
            frames: node.limits().frame_limiter(),
        };
        let read = async {
            reader.read(&mut stream).await;
            inbox.end();
        };
        tokio::join!(read, session.serve());
        // The peer may have simply gone away: make sure the writer finishes either way.
        outbound.close(close::NORMAL, "");
        Box::pin(session.leave_all()).await;
        if let (true, Some(p)) = (session.counted, &session.principal) {
            node.limits()
                .remove_user_connection(&p.property, &p.user_id);
        }
        // The writer sends what is left and the close frame, bounded by the write timeout.
        let sink = tokio::time::timeout(node.config().write_timeout * 2, writer).await;
        node.connections().remove(conn_id);
        node.metrics().connections.dec();
        drop(permit);
        node.connections().notify_ended();
        match sink {
            Ok(Ok(wire)) => Some((stream, wire)),
            _ => None,
        }
    }
}
/// One connection's protocol state, owned by its handler.
struct Session<'a> {
    node: Arc<Node>,
    conn_id: u64,
    /// Identifies this connection in presence and in `welcome` (as text only when sent: see
    /// [`Session::session_text`]).
    session_id: uuid::Uuid,
    outbound: Arc<Outbound>,
    codec: Codec,
    /// `None` until authenticated.
    principal: Option<Principal>,
    /// Where the reader hands requests over, and where authentication moves the deadline.
    inbox: &'a Inbox,
    /// Channels this connection subscribed to.
    subscriptions: Subscriptions,
    /// Whether this connection is counted under the per-user cap: under its principal's
    /// (property, user), which re-authentication cannot change.
    counted: bool,
}

/// Sleeps until `until`, or forever without one. The timer is boxed: only a closing connection
/// has one, and every idle connection's handler would otherwise hold its room.
async fn sleep_or_never(until: Option<Instant>) {
    match until {
        Some(t) => Box::pin(tokio::time::sleep_until(t)).await,
        None => std::future::pending().await,
    }
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
    /// The session id as presence records it, written into `buf`.
    fn session_text<'b>(&self, buf: &'b mut [u8]) -> &'b str {
        self.session_id.hyphenated().encode_lower(buf)
    }

    /// Answers the reader's requests one at a time until the connection closes. A request still
    /// running when it closes (a replay, say, when the token expires) is abandoned.
    async fn serve(&mut self) {
        let outbound = self.outbound.clone();
        // Once the connection is closing, what the peer sent before it left is still done if it
        // changes state for others (publishes, read markers: its requests were read, so they
        // must not be lost because the handler was behind), for at most the write timeout;
        // nothing else is answered. A connection closed for what its peer did (token expired, a
        // flood, a protocol error) is aborted instead: nothing more it sent is done.
        let mut drain_until: Option<Instant> = None;
        // Made by the first pipelined publish and dropped once drained: an idle connection's
        // task holds a pointer, not a queue.
        let mut pipeline: Option<Box<Pipeline>> = None;
        loop {
            if drain_until.is_none() && outbound.is_closing() {
                drain_until = Some(Instant::now() + self.node.config().write_timeout);
            }
            let until = drain_until;
            let in_flight = pipeline.as_ref().map_or(0, |p| p.len());
            // An abort ends the wait too: `next` then says there is no more work (one wait
            // fewer in every idle connection's task than an `aborted` branch here).
            let step = tokio::select! {
                biased;
                _ = sleep_or_never(until) => return,
                answer = next_answer(&mut pipeline), if in_flight > 0 => match answer {
                    Some(answer) => Step::Answer(answer),
                    None => continue,
                },
                _ = outbound.closed(), if until.is_none() => continue,
                work = self.inbox.next(), if in_flight < MAX_PIPELINED => Step::Work(work),
            };
            let work = match step {
                Step::Answer((id, result)) => {
                    if pipeline.as_ref().is_some_and(|p| p.is_empty()) {
                        pipeline = None;
                    }
                    // Boxed, like every step but the wait: an idle connection's task is as large
                    // as its largest step.
                    tokio::select! {
                        biased;
                        _ = self.inbox.aborted() => return,
                        _ = sleep_or_never(until) => return,
                        _ = Box::pin(self.answer_publish(id, result)) => {}
                    }
                    continue;
                }
                Step::Work(Some(work)) => work,
                Step::Work(None) => {
                    // The peer sent nothing more: what it published is still answered.
                    if pipeline.is_some() {
                        Box::pin(self.finish(&mut pipeline, until)).await;
                    }
                    return;
                }
            };
            if until.is_some() && !work.changes_state() {
                continue;
            }
            let work = match self.pipelined(work) {
                Ok(publish) => {
                    pipeline
                        .get_or_insert_with(Default::default)
                        .push_back(publish);
                    continue;
                }
                Err(work) => work,
            };
            // Anything else is done after the publishes before it are answered.
            if pipeline.is_some() && !Box::pin(self.finish(&mut pipeline, until)).await {
                return;
            }
            tokio::select! {
                biased;
                _ = self.inbox.aborted() => return,
                _ = sleep_or_never(until) => return,
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
        if !self.counted {
            if !self
                .node
                .limits()
                .add_user_connection(&p.property, &p.user_id)
            {
                self.node
                    .metrics()
                    .rate_limited
                    .with_label_values(&["user_connections"])
                    .inc();
                let max = self.node.config().rate_limits.max_connections_per_user;
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
            self.counted = true;
        }
        let frame = ServerFrame::Welcome(Welcome {
            id,
            session_id: self.session_id.to_string(),
            node: self.node.config().node_id.clone(),
            user_id: p.user_id.clone(),
            role: p.role,
            property: p.property.clone(),
            heartbeat_seconds: self.node.config().heartbeat_interval.as_secs(),
        });
        tracing::debug!(user = %p.user_id, property = %p.property, "authenticated");
        self.inbox
            .authenticated(expiry_instant(p.expires_at, self.node.config().auth.leeway));
        self.principal = Some(p);
        #[cfg(feature = "autobahn")]
        if self.node.config().session_mode == crate::config::SessionMode::Echo {
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
            ClientFrame::Publish(publish) => {
                let result = self.node.publish(&p, publish).await;
                self.answer_publish(id, result).await;
                Ok(())
            }
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
        match (self.node.verifier().verify(token), &self.principal) {
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

    async fn typing(&self, p: &Principal, channel: Channel) -> Result<(), RequestError> {
        self.node.authorize(p, Access::Publish, &channel)?;
        let key = Node::key(p, &channel);
        // Coalesced where it arrives: a typist costs the audience one notice per interval.
        if !self
            .node
            .fairness()
            .typing_allowed(&key, &p.user_id, Instant::now())
        {
            self.node
                .metrics()
                .queue_drops
                .with_label_values(&["typing_coalesced"])
                .inc();
            return Ok(());
        }
        let event = ChannelEvent::Typing {
            user_id: p.user_id.clone(),
        };
        self.node.broker().publish_ephemeral(&key, event).await?;
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
