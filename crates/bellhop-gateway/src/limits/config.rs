//! The rate limit settings ([`RateLimitConfig`]): every field with its default and the check
//! that rejects nonsense naming the variable (`docs/SECURITY.md` explains them).

use std::time::Duration;

use ipnet::IpNet;

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
