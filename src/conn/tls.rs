//! TLS for node connections, with rustls (ring provider).
//!
//! [`TlsConfig`] is what the user configures: trusted CAs, an optional client certificate
//! for mutual TLS, and how a node's certificate is matched to a name. It turns into one
//! rustls `ClientConfig`, built once and shared by every connection that uses it; a
//! connection to a node behind an address remap takes a copy whose name check also
//! accepts the host dialled (`EitherName`).
//!
//! Key material never leaves this module in readable form: `Debug` shows how many CA
//! certificates there are and whether a client certificate is set, errors name files
//! and what is wrong with them, never their content.

use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{AlertDescription, CertificateError, ClientConfig, DigitallySignedStruct};
use rustls::{RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::Instant;

use crate::error::{Error, Result};

/// TLS settings for every connection of a client (rustls, with the `ring` provider).
///
/// A node's certificate must chain to one of the configured CA certificates and be
/// valid for the host part of the address the client dialled (`127.0.0.1` is checked
/// against the certificate's IP SANs, `redis-0.example` against its DNS names). Clusters
/// often announce IP addresses that their certificates do not list: then set
/// [`TlsConfig::server_name`] to the one name every node's certificate carries.
///
/// A node reached through an [`AddressRemap`](crate::AddressRemap) (NAT, a port
/// forward, a proxy) may present a certificate valid for the address dialled or for the
/// one it announced, so certificates issued for the nodes' own names keep working behind
/// a remap, per node, with no `server_name`. (A seed given by its reachable address
/// has an announced name only if the remap is a table,
/// [`AddressRemap::from_map`](crate::AddressRemap::from_map).) SNI carries the dialled
/// host when it is a DNS name, as without a remap, so a proxy routing on it keeps
/// working; else the announced name, when that is one.
///
/// ```no_run
/// # fn demo() -> redcluster::Result<()> {
/// let tls = redcluster::TlsConfig::new()
///     .ca_cert_file("ca.crt")?                          // trust this CA
///     .client_cert_files("client.crt", "client.key")?;  // mutual TLS
/// # Ok(()) }
/// ```
///
/// `Debug` shows the shape of the configuration (how many CA certificates, whether a
/// client certificate is set), never certificates or keys. Clones are cheap and share the
/// rustls configuration once it is built.
#[derive(Clone)]
pub struct TlsConfig {
    inner: Arc<Inner>,
}

struct Inner {
    settings: Settings,
    /// The rustls configuration, built on first use.
    built: OnceLock<Result<Built>>,
}

#[derive(Clone, Default)]
struct Settings {
    ca_certs: Vec<CertificateDer<'static>>,
    native_roots: bool,
    client_auth: Option<ClientAuth>,
    server_name: Option<String>,
    accept_invalid_certificates: bool,
}

#[derive(Clone)]
struct ClientAuth {
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
}

struct Built {
    config: Arc<ClientConfig>,
    server_name: Option<ServerName<'static>>,
    /// The CA check, to wrap in [`EitherName`] for a remapped node; `None` when
    /// certificates are not checked at all.
    verifier: Option<Arc<dyn ServerCertVerifier>>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig::from_settings(Settings::default())
    }
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = &self.inner.settings;
        f.debug_struct("TlsConfig")
            .field("ca_certs", &s.ca_certs.len())
            .field("native_roots", &s.native_roots)
            .field(
                "client_cert",
                &s.client_auth
                    .as_ref()
                    .map(|a| ClientCertShape(a.chain.len())),
            )
            .field("server_name", &s.server_name)
            .field(
                "danger_accept_invalid_certificates",
                &s.accept_invalid_certificates,
            )
            .finish()
    }
}

/// How a client certificate shows in `Debug`: its chain length, the key hidden.
struct ClientCertShape(usize);

impl fmt::Debug for ClientCertShape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} certificate(s), private key ***", self.0)
    }
}

impl TlsConfig {
    /// TLS with no trusted CA yet: add one with [`TlsConfig::ca_cert_file`] or
    /// [`TlsConfig::ca_cert_pem`] (or the platform's with `native_roots`, feature
    /// `native-roots`). A client whose `TlsConfig` trusts no CA fails to build with
    /// [`Error::Config`].
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::{ClusterClient, TlsConfig};
    /// let tls = TlsConfig::new().ca_cert_file("ca.crt")?;
    /// let client = ClusterClient::builder()
    ///     .nodes(["rediss://127.0.0.1:6380"])
    ///     .tls(tls)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn new() -> Self {
        TlsConfig::default()
    }

    fn from_settings(settings: Settings) -> Self {
        TlsConfig {
            inner: Arc::new(Inner {
                settings,
                built: OnceLock::new(),
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Settings)) -> Self {
        let mut settings = self.inner.settings.clone();
        f(&mut settings);
        TlsConfig::from_settings(settings)
    }

    /// Trusts the CA certificate(s) in a PEM file (every `CERTIFICATE` block in it).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the file cannot be read or holds no valid certificate.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo() -> redcluster::Result<()> {
    /// let tls = redcluster::TlsConfig::new().ca_cert_file("/etc/redis/tls/ca.crt")?;
    /// # Ok(()) }
    /// ```
    pub fn ca_cert_file(self, path: impl AsRef<Path>) -> Result<TlsConfig> {
        let path = path.as_ref();
        let pem = read_file(path, "CA certificate")?;
        let certs = parse_certs(&pem, &format!("CA certificate file {}", path.display()))?;
        self.add_cas(certs)
    }

    /// Trusts the CA certificate(s) in PEM text (every `CERTIFICATE` block in it).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the text holds no valid certificate.
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> redcluster::Result<()> {
    /// # let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    /// # let ca_pem = ca.cert.pem();
    /// use redcluster::TlsConfig;
    /// // E.g. a CA certificate handed over in an environment variable or a secrets store.
    /// let tls = TlsConfig::new().ca_cert_pem(&ca_pem)?;
    /// assert!(TlsConfig::new().ca_cert_pem("not a certificate").is_err());
    /// # Ok(()) }
    /// ```
    pub fn ca_cert_pem(self, pem: impl AsRef<[u8]>) -> Result<TlsConfig> {
        let certs = parse_certs(pem.as_ref(), "CA certificate PEM")?;
        self.add_cas(certs)
    }

    fn add_cas(self, certs: Vec<CertificateDer<'static>>) -> Result<TlsConfig> {
        // Check them now, so that a bad CA file fails where it is configured.
        let mut store = RootCertStore::empty();
        for cert in &certs {
            store.add(cert.clone()).map_err(|e| {
                Error::Config(format!(
                    "a CA certificate is not usable as a trust anchor: {e}"
                ))
            })?;
        }
        Ok(self.with(|s| s.ca_certs.extend(certs)))
    }

    /// Presents this client certificate (PEM chain, leaf first) and private key (PEM:
    /// PKCS#8, PKCS#1 or SEC1) to nodes that ask for one (mutual TLS, Redis's
    /// `tls-auth-clients yes`).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when a file cannot be read, holds no certificate or no private
    /// key, or the key is of an unsupported type. The key's content is never part of an
    /// error.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # fn demo() -> redcluster::Result<()> {
    /// let tls = redcluster::TlsConfig::new()
    ///     .ca_cert_file("/etc/redis/tls/ca.crt")?
    ///     .client_cert_files("/etc/redis/tls/client.crt", "/etc/redis/tls/client.key")?;
    /// # Ok(()) }
    /// ```
    pub fn client_cert_files(
        self,
        cert: impl AsRef<Path>,
        key: impl AsRef<Path>,
    ) -> Result<TlsConfig> {
        let (cert, key) = (cert.as_ref(), key.as_ref());
        let cert_pem = read_file(cert, "client certificate")?;
        let key_pem = read_file(key, "client key")?;
        let chain = parse_certs(
            &cert_pem,
            &format!("client certificate file {}", cert.display()),
        )?;
        let key = parse_key(&key_pem, &format!("client key file {}", key.display()))?;
        self.set_client_auth(chain, key)
    }

    /// Like [`TlsConfig::client_cert_files`], with the PEM text itself.
    ///
    /// # Errors
    ///
    /// As [`TlsConfig::client_cert_files`].
    ///
    /// # Examples
    ///
    /// ```
    /// # fn main() -> redcluster::Result<()> {
    /// # let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    /// # let ca_pem = ca.cert.pem();
    /// # let client = rcgen::generate_simple_self_signed(vec!["app".to_string()]).unwrap();
    /// # let (cert_pem, key_pem) = (client.cert.pem(), client.signing_key.serialize_pem());
    /// let tls = redcluster::TlsConfig::new()
    ///     .ca_cert_pem(&ca_pem)?
    ///     .client_cert_pem(&cert_pem, &key_pem)?;
    /// assert!(tls.has_client_cert());
    /// # Ok(()) }
    /// ```
    pub fn client_cert_pem(
        self,
        cert: impl AsRef<[u8]>,
        key: impl AsRef<[u8]>,
    ) -> Result<TlsConfig> {
        let chain = parse_certs(cert.as_ref(), "client certificate PEM")?;
        let key = parse_key(key.as_ref(), "client key PEM")?;
        self.set_client_auth(chain, key)
    }

    fn set_client_auth(
        self,
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> Result<TlsConfig> {
        provider()
            .key_provider
            .load_private_key(key.clone_key())
            .map_err(|_| {
                Error::Config(
                    "the client private key is of an unsupported type (RSA, ECDSA P-256/P-384 \
                     and Ed25519 are supported)"
                        .into(),
                )
            })?;
        Ok(self.with(|s| {
            s.client_auth = Some(ClientAuth {
                chain,
                key: Arc::new(key),
            })
        }))
    }

    /// Also trusts the platform's CA certificates (the system store), for nodes with
    /// certificates from a public CA.
    ///
    /// ```
    /// // A managed service whose nodes have certificates from a public CA.
    /// let tls = redcluster::TlsConfig::new().native_roots();
    /// assert!(format!("{tls:?}").contains("native_roots: true"));
    /// ```
    #[cfg(feature = "native-roots")]
    pub fn native_roots(self) -> TlsConfig {
        self.with(|s| s.native_roots = true)
    }

    /// Checks every node's certificate against this one name, whatever address the node
    /// was reached at; it is also the name sent in SNI.
    ///
    /// For clusters whose nodes announce IP addresses (what `CLUSTER SHARDS` and `MOVED`
    /// name) while their certificates carry a DNS name. May be an IP address too.
    /// An invalid name fails the client's `build` with [`Error::Config`].
    ///
    /// ```
    /// # fn main() -> redcluster::Result<()> {
    /// # let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    /// # let ca_pem = ca.cert.pem();
    /// // The nodes announce IP addresses; their certificates name redis.internal.example.
    /// let tls = redcluster::TlsConfig::new()
    ///     .ca_cert_pem(&ca_pem)?
    ///     .server_name("redis.internal.example");
    /// assert!(format!("{tls:?}").contains("redis.internal.example"));
    /// # Ok(()) }
    /// ```
    pub fn server_name(self, name: impl Into<String>) -> TlsConfig {
        let name = name.into();
        self.with(|s| s.server_name = Some(name))
    }

    /// **Dangerous**: accepts any certificate from any node, of any name, expired or
    /// self-signed. Traffic is still encrypted, but anyone in the path can impersonate
    /// the nodes and read everything, passwords included.
    ///
    /// Only for development against throwaway servers. A warning is logged (once) when a
    /// configuration with it is first used.
    ///
    /// ```
    /// // Development only: a throwaway local cluster with a self-signed certificate.
    /// let tls = redcluster::TlsConfig::new().danger_accept_invalid_certificates();
    /// assert!(format!("{tls:?}").contains("danger_accept_invalid_certificates: true"));
    /// ```
    pub fn danger_accept_invalid_certificates(self) -> TlsConfig {
        self.with(|s| s.accept_invalid_certificates = true)
    }

    /// Whether a client certificate is configured.
    ///
    /// ```
    /// # fn main() -> redcluster::Result<()> {
    /// # let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    /// # let ca_pem = ca.cert.pem();
    /// # let client = rcgen::generate_simple_self_signed(vec!["app".to_string()]).unwrap();
    /// # let (cert_pem, key_pem) = (client.cert.pem(), client.signing_key.serialize_pem());
    /// use redcluster::TlsConfig;
    /// let one_way = TlsConfig::new().ca_cert_pem(&ca_pem)?;
    /// assert!(!one_way.has_client_cert());
    /// assert!(one_way.client_cert_pem(&cert_pem, &key_pem)?.has_client_cert());
    /// # Ok(()) }
    /// ```
    pub fn has_client_cert(&self) -> bool {
        self.inner.settings.client_auth.is_some()
    }

    /// Builds the rustls configuration now, to report errors at configuration time.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when no CA is trusted, the server name is invalid, the client
    /// key does not match its certificate, or the platform's roots cannot be loaded.
    pub(crate) fn prepare(&self) -> Result<()> {
        self.built().map(|_| ())
    }

    fn built(&self) -> Result<&Built> {
        self.inner
            .built
            .get_or_init(|| build(&self.inner.settings))
            .as_ref()
            .map_err(Clone::clone)
    }

    /// The name a node reached at `addr` is checked against and sent as SNI, and the
    /// rustls configuration to use. For a node that `announced` another host than the
    /// one dialled (an address remap), a certificate valid for either is accepted; the
    /// name sent as SNI stays the dialled one when that is a DNS name (as without a
    /// remap, so that a proxy routing on it keeps working), and is the announced one
    /// when only that is a DNS name (SNI carries no addresses).
    fn connector_for(
        &self,
        built: &Built,
        addr: &str,
        announced: Option<&str>,
    ) -> Result<(ServerName<'static>, Arc<ClientConfig>)> {
        if let Some(name) = &built.server_name {
            return Ok((name.clone(), Arc::clone(&built.config)));
        }
        let host = host_of(addr);
        let dialled = parse_server_name(host);
        let announced = announced
            .map(host_of)
            .filter(|a| *a != host)
            .and_then(|a| parse_server_name(a).ok());
        match (announced, dialled) {
            (Some(announced), Ok(dialled)) => {
                let (name, also) = match dialled {
                    ServerName::IpAddress(_) => (announced, dialled),
                    _ => (dialled, announced),
                };
                let Some(verifier) = &built.verifier else {
                    return Ok((name, Arc::clone(&built.config)));
                };
                let mut config = (*built.config).clone();
                config
                    .dangerous()
                    .set_certificate_verifier(Arc::new(EitherName {
                        verifier: Arc::clone(verifier),
                        also,
                    }));
                Ok((name, Arc::new(config)))
            }
            (Some(announced), Err(())) => Ok((announced, Arc::clone(&built.config))),
            (None, Ok(dialled)) => Ok((dialled, Arc::clone(&built.config))),
            (None, Err(())) => Err(Error::Tls(format!(
                "cannot verify {addr}: {host:?} is neither an IP address nor a valid DNS \
                 name; set TlsConfig::server_name"
            ))),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    Arc::clone(PROVIDER.get_or_init(|| Arc::new(rustls::crypto::ring::default_provider())))
}

fn read_file(path: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(path)
        .map_err(|e| Error::Config(format!("cannot read {what} file {}: {e}", path.display())))
}

fn parse_certs(pem: &[u8], what: &str) -> Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::Config(format!("{what}: {}", describe_pem_error(&e))))?;
    if certs.is_empty() {
        return Err(Error::Config(format!(
            "{what}: no PEM CERTIFICATE block found"
        )));
    }
    Ok(certs)
}

fn parse_key(pem: &[u8], what: &str) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| {
        Error::Config(match e {
            pem::Error::NoItemsFound => format!(
                "{what}: no private key found (expected a PEM PRIVATE KEY, RSA PRIVATE KEY \
                 or EC PRIVATE KEY block)"
            ),
            e => format!("{what}: {}", describe_pem_error(&e)),
        })
    })
}

/// What is wrong with a PEM input, without quoting any of it.
fn describe_pem_error(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "malformed PEM: a section has no END line",
        pem::Error::IllegalSectionStart { .. } => "malformed PEM: an invalid BEGIN line",
        pem::Error::Base64Decode(_) => "malformed PEM: invalid base64",
        pem::Error::NoItemsFound => "no PEM block of the expected type found",
        pem::Error::SectionTooLarge => "malformed PEM: a section is too large",
        _ => "malformed PEM",
    }
}

fn parse_server_name(host: &str) -> std::result::Result<ServerName<'static>, ()> {
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(ServerName::IpAddress(ip.into()));
    }
    ServerName::try_from(host.to_owned()).map_err(|_| ())
}

/// The host of `host:port`, without the brackets of an IPv6 address.
fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => addr,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

fn build(settings: &Settings) -> Result<Built> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?;
    let mut checks = None;
    let builder = if settings.accept_invalid_certificates {
        static WARNED: AtomicBool = AtomicBool::new(false);
        if !WARNED.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                "TLS certificate verification is OFF (TlsConfig::danger_accept_invalid_certificates): \
                 connections are encrypted but not authenticated; never use this in production"
            );
        }
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        for cert in &settings.ca_certs {
            roots
                .add(cert.clone())
                .map_err(|e| Error::Config(format!("unusable CA certificate: {e}")))?;
        }
        if settings.native_roots {
            add_native_roots(&mut roots)?;
        }
        if roots.is_empty() {
            return Err(Error::Config(
                "TLS is on but no CA certificate is trusted: use TlsConfig::ca_cert_file or \
                 ca_cert_pem (or REDIS_TLS_CA), or TlsConfig::native_roots with the \
                 `native-roots` feature"
                    .into(),
            ));
        }
        let verifier =
            rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| Error::Config(format!("TLS setup failed: {e}")))?;
        checks = Some(Arc::clone(&verifier) as Arc<dyn ServerCertVerifier>);
        builder.with_webpki_verifier(verifier)
    };
    let config = match &settings.client_auth {
        Some(auth) => builder
            .with_client_auth_cert(auth.chain.clone(), auth.key.clone_key())
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => Error::Config(
                    "the client private key does not belong to the client certificate".into(),
                ),
                _ => Error::Config(format!("unusable client certificate: {e}")),
            })?,
        None => builder.with_no_client_auth(),
    };
    let server_name = match &settings.server_name {
        Some(name) => Some(parse_server_name(name).map_err(|_| {
            Error::Config(format!(
                "TLS server name {name:?} is neither a DNS name nor an IP address"
            ))
        })?),
        None => None,
    };
    Ok(Built {
        config: Arc::new(config),
        server_name,
        verifier: checks,
    })
}

#[cfg(feature = "native-roots")]
fn add_native_roots(roots: &mut RootCertStore) -> Result<()> {
    let loaded = rustls_native_certs::load_native_certs();
    if loaded.certs.is_empty() {
        let why = loaded
            .errors
            .first()
            .map(ToString::to_string)
            .unwrap_or_else(|| "the store is empty".into());
        return Err(Error::Config(format!(
            "no platform CA certificates could be loaded: {why}"
        )));
    }
    let (added, ignored) = roots.add_parsable_certificates(loaded.certs);
    tracing::debug!(added, ignored, "loaded platform CA certificates");
    Ok(())
}

#[cfg(not(feature = "native-roots"))]
fn add_native_roots(_roots: &mut RootCertStore) -> Result<()> {
    Ok(())
}

/// Opens TLS over a connected stream to `addr`, within `deadline`.
///
/// # Errors
///
/// [`Error::Tls`] naming the reason when the handshake fails (unknown CA, wrong name,
/// a refused client certificate, ...); [`Error::Io`] when the stream fails or the
/// deadline passes.
pub(crate) async fn connect<S>(
    addr: &str,
    announced: Option<&str>,
    stream: S,
    tls: &TlsConfig,
    deadline: Instant,
) -> Result<tokio_rustls::client::TlsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let built = tls.built()?;
    let (name, config) = tls.connector_for(built, addr, announced)?;
    let connector = tokio_rustls::TlsConnector::from(config);
    match tokio::time::timeout_at(deadline, connector.connect(name, stream)).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(e)) => Err(classify(addr, Error::io(e, false), tls)),
        Err(_) => Err(Error::io(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("TLS handshake with {addr} timed out"),
            ),
            false,
        )),
    }
}

/// Turns an I/O error that carries a TLS failure into [`Error::Tls`] with its reason;
/// other errors pass through.
///
/// With TLS 1.3 the client finishes its side of the handshake before the server checks
/// the client's certificate, so a refused certificate shows on the first read, as an
/// alert from the server: the connection's setup runs every error through here.
pub(crate) fn classify(addr: &str, error: Error, tls: &TlsConfig) -> Error {
    let Error::Io { source, .. } = &error else {
        return error;
    };
    let Some(tls_error) = source
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
    else {
        return error;
    };
    Error::Tls(format!(
        "handshake with {addr} failed: {} ({tls_error})",
        reason(tls_error, tls.has_client_cert())
    ))
}

/// A sentence on what a TLS error means for the user.
fn reason(error: &rustls::Error, has_client_cert: bool) -> &'static str {
    use rustls::Error as E;
    match error {
        E::InvalidCertificate(cert) => match cert {
            CertificateError::UnknownIssuer => {
                "unknown CA: the node's certificate is not signed by a trusted CA"
            }
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                "bad name: the node's certificate is not valid for the name it was checked \
                 against (set TlsConfig::server_name when nodes announce addresses their \
                 certificates do not list)"
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                "the node's certificate has expired"
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                "the node's certificate is not valid yet"
            }
            CertificateError::Revoked => "the node's certificate is revoked",
            CertificateError::BadSignature => "the node's certificate has a bad signature",
            CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
                "the node's certificate is not valid for TLS server authentication"
            }
            _ => "the node's certificate is invalid",
        },
        E::AlertReceived(AlertDescription::CertificateRequired) => {
            if has_client_cert {
                "the node requires a client certificate and refused the one presented"
            } else {
                "no client certificate: the node requires one (mutual TLS, \
                 tls-auth-clients yes); configure TlsConfig::client_cert_files"
            }
        }
        E::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::AccessDenied,
        ) => "the node refused the client certificate",
        E::AlertReceived(AlertDescription::HandshakeFailure) if !has_client_cert => {
            "the node refused the handshake: no common protocol or cipher, or it requires a \
             client certificate (mutual TLS) and none is configured"
        }
        E::AlertReceived(_) => "the node refused the handshake",
        E::NoCertificatesPresented => "the node presented no certificate",
        E::InvalidMessage(_) | E::InappropriateMessage { .. } => {
            "the node does not speak TLS on this port (or the stream is corrupt)"
        }
        E::PeerIncompatible(_) => "no TLS version or cipher suite in common with the node",
        _ => "TLS failure",
    }
}

/// The CA check of a node reached at a remapped address: the certificate must be valid
/// for the name rustls passes in or for `also`, one the name the node announced, the
/// other the host dialled. The chain, dates and signatures are checked as always; only
/// the name may be either.
#[derive(Debug)]
struct EitherName {
    verifier: Arc<dyn ServerCertVerifier>,
    also: ServerName<'static>,
}

impl ServerCertVerifier for EitherName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        let verify = |name: &ServerName<'_>| {
            self.verifier
                .verify_server_cert(end_entity, intermediates, name, ocsp_response, now)
        };
        match verify(server_name) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if verify(&self.also).is_ok() => Ok(ServerCertVerified::assertion()),
            outcome => outcome,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.verifier.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.verifier.supported_verify_schemes()
    }
}

/// The verifier of [`TlsConfig::danger_accept_invalid_certificates`]: accepts every
/// certificate, but still checks that the handshake is signed by its key.
#[derive(Debug)]
struct AcceptAnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_of_addresses() {
        assert_eq!(host_of("127.0.0.1:7000"), "127.0.0.1");
        assert_eq!(host_of("[::1]:7000"), "::1");
        assert_eq!(host_of("redis-0.example:6380"), "redis-0.example");
        assert!(matches!(
            parse_server_name("127.0.0.1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            parse_server_name("::1"),
            Ok(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            parse_server_name("redis.example"),
            Ok(ServerName::DnsName(_))
        ));
        assert!(parse_server_name("not a name").is_err());
    }

    #[test]
    fn no_ca_is_a_config_error() {
        let err = TlsConfig::new().prepare().unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("no CA certificate")),
            "{err}"
        );
        TlsConfig::new()
            .danger_accept_invalid_certificates()
            .prepare()
            .unwrap();
    }

    #[test]
    fn bad_pem_errors_do_not_quote_the_input() {
        let err = TlsConfig::new()
            .ca_cert_pem("-----BEGIN CERTIFICATE-----\nc2VjcmV0LXN0dWZm!!\n")
            .unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
        let err = TlsConfig::new()
            .client_cert_pem(
                "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
                "-----BEGIN PRIVATE KEY-----\nS3cr3tKeyMaterial\n",
            )
            .unwrap_err();
        assert!(!err.to_string().contains("S3cr3t"), "{err}");
        let err = TlsConfig::new().ca_cert_pem("nothing here").unwrap_err();
        assert!(err.to_string().contains("no PEM CERTIFICATE"), "{err}");
        let err = TlsConfig::new()
            .ca_cert_file("/nonexistent/ca.crt")
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.crt"), "{err}");
    }

    /// The first bytes a TLS connection to `addr` sends (its ClientHello), the node
    /// having `announced` itself as it says.
    async fn client_hello(dialled_as: &str, announced: Option<&str>) -> Vec<u8> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let server = tokio::spawn(async move {
            use tokio::io::AsyncReadExt as _;
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut hello = vec![0; 4096];
            let n = socket.read(&mut hello).await.unwrap();
            hello.truncate(n);
            hello // dropping the socket ends the handshake
        });
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let tls = TlsConfig::new().danger_accept_invalid_certificates();
        let deadline = Instant::now() + std::time::Duration::from_secs(5);
        // The stream is connected already: the address only names the node.
        let dialled = dialled_as.replace("PORT", addr.rsplit_once(':').unwrap().1);
        let result = connect(&dialled, announced, stream, &tls, deadline).await;
        assert!(result.is_err(), "the listener never answers");
        server.await.unwrap()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[tokio::test]
    async fn sni_names_the_host_dialled_or_else_the_one_announced() {
        // Dialled by address: SNI takes no addresses, so it carries the announced name.
        let hello = client_hello("127.0.0.1:PORT", Some("redis-7.example:6380")).await;
        assert!(contains(&hello, b"redis-7.example"), "SNI carries the name");
        // Dialled by name: that name, as without a remap (a proxy may route on it).
        let hello = client_hello("localhost:PORT", Some("redis-7.example:6380")).await;
        assert!(contains(&hello, b"localhost"));
        assert!(!contains(&hello, b"redis-7.example"));
        // Dialled by address and not remapped: no name at all.
        let hello = client_hello("127.0.0.1:PORT", None).await;
        assert!(contains(&hello, &[0x16, 0x03]), "a TLS handshake record");
        assert!(!contains(&hello, b"redis-7.example") && !contains(&hello, b"localhost"));
    }

    #[test]
    fn debug_shows_shape_only() {
        let tls = TlsConfig::new().server_name("redis.example");
        let shown = format!("{tls:?}");
        assert!(shown.contains("redis.example"), "{shown}");
        assert!(shown.contains("ca_certs: 0"), "{shown}");
    }
}
