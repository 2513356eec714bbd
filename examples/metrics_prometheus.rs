//! Prometheus metrics: install `metrics-exporter-prometheus` with its HTTP listener, run
//! traffic for a few seconds, then scrape our own `/metrics` and print the `redis_*`
//! lines.
//!
//! The client reports through the `metrics` facade; any recorder works. The names follow
//! the seed's dashboard: `redis_commands_total{command,node,status}`,
//! `redis_command_duration_seconds{command,node}`, `redis_cluster_nodes{client,state}`, and more
//! (see the list in the crate-level docs' "Metrics and tracing" section, and the full
//! metric, label and event reference in `src/observe/mod.rs`).
//!
//! ```text
//! cargo run --example metrics_prometheus                      # spawns a local cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example metrics_prometheus
//! ```

#[path = "common/mod.rs"]
mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use redcluster::cmd;

/// 127.0.0.1:9091 when it is free, else any free port.
fn listen_addr() -> SocketAddr {
    let preferred = SocketAddr::from(([127, 0, 0, 1], 9091));
    let probe = TcpListener::bind(preferred)
        .or_else(|_| TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))))
        .expect("a free local port");
    probe.local_addr().expect("a bound address")
}

/// `GET /metrics` over a plain TCP connection (HTTP/1.0: no chunked encoding).
fn scrape(addr: SocketAddr) -> std::io::Result<String> {
    let mut stream = TcpStream::connect(addr)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The recorder first: the client registers its metrics with whatever is installed.
    let addr = listen_addr();
    PrometheusBuilder::new()
        .with_http_listener(addr)
        // Real histograms (buckets) for latencies, from 100 µs to 1 s.
        .set_buckets_for_metric(
            Matcher::Full("redis_command_duration_seconds".into()),
            &[
                0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1, 1.0,
            ],
        )?
        .set_buckets_for_metric(
            Matcher::Full("redis_pipeline_size".into()),
            &[1.0, 10.0, 100.0, 1000.0],
        )?
        .install()?;
    println!("Prometheus exporter listening on http://{addr}/metrics");

    let (client, _cluster) = common::connect().await?;

    // A few seconds of traffic: 16 tasks doing SET then GET on their own keys.
    let run_for = Duration::from_secs(3);
    let started = Instant::now();
    let tasks: Vec<_> = (0..16)
        .map(|t| {
            let client = client.clone();
            tokio::spawn(async move {
                let mut ops = 0u64;
                let mut i = 0u64;
                while started.elapsed() < run_for {
                    let key = format!("metrics-demo:{t}:{}", i % 100);
                    client.set(&key, i).await?;
                    let _: Option<u64> = client.get(&key).await?;
                    ops += 2;
                    i += 1;
                }
                Ok::<u64, redcluster::Error>(ops)
            })
        })
        .collect();
    let mut ops = 0;
    for task in tasks {
        ops += task.await??;
    }
    println!("{ops} commands in {:.1} s", started.elapsed().as_secs_f64());

    // An error reply (counted with status="error"), and a pipeline.
    client.set("metrics-demo:text", "not a number").await?;
    let err = client
        .query::<i64>(cmd("INCR").arg("metrics-demo:text"))
        .await
        .unwrap_err();
    println!("INCR on text -> {err}");
    let mut pipeline = client.pipeline();
    for i in 0..50 {
        pipeline.add(cmd("GET").arg(format!("metrics-demo:0:{i}")));
    }
    pipeline.execute().await?;

    // The node gauges are set at topology installs, refreshes and health checks (every
    // 10 s by default); refresh now so they show the connections the traffic opened.
    client.refresh_topology().await?;

    let response = tokio::task::spawn_blocking(move || scrape(addr)).await??;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default();
    println!("\nredis_* lines of http://{addr}/metrics (histogram buckets left out):\n");
    let mut buckets = 0;
    for line in body.lines().filter(|l| l.starts_with("redis_")) {
        if line.contains("_bucket{") {
            buckets += 1;
        } else {
            println!("{line}");
        }
    }
    println!("... and {buckets} histogram bucket lines");
    Ok(())
}
