//! The routing snapshot: the slot map plus the node handles its shards point to, so a
//! request goes from key to connection without taking a lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

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
    /// For each shard of `map`: whose turn it is for the next replica read. One counter
    /// per shard: with one for the client, a task reading two shards in alternation
    /// would take every other turn, and always land on the same node of each.
    pub(crate) turns: Box<[AtomicUsize]>,
    /// The slots `map` leaves unassigned because their primary failed, with that
    /// shard's healthy replicas ([`crate::topology::down_map`]), for replica reads.
    pub(crate) down: SlotMap,
    /// For each shard of `down`: its replicas, with `READONLY` connections.
    pub(crate) down_replicas: Vec<Vec<Arc<Node>>>,
    /// Whose turn it is among `down`'s replicas (one counter: a rare state).
    pub(crate) down_turn: AtomicUsize,
    /// Bumped by every new snapshot; tells waiters a refresh happened.
    pub(crate) version: u64,
}

impl Routes {
    /// Every node the snapshot routes to: [`members`].
    pub(crate) fn members(&self) -> Vec<Arc<str>> {
        members(&self.map, &self.down)
    }
}

/// Every node of `map`, and the replicas of the shards whose primary failed (`down`):
/// not the failed primary, whose slots go nowhere until a replica takes them.
fn members(map: &SlotMap, down: &SlotMap) -> Vec<Arc<str>> {
    let mut nodes = map.nodes();
    for replica in down.shards().iter().flat_map(|s| &s.replicas) {
        if !nodes.contains(replica) {
            nodes.push(Arc::clone(replica));
        }
    }
    nodes
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

    /// How every node's connections are set up.
    pub(crate) fn settings(&self) -> &NodeSettings {
        &self.settings
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

    /// Replaces the snapshot in `routes` with one for the map `next` makes of the current
    /// one (`None`: keep it) and the shards with a failed primary `down` gives (`None`:
    /// keep them), unless both stay as they are, and closes the connections of nodes
    /// that left. Returns the snapshot replaced.
    ///
    /// Under the registry's lock from the load to the store: a refresh and a `MOVED`
    /// patch that interleaved could each build from a different map, and the one storing
    /// last would install handles the other had just closed as gone (a node that
    /// rejoined, then unreachable until the topology changed again). For the same reason
    /// nodes are closed only once the snapshot without them is stored.
    pub(crate) fn replace(
        &self,
        routes: &ArcSwap<Routes>,
        next: impl FnOnce(&Routes) -> Option<SlotMap>,
        down: Option<SlotMap>,
    ) -> Option<Arc<Routes>> {
        let mut nodes = self.lock();
        let current = routes.load_full();
        let down = down.filter(|down| *down != current.down);
        let (map, down) = match (next(&current), down) {
            (None, None) => return None,
            (map, down) => (
                map.unwrap_or_else(|| current.map.clone()),
                down.unwrap_or_else(|| current.down.clone()),
            ),
        };
        let settings = &self.settings;
        let mut handle = |addr: &Arc<str>, read_only: bool| {
            Arc::clone(
                nodes
                    .entry((Arc::clone(addr), read_only))
                    .or_insert_with(|| {
                        Arc::new(Node::new(Arc::clone(addr), read_only, Arc::clone(settings)))
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
        let down_replicas: Vec<Vec<Arc<Node>>> = down
            .shards()
            .iter()
            .map(|s| s.replicas.iter().map(|r| handle(r, true)).collect())
            .collect();
        let members: std::collections::HashSet<Arc<str>> =
            members(&map, &down).into_iter().collect();
        #[cfg(test)]
        if let Some(hook) = tests::BEFORE_STORE.with(|h| h.borrow_mut().take()) {
            hook();
        }
        let turns = (0..primaries.len()).map(|_| AtomicUsize::new(0)).collect();
        routes.store(Arc::new(Routes {
            map,
            primaries,
            replicas,
            turns,
            down,
            down_replicas,
            down_turn: AtomicUsize::new(0),
            version: current.version + 1,
        }));
        nodes.retain(|(addr, _), node| {
            let keep = members.contains(addr);
            if !keep {
                tracing::info!(node = %addr, "node left the topology; closing its connections once their requests had their time");
                Arc::clone(node).retire();
            }
            keep
        });
        Some(current)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::test_shard;

    thread_local! {
        /// Runs in [`NodeRegistry::replace`] between building a snapshot and storing it.
        pub(super) static BEFORE_STORE: std::cell::RefCell<Option<Box<dyn FnOnce()>>> =
            const { std::cell::RefCell::new(None) };
    }

    fn registry() -> NodeRegistry {
        NodeRegistry::new(NodeSettings::for_tests())
    }

    /// Two shards, or three with `n:1` (a node that joins and leaves).
    fn map(with_n: bool) -> SlotMap {
        let mut shards = vec![
            (test_shard("a:1", &[]), vec![(0, 8000)]),
            (test_shard("b:1", &["c:1"]), vec![(8001, 16000)]),
        ];
        if with_n {
            shards.push((test_shard("n:1", &[]), vec![(16001, 16383)]));
        }
        SlotMap::from_ranges(shards)
    }

    /// Every handle the snapshot routes to is the registry's, and open.
    fn check(registry: &NodeRegistry, routes: &Routes) {
        let nodes = routes
            .primaries
            .iter()
            .chain(routes.replicas.iter().flatten());
        for node in nodes {
            let registered = registry.get(&node.addr, node.read_only);
            assert!(Arc::ptr_eq(node, &registered), "{} replaced", node.addr);
            assert!(!node.is_closed(), "{} routed to but closed", node.addr);
        }
    }

    #[test]
    fn a_failed_primarys_replicas_stay_open_for_reads() {
        let registry = registry();
        let routes = ArcSwap::from_pointee(Routes::default());
        registry.replace(&routes, |_| Some(map(false)), None);
        let replica = registry.get("c:1", true);
        // b:1 failed: its shard leaves the map, its replica stays for reads.
        let without_b = SlotMap::from_ranges([(test_shard("a:1", &[]), vec![(0, 8000)])]);
        let down = SlotMap::from_ranges([(test_shard("b:1", &["c:1"]), vec![(8001, 16000)])]);
        let replaced = registry.replace(&routes, |_| Some(without_b.clone()), Some(down.clone()));
        assert!(replaced.is_some());
        let now = routes.load();
        assert!(Arc::ptr_eq(&now.down_replicas[0][0], &replica));
        assert!(!replica.is_closed());
        let members = now.members();
        assert!(!members.iter().any(|m| &**m == "b:1"), "{members:?}");
        // The same map and shards again: nothing to replace.
        assert!(registry.replace(&routes, |_| None, Some(down)).is_none());
        // A replica took over: the shard is back in the map, nothing is down.
        registry.replace(&routes, |_| Some(map(false)), Some(SlotMap::default()));
        assert!(routes.load().down_replicas.is_empty());
        check(&registry, &routes.load());
    }

    #[test]
    fn a_moved_patch_waits_for_a_refresh_between_its_build_and_its_store() {
        // A refresh installs a view where `n:1` joined while a `MOVED` patches the view
        // before it. Interleaved, the patch (built from the old view) closed `n:1` as
        // gone and the refresh then stored its handle: the refresh after it, seeing the
        // same view, changed nothing, and `n:1` stayed unreachable.
        let registry = Arc::new(registry());
        let routes = Arc::new(ArcSwap::from_pointee(Routes::default()));
        let install = |registry: &NodeRegistry, routes: &ArcSwap<Routes>, next: SlotMap| {
            registry.replace(
                routes,
                |current| (current.map != next).then_some(next),
                None,
            );
        };
        install(&registry, &routes, map(false));
        let patch = Arc::new(Mutex::new(None));
        let hook = {
            let (registry, routes, patch) = (
                Arc::clone(&registry),
                Arc::clone(&routes),
                Arc::clone(&patch),
            );
            move || {
                let (done, patched) = std::sync::mpsc::channel();
                let started = Arc::new(std::sync::Barrier::new(2));
                let running = Arc::clone(&started);
                let handle = std::thread::spawn(move || {
                    running.wait();
                    registry.replace(
                        &routes,
                        |current| {
                            // Runs once the patch holds the registry's lock.
                            let _ = done.send(());
                            Some(current.map.with_moved(0, "a:1"))
                        },
                        None,
                    );
                });
                // The patch is running: given every chance to take the lock in
                // between, it must wait for the store.
                started.wait();
                let ran_in_between = patched
                    .recv_timeout(std::time::Duration::from_millis(200))
                    .is_ok();
                *patch.lock().unwrap() = Some((handle, ran_in_between));
            }
        };
        BEFORE_STORE.with(|h| *h.borrow_mut() = Some(Box::new(hook)));
        install(&registry, &routes, map(true));
        let (handle, ran_in_between) = patch.lock().unwrap().take().unwrap();
        handle.join().unwrap();
        assert!(
            !ran_in_between,
            "the patch ran between the refresh's build and store"
        );
        // The next refresh, as the refresh task would run it.
        install(&registry, &routes, map(true));
        check(&registry, &routes.load());
        assert_eq!(routes.load().version, 3);
    }
}
