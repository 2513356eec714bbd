//! What metrics cost: GET throughput at 64 requests in flight with no metrics recorder,
//! then with a Prometheus recorder (`metrics-exporter-prometheus`, no HTTP listener),
//! in one process, on one client and one local cluster (3 masters, no replicas).
//!
//! Run with `cargo bench --bench metrics_overhead`. Prints ops/s and the client's CPU
//! time per GET (from `/proc/self/stat`, Linux) of each phase, and the differences in %.
//! `METRICS_BENCH_ROUNDS` (default 5) rounds of `METRICS_BENCH_SECS` (default 2) seconds
//! per phase; a phase reports its median round.
//!
//! The client and its 64 request tasks run on a current-thread runtime: everything the
//! client does happens on one thread, so its CPU time is the client's own, and a
//! thread-local recorder covers all of it.
//!
//! 1. No recorder at all.
//! 2. A Prometheus recorder installed globally (it cannot be uninstalled). The client
//!    picks it up on its next request, without being rebuilt.
//! 3. Interleaved round by round, to cancel drift on a busy machine, with thread-local
//!    recorders: a `NoopRecorder` (as good as none: every handle is a no-op), a
//!    Prometheus recorder as built by default (histograms rendered as summaries), and one
//!    with histogram buckets set. This is the figure to trust.
//!
//! Each Prometheus round ends with the recorder's upkeep (what a scrape does), counted in
//! the round: with the default summaries that is most of what metrics cost.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use redcluster::testkit::LocalCluster;
use redcluster::ClusterClient;

const CONCURRENCY: usize = 64;
const KEYS: usize = 10_000;
const VALUE: &[u8] = b"value-0123456789";

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time (user + system) of this process so far, if the platform tells.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line: 12 and 13 after the name.
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // The kernel's USER_HZ is 100 on every mainstream Linux.
    Some(Duration::from_millis(ticks * 10))
}

#[derive(Clone)]
struct Round {
    ops_per_sec: f64,
    cpu_us_per_op: Option<f64>,
}

/// One round of `secs` seconds; then, within the round's time, the recorder's upkeep
/// (what a scrape does: histogram samples folded into summaries or buckets).
async fn round(
    client: &ClusterClient,
    keys: &Arc<Vec<String>>,
    secs: u64,
    upkeep: Option<&PrometheusHandle>,
) -> Round {
    let stop = Arc::new(AtomicBool::new(false));
    let ops = Arc::new(AtomicU64::new(0));
    let cpu_before = cpu_time();
    let started = Instant::now();
    let workers: Vec<_> = (0..CONCURRENCY)
        .map(|w| {
            let client = client.clone();
            let keys = Arc::clone(keys);
            let stop = Arc::clone(&stop);
            let ops = Arc::clone(&ops);
            tokio::spawn(async move {
                let mut i = w * 997;
                let mut done = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = &keys[i % keys.len()];
                    let v: Option<bytes::Bytes> = client.get(key.as_str()).await.expect("GET");
                    assert!(v.is_some());
                    i += 1;
                    done += 1;
                }
                ops.fetch_add(done, Ordering::Relaxed);
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.expect("worker");
    }
    if let Some(handle) = upkeep {
        handle.run_upkeep();
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ops = ops.load(Ordering::Relaxed) as f64;
    let cpu_us_per_op = match (cpu_before, cpu_time()) {
        (Some(before), Some(after)) => Some((after - before).as_secs_f64() * 1e6 / ops),
        _ => None,
    };
    Round {
        ops_per_sec: ops / elapsed,
        cpu_us_per_op,
    }
}

/// Runs `rounds` rounds after a warm-up; the median round.
async fn phase(
    name: &str,
    client: &ClusterClient,
    keys: &Arc<Vec<String>>,
    rounds: u64,
    secs: u64,
    upkeep: Option<&PrometheusHandle>,
) -> Round {
    round(client, keys, 1, upkeep).await;
    let mut results = Vec::new();
    for r in 0..rounds {
        let res = round(client, keys, secs, upkeep).await;
        println!(
            "  {name:<20} round {}: {:>9.0} ops/s {}",
            r + 1,
            res.ops_per_sec,
            cpu(&res)
        );
        results.push(res);
    }
    median(results)
}

fn main() {
    let rounds = env_or("METRICS_BENCH_ROUNDS", 5).max(1);
    let secs = env_or("METRICS_BENCH_SECS", 2).max(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let cluster = LocalCluster::builder()
            .masters(3)
            .replicas_per_master(0)
            .start()
            .await
            .expect("start a local cluster (is redis-server 7 installed?)");
        let client = ClusterClient::connect(cluster.seeds())
            .await
            .expect("connect");
        let keys: Arc<Vec<String>> =
            Arc::new((0..KEYS).map(|i| format!("overhead:{i:06}")).collect());
        for chunk in keys.chunks(1000) {
            let mut p = client.pipeline();
            for k in chunk {
                p.set(k.as_str(), VALUE);
            }
            p.execute().await.expect("fill");
        }
        println!("GET, {CONCURRENCY} in flight, {rounds} rounds of {secs} s per phase");

        println!("1. sequential");
        let without = phase("no recorder", &client, &keys, rounds, secs, None).await;
        let handle = PrometheusBuilder::new()
            .install_recorder()
            .expect("install the Prometheus recorder");
        let with = phase(
            "prometheus recorder",
            &client,
            &keys,
            rounds,
            secs,
            Some(&handle),
        )
        .await;
        assert!(
            handle
                .render()
                .lines()
                .any(|l| l.starts_with("redis_commands_total")),
            "the recorder saw the commands"
        );

        println!("2. interleaved (thread-local recorders)");
        static NOOP: metrics::NoopRecorder = metrics::NoopRecorder;
        let summaries: &'static PrometheusRecorder =
            Box::leak(Box::new(PrometheusBuilder::new().build_recorder()));
        let buckets: &'static PrometheusRecorder = Box::leak(Box::new(
            PrometheusBuilder::new()
                .set_buckets(&[
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.1, 1.0,
                ])
                .expect("buckets")
                .build_recorder(),
        ));
        let variants: [(
            &str,
            &'static dyn metrics::Recorder,
            Option<PrometheusHandle>,
        ); 3] = [
            ("noop", &NOOP, None),
            ("prometheus", summaries, Some(summaries.handle())),
            ("prometheus+buckets", buckets, Some(buckets.handle())),
        ];
        let mut results: Vec<Vec<Round>> = variants.iter().map(|_| Vec::new()).collect();
        for (_, recorder, handle) in &variants {
            let _local = metrics::set_default_local_recorder(*recorder);
            round(&client, &keys, 1, handle.as_ref()).await;
        }
        for r in 0..rounds {
            let mut line = format!("  round {}:", r + 1);
            for (i, (name, recorder, handle)) in variants.iter().enumerate() {
                let res = {
                    let _local = metrics::set_default_local_recorder(*recorder);
                    round(&client, &keys, secs, handle.as_ref()).await
                };
                line += &format!(" {name} {:.0} ops/s {};", res.ops_per_sec, cpu(&res));
                results[i].push(res);
            }
            println!("{line}");
        }

        println!();
        report("sequential: no recorder", &without, "prometheus", &with);
        let names: Vec<&str> = variants.iter().map(|v| v.0).collect();
        let bests: Vec<Round> = results.iter().map(|r| best(r)).collect();
        let medians: Vec<Round> = results.into_iter().map(median).collect();
        for i in 1..names.len() {
            report(
                "interleaved, median: noop",
                &medians[0],
                names[i],
                &medians[i],
            );
        }
        for i in 1..names.len() {
            report("interleaved, best: noop", &bests[0], names[i], &bests[i]);
        }
        drop(client);
        drop(cluster);
    });
}

fn cpu(r: &Round) -> String {
    r.cpu_us_per_op
        .map_or("cpu n/a".to_string(), |c| format!("({c:.2} µs CPU/op)"))
}

/// The best round: highest throughput, and (separately) least CPU per op. On a busy
/// machine noise only ever makes a round worse, so the best rounds are the closest to
/// what the code costs.
fn best(rounds: &[Round]) -> Round {
    Round {
        ops_per_sec: rounds.iter().map(|r| r.ops_per_sec).fold(0.0, f64::max),
        cpu_us_per_op: rounds
            .iter()
            .filter_map(|r| r.cpu_us_per_op)
            .reduce(f64::min),
    }
}

/// The median round by throughput (and, separately, by CPU per op).
fn median(mut rounds: Vec<Round>) -> Round {
    let mid = rounds.len() / 2;
    let mut cpus: Vec<f64> = rounds.iter().filter_map(|r| r.cpu_us_per_op).collect();
    cpus.sort_by(f64::total_cmp);
    rounds.sort_by(|a, b| a.ops_per_sec.total_cmp(&b.ops_per_sec));
    Round {
        ops_per_sec: rounds[mid].ops_per_sec,
        cpu_us_per_op: cpus.get(cpus.len() / 2).copied(),
    }
}

fn report(base_name: &str, base: &Round, with_name: &str, with: &Round) {
    let diff = (with.ops_per_sec - base.ops_per_sec) / base.ops_per_sec * 100.0;
    println!(
        "{base_name}: {:.0} ops/s, {with_name}: {:.0} ops/s, throughput difference {diff:+.1} %",
        base.ops_per_sec, with.ops_per_sec
    );
    if let (Some(a), Some(b)) = (base.cpu_us_per_op, with.cpu_us_per_op) {
        println!(
            "  client CPU per GET: {a:.2} µs -> {b:.2} µs ({:+.1} %)",
            (b - a) / a * 100.0
        );
    }
}
