//! TLS for tests: a throwaway CA that issues server certificates (generated with `rcgen`, nothing
//! checked in), certificate files laid out the way Kubernetes mounts a secret (so rotation can be
//! done by the same atomic symlink swap), and rustls clients that trust the CA.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SerialNumber,
};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, SupportedProtocolVersion};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// Serial numbers, unique within the test process.
static SERIAL: AtomicU64 = AtomicU64::new(1);

/// A certificate authority that exists only for one test.
pub struct TestCa {
    /// Signs the server certificates.
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pem: String,
    /// The CA certificate, DER.
    der: CertificateDer<'static>,
}

/// A server certificate and its key, as PEM, valid for `localhost` and `127.0.0.1`.
#[derive(Clone, Debug)]
pub struct Leaf {
    /// The certificate chain: the server certificate (the CA is what clients already trust).
    pub cert_pem: String,
    /// The private key (PKCS#8).
    pub key_pem: String,
    /// The server certificate, DER, to compare with what a client was shown.
    pub der: CertificateDer<'static>,
    /// Its common name.
    pub cn: String,
    /// Its notAfter, Unix seconds.
    pub not_after: i64,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").finish_non_exhaustive()
    }
}

impl Default for TestCa {
    fn default() -> Self {
        Self::new()
    }
}

impl TestCa {
    /// A new CA with a fresh key.
    pub fn new() -> TestCa {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "Bellhop test CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        TestCa {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// The CA certificate, PEM (for `openssl s_client -CAfile` and `bellhop connect --ca`).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// A server certificate named `cn`, valid until 1 January of `year` (a fresh key and serial).
    pub fn issue(&self, cn: &str, year: i32) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.serial_number = Some(SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed)));
        params.not_after = rcgen::date_time_ymd(year, 1, 1);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            cn: cn.to_string(),
            not_after: params.not_after.unix_timestamp(),
        }
    }

    /// A client that trusts this CA, offers ALPN `http/1.1`, speaks only `versions`, and never
    /// resumes a session (so every connection shows the certificate served at that moment).
    pub fn client(&self, versions: &[&'static SupportedProtocolVersion]) -> Arc<ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = rustls::client::Resumption::disabled();
        Arc::new(config)
    }

    /// A client for TLS 1.3 and 1.2.
    pub fn default_client(&self) -> Arc<ClientConfig> {
        self.client(&[&rustls::version::TLS13, &rustls::version::TLS12])
    }
}

/// Opens a TLS connection to `addr` (server name `127.0.0.1`).
pub async fn connect(
    addr: std::net::SocketAddr,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    TlsConnector::from(config).connect(name, tcp).await
}

/// The certificate a server presented on `stream`.
pub fn served_certificate(stream: &TlsStream<TcpStream>) -> CertificateDer<'static> {
    stream.get_ref().1.peer_certificates().unwrap()[0].clone()
}

/// Certificate files laid out like a Kubernetes secret volume:
///
/// ```text
/// dir/..vN/tls.crt, dir/..vN/tls.key     the current version
/// dir/..data -> ..vN                     swapped atomically on rotation
/// dir/tls.crt -> ..data/tls.crt          what the node is configured with
/// dir/tls.key -> ..data/tls.key
/// dir/ca.crt                             the CA, for clients
/// ```
///
/// Removed when dropped.
#[derive(Debug)]
pub struct CertDir {
    /// The directory.
    root: PathBuf,
}

impl CertDir {
    /// A new directory holding `leaf` and the CA certificate.
    pub fn new(ca: &TestCa, leaf: &Leaf) -> CertDir {
        static DIRS: AtomicU64 = AtomicU64::new(0);
        let root = std::env::temp_dir().join(format!(
            "bellhop-tls-{}-{}",
            std::process::id(),
            DIRS.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::write(root.join("ca.crt"), ca.pem()).unwrap();
        Self::write_version(&root, leaf);
        let dir = CertDir { root };
        std::os::unix::fs::symlink("..data/tls.crt", dir.cert_path()).unwrap();
        std::os::unix::fs::symlink("..data/tls.key", dir.key_path()).unwrap();
        dir
    }

    /// `SSL_CERT_PATH`.
    pub fn cert_path(&self) -> PathBuf {
        self.root.join("tls.crt")
    }

    /// `SSL_KEY_PATH`.
    pub fn key_path(&self) -> PathBuf {
        self.root.join("tls.key")
    }

    /// The CA certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.root.join("ca.crt")
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// Rotates to `leaf` as the kubelet does: a new version directory, then one atomic rename of
    /// the `..data` symlink. The old version is removed afterwards.
    pub fn swap(&self, leaf: &Leaf) {
        Self::swap_in(&self.root, leaf);
    }

    /// [`CertDir::swap`] on the directory at `root` (from another thread, for instance).
    pub fn swap_in(root: &Path, leaf: &Leaf) {
        let old = std::fs::read_link(root.join("..data")).ok();
        Self::write_version(root, leaf);
        if let Some(old) = old {
            let _ = std::fs::remove_dir_all(root.join(old));
        }
    }

    fn write_version(root: &Path, leaf: &Leaf) {
        static VERSIONS: AtomicU64 = AtomicU64::new(1);
        let name = format!("..v{}", VERSIONS.fetch_add(1, Ordering::Relaxed));
        let dir = root.join(&name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tls.crt"), &leaf.cert_pem).unwrap();
        std::fs::write(dir.join("tls.key"), &leaf.key_pem).unwrap();
        let tmp = root.join("..data_tmp");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(&name, &tmp).unwrap();
        std::fs::rename(&tmp, root.join("..data")).unwrap();
    }

    /// Writes over the current files in place (not atomic: what `cp` or an editor does).
    pub fn overwrite(&self, cert: &[u8], key: &[u8]) {
        std::fs::write(self.cert_path(), cert).unwrap();
        std::fs::write(self.key_path(), key).unwrap();
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Whether `openssl` is on PATH (the `s_client` checks are skipped without it).
pub fn openssl_available() -> bool {
    std::process::Command::new("openssl")
        .arg("version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Files for servers that take paths (a `redis-server` with `--tls-port`): a CA and a server
/// certificate it signed, as PEM files in a directory of their own (removed on drop).
/// A test CA and one server certificate, as PEM files.
#[derive(Debug)]
pub struct TestCerts {
    dir: PathBuf,
}

impl TestCerts {
    /// Generates a CA and a server certificate (for `localhost` and `127.0.0.1`) signed by it,
    /// whose common name is `server_name`.
    pub fn new(server_name: &str) -> TestCerts {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "bellhop-certs-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));

        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Bellhop test CA");
        let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
        let issuer = Issuer::new(ca_params, ca_key);

        let key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                .expect("server params");
        params
            .distinguished_name
            .push(DnType::CommonName, server_name);
        let cert = params.signed_by(&key, &issuer).expect("server certificate");

        let certs = TestCerts { dir };
        certs.write("ca.pem", &ca_cert.pem());
        certs.write("server.pem", &cert.pem());
        certs.write("server.key", &key.serialize_pem());
        certs
    }

    fn write(&self, name: &str, content: &str) {
        let path = self.dir.join(name);
        std::fs::write(&path, content)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    }

    /// The CA certificate (PEM): what clients trust.
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The server certificate (PEM).
    pub fn cert(&self) -> PathBuf {
        self.dir.join("server.pem")
    }

    /// The server's private key (PEM, PKCS#8).
    pub fn key(&self) -> PathBuf {
        self.dir.join("server.key")
    }

    /// The directory holding the files.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for TestCerts {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
