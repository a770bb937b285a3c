//! The Redis backend: every channel's log, sequence, presence and read markers in one Redis
//! server, so any number of gateway nodes share them. It keeps exactly the semantics of
//! [`MemoryBroker`](crate::MemoryBroker) (the conformance suite runs against both) and must never
//! hold state a client needs after it reconnects to another node.
//!
//!
//! # Where things are
//!
//! This file holds [`RedisBroker`], the state it shares with its background tasks, and the
//! [`Broker`] implementation, which puts the parts together:
//!
//! - [`config`]: [`RedisConfig`], its checks and the redaction of credentials;
//! - [`keys`]: the key layout, every key of a channel under its hash tag;
//! - [`script`]: calls of the channel script (`channel.lua`), one or a pipeline of them;
//! - [`replies`]: what the script's replies mean (pure parsing);
//! - [`subscriber`]: live subscriptions, gap detection and the subscriber probe;
//! - [`live`]: the format of live events on the pub/sub channels, and their decoding;
//! - [`presence`]: the sessions this broker holds and refreshes;
//! - [`bans`]: client bans shared by every node;
//! - [`client`]: the Redis client, TLS, and client errors as [`BrokerError`]s.
//!
//! # Redis Cluster
//!
//! With [`RedisConfig::cluster`] the client discovers the cluster from the URL's node and routes
//! each call by slot. Nothing else changes in the data: every key of a channel and its live
//! channel carry the channel's hash tag, so one script call touches one slot and its `SPUBLISH`
//! (instead of `PUBLISH`) goes to that shard only. Subscriptions are `SSUBSCRIBE`s, one call per
//! slot (Redis refuses channels of several slots in one), each confirmed by a `PING` routed to
//! the same slot; the subscriber client holds a connection per master, and a reconnect of any of
//! them re-subscribes every channel and gives each a gap, as in [`subscriber`]. The script is
//! loaded on every primary; `NOSCRIPT` (a promoted replica, a new master) loads it everywhere
//! again.
//!
//! # Reads and recovery
//!
//! A read is one script call and writes nothing: `XRANGE` strictly after `since`
//! (`COUNT limit + 1`, for `more`), or `XREVRANGE` for the newest `limit`, never older than
//! `now - retention` (an entry the approximate `MINID ~` trim has not removed yet is out of the
//! window all the same). `last` is the newest retained offset (or `meta.last`, if later); when
//! nothing is retained, the read hands out a position one second below now (half the retention
//! if that is shorter) and not below `meta.last` or the floor, without storing it: nothing lies
//! in that second (the channel is empty), and a Redis clock that steps back by less than the
//! margin still gives the next message a later offset. The channel's **floor** is the latest of
//! its origin (`meta.origin`, or for a channel never published to its slot's origin), the
//! retention cut-off `(now - retention)-0` and `meta.trimmed`; `recovered` is `since >= floor`,
//! with `since` known (not beyond both now and `last`). A Redis that lost its data (restart
//! without persistence, flush) loses the origins too: positions from before are
//! `recovered: false`, like the embedded broker after a restart, and the next publish (or node
//! connect) sets a new origin.
//!
//! # Presence and read markers
//!
//! A join adds `<user>\x1f<session>` scored by `now + presence_ttl` and counts the user's sessions
//! in the `users` hash, so "first session" and "last session" are O(1), not a scan; this broker
//! refreshes the sessions it added every `presence_refresh`, and every presence call first drops
//! expired sessions (a node that died leaves nobody behind for longer than the TTL). A read
//! marker only moves forward; the unread count is the newest sequence minus the sequence of the
//! first retained entry after the marker, plus one (exact, not a scan). A marker on a channel
//! nobody published to is not saved (it would precede nothing): the answer is the floor and no
//! unread messages, and every later message counts as unread.
//!
//! # Limits of this slice
//!
//! - Redis 6.2 or newer (`MINID`, exclusive ranges), 7.0 or newer in cluster mode (sharded
//!   pub/sub); no Sentinel (refused by [`RedisConfig::validate`]). TLS (`rediss://`) verifies
//!   the server against the system's roots or `REDIS_TLS_CA_PATH`; client certificates (Redis's
//!   `tls-auth-clients yes`) are not supported.
//! - In cluster mode the subscriber probe checks only the master its probe channel hashes to; a
//!   connection to another master that goes silent without closing is not detected by it.
//! - The floor is time-based, so a `since` older than `now - retention` is `recovered: false`
//!   even when the newest message trimmed happens to be older still (the embedded broker knows
//!   exactly what it trimmed and says true there): conservative, never the other way round.
//! - After a data loss, until a publish on the slot (or a node's connect) sets a new origin, a
//!   position handed out for an empty channel is `recovered: false` once it is resumed from:
//!   conservative. Eviction is detected only while one of a channel's log and meta survives
//!   (all of Bellhop's keys carry expiries, so a `volatile-*` eviction policy may take them; run
//!   Redis with `maxmemory-policy noeviction`).
//! - A publish carries a deadline (the node's clock plus the command timeout); the script refuses
//!   to store it after that, so a call that a client library queued across a reconnect, and that
//!   the publisher was already told failed, is not stored late. Node and Redis clocks must agree
//!   to well within the command timeout (NTP); a node whose clock lags Redis by more than that has
//!   every publish refused, with a warning naming both clocks.
//! - A publish that fails with `unavailable` after Redis received it (the connection dropped
//!   before the reply) may have been stored: retrying without an idempotency key can store it
//!   twice. Commands are never retried by the client for this reason; a publisher that retries
//!   with the same idempotency key gets the original instead.
//! - Idempotency keys are scoped per property and channel (the key carries the channel's hash
//!   tag, so the check and the write happen in the channel's script, atomically, on its slot): the
//!   same key sent to two channels makes two messages.
//! - A presence refresh that races a leave of the same session can bring it back until its TTL
//!   runs out (at most `presence_ttl`).
//! - Reads return at most [`MAX_READ`] messages per call (`more` says when to read on).

mod bans;
mod client;
mod config;
mod keys;
mod live;
mod presence;
mod replies;
mod script;
mod subscriber;

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bellhop_protocol::Offset;
use fred::prelude::{
    ClientLike, Error as FredError, EventInterface, LuaInterface, PubsubInterface, Value,
};
use parking_lot::Mutex;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinHandle;

pub(crate) use self::client::{broker_error, build_client, fred_config};
use self::config::redact;
pub use self::config::RedisConfig;
use self::keys::ChannelKeys;
use self::live::Live;
use self::presence::HeldSession;
use self::replies::PublishReply;
use self::script::SCRIPT;
use self::subscriber::{subscribe_confirmed, LiveChannel, SubRequest};
use crate::broker::{
    Attachment, Broker, BrokerError, ChannelEvent, ChannelKey, LiveSink, Publish, Published,
    ReadResult, Subscription,
};

/// Most messages one read returns; `more` tells the caller to read on.
const MAX_READ: usize = 10_000;

/// State shared by the broker handle and its background tasks.
struct Inner {
    /// Settings.
    config: RedisConfig,
    /// Commands and scripts.
    client: fred::clients::Client,
    /// The pub/sub connection: only `SUBSCRIBE`, `UNSUBSCRIBE` and `PING` go here.
    subscriber: fred::clients::Client,
    /// The channel script's SHA1 and the arguments every call shares.
    script: script::ScriptConstants,
    /// Live channels with local subscribers, by pub/sub channel name.
    live: Mutex<HashMap<String, LiveChannel>>,
    /// Numbers the attached sinks, so that an attachment detaches its own.
    next_sink: AtomicU64,
    /// Sessions this broker added and refreshes.
    sessions: Mutex<HashSet<HeldSession>>,
    /// The subscription task's inbox: channels whose local subscribers came or went, and
    /// reconnects. That task alone sends `SUBSCRIBE` and `UNSUBSCRIBE`, so they stay in order.
    sub_requests: mpsc::UnboundedSender<SubRequest>,
    /// This broker's own pub/sub channel, where the probe goes round.
    probe_channel: String,
    /// The newest probe number that came back on the subscriber connection.
    probe_seen: watch::Sender<u64>,
    /// False from an unanswered probe until one is answered again.
    subscriber_healthy: AtomicBool,
    /// Counts the subscription task's resubscriptions after reconnects (done or failed), so the
    /// probe waits for the one its replacement of the connection causes before probing again.
    resubscribed: watch::Sender<u64>,
    /// Client bans shared by every node: a sorted set of subjects scored by expiry (ms).
    bans_key: String,
    /// Where bans are announced.
    bans_channel: String,
    /// Bans announced by any node, for the gateway.
    ban_tx: broadcast::Sender<(String, Duration)>,
}

/// The Redis broker. Cheap to share behind an `Arc`; dropping it stops its tasks, closes its
/// connections and ends its subscriptions.
pub struct RedisBroker {
    /// Shared with the background tasks.
    inner: Arc<Inner>,
    /// Message routing, resubscribing, releasing, presence refreshing and probing; aborted on
    /// drop.
    tasks: Vec<JoinHandle<()>>,
}

impl fmt::Debug for RedisBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBroker")
            .field("config", &self.inner.config)
            .field("live_channels", &self.inner.live.lock().len())
            .field("held_sessions", &self.inner.sessions.lock().len())
            .finish()
    }
}

impl Drop for RedisBroker {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        let (client, subscriber) = (self.inner.client.clone(), self.inner.subscriber.clone());
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let _ = subscriber.quit().await;
                let _ = client.quit().await;
            });
        }
    }
}

impl Inner {
    /// The names of `key`'s keys and live channel.
    fn keys(&self, key: &ChannelKey) -> ChannelKeys {
        ChannelKeys::new(&self.config.key_prefix, self.config.cluster, key)
    }

    /// `PUBLISH`es (`SPUBLISH`es in a cluster) `payload` on a live channel; the number of
    /// subscribers that got it (in a cluster, those connected to the node that took it).
    async fn publish_live(&self, channel: String, payload: String) -> Result<i64, FredError> {
        if self.config.cluster {
            self.client.spublish(channel, payload).await
        } else {
            self.client.publish(channel, payload).await
        }
    }

    /// A client error as a [`BrokerError`], with this broker's `retry_after`.
    fn error(&self, error: &FredError) -> BrokerError {
        broker_error(error, self.config.retry_after)
    }
}

impl RedisBroker {
    /// Connects to Redis (failing fast with `unavailable` when it cannot be reached now), loads
    /// the channel script and starts the background tasks. Must run inside a tokio runtime.
    pub async fn connect(config: RedisConfig) -> Result<Self, BrokerError> {
        config
            .validate()
            .map_err(|e| BrokerError::Internal(format!("invalid Redis settings: {e}")))?;
        let fred_config = fred_config(&config)?;
        // Commands are not retried by the client: a retried publish could be stored twice.
        let client = build_client(&config, fred_config.clone(), 1, 32)?;
        let subscriber = build_client(&config, fred_config, 3, config.pubsub_buffer)?;
        let retry_after = config.retry_after;
        let _connection = client
            .init()
            .await
            .map_err(|e| broker_error(&e, retry_after))?;
        // Before any SUBSCRIBE, so no message can slip past the router.
        let messages = subscriber.message_rx();
        let _connection = subscriber
            .init()
            .await
            .map_err(|e| broker_error(&e, retry_after))?;
        // After the first connection, whose event is not a reconnect.
        let reconnects = subscriber.reconnect_rx();
        let script_sha: String = client
            .script_load_cluster(SCRIPT)
            .await
            .map_err(|e| broker_error(&e, retry_after))?;
        let probe_channel = keys::probe_channel(&config.key_prefix, subscriber.id());
        let (bans_key, bans_channel) = keys::bans_keys(&config.key_prefix);
        let channels = vec![probe_channel.clone(), bans_channel.clone()];
        subscribe_confirmed(&subscriber, config.cluster, channels)
            .await
            .map_err(|e| broker_error(&e, retry_after))?;

        let (sub_requests, sub_inbox) = mpsc::unbounded_channel();
        let script = script::ScriptConstants::new(script_sha, &config);
        let inner = Arc::new(Inner {
            config,
            client,
            subscriber,
            script,
            live: Mutex::new(HashMap::new()),
            next_sink: AtomicU64::new(1),
            sessions: Mutex::new(HashSet::new()),
            sub_requests,
            probe_channel,
            probe_seen: watch::channel(0).0,
            subscriber_healthy: AtomicBool::new(true),
            resubscribed: watch::channel(0).0,
            bans_key,
            bans_channel,
            ban_tx: broadcast::channel(256).0,
        });
        inner.ensure_origins().await?;
        let tasks = vec![
            tokio::spawn(subscriber::route_messages(inner.clone(), messages)),
            tokio::spawn(subscriber::resubscribe_on_reconnect(
                inner.clone(),
                reconnects,
            )),
            tokio::spawn(subscriber::manage_subscriptions(inner.clone(), sub_inbox)),
            tokio::spawn(presence::refresh_presence(inner.clone())),
            tokio::spawn(subscriber::probe_subscriber(inner.clone())),
        ];
        tracing::info!(url = %redact(&inner.config.url), "connected to Redis");
        Ok(RedisBroker { inner, tasks })
    }

    /// The settings this broker runs with.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// False from the moment a probe did not come back on the subscriber connection (which is
    /// then replaced) until one does again: for health reporting.
    pub fn subscriber_healthy(&self) -> bool {
        self.inner.subscriber_healthy.load(Ordering::Relaxed)
    }
}

#[async_trait]
impl Broker for RedisBroker {
    async fn publish_batch(&self, batch: Vec<Publish>) -> Vec<Result<Published, BrokerError>> {
        let inner = &self.inner;
        // Per publish: its message id when it went into the pipeline, or why it did not.
        let mut results: Vec<Result<String, BrokerError>> = Vec::with_capacity(batch.len());
        let mut calls = Vec::with_capacity(batch.len());
        // Past this (node clock, ms) the script refuses to store: the publisher has been told
        // `unavailable` by then. Node and Redis clocks must agree to well within the timeout.
        let deadline = (crate::now_ms()
            + inner
                .config
                .command_timeout
                .as_millis()
                .min(u64::MAX as u128) as u64)
            .to_string();
        let deadline = Value::from(deadline);
        for publish in &batch {
            let envelope = &publish.envelope;
            let prepared = publish.checked_key().and_then(|idempotency_key| {
                let json = serde_json::to_string(envelope.as_ref()).map_err(|e| {
                    BrokerError::Internal(format!("cannot encode the envelope: {e}"))
                })?;
                Ok((idempotency_key, json))
            });
            match prepared {
                Ok((idempotency_key, json)) => {
                    let keys = inner.keys(&ChannelKey::of(envelope));
                    let constants = &inner.script;
                    let mut args = inner.script_args(
                        "publish",
                        [
                            json.into(),
                            keys.live.clone().into(),
                            deadline.clone(),
                            constants.announce.clone(),
                            constants.max_len.clone(),
                        ],
                    );
                    let idempotency = idempotency_key.map(|key| keys.idempotency(key));
                    let mut script_keys = keys.into_script_keys();
                    if let Some(idempotency) = idempotency {
                        script_keys.push(idempotency);
                        args.push(constants.idempotency_window.clone());
                        args.push(envelope.message_id.as_str().into());
                    }
                    calls.push((script_keys, args));
                    results.push(Ok(envelope.message_id.clone()));
                }
                Err(e) => results.push(Err(e)),
            }
        }
        let mut replies = inner.eval_many(calls).await.into_iter();
        results
            .into_iter()
            .map(|slot| {
                let message_id = slot?;
                let reply = replies
                    .next()
                    .unwrap_or_else(|| Err(BrokerError::Internal("redis: missing reply".into())))?;
                match replies::publish(reply, message_id)? {
                    PublishReply::Published(published) => Ok(published),
                    PublishReply::Expired { redis_ms } => {
                        tracing::warn!(
                            redis_ms,
                            node_ms = crate::now_ms(),
                            "publish reached Redis after its deadline and was not stored \
                             (a queued command after a reconnect, or node and Redis clocks apart)"
                        );
                        Err(BrokerError::Unavailable {
                            reason: "publish reached the broker after its deadline".into(),
                            retry_after: inner.config.retry_after,
                        })
                    }
                }
            })
            .collect()
    }

    async fn publish_ephemeral(
        &self,
        key: &ChannelKey,
        event: ChannelEvent,
    ) -> Result<(), BrokerError> {
        let live = match event {
            ChannelEvent::Join { user_id } => Live::Join { u: user_id },
            ChannelEvent::Leave { user_id } => Live::Leave { u: user_id },
            ChannelEvent::Typing { user_id } => Live::Typing { u: user_id },
            ChannelEvent::Message(_) => {
                return Err(BrokerError::Internal(
                    "stored messages are published with publish_batch, not as ephemeral events"
                        .into(),
                ))
            }
        };
        let payload = serde_json::to_string(&live)
            .map_err(|e| BrokerError::Internal(format!("cannot encode the event: {e}")))?;
        let keys = self.inner.keys(key);
        self.inner
            .publish_live(keys.live, payload)
            .await
            .map(|_receivers| ())
            .map_err(|e| self.inner.error(&e))
    }

    async fn subscribe(&self, key: &ChannelKey) -> Result<Subscription, BrokerError> {
        self.inner.subscribe_channel(key).await
    }

    async fn attach(
        &self,
        key: &ChannelKey,
        sink: Arc<dyn LiveSink>,
    ) -> Result<Attachment, BrokerError> {
        self.inner.attach_channel(key, sink).await
    }

    async fn read(
        &self,
        key: &ChannelKey,
        since: Option<Offset>,
        limit: usize,
    ) -> Result<ReadResult, BrokerError> {
        let inner = &self.inner;
        let limit = limit.min(MAX_READ);
        let since_arg = since.map(|s| s.to_string()).unwrap_or_default();
        let args = inner.script_args("read", [since_arg.into(), limit.to_string().into()]);
        let reply = inner.eval(&inner.keys(key), args).await?;
        replies::read(reply, since, limit)
    }

    async fn presence_join(
        &self,
        key: &ChannelKey,
        user_id: &str,
        session: &str,
    ) -> Result<bool, BrokerError> {
        self.inner.presence_join(key, user_id, session).await
    }

    async fn presence_leave(
        &self,
        key: &ChannelKey,
        user_id: &str,
        session: &str,
    ) -> Result<bool, BrokerError> {
        self.inner.presence_leave(key, user_id, session).await
    }

    async fn presence(&self, key: &ChannelKey) -> Result<Vec<String>, BrokerError> {
        let inner = &self.inner;
        let reply = inner
            .eval(&inner.keys(key), inner.script_args("presence", []))
            .await?;
        replies::users(reply)
    }

    async fn mark_read(
        &self,
        key: &ChannelKey,
        user_id: &str,
        offset: Offset,
    ) -> Result<(Offset, u64), BrokerError> {
        let inner = &self.inner;
        let args = inner.script_args("mark", [user_id.into(), offset.to_string().into()]);
        replies::mark(inner.eval(&inner.keys(key), args).await?)
    }

    fn live_healthy(&self) -> bool {
        self.subscriber_healthy()
    }

    async fn unread(&self, key: &ChannelKey, user_id: &str) -> Result<u64, BrokerError> {
        let inner = &self.inner;
        let args = inner.script_args("unread", [user_id.into()]);
        replies::parse_u64(&inner.eval(&inner.keys(key), args).await?)
    }
}

/// A chat message to `room:101` of property `h1`, for the unit tests of the parts.
#[cfg(test)]
fn test_envelope(message_id: &str) -> bellhop_protocol::Envelope {
    let room = bellhop_protocol::Channel::Room("101".into());
    bellhop_protocol::Envelope {
        payload: serde_json::json!({"text": "hi"}),
        ..bellhop_testkit::envelope::chat("h1", room, message_id)
    }
}
