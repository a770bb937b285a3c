//! Signing tokens, for `bellhop token`, load generators and tests. A serving node only verifies:
//! nothing in the request path signs.

use super::*;

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
