//! The client's configuration and its builder.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::conn::{ConnectOptions, Protocol, Secret};
use crate::error::{Error, Result};

/// Where read-only commands go.
///
/// Replica reads may return data a little behind the primary (replication is
/// asynchronous). Writes and commands that are not read-only always go to the primary.
///
/// ```
/// use redcluster::{ClusterClient, ReadFrom};
/// assert_eq!(ReadFrom::default(), ReadFrom::Primary);
/// // Spread reads over the replicas; writes still go to the primaries.
/// let builder = ClusterClient::builder()
///     .nodes(["127.0.0.1:7000"])
///     .read_from(ReadFrom::PreferReplica);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ReadFrom {
    /// Every command goes to the slot's primary (default).
    #[default]
    Primary,
    /// Reads go to a replica of the slot's shard, or to the primary when the shard has
    /// no replica the client can reach.
    PreferReplica,
    /// Reads go to the shard's replicas only while one is reachable; when none is (all
    /// down, or none known), reads fall back to the primary rather than fail: today the
    /// same as [`ReadFrom::PreferReplica`] (a read never fails for want of a replica).
    Replica,
    /// Reads rotate over the primary and its replicas, each shard in its own turns.
    RoundRobin,
    /// Reads go to the fastest nodes of the shard (primary included), by the PING
    /// latency the health checks measure: any node within 1.5 times the best latency
    /// (plus 0.2 ms) is chosen in turn, so reads spread over nodes that are about as fast
    /// instead of piling onto the single fastest. A node not measured yet, or whose last
    /// health check got no answer, is left out; until any node of the shard is measured,
    /// it behaves like [`ReadFrom::PreferReplica`].
    LowestLatency,
}

/// Maps addresses the cluster announces (`redis-cluster-0:6379`) to addresses this
/// client can reach (`127.0.0.1:6450`). Applied to every address the client learns:
/// discovered nodes and `MOVED`/`ASK` targets. Seeds are dialled as given, except that
/// a table ([`AddressRemap::from_map`]) also maps a seed given by one of its announced
/// addresses.
///
/// ```no_run
/// # async fn demo() -> redcluster::Result<()> {
/// use redcluster::{AddressRemap, ClusterClient};
/// // The nodes announce container names; this host reaches them on published ports.
/// let remap = AddressRemap::from_map([
///     ("redis-cluster-0:6379", "127.0.0.1:6450"),
///     ("redis-cluster-1:6379", "127.0.0.1:6451"),
///     ("redis-cluster-2:6379", "127.0.0.1:6452"),
/// ]);
/// let client = ClusterClient::builder()
///     .nodes(["127.0.0.1:6450"])
///     .address_remap(remap)
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct AddressRemap(Arc<Remap>);

enum Remap {
    /// `announced -> reachable`, and the other way round: a seed given by either
    /// address is known by both (the announced one is the name TLS may check, see
    /// [`crate::TlsConfig`]).
    Table {
        reachable: HashMap<String, String>,
        announced: HashMap<String, String>,
    },
    Closure(Box<RemapFn>),
}

type RemapFn = dyn Fn(&str) -> Option<String> + Send + Sync;

impl AddressRemap {
    /// A remap from a closure: `Some(new)` replaces the address, `None` keeps it.
    ///
    /// ```
    /// use redcluster::AddressRemap;
    /// // Every node announces 10.0.0.x:6379; a tunnel maps each to a local port.
    /// let remap = AddressRemap::from_fn(|addr| {
    ///     let last = addr.strip_prefix("10.0.0.")?.strip_suffix(":6379")?;
    ///     Some(format!("127.0.0.1:{}", 6400 + last.parse::<u16>().ok()?))
    /// });
    /// ```
    pub fn from_fn(f: impl Fn(&str) -> Option<String> + Send + Sync + 'static) -> Self {
        AddressRemap(Arc::new(Remap::Closure(Box::new(f))))
    }

    /// A remap from a table of `announced -> reachable` addresses.
    ///
    /// ```
    /// use redcluster::AddressRemap;
    /// let remap = AddressRemap::from_map([("redis-0:6379", "127.0.0.1:6450")]);
    /// ```
    pub fn from_map<K, V>(map: impl IntoIterator<Item = (K, V)>) -> Self
    where
        K: Into<String>,
        V: Into<String>,
    {
        let reachable: HashMap<String, String> =
            map.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        let announced = reachable
            .iter()
            .map(|(k, v)| (v.clone(), k.clone()))
            .collect();
        AddressRemap(Arc::new(Remap::Table {
            reachable,
            announced,
        }))
    }

    pub(crate) fn apply(&self, addr: &str) -> String {
        let mapped = match &*self.0 {
            Remap::Table { reachable, .. } => reachable.get(addr).cloned(),
            Remap::Closure(f) => f(addr),
        };
        mapped.unwrap_or_else(|| addr.to_string())
    }

    /// Where a seed is dialled, and the address it announced if the remap knows it. A
    /// table maps a seed given by its announced address and names one given by its
    /// reachable address; a closure, which may rewrite any address (a port shift), leaves
    /// seeds as given.
    pub(crate) fn seed(&self, seed: &str) -> (String, Option<String>) {
        match &*self.0 {
            Remap::Table {
                reachable,
                announced,
            } => match reachable.get(seed) {
                Some(reached) => (reached.clone(), Some(seed.to_string())),
                None => (seed.to_string(), announced.get(seed).cloned()),
            },
            Remap::Closure(_) => (seed.to_string(), None),
        }
    }
}

impl fmt::Debug for AddressRemap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AddressRemap(..)")
    }
}

/// The seed nodes. Until `build()` parses them, a URL seed may carry a password, so
/// `Debug` shows a URL's credentials as `***`.
#[derive(Clone, Default, PartialEq)]
pub(crate) struct Seeds(pub(crate) Vec<String>);

impl std::ops::Deref for Seeds {
    type Target = Vec<String>;

    fn deref(&self) -> &Vec<String> {
        &self.0
    }
}

impl fmt::Debug for Seeds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|seed| without_credentials(seed)))
            .finish()
    }
}

/// `seed` with whatever precedes its last `@` (a URL's user and password) as `***`;
/// with no `@`, all of it after the scheme when it may be credentials whose `@host` was
/// left out (`redis://app:s3cret`, see [`may_be_credentials`]); and a query after the
/// host (`?password=...`, refused when the seed is read) as `?***`.
fn without_credentials(seed: &str) -> std::borrow::Cow<'_, str> {
    let scheme_end = seed.find("://").map_or(0, |end| end + 3);
    let shown: std::borrow::Cow<'_, str> = match seed.rfind('@') {
        None if may_be_credentials(&seed[scheme_end..]) => {
            return format!("{}***", &seed[..scheme_end]).into();
        }
        None => seed.into(),
        Some(at) => {
            let scheme = if scheme_end > 0 && scheme_end <= at {
                &seed[..scheme_end]
            } else {
                ""
            };
            format!("{scheme}***@{}", &seed[at + 1..]).into()
        }
    };
    let host_start = shown.rfind('@').map_or(0, |at| at + 1);
    match shown[host_start..].find('?') {
        Some(query) => format!("{}?***", &shown[..host_start + query]).into(),
        None => shown,
    }
}

/// Whether a seed's address part, which has no `@`, may be a user and password whose
/// `@host` was left out (`app:s3cret`, `:123456`, `app:pw:2024`): it has a `:` and is
/// not a host (a name, or an IPv6 address in brackets) and a port number. Such text is
/// never shown, in `Debug` or in an error; a mistyped port (`host:99999`) is.
fn may_be_credentials(hostport: &str) -> bool {
    let hostport = hostport.split(['/', '?']).next().unwrap_or("");
    hostport.rsplit_once(':').is_some_and(|(host, port)| {
        let bracketed = host.starts_with('[') && host.ends_with(']');
        host.is_empty()
            || (host.contains(':') && !bracketed)
            || !port.bytes().all(|b| b.is_ascii_digit())
    })
}

/// Everything a [`crate::ClusterClient`] is built from. `Debug` never shows secrets.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    pub(crate) seeds: Seeds,
    pub(crate) connect: ConnectOptions,
    pub(crate) read_from: ReadFrom,
    pub(crate) response_timeout: Duration,
    pub(crate) max_redirects: u32,
    pub(crate) retry_on_cluster_down: bool,
    pub(crate) cluster_down_retry_attempts: u32,
    pub(crate) max_retries: u32,
    pub(crate) retry_base: Duration,
    pub(crate) retry_max: Duration,
    pub(crate) refresh_interval: Duration,
    pub(crate) refresh_min_interval: Duration,
    pub(crate) remap: Option<AddressRemap>,
    pub(crate) connections_per_node: usize,
    pub(crate) max_connections_per_node: usize,
    pub(crate) max_connections: usize,
    pub(crate) breaker: crate::policy::CircuitBreakerConfig,
    pub(crate) retry_budget: crate::policy::RetryBudgetConfig,
    pub(crate) health_check_interval: Option<Duration>,
    pub(crate) durability: Option<crate::cluster::Durability>,
    pub(crate) lazy_connect: bool,
}

/// Bounds `build` holds the settings to: past them a setting panics, spins or stops the
/// client from following the cluster, later and far from where it was set.
mod bounds {
    use std::time::Duration;

    // tokio's semaphore panics past `Semaphore::MAX_PERMITS`, and no process has more
    // file descriptors than this (Linux's `fs.nr_open` defaults to 1 048 576).
    pub(super) const MAX_CONNECTIONS: usize = 1_000_000;
    // deadpool sizes its queue and semaphore for the whole pool as it makes it (a huge
    // size overflows), and each connection from one address to one node needs a port
    // of its own, of which there are 65 536.
    pub(super) const MAX_CONNECTIONS_PER_NODE: usize = 65_536;
    // Every node gets this many connection places up front, and round robin opens them
    // all; one is the fastest for most loads, a few lift a socket or decoder bottleneck,
    // and many only spend the node's `maxclients` (10 000 by default, for all clients).
    pub(super) const CONNECTIONS_PER_NODE: usize = 64;
    // Each periodic refresh asks several nodes for the whole topology: below this it is
    // polling, not a period.
    pub(super) const REFRESH_INTERVAL_MIN: Duration = Duration::from_millis(100);
    // Zero lets a cluster that refuses connections be asked again the moment the last
    // attempt failed, in a loop.
    pub(super) const REFRESH_MIN_INTERVAL_MIN: Duration = Duration::from_millis(10);
    // Triggered refreshes (after `MOVED`, a lost node, `CLUSTERDOWN`, a lazy discovery
    // that failed) wait out the min interval too: past a day, a failover would go
    // unnoticed for good (`Duration::MAX`: for ever). Above `refresh_interval` it only
    // spaces the periodic refreshes as well, which is how tests keep refreshes out.
    pub(super) const REFRESH_MIN_INTERVAL_MAX: Duration = Duration::from_secs(24 * 3600);
    // The keepalive idle times Linux takes (`TCP_KEEPIDLE`, whole seconds): outside
    // them the socket keeps the system's (2 hours) and only a debug log says so.
    pub(super) const KEEPALIVE_MIN: Duration = Duration::from_secs(1);
    pub(super) const KEEPALIVE_MAX: Duration = Duration::from_secs(32_767);
}

/// Builds a [`crate::ClusterClient`]; every setter states its default.
///
/// ```no_run
/// # async fn demo() -> redcluster::Result<()> {
/// use std::time::Duration;
/// use redcluster::{ClusterClient, ReadFrom};
/// let client = ClusterClient::builder()
///     .nodes(["127.0.0.1:7000", "127.0.0.1:7001"])
///     .read_from(ReadFrom::Primary)
///     .response_timeout(Duration::from_secs(2))
///     .build()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct ClusterClientBuilder {
    config: Config,
}

impl Default for ClusterClientBuilder {
    fn default() -> Self {
        ClusterClientBuilder {
            config: Config {
                seeds: Seeds::default(),
                connect: ConnectOptions::default(),
                read_from: ReadFrom::Primary,
                response_timeout: Duration::from_secs(5),
                max_redirects: 16,
                retry_on_cluster_down: true,
                cluster_down_retry_attempts: 10,
                max_retries: 10,
                retry_base: Duration::from_millis(50),
                retry_max: Duration::from_secs(1),
                refresh_interval: Duration::from_secs(30),
                refresh_min_interval: Duration::from_millis(100),
                remap: None,
                connections_per_node: 1,
                max_connections_per_node: 10,
                max_connections: 50,
                breaker: crate::policy::CircuitBreakerConfig::default(),
                retry_budget: crate::policy::RetryBudgetConfig::default(),
                health_check_interval: Some(Duration::from_secs(10)),
                durability: None,
                lazy_connect: false,
            },
        }
    }
}

impl ClusterClientBuilder {
    /// Seed nodes: `host:port`, `redis://[user[:pass]@]host:port` or `rediss://...`. The
    /// rest of the cluster is discovered from whichever seed answers first. Credentials
    /// in a URL apply to every connection, as if given to [`Self::username`] and
    /// [`Self::password`]. Seeds are dialled as given (white space around each
    /// trimmed); with a table for [`Self::address_remap`] a seed may also be given by an
    /// announced address the table maps. Required. Ports are 1 to 65535, an IPv6 host
    /// goes in brackets (`[::1]:7000`; a zone by its number, `[fe80::1%2]:7000`), and a
    /// seed given twice (`h:1` and `redis://h:1`, or a name and the address the remap
    /// maps it to) counts once. A
    /// path (`/0`) is ignored; query parameters (`?protocol=2`) fail the build with
    /// [`crate::Error::Config`] rather than being ignored: set them on the builder.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000", "redis://app:s3cret@127.0.0.1:7001"])
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn nodes<I, S>(mut self, nodes: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        // Trimmed, as the environment's are: `" h:1"` read from a comma-separated list.
        self.config.seeds = Seeds(
            nodes
                .into_iter()
                .map(|s| s.as_ref().trim().to_string())
                .collect(),
        );
        self
    }

    /// Password for `AUTH`, sent on every connection. Default none; an empty one is none
    /// (as in a seed URL and the environment).
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .password(std::env::var("REDIS_PASSWORD").expect("REDIS_PASSWORD is set"))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn password(mut self, password: impl Into<Secret>) -> Self {
        self.config.connect.password = Some(password.into());
        self
    }

    /// ACL user name. Default none (the `default` user); an empty one is none.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .username("app")
    ///     .password("s3cret")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.config.connect.username = Some(username.into());
        self
    }

    /// TLS for every connection: seeds, discovered nodes, replicas, redirect targets
    /// and dedicated connections alike. Default none (plain TCP, unless a seed is
    /// `rediss://`).
    ///
    /// With TLS on, the client connects to the `tls-port` nodes report in
    /// `CLUSTER SHARDS`. Each node's certificate is checked against the host the client
    /// dials, unless [`crate::TlsConfig::server_name`] fixes one name for all; a node
    /// reached through [`ClusterClientBuilder::address_remap`] may present one for the
    /// name it announced instead.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::TlsConfig;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .tls(TlsConfig::new().ca_cert_file("ca.crt")?)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, tls: crate::TlsConfig) -> Self {
        self.config.connect.tls = Some(tls);
        self
    }

    /// Asks `provider` for the user name and password each time a connection is
    /// opened, for passwords that rotate; it overrides [`Self::username`] and
    /// [`Self::password`]. Default none. See [`crate::CredentialsProvider`].
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::{CredentialsProvider, Secret};
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .credentials_provider(CredentialsProvider::new(|| async {
    ///         let password = std::env::var("REDIS_PASSWORD").unwrap_or_default();
    ///         Ok((Some("app".to_string()), Secret::new(password)))
    ///     }))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn credentials_provider(mut self, provider: crate::CredentialsProvider) -> Self {
        self.config.connect.credentials = Some(provider);
        self
    }

    /// Where read-only commands go. Default [`ReadFrom::Primary`].
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::ReadFrom;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .read_from(ReadFrom::RoundRobin)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn read_from(mut self, read_from: ReadFrom) -> Self {
        self.config.read_from = read_from;
        self
    }

    /// Bound on opening one connection (TCP and handshake). Default 5 s; the seed's
    /// `socket_connect_timeout`/`connection_timeout`. More than zero.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .connect_timeout(Duration::from_secs(2))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect.connect_timeout = timeout;
        self
    }

    /// Bound on a whole request, redirects and retries included. Default 5 s; the seed's
    /// `socket_timeout`. The client's own requests wait less when it is longer: a
    /// topology answer at most 5 s (after connecting), a health-check `PING` at most the
    /// health-check interval (or 1 s). More than zero.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .response_timeout(Duration::from_millis(500))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.config.response_timeout = timeout;
        self.config.connect.response_timeout = timeout;
        self
    }

    /// Most MOVED/ASK redirects one request follows before failing with
    /// [`Error::TooManyRedirects`]. Default 16.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .max_redirects(5)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn max_redirects(mut self, n: u32) -> Self {
        self.config.max_redirects = n;
        self
    }

    /// Retry requests answered with `CLUSTERDOWN` (with backoff, within the deadline).
    /// Default true; the seed's `retry_on_cluster_down`.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .retry_on_cluster_down(false) // fail at once; the caller decides
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn retry_on_cluster_down(mut self, retry: bool) -> Self {
        self.config.retry_on_cluster_down = retry;
        self
    }

    /// Most retries of one request answered with `CLUSTERDOWN`. Default 10 (the request's
    /// deadline usually ends them first); the seed's `cluster_down_retry_attempts`.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .cluster_down_retry_attempts(3)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn cluster_down_retry_attempts(mut self, n: u32) -> Self {
        self.config.cluster_down_retry_attempts = n;
        self
    }

    /// Most retries of one request, whatever made it retry: `TRYAGAIN`, `LOADING`,
    /// `MASTERDOWN`, a failure before the request was sent, a lost connection under an
    /// idempotent command, a slot with no owner yet, an open breaker while the slot
    /// moves. Default 10.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .max_retries(3)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn max_retries(mut self, n: u32) -> Self {
        self.config.max_retries = n;
        self
    }

    /// Backoff between retries: the first waits about `base`, each next one twice as
    /// long, never more than `max`, each with random jitter. Default 50 ms and 1 s; `base`
    /// more than zero (retries back to back would spin against a node that is loading).
    /// A `max` below `base` is taken as `base`. A retry whose wait would end past the
    /// request's deadline is not made: each wait is between half its step and all of
    /// it, so a `base` of twice `response_timeout` or more turns retries off.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .retry_backoff(Duration::from_millis(20), Duration::from_millis(500))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn retry_backoff(mut self, base: Duration, max: Duration) -> Self {
        self.config.retry_base = base;
        self.config.retry_max = max.max(base);
        self
    }

    /// Period of the background topology refresh. Default 30 s. Refreshes also happen on
    /// MOVED, connection failures and CLUSTERDOWN, and every second (or this period, if
    /// shorter) while a failed primary still holds slots, and for a minute after the set
    /// of nodes the cluster reports as failed last changed; then at this period again,
    /// even while a node stays failed. At least 100 ms.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .refresh_interval(Duration::from_secs(10))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.config.refresh_interval = interval;
        self
    }

    /// Least time between two topology refreshes, however many triggers arrive. Default
    /// 100 ms; from 10 ms to 24 h. Longer than [`Self::refresh_interval`], it spaces the
    /// periodic refreshes too. While refreshes find nothing new (a dead primary waiting
    /// for its replica's promotion, whose requests each ask for one), the time between
    /// them doubles after each, up to 1 s (or this, if longer); a change brings it back.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .refresh_min_interval(Duration::from_millis(500))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn refresh_min_interval(mut self, interval: Duration) -> Self {
        self.config.refresh_min_interval = interval;
        self
    }

    /// Rewrites announced addresses to reachable ones; see [`AddressRemap`]. Default none.
    ///
    /// With TLS, a remapped node's certificate may be valid for the name it announced or
    /// for the address dialled; see [`crate::TlsConfig`].
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::AddressRemap;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .address_remap(AddressRemap::from_map([("redis-0:6379", "127.0.0.1:7000")]))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn address_remap(mut self, remap: AddressRemap) -> Self {
        self.config.remap = Some(remap);
        self
    }

    /// RESP version to ask for. Default [`Protocol::Resp3`] (falls back to RESP2).
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::Protocol;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .protocol(Protocol::Resp2)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn protocol(mut self, protocol: Protocol) -> Self {
        self.config.connect.protocol = protocol;
        self
    }

    /// `CLIENT SETNAME` for every connection. Default none. Printable ASCII without
    /// spaces (`!` to `~`), as the server requires; `build()` refuses another name.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .client_name("checkout-service") // shown in CLIENT LIST
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn client_name(mut self, name: impl Into<String>) -> Self {
        self.config.connect.client_name = Some(name.into());
        self
    }

    /// Tells the client that the server renamed command `name` to `to` (`redis.conf`'s
    /// `rename-command`), so that it sends `to` wherever it would send `name`: the
    /// user's commands and its own (`CLUSTER SHARDS`, `READONLY`, `WAIT`, the
    /// doctor's `CONFIG GET`). An empty `to` marks the command disabled: the client then
    /// refuses it with [`crate::Error::Config`] without sending it. Call once per
    /// command. `name` is one word of at most 64 bytes (`CONFIG`, not `CONFIG GET`) and
    /// `to` has no white space, or `build()` fails with [`crate::Error::Config`]. The new
    /// names never appear in `Debug` output or logs. Default none.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// // The seed's production nodes: CONFIG renamed, FLUSHALL/FLUSHDB/DEBUG disabled.
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .rename_command("CONFIG", "CONFIG_9a7b8c5d3e2f1a0")
    ///     .rename_command("FLUSHALL", "")
    ///     .rename_command("FLUSHDB", "")
    ///     .rename_command("DEBUG", "")
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn rename_command(mut self, name: &str, to: &str) -> Self {
        let renames = std::mem::take(&mut self.config.connect.renames);
        self.config.connect.renames = renames.rename(name, to);
        self
    }

    /// Replaces all command renames at once; see [`ClusterClientBuilder::rename_command`].
    /// Default none.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::CommandRenames;
    /// let renames = CommandRenames::new()
    ///     .rename("CONFIG", "CONFIG_9a7b8c5d3e2f1a0")
    ///     .disable("FLUSHALL");
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .command_renames(renames)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn command_renames(mut self, renames: crate::CommandRenames) -> Self {
        self.config.connect.renames = renames;
        self
    }

    /// TCP keepalive idle time, `None` to disable. Default 60 s; the seed's
    /// `socket_keepalive`. After the idle time, probes go 10 s apart (or the idle time,
    /// if shorter), and three unanswered end the connection (Linux, Android, macOS,
    /// FreeBSD; elsewhere the system's count). From 1 s to 32,767 s (whole seconds, the
    /// range Linux takes): `build()` refuses others with [`Error::Config`].
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .tcp_keepalive(Some(Duration::from_secs(30)))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn tcp_keepalive(mut self, idle: Option<Duration>) -> Self {
        self.config.connect.tcp_keepalive = idle;
        self
    }

    /// Closes a connection whose node sent no byte for this long while it owed replies
    /// to a request that already timed out; the next request opens a new one. `None`
    /// (or zero) never closes a connection for that. Default 10 s.
    ///
    /// A flow that died without a word (a NAT or a firewall dropped it, a host vanished
    /// without a reset) otherwise fails every request to its node with a timeout until
    /// TCP gives up, about 15 minutes on Linux, while the node itself is fine. Silence
    /// within the oldest request's deadline (a long script under a long response
    /// timeout) does not count. See [`crate::ConnectOptions::unresponsive_timeout`].
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .unresponsive_timeout(Some(Duration::from_secs(3)))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn unresponsive_timeout(mut self, limit: Option<Duration>) -> Self {
        self.config.connect = self.config.connect.unresponsive_timeout(limit);
        self
    }

    /// Multiplexed connections per node, which ordinary commands share (each one
    /// coalesces concurrent requests into single writes). Default 1, the fastest for most
    /// loads; more can help when one connection's socket or decoding is the bottleneck.
    /// From 1 to 64 (0 counts as 1).
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .connections_per_node(2)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn connections_per_node(mut self, n: usize) -> Self {
        self.config.connections_per_node = n.max(1);
        self
    }

    /// Most dedicated connections per node, for commands that hold a connection
    /// (`BLPOP`, `XREAD BLOCK`, `WAIT`, `WATCH` transactions). Default 10; the seed's
    /// `max_connections_per_node`. From 1 to 65 536 (0 counts as 1). Blocking commands
    /// may hold all of them but one, kept for `WATCH`, durable writes and pipelines: with
    /// 10, ten `BLPOP k 0` workers on one node leave nine blocked and the tenth waiting
    /// for a connection, not a transaction with none (a limit of 1 is shared).
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .max_connections_per_node(20) // blocking commands, WATCH
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn max_connections_per_node(mut self, n: usize) -> Self {
        self.config.max_connections_per_node = n.max(1);
        self
    }

    /// Most dedicated connections in use at once across the cluster; more callers wait
    /// (within their deadline). Default 50; the seed's `max_connections`. From 1 to
    /// 1 000 000 (0 counts as 1). Blocking commands may hold all of them but one, as for
    /// [`Self::max_connections_per_node`].
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .max_connections(100)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn max_connections(mut self, n: usize) -> Self {
        self.config.max_connections = n.max(1);
        self
    }

    /// Requests written to one multiplexed connection and not yet answered, at most; as
    /// many more may be queued for its next write, and callers beyond those wait (within
    /// their deadline, and a request whose deadline passes while it waits is never
    /// sent). Default 4096.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .max_in_flight_per_connection(1024)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn max_in_flight_per_connection(mut self, n: usize) -> Self {
        self.config.connect.max_in_flight = n.max(1);
        self
    }

    /// When a node's circuit breaker opens (its requests then fail fast with
    /// [`Error::CircuitOpen`] until a probe succeeds). Default
    /// [`CircuitBreakerConfig::default`]: 5 failures in a row, or half of at least 20
    /// requests in 10 s; open for 1 s. Its public fields must stay in its setters'
    /// ranges: `consecutive_failures` and `min_requests` at least 1, `failure_rate` from
    /// 0.0 to 1.0 (not NaN).
    ///
    /// [`CircuitBreakerConfig::default`]: crate::CircuitBreakerConfig
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::CircuitBreakerConfig;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(3))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn circuit_breaker(mut self, config: crate::policy::CircuitBreakerConfig) -> Self {
        self.config.breaker = config;
        self
    }

    /// How many retries the whole client may spend, so that a failing cluster does not
    /// get a retry storm. Default [`RetryBudgetConfig::default`]: 20 % of requests plus
    /// 100 per second, bursts up to 1000. Its numbers must be zero or more (not NaN).
    ///
    /// [`RetryBudgetConfig::default`]: crate::RetryBudgetConfig
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::RetryBudgetConfig;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .retry_budget(RetryBudgetConfig::new(0.1, 10.0, 100.0))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn retry_budget(mut self, config: crate::policy::RetryBudgetConfig) -> Self {
        self.config.retry_budget = config;
        self
    }

    /// Whether [`build`](Self::build) returns at once, before any node was asked for
    /// the topology. Default false: `build` discovers the cluster, and fails when no
    /// seed answers.
    ///
    /// With `true`, discovery runs in the background and is tried again (at most every
    /// [`refresh_min_interval`](Self::refresh_min_interval), on each request that finds
    /// no topology, and every second, or every
    /// [`refresh_interval`](Self::refresh_interval) if shorter) until a seed answers. A
    /// request made before that waits for it, retrying with backoff within its deadline
    /// and its [`max_retries`](Self::max_retries) (and the retry budget), then fails
    /// with the last discovery's error (the seed's [`Error::Io`], [`Error::Auth`], ...;
    /// nothing was sent). For an application that may start before its cluster
    /// (containers, Kubernetes) and should not crash or loop around `build`. Settings
    /// are still checked by `build`.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["redis-cluster-0:6379"])
    ///     .lazy_connect(true)
    ///     .build()
    ///     .await?; // at once, whether the cluster is up or not
    /// # Ok(()) }
    /// ```
    pub fn lazy_connect(mut self, lazy: bool) -> Self {
        self.config.lazy_connect = lazy;
        self
    }

    /// How often every node is PINGed in the background, to measure latency (for
    /// [`ReadFrom::LowestLatency`]) and to probe nodes whose breaker is open; `None` turns
    /// health checks off. Default 10 s, the seed's recommendation (its client uses 30 s).
    /// A PING gets the response timeout, but no more than the interval (or 1 s, if
    /// longer); an interval under 10 ms is taken as 10 ms.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .health_check_interval(Some(Duration::from_secs(30)))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn health_check_interval(mut self, interval: Option<Duration>) -> Self {
        // Zero would PING in a loop.
        self.config.health_check_interval = interval.map(|i| i.max(Duration::from_millis(10)));
        self
    }

    /// Makes every single-slot write durable: each is followed by `WAIT` and fails with
    /// [`Error::NotReplicated`] when fewer replicas than asked acknowledge it (see
    /// [`crate::Durability`]). Scripts and functions with keys (`EVAL`, `EVALSHA`,
    /// `FCALL`) count as writes, as their code may write; their `_RO` forms
    /// ([`crate::Script::read_only`]) do not. So does a module command with keys that
    /// its module flags neither `write` nor `readonly`: whether it writes is unknown, and
    /// a `WAIT` after a read only costs time. Writes then use dedicated connections and
    /// wait for replicas: slower, so prefer [`crate::ClusterClient::query_durable`] for
    /// the writes that need it. In a pipeline, each node's batch with writes goes on a
    /// dedicated connection and ends with one `WAIT`, whose count applies to each of its
    /// writes. A transaction with a write ([`crate::ClusterClient::transaction`],
    /// [`crate::Watched::exec`]) ends with one `WAIT` after `EXEC` on a connection of its
    /// own (a `transaction()` then leaves the shared connection, where `WAIT` would count
    /// other callers' writes). Not covered: writes split over slots or sent to every
    /// node; a `query_durable` write to the same slot after them covers them, as
    /// replication is in order. Default none (the primary's acknowledgement, as Redis
    /// gives).
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// use redcluster::Durability;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .durable_writes(Durability::new(1, Duration::from_millis(100)))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn durable_writes(mut self, durability: crate::cluster::Durability) -> Self {
        self.config.durability = Some(durability);
        self
    }

    /// The seed's name for [`Self::connect_timeout`].
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .connection_timeout(Duration::from_secs(5))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn connection_timeout(self, timeout: Duration) -> Self {
        self.connect_timeout(timeout)
    }

    /// The seed's name for [`Self::response_timeout`].
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .socket_timeout(Duration::from_secs(5))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn socket_timeout(self, timeout: Duration) -> Self {
        self.response_timeout(timeout)
    }

    /// The seed's `socket_keepalive`: TCP keepalive after 60 s idle, or none.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .socket_keepalive(true)
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn socket_keepalive(self, on: bool) -> Self {
        self.tcp_keepalive(on.then_some(Duration::from_secs(60)))
    }

    /// Connects to the cluster and learns its topology.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for invalid settings, or the last seed's error when no seed
    /// could be reached or none returned a topology.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::{ClusterClient, Error};
    /// match ClusterClient::builder().nodes(["127.0.0.1:7000"]).build().await {
    ///     Ok(client) => println!("connected: {client:?}"),
    ///     Err(Error::Config(why)) => eprintln!("bad settings: {why}"),
    ///     Err(e) => eprintln!("no seed answered: {e}"),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn build(self) -> Result<crate::ClusterClient> {
        let config = self.into_config()?;
        crate::ClusterClient::start(config).await
    }

    fn into_config(mut self) -> Result<Config> {
        if self.config.seeds.is_empty() {
            return Err(Error::Config("no seed nodes given".into()));
        }
        // Empty is unset, as in a seed URL and the environment:
        // `.password(env::var("REDIS_PASSWORD").unwrap_or_default())` would otherwise
        // fail every connect to a server without a password (`AUTH ""`), and
        // `.username("")` every connect (`WRONGPASS`).
        let connect = &mut self.config.connect;
        if connect
            .password
            .as_ref()
            .is_some_and(|p| p.expose().is_empty())
        {
            connect.password = None;
        }
        if connect.username.as_deref().is_some_and(str::is_empty) {
            connect.username = None;
        }
        let mut seeds = Vec::with_capacity(self.config.seeds.len());
        let mut any_tls = false;
        // The first seed that names a user or a password gives both (under what the
        // builder was given): `redis://alice:@a` and `redis://bob:pw@b` is alice with
        // no password, not alice with bob's.
        let mut credentials_taken = false;
        for raw in std::mem::take(&mut self.config.seeds).0 {
            let seed = parse_seed(&raw)?;
            any_tls |= seed.tls;
            if !credentials_taken && (seed.username.is_some() || seed.password.is_some()) {
                credentials_taken = true;
                if let Some(user) = seed.username {
                    self.config.connect.username.get_or_insert(user);
                }
                if let Some(password) = seed.password {
                    self.config.connect.password.get_or_insert(password);
                }
            }
            // A seed given twice would be asked twice at discovery, its view counted
            // twice when the answers are compared.
            if !seeds.contains(&seed.addr) {
                seeds.push(seed.addr);
            }
        }
        self.config.seeds = Seeds(seeds);
        self.config.check()?;
        // A rediss:// seed turns TLS on for every connection; it needs trusted CAs.
        if any_tls && self.config.connect.tls.is_none() {
            self.config.connect.tls = Some(default_tls()?);
        }
        if let Some(tls) = &self.config.connect.tls {
            tls.prepare()?;
        }
        Ok(self.config)
    }
}

impl Config {
    /// [`Error::Config`] naming the first setting out of its range (see [`bounds`]).
    fn check(&self) -> Result<()> {
        use bounds::*;
        self.connect.renames.check().map_err(Error::Config)?;
        let counts = [
            (
                "connections_per_node",
                self.connections_per_node,
                CONNECTIONS_PER_NODE,
            ),
            (
                "max_connections_per_node",
                self.max_connections_per_node,
                MAX_CONNECTIONS_PER_NODE,
            ),
            ("max_connections", self.max_connections, MAX_CONNECTIONS),
        ];
        for (name, n, max) in counts {
            if !(1..=max).contains(&n) {
                return Err(Error::Config(format!(
                    "{name} must be from 1 to {max}, got {n}"
                )));
            }
        }
        // The server refuses it at every connect (`CLIENT SETNAME`'s rule).
        if let Some(name) = &self.connect.client_name {
            if !name.bytes().all(|b| (b'!'..=b'~').contains(&b)) {
                return Err(Error::Config(
                    "client_name must be printable ASCII without spaces ('!' to '~')".into(),
                ));
            }
        }
        // Zero fails every connect or request before it starts.
        let timeouts = [
            ("connect_timeout", self.connect.connect_timeout),
            ("response_timeout", self.response_timeout),
        ];
        if let Some((name, _)) = timeouts.iter().find(|(_, t)| t.is_zero()) {
            return Err(Error::Config(format!("{name} must be more than zero")));
        }
        if self.retry_base.is_zero() {
            return Err(Error::Config(
                "retry_backoff: the base must be more than zero".into(),
            ));
        }
        if self.refresh_interval < REFRESH_INTERVAL_MIN {
            return Err(Error::Config(format!(
                "refresh_interval must be at least {REFRESH_INTERVAL_MIN:?}, got {:?}",
                self.refresh_interval
            )));
        }
        if let Some(idle) = self.connect.tcp_keepalive {
            if !(KEEPALIVE_MIN..=KEEPALIVE_MAX).contains(&idle) {
                return Err(Error::Config(format!(
                    "tcp_keepalive must be from {KEEPALIVE_MIN:?} to {KEEPALIVE_MAX:?} (None \
                     turns it off), got {idle:?}"
                )));
            }
        }
        if !(REFRESH_MIN_INTERVAL_MIN..=REFRESH_MIN_INTERVAL_MAX)
            .contains(&self.refresh_min_interval)
        {
            return Err(Error::Config(format!(
                "refresh_min_interval must be from {REFRESH_MIN_INTERVAL_MIN:?} to \
                 {REFRESH_MIN_INTERVAL_MAX:?}, got {:?}",
                self.refresh_min_interval
            )));
        }
        // The fields are public, so the setters' clamps may have been bypassed. A NaN
        // rate never compares true: the breaker would never open on failure rate.
        let breaker = &self.breaker;
        if breaker.consecutive_failures == 0 || breaker.min_requests == 0 {
            return Err(Error::Config(
                "circuit_breaker: consecutive_failures and min_requests must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&breaker.failure_rate) {
            return Err(Error::Config(format!(
                "circuit_breaker: failure_rate must be from 0.0 to 1.0, got {}",
                breaker.failure_rate
            )));
        }
        // A NaN makes the balance NaN, which `min(max)` turns into a full budget at
        // every retry: no budget at all.
        let budget = &self.retry_budget;
        let numbers = [
            ("ratio", budget.ratio),
            ("per_second", budget.per_second),
            ("max", budget.max),
        ];
        if let Some((name, n)) = numbers.iter().find(|(_, n)| n.is_nan() || *n < 0.0) {
            return Err(Error::Config(format!(
                "retry_budget: {name} must be zero or more, got {n}"
            )));
        }
        Ok(())
    }
}

/// The TLS configuration of `rediss://` seeds given no [`crate::TlsConfig`]: the
/// platform's CAs with the `native-roots` feature, else an error asking for a CA.
#[cfg(feature = "native-roots")]
fn default_tls() -> Result<crate::TlsConfig> {
    Ok(crate::TlsConfig::new().native_roots())
}

#[cfg(not(feature = "native-roots"))]
fn default_tls() -> Result<crate::TlsConfig> {
    Err(Error::Config(
        "rediss:// seeds need a trusted CA: pass ClusterClientBuilder::tls(TlsConfig::new()\
         .ca_cert_file(..)?) (or set REDIS_TLS_CA), or enable the `native-roots` feature to \
         trust the platform's CAs"
            .into(),
    ))
}

/// A seed as written by the user, taken apart.
#[derive(Debug, PartialEq, Eq)]
struct Seed {
    addr: String,
    tls: bool,
    username: Option<String>,
    password: Option<Secret>,
}

/// Parses `host:port` or `redis[s]://[user[:pass]@]host[:port][/db]`.
fn parse_seed(raw: &str) -> Result<Seed> {
    // Errors name the part that is wrong, never the whole string: it may hold a password.
    let (tls, rest) = if let Some(rest) = raw.strip_prefix("redis://") {
        (false, rest)
    } else if let Some(rest) = raw.strip_prefix("rediss://") {
        (true, rest)
    } else if raw.contains("://") {
        return Err(Error::Config(
            "seed URL scheme must be redis:// or rediss://".into(),
        ));
    } else {
        (false, raw)
    };
    // The userinfo first, up to the last `@`: a password may hold `/` or `?` left
    // unencoded (base64 ones do), and cutting the path off first would take its start
    // for the host, which errors and logs then show.
    let (userinfo, rest) = match rest.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, rest),
    };
    let hostport = rest.split(['/', '?']).next().unwrap_or("");
    // Not read, so refused rather than ignored: `?password=...` would connect without
    // one, `?protocol=2` with RESP3. (Not quoted: a password may be among them.)
    if rest.contains('?') {
        return Err(Error::Config(
            "seed URL query parameters are not read: set the password, username and \
             protocol on the builder"
                .into(),
        ));
    }
    let (mut username, mut password) = (None, None);
    if let Some(userinfo) = userinfo {
        // `redis://secret@host` is a password alone, as redis-cli reads it.
        let (user, secret) = userinfo.split_once(':').unwrap_or(("", userinfo));
        username = Some(percent_decode(user)?).filter(|u| !u.is_empty());
        // Empty is unset (`redis://:@host`, `redis://@host`), as the environment's
        // `REDIS_PASSWORD` is: an empty password would be sent (`AUTH ""` on RESP2,
        // which a server without a password refuses) and, the first seed with
        // credentials giving them, hide another seed's real one.
        password = Some(percent_decode(secret)?)
            .filter(|p| !p.is_empty())
            .map(Secret::new);
    }
    let addr = seed_address(hostport, raw.contains("://")).map_err(|why| {
        Error::Config(format!(
            "seed address must be {why}, got {:?}",
            if userinfo.is_some() || may_be_credentials(hostport) {
                "<redacted>"
            } else {
                hostport
            }
        ))
    })?;
    Ok(Seed {
        addr,
        tls,
        username,
        password,
    })
}

/// `hostport` as `host:port`, or what it should have been. URLs may leave the port out
/// (6379); bare seeds must name it.
fn seed_address(hostport: &str, is_url: bool) -> Result<String, &'static str> {
    const HOST_PORT: &str = "host:port, an IPv6 host in brackets ([::1]:7000)";
    // An IPv6 host holds `:` itself, so only brackets tell where it ends: `::1:7000`
    // could be `::1` port 7000 or `::1:7000` with no port.
    let (host, port) = match hostport.find(']') {
        Some(end) if hostport.starts_with('[') => hostport.split_at(end + 1),
        _ => hostport.split_at(hostport.find(':').unwrap_or(hostport.len())),
    };
    let name = match host.strip_prefix('[') {
        Some(bracketed) => bracketed.strip_suffix(']').unwrap_or(""),
        None => host,
    };
    if name.is_empty() || name.contains(['[', ']']) {
        return Err(HOST_PORT);
    }
    // A link-local address's zone is dialled by its number only: the system's resolver
    // takes no bracketed `[fe80::1%eth0]`, and the connect would fail every time.
    if let Some((_, zone)) = name.split_once('%') {
        if zone.is_empty() || !zone.bytes().all(|b| b.is_ascii_digit()) {
            return Err("an IPv6 zone by its number ([fe80::1%2]:7000; `ip link` lists them)");
        }
    }
    match port.strip_prefix(':').map(str::parse::<u16>) {
        Some(Ok(0)) => Err("host:port with a port from 1 to 65535"),
        // The number as parsed: `h:07000` and `h:7000` are one seed.
        Some(Ok(port)) => Ok(format!("{host}:{port}")),
        None if port.is_empty() && is_url => Ok(format!("{host}:6379")),
        _ => Err(HOST_PORT),
    }
}

fn percent_decode(s: &str) -> Result<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    Error::Config("bad percent-encoding in seed URL credentials".into())
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| Error::Config("seed URL credentials are not UTF-8".into()))
}

/// Reads `REDIS_CLUSTER_NODES` (comma-separated seeds), `REDIS_PASSWORD`,
/// `REDIS_USERNAME` and the TLS variables (see [`tls_from_env`]) into a builder.
pub(crate) fn builder_from_env() -> Result<ClusterClientBuilder> {
    let nodes = std::env::var("REDIS_CLUSTER_NODES")
        .map_err(|_| Error::Config("REDIS_CLUSTER_NODES is not set".into()))?;
    let seeds: Vec<&str> = nodes
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    let mut builder = ClusterClientBuilder::default().nodes(seeds);
    // Empty counts as unset, as in a URL (`redis://:@host`).
    if let Some(password) = env_text("REDIS_PASSWORD")?.filter(|p| !p.is_empty()) {
        builder = builder.password(password);
    }
    if let Some(username) = env_text("REDIS_USERNAME")?.filter(|u| !u.is_empty()) {
        builder = builder.username(username);
    }
    let rediss = nodes.split(',').any(|s| s.trim().starts_with("rediss://"));
    if let Some(tls) = tls_from_env(|name| std::env::var(name).ok(), rediss)? {
        builder = builder.tls(tls);
    }
    if let Some(pairs) = env_text("REDIS_ADDRESS_REMAP")? {
        let pairs = env_pairs("REDIS_ADDRESS_REMAP", &pairs)?;
        if let Some(i) = pairs.iter().position(|(_, to)| to.is_empty()) {
            return Err(Error::Config(format!(
                "REDIS_ADDRESS_REMAP: entry {} maps an address to nothing",
                i + 1
            )));
        }
        builder = builder.address_remap(AddressRemap::from_map(pairs));
    }
    // A variable that is set but unreadable must not leave commands unrenamed: the
    // server would answer with the secret names in its errors.
    if let Some(pairs) = env_text("REDIS_RENAMED_COMMANDS")? {
        let renames = env_pairs("REDIS_RENAMED_COMMANDS", &pairs)?
            .into_iter()
            .fold(crate::CommandRenames::new(), |r, (name, to)| {
                r.rename(&name, &to)
            });
        builder = builder.command_renames(renames);
    }
    Ok(builder)
}

/// The variable's value; `None` when it is not set, an error when it is not text.
fn env_text(var: &str) -> Result<Option<String>> {
    match std::env::var(var) {
        Ok(text) => Ok(Some(text)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => {
            Err(Error::Config(format!("{var} is not valid UTF-8")))
        }
    }
}

/// `a=b,c=d` as pairs; an empty right side is allowed (a disabled command). The values
/// are never echoed in errors: renamed command names are secrets.
fn env_pairs(var: &str, text: &str) -> Result<Vec<(String, String)>> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .enumerate()
        .map(|(i, pair)| match pair.split_once('=') {
            Some((from, to)) if !from.trim().is_empty() => {
                Ok((from.trim().to_owned(), to.trim().to_owned()))
            }
            _ => Err(Error::Config(format!(
                "{var}: entry {} is not `from=to` (entries are comma-separated)",
                i + 1
            ))),
        })
        .collect()
}

/// The TLS configuration the environment asks for, if any.
///
/// `REDIS_TLS` = `true`/`1`/`yes`/`on` turns TLS on (`false`/`0`/`no`/`off`/empty leaves it off,
/// unless a seed is `rediss://`); then `REDIS_TLS_CA` (PEM file of trusted CAs),
/// `REDIS_TLS_CERT` and `REDIS_TLS_KEY` (PEM files of a client certificate and its key,
/// for mutual TLS; both or neither) and `REDIS_TLS_SERVER_NAME` (one name to check every
/// node's certificate against) apply.
fn tls_from_env(
    var: impl Fn(&str) -> Option<String>,
    rediss: bool,
) -> Result<Option<crate::TlsConfig>> {
    let on = match var("REDIS_TLS").as_deref().map(str::trim) {
        None | Some("") => rediss,
        Some(v)
            if ["1", "true", "yes", "on"]
                .iter()
                .any(|t| v.eq_ignore_ascii_case(t)) =>
        {
            true
        }
        Some(v)
            if ["0", "false", "no", "off"]
                .iter()
                .any(|t| v.eq_ignore_ascii_case(t)) =>
        {
            rediss
        }
        Some(_) => {
            return Err(Error::Config(
                "REDIS_TLS must be true/1/yes/on or false/0/no/off".into(),
            ))
        }
    };
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if !on {
        let ignored: Vec<&str> = ["REDIS_TLS_CA", "REDIS_TLS_CERT", "REDIS_TLS_KEY"]
            .into_iter()
            .filter(|name| set(name).is_some())
            .collect();
        if !ignored.is_empty() {
            tracing::warn!(
                ?ignored,
                "TLS files set in the environment without REDIS_TLS=true (or a rediss:// \
                 seed): TLS stays off"
            );
        }
        return Ok(None);
    }
    let mut tls = crate::TlsConfig::new();
    match set("REDIS_TLS_CA") {
        Some(ca) => tls = tls.ca_cert_file(ca)?,
        None => {
            // Without a CA file, rediss:// rules apply: the platform's CAs or an error.
            if let Ok(default) = default_tls() {
                tls = default;
            }
        }
    }
    match (set("REDIS_TLS_CERT"), set("REDIS_TLS_KEY")) {
        (Some(cert), Some(key)) => tls = tls.client_cert_files(cert, key)?,
        (None, None) => {}
        _ => {
            return Err(Error::Config(
                "REDIS_TLS_CERT and REDIS_TLS_KEY must be set together".into(),
            ))
        }
    }
    if let Some(name) = set("REDIS_TLS_SERVER_NAME") {
        tls = tls.server_name(name);
    }
    Ok(Some(tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seed_forms() {
        let s = parse_seed("127.0.0.1:7000").unwrap();
        assert_eq!(
            (s.addr.as_str(), s.tls, s.password),
            ("127.0.0.1:7000", false, None)
        );
        let s = parse_seed("redis://app:p%40ss@redis-cluster-0:6379/0").unwrap();
        assert_eq!(s.addr, "redis-cluster-0:6379");
        assert_eq!(s.username.as_deref(), Some("app"));
        assert_eq!(s.password.unwrap().expose(), "p@ss");
        let s = parse_seed("rediss://:pw@host").unwrap();
        assert!(s.tls);
        assert_eq!(s.addr, "host:6379");
        assert_eq!(s.username, None);
        let s = parse_seed("redis://[::1]:7000").unwrap();
        assert_eq!(s.addr, "[::1]:7000");
        for empty in ["redis://:@host:1", "redis://@host:1", "redis://u:@host:1"] {
            let s = parse_seed(empty).unwrap();
            assert!(s.password.is_none(), "{empty}");
        }
        assert_eq!(
            parse_seed("redis://u:@h:1").unwrap().username.as_deref(),
            Some("u")
        );
        assert!(parse_seed("host").is_err());
        assert!(parse_seed("http://host:1").is_err());
        assert!(parse_seed(":7000").is_err());
    }

    #[test]
    fn seed_errors_never_show_the_password() {
        let err = parse_seed("redis://u:topsecret@host:notaport").unwrap_err();
        assert!(!err.to_string().contains("topsecret"), "{err}");
        let err = parse_seed("redis://u:topsecret%zz@host:1").unwrap_err();
        assert!(!err.to_string().contains("topsecret"), "{err}");
        // Unencoded `/` and `?` in a password are still the password.
        let s = parse_seed("redis://app:1234/x?y@h:1/0").unwrap();
        assert_eq!(
            (s.addr.as_str(), s.password.unwrap().expose()),
            ("h:1", "1234/x?y")
        );
        let s = parse_seed("redis://:abc/def@h").unwrap();
        assert_eq!(
            (s.addr.as_str(), s.password.unwrap().expose()),
            ("h:6379", "abc/def")
        );
        let err = parse_seed("redis://:abc/def@h:notaport").unwrap_err();
        assert!(!err.to_string().contains("abc"), "{err}");
        // Credentials whose `@host` was left out; a comma in a password splitting
        // `REDIS_CLUSTER_NODES` leaves the same.
        for seed in [
            "redis://app:topsecret",
            "redis://:topsecret",
            "app:topsecret",
            // All digits after the last `:`, but no host, or no host:port.
            "redis://:123456",
            "redis://app:pw:123456",
            "app:pw:123456",
        ] {
            let err = parse_seed(seed).unwrap_err();
            for secret in ["topsecret", "123456"] {
                assert!(!err.to_string().contains(secret), "{err}");
            }
        }
        // Query parameters are refused, not ignored, and not quoted.
        for seed in [
            "redis://h:1?password=topsecret",
            "redis://:pw@h:1/0?protocol=2",
        ] {
            let err = parse_seed(seed).unwrap_err();
            assert!(matches!(err, Error::Config(_)), "{err:?}");
            assert!(!err.to_string().contains("topsecret"), "{err}");
        }
        // A mistyped port is still shown.
        let err = parse_seed("redis://host:99999").unwrap_err();
        assert!(err.to_string().contains("host:99999"), "{err}");
    }

    #[test]
    fn the_builder_shows_seed_urls_without_their_credentials() {
        let builder = ClusterClientBuilder::default().nodes([
            "redis://app:s3cret@h:1",
            "rediss://:pw%40x@h:2",
            "h:3",
            "s3cret@redis://h:4",
            "redis://app:s3cret",
            "redis://:s3cret/0",
            "redis://:8675309",
            "redis://h:5?password=s3cret",
            "s3cret@redis://h:6?user=app",
        ]);
        let shown = format!("{builder:?}");
        for secret in ["s3cret", "pw%40x", "app", "8675309"] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("\"redis://***\""), "{shown}");
        assert!(shown.contains("\"redis://***@h:1\""), "{shown}");
        assert!(shown.contains("\"rediss://***@h:2\""), "{shown}");
        assert!(shown.contains("\"h:3\""), "{shown}");
        assert!(shown.contains("\"***@redis://h:4\""), "{shown}");
        assert!(shown.contains("\"redis://h:5?***\""), "{shown}");
    }

    #[test]
    fn url_credentials_fill_the_builder() {
        let config = ClusterClientBuilder::default()
            .nodes(["redis://app:pw@h:1", "h:2"])
            .into_config()
            .unwrap();
        assert_eq!(*config.seeds, ["h:1", "h:2"]);
        assert_eq!(config.connect.username.as_deref(), Some("app"));
        assert_eq!(config.connect.password.as_ref().unwrap().expose(), "pw");
        assert!(!format!("{config:?}").contains("pw\""));
        assert!(ClusterClientBuilder::default().into_config().is_err());
    }

    #[test]
    fn rediss_seeds_turn_tls_on() {
        let config = ClusterClientBuilder::default()
            .nodes(["rediss://:pw@h:1", "h:2"])
            .tls(crate::TlsConfig::new().danger_accept_invalid_certificates())
            .into_config()
            .unwrap();
        assert_eq!(*config.seeds, ["h:1", "h:2"]);
        assert!(config.connect.tls.is_some());
        let plain = ClusterClientBuilder::default()
            .nodes(["redis://h:1"])
            .into_config()
            .unwrap();
        assert!(plain.connect.tls.is_none());
        // A TlsConfig that trusts nothing is refused at build time.
        let err = ClusterClientBuilder::default()
            .nodes(["h:1"])
            .tls(crate::TlsConfig::new())
            .into_config()
            .unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("no CA certificate")),
            "{err}"
        );
    }

    #[cfg(not(feature = "native-roots"))]
    #[test]
    fn rediss_without_a_ca_is_a_config_error() {
        let err = ClusterClientBuilder::default()
            .nodes(["rediss://h:1"])
            .into_config()
            .unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("rediss://") && m.contains("CA")),
            "{err}"
        );
    }

    #[test]
    fn env_pairs_parse_remaps_and_renames_without_echoing_values() {
        let pairs = env_pairs(
            "REDIS_ADDRESS_REMAP",
            " redis-cluster-0:6379=127.0.0.1:6450 ,redis-cluster-1:6379=127.0.0.1:6451,",
        )
        .unwrap();
        assert_eq!(
            pairs,
            [
                ("redis-cluster-0:6379".into(), "127.0.0.1:6450".into()),
                ("redis-cluster-1:6379".into(), "127.0.0.1:6451".into())
            ]
        );
        let renames = env_pairs("REDIS_RENAMED_COMMANDS", "CONFIG=CONFIG_x,FLUSHALL=").unwrap();
        assert_eq!(renames[1], ("FLUSHALL".into(), String::new()));
        let err = env_pairs("REDIS_RENAMED_COMMANDS", "CONFIG=ok,secretname").unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("entry 2")),
            "{err}"
        );
        assert!(!err.to_string().contains("secretname"), "{err}");
    }

    #[test]
    fn tls_from_env_variables() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, v)| (*v).to_string())
            }
        };
        assert!(tls_from_env(env(&[]), false).unwrap().is_none());
        assert!(tls_from_env(env(&[("REDIS_TLS", "0")]), false)
            .unwrap()
            .is_none());
        assert!(tls_from_env(env(&[("REDIS_TLS", "maybe")]), false).is_err());
        let err = tls_from_env(
            env(&[
                ("REDIS_TLS", "true"),
                ("REDIS_TLS_CA", "/nonexistent/ca.pem"),
            ]),
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
        let err = tls_from_env(
            env(&[("REDIS_TLS", "1"), ("REDIS_TLS_CERT", "/x/client.crt")]),
            false,
        )
        .unwrap_err();
        assert!(err.to_string().contains("REDIS_TLS_KEY"), "{err}");
        let tls = tls_from_env(env(&[("REDIS_TLS_SERVER_NAME", "redis.example")]), true)
            .unwrap()
            .unwrap();
        assert!(format!("{tls:?}").contains("redis.example"));
    }

    /// The builder's `Config`, or the message of its `Error::Config`.
    fn built(builder: ClusterClientBuilder) -> std::result::Result<Config, String> {
        match builder.nodes(["h:1"]).into_config() {
            Ok(config) => Ok(config),
            Err(Error::Config(why)) => Err(why),
            Err(e) => panic!("not a config error: {e:?}"),
        }
    }

    fn refused(builder: ClusterClientBuilder, names: &[&str]) {
        let why = built(builder).unwrap_err();
        for name in names {
            assert!(why.contains(name), "{why}");
        }
    }

    #[test]
    fn empty_credentials_are_unset_and_seeds_are_trimmed() {
        let b = ClusterClientBuilder::default;
        let config = built(b().password("").username("")).unwrap();
        assert!(config.connect.password.is_none());
        assert!(config.connect.username.is_none());
        // Unset, a seed URL's credentials apply.
        let config = b()
            .password("")
            .nodes(["redis://alice:pw@h:1"])
            .into_config()
            .unwrap();
        assert_eq!(config.connect.username.as_deref(), Some("alice"));
        assert_eq!(config.connect.password.unwrap().expose(), "pw");
        let config = b().nodes([" h:1", "h:1 ", "h:2"]).into_config().unwrap();
        assert_eq!(config.seeds.0, ["h:1", "h:2"]);
    }

    #[test]
    fn renames_that_could_never_apply_are_refused_without_their_secret() {
        let b = ClusterClientBuilder::default;
        for name in ["CONFIG GET", "", &"X".repeat(65)] {
            refused(
                b().rename_command(name, "CONFIG_secret"),
                &["rename_command", "not a command name"],
            );
        }
        let why = built(b().rename_command("CONFIG", "CONFIG secret")).unwrap_err();
        assert!(
            why.contains("white space") && !why.contains("secret"),
            "{why}"
        );
        assert!(built(
            b().rename_command("config", "CONFIG_x")
                .rename_command("DEBUG", "")
        )
        .is_ok());
    }

    #[test]
    fn max_connections_past_the_cap_is_refused() {
        let b = ClusterClientBuilder::default;
        refused(
            b().max_connections(tokio::sync::Semaphore::MAX_PERMITS + 1),
            &["max_connections", "1 to 1000000"],
        );
        refused(b().max_connections(usize::MAX), &["max_connections"]);
        assert_eq!(
            built(b().max_connections(1_000_000))
                .unwrap()
                .max_connections,
            1_000_000
        );
        assert_eq!(built(b().max_connections(0)).unwrap().max_connections, 1);
    }

    #[test]
    fn max_connections_per_node_past_the_cap_is_refused() {
        let b = ClusterClientBuilder::default;
        refused(
            b().max_connections_per_node(usize::MAX),
            &["max_connections_per_node", "1 to 65536"],
        );
        refused(
            b().max_connections_per_node(65_537),
            &["max_connections_per_node"],
        );
        let config = built(b().max_connections_per_node(65_536)).unwrap();
        assert_eq!(config.max_connections_per_node, 65_536);
    }

    #[test]
    fn connections_per_node_past_the_cap_is_refused() {
        let b = ClusterClientBuilder::default;
        refused(
            b().connections_per_node(65),
            &["connections_per_node", "1 to 64"],
        );
        refused(
            b().connections_per_node(usize::MAX),
            &["connections_per_node"],
        );
        assert_eq!(
            built(b().connections_per_node(64))
                .unwrap()
                .connections_per_node,
            64
        );
    }

    #[test]
    fn refresh_intervals_that_spin_or_stop_refreshes_are_refused() {
        let b = ClusterClientBuilder::default;
        let ms = Duration::from_millis;
        refused(
            b().refresh_interval(Duration::ZERO)
                .refresh_min_interval(Duration::ZERO),
            &["refresh_interval", "100ms"],
        );
        refused(b().refresh_interval(ms(99)), &["refresh_interval"]);
        refused(
            b().refresh_min_interval(Duration::ZERO),
            &["refresh_min_interval", "10ms", "86400s"],
        );
        refused(b().refresh_min_interval(ms(9)), &["refresh_min_interval"]);
        refused(
            b().refresh_min_interval(Duration::MAX),
            &["refresh_min_interval"],
        );
        // A min interval past the period only spaces the periodic refreshes: tests keep
        // refreshes out this way (an hour against the default 30 s).
        for (interval, min) in [
            (Duration::from_secs(30), Duration::from_secs(3600)),
            (Duration::from_secs(3600), ms(100)),
            (Duration::MAX, ms(10)),
            (ms(100), Duration::from_secs(24 * 3600)),
        ] {
            let config = built(b().refresh_interval(interval).refresh_min_interval(min)).unwrap();
            assert_eq!(
                (config.refresh_interval, config.refresh_min_interval),
                (interval, min)
            );
        }
    }

    #[test]
    fn zero_timeouts_are_refused() {
        let b = ClusterClientBuilder::default;
        refused(
            b().response_timeout(Duration::ZERO),
            &["response_timeout", "more than zero"],
        );
        refused(b().socket_timeout(Duration::ZERO), &["response_timeout"]);
        refused(
            b().connect_timeout(Duration::ZERO),
            &["connect_timeout", "more than zero"],
        );
        refused(b().connection_timeout(Duration::ZERO), &["connect_timeout"]);
        refused(
            b().retry_backoff(Duration::ZERO, Duration::from_secs(1)),
            &["retry_backoff", "more than zero"],
        );
        let config = built(
            b().connect_timeout(Duration::from_nanos(1))
                .response_timeout(Duration::MAX),
        )
        .unwrap();
        assert_eq!(config.response_timeout, Duration::MAX);
    }

    #[test]
    fn keepalive_idle_times_linux_would_not_take_are_refused() {
        let b = ClusterClientBuilder::default;
        for idle in [
            Duration::ZERO,
            Duration::from_millis(500),
            Duration::from_secs(32_768),
            Duration::MAX,
        ] {
            refused(b().tcp_keepalive(Some(idle)), &["tcp_keepalive", "32767s"]);
        }
        for idle in [
            Some(Duration::from_secs(1)),
            Some(Duration::from_secs(32_767)),
            None,
        ] {
            assert!(built(b().tcp_keepalive(idle)).is_ok(), "{idle:?}");
        }
    }

    #[test]
    fn seeds_with_port_zero_or_an_unbracketed_ipv6_host_are_refused() {
        for bad in [
            "h:0",
            "redis://h:0",
            "[::1]:0",
            "::1:7000",
            "::1",
            "redis://::1",
            "redis://h:1:2",
            "h:1:2",
            "[::1]7000",
            "[::1",
            "::1]:7000",
            "[]:7000",
            "h:",
            "h:99999",
        ] {
            let err = parse_seed(bad).unwrap_err();
            assert!(
                matches!(&err, Error::Config(m) if m.contains("seed address")),
                "{bad}: {err}"
            );
        }
        let err = parse_seed("h:0").unwrap_err();
        assert!(err.to_string().contains("1 to 65535"), "{err}");
        let err = parse_seed("::1:7000").unwrap_err();
        assert!(err.to_string().contains("[::1]:7000"), "{err}");
        let err = parse_seed("rediss://[fe80::1%eth0]").unwrap_err();
        assert!(err.to_string().contains("[fe80::1%2]"), "{err}");
        for (good, addr) in [
            ("[::1]:7000", "[::1]:7000"),
            ("redis://[::1]:7000", "[::1]:7000"),
            ("rediss://[fe80::1%2]", "[fe80::1%2]:6379"),
            ("h:65535", "h:65535"),
            ("h:07000", "h:7000"),
            ("redis://u:p@h:1/0", "h:1"),
        ] {
            assert_eq!(parse_seed(good).unwrap().addr, addr, "{good}");
        }
        // Redacted as before, whatever is wrong with the address.
        for bad in ["redis://u:topsecret@h:0", "redis://u:topsecret@::1:7000"] {
            let err = parse_seed(bad).unwrap_err();
            assert!(!err.to_string().contains("topsecret"), "{err}");
            assert!(err.to_string().contains("<redacted>"), "{err}");
        }
    }

    #[test]
    fn a_seed_given_twice_counts_once() {
        let config = ClusterClientBuilder::default()
            .nodes([
                "h:2",
                "h:1",
                "redis://h:1",
                "h:2",
                "redis://h",
                "h:6379",
                "h:01",
            ])
            .into_config()
            .unwrap();
        assert_eq!(*config.seeds, ["h:2", "h:1", "h:6379"]);
        // The first seed's credentials still win.
        let config = ClusterClientBuilder::default()
            .nodes(["redis://a:first@h:1", "redis://b:second@h:1"])
            .into_config()
            .unwrap();
        assert_eq!(*config.seeds, ["h:1"]);
        assert_eq!(config.connect.username.as_deref(), Some("a"));
        assert_eq!(config.connect.password.unwrap().expose(), "first");
        // Together: a user of one seed never gets another seed's password.
        let config = ClusterClientBuilder::default()
            .nodes(["h:3", "redis://alice:@h:1", "redis://bob:pw@h:2"])
            .into_config()
            .unwrap();
        assert_eq!(config.connect.username.as_deref(), Some("alice"));
        assert!(config.connect.password.is_none());
        // A seed without any (`:@` is none) passes the turn on.
        let config = ClusterClientBuilder::default()
            .nodes(["redis://:@h:1", "redis://bob:pw@h:2"])
            .into_config()
            .unwrap();
        assert_eq!(config.connect.username.as_deref(), Some("bob"));
        assert_eq!(config.connect.password.unwrap().expose(), "pw");
    }

    #[test]
    fn breaker_fields_out_of_the_setters_ranges_are_refused() {
        let b = ClusterClientBuilder::default;
        let breaker = crate::policy::CircuitBreakerConfig::default;
        let mut zero = breaker();
        zero.consecutive_failures = 0;
        refused(
            b().circuit_breaker(zero),
            &["consecutive_failures", "at least 1"],
        );
        let mut zero = breaker();
        zero.min_requests = 0;
        refused(b().circuit_breaker(zero), &["min_requests"]);
        // NaN survives the setter's clamp.
        let nan = breaker().failure_rate(f64::NAN, 10);
        assert!(nan.failure_rate.is_nan());
        refused(
            b().circuit_breaker(nan),
            &["failure_rate", "0.0 to 1.0", "NaN"],
        );
        let mut high = breaker();
        high.failure_rate = 1.5;
        refused(b().circuit_breaker(high), &["failure_rate"]);
        for rate in [0.0, 1.0] {
            built(b().circuit_breaker(breaker().failure_rate(rate, 1))).unwrap();
        }
        built(b().circuit_breaker(breaker().disabled())).unwrap();
    }

    #[test]
    fn retry_budget_nan_or_negative_is_refused() {
        let b = ClusterClientBuilder::default;
        let nan = crate::policy::RetryBudgetConfig {
            ratio: f64::NAN,
            ..Default::default()
        };
        refused(
            b().retry_budget(nan),
            &["retry_budget", "ratio", "zero or more"],
        );
        let negative = crate::policy::RetryBudgetConfig {
            max: -1.0,
            ..Default::default()
        };
        refused(b().retry_budget(negative), &["retry_budget", "max"]);
        // The constructor already counts NaN and negatives as zero.
        let zero = crate::policy::RetryBudgetConfig::new(f64::NAN, -1.0, f64::INFINITY);
        assert_eq!(built(b().retry_budget(zero)).unwrap().retry_budget, zero);
    }

    #[test]
    fn remap_from_map_and_closure() {
        let r = AddressRemap::from_map([("redis-cluster-0:6379", "127.0.0.1:6450")]);
        assert_eq!(r.apply("redis-cluster-0:6379"), "127.0.0.1:6450");
        assert_eq!(r.apply("other:1"), "other:1");
        let r = AddressRemap::from_fn(|a| {
            a.strip_prefix("redis-cluster-")
                .map(|n| format!("127.0.0.1:645{}", &n[..1]))
        });
        assert_eq!(r.apply("redis-cluster-3:6379"), "127.0.0.1:6453");
    }
}
