//! Reading the cluster's description of itself (`CLUSTER NODES`, `CLUSTER INFO`,
//! `INFO replication`) and judging whether the cluster has settled.
//!
//! Pure functions over text the nodes sent, so the rules can be unit-tested without a
//! server.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use super::NodeState;
use crate::slot::SLOT_COUNT;

/// One line of `CLUSTER NODES`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeEntry {
    pub(crate) id: String,
    pub(crate) port: Option<u16>,
    pub(crate) myself: bool,
    pub(crate) master: bool,
    /// The master's id, for a replica.
    pub(crate) master_id: Option<String>,
    /// Flagged `fail` or `fail?` by the node that sent the line.
    pub(crate) failing: bool,
    pub(crate) handshake: bool,
    /// The sender has a cluster-bus link to this node.
    pub(crate) connected: bool,
    /// Served slots as sorted, merged, inclusive ranges. Open slots (`[n->-id]`) are left
    /// out: they are the sender's migration state, not ownership.
    pub(crate) slots: Vec<(u16, u16)>,
}

impl NodeEntry {
    pub(crate) fn owns(&self, slot: u16) -> bool {
        self.slots.iter().any(|&(a, b)| a <= slot && slot <= b)
    }

    pub(crate) fn slot_count(&self) -> usize {
        self.slots
            .iter()
            .map(|&(a, b)| usize::from(b - a) + 1)
            .sum()
    }
}

/// Parses the reply of `CLUSTER NODES`.
pub(crate) fn parse_nodes(text: &str) -> Result<Vec<NodeEntry>, String> {
    let mut entries = Vec::new();
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let fields: Vec<&str> = line.split_ascii_whitespace().collect();
        if fields.len() < 8 {
            return Err(format!("malformed CLUSTER NODES line {line:?}"));
        }
        let flags: Vec<&str> = fields[2].split(',').collect();
        let has = |flag: &str| flags.contains(&flag);
        // `ip:port@cport[,hostname]`
        let port = fields[1]
            .split(',')
            .next()
            .and_then(|a| a.split('@').next())
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| p.parse().ok())
            .filter(|&p| p != 0);
        let mut slots = Vec::new();
        for spec in &fields[8..] {
            if spec.starts_with('[') {
                continue;
            }
            let range = match spec.split_once('-') {
                Some((a, b)) => a.parse().ok().zip(b.parse().ok()),
                None => spec.parse().ok().map(|s| (s, s)),
            };
            match range {
                Some((a, b)) if a <= b && b < SLOT_COUNT => slots.push((a, b)),
                _ => return Err(format!("malformed slot range {spec:?} in {line:?}")),
            }
        }
        entries.push(NodeEntry {
            id: fields[0].to_owned(),
            port,
            myself: has("myself"),
            master: has("master"),
            master_id: (fields[3] != "-").then(|| fields[3].to_owned()),
            failing: has("fail") || has("fail?"),
            handshake: has("handshake"),
            connected: fields[7] == "connected",
            slots: merge(slots),
        });
    }
    Ok(entries)
}

fn merge(mut ranges: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ranges.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ranges.len());
    for (a, b) in ranges {
        match merged.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// Renders ranges the way `CLUSTER NODES` does: `0-5460 5462`.
pub(crate) fn describe_slots(ranges: &[(u16, u16)]) -> String {
    let mut out = String::new();
    for (i, &(a, b)) in ranges.iter().enumerate() {
        if i > 0 {
            out.push(' ');
        }
        if a == b {
            let _ = write!(out, "{a}");
        } else {
            let _ = write!(out, "{a}-{b}");
        }
    }
    out
}

/// The value of `name:value` in an `INFO` or `CLUSTER INFO` reply.
pub(crate) fn info_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .map(str::trim)
}

/// Slot ranges of `masters` masters split as evenly as `redis-cli --cluster create` does.
pub(crate) fn split_slots(masters: usize) -> Vec<(u16, u16)> {
    let per_master = f64::from(SLOT_COUNT) / masters as f64;
    let mut ranges = Vec::with_capacity(masters);
    let mut first: u16 = 0;
    let mut cursor = 0.0;
    for i in 0..masters {
        let mut last = (cursor + per_master - 1.0).round() as u16;
        if last >= SLOT_COUNT || i + 1 == masters {
            last = SLOT_COUNT - 1;
        }
        if last < first {
            last = first;
        }
        ranges.push((first, last));
        first = last + 1;
        cursor += per_master;
    }
    ranges
}

/// A node the testkit manages, as the judge needs to know it.
#[derive(Debug, Clone)]
pub(crate) struct Managed {
    pub(crate) id: String,
    pub(crate) state: NodeState,
}

/// What one running node said about the cluster.
#[derive(Debug)]
pub(crate) struct Observation {
    pub(crate) index: usize,
    pub(crate) cluster_info: String,
    pub(crate) nodes: Vec<NodeEntry>,
    pub(crate) replication: String,
}

/// Why the cluster is not settled, and which node to look at.
#[derive(Debug, Clone)]
pub(crate) struct Unsettled {
    pub(crate) node: Option<usize>,
    pub(crate) reason: String,
    /// Running nodes that do not know each other (see [`strangers`]).
    pub(crate) strangers: Vec<(usize, usize)>,
}

impl Unsettled {
    pub(crate) fn at(node: usize, reason: String) -> Self {
        Unsettled {
            node: Some(node),
            reason,
            strangers: Vec::new(),
        }
    }
}

/// Role of a node in one view, for comparing views.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    master_id: Option<String>,
    slots: Vec<(u16, u16)>,
}

/// Decides whether the cluster has settled, from the observations of every running,
/// unpaused node (`observations`, in index order; `managed` is indexed by node index).
///
/// Settled means: every observer reports `cluster_state:ok`; every slot is served by an
/// observer (not by a killed or paused node) in every observer's view; every observer
/// knows every other one, with a link up and no failure flag; removed nodes are
/// forgotten; every replica's replication link is up; and all observers describe every
/// observer identically (role, master, slots).
pub(crate) fn judge(observations: &[Observation], managed: &[Managed]) -> Result<(), Unsettled> {
    let Some(reference) = observations.first() else {
        return Err(Unsettled {
            node: None,
            reason: "no node is running".to_owned(),
            strangers: Vec::new(),
        });
    };
    let observer_ids: BTreeMap<&str, usize> = observations
        .iter()
        .map(|o| (managed[o.index].id.as_str(), o.index))
        .collect();
    let index_of = |id: &str| managed.iter().position(|m| m.id == id);
    let name = |id: &str| match index_of(id) {
        Some(i) => format!("node {i}"),
        None => format!("unknown node {id}"),
    };

    for o in observations {
        let me = o.index;
        let Some(myself) = o.nodes.iter().find(|e| e.myself) else {
            return Err(Unsettled::at(
                me,
                format!("node {me} lists no `myself` entry"),
            ));
        };
        if myself.id != managed[me].id {
            return Err(Unsettled::at(
                me,
                format!(
                    "node {me} has node id {}, expected {}",
                    myself.id, managed[me].id
                ),
            ));
        }
        // Slot owners: must cover everything and be alive.
        let mut covered = 0;
        for e in o.nodes.iter().filter(|e| !e.slots.is_empty()) {
            if !observer_ids.contains_key(e.id.as_str()) {
                let state = index_of(&e.id)
                    .map(|i| format!("{:?}", managed[i].state).to_lowercase())
                    .unwrap_or_else(|| "not managed by the testkit".to_owned());
                return Err(Unsettled::at(
                    me,
                    format!(
                        "node {me} sees slots {} served by {}, which is {state}",
                        describe_slots(&e.slots),
                        name(&e.id)
                    ),
                ));
            }
            covered += e.slot_count();
        }
        if covered != usize::from(SLOT_COUNT) {
            return Err(Unsettled::at(
                me,
                format!("node {me} sees only {covered} of {SLOT_COUNT} slots assigned"),
            ));
        }
        match info_field(&o.cluster_info, "cluster_state") {
            Some("ok") => {}
            state => {
                return Err(Unsettled::at(
                    me,
                    format!("node {me} reports cluster_state:{}", state.unwrap_or("?")),
                ))
            }
        }
        for (&peer_id, &peer) in &observer_ids {
            if peer == me {
                continue;
            }
            let problem = match o.nodes.iter().find(|e| e.id == peer_id) {
                None => "does not know",
                Some(e) if e.handshake => "is still in handshake with",
                Some(e) if e.failing => "flags as failing",
                Some(e) if !e.connected => "has no cluster-bus link to",
                Some(_) => continue,
            };
            return Err(Unsettled::at(
                me,
                format!("node {me} {problem} node {peer}"),
            ));
        }
        for (i, m) in managed.iter().enumerate() {
            if m.state == NodeState::Removed && o.nodes.iter().any(|e| e.id == m.id) {
                return Err(Unsettled::at(
                    me,
                    format!("node {me} still lists removed node {i}"),
                ));
            }
        }
        if !myself.master {
            match info_field(&o.replication, "master_link_status") {
                Some("up") => {}
                status => {
                    return Err(Unsettled::at(
                        me,
                        format!(
                            "replica node {me} has master_link_status:{}",
                            status.unwrap_or("?")
                        ),
                    ))
                }
            }
        }
    }

    // Agreement: every observer describes the observers alike. Killed and paused nodes are
    // left out: nodes that joined after they went down may never learn them.
    let view = |o: &Observation| -> BTreeMap<String, Seen> {
        o.nodes
            .iter()
            .filter(|e| observer_ids.contains_key(e.id.as_str()))
            .map(|e| {
                let seen = Seen {
                    master_id: if e.master {
                        None
                    } else {
                        Some(e.master_id.clone().unwrap_or_default())
                    },
                    slots: e.slots.clone(),
                };
                (e.id.clone(), seen)
            })
            .collect()
    };
    let describe = |seen: Option<&Seen>| match seen {
        None => "unknown".to_owned(),
        Some(Seen {
            master_id: Some(m), ..
        }) => format!("a replica of {}", name(m)),
        Some(Seen {
            master_id: None,
            slots,
        }) if slots.is_empty() => "a master without slots".to_owned(),
        Some(Seen {
            master_id: None,
            slots,
        }) => format!("the master of {}", describe_slots(slots)),
    };
    let expected = view(reference);
    for o in &observations[1..] {
        let seen = view(o);
        if seen == expected {
            continue;
        }
        let id = expected
            .keys()
            .chain(seen.keys())
            .find(|id| expected.get(*id) != seen.get(*id))
            .cloned()
            .unwrap_or_default();
        return Err(Unsettled::at(
            o.index,
            format!(
                "node {} and node {} disagree about {}: {} vs {}",
                reference.index,
                o.index,
                name(&id),
                describe(expected.get(&id)),
                describe(seen.get(&id)),
            ),
        ));
    }
    Ok(())
}

/// Pairs `(observer, peer)` of running nodes where the observer lists no completed
/// entry for the peer (it never met it, lost the handshake, or forgot it): the
/// introductions [`LocalCluster`](super::LocalCluster)'s waits make again when a cluster
/// does not settle. A handshake entry has a random id, so it does not count as knowing.
pub(crate) fn strangers(observations: &[Observation], managed: &[Managed]) -> Vec<(usize, usize)> {
    let mut pairs = Vec::new();
    for o in observations {
        for peer in observations.iter().filter(|p| p.index != o.index) {
            let peer_id = managed[peer.index].id.as_str();
            if !o.nodes.iter().any(|e| e.id == peer_id && !e.handshake) {
                pairs.push((o.index, peer.index));
            }
        }
    }
    pairs
}

#[cfg(test)]
mod tests {
    use super::*;

    const NODES: &str = "\
07c37dfeb235213a872192d90877d0cd55635b91 127.0.0.1:30004@31004,host replica e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 0 1426238317239 4 connected
67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1 127.0.0.1:30002@31002 master - 0 1426238316232 2 connected 5461-10922
292f8b365bb7edb5e285caf0b7e6ddc7265d2f4f 127.0.0.1:30003@31003 master,fail? - 0 1426238318243 3 disconnected 10923-16383
e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca 127.0.0.1:30001@31001 myself,master - 0 0 1 connected 0-5459 5460 [5460->-67ed2db8d677e59ec4a4cefb06858cf2a1a89fa1]
";

    #[test]
    fn parses_cluster_nodes() {
        let entries = parse_nodes(NODES).unwrap();
        assert_eq!(entries.len(), 4);
        let replica = &entries[0];
        assert!(!replica.master && !replica.myself);
        assert_eq!(replica.port, Some(30004));
        assert_eq!(
            replica.master_id.as_deref(),
            Some("e7d1eecce10fd6bb5eb35b9f99a514335d9ba9ca")
        );
        assert!(entries[2].failing && !entries[2].connected);
        let me = &entries[3];
        assert!(me.myself && me.master);
        assert_eq!(me.slots, vec![(0, 5460)]);
        assert!(me.owns(5460) && !me.owns(5461));
        assert_eq!(me.slot_count(), 5461);
        assert!(parse_nodes("garbage line").is_err());
    }

    #[test]
    fn splits_slots_like_redis_cli() {
        assert_eq!(
            split_slots(3),
            vec![(0, 5460), (5461, 10922), (10923, 16383)]
        );
        assert_eq!(split_slots(1), vec![(0, 16383)]);
        for n in [2, 5, 7, 100, 16384] {
            let ranges = split_slots(n);
            assert_eq!(ranges.len(), n);
            assert_eq!(ranges[0].0, 0);
            assert_eq!(ranges[n - 1].1, 16383);
            for w in ranges.windows(2) {
                assert_eq!(w[0].1 + 1, w[1].0, "{n}: {w:?}");
            }
        }
    }

    #[test]
    fn reads_info_fields() {
        let info = "# Replication\r\nrole:slave\r\nmaster_link_status:up\r\n";
        assert_eq!(info_field(info, "master_link_status"), Some("up"));
        assert_eq!(info_field(info, "role"), Some("slave"));
        assert_eq!(info_field(info, "missing"), None);
    }

    fn line(id: &str, flags: &str, master: &str, slots: &str) -> String {
        format!("{id} 127.0.0.1:1@2 {flags} {master} 0 0 1 connected {slots}\n")
    }

    fn two_node_views(b_sees_a_slots: &str) -> Vec<Observation> {
        let a = line("a", "myself,master", "-", "0-16383");
        let b = line("b", "slave", "a", "");
        let a_from_b = line("a", "master", "-", b_sees_a_slots);
        let b_self = line("b", "myself,slave", "a", "");
        vec![
            Observation {
                index: 0,
                cluster_info: "cluster_state:ok\r\n".into(),
                nodes: parse_nodes(&(a + &b)).unwrap(),
                replication: "role:master\r\n".into(),
            },
            Observation {
                index: 1,
                cluster_info: "cluster_state:ok\r\n".into(),
                nodes: parse_nodes(&(a_from_b + &b_self)).unwrap(),
                replication: "master_link_status:up\r\n".into(),
            },
        ]
    }

    fn managed() -> Vec<Managed> {
        ["a", "b"]
            .iter()
            .map(|id| Managed {
                id: (*id).into(),
                state: NodeState::Running,
            })
            .collect()
    }

    #[test]
    fn judge_accepts_agreement_and_names_disagreement() {
        judge(&two_node_views("0-16383"), &managed()).unwrap();
        let err = judge(&two_node_views("0-100"), &managed()).unwrap_err();
        assert_eq!(err.node, Some(1));
        assert!(err.reason.contains("101 of 16384"), "{}", err.reason);
        let mut views = two_node_views("0-16383");
        views[1].replication = "master_link_status:down\r\n".into();
        let err = judge(&views, &managed()).unwrap_err();
        assert!(
            err.reason.contains("master_link_status:down"),
            "{}",
            err.reason
        );
    }

    #[test]
    fn strangers_are_running_peers_an_observer_does_not_list() {
        let mut views = two_node_views("0-16383");
        assert!(strangers(&views, &managed()).is_empty());
        // Node 0 lists only itself: it does not know node 1; node 1 knows node 0.
        views[0].nodes = parse_nodes(&line("a", "myself,master", "-", "0-16383")).unwrap();
        assert_eq!(strangers(&views, &managed()), vec![(0, 1)]);
        // A handshake entry (random id) is no acquaintance either.
        let handshaking =
            line("a", "myself,master", "-", "0-16383") + &line("f00d", "handshake", "-", "");
        views[0].nodes = parse_nodes(&handshaking).unwrap();
        assert_eq!(strangers(&views, &managed()), vec![(0, 1)]);
    }

    #[test]
    fn judge_rejects_slots_on_dead_nodes() {
        let mut managed = managed();
        managed[0].state = NodeState::Killed;
        let views: Vec<Observation> = two_node_views("0-16383").into_iter().skip(1).collect();
        let err = judge(&views, &managed).unwrap_err();
        assert!(
            err.reason.contains("served by node 0, which is killed"),
            "{}",
            err.reason
        );
    }
}
