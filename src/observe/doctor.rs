//! The cluster doctor's judgement: the seed's production checklist and best practices,
//! checked against what the nodes answered.
//!
//! Owns the report ([`DoctorReport`], [`Check`], [`CheckStatus`]), the thresholds, the
//! questions the doctor asks (`CONFIG GET` parameters, the dangerous commands) and the
//! reading of the replies (`CLUSTER SHARDS`, `CLUSTER INFO`, `INFO`, `CONFIG GET`, `ACL`,
//! `COMMAND INFO`, the key sample). Sans-io: it is handed replies and never asks for
//! anything itself; `cluster/doctor.rs` does the asking.
//!
//! It must never read or show a secret: `requirepass` is not among the parameters asked
//! for, of `ACL GETUSER` only the flags are read, and the names commands are renamed to
//! never reach it.

use std::fmt;
use std::ops::RangeInclusive;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::resp::{FromValue, Value};
use crate::slot::SLOT_COUNT;

/// `cluster-node-timeout`, in milliseconds, that the seed recommends for production.
const NODE_TIMEOUT_MS: RangeInclusive<u64> = 5000..=15000;

/// `maxmemory` above this share of the host's memory leaves too little for the rest
/// (forks for AOF rewrites and snapshots, buffers): the seed says 80-90 % of RAM.
const MAXMEMORY_OF_HOST: f64 = 0.90;

/// Memory used above this share of `maxmemory` (or of the host's memory without one)
/// deserves attention before evictions or `OOM` errors start.
const MEMORY_USED_WARN: f64 = 0.80;

/// A master whose slot count is further than this from an even share is out of
/// balance: `redis-cli --cluster rebalance` acts above the same 2 %.
const SLOT_BALANCE_TOLERANCE: f64 = 0.02;

/// Seconds since a replica's last acknowledgement (`lag` in the master's
/// `INFO replication`) above which it is falling behind: replicas acknowledge every
/// second.
const REPLICATION_LAG_WARN_SECS: u64 = 5;

/// A sampled key using at least this much memory is a big key: deleting, migrating
/// (resharding moves keys with `MIGRATE`, which blocks) or replicating it stalls its node.
const BIG_KEY_BYTES: u64 = 1 << 20;

/// A sampled key whose LFU counter (`OBJECT FREQ`) reaches this is a hot key. The
/// counter is logarithmic: at the default `lfu-log-factor 10`, about 18 for 1,000
/// accesses and 142 for 100,000 (redis.conf's table). Each read first takes off one
/// per minute since the key's last read (`lfu-decay-time 1`), then adds one with a
/// chance that falls as the counter grows, so a key read steadily settles where the two
/// meet: near 11 at one read a second, 100 at about 950 reads a minute.
const HOT_KEY_FREQ: i64 = 100;

/// At most this many keys are sampled per primary.
pub(crate) const KEY_SAMPLE_PER_PRIMARY: usize = 100;

/// At most this many `SCAN` calls per primary to collect the sample, so that a keyspace
/// of mostly expired keys cannot keep the doctor scanning.
pub(crate) const SCAN_CALLS_PER_PRIMARY: usize = 10;

/// `CONFIG GET` parameters the doctor reads; `INFO` gives the rest without needing
/// `CONFIG` rights. Never add `requirepass` or `masterauth` here.
pub(crate) const CONFIG_PARAMETERS: [&str; 5] = [
    "cluster-node-timeout",
    "appendfsync",
    "port",
    "tls-port",
    "enable-debug-command",
];

/// The seed's dangerous commands, each with arguments that pass the server's arity
/// check in `ACL DRYRUN` (which only simulates: nothing runs).
pub(crate) const DANGEROUS_COMMANDS: [(&str, &[&str]); 4] = [
    ("FLUSHALL", &[]),
    ("FLUSHDB", &[]),
    ("CONFIG", &["SET", "maxmemory", "0"]),
    ("DEBUG", &["HELP"]),
];

/// How a check came out, from best to worst (`Ok < Unknown < Warn < Fail`).
///
/// ```
/// use redcluster::CheckStatus;
/// assert!(CheckStatus::Ok < CheckStatus::Unknown && CheckStatus::Warn < CheckStatus::Fail);
/// assert_eq!(CheckStatus::Warn.to_string(), "warn");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum CheckStatus {
    /// As the seed recommends.
    Ok,
    /// Could not be checked: the client's user lacks a permission (`NOPERM`), a command
    /// is renamed or disabled, or the server does not report the value. The observed
    /// value says why.
    Unknown,
    /// Departs from the seed's recommendations; a choice to review.
    Warn,
    /// The cluster cannot serve, can lose data on a single failure, or is open to
    /// anyone who reaches it.
    Fail,
}

impl CheckStatus {
    /// `"ok"`, `"unknown"`, `"warn"` or `"fail"`.
    ///
    /// ```
    /// use redcluster::CheckStatus;
    /// assert_eq!(CheckStatus::Warn.as_str(), "warn");
    /// // Ordered from best to worst.
    /// assert!(CheckStatus::Ok < CheckStatus::Fail);
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            CheckStatus::Ok => "ok",
            CheckStatus::Unknown => "unknown",
            CheckStatus::Warn => "warn",
            CheckStatus::Fail => "fail",
        }
    }
}

impl fmt::Display for CheckStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One line of a [`DoctorReport`].
///
/// ```
/// fn advise(report: &redcluster::DoctorReport) {
///     for check in report.warnings() {
///         let node = check.node.as_deref().unwrap_or("cluster");
///         println!("{} on {node}: saw {}; the seed: {}", check.name, check.observed, check.recommendation);
///     }
/// }
/// # let _ = advise;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Check {
    /// Which check, e.g. `"persistence"`; the names are listed at [`DoctorReport`].
    pub name: &'static str,
    /// How it came out.
    pub status: CheckStatus,
    /// The node it is about, as the client reaches it (`host:port`); `None` for the
    /// cluster as a whole, or when every node answered the same.
    pub node: Option<String>,
    /// What the doctor saw, e.g. `"appendonly no"`, or why it could not see.
    pub observed: String,
    /// What the seed recommends.
    pub recommendation: String,
}

/// The outcome of [`crate::ClusterClient::doctor`]: the cluster checked against the
/// seed's production checklist and best practices. `Display` renders it as a table.
///
/// Checks about one node's settings come one per node, merged into one line (`node`
/// `None`) when every node answered the same. The checks, in order:
///
/// | name | what | fail | warn |
/// |---|---|---|---|
/// | `node-reachable` | every node of the cluster answers | unreachable | |
/// | `cluster-state` | `CLUSTER INFO` `cluster_state:ok` | not `ok` | |
/// | `slot-coverage` | all 16384 slots served by a healthy primary | any not | |
/// | `slot-balance` | slots per master within 2 % of an even share | | outside |
/// | `masters` | masters serving slots: at least 3, an odd number | fewer than 3 | even |
/// | `replicas` | at least one healthy replica per master | a master without | |
/// | `replica-placement` | replicas not on their master's host | | same host |
/// | `replication` | replication link up; lag per replica | link down | lag over 5 s, still syncing |
/// | `cluster-node-timeout` | 5000-15000 ms | | outside |
/// | `maxmemory` | set, at most 90 % of the host's memory (`total_system_memory`) | | unset, above |
/// | `maxmemory-per-host` | the `maxmemory` of nodes sharing a host at most 90 % of its memory in all (hosts with two nodes or more) | | above |
/// | `maxmemory-policy` | an eviction policy is named | | `noeviction` |
/// | `memory-usage` | memory used below 80 % of `maxmemory`, or an `allkeys-*` policy (evicting at the limit) | | above |
/// | `persistence` | `appendonly yes`, `appendfsync everysec` or `always` | | otherwise, or the AOF's last write or rewrite failed |
/// | `authentication` | no default user without a password | anyone may connect | |
/// | `tls` | TLS only | | plaintext served |
/// | `dangerous-commands` | `FLUSHALL`, `FLUSHDB`, `CONFIG`, `DEBUG` renamed, disabled or denied to the client's user | | available |
/// | `big-keys` | no sampled key of 1 MiB or more (`MEMORY USAGE`) | | some |
/// | `hot-keys` | no sampled key with an LFU counter of 100 or more (`OBJECT FREQ`, LFU policies only) | | some |
///
/// Any check can also be [`CheckStatus::Unknown`] when the client may not ask (its
/// observed value then says why, e.g. `NOPERM ...`).
///
/// ```
/// use redcluster::{CheckStatus, DoctorReport};
/// fn summary(report: &DoctorReport) -> String {
///     match report.status("persistence") {
///         Some(CheckStatus::Ok) => "durable".into(),
///         other => format!("persistence: {other:?}"),
///     }
/// }
/// # let _ = summary;
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DoctorReport {
    /// Every check, in the order of the table above.
    pub checks: Vec<Check>,
}

impl DoctorReport {
    /// The checks that failed.
    ///
    /// ```
    /// let report = redcluster::DoctorReport::default();
    /// assert_eq!(report.failures().count(), 0);
    /// ```
    pub fn failures(&self) -> impl Iterator<Item = &Check> {
        self.with_status(CheckStatus::Fail)
    }

    /// The checks that warn.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// for check in client.doctor().await?.warnings() {
    ///     println!("{}: {} -> {}", check.name, check.observed, check.recommendation);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn warnings(&self) -> impl Iterator<Item = &Check> {
        self.with_status(CheckStatus::Warn)
    }

    /// The checks that could not be made (their observed value says why, often a
    /// permission the client's user lacks).
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let report = client.doctor().await?;
    /// let missing: Vec<&str> = report.unknowns().map(|c| c.name).collect();
    /// println!("not checked: {missing:?}");
    /// # Ok(()) }
    /// ```
    pub fn unknowns(&self) -> impl Iterator<Item = &Check> {
        self.with_status(CheckStatus::Unknown)
    }

    /// Whether no check failed (warnings may remain).
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// // A monitoring job: fail when the cluster does.
    /// let report = client.doctor().await?;
    /// if !report.is_healthy() {
    ///     eprintln!("{report}");
    ///     std::process::exit(1);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_healthy(&self) -> bool {
        self.failures().next().is_none()
    }

    /// The lines of check `name`: one, or one per node.
    ///
    /// ```
    /// fn nodes_without_aof(report: &redcluster::DoctorReport) -> Vec<String> {
    ///     report
    ///         .checks_named("persistence")
    ///         .filter(|c| c.observed.starts_with("appendonly no"))
    ///         .map(|c| c.node.clone().unwrap_or_else(|| "every node".into()))
    ///         .collect()
    /// }
    /// # let _ = nodes_without_aof;
    /// ```
    pub fn checks_named(&self, name: &str) -> impl Iterator<Item = &Check> + '_ {
        // Owned, so that the iterator does not borrow the caller's name.
        let name = name.to_owned();
        self.checks.iter().filter(move |c| c.name == name)
    }

    /// The worst status among the lines of check `name`; `None` when there is none.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::CheckStatus;
    /// let report = client.doctor().await?;
    /// if report.status("persistence") != Some(CheckStatus::Ok) {
    ///     eprintln!("turn on appendonly");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn status(&self, name: &str) -> Option<CheckStatus> {
        self.checks_named(name).map(|c| c.status).max()
    }

    fn with_status(&self, status: CheckStatus) -> impl Iterator<Item = &Check> {
        self.checks.iter().filter(move |c| c.status == status)
    }
}

/// Observed values longer than this overflow their column instead of widening it.
const OBSERVED_COLUMN_MAX: usize = 60;

impl fmt::Display for DoctorReport {
    /// An aligned table, `STATUS CHECK NODE OBSERVED RECOMMENDATION`, then a count per
    /// status.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const HEAD: [&str; 5] = ["STATUS", "CHECK", "NODE", "OBSERVED", "RECOMMENDATION"];
        let node = |c: &Check| c.node.clone().unwrap_or_else(|| "cluster".to_owned());
        let width = |head: &str, cell: &dyn Fn(&Check) -> usize| {
            self.checks
                .iter()
                .map(cell)
                .chain([head.chars().count()])
                .max()
                .unwrap_or(0)
        };
        let w_status = width(HEAD[0], &|c| c.status.as_str().len());
        let w_name = width(HEAD[1], &|c| c.name.chars().count());
        let w_node = width(HEAD[2], &|c| node(c).chars().count());
        let w_observed = width(HEAD[3], &|c| c.observed.chars().count()).min(OBSERVED_COLUMN_MAX);
        let mut line = |cells: [&str; 5]| -> fmt::Result {
            let text = format!(
                "{:<w_status$}  {:<w_name$}  {:<w_node$}  {:<w_observed$}  {}",
                cells[0], cells[1], cells[2], cells[3], cells[4]
            );
            writeln!(f, "{}", text.trim_end())
        };
        line(HEAD)?;
        for c in &self.checks {
            let status = match c.status {
                CheckStatus::Ok => "ok",
                CheckStatus::Unknown => "UNKNOWN",
                CheckStatus::Warn => "WARN",
                CheckStatus::Fail => "FAIL",
            };
            line([status, c.name, &node(c), &c.observed, &c.recommendation])?;
        }
        let count = |s: CheckStatus| self.with_status(s).count();
        write!(
            f,
            "{} fail, {} warn, {} unknown, {} ok",
            count(CheckStatus::Fail),
            count(CheckStatus::Warn),
            count(CheckStatus::Unknown),
            count(CheckStatus::Ok)
        )
    }
}

// ---- What the doctor is handed ------------------------------------------------------

/// One reply: the server's answer (error replies included), or why none came (timeout,
/// lost connection, a command the client has disabled).
pub(crate) type Reply = Result<Value>;

/// What one node answered.
#[derive(Debug)]
pub(crate) struct NodeFacts {
    /// As the client reaches it.
    pub(crate) addr: String,
    /// `Err` when the node could not be reached; nothing else was asked then.
    pub(crate) answers: Result<Answers>,
}

/// A reachable node's replies.
#[derive(Debug, Clone)]
pub(crate) struct Answers {
    /// `CLUSTER SHARDS`.
    pub(crate) shards: Reply,
    /// `CLUSTER INFO`.
    pub(crate) cluster_info: Reply,
    /// `INFO` (the default sections: server, memory, persistence, replication, ...).
    pub(crate) info: Reply,
    /// `CONFIG GET` of [`CONFIG_PARAMETERS`].
    pub(crate) config: Reply,
    /// `ACL GETUSER default`.
    pub(crate) default_user: Reply,
    /// `PING` on a connection opened without credentials, when asked (see
    /// [`needs_unauthenticated_probe`]); a refused handshake is its `Err`.
    pub(crate) unauthenticated: Option<Reply>,
    /// `COMMAND INFO` of the [`DANGEROUS_COMMANDS`].
    pub(crate) command_info: Reply,
    /// The user the dry runs were for (`ACL WHOAMI`, else the configured one).
    pub(crate) user: Option<String>,
    /// `ACL DRYRUN <user> <command> ...` per dangerous command, for those
    /// [`dry_run_targets`] named.
    pub(crate) dry_runs: Vec<(&'static str, Reply)>,
    /// Keys sampled on a primary; `None` on replicas.
    pub(crate) keys: Option<KeySample>,
}

/// A primary's key sample.
#[derive(Debug, Clone, Default)]
pub(crate) struct KeySample {
    pub(crate) keys: Vec<SampledKey>,
    /// Why the scan stopped early, if it did.
    pub(crate) error: Option<Error>,
}

/// One sampled key and what its node said about it.
#[derive(Debug, Clone)]
pub(crate) struct SampledKey {
    pub(crate) key: Bytes,
    /// `MEMORY USAGE key`.
    pub(crate) memory: Reply,
    /// `OBJECT FREQ key`, not asked where `INFO` names a policy that is not LFU.
    pub(crate) freq: Option<Reply>,
}

/// What the client itself knows: how it connects.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientSide {
    /// It connects over TLS.
    pub(crate) tls: bool,
    /// It authenticates (a password or a credentials provider).
    pub(crate) credentials: bool,
}

/// The cluster as `CLUSTER SHARDS` describes it, failed nodes and masters without
/// slots included (unlike the client's routing snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    shards: Vec<ViewShard>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct ViewShard {
    primary: Member,
    replicas: Vec<Member>,
    slots: usize,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Member {
    /// As the client reaches it (after the address remap).
    addr: String,
    /// As the cluster announces it: its host tells which nodes share a machine.
    announced: String,
    healthy: bool,
}

impl Member {
    fn host(&self) -> &str {
        self.announced
            .rsplit_once(':')
            .map_or(&*self.announced, |(h, _)| h)
    }

    fn port(&self) -> Option<&str> {
        self.announced.rsplit_once(':').map(|(_, p)| p)
    }
}

impl View {
    /// Every node, primaries first, as the client reaches them.
    pub(crate) fn members(&self) -> Vec<&str> {
        let primaries = self.shards.iter().map(|s| s.primary.addr.as_str());
        let replicas = self
            .shards
            .iter()
            .flat_map(|s| s.replicas.iter().map(|r| r.addr.as_str()));
        primaries.chain(replicas).collect()
    }

    /// Whether `addr` is a primary.
    pub(crate) fn is_primary(&self, addr: &str) -> bool {
        self.shards.iter().any(|s| s.primary.addr == addr)
    }

    /// Masters that vote in failovers: those serving slots.
    fn voting(&self) -> impl Iterator<Item = &ViewShard> {
        self.shards.iter().filter(|s| s.slots > 0)
    }
}

/// The view most of the nodes report, from their `CLUSTER SHARDS` replies (`(address
/// asked, reply)`); `remap` turns announced addresses into the client's. `None` when no
/// reply could be read.
pub(crate) fn agreed_view<'a>(
    replies: impl IntoIterator<Item = (&'a str, &'a Reply)>,
    tls: bool,
    remap: &dyn Fn(&str) -> String,
) -> Option<View> {
    let mut tally: Vec<(View, usize)> = Vec::new();
    for (asked, reply) in replies {
        let Ok(value) = reply else { continue };
        let Ok(shards) = crate::topology::parse_shards(value, asked, tls) else {
            continue;
        };
        let member = |n: &crate::topology::NodeInfo| Member {
            addr: remap(&n.addr),
            announced: n.addr.clone(),
            healthy: n.healthy,
        };
        let mut view = View {
            shards: shards
                .iter()
                .map(|s| {
                    let mut replicas: Vec<Member> = s.replicas.iter().map(member).collect();
                    replicas.sort_by(|a, b| a.addr.cmp(&b.addr));
                    ViewShard {
                        primary: member(&s.primary),
                        replicas,
                        slots: s
                            .ranges
                            .iter()
                            .map(|&(a, b)| usize::from(b.saturating_sub(a)) + 1)
                            .sum(),
                    }
                })
                .collect(),
        };
        // Nodes list shards in no particular order.
        view.shards
            .sort_by(|a, b| a.primary.addr.cmp(&b.primary.addr));
        match tally.iter_mut().find(|(v, _)| *v == view) {
            Some((_, votes)) => *votes += 1,
            None => tally.push((view, 1)),
        }
    }
    // On a tie, the first view seen (the client's nodes come primaries first).
    tally
        .into_iter()
        .rev()
        .max_by_key(|(_, votes)| *votes)
        .map(|(view, _)| view)
}

/// The dangerous commands to dry-run: those `COMMAND INFO` says the server knows under
/// their own name (the others are renamed or disabled), or all when it could not say.
pub(crate) fn dry_run_targets(
    command_info: &Reply,
) -> Vec<(&'static str, &'static [&'static str])> {
    let known = known_commands(command_info);
    DANGEROUS_COMMANDS
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            known
                .as_ref()
                .is_none_or(|k| k.get(*i).copied().unwrap_or(true))
        })
        .map(|(_, &c)| c)
        .collect()
}

/// Per dangerous command, whether the server knows it; `None` when unreadable.
fn known_commands(command_info: &Reply) -> Option<Vec<bool>> {
    let Ok(Value::Array(entries)) = command_info else {
        return None;
    };
    (entries.len() == DANGEROUS_COMMANDS.len())
        .then(|| entries.iter().map(|e| !matches!(e, Value::Nil)).collect())
}

/// Whether the default user's flags could not be read, so that only a connection
/// without credentials can tell whether authentication is on.
pub(crate) fn needs_unauthenticated_probe(default_user: &Reply) -> bool {
    acl_flags(default_user).is_none()
}

/// Whether to ask `OBJECT FREQ`: unless `INFO` names a policy that counts no accesses
/// (not LFU). When `INFO` cannot be read, the replies tell.
pub(crate) fn may_track_frequency(info: &Reply) -> bool {
    text(info)
        .ok()
        .and_then(|t| info_field(&t, "maxmemory_policy").map(|p| p.contains("lfu")))
        .unwrap_or(true)
}

/// `OBJECT FREQ`'s refusal under a policy that is not LFU.
fn not_lfu(reply: &Reply) -> bool {
    matches!(reply, Ok(Value::ServerError(e)) if e.message().starts_with("An LFU maxmemory policy is not selected"))
}

// ---- Reading replies ----------------------------------------------------------------

/// The text of a string reply (`INFO`, `CLUSTER INFO`), or why there is none.
fn text(reply: &Reply) -> std::result::Result<String, String> {
    match reply {
        Ok(Value::ServerError(e)) => Err(refusal(&e.to_string())),
        Ok(v) => v
            .as_bytes()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .ok_or_else(|| format!("unexpected {} reply", v.kind())),
        Err(e) => Err(failure(e)),
    }
}

/// Why a reply did not come or was refused, for an observed value.
fn why(reply: &Reply) -> String {
    match reply {
        Ok(Value::ServerError(e)) => refusal(&e.to_string()),
        Ok(v) => format!("unexpected {} reply", v.kind()),
        Err(e) => failure(e),
    }
}

fn failure(e: &Error) -> String {
    match e {
        Error::Server(e) => refusal(&e.to_string()),
        // A command the client was told is disabled (CommandRenames).
        Error::Config(m) => m.clone(),
        other => other.to_string(),
    }
}

/// An error reply, shortened: "unknown command" means renamed or disabled without
/// the client being told (its arguments are left out).
fn refusal(text: &str) -> String {
    if text.starts_with("ERR unknown command") {
        // The quoted name is what the client sent: with a wrong rename mapping, a secret.
        return "the command is renamed or disabled on the server \
                (tell the client with ClusterClientBuilder::rename_command)"
            .to_owned();
    }
    clip(text, 100)
}

fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(max - 1).collect();
    out.push('…');
    out
}

/// The value of `name:value` in an `INFO` or `CLUSTER INFO` reply.
fn info_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

fn info_number(text: &str, name: &str) -> Option<u64> {
    info_field(text, name)?.parse().ok()
}

/// The `key=value` fields of an `INFO replication` `slaveN:` line.
fn replica_lines(text: &str) -> Vec<Vec<(&str, &str)>> {
    text.lines()
        .filter_map(|line| {
            let (name, rest) = line.split_once(':')?;
            let n = name.strip_prefix("slave")?;
            n.bytes().all(|b| b.is_ascii_digit()).then_some(())?;
            Some(
                rest.trim()
                    .split(',')
                    .filter_map(|kv| kv.split_once('='))
                    .collect(),
            )
        })
        .collect()
}

fn field<'a>(fields: &[(&str, &'a str)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| *k == name).map(|(_, v)| *v)
}

/// `CONFIG GET`'s pairs, or why they could not be read.
fn config(reply: &Reply) -> std::result::Result<Vec<(String, String)>, String> {
    match reply {
        Ok(v @ (Value::Map(_) | Value::Array(_))) => {
            std::collections::BTreeMap::<String, String>::from_value(v.clone())
                .map(|m| m.into_iter().collect())
                .map_err(|e| failure(&e))
        }
        other => Err(why(other)),
    }
}

fn config_value<'a>(config: &'a [(String, String)], name: &str) -> Option<&'a str> {
    config
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// The flags of `ACL GETUSER`'s reply (`on`, `off`, `nopass`, ...); nothing else of it
/// is read (it also lists password hashes).
fn acl_flags(reply: &Reply) -> Option<Vec<String>> {
    let Ok(v @ (Value::Map(_) | Value::Array(_))) = reply else {
        return None;
    };
    let fields = std::collections::BTreeMap::<String, Value>::from_value(v.clone()).ok()?;
    Vec::<String>::from_value(fields.get("flags")?.clone()).ok()
}

/// `1.5 MiB`.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// A key as shown in a report: printable, and short.
fn show_key(key: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(key).escape_debug().collect();
    format!("\"{}\"", clip(&text, 48))
}

fn plural(n: usize, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

// ---- The checks ---------------------------------------------------------------------

fn check(
    name: &'static str,
    status: CheckStatus,
    node: Option<&str>,
    observed: impl Into<String>,
    recommendation: impl Into<String>,
) -> Check {
    Check {
        name,
        status,
        node: node.map(str::to_owned),
        observed: observed.into(),
        recommendation: recommendation.into(),
    }
}

/// One check per node, folded into one line when every node said the same.
fn per_node(rows: Vec<Check>) -> Vec<Check> {
    let same = rows.windows(2).all(|w| {
        w[0].status == w[1].status
            && w[0].observed == w[1].observed
            && w[0].recommendation == w[1].recommendation
    });
    if rows.len() < 2 || !same {
        return rows;
    }
    let n = rows.len();
    let mut first = rows.into_iter().next().expect("at least two rows");
    first.node = None;
    first.observed = format!("{} (all {n} nodes)", first.observed);
    vec![first]
}

/// Judges the cluster: `nodes` are every node asked, `view` the topology most of them
/// agree on, `client` how the client connects.
pub(crate) fn evaluate(
    nodes: &[NodeFacts],
    view: Option<&View>,
    client: ClientSide,
) -> DoctorReport {
    // One order, by address, whatever the routing snapshot's (which follows a node's
    // own listing of its shards): the same cluster gives the same report, line for line.
    let mut nodes: Vec<&NodeFacts> = nodes.iter().collect();
    nodes.sort_by(|a, b| a.addr.cmp(&b.addr));
    let reached: Vec<(&str, &Answers)> = nodes
        .iter()
        .filter_map(|n| Some((n.addr.as_str(), n.answers.as_ref().ok()?)))
        .collect();
    let by_addr = |addr: &str| reached.iter().find(|(a, _)| *a == addr).map(|(_, x)| *x);
    let each = |f: &dyn Fn(&str, &Answers) -> Check| {
        per_node(reached.iter().map(|(addr, a)| f(addr, a)).collect())
    };
    let mut checks = Vec::new();
    checks.extend(per_node(nodes.iter().copied().map(reachable).collect()));
    checks.extend(each(&cluster_state));
    match view {
        Some(view) => {
            checks.push(slot_coverage(view));
            checks.push(slot_balance(view));
            checks.push(masters(view));
            checks.extend(replicas(view));
            checks.extend(replica_placement(view));
            checks.extend(replication(view, &by_addr));
        }
        None => {
            let why = nodes
                .iter()
                .filter_map(|n| n.answers.as_ref().ok())
                .map(|a| why(&a.shards))
                .next()
                .unwrap_or_else(|| "no node answered".to_owned());
            for name in [
                "slot-coverage",
                "slot-balance",
                "masters",
                "replicas",
                "replica-placement",
                "replication",
            ] {
                checks.push(check(
                    name,
                    CheckStatus::Unknown,
                    None,
                    format!("CLUSTER SHARDS not readable: {why}"),
                    "let the client's user run CLUSTER SHARDS (Redis 7 or newer)",
                ));
            }
        }
    }
    checks.extend(each(&node_timeout));
    checks.extend(each(&maxmemory));
    checks.extend(maxmemory_per_host(&reached));
    checks.extend(each(&maxmemory_policy));
    checks.extend(memory_usage(&reached));
    checks.extend(each(&persistence));
    checks.extend(each(&|addr, a| authentication(addr, a, client)));
    checks.extend(each(&|addr, a| tls(addr, a, client)));
    checks.extend(each(&dangerous_commands));
    checks.extend(big_keys(&reached, view));
    checks.extend(hot_keys(&reached, view));
    DoctorReport { checks }
}

fn reachable(node: &NodeFacts) -> Check {
    match &node.answers {
        Ok(_) => check(
            "node-reachable",
            CheckStatus::Ok,
            Some(&node.addr),
            "answered",
            "every node reachable from the clients",
        ),
        Err(e) => check(
            "node-reachable",
            CheckStatus::Fail,
            Some(&node.addr),
            format!("unreachable: {}", failure(e)),
            "bring the node back or fix the network; until then its replica takes over or its slots are down",
        ),
    }
}

fn cluster_state(addr: &str, a: &Answers) -> Check {
    const REC: &str = "cluster_state:ok: a majority of masters up and every slot served";
    match text(&a.cluster_info) {
        Ok(t) => match info_field(&t, "cluster_state") {
            Some("ok") => check(
                "cluster-state",
                CheckStatus::Ok,
                Some(addr),
                "cluster_state:ok",
                REC,
            ),
            Some(state) => check(
                "cluster-state",
                CheckStatus::Fail,
                Some(addr),
                format!("cluster_state:{state}"),
                REC,
            ),
            None => check(
                "cluster-state",
                CheckStatus::Unknown,
                Some(addr),
                "CLUSTER INFO has no cluster_state",
                REC,
            ),
        },
        Err(why) => check(
            "cluster-state",
            CheckStatus::Unknown,
            Some(addr),
            format!("CLUSTER INFO not readable: {why}"),
            REC,
        ),
    }
}

fn slot_coverage(view: &View) -> Check {
    let served: usize = view
        .shards
        .iter()
        .filter(|s| s.primary.healthy)
        .map(|s| s.slots)
        .sum();
    let all = usize::from(SLOT_COUNT);
    let (status, observed) = if served >= all {
        (CheckStatus::Ok, format!("{all} of {all} slots served"))
    } else {
        (
            CheckStatus::Fail,
            format!(
                "{served} of {all} slots served; {} unassigned or on failed primaries",
                all - served.min(all)
            ),
        )
    };
    check(
        "slot-coverage",
        status,
        None,
        observed,
        "every slot served: assign missing slots (redis-cli --cluster fix), fail over failed primaries",
    )
}

fn slot_balance(view: &View) -> Check {
    const REC: &str = "slots spread evenly (redis-cli --cluster rebalance, which acts above 2 %)";
    let voting: Vec<&ViewShard> = view.voting().collect();
    if voting.len() < 2 {
        return check(
            "slot-balance",
            CheckStatus::Ok,
            None,
            format!(
                "{} serving slots",
                plural(voting.len(), "master", "masters")
            ),
            REC,
        );
    }
    let even = f64::from(SLOT_COUNT) / voting.len() as f64;
    let deviation = |s: &ViewShard| (s.slots as f64 - even).abs() / even;
    let min = voting.iter().map(|s| s.slots).min().unwrap_or(0);
    let max = voting.iter().map(|s| s.slots).max().unwrap_or(0);
    let worst = voting
        .iter()
        .copied()
        .max_by(|a, b| deviation(a).total_cmp(&deviation(b)));
    match worst {
        Some(w) if deviation(w) > SLOT_BALANCE_TOLERANCE => check(
            "slot-balance",
            CheckStatus::Warn,
            Some(&w.primary.addr),
            format!(
                "{min}-{max} slots per master; this one serves {} ({:.0} % off an even {even:.0})",
                w.slots,
                deviation(w) * 100.0
            ),
            REC,
        ),
        _ => check(
            "slot-balance",
            CheckStatus::Ok,
            None,
            format!("{min}-{max} slots per master"),
            REC,
        ),
    }
}

fn masters(view: &View) -> Check {
    let voting = view.voting().count();
    let empty = view.shards.len() - voting;
    let mut observed = format!("{} serving slots", plural(voting, "master", "masters"));
    if empty > 0 {
        observed.push_str(&format!(
            ", {} without slots",
            plural(empty, "master", "masters")
        ));
    }
    let (status, recommendation) = if voting < 3 {
        (
            CheckStatus::Fail,
            "at least 3 masters (the seed: 3 masters, 3 replicas): fewer cannot keep a majority when one fails".to_owned(),
        )
    } else if voting % 2 == 0 {
        (
            CheckStatus::Warn,
            format!(
                "an odd number of masters: {voting} survive {} master failures, as {} do",
                (voting - 1) / 2,
                voting - 1
            ),
        )
    } else {
        (
            CheckStatus::Ok,
            "at least 3 masters, an odd number (the seed)".to_owned(),
        )
    };
    check("masters", status, None, observed, recommendation)
}

fn replicas(view: &View) -> Vec<Check> {
    const REC: &str = "at least 1 replica per master (the seed), 2 for critical workloads";
    let mut rows = Vec::new();
    let mut least = usize::MAX;
    for shard in view.voting() {
        let healthy = shard.replicas.iter().filter(|r| r.healthy).count();
        least = least.min(healthy);
        if healthy == 0 {
            rows.push(check(
                "replicas",
                CheckStatus::Fail,
                Some(&shard.primary.addr),
                if shard.replicas.is_empty() {
                    "no replica".to_owned()
                } else {
                    format!("no healthy replica ({} failed)", shard.replicas.len())
                },
                format!(
                    "{REC}: without one, losing this master loses its {} slots' data",
                    shard.slots
                ),
            ));
        }
    }
    if rows.is_empty() {
        let n = view.voting().count();
        rows.push(check(
            "replicas",
            CheckStatus::Ok,
            None,
            format!(
                "{} with at least {}",
                plural(n, "master", "masters"),
                plural(if n == 0 { 0 } else { least }, "replica", "replicas")
            ),
            REC,
        ));
    }
    rows
}

fn replica_placement(view: &View) -> Vec<Check> {
    const REC: &str =
        "replicas on other hosts than their masters, so one host failing does not take both";
    let mut rows = Vec::new();
    let mut placed = 0;
    for shard in &view.shards {
        for replica in &shard.replicas {
            if replica.host().eq_ignore_ascii_case(shard.primary.host()) {
                rows.push(check(
                    "replica-placement",
                    CheckStatus::Warn,
                    Some(&replica.addr),
                    format!(
                        "on host {}, as its master {}",
                        replica.host(),
                        shard.primary.addr
                    ),
                    REC,
                ));
            } else {
                placed += 1;
            }
        }
    }
    if rows.is_empty() {
        let status = if placed == 0 {
            CheckStatus::Unknown
        } else {
            CheckStatus::Ok
        };
        let observed = if placed == 0 {
            "no replicas".to_owned()
        } else {
            format!(
                "{} on other hosts than their masters",
                plural(placed, "replica", "replicas")
            )
        };
        rows.push(check("replica-placement", status, None, observed, REC));
    }
    rows
}

/// A replica as its master's `INFO replication` describes it.
#[derive(Debug, Default)]
struct Seen {
    state: Option<String>,
    lag: Option<u64>,
    behind: Option<u64>,
}

/// Finds `replica`'s `slaveN:` line in its master's `INFO`: by announced address, else
/// by port when only one line has it, else the only line of a master with one replica
/// (the address a master sees may be NATed).
fn seen_by_master(master_info: &str, replica: &Member, replicas_of_master: usize) -> Option<Seen> {
    let lines = replica_lines(master_info);
    let port = replica.port();
    let by_addr = lines
        .iter()
        .find(|l| field(l, "ip") == Some(replica.host()) && field(l, "port") == port);
    let by_port = || {
        let mut same = lines.iter().filter(|l| field(l, "port") == port);
        match (same.next(), same.next()) {
            (Some(l), None) => Some(l),
            _ => None,
        }
    };
    let only = || (lines.len() == 1 && replicas_of_master == 1).then(|| &lines[0]);
    let line = by_addr.or_else(by_port).or_else(only)?;
    let offset: Option<u64> = field(line, "offset").and_then(|o| o.parse().ok());
    let master_offset = info_number(master_info, "master_repl_offset");
    Some(Seen {
        state: field(line, "state").map(str::to_owned),
        lag: field(line, "lag").and_then(|l| l.parse().ok()),
        behind: offset.zip(master_offset).map(|(o, m)| m.saturating_sub(o)),
    })
}

fn replication<'a>(view: &View, answers: &dyn Fn(&str) -> Option<&'a Answers>) -> Vec<Check> {
    const REC: &str = "replication link up, replicas acknowledging every second";
    let mut rows = Vec::new();
    let (mut fine, mut worst_lag, mut worst_behind, mut unreported) = (0, 0, 0, 0);
    for shard in &view.shards {
        let master_info = answers(&shard.primary.addr).and_then(|a| text(&a.info).ok());
        for replica in &shard.replicas {
            // An unreachable replica is reported by `node-reachable`.
            let Some(a) = answers(&replica.addr) else {
                continue;
            };
            let info = match text(&a.info) {
                Ok(info) => info,
                Err(why) => {
                    rows.push(check(
                        "replication",
                        CheckStatus::Unknown,
                        Some(&replica.addr),
                        format!("INFO not readable: {why}"),
                        REC,
                    ));
                    continue;
                }
            };
            let link = info_field(&info, "master_link_status").unwrap_or("unknown");
            // The link reads `down` for as long as a (re)sync runs: a new replica, or one
            // back from a restart, still syncing is on its way, not cut off.
            if link != "up" && info_field(&info, "master_sync_in_progress") == Some("1") {
                rows.push(check(
                    "replication",
                    CheckStatus::Warn,
                    Some(&replica.addr),
                    format!("still syncing from {}", shard.primary.addr),
                    format!("{REC}: until the sync ends it cannot take over with current data; a sync that never ends needs a larger `client-output-buffer-limit replica` or `repl-backlog-size`"),
                ));
                continue;
            }
            if link != "up" {
                let since = info_field(&info, "master_link_down_since_seconds")
                    .map(|s| format!(" for {s} s"))
                    .unwrap_or_default();
                rows.push(check(
                    "replication",
                    CheckStatus::Fail,
                    Some(&replica.addr),
                    format!("link to {} {link}{since}", shard.primary.addr),
                    format!("{REC}: check the network and the replica's log; a replica without a link cannot take over with current data"),
                ));
                continue;
            }
            let seen = master_info
                .as_deref()
                .and_then(|m| seen_by_master(m, replica, shard.replicas.len()));
            let Some(seen) = seen else {
                fine += 1;
                unreported += 1;
                continue;
            };
            let state = seen.state.as_deref().unwrap_or("online");
            let lag = seen.lag.unwrap_or(0);
            if state != "online" || lag > REPLICATION_LAG_WARN_SECS {
                rows.push(check(
                    "replication",
                    CheckStatus::Warn,
                    Some(&replica.addr),
                    format!(
                        "link up, state {state}, last ack {lag} s ago, {} behind",
                        human_bytes(seen.behind.unwrap_or(0))
                    ),
                    format!("{REC}: a lagging replica loses the writes it has not received if it takes over; check its load and network"),
                ));
                continue;
            }
            fine += 1;
            worst_lag = worst_lag.max(lag);
            worst_behind = worst_behind.max(seen.behind.unwrap_or(0));
        }
    }
    if fine > 0 {
        let mut observed = format!(
            "{}: link up, last ack at most {worst_lag} s ago, at most {} behind",
            plural(fine, "replica", "replicas"),
            human_bytes(worst_behind)
        );
        if unreported > 0 {
            observed.push_str(&format!(" ({unreported} not reported by their master)"));
        }
        rows.push(check("replication", CheckStatus::Ok, None, observed, REC));
    }
    if rows.is_empty() {
        let any = view.shards.iter().any(|s| !s.replicas.is_empty());
        rows.push(check(
            "replication",
            CheckStatus::Unknown,
            None,
            if any {
                "no replica answered"
            } else {
                "no replicas"
            },
            REC,
        ));
    }
    rows
}

fn node_timeout(addr: &str, a: &Answers) -> Check {
    const REC: &str = "cluster-node-timeout 5000-15000 ms (the seed): lower fails over on hiccups, higher detects failures late";
    let value =
        config(&a.config).map(|c| config_value(&c, "cluster-node-timeout").map(str::to_owned));
    match value {
        Ok(Some(v)) => match v.parse::<u64>() {
            Ok(ms) if NODE_TIMEOUT_MS.contains(&ms) => check(
                "cluster-node-timeout",
                CheckStatus::Ok,
                Some(addr),
                format!("{ms} ms"),
                REC,
            ),
            Ok(ms) => check(
                "cluster-node-timeout",
                CheckStatus::Warn,
                Some(addr),
                format!("{ms} ms"),
                REC,
            ),
            Err(_) => check(
                "cluster-node-timeout",
                CheckStatus::Unknown,
                Some(addr),
                format!("unreadable value {:?}", clip(&v, 20)),
                REC,
            ),
        },
        Ok(None) => check(
            "cluster-node-timeout",
            CheckStatus::Unknown,
            Some(addr),
            "not reported by CONFIG GET",
            REC,
        ),
        Err(why) => check(
            "cluster-node-timeout",
            CheckStatus::Unknown,
            Some(addr),
            format!("CONFIG GET: {why}"),
            REC,
        ),
    }
}

fn maxmemory(addr: &str, a: &Answers) -> Check {
    const REC: &str = "maxmemory at 80-90 % of the node's memory (the seed), so it evicts or refuses writes instead of being killed";
    let info = match text(&a.info) {
        Ok(info) => info,
        Err(why) => {
            return check(
                "maxmemory",
                CheckStatus::Unknown,
                Some(addr),
                format!("INFO not readable: {why}"),
                REC,
            )
        }
    };
    let Some(max) = info_number(&info, "maxmemory") else {
        return check(
            "maxmemory",
            CheckStatus::Unknown,
            Some(addr),
            "INFO has no maxmemory",
            REC,
        );
    };
    let host = info_number(&info, "total_system_memory").filter(|&t| t > 0);
    if max == 0 {
        return check("maxmemory", CheckStatus::Warn, Some(addr), "not set", REC);
    }
    match host {
        Some(host) => {
            let observed = format!(
                "{} ({:.0} % of the host's {})",
                human_bytes(max),
                percent(max, host),
                human_bytes(host)
            );
            check("maxmemory", fits_host(max, host), Some(addr), observed, REC)
        }
        // Set, but whether it fits the host could not be checked.
        None => check(
            "maxmemory",
            CheckStatus::Unknown,
            Some(addr),
            format!("{} (host memory not reported)", human_bytes(max)),
            REC,
        ),
    }
}

/// `Ok` when `maxmemory` (of a node, or of the nodes on one host in all) leaves the host
/// a tenth of its `memory`, else `Warn`.
fn fits_host(maxmemory: u64, memory: u64) -> CheckStatus {
    if maxmemory as f64 > memory as f64 * MAXMEMORY_OF_HOST {
        CheckStatus::Warn
    } else {
        CheckStatus::Ok
    }
}

/// Nodes that share a host (by the address the client reaches them at) share its
/// memory: each node's `maxmemory` may fit the host while all of them together do not.
/// One row per host with two nodes or more that set it.
fn maxmemory_per_host(reached: &[(&str, &Answers)]) -> Vec<Check> {
    const REC: &str = "the maxmemory of the nodes sharing a host at most 90 % of its memory in all, so that together they evict or refuse writes instead of being killed";
    // Per host: nodes, their maxmemory in all, and the host's memory as they report it.
    let mut hosts: Vec<(&str, usize, u64, u64)> = Vec::new();
    for (addr, a) in reached {
        let Ok(info) = text(&a.info) else { continue };
        let Some(max) = info_number(&info, "maxmemory").filter(|&m| m > 0) else {
            continue;
        };
        let Some(memory) = info_number(&info, "total_system_memory").filter(|&t| t > 0) else {
            continue;
        };
        let host = addr.rsplit_once(':').map_or(*addr, |(h, _)| h);
        match hosts.iter_mut().find(|(h, ..)| *h == host) {
            Some((_, nodes, sum, seen)) => {
                *nodes += 1;
                *sum = sum.saturating_add(max);
                *seen = (*seen).max(memory);
            }
            None => hosts.push((host, 1, max, memory)),
        }
    }
    hosts
        .into_iter()
        .filter(|&(_, nodes, ..)| nodes >= 2)
        .map(|(host, nodes, sum, memory)| {
            let observed = format!(
                "{nodes} nodes on {host}: {} in all, {:.0} % of its {}",
                human_bytes(sum),
                percent(sum, memory),
                human_bytes(memory)
            );
            check(
                "maxmemory-per-host",
                fits_host(sum, memory),
                None,
                observed,
                REC,
            )
        })
        .collect()
}

fn maxmemory_policy(addr: &str, a: &Answers) -> Check {
    const REC: &str = "an eviction policy: allkeys-lru for caches (the seed), volatile-lru or allkeys-lfu; noeviction refuses writes when full";
    let policy = text(&a.info).map(|t| info_field(&t, "maxmemory_policy").map(str::to_owned));
    match policy {
        Ok(Some(p)) if p == "noeviction" => {
            check("maxmemory-policy", CheckStatus::Warn, Some(addr), p, REC)
        }
        Ok(Some(p)) => check("maxmemory-policy", CheckStatus::Ok, Some(addr), p, REC),
        Ok(None) => check(
            "maxmemory-policy",
            CheckStatus::Unknown,
            Some(addr),
            "INFO has no maxmemory_policy",
            REC,
        ),
        Err(why) => check(
            "maxmemory-policy",
            CheckStatus::Unknown,
            Some(addr),
            format!("INFO not readable: {why}"),
            REC,
        ),
    }
}

fn memory_usage(reached: &[(&str, &Answers)]) -> Vec<Check> {
    const REC: &str =
        "memory used below 80 % of maxmemory (or an allkeys-* policy, which evicts at the limit): raise maxmemory, add masters, or shrink keys (TTLs)";
    let mut rows = Vec::new();
    let mut highest: Option<(f64, &str, String)> = None;
    for (addr, a) in reached {
        let Ok(info) = text(&a.info) else {
            continue; // `maxmemory` already says why.
        };
        let Some(used) = info_number(&info, "used_memory") else {
            continue;
        };
        let (limit, of) = match info_number(&info, "maxmemory").filter(|&m| m > 0) {
            Some(max) => (max, "maxmemory"),
            None => match info_number(&info, "total_system_memory").filter(|&t| t > 0) {
                Some(host) => (host, "the host's memory"),
                None => continue,
            },
        };
        let share = used as f64 / limit as f64;
        let mut observed = format!(
            "{} used, {:.0} % of {of} ({})",
            human_bytes(used),
            share * 100.0,
            human_bytes(limit)
        );
        // A cache under an `allkeys-*` policy (the seed's `allkeys-lru`) sits at its
        // limit by design: it evicts rather than refuse writes. (`volatile-*` evicts only
        // keys with a TTL, and `noeviction` nothing: near the limit, writes fail.)
        let policy = info_field(&info, "maxmemory_policy").unwrap_or("");
        let evicts = of == "maxmemory" && policy.starts_with("allkeys-");
        if share > MEMORY_USED_WARN && evicts {
            observed = format!("{observed}, {policy} evicts at the limit");
        }
        if share > MEMORY_USED_WARN && !evicts {
            rows.push(check(
                "memory-usage",
                CheckStatus::Warn,
                Some(addr),
                observed,
                REC,
            ));
        } else if highest.as_ref().is_none_or(|(s, _, _)| share > *s) {
            highest = Some((share, addr, observed));
        }
    }
    match highest {
        Some((_, addr, observed)) if rows.is_empty() => rows.push(check(
            "memory-usage",
            CheckStatus::Ok,
            Some(addr),
            format!("highest: {observed}"),
            REC,
        )),
        None if rows.is_empty() => rows.push(check(
            "memory-usage",
            CheckStatus::Unknown,
            None,
            reached
                .iter()
                .find_map(|(_, a)| text(&a.info).err())
                .map_or_else(
                    || "no node reported its memory".to_owned(),
                    |why| format!("INFO not readable: {why}"),
                ),
            REC,
        )),
        _ => {}
    }
    rows
}

fn persistence(addr: &str, a: &Answers) -> Check {
    const REC: &str =
        "appendonly yes with appendfsync everysec (the seed), always for maximum durability";
    let aof = text(&a.info).map(|t| info_field(&t, "aof_enabled").map(|v| v == "1"));
    let fsync = config(&a.config).map(|c| config_value(&c, "appendfsync").map(str::to_owned));
    match (aof, fsync) {
        (Err(why), _) => check(
            "persistence",
            CheckStatus::Unknown,
            Some(addr),
            format!("INFO not readable: {why}"),
            REC,
        ),
        (Ok(None), _) => check(
            "persistence",
            CheckStatus::Unknown,
            Some(addr),
            "INFO has no aof_enabled",
            REC,
        ),
        (Ok(Some(false)), _) => check(
            "persistence",
            CheckStatus::Warn,
            Some(addr),
            "appendonly no",
            REC,
        ),
        // The log is on, but its last write or rewrite failed (a full or failing
        // disk): what is acknowledged now may not be on disk.
        (Ok(Some(true)), _) if aof_failing(a).is_some() => check(
            "persistence",
            CheckStatus::Warn,
            Some(addr),
            format!(
                "appendonly yes, but {}:err (the disk?)",
                aof_failing(a).unwrap_or_default()
            ),
            REC,
        ),
        (Ok(Some(true)), Ok(Some(f))) if f == "everysec" || f == "always" => check(
            "persistence",
            CheckStatus::Ok,
            Some(addr),
            format!("appendonly yes, appendfsync {f}"),
            REC,
        ),
        (Ok(Some(true)), Ok(Some(f))) => check(
            "persistence",
            CheckStatus::Warn,
            Some(addr),
            format!("appendonly yes, appendfsync {}", clip(&f, 20)),
            REC,
        ),
        (Ok(Some(true)), Ok(None)) => check(
            "persistence",
            CheckStatus::Unknown,
            Some(addr),
            "appendonly yes; appendfsync not reported by CONFIG GET",
            REC,
        ),
        (Ok(Some(true)), Err(why)) => check(
            "persistence",
            CheckStatus::Unknown,
            Some(addr),
            format!("appendonly yes; appendfsync not readable: CONFIG GET: {why}"),
            REC,
        ),
    }
}

/// The `INFO` field saying the append-only file's last write or rewrite failed, if one
/// does.
fn aof_failing(a: &Answers) -> Option<&'static str> {
    let info = text(&a.info).ok()?;
    ["aof_last_write_status", "aof_last_bgrewrite_status"]
        .into_iter()
        .find(|name| info_field(&info, name) == Some("err"))
}

fn authentication(addr: &str, a: &Answers, client: ClientSide) -> Check {
    const REC: &str = "require a password (requirepass or ACL users, the seed); turn the default user off or give it a password";
    if !client.credentials {
        return check(
            "authentication",
            CheckStatus::Fail,
            Some(addr),
            "this client connected without a password",
            REC,
        );
    }
    if let Some(flags) = acl_flags(&a.default_user) {
        let has = |f: &str| flags.iter().any(|x| x == f);
        return if has("off") {
            check(
                "authentication",
                CheckStatus::Ok,
                Some(addr),
                "default user off",
                REC,
            )
        } else if has("nopass") {
            check(
                "authentication",
                CheckStatus::Fail,
                Some(addr),
                "default user on with nopass: anyone who reaches the port may connect",
                REC,
            )
        } else {
            check(
                "authentication",
                CheckStatus::Ok,
                Some(addr),
                "default user needs a password",
                REC,
            )
        };
    }
    match &a.unauthenticated {
        Some(Err(Error::Auth(_))) => check(
            "authentication",
            CheckStatus::Ok,
            Some(addr),
            "a connection without credentials is refused",
            REC,
        ),
        Some(Ok(Value::ServerError(e))) if e.code() == "NOAUTH" => check(
            "authentication",
            CheckStatus::Ok,
            Some(addr),
            "a connection without credentials is refused (NOAUTH)",
            REC,
        ),
        Some(Ok(v)) if !v.is_error() => check(
            "authentication",
            CheckStatus::Fail,
            Some(addr),
            "a connection without credentials may run commands",
            REC,
        ),
        probe => {
            let probe = probe
                .as_ref()
                .map(|p| format!("; probe without credentials: {}", why(p)))
                .unwrap_or_default();
            check(
                "authentication",
                CheckStatus::Unknown,
                Some(addr),
                format!("ACL GETUSER default: {}{probe}", why(&a.default_user)),
                REC,
            )
        }
    }
}

fn tls(addr: &str, a: &Answers, client: ClientSide) -> Check {
    const REC: &str = "TLS only (tls-port set, and port 0 so that nothing is served in plaintext: the seed sets tls-port 6380 but leaves port 6379 open, to close or firewall), clients connecting with ClusterClientBuilder::tls";
    let ports = config(&a.config).map(|c| {
        let port = |name| config_value(&c, name).and_then(|v| v.parse::<u32>().ok());
        (port("port"), port("tls-port"))
    });
    match ports {
        Ok((Some(0), Some(tls_port))) if tls_port > 0 => check(
            "tls",
            CheckStatus::Ok,
            Some(addr),
            "TLS only (port 0, tls-port set)",
            REC,
        ),
        Ok((Some(port), Some(tls))) if tls > 0 => check(
            "tls",
            CheckStatus::Warn,
            Some(addr),
            format!("TLS on port {tls}, plaintext still on port {port}"),
            REC,
        ),
        Ok((_, Some(0))) => check(
            "tls",
            CheckStatus::Warn,
            Some(addr),
            "TLS off (tls-port 0)",
            REC,
        ),
        other => {
            let why = match other {
                Err(why) => format!("CONFIG GET: {why}"),
                Ok(_) => "ports not reported by CONFIG GET".to_owned(),
            };
            if client.tls {
                // TLS is on, but "TLS only" could not be checked.
                check(
                    "tls",
                    CheckStatus::Unknown,
                    Some(addr),
                    format!("this client connects over TLS; whether plaintext is served too is unknown ({why})"),
                    REC,
                )
            } else {
                check(
                    "tls",
                    CheckStatus::Warn,
                    Some(addr),
                    "this client connects without TLS",
                    REC,
                )
            }
        }
    }
}

/// What one dangerous command is on one node, for the client's user.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Access {
    /// Unknown under its name: renamed or disabled (`rename-command`).
    Renamed,
    /// Off by configuration (`enable-debug-command no`).
    Off,
    /// The user may not run it.
    Denied,
    /// The user may run it.
    Allowed,
    Unknown(String),
}

fn access(index: usize, a: &Answers, config: Option<&[(String, String)]>) -> Access {
    let (name, _) = DANGEROUS_COMMANDS[index];
    if known_commands(&a.command_info).is_some_and(|k| !k.get(index).copied().unwrap_or(true)) {
        return Access::Renamed;
    }
    if name == "DEBUG" && config.and_then(|c| config_value(c, "enable-debug-command")) == Some("no")
    {
        return Access::Off;
    }
    let Some((_, reply)) = a.dry_runs.iter().find(|(n, _)| *n == name) else {
        return Access::Unknown("not checked".to_owned());
    };
    match reply {
        Ok(Value::Simple(s)) if s.eq_ignore_ascii_case(b"OK") => Access::Allowed,
        // A refusal is a string reply ("This user has no permissions to run ..."), not
        // an error: the dry run itself succeeded.
        Ok(v @ (Value::Bulk(_) | Value::Verbatim { .. })) => {
            let text = v
                .as_bytes()
                .map(String::from_utf8_lossy)
                .unwrap_or_default();
            if text.contains("no permissions") {
                Access::Denied
            } else {
                Access::Unknown(clip(&text, 60))
            }
        }
        Ok(Value::ServerError(e))
            if e.message().contains("not found") && e.message().contains("Command") =>
        {
            Access::Renamed
        }
        other => Access::Unknown(format!("ACL DRYRUN: {}", why(other))),
    }
}

fn dangerous_commands(addr: &str, a: &Answers) -> Check {
    const REC: &str = "rename-command FLUSHALL, FLUSHDB and DEBUG \"\" and CONFIG to a secret name, or deny them with ACL -@dangerous (the seed)";
    let config = config(&a.config).ok();
    let states: Vec<(&str, Access)> = (0..DANGEROUS_COMMANDS.len())
        .map(|i| (DANGEROUS_COMMANDS[i].0, access(i, a, config.as_deref())))
        .collect();
    let names = |want: &dyn Fn(&Access) -> bool| {
        states
            .iter()
            .filter(|(_, s)| want(s))
            .map(|(n, _)| *n)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let user = a.user.as_deref().unwrap_or("the client's user");
    let mut parts = Vec::new();
    let allowed = names(&|s| *s == Access::Allowed);
    if !allowed.is_empty() {
        parts.push(format!("{allowed} allowed for {user}"));
    }
    let renamed = names(&|s| *s == Access::Renamed);
    if !renamed.is_empty() {
        parts.push(format!("{renamed} renamed or disabled"));
    }
    let off = names(&|s| *s == Access::Off);
    if !off.is_empty() {
        parts.push(format!("{off} off (enable-debug-command no)"));
    }
    let denied = names(&|s| *s == Access::Denied);
    if !denied.is_empty() {
        parts.push(format!("{denied} denied to {user}"));
    }
    let unknown: Vec<String> = states
        .iter()
        .filter_map(|(n, s)| match s {
            Access::Unknown(why) => Some(format!("{n}: {why}")),
            _ => None,
        })
        .collect();
    let status = if !allowed.is_empty() {
        CheckStatus::Warn
    } else if !unknown.is_empty() {
        CheckStatus::Unknown
    } else {
        CheckStatus::Ok
    };
    if !unknown.is_empty() {
        parts.push(format!("unknown for {}", unknown.join("; ")));
    }
    check(
        "dangerous-commands",
        status,
        Some(addr),
        parts.join("; "),
        REC,
    )
}

/// The sampled keys of every primary, with their node.
fn samples<'a>(
    reached: &'a [(&'a str, &'a Answers)],
    view: Option<&View>,
) -> Vec<(&'a str, &'a KeySample)> {
    reached
        .iter()
        .filter(|(addr, _)| view.is_none_or(|v| v.is_primary(addr)))
        .filter_map(|(addr, a)| Some((*addr, a.keys.as_ref()?)))
        .collect()
}

/// What a key check measures on each sampled key, and how its line words it.
struct KeyMeasure<T> {
    name: &'static str,
    /// The command that measures a key, named when it refused.
    command: &'static str,
    /// One key's measurement; `Ok(None)` when there is nothing to judge.
    read: fn(&SampledKey) -> std::result::Result<Option<T>, &Reply>,
    /// A key that measures this much or more is reported.
    threshold: T,
    show: fn(T) -> String,
    /// "3 of 40 sampled keys {over}; {top} ...".
    over: &'static str,
    top: &'static str,
    rec: &'static str,
}

/// The line of a check that measures every sampled key: how many reach the threshold,
/// and the key that measures most (the first of equals).
fn sampled_key_check<T: Copy + PartialOrd>(
    samples: &[(&str, &KeySample)],
    m: &KeyMeasure<T>,
) -> Check {
    let mut measured = 0;
    let mut over = 0;
    let mut top: Option<(T, &str, &Bytes)> = None;
    let mut refused = None;
    // Primaries whose keys were not all measured, and why: a pass must not hide them.
    let mut unsampled: Vec<String> = Vec::new();
    for (addr, sample) in samples {
        let mut node_refused = None;
        for key in &sample.keys {
            let value = match (m.read)(key) {
                Ok(Some(value)) => value,
                Ok(None) => continue,
                Err(reply) => {
                    let reason = why(reply);
                    node_refused.get_or_insert_with(|| reason.clone());
                    refused.get_or_insert(reason);
                    continue;
                }
            };
            measured += 1;
            over += usize::from(value >= m.threshold);
            if top.is_none_or(|(t, _, _)| value > t) {
                top = Some((value, addr, &key.key));
            }
        }
        if let Some(e) = &sample.error {
            unsampled.push(format!("{addr} (SCAN: {})", failure(e)));
        } else if let Some(why) = node_refused {
            unsampled.push(format!("{addr} ({}: {why})", m.command));
        }
    }
    let Some((value, addr, key)) = top else {
        return match refused {
            Some(why) => check(
                m.name,
                CheckStatus::Unknown,
                None,
                format!("{}: {why}", m.command),
                m.rec,
            ),
            None => sample_missing(m.name, samples, m.rec),
        };
    };
    let (key, shown) = (show_key(key), (m.show)(value));
    let (mut status, mut observed) = if over > 0 {
        let warn = format!(
            "{over} of {measured} sampled keys {}; {} {key} ({shown})",
            m.over, m.top
        );
        (CheckStatus::Warn, warn)
    } else {
        let ok = format!("{} of {measured} sampled keys: {key} ({shown})", m.top);
        (CheckStatus::Ok, ok)
    };
    if !unsampled.is_empty() {
        observed = format!("{observed}; not fully sampled: {}", unsampled.join(", "));
        if status == CheckStatus::Ok {
            status = CheckStatus::Unknown;
        }
    }
    check(m.name, status, Some(addr), observed, m.rec)
}

fn big_keys(reached: &[(&str, &Answers)], view: Option<&View>) -> Vec<Check> {
    let measure = KeyMeasure {
        name: "big-keys",
        command: "MEMORY USAGE",
        read: |key| match &key.memory {
            Ok(Value::Int(n)) => Ok(Some(u64::try_from(*n).unwrap_or(0))),
            Ok(Value::Nil) => Ok(None), // Gone since the scan.
            other => Err(other),
        },
        threshold: BIG_KEY_BYTES,
        show: human_bytes,
        over: "use 1 MiB or more",
        top: "largest",
        rec: "no key of 1 MiB or more: split big values and collections (they block their node when deleted, migrated or replicated)",
    };
    vec![sampled_key_check(&samples(reached, view), &measure)]
}

fn hot_keys(reached: &[(&str, &Answers)], view: Option<&View>) -> Vec<Check> {
    let samples = samples(reached, view);
    // Without an LFU policy every key is skipped: nothing is measured, nothing refused.
    let tracked = samples.iter().any(|(_, s)| {
        s.keys
            .iter()
            .any(|k| k.freq.as_ref().is_some_and(|f| !not_lfu(f)))
    });
    if !tracked && samples.iter().any(|(_, s)| !s.keys.is_empty()) {
        return vec![check(
            "hot-keys",
            CheckStatus::Unknown,
            None,
            "not measured: the maxmemory-policy is not LFU, so OBJECT FREQ counts nothing",
            "an allkeys-lfu or volatile-lfu policy to find hot keys (also for redis-cli --hotkeys), or watch per-node command rates (redis_commands_total{node})",
        )];
    }
    let measure = KeyMeasure {
        name: "hot-keys",
        command: "OBJECT FREQ",
        read: |key| match &key.freq {
            Some(Ok(Value::Int(n))) => Ok(Some(*n)),
            // Not asked, not counted (no LFU policy), or the key went away between the
            // sample and the question (Redis 7 answers nil; older servers an error).
            None | Some(Ok(Value::Nil)) => Ok(None),
            Some(reply) if not_lfu(reply) => Ok(None),
            Some(Ok(Value::ServerError(e)))
                if e.code() == "ERR" && e.message().starts_with("no such key") =>
            {
                Ok(None)
            }
            Some(other) => Err(other),
        },
        threshold: HOT_KEY_FREQ,
        show: |freq| format!("LFU counter {freq}"),
        over: "are hot",
        top: "hottest",
        rec: "no hot key: shard it (key:shard0..N), cache it in the application, or read it from replicas (the seed)",
    };
    vec![sampled_key_check(&samples, &measure)]
}

/// The line of a key check when no key could be judged: none stored, or none sampled.
fn sample_missing(name: &'static str, samples: &[(&str, &KeySample)], rec: &str) -> Check {
    if let Some(e) = samples.iter().find_map(|(_, s)| s.error.as_ref()) {
        return check(
            name,
            CheckStatus::Unknown,
            None,
            format!("SCAN: {}", failure(e)),
            rec,
        );
    }
    if samples.is_empty() {
        return check(
            name,
            CheckStatus::Unknown,
            None,
            "no primary could be sampled",
            rec,
        );
    }
    check(name, CheckStatus::Ok, None, "no keys on the primaries", rec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ServerError;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    fn map(pairs: Vec<(&str, Value)>) -> Value {
        Value::Map(pairs.into_iter().map(|(k, v)| (bulk(k), v)).collect())
    }

    fn err(text: &str) -> Value {
        Value::ServerError(ServerError::new(Bytes::copy_from_slice(text.as_bytes())))
    }

    const NOPERM_CONFIG: &str =
        "NOPERM this user has no permissions to run the 'config|get' command";

    /// One shard: slot ranges, the primary's and the replicas' `host:port`.
    struct Shard {
        ranges: Vec<(u16, u16)>,
        primary: &'static str,
        replicas: Vec<&'static str>,
    }

    /// The seed's layout: 3 masters and 3 replicas, each on a host of its own.
    fn seed_layout() -> Vec<Shard> {
        vec![
            Shard {
                ranges: vec![(0, 5460)],
                primary: "10.0.0.1:6379",
                replicas: vec!["10.0.0.4:6379"],
            },
            Shard {
                ranges: vec![(5461, 10922)],
                primary: "10.0.0.2:6379",
                replicas: vec!["10.0.0.5:6379"],
            },
            Shard {
                ranges: vec![(10923, 16383)],
                primary: "10.0.0.3:6379",
                replicas: vec!["10.0.0.6:6379"],
            },
        ]
    }

    fn shard_node(addr: &str, role: &str) -> Value {
        let (host, port) = addr.rsplit_once(':').unwrap();
        map(vec![
            ("id", bulk(&format!("id-{addr}"))),
            ("port", Value::Int(port.parse().unwrap())),
            ("ip", bulk(host)),
            ("endpoint", bulk(host)),
            ("role", bulk(role)),
            ("replication-offset", Value::Int(1000)),
            ("health", bulk("online")),
        ])
    }

    /// `CLUSTER SHARDS` as a RESP3 server sends it.
    fn shards_reply(layout: &[Shard]) -> Value {
        Value::Array(
            layout
                .iter()
                .map(|s| {
                    let slots = s
                        .ranges
                        .iter()
                        .flat_map(|&(a, b)| [Value::Int(a.into()), Value::Int(b.into())])
                        .collect();
                    let nodes = std::iter::once(shard_node(s.primary, "master"))
                        .chain(s.replicas.iter().map(|r| shard_node(r, "replica")))
                        .collect();
                    map(vec![
                        ("slots", Value::Array(slots)),
                        ("nodes", Value::Array(nodes)),
                    ])
                })
                .collect(),
        )
    }

    /// A healthy node's `INFO`: 1 MiB used of 1 GiB maxmemory on an 8 GiB host, AOF on.
    fn info(layout: &[Shard], addr: &str) -> String {
        let mut text = String::from(
            "# Server\r\nredis_version:7.0.15\r\n\r\n# Memory\r\nused_memory:1048576\r\n\
             used_memory_human:1.00M\r\ntotal_system_memory:8589934592\r\n\
             maxmemory:1073741824\r\nmaxmemory_human:1.00G\r\nmaxmemory_policy:allkeys-lru\r\n\
             \r\n# Persistence\r\naof_enabled:1\r\n\r\n# Replication\r\n",
        );
        match layout.iter().find(|s| s.primary == addr) {
            Some(shard) => {
                text.push_str(&format!(
                    "role:master\r\nconnected_slaves:{}\r\n",
                    shard.replicas.len()
                ));
                for (i, r) in shard.replicas.iter().enumerate() {
                    let (ip, port) = r.rsplit_once(':').unwrap();
                    text.push_str(&format!(
                        "slave{i}:ip={ip},port={port},state=online,offset=990,lag=0\r\n"
                    ));
                }
                text.push_str("master_repl_offset:1000\r\n");
            }
            None => text.push_str(
                "role:slave\r\nmaster_host:10.0.0.1\r\nmaster_link_status:up\r\n\
                 slave_repl_offset:1000\r\n",
            ),
        }
        text
    }

    /// The answers of a node configured as the seed recommends, its user `app` denied
    /// the dangerous commands.
    fn answers(layout: &[Shard], addr: &str) -> Answers {
        let primary = layout.iter().any(|s| s.primary == addr);
        Answers {
            shards: Ok(shards_reply(layout)),
            cluster_info: Ok(bulk("cluster_state:ok\r\ncluster_slots_assigned:16384\r\n")),
            info: Ok(Value::Verbatim {
                format: *b"txt",
                text: Bytes::from(info(layout, addr)),
            }),
            config: Ok(map(vec![
                ("cluster-node-timeout", bulk("5000")),
                ("appendfsync", bulk("everysec")),
                ("port", bulk("0")),
                ("tls-port", bulk("6379")),
                ("enable-debug-command", bulk("no")),
            ])),
            default_user: Ok(map(vec![
                (
                    "flags",
                    Value::Array(vec![bulk("on"), bulk("sanitize-payload")]),
                ),
                (
                    "passwords",
                    Value::Array(vec![bulk("5e884898da28047151d0e56f8dc6292773603d0d")]),
                ),
            ])),
            unauthenticated: None,
            command_info: Ok(Value::Array(vec![
                Value::Array(vec![bulk("flushall")]),
                Value::Array(vec![bulk("flushdb")]),
                Value::Nil,
                Value::Array(vec![bulk("debug")]),
            ])),
            user: Some("app".to_owned()),
            dry_runs: vec![
                (
                    "FLUSHALL",
                    Ok(bulk(
                        "This user has no permissions to run the 'flushall' command",
                    )),
                ),
                (
                    "FLUSHDB",
                    Ok(bulk(
                        "This user has no permissions to run the 'flushdb' command",
                    )),
                ),
                (
                    "DEBUG",
                    Ok(bulk(
                        "This user has no permissions to run the 'debug' command",
                    )),
                ),
            ],
            keys: primary.then(|| KeySample {
                keys: vec![SampledKey {
                    key: Bytes::from_static(b"user:{42}:name"),
                    memory: Ok(Value::Int(72)),
                    freq: None,
                }],
                error: None,
            }),
        }
    }

    const CLIENT: ClientSide = ClientSide {
        tls: true,
        credentials: true,
    };

    /// The report for `layout`, every node answering as `answers` says after `tweak`.
    fn run(
        layout: &[Shard],
        client: ClientSide,
        tweak: impl Fn(&str, &mut Answers),
    ) -> DoctorReport {
        let addrs: Vec<&str> = layout
            .iter()
            .flat_map(|s| std::iter::once(s.primary).chain(s.replicas.iter().copied()))
            .collect();
        let nodes: Vec<NodeFacts> = addrs
            .iter()
            .map(|addr| {
                let mut a = answers(layout, addr);
                tweak(addr, &mut a);
                NodeFacts {
                    addr: (*addr).to_owned(),
                    answers: Ok(a),
                }
            })
            .collect();
        let view = agreed_view(
            nodes
                .iter()
                .filter_map(|n| Some((n.addr.as_str(), &n.answers.as_ref().ok()?.shards))),
            client.tls,
            &|a| a.to_owned(),
        );
        let report = evaluate(&nodes, view.as_ref(), client);
        // The nodes' order (the routing snapshot's) changes nothing.
        let mut reversed = nodes;
        reversed.reverse();
        assert_eq!(evaluate(&reversed, view.as_ref(), client), report);
        report
    }

    /// Replaces (or adds) `name:value` in the node's `INFO`.
    fn set_info(a: &mut Answers, name: &str, value: &str) {
        let text = text(&a.info).unwrap();
        let prefix = format!("{name}:");
        let mut lines: Vec<String> = text
            .lines()
            .filter(|l| !l.starts_with(&prefix))
            .map(str::to_owned)
            .collect();
        lines.push(format!("{name}:{value}"));
        a.info = Ok(bulk(&lines.join("\r\n")));
    }

    fn set_config(a: &mut Answers, name: &str, value: &str) {
        let Ok(Value::Map(pairs)) = &mut a.config else {
            panic!("config is a map")
        };
        for (k, v) in pairs.iter_mut() {
            if k.as_bytes() == Some(name.as_bytes()) {
                *v = bulk(value);
            }
        }
    }

    fn status(report: &DoctorReport, name: &str) -> CheckStatus {
        report
            .status(name)
            .unwrap_or_else(|| panic!("no check {name} in\n{report}"))
    }

    #[test]
    fn the_seeds_production_setup_passes_every_check() {
        let report = run(&seed_layout(), CLIENT, |_, _| {});
        for c in &report.checks {
            // The seed's allkeys-lru counts no accesses: hot keys cannot be measured.
            let expected = if c.name == "hot-keys" {
                CheckStatus::Unknown
            } else {
                CheckStatus::Ok
            };
            assert_eq!(c.status, expected, "{c:?}\n{report}");
        }
        assert!(report.is_healthy());
        // Identical per-node answers fold into one line.
        let persistence: Vec<&Check> = report.checks_named("persistence").collect();
        assert_eq!(persistence.len(), 1, "{report}");
        assert_eq!(persistence[0].node, None);
        assert_eq!(
            persistence[0].observed,
            "appendonly yes, appendfsync everysec (all 6 nodes)"
        );
        let dangerous = report.checks_named("dangerous-commands").next().unwrap();
        assert!(
            dangerous
                .observed
                .starts_with("CONFIG renamed or disabled; DEBUG off (enable-debug-command no); FLUSHALL, FLUSHDB denied to app"),
            "{}",
            dangerous.observed
        );
        // Every check of the table is there, in its order.
        let names: Vec<&str> = report.checks.iter().map(|c| c.name).collect();
        let expected = vec![
            "node-reachable",
            "cluster-state",
            "slot-coverage",
            "slot-balance",
            "masters",
            "replicas",
            "replica-placement",
            "replication",
            "cluster-node-timeout",
            "maxmemory",
            "maxmemory-policy",
            "memory-usage",
            "persistence",
            "authentication",
            "tls",
            "dangerous-commands",
            "big-keys",
            "hot-keys",
        ];
        assert_eq!(names, expected);
    }

    #[test]
    fn each_misconfiguration_is_flagged() {
        // 4 masters, one holding 100 slots; no replicas; the rest misconfigured.
        let layout = vec![
            Shard {
                ranges: vec![(0, 5460)],
                primary: "10.0.0.1:6379",
                replicas: vec![],
            },
            Shard {
                ranges: vec![(5461, 10922)],
                primary: "10.0.0.2:6379",
                replicas: vec![],
            },
            Shard {
                ranges: vec![(10923, 16283)],
                primary: "10.0.0.3:6379",
                replicas: vec![],
            },
            Shard {
                ranges: vec![(16284, 16383)],
                primary: "10.0.0.7:6379",
                replicas: vec![],
            },
        ];
        let client = ClientSide {
            tls: false,
            credentials: false,
        };
        let report = run(&layout, client, |_, a| {
            set_info(a, "aof_enabled", "0");
            set_info(a, "maxmemory", "0");
            set_info(a, "maxmemory_policy", "noeviction");
            set_config(a, "cluster-node-timeout", "1000");
            set_config(a, "port", "6379");
            set_config(a, "tls-port", "0");
            a.default_user = Ok(map(vec![(
                "flags",
                Value::Array(vec![bulk("on"), bulk("nopass")]),
            )]));
            a.user = Some("default".to_owned());
            a.command_info = Ok(Value::Array(vec![Value::Array(vec![]); 4]));
            a.dry_runs = vec![
                ("FLUSHALL", Ok(Value::Simple(Bytes::from_static(b"OK")))),
                ("FLUSHDB", Ok(Value::Simple(Bytes::from_static(b"OK")))),
                ("CONFIG", Ok(Value::Simple(Bytes::from_static(b"OK")))),
                ("DEBUG", Ok(Value::Simple(Bytes::from_static(b"OK")))),
            ];
        });
        assert_eq!(status(&report, "cluster-state"), CheckStatus::Ok);
        assert_eq!(status(&report, "slot-coverage"), CheckStatus::Ok);
        assert_eq!(status(&report, "slot-balance"), CheckStatus::Warn);
        let balance = report.checks_named("slot-balance").next().unwrap();
        assert_eq!(balance.node.as_deref(), Some("10.0.0.7:6379"));
        assert_eq!(status(&report, "masters"), CheckStatus::Warn, "{report}");
        assert_eq!(status(&report, "replicas"), CheckStatus::Fail);
        assert_eq!(report.checks_named("replicas").count(), 4);
        assert_eq!(status(&report, "replica-placement"), CheckStatus::Unknown);
        assert_eq!(status(&report, "cluster-node-timeout"), CheckStatus::Warn);
        assert_eq!(status(&report, "maxmemory"), CheckStatus::Warn);
        assert_eq!(status(&report, "maxmemory-policy"), CheckStatus::Warn);
        assert_eq!(status(&report, "persistence"), CheckStatus::Warn);
        assert_eq!(status(&report, "authentication"), CheckStatus::Fail);
        assert_eq!(status(&report, "tls"), CheckStatus::Warn);
        assert_eq!(status(&report, "dangerous-commands"), CheckStatus::Warn);
        let dangerous = report.checks_named("dangerous-commands").next().unwrap();
        // DEBUG is off by `enable-debug-command no` even though ACLs allow it.
        assert!(
            dangerous
                .observed
                .starts_with("FLUSHALL, FLUSHDB, CONFIG allowed for default; DEBUG off"),
            "{}",
            dangerous.observed
        );
        assert!(!report.is_healthy());
        assert_eq!(report.failures().count(), 5, "{report}");
    }

    #[test]
    fn fewer_than_three_masters_fail_and_default_user_with_nopass_fails() {
        let layout = vec![Shard {
            ranges: vec![(0, 16383)],
            primary: "10.0.0.1:6379",
            replicas: vec!["10.0.0.1:6380"],
        }];
        let report = run(&layout, CLIENT, |_, a| {
            a.default_user = Ok(Value::Array(vec![
                bulk("flags"),
                Value::Array(vec![bulk("on"), bulk("nopass")]),
            ]));
        });
        assert_eq!(status(&report, "masters"), CheckStatus::Fail);
        assert_eq!(status(&report, "slot-balance"), CheckStatus::Ok);
        assert_eq!(status(&report, "authentication"), CheckStatus::Fail);
        // Same host: the one warning a single machine cannot avoid.
        let placement: Vec<&Check> = report.checks_named("replica-placement").collect();
        assert_eq!(placement.len(), 1);
        assert_eq!(placement[0].status, CheckStatus::Warn);
        assert_eq!(placement[0].node.as_deref(), Some("10.0.0.1:6380"));
    }

    /// Two nodes on one host, each within 90 % of its memory, over it together: each
    /// passes `maxmemory`, the host does not.
    #[test]
    fn nodes_sharing_a_host_are_judged_together() {
        let layout = vec![Shard {
            ranges: vec![(0, 16383)],
            primary: "10.0.0.1:6379",
            replicas: vec!["10.0.0.1:6380"],
        }];
        let half = (4u64 << 30).to_string();
        let report = run(&layout, CLIENT, |_, a| set_info(a, "maxmemory", &half));
        assert!(report
            .checks_named("maxmemory")
            .all(|c| c.status == CheckStatus::Ok));
        let host: Vec<&Check> = report.checks_named("maxmemory-per-host").collect();
        assert_eq!(host.len(), 1, "{report}");
        assert_eq!(host[0].status, CheckStatus::Warn);
        assert_eq!(
            host[0].observed,
            "2 nodes on 10.0.0.1: 8.0 GiB in all, 100 % of its 8.0 GiB"
        );
        // One host per node: no such row.
        let report = run(&seed_layout(), CLIENT, |_, _| {});
        assert_eq!(report.checks_named("maxmemory-per-host").count(), 0);
    }

    #[test]
    fn missing_rights_make_checks_unknown_and_say_why() {
        let report = run(&seed_layout(), CLIENT, |_, a| {
            a.config = Ok(err(NOPERM_CONFIG));
            a.default_user = Ok(err(
                "NOPERM this user has no permissions to run the 'acl|getuser' command",
            ));
            a.command_info = Ok(err(
                "NOPERM this user has no permissions to run the 'command|info' command",
            ));
            a.dry_runs = DANGEROUS_COMMANDS
                .iter()
                .map(|(n, _)| {
                    (
                        *n,
                        Ok(err(
                            "NOPERM this user has no permissions to run the 'acl|dryrun' command",
                        )),
                    )
                })
                .collect();
            a.unauthenticated = Some(Err(Error::Auth("NOAUTH HELLO must be called ...".into())));
        });
        for name in ["cluster-node-timeout", "persistence", "dangerous-commands"] {
            assert_eq!(
                status(&report, name),
                CheckStatus::Unknown,
                "{name}\n{report}"
            );
            let c = report.checks_named(name).next().unwrap();
            assert!(c.observed.contains("NOPERM"), "{c:?}");
        }
        // Authentication is still known from the probe without credentials. TLS is on,
        // by the client's own connection, but not whether plaintext is served too.
        assert_eq!(status(&report, "authentication"), CheckStatus::Ok);
        assert_eq!(status(&report, "tls"), CheckStatus::Unknown);
        assert!(report.is_healthy());
    }

    #[test]
    fn a_probe_without_credentials_that_gets_in_fails_authentication() {
        let report = run(&seed_layout(), CLIENT, |_, a| {
            a.default_user = Ok(err("NOPERM no permissions"));
            a.unauthenticated = Some(Ok(Value::Simple(Bytes::from_static(b"PONG"))));
        });
        assert_eq!(status(&report, "authentication"), CheckStatus::Fail);
        let report = run(&seed_layout(), CLIENT, |_, a| {
            a.default_user = Ok(err("NOPERM no permissions"));
            a.unauthenticated = Some(Ok(err("NOAUTH Authentication required.")));
        });
        assert_eq!(status(&report, "authentication"), CheckStatus::Ok);
    }

    #[test]
    fn a_renamed_config_the_client_was_not_told_of_is_reported_without_echoing_names() {
        // With a wrong mapping, the name the server quotes is the client's secret one.
        let report = run(&seed_layout(), CLIENT, |_, a| {
            a.config = Ok(err(
                "ERR unknown command 'CONFIG_s3cret', with args beginning with: 'GET' 'cluster-node-timeout' ",
            ));
        });
        let c = report.checks_named("cluster-node-timeout").next().unwrap();
        assert_eq!(c.status, CheckStatus::Unknown);
        assert!(
            c.observed
                .contains("the command is renamed or disabled on the server")
                && !c.observed.contains("args beginning"),
            "{}",
            c.observed
        );
        assert!(!report.to_string().contains("s3cret"), "{report}");
        // A command the client itself has disabled never left it.
        let report = run(&seed_layout(), CLIENT, |_, a| {
            a.config = Err(Error::Config(
                "CONFIG is disabled on this cluster (CommandRenames); it was not sent".into(),
            ));
        });
        let c = report.checks_named("tls").next().unwrap();
        assert_eq!(c.status, CheckStatus::Unknown);
        assert!(c.observed.contains("CommandRenames"), "{}", c.observed);
    }

    #[test]
    fn an_unreachable_node_fails_its_own_check_only() {
        let layout = seed_layout();
        let mut nodes: Vec<NodeFacts> = [
            "10.0.0.1:6379",
            "10.0.0.2:6379",
            "10.0.0.3:6379",
            "10.0.0.5:6379",
            "10.0.0.6:6379",
        ]
        .iter()
        .map(|addr| NodeFacts {
            addr: (*addr).to_owned(),
            answers: Ok(answers(&layout, addr)),
        })
        .collect();
        nodes.push(NodeFacts {
            addr: "10.0.0.4:6379".to_owned(),
            answers: Err(Error::Timeout {
                may_have_executed: true,
            }),
        });
        let view = agreed_view(
            nodes
                .iter()
                .filter_map(|n| Some((n.addr.as_str(), &n.answers.as_ref().ok()?.shards))),
            true,
            &|a| a.to_owned(),
        );
        let report = evaluate(&nodes, view.as_ref(), CLIENT);
        let reach: Vec<&Check> = report.checks_named("node-reachable").collect();
        assert_eq!(reach.len(), 6, "{report}");
        let failed: Vec<&Check> = report.failures().collect();
        assert_eq!(failed.len(), 1, "{report}");
        assert_eq!(failed[0].name, "node-reachable");
        assert_eq!(failed[0].node.as_deref(), Some("10.0.0.4:6379"));
        assert!(
            failed[0].observed.contains("timed out"),
            "{}",
            failed[0].observed
        );
        // Replicas that did answer are still reported; the missing one is left out.
        let replication: Vec<&Check> = report.checks_named("replication").collect();
        assert_eq!(replication.len(), 1, "{report}");
        assert_eq!(replication[0].status, CheckStatus::Ok);
        assert!(
            replication[0].observed.starts_with("2 replicas: link up"),
            "{}",
            replication[0].observed
        );
    }

    #[test]
    fn replication_link_down_fails_and_lag_warns() {
        let report = run(&seed_layout(), CLIENT, |addr, a| match addr {
            "10.0.0.4:6379" => set_info(a, "master_link_status", "down"),
            "10.0.0.2:6379" => {
                let text = text(&a.info).unwrap().replace("lag=0", "lag=12");
                a.info = Ok(bulk(&text));
            }
            _ => {}
        });
        let rows: Vec<&Check> = report.checks_named("replication").collect();
        assert_eq!(rows.len(), 3, "{report}");
        assert_eq!(rows[0].status, CheckStatus::Fail);
        assert_eq!(rows[0].node.as_deref(), Some("10.0.0.4:6379"));
        assert_eq!(rows[1].status, CheckStatus::Warn);
        assert_eq!(rows[1].node.as_deref(), Some("10.0.0.5:6379"));
        assert!(
            rows[1].observed.contains("last ack 12 s ago"),
            "{}",
            rows[1].observed
        );
        assert_eq!(rows[2].status, CheckStatus::Ok);
        assert!(
            rows[2]
                .observed
                .starts_with("1 replica: link up, last ack at most 0 s ago, at most 10 B behind"),
            "{}",
            rows[2].observed
        );
    }

    #[test]
    fn a_replica_still_syncing_warns_rather_than_fails() {
        // During a (re)sync the link reads `down`, with a sync in progress.
        let report = run(&seed_layout(), CLIENT, |addr, a| {
            if addr == "10.0.0.4:6379" {
                set_info(a, "master_link_status", "down");
                set_info(a, "master_sync_in_progress", "1");
            }
        });
        let rows: Vec<&Check> = report.checks_named("replication").collect();
        let syncing = rows
            .iter()
            .find(|r| r.node.as_deref() == Some("10.0.0.4:6379"))
            .unwrap_or_else(|| panic!("{report}"));
        assert_eq!(syncing.status, CheckStatus::Warn, "{report}");
        assert!(
            syncing.observed.contains("still syncing"),
            "{}",
            syncing.observed
        );
        assert!(
            rows.iter().all(|r| r.status != CheckStatus::Fail),
            "{report}"
        );
    }

    /// An append-only file whose last write failed (a full disk) is no durability,
    /// whatever `appendonly` says.
    #[test]
    fn a_failing_append_only_file_warns() {
        let report = run(&seed_layout(), CLIENT, |addr, a| {
            if addr == "10.0.0.2:6379" {
                set_info(a, "aof_last_write_status", "err");
            }
        });
        let failing: Vec<&Check> = report
            .checks_named("persistence")
            .filter(|c| c.status == CheckStatus::Warn)
            .collect();
        assert_eq!(failing.len(), 1, "{report}");
        assert_eq!(failing[0].node.as_deref(), Some("10.0.0.2:6379"));
        assert!(
            failing[0].observed.contains("aof_last_write_status:err"),
            "{}",
            failing[0].observed
        );
    }

    #[test]
    fn memory_near_maxmemory_and_maxmemory_above_the_host_warn() {
        let report = run(&seed_layout(), CLIENT, |addr, a| {
            if addr == "10.0.0.3:6379" {
                set_info(a, "used_memory", &(900u64 << 20).to_string());
                // Only keys with a TTL are evicted: near the limit, writes may fail.
                set_info(a, "maxmemory_policy", "volatile-lru");
            }
            if addr == "10.0.0.2:6379" {
                // The seed's allkeys-lru: a cache at its limit, evicting as designed.
                set_info(a, "used_memory", &(1000u64 << 20).to_string());
            }
            if addr == "10.0.0.6:6379" {
                set_info(a, "maxmemory", &(8000u64 << 20).to_string());
            }
        });
        let usage: Vec<&Check> = report.checks_named("memory-usage").collect();
        assert_eq!(usage.len(), 1);
        assert_eq!(usage[0].status, CheckStatus::Warn);
        assert_eq!(usage[0].node.as_deref(), Some("10.0.0.3:6379"));
        assert!(
            usage[0].observed.contains("88 % of maxmemory"),
            "{}",
            usage[0].observed
        );
        let maxmemory: Vec<&Check> = report.checks_named("maxmemory").collect();
        assert_eq!(maxmemory.len(), 6, "differing nodes are listed one by one");
        let high = maxmemory
            .iter()
            .find(|c| c.status == CheckStatus::Warn)
            .unwrap();
        assert_eq!(high.node.as_deref(), Some("10.0.0.6:6379"));
    }

    #[test]
    fn a_primary_not_sampled_keeps_the_key_checks_from_passing() {
        // One primary's scan timed out; the others measured fine.
        let report = run(&seed_layout(), CLIENT, |addr, a| {
            if addr == "10.0.0.2:6379" {
                a.keys = Some(KeySample {
                    keys: vec![],
                    error: Some(Error::Timeout {
                        may_have_executed: true,
                    }),
                });
            }
        });
        let big = report.checks_named("big-keys").next().unwrap();
        assert_eq!(big.status, CheckStatus::Unknown, "{report}");
        assert!(
            big.observed
                .contains("not fully sampled: 10.0.0.2:6379 (SCAN:"),
            "{}",
            big.observed
        );
    }

    #[test]
    fn big_and_hot_keys_in_the_sample_warn() {
        let report = run(&seed_layout(), CLIENT, |addr, a| {
            set_info(a, "maxmemory_policy", "allkeys-lfu");
            if let Some(sample) = &mut a.keys {
                for k in &mut sample.keys {
                    k.freq = Some(Ok(Value::Int(5)));
                }
                if addr == "10.0.0.2:6379" {
                    sample.keys.push(SampledKey {
                        key: Bytes::from_static(b"blob\n\xff"),
                        memory: Ok(Value::Int(3 << 20)),
                        freq: Some(Ok(Value::Int(4))),
                    });
                    sample.keys.push(SampledKey {
                        key: Bytes::from_static(b"counter"),
                        memory: Ok(Value::Int(56)),
                        freq: Some(Ok(Value::Int(255))),
                    });
                    sample.keys.push(SampledKey {
                        key: Bytes::from_static(b"gone"),
                        memory: Ok(Value::Nil),
                        freq: Some(Ok(Value::Nil)),
                    });
                    sample.keys.push(SampledKey {
                        key: Bytes::from_static(b"gone-on-an-old-server"),
                        memory: Ok(Value::Nil),
                        freq: Some(Ok(err("ERR no such key"))),
                    });
                }
            }
        });
        let big = report.checks_named("big-keys").next().unwrap();
        assert_eq!(big.status, CheckStatus::Warn);
        assert_eq!(big.node.as_deref(), Some("10.0.0.2:6379"));
        assert_eq!(
            big.observed,
            "1 of 5 sampled keys use 1 MiB or more; largest \"blob\\n\u{fffd}\" (3.0 MiB)"
        );
        let hot = report.checks_named("hot-keys").next().unwrap();
        assert_eq!(hot.status, CheckStatus::Warn);
        assert!(
            hot.observed.contains("\"counter\" (LFU counter 255)"),
            "{}",
            hot.observed
        );
        // Without an LFU policy nothing counts accesses: unknown, and saying so.
        let report = run(&seed_layout(), CLIENT, |_, _| {});
        let hot = report.checks_named("hot-keys").next().unwrap();
        assert_eq!(hot.status, CheckStatus::Unknown);
        assert!(hot.observed.contains("not LFU"), "{}", hot.observed);
    }

    #[test]
    fn without_a_topology_the_topology_checks_are_unknown() {
        let layout = seed_layout();
        let nodes: Vec<NodeFacts> = layout
            .iter()
            .map(|shard| NodeFacts {
                addr: shard.primary.to_owned(),
                answers: Ok(Answers {
                    shards: Ok(err("ERR unknown subcommand 'SHARDS'. Try CLUSTER HELP.")),
                    ..answers(&layout, shard.primary)
                }),
            })
            .collect();
        let report = evaluate(&nodes, None, CLIENT);
        for name in [
            "slot-coverage",
            "slot-balance",
            "masters",
            "replicas",
            "replication",
        ] {
            let c = report.checks_named(name).next().unwrap();
            assert_eq!(c.status, CheckStatus::Unknown, "{c:?}");
            assert!(c.observed.contains("unknown subcommand"), "{c:?}");
        }
        // Keys are still sampled on every node that has a sample.
        assert_eq!(status(&report, "big-keys"), CheckStatus::Ok);
    }

    #[test]
    fn hot_keys_read_the_refusal_of_a_policy_that_counts_nothing() {
        // INFO unreadable, so OBJECT FREQ was asked anyway; its error says why.
        let report = run(&seed_layout(), CLIENT, |_, a| {
            a.info = Ok(err(
                "NOPERM this user has no permissions to run the 'info' command",
            ));
            if let Some(sample) = &mut a.keys {
                sample.keys[0].freq = Some(Ok(err(
                    "ERR An LFU maxmemory policy is not selected, access frequency not tracked.",
                )));
            }
        });
        let hot = report.checks_named("hot-keys").next().unwrap();
        assert_eq!(hot.status, CheckStatus::Unknown);
        assert!(hot.observed.contains("not LFU"), "{}", hot.observed);
        let usage = report.checks_named("memory-usage").next().unwrap();
        assert!(usage.observed.contains("NOPERM"), "{}", usage.observed);
        assert!(may_track_frequency(&Ok(err("NOPERM x"))));
        assert!(!may_track_frequency(&Ok(bulk(
            "maxmemory_policy:allkeys-lru\r\n"
        ))));
    }

    #[test]
    fn odd_replies_never_panic() {
        let odd = [
            Ok(Value::Int(7)),
            Ok(Value::Nil),
            Ok(bulk("")),
            Ok(bulk(
                "\u{0}:::\r\nslave0:ip=,port=,lag=x,offset=\r\nslave:junk",
            )),
            Ok(Value::Array(vec![Value::Int(1)])),
            Ok(Value::Array(vec![bulk("odd")])),
            Ok(Value::Map(vec![(Value::Int(1), Value::Nil)])),
            Ok(Value::Bulk(Bytes::from_static(b"\xff\xfe"))),
            Ok(err("ERR")),
            Err(Error::ConnectionLost {
                may_have_executed: false,
            }),
        ];
        for reply in &odd {
            let report = run(&seed_layout(), CLIENT, |_, a| {
                a.shards = reply.clone();
                a.cluster_info = reply.clone();
                a.info = reply.clone();
                a.config = reply.clone();
                a.default_user = reply.clone();
                a.command_info = reply.clone();
                a.dry_runs = DANGEROUS_COMMANDS
                    .iter()
                    .map(|(n, _)| (*n, reply.clone()))
                    .collect();
                if let Some(sample) = &mut a.keys {
                    sample.keys[0].memory = reply.clone();
                    sample.keys[0].freq = Some(reply.clone());
                }
            });
            assert!(!report.checks.is_empty());
            let _ = report.to_string();
        }
        // Slot ranges out of order or reversed do not underflow.
        let layout = vec![Shard {
            ranges: vec![(10, 5)],
            primary: "10.0.0.1:6379",
            replicas: vec![],
        }];
        let _ = run(&layout, CLIENT, |_, _| {}).to_string();
    }

    #[test]
    fn dry_runs_skip_commands_the_server_does_not_know() {
        let info = Ok(Value::Array(vec![
            Value::Nil,
            Value::Array(vec![]),
            Value::Nil,
            Value::Array(vec![]),
        ]));
        let names: Vec<&str> = dry_run_targets(&info).iter().map(|(n, _)| *n).collect();
        assert_eq!(names, ["FLUSHDB", "DEBUG"]);
        let all: Vec<&str> = dry_run_targets(&Ok(err("NOPERM x")))
            .iter()
            .map(|(n, _)| *n)
            .collect();
        assert_eq!(all, ["FLUSHALL", "FLUSHDB", "CONFIG", "DEBUG"]);
        assert!(!CONFIG_PARAMETERS
            .iter()
            .any(|p| p.contains("pass") || p.contains("auth")));
    }

    #[test]
    fn the_table_is_aligned_and_shows_no_secret() {
        let report = run(&seed_layout(), CLIENT, |addr, a| {
            if addr == "10.0.0.1:6379" {
                set_info(a, "aof_enabled", "0");
            }
        });
        let table = report.to_string();
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("STATUS   CHECK"), "{table}");
        let observed_at = lines[0].find("OBSERVED").unwrap();
        let warn = lines.iter().find(|l| l.starts_with("WARN")).unwrap();
        assert!(warn.contains("persistence"), "{table}");
        assert_eq!(warn.find("appendonly no"), Some(observed_at), "{table}");
        assert_eq!(
            *lines.last().unwrap(),
            "0 fail, 1 warn, 1 unknown, 21 ok",
            "{table}"
        );
        // The password hash ACL GETUSER returns is never read, so never shown.
        assert!(!table.contains("5e884898"), "{table}");
    }
}
