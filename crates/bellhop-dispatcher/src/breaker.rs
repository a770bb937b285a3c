//! The circuit breaker's state machine: a pure core that decides whether a call to a shared
//! dependency (Redis) may go out, and learns from how the calls went. It never does IO, never
//! sleeps and never reads a clock: every method that depends on time takes `now`, so a test drives
//! it with `tokio::time::pause()` or plain `Instant` arithmetic.
//!
//! # States
//!
//! ```text
//!            failure rate ≥ failure_rate over ≥ minimum_calls of the last `window` calls
//!   Closed ───────────────────────────────────────────────────────────────────────────▶ Open
//!     ▲                                                                                  │
//!     │ half_open_probes trial calls all succeeded            open_for has passed        │
//!     │                                                       (the next try_acquire)     ▼
//!     └──────────────────────────────────────────────── HalfOpen ◀──────────────────────┘
//!                                                           │  any trial call failed
//!                                                           └────────────────────────▶ Open
//! ```
//!
//! - **Closed**: every call is permitted; its outcome goes into a count-based window of the last
//!   `window` calls. After a failure, if the window holds at least `minimum_calls` outcomes and the
//!   share of failures is at least `failure_rate`, the breaker opens.
//! - **Open**: every call is refused with [`BreakerOpen`], which carries the time left until the
//!   breaker turns half-open (the `retryAfterMs` a client is told).
//! - **HalfOpen**: at most `half_open_probes` trial calls are permitted; when all of them
//!   succeed the breaker closes with an empty window, the first failure opens it again for another
//!   `open_for`. Calls beyond the trials are refused until they resolve.
//!
//! The window counts calls, not seconds: the dispatcher's worker makes one broker call at a time,
//! so a Redis that hangs produces one failure per call timeout (5 s), and a time window short
//! enough to forget old outcomes would never collect `minimum_calls` of them. The price is that a
//! quiet node remembers old outcomes; at a 50 % threshold, half of the last 20 calls failing is a
//! real signal however old, and the window is emptied whenever the breaker closes.
//!
//! A permit remembers the *generation* of the state it was issued in (every transition starts a
//! new one); an outcome recorded with a permit from an earlier generation is ignored, so a slow
//! call that started before the breaker opened cannot close or reopen it afterwards.
//!
//! # Why not `failsafe`
//!
//! The planned stack names the `failsafe` crate. Its `StateMachine` reads time from its own clock
//! (`std::time::Instant::now()`, with a thread-local mock only for its own tests), so it cannot be
//! driven by `tokio::time::pause()`; it exposes neither its state nor the time left in the open
//! state (only `is_call_permitted`, and `Instrument` callbacks without durations), which the
//! `retryAfterMs`, the state metric and `/readyz` need; its success-rate policy is an exponentially
//! weighted average over a time window rather than "50 % of at least 10 calls"; and its half-open
//! state lets every call through instead of a bounded number of trials. So this one is written
//! by hand, small and pure.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Settings of a circuit breaker. Defaults from the original service's spec (DESIGN §3.7).
#[derive(Clone, Debug, PartialEq)]
pub struct BreakerConfig {
    /// Longest a guarded call may take; a call that takes longer is abandoned and counts as a
    /// failure (5 s).
    pub call_timeout: Duration,
    /// Share of failed calls in the window at or above which the breaker opens, in (0, 1] (0.5).
    pub failure_rate: f64,
    /// Fewest calls in the window before the failure rate is judged at all (10), so a handful of
    /// early failures cannot open the breaker.
    pub minimum_calls: u32,
    /// How many of the most recent calls the failure rate is computed over (20); at least
    /// `minimum_calls`.
    pub window: u32,
    /// How long the breaker stays open before it lets trial calls through (30 s).
    pub open_for: Duration,
    /// Trial calls let through while half-open; all must succeed to close the breaker (1).
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            call_timeout: Duration::from_secs(5),
            failure_rate: 0.5,
            minimum_calls: 10,
            window: 20,
            open_for: Duration::from_secs(30),
            half_open_probes: 1,
        }
    }
}

impl BreakerConfig {
    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        if self.call_timeout.is_zero() {
            return Err("breaker call_timeout must be greater than zero".into());
        }
        if !(self.failure_rate > 0.0 && self.failure_rate <= 1.0) {
            return Err(format!(
                "breaker failure_rate must be in (0, 1]: {}",
                self.failure_rate
            ));
        }
        if self.minimum_calls == 0 {
            return Err("breaker minimum_calls must be at least 1".into());
        }
        if self.window < self.minimum_calls {
            return Err(format!(
                "breaker window ({}) must be at least minimum_calls ({})",
                self.window, self.minimum_calls
            ));
        }
        if self.open_for.is_zero() {
            return Err("breaker open_for must be greater than zero".into());
        }
        if self.half_open_probes == 0 {
            return Err("breaker half_open_probes must be at least 1".into());
        }
        Ok(())
    }
}

/// The breaker's state as reported to metrics and readiness.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BreakerState {
    /// Calls go out normally.
    Closed,
    /// Trial calls decide whether to close or reopen (also reported once the open period has
    /// passed, before the next call has actually been tried).
    HalfOpen,
    /// Calls are refused at once.
    Open,
}

impl BreakerState {
    /// The name used in `/readyz` and logs: `closed`, `half_open`, `open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// The value of the state gauge: 0 closed, 1 half-open, 2 open.
    pub fn as_gauge(self) -> i64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// How a permitted call went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The dependency answered.
    Success,
    /// The dependency was unreachable, refused to serve, or did not answer in time.
    Failure,
}

/// Permission for one call; hand it back to [`Breaker::record`] with the call's outcome.
#[derive(Debug)]
#[must_use = "record the call's outcome with Breaker::record"]
pub struct Permit {
    /// The generation of the state it was issued in.
    generation: u64,
}

/// A refused call: the breaker is open (or its half-open trials are all in flight).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("circuit breaker open; retry in {retry_after:?}")]
pub struct BreakerOpen {
    /// Time until the breaker lets a trial call through.
    pub retry_after: Duration,
}

/// Where the state machine is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Calls are permitted and judged in the window.
    Closed,
    /// Calls are refused until `until`.
    Open {
        /// When trial calls may start.
        until: Instant,
    },
    /// Trial calls decide.
    HalfOpen {
        /// Trial permits handed out.
        issued: u32,
        /// Trials that succeeded.
        succeeded: u32,
    },
}

/// A circuit breaker's state machine. Not synchronized: the owner puts it behind a lock and never
/// holds the lock across the guarded call.
#[derive(Debug)]
pub struct Breaker {
    /// Thresholds and durations (sanitized by [`Breaker::new`]).
    config: BreakerConfig,
    /// Where the machine is.
    state: State,
    /// Bumped on every transition; permits from earlier generations are ignored.
    generation: u64,
    /// Outcomes of the most recent calls while closed, oldest first; `true` is a failure.
    window: VecDeque<bool>,
    /// Failures in `window`, kept so judging is O(1).
    failures: u32,
}

impl Breaker {
    /// A closed breaker. Settings that [`BreakerConfig::validate`] would refuse are clamped to the
    /// nearest working value rather than panicking (validate to reject them instead).
    pub fn new(config: BreakerConfig) -> Self {
        let minimum_calls = config.minimum_calls.max(1);
        let failure_rate = if config.failure_rate.is_nan() {
            1.0
        } else {
            config.failure_rate.clamp(f64::MIN_POSITIVE, 1.0)
        };
        let config = BreakerConfig {
            failure_rate,
            minimum_calls,
            window: config.window.max(minimum_calls),
            half_open_probes: config.half_open_probes.max(1),
            ..config
        };
        Breaker {
            window: VecDeque::with_capacity(config.window as usize),
            config,
            state: State::Closed,
            generation: 0,
            failures: 0,
        }
    }

    /// The settings in force.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    /// The state at `now`. An open breaker whose open period has passed reports
    /// [`BreakerState::HalfOpen`]: its next call is a trial.
    pub fn state(&self, now: Instant) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { until } if now < until => BreakerState::Open,
            State::Open { .. } | State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Refuses at once while open, without taking a trial permit: for callers that will queue the
    /// call and acquire the permit later (the dispatcher's publish).
    pub fn check(&self, now: Instant) -> Result<(), BreakerOpen> {
        match self.state {
            State::Open { until } if now < until => Err(BreakerOpen {
                retry_after: until - now,
            }),
            _ => Ok(()),
        }
    }

    /// Asks to make one call now. Turns an open breaker whose time is up half-open.
    pub fn try_acquire(&mut self, now: Instant) -> Result<Permit, BreakerOpen> {
        match self.state {
            State::Closed => {}
            State::Open { until } if now < until => {
                return Err(BreakerOpen {
                    retry_after: until - now,
                })
            }
            State::Open { .. } => self.transition(State::HalfOpen {
                issued: 1,
                succeeded: 0,
            }),
            State::HalfOpen { issued, succeeded } => {
                if issued >= self.config.half_open_probes {
                    // The trials in flight resolve within the call timeout.
                    return Err(BreakerOpen {
                        retry_after: self.config.call_timeout,
                    });
                }
                self.state = State::HalfOpen {
                    issued: issued + 1,
                    succeeded,
                };
            }
        }
        Ok(Permit {
            generation: self.generation,
        })
    }

    /// Records how a permitted call went.
    pub fn record(&mut self, permit: Permit, outcome: Outcome, now: Instant) {
        if permit.generation != self.generation {
            return;
        }
        match (&mut self.state, outcome) {
            (State::Closed, _) => {
                if self.window.len() >= self.config.window as usize
                    && self.window.pop_front() == Some(true)
                {
                    self.failures -= 1;
                }
                let failed = outcome == Outcome::Failure;
                self.window.push_back(failed);
                self.failures += u32::from(failed);
                let calls = self.window.len() as u32;
                if failed
                    && calls >= self.config.minimum_calls
                    && f64::from(self.failures) >= self.config.failure_rate * f64::from(calls)
                {
                    self.open(now);
                }
            }
            (State::HalfOpen { .. }, Outcome::Failure) => self.open(now),
            (State::HalfOpen { succeeded, .. }, Outcome::Success) => {
                *succeeded += 1;
                if *succeeded >= self.config.half_open_probes {
                    self.transition(State::Closed);
                }
            }
            // Permits are never issued while open, and opening starts a new generation.
            (State::Open { .. }, _) => {}
        }
    }

    /// Counts a call that never went out because it waited past its deadline for its turn (the
    /// dispatcher's queue moves slower than its publishes may wait): a failure in the window, as
    /// a timed-out call would be, so a slow-but-answering dependency with a long queue opens the
    /// breaker. Only while closed: an open breaker refuses anyway, and while half-open the trial
    /// calls decide.
    pub fn record_expired(&mut self, now: Instant) {
        if self.state == State::Closed {
            let permit = Permit {
                generation: self.generation,
            };
            self.record(permit, Outcome::Failure, now);
        }
    }

    fn open(&mut self, now: Instant) {
        self.transition(State::Open {
            until: now + self.config.open_for,
        });
    }

    /// Moves to `state` with a fresh generation and an empty window.
    fn transition(&mut self, state: State) {
        self.state = state;
        self.generation += 1;
        self.window.clear();
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    fn breaker() -> Breaker {
        Breaker::new(BreakerConfig::default())
    }

    /// Makes one permitted call with `outcome`.
    fn call(b: &mut Breaker, outcome: Outcome, now: Instant) {
        let permit = b.try_acquire(now).expect("permitted");
        b.record(permit, outcome, now);
    }

    /// A breaker that has just opened at `now`.
    fn opened(now: Instant) -> Breaker {
        let mut b = breaker();
        for _ in 0..10 {
            call(&mut b, Outcome::Failure, now);
        }
        assert_eq!(b.state(now), BreakerState::Open);
        b
    }

    #[test]
    fn the_defaults_are_the_specs_and_validate() {
        let c = BreakerConfig::default();
        assert_eq!(c.call_timeout, 5 * SECOND);
        assert_eq!(c.failure_rate, 0.5);
        assert_eq!(c.minimum_calls, 10);
        assert_eq!(c.open_for, 30 * SECOND);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn validate_names_the_setting_it_refuses() {
        let bad = |f: fn(&mut BreakerConfig), word: &str| {
            let mut c = BreakerConfig::default();
            f(&mut c);
            let e = c.validate().expect_err("refused");
            assert!(e.contains(word), "{e}");
        };
        bad(|c| c.call_timeout = Duration::ZERO, "call_timeout");
        bad(|c| c.failure_rate = 0.0, "failure_rate");
        bad(|c| c.failure_rate = 1.5, "failure_rate");
        bad(|c| c.failure_rate = f64::NAN, "failure_rate");
        bad(|c| c.minimum_calls = 0, "minimum_calls");
        bad(|c| c.window = 5, "window");
        bad(|c| c.open_for = Duration::ZERO, "open_for");
        bad(|c| c.half_open_probes = 0, "half_open_probes");
    }

    #[tokio::test(start_paused = true)]
    async fn nine_failures_do_not_open_it_the_tenth_does() {
        let now = Instant::now();
        let mut b = breaker();
        for _ in 0..9 {
            call(&mut b, Outcome::Failure, now);
            assert_eq!(b.state(now), BreakerState::Closed);
        }
        call(&mut b, Outcome::Failure, now);
        assert_eq!(b.state(now), BreakerState::Open);
        assert_eq!(
            b.check(now),
            Err(BreakerOpen {
                retry_after: 30 * SECOND
            })
        );
    }

    #[tokio::test(start_paused = true)]
    async fn it_opens_at_half_failures_over_the_window_and_not_below() {
        let now = Instant::now();
        let mut b = breaker();
        // 20 successes fill the window; 9 failures make 9/20, still closed.
        for _ in 0..20 {
            call(&mut b, Outcome::Success, now);
        }
        for _ in 0..9 {
            call(&mut b, Outcome::Failure, now);
        }
        assert_eq!(b.state(now), BreakerState::Closed, "9 of 20 is under 50 %");
        // The tenth failure makes 10 of the last 20.
        call(&mut b, Outcome::Failure, now);
        assert_eq!(b.state(now), BreakerState::Open);

        // Alternating outcomes: 5 of 10 is 50 %, judged on the failure that reaches it.
        let mut b = breaker();
        for _ in 0..5 {
            call(&mut b, Outcome::Success, now);
            call(&mut b, Outcome::Failure, now);
        }
        assert_eq!(b.state(now), BreakerState::Open);

        // 4 failures among 10 calls (40 %) stay closed, and old outcomes leave the window.
        let mut b = breaker();
        for _ in 0..100 {
            for outcome in [Outcome::Failure, Outcome::Success, Outcome::Success] {
                call(&mut b, outcome, now);
            }
        }
        assert_eq!(b.state(now), BreakerState::Closed, "a third is under 50 %");
    }

    #[tokio::test(start_paused = true)]
    async fn open_fails_fast_with_the_time_left_until_half_open() {
        let start = Instant::now();
        let mut b = opened(start);
        tokio::time::advance(12 * SECOND).await;
        let now = Instant::now();
        assert_eq!(
            b.try_acquire(now).map(|_| ()),
            Err(BreakerOpen {
                retry_after: 18 * SECOND
            })
        );
        assert_eq!(
            b.check(now),
            Err(BreakerOpen {
                retry_after: 18 * SECOND
            })
        );
        tokio::time::advance(18 * SECOND - Duration::from_millis(1)).await;
        let now = Instant::now();
        assert_eq!(
            b.try_acquire(now).map(|_| ()),
            Err(BreakerOpen {
                retry_after: Duration::from_millis(1)
            })
        );
        assert_eq!(b.state(now), BreakerState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn after_open_for_it_is_half_open_and_one_success_closes_it() {
        let mut b = opened(Instant::now());
        tokio::time::advance(30 * SECOND).await;
        let now = Instant::now();
        assert_eq!(
            b.state(now),
            BreakerState::HalfOpen,
            "reported before the trial"
        );
        assert_eq!(b.check(now), Ok(()));
        let trial = b.try_acquire(now).expect("one trial call");
        assert_eq!(
            b.try_acquire(now).map(|_| ()),
            Err(BreakerOpen {
                retry_after: 5 * SECOND
            }),
            "only one trial at a time"
        );
        b.record(trial, Outcome::Success, now);
        assert_eq!(b.state(now), BreakerState::Closed);
        // The window starts empty: nine failures do not reopen it.
        for _ in 0..9 {
            call(&mut b, Outcome::Failure, now);
        }
        assert_eq!(b.state(now), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens_it_for_another_open_period() {
        let mut b = opened(Instant::now());
        tokio::time::advance(30 * SECOND).await;
        let now = Instant::now();
        let trial = b.try_acquire(now).expect("trial");
        tokio::time::advance(2 * SECOND).await;
        let now = Instant::now();
        b.record(trial, Outcome::Failure, now);
        assert_eq!(b.state(now), BreakerState::Open);
        assert_eq!(
            b.check(now),
            Err(BreakerOpen {
                retry_after: 30 * SECOND
            })
        );
    }

    #[test]
    fn expired_waits_count_as_failures_only_while_closed() {
        let now = Instant::now();
        let mut b = breaker();
        call(&mut b, Outcome::Success, now);
        for _ in 0..8 {
            b.record_expired(now);
        }
        assert_eq!(
            b.state(now),
            BreakerState::Closed,
            "9 calls are too few to judge"
        );
        b.record_expired(now);
        assert_eq!(b.state(now), BreakerState::Open, "9 of 10 failed");

        // Half-open: an expired wait does not decide, the trial does.
        let later = now + 30 * SECOND;
        let trial = b.try_acquire(later).expect("the trial");
        b.record_expired(later);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        b.record(trial, Outcome::Success, later);
        assert_eq!(b.state(later), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn several_probes_must_all_succeed() {
        let mut b = Breaker::new(BreakerConfig {
            half_open_probes: 2,
            ..BreakerConfig::default()
        });
        let now = Instant::now();
        for _ in 0..10 {
            call(&mut b, Outcome::Failure, now);
        }
        let now = now + 30 * SECOND;
        let first = b.try_acquire(now).expect("first trial");
        let second = b.try_acquire(now).expect("second trial");
        assert!(b.try_acquire(now).is_err(), "only two trials");
        b.record(first, Outcome::Success, now);
        assert_eq!(b.state(now), BreakerState::HalfOpen);
        b.record(second, Outcome::Success, now);
        assert_eq!(b.state(now), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn an_outcome_from_before_a_transition_is_ignored() {
        let now = Instant::now();
        let mut b = breaker();
        let slow = b.try_acquire(now).expect("closed");
        for _ in 0..10 {
            call(&mut b, Outcome::Failure, now);
        }
        let later = now + 30 * SECOND;
        let trial = b.try_acquire(later).expect("trial");
        // The slow call from the closed state succeeds late: it must not close the breaker.
        b.record(slow, Outcome::Success, later);
        assert_eq!(b.state(later), BreakerState::HalfOpen);
        b.record(trial, Outcome::Failure, later);
        assert_eq!(b.state(later), BreakerState::Open);
    }

    #[test]
    fn nonsense_settings_are_clamped_not_panicked_on() {
        let now = Instant::now();
        let mut b = Breaker::new(BreakerConfig {
            failure_rate: f64::NAN,
            minimum_calls: 0,
            window: 0,
            half_open_probes: 0,
            ..BreakerConfig::default()
        });
        call(&mut b, Outcome::Failure, now);
        assert_eq!(b.state(now), BreakerState::Open, "1 of 1 failed, rate 1.0");
        assert_eq!(b.config().half_open_probes, 1);
    }
}
