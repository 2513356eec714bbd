//! One node as the client sees it: its address and its (lazily opened) connection.

use std::sync::Arc;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use crate::conn::{ConnectOptions, NodeConnection};
use crate::error::{Error, Result};

/// A node of the cluster and the multiplexed connection to it.
///
/// The connection is opened on first use, by one task at a time (others wait for that
/// attempt instead of opening their own), and reopened on the next use after it died.
pub(crate) struct Node {
    pub(crate) addr: Arc<str>,
    /// Connections used for replica reads carry `READONLY`.
    pub(crate) read_only: bool,
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
    pub(crate) fn new(addr: Arc<str>, read_only: bool) -> Node {
        Node {
            addr,
            read_only,
            conn: ArcSwapOption::empty(),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    /// Whether a live connection is open.
    pub(crate) fn is_connected(&self) -> bool {
        self.conn.load().as_ref().is_some_and(|c| !c.is_closed())
    }

    /// The open connection, opening one if needed, within `deadline`.
    ///
    /// # Errors
    ///
    /// The connect error ([`Error::Io`], [`Error::Auth`], ...) or [`Error::Timeout`];
    /// none of them means a request was sent.
    pub(crate) async fn connection(
        &self,
        options: &ConnectOptions,
        deadline: Instant,
    ) -> Result<Arc<NodeConnection>> {
        if let Some(conn) = self.conn.load_full() {
            if !conn.is_closed() {
                return Ok(conn);
            }
        }
        let _single_flight = tokio::time::timeout_at(deadline, self.connecting.lock())
            .await
            .map_err(|_| Error::Timeout)?;
        // Someone else may have connected while this task waited.
        if let Some(conn) = self.conn.load_full() {
            if !conn.is_closed() {
                return Ok(conn);
            }
        }
        let options = options.clone().read_only(self.read_only);
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
        self.conn.store(Some(Arc::clone(&conn)));
        Ok(conn)
    }

    /// Closes the connection, if any: the node left the cluster.
    pub(crate) fn close(&self) {
        if let Some(conn) = self.conn.swap(None) {
            conn.close();
        }
    }
}
