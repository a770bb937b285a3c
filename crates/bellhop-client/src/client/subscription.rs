//! A channel's subscription as the application holds it ([`Subscription`]): its events, its
//! position (the offset of the last message delivered), read markers and typing; dropping it
//! unsubscribes. The connection task moves its position; this never talks to the node itself.

use std::sync::Arc;

use bellhop_protocol::Offset;
use tokio::sync::mpsc;

use super::Client;
use crate::events::{Error, ReadAck, SubEvent, SubState};
use crate::shared::{lock, Command, SubShared};

/// A channel's subscription. Read its events with [`Subscription::next`]; drop it to unsubscribe.
#[derive(Debug)]
pub struct Subscription {
    pub(crate) client: Client,
    pub(crate) shared: Arc<SubShared>,
    pub(crate) rx: mpsc::Receiver<SubEvent>,
}

impl std::fmt::Debug for SubShared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubShared")
            .field("channel", &self.channel.to_string())
            .finish()
    }
}

impl Subscription {
    /// The next event (`None` once unsubscribed and drained).
    pub async fn next(&mut self) -> Option<SubEvent> {
        self.rx.recv().await
    }

    /// The channel.
    pub fn channel(&self) -> String {
        self.shared.channel.to_string()
    }

    /// The state.
    pub fn state(&self) -> SubState {
        lock(&self.shared.inner).state
    }

    /// The offset of the last message delivered (or the channel's position when it started):
    /// save it, and pass it as `since` to resume after a restart.
    pub fn last_offset(&self) -> Option<Offset> {
        lock(&self.shared.inner).last_offset
    }

    /// Messages delivered.
    pub fn delivered(&self) -> u64 {
        lock(&self.shared.inner).delivered
    }

    /// Messages dropped because their offset was not after the last one.
    pub fn duplicates_dropped(&self) -> u64 {
        lock(&self.shared.inner).duplicates
    }

    /// Unread messages (from the last `subscribed` or `read`).
    pub fn unread(&self) -> u64 {
        lock(&self.shared.inner).unread
    }

    /// The last `subscribed`'s `recovered`.
    pub fn recovered(&self) -> Option<bool> {
        lock(&self.shared.inner).recovered
    }

    /// Marks the channel read up to the last delivered message.
    pub async fn read(&self) -> Result<ReadAck, Error> {
        let offset = self
            .last_offset()
            .ok_or_else(|| Error::Invalid("nothing delivered yet".into()))?;
        let ack = self.client.read(&self.channel(), offset).await?;
        lock(&self.shared.inner).unread = ack.unread;
        Ok(ack)
    }

    /// Throttled `typing` on this channel.
    pub fn typing(&self) -> bool {
        self.client.typing(&self.channel())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let name = self.shared.channel.to_string();
        let mut subs = lock(&self.client.shared.subs);
        if subs
            .get(&name)
            .is_some_and(|s| Arc::ptr_eq(s, &self.shared))
        {
            subs.remove(&name);
            let _ = self
                .client
                .shared
                .commands
                .send(Command::Unsubscribe(self.shared.channel.clone()));
        }
    }
}
