//! Topology refresh: asking nodes for the cluster's shape and swapping in a new routing
//! snapshot.
//!
//! Refreshes are single-flight and rate-limited: triggers (MOVED, connection failures,
//! CLUSTERDOWN, the periodic timer) only raise a flag; one background task per client does
//! the refreshing, at most once per `refresh_min_interval`. A refresh asked for directly
//! (`refresh_topology`, a scan that lost its way) waits for the one under way, if any,
//! then runs, unless one that began after it asked has run meanwhile: one at a time, so
//! none installs a view older than the last, and callers at once share them. A burst of
//! 10,000 MOVED replies therefore costs one or two refreshes, and requests keep routing on
//! the current snapshot while a refresh runs.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cluster::execute::knows;
use crate::cluster::node::lock;
use crate::cluster::Inner;
use crate::cmd::cmd;
use crate::error::{Error, Result};
use crate::resp::Value;
use crate::slot::{Redirect, SlotMap};
use crate::topology::{self, RefreshLimiter, RefreshTrigger};

/// Period of the background refresh while a failed primary holds slots, and for
/// [`SETTLE_WINDOW`] after the nodes reported failed last changed while some are.
const DEGRADED_INTERVAL: Duration = Duration::from_secs(1);

/// How long after a failed node was last seen a primary without slots still counts as
/// the cluster settling (see `ask_topology`): a restarted primary is demoted within a
/// few node timeouts.
const SETTLE_WINDOW: Duration = Duration::from_secs(60);

/// How many nodes one refresh asks, concurrently, to compare their views.
const NODES_ASKED: usize = 3;

/// How long the rest of a group may still answer once most of it has: enough for a
/// healthy node to connect and answer `CLUSTER SHARDS` on a loaded machine, and a frozen
/// node (one that keeps its connection but never answers) delays a refresh by no more.
const ANSWER_GRACE: Duration = Duration::from_millis(250);

/// How long a view older by config epoch than the last one installed is kept out (see
/// [`RefreshSignal::stale_by_epoch`]): longer than a failover takes to spread, short
/// enough that a cluster rebuilt from scratch (its epochs back to 0) is followed soon.
const EPOCH_HOLD: Duration = Duration::from_secs(5);

/// How long the refreshes do without `CLUSTER NODES` after a node refused it: the
/// permission may be granted later.
const NODES_QUIET: Duration = Duration::from_secs(60);

/// How long a redirect to an address the cluster did not vouch for is refused without
/// asking again: a script that forges `MOVED` in a loop costs a refresh this often, not
/// one per call; a node that joins meanwhile (it would have to be at that very address)
/// waits no longer than this.
const REFUSED_REDIRECT_HOLD: Duration = Duration::from_secs(10);

/// How long a redirect's address the cluster vouched for without listing it in the map
/// (a master that serves no slot yet, the target of a migration, under `CLUSTER SLOTS`)
/// is followed without asking again: every request the migration sends there would
/// otherwise cost the redirecting node a `CLUSTER SLOTS` and a `CLUSTER NODES`, and the
/// client a refresh. Short: the vouching is that node's word of the moment.
const VOUCHED_REDIRECT_HOLD: Duration = Duration::from_secs(10);

/// The longest one node's topology answer is waited for, whatever the response timeout:
/// a refresh that waits on a hung node serves no one.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The `MOVED` patches a refresh that began before them must keep. A view fetched before
/// a node said "slot 42 is at B now" would take slot 42 back to the node that sent the
/// client away: every request for it would pay a redirect until a later refresh. An
/// install keeps the patches made since its refresh began (see [`Moves::mark`]) where its
/// view disagrees, and forgets the older ones, which its view supersedes: a patch lives
/// through one install at most, so a wrong one does not outlive the next refresh.
#[derive(Debug, Default)]
pub(crate) struct Moves {
    /// The number the next patch gets.
    next: u64,
    /// The last patch of each slot, and its number.
    patches: std::collections::HashMap<u16, (Arc<str>, u64)>,
}

impl Moves {
    /// Taken when a refresh begins: the patches numbered from here on are newer than
    /// its view.
    pub(crate) fn mark(&self) -> u64 {
        self.next
    }

    /// Notes that a `MOVED` pointed `slot` at `addr`.
    pub(crate) fn note(&mut self, slot: u16, addr: &str) {
        self.patches.insert(slot, (Arc::from(addr), self.next));
        self.next += 1;
    }

    /// `view`, fetched by a refresh that began at `mark`, with the patches made since on
    /// top; the older patches are forgotten, and so are those to a node the view
    /// reports failed: a node that had not heard yet sent the client to it (slot 42
    /// moved to B, B died), and the view knows better, though it began first.
    pub(crate) fn keep_newer(
        &mut self,
        mut view: SlotMap,
        mark: u64,
        failed: &[Arc<str>],
    ) -> SlotMap {
        self.patches
            .retain(|_, (addr, number)| *number >= mark && !failed.contains(addr));
        for (slot, (addr, _)) in &self.patches {
            if view.primary(*slot).is_none_or(|p| p != addr) {
                view.move_slot(*slot, addr);
            }
        }
        view
    }
}

/// When something last happened to each of a few addresses: a node refused a command,
/// a redirect was refused. Entries older than the window they are kept for are dropped as
/// others come.
#[derive(Debug, Default)]
struct SeenAt(std::sync::Mutex<std::collections::HashMap<String, std::time::Instant>>);

impl SeenAt {
    /// Whether it happened to `addr` within the last `window`.
    fn within(&self, addr: &str, window: Duration) -> bool {
        lock(&self.0)
            .get(addr)
            .is_some_and(|at| at.elapsed() < window)
    }

    /// Notes that it happened to `addr` now; forgets what is older than `window`.
    fn note(&self, addr: &str, window: Duration) {
        let mut seen = lock(&self.0);
        seen.retain(|_, at| at.elapsed() < window);
        seen.insert(addr.to_owned(), std::time::Instant::now());
    }
}

/// What [`RefreshSignal::stale_by_epoch`] compares a new view with.
#[derive(Debug)]
struct InstalledEpochs {
    map: SlotMap,
    epochs: Vec<(Arc<str>, u64)>,
    at: std::time::Instant,
}

/// When something last happened: a failed node seen, a refusal, a collision.
#[derive(Debug, Default)]
struct LastSeen(std::sync::Mutex<Option<std::time::Instant>>);

impl LastSeen {
    fn note(&self) {
        *lock(&self.0) = Some(std::time::Instant::now());
    }

    /// Whether it happened within the last `window`.
    fn within(&self, window: Duration) -> bool {
        lock(&self.0).is_some_and(|at| at.elapsed() < window)
    }
}

/// Brings the background tasks back (see [`RefreshSignal::respawn`]).
#[derive(Default)]
pub(crate) struct Respawn(std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>);

impl Respawn {
    /// Sets what brings the tasks back; once.
    pub(crate) fn set(&self, respawn: Box<dyn Fn() + Send + Sync>) {
        let _ = self.0.set(respawn);
    }
}

impl std::fmt::Debug for Respawn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Respawn")
    }
}

/// Marks a background task running for as long as its future lives, which holds it
/// from its spawn: the future dropped (its runtime shut down, before it was ever polled
/// too) or ended, the flag falls.
pub(crate) struct Running {
    signal: Arc<RefreshSignal>,
    health: bool,
}

impl Running {
    /// Claims the refresh task's flag (`health`: the health task's), unless its task
    /// runs.
    pub(crate) fn claim(signal: &Arc<RefreshSignal>, health: bool) -> Option<Running> {
        // The guard only once the flag is ours: a guard made for a failed claim would
        // clear, when dropped, the flag of the task that runs.
        Running::flag_of(signal, health)
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
            .then(|| Running {
                signal: Arc::clone(signal),
                health,
            })
    }

    fn flag_of(signal: &RefreshSignal, health: bool) -> &AtomicBool {
        if health {
            &signal.health_running
        } else {
            &signal.refresh_running
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        Running::flag_of(&self.signal, self.health).store(false, Ordering::Release);
    }
}

/// The doorbell between request paths and the refresh task.
#[derive(Debug, Default)]
pub(crate) struct RefreshSignal {
    wake: Notify,
    shutdown: Notify,
    /// Wakes the health task to end: the client is gone.
    pub(crate) health_shutdown: Notify,
    /// Whether the refresh task runs: set as it is spawned, cleared when its future is
    /// dropped (its [`Running`]).
    pub(crate) refresh_running: AtomicBool,
    /// Whether the health task runs, likewise.
    pub(crate) health_running: AtomicBool,
    /// Whether the client has a health task at all (`health_check_interval`).
    pub(crate) health_checks: AtomicBool,
    /// Whether a refresh task was ever spawned: the first follows the build's discovery,
    /// a later one (on another runtime) a request for a refresh.
    pub(crate) refresh_started: AtomicBool,
    /// Spawns whichever background task is gone, on the runtime of the caller. Tasks
    /// die with the runtime they were spawned on: a client built in one runtime and used
    /// in another (a `static` client shared by `#[tokio::test]`s, one built inside a
    /// short-lived `block_on`) would otherwise never refresh again, its connections
    /// reopening on the new runtime while failovers go unseen.
    pub(crate) respawn: Respawn,
    /// The first trigger since the last refresh, for logs and metrics.
    trigger: AtomicU8,
    /// Refreshes done, for tests and metrics.
    pub(crate) count: AtomicU64,
    /// The last view fetched from the cluster, to log what the next one changes (the
    /// routing snapshot itself may already hold slots patched by `MOVED`).
    last_view: std::sync::Mutex<Option<SlotMap>>,
    /// Whether the last refresh saw a failed primary holding slots, failures that are
    /// news (or were within [`SETTLE_WINDOW`]), or the cluster settling after one.
    pub(crate) degraded: AtomicBool,
    /// When a refresh last saw the set of nodes flagged as failed change, or a failed
    /// primary still holding its slots.
    last_failure: LastSeen,
    /// The nodes the last view installed flagged as failed, sorted.
    failed_set: std::sync::Mutex<Vec<Arc<str>>>,
    /// Why the last discovery failed while no topology is known (a lazily connected
    /// client whose seeds have not answered yet): what its requests fail with.
    pub(crate) discovery_error: std::sync::Mutex<Option<Error>>,
    /// The routing and config epochs of the last view installed, and when.
    installed_epochs: std::sync::Mutex<Option<InstalledEpochs>>,
    /// When a node last refused `CLUSTER NODES`.
    nodes_refused: LastSeen,
    /// The nodes that refused `CLUSTER SHARDS` (a server before 7.0, an ACL user
    /// allowed `CLUSTER SLOTS` only), and when: each is asked `CLUSTER SLOTS` for
    /// [`NODES_QUIET`] after. Per node: ACLs and versions are, and a cluster mid-upgrade
    /// mixes them.
    shards_refused: SeenAt,
    /// The addresses redirects named that the cluster did not vouch for (see
    /// [`Inner::vet_redirect`]), and when: a redirect to one is refused at once for
    /// [`REFUSED_REDIRECT_HOLD`].
    redirects_refused: SeenAt,
    /// The addresses redirects named that the cluster vouched for though the map lacks
    /// them, and when: followed at once for [`VOUCHED_REDIRECT_HOLD`].
    redirects_vouched: SeenAt,
    /// When a node last gave two masters of one config epoch ([`topology::epoch_collision`]).
    last_collision: LastSeen,
    /// Held by the refresh under way: the background task's, `refresh_topology`'s and
    /// a scan's take turns, so that a refresh that asked earlier never installs its
    /// view over a later one's. Holds the number and outcome of the last one done.
    flight: tokio::sync::Mutex<Option<(u64, Result<bool>)>>,
    /// Refreshes begun (counted under `flight`).
    begun: AtomicU64,
    /// When a refresh last ended, installed or not.
    last_done: LastSeen,
}

impl RefreshSignal {
    /// Asks for a refresh; cheap, and many calls before the refresh runs count as one.
    pub(crate) fn request(&self, trigger: RefreshTrigger) {
        let _ = self.trigger.compare_exchange(
            0,
            trigger as u8 + 1,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        self.wake.notify_one();
        // (The health task is checked too: a runtime shutting down drops the two tasks
        // one after the other, and a request between would see only the refresh task.)
        let gone = |running: &AtomicBool| !running.load(Ordering::Acquire);
        let health_checks = self.health_checks.load(Ordering::Relaxed);
        if gone(&self.refresh_running) || (health_checks && gone(&self.health_running)) {
            if let Some(respawn) = self.respawn.0.get() {
                respawn();
            }
        }
    }

    /// Whether `view` is older by config epoch ([`topology::compare_by_epoch`]) than
    /// the view installed last, within [`EPOCH_HOLD`] of that: every node asked may not
    /// have heard of a promotion yet (one refresh asks three), and installed, the view
    /// would send the map back to the old primary, for a `MOVED` to undo. Or as old, and
    /// routing otherwise, while two masters share an epoch: the nodes themselves do not
    /// move a slot to a claim of the same epoch, and which side a refresh lands on
    /// depends on which three nodes it asks (the map went back and forth every 100 ms
    /// for a second or two).
    fn stale_by_epoch(&self, view: &topology::View) -> bool {
        let held = lock(&self.installed_epochs);
        let Some(installed) = held.as_ref().filter(|i| i.at.elapsed() < EPOCH_HOLD) else {
            return false;
        };
        let routing = (&installed.map, Some(&installed.epochs[..]));
        match topology::compare_by_epoch(view.routing(), routing) {
            Some(std::cmp::Ordering::Less) => true,
            // Only where both route a slot: a view that adds a promoted replica's slots,
            // unassigned in the installed one, is no other side of the collision.
            Some(std::cmp::Ordering::Equal) => {
                self.last_collision.within(EPOCH_HOLD)
                    && !installed.map.agrees_where_both_serve(&view.map)
            }
            _ => false,
        }
    }

    /// Notes the routing and config epochs of a view being installed (none: nothing to
    /// hold a later view against).
    pub(crate) fn note_epochs(&self, view: &topology::View) {
        *lock(&self.installed_epochs) = view.epochs.as_ref().map(|epochs| InstalledEpochs {
            map: view.map.clone(),
            epochs: epochs.clone(),
            at: std::time::Instant::now(),
        });
    }

    /// The primaries that served slots in the last view installed (none before one).
    pub(crate) fn serving_in_last_view(&self) -> Vec<Arc<str>> {
        lock(&self.last_view)
            .as_ref()
            .map(SlotMap::serving_primaries)
            .unwrap_or_default()
    }

    /// Whether the cluster vouched for a redirect's address (remapped) the map lacks
    /// within [`VOUCHED_REDIRECT_HOLD`].
    pub(crate) fn vouched_for(&self, addr: &str) -> bool {
        self.redirects_vouched.within(addr, VOUCHED_REDIRECT_HOLD)
    }

    /// Whether the node at `addr` refused `CLUSTER SHARDS` within [`NODES_QUIET`].
    fn shards_refused_by(&self, addr: &str) -> bool {
        self.shards_refused.within(addr, NODES_QUIET)
    }

    fn note_shards_refused(&self, addr: &str) {
        self.shards_refused.note(addr, NODES_QUIET);
    }

    /// Whether a refresh saw a failed node within the last [`SETTLE_WINDOW`].
    fn failed_lately(&self) -> bool {
        self.last_failure.within(SETTLE_WINDOW)
    }

    /// Notes the nodes the view being installed flags as failed; whether they are news
    /// (a node failed, or came back): the cluster is changing. The same failed nodes
    /// seen again are not: one that nobody removes (`CLUSTER FORGET`) stays listed for
    /// good, and would keep every client refreshing each second.
    fn note_failed(&self, failed: &[Arc<str>]) -> bool {
        let mut now: Vec<Arc<str>> = failed.to_vec();
        now.sort();
        now.dedup();
        let mut last = lock(&self.failed_set);
        let news = now != *last;
        *last = now;
        if news {
            self.last_failure.note();
        }
        news
    }

    pub(crate) fn shutdown(&self) {
        self.shutdown.notify_one();
        self.health_shutdown.notify_one();
    }

    fn take_trigger(&self) -> RefreshTrigger {
        match self.trigger.swap(0, Ordering::AcqRel) {
            1 => RefreshTrigger::Moved,
            2 => RefreshTrigger::ConnectionFailure,
            3 => RefreshTrigger::ClusterDown,
            4 => RefreshTrigger::UnknownNode,
            5 => RefreshTrigger::Uncovered,
            _ => RefreshTrigger::Periodic,
        }
    }
}

/// Sets the flag back (`.1`) when dropped: see [`Inner::refresh_now`].
struct RestoreDegraded<'a>(&'a AtomicBool, bool);

impl Drop for RestoreDegraded<'_> {
    fn drop(&mut self) {
        if self.1 {
            self.0.fetch_or(true, Ordering::Relaxed);
        }
    }
}

/// Stops a spawned task when its handle is dropped (a finished one is left as it is).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The background task: waits for a trigger or the period, respects the rate limit,
/// refreshes. Ends when the client is dropped.
pub(crate) async fn refresh_task(
    inner: Weak<Inner>,
    signal: Arc<RefreshSignal>,
    interval: Duration,
    min_interval: Duration,
    _running: Running,
    first: bool,
) {
    let mut limiter = RefreshLimiter::new(min_interval);
    // Discovery just ran (unless the client connects lazily: then it is the first). A
    // task started again on another runtime was asked for a refresh: at once.
    if first && inner.upgrade().is_some_and(|i| !i.config.lazy_connect) {
        limiter.on_refresh(Instant::now().into_std());
    }
    loop {
        // While the cluster is degraded (see `refresh_now`, `ask_topology`), refresh
        // often.
        let period = if signal.degraded.load(Ordering::Relaxed) {
            interval.min(DEGRADED_INTERVAL)
        } else {
            interval
        };
        let woken = tokio::select! {
            () = signal.wake.notified() => true,
            () = tokio::time::sleep(period) => false,
            () = signal.shutdown.notified() => return,
        };
        let wait = limiter.wait_before_refresh(Instant::now().into_std());
        if !wait.is_zero() {
            // Triggers arriving meanwhile are folded into this refresh.
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = signal.shutdown.notified() => return,
            }
        }
        let trigger = if woken {
            signal.take_trigger()
        } else {
            RefreshTrigger::Periodic
        };
        let Some(inner) = inner.upgrade() else {
            return;
        };
        limiter.on_refresh(Instant::now().into_std());
        // In turn on this task: it is one already, and its future is dropped only with
        // the runtime.
        let asked = signal.begun.load(Ordering::Acquire);
        match inner.refresh_in_turn(trigger, asked).await {
            Ok(changed) => limiter.on_outcome(changed),
            Err(e) => {
                limiter.on_outcome(false);
                tracing::warn!(trigger = trigger.as_str(), error = %e, "topology refresh failed");
            }
        }
    }
}

impl Inner {
    /// Asks nodes for the topology and installs the view [`topology::choose_view`]
    /// picks of theirs (unless [`RefreshSignal::stale_by_epoch`]); whether that changed
    /// the routes.
    ///
    /// One at a time; a caller that finds, once its turn comes, that a whole refresh
    /// began after it asked takes that one's outcome instead of running another: many
    /// callers at once (scans interrupted by one failover, `refresh_topology` in a
    /// loop) cost one or two refreshes.
    ///
    /// The refresh runs on a task of its own: it holds the client-wide turn while it
    /// runs, and on the caller's task a future kept but no longer polled (a request
    /// vetting a redirect parked in a `select!` arm, a `refresh_topology()` future held)
    /// would hold up every other refresh, the background task's too, for as long as it
    /// is kept. A caller that drops its future stops the refresh (it installs nothing):
    /// left to finish, it would keep the client, its connections and tasks, alive after
    /// the last handle was dropped, for as long as silent nodes take to answer.
    pub(crate) async fn refresh(&self, trigger: RefreshTrigger) -> Result<bool> {
        let asked = self.signal.begun.load(Ordering::Acquire);
        let Some(me) = self.me.upgrade() else {
            // Only while the client is built (no caller has it yet).
            return self.refresh_in_turn(trigger, asked).await;
        };
        let mut task = AbortOnDrop(tokio::spawn(async move {
            me.refresh_in_turn(trigger, asked).await
        }));
        (&mut task.0).await.unwrap_or_else(|e| {
            Err(Error::ClusterDown(format!(
                "the topology refresh did not finish: {e}"
            )))
        })
    }

    /// [`Inner::refresh`] on the task that runs it, for a caller that asked when
    /// `asked` refreshes had begun.
    async fn refresh_in_turn(&self, trigger: RefreshTrigger, asked: u64) -> Result<bool> {
        let mut flight = self.signal.flight.lock().await;
        if let Some((number, outcome)) = &*flight {
            if *number > asked {
                return outcome.clone();
            }
        }
        let number = self.signal.begun.fetch_add(1, Ordering::AcqRel) + 1;
        let outcome = self.refresh_now(trigger).await;
        self.signal.last_done.note();
        *flight = Some((number, outcome.clone()));
        outcome
    }

    /// [`Inner::refresh`]'s work, in its turn.
    async fn refresh_now(&self, trigger: RefreshTrigger) -> Result<bool> {
        // Cleared for this refresh to set again; put back if it is stopped part way (its
        // caller gone), or an idle degraded client would wait out the long period.
        let was_degraded = self.signal.degraded.swap(false, Ordering::Relaxed);
        let mut restore = RestoreDegraded(&self.signal.degraded, was_degraded);
        let outcome = self.refresh_now_cleared(trigger).await;
        restore.1 = false;
        outcome
    }

    async fn refresh_now_cleared(&self, trigger: RefreshTrigger) -> Result<bool> {
        let mark = lock(&self.moves).mark();
        let current = self.routes.load_full();
        let mut candidates: Vec<Arc<str>> = current.map.nodes();
        fastrand::shuffle(&mut candidates);
        // Seeds last: they help when every known node is gone (a full restart).
        for seed in self.config.seeds.iter() {
            let seed = self.seed_address(seed);
            if !candidates.iter().any(|c| **c == *seed) {
                candidates.push(Arc::from(seed));
            }
        }
        let view = match self.fetch_view(&candidates).await {
            Ok(view) => view,
            Err(e) => {
                if current.primaries.is_empty() {
                    *lock(&self.signal.discovery_error) = Some(e.clone());
                    // Undiscovered: try again within a second, requests or not.
                    self.signal.degraded.store(true, Ordering::Relaxed);
                }
                return Err(e);
            }
        };
        *lock(&self.signal.discovery_error) = None;
        crate::observe::metrics::topology_refresh(trigger.as_str());
        if self.signal.stale_by_epoch(&view) {
            tracing::debug!(
                epochs = ?view.epochs,
                "the nodes asked give a view older by config epoch than the one installed \
                 (or as old while two masters share an epoch): kept out"
            );
            // Asked again soon: the nodes hear of the change within a round of gossip.
            self.signal.degraded.store(true, Ordering::Relaxed);
            self.signal.count.fetch_add(1, Ordering::Release);
            return Ok(false);
        }
        // While failures are news, and for a while after, refresh often: a failed
        // primary that comes back returns as a replica, and the client should notice
        // within a second.
        self.signal.note_failed(&view.failed);
        if !view.failed.is_empty() && self.signal.failed_lately() {
            self.signal.degraded.store(true, Ordering::Relaxed);
        }
        self.signal.note_epochs(&view);
        let changed = self.install(view, trigger, mark);
        if !changed {
            self.publish_gauges(&[]);
        }
        // Counted once installed: whoever sees the count move sees the new snapshot.
        self.signal.count.fetch_add(1, Ordering::Release);
        Ok(changed)
    }

    /// Where `redirect`, sent by the node at `from`, may be followed: its address
    /// (remapped), once the cluster vouches for it. An address of a node the topology
    /// lists is followed at once. Any other is followed only once a refresh names it (the
    /// cluster grew: a migration to a new node) or, should the view the refresh chose
    /// not have heard of the node yet, the redirecting node's own view does (then at
    /// once for [`VOUCHED_REDIRECT_HOLD`], without asking again). Otherwise
    /// the redirect came from code (a script's `redis.error_reply("MOVED ...")` for a slot
    /// of its own keys, a module) and following it would hand the client's credentials,
    /// and the command, to whatever answers there: refused, and refused again at once
    /// for [`REFUSED_REDIRECT_HOLD`]. A refused redirect, and a deadline that passes while
    /// vetting, say the command may have run: a script that forged the redirect did.
    pub(crate) async fn vet_redirect(
        &self,
        redirect: &Redirect,
        from: &str,
        deadline: Instant,
    ) -> Result<String> {
        let to = self.remap(redirect.addr());
        if knows(&self.routes.load(), &to) {
            return Ok(to);
        }
        let refused = |why: &str| {
            Error::Protocol(format!(
                "{from} redirected to {to}, {why}: not followed (a script's or a module's \
                 error reply, or a node that is not part of the cluster)"
            ))
        };
        let unlisted = "a node the cluster does not list";
        if self
            .signal
            .redirects_refused
            .within(&to, REFUSED_REDIRECT_HOLD)
        {
            return Err(refused(unlisted));
        }
        if self.signal.vouched_for(&to) {
            return Ok(to);
        }
        let timed_out = |_| Error::Timeout {
            may_have_executed: true,
        };
        // The background task's refresh, never cut short by a request's deadline, names
        // the node for the requests after this one, whatever becomes of this.
        self.signal.request(RefreshTrigger::UnknownNode);
        // A refresh of its own, shared with every request redirected meanwhile (see
        // `refresh`); not when one ended within the rate limit's interval (a script
        // forging redirects to ever other addresses would cost one each).
        if !self
            .signal
            .last_done
            .within(self.config.refresh_min_interval)
        {
            // Half the time left at most: a refresh held up by nodes that do not answer
            // leaves the other half for asking the redirecting node itself.
            let now = Instant::now();
            let half = now + deadline.saturating_duration_since(now) / 2;
            let refresh = self.refresh(RefreshTrigger::UnknownNode);
            match tokio::time::timeout_at(half, refresh).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::debug!(error = %e, "refresh to vet a redirect failed"),
                Err(_) => tracing::debug!("refresh to vet a redirect still under way"),
            }
            if knows(&self.routes.load(), &to) {
                return Ok(to);
            }
        }
        let vouched = tokio::time::timeout_at(deadline, self.lists(from, &to))
            .await
            .map_err(timed_out)?;
        match vouched {
            Some(true) => {
                self.signal
                    .redirects_vouched
                    .note(&to, VOUCHED_REDIRECT_HOLD);
                Ok(to)
            }
            Some(false) => {
                tracing::warn!(from, to = %to, "a redirect to a node the cluster does not list: not followed");
                self.signal
                    .redirects_refused
                    .note(&to, REFUSED_REDIRECT_HOLD);
                Err(refused(unlisted))
            }
            // Nothing learned: refused this time only.
            None => Err(refused(
                "a node the topology does not list, and the node that redirected could \
                 not be asked whether it knows it",
            )),
        }
    }

    /// Whether the node at `from` lists `to` (remapped) among the nodes of its view of the
    /// cluster; `None` when it did not say. Its `CLUSTER SHARDS` lists the masters that
    /// serve no slot yet (the target of a migration to a new node), its `CLUSTER SLOTS`
    /// does not: where it answers that (Redis 6, a user allowed `CLUSTER SLOTS` only),
    /// its `CLUSTER NODES`, asked in the same round trip, is read too (a user refused
    /// that cannot follow a migration to a new master until its first slot is there:
    /// `+cluster|nodes` is among the permissions the README lists).
    async fn lists(&self, from: &str, to: &str) -> Option<bool> {
        let (view, nodes) = match self.ask_topology_and_nodes(from).await {
            Ok(answers) => answers,
            Err(e) => {
                tracing::debug!(node = from, error = %e, "no view to vet a redirect with");
                return None;
            }
        };
        if view.map.lists(to) || !self.signal.shards_refused_by(from) {
            return Some(view.map.lists(to));
        }
        // The `CLUSTER NODES` asked with it, unless refused (a user allowed `CLUSTER
        // SLOTS` only): the node answered all it may, and that does not list the address.
        let addresses = nodes.as_ref().and_then(topology::listed_addresses);
        Some(addresses.is_some_and(|a| a.iter().any(|a| self.remap_announced(a) == to)))
    }

    /// Asks `candidates`, a few at a time, until some answer; returns the view
    /// [`topology::choose_view`] picks of theirs (the newest by config epoch, then the
    /// one most agree on, ...).
    ///
    /// Views of another cluster (naming none of the known nodes: see
    /// [`crate::conn::NodeIds`]) count only from a seed (trusted: it names the cluster
    /// to follow, as a DNS name a recreated cluster took over), and only when no node of
    /// the same group gives a view of this cluster. A learned address answering so (it
    /// may have been handed to another cluster's node) is refused in
    /// [`Inner::ask_topology`].
    pub(crate) async fn fetch_view(&self, candidates: &[Arc<str>]) -> Result<topology::View> {
        let mut last_error = Error::Config("no nodes to ask for the topology".into());
        for group in candidates.chunks(NODES_ASKED) {
            let mut asked: FuturesUnordered<_> =
                group.iter().map(|addr| self.ask_topology(addr)).collect();
            let mut views = Vec::new();
            // Without config epochs, a view chosen from a minority could be the stale one
            // (a node that has not heard of a promotion); one that waits for every node
            // waits on the slowest, which in a failover may be a node that never answers.
            let mut grace: Option<Instant> = None;
            loop {
                let answer = match grace {
                    None => asked.next().await,
                    Some(until) => match tokio::time::timeout_at(until, asked.next()).await {
                        Ok(answer) => answer,
                        Err(_) => break,
                    },
                };
                let Some(answer) = answer else {
                    break;
                };
                match answer {
                    Ok(view) if view.map.covered() > 0 => {
                        views.push(view);
                        if views.len() * 2 > group.len() {
                            grace.get_or_insert_with(|| Instant::now() + ANSWER_GRACE);
                        }
                    }
                    Ok(_) => {
                        last_error = Error::Config("the node reports no slots assigned".into())
                    }
                    Err(e) => last_error = e,
                }
            }
            let node_ids = &self.registry.settings().node_ids;
            if views.iter().any(|v| node_ids.shares_a_node(&v.ids)) {
                views.retain(|v| node_ids.shares_a_node(&v.ids));
            }
            let collided = self.signal.last_collision.within(EPOCH_HOLD);
            if let Some(view) = topology::choose_view(views, &self.routes.load().map, collided) {
                return Ok(view);
            }
        }
        Err(last_error)
    }

    /// One node's view: `CLUSTER SHARDS`, or `CLUSTER SLOTS` where that is unknown.
    async fn ask_topology(&self, addr: &str) -> Result<topology::View> {
        self.ask_topology_and_nodes(addr)
            .await
            .map(|(view, _)| view)
    }

    /// [`Inner::ask_topology`], and the node's `CLUSTER NODES` reply asked with it
    /// (none while that is refused).
    async fn ask_topology_and_nodes(&self, addr: &str) -> Result<(topology::View, Option<Value>)> {
        let deadline = crate::deadline::from_now(
            self.config
                .connect
                .connect_timeout
                .saturating_add(self.config.response_timeout.min(ANSWER_TIMEOUT)),
        );
        let node = self.registry.get(addr, false);
        let conn = node.connection(deadline).await?;
        // Asked together (one write, one round trip): the config epochs that say which
        // of two disagreeing views is the newer. Not while refused (a user without
        // `+cluster|nodes`): each refusal is an entry in the server's ACL log.
        let ask_shards = !self.signal.shards_refused_by(addr);
        let asked = if ask_shards { "SHARDS" } else { "SLOTS" };
        let shards = conn.send(cmd("CLUSTER").arg(asked));
        let (reply, nodes) = if self.signal.nodes_refused.within(NODES_QUIET) {
            let reply = tokio::time::timeout_at(deadline, shards).await;
            (
                reply.map_err(|_| Error::Timeout {
                    may_have_executed: true,
                })?,
                None,
            )
        } else {
            let nodes = conn.send(cmd("CLUSTER").arg("NODES"));
            let asked = futures_util::future::join(shards, nodes);
            let (reply, nodes) = tokio::time::timeout_at(deadline, asked)
                .await
                .map_err(|_| Error::Timeout {
                    may_have_executed: true,
                })?;
            (reply, nodes.ok())
        };
        // Refused for good (a permission, a name renamed away); a node still loading
        // (`LOADING`) refuses `CLUSTER SHARDS` too, and is asked again next time.
        if let Some(Value::ServerError(e)) = &nodes {
            if matches!(e.code(), "NOPERM" | "ERR") {
                self.signal.nodes_refused.note();
            }
        }
        let reply = reply?;
        let mut shards = match reply {
            // Servers before 7.0 do not know `CLUSTER SHARDS`; an ACL user may be
            // allowed `CLUSTER SLOTS` only (a rule from Redis 6 kept after an upgrade).
            Value::ServerError(e) if ask_shards && matches!(e.code(), "ERR" | "NOPERM") => {
                self.signal.note_shards_refused(addr);
                let reply =
                    tokio::time::timeout_at(deadline, conn.send(cmd("CLUSTER").arg("SLOTS")))
                        .await
                        .map_err(|_| Error::Timeout {
                            may_have_executed: true,
                        })??;
                if let Value::ServerError(e) = reply {
                    return Err(Error::Server(e));
                }
                topology::parse_slots(&reply, addr)?
            }
            Value::ServerError(e) => return Err(Error::Server(e)),
            reply if ask_shards => {
                topology::parse_shards(&reply, addr, self.config.connect.tls.is_some())?
            }
            reply => topology::parse_slots(&reply, addr)?,
        };
        let all_epochs = nodes.as_ref().and_then(topology::parse_node_epochs);
        if let Some(epochs) = &all_epochs {
            topology::prefer_newest_epoch(&mut shards, epochs);
        }
        let remap = |a: &str| self.remap_announced(a);
        let ids = topology::node_ids(&shards, &remap);
        let node_ids = &self.registry.settings().node_ids;
        if !node_ids.shares_a_node(&ids)
            && knows(&self.routes.load(), addr)
            && !node_ids.is_trusted(addr)
        {
            tracing::warn!(
                node = addr,
                "the node at this address gives another cluster's topology: ignored"
            );
            return Err(Error::ClusterDown(format!(
                "the node at {addr} gives the topology of another cluster (none of the \
                 node ids this client knows): its address now reaches another cluster's node"
            )));
        }
        if all_epochs.as_ref().is_some_and(topology::epoch_collision) {
            self.signal.last_collision.note();
        }
        let epochs =
            all_epochs.and_then(|epochs| topology::primary_epochs(&shards, &epochs, &remap));
        let failed = topology::failed_nodes(&shards, &remap);
        // A failed primary whose slots no replica took yet: the shard is down until
        // one does, which the client should see within a second.
        let down = shards
            .iter()
            .any(|s| !s.primary.healthy && !s.ranges.is_empty());
        if down {
            self.signal.last_failure.note();
        }
        if down || settling(&shards, self.signal.failed_lately()) {
            self.signal.degraded.store(true, Ordering::Relaxed);
        }
        let view = topology::View {
            map: topology::slot_map(&shards, &remap),
            down: topology::down_map(&shards, &remap),
            failed,
            ids,
            epochs,
        };
        Ok((view, nodes))
    }

    /// Installs `view`'s map, fetched by a refresh that began at `mark`, as the routing
    /// snapshot with the `MOVED` patches made since on top ([`Moves`]), unless it routes
    /// exactly as the current one; whether it did. Its node ids are the ones connections
    /// check from now on.
    pub(crate) fn install(&self, view: topology::View, trigger: RefreshTrigger, mark: u64) -> bool {
        let renamed = self.registry.settings().node_ids.replace(&view.ids);
        if !renamed.is_empty() {
            // One look at the handles for all the addresses.
            for node in self.registry.all() {
                if renamed.contains(&node.addr) {
                    node.forget_failures();
                }
            }
            if !renamed.is_empty() {
                self.publish_gauges(&[]);
            }
        }
        let (map, down, failed) = (view.map, view.down, view.failed);
        let previous = lock(&self.signal.last_view).replace(map.clone());
        if previous.as_ref() != Some(&map) {
            let previous = previous.unwrap_or_default();
            crate::observe::events::topology_changed(&previous, &map, trigger.as_str());
        }
        // Under the registry's lock, as a patch is made: none comes in between.
        let replaced = self.registry.replace(
            &self.routes,
            |current| {
                let map = lock(&self.moves).keep_newer(map, mark, &failed);
                (current.map != map).then_some(map)
            },
            Some(down),
        );
        // The routes' nodes, a patched one the view lacks included.
        // (A set: looked up once per node below, which would be quadratic in a list.)
        let members: std::collections::HashSet<Arc<str>> =
            self.routes.load().members().into_iter().collect();
        self.registry.settings().announced.retain(&members);
        let Some(previous) = replaced else {
            return false;
        };
        // Nodes that left: their per-node gauges are zeroed.
        let removed: Vec<Arc<str>> = previous
            .members()
            .into_iter()
            .filter(|n| !members.contains(n))
            .collect();
        self.publish_gauges(&removed);
        true
    }
}

/// Whether a view shows the cluster still settling after a failure seen lately: a
/// primary with no slots then is most likely the failed primary back, not yet told it
/// is a replica now. Without refreshing often meanwhile, the client would show it as a
/// primary until the periodic refresh. Only lately: a cluster may keep an empty
/// primary on purpose.
fn settling(shards: &[topology::ShardInfo], failed_lately: bool) -> bool {
    failed_lately && shards.iter().any(|s| s.ranges.is_empty())
}

/// A redirect's vetting that ran out of time ([`Inner::vet_redirect`]), for a command the
/// node refused with that redirect and that ran nothing (no script, which could forge
/// the redirect after writing; a blocking command, once answered other than with a
/// refusal, is never sent again; `WATCH` changes no data): the vetting's own timeout
/// says it may have run, for the commands a script's forged redirect may have followed.
/// (An earlier attempt that may have run still says so: see `Attempts`.)
pub(crate) fn refused_unrun(e: Error) -> Error {
    match e {
        Error::Timeout { .. } => Error::Timeout {
            may_have_executed: false,
        },
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::topology::{NodeInfo, ShardInfo};

    /// While two masters share an epoch, a view as old as the installed one that routes
    /// a slot otherwise is kept out; one that only serves slots the installed one left
    /// unassigned (a promoted replica taking a lost primary's) is not. It was, for as
    /// long as the collision was reported and 5 s after: those slots failed meanwhile.
    /// A failed node is news once: seen again and again (nobody ran `CLUSTER FORGET`),
    /// it no longer counts as the cluster changing, which kept every client refreshing
    /// each second for good. Another failure, or a recovery, is news again.
    #[test]
    fn the_same_failed_nodes_are_news_once() {
        let signal = RefreshSignal::default();
        let a: Arc<str> = Arc::from("a:1");
        let b: Arc<str> = Arc::from("b:1");
        assert!(!signal.note_failed(&[]));
        assert!(!signal.failed_lately());
        assert!(signal.note_failed(&[Arc::clone(&a)]));
        assert!(signal.failed_lately());
        *lock(&signal.last_failure.0) = None;
        assert!(!signal.note_failed(&[Arc::clone(&a), Arc::clone(&a)]));
        assert!(!signal.failed_lately());
        assert!(signal.note_failed(&[Arc::clone(&b), Arc::clone(&a)]));
        // One came back: news too (it returns as a replica); then gone again.
        assert!(signal.note_failed(&[Arc::clone(&b)]));
        assert!(!signal.note_failed(&[Arc::clone(&b)]));
        assert!(signal.note_failed(&[]));
        assert!(signal.note_failed(&[a]));
    }

    #[test]
    fn a_collision_keeps_out_other_routings_not_added_coverage() {
        use crate::slot::Shard;
        let shard = |p: &str| Shard {
            primary: Arc::from(p),
            replicas: vec![],
        };
        let view = |map: SlotMap, epochs: &[(&str, u64)]| topology::View {
            map,
            down: SlotMap::default(),
            failed: Vec::new(),
            ids: Vec::new(),
            epochs: Some(epochs.iter().map(|&(p, e)| (Arc::from(p), e)).collect()),
        };
        let installed = SlotMap::from_ranges([(shard("a:1"), vec![(0, 8000)])]);
        let signal = RefreshSignal::default();
        signal.note_epochs(&view(installed.clone(), &[("a:1", 5)]));
        signal.last_collision.note();
        let added = SlotMap::from_ranges([
            (shard("a:1"), vec![(0, 8000)]),
            (shard("x:1"), vec![(8001, 16383)]),
        ]);
        assert!(!signal.stale_by_epoch(&view(added, &[("a:1", 5), ("x:1", 5)])));
        let other = installed.with_moved(0, "b:1");
        assert!(signal.stale_by_epoch(&view(other, &[("a:1", 5), ("b:1", 5)])));
    }

    /// Two requests that find the task gone at once both try to start it: the one that
    /// loses leaves the flag of the task that runs alone. Its guard, made before the
    /// claim, cleared it when dropped, and the next request started a second task.
    #[test]
    fn a_failed_claim_leaves_the_running_tasks_flag_alone() {
        let signal = Arc::new(RefreshSignal::default());
        for health in [false, true] {
            let flag = || Running::flag_of(&signal, health).load(Ordering::Acquire);
            let running = Running::claim(&signal, health).unwrap();
            assert!(Running::claim(&signal, health).is_none());
            assert!(flag(), "still the running task's");
            drop(running);
            assert!(!flag());
            assert!(Running::claim(&signal, health).is_some());
        }
    }

    fn node(port: u16, healthy: bool) -> NodeInfo {
        NodeInfo {
            id: None,
            addr: format!("127.0.0.1:{port}"),
            healthy,
        }
    }

    fn shard(port: u16, ranges: Vec<(u16, u16)>, healthy: bool) -> ShardInfo {
        ShardInfo {
            primary: node(port, healthy),
            replicas: vec![node(port + 1, true)],
            ranges,
            failed: if healthy {
                Vec::new()
            } else {
                vec![format!("127.0.0.1:{port}")]
            },
            contenders: Vec::new(),
        }
    }

    #[test]
    fn a_failed_node_or_an_empty_primary_right_after_one_keeps_the_refresh_close() {
        let served = shard(7000, vec![(0, 16383)], true);
        let failed = shard(7002, vec![], false);
        let empty = shard(7004, vec![], true);
        let same = |a: &str| a.to_string();
        assert_eq!(
            topology::failed_nodes(&[served.clone(), failed], &same).len(),
            1
        );
        assert!(topology::failed_nodes(&[served.clone(), empty.clone()], &same).is_empty());
        // An empty primary counts only while a failure was seen lately.
        assert!(settling(&[served.clone(), empty.clone()], true));
        assert!(!settling(&[served.clone(), empty], false));
        assert!(!settling(&[served], true));
    }

    #[test]
    fn a_view_fetched_before_a_moved_keeps_it_and_a_later_view_has_the_last_word() {
        let same = |a: &str| a.to_string();
        let stale = topology::slot_map(&[shard(7000, vec![(0, 16383)], true)], &same);
        let a = "127.0.0.1:7000";
        let b = "127.0.0.1:7002";
        let mut moves = Moves::default();
        let before = moves.mark();
        // While a refresh runs, node A says slot 42 is at B now.
        moves.note(42, b);
        let installed = moves.keep_newer(stale.clone(), before, &[]);
        assert_eq!(installed.primary(42).map(|p| &**p), Some(b));
        assert_eq!(installed.primary(41).map(|p| &**p), Some(a));
        // A refresh that began after the MOVED has the last word, even a stale one (a
        // wrong patch does not outlive it), and the patch is forgotten.
        let after = moves.mark();
        let installed = moves.keep_newer(stale.clone(), after, &[]);
        assert_eq!(installed.primary(42).map(|p| &**p), Some(a));
        assert!(moves.patches.is_empty());
        // A view that agrees with the patch is installed as it is.
        let mut moved = stale.clone();
        moved.move_slot(42, b);
        let mark = moves.mark();
        moves.note(42, b);
        assert_eq!(moves.keep_newer(moved.clone(), mark, &[]), moved);
        // A patch to a node the view reports failed is dropped, however new: the node
        // that sent the client there had not heard B died.
        let mark = moves.mark();
        moves.note(42, b);
        let installed = moves.keep_newer(stale.clone(), mark, &[Arc::from(b)]);
        assert_eq!(installed.primary(42).map(|p| &**p), Some(a));
        assert!(moves.patches.is_empty());
    }

    #[test]
    fn a_failure_seen_is_remembered_for_the_settle_window_only() {
        let signal = RefreshSignal::default();
        assert!(!signal.failed_lately());
        signal.last_failure.note();
        assert!(signal.failed_lately());
        *lock(&signal.last_failure.0) = std::time::Instant::now().checked_sub(SETTLE_WINDOW);
        assert!(!signal.failed_lately());
    }
}
