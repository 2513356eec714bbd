//! What the client reports about the cluster as it sees it: the health snapshot.

use crate::policy::BreakerState;

/// The cluster as the client sees it, from [`crate::ClusterClient::health`].
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct ClusterHealth {
    /// Slots some primary serves, out of 16384.
    pub slots_covered: usize,
    /// Every node in the client's current topology, primaries first.
    pub nodes: Vec<NodeHealth>,
}

impl ClusterHealth {
    /// Whether every slot is served and no primary's breaker is open.
    pub fn is_ok(&self) -> bool {
        self.slots_covered == usize::from(crate::SLOT_COUNT)
            && self
                .nodes
                .iter()
                .filter(|n| n.role == NodeRole::Primary)
                .all(|n| n.breaker != BreakerState::Open)
    }

    /// The entry for `addr`, if the node is in the topology.
    pub fn node(&self, addr: &str) -> Option<&NodeHealth> {
        self.nodes.iter().find(|n| n.addr == addr)
    }
}

/// A node's role in the client's topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeRole {
    /// Serves slots.
    Primary,
    /// Replicates a primary.
    Replica,
}

/// One node in a [`ClusterHealth`] snapshot.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct NodeHealth {
    /// `host:port`, as the client reaches it.
    pub addr: String,
    /// Primary or replica.
    pub role: NodeRole,
    /// For a replica, the primary it replicates.
    pub primary: Option<String>,
    /// Whether the client has a live connection to it.
    pub connected: bool,
    /// Its circuit breaker.
    pub breaker: BreakerState,
    /// Smoothed PING round trip from the health checks, once measured.
    pub latency: Option<std::time::Duration>,
    /// The last failure to connect, if the latest attempt failed.
    pub last_error: Option<String>,
}
