//! Background health checks: every `health_check_interval`, PING every node of the
//! topology, concurrently. A round trip feeds the node's latency (for
//! [`crate::ReadFrom::LowestLatency`]) and its circuit breaker; a PING to a node whose
//! breaker is open serves as the half-open probe, so an idle node's breaker closes again
//! once it answers, without waiting for user traffic.

use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::node::Node;
use crate::cluster::Inner;
use crate::cmd::cmd;
use crate::resp::Value;

/// Runs until the client is dropped.
pub(crate) async fn health_task(inner: Weak<Inner>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
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
    }

    async fn ping(&self, node: &Node) {
        if !node.admit().0 {
            return; // Open and not yet due for a probe.
        }
        let deadline = Instant::now() + self.config.response_timeout;
        let started = Instant::now();
        let ok = match node.connection(deadline).await {
            Ok(conn) => match conn.send_timeout(cmd("PING"), self.config.response_timeout).await {
                Ok(Value::ServerError(e)) => {
                    tracing::debug!(node = %node.addr, error = %e, "health check answered with an error");
                    true
                }
                Ok(_) => true,
                Err(e) => {
                    tracing::debug!(node = %node.addr, error = %e, "health check failed");
                    false
                }
            },
            Err(_) => false,
        };
        if ok {
            node.observe_latency(started.elapsed());
        }
        self.record(node, ok);
    }
}
