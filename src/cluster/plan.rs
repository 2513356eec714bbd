//! Deciding where a command goes: one slot, split over slots, all nodes, or any node.
//!
//! Pure: a command and its table entry in, a plan out.
//!
//! | command shape | plan |
//! |---|---|
//! | keys in one slot | that slot's node |
//! | `MGET`, `MSET`, `DEL`, `UNLINK`, `EXISTS`, `TOUCH` over several slots | one sub-command per slot, sent concurrently; `MGET` replies put back in key order, `MSET` answers `OK` when every part did, the others sum their counts |
//! | any other command with keys in several slots | [`Error::CrossSlot`] before anything is sent |
//! | `CLUSTER COUNTKEYSINSLOT slot`, `CLUSTER GETKEYSINSLOT slot n` | the named slot's node (a read) |
//! | keyless, `request_policy:all_shards` in the command table (`DBSIZE`, `KEYS`, `FLUSHALL`, `PING`, `SCRIPT EXISTS`, `FUNCTION LOAD`, ...) | every primary, replies combined by the table's `response_policy` |
//! | keyless, `request_policy:all_nodes` (`SCRIPT LOAD`, `CONFIG SET`, `LATENCY RESET`, ...) | every node, primaries and replicas, combined likewise (`special`: a map from node address to reply) |
//! | `INFO`, `CLIENT LIST`, `CLIENT INFO`, `MEMORY STATS`, `LATENCY LATEST`, `SLOWLOG GET` and other per-node reports (`PER_NODE`) | every primary; the reply is a map from node address to that node's reply |
//! | `RANDOMKEY` | every primary; a non-nil reply at random (`AnyNonNil`) |
//! | keyless commands that act on one node (`ONE_NODE`: `BGSAVE`, `SHUTDOWN`, `CLIENT KILL`, `CLUSTER FAILOVER`, ...) | refused: `query_node` names the node |
//! | any other keyless command | one primary, chosen round-robin |
//!
//! Combining replies (`response_policy`): `all_succeeded` answers the first reply when
//! every node succeeded; `one_succeeded` the first success; `agg_sum`/`agg_min`/`agg_max`
//! and `agg_logical_and`/`agg_logical_or` fold integers (or arrays of integers element by
//! element); no policy merges arrays (`KEYS`). Whatever the policy but `one_succeeded`,
//! if any node fails the whole command fails: a fan-out never returns a silently
//! partial result.

use smallvec::SmallVec;

use crate::cmd::{self, Cmd};
use crate::error::{Error, Result};
use crate::slot::key_slot;

/// How the sub-replies of a split command are put back together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SplitKind {
    /// `MGET`: one reply per key, restored to the original key order.
    MGet,
    /// `MSET`: `OK` when every part said `OK`.
    MSet,
    /// `DEL`, `UNLINK`, `EXISTS`, `TOUCH`: integer counts, summed.
    Sum,
}

/// Which nodes a fan-out goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FanOutTo {
    Primaries,
    AllNodes,
}

/// How fan-out replies are combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Combine {
    AllSucceeded,
    OneSucceeded,
    Sum,
    Min,
    Max,
    LogicalAnd,
    LogicalOr,
    /// Concatenate array replies (`KEYS`).
    MergeArrays,
    /// A map from node address to its reply (`INFO`).
    PerNode,
    /// `[channel, count, ...]` pairs (or a map) summed per channel, in the order of the
    /// first reply (`PUBSUB NUMSUB`).
    SumPerChannel,
    /// Array replies merged without repeats (`PUBSUB CHANNELS`).
    Union,
    /// The sum of the integer replies, of subscriptions rather than data
    /// (`PUBSUB NUMPAT`).
    SumSubscriptions,
    /// One of the replies that is not nil, at random; nil when all are (`RANDOMKEY`:
    /// a primary without keys answers nil while others hold some).
    AnyNonNil,
}

impl Combine {
    /// Whether the combined reply answers for the cluster's data or settings, and so
    /// needs every slot served by a healthy primary. Per-node reports are keyed by
    /// node, `SCRIPT KILL` needs one node, and subscriptions live outside the slots:
    /// all are wanted in an outage.
    pub(crate) fn needs_every_slot(self) -> bool {
        !matches!(
            self,
            Combine::PerNode
                | Combine::OneSucceeded
                | Combine::SumPerChannel
                | Combine::Union
                | Combine::SumSubscriptions
        )
    }
}

/// One part of a split command.
#[derive(Debug)]
pub(crate) struct Part {
    pub(crate) slot: u16,
    pub(crate) cmd: Cmd,
    /// For `MGET`: where each of this part's keys stood in the original command.
    pub(crate) positions: Vec<usize>,
}

/// Where a command goes.
#[derive(Debug)]
pub(crate) enum Plan {
    /// All keys hash to `slot`.
    Slot { slot: u16, read_only: bool },
    /// Keys in several slots, split into one command per slot.
    Split { kind: SplitKind, parts: Vec<Part> },
    /// Keyless, to several nodes.
    FanOut { to: FanOutTo, combine: Combine },
    /// Keyless, to any one primary.
    AnyPrimary,
}

/// Commands whose reply is a per-node report: fanned out to every primary, answered as
/// a map of node address to reply. Names are `command` or `command|subcommand`.
const PER_NODE: &[&str] = &[
    "info",
    "client|list",
    "client|info",
    "memory|stats",
    "memory|doctor",
    "latency|latest",
    "latency|doctor",
    "slowlog|get",
    "slowlog|len",
    "lastsave",
    "role",
];

/// Administration commands that change one node's settings and that the command table
/// gives no request policy: sent to one node, they would leave the cluster's nodes
/// disagreeing (an ACL user that exists on one node of six), so they go to every node,
/// replicas included, and must succeed on each. `CLIENT KILL`, `CLIENT PAUSE`, `SAVE`
/// and the like name one node's clients or data: see [`ONE_NODE`].
const EVERY_NODE_SETTINGS: &[&str] = &[
    "acl|setuser",
    "acl|deluser",
    "acl|load",
    "acl|save",
    "config|resetstat",
    "config|rewrite",
];

/// Keyless commands that act on, or report, the one node they are sent to, and that
/// the command table gives no request policy: through `query`, which would send them to
/// whichever primary comes next, they would save, shut down, fail over or reconfigure a
/// node nobody chose (`SHUTDOWN` a random primary), or answer about it (`DEBUG OBJECT
/// key`, whose key is no routing key, answers "no such key" from the wrong node). They
/// are refused there; `query_node` names the node.
const ONE_NODE: &[&str] = &[
    "bgrewriteaof",
    "bgsave",
    "client|kill",
    "client|pause",
    "client|unblock",
    "client|unpause",
    "cluster|addslots",
    "cluster|addslotsrange",
    "cluster|bumpepoch",
    "cluster|delslots",
    "cluster|delslotsrange",
    "cluster|failover",
    "cluster|flushslots",
    "cluster|forget",
    "cluster|meet",
    "cluster|replicate",
    "cluster|reset",
    "cluster|saveconfig",
    "cluster|set-config-epoch",
    "cluster|setslot",
    "debug",
    "failover",
    "module|load",
    "module|loadex",
    "module|unload",
    "replicaof",
    "save",
    "shutdown",
    "slaveof",
];

/// Refuses a command of [`ONE_NODE`].
fn refuse_one_node_command(info: &cmd::CommandInfo) -> Result<()> {
    if !ONE_NODE.contains(&info.name()) {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{} acts on the one node it is sent to: send it with query_node(addr, ...) to \
         the node you mean (client.node_for_key(key) names a key's primary)",
        info.name().replace('|', " ").to_ascii_uppercase()
    )))
}

/// Whether a replica may answer a read-only command in the primary's place. Not
/// `TOUCH`, which is sent for its effect on the key's access time, which the primary's
/// eviction reads, nor `OBJECT IDLETIME`/`FREQ`, which report the primary's.
fn replica_may_serve(info: &cmd::CommandInfo) -> bool {
    info.is_read_only() && !matches!(info.name(), "touch" | "object|idletime" | "object|freq")
}

/// Whether a `MOVED` or `ASK` for `slot` can be the server's answer to `command`. The
/// server redirects a command to the slot of its keys, so when the client knows them for
/// sure ([`cmd::keys_known`]) and none hashes to `slot` (or there are none), the
/// "redirect" is an error reply some code wrote: a script's
/// `redis.error_reply("MOVED 0 10.0.0.9:6379")`, a module's. Followed, it would repoint
/// the slot for every caller and send the command, a write perhaps, wherever it says.
/// A command unknown to the table was routed by a guess: the server's word stands.
pub(crate) fn may_be_redirected(command: &Cmd, info: Option<&cmd::CommandInfo>, slot: u16) -> bool {
    let Some(info) = info.filter(|info| cmd::keys_known(info)) else {
        return true;
    };
    let mut keys: SmallVec<[usize; 4]> = SmallVec::new();
    if cmd::routing_key_indices(command, info, &mut keys).is_err() {
        return true;
    }
    keys.iter()
        .any(|&i| key_slot(command.arg_at(i).unwrap_or_default()) == slot)
}

/// Plans `command`.
///
/// # Errors
///
/// [`Error::CrossSlot`] when keys span slots and the command cannot be split;
/// [`Error::Config`] for a command too malformed to find its keys.
pub(crate) fn plan(command: &Cmd, info: Option<&cmd::CommandInfo>) -> Result<Plan> {
    refuse_unsendable(command, info)?;
    let Some(info) = info else {
        // Unknown to the table and to the server: route by the first argument, the
        // convention of most module commands.
        return Ok(match command.arg_at(1) {
            Some(key) => Plan::Slot {
                slot: key_slot(key),
                read_only: false,
            },
            None => Plan::AnyPrimary,
        });
    };
    if info.name() == "scan" {
        // Each node has its own cursor: a loop of `SCAN` through `query` would send one
        // node's cursor to whichever primary the next call picks, missing and repeating
        // keys.
        return Err(Error::Config(
            "SCAN walks one node's keys with that node's cursor: use client.scan(), or \
             query_node(addr, SCAN ...) for one node"
                .into(),
        ));
    }
    if cmd::routes_by_first_argument(command, info) {
        return Ok(Plan::Slot {
            slot: key_slot(command.arg_at(1).unwrap_or_default()),
            read_only: replica_may_serve(info),
        });
    }
    let mut keys: SmallVec<[usize; 4]> = SmallVec::new();
    // Routing keys include sharded pub/sub channels, which hash like keys.
    cmd::routing_key_indices(command, info, &mut keys)?;
    if keys.is_empty() {
        refuse_one_node_command(info)?;
        return Ok(keyless_plan(command, info));
    }
    let slot_at = |i: usize| key_slot(command.arg_at(i).unwrap_or_default());
    // Nearly always one slot: checked without collecting the slots first.
    let first = slot_at(keys[0]);
    if keys[1..].iter().all(|&i| slot_at(i) == first) {
        return Ok(Plan::Slot {
            slot: first,
            read_only: replica_may_serve(info),
        });
    }
    let slots: SmallVec<[u16; 4]> = keys.iter().map(|&i| slot_at(i)).collect();
    let name = command.name().to_ascii_lowercase();
    let kind = match name.as_slice() {
        b"mget" => SplitKind::MGet,
        // Split, `MSET a 1 b` would send `MSET b ""`; whole, the server refuses it.
        b"mset" if command.len() % 2 == 0 => {
            return Err(Error::Config(
                "MSET takes keys and values in pairs: an argument is missing".into(),
            ))
        }
        b"mset" => SplitKind::MSet,
        b"del" | b"unlink" | b"exists" | b"touch" => SplitKind::Sum,
        _ => {
            let mut seen = vec![false; usize::from(crate::SLOT_COUNT)];
            let distinct = slots
                .into_iter()
                .filter(|&s| !std::mem::replace(&mut seen[usize::from(s)], true))
                .collect();
            return Err(Error::CrossSlot { slots: distinct });
        }
    };
    Ok(Plan::Split {
        kind,
        parts: split(command, kind, &keys, &slots),
    })
}

/// Refuses, whatever node it would go to, a command no shared connection may carry: an
/// empty one, one over 4 GiB or with an argument over 512 MiB, one that changes the
/// connection's state. `info` may be
/// `None` for a command the table lacks.
///
/// Commands that change what a shared connection does with later replies, or whose
/// meaning depends on the connection they run on, cannot go over a multiplexed
/// connection (the list and the reasons: [`cmd::Refusal`]). The transaction commands are
/// refused inside [`crate::Transaction`] and [`crate::Watched`] too, which send their
/// own.
pub(crate) fn refuse_unsendable(command: &Cmd, info: Option<&cmd::CommandInfo>) -> Result<()> {
    if command.is_empty() {
        return Err(Error::Config("empty command".into()));
    }
    if command.is_oversized() {
        // Its keys could not be told apart; no server takes it anyway.
        return Err(Error::Config("a command over 4 GiB".into()));
    }
    cmd::refuse_overlong_args(command)?;
    refuse_connection_state_commands(command, info)
}

fn refuse_connection_state_commands(command: &Cmd, info: Option<&cmd::CommandInfo>) -> Result<()> {
    // This runs for every request: the table's lowercase name is matched at once. A
    // command the table lacks (`WAITAOF` on a 7.0 table) is lowercased on the stack.
    let refusal = match info {
        // A `CLIENT` subcommand newer than the table finds the container.
        Some(info) if info.name() == "client" => cmd::Refusal::of(command),
        Some(info) => cmd::Refusal::of_name(info.name()),
        None => cmd::Refusal::of(command),
    };
    let Some(refusal) = refusal else {
        return Ok(());
    };
    Err(Error::Config(advice(refusal).into()))
}

/// What the cluster client says instead of sending a refused command: the API that does
/// the job, when there is one.
fn advice(refusal: cmd::Refusal) -> &'static str {
    match refusal {
        cmd::Refusal::Subscription => "pub/sub commands need client.subscriber(), not query()",
        cmd::Refusal::Transaction => {
            "MULTI, EXEC, DISCARD, WATCH and UNWATCH hold a connection: use client.transaction(), \
             client.watch() or client.watch_retry(), which send them"
        }
        cmd::Refusal::Wait => {
            "WAIT counts the writes of its own connection: use query_durable() or durable_writes()"
        }
        cmd::Refusal::ClientManaged => {
            "READONLY, READWRITE and ASKING are sent by the client itself where they are \
             needed, and change a connection other callers share"
        }
        cmd::Refusal::ConnectionSetting => {
            "CLIENT settings of a connection would apply to the shared connection every \
             caller to that node uses: name connections with the builder's client_name, \
             or open a NodeConnection of your own"
        }
        cmd::Refusal::Unpaired | cmd::Refusal::ConnectionState => {
            "this command changes the shared connection's state and is not supported"
        }
    }
}

/// Refuses a command that fans out to several nodes but was given to a transaction or
/// a watched connection, which run on one node: its answer would be that node's alone,
/// a partial result nobody asked for. Except `PING`, which there asks after the
/// transaction's own node, as it would on any one connection, and `RANDOMKEY`, a key of
/// that node (the transaction's slot's shard), as it was before it asked every primary.
pub(crate) fn fan_out_in_transaction(command: &Cmd) -> Result<()> {
    let name = command.name();
    if name.eq_ignore_ascii_case(b"ping") || name.eq_ignore_ascii_case(b"randomkey") {
        return Ok(());
    }
    Err(Error::Config(format!(
        "{} runs on every node and cannot be part of a transaction, which runs on one",
        String::from_utf8_lossy(command.name())
    )))
}

fn keyless_plan(command: &Cmd, info: &cmd::CommandInfo) -> Plan {
    if let Some(slot) = slot_argument(command, info) {
        return Plan::Slot {
            slot,
            read_only: true,
        };
    }
    if PER_NODE.contains(&info.name()) {
        return Plan::FanOut {
            to: FanOutTo::Primaries,
            combine: Combine::PerNode,
        };
    }
    if let Some(combine) = pubsub_introspection(info.name()) {
        return Plan::FanOut {
            to: FanOutTo::AllNodes,
            combine,
        };
    }
    // The command table says every primary; but a read-only script (`EVAL_RO`,
    // `FCALL_RO`, a `no-writes` one) runs on replicas too, where only a kill sent there
    // stops it. One node's `OK` is the answer; the others say `NOTBUSY`.
    if matches!(info.name(), "script|kill" | "function|kill") {
        return Plan::FanOut {
            to: FanOutTo::AllNodes,
            combine: Combine::OneSucceeded,
        };
    }
    if EVERY_NODE_SETTINGS.contains(&info.name()) {
        return Plan::FanOut {
            to: FanOutTo::AllNodes,
            // How many users were deleted: on the node that had the most of them (one
            // where a user had been made alone counts it).
            combine: if info.name() == "acl|deluser" {
                Combine::Max
            } else {
                Combine::AllSucceeded
            },
        };
    }
    let to = match info.request_policy() {
        Some(cmd::RequestPolicy::AllShards) => FanOutTo::Primaries,
        Some(cmd::RequestPolicy::AllNodes) => FanOutTo::AllNodes,
        _ => return Plan::AnyPrimary,
    };
    let combine = match info.response_policy() {
        Some(cmd::ResponsePolicy::AllSucceeded) => Combine::AllSucceeded,
        Some(cmd::ResponsePolicy::OneSucceeded) => Combine::OneSucceeded,
        Some(cmd::ResponsePolicy::AggSum) => Combine::Sum,
        Some(cmd::ResponsePolicy::AggMin) => Combine::Min,
        Some(cmd::ResponsePolicy::AggMax) => Combine::Max,
        Some(cmd::ResponsePolicy::AggLogicalAnd) => Combine::LogicalAnd,
        Some(cmd::ResponsePolicy::AggLogicalOr) => Combine::LogicalOr,
        Some(cmd::ResponsePolicy::Special) => Combine::PerNode,
        // No policy: replies whose order does not matter (`KEYS`) are merged; a random
        // key comes from a primary that has one; any other single value from any one
        // primary.
        None if info.has_tips(cmd::tip::NONDETERMINISTIC_OUTPUT_ORDER) => Combine::MergeArrays,
        None if info.name() == "randomkey" => Combine::AnyNonNil,
        None => return Plan::AnyPrimary,
    };
    Plan::FanOut { to, combine }
}

/// How the replies of `PUBSUB` introspection combine, which every node is asked. A node
/// knows only its own clients' subscriptions, and subscribers sit on any node (sharded
/// ones on any node of their channel's shard, replicas included): asked of one node,
/// the answer would change from call to call. Counts add up per channel, channel lists
/// are united, and pattern counts add up (a pattern subscribed on two nodes counts
/// twice).
fn pubsub_introspection(name: &str) -> Option<Combine> {
    match name {
        "pubsub|numsub" | "pubsub|shardnumsub" => Some(Combine::SumPerChannel),
        "pubsub|channels" | "pubsub|shardchannels" => Some(Combine::Union),
        "pubsub|numpat" => Some(Combine::SumSubscriptions),
        _ => None,
    }
}

/// The slot that `CLUSTER COUNTKEYSINSLOT` and `CLUSTER GETKEYSINSLOT` ask about: only
/// its owner (or the owner's replicas) knows its keys; any other node answers 0 or an
/// empty list, a wrong answer that looks right. A slot that is no number in range goes
/// anywhere, for the server to refuse.
fn slot_argument(command: &Cmd, info: &cmd::CommandInfo) -> Option<u16> {
    if !matches!(
        info.name(),
        "cluster|countkeysinslot" | "cluster|getkeysinslot"
    ) {
        return None;
    }
    let slot: u16 = std::str::from_utf8(command.arg_at(2)?).ok()?.parse().ok()?;
    (slot < crate::slot::SLOT_COUNT).then_some(slot)
}

/// One sub-command per slot, keeping the original order of keys within each.
fn split(command: &Cmd, kind: SplitKind, keys: &[usize], slots: &[u16]) -> Vec<Part> {
    let mut parts: Vec<Part> = Vec::new();
    // Each slot's part by number: a search of the parts for every key would make a
    // 100,000-key `DEL` quadratic.
    let mut part_of: std::collections::HashMap<u16, usize> = std::collections::HashMap::new();
    let name = command.name();
    for (n, (&key_index, &slot)) in keys.iter().zip(slots).enumerate() {
        let i = *part_of.entry(slot).or_insert_with(|| {
            parts.push(Part {
                slot,
                cmd: Cmd::new().arg(name),
                positions: Vec::new(),
            });
            parts.len() - 1
        });
        let part = &mut parts[i];
        part.cmd
            .push_arg(command.arg_at(key_index).unwrap_or_default());
        if kind == SplitKind::MSet {
            part.cmd
                .push_arg(command.arg_at(key_index + 1).unwrap_or_default());
        }
        part.positions.push(n);
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::cmd;

    fn plan_of(c: &Cmd) -> Result<Plan> {
        plan(c, cmd::lookup(c))
    }

    #[test]
    fn single_slot_commands_go_to_their_slot() {
        match plan_of(&cmd("GET").arg("foo")).unwrap() {
            Plan::Slot { slot, read_only } => {
                assert_eq!(slot, 12182);
                assert!(read_only);
            }
            other => panic!("{other:?}"),
        }
        match plan_of(&cmd("MSET").arg("{a}1").arg("x").arg("{a}2").arg("y")).unwrap() {
            Plan::Slot { read_only, .. } => assert!(!read_only),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn only_the_slot_of_known_keys_can_be_redirected() {
        let may = |c: &Cmd, slot: u16| may_be_redirected(c, cmd::lookup(c), slot);
        let get = cmd("GET").arg("foo");
        assert!(may(&get, key_slot(b"foo")));
        assert!(!may(&get, key_slot(b"foo") + 1));
        let script = |keys: &[&str]| {
            cmd("EVAL")
                .arg("return redis.error_reply('MOVED 0 10.0.0.9:6379')")
                .arg(keys.len())
                .args(keys.iter())
        };
        // No keys: the server never redirects it.
        assert!(!may(&script(&[]), 0));
        assert!(may(&script(&["foo"]), key_slot(b"foo")));
        assert!(!may(&script(&["foo"]), 0));
        // A multi-key command: the slot of any of its keys (one slot, or refused).
        let mset = cmd("MSET").arg("{a}1").arg("x").arg("{a}2").arg("y");
        assert!(may(&mset, key_slot(b"a")));
        assert!(!may(&mset, key_slot(b"b")));
        // Routed by a guess (unknown to the table): the server's word stands.
        let module = cmd("MOD.GET").arg("foo");
        assert!(may_be_redirected(&module, None, 0));
    }

    #[test]
    fn one_node_commands_are_keyless_table_names_without_a_policy() {
        // A name the table spells otherwise, or a command it gives keys or a request
        // policy, would make the refusal miss or take a command that is routed well.
        for &name in ONE_NODE {
            let c = name
                .split('|')
                .fold(Cmd::new(), |c, w| c.arg(w))
                .arg("x")
                .arg("y");
            let info = cmd::lookup(&c).unwrap_or_else(|| panic!("{name} not in the table"));
            assert_eq!(info.name(), name);
            assert!(info.request_policy().is_none(), "{name}");
            let mut keys = SmallVec::new();
            cmd::routing_key_indices(&c, info, &mut keys).unwrap();
            assert!(keys.is_empty(), "{name}");
            assert!(
                matches!(plan_of(&c), Err(Error::Config(m)) if m.contains("query_node")),
                "{name}"
            );
        }
    }

    #[test]
    fn slot_queries_go_to_the_slot_they_name() {
        for c in [
            cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(7000),
            cmd("cluster").arg("getkeysinslot").arg(7000).arg(10),
        ] {
            match plan_of(&c).unwrap() {
                Plan::Slot { slot, read_only } => assert_eq!((slot, read_only), (7000, true)),
                other => panic!("{other:?}"),
            }
        }
        for bad in ["16384", "-1", "x", ""] {
            let c = cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(bad);
            assert!(matches!(plan_of(&c).unwrap(), Plan::AnyPrimary), "{bad}");
        }
        let other = cmd("CLUSTER").arg("KEYSLOT").arg("7000");
        assert!(matches!(plan_of(&other).unwrap(), Plan::AnyPrimary));
    }

    #[test]
    fn multi_slot_commands_split_or_fail() {
        let Plan::Split { kind, parts } =
            plan_of(&cmd("MGET").arg("a").arg("b").arg("{a}x")).unwrap()
        else {
            panic!("MGET over slots splits");
        };
        assert_eq!(kind, SplitKind::MGet);
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].positions, vec![0, 2]);
        assert_eq!(
            parts[0].cmd.arg_iter().collect::<Vec<_>>(),
            [&b"MGET"[..], b"a", b"{a}x"]
        );
        let Plan::Split { parts, .. } =
            plan_of(&cmd("MSET").arg("a").arg("1").arg("b").arg("2")).unwrap()
        else {
            panic!("MSET over slots splits");
        };
        assert_eq!(
            parts[1].cmd.arg_iter().collect::<Vec<_>>(),
            [&b"MSET"[..], b"b", b"2"]
        );
        // A value short: refused, never `MSET b ""`.
        assert!(matches!(
            plan_of(&cmd("MSET").arg("a").arg("1").arg("b")),
            Err(Error::Config(_))
        ));
        match plan_of(&cmd("RENAME").arg("a").arg("b")) {
            Err(Error::CrossSlot { slots }) => {
                assert_eq!(slots, vec![key_slot(b"a"), key_slot(b"b")])
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            plan_of(&cmd("EVAL").arg("return 1").arg(2).arg("a").arg("b")),
            Err(Error::CrossSlot { .. })
        ));
    }

    #[test]
    fn every_command_of_the_refusal_list_is_refused_with_its_advice() {
        for &(name, kind) in cmd::REFUSED {
            let c = cmd::as_written(name);
            // With the table's entry (when it has one), and without: a command neither
            // the table nor the server knows is checked by its own name.
            for info in [cmd::lookup(&c), None] {
                match plan(&c, info) {
                    Err(Error::Config(why)) => assert_eq!(why, advice(kind), "{c:?}"),
                    other => panic!("{c:?}: {other:?}"),
                }
            }
        }
        assert!(plan_of(&cmd("CLIENT").arg("LIST")).is_ok());
        assert!(plan_of(&cmd("PUBLISH").arg("ch").arg("m")).is_ok());
        assert!(plan(&cmd("MODULE.CMD").arg("k"), None).is_ok());
        // The client's own cluster commands, known to the table or not.
        for c in [cmd("ReadOnly"), cmd("READWRITE"), cmd("asking")] {
            for info in [cmd::lookup(&c), None] {
                assert!(matches!(plan(&c, info), Err(Error::Config(_))), "{c:?}");
            }
        }
        assert!(matches!(
            plan_of(&cmd("scan").arg(0)),
            Err(Error::Config(_))
        ));
    }

    #[test]
    fn node_settings_go_to_every_node() {
        for c in [
            cmd("ACL").arg("SETUSER").arg("u").arg("on"),
            cmd("acl").arg("deluser").arg("u"),
            cmd("CONFIG").arg("REWRITE"),
            cmd("CONFIG").arg("SET").arg("maxmemory").arg("1gb"),
        ] {
            assert!(
                matches!(
                    plan_of(&c).unwrap(),
                    Plan::FanOut {
                        to: FanOutTo::AllNodes,
                        ..
                    }
                ),
                "{c:?}"
            );
        }
        // Naming one node's clients or data: the caller names the node.
        for c in [cmd("CLIENT").arg("KILL").arg("ID").arg(7), cmd("bgsave")] {
            assert!(matches!(plan_of(&c), Err(Error::Config(_))), "{c:?}");
        }
    }

    #[test]
    fn pubsub_introspection_asks_every_node() {
        for (sub, combine) in [
            ("NUMSUB", Combine::SumPerChannel),
            ("SHARDNUMSUB", Combine::SumPerChannel),
            ("CHANNELS", Combine::Union),
            ("SHARDCHANNELS", Combine::Union),
            ("NUMPAT", Combine::SumSubscriptions),
        ] {
            let plan = plan_of(&cmd("PUBSUB").arg(sub).arg("c")).unwrap();
            assert!(
                matches!(plan, Plan::FanOut { to: FanOutTo::AllNodes, combine: c } if c == combine),
                "{sub}: {plan:?}"
            );
        }
    }

    #[test]
    fn keyless_commands_fan_out_by_the_table() {
        assert!(matches!(
            plan_of(&cmd("DBSIZE")).unwrap(),
            Plan::FanOut {
                to: FanOutTo::Primaries,
                combine: Combine::Sum
            }
        ));
        assert!(matches!(
            plan_of(&cmd("KEYS").arg("*")).unwrap(),
            Plan::FanOut {
                combine: Combine::MergeArrays,
                ..
            }
        ));
        assert!(matches!(
            plan_of(&cmd("INFO")).unwrap(),
            Plan::FanOut {
                combine: Combine::PerNode,
                ..
            }
        ));
        assert!(matches!(
            plan_of(&cmd("SCRIPT").arg("LOAD").arg("return 1")).unwrap(),
            Plan::FanOut {
                to: FanOutTo::AllNodes,
                combine: Combine::AllSucceeded
            }
        ));
        assert!(matches!(
            plan_of(&cmd("PUBLISH").arg("ch").arg("m")).unwrap(),
            Plan::AnyPrimary
        ));
    }
}
