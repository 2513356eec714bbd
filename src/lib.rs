//! An async Redis Cluster client for tokio.
//!
//! # Layout
//!
//! The crate is built in layers; each lower layer knows nothing of the ones above it.
//!
//! - [`resp`]: the RESP2/RESP3 codec, sans-io: bytes in, [`Value`]s out, and commands
//!   encoded straight into an output buffer.
//! - `slot`: [`key_slot`], CRC16/XMODEM of the key or its `{hash tag}`.
//! - `conn`: [`NodeConnection`], one multiplexed connection to one node.
//! - `testkit` (feature `testkit`): real local `redis-server` clusters and faults.
//!
//! # Cancel safety
//!
//! Dropping a request's future before it completes is safe: if the request was not
//! written yet it is never written; if it was, its reply is read and discarded, and the
//! shared connection stays in sync for everyone else.
//!
//! # Features
//!
//! - `testkit`: [`testkit::LocalCluster`], which spawns a real cluster of `redis-server`
//!   processes for tests, and the faults to inject into it.

#![forbid(unsafe_code)]

pub mod resp;

mod cluster;
mod cmd;
mod conn;
mod error;
mod pipeline;
mod observe;
mod policy;
mod pool;
mod slot;
mod topology;

#[cfg(feature = "testkit")]
pub mod testkit;

pub use cluster::{
    Durability,
    AddressRemap, ClientStats, ClusterClient, ClusterClientBuilder, ReadFrom, Scan, ScanOptions,
};
pub use cmd::{cmd, Cmd, ToArg};
pub use conn::{
    ConnectOptions, CredentialsFuture, CredentialsProvider, NodeConnection, Protocol, Secret,
    TlsConfig,
};
pub use error::{Error, Result, ServerError};
pub use pipeline::{Pipeline, Transaction, Watched};
pub use observe::{ClusterHealth, NodeHealth, NodeRole};
pub use policy::{BreakerState, CircuitBreakerConfig, RetryBudgetConfig};
pub use resp::{FromValue, Value};
pub use slot::{hash_tag, key_slot, SLOT_COUNT};
