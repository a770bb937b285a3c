//! What the channel script's replies mean: pure functions from a reply [`Value`] to the broker's
//! types, for every operation. A reply of the wrong shape is a [`BrokerError::Internal`], never a
//! panic: the script and this file change together, and a mismatch must fail the call, not the
//! node.

use std::sync::Arc;

use bellhop_protocol::{Envelope, Offset};
use fred::prelude::Value;

use crate::broker::{BrokerError, Published, ReadResult, StoredMessage};

/// A reply that does not have the shape the script returns.
pub(super) fn malformed(what: &str, value: &Value) -> BrokerError {
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

pub(super) fn parse_u64(value: &Value) -> Result<u64, BrokerError> {
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
        json: Some(Arc::from(json.as_ref())),
    })
}

/// What a publish's script call answered.
#[derive(Debug, PartialEq)]
pub(super) enum PublishReply {
    /// Stored, or (with [`Published::duplicate`]) the original of a repeated idempotency key.
    Published(Published),
    /// The call reached Redis after its deadline and nothing was stored; Redis's clock then (ms),
    /// when the reply carries it.
    Expired {
        /// Redis's clock when it refused the publish.
        redis_ms: Option<u64>,
    },
}

/// A publish's reply: `[offset, seq]` when stored (the message id is the publish's own,
/// `message_id`), `["duplicate", offset, original message id]` for a repeated idempotency key,
/// `["expired", redis ms]` past the deadline.
pub(super) fn publish(reply: Value, message_id: String) -> Result<PublishReply, BrokerError> {
    let parts = reply.into_array();
    match parts.first().and_then(Value::as_str).as_deref() {
        Some("expired") => {
            let redis_ms = parts.get(1).map(parse_u64).transpose()?;
            Ok(PublishReply::Expired { redis_ms })
        }
        Some("duplicate") => {
            let [_, offset, original] = <[Value; 3]>::try_from(parts)
                .map_err(|_| BrokerError::Internal("redis: malformed duplicate reply".into()))?;
            Ok(PublishReply::Published(Published {
                offset: parse_offset(&offset)?,
                message_id: original
                    .as_string()
                    .ok_or_else(|| malformed("message id", &original))?,
                duplicate: true,
            }))
        }
        _ => {
            let [offset, _seq] = reply_parts(Value::Array(parts), "publish")?;
            Ok(PublishReply::Published(Published {
                offset: parse_offset(&offset)?,
                message_id,
                duplicate: false,
            }))
        }
    }
}

/// A read's reply, `[now (ms), floor, last, entries]`, for a read of at most `limit` messages
/// after `since` (the script returns one more, to tell `more`), or of the newest `limit`
/// (newest first) without `since`.
pub(super) fn read(
    reply: Value,
    since: Option<Offset>,
    limit: usize,
) -> Result<ReadResult, BrokerError> {
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

/// A presence reply: the present users, sorted.
pub(super) fn users(reply: Value) -> Result<Vec<String>, BrokerError> {
    let mut users = reply
        .into_array()
        .into_iter()
        .filter(|v| !v.is_null())
        .map(|v| v.as_string().ok_or_else(|| malformed("user id", &v)))
        .collect::<Result<Vec<_>, _>>()?;
    users.sort();
    Ok(users)
}

/// A join's or leave's reply: 1 when it was the user's first (or last) session, else 0.
pub(super) fn first_or_last(reply: &Value) -> Result<bool, BrokerError> {
    Ok(parse_u64(reply)? == 1)
}

/// A read marker's reply, `[marker, unread]`.
pub(super) fn mark(reply: Value) -> Result<(Offset, u64), BrokerError> {
    let [marker, unread] = reply_parts(reply, "mark")?;
    Ok((parse_offset(&marker)?, parse_u64(&unread)?))
}

#[cfg(test)]
mod tests {
    use super::super::test_envelope as envelope;
    use super::*;

    fn text(s: &str) -> Value {
        Value::from(s)
    }

    /// A stream entry as `XRANGE` returns it: `[id, [s, seq, e, json]]`.
    fn entry(offset: &str, seq: i64, id: &str) -> Value {
        let json = serde_json::to_string(&envelope(id)).unwrap();
        Value::Array(vec![
            text(offset),
            Value::Array(vec![text("s"), Value::Integer(seq), text("e"), text(&json)]),
        ])
    }

    fn is_internal<T: std::fmt::Debug>(result: Result<T, BrokerError>) -> bool {
        matches!(result, Err(BrokerError::Internal(_)))
    }

    #[test]
    fn a_stored_publish_gives_its_offset_and_the_publishs_own_id() {
        let reply = Value::Array(vec![text("1700000000000-3"), Value::Integer(42)]);
        assert_eq!(
            publish(reply, "m1".into()).unwrap(),
            PublishReply::Published(Published {
                offset: Offset::new(1_700_000_000_000, 3),
                message_id: "m1".into(),
                duplicate: false,
            })
        );
    }

    #[test]
    fn a_duplicate_gives_the_originals_offset_and_id() {
        let reply = Value::Array(vec![
            text("duplicate"),
            text("1700000000000-1"),
            text("original"),
        ]);
        assert_eq!(
            publish(reply, "retry".into()).unwrap(),
            PublishReply::Published(Published {
                offset: Offset::new(1_700_000_000_000, 1),
                message_id: "original".into(),
                duplicate: true,
            })
        );
        // Missing the original's id, or with a bad offset: an error, not the retry's id.
        for reply in [
            vec![text("duplicate"), text("1700000000000-1")],
            vec![text("duplicate"), text("yesterday"), text("original")],
            vec![
                text("duplicate"),
                text("1700000000000-1"),
                text("original"),
                text("extra"),
            ],
        ] {
            assert!(
                is_internal(publish(Value::Array(reply.clone()), "retry".into())),
                "{reply:?}"
            );
        }
    }

    #[test]
    fn an_expired_publish_carries_rediss_clock() {
        let reply = Value::Array(vec![text("expired"), Value::Integer(1_700_000_000_123)]);
        assert_eq!(
            publish(reply, "m1".into()).unwrap(),
            PublishReply::Expired {
                redis_ms: Some(1_700_000_000_123)
            }
        );
        let bare = Value::Array(vec![text("expired")]);
        assert_eq!(
            publish(bare, "m1".into()).unwrap(),
            PublishReply::Expired { redis_ms: None }
        );
        let bad = Value::Array(vec![text("expired"), text("noon")]);
        assert!(is_internal(publish(bad, "m1".into())));
    }

    #[test]
    fn malformed_replies_are_internal_errors_not_panics() {
        let shapes = [
            Value::Null,
            Value::Integer(7),
            text("1700000000000-3"),
            Value::Array(vec![]),
            Value::Array(vec![text("1700000000000-3")]),
            Value::Array(vec![text("not an offset"), Value::Integer(1)]),
            Value::Array(vec![
                Value::Integer(1),
                Value::Integer(2),
                Value::Integer(3),
            ]),
            Value::Array(vec![Value::Null, Value::Null]),
        ];
        for shape in shapes {
            assert!(
                is_internal(publish(shape.clone(), "m1".into())),
                "publish {shape:?}"
            );
            assert!(is_internal(read(shape.clone(), None, 10)), "read {shape:?}");
            assert!(is_internal(mark(shape.clone())), "mark {shape:?}");
        }
        assert!(is_internal(first_or_last(&text("yes"))));
        assert!(is_internal(users(Value::Array(vec![Value::Array(vec![])]))));
    }

    #[test]
    fn a_read_gives_messages_oldest_first_and_says_whether_it_recovered() {
        let reply = |entries: Vec<Value>| {
            Value::Array(vec![
                Value::Integer(1_700_000_010_000),
                text("1700000000000-0"),
                text("1700000000300-0"),
                Value::Array(entries),
            ])
        };
        // After `since`: oldest first, one more than the limit means `more`.
        let after = vec![
            entry("1700000000100-0", 1, "a"),
            entry("1700000000200-0", 2, "b"),
            entry("1700000000300-0", 3, "c"),
        ];
        let since = Offset::new(1_700_000_000_050, 0);
        let result = read(reply(after.clone()), Some(since), 2).unwrap();
        let ids: Vec<_> = result
            .messages
            .iter()
            .map(|m| &m.envelope.message_id)
            .collect();
        assert_eq!(ids, ["a", "b"]);
        assert_eq!(result.messages[0].offset, Offset::new(1_700_000_000_100, 0));
        assert!(result.recovered && result.more);
        assert_eq!(result.last, Offset::new(1_700_000_000_300, 0));
        // Below the floor: not recovered.
        let old = Offset::new(1_600_000_000_000, 0);
        assert!(!read(reply(after.clone()), Some(old), 10).unwrap().recovered);
        // Beyond both Redis's clock and the newest position: not known, so not recovered.
        let future = Offset::new(1_800_000_000_000, 0);
        assert!(!read(reply(vec![]), Some(future), 10).unwrap().recovered);
        // The newest `limit` come newest first from the script, and are turned round.
        let newest = vec![
            entry("1700000000300-0", 3, "c"),
            entry("1700000000200-0", 2, "b"),
        ];
        let result = read(reply(newest), None, 2).unwrap();
        let ids: Vec<_> = result
            .messages
            .iter()
            .map(|m| &m.envelope.message_id)
            .collect();
        assert_eq!(ids, ["b", "c"]);
        assert!(result.recovered && !result.more);
        assert_eq!(*result.messages[0].envelope, envelope("b"));
    }

    #[test]
    fn a_read_with_a_broken_entry_is_an_internal_error() {
        let reply = |entry: Value| {
            Value::Array(vec![
                Value::Integer(1_700_000_010_000),
                text("1700000000000-0"),
                text("1700000000300-0"),
                Value::Array(vec![entry]),
            ])
        };
        let no_envelope = Value::Array(vec![
            text("1700000000100-0"),
            Value::Array(vec![text("s"), Value::Integer(1)]),
        ]);
        let bad_envelope = Value::Array(vec![
            text("1700000000100-0"),
            Value::Array(vec![text("e"), text("{not json")]),
        ]);
        for broken in [
            no_envelope,
            bad_envelope,
            text("1700000000100-0"),
            Value::Integer(3),
        ] {
            assert!(
                is_internal(read(reply(broken.clone()), None, 10)),
                "{broken:?}"
            );
        }
    }

    #[test]
    fn presence_marks_and_counts_parse() {
        let present = Value::Array(vec![text("u2"), Value::Null, text("u1")]);
        assert_eq!(users(present).unwrap(), ["u1", "u2"]);
        assert_eq!(users(Value::Array(vec![])).unwrap(), Vec::<String>::new());
        assert!(first_or_last(&Value::Integer(1)).unwrap());
        assert!(!first_or_last(&Value::Integer(0)).unwrap());
        assert!(first_or_last(&text("1")).unwrap());
        let marked = Value::Array(vec![text("1700000000100-2"), Value::Integer(4)]);
        assert_eq!(
            mark(marked).unwrap(),
            (Offset::new(1_700_000_000_100, 2), 4)
        );
    }
}
