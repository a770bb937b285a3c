//! The limits' unit tests: trusted proxies, attempts and bans, publishes, floods, per-user and
//! pending caps, settings.

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
fn connections_per_user_are_counted_per_property_and_user_not_their_concatenation() {
    let l = limits(|c| c.max_connections_per_user = 1);
    assert!(l.add_user_connection("h1", "u1"));
    assert!(l.add_user_connection("h", "1u1"), "another property's user");
    assert!(l.add_user_connection("h1u", "1"), "another property's user");
    assert!(!l.add_user_connection("h1", "u1"));
    l.remove_user_connection("h", "1u1");
    assert!(
        !l.add_user_connection("h1", "u1"),
        "the other pair's release is its own"
    );
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
