//! redcluster against redis-rs and fred on one local cluster (3 masters, 1 replica each,
//! all on 127.0.0.1), and a 1000-command pipeline against `redis-benchmark --cluster`.
//!
//! ```sh
//! cargo bench --bench compare
//! COMPARE_SECS=10 cargo bench --bench compare            # longer runs
//! COMPARE_CLIENTS=redcluster COMPARE_WORKLOADS=get/512 cargo bench --bench compare
//! ```
//!
//! Workloads: GET and SET of a 16-byte value with 1, 64 and 512 requests in flight (that
//! many tasks, each sending its next request when the last is answered), and a
//! pipeline of 1000 SETs spread over every slot, sent again as soon as it is answered.
//! Each runs for `COMPARE_SECS` seconds (default 3) after `COMPARE_WARMUP_SECS` (default
//! 0.5) of warm-up, for each client in turn. Per client and workload it prints requests
//! per second (commands per second for the pipeline), the 50th and 99th percentile of
//! the request (or whole pipeline) latency, and the client's CPU time per request: the
//! user + system time of this process, which runs nothing but the client under test
//! while it is measured (the `redis-server`s are other processes).
//!
//! Every client gets its natural fast configuration: redcluster as `connect` builds it;
//! redis-rs's multiplexed cluster connection, cloned into each task; fred's `Client`
//! with its default pipelining. redis-rs and fred get `TCP_NODELAY`, which redcluster
//! sets by default. redis-rs has no cross-slot pipeline (it refuses one with
//! `CROSSSLOT`), so its pipeline is what a user would write: one `route_pipeline` per
//! primary, sent at once, the commands grouped by the primary of their key (grouping
//! computed once up front, not in the timed loop).
//!
//! `COMPARE_ROUNDS=N` runs every client N times per workload, the clients taking turns,
//! and reports each client's median run (by requests per second): this machine's speed
//! drifts by up to 1.7x within minutes, and a single run of each can land on either side.
//! The summary also gives redcluster's ratio to the faster other client round by round
//! (median and range), which shows how far that drift moves the ratio.
//!
//! Optional filters for profiling: `COMPARE_CLIENTS` (comma-separated, of `redcluster`,
//! `redis-rs`, `fred`), `COMPARE_WORKLOADS` (of `get/N` and `set/N` for any N requests
//! in flight, and `pipeline/1000`), `COMPARE_REDIS_BENCHMARK=0` to skip
//! `redis-benchmark`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use redcluster::testkit::LocalCluster;

const KEYS: usize = 10_000;
const PIPELINE: usize = 1000;
const VALUE: &[u8] = b"value-0123456789";
const CLIENTS: [&str; 3] = ["redcluster", "redis-rs", "fred"];

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = std::result::Result<T, BoxError>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Get(usize),
    Set(usize),
    Pipeline,
}

impl Workload {
    fn all() -> Vec<Workload> {
        let mut all = Vec::new();
        for c in [1, 64, 512] {
            all.push(Workload::Get(c));
        }
        for c in [1, 64, 512] {
            all.push(Workload::Set(c));
        }
        all.push(Workload::Pipeline);
        all
    }

    /// `get/N` or `set/N` for any N, or `pipeline/1000`.
    fn parse(name: &str) -> Option<Workload> {
        if name == Workload::Pipeline.name() {
            return Some(Workload::Pipeline);
        }
        let (kind, n) = name.split_once('/')?;
        let n: usize = n.parse().ok().filter(|&n| n > 0)?;
        match kind {
            "get" => Some(Workload::Get(n)),
            "set" => Some(Workload::Set(n)),
            _ => None,
        }
    }

    fn name(self) -> String {
        match self {
            Workload::Get(c) => format!("get/{c}"),
            Workload::Set(c) => format!("set/{c}"),
            Workload::Pipeline => format!("pipeline/{PIPELINE}"),
        }
    }

    fn concurrency(self) -> usize {
        match self {
            Workload::Get(c) | Workload::Set(c) => c,
            Workload::Pipeline => 1,
        }
    }
}

/// One client under test; cloned into every task.
#[derive(Clone)]
enum Client {
    Red(redcluster::ClusterClient),
    RedisRs(redis::cluster_async::ClusterConnection),
    Fred(fred::prelude::Client),
}

/// The pipeline's keys, and for redis-rs the same keys grouped by the primary that
/// serves them.
struct PipelineKeys {
    keys: Vec<String>,
    by_node: Vec<(String, u16, Vec<usize>)>,
}

impl Client {
    async fn get(&mut self, key: &str) -> Res<Option<Bytes>> {
        Ok(match self {
            Client::Red(c) => c.get(key).await?,
            Client::RedisRs(c) => redis::AsyncCommands::get(c, key).await?,
            Client::Fred(c) => fred::prelude::KeysInterface::get(c, key).await?,
        })
    }

    async fn set(&mut self, key: &str) -> Res<()> {
        match self {
            Client::Red(c) => c.set(key, VALUE).await?,
            Client::RedisRs(c) => redis::AsyncCommands::set(c, key, VALUE).await?,
            Client::Fred(c) => {
                fred::prelude::KeysInterface::set(c, key, VALUE, None, None, false).await?
            }
        }
        Ok(())
    }

    /// Sends the 1000 SETs as one pipeline; returns how many replies came back.
    async fn pipeline(&mut self, p: &PipelineKeys) -> Res<usize> {
        match self {
            Client::Red(c) => {
                let mut pipe = c.pipeline();
                for k in &p.keys {
                    pipe.set(k.as_str(), VALUE);
                }
                Ok(pipe.execute().await?.len())
            }
            Client::RedisRs(c) => {
                let parts = p.by_node.iter().map(|(host, port, idx)| {
                    let mut pipe = redis::pipe();
                    for &i in idx {
                        pipe.set(p.keys[i].as_str(), VALUE);
                    }
                    let mut conn = c.clone();
                    let route = redis::cluster_routing::SingleNodeRoutingInfo::ByAddress {
                        host: host.clone(),
                        port: *port,
                    };
                    async move { conn.route_pipeline(pipe, 0, idx.len(), route).await }
                });
                let mut n = 0;
                for part in join_all(parts).await {
                    let replies = part?;
                    // `route_pipeline` hands error replies back as values: a failed SET
                    // is no SET done.
                    if let Some(e) = replies
                        .iter()
                        .find(|r| matches!(r, redis::Value::ServerError(_)))
                    {
                        return Err(format!("pipeline command failed: {e:?}").into());
                    }
                    n += replies.len();
                }
                Ok(n)
            }
            Client::Fred(c) => {
                let pipe = c.pipeline();
                for k in &p.keys {
                    let () = fred::prelude::KeysInterface::set(
                        &pipe,
                        k.as_str(),
                        VALUE,
                        None,
                        None,
                        false,
                    )
                    .await?;
                }
                let replies: Vec<fred::prelude::Value> = pipe.all().await?;
                Ok(replies.len())
            }
        }
    }
}

/// What one measured run gave.
struct Outcome {
    /// Requests (pipeline: commands) answered.
    ops: u64,
    elapsed: Duration,
    /// Latency of each request (pipeline: of each whole pipeline), sorted.
    latencies: Vec<u64>,
    cpu: Duration,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let i = ((self.latencies.len() as f64 * p) as usize).min(self.latencies.len() - 1);
        Duration::from_nanos(self.latencies[i])
    }

    fn cpu_per_op(&self) -> Duration {
        self.cpu / u32::try_from(self.ops.max(1)).unwrap_or(u32::MAX)
    }
}

/// User + system CPU time of this process (all its threads), from `/proc/self/stat`.
struct CpuClock {
    tick: Duration,
}

impl CpuClock {
    fn new() -> CpuClock {
        let hz = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .filter(|&hz| hz > 0)
            .unwrap_or(100);
        CpuClock {
            tick: Duration::from_nanos(1_000_000_000 / hz),
        }
    }

    fn now(&self) -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").expect("read /proc/self/stat");
        // Fields after the command name, which is in parentheses and may hold spaces:
        // state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 =
            fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
        self.tick * u32::try_from(ticks).expect("ticks")
    }
}

struct Env {
    secs: Duration,
    /// Runs per client and workload; the median (by requests per second) is reported.
    rounds: usize,
    warmup: Duration,
    clients: Vec<&'static str>,
    workloads: Vec<Workload>,
    redis_benchmark: bool,
}

impl Env {
    fn read() -> Env {
        let secs = |name: &str, default: f64| {
            let v = std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(default);
            Duration::from_secs_f64(v.max(0.0))
        };
        let list = |name: &str| -> Option<Vec<String>> {
            std::env::var(name)
                .ok()
                .map(|v| v.split(',').map(|s| s.trim().to_string()).collect())
        };
        let clients = match list("COMPARE_CLIENTS") {
            Some(names) => CLIENTS
                .into_iter()
                .filter(|c| names.iter().any(|n| n == c))
                .collect(),
            None => CLIENTS.to_vec(),
        };
        let workloads = match list("COMPARE_WORKLOADS") {
            Some(names) => names.iter().filter_map(|n| Workload::parse(n)).collect(),
            None => Workload::all(),
        };
        Env {
            secs: secs("COMPARE_SECS", 3.0),
            rounds: std::env::var("COMPARE_ROUNDS")
                .ok()
                .and_then(|r| r.parse().ok())
                .filter(|&r| r > 0)
                .unwrap_or(1),
            warmup: secs("COMPARE_WARMUP_SECS", 0.5),
            clients,
            workloads,
            redis_benchmark: std::env::var("COMPARE_REDIS_BENCHMARK").as_deref() != Ok("0"),
        }
    }
}

/// Runs `workload` on `client` for `duration`: `concurrency` tasks, each sending its next
/// request as soon as the previous one is answered.
async fn run(
    client: &Client,
    workload: Workload,
    duration: Duration,
    keys: &Arc<Vec<String>>,
    pipe: &Arc<PipelineKeys>,
    clock: &CpuClock,
) -> Res<Outcome> {
    let n = workload.concurrency();
    let cpu_start = clock.now();
    let start = Instant::now();
    let end = start + duration;
    let tasks: Vec<_> = (0..n)
        .map(|t| {
            let mut client = client.clone();
            let keys = Arc::clone(keys);
            let pipe = Arc::clone(pipe);
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(4096);
                let mut ops = 0u64;
                // Each task walks the keys from its own offset.
                let mut k = t * (KEYS / n);
                let mut now = Instant::now();
                while now < end {
                    match workload {
                        Workload::Get(_) => {
                            let v = client.get(&keys[k]).await?;
                            if v.is_none() {
                                return Err(BoxError::from(format!("{} is missing", keys[k])));
                            }
                            ops += 1;
                        }
                        Workload::Set(_) => {
                            client.set(&keys[k]).await?;
                            ops += 1;
                        }
                        Workload::Pipeline => {
                            let replies = client.pipeline(&pipe).await?;
                            if replies != PIPELINE {
                                return Err(BoxError::from(format!("{replies} replies")));
                            }
                            ops += PIPELINE as u64;
                        }
                    }
                    let done = Instant::now();
                    latencies.push(u64::try_from((done - now).as_nanos()).unwrap_or(u64::MAX));
                    now = done;
                    k = (k + 1) % KEYS;
                }
                Ok::<_, BoxError>((ops, latencies))
            })
        })
        .collect();
    let mut ops = 0;
    let mut latencies = Vec::new();
    for task in tasks {
        let (o, l) = task.await??;
        ops += o;
        latencies.extend(l);
    }
    let elapsed = start.elapsed();
    let cpu = clock.now().saturating_sub(cpu_start);
    latencies.sort_unstable();
    Ok(Outcome {
        ops,
        elapsed,
        latencies,
        cpu,
    })
}

async fn connect(name: &str, seeds: &[String]) -> Res<Client> {
    Ok(match name {
        "redcluster" => Client::Red(redcluster::ClusterClient::connect(seeds).await?),
        "redis-rs" => {
            let nodes: Vec<String> = seeds.iter().map(|s| format!("redis://{s}")).collect();
            let client = redis::cluster::ClusterClient::builder(nodes)
                .tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true))
                .build()?;
            Client::RedisRs(client.get_async_connection().await?)
        }
        "fred" => {
            use fred::prelude::{Builder, ClientLike, Config, Server, ServerConfig, TcpConfig};
            let hosts = seeds
                .iter()
                .map(|s| {
                    let (host, port) = s.rsplit_once(':').expect("host:port");
                    Ok(Server::new(host, port.parse::<u16>()?))
                })
                .collect::<Res<Vec<Server>>>()?;
            let config = Config {
                server: ServerConfig::Clustered {
                    hosts,
                    policy: Default::default(),
                },
                ..Config::default()
            };
            let client = Builder::from_config(config)
                .with_connection_config(|c| {
                    c.tcp = TcpConfig {
                        nodelay: Some(true),
                        ..TcpConfig::default()
                    };
                })
                .build()?;
            client.init().await?;
            Client::Fred(client)
        }
        other => return Err(format!("unknown client {other}").into()),
    })
}

/// What `redis-benchmark` runs: SETs of the pipeline's 16-byte value over 10,000 random
/// keys (every slot), 16 at a time per connection, for about a second.
const REDIS_BENCHMARK: &str = "--cluster -P 16 -t set -d 16 -r 10000 -n 1000000 -q";

/// `redis-benchmark` ([`REDIS_BENCHMARK`]) against the cluster: its SET requests per
/// second, or why there is none.
fn redis_benchmark(port: &str) -> std::result::Result<f64, String> {
    let out = std::process::Command::new("redis-benchmark")
        .args(["-h", "127.0.0.1", "-p", port])
        .args(REDIS_BENCHMARK.split(' '))
        .output()
        .map_err(|e| format!("redis-benchmark not run: {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout).replace('\r', "\n");
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("SET: "))
        .filter_map(|l| l.split_once(" requests per second"))
        .filter_map(|(n, _)| n.trim().parse::<f64>().ok())
        .next_back()
        .ok_or_else(|| {
            format!(
                "no SET rate in redis-benchmark's output: {} {}",
                text.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )
        })
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!("{cores} cores, {cpu}; load average before the run: {load}")
}

fn main() -> Res<()> {
    let env = Env::read();
    let clock = CpuClock::new();
    println!("machine: {}", machine());
    println!(
        "{} s per run after {} s of warm-up; tokio multi-thread runtime, 2 workers",
        env.secs.as_secs_f64(),
        env.warmup.as_secs_f64()
    );
    if env.rounds > 1 {
        println!(
            "{} rounds per client and workload, clients in turn; tables show each client's median round",
            env.rounds
        );
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let cluster = rt.block_on(
        LocalCluster::builder()
            .masters(3)
            .replicas_per_master(1)
            .start(),
    )?;
    let seeds = cluster.seeds();
    println!("cluster: 3 masters x 1 replica at {}", seeds.join(" "));

    let keys: Arc<Vec<String>> = Arc::new((0..KEYS).map(|i| format!("bench:{i:06}")).collect());
    let mut results: BTreeMap<(usize, usize), Outcome> = BTreeMap::new();
    // Every round's ops/s, in round order, for the ratios round by round.
    let mut round_rates: BTreeMap<(usize, usize), Vec<f64>> = BTreeMap::new();
    let bench_rate = rt.block_on(async {
        let mut clients = Vec::new();
        for name in &env.clients {
            clients.push((*name, connect(name, &seeds).await?));
        }
        // GETs find a value; the pipeline's keys grouped by primary for redis-rs.
        let red = redcluster::ClusterClient::connect(&seeds).await?;
        for chunk in keys.chunks(PIPELINE) {
            let mut p = red.pipeline();
            for k in chunk {
                p.set(k.as_str(), VALUE);
            }
            p.execute().await?;
        }
        let pipe_keys: Vec<String> = (0..PIPELINE).map(|i| format!("pipe:{i:06}")).collect();
        let mut by_node: BTreeMap<String, Vec<usize>> = BTreeMap::new();
        for (i, k) in pipe_keys.iter().enumerate() {
            let node = red
                .node_for_key(k.as_bytes())
                .ok_or("slot map incomplete")?;
            by_node.entry(node).or_default().push(i);
        }
        let by_node = by_node
            .into_iter()
            .map(|(addr, idx)| {
                let (host, port) = addr.rsplit_once(':').ok_or("bad address")?;
                Ok((host.to_string(), port.parse::<u16>()?, idx))
            })
            .collect::<Res<Vec<_>>>()?;
        drop(red);
        let pipe = Arc::new(PipelineKeys {
            keys: pipe_keys,
            by_node,
        });

        let port = seeds[0].rsplit_once(':').map_or("", |(_, p)| p).to_string();
        // `redis-benchmark`'s rate in every round of the pipeline, right after the
        // clients' own turns, or why there is none.
        let mut bench_rates: Option<std::result::Result<Vec<f64>, String>> = None;
        // Each workload for each client in turn, round after round, so drift in the
        // machine's load spreads over all clients; each keeps its median round.
        for (w, &workload) in env.workloads.iter().enumerate() {
            let mut rounds: Vec<Vec<Outcome>> = clients.iter().map(|_| Vec::new()).collect();
            for _ in 0..env.rounds {
                for (c, (name, client)) in clients.iter().enumerate() {
                    if !env.warmup.is_zero() {
                        run(client, workload, env.warmup, &keys, &pipe, &clock).await?;
                    }
                    let outcome = run(client, workload, env.secs, &keys, &pipe, &clock).await?;
                    println!(
                        "  {:<14} {:<10} {:>12.0} ops/s  p50 {:>9}  p99 {:>9}  cpu {:>6.2} us/op",
                        workload.name(),
                        name,
                        outcome.rate(),
                        fmt_dur(outcome.percentile(0.50)),
                        fmt_dur(outcome.percentile(0.99)),
                        outcome.cpu_per_op().as_secs_f64() * 1e6,
                    );
                    rounds[c].push(outcome);
                }
                if workload == Workload::Pipeline && env.redis_benchmark {
                    let rate = redis_benchmark(&port);
                    if let Ok(rate) = &rate {
                        println!("  {:<14} {:<10} {rate:>12.0} ops/s", "redis-benchmark", "");
                    }
                    let all = bench_rates.get_or_insert(Ok(Vec::new()));
                    match (all, rate) {
                        (Ok(all), Ok(rate)) => all.push(rate),
                        (all, Err(why)) => *all = Err(why),
                        (Err(_), Ok(_)) => {}
                    }
                }
            }
            for (c, mut outcomes) in rounds.into_iter().enumerate() {
                round_rates.insert((w, c), outcomes.iter().map(Outcome::rate).collect());
                outcomes.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
                let median = outcomes.swap_remove(outcomes.len() / 2);
                results.insert((w, c), median);
            }
        }
        drop(clients);
        Ok::<_, BoxError>(bench_rates)
    })?;

    println!();
    println!("{}", table(&env, &results));
    println!(
        "{}",
        ratios(&env, &results, &round_rates, bench_rate.as_ref())
    );
    drop(cluster);
    Ok(())
}

fn fmt_dur(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us >= 10_000.0 {
        format!("{:.1} ms", us / 1000.0)
    } else {
        format!("{us:.0} us")
    }
}

/// A Markdown table with every column padded to its widest cell; `right` marks the
/// columns aligned right (numbers).
fn markdown(header: &[&str], right: &[bool], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::from("|");
        for ((cell, w), r) in cells.iter().zip(&widths).zip(right) {
            if *r {
                let _ = write!(s, " {cell:>w$} |");
            } else {
                let _ = write!(s, " {cell:<w$} |");
            }
        }
        s.push('\n');
        s
    };
    let mut s = line(header.iter().map(|h| h.to_string()).collect());
    s += &line(
        widths
            .iter()
            .zip(right)
            .map(|(w, r)| {
                if *r {
                    format!("{}:", "-".repeat(w - 1))
                } else {
                    "-".repeat(*w)
                }
            })
            .collect(),
    );
    for row in rows {
        s += &line(row.clone());
    }
    s
}

fn table(env: &Env, results: &BTreeMap<(usize, usize), Outcome>) -> String {
    let mut rows = Vec::new();
    for (w, workload) in env.workloads.iter().enumerate() {
        for (c, name) in env.clients.iter().enumerate() {
            let Some(o) = results.get(&(w, c)) else {
                continue;
            };
            rows.push(vec![
                workload.name(),
                name.to_string(),
                format!("{:.0}", o.rate()),
                fmt_dur(o.percentile(0.50)),
                fmt_dur(o.percentile(0.99)),
                format!("{:.2} us", o.cpu_per_op().as_secs_f64() * 1e6),
            ]);
        }
    }
    markdown(
        &["workload", "client", "ops/s", "p50", "p99", "client CPU/op"],
        &[false, false, true, true, true, true],
        &rows,
    )
}

fn ratios(
    env: &Env,
    results: &BTreeMap<(usize, usize), Outcome>,
    round_rates: &BTreeMap<(usize, usize), Vec<f64>>,
    bench_rates: Option<&std::result::Result<Vec<f64>, String>>,
) -> String {
    let client = |name: &str| env.clients.iter().position(|c| *c == name);
    let rates = |w: usize, name: &str| client(name).and_then(|c| round_rates.get(&(w, c)));
    // redcluster's ops/s over the faster other's in the same round: the clients of one
    // round ran a few seconds apart, so this shows how far the machine's drift moves the
    // ratio, which the ratio of medians hides.
    let by_round = |w: usize| -> String {
        let Some(red) = rates(w, "redcluster") else {
            return "-".into();
        };
        let per_round: Vec<f64> = (0..red.len())
            .filter_map(|i| {
                let best = ["redis-rs", "fred"]
                    .into_iter()
                    .filter_map(|n| rates(w, n)?.get(i).copied())
                    .max_by(f64::total_cmp)?;
                Some(red[i] / best)
            })
            .collect();
        if per_round.len() < 2 {
            return "-".into();
        }
        spread(&per_round, |x| format!("{x:.2}x"))
    };
    let find = |w: usize, name: &str| client(name).and_then(|c| results.get(&(w, c)));
    let yes = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut rows = Vec::new();
    for (w, workload) in env.workloads.iter().enumerate() {
        let Some(red) = find(w, "redcluster") else {
            continue;
        };
        let best = ["redis-rs", "fred"]
            .into_iter()
            .filter_map(|n| find(w, n).map(|o| (n, o)))
            .max_by(|a, b| a.1.rate().total_cmp(&b.1.rate()));
        let Some((best_name, best)) = best else {
            continue;
        };
        let rate = red.rate() / best.rate();
        let cpu = red.cpu_per_op().as_secs_f64() / best.cpu_per_op().as_secs_f64();
        let (p50, goal) = match *workload {
            Workload::Get(1) | Workload::Set(1) => match find(w, "redis-rs") {
                Some(r) => {
                    let p = red.percentile(0.5).as_secs_f64() / r.percentile(0.5).as_secs_f64();
                    (
                        format!("{p:.2}"),
                        format!("p50 <= redis-rs: {}", yes(p <= 1.0)),
                    )
                }
                None => ("-".into(), "-".into()),
            },
            Workload::Get(_) | Workload::Set(_) => (
                "-".into(),
                format!(
                    "ops/s >= 2x: {}; CPU/op <= 0.5x: {}",
                    yes(rate >= 2.0),
                    yes(cpu <= 0.5)
                ),
            ),
            Workload::Pipeline => ("-".into(), "see redis-benchmark below".into()),
        };
        rows.push(vec![
            workload.name(),
            best_name.to_string(),
            format!("{rate:.2}x"),
            by_round(w),
            format!("{cpu:.2}x"),
            p50,
            goal,
        ]);
    }
    let mut s = String::from(
        "redcluster against the faster (by ops/s) of redis-rs and fred, and its p50 against redis-rs's at concurrency 1:\n",
    );
    s += &markdown(
        &[
            "workload",
            "faster other",
            "ops/s ratio",
            "round by round: median (range)",
            "CPU/op ratio",
            "p50 ratio vs redis-rs",
            "goal",
        ],
        &[false, false, true, true, true, true, false],
        &rows,
    );
    if let Some(bench_rates) = bench_rates {
        let w = env.workloads.iter().position(|w| *w == Workload::Pipeline);
        let red = w.and_then(|w| Some((find(w, "redcluster")?, rates(w, "redcluster")?)));
        match (bench_rates, red) {
            (Ok(bench), _) if bench.is_empty() => {}
            (Ok(bench), Some((red, red_rounds))) => {
                let median = median(bench);
                let share = red.rate() / median;
                // Each round's pipeline rate over the `redis-benchmark` run right after it.
                let shares: Vec<f64> = red_rounds.iter().zip(bench).map(|(r, b)| r / b).collect();
                let _ = writeln!(
                    s,
                    "\nredis-benchmark {REDIS_BENCHMARK}: {median:.0} SET/s (median of {} runs, one per round); redcluster {PIPELINE}-command pipeline: {:.0} commands/s = {:.0}% of it, round by round {} (goal >= 80%: {})",
                    bench.len(),
                    red.rate(),
                    100.0 * share,
                    spread(&shares, |x| format!("{:.0}%", 100.0 * x)),
                    yes(share >= 0.8)
                );
            }
            (Ok(bench), None) => {
                let _ = writeln!(
                    s,
                    "\nredis-benchmark {REDIS_BENCHMARK}: {:.0} SET/s (median of {} runs)",
                    median(bench),
                    bench.len()
                );
            }
            (Err(why), _) => {
                let _ = writeln!(s, "\nredis-benchmark skipped: {why}");
            }
        }
    }
    s
}

/// The middle value (the upper of the two middle ones for an even count).
fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

/// `median (lowest-highest)` of `values`, each shown by `show`.
fn spread(values: &[f64], show: impl Fn(f64) -> String) -> String {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    match (sorted.first(), sorted.last()) {
        (Some(&low), Some(&high)) => format!(
            "{} ({}-{})",
            show(sorted[sorted.len() / 2]),
            show(low),
            show(high)
        ),
        _ => "-".into(),
    }
}
