//! Read replicas: send reads to replicas with `ReadFrom::PreferReplica`, `Replica` (today
//! the same as `PreferReplica`) or `LowestLatency`, and see which nodes served them.
//!
//! Shows a write made durable with `query_durable` (the primary waits until a replica
//! has it: `WAIT`), then, for each `ReadFrom` mode, 120 GETs and how many each node
//! served (from the `cmdstat_get` counter of `INFO commandstats` on every node, read
//! before and after); the PING latencies the health checks measured, which
//! `LowestLatency` picks nodes by; and replica lag: how often a replica read right after
//! a plain write still sees the old value.
//!
//! ```text
//! cargo run --example read_replicas                  # spawns a local 6-node cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example read_replicas
//! ```
//!
//! Against `REDIS_CLUSTER_NODES` the per-node counts need each node reachable with
//! `REDIS_PASSWORD`/`REDIS_USERNAME` over plain TCP; otherwise they are left out.

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use redcluster::testkit::LocalCluster;
use redcluster::{
    cmd, ClusterClient, ClusterClientBuilder, ConnectOptions, Durability, NodeConnection, NodeRole,
    ReadFrom, Value,
};

const KEYS: usize = 12;
const READS: usize = 120;

/// A builder for the same cluster as `common::connect`.
fn builder(cluster: Option<&LocalCluster>) -> redcluster::Result<ClusterClientBuilder> {
    match cluster {
        Some(cluster) => Ok(ClusterClient::builder().nodes(cluster.seeds())),
        None => ClusterClient::builder_from_env(),
    }
}

/// Options to talk to single nodes directly (for `INFO`).
fn node_options(cluster: Option<&LocalCluster>) -> ConnectOptions {
    if let Some(cluster) = cluster {
        return cluster.connect_options();
    }
    let mut options = ConnectOptions::default();
    if let Ok(password) = std::env::var("REDIS_PASSWORD") {
        options = options.password(password);
    }
    if let Ok(username) = std::env::var("REDIS_USERNAME") {
        options = options.username(username);
    }
    options
}

/// How many GETs each node has served so far (`None` if it cannot be asked).
async fn get_calls(nodes: &[(String, String)], options: &ConnectOptions) -> Vec<Option<u64>> {
    let mut calls = Vec::new();
    for (addr, _) in nodes {
        let count = async {
            let conn = NodeConnection::connect(addr, options).await.ok()?;
            let info = conn.send(cmd("INFO").arg("commandstats")).await.ok()?;
            conn.close();
            let text = String::from_utf8_lossy(info.as_bytes()?).into_owned();
            let line = text.lines().find(|l| l.starts_with("cmdstat_get:"));
            Some(line.map_or(0, |l| {
                l.split(['=', ','])
                    .nth(1)
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(0)
            }))
        };
        calls.push(count.await);
    }
    calls
}

#[tokio::main]
async fn main() -> redcluster::Result<()> {
    let (client, cluster) = common::connect().await?;
    let cluster = cluster.as_ref();
    let options = node_options(cluster);
    let nodes: Vec<(String, String)> = client
        .health()
        .nodes
        .iter()
        .map(|n| {
            let role = match (&n.role, &n.primary) {
                (NodeRole::Primary, _) => "primary".to_string(),
                (_, Some(p)) => format!("replica of {p}"),
                _ => "replica".to_string(),
            };
            (n.addr.clone(), role)
        })
        .collect();

    let keys: Vec<String> = (0..KEYS).map(|i| format!("replicas:key{i}")).collect();
    println!("\nwrite {KEYS} keys, each durable: SET, then WAIT until 1 replica has it");
    let mut acked_total = 0;
    for (i, key) in keys.iter().enumerate() {
        let (_, acked): (Value, u32) = client
            .query_durable(
                cmd("SET").arg(key).arg(format!("v{i}")),
                Durability::new(1, Duration::from_secs(2)),
            )
            .await?;
        acked_total += acked;
    }
    println!("   {acked_total} replica acknowledgements for {KEYS} writes");

    for (mode, note) in [
        (ReadFrom::Primary, "the default: primaries only"),
        (
            ReadFrom::PreferReplica,
            "replicas, the primary if none is reachable",
        ),
        // `Replica` currently behaves as `PreferReplica`: it too falls back to the primary
        // when no replica of the shard is reachable.
        (
            ReadFrom::Replica,
            "today the same as PreferReplica: replicas, the primary if none is reachable",
        ),
        (
            ReadFrom::LowestLatency,
            "the fastest nodes by PING latency, primary included",
        ),
    ] {
        let reader = builder(cluster)?
            .read_from(mode)
            .health_check_interval(Some(Duration::from_millis(100)))
            .build()
            .await?;
        if mode == ReadFrom::LowestLatency {
            // Let the health checks measure every node a few times.
            for key in &keys {
                let _: Option<String> = reader.get(key).await?;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let before = get_calls(&nodes, &options).await;
        // `WAIT 1` made one replica of each shard have the write: on a cluster with more
        // replicas (or other writers), a replica read may still see an older value.
        let mut stale = 0;
        for i in 0..READS {
            let value: Option<String> = reader.get(&keys[i % KEYS]).await?;
            stale += usize::from(value.as_deref() != Some(format!("v{}", i % KEYS).as_str()));
        }
        let after = get_calls(&nodes, &options).await;
        println!("\nReadFrom::{mode:?} ({note}): {READS} GETs ({stale} stale) served by");
        let health = reader.health();
        for (((addr, role), b), a) in nodes.iter().zip(&before).zip(&after) {
            let served = match (b, a) {
                (Some(b), Some(a)) => format!("{:>4}", a - b),
                _ => "   ?".to_string(),
            };
            let latency = health
                .node(addr)
                .and_then(|n| n.latency)
                .map(|l| format!("  ping {:.0} us", l.as_secs_f64() * 1e6))
                .unwrap_or_default();
            println!("   {addr:<16} {served}  {role}{latency}");
        }
    }

    println!("\nreplica lag: while a writer INCRs a counter on the primary, read it from the");
    println!("primary and right after from its replica, 200 times");
    let replica_reader = builder(cluster)?
        .read_from(ReadFrom::Replica)
        .build()
        .await?;
    let counter = "replicas:counter";
    client.set(counter, 0).await?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = tokio::spawn({
        let (client, stop) = (client.clone(), std::sync::Arc::clone(&stop));
        async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let mut pipe = client.pipeline();
                for _ in 0..50 {
                    pipe.incr(counter, 1);
                }
                pipe.execute().await?;
            }
            Ok::<_, redcluster::Error>(())
        }
    });
    let (mut behind, mut max_gap) = (0, 0);
    for _ in 0..200 {
        let on_primary: Option<i64> = client.get(counter).await?;
        let on_replica: Option<i64> = replica_reader.get(counter).await?;
        let gap = on_primary.unwrap_or(0) - on_replica.unwrap_or(0);
        if gap > 0 {
            behind += 1;
            max_gap = max_gap.max(gap);
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.await.expect("writer task")?;
    if behind == 0 {
        println!(
            "   the replica was never behind in 200 reads: on one host replication takes \
             microseconds"
        );
    } else {
        println!(
            "   the replica was behind what the primary had already returned in {behind} of \
             200 reads, by up to {max_gap} increments"
        );
    }
    println!(
        "   but replication is asynchronous: across a network, under load, or while a replica \
         resyncs, replicas lag by milliseconds to seconds. Read from replicas what may be \
         slightly stale; when a reader must see a write, write it with query_durable (WAIT) or \
         read from the primary."
    );

    let mut cleanup = keys.clone();
    cleanup.push(counter.to_string());
    client.del(&cleanup).await?;
    Ok(())
}
