//! Hot keys: the seed's "Avoiding Hot Keys" advice in Rust.
//!
//! Shows key sharding: a hot counter split into N sub-keys `counter:{shard-i}` whose
//! hash tags spread them over slots and nodes; writers `INCR` a random shard, and one
//! `MGET` (split per slot by the client) sums them, against a single `counter:hot` key
//! that puts every write on one node. Then a small local cache with a TTL in front of a
//! hot read key (a `HashMap` of values and `Instant`s): hit and miss counts, the server
//! reads it saves, and how long an update stays unseen (at most the TTL).
//!
//! ```text
//! cargo run --example hot_keys                       # spawns a local 6-node cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example hot_keys
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use redcluster::{key_slot, ClusterClient, Result};

const SHARDS: usize = 16;
const WRITERS: usize = 16;
const INCRS_PER_WRITER: usize = 250;

fn shard_key(i: usize) -> String {
    format!("counter:{{shard-{i}}}")
}

/// Adds 1 to a random shard of the counter: writes spread over `SHARDS` keys.
async fn incr_sharded(client: &ClusterClient) -> Result<usize> {
    let shard = fastrand::usize(0..SHARDS);
    client.incr(shard_key(shard), 1).await?;
    Ok(shard)
}

/// The counter's value: one MGET over every shard (the client splits it per slot).
async fn read_sharded(client: &ClusterClient) -> Result<i64> {
    let keys: Vec<String> = (0..SHARDS).map(shard_key).collect();
    let values: Vec<Option<i64>> = client.mget(&keys).await?;
    Ok(values.into_iter().flatten().sum())
}

/// A tiny read-through cache for hot keys: values live `ttl` in the process, so most
/// reads never reach Redis; an update is seen at most `ttl` late.
struct LocalCache {
    ttl: Duration,
    entries: HashMap<String, (Option<String>, Instant)>,
    hits: u64,
    misses: u64,
}

impl LocalCache {
    fn new(ttl: Duration) -> Self {
        LocalCache {
            ttl,
            entries: HashMap::new(),
            hits: 0,
            misses: 0,
        }
    }

    async fn get(&mut self, client: &ClusterClient, key: &str) -> Result<Option<String>> {
        if let Some((value, fetched)) = self.entries.get(key) {
            if fetched.elapsed() < self.ttl {
                self.hits += 1;
                return Ok(value.clone());
            }
        }
        self.misses += 1;
        let value: Option<String> = client.get(key).await?;
        self.entries
            .insert(key.to_string(), (value.clone(), Instant::now()));
        Ok(value)
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let (client, _cluster) = common::connect().await?;
    let mut all_keys: Vec<String> = (0..SHARDS).map(shard_key).collect();
    all_keys.extend(["counter:hot".to_string(), "config:hot".to_string()]);
    client.del(&all_keys).await?;

    println!(
        "\n1. a hot counter sharded into {SHARDS} keys counter:{{shard-0}} .. counter:{{shard-{}}}",
        SHARDS - 1
    );
    let mut shards_per_node: BTreeMap<String, Vec<u16>> = BTreeMap::new();
    for i in 0..SHARDS {
        let key = shard_key(i);
        shards_per_node
            .entry(client.node_for_key(key.as_bytes()).unwrap_or_default())
            .or_default()
            .push(key_slot(key.as_bytes()));
    }
    for (node, slots) in &shards_per_node {
        println!("   {node:<16} {} shards, slots {slots:?}", slots.len());
    }
    println!("   (tags hash pseudo-randomly: the more shards, the more even the spread)");

    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut shards = Vec::with_capacity(INCRS_PER_WRITER);
                for _ in 0..INCRS_PER_WRITER {
                    shards.push(incr_sharded(&client).await?);
                }
                Ok::<_, redcluster::Error>(shards)
            })
        })
        .collect();
    let mut per_node: BTreeMap<String, usize> = BTreeMap::new();
    for task in tasks {
        for shard in task.await.expect("writer task")? {
            let node = client
                .node_for_key(shard_key(shard).as_bytes())
                .unwrap_or_default();
            *per_node.entry(node).or_default() += 1;
        }
    }
    let total = read_sharded(&client).await?;
    println!(
        "   {WRITERS} writers x {INCRS_PER_WRITER} INCRs on random shards; one MGET over the shards sums to {total}"
    );
    println!("   INCRs per node: {per_node:?}");

    let tasks: Vec<_> = (0..WRITERS)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                for _ in 0..INCRS_PER_WRITER {
                    client.incr("counter:hot", 1).await?;
                }
                Ok::<_, redcluster::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("writer task")?;
    }
    let hot: i64 = client.get("counter:hot").await?;
    println!(
        "   the same {hot} INCRs on one key counter:hot: all {hot} on {}, the other nodes idle",
        client.node_for_key(b"counter:hot").unwrap_or_default()
    );
    println!("   (sharding trades one read for N: read the sum rarely, or cache it)");

    println!("\n2. a local cache with a 200 ms TTL in front of the hot key config:hot");
    client.set("config:hot", "v1").await?;
    let mut cache = LocalCache::new(Duration::from_millis(200));
    let reads = 1000;
    let started = Instant::now();
    let mut updated_at = None;
    let mut seen_after = None;
    let mut interval = tokio::time::interval(Duration::from_millis(1));
    for i in 0..reads {
        interval.tick().await;
        if i == reads / 2 {
            client.set("config:hot", "v2").await?;
            updated_at = Some(Instant::now());
        }
        let value = cache.get(&client, "config:hot").await?;
        if let (Some(at), None, Some("v2")) = (updated_at, seen_after, value.as_deref()) {
            seen_after = Some(at.elapsed());
        }
    }
    println!(
        "   {reads} reads in {:.1} s: {} cache hits, {} misses (= server GETs instead of {reads})",
        started.elapsed().as_secs_f64(),
        cache.hits,
        cache.misses
    );
    if let Some(after) = seen_after {
        println!(
            "   config:hot was updated halfway; the cache served the old value for {:.0} ms more \
             (never longer than the TTL)",
            after.as_secs_f64() * 1e3
        );
    }
    println!("   (other remedies from the seed: read replicas for hot reads, TTLs on hot keys)");

    client.del(&all_keys).await?;
    Ok(())
}
