//! Log events the client emits through [`tracing`], where more than one call site emits
//! the same event or the event needs computing: breaker transitions and topology changes.
//!
//! Fields carry node addresses, slots, command names and counts, never keys, values or
//! credentials.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use crate::observe::metrics::Status;
use crate::policy::Transition;
use crate::slot::{SlotMap, SLOT_COUNT};

/// Most slot ranges listed in one "topology changed" event; the rest are counted.
const MAX_RANGES_LOGGED: usize = 32;

/// Logs a circuit breaker transition of the node at `addr` (`read_only`: the handle used
/// for replica reads). Opening is a warning; half-opening and closing are informational.
pub(crate) fn breaker_transition(addr: &str, read_only: bool, transition: Transition) {
    match transition {
        Transition::Opened => tracing::warn!(
            node = %addr,
            read_only,
            state = "open",
            "circuit breaker opened"
        ),
        Transition::HalfOpened => tracing::info!(
            node = %addr,
            read_only,
            state = "half_open",
            "circuit breaker half-open"
        ),
        Transition::Closed => tracing::info!(
            node = %addr,
            read_only,
            state = "closed",
            "circuit breaker closed"
        ),
    }
}

/// Records a command's outcome on its `redis_command` span (`status`, `duration_ms`), for
/// logs that show one line per command when the span closes.
pub(crate) fn command_outcome(span: &tracing::Span, status: Status, elapsed: Duration) {
    if span.is_disabled() {
        return;
    }
    span.record("status", status.as_str());
    span.record("duration_ms", elapsed.as_secs_f64() * 1000.0);
}

/// A run of consecutive slots whose primary changed the same way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MovedRange {
    pub(crate) start: u16,
    pub(crate) end: u16,
    /// `None`: the slots were not served before.
    pub(crate) from: Option<Arc<str>>,
    /// `None`: the slots are not served any more.
    pub(crate) to: Option<Arc<str>>,
    /// The new primary was a replica of the old one: a failover, not a migration.
    pub(crate) failover: bool,
}

impl std::fmt::Display for MovedRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)?;
        } else {
            write!(f, "{}-{}", self.start, self.end)?;
        }
        let name = |n: &Option<Arc<str>>| n.as_deref().unwrap_or("unassigned").to_string();
        write!(f, " {}->{}", name(&self.from), name(&self.to))
    }
}

/// The slot ranges whose primary differs between `old` and `new`.
pub(crate) fn moved_ranges(old: &SlotMap, new: &SlotMap) -> Vec<MovedRange> {
    let mut out: Vec<MovedRange> = Vec::new();
    for slot in 0..SLOT_COUNT {
        let from = old.primary(slot);
        let to = new.primary(slot);
        if from == to {
            continue;
        }
        if let Some(last) = out.last_mut() {
            if last.end + 1 == slot && last.from.as_ref() == from && last.to.as_ref() == to {
                last.end = slot;
                continue;
            }
        }
        let failover = match (old.shard(slot), to) {
            (Some(shard), Some(to)) => shard.replicas.contains(to),
            _ => false,
        };
        out.push(MovedRange {
            start: slot,
            end: slot,
            from: from.cloned(),
            to: to.cloned(),
            failover,
        });
    }
    out
}

/// Logs what changed between the views `old` and `new` of the cluster: nodes added and
/// removed and slot ranges that changed primary (info), and each failover, a range now
/// served by what was its primary's replica (warning). The first view (`old` covers
/// nothing) is logged as discovered.
pub(crate) fn topology_changed(old: &SlotMap, new: &SlotMap, trigger: &'static str) {
    let old_nodes = old.nodes();
    let new_nodes = new.nodes();
    let added: Vec<&Arc<str>> = new_nodes
        .iter()
        .filter(|n| !old_nodes.contains(n))
        .collect();
    let removed: Vec<&Arc<str>> = old_nodes
        .iter()
        .filter(|n| !new_nodes.contains(n))
        .collect();
    if old.covered() == 0 {
        tracing::info!(
            trigger,
            shards = new.shards().len(),
            covered = new.covered(),
            nodes = ?new_nodes,
            "topology discovered"
        );
        return;
    }
    let ranges = moved_ranges(old, new);
    let moved_slots: usize = ranges
        .iter()
        .map(|r| usize::from(r.end - r.start) + 1)
        .sum();
    if ranges.is_empty() && added.is_empty() && removed.is_empty() {
        // Replicas or the order of shards changed, not where anything is served.
        tracing::debug!(
            trigger,
            shards = new.shards().len(),
            covered = new.covered(),
            "topology updated; routing unchanged"
        );
        return;
    }
    let mut listed = String::new();
    for (i, range) in ranges.iter().take(MAX_RANGES_LOGGED).enumerate() {
        if i > 0 {
            listed.push_str(", ");
        }
        let _ = write!(listed, "{range}");
    }
    if ranges.len() > MAX_RANGES_LOGGED {
        let _ = write!(listed, ", and {} more", ranges.len() - MAX_RANGES_LOGGED);
    }
    tracing::info!(
        trigger,
        shards = new.shards().len(),
        covered = new.covered(),
        ?added,
        ?removed,
        moved_slots,
        moved = %listed,
        "topology changed"
    );
    for range in ranges.iter().filter(|r| r.failover) {
        tracing::warn!(
            slots = %format_args!("{}-{}", range.start, range.end),
            old_primary = range.from.as_deref().unwrap_or(""),
            new_primary = range.to.as_deref().unwrap_or(""),
            "failover detected: a replica took over its primary's slots"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slot::test_shard as shard;

    #[test]
    fn finds_moved_ranges_and_failovers() {
        let old = SlotMap::from_ranges([
            (shard("a:1", &["a:2"]), vec![(0, 8191)]),
            (shard("b:1", &["b:2"]), vec![(8192, 16383)]),
        ]);
        let new = SlotMap::from_ranges([
            (shard("a:2", &[]), vec![(0, 8191)]),
            (shard("b:1", &["b:2"]), vec![(8192, 16000)]),
            (shard("c:1", &[]), vec![(16001, 16383)]),
        ]);
        let ranges = moved_ranges(&old, &new);
        assert_eq!(ranges.len(), 2, "{ranges:?}");
        assert_eq!((ranges[0].start, ranges[0].end), (0, 8191));
        assert!(ranges[0].failover);
        assert_eq!(ranges[0].to_string(), "0-8191 a:1->a:2");
        assert_eq!((ranges[1].start, ranges[1].end), (16001, 16383));
        assert!(!ranges[1].failover);
        assert_eq!(ranges[1].to_string(), "16001-16383 b:1->c:1");
        assert!(moved_ranges(&new, &new).is_empty());
    }
}
