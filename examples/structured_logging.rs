//! Structured JSON logs with `tracing-subscriber`'s JSON formatter: one line per command
//! (its `redis_command` span closing: command, slot, node, attempt, redirects, status,
//! duration_ms), and the client's events: a MOVED redirect after a slot moved, the
//! topology change it leads to.
//!
//! The seed logs `operation`, `key`, `node`, `duration_ms` and `status`; the client logs
//! the same minus the key: keys, values and arguments never appear in its logs.
//!
//! ```text
//! cargo run --example structured_logging                      # spawns a local cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example structured_logging
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use redcluster::{cmd, key_slot};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // JSON lines on stdout: the client's spans and events at DEBUG (connection-level
    // chatter at INFO); the testkit's (which spawns the local cluster) only when
    // something goes wrong.
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                // One line when a command's span closes, with all its fields.
                .with_span_events(FmtSpan::CLOSE)
                .with_current_span(true)
                .with_span_list(false),
        )
        .with(
            Targets::new()
                .with_target("redcluster", tracing::Level::DEBUG)
                .with_target("redcluster::conn", tracing::Level::INFO)
                .with_target("redcluster::testkit", tracing::Level::WARN),
        )
        .init();

    let (client, cluster) = common::connect().await?;

    println!("# a few commands: one JSON line each when its span closes");
    client.set("user:1234", "Ada").await?;
    let _: Option<String> = client.get("user:1234").await?;
    let _: i64 = client.query(cmd("INCR").arg("visits")).await?;
    // An error reply: status "error".
    let _ = client.query::<i64>(cmd("INCR").arg("user:1234")).await;
    // A multi-slot MGET: one span per node it went to.
    let _: Vec<Option<String>> = client.mget(["user:1234", "visits", "missing"]).await?;

    if let Some(cluster) = &cluster {
        println!("# the slot of user:1234 moves to another master; the client learns by MOVED");
        let slot = key_slot(b"user:1234");
        let from = cluster.master_of_slot(slot).await?;
        let to = cluster
            .masters()
            .await?
            .into_iter()
            .find(|&m| m != from)
            .ok_or("no other master")?;
        cluster.move_slot(slot, to).await?;
        // The client's map still says the old owner: a MOVED redirect (a DEBUG event),
        // then the GET's span closes with redirects=1.
        let _: Option<String> = client.get("user:1234").await?;
        // The MOVED asked for a topology refresh; its INFO event lists the slot range
        // that changed primary.
        tokio::time::sleep(Duration::from_millis(500)).await;
    } else {
        println!("# (no local cluster: skipping the slot move)");
    }
    Ok(())
}
