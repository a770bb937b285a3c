//! What one user may make the node do for everyone else: the bytes they may store per minute,
//! the guest emergencies they may raise, and how often their typing and presence notices reach
//! a channel's audience. Each check is cheap for the node and is paid by the sender: refused or
//! coalesced where the frame arrives, before anything fans out.
//!
//! Typing notices are dropped within `typing_interval` of the last one of the same user on the
//! same channel. Join and leave notices are coalesced per user and channel: the first goes out at
//! once; within `presence_notice_interval` of it, later transitions wait, and when the interval
//! ends only the state they ended in is announced, and nothing when that is the state already
//! announced. A subscribe/unsubscribe storm therefore costs the audience at most two notices per
//! interval, whatever its rate. Both are per node: a user's connections on other nodes have their
//! own allowance, bounded by `MAX_CONNECTIONS_PER_USER` and the frame rate.
//!
//! Memory follows activity: a (channel, user) entry is needed only within its interval (or while
//! an announcement is deferred). The maps forget the settled ones when they have doubled since
//! the last time (so a busy map is pruned in amortized constant time per notice), and
//! [`Fairness::sweep`], run with the node's housekeeping, forgets them and gives the tables'
//! room back, so a quiet node holds none of it.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use bellhop_dispatcher::ChannelKey;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use parking_lot::Mutex;
use tokio::time::Instant;

use crate::config::HotelPolicy;

/// Entries a notice map may hold before it is first pruned of settled ones.
const PRUNE_AT: usize = 4096;

/// (property, user): who a budget belongs to.
type UserKey = (String, String);

/// The node's fairness state, shared by every connection and the HTTP API.
pub(crate) struct Fairness {
    policy: HotelPolicy,
    /// Bytes each user may publish per minute.
    bytes: DefaultKeyedRateLimiter<UserKey>,
    /// Emergencies each guest may raise per window.
    emergencies: DefaultKeyedRateLimiter<UserKey>,
    clock: DefaultClock,
    /// When each (channel, user)'s last typing notice went out.
    typing: Mutex<Recent<Instant>>,
    /// The join/leave coalescing state of each (channel, user).
    presence: Mutex<Recent<Notice>>,
}

/// Per (channel, user) state that matters only for a while, and when to forget what no longer
/// does.
struct Recent<V> {
    /// Entries by (channel, user), the key boxed: a connection storm fills the map with
    /// entries that matter for an interval, and the table's spare slots are then small.
    map: HashMap<Box<(ChannelKey, String)>, V>,
    /// The size at which the map is next pruned: twice what the last pruning kept, at least
    /// [`PRUNE_AT`].
    prune_at: usize,
}

impl<V> Recent<V> {
    fn new() -> Self {
        Recent {
            map: HashMap::new(),
            prune_at: PRUNE_AT,
        }
    }

    /// Prunes the map of entries that `keep` says are settled, if it has grown enough since the
    /// last time.
    fn prune_if_grown(&mut self, keep: impl FnMut(&V) -> bool) {
        if self.map.len() >= self.prune_at {
            self.prune(keep);
        }
    }

    fn prune(&mut self, mut keep: impl FnMut(&V) -> bool) {
        self.map.retain(|_, v| keep(v));
        self.prune_at = (2 * self.map.len()).max(PRUNE_AT);
    }
}

impl std::fmt::Debug for Fairness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fairness")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// Where one user's presence notices on one channel stand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Notice {
    /// The state last announced (present or not).
    announced: bool,
    /// When it was announced.
    at: Instant,
    /// The state the user is in now.
    wanted: bool,
    /// A deferred announcement is scheduled.
    deferred: bool,
}

/// What to do about a presence transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Announce {
    /// Announce this state now (true: join, false: leave).
    Now(bool),
    /// Call [`Fairness::presence_due`] at this instant, which says what to announce then.
    At(Instant),
    /// Nothing: a deferred announcement already covers it, or it is the state announced.
    Nothing,
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

/// Why a publish was refused by a budget: the time after which a retry can succeed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct OverBudget(pub(crate) Duration);

impl Fairness {
    pub(crate) fn new(policy: HotelPolicy) -> Self {
        let per_minute = nonzero(policy.publish_bytes_per_user_per_minute);
        let emergency_period =
            policy.guest_emergency_window / policy.guest_emergencies_per_window.max(1);
        let emergencies = Quota::with_period(emergency_period.max(Duration::from_millis(1)))
            .unwrap_or_else(|| Quota::per_minute(NonZeroU32::MIN))
            .allow_burst(nonzero(policy.guest_emergencies_per_window));
        let clock = DefaultClock::default();
        Fairness {
            bytes: RateLimiter::dashmap_with_clock(Quota::per_minute(per_minute), clock.clone()),
            emergencies: RateLimiter::dashmap_with_clock(emergencies, clock.clone()),
            clock,
            typing: Mutex::new(Recent::new()),
            presence: Mutex::new(Recent::new()),
            policy,
        }
    }

    /// Spends `bytes` of the user's publish budget.
    pub(crate) fn spend_bytes(
        &self,
        property: &str,
        user: &str,
        bytes: usize,
    ) -> Result<(), OverBudget> {
        let n = nonzero(u32::try_from(bytes).unwrap_or(u32::MAX).max(1));
        match self
            .bytes
            .check_key_n(&(property.to_owned(), user.to_owned()), n)
        {
            Ok(Ok(())) => Ok(()),
            Ok(Err(not_until)) => Err(OverBudget(
                not_until
                    .wait_time_from(self.clock.now())
                    .max(Duration::from_millis(1)),
            )),
            // Larger than the whole minute's budget: it never fits.
            Err(_) => Err(OverBudget(Duration::from_secs(60))),
        }
    }

    /// Takes one of the guest's emergencies.
    pub(crate) fn take_emergency(&self, property: &str, user: &str) -> Result<(), OverBudget> {
        self.emergencies
            .check_key(&(property.to_owned(), user.to_owned()))
            .map_err(|not_until| {
                OverBudget(
                    not_until
                        .wait_time_from(self.clock.now())
                        .max(Duration::from_millis(1)),
                )
            })
    }

    /// Whether a typing notice of `user` on `key` goes out now.
    pub(crate) fn typing_allowed(&self, key: &ChannelKey, user: &str, now: Instant) -> bool {
        let interval = self.policy.typing_interval;
        let mut recent = self.typing.lock();
        recent.prune_if_grown(|at| now.duration_since(*at) < interval);
        let typing = &mut recent.map;
        match typing.get_mut(&(key.clone(), user.to_owned())) {
            Some(at) if now.duration_since(*at) < interval => false,
            Some(at) => {
                *at = now;
                true
            }
            None => {
                typing.insert(Box::new((key.clone(), user.to_owned())), now);
                true
            }
        }
    }

    /// Records that `user` joined (`present`) or left `key` (the broker said it was their first
    /// or last session there) and says when to announce it.
    pub(crate) fn presence_changed(
        &self,
        key: &ChannelKey,
        user: &str,
        present: bool,
        now: Instant,
    ) -> Announce {
        let interval = self.policy.presence_notice_interval;
        let mut recent = self.presence.lock();
        recent.prune_if_grown(|n| n.unsettled(now, interval));
        let notices = &mut recent.map;
        let id = (key.clone(), user.to_owned());
        let Some(n) = notices.get_mut(&id) else {
            notices.insert(
                Box::new(id),
                Notice {
                    announced: present,
                    at: now,
                    wanted: present,
                    deferred: false,
                },
            );
            return Announce::Now(present);
        };
        n.wanted = present;
        if n.deferred {
            return Announce::Nothing;
        }
        if now.duration_since(n.at) >= interval {
            if n.announced == present {
                return Announce::Nothing;
            }
            n.announced = present;
            n.at = now;
            return Announce::Now(present);
        }
        n.deferred = true;
        Announce::At(n.at + interval)
    }

    /// A deferred announcement is due: the state to announce, if it changed.
    pub(crate) fn presence_due(&self, key: &ChannelKey, user: &str, now: Instant) -> Option<bool> {
        let mut notices = self.presence.lock();
        let n = notices.map.get_mut(&(key.clone(), user.to_owned()))?;
        n.deferred = false;
        if n.wanted == n.announced {
            return None;
        }
        n.announced = n.wanted;
        n.at = now;
        Some(n.wanted)
    }

    /// Forgets what no longer matters (settled notices, full byte and emergency buckets) and
    /// gives the tables' spare room back; run with the node's housekeeping.
    pub(crate) fn sweep(&self, now: Instant) {
        let typing_interval = self.policy.typing_interval;
        {
            let mut typing = self.typing.lock();
            typing.prune(|at| now.duration_since(*at) < typing_interval);
            typing.map.shrink_to_fit();
        }
        let interval = self.policy.presence_notice_interval;
        {
            let mut presence = self.presence.lock();
            presence.prune(|n| n.unsettled(now, interval));
            presence.map.shrink_to_fit();
        }
        self.bytes.retain_recent();
        self.bytes.shrink_to_fit();
        self.emergencies.retain_recent();
        self.emergencies.shrink_to_fit();
    }

    /// Entries held: (typing, presence notices).
    #[cfg(test)]
    fn sizes(&self) -> (usize, usize) {
        (self.typing.lock().map.len(), self.presence.lock().map.len())
    }
}

impl Notice {
    /// Whether the entry still matters: an announcement is deferred, or the last one was within
    /// the interval. A settled entry may be forgotten: the transitions the broker reports
    /// alternate, so the next one differs from the state announced and goes out at once either
    /// way.
    fn unsettled(&self, now: Instant, interval: Duration) -> bool {
        self.deferred || now.duration_since(self.at) < interval
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bellhop_protocol::Channel;

    fn fairness() -> Fairness {
        Fairness::new(HotelPolicy::default())
    }

    fn key() -> ChannelKey {
        ChannelKey::new("h1", Channel::Broadcast)
    }

    #[tokio::test(start_paused = true)]
    async fn typing_goes_out_at_most_once_per_interval_per_user_and_channel() {
        let f = fairness();
        let t0 = Instant::now();
        let sent = (0..100)
            .filter(|i| f.typing_allowed(&key(), "g1", t0 + Duration::from_millis(*i * 50)))
            .count();
        // 100 notices over 5 s: one at 0, 2 and 4 s.
        assert_eq!(sent, 3);
        // Another user, or another channel, has its own allowance.
        assert!(f.typing_allowed(&key(), "g2", t0));
        assert!(f.typing_allowed(&ChannelKey::new("h1", Channel::Room("1".into())), "g1", t0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_subscribe_toggle_storm_is_coalesced_into_the_state_it_ends_in() {
        let f = fairness();
        let t0 = Instant::now();
        assert_eq!(
            f.presence_changed(&key(), "u1", true, t0),
            Announce::Now(true)
        );
        let due = t0 + Duration::from_secs(2);
        // 50 toggles within the interval: one deferred decision, nothing else.
        let mut decisions = Vec::new();
        for i in 0..100u64 {
            decisions.push(f.presence_changed(
                &key(),
                "u1",
                i % 2 == 1,
                t0 + Duration::from_millis(10 * i + 1),
            ));
        }
        assert_eq!(decisions[0], Announce::At(due));
        assert!(
            decisions[1..].iter().all(|d| *d == Announce::Nothing),
            "{decisions:?}"
        );
        // It ended present, which was announced already: nothing to say.
        assert_eq!(f.presence_due(&key(), "u1", due), None);
        // The interval since the last announcement is over: a leave goes out at once...
        assert_eq!(
            f.presence_changed(&key(), "u1", false, due),
            Announce::Now(false)
        );
        // ...and a rejoin right after it waits for the interval, then is announced.
        let soon = due + Duration::from_millis(100);
        assert_eq!(
            f.presence_changed(&key(), "u1", true, soon),
            Announce::At(due + Duration::from_secs(2))
        );
        assert_eq!(
            f.presence_due(&key(), "u1", due + Duration::from_secs(2)),
            Some(true)
        );
        // Long after, a transition is announced at once again.
        let later = due + Duration::from_secs(10);
        assert_eq!(
            f.presence_changed(&key(), "u1", false, later),
            Announce::Now(false)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_sweep_forgets_settled_notices_and_keeps_deferred_ones() {
        let f = fairness();
        let t0 = Instant::now();
        for i in 0..100 {
            let user = format!("u{i}");
            assert_eq!(
                f.presence_changed(&key(), &user, true, t0),
                Announce::Now(true)
            );
            assert!(f.typing_allowed(&key(), &user, t0));
        }
        // u0 leaves within the interval: its leave is deferred.
        let soon = t0 + Duration::from_millis(500);
        let due = t0 + Duration::from_secs(2);
        assert_eq!(
            f.presence_changed(&key(), "u0", false, soon),
            Announce::At(due)
        );
        // Within the interval nothing is forgotten.
        f.sweep(soon);
        assert_eq!(f.sizes(), (100, 100));
        // After it, only the deferred notice is kept, and it still says what to announce.
        f.sweep(due);
        assert_eq!(f.sizes(), (0, 1));
        assert_eq!(f.presence_due(&key(), "u0", due), Some(false));
        // Once announced and its interval over, it goes too.
        f.sweep(due + Duration::from_secs(2));
        assert_eq!(f.sizes(), (0, 0));
        // A forgotten user's next transition is announced at once.
        assert_eq!(
            f.presence_changed(&key(), "u1", false, due + Duration::from_secs(3)),
            Announce::Now(false)
        );
    }

    #[test]
    fn the_byte_budget_refuses_what_does_not_fit_and_says_when_to_retry() {
        let f = Fairness::new(HotelPolicy {
            publish_bytes_per_user_per_minute: 100_000,
            ..HotelPolicy::default()
        });
        assert!(f.spend_bytes("h1", "g1", 60_000).is_ok());
        let refused = f.spend_bytes("h1", "g1", 60_000).unwrap_err();
        assert!(
            refused.0 > Duration::from_secs(1) && refused.0 <= Duration::from_secs(60),
            "{refused:?}"
        );
        assert!(
            f.spend_bytes("h1", "g2", 60_000).is_ok(),
            "budgets are per user"
        );
        assert!(
            f.spend_bytes("h1", "g3", 200_000).is_err(),
            "over the whole budget"
        );
    }

    #[test]
    fn a_guest_raises_a_few_emergencies_per_window_not_a_flood() {
        let f = fairness();
        for _ in 0..3 {
            assert!(f.take_emergency("h1", "g1").is_ok());
        }
        let refused = f.take_emergency("h1", "g1").unwrap_err();
        assert!(refused.0 > Duration::from_secs(60), "{refused:?}");
        assert!(f.take_emergency("h1", "g2").is_ok());
    }
}
