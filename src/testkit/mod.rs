//! Real local Redis Clusters for tests, and the faults to inject into them.
//!
//! [`LocalCluster`] starts `redis-server` processes on free ports of 127.0.0.1, each in
//! its own directory of a temporary directory, and forms a cluster of them itself
//! (`CLUSTER MEET`, `ADDSLOTSRANGE`, `REPLICATE`; no `redis-cli`). It returns once every
//! node reports `cluster_state:ok`, all nodes agree on the slot map and every replica's
//! replication link is up. Dropping it kills every process and removes the directory,
//! also when a test panics.
//!
//! This module owns those processes and their files, and the cluster administration
//! tests need: killing, pausing and restarting nodes, failovers, adding and removing
//! nodes, and moving slots, in one go or step by step to test `ASK` redirects. It uses
//! [`NodeConnection`](crate::NodeConnection) to talk to the nodes and nothing of the
//! crate's cluster client, so it can test that client.
//!
//! # Requirements
//!
//! Redis 7.0 or newer: `apt-get install -y redis-server` on Debian and Ubuntu,
//! `brew install redis` on macOS. The binary is `redis-server` on `PATH`, or the one the
//! environment variable `REDCLUSTER_REDIS_SERVER` names, or the one given to
//! [`LocalClusterBuilder::redis_server`]. Without one, starting a cluster fails with an
//! [`Error::Config`](crate::Error::Config) that says so. Nodes use the platform's
//! signals (Unix only).
//!
//! # TLS
//!
//! [`LocalClusterBuilder::tls`] starts a TLS-only cluster (nodes talk TLS to each other
//! too) with certificates generated for it; [`LocalCluster::tls_config`] is the client
//! configuration that trusts them. It needs a `redis-server` built with TLS support
//! (Debian's and Homebrew's are).
//!
//! # Example
//!
//! In a test (`#[tokio::test(flavor = "multi_thread")]` and a `redcluster` dev-dependency
//! with the `testkit` feature):
//!
//! ```no_run
//! use std::time::Duration;
//!
//! use redcluster::testkit::{FailoverMode, LocalCluster};
//! use redcluster::{cmd, key_slot, Value};
//!
//! # async fn demo() -> redcluster::Result<()> {
//! let cluster = LocalCluster::builder()
//!     .masters(3)
//!     .replicas_per_master(1)
//!     .node_timeout(Duration::from_millis(2000))
//!     .config("appendonly", "no")
//!     .start()
//!     .await?;
//!
//! // Hand `cluster.seeds()` to the client under test; talk to single nodes directly.
//! let slot = key_slot(b"user:{42}");
//! let owner = cluster.master_of_slot(slot).await?;
//! let conn = cluster.connect_node(owner).await?;
//! conn.send(cmd("SET").arg("user:{42}").arg("ada")).await?;
//!
//! // Crash the owner and wait until its replica has taken over.
//! cluster.kill(owner)?;
//! cluster.wait_until_stable(Duration::from_secs(20)).await?;
//! let new_owner = cluster.master_of_slot(slot).await?;
//! assert_ne!(new_owner, owner);
//!
//! // Bring the old master back: it rejoins as a replica. Then swap roles again.
//! cluster.restart(owner).await?;
//! cluster.wait_until_stable(Duration::from_secs(20)).await?;
//! cluster.failover(owner, FailoverMode::Graceful).await?;
//!
//! // Move the slot to a new master while keys are half moved, to see ASK redirects.
//! let new_master = cluster.add_master().await?;
//! let migration = cluster.begin_slot_migration(slot, new_master).await?;
//! cluster.migrate_keys_batch(&migration, 10).await?;
//! let reply = cluster
//!     .connect_node(migration.source())
//!     .await?
//!     .send(cmd("GET").arg("user:{42}"))
//!     .await?;
//! assert!(matches!(reply, Value::ServerError(e) if e.code() == "ASK"));
//! cluster.finish_slot_migration(migration).await?;
//! # Ok(()) }
//! ```
//!
//! # Timing
//!
//! Forming a cluster takes about two seconds: a Redis master does not report
//! `cluster_state:ok` until two seconds after it started. The default node timeout is
//! 2 s ([`LocalClusterBuilder::node_timeout`]), so a killed master is failed over within
//! about 3 to 4 s. Every wait polls the real condition every few tens of milliseconds and
//! gives up after a bounded time with an error that names what did not converge and
//! quotes the end of the log of the node concerned ([`LocalCluster::log_tail`] gets the
//! log at any time).
//!
//! If the test process itself is killed (SIGKILL, a CI job's timeout, Ctrl-C), the
//! kernel kills its nodes too: each is started through util-linux's `setpriv
//! --pdeathsig KILL` when it is on the `PATH` (Debian and Ubuntu ship it in an
//! essential package; without it, such nodes are orphaned and go on running until
//! killed by hand). So do, at the process's end, the nodes of a cluster that is never
//! dropped: one kept in a `static` (`OnceLock`, `LazyLock`) to share it between tests
//! (statics are never dropped), or one alive when the process calls
//! `std::process::exit`; its directory stays behind, and without `setpriv` its nodes
//! go on running. Start one per test, or per test binary in a value the test harness
//! drops.
//!
//! The waits keep time with tokio's clock: a test on a paused clock
//! (`#[tokio::test(start_paused = true)]`) would see them time out at once, as paused
//! time jumps ahead while the runtime waits on real sockets. Start clusters on a
//! running clock.
//!
//! # Credentials
//!
//! The testkit logs in to its nodes with the `requirepass` given to
//! [`LocalClusterBuilder::config`] (and sets `masterauth` from it), as the `default`
//! user. A password set only through an ACL rule ([`LocalClusterBuilder::acl_user`]
//! for `default`) is not one it knows: the start fails with the node's refusal.

mod builder;
mod cluster;
mod node;
mod tls;
mod topology;

pub use builder::{LocalClusterBuilder, REDIS_SERVER_ENV};
pub use cluster::{FailoverMode, LocalCluster, NodeInfo, SlotMigration};
pub use tls::TlsAuthClients;

/// Whether a node's process runs.
///
/// ```no_run
/// # async fn demo(cluster: redcluster::testkit::LocalCluster) -> redcluster::Result<()> {
/// use redcluster::testkit::NodeState;
/// cluster.kill(1)?;
/// assert_eq!(cluster.node(1).state, NodeState::Killed);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum NodeState {
    /// The process runs and answers.
    Running,
    /// The process is frozen by [`LocalCluster::pause`] (SIGSTOP).
    Paused,
    /// The process is gone: killed by [`LocalCluster::kill`] or exited by itself.
    /// [`LocalCluster::restart`] brings it back.
    Killed,
    /// The node was taken out of the cluster by [`LocalCluster::remove_node`].
    Removed,
}
