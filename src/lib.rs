//! An async Redis Cluster client for tokio: correct under failover and resharding, fast,
//! and small enough to read.
//!
//! ```no_run
//! use redcluster::{cmd, ClusterClient, Value};
//!
//! # async fn demo() -> redcluster::Result<()> {
//! let client = ClusterClient::connect(["127.0.0.1:7000", "127.0.0.1:7001"]).await?;
//! client.set("user:{42}:name", "Ada").await?;
//! let name: Option<String> = client.get("user:{42}:name").await?;
//! let n: i64 = client.query(cmd("INCR").arg("visits")).await?;
//! let all: Value = client.query(cmd("MGET").arg("a").arg("b").arg("c")).await?; // any slots
//! # Ok(()) }
//! ```
//!
//! # Layout
//!
//! The crate is built in layers; each lower layer knows nothing of the ones above it, and
//! the layers that decide (codec, slots, topology, policies) do no I/O.
//!
//! - [`resp`]: the RESP2/RESP3 codec, sans-io: bytes in, [`Value`]s out, and commands
//!   encoded straight into an output buffer.
//! - `cmd`: [`Cmd`], [`Script`] (Lua scripts sent by digest), and the command table
//!   (generated from a real server's `COMMAND INFO`) that says which arguments are keys
//!   and which commands only read.
//! - `slot`: [`key_slot`] (CRC16/XMODEM of the key or its `{hash tag}`), the slot map,
//!   `MOVED`/`ASK` parsing.
//! - `topology`: `CLUSTER SHARDS` / `CLUSTER SLOTS` parsing and choosing between views.
//! - `policy`: retry classification and backoff, the retry budget, circuit breakers.
//! - `conn`: [`NodeConnection`], one multiplexed connection to one node.
//! - `pool`: per-node pools of dedicated connections (blocking commands, `WATCH`).
//! - `cluster`: [`ClusterClient`]: routing, redirects, retries, splitting, fan-out,
//!   refresh, health checks.
//! - [`pubsub`]: [`Subscriber`], classic and sharded subscriptions on connections of
//!   their own that follow failovers and slot moves, reporting gaps; keyspace
//!   notifications subscribed on every primary.
//! - [`testkit`] (feature `testkit`): real local `redis-server` clusters and faults.
//!
//! # Routing
//!
//! | command | where it goes |
//! |---|---|
//! | keys in one slot | the slot's primary (reads: as [`ReadFrom`] says) |
//! | `MGET`, `MSET`, `DEL`, `UNLINK`, `EXISTS`, `TOUCH` with keys in several slots | split into one command per slot, sent concurrently; `MGET` replies come back in key order, `MSET` answers `OK` when every part did, the others add up their counts. Not atomic across slots |
//! | any other command with keys in several slots (`MSETNX`, `RENAME`, `SUNIONSTORE`, `EVAL`, transactions, ...) | [`Error::CrossSlot`] naming the slots, before anything is sent |
//! | keyless, `request_policy:all_shards` in the command table (`DBSIZE`, `KEYS`, `FLUSHALL`, `PING`, `SCRIPT EXISTS`, `FUNCTION LOAD`, ...) | every primary; replies combined by the table's `response_policy`: summed (`DBSIZE`), merged (`KEYS`), all must succeed (`FLUSHALL`, `PING`) |
//! | `SCRIPT KILL`, `FUNCTION KILL` | every node, replicas included (a read-only script runs on replicas too); one must succeed, the others answer `NOTBUSY` |
//! | `PUBSUB NUMSUB`, `PUBSUB SHARDNUMSUB`, `PUBSUB CHANNELS`, `PUBSUB SHARDCHANNELS`, `PUBSUB NUMPAT` | every node, replicas included (a node knows only its own clients' subscriptions): counts summed per channel (`NUMSUB`, `SHARDNUMSUB`), lists united (`CHANNELS`, `SHARDCHANNELS`), `NUMPAT` summed |
//! | keyless, `request_policy:all_nodes` (`SCRIPT LOAD`, `SCRIPT FLUSH`, `CONFIG SET`, `LATENCY RESET`, ...), and the node settings the table gives no policy (`ACL SETUSER`, `ACL DELUSER`, `ACL LOAD`, `ACL SAVE`, `CONFIG REWRITE`, `CONFIG RESETSTAT`) | every node, replicas included, combined likewise; those whose policy is `special` (`LATENCY HISTORY`, `LATENCY GRAPH`, `LATENCY HISTOGRAM`) answer a map from node address to reply |
//! | per-node reports: `INFO`, `CLIENT LIST`, `CLIENT INFO`, `MEMORY STATS`, `SLOWLOG GET`, `LATENCY LATEST`, `LATENCY DOCTOR`, `ROLE`, `LASTSAVE` | every primary; the reply is a map from node address to that node's reply |
//! | `CLUSTER COUNTKEYSINSLOT slot`, `CLUSTER GETKEYSINSLOT slot n` | the named slot's node (only it knows the slot's keys) |
//! | `RANDOMKEY` | every primary; a key from one that has any (at random), nil when none has |
//! | keyless commands that act on one node (`BGSAVE`, `SHUTDOWN`, `FAILOVER`, `DEBUG`, `MODULE LOAD`, `CLIENT KILL`, `CLUSTER FAILOVER`/`FORGET`/`SETSLOT`/..., ...) | refused with [`Error::Config`]: send them with [`ClusterClient::query_node`] to the node you mean |
//! | `CLIENT SETNAME`, `TRACKING`, `CACHING`, `NO-EVICT`, `NO-TOUCH`, `SETINFO` | refused with [`Error::Config`]: they would set a connection other callers share |
//! | other keyless commands (`PUBLISH`, `CLUSTER INFO`, ...) | one primary, in turn |
//! | any command through [`ClusterClient::query_node`] | the node you name, replicas included (one node's diagnostics) |
//! | blocking commands (`BLPOP`, `BRPOP`, `BLMOVE`, `BZPOPMIN`, `XREAD BLOCK`, ...) | the slot's primary, on a dedicated pooled connection, so they never stall others; their deadline is the response timeout plus the time they ask to block, moved later by any wait for a free dedicated connection |
//! | `WAIT`, `WAITAOF` | refused with [`Error::Config`]: they count the writes of their own connection, which a shared one cannot tell; use [`ClusterClient::query_durable`] |
//! | `SCAN` | refused with [`Error::Config`]: each node has its own cursor; use [`ClusterClient::scan`], or [`ClusterClient::query_node`] for one node |
//! | `READONLY`, `READWRITE`, `ASKING` | refused with [`Error::Config`]: the client sends them itself where needed, and they change a connection other callers share |
//! | commands unknown to the table (modules) | looked up once with `COMMAND INFO` and cached; if the server does not know them either, routed by their first argument; a lookup refused (a user without `+command\|info`) or unanswered is not cached, and asked again at most once a second |
//!
//! A fan-out never returns a partial result: if any node fails, the whole call fails
//! (except for `one_succeeded` commands, which need one node to succeed; when none does,
//! the error is a telling refusal such as `UNKILLABLE` first, else a node that did not
//! answer, else the others' refusals such as `NOTBUSY`). While some
//! slots have no healthy primary (one failed and not yet replaced, or never to be, with
//! `cluster-require-full-coverage no`), a fan-out waits for a promotion within its
//! deadline and then fails with [`Error::ClusterDown`], unsent: the nodes left would
//! answer for part of the data. Per-node reports (`INFO`, `CLIENT LIST`, ..., and the
//! `special` ones such as `LATENCY HISTORY`), `SCRIPT KILL`, `FUNCTION KILL` and `PUBSUB`
//! introspection do not wait: they go to the nodes there are. `SCRIPT KILL` and
//! `FUNCTION KILL` go on dedicated connections where one can be had, so they reach a
//! script this client started on its shared connection (a node whose dedicated
//! connection fails is asked on the shared one).
//! `SCAN` over the whole cluster is [`ClusterClient::scan`].
//!
//! # Redirects, retries and deadlines
//!
//! Every request has one deadline, [`ClusterClientBuilder::response_timeout`] (default
//! 5 s), covering queueing, redirects, retries and backoff. A request whose deadline
//! passes while it is still queued is never written. A handle from
//! [`ClusterClient::with_response_timeout`] gives its requests another deadline, shorter
//! or longer, on the same connections.
//!
//! - `MOVED`: the request goes to the named node, the slot map is patched at once and a
//!   topology refresh is asked for. `ASK`: the request is sent once more to the named
//!   node, preceded by `ASKING`; the map is left alone. At most `max_redirects` (16).
//!   A redirect to an address the topology does not list is followed only once the
//!   cluster vouches for it (a refresh, or the redirecting node's own view, names it);
//!   otherwise the request fails with [`Error::Protocol`] and redirects to that address
//!   are refused for 10 s. A `MOVED` or `ASK` naming another slot than the command's
//!   keys (when the command table says for sure which they are) came from code (a
//!   script's error reply), not from the server's routing: it is the request's
//!   [`Error::Server`], not followed, and the map is not patched.
//! - `TRYAGAIN`, `CLUSTERDOWN`, `LOADING`, `MASTERDOWN`: retried with exponential
//!   backoff and jitter. These mean the command did not run. A replica that answers a
//!   read with `LOADING` (a full resync) or `MASTERDOWN` (cut off from its primary, with
//!   `replica-serve-stale-data no`) may do so for minutes: the read goes to the primary
//!   at once instead (a reroute: neither `max_retries` nor the retry budget is spent),
//!   and replica reads pass that replica over for a second.
//! - **The retry rule.** A request that was never written (the connection could not be
//!   opened, or died before the write) is always safe to send again, and is. A request
//!   that may have reached the server (the connection died after the write) is sent
//!   again only when the command is read-only or known idempotent, a repeat answering
//!   as the first run did (`SET`, `MSET`, `HMSET`, `EXPIRE` with a time still to come, ...; never `INCR`,
//!   `LPUSH`, `GETSET`, nor `SET ... NX`, whose repeat would report a lock it took as
//!   not taken, nor the writes that count what they changed, `DEL`, `HSET`, `SADD`,
//!   `ZREM`, ..., whose repeat counts 0: `ZREM queue job` answering 0 says another
//!   worker took the job), or when the caller declared it safe to repeat
//!   ([`ClusterClient::query_idempotent`]). Otherwise the caller
//!   gets the error, and [`Error::may_have_executed`] says `true`. A request that timed
//!   out is never sent again: its deadline has passed.
//! - Retries draw on a budget shared by the client ([`RetryBudgetConfig`]), so a failing
//!   cluster does not get a retry storm.
//! - A node whose connection keeps failing gets a circuit breaker
//!   ([`CircuitBreakerConfig`]): its requests fail fast with [`Error::CircuitOpen`],
//!   unsent, while other nodes are unaffected. Replica reads fall back to the primary
//!   instead, and a request whose slot the refreshed topology (asked for when the breaker
//!   opened) already gives to another node goes there. While open, one request at a time
//!   probes the node, every `open_for`, or once the previous probe's timeout has passed.
//!
//! The topology is refreshed on `MOVED`, on connection failures, on `CLUSTERDOWN`, and
//! every `refresh_interval` (30 s); refreshes are single-flight and at most one per
//! `refresh_min_interval` (100 ms), and never block requests that can already be routed.
//! While a failed primary still holds slots, and for a minute after the set of nodes
//! the cluster reports as failed last changed (while one is still reported failed, or
//! some primary has no slots: a failed primary back, not yet demoted), the period is
//! one second, so that a failover's end shows in the routes and in `health()` within a
//! second or two. Then it is `refresh_interval` again: a node left failed for good
//! (never `CLUSTER FORGET`-ten) costs that minute once.
//!
//! # Metrics and tracing
//!
//! Through the `metrics` facade (install any recorder, e.g. Prometheus; without one the
//! cost is a few atomic loads): `redis_commands_total{command,node,status}`,
//! `redis_command_duration_seconds{command,node}`, `redis_cluster_nodes{client,state}`,
//! `redis_redirects_total{kind}`, `redis_topology_refreshes_total{trigger}`,
//! `redis_retries_total{reason}`, `redis_timeouts_total`,
//! `redis_circuit_breaker_state{client,node}`, `redis_connections{client,node,kind}`,
//! `redis_requests_in_flight`, `redis_pipeline_size`. Labels never carry keys, values
//! or secrets; `command` is the command's name from the table (`other` for unknown
//! ones); `client` is the client's `client_name` (or `default`). Through `tracing`: a `redis_command` span per request (command, slot, node,
//! attempt, redirects, status, duration_ms), events for redirects, topology changes,
//! failovers, breaker transitions and reconnects. `examples/metrics_prometheus.rs` and
//! `examples/structured_logging.rs` show both. [`ClusterClient::health`] is the same
//! information as a snapshot. [`ClusterClient::doctor`] checks the cluster itself
//! against the seed's production checklist ([`DoctorReport`]; `examples/doctor.rs`).
//!
//! # Cancel safety
//!
//! Dropping a request's future before it completes is safe: if the request was not
//! written yet it is never written; if it was, its reply is read and discarded, and the
//! shared connection stays in sync for everyone else. A blocking command, or a request
//! on a [`Watched`] connection, whose future is dropped while it waits for its reply
//! closes its dedicated connection instead of returning it to the pool; a [`Watched`]
//! dropped between requests goes back to the pool, `UNWATCH`ed.
//!
//! # Features
//!
//! - `testkit`: [`testkit::LocalCluster`], which spawns a real cluster of `redis-server`
//!   processes for tests, and the faults to inject into it.
//! - `native-roots`: trust the platform's CA certificates for `rediss://` seeds given no
//!   [`TlsConfig`] (without it, such seeds need one with a CA).

#![forbid(unsafe_code)]

pub mod resp;

mod cluster;
mod cmd;
mod conn;
mod deadline;
mod error;
// Property tests across the layers that read what servers send; beside the layers, as
// they take every one of them at its word.
#[cfg(test)]
mod hostile_input;
mod observe;
mod pipeline;
mod policy;
mod pool;
pub mod pubsub;
mod slot;
mod topology;

#[cfg(feature = "testkit")]
pub mod testkit;

// The testkit signals its `redis-server` processes (`SIGSTOP`, `SIGKILL`): say so rather
// than fail on the Unix calls.
#[cfg(all(feature = "testkit", not(unix)))]
compile_error!(
    "redcluster's `testkit` feature runs on Unix only: enable it for Unix targets, e.g. \
     in [target.'cfg(unix)'.dev-dependencies]"
);

pub use cluster::{
    AddressRemap, ClientStats, ClusterClient, ClusterClientBuilder, Durability, ReadFrom, Scan,
    ScanOptions,
};
pub use cmd::{cmd, Cmd, CommandRenames, Script, ScriptCall, StreamEntry, ToArg};
pub use conn::{
    ConnectOptions, CredentialsFuture, CredentialsProvider, NodeConnection, Protocol, Secret,
    TlsConfig,
};
pub use error::{Error, Result, ServerError};
pub use observe::{
    Check, CheckStatus, ClusterHealth, ClusterState, DoctorReport, NodeHealth, NodeRole,
};
pub use pipeline::{Pipeline, Transaction, Watched};
pub use policy::{BreakerState, CircuitBreakerConfig, RetryBudgetConfig};
pub use pubsub::{
    Message, OverflowPolicy, PubSubEvent, Subscriber, SubscriberConfig, SubscriberHandle,
    SubscriberStats,
};
pub use resp::{FromValue, Value};
pub use slot::{hash_tag, key_slot, SLOT_COUNT};
