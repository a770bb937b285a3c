//! The task that owns the connection ([`drive`]): connects to each node URL in turn, reconnects
//! after a close as its code says with full-jitter backoff, gets and renews the token, and ends
//! every request when the client closes. One connection's life is [`crate::session`].

use std::sync::Arc;

use bellhop_protocol::close;
use rand::SeedableRng;
use tokio::sync::mpsc;

use crate::events::{Error, Event, State, SubState};
use crate::options::Token;
use crate::session::{session, Outcome};
use crate::shared::{lock, Command, Shared};
use crate::{backoff, Plan};

/// Stops reconnecting after a close: an [`Event::Error`] saying why (when there is more to say
/// than the close), then `Disconnected` with the close's code and reason.
fn stop(shared: &Shared, why: Option<(&'static str, String)>, code: u16, reason: String) {
    if let Some((kind, message)) = why {
        shared.emit(Event::Error { kind, message });
    }
    shared.set_state(State::Disconnected);
    shared.emit(Event::Disconnected { code, reason });
}

/// The task that owns the connection: connects, reconnects, and serves the commands.
pub(crate) async fn drive(shared: Arc<Shared>, mut rx: mpsc::UnboundedReceiver<Command>) {
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
                stop(&shared, None, close::NORMAL, "disconnect called".into());
                continue;
            }
            Outcome::Stop { code, reason } => {
                wanted = false;
                stop(&shared, None, code, reason);
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
                let why = format!("closed with {code} {reason}: not reconnecting");
                stop(&shared, Some(("transport", why)), code, reason);
                continue;
            }
            Plan::NewToken => {
                if matches!(shared.opts.token, Token::Fixed(_)) {
                    wanted = false;
                    let why = format!("unauthorized ({reason}) and the token is fixed");
                    stop(&shared, Some(("token", why)), code, reason);
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

pub(crate) fn finish(shared: &Shared, rx: &mut mpsc::UnboundedReceiver<Command>) {
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
