//! The cap on connections per client address that are not WebSocket sessions yet
//! ([`PendingByAddress`]), taken before TLS and the HTTP head, given back when a slot drops.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use parking_lot::Mutex;

/// Connections per client address that are not WebSocket sessions yet (being handshaken, sending
/// their head, or HTTP API connections), capped per address. Shared by the accept loop and the
/// [`PendingSlot`]s it hands out; a slot's drop gives its place back.
#[derive(Debug)]
pub(crate) struct PendingByAddress {
    /// The cap (`MAX_PENDING_PER_IP`).
    max: usize,
    /// Pending connections per address; an address leaves the map with its last one.
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One pending connection's place in [`PendingByAddress`].
#[derive(Debug)]
pub(crate) struct PendingSlot {
    table: Arc<PendingByAddress>,
    ip: IpAddr,
}

impl PendingByAddress {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(PendingByAddress {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more pending connection of `ip`, or `None` when it has `max` already.
    pub(crate) fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<PendingSlot> {
        let mut counts = self.counts.lock();
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PendingSlot {
            table: self.clone(),
            ip,
        })
    }

    /// Pending connections of `ip` now.
    #[cfg(test)]
    pub(crate) fn count(&self, ip: IpAddr) -> usize {
        self.counts.lock().get(&ip).copied().unwrap_or(0)
    }

    /// Addresses with a pending connection.
    #[cfg(test)]
    pub(crate) fn addresses(&self) -> usize {
        self.counts.lock().len()
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}
