//! TLS: connect to a TLS-only cluster with mutual TLS and a password, then SET/GET across
//! slots and run a pipeline.
//!
//! ```text
//! cargo run --example tls        # spawns a local TLS-only 6-node cluster with its own CA
//! ```
//!
//! Against the production setup of `docker/` (TLS only on 6380, published on the host as
//! 127.0.0.1:6450..6455, client certificates required), from the repository root:
//!
//! ```text
//! REDIS_CLUSTER_NODES=rediss://127.0.0.1:6450,rediss://127.0.0.1:6451 \
//! REDIS_PASSWORD="$REDIS_PASSWORD" \
//! REDIS_TLS_CA=docker/tls/ca.crt \
//! REDIS_TLS_CERT=docker/tls/client.crt REDIS_TLS_KEY=docker/tls/client.key \
//!     cargo run --example tls
//! ```
//!
//! (`REDIS_TLS=true` does the same as `rediss://` seeds.) The nodes announce themselves as
//! `redis-cluster-N:6380`, which only resolves inside the Compose network: when the seeds
//! are on 127.0.0.1 the example maps those names to the published ports.

use redcluster::testkit::LocalCluster;
use redcluster::{cmd, key_slot, AddressRemap, ClusterClient, TlsConfig};

const PASSWORD: &str = "example-password";

#[tokio::main]
async fn main() -> redcluster::Result<()> {
    let (client, _cluster) = connect().await?;
    println!("known nodes: {}", client.known_nodes().join(", "));

    for (key, value) in [
        ("tls:user:1000", "Ada"),
        ("tls:user:1001", "Grace"),
        ("{tls:user:1000}:email", "ada@example.com"),
    ] {
        client.set(key, value).await?;
        let read: Option<String> = client.get(key).await?;
        println!(
            "SET/GET over TLS {key:<22} slot {:>5} on {:<16} -> {}",
            key_slot(key.as_bytes()),
            client.node_for_key(key.as_bytes()).unwrap_or_default(),
            read.as_deref().unwrap_or("(nil)")
        );
    }

    let mut pipeline = client.pipeline();
    for i in 0..10 {
        pipeline.add(cmd("INCR").arg(format!("tls:counter:{i}")));
    }
    let replies = pipeline.execute().await?;
    println!(
        "pipeline of {} INCRs across slots -> {replies:?}",
        replies.len()
    );
    Ok(())
}

/// The client, and the local cluster when one was spawned (keep it alive: dropping it
/// stops the servers).
async fn connect() -> redcluster::Result<(ClusterClient, Option<LocalCluster>)> {
    if let Ok(nodes) = std::env::var("REDIS_CLUSTER_NODES") {
        println!("using the cluster in REDIS_CLUSTER_NODES (REDIS_TLS_* for TLS)");
        let mut builder = ClusterClient::builder_from_env()?;
        let local = nodes
            .split(',')
            .map(|s| s.trim().trim_start_matches("rediss://"))
            .all(|s| s.starts_with("127.0.0.1:") || s.starts_with("localhost:"));
        // A map the user gave (`REDIS_ADDRESS_REMAP`) is theirs; without one, the
        // docker/ prod cluster's: redis-cluster-N:6380 is published as 127.0.0.1:645N.
        let remapped = std::env::var_os("REDIS_ADDRESS_REMAP").is_some();
        if local && !remapped {
            builder = builder.address_remap(AddressRemap::from_map((0..6).map(|n| {
                (
                    format!("redis-cluster-{n}:6380"),
                    format!("127.0.0.1:645{n}"),
                )
            })));
        }
        return Ok((builder.build().await?, None));
    }

    println!("spawning a local TLS-only 6-node cluster (3 masters, 3 replicas) ...");
    let cluster = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(1)
        .tls(true)
        .config("requirepass", PASSWORD)
        .start()
        .await?;
    let ca = cluster.ca_cert_path().expect("a TLS cluster has a CA");
    let (cert, key) = (
        cluster
            .client_cert_path()
            .expect("and a client certificate"),
        cluster.client_key_path().expect("and its key"),
    );
    println!("cluster up; CA {}", ca.display());

    // What an application does with its own files: trust the CA, present a certificate.
    let tls = TlsConfig::new()
        .ca_cert_file(ca)?
        .client_cert_files(cert, key)?;
    let seeds: Vec<String> = cluster
        .seeds()
        .iter()
        .map(|s| format!("rediss://{s}"))
        .collect();
    let client = ClusterClient::builder()
        .nodes(&seeds)
        .password(PASSWORD)
        .tls(tls)
        .build()
        .await?;
    Ok((client, Some(cluster)))
}
