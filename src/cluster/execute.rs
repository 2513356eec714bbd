//! Sending a planned command: the redirect and retry loop, split commands, fan-out.
//!
//! The retry rule, in one place: a request that was never written (connect failed, the
//! connection died before the write) is always safe to send again; one that may have
//! reached the server (the connection died after the write) is sent again only when the
//! command is read-only or known idempotent; error replies that mean "not executed"
//! (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, `LOADING`, `MASTERDOWN`) are followed or
//! retried. Every retry and redirect happens within the request's one deadline.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::time::Instant;
use tracing::field::Empty;
use tracing::Instrument as _;

use crate::cluster::node::{lock, Admitted, Node};
use crate::cluster::plan::{self, Combine, FanOutTo, Part, Plan, SplitKind};
use crate::cluster::refresh::refused_unrun;
use crate::cluster::routes::Routes;
use crate::cluster::{Inner, ReadFrom};
use crate::cmd::{self, cmd, Cmd};
use crate::conn::{Answer, Cmds, NodeConnection, Outcome, Queued, Replies};
use crate::error::{Error, Result, ServerError};
use crate::observe::metrics::{self as metrics, InFlight, RetryReason, Status};
use crate::policy::{
    classify, replica_cannot_serve, runs_a_script, servers_own_refusal, Backoff, ErrorAction,
    Transition,
};
use crate::resp::Value;
use crate::slot::Redirect;
use crate::topology::RefreshTrigger;

/// Most commands learned from `COMMAND INFO` (each entry lives as long as the process):
/// far more than any server's module commands, and a bound however the server answers.
const MAX_LEARNED_COMMANDS: usize = 1024;

/// Longest command name looked up with `COMMAND INFO`: real ones, modules' included,
/// are a few tens of bytes.
const MAX_COMMAND_NAME_LEN: usize = 128;

/// How long after a `COMMAND INFO` lookup went unanswered no other is tried: a user
/// never allowed to ask would otherwise pay a round trip more on every such command.
const LOOKUP_QUIET: std::time::Duration = std::time::Duration::from_secs(1);

/// The deadline of a blocking command that asked to block until answered (`BLPOP k 0`):
/// in practice forever; dropping the request's future ends it sooner.
pub(crate) const UNTIL_ANSWERED: std::time::Duration =
    std::time::Duration::from_secs(365 * 24 * 3600);

/// Sleeps a retry's backoff. The timer is boxed: it is a few hundred bytes that every
/// request's future would otherwise carry, and copy, though few requests ever retry.
async fn back_off(delay: std::time::Duration) {
    Box::pin(tokio::time::sleep(delay)).await;
}

/// Where one request is sent.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// The node serving the slot: its primary, or for a read (`read`, the request's
    /// [`ReadFrom`]) the node that says.
    Slot { slot: u16, read: Option<ReadFrom> },
    /// This node, whatever the slot map says.
    Node(Arc<str>),
    /// Any primary.
    AnyPrimary,
}

impl Inner {
    /// Plans and sends `command`; the reply may be an error reply, which the caller turns
    /// into an error.
    ///
    /// Everything up to the reply is done when this is called, not when the future is
    /// first polled, so that the future holds little more than the reply's receiver
    /// (see [`Inner::begin`]).
    ///
    /// `started` is when the caller took it up (for the latency metric): a clock read
    /// fewer per request than reading it again here.
    pub(crate) fn execute(
        &self,
        command: Cmd,
        started: Instant,
        deadline: Instant,
        read_from: ReadFrom,
    ) -> Finish<'_> {
        let begun = self.begin_command(command, started, deadline, read_from, false);
        self.finish(begun)
    }

    /// [`Inner::execute`] for a command the caller declared safe to run twice: resent
    /// after a lost connection even when it may have run
    /// ([`crate::ClusterClient::query_idempotent`]).
    pub(crate) fn execute_idempotent(
        &self,
        command: Cmd,
        started: Instant,
        deadline: Instant,
        read_from: ReadFrom,
    ) -> Finish<'_> {
        let begun = self.begin_command(command, started, deadline, read_from, true);
        self.finish(begun)
    }

    /// The synchronous start of [`Inner::execute`]: a command of the built-in table for
    /// one slot (or any primary) goes to [`Inner::begin`]; the rest (learned, blocking,
    /// durable, split and fanned-out commands) run in a boxed future.
    fn begin_command(
        &self,
        command: Cmd,
        started: Instant,
        deadline: Instant,
        read_from: ReadFrom,
        declared_idempotent: bool,
    ) -> Begun<'_> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let Some(info) = cmd::lookup(&command) else {
            return Begun::Other(Box::pin(async move {
                let info = self.command_info(&command, deadline).await;
                let plan = plan::plan(&command, info)?;
                self.execute_planned(
                    command,
                    info,
                    plan,
                    deadline,
                    read_from,
                    declared_idempotent,
                )
                .await
            }));
        };
        let plan = match plan::plan(&command, Some(info)) {
            Ok(plan) => plan,
            Err(e) => return Begun::Done(Err(e)),
        };
        let durable = self.config.durability.is_some() && info.is_durable_write();
        let target = match plan {
            _ if durable || cmd::blocks(&command, info) => None,
            Plan::Slot { slot, read_only } => Some(Target::Slot {
                slot,
                read: read_only.then_some(read_from),
            }),
            Plan::AnyPrimary => Some(Target::AnyPrimary),
            Plan::Split { .. } | Plan::FanOut { .. } => None,
        };
        let Some(target) = target else {
            return Begun::Other(Box::pin(self.execute_planned(
                command,
                Some(info),
                plan,
                deadline,
                read_from,
                declared_idempotent,
            )));
        };
        let name = metrics::command_label(Some(info));
        let idempotent = declared_idempotent || cmd::may_resend(&command, info);
        self.begin(command.into(), name, target, idempotent, started, deadline)
    }

    /// Sends `command` to the node at `addr`, a node of the topology, whatever its keys
    /// say ([`crate::ClusterClient::query_node`]).
    pub(crate) async fn execute_on(
        &self,
        addr: &str,
        command: Cmd,
        deadline: Instant,
    ) -> Result<Value> {
        self.requests.fetch_add(1, Ordering::Relaxed);
        let node: Arc<str> = {
            let routes = self.routes.load();
            // As listed by `known_nodes()`, or as the node announces itself.
            let remapped = self.remap(addr);
            if knows(&routes, addr) {
                Arc::from(addr)
            } else if knows(&routes, &remapped) {
                Arc::from(remapped.as_ref())
            } else {
                return Err(Error::Config(format!(
                    "{addr} is not a node of the cluster's topology (see known_nodes())"
                )));
            }
        };
        let known = cmd::lookup(&command);
        // Refused before anything is asked of the server (a `COMMAND INFO`).
        plan::refuse_unsendable(&command, known)?;
        let info = match known {
            Some(info) => Some(info),
            None => self.command_info(&command, deadline).await,
        };
        if info.is_some_and(|i| cmd::blocks(&command, i)) {
            return Err(Error::Config(
                "a blocking command goes where its keys are: use query(), not query_node()".into(),
            ));
        }
        let name = metrics::command_label(info);
        let idempotent = info.is_some_and(|i| cmd::may_resend(&command, i));
        self.send_named(
            command.into(),
            name,
            Target::Node(node),
            idempotent,
            deadline,
        )
        .await
    }

    /// [`Inner::execute`] for a planned command, whatever its kind.
    async fn execute_planned(
        &self,
        command: Cmd,
        info: Option<&'static cmd::CommandInfo>,
        plan: Plan,
        deadline: Instant,
        read_from: ReadFrom,
        declared_idempotent: bool,
    ) -> Result<Value> {
        let name = metrics::command_label(info);
        let idempotent = declared_idempotent || info.is_some_and(|i| cmd::may_resend(&command, i));
        if info.is_some_and(|i| cmd::blocks(&command, i)) {
            // Blocking commands get a connection of their own and the time they ask for.
            let lease_deadline = deadline;
            let deadline = super::dedicated::blocking_reply_deadline(&command, deadline);
            let slot = match plan {
                Plan::Slot { slot, .. } => Some(slot),
                _ => None,
            };
            let target = slot.map_or(Target::AnyPrimary, |slot| Target::Slot { slot, read: None });
            let landing = super::Landing::default();
            let blocking = self.send_blocking(command, target, lease_deadline, deadline, &landing);
            return self.observed(name, slot, |v| v, &landing, blocking).await;
        }
        if let (Some(durability), Plan::Slot { slot, .. }) = (self.config.durability, &plan) {
            if info.is_some_and(|i| i.is_durable_write()) {
                let landing = super::Landing::default();
                let durable = self.send_durable(
                    Payload::One(command),
                    *slot,
                    durability,
                    deadline,
                    &landing,
                    false,
                );
                let (reply, acked) = self
                    .observed(name, Some(*slot), |(v, _)| v, &landing, durable)
                    .await?;
                if !reply.is_error() && acked < durability.replicas {
                    return Err(Error::NotReplicated {
                        acknowledged: acked,
                        requested: durability.replicas,
                    });
                }
                return Ok(reply);
            }
        }
        match plan {
            Plan::Slot { slot, read_only } => {
                self.send_named(
                    command.into(),
                    name,
                    Target::Slot {
                        slot,
                        read: read_only.then_some(read_from),
                    },
                    idempotent,
                    deadline,
                )
                .await
            }
            Plan::AnyPrimary => {
                self.send_named(
                    command.into(),
                    name,
                    Target::AnyPrimary,
                    idempotent,
                    deadline,
                )
                .await
            }
            Plan::Split { kind, parts } => {
                self.send_split(kind, parts, name, idempotent, deadline, read_from)
                    .await
            }
            Plan::FanOut { to, combine } => {
                self.send_fan_out(&command, info, to, combine, idempotent, deadline)
                    .await
            }
        }
    }

    /// The table entry for `command`: built in, or learned from the server once for
    /// commands the table lacks (modules).
    pub(crate) async fn command_info(
        &self,
        command: &Cmd,
        deadline: Instant,
    ) -> Option<&'static cmd::CommandInfo> {
        if let Some(info) = cmd::lookup(command) {
            return Some(info);
        }
        // Boxed: asking the server is a whole request, whose future would otherwise sit
        // (unused) in every request's future.
        Box::pin(self.learn_command_info(command, deadline)).await
    }

    /// [`Inner::command_info`] for a command the built-in table lacks.
    async fn learn_command_info(
        &self,
        command: &Cmd,
        deadline: Instant,
    ) -> Option<&'static cmd::CommandInfo> {
        // No command has such a name: asking the server would send it (one over 512 MiB
        // would cost the shared connection), and the plan refuses or routes it anyway.
        if command.name().len() > MAX_COMMAND_NAME_LEN {
            return None;
        }
        if let Some(info) = self.learned(command) {
            return info;
        }
        let name = command.name().to_ascii_lowercase();
        if self.learned_lock().len() >= MAX_LEARNED_COMMANDS {
            return None;
        }
        let failed_at = || super::node::lock(&self.lookup_failed_at);
        if failed_at().is_some_and(|at| at.elapsed() < LOOKUP_QUIET) {
            return None;
        }
        let reply = self
            .send(
                cmd("COMMAND").arg("INFO").arg(&name[..]),
                Target::AnyPrimary,
                true,
                deadline,
            )
            .await;
        let info = match reply {
            // One entry: the command's, or nil when the server does not know it either;
            // remember that too.
            Ok(Value::Array(mut entries)) if entries.len() == 1 => {
                match cmd::parse_command_info(&entries.remove(0)) {
                    Ok(info) => cmd::intern(info),
                    Err(_) => None,
                }
            }
            // Could not ask (a user without `+command`, a busy or loading node, no
            // connection): route by the fallback rule now, ask again after a while.
            // Were it cached, a refusal would hide the command's flags for the life of
            // the client: a module's write sent without `WAIT` under `durable_writes`,
            // its reads never sent to replicas.
            Ok(_) | Err(_) => {
                *failed_at() = Some(std::time::Instant::now());
                return None;
            }
        };
        let mut learned = self.learned_lock();
        // Bounded by the commands the server knows, and each learned once.
        if !learned.iter().any(|(n, _)| *n == name) {
            learned.push((name, info));
        }
        info.map(|info| with_subcommand(command, info))
    }

    /// The table entry for `command` known without asking the server: built in, or
    /// learned before.
    fn known_command_info(&self, command: &Cmd) -> Option<&'static cmd::CommandInfo> {
        cmd::lookup(command).or_else(|| self.learned(command).flatten())
    }

    /// What the server said of `command` when asked before (its entry, or `None` when it
    /// does not know it either); `None` when it was not asked.
    fn learned(&self, command: &Cmd) -> Option<Option<&'static cmd::CommandInfo>> {
        let name = command.name().to_ascii_lowercase();
        let learned = self.learned_lock();
        let (_, info) = learned.iter().find(|(n, _)| *n == name)?;
        Some(info.map(|info| with_subcommand(command, info)))
    }

    /// [`classify`] for an error reply to `cmds`: a `MOVED` or `ASK` that none of them
    /// can be answered with ([`plan::may_be_redirected`]: a script's
    /// `redis.error_reply("MOVED ...")`) is the reply, and the map keeps its routes. So
    /// is a refusal (`TRYAGAIN`, `CLUSTERDOWN`, `LOADING`, `MASTERDOWN`) to a script or a
    /// function in other words than the server's own: the script wrote it, after
    /// whatever it did, and sent again it would run again.
    pub(crate) fn classify_reply(
        &self,
        error: &ServerError,
        reached: &str,
        cmds: &[Cmd],
    ) -> ErrorAction {
        if let Some(redirect) = crate::slot::parse_redirect(error, reached) {
            let slot = redirect.slot();
            let believed = cmds
                .iter()
                .any(|c| plan::may_be_redirected(c, self.known_command_info(c), slot));
            if !believed {
                tracing::debug!(
                    slot,
                    from = reached,
                    "a redirect for a slot the command's keys are not in: returned as the reply"
                );
                return ErrorAction::Reply;
            }
        }
        let action = classify(error, reached);
        let refusal = matches!(action, ErrorAction::ClusterDown | ErrorAction::BackOff);
        if refusal && !servers_own_refusal(error) && cmds.iter().any(runs_a_script) {
            tracing::debug!(
                code = error.code(),
                "a refusal a script or function wrote: returned as the reply"
            );
            return ErrorAction::Reply;
        }
        action
    }

    fn learned_lock(
        &self,
    ) -> std::sync::MutexGuard<'_, Vec<(Vec<u8>, Option<&'static cmd::CommandInfo>)>> {
        self.learned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// What a request fails with while no topology is known (a lazily connected client
    /// whose seeds have not answered): why the last discovery failed.
    fn no_topology_error(&self) -> Error {
        lock(&self.signal.discovery_error)
            .clone()
            .unwrap_or_else(|| Error::ClusterDown("no topology yet: no seed has answered".into()))
    }

    /// Picks the node for `target`, avoiding replicas when `primary_only`.
    pub(crate) fn pick(&self, target: &Target, primary_only: bool) -> Result<Arc<Node>> {
        let routes = self.routes.load();
        match target {
            Target::Node(addr) => Ok(self.registry.get(addr, false)),
            Target::AnyPrimary => {
                let n = routes.primaries.len();
                if n == 0 {
                    self.signal.request(RefreshTrigger::Uncovered);
                    return Err(self.no_topology_error());
                }
                // A primary whose breaker turns requests away is passed over while
                // another takes them: any primary serves a keyless command.
                let turn = self.registry.next_turn();
                let nth = |i: usize| &routes.primaries[turn.wrapping_add(i) % n];
                let node = (0..n)
                    .map(nth)
                    .find(|p| p.takes_requests())
                    .unwrap_or(nth(0));
                Ok(Arc::clone(node))
            }
            Target::Slot { slot, read } => self
                .pick_for_slot(&routes, *slot, read.filter(|_| !primary_only))
                .map(Arc::clone),
        }
    }

    /// The node of `slot` in `routes`: its primary, or for a read (`read`, the request's
    /// [`ReadFrom`]) the node that chooses. Borrowed from the snapshot, so that a pipeline
    /// routes all its commands against one snapshot without a reference count per
    /// command.
    pub(crate) fn pick_for_slot<'r>(
        &self,
        routes: &'r Routes,
        slot: u16,
        read: Option<ReadFrom>,
    ) -> Result<&'r Arc<Node>> {
        let Some(shard) = routes.map.shard_index(slot) else {
            // A read a replica may serve, while the slot's primary is flagged failed
            // and no replica took over yet: the shard's replicas (the refreshes run every
            // second meanwhile).
            if let Some(replica) = read
                .filter(|r| *r != ReadFrom::Primary)
                .and_then(|_| down_replica(routes, slot))
            {
                return Ok(replica);
            }
            self.signal.request(RefreshTrigger::Uncovered);
            if routes.primaries.is_empty() {
                return Err(self.no_topology_error());
            }
            return Err(Error::ClusterDown(format!(
                "slot {slot} is not served by any node"
            )));
        };
        let primary = &routes.primaries[shard];
        let replicas = &routes.replicas[shard];
        let Some(read_from) = read.filter(|_| !replicas.is_empty()) else {
            return Ok(primary);
        };
        let turn = routes.turns[shard].fetch_add(1, Ordering::Relaxed);
        // A replica that refused a read lately (`LOADING`, `MASTERDOWN`) is passed over.
        let serving = |node: &&Arc<Node>| node.serves_reads();
        let replica_from = |start: usize| serving_from(replicas, start).unwrap_or(primary);
        // A primary whose breaker is open is no candidate for a read a replica may
        // serve: the read would fail fast, or spend its retries, while its shard's
        // replicas answer (between a primary's death and the failover, say).
        let primary_takes = primary.takes_requests();
        Ok(match read_from {
            ReadFrom::Primary => primary,
            ReadFrom::RoundRobin => match turn % (replicas.len() + 1) {
                0 if primary_takes => primary,
                0 => replica_from(0),
                i => replica_from(i - 1),
            },
            ReadFrom::LowestLatency => {
                let candidates = std::iter::once(primary)
                    .filter(|_| primary_takes)
                    .chain(replicas.iter().filter(serving));
                match fastest(candidates, turn) {
                    Some(node) => node,
                    None => replica_from(turn),
                }
            }
            _ => replica_from(turn),
        })
    }

    /// Sends one command to one target, following redirects and retrying what is safe,
    /// until `deadline`.
    pub(crate) async fn send(
        &self,
        payload: impl Into<Payload>,
        target: Target,
        idempotent: bool,
        deadline: Instant,
    ) -> Result<Value> {
        let payload: Payload = payload.into();
        let name = match &payload {
            Payload::One(c) => metrics::command_label(cmd::lookup(c)),
            Payload::Transaction(_) => metrics::TRANSACTION_COMMAND,
        };
        self.send_named(payload, name, target, idempotent, deadline)
            .await
    }

    /// [`Inner::send`] for a command whose metrics label (`name`) is known: runs it in
    /// its `redis_command` span and counts its outcome on the node that gave it.
    ///
    /// Like [`Inner::execute`], it starts the request when called (see
    /// [`Inner::begin`]).
    pub(crate) fn send_named(
        &self,
        payload: Payload,
        name: &'static str,
        target: Target,
        idempotent: bool,
        deadline: Instant,
    ) -> Finish<'_> {
        let started = Instant::now();
        let begun = self.begin(payload, name, target, idempotent, started, deadline);
        self.finish(begun)
    }

    /// Starts a request without awaiting anything. Nearly always the node `target`
    /// picks has a quiet breaker and an open connection: then the request is queued on
    /// it here, and [`Inner::finish`] only awaits the reply. A request's future is
    /// copied at every layer on its way down, so keeping it small matters; everything
    /// else (no connection yet, a node in trouble, a full queue, a subscriber that
    /// wants the `redis_command` span) runs the redirect and retry loop, boxed.
    fn begin(
        &self,
        payload: Payload,
        name: &'static str,
        target: Target,
        idempotent: bool,
        started: Instant,
        deadline: Instant,
    ) -> Begun<'_> {
        let slot = match target {
            Target::Slot { slot, .. } => Some(slot),
            _ => None,
        };
        let command = Command {
            name,
            span: command_span(name, slot),
            started: started.into_std(),
            _in_flight: InFlight::start(1),
        };
        let payload = if command.span.is_disabled() {
            let kind = payload.kind();
            match self.submit_fast(payload, &target, deadline) {
                Fast::Queued(node, conn, queued) => {
                    return Begun::Queued(Pending {
                        node,
                        conn,
                        queued,
                        kind,
                        target,
                        idempotent,
                        deadline,
                        command,
                    })
                }
                Fast::Declined(payload, picked) => (payload, picked),
                Fast::Failed(e) => return Begun::Done(command.done(Err(e), Attempts::default())),
            }
        } else {
            (payload, None)
        };
        let (payload, picked) = payload;
        let start = Start::Send(payload);
        let attempts = Attempts {
            picked,
            ..Attempts::default()
        };
        Begun::Other(Box::pin(
            self.run_loop(start, attempts, target, idempotent, deadline, command),
        ))
    }

    /// Runs a request on dedicated connections (blocking commands, durable writes,
    /// `WATCH` and what follows it) in its span, and counts it on the node it went to
    /// last, which `request` notes in `landing` (none: no node was picked).
    pub(crate) async fn observed<T>(
        &self,
        name: &'static str,
        slot: Option<u16>,
        reply: fn(&T) -> &Value,
        landing: &super::Landing,
        request: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let span = command_span(name, slot);
        let started = std::time::Instant::now();
        let in_flight = InFlight::start(1);
        let result = request.instrument(span.clone()).await;
        drop(in_flight);
        let node = landing.take();
        if let Some(node) = &node {
            span.record("node", &*node.addr);
        }
        let status = Status::of(result.as_ref().map(reply));
        command_done(&span, node.as_deref(), name, status, started);
        result
    }

    /// Waits for the request [`Inner::begin`] started.
    fn finish<'a>(&'a self, begun: Begun<'a>) -> Finish<'a> {
        Finish { inner: self, begun }
    }

    /// The outcome of a request queued on the fast path: a final reply ends it, and
    /// is returned; any other outcome is handed back, for [`Inner::go_on`]. Works on the
    /// pending request in place: moving it is most of what an answer would cost.
    fn answered(
        &self,
        pending: &Pending,
        outcome: Outcome,
    ) -> std::result::Result<Result<Value>, Outcome> {
        self.record_on(
            &pending.node,
            &pending.conn,
            &outcome,
            pending.command.started,
        );
        match outcome {
            Ok(mut replies) if pending.kind.is_final(&replies) => {
                // Exactly one reply, said `is_final`.
                let result = replies
                    .pop()
                    .ok_or_else(|| Error::Protocol("no reply".into()));
                Ok(pending.command.end(result, Some(&pending.node), None))
            }
            outcome => Err(outcome),
        }
    }

    /// Goes on in the redirect and retry loop from the first attempt's outcome, which
    /// [`Inner::answered`] found not final.
    fn go_on(&self, pending: Pending, outcome: Outcome) -> Begun<'_> {
        let Pending {
            node,
            conn: _,
            mut queued,
            kind,
            target,
            idempotent,
            deadline,
            command,
        } = pending;
        let attempts = Attempts {
            picked: None,
            last_node: Some(node),
            executed: None,
        };
        // A single command, or `ASKING` and one: no reply before a failure matters.
        let answer = Answer {
            result: outcome,
            cmds: queued.take_cmds(),
            received: Vec::new(),
        };
        let start = Start::Answered(answer, kind);
        Begun::Other(Box::pin(
            self.run_loop(start, attempts, target, idempotent, deadline, command),
        ))
    }

    /// The redirect and retry loop of one request, in its span, and its end.
    async fn run_loop(
        &self,
        start: Start,
        mut attempts: Attempts,
        target: Target,
        idempotent: bool,
        deadline: Instant,
        command: Command,
    ) -> Result<Value> {
        let span = &command.span;
        let result = self
            .send_loop(start, target, idempotent, deadline, span, &mut attempts)
            .instrument(span.clone())
            .await;
        command.done(result, attempts)
    }

    /// The synchronous half of the fast path (see [`Inner::begin`]): queues `payload`
    /// on the open connection of the node `target` picks, if that node's breaker is
    /// quiet. Hands the payload back otherwise (no node, a node in trouble or not
    /// connected yet, a full queue), for the loop to send.
    fn submit_fast(&self, payload: Payload, target: &Target, deadline: Instant) -> Fast {
        let Ok(node) = self.pick(target, false) else {
            return Fast::Declined(payload, None);
        };
        let Some(conn) = node.connected().filter(|_| node.is_quiet()) else {
            return Fast::Declined(payload, Some(node));
        };
        let kind = payload.kind();
        match conn.submit(payload.into_cmds(false), deadline) {
            Ok(queued) => Fast::Queued(node, conn, queued),
            Err(not_queued) => match kind.recover(not_queued.into_cmds(), false) {
                Some(payload) => Fast::Declined(payload, Some(node)),
                // Cannot happen: what `into_cmds` made, `recover` takes apart.
                None => Fast::Failed(Error::Protocol("a request with nothing to send".into())),
            },
        }
    }

    /// The redirect and retry loop of [`Inner::send_named`]; leaves the node of the last
    /// attempt in `attempts`.
    async fn send_loop(
        &self,
        start: Start,
        target: Target,
        idempotent: bool,
        deadline: Instant,
        span: &tracing::Span,
        attempts: &mut Attempts,
    ) -> Result<Value> {
        let backoff = self.backoff();
        let mut redirects = 0u32;
        let mut retries = 0u32;
        let mut cluster_down_retries = 0u32;
        let mut attempt = 0u32;
        // Where the last MOVED/ASK pointed, for the next attempt only.
        let mut redirect: Option<Redirect> = None;
        // The nodes that redirected this request (allocated on a redirect only).
        let mut redirected_by: Vec<Arc<str>> = Vec::new();
        // After a replica failed, reads go to the primary.
        let mut primary_only = false;
        // What the next attempt sends; `None` while it is out with an attempt.
        let (mut payload, mut answered) = match start {
            Start::Send(payload) => (Some(payload), None),
            Start::Answered(answer, kind) => (None, Some((answer, kind))),
        };
        loop {
            let (answer, kind, asking) = match answered.take() {
                // The first attempt, made on the fast path (to `attempts.last_node`).
                Some((answer, kind)) => {
                    attempt += 1;
                    (answer, kind, false)
                }
                None => {
                    let Some(sent) = self
                        .attempt(
                            &mut payload,
                            &target,
                            deadline,
                            span,
                            attempts,
                            &mut AttemptState {
                                backoff: &backoff,
                                retries: &mut retries,
                                attempt: &mut attempt,
                                redirect: &mut redirect,
                                primary_only: &mut primary_only,
                            },
                        )
                        .await?
                    else {
                        continue;
                    };
                    sent
                }
            };
            let Some(node) = attempts.last_node.as_ref() else {
                return Err(Error::Protocol("an answer from no node".into()));
            };
            let replies = match answer.result {
                Ok(replies) => replies,
                Err(e) if !e.is_node_failure() => return Err(e),
                Err(e) => {
                    if e.may_have_executed() {
                        attempts.executed.get_or_insert_with(|| e.clone());
                    }
                    // A timeout is the deadline's: no time is left to send it again in.
                    // A reply the connection could not decode (over the decoder's
                    // limits: a script's 2 MB status line, nesting past 64 levels) is
                    // this request's, and would come back the same, closing the node's
                    // shared connection under its other callers again at each resend.
                    let resend = !matches!(e, Error::Timeout { .. } | Error::Protocol(_))
                        && (!e.may_have_executed() || idempotent);
                    match (resend, kind.recover(answer.cmds, asking)) {
                        (true, Some(p)) => payload = Some(p),
                        _ => return Err(e),
                    }
                    self.signal.request(RefreshTrigger::ConnectionFailure);
                    primary_only |= node.read_only;
                    redirect = None;
                    self.wait_retry(&backoff, &mut retries, deadline, e).await?;
                    continue;
                }
            };
            let (reply, error) = kind.outcome(replies, asking)?;
            let Some(error) = error else {
                return Ok(reply);
            };
            // Cannot happen: what `into_cmds` made, `recover` takes apart.
            let Some(returned) = kind.recover(answer.cmds, asking) else {
                return Ok(reply);
            };
            let action = self.classify_reply(&error, &node.addr, returned.cmds());
            // (Asked of a `READONLY` only: the one answer the arm below reads it for.)
            let refused = error.code() == "READONLY"
                && crate::policy::refused_before_running(&error, returned.cmds());
            // Only the server redirects a command that runs no script: refused, it ran
            // nothing, whatever becomes of the redirect's vetting.
            let scripted = returned.cmds().iter().any(crate::policy::runs_a_script);
            payload = Some(returned);
            match action {
                // A keyless write (`EVAL ... 0`, `FCALL ... 0`) sent to a primary that a
                // failover has since made a replica: it did not run. Learn the new
                // topology and send it to a primary again. (Keyed commands get `MOVED`;
                // one sent to a node by name is the caller's to judge.)
                ErrorAction::Reply
                    if refused && matches!(target, Target::AnyPrimary) && !node.read_only =>
                {
                    self.signal.request(RefreshTrigger::Moved);
                    redirect = None;
                    let demoted = Error::Server(error);
                    self.wait_retry(&backoff, &mut retries, deadline, demoted)
                        .await?;
                }
                ErrorAction::Reply => return Ok(taken_as_reply(reply)),
                ErrorAction::Redirect(r) => {
                    let target = self
                        .vet_redirect(&r, &node.addr, deadline)
                        .await
                        .map_err(|e| if scripted { e } else { refused_unrun(e) })?;
                    // Noted even when not followed: a `MOVED` patches the map, so the
                    // next request goes to the new owner.
                    self.note_redirect(&r, &node.addr);
                    redirects += 1;
                    if redirects > self.config.max_redirects {
                        return Err(Error::TooManyRedirects {
                            redirects: redirects - 1,
                        });
                    }
                    span.record("redirects", redirects);
                    // Sent back to a node that already sent it away: the nodes disagree
                    // (a failover or a migration they have not all taken in yet). Wait
                    // for them to agree, a retry with its backoff, rather than bounce
                    // through every redirect allowed in a few milliseconds.
                    if redirected_by.iter().any(|by| **by == *target) {
                        self.signal.request(RefreshTrigger::Moved);
                        let bounced = Error::TooManyRedirects {
                            redirects: redirects - 1,
                        };
                        self.wait_retry(&backoff, &mut retries, deadline, bounced)
                            .await?;
                    }
                    redirected_by.push(Arc::clone(&node.addr));
                    redirect = Some(r);
                }
                ErrorAction::ClusterDown | ErrorAction::BackOff => {
                    // Each kind of refusal has its own count and limit.
                    let done = if matches!(action, ErrorAction::ClusterDown) {
                        self.signal.request(RefreshTrigger::ClusterDown);
                        &mut cluster_down_retries
                    } else {
                        &mut retries
                    };
                    if node.read_only && replica_cannot_serve(&error) && !primary_only {
                        // A replica that may refuse for minutes: the read goes to the
                        // primary at once. A reroute, not a retry: were it charged to
                        // the client-wide budget, one loading replica under replica
                        // reads would spend it for every other request.
                        node.pass_over_for_reads();
                        tracing::debug!(node = %node.addr, code = error.code(), "replica cannot serve; reading from the primary");
                        primary_only = true;
                        redirect = None;
                        continue;
                    }
                    let Some(delay) =
                        self.refusal_retry(&action, error.code(), *done, &backoff, deadline)
                    else {
                        return attempts.refused(reply);
                    };
                    *done += 1;
                    redirect = None;
                    back_off(delay).await;
                }
            }
        }
    }

    /// One attempt of [`Inner::send_loop`]: picks the node (or follows the last
    /// redirect), checks its breaker, gets its connection and sends. `Ok(None)` when it
    /// could not send and the loop should try again (after the backoff it waited).
    async fn attempt(
        &self,
        payload: &mut Option<Payload>,
        target: &Target,
        deadline: Instant,
        span: &tracing::Span,
        attempts: &mut Attempts,
        st: &mut AttemptState<'_>,
    ) -> Result<Option<(Answer, Kind, bool)>> {
        let node = match (&*st.redirect, attempts.picked.take()) {
            (Some(r), _) => self.registry.get(&self.remap(r.addr()), false),
            (None, Some(picked)) => picked,
            (None, None) => match self.pick(target, *st.primary_only) {
                Ok(node) => node,
                Err(e) => {
                    // No owner for the slot yet: wait for the refresh that asks.
                    self.wait_retry(st.backoff, st.retries, deadline, e).await?;
                    return Ok(None);
                }
            },
        };
        let node: &Arc<Node> = attempts.last_node.insert(node);
        *st.attempt += 1;
        span.record("node", &*node.addr);
        span.record("attempt", *st.attempt);
        let Some(_admitted) = self.admit(node) else {
            // Nothing is sent to a node whose breaker is open. A replica read falls
            // back to the primary at once; otherwise the request fails fast, unless
            // the slot map now points elsewhere (a refresh saw a failover, or this
            // node was only a redirect's target): then it tries the current route.
            let open = Error::CircuitOpen {
                node: node.addr.to_string(),
            };
            if node.read_only && !*st.primary_only {
                *st.primary_only = true;
                *st.redirect = None;
                return Ok(None);
            }
            let was_redirected = st.redirect.take().is_some();
            if !was_redirected && !self.routed_elsewhere(node, target, *st.primary_only) {
                return Err(open);
            }
            self.wait_retry(st.backoff, st.retries, deadline, open)
                .await?;
            return Ok(None);
        };
        let replica_read = node.read_only && !*st.primary_only;
        // A replica read waits for its replica's connection half its remaining time at
        // most: a replica that does not answer (a host gone silent) costs it that, not
        // its whole deadline, and the primary gets the rest.
        let connect_by = if replica_read {
            let now = Instant::now();
            now + deadline.saturating_duration_since(now) / 2
        } else {
            deadline
        };
        let conn = match node.connection(connect_by).await {
            Ok(conn) => conn,
            Err(e) => {
                // A timeout is the wait's, not the attempt's: that goes on, on its own
                // task, and its failure reaches the breaker through the next request
                // (see `record_connect_failure`).
                let waited_out = matches!(e, Error::Timeout { .. });
                self.record_connect_failure(node, &e);
                if replica_read {
                    // To the primary at once, a reroute rather than a retry (as for a
                    // replica's `LOADING`); replica reads pass this one over a while.
                    node.pass_over_for_reads();
                    if e.is_node_failure() && !waited_out {
                        self.signal.request(RefreshTrigger::ConnectionFailure);
                    }
                    *st.primary_only = true;
                    *st.redirect = None;
                    return Ok(None);
                }
                if waited_out || !e.is_node_failure() {
                    // Our own deadline ran out while connecting, or rejected credentials
                    // or certificate: another attempt within this request's deadline
                    // would meet the same answer. Said at once.
                    return Err(e);
                }
                self.signal.request(RefreshTrigger::ConnectionFailure);
                *st.redirect = None;
                self.wait_retry(st.backoff, st.retries, deadline, e).await?;
                return Ok(None);
            }
        };
        let asking = matches!(st.redirect, Some(Redirect::Ask { .. }));
        let Some(sending) = payload.take() else {
            return Err(Error::Protocol("a request with nothing to send".into()));
        };
        let kind = sending.kind();
        let sent = std::time::Instant::now();
        let answer = conn.dispatch(sending.into_cmds(asking), deadline).await;
        self.record_on(node, &conn, &answer.result, sent);
        Ok(Some((answer, kind, asking)))
    }

    /// The backoff between retries, from `retry_backoff`.
    pub(crate) fn backoff(&self) -> Backoff {
        Backoff {
            base: self.config.retry_base,
            max: self.config.retry_max,
        }
    }

    /// Sleeps before the next retry, or gives up with `error` when retries or time ran
    /// out.
    pub(crate) async fn wait_retry(
        &self,
        backoff: &Backoff,
        retries: &mut u32,
        deadline: Instant,
        error: Error,
    ) -> Result<()> {
        let delay = backoff.delay(*retries, fastrand::f64());
        *retries += 1;
        if *retries > self.config.max_retries
            || crate::deadline::from_now(delay) >= deadline
            || !self.spend_retry()
        {
            return Err(error);
        }
        let reason = RetryReason::of_error(&error);
        metrics::retry(reason);
        tracing::debug!(reason = reason.as_str(), error = %error, attempt = *retries, "retrying");
        back_off(delay).await;
        Ok(())
    }

    /// Whether a request a node refused for now (`CLUSTERDOWN`; `TRYAGAIN`, `LOADING`,
    /// `MASTERDOWN`), after `done` retries for that kind of refusal, goes again: the
    /// delay to wait first when its limit (`cluster_down_retry_attempts`, or
    /// `max_retries`), the deadline and the retry budget allow one more, which is then
    /// counted; `None` when the refusal is the answer. The one rule for single commands
    /// and pipelines.
    pub(crate) fn refusal_retry(
        &self,
        action: &ErrorAction,
        code: &str,
        done: u32,
        backoff: &Backoff,
        deadline: Instant,
    ) -> Option<std::time::Duration> {
        let limit = match action {
            ErrorAction::ClusterDown if self.config.retry_on_cluster_down => {
                self.config.cluster_down_retry_attempts
            }
            ErrorAction::BackOff => self.config.max_retries,
            _ => return None,
        };
        if done >= limit {
            return None;
        }
        let delay = backoff.delay(done, fastrand::f64());
        if crate::deadline::from_now(delay) >= deadline || !self.spend_retry() {
            return None;
        }
        let reason = RetryReason::of_reply(code);
        metrics::retry(reason);
        tracing::debug!(reason = reason.as_str(), attempt = done + 1, "retrying");
        Some(delay)
    }

    /// Takes one retry from the client's budget; false when it is spent.
    pub(crate) fn spend_retry(&self) -> bool {
        let requests = self.requests.load(Ordering::Relaxed);
        let allowed = self
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .try_spend(requests, std::time::Instant::now());
        if allowed {
            self.counters.retries.fetch_add(1, Ordering::Relaxed);
        } else {
            tracing::debug!("retry budget exhausted; failing instead of retrying");
        }
        allowed
    }

    /// Asks the node's breaker whether a request may go to it now.
    pub(crate) fn admit<'a>(&self, node: &'a Node) -> Option<Admitted<'a>> {
        let (admitted, transition) = node.admit();
        if transition.is_some() {
            self.publish_gauges(&[]);
        }
        admitted
    }

    /// [`Inner::record`] for a request's result. A request the connection refused to
    /// send (a disabled command) says nothing about the node: it is not recorded, so it
    /// can neither close a half-open breaker nor count as a failure; if it was the
    /// breaker's probe, its [`Admitted`] hands over to the next request.
    pub(crate) fn record_result<T>(&self, node: &Node, result: &Result<T>) {
        match result {
            Ok(_) => self.record(node, None),
            Err(e) if e.is_node_failure() => self.record(node, Some(e)),
            Err(_) => {}
        }
    }

    /// [`Inner::record`] for a request that found no connection: the connect `error`
    /// reaches the breaker once per failed attempt, however many requests got it (see
    /// [`Node::first_to_report_connect_failure`]). An error of no attempt (the node
    /// left the topology) says nothing about the node.
    ///
    /// A timeout is the caller's wait running out, not the attempt, which goes on and
    /// reports its own failure to the next request. So it reports the failure of an
    /// earlier attempt that no request reported (its waiters gave up first, as this
    /// one did): with a node that completes no handshake within the requests' deadlines
    /// (frozen, or dropping packets, with no connection open), every request times out
    /// waiting, and the breaker would otherwise never hear of it.
    pub(crate) fn record_connect_failure(&self, node: &Node, error: &Error) {
        let failure = match error {
            Error::Timeout { .. } => node.last_connect_error(),
            e => Some(e.clone()),
        };
        if let Some(failure) = failure {
            if node.first_to_report_connect_failure() {
                self.record(node, Some(&failure));
            }
        }
    }

    /// [`Inner::record_result`] for a request on the shared connection `conn`. When the
    /// connection fails, each request it carried gets the error; the breaker counts the
    /// connection's failure once, else one connection reset (a server-side
    /// `CLIENT KILL`, an idle timeout, a proxy) would open a healthy node's breaker
    /// whenever more requests than its threshold were in flight.
    ///
    /// A timeout counts only when the node answered no request in time on `conn` since
    /// the request was sent (`since`): a handle with a deadline shorter than the node's
    /// pace under load, or requests queued behind slow ones, would otherwise open the
    /// breaker of a node that answers, for every handle. One that timed out unsent
    /// counts only while the server owes replies on `conn` (it waited behind them): with
    /// nothing owed, its deadline was too short to write it at all (a zero timeout),
    /// which says nothing about the node.
    pub(crate) fn record_on<T>(
        &self,
        node: &Node,
        conn: &NodeConnection,
        result: &Result<T>,
        since: std::time::Instant,
    ) {
        // Not recorded: if the request was the breaker's probe, its `Admitted` frees the
        // breaker for the next one when dropped.
        match result {
            // (A reply the connection cannot decode closes it too: its request gets
            // `Protocol`, the others `ConnectionLost`.)
            Err(Error::ConnectionLost { .. } | Error::Io { .. } | Error::Protocol(_))
                if !conn.first_to_report_failure() => {}
            Err(Error::Timeout { .. }) if conn.answered_since(since) => {}
            Err(Error::Timeout {
                may_have_executed: false,
            }) if !conn.owes_replies() => {}
            _ => self.record_result(node, result),
        }
    }

    /// Feeds a request's outcome to the node's breaker: `failure` is the error when the
    /// node failed it (see [`Error::is_node_failure`]), `None` when it answered. An
    /// opening breaker asks for a topology refresh (the node may have failed over).
    pub(crate) fn record(&self, node: &Node, failure: Option<&Error>) {
        let transition = node.record(failure);
        if transition.is_some() {
            self.publish_gauges(&[]);
        }
        if transition == Some(Transition::Opened) {
            self.signal.request(RefreshTrigger::ConnectionFailure);
        }
    }

    /// Counts and traces a redirect on any path (single commands, pipelines, blocking,
    /// durable and `WATCH` connections); a MOVED also repoints the slot at once.
    pub(crate) fn note_redirect(&self, redirect: &Redirect, from: &str) {
        match redirect {
            Redirect::Moved { slot, addr } => {
                tracing::debug!(slot, from = %from, to = %addr, "MOVED redirect");
                self.note_moves(&[(*slot, self.remap(addr))]);
            }
            Redirect::Ask { slot, addr } => {
                self.counters.ask.fetch_add(1, Ordering::Relaxed);
                metrics::redirect(false);
                tracing::debug!(slot, from = %from, to = %addr, "ASK redirect");
                // A slot migrating to a node the map lacks: the cluster grew. (Not
                // when the cluster vouched for it lately: a master with no slot yet,
                // which no `CLUSTER SLOTS` refresh would list before its first slot
                // is in, and every redirect of the migration would ask for one.)
                let to = self.remap(addr);
                if !knows(&self.routes.load(), &to) && !self.signal.vouched_for(&to) {
                    self.signal.request(RefreshTrigger::UnknownNode);
                }
            }
        }
    }

    /// The options of a connection to the node reached at `addr`.
    pub(crate) fn connect_options(&self, addr: &str, read_only: bool) -> crate::ConnectOptions {
        self.registry.settings().options_for(addr, read_only)
    }

    /// The address the client reaches a node at, from the one a redirect or a
    /// subscription names; with TLS on, notes the announced one for the certificate's
    /// name check where none is known (see [`super::node::Announced::note`]).
    pub(crate) fn remap(&self, addr: &str) -> String {
        self.remap_noting(addr, false)
    }

    /// [`Inner::remap`] for an address from a topology reply, whose word counts.
    pub(crate) fn remap_announced(&self, addr: &str) -> String {
        self.remap_noting(addr, true)
    }

    fn remap_noting(&self, addr: &str, authoritative: bool) -> String {
        let Some(remap) = &self.config.remap else {
            return addr.to_string();
        };
        let reached = remap.apply(addr);
        if self.config.connect.tls.is_some() {
            let names = &self.registry.settings().announced;
            if reached != addr {
                names.note(&reached, addr, authoritative);
            } else if authoritative {
                // The node is reached where it announced itself: no other name is its.
                names.forget(&reached);
            }
        }
        reached
    }

    /// The address a seed is dialled at (see [`crate::AddressRemap`]); with TLS on,
    /// notes the address it announced, where the remap knows it.
    pub(crate) fn seed_address(&self, seed: &str) -> String {
        let Some(remap) = &self.config.remap else {
            return seed.to_string();
        };
        let (reached, announced) = remap.seed(seed);
        if let Some(announced) = announced.filter(|_| self.config.connect.tls.is_some()) {
            let names = &self.registry.settings().announced;
            names.note(&reached, &announced, true);
        }
        reached
    }

    /// Points `slot` at `addr` in a new snapshot right away, and asks for a refresh to
    /// learn the rest (a MOVED rarely comes alone). Only to a node the map lists: one
    /// it lacks waits for a refresh to name it, as a redirect is followed only to nodes
    /// the cluster vouches for (see [`Inner::vet_redirect`]).
    pub(crate) fn patch_moved(&self, slot: u16, addr: &str) {
        if knows(&self.routes.load(), addr) {
            self.patch_moves(std::iter::once((slot, addr)));
        } else {
            self.signal.request(RefreshTrigger::UnknownNode);
        }
    }

    /// Takes in `MOVED` redirects (each logged by its caller), their targets remapped:
    /// counted, and the slot map patched once for them all.
    pub(crate) fn note_moves(&self, moves: &[(u16, String)]) {
        if moves.is_empty() {
            return;
        }
        let count = u64::try_from(moves.len()).unwrap_or(u64::MAX);
        self.counters.moved.fetch_add(count, Ordering::Relaxed);
        metrics::redirects(true, count);
        self.patch_moves(moves.iter().map(|(slot, addr)| (*slot, addr.as_str())));
    }

    /// Points each slot at its address in one new slot map (and one set of node
    /// handles) for them all, where each slot would make its own. Whatever it is given:
    /// its callers pass addresses the map lists or the cluster vouched for
    /// ([`Inner::vet_redirect`]).
    fn patch_moves<'a>(&self, moves: impl Iterator<Item = (u16, &'a str)> + Clone) {
        // Targets repeat (a shard's slots move to one node): each is looked up once.
        let mut checked: Vec<&str> = Vec::new();
        let routes = self.routes.load();
        let mut known = true;
        for (_, addr) in moves.clone() {
            if !checked.contains(&addr) {
                checked.push(addr);
                known &= knows(&routes, addr);
            }
        }
        drop(routes);
        self.registry.replace(
            &self.routes,
            |current| {
                // A refresh that began before this must not undo it (see `Moves`).
                let mut noted = super::node::lock(&self.moves);
                let mut next: Option<crate::slot::SlotMap> = None;
                for (slot, addr) in moves {
                    noted.note(slot, addr);
                    let map = next.as_ref().unwrap_or(&current.map);
                    if map.primary(slot).is_none_or(|p| &**p != addr) {
                        next.get_or_insert_with(|| current.map.clone())
                            .move_slot(slot, addr);
                    }
                }
                next
            },
            None,
        );
        self.signal.request(if known {
            RefreshTrigger::Moved
        } else {
            RefreshTrigger::UnknownNode
        });
    }

    async fn send_split(
        &self,
        kind: SplitKind,
        parts: Vec<Part>,
        name: &'static str,
        idempotent: bool,
        deadline: Instant,
        read_from: ReadFrom,
    ) -> Result<Value> {
        let total: usize = parts.iter().map(|p| p.positions.len()).sum();
        let sends = parts.into_iter().map(|part| async move {
            let reply = self
                .send_named(
                    part.cmd.into(),
                    name,
                    Target::Slot {
                        slot: part.slot,
                        read: (kind == SplitKind::MGet).then_some(read_from),
                    },
                    idempotent,
                    deadline,
                )
                .await;
            (part.positions, reply)
        });
        let mut results = futures_util::future::join_all(sends).await;
        // Not `MGET`, `EXISTS` or `TOUCH`, which change no data.
        if matches!(name, "mset" | "del" | "unlink") {
            if let Some(e) = partly_applied(results.iter().map(|(_, r)| r)) {
                return Err(e);
            }
        }
        mark_run_parts(&mut results, |(_, r)| r);
        match kind {
            SplitKind::MGet => {
                let mut out = vec![Value::Nil; total];
                for (positions, reply) in results {
                    let values = match reply? {
                        Value::Array(values) if values.len() == positions.len() => values,
                        err @ Value::ServerError(_) => return Ok(err),
                        other => {
                            return Err(Error::Protocol(format!(
                                "MGET part answered {}",
                                other.kind()
                            )))
                        }
                    };
                    for (pos, v) in positions.into_iter().zip(values) {
                        out[pos] = v;
                    }
                }
                Ok(Value::Array(out))
            }
            SplitKind::MSet => {
                for (_, reply) in results {
                    if let err @ Value::ServerError(_) = reply? {
                        return Ok(err);
                    }
                }
                Ok(Value::Simple(bytes::Bytes::from_static(b"OK")))
            }
            SplitKind::Sum => {
                let mut sum = 0i64;
                for (_, reply) in results {
                    match reply? {
                        Value::Int(n) => sum = sum.saturating_add(n),
                        err @ Value::ServerError(_) => return Ok(err),
                        other => {
                            return Err(Error::Protocol(format!(
                                "count part answered {}",
                                other.kind()
                            )))
                        }
                    }
                }
                Ok(Value::Int(sum))
            }
        }
    }

    async fn send_fan_out(
        &self,
        command: &Cmd,
        info: Option<&'static cmd::CommandInfo>,
        to: FanOutTo,
        combine: Combine,
        idempotent: bool,
        deadline: Instant,
    ) -> Result<Value> {
        let name = metrics::command_label(info);
        // Data (`FLUSHALL`, `FUNCTION LOAD`) or settings (`CONFIG SET`, `ACL SETUSER`)
        // that one node's failure leaves partly changed.
        let writes = info.is_some_and(|i| i.is_write() || i.has_flags(cmd::command_flag::ADMIN));
        let backoff = self.backoff();
        let mut retries = 0;
        let nodes: Vec<Arc<str>> = loop {
            let (nodes, whole) = {
                let routes = self.routes.load();
                let nodes = match to {
                    FanOutTo::Primaries => {
                        // A primary with no slot too (a master being filled by a
                        // migration holds keys already), but not one `MOVED` patches
                        // emptied since the last refresh: failed over, dead or a replica.
                        let serving = routes.map.serving_primaries();
                        let served_before = self.signal.serving_in_last_view();
                        let mut primaries = routes.map.primaries();
                        primaries.retain(|p| serving.contains(p) || !served_before.contains(p));
                        primaries
                    }
                    FanOutTo::AllNodes => routes.map.nodes(),
                };
                let whole = !combine.needs_every_slot() || routes.map.covers_every_slot();
                (nodes, whole)
            };
            if !nodes.is_empty() && whole {
                break nodes;
            }
            // No topology yet (a lazily connected client): wait for the discovery. Slots
            // without a healthy primary (one failed, its replica not yet promoted, or
            // none): the nodes that answer would answer for part of the data, a
            // `DBSIZE` too small or a `FLUSHALL` that leaves a shard's keys. Wait for a
            // promotion within the deadline, else fail.
            let why = if nodes.is_empty() {
                self.no_topology_error()
            } else {
                Error::ClusterDown(
                    "some slots have no healthy primary: a command for every node would \
                     answer for part of the cluster"
                        .into(),
                )
            };
            self.signal.request(RefreshTrigger::Uncovered);
            self.wait_retry(&backoff, &mut retries, deadline, why)
                .await?;
        };
        let mut replies: Vec<Result<Value>> = if stops_a_script(command) {
            let sends = nodes
                .iter()
                .map(|addr| self.send_on_lease(command.clone(), addr, name, deadline));
            futures_util::future::join_all(sends).await
        } else {
            let sends = nodes.iter().map(|addr| {
                self.send_named(
                    command.clone().into(),
                    name,
                    Target::Node(Arc::clone(addr)),
                    idempotent,
                    deadline,
                )
            });
            futures_util::future::join_all(sends).await
        };
        // Per-node reports (`INFO`, `SLOWLOG GET`) change nothing, whatever their flags.
        if writes && !matches!(combine, Combine::OneSucceeded | Combine::PerNode) {
            if let Some(e) = partly_applied(replies.iter()) {
                return Err(e);
            }
        }
        mark_run_parts(&mut replies, |r| r);
        combine_replies(combine, &nodes, replies)
    }

    /// Sends `command` to the node at `addr` on a dedicated connection, without
    /// following redirects (it is for that node).
    async fn send_on_lease(
        &self,
        command: Cmd,
        addr: &Arc<str>,
        name: &'static str,
        deadline: Instant,
    ) -> Result<Value> {
        let node = self.registry.get(addr, false);
        // A node busy with a script refuses a new connection's handshake when it names
        // the client over RESP2 (`CLIENT SETNAME` may not run then): try the shared
        // connection, which reaches a script started by another client.
        let Ok(mut lease) = self.lease(&node, deadline, false).await else {
            let target = Target::Node(Arc::clone(addr));
            return self
                .send_named(command.into(), name, target, false, deadline)
                .await;
        };
        let landing = super::Landing::on(&node);
        let sent = async {
            let answer = lease.dispatch(Cmds::One(command), deadline).await;
            let replies = answer.result?;
            Ok(replies.into_iter().last().unwrap_or(Value::Nil))
        };
        self.observed(name, None, |v| v, &landing, sent).await
    }
}

/// Whichever part's error a split or fanned-out request reports, a timeout or lost
/// connection says the request may have run when another part may have: a part that
/// timed out unsent does not make the request unsent if another was written. Refusals
/// unsent by their nature (`CircuitOpen`, `ClusterDown`, `TRYAGAIN`) stay as they are:
/// these requests are reads or safe to repeat, and writes that ran in part are
/// [`Error::Partial`] before this.
fn mark_run_parts<T>(parts: &mut [T], reply: impl Fn(&mut T) -> &mut Result<Value>) {
    let ran = |r: &Result<Value>| r.as_ref().map_or_else(Error::may_have_executed, |_| true);
    if !parts.iter_mut().any(|p| ran(reply(p))) {
        return;
    }
    for part in parts {
        if let Err(e) = reply(part) {
            if !e.may_have_executed() {
                *e = e.clone().with_other_parts_run();
            }
        }
    }
}

/// The error of a write split over slots or sent to several nodes when one part failed
/// while another took effect, or may have while the failure says nothing ran:
/// [`Error::Partial`], so that the caller neither takes it for a write that did nothing
/// (a failed part's `ClusterDown` says "retry") nor resends it whole. `None` otherwise:
/// the first failure then tells the whole outcome.
fn partly_applied<'a>(parts: impl Iterator<Item = &'a Result<Value>> + Clone) -> Option<Error> {
    // The first failure, and whether it may have run: an error reply changed nothing on
    // its node (scripts are never split).
    let (first_failure, it_ran) = parts.clone().find_map(|r| match r {
        Ok(Value::ServerError(e)) => Some((super::reply_error(e.clone()), false)),
        Ok(_) => None,
        Err(e) => Some((e.clone(), e.may_have_executed())),
    })?;
    let mut parts = parts;
    let partial = parts.clone().any(|r| matches!(r, Ok(v) if !v.is_error()))
        || (!it_ran && parts.any(|r| matches!(r, Err(e) if e.may_have_executed())));
    partial.then(|| Error::Partial {
        source: Box::new(first_failure),
    })
}

/// Whether `command` stops a running script (`SCRIPT KILL`, `FUNCTION KILL`): it goes on
/// a connection of its own, as the script may run on this client's shared connection to
/// the node, which the server does not read until the script ends.
fn stops_a_script(command: &Cmd) -> bool {
    let name = command.name();
    (name.eq_ignore_ascii_case(b"script") || name.eq_ignore_ascii_case(b"function"))
        && command
            .arg_at(1)
            .is_some_and(|sub| sub.eq_ignore_ascii_case(b"kill"))
}

/// Whether the topology `routes` were built from has `addr`, as primary or replica (a
/// replica serving reads while its failed primary holds its slots too).
pub(crate) fn knows(routes: &Routes, addr: &str) -> bool {
    routes.map.lists(addr)
        || (routes.down.shards().iter()).any(|s| s.replicas.iter().any(|r| &**r == addr))
}

/// The name of the span each request runs in.
pub(crate) const COMMAND_SPAN: &str = "redis_command";

/// The `redis_command` span of one request; `node`, `attempt` and `redirects` are
/// recorded as they become known, `status` and `duration_ms` at the end.
fn command_span(name: &'static str, slot: Option<u16>) -> tracing::Span {
    tracing::debug_span!(
        COMMAND_SPAN,
        command = name,
        slot,
        node = Empty,
        attempt = Empty,
        redirects = Empty,
        status = Empty,
        duration_ms = Empty
    )
}

/// Counts a finished request on the node that gave its outcome and closes its span.
fn command_done(
    span: &tracing::Span,
    node: Option<&Node>,
    name: &'static str,
    status: Status,
    started: std::time::Instant,
) {
    let elapsed = started.elapsed();
    node_metrics(node).command(name, status, elapsed);
    crate::observe::events::command_outcome(span, status, elapsed);
}

/// The metric handles of `node`, or of "no node" for a command that reached none.
fn node_metrics(node: Option<&Node>) -> &metrics::NodeMetrics {
    match node {
        Some(node) => &node.metrics,
        None => metrics::no_node(),
    }
}

/// Picks, in turn, among the nodes whose latency is within 1.5 times the best plus
/// 0.2 ms; `None` while no node is measured.
fn fastest<'a>(
    nodes: impl Iterator<Item = &'a Arc<Node>> + Clone,
    turn: usize,
) -> Option<&'a Arc<Node>> {
    // Over the nodes measured: one not measured yet (just added) or whose last health
    // check got no answer is left out, rather than the shard's whole choice.
    let best = nodes.clone().filter_map(|n| n.latency()).min()?;
    let bound = best.mul_f64(1.5) + std::time::Duration::from_micros(200);
    let near = |n: &&'a Arc<Node>| n.latency().is_some_and(|l| l <= bound);
    // Two passes instead of collecting: no allocation per read.
    let count = nodes.clone().filter(near).count();
    nodes.filter(near).nth(turn % count.max(1))
}

/// A request as [`Inner::begin`] left it, for [`Inner::finish`].
// Nearly every request is `Queued`: boxing it to shrink the rare variants would cost an
// allocation per request.
#[allow(clippy::large_enum_variant)]
enum Begun<'a> {
    /// Queued on the fast path.
    Queued(Pending),
    /// Running some other way.
    Other(Pin<Box<dyn Future<Output = Result<Value>> + Send + 'a>>),
    /// Ended, with this result.
    Done(Result<Value>),
    /// Ended, and the result taken.
    Ended,
}

/// The future of one request ([`Inner::execute`], [`Inner::send_named`]): a state
/// machine written out, as `async fn`s keep moved-from values and their copies, which
/// made this future four times the size of what it holds.
pub(crate) struct Finish<'a> {
    inner: &'a Inner,
    begun: Begun<'a>,
}

impl Future for Finish<'_> {
    type Output = Result<Value>;

    fn poll(
        self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<Value>> {
        let this = self.get_mut();
        if let Begun::Queued(pending) = &mut this.begun {
            let outcome = std::task::ready!(pending.conn.poll_outcome(&mut pending.queued, cx));
            match this.inner.answered(pending, outcome) {
                Ok(result) => {
                    // Dropped in place.
                    this.begun = Begun::Ended;
                    return std::task::Poll::Ready(result);
                }
                Err(outcome) => {
                    if let Begun::Queued(pending) = std::mem::replace(&mut this.begun, Begun::Ended)
                    {
                        this.begun = this.inner.go_on(pending, outcome);
                    }
                }
            }
        }
        if let Begun::Other(request) = &mut this.begun {
            return request.as_mut().poll(cx);
        }
        std::task::Poll::Ready(match std::mem::replace(&mut this.begun, Begun::Ended) {
            Begun::Done(result) => result,
            _ => Err(Error::Protocol("a request polled after it ended".into())),
        })
    }
}

/// A request queued on the fast path: what it needs once the answer comes.
struct Pending {
    node: Arc<Node>,
    conn: Arc<NodeConnection>,
    queued: Queued,
    kind: Kind,
    target: Target,
    idempotent: bool,
    deadline: Instant,
    command: Command,
}

/// One request's span and metrics, from its start to its end.
struct Command {
    name: &'static str,
    span: tracing::Span,
    started: std::time::Instant,
    /// Held for its drop: the in-flight gauge goes down when the command ends.
    _in_flight: InFlight,
}

impl Command {
    /// Ends the request with `result`: counts it on the node that gave it, and closes
    /// its span.
    fn done(self, result: Result<Value>, attempts: Attempts) -> Result<Value> {
        let Attempts {
            last_node,
            executed,
            ..
        } = attempts;
        self.end(result, last_node.as_deref(), executed)
    }

    /// [`Command::done`] in place: the in-flight gauge goes down when the command is
    /// dropped, just after.
    fn end(
        &self,
        result: Result<Value>,
        last_node: Option<&Node>,
        executed: Option<Error>,
    ) -> Result<Value> {
        // An idempotent request resent after an attempt that may have run must not end
        // in an error that says "not executed": the earlier attempt may have. (A
        // refusal that ends it is turned into that error by `Attempts::refused`; an
        // error reply that is the reply stays: that attempt ran.)
        let result = match (result, executed) {
            (Err(e), Some(first)) if !e.may_have_executed() => Err(first),
            (result, _) => result,
        };
        command_done(
            &self.span,
            last_node,
            self.name,
            Status::of(result.as_ref()),
            self.started,
        );
        result
    }
}

/// What [`Inner::submit_fast`] did with a payload.
enum Fast {
    /// Queued on this node's connection.
    Queued(Arc<Node>, Arc<NodeConnection>, Queued),
    /// Not sent: for the loop to send, to the node picked if there was one.
    Declined(Payload, Option<Arc<Node>>),
    /// Not sent, and nothing to send (cannot happen; answered rather than panicking).
    Failed(Error),
}

/// How [`Inner::send_loop`] starts: with a payload to send, or with the answer of a
/// first attempt made on the fast path (see [`Inner::begin`]).
enum Start {
    Send(Payload),
    Answered(Answer, Kind),
}

/// The retry state of [`Inner::send_loop`] that [`Inner::attempt`] reads and updates.
struct AttemptState<'a> {
    backoff: &'a Backoff,
    retries: &'a mut u32,
    attempt: &'a mut u32,
    /// Where the last MOVED/ASK pointed, for the next attempt only.
    redirect: &'a mut Option<Redirect>,
    /// After a replica failed, reads go to the primary.
    primary_only: &'a mut bool,
}

/// What the attempts of one request left behind, for its metrics and its final error.
#[derive(Default)]
struct Attempts {
    /// The node the fast path picked and could not send to (not connected yet, a
    /// breaker not quiet, a full queue): the first attempt's. Picked again, a replica
    /// read would go to the next replica in turn, and a replica never connected would
    /// never be.
    picked: Option<Arc<Node>>,
    /// The node of the last attempt.
    last_node: Option<Arc<Node>>,
    /// The first error after which the request may have run (then resent, being
    /// idempotent).
    executed: Option<Error>,
}

impl Attempts {
    /// The answer of a request whose last attempt was refused (`CLUSTERDOWN`,
    /// `TRYAGAIN`, a redirect to a node not known yet ...) and that will not go again:
    /// the refusal, which says it did not run, unless an earlier attempt may have run.
    /// Decided here, where the refusal is known to be one: an error reply taken as the
    /// reply (a script's `redis.error_reply("MOVED ...")`) reads the same.
    fn refused(&mut self, reply: Value) -> Result<Value> {
        match self.executed.take() {
            Some(first) => Err(first),
            None => Ok(reply),
        }
    }
}

/// A reply `classify_reply` returned as the command's own: one that reads like a
/// redirect is marked so (`ServerError::taken_as_reply`), and is no retryable error.
pub(crate) fn taken_as_reply(reply: Value) -> Value {
    match reply {
        Value::ServerError(e) => Value::ServerError(e.taken_as_reply()),
        other => other,
    }
}

/// What one routed request carries.
#[derive(Debug)]
pub(crate) enum Payload {
    One(Cmd),
    /// `MULTI`, these commands, `EXEC`, written back to back on one connection.
    Transaction(Vec<Cmd>),
}

impl From<Cmd> for Payload {
    fn from(cmd: Cmd) -> Self {
        Payload::One(cmd)
    }
}

/// `info`, or its entry for `command`'s subcommand (`XINFO STREAM`) when it has one.
fn with_subcommand(command: &Cmd, info: &'static cmd::CommandInfo) -> &'static cmd::CommandInfo {
    command
        .arg_at(1)
        .and_then(|sub| info.subcommand(sub))
        .unwrap_or(info)
}

/// The shape of a payload, kept while the payload itself is with the connection.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Kind {
    One,
    Transaction,
}

impl Payload {
    /// The commands, as sent.
    pub(crate) fn cmds(&self) -> &[Cmd] {
        match self {
            Payload::One(cmd) => std::slice::from_ref(cmd),
            Payload::Transaction(cmds) => cmds,
        }
    }

    pub(crate) fn kind(&self) -> Kind {
        match self {
            Payload::One(_) => Kind::One,
            Payload::Transaction(_) => Kind::Transaction,
        }
    }

    /// The commands to write; after an `ASK`, preceded by `ASKING` (which, sent before
    /// `MULTI`, holds for the whole transaction).
    pub(crate) fn into_cmds(self, asking: bool) -> Cmds {
        match self {
            Payload::One(c) if !asking => Cmds::One(c),
            Payload::One(c) => Cmds::Many(vec![cmd("ASKING"), c]),
            Payload::Transaction(cmds) => {
                let mut all = Vec::with_capacity(cmds.len() + 3);
                if asking {
                    all.push(cmd("ASKING"));
                }
                all.push(cmd("MULTI"));
                all.extend(cmds);
                all.push(cmd("EXEC"));
                Cmds::Many(all)
            }
        }
    }
}

impl Kind {
    /// Takes the payload back out of the commands the connection returned.
    pub(crate) fn recover(self, cmds: Cmds, asking: bool) -> Option<Payload> {
        match (self, cmds) {
            (Kind::One, Cmds::One(c)) => Some(Payload::One(c)),
            (Kind::One, Cmds::Many(mut v)) => v.pop().map(Payload::One),
            (Kind::Transaction, Cmds::Many(mut v)) => {
                let framing = if asking { 2 } else { 1 };
                if v.len() < framing + 1 {
                    return None;
                }
                v.pop();
                v.drain(..framing);
                Some(Payload::Transaction(v))
            }
            (Kind::Transaction, Cmds::One(_)) => None,
        }
    }

    /// Whether `replies` end the request: one reply to one command, not an error
    /// reply (which may ask for a redirect or a retry).
    fn is_final(self, replies: &Replies) -> bool {
        matches!(self, Kind::One)
            && matches!(replies.as_slice(), [reply] if !matches!(reply, Value::ServerError(_)))
    }

    /// The reply the caller gets, and the error reply that decides whether to redirect
    /// or retry (none when the request is done).
    ///
    /// A transaction whose commands were refused while queueing (`MOVED`, `ASK`,
    /// `TRYAGAIN` ...) was discarded by the server (`EXECABORT`), so it is safe to send
    /// again; the first such refusal decides what to do.
    pub(crate) fn outcome(
        self,
        replies: Replies,
        asking: bool,
    ) -> Result<(Value, Option<ServerError>)> {
        // A refused `ASKING` (an ACL without `+asking`) is the answer: the node then
        // only sent the command back where it came from (`MOVED`), or aborted the
        // transaction, and following that would bounce between the two nodes.
        if let (true, Some(Value::ServerError(e))) = (asking, replies.first()) {
            let e = e.clone();
            return Ok((Value::ServerError(e.clone()), Some(e)));
        }
        match self {
            Kind::One => {
                let reply = replies
                    .into_iter()
                    .last()
                    .ok_or_else(|| Error::Protocol("no reply".into()))?;
                let error = match &reply {
                    Value::ServerError(e) => Some(e.clone()),
                    _ => None,
                };
                Ok((reply, error))
            }
            Kind::Transaction => {
                let mut replies = replies.into_vec();
                multi_accepted(replies.get(usize::from(asking)))?;
                let exec = replies
                    .pop()
                    .ok_or_else(|| Error::Protocol("no reply to EXEC".into()))?;
                if !matches!(exec, Value::ServerError(_)) {
                    return Ok((exec, None));
                }
                let skip = if asking { 2 } else { 1 };
                let queued_error = replies.into_iter().skip(skip).find_map(|r| match r {
                    Value::ServerError(e) => Some(e),
                    _ => None,
                });
                match queued_error {
                    // Report the refusal itself, not the generic EXECABORT.
                    Some(e) => Ok((Value::ServerError(e.clone()), Some(e))),
                    None => {
                        let e = match &exec {
                            Value::ServerError(e) => Some(e.clone()),
                            _ => None,
                        };
                        Ok((exec, e))
                    }
                }
            }
        }
    }
}

/// Checks `MULTI`'s reply: refused, the server ran the transaction's commands one by one
/// as they came ([`Error::NotAtomic`]); their replies, redirects and refusals included,
/// are no transaction's, and nothing may be resent.
pub(crate) fn multi_accepted(reply: Option<&Value>) -> Result<()> {
    match reply {
        Some(Value::ServerError(refusal)) => Err(Error::NotAtomic(refusal.clone())),
        _ => Ok(()),
    }
}

/// Combines fan-out replies; any failure fails the whole command (except
/// `one_succeeded`, which needs one success).
fn combine_replies(
    combine: Combine,
    nodes: &[Arc<str>],
    replies: Vec<Result<Value>>,
) -> Result<Value> {
    if combine == Combine::OneSucceeded {
        // When none succeeded: a refusal that says something (`UNKILLABLE`: the script
        // wrote), then a node that did not answer (it may be the one with something to
        // do), then "nothing to do here" (`NOTBUSY`).
        let (mut telling, mut failure, mut idle) = (None, None, None);
        for reply in replies {
            match reply {
                Ok(Value::ServerError(e)) if e.code() == "NOTBUSY" => idle = Some(e),
                Ok(Value::ServerError(e)) => telling = Some(e),
                Ok(v) => return Ok(v),
                Err(e) => failure = Some(e),
            }
        }
        return match (telling, failure, idle) {
            (Some(e), _, _) => Ok(Value::ServerError(e)),
            (None, Some(e), _) => Err(e),
            (None, None, Some(e)) => Ok(Value::ServerError(e)),
            (None, None, None) => Err(Error::ClusterDown("no node answered".into())),
        };
    }
    let mut values = Vec::with_capacity(replies.len());
    for reply in replies {
        match reply? {
            err @ Value::ServerError(_) => return Ok(err),
            v => values.push(v),
        }
    }
    match combine {
        Combine::AllSucceeded | Combine::OneSucceeded => {
            Ok(values.into_iter().next().unwrap_or(Value::Nil))
        }
        Combine::AnyNonNil => {
            values.retain(|v| !matches!(v, Value::Nil));
            if values.is_empty() {
                return Ok(Value::Nil);
            }
            Ok(values.swap_remove(fastrand::usize(..values.len())))
        }
        Combine::PerNode => Ok(Value::Map(
            nodes
                .iter()
                .map(|n| Value::Bulk(bytes::Bytes::copy_from_slice(n.as_bytes())))
                .zip(values)
                .collect(),
        )),
        Combine::MergeArrays => {
            let mut out = Vec::new();
            for v in values {
                match v {
                    Value::Array(items) | Value::Set(items) => out.extend(items),
                    other => {
                        return Err(Error::Protocol(format!(
                            "cannot merge a {} reply",
                            other.kind()
                        )))
                    }
                }
            }
            Ok(Value::Array(out))
        }
        Combine::Union => {
            let mut seen: std::collections::HashSet<bytes::Bytes> =
                std::collections::HashSet::new();
            let mut out = Vec::new();
            for v in values {
                let (Value::Array(items) | Value::Set(items)) = v else {
                    return Err(Error::Protocol(format!(
                        "cannot unite a {} reply",
                        v.kind()
                    )));
                };
                for item in items {
                    match &item {
                        Value::Bulk(name) if !seen.insert(name.clone()) => {}
                        _ => out.push(item),
                    }
                }
            }
            Ok(Value::Array(out))
        }
        Combine::SumPerChannel => sum_per_channel(values),
        Combine::SumSubscriptions => fold(Combine::Sum, values),
        Combine::Sum | Combine::Min | Combine::Max | Combine::LogicalAnd | Combine::LogicalOr => {
            fold(combine, values)
        }
    }
}

/// Sums `PUBSUB NUMSUB` replies per channel: `[channel, count, ...]` in RESP2, a map in
/// RESP3; the result has the first reply's shape and channel order (the request's).
fn sum_per_channel(values: Vec<Value>) -> Result<Value> {
    let pairs = |v: Value| -> Result<(bool, Vec<(Value, Value)>)> {
        match v {
            Value::Map(pairs) => Ok((true, pairs)),
            Value::Array(items) if items.len() % 2 == 0 => {
                let mut items = items.into_iter();
                let mut pairs = Vec::new();
                while let (Some(channel), Some(count)) = (items.next(), items.next()) {
                    pairs.push((channel, count));
                }
                Ok((false, pairs))
            }
            other => Err(Error::Protocol(format!(
                "cannot sum a {} reply per channel",
                other.kind()
            ))),
        }
    };
    let mut values = values.into_iter();
    let Some(first) = values.next() else {
        return Ok(Value::Array(Vec::new()));
    };
    let (as_map, mut total) = pairs(first)?;
    // Each channel's sum, by name (a search per count would be quadratic in the
    // channels). A channel asked twice is listed twice by every node, with the same
    // count: counted once per node, shown in both places.
    let mut sums: std::collections::HashMap<bytes::Bytes, i64> = std::collections::HashMap::new();
    let mut add = |pairs: &[(Value, Value)]| -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for (channel, count) in pairs {
            let (Value::Bulk(name), Value::Int(n)) = (channel, count) else {
                return Err(Error::Protocol(format!(
                    "a channel count is a {} for a {}",
                    count.kind(),
                    channel.kind()
                )));
            };
            if seen.insert(name) {
                let sum = sums.entry(name.clone()).or_insert(0);
                *sum = sum.saturating_add(*n);
            }
        }
        Ok(())
    };
    add(&total)?;
    for v in values {
        add(&pairs(v)?.1)?;
    }
    for (channel, count) in &mut total {
        if let (Value::Bulk(name), Value::Int(n)) = (&*channel, count) {
            *n = sums.get(name).copied().unwrap_or(*n);
        }
    }
    Ok(if as_map {
        Value::Map(total)
    } else {
        Value::Array(total.into_iter().flat_map(|(c, n)| [c, n]).collect())
    })
}

/// Folds integer replies, or arrays of integers element by element.
fn fold(combine: Combine, values: Vec<Value>) -> Result<Value> {
    let op = |a: i64, b: i64| match combine {
        Combine::Sum => a.saturating_add(b),
        Combine::Min => a.min(b),
        Combine::Max => a.max(b),
        Combine::LogicalAnd => i64::from(a != 0 && b != 0),
        _ => i64::from(a != 0 || b != 0),
    };
    let mut acc: Option<Value> = None;
    for v in values {
        acc = Some(match (acc, v) {
            (None, v) => v,
            (Some(Value::Int(a)), Value::Int(b)) => Value::Int(op(a, b)),
            (Some(Value::Array(a)), Value::Array(b)) if a.len() == b.len() => {
                let mut out = Vec::with_capacity(a.len());
                for (x, y) in a.into_iter().zip(b) {
                    match (x, y) {
                        (Value::Int(x), Value::Int(y)) => out.push(Value::Int(op(x, y))),
                        _ => {
                            return Err(Error::Protocol(
                                "cannot aggregate non-integer replies".into(),
                            ))
                        }
                    }
                }
                Value::Array(out)
            }
            _ => {
                return Err(Error::Protocol(
                    "fan-out replies of different shapes".into(),
                ))
            }
        });
    }
    Ok(acc.unwrap_or(Value::Nil))
}

/// A replica of the shard whose failed primary still holds `slot` in `routes` (see
/// [`Routes::down`]), in turn among those that serve reads; `None` when there is none.
fn down_replica(routes: &Routes, slot: u16) -> Option<&Arc<Node>> {
    let replicas = routes.down_replicas.get(routes.down.shard_index(slot)?)?;
    serving_from(replicas, routes.down_turn.fetch_add(1, Ordering::Relaxed))
}

/// The first of `replicas` that serves reads (see [`Node::serves_reads`]), looking from
/// the `start`th (modulo their number) round; `None` when none does, or there are none.
fn serving_from(replicas: &[Arc<Node>], start: usize) -> Option<&Arc<Node>> {
    if replicas.is_empty() {
        return None;
    }
    let (after, before) = replicas.split_at(start % replicas.len());
    before.iter().chain(after).find(|node| node.serves_reads())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<Arc<str>> {
        (0..n).map(|i| Arc::from(format!("h:{i}"))).collect()
    }

    #[test]
    fn combines_fan_out_replies() {
        let ints = |v: &[i64]| v.iter().map(|&n| Ok(Value::Int(n))).collect::<Vec<_>>();
        assert_eq!(
            combine_replies(Combine::Sum, &nodes(3), ints(&[1, 2, 3])).unwrap(),
            Value::Int(6)
        );
        assert_eq!(
            combine_replies(Combine::Max, &nodes(3), ints(&[1, 5, 3])).unwrap(),
            Value::Int(5)
        );
        assert_eq!(
            combine_replies(Combine::LogicalAnd, &nodes(2), ints(&[1, 0])).unwrap(),
            Value::Int(0)
        );
        let arrays = vec![
            Ok(Value::Array(vec![Value::Int(1), Value::Int(0)])),
            Ok(Value::Array(vec![Value::Int(1), Value::Int(1)])),
        ];
        assert_eq!(
            combine_replies(Combine::LogicalAnd, &nodes(2), arrays).unwrap(),
            Value::Array(vec![Value::Int(1), Value::Int(0)])
        );
        let merged = combine_replies(
            Combine::MergeArrays,
            &nodes(2),
            vec![
                Ok(Value::Array(vec![Value::Int(1)])),
                Ok(Value::Array(vec![Value::Int(2)])),
            ],
        )
        .unwrap();
        assert_eq!(merged, Value::Array(vec![Value::Int(1), Value::Int(2)]));
        let per_node = combine_replies(Combine::PerNode, &nodes(2), ints(&[7, 8])).unwrap();
        assert_eq!(
            per_node,
            Value::Map(vec![
                (Value::Bulk("h:0".into()), Value::Int(7)),
                (Value::Bulk("h:1".into()), Value::Int(8))
            ])
        );
    }

    #[test]
    fn combines_pubsub_introspection_per_channel() {
        let bulk = |s: &str| Value::Bulk(bytes::Bytes::copy_from_slice(s.as_bytes()));
        let resp2 = |a: i64, b: i64| {
            Ok(Value::Array(vec![
                bulk("a"),
                Value::Int(a),
                bulk("b"),
                Value::Int(b),
            ]))
        };
        let summed = combine_replies(
            Combine::SumPerChannel,
            &nodes(3),
            vec![resp2(1, 0), resp2(0, 2), resp2(1, 1)],
        )
        .unwrap();
        assert_eq!(
            summed,
            Value::Array(vec![bulk("a"), Value::Int(2), bulk("b"), Value::Int(3)])
        );
        // A channel asked twice: listed twice by each node, counted once per node.
        let twice = |a: i64| {
            Ok(Value::Array(vec![
                bulk("a"),
                Value::Int(a),
                bulk("a"),
                Value::Int(a),
            ]))
        };
        let summed =
            combine_replies(Combine::SumPerChannel, &nodes(2), vec![twice(1), twice(2)]).unwrap();
        assert_eq!(
            summed,
            Value::Array(vec![bulk("a"), Value::Int(3), bulk("a"), Value::Int(3)])
        );
        let resp3 = |a: i64| Ok(Value::Map(vec![(bulk("a"), Value::Int(a))]));
        let summed =
            combine_replies(Combine::SumPerChannel, &nodes(2), vec![resp3(4), resp3(5)]).unwrap();
        assert_eq!(summed, Value::Map(vec![(bulk("a"), Value::Int(9))]));
        let odd = combine_replies(
            Combine::SumPerChannel,
            &nodes(1),
            vec![Ok(Value::Array(vec![bulk("a")]))],
        );
        assert!(matches!(odd, Err(Error::Protocol(_))), "{odd:?}");
        let united = combine_replies(
            Combine::Union,
            &nodes(2),
            vec![
                Ok(Value::Array(vec![bulk("x"), bulk("y")])),
                Ok(Value::Array(vec![bulk("y"), bulk("z")])),
            ],
        )
        .unwrap();
        assert_eq!(united, Value::Array(vec![bulk("x"), bulk("y"), bulk("z")]));
    }

    #[test]
    fn one_must_succeed_reports_the_most_telling_failure() {
        let refusal = |text: &'static str| Ok(Value::ServerError(crate::ServerError::new(text)));
        let notbusy = || refusal("NOTBUSY No scripts in execution right now.");
        let code = |r: Result<Value>| match r {
            Ok(Value::ServerError(e)) => e.code().to_owned(),
            other => format!("{other:?}"),
        };
        let one = |replies| combine_replies(Combine::OneSucceeded, &nodes(3), replies);
        assert_eq!(
            one(vec![notbusy(), Ok(Value::Simple("OK".into())), notbusy()]).unwrap(),
            Value::Simple("OK".into())
        );
        // A node that did not answer comes before "nothing to do here".
        let r = one(vec![
            notbusy(),
            Err(Error::Timeout {
                may_have_executed: true,
            }),
            notbusy(),
        ]);
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
        // A telling refusal comes before both.
        let r = one(vec![
            Err(Error::Timeout {
                may_have_executed: true,
            }),
            refusal("UNKILLABLE Sorry the script already executed write commands"),
            notbusy(),
        ]);
        assert_eq!(code(r), "UNKILLABLE");
        assert_eq!(code(one(vec![notbusy(), notbusy(), notbusy()])), "NOTBUSY");
    }

    #[test]
    fn a_write_that_ran_in_part_is_reported_partial() {
        let ok = || Ok(Value::Int(1));
        let down = || Err(Error::ClusterDown("no primary".into()));
        let tryagain = || {
            Ok(Value::ServerError(crate::ServerError::new(
                "TRYAGAIN later",
            )))
        };
        let partial = |parts: Vec<Result<Value>>| partly_applied(parts.iter());
        // One part ran, one did not: partial, whatever the failure.
        let e = partial(vec![ok(), down()]).unwrap();
        assert!(
            matches!(&e, Error::Partial { source } if matches!(**source, Error::ClusterDown(_)))
        );
        assert!(e.may_have_executed() && !e.is_retryable());
        assert!(partial(vec![tryagain(), ok()]).is_some());
        // Nothing ran for sure, but a part may have: the first failure said "not run".
        assert!(partial(vec![
            tryagain(),
            Err(Error::Timeout {
                may_have_executed: true
            })
        ])
        .is_some());
        assert!(partial(vec![
            down(),
            Err(Error::Timeout {
                may_have_executed: true
            })
        ])
        .is_some());
        // The first failure tells the whole outcome already.
        assert!(partial(vec![
            Err(Error::Timeout {
                may_have_executed: true
            }),
            down()
        ])
        .is_none());
        assert!(partial(vec![down(), down()]).is_none());
        assert!(partial(vec![ok(), ok()]).is_none());
    }

    #[test]
    fn lowest_latency_spreads_over_nodes_about_as_fast() {
        let settings = Arc::new(crate::cluster::node::NodeSettings::for_tests());
        let node = |addr: &str, us: u64| {
            let n = Arc::new(Node::new(Arc::from(addr), true, Arc::clone(&settings)));
            if us > 0 {
                n.observe_latency(std::time::Duration::from_micros(us));
            }
            n
        };
        let nodes = [node("a:1", 1000), node("b:1", 1400), node("c:1", 5000)];
        let picked: Vec<&str> = (0..4)
            .map(|t| &*fastest(nodes.iter(), t).unwrap().addr)
            .collect();
        assert_eq!(
            picked,
            ["a:1", "b:1", "a:1", "b:1"],
            "c is far slower and never picked"
        );
        // A node not measured (new, or its last check unanswered) is left out, the
        // others still chosen from; none measured, no choice.
        let partly = [node("a:1", 1000), node("d:1", 0)];
        let picked: Vec<&str> = (0..3)
            .map(|t| &*fastest(partly.iter(), t).unwrap().addr)
            .collect();
        assert_eq!(picked, ["a:1", "a:1", "a:1"]);
        let forgotten = node("e:1", 1000);
        forgotten.forget_latency();
        assert!(fastest([node("f:1", 0), forgotten].iter(), 0).is_none());
    }

    #[test]
    fn a_part_unsent_says_the_request_may_have_run_when_another_part_did() {
        let unsent = || {
            Err(Error::Timeout {
                may_have_executed: false,
            })
        };
        let mut parts = vec![Ok(Value::Int(1)), unsent()];
        mark_run_parts(&mut parts, |r| r);
        assert!(
            matches!(&parts[1], Err(e) if e.may_have_executed()),
            "{parts:?}"
        );
        let mut parts = vec![
            unsent(),
            Err(Error::ConnectionLost {
                may_have_executed: true,
            }),
        ];
        mark_run_parts(&mut parts, |r| r);
        assert!(matches!(
            &parts[0],
            Err(Error::Timeout {
                may_have_executed: true
            })
        ));
        // None sent: each says so still.
        let mut parts = vec![unsent(), unsent()];
        mark_run_parts(&mut parts, |r| r);
        assert!(parts
            .iter()
            .all(|p| matches!(p, Err(e) if !e.may_have_executed())));
        // A refusal unsent by its nature (an open breaker) stays what it is.
        let open = Error::CircuitOpen { node: "n".into() };
        let mut parts = vec![Ok(Value::Int(1)), Err(open)];
        mark_run_parts(&mut parts, |r| r);
        assert!(matches!(&parts[1], Err(Error::CircuitOpen { .. })));
    }

    #[test]
    fn one_failure_fails_the_fan_out() {
        let replies = vec![
            Ok(Value::Int(1)),
            Err(Error::Timeout {
                may_have_executed: true,
            }),
            Ok(Value::Int(1)),
        ];
        assert!(matches!(
            combine_replies(Combine::Sum, &nodes(3), replies),
            Err(Error::Timeout { .. })
        ));
        let replies = vec![
            Ok(Value::Int(1)),
            Ok(Value::ServerError(crate::ServerError::new("ERR x"))),
        ];
        assert!(combine_replies(Combine::AllSucceeded, &nodes(2), replies)
            .unwrap()
            .is_error());
        let replies = vec![
            Err(Error::Timeout {
                may_have_executed: true,
            }),
            Ok(Value::Int(4)),
        ];
        assert_eq!(
            combine_replies(Combine::OneSucceeded, &nodes(2), replies).unwrap(),
            Value::Int(4)
        );
    }
}
