//! Reading and checking verification keys: the key file (size-capped), PEM public keys (RSA of
//! at least 2,048 bits, P-256) and JSON Web Key Sets (a key is used only for the pinned algorithm
//! and for signatures).

use super::*;

pub(super) fn read_key_file(source: &KeySource) -> Result<Vec<u8>, KeyError> {
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

pub(super) fn parse_keys(
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
pub(super) fn pem_label(text: &str) -> Result<&str, String> {
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
pub(super) fn parse_pem_public_key(
    algorithm: JwtAlgorithm,
    content: &[u8],
) -> Result<DecodingKey, String> {
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

pub(super) fn check_rsa(key: &rsa::RsaPublicKey) -> Result<(), String> {
    use rsa::traits::PublicKeyParts;
    let bits = key.size() * 8;
    if bits < MIN_RSA_BITS {
        return Err(format!(
            "the RSA key has {bits} bits; at least {MIN_RSA_BITS} are required"
        ));
    }
    Ok(())
}

pub(super) fn check_p256(key: &DecodingKey) -> Result<(), String> {
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
pub(super) fn parse_jwks(algorithm: JwtAlgorithm, content: &[u8]) -> Result<KeySet, String> {
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
pub(super) fn usable_key(
    algorithm: JwtAlgorithm,
    jwk: &Jwk,
) -> Result<Option<DecodingKey>, String> {
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
