//! Live subscriptions: the one subscriber connection per broker, the task that brings its
//! `SUBSCRIBE`s in line with the local subscribers in coalesced rounds, the routing of pub/sub
//! messages to local [`Subscription`]s with gap detection, and the probe that replaces a
//! connection gone silent.
//!
//! One dedicated subscriber connection per broker. A map from live channel to a
//! [`broadcast`] sender fans events out to local [`Subscription`]s; the channel is `SUBSCRIBE`d
//! when its first local subscription is created and `UNSUBSCRIBE`d when the last one is dropped
//! (each subscription holds a lease whose `Drop` tells the subscription task to look; drop-
//! triggered rather than periodic, so a channel nobody wants stops costing Redis fan-out at
//! once). One subscription task sends every `SUBSCRIBE` and `UNSUBSCRIBE`, so an `UNSUBSCRIBE`
//! can never overtake a newer `SUBSCRIBE`; it works in rounds, each taking every request that
//! waits: one `UNSUBSCRIBE` for the channels nobody here wants anymore, one `SUBSCRIBE` for the
//! new ones (in chunks of 1,024 names; per slot in a cluster) and one `PING` behind it, and no
//! lock is held across the round trip, so 1,000 channels joined at once cost two rounds, not
//! 1,000 round trips. `subscribe` returns only once Redis has processed the `SUBSCRIBE` (the
//! `PING` behind it on the same connection has been answered: fred resolves a `SUBSCRIBE` as soon
//! as it is written), so anything published after it returns is delivered.
//!
//! Gaps are reported in band, in order with the events around them:
//! - **Sequence jumps.** The broker remembers the last sequence seen per channel; a message whose
//!   sequence is not the next one is preceded by a
//!   [`SubscriptionEvent::Gap`](crate::SubscriptionEvent::Gap), so the reader re-reads the log
//!   before it sees that message.
//! - **Reconnects.** After the subscriber connection comes back, every active channel is
//!   subscribed again and then gets a gap (the reader re-reads from its last offset, which covers
//!   anything published while the connection was down).
//! - **Lag.** A local subscriber that falls behind, or a router that falls behind the connection,
//!   gets a gap.
//! - **Silence.** A pub/sub connection can stop delivering without closing (after a failover,
//!   behind a broken middlebox). Every `probe_interval` the broker publishes a numbered probe to
//!   its own channel (`bh:probe:<client id>`); if it does not come back on the subscriber
//!   connection within `probe_timeout`, the connection is replaced (which is a reconnect, above)
//!   and [`RedisBroker::subscriber_healthy`](super::RedisBroker::subscriber_healthy) reads false
//!   until a probe comes back. The next probe waits until the new connection is subscribed again
//!   (one sent earlier would find nobody subscribed and replace the connection once more).

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};

use fred::prelude::{ClientLike, Error as FredError, PubsubInterface, Value};
use fred::types::config::Options;
use fred::types::ClusterHash;
use fred::util::redis_keyslot;
use tokio::sync::{broadcast, mpsc, oneshot};

use super::live::Live;
use super::{bans, Inner};
use crate::broker::{
    Attachment, BrokerError, ChannelEvent, ChannelKey, Feed, LiveSink, StoredMessage, Subscription,
    SubscriptionEvent,
};

/// One live channel this broker is subscribed to.
#[derive(Debug)]
pub(super) struct LiveChannel {
    /// Fan-out to the local subscriptions; made with the first of them (a node's hub attaches
    /// sinks instead, which need no buffer).
    tx: Option<broadcast::Sender<Feed>>,
    /// Attached sinks, by number.
    sinks: Vec<(u64, Arc<dyn LiveSink>)>,
    /// Redis confirmed the `SUBSCRIBE`. False until the subscription task's round that subscribes
    /// it has been answered.
    subscribed: bool,
    /// Local subscribers waiting for that confirmation (or its failure).
    waiters: Vec<oneshot::Sender<Result<(), BrokerError>>>,
    /// The sequence number of the last message routed, to detect jumps; `None` after a gap.
    last_seq: Option<u64>,
    /// The subscription was renewed (a reconnect): the next event must be preceded by a gap,
    /// since messages published while it was down are only in the log.
    needs_gap: bool,
}

impl LiveChannel {
    fn new() -> Self {
        LiveChannel {
            tx: None,
            sinks: Vec::new(),
            subscribed: false,
            waiters: Vec::new(),
            last_seq: None,
            needs_gap: false,
        }
    }

    /// A receiver of the channel's feed, made with the first.
    fn receiver(&mut self, capacity: usize) -> broadcast::Receiver<Feed> {
        self.tx
            .get_or_insert_with(|| broadcast::channel(capacity).0)
            .subscribe()
    }

    /// Hands an event or a gap to every local subscription and sink, in order (the caller holds
    /// the live channels' lock).
    fn emit(&self, feed: Feed) {
        for (_, sink) in &self.sinks {
            sink.deliver(match &feed {
                Feed::Event(event) => SubscriptionEvent::Event(event.clone()),
                Feed::Gap => SubscriptionEvent::Gap,
            });
        }
        if let Some(tx) = &self.tx {
            // No receivers is fine: the subscription task is about to unsubscribe.
            let _ = tx.send(feed);
        }
    }

    /// Whether a local subscription or sink still wants the channel.
    fn has_listeners(&self) -> bool {
        !self.sinks.is_empty() || self.tx.as_ref().is_some_and(|tx| tx.receiver_count() > 0)
    }
}

/// Dropped with an [`Attachment`]: detaches the sink, then tells the subscription task to check
/// whether the channel still has local subscribers.
struct Detach {
    /// The broker's shared state; gone with the broker.
    inner: Weak<Inner>,
    /// The live channel.
    channel: String,
    /// The sink's number.
    id: u64,
}

impl Drop for Detach {
    fn drop(&mut self) {
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        if let Some(state) = inner.live.lock().get_mut(&self.channel) {
            state.sinks.retain(|(id, _)| *id != self.id);
        }
        let _ = inner
            .sub_requests
            .send(SubRequest::Channel(std::mem::take(&mut self.channel)));
    }
}

/// What the subscription task is asked to look at.
#[derive(Debug)]
pub(super) enum SubRequest {
    /// A live channel gained a local subscriber that waits for Redis, or lost its last one:
    /// subscribe or unsubscribe it as its subscribers now need.
    Channel(String),
    /// The subscriber connection came back: subscribe every channel again, then give each a gap.
    Resubscribe,
}

/// Most channels named in one `SUBSCRIBE` command.
const SUBSCRIBE_CHUNK: usize = 1_024;

/// Dropped with a [`Subscription`]: tells the subscription task to check whether the channel
/// still has local subscribers.
struct Release {
    /// The live channel.
    channel: String,
    /// The subscription task's inbox.
    tx: mpsc::UnboundedSender<SubRequest>,
}

impl Drop for Release {
    fn drop(&mut self) {
        // The task is gone only when the broker is: nothing left to unsubscribe then.
        let _ = self
            .tx
            .send(SubRequest::Channel(std::mem::take(&mut self.channel)));
    }
}
/// Live channels grouped by cluster slot: sharded pub/sub takes the channels of one slot per call.
fn by_slot(channels: Vec<String>) -> HashMap<u16, Vec<String>> {
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for channel in channels {
        by_slot
            .entry(redis_keyslot(channel.as_bytes()))
            .or_default()
            .push(channel);
    }
    by_slot
}

/// Makes `call` for `channels` in chunks of [`SUBSCRIBE_CHUNK`], one after the other.
async fn in_chunks<F, Fut>(channels: &[String], call: F) -> Result<(), FredError>
where
    F: Fn(Vec<String>) -> Fut,
    Fut: std::future::Future<Output = Result<(), FredError>>,
{
    for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
        call(chunk.to_vec()).await?;
    }
    Ok(())
}

/// `SUBSCRIBE`s `channels` and returns once Redis has processed it. fred resolves a `SUBSCRIBE`
/// when it is written, not when Redis confirms it (the confirmations arrive out of band), so a
/// publish on the command connection could still overtake it; a `PING` on the same connection is
/// answered only after everything sent before it.
pub(super) async fn subscribe_confirmed(
    subscriber: &fred::clients::Client,
    cluster: bool,
    channels: Vec<String>,
) -> Result<(), FredError> {
    if !cluster {
        // One command per chunk, all written before the one PING that confirms them.
        in_chunks(&channels, |chunk| subscriber.subscribe(chunk)).await?;
        return subscriber.ping::<Value>(None).await.map(|_| ());
    }
    // Sharded pub/sub: one `SSUBSCRIBE` per slot (Redis refuses channels of several slots in one
    // call), each confirmed by a `PING` routed to the same slot, so to the same connection. The
    // slots are subscribed concurrently.
    let confirmations = by_slot(channels)
        .into_iter()
        .map(|(slot, channels)| async move {
            subscriber.ssubscribe(channels).await?;
            let same_shard = Options {
                cluster_hash: Some(ClusterHash::Custom(slot)),
                ..Options::default()
            };
            subscriber
                .with_options(&same_shard)
                .ping::<Value>(None)
                .await
                .map(|_| ())
        });
    futures_util::future::join_all(confirmations)
        .await
        .into_iter()
        .collect()
}

/// `UNSUBSCRIBE`s (`SUNSUBSCRIBE`s in a cluster, one call per slot) live channels.
async fn unsubscribe_live(
    subscriber: &fred::clients::Client,
    cluster: bool,
    channels: Vec<String>,
) -> Result<(), FredError> {
    if !cluster {
        return in_chunks(&channels, |chunk| subscriber.unsubscribe(chunk)).await;
    }
    let calls = by_slot(channels)
        .into_values()
        .map(|channels| subscriber.sunsubscribe(channels));
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect()
}
impl Inner {
    /// A subscription to `key`'s live channel, once Redis has processed its `SUBSCRIBE` (at once
    /// when the channel already has local subscribers).
    pub(super) async fn subscribe_channel(
        &self,
        key: &ChannelKey,
    ) -> Result<Subscription, BrokerError> {
        let channel = self.keys(key).live;
        let lease = |channel: String| -> crate::broker::Lease {
            Box::new(Release {
                channel,
                tx: self.sub_requests.clone(),
            })
        };
        let capacity = self.config.subscriber_buffer;
        let (rx, confirmed) = self.join(&channel, |state| state.receiver(capacity));
        // Made before waiting, so that a failure or a cancelled call drops it like any other
        // subscription (the receiver first, then the lease that tells the task to look).
        let subscription = Subscription::with_feed(rx, lease(channel.clone()));
        self.confirmed(channel, confirmed).await?;
        Ok(subscription)
    }

    /// Attaches `sink` to `key`'s live channel, once Redis has processed its `SUBSCRIBE` (at
    /// once when the channel already has local subscribers).
    pub(super) async fn attach_channel(
        self: &Arc<Self>,
        key: &ChannelKey,
        sink: Arc<dyn LiveSink>,
    ) -> Result<Attachment, BrokerError> {
        let channel = self.keys(key).live;
        let id = self.next_sink.fetch_add(1, Ordering::Relaxed);
        let ((), confirmed) = self.join(&channel, |state| {
            // Usually the one node's hub: no room kept for more.
            state.sinks.reserve_exact(1);
            state.sinks.push((id, sink));
        });
        // Made before waiting, so that a failure or a cancelled call detaches the sink.
        let attachment = Attachment::new(Box::new(Detach {
            inner: Arc::downgrade(self),
            channel: channel.clone(),
            id,
        }));
        self.confirmed(channel, confirmed).await?;
        Ok(attachment)
    }

    /// Adds a local listener to a live channel with `add`; the receiver of Redis's
    /// confirmation when the channel is not subscribed yet.
    fn join<T>(
        &self,
        channel: &str,
        add: impl FnOnce(&mut LiveChannel) -> T,
    ) -> (T, Option<oneshot::Receiver<Result<(), BrokerError>>>) {
        let mut live = self.live.lock();
        let state = live
            .entry(channel.to_owned())
            .or_insert_with(LiveChannel::new);
        let added = add(state);
        if state.subscribed {
            (added, None)
        } else {
            let (tx, confirmed) = oneshot::channel();
            state.waiters.push(tx);
            (added, Some(confirmed))
        }
    }

    /// Waits for Redis to confirm a channel's `SUBSCRIBE`, when [`Inner::join`] asked for it.
    async fn confirmed(
        &self,
        channel: String,
        confirmed: Option<oneshot::Receiver<Result<(), BrokerError>>>,
    ) -> Result<(), BrokerError> {
        let Some(confirmed) = confirmed else {
            return Ok(());
        };
        let _ = self.sub_requests.send(SubRequest::Channel(channel));
        match confirmed.await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unavailable {
                reason: "the Redis broker is shutting down".into(),
                retry_after: self.config.retry_after,
            }),
        }
    }

    /// Hands one pub/sub message to its channel's subscribers.
    fn route(&self, channel: &str, value: &Value) {
        let decoded = value
            .as_str()
            .ok_or_else(|| "not text".to_owned())
            .and_then(|text| Live::decode(&text));
        let mut live = self.live.lock();
        let Some(state) = live.get_mut(channel) else {
            return; // Unsubscribed meanwhile.
        };
        let event = match decoded {
            Ok(Live::Message { o, s, e, json }) => {
                let jump = state
                    .last_seq
                    .is_some_and(|last| last.checked_add(1) != Some(s));
                if jump || state.needs_gap {
                    tracing::debug!(channel, seq = s, last = ?state.last_seq, renewed = state.needs_gap, "gap before a live message");
                    state.needs_gap = false;
                    state.emit(Feed::Gap);
                }
                state.last_seq = Some(s);
                ChannelEvent::Message(StoredMessage {
                    offset: o,
                    envelope: e,
                    json: Some(json),
                })
            }
            Ok(Live::Join { u }) => ChannelEvent::Join { user_id: u },
            Ok(Live::Leave { u }) => ChannelEvent::Leave { user_id: u },
            Ok(Live::Typing { u }) => ChannelEvent::Typing { user_id: u },
            Err(error) => {
                // Maybe a message we should have had: the reader re-reads the log.
                tracing::warn!(channel, %error, "undecodable live message");
                state.last_seq = None;
                state.emit(Feed::Gap);
                return;
            }
        };
        state.emit(Feed::Event(event));
    }

    /// Tells every live channel's subscribers they may have missed something.
    fn gap_all(&self) {
        for state in self.live.lock().values_mut() {
            state.last_seq = None;
            state.needs_gap = false;
            state.emit(Feed::Gap);
        }
    }

    /// After the subscriber connection came back: subscribe every active channel again, then tell
    /// each it has a gap (after, so the re-read covers everything the new subscription does not).
    /// Channels waiting for their first subscription are among them, and are answered. Runs in
    /// the subscription task.
    async fn resubscribe(&self, at_redis: &mut HashSet<String>) {
        let mut channels: Vec<String> = {
            let mut live = self.live.lock();
            // A message routed before `gap_all` below must not pass for contiguous: the ones
            // published while the connection was down are only in the log.
            for state in live.values_mut() {
                state.needs_gap = true;
            }
            live.keys().cloned().collect()
        };
        at_redis.extend(channels.iter().cloned());
        let active = channels.len();
        channels.push(self.probe_channel.clone());
        channels.push(self.bans_channel.clone());
        let subscribed = subscribe_confirmed(&self.subscriber, self.config.cluster, channels).await;
        match &subscribed {
            Ok(()) => {
                tracing::info!(channels = active, "subscribed again after a reconnect");
                for state in self.live.lock().values_mut() {
                    state.subscribed = true;
                    for waiter in state.waiters.drain(..) {
                        let _ = waiter.send(Ok(()));
                    }
                }
            }
            Err(error) => {
                tracing::error!(%error, channels = active, "could not subscribe again after a reconnect; reconnecting");
                let subscriber = self.subscriber.clone();
                let wait = self.config.retry_after;
                // Not in the subscription task: subscribing and unsubscribing go on meanwhile
                // (and fail fast while the connection is down).
                tokio::spawn(async move {
                    tokio::time::sleep(wait).await;
                    let _ = subscriber.force_reconnection().await;
                });
            }
        }
        self.gap_all();
        self.resubscribed.send_modify(|n| *n += 1);
    }

    /// One round of the subscription task: looks at each channel whose subscribers changed, and
    /// with one `UNSUBSCRIBE` for the ones nobody here wants anymore and one `SUBSCRIBE` plus one
    /// `PING` for the new ones (per slot in a cluster) brings Redis in line, then answers the
    /// subscribers that waited. `at_redis` holds what this connection may be subscribed to.
    async fn reconcile(&self, touched: Vec<String>, at_redis: &mut HashSet<String>) {
        let (to_subscribe, to_unsubscribe) = {
            let mut live = self.live.lock();
            let (mut to_subscribe, mut to_unsubscribe) = (Vec::new(), Vec::new());
            let mut seen = HashSet::new();
            for channel in touched {
                if !seen.insert(channel.clone()) {
                    continue;
                }
                let Some(state) = live.get_mut(&channel) else {
                    if at_redis.remove(&channel) {
                        to_unsubscribe.push(channel);
                    }
                    continue;
                };
                state.waiters.retain(|w| !w.is_closed());
                if !state.has_listeners() && state.waiters.is_empty() {
                    live.remove(&channel);
                    if at_redis.remove(&channel) {
                        to_unsubscribe.push(channel);
                    }
                } else if !state.subscribed {
                    to_subscribe.push(channel);
                }
            }
            (to_subscribe, to_unsubscribe)
        };
        if !to_unsubscribe.is_empty() {
            let count = to_unsubscribe.len();
            if let Err(error) =
                unsubscribe_live(&self.subscriber, self.config.cluster, to_unsubscribe).await
            {
                // Harmless: messages for a channel not in the map are ignored, and it is not
                // subscribed again after a reconnect.
                tracing::debug!(count, %error, "could not unsubscribe");
            }
        }
        if to_subscribe.is_empty() {
            return;
        }
        // From the moment the command may reach Redis, unsubscribing it later is needed.
        at_redis.extend(to_subscribe.iter().cloned());
        let result =
            subscribe_confirmed(&self.subscriber, self.config.cluster, to_subscribe.clone())
                .await
                .map_err(|e| self.error(&e));
        let mut live = self.live.lock();
        for channel in to_subscribe {
            if let Some(state) = live.get_mut(&channel) {
                state.subscribed |= result.is_ok();
                for waiter in state.waiters.drain(..) {
                    let _ = waiter.send(result.clone());
                }
            }
        }
    }
}

/// Routes pub/sub messages to their channels until the subscriber connection is closed.
pub(super) async fn route_messages(
    inner: Arc<Inner>,
    mut messages: broadcast::Receiver<fred::types::Message>,
) {
    loop {
        match messages.recv().await {
            Ok(message) if *message.channel == *inner.probe_channel => {
                if let Some(n) = message.value.as_u64() {
                    inner.probe_seen.send_if_modified(|seen| {
                        let newer = n > *seen;
                        *seen = (*seen).max(n);
                        newer
                    });
                }
            }
            Ok(message) if *message.channel == *inner.bans_channel => {
                match bans::announcement(&message.value) {
                    Some(ban) => {
                        let _ = inner.ban_tx.send(ban);
                    }
                    None => tracing::warn!(value = ?message.value, "undecodable ban announcement"),
                }
            }
            Ok(message) => inner.route(&message.channel, &message.value),
            Err(broadcast::error::RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "pub/sub router fell behind; every channel gets a gap"
                );
                inner.gap_all();
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// Asks for every active channel to be subscribed again after each reconnect of the subscriber
/// connection.
pub(super) async fn resubscribe_on_reconnect(
    inner: Arc<Inner>,
    mut reconnects: broadcast::Receiver<fred::types::config::Server>,
) {
    loop {
        match reconnects.recv().await {
            Ok(server) => {
                tracing::warn!(%server, "Redis subscriber connection reconnected");
                let _ = inner.sub_requests.send(SubRequest::Resubscribe);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let _ = inner.sub_requests.send(SubRequest::Resubscribe);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}

/// The subscription task: the only one that sends `SUBSCRIBE` and `UNSUBSCRIBE`, so they reach
/// Redis in the order they were decided. Each round takes every request waiting, so subscribers
/// that arrive while a round is in flight share the next round's one `SUBSCRIBE` and `PING`
/// instead of queueing for a round trip each; nothing is locked across a round trip.
pub(super) async fn manage_subscriptions(
    inner: Arc<Inner>,
    mut inbox: mpsc::UnboundedReceiver<SubRequest>,
) {
    let mut at_redis: HashSet<String> = HashSet::new();
    while let Some(first) = inbox.recv().await {
        let mut resubscribe = false;
        let mut touched = Vec::new();
        let mut take = |request| match request {
            SubRequest::Channel(channel) => touched.push(channel),
            SubRequest::Resubscribe => resubscribe = true,
        };
        take(first);
        while let Ok(request) = inbox.try_recv() {
            take(request);
        }
        if resubscribe {
            inner.resubscribe(&mut at_redis).await;
        }
        inner.reconcile(touched, &mut at_redis).await;
    }
}

/// Publishes a numbered probe to this broker's own channel every `probe_interval` and expects it
/// back on the subscriber connection within `probe_timeout`. A pub/sub connection can go silent
/// without closing (after a failover, behind a broken middlebox); when a probe is lost, the
/// connection is replaced, which subscribes every channel again and gives each a gap.
pub(super) async fn probe_subscriber(inner: Arc<Inner>) {
    let mut seen = inner.probe_seen.subscribe();
    let mut tick = tokio::time::interval(inner.config.probe_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    let mut probe = 0u64;
    loop {
        tick.tick().await;
        probe += 1;
        let receivers = inner
            .publish_live(inner.probe_channel.clone(), probe.to_string())
            .await;
        let answered = match receivers {
            // Redis itself says our subscriber is not subscribed: no need to wait.
            Ok(0) => false,
            Ok(_) => {
                let wait = seen.wait_for(|n| *n >= probe);
                match tokio::time::timeout(inner.config.probe_timeout, wait).await {
                    Ok(Ok(_)) => true,
                    Ok(Err(_)) => return, // The broker is gone.
                    Err(_) => false,
                }
            }
            Err(error) => {
                // Redis is unreachable from this node: live delivery is down with it (the
                // subscriber connection reconnects by itself, and a gap follows).
                inner.subscriber_healthy.store(false, Ordering::Relaxed);
                tracing::debug!(%error, "could not publish the subscriber probe");
                continue;
            }
        };
        if answered {
            if !inner.subscriber_healthy.swap(true, Ordering::Relaxed) {
                tracing::info!("subscriber connection answers probes again");
            }
        } else {
            inner.subscriber_healthy.store(false, Ordering::Relaxed);
            tracing::warn!(
                probe,
                "subscriber probe lost; replacing the subscriber connection"
            );
            let mut resubscribed = inner.resubscribed.subscribe();
            resubscribed.mark_unchanged();
            if let Err(error) = inner.subscriber.force_reconnection().await {
                tracing::warn!(%error, "could not replace the subscriber connection");
            }
            // The next probe only once the new connection is subscribed again (or that failed):
            // one sent before would find nobody subscribed and replace it once more.
            let wait = inner.config.probe_timeout + inner.config.command_timeout;
            let _ = tokio::time::timeout(wait, resubscribed.changed()).await;
            tick.reset();
        }
    }
}
