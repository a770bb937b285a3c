//! One connection's life ([`session`]): open the WebSocket, authenticate, resubscribe every
//! wanted channel `since` its last offset, then serve commands and frames until it ends; each
//! frame from the node ([`on_frame`]) answers a pending request or moves a subscription (dropping
//! repeats by offset). It says how the connection ended ([`Outcome`]); deciding what to do next
//! is [`crate::connection`]'s.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bellhop_protocol::{
    close, Channel, ClientFrame, Codec, ErrorCode, Offset, Request, ServerFrame,
};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

use crate::events::{Error, Event, State, SubEvent, SubState};
use crate::options::Token;
use crate::shared::{lock, Command, Shared, SubShared};
use crate::shared::{parse_channel, MAX_FRAME_BYTES};
use crate::token::{get_token, refresh_at};
use crate::{token, transport};

/// How a connection ended.
pub(crate) enum Outcome {
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

pub(crate) enum Pending {
    Request(oneshot::Sender<Result<ServerFrame, Error>>),
    Subscribe(String, Option<Offset>),
    Auth(Option<u64>),
    Ignore,
}

pub(crate) fn encode(id: Option<u64>, frame: ClientFrame) -> Message {
    Message::text(Request { id, frame }.to_value().to_string())
}

pub(crate) fn close_of(frame: Option<CloseFrame>) -> (u16, String) {
    match frame {
        Some(f) => (u16::from(f.code), f.reason.to_string()),
        None => (1005, "closed without a code".into()),
    }
}

/// One connection: open, authenticate, resubscribe, then serve until it ends.
pub(crate) async fn session(
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

pub(crate) enum FrameResult {
    None,
    Refreshed(Option<u64>),
    RefreshFailed(String),
}

pub(crate) fn sub_of(shared: &Shared, channel: &Channel) -> Option<Arc<SubShared>> {
    lock(&shared.subs).get(&channel.to_string()).cloned()
}

pub(crate) async fn on_frame(
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
