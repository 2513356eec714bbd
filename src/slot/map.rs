//! The slot map: which shard serves each of the 16384 slots.
//!
//! A `SlotMap` is an immutable snapshot. The cluster client swaps in a new one after a
//! refresh or a `MOVED`, so a request routes with one atomic load and never waits for a
//! refresh in progress.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use super::SLOT_COUNT;

/// Marks a slot that no shard serves; no shard has this index (see [`MAX_SHARDS`]).
const UNASSIGNED: u16 = u16::MAX;

/// The most shards a map holds: a reply listing more (at most 16384 can serve slots;
/// the rest would be empty shards of a hostile or broken reply) has the rest left out,
/// so that no index reaches [`UNASSIGNED`].
const MAX_SHARDS: usize = UNASSIGNED as usize;

/// A primary and its replicas, by address (`host:port`, already remapped).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shard {
    pub(crate) primary: Arc<str>,
    pub(crate) replicas: Vec<Arc<str>>,
}

/// Which shard serves each slot.
///
/// Two maps are equal when they route every slot to the same primary and hold the same
/// shards, each with the same replicas, in whatever order: nodes list shards in the
/// order of their own hash table, and replicas in the order they learned of them, so
/// the same topology seen from two nodes comes in different orders.
#[derive(Clone)]
pub(crate) struct SlotMap {
    /// Index into `shards` for every slot, or `UNASSIGNED`.
    slots: Box<[u16]>,
    shards: Vec<Shard>,
}

impl PartialEq for SlotMap {
    fn eq(&self, other: &SlotMap) -> bool {
        if self.shards.len() != other.shards.len() {
            return false;
        }
        // Looked up by primary (one shard each), not searched: a map built from a huge
        // (or hostile) reply may hold thousands of shards, or of replicas.
        let theirs: HashMap<&Arc<str>, &Shard> =
            other.shards.iter().map(|s| (&s.primary, s)).collect();
        // As sets, both ways: `[r1, r1]` and `[r1, r2]` differ.
        let same_replicas = |a: &Shard, b: &Shard| {
            let set = |s: &'_ Shard| s.replicas.iter().cloned().collect::<HashSet<Arc<str>>>();
            set(a) == set(b)
        };
        self.shards
            .iter()
            .all(|a| theirs.get(&a.primary).is_some_and(|b| same_replicas(a, b)))
            && (0..SLOT_COUNT).all(|slot| self.primary(slot) == other.primary(slot))
    }
}

impl Eq for SlotMap {}

impl std::fmt::Debug for SlotMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlotMap")
            .field("shards", &self.shards)
            .field("covered", &self.covered())
            .finish()
    }
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap {
            slots: vec![UNASSIGNED; usize::from(SLOT_COUNT)].into_boxed_slice(),
            shards: Vec::new(),
        }
    }
}

impl SlotMap {
    /// Builds a map from shards and their slot ranges (inclusive). Ranges out of bounds
    /// are clipped; a shard listed twice with the same primary is merged.
    pub(crate) fn from_ranges(
        entries: impl IntoIterator<Item = (Shard, Vec<(u16, u16)>)>,
    ) -> SlotMap {
        let mut map = SlotMap::default();
        // Where each primary's shard is (a search per entry would be quadratic in the
        // ranges `CLUSTER SLOTS` lists).
        let mut shard_of: HashMap<Arc<str>, usize> = HashMap::new();
        for (mut shard, ranges) in entries {
            // A replica listed twice (a broken reply, two announced addresses remapped
            // to one) is one replica: it would take two turns of the replica reads.
            let mut seen = HashSet::new();
            shard.replicas.retain(|r| seen.insert(Arc::clone(r)));
            let index = match shard_of.get(&shard.primary).copied() {
                Some(i) => {
                    // CLUSTER SLOTS lists a shard once per range; keep the longest
                    // replica list seen.
                    if shard.replicas.len() > map.shards[i].replicas.len() {
                        map.shards[i].replicas = shard.replicas;
                    }
                    i
                }
                None if map.shards.len() >= MAX_SHARDS => continue,
                None => {
                    shard_of.insert(Arc::clone(&shard.primary), map.shards.len());
                    map.shards.push(shard);
                    map.shards.len() - 1
                }
            };
            let Ok(index) = u16::try_from(index) else {
                continue;
            };
            for (start, end) in ranges {
                let end = end.min(SLOT_COUNT - 1);
                if start > end {
                    continue;
                }
                map.slots[usize::from(start)..=usize::from(end)].fill(index);
            }
        }
        map
    }

    /// Index (into [`SlotMap::shards`]) of the shard serving `slot`.
    pub(crate) fn shard_index(&self, slot: u16) -> Option<usize> {
        let index = *self.slots.get(usize::from(slot))?;
        (usize::from(index) < self.shards.len()).then_some(usize::from(index))
    }

    /// The shard serving `slot`.
    pub(crate) fn shard(&self, slot: u16) -> Option<&Shard> {
        let index = *self.slots.get(usize::from(slot))?;
        self.shards.get(usize::from(index))
    }

    /// The primary serving `slot`.
    pub(crate) fn primary(&self, slot: u16) -> Option<&Arc<str>> {
        self.shard(slot).map(|s| &s.primary)
    }

    /// How many slots have the same primary (or none) in both maps, however their
    /// shards are listed and whatever else they hold.
    pub(crate) fn slots_routed_like(&self, other: &SlotMap) -> usize {
        (0..SLOT_COUNT)
            .filter(|&slot| self.primary(slot) == other.primary(slot))
            .count()
    }

    /// Whether the two maps route every slot both assign to the same primary (either may
    /// serve slots the other leaves unassigned).
    pub(crate) fn agrees_where_both_serve(&self, other: &SlotMap) -> bool {
        (0..SLOT_COUNT).all(|slot| match (self.primary(slot), other.primary(slot)) {
            (Some(a), Some(b)) => a == b,
            _ => true,
        })
    }

    /// How many slots some shard serves.
    pub(crate) fn covered(&self) -> usize {
        self.slots.iter().filter(|&&s| s != UNASSIGNED).count()
    }

    /// Whether every slot has a primary (a failed primary's shard is left out of the
    /// map, its slots with it).
    pub(crate) fn covers_every_slot(&self) -> bool {
        !self.slots.contains(&UNASSIGNED)
    }

    /// All shards, including any that serve no slot after a patch.
    pub(crate) fn shards(&self) -> &[Shard] {
        &self.shards
    }

    /// Whether `addr` is one of the map's nodes, a primary or a replica.
    pub(crate) fn lists(&self, addr: &str) -> bool {
        self.shards
            .iter()
            .any(|s| &*s.primary == addr || s.replicas.iter().any(|r| &**r == addr))
    }

    /// Every node address, primaries first, without duplicates.
    pub(crate) fn nodes(&self) -> Vec<Arc<str>> {
        let mut out: Vec<Arc<str>> = self.shards.iter().map(|s| Arc::clone(&s.primary)).collect();
        // A set rather than a scan of `out` per replica: hundreds of nodes would make it
        // quadratic, on every new snapshot.
        let mut seen: std::collections::HashSet<Arc<str>> = out.iter().cloned().collect();
        for shard in &self.shards {
            for r in &shard.replicas {
                if seen.insert(Arc::clone(r)) {
                    out.push(Arc::clone(r));
                }
            }
        }
        out
    }

    /// Every shard's primary, whether it serves slots or not (one being filled by a
    /// migration already holds keys).
    pub(crate) fn primaries(&self) -> Vec<Arc<str>> {
        self.shards.iter().map(|s| Arc::clone(&s.primary)).collect()
    }

    /// How many slots each shard serves, in the order of [`SlotMap::shards`].
    pub(crate) fn slots_per_shard(&self) -> Vec<usize> {
        let mut counts = vec![0; self.shards.len()];
        for &s in self.slots.iter() {
            if let Some(count) = counts.get_mut(usize::from(s)) {
                *count += 1;
            }
        }
        counts
    }

    /// The primaries that serve at least one slot.
    pub(crate) fn serving_primaries(&self) -> Vec<Arc<str>> {
        let mut serving = vec![false; self.shards.len()];
        for &s in self.slots.iter() {
            if let Some(it) = serving.get_mut(usize::from(s)) {
                *it = true;
            }
        }
        self.shards
            .iter()
            .zip(serving)
            .filter(|(_, serving)| *serving)
            .map(|(s, _)| Arc::clone(&s.primary))
            .collect()
    }

    /// [`SlotMap::move_slot`] on a copy.
    #[cfg(test)]
    pub(crate) fn with_moved(&self, slot: u16, addr: &str) -> SlotMap {
        let mut next = self.clone();
        next.move_slot(slot, addr);
        next
    }

    /// Serves `slot` from the primary at `addr`, as a `MOVED` says.
    ///
    /// If `addr` is a known primary the slot joins its shard; otherwise (a node not seen
    /// yet, or a replica just promoted) a new shard without replicas is added for it
    /// until the next refresh tells the whole story.
    pub(crate) fn move_slot(&mut self, slot: u16, addr: &str) {
        let index = match self.shards.iter().position(|s| &*s.primary == addr) {
            Some(i) => i,
            None if self.shards.len() >= MAX_SHARDS => return,
            None => {
                self.shards.push(Shard {
                    primary: Arc::from(addr),
                    replicas: Vec::new(),
                });
                self.shards.len() - 1
            }
        };
        if let (Ok(index), Some(entry)) =
            (u16::try_from(index), self.slots.get_mut(usize::from(slot)))
        {
            *entry = index;
        }
    }
}

/// A shard from addresses, for tests.
#[cfg(test)]
pub(crate) fn shard(primary: &str, replicas: &[&str]) -> Shard {
    Shard {
        primary: Arc::from(primary),
        replicas: replicas.iter().map(|r| Arc::from(*r)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_are_equal_whatever_the_order_of_shards_and_replicas() {
        let shard = |primary: &str, replicas: &[&str]| Shard {
            primary: Arc::from(primary),
            replicas: replicas.iter().map(|&r| Arc::from(r)).collect(),
        };
        let a = || (shard("a:1", &["a:2", "a:3"]), vec![(0, 8000)]);
        let b = || (shard("b:1", &["b:2"]), vec![(8001, 16383)]);
        let one = SlotMap::from_ranges([a(), b()]);
        let other = SlotMap::from_ranges([b(), (shard("a:1", &["a:3", "a:2"]), vec![(0, 8000)])]);
        assert_eq!(one, other);
        let replica_gone = SlotMap::from_ranges([(shard("a:1", &["a:2"]), vec![(0, 8000)]), b()]);
        assert_ne!(one, replica_gone);
        assert_ne!(one, one.with_moved(0, "b:1"));
        assert_ne!(one, SlotMap::from_ranges([a()]));
    }

    #[test]
    fn routes_each_slot_to_its_shard() {
        let map = SlotMap::from_ranges([
            (shard("a:1", &["a:2"]), vec![(0, 5460)]),
            (shard("b:1", &[]), vec![(5461, 10922)]),
            (shard("c:1", &["c:2"]), vec![(10923, 16383)]),
        ]);
        assert_eq!(map.covered(), 16384);
        assert_eq!(&**map.primary(0).unwrap(), "a:1");
        assert_eq!(&**map.primary(5461).unwrap(), "b:1");
        assert_eq!(&**map.primary(16383).unwrap(), "c:1");
        assert_eq!(map.nodes().len(), 5);
    }

    #[test]
    fn a_replica_listed_twice_is_one_and_maps_compare_both_ways() {
        // Equal lengths and one side's replicas among the other's: `[r1, r1]` was equal
        // to `[r1, r2]`, and a corrected view never installed over the broken one.
        let twice = SlotMap::from_ranges([(shard("p:1", &["r:1", "r:1"]), vec![(0, 16383)])]);
        let two = SlotMap::from_ranges([(shard("p:1", &["r:1", "r:2"]), vec![(0, 16383)])]);
        assert_eq!(twice.shards()[0].replicas.len(), 1);
        assert_ne!(twice, two);
        assert_ne!(two, twice);
    }

    #[test]
    fn no_shard_takes_the_index_of_an_unassigned_slot() {
        // 65535 empty shards (a hostile reply), then one that serves slot 0: the last
        // would have the index that marks a slot unassigned, and every unassigned slot
        // would route to it.
        let mut entries: Vec<(Shard, Vec<(u16, u16)>)> = (0..65535)
            .map(|i| (shard(&format!("e:{i}"), &[]), vec![]))
            .collect();
        entries.push((shard("x:1", &[]), vec![(0, 0)]));
        let mut map = SlotMap::from_ranges(entries);
        assert_eq!(map.shards().len(), MAX_SHARDS);
        assert_eq!(map.covered(), 0);
        assert!(map.shard_index(5).is_none());
        assert!(map.primary(5).is_none());
        map.move_slot(7, "y:1");
        assert!(map.primary(7).is_none(), "no room for a shard of its own");
        assert!(map.shard_index(8).is_none());
    }

    #[test]
    fn uncovered_slots_have_no_owner_and_bad_ranges_are_clipped() {
        let map =
            SlotMap::from_ranges([(shard("a:1", &[]), vec![(10, 20), (30, 20), (16380, 20000)])]);
        assert_eq!(map.covered(), 11 + 4);
        assert!(map.primary(0).is_none());
        assert!(map.primary(25).is_none());
        assert_eq!(&**map.primary(16383).unwrap(), "a:1");
    }

    #[test]
    fn moved_patches_one_slot_in_a_copy() {
        let map = SlotMap::from_ranges([
            (shard("a:1", &[]), vec![(0, 100)]),
            (shard("b:1", &[]), vec![(101, 200)]),
        ]);
        let next = map.with_moved(5, "b:1");
        assert_eq!(&**next.primary(5).unwrap(), "b:1");
        assert_eq!(&**next.primary(6).unwrap(), "a:1");
        assert_eq!(
            &**map.primary(5).unwrap(),
            "a:1",
            "the old snapshot is untouched"
        );
        let next = next.with_moved(7, "new:1");
        assert_eq!(&**next.primary(7).unwrap(), "new:1");
        assert_eq!(next.shards().len(), 3);
        assert_eq!(next.primaries().len(), 3);
        // A shard the patches emptied is still listed, serving nothing.
        let emptied = next.with_moved(6, "b:1");
        let emptied = (0..=100).fold(emptied, |map, slot| map.with_moved(slot, "b:1"));
        assert_eq!(emptied.primaries().len(), 3);
        let serving = emptied.serving_primaries();
        assert!(!serving.iter().any(|p| &**p == "a:1"), "{serving:?}");
    }
}
