//! Quickstart: connect to a cluster, SET and GET a few keys, and show which node served
//! each.
//!
//! ```text
//! cargo run --example quickstart                      # spawns a local 6-node cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example quickstart
//! ```

#[path = "common/mod.rs"]
mod common;

use redcluster::{cmd, key_slot};

#[tokio::main]
async fn main() -> redcluster::Result<()> {
    let (client, _cluster) = common::connect().await?;
    println!("known nodes: {}", client.known_nodes().join(", "));

    for (key, value) in [
        ("user:1000:name", "Ada"),
        ("user:1001:name", "Grace"),
        ("{user:1000}:email", "ada@example.com"),
        ("session:42", "active"),
        ("counter", "0"),
    ] {
        client.set(key, value).await?;
        let read: Option<String> = client.get(key).await?;
        println!(
            "SET/GET {key:<20} slot {:>5} on {:<16} -> {}",
            key_slot(key.as_bytes()),
            client.node_for_key(key.as_bytes()).unwrap_or_default(),
            read.as_deref().unwrap_or("(nil)")
        );
    }

    let n: i64 = client.query(cmd("INCR").arg("counter")).await?;
    println!("INCR counter -> {n}");
    let names: Vec<Option<String>> = client
        .mget(["user:1000:name", "user:1001:name", "missing"])
        .await?;
    println!("MGET across slots -> {names:?}");
    Ok(())
}
