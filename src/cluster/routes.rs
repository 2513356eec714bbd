//! The routing snapshot: the slot map plus the node handles its shards point to, so a
//! request goes from key to connection without taking a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::cluster::node::{Node, NodeSettings};
use crate::slot::SlotMap;

/// An immutable routing snapshot; replaced whole, never modified.
#[derive(Debug, Default)]
pub(crate) struct Routes {
    pub(crate) map: SlotMap,
    /// For each shard of `map` (same index): its primary.
    pub(crate) primaries: Vec<Arc<Node>>,
    /// For each shard of `map`: its replicas, with `READONLY` connections.
    pub(crate) replicas: Vec<Vec<Arc<Node>>>,
    /// Bumped by every new snapshot; tells waiters a refresh happened.
    pub(crate) version: u64,
}

/// Node handles by address and by whether they are for replica reads (`READONLY`).
type NodeMap = HashMap<(Arc<str>, bool), Arc<Node>>;

/// Every node handle the client has made, so that a new snapshot reuses the open
/// connections of nodes that stay, and closes those of nodes that left.
#[derive(Debug)]
pub(crate) struct NodeRegistry {
    nodes: Mutex<NodeMap>,
    round_robin: AtomicUsize,
    settings: Arc<NodeSettings>,
}

impl NodeRegistry {
    pub(crate) fn new(settings: NodeSettings) -> Self {
        NodeRegistry {
            nodes: Mutex::new(HashMap::new()),
            round_robin: AtomicUsize::new(0),
            settings: Arc::new(settings),
        }
    }

    /// The handle for `addr`, creating it if needed.
    pub(crate) fn get(&self, addr: &str, read_only: bool) -> Arc<Node> {
        let mut nodes = self.lock();
        if let Some(node) = nodes.get(&(Arc::from(addr), read_only)) {
            return Arc::clone(node);
        }
        let addr: Arc<str> = Arc::from(addr);
        let node = Arc::new(Node::new(
            Arc::clone(&addr),
            read_only,
            Arc::clone(&self.settings),
        ));
        nodes.insert((addr, read_only), Arc::clone(&node));
        node
    }

    /// Builds the routing snapshot for `map`, and closes connections to nodes that are
    /// no longer part of it.
    pub(crate) fn routes_for(&self, map: SlotMap, version: u64) -> Routes {
        let settings = Arc::clone(&self.settings);
        let mut nodes = self.lock();
        let mut handle = |addr: &Arc<str>, read_only: bool| {
            Arc::clone(
                nodes
                    .entry((Arc::clone(addr), read_only))
                    .or_insert_with(|| {
                        Arc::new(Node::new(
                            Arc::clone(addr),
                            read_only,
                            Arc::clone(&settings),
                        ))
                    }),
            )
        };
        let primaries: Vec<Arc<Node>> = map
            .shards()
            .iter()
            .map(|s| handle(&s.primary, false))
            .collect();
        let replicas: Vec<Vec<Arc<Node>>> = map
            .shards()
            .iter()
            .map(|s| s.replicas.iter().map(|r| handle(r, true)).collect())
            .collect();
        let members = map.nodes();
        nodes.retain(|(addr, _), node| {
            let keep = members.contains(addr);
            if !keep {
                tracing::info!(node = %addr, "node left the cluster; closing its connection");
                node.close();
            }
            keep
        });
        Routes {
            map,
            primaries,
            replicas,
            version,
        }
    }

    /// A rotating counter for spreading reads.
    pub(crate) fn next_turn(&self) -> usize {
        self.round_robin.fetch_add(1, Ordering::Relaxed)
    }

    /// Every node handle, for health reports and tests.
    pub(crate) fn all(&self) -> Vec<Arc<Node>> {
        self.lock().values().cloned().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, NodeMap> {
        // Only plain map operations happen under this lock; a poisoned map is consistent.
        self.nodes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
