//! Certificates for TLS clusters, made at test time with `rcgen`: a CA, one server
//! certificate every node uses (SANs `127.0.0.1` and `localhost`; for TLS between nodes it
//! is their client certificate too) and a client certificate.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

use crate::conn::TlsConfig;
use crate::error::{Error, Result};

/// Whether nodes of a TLS [`LocalCluster`](super::LocalCluster) require clients to
/// present a certificate: Redis's `tls-auth-clients`.
///
/// ```no_run
/// # async fn demo() -> redcluster::Result<()> {
/// use redcluster::testkit::LocalCluster;
/// use redcluster::testkit::TlsAuthClients;
/// let cluster = LocalCluster::builder()
///     .tls(true)
///     .tls_auth_clients(TlsAuthClients::Optional)
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum TlsAuthClients {
    /// `tls-auth-clients yes`: a client without a certificate signed by the cluster's CA
    /// is refused (Redis's default).
    #[default]
    Required,
    /// `tls-auth-clients optional`: a certificate is checked if presented, not required.
    Optional,
    /// `tls-auth-clients no`: client certificates are neither asked for nor checked.
    No,
}

impl TlsAuthClients {
    pub(crate) fn directive(self) -> &'static str {
        match self {
            TlsAuthClients::Required => "yes",
            TlsAuthClients::Optional => "optional",
            TlsAuthClients::No => "no",
        }
    }
}

/// The files of a TLS cluster, in `<cluster dir>/tls/`, and the client configuration
/// that trusts its CA and presents its client certificate.
#[derive(Clone)]
pub(crate) struct TlsFiles {
    pub(crate) ca_cert: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
    pub(crate) auth_clients: TlsAuthClients,
    pub(crate) config: TlsConfig,
}

fn failed(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("generating the test cluster's {what} failed: {e}"))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "redcluster testkit");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Writes a file readable by this user only (keys), or by everyone (certificates).
fn write(path: &Path, contents: &str, private: bool) -> Result<()> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(if private { 0o600 } else { 0o644 })
        .open(path)
        .map_err(|e| Error::io(e, false))?;
    file.write_all(contents.as_bytes())
        .map_err(|e| Error::io(e, false))
}

/// Makes a fresh CA, server and client certificate in `dir`.
pub(crate) fn generate(dir: &Path, auth_clients: TlsAuthClients) -> Result<TlsFiles> {
    fs::create_dir_all(dir).map_err(|e| Error::io(e, false))?;

    let ca_key = KeyPair::generate().map_err(|e| failed("CA key", e))?;
    let mut ca_params = CertificateParams::default();
    ca_params.distinguished_name = name("redcluster testkit CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| failed("CA certificate", e))?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().map_err(|e| failed("server key", e))?;
    let mut server_params =
        CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .map_err(|e| failed("server certificate", e))?;
    server_params.distinguished_name = name("redcluster testkit node");
    server_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    // Nodes present it to each other as clients too (tls-cluster, tls-replication).
    server_params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    server_params.use_authority_key_identifier_extension = true;
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .map_err(|e| failed("server certificate", e))?;

    let client_key = KeyPair::generate().map_err(|e| failed("client key", e))?;
    let mut client_params = CertificateParams::default();
    client_params.distinguished_name = name("redcluster testkit client");
    client_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    client_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    client_params.use_authority_key_identifier_extension = true;
    let client_cert = client_params
        .signed_by(&client_key, &issuer)
        .map_err(|e| failed("client certificate", e))?;

    let files = |stem: &str| dir.join(stem);
    let (ca_path, server_cert_path, server_key_path, client_cert_path, client_key_path) = (
        files("ca.crt"),
        files("server.crt"),
        files("server.key"),
        files("client.crt"),
        files("client.key"),
    );
    write(&ca_path, &ca_cert.pem(), false)?;
    write(&server_cert_path, &server_cert.pem(), false)?;
    write(&server_key_path, &server_key.serialize_pem(), true)?;
    write(&client_cert_path, &client_cert.pem(), false)?;
    write(&client_key_path, &client_key.serialize_pem(), true)?;

    let config = TlsConfig::new()
        .ca_cert_file(&ca_path)?
        .client_cert_files(&client_cert_path, &client_key_path)?;
    Ok(TlsFiles {
        ca_cert: ca_path,
        server_cert: server_cert_path,
        server_key: server_key_path,
        client_cert: client_cert_path,
        client_key: client_key_path,
        auth_clients,
        config,
    })
}
