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

//!
//! This file is the per-node tables ([`Limits`]: attempts, strikes and bans per address,
//! publishes and connections per user) and what a refusal says ([`Refusal`]); `config.rs` holds
//! the settings, `pending.rs` the cap on connections per address before they are sessions,
//! `frames.rs` a connection's frame budget, `log_throttle.rs` the refusal log's rate, `tests.rs`
//! the unit tests.

mod config;
mod frames;
mod log_throttle;
mod pending;
#[cfg(test)]
mod tests;

pub use config::RateLimitConfig;
pub(crate) use frames::{FrameLimiter, FrameVerdict};
pub(crate) use log_throttle::LogThrottle;
pub(crate) use pending::{PendingByAddress, PendingSlot};

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::HeaderMap;
use parking_lot::Mutex;
use tokio::time::Instant;

/// How often the tables forget what no longer matters.
pub(crate) const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// The window in which refusals of one IP count towards a ban.
const STRIKE_WINDOW: Duration = Duration::from_secs(60);

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
    users: Mutex<HashMap<UserKey, usize>>,
}

/// A (property, user) pair as one string of both and where the user begins: one allocation
/// and a 24 B key per connected user, not two strings and a 48 B key. Two keys are equal when
/// both their text and their split are, so no two pairs share a key.
#[derive(Debug, PartialEq, Eq, Hash)]
struct UserKey {
    both: Box<str>,
    split: usize,
}

impl UserKey {
    fn new(property: &str, user: &str) -> Self {
        let mut both = String::with_capacity(property.len() + user.len());
        both.push_str(property);
        both.push_str(user);
        UserKey {
            both: both.into_boxed_str(),
            split: property.len(),
        }
    }
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
        let count = users.entry(UserKey::new(property, user)).or_insert(0);
        if *count >= self.config.max_connections_per_user {
            return false;
        }
        *count += 1;
        true
    }

    /// Forgets a connection counted by [`Limits::add_user_connection`].
    pub(crate) fn remove_user_connection(&self, property: &str, user: &str) {
        let mut users = self.users.lock();
        let key = UserKey::new(property, user);
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
