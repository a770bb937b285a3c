//! The node's register of open WebSocket connections: the permits that cap how many there may
//! be, their ids, each one's outbound queue (for drain), and a wake-up when one ends. It never
//! reads or writes a socket, and it is touched once when a connection opens and once when it
//! ends, never per message.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};

use crate::outbound::Outbound;

/// The open connections of one node.
#[derive(Debug)]
pub(crate) struct Connections {
    /// Each open connection's outbound queue by its id, so that drain can close them all.
    open: Mutex<HashMap<u64, Arc<Outbound>>>,
    /// Notified whenever a connection ends, for whoever waits for fewer of them.
    ended: Notify,
    /// One permit per allowed connection (`MAX_CONNECTIONS`), taken before the upgrade.
    slots: Arc<Semaphore>,
    /// Source of connection ids.
    next_id: AtomicU64,
}

impl Connections {
    /// No connections, and room for `max` of them.
    pub(crate) fn new(max: usize) -> Self {
        Connections {
            open: Mutex::new(HashMap::new()),
            ended: Notify::new(),
            slots: Arc::new(Semaphore::new(max)),
            next_id: AtomicU64::new(1),
        }
    }

    /// A place for one more connection, or `None` when the node is at capacity. The connection
    /// holds it until it ends.
    pub(crate) fn try_reserve(&self) -> Option<OwnedSemaphorePermit> {
        self.slots.clone().try_acquire_owned().ok()
    }

    /// A new connection's id (never one given before).
    pub(crate) fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Records connection `id` as open, with its outbound queue.
    pub(crate) fn insert(&self, id: u64, outbound: Arc<Outbound>) {
        self.open.lock().insert(id, outbound);
    }

    /// Forgets connection `id` (its end is announced with [`Connections::notify_ended`]).
    pub(crate) fn remove(&self, id: u64) {
        self.open.lock().remove(&id);
    }

    /// Wakes whoever waits in [`Connections::wait_at_most`].
    pub(crate) fn notify_ended(&self) {
        self.ended.notify_waiters();
    }

    /// How many connections are open.
    pub(crate) fn len(&self) -> usize {
        self.open.lock().len()
    }

    /// The outbound queues of the open connections, as they are now.
    pub(crate) fn outbounds(&self) -> Vec<Arc<Outbound>> {
        self.open.lock().values().cloned().collect()
    }

    /// Returns once at most `n` connections are open: each connection's end wakes it. Callers
    /// bound it with a timeout.
    pub(crate) async fn wait_at_most(&self, n: usize) {
        loop {
            let ended = self.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if self.len() <= n {
                return;
            }
            ended.await;
        }
    }
}
