//! Running explicit pipelines and transactions.
//!
//! A pipeline's commands are grouped by the node that serves them and written to each
//! node at once, every node in parallel, in the order they were added. A node's batch
//! goes on its shared connection, unless it holds a blocking command or, with
//! `durable_writes` on, a (non-blocking) write: then it goes on a dedicated connection from the pool,
//! so that a `BLPOP` holds up nobody else, and it ends with one `WAIT` that covers its
//! writes. A command answered with a redirect or a transient error (`MOVED`, `ASK`,
//! `TRYAGAIN`, `CLUSTERDOWN`, ...) is sent again, never the rest of the pipeline: the
//! commands of a slot that moved whole go as one batch to its new owner, those of a
//! migrating slot whose keys moved on (`ASK` to each) as one batch to the importing
//! node, each after `ASKING`; any others on their own, through the ordinary redirect and
//! retry path, one after another per slot.
//! Either way a slot's resent commands keep their order among themselves (a command
//! resent after an `ASK` runs after the slot's later commands that the node had already
//! served; a refused one, `TRYAGAIN` and the like, is not resent then, nor when a later
//! command of its slot may have run before the connection failed: its refusal is its
//! answer). When a node's connection fails, the commands it answered
//! first keep their replies; the others are resent if they were not written, or if each
//! is idempotent and no later command of its slot that may have run stays behind (else
//! it would run again after that one), and reported otherwise. A command that timed
//! out is never resent; those answered before the deadline keep their replies. Commands of a slot with no
//! known owner go one after another through the single-command path, which waits for
//! one.

use std::collections::hash_map;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tracing::Instrument as _;

use crate::cluster::dedicated::{block_time, replicas_acked, Durability};
use crate::cluster::execute::{knows, Target, UNTIL_ANSWERED};
use crate::cluster::node::Node;
use crate::cluster::plan::{self, Plan};
use crate::cluster::{Inner, ReadFrom};
use crate::cmd::{self, cmd, Cmd};
use crate::conn::Cmds;
use crate::error::{Error, Result};
use crate::observe::metrics::{self, InFlight, Status};
use crate::policy::{replica_cannot_serve, ErrorAction};
use crate::resp::Value;
use crate::slot::Redirect;

/// How many times the commands of a moved slot (or of a migrating one, after `ASK`) go
/// again as a batch before they go one by one (with `max_redirects` of their own): a
/// slot moving on and on is no case to optimise, and each re-batch runs inside the one
/// before.
const MAX_REBATCHES: u32 = 4;

/// A batch's results, each with its command's place in the pipeline.
type Outcomes = Vec<(usize, Result<Value>)>;

/// One command of a pipeline.
struct Entry {
    meta: Meta,
    cmd: Cmd,
}

/// Why a command of a node's batch goes again.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Resend {
    /// Its slot moved (`MOVED`): with the slot's other commands, to the new owner.
    Moved,
    /// Its key moved on with a migration of its slot (`ASK`): with the slot's other
    /// commands that did, to the node named (reached at this address), each after
    /// `ASKING`.
    Ask(String),
    /// At once: a connection lost before it could run.
    Now,
    /// A read a replica cannot serve for a while (`LOADING`, `MASTERDOWN`): with the
    /// slot's other reads, to the primary, at once (a reroute, not a retry).
    ToPrimary,
    /// The node asked to wait (`TRYAGAIN`, `LOADING`, `MASTERDOWN`, `CLUSTERDOWN`): after
    /// this long (the retry is counted and taken from the budget).
    AfterBackOff(Duration),
    /// Redirected to a node the map lacks: where, once the cluster vouches for it
    /// ([`Inner::vet_redirect`]); it ends with the refusal otherwise.
    Unvetted(Redirect),
}

/// Where a pipeline's command stands and how it may be retried: what stays behind
/// while the command itself is away on a connection.
#[derive(Clone, Copy)]
struct Meta {
    index: usize,
    slot: u16,
    /// For a read, the pipeline's [`ReadFrom`].
    read: Option<ReadFrom>,
    idempotent: bool,
    write: bool,
    /// For a blocking command, how long it may block (`None` inside: until answered).
    blocks: Option<Option<Duration>>,
    /// The metrics label.
    name: &'static str,
    /// Resent after its batch failed when it may have run: its answer must not say it
    /// did not run (the batch's error says it may have).
    after_failure: bool,
}

impl Meta {
    /// Whether `durable_writes` gives this command a `WAIT`: a write, but not a blocking
    /// one (`BLPOP` pops), which the single-command path sends without, as here.
    fn durable_write(&self) -> bool {
        self.write && self.blocks.is_none()
    }

    /// Whether the command needs what only the single-command path gives when it is
    /// resent: a dedicated connection (blocking), or its own `WAIT` (a durable write).
    fn needs_own_path(&self, durability: Option<Durability>) -> bool {
        self.blocks.is_some() || (self.durable_write() && durability.is_some())
    }
}

/// What goes again of one slot: where to, when every command of it goes the same way
/// (`MOVED` or a replica's refusal: to the owner; `ASK`: to the importing node), and
/// how long the slot waits first.
struct SlotResend {
    slot: u16,
    /// `Moved` (and `ToPrimary`), or `Ask` to one node, when all of the slot's commands
    /// go so; else `None`.
    to: Option<Resend>,
    wait: Duration,
    entries: Vec<Entry>,
}

impl SlotResend {
    fn new(entry: Entry, why: Resend, wait: Duration) -> SlotResend {
        let to = match why {
            Resend::ToPrimary => Some(Resend::Moved),
            Resend::Moved | Resend::Ask(_) => Some(why),
            // (Vetted before this: see `vet_resends`.)
            Resend::Now | Resend::AfterBackOff(_) | Resend::Unvetted(_) => None,
        };
        SlotResend {
            slot: entry.meta.slot,
            to,
            wait,
            entries: vec![entry],
        }
    }

    fn add(&mut self, entry: Entry, why: &Resend, wait: Duration) {
        let same = match (&self.to, why) {
            (Some(Resend::Moved), Resend::Moved | Resend::ToPrimary) => true,
            (Some(Resend::Ask(a)), Resend::Ask(b)) => a == b,
            _ => false,
        };
        if !same {
            self.to = None;
        }
        self.wait = self.wait.max(wait);
        self.entries.push(entry);
    }
}

/// `cmds`, each after an `ASKING`.
fn with_asking(cmds: Vec<Cmd>) -> Vec<Cmd> {
    let mut all = Vec::with_capacity(cmds.len() * 2);
    for command in cmds {
        all.push(cmd("ASKING"));
        all.push(command);
    }
    all
}

/// What [`with_asking`] interleaved, without `ASKING`'s part: its commands, or the
/// replies received before a failure (an `ASKING` answered without the command after it
/// drops out).
fn without_asking<T>(items: Vec<T>) -> Vec<T> {
    items.into_iter().skip(1).step_by(2).collect()
}

/// The commands' replies of a batch [`with_asking`] interleaved: each command's own,
/// unless its `ASKING` was refused (an ACL without `+asking`): then the refusal, which
/// says why, where the command's reply would only be a `MOVED` back to the node that
/// sent it there.
fn replies_after_asking(replies: Vec<Value>) -> Vec<Value> {
    let mut replies = replies.into_iter();
    let mut out = Vec::with_capacity(replies.len() / 2);
    while let (Some(asking), Some(reply)) = (replies.next(), replies.next()) {
        out.push(if asking.is_error() { asking } else { reply });
    }
    out
}

/// The commands of one batch that ended with its answer, by name and status: the
/// metrics take one call per kind, not one per command.
#[derive(Default)]
struct Tally(Vec<(&'static str, Status, usize)>);

impl Tally {
    fn add(&mut self, name: &'static str, result: &Result<Value>) {
        let status = Status::of(result.as_ref());
        match self
            .0
            .iter_mut()
            .find(|(n, s, _)| *n == name && *s == status)
        {
            Some((.., count)) => *count += 1,
            None => self.0.push((name, status, 1)),
        }
    }

    fn count_on(self, node: &Node, elapsed: std::time::Duration) {
        for (name, status, count) in self.0 {
            node.metrics.commands(name, status, elapsed, count);
        }
    }
}

impl Inner {
    /// The slots `cmds` write to, when reads would go elsewhere than the primary
    /// (`read_from`): a slot's commands run in the order added, so its reads go to the
    /// primary with its writes, which a replica would not have yet (`SET k v`, `GET k`
    /// read `v`).
    async fn slots_written(
        &self,
        cmds: &[Cmd],
        deadline: Instant,
        read_from: ReadFrom,
    ) -> std::collections::HashSet<u16> {
        let mut written = std::collections::HashSet::new();
        if read_from == ReadFrom::Primary {
            return written;
        }
        for command in cmds {
            let info = self.command_info(command, deadline).await;
            match plan::plan(command, info) {
                // Not `TOUCH`, which the primary serves for its effect, but reads.
                Ok(Plan::Slot {
                    slot,
                    read_only: false,
                }) if !info.is_some_and(|i| i.is_read_only()) => {
                    written.insert(slot);
                }
                // `MSET`, `DEL` over several slots write each part's.
                Ok(Plan::Split { parts, .. }) if !info.is_some_and(|i| i.is_read_only()) => {
                    written.extend(parts.iter().map(|p| p.slot));
                }
                _ => {}
            }
        }
        written
    }

    /// Runs `cmds` as a pipeline; one result per command, in order.
    pub(crate) async fn execute_pipeline(
        &self,
        cmds: Vec<Cmd>,
        deadline: Instant,
        read_from: ReadFrom,
    ) -> Vec<Result<Value>> {
        metrics::pipeline_size(cmds.len());
        let mut results: Vec<Option<Result<Value>>> = (0..cmds.len()).map(|_| None).collect();
        // Commands for one slot are batched per node; anything else (split or fan-out
        // commands) runs on its own, concurrently with the batches.
        let mut groups: Vec<(Arc<Node>, Vec<Entry>)> = Vec::new();
        let mut singles: Vec<(usize, Cmd)> = Vec::new();
        // Commands of slots no node is known to serve yet (a lazily connected client
        // before its discovery, a slot lost in a failover), by slot: each slot's go one
        // after another, in the order added, through the single-command path, which
        // waits for an owner. Sent side by side, they would run in any order.
        let mut unowned: Vec<(u16, Vec<(usize, Cmd)>)> = Vec::new();
        // Where each slot's group is in `unowned`: a pipeline spreads over thousands of
        // slots, and a scan of the groups per command would cost it a scan of them all.
        let mut unowned_at: HashMap<u16, usize> = HashMap::new();
        // One snapshot for the whole pipeline; a command it routes wrongly is redirected
        // and resent on its own like any other.
        let routes = self.routes.load_full();
        // Each node's share, if the keys spread evenly, and some slack: a pipeline of
        // thousands of commands would otherwise grow every group a dozen times.
        let share = cmds.len() / routes.primaries.len().max(1);
        let group_capacity = share + share / 8 + 1;
        let written = self.slots_written(&cmds, deadline, read_from).await;
        for (index, command) in cmds.into_iter().enumerate() {
            // Refused here, alone: in its node's batch it failed the whole batch, the
            // others resent one by one as retries of the client's budget, or failing with
            // its error once that was spent.
            let renames = &self.config.connect.renames;
            if let Some(name) = renames.first_disabled(std::iter::once(&command)) {
                results[index] = Some(Err(crate::CommandRenames::disabled(&name)));
                continue;
            }
            let info = self.command_info(&command, deadline).await;
            match plan::plan(&command, info) {
                Ok(Plan::Slot { slot, read_only }) => {
                    // A blocking read (`XREAD BLOCK`) waits on the primary, as a single
                    // command does, and so does a read of a slot the pipeline writes.
                    let blocks = info.is_some_and(|i| cmd::blocks(&command, i));
                    let read =
                        (read_only && !blocks && !written.contains(&slot)).then_some(read_from);
                    match self.pick_for_slot(&routes, slot, read) {
                        Ok(node) => {
                            let meta = Meta {
                                index,
                                slot,
                                read,
                                idempotent: info.is_some_and(|i| cmd::may_resend(&command, i)),
                                write: info.is_some_and(|i| i.is_durable_write()),
                                blocks: info
                                    .filter(|i| cmd::blocks(&command, i))
                                    .map(|_| block_time(&command)),
                                name: metrics::command_label(info),
                                after_failure: false,
                            };
                            let entry = Entry { meta, cmd: command };
                            match groups.iter_mut().find(|(n, _)| Arc::ptr_eq(n, node)) {
                                Some((_, entries)) => entries.push(entry),
                                None => {
                                    let mut entries = Vec::with_capacity(group_capacity);
                                    entries.push(entry);
                                    groups.push((Arc::clone(node), entries));
                                }
                            }
                        }
                        Err(_) => match unowned_at.entry(slot) {
                            hash_map::Entry::Occupied(at) => {
                                unowned[*at.get()].1.push((index, command))
                            }
                            hash_map::Entry::Vacant(at) => {
                                at.insert(unowned.len());
                                unowned.push((slot, vec![(index, command)]));
                            }
                        },
                    }
                }
                Ok(_) => singles.push((index, command)),
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        // Each command of a batch is a request that earns the retry budget its share (the
        // others run through the single-command path, which counts them).
        let batched: usize = groups.iter().map(|(_, entries)| entries.len()).sum();
        self.requests
            .fetch_add(batched as u64, std::sync::atomic::Ordering::Relaxed);
        let batches = groups
            .into_iter()
            .map(|(node, entries)| self.run_batch(node, entries, deadline, 0, false));
        let singles = singles.into_iter().map(|(index, command)| async move {
            let started = Instant::now();
            (
                index,
                self.execute(command, started, deadline, read_from).await,
            )
        });
        let unowned = unowned.into_iter().map(|(slot, commands)| {
            // A slot the pipeline writes is read from its primary, as when its owner is
            // known: a replica may not have the pipeline's own writes yet.
            let read_from = if written.contains(&slot) {
                ReadFrom::Primary
            } else {
                read_from
            };
            async move {
                let mut replies = Vec::with_capacity(commands.len());
                for (index, command) in commands {
                    let reply = self.execute(command, Instant::now(), deadline, read_from);
                    replies.push((index, reply.await));
                }
                replies
            }
        });
        let (batches, singles, unowned) = futures_util::future::join3(
            futures_util::future::join_all(batches),
            futures_util::future::join_all(singles),
            futures_util::future::join_all(unowned),
        )
        .await;
        let batches = batches.into_iter().chain(unowned).flatten();
        for (index, result) in batches.chain(singles) {
            results[index] = Some(result);
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(Error::Protocol("pipeline command got no result".into())))
            })
            .collect()
    }

    /// [`Inner::run_batch`], boxed with its type written out: it runs itself for the
    /// commands of a slot that moved.
    fn run_batch_boxed(
        &self,
        node: Arc<Node>,
        entries: Vec<Entry>,
        deadline: Instant,
        redirects: u32,
        asking: bool,
    ) -> Pin<Box<dyn Future<Output = Outcomes> + Send + '_>> {
        Box::pin(self.run_batch(node, entries, deadline, redirects, asking))
    }

    /// For [`Inner::run_batch`]: what each error reply of `replies` (to `cmds`, from
    /// `reached`) asks for, by place ([`Inner::classify_reply`]; `None` for a reply that
    /// is no error), read once for the batch; `None` when no reply is an error.
    fn classify_replies(
        &self,
        cmds: &[Cmd],
        replies: &[Value],
        reached: &str,
    ) -> Option<Vec<Option<ErrorAction>>> {
        if !replies.iter().any(|r| matches!(r, Value::ServerError(_))) {
            return None;
        }
        let actions = replies
            .iter()
            .zip(cmds)
            .map(|(reply, command)| match reply {
                Value::ServerError(e) => {
                    Some(self.classify_reply(e, reached, std::slice::from_ref(command)))
                }
                _ => None,
            });
        Some(actions.collect())
    }

    /// Writes one node's share of a pipeline at once (with `asking`, each command after
    /// an `ASKING`: the commands an `ASK` sent to the node importing their slot). What
    /// needs resending: the commands of a slot that moved whole (`MOVED` to each) go
    /// again as one batch to the new owner, and those of a slot whose keys moved on with
    /// its migration (`ASK`) as one batch to the importing node, up to [`MAX_REBATCHES`]
    /// times; any others one by one, in order per slot.
    async fn run_batch(
        &self,
        node: Arc<Node>,
        entries: Vec<Entry>,
        deadline: Instant,
        redirects: u32,
        asking: bool,
    ) -> Outcomes {
        // Two collects, not `unzip`: the commands' one reuses the entries' allocation.
        let meta: Vec<Meta> = entries.iter().map(|e| e.meta).collect();
        let cmds: Vec<Cmd> = entries.into_iter().map(|e| e.cmd).collect();
        let durability = self
            .config
            .durability
            .filter(|_| meta.iter().any(Meta::durable_write));
        // How long its commands may block in all, if one does: the server runs them one
        // after another.
        let blocks = meta
            .iter()
            .filter_map(|m| m.blocks)
            .map(|time| time.unwrap_or(UNTIL_ANSWERED))
            .reduce(Duration::saturating_add);
        let started = std::time::Instant::now();
        let in_flight = InFlight::start(meta.len());
        let span = tracing::debug_span!("redis_pipeline", node = %node.addr, commands = meta.len());
        // Held until the outcome is recorded (see `Admitted`).
        let admitted = self.admit(&node);
        // Whether the batch's replica could not be connected to: nothing was sent.
        let mut replica_unreached = false;
        let (outcome, cmds, acked, received) = if admitted.is_none() {
            let open = Error::CircuitOpen {
                node: node.addr.to_string(),
            };
            (Err(open), cmds, None, Vec::new())
        } else if durability.is_some() || blocks.is_some() {
            // An `ASK` batch leaves out what would come here (`needs_own_path`).
            debug_assert!(!asking, "an ASK batch on a dedicated connection");
            let held = blocks.unwrap_or_default();
            let wait = durability.map_or(Duration::ZERO, |d| d.timeout);
            // A blocking command, then the `WAIT` after it: the server may take both.
            let reply_deadline = crate::deadline::after(deadline, held.saturating_add(wait));
            let blocking = blocks.is_some();
            self.run_batch_on_lease(&node, cmds, durability, blocking, deadline, reply_deadline)
                .instrument(span)
                .await
        } else {
            // A replica gets half the time left to connect, as a single read does: a host
            // gone silent costs the batch that, and its reads go to the primary with
            // the rest.
            let connect_by = if node.read_only {
                let now = Instant::now();
                now + deadline.saturating_duration_since(now) / 2
            } else {
                deadline
            };
            match node.connection(connect_by).await {
                Ok(conn) => {
                    let cmds = if asking { with_asking(cmds) } else { cmds };
                    let answer = conn
                        .dispatch(Cmds::Many(cmds), deadline)
                        .instrument(span)
                        .await;
                    self.record_on(&node, &conn, &answer.result, started);
                    let (replies, received, cmds) = (
                        answer.result.map(|r| r.into_vec()),
                        answer.received,
                        answer.cmds.into_vec(),
                    );
                    if asking {
                        // A refused `ASKING` answers for its command, whether the batch
                        // was answered whole or cut short after it.
                        let replies = replies.map(replies_after_asking);
                        (
                            replies,
                            without_asking(cmds),
                            None,
                            replies_after_asking(received),
                        )
                    } else {
                        (replies, cmds, None, received)
                    }
                }
                Err(e) => {
                    self.record_connect_failure(&node, &e);
                    if node.read_only {
                        // Replica reads pass it over a while, as after a single read's
                        // failed connect.
                        node.pass_over_for_reads();
                        replica_unreached = true;
                        if e.is_node_failure() && !matches!(e, Error::Timeout { .. }) {
                            self.signal
                                .request(crate::topology::RefreshTrigger::ConnectionFailure);
                        }
                    }
                    (Err(e), cmds, None, Vec::new())
                }
            }
        };
        drop(admitted);
        drop(in_flight);
        // Commands that end here are counted here; those resent, by `send`. They all
        // ended when the batch's answer came (or failed): one clock read for them all.
        let elapsed = started.elapsed();
        let mut done = Tally::default();
        let mut out = Vec::with_capacity(meta.len());
        // With why it goes again: a `MOVED`, or an answer that asks to back off first.
        let mut resend: Vec<(Entry, Resend)> = Vec::new();
        // Slots with a command answered with a refusal to wait (no retry left).
        let mut held_slots: HashSet<u16> = HashSet::new();
        // Whether the batch's `CLUSTERDOWN`s, and its other refusals, go again: decided
        // once for the batch, as for one request. Decided per command, a node that lost
        // its view (a refusal for every command) had a pipeline spend a retry of the
        // client's budget per command, and leave none for other requests. (The retry
        // metric takes the first refusal's code: `LOADING` then `TRYAGAIN` counts one
        // `LOADING` retry.)
        let mut refusal_delays: [Option<Option<Duration>>; 2] = [None, None];
        let backoff = self.backoff();
        let mut batch_error: Option<Error> = None;
        // Replies that came before a failure (the connection was lost, or the deadline
        // passed, after the server answered the first commands) are answers like any
        // other: those commands ran, once. The failure is the later commands' alone.
        let (replies, failure) = match outcome {
            Ok(replies) => (replies, None),
            Err(e) => (received, Some(e)),
        };
        let mut actions = self.classify_replies(&cmds, &replies, &node.addr);
        // Per slot, the place of its last command the node served (an answer, not a
        // refusal): a refused command before it is not resent, as it would run after
        // it (a node whose state changed between two reads of the batch: `CLUSTERDOWN`
        // for `SET k 1`, then `OK` for `SET k 2`). Looked for only when some reply is
        // an error.
        let last_served: Option<HashMap<u16, usize>> = actions.as_ref().map(|actions| {
            let served =
                |action: &Option<ErrorAction>| matches!(action, None | Some(ErrorAction::Reply));
            let mut last: HashMap<u16, usize> = (meta.iter().zip(actions).enumerate())
                .filter(|(_, (_, action))| served(action))
                .map(|(position, (meta, _))| (meta.slot, position))
                .collect();
            // So are the commands left unanswered when the connection failed after they
            // were written: they may have run (an `APPEND` the node ran, then dropped the
            // connection), and a refusal before them, resent, would run after them.
            if failure.as_ref().is_some_and(Error::may_have_executed) {
                for (position, meta) in meta.iter().enumerate().skip(replies.len()) {
                    last.insert(meta.slot, position);
                }
            }
            last
        });
        // `MOVED` targets, taken in at once after the replies: a pipeline's share of a
        // moved shard is thousands of them, and each would make a new slot map.
        let mut moves: Vec<(u16, String)> = Vec::new();
        let (mut meta, mut cmds) = (meta, cmds);
        let answered = replies.len().min(meta.len()).min(cmds.len());
        let (failed_meta, failed_cmds) = (meta.split_off(answered), cmds.split_off(answered));
        for (position, ((meta, reply), command)) in
            meta.into_iter().zip(replies).zip(cmds).enumerate()
        {
            let to_primary = matches!(&reply, Value::ServerError(e)
                if node.read_only && replica_cannot_serve(e));
            let (action, wait) = match &reply {
                // A replica that may refuse for minutes: the read goes to the
                // primary at once, a reroute rather than a retry (as for a
                // single command).
                Value::ServerError(_) if to_primary => {
                    node.pass_over_for_reads();
                    (ErrorAction::BackOff, Duration::ZERO)
                }
                Value::ServerError(e) => {
                    // Read once for the batch, above (always there for an error reply).
                    let action = actions
                        .as_mut()
                        .and_then(|actions| actions.get_mut(position)?.take())
                        .unwrap_or_else(|| {
                            self.classify_reply(e, &node.addr, std::slice::from_ref(&command))
                        });
                    // Whether the node served a later command of the slot (or one may
                    // have run), or a refusal of the slot was answered already (see
                    // below).
                    let held = last_served
                        .as_ref()
                        .and_then(|served| served.get(&meta.slot))
                        .is_some_and(|&at| at > position)
                        || held_slots.contains(&meta.slot);
                    match action {
                        action @ (ErrorAction::ClusterDown | ErrorAction::BackOff) => {
                            if matches!(action, ErrorAction::ClusterDown) {
                                self.signal
                                    .request(crate::topology::RefreshTrigger::ClusterDown);
                            }
                            // The single command's rule, for its first retry. Not
                            // when the node served a later command of the slot: resent,
                            // this one would run after it. And once a command of a slot
                            // is answered with its refusal, the slot's later ones are
                            // too: resent, they would run before it.
                            let delay = if held {
                                None
                            } else {
                                let kind = usize::from(matches!(action, ErrorAction::BackOff));
                                *refusal_delays[kind].get_or_insert_with(|| {
                                    self.refusal_retry(&action, e.code(), 0, &backoff, deadline)
                                })
                            };
                            match delay {
                                Some(delay) => (action, delay),
                                None => {
                                    held_slots.insert(meta.slot);
                                    (ErrorAction::Reply, Duration::ZERO)
                                }
                            }
                        }
                        // So for a `MOVED` (the node took the slot between two reads of
                        // the batch: `MOVED` for `SET k 1`, then `OK` for `SET k 2`):
                        // it ran nothing, and answers so (retryable). The map is patched
                        // all the same. (Not an `ASK`: the keys it sends away had not
                        // moved yet, so no later command of the slot served touched
                        // them.) Nor a script's, which may be its own reply, forged
                        // after it ran (the vetting below tells).
                        ErrorAction::Redirect(Redirect::Moved { slot, addr })
                            if held && !crate::policy::runs_a_script(&command) =>
                        {
                            let to = self.remap(&addr);
                            if knows(&self.routes.load(), &to) {
                                moves.push((slot, to));
                            } else {
                                // Not vetted here (nothing is sent there): a refresh
                                // names the node, if the cluster has it.
                                self.signal
                                    .request(crate::topology::RefreshTrigger::UnknownNode);
                            }
                            held_slots.insert(meta.slot);
                            (ErrorAction::Reply, Duration::ZERO)
                        }
                        action => (action, Duration::ZERO),
                    }
                }
                _ => (ErrorAction::Reply, Duration::ZERO),
            };
            match action {
                ErrorAction::Reply => {
                    let result = match (durability, acked) {
                        (Some(d), Some(acked))
                            if meta.durable_write() && !reply.is_error() && acked < d.replicas =>
                        {
                            Err(Error::NotReplicated {
                                acknowledged: acked,
                                requested: d.replicas,
                            })
                        }
                        _ => Ok(reply),
                    };
                    done.add(meta.name, &result);
                    out.push((meta.index, result));
                }
                ErrorAction::Redirect(r) => {
                    let to = self.remap(r.addr());
                    let why = if knows(&self.routes.load(), &to) {
                        self.redirected(&r, to, &node.addr, meta.slot, &mut moves)
                    } else {
                        Resend::Unvetted(r)
                    };
                    resend.push((Entry { meta, cmd: command }, why));
                }
                ErrorAction::BackOff if to_primary => {
                    let meta = Meta { read: None, ..meta };
                    resend.push((Entry { meta, cmd: command }, Resend::ToPrimary));
                }
                ErrorAction::ClusterDown | ErrorAction::BackOff => {
                    resend.push((Entry { meta, cmd: command }, Resend::AfterBackOff(wait)));
                }
            }
        }
        // A batch that blocked (on a dedicated connection) may have been out past the
        // pipeline's deadline before the node sent it away (`MOVED`, `CLUSTERDOWN`): its
        // resends, and the vetting of their redirects, get that time back, as a single
        // blocking command's do, or they would fail with `Timeout` before blocking at the
        // new owner.
        let deadline = if blocks.is_some() {
            crate::deadline::after(deadline, started.elapsed())
        } else {
            deadline
        };
        if resend
            .iter()
            .any(|(_, why)| matches!(why, Resend::Unvetted(_)))
        {
            resend = self
                .vet_resends(
                    resend, &node.addr, deadline, &mut moves, &mut out, &mut done,
                )
                .await;
        }
        self.note_moves(&moves);
        if replica_unreached && failure.is_some() {
            // None of its reads was sent: to the primary at once, a reroute rather than
            // a retry of the client's budget (as a single read's).
            for (meta, command) in failed_meta.into_iter().zip(failed_cmds) {
                let meta = Meta { read: None, ..meta };
                resend.push((Entry { meta, cmd: command }, Resend::ToPrimary));
            }
        } else if let Some(e) = failure {
            let (meta, cmds) = (failed_meta, failed_cmds);
            if e.may_have_executed() {
                batch_error = Some(e.clone());
            }
            // Our own deadline, a full pool or a refusal is no sign of a changed
            // topology.
            if e.is_node_failure() && !matches!(e, Error::Timeout { .. }) {
                self.signal
                    .request(crate::topology::RefreshTrigger::ConnectionFailure);
            }
            // Every answer hands its commands back; any missing could not be resent.
            let available = cmds.len();
            // A timeout is the deadline's: no time is left to send them again in.
            let timed_out = matches!(e, Error::Timeout { .. });
            // The first command unanswered owns a reply the connection could not
            // decode: resent, it would get the same (see `send_loop`).
            let undecodable = matches!(e, Error::Protocol(_));
            let safe_to_resend = |position: usize, meta: &Meta| {
                position < available
                    && !timed_out
                    && !(undecodable && position == 0)
                    && (!e.may_have_executed() || meta.idempotent)
            };
            // Per slot, where its last command that may have run and is not resent
            // stands: the slot's commands before it are not resent either, though
            // each alone could be. They would run again after it: `SET k a` resent
            // after `APPEND k b` ran undoes the append; `GET k` resent after `INCR k` ran
            // answers for a later place in the pipeline than its own.
            let mut last_kept: HashMap<u16, usize> = HashMap::new();
            for (position, meta) in meta.iter().enumerate() {
                if !safe_to_resend(position, meta) {
                    last_kept.insert(meta.slot, position);
                }
            }
            let runs_before_kept = |position: usize, meta: &Meta| {
                last_kept
                    .get(&meta.slot)
                    .is_some_and(|&last| position < last)
            };
            // One retry of the client's budget for the batch's resends, as for its
            // refusals, and counted as one (only when something is resent, within the
            // deadline): with the budget spent (an outage's retry storm), they end in
            // the error, as a single command's would.
            let resending = meta.iter().enumerate().any(|(position, meta)| {
                safe_to_resend(position, meta) && !runs_before_kept(position, meta)
            });
            let allowed = resending && Instant::now() < deadline && self.spend_retry();
            if allowed {
                let reason = metrics::RetryReason::of_error(&e);
                metrics::retry(reason);
                tracing::debug!(reason = reason.as_str(), error = %e, "resending a batch's commands");
            }
            let mut cmds = cmds.into_iter();
            for (position, meta) in meta.into_iter().enumerate() {
                let resend_it = allowed
                    && safe_to_resend(position, &meta)
                    && !runs_before_kept(position, &meta);
                match cmds.next() {
                    Some(command) if resend_it => {
                        let meta = Meta {
                            after_failure: e.may_have_executed(),
                            ..meta
                        };
                        resend.push((Entry { meta, cmd: command }, Resend::Now));
                    }
                    _ => {
                        let result = Err(e.clone());
                        done.add(meta.name, &result);
                        out.push((meta.index, result));
                    }
                }
            }
        }
        done.count_on(&node, elapsed);
        if resend.is_empty() {
            return out;
        }
        // What to resend, by slot, in the order added: dependent writes (`DEL k`, then
        // `RPUSH k`) rely on the order within a slot. Slots go in parallel.
        // Per slot: whether every command of it got `MOVED` (or goes to the primary), and
        // how long it waits first.
        let mut by_slot: Vec<SlotResend> = Vec::new();
        let mut slot_at: HashMap<u16, usize> = HashMap::new();
        for (entry, why) in resend {
            let wait = match why {
                Resend::AfterBackOff(wait) => wait,
                _ => Duration::ZERO,
            };
            match slot_at.entry(entry.meta.slot) {
                hash_map::Entry::Occupied(at) => by_slot[*at.get()].add(entry, &why, wait),
                hash_map::Entry::Vacant(at) => {
                    at.insert(by_slot.len());
                    by_slot.push(SlotResend::new(entry, why, wait));
                }
            }
        }
        // A slot that moved whole (a resharding) is one batch again, to its new owner
        // (the map learned it from the `MOVED`): one write, not one round trip each. So
        // are the reads of a slot that its replica could not serve, to the primary, and
        // the commands of a migrating slot whose keys moved on (`ASK`), to the importing
        // node, each after `ASKING`.
        let mut batches: Vec<(Arc<Node>, bool, Vec<Entry>)> = Vec::new();
        let mut one_by_one: Vec<(Duration, Vec<Entry>)> = Vec::new();
        let routes = self.routes.load_full();
        let durability = self.config.durability;
        let may_rebatch = redirects < self.config.max_redirects.min(MAX_REBATCHES);
        for SlotResend {
            slot,
            to,
            wait,
            entries,
        } in by_slot
        {
            // Reads of one pipeline share its policy; one write among them takes the
            // slot's batch to the primary.
            let read = entries
                .iter()
                .map(|e| e.meta.read)
                .reduce(|a, b| a.and(b))
                .flatten();
            let target = match to {
                Some(Resend::Moved | Resend::ToPrimary) if may_rebatch => self
                    .pick_for_slot(&routes, slot, read)
                    .ok()
                    .map(|owner| (Arc::clone(owner), false)),
                // The single-command path gives a blocking command or a durable write
                // what it needs at the importing node too.
                Some(Resend::Ask(addr))
                    if may_rebatch
                        && !entries.iter().any(|e| e.meta.needs_own_path(durability)) =>
                {
                    Some((self.registry.get(&addr, false), true))
                }
                _ => None,
            };
            match target {
                Some((node, asking)) => match batches
                    .iter_mut()
                    .find(|(n, a, _)| Arc::ptr_eq(n, &node) && *a == asking)
                {
                    Some((.., batch)) => batch.extend(entries),
                    None => batches.push((node, asking, entries)),
                },
                None => one_by_one.push((wait, entries)),
            }
        }
        let moved = batches.into_iter().map(|(node, asking, entries)| {
            self.run_batch_boxed(node, entries, deadline, redirects + 1, asking)
        });
        // The others (`TRYAGAIN`, a lost connection, a slot moving on and on, ...) one
        // after another, each through the single-command path, so that however many
        // retries and backoffs one needs, the next waits for it.
        let resent = one_by_one.into_iter().map(|(wait, entries)| {
            let batch_error = batch_error.clone();
            async move {
                // The node asked to wait (`TRYAGAIN`, `LOADING`, ...): the slot's commands
                // wait once, together, as a single command would.
                if !wait.is_zero() && crate::deadline::from_now(wait) < deadline {
                    tokio::time::sleep(wait).await;
                }
                let mut replies = Vec::with_capacity(entries.len());
                for Entry { meta, cmd } in entries {
                    // Resent after a batch that may have run: a later "not executed"
                    // (an error, or a refusal once the retries are spent) must not hide
                    // that the first attempt may have. Only for those commands: one
                    // resent after `TRYAGAIN` or `ASK` did not run before.
                    let first = batch_error.as_ref().filter(|_| meta.after_failure);
                    let sent = first.map(|_| cmd.clone());
                    let reply = if meta.needs_own_path(durability) {
                        let read_from = meta.read.unwrap_or(ReadFrom::Primary);
                        self.execute(cmd, Instant::now(), deadline, read_from).await
                    } else {
                        let target = Target::Slot {
                            slot: meta.slot,
                            read: meta.read,
                        };
                        self.send_named(cmd.into(), meta.name, target, meta.idempotent, deadline)
                            .await
                    };
                    let reply = match (reply, first, sent) {
                        (Err(e), Some(first), _) if !e.may_have_executed() => Err(first.clone()),
                        (Ok(Value::ServerError(e)), Some(first), Some(sent))
                            if self.classify_reply(&e, "", std::slice::from_ref(&sent))
                                != ErrorAction::Reply =>
                        {
                            Err(first.clone())
                        }
                        (reply, ..) => reply,
                    };
                    replies.push((meta.index, reply));
                }
                replies
            }
        });
        let (moved, resent) = futures_util::future::join(
            futures_util::future::join_all(moved),
            futures_util::future::join_all(resent),
        )
        .await;
        out.extend(moved.into_iter().chain(resent).flatten());
        out
    }

    /// Why a command grouped under `grouped_under`'s slot, redirected to `to` (remapped),
    /// a node the map lists or the cluster vouched for, goes again; a `MOVED` joins
    /// `moves`, the slot map's patches.
    fn redirected(
        &self,
        redirect: &Redirect,
        to: String,
        from: &str,
        grouped_under: u16,
        moves: &mut Vec<(u16, String)>,
    ) -> Resend {
        match redirect {
            // For another slot than the command's (its keys unknown to the client,
            // routed by its first argument): regrouped under its slot, it would go back
            // to the same node again and again; the single-command path sends it there
            // once more and follows the redirect's word at the second `MOVED`.
            Redirect::Moved { slot, addr } if *slot != grouped_under => {
                tracing::debug!(slot, from, to = %addr, "MOVED redirect for another slot");
                moves.push((*slot, to));
                Resend::Now
            }
            Redirect::Moved { slot, addr } => {
                tracing::debug!(slot, from, to = %addr, "MOVED redirect");
                moves.push((*slot, to));
                Resend::Moved
            }
            Redirect::Ask { .. } => {
                self.note_redirect(redirect, from);
                Resend::Ask(to)
            }
        }
    }

    /// `resend` with its redirects to nodes the map lacks vetted
    /// ([`Inner::vet_redirect`]), each address once: a command goes where the cluster
    /// vouches for, in its place; one whose redirect is refused ends with that error,
    /// not sent again (a script that forged it ran).
    async fn vet_resends(
        &self,
        resend: Vec<(Entry, Resend)>,
        from: &str,
        deadline: Instant,
        moves: &mut Vec<(u16, String)>,
        out: &mut Vec<(usize, Result<Value>)>,
        done: &mut Tally,
    ) -> Vec<(Entry, Resend)> {
        let mut verdicts: Vec<(String, Result<String>)> = Vec::new();
        for (_, why) in &resend {
            if let Resend::Unvetted(r) = why {
                if !verdicts.iter().any(|(addr, _)| addr == r.addr()) {
                    let verdict = self.vet_redirect(r, from, deadline).await;
                    verdicts.push((r.addr().to_owned(), verdict));
                }
            }
        }
        let mut kept = Vec::with_capacity(resend.len());
        for (entry, why) in resend {
            let Resend::Unvetted(r) = why else {
                kept.push((entry, why));
                continue;
            };
            let verdict = verdicts.iter().find(|(addr, _)| addr == r.addr());
            match verdict.map(|(_, verdict)| verdict) {
                Some(Ok(to)) => {
                    let why = self.redirected(&r, to.clone(), from, entry.meta.slot, moves);
                    kept.push((entry, why));
                }
                Some(Err(e)) => {
                    let result = Err(e.clone());
                    done.add(entry.meta.name, &result);
                    out.push((entry.meta.index, result));
                }
                // Cannot happen: every address was vetted above.
                None => {
                    let result = Err(Error::Protocol("a redirect left unvetted".into()));
                    done.add(entry.meta.name, &result);
                    out.push((entry.meta.index, result));
                }
            }
        }
        kept
    }

    /// Sends a batch on a dedicated connection to `node`, followed by one `WAIT` when
    /// `durability` asks for it. Returns the batch's replies (without `WAIT`'s), its
    /// commands back, how many replicas acknowledged its writes, and with a failure the
    /// replies that came before it (none with `durability`: without `WAIT`'s answer no
    /// write is known to be durable).
    async fn run_batch_on_lease(
        &self,
        node: &Arc<Node>,
        mut cmds: Vec<Cmd>,
        durability: Option<Durability>,
        blocking: bool,
        lease_deadline: Instant,
        reply_deadline: Instant,
    ) -> (Result<Vec<Value>>, Vec<Cmd>, Option<u32>, Vec<Value>) {
        let mut lease = match self.lease(node, lease_deadline, blocking).await {
            Ok(lease) => lease,
            // Nothing was sent. (If this batch was the breaker's probe and the lease
            // says nothing of the node, its `Admitted` hands over.)
            Err(e) => {
                self.record_lease_failure(node, &e);
                return (Err(e), cmds, None, Vec::new());
            }
        };
        // The node answered (the lease's connection was just opened or checked with a
        // `PING`): recorded now for a batch that blocks, as for a single blocking
        // command. As the breaker's probe, a `BLPOP q 30` would keep a recovered node
        // failing fast for its block time.
        if blocking {
            self.record(node, None);
        }
        let count = cmds.len();
        if let Some(d) = durability {
            cmds.push(cmd("WAIT").arg(d.replicas).arg(d.wait_millis()));
        }
        // The lease discards its connection itself when the request fails.
        let reply_due = lease.reply_due(reply_deadline);
        let answer = lease.dispatch(Cmds::Many(cmds), reply_due).await;
        self.record_result(node, &answer.result);
        let mut cmds = answer.cmds.into_vec();
        if cmds.len() > count {
            cmds.truncate(count);
        }
        match answer.result {
            Ok(replies) => {
                let mut replies = replies.into_vec();
                let acked = match durability {
                    Some(_) if replies.len() > count => Some(replicas_acked(replies.pop())),
                    _ => None,
                };
                (Ok(replies), cmds, acked, Vec::new())
            }
            Err(e) if durability.is_none() => (Err(e), cmds, None, answer.received),
            Err(e) => (Err(e), cmds, None, Vec::new()),
        }
    }

    /// Runs `cmds` as one `MULTI`/`EXEC` transaction on the node of their slot; the reply
    /// is `EXEC`'s: an array of replies, or nil when a watched key changed.
    pub(crate) async fn execute_transaction(
        &self,
        cmds: Vec<Cmd>,
        deadline: Instant,
    ) -> Result<Value> {
        let mut slot: Option<u16> = None;
        let mut slots = Vec::new();
        let mut writes = false;
        for command in &cmds {
            let info = self.command_info(command, deadline).await;
            writes |= info.is_some_and(|i| i.is_durable_write());
            match plan::plan(command, info)? {
                Plan::Slot { slot: s, .. } => {
                    if !slots.contains(&s) {
                        slots.push(s);
                    }
                    slot.get_or_insert(s);
                }
                Plan::Split { parts, .. } => {
                    for p in parts {
                        if !slots.contains(&p.slot) {
                            slots.push(p.slot);
                        }
                    }
                }
                // Keyless commands run on whichever node the keys choose.
                Plan::AnyPrimary => {}
                Plan::FanOut { .. } => plan::fan_out_in_transaction(command)?,
            }
        }
        if slots.len() > 1 {
            return Err(Error::CrossSlot { slots });
        }
        // One request, for the retry budget: it is retried as one.
        self.requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let (Some(durability), Some(slot), true) = (self.config.durability, slot, writes) {
            // On a connection of its own, where `WAIT` counts this transaction's writes
            // alone. Resent, as on the shared connection, only when refused unrun.
            let landing = super::Landing::default();
            let payload = super::execute::Payload::Transaction(cmds);
            let durable = self.send_durable(payload, slot, durability, deadline, &landing, false);
            let (reply, acked) = self
                .observed(
                    metrics::TRANSACTION_COMMAND,
                    Some(slot),
                    |(v, _)| v,
                    &landing,
                    durable,
                )
                .await?;
            if matches!(reply, Value::Array(_)) && acked < durability.replicas {
                return Err(Error::NotReplicated {
                    acknowledged: acked,
                    requested: durability.replicas,
                });
            }
            return Ok(reply);
        }
        let target = match slot {
            Some(slot) => Target::Slot { slot, read: None },
            None => Target::AnyPrimary,
        };
        // EXEC runs the commands or none of them, and a transaction refused while
        // queueing is discarded, so retrying the whole is safe only when it was not
        // written: `idempotent` is false.
        self.send(
            super::execute::Payload::Transaction(cmds),
            target,
            false,
            deadline,
        )
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn asking_is_interleaved_and_taken_out_again() {
        let sent = with_asking(vec![cmd("GET").arg("a"), cmd("GET").arg("b")]);
        let names: Vec<&[u8]> = sent.iter().map(Cmd::name).collect();
        assert_eq!(names, [&b"ASKING"[..], b"GET", b"ASKING", b"GET"]);
        let back: Vec<Vec<u8>> = without_asking(sent)
            .iter()
            .map(|c| c.arg_at(1).unwrap().to_vec())
            .collect();
        assert_eq!(back, [b"a".to_vec(), b"b".to_vec()]);

        let ok = || Value::Simple("OK".into());
        let refused = Value::ServerError(crate::ServerError::new("NOPERM no asking"));
        let moved = Value::ServerError(crate::ServerError::new("MOVED 1 127.0.0.1:7000"));
        let replies = vec![ok(), Value::Int(1), refused.clone(), moved];
        // A refused `ASKING` answers for its command: the `MOVED` after it only says the
        // node did not take the command as asked.
        assert_eq!(replies_after_asking(replies), [Value::Int(1), refused]);
        // Received before a failure: an `ASKING` answered without its command's reply
        // drops out, and so does its command.
        assert_eq!(
            without_asking(vec![ok(), Value::Int(1), ok()]),
            [Value::Int(1)]
        );
    }
}
