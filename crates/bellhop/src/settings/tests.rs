//! Unit tests of the settings: each source, precedence, validation, and the docs check.

use super::*;

fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn settings(pairs: &[(&str, &str)]) -> Result<ServeSettings> {
    serve_settings(&env(pairs), &FileSettings::default(), &Overrides::default())
}

#[test]
fn escalation_settings_are_read_and_checked() {
    let s = settings(&[]).unwrap();
    let e = &s.requests.escalation;
    assert_eq!(
        (e.after_ms, e.management_level, e.max_level),
        (300_000, 4, 5)
    );
    assert_eq!(e.min_priority, Priority::High);
    assert_eq!(e.management_channel.to_string(), "dept:management");
    let s = settings(&[
        ("ESCALATION_AFTER_SECONDS", "3"),
        ("ESCALATION_MIN_PRIORITY", "urgent"),
        ("ESCALATION_MANAGEMENT_LEVEL", "3"),
        ("ESCALATION_MANAGEMENT_CHANNEL", "dept:security"),
        ("ESCALATION_MAX_LEVEL", "4"),
    ])
    .unwrap();
    let e = &s.requests.escalation;
    assert_eq!((e.after_ms, e.management_level, e.max_level), (3_000, 3, 4));
    assert_eq!(e.min_priority, Priority::Urgent);
    for (key, value, named) in [
        ("ESCALATION_MIN_PRIORITY", "soon", "ESCALATION_MIN_PRIORITY"),
        ("ESCALATION_AFTER_SECONDS", "0", "ESCALATION_AFTER_SECONDS"),
        ("ESCALATION_MAX_LEVEL", "1", "ESCALATION_MAX_LEVEL"),
        (
            "ESCALATION_MANAGEMENT_CHANNEL",
            "dept:nowhere",
            "ESCALATION_MANAGEMENT_CHANNEL",
        ),
        (
            "ROUTING_RULES_PATH",
            "/nonexistent/rules.toml",
            "ROUTING_RULES_PATH",
        ),
    ] {
        let e = settings(&[(key, value)]).unwrap_err().to_string();
        assert!(e.contains(named), "{key}={value}: {e}");
    }
}

#[test]
fn defaults_match_the_design() {
    let s = settings(&[]).unwrap();
    assert_eq!(s.gateway.listen.port(), 3001);
    assert_eq!(s.gateway.ws_path, "/ws");
    assert_eq!(s.gateway.admin_listen.unwrap().port(), 9090);
    assert_eq!(s.gateway.max_connections, 10_000);
    assert_eq!(s.broker.retention(), Duration::from_secs(24 * 3600));
    assert!(s.dev_secret);
    assert_eq!(s.environment, Environment::Development);
}

#[test]
fn the_development_secret_binds_loopback_unless_an_address_is_given() {
    let s = settings(&[]).unwrap();
    assert_eq!(s.gateway.listen.ip(), IpAddr::from([127, 0, 0, 1]));
    assert_eq!(
        s.gateway.admin_listen.unwrap().ip(),
        IpAddr::from([127, 0, 0, 1])
    );
    assert!(s.loopback_for_dev_secret);
    let s = settings(&[("JWT_SECRET", DEV_SECRET)]).unwrap();
    assert!(s.loopback_for_dev_secret && s.gateway.listen.ip().is_loopback());
    // A real secret, or an address asked for, keeps every interface.
    let s = settings(&[("JWT_SECRET", "s3cret")]).unwrap();
    assert!(s.gateway.listen.ip().is_unspecified() && !s.loopback_for_dev_secret);
    let s = settings(&[("BIND_ADDR", "0.0.0.0")]).unwrap();
    assert!(s.gateway.listen.ip().is_unspecified() && !s.loopback_for_dev_secret);
    let flags = Overrides {
        bind_addr: Some(IpAddr::from([0, 0, 0, 0])),
        ..Default::default()
    };
    let s = serve_settings(&env(&[]), &FileSettings::default(), &flags).unwrap();
    assert!(s.gateway.listen.ip().is_unspecified() && !s.loopback_for_dev_secret);
}

#[test]
fn environment_variables_are_read_and_flags_win() {
    let e = env(&[
        ("WS_PORT", "4000"),
        ("WS_PATH", "/socket"),
        ("METRICS_PORT", "9100"),
        ("MAX_CONNECTIONS", "5"),
        ("MESSAGE_RETENTION_HOURS", "2"),
        ("NODE_ID", "node-a"),
        ("JWT_SECRET", "s3cret"),
        ("ENABLE_METRICS", "true"),
    ]);
    let flags = Overrides {
        ws_port: Some(5000),
        ..Default::default()
    };
    let s = serve_settings(&e, &FileSettings::default(), &flags).unwrap();
    assert_eq!(s.gateway.listen.port(), 5000);
    assert_eq!(s.gateway.ws_path, "/socket");
    assert_eq!(s.gateway.admin_listen.unwrap().port(), 9100);
    assert_eq!(s.gateway.max_connections, 5);
    assert_eq!(s.broker.retention(), Duration::from_secs(7200));
    assert_eq!(s.gateway.node_id, "node-a");
    assert_eq!(
        s.gateway.auth.keys,
        bellhop_gateway::KeySource::Secret(b"s3cret".to_vec())
    );
    assert!(!s.dev_secret);
    assert!(settings(&[("ENABLE_METRICS", "false")])
        .unwrap()
        .gateway
        .admin_listen
        .is_none());
}

#[test]
fn the_file_is_used_below_the_environment() {
    let file: FileSettings = toml::from_str("ws_port = 4100\nnode_id = \"from-file\"").unwrap();
    let s = serve_settings(
        &env(&[("NODE_ID", "from-env")]),
        &file,
        &Overrides::default(),
    )
    .unwrap();
    assert_eq!(s.gateway.listen.port(), 4100);
    assert_eq!(s.gateway.node_id, "from-env");
    assert!(
        toml::from_str::<FileSettings>("wsport = 1").is_err(),
        "typos in the file are errors"
    );
}

#[test]
fn bad_values_name_the_variable() {
    for (k, v) in [
        ("WS_PORT", "http"),
        ("MAX_CONNECTIONS", "0"),
        ("MESSAGE_RETENTION_HOURS", "0"),
        ("ENABLE_METRICS", "maybe"),
        ("NODE_ID", "bad id"),
        ("LOG_FORMAT", "xml"),
        ("BELLHOP_ENV", "staging"),
    ] {
        let err = settings(&[(k, v)]).unwrap_err().to_string();
        let named = err.contains(k) || (k == "MAX_CONNECTIONS" && err.contains("MAX_CONNECTIONS"));
        assert!(named, "{k}={v}: {err}");
    }
}

#[test]
fn production_refuses_missing_weak_and_development_secrets() {
    let prod = |secret: Option<&str>| {
        let mut pairs = vec![("BELLHOP_ENV", "production")];
        if let Some(s) = secret {
            pairs.push(("JWT_SECRET", s));
        }
        settings(&pairs)
    };
    assert!(prod(None)
        .unwrap_err()
        .to_string()
        .contains("JWT_SECRET must be set"));
    assert!(prod(Some(DEV_SECRET))
        .unwrap_err()
        .to_string()
        .contains("development secret"));
    assert!(prod(Some("short"))
        .unwrap_err()
        .to_string()
        .contains("at least 32"));
    let ok = prod(Some("0123456789abcdef0123456789abcdef")).unwrap();
    assert_eq!(ok.log_format, LogFormat::Json);
    assert!(!ok.dev_secret);
}

#[test]
fn tls_is_configured_by_ssl_settings() {
    assert!(settings(&[]).unwrap().gateway.tls.is_none());
    let on = [
        ("SSL_ENABLED", "true"),
        ("SSL_CERT_PATH", "/tls/tls.crt"),
        ("SSL_KEY_PATH", "/tls/tls.key"),
    ];
    let tls = settings(&on).unwrap().gateway.tls.unwrap();
    assert_eq!(tls, TlsConfig::new("/tls/tls.crt", "/tls/tls.key"));
    assert_eq!(tls.min_version, TlsVersion::Tls12);
    assert_eq!(tls.reload_interval, Some(Duration::from_secs(10)));

    let with = |extra: &[(&str, &str)]| {
        let mut pairs = on.to_vec();
        pairs.extend_from_slice(extra);
        settings(&pairs)
    };
    for v in ["1.3", "TLSv1.3", " tlsv1.3 ", "TLS1.3"] {
        let tls = with(&[("SSL_MIN_VERSION", v)])
            .unwrap()
            .gateway
            .tls
            .unwrap();
        assert_eq!(tls.min_version, TlsVersion::Tls13, "{v}");
    }
    for v in ["1.1", "1.0", "ssl3", "1.4"] {
        let e = with(&[("SSL_MIN_VERSION", v)]).unwrap_err().to_string();
        assert!(e.contains("SSL_MIN_VERSION"), "{v}: {e}");
    }
    let tls = with(&[("SSL_RELOAD_INTERVAL_SECONDS", "0")])
        .unwrap()
        .gateway
        .tls
        .unwrap();
    assert_eq!(tls.reload_interval, None, "0 turns the poll off");
    let e = with(&[("SSL_RELOAD_INTERVAL_SECONDS", "x")]).unwrap_err();
    assert!(e.to_string().contains("SSL_RELOAD_INTERVAL_SECONDS"), "{e}");

    // A path missing is named.
    let e = settings(&[("SSL_ENABLED", "1"), ("SSL_KEY_PATH", "/k")]).unwrap_err();
    assert!(e.to_string().contains("SSL_CERT_PATH"), "{e}");
    let e = settings(&[("SSL_ENABLED", "yes"), ("SSL_CERT_PATH", "/c")]).unwrap_err();
    assert!(e.to_string().contains("SSL_KEY_PATH"), "{e}");

    // From the file, below the environment.
    let file: FileSettings = toml::from_str(
        "ssl_enabled = true\nssl_cert_path = \"/f.crt\"\nssl_key_path = \"/f.key\"\nssl_min_version = \"1.3\"\nssl_reload_interval_seconds = 30",
    )
    .unwrap();
    let s = serve_settings(
        &env(&[("SSL_KEY_PATH", "/env.key")]),
        &file,
        &Overrides::default(),
    )
    .unwrap();
    let tls = s.gateway.tls.unwrap();
    assert_eq!(tls.cert_path, std::path::Path::new("/f.crt"));
    assert_eq!(tls.key_path, std::path::Path::new("/env.key"));
    assert_eq!(tls.min_version, TlsVersion::Tls13);
    assert_eq!(tls.reload_interval, Some(Duration::from_secs(30)));

    // Paths without SSL_ENABLED: plain, flagged so the node can warn.
    let s = settings(&[("SSL_CERT_PATH", "/c"), ("SSL_KEY_PATH", "/k")]).unwrap();
    assert!(s.gateway.tls.is_none() && s.tls_paths_ignored);
    assert!(!settings(&on).unwrap().tls_paths_ignored);
}

#[test]
fn public_keys_pin_rs256_or_es256_and_need_exactly_one_key_source() {
    use bellhop_testkit::{jwks, KeyFiles, TestSigningKey};
    let files = KeyFiles::new();
    let ec = TestSigningKey::ec("e1");
    let pem = files.write("ec.pem", &ec.public_pem);
    let set = files.write("jwks.json", &jwks(&[&ec]));
    let (pem, set) = (pem.to_str().unwrap(), set.to_str().unwrap());
    let s = settings(&[
        ("BELLHOP_ENV", "production"),
        ("JWT_ALGORITHM", "es256"),
        ("JWT_PUBLIC_KEY_PATH", pem),
        ("JWT_ISSUER", "https://id.example"),
        ("JWT_AUDIENCE", "bellhop"),
        ("JWT_LEEWAY_SECONDS", "5"),
        ("JWT_KEYS_RELOAD_SECS", "3"),
    ])
    .unwrap();
    let auth = &s.gateway.auth;
    assert_eq!(auth.algorithm, JwtAlgorithm::Es256);
    assert_eq!(auth.keys, KeySource::PublicKeyFile(pem.into()));
    assert_eq!(auth.issuer.as_deref(), Some("https://id.example"));
    assert_eq!(auth.audience.as_deref(), Some("bellhop"));
    assert_eq!(auth.leeway, Duration::from_secs(5));
    assert_eq!(auth.keys_reload_interval, Duration::from_secs(3));
    assert!(!s.dev_secret, "no JWT_SECRET is needed in production");
    let file: FileSettings = toml::from_str(&format!(
        "jwt_algorithm = \"ES256\"\njwt_jwks_path = {set:?}"
    ))
    .unwrap();
    let s = serve_settings(&env(&[]), &file, &Overrides::default()).unwrap();
    assert_eq!(s.gateway.auth.keys, KeySource::JwksFile(set.into()));
    let defaults = settings(&[]).unwrap().gateway.auth;
    assert_eq!(defaults.algorithm, JwtAlgorithm::Hs256);
    assert_eq!(defaults.leeway, Duration::from_secs(30));
    assert_eq!(defaults.keys_reload_interval, Duration::from_secs(10));
    let missing = files.path("absent.pem");
    let missing = missing.to_str().unwrap();
    for (pairs, needles) in [
        (
            vec![("JWT_PUBLIC_KEY_PATH", pem)],
            vec!["JWT_ALGORITHM=RS256 or ES256"],
        ),
        (
            vec![("JWT_ALGORITHM", "HS256"), ("JWT_JWKS_PATH", set)],
            vec!["JWT_JWKS_PATH is set", "HS256"],
        ),
        (
            vec![("JWT_ALGORITHM", "ES256")],
            vec!["JWT_PUBLIC_KEY_PATH or JWT_JWKS_PATH"],
        ),
        (
            vec![
                ("JWT_ALGORITHM", "ES256"),
                ("JWT_PUBLIC_KEY_PATH", pem),
                ("JWT_JWKS_PATH", set),
            ],
            vec!["both set"],
        ),
        (
            vec![
                ("JWT_ALGORITHM", "ES256"),
                ("JWT_PUBLIC_KEY_PATH", pem),
                ("JWT_SECRET", "x"),
            ],
            vec!["JWT_SECRET is set"],
        ),
        (
            vec![("JWT_ALGORITHM", "none")],
            vec!["JWT_ALGORITHM=\"none\" is invalid"],
        ),
        (
            vec![("JWT_ALGORITHM", "RS256"), ("JWT_PUBLIC_KEY_PATH", pem)],
            vec!["JWT_PUBLIC_KEY_PATH=", "not an RSA public key"],
        ),
        (
            vec![("JWT_ALGORITHM", "ES256"), ("JWT_PUBLIC_KEY_PATH", missing)],
            vec!["JWT_PUBLIC_KEY_PATH=", "cannot read"],
        ),
        (
            vec![("JWT_LEEWAY_SECONDS", "601")],
            vec!["JWT_LEEWAY_SECONDS"],
        ),
        (
            vec![("JWT_LEEWAY_SECONDS", "soon")],
            vec!["JWT_LEEWAY_SECONDS"],
        ),
        (
            vec![("JWT_KEYS_RELOAD_SECS", "0")],
            vec!["JWT_KEYS_RELOAD_SECS"],
        ),
    ] {
        let err = format!("{:#}", settings(&pairs).unwrap_err());
        for needle in needles {
            assert!(err.contains(needle), "{pairs:?}: {err}");
        }
    }
}

#[test]
fn redis_is_configured_by_url_or_by_host_port_and_password() {
    let redis = |pairs: &[(&str, &str)]| match settings(pairs).unwrap().broker {
        BrokerSettings::Redis(c) => c,
        other => panic!("expected redis, got {other:?}"),
    };
    let c = redis(&[
        ("REDIS_URL", "redis://10.0.0.5:6380/0"),
        ("MESSAGE_RETENTION_HOURS", "2"),
    ]);
    assert_eq!(c.url, "redis://10.0.0.5:6380/0");
    assert_eq!(c.retention, Duration::from_secs(7200));
    let c = redis(&[("REDIS_HOST", "redis"), ("REDIS_PASSWORD", "p@ss word")]);
    assert_eq!(c.url, "redis://:p%40ss%20word@redis:6379");
    assert_eq!(
        redis(&[("REDIS_HOST", "r"), ("REDIS_PORT", "7000")]).url,
        "redis://r:7000"
    );
    assert!(matches!(
        settings(&[]).unwrap().broker,
        BrokerSettings::Embedded(_)
    ));
    let both = settings(&[("REDIS_URL", "redis://r"), ("REDIS_PASSWORD", "x")]).unwrap_err();
    assert!(both.to_string().contains("REDIS_PASSWORD"));
    assert!(settings(&[("REDIS_URL", "sentinel://r")])
        .unwrap_err()
        .to_string()
        .contains("REDIS_URL"));
    assert!(settings(&[("REDIS_HOST", "r"), ("REDIS_PORT", "x")])
        .unwrap_err()
        .to_string()
        .contains("REDIS_PORT"));
}

#[test]
fn tls_to_redis_is_a_rediss_url_with_an_optional_authority() {
    let redis = |pairs: &[(&str, &str)]| match settings(pairs).unwrap().broker {
        BrokerSettings::Redis(c) => c,
        other => panic!("expected redis, got {other:?}"),
    };
    let c = redis(&[
        ("REDIS_HOST", "r"),
        ("REDIS_PASSWORD", "pw"),
        ("REDIS_TLS_ENABLED", "true"),
        ("REDIS_TLS_CA_PATH", "/etc/redis-ca.pem"),
    ]);
    assert_eq!(c.url, "rediss://:pw@r:6379");
    assert_eq!(
        c.tls_ca_path.as_deref(),
        Some(std::path::Path::new("/etc/redis-ca.pem"))
    );
    let c = redis(&[
        ("REDIS_URL", "redis://r:7000"),
        ("REDIS_TLS_ENABLED", "true"),
    ]);
    assert_eq!(c.url, "rediss://r:7000");
    let c = redis(&[("REDIS_URL", "rediss://r:7000")]);
    assert!(c.uses_tls() && c.tls_ca_path.is_none());
    let no_redis = settings(&[("REDIS_TLS_ENABLED", "true")]).unwrap_err();
    assert!(no_redis.to_string().contains("REDIS_URL"), "{no_redis}");
    let plain =
        settings(&[("REDIS_URL", "redis://r"), ("REDIS_TLS_CA_PATH", "/ca.pem")]).unwrap_err();
    assert!(plain.to_string().contains("REDIS_TLS_CA_PATH"), "{plain}");
}

#[test]
fn edge_limits_and_cors_are_read_with_their_defaults() {
    let defaults = settings(&[]).unwrap().gateway.edge;
    assert_eq!(defaults, bellhop_gateway::EdgeConfig::default());
    assert_eq!(defaults.max_pending, 1024);
    assert_eq!(defaults.max_pending_per_ip, 32);
    assert_eq!(defaults.max_header_bytes, 16 * 1024);
    assert_eq!(defaults.body_timeout, Duration::from_secs(10));
    assert_eq!(defaults.request_timeout, Duration::from_secs(30));
    assert!(defaults.cors_allowed_origins.is_empty());
    let s = settings(&[
        ("MAX_PENDING_CONNECTIONS", "500"),
        ("MAX_PENDING_PER_IP", "8"),
        ("MAX_HEADER_BYTES", "8192"),
        ("HTTP_BODY_TIMEOUT_SECONDS", "5"),
        ("HTTP_REQUEST_TIMEOUT_SECONDS", "20"),
        (
            "CORS_ALLOWED_ORIGINS",
            "https://app.hotel.example/, http://localhost:5173",
        ),
        ("ALLOWED_ORIGINS", "https://guest.hotel.example"),
    ])
    .unwrap()
    .gateway;
    assert_eq!(
        (
            s.edge.max_pending,
            s.edge.max_pending_per_ip,
            s.edge.max_header_bytes
        ),
        (500, 8, 8192)
    );
    assert_eq!(s.edge.body_timeout, Duration::from_secs(5));
    assert_eq!(s.edge.request_timeout, Duration::from_secs(20));
    assert_eq!(
        s.edge.cors_allowed_origins,
        ["https://app.hotel.example", "http://localhost:5173"]
    );
    assert_eq!(
        s.allowed_origins,
        ["https://guest.hotel.example"],
        "separate lists"
    );
    let file: FileSettings =
        toml::from_str("cors_allowed_origins = \"*\"\nmax_header_bytes = 32768").unwrap();
    let s = serve_settings(&env(&[]), &file, &Overrides::default()).unwrap();
    assert_eq!(s.gateway.edge.cors_allowed_origins, ["*"]);
    assert_eq!(s.gateway.edge.max_header_bytes, 32768);
    for (k, v) in [
        ("MAX_PENDING_CONNECTIONS", "0"),
        ("MAX_PENDING_PER_IP", "none"),
        ("MAX_HEADER_BYTES", "100"),
        ("HTTP_BODY_TIMEOUT_SECONDS", "0"),
        ("HTTP_REQUEST_TIMEOUT_SECONDS", "1"),
        ("CORS_ALLOWED_ORIGINS", "app.hotel.example"),
    ] {
        let err = settings(&[(k, v)]).unwrap_err().to_string();
        assert!(err.contains(k), "{k}={v}: {err}");
    }
}

#[test]
fn redis_cluster_mode_takes_one_node_of_the_cluster() {
    let cluster = settings(&[("REDIS_URL", "redis://r1:7000"), ("REDIS_CLUSTER", "true")]);
    match cluster.unwrap().broker {
        BrokerSettings::Redis(c) => {
            assert!(c.cluster);
            assert_eq!(c.url, "redis://r1:7000");
        }
        other => panic!("expected redis, got {other:?}"),
    }
    match settings(&[("REDIS_URL", "redis://r1:7000")])
        .unwrap()
        .broker
    {
        BrokerSettings::Redis(c) => assert!(!c.cluster),
        other => panic!("expected redis, got {other:?}"),
    }
    let alone = settings(&[("REDIS_CLUSTER", "true")]).unwrap_err();
    assert!(alone.to_string().contains("REDIS_URL"), "{alone}");
}
