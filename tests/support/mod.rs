//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod fake_cluster;
pub mod fake_node;
pub mod standalone;
