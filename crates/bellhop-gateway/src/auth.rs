//! Token verification: HS256 JWTs carrying the Bellhop claims. Tokens with any other algorithm
//! (including `none`), a wrong signature, a past `exp`, a future `nbf` or malformed claims are
//! refused.

use std::collections::BTreeSet;

use bellhop_protocol::{is_valid_id, Role};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;

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
    /// Signature, algorithm, format or timing is wrong.
    #[error("invalid token: {0}")]
    Invalid(String),
}

/// Verifies tokens against the configured secret.
pub struct Verifier {
    /// The HS256 key.
    key: DecodingKey,
    /// Pinned algorithm, required claims and leeway.
    validation: Validation,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("algorithms", &self.validation.algorithms)
            .finish()
    }
}

impl Verifier {
    /// A verifier for HS256 tokens signed with `config.secret`.
    pub fn new(config: &AuthConfig) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway.as_secs();
        validation.validate_nbf = true;
        // Issuer and audience checks arrive with production keys; until then a token's `aud`
        // must not make it invalid.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Verifier {
            key: DecodingKey::from_secret(&config.secret),
            validation,
        }
    }

    /// Checks a token and returns who it names.
    pub fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        use jsonwebtoken::errors::ErrorKind;
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation).map_err(
            |e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                _ => AuthError::Invalid(e.to_string()),
            },
        )?;
        let c = data.claims;
        let ids_ok = is_valid_id(&c.sub)
            && is_valid_id(&c.prop)
            && c.rooms.iter().all(|r| is_valid_id(r))
            && c.depts.iter().all(|d| is_valid_id(d));
        if !ids_ok {
            return Err(AuthError::Invalid(
                "sub, prop, rooms and depts must match [A-Za-z0-9_.-]{1,64}".into(),
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
}

/// Signs claims with an HS256 secret: what `bellhop token` and the tests use.
pub fn mint(secret: &[u8], claims: &Claims) -> Result<String, AuthError> {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|e| AuthError::Invalid(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const SECRET: &[u8] = b"test-secret-test-secret-test-secret";

    fn config() -> AuthConfig {
        AuthConfig {
            secret: SECRET.to_vec(),
            leeway: Duration::from_secs(0),
            auth_timeout: Duration::from_secs(5),
        }
    }

    fn claims(exp_from_now: i64) -> Claims {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        Claims {
            sub: "g1".into(),
            role: Role::Guest,
            prop: "h1".into(),
            rooms: vec!["101".into()],
            depts: vec![],
            exp: (now + exp_from_now) as u64,
            iat: None,
        }
    }

    fn b64(s: &str) -> String {
        // Unpadded base64url, enough for hand-made test tokens.
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for chunk in b.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |n, (i, &x)| n | (x as u32) << (16 - 8 * i));
            for i in 0..=chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }

    #[test]
    fn a_valid_token_names_its_principal() {
        let token = mint(SECRET, &claims(60)).unwrap();
        let p = Verifier::new(&config()).verify(&token).unwrap();
        assert_eq!(
            (p.user_id.as_str(), p.role, p.property.as_str()),
            ("g1", Role::Guest, "h1")
        );
        assert!(p.rooms.contains("101"));
    }

    #[test]
    fn expired_wrongly_signed_unsigned_and_malformed_tokens_are_refused() {
        let v = Verifier::new(&config());
        assert_eq!(
            v.verify(&mint(SECRET, &claims(-10)).unwrap()),
            Err(AuthError::Expired)
        );
        assert!(matches!(
            v.verify(&mint(b"another-secret", &claims(60)).unwrap()),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(
            v.verify("not.a.token"),
            Err(AuthError::Invalid(_))
        ));
        assert!(matches!(v.verify(""), Err(AuthError::Invalid(_))));
        let body = serde_json::to_string(&claims(60)).unwrap();
        let unsigned = format!("{}.{}.", b64(r#"{"alg":"none","typ":"JWT"}"#), b64(&body));
        assert!(matches!(v.verify(&unsigned), Err(AuthError::Invalid(_))));
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
        assert!(matches!(v.verify(&tampered), Err(AuthError::Invalid(_))));
    }

    #[test]
    fn claims_with_invalid_ids_are_refused() {
        let mut c = claims(60);
        c.rooms = vec!["10 1".into()];
        let token = mint(SECRET, &c).unwrap();
        assert!(matches!(
            Verifier::new(&config()).verify(&token),
            Err(AuthError::Invalid(_))
        ));
    }
}
