//! Every metric the client emits through the [`metrics`] facade: names, label keys and
//! the small functions the rest of the crate calls. No other module names a metric.
//!
//! See the [module docs](super) for the list and what each label means.
//!
//! # Cost
//!
//! The per-request metrics (`redis_commands_total`, `redis_command_duration_seconds`) go
//! through handles registered once per (command, node) and cached in the node: a request
//! reads the cache (no lock, no allocation), increments a counter and records a
//! histogram sample. The `redis_requests_in_flight` gauge's handle is cached per
//! thread. With no recorder installed those handles are no-ops. A cache remembers which
//! recorder it registered with (by the recorder's address), so a recorder installed
//! after the client was built is picked up on the next request. (A thread-local recorder
//! dropped, and another made at the same address, would be taken for the first; global
//! recorders live as long as the process.)
//!
//! Label values are `&'static str` (command names from the command table, statuses,
//! kinds) or the node's `Arc<str>` address: building a label never copies a string.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};

use crate::error::Error;
use crate::policy::BreakerState;
use crate::resp::Value;

// ---------------------------------------------------------------------------------------
// Names.

/// Counter: commands sent, by final outcome. Labels: `command`, `node`, `status`.
pub(crate) const COMMANDS_TOTAL: &str = "redis_commands_total";
/// Histogram, seconds: one sample per command, from routing to the final reply
/// (redirects and retries included). Labels: `command`, `node`.
pub(crate) const COMMAND_DURATION_SECONDS: &str = "redis_command_duration_seconds";
/// Gauge: nodes of the topology by `state`.
pub(crate) const CLUSTER_NODES: &str = "redis_cluster_nodes";
/// Counter: redirects followed, by `kind`.
pub(crate) const REDIRECTS_TOTAL: &str = "redis_redirects_total";
/// Counter: topology refreshes completed, by `trigger`.
pub(crate) const TOPOLOGY_REFRESHES_TOTAL: &str = "redis_topology_refreshes_total";
/// Counter: requests sent again, by `reason`.
pub(crate) const RETRIES_TOTAL: &str = "redis_retries_total";
/// Counter: commands that failed with a timeout.
pub(crate) const TIMEOUTS_TOTAL: &str = "redis_timeouts_total";
/// Gauge: a node's circuit breaker, 0 closed, 1 half-open, 2 open. Label: `node`.
pub(crate) const CIRCUIT_BREAKER_STATE: &str = "redis_circuit_breaker_state";
/// Gauge: open connections. Labels: `node`, `kind`.
pub(crate) const CONNECTIONS: &str = "redis_connections";
/// Gauge: commands sent and not yet answered.
pub(crate) const REQUESTS_IN_FLIGHT: &str = "redis_requests_in_flight";
/// Histogram: commands per explicit pipeline.
pub(crate) const PIPELINE_SIZE: &str = "redis_pipeline_size";

// ---------------------------------------------------------------------------------------
// Label keys.

/// The command name from the command table, lower case (`get`, `client|setname`), or
/// `other`.
pub(crate) const COMMAND: &str = "command";
/// A node's `host:port`, as the client reaches it, or `none`.
pub(crate) const NODE: &str = "node";
/// `ok`, `error` or `failure`.
pub(crate) const STATUS: &str = "status";
/// `primary`, `replica`, `connected`, `breaker_open`.
pub(crate) const STATE: &str = "state";
/// `moved` / `ask` for redirects; `multiplexed` / `dedicated` for connections.
pub(crate) const KIND: &str = "kind";
/// What asked for a topology refresh.
pub(crate) const TRIGGER: &str = "trigger";
/// Why a request was sent again.
pub(crate) const REASON: &str = "reason";
/// Which client a cluster gauge describes: its `client_name`, or `default`.
pub(crate) const CLIENT: &str = "client";

// ---------------------------------------------------------------------------------------
// Label values.

/// The command label of commands missing from the command table.
pub(crate) const OTHER_COMMAND: &str = "other";
/// The command label of a `MULTI` ... `EXEC` transaction.
pub(crate) const TRANSACTION_COMMAND: &str = "exec";
/// The node label of commands that never reached a node.
pub(crate) const NO_NODE: &str = "none";

static METADATA: Metadata<'static> = Metadata::new("redcluster", Level::INFO, Some(module_path!()));

/// A key with a static name and at most one static label, built at compile time.
macro_rules! key {
    ($name:expr) => {{
        static KEY: Key = Key::from_static_name($name);
        &KEY
    }};
    ($name:expr, $label:expr => $value:expr) => {{
        static LABELS: [Label; 1] = [Label::from_static_parts($label, $value)];
        static KEY: Key = Key::from_static_parts($name, &LABELS);
        &KEY
    }};
}

/// The recorder in place for this thread, by address: a change means handles must be
/// registered again.
fn recorder_id() -> usize {
    metrics::with_recorder(|r: &dyn Recorder| std::ptr::from_ref(r).cast::<()>().addr())
}

/// The recorder the descriptions were last given to.
static DESCRIBED: AtomicUsize = AtomicUsize::new(0);

/// Gives the recorder in place the units and help texts, once per recorder.
fn describe(id: usize) {
    if DESCRIBED.swap(id, Ordering::Relaxed) == id {
        return;
    }
    metrics::with_recorder(|r| {
        let name = KeyName::from_const_str;
        r.describe_counter(
            name(COMMANDS_TOTAL),
            Some(Unit::Count),
            "Commands sent, by final outcome: ok, error (error reply), failure (no reply)".into(),
        );
        r.describe_histogram(
            name(COMMAND_DURATION_SECONDS),
            Some(Unit::Seconds),
            "Time from routing a command to its final reply, redirects and retries included".into(),
        );
        r.describe_gauge(
            name(CLUSTER_NODES),
            Some(Unit::Count),
            "Nodes of the topology: primary, replica, connected, breaker_open".into(),
        );
        r.describe_counter(
            name(REDIRECTS_TOTAL),
            Some(Unit::Count),
            "MOVED and ASK redirects followed".into(),
        );
        r.describe_counter(
            name(TOPOLOGY_REFRESHES_TOTAL),
            Some(Unit::Count),
            "Topology refreshes completed, by what asked for them".into(),
        );
        r.describe_counter(
            name(RETRIES_TOTAL),
            Some(Unit::Count),
            "Requests sent again, by reason".into(),
        );
        r.describe_counter(
            name(TIMEOUTS_TOTAL),
            Some(Unit::Count),
            "Commands that failed because their deadline passed".into(),
        );
        r.describe_gauge(
            name(CIRCUIT_BREAKER_STATE),
            None,
            "Circuit breaker per node, of the role the topology gives it: 0 closed, 1 \
             half-open, 2 open"
                .into(),
        );
        r.describe_gauge(
            name(CONNECTIONS),
            Some(Unit::Count),
            "Open connections per node: multiplexed, dedicated".into(),
        );
        r.describe_gauge(
            name(REQUESTS_IN_FLIGHT),
            Some(Unit::Count),
            "Commands sent and not yet answered".into(),
        );
        r.describe_histogram(
            name(PIPELINE_SIZE),
            Some(Unit::Count),
            "Commands per explicit pipeline".into(),
        );
    });
}

fn counter(key: &Key) -> Counter {
    describe(recorder_id());
    metrics::with_recorder(|r| r.register_counter(key, &METADATA))
}

fn gauge(key: &Key) -> Gauge {
    describe(recorder_id());
    metrics::with_recorder(|r| r.register_gauge(key, &METADATA))
}

fn histogram(key: &Key) -> Histogram {
    describe(recorder_id());
    metrics::with_recorder(|r| r.register_histogram(key, &METADATA))
}

/// A key named `name` labelled with one node (and more static labels).
fn node_key(name: &'static str, node: &Arc<str>, extra: &[(&'static str, &'static str)]) -> Key {
    let mut labels = Vec::with_capacity(1 + extra.len());
    labels.push(Label::new(NODE, Arc::clone(node)));
    labels.extend(extra.iter().map(|&(k, v)| Label::new(k, v)));
    Key::from_parts(name, labels)
}

// ---------------------------------------------------------------------------------------
// Commands.

/// How a command ended, for the `status` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Status {
    /// The node answered with a reply that is not an error.
    Ok,
    /// The node answered with an error reply.
    Error,
    /// No reply: timeout, connection failure, open circuit, too many redirects.
    Failure,
}

impl Status {
    /// The status of a final result; counts a timeout on the way. An error reply is an
    /// `error` whether it comes as a value or as [`Error::Server`] (a refused `WATCH`),
    /// and a write short of replicas ([`Error::NotReplicated`]) is `ok`, as the
    /// primary's reply was, on every path.
    pub(crate) fn of(result: Result<&Value, &Error>) -> Status {
        match result {
            Ok(Value::ServerError(_)) | Err(Error::Server(_)) => Status::Error,
            Ok(_) | Err(Error::NotReplicated { .. }) => Status::Ok,
            Err(e) => {
                if matches!(e, Error::Timeout { .. }) {
                    counter(key!(TIMEOUTS_TOTAL)).increment(1);
                }
                Status::Failure
            }
        }
    }
}

impl Status {
    /// The `status` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Error => "error",
            Status::Failure => "failure",
        }
    }
}

/// The command label: the name from the command table (built in, or learned from the
/// server's `COMMAND INFO`, so bounded by the commands the server knows), else `other`.
pub(crate) fn command_label(info: Option<&'static crate::cmd::CommandInfo>) -> &'static str {
    match info {
        Some(info) => info.name(),
        None => OTHER_COMMAND,
    }
}

/// One command's handles on one node.
#[derive(Clone)]
struct CommandHandles {
    ok: Counter,
    error: Counter,
    failure: Counter,
    duration: Histogram,
}

impl CommandHandles {
    fn register(command: &'static str, node: &Arc<str>) -> CommandHandles {
        let total = |status: Status| {
            counter(&node_key(
                COMMANDS_TOTAL,
                node,
                &[(COMMAND, command), (STATUS, status.as_str())],
            ))
        };
        CommandHandles {
            ok: total(Status::Ok),
            error: total(Status::Error),
            failure: total(Status::Failure),
            duration: histogram(&node_key(
                COMMAND_DURATION_SECONDS,
                node,
                &[(COMMAND, command)],
            )),
        }
    }

    /// Counts `count` commands that ended alike.
    fn record(&self, status: Status, elapsed: Duration, count: usize) {
        let total = match status {
            Status::Ok => &self.ok,
            Status::Error => &self.error,
            Status::Failure => &self.failure,
        };
        total.increment(count as u64);
        match count {
            1 => self.duration.record(elapsed.as_secs_f64()),
            n => self.duration.record_many(elapsed.as_secs_f64(), n),
        }
    }
}

/// The handles registered with one recorder.
struct CommandCache {
    recorder: usize,
    entries: Vec<(&'static str, CommandHandles)>,
}

impl CommandCache {
    fn find(&self, command: &'static str) -> Option<&CommandHandles> {
        // Names come from the static command table: the pointer almost always matches.
        let same = |n: &&'static str| std::ptr::eq(*n, command);
        self.entries
            .iter()
            .find(|(n, _)| same(n))
            .or_else(|| self.entries.iter().find(|(n, _)| *n == command))
            .map(|(_, h)| h)
    }
}

/// One node's per-command metric handles, registered on first use.
pub(crate) struct NodeMetrics {
    node: Arc<str>,
    cache: ArcSwapOption<CommandCache>,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics")
            .field("node", &self.node)
            .finish()
    }
}

impl NodeMetrics {
    /// Handles for `node`; nothing is registered until the first command.
    pub(crate) fn new(node: Arc<str>) -> NodeMetrics {
        NodeMetrics {
            node,
            cache: ArcSwapOption::empty(),
        }
    }

    /// Counts one command that ended with `status` after `elapsed`.
    pub(crate) fn command(&self, command: &'static str, status: Status, elapsed: Duration) {
        self.commands(command, status, elapsed, 1);
    }

    /// Counts `count` commands of one name that ended alike: a pipeline's batch, whose
    /// commands all end with its answer, takes the metrics path once per kind rather
    /// than once per command.
    pub(crate) fn commands(
        &self,
        command: &'static str,
        status: Status,
        elapsed: Duration,
        count: usize,
    ) {
        let id = recorder_id();
        {
            let cache = self.cache.load();
            if let Some(handles) = cache
                .as_deref()
                .filter(|c| c.recorder == id)
                .and_then(|c| c.find(command))
            {
                handles.record(status, elapsed, count);
                return;
            }
        }
        self.register(id, command).record(status, elapsed, count);
    }

    /// The slow path: registers `command`'s handles and adds them to the cache (a new
    /// recorder starts a new cache).
    #[cold]
    fn register(&self, id: usize, command: &'static str) -> CommandHandles {
        let handles = CommandHandles::register(command, &self.node);
        self.cache.rcu(|current| {
            let mut entries = match current.as_deref() {
                Some(c) if c.recorder == id => c.entries.clone(),
                _ => Vec::new(),
            };
            if !entries.iter().any(|(n, _)| *n == command) {
                entries.push((command, handles.clone()));
            }
            Some(Arc::new(CommandCache {
                recorder: id,
                entries,
            }))
        });
        handles
    }
}

/// The handles of commands that never reached a node (no route, every attempt refused).
pub(crate) fn no_node() -> &'static NodeMetrics {
    static NONE: LazyLock<NodeMetrics> = LazyLock::new(|| NodeMetrics::new(Arc::from(NO_NODE)));
    &NONE
}

/// Counts commands as in flight while alive.
#[must_use]
pub(crate) struct InFlight {
    gauge: Gauge,
    count: f64,
}

impl InFlight {
    /// `count` commands are sent now.
    pub(crate) fn start(count: usize) -> InFlight {
        thread_local! {
            /// The gauge, and the recorder it was registered with. Per thread: every
            /// request starts here, and a thread-local costs a third of a shared cache.
            static CACHE: std::cell::RefCell<Option<(usize, Gauge)>> =
                const { std::cell::RefCell::new(None) };
        }
        let id = recorder_id();
        let registered = || gauge(key!(REQUESTS_IN_FLIGHT));
        let gauge = CACHE
            .try_with(|cache| {
                let mut cache = cache.borrow_mut();
                match &*cache {
                    Some((recorder, gauge)) if *recorder == id => gauge.clone(),
                    _ => cache.insert((id, registered())).1.clone(),
                }
            })
            // A thread being torn down has no cache left.
            .unwrap_or_else(|_| registered());
        #[allow(clippy::cast_precision_loss)]
        let count = count as f64;
        gauge.increment(count);
        InFlight { gauge, count }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.gauge.decrement(self.count);
    }
}

/// Records the size of an explicit pipeline.
pub(crate) fn pipeline_size(commands: usize) {
    #[allow(clippy::cast_precision_loss)]
    histogram(key!(PIPELINE_SIZE)).record(commands as f64);
}

// ---------------------------------------------------------------------------------------
// Routing events.

/// A `MOVED` (`moved == true`) or `ASK` redirect was followed.
pub(crate) fn redirect(moved: bool) {
    redirects(moved, 1);
}

/// `count` redirects were followed.
pub(crate) fn redirects(moved: bool, count: u64) {
    let key = if moved {
        key!(REDIRECTS_TOTAL, KIND => "moved")
    } else {
        key!(REDIRECTS_TOTAL, KIND => "ask")
    };
    counter(key).increment(count);
}

/// A topology refresh completed; `trigger` is what asked for it.
pub(crate) fn topology_refresh(trigger: &'static str) {
    counter(&Key::from_parts(
        TOPOLOGY_REFRESHES_TOTAL,
        vec![Label::new(TRIGGER, trigger)],
    ))
    .increment(1);
}

/// Why a request was sent again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RetryReason {
    /// Connecting failed or the connection died.
    Connection,
    /// Connecting or the request itself timed out.
    Timeout,
    /// The node's circuit breaker was open.
    CircuitOpen,
    /// No node was known for the slot.
    NoRoute,
    /// A `CLUSTERDOWN` reply.
    ClusterDown,
    /// A `TRYAGAIN` reply (multi-key command during a migration).
    TryAgain,
    /// A `LOADING` reply.
    Loading,
    /// A `MASTERDOWN` reply.
    MasterDown,
    /// Anything else.
    Other,
}

impl RetryReason {
    /// The `reason` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RetryReason::Connection => "connection",
            RetryReason::Timeout => "timeout",
            RetryReason::CircuitOpen => "circuit_open",
            RetryReason::NoRoute => "no_route",
            RetryReason::ClusterDown => "cluster_down",
            RetryReason::TryAgain => "tryagain",
            RetryReason::Loading => "loading",
            RetryReason::MasterDown => "masterdown",
            RetryReason::Other => "other",
        }
    }

    /// The reason an error gives for retrying.
    pub(crate) fn of_error(error: &Error) -> RetryReason {
        match error {
            Error::Timeout { .. } => RetryReason::Timeout,
            // A connect that ran out of its connect timeout.
            Error::Io { source, .. } if source.kind() == std::io::ErrorKind::TimedOut => {
                RetryReason::Timeout
            }
            Error::CircuitOpen { .. } => RetryReason::CircuitOpen,
            Error::ClusterDown(_) => RetryReason::NoRoute,
            Error::Io { .. } | Error::ConnectionLost { .. } | Error::Tls(_) | Error::Auth(_) => {
                RetryReason::Connection
            }
            // A durable write's `TRYAGAIN` comes back as an error, not a reply.
            Error::Server(e) => RetryReason::of_reply(e.code()),
            _ => RetryReason::Other,
        }
    }

    /// The reason an error reply's code gives for retrying.
    pub(crate) fn of_reply(code: &str) -> RetryReason {
        match code {
            "CLUSTERDOWN" => RetryReason::ClusterDown,
            "TRYAGAIN" => RetryReason::TryAgain,
            "LOADING" => RetryReason::Loading,
            "MASTERDOWN" => RetryReason::MasterDown,
            _ => RetryReason::Other,
        }
    }
}

/// A request is sent again, for `reason`.
pub(crate) fn retry(reason: RetryReason) {
    let key = match reason {
        RetryReason::Connection => key!(RETRIES_TOTAL, REASON => "connection"),
        RetryReason::Timeout => key!(RETRIES_TOTAL, REASON => "timeout"),
        RetryReason::CircuitOpen => key!(RETRIES_TOTAL, REASON => "circuit_open"),
        RetryReason::NoRoute => key!(RETRIES_TOTAL, REASON => "no_route"),
        RetryReason::ClusterDown => key!(RETRIES_TOTAL, REASON => "cluster_down"),
        RetryReason::TryAgain => key!(RETRIES_TOTAL, REASON => "tryagain"),
        RetryReason::Loading => key!(RETRIES_TOTAL, REASON => "loading"),
        RetryReason::MasterDown => key!(RETRIES_TOTAL, REASON => "masterdown"),
        RetryReason::Other => key!(RETRIES_TOTAL, REASON => "other"),
    };
    counter(key).increment(1);
}

// ---------------------------------------------------------------------------------------
// Cluster state gauges, set at topology installs, refreshes and health checks.

/// Node counts for `redis_cluster_nodes`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct NodeCounts {
    pub(crate) primaries: usize,
    pub(crate) replicas: usize,
    /// Nodes with at least one open connection.
    pub(crate) connected: usize,
    /// Nodes whose circuit breaker is open.
    pub(crate) breaker_open: usize,
}

/// A cluster gauge's key: `name`, the `client` label, the `node` label when given, and
/// more static labels.
fn gauge_key(
    name: &'static str,
    client: &Arc<str>,
    node: Option<&Arc<str>>,
    extra: &[(&'static str, &'static str)],
) -> Key {
    let mut labels = Vec::with_capacity(2 + extra.len());
    labels.push(Label::new(CLIENT, Arc::clone(client)));
    if let Some(node) = node {
        labels.push(Label::new(NODE, Arc::clone(node)));
    }
    labels.extend(extra.iter().map(|&(k, v)| Label::new(k, v)));
    Key::from_parts(name, labels)
}

/// Sets `redis_cluster_nodes` of `client`.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn cluster_nodes(client: &Arc<str>, counts: NodeCounts) {
    for (state, n) in [
        ("primary", counts.primaries),
        ("replica", counts.replicas),
        ("connected", counts.connected),
        ("breaker_open", counts.breaker_open),
    ] {
        gauge(&gauge_key(CLUSTER_NODES, client, None, &[(STATE, state)])).set(n as f64);
    }
}

/// The gauge value of a breaker state.
pub(crate) fn breaker_code(state: BreakerState) -> u8 {
    match state {
        BreakerState::Closed => 0,
        BreakerState::HalfOpen => 1,
        BreakerState::Open => 2,
    }
}

/// Sets `redis_circuit_breaker_state` of `node` for `client` (see [`breaker_code`]).
pub(crate) fn breaker_state(client: &Arc<str>, node: &Arc<str>, code: u8) {
    gauge(&gauge_key(CIRCUIT_BREAKER_STATE, client, Some(node), &[])).set(f64::from(code));
}

/// Sets `redis_connections` of `client` to `node`.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn connections(
    client: &Arc<str>,
    node: &Arc<str>,
    multiplexed: usize,
    dedicated: usize,
) {
    for (kind, n) in [("multiplexed", multiplexed), ("dedicated", dedicated)] {
        gauge(&gauge_key(CONNECTIONS, client, Some(node), &[(KIND, kind)])).set(n as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_labels_come_from_the_table() {
        let get = crate::cmd::lookup(&crate::cmd("GET").arg("user:1234"));
        assert_eq!(command_label(get), "get");
        let sub = crate::cmd::lookup(&crate::cmd("CLIENT").arg("SETNAME").arg("x"));
        assert_eq!(command_label(sub), "client|setname");
        assert_eq!(command_label(None), "other");
    }

    #[test]
    fn retry_reasons() {
        assert_eq!(
            RetryReason::of_error(&Error::Timeout {
                may_have_executed: true
            }),
            RetryReason::Timeout
        );
        assert_eq!(
            RetryReason::of_error(&Error::ConnectionLost {
                may_have_executed: false
            }),
            RetryReason::Connection
        );
        assert_eq!(RetryReason::of_reply("TRYAGAIN"), RetryReason::TryAgain);
        assert_eq!(RetryReason::of_reply("WHATEVER"), RetryReason::Other);
        // As a durable write gets it: an error, not a reply.
        let tryagain = Error::Server(crate::ServerError::new("TRYAGAIN Multiple keys request"));
        assert_eq!(RetryReason::of_error(&tryagain), RetryReason::TryAgain);
        // A connect that timed out, as `tcp_connect` reports it.
        let connect = Error::io(
            std::io::Error::new(std::io::ErrorKind::TimedOut, "connecting timed out"),
            false,
        );
        assert_eq!(RetryReason::of_error(&connect), RetryReason::Timeout);
        let refused = Error::io(std::io::ErrorKind::ConnectionRefused.into(), false);
        assert_eq!(RetryReason::of_error(&refused), RetryReason::Connection);
    }

    #[test]
    fn statuses_of_replies_and_errors() {
        let refused = crate::ServerError::new("NOPERM no permissions to run the 'watch' command");
        assert_eq!(
            Status::of(Ok(&Value::ServerError(refused.clone()))),
            Status::Error
        );
        assert_eq!(Status::of(Err(&Error::Server(refused))), Status::Error);
        let short = Error::NotReplicated {
            acknowledged: 0,
            requested: 1,
        };
        assert_eq!(Status::of(Err(&short)), Status::Ok);
        let lost = Error::ConnectionLost {
            may_have_executed: true,
        };
        assert_eq!(Status::of(Err(&lost)), Status::Failure);
    }
}
