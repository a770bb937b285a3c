//! One connection's frame budget ([`FrameLimiter`]): a token bucket, and strikes that close a
//! connection which keeps sending over it.

use std::time::Duration;

use governor::clock::Clock;
use governor::DefaultDirectRateLimiter;
use tokio::time::Instant;

/// One connection's frame budget.
pub(crate) struct FrameLimiter {
    pub(super) limiter: DefaultDirectRateLimiter,
    pub(super) strikes: u32,
    pub(super) last_refusal: Option<Instant>,
    pub(super) strikes_before_close: u32,
}

/// What to do with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FrameVerdict {
    /// Process it.
    Allow,
    /// Refuse it with `rate_limited`; retry after this long.
    Refuse(Duration),
    /// Refuse it and close the connection: the client keeps flooding.
    Close,
}

impl FrameLimiter {
    pub(crate) fn check(&mut self) -> FrameVerdict {
        match self.limiter.check() {
            Ok(()) => FrameVerdict::Allow,
            Err(not_until) => {
                let now = Instant::now();
                if self
                    .last_refusal
                    .is_some_and(|last| now.duration_since(last) > Duration::from_secs(1))
                {
                    self.strikes = 0;
                }
                self.last_refusal = Some(now);
                self.strikes += 1;
                if self.strikes > self.strikes_before_close {
                    return FrameVerdict::Close;
                }
                let wait = not_until.wait_time_from(self.limiter.clock().now());
                FrameVerdict::Refuse(wait.max(Duration::from_millis(1)))
            }
        }
    }
}
