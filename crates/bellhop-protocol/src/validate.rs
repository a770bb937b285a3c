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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_text_chars: 10_000,
            max_event_len: 64,
            max_correlation_id_len: 128,
            max_history_limit: 100,
            default_history_limit: 50,
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
}

impl ValidationError {
    /// The wire error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ValidationError::TextTooLong { .. } => ErrorCode::TooLarge,
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
    payload(&frame.payload, limits)
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
    fn history_limits_default_and_bound() {
        let l = Limits::default();
        assert_eq!(history_limit(None, &l), Ok(50));
        assert_eq!(history_limit(Some(100), &l), Ok(100));
        assert!(history_limit(Some(0), &l).is_err());
        assert!(history_limit(Some(101), &l).is_err());
    }
}
