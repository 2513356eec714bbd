//! What a node connection is opened with.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::cmd::CommandRenames;
use crate::conn::tls::TlsConfig;
use crate::error::Result;
use crate::resp::Limits;

/// The RESP version a connection asks for.
///
/// ```
/// use redcluster::{ClusterClient, Protocol};
/// assert_eq!(Protocol::default(), Protocol::Resp3);
/// // RESP2 only, e.g. behind a proxy that does not know HELLO.
/// let builder = ClusterClient::builder().nodes(["127.0.0.1:7000"]).protocol(Protocol::Resp2);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Protocol {
    /// RESP3 via `HELLO 3`, falling back to RESP2 when the server refuses it (default).
    #[default]
    Resp3,
    /// RESP2 only; authenticates with `AUTH`.
    Resp2,
}

/// A password or other secret. `Debug` and `Display` print `"***"`, so a secret can sit in
/// configuration structs that get logged.
///
/// ```
/// use redcluster::Secret;
/// let password = Secret::new("hunter2");
/// assert_eq!(format!("{password:?} {password}"), "*** ***");
/// assert_eq!(password.expose(), "hunter2");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    /// Wraps a secret string.
    ///
    /// ```
    /// let password = redcluster::Secret::new(std::env::var("REDIS_PASSWORD").unwrap_or_default());
    /// assert_eq!(password.to_string(), "***");
    /// ```
    pub fn new(secret: impl Into<String>) -> Self {
        Secret(Arc::from(secret.into()))
    }

    /// The secret itself; only for sending it to the server.
    ///
    /// ```
    /// assert_eq!(redcluster::Secret::new("hunter2").expose(), "hunter2");
    /// ```
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret::new(s)
    }
}

impl From<String> for Secret {
    fn from(s: String) -> Self {
        Secret::new(s)
    }
}

/// The future a [`CredentialsProvider`] returns: the ACL user name (`None` for the
/// `default` user) and the password.
///
/// ```
/// use redcluster::{CredentialsFuture, CredentialsProvider, Secret};
/// fn fetch_credentials() -> CredentialsFuture {
///     Box::pin(async { Ok((Some("app".to_string()), Secret::new("s3cret"))) })
/// }
/// let provider = CredentialsProvider::new(fetch_credentials);
/// ```
pub type CredentialsFuture = Pin<Box<dyn Future<Output = Result<(Option<String>, Secret)>> + Send>>;

type CredentialsFn = dyn Fn() -> CredentialsFuture + Send + Sync;

/// Asked for the user name and password each time a connection is opened, in its
/// handshake: for passwords that rotate (a secrets manager, short-lived tokens).
///
/// It takes precedence over a fixed username and password. Its result is not cached:
/// every new connection (seeds, discovered nodes, replicas, redirect targets, dedicated
/// connections) asks again; connections already open stay authenticated as they were.
/// A provider that fails fails the connection with its error. `Debug` shows nothing of
/// it.
///
/// ```
/// use redcluster::{CredentialsProvider, Secret};
/// let provider = CredentialsProvider::new(|| async {
///     // e.g. read the current password from a secrets manager
///     let password = std::env::var("APP_REDIS_PASSWORD").unwrap_or_default();
///     Ok((Some("app".to_string()), Secret::new(password)))
/// });
/// ```
#[derive(Clone)]
pub struct CredentialsProvider(Arc<CredentialsFn>);

impl CredentialsProvider {
    /// A provider from an async closure returning `(username, password)`.
    ///
    /// ```no_run
    /// use redcluster::{CredentialsProvider, Error, Secret};
    /// // A password file that a sidecar rewrites whenever the password rotates.
    /// let provider = CredentialsProvider::new(|| async {
    ///     let password = tokio::fs::read_to_string("/run/secrets/redis-password")
    ///         .await
    ///         .map_err(|_| Error::Auth("cannot read the password file".into()))?;
    ///     Ok((Some("app".to_string()), Secret::new(password.trim())))
    /// });
    /// ```
    pub fn new<F, Fut>(f: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(Option<String>, Secret)>> + Send + 'static,
    {
        CredentialsProvider(Arc::new(move || Box::pin(f()) as CredentialsFuture))
    }

    /// Asks the provider for the current credentials.
    ///
    /// # Errors
    ///
    /// Whatever the provider returns.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> redcluster::Result<()> {
    /// use redcluster::{CredentialsProvider, Secret};
    /// let provider = CredentialsProvider::new(|| async { Ok((None, Secret::new("s3cret"))) });
    /// let (user, password) = provider.credentials().await?;
    /// assert_eq!((user, password.expose()), (None, "s3cret"));
    /// # Ok(()) }
    /// ```
    pub async fn credentials(&self) -> Result<(Option<String>, Secret)> {
        (self.0)().await
    }
}

impl fmt::Debug for CredentialsProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("CredentialsProvider(..)")
    }
}

/// How to open and run one connection to one node.
///
/// `Debug` never shows the password, private keys or the credentials provider.
///
/// ```
/// use std::time::Duration;
/// use redcluster::ConnectOptions;
/// let options = ConnectOptions::default()
///     .username("app")
///     .password("s3cret")
///     .connect_timeout(Duration::from_secs(2));
/// assert_eq!(options.max_in_flight, 4096); // a default
/// assert!(!format!("{options:?}").contains("s3cret"));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Bound on TCP connect plus handshake (`HELLO`/`AUTH`/`READONLY`, and `CLUSTER
    /// MYID` for a cluster client's node). Default 5 s. A host name with several
    /// addresses has them tried 250 ms apart, all within this bound (RFC 8305).
    pub connect_timeout: Duration,
    /// Deadline of a request sent with [`crate::NodeConnection::send`]. Default 5 s.
    pub response_timeout: Duration,
    /// ACL user name; `None` authenticates as `default` when a password is set.
    pub username: Option<String>,
    /// Password for `AUTH`/`HELLO ... AUTH`.
    pub password: Option<Secret>,
    /// RESP version to ask for. Default [`Protocol::Resp3`].
    pub protocol: Protocol,
    /// Send `READONLY` after the handshake, for reads from replicas. Default false.
    pub read_only: bool,
    /// TCP keepalive idle time; `None` turns keepalive off. Default 60 s. Probes then
    /// go 10 s apart at most, and three unanswered end the connection (Linux, Android,
    /// macOS, FreeBSD; elsewhere the system's count). Set in whole seconds, from 1 to
    /// 32767 (what Linux takes): outside that it is brought within.
    pub tcp_keepalive: Option<Duration>,
    /// How long the server may send no byte, while it owes replies to a request that
    /// already timed out, before the connection is closed as dead; `None` (or zero)
    /// never closes it for that. Default 10 s. A flow that died silently (a NAT or a
    /// firewall forgot it, a host gone without a reset) otherwise gives no error for
    /// about 15 minutes on Linux, while every request on it times out. Counted from the
    /// write of the oldest request owed or the last byte read, whichever is later.
    pub unresponsive_timeout: Option<Duration>,
    /// `CLIENT SETNAME` value shown in `CLIENT LIST`. Default none.
    pub client_name: Option<String>,
    /// Requests written but not yet answered, at most; more wait in a queue of the same
    /// size, and callers beyond that wait to enqueue (backpressure). Default 4096.
    pub max_in_flight: usize,
    /// Decoder limits for replies.
    pub limits: Limits,
    /// TLS for the connection; `None` is plain TCP. Default none.
    pub tls: Option<TlsConfig>,
    /// Asked for the user name and password in every handshake; overrides
    /// [`ConnectOptions::username`] and [`ConnectOptions::password`]. Default none.
    pub credentials: Option<CredentialsProvider>,
    /// Commands renamed or disabled on the server; applied to every command this
    /// connection writes, the handshake's included. Default none.
    pub renames: CommandRenames,
    /// The address the node announced, when the cluster client reaches it at another
    /// (an address remap): TLS asks for that name (see [`TlsConfig`]).
    pub(crate) announced: Option<Arc<str>>,
    /// The node ids the cluster client's map gives its nodes: the handshake checks that
    /// the node answering at the address is that one (see [`NodeIds`]).
    pub(crate) node_ids: Option<Arc<NodeIds>>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(5),
            username: None,
            password: None,
            protocol: Protocol::Resp3,
            read_only: false,
            tcp_keepalive: Some(Duration::from_secs(60)),
            unresponsive_timeout: Some(Duration::from_secs(10)),
            client_name: None,
            max_in_flight: 4096,
            limits: Limits::default(),
            tls: None,
            credentials: None,
            renames: CommandRenames::default(),
            announced: None,
            node_ids: None,
        }
    }
}

impl ConnectOptions {
    /// Sets the password (and keeps the user name as it is). An empty one with no user
    /// name is none; with a user name, it is that (`nopass`) user's login.
    ///
    /// ```
    /// use redcluster::{ConnectOptions, Secret};
    /// let options = ConnectOptions::default().password("s3cret");
    /// assert_eq!(options.password.as_ref().map(Secret::expose), Some("s3cret"));
    /// ```
    pub fn password(mut self, password: impl Into<Secret>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Sets the ACL user name.
    ///
    /// ```
    /// let options = redcluster::ConnectOptions::default().username("app").password("s3cret");
    /// assert_eq!(options.username.as_deref(), Some("app"));
    /// ```
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.username = Some(username.into());
        self
    }

    /// Sets [`ConnectOptions::protocol`].
    ///
    /// ```
    /// use redcluster::{ConnectOptions, Protocol};
    /// assert_eq!(ConnectOptions::default().protocol(Protocol::Resp2).protocol, Protocol::Resp2);
    /// ```
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.protocol = protocol;
        self
    }

    /// Sets [`ConnectOptions::read_only`].
    ///
    /// ```
    /// // For a connection to a replica that should serve reads.
    /// assert!(redcluster::ConnectOptions::default().read_only(true).read_only);
    /// ```
    pub fn read_only(mut self, read_only: bool) -> Self {
        self.read_only = read_only;
        self
    }

    /// Sets [`ConnectOptions::connect_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let options = redcluster::ConnectOptions::default().connect_timeout(Duration::from_secs(1));
    /// assert_eq!(options.connect_timeout, Duration::from_secs(1));
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Sets [`ConnectOptions::response_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use redcluster::ConnectOptions;
    /// let options = ConnectOptions::default().response_timeout(Duration::from_millis(250));
    /// assert_eq!(options.response_timeout, Duration::from_millis(250));
    /// ```
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// Sets [`ConnectOptions::tls`]: connect with TLS.
    ///
    /// ```
    /// # fn main() -> redcluster::Result<()> {
    /// # let ca = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    /// # let ca_pem = ca.cert.pem();
    /// use redcluster::{ConnectOptions, TlsConfig};
    /// let options = ConnectOptions::default().tls(TlsConfig::new().ca_cert_pem(&ca_pem)?);
    /// assert!(options.tls.is_some());
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, tls: TlsConfig) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Sets [`ConnectOptions::credentials`].
    ///
    /// ```
    /// use redcluster::{ConnectOptions, CredentialsProvider, Secret};
    /// let provider = CredentialsProvider::new(|| async { Ok((None, Secret::new("s3cret"))) });
    /// let options = ConnectOptions::default().credentials_provider(provider);
    /// assert!(options.credentials.is_some());
    /// ```
    pub fn credentials_provider(mut self, provider: CredentialsProvider) -> Self {
        self.credentials = Some(provider);
        self
    }

    /// Sets [`ConnectOptions::renames`].
    ///
    /// ```
    /// use redcluster::{CommandRenames, ConnectOptions};
    /// let options = ConnectOptions::default().renames(CommandRenames::new().disable("FLUSHALL"));
    /// assert!(options.renames.is_disabled(b"FLUSHALL"));
    /// ```
    pub fn renames(mut self, renames: CommandRenames) -> Self {
        self.renames = renames;
        self
    }

    /// Sets [`ConnectOptions::unresponsive_timeout`]; a zero duration counts as `None`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use redcluster::ConnectOptions;
    /// let options = ConnectOptions::default().unresponsive_timeout(Some(Duration::from_secs(3)));
    /// assert_eq!(options.unresponsive_timeout, Some(Duration::from_secs(3)));
    /// let options = ConnectOptions::default().unresponsive_timeout(Some(Duration::ZERO));
    /// assert_eq!(options.unresponsive_timeout, None);
    /// ```
    pub fn unresponsive_timeout(mut self, limit: Option<Duration>) -> Self {
        self.unresponsive_timeout = limit.filter(|limit| !limit.is_zero());
        self
    }

    /// Sets [`ConnectOptions::max_in_flight`] (at least 1).
    ///
    /// ```
    /// let options = redcluster::ConnectOptions::default().max_in_flight(0);
    /// assert_eq!(options.max_in_flight, 1); // at least one
    /// ```
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = n.max(1);
        self
    }
}

/// The node id the cluster client's topology gives each address, shared by every
/// connection it opens and kept current by its refreshes.
///
/// A connection to an address with a known id asks `CLUSTER MYID` in its handshake and
/// is refused when another node answers: an address reused by a node of another
/// cluster (a Kubernetes pod IP handed to a new pod) would otherwise take this
/// cluster's requests, writes included, and answer them. A refresh likewise ignores a
/// view that names none of these nodes ([`NodeIds::shares_a_node`]) from such an
/// address. The seeds, the addresses the user gave, are trusted: never checked.
#[derive(Debug, Default)]
pub(crate) struct NodeIds {
    table: std::sync::Mutex<std::collections::HashMap<Arc<str>, Arc<str>>>,
    trusted: Vec<Arc<str>>,
}

impl NodeIds {
    /// An empty table that never checks the `trusted` addresses (the seeds, as dialled).
    pub(crate) fn trusting(trusted: Vec<Arc<str>>) -> NodeIds {
        NodeIds {
            table: Default::default(),
            trusted,
        }
    }

    fn table(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<Arc<str>, Arc<str>>> {
        self.table
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `addr` is one the user gave: whoever answers there is taken.
    pub(crate) fn is_trusted(&self, addr: &str) -> bool {
        self.trusted.iter().any(|t| **t == *addr)
    }

    /// Takes `ids` (address, id) as the whole table, a new topology's; returns the
    /// addresses whose node is new there or changed (a node replaced at its address is
    /// most often left out while the old one is flagged failed, then named). An address
    /// given two different ids is not checked.
    pub(crate) fn replace(&self, ids: &[(Arc<str>, Arc<str>)]) -> Vec<Arc<str>> {
        let mut next: std::collections::HashMap<Arc<str>, Arc<str>> =
            std::collections::HashMap::with_capacity(ids.len());
        let mut ambiguous = Vec::new();
        for (addr, id) in ids {
            if let Some(other) = next.insert(Arc::clone(addr), Arc::clone(id)) {
                if other != *id {
                    ambiguous.push(Arc::clone(addr));
                }
            }
        }
        for addr in &ambiguous {
            next.remove(addr);
        }
        let mut table = self.table();
        let changed = next
            .iter()
            .filter(|(addr, id)| table.get(*addr) != Some(*id))
            .map(|(addr, _)| Arc::clone(addr))
            .collect();
        *table = next;
        changed
    }

    /// The id of the node that should answer at `addr`, if known and `addr` is not
    /// trusted.
    pub(crate) fn of(&self, addr: &str) -> Option<Arc<str>> {
        if self.is_trusted(addr) {
            return None;
        }
        self.table().get(addr).cloned()
    }

    /// Whether a view naming the nodes `ids` is of the cluster known here: it names one
    /// of its nodes, or one side names none (nothing known yet, a server that gives no
    /// ids). A cluster replaced node by node keeps a node in common from one refresh to
    /// the next; another cluster has none.
    pub(crate) fn shares_a_node(&self, ids: &[(Arc<str>, Arc<str>)]) -> bool {
        let table = self.table();
        table.is_empty()
            || ids.is_empty()
            || ids
                .iter()
                .any(|(_, id)| table.values().any(|known| known == id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_hides_the_password() {
        let opts = ConnectOptions::default()
            .username("app")
            .password("hunter2");
        let shown = format!("{opts:?}");
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("***"));
        assert_eq!(opts.password.unwrap().expose(), "hunter2");
    }

    fn ids(pairs: &[(&str, &str)]) -> Vec<(Arc<str>, Arc<str>)> {
        pairs
            .iter()
            .map(|&(addr, id)| (Arc::from(addr), Arc::from(id)))
            .collect()
    }

    #[test]
    fn a_view_is_of_the_known_cluster_while_it_names_one_of_its_nodes() {
        let known = NodeIds::trusting(vec![Arc::from("seed:1")]);
        assert!(
            known.shares_a_node(&ids(&[("a:1", "x")])),
            "nothing known yet"
        );
        known.replace(&ids(&[("a:1", "x"), ("b:1", "y")]));
        assert_eq!(known.of("b:1").as_deref(), Some("y"));
        assert_eq!(known.of("c:1"), None);
        // One node replaced, another moved: still the same cluster.
        assert!(known.shares_a_node(&ids(&[("a:1", "z"), ("c:1", "y")])));
        assert!(!known.shares_a_node(&ids(&[("a:1", "z"), ("b:1", "w")])));
        assert!(known.shares_a_node(&[]), "a server that gives no ids");
        let changed = known.replace(&ids(&[
            ("a:1", "z"),
            ("b:1", "y"),
            ("c:1", "v"),
            ("c:1", "w"),
        ]));
        assert_eq!(changed, vec![Arc::from("a:1")], "another node at a:1");
        assert_eq!(
            known.of("c:1"),
            None,
            "two nodes at one address: not checked"
        );
        let changed = known.replace(&ids(&[("a:1", "z")]));
        assert!(changed.is_empty(), "{changed:?}");
        assert_eq!(known.of("b:1"), None, "replaced whole");
        let changed = known.replace(&ids(&[("a:1", "z"), ("b:1", "u")]));
        assert_eq!(
            changed,
            vec![Arc::from("b:1")],
            "b:1 named again, by another id"
        );
        known.replace(&ids(&[("seed:1", "z")]));
        assert_eq!(known.of("seed:1"), None, "a seed is trusted");
    }
}
