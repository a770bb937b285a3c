//! Validation of client input beyond its shape: event names, text length, correlation ids and
//! history limits. Pure functions; the gateway maps their errors to wire error codes.

use serde_json::Value;

use crate::{ErrorCode, PublishFrame};

/// Limits on what a client may send. Defaults are those of protocol v1.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Longest string anywhere in a payload, in characters (10,000).
    pub max_text_chars: usize,
    /// Longest event name (64).
    pub max_event_len: usize,
    /// Longest correlation id (128).
    pub max_correlation_id_len: usize,
    /// Most messages one `history` request may return (100).
    pub max_history_limit: u32,
    /// Messages a `history` request returns when it names no limit (50).
    pub default_history_limit: u32,
    /// Largest payload of a stored message, in bytes, in each of its encodings (JSON and
    /// MessagePack), whatever codec it arrived in (64 KiB, the frame limit). A MessagePack
    /// string of control characters grows sixfold as JSON, so the check is on the encodings a
    /// reader will receive, not on the frame that brought it.
    pub max_payload_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_chars: 10_000,
            max_event_len: 64,
            max_correlation_id_len: 128,
            max_history_limit: 100,
            default_history_limit: 50,
            max_payload_bytes: 64 * 1024,
        }
    }
}

/// Why a request's content was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    /// Event names are `UPPER_SNAKE`: `[A-Z][A-Z0-9_]*`.
    #[error(
        "invalid event {0:?}: events are UPPER_SNAKE, [A-Z][A-Z0-9_]*, at most {1} characters"
    )]
    Event(String, usize),
    /// A string in the payload is longer than the text limit.
    #[error("payload text is {chars} characters long; the limit is {limit}")]
    TextTooLong {
        /// Length of the offending string.
        chars: usize,
        /// The limit.
        limit: usize,
    },
    /// The correlation id is empty, too long or has control characters.
    #[error("invalid correlationId: 1 to {0} printable characters")]
    CorrelationId(usize),
    /// A history limit outside `1..=max`.
    #[error("limit must be between 1 and {0}")]
    HistoryLimit(u32),
    /// An idempotency key that is empty, too long or has characters outside the set.
    #[error("invalid idempotencyKey: 1 to 64 characters of [A-Za-z0-9_.:-]")]
    IdempotencyKey,
    /// The payload's encoding is over the message size limit.
    #[error(
        "payload is {bytes} bytes once encoded as {codec}; a stored message may be at most {limit} bytes in every encoding"
    )]
    PayloadTooLarge {
        /// The size of its largest encoding.
        bytes: usize,
        /// Which encoding that is (`JSON` or `MessagePack`).
        codec: &'static str,
        /// The limit.
        limit: usize,
    },
}

impl ValidationError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ValidationError::TextTooLong { .. } | ValidationError::PayloadTooLarge { .. } => {
                ErrorCode::TooLarge
            }
            _ => ErrorCode::BadRequest,
        }
    }
}

/// Checks an event name.
pub fn event(name: &str, limits: &Limits) -> Result<(), ValidationError> {
    let mut bytes = name.bytes();
    let ok = name.len() <= limits.max_event_len
        && bytes.next().is_some_and(|b| b.is_ascii_uppercase())
        && bytes.all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(ValidationError::Event(
            name.chars().take(80).collect(),
            limits.max_event_len,
        ))
    }
}

/// Checks that no string in `payload` (keys included) exceeds the text limit.
pub fn payload(payload: &Value, limits: &Limits) -> Result<(), ValidationError> {
    let check = |s: &str| {
        // Byte length bounds char count from above: skip the count for short strings.
        if s.len() <= limits.max_text_chars {
            return Ok(());
        }
        let chars = s.chars().count();
        if chars > limits.max_text_chars {
            Err(ValidationError::TextTooLong {
                chars,
                limit: limits.max_text_chars,
            })
        } else {
            Ok(())
        }
    };
    match payload {
        Value::String(s) => check(s),
        Value::Array(items) => items.iter().try_for_each(|v| self::payload(v, limits)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            check(k)?;
            self::payload(v, limits)
        }),
        _ => Ok(()),
    }
}

/// Checks everything in a publish that its shape does not already guarantee.
pub fn publish(frame: &PublishFrame, limits: &Limits) -> Result<(), ValidationError> {
    event(&frame.event, limits)?;
    if let Some(c) = &frame.correlation_id {
        if c.is_empty()
            || c.chars().count() > limits.max_correlation_id_len
            || c.chars().any(char::is_control)
        {
            return Err(ValidationError::CorrelationId(
                limits.max_correlation_id_len,
            ));
        }
    }
    if let Some(key) = &frame.idempotency_key {
        idempotency_key(key)?;
    }
    payload(&frame.payload, limits)?;
    payload_size(&frame.payload, limits)
}

/// Checks an idempotency key: 1 to 64 characters of `[A-Za-z0-9_.:-]`.
pub fn idempotency_key(key: &str) -> Result<(), ValidationError> {
    let ok = (1..=64).contains(&key.len())
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b':' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ValidationError::IdempotencyKey)
    }
}

/// Counts bytes written, to size an encoding without building it.
#[derive(Default)]
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The sizes in bytes of `value` encoded as JSON and as MessagePack (as the node encodes it for
/// clients), computed without allocating the encodings.
pub fn encoded_sizes<T: serde::Serialize>(value: &T) -> (usize, usize) {
    let mut json = Counter::default();
    let _ = serde_json::to_writer(&mut json, value);
    let mut msgpack = Counter::default();
    let _ = value.serialize(&mut rmp_serde::Serializer::new(&mut msgpack).with_struct_map());
    (json.0, msgpack.0)
}

/// Checks that the payload fits the message size limit in its largest encoding.
pub fn payload_size(payload: &Value, limits: &Limits) -> Result<(), ValidationError> {
    let (json, msgpack) = encoded_sizes(payload);
    let (bytes, codec) = if json >= msgpack {
        (json, "JSON")
    } else {
        (msgpack, "MessagePack")
    };
    if bytes > limits.max_payload_bytes {
        return Err(ValidationError::PayloadTooLarge {
            bytes,
            codec,
            limit: limits.max_payload_bytes,
        });
    }
    Ok(())
}

/// The number of messages a `history` request asks for, after defaults.
pub fn history_limit(limit: Option<u32>, limits: &Limits) -> Result<usize, ValidationError> {
    match limit {
        None => Ok(limits.default_history_limit as usize),
        Some(n) if (1..=limits.max_history_limit).contains(&n) => Ok(n as usize),
        Some(_) => Err(ValidationError::HistoryLimit(limits.max_history_limit)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn event_names_are_upper_snake() {
        let l = Limits::default();
        for ok in ["SERVICE_REQUEST", "A", "X1_2"] {
            assert!(event(ok, &l).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "service_request",
            "_X",
            "1X",
            "X-Y",
            "X Y",
            &"X".repeat(65),
        ] {
            assert!(event(bad, &l).is_err(), "{bad}");
        }
    }

    #[test]
    fn text_longer_than_ten_thousand_characters_is_too_large() {
        let l = Limits::default();
        let ok = "é".repeat(10_000); // 20,000 bytes but 10,000 characters
        assert!(payload(&json!({"text": ok}), &l).is_ok());
        let err = payload(&json!({"a": [1, {"text": "x".repeat(10_001)}]}), &l).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TooLarge);
    }

    #[test]
    fn a_payload_is_measured_in_its_largest_encoding_not_the_one_it_came_in() {
        let l = Limits {
            max_payload_bytes: 6_000,
            ..Limits::default()
        };
        // 1,200 control characters: 1.2 KB as MessagePack, 7.2 KB as JSON ("\u0001" each).
        let control = json!({"t": "\u{1}".repeat(1_200)});
        let err = payload_size(&control, &l).unwrap_err();
        assert_eq!(err.code(), ErrorCode::TooLarge);
        assert!(err.to_string().contains("JSON"), "{err}");
        // Small floats: 4 bytes each as JSON ("0.1,"), 9 as MessagePack (a float64).
        let floats = json!(vec![0.1; 1_000]);
        let err = payload_size(&floats, &l).unwrap_err();
        assert!(err.to_string().contains("MessagePack"), "{err}");
        assert!(payload_size(&json!({"t": "x".repeat(5_000)}), &l).is_ok());
    }

    #[test]
    fn idempotency_keys_are_short_and_plain() {
        for ok in ["a", "req-1", "u1:2026-12-01T10:00:00.000Z", &"k".repeat(64)] {
            assert!(idempotency_key(ok).is_ok(), "{ok}");
        }
        for bad in ["", &"k".repeat(65), "a b", "ключ", "a/b", "a\n"] {
            assert!(idempotency_key(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn history_limits_default_and_bound() {
        let l = Limits::default();
        assert_eq!(history_limit(None, &l), Ok(50));
        assert_eq!(history_limit(Some(100), &l), Ok(100));
        assert!(history_limit(Some(0), &l).is_err());
        assert!(history_limit(Some(101), &l).is_err());
    }
}
