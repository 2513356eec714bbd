//! What a local cluster is started with: the builder, the `redis-server` binary it finds,
//! and the `redis.conf` every node gets.

use std::ffi::OsString;
use std::fmt;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use super::tls::{TlsAuthClients, TlsFiles};
use super::LocalCluster;
use crate::cmd::CommandRenames;
use crate::conn::{ConnectOptions, Secret};
use crate::error::{Error, Result};
use crate::slot::SLOT_COUNT;

/// The environment variable that points the testkit at a `redis-server` binary when the
/// builder was not given one.
///
/// ```
/// use redcluster::testkit::REDIS_SERVER_ENV;
/// // `REDCLUSTER_REDIS_SERVER=/opt/redis-7.2/bin/redis-server cargo test`
/// assert_eq!(REDIS_SERVER_ENV, "REDCLUSTER_REDIS_SERVER");
/// match std::env::var(REDIS_SERVER_ENV) {
///     Ok(path) => println!("nodes run {path}"),
///     Err(_) => println!("nodes run redis-server from PATH"),
/// }
/// ```
pub const REDIS_SERVER_ENV: &str = "REDCLUSTER_REDIS_SERVER";

/// Directives the testkit writes itself; setting them would break how it runs nodes.
const MANAGED: &[(&str, &str)] = &[
    ("port", "the testkit picks a free port per node"),
    (
        "cluster-port",
        "the testkit picks a free cluster-bus port per node",
    ),
    (
        "tls-port",
        "with LocalClusterBuilder::tls the testkit serves TLS on each node's port",
    ),
    ("bind", "every node listens on 127.0.0.1 only"),
    ("cluster-enabled", "every node is a cluster node"),
    (
        "cluster-config-file",
        "every node keeps nodes-<port>.conf in its own directory",
    ),
    (
        "dir",
        "every node has its own directory in the cluster's temporary directory",
    ),
    (
        "logfile",
        "every node logs to redis.log in its own directory",
    ),
    (
        "daemonize",
        "nodes run in the foreground, as children of the test",
    ),
];

/// Builds and starts a [`LocalCluster`]; get one with [`LocalCluster::builder`].
///
/// Defaults: 3 masters with 1 replica each, `cluster-node-timeout 2000`, no persistence,
/// 30 s to converge.
///
/// ```no_run
/// # async fn demo() -> redcluster::Result<()> {
/// use redcluster::testkit::LocalCluster;
/// use std::time::Duration;
/// let cluster = LocalCluster::builder()
///     .masters(3)
///     .replicas_per_master(2)
///     .node_timeout(Duration::from_millis(1000))
///     .start()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[must_use = "a builder does nothing until `start` is awaited"]
pub struct LocalClusterBuilder {
    masters: usize,
    replicas_per_master: usize,
    node_timeout: Duration,
    wait_timeout: Duration,
    directives: Vec<(String, String)>,
    redis_server: Option<PathBuf>,
    tls: bool,
    tls_auth_clients: TlsAuthClients,
}

impl fmt::Debug for LocalClusterBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Values are left out: `requirepass` and `masterauth` hold passwords.
        let names: Vec<&str> = self.directives.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("LocalClusterBuilder")
            .field("masters", &self.masters)
            .field("replicas_per_master", &self.replicas_per_master)
            .field("node_timeout", &self.node_timeout)
            .field("wait_timeout", &self.wait_timeout)
            .field("directives", &names)
            .field("redis_server", &self.redis_server)
            .field("tls", &self.tls)
            .field("tls_auth_clients", &self.tls_auth_clients)
            .finish()
    }
}

impl Default for LocalClusterBuilder {
    fn default() -> Self {
        LocalClusterBuilder {
            masters: 3,
            replicas_per_master: 1,
            node_timeout: Duration::from_millis(2000),
            wait_timeout: Duration::from_secs(30),
            directives: Vec::new(),
            redis_server: None,
            tls: false,
            tls_auth_clients: TlsAuthClients::Required,
        }
    }
}

impl LocalClusterBuilder {
    /// How many masters to start, each serving an even share of the 16384 slots (split as
    /// `redis-cli --cluster create` does). Default 3; at least 1.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::testkit::LocalCluster;
    /// let cluster = LocalCluster::builder().masters(1).replicas_per_master(0).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn masters(mut self, masters: usize) -> Self {
        self.masters = masters;
        self
    }

    /// How many replicas each master gets. Default 1; 0 gives a cluster of masters only.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::testkit::LocalCluster;
    /// // Two replicas per master, for tests of replica reads during a failover.
    /// let cluster = LocalCluster::builder().replicas_per_master(2).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn replicas_per_master(mut self, replicas: usize) -> Self {
        self.replicas_per_master = replicas;
        self
    }

    /// `cluster-node-timeout`: how long a node may be unreachable before it is flagged
    /// as failing and, if it is a master, failed over.
    ///
    /// Default 2 s: short enough that failover tests finish quickly, long enough that a
    /// busy CI machine does not fail nodes over by accident. (Redis' own default is 15 s.)
    /// A failover after a master dies takes about this long plus one to two seconds.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::testkit::LocalCluster;
    /// use std::time::Duration;
    /// let cluster = LocalCluster::builder()
    ///     .node_timeout(Duration::from_millis(5000)) // a slow CI machine
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn node_timeout(mut self, timeout: Duration) -> Self {
        self.node_timeout = timeout;
        self
    }

    /// How long [`LocalClusterBuilder::start`] and the cluster's operations that wait for
    /// the cluster to settle ([`LocalCluster::failover`], [`LocalCluster::add_master`],
    /// [`LocalCluster::move_slot`], ...) wait before they give up with an error naming
    /// what did not converge. Default 30 s.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::testkit::LocalCluster;
    /// use std::time::Duration;
    /// let cluster = LocalCluster::builder()
    ///     .masters(6)
    ///     .wait_timeout(Duration::from_secs(60))
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// Adds a `redis.conf` directive for every node, written verbatim as `name value`
    /// after the testkit's defaults (so it overrides them). Quote values the way
    /// `redis.conf` wants them; a directive given several times is written several times.
    ///
    /// The testkit's defaults: `save ""`, `appendonly no`, `protected-mode no`,
    /// `repl-diskless-sync-delay 0` and `cluster-node-timeout` from
    /// [`LocalClusterBuilder::node_timeout`]. Directives that decide how the testkit
    /// runs nodes (`port`, `cluster-port`, `bind`, `dir`, `logfile`, `cluster-enabled`,
    /// `cluster-config-file`, `daemonize`) are refused by `start` with [`Error::Config`].
    ///
    /// With `requirepass`, the testkit authenticates its own connections with that
    /// password, [`LocalCluster::connect_options`] carries it, and `masterauth` is set
    /// to it too unless given.
    /// With `rename-command NAME NEW` (or `""` to disable), the testkit's connections and
    /// [`LocalCluster::connect_options`] carry the mapping as [`CommandRenames`]; pass
    /// [`LocalCluster::command_renames`] to a client's builder.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::testkit::LocalCluster;
    /// let cluster = LocalCluster::builder()
    ///     .config("cluster-require-full-coverage", "no")
    ///     .config("requirepass", "s3cret")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn config(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.directives.push((name.into(), value.into()));
        self
    }

    /// Adds an ACL user to every node's configuration, as a `user` directive with
    /// `rules` in `ACL SETUSER` syntax (name first). Users configured this way exist
    /// from the start and survive node restarts, unlike ones made with `ACL SETUSER`.
    /// Call once per user. The testkit itself logs in as `default` with the
    /// `requirepass` of [`config`](Self::config): a rule that gives `default` a password
    /// of its own, or turns it off, leaves the testkit refused (the start fails saying
    /// so); set the password with `requirepass` instead.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::testkit::LocalCluster;
    /// // The seed's application user.
    /// let cluster = LocalCluster::builder()
    ///     .acl_user("appuser on >password ~app:* +@read +@write +cluster|shards")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn acl_user(self, rules: impl Into<String>) -> Self {
        self.config("user", rules)
    }

    /// Serves TLS only: every node gets `port 0` and `tls-port <its port>`, and talks to
    /// the other nodes over TLS too (`tls-cluster yes`, `tls-replication yes`). Default
    /// off.
    ///
    /// `start` generates a fresh CA, a server certificate (SANs `127.0.0.1` and
    /// `localhost`, shared by every node) and a client certificate into `tls/` in the
    /// cluster's directory: see [`LocalCluster::ca_cert_path`],
    /// [`LocalCluster::client_cert_path`], [`LocalCluster::client_key_path`] and
    /// [`LocalCluster::tls_config`], which the testkit's own connections and
    /// [`LocalCluster::connect_options`] use. Whether nodes require a client certificate
    /// is [`LocalClusterBuilder::tls_auth_clients`]. Needs a `redis-server` built with
    /// TLS (Debian's is).
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::testkit::LocalCluster;
    /// use redcluster::ClusterClient;
    /// let cluster = LocalCluster::builder().tls(true).start().await?;
    /// let client = ClusterClient::builder()
    ///     .nodes(cluster.seeds())
    ///     .tls(cluster.tls_config().expect("a TLS cluster"))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn tls(mut self, on: bool) -> Self {
        self.tls = on;
        self
    }

    /// Redis's `tls-auth-clients` for a [`LocalClusterBuilder::tls`] cluster: whether
    /// clients must present a certificate signed by the cluster's CA. Default
    /// [`TlsAuthClients::Required`].
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::testkit::LocalCluster;
    /// use redcluster::testkit::TlsAuthClients;
    /// // TLS without client certificates.
    /// let cluster = LocalCluster::builder()
    ///     .tls(true)
    ///     .tls_auth_clients(TlsAuthClients::No)
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn tls_auth_clients(mut self, mode: TlsAuthClients) -> Self {
        self.tls_auth_clients = mode;
        self
    }

    /// The `redis-server` binary to run (Redis 7.0 or newer).
    ///
    /// Default: the path in the environment variable `REDCLUSTER_REDIS_SERVER`
    /// ([`REDIS_SERVER_ENV`]) if set, else `redis-server` found on `PATH`.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::testkit::LocalCluster;
    /// let cluster = LocalCluster::builder()
    ///     .redis_server("/opt/redis-7.2/bin/redis-server")
    ///     .start()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn redis_server(mut self, path: impl Into<PathBuf>) -> Self {
        self.redis_server = Some(path.into());
        self
    }

    /// Starts the nodes, forms the cluster and waits until it is stable (see
    /// [`LocalCluster::wait_until_stable`]).
    ///
    /// Takes about two seconds: a Redis master does not report `cluster_state:ok` until
    /// two seconds after it started.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `redis-server` cannot be found (the message says how to
    /// install it), is older than 7.0, or the builder's settings are invalid;
    /// [`Error::Io`] when a node fails to start (the message has the end of its log) or
    /// the cluster does not settle within the wait timeout (the message says what did
    /// not converge).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::testkit::LocalCluster;
    /// let cluster = LocalCluster::builder().masters(3).start().await?;
    /// let client = redcluster::ClusterClient::connect(cluster.seeds()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn start(self) -> Result<LocalCluster> {
        self.validate()?;
        let binary = resolve_binary(self.redis_server.as_deref())?;
        check_version(&binary, VERSION_TIME_LIMIT)?;
        // Owner only: the nodes' `redis.conf` files hold their passwords.
        let dir = tempfile::Builder::new()
            .prefix("redcluster-testkit-")
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .tempdir()
            .map_err(|e| Error::io(e, false))?;
        let tls = if self.tls {
            Some(super::tls::generate(
                &dir.path().join("tls"),
                self.tls_auth_clients,
            )?)
        } else {
            None
        };
        let directives = self.effective_directives();
        // The last one counts, as in a `redis.conf`.
        let node_timeout = directives
            .iter()
            .rev()
            .find(|(name, _)| name.eq_ignore_ascii_case("cluster-node-timeout"))
            .and_then(|(_, ms)| ms.trim_matches('"').parse().ok())
            .map_or(self.node_timeout, Duration::from_millis);
        let settings = Settings {
            binary,
            dir,
            password: password_of(&self.directives),
            renames: renames_of(&self.directives),
            secrets: ConfSecrets::of(&directives),
            directives,
            wait_timeout: self.wait_timeout,
            node_timeout,
            tls,
        };
        LocalCluster::form(settings, self.masters, self.replicas_per_master).await
    }

    fn validate(&self) -> Result<()> {
        if self.masters == 0 || self.masters > usize::from(SLOT_COUNT) {
            return Err(Error::Config(format!(
                "a local cluster needs between 1 and {SLOT_COUNT} masters, not {}",
                self.masters
            )));
        }
        if self.node_timeout.is_zero() {
            return Err(Error::Config("node_timeout must not be zero".to_owned()));
        }
        for (name, value) in &self.directives {
            let bad_char = |s: &str| s.contains(['\n', '\r', '\0']);
            if name.is_empty() || name.contains(char::is_whitespace) || bad_char(value) {
                return Err(Error::Config(format!(
                    "invalid redis.conf directive {name:?}: names are one word, values one line"
                )));
            }
            if let Some((_, why)) = MANAGED.iter().find(|(m, _)| m.eq_ignore_ascii_case(name)) {
                return Err(Error::Config(format!(
                    "the testkit sets `{name}` itself ({why}); it cannot be configured"
                )));
            }
        }
        Ok(())
    }

    /// The testkit's overridable defaults that the user did not set, then the user's.
    fn effective_directives(&self) -> Vec<(String, String)> {
        let user_sets = |name: &str| {
            self.directives
                .iter()
                .any(|(n, _)| n.eq_ignore_ascii_case(name))
        };
        let mut out: Vec<(String, String)> = [
            ("protected-mode", "no".to_owned()),
            (
                "cluster-node-timeout",
                self.node_timeout.as_millis().max(1).to_string(),
            ),
            ("save", "\"\"".to_owned()),
            ("appendonly", "no".to_owned()),
            // Replicas sync as soon as they ask instead of waiting 5 s for company.
            ("repl-diskless-sync-delay", "0".to_owned()),
        ]
        .into_iter()
        .filter(|(name, _)| !user_sets(name))
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        if !user_sets("masterauth") {
            if let Some((_, value)) = self
                .directives
                .iter()
                .rev()
                .find(|(n, _)| n.eq_ignore_ascii_case("requirepass"))
            {
                out.push(("masterauth".to_owned(), value.clone()));
            }
        }
        out.extend(self.directives.iter().cloned());
        out
    }
}

/// The `rename-command` directives, for the testkit's and its users' connections.
fn renames_of(directives: &[(String, String)]) -> CommandRenames {
    directives
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case("rename-command"))
        .filter_map(|(_, value)| {
            let mut words = value.split_whitespace();
            Some((words.next()?, unquote(words.next().unwrap_or(""))))
        })
        .fold(CommandRenames::new(), |renames, (name, to)| {
            renames.rename(name, to)
        })
}

/// A `redis.conf` value without its surrounding quotes.
fn unquote(value: &str) -> &str {
    let value = value.trim();
    value
        .strip_prefix('"')
        .and_then(|v| v.strip_suffix('"'))
        .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
        .unwrap_or(value)
}

/// The last `requirepass`, unquoted.
fn password_of(directives: &[(String, String)]) -> Option<String> {
    let (_, value) = directives
        .iter()
        .rev()
        .find(|(n, _)| n.eq_ignore_ascii_case("requirepass"))?;
    let unquoted = unquote(value);
    (!unquoted.is_empty()).then(|| unquoted.to_owned())
}

/// Directives whose value is a password.
const PASSWORD_DIRECTIVES: &[&str] = &[
    "requirepass",
    "masterauth",
    "tls-key-file-pass",
    "tls-client-key-file-pass",
];

/// The passwords in the nodes' `redis.conf`, cut from any node log the testkit quotes
/// (in errors, panics and [`LocalCluster::log_tail`]): `redis-server` quotes a directive
/// it refuses whole, `>>> 'requirepass "..." extra'`. No `Debug`: it holds the passwords.
#[derive(Default)]
pub(crate) struct ConfSecrets(Vec<String>);

impl ConfSecrets {
    /// The values of the password directives and the passwords of the `user` directives'
    /// rules (`>password`, `<password`), each as written and unquoted.
    fn of(directives: &[(String, String)]) -> ConfSecrets {
        let mut secrets: Vec<&str> = Vec::new();
        for (name, value) in directives {
            if PASSWORD_DIRECTIVES
                .iter()
                .any(|d| d.eq_ignore_ascii_case(name))
            {
                secrets.extend([value.trim(), unquote(value)]);
            } else if name.eq_ignore_ascii_case("user") {
                secrets.extend(
                    value
                        .split_whitespace()
                        .map(unquote)
                        .filter_map(|rule| rule.strip_prefix(['>', '<'])),
                );
            }
        }
        // No password (`requirepass ""`) is nothing to hide.
        secrets.retain(|s| !unquote(s).is_empty());
        // Longest first: where one password contains another, the longer goes whole.
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        ConfSecrets(secrets.into_iter().map(str::to_owned).collect())
    }

    /// `text` with every password replaced by `***`. Every occurrence goes, also inside
    /// other words: an unreadable log line is better than a leaked password.
    pub(crate) fn scrub(&self, text: &str) -> String {
        if !self.0.iter().any(|secret| text.contains(secret.as_str())) {
            return text.to_owned();
        }
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(c) = rest.chars().next() {
            match self
                .0
                .iter()
                .find(|secret| rest.starts_with(secret.as_str()))
            {
                Some(secret) => {
                    out.push_str("***");
                    rest = &rest[secret.len()..];
                }
                None => {
                    out.push(c);
                    rest = &rest[c.len_utf8()..];
                }
            }
        }
        out
    }
}

/// Everything a running cluster needs to (re)start nodes and talk to them.
pub(crate) struct Settings {
    pub(crate) binary: PathBuf,
    /// Removed when the cluster is dropped, after its processes are killed.
    pub(crate) dir: TempDir,
    pub(crate) directives: Vec<(String, String)>,
    pub(crate) password: Option<String>,
    /// From the `rename-command` directives.
    pub(crate) renames: CommandRenames,
    /// Cut from the node logs the testkit quotes.
    pub(crate) secrets: ConfSecrets,
    pub(crate) wait_timeout: Duration,
    /// The nodes' `cluster-node-timeout`.
    pub(crate) node_timeout: Duration,
    /// The certificates of a TLS cluster.
    pub(crate) tls: Option<TlsFiles>,
}

impl Settings {
    /// The `redis.conf` of the node listening on `port`, living in `node_dir`.
    pub(crate) fn render_conf(&self, port: u16, cluster_port: u16, node_dir: &Path) -> String {
        let mut conf = String::from("# Written by redcluster::testkit.\n");
        match &self.tls {
            None => {
                let _ = writeln!(conf, "port {port}");
            }
            Some(tls) => {
                // TLS only, between nodes too; the bus port is set explicitly below (it
                // would otherwise follow the plaintext port, which is off).
                let _ = writeln!(conf, "port 0");
                let _ = writeln!(conf, "tls-port {port}");
                let _ = writeln!(conf, "tls-cert-file {}", quote(&tls.server_cert));
                let _ = writeln!(conf, "tls-key-file {}", quote(&tls.server_key));
                let _ = writeln!(conf, "tls-ca-cert-file {}", quote(&tls.ca_cert));
                conf.push_str("tls-cluster yes\ntls-replication yes\n");
                let _ = writeln!(conf, "tls-auth-clients {}", tls.auth_clients.directive());
            }
        }
        let _ = writeln!(conf, "cluster-port {cluster_port}");
        conf.push_str("bind 127.0.0.1\ndaemonize no\ncluster-enabled yes\n");
        let _ = writeln!(conf, "cluster-config-file nodes-{port}.conf");
        let _ = writeln!(conf, "dir {}", quote(node_dir));
        let _ = writeln!(
            conf,
            "logfile {}",
            quote(&node_dir.join(super::node::LOG_FILE))
        );
        for (name, value) in &self.directives {
            let _ = writeln!(conf, "{name} {value}");
        }
        conf
    }

    /// Options for the testkit's own connections.
    pub(crate) fn admin_options(&self) -> ConnectOptions {
        let mut options = self.client_options();
        options.connect_timeout = Duration::from_secs(2);
        // MIGRATE of a batch may take a while on a loaded machine.
        options.response_timeout = Duration::from_secs(10);
        options.client_name = Some("redcluster-testkit".to_owned());
        options
    }

    /// Options that authenticate like the cluster wants, over TLS for a TLS cluster.
    pub(crate) fn client_options(&self) -> ConnectOptions {
        ConnectOptions {
            password: self.password.clone().map(Secret::from),
            tls: self.tls.as_ref().map(|t| t.config.clone()),
            renames: self.renames.clone(),
            ..ConnectOptions::default()
        }
    }
}

/// A path as a double-quoted `redis.conf` string.
fn quote(path: &Path) -> String {
    let text = path.to_string_lossy();
    format!("\"{}\"", text.replace('\\', "\\\\").replace('"', "\\\""))
}

fn install_hint() -> String {
    format!(
        "The testkit runs real `redis-server` processes (Redis 7.0 or newer). Install \
         Redis (Debian/Ubuntu: `apt-get install -y redis-server`; macOS: \
         `brew install redis`), or point the environment variable {REDIS_SERVER_ENV} \
         (or LocalClusterBuilder::redis_server) at a redis-server binary."
    )
}

/// Finds the binary: the builder's path, else the environment variable, else `PATH`.
/// The path is made absolute: nodes start in their own directories, where a relative
/// one (`redis/src/redis-server`, found from the test's directory) would not resolve.
pub(crate) fn resolve_binary(explicit: Option<&Path>) -> Result<PathBuf> {
    let given = |path: PathBuf, source: &str| {
        if path.is_file() {
            Ok(absolute(path))
        } else {
            Err(Error::Config(format!(
                "redis-server not found at {} ({source}). {}",
                path.display(),
                install_hint()
            )))
        }
    };
    if let Some(path) = explicit {
        return given(
            path.to_owned(),
            "set with LocalClusterBuilder::redis_server",
        );
    }
    if let Some(path) = std::env::var_os(REDIS_SERVER_ENV).filter(|v| !v.is_empty()) {
        return given(
            PathBuf::from(path),
            &format!("from the environment variable {REDIS_SERVER_ENV}"),
        );
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    // Also look where package managers put it, for environments with a minimal PATH.
    let fallback: [OsString; 3] =
        ["/usr/bin", "/usr/local/bin", "/opt/homebrew/bin"].map(Into::into);
    std::env::split_paths(&path)
        .chain(fallback.iter().map(PathBuf::from))
        .map(|dir| dir.join("redis-server"))
        .find(|candidate| candidate.is_file())
        .map(absolute)
        .ok_or_else(|| {
            Error::Config(format!(
                "redis-server not found on PATH. {}",
                install_hint()
            ))
        })
}

/// `path` from the current directory, when it is relative. Not canonicalized: Debian's
/// `redis-server` is a link to `redis-check-rdb`, and Redis acts by the name it is
/// started under.
fn absolute(path: PathBuf) -> PathBuf {
    std::path::absolute(&path).unwrap_or(path)
}

/// How long `redis-server --version` may take: a binary that never answers (a wrapper
/// script waiting on something) fails the start instead of hanging it.
const VERSION_TIME_LIMIT: Duration = Duration::from_secs(10);

/// Refuses servers older than 7.0: the testkit needs `cluster-port`, `CLUSTER MEET` with
/// a bus port and `CLUSTER ADDSLOTSRANGE`. `binary --version` gets `limit` to answer.
fn check_version(binary: &Path, limit: Duration) -> Result<()> {
    let failed = |e: std::io::Error| {
        Error::io(
            std::io::Error::new(
                e.kind(),
                format!("running {} --version: {e}", binary.display()),
            ),
            false,
        )
    };
    let mut child = Command::new(binary)
        .arg("--version")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(failed)?;
    let deadline = std::time::Instant::now() + limit;
    // Polled: the version is a line, written at once, and a pipe holds it whole.
    while child.try_wait().map_err(failed)?.is_none() {
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Error::Config(format!(
                "{} --version did not answer within {limit:?}",
                binary.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let mut stdout = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        use std::io::Read as _;
        out.read_to_end(&mut stdout).map_err(failed)?;
    }
    let text = String::from_utf8_lossy(&stdout);
    // "Redis server v=7.0.15 sha=..."; an unknown format is given the benefit of the doubt.
    let version = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .map(str::to_owned);
    let major = version
        .as_deref()
        .and_then(|v| v.split('.').next())
        .and_then(|m| m.parse::<u32>().ok());
    match major {
        Some(major) if major < 7 => Err(Error::Config(format!(
            "{} is version {}; the testkit needs Redis 7.0 or newer. {}",
            binary.display(),
            version.unwrap_or_default(),
            install_hint()
        ))),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A binary that never answers `--version` fails the start within the limit; a
    /// real one passes.
    #[cfg(unix)]
    #[test]
    fn a_server_binary_that_never_answers_its_version_fails_in_time() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("redis-server");
        std::fs::write(&script, "#!/bin/sh\nexec sleep 30\n").unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = std::time::Instant::now();
        let err = check_version(&script, Duration::from_millis(300)).unwrap_err();
        assert!(
            matches!(&err, Error::Config(m) if m.contains("did not answer")),
            "{err}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{:?}",
            started.elapsed()
        );
        let real = resolve_binary(None).unwrap();
        check_version(&real, VERSION_TIME_LIMIT).unwrap();
    }

    #[test]
    fn refuses_managed_and_malformed_directives() {
        let err = LocalClusterBuilder::default()
            .config("Port", "7000")
            .validate()
            .unwrap_err();
        assert!(
            matches!(err, Error::Config(ref m) if m.contains("`Port`")),
            "{err}"
        );
        assert!(LocalClusterBuilder::default()
            .config("appendonly", "yes\nport 1")
            .validate()
            .is_err());
        assert!(LocalClusterBuilder::default()
            .masters(0)
            .validate()
            .is_err());
        LocalClusterBuilder::default()
            .config("appendonly", "yes")
            .validate()
            .unwrap();
    }

    #[test]
    fn rename_command_directives_become_the_connections_renames() {
        let builder = LocalClusterBuilder::default()
            .config("rename-command", "CONFIG CONFIG_s3cret")
            .config("RENAME-COMMAND", "flushall \"\"")
            .acl_user("app on >pw ~app:* +@read");
        let renames = renames_of(&builder.directives);
        assert!(renames.is_disabled(b"FLUSHALL"));
        assert!(!renames.is_disabled(b"CONFIG"));
        let mut out = bytes::BytesMut::new();
        renames.write(&crate::cmd("config").arg("GET"), &mut out);
        assert_eq!(&out[..], b"*2\r\n$13\r\nCONFIG_s3cret\r\n$3\r\nGET\r\n");
        assert!(builder
            .effective_directives()
            .contains(&("user".to_owned(), "app on >pw ~app:* +@read".to_owned())));
    }

    #[test]
    fn user_directives_replace_defaults_and_password_feeds_masterauth() {
        let builder = LocalClusterBuilder::default()
            .config("appendonly", "yes")
            .config("requirepass", "\"pw-Zq81-secret\"");
        let directives = builder.effective_directives();
        let names: Vec<&str> = directives.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names.iter().filter(|n| **n == "appendonly").count(), 1);
        assert!(names.contains(&"masterauth"));
        assert_eq!(
            password_of(&builder.directives).as_deref(),
            Some("pw-Zq81-secret")
        );
        // Found however `Debug` would quote or escape it.
        let shown = format!("{builder:?}");
        assert!(!shown.contains("Zq81"), "{shown}");
    }

    #[test]
    fn passwords_of_the_configuration_are_scrubbed_whole() {
        let builder = LocalClusterBuilder::default()
            .config("requirepass", "\"testkit secret\"")
            .config("masterauth", "ab")
            .config("tls-key-file-pass", "\"\"")
            .acl_user("app on >app-pw <old-pw ~app:* +@read");
        let secrets = ConfSecrets::of(&builder.effective_directives());
        let log = "\
>>> 'requirepass \"testkit secret\" extra'
>>> 'user app on >app-pw <old-pw ~app:* +@read bad'
AUTH testkit secret; masterauth ab; cab; abc; ä ab ö
>>> 'tls-key-file-pass \"\"'";
        assert_eq!(
            secrets.scrub(log),
            "\
>>> 'requirepass *** extra'
>>> 'user app on >*** <*** ~app:* +@read bad'
AUTH ***; masterauth ***; c***; ***c; ä *** ö
>>> 'tls-key-file-pass \"\"'"
        );
        assert_eq!(secrets.scrub("nothing here"), "nothing here");
        let none = ConfSecrets::of(&LocalClusterBuilder::default().effective_directives());
        assert_eq!(none.scrub(log), log);
    }

    #[test]
    fn missing_binary_says_how_to_install() {
        let err = resolve_binary(Some(Path::new("/nonexistent/redis-server"))).unwrap_err();
        let Error::Config(message) = err else {
            panic!("expected a config error")
        };
        assert!(
            message.contains("apt-get install -y redis-server"),
            "{message}"
        );
        assert!(message.contains("brew install redis"), "{message}");
        assert!(message.contains(REDIS_SERVER_ENV), "{message}");
    }
}
