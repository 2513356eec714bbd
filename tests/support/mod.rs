//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod fake_cluster;
pub mod fake_node;
pub mod standalone;

/// A key whose slot is `slot`, with `n` as a distinguishing suffix: `{tag}:n` for the
/// first tag that hashes there.
pub fn key_in_slot(slot: u16, n: usize) -> String {
    (0u64..)
        .map(|i| format!("{{t{i}}}:{n}"))
        .find(|k| redcluster::key_slot(k.as_bytes()) == slot)
        .expect("some tag hashes to every slot")
}
