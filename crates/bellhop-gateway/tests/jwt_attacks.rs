//! The JWT attack suite: real nodes on port 0 verifying RS256 (a JWKS of two keys) or ES256 (a
//! PEM public key), with an issuer and an audience configured, attacked with real WebSocket
//! clients and HTTP requests. Every forged or unfit token must be refused the documented way
//! every way it can be presented (docs/SECURITY.md, "Authentication"): HTTP 401 with an
//! `unauthorized` body at the upgrade (header and `?token=`) and on the HTTP API, `error
//! unauthorized` then close 4001 after a first `auth` frame. Valid tokens must not reach another
//! property or raise a priority beyond their role (`error forbidden`, connection kept).
//!
//! Keys are generated for the run (rcgen for P-256, the `rsa` crate for RSA): nothing secret
//! is committed.

#![allow(clippy::unwrap_used)]

mod support;

use std::sync::OnceLock;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bellhop_gateway::auth::{mint, Audience, Claims, TokenSigner};
use bellhop_gateway::{AuthConfig, JwtAlgorithm, KeySource};
use bellhop_protocol::{close, Role};
use bellhop_testkit::{jwks, KeyFiles, TestSigningKey};
use serde_json::{json, Value};
use support::*;

const ISSUER: &str = "https://id.bellhop.test";
const AUDIENCE: &str = "bellhop";

/// The keys of the run. RSA generation takes a moment, so they are made once per binary.
struct Keys {
    /// In the RS256 node's JWKS.
    r1: TestSigningKey,
    /// In the RS256 node's JWKS.
    r2: TestSigningKey,
    /// An attacker's RSA key, in no set.
    rogue_rsa: TestSigningKey,
    /// The ES256 node's public key.
    e1: TestSigningKey,
    /// An attacker's P-256 key.
    rogue_ec: TestSigningKey,
}

fn keys() -> &'static Keys {
    static KEYS: OnceLock<Keys> = OnceLock::new();
    KEYS.get_or_init(|| Keys {
        r1: TestSigningKey::rsa("r1"),
        r2: TestSigningKey::rsa("r2"),
        rogue_rsa: TestSigningKey::rsa("rogue"),
        e1: TestSigningKey::ec("e1"),
        rogue_ec: TestSigningKey::ec("rogue"),
    })
}

fn auth(algorithm: JwtAlgorithm, keys: KeySource) -> AuthConfig {
    let mut a = AuthConfig::with_keys(algorithm, keys);
    a.issuer = Some(ISSUER.into());
    a.audience = Some(AUDIENCE.into());
    a
}

/// A node verifying RS256 tokens against a JWKS holding r1 and r2.
async fn rs256_node(files: &KeyFiles) -> TestNode {
    let k = keys();
    let path = files.write("jwks.json", &jwks(&[&k.r1, &k.r2]));
    TestNode::start_with(Backend::Memory, |c| {
        c.auth = auth(JwtAlgorithm::Rs256, KeySource::JwksFile(path))
    })
    .await
}

/// A node verifying ES256 tokens against e1's PEM public key.
async fn es256_node(files: &KeyFiles) -> TestNode {
    let path = files.write("e1.pem", &keys().e1.public_pem);
    TestNode::start_with(Backend::Memory, |c| {
        c.auth = auth(JwtAlgorithm::Es256, KeySource::PublicKeyFile(path))
    })
    .await
}

/// Claims the nodes of this suite accept: right issuer and audience, an hour long.
fn good(sub: &str, role: Role, prop: &str, rooms: &[&str], depts: &[&str]) -> Claims {
    let mut c = claims(sub, role, prop, rooms, depts, 3600);
    c.iss = Some(ISSUER.into());
    c.aud = Some(Audience::One(AUDIENCE.into()));
    c
}

fn admin() -> Claims {
    good("mallory", Role::Admin, "h1", &[], &[])
}

/// Signs `claims` with `key` (its own algorithm) and writes `kid` in the header.
fn sign(key: &TestSigningKey, kid: Option<&str>, claims: &Claims) -> String {
    let alg = JwtAlgorithm::parse(key.kind.alg()).unwrap();
    let mut signer = TokenSigner::from_pem(alg, key.private_pem.as_bytes()).unwrap();
    if let Some(kid) = kid {
        signer = signer.with_kid(kid);
    }
    signer.sign(claims).unwrap()
}

/// Signs arbitrary header and claims JSON with `key` (RS256 or ES256), for headers the
/// signer does not write.
fn sign_raw(key: &TestSigningKey, header: &Value, claims: &Value) -> String {
    let alg = match key.kind.alg() {
        "RS256" => jsonwebtoken::Algorithm::RS256,
        _ => jsonwebtoken::Algorithm::ES256,
    };
    let encoding = match alg {
        jsonwebtoken::Algorithm::RS256 => {
            jsonwebtoken::EncodingKey::from_rsa_pem(key.private_pem.as_bytes())
        }
        _ => jsonwebtoken::EncodingKey::from_ec_pem(key.private_pem.as_bytes()),
    }
    .unwrap();
    let message = format!("{}.{}", b64(&header.to_string()), b64(&claims.to_string()));
    let signature = jsonwebtoken::crypto::sign(message.as_bytes(), &encoding, alg).unwrap();
    format!("{message}.{signature}")
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

fn json_of(claims: &Claims) -> Value {
    serde_json::to_value(claims).unwrap()
}

/// A token of three given parts.
fn forge(header: &Value, claims: &Value, signature: &str) -> String {
    format!(
        "{}.{}.{signature}",
        b64(&header.to_string()),
        b64(&claims.to_string())
    )
}

#[tokio::test]
async fn the_suite_s_own_tokens_are_accepted_every_way() {
    let files = KeyFiles::new();
    let k = keys();
    let rs = rs256_node(&files).await;
    for key in [&k.r1, &k.r2] {
        let token = sign(
            key,
            Some(&key.kid),
            &good("s1", Role::Staff, "h1", &[], &[]),
        );
        for (way, mut c) in rs.connect_three_ways(&token).await {
            assert_eq!(
                c.request(json!({"type": "ping"})).await["type"],
                "pong",
                "{way}"
            );
        }
    }
    let es = es256_node(&files).await;
    let token = sign(&k.e1, None, &good("s1", Role::Staff, "h1", &[], &[]));
    assert_eq!(es.connect_three_ways(&token).await.len(), 3);
}

#[tokio::test]
async fn alg_none_is_refused() {
    let files = KeyFiles::new();
    let k = keys();
    let body = json_of(&admin());
    let genuine = sign(&k.r1, Some("r1"), &admin());
    let genuine_signature = genuine.rsplit('.').next().unwrap();
    let rs = rs256_node(&files).await;
    let es = es256_node(&files).await;
    let hs = TestNode::start(Backend::Memory).await;
    for alg in ["none", "None", "NONE", "nOnE"] {
        let header = json!({"alg": alg, "typ": "JWT"});
        for node in [&rs, &es, &hs] {
            node.assert_token_refused(&forge(&header, &body, ""), "is not accepted")
                .await;
        }
        // A genuine signature kept under an `alg: none` header changes nothing.
        let with_kid = json!({"alg": alg, "kid": "r1"});
        rs.assert_token_refused(
            &forge(&with_kid, &body, genuine_signature),
            "is not accepted",
        )
        .await;
    }
    let rejected = rs
        .metric("bellhop_connections_rejected_total{reason=\"unauthorized\"}")
        .await;
    assert!(rejected >= 16.0, "counted at the upgrade: {rejected}");
}

#[tokio::test]
async fn hs256_signed_with_the_public_key_is_refused() {
    let files = KeyFiles::new();
    let k = keys();
    let rs = rs256_node(&files).await;
    let es = es256_node(&files).await;
    // Algorithm confusion: an HS256 token whose HMAC secret is the public key, as a verifier
    // that lets the token choose the algorithm would use it. The public key is public: this
    // token is what anyone can make.
    let set = jwks(&[&k.r1, &k.r2]);
    for (node, secret) in [
        (&rs, k.r1.public_pem.as_bytes()),
        (&rs, set.as_bytes()),
        (&es, k.e1.public_pem.as_bytes()),
    ] {
        let token = TokenSigner::hs256(secret)
            .with_kid("r1")
            .sign(&admin())
            .unwrap();
        node.assert_token_refused(&token, "\"HS256\" is not accepted")
            .await;
        let no_kid = mint(secret, &admin()).unwrap();
        node.assert_token_refused(&no_kid, "\"HS256\" is not accepted")
            .await;
    }
    // Real signatures under the other pinned algorithm are refused too.
    rs.assert_token_refused(
        &sign(&k.e1, Some("r1"), &admin()),
        "\"ES256\" is not accepted",
    )
    .await;
    es.assert_token_refused(&sign(&k.r1, None, &admin()), "\"RS256\" is not accepted")
        .await;
    // And an HS256 node refuses an RS256 token.
    let hs = TestNode::start(Backend::Memory).await;
    hs.assert_token_refused(&sign(&k.r1, None, &admin()), "\"RS256\" is not accepted")
        .await;
}

#[tokio::test]
async fn expired_tokens_are_refused() {
    let files = KeyFiles::new();
    let k = keys();
    let rs = rs256_node(&files).await;
    let mut c = admin();
    // Past the 30 s leeway.
    c.exp = (now_secs() - 120) as u64;
    rs.assert_token_refused(&sign(&k.r1, Some("r1"), &c), "token expired")
        .await;
    // A token without exp is refused too.
    let mut no_exp = json_of(&admin());
    no_exp.as_object_mut().unwrap().remove("exp");
    let token = sign_raw(&k.r1, &json!({"alg": "RS256", "kid": "r1"}), &no_exp);
    rs.assert_token_refused(&token, "missing claim exp").await;
    let es = es256_node(&files).await;
    es.assert_token_refused(&sign(&k.e1, None, &c), "token expired")
        .await;
}

#[tokio::test]
async fn a_live_connection_is_told_its_token_expired_then_closed_with_4001() {
    let files = KeyFiles::new();
    let k = keys();
    let path = files.write("jwks.json", &jwks(&[&k.r1]));
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.auth = auth(JwtAlgorithm::Rs256, KeySource::JwksFile(path));
        c.auth.leeway = Duration::ZERO;
    })
    .await;
    let mut c = good("s1", Role::Staff, "h1", &[], &[]);
    c.exp = (now_secs() + 2) as u64;
    let mut client = node.connect(&sign(&k.r1, Some("r1"), &c)).await;
    let (code, reason, frames) = client.closed().await;
    assert_eq!(code, close::UNAUTHORIZED, "{reason}");
    assert!(reason.starts_with("token expired"), "{reason}");
    assert_eq!(frames.len(), 1, "{frames:?}");
    assert_eq!(frames[0]["type"], "error");
    assert_eq!(frames[0]["code"], "unauthorized");
    assert!(frames[0]["message"]
        .as_str()
        .unwrap()
        .starts_with("token expired"));
}

#[tokio::test]
async fn not_yet_valid_tokens_are_refused() {
    let files = KeyFiles::new();
    let k = keys();
    let rs = rs256_node(&files).await;
    let mut c = admin();
    // Beyond the 30 s leeway.
    c.nbf = Some((now_secs() + 300) as u64);
    rs.assert_token_refused(&sign(&k.r2, Some("r2"), &c), "not valid yet")
        .await;
    // Inside the leeway it is accepted (clock skew between issuer and node).
    c.nbf = Some((now_secs() + 10) as u64);
    rs.connect(&sign(&k.r2, Some("r2"), &c)).await;
}

#[tokio::test]
async fn a_wrong_or_missing_issuer_is_refused() {
    let files = KeyFiles::new();
    let k = keys();
    let rs = rs256_node(&files).await;
    let mut c = admin();
    c.iss = Some("https://evil.test".into());
    rs.assert_token_refused(&sign(&k.r1, Some("r1"), &c), "wrong issuer")
        .await;
    c.iss = None;
    rs.assert_token_refused(&sign(&k.r1, Some("r1"), &c), "missing claim iss")
        .await;
}

#[tokio::test]
async fn a_wrong_or_missing_audience_is_refused() {
    let files = KeyFiles::new();
    let k = keys();
    let es = es256_node(&files).await;
    let mut c = admin();
    c.aud = Some(Audience::One("another-service".into()));
    es.assert_token_refused(&sign(&k.e1, None, &c), "wrong audience")
        .await;
    c.aud = Some(Audience::Many(vec!["a".into(), "b".into()]));
    es.assert_token_refused(&sign(&k.e1, None, &c), "wrong audience")
        .await;
    c.aud = None;
    es.assert_token_refused(&sign(&k.e1, None, &c), "missing claim aud")
        .await;
    // A list that names this service is fine.
    c.aud = Some(Audience::Many(vec!["a".into(), AUDIENCE.into()]));
    es.connect(&sign(&k.e1, None, &c)).await;
}

#[tokio::test]
async fn tampered_claims_and_headers_are_refused() {
    let files = KeyFiles::new();
    let k = keys();
    let rs = rs256_node(&files).await;
    let es = es256_node(&files).await;
    let guest = good("g1", Role::Guest, "h1", &["101"], &[]);
    for (node, key, kid) in [(&rs, &k.r1, Some("r1")), (&es, &k.e1, None)] {
        let token = sign(key, kid, &guest);
        node.connect(&token).await;
        let parts: Vec<&str> = token.split('.').collect();
        // The role raised after signing; then the property changed; then the lifetime.
        let mut raised = json_of(&guest);
        raised["role"] = "admin".into();
        let mut moved = json_of(&guest);
        moved["prop"] = "h2".into();
        let mut longer = json_of(&guest);
        longer["exp"] = (now_secs() + 10 * 365 * 86_400).into();
        for tampered in [raised, moved, longer] {
            let t = format!("{}.{}.{}", parts[0], b64(&tampered.to_string()), parts[2]);
            node.assert_token_refused(&t, "bad signature").await;
        }
        // A truncated, stripped or garbled signature.
        let half = parts[2].len() / 2 / 4 * 4;
        let truncated = format!("{}.{}.{}", parts[0], parts[1], &parts[2][..half]);
        node.assert_token_refused(&truncated, "bad signature").await;
        let stripped = format!("{}.{}.", parts[0], parts[1]);
        node.assert_token_refused(&stripped, "bad signature").await;
        let garbled = format!("{}.{}.!!!!", parts[0], parts[1]);
        node.assert_token_refused(&garbled, "malformed token").await;
    }
    // The header's kid changed after signing: r1's signature checked with r2's key.
    let token = sign(&k.r1, Some("r1"), &guest);
    let rest = token.split_once('.').unwrap().1;
    let rekeyed = format!(
        "{}.{rest}",
        b64(&json!({"alg": "RS256", "kid": "r2"}).to_string())
    );
    rs.assert_token_refused(&rekeyed, "bad signature").await;
}

#[tokio::test]
async fn a_wrong_kid_is_refused() {
    let files = KeyFiles::new();
    let k = keys();
    let rs = rs256_node(&files).await;
    // Signed by r1, naming r2: the signature is checked with r2's key and fails.
    rs.assert_token_refused(&sign(&k.r1, Some("r2"), &admin()), "bad signature")
        .await;
    for kid in [
        "r3",
        "",
        "../../../../dev/null",
        "r1' OR '1'='1",
        &"k".repeat(4096),
    ] {
        rs.assert_token_refused(&sign(&k.r1, Some(kid), &admin()), "unknown key id")
            .await;
    }
    // No kid, and the set holds two keys: which one is not the token's to leave open.
    rs.assert_token_refused(&sign(&k.r1, None, &admin()), "no kid")
        .await;
    // A kid that is not a string.
    let token = sign_raw(
        &k.r1,
        &json!({"alg": "RS256", "kid": 1}),
        &json_of(&admin()),
    );
    rs.assert_token_refused(&token, "malformed token header")
        .await;
}

#[tokio::test]
async fn a_key_not_in_the_jwks_is_refused() {
    let files = KeyFiles::new();
    let k = keys();
    let rs = rs256_node(&files).await;
    let rogue = &k.rogue_rsa;
    rs.assert_token_refused(&sign(rogue, Some("rogue"), &admin()), "unknown key id")
        .await;
    // The attacker's key under a kid of the set.
    rs.assert_token_refused(&sign(rogue, Some("r1"), &admin()), "bad signature")
        .await;
    // The attacker's public key embedded in the token (jwk), or pointed to (jku, x5u): never
    // used, the node only trusts its own set.
    let body = json_of(&admin());
    for header in [
        json!({"alg": "RS256", "kid": "r1", "jwk": rogue.jwk}),
        json!({"alg": "RS256", "kid": "rogue", "jwk": rogue.jwk}),
        json!({"alg": "RS256", "kid": "r1", "jku": "https://evil.test/jwks.json"}),
        json!({"alg": "RS256", "kid": "r1", "x5u": "https://evil.test/cert.pem"}),
    ] {
        let reason = if header["kid"] == "rogue" {
            "unknown key id"
        } else {
            "bad signature"
        };
        rs.assert_token_refused(&sign_raw(rogue, &header, &body), reason)
            .await;
    }
    // A critical header extension is refused rather than ignored.
    let crit = json!({"alg": "RS256", "kid": "r1", "crit": ["b64"], "b64": false});
    rs.assert_token_refused(&sign_raw(&k.r1, &crit, &body), "crit")
        .await;
    // ES256 with a PEM key: another key's signature, and the "psychic signature" (r = s = 0).
    let es = es256_node(&files).await;
    es.assert_token_refused(&sign(&k.rogue_ec, None, &admin()), "bad signature")
        .await;
    let zero = URL_SAFE_NO_PAD.encode([0u8; 64]);
    let psychic = forge(&json!({"alg": "ES256"}), &body, &zero);
    es.assert_token_refused(&psychic, "bad signature").await;
}

#[tokio::test]
async fn a_valid_token_cannot_reach_another_property() {
    let files = KeyFiles::new();
    let k = keys();
    let node = rs256_node(&files).await;
    // Property h2's guest in room 101, listening to its room and its own user channel.
    let h2_guest = sign(
        &k.r1,
        Some("r1"),
        &good("g9", Role::Guest, "h2", &["101"], &[]),
    );
    let mut victim = node.connect(&h2_guest).await;
    victim.subscribe("room:101").await;
    victim.subscribe("user:g9").await;
    // Property h1's staff and manager, connected every way, use the same channel names.
    let h1_staff = sign(
        &k.r2,
        Some("r2"),
        &good("s1", Role::Staff, "h1", &[], &["frontdesk"]),
    );
    let h1_manager = sign(
        &k.r2,
        Some("r2"),
        &good("m1", Role::Manager, "h1", &[], &[]),
    );
    for token in [&h1_staff, &h1_manager] {
        for (way, mut c) in node.connect_three_ways(token).await {
            assert_eq!(
                c.subscribe("room:101").await["channel"],
                "room:101",
                "{way}"
            );
            let ack = c
                .publish("room:101", "CHAT_MESSAGE", json!({"from": way}))
                .await;
            assert!(ack["offset"].is_string(), "{way}: {ack}");
            c.publish("user:g9", "CHAT_MESSAGE", json!({"from": way}))
                .await;
            // Every channel name is inside the token's property: there is no way to name h2's.
            for name in ["h2:room:101", "room:h2/101", "room:101@h2", "h2/broadcast"] {
                let reply = c
                    .request(json!({"type": "subscribe", "channel": name}))
                    .await;
                assert_eq!(reply["code"], "bad_request", "{way} {name}: {reply}");
            }
            let history = c
                .request(json!({"type": "history", "channel": "room:101"}))
                .await;
            for m in history["messages"].as_array().unwrap() {
                assert_eq!(m["message"]["namespace"], "h1", "{way}: {m}");
            }
            let presence = c
                .request(json!({"type": "presence", "channel": "room:101"}))
                .await;
            assert!(
                !presence["users"].as_array().unwrap().contains(&json!("g9")),
                "{way}: {presence}"
            );
        }
    }
    // The h2 guest saw none of it: the first message it receives is its own, in h2.
    let own = victim
        .publish("room:101", "CHAT_MESSAGE", json!({"n": 1}))
        .await;
    let first = victim.wait_type("message").await;
    assert_eq!(first["offset"], own["offset"], "{first}");
    assert_eq!(first["message"]["namespace"], "h2", "{first}");
    assert!(
        victim.take_pending().iter().all(|f| f["type"] != "message"),
        "nothing from h1 reached h2"
    );
    let history = victim
        .request(json!({"type": "history", "channel": "user:g9"}))
        .await;
    assert_eq!(history["messages"], json!([]), "h1's user:g9 is not h2's");
    // The HTTP API of h1 reads h1's room:101 only.
    let service = sign(
        &k.r1,
        Some("r1"),
        &good("pms", Role::Service, "h1", &[], &[]),
    );
    let (status, body) = http_json(
        node.addr,
        "GET",
        "/api/v1/channels/room:101/history?limit=100",
        Some(&service),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(messages.len(), 6, "three ways, two h1 users: {body}");
    assert!(
        messages.iter().all(|m| m["message"]["namespace"] == "h1"),
        "{body}"
    );
}

#[tokio::test]
async fn a_publish_cannot_raise_its_priority_beyond_its_role() {
    let files = KeyFiles::new();
    let k = keys();
    let node = rs256_node(&files).await;
    let staff_token = sign(&k.r2, Some("r2"), &good("s1", Role::Staff, "h1", &[], &[]));
    let mut watcher = node.connect(&staff_token).await;
    watcher.subscribe("room:101").await;
    let guest = sign(
        &k.r1,
        Some("r1"),
        &good("g1", Role::Guest, "h1", &["101"], &[]),
    );
    for (way, mut c) in node.connect_three_ways(&guest).await {
        for priority in ["urgent", "high"] {
            let reply = c
                .request(json!({
                    "type": "publish", "channel": "room:101", "event": "CHAT_MESSAGE",
                    "payload": {"way": way}, "priority": priority
                }))
                .await;
            assert_eq!(reply["type"], "error", "{way} {priority}: {reply}");
            assert_eq!(reply["code"], "forbidden", "{way} {priority}: {reply}");
        }
        // The connection stays usable, and lowering is allowed.
        let ack = c
            .request(json!({
                "type": "publish", "channel": "room:101", "event": "CHAT_MESSAGE",
                "payload": {"way": way}, "priority": "low"
            }))
            .await;
        assert_eq!(ack["type"], "ack", "{way}: {ack}");
        // The subscriber gets the lowered message and never a raised one.
        let m = watcher.wait_type("message").await;
        assert_eq!(m["offset"], ack["offset"], "{way}: {m}");
        assert_eq!(m["message"]["priority"], "low", "{way}: {m}");
    }
    // Staff may raise to high, not to urgent.
    let mut staff = node.connect(&staff_token).await;
    let urgent = staff
        .request(json!({
            "type": "publish", "channel": "room:101", "event": "CHAT_MESSAGE", "priority": "urgent"
        }))
        .await;
    assert_eq!(urgent["code"], "forbidden", "{urgent}");
    let high = staff
        .request(json!({
            "type": "publish", "channel": "room:101", "event": "CHAT_MESSAGE", "priority": "high"
        }))
        .await;
    assert_eq!(high["type"], "ack", "{high}");
    assert!(
        node.metric("bellhop_errors_total{code=\"forbidden\"}")
            .await
            >= 7.0,
        "refusals are counted"
    );
}

#[tokio::test]
async fn a_rotated_jwks_is_picked_up_by_a_running_node_and_a_bad_one_is_ignored() {
    let files = KeyFiles::new();
    let k = keys();
    // Mounted the Kubernetes way: a symlink into a directory swapped atomically.
    let path = files.swap("jwks.json", &jwks(&[&k.r1]));
    let node = TestNode::start_with(Backend::Memory, |c| {
        c.auth = auth(JwtAlgorithm::Rs256, KeySource::JwksFile(path));
        c.auth.keys_reload_interval = Duration::from_millis(50);
    })
    .await;
    assert_eq!(node.metric("bellhop_jwt_keys").await, 1.0);
    let t1 = sign(&k.r1, Some("r1"), &good("s1", Role::Staff, "h1", &[], &[]));
    let t2 = sign(&k.r2, Some("r2"), &good("s2", Role::Staff, "h1", &[], &[]));
    node.connect(&t1).await;
    node.assert_token_refused(&t2, "unknown key id").await;
    // Rotation: the new key joins the set; the node picks it up without a restart.
    files.swap("jwks.json", &jwks(&[&k.r1, &k.r2]));
    node.wait_metric("bellhop_jwt_key_reloads_total{result=\"ok\"}", 1.0)
        .await;
    assert_eq!(node.metric("bellhop_jwt_keys").await, 2.0);
    node.connect(&t2).await;
    // A broken file is refused (and counted); the keys in use go on verifying.
    files.swap("jwks.json", "{\"keys\": [{\"kty\": \"RSA\"");
    node.wait_metric("bellhop_jwt_key_reloads_total{result=\"error\"}", 1.0)
        .await;
    node.connect(&t1).await;
    node.connect(&t2).await;
    // The old key leaves the set: its tokens stop working.
    files.swap("jwks.json", &jwks(&[&k.r2]));
    node.wait_metric("bellhop_jwt_key_reloads_total{result=\"ok\"}", 2.0)
        .await;
    node.assert_token_refused(&t1, "unknown key id").await;
    node.connect(&t2).await;
}
