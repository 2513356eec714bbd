//! One node as the client sees it: its address, its multiplexed connections (opened
//! lazily) and its pool of dedicated connections.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use crate::conn::{ConnectOptions, NodeConnection};
use crate::error::{Error, Result};
use crate::pool::{DedicatedManager, DedicatedPool};

/// How each node's connections are set up; the same for every node of a client.
#[derive(Debug, Clone)]
pub(crate) struct NodeSettings {
    pub(crate) options: ConnectOptions,
    /// Multiplexed connections per node, used in turn.
    pub(crate) multiplexed: usize,
    /// Most dedicated connections per node (blocking commands, WATCH).
    pub(crate) dedicated: usize,
}

/// A node of the cluster and its connections.
///
/// A multiplexed connection is opened on first use, by one task at a time (others wait
/// for that attempt instead of opening their own), and reopened on the next use after
/// it died.
pub(crate) struct Node {
    pub(crate) addr: Arc<str>,
    /// Connections used for replica reads carry `READONLY`.
    pub(crate) read_only: bool,
    settings: Arc<NodeSettings>,
    conns: Box<[Slot]>,
    turn: AtomicUsize,
    dedicated: OnceLock<DedicatedPool>,
}

/// One multiplexed connection place.
struct Slot {
    conn: ArcSwapOption<NodeConnection>,
    connecting: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("addr", &self.addr)
            .field("read_only", &self.read_only)
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Node {
    pub(crate) fn new(addr: Arc<str>, read_only: bool, settings: Arc<NodeSettings>) -> Node {
        let conns = (0..settings.multiplexed.max(1))
            .map(|_| Slot {
                conn: ArcSwapOption::empty(),
                connecting: tokio::sync::Mutex::new(()),
            })
            .collect();
        Node {
            addr,
            read_only,
            settings,
            conns,
            turn: AtomicUsize::new(0),
            dedicated: OnceLock::new(),
        }
    }

    /// Whether any live multiplexed connection is open.
    pub(crate) fn is_connected(&self) -> bool {
        self.conns
            .iter()
            .any(|s| s.conn.load().as_ref().is_some_and(|c| !c.is_closed()))
    }

    /// A multiplexed connection, opening it if needed, within `deadline`.
    ///
    /// # Errors
    ///
    /// The connect error ([`Error::Io`], [`Error::Auth`], ...) or [`Error::Timeout`];
    /// none of them means a request was sent.
    pub(crate) async fn connection(&self, deadline: Instant) -> Result<Arc<NodeConnection>> {
        let slot = &self.conns[self.turn.fetch_add(1, Ordering::Relaxed) % self.conns.len()];
        if let Some(conn) = slot.conn.load_full() {
            if !conn.is_closed() {
                return Ok(conn);
            }
        }
        let _single_flight = tokio::time::timeout_at(deadline, slot.connecting.lock())
            .await
            .map_err(|_| Error::Timeout)?;
        // Someone else may have connected while this task waited.
        if let Some(conn) = slot.conn.load_full() {
            if !conn.is_closed() {
                return Ok(conn);
            }
        }
        let options = self.settings.options.clone().read_only(self.read_only);
        let conn =
            match tokio::time::timeout_at(deadline, NodeConnection::connect(&self.addr, &options))
                .await
            {
                Ok(Ok(conn)) => Arc::new(conn),
                Ok(Err(e)) => {
                    tracing::debug!(node = %self.addr, error = %e, "connect failed");
                    return Err(e);
                }
                Err(_) => return Err(Error::Timeout),
            };
        tracing::debug!(node = %self.addr, read_only = self.read_only, "connected");
        slot.conn.store(Some(Arc::clone(&conn)));
        Ok(conn)
    }

    /// This node's pool of dedicated connections, made on first use.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the pool cannot be built.
    pub(crate) fn dedicated_pool(&self) -> Result<&DedicatedPool> {
        if let Some(pool) = self.dedicated.get() {
            return Ok(pool);
        }
        let options = self.settings.options.clone().read_only(self.read_only);
        let pool = crate::pool::dedicated_pool(
            DedicatedManager::new(Arc::clone(&self.addr), options),
            self.settings.dedicated,
        )?;
        // Two tasks may build one at once; the first stored wins, the other is dropped.
        let _ = self.dedicated.set(pool);
        self.dedicated
            .get()
            .ok_or_else(|| Error::Config("dedicated connection pool missing".into()))
    }

    /// Closes every connection: the node left the cluster, or the client is dropped.
    pub(crate) fn close(&self) {
        for slot in self.conns.iter() {
            if let Some(conn) = slot.conn.swap(None) {
                conn.close();
            }
        }
        if let Some(pool) = self.dedicated.get() {
            pool.close();
        }
    }
}
