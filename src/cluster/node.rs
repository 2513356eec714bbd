//! One node as the client sees it: its address, its multiplexed connections (opened
//! lazily) and its pool of dedicated connections.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use crate::conn::{ConnectOptions, NodeConnection, NodeIds};
use crate::error::{Error, Result};
use crate::policy::{Admission, Backoff, Breaker, BreakerState, CircuitBreakerConfig, Transition};
use crate::pool::{DedicatedManager, DedicatedPool};

/// Backoff between attempts to reconnect to a node that refused or timed out: about
/// 100 ms after the first failure, doubling to at most 5 s, with jitter so that many
/// clients do not come back at the same moment.
const RECONNECT_BACKOFF: Backoff = Backoff {
    base: std::time::Duration::from_millis(100),
    max: std::time::Duration::from_secs(5),
};

/// How long replica reads pass over a replica that refused one (`LOADING` during a full
/// resync, `MASTERDOWN` when cut off from its primary) or could not be reached for one:
/// long enough that a burst of reads does not ask it one by one, short enough that it
/// is asked again soon after it recovers. Each refusal, a health check's included,
/// renews it.
const NOT_SERVING_FOR_MS: u64 = 1000;

/// Milliseconds since the first call, plus one (0 means "never" in
/// [`Node::not_serving_until`]).
fn clock_ms() -> u64 {
    static BASE: OnceLock<std::time::Instant> = OnceLock::new();
    let elapsed = BASE.get_or_init(std::time::Instant::now).elapsed();
    u64::try_from(elapsed.as_millis()).unwrap_or(u64::MAX - 1) + 1
}

/// The longest a node that left the topology keeps its connections open for the
/// requests on them (see [`Node::retire`]).
const RETIRE_GRACE_MAX: std::time::Duration = std::time::Duration::from_secs(30);

/// How each node's connections are set up; the same for every node of a client.
#[derive(Debug)]
pub(crate) struct NodeSettings {
    pub(crate) options: ConnectOptions,
    /// What each remapped node announced, for TLS's name check.
    pub(crate) announced: Announced,
    /// Who should answer at each address, checked by every connection's handshake.
    pub(crate) node_ids: Arc<NodeIds>,
    /// Multiplexed connections per node, used in turn.
    pub(crate) multiplexed: usize,
    /// Most dedicated connections per node (blocking commands, WATCH).
    pub(crate) dedicated: usize,
    pub(crate) breaker: CircuitBreakerConfig,
    /// The client's request timeout: how long a half-open breaker's probe may take.
    pub(crate) probe_timeout: std::time::Duration,
}

/// The addresses nodes announced, by the address the client reaches each at, for the
/// nodes an [`AddressRemap`](crate::AddressRemap) moved; kept only with TLS on, where a
/// connection asks for the announced name (see [`crate::TlsConfig`]).
#[derive(Debug, Default)]
pub(crate) struct Announced(Mutex<HashMap<Arc<str>, Arc<str>>>);

impl Announced {
    /// Notes that the node announced as `announced` is reached at `reached`. A topology
    /// reply or a seed (`authoritative`) has the last word; a redirect's target, whose
    /// text any error reply could carry (a script's included), only fills a gap.
    pub(crate) fn note(&self, reached: &str, announced: &str, authoritative: bool) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let noted = map.get(reached);
        if noted.is_none() || (authoritative && noted.is_some_and(|a| **a != *announced)) {
            map.insert(Arc::from(reached), Arc::from(announced));
        }
    }

    /// Forgets what was noted for `reached`.
    pub(crate) fn forget(&self, reached: &str) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.is_empty() {
            map.remove(reached);
        }
    }

    /// Forgets the nodes outside `members` (a new topology's), so the table stays the
    /// size of the cluster.
    pub(crate) fn retain(&self, members: &std::collections::HashSet<Arc<str>>) {
        let mut map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if !map.is_empty() {
            map.retain(|reached, _| members.contains(reached));
        }
    }

    /// What the node reached at `reached` announced, if a remap moved it.
    pub(crate) fn of(&self, reached: &str) -> Option<Arc<str>> {
        let map = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        map.get(reached).cloned()
    }
}

impl NodeSettings {
    /// One multiplexed and one dedicated connection per node, defaults otherwise.
    #[cfg(test)]
    pub(crate) fn for_tests() -> NodeSettings {
        NodeSettings {
            options: ConnectOptions::default(),
            announced: Announced::default(),
            node_ids: Arc::default(),
            multiplexed: 1,
            dedicated: 1,
            breaker: CircuitBreakerConfig::default(),
            probe_timeout: std::time::Duration::from_secs(5),
        }
    }

    /// The options of a connection to the node reached at `addr`.
    pub(crate) fn options_for(&self, addr: &str, read_only: bool) -> ConnectOptions {
        let mut options = self.options.clone().read_only(read_only);
        if options.tls.is_some() {
            options.announced = self.announced.of(addr);
        }
        options.node_ids = Some(Arc::clone(&self.node_ids));
        options
    }
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
    /// Dedicated connections blocking commands may hold at once: all of the pool but
    /// one ([`crate::cluster::dedicated::blocking_share`]).
    pub(crate) blocking: Arc<tokio::sync::Semaphore>,
    /// True while the breaker is closed with no recent failure: then requests neither
    /// check nor update it, and take no lock.
    quiet: AtomicBool,
    breaker: Mutex<Breaker>,
    reconnect: Mutex<Reconnect>,
    /// Set by a failed connect attempt, taken by the first request that reports it to
    /// the breaker: see [`Node::first_to_report_connect_failure`].
    connect_failure_unreported: AtomicBool,
    /// The node's last failure and when, for health reports; kept after it recovers.
    last_failure: Mutex<Option<(String, std::time::SystemTime)>>,
    /// Smoothed PING latency in microseconds, from health checks; 0 until measured.
    latency_us: AtomicU64,
    /// Until when (by [`clock_ms`]) replica reads pass this node over: it refused one
    /// (see [`NOT_SERVING_FOR_MS`]). 0: never did.
    not_serving_until: AtomicU64,
    /// Per-command metric handles for this node.
    pub(crate) metrics: crate::observe::metrics::NodeMetrics,
    /// Set by [`Node::close`]: no connect attempt starts after it, and one that ends
    /// after it closes its connection instead of keeping it.
    closed: AtomicBool,
    /// Left the topology: its connections serve the requests on them until it is
    /// closed ([`Node::retire`]), and no new one is opened.
    retiring: AtomicBool,
}

/// A request the node's breaker let through ([`Node::admit`]), held until its outcome is
/// recorded. A half-open breaker's probe that ends with nothing said about the node
/// (refused before it was sent, a TLS certificate that does not verify, its own
/// deadline run out while it waited with no earlier connect failure left to report,
/// another request's report of the same failure, or its caller dropping it part way)
/// records nothing; dropped, this frees the breaker
/// for the next probe, which would otherwise wait out the probe timeout (up to 10 s)
/// while every request to the node failed fast. The one way a probe is freed: a probe
/// whose outcome was recorded, or that timed out and was replaced, is left alone.
#[must_use = "a probe dropped at once frees the breaker before its outcome is known"]
pub(crate) struct Admitted<'a> {
    node: &'a Node,
    /// When the breaker let this probe through; `None` for an ordinary request.
    probe: Option<std::time::Instant>,
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(started) = self.probe {
            self.node.release_probe_of(started);
        }
    }
}

/// Failed connection attempts in a row, and when the next may start.
#[derive(Debug, Default)]
struct Reconnect {
    failures: u32,
    not_before: Option<std::time::Instant>,
    last_error: Option<Error>,
    /// The breaker let a probe through: its connect attempt is the probe, so it does not
    /// wait out the backoff. (Answered from the backoff with the last error, the probe
    /// would say nothing of the node, and every request after `open_for` would be let
    /// through as a new probe, to fail slowly through its retries.)
    probe_may_connect: bool,
}

/// One multiplexed connection place.
struct Slot {
    conn: ArcSwapOption<NodeConnection>,
    /// Held by the task opening the connection: one attempt at a time.
    connecting: Arc<tokio::sync::Mutex<()>>,
}

/// Locks a mutex whose data stays consistent even if a holder panicked (every change is
/// a single assignment or a state-machine call that cannot panic).
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
                connecting: Arc::new(tokio::sync::Mutex::new(())),
            })
            .collect();
        Node {
            metrics: crate::observe::metrics::NodeMetrics::new(Arc::clone(&addr)),
            addr,
            read_only,
            conns,
            turn: AtomicUsize::new(0),
            dedicated: OnceLock::new(),
            blocking: Arc::new(tokio::sync::Semaphore::new(
                crate::cluster::dedicated::blocking_share(settings.dedicated),
            )),
            quiet: AtomicBool::new(true),
            breaker: Mutex::new(Breaker::new(settings.breaker, settings.probe_timeout)),
            reconnect: Mutex::new(Reconnect::default()),
            connect_failure_unreported: AtomicBool::new(false),
            last_failure: Mutex::new(None),
            latency_us: AtomicU64::new(0),
            not_serving_until: AtomicU64::new(0),
            settings,
            closed: AtomicBool::new(false),
            retiring: AtomicBool::new(false),
        }
    }

    /// Asks the breaker whether a request may go to this node now: `None` when not.
    /// The request holds what it gets until its outcome is recorded.
    pub(crate) fn admit(&self) -> (Option<Admitted<'_>>, Option<Transition>) {
        if self.quiet.load(Ordering::Acquire) {
            return (
                Some(Admitted {
                    node: self,
                    probe: None,
                }),
                None,
            );
        }
        let now = std::time::Instant::now();
        let (admission, transition) = lock(&self.breaker).allow(now);
        if let Some(t) = transition {
            crate::observe::events::breaker_transition(&self.addr, self.read_only, t);
        }
        let probe = match admission {
            Admission::Rejected => return (None, transition),
            Admission::Allowed => None,
            Admission::Probe => {
                lock(&self.reconnect).probe_may_connect = true;
                Some(now)
            }
        };
        (Some(Admitted { node: self, probe }), transition)
    }

    /// Reports a request's outcome: `None` when the node answered (error replies
    /// included), the error when the connection failed or the request timed out.
    ///
    /// An error that is no sign of the node's health (a TLS certificate that does not
    /// verify, a refused configuration) is kept as the node's last failure for health
    /// reports, but left out of its breaker: an open breaker would answer `CircuitOpen`,
    /// hiding the cause, and retrying would not change it.
    ///
    /// A connect the node refused for good counts as the node answering, as good as a
    /// reply: refused credentials ([`Error::Auth`]: the node's refusal, or a credentials
    /// provider's failure once the node accepted the connection), a TLS handshake that
    /// failed ([`Error::Tls`]: a certificate not trusted, a plaintext port). Left out, a
    /// probe that met one freed the half-open breaker for the next probe, which met it
    /// too: the breaker never closed, requests meanwhile got `CircuitOpen` (hiding the
    /// cause), and each probe connected at once, past the reconnect backoff. (Not an
    /// [`Error::Config`]: some are the client's own, a TLS setup or a pool that failed
    /// before any connect, and say nothing of the node.)
    pub(crate) fn record(&self, failure: Option<&Error>) -> Option<Transition> {
        if failure.is_none() && self.quiet.load(Ordering::Acquire) {
            return None;
        }
        if let Some(e) = failure {
            self.note_failure(e);
            if matches!(e, Error::Auth(_) | Error::Tls(_)) {
                return self.record(None);
            }
            if !e.is_node_failure() {
                // Nothing said of the node: a probe's `Admitted` frees the breaker.
                return None;
            }
        }
        let mut breaker = lock(&self.breaker);
        let now = std::time::Instant::now();
        let transition = if failure.is_none() {
            breaker.on_success(now)
        } else {
            self.quiet.store(false, Ordering::Release);
            breaker.on_failure(now)
        };
        if breaker.is_quiet() {
            self.quiet.store(true, Ordering::Release);
        }
        drop(breaker);
        if let Some(t) = transition {
            crate::observe::events::breaker_transition(&self.addr, self.read_only, t);
        }
        // The probe's outcome is in (or another request's): the next connect waits out
        // the backoff again.
        lock(&self.reconnect).probe_may_connect = false;
        transition
    }

    /// Forgets the failures the node at this address had: another node answers there
    /// now (a replacement the last topology names, see [`NodeIds`]), and what the one
    /// refused before did says nothing of it. Without this, requests to it would fail at
    /// once for the rest of a reconnect backoff (up to 5 s) and an open breaker.
    pub(crate) fn forget_failures(&self) {
        *lock(&self.reconnect) = Reconnect::default();
        self.connect_failure_unreported
            .store(false, Ordering::Release);
        let mut breaker = lock(&self.breaker);
        let was_closed = breaker.state() == BreakerState::Closed;
        *breaker = Breaker::new(self.settings.breaker, self.settings.probe_timeout);
        self.quiet.store(true, Ordering::Release);
        drop(breaker);
        if !was_closed {
            crate::observe::events::breaker_transition(
                &self.addr,
                self.read_only,
                Transition::Closed,
            );
        }
    }

    /// Folds a PING round trip into the smoothed latency (70 % old, 30 % new).
    pub(crate) fn observe_latency(&self, sample: std::time::Duration) {
        let sample = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX).max(1);
        let old = self.latency_us.load(Ordering::Relaxed);
        let new = if old == 0 {
            sample
        } else {
            (old * 7 + sample * 3) / 10
        };
        self.latency_us.store(new.max(1), Ordering::Relaxed);
    }

    /// Forgets the smoothed latency: the last health check got no answer. A node that
    /// stopped answering kept its last good figure, and `LowestLatency` kept choosing
    /// it until its breaker opened.
    pub(crate) fn forget_latency(&self) {
        self.latency_us.store(0, Ordering::Relaxed);
    }

    /// Notes that this replica refused a read (`LOADING`, `MASTERDOWN`) or could not be
    /// reached for one: replica reads pass it over for a while.
    pub(crate) fn pass_over_for_reads(&self) {
        self.not_serving_until
            .store(clock_ms() + NOT_SERVING_FOR_MS, Ordering::Relaxed);
    }

    /// Whether replica reads may pick this node: it has not refused one lately, and its
    /// breaker would let a request through (a replica whose breaker is open is passed
    /// over for the shard's others, not just for the primary; once `open_for` has
    /// passed it is picked again, and probed).
    pub(crate) fn serves_reads(&self) -> bool {
        let until = self.not_serving_until.load(Ordering::Relaxed);
        (until == 0 || clock_ms() >= until) && self.takes_requests()
    }

    /// Whether the breaker would let a request through now (without taking a probe).
    pub(crate) fn takes_requests(&self) -> bool {
        self.is_quiet() || !lock(&self.breaker).rejects_at(std::time::Instant::now())
    }

    /// The smoothed PING latency, once measured.
    pub(crate) fn latency(&self) -> Option<std::time::Duration> {
        match self.latency_us.load(Ordering::Relaxed) {
            0 => None,
            us => Some(std::time::Duration::from_micros(us)),
        }
    }

    /// Remembers `error` as the node's last failure.
    fn note_failure(&self, error: &Error) {
        *lock(&self.last_failure) = Some((error.to_string(), std::time::SystemTime::now()));
    }

    /// The node's last failure and when it happened, for health reports.
    pub(crate) fn last_failure(&self) -> Option<(String, std::time::SystemTime)> {
        lock(&self.last_failure).clone()
    }

    /// The breaker's state, for health reports.
    pub(crate) fn breaker_state(&self) -> BreakerState {
        lock(&self.breaker).state()
    }

    /// Whether any live multiplexed connection is open.
    pub(crate) fn is_connected(&self) -> bool {
        self.conns
            .iter()
            .any(|s| s.conn.load().as_ref().is_some_and(|c| !c.is_closed()))
    }

    /// Open multiplexed connections, and dedicated connections (in the pool, idle or in
    /// use, or parked by a connect that outlived its request), for metrics and
    /// `health()`. Idle pooled connections found closed (their node went, or closed
    /// them) are dropped from the pool on the way: counted, they would show a node gone
    /// for good as connected until a lease came to check them.
    pub(crate) fn open_connections(&self) -> (usize, usize) {
        let multiplexed = self
            .conns
            .iter()
            .filter(|s| s.conn.load().as_ref().is_some_and(|c| !c.is_closed()))
            .count();
        let dedicated = self.dedicated.get().map_or(0, |p| {
            p.retain(|conn, _| !conn.is_closed());
            p.status().size + p.manager().parked()
        });
        (multiplexed, dedicated)
    }

    /// A multiplexed connection, opening it if needed, within `deadline`.
    ///
    /// # Errors
    ///
    /// The connect error ([`Error::Io`], [`Error::Auth`], ...) or [`Error::Timeout`];
    /// none of them means a request was sent.
    pub(crate) async fn connection(
        self: &Arc<Self>,
        deadline: Instant,
    ) -> Result<Arc<NodeConnection>> {
        if let Some(conn) = self.connected() {
            return Ok(conn);
        }
        let slot = self.next_slot();
        // Boxed: it would otherwise sit in every request's future, though nearly every
        // request finds its connection open.
        Box::pin(self.open(slot, deadline)).await
    }

    /// The next multiplexed connection, in turn, if it is open; `None` when it must be
    /// (re)opened first, which [`Node::connection`] does.
    pub(crate) fn connected(&self) -> Option<Arc<NodeConnection>> {
        let open = |slot: &Slot| slot.conn.load_full().filter(|conn| !conn.is_closed());
        match &*self.conns {
            [only] => open(only),
            all => {
                // The turn is taken only when used: otherwise `connection` opens this
                // very place, and every place gets its turn to be opened.
                let turn = self.turn.load(Ordering::Relaxed);
                let conn = open(&all[turn % all.len()])?;
                self.turn.fetch_add(1, Ordering::Relaxed);
                Some(conn)
            }
        }
    }

    /// The connection place (its index) for the next request. With one per node (the
    /// default) no turn is taken: a counter every request bumps would bounce between
    /// cores.
    fn next_slot(&self) -> usize {
        match self.conns.len() {
            1 => 0,
            n => self.turn.fetch_add(1, Ordering::Relaxed) % n,
        }
    }

    /// Whether the breaker is closed with no recent failure: a request needs no
    /// admission check then.
    pub(crate) fn is_quiet(&self) -> bool {
        self.quiet.load(Ordering::Acquire)
    }

    /// Opens the connection of slot `index`, or waits for the task already opening it.
    ///
    /// The attempt runs on a task of its own, bounded by `connect_timeout`: a request
    /// whose deadline comes first gives up waiting, not the attempt, whose connection
    /// then serves the next request. Cut with the request, a connect slower than the
    /// response timeout (a TLS handshake over a slow link) would never complete.
    async fn open(
        self: &Arc<Self>,
        index: usize,
        deadline: Instant,
    ) -> Result<Arc<NodeConnection>> {
        if self.left_the_topology() {
            // Gone from the topology: whoever still holds it must not reconnect.
            return Err(Error::ConnectionLost {
                may_have_executed: false,
            });
        }
        let slot = &self.conns[index];
        let single_flight =
            tokio::time::timeout_at(deadline, Arc::clone(&slot.connecting).lock_owned())
                .await
                .map_err(|_| Error::Timeout {
                    may_have_executed: false,
                })?;
        // Someone else may have connected while this task waited.
        let previous = slot.conn.load_full();
        if let Some(conn) = &previous {
            if !conn.is_closed() {
                return Ok(Arc::clone(conn));
            }
        }
        // A slot that held a connection is reconnecting (for the logs).
        let reconnecting = previous.is_some();
        drop(previous);
        // After failed attempts, wait out the backoff: fail at once with the last error
        // (nothing was sent) instead of hammering a node that is down.
        {
            let mut reconnect = lock(&self.reconnect);
            // Unless the last attempt's failure is still unreported (it outlived the
            // request that started it): the probe reports that one, and the breaker
            // opens again, rather than wait out another attempt.
            let probing = std::mem::take(&mut reconnect.probe_may_connect)
                && !self.connect_failure_unreported.load(Ordering::Acquire);
            if let Some(not_before) = reconnect.not_before.filter(|_| !probing) {
                if std::time::Instant::now() < not_before {
                    return Err(reconnect
                        .last_error
                        .clone()
                        .unwrap_or(Error::ConnectionLost {
                            may_have_executed: false,
                        }));
                }
            }
        }
        let node = Arc::clone(self);
        let attempt = tokio::spawn(async move {
            let _single_flight = single_flight;
            node.connect(index, reconnecting).await
        });
        match tokio::time::timeout_at(deadline, attempt).await {
            Ok(Ok(result)) => result,
            // The attempt panicked (or the runtime is shutting down): a failure like any.
            Ok(Err(_)) => {
                let lost = Error::ConnectionLost {
                    may_have_executed: false,
                };
                self.connect_failed(&lost, reconnecting);
                Err(lost)
            }
            // The caller's deadline ran out, not the node: no failure.
            Err(_) => Err(Error::Timeout {
                may_have_executed: false,
            }),
        }
    }

    /// One attempt at opening the connection of slot `index`, whose single-flight lock
    /// the caller holds; records the outcome (reconnect backoff, breaker, logs).
    async fn connect(&self, index: usize, reconnecting: bool) -> Result<Arc<NodeConnection>> {
        let options = self.settings.options_for(&self.addr, self.read_only);
        let conn = match NodeConnection::connect(&self.addr, &options).await {
            Ok(conn) => Arc::new(conn),
            Err(e) => {
                self.connect_failed(&e, reconnecting);
                return Err(e);
            }
        };
        let slot = &self.conns[index];
        slot.conn.store(Some(Arc::clone(&conn)));
        // Closed while connecting (the node left the topology, the client was dropped)?
        // `close` raises the flag before it takes the connections: either it took this
        // one, or the flag shows here.
        if self.closed.load(Ordering::Acquire) {
            if let Some(stored) = slot.conn.swap(None) {
                stored.close();
            }
            return Err(Error::ConnectionLost {
                may_have_executed: false,
            });
        }
        *lock(&self.reconnect) = Reconnect::default();
        // A failure no request reported (its waiters gave up first) is history now.
        self.connect_failure_unreported
            .store(false, Ordering::Release);
        tracing::debug!(
            node = %self.addr,
            read_only = self.read_only,
            reconnect = reconnecting,
            "connected"
        );
        Ok(conn)
    }

    /// Records a failed connect: the reconnect backoff, the breaker, the logs.
    fn connect_failed(&self, e: &Error, reconnecting: bool) {
        let mut reconnect = lock(&self.reconnect);
        let delay = RECONNECT_BACKOFF.delay(reconnect.failures, fastrand::f64());
        reconnect.failures = reconnect.failures.saturating_add(1);
        reconnect.not_before = Some(std::time::Instant::now() + delay);
        reconnect.last_error = Some(e.clone());
        let failures = reconnect.failures;
        drop(reconnect);
        self.connect_failure_unreported
            .store(true, Ordering::Release);
        self.note_failure(e);
        tracing::debug!(
            node = %self.addr,
            read_only = self.read_only,
            reconnect = reconnecting,
            failures,
            error = %e,
            retry_in = ?delay,
            "connect failed"
        );
    }

    /// Whether the caller is the first to report the last failed connect attempt. Every
    /// request that waited on an attempt gets its error, and so does every request
    /// during the reconnect backoff that follows (nothing is tried then), but the node
    /// failed once: only the first report reaches the breaker, as a lost shared
    /// connection counts once.
    pub(crate) fn first_to_report_connect_failure(&self) -> bool {
        self.connect_failure_unreported
            .swap(false, Ordering::AcqRel)
    }

    /// The error of the last failed connect attempt, while its reconnect backoff is on
    /// record (until a connect succeeds).
    pub(crate) fn last_connect_error(&self) -> Option<Error> {
        lock(&self.reconnect).last_error.clone()
    }

    /// The failure of a dedicated connect that outlived the request that started it,
    /// once (see [`crate::pool::DedicatedManager::take_unreported_failure`]).
    pub(crate) fn unreported_dedicated_failure(&self) -> Option<Error> {
        self.dedicated.get()?.manager().take_unreported_failure()
    }

    /// This node's pool of dedicated connections, made on first use.
    ///
    /// # Errors
    ///
    /// [`Error::Config`] if the pool cannot be built.
    pub(crate) fn dedicated_pool(&self) -> Result<&DedicatedPool> {
        let gone = || Error::ConnectionLost {
            may_have_executed: false,
        };
        if self.left_the_topology() {
            // Gone from the topology: whoever still holds it must not connect to it.
            return Err(gone());
        }
        if let Some(pool) = self.dedicated.get() {
            return Ok(pool);
        }
        let options = self.settings.options_for(&self.addr, self.read_only);
        let pool = crate::pool::dedicated_pool(
            DedicatedManager::new(Arc::clone(&self.addr), options),
            self.settings.dedicated,
        )?;
        // Two tasks may build one at once; the first stored wins, the other is dropped.
        let _ = self.dedicated.set(pool);
        let pool = self
            .dedicated
            .get()
            .ok_or_else(|| Error::Config("dedicated connection pool missing".into()))?;
        // Closed while building it? `close` raises the flag before it looks for the
        // pool: either it closed this one, or the flag shows here.
        std::sync::atomic::fence(Ordering::SeqCst);
        if self.closed.load(Ordering::Acquire) {
            pool.close();
            pool.manager().close_parked();
            return Err(gone());
        }
        Ok(pool)
    }

    /// Lets the next request probe a half-open breaker: the probe let through at
    /// `started` ended with nothing to say about the node (see [`Admitted`]).
    fn release_probe_of(&self, started: std::time::Instant) {
        if lock(&self.breaker).release_probe_of(started) {
            // A probe that reached no connect attempt: nobody else may skip the backoff.
            lock(&self.reconnect).probe_may_connect = false;
        }
    }

    /// Whether [`Node::close`] ran: the node opens no connection any more.
    #[cfg(test)]
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Whether the node left the topology (retired or closed): no new connection to it.
    fn left_the_topology(&self) -> bool {
        self.closed.load(Ordering::Acquire) || self.retiring.load(Ordering::Acquire)
    }

    /// Closes every connection once the requests on them had their time: the node left
    /// the topology (flagged failed, removed, or missing from a view for a moment), and
    /// requests written before may still be answered (a primary the cluster flags failed
    /// in a partition that still answers this client; a stalled replica). Closed at once,
    /// they failed as may-have-run. No request is routed here meanwhile: the handle is
    /// out of the registry. At once outside a runtime.
    pub(crate) fn retire(self: Arc<Self>) {
        self.retiring.store(true, Ordering::Release);
        // The requests' deadline, as the client's response timeout gives it (a handle
        // with a longer one, or a blocking command, is cut at this).
        let grace = self.settings.probe_timeout.min(RETIRE_GRACE_MAX);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    tokio::time::sleep(grace).await;
                    self.close();
                });
            }
            Err(_) => self.close(),
        }
    }

    /// Closes every connection: the node left the cluster, or the client is dropped.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Paired with the fence in `dedicated_pool`: a pool stored before this is seen
        // below, or that function sees the flag.
        std::sync::atomic::fence(Ordering::SeqCst);
        for slot in self.conns.iter() {
            if let Some(conn) = slot.conn.swap(None) {
                conn.close();
            }
        }
        if let Some(pool) = self.dedicated.get() {
            pool.close();
            pool.manager().close_parked();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_node_refusing_the_login_closes_its_half_open_breaker() {
        let mut options = ConnectOptions::default().password("pw");
        probes_meeting_a_refusal_close_the_breaker(&mut options, |e| matches!(e, Error::Auth(_)))
            .await;
    }

    #[tokio::test]
    async fn a_node_failing_the_tls_handshake_closes_its_half_open_breaker() {
        // Back with a port that does not speak TLS (or a certificate not trusted).
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::default();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = params.self_signed(&key).unwrap().pem();
        let tls = crate::TlsConfig::new().ca_cert_pem(ca).unwrap();
        let mut options = ConnectOptions::default().tls(tls);
        probes_meeting_a_refusal_close_the_breaker(&mut options, |e| matches!(e, Error::Tls(_)))
            .await;
    }

    /// Opens the breaker of a node whose every connection is refused (each read answered
    /// `-WRONGPASS`), then sends 20 probes: they close it, and connect under the
    /// reconnect backoff.
    async fn probes_meeting_a_refusal_close_the_breaker(
        options: &mut ConnectOptions,
        expected: impl Fn(&Error) -> bool,
    ) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        // A node back after an outage, now refusing the client's login.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    while matches!(socket.read(&mut buf).await, Ok(n) if n > 0) {
                        let refusal = b"-WRONGPASS invalid username-password pair\r\n";
                        if socket.write_all(refusal).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        let mut settings = NodeSettings::for_tests();
        settings.options = std::mem::take(options);
        settings.breaker = CircuitBreakerConfig::default()
            .consecutive_failures(1)
            .open_for(std::time::Duration::from_millis(10));
        let node = Arc::new(Node::new(Arc::from(addr), false, Arc::new(settings)));
        node.record(Some(&Error::Timeout {
            may_have_executed: true,
        }));
        assert_eq!(lock(&node.breaker).state(), BreakerState::Open);
        // Past `open_for` (a timer, not a hand-over): the next request is the probe.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        for _ in 0..20 {
            let (Some(admitted), _) = node.admit() else {
                panic!("a request turned away: {:?}", lock(&node.breaker).state());
            };
            let deadline = Instant::now() + std::time::Duration::from_secs(2);
            let Err(e) = node.connection(deadline).await else {
                panic!("connected");
            };
            assert!(expected(&e), "{e:?}");
            if node.first_to_report_connect_failure() {
                node.record(Some(&e));
            }
            drop(admitted);
        }
        assert_eq!(lock(&node.breaker).state(), BreakerState::Closed);
        // The reconnect backoff holds: not a connect per request.
        assert!(accepted.load(Ordering::SeqCst) <= 2, "{accepted:?}");
    }

    #[tokio::test]
    async fn a_retired_node_opens_no_new_connection() {
        // Its open connections serve the requests on them until it closes; a request
        // holding an older snapshot must not open another to a node that left.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let node = Arc::new(Node::new(
            Arc::from(addr),
            false,
            Arc::new(NodeSettings::for_tests()),
        ));
        Arc::clone(&node).retire();
        assert!(!node.is_closed(), "closed only after the grace");
        let deadline = Instant::now() + std::time::Duration::from_secs(2);
        let refused = node.connection(deadline).await.map(|_| ()).unwrap_err();
        assert!(
            matches!(
                refused,
                Error::ConnectionLost {
                    may_have_executed: false
                }
            ),
            "{refused:?}"
        );
        assert!(node.dedicated_pool().is_err());
        let accepted =
            tokio::time::timeout(std::time::Duration::from_millis(100), listener.accept()).await;
        assert!(accepted.is_err(), "a connection was opened");
    }

    #[tokio::test]
    async fn a_closed_node_builds_no_dedicated_pool() {
        // A request that picked the node before a refresh dropped it (a WATCH, a
        // blocking command) must not open a dedicated connection to it afterwards.
        let node = Node::new(
            Arc::from("127.0.0.1:1"),
            false,
            Arc::new(NodeSettings::for_tests()),
        );
        node.close();
        assert!(matches!(
            node.dedicated_pool(),
            Err(Error::ConnectionLost {
                may_have_executed: false
            })
        ));
        assert!(node.dedicated.get().is_none());
        // Built before the close: closed with the node.
        let node = Node::new(
            Arc::from("127.0.0.1:1"),
            false,
            Arc::new(NodeSettings::for_tests()),
        );
        assert!(node.dedicated_pool().is_ok());
        node.close();
        assert!(node.dedicated.get().is_some_and(|pool| pool.is_closed()));
        assert!(node.dedicated_pool().is_err());
    }

    #[test]
    fn a_redirect_fills_a_gap_in_the_announced_names_but_never_overrides_the_topology() {
        let names = Announced::default();
        let of = |reached: &str| names.of(reached).map(|a| a.to_string());
        // A redirect's target, with nothing known yet: noted.
        names.note("127.0.0.1:7000", "redis-0:6379", false);
        assert_eq!(of("127.0.0.1:7000").as_deref(), Some("redis-0:6379"));
        // The topology says otherwise: it wins.
        names.note("127.0.0.1:7000", "redis-5:6379", true);
        assert_eq!(of("127.0.0.1:7000").as_deref(), Some("redis-5:6379"));
        // A later redirect (any error reply can carry one) cannot change it back.
        names.note("127.0.0.1:7000", "evil.example:6379", false);
        assert_eq!(of("127.0.0.1:7000").as_deref(), Some("redis-5:6379"));
        // A topology that finds the node at the address it announced drops the name.
        names.forget("127.0.0.1:7000");
        assert_eq!(of("127.0.0.1:7000"), None);
        names.note("127.0.0.1:7000", "redis-5:6379", true);
        // Nodes outside a new topology are forgotten.
        names.note("127.0.0.1:7001", "redis-1:6379", true);
        names.retain(&[Arc::from("127.0.0.1:7001")].into_iter().collect());
        assert_eq!(of("127.0.0.1:7000"), None);
        assert_eq!(of("127.0.0.1:7001").as_deref(), Some("redis-1:6379"));
    }
}
