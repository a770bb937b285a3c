//! Verification, reload and signing, with real keys from the test kit.

use super::*;
use std::sync::OnceLock;

use bellhop_testkit::{jwks, KeyFiles, TestSigningKey};

const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

fn config() -> AuthConfig {
    let mut c = AuthConfig::hs256(SECRET);
    c.leeway = Duration::ZERO;
    c
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(exp_from_now: i64) -> Claims {
    Claims {
        sub: "g1".into(),
        role: Role::Guest,
        prop: "h1".into(),
        rooms: vec!["101".into()],
        depts: vec![],
        exp: (now() as i64 + exp_from_now) as u64,
        iat: None,
        nbf: None,
        iss: None,
        aud: None,
    }
}

fn b64(s: &str) -> String {
    URL_SAFE_NO_PAD.encode(s)
}

/// RSA keys are slow to make: two per test binary, shared.
fn rsa_keys() -> &'static (TestSigningKey, TestSigningKey) {
    static KEYS: OnceLock<(TestSigningKey, TestSigningKey)> = OnceLock::new();
    KEYS.get_or_init(|| (TestSigningKey::rsa("r1"), TestSigningKey::rsa("r2")))
}

fn signer(key: &TestSigningKey) -> TokenSigner {
    let alg = JwtAlgorithm::parse(key.kind.alg()).unwrap();
    TokenSigner::from_pem(alg, key.private_pem.as_bytes())
        .unwrap()
        .with_kid(&key.kid)
}

fn file_verifier(
    files: &KeyFiles,
    alg: JwtAlgorithm,
    source: fn(PathBuf) -> KeySource,
    content: &str,
) -> Result<Verifier, KeyError> {
    let path = files.write("keys", content);
    let mut c = AuthConfig::with_keys(alg, source(path));
    c.leeway = Duration::ZERO;
    Verifier::new(&c)
}

fn is_invalid(r: Result<Principal, AuthError>, needle: &str) -> bool {
    matches!(r, Err(AuthError::Invalid(m)) if m.contains(needle))
}

#[test]
fn a_valid_token_names_its_principal() {
    let token = mint(SECRET, &claims(60)).unwrap();
    let p = Verifier::new(&config()).unwrap().verify(&token).unwrap();
    assert_eq!(
        (p.user_id.as_str(), p.role, p.property.as_str()),
        ("g1", Role::Guest, "h1")
    );
    assert!(p.rooms.contains("101"));
}

#[test]
fn expired_wrongly_signed_unsigned_and_malformed_tokens_are_refused() {
    let v = Verifier::new(&config()).unwrap();
    assert_eq!(
        v.verify(&mint(SECRET, &claims(-10)).unwrap()),
        Err(AuthError::Expired)
    );
    assert!(is_invalid(
        v.verify(&mint(b"another-secret", &claims(60)).unwrap()),
        "bad signature"
    ));
    assert!(is_invalid(v.verify("not.a.token"), "malformed"));
    assert!(is_invalid(v.verify(""), "malformed"));
    assert!(is_invalid(v.verify("a.b.c.d"), "malformed"));
    let body = serde_json::to_string(&claims(60)).unwrap();
    for alg in ["none", "None", "NONE", "hs256"] {
        let unsigned = format!("{}.{}.", b64(&format!(r#"{{"alg":"{alg}"}}"#)), b64(&body));
        assert!(is_invalid(v.verify(&unsigned), "not accepted"), "{alg}");
    }
    // A valid signature over tampered claims is impossible to forge; tampering breaks it.
    let good = mint(SECRET, &claims(60)).unwrap();
    let parts: Vec<&str> = good.split('.').collect();
    let mut admin = claims(60);
    admin.role = Role::Admin;
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_string(&admin).unwrap()),
        parts[2]
    );
    assert!(is_invalid(v.verify(&tampered), "bad signature"));
    let crit = format!(
        "{}.{}.x",
        b64(r#"{"alg":"HS256","crit":["exp"]}"#),
        b64(&body)
    );
    assert!(is_invalid(v.verify(&crit), "crit"));
}

#[test]
fn claims_with_invalid_ids_are_refused() {
    let mut c = claims(60);
    c.rooms = vec!["10 1".into()];
    let token = mint(SECRET, &c).unwrap();
    assert!(is_invalid(
        Verifier::new(&config()).unwrap().verify(&token),
        "must match"
    ));
}

#[test]
fn rs256_and_es256_tokens_verify_with_a_pem_public_key() {
    let files = KeyFiles::new();
    let ec = TestSigningKey::ec("e1");
    for (alg, key) in [
        (JwtAlgorithm::Rs256, &rsa_keys().0),
        (JwtAlgorithm::Es256, &ec),
    ] {
        let v = file_verifier(&files, alg, KeySource::PublicKeyFile, &key.public_pem).unwrap();
        let token = signer(key).sign(&claims(60)).unwrap();
        assert_eq!(v.verify(&token).unwrap().user_id, "g1", "{alg}");
        // A PEM key serves every token, whatever its kid.
        let other_kid = signer(&key.with_kid("zz")).sign(&claims(60)).unwrap();
        assert!(v.verify(&other_kid).is_ok(), "{alg}");
    }
}

#[test]
fn the_pinned_algorithm_refuses_every_other_one() {
    let files = KeyFiles::new();
    let (rsa, _) = rsa_keys();
    let ec = TestSigningKey::ec("e1");
    let rs = file_verifier(
        &files,
        JwtAlgorithm::Rs256,
        KeySource::PublicKeyFile,
        &rsa.public_pem,
    )
    .unwrap();
    // Algorithm confusion: HS256 with the public key (PEM text, as a naive verifier would
    // use it) as the HMAC secret.
    let confused = mint(rsa.public_pem.as_bytes(), &claims(60)).unwrap();
    assert!(is_invalid(
        rs.verify(&confused),
        "\"HS256\" is not accepted"
    ));
    let es_token = signer(&ec).sign(&claims(60)).unwrap();
    assert!(is_invalid(
        rs.verify(&es_token),
        "\"ES256\" is not accepted"
    ));
    let hs = Verifier::new(&config()).unwrap();
    let rs_token = signer(rsa).sign(&claims(60)).unwrap();
    assert!(is_invalid(
        hs.verify(&rs_token),
        "\"RS256\" is not accepted"
    ));
}

#[test]
fn jwks_selects_by_kid_and_takes_a_kidless_token_only_from_a_one_key_set() {
    let files = KeyFiles::new();
    let (r1, r2) = rsa_keys();
    let set = jwks(&[r1, r2]);
    let v = file_verifier(&files, JwtAlgorithm::Rs256, KeySource::JwksFile, &set).unwrap();
    assert_eq!(v.key_count(), 2);
    assert!(v.verify(&signer(r1).sign(&claims(60)).unwrap()).is_ok());
    assert!(v.verify(&signer(r2).sign(&claims(60)).unwrap()).is_ok());
    // r1's key under r2's kid: the wrong key is selected, the signature fails.
    let swapped = signer(&r1.with_kid("r2")).sign(&claims(60)).unwrap();
    assert!(is_invalid(v.verify(&swapped), "bad signature"));
    let unknown = signer(&r1.with_kid("r9")).sign(&claims(60)).unwrap();
    assert!(is_invalid(v.verify(&unknown), "unknown key id"));
    let kidless = TokenSigner::from_pem(JwtAlgorithm::Rs256, r1.private_pem.as_bytes())
        .unwrap()
        .sign(&claims(60))
        .unwrap();
    assert!(is_invalid(v.verify(&kidless), "no kid"));
    let one = file_verifier(
        &files,
        JwtAlgorithm::Rs256,
        KeySource::JwksFile,
        &jwks(&[r1]),
    )
    .unwrap();
    assert!(one.verify(&kidless).is_ok());
}

#[test]
fn jwks_skips_keys_for_other_uses_and_refuses_sets_without_a_usable_key() {
    let files = KeyFiles::new();
    let (r1, r2) = rsa_keys();
    let ec = TestSigningKey::ec("e1");
    let mut enc = r2.jwk.clone();
    enc["use"] = "enc".into();
    let mut other_alg = r2.with_kid("ps").jwk;
    other_alg["alg"] = "PS256".into();
    let set = serde_json::json!({"keys": [
        r1.jwk, enc, other_alg, ec.jwk, {"kty": "oct", "k": "c2VjcmV0"}, {"kty": "weird"}
    ]})
    .to_string();
    let v = file_verifier(&files, JwtAlgorithm::Rs256, KeySource::JwksFile, &set).unwrap();
    assert_eq!(v.key_count(), 1, "only r1 is an RS256 signing key");
    let es = file_verifier(&files, JwtAlgorithm::Es256, KeySource::JwksFile, &set).unwrap();
    assert_eq!(es.key_count(), 1, "only e1 is an ES256 key");
    let refused = |content: &str, needle: &str| {
        let e = file_verifier(&files, JwtAlgorithm::Rs256, KeySource::JwksFile, content)
            .unwrap_err()
            .to_string();
        assert!(e.contains("JWT_JWKS_PATH") && e.contains(needle), "{e}");
    };
    refused(&jwks(&[&ec]), "no RS256 signing key");
    refused(r"{}", "not a JSON Web Key Set");
    refused("not json", "not a JSON Web Key Set");
    refused(&jwks(&[r1, &r2.with_kid("r1")]), "two RS256 keys");
    let mut broken = r1.jwk.clone();
    broken["n"] = "AQAB".into();
    refused(
        &serde_json::json!({ "keys": [broken] }).to_string(),
        "key \"r1\"",
    );
}

#[test]
fn pem_files_with_private_keys_certificates_or_the_wrong_key_type_are_refused() {
    let files = KeyFiles::new();
    let (rsa, _) = rsa_keys();
    let ec = TestSigningKey::ec("e1");
    let refused = |alg, content: &str, needle: &str| {
        let e = file_verifier(&files, alg, KeySource::PublicKeyFile, content)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("JWT_PUBLIC_KEY_PATH") && e.contains(needle),
            "{e}"
        );
    };
    refused(JwtAlgorithm::Rs256, &rsa.private_pem, "private key");
    refused(JwtAlgorithm::Rs256, &ec.public_pem, "not an RSA public key");
    refused(JwtAlgorithm::Es256, &rsa.public_pem, "not an EC public key");
    refused(JwtAlgorithm::Rs256, "hello", "not a PEM file");
    let two = format!("{}{}", rsa.public_pem, rsa.public_pem);
    refused(JwtAlgorithm::Rs256, &two, "2 PEM blocks");
    let certs = bellhop_testkit::TestCerts::new("x");
    let cert = std::fs::read_to_string(certs.cert()).unwrap();
    refused(JwtAlgorithm::Es256, &cert, "certificate");
    let missing = AuthConfig::with_keys(
        JwtAlgorithm::Rs256,
        KeySource::PublicKeyFile(files.path("absent.pem")),
    );
    let e = Verifier::new(&missing).unwrap_err().to_string();
    assert!(
        e.contains("JWT_PUBLIC_KEY_PATH") && e.contains("cannot read"),
        "{e}"
    );
}

#[test]
fn issuer_audience_and_not_before_are_checked() {
    let mut c = config();
    c.issuer = Some("https://id.example".into());
    c.audience = Some("bellhop".into());
    let v = Verifier::new(&c).unwrap();
    let with = |iss: Option<&str>, aud: Option<Audience>| {
        let mut cl = claims(60);
        cl.iss = iss.map(Into::into);
        cl.aud = aud;
        v.verify(&mint(SECRET, &cl).unwrap())
    };
    let one = |a: &str| Some(Audience::One(a.into()));
    assert!(with(Some("https://id.example"), one("bellhop")).is_ok());
    let many = Some(Audience::Many(vec!["other".into(), "bellhop".into()]));
    assert!(with(Some("https://id.example"), many).is_ok());
    assert!(is_invalid(
        with(Some("https://evil"), one("bellhop")),
        "wrong issuer"
    ));
    assert!(is_invalid(with(None, one("bellhop")), "missing claim iss"));
    assert!(is_invalid(
        with(Some("https://id.example"), one("other")),
        "wrong audience"
    ));
    assert!(is_invalid(
        with(Some("https://id.example"), None),
        "missing claim aud"
    ));
    // Without JWT_AUDIENCE, a token's aud is not judged.
    let plain = Verifier::new(&config()).unwrap();
    let mut cl = claims(60);
    cl.aud = one("anything");
    assert!(plain.verify(&mint(SECRET, &cl).unwrap()).is_ok());
    // nbf in the future is refused, within the leeway accepted.
    let mut cl = claims(600);
    cl.nbf = Some(now() + 120);
    let early = mint(SECRET, &cl).unwrap();
    assert!(is_invalid(plain.verify(&early), "not valid yet"));
    let mut lenient = config();
    lenient.leeway = Duration::from_secs(300);
    assert!(Verifier::new(&lenient).unwrap().verify(&early).is_ok());
}

#[test]
fn a_changed_key_file_is_reloaded_and_a_bad_one_leaves_the_old_keys_in_use() {
    let files = KeyFiles::new();
    let (r1, r2) = rsa_keys();
    let path = files.swap("jwks.json", &jwks(&[r1]));
    let mut c = AuthConfig::with_keys(JwtAlgorithm::Rs256, KeySource::JwksFile(path));
    c.leeway = Duration::ZERO;
    let v = Verifier::new(&c).unwrap();
    let t1 = signer(r1).sign(&claims(60)).unwrap();
    let t2 = signer(r2).sign(&claims(60)).unwrap();
    assert!(v.verify(&t1).is_ok() && v.verify(&t2).is_err());
    assert_eq!(v.reload(), Reload::Unchanged);
    // Rotation the Kubernetes way: both keys during the overlap, then only the new one.
    files.swap("jwks.json", &jwks(&[r1, r2]));
    assert_eq!(v.reload(), Reload::Reloaded { keys: 2 });
    assert!(v.verify(&t1).is_ok() && v.verify(&t2).is_ok());
    files.swap("jwks.json", &jwks(&[r2]));
    assert_eq!(v.reload(), Reload::Reloaded { keys: 1 });
    assert!(v.verify(&t1).is_err() && v.verify(&t2).is_ok());
    // A bad file is refused once, and the keys in use go on verifying.
    files.swap("jwks.json", "{\"keys\": [");
    assert!(matches!(
        v.reload(),
        Reload::Rejected(KeyError::Invalid { .. })
    ));
    assert_eq!(v.reload(), Reload::Unchanged, "reported once");
    assert!(v.verify(&t2).is_ok());
    std::fs::remove_file(files.path("jwks.json")).unwrap();
    assert!(matches!(
        v.reload(),
        Reload::Rejected(KeyError::Read { .. })
    ));
    assert_eq!(v.reload(), Reload::Unchanged, "reported once");
    assert!(v.verify(&t2).is_ok());
    let path = files.write("jwks.json", &jwks(&[r1]));
    assert_eq!(std::fs::read_to_string(path).unwrap(), jwks(&[r1]));
    assert_eq!(v.reload(), Reload::Reloaded { keys: 1 });
    assert!(v.verify(&t1).is_ok() && v.verify(&t2).is_err());
}

#[test]
fn signing_keys_must_be_private_keys_of_the_right_kind() {
    let (rsa, _) = rsa_keys();
    let ec = TestSigningKey::ec("e1");
    let e = |alg, pem: &str| {
        TokenSigner::from_pem(alg, pem.as_bytes())
            .unwrap_err()
            .to_string()
    };
    assert!(e(JwtAlgorithm::Es256, &rsa.private_pem).contains("not an EC private key"));
    assert!(e(JwtAlgorithm::Rs256, &ec.private_pem).contains("not an RSA private key"));
    assert!(e(JwtAlgorithm::Rs256, &rsa.public_pem).contains("expected a private key"));
    assert!(e(JwtAlgorithm::Hs256, &rsa.private_pem).contains("JWT_SECRET"));
    let sec1 = "-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n";
    assert!(e(JwtAlgorithm::Es256, sec1).contains("PKCS#8"));
}
