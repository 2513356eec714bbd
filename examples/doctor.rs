//! The cluster doctor: checks a live cluster against the seed's production checklist and
//! best practices and prints one line per check, with its status, what it saw and what
//! the seed recommends.
//!
//! Against the local 6-node cluster it spawns, expect warnings: the testkit's defaults
//! are made for fast tests (no persistence, no password, no TLS, a 2 s node timeout, all
//! nodes on one host). Point it at your own cluster to check that one; give the client
//! the same credentials, TLS settings and command renames your services use, since
//! what the doctor may check depends on the user's permissions.
//!
//! ```text
//! cargo run --example doctor                          # spawns a local 6-node cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example doctor
//! REDIS_CLUSTER_NODES=... REDIS_PASSWORD=... REDIS_TLS=true REDIS_TLS_CA=ca.crt cargo run --example doctor
//! ```
//!
//! Exits with status 0 whatever the cluster's health (it is an example); a monitoring job
//! would exit non-zero when `report.is_healthy()` is false.

#[path = "common/mod.rs"]
mod common;

use redcluster::cmd;

#[tokio::main]
async fn main() -> redcluster::Result<()> {
    let (client, cluster) = common::connect().await?;
    if cluster.is_some() {
        // A few keys, so that the key sample has something to look at.
        for i in 0..50 {
            client
                .set(format!("doctor:demo:{i}"), "x".repeat(i * 10))
                .await?;
        }
        let _: i64 = client
            .query(cmd("RPUSH").arg("doctor:demo:list").arg("a").arg("b"))
            .await?;
    }

    let report = client.doctor().await?;
    println!("\n{report}\n");

    if report.is_healthy() {
        println!("no check failed");
    } else {
        println!("failed checks:");
        for check in report.failures() {
            let node = check.node.as_deref().unwrap_or("cluster");
            println!("  {} on {node}: {}", check.name, check.recommendation);
        }
    }
    let unknown: Vec<&str> = report.unknowns().map(|c| c.name).collect();
    if !unknown.is_empty() {
        println!(
            "could not check: {} (see OBSERVED for why; often a permission of the client's user)",
            unknown.join(", ")
        );
    }
    Ok(())
}
