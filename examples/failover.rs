//! Failover: 16 tasks keep writing while a master is killed; the cluster promotes its
//! replica and the client follows.
//!
//! Shows, second by second, how many writes succeeded and failed; when the killed
//! master's slots were served again (by its former replica); and, at the end, the totals
//! with the failures by kind, the client's counters (`client.stats()`) and its view of the
//! cluster (`client.health()`). Writes to the other two shards never stop: the cluster
//! runs with `cluster-require-full-coverage no`, and each request has a 1 s deadline, so
//! writes to the dead shard fail fast instead of piling up.
//!
//! ```text
//! cargo run --example failover
//! ```
//!
//! It spawns its own local 6-node cluster (`cluster-node-timeout 2000`,
//! `cluster-require-full-coverage no`), because it kills a node: with
//! `REDIS_CLUSTER_NODES` set it only prints that and exits.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use redcluster::testkit::LocalCluster;
use redcluster::{key_slot, ClusterClient, Error, NodeRole, SLOT_COUNT};

const WRITERS: usize = 16;
/// When the master is killed, after the writers start.
const KILL_AT: Duration = Duration::from_secs(1);
/// How long writing goes on after the killed shard serves again.
const AFTER: Duration = Duration::from_millis(1500);
/// Stop anyway after this long.
const MAX: Duration = Duration::from_secs(15);
const SECONDS: usize = 20;

#[derive(Default)]
struct Tally {
    ok: [AtomicU64; SECONDS],
    failed: [AtomicU64; SECONDS],
    timeout: AtomicU64,
    circuit_open: AtomicU64,
    connection: AtomicU64,
    cluster_down: AtomicU64,
    other: AtomicU64,
    /// Milliseconds from the start to the first write into the killed shard's slots
    /// that succeeded after the kill; 0 until then.
    served_again_ms: AtomicU64,
}

#[tokio::main]
async fn main() -> redcluster::Result<()> {
    if std::env::var_os("REDIS_CLUSTER_NODES").is_some() {
        println!(
            "the failover example kills a node, so it needs a local cluster it spawns itself: \
             run it without REDIS_CLUSTER_NODES"
        );
        return Ok(());
    }
    println!("spawning a local 6-node cluster (node timeout 2 s, full coverage not required) ...");
    let local = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(1)
        .node_timeout(Duration::from_millis(2000))
        .config("cluster-require-full-coverage", "no")
        .start()
        .await?;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(1))
        .build()
        .await?;

    let victim = local.master_of_slot(0).await?;
    let victim_addr = local.node_addr(victim);
    let replica = local.replicas_of(victim).await?;
    let in_victim: Arc<Vec<bool>> = Arc::new(
        (0..SLOT_COUNT)
            .map(|s| client.primary_for_slot(s).as_deref() == Some(victim_addr.as_str()))
            .collect(),
    );
    println!(
        "victim: master {victim_addr} with {} slots; its replica: {}",
        in_victim.iter().filter(|&&v| v).count(),
        replica
            .iter()
            .map(|&r| local.node_addr(r))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let on_victim = (0..WRITERS)
        .filter(|&w| in_victim[usize::from(key_slot(writer_key(w, 0).as_bytes()))])
        .count();
    println!(
        "{WRITERS} writers start, each on its own hash tag; {on_victim} of them write to the \
         victim's shard. The master is killed after {KILL_AT:?}.\n"
    );

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (client, tally, stop, killed, in_victim) = (
                client.clone(),
                Arc::clone(&tally),
                Arc::clone(&stop),
                Arc::clone(&killed),
                Arc::clone(&in_victim),
            );
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let key = writer_key(w, n % 500);
                    // Only a write sent after the master died shows the shard is back.
                    let after_kill = killed.load(Ordering::Relaxed);
                    let result = client.set(&key, n).await;
                    let elapsed = start.elapsed();
                    let second = (elapsed.as_secs() as usize).min(SECONDS - 1);
                    match result {
                        Ok(()) => {
                            tally.ok[second].fetch_add(1, Ordering::Relaxed);
                            if after_kill && in_victim[usize::from(key_slot(key.as_bytes()))] {
                                let ms = elapsed.as_millis() as u64;
                                let _ = tally.served_again_ms.compare_exchange(
                                    0,
                                    ms,
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                );
                            }
                        }
                        Err(e) => {
                            tally.failed[second].fetch_add(1, Ordering::Relaxed);
                            let kind = match e {
                                Error::Timeout { .. } => &tally.timeout,
                                Error::CircuitOpen { .. } => &tally.circuit_open,
                                Error::Io { .. } | Error::ConnectionLost { .. } => {
                                    &tally.connection
                                }
                                Error::ClusterDown(_) => &tally.cluster_down,
                                _ => &tally.other,
                            };
                            kind.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            })
        })
        .collect();

    let mut printed = 0usize;
    let mut served_at = None;
    loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = start.elapsed();
        if now >= KILL_AT && !killed.load(Ordering::Relaxed) {
            local.kill(victim)?;
            killed.store(true, Ordering::Relaxed);
            println!("t={:.1}s  killed master {victim_addr}", now.as_secs_f64());
        }
        let served_ms = tally.served_again_ms.load(Ordering::Relaxed);
        if served_ms > 0 && served_at.is_none() {
            let at = Duration::from_millis(served_ms);
            served_at = Some(at);
            println!(
                "t={:.1}s  the killed master's slots are served again, by {} ({:.1} s after the kill)",
                at.as_secs_f64(),
                client.primary_for_slot(0).unwrap_or_default(),
                at.saturating_sub(KILL_AT).as_secs_f64()
            );
        }
        while (printed + 1) as u64 <= now.as_secs() {
            print_second(&tally, printed);
            printed += 1;
        }
        if served_at.is_some_and(|at| now >= at + AFTER) || now >= MAX {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer task");
    }
    let elapsed = start.elapsed();
    print_second(&tally, printed); // the last, partial second

    let sum = |a: &[AtomicU64; SECONDS]| a.iter().map(|c| c.load(Ordering::Relaxed)).sum::<u64>();
    let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
    println!(
        "\ntotal in {:.1} s: {} ok, {} failed (timeout {}, circuit open {}, connection {}, cluster down {}, other {})",
        elapsed.as_secs_f64(),
        sum(&tally.ok),
        sum(&tally.failed),
        get(&tally.timeout),
        get(&tally.circuit_open),
        get(&tally.connection),
        get(&tally.cluster_down),
        get(&tally.other),
    );
    match served_at {
        Some(at) => println!(
            "the shard was unavailable for {:.1} s (node timeout 2 s + election)",
            at.saturating_sub(KILL_AT).as_secs_f64()
        ),
        None => println!("the shard was not served again within {MAX:?}"),
    }
    let stats = client.stats();
    println!(
        "client.stats(): moved {} ask {} refreshes {} retries {}",
        stats.moved, stats.ask, stats.refreshes, stats.retries
    );
    let health = client.health();
    println!(
        "client.health(): ok={} slots covered {}/{}",
        health.is_ok(),
        health.slots_covered,
        SLOT_COUNT
    );
    if health.node(&victim_addr).is_none() {
        println!("   (the killed master {victim_addr} is gone from the topology)");
    }
    for node in &health.nodes {
        println!(
            "   {:<16} {:<8} connected={:<5} breaker={:?}{}{}",
            node.addr,
            if node.role == NodeRole::Primary {
                "primary"
            } else {
                "replica"
            },
            node.connected,
            node.breaker,
            if node.role == NodeRole::Replica && !node.connected {
                " (reads go to primaries: no connection needed)"
            } else {
                ""
            },
            node.last_error
                .as_ref()
                .map(|(e, at)| {
                    let ago = at.elapsed().unwrap_or_default();
                    format!(" last error {:.1} s ago: {e}", ago.as_secs_f64())
                })
                .unwrap_or_default()
        );
    }
    Ok(())
}

/// Writer `w`'s keys share the hash tag `{wN}`, so each writer stays on one shard and the
/// writers on healthy shards are never held up by the dead one.
fn writer_key(w: usize, n: u64) -> String {
    format!("failover:{{w{w}}}:{n}")
}

fn print_second(tally: &Tally, second: usize) {
    if second >= SECONDS {
        return;
    }
    let ok = tally.ok[second].load(Ordering::Relaxed);
    let failed = tally.failed[second].load(Ordering::Relaxed);
    if ok + failed == 0 {
        return;
    }
    println!("second {:>2}: {ok:>6} ok {failed:>5} failed", second + 1);
}
