//! Token verification: JWTs carrying the Bellhop
//! claims, under exactly one algorithm pinned by configuration, and the reload of their key file
//! (key parsing is in `keys`, signing for `bellhop token` and tests in `signer`).
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

mod keys;
mod signer;
#[cfg(test)]
mod tests;

use keys::*;
pub use signer::{mint, TokenSigner};

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
