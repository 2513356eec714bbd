//! Memory stays flat while one shard is unreachable under load: queues are bounded, the
//! frozen node's breaker fails requests fast instead of piling them up. One test in this
//! binary, so the process's resident size is this test's alone.

mod support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redcluster::testkit::LocalCluster;
use redcluster::{key_slot, ClusterClient};

/// What the client may grow by while a shard is unreachable for 10 s under load.
const BOUND: u64 = 32 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_stays_flat_while_a_shard_is_unreachable() {
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .node_timeout(Duration::from_secs(60))
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let load = |secs: u64| {
        (0..64)
            .map(|t| {
                let (client, stop, ok, failed) =
                    (client.clone(), stop.clone(), ok.clone(), failed.clone());
                tokio::spawn(async move {
                    let until = tokio::time::Instant::now() + Duration::from_secs(secs);
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && tokio::time::Instant::now() < until {
                        let key = format!("mem:{t}:{}", n % 100);
                        match client.set(key.as_str(), "x".repeat(100)).await {
                            Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                            Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                        };
                        n += 1;
                    }
                })
            })
            .collect::<Vec<_>>()
    };
    // Warm up: connections, buffers and allocator arenas reach their working size.
    for t in load(2) {
        t.await.unwrap();
    }
    let before = support::rss_bytes();
    let frozen = local.master_of_slot(key_slot(b"mem:0:0")).await.unwrap();
    local.pause(frozen).unwrap();
    for t in load(10) {
        t.await.unwrap();
    }
    let during = support::rss_bytes();
    local.resume(frozen).unwrap();
    stop.store(true, Ordering::Relaxed);
    let grew = during.saturating_sub(before);
    println!(
        "RSS before {} KiB, after 10 s with a shard unreachable {} KiB (+{} KiB); {} ok, {} failed",
        before / 1024,
        during / 1024,
        grew / 1024,
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
    assert!(
        failed.load(Ordering::Relaxed) > 0,
        "the frozen shard's requests failed"
    );
    assert!(grew < BOUND, "grew by {} KiB", grew / 1024);
    // After recovery every shard serves again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.set("mem:0:0", "back").await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the thawed shard never served again"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
