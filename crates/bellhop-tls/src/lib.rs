//! TLS client configurations for the parts of Bellhop that are clients of a TLS server (the
//! dispatcher's Redis client, the Rust SDK, `bellhop connect`): [`trusting`] builds one that
//! trusts exactly the CA certificates of a PEM file. It does no IO but reading that file, and it
//! never serves TLS (that is the gateway's `tls` module).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;

/// Why a CA file cannot make a TLS client configuration. Its text starts with the file's path;
/// callers put the name of their setting in front.
#[derive(Debug, thiserror::Error)]
pub enum CaFileError {
    /// The file cannot be read, or is not PEM.
    #[error("{}: cannot read PEM certificates: {source}", path.display())]
    Unreadable {
        /// The file.
        path: PathBuf,
        /// What reading it found.
        source: rustls::pki_types::pem::Error,
    },
    /// A certificate in the file cannot be a trust anchor.
    #[error("{}: unusable CA certificate: {source}", path.display())]
    Unusable {
        /// The file.
        path: PathBuf,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// The file holds no certificate at all.
    #[error("{}: no usable CA certificate in it", path.display())]
    Empty {
        /// The file.
        path: PathBuf,
    },
    /// rustls refused the protocol versions (cannot happen with the `ring` provider).
    #[error("TLS client: {0}")]
    Config(rustls::Error),
}

/// A TLS client configuration trusting only the CA certificates in the PEM file at `path`:
/// TLS 1.3 and 1.2 with rustls's safe defaults and the `ring` provider, no client certificate.
/// Every certificate in the file must be usable, and there must be one.
pub fn trusting(path: &Path) -> Result<rustls::ClientConfig, CaFileError> {
    let unreadable = |source| CaFileError::Unreadable {
        path: path.to_owned(),
        source,
    };
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(path).map_err(unreadable)? {
        roots
            .add(cert.map_err(unreadable)?)
            .map_err(|source| CaFileError::Unusable {
                path: path.to_owned(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(CaFileError::Empty {
            path: path.to_owned(),
        });
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(CaFileError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn a_ca_file_is_trusted_and_anything_else_is_refused_naming_the_file() {
        let certs = bellhop_testkit::TestCerts::new("trusting");
        assert!(trusting(&certs.ca()).is_ok());

        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let error = trusting(&missing).unwrap_err();
        assert!(matches!(error, CaFileError::Unreadable { .. }), "{error}");
        assert!(error
            .to_string()
            .starts_with(&missing.display().to_string()));

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not a certificate").unwrap();
        let error = trusting(&empty).unwrap_err();
        assert!(matches!(error, CaFileError::Empty { .. }), "{error}");
        assert!(error.to_string().contains("no usable CA certificate"));

        let broken = dir.path().join("broken.pem");
        std::fs::write(
            &broken,
            "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
        )
        .unwrap();
        let error = trusting(&broken).unwrap_err();
        assert!(matches!(error, CaFileError::Unusable { .. }), "{error}");
    }
}
