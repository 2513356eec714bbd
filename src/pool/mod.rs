//! Pools of dedicated connections, for commands that hold a connection: blocking
//! commands (`BLPOP`, `XREAD BLOCK`, ...), durable writes with their `WAIT`, and
//! `WATCH` with the `MULTI`/`EXEC` after it. (A plain `transaction()` needs none: its
//! `MULTI` ... `EXEC` is one write on the shared connection, where nothing can come
//! between.)
//!
//! Ordinary commands share the node's multiplexed connections; a command that blocks
//! the connection it runs on would stall everyone else there, so it takes a connection of
//! its own from this pool (a `deadpool` pool per node) and gives it back when done. A
//! connection comes back only if a check proves it is clean: `UNWATCH` then
//! `PING <random token>` must answer the same token; anything else (a reply still
//! pending, a dead socket) drops it.
//!
//! A connect runs on a task of its own, as the multiplexed connections' do: a request
//! whose deadline passes while its connection is being opened gives up waiting, not the
//! connect, whose connection is kept for the next request. Cut with the request, a
//! connect slower than the response timeout (a TLS handshake over a slow link, a slow
//! credentials provider) would never complete, and every blocking command, `WATCH` and
//! durable write to the node would time out.

use std::sync::{Arc, Mutex, PoisonError};

use deadpool::managed::{self, Metrics, RecycleError, RecycleResult};

use crate::cmd::cmd;
use crate::conn::{ConnectOptions, NodeConnection};
use crate::error::Error;
use crate::resp::Value;

/// Most connects a node's pool runs at once, and most connections it keeps whose
/// connect outlived the request that asked. Requests that give up while connecting do
/// not start connects beyond it: to a node slow to accept, each would be another
/// handshake it must serve.
const MAX_CONNECTING: usize = 4;

/// Opens and checks dedicated connections to one node.
#[derive(Debug)]
pub(crate) struct DedicatedManager {
    addr: Arc<str>,
    options: ConnectOptions,
    /// Connections opened for a request that had given up by then, for the next ones.
    parked: Arc<Mutex<Vec<NodeConnection>>>,
    /// One permit per connect running (see [`MAX_CONNECTING`]).
    connecting: Arc<tokio::sync::Semaphore>,
    /// The failure of the last connect whose request had given up by then, until a
    /// request reports it ([`DedicatedManager::take_unreported_failure`]), a lease
    /// succeeds, or a later connect's outcome reaches the request that waits for it.
    unreported: Arc<Mutex<Option<Error>>>,
}

impl DedicatedManager {
    pub(crate) fn new(addr: Arc<str>, options: ConnectOptions) -> Self {
        DedicatedManager {
            addr,
            options,
            parked: Arc::default(),
            connecting: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTING)),
            unreported: Arc::default(),
        }
    }

    /// The failure of a connect that outlived the request that started it, once: with
    /// a node that completes no handshake within the requests' deadlines, each request
    /// gives up waiting for its connect, and the breaker would never hear of the node's
    /// failures (as on the shared path, see `Inner::record_connect_failure`).
    pub(crate) fn take_unreported_failure(&self) -> Option<Error> {
        self.unreported
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Closes the connections kept for later requests, and opens no more: the node left
    /// the topology.
    pub(crate) fn close_parked(&self) {
        // Waiting requests get `ConnectionLost`; a connect running parks nothing.
        self.connecting.close();
        let parked =
            std::mem::take(&mut *self.parked.lock().unwrap_or_else(PoisonError::into_inner));
        for conn in parked {
            conn.close();
        }
    }

    /// Open connections a connect left for the next request: open sockets the pool's
    /// size leaves out.
    pub(crate) fn parked(&self) -> usize {
        let parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        parked.iter().filter(|conn| !conn.is_closed()).count()
    }

    /// A connection a connect left for the next request, if one is still open.
    fn take_parked(&self) -> Option<NodeConnection> {
        let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
        while let Some(conn) = parked.pop() {
            if !conn.is_closed() {
                return Some(conn);
            }
        }
        None
    }
}

impl managed::Manager for DedicatedManager {
    type Type = NodeConnection;
    type Error = Error;

    async fn create(&self) -> Result<NodeConnection, Error> {
        if let Some(conn) = self.take_parked() {
            return Ok(conn);
        }
        let Ok(permit) = Arc::clone(&self.connecting).acquire_owned().await else {
            return Err(Error::ConnectionLost {
                may_have_executed: false,
            });
        };
        // A connect that ended while this one waited may have left its connection.
        if let Some(conn) = self.take_parked() {
            return Ok(conn);
        }
        let (answer, answered) = tokio::sync::oneshot::channel();
        let (addr, options, parked, closing, unreported) = (
            Arc::clone(&self.addr),
            self.options.clone(),
            Arc::clone(&self.parked),
            Arc::clone(&self.connecting),
            Arc::clone(&self.unreported),
        );
        tokio::spawn(async move {
            let _permit = permit;
            let opened = NodeConnection::connect(&addr, &options).await;
            let failure = opened.as_ref().err().cloned();
            let delivered = answer.send(opened);
            *unreported.lock().unwrap_or_else(PoisonError::into_inner) = match delivered {
                // Whoever asked gave up first: the connection waits for the next
                // request, the failure for the next to report it.
                Err(Ok(conn)) => {
                    let mut parked = parked.lock().unwrap_or_else(PoisonError::into_inner);
                    if parked.len() < MAX_CONNECTING && !closing.is_closed() {
                        parked.push(conn);
                    }
                    None
                }
                Err(Err(_)) => failure,
                // The request that asked has it to report.
                Ok(()) => None,
            };
        });
        answered.await.unwrap_or(Err(Error::ConnectionLost {
            may_have_executed: false,
        }))
    }

    async fn recycle(&self, conn: &mut NodeConnection, _: &Metrics) -> RecycleResult<Error> {
        if conn.is_closed() {
            return Err(RecycleError::message("connection closed"));
        }
        let token = format!("redcluster-recycle-{:016x}", fastrand::u64(..));
        let replies = conn
            .send_batch(vec![cmd("UNWATCH"), cmd("PING").arg(token.as_str())])
            .await
            .map_err(RecycleError::Backend)?;
        // An `UNWATCH` refused (an ACL user without `+unwatch`) may leave keys watched
        // for the next user, whose `EXEC` they would abort.
        let unwatched = matches!(replies.first(), Some(Value::Simple(ok)) if ok == "OK");
        match replies.get(1) {
            Some(Value::Bulk(b) | Value::Simple(b)) if unwatched && *b == token.as_bytes() => {
                Ok(())
            }
            _ => {
                conn.close();
                Err(RecycleError::message("connection out of sync; dropped"))
            }
        }
    }
}

/// A node's pool of dedicated connections.
pub(crate) type DedicatedPool = managed::Pool<DedicatedManager>;

/// A dedicated connection checked out of its pool.
pub(crate) type Dedicated = managed::Object<DedicatedManager>;

/// Builds a pool of at most `max_size` connections. Waiting for a connection is bounded
/// by the caller's deadline, not by pool timeouts.
///
/// # Errors
///
/// [`Error::Config`] if deadpool rejects the configuration.
pub(crate) fn dedicated_pool(
    manager: DedicatedManager,
    max_size: usize,
) -> Result<DedicatedPool, Error> {
    managed::Pool::builder(manager)
        .max_size(max_size.max(1))
        .build()
        .map_err(|e| Error::Config(format!("dedicated connection pool: {e}")))
}
