//! A rate for log lines ([`LogThrottle`]), so a flood of refusals shows in the log without the
//! log becoming the flood.

use std::time::Duration;

use parking_lot::Mutex;
use tokio::time::Instant;

/// Lets through at most `per_second` log lines a second and counts the others, so a flood of
/// refusals is visible in the log without the log becoming the flood. A fixed one-second window
/// over tokio's clock (so it is tested with paused time): the refusal log needs no more.
#[derive(Debug)]
pub(crate) struct LogThrottle {
    per_second: u32,
    /// (window start, lines in the window, lines suppressed since the last one let through).
    state: Mutex<(Instant, u32, u64)>,
}

impl LogThrottle {
    pub(crate) fn new(per_second: u32) -> Self {
        LogThrottle {
            per_second,
            state: Mutex::new((Instant::now(), 0, 0)),
        }
    }

    /// `Some(suppressed)` when a line may be written now (with how many were suppressed since
    /// the last one), `None` when this one is suppressed.
    pub(crate) fn admit(&self) -> Option<u64> {
        let now = Instant::now();
        let mut state = self.state.lock();
        let (start, lines, suppressed) = &mut *state;
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *lines = 0;
        }
        if *lines >= self.per_second {
            *suppressed += 1;
            return None;
        }
        *lines += 1;
        Some(std::mem::take(suppressed))
    }
}
