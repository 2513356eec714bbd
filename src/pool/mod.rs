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
//! pending, a dead socket) drops it. The check has half the lease's time left: a
//! connection whose flow the network dropped silently answers nothing, and is dropped
//! in time for a new one to serve the request.
//!
//! A connect runs on a task of its own, as the multiplexed connections' do: a request
//! whose deadline passes while its connection is being opened gives up waiting, not the
//! connect, whose connection is kept for the next request, which checks it as a pooled
//! one (within half the connect timeout). Cut with the request, a
//! connect slower than the response timeout (a TLS handshake over a slow link, a slow
//! credentials provider) would never complete, and every blocking command, `WATCH` and
//! durable write to the node would time out.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

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

    /// A connection a connect left for the next request, if one is still open and
    /// passes the check a pooled connection passes: it may have waited long enough for
    /// the network to drop its flow silently, and a request written into it would be
    /// lost as may-have-run. One that fails the check is closed; the caller connects.
    async fn take_parked(&self) -> Option<NodeConnection> {
        loop {
            let conn = {
                let mut parked = self.parked.lock().unwrap_or_else(PoisonError::into_inner);
                parked.pop()?
            };
            if conn.is_closed() {
                continue;
            }
            // As a connect's replacement, half the connect timeout at most: the other
            // half is left for a new connection within the same bound.
            if is_clean(&conn, check_due(self.options.connect_timeout)).await {
                return Some(conn);
            }
            conn.close();
        }
    }
}

/// Whether `conn` is in sync and holds no state of its last user: `UNWATCH` then
/// `PING <random token>` answered `OK` and the token by `deadline`.
async fn is_clean(conn: &NodeConnection, deadline: tokio::time::Instant) -> bool {
    use crate::conn::Cmds;
    if conn.is_closed() {
        return false;
    }
    let token = format!("redcluster-recycle-{:016x}", fastrand::u64(..));
    let check = Cmds::Many(vec![cmd("UNWATCH"), cmd("PING").arg(token.as_str())]);
    let Ok(replies) = conn.dispatch(check, deadline).await.result else {
        return false;
    };
    let replies = replies.into_vec();
    // An `UNWATCH` refused (an ACL user without `+unwatch`) may leave keys watched for
    // the next user, whose `EXEC` they would abort.
    let unwatched = matches!(replies.first(), Some(Value::Simple(ok)) if ok == "OK");
    unwatched
        && matches!(replies.get(1), Some(Value::Bulk(b) | Value::Simple(b)) if *b == token.as_bytes())
}

impl managed::Manager for DedicatedManager {
    type Type = NodeConnection;
    type Error = Error;

    async fn create(&self) -> Result<NodeConnection, Error> {
        if let Some(conn) = self.take_parked().await {
            return Ok(conn);
        }
        let Ok(permit) = Arc::clone(&self.connecting).acquire_owned().await else {
            return Err(Error::ConnectionLost {
                may_have_executed: false,
            });
        };
        // A connect that ended while this one waited may have left its connection.
        if let Some(conn) = self.take_parked().await {
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

    /// Within half the lease's time left ([`check_due`]): a connection whose flow the
    /// network dropped silently answers nothing, and the pool goes on to the next idle
    /// one, or opens another, in the time the other half leaves.
    async fn recycle(&self, conn: &mut NodeConnection, _: &Metrics) -> RecycleResult<Error> {
        if is_clean(conn, check_due(self.options.response_timeout)).await {
            Ok(())
        } else {
            conn.close();
            Err(RecycleError::message(
                "connection closed or out of sync; dropped",
            ))
        }
    }
}

tokio::task_local! {
    /// When the lease being served must have its connection (see [`lease_within`]).
    static LEASE_DUE: tokio::time::Instant;
}

/// Runs `get` (the pool's `get`) with its checks of idle and parked connections bounded
/// by `deadline` (see [`check_due`]): the pool's own recycle timeout is one fixed
/// duration for every idle connection it tries in turn, so two dead ones would use up
/// all the time left.
pub(crate) async fn lease_within<F: std::future::Future>(
    deadline: tokio::time::Instant,
    get: F,
) -> F::Output {
    LEASE_DUE.scope(deadline, get).await
}

/// When a connection's check must be answered: within half the time the lease has
/// left now (each check in turn halves what is left, so a few dead connections leave
/// time for a new one), and within half of `cap`. Not under 10 ms while that much is
/// left: a healthy connection asked to answer faster than a round trip would be closed
/// for nothing.
fn check_due(cap: Duration) -> tokio::time::Instant {
    let now = tokio::time::Instant::now();
    let left = LEASE_DUE
        .try_with(|due| due.saturating_duration_since(now))
        .unwrap_or(cap);
    let floor = left.min(Duration::from_millis(10));
    now + (left / 2).min(cap / 2).max(floor)
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
