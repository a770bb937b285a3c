//! Calls of the channel script: the script itself ([`SCRIPT`], `channel.lua`), its `ARGV`, and
//! running it once or in one pipeline of `EVALSHA`s, loading it again when the server lost it
//! (`NOSCRIPT`). What the replies mean is [`replies`](super::replies)' job.
//!
//! # What the script does
//!
//! Every operation is one call of one Lua script ([`SCRIPT`], in `channel.lua`, loaded once with
//! `SCRIPT LOAD`, called with `EVALSHA`, reloaded on `NOSCRIPT`), so it is atomic and one round
//! trip. Time is the server's (`TIME`), never a node's, so nodes with skewed clocks still agree.
//! A publish:
//!
//! 0. with an idempotency key: if `idem:<key>` exists, returns the original's offset and message
//!    id and does nothing else (no entry, no live event);
//! 1. computes the offset like [`Offset::next_after`](bellhop_protocol::Offset::next_after): the server's millisecond, or one past
//!    `meta.last` when the clock has not moved past it (it stepped back), so offsets strictly
//!    increase (and a position a read handed out for an empty channel is below it, see
//!    "Reads and recovery" in [`super`]);
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

use std::time::Duration;

use fred::prelude::{ClientLike, Error as FredError, ErrorKind, LuaInterface, Value};
use fred::types::{ClusterHash, CustomCommand};
use fred::util::redis_keyslot;

use super::keys::{origin_key, ChannelKeys, CLUSTER_SLOTS};
use super::Inner;
use crate::broker::BrokerError;

/// The channel script (`channel.lua`); see the module docs and [`keys`](super::keys). `KEYS`:
/// log, meta, read markers, presence sessions, presence users, the slot's (or server's) origin,
/// and for an idempotent publish its result's key. `ARGV`: operation, retention (ms), presence TTL (ms), then the
/// operation's arguments.
pub(super) const SCRIPT: &str = include_str!("channel.lua");

/// Whether the server answered that it does not know the script (its script cache was lost).
fn is_noscript(error: &FredError) -> bool {
    error.details().starts_with("NOSCRIPT")
}

/// The script's arguments that are the same for every call, as the values sent, made once when
/// the broker connects: a call clones them by reference count instead of formatting them anew.
#[derive(Debug)]
pub(super) struct ScriptConstants {
    /// The script's SHA1, as `SCRIPT LOAD` returned it.
    sha: Value,
    /// The retention and the presence TTL in milliseconds: `ARGV[2]` and `ARGV[3]` of every call.
    windows: [Value; 2],
    /// `PUBLISH` or `SPUBLISH` (in a cluster): how a publish announces its message.
    pub(super) announce: Value,
    /// The most messages a channel keeps.
    pub(super) max_len: Value,
    /// The idempotency window in milliseconds.
    pub(super) idempotency_window: Value,
}

impl ScriptConstants {
    pub(super) fn new(sha: String, config: &super::RedisConfig) -> Self {
        let ms = |d: Duration| Value::from(d.as_millis().min(u64::MAX as u128).to_string());
        ScriptConstants {
            sha: sha.into(),
            windows: [ms(config.retention), ms(config.presence_ttl)],
            announce: Value::from_static_str(if config.cluster {
                "SPUBLISH"
            } else {
                "PUBLISH"
            }),
            max_len: config.max_messages_per_channel.to_string().into(),
            idempotency_window: ms(config.idempotency_window.max(Duration::from_millis(1))),
        }
    }
}

/// One call of the script, as sent: `EVALSHA`'s arguments and the slot of its first key.
struct Prepared {
    slot: u16,
    argv: Vec<Value>,
}

impl Inner {
    /// The script's `ARGV`: the operation, the two windows, then `args`.
    pub(super) fn script_args<const N: usize>(
        &self,
        op: &'static str,
        args: [Value; N],
    ) -> Vec<Value> {
        let mut argv = Vec::with_capacity(3 + N);
        argv.push(Value::from_static_str(op));
        argv.extend(self.script.windows.iter().cloned());
        argv.extend(args);
        argv
    }

    /// Runs the channel script once per call, in one pipeline, answering in call order. On
    /// `NOSCRIPT` (the server lost its script cache) the script is loaded again and the calls
    /// that failed are sent once more.
    pub(super) async fn eval_many(
        &self,
        calls: Vec<(Vec<String>, Vec<Value>)>,
    ) -> Vec<Result<Value, BrokerError>> {
        let calls: Vec<Prepared> = calls
            .into_iter()
            .map(|(keys, args)| self.prepare(keys, args))
            .collect();
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
                    let again: Vec<Prepared> = retry
                        .iter()
                        .map(|&i| Prepared {
                            slot: calls[i].slot,
                            argv: calls[i].argv.clone(),
                        })
                        .collect();
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

    /// `EVALSHA`'s arguments for one call: the keys and arguments move in, nothing is copied.
    fn prepare(&self, keys: Vec<String>, args: Vec<Value>) -> Prepared {
        // In a cluster the call goes to the slot of its first key.
        let slot = keys.first().map_or(0, |key| redis_keyslot(key.as_bytes()));
        let mut argv = Vec::with_capacity(2 + keys.len() + args.len());
        argv.push(self.script.sha.clone());
        argv.push(Value::Integer(keys.len() as i64));
        argv.extend(keys.into_iter().map(Value::from));
        argv.extend(args);
        Prepared { slot, argv }
    }

    /// One pipeline of `EVALSHA`s; exactly one reply per call.
    async fn pipeline(&self, calls: &[Prepared]) -> Vec<Result<Value, FredError>> {
        // fred's pipelines have no Lua interface: EVALSHA as a custom command, routed (in a
        // cluster) to the slot of its first key. fred honours only an explicit slot on a custom
        // command (otherwise it hashes the first argument, the SHA), so the slot is computed
        // when the call is prepared. The arguments are cloned by reference count.
        let pipeline = self.client.pipeline();
        for call in calls {
            let evalsha =
                CustomCommand::new_static("EVALSHA", ClusterHash::Custom(call.slot), false);
            let queued: Result<(), FredError> = pipeline.custom(evalsha, call.argv.clone()).await;
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

    /// Runs the channel script once, on `keys`' channel.
    pub(super) async fn eval(
        &self,
        keys: &ChannelKeys,
        args: Vec<Value>,
    ) -> Result<Value, BrokerError> {
        self.eval_many(vec![(keys.script_keys(), args)])
            .await
            .pop()
            .unwrap_or_else(|| Err(BrokerError::Internal("redis: no script reply".into())))
    }

    /// Sets the origin of the server (in a cluster: of every slot) where it is missing, to just
    /// below the server's now. Runs at connect, so that a channel first read and later published
    /// to starts its history before the position the read handed out; a publish sets its slot's
    /// origin again if the server lost it meanwhile.
    pub(super) async fn ensure_origins(&self) -> Result<(), BrokerError> {
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
}
