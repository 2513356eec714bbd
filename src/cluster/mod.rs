//! The cluster client: routes each command to the node that owns its keys, follows
//! `MOVED` and `ASK`, retries what is safe to retry, splits multi-slot commands and fans
//! out cluster-wide ones.
//!
//! Owns the routing snapshot and the node handles; protocol decisions come from
//! `plan` (where a command goes), `policy` (what an error means) and `topology` (what
//! the cluster looks like), none of which do I/O.

mod batch;
mod commands;
mod config;
mod dedicated;
mod doctor;
mod execute;
mod health;
mod node;
pub(crate) mod plan;
mod refresh;
mod routes;
mod scan;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::time::Instant;

use crate::cmd::Cmd;
use crate::error::{Error, Result};
use crate::resp::{FromValue, Value};
use crate::topology::RefreshTrigger;

pub(crate) use config::Config;
pub use config::{AddressRemap, ClusterClientBuilder, ReadFrom};
pub use dedicated::Durability;
pub(crate) use dedicated::{blocking_reply_deadline, replicas_acked, Landing, Lease};
pub(crate) use execute::multi_accepted;
pub(crate) use plan::Plan;
use refresh::RefreshSignal;
use routes::{NodeRegistry, Routes};
pub use scan::{Scan, ScanOptions};

/// A client for one Redis Cluster.
///
/// Cheap to clone; clones share connections, topology and background tasks. The
/// background refresh task ends when the last clone is dropped and no
/// [`Subscriber`](crate::Subscriber) made from it is left (a subscriber keeps the
/// topology tracking it needs). Used on another runtime than the one it was built on,
/// after that one shut down, the client starts its refresh and health tasks again there
/// at the first request that asks for a refresh.
///
/// ```no_run
/// # async fn demo() -> redcluster::Result<()> {
/// use redcluster::{cmd, ClusterClient};
/// let client = ClusterClient::connect(["127.0.0.1:7000"]).await?;
/// client.set("greeting", "hello").await?;
/// let v: Option<String> = client.get("greeting").await?;
/// let n: i64 = client.query(cmd("INCR").arg("counter")).await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ClusterClient {
    pub(crate) inner: Arc<Inner>,
    /// Each request's deadline from when it is made: the builder's
    /// `response_timeout`, or another one for this handle
    /// ([`ClusterClient::with_response_timeout`]).
    pub(crate) response_timeout: Duration,
    /// Where this handle's reads go: the builder's `read_from`, or another one
    /// ([`ClusterClient::with_read_from`]).
    pub(crate) read_from: ReadFrom,
}

impl std::fmt::Debug for ClusterClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let routes = self.inner.routes.load();
        f.debug_struct("ClusterClient")
            .field("seeds", &self.inner.config.seeds)
            .field("shards", &routes.map.shards().len())
            .field("covered_slots", &routes.map.covered())
            .field("response_timeout", &self.response_timeout)
            .field("read_from", &self.read_from)
            .finish()
    }
}

/// Counters a test or a dashboard can read; see [`ClusterClient::stats`].
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// let stats = client.stats();
/// println!("{} MOVED, {} ASK, {} retries", stats.moved, stats.ask, stats.retries);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ClientStats {
    /// `MOVED` redirects followed.
    pub moved: u64,
    /// `ASK` redirects followed.
    pub ask: u64,
    /// Topology refreshes completed (the initial discovery of `build` not counted; with
    /// `lazy_connect`, the discovery runs as a refresh and is counted).
    pub refreshes: u64,
    /// Requests sent again after a retryable failure.
    pub retries: u64,
}

#[derive(Debug, Default)]
struct Counters {
    moved: AtomicU64,
    ask: AtomicU64,
    retries: AtomicU64,
}

pub(crate) struct Inner {
    /// This client, for work that must outlive the request that started it (a refresh
    /// runs on a task of its own: see [`Inner::refresh`]).
    me: Weak<Inner>,
    pub(crate) config: Config,
    routes: ArcSwap<Routes>,
    registry: NodeRegistry,
    /// Dedicated connections in use, across nodes (`max_connections`).
    pub(crate) dedicated_limit: Arc<tokio::sync::Semaphore>,
    /// Of `dedicated_limit`, what blocking commands may hold at once (see
    /// [`dedicated::blocking_share`]).
    pub(crate) blocking_limit: Arc<tokio::sync::Semaphore>,
    signal: Arc<RefreshSignal>,
    counters: Counters,
    /// Requests sent, for the retry budget.
    pub(crate) requests: AtomicU64,
    pub(crate) budget: Mutex<crate::policy::RetryBudget>,
    /// The `client` label of this client's cluster gauges: its `client_name`, or
    /// `default`.
    pub(crate) metrics_client: Arc<str>,
    /// `MOVED` patches an install must not undo (see [`refresh::Moves`]).
    pub(crate) moves: Mutex<refresh::Moves>,
    /// `COMMAND INFO` answers for commands missing from the built-in table (modules).
    learned: Mutex<Vec<(Vec<u8>, Option<&'static crate::cmd::CommandInfo>)>>,
    /// When a `COMMAND INFO` lookup last went unanswered (refused, or no connection).
    lookup_failed_at: Mutex<Option<std::time::Instant>>,
    /// Held while the cluster gauges are set (see [`Inner::publish_gauges`]).
    publishing_gauges: Mutex<()>,
}

impl Inner {
    /// Spawns the refresh task, and the health task if configured, unless running, on
    /// the caller's runtime (none outside one: the next request on one does).
    fn spawn_background(self: &Arc<Self>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        if let Some(running) = refresh::Running::claim(&self.signal, false) {
            let first = !self.signal.refresh_started.swap(true, Ordering::Relaxed);
            runtime.spawn(refresh::refresh_task(
                Arc::downgrade(self),
                Arc::clone(&self.signal),
                self.config.refresh_interval,
                self.config.refresh_min_interval,
                running,
                first,
            ));
        }
        let health = self.config.health_check_interval;
        if let Some((interval, running)) =
            health.and_then(|i| Some((i, refresh::Running::claim(&self.signal, true)?)))
        {
            runtime.spawn(health::health_task(
                Arc::downgrade(self),
                Arc::clone(&self.signal),
                interval,
                running,
            ));
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.signal.shutdown();
        for node in self.registry.all() {
            node.close();
        }
    }
}

impl ClusterClient {
    /// Connects with default settings to the cluster that `seeds` belong to.
    ///
    /// # Errors
    ///
    /// As [`ClusterClientBuilder::build`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::ClusterClient;
    /// let client = ClusterClient::connect(["127.0.0.1:7000", "127.0.0.1:7001"]).await?;
    /// // With credentials, or TLS: "redis://app:s3cret@10.0.0.1:6379", "rediss://10.0.0.1:6380".
    /// # Ok(()) }
    /// ```
    pub async fn connect<I, S>(seeds: I) -> Result<ClusterClient>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        ClusterClient::builder().nodes(seeds).build().await
    }

    /// A builder with every setting at its default.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(["127.0.0.1:7000"])
    ///     .response_timeout(Duration::from_secs(1))
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> ClusterClientBuilder {
        ClusterClientBuilder::default()
    }

    /// A builder from the environment: `REDIS_CLUSTER_NODES` (comma-separated seeds,
    /// required), `REDIS_PASSWORD` and `REDIS_USERNAME` (optional), the TLS variables
    /// (`REDIS_TLS`, `REDIS_TLS_CA`, `REDIS_TLS_CERT`, `REDIS_TLS_KEY`,
    /// `REDIS_TLS_SERVER_NAME`), `REDIS_ADDRESS_REMAP` (`announced=reachable` pairs,
    /// comma-separated, for [`ClusterClientBuilder::address_remap`]) and
    /// `REDIS_RENAMED_COMMANDS` (`NAME=server_name` pairs, `NAME=` for a disabled command,
    /// for [`ClusterClientBuilder::rename_command`]).
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// // REDIS_CLUSTER_NODES=127.0.0.1:6450,127.0.0.1:6451
    /// // REDIS_ADDRESS_REMAP=redis-cluster-0:6379=127.0.0.1:6450,redis-cluster-1:6379=127.0.0.1:6451
    /// let client = redcluster::ClusterClient::builder_from_env()?.build().await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `REDIS_CLUSTER_NODES` is not set.
    pub fn builder_from_env() -> Result<ClusterClientBuilder> {
        config::builder_from_env()
    }

    pub(crate) async fn start(config: Config) -> Result<ClusterClient> {
        let settings = node::NodeSettings {
            announced: Default::default(),
            // The seeds as dialled (see `Inner::seed_address`).
            node_ids: Arc::new(crate::conn::NodeIds::trusting(
                config
                    .seeds
                    .iter()
                    .map(|seed| match &config.remap {
                        Some(remap) => Arc::from(remap.seed(seed).0),
                        None => Arc::from(seed.as_str()),
                    })
                    .collect(),
            )),
            options: config.connect.clone(),
            multiplexed: config.connections_per_node,
            dedicated: config.max_connections_per_node,
            breaker: config.breaker,
            probe_timeout: config.response_timeout,
        };
        let dedicated_limit = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
        let blocking_limit = Arc::new(tokio::sync::Semaphore::new(dedicated::blocking_share(
            config.max_connections,
        )));
        let budget = config.retry_budget;
        let metrics_client: Arc<str> =
            Arc::from(config.connect.client_name.as_deref().unwrap_or("default"));
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            metrics_client,
            config,
            routes: ArcSwap::from_pointee(Routes::default()),
            registry: NodeRegistry::new(settings),
            dedicated_limit,
            blocking_limit,
            signal: Arc::new(RefreshSignal::default()),
            counters: Counters::default(),
            requests: AtomicU64::new(0),
            budget: Mutex::new(crate::policy::RetryBudget::new(budget)),
            moves: Mutex::new(refresh::Moves::default()),
            learned: Mutex::new(Vec::new()),
            lookup_failed_at: Mutex::new(None),
            publishing_gauges: Mutex::new(()),
        });
        // Once each as reached: two seeds may be one node's names (its announced one
        // and the one `address_remap` maps it to), and would be asked twice, their view
        // counted twice.
        let mut seeds: Vec<Arc<str>> = Vec::with_capacity(inner.config.seeds.len());
        for seed in inner.config.seeds.iter() {
            let reached = inner.seed_address(seed);
            if !seeds.iter().any(|s| **s == *reached) {
                seeds.push(Arc::from(reached));
            }
        }
        let lazy = inner.config.lazy_connect;
        if !lazy {
            let view = inner.fetch_view(&seeds).await?;
            // Held against older views as a refresh's is: the seed may have heard of a
            // failover the nodes the next refresh asks have not.
            inner.signal.note_epochs(&view);
            inner.install(view, RefreshTrigger::Periodic, 0);
        }
        let health_checks = inner.config.health_check_interval.is_some();
        inner
            .signal
            .health_checks
            .store(health_checks, Ordering::Relaxed);
        let background = Arc::downgrade(&inner);
        let spawn_background = move || {
            if let Some(inner) = background.upgrade() {
                inner.spawn_background();
            }
        };
        spawn_background();
        inner.signal.respawn.set(Box::new(spawn_background));
        if lazy {
            // Discovery, in the background, at once.
            inner.signal.request(RefreshTrigger::Uncovered);
        }
        let response_timeout = inner.config.response_timeout;
        let read_from = inner.config.read_from;
        Ok(ClusterClient {
            inner,
            response_timeout,
            read_from,
        })
    }

    /// A handle to the same client (connections, topology, breakers, metrics) whose
    /// requests get `timeout` as their deadline instead of the builder's
    /// [`response_timeout`](ClusterClientBuilder::response_timeout): every request made
    /// through it, typed helpers, pipelines, transactions, `watch`, scans and scripts
    /// included, and a [`subscriber`](ClusterClient::subscriber)'s (un)subscribe calls
    /// unless its own `subscribe_timeout` is set. The deadline covers queueing,
    /// redirects, retries and backoff, as always; a blocking command still gets the time
    /// it asks to block on top.
    ///
    /// Use a shorter one where an answer is useless after a while (a cache read on a
    /// request path), a longer one for a command known to be slow (`KEYS` on a large
    /// node, a long script). A slow command holds up the replies behind it on a shared
    /// connection; blocking commands go on dedicated connections for that reason.
    /// Background work (topology refreshes, health checks, breaker probes) and
    /// [`doctor`](ClusterClient::doctor)'s checks keep the builder's timeout. A zero
    /// timeout is a deadline already passed: every request fails with
    /// [`Error::Timeout`], unsent (`may_have_executed: false`).
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let fast = client.with_response_timeout(Duration::from_millis(50));
    /// let cached: Option<String> = fast.get("page:{home}").await.unwrap_or(None);
    /// # Ok(()) }
    /// ```
    pub fn with_response_timeout(&self, timeout: Duration) -> ClusterClient {
        ClusterClient {
            response_timeout: timeout,
            ..self.clone()
        }
    }

    /// A handle to the same client (connections, topology, breakers, metrics) whose
    /// reads go where `read_from` says instead of the builder's
    /// [`read_from`](ClusterClientBuilder::read_from): single commands, split `MGET`s,
    /// pipelines and read-only scripts, wherever a read may be served by a replica.
    /// Writes, transactions, `watch` and scans go to primaries as always.
    ///
    /// One client, one set of connections, and each part of the application reads as
    /// it needs: reads that must see the latest write from primaries, reads that may
    /// lag (a replica is asynchronous: a read may miss a write acknowledged just
    /// before) from replicas.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::ReadFrom;
    /// let lagging_ok = client.with_read_from(ReadFrom::PreferReplica);
    /// let views: Option<i64> = lagging_ok.get("page:{home}:views").await?;
    /// let balance: Option<i64> = client.get("acct:{7}:balance").await?; // the builder's read_from
    /// # Ok(()) }
    /// ```
    pub fn with_read_from(&self, read_from: ReadFrom) -> ClusterClient {
        ClusterClient {
            read_from,
            ..self.clone()
        }
    }

    /// Where reads made through this handle go: the builder's `read_from`, unless
    /// [`ClusterClient::with_read_from`] set another.
    pub fn read_from(&self) -> ReadFrom {
        self.read_from
    }

    /// The deadline each request made through this handle gets: the builder's
    /// `response_timeout`, unless [`ClusterClient::with_response_timeout`] set another.
    pub fn response_timeout(&self) -> Duration {
        self.response_timeout
    }

    /// Sends any command and converts its reply.
    ///
    /// The command goes to the node that owns its keys (see the routing table in the
    /// crate docs); MOVED/ASK are followed and transient cluster errors retried within
    /// the response timeout.
    ///
    /// # Errors
    ///
    /// [`Error::Server`] for an error reply (`err.server_code()` gives `WRONGTYPE`,
    /// `NOPERM`, ...), [`Error::ClusterDown`], [`Error::CrossSlot`], [`Error::Timeout`],
    /// [`Error::TooManyRedirects`], connection errors, [`Error::Partial`] for a write split
    /// over slots or sent to several nodes that ran only in part, [`Error::Type`] when
    /// the reply does not convert to `T`, or [`Error::Config`], unsent, for a command
    /// the client refuses: one that would break or reconfigure a shared connection
    /// (`SUBSCRIBE`, `MULTI`, `SELECT`, `CLIENT SETNAME`, ...), `WAIT`, a raw `SCAN`,
    /// one that acts on the node it is sent to (`BGSAVE`, `SHUTDOWN`, `CLIENT KILL`:
    /// use [`query_node`](Self::query_node)), one with an argument over 512 MiB (the
    /// server would close the connection other requests share), or one too malformed
    /// to find its keys.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::{cmd, Value};
    /// let n: i64 = client.query(cmd("INCR").arg("visits")).await?;
    /// let name: Option<String> = client.query(cmd("GET").arg("user:{42}:name")).await?;
    /// let raw: Value = client.query(cmd("XLEN").arg("events:{eu}")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn query<T: FromValue>(&self, cmd: Cmd) -> Result<T> {
        let now = Instant::now();
        let deadline = crate::deadline::after(now, self.response_timeout);
        let value = self
            .inner
            .execute(cmd, now, deadline, self.read_from)
            .await?;
        into_result(value)
    }

    /// [`query`](Self::query) for a command you know is safe to run twice (an `INCR`
    /// whose rare double count you accept, a module command that overwrites, a script
    /// written to be repeatable): like a read or a `SET`, it is sent again after its
    /// connection was lost, even when it may have run. Without this, such a request
    /// fails with `may_have_executed() == true` instead. A request that timed out is
    /// still never sent again (its deadline has passed), and neither is a blocking
    /// command nor, under `durable_writes`, a write (those go on a dedicated connection
    /// and are sent again only when they surely did not run, declared or not).
    ///
    /// # Errors
    ///
    /// As [`query`](Self::query).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::cmd;
    /// // A page-view counter: a rare double count beats a lost one.
    /// let views: i64 = client.query_idempotent(cmd("INCR").arg("views:{home}")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn query_idempotent<T: FromValue>(&self, cmd: Cmd) -> Result<T> {
        let now = Instant::now();
        let deadline = crate::deadline::after(now, self.response_timeout);
        let value = self
            .inner
            .execute_idempotent(cmd, now, deadline, self.read_from)
            .await?;
        into_result(value)
    }

    /// Sends any command to the node at `addr`, one of [`known_nodes`](Self::known_nodes)
    /// (a replica too), instead of where its keys or the command table would send it:
    /// for one node's administration and diagnostics (`CLUSTER INFO`, `INFO`, `SLOWLOG
    /// GET`, `CONFIG GET`, `MEMORY DOCTOR` of that node). The response timeout, retries
    /// and the node's breaker apply as to any request, and a `MOVED` or `ASK` is followed
    /// (a keyed command sent to a node that does not serve the key is answered by the one
    /// that does). `durable_writes` adds no `WAIT` here.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an address that is not a node of the topology, or a command
    /// that blocks (`BLPOP`) or holds a connection (`SUBSCRIBE`, `MULTI`): those go by
    /// their keys, through [`query`](Self::query), [`subscriber`](Self::subscriber),
    /// [`transaction`](Self::transaction); or one that would set the shared connection
    /// (`CLIENT SETNAME`, `CLIENT TRACKING`, ...); otherwise as [`query`](Self::query).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::cmd;
    /// for addr in client.known_nodes() {
    ///     let info: String = client.query_node(&addr, cmd("CLUSTER").arg("INFO")).await?;
    ///     println!("{addr}: {}", info.lines().next().unwrap_or_default());
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn query_node<T: FromValue>(&self, addr: &str, cmd: Cmd) -> Result<T> {
        let deadline = crate::deadline::from_now(self.response_timeout);
        let value = self.inner.execute_on(addr, cmd, deadline).await?;
        into_result(value)
    }

    /// Sends a write and waits until `durability.replicas` replicas acknowledged it (or
    /// `durability.timeout` passed); see [`Durability`] for what that does and does not
    /// guarantee. Returns the reply and how many replicas acknowledged. A blocking write
    /// (`BLMOVE` of a reliable queue) gets the time it asks to block beyond the response
    /// timeout, as when sent alone, then its `WAIT`.
    ///
    /// # Errors
    ///
    /// [`Error::NotReplicated`] when fewer replicas acknowledged than asked (the write
    /// did run on the primary); [`Error::Config`] for a command without keys, one the
    /// client would split across slots (`MSET`, `DEL`, ... with keys in several);
    /// [`Error::CrossSlot`] for other commands with keys in several slots (`RENAME`,
    /// `SUNIONSTORE`, ...); otherwise as [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// use redcluster::{cmd, Durability};
    /// let wait = Durability::new(1, Duration::from_millis(100));
    /// let ((), replicas) = client
    ///     .query_durable(cmd("SET").arg("order:{7}").arg("paid"), wait)
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn query_durable<T: FromValue>(
        &self,
        command: Cmd,
        durability: Durability,
    ) -> Result<(T, u32)> {
        let deadline = crate::deadline::from_now(self.response_timeout);
        let info = self.inner.command_info(&command, deadline).await;
        let slot = match plan::plan(&command, info)? {
            Plan::Slot { slot, .. } => slot,
            _ => {
                return Err(Error::Config(
                    "durable writes need a command whose keys share one slot".into(),
                ))
            }
        };
        // A blocking command (`BLMOVE`) gets the time it asks to block, as when sent
        // alone, within the pool's share for blocking commands: on the connection kept
        // for `WATCH` and durable writes with only the response timeout, a wait timed
        // out as may-have-run, and an element popped as the deadline passed was lost.
        let blocking = info.is_some_and(|i| crate::cmd::blocks(&command, i));
        let name = crate::observe::metrics::command_label(info);
        let landing = Landing::default();
        let durable = self.inner.send_durable(
            execute::Payload::One(command),
            slot,
            durability,
            deadline,
            &landing,
            blocking,
        );
        let (reply, acked) = self
            .inner
            .observed(name, Some(slot), |(v, _)| v, &landing, durable)
            .await?;
        let value = into_result(reply)?;
        if acked < durability.replicas {
            return Err(Error::NotReplicated {
                acknowledged: acked,
                requested: durability.replicas,
            });
        }
        Ok((value, acked))
    }

    /// Counters of redirects, refreshes and retries since the client was built.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let before = client.stats();
    /// client.set("k", "v").await?;
    /// println!("redirects followed: {}", client.stats().moved - before.moved);
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> ClientStats {
        let c = &self.inner.counters;
        ClientStats {
            moved: c.moved.load(Ordering::Relaxed),
            ask: c.ask.load(Ordering::Relaxed),
            refreshes: self.inner.signal.count.load(Ordering::Acquire),
            retries: c.retries.load(Ordering::Relaxed),
        }
    }

    /// The address of the primary that currently serves `slot`, as the client's slot map
    /// says.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let slot = redcluster::key_slot(b"user:{42}");
    /// if let Some(addr) = client.primary_for_slot(slot) {
    ///     println!("slot {slot} is served by {addr}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn primary_for_slot(&self, slot: u16) -> Option<String> {
        self.inner
            .routes
            .load()
            .map
            .primary(slot)
            .map(|a| a.to_string())
    }

    /// The address of the node that serves `key`'s slot, as the client's slot map says.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let addr = client.node_for_key(b"user:{42}:name"); // Some("10.0.0.3:6379")
    /// # Ok(()) }
    /// ```
    pub fn node_for_key(&self, key: &[u8]) -> Option<String> {
        self.primary_for_slot(crate::slot::key_slot(key))
    }

    /// Addresses of every node the client knows, primaries first.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// for addr in client.known_nodes() {
    ///     println!("{addr}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn known_nodes(&self) -> Vec<String> {
        self.inner
            .routes
            .load()
            .map
            .nodes()
            .iter()
            .map(|a| a.to_string())
            .collect()
    }

    /// Addresses of nodes with an open connection right now.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// println!("connected to {} nodes", client.connected_nodes().len());
    /// # Ok(()) }
    /// ```
    pub fn connected_nodes(&self) -> Vec<String> {
        let mut nodes: Vec<String> = self
            .inner
            .registry
            .all()
            .iter()
            .filter(|n| n.is_connected())
            .map(|n| n.addr.to_string())
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    }

    /// A snapshot of the cluster as the client sees it: slot coverage, and per node its
    /// role, connection, circuit breaker, PING latency, and last failure and when.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let health = client.health();
    /// for node in health.nodes.iter().filter(|n| !n.connected) {
    ///     println!("{} is down: {:?}", node.addr, node.last_error);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn health(&self) -> crate::ClusterHealth {
        use crate::observe::{ClusterHealth, NodeHealth, NodeRole};
        let routes = self.inner.routes.load();
        let mut nodes = Vec::new();
        let slots = routes.map.slots_per_shard();
        let describe = |node: &node::Node, role: NodeRole, primary: Option<&str>, served| {
            let (shared, dedicated) = node.open_connections();
            NodeHealth {
                addr: node.addr.to_string(),
                role,
                primary: primary.map(str::to_string),
                slots: served,
                connected: shared + dedicated > 0,
                breaker: node.breaker_state(),
                latency: node.latency(),
                last_error: node.last_failure(),
            }
        };
        for (i, primary) in routes.primaries.iter().enumerate() {
            let served = slots.get(i).copied().unwrap_or(0);
            nodes.push(describe(primary, NodeRole::Primary, None, served));
            for replica in routes.replicas.get(i).into_iter().flatten() {
                nodes.push(describe(replica, NodeRole::Replica, Some(&primary.addr), 0));
            }
        }
        ClusterHealth {
            slots_covered: routes.map.covered(),
            nodes,
        }
    }

    /// Refreshes the topology now, waiting for the result (normally refreshes happen on
    /// their own). A refresh under way (the background one) is waited for first:
    /// refreshes run one at a time, so an answer that comes late never replaces a later
    /// one.
    ///
    /// Not bounded by the response timeout: a refresh asks three nodes at a time, each
    /// given the connect timeout and then the response timeout (5 s at most) to answer,
    /// and the next three when none of them did, so with nodes that accept connections
    /// but never answer it can take a while. Bound it with `tokio::time::timeout` where
    /// that matters: dropped while it waits for the nodes, the refresh stops and installs
    /// nothing (the view is installed at once once fetched), and the next one starts
    /// afresh. (It runs on a task of its own: a future kept but no longer polled holds
    /// up no other refresh.)
    ///
    /// # Errors
    ///
    /// The error of the last node asked when none answered; [`Error::ClusterDown`] when
    /// the runtime shut down before the refresh finished.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// // E.g. right after resharding with redis-cli, instead of waiting for MOVED.
    /// client.refresh_topology().await?;
    /// # Ok(()) }
    /// ```
    pub async fn refresh_topology(&self) -> Result<()> {
        self.inner.refresh(RefreshTrigger::Periodic).await.map(drop)
    }
}

/// What the subscriber (`crate::pubsub`) needs of the client: the routing snapshot's
/// answers, and the refresh doorbell.
impl Inner {
    /// The primary serving `slot` in the current snapshot.
    pub(crate) fn slot_owner(&self, slot: u16) -> Option<Arc<str>> {
        self.routes.load().map.primary(slot).cloned()
    }

    /// Every node of the current snapshot, primaries first.
    pub(crate) fn node_addrs(&self) -> Vec<Arc<str>> {
        self.routes.load().map.nodes()
    }

    /// Whether the current snapshot serves every slot: no shard is left out for a
    /// failed primary (whose replicas are left out with it).
    pub(crate) fn covers_every_slot(&self) -> bool {
        self.routes.load().map.covers_every_slot()
    }

    /// Every primary of the current snapshot.
    pub(crate) fn primary_addrs(&self) -> Vec<Arc<str>> {
        self.routes.load().map.primaries()
    }

    /// The current snapshot's version; it changes with every new snapshot.
    pub(crate) fn routes_version(&self) -> u64 {
        self.routes.load().version
    }

    /// Asks the refresh task for a topology refresh (cheap, coalesced).
    pub(crate) fn request_refresh(&self, trigger: RefreshTrigger) {
        self.signal.request(trigger);
    }
}

/// Turns a final reply into the caller's result: error replies become errors.
fn into_result<T: FromValue>(value: Value) -> Result<T> {
    match value {
        Value::ServerError(e) => Err(reply_error(e)),
        v => T::from_value(v),
    }
}

/// The error a final error reply is to its caller, on every path (single commands,
/// pipelines, transactions): [`Error::ClusterDown`] for a `CLUSTERDOWN` the client's
/// retries did not get past, or a redirect to a node of unknown address; else
/// [`Error::Server`].
pub(crate) fn reply_error(e: crate::ServerError) -> Error {
    // A script's redirect, judged so: its reply, whatever the address it names.
    if e.not_the_servers {
        return Error::Server(e);
    }
    let unknown_host = crate::slot::parse_redirect(&e, "").is_some_and(|r| r.host_unknown());
    // A script's `redis.error_reply("CLUSTERDOWN ...")` is its reply, not the cluster's
    // word that nothing ran.
    if e.code() == "CLUSTERDOWN" && crate::policy::servers_own_refusal(&e) {
        Error::ClusterDown(e.message().to_string())
    } else if unknown_host {
        // A redirect to a node whose address no node could give yet (`MOVED 5 ?:6379`)
        // is waited out like `CLUSTERDOWN` (within `cluster_down_retry_attempts`); once
        // that is over, the slot's owner is as unknown as when none serves it.
        Error::ClusterDown(format!(
            "{} {}: redirected to a node whose address is not known yet",
            e.code(),
            e.message()
        ))
    } else {
        Error::Server(e)
    }
}
