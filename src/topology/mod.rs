//! Cluster topology: reading `CLUSTER SHARDS` / `CLUSTER SLOTS` (and the config epochs
//! of `CLUSTER NODES`), choosing between views that disagree, and deciding when to
//! refresh. A shard's primary is its healthy master with the most replication offset:
//! a shard may list a failed-over old primary, or an empty one, beside the real one.
//!
//! Sans-io: functions take replies and the current time and return decisions; the
//! cluster client does the asking and the waiting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::resp::Value;
use crate::slot::{join_host_port, Shard, SlotMap};

/// One node as a topology reply describes it, its address resolved but not remapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeInfo {
    pub(crate) id: Option<String>,
    pub(crate) addr: String,
    /// False for nodes the cluster reports as failed.
    pub(crate) healthy: bool,
}

/// One shard as a topology reply describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ShardInfo {
    pub(crate) primary: NodeInfo,
    pub(crate) replicas: Vec<NodeInfo>,
    pub(crate) ranges: Vec<(u16, u16)>,
    /// Addresses of the shard's nodes the reply reports failed, whatever their role: a
    /// failed-over primary listed beside the promoted one is here, though in neither
    /// field above.
    pub(crate) failed: Vec<String>,
    /// The shard's other healthy masters, not routed to (see [`prefer_newest_epoch`]).
    pub(crate) contenders: Vec<NodeInfo>,
}

fn malformed(what: &str) -> Error {
    Error::Protocol(format!("malformed topology reply: {what}"))
}

/// Key-value pairs of a RESP3 map or a RESP2 flat array.
fn fields(value: &Value) -> Option<Vec<(&Value, &Value)>> {
    match value {
        Value::Map(pairs) => Some(pairs.iter().map(|(k, v)| (k, v)).collect()),
        Value::Array(items) if items.len() % 2 == 0 => {
            Some(items.chunks(2).map(|kv| (&kv[0], &kv[1])).collect())
        }
        _ => None,
    }
}

fn field<'a>(fields: &[(&Value, &'a Value)], name: &str) -> Option<&'a Value> {
    fields
        .iter()
        .find(|(k, _)| k.as_bytes() == Some(name.as_bytes()))
        .map(|(_, v)| *v)
}

fn text(value: &Value) -> Option<String> {
    value
        .as_bytes()
        .map(|b| String::from_utf8_lossy(b).into_owned())
}

fn int(value: &Value) -> Option<i64> {
    match value {
        Value::Int(n) => Some(*n),
        other => std::str::from_utf8(other.as_bytes()?).ok()?.parse().ok(),
    }
}

/// The host part of the address a reply came from.
fn host_of(addr: &str) -> &str {
    addr.rsplit_once(':').map_or(addr, |(h, _)| h)
}

/// Resolves a reported endpoint. Empty (or none) means "the host you asked". `?` is a
/// node set to prefer host names (`cluster-preferred-endpoint-type hostname`) that has
/// none: its `ip`, when the reply gives one, is where it is; else the host asked.
fn endpoint_addr(endpoint: Option<&str>, ip: Option<&str>, port: u16, reached: &str) -> String {
    let ip = ip.filter(|ip| !ip.is_empty() && *ip != "?");
    match (endpoint, ip) {
        (Some("?"), Some(ip)) => join_host_port(ip, port),
        (None | Some("") | Some("?"), _) => format!("{}:{port}", host_of(reached)),
        (Some(host), _) => join_host_port(host, port),
    }
}

fn port(value: Option<&Value>) -> Option<u16> {
    u16::try_from(int(value?)?).ok().filter(|&p| p != 0)
}

/// How many slots the ranges of one reply may list in all: a cluster lists each of its
/// 16384 slots once. Allowing a few times that for a node caught mid-change, a reply
/// beyond it is malformed: each range listed costs a fill of the slot table, and a
/// reply of a million whole ranges (45 MB) would cost gigabytes of writes per refresh.
const MAX_LISTED_SLOTS: usize = 4 * crate::slot::SLOT_COUNT as usize;

/// Adds the range `start..=end` to `listed`, the slots a reply's ranges list so far.
fn count_listed(listed: &mut usize, start: u16, end: u16) -> Result<()> {
    *listed += usize::from(end.saturating_sub(start)) + 1;
    if *listed > MAX_LISTED_SLOTS {
        return Err(malformed("slot ranges list more slots than a cluster has"));
    }
    Ok(())
}

/// Parses a `CLUSTER SHARDS` reply (Redis 7+). `reached` is the address of the node that
/// answered; `tls` picks the `tls-port` where a node reports one.
pub(crate) fn parse_shards(reply: &Value, reached: &str, tls: bool) -> Result<Vec<ShardInfo>> {
    let Value::Array(shards) = reply else {
        return Err(malformed("CLUSTER SHARDS is not an array"));
    };
    let mut out = Vec::with_capacity(shards.len());
    let mut listed = 0;
    for shard in shards {
        let shard = fields(shard).ok_or_else(|| malformed("shard is not a map"))?;
        let slots = match field(&shard, "slots") {
            Some(Value::Array(s)) => s,
            _ => return Err(malformed("shard without slots")),
        };
        let mut ranges = Vec::with_capacity(slots.len() / 2);
        for pair in slots.chunks(2) {
            let (Some(start), Some(end)) = (pair.first().and_then(int), pair.get(1).and_then(int))
            else {
                return Err(malformed("odd slot range list"));
            };
            let (Ok(start), Ok(end)) = (u16::try_from(start), u16::try_from(end)) else {
                return Err(malformed("slot out of range"));
            };
            count_listed(&mut listed, start, end)?;
            ranges.push((start, end));
        }
        let nodes = match field(&shard, "nodes") {
            Some(Value::Array(n)) => n,
            _ => return Err(malformed("shard without nodes")),
        };
        // Valkey and Redis 7.2+ list a failed-over primary in its old shard, still as
        // `master`, beside the promoted one, in any order; so may an empty primary
        // join one. The shard's primary is the healthy master with the most
        // replication offset; another master is no one to route to.
        let mut primary: Option<(NodeInfo, i64)> = None;
        let mut contenders = Vec::new();
        let mut replicas = Vec::new();
        let mut failed = Vec::new();
        for node in nodes {
            let node = fields(node).ok_or_else(|| malformed("node is not a map"))?;
            let plain = port(field(&node, "port"));
            let tls_port = port(field(&node, "tls-port"));
            let Some(port) = (if tls {
                tls_port.or(plain)
            } else {
                plain.or(tls_port)
            }) else {
                continue; // A node without a port cannot be reached; skip it.
            };
            let endpoint = field(&node, "endpoint").and_then(text);
            let ip = field(&node, "ip").and_then(text);
            let health = field(&node, "health").and_then(text);
            let info = NodeInfo {
                id: field(&node, "id").and_then(text),
                addr: endpoint_addr(endpoint.as_deref(), ip.as_deref(), port, reached),
                // "loading" also marks a replica whose replication offset is still 0,
                // which every replica of a fresh cluster has: only a failed node is out.
                healthy: !matches!(health.as_deref(), Some("failed" | "fail")),
            };
            if !info.healthy {
                failed.push(info.addr.clone());
            }
            match field(&node, "role").and_then(text).as_deref() {
                Some("master") => {
                    let offset = field(&node, "replication-offset").and_then(int);
                    let offset = offset.unwrap_or(0);
                    let better = |(best, best_offset): &(NodeInfo, i64)| {
                        (info.healthy, offset) > (best.healthy, *best_offset)
                    };
                    if primary.as_ref().is_none_or(better) {
                        if let Some((beaten, _)) = primary.replace((info, offset)) {
                            contenders.extend(Some(beaten).filter(|n| n.healthy));
                        }
                    } else if info.healthy {
                        contenders.push(info);
                    }
                }
                _ => replicas.push(info),
            }
        }
        let primary = primary.map(|(info, _)| info);
        // A shard whose primary failed and has no promoted replica yet has no
        // primary entry; it cannot serve its slots, so leave them unassigned.
        if let Some(primary) = primary {
            out.push(ShardInfo {
                primary,
                replicas,
                ranges,
                failed,
                contenders,
            });
        }
    }
    Ok(out)
}

/// Within each shard that lists more than one healthy master, the one of the newest
/// config epoch serves it. A failed primary that restarts is listed as a master of its
/// old shard, healthy, until it hears it was replaced; by replication offset alone, its
/// offset from before the failure (the promoted replica may have lagged) could win its
/// slots back for every refresh meanwhile, each request then paying a `MOVED`. The
/// promotion bumped the new primary's epoch past it. Masters of unknown epoch (no
/// `CLUSTER NODES`, or not listed there) keep the offset's choice.
pub(crate) fn prefer_newest_epoch(
    shards: &mut [ShardInfo],
    epochs: &std::collections::HashMap<String, u64>,
) {
    for shard in shards {
        let epoch_of = |n: &NodeInfo| n.id.as_ref().and_then(|id| epochs.get(id)).copied();
        let Some(mut newest) = epoch_of(&shard.primary) else {
            continue;
        };
        let mut pick = None;
        for (i, contender) in shard.contenders.iter().enumerate() {
            if let Some(epoch) = epoch_of(contender).filter(|&e| e > newest) {
                newest = epoch;
                pick = Some(i);
            }
        }
        if let Some(i) = pick {
            let newer = shard.contenders.swap_remove(i);
            let older = std::mem::replace(&mut shard.primary, newer);
            shard.contenders.push(older);
        }
    }
}

/// Parses a `CLUSTER SLOTS` reply, the fallback for servers without `CLUSTER SHARDS`.
pub(crate) fn parse_slots(reply: &Value, reached: &str) -> Result<Vec<ShardInfo>> {
    let Value::Array(entries) = reply else {
        return Err(malformed("CLUSTER SLOTS is not an array"));
    };
    let mut out: Vec<ShardInfo> = Vec::new();
    // Where each primary's shard is in `out`: a node's reply (hostile, or a huge
    // cluster's) may list thousands of ranges, and a search per range would be
    // quadratic.
    let mut shard_of: std::collections::HashMap<String, usize> = Default::default();
    let mut listed = 0;
    for entry in entries {
        let Value::Array(items) = entry else {
            return Err(malformed("slot range is not an array"));
        };
        if items.len() < 3 {
            return Err(malformed("slot range without a node"));
        }
        let (Some(start), Some(end)) = (int(&items[0]), int(&items[1])) else {
            return Err(malformed("slot range bounds"));
        };
        let (Ok(start), Ok(end)) = (u16::try_from(start), u16::try_from(end)) else {
            return Err(malformed("slot out of range"));
        };
        count_listed(&mut listed, start, end)?;
        let mut nodes = Vec::with_capacity(items.len() - 2);
        for (position, node) in items[2..].iter().enumerate() {
            let Value::Array(parts) = node else {
                return Err(malformed("node is not an array"));
            };
            let Some(port) = port(parts.get(1)) else {
                if position == 0 {
                    // A primary that cannot be reached: the range has no owner, rather
                    // than its first replica taking writes.
                    break;
                }
                continue;
            };
            let host = parts.first().and_then(text);
            // Redis 7 adds what the endpoint does not say: `{"ip": ..., "hostname": ...}`.
            let ip = parts
                .get(3)
                .and_then(fields)
                .and_then(|meta| field(&meta, "ip").and_then(text));
            nodes.push(NodeInfo {
                id: parts.get(2).and_then(text),
                addr: endpoint_addr(host.as_deref(), ip.as_deref(), port, reached),
                healthy: true,
            });
        }
        let mut nodes = nodes.into_iter();
        let Some(primary) = nodes.next() else {
            continue;
        };
        match shard_of.get(&primary.addr) {
            Some(&i) => out[i].ranges.push((start, end)),
            None => {
                shard_of.insert(primary.addr.clone(), out.len());
                out.push(ShardInfo {
                    primary,
                    replicas: nodes.collect(),
                    ranges: vec![(start, end)],
                    // CLUSTER SLOTS does not say.
                    failed: Vec::new(),
                    contenders: Vec::new(),
                });
            }
        }
    }
    Ok(out)
}

/// Builds the slot map from parsed shards, passing every address through `remap`.
/// Nodes reported as failed are left out: a failed primary's slots stay unassigned, and
/// nothing should be read from a failed replica.
pub(crate) fn slot_map(shards: &[ShardInfo], remap: &dyn Fn(&str) -> String) -> SlotMap {
    // A primary the cluster flags as failed serves nothing until its replica takes over;
    // routing to it would only time out.
    SlotMap::from_ranges(
        shards
            .iter()
            .filter(|s| s.primary.healthy)
            .map(|s| routed(s, remap)),
    )
}

/// `shard` as a slot map takes it: remapped addresses, its healthy replicas, its ranges.
fn routed(shard: &ShardInfo, remap: &dyn Fn(&str) -> String) -> (Shard, Vec<(u16, u16)>) {
    let routed = Shard {
        primary: Arc::from(remap(&shard.primary.addr)),
        replicas: shard
            .replicas
            .iter()
            .filter(|r| r.healthy)
            .map(|r| Arc::from(remap(&r.addr)))
            .collect(),
    };
    (routed, shard.ranges.clone())
}

/// The shards whose primary the cluster flags as failed while it still holds its slots
/// (no replica took over yet, or none can), with their healthy replicas: a map of the
/// slots [`slot_map`] leaves unassigned, for the reads a replica may serve meanwhile
/// (with `cluster-require-full-coverage no` or `cluster-allow-reads-when-down yes`
/// the replicas answer them). Shards without a healthy replica are left out.
pub(crate) fn down_map(shards: &[ShardInfo], remap: &dyn Fn(&str) -> String) -> SlotMap {
    let down = shards
        .iter()
        .filter(|s| !s.primary.healthy && !s.ranges.is_empty())
        .filter(|s| s.replicas.iter().any(|r| r.healthy));
    SlotMap::from_ranges(down.map(|s| routed(s, remap)))
}

/// One node's view of the topology: the slot map it gives, the nodes it reports failed
/// (remapped addresses), the node ids it gives for the addresses ([`node_ids`]), and the
/// config epochs of the primaries that serve slots in it ([`primary_epochs`]); and the
/// shards whose primary failed, for replica reads ([`down_map`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct View {
    pub(crate) map: SlotMap,
    pub(crate) down: SlotMap,
    pub(crate) failed: Vec<Arc<str>>,
    pub(crate) ids: Vec<(Arc<str>, Arc<str>)>,
    pub(crate) epochs: Option<Vec<(Arc<str>, u64)>>,
}

/// The config epoch of each primary, by address.
pub(crate) type Epochs = [(Arc<str>, u64)];

/// A slot map and, when known, the config epochs of its primaries.
pub(crate) type Routing<'a> = (&'a SlotMap, Option<&'a Epochs>);

impl View {
    /// The view as [`compare_by_epoch`] takes it.
    pub(crate) fn routing(&self) -> Routing<'_> {
        (&self.map, self.epochs.as_deref())
    }
}

/// The config epoch of each live master in a `CLUSTER NODES` reply, by node id; `None` when
/// the reply is not one (an error: a user without `+cluster|nodes`, a server that
/// renamed it away). A line: `<id> <addr> <flags> <master> <ping> <pong> <epoch>
/// <link> <slots>...`.
pub(crate) fn parse_node_epochs(reply: &Value) -> Option<std::collections::HashMap<String, u64>> {
    let text = match reply {
        Value::Bulk(b) | Value::Verbatim { text: b, .. } => std::str::from_utf8(b).ok()?,
        _ => return None,
    };
    let mut epochs = std::collections::HashMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(id), Some(flags), Some(epoch)) = (fields.first(), fields.get(2), fields.get(6))
        else {
            return None;
        };
        let flags = || flags.split(',');
        // A failed master stays listed (until `CLUSTER FORGET`) with the epoch it had;
        // it serves nothing, and one that shared its epoch with a live master would
        // read as a collision for ever.
        let gone = flags().any(|f| matches!(f, "fail" | "noaddr" | "handshake"));
        if flags().any(|f| f == "master") && !gone {
            epochs.insert((*id).to_string(), epoch.parse().ok()?);
        }
    }
    Some(epochs)
}

/// The addresses of the nodes a `CLUSTER NODES` reply lists, as a redirect names them
/// (`ip:port`, and `hostname:port` for a node that announces a host name, each also at
/// its `tls-port` where one is given; IPv6 in brackets); nodes still in handshake or
/// without an address left out. `None` for a reply that is not such text.
pub(crate) fn listed_addresses(reply: &Value) -> Option<Vec<String>> {
    let text = match reply {
        Value::Bulk(b) | Value::Verbatim { text: b, .. } => std::str::from_utf8(b).ok()?,
        _ => return None,
    };
    let mut addresses = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let fields: Vec<&str> = line.split(' ').collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            return None;
        };
        if flags
            .split(',')
            .any(|f| matches!(f, "noaddr" | "handshake"))
        {
            continue;
        }
        // `ip:port@cport`, then `,hostname` (7.0), then `,key=value` fields (7.2).
        let endpoint = addr.split(['@', ',']).next().unwrap_or_default();
        let Some((ip, port)) = endpoint.rsplit_once(':') else {
            continue;
        };
        let hostname = addr
            .split(',')
            .nth(1)
            .filter(|h| !h.is_empty() && !h.contains('='));
        let tls_port = addr
            .split(',')
            .find_map(|field| field.strip_prefix("tls-port="))
            .and_then(|p| p.parse::<u16>().ok());
        let ports = port.parse::<u16>().ok().into_iter().chain(tls_port);
        for port in ports.filter(|&p| p != 0) {
            for host in std::iter::once(ip).chain(hostname) {
                if !host.is_empty() {
                    addresses.push(crate::slot::join_host_port(host, port));
                }
            }
        }
    }
    Some(addresses)
}

/// Whether two masters in `epochs` ([`parse_node_epochs`]) have the same config epoch
/// (0 aside: a master that joined and never served): a promotion that took the epoch a
/// slot migration had just taken without a vote. The nodes settle it with a new epoch
/// within a round of gossip; until then, views of the cluster that route differently
/// can have the same epochs.
pub(crate) fn epoch_collision(epochs: &std::collections::HashMap<String, u64>) -> bool {
    let mut seen = std::collections::HashSet::new();
    epochs
        .values()
        .filter(|&&e| e != 0)
        .any(|e| !seen.insert(e))
}

/// The config epoch of each healthy primary that serves slots in `shards`, by the
/// address the client reaches it at (through `remap`); `None` when one of them has no
/// epoch in `epochs` (or no id).
pub(crate) fn primary_epochs(
    shards: &[ShardInfo],
    epochs: &std::collections::HashMap<String, u64>,
    remap: &dyn Fn(&str) -> String,
) -> Option<Vec<(Arc<str>, u64)>> {
    shards
        .iter()
        .filter(|s| s.primary.healthy && !s.ranges.is_empty())
        .map(|s| {
            let epoch = epochs.get(s.primary.id.as_deref()?)?;
            Some((Arc::from(remap(&s.primary.addr)), *epoch))
        })
        .collect()
}

/// Which of two routings is the newer by config epoch, as the nodes settle it: a slot
/// belongs to the master that claims it with the highest epoch, and a promotion, or a
/// slot a migration hands over, takes an epoch above its old owner's. So on the slots
/// the two route to different primaries, the newer names owners of higher epochs.
/// `Equal` when they route alike, or their owners there have the same epochs (two
/// masters of one epoch: a promotion that took the epoch a migration had just taken
/// without a vote); `None` when either has no epochs, or each is newer on some slots
/// (two changes, each seen by some nodes). Slots one of them leaves unassigned tell
/// nothing. (For a gossip round, a node told of a migration by `CLUSTER SETSLOT`
/// before it heard of the new owner's epoch gives the right owner with its old epoch,
/// and reads as older: a `MOVED` covers the moment.)
pub(crate) fn compare_by_epoch(a: Routing<'_>, b: Routing<'_>) -> Option<std::cmp::Ordering> {
    use std::cmp::Ordering;
    let ((map_a, Some(epochs_a)), (map_b, Some(epochs_b))) = (a, b) else {
        return None;
    };
    // By address, looked up once per slot: a search of the list would cost the number
    // of nodes per slot.
    let by_node = |epochs: &Epochs| -> std::collections::HashMap<Arc<str>, u64> {
        epochs.iter().cloned().collect()
    };
    let (epochs_a, epochs_b) = (by_node(epochs_a), by_node(epochs_b));
    let epoch = |epochs: &std::collections::HashMap<Arc<str>, u64>, primary: &Arc<str>| {
        epochs.get(primary).copied()
    };
    let (mut newer, mut older) = (false, false);
    for slot in 0..crate::slot::SLOT_COUNT {
        let (Some(pa), Some(pb)) = (map_a.primary(slot), map_b.primary(slot)) else {
            continue;
        };
        if pa == pb {
            continue;
        }
        match (epoch(&epochs_a, pa), epoch(&epochs_b, pb)) {
            (Some(ea), Some(eb)) if ea > eb => newer = true,
            (Some(ea), Some(eb)) if ea < eb => older = true,
            (Some(_), Some(_)) => {}
            _ => return None,
        }
        if newer && older {
            return None;
        }
    }
    Some(match (newer, older) {
        (true, _) => Ordering::Greater,
        (_, true) => Ordering::Less,
        _ => Ordering::Equal,
    })
}

/// The node id of each healthy node `shards` lists with one, by the address the client
/// reaches it at (through `remap`): who should answer at that address. (A failed node
/// may have left its address to the node that replaced it.)
pub(crate) fn node_ids(
    shards: &[ShardInfo],
    remap: &dyn Fn(&str) -> String,
) -> Vec<(Arc<str>, Arc<str>)> {
    shards
        .iter()
        .flat_map(|s| std::iter::once(&s.primary).chain(&s.replicas))
        .filter(|node| node.healthy)
        .filter_map(|node| {
            let id = node.id.as_deref().filter(|id| !id.is_empty())?;
            Some((Arc::from(remap(&node.addr)), Arc::from(id)))
        })
        .collect()
}

/// The addresses of the nodes `shards` reports as failed, through `remap`.
pub(crate) fn failed_nodes(shards: &[ShardInfo], remap: &dyn Fn(&str) -> String) -> Vec<Arc<str>> {
    shards
        .iter()
        .flat_map(|s| s.failed.iter().map(|a| Arc::from(remap(a))))
        .collect()
}

/// Leaves out every view older by config epoch than another ([`compare_by_epoch`]),
/// then picks the view that serves the most slots from healthy primaries; then, when
/// `collided` (a node reported two masters of one epoch lately), the one that routes
/// the most slots as `current` (see the comment at the ranking); then the one most
/// nodes agree on. During a failover, nodes that have not yet heard of the promotion
/// still name the failed primary (which serves nothing here), so the view with the
/// promoted replica wins as soon as one asked node reports it; where the old primary
/// still serves in their views, the promoted one's epoch outranks it, however many
/// nodes have not heard.
///
/// A node that has not heard of the failure at all still calls the old primary healthy,
/// and its view serves as many slots. Between such views the one that reports failed
/// a primary of the others wins: that flag took most primaries to set, so that view is
/// the newer. (A failure flag is no sign of news otherwise: each node clears it on its
/// own, so a lagging one may still flag a node back as a replica.) `None` when there is
/// no view at all. The view returned has every failure flag and every node id its
/// voters gave (an address two voters give different ids is left unchecked, see
/// [`crate::conn::NodeIds::replace`]).
///
/// Still tied, the one that routes the most slots as `current` (the map installed,
/// `MOVED` patches included) wins. While a graceful failover spreads, the old primary,
/// the new one and a third node may each give their own view, one vote each: picked by
/// the order of the answers, the map went back and forth between old and new primary
/// at every refresh for seconds, and the subscriptions and publishes with it. A newer
/// epoch, a `MOVED` from the old primary once it knows, or a majority, moves it on.
pub(crate) fn choose_view(views: Vec<View>, current: &SlotMap, collided: bool) -> Option<View> {
    // Each distinct map with its votes, and every node flagged failed by a node giving it.
    let mut tally: Vec<(View, usize)> = Vec::new();
    for view in views {
        match tally
            .iter_mut()
            .find(|(tallied, _)| tallied.map == view.map)
        {
            Some((tallied, votes)) => {
                *votes += 1;
                tallied.failed.extend(view.failed);
                tallied.ids.extend(view.ids);
                if tallied.epochs.is_none() {
                    tallied.epochs = view.epochs;
                }
            }
            None => tally.push((view, 1)),
        }
    }
    // Out first: a view older by config epoch than another, however many nodes give it
    // and however many slots it serves. A node cut off from the cluster bus never flags
    // a failed primary and keeps serving every slot in its view, the promoted replicas'
    // too with their old primaries: ranked by coverage first, it won every refresh that
    // asked it, with `cluster-require-full-coverage no` and a shard lost for good.
    let all: Vec<usize> = (0..tally.len()).collect();
    let older = |i: usize| {
        all.iter().any(|&j| {
            compare_by_epoch(tally[i].0.routing(), tally[j].0.routing())
                == Some(std::cmp::Ordering::Less)
        })
    };
    let mut newest: Vec<usize> = all.iter().copied().filter(|&i| !older(i)).collect();
    if newest.is_empty() {
        newest = all;
    }
    let covered = newest.iter().map(|&i| tally[i].0.map.covered()).max()?;
    let mut tied: Vec<usize> = newest
        .into_iter()
        .filter(|&i| tally[i].0.map.covered() == covered)
        .collect();
    // While two masters share an epoch, which side a node is on is no sign of news: the
    // nodes do not move a slot to a claim of the same epoch, and settle it with a new
    // one within a round of gossip. Until then the routing installed stays, before the
    // votes (they flipped the map every 100 ms, by which three nodes a refresh asked).
    let rank = |i: usize| {
        let (view, votes) = &tally[i];
        let installed = if collided {
            view.map.slots_routed_like(current)
        } else {
            0
        };
        (installed, *votes)
    };
    let best = tied.iter().map(|&i| rank(i)).max()?;
    tied.retain(|&i| rank(i) == best);
    // How many primaries of the other tied views this one reports failed.
    let news = |i: usize| {
        let failed = &tally[i].0.failed;
        tied.iter()
            .filter(|&&j| j != i)
            .flat_map(|&j| tally[j].0.map.shards().iter().map(|s| &s.primary))
            .filter(|primary| failed.contains(primary))
            .count()
    };
    let chosen = tied
        .iter()
        .copied()
        .max_by_key(|&i| (news(i), tally[i].0.map.slots_routed_like(current)))?;
    if tally.len() > 1 && tracing::enabled!(tracing::Level::DEBUG) {
        // Which view won, and on what: the first thing to read when routes flap. Per
        // view: slots covered, votes, slots routed as installed, config epochs.
        let views: Vec<_> = tally
            .iter()
            .map(|(view, votes)| {
                let like_installed = view.map.slots_routed_like(current);
                (view.map.covered(), *votes, like_installed, &view.epochs)
            })
            .collect();
        tracing::debug!(chosen, ?views, "nodes disagree on the topology");
    }
    Some(tally.swap_remove(chosen).0)
}

/// Why a topology refresh was asked for (also a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RefreshTrigger {
    Moved,
    ConnectionFailure,
    ClusterDown,
    UnknownNode,
    Uncovered,
    Periodic,
}

impl RefreshTrigger {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RefreshTrigger::Moved => "moved",
            RefreshTrigger::ConnectionFailure => "connection_failure",
            RefreshTrigger::ClusterDown => "cluster_down",
            RefreshTrigger::UnknownNode => "unknown_node",
            RefreshTrigger::Uncovered => "uncovered_slot",
            RefreshTrigger::Periodic => "periodic",
        }
    }
}

/// How far the refresh limiter stretches its interval while refreshes learn nothing new
/// (never below `refresh_min_interval`).
pub(crate) const QUIET_INTERVAL_MAX: Duration = Duration::from_secs(1);

/// Rate limit for refreshes: at most one per interval, however many triggers. The
/// interval is `min_interval` after a refresh that changed the routes, and doubles after
/// each that did not (or failed), up to [`QUIET_INTERVAL_MAX`]: while a dead primary
/// waits for its replica's promotion, every request to its slots asks for a refresh,
/// and a thousand clients asking three nodes ten times a second would load the cluster
/// when it is weakest. A change is still seen within a second.
#[derive(Debug)]
pub(crate) struct RefreshLimiter {
    min_interval: Duration,
    interval: Duration,
    last: Option<Instant>,
}

impl RefreshLimiter {
    pub(crate) fn new(min_interval: Duration) -> Self {
        RefreshLimiter {
            min_interval,
            interval: min_interval,
            last: None,
        }
    }

    /// How long to wait before the next refresh may start (zero: now).
    pub(crate) fn wait_before_refresh(&self, now: Instant) -> Duration {
        match self.last {
            // `refresh_min_interval(Duration::MAX)` must not overflow the clock.
            Some(last) => last
                .checked_add(self.interval)
                .map_or(Duration::MAX, |next| next.saturating_duration_since(now)),
            None => Duration::ZERO,
        }
    }

    /// Records that a refresh started at `now`.
    pub(crate) fn on_refresh(&mut self, now: Instant) {
        self.last = Some(now);
    }

    /// Records whether the last refresh changed the routes.
    pub(crate) fn on_outcome(&mut self, changed: bool) {
        self.interval = if changed {
            self.min_interval
        } else {
            self.interval
                .saturating_mul(2)
                .min(self.min_interval.max(QUIET_INTERVAL_MAX))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn s(x: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(x.as_bytes()))
    }

    fn node(id: &str, endpoint: &str, port: i64, role: &str, health: &str) -> Value {
        Value::Array(vec![
            s("id"),
            s(id),
            s("port"),
            Value::Int(port),
            s("ip"),
            s("127.0.0.1"),
            s("endpoint"),
            s(endpoint),
            s("role"),
            s(role),
            s("replication-offset"),
            Value::Int(1),
            s("health"),
            s(health),
        ])
    }

    fn node_at_offset(id: &str, port: i64, health: &str, offset: i64) -> Value {
        let Value::Array(mut fields) = node(id, "127.0.0.1", port, "master", health) else {
            unreachable!("node() builds an array")
        };
        fields[11] = Value::Int(offset);
        Value::Array(fields)
    }

    #[test]
    fn a_shard_listing_two_masters_is_served_by_the_healthy_one_with_the_most_data() {
        let shard = |nodes: Vec<Value>| {
            Value::Array(vec![Value::Array(vec![
                s("slots"),
                Value::Array(vec![Value::Int(0), Value::Int(16383)]),
                s("nodes"),
                Value::Array(nodes),
            ])])
        };
        let promoted = node_at_offset("a", 7003, "online", 5000);
        let failed = node_at_offset("b", 7000, "fail", 6000);
        let empty = node_at_offset("c", 7009, "online", 0);
        for nodes in [
            vec![promoted.clone(), failed.clone()],
            vec![failed.clone(), promoted.clone()],
            vec![empty.clone(), promoted.clone(), failed.clone()],
            vec![failed.clone(), promoted.clone(), empty.clone()],
        ] {
            let shards = parse_shards(&shard(nodes), "127.0.0.1:7000", false).unwrap();
            assert_eq!(shards[0].primary.addr, "127.0.0.1:7003");
            assert!(
                shards[0].replicas.is_empty(),
                "another master is no replica"
            );
            let map = slot_map(&shards, &|a: &str| a.to_string());
            assert_eq!(map.covered(), 16384);
            assert_eq!(&*map.shard(0).unwrap().primary, "127.0.0.1:7003");
            let same = |a: &str| a.to_string();
            assert_eq!(
                failed_nodes(&shards, &same),
                vec![Arc::<str>::from("127.0.0.1:7000")],
                "the failed old primary is reported"
            );
        }
        // Only a failed master: the slots stay unassigned until a promotion shows.
        let shards = parse_shards(&shard(vec![failed]), "127.0.0.1:7000", false).unwrap();
        assert_eq!(slot_map(&shards, &|a: &str| a.to_string()).covered(), 0);
    }

    #[test]
    fn a_failed_primarys_slots_go_to_its_healthy_replicas_for_reads_only() {
        let node = |port: u16, healthy: bool| NodeInfo {
            id: None,
            addr: format!("h:{port}"),
            healthy,
        };
        let shard = |primary: NodeInfo, replicas: Vec<NodeInfo>, ranges| ShardInfo {
            primary,
            replicas,
            ranges,
            failed: Vec::new(),
            contenders: Vec::new(),
        };
        let shards = vec![
            shard(node(1, true), vec![node(2, true)], vec![(0, 99)]),
            // Failed, one replica healthy: its slots are the replica's, for reads.
            shard(
                node(3, false),
                vec![node(4, true), node(5, false)],
                vec![(100, 199)],
            ),
            // Failed, and no healthy replica: nobody's.
            shard(node(6, false), vec![node(7, false)], vec![(200, 299)]),
        ];
        let same = |a: &str| a.to_string();
        let (map, down) = (slot_map(&shards, &same), down_map(&shards, &same));
        assert_eq!((map.covered(), down.covered()), (100, 100));
        assert!(map.shard(150).is_none());
        let stranded = down.shard(150).unwrap();
        assert_eq!(&*stranded.primary, "h:3");
        assert_eq!(stranded.replicas, vec![Arc::<str>::from("h:4")]);
        assert!(down.shard(50).is_none() && down.shard(250).is_none());
    }

    /// A failed primary restarted, listed as a healthy master of its old shard with the
    /// larger replication offset, does not take the shard back from the promoted
    /// replica, whose config epoch is newer. Without epochs, the offset decides.
    #[test]
    fn a_shard_listing_two_healthy_masters_is_served_by_the_newest_epoch() {
        let reply = Value::Array(vec![Value::Array(vec![
            s("slots"),
            Value::Array(vec![Value::Int(0), Value::Int(16383)]),
            s("nodes"),
            Value::Array(vec![
                node_at_offset("old", 7000, "online", 6000),
                node_at_offset("new", 7003, "online", 5000),
            ]),
        ])]);
        let mut shards = parse_shards(&reply, "127.0.0.1:7000", false).unwrap();
        assert_eq!(shards[0].primary.addr, "127.0.0.1:7000", "by offset");
        assert_eq!(shards[0].contenders[0].addr, "127.0.0.1:7003");
        let unknown: std::collections::HashMap<String, u64> =
            [("other".to_owned(), 9)].into_iter().collect();
        prefer_newest_epoch(&mut shards, &unknown);
        assert_eq!(shards[0].primary.addr, "127.0.0.1:7000");
        let epochs: std::collections::HashMap<String, u64> =
            [("old".to_owned(), 3), ("new".to_owned(), 7)]
                .into_iter()
                .collect();
        prefer_newest_epoch(&mut shards, &epochs);
        assert_eq!(shards[0].primary.addr, "127.0.0.1:7003");
        assert_eq!(shards[0].contenders[0].addr, "127.0.0.1:7000");
        let map = slot_map(&shards, &|a: &str| a.to_string());
        assert_eq!(&*map.shard(0).unwrap().primary, "127.0.0.1:7003");
    }

    #[test]
    fn parses_cluster_shards_resp2_and_resolves_unknown_endpoints() {
        let reply = Value::Array(vec![
            Value::Array(vec![
                s("slots"),
                Value::Array(vec![
                    Value::Int(0),
                    Value::Int(5460),
                    Value::Int(6000),
                    Value::Int(6001),
                ]),
                s("nodes"),
                Value::Array(vec![
                    node("a", "127.0.0.1", 7000, "master", "online"),
                    node("b", "?", 7003, "replica", "online"),
                    node("c", "", 7006, "replica", "failed"),
                ]),
            ]),
            // A new master without slots.
            Value::Array(vec![
                s("slots"),
                Value::Array(vec![]),
                s("nodes"),
                Value::Array(vec![node("d", "redis-cluster-3", 6379, "master", "online")]),
            ]),
        ]);
        let shards = parse_shards(&reply, "10.1.1.1:7000", false).unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].primary.addr, "127.0.0.1:7000");
        assert_eq!(shards[0].ranges, vec![(0, 5460), (6000, 6001)]);
        // `?`: at its ip; empty: at the host asked.
        assert_eq!(shards[0].replicas[0].addr, "127.0.0.1:7003");
        assert_eq!(shards[0].replicas[1].addr, "10.1.1.1:7006");
        assert!(!shards[0].replicas[1].healthy);
        assert_eq!(shards[1].primary.addr, "redis-cluster-3:6379");
        let remap = |a: &str| a.replace("redis-cluster-3:6379", "127.0.0.1:6453");
        let map = slot_map(&shards, &remap);
        assert_eq!(map.covered(), 5461 + 2);
        assert_eq!(
            map.shard(0).unwrap().replicas.len(),
            1,
            "failed replica left out"
        );
        assert!(map.nodes().iter().any(|n| &**n == "127.0.0.1:6453"));
    }

    #[test]
    fn parses_cluster_shards_resp3_maps() {
        let node = Value::Map(vec![
            (s("id"), s("a")),
            (s("port"), Value::Int(7000)),
            (s("tls-port"), Value::Int(7443)),
            (s("endpoint"), s("::1")),
            (s("role"), s("master")),
            (s("health"), s("online")),
        ]);
        let reply = Value::Array(vec![Value::Map(vec![
            (
                s("slots"),
                Value::Array(vec![Value::Int(0), Value::Int(16383)]),
            ),
            (s("nodes"), Value::Array(vec![node])),
        ])]);
        let plain = parse_shards(&reply, "x:1", false).unwrap();
        assert_eq!(plain[0].primary.addr, "[::1]:7000");
        let tls = parse_shards(&reply, "x:1", true).unwrap();
        assert_eq!(tls[0].primary.addr, "[::1]:7443");
    }

    #[test]
    fn an_unknown_host_name_endpoint_falls_back_to_the_nodes_ip() {
        // `?`: set to prefer host names, without one. The node's `ip` says where it is,
        // not the host of the node asked.
        let one_shard = |node: Value| {
            Value::Array(vec![Value::Array(vec![
                s("slots"),
                Value::Array(vec![Value::Int(0), Value::Int(16383)]),
                s("nodes"),
                Value::Array(vec![node]),
            ])])
        };
        let unknown = node("a", "?", 7000, "master", "online");
        let shards = parse_shards(&one_shard(unknown.clone()), "10.0.0.9:7000", false).unwrap();
        assert_eq!(shards[0].primary.addr, "127.0.0.1:7000");
        // Without an `ip` (or an empty one): the host asked, as for an empty endpoint.
        let Value::Array(mut no_ip) = unknown else {
            unreachable!("node() builds an array")
        };
        no_ip[5] = s("");
        let reply = one_shard(Value::Array(no_ip));
        let shards = parse_shards(&reply, "10.0.0.9:7000", false).unwrap();
        assert_eq!(shards[0].primary.addr, "10.0.0.9:7000");
        // CLUSTER SLOTS carries the ip in the node's metadata.
        let slots = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            Value::Array(vec![
                s("?"),
                Value::Int(7001),
                s("id"),
                Value::Map(vec![(s("ip"), s("10.0.0.2"))]),
            ]),
        ])]);
        let shards = parse_slots(&slots, "10.0.0.9:7000").unwrap();
        assert_eq!(shards[0].primary.addr, "10.0.0.2:7001");
    }

    #[test]
    fn a_slot_range_whose_primary_has_no_port_has_no_owner() {
        let reply = Value::Array(vec![Value::Array(vec![
            Value::Int(0),
            Value::Int(100),
            Value::Array(vec![s(""), Value::Int(0), s("p")]),
            Value::Array(vec![s(""), Value::Int(7003), s("r")]),
        ])]);
        let shards = parse_slots(&reply, "127.0.0.1:7000").unwrap();
        assert!(shards.is_empty(), "{shards:?}");
    }

    #[test]
    fn parses_cluster_slots() {
        let entry = |a: i64, b: i64, ports: &[i64]| {
            let mut items = vec![Value::Int(a), Value::Int(b)];
            for p in ports {
                items.push(Value::Array(vec![s(""), Value::Int(*p), s("id")]));
            }
            Value::Array(items)
        };
        let reply = Value::Array(vec![
            entry(0, 100, &[7000, 7003]),
            entry(101, 200, &[7001]),
            entry(201, 300, &[7000, 7003]),
        ]);
        let shards = parse_slots(&reply, "127.0.0.1:7000").unwrap();
        assert_eq!(shards.len(), 2);
        assert_eq!(shards[0].ranges, vec![(0, 100), (201, 300)]);
        assert_eq!(shards[0].replicas[0].addr, "127.0.0.1:7003");
    }

    /// A reply with tens of thousands of ranges and primaries (a hostile node's; no
    /// cluster has that many) is grouped by primary as a small one is, each range with
    /// its primary, and the map built from it compares and routes as it should. (The
    /// grouping searched the shards found so far for every range, and so did the map
    /// and its comparison: hundreds of millions of string compares per refresh.)
    #[test]
    fn a_reply_with_thousands_of_primaries_is_grouped_by_primary() {
        let primaries = 20_000i64;
        let entry = |slot: i64, port: i64| {
            Value::Array(vec![
                Value::Int(slot % 16384),
                Value::Int(slot % 16384),
                Value::Array(vec![s("10.0.0.1"), Value::Int(port), s("id")]),
            ])
        };
        // Every primary twice: once for its own slot, once again further on.
        let reply = Value::Array(
            (0..2 * primaries)
                .map(|i| entry(i, 1 + i % primaries))
                .collect(),
        );
        let shards = parse_slots(&reply, "127.0.0.1:7000").unwrap();
        assert_eq!(shards.len(), primaries as usize);
        assert_eq!(shards[5].primary.addr, "10.0.0.1:6");
        assert_eq!(
            shards[5].ranges,
            vec![(5, 5), (20_005 % 16384, 20_005 % 16384)]
        );
        let map = slot_map(&shards, &|a| a.to_string());
        assert_eq!(map, slot_map(&shards, &|a| a.to_string()));
        assert!(map.covers_every_slot());
        // Every slot listed five times over: malformed, not five fills of the table per
        // range (a million of them made gigabytes of writes).
        let whole = Value::Array(vec![
            Value::Int(0),
            Value::Int(16383),
            Value::Array(vec![s("10.0.0.1"), Value::Int(1), s("id")]),
        ]);
        let err = parse_slots(&Value::Array(vec![whole; 5]), "127.0.0.1:7000").unwrap_err();
        assert!(matches!(err, Error::Protocol(_)), "{err:?}");
        // Slot 3 is listed for three primaries (ranges 3, 16387 and 32771): one of them.
        let owner = map.primary(3).map(|p| p.to_string());
        assert!(
            ["10.0.0.1:4", "10.0.0.1:16388", "10.0.0.1:12772"]
                .map(Some)
                .contains(&owner.as_deref()),
            "{owner:?}"
        );
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        for bad in [
            Value::Nil,
            Value::Array(vec![Value::Int(1)]),
            Value::Array(vec![Value::Array(vec![s("slots"), Value::Int(3)])]),
            Value::Array(vec![Value::Array(vec![
                s("slots"),
                Value::Array(vec![Value::Int(0)]),
                s("nodes"),
                Value::Array(vec![]),
            ])]),
            Value::Array(vec![Value::Array(vec![
                s("slots"),
                Value::Array(vec![Value::Int(0), Value::Int(70000)]),
                s("nodes"),
                Value::Array(vec![]),
            ])]),
        ] {
            assert!(parse_shards(&bad, "h:1", false).is_err(), "{bad:?}");
        }
        assert!(parse_slots(
            &Value::Array(vec![Value::Array(vec![Value::Int(0)])]),
            "h:1"
        )
        .is_err());
    }

    #[test]
    fn the_view_most_nodes_agree_on_wins() {
        let a = SlotMap::from_ranges([(
            Shard {
                primary: Arc::from("a:1"),
                replicas: vec![],
            },
            vec![(0, 16383)],
        )]);
        let b = a.with_moved(0, "b:1");
        let view = |map: &SlotMap, failed: &[&str]| View {
            map: map.clone(),
            down: SlotMap::default(),
            failed: failed.iter().map(|&a| Arc::from(a)).collect(),
            ids: Vec::new(),
            epochs: None,
        };
        let choose_view =
            |views| choose_view(views, &SlotMap::default(), false).map(|view| view.map);
        assert_eq!(
            choose_view(vec![view(&b, &[]), view(&a, &[]), view(&a, &[])]),
            Some(a.clone())
        );
        assert_eq!(
            choose_view(vec![view(&b, &[]), view(&b, &[]), view(&a, &[])]),
            Some(b.clone())
        );
        // One vote each: the node that reports the other view's primary failed has
        // heard of the failover, whichever answered first.
        for (first, second) in [
            (view(&a, &[]), view(&b, &["a:1"])),
            (view(&b, &["a:1"]), view(&a, &[])),
        ] {
            assert_eq!(choose_view(vec![first, second]), Some(b.clone()));
        }
        // Failure flags on nodes no other view routes to tell nothing: stale ones (a
        // recovered replica) do not outweigh the one that matters.
        for (first, second) in [
            (view(&a, &["r1:1", "r2:1"]), view(&b, &["a:1"])),
            (view(&b, &["a:1"]), view(&a, &["r1:1", "r2:1"])),
        ] {
            assert_eq!(choose_view(vec![first, second]), Some(b.clone()));
        }
        // Votes still count before failures.
        assert_eq!(
            choose_view(vec![view(&a, &[]), view(&a, &[]), view(&b, &["a:1"])]),
            Some(a)
        );
        // Two nodes that list the same shards in another order agree: their view
        // outvotes a stale one, whichever answered last.
        let shard = |p: &str, r: &str| Shard {
            primary: Arc::from(p),
            replicas: vec![Arc::from(r)],
        };
        let ab = SlotMap::from_ranges([
            (shard("a:1", "a:2"), vec![(0, 8000)]),
            (shard("b:1", "b:2"), vec![(8001, 16383)]),
        ]);
        let ba = SlotMap::from_ranges([
            (shard("b:1", "b:2"), vec![(8001, 16383)]),
            (shard("a:1", "a:2"), vec![(0, 8000)]),
        ]);
        let stale = ab.with_moved(0, "b:1");
        let chosen = choose_view(vec![view(&ab, &[]), view(&ba, &[]), view(&stale, &[])]);
        assert_eq!(chosen.unwrap().primary(0).map(|p| &**p), Some("a:1"));
        assert_eq!(choose_view(vec![]), None);
    }

    /// A real Redis 7.0 `CLUSTER NODES`, right after a graceful failover of the first
    /// shard: its old primary (`24a6...`, epoch 1) now a replica of the new (`1100...`,
    /// epoch 7).
    const NODES_AFTER_FAILOVER: &str = "\
99cc7b711258bb7670e7e3a9309f74675cb393a9 127.0.0.1:33879@43801 master - 0 1795787484032 2 connected 5461-10922
47411e94b853fe733651d9373f75e6f150fe0f3b 127.0.0.1:37475@36067 slave 99cc7b711258bb7670e7e3a9309f74675cb393a9 0 1795787484000 2 connected
8350e66c37c14b501c50eda2c9d876e31823f854 127.0.0.1:44471@34633 slave b498329118b8353180596fb4b5eedbf976e23a54 0 1795787484032 3 connected
24a66fa6d38819353a4dc205937ef3e3207a9abb 127.0.0.1:41105@38173 myself,slave 1100779d4da67ba469490302839298a8385f827e 0 1795787484000 7 connected
1100779d4da67ba469490302839298a8385f827e 127.0.0.1:43215@44885 master - 0 1795787484047 7 connected 0-5460
b498329118b8353180596fb4b5eedbf976e23a54 127.0.0.1:38099@34147 master - 0 1795787484032 3 connected 10923-16383
";

    #[test]
    fn cluster_nodes_lists_every_node_by_the_addresses_a_redirect_names() {
        let nodes = "\
a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460
a2 10.0.0.2:7001@17001,redis-2 master - 0 0 0 connected
a3 fd00::5:7002@17002,,tls-port=7102,shard-id=x slave a1 0 0 1 connected
a4 10.0.0.9:7003@17003 handshake - 0 0 0 disconnected
a5 :0@0 master,noaddr - 0 0 0 disconnected
";
        let listed = listed_addresses(&Value::Bulk(nodes.into())).unwrap();
        assert_eq!(
            listed,
            [
                "127.0.0.1:7000",
                // A master that serves no slot yet, by its address and its host name.
                "10.0.0.2:7001",
                "redis-2:7001",
                "[fd00::5]:7002",
                "[fd00::5]:7102",
            ]
        );
        assert_eq!(listed_addresses(&Value::Int(1)), None);
        assert_eq!(listed_addresses(&Value::Bulk("garbage".into())), None);
    }

    #[test]
    fn config_epochs_of_the_primaries_serving_slots_come_from_cluster_nodes() {
        let epochs = parse_node_epochs(&Value::Bulk(NODES_AFTER_FAILOVER.into())).unwrap();
        // Masters only: a replica's line carries its primary's epoch.
        assert_eq!(epochs.len(), 3);
        assert_eq!(epochs["1100779d4da67ba469490302839298a8385f827e"], 7);
        let verbatim = Value::Verbatim {
            format: *b"txt",
            text: NODES_AFTER_FAILOVER.into(),
        };
        assert_eq!(parse_node_epochs(&verbatim), Some(epochs.clone()));
        // A host name after the address; a failed master (listed until forgotten) is
        // left out, a suspected one (`fail?`) is not.
        let lines = "abc 10.0.0.1:6379@16379,redis-0 master,fail - 0 0 12 disconnected\n\
                     def 10.0.0.2:6379@16379,redis-1 master,fail? - 0 0 13 connected 0-5\n";
        let failed = parse_node_epochs(&Value::Bulk(lines.into())).unwrap();
        assert_eq!(failed.get("abc"), None);
        assert_eq!(failed["def"], 13);
        assert!(!epoch_collision(&epochs));
        // The old primary, not yet heard to be a replica, and the new one at the epoch a
        // migration took (from a real soak run).
        let collided = "932cf2 127.0.0.1:37289@1 master - 0 0 18 connected\n\
                        23cc8a 127.0.0.1:45481@1 master - 0 0 18 connected 4572\n\
                        e4ac6a 127.0.0.1:36017@1 master - 0 0 17 connected 0-4571\n\
                        n1 127.0.0.1:1@1 master - 0 0 0 connected\n\
                        n2 127.0.0.1:2@1 master - 0 0 0 connected\n";
        let collided = parse_node_epochs(&Value::Bulk(collided.into())).unwrap();
        assert!(epoch_collision(&collided));
        let mut settled = collided.clone();
        settled.insert("23cc8a".into(), 19);
        assert!(
            !epoch_collision(&settled),
            "two joined at 0 are no collision"
        );
        for refused in [
            Value::ServerError(crate::ServerError::new("NOPERM no permissions")),
            Value::Bulk("abc 10.0.0.1:6379@16379 master - 0 0 twelve connected".into()),
            Value::Bulk("abc 10.0.0.1:6379@16379 master".into()),
            Value::Nil,
        ] {
            assert_eq!(parse_node_epochs(&refused), None, "{refused:?}");
        }

        let node = |id: &str, port: u16, healthy: bool| NodeInfo {
            id: Some(id.to_string()),
            addr: format!("127.0.0.1:{port}"),
            healthy,
        };
        let shard = |primary: NodeInfo, ranges: Vec<(u16, u16)>| ShardInfo {
            primary,
            replicas: Vec::new(),
            ranges,
            failed: Vec::new(),
            contenders: Vec::new(),
        };
        let shards = vec![
            shard(
                node("99cc7b711258bb7670e7e3a9309f74675cb393a9", 33879, true),
                vec![(5461, 10922)],
            ),
            shard(
                node("1100779d4da67ba469490302839298a8385f827e", 43215, true),
                vec![(0, 5460)],
            ),
            shard(
                node("b498329118b8353180596fb4b5eedbf976e23a54", 38099, true),
                vec![(10923, 16383)],
            ),
            // Serves nothing: no say in which view is newer.
            shard(node("unknown", 1, true), vec![]),
        ];
        let remap = |a: &str| a.replace("127.0.0.1", "h");
        let by_addr = |pairs: &[(&str, u64)]| {
            Some(
                pairs
                    .iter()
                    .map(|(a, e)| (Arc::from(*a), *e))
                    .collect::<Vec<_>>(),
            )
        };
        assert_eq!(
            primary_epochs(&shards, &epochs, &remap),
            by_addr(&[("h:33879", 2), ("h:43215", 7), ("h:38099", 3)])
        );
        let mut missing = shards.clone();
        missing[0].primary.id = None;
        assert_eq!(primary_epochs(&missing, &epochs, &remap), None);
        let mut failed_primary = shards;
        failed_primary[1].primary.healthy = false;
        assert_eq!(
            primary_epochs(&failed_primary, &epochs, &remap),
            by_addr(&[("h:33879", 2), ("h:38099", 3)])
        );
    }

    fn epochs_of(pairs: &[(&str, u64)]) -> Option<Vec<(Arc<str>, u64)>> {
        Some(pairs.iter().map(|(a, e)| (Arc::from(*a), *e)).collect())
    }

    #[test]
    fn the_newer_routing_is_the_one_whose_owners_have_the_higher_epochs_where_they_differ() {
        use std::cmp::Ordering::{Equal, Greater, Less};
        let shard = |p: &str| Shard {
            primary: Arc::from(p),
            replicas: vec![],
        };
        let view = |map: &SlotMap, epochs: &[(&str, u64)]| View {
            map: map.clone(),
            down: SlotMap::default(),
            failed: Vec::new(),
            ids: Vec::new(),
            epochs: epochs_of(epochs),
        };
        let cmp = |a: &View, b: &View| compare_by_epoch(a.routing(), b.routing());
        let old_map = SlotMap::from_ranges([
            (shard("a:1"), vec![(0, 100)]),
            (shard("x:1"), vec![(101, 16383)]),
        ]);
        let old = view(&old_map, &[("a:1", 5), ("x:1", 9)]);
        // A failover of a's shard: b took epoch 10.
        let failover = view(
            &old_map.with_moved(0, "b:1"),
            &[("a:1", 5), ("b:1", 10), ("x:1", 9)],
        );
        assert_eq!(cmp(&failover, &old), Some(Greater));
        assert_eq!(cmp(&old, &failover), Some(Less));
        // a's last slots migrated to x, which keeps its epoch (it had the greatest): the
        // serving primaries' epochs are fewer, the view is still the newer.
        let emptied = view(
            &SlotMap::from_ranges([(shard("x:1"), vec![(0, 16383)])]),
            &[("x:1", 9)],
        );
        assert_eq!(cmp(&emptied, &old), Some(Greater));
        // Alike, or the same epochs where they differ (two masters of one epoch).
        assert_eq!(cmp(&old, &old), Some(Equal));
        let collided = view(&old_map.with_moved(0, "b:1"), &[("b:1", 5), ("x:1", 9)]);
        assert_eq!(cmp(&collided, &old), Some(Equal));
        // Each newer on some slots, or no epochs: nothing said.
        let both = view(
            &SlotMap::from_ranges([
                (shard("b:1"), vec![(0, 50)]),
                (shard("a:1"), vec![(51, 100)]),
                (shard("x:1"), vec![(101, 16383)]),
            ]),
            &[("b:1", 10), ("a:1", 5), ("x:1", 9)],
        );
        let other = view(
            &old_map.with_moved(51, "c:1"),
            &[("a:1", 5), ("c:1", 11), ("x:1", 9)],
        );
        assert_eq!(cmp(&both, &other), None);
        let unknown = View {
            epochs: None,
            ..failover.clone()
        };
        assert_eq!(cmp(&unknown, &old), None);
    }

    #[test]
    fn a_newer_config_epoch_outranks_votes() {
        let shard = |p: &str| Shard {
            primary: Arc::from(p),
            replicas: vec![],
        };
        let old = SlotMap::from_ranges([
            (shard("a:1"), vec![(0, 8000)]),
            (shard("c:1"), vec![(8001, 16383)]),
        ]);
        let new = old.with_moved(0, "b:1");
        let view = |map: &SlotMap, epochs: Option<Vec<(Arc<str>, u64)>>| View {
            map: map.clone(),
            down: SlotMap::default(),
            failed: Vec::new(),
            ids: Vec::new(),
            epochs,
        };
        let pick = |views: Vec<View>, current: &SlotMap, collided: bool| {
            choose_view(views, current, collided).map(|v| v.map.primary(0).cloned())
        };
        let none = SlotMap::default();
        let b = Some(Some(Arc::from("b:1")));
        let a = Some(Some(Arc::from("a:1")));
        // Two nodes that have not heard of b's promotion (epoch 7) against one that has.
        let stale = || view(&old, epochs_of(&[("a:1", 1), ("c:1", 3)]));
        let newer = || view(&new, epochs_of(&[("a:1", 1), ("b:1", 7), ("c:1", 3)]));
        assert_eq!(pick(vec![stale(), stale(), newer()], &none, false), b);
        assert_eq!(pick(vec![newer(), stale(), stale()], &old, false), b);
        // A view without epochs: the votes decide, as before.
        assert_eq!(
            pick(vec![stale(), stale(), view(&new, None)], &none, false),
            a
        );
        // Unless a node that agrees with it gave them.
        let with_and_without = vec![stale(), stale(), view(&new, None), newer()];
        assert_eq!(pick(with_and_without, &none, false), b);
        // Two masters of one epoch, a collision the nodes have not settled yet: the
        // routing installed stays, whatever the votes...
        let same_old = || view(&old, epochs_of(&[("a:1", 7), ("c:1", 3)]));
        let same_new = || view(&new, epochs_of(&[("b:1", 7), ("c:1", 3)]));
        assert_eq!(
            pick(vec![same_old(), same_old(), same_new()], &new, true),
            b
        );
        assert_eq!(
            pick(vec![same_new(), same_new(), same_old()], &old, true),
            a
        );
        // ...and with none seen lately, the votes.
        assert_eq!(
            pick(vec![same_old(), same_old(), same_new()], &new, false),
            a
        );
        // Epochs before coverage: the newer view that lost a shard's primary (c's slots
        // unassigned: failed, no replica) against a node cut off from the cluster bus,
        // which never heard of the promotion nor flagged c failed, and serves every slot.
        let partial = SlotMap::from_ranges([(shard("b:1"), vec![(0, 8000)])]);
        let partial = view(&partial, epochs_of(&[("b:1", 7)]));
        assert_eq!(
            pick(vec![stale(), stale(), partial.clone()], &none, false),
            b
        );
        // Coverage still decides between views no older than the other: c flagged
        // failed by one node, not by the other.
        let flagged = SlotMap::from_ranges([(shard("a:1"), vec![(0, 8000)])]);
        let flagged = view(&flagged, epochs_of(&[("a:1", 1)]));
        assert_eq!(pick(vec![flagged, stale()], &none, false), a);
        assert_eq!(pick(vec![partial, stale()], &old, false), b);
    }

    #[test]
    fn a_tie_keeps_the_routing_installed_and_nothing_else_does() {
        let shard = |p: &str| Shard {
            primary: Arc::from(p),
            replicas: vec![],
        };
        let old = SlotMap::from_ranges([(shard("a:1"), vec![(0, 16383)])]);
        let new = old.with_moved(0, "b:1");
        // The new primary's own view still lists the old one, as a primary of nothing.
        let new_listing_old = SlotMap::from_ranges([
            (shard("a:1"), vec![(1, 16383)]),
            (shard("b:1"), vec![(0, 0)]),
            (shard("c:1"), vec![]),
        ]);
        assert!(new.slots_routed_like(&new_listing_old) == 16384 && new != new_listing_old);
        assert_eq!(new.slots_routed_like(&old), 16383);
        let view = |map: &SlotMap, failed: &[&str]| View {
            map: map.clone(),
            down: SlotMap::default(),
            failed: failed.iter().map(|&a| Arc::from(a)).collect(),
            ids: Vec::new(),
            epochs: None,
        };
        let pick = |views: Vec<View>, current: &SlotMap| {
            choose_view(views, current, false).map(|v| v.map.primary(0).cloned())
        };
        for current in [&new, &new_listing_old] {
            for views in [
                vec![view(&old, &[]), view(&new, &[])],
                vec![view(&new, &[]), view(&old, &[])],
                vec![
                    view(&new_listing_old, &[]),
                    view(&old, &[]),
                    view(&new, &[]),
                ],
                vec![
                    view(&old, &[]),
                    view(&new, &[]),
                    view(&new_listing_old, &[]),
                ],
            ] {
                assert_eq!(pick(views, current), Some(Some(Arc::from("b:1"))));
            }
        }
        for views in [
            vec![view(&old, &[]), view(&new, &[])],
            vec![view(&new, &[]), view(&old, &[])],
        ] {
            assert_eq!(pick(views, &old), Some(Some(Arc::from("a:1"))));
        }
        // Votes and news of a failure come first.
        let votes = vec![view(&old, &[]), view(&old, &[]), view(&new, &[])];
        assert_eq!(pick(votes, &new), Some(Some(Arc::from("a:1"))));
        let news = vec![view(&old, &[]), view(&new, &["a:1"])];
        assert_eq!(pick(news, &old), Some(Some(Arc::from("b:1"))));
    }

    #[test]
    fn refreshes_are_rate_limited() {
        let start = Instant::now();
        let mut limiter = RefreshLimiter::new(Duration::from_millis(100));
        assert_eq!(limiter.wait_before_refresh(start), Duration::ZERO);
        limiter.on_refresh(start);
        assert_eq!(
            limiter.wait_before_refresh(start + Duration::from_millis(30)),
            Duration::from_millis(70)
        );
        assert_eq!(
            limiter.wait_before_refresh(start + Duration::from_millis(150)),
            Duration::ZERO
        );
        // "Never again on its own" does not overflow the clock.
        let mut never = RefreshLimiter::new(Duration::MAX);
        never.on_refresh(start);
        assert!(never.wait_before_refresh(start) > Duration::from_secs(1 << 40));
        never.on_outcome(false);
        assert!(never.wait_before_refresh(start) > Duration::from_secs(1 << 40));
    }

    #[test]
    fn refreshes_that_learn_nothing_stretch_the_interval_to_a_second_and_a_change_resets_it() {
        let start = Instant::now();
        let mut limiter = RefreshLimiter::new(Duration::from_millis(100));
        let mut waits = Vec::new();
        for _ in 0..6 {
            limiter.on_refresh(start);
            limiter.on_outcome(false);
            waits.push(limiter.wait_before_refresh(start).as_millis());
        }
        assert_eq!(waits, [200, 400, 800, 1000, 1000, 1000]);
        limiter.on_outcome(true);
        assert_eq!(
            limiter.wait_before_refresh(start),
            Duration::from_millis(100)
        );
        // A minimum above the cap is kept.
        let mut slow = RefreshLimiter::new(Duration::from_secs(5));
        slow.on_refresh(start);
        slow.on_outcome(false);
        assert_eq!(slow.wait_before_refresh(start), Duration::from_secs(5));
    }
}
