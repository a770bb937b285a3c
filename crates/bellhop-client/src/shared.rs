//! What the [`crate::Client`] handles and the connection task share: the client's state
//! ([`Shared`]: options, state and event channels, subscriptions, the welcome), each
//! subscription's position ([`SubShared`]), and the [`Command`]s a handle sends the task. It never
//! touches the socket.

use std::collections::HashMap;
use std::sync::Arc;

use bellhop_protocol::{Channel, ClientFrame, Offset, ServerFrame, Welcome};
use parking_lot::{Mutex, MutexGuard};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::events::{Error, Event, State, SubEvent, SubState};
use crate::options::ClientOptions;

pub(crate) struct SubInner {
    pub(crate) state: SubState,
    pub(crate) wanted: bool,
    pub(crate) last_offset: Option<Offset>,
    pub(crate) delivered: u64,
    pub(crate) duplicates: u64,
    pub(crate) unread: u64,
    pub(crate) recovered: Option<bool>,
    /// The connection (its number) on which a `subscribe` was last sent: sent once per
    /// connection (a second one would be refused as a repeat).
    pub(crate) sent_on: u64,
}

pub(crate) struct SubShared {
    pub(crate) channel: Channel,
    pub(crate) inner: Mutex<SubInner>,
    pub(crate) tx: mpsc::Sender<SubEvent>,
}

pub(crate) enum Command {
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

pub(crate) struct Shared {
    pub(crate) opts: ClientOptions,
    pub(crate) state: watch::Sender<State>,
    pub(crate) events: broadcast::Sender<Event>,
    pub(crate) commands: mpsc::UnboundedSender<Command>,
    pub(crate) subs: Mutex<HashMap<String, Arc<SubShared>>>,
    pub(crate) session: Mutex<Option<Welcome>>,
    pub(crate) typing: Mutex<HashMap<String, Instant>>,
    /// Numbers the connections, from 1.
    pub(crate) connections: std::sync::atomic::AtomicU64,
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock()
}

impl Shared {
    pub(crate) fn set_state(&self, new: State) {
        let old = self.state.send_replace(new);
        if old != new {
            let _ = self.events.send(Event::State { old, new });
        }
    }

    pub(crate) fn emit(&self, event: Event) {
        let _ = self.events.send(event);
    }
}

/// The largest frame a node accepts (`MAX_FRAME_BYTES`, 64 KiB by default): a bigger one would
/// be closed with `1009`, so it is refused here instead.
pub(crate) const MAX_FRAME_BYTES: usize = 64 * 1024;

/// A channel name as the protocol's [`Channel`], or the SDK's `invalid` error.
pub(crate) fn parse_channel(channel: &str) -> Result<Channel, Error> {
    channel
        .parse()
        .map_err(|e: bellhop_protocol::ChannelError| Error::Invalid(e.to_string()))
}
