//! Running explicit pipelines and transactions.
//!
//! A pipeline's commands are grouped by the node that serves them and written to each
//! node at once, every node in parallel. A command answered with a redirect or a
//! transient error (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`, ...) is sent again on its
//! own, through the ordinary redirect and retry path: the rest of the pipeline is never
//! sent twice. When a node's connection fails, each of its commands follows the retry
//! rule on its own: resent if it was not written or is idempotent, reported otherwise;
//! a command that timed out is never resent.

use std::sync::Arc;

use tokio::time::Instant;
use tracing::Instrument as _;

use crate::cluster::execute::Target;
use crate::cluster::node::Node;
use crate::cluster::plan::{self, Plan};
use crate::cluster::Inner;
use crate::cmd::{self, Cmd};
use crate::conn::Cmds;
use crate::error::{Error, Result};
use crate::observe::metrics::{self, InFlight, Status};
use crate::policy::{classify, ErrorAction};
use crate::resp::Value;

/// One command of a pipeline, where it stands and how it may be retried.
struct Entry {
    index: usize,
    cmd: Cmd,
    slot: u16,
    read_only: bool,
    idempotent: bool,
    /// The metrics label.
    name: &'static str,
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
    /// Runs `cmds` as a pipeline; one result per command, in order.
    pub(crate) async fn execute_pipeline(
        &self,
        cmds: Vec<Cmd>,
        deadline: Instant,
    ) -> Vec<Result<Value>> {
        metrics::pipeline_size(cmds.len());
        let mut results: Vec<Option<Result<Value>>> = (0..cmds.len()).map(|_| None).collect();
        // Commands for one slot are batched per node; anything else (split or fan-out
        // commands) runs on its own, concurrently with the batches.
        let mut groups: Vec<(Arc<Node>, Vec<Entry>)> = Vec::new();
        let mut singles: Vec<(usize, Cmd)> = Vec::new();
        // One snapshot for the whole pipeline; a command it routes wrongly is redirected
        // and resent on its own like any other.
        let routes = self.routes.load_full();
        // Each node's share, if the keys spread evenly, and some slack: a pipeline of
        // thousands of commands would otherwise grow every group a dozen times.
        let share = cmds.len() / routes.primaries.len().max(1);
        let group_capacity = share + share / 8 + 1;
        for (index, command) in cmds.into_iter().enumerate() {
            let info = self.command_info(&command, deadline).await;
            let idempotent = info.is_some_and(|i| cmd::may_resend(&command, i));
            match plan::plan(&command, info) {
                Ok(Plan::Slot { slot, read_only }) => {
                    match self.pick_for_slot(&routes, slot, read_only) {
                        Ok(node) => {
                            let entry = Entry {
                                index,
                                cmd: command,
                                slot,
                                read_only,
                                idempotent,
                                name: metrics::command_label(info),
                            };
                            match groups.iter_mut().find(|(n, _)| Arc::ptr_eq(n, node)) {
                                Some((_, entries)) => entries.push(entry),
                                None => {
                                    let mut entries = Vec::with_capacity(group_capacity);
                                    entries.push(entry);
                                    groups.push((Arc::clone(node), entries));
                                }
                            }
                        }
                        // No owner known: let the single-command path wait for one.
                        Err(_) => singles.push((index, command)),
                    }
                }
                Ok(_) => singles.push((index, command)),
                Err(e) => results[index] = Some(Err(e)),
            }
        }
        let batches = groups
            .into_iter()
            .map(|(node, entries)| self.run_batch(node, entries, deadline));
        let singles = singles.into_iter().map(|(index, command)| async move {
            let started = Instant::now();
            (index, self.execute(command, started, deadline).await)
        });
        let (batches, singles) = futures_util::future::join(
            futures_util::future::join_all(batches),
            futures_util::future::join_all(singles),
        )
        .await;
        for (index, result) in batches.into_iter().flatten().chain(singles) {
            results[index] = Some(result);
        }
        results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| Err(Error::Protocol("pipeline command got no result".into())))
            })
            .collect()
    }

    /// Writes one node's share of a pipeline at once; resends what needs resending one
    /// by one.
    async fn run_batch(
        &self,
        node: Arc<Node>,
        entries: Vec<Entry>,
        deadline: Instant,
    ) -> Vec<(usize, Result<Value>)> {
        let meta: Vec<(usize, u16, bool, bool, &'static str)> = entries
            .iter()
            .map(|e| (e.index, e.slot, e.read_only, e.idempotent, e.name))
            .collect();
        let cmds: Vec<Cmd> = entries.into_iter().map(|e| e.cmd).collect();
        let started = std::time::Instant::now();
        let in_flight = InFlight::start(meta.len());
        let ready = if self.admit(&node) {
            node.connection(deadline).await
        } else {
            Err(Error::CircuitOpen {
                node: node.addr.to_string(),
            })
        };
        let (outcome, cmds) = match ready {
            Ok(conn) => {
                let span = tracing::debug_span!(
                    "redis_pipeline",
                    node = %node.addr,
                    commands = meta.len()
                );
                let answer = conn
                    .dispatch(Cmds::Many(cmds), deadline)
                    .instrument(span)
                    .await;
                self.record_result(&node, &answer.result);
                let cmds = match answer.cmds {
                    Cmds::Many(v) => v,
                    Cmds::One(c) => vec![c],
                };
                (answer.result.map(|r| r.into_vec()), cmds)
            }
            Err(e) => (Err(e), cmds),
        };
        drop(in_flight);
        // Commands that end here are counted here; those resent, by `send`. They all
        // ended when the batch's answer came (or failed): one clock read for them all.
        let elapsed = started.elapsed();
        let mut done = Tally::default();
        let mut out = Vec::with_capacity(meta.len());
        let mut resend: Vec<(usize, Cmd, u16, bool, bool, &'static str)> = Vec::new();
        let mut batch_error: Option<Error> = None;
        match outcome {
            Ok(replies) => {
                for (((index, slot, read_only, idempotent, name), reply), command) in
                    meta.into_iter().zip(replies).zip(cmds)
                {
                    let action = match &reply {
                        Value::ServerError(e) => classify(e, &node.addr),
                        _ => ErrorAction::Reply,
                    };
                    match action {
                        ErrorAction::Reply => {
                            let result = Ok(reply);
                            done.add(name, &result);
                            out.push((index, result));
                        }
                        ErrorAction::Redirect(r) => {
                            self.note_redirect(&r, &node.addr);
                            resend.push((index, command, slot, read_only, idempotent, name));
                        }
                        _ => resend.push((index, command, slot, read_only, idempotent, name)),
                    }
                }
            }
            Err(e) => {
                if e.may_have_executed() {
                    batch_error = Some(e.clone());
                }
                self.signal
                    .request(crate::topology::RefreshTrigger::ConnectionFailure);
                if cmds.len() != meta.len() {
                    // The deadline passed with the commands still queued: nothing to resend.
                    let out = meta
                        .into_iter()
                        .map(|(index, .., name)| {
                            let result = Err(e.clone());
                            done.add(name, &result);
                            (index, result)
                        })
                        .collect();
                    done.count_on(&node, elapsed);
                    return out;
                }
                for ((index, slot, read_only, idempotent, name), command) in
                    meta.into_iter().zip(cmds)
                {
                    if !e.may_have_executed() || (idempotent && !matches!(e, Error::Timeout)) {
                        resend.push((index, command, slot, read_only, idempotent, name));
                    } else {
                        let result = Err(e.clone());
                        done.add(name, &result);
                        out.push((index, result));
                    }
                }
            }
        }
        done.count_on(&node, elapsed);
        let resent =
            resend
                .into_iter()
                .map(|(index, command, slot, read_only, idempotent, name)| {
                    let batch_error = batch_error.clone();
                    async move {
                        let target = Target::Slot { slot, read_only };
                        let reply = self
                            .send_named(command.into(), name, target, idempotent, deadline)
                            .await;
                        // Resent after a batch that may have run: a later "not executed"
                        // must not hide that the first attempt may have.
                        let reply = match (reply, batch_error) {
                            (Err(e), Some(first)) if !e.may_have_executed() => Err(first),
                            (reply, _) => reply,
                        };
                        (index, reply)
                    }
                });
        out.extend(futures_util::future::join_all(resent).await);
        out
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
        for command in &cmds {
            let info = self.command_info(command, deadline).await;
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
                Plan::AnyPrimary | Plan::FanOut { .. } => {}
            }
        }
        if slots.len() > 1 {
            return Err(Error::CrossSlot { slots });
        }
        let target = match slot {
            Some(slot) => Target::Slot {
                slot,
                read_only: false,
            },
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
