//! Rate limits and bans: what keeps one abusive client from costing everyone else.
//!
//! - **Connection attempts per client IP** (`RATE_LIMIT_PER_IP` per minute): checked at the
//!   upgrade, before the token is verified, so a flood costs a hash lookup. Over the limit: HTTP
//!   429 with `Retry-After`.
//! - **Bans.** An IP refused [`RateLimitConfig::ban_threshold`] times within a minute is refused
//!   for [`RateLimitConfig::ban_duration`] without further counting (HTTP 429 with the time left).
//!   With a shared broker (Redis) the ban is announced to every node, which enforces it too.
//! - **Frames per connection** (a token bucket per connection): a frame over the limit is not
//!   processed; the client gets `error rate_limited` with `retryAfterMs`. A client that keeps
//!   sending (more than [`RateLimitConfig::strikes_before_close`] refused frames with no pause of
//!   a second) is closed with 1008.
//! - **Publishes per user** (per property and user, on this node): `error rate_limited` with
//!   `retryAfterMs` on the WebSocket, HTTP 429 on the API.
//! - **Connections per user** (on this node): beyond the cap the new connection is refused.
//!
//! The client IP is the socket's peer, unless the peer is a trusted proxy
//! ([`RateLimitConfig::trusted_proxies`]): then it is the right-most `X-Forwarded-For` entry that
//! is not itself a trusted proxy (entries further left are the client's word, not the proxies').
//!
//! Memory stays bounded: the keyed limiters forget keys whose bucket is full again and the ban
//! and strike tables drop expired entries, every [`SWEEP_EVERY`].

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::HeaderMap;
use ipnet::IpNet;
use parking_lot::Mutex;
use tokio::time::Instant;

/// How often the tables forget what no longer matters.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The window in which refusals of one IP count towards a ban.
const STRIKE_WINDOW: Duration = Duration::from_secs(60);

/// Rate limit settings; every field has a documented default (see `docs/SECURITY.md`).
#[derive(Clone, Debug)]
pub struct RateLimitConfig {
    /// Upgrade attempts per client IP per minute (`RATE_LIMIT_PER_IP`, 100), with bursts of as
    /// many.
    pub connections_per_ip_per_minute: u32,
    /// Frames per connection per second (`RATE_LIMIT_FRAMES_PER_SECOND`, 50), with bursts of
    /// twice that.
    pub frames_per_second: u32,
    /// Publishes per user per minute on one node (`RATE_LIMIT_PUBLISHES_PER_MINUTE`, 600), with
    /// bursts of a tenth of that (at least 1).
    pub publishes_per_user_per_minute: u32,
    /// Refused frames, with no pause of a second between them, after which the connection is
    /// closed with 1008 (20).
    pub strikes_before_close: u32,
    /// Refused upgrades of one IP within a minute that ban it (`BAN_THRESHOLD`, 20).
    pub ban_threshold: u32,
    /// How long a ban lasts (`BAN_SECONDS`, 600 s).
    pub ban_duration: Duration,
    /// Most concurrent connections of one user (property and user id) on one node
    /// (`MAX_CONNECTIONS_PER_USER`, 20).
    pub max_connections_per_user: usize,
    /// Proxies whose `X-Forwarded-For` is believed (`TRUSTED_PROXIES`, none): addresses or CIDR
    /// networks.
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            connections_per_ip_per_minute: 100,
            frames_per_second: 50,
            publishes_per_user_per_minute: 600,
            strikes_before_close: 20,
            ban_threshold: 20,
            ban_duration: Duration::from_secs(600),
            max_connections_per_user: 20,
            trusted_proxies: Vec::new(),
        }
    }
}

impl RateLimitConfig {
    /// Rejects settings that cannot work, naming the setting.
    pub fn validate(&self) -> Result<(), String> {
        let positive = [
            ("RATE_LIMIT_PER_IP", self.connections_per_ip_per_minute),
            ("RATE_LIMIT_FRAMES_PER_SECOND", self.frames_per_second),
            (
                "RATE_LIMIT_PUBLISHES_PER_MINUTE",
                self.publishes_per_user_per_minute,
            ),
            ("BAN_THRESHOLD", self.ban_threshold),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if self.strikes_before_close == 0 {
            return Err("the frame strikes before a close must be at least 1".into());
        }
        if self.max_connections_per_user == 0 {
            return Err("MAX_CONNECTIONS_PER_USER must be at least 1".into());
        }
        if self.ban_duration.is_zero() || self.ban_duration > Duration::from_secs(7 * 24 * 3600) {
            return Err("BAN_SECONDS must be between 1 and 604800 (a week)".into());
        }
        Ok(())
    }
}

/// Why a connection or a request was refused before anything else was looked at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// Over the per-IP rate; retry after this long.
    RateLimited(Duration),
    /// Banned; for this long still.
    Banned(Duration),
    /// The address already has `MAX_PENDING_PER_IP` connections that are not sessions yet.
    Pending,
}

impl Refusal {
    /// The `what` label of `bellhop_rate_limited_total` and the `reason` of the refusal log.
    pub(crate) fn what(self) -> &'static str {
        match self {
            Refusal::RateLimited(_) => "connection",
            Refusal::Banned(_) => "banned",
            Refusal::Pending => "pending",
        }
    }

    /// When a retry can succeed.
    pub(crate) fn wait(self) -> Duration {
        match self {
            Refusal::RateLimited(wait) | Refusal::Banned(wait) => wait,
            // A pending connection ends within a handshake or head timeout, most far sooner.
            Refusal::Pending => Duration::from_secs(1),
        }
    }
}

/// The node's limiters and ban table.
pub(crate) struct Limits {
    config: RateLimitConfig,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    per_user: DefaultKeyedRateLimiter<(String, String)>,
    frame_quota: Quota,
    /// One clock for every limiter: creating a quanta clock calibrates it (CPUID and a
    /// measurement), which cost more than the rest of a connection's limiter setup together.
    clock: DefaultClock,
    /// Banned IPs and when each ban ends.
    bans: Mutex<HashMap<IpAddr, Instant>>,
    /// Refusals per IP in the current window: (window start, count).
    strikes: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    /// Open connections per (property, user).
    users: Mutex<HashMap<(String, String), usize>>,
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("config", &self.config)
            .field("tracked_ips", &self.per_ip.len())
            .field("bans", &self.bans.lock().len())
            .finish_non_exhaustive()
    }
}

fn nonzero(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    pub(crate) fn new(config: RateLimitConfig) -> Self {
        let per_ip = Quota::per_minute(nonzero(config.connections_per_ip_per_minute));
        let per_user = Quota::per_minute(nonzero(config.publishes_per_user_per_minute))
            .allow_burst(nonzero(config.publishes_per_user_per_minute / 10));
        let frame_quota = Quota::per_second(nonzero(config.frames_per_second))
            .allow_burst(nonzero(config.frames_per_second.saturating_mul(2)));
        let clock = DefaultClock::default();
        Limits {
            per_ip: RateLimiter::dashmap_with_clock(per_ip, clock.clone()),
            per_user: RateLimiter::dashmap_with_clock(per_user, clock.clone()),
            frame_quota,
            clock,
            bans: Mutex::new(HashMap::new()),
            strikes: Mutex::new(HashMap::new()),
            users: Mutex::new(HashMap::new()),
            config,
        }
    }

    #[cfg(test)]
    pub(crate) fn config(&self) -> &RateLimitConfig {
        &self.config
    }

    /// The client's address: the peer, or what trusted proxies say it is.
    pub(crate) fn client_ip(&self, remote: SocketAddr, headers: &HeaderMap) -> IpAddr {
        let peer = remote.ip();
        if !self.trusted(peer) {
            return peer;
        }
        // Right to left: each trusted proxy appended the address it saw.
        let hops: Vec<IpAddr> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|s| s.trim().parse().ok())
            .collect();
        hops.into_iter()
            .rev()
            .find(|ip| !self.trusted(*ip))
            .unwrap_or(peer)
    }

    /// Whether `ip` is a trusted proxy (`TRUSTED_PROXIES`): its connections carry many clients,
    /// told apart by `X-Forwarded-For` once the request head is read.
    pub(crate) fn trusted(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        self.config.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    /// Whether `ip` is banned now; for how long still.
    pub(crate) fn check_ban(&self, ip: IpAddr) -> Result<(), Refusal> {
        let now = Instant::now();
        match self.bans.lock().get(&ip) {
            Some(until) if *until > now => Err(Refusal::Banned(*until - now)),
            _ => Ok(()),
        }
    }

    /// Whether `ip` may try to connect now; counts the attempt.
    pub(crate) fn check_connection(&self, ip: IpAddr) -> Result<(), Refusal> {
        self.check_ban(ip)?;
        match self.per_ip.check_key(&ip) {
            Ok(()) => Ok(()),
            Err(not_until) => {
                let wait = not_until.wait_time_from(self.clock.now());
                Err(Refusal::RateLimited(wait.max(Duration::from_millis(1))))
            }
        }
    }

    /// Counts a refusal of `ip`; true when it crossed the ban threshold (and is now banned here).
    pub(crate) fn strike(&self, ip: IpAddr) -> bool {
        let now = Instant::now();
        let crossed = {
            let mut strikes = self.strikes.lock();
            let entry = strikes.entry(ip).or_insert((now, 0));
            if now.duration_since(entry.0) > STRIKE_WINDOW {
                *entry = (now, 0);
            }
            entry.1 += 1;
            let crossed = entry.1 >= self.config.ban_threshold;
            if crossed {
                strikes.remove(&ip);
            }
            crossed
        };
        if crossed {
            self.ban(ip, self.config.ban_duration);
        }
        crossed
    }

    /// Bans `ip` on this node for `duration` (a longer ban already in place is kept).
    pub(crate) fn ban(&self, ip: IpAddr, duration: Duration) {
        let until = Instant::now() + duration;
        let mut bans = self.bans.lock();
        let entry = bans.entry(ip).or_insert(until);
        if *entry < until {
            *entry = until;
        }
    }

    /// Whether `ip` is banned here now.
    #[cfg(test)]
    pub(crate) fn is_banned(&self, ip: IpAddr) -> bool {
        self.bans
            .lock()
            .get(&ip)
            .is_some_and(|until| *until > Instant::now())
    }

    /// Whether `user` of `property` may publish now; otherwise how long to wait.
    pub(crate) fn check_publish(&self, property: &str, user: &str) -> Result<(), Duration> {
        self.per_user
            .check_key(&(property.to_owned(), user.to_owned()))
            .map_err(|not_until| {
                not_until
                    .wait_time_from(self.clock.now())
                    .max(Duration::from_millis(1))
            })
    }

    /// A fresh frame limiter for one connection.
    pub(crate) fn frame_limiter(&self) -> FrameLimiter {
        FrameLimiter {
            limiter: RateLimiter::direct_with_clock(self.frame_quota, self.clock.clone()),
            strikes: 0,
            last_refusal: None,
            strikes_before_close: self.config.strikes_before_close,
        }
    }

    /// Counts a connection of `user`; `false` (nothing counted) when the user is at the cap.
    pub(crate) fn add_user_connection(&self, property: &str, user: &str) -> bool {
        let mut users = self.users.lock();
        let count = users
            .entry((property.to_owned(), user.to_owned()))
            .or_insert(0);
        if *count >= self.config.max_connections_per_user {
            return false;
        }
        *count += 1;
        true
    }

    /// Forgets a connection counted by [`Limits::add_user_connection`].
    pub(crate) fn remove_user_connection(&self, property: &str, user: &str) {
        let mut users = self.users.lock();
        let key = (property.to_owned(), user.to_owned());
        if let Some(count) = users.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                users.remove(&key);
            }
        }
    }

    /// Drops what no longer matters: full buckets, ended bans, old strike windows.
    pub(crate) fn sweep(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
        self.per_user.retain_recent();
        self.per_user.shrink_to_fit();
        let now = Instant::now();
        self.bans.lock().retain(|_, until| *until > now);
        self.strikes
            .lock()
            .retain(|_, (start, _)| now.duration_since(*start) <= STRIKE_WINDOW);
    }

    /// Entries held, for tests and metrics: (IPs tracked, users tracked, bans, strike windows).
    #[cfg(test)]
    pub(crate) fn sizes(&self) -> (usize, usize, usize, usize) {
        (
            self.per_ip.len(),
            self.per_user.len(),
            self.bans.lock().len(),
            self.strikes.lock().len(),
        )
    }
}

/// Connections per client address that are not WebSocket sessions yet (being handshaken, sending
/// their head, or HTTP API connections), capped per address. Shared by the accept loop and the
/// [`PendingSlot`]s it hands out; a slot's drop gives its place back.
#[derive(Debug)]
pub(crate) struct PendingByAddress {
    /// The cap (`MAX_PENDING_PER_IP`).
    max: usize,
    /// Pending connections per address; an address leaves the map with its last one.
    counts: Mutex<HashMap<IpAddr, usize>>,
}

/// One pending connection's place in [`PendingByAddress`].
#[derive(Debug)]
pub(crate) struct PendingSlot {
    table: Arc<PendingByAddress>,
    ip: IpAddr,
}

impl PendingByAddress {
    pub(crate) fn new(max: usize) -> Arc<Self> {
        Arc::new(PendingByAddress {
            max,
            counts: Mutex::new(HashMap::new()),
        })
    }

    /// A place for one more pending connection of `ip`, or `None` when it has `max` already.
    pub(crate) fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<PendingSlot> {
        let mut counts = self.counts.lock();
        let count = counts.entry(ip).or_insert(0);
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(PendingSlot {
            table: self.clone(),
            ip,
        })
    }

    /// Pending connections of `ip` now.
    #[cfg(test)]
    pub(crate) fn count(&self, ip: IpAddr) -> usize {
        self.counts.lock().get(&ip).copied().unwrap_or(0)
    }

    /// Addresses with a pending connection.
    #[cfg(test)]
    pub(crate) fn addresses(&self) -> usize {
        self.counts.lock().len()
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.table.counts.lock();
        if let Some(count) = counts.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

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

/// One connection's frame budget.
pub(crate) struct FrameLimiter {
    limiter: DefaultDirectRateLimiter,
    strikes: u32,
    last_refusal: Option<Instant>,
    strikes_before_close: u32,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(tweak: impl FnOnce(&mut RateLimitConfig)) -> Limits {
        let mut config = RateLimitConfig::default();
        tweak(&mut config);
        config.validate().unwrap();
        Limits::new(config)
    }

    fn addr(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 40000)
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let l = limits(|c| c.trusted_proxies = vec!["10.0.0.0/8".parse().unwrap()]);
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        // From an untrusted peer the header is the client's word: ignored.
        assert_eq!(
            l.client_ip(addr("203.0.113.9"), &xff("1.2.3.4")),
            ip("203.0.113.9")
        );
        // Through a trusted proxy: the address the proxy saw.
        assert_eq!(
            l.client_ip(addr("10.1.1.1"), &xff("198.51.100.7")),
            ip("198.51.100.7")
        );
        // A client that forges a left-most entry gets the right-most untrusted one.
        assert_eq!(
            l.client_ip(addr("10.1.1.1"), &xff("1.2.3.4, 198.51.100.7, 10.2.2.2")),
            ip("198.51.100.7")
        );
        // No header, or only proxies in it: the peer.
        assert_eq!(
            l.client_ip(addr("10.1.1.1"), &HeaderMap::new()),
            ip("10.1.1.1")
        );
        // IPv4-mapped IPv6 peers match IPv4 networks.
        assert_eq!(
            l.client_ip(addr("::ffff:10.1.1.1"), &xff("198.51.100.7")),
            ip("198.51.100.7")
        );
    }

    #[test]
    fn connection_attempts_are_limited_per_ip_and_repeated_refusals_ban() {
        let l = limits(|c| {
            c.connections_per_ip_per_minute = 3;
            c.ban_threshold = 2;
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert_eq!(l.check_connection(a), Ok(()));
        }
        let Err(Refusal::RateLimited(wait)) = l.check_connection(a) else {
            panic!("the fourth attempt in a minute is refused");
        };
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        // Another address is unaffected.
        assert_eq!(l.check_connection(b), Ok(()));
        assert!(!l.strike(a));
        assert!(l.strike(a), "the second refusal within a minute bans");
        assert!(l.is_banned(a) && !l.is_banned(b));
        let Err(Refusal::Banned(left)) = l.check_connection(a) else {
            panic!("a banned address is refused as banned");
        };
        assert!(left > Duration::from_secs(590), "{left:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ban_ends_after_its_duration_and_the_sweep_forgets_it() {
        let l = limits(|c| c.ban_duration = Duration::from_secs(30));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        l.ban(a, l.config().ban_duration);
        assert!(l.is_banned(a));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert!(l.is_banned(a));
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(!l.is_banned(a));
        l.sweep();
        assert_eq!(l.sizes().2, 0);
    }

    #[test]
    fn publishes_are_limited_per_user() {
        let l = limits(|c| c.publishes_per_user_per_minute = 20);
        // A burst of a tenth of the minute's quota.
        assert!(l.check_publish("h1", "u1").is_ok());
        assert!(l.check_publish("h1", "u1").is_ok());
        let wait = l.check_publish("h1", "u1").unwrap_err();
        assert!(wait <= Duration::from_secs(3), "{wait:?}");
        // Same user id in another property, another user: their own budgets.
        assert!(l.check_publish("h2", "u1").is_ok());
        assert!(l.check_publish("h1", "u2").is_ok());
    }

    #[test]
    fn a_flooding_connection_is_refused_then_closed() {
        let l = limits(|c| {
            c.frames_per_second = 5;
            c.strikes_before_close = 3;
        });
        let mut f = l.frame_limiter();
        for _ in 0..10 {
            assert_eq!(
                f.check(),
                FrameVerdict::Allow,
                "the burst is twice the rate"
            );
        }
        for _ in 0..3 {
            assert!(matches!(f.check(), FrameVerdict::Refuse(_)));
        }
        assert_eq!(f.check(), FrameVerdict::Close);
    }

    #[test]
    fn connections_per_user_are_capped_and_released() {
        let l = limits(|c| c.max_connections_per_user = 2);
        assert!(l.add_user_connection("h1", "u1"));
        assert!(l.add_user_connection("h1", "u1"));
        assert!(!l.add_user_connection("h1", "u1"));
        assert!(l.add_user_connection("h1", "u2"));
        l.remove_user_connection("h1", "u1");
        assert!(l.add_user_connection("h1", "u1"));
    }

    #[test]
    fn pending_connections_are_capped_per_address_and_given_back() {
        let table = PendingByAddress::new(2);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = table.enter(a).unwrap();
        let second = table.enter(a).unwrap();
        assert!(table.enter(a).is_none(), "a third from one address");
        let other = table.enter(b).unwrap();
        assert_eq!((table.count(a), table.count(b)), (2, 1));
        drop(first);
        let third = table.enter(a).unwrap();
        drop((second, third, other));
        assert_eq!(
            table.addresses(),
            0,
            "an address leaves with its last connection"
        );
    }

    #[test]
    fn bans_are_checked_without_counting_an_attempt() {
        let l = limits(|c| c.connections_per_ip_per_minute = 1);
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        assert!(l.check_ban(ip).is_ok());
        assert!(l.check_ban(ip).is_ok());
        assert!(l.check_connection(ip).is_ok(), "check_ban used no budget");
        l.ban(ip, Duration::from_secs(60));
        assert!(matches!(l.check_ban(ip), Err(Refusal::Banned(_))));
    }

    #[tokio::test(start_paused = true)]
    async fn the_refusal_log_lets_a_few_lines_a_second_through_and_counts_the_rest() {
        let throttle = LogThrottle::new(3);
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), Some(0));
        assert_eq!(throttle.admit(), Some(0));
        for _ in 0..5 {
            assert_eq!(throttle.admit(), None);
        }
        tokio::time::advance(Duration::from_millis(999)).await;
        assert_eq!(throttle.admit(), None, "still the same second");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(
            throttle.admit(),
            Some(6),
            "the next line says how many were left out"
        );
        assert_eq!(throttle.admit(), Some(0));
    }

    #[test]
    fn nonsense_settings_are_named() {
        let mut c = RateLimitConfig::default();
        assert!(c.validate().is_ok());
        c.connections_per_ip_per_minute = 0;
        assert!(c.validate().unwrap_err().contains("RATE_LIMIT_PER_IP"));
        let c = RateLimitConfig {
            ban_duration: Duration::ZERO,
            ..RateLimitConfig::default()
        };
        assert!(c.validate().unwrap_err().contains("BAN_SECONDS"));
    }
}
