//! Background health checks: every `health_check_interval`, PING every node of the
//! topology, concurrently. A round trip feeds the node's latency (for
//! [`crate::ReadFrom::LowestLatency`]) and its circuit breaker; a PING to a node whose
//! breaker is open serves as the half-open probe, so an idle node's breaker closes again
//! once it answers, without waiting for user traffic.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::node::Node;
use crate::cluster::Inner;
use crate::cmd::cmd;
use crate::policy::BreakerState;
use crate::resp::Value;

/// Runs until the client is dropped.
pub(crate) async fn health_task(
    inner: Weak<Inner>,
    signal: Arc<crate::cluster::refresh::RefreshSignal>,
    interval: Duration,
    _running: crate::cluster::refresh::Running,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(interval) => {}
            () = signal.health_shutdown.notified() => return,
        }
        let Some(inner) = inner.upgrade() else {
            return;
        };
        inner.check_health().await;
    }
}

impl Inner {
    /// PINGs every node once, concurrently.
    pub(crate) async fn check_health(&self) {
        let nodes: Vec<Arc<Node>> = {
            let routes = self.routes.load();
            routes
                .primaries
                .iter()
                .chain(routes.replicas.iter().flatten())
                .cloned()
                .collect()
        };
        futures_util::future::join_all(nodes.iter().map(|node| self.ping(node))).await;
        self.publish_gauges(&[]);
    }

    /// Sets the cluster gauges (`redis_cluster_nodes`, and per node
    /// `redis_circuit_breaker_state` and `redis_connections`) from the routing snapshot
    /// and the node handles; zeroes the per-node gauges of the nodes in `gone`. Also on
    /// every breaker transition, which `redis_cluster_nodes{state="breaker_open"}`
    /// counts too.
    ///
    /// One at a time: a publisher that read a breaker before a transition and set its
    /// gauge after the transition's own publisher did would leave the old state
    /// showing (closed while open) until the next health check.
    pub(crate) fn publish_gauges(&self, gone: &[Arc<str>]) {
        use crate::observe::metrics;
        let _one_at_a_time = crate::cluster::node::lock(&self.publishing_gauges);
        let routes = self.routes.load();
        let handles = self.registry.all();
        let mut counts = metrics::NodeCounts {
            primaries: routes.primaries.len(),
            replicas: routes.replicas.iter().map(Vec::len).sum(),
            ..Default::default()
        };
        // The breaker of each node is that of the handle its role in the routes gives
        // it, as `health()` says: after a role swap without a failure flag, the handle of
        // its old role keeps the state it had (open, say), and no request reaches it to
        // change that.
        // Per address, in one pass each (a scan of the handles per node was quadratic,
        // on every refresh and breaker change, at hundreds of nodes): connections open
        // on its handles (primary and replica-read connections), and its breaker.
        let mut open: HashMap<&str, (usize, usize)> = HashMap::with_capacity(handles.len());
        for node in &handles {
            let (m, d) = node.open_connections();
            let entry = open.entry(&node.addr).or_default();
            *entry = (entry.0 + m, entry.1 + d);
        }
        let mut breakers: HashMap<&str, u8> = HashMap::with_capacity(handles.len());
        for node in routes
            .primaries
            .iter()
            .chain(routes.replicas.iter().flatten())
        {
            let code = metrics::breaker_code(node.breaker_state());
            let entry = breakers.entry(&node.addr).or_default();
            *entry = (*entry).max(code);
        }
        for addr in routes.map.nodes() {
            let (multiplexed, dedicated) = open.get(&*addr).copied().unwrap_or_default();
            let breaker = breakers.get(&*addr).copied().unwrap_or(0);
            counts.connected += usize::from(multiplexed + dedicated > 0);
            counts.breaker_open +=
                usize::from(breaker == metrics::breaker_code(BreakerState::Open));
            metrics::breaker_state(&self.metrics_client, &addr, breaker);
            metrics::connections(&self.metrics_client, &addr, multiplexed, dedicated);
        }
        for addr in gone {
            metrics::breaker_state(&self.metrics_client, addr, 0);
            metrics::connections(&self.metrics_client, addr, 0, 0);
        }
        metrics::cluster_nodes(&self.metrics_client, counts);
    }

    async fn ping(&self, node: &Arc<Node>) {
        let Some(_admitted) = self.admit(node) else {
            return; // Open and not yet due for a probe.
        };
        // A round ends within an interval (or a second), whatever the response timeout:
        // a node that does not answer holds up no more than that, and a client dropped
        // meanwhile (the round holds it) is released by then.
        let interval = self.config.health_check_interval.unwrap_or(Duration::MAX);
        let timeout = self
            .config
            .response_timeout
            .min(interval.max(Duration::from_secs(1)));
        let deadline = crate::deadline::from_now(timeout);
        let conn = match node.connection(deadline).await {
            Ok(conn) => conn,
            Err(e) => {
                node.forget_latency();
                return self.record_connect_failure(node, &e);
            }
        };
        // The round trip alone: a connection just opened (a TLS handshake) would make a
        // node look slow to `LowestLatency` for a while.
        let started = Instant::now();
        let (failure, answered_ok) = match conn.send_timeout(cmd("PING"), timeout).await {
            Ok(Value::ServerError(e)) => {
                tracing::debug!(node = %node.addr, error = %e, "health check answered with an error");
                if crate::policy::replica_cannot_serve(&e) {
                    node.pass_over_for_reads();
                }
                (None, false)
            }
            Ok(_) => (None, true),
            Err(e) => {
                tracing::debug!(node = %node.addr, error = %e, "health check failed");
                node.forget_latency();
                (Some(e), false)
            }
        };
        // A node quick to refuse (`LOADING`) is no fast node for `LowestLatency`.
        if answered_ok {
            node.observe_latency(started.elapsed());
        }
        // On the shared connection: its loss counts once, whoever sees it first.
        let outcome = failure.map_or(Ok(()), Err);
        self.record_on(node, &conn, &outcome, started.into_std());
    }
}
