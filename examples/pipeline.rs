//! Pipelines: the seed's `batch_set` / `batch_get` in Rust.
//!
//! Shows a pipeline of SETs whose keys span every shard (the client groups them by
//! node, writes each node's share at once, all nodes in parallel, and returns replies
//! in the order the commands were added), then the GETs back; `execute`, which fails
//! with `Error::Pipeline { index, .. }` naming the first failed command, and
//! `execute_each`, which returns every command's own outcome (here one `LPUSH` on a
//! string key fails with `WRONGTYPE` while the commands around it succeed); and the
//! round trips a pipeline saves.
//!
//! ```text
//! cargo run --example pipeline                       # spawns a local 6-node cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example pipeline
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Instant;

use redcluster::{cmd, key_slot, ClusterClient, Error, Value};

/// The seed's `batch_set`: one pipeline of SETs, whatever slots the keys are in.
async fn batch_set(client: &ClusterClient, pairs: &[(String, String)]) -> redcluster::Result<()> {
    let mut pipe = client.pipeline();
    for (key, value) in pairs {
        pipe.set(key, value);
    }
    pipe.execute().await?;
    Ok(())
}

/// The seed's `batch_get`. No "same slot?" check is needed: `MGET` is split per slot by
/// the client; a pipeline of GETs does the same job and also mixes in other commands.
async fn batch_get(client: &ClusterClient, keys: &[String]) -> redcluster::Result<Vec<Value>> {
    let mut pipe = client.pipeline();
    for key in keys {
        pipe.get(key);
    }
    pipe.execute().await
}

#[tokio::main]
async fn main() -> redcluster::Result<()> {
    let (client, _cluster) = common::connect().await?;

    let pairs: Vec<(String, String)> = (0..12)
        .map(|i| (format!("batch:key{i}"), format!("value{i}")))
        .collect();
    let keys: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();

    let mut per_node: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for key in &keys {
        per_node
            .entry(client.node_for_key(key.as_bytes()).unwrap_or_default())
            .or_default()
            .push(key_slot(key.as_bytes()));
    }
    println!("\n12 keys over {} nodes:", per_node.len());
    for (node, slots) in &per_node {
        println!("   {node:<16} slots {slots:?}");
    }

    batch_set(&client, &pairs).await?;
    println!("\nbatch_set: one pipeline of 12 SETs -> all OK");
    let values = batch_get(&client, &keys).await?;
    let shown: Vec<String> = values.iter().take(4).map(common::show).collect();
    println!(
        "batch_get: one pipeline of 12 GETs -> {} ... (in key order)",
        shown.join(", ")
    );
    let mget: Vec<Option<String>> = client.mget(&keys[..4]).await?;
    println!("MGET of the first 4 keys (split per slot by the client) -> {mget:?}");

    // A pipeline with one command that fails when it runs.
    let build = || {
        let mut pipe = client.pipeline();
        pipe.set("batch:key0", "fresh");
        pipe.add(cmd("LPUSH").arg("batch:key1").arg("x")); // batch:key1 holds a string
        pipe.incr("batch:counter", 5);
        pipe.get("batch:key0");
        pipe
    };
    println!("\npipeline: SET batch:key0, LPUSH batch:key1 (a string!), INCRBY, GET");
    match build().execute().await {
        Ok(replies) => println!("execute -> unexpectedly all OK: {replies:?}"),
        Err(Error::Pipeline { index, source }) => println!(
            "execute      -> Error::Pipeline: command {index} failed ({}): {source}",
            source.server_code().unwrap_or("-")
        ),
        Err(e) => return Err(e),
    }
    println!("execute_each -> one result per command; the others still ran:");
    for (index, result) in build().execute_each().await.iter().enumerate() {
        match result {
            Ok(value) => println!("   [{index}] ok    {}", common::show(value)),
            Err(e) => println!("   [{index}] error {e}"),
        }
    }

    // What batching saves: 200 SETs one by one, then in one pipeline.
    let n = 200;
    let started = Instant::now();
    for i in 0..n {
        client.set(format!("batch:seq{i}"), i).await?;
    }
    let sequential = started.elapsed();
    let started = Instant::now();
    let mut pipe = client.pipeline();
    for i in 0..n {
        pipe.set(format!("batch:seq{i}"), i);
    }
    pipe.execute().await?;
    let pipelined = started.elapsed();
    println!(
        "\n{n} SETs one by one: {:.1} ms; in one pipeline: {:.1} ms",
        sequential.as_secs_f64() * 1e3,
        pipelined.as_secs_f64() * 1e3
    );

    let mut cleanup = keys.clone();
    cleanup.push("batch:counter".into());
    cleanup.extend((0..n).map(|i| format!("batch:seq{i}")));
    client.del(&cleanup).await?;
    Ok(())
}
