//! Offsets: the position of a message in its channel's log, in the same `<ms>-<seq>` form as a
//! Redis stream ID, so the embedded broker and the Redis backend hand out the same kind of value.

use std::fmt;
use std::str::FromStr;

/// Position of a message in a channel: milliseconds since the Unix epoch when it was stored, and a
/// sequence number that orders messages stored in the same millisecond. Ordered like stream IDs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Offset {
    /// Milliseconds since the Unix epoch at which the broker stored the message.
    pub ms: u64,
    /// Tie-breaker among messages stored in the same millisecond.
    pub seq: u64,
}

/// An offset string that is not `<ms>-<seq>`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid offset {0:?}: expected <ms>-<seq>, e.g. \"1732350000000-0\"")]
pub struct OffsetError(String);

impl Offset {
    /// The offset before every message: subscribing `since` it replays all that is retained.
    pub const ZERO: Offset = Offset { ms: 0, seq: 0 };

    /// Builds an offset from its two parts.
    pub const fn new(ms: u64, seq: u64) -> Self {
        Offset { ms, seq }
    }

    /// The next offset a log may hand out after `self`, at wall-clock time `now_ms`; like Redis'
    /// `XADD *`, a clock that goes backwards never produces a smaller offset.
    pub fn next_after(self, now_ms: u64) -> Offset {
        if now_ms > self.ms {
            Offset::new(now_ms, 0)
        } else {
            Offset::new(self.ms, self.seq.saturating_add(1))
        }
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.ms, self.seq)
    }
}

impl FromStr for Offset {
    type Err = OffsetError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || OffsetError(s.chars().take(40).collect());
        let (ms, seq) = s.split_once('-').ok_or_else(err)?;
        let digits =
            |p: &str| !p.is_empty() && p.len() <= 20 && p.bytes().all(|b| b.is_ascii_digit());
        if !digits(ms) || !digits(seq) {
            return Err(err());
        }
        Ok(Offset::new(
            ms.parse().map_err(|_| err())?,
            seq.parse().map_err(|_| err())?,
        ))
    }
}

serde_as_text!(Offset);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_orders_like_stream_ids() {
        let a: Offset = "1732350000000-0".parse().unwrap();
        let b: Offset = "1732350000000-1".parse().unwrap();
        let c: Offset = "1732350000001-0".parse().unwrap();
        assert!(a < b && b < c);
        assert_eq!(b.to_string(), "1732350000000-1");
        for bad in [
            "",
            "-",
            "1-",
            "-1",
            "1",
            "a-1",
            "1-1-1",
            "+1-1",
            "99999999999999999999999-0",
        ] {
            assert!(bad.parse::<Offset>().is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn next_after_is_monotonic_even_when_the_clock_goes_back() {
        let o = Offset::new(100, 5);
        assert_eq!(o.next_after(101), Offset::new(101, 0));
        assert_eq!(o.next_after(100), Offset::new(100, 6));
        assert_eq!(o.next_after(50), Offset::new(100, 6));
    }
}
