//! Cluster TLS: one certificate authority per cluster, and certificates it issues to nodes and
//! to runner agents.
//!
//! - A **node certificate** names [`NODE_NAME`] (plus the node's own names) and may act as TLS
//!   server and client. Nodes present it on gRPC (Raft, ForwardWrites, ...) and on QUIC, and
//!   accept a peer on gRPC or gossip only if the peer's certificate chains to the cluster CA
//!   *and* names [`NODE_NAME`] ([`peer_role`]).
//! - A **runner certificate** names [`RUNNER_NAME`] and may act only as a TLS client. Runner
//!   agents present it on QUIC and still prove which runner they are with their token.
//!
//! Every TLS session is therefore mutual: a process without a certificate from the cluster CA
//! cannot complete a handshake, so it cannot join, vote, forward writes or gossip.
//!
//! Issuing ([`generate_ca`], [`issue`]) uses rcgen; keys are ECDSA P-256. Files holding keys
//! are written with mode 0600 ([`write_private_file`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// The DNS name in every node certificate; peers and runners dial nodes by it.
pub const NODE_NAME: &str = "node.corral";
/// The DNS name in every runner certificate.
pub const RUNNER_NAME: &str = "runner.corral";

/// Who a verified peer certificate belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Node,
    Runner,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("cannot write {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
    #[error("{path} holds no usable {what} in PEM form")]
    Pem { path: PathBuf, what: &'static str },
    #[error("certificate generation: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("tls configuration: {0}")]
    Config(String),
}

fn read(path: &Path) -> Result<String, TlsError> {
    std::fs::read_to_string(path).map_err(|source| TlsError::Read { path: path.to_path_buf(), source })
}

/// A process's cluster TLS material: the CA it trusts and the certificate and key it presents.
/// PEM text is kept as well because tonic takes its identities in PEM.
pub struct ClusterTls {
    ca: CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

impl std::fmt::Debug for ClusterTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("ClusterTls").field("chain_len", &self.chain.len()).finish_non_exhaustive()
    }
}

impl Clone for ClusterTls {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            chain: self.chain.clone(),
            key: self.key.clone_key(),
            ca_pem: self.ca_pem.clone(),
            cert_pem: self.cert_pem.clone(),
            key_pem: self.key_pem.clone(),
        }
    }
}

impl ClusterTls {
    /// Loads the CA certificate, this process's certificate (chain) and its private key.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        Self::from_pem(read(ca)?, read(cert)?, read(key)?, [ca, cert, key])
    }

    fn from_pem(ca_pem: String, cert_pem: String, key_pem: String, paths: [&Path; 3]) -> Result<Self, TlsError> {
        let ca = CertificateDer::from_pem_slice(ca_pem.as_bytes())
            .map_err(|_| TlsError::Pem { path: paths[0].to_path_buf(), what: "certificate" })?;
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes()).filter_map(Result::ok).collect();
        if chain.is_empty() {
            return Err(TlsError::Pem { path: paths[1].to_path_buf(), what: "certificate" });
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|_| TlsError::Pem { path: paths[2].to_path_buf(), what: "private key" })?;
        Ok(Self { ca, chain, key, ca_pem, cert_pem, key_pem })
    }

    fn roots(&self) -> Result<Arc<rustls::RootCertStore>, TlsError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(|e| TlsError::Config(format!("the CA certificate: {e}")))?;
        Ok(Arc::new(roots))
    }

    /// TLS 1.3 server config that demands a client certificate from the cluster CA.
    pub fn server_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        let provider = provider();
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(self.roots()?, provider.clone())
            .build()
            .map_err(|e| TlsError::Config(e.to_string()))?;
        rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))
    }

    /// TLS 1.3 client config that trusts only the cluster CA and presents this certificate.
    pub fn client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(self.roots()?)
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())
            .map_err(|e| TlsError::Config(e.to_string()))
    }

    /// gRPC server side: this node's identity, client certificates required from the CA.
    pub fn grpc_server(&self) -> tonic::transport::ServerTlsConfig {
        tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(tonic::transport::Certificate::from_pem(&self.ca_pem))
    }

    /// gRPC client side: trusts only the CA, expects [`NODE_NAME`], presents this identity.
    pub fn grpc_client(&self) -> tonic::transport::ClientTlsConfig {
        tonic::transport::ClientTlsConfig::new()
            .ca_certificate(tonic::transport::Certificate::from_pem(&self.ca_pem))
            .domain_name(NODE_NAME)
            .identity(tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem))
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The role a peer's certificate (already verified against the cluster CA by the handshake)
/// was issued for, or `None` when it names neither.
pub fn peer_role(cert: &CertificateDer<'_>) -> Option<Role> {
    let parsed = rustls::server::ParsedCertificate::try_from(cert).ok()?;
    let names = |name: &'static str| {
        ServerName::try_from(name).is_ok_and(|n| rustls::client::verify_server_name(&parsed, &n).is_ok())
    };
    if names(NODE_NAME) {
        Some(Role::Node)
    } else if names(RUNNER_NAME) {
        Some(Role::Runner)
    } else {
        None
    }
}

/// A certificate and its private key, both PEM.
pub struct IssuedPem {
    pub cert_pem: String,
    pub key_pem: String,
}

const CA_COMMON_NAME: &str = "Corral cluster CA";

/// A new self-signed cluster CA, valid for ten years.
pub fn generate_ca() -> Result<IssuedPem, TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, CA_COMMON_NAME);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Corral");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = params.not_before + std::time::Duration::from_secs(10 * 365 * 24 * 3600);
    let cert = params.self_signed(&key)?;
    Ok(IssuedPem { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Issues a certificate for `role` signed by the CA given in PEM. `common_name` identifies the
/// holder (e.g. `node-1`); `extra_names` are further DNS names or IP addresses the certificate
/// should be valid for (a node's REST address, when its certificate also serves HTTPS).
pub fn issue(ca: &IssuedPem, role: Role, common_name: &str, extra_names: &[String]) -> Result<IssuedPem, TlsError> {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem)?;
    let ca_cert = rcgen::CertificateParams::from_ca_cert_pem(&ca.cert_pem)?.self_signed(&ca_key)?;

    let role_name = match role {
        Role::Node => NODE_NAME,
        Role::Runner => RUNNER_NAME,
    };
    let mut names = vec![role_name.to_string()];
    names.extend(extra_names.iter().filter(|n| !n.is_empty()).cloned());
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    for name in names {
        let san = match name.parse::<std::net::IpAddr>() {
            Ok(ip) => rcgen::SanType::IpAddress(ip),
            Err(_) => rcgen::SanType::DnsName(name.try_into()?),
        };
        params.subject_alt_names.push(san);
    }
    params.distinguished_name.push(rcgen::DnType::CommonName, common_name);
    params.distinguished_name.push(rcgen::DnType::OrganizationName, "Corral");
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = match role {
        Role::Node => vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth, rcgen::ExtendedKeyUsagePurpose::ClientAuth],
        Role::Runner => vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth],
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = rcgen::date_time_ymd(2024, 1, 1);
    params.not_after = params.not_before + std::time::Duration::from_secs(5 * 365 * 24 * 3600);
    let key = rcgen::KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;
    Ok(IssuedPem { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// Reads a CA (certificate and key PEM files) for [`issue`].
pub fn load_ca(cert: &Path, key: &Path) -> Result<IssuedPem, TlsError> {
    Ok(IssuedPem { cert_pem: read(cert)?, key_pem: read(key)? })
}

/// Writes `contents` to `path` readable and writable by the owner only (0600), replacing any
/// file there. The mode is set when the file is created, so the key is never world-readable.
pub fn write_private_file(path: &Path, contents: &str) -> Result<(), TlsError> {
    use std::io::Write;
    let err = |source| TlsError::Write { path: path.to_path_buf(), source };
    let _ = std::fs::remove_file(path);
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(err)?;
    file.write_all(contents.as_bytes()).map_err(err)?;
    file.sync_all().map_err(err)
}

/// Writes a CA, and node or runner certificates, into a directory with the file names
/// `corral serve` and `corral runner` look for by default. Used by `corral certs` and `corral
/// dev` and by tests that start real clusters.
pub struct CertDir {
    pub dir: PathBuf,
}

impl CertDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }
    pub fn ca_cert(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }
    pub fn ca_key(&self) -> PathBuf {
        self.dir.join("ca-key.pem")
    }
    pub fn cert(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}.pem"))
    }
    pub fn key(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-key.pem"))
    }

    fn create_dir(&self) -> Result<(), TlsError> {
        std::fs::create_dir_all(&self.dir).map_err(|source| TlsError::Write { path: self.dir.clone(), source })
    }

    /// Creates the CA unless one is already there; returns whether it created one.
    pub fn init(&self) -> Result<bool, TlsError> {
        self.create_dir()?;
        if self.ca_cert().exists() && self.ca_key().exists() {
            return Ok(false);
        }
        let ca = generate_ca()?;
        write_private_file(&self.ca_key(), &ca.key_pem)?;
        write_private_file(&self.ca_cert(), &ca.cert_pem)?;
        Ok(true)
    }

    /// Issues `<name>.pem` and `<name>-key.pem` for `role` from this directory's CA.
    pub fn issue(&self, role: Role, name: &str, extra_names: &[String]) -> Result<(), TlsError> {
        self.create_dir()?;
        let ca = load_ca(&self.ca_cert(), &self.ca_key())?;
        let issued = issue(&ca, role, name, extra_names)?;
        write_private_file(&self.key(name), &issued.key_pem)?;
        write_private_file(&self.cert(name), &issued.cert_pem)
    }

    /// Makes sure this directory holds a CA, a certificate for each node `node-1..=node-n` (also
    /// valid for HTTPS on 127.0.0.1 and localhost) and one for runner agents (`runner`),
    /// issuing whatever is missing. For `corral dev` and tests that start real clusters.
    pub fn ensure_local_cluster(&self, nodes: u64) -> Result<(), TlsError> {
        let fresh_ca = self.init()?;
        let mut wanted: Vec<(Role, String)> = (1..=nodes).map(|i| (Role::Node, format!("node-{i}"))).collect();
        wanted.push((Role::Runner, "runner".to_string()));
        for (role, name) in wanted {
            if fresh_ca || !self.cert(&name).exists() || !self.key(&name).exists() {
                let names = match role {
                    Role::Node => vec!["127.0.0.1".to_string(), "localhost".to_string()],
                    Role::Runner => vec![],
                };
                self.issue(role, &name, &names)?;
            }
        }
        Ok(())
    }

    /// The `corral serve` flags that point node `node_id` at its certificate here.
    pub fn serve_args(&self, node_id: u64) -> Vec<std::ffi::OsString> {
        let name = format!("node-{node_id}");
        vec![
            "--ca-cert".into(),
            self.ca_cert().into_os_string(),
            "--node-cert".into(),
            self.cert(&name).into_os_string(),
            "--node-key".into(),
            self.key(&name).into_os_string(),
        ]
    }

    /// The material `name` presents.
    pub fn load(&self, name: &str) -> Result<ClusterTls, TlsError> {
        ClusterTls::load(&self.ca_cert(), &self.cert(name), &self.key(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_certificates_carry_their_role_and_keys_are_private() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = CertDir::new(dir.path());
        assert!(certs.init().expect("init"));
        assert!(!certs.init().expect("second init keeps the CA"));
        certs.issue(Role::Node, "node-1", &["127.0.0.1".into(), "corral-1".into()]).expect("node");
        certs.issue(Role::Runner, "runner", &[]).expect("runner");

        let node = certs.load("node-1").expect("load node");
        assert_eq!(peer_role(&node.chain[0]), Some(Role::Node));
        let runner = certs.load("runner").expect("load runner");
        assert_eq!(peer_role(&runner.chain[0]), Some(Role::Runner));
        node.server_config().expect("server config");
        runner.client_config().expect("client config");

        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for path in [certs.ca_key(), certs.key("node-1"), certs.key("runner"), certs.ca_cert()] {
                let mode = std::fs::metadata(&path).expect("metadata").permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", path.display());
            }
        }
    }

    #[test]
    fn a_missing_or_garbled_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let certs = CertDir::new(dir.path());
        let err = certs.load("node-1").expect_err("nothing there");
        assert!(err.to_string().contains("ca.pem"), "{err}");
        certs.init().expect("init");
        std::fs::write(certs.cert("node-1"), "not a certificate").expect("write");
        std::fs::write(certs.key("node-1"), "not a key").expect("write");
        let err = certs.load("node-1").expect_err("garbled");
        assert!(err.to_string().contains("node-1.pem"), "{err}");
    }
}
