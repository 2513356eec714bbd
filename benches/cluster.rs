//! End-to-end throughput against a real local cluster (3 masters, 1 replica each, all on
//! 127.0.0.1): GET and SET of small values with 1, 64 and 512 requests in flight, and a
//! 1000-command pipeline whose SETs spread over every slot; and one subscription made and
//! ended by a subscriber holding 50,000 others, and 5,000 callers subscribing at once.
//!
//! Run with `cargo bench --bench cluster` (about a minute and a half once built). Needs
//! `redis-server` 7 on `PATH` or in `REDCLUSTER_REDIS_SERVER`. One cluster serves the
//! whole run; the client runs on a tokio runtime with 2 worker threads.
//!
//! `benches/compare.rs` runs the same workloads against redis-rs and fred, with latency
//! percentiles and client CPU per request.

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use futures_util::future::join_all;
use redcluster::testkit::LocalCluster;
use redcluster::ClusterClient;

/// Distinct keys the GET and SET benchmarks cycle through (spread over all slots).
const KEYS: usize = 10_000;
/// Commands in the pipeline benchmark.
const PIPELINE: usize = 1000;
/// Requests in flight at once.
const CONCURRENCY: [usize; 3] = [1, 64, 512];
/// Subscriptions a subscriber holds in the pub/sub benchmark.
const HELD: usize = 50_000;
/// Callers subscribing at once in the pub/sub benchmark.
const BURST: usize = 5_000;
/// A small value, as cached sessions or counters are.
const VALUE: &[u8] = b"value-0123456789";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime")
}

fn key_names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}:{i:06}")).collect()
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let (cluster, client) = rt.block_on(async {
        let cluster = LocalCluster::builder()
            .masters(3)
            .replicas_per_master(1)
            .start()
            .await
            .expect("start a local cluster (is redis-server 7 installed?)");
        let client = ClusterClient::connect(cluster.seeds())
            .await
            .expect("connect");
        (cluster, client)
    });
    let keys = key_names("bench", KEYS);
    // GETs find a value.
    rt.block_on(async {
        for chunk in keys.chunks(PIPELINE) {
            let mut p = client.pipeline();
            for k in chunk {
                p.set(k.as_str(), VALUE);
            }
            p.execute().await.expect("populate");
        }
    });

    for op in ["get", "set"] {
        let mut group = c.benchmark_group(op);
        for n in CONCURRENCY {
            group.throughput(Throughput::Elements(n as u64));
            group.bench_function(BenchmarkId::new("concurrency", n), |b| {
                let mut next = 0usize;
                b.to_async(&rt).iter(|| {
                    let start = next;
                    next = (next + n) % KEYS;
                    let client = &client;
                    let keys = &keys;
                    async move {
                        let requests = (0..n).map(|i| {
                            let key = keys[(start + i) % KEYS].as_str();
                            async move {
                                if op == "get" {
                                    let v: Option<bytes::Bytes> =
                                        client.get(key).await.expect("GET");
                                    assert!(v.is_some());
                                } else {
                                    client.set(key, VALUE).await.expect("SET");
                                }
                            }
                        });
                        join_all(requests).await;
                    }
                });
            });
        }
        group.finish();
    }

    let pipe_keys = key_names("pipe", PIPELINE);
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(PIPELINE as u64));
    group.bench_function(BenchmarkId::new("set_cross_slot", PIPELINE), |b| {
        b.to_async(&rt).iter(|| async {
            let mut p = client.pipeline();
            for k in &pipe_keys {
                p.set(k.as_str(), VALUE);
            }
            let replies = p.execute().await.expect("pipeline");
            assert_eq!(replies.len(), PIPELINE);
        });
    });
    group.finish();

    // One more subscription, made and ended, by a subscriber that already holds many:
    // what a service subscribing per user or per device pays for each.
    let mut group = c.benchmark_group("pubsub");
    for (kind, held) in [("subscribe", HELD), ("ssubscribe", HELD)] {
        let subscriber = rt.block_on(async {
            let subscriber = client.subscriber().await.expect("subscriber");
            let names = key_names(&format!("held-{kind}"), held);
            if kind == "subscribe" {
                subscriber.subscribe(names).await.expect("subscribe");
            } else {
                subscriber.ssubscribe(names).await.expect("ssubscribe");
            }
            subscriber
        });
        group.bench_function(
            BenchmarkId::new(format!("{kind}_one_more_while_holding"), held),
            |b| {
                b.to_async(&rt).iter(|| async {
                    if kind == "subscribe" {
                        subscriber.subscribe(["one-more"]).await.expect("subscribe");
                        subscriber
                            .unsubscribe(["one-more"])
                            .await
                            .expect("unsubscribe");
                    } else {
                        subscriber
                            .ssubscribe(["one-more"])
                            .await
                            .expect("ssubscribe");
                        subscriber
                            .sunsubscribe(["one-more"])
                            .await
                            .expect("sunsubscribe");
                    }
                });
            },
        );
        rt.block_on(async move { drop(subscriber) });
    }
    // As many callers at once, each subscribing one channel: a burst of users connecting.
    let subscriber = rt.block_on(client.subscriber()).expect("subscriber");
    let names = key_names("burst", BURST);
    group.throughput(Throughput::Elements(BURST as u64));
    group.bench_function(BenchmarkId::new("subscribe_callers_at_once", BURST), |b| {
        b.to_async(&rt).iter(|| async {
            join_all(
                names
                    .iter()
                    .map(|name| subscriber.subscribe([name.as_str()])),
            )
            .await
            .into_iter()
            .collect::<redcluster::Result<Vec<()>>>()
            .expect("subscribe");
            subscriber
                .unsubscribe(names.iter().map(String::as_str))
                .await
                .expect("unsubscribe");
        });
    });
    rt.block_on(async move { drop(subscriber) });
    group.finish();

    rt.block_on(async move {
        drop(client);
        drop(cluster);
    });
}

criterion_group! {
    name = cluster;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(cluster);
