//! What the client reports about the cluster as it sees it: the health snapshot
//! ([`ClusterHealth`]), metrics through the [`metrics`](https://docs.rs/metrics) facade,
//! spans and events through [`tracing`], and the doctor's judgement of the cluster's
//! configuration against the seed's checklist ([`DoctorReport`], in `doctor.rs`).
//!
//! # Metrics
//!
//! Install any `metrics` recorder (for Prometheus, `metrics-exporter-prometheus`) and the
//! client reports to it. With none installed a command costs two clock reads, a lookup
//! in its node's handle cache and no-op handle calls: tens of nanoseconds, no lock, no
//! allocation. With a recorder, handles are registered once per (command, node) and
//! cached, so a command costs a counter increment, a histogram sample and two gauge
//! updates. A recorder installed after the client was built is picked up on the next
//! command (a cache remembers the recorder it registered with). All names and label keys
//! are defined in one place, `src/observe/metrics.rs`.
//!
//! With `metrics-exporter-prometheus`, give the histograms buckets
//! (`PrometheusBuilder::set_buckets` or `set_buckets_for_metric`): by default the exporter
//! renders histograms as summaries, and folding each sample into a summary at scrape time
//! costs more (150 to 250 ns per command, measured) than the client's own instrumentation
//! (about 60 ns per command over no recorder; with buckets, about 10 ns more at scrape
//! time). `benches/metrics_overhead.rs` measures the whole.
//!
//! | Metric | Type | Labels | Meaning |
//! |---|---|---|---|
//! | `redis_commands_total` | counter | `command`, `node`, `status` | Commands sent, counted once each at their final outcome |
//! | `redis_command_duration_seconds` | histogram | `command`, `node` | Time from routing a command to its final reply |
//! | `redis_cluster_nodes` | gauge | `client`, `state` | Nodes: `primary`, `replica`, `connected`, `breaker_open` (the last two count nodes of the first two: do not sum them) |
//! | `redis_redirects_total` | counter | `kind` | Redirects received for requests, `moved` or `ask` (one past `max_redirects` too, which ends its request; a subscriber's are not counted) |
//! | `redis_topology_refreshes_total` | counter | `trigger` | Topology refreshes completed |
//! | `redis_retries_total` | counter | `reason` | Requests sent again |
//! | `redis_timeouts_total` | counter | | Commands that failed with a timeout |
//! | `redis_circuit_breaker_state` | gauge | `client`, `node` | 0 closed, 1 half-open, 2 open |
//! | `redis_connections` | gauge | `client`, `node`, `kind` | Open connections: `multiplexed`, `dedicated` |
//! | `redis_requests_in_flight` | gauge | | Commands sent and not yet answered |
//! | `redis_pipeline_size` | histogram | | Commands per explicit pipeline |
//!
//! Labels:
//!
//! - `command`: the command's name from the command table, lower case, subcommands as
//!   `container|sub` (`get`, `client|setname`); for a transaction, `exec`. Module
//!   commands learned from the server's `COMMAND INFO` keep their name; any command the
//!   server does not know is `other`. Never a key or an argument.
//! - `node`: `host:port` as the client reaches the node. For a command, the node that
//!   gave the final outcome (after redirects and retries); `none` when no node was
//!   reached (no route for the slot).
//! - `status`: `ok` (a reply; a write short of replicas under `durable_writes` too,
//!   alone or in a pipeline: the primary replied), `error` (an error reply:
//!   `WRONGTYPE`, `NOPERM`, a `CLUSTERDOWN` still there after its retries, ..., a
//!   refused `WATCH` too), `failure` (no reply: timeout, connection failure, open
//!   circuit breaker, too many redirects; a `WATCH` still refused `CLUSTERDOWN` after
//!   its retries ends as `ClusterDown`, counted here).
//! - `kind`: `moved` or `ask` for redirects; `multiplexed` or `dedicated` for connections.
//! - `trigger`: `moved`, `connection_failure`, `cluster_down`, `unknown_node` (a
//!   `MOVED` or `ASK` to a node the topology lacks: the cluster grew), `uncovered_slot`,
//!   `periodic` (the timer, `ClusterClient::refresh_topology`, and a cluster-wide
//!   `scan`, which refreshes before each pass over slots it has to scan again). The
//!   initial discovery of `build` is not counted; with `lazy_connect` the discovery
//!   runs as a refresh (`uncovered_slot`) and is.
//! - `reason`: `connection`, `timeout` (a connect that ran out of its connect timeout,
//!   nothing sent; a request that was sent and timed out is never retried), `circuit_open`, `no_route`,
//!   `cluster_down`, `tryagain`, `loading`, `masterdown`, `other`. A lazy client's
//!   requests waiting for its first discovery take the reason of the discovery's
//!   error.
//! - `state`: `primary`, `replica` (in the current topology), `connected` (with an open
//!   connection), `breaker_open`.
//! - `client`: on the three cluster gauges, which client they describe: its
//!   `client_name` (`ClusterClientBuilder::client_name`), or `default`. Two clients in
//!   one process (two clusters, or two configurations) each set their own series when
//!   their names differ; give them names (unnamed clients, and one named `default`,
//!   share theirs).
//!
//! What one sample means:
//!
//! - A command is counted once, when it ends, on the node that gave its outcome; a
//!   command split over slots (`MGET`, `DEL` of several keys) counts once per slot, one
//!   fanned out to every primary once per node. Redirects and retries do not count extra
//!   commands; they show in `redis_redirects_total` and `redis_retries_total`. A command
//!   whose future is dropped before it ends is not counted. Each command of an explicit
//!   pipeline counts on its own, and so does each cursor page of `ClusterClient::scan`
//!   and each command on a `watch` connection (`watch`, what runs on it, `exec`). Not
//!   counted: the client's own commands (handshakes, topology refreshes, health checks,
//!   the doctor's checks); refreshes have `redis_topology_refreshes_total`. The one
//!   exception is the `COMMAND INFO` lookup of a command the built-in table lacks
//!   (once per name), counted as `command|info`.
//! - `redis_command_duration_seconds` is per command, not per attempt: it includes the
//!   time spent following redirects and waiting between retries, which is what the caller
//!   waited. Commands of an explicit pipeline each record the time of their node's batch.
//! - `redis_cluster_nodes`, `redis_connections` and `redis_circuit_breaker_state` are set
//!   when a topology is installed, after each topology refresh and after each health
//!   check (every 10 s by default); breaker states are also set at every transition. A
//!   node known under two handles (primary and replica-read connections) reports the sum
//!   of their connections and the breaker of the handle of its current role in the
//!   routes, as `health()` does (the handle of its old role may keep an open breaker no
//!   request reaches any more). A dropped client's last values
//!   stay (the `metrics` facade has no way to remove a series).
//!
//! # Tracing
//!
//! Every command sent to the cluster runs in a `redis_command` span at `DEBUG` level
//! (nearly free when no subscriber, or one at `INFO`, listens), with fields `command`,
//! `slot` (when it has one), `node` (the node of the latest attempt), `attempt`,
//! `redirects`, and when it ends `status` (`ok`, `error`, `failure`) and `duration_ms`:
//! a subscriber that logs span closes (`tracing_subscriber`'s `FmtSpan::CLOSE`) writes
//! one line per command. (Commands on dedicated connections, blocking ones, durable
//! writes and `WATCH`, leave `attempt` and `redirects` empty: their redirects show as
//! events.) Each node's share of an explicit pipeline is written in a `redis_pipeline`
//! span (`node`, `commands`), one per batch rather than one per command. A cluster-wide
//! `scan`'s cursor pages are counted in `redis_commands_total` but run in no span of
//! their own (nor in `redis_requests_in_flight`): the scan's task sends them on the
//! node's connection directly. A connection's tasks run in a root
//! `redis_connection` span (`node`), not in the span of the request that opened it,
//! which therefore closes when that request ends. Events, targets under `redcluster`:
//!
//! - `DEBUG` "MOVED redirect" / "ASK redirect" (`slot`, `from`, `to`), "retrying"
//!   (`reason`, `attempt`), "connected" / "connect failed" (`node`, `reconnect`).
//! - `DEBUG`, from a cluster-wide `scan`, when it will scan slots again on their
//!   current owner: "slots of a node changed during its scan; will rescan them"
//!   (`node`, `slots`: how many), "scan of a node interrupted; will rescan its slots"
//!   (`node`, `error`).
//! - `INFO` "topology discovered", "topology changed" (`trigger`, `added`, `removed`,
//!   `moved_slots`, `moved`: the slot ranges that changed primary, as
//!   `start-end old->new`), comparing each view fetched from the cluster with the
//!   previous one; `DEBUG` "topology updated; routing unchanged" when only replicas or
//!   the order of shards changed.
//! - `WARN` "failover detected: ..." (`slots`, `old_primary`, `new_primary`): slots now
//!   served by what was their primary's replica.
//! - Circuit breakers: `WARN` "circuit breaker opened", `INFO` "circuit breaker
//!   half-open", "circuit breaker closed" (`node`, `read_only`, `state`).
//!
//! Fields never hold keys, values, arguments or credentials.

pub(crate) mod doctor;
pub(crate) mod events;
pub(crate) mod metrics;

use crate::policy::BreakerState;

pub use doctor::{Check, CheckStatus, DoctorReport};

/// The cluster as the client sees it, from [`crate::ClusterClient::health`].
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// let health = client.health();
/// println!("{} of 16384 slots served", health.slots_covered);
/// for node in &health.nodes {
///     println!("{} {:?} latency {:?}", node.addr, node.role, node.latency);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClusterHealth {
    /// Slots some primary serves, out of 16384.
    pub slots_covered: usize,
    /// Every node in the client's current topology, primaries first.
    pub nodes: Vec<NodeHealth>,
}

impl ClusterHealth {
    /// Whether every slot is served and no breaker of a primary that serves slots is
    /// open (a primary that serves none, as a master added before a resharding, holds
    /// up no request; while slots migrate into it, though, the keys already moved are
    /// served there, by `ASK`, before the slot map says so).
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// // A readiness probe.
    /// let ready = client.health().is_ok();
    /// # Ok(()) }
    /// ```
    pub fn is_ok(&self) -> bool {
        self.slots_covered == usize::from(crate::SLOT_COUNT)
            && self
                .nodes
                .iter()
                .filter(|n| n.role == NodeRole::Primary && n.slots > 0)
                .all(|n| n.breaker != BreakerState::Open)
    }

    /// The cluster's state as the client sees it: [`ClusterState::Fail`] when some slot
    /// has no primary it can reach (unserved, or its primary's breaker is open),
    /// [`ClusterState::Degraded`] when every slot is served but a replica is unreachable
    /// or a primary that serves slots has none, [`ClusterState::Ok`] otherwise. [`ClusterHealth::is_ok`]
    /// holds in both `Ok` and `Degraded`: requests are served.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::ClusterState;
    /// match client.health().state() {
    ///     ClusterState::Ok => {}
    ///     ClusterState::Degraded => eprintln!("serving, with less redundancy than configured"),
    ///     _ => eprintln!("some slots cannot be served"),
    /// }
    /// # Ok(()) }
    /// ```
    pub fn state(&self) -> ClusterState {
        if !self.is_ok() {
            return ClusterState::Fail;
        }
        let replica_down = self
            .nodes
            .iter()
            .any(|n| n.role == NodeRole::Replica && n.breaker == BreakerState::Open);
        let unreplicated = self
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::Primary && n.slots > 0)
            .any(|p| {
                !self
                    .nodes
                    .iter()
                    .any(|r| r.primary.as_deref() == Some(p.addr.as_str()))
            });
        if replica_down || unreplicated {
            ClusterState::Degraded
        } else {
            ClusterState::Ok
        }
    }

    /// The entry for `addr`, if the node is in the topology.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// if let Some(node) = client.health().node("127.0.0.1:7000") {
    ///     println!("breaker {:?}, last failure {:?}", node.breaker, node.last_error);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn node(&self, addr: &str) -> Option<&NodeHealth> {
        self.nodes.iter().find(|n| n.addr == addr)
    }
}

/// The cluster's state as the client sees it; see [`ClusterHealth::state`].
///
/// ```
/// assert_ne!(redcluster::ClusterState::Ok, redcluster::ClusterState::Fail);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterState {
    /// Every slot served by a reachable primary, and every primary has a reachable
    /// replica.
    Ok,
    /// Every slot served, with less redundancy than a replica per primary.
    Degraded,
    /// Some slot has no reachable primary: its requests fail.
    Fail,
}

/// A node's role in the client's topology.
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// use redcluster::NodeRole;
/// let health = client.health();
/// let replicas = health.nodes.iter().filter(|n| n.role == NodeRole::Replica).count();
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeRole {
    /// Serves slots.
    Primary,
    /// Replicates a primary.
    Replica,
}

/// One node in a [`ClusterHealth`] snapshot.
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// for node in client.health().nodes {
///     if let Some((error, at)) = &node.last_error {
///         println!("{} ({:?}) last failed at {at:?}: {error}", node.addr, node.role);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NodeHealth {
    /// `host:port`, as the client reaches it.
    pub addr: String,
    /// Primary or replica.
    pub role: NodeRole,
    /// For a replica, the primary it replicates.
    pub primary: Option<String>,
    /// For a primary, how many slots it serves (0 for one that serves none yet, as a
    /// master added before a resharding); 0 for a replica.
    pub slots: usize,
    /// Whether the client has a live connection to it, shared or dedicated (as the
    /// `redis_cluster_nodes{state="connected"}` gauge counts).
    pub connected: bool,
    /// Its circuit breaker.
    pub breaker: BreakerState,
    /// Smoothed PING round trip from the health checks, once measured; `None` again
    /// after a check that got no answer, until the next that does.
    pub latency: Option<std::time::Duration>,
    /// The node's last failure (a connection attempt that failed, a request or health
    /// check it did not answer in time, a dropped connection) and when it happened;
    /// kept after the node recovers, so compare the time with the other fields.
    pub last_error: Option<(String, std::time::SystemTime)>,
}
