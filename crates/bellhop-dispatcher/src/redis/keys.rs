//! The Redis key layout: the names of every key and pub/sub channel of one channel
//! ([`ChannelKeys`]), all under the channel's hash tag, and the per-slot origin keys. Pure: no
//! connection, no IO.
//!
//! # Layout
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
//! | `bh:{h1\|room:101}:live` | pub/sub channel | live events (see `subscriber`) |
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

use fred::util::redis_keyslot;

use crate::broker::ChannelKey;

/// The names of one channel's keys and live channel (see the module docs).
#[derive(Clone, Debug)]
pub(super) struct ChannelKeys {
    /// The stream of messages.
    pub(super) log: String,
    /// `seq`, `last`, `origin`.
    pub(super) meta: String,
    /// Read markers.
    pub(super) read: String,
    /// Present sessions by expiry.
    pub(super) presence: String,
    /// Present users and their session counts.
    pub(super) users: String,
    /// The pub/sub channel of live events.
    pub(super) live: String,
    /// What every idempotency key's name starts with (`<base>:idem:`).
    idem_prefix: String,
    /// Where the data of the channel's slot (in a cluster) or of the server starts.
    pub(super) origin: String,
}

/// The origin key of a server (`<prefix>:origin`) or, in a cluster, of one slot
/// (`<prefix>:{<tag>}:origin`, with a tag that hashes to that slot, so the channel script of any
/// channel on the slot may read and write it).
pub(super) fn origin_key(prefix: &str, cluster: bool, slot: u16) -> String {
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
pub(super) const CLUSTER_SLOTS: usize = 16_384;

impl ChannelKeys {
    pub(super) fn new(prefix: &str, cluster: bool, key: &ChannelKey) -> Self {
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
    pub(super) fn idempotency(&self, key: &str) -> String {
        format!("{}{key}", self.idem_prefix)
    }

    /// `KEYS` of the channel script, in its order.
    pub(super) fn script_keys(&self) -> Vec<String> {
        vec![
            self.log.clone(),
            self.meta.clone(),
            self.read.clone(),
            self.presence.clone(),
            self.users.clone(),
            self.origin.clone(),
        ]
    }

    /// [`Self::script_keys`], moved out rather than copied.
    pub(super) fn into_script_keys(self) -> Vec<String> {
        vec![
            self.log,
            self.meta,
            self.read,
            self.presence,
            self.users,
            self.origin,
        ]
    }
}

/// This broker's own pub/sub channel, where its subscriber probe goes round
/// (`<prefix>:probe:<client id>`).
pub(super) fn probe_channel(prefix: &str, client_id: &str) -> String {
    format!("{prefix}:probe:{client_id}")
}

/// The key of the client bans every node enforces (`<prefix>:{bans}`, a sorted set of subjects
/// scored by expiry) and the pub/sub channel bans are announced on (`<prefix>:{bans}:live`).
pub(super) fn bans_keys(prefix: &str) -> (String, String) {
    let key = format!("{prefix}:{{bans}}");
    let channel = format!("{key}:live");
    (key, channel)
}

#[cfg(test)]
mod tests {
    use bellhop_protocol::Channel;

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

    /// Every key and the live channel of one channel, in both modes.
    fn all_keys(keys: &ChannelKeys) -> Vec<String> {
        let mut all = keys.script_keys();
        all.retain(|k| *k != keys.origin);
        all.push(keys.live.clone());
        all.push(keys.idempotency("u1:retry-7"));
        all
    }

    #[test]
    fn every_key_of_a_channel_has_the_channels_hash_tag_and_slot() {
        for channel in [
            Channel::Room("101".into()),
            Channel::Dept("front-desk".into()),
            Channel::User("u1".into()),
            Channel::Broadcast,
        ] {
            for cluster in [false, true] {
                let key = ChannelKey::new("h1", channel.clone());
                let keys = ChannelKeys::new("bh", cluster, &key);
                let tag = format!("{{h1|{channel}}}");
                let slot = redis_keyslot(tag.trim_matches(['{', '}']).as_bytes());
                for name in all_keys(&keys) {
                    assert!(name.starts_with(&format!("bh:{tag}:")), "{name}");
                    // Only the first `{...}` counts for the slot: exactly one tag per name.
                    assert_eq!(name.matches('{').count(), 1, "{name}");
                    assert_eq!(redis_keyslot(name.as_bytes()), slot, "{name}");
                }
                if cluster {
                    assert_eq!(redis_keyslot(keys.origin.as_bytes()), slot);
                }
            }
        }
        // The same channel of two properties: two tags, nothing shared.
        let a = ChannelKeys::new("bh", false, &ChannelKey::new("h1", Channel::Broadcast));
        let b = ChannelKeys::new("bh", false, &ChannelKey::new("h2", Channel::Broadcast));
        assert_ne!(a.log, b.log);
        assert_ne!(a.live, b.live);
    }

    #[test]
    fn the_prefix_starts_every_name_and_separates_deployments() {
        let key = ChannelKey::new("h1", Channel::Room("101".into()));
        for prefix in ["bh", "staging-eu", "a:b"] {
            for cluster in [false, true] {
                let keys = ChannelKeys::new(prefix, cluster, &key);
                let mut names = all_keys(&keys);
                names.push(keys.origin.clone());
                names.push(probe_channel(prefix, "client-1"));
                let (bans_key, bans_channel) = bans_keys(prefix);
                names.push(bans_key);
                names.push(bans_channel);
                for name in names {
                    let rest = name
                        .strip_prefix(prefix)
                        .unwrap_or_else(|| panic!("{name}"));
                    assert!(rest.starts_with(':'), "{name}");
                }
            }
        }
        let (one, other) = (
            ChannelKeys::new("one", false, &key),
            ChannelKeys::new("other", false, &key),
        );
        assert_ne!(one.log, other.log);
        assert_ne!(one.origin, other.origin);
        assert_eq!(probe_channel("bh", "c9"), "bh:probe:c9");
        assert_eq!(
            bans_keys("bh"),
            ("bh:{bans}".to_owned(), "bh:{bans}:live".to_owned())
        );
    }
}
