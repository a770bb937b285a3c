//! A connection's subscriptions: `subscribe` (authorize, join the hub as pending, replay what
//! the client missed after `since`, hand over to live delivery, record presence), `unsubscribe`,
//! and leaving every channel when the connection ends.

use bellhop_dispatcher::ChannelKey;
use bellhop_protocol::{Channel, ErrorCode, Offset, ServerFrame};

use super::{Session, REPLAY_PAGE};
use crate::auth::Principal;
use crate::hub::{self, Activation, Subscriber};
use crate::node::{Node, RequestError};
use crate::outbound::{channel_tag, Class, Sent};
use crate::policy::{self, Access};

/// The channels a connection subscribed to: a list, searched (a connection holds a few, at most
/// `max_subscriptions_per_connection`, 256), grown by what it needs rather than in steps of four,
/// since most connections hold two (their `user:` channel and a room) for their whole life.
#[derive(Debug, Default)]
pub(super) struct Subscriptions(Vec<Channel>);

impl Subscriptions {
    pub(super) fn contains(&self, channel: &Channel) -> bool {
        self.0.contains(channel)
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = &Channel> {
        self.0.iter()
    }

    /// Adds a channel it does not hold.
    pub(super) fn insert(&mut self, channel: Channel) {
        if self.0.len() == self.0.capacity() {
            self.0.reserve_exact(self.0.len().max(1));
        }
        self.0.push(channel);
    }

    /// Removes a channel; false when it was not held.
    pub(super) fn remove(&mut self, channel: &Channel) -> bool {
        let Some(at) = self.0.iter().position(|c| c == channel) else {
            return false;
        };
        self.0.swap_remove(at);
        if self.0.is_empty() {
            self.0 = Vec::new();
        }
        true
    }
}

impl Session<'_> {
    pub(super) async fn subscribe(
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
        let max = self.node.config().max_subscriptions_per_connection;
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
        self.node.hub().join(&key, subscriber).await?;
        self.subscriptions.insert(channel.clone());
        self.node.metrics().subscriptions.inc();
        // Everything that can fail after the join is rolled back, `subscribed` sent or not: the
        // client's `error` (same id) means "not subscribed", and a retry starts clean.
        if let Err(e) = self.start_delivery(id, p, &key, since).await {
            self.leave(p, &channel, false).await;
            return Err(e);
        }
        // Presence is best-effort: a failure to record or announce it must not undo a
        // subscription whose messages are already flowing.
        let broker = self.node.broker();
        let mut session = uuid::Uuid::encode_buffer();
        match broker
            .presence_join(&key, &p.user_id, self.session_text(&mut session))
            .await
        {
            Ok(true) => self.node.announce_presence(&key, &p.user_id, true).await,
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, channel = %key, "presence join failed"),
        }
        Ok(())
    }

    /// Replays what the client missed and hands the subscription over to live delivery.
    pub(super) async fn start_delivery(
        &mut self,
        id: Option<u64>,
        p: &Principal,
        key: &ChannelKey,
        since: Option<Offset>,
    ) -> Result<(), RequestError> {
        let mut cursor = self.replay(id, p, key, since).await?;
        while self.node.hub().activate(key, self.conn_id, cursor) == Activation::Reread {
            cursor = self.replay_pages(key, cursor).await?;
        }
        Ok(())
    }

    /// Sends `subscribed` and the messages after `since`; returns the last offset covered.
    pub(super) async fn replay(
        &mut self,
        id: Option<u64>,
        p: &Principal,
        key: &ChannelKey,
        since: Option<Offset>,
    ) -> Result<Offset, RequestError> {
        let broker = self.node.broker().clone();
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
            .metrics()
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
    pub(super) async fn replay_pages(
        &self,
        key: &ChannelKey,
        mut cursor: Offset,
    ) -> Result<Offset, RequestError> {
        let broker = self.node.broker().clone();
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

    pub(super) async fn unsubscribe(
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
    pub(super) async fn leave(&mut self, p: &Principal, channel: &Channel, announce: bool) {
        if !self.subscriptions.remove(channel) {
            return;
        }
        self.node.metrics().subscriptions.dec();
        let key = Node::key(p, channel);
        self.node.hub().leave(&key, self.conn_id);
        let broker = self.node.broker();
        let mut session = uuid::Uuid::encode_buffer();
        match broker
            .presence_leave(&key, &p.user_id, self.session_text(&mut session))
            .await
        {
            Ok(true) if announce => self.node.announce_presence(&key, &p.user_id, false).await,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, channel = %key, "presence leave failed"),
        }
    }

    pub(super) async fn leave_all(&mut self) {
        let Some(p) = self.principal.clone() else {
            return;
        };
        let channels: Vec<Channel> = self.subscriptions.iter().cloned().collect();
        for channel in channels {
            self.leave(&p, &channel, true).await;
        }
    }
}
