//! The Redis backend: every channel's log, sequence, presence and read markers in one Redis
//! server, so any number of gateway nodes share them. It keeps exactly the semantics of
//! [`MemoryBroker`](crate::MemoryBroker) (the conformance suite runs against both) and must never
//! hold state a client needs after it reconnects to another node.
//!
//! # Key layout
//!
//! Every key of one channel carries the same hash tag, `{<property>|<channel>}`, so they live on
//! one cluster slot and one Lua script may touch them all (channel names never contain `|`, so
//! the tag is unambiguous). With the default prefix `bh`, for `room:101` of property `h1`:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `bh:{h1\|room:101}:log` | stream | the messages: ID = offset, fields `s` (sequence) and `e` (envelope JSON) |
//! | `bh:{h1\|room:101}:meta` | hash | `seq` (messages ever stored, contiguous), `last` (newest offset stored), `origin` (where this channel's history starts), `trimmed` (newest entry trimmed by the length cap) |
//! | `bh:{h1\|room:101}:read` | hash | read markers: user → offset |
//! | `bh:{h1\|room:101}:presence` | sorted set | sessions `<user>\x1f<session>`, scored by expiry (ms) |
//! | `bh:{h1\|room:101}:users` | hash | presence: user → number of present sessions |
//! | `bh:{h1\|room:101}:idem:<key>` | string | `<offset> <message id>` of the publish with idempotency key `<key>`, for `idempotency_window` |
//! | `bh:{h1\|room:101}:live` | pub/sub channel | live events (below) |
//!
//! Outside this scheme: the **origin** where the server's data starts, `bh:origin` (a string
//! `<ms>-0`, no expiry; in a cluster one per slot, `bh:{<tag>}:origin` with a tag that hashes to
//! that slot, so every channel's script can read its slot's), set at connect where missing; each
//! broker's own probe channel, `bh:probe:<client id>`; and the client bans every node enforces,
//! `bh:{bans}` (a sorted set of banned addresses scored by expiry, ms) announced on
//! `bh:{bans}:live` (`<ms left> <address>`).
//!
//! A channel has keys only once something was published to it (log, meta, and the markers users
//! save afterwards) or someone joined it (presence): reads, read markers and unread counts of a
//! channel nobody published to, and subscriptions, create nothing. Nothing needs a sweeper: the
//! log, meta and markers expire one retention window after the newest message, the idempotency
//! keys after their window, the presence keys one presence TTL after the last join or refresh.
//!
//! # The channel script
//!
//! Every operation is one call of one Lua script ([`SCRIPT`], in `channel.lua`, loaded once with
//! `SCRIPT LOAD`, called with `EVALSHA`, reloaded on `NOSCRIPT`), so it is atomic and one round
//! trip. Time is the server's (`TIME`), never a node's, so nodes with skewed clocks still agree.
//! A publish:
//!
//! 0. with an idempotency key: if `idem:<key>` exists, returns the original's offset and message
//!    id and does nothing else (no entry, no live event);
//! 1. computes the offset like [`Offset::next_after`]: the server's millisecond, or one past
//!    `meta.last` when the clock has not moved past it (it stepped back), so offsets strictly
//!    increase (and a position a read handed out for an empty channel is below it, see below);
//! 2. for a new channel, `HSET meta origin` to its slot's origin (so positions handed out by reads
//!    while it was empty stay good; `now` when its log survived its meta), then
//!    `XADD log MINID ~ <now - retention> <offset> s <seq> e <envelope>` (the explicit ID keeps
//!    time-based trimming; the sequence is `meta.seq + 1`); then the length cap: when the stream
//!    holds more than `max_messages_per_channel`, the oldest entries beyond it are removed
//!    exactly (`XTRIM MAXLEN =`, since `XADD` takes one trim strategy and `MINID` is the one
//!    there) and the newest of them is remembered as `meta.trimmed`; then `HSET meta seq last`;
//! 3. extends the channel's keys to live until the message leaves the window, and with an
//!    idempotency key `SET idem:<key> "<offset> <message id>" PX <idempotency window>`;
//! 4. `PUBLISH live {"k":"m","o":<offset>,"s":<seq>,"e":<envelope>}`.
//!
//! `publish_batch` sends one `EVALSHA` per message in one pipeline (one round trip), results in
//! batch order. Ephemeral events are `PUBLISH`ed from the node as `{"k":"join"|"leave"|"typing",
//! "u":<user>}` on the same live channel and never stored.
//!
//! # Live subscriptions
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
//!   and [`RedisBroker::subscriber_healthy`] reads false until a probe comes back. The next probe
//!   waits until the new connection is subscribed again (one sent earlier would find nobody
//!   subscribed and replace the connection once more).
//!
//! # Redis Cluster
//!
//! With [`RedisConfig::cluster`] the client discovers the cluster from the URL's node and routes
//! each call by slot. Nothing else changes in the data: every key of a channel and its live
//! channel carry the channel's hash tag, so one script call touches one slot and its `SPUBLISH`
//! (instead of `PUBLISH`) goes to that shard only. Subscriptions are `SSUBSCRIBE`s, one call per
//! slot (Redis refuses channels of several slots in one), each confirmed by a `PING` routed to
//! the same slot; the subscriber client holds a connection per master, and a reconnect of any of
//! them re-subscribes every channel and gives each a gap, as above. The script is loaded on every
//! primary; `NOSCRIPT` (a promoted replica, a new master) loads it everywhere again.
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

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bellhop_protocol::{Envelope, Offset};
use fred::prelude::{
    Builder, ClientLike, Config as FredConfig, Error as FredError, ErrorKind, EventInterface,
    LuaInterface, PubsubInterface, ReconnectPolicy, Value,
};
use fred::types::config::{Options, TlsConnector};
use fred::types::{ClusterHash, CustomCommand};
use fred::util::redis_keyslot;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::broker::{
    Broker, BrokerError, ChannelEvent, ChannelKey, Feed, Publish, Published, ReadResult,
    StoredMessage, Subscription,
};

/// Most messages one read returns; `more` tells the caller to read on.
const MAX_READ: usize = 10_000;

/// Settings of the Redis backend.
#[derive(Clone)]
pub struct RedisConfig {
    /// Where Redis is: `redis://[[user]:password@]host[:port][/db]` (`REDIS_URL`), or
    /// `rediss://...` for TLS; in cluster mode, any one node of the cluster (the others are
    /// discovered).
    pub url: String,
    /// With `rediss://`: a PEM file of the certificate authorities that sign the server's
    /// certificate (`REDIS_TLS_CA_PATH`), instead of the system's roots. The certificate must
    /// name the host in the URL (and, in a cluster, each node as it announces itself).
    pub tls_ca_path: Option<std::path::PathBuf>,
    /// The URL is a node of a Redis Cluster (`REDIS_CLUSTER`): keys are spread over its slots,
    /// live events travel by sharded pub/sub (`SPUBLISH`/`SSUBSCRIBE`) and the channel script is
    /// loaded on every primary.
    pub cluster: bool,
    /// Prefix of every key and pub/sub channel (`bh`), so several deployments can share a
    /// server. Must not contain `{`, `}` or whitespace.
    pub key_prefix: String,
    /// How long messages stay readable (`MESSAGE_RETENTION_HOURS`, 24 h); also how long an idle
    /// channel's keys live.
    pub retention: Duration,
    /// How long a session stays present without a refresh (90 s): a node that dies leaves its
    /// sessions behind for at most this long.
    pub presence_ttl: Duration,
    /// How often this broker refreshes the sessions it added (30 s); well under `presence_ttl`.
    pub presence_refresh: Duration,
    /// Most messages kept per channel (10,000, the same as the embedded broker's): each publish
    /// trims the stream to it exactly, oldest first, and a `since` older than a message trimmed
    /// this way is `recovered: false`.
    pub max_messages_per_channel: usize,
    /// How long the result of a publish with an idempotency key is remembered (600 s,
    /// `IDEMPOTENCY_WINDOW_SECONDS`): a repeat within it is answered with the original (a key
    /// `<prefix>:{<property>|<channel>}:idem:<key>` with that expiry).
    pub idempotency_window: Duration,
    /// Longest a Redis call may take before it fails with `unavailable` (5 s, the circuit
    /// breaker's call timeout). Also bounds connecting.
    pub command_timeout: Duration,
    /// What `retryAfterMs` says when Redis is unreachable (1 s).
    pub retry_after: Duration,
    /// First delay before reconnecting (100 ms); doubles on each failed attempt. Reconnecting
    /// never gives up.
    pub reconnect_min_delay: Duration,
    /// Longest delay between reconnect attempts (10 s).
    pub reconnect_max_delay: Duration,
    /// Events buffered per channel for a live subscriber before it is told it has a gap (32).
    /// The buffer is allocated in full for every channel with a subscriber, so it is small: a
    /// node's hub drains it at once, and a subscriber that falls behind re-reads the log.
    pub subscriber_buffer: usize,
    /// Pub/sub messages buffered between the subscriber connection and the task that routes them
    /// to channels, before every channel is told it has a gap (16,384).
    pub pubsub_buffer: usize,
    /// How often a probe is published to this broker's own pub/sub channel, to catch a subscriber
    /// connection that went silent without closing (15 s).
    pub probe_interval: Duration,
    /// How long a probe may take to come back before the subscriber connection is replaced and
    /// every channel told it has a gap (5 s).
    pub probe_timeout: Duration,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: "redis://127.0.0.1:6379".into(),
            cluster: false,
            tls_ca_path: None,
            key_prefix: "bh".into(),
            retention: Duration::from_secs(24 * 3600),
            presence_ttl: Duration::from_secs(90),
            presence_refresh: Duration::from_secs(30),
            max_messages_per_channel: 10_000,
            idempotency_window: Duration::from_secs(600),
            command_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(10),
            subscriber_buffer: 32,
            pubsub_buffer: 16_384,
            probe_interval: Duration::from_secs(15),
            probe_timeout: Duration::from_secs(5),
        }
    }
}

/// Written by hand so the password in the URL never reaches a log.
impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &redact(&self.url))
            .field("cluster", &self.cluster)
            .field("tls_ca_path", &self.tls_ca_path)
            .field("key_prefix", &self.key_prefix)
            .field("retention", &self.retention)
            .field("presence_ttl", &self.presence_ttl)
            .field("presence_refresh", &self.presence_refresh)
            .field("max_messages_per_channel", &self.max_messages_per_channel)
            .field("idempotency_window", &self.idempotency_window)
            .field("command_timeout", &self.command_timeout)
            .field("retry_after", &self.retry_after)
            .field("reconnect_min_delay", &self.reconnect_min_delay)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("subscriber_buffer", &self.subscriber_buffer)
            .field("pubsub_buffer", &self.pubsub_buffer)
            .field("probe_interval", &self.probe_interval)
            .field("probe_timeout", &self.probe_timeout)
            .finish()
    }
}

/// The URL with any credentials replaced by `***`.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

impl RedisConfig {
    /// The URL with its credentials replaced by `***`, for logs and errors.
    pub fn redacted_url(&self) -> String {
        redact(&self.url)
    }

    /// Whether Redis is reached over TLS (`rediss://`).
    pub fn uses_tls(&self) -> bool {
        self.url.starts_with("rediss://")
    }

    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if !self.url.starts_with("redis://") && !self.url.starts_with("rediss://") {
            return Err(format!(
                "REDIS_URL must be a redis:// or rediss:// (TLS) URL; Sentinel is not supported, and for a Redis Cluster give one node's URL and set REDIS_CLUSTER=true: {:?}",
                redact(&self.url)
            ));
        }
        if self.tls_ca_path.is_some() && !self.uses_tls() {
            return Err("REDIS_TLS_CA_PATH is set but Redis is not reached over TLS: use a rediss:// URL or REDIS_TLS_ENABLED=true".into());
        }
        if self.key_prefix.is_empty()
            || self
                .key_prefix
                .chars()
                .any(|c| c == '{' || c == '}' || c.is_whitespace())
        {
            return Err(format!(
                "the Redis key prefix must be non-empty without braces or spaces: {:?}",
                self.key_prefix
            ));
        }
        if self.retention < Duration::from_secs(1)
            || self.retention > Duration::from_secs(3650 * 24 * 3600)
        {
            return Err(
                "MESSAGE_RETENTION_HOURS must give a retention between 1 s and 10 years".into(),
            );
        }
        if self.presence_ttl > Duration::from_secs(24 * 3600) {
            return Err("the presence TTL must be at most a day".into());
        }
        if self.presence_refresh.is_zero() || self.presence_ttl <= self.presence_refresh {
            return Err(
                "the presence TTL must be longer than the (non-zero) presence refresh interval"
                    .into(),
            );
        }
        if self.max_messages_per_channel == 0 {
            return Err("the per-channel message cap must be at least 1".into());
        }
        if self.idempotency_window.as_millis() == 0
            || self.idempotency_window > Duration::from_secs(7 * 24 * 3600)
        {
            return Err("the idempotency window must be between 1 ms and 7 days".into());
        }
        if self.command_timeout.is_zero() {
            return Err("the Redis command timeout must be positive".into());
        }
        if self.reconnect_min_delay.is_zero() || self.reconnect_max_delay < self.reconnect_min_delay
        {
            return Err(
                "the Redis reconnect delays must be positive, the maximum at least the minimum"
                    .into(),
            );
        }
        if self.subscriber_buffer == 0 || self.pubsub_buffer == 0 {
            return Err("the Redis subscriber buffers must hold at least one event".into());
        }
        if self.probe_interval.is_zero() || self.probe_timeout.is_zero() {
            return Err("the Redis subscriber probe interval and timeout must be positive".into());
        }
        Ok(())
    }
}

/// The channel script (`channel.lua`); see the module docs. `KEYS`: log, meta, read markers,
/// presence sessions, presence users, the slot's (or server's) origin, and for an idempotent
/// publish its result's key. `ARGV`: operation, retention (ms), presence TTL (ms), then the
/// operation's arguments.
const SCRIPT: &str = include_str!("channel.lua");

/// The names of one channel's keys and live channel (see the module docs).
#[derive(Clone, Debug)]
struct ChannelKeys {
    /// The stream of messages.
    log: String,
    /// `seq`, `last`, `origin`.
    meta: String,
    /// Read markers.
    read: String,
    /// Present sessions by expiry.
    presence: String,
    /// Present users and their session counts.
    users: String,
    /// The pub/sub channel of live events.
    live: String,
    /// What every idempotency key's name starts with (`<base>:idem:`).
    idem_prefix: String,
    /// Where the data of the channel's slot (in a cluster) or of the server starts.
    origin: String,
}

/// The origin key of a server (`<prefix>:origin`) or, in a cluster, of one slot
/// (`<prefix>:{<tag>}:origin`, with a tag that hashes to that slot, so the channel script of any
/// channel on the slot may read and write it).
fn origin_key(prefix: &str, cluster: bool, slot: u16) -> String {
    if cluster {
        format!("{prefix}:{{{}}}:origin", slot_tag(slot))
    } else {
        format!("{prefix}:origin")
    }
}

/// A short string that hashes to `slot` (the smallest decimal number that does), computed once
/// for all 16,384 slots.
fn slot_tag(slot: u16) -> &'static str {
    static TAGS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let tags = TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); CLUSTER_SLOTS];
        let mut missing = CLUSTER_SLOTS;
        let mut n = 0u64;
        while missing > 0 {
            let tag = n.to_string();
            let slot = usize::from(redis_keyslot(tag.as_bytes()));
            if tags[slot].is_empty() {
                tags[slot] = tag;
                missing -= 1;
            }
            n += 1;
        }
        tags
    });
    &tags[usize::from(slot) % CLUSTER_SLOTS]
}

/// The slots of a Redis Cluster.
const CLUSTER_SLOTS: usize = 16_384;

impl ChannelKeys {
    fn new(prefix: &str, cluster: bool, key: &ChannelKey) -> Self {
        let tag = format!("{}|{}", key.property, key.channel);
        let base = format!("{prefix}:{{{tag}}}");
        ChannelKeys {
            origin: origin_key(prefix, cluster, redis_keyslot(tag.as_bytes())),
            log: format!("{base}:log"),
            meta: format!("{base}:meta"),
            read: format!("{base}:read"),
            presence: format!("{base}:presence"),
            users: format!("{base}:users"),
            live: format!("{base}:live"),
            idem_prefix: format!("{base}:idem:"),
        }
    }

    /// The key remembering the result of a publish with idempotency key `key` to this channel:
    /// it carries the channel's hash tag, so the script that stores the message checks and
    /// writes it in the same slot.
    fn idempotency(&self, key: &str) -> String {
        format!("{}{key}", self.idem_prefix)
    }

    /// `KEYS` of the channel script, in its order.
    fn script_keys(&self) -> Vec<String> {
        vec![
            self.log.clone(),
            self.meta.clone(),
            self.read.clone(),
            self.presence.clone(),
            self.users.clone(),
            self.origin.clone(),
        ]
    }
}

/// A live event as it travels on a channel's pub/sub channel. Short field names: every byte is
/// sent to every subscribed node. Stored messages are published by the script, which writes the
/// same JSON by hand.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "k")]
enum Live {
    /// A stored message: its offset, sequence number and envelope.
    #[serde(rename = "m")]
    Message {
        /// Offset.
        o: Offset,
        /// The channel's sequence number of this message (contiguous: gaps are detectable).
        s: u64,
        /// The message (shared from here on, never copied per subscriber).
        e: Arc<Envelope>,
    },
    /// [`ChannelEvent::Join`].
    #[serde(rename = "join")]
    Join {
        /// Who.
        u: String,
    },
    /// [`ChannelEvent::Leave`].
    #[serde(rename = "leave")]
    Leave {
        /// Who.
        u: String,
    },
    /// [`ChannelEvent::Typing`].
    #[serde(rename = "typing")]
    Typing {
        /// Who.
        u: String,
    },
}

/// One live channel this broker is subscribed to.
#[derive(Debug)]
struct LiveChannel {
    /// Fan-out to the local subscriptions.
    tx: broadcast::Sender<Feed>,
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

/// A session this broker added to a channel's presence, and keeps refreshing.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct HeldSession {
    /// The channel.
    key: ChannelKey,
    /// The user.
    user: String,
    /// The session.
    session: String,
}

/// State shared by the broker handle and its background tasks.
struct Inner {
    /// Settings.
    config: RedisConfig,
    /// Commands and scripts.
    client: fred::clients::Client,
    /// The pub/sub connection: only `SUBSCRIBE`, `UNSUBSCRIBE` and `PING` go here.
    subscriber: fred::clients::Client,
    /// The channel script's SHA1, as `SCRIPT LOAD` returned it.
    script_sha: String,
    /// Live channels with local subscribers, by pub/sub channel name.
    live: Mutex<HashMap<String, LiveChannel>>,
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

/// What the subscription task is asked to look at.
#[derive(Debug)]
enum SubRequest {
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

/// Maps a client error: connection trouble and a server that cannot serve now are `Unavailable`
/// (a retry can help), anything else `Internal`.
pub(crate) fn broker_error(error: &FredError, retry_after: Duration) -> BrokerError {
    const TRANSIENT_REPLIES: [&str; 8] = [
        "LOADING",
        "BUSY",
        "MASTERDOWN",
        "READONLY",
        "TRYAGAIN",
        "CLUSTERDOWN",
        "NOREPLICAS",
        "OOM",
    ];
    let transient = matches!(
        error.kind(),
        ErrorKind::IO
            | ErrorKind::Timeout
            | ErrorKind::Canceled
            | ErrorKind::Backpressure
            | ErrorKind::Routing
            | ErrorKind::Cluster
    ) || TRANSIENT_REPLIES
        .iter()
        .any(|p| error.details().starts_with(p));
    if transient {
        BrokerError::Unavailable {
            reason: format!("redis: {}", in_words(error)),
            retry_after,
        }
    } else {
        BrokerError::Internal(format!("redis: {}", in_words(error)))
    }
}

/// A client error as an operator reads it. fred keeps an I/O error only as its debug text
/// (`Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }`), so the message
/// is taken back out of it; and a command that timed out while the connection is down is said
/// to be that, not a bare "Request timed out".
fn in_words(error: &FredError) -> String {
    let details = error.details();
    match error.kind() {
        ErrorKind::IO => {
            let message = details
                .split_once("message: \"")
                .and_then(|(_, rest)| rest.split_once('"'))
                .map(|(m, _)| m);
            let code = details
                .split_once("code: ")
                .and_then(|(_, rest)| rest.split_once(','))
                .map(|(c, _)| c);
            match (message, code) {
                (Some(m), Some(c)) => format!("cannot reach Redis: {m} (os error {c})"),
                (Some(m), None) => format!("cannot reach Redis: {m}"),
                _ => format!("cannot reach Redis: {}", details.trim_end_matches('.')),
            }
        }
        ErrorKind::Timeout => "no reply within the command timeout: Redis is down, unreachable \
             or overloaded (the node keeps reconnecting)"
            .into(),
        _ => error.to_string(),
    }
}

/// `SUBSCRIBE`s `channels` and returns once Redis has processed it. fred resolves a `SUBSCRIBE`
/// when it is written, not when Redis confirms it (the confirmations arrive out of band), so a
/// publish on the command connection could still overtake it; a `PING` on the same connection is
/// answered only after everything sent before it.
async fn subscribe_confirmed(
    subscriber: &fred::clients::Client,
    cluster: bool,
    channels: Vec<String>,
) -> Result<(), FredError> {
    if !cluster {
        // One command per chunk, all written before the one PING that confirms them.
        for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
            subscriber.subscribe(chunk.to_vec()).await?;
        }
        return subscriber.ping::<Value>(None).await.map(|_| ());
    }
    // Sharded pub/sub: one `SSUBSCRIBE` per slot (Redis refuses channels of several slots in one
    // call), each confirmed by a `PING` routed to the same slot, so to the same connection. The
    // slots are subscribed concurrently.
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for channel in channels {
        by_slot
            .entry(redis_keyslot(channel.as_bytes()))
            .or_default()
            .push(channel);
    }
    let confirmations = by_slot.into_iter().map(|(slot, channels)| async move {
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
        for chunk in channels.chunks(SUBSCRIBE_CHUNK) {
            subscriber.unsubscribe(chunk.to_vec()).await?;
        }
        return Ok(());
    }
    let mut by_slot: HashMap<u16, Vec<String>> = HashMap::new();
    for channel in channels {
        by_slot
            .entry(redis_keyslot(channel.as_bytes()))
            .or_default()
            .push(channel);
    }
    let calls = by_slot
        .into_values()
        .map(|channels| subscriber.sunsubscribe(channels));
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .collect()
}

fn is_noscript(error: &FredError) -> bool {
    error.details().starts_with("NOSCRIPT")
}

/// A reply that does not have the shape the script returns.
fn malformed(what: &str, value: &Value) -> BrokerError {
    BrokerError::Internal(format!(
        "redis: malformed {what} in script reply: {value:?}"
    ))
}

/// The `N` parts of a script reply that is an array.
fn reply_parts<const N: usize>(reply: Value, what: &str) -> Result<[Value; N], BrokerError> {
    let parts = reply.into_array();
    let len = parts.len();
    <[Value; N]>::try_from(parts).map_err(|_| {
        BrokerError::Internal(format!(
            "redis: the {what} reply has {len} parts, expected {N}"
        ))
    })
}

fn parse_offset(value: &Value) -> Result<Offset, BrokerError> {
    value
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| malformed("offset", value))
}

fn parse_u64(value: &Value) -> Result<u64, BrokerError> {
    value
        .as_u64()
        .or_else(|| value.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| malformed("number", value))
}

/// A stream entry `[id, [field, value, ...]]` as a stored message.
fn parse_entry(entry: Value) -> Result<StoredMessage, BrokerError> {
    let mut parts = entry.into_array().into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
        return Err(BrokerError::Internal(
            "redis: malformed stream entry in script reply".into(),
        ));
    };
    let offset = parse_offset(&id)?;
    let fields = fields.into_array();
    let json = fields
        .chunks(2)
        .find(|pair| pair.first().and_then(Value::as_str).as_deref() == Some("e"))
        .and_then(|pair| pair.get(1))
        .and_then(Value::as_str)
        .ok_or_else(|| BrokerError::Internal(format!("redis: entry {offset} has no envelope")))?;
    let envelope: Envelope = serde_json::from_str(&json).map_err(|e| {
        BrokerError::Internal(format!("redis: entry {offset} has a bad envelope: {e}"))
    })?;
    Ok(StoredMessage {
        offset,
        envelope: Arc::new(envelope),
    })
}

impl Inner {
    fn keys(&self, key: &ChannelKey) -> ChannelKeys {
        ChannelKeys::new(&self.config.key_prefix, self.config.cluster, key)
    }

    /// The command that announces a stored message on its live channel, as the script runs it.
    fn announce(&self) -> String {
        if self.config.cluster {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
        .to_owned()
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

    fn error(&self, error: &FredError) -> BrokerError {
        broker_error(error, self.config.retry_after)
    }

    /// The script's `ARGV`: the operation, the two windows, then `args`.
    fn script_args<const N: usize>(&self, op: &str, args: [String; N]) -> Vec<String> {
        let ms = |d: Duration| d.as_millis().min(u64::MAX as u128).to_string();
        let mut argv = Vec::with_capacity(3 + N);
        argv.push(op.to_owned());
        argv.push(ms(self.config.retention));
        argv.push(ms(self.config.presence_ttl));
        argv.extend(args);
        argv
    }

    /// Runs the channel script once per call, in one pipeline, answering in call order. On
    /// `NOSCRIPT` (the server lost its script cache) the script is loaded again and the calls
    /// that failed are sent once more.
    async fn eval_many(
        &self,
        calls: Vec<(Vec<String>, Vec<String>)>,
    ) -> Vec<Result<Value, BrokerError>> {
        let mut replies = self.pipeline(&calls).await;
        let retry: Vec<usize> = replies
            .iter()
            .enumerate()
            .filter(|(_, r)| matches!(r, Err(e) if is_noscript(e)))
            .map(|(i, _)| i)
            .collect();
        if !retry.is_empty() {
            tracing::info!(
                calls = retry.len(),
                "channel script missing on the server; loading it again"
            );
            match self.client.script_load_cluster::<String, _>(SCRIPT).await {
                Ok(_) => {
                    let again: Vec<_> = retry.iter().map(|&i| calls[i].clone()).collect();
                    for (i, reply) in retry.into_iter().zip(self.pipeline(&again).await) {
                        replies[i] = reply;
                    }
                }
                Err(e) => {
                    for i in retry {
                        replies[i] = Err(e.clone());
                    }
                }
            }
        }
        replies
            .into_iter()
            .map(|r| r.map_err(|e| self.error(&e)))
            .collect()
    }

    /// One pipeline of `EVALSHA`s; exactly one reply per call.
    async fn pipeline(
        &self,
        calls: &[(Vec<String>, Vec<String>)],
    ) -> Vec<Result<Value, FredError>> {
        // fred's pipelines have no Lua interface: EVALSHA as a custom command, routed (in a
        // cluster) to the slot of its first key. fred honours only an explicit slot on a custom
        // command (otherwise it hashes the first argument, the SHA), so the slot is computed
        // here.
        let pipeline = self.client.pipeline();
        for (keys, args) in calls {
            let slot = keys.first().map_or(0, |key| redis_keyslot(key.as_bytes()));
            let evalsha = CustomCommand::new_static("EVALSHA", ClusterHash::Custom(slot), false);
            let mut argv = Vec::with_capacity(2 + keys.len() + args.len());
            argv.push(self.script_sha.clone());
            argv.push(keys.len().to_string());
            argv.extend(keys.iter().cloned());
            argv.extend(args.iter().cloned());
            let queued: Result<(), FredError> = pipeline.custom(evalsha, argv).await;
            if let Err(e) = queued {
                return vec![Err(e); calls.len()];
            }
        }
        let mut replies = pipeline.try_all::<Value>().await;
        if replies.len() != calls.len() {
            // The pipeline as a whole failed (connection, timeout): every call did.
            let error = match replies.pop() {
                Some(Err(e)) => e,
                _ => FredError::new(ErrorKind::Protocol, "pipeline reply count mismatch"),
            };
            return vec![Err(error); calls.len()];
        }
        replies
    }

    async fn eval(&self, keys: &ChannelKeys, args: Vec<String>) -> Result<Value, BrokerError> {
        self.eval_many(vec![(keys.script_keys(), args)])
            .await
            .pop()
            .unwrap_or_else(|| Err(BrokerError::Internal("redis: no script reply".into())))
    }

    /// A receiver on an already subscribed live channel.
    fn join_live(&self, channel: &str) -> Option<broadcast::Receiver<Feed>> {
        let live = self.live.lock();
        live.get(channel)
            .filter(|c| c.subscribed)
            .map(|c| c.tx.subscribe())
    }

    /// Hands one pub/sub message to its channel's subscribers.
    fn route(&self, channel: &str, value: &Value) {
        let decoded = value
            .as_str()
            .ok_or_else(|| "not text".to_owned())
            .and_then(|text| serde_json::from_str::<Live>(&text).map_err(|e| e.to_string()));
        let mut live = self.live.lock();
        let Some(state) = live.get_mut(channel) else {
            return; // Unsubscribed meanwhile.
        };
        let event = match decoded {
            Ok(Live::Message { o, s, e }) => {
                let jump = state
                    .last_seq
                    .is_some_and(|last| last.checked_add(1) != Some(s));
                if jump || state.needs_gap {
                    tracing::debug!(channel, seq = s, last = ?state.last_seq, renewed = state.needs_gap, "gap before a live message");
                    state.needs_gap = false;
                    let _ = state.tx.send(Feed::Gap);
                }
                state.last_seq = Some(s);
                ChannelEvent::Message(StoredMessage {
                    offset: o,
                    envelope: e,
                })
            }
            Ok(Live::Join { u }) => ChannelEvent::Join { user_id: u },
            Ok(Live::Leave { u }) => ChannelEvent::Leave { user_id: u },
            Ok(Live::Typing { u }) => ChannelEvent::Typing { user_id: u },
            Err(error) => {
                // Maybe a message we should have had: the reader re-reads the log.
                tracing::warn!(channel, %error, "undecodable live message");
                state.last_seq = None;
                let _ = state.tx.send(Feed::Gap);
                return;
            }
        };
        // No receivers is fine: the release task is about to unsubscribe.
        let _ = state.tx.send(Feed::Event(event));
    }

    /// Tells every live channel's subscribers they may have missed something.
    fn gap_all(&self) {
        for state in self.live.lock().values_mut() {
            state.last_seq = None;
            state.needs_gap = false;
            let _ = state.tx.send(Feed::Gap);
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
                if state.tx.receiver_count() == 0 && state.waiters.is_empty() {
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

    /// Sets the origin of the server (in a cluster: of every slot) where it is missing, to just
    /// below the server's now. Runs at connect, so that a channel first read and later published
    /// to starts its history before the position the read handed out; a publish sets its slot's
    /// origin again if the server lost it meanwhile.
    async fn ensure_origins(&self) -> Result<(), BrokerError> {
        let slots = if self.config.cluster {
            0..CLUSTER_SLOTS as u16
        } else {
            0..1
        };
        let prefix = &self.config.key_prefix;
        let calls = slots
            .map(|slot| {
                let key = origin_key(prefix, self.config.cluster, slot);
                (vec![key], self.script_args("origin", []))
            })
            .collect();
        self.eval_many(calls)
            .await
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Refreshes the expiry of every session this broker added.
    async fn refresh_sessions(&self) {
        let held: Vec<HeldSession> = self.sessions.lock().iter().cloned().collect();
        if held.is_empty() {
            return;
        }
        let calls = held
            .iter()
            .map(|s| {
                let args = self.script_args("join", [s.user.clone(), s.session.clone()]);
                (self.keys(&s.key).script_keys(), args)
            })
            .collect();
        let failed = self
            .eval_many(calls)
            .await
            .into_iter()
            .filter(Result::is_err)
            .count();
        if failed > 0 {
            tracing::warn!(
                failed,
                sessions = held.len(),
                "could not refresh presence; retrying at the next refresh"
            );
        }
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
        let probe_channel = format!("{}:probe:{}", config.key_prefix, subscriber.id());
        let bans_key = format!("{}:{{bans}}", config.key_prefix);
        let bans_channel = format!("{bans_key}:live");
        let channels = vec![probe_channel.clone(), bans_channel.clone()];
        subscribe_confirmed(&subscriber, config.cluster, channels)
            .await
            .map_err(|e| broker_error(&e, retry_after))?;

        let (sub_requests, sub_inbox) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            config,
            client,
            subscriber,
            script_sha,
            live: Mutex::new(HashMap::new()),
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
            tokio::spawn(route_messages(inner.clone(), messages)),
            tokio::spawn(resubscribe_on_reconnect(inner.clone(), reconnects)),
            tokio::spawn(manage_subscriptions(inner.clone(), sub_inbox)),
            tokio::spawn(refresh_presence(inner.clone())),
            tokio::spawn(probe_subscriber(inner.clone())),
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

/// The client configuration for `config`: one server, or (with [`RedisConfig::cluster`]) a
/// cluster discovered from the node the URL names.
pub(crate) fn fred_config(config: &RedisConfig) -> Result<FredConfig, BrokerError> {
    let invalid = |e: FredError| BrokerError::Internal(format!("REDIS_URL: {}", e.details()));
    // rustls picks its crypto from the process default; ours is ring (no C toolchain needed).
    // Whoever installed one first wins, which is fine: any installed provider is a safe one.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut fred_config = if config.cluster {
        // fred names a cluster by scheme; the URL stays an ordinary one for operators.
        let url = if let Some(rest) = config.url.strip_prefix("redis://") {
            format!("redis-cluster://{rest}")
        } else if let Some(rest) = config.url.strip_prefix("rediss://") {
            format!("rediss-cluster://{rest}")
        } else {
            config.url.clone()
        };
        FredConfig::from_url_clustered(&url).map_err(invalid)?
    } else {
        let fred_config = FredConfig::from_url(&config.url).map_err(invalid)?;
        if fred_config.server.is_clustered() || fred_config.server.is_sentinel() {
            return Err(BrokerError::Internal(
                "REDIS_URL: Sentinel is not supported; for a Redis Cluster set REDIS_CLUSTER=true"
                    .into(),
            ));
        }
        fred_config
    };
    if let Some(path) = &config.tls_ca_path {
        fred_config.tls = Some(TlsConnector::from(tls_client_config(path)?).into());
    }
    Ok(fred_config)
}

/// A TLS client configuration trusting only the certificate authorities in the PEM file at
/// `path`: TLS 1.3 and 1.2, rustls's safe defaults, no client certificate.
fn tls_client_config(path: &std::path::Path) -> Result<rustls::ClientConfig, BrokerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::CertificateDer;
    let unreadable = |e: &dyn fmt::Display| {
        BrokerError::Internal(format!("REDIS_TLS_CA_PATH {}: {e}", path.display()))
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(|e| unreadable(&e))? {
        let cert = cert.map_err(|e| unreadable(&e))?;
        roots.add(cert).map_err(|e| unreadable(&e))?;
    }
    if roots.is_empty() {
        return Err(unreadable(&"no certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| unreadable(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

pub(crate) fn build_client(
    config: &RedisConfig,
    fred_config: FredConfig,
    attempts: u32,
    events_buffer: usize,
) -> Result<fred::clients::Client, BrokerError> {
    let ms = |d: Duration| d.as_millis().min(u32::MAX as u128) as u32;
    let mut builder = Builder::from_config(fred_config);
    builder
        .with_config(|c| c.fail_fast = true)
        .with_connection_config(|c| {
            c.connection_timeout = config.command_timeout;
            c.internal_command_timeout = config.command_timeout;
            c.max_command_attempts = attempts;
        })
        .with_performance_config(|p| {
            p.default_command_timeout = config.command_timeout;
            p.broadcast_channel_capacity = events_buffer;
        })
        .set_policy(ReconnectPolicy::new_exponential(
            0, // never give up
            ms(config.reconnect_min_delay),
            ms(config.reconnect_max_delay),
            2,
        ));
    builder
        .build()
        .map_err(|e| BrokerError::Internal(format!("redis client: {e}")))
}

/// Routes pub/sub messages to their channels until the subscriber connection is closed.
async fn route_messages(
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
                let ban = message.value.as_str().and_then(|text| {
                    let (ms, subject) = text.split_once(' ')?;
                    Some((subject.to_owned(), Duration::from_millis(ms.parse().ok()?)))
                });
                match ban {
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
async fn resubscribe_on_reconnect(
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
async fn manage_subscriptions(inner: Arc<Inner>, mut inbox: mpsc::UnboundedReceiver<SubRequest>) {
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
async fn probe_subscriber(inner: Arc<Inner>) {
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

/// Refreshes this broker's sessions every `presence_refresh`.
async fn refresh_presence(inner: Arc<Inner>) {
    let mut tick = tokio::time::interval(inner.config.presence_refresh);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        inner.refresh_sessions().await;
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
        let max_len = inner.config.max_messages_per_channel.to_string();
        let window = inner
            .config
            .idempotency_window
            .as_millis()
            .clamp(1, u64::MAX as u128)
            .to_string();
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
                    let mut script_keys = keys.script_keys();
                    let mut args = inner.script_args(
                        "publish",
                        [
                            json,
                            keys.live.clone(),
                            deadline.clone(),
                            inner.announce(),
                            max_len.clone(),
                        ],
                    );
                    if let Some(key) = idempotency_key {
                        script_keys.push(keys.idempotency(key));
                        args.push(window.clone());
                        args.push(envelope.message_id.clone());
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
                let parts = reply.into_array();
                match parts.first().and_then(Value::as_str).as_deref() {
                    Some("expired") => {
                        let redis_ms = parts.get(1).map(parse_u64).transpose()?;
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
                    Some("duplicate") => {
                        let [_, offset, original] =
                            <[Value; 3]>::try_from(parts).map_err(|_| {
                                BrokerError::Internal("redis: malformed duplicate reply".into())
                            })?;
                        Ok(Published {
                            offset: parse_offset(&offset)?,
                            message_id: original
                                .as_string()
                                .ok_or_else(|| malformed("message id", &original))?,
                            duplicate: true,
                        })
                    }
                    _ => {
                        let [offset, _seq] = reply_parts(Value::Array(parts), "publish")?;
                        Ok(Published {
                            offset: parse_offset(&offset)?,
                            message_id,
                            duplicate: false,
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
        let inner = &self.inner;
        let channel = inner.keys(key).live;
        let lease = |channel: String| -> crate::broker::Lease {
            Box::new(Release {
                channel,
                tx: inner.sub_requests.clone(),
            })
        };
        if let Some(rx) = inner.join_live(&channel) {
            return Ok(Subscription::with_feed(rx, lease(channel)));
        }
        let (rx, confirmed) = {
            let mut live = inner.live.lock();
            let state = live.entry(channel.clone()).or_insert_with(|| LiveChannel {
                tx: broadcast::channel(inner.config.subscriber_buffer).0,
                subscribed: false,
                waiters: Vec::new(),
                last_seq: None,
                needs_gap: false,
            });
            let rx = state.tx.subscribe();
            if state.subscribed {
                (rx, None)
            } else {
                let (tx, confirmed) = oneshot::channel();
                state.waiters.push(tx);
                (rx, Some(confirmed))
            }
        };
        // Made before waiting, so that a failure or a cancelled call drops it like any other
        // subscription (the receiver first, then the lease that tells the task to look).
        let subscription = Subscription::with_feed(rx, lease(channel.clone()));
        if let Some(confirmed) = confirmed {
            let _ = inner.sub_requests.send(SubRequest::Channel(channel));
            match confirmed.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => return Err(error),
                Err(_) => {
                    return Err(BrokerError::Unavailable {
                        reason: "the Redis broker is shutting down".into(),
                        retry_after: inner.config.retry_after,
                    })
                }
            }
        }
        Ok(subscription)
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
        let args = inner.script_args("read", [since_arg, limit.to_string()]);
        let reply = inner.eval(&inner.keys(key), args).await?;
        let [now, floor, last, entries] = reply_parts(reply, "read")?;
        let now = parse_u64(&now)?;
        let floor = parse_offset(&floor)?;
        let last = parse_offset(&last)?;
        let mut messages = entries
            .into_array()
            .into_iter()
            .filter(|v| !v.is_null())
            .map(parse_entry)
            .collect::<Result<Vec<_>, _>>()?;
        let (recovered, more) = match since {
            None => {
                messages.reverse();
                (true, false)
            }
            Some(since) => {
                let more = messages.len() > limit;
                messages.truncate(limit);
                // Not beyond both the clock and the newest position handed out (after a clock
                // step back, offsets run ahead of the clock).
                let known = since.ms <= now || since <= last;
                (since >= floor && known, more)
            }
        };
        Ok(ReadResult {
            messages,
            recovered,
            last,
            more,
        })
    }

    async fn presence_join(
        &self,
        key: &ChannelKey,
        user_id: &str,
        session: &str,
    ) -> Result<bool, BrokerError> {
        let inner = &self.inner;
        let held = HeldSession {
            key: key.clone(),
            user: user_id.to_owned(),
            session: session.to_owned(),
        };
        // Held before the call, so a refresh running meanwhile keeps it too.
        inner.sessions.lock().insert(held.clone());
        let args = inner.script_args("join", [user_id.to_owned(), session.to_owned()]);
        match inner.eval(&inner.keys(key), args).await {
            Ok(first) => Ok(parse_u64(&first)? == 1),
            Err(e) => {
                inner.sessions.lock().remove(&held);
                Err(e)
            }
        }
    }

    async fn presence_leave(
        &self,
        key: &ChannelKey,
        user_id: &str,
        session: &str,
    ) -> Result<bool, BrokerError> {
        let inner = &self.inner;
        inner.sessions.lock().remove(&HeldSession {
            key: key.clone(),
            user: user_id.to_owned(),
            session: session.to_owned(),
        });
        let args = inner.script_args("leave", [user_id.to_owned(), session.to_owned()]);
        let last = inner.eval(&inner.keys(key), args).await?;
        Ok(parse_u64(&last)? == 1)
    }

    async fn presence(&self, key: &ChannelKey) -> Result<Vec<String>, BrokerError> {
        let inner = &self.inner;
        let reply = inner
            .eval(&inner.keys(key), inner.script_args("presence", []))
            .await?;
        let mut users = reply
            .into_array()
            .into_iter()
            .filter(|v| !v.is_null())
            .map(|v| v.as_string().ok_or_else(|| malformed("user id", &v)))
            .collect::<Result<Vec<_>, _>>()?;
        users.sort();
        Ok(users)
    }

    async fn mark_read(
        &self,
        key: &ChannelKey,
        user_id: &str,
        offset: Offset,
    ) -> Result<(Offset, u64), BrokerError> {
        let inner = &self.inner;
        let args = inner.script_args("mark", [user_id.to_owned(), offset.to_string()]);
        let reply = inner.eval(&inner.keys(key), args).await?;
        let [marker, unread] = reply_parts(reply, "mark")?;
        Ok((parse_offset(&marker)?, parse_u64(&unread)?))
    }

    async fn ban(&self, subject: &str, ttl: Duration) -> Result<(), BrokerError> {
        let inner = &self.inner;
        let ttl_ms = ttl.as_millis().min(u64::MAX as u128) as u64;
        let until = crate::now_ms().saturating_add(ttl_ms);
        let command =
            |name: &'static str| CustomCommand::new_static(name, ClusterHash::FirstKey, false);
        // GT: a longer ban already in place is kept. Score = expiry on the node's clock (node
        // clocks must agree anyway, see the publish deadline).
        let _: Value = inner
            .client
            .custom(
                command("ZADD"),
                vec![
                    inner.bans_key.clone(),
                    "GT".into(),
                    until.to_string(),
                    subject.to_owned(),
                ],
            )
            .await
            .map_err(|e| inner.error(&e))?;
        let _: Value = inner
            .client
            .custom(
                command("ZREMRANGEBYSCORE"),
                vec![
                    inner.bans_key.clone(),
                    "-inf".into(),
                    crate::now_ms().to_string(),
                ],
            )
            .await
            .map_err(|e| inner.error(&e))?;
        // The set lives as long as its longest ban could (bans are at most a week).
        let _: Value = inner
            .client
            .custom(
                command("PEXPIRE"),
                vec![
                    inner.bans_key.clone(),
                    (7 * 24 * 3600 * 1000u64).to_string(),
                ],
            )
            .await
            .map_err(|e| inner.error(&e))?;
        inner
            .publish_live(inner.bans_channel.clone(), format!("{ttl_ms} {subject}"))
            .await
            .map(|_| ())
            .map_err(|e| inner.error(&e))
    }

    async fn bans(&self) -> Result<Vec<(String, Duration)>, BrokerError> {
        let inner = &self.inner;
        let now = crate::now_ms();
        let reply: Value = inner
            .client
            .custom(
                CustomCommand::new_static("ZRANGEBYSCORE", ClusterHash::FirstKey, false),
                vec![
                    inner.bans_key.clone(),
                    format!("({now}"),
                    "+inf".into(),
                    "WITHSCORES".into(),
                ],
            )
            .await
            .map_err(|e| inner.error(&e))?;
        let items: Vec<Value> = match reply {
            Value::Array(items) => items,
            Value::Null => Vec::new(),
            other => return Err(malformed("ban list", &other)),
        };
        let mut bans = Vec::with_capacity(items.len() / 2);
        for pair in items.chunks(2) {
            let [subject, score] = pair else {
                return Err(malformed("ban list", &Value::Array(pair.to_vec())));
            };
            let subject = subject
                .as_string()
                .ok_or_else(|| malformed("ban subject", subject))?;
            let until = score
                .as_f64()
                .ok_or_else(|| malformed("ban expiry", score))? as u64;
            bans.push((subject, Duration::from_millis(until.saturating_sub(now))));
        }
        Ok(bans)
    }

    fn ban_feed(&self) -> Option<broadcast::Receiver<(String, Duration)>> {
        Some(self.inner.ban_tx.subscribe())
    }

    fn live_healthy(&self) -> bool {
        self.subscriber_healthy()
    }

    async fn unread(&self, key: &ChannelKey, user_id: &str) -> Result<u64, BrokerError> {
        let inner = &self.inner;
        let args = inner.script_args("unread", [user_id.to_owned()]);
        parse_u64(&inner.eval(&inner.keys(key), args).await?)
    }
}

#[cfg(test)]
mod tests {
    //! The pure parts: key layout, the live wire format, error mapping, config checks. Behaviour
    //! against a real server is in `tests/redis_broker.rs` and the conformance suite.

    use bellhop_protocol::{Channel, Priority, Role, Sender};

    use super::*;

    #[test]
    fn a_channels_keys_share_one_hash_tag() {
        let keys = ChannelKeys::new(
            "bh",
            false,
            &ChannelKey::new("h1", Channel::Room("101".into())),
        );
        assert_eq!(keys.log, "bh:{h1|room:101}:log");
        assert_eq!(keys.meta, "bh:{h1|room:101}:meta");
        assert_eq!(keys.read, "bh:{h1|room:101}:read");
        assert_eq!(keys.presence, "bh:{h1|room:101}:presence");
        assert_eq!(keys.users, "bh:{h1|room:101}:users");
        assert_eq!(keys.live, "bh:{h1|room:101}:live");
        assert_eq!(keys.origin, "bh:origin", "one server, one origin");
        assert_eq!(keys.idempotency("u1:k"), "bh:{h1|room:101}:idem:u1:k");
        let broadcast = ChannelKeys::new("x", true, &ChannelKey::new("h2", Channel::Broadcast));
        assert_eq!(broadcast.log, "x:{h2|broadcast}:log");
        // In a cluster, the slot's origin is on the channel's slot.
        assert_eq!(
            redis_keyslot(broadcast.origin.as_bytes()),
            redis_keyslot(broadcast.log.as_bytes())
        );
        assert!(broadcast.origin.starts_with("x:{") && broadcast.origin.ends_with("}:origin"));
    }

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        for slot in 0..CLUSTER_SLOTS as u16 {
            assert_eq!(redis_keyslot(slot_tag(slot).as_bytes()), slot);
        }
    }

    #[test]
    fn the_live_format_round_trips_and_matches_what_the_script_writes() {
        let envelope = Envelope {
            message_id: "m1".into(),
            event: "CHAT_MESSAGE".into(),
            namespace: "h1".into(),
            channel: Channel::Room("101".into()),
            payload: serde_json::json!({"text": "hi"}),
            timestamp: "2026-01-01T00:00:00.000Z".into(),
            sender: Sender {
                id: "u1".into(),
                role: Role::Staff,
            },
            priority: Priority::Normal,
            correlation_id: None,
        };
        // Exactly the concatenation in the script's publish.
        let json = serde_json::to_string(&envelope).unwrap();
        let wire = format!(r#"{{"k":"m","o":"1700000000000-3","s":42,"e":{json}}}"#);
        match serde_json::from_str::<Live>(&wire).unwrap() {
            Live::Message { o, s, e } => {
                assert_eq!(o, Offset::new(1_700_000_000_000, 3));
                assert_eq!(s, 42);
                assert_eq!(*e, envelope);
            }
            other => panic!("decoded {other:?}"),
        }
        let typing = serde_json::to_string(&Live::Typing { u: "u2".into() }).unwrap();
        assert_eq!(typing, r#"{"k":"typing","u":"u2"}"#);
    }

    #[test]
    fn client_errors_are_printed_in_words() {
        let refused = FredError::new(
            ErrorKind::IO,
            r#"Os { code: 111, kind: ConnectionRefused, message: "Connection refused" }"#,
        );
        assert_eq!(
            in_words(&refused),
            "cannot reach Redis: Connection refused (os error 111)"
        );
        let closed = FredError::new(ErrorKind::IO, "Connection closed.");
        assert_eq!(in_words(&closed), "cannot reach Redis: Connection closed");
        let timeout = in_words(&FredError::new(ErrorKind::Timeout, "Request timed out."));
        assert!(
            timeout.starts_with("no reply within the command timeout"),
            "{timeout}"
        );
        assert!(!timeout.contains("Request timed out"), "{timeout}");
        let reply = FredError::new(ErrorKind::Unknown, "ERR syntax error");
        assert!(in_words(&reply).contains("ERR syntax error"));
    }

    #[test]
    fn connection_trouble_is_unavailable_and_the_rest_internal() {
        let retry = Duration::from_secs(1);
        for error in [
            FredError::new(ErrorKind::IO, "broken pipe"),
            FredError::new(ErrorKind::Timeout, "timed out"),
            FredError::new(ErrorKind::Unknown, "LOADING Redis is loading the dataset"),
            FredError::new(ErrorKind::Unknown, "BUSY Redis is busy running a script"),
        ] {
            assert!(
                matches!(broker_error(&error, retry), BrokerError::Unavailable { retry_after, .. } if retry_after == retry),
                "{error:?}"
            );
        }
        for error in [
            FredError::new(ErrorKind::Unknown, "ERR syntax error"),
            FredError::new(ErrorKind::Auth, "WRONGPASS"),
        ] {
            assert!(
                matches!(broker_error(&error, retry), BrokerError::Internal(_)),
                "{error:?}"
            );
        }
    }

    #[test]
    fn settings_are_checked_and_passwords_never_printed() {
        assert!(RedisConfig::default().validate().is_ok());
        let with = |f: fn(&mut RedisConfig)| {
            let mut config = RedisConfig::default();
            f(&mut config);
            config.validate()
        };
        assert!(with(|c| c.url = "rediss://h:6380".into()).is_ok());
        assert!(with(|c| c.url = "redis-sentinel://h:26379".into())
            .unwrap_err()
            .contains("REDIS_URL"));
        assert!(with(|c| c.tls_ca_path = Some("/ca.pem".into()))
            .unwrap_err()
            .contains("REDIS_TLS_CA_PATH"));
        assert!(with(|c| c.key_prefix = "b{h}".into()).is_err());
        assert!(with(|c| c.presence_refresh = c.presence_ttl).is_err());
        assert!(with(|c| c.max_messages_per_channel = 0).is_err());
        assert!(with(|c| c.idempotency_window = Duration::ZERO).is_err());
        assert!(with(|c| c.retention = Duration::ZERO)
            .unwrap_err()
            .contains("MESSAGE_RETENTION_HOURS"));

        let config = RedisConfig {
            url: "redis://app:s3cret@redis:6379/0".into(),
            ..RedisConfig::default()
        };
        let printed = format!("{config:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("redis://***@redis:6379/0"), "{printed}");
    }
}
