//! The embedded broker's memory of idempotent publishes: the result of each publish with an
//! idempotency key, by channel and key, for as long as its window lasts and at most a set number
//! of them (the oldest are forgotten first). It stores no messages and knows no channels' state.

use std::collections::{HashMap, VecDeque};

use bellhop_protocol::Offset;

use crate::broker::{ChannelKey, Published};

/// The results of recent publishes with an idempotency key, by channel and key.
#[derive(Debug, Default)]
pub(super) struct Idempotency {
    /// The original's offset, message id and when it is forgotten (ms).
    pub(super) results: HashMap<(ChannelKey, String), (Offset, String, u64)>,
    /// Keys in the order they were remembered, with their expiry: every window is the same
    /// length, so this is expiry order too (unless the clock stepped back, which only delays
    /// forgetting).
    pub(super) order: VecDeque<(u64, (ChannelKey, String))>,
}

impl Idempotency {
    /// Forgets what expired by `now`, and the oldest beyond `cap`.
    pub(super) fn evict(&mut self, now: u64, cap: usize) {
        while let Some((expires, _)) = self.order.front() {
            if *expires > now && self.results.len() <= cap {
                break;
            }
            let Some((expires, key)) = self.order.pop_front() else {
                break;
            };
            // A key remembered again after it expired has a newer entry further back.
            if self.results.get(&key).is_some_and(|r| r.2 == expires) {
                self.results.remove(&key);
            }
        }
    }

    /// The original result for `key`, if it is still in its window at `now`.
    pub(super) fn get(&self, key: &(ChannelKey, String), now: u64) -> Option<Published> {
        self.results
            .get(key)
            .filter(|(_, _, expires)| *expires > now)
            .map(|(offset, message_id, _)| Published {
                offset: *offset,
                message_id: message_id.clone(),
                duplicate: true,
            })
    }

    /// Remembers a stored publish's result until `expires`.
    pub(super) fn insert(
        &mut self,
        key: (ChannelKey, String),
        published: &Published,
        expires: u64,
    ) {
        self.order.push_back((expires, key.clone()));
        self.results.insert(
            key,
            (published.offset, published.message_id.clone(), expires),
        );
    }
}
