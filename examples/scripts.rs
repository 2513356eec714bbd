//! Lua scripts: an atomic rate limiter run by its digest, what happens when a node has
//! forgotten it, scripts in a pipeline, and a read-only script that replicas may serve.
//!
//! ```text
//! cargo run --example scripts                       # spawns a local 6-node cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example scripts
//! ```

#[path = "common/mod.rs"]
mod common;

use redcluster::{cmd, ReadFrom, Result, Script, Value};

/// A fixed-window rate limiter: counts the window's requests for one key and refuses
/// those past the limit. As one script, the count and its expiry are set together: no
/// request slips in between `INCR` and `PEXPIRE`, and no counter is left without expiry.
const LIMITER: &str = r"
local count = redis.call('INCR', KEYS[1])
if count == 1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
if count > tonumber(ARGV[1]) then return 0 end
return 1
";

/// How many requests the window still allows: reads only, so it may run on a replica.
const REMAINING: &str = r"
local used = tonumber(redis.call('GET', KEYS[1]) or '0')
return math.max(0, tonumber(ARGV[1]) - used)
";

const LIMIT: i64 = 10;
const WINDOW_MS: i64 = 60_000;

fn user_key(user: u32) -> String {
    // One user's keys share a hash tag, so a script may touch several of them.
    format!("ratelimit:{{user:{user}}}")
}

#[tokio::main]
async fn main() -> Result<()> {
    let (client, cluster) = common::connect().await?;
    let keys: Vec<String> = (0..8).map(user_key).collect();
    client.del(&keys).await?;

    let limiter = Script::new(LIMITER);
    println!("\n1. a rate limiter in Lua (sha {})", limiter.sha());
    let key = user_key(0);
    let requests: Vec<_> = (0..25)
        .map(|_| {
            let (client, limiter, key) = (client.clone(), limiter.clone(), key.clone());
            tokio::spawn(async move {
                client
                    .invoke::<_, _, i64>(&limiter, &[key], &[LIMIT, WINDOW_MS])
                    .await
            })
        })
        .collect();
    let mut allowed = 0;
    for request in requests {
        allowed += request.await.expect("request task")?;
    }
    println!("   25 concurrent requests, limit {LIMIT}: {allowed} allowed");
    assert_eq!(allowed, LIMIT, "the script counts atomically");

    println!("\n2. a node that has forgotten the script (a restart, a new node, SCRIPT FLUSH)");
    let flushed = cluster.is_some();
    if flushed {
        // Every node (the client sends SCRIPT FLUSH to all of them).
        let _: Value = client.query(cmd("SCRIPT").arg("FLUSH")).await?;
        println!("   SCRIPT FLUSH on every node");
    }
    let allowed: i64 = client
        .invoke(&limiter, &[user_key(1)], &[LIMIT, WINDOW_MS])
        .await?;
    if flushed {
        println!(
            "   the next call: allowed = {allowed} (EVALSHA answered NOSCRIPT; the client \
             sent the source once, and the script ran once)"
        );
    } else {
        // Not flushed on a cluster of someone else's: the node may know the script.
        println!("   the next call: allowed = {allowed} (by EVALSHA, or EVAL after NOSCRIPT)");
    }

    println!("\n3. scripts in a pipeline: load them on every node first");
    // A pipeline sends EVALSHA and does not fall back: its other commands have run by
    // the time a NOSCRIPT comes back.
    client.load_script(&limiter).await?;
    let mut pipeline = client.pipeline();
    for key in &keys[2..] {
        pipeline.invoke(&limiter, &[key.as_str()], &[LIMIT, WINDOW_MS]);
    }
    let replies = pipeline.execute().await?;
    let shown: Vec<String> = replies.iter().map(common::show).collect();
    println!(
        "   {} users, one round trip per node: allowed {}",
        replies.len(),
        shown.join(", ")
    );

    println!("\n4. a read-only script, which replicas may serve");
    let remaining = Script::new(REMAINING).read_only();
    let lagging_ok = client.with_read_from(ReadFrom::PreferReplica);
    let left: i64 = lagging_ok
        .invoke(&remaining, &[key.as_str()], &[LIMIT])
        .await?;
    println!(
        "   user 0 has {left} requests left in the window (from a replica: a moment \
         behind the primary at most)"
    );

    client.del(&keys).await?;
    Ok(())
}
