//! [`LocalCluster`]: forming the cluster, asking it about itself, and the faults and
//! topology changes tests inject.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::join_all;
use tokio::time::Instant;

use super::builder::{LocalClusterBuilder, Settings};
use super::node::{expect, tail, Node};
use super::topology::{self, Managed, NodeEntry, Observation, Unsettled};
use super::NodeState;
use crate::cmd::{cmd, Cmd};
use crate::conn::{ConnectOptions, NodeConnection, TlsConfig};
use crate::error::{Error, Result};
use crate::resp::{FromValue, Value};
use crate::slot::SLOT_COUNT;

/// How often a condition is polled while waiting for the cluster to converge.
const POLL: Duration = Duration::from_millis(25);
/// How long running nodes may stay strangers to each other before a wait has them meet
/// again.
const INTRODUCE_AGAIN: Duration = Duration::from_secs(5);
/// Keys moved per `MIGRATE` by [`LocalCluster::move_slot`].
const MIGRATE_BATCH: usize = 100;
/// Log lines quoted in errors about one node.
const LOG_LINES: usize = 15;

/// A Redis Cluster of local `redis-server` processes, for tests.
///
/// Every node listens on its own free port on 127.0.0.1 and keeps its files in a
/// temporary directory. Dropping the cluster kills every process and removes the
/// directory, also when the test panics; when it panics, the end of each node's log is
/// printed to stderr first (the test harness shows it with the failure).
///
/// Nodes are numbered in the order they were started: with `masters(m)` and
/// `replicas_per_master(r)`, nodes `0..m` are the masters, in slot order, and node
/// `m + i * r + j` is the `j`-th replica of master `i`. Nodes added later get the next
/// numbers; numbers are never reused, not even after [`LocalCluster::remove_node`].
/// Roles change with failovers: ask [`LocalCluster::masters`] and friends for the
/// current ones.
///
/// All methods take `&self`, so a cluster can be shared (for example in an `Arc`) by a
/// task running traffic and one injecting faults. Operations that change the topology
/// (adding, removing, failing over, moving slots) should not run concurrently with each
/// other.
///
/// Faults ([`kill`](LocalCluster::kill), [`pause`](LocalCluster::pause),
/// [`resume`](LocalCluster::resume), [`restart`](LocalCluster::restart)) return as soon as
/// the process is in its new state; call [`LocalCluster::wait_until_stable`] to wait
/// for the cluster to react. Topology changes wait for the cluster to settle themselves.
///
/// ```no_run
/// # async fn demo() -> redcluster::Result<()> {
/// use redcluster::testkit::LocalCluster;
/// use std::time::Duration;
/// use redcluster::{key_slot, ClusterClient};
/// let cluster = LocalCluster::start().await?;
/// let client = ClusterClient::connect(cluster.seeds()).await?;
/// client.set("user:{42}", "ada").await?;
/// cluster.kill(cluster.master_of_slot(key_slot(b"user:{42}")).await?)?;
/// cluster.wait_until_stable(Duration::from_secs(20)).await?; // its replica took over
/// let name: Option<String> = client.get("user:{42}").await?;
/// # Ok(()) }
/// ```
pub struct LocalCluster {
    settings: Settings,
    nodes: RwLock<Vec<Arc<Node>>>,
    /// When each node (by index) last won a failover election that the testkit ran or
    /// saw undone (see [`LocalCluster::failover`]).
    elected: Mutex<HashMap<usize, Instant>>,
}

/// A snapshot of one node of a [`LocalCluster`].
///
/// ```no_run
/// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
/// for node in cluster.nodes() {
///     println!("node {} at {} ({:?}), id {}", node.index, node.addr(), node.state, node.id);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct NodeInfo {
    /// The node's number in the cluster (see [`LocalCluster`]).
    pub index: usize,
    /// The client port, on 127.0.0.1.
    pub port: u16,
    /// The cluster-bus port, on 127.0.0.1.
    pub cluster_port: u16,
    /// The node's cluster id (40 hex digits); it survives restarts.
    pub id: String,
    /// The process id, while a process runs (also while paused).
    pub pid: Option<u32>,
    /// Whether the node runs.
    pub state: NodeState,
}

impl NodeInfo {
    /// `"127.0.0.1:<port>"`.
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let addr = cluster.node(0).addr(); // "127.0.0.1:<port>"
    /// # Ok(()) }
    /// ```
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

/// How [`LocalCluster::failover`] promotes a replica.
///
/// ```no_run
/// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
/// use redcluster::testkit::FailoverMode;
/// let replica = cluster.replicas_of(0).await?[0];
/// cluster.failover(replica, FailoverMode::Graceful).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailoverMode {
    /// `CLUSTER FAILOVER`: the master stops taking writes, the replica catches up, then
    /// takes over. No write is lost. Needs the master to be reachable.
    Graceful,
    /// `CLUSTER FAILOVER FORCE`: no handshake with the master (which may be down), but
    /// the other masters still vote.
    Force,
    /// `CLUSTER FAILOVER TAKEOVER`: the replica takes over without any vote, bumping
    /// its epoch. Works even without a majority of masters: with nodes down,
    /// [`LocalCluster::failover`] then returns once every running node sees the new
    /// master, not once the whole cluster is stable (other shards may stay unserved).
    Takeover,
}

/// A slot migration in progress, from [`LocalCluster::begin_slot_migration`].
///
/// While it lasts, the source answers `ASK` for keys of the slot it no longer holds and
/// the target serves them to clients that send `ASKING` first.
///
/// ```no_run
/// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
/// let slot = redcluster::key_slot(b"user:{42}");
/// let target = cluster.add_master().await?;
/// let migration = cluster.begin_slot_migration(slot, target).await?;
/// // ... requests for the slot now meet ASK redirects ...
/// cluster.finish_slot_migration(migration).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMigration {
    slot: u16,
    source: usize,
    target: usize,
    source_id: String,
    target_id: String,
}

impl SlotMigration {
    /// The slot being moved.
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// # let migration = cluster.begin_slot_migration(42, 1).await?;
    /// assert_eq!(migration.slot(), 42);
    /// # Ok(()) }
    /// ```
    pub fn slot(&self) -> u16 {
        self.slot
    }

    /// The node the slot moves away from.
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// # let migration = cluster.begin_slot_migration(42, 1).await?;
    /// let source = cluster.connect_node(migration.source()).await?; // answers ASK for moved keys
    /// # Ok(()) }
    /// ```
    pub fn source(&self) -> usize {
        self.source
    }

    /// The node the slot moves to.
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// # let migration = cluster.begin_slot_migration(42, 1).await?;
    /// assert_eq!(migration.target(), 1);
    /// # Ok(()) }
    /// ```
    pub fn target(&self) -> usize {
        self.target
    }
}

impl fmt::Debug for LocalCluster {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalCluster")
            .field("dir", &self.settings.dir.path())
            .field("nodes", &self.nodes())
            .finish()
    }
}

fn failure(message: String) -> Error {
    Error::io(io::Error::other(message), false)
}

impl LocalCluster {
    /// A builder, to choose the shape and configuration of the cluster.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::testkit::LocalCluster;
    /// let cluster = LocalCluster::builder().masters(1).replicas_per_master(1).start().await?;
    /// # Ok(()) }
    /// ```
    pub fn builder() -> LocalClusterBuilder {
        LocalClusterBuilder::default()
    }

    /// Starts a cluster with the defaults: 3 masters with 1 replica each (see
    /// [`LocalClusterBuilder`]).
    ///
    /// # Errors
    ///
    /// As [`LocalClusterBuilder::start`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use redcluster::testkit::LocalCluster;
    /// let cluster = LocalCluster::start().await?; // 3 masters, 1 replica each
    /// # Ok(()) }
    /// ```
    pub async fn start() -> Result<LocalCluster> {
        Self::builder().start().await
    }

    /// Starts the processes and forms the cluster: distinct config epochs, slots split
    /// evenly over the masters, every node meets every other, replicas replicate.
    pub(crate) async fn form(
        settings: Settings,
        masters: usize,
        replicas_per_master: usize,
    ) -> Result<LocalCluster> {
        let total = masters * (1 + replicas_per_master);
        let launched = join_all((0..total).map(|_| Node::launch(&settings))).await;
        let mut nodes = Vec::with_capacity(total);
        let mut failed = None;
        for result in launched {
            match result {
                Ok(node) => nodes.push(Arc::new(node)),
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
        }
        // From here on, dropping `cluster` (on any error) kills the processes.
        let cluster = LocalCluster {
            settings,
            nodes: RwLock::new(nodes),
            elected: Mutex::new(HashMap::new()),
        };
        if let Some(e) = failed {
            return Err(e);
        }
        // Distinct epochs up front spare the cluster its collision resolution.
        for i in 0..total {
            let reply = cluster
                .call(i, cmd("CLUSTER").arg("SET-CONFIG-EPOCH").arg(i + 1))
                .await?;
            cluster.expect::<()>(reply, i, "CLUSTER SET-CONFIG-EPOCH")?;
        }
        for (i, (first, last)) in topology::split_slots(masters).into_iter().enumerate() {
            let reply = cluster
                .call(i, cmd("CLUSTER").arg("ADDSLOTSRANGE").arg(first).arg(last))
                .await?;
            cluster.expect::<()>(reply, i, "CLUSTER ADDSLOTSRANGE")?;
        }
        // Every pair meets directly: faster than waiting for gossip to spread.
        for i in 0..total {
            for j in i + 1..total {
                cluster.meet(i, j).await?;
            }
        }
        let deadline = crate::deadline::from_now(cluster.settings.wait_timeout);
        let replicas = (0..masters).flat_map(|m| {
            (0..replicas_per_master).map(move |k| (masters + m * replicas_per_master + k, m))
        });
        let replicated = join_all(replicas.map(|(r, m)| cluster.replicate(r, m, deadline))).await;
        replicated.into_iter().collect::<Result<Vec<()>>>()?;
        cluster
            .wait_settled("the new cluster did not become stable", deadline)
            .await?;
        Ok(cluster)
    }

    // ---- Addresses and node information ---------------------------------------------

    /// `"127.0.0.1:<port>"` of every node whose process runs (paused ones included), to
    /// hand to a client as its seed nodes.
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::connect(cluster.seeds()).await?;
    /// # Ok(()) }
    /// ```
    pub fn seeds(&self) -> Vec<String> {
        self.nodes()
            .into_iter()
            .filter(|n| matches!(n.state, NodeState::Running | NodeState::Paused))
            .map(|n| n.addr())
            .collect()
    }

    /// A snapshot of every node, removed ones included, in index order.
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// use redcluster::testkit::NodeState;
    /// let running = cluster.nodes().iter().filter(|n| n.state == NodeState::Running).count();
    /// # Ok(()) }
    /// ```
    pub fn nodes(&self) -> Vec<NodeInfo> {
        self.all_nodes()
            .iter()
            .enumerate()
            .map(|(index, node)| Self::info(index, node))
            .collect()
    }

    /// A snapshot of node `index`.
    ///
    /// # Panics
    ///
    /// When there is no node `index`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// use redcluster::testkit::NodeState;
    /// cluster.pause(2)?;
    /// assert_eq!(cluster.node(2).state, NodeState::Paused);
    /// # Ok(()) }
    /// ```
    pub fn node(&self, index: usize) -> NodeInfo {
        match self.node_arc(index) {
            Ok(node) => Self::info(index, &node),
            Err(e) => panic!("{e}"),
        }
    }

    /// `"127.0.0.1:<port>"` of node `index`.
    ///
    /// # Panics
    ///
    /// When there is no node `index`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let addr = cluster.node_addr(0); // "127.0.0.1:<port>"
    /// let conn = redcluster::NodeConnection::connect(&addr, &cluster.connect_options()).await?;
    /// # Ok(()) }
    /// ```
    pub fn node_addr(&self, index: usize) -> String {
        self.node(index).addr()
    }

    /// The index of the node with cluster id `id` (as in `CLUSTER NODES`).
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// use redcluster::{cmd, FromValue};
    /// let reply = cluster.connect_node(0).await?.send(cmd("CLUSTER").arg("MYID")).await?;
    /// let id = String::from_value(reply)?;
    /// assert_eq!(cluster.index_of_id(&id), Some(0));
    /// # Ok(()) }
    /// ```
    pub fn index_of_id(&self, id: &str) -> Option<usize> {
        self.all_nodes().iter().position(|n| n.id == id)
    }

    /// The index of the node listening on `addr` (`"127.0.0.1:<port>"`, as in `MOVED`
    /// and `ASK` redirects and `CLUSTER SLOTS`).
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// // Which node a MOVED reply pointed at.
    /// let moved_to = "127.0.0.1:30002";
    /// let index = cluster.index_of_addr(moved_to);
    /// # Ok(()) }
    /// ```
    pub fn index_of_addr(&self, addr: &str) -> Option<usize> {
        self.all_nodes().iter().position(|n| n.addr() == addr)
    }

    /// Connection options that authenticate the way the cluster requires (the
    /// `requirepass` given to the builder, if any) and, for a TLS cluster, connect with
    /// [`LocalCluster::tls_config`]; the rest are defaults.
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// use redcluster::NodeConnection;
    /// let options = cluster.connect_options(); // with the cluster's password and TLS, if any
    /// let conn = NodeConnection::connect(&cluster.node_addr(1), &options).await?;
    /// # Ok(()) }
    /// ```
    pub fn connect_options(&self) -> ConnectOptions {
        self.settings.client_options()
    }

    /// The commands renamed or disabled by `rename-command` directives, for
    /// [`crate::ClusterClientBuilder::command_renames`].
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::builder()
    ///     .nodes(cluster.seeds())
    ///     .command_renames(cluster.command_renames())
    ///     .build()
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub fn command_renames(&self) -> crate::CommandRenames {
        self.settings.renames.clone()
    }

    /// Whether the cluster serves TLS only ([`LocalClusterBuilder::tls`]).
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let scheme = if cluster.is_tls() { "rediss" } else { "redis" };
    /// # Ok(()) }
    /// ```
    pub fn is_tls(&self) -> bool {
        self.settings.tls.is_some()
    }

    /// For a TLS cluster: a client configuration that trusts the cluster's CA and
    /// presents its client certificate. `None` for a plain cluster.
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let mut builder = redcluster::ClusterClient::builder().nodes(cluster.seeds());
    /// if let Some(tls) = cluster.tls_config() {
    ///     builder = builder.tls(tls);
    /// }
    /// let client = builder.build().await?;
    /// # Ok(()) }
    /// ```
    pub fn tls_config(&self) -> Option<TlsConfig> {
        self.settings.tls.as_ref().map(|t| t.config.clone())
    }

    /// For a TLS cluster: the PEM file of the CA that signed the nodes' and the client's
    /// certificates.
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// // For a tool outside this process, e.g. `redis-cli --tls --cacert <path>`.
    /// let ca = cluster.ca_cert_path().expect("a TLS cluster");
    /// # Ok(()) }
    /// ```
    pub fn ca_cert_path(&self) -> Option<&Path> {
        self.settings.tls.as_ref().map(|t| t.ca_cert.as_path())
    }

    /// For a TLS cluster: the PEM file of a client certificate the nodes accept.
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let tls = redcluster::TlsConfig::new()
    ///     .ca_cert_file(cluster.ca_cert_path().expect("a TLS cluster"))?
    ///     .client_cert_files(
    ///         cluster.client_cert_path().expect("a TLS cluster"),
    ///         cluster.client_key_path().expect("a TLS cluster"),
    ///     )?;
    /// # Ok(()) }
    /// ```
    pub fn client_cert_path(&self) -> Option<&Path> {
        self.settings.tls.as_ref().map(|t| t.client_cert.as_path())
    }

    /// For a TLS cluster: the PEM file of the private key of
    /// [`LocalCluster::client_cert_path`].
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let key = cluster.client_key_path().expect("a TLS cluster");
    /// # Ok(()) }
    /// ```
    pub fn client_key_path(&self) -> Option<&Path> {
        self.settings.tls.as_ref().map(|t| t.client_key.as_path())
    }

    /// Opens a new connection to node `index` with [`LocalCluster::connect_options`].
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unknown index; as [`NodeConnection::connect`] otherwise
    /// (a paused node accepts the TCP connection but the handshake times out).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// use redcluster::cmd;
    /// let conn = cluster.connect_node(0).await?;
    /// let info = conn.send(cmd("CLUSTER").arg("INFO")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect_node(&self, index: usize) -> Result<NodeConnection> {
        let node = self.node_arc(index)?;
        NodeConnection::connect(&node.addr(), &self.connect_options()).await
    }

    /// The temporary directory holding every node's directory (`node-<port>/` with its
    /// `redis.conf`, `nodes-<port>.conf` and `redis.log`). Removed on drop.
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// println!("node files are in {}", cluster.dir().display());
    /// # Ok(()) }
    /// ```
    pub fn dir(&self) -> &std::path::Path {
        self.settings.dir.path()
    }

    /// The last `lines` lines of node `index`'s log (what `redis-server` wrote, startup
    /// errors included), for error messages in tests. Passwords of the configuration
    /// show as `***`, here as in the log the testkit's errors quote.
    ///
    /// # Panics
    ///
    /// When there is no node `index`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// eprintln!("node 0 said:\n{}", cluster.log_tail(0, 20));
    /// # Ok(()) }
    /// ```
    pub fn log_tail(&self, index: usize, lines: usize) -> String {
        match self.node_arc(index) {
            Ok(node) => tail(&node.log_path(), lines, &self.settings.secrets),
            Err(e) => panic!("{e}"),
        }
    }

    // ---- What the cluster says about itself -----------------------------------------

    /// Indices of the nodes (running or paused) that are masters, as the cluster sees
    /// roles now. Roles are read from the first running node's `CLUSTER NODES`; after a
    /// fault, [`LocalCluster::wait_until_stable`] first for an answer all nodes agree on.
    ///
    /// # Errors
    ///
    /// When no node runs or the node does not answer.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let masters = cluster.masters().await?; // e.g. [0, 1, 2]
    /// # Ok(()) }
    /// ```
    pub async fn masters(&self) -> Result<Vec<usize>> {
        self.with_role(true).await
    }

    /// Indices of the nodes (running or paused) that are replicas; see
    /// [`LocalCluster::masters`].
    ///
    /// # Errors
    ///
    /// When no node runs or the node does not answer.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let replicas = cluster.replicas().await?; // e.g. [3, 4, 5]
    /// # Ok(()) }
    /// ```
    pub async fn replicas(&self) -> Result<Vec<usize>> {
        self.with_role(false).await
    }

    /// The node that serves `slot`, as the cluster sees it now (see
    /// [`LocalCluster::masters`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `slot` is not below 16384 or no node serves it.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let owner = cluster.master_of_slot(redcluster::key_slot(b"user:{42}")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn master_of_slot(&self, slot: u16) -> Result<usize> {
        check_slot(slot)?;
        let (_, view) = self.view().await?;
        let owner = view
            .iter()
            .find(|e| e.owns(slot))
            .ok_or_else(|| Error::Config(format!("slot {slot} is not served by any node")))?;
        self.index_of_id(&owner.id).ok_or_else(|| {
            failure(format!(
                "slot {slot} is served by unknown node {}",
                owner.id
            ))
        })
    }

    /// The nodes (running or paused) that replicate node `master`, as the cluster sees it
    /// now (see [`LocalCluster::masters`]).
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unknown index; when no node runs or answers.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let replicas = cluster.replicas_of(0).await?;
    /// # Ok(()) }
    /// ```
    pub async fn replicas_of(&self, master: usize) -> Result<Vec<usize>> {
        let master_id = self.node_arc(master)?.id.clone();
        let (_, view) = self.view().await?;
        Ok(self.live_indices_where(&view, |e| {
            e.master_id.as_deref() == Some(master_id.as_str())
        }))
    }

    /// Waits until the cluster has settled, polling every 25 ms, and fails after
    /// `timeout` with an error that says what had not converged (and quotes the end of
    /// the log of the node concerned).
    ///
    /// Settled means, for the running (not paused) nodes: each reports
    /// `cluster_state:ok`; each sees all 16384 slots served by running nodes (so a
    /// killed or paused master's slots must have been failed over); each knows every
    /// other one with a live cluster-bus link and no failure flag; each sees the same
    /// roles and slots for all of them; none lists a removed node; and each replica's
    /// replication link is up (`master_link_status:up`).
    ///
    /// Running nodes that still do not know each other after 5 s of waiting (a lost
    /// `MEET`, a `CLUSTER FORGET` sent by the test) are introduced again with
    /// `CLUSTER MEET`, every 5 s, as when the cluster was formed: gossip alone could take
    /// a node timeout, or the 60 s ban of a forgotten node. Every wait of the testkit does
    /// this; a test that wants two running nodes kept apart must not wait for stability.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] of kind `TimedOut` when the cluster did not settle in time (the
    /// message says what it waited for), or of kind `Other` when a node exited by itself
    /// (a crash, a `SHUTDOWN` sent to it: reported by every wait until the node is
    /// restarted; the message quotes its log).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// cluster.kill(0)?;
    /// cluster.wait_until_stable(Duration::from_secs(20)).await?; // node 0's replica took over
    /// # Ok(()) }
    /// ```
    pub async fn wait_until_stable(&self, timeout: Duration) -> Result<()> {
        self.wait_settled(
            "the cluster did not become stable",
            crate::deadline::from_now(timeout),
        )
        .await
    }

    // ---- Faults ---------------------------------------------------------------------

    /// Kills node `index` with SIGKILL, as in a crash, and reaps the process; its files
    /// stay, so [`LocalCluster::restart`] can bring it back. Killing a node that is not
    /// running does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unknown index.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// cluster.kill(0)?; // as in a crash; `restart(0)` brings it back
    /// # Ok(()) }
    /// ```
    pub fn kill(&self, index: usize) -> Result<()> {
        self.node_arc(index)?.stop(NodeState::Killed);
        Ok(())
    }

    /// Freezes node `index` with SIGSTOP: it keeps its connections open but answers
    /// nothing, like a node stuck in a long GC pause or a partitioned host. Once the node
    /// timeout passes, the cluster fails it over if it is a master.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unknown index or a node that is killed or removed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// cluster.pause(0)?; // connections stay open, nothing is answered
    /// // ... requests to node 0 time out; after the node timeout it is failed over ...
    /// cluster.resume(0)?;
    /// # Ok(()) }
    /// ```
    pub fn pause(&self, index: usize) -> Result<()> {
        self.node_arc(index)?.signal(true)
    }

    /// Lets a paused node run again (SIGCONT). Resuming a running node does nothing.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unknown index or a node that is killed or removed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// cluster.pause(1)?;
    /// cluster.resume(1)?;
    /// # Ok(()) }
    /// ```
    pub fn resume(&self, index: usize) -> Result<()> {
        self.node_arc(index)?.signal(false)
    }

    /// Starts node `index` again with its old configuration: same ports, same
    /// `nodes.conf`, so it keeps its node id and rejoins the cluster (a master whose
    /// slots were failed over meanwhile comes back as a replica). A node that still runs
    /// is killed first. Data survives only if persistence was configured.
    ///
    /// Returns once the node answers; [`LocalCluster::wait_until_stable`] waits until it
    /// has rejoined.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for an unknown or removed node; [`Error::Io`] when the process
    /// does not come back (the message quotes its log).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// cluster.kill(0)?;
    /// cluster.wait_until_stable(Duration::from_secs(20)).await?;
    /// cluster.restart(0).await?; // rejoins as a replica of its successor
    /// cluster.wait_until_stable(Duration::from_secs(20)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn restart(&self, index: usize) -> Result<()> {
        let node = self.node_arc(index)?;
        if node.state() == NodeState::Removed {
            return Err(Error::Config(format!(
                "node {index} was removed from the cluster"
            )));
        }
        node.relaunch(&self.settings).await?;
        // A new process holds no election state (see `failover`).
        self.elected_lock().remove(&index);
        // Nodes removed while it was down are still in its nodes.conf. Any refusal but
        // "never knew it" is reported now: ignored, it would surface much later as a
        // wait that times out on a node still listed ("Can't forget my master!": it
        // replicated the node removed).
        for removed in self
            .all_nodes()
            .iter()
            .filter(|n| n.state() == NodeState::Removed)
        {
            let reply = self
                .call(index, cmd("CLUSTER").arg("FORGET").arg(removed.id.as_str()))
                .await?;
            if !matches!(&reply, Value::ServerError(e) if e.message().contains("Unknown node")) {
                self.expect::<()>(reply, index, "CLUSTER FORGET")?;
            }
        }
        Ok(())
    }

    /// Promotes replica `replica` with `CLUSTER FAILOVER` in the given mode, then waits
    /// until it is a master and the cluster is stable (see
    /// [`LocalCluster::wait_until_stable`]); its old master becomes its replica.
    ///
    /// A replica elected less than four node timeouts ago (at least 4 s; failed over,
    /// then back) still holds that election's votes in Redis 7.0: failed over again, it
    /// claims the master role at once with the old election's epoch, and the cluster
    /// undoes it, while its master holds writes for the manual failover's 5 s. So a
    /// `Graceful` or `Force` failover of a node the testkit saw elected first waits out
    /// that window (8.5 s with the default 2 s node timeout), and a failover the cluster
    /// undid is tried once more after it.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the node is not a running replica; [`Error::Io`] when the
    /// failover does not complete within the wait timeout (the window included), or the
    /// cluster undid it twice.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// use redcluster::testkit::FailoverMode;
    /// let replica = cluster.replicas_of(0).await?[0];
    /// cluster.failover(replica, FailoverMode::Force).await?;
    /// # Ok(()) }
    /// ```
    pub async fn failover(&self, replica: usize, mode: FailoverMode) -> Result<()> {
        self.require_running(replica)?;
        if self.own_entry(replica).await?.master {
            return Err(Error::Config(format!(
                "node {replica} is a master; only a replica can fail over"
            )));
        }
        let deadline = self.deadline();
        // A takeover bumps the epoch without an election.
        let elects = mode != FailoverMode::Takeover;
        let mut undone = false;
        loop {
            if elects {
                self.wait_out_last_election(replica, deadline).await?;
            }
            let done = self.failover_once(replica, mode, deadline).await;
            if elects {
                // Elected or not, it may have been: the next failover waits.
                self.elected_lock().insert(replica, Instant::now());
            }
            done?;
            // Settled: the cluster kept the promotion, or undid one made with an old
            // election's votes.
            if self.own_entry(replica).await?.master {
                return Ok(());
            }
            if undone {
                return Err(self.timed_out(
                    &format!(
                        "node {replica} became master after CLUSTER FAILOVER ({mode:?}) and \
                         the cluster undid the promotion, twice"
                    ),
                    Some(replica),
                ));
            }
            undone = true;
        }
    }

    /// Sends `CLUSTER FAILOVER` to `replica` and waits until it calls itself master,
    /// then until the cluster is stable.
    async fn failover_once(
        &self,
        replica: usize,
        mode: FailoverMode,
        deadline: Instant,
    ) -> Result<()> {
        let mut failover = cmd("CLUSTER").arg("FAILOVER");
        failover = match mode {
            FailoverMode::Graceful => failover,
            FailoverMode::Force => failover.arg("FORCE"),
            FailoverMode::Takeover => failover.arg("TAKEOVER"),
        };
        let reply = self.call(replica, failover).await?;
        self.expect::<()>(reply, replica, "CLUSTER FAILOVER")?;
        loop {
            if self.own_entry(replica).await.is_ok_and(|e| e.master) {
                break;
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out(
                    &format!(
                        "node {replica} did not become a master after CLUSTER FAILOVER ({mode:?})"
                    ),
                    Some(replica),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
        let down = self
            .all_nodes()
            .iter()
            .any(|n| matches!(n.state(), NodeState::Killed | NodeState::Paused));
        if mode == FailoverMode::Takeover && down {
            // What a takeover is for: masters down, perhaps a majority, and other shards
            // never served again. Done once every running node sees the new master.
            return self.wait_seen_as_master(replica, deadline).await;
        }
        self.wait_settled(
            "the cluster did not become stable after the failover",
            deadline,
        )
        .await
    }

    /// Waits until every running node lists `index` as a master.
    async fn wait_seen_as_master(&self, index: usize, deadline: Instant) -> Result<()> {
        let id = self.node_arc(index)?.id.clone();
        loop {
            let mut unaware = None;
            for (i, node) in self.all_nodes().iter().enumerate() {
                if node.state() != NodeState::Running {
                    continue;
                }
                let view = self.cluster_nodes(i).await?;
                if !view.iter().any(|e| e.id == id && e.master) {
                    unaware = Some(i);
                    break;
                }
            }
            let Some(unaware) = unaware else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                return Err(self.timed_out(
                    &format!(
                        "node {unaware} does not see node {index} as a master after its takeover"
                    ),
                    Some(unaware),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Waits for four node timeouts (at least 4 s), and a little more, to pass since
    /// `replica` was last elected: Redis 7.0 resets a replica's election state only then
    /// (`auth_retry_time`). Nothing a node answers shows it, hence the clock. Fails at
    /// once, without waiting, when too little of the wait timeout would be left after it
    /// for the failover itself.
    async fn wait_out_last_election(&self, replica: usize, deadline: Instant) -> Result<()> {
        let Some(elected) = self.elected_lock().get(&replica).copied() else {
            return Ok(());
        };
        let votes_kept = (self.settings.node_timeout * 4).max(Duration::from_secs(4))
            + Duration::from_millis(500);
        let until = elected + votes_kept;
        let needed = self.settings.node_timeout * 2;
        if until + needed > deadline {
            return Err(self.timed_out(
                &format!(
                    "node {replica} was elected {:.1} s ago and keeps that election's votes \
                     for {:.1} s: too little of the wait timeout would be left to fail it \
                     over (raise it with `wait_timeout`)",
                    elected.elapsed().as_secs_f64(),
                    votes_kept.as_secs_f64()
                ),
                None,
            ));
        }
        tokio::time::sleep_until(until).await;
        Ok(())
    }

    fn elected_lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Instant>> {
        self.elected.lock().unwrap_or_else(PoisonError::into_inner)
    }

    // ---- Topology changes -----------------------------------------------------------

    /// Starts a new empty master (no slots), has it meet the cluster and waits until the
    /// cluster is stable with it. Returns its index.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the node does not start or the cluster does not settle.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let new_master = cluster.add_master().await?;
    /// cluster.move_slot(0, new_master).await?;
    /// # Ok(()) }
    /// ```
    pub async fn add_master(&self) -> Result<usize> {
        let index = self.add_node().await?;
        self.wait_settled(
            &format!("the cluster did not become stable after adding node {index}"),
            self.deadline(),
        )
        .await?;
        Ok(index)
    }

    /// Starts a new node, has it meet the cluster, makes it a replica of `master` and
    /// waits until it has synced and the cluster is stable. Returns its index.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when `master` is not a running master; [`Error::Io`] when the
    /// node does not start or the cluster does not settle.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let replica = cluster.add_replica(0).await?;
    /// # Ok(()) }
    /// ```
    pub async fn add_replica(&self, master: usize) -> Result<usize> {
        self.require_running(master)?;
        if !self.own_entry(master).await?.master {
            return Err(Error::Config(format!("node {master} is not a master")));
        }
        let index = self.add_node().await?;
        let deadline = self.deadline();
        self.replicate(index, master, deadline).await?;
        self.wait_settled(
            &format!("the cluster did not become stable after adding replica {index}"),
            deadline,
        )
        .await?;
        Ok(index)
    }

    /// Removes node `index` the way `redis-cli --cluster del-node` does: every other node
    /// forgets it (`CLUSTER FORGET`), then its process is killed. Waits until the cluster
    /// is stable without it. The node must not serve slots (move them away first with
    /// [`LocalCluster::move_slot`]) nor have replicas.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] when the node serves slots, has running replicas, was already
    /// removed, or another node is paused (it could not forget); [`Error::Io`] when the
    /// cluster does not settle.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let replica = cluster.add_replica(0).await?;
    /// cluster.remove_node(replica).await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove_node(&self, index: usize) -> Result<()> {
        let node = self.node_arc(index)?;
        if node.state() == NodeState::Removed {
            return Err(Error::Config(format!("node {index} was already removed")));
        }
        let (_, view) = self.view().await?;
        if let Some(entry) = view.iter().find(|e| e.id == node.id) {
            if !entry.slots.is_empty() {
                return Err(Error::Config(format!(
                    "node {index} still serves slots {}; move them away first",
                    topology::describe_slots(&entry.slots)
                )));
            }
        }
        let replicas =
            self.live_indices_where(&view, |e| e.master_id.as_deref() == Some(node.id.as_str()));
        if !replicas.is_empty() {
            return Err(Error::Config(format!(
                "node {index} still has replicas {replicas:?}; remove them first"
            )));
        }
        let nodes = self.all_nodes();
        if let Some(paused) = nodes
            .iter()
            .enumerate()
            .position(|(i, n)| i != index && n.state() == NodeState::Paused)
        {
            return Err(Error::Config(format!(
                "node {paused} is paused and could not forget node {index}; resume it first"
            )));
        }
        for (i, other) in nodes.iter().enumerate() {
            if i == index || other.state() != NodeState::Running {
                continue;
            }
            let reply = self
                .call(i, cmd("CLUSTER").arg("FORGET").arg(node.id.as_str()))
                .await?;
            // A node that never learned of it has nothing to forget.
            if !matches!(&reply, Value::ServerError(e) if e.message().contains("Unknown node")) {
                self.expect::<()>(reply, i, "CLUSTER FORGET")?;
            }
        }
        node.stop(NodeState::Removed);
        self.wait_settled(
            &format!("the cluster did not become stable after removing node {index}"),
            self.deadline(),
        )
        .await
    }

    /// Moves `slot`, with its keys, to master `to`, the way `redis-cli --cluster reshard`
    /// does, and waits until the cluster is stable with the new owner. Moving a slot to
    /// the node that already serves it does nothing.
    ///
    /// This is [`begin_slot_migration`](LocalCluster::begin_slot_migration) then
    /// [`finish_slot_migration`](LocalCluster::finish_slot_migration); use those to run
    /// traffic while the keys are half moved.
    ///
    /// # Errors
    ///
    /// As those two.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let slot = redcluster::key_slot(b"user:{42}");
    /// cluster.move_slot(slot, 2).await?;
    /// # Ok(()) }
    /// ```
    pub async fn move_slot(&self, slot: u16, to: usize) -> Result<()> {
        if self.master_of_slot(slot).await? == to {
            return Ok(());
        }
        let migration = self.begin_slot_migration(slot, to).await?;
        self.finish_slot_migration(migration).await
    }

    /// Starts moving `slot` to master `to`: `CLUSTER SETSLOT IMPORTING` on the target,
    /// then `MIGRATING` on the current owner. No key moves yet: move them with
    /// [`migrate_keys_batch`](LocalCluster::migrate_keys_batch) and end with
    /// [`finish_slot_migration`](LocalCluster::finish_slot_migration).
    ///
    /// From now on the source answers `-ASK <slot> <target>` for keys of the slot it
    /// does not have, and the target serves them after `ASKING`.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] for a slot not below 16384, a target that is not a running
    /// master or already serves the slot, or a paused source.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// let slot = redcluster::key_slot(b"user:{42}");
    /// let migration = cluster.begin_slot_migration(slot, 2).await?;
    /// cluster.migrate_keys_batch(&migration, 10).await?; // some keys moved, some not
    /// # Ok(()) }
    /// ```
    pub async fn begin_slot_migration(&self, slot: u16, to: usize) -> Result<SlotMigration> {
        check_slot(slot)?;
        self.require_running(to)?;
        let source = self.master_of_slot(slot).await?;
        if source == to {
            return Err(Error::Config(format!(
                "node {to} already serves slot {slot}"
            )));
        }
        self.require_running(source)?;
        if !self.own_entry(to).await?.master {
            return Err(Error::Config(format!("node {to} is not a master")));
        }
        let migration = SlotMigration {
            slot,
            source,
            target: to,
            source_id: self.node_arc(source)?.id.clone(),
            target_id: self.node_arc(to)?.id.clone(),
        };
        let setslot =
            |state: &str, id: &str| cmd("CLUSTER").arg("SETSLOT").arg(slot).arg(state).arg(id);
        // Target first, so that the ASK redirects the source starts sending can be served.
        let reply = self
            .call(to, setslot("IMPORTING", &migration.source_id))
            .await?;
        self.expect::<()>(reply, to, "CLUSTER SETSLOT IMPORTING")?;
        let reply = self
            .call(source, setslot("MIGRATING", &migration.target_id))
            .await?;
        self.expect::<()>(reply, source, "CLUSTER SETSLOT MIGRATING")?;
        Ok(migration)
    }

    /// Moves up to `max_keys` keys of the migrating slot from the source to the target
    /// (`CLUSTER GETKEYSINSLOT`, then one `MIGRATE ... KEYS`). Returns how many keys it
    /// moved; 0 means none are left on the source.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when `MIGRATE` fails (for example `BUSYKEY`: the target already has
    /// one of the keys) or a node does not answer.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// # let migration = cluster.begin_slot_migration(42, 1).await?;
    /// while cluster.migrate_keys_batch(&migration, 100).await? > 0 {
    ///     // run traffic against the half-moved slot here
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn migrate_keys_batch(
        &self,
        migration: &SlotMigration,
        max_keys: usize,
    ) -> Result<usize> {
        let source = migration.source;
        let reply = self
            .call(
                source,
                cmd("CLUSTER")
                    .arg("GETKEYSINSLOT")
                    .arg(migration.slot)
                    .arg(max_keys.max(1)),
            )
            .await?;
        let keys: Vec<Bytes> = self.expect(reply, source, "CLUSTER GETKEYSINSLOT")?;
        if keys.is_empty() {
            return Ok(0);
        }
        let target = self.node_arc(migration.target)?;
        let mut migrate = cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(target.port)
            .arg("")
            .arg(0)
            .arg(5000);
        if let Some(password) = &self.settings.password {
            migrate = migrate.arg("AUTH").arg(password.as_str());
        }
        let migrate = migrate.arg("KEYS").args(&keys);
        let reply = self.call(source, migrate).await?;
        // NOKEY: the keys expired or were deleted meanwhile, which is fine.
        self.expect::<()>(reply, source, "MIGRATE")?;
        Ok(keys.len())
    }

    /// Moves the keys still on the source, then assigns the slot to the target with
    /// `CLUSTER SETSLOT <slot> NODE` on the target, the source and every other master,
    /// and waits until the cluster is stable with the target serving the slot.
    ///
    /// # Errors
    ///
    /// As [`migrate_keys_batch`](LocalCluster::migrate_keys_batch); [`Error::Io`] when
    /// the cluster does not settle.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
    /// # let migration = cluster.begin_slot_migration(42, 1).await?;
    /// cluster.finish_slot_migration(migration).await?;
    /// assert_eq!(cluster.master_of_slot(42).await?, 1);
    /// # Ok(()) }
    /// ```
    pub async fn finish_slot_migration(&self, migration: SlotMigration) -> Result<()> {
        // Bounded: a writer that kept creating keys on the source could feed it forever.
        let deadline = self.deadline();
        while self.migrate_keys_batch(&migration, MIGRATE_BATCH).await? > 0 {
            if Instant::now() >= deadline {
                let message = format!(
                    "keys kept arriving in slot {} on the source while moving them",
                    migration.slot
                );
                return Err(self.timed_out(&message, Some(migration.source)));
            }
        }
        let (_, view) = self.view().await?;
        let mut order = vec![migration.target, migration.source];
        order.extend(
            self.live_indices_where(&view, |e| e.master)
                .into_iter()
                .filter(|&i| i != migration.target && i != migration.source),
        );
        for i in order {
            if self.node_arc(i)?.state() != NodeState::Running {
                continue;
            }
            let reply = self
                .call(
                    i,
                    cmd("CLUSTER")
                        .arg("SETSLOT")
                        .arg(migration.slot)
                        .arg("NODE")
                        .arg(migration.target_id.as_str()),
                )
                .await?;
            // A master that just gave away its last slot turns itself into a replica of
            // the node that took it (Redis 7, `cluster-allow-replica-migration`), and then
            // refuses SETSLOT; by then it already knows the new owner.
            if let Value::ServerError(e) = &reply {
                if i != migration.target && e.message().contains("only with masters") {
                    continue;
                }
            }
            self.expect::<()>(reply, i, "CLUSTER SETSLOT NODE")?;
        }
        let deadline = self.deadline();
        self.wait_settled(
            &format!(
                "the cluster did not become stable after moving slot {}",
                migration.slot
            ),
            deadline,
        )
        .await?;
        // Stable means everyone agrees; make sure they agree on the new owner.
        let owner = self.master_of_slot(migration.slot).await?;
        if owner != migration.target {
            return Err(failure(format!(
                "slot {} ended up on node {owner} instead of node {}",
                migration.slot, migration.target
            )));
        }
        Ok(())
    }

    // ---- Internals ------------------------------------------------------------------

    fn all_nodes(&self) -> Vec<Arc<Node>> {
        self.nodes
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn node_arc(&self, index: usize) -> Result<Arc<Node>> {
        let nodes = self.nodes.read().unwrap_or_else(PoisonError::into_inner);
        nodes.get(index).cloned().ok_or_else(|| {
            Error::Config(format!(
                "no node {index}: the cluster has {} nodes",
                nodes.len()
            ))
        })
    }

    fn info(index: usize, node: &Node) -> NodeInfo {
        NodeInfo {
            index,
            port: node.port,
            cluster_port: node.cluster_port,
            id: node.id.clone(),
            pid: node.pid(),
            state: node.state(),
        }
    }

    fn deadline(&self) -> Instant {
        crate::deadline::from_now(self.settings.wait_timeout)
    }

    fn require_running(&self, index: usize) -> Result<()> {
        match self.node_arc(index)?.state() {
            NodeState::Running => Ok(()),
            state => Err(Error::Config(format!(
                "node {index} is {}, not running",
                format!("{state:?}").to_lowercase()
            ))),
        }
    }

    /// Sends one command to node `index` on the testkit's connection; an error reply is
    /// `Ok(Value::ServerError)`. A connection found dead before sending is reopened once.
    async fn call(&self, index: usize, command: Cmd) -> Result<Value> {
        let node = self.node_arc(index)?;
        let retry = command.clone();
        let conn = node.conn(&self.settings).await?;
        match conn.send(command).await {
            Ok(reply) => Ok(reply),
            Err(e) => {
                node.forget_conn();
                let unsent = matches!(
                    e,
                    Error::ConnectionLost {
                        may_have_executed: false
                    } | Error::Io {
                        may_have_executed: false,
                        ..
                    }
                );
                if !unsent {
                    return Err(e);
                }
                let conn = node.conn(&self.settings).await?;
                conn.send(retry).await
            }
        }
    }

    fn expect<T: FromValue>(&self, reply: Value, index: usize, what: &str) -> Result<T> {
        let addr = self.node_arc(index).map(|n| n.addr()).unwrap_or_default();
        expect(reply, index, &addr, what)
    }

    async fn meet(&self, from: usize, to: usize) -> Result<()> {
        let target = self.node_arc(to)?;
        let reply = self
            .call(
                from,
                cmd("CLUSTER")
                    .arg("MEET")
                    .arg("127.0.0.1")
                    .arg(target.port)
                    .arg(target.cluster_port),
            )
            .await?;
        self.expect(reply, from, "CLUSTER MEET")
    }

    /// `CLUSTER REPLICATE`, repeated until the replica has learned of its master.
    async fn replicate(&self, replica: usize, master: usize, deadline: Instant) -> Result<()> {
        let master_id = self.node_arc(master)?.id.clone();
        loop {
            let reply = self
                .call(
                    replica,
                    cmd("CLUSTER").arg("REPLICATE").arg(master_id.as_str()),
                )
                .await?;
            match &reply {
                Value::ServerError(e) if e.message().contains("Unknown node") => {}
                _ => return self.expect(reply, replica, "CLUSTER REPLICATE"),
            }
            if Instant::now() >= deadline {
                return Err(self.timed_out(
                    &format!("node {replica} did not learn of its master, node {master}"),
                    Some(replica),
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Starts a node, has it meet every running node and appends it to the list.
    async fn add_node(&self) -> Result<usize> {
        let node = Arc::new(Node::launch(&self.settings).await?);
        let index = {
            let mut nodes = self.nodes.write().unwrap_or_else(PoisonError::into_inner);
            nodes.push(node);
            nodes.len() - 1
        };
        for (i, other) in self.all_nodes().iter().enumerate() {
            if i != index && other.state() == NodeState::Running {
                self.meet(index, i).await?;
            }
        }
        Ok(index)
    }

    /// `CLUSTER NODES` of the first running node.
    async fn view(&self) -> Result<(usize, Vec<NodeEntry>)> {
        let observer = self
            .all_nodes()
            .iter()
            .position(|n| n.state() == NodeState::Running)
            .ok_or_else(|| Error::Config("no node of the cluster is running".to_owned()))?;
        Ok((observer, self.cluster_nodes(observer).await?))
    }

    async fn cluster_nodes(&self, index: usize) -> Result<Vec<NodeEntry>> {
        let reply = self.call(index, cmd("CLUSTER").arg("NODES")).await?;
        let text: String = self.expect(reply, index, "CLUSTER NODES")?;
        topology::parse_nodes(&text).map_err(Error::Protocol)
    }

    /// The node's own line of its `CLUSTER NODES`.
    async fn own_entry(&self, index: usize) -> Result<NodeEntry> {
        self.cluster_nodes(index)
            .await?
            .into_iter()
            .find(|e| e.myself)
            .ok_or_else(|| Error::Protocol(format!("node {index} lists no `myself` entry")))
    }

    /// Indices of running or paused nodes whose entry in `view` matches.
    fn live_indices_where(
        &self,
        view: &[NodeEntry],
        pred: impl Fn(&NodeEntry) -> bool,
    ) -> Vec<usize> {
        self.all_nodes()
            .iter()
            .enumerate()
            .filter(|(_, n)| matches!(n.state(), NodeState::Running | NodeState::Paused))
            .filter(|(_, n)| view.iter().any(|e| e.id == n.id && pred(e)))
            .map(|(i, _)| i)
            .collect()
    }

    async fn with_role(&self, master: bool) -> Result<Vec<usize>> {
        let (_, view) = self.view().await?;
        Ok(self.live_indices_where(&view, |e| e.master == master))
    }

    /// One poll of the stability condition. `Err(Ok(..))`: not settled yet;
    /// `Err(Err(..))`: it never will be (a node died by itself).
    async fn check_settled(
        &self,
    ) -> std::result::Result<(), std::result::Result<Unsettled, Error>> {
        let nodes = self.all_nodes();
        let mut managed = Vec::with_capacity(nodes.len());
        for (i, node) in nodes.iter().enumerate() {
            let (state, exited) = node.poll_state();
            if let Some(status) = exited {
                return Err(Err(failure(format!(
                    "node {i} ({}) exited by itself ({status}); the end of its log ({}):\n{}",
                    node.addr(),
                    node.log_path().display(),
                    tail(&node.log_path(), LOG_LINES, &self.settings.secrets)
                ))));
            }
            managed.push(Managed {
                id: node.id.clone(),
                state,
            });
        }
        let observers: Vec<usize> = (0..nodes.len())
            .filter(|&i| managed[i].state == NodeState::Running)
            .collect();
        let observed = join_all(observers.iter().map(|&i| self.observe(i))).await;
        let mut observations = Vec::with_capacity(observed.len());
        for (result, &i) in observed.into_iter().zip(&observers) {
            match result {
                Ok(o) => observations.push(o),
                Err(e) => {
                    return Err(Ok(Unsettled::at(
                        i,
                        format!("node {i} did not answer: {e}"),
                    )))
                }
            }
        }
        topology::judge(&observations, &managed).map_err(|mut unsettled| {
            unsettled.strangers = topology::strangers(&observations, &managed);
            Ok(unsettled)
        })
    }

    async fn observe(&self, index: usize) -> Result<Observation> {
        let conn = self.node_arc(index)?.conn(&self.settings).await?;
        let replies = conn
            .send_batch(vec![
                cmd("CLUSTER").arg("INFO"),
                cmd("CLUSTER").arg("NODES"),
                cmd("INFO").arg("replication"),
            ])
            .await;
        let replies = match replies {
            Ok(replies) => replies,
            Err(e) => {
                self.node_arc(index)?.forget_conn();
                return Err(e);
            }
        };
        let mut texts = replies.into_iter().map(String::from_value);
        let mut next = || {
            texts
                .next()
                .unwrap_or_else(|| Err(Error::Protocol("missing reply".to_owned())))
        };
        let cluster_info = next()?;
        let nodes = topology::parse_nodes(&next()?).map_err(Error::Protocol)?;
        let replication = next()?;
        Ok(Observation {
            index,
            cluster_info,
            nodes,
            replication,
        })
    }

    async fn wait_settled(&self, what: &str, deadline: Instant) -> Result<()> {
        let start = Instant::now();
        let mut introduced = start;
        loop {
            // A poll runs to its end, even past `deadline`: its answer names the cause.
            let unsettled = match self.check_settled().await {
                Ok(()) => return Ok(()),
                Err(Ok(unsettled)) => unsettled,
                Err(Err(fatal)) => return Err(fatal),
            };
            if unsettled.node.is_none() || Instant::now() >= deadline {
                let message = format!(
                    "{what} (waited {:.1} s): {}",
                    start.elapsed().as_secs_f64(),
                    unsettled.reason
                );
                return Err(self.timed_out(&message, unsettled.node));
            }
            // A lost introduction heals slowly by itself: gossip brings the stranger up
            // again only after the node's handshake timeout (the node timeout, 30 s by
            // default here) or, for a forgotten node, its 60 s ban. Meeting again is
            // harmless between nodes that do know each other.
            if !unsettled.strangers.is_empty() && introduced.elapsed() >= INTRODUCE_AGAIN {
                introduced = Instant::now();
                // At once, and a failed meeting shows in the next poll, which names the
                // cause.
                let meetings = unsettled
                    .strangers
                    .iter()
                    .map(|&(from, to)| self.meet(from, to));
                let _ = tokio::time::timeout_at(deadline, join_all(meetings)).await;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// A timeout error quoting the end of the log of the node concerned.
    fn timed_out(&self, message: &str, node: Option<usize>) -> Error {
        let mut message = message.to_owned();
        if let Some(node) = node.and_then(|i| self.node_arc(i).ok().map(|n| (i, n))) {
            let (i, node) = node;
            message.push_str(&format!(
                "\nthe end of node {i}'s log ({}):\n{}",
                node.log_path().display(),
                tail(&node.log_path(), LOG_LINES, &self.settings.secrets)
            ));
        }
        Error::io(io::Error::new(io::ErrorKind::TimedOut, message), false)
    }
}

fn check_slot(slot: u16) -> Result<()> {
    if slot < SLOT_COUNT {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "slot {slot} does not exist: slots are 0 to {}",
            SLOT_COUNT - 1
        )))
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let nodes = std::mem::take(self.nodes.get_mut().unwrap_or_else(PoisonError::into_inner));
        if std::thread::panicking() {
            for (i, node) in nodes.iter().enumerate() {
                eprintln!(
                    "--- redcluster testkit: node {i} ({}, {:?}), end of {} ---\n{}",
                    node.addr(),
                    node.state(),
                    node.log_path().display(),
                    tail(&node.log_path(), 20, &self.settings.secrets)
                );
            }
        }
        // Kill every process before the temporary directory goes (the `settings` field).
        for node in &nodes {
            node.stop(NodeState::Killed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Clusters can be shared with spawned tasks, and their operations run in them.
    #[allow(dead_code)]
    fn operations_are_send(cluster: &'static LocalCluster) {
        fn send<T: Send + Sync>(_: &T) {}
        send(cluster);
        send(&cluster.failover(3, FailoverMode::Force));
        send(&cluster.wait_until_stable(Duration::from_secs(1)));
        send(&cluster.restart(0));
        send(&cluster.add_replica(0));
        send(&cluster.remove_node(0));
        send(&cluster.move_slot(0, 1));
    }
}
