//! Token verification (and, for `bellhop token` and tests, signing): JWTs carrying the Bellhop
//! claims, under exactly one algorithm pinned by configuration.
//!
//! - **HS256** with a shared secret, **RS256** or **ES256** with a PEM public key file or a JSON
//!   Web Key Set file ([`KeySource`]).
//! - The header's `alg` must equal the pinned algorithm, checked before any key is chosen: `none`,
//!   and an HS256 token "signed" with the RSA public key as HMAC secret (algorithm confusion), are
//!   refused whatever their signature. `crit` header parameters are refused (none is understood);
//!   keys embedded in a token (`jwk`, `jku`, `x5u`, `x5c`) are never used.
//! - With a JWKS, the header's `kid` selects the key; a token without `kid` is accepted only when
//!   the set holds exactly one key of the pinned algorithm.
//! - `exp` is required and `nbf` honoured, both with the configured leeway; `iss` and `aud` are
//!   required and checked when configured.
//! - Key files are read again by [`watch_keys`]: a changed file whose keys parse replaces the
//!   keys in use, a bad one is refused and the previous keys go on verifying.
//!
//! Nothing here panics on a token: every malformed part is an [`AuthError`].

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Weak};
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bellhop_protocol::{is_valid_id, Role};
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use parking_lot::{Mutex, RwLock};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::{AuthConfig, JwtAlgorithm, KeySource};
use crate::metrics::Metrics;

/// Largest key or JWKS file read (1 MiB): a JWKS of a few dozen keys is a few tens of KiB.
const MAX_KEY_FILE_BYTES: u64 = 1 << 20;

/// Shortest RSA modulus accepted, in bits.
const MIN_RSA_BITS: usize = 2048;

/// The claims of a Bellhop token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: String,
    /// The role.
    pub role: Role,
    /// The property id.
    pub prop: String,
    /// Rooms a guest stays in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    /// Departments a staff member works in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depts: Vec<String>,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Issued at, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<u64>,
    /// Not before, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The issuer; checked when `JWT_ISSUER` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iss: Option<String>,
    /// The audience; checked when `JWT_AUDIENCE` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<Audience>,
}

/// A token's `aud`: one string or a list (RFC 7519 allows both).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Audience {
    /// `"aud": "bellhop"`.
    One(String),
    /// `"aud": ["bellhop", "other"]`.
    Many(Vec<String>),
}

/// An authenticated user, as the policy sees them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    /// The user id (`sub`).
    pub user_id: String,
    /// The role.
    pub role: Role,
    /// The property (`prop`): nobody crosses it.
    pub property: String,
    /// A guest's rooms.
    pub rooms: BTreeSet<String>,
    /// A staff member's departments.
    pub depts: BTreeSet<String>,
    /// When the token expires, seconds since the Unix epoch.
    pub expires_at: u64,
}

/// Why a token was refused. Every variant maps to `unauthorized` (HTTP 401, close 4001).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token was presented.
    #[error("missing token: send Authorization: Bearer <jwt>, ?token=<jwt>, or an auth frame")]
    Missing,
    /// The token has expired.
    #[error("token expired")]
    Expired,
    /// Signature, algorithm, key, format, issuer, audience or timing is wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
}

fn invalid(reason: impl Into<String>) -> AuthError {
    AuthError::Invalid(reason.into())
}

/// Why keys could not be loaded, or a signing key used. Names the setting.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The configuration is inconsistent.
    #[error("{0}")]
    Config(String),
    /// The key file could not be read.
    #[error("{setting}={}: cannot read it: {reason}", path.display())]
    Read {
        /// `JWT_PUBLIC_KEY_PATH` or `JWT_JWKS_PATH`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// The IO error.
        reason: String,
    },
    /// The key file holds no usable key.
    #[error("{setting}={}: {reason}", path.display())]
    Invalid {
        /// `JWT_PUBLIC_KEY_PATH` or `JWT_JWKS_PATH`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A signing key cannot be used.
    #[error("{0}")]
    Signing(String),
}

/// The verification keys in use.
enum KeySet {
    /// One key for every token, whatever its `kid`: the HS256 secret or a PEM public key.
    One(DecodingKey),
    /// A JWKS: keys by `kid`.
    Jwks {
        /// Usable keys that have a `kid`.
        by_kid: HashMap<String, DecodingKey>,
        /// The key for tokens without `kid`: only when the set holds exactly one usable key.
        sole: Option<DecodingKey>,
        /// Usable keys in the set.
        len: usize,
    },
}

impl KeySet {
    fn len(&self) -> usize {
        match self {
            KeySet::One(_) => 1,
            KeySet::Jwks { len, .. } => *len,
        }
    }

    fn select(&self, kid: Option<&str>) -> Result<&DecodingKey, AuthError> {
        match (self, kid) {
            (KeySet::One(key), _) => Ok(key),
            (KeySet::Jwks { by_kid, .. }, Some(kid)) => by_kid
                .get(kid)
                .ok_or_else(|| invalid("unknown key id (kid)")),
            (
                KeySet::Jwks {
                    sole: Some(key), ..
                },
                None,
            ) => Ok(key),
            (KeySet::Jwks { len, .. }, None) => Err(invalid(format!(
                "the token has no kid and the key set holds {len} keys"
            ))),
        }
    }
}

/// The parts of a token's header looked at before the signature: read by hand so that an
/// unknown algorithm (`none`) gets a clear refusal rather than a parse error.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Vec<String>>,
}

fn raw_header(token: &str) -> Result<RawHeader, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(invalid(
            "malformed token: expected three dot-separated parts",
        ));
    };
    let bytes = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| invalid("malformed token header: not base64url"))?;
    serde_json::from_slice(&bytes).map_err(|_| invalid("malformed token header"))
}

/// What the key file last held, so an unchanged file is not parsed again and a refused one is
/// reported once.
#[derive(Default)]
struct Seen {
    /// The content the keys in use were parsed from.
    loaded: Vec<u8>,
    /// The last refusal: an unreadable file (its error) or refused content.
    failed: Option<Failure>,
}

#[derive(PartialEq, Eq)]
enum Failure {
    Read(String),
    Content(Vec<u8>),
}

/// What [`Verifier::reload`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Reload {
    /// The file holds what is in use (or what was already refused): nothing changed.
    Unchanged,
    /// The file changed and its keys are now in use.
    Reloaded {
        /// Usable keys now in use.
        keys: usize,
    },
    /// The file changed (or cannot be read) and was refused; the previous keys stay in use.
    Rejected(KeyError),
}

/// Verifies tokens under the pinned algorithm with the current keys.
pub struct Verifier {
    /// The one algorithm accepted.
    algorithm: JwtAlgorithm,
    /// Where the keys come from (the file to read again).
    source: KeySource,
    /// Pinned algorithm, required claims, issuer, audience and leeway.
    validation: Validation,
    /// The keys in use; replaced whole on reload, read by cloning the `Arc`.
    keys: RwLock<Arc<KeySet>>,
    /// The key file's last content, for reloads.
    seen: Mutex<Seen>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithm", &self.algorithm)
            .field("source", &self.source)
            .field("keys", &self.key_count())
            .finish()
    }
}

impl Verifier {
    /// A verifier for `config`, with the keys read from its key file (if any).
    pub fn new(config: &AuthConfig) -> Result<Self, KeyError> {
        config.validate().map_err(KeyError::Config)?;
        let algorithm = config.algorithm;
        let mut validation = Validation::new(jwt_algorithm(algorithm));
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if let Some(iss) = &config.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        // Without a configured audience a token's `aud` is not checked (it is not ours to
        // judge); with one, it must be present and name it.
        validation.validate_aud = config.audience.is_some();
        if let Some(aud) = &config.audience {
            validation.set_audience(&[aud]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        let (keys, loaded) = match &config.keys {
            KeySource::Secret(secret) => (KeySet::One(DecodingKey::from_secret(secret)), vec![]),
            file => {
                let content = read_key_file(file)?;
                let keys = parse_keys(algorithm, file, &content)?;
                (keys, content)
            }
        };
        Ok(Verifier {
            algorithm,
            source: config.keys.clone(),
            validation,
            keys: RwLock::new(Arc::new(keys)),
            seen: Mutex::new(Seen {
                loaded,
                failed: None,
            }),
        })
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// The key file read again by [`Verifier::reload`], if keys come from a file.
    pub fn key_file(&self) -> Option<&Path> {
        self.source.path()
    }

    /// The setting the keys come from (`JWT_SECRET`, `JWT_PUBLIC_KEY_PATH`, `JWT_JWKS_PATH`).
    pub fn key_setting(&self) -> &'static str {
        self.source.setting()
    }

    /// Usable keys in use.
    pub fn key_count(&self) -> usize {
        self.keys.read().len()
    }

    /// Checks a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let header = raw_header(token)?;
        if header.alg != self.algorithm.as_str() {
            return Err(invalid(format!(
                "algorithm {:?} is not accepted: this node requires {}",
                header.alg.chars().take(32).collect::<String>(),
                self.algorithm
            )));
        }
        if header.crit.is_some_and(|c| !c.is_empty()) {
            return Err(invalid(
                "critical header parameters (crit) are not supported",
            ));
        }
        let keys = self.keys.read().clone();
        let key = keys.select(header.kid.as_deref())?;
        // Decoded as JSON first, so the standard claims are validated (with precise reasons)
        // before the Bellhop claims are read.
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &self.validation)
            .map_err(|e| {
                match e.kind() {
                    ErrorKind::ExpiredSignature => AuthError::Expired,
                    ErrorKind::ImmatureSignature => invalid("token not valid yet (nbf)"),
                    ErrorKind::InvalidSignature => invalid("bad signature"),
                    ErrorKind::InvalidIssuer => invalid("wrong issuer (iss)"),
                    ErrorKind::InvalidAudience => invalid("wrong audience (aud)"),
                    ErrorKind::MissingRequiredClaim(c) => invalid(format!("missing claim {c}")),
                    ErrorKind::InvalidClaimFormat(c) => invalid(format!("malformed claim {c}")),
                    ErrorKind::InvalidAlgorithm => invalid("algorithm not accepted"),
                    ErrorKind::Json(_) => invalid("malformed claims"),
                    ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => {
                        invalid("malformed token")
                    }
                    // A key that cannot verify (it parsed at load time, so this is unexpected):
                    // the token is refused, and nothing about the key is said.
                    _ => invalid("cannot verify the token"),
                }
            })?;
        let c: Claims = serde_json::from_value(data.claims)
            .map_err(|e| invalid(format!("malformed claims: {e}")))?;
        let ids_ok = is_valid_id(&c.sub)
            && is_valid_id(&c.prop)
            && c.rooms.iter().all(|r| is_valid_id(r))
            && c.depts.iter().all(|d| is_valid_id(d));
        if !ids_ok {
            return Err(invalid(
                "sub, prop, rooms and depts must match [A-Za-z0-9_.-]{1,64}",
            ));
        }
        Ok(Principal {
            user_id: c.sub,
            role: c.role,
            property: c.prop,
            rooms: c.rooms.into_iter().collect(),
            depts: c.depts.into_iter().collect(),
            expires_at: c.exp,
        })
    }

    /// Reads the key file again. Content different from the keys in use, and from what was
    /// last refused, is parsed: good keys replace the ones in use; bad ones are refused and the
    /// keys in use stay. The path is opened anew each time, so a file replaced by a rename or a
    /// Kubernetes `..data` symlink swap is seen. Does blocking IO (call it off the runtime).
    pub fn reload(&self) -> Reload {
        if matches!(self.source, KeySource::Secret(_)) {
            return Reload::Unchanged;
        }
        let mut seen = self.seen.lock();
        let content = match read_key_file(&self.source) {
            Ok(content) => content,
            Err(e) => {
                let failure = Failure::Read(e.to_string());
                if seen.failed.as_ref() == Some(&failure) {
                    return Reload::Unchanged;
                }
                seen.failed = Some(failure);
                return Reload::Rejected(e);
            }
        };
        if content == seen.loaded {
            seen.failed = None;
            return Reload::Unchanged;
        }
        if seen.failed.as_ref() == Some(&Failure::Content(content.clone())) {
            return Reload::Unchanged;
        }
        match parse_keys(self.algorithm, &self.source, &content) {
            Ok(keys) => {
                let n = keys.len();
                *self.keys.write() = Arc::new(keys);
                seen.loaded = content;
                seen.failed = None;
                Reload::Reloaded { keys: n }
            }
            Err(e) => {
                seen.failed = Some(Failure::Content(content));
                Reload::Rejected(e)
            }
        }
    }
}

fn jwt_algorithm(a: JwtAlgorithm) -> Algorithm {
    match a {
        JwtAlgorithm::Hs256 => Algorithm::HS256,
        JwtAlgorithm::Rs256 => Algorithm::RS256,
        JwtAlgorithm::Es256 => Algorithm::ES256,
    }
}

fn read_key_file(source: &KeySource) -> Result<Vec<u8>, KeyError> {
    let Some(path) = source.path() else {
        return Ok(Vec::new());
    };
    let read_error = |reason: String| KeyError::Read {
        setting: source.setting(),
        path: path.to_owned(),
        reason,
    };
    // `metadata` follows symlinks: the size is the current target's.
    let meta = std::fs::metadata(path).map_err(|e| read_error(e.to_string()))?;
    if !meta.is_file() {
        return Err(read_error("not a regular file".into()));
    }
    if meta.len() > MAX_KEY_FILE_BYTES {
        return Err(read_error(format!(
            "larger than {MAX_KEY_FILE_BYTES} bytes"
        )));
    }
    std::fs::read(path).map_err(|e| read_error(e.to_string()))
}

fn parse_keys(
    algorithm: JwtAlgorithm,
    source: &KeySource,
    content: &[u8],
) -> Result<KeySet, KeyError> {
    let result = match source {
        KeySource::Secret(secret) => Ok(KeySet::One(DecodingKey::from_secret(secret))),
        KeySource::PublicKeyFile(_) => parse_pem_public_key(algorithm, content).map(KeySet::One),
        KeySource::JwksFile(_) => parse_jwks(algorithm, content),
    };
    result.map_err(|reason| KeyError::Invalid {
        setting: source.setting(),
        path: source.path().map(Path::to_owned).unwrap_or_default(),
        reason,
    })
}

/// The label of the single PEM block in `text` (`PUBLIC KEY`, `PRIVATE KEY`, ...).
fn pem_label(text: &str) -> Result<&str, String> {
    const BEGIN: &str = "-----BEGIN ";
    match text.matches(BEGIN).count() {
        0 => return Err("not a PEM file (no -----BEGIN line)".into()),
        1 => {}
        n => return Err(format!("holds {n} PEM blocks; give exactly one public key")),
    }
    let start = text.find(BEGIN).map_or(0, |i| i + BEGIN.len());
    let rest = &text[start..];
    rest.find("-----")
        .map(|end| &rest[..end])
        .ok_or_else(|| "not a PEM file (unterminated -----BEGIN line)".into())
}

/// A PEM public key for `algorithm`, checked to be usable.
fn parse_pem_public_key(algorithm: JwtAlgorithm, content: &[u8]) -> Result<DecodingKey, String> {
    let text = std::str::from_utf8(content).map_err(|_| "not a PEM file (not text)")?;
    let label = pem_label(text)?;
    match label {
        "PUBLIC KEY" => {}
        "RSA PUBLIC KEY" if algorithm == JwtAlgorithm::Rs256 => {}
        "RSA PUBLIC KEY" => return Err(format!("holds an RSA key, not an {algorithm} key")),
        "CERTIFICATE" => {
            return Err(
                "holds a certificate: give its public key (openssl x509 -pubkey -noout -in cert.pem)"
                    .into(),
            )
        }
        l if l.contains("PRIVATE KEY") => {
            return Err(
                "holds a private key: give the public key (openssl pkey -pubout); the signing key never belongs on the gateway"
                    .into(),
            )
        }
        other => return Err(format!("unexpected PEM block {other:?}: expected PUBLIC KEY")),
    }
    match algorithm {
        JwtAlgorithm::Rs256 => {
            let key = DecodingKey::from_rsa_pem(content)
                .map_err(|_| "not an RSA public key (RS256 needs one)".to_string())?;
            let der = key
                .try_get_as_bytes()
                .map_err(|_| "not an RSA public key".to_string())?;
            let rsa_key: rsa::RsaPublicKey = rsa::pkcs1::DecodeRsaPublicKey::from_pkcs1_der(der)
                .map_err(|e| format!("not a valid RSA public key: {e}"))?;
            check_rsa(&rsa_key)?;
            Ok(key)
        }
        JwtAlgorithm::Es256 => {
            let key = DecodingKey::from_ec_pem(content)
                .map_err(|_| "not an EC public key (ES256 needs a P-256 key)".to_string())?;
            check_p256(&key)?;
            Ok(key)
        }
        JwtAlgorithm::Hs256 => Err("HS256 verifies with JWT_SECRET, not a key file".into()),
    }
}

fn check_rsa(key: &rsa::RsaPublicKey) -> Result<(), String> {
    use rsa::traits::PublicKeyParts;
    let bits = key.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    Ok(())
}

fn check_p256(key: &DecodingKey) -> Result<(), String> {
    let point = key
        .try_get_as_bytes()
        .map_err(|_| "not an EC public key".to_string())?;
    p256::PublicKey::from_sec1_bytes(point)
        .map(|_| ())
        .map_err(|_| "not a P-256 public key (ES256 needs the P-256 curve)".to_string())
}

/// The usable keys of a JWKS for `algorithm`. Keys for another algorithm or use are skipped (an
/// identity provider's set often holds encryption keys too); a key of the right type that is
/// broken, two keys with one `kid`, or no usable key at all refuse the whole file.
fn parse_jwks(algorithm: JwtAlgorithm, content: &[u8]) -> Result<KeySet, String> {
    #[derive(Deserialize)]
    struct RawSet {
        keys: Vec<serde_json::Value>,
    }
    let set: RawSet = serde_json::from_slice(content)
        .map_err(|e| format!("not a JSON Web Key Set ({{\"keys\": [...]}}): {e}"))?;
    let mut by_kid = HashMap::new();
    let mut all = Vec::new();
    let mut skipped = 0usize;
    for (i, raw) in set.keys.into_iter().enumerate() {
        let name = raw
            .get("kid")
            .and_then(|k| k.as_str())
            .map_or_else(|| format!("key #{i}"), |k| format!("key {k:?}"));
        let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
            skipped += 1;
            continue;
        };
        let Some(key) = usable_key(algorithm, &jwk).map_err(|e| format!("{name}: {e}"))? else {
            skipped += 1;
            continue;
        };
        if let Some(kid) = &jwk.common.key_id {
            if by_kid.insert(kid.clone(), key.clone()).is_some() {
                return Err(format!("two {algorithm} keys have the kid {kid:?}"));
            }
        }
        all.push(key);
    }
    if all.is_empty() {
        return Err(format!(
            "no {algorithm} signing key in the set ({skipped} other keys skipped)"
        ));
    }
    let len = all.len();
    let sole = if len == 1 { all.pop() } else { None };
    Ok(KeySet::Jwks { by_kid, sole, len })
}

/// `Ok(None)` for a key meant for another algorithm or use; an error for a key of the right
/// type whose material is broken.
fn usable_key(algorithm: JwtAlgorithm, jwk: &Jwk) -> Result<Option<DecodingKey>, String> {
    let common = &jwk.common;
    if common
        .public_key_use
        .as_ref()
        .is_some_and(|u| *u != PublicKeyUse::Signature)
    {
        return Ok(None);
    }
    if common
        .key_operations
        .as_ref()
        .is_some_and(|ops| !ops.contains(&jsonwebtoken::jwk::KeyOperations::Verify))
    {
        return Ok(None);
    }
    let wanted = match algorithm {
        JwtAlgorithm::Rs256 => KeyAlgorithm::RS256,
        JwtAlgorithm::Es256 => KeyAlgorithm::ES256,
        JwtAlgorithm::Hs256 => return Ok(None),
    };
    if common.key_algorithm.is_some_and(|a| a != wanted) {
        return Ok(None);
    }
    match (&jwk.algorithm, algorithm) {
        (AlgorithmParameters::RSA(p), JwtAlgorithm::Rs256) => {
            let n = URL_SAFE_NO_PAD
                .decode(&p.n)
                .map_err(|_| "n is not base64url")?;
            let e = URL_SAFE_NO_PAD
                .decode(&p.e)
                .map_err(|_| "e is not base64url")?;
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&n),
                rsa::BigUint::from_bytes_be(&e),
            )
            .map_err(|e| format!("not a valid RSA public key: {e}"))?;
            check_rsa(&key)?;
            Ok(Some(DecodingKey::from_rsa_raw_components(&n, &e)))
        }
        (AlgorithmParameters::EllipticCurve(p), JwtAlgorithm::Es256) => {
            if p.curve != EllipticCurve::P256 {
                return Ok(None);
            }
            let key = DecodingKey::from_ec_components(&p.x, &p.y)
                .map_err(|_| "x or y is not base64url")?;
            check_p256(&key)?;
            Ok(Some(key))
        }
        _ => Ok(None),
    }
}

/// Reads the key file again every `every`, logging each change (info) and each refused file
/// (error), and counting them in `bellhop_jwt_key_reloads_total{result}`. Ends when `stop`
/// changes or is dropped, or when the verifier is gone.
pub(crate) async fn watch_keys(
    verifier: Weak<Verifier>,
    metrics: Metrics,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let start = tokio::time::Instant::now() + every;
    let mut tick = tokio::time::interval_at(start, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(v) = verifier.upgrade() else {
            return;
        };
        let path = v
            .key_file()
            .map(|p| p.display().to_string())
            .unwrap_or_default();
        let setting = v.key_setting();
        let outcome = match tokio::task::spawn_blocking(move || v.reload()).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::error!(error = %e, "JWT key reload failed");
                continue;
            }
        };
        match outcome {
            Reload::Unchanged => {}
            Reload::Reloaded { keys } => {
                tracing::info!(setting, path, keys, "JWT keys reloaded");
                metrics.jwt_key_reloads.with_label_values(&["ok"]).inc();
                metrics
                    .jwt_keys
                    .set(i64::try_from(keys).unwrap_or(i64::MAX));
            }
            Reload::Rejected(e) => {
                tracing::error!(error = %e, "JWT key file refused; the previous keys stay in use");
                metrics.jwt_key_reloads.with_label_values(&["error"]).inc();
            }
        }
    }
}

/// Signs tokens: what `bellhop token` and the tests use. Never used by a serving node.
pub struct TokenSigner {
    /// The algorithm written in the header.
    algorithm: JwtAlgorithm,
    /// The secret or private key.
    key: EncodingKey,
    /// The `kid` written in the header, if any.
    kid: Option<String>,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("algorithm", &self.algorithm)
            .field("kid", &self.kid)
            .finish()
    }
}

impl TokenSigner {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        TokenSigner {
            algorithm: JwtAlgorithm::Hs256,
            key: EncodingKey::from_secret(secret),
            kid: None,
        }
    }

    /// RS256 or ES256 with a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) for both, or PKCS#1
    /// (`BEGIN RSA PRIVATE KEY`) for RS256.
    pub fn from_pem(algorithm: JwtAlgorithm, pem: &[u8]) -> Result<Self, KeyError> {
        let label = std::str::from_utf8(pem)
            .map_err(|_| KeyError::Signing("the key is not a PEM file".into()))
            .and_then(|t| pem_label(t).map_err(KeyError::Signing))?;
        let key = match (algorithm, label) {
            (JwtAlgorithm::Hs256, _) => {
                return Err(KeyError::Signing(
                    "HS256 signs with JWT_SECRET, not a key file".into(),
                ))
            }
            (_, "EC PRIVATE KEY") => {
                return Err(KeyError::Signing(
                    "a SEC1 EC key: convert it to PKCS#8 first (openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.p8.pem)"
                        .into(),
                ))
            }
            (_, l) if !l.contains("PRIVATE KEY") => {
                return Err(KeyError::Signing(format!(
                    "expected a private key, found a PEM {l:?} block"
                )))
            }
            (JwtAlgorithm::Rs256, _) => EncodingKey::from_rsa_pem(pem).map_err(|_| {
                KeyError::Signing("not an RSA private key (RS256 needs one)".into())
            })?,
            (JwtAlgorithm::Es256, _) => EncodingKey::from_ec_pem(pem).map_err(|_| {
                KeyError::Signing("not an EC private key (ES256 needs a P-256 key)".into())
            })?,
        };
        let signer = TokenSigner {
            algorithm,
            key,
            kid: None,
        };
        // A key of the wrong kind or curve fails here rather than on first use.
        jsonwebtoken::crypto::sign(b"probe", &signer.key, jwt_algorithm(algorithm))
            .map_err(|_| KeyError::Signing(format!("this key cannot sign {algorithm} tokens")))?;
        Ok(signer)
    }

    /// The same signer writing `kid` in each token's header.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The algorithm it signs with.
    pub fn algorithm(&self) -> JwtAlgorithm {
        self.algorithm
    }

    /// A signed token carrying `claims`.
    pub fn sign(&self, claims: &Claims) -> Result<String, AuthError> {
        let mut header = Header::new(jwt_algorithm(self.algorithm));
        header.kid = self.kid.clone();
        jsonwebtoken::encode(&header, claims, &self.key).map_err(|e| invalid(e.to_string()))
    }
}

/// Signs claims with an HS256 secret.
pub fn mint(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    TokenSigner::hs256(secret).sign(claims)
}

#[cfg(test)]
mod tests {
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
}
