//! Requests that need a connection of their own: blocking commands, durable writes
//! (a write and `WAIT`) and `WATCH`.
//!
//! A blocking command (`BLPOP`, `XREAD ... BLOCK`, ...) leases a dedicated
//! connection from its node's pool, so it never stalls the multiplexed connection others
//! share. Its deadline is the response timeout plus the time the command itself asks to
//! block (`BLPOP k 5` may take 5 s more; `BLPOP k 0` blocks until answered or dropped),
//! moved later by the time it waited for the connection ([`Lease::reply_due`]).
//! A lease whose request did not complete cleanly (timeout, error) is closed, never
//! returned to the pool.

use std::sync::Arc;
use std::time::Duration;

use deadpool::managed::{Object, PoolError};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::Instant;

use crate::cluster::execute::{taken_as_reply, Payload, Target};
use crate::cluster::node::{Admitted, Node};
use crate::cluster::refresh::refused_unrun;
use crate::cluster::Inner;
use crate::cmd::{cmd, Cmd};
use crate::conn::{Answer, Cmds};
use crate::error::{Error, Result};
use crate::policy::{classify, ErrorAction};
use crate::pool::Dedicated;
use crate::resp::Value;
use crate::slot::Redirect;
use crate::topology::RefreshTrigger;

/// A dedicated connection checked out for one caller, and its share of
/// `max_connections`.
#[derive(Debug)]
pub(crate) struct Lease {
    conn: Option<Dedicated>,
    /// The node the connection is to.
    node: Arc<Node>,
    _permit: OwnedSemaphorePermit,
    /// A blocking command's share of its node's pool and of `max_connections`.
    _blocking: Option<(OwnedSemaphorePermit, OwnedSemaphorePermit)>,
    /// False from a request's start until its answer arrived: a lease dropped then (its
    /// caller's future was dropped mid-request) has a reply still pending and must not
    /// go back to the pool.
    clean: bool,
    /// How long the caller waited for the connection (a full pool).
    waited: Duration,
}

impl Drop for Lease {
    fn drop(&mut self) {
        if !self.clean {
            self.discard();
        }
    }
}

/// The node a request on dedicated connections went to last, for its metrics and its
/// span: a redirect may take it to another node than the one the map named when it
/// started. Set at every attempt; empty while no node was picked.
#[derive(Debug, Default)]
pub(crate) struct Landing(std::sync::Mutex<Option<Arc<Node>>>);

impl Landing {
    /// Already on `node`: a request on a connection leased before it started.
    pub(crate) fn on(node: &Arc<Node>) -> Landing {
        Landing(std::sync::Mutex::new(Some(Arc::clone(node))))
    }

    /// The request's next attempt goes to `node`; the request's `redis_command` span
    /// (the current one, see [`Inner::observed`]) says so from now on, as it does for
    /// the attempts of other requests.
    pub(crate) fn at(&self, node: &Arc<Node>) {
        let span = tracing::Span::current();
        if span
            .metadata()
            .is_some_and(|m| m.name() == crate::cluster::execute::COMMAND_SPAN)
        {
            span.record("node", &*node.addr);
        }
        *self.slot() = Some(Arc::clone(node));
    }

    /// The node of the last attempt, if there was one.
    pub(crate) fn take(&self) -> Option<Arc<Node>> {
        self.slot().take()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Arc<Node>>> {
        // Nothing panics while holding it; a poisoned cell still holds a valid node.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Lease {
    /// The node the leased connection is to.
    pub(crate) fn node(&self) -> &Arc<Node> {
        &self.node
    }

    /// When the reply of a request sent right after leasing is due: `reply_deadline`,
    /// fixed before the wait for the connection, moved later by that wait. The wait
    /// comes out of the request's time to get a connection, not out of its reply's: a
    /// `BLPOP` leased at the end of its response timeout would otherwise time out a
    /// moment after the server popped for it, and the element would be lost.
    pub(crate) fn reply_due(&self, reply_deadline: Instant) -> Instant {
        crate::deadline::after(reply_deadline, self.waited)
    }

    /// Sends on the leased connection; a failed request discards the connection, and so
    /// does one whose caller drops this future before the answer: the lease may live on
    /// (a [`crate::Watched`]), and a `BLPOP` left blocked on the server would pop an
    /// element that no one reads.
    pub(crate) async fn dispatch(&mut self, cmds: Cmds, deadline: Instant) -> Answer {
        let Some(conn) = self.conn.as_deref() else {
            let error = Error::ConnectionLost {
                may_have_executed: false,
            };
            return Answer::failed(error, cmds);
        };
        self.clean = false;
        let unanswered = CloseUnlessAnswered(Some(conn.clone()));
        let answer = conn.dispatch(cmds, deadline).await;
        unanswered.answered();
        // A request the connection refused to send left its state as it was.
        if !matches!(&answer.result, Err(e) if e.is_node_failure()) {
            self.clean = true;
        } else {
            self.discard();
        }
        answer
    }

    /// Closes the connection instead of returning it to the pool: its state is unknown.
    pub(crate) fn discard(&mut self) {
        if let Some(obj) = self.conn.take() {
            Object::take(obj).close();
        }
    }
}

/// Closes a connection when dropped before [`CloseUnlessAnswered::answered`].
struct CloseUnlessAnswered(Option<crate::NodeConnection>);

impl CloseUnlessAnswered {
    fn answered(mut self) {
        self.0 = None;
    }
}

impl Drop for CloseUnlessAnswered {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            conn.close();
        }
    }
}

/// What a dedicated connection is leased for, in [`Inner::admitted_lease`].
#[derive(Debug, Clone, Copy)]
struct LeaseFor {
    /// A redirect named the node: its open breaker is no reason to fail fast.
    redirected: bool,
    /// A blocking command: it takes its share only ([`blocking_share`]).
    blocking: bool,
}

/// How many of `limit` dedicated connections (a node's pool, or `max_connections`)
/// blocking commands may hold at once: all but one, so that consumers blocked for good
/// (`BLPOP k 0` workers) never leave `WATCH` transactions, durable writes or pipelines
/// without a connection. A limit of one is shared.
pub(crate) fn blocking_share(limit: usize) -> usize {
    limit.saturating_sub(1).max(1)
}

fn pool_error(e: PoolError<Error>) -> Error {
    match e {
        PoolError::Backend(e) => e,
        PoolError::Timeout(_) => Error::Timeout {
            may_have_executed: false,
        },
        PoolError::Closed => Error::ConnectionLost {
            may_have_executed: false,
        },
        other => Error::Config(format!("dedicated connection pool: {other}")),
    }
}

/// When the reply of a blocking `command` sent within `deadline` is due: `deadline`
/// plus the time it asks the server to block (0: until answered), without overflowing
/// the clock (`BLPOP k 1e19`).
pub(crate) fn blocking_reply_deadline(command: &Cmd, deadline: Instant) -> Instant {
    crate::deadline::after(
        deadline,
        block_time(command).unwrap_or(crate::cluster::execute::UNTIL_ANSWERED),
    )
}

/// How long `command` asks the server to block: `Some(d)`, or `None` for "until
/// answered" (a timeout of 0). Commands that do not say block for no extra time.
pub(crate) fn block_time(command: &Cmd) -> Option<Duration> {
    let name = command.name().to_ascii_lowercase();
    let seconds = |arg: Option<&[u8]>| -> Option<Duration> {
        let text = std::str::from_utf8(arg?).ok()?;
        // The server reads timeouts with `strtold`, which takes hexadecimal too
        // (`BLPOP k 0x10` blocks 16 s).
        let s: f64 = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
            Some(hex) => u64::from_str_radix(hex, 16).ok()? as f64,
            None => text.parse().ok()?,
        };
        Duration::try_from_secs_f64(s).ok()
    };
    let millis = |arg: Option<&[u8]>| -> Option<Duration> {
        let ms: u64 = std::str::from_utf8(arg?).ok()?.parse().ok()?;
        Some(Duration::from_millis(ms))
    };
    let last = command.arg_at(command.len().saturating_sub(1));
    let parsed = match name.as_slice() {
        b"blpop" | b"brpop" | b"bzpopmin" | b"bzpopmax" | b"brpoplpush" | b"blmove" => {
            seconds(last)
        }
        b"blmpop" | b"bzmpop" => seconds(command.arg_at(1)),
        b"wait" | b"waitaof" => millis(last),
        b"xread" | b"xreadgroup" => {
            millis(crate::cmd::stream_block_option(command).and_then(|i| command.arg_at(i)))
        }
        _ => return Some(Duration::ZERO),
    };
    match parsed {
        // 0 asks to block until answered.
        Some(d) if d.is_zero() => None,
        Some(d) => Some(d),
        // No or a malformed timeout: the server answers at once (or refuses it).
        None => Some(Duration::ZERO),
    }
}

impl Inner {
    /// Whether the current slot map sends `target` to another node than `node`: after a
    /// refresh saw a failover, a request refused by `node`'s open breaker goes there.
    /// A keyless command goes to another primary only if that one takes requests: with
    /// every primary's breaker open, `pick` names one of them in turn, and the request
    /// would go round them, a backoff and a retry each, until its deadline.
    pub(crate) fn routed_elsewhere(
        &self,
        node: &Arc<Node>,
        target: &Target,
        primary_only: bool,
    ) -> bool {
        self.pick(target, primary_only).is_ok_and(|n| {
            !Arc::ptr_eq(&n, node) && (!matches!(target, Target::AnyPrimary) || n.takes_requests())
        })
    }

    /// Leases a dedicated connection to `node` within `deadline`; for a `blocking`
    /// command, within its share of the limits ([`blocking_share`]).
    pub(crate) async fn lease(
        &self,
        node: &Arc<Node>,
        deadline: Instant,
        blocking: bool,
    ) -> Result<Lease> {
        let asked = Instant::now();
        // One of `limit`'s permits within the deadline; the client closing its
        // semaphores (never while it lives) reads as a lost connection.
        let permit_of = |limit: &Arc<tokio::sync::Semaphore>| {
            let acquire = Arc::clone(limit).acquire_owned();
            async move {
                tokio::time::timeout_at(deadline, acquire)
                    .await
                    .map_err(|_| Error::Timeout {
                        may_have_executed: false,
                    })?
                    .map_err(|_| Error::ConnectionLost {
                        may_have_executed: false,
                    })
            }
        };
        // The node's share and connection first, then the client-wide ones: a request
        // queued for a busy node holds none of those, which requests to other nodes
        // could use meanwhile.
        let at_node = if blocking {
            Some(permit_of(&node.blocking).await?)
        } else {
            None
        };
        let pool = node.dedicated_pool()?;
        let conn =
            tokio::time::timeout_at(deadline, crate::pool::lease_within(deadline, pool.get()))
                .await
                .map_err(|_| Error::Timeout {
                    may_have_executed: false,
                })?
                .map_err(pool_error)?;
        // The node answered (a new connection, or a pooled one that passed its check):
        // an earlier connect's failure no request reported is history, and must not
        // count against the node when a lease times out hours later.
        let _ = pool.manager().take_unreported_failure();
        let blocking = match at_node {
            Some(at_node) => Some((at_node, permit_of(&self.blocking_limit).await?)),
            None => None,
        };
        let permit = permit_of(&self.dedicated_limit).await?;
        Ok(Lease {
            conn: Some(conn),
            node: Arc::clone(node),
            _permit: permit,
            _blocking: blocking,
            clean: true,
            waited: asked.elapsed(),
        })
    }

    /// Sends a blocking command on a dedicated connection, following redirects. Getting
    /// a connection must finish by `lease_deadline` (the request's own timeout: a full
    /// pool is not a reason to wait as long as the command may block); the reply may
    /// take until `deadline` (that timeout plus the time the command blocks), moved
    /// later by the wait for the connection ([`Lease::reply_due`]).
    ///
    /// As on the shared path, a failure before the command was sent (a node that refuses
    /// connections, a connection lost before the write), an open breaker once the slot
    /// is served elsewhere, and a passing refusal (`TRYAGAIN`, `CLUSTERDOWN`,
    /// `LOADING`) are retried with the backoff until `lease_deadline` (moved later by the
    /// time the command was out: a command blocked for long and then redirected gets its
    /// time for a connection again), and ask for a refresh: a failover is followed. A
    /// command that may have run (it may have popped) is never sent again.
    pub(crate) async fn send_blocking(
        &self,
        mut command: Cmd,
        target: Target,
        mut lease_deadline: Instant,
        deadline: Instant,
        landing: &Landing,
    ) -> Result<Value> {
        let started = Instant::now();
        let backoff = self.backoff();
        let mut retries = 0u32;
        let mut redirect: Option<Redirect> = None;
        let mut redirects = 0u32;
        while redirects <= self.config.max_redirects {
            let node = match &redirect {
                Some(r) => self.registry.get(&self.remap(r.addr()), false),
                None => {
                    let picked =
                        self.pick_or_wait(&target, false, &backoff, &mut retries, lease_deadline);
                    match picked.await? {
                        Some(node) => node,
                        None => continue,
                    }
                }
            };
            landing.at(&node);
            let admitted = self
                .admitted_lease(
                    &node,
                    &target,
                    LeaseFor {
                        redirected: redirect.is_some(),
                        blocking: true,
                    },
                    &backoff,
                    &mut retries,
                    lease_deadline,
                )
                .await?;
            let Some((admitted, mut lease)) = admitted else {
                redirect = None;
                continue;
            };
            // The node answered: the lease's connection was just opened or checked with a
            // `PING`. Recorded now, not when the command returns: as the breaker's probe,
            // a `BLPOP k 30` would keep a recovered node failing fast for its block time.
            self.record(&node, None);
            drop(admitted);
            let asking = matches!(redirect, Some(Redirect::Ask { .. }));
            let payload = Payload::One(command);
            let kind = payload.kind();
            // Sent now, it gets its whole time however long the retries and the wait for
            // a connection took: a reply the server sends after popping must not find
            // the request given up (see `Lease::reply_due`).
            let reply_due = crate::deadline::after(deadline, started.elapsed());
            let sent = Instant::now();
            let answer = lease.dispatch(payload.into_cmds(asking), reply_due).await;
            // The time the command was out (blocked, perhaps for minutes, before the
            // node sent it away with `MOVED` or `CLUSTERDOWN`) is not the next
            // attempt's: it gets the request's timeout for a connection again.
            lease_deadline = crate::deadline::after(lease_deadline, sent.elapsed());
            let returned = |cmds: Cmds| match kind.recover(cmds, asking) {
                Some(Payload::One(c)) => Ok(c),
                _ => Err(Error::Protocol("lost command".into())),
            };
            let replies = match answer.result {
                Ok(replies) => replies,
                Err(e) => {
                    lease.discard();
                    if e.may_have_executed()
                        || !e.is_node_failure()
                        || matches!(e, Error::Timeout { .. })
                    {
                        return Err(e);
                    }
                    command = returned(answer.cmds)?;
                    self.signal.request(RefreshTrigger::ConnectionFailure);
                    redirect = None;
                    self.wait_retry(&backoff, &mut retries, lease_deadline, e)
                        .await?;
                    continue;
                }
            };
            // The shared path's reading of the replies: the command's, or a refused
            // `ASKING`'s.
            let (reply, _) = kind.outcome(replies, asking)?;
            let Value::ServerError(e) = &reply else {
                return Ok(reply);
            };
            command = returned(answer.cmds)?;
            // Refused, so the connection is as it was: back to the pool before any
            // backoff, with its permits, for other requests to the node meanwhile.
            drop(lease);
            let action = self.classify_reply(e, &node.addr, std::slice::from_ref(&command));
            match action {
                ErrorAction::Reply => return Ok(reply),
                ErrorAction::Redirect(r) => {
                    self.vet_redirect(&r, &node.addr, lease_deadline)
                        .await
                        .map_err(refused_unrun)?;
                    redirects += 1;
                    self.note_redirect(&r, &node.addr);
                    redirect = Some(r);
                }
                // Refused before it ran: sent again after a backoff while the deadline
                // and the retry budget allow, else the refusal is the reply.
                ErrorAction::ClusterDown | ErrorAction::BackOff => {
                    let cluster_down = matches!(action, ErrorAction::ClusterDown);
                    let again = self.retry_after_refusal(
                        cluster_down,
                        &reply,
                        &backoff,
                        &mut retries,
                        lease_deadline,
                    );
                    if !again.await {
                        return Ok(reply);
                    }
                    redirect = None;
                }
            }
        }
        Err(Error::TooManyRedirects {
            redirects: self.config.max_redirects,
        })
    }

    /// Leases a connection to the primary of `slot` and sends `watch` (`WATCH keys`) on it,
    /// following `MOVED`, within `deadline`. `WATCH` changes no data: it is sent again
    /// after a failure of the node (on the shard's primary after a refresh) and after
    /// a passing refusal (`TRYAGAIN`, `LOADING`, `CLUSTERDOWN`), with the retry backoff.
    /// `ASK` (the slot is migrating) waits too: a transaction needs one owner from
    /// `WATCH` to `EXEC`, and the migration's end answers `MOVED` to the new one.
    pub(crate) async fn watch(
        &self,
        slot: u16,
        watch: Cmd,
        deadline: Instant,
        landing: &Landing,
    ) -> Result<Lease> {
        let backoff = self.backoff();
        let mut retries = 0u32;
        let mut redirects = 0u32;
        let mut moved_to: Option<String> = None;
        let target = Target::Slot { slot, read: None };
        loop {
            let node = match &moved_to {
                Some(addr) => self.registry.get(addr, false),
                None => {
                    let picked = self.pick_or_wait(&target, true, &backoff, &mut retries, deadline);
                    match picked.await? {
                        Some(node) => node,
                        None => continue,
                    }
                }
            };
            landing.at(&node);
            let admitted = self
                .admitted_lease(
                    &node,
                    &target,
                    LeaseFor {
                        redirected: moved_to.is_some(),
                        blocking: false,
                    },
                    &backoff,
                    &mut retries,
                    deadline,
                )
                .await?;
            let Some((admitted, mut lease)) = admitted else {
                moved_to = None;
                continue;
            };
            let answer = lease.dispatch(Cmds::One(watch.clone()), deadline).await;
            self.record_result(&node, &answer.result);
            let reply = match answer.result {
                Ok(r) => r.into_iter().last().unwrap_or(Value::Nil),
                Err(e) => {
                    lease.discard();
                    if !e.is_node_failure() || matches!(e, Error::Timeout { .. }) {
                        return Err(e);
                    }
                    self.signal.request(RefreshTrigger::ConnectionFailure);
                    moved_to = None;
                    self.wait_retry(&backoff, &mut retries, deadline, e).await?;
                    continue;
                }
            };
            let Value::ServerError(e) = &reply else {
                return Ok(lease);
            };
            // `WATCH` refused: nothing is watched. The connection and its permits go
            // back before any backoff (a migration's `ASK` may take seconds), for other
            // requests to the node meanwhile.
            drop((admitted, lease));
            match classify(e, &node.addr) {
                ErrorAction::Redirect(r @ Redirect::Moved { .. }) => {
                    let to = self
                        .vet_redirect(&r, &node.addr, deadline)
                        .await
                        .map_err(refused_unrun)?;
                    // Noted even when not followed, as on the shared path: the next
                    // request goes to the new owner.
                    self.note_redirect(&r, &node.addr);
                    redirects += 1;
                    if redirects > self.config.max_redirects {
                        return Err(Error::TooManyRedirects {
                            redirects: self.config.max_redirects,
                        });
                    }
                    moved_to = Some(to);
                }
                ErrorAction::Redirect(r @ Redirect::Ask { .. }) => {
                    self.note_redirect(&r, &node.addr);
                    moved_to = None;
                    let error = Error::Server(e.clone());
                    self.wait_retry(&backoff, &mut retries, deadline, error)
                        .await?;
                }
                action @ (ErrorAction::ClusterDown | ErrorAction::BackOff) => {
                    let error = super::reply_error(e.clone());
                    if matches!(action, ErrorAction::ClusterDown) {
                        self.signal.request(RefreshTrigger::ClusterDown);
                        if !self.config.retry_on_cluster_down {
                            return Err(error);
                        }
                    }
                    moved_to = None;
                    // The reply, not the typed error, names the retry's reason:
                    // `Error::ClusterDown` also stands for "no route" (`no_route`).
                    let refusal = Error::Server(e.clone());
                    if self
                        .wait_retry(&backoff, &mut retries, deadline, refusal)
                        .await
                        .is_err()
                    {
                        return Err(error);
                    }
                }
                ErrorAction::Reply => return Err(super::reply_error(e.clone())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_times_by_command() {
        let t = |c: Cmd| block_time(&c);
        assert_eq!(
            t(cmd("BLPOP").arg("a").arg("b").arg("2.5")),
            Some(Duration::from_millis(2500))
        );
        assert_eq!(
            t(cmd("BLPOP").arg("a").arg(0)),
            None,
            "0 blocks until answered"
        );
        assert_eq!(
            t(cmd("BLMPOP").arg(1).arg(1).arg("k").arg("LEFT")),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            t(cmd("XREAD")
                .arg("COUNT")
                .arg(1)
                .arg("BLOCK")
                .arg(300)
                .arg("STREAMS")
                .arg("s")
                .arg("$")),
            Some(Duration::from_millis(300))
        );
        // Options in any order, and option values that look like options.
        assert_eq!(
            t(cmd("XREADGROUP")
                .arg("BLOCK")
                .arg(250)
                .arg("GROUP")
                .arg("g")
                .arg("c")
                .arg("STREAMS")
                .arg("s")
                .arg(">")),
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            t(cmd("XREADGROUP")
                .arg("GROUP")
                .arg("block")
                .arg("block")
                .arg("COUNT")
                .arg("block")
                .arg("STREAMS")
                .arg("block")
                .arg(">")),
            Some(Duration::ZERO)
        );
        assert_eq!(
            t(cmd("WAIT").arg(1).arg(100)),
            Some(Duration::from_millis(100))
        );
        assert_eq!(t(cmd("WAIT").arg(1).arg(0)), None);
        assert_eq!(
            t(cmd("XREAD").arg("STREAMS").arg("s").arg("$")),
            Some(Duration::ZERO)
        );
        assert_eq!(t(cmd("BLPOP").arg("a").arg("soon")), Some(Duration::ZERO));
        assert_eq!(
            t(cmd("BLPOP").arg("a").arg("0x10")),
            Some(Duration::from_secs(16))
        );
        assert_eq!(t(cmd("BLPOP").arg("a").arg("0x0")), None);
        assert_eq!(t(cmd("GET").arg("a")), Some(Duration::ZERO));
    }
}

/// How many replicas must acknowledge a write, and how long to wait for them.
///
/// Redis replicates asynchronously: a write acknowledged by the primary alone is lost if
/// the primary fails before passing it on. With `Durability`, the client sends
/// `WAIT replicas timeout` right after the write, on the same dedicated connection (WAIT
/// counts the writes of its own connection), and reports how many replicas acknowledged.
/// It narrows the window, it does not close it: a failover can still promote a replica
/// that had not received the write, if fewer replicas acknowledged than exist.
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// use std::time::Duration;
/// use redcluster::{cmd, Durability, Error};
/// let wait = Durability::new(1, Duration::from_millis(100));
/// match client.query_durable::<()>(cmd("SET").arg("order:{7}").arg("paid"), wait).await {
///     Ok(((), replicas)) => println!("on the primary and {replicas} replica(s)"),
///     Err(Error::NotReplicated { .. }) => println!("on the primary only, so far"),
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Durability {
    /// Replicas that must acknowledge.
    pub replicas: u32,
    /// How long the server waits for them.
    pub timeout: Duration,
}

/// How many replicas acknowledged, from `WAIT`'s reply. A `WAIT` refused (sent to a
/// replica, say), or no reply, is no acknowledgement.
pub(crate) fn replicas_acked(wait_reply: Option<Value>) -> u32 {
    match wait_reply {
        Some(Value::Int(n)) => u32::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

impl Durability {
    /// `replicas` acknowledgements within `timeout`.
    ///
    /// ```
    /// use std::time::Duration;
    /// let durability = redcluster::Durability::new(2, Duration::from_millis(50));
    /// assert_eq!(durability.replicas, 2);
    /// ```
    pub fn new(replicas: u32, timeout: Duration) -> Self {
        Durability { replicas, timeout }
    }

    /// `WAIT`'s timeout argument: the timeout in milliseconds, at least 1 (0 would wait
    /// forever), capped as deadlines are (the server refuses one past `i64::MAX` ms).
    pub(crate) fn wait_millis(&self) -> u64 {
        u64::try_from(self.timeout.min(crate::deadline::FAR).as_millis())
            .unwrap_or(u64::MAX)
            .max(1)
    }
}

impl Inner {
    /// The node `target` routes to (a primary when `primary_only`), or `None` when no
    /// owner is known yet (before a lazy client's discovery, a failed primary's slots
    /// before the promotion), after a wait for the refresh that asks: a retry, within
    /// `deadline`. The rule of every dedicated path, as of the shared one.
    async fn pick_or_wait(
        &self,
        target: &Target,
        primary_only: bool,
        backoff: &crate::policy::Backoff,
        retries: &mut u32,
        deadline: Instant,
    ) -> Result<Option<Arc<Node>>> {
        match self.pick(target, primary_only) {
            Ok(node) => Ok(Some(node)),
            Err(e) => {
                self.wait_retry(backoff, retries, deadline, e).await?;
                Ok(None)
            }
        }
    }

    /// Admits a request to `node` through its breaker and leases one of its dedicated
    /// connections, for `send_blocking`, `watch` and `send_durable`. `Ok(None)` when the
    /// request should try again, after the backoff this waited: the breaker is open but
    /// the slot is served elsewhere now (or a redirect took it here), or the connect
    /// failed for the node's reasons (recorded; a refresh asked for). Nothing was sent
    /// either way.
    ///
    /// # Errors
    ///
    /// [`Error::CircuitOpen`] when the slot's own node fails fast; the lease's error when
    /// it was this request's (its deadline, refused credentials); the last error when
    /// retries or time ran out.
    async fn admitted_lease<'a>(
        &self,
        node: &'a Arc<Node>,
        target: &Target,
        purpose: LeaseFor,
        backoff: &crate::policy::Backoff,
        retries: &mut u32,
        deadline: Instant,
    ) -> Result<Option<(Admitted<'a>, Lease)>> {
        let Some(admitted) = self.admit(node) else {
            // As in `send_loop`: fail fast unless the slot is now served elsewhere.
            let open = Error::CircuitOpen {
                node: node.addr.to_string(),
            };
            if !purpose.redirected && !self.routed_elsewhere(node, target, true) {
                return Err(open);
            }
            self.wait_retry(backoff, retries, deadline, open).await?;
            return Ok(None);
        };
        match self.lease(node, deadline, purpose.blocking).await {
            Ok(lease) => Ok(Some((admitted, lease))),
            Err(e) => {
                self.record_lease_failure(node, &e);
                // Our own deadline, a refusal of ours or of our credentials: another
                // attempt would meet the same. If this was the breaker's probe,
                // `admitted` hands over to the next request.
                if matches!(e, Error::Timeout { .. }) || !e.is_node_failure() {
                    return Err(e);
                }
                self.signal.request(RefreshTrigger::ConnectionFailure);
                self.wait_retry(backoff, retries, deadline, e).await?;
                Ok(None)
            }
        }
    }

    /// Tells `node`'s breaker what a lease that failed with `e` says of the node. A
    /// connect it refused counts against it. Refused credentials are the node
    /// answering, which closes a half-open breaker (as on the shared path: else every
    /// probe is handed over and it never closes). Our own deadline says nothing of it,
    /// but the connect an earlier lease left running may have failed since, with no
    /// request waiting to hear: that failure counts, once (as on the shared path, see
    /// [`Inner::record_connect_failure`]).
    pub(crate) fn record_lease_failure(&self, node: &Node, e: &Error) {
        match e {
            Error::Timeout { .. } => {
                if let Some(failure) = node.unreported_dedicated_failure() {
                    self.record(node, Some(&failure));
                }
            }
            // The node answered the connect with a refusal (see `Node::record`).
            Error::Auth(_) | Error::Tls(_) => self.record(node, Some(e)),
            e if e.is_node_failure() => self.record(node, Some(e)),
            _ => {}
        }
    }

    /// Sends a write and `WAIT` on a dedicated connection to the slot's primary,
    /// following redirects; returns the write's reply and the replicas that acknowledged.
    pub(crate) async fn send_durable(
        &self,
        mut payload: Payload,
        slot: u16,
        durability: Durability,
        deadline: Instant,
        landing: &Landing,
        blocking: bool,
    ) -> Result<(Value, u32)> {
        // The pool wait and the retries fit in the request's timeout; the reply may also
        // take the time WAIT is allowed, and a `blocking` command's the time it asks to
        // block (within its share of the pool, as a blocking command alone).
        let lease_deadline = deadline;
        let reply_base = match &payload {
            Payload::One(command) if blocking => blocking_reply_deadline(command, deadline),
            _ => deadline,
        };
        let deadline = crate::deadline::after(reply_base, durability.timeout);
        let backoff = self.backoff();
        let mut retries = 0u32;
        let mut redirect: Option<Redirect> = None;
        let mut redirects = 0u32;
        let target = Target::Slot { slot, read: None };
        while redirects <= self.config.max_redirects {
            let node = match &redirect {
                Some(r) => self.registry.get(&self.remap(r.addr()), false),
                None => {
                    let picked =
                        self.pick_or_wait(&target, true, &backoff, &mut retries, lease_deadline);
                    match picked.await? {
                        Some(node) => node,
                        None => continue,
                    }
                }
            };
            landing.at(&node);
            let redirected = redirect.is_some();
            let admitted = self
                .admitted_lease(
                    &node,
                    &target,
                    LeaseFor {
                        redirected,
                        blocking,
                    },
                    &backoff,
                    &mut retries,
                    lease_deadline,
                )
                .await?;
            let Some((admitted, mut lease)) = admitted else {
                redirect = None;
                continue;
            };
            let asking = matches!(redirect, Some(Redirect::Ask { .. }));
            let kind = payload.kind();
            let mut cmds = payload.into_cmds(asking).into_vec();
            cmds.push(
                cmd("WAIT")
                    .arg(durability.replicas)
                    .arg(durability.wait_millis()),
            );
            let reply_due = lease.reply_due(deadline);
            let answer = lease.dispatch(Cmds::Many(cmds), reply_due).await;
            self.record_result(&node, &answer.result);
            // The write, back from the connection for a resend (without WAIT and ASKING).
            let recover = |cmds: Cmds| {
                let mut v = cmds.into_vec();
                v.pop();
                kind.recover(Cmds::Many(v), asking)
            };
            let mut replies = match answer.result {
                Ok(replies) => replies.into_vec(),
                Err(e) => {
                    lease.discard();
                    // Only a write that surely did not run is sent again.
                    let unsent = recover(answer.cmds).filter(|_| !e.may_have_executed());
                    let resendable = e.is_node_failure() && !matches!(e, Error::Timeout { .. });
                    let Some(unsent) = unsent.filter(|_| resendable) else {
                        return Err(e);
                    };
                    payload = unsent;
                    self.signal.request(RefreshTrigger::ConnectionFailure);
                    redirect = None;
                    self.wait_retry(&backoff, &mut retries, lease_deadline, e)
                        .await?;
                    continue;
                }
            };
            let acked = replicas_acked(replies.pop());
            // A transaction's reply is EXEC's, or the refusal that aborted it.
            let (reply, refusal) = kind.outcome(replies.into(), asking)?;
            let Some(returned) = recover(answer.cmds) else {
                return Ok((reply, acked));
            };
            let action = match &refusal {
                Some(e) => self.classify_reply(e, &node.addr, returned.cmds()),
                None => ErrorAction::Reply,
            };
            payload = returned;
            // Answered: back to the pool before any backoff, with its permits.
            drop((admitted, lease));
            match action {
                ErrorAction::Reply => return Ok((taken_as_reply(reply), acked)),
                ErrorAction::Redirect(r) => {
                    self.vet_redirect(&r, &node.addr, lease_deadline).await?;
                    redirects += 1;
                    self.note_redirect(&r, &node.addr);
                    redirect = Some(r);
                }
                // TRYAGAIN, CLUSTERDOWN, LOADING, ...: the write did not run; resend it
                // after a backoff while the deadline and the retry budget allow.
                ErrorAction::ClusterDown | ErrorAction::BackOff => {
                    let cluster_down = matches!(action, ErrorAction::ClusterDown);
                    let again = self.retry_after_refusal(
                        cluster_down,
                        &reply,
                        &backoff,
                        &mut retries,
                        lease_deadline,
                    );
                    if !again.await {
                        return Ok((reply, acked));
                    }
                    redirect = None;
                }
            }
        }
        Err(Error::TooManyRedirects {
            redirects: self.config.max_redirects,
        })
    }

    /// After a passing refusal of a request on a dedicated connection, which did not
    /// run (`CLUSTERDOWN` when `cluster_down`, else `TRYAGAIN`, `LOADING`, ...): asks for
    /// a refresh on `CLUSTERDOWN` and waits the backoff. Whether to send it again;
    /// false when `retry_on_cluster_down` is off or retries or time ran out, and then
    /// `reply`, the refusal, is the answer.
    async fn retry_after_refusal(
        &self,
        cluster_down: bool,
        reply: &Value,
        backoff: &crate::policy::Backoff,
        retries: &mut u32,
        deadline: Instant,
    ) -> bool {
        if cluster_down {
            self.signal.request(RefreshTrigger::ClusterDown);
            if !self.config.retry_on_cluster_down {
                return false;
            }
        }
        let Value::ServerError(e) = reply else {
            return false;
        };
        let error = Error::Server(e.clone());
        self.wait_retry(backoff, retries, deadline, error)
            .await
            .is_ok()
    }
}
