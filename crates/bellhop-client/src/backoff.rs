//! Reconnect timing and what a close code means for the client (docs/PROTOCOL.md §13).
//!
//! Full jitter is written here rather than taken from `backon` or `backoff`: `backon`'s jitter
//! adds `[0, delay)` to the exponential delay (delays in `[d, 2d)`: every client of a failed node
//! still waits at least `d` and they arrive in a band), and `backoff` is unmaintained
//! (RUSTSEC-2025-0012). Full jitter, a delay drawn from `[0, min(cap, base * 2^attempt))`, is
//! what spreads a crowd of clients over the whole window; it is one line over `rand`.

use std::time::Duration;

use bellhop_protocol::close;
use rand::Rng;

/// Reconnect timing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The ceiling of the first delay (default 500 ms).
    pub base: Duration,
    /// The largest ceiling (default 20 s).
    pub cap: Duration,
    /// After a `1012` (drain), reconnect within `[0, drain_jitter)` (default 1 s).
    pub drain_jitter: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(20),
            drain_jitter: Duration::from_secs(1),
        }
    }
}

impl Backoff {
    /// The ceiling of the delay after `attempt` failed attempts: `min(cap, base * 2^attempt)`.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let factor = 1u32 << attempt.min(30);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// A full-jitter delay: uniform in `[0, ceiling(attempt))`.
    pub fn delay(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        jitter(self.ceiling(attempt), rng)
    }

    /// A drain delay: uniform in `[0, drain_jitter)`.
    pub fn drain_delay(&self, rng: &mut impl Rng) -> Duration {
        jitter(self.drain_jitter, rng)
    }
}

fn jitter(ceiling: Duration, rng: &mut impl Rng) -> Duration {
    let ms = ceiling.as_millis().min(u128::from(u64::MAX)) as u64;
    if ms == 0 {
        return Duration::ZERO;
    }
    Duration::from_millis(rng.random_range(0..ms))
}

/// What to do after a connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Reconnect soon, within the drain jitter (`1012`: this node goes away, the others are fine).
    Drain,
    /// Reconnect after a backoff delay, and resume.
    Backoff,
    /// Get a fresh token, then reconnect (`4001`); with a fixed token, stop.
    NewToken,
    /// Stop: reconnecting would be refused again (`1008` policy) or break the protocol again
    /// (`1002`, `1007`, `1009`).
    Stop,
}

/// Reads a close code: `1012` drain, `4001` new token, `1008`/`1002`/`1007`/`1009` stop, anything
/// else (`1006` network or a killed node, `1011`, `4002` heartbeat, `4008` slow consumer, ...)
/// backoff and resume.
pub fn plan_after_close(code: u16) -> Plan {
    match code {
        close::RESTART => Plan::Drain,
        close::UNAUTHORIZED => Plan::NewToken,
        close::POLICY_VIOLATION
        | close::PROTOCOL_ERROR
        | close::INVALID_PAYLOAD
        | close::TOO_BIG => Plan::Stop,
        _ => Plan::Backoff,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn delays_are_full_jitter_under_a_doubling_ceiling() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(3), Duration::from_secs(4));
        assert_eq!(b.ceiling(10), Duration::from_secs(20));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(20));
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let delays: Vec<Duration> = (0..2000).map(|_| b.delay(2, &mut rng)).collect();
        assert!(delays.iter().all(|d| *d < Duration::from_secs(2)));
        // Spread over the whole window, not bunched at its top.
        assert!(delays.iter().any(|d| *d < Duration::from_millis(200)));
        assert!(delays.iter().any(|d| *d > Duration::from_millis(1800)));
    }

    #[test]
    fn close_codes_decide_the_plan() {
        assert_eq!(plan_after_close(1012), Plan::Drain);
        for code in [4008, 4002, 1006, 1011, 1013, 1000] {
            assert_eq!(plan_after_close(code), Plan::Backoff, "{code}");
        }
        assert_eq!(plan_after_close(4001), Plan::NewToken);
        for code in [1008, 1002, 1007, 1009] {
            assert_eq!(plan_after_close(code), Plan::Stop, "{code}");
        }
    }
}
