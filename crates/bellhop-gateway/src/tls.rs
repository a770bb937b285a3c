//! TLS termination on the main port (`wss://`, `https://`), with the certificate and key re-read
//! from disk while the node runs.
//!
//! - **What is offered**: TLS 1.3, and TLS 1.2 unless `SSL_MIN_VERSION=1.3`; never anything
//!   older. rustls's default cipher suites of the `ring` provider (AEAD only: AES-GCM and
//!   ChaCha20-Poly1305, with ECDHE for TLS 1.2). ALPN `http/1.1`, the only protocol the main port
//!   speaks. No client certificates.
//! - **Reload**: [`CertStore`] is the rustls certificate resolver. It holds the served
//!   certificate behind a lock that a handshake holds only to clone an `Arc`. A poll task re-reads
//!   both files every `SSL_RELOAD_INTERVAL_SECONDS` and compares their bytes with the last ones it
//!   saw: polling the content (not watching with inotify, not trusting modification times) is
//!   what survives Kubernetes' symlink swap of a mounted secret, editors that replace files, and
//!   two writes within one timestamp tick. A changed pair that parses and whose key matches the
//!   certificate replaces the served one for every later handshake (open connections keep the
//!   one they negotiated); anything else is logged once, counted, and ignored, and the previous
//!   certificate keeps serving.
//! - **Startup**: an unreadable or unusable file stops [`crate::Gateway::bind`] with an error
//!   that names the setting and the path.
//!
//! The certificate parsing here is pure (bytes in, key or error out), so it is unit-tested
//! without files or sockets. This module never touches a socket itself: the accept loop in
//! `server` runs the handshake, inside each connection's own task.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::{Mutex, RwLock};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use crate::config::{TlsConfig, TlsVersion};
use crate::metrics::TlsMetrics;

/// Why a certificate or key cannot be used. Every variant names the file; at startup the node
/// stops with it, on reload the previous certificate keeps serving. Each message is complete by
/// itself (the OS error is part of it, not a separate `source`), so one log field or one line of
/// `Error: ...` says everything.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be read (missing, no permission, a directory...).
    #[error("{setting} {}: cannot read: {error}", path.display())]
    Read {
        /// `SSL_CERT_PATH` or `SSL_KEY_PATH`.
        setting: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: io::Error,
    },
    /// The certificate file holds no PEM `CERTIFICATE` block, or a broken one.
    #[error("SSL_CERT_PATH {}: no usable PEM certificate ({reason})", path.display())]
    Certificate {
        /// The certificate file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key file holds no PEM private key, a broken one, or one of an unsupported type.
    #[error("SSL_KEY_PATH {}: no usable PEM private key ({reason})", path.display())]
    Key {
        /// The key file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key is fine, but it is not the key of the certificate.
    #[error("SSL_KEY_PATH {} does not match the certificate in SSL_CERT_PATH {}", key.display(), cert.display())]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
}

/// What a certificate says about itself, for logs and the expiry metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateInfo {
    /// The subject, RFC 4514 (`CN=bellhop.example.com`).
    pub subject: String,
    /// The serial number in hex.
    pub serial: String,
    /// notAfter.
    pub not_after: SystemTime,
}

impl CertificateInfo {
    /// notAfter as Unix seconds.
    pub fn not_after_unix(&self) -> u64 {
        self.not_after
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// The outcome of one look at the files.
#[derive(Debug)]
pub enum Reload {
    /// Both files are byte for byte what was seen last time.
    Unchanged,
    /// They changed, and the new certificate now serves every new handshake.
    Reloaded(Option<CertificateInfo>),
    /// They changed, but cannot be used; the previous certificate keeps serving.
    Rejected(TlsError),
}

/// A certificate and key as parsed from PEM, ready for rustls.
#[derive(Debug)]
pub(crate) struct Loaded {
    /// What rustls serves.
    pub(crate) key: Arc<CertifiedKey>,
    /// What the certificate says about itself (`None` if only rustls could parse it).
    pub(crate) info: Option<CertificateInfo>,
}

/// The crypto provider of every TLS handshake: `ring`, with its default (all safe) suites.
pub(crate) fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Parses a PEM certificate chain and a PEM private key, and checks that they belong together.
/// Pure: the paths only go into the error messages.
pub(crate) fn parse(
    cert_pem: &[u8],
    key_pem: &[u8],
    paths: &TlsConfig,
    provider: &CryptoProvider,
) -> Result<Loaded, TlsError> {
    let cert_error = |reason: String| TlsError::Certificate {
        path: paths.cert_path.clone(),
        reason,
    };
    let key_error = |reason: String| TlsError::Key {
        path: paths.key_path.clone(),
        reason,
    };
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_error(e.to_string()))?;
    let Some(leaf) = chain.first() else {
        return Err(cert_error("no CERTIFICATE block".into()));
    };
    let info = describe(leaf);
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| key_error(e.to_string()))?;
    let certified = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => TlsError::Mismatch {
            cert: paths.cert_path.clone(),
            key: paths.key_path.clone(),
        },
        // The key parsed as PEM but the provider cannot sign with it.
        rustls::Error::General(reason) => key_error(reason),
        // The certificate is not valid DER X.509.
        other => cert_error(other.to_string()),
    })?;
    Ok(Loaded {
        key: Arc::new(certified),
        info,
    })
}

/// Subject, serial and expiry of a certificate; `None` if it cannot be decoded (rustls's own
/// parser, which decides whether it is served, may be more lenient).
fn describe(cert: &CertificateDer<'_>) -> Option<CertificateInfo> {
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(cert.as_ref()).ok()?;
    let tbs = &cert.tbs_certificate;
    Some(CertificateInfo {
        subject: tbs.subject.to_string(),
        serial: tbs
            .serial_number
            .as_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
        not_after: tbs.validity.not_after.to_system_time(),
    })
}

/// What was read from the two files, compared between polls. Errors count by kind only, so a
/// missing file is reported once, not on every poll.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Seen {
    cert: Result<Vec<u8>, io::ErrorKind>,
    key: Result<Vec<u8>, io::ErrorKind>,
}

/// The files as read now.
struct Read {
    cert: io::Result<Vec<u8>>,
    key: io::Result<Vec<u8>>,
}

impl Read {
    /// Reads both files on the blocking pool (they are small, but a disk can stall).
    async fn from_disk(config: &TlsConfig) -> Read {
        let (cert, key) = (config.cert_path.clone(), config.key_path.clone());
        let read = tokio::task::spawn_blocking(move || Read {
            cert: std::fs::read(cert),
            key: std::fs::read(key),
        })
        .await;
        read.unwrap_or_else(|e| Read {
            cert: Err(io::Error::other(e.to_string())),
            key: Err(io::Error::other(e.to_string())),
        })
    }

    fn seen(&self) -> Seen {
        let kind = |r: &io::Result<Vec<u8>>| match r {
            Ok(bytes) => Ok(bytes.clone()),
            Err(e) => Err(e.kind()),
        };
        Seen {
            cert: kind(&self.cert),
            key: kind(&self.key),
        }
    }

    /// Both files' bytes, or the error of the first that could not be read.
    fn into_bytes(self, config: &TlsConfig) -> Result<(Vec<u8>, Vec<u8>), TlsError> {
        let read_error = |setting, path: &Path, error| TlsError::Read {
            setting,
            path: path.to_owned(),
            error,
        };
        let cert = self
            .cert
            .map_err(|e| read_error("SSL_CERT_PATH", &config.cert_path, e))?;
        let key = self
            .key
            .map_err(|e| read_error("SSL_KEY_PATH", &config.key_path, e))?;
        Ok((cert, key))
    }
}

/// The certificate the main port serves, and where it comes from: rustls asks it for the
/// certificate at every handshake, and the reload poll replaces it.
#[derive(Debug)]
pub struct CertStore {
    /// Where the files are.
    config: TlsConfig,
    /// The certificate every new handshake gets.
    current: RwLock<Arc<CertifiedKey>>,
    /// The files' content as last seen (served or rejected), so each change is handled once.
    seen: Mutex<Seen>,
    /// Parses keys.
    provider: Arc<CryptoProvider>,
    /// Reload counts and the expiry gauge.
    metrics: TlsMetrics,
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().clone())
    }
}

impl CertStore {
    /// Reads and checks both files (startup: any problem is an error).
    pub(crate) async fn load(
        config: &TlsConfig,
        metrics: TlsMetrics,
    ) -> Result<CertStore, TlsError> {
        let provider = provider();
        let read = Read::from_disk(config).await;
        let seen = read.seen();
        let (cert, key) = read.into_bytes(config)?;
        let loaded = parse(&cert, &key, config, &provider)?;
        log_certificate(config, loaded.info.as_ref(), "TLS certificate loaded");
        if let Some(info) = &loaded.info {
            metrics.expiry.set(info.not_after_unix() as i64);
        }
        Ok(CertStore {
            config: config.clone(),
            current: RwLock::new(loaded.key),
            seen: Mutex::new(seen),
            provider,
            metrics,
        })
    }

    /// Re-reads both files and, if either changed since the last look, serves the new
    /// certificate or rejects it (logged and counted once per change).
    pub async fn reload(&self) -> Reload {
        let mut read = Read::from_disk(&self.config).await;
        // A rotation can land between reading the certificate and reading the key (the kubelet's
        // symlink swap is atomic, but two reads are not). A change is judged only once two reads
        // in a row agree, so a swap in progress is never reported as a mismatched pair; files
        // still changing after a few reads are looked at again at the next poll.
        let mut settled = *self.seen.lock() == read.seen();
        for _ in 0..3 {
            if settled {
                break;
            }
            let again = Read::from_disk(&self.config).await;
            settled = again.seen() == read.seen();
            read = again;
        }
        if !settled {
            tracing::debug!(
                "TLS certificate files are still changing; looking again at the next poll"
            );
            return Reload::Unchanged;
        }
        let outcome = self.offer(read);
        match &outcome {
            Reload::Unchanged => {}
            Reload::Reloaded(info) => {
                log_certificate(&self.config, info.as_ref(), "TLS certificate reloaded");
            }
            Reload::Rejected(error) => tracing::error!(
                %error,
                "TLS certificate files changed but cannot be used: still serving the previous certificate"
            ),
        }
        outcome
    }

    fn offer(&self, read: Read) -> Reload {
        let seen = read.seen();
        {
            let mut last = self.seen.lock();
            if *last == seen {
                return Reload::Unchanged;
            }
            *last = seen;
        }
        let parsed = read
            .into_bytes(&self.config)
            .and_then(|(cert, key)| parse(&cert, &key, &self.config, &self.provider));
        match parsed {
            Ok(loaded) => {
                *self.current.write() = loaded.key;
                if let Some(info) = &loaded.info {
                    self.metrics.expiry.set(info.not_after_unix() as i64);
                }
                self.metrics.reloads.with_label_values(&["success"]).inc();
                Reload::Reloaded(loaded.info)
            }
            Err(e) => {
                self.metrics.reloads.with_label_values(&["failure"]).inc();
                Reload::Rejected(e)
            }
        }
    }

    /// Re-reads the files every `interval` until `stop` turns true (or its sender is gone).
    pub(crate) async fn poll(self: Arc<Self>, interval: Duration, mut stop: watch::Receiver<bool>) {
        let start = tokio::time::Instant::now() + interval;
        let mut ticks = tokio::time::interval_at(start, interval);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let stopped = tokio::select! {
                _ = stop.wait_for(|s| *s) => true,
                _ = ticks.tick() => false,
            };
            if stopped {
                return;
            }
            self.reload().await;
        }
    }
}

fn log_certificate(config: &TlsConfig, info: Option<&CertificateInfo>, message: &'static str) {
    let cert = config.cert_path.display();
    let Some(info) = info else {
        tracing::info!(%cert, "{message} (its subject and expiry could not be decoded)");
        return;
    };
    let expires = time::OffsetDateTime::from(info.not_after)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    let left = info.not_after.duration_since(SystemTime::now()).ok();
    tracing::info!(
        %cert,
        subject = %info.subject,
        serial = %info.serial,
        %expires,
        days_left = left.map_or(0, |d| d.as_secs() / 86_400),
        "{message}"
    );
    if left.is_none() {
        tracing::warn!(%cert, subject = %info.subject, %expires, "the TLS certificate has expired: clients will refuse it");
    }
}

/// The acceptor of the main port: TLS 1.3 (and 1.2 unless turned off), the default suites,
/// ALPN `http/1.1`, the certificate from `store`.
pub(crate) fn acceptor(
    store: Arc<CertStore>,
    min_version: TlsVersion,
) -> Result<TlsAcceptor, rustls::Error> {
    let versions: &[&'static rustls::SupportedProtocolVersion] = match min_version {
        TlsVersion::Tls12 => &[&rustls::version::TLS13, &rustls::version::TLS12],
        TlsVersion::Tls13 => &[&rustls::version::TLS13],
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// TLS on the main listener: the handshake, bounded in time, run inside a connection's own
/// task (never in the accept loop, which a slow client would otherwise stall).
#[derive(Clone)]
pub(crate) struct Terminator {
    /// The rustls acceptor (shares one `ServerConfig`).
    acceptor: TlsAcceptor,
    /// Longest a handshake may take.
    timeout: Duration,
    /// Where failures are counted.
    metrics: TlsMetrics,
}

impl std::fmt::Debug for Terminator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Terminator")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl Terminator {
    pub(crate) fn new(acceptor: TlsAcceptor, timeout: Duration, metrics: TlsMetrics) -> Self {
        Terminator {
            acceptor,
            timeout,
            metrics,
        }
    }

    /// Runs the server side of the handshake; `None` (logged at debug, counted) when it fails or
    /// takes too long. A client can make this fail in many ways, none of them the node's problem.
    pub(crate) async fn handshake<S>(
        &self,
        stream: S,
        remote: std::net::SocketAddr,
    ) -> Option<tokio_rustls::server::TlsStream<S>>
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        let reason = match tokio::time::timeout(self.timeout, self.acceptor.accept(stream)).await {
            Ok(Ok(tls)) => return Some(tls),
            Ok(Err(error)) => {
                let reason = failure_reason(&error);
                tracing::debug!(%remote, %error, reason, "TLS handshake failed");
                reason
            }
            Err(_) => {
                tracing::debug!(%remote, timeout = ?self.timeout, "TLS handshake timed out");
                "timeout"
            }
        };
        self.metrics
            .handshake_failures
            .with_label_values(&[reason])
            .inc();
        None
    }
}

/// A failed handshake's metric label (a small, fixed set; see `TlsMetrics`).
pub(crate) fn failure_reason(e: &io::Error) -> &'static str {
    if let Some(tls) = e.get_ref().and_then(|e| e.downcast_ref::<rustls::Error>()) {
        return match tls {
            rustls::Error::PeerIncompatible(_) | rustls::Error::NoApplicationProtocol => {
                "incompatible"
            }
            rustls::Error::InvalidMessage(_)
            | rustls::Error::InappropriateMessage { .. }
            | rustls::Error::InappropriateHandshakeMessage { .. }
            | rustls::Error::PeerMisbehaved(_)
            | rustls::Error::PeerSentOversizedRecord
            | rustls::Error::DecryptError => "malformed",
            rustls::Error::AlertReceived(_) => "peer_alert",
            _ => "other",
        };
    }
    match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::BrokenPipe => "closed",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pair {
        cert: String,
        key: String,
    }

    fn pair(cn: &str) -> Pair {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let cert = params.self_signed(&key).unwrap();
        Pair {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    fn paths() -> TlsConfig {
        TlsConfig::new("/tls/tls.crt", "/tls/tls.key")
    }

    fn metrics() -> TlsMetrics {
        crate::Metrics::new("t").register_tls()
    }

    fn read(p: &Pair) -> Read {
        Read {
            cert: Ok(p.cert.clone().into_bytes()),
            key: Ok(p.key.clone().into_bytes()),
        }
    }

    #[test]
    fn a_matching_pair_parses_and_describes_itself() {
        let p = pair("bellhop-a");
        let loaded = parse(p.cert.as_bytes(), p.key.as_bytes(), &paths(), &provider()).unwrap();
        let info = loaded.info.unwrap();
        assert_eq!(info.subject, "CN=bellhop-a");
        assert!(!info.serial.is_empty());
        assert!(info.not_after > SystemTime::now());
        assert_eq!(loaded.key.cert.len(), 1);
    }

    #[test]
    fn bad_files_are_rejected_naming_the_path() {
        let (a, b) = (pair("a"), pair("b"));
        let err = |cert: &str, key: &str| {
            parse(cert.as_bytes(), key.as_bytes(), &paths(), &provider())
                .unwrap_err()
                .to_string()
        };
        let e = err(&a.cert, &b.key);
        assert!(
            e.contains("does not match") && e.contains("/tls/tls.key"),
            "{e}"
        );
        let e = err("garbage", &a.key);
        assert!(e.contains("SSL_CERT_PATH /tls/tls.crt"), "{e}");
        let e = err(&a.cert, "garbage");
        assert!(e.contains("SSL_KEY_PATH /tls/tls.key"), "{e}");
        // A key where the certificate should be, and a certificate where the key should be.
        let e = err(&a.key, &a.cert);
        assert!(e.contains("SSL_CERT_PATH"), "{e}");
        // A PEM block that is not DER inside.
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let e = err(broken, &a.key);
        assert!(e.contains("SSL_CERT_PATH"), "{e}");
    }

    #[test]
    fn each_change_is_handled_once_and_a_bad_one_keeps_the_old_certificate() {
        let (a, b) = (pair("a"), pair("b"));
        let provider = provider();
        let first = parse(a.cert.as_bytes(), a.key.as_bytes(), &paths(), &provider).unwrap();
        let metrics = metrics();
        let store = CertStore {
            config: paths(),
            current: RwLock::new(first.key.clone()),
            seen: Mutex::new(read(&a).seen()),
            provider,
            metrics: metrics.clone(),
        };
        let served = || store.current.read().cert[0].clone();
        assert!(matches!(store.offer(read(&a)), Reload::Unchanged));

        // Half-way through a rotation: the new certificate with the old key.
        let half = Read {
            cert: Ok(b.cert.clone().into_bytes()),
            key: Ok(a.key.clone().into_bytes()),
        };
        assert!(matches!(
            store.offer(half),
            Reload::Rejected(TlsError::Mismatch { .. })
        ));
        assert_eq!(served(), first.key.cert[0]);
        let failures = || metrics.reloads.with_label_values(&["failure"]).get();
        assert_eq!(failures(), 1);
        let half = Read {
            cert: Ok(b.cert.clone().into_bytes()),
            key: Ok(a.key.clone().into_bytes()),
        };
        assert!(matches!(store.offer(half), Reload::Unchanged));
        assert_eq!(failures(), 1, "the same bad state is counted once");

        match store.offer(read(&b)) {
            Reload::Reloaded(Some(info)) => assert_eq!(info.subject, "CN=b"),
            other => panic!("{other:?}"),
        }
        assert_ne!(served(), first.key.cert[0]);
        assert_eq!(metrics.reloads.with_label_values(&["success"]).get(), 1);

        // A file that vanished is a rejection too, and the served certificate stays.
        let gone = Read {
            cert: Err(io::ErrorKind::NotFound.into()),
            key: Ok(b.key.clone().into_bytes()),
        };
        match store.offer(gone) {
            Reload::Rejected(e) => assert!(e.to_string().contains("SSL_CERT_PATH"), "{e}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(failures(), 2);
    }

    #[test]
    fn handshake_failures_get_a_small_set_of_reasons() {
        let tls = |e: rustls::Error| io::Error::new(io::ErrorKind::InvalidData, e);
        assert_eq!(
            failure_reason(&tls(rustls::Error::NoApplicationProtocol)),
            "incompatible"
        );
        assert_eq!(
            failure_reason(&tls(rustls::Error::InvalidMessage(
                rustls::InvalidMessage::InvalidContentType
            ))),
            "malformed"
        );
        assert_eq!(
            failure_reason(&tls(rustls::Error::AlertReceived(
                rustls::AlertDescription::UnknownCA
            ))),
            "peer_alert"
        );
        assert_eq!(
            failure_reason(&io::Error::new(io::ErrorKind::UnexpectedEof, "eof")),
            "closed"
        );
        assert_eq!(failure_reason(&io::Error::other("x")), "other");
    }
}
