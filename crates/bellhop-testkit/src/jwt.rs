//! Throwaway JWT signing keys for authentication tests, generated for each test run: nothing
//! secret is committed.
//!
//! - P-256 keys (ES256) come from `rcgen`, like the TLS certificates in [`crate::tls`].
//! - RSA keys (RS256) come from the `rsa` crate: rcgen's `ring` backend cannot generate RSA
//!   keys (it only loads them). 2048-bit generation takes a moment in a debug build, so a test
//!   binary should generate the few it needs once.
//!
//! Each key offers its private key (PKCS#8 PEM, what `bellhop token --key` reads), its public
//! key (SubjectPublicKeyInfo PEM, what `JWT_PUBLIC_KEY_PATH` names) and its JWK (an entry of the
//! set `JWT_JWKS_PATH` names). [`KeyFiles`] writes them into a directory of its own, replaces
//! them the way Kubernetes updates a mounted Secret (an atomic swap of a `..data` symlink), and
//! removes them on drop.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::traits::PublicKeyParts;
use serde_json::{json, Value};

/// Which algorithm a key signs for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyKind {
    /// RSA 2048, for RS256.
    Rsa,
    /// ECDSA P-256, for ES256.
    Ec,
}

impl KeyKind {
    /// The JWS algorithm name (`RS256`, `ES256`).
    pub fn alg(self) -> &'static str {
        match self {
            KeyKind::Rsa => "RS256",
            KeyKind::Ec => "ES256",
        }
    }
}

/// One signing key pair and its public forms.
#[derive(Clone, Debug)]
pub struct TestSigningKey {
    /// RSA or P-256.
    pub kind: KeyKind,
    /// The key id its JWK carries.
    pub kid: String,
    /// The private key, PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub private_pem: String,
    /// The public key, SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`).
    pub public_pem: String,
    /// The public key as a JWK with `kid`, `use: sig` and `alg`.
    pub jwk: Value,
}

impl TestSigningKey {
    /// A fresh 2048-bit RSA key.
    pub fn rsa(kid: &str) -> TestSigningKey {
        let mut rng = rsa::rand_core::OsRng;
        let private = rsa::RsaPrivateKey::new(&mut rng, 2048).expect("RSA key generation");
        let public = private.to_public_key();
        let private_pem = private
            .to_pkcs8_pem(LineEnding::LF)
            .expect("PKCS#8 PEM")
            .to_string();
        let public_pem = public.to_public_key_pem(LineEnding::LF).expect("SPKI PEM");
        let jwk = json!({
            "kty": "RSA",
            "kid": kid,
            "use": "sig",
            "alg": "RS256",
            "n": URL_SAFE_NO_PAD.encode(public.n().to_bytes_be()),
            "e": URL_SAFE_NO_PAD.encode(public.e().to_bytes_be()),
        });
        TestSigningKey {
            kind: KeyKind::Rsa,
            kid: kid.to_owned(),
            private_pem,
            public_pem,
            jwk,
        }
    }

    /// A fresh P-256 key.
    pub fn ec(kid: &str) -> TestSigningKey {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).expect("P-256 key generation");
        // The raw public key is the uncompressed point: 0x04, then x and y, 32 bytes each.
        let raw = key.public_key_raw();
        assert_eq!(raw.len(), 65, "uncompressed P-256 point");
        let jwk = json!({
            "kty": "EC",
            "crv": "P-256",
            "kid": kid,
            "use": "sig",
            "alg": "ES256",
            "x": URL_SAFE_NO_PAD.encode(&raw[1..33]),
            "y": URL_SAFE_NO_PAD.encode(&raw[33..65]),
        });
        TestSigningKey {
            kind: KeyKind::Ec,
            kid: kid.to_owned(),
            private_pem: key.serialize_pem(),
            public_pem: key.public_key_pem(),
            jwk,
        }
    }

    /// A fresh key of `kind`.
    pub fn generate(kind: KeyKind, kid: &str) -> TestSigningKey {
        match kind {
            KeyKind::Rsa => TestSigningKey::rsa(kid),
            KeyKind::Ec => TestSigningKey::ec(kid),
        }
    }

    /// The same key pair under another key id.
    pub fn with_kid(&self, kid: &str) -> TestSigningKey {
        let mut key = self.clone();
        key.kid = kid.to_owned();
        key.jwk["kid"] = kid.into();
        key
    }
}

/// A JSON Web Key Set (`{"keys": [...]}`) of the public keys.
pub fn jwks(keys: &[&TestSigningKey]) -> String {
    let keys: Vec<&Value> = keys.iter().map(|k| &k.jwk).collect();
    json!({ "keys": keys }).to_string()
}

/// Key files in a directory of their own, removed on drop.
#[derive(Debug)]
pub struct KeyFiles {
    dir: PathBuf,
    /// Versions written by [`KeyFiles::swap`], for distinct directory names.
    versions: AtomicU64,
}

impl KeyFiles {
    /// An empty directory.
    pub fn new() -> KeyFiles {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bellhop-keys-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        KeyFiles {
            dir,
            versions: AtomicU64::new(0),
        }
    }

    /// Writes `content` to `name` (replacing it by a rename, as an editor or `install` would)
    /// and returns its path.
    pub fn write(&self, name: &str, content: &str) -> PathBuf {
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", tmp.display()));
        std::fs::rename(&tmp, &path)
            .unwrap_or_else(|e| panic!("cannot rename to {}: {e}", path.display()));
        path
    }

    /// Writes `content` as `name` the way the kubelet updates a mounted ConfigMap or Secret:
    /// into a new timestamped directory, then an atomic rename of the `..data` symlink onto
    /// it; `name` itself is a symlink to `..data/name` that never changes. Returns the path of
    /// `name`.
    pub fn swap(&self, name: &str, content: &str) -> PathBuf {
        let version = self.versions.fetch_add(1, Ordering::Relaxed);
        let target = format!("..v{version}");
        let target_dir = self.dir.join(&target);
        std::fs::create_dir_all(&target_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", target_dir.display()));
        std::fs::write(target_dir.join(name), content)
            .unwrap_or_else(|e| panic!("cannot write {name}: {e}"));
        let data_tmp = self.dir.join("..data_tmp");
        let _ = std::fs::remove_file(&data_tmp);
        std::os::unix::fs::symlink(&target, &data_tmp).expect("..data_tmp symlink");
        std::fs::rename(&data_tmp, self.dir.join("..data")).expect("atomic ..data swap");
        let link = self.dir.join(name);
        if std::fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link)
                .expect("file symlink");
        }
        link
    }

    /// The path `name` has (or will have) in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Default for KeyFiles {
    fn default() -> Self {
        KeyFiles::new()
    }
}

impl Drop for KeyFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_pem_and_jwk_forms() {
        let ec = TestSigningKey::ec("e1");
        assert!(ec.private_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(ec.public_pem.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert_eq!(ec.jwk["crv"], "P-256");
        let set: Value = serde_json::from_str(&jwks(&[&ec, &ec.with_kid("e2")])).unwrap();
        assert_eq!(set["keys"][1]["kid"], "e2");
    }

    #[test]
    fn a_swapped_file_reads_as_its_new_content() {
        let files = KeyFiles::new();
        let path = files.swap("jwks.json", "one");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "one");
        let again = files.swap("jwks.json", "two");
        assert_eq!(again, path);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "two");
    }
}
