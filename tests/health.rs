//! Health checks and the health snapshot, against a real cluster: latencies measured,
//! an idle frozen node's breaker opened and closed by PINGs alone, lowest-latency reads
//! spread over nodes that are about as fast, a killed master reported down and its
//! promoted replica reported as the primary.

mod support;

use std::time::Duration;

use redcluster::testkit::LocalCluster;
use redcluster::{
    BreakerState, CircuitBreakerConfig, ClusterClient, ClusterState, NodeRole, ReadFrom,
};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_checks_measure_latency_and_probe_an_idle_frozen_node() {
    let local = LocalCluster::builder()
        .node_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .health_check_interval(Some(Duration::from_millis(100)))
        .response_timeout(Duration::from_millis(200))
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(2)
                .open_for(Duration::from_millis(300)),
        )
        .build()
        .await
        .unwrap();
    let health = client.health();
    assert_eq!(health.slots_covered, 16384);
    assert_eq!(
        health
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::Primary)
            .count(),
        3
    );
    assert_eq!(
        health
            .nodes
            .iter()
            .filter(|n| n.role == NodeRole::Replica)
            .count(),
        3
    );
    assert!(health.is_ok());
    assert_eq!(health.state(), ClusterState::Ok);
    // Every node gets a latency from the PINGs, without any user traffic.
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.health().nodes.iter().any(|n| n.latency.is_none()) {
        assert!(Instant::now() < deadline, "{:?}", client.health());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let replica = local.replicas().await.unwrap()[0];
    let addr = local.node_addr(replica);
    let state = |client: &ClusterClient| client.health().node(&addr).map(|n| n.breaker);
    local.pause(replica).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(&client) != Some(BreakerState::Open) {
        assert!(
            Instant::now() < deadline,
            "breaker never opened: {:?}",
            client.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    local.resume(replica).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while state(&client) != Some(BreakerState::Closed) {
        assert!(
            Instant::now() < deadline,
            "breaker never closed: {:?}",
            client.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_reports_a_killed_master_down_then_its_promoted_replica_as_primary() {
    let node_timeout = Duration::from_secs(2);
    let local = LocalCluster::builder()
        .node_timeout(node_timeout)
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .health_check_interval(Some(Duration::from_millis(100)))
        .response_timeout(Duration::from_millis(500))
        .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(2))
        .build()
        .await
        .unwrap();
    let master = local.masters().await.unwrap()[0];
    let replica = local.replicas_of(master).await.unwrap()[0];
    let (master_addr, replica_addr) = (local.node_addr(master), local.node_addr(replica));
    // Connected (the health checks open connections to every node).
    let deadline = Instant::now() + Duration::from_secs(5);
    while !client
        .health()
        .node(&master_addr)
        .is_some_and(|n| n.connected)
    {
        assert!(Instant::now() < deadline, "{:?}", client.health());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let killed_at = std::time::SystemTime::now();
    local.kill(master).unwrap();
    // Seen down: disconnected, breaker open, the failure and its time recorded. The
    // cluster has not failed over yet (node timeout 2 s), so the node is still listed.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let health = client.health();
        let node = health.node(&master_addr).expect("still in the topology");
        if !node.connected && node.breaker == BreakerState::Open {
            assert_eq!(node.role, NodeRole::Primary);
            let (error, at) = node.last_error.clone().expect("a failure recorded");
            assert!(at >= killed_at, "{error} at {at:?}");
            assert!(!error.is_empty());
            assert!(!health.is_ok(), "a primary is down: {health:?}");
            assert_eq!(health.state(), ClusterState::Fail);
            break;
        }
        assert!(Instant::now() < deadline, "{health:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Within node timeout plus a few seconds the replica is promoted, and the client
    // reports it as the primary serving all slots again.
    let deadline = Instant::now() + node_timeout + Duration::from_secs(8);
    loop {
        let health = client.health();
        let promoted = health
            .node(&replica_addr)
            .is_some_and(|n| n.role == NodeRole::Primary && n.primary.is_none());
        if promoted && health.slots_covered == 16384 {
            // Served again, but the promoted primary has no replica yet.
            assert_eq!(health.state(), ClusterState::Degraded, "{health:?}");
            // The dead node no longer serves slots in the client's view.
            assert!(
                health
                    .node(&master_addr)
                    .is_none_or(|n| n.role != NodeRole::Primary),
                "{health:?}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not promoted in time: {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_calls(local: &LocalCluster, node: usize) -> u64 {
    support::info_field(local, node, "commandstats", "cmdstat_get:calls")
        .await
        .unwrap_or(0)
}

/// Reads under `ReadFrom::LowestLatency` go in turn to the nodes of the shard whose
/// latencies, as the client measured them, are within 1.5 times (plus 0.2 ms) of the
/// best: checked batch by batch against the client's own measurements, taken before and
/// after the batch (a batch during which a health check changed them is not judged).
/// Which loopback nodes are about as fast varies from run to run, and from moment to
/// moment on a loaded machine; when two or more are, the batch is split evenly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowest_latency_reads_go_in_turn_to_the_nodes_measured_about_as_fast() {
    let local = LocalCluster::builder()
        .masters(1)
        .replicas_per_master(2)
        .start()
        .await
        .unwrap();
    // Health checks far apart: most batches fall between two.
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::LowestLatency)
        .health_check_interval(Some(Duration::from_millis(500)))
        .build()
        .await
        .unwrap();
    client.set("ll", "v").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.health().nodes.iter().any(|n| n.latency.is_none()) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let nodes: Vec<usize> = local.nodes().iter().map(|n| n.index).collect();
    assert_eq!(nodes.len(), 3);
    // Each node's latency as the client has it, in the order of `nodes`.
    let latencies = || {
        let health = client.health();
        nodes
            .iter()
            .map(|&i| {
                let addr = local.node_addr(i);
                let node = health.nodes.iter().find(|n| n.addr == addr).unwrap();
                node.latency.unwrap()
            })
            .collect::<Vec<Duration>>()
    };
    const BATCH: u64 = 40;
    let (mut judged, mut spread) = (0, 0);
    for _ in 0..20 {
        let mut before = Vec::new();
        for &node in &nodes {
            before.push(get_calls(&local, node).await);
        }
        let measured = latencies();
        for _ in 0..BATCH {
            // Replication is asynchronous: a replica may not have the value at first.
            let _: Option<String> = client.get("ll").await.unwrap();
        }
        let same = latencies() == measured;
        let mut split = Vec::new();
        for (&node, before) in nodes.iter().zip(before) {
            split.push(get_calls(&local, node).await - before);
        }
        assert_eq!(split.iter().sum::<u64>(), BATCH, "{split:?}");
        if !same {
            continue;
        }
        judged += 1;
        let best = measured.iter().min().unwrap();
        let bound = best.mul_f64(1.5) + Duration::from_micros(200);
        let near: Vec<bool> = measured.iter().map(|l| *l <= bound).collect();
        for ((reads, near), latency) in split.iter().zip(&near).zip(&measured) {
            assert!(
                *near || *reads == 0,
                "{reads} reads to a node measured at {latency:?} (best {best:?}): {split:?}"
            );
        }
        let shares: Vec<u64> = split
            .iter()
            .zip(&near)
            .filter(|(_, n)| **n)
            .map(|(r, _)| *r)
            .collect();
        let (most, least) = (shares.iter().max().unwrap(), shares.iter().min().unwrap());
        assert!(
            most - least <= 1,
            "an uneven split over {measured:?}: {split:?}"
        );
        spread += usize::from(shares.len() >= 2);
        // Until a batch found two nodes near each other (on a loaded machine their
        // measurements can stay apart for a few batches), 20 at most.
        if judged >= 5 && spread >= 1 {
            break;
        }
    }
    println!("lowest latency: {judged} batches judged, {spread} spread over two nodes or more");
    assert!(
        judged >= 3,
        "health checks changed the latencies during every batch"
    );
    // Nodes within the bound of each other on loopback: the reads took turns.
    assert!(spread >= 1, "no batch went to two nodes or more");
}

/// A master that serves no slots yet (added ahead of a resharding) holds up no
/// request: its open breaker leaves the cluster `is_ok()`, not `Fail` (a readiness
/// probe on `is_ok()` took the service out for a node that held nothing). `health()`
/// says how many slots each primary serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_master_whose_breaker_is_open_fails_no_health_check() {
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .node_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    let spare = local.add_master().await.unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .health_check_interval(Some(Duration::from_millis(100)))
        // Slack for the nodes that serve: only the frozen one must fail its checks.
        .response_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_secs(1))
        .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(2))
        .build()
        .await
        .unwrap();
    let addr = local.node_addr(spare);
    let health = client.health();
    assert_eq!(health.node(&addr).map(|n| n.slots), Some(0), "{health:?}");
    let served: usize = health.nodes.iter().map(|n| n.slots).sum();
    assert_eq!(served, 16384, "{health:?}");
    local.pause(spare).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.health().node(&addr).map(|n| n.breaker) != Some(BreakerState::Open) {
        assert!(
            Instant::now() < deadline,
            "breaker never opened: {:?}",
            client.health()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let health = client.health();
    assert!(health.is_ok(), "{health:?}");
    assert_ne!(health.state(), ClusterState::Fail, "{health:?}");
    local.resume(spare).unwrap();
}

/// A node reached only by dedicated connections (a blocking consumer) is `connected`,
/// as the connections gauge counts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_reached_only_by_dedicated_connections_is_connected() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    // The node's shared connection goes (the node closes it); no health check or
    // request opens another.
    let node = local.masters().await.unwrap()[0];
    let idle = local.node_addr(node);
    kill_normal_clients(&local, node).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.health().node(&idle).map(|n| n.connected) != Some(false) {
        assert!(Instant::now() < deadline, "{:?}", client.health());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let key = (0..10_000)
        .map(|i| format!("queue:{i}"))
        .find(|k| client.node_for_key(k.as_bytes()).as_deref() == Some(idle.as_str()))
        .expect("a key of that node");
    let popped: Option<(String, String)> = client
        .query(redcluster::cmd("BLPOP").arg(key.as_str()).arg(0.01))
        .await
        .unwrap();
    assert_eq!(popped, None);
    let health = client.health();
    assert_eq!(
        health.node(&idle).map(|n| n.connected),
        Some(true),
        "{health:?}"
    );
    // The node closes that one too: an idle pooled connection found closed no longer
    // counts (it showed the node connected until a lease came to check it).
    kill_normal_clients(&local, node).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.health().node(&idle).map(|n| n.connected) != Some(false) {
        assert!(Instant::now() < deadline, "{:?}", client.health());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `CLIENT KILL TYPE normal` on node `node`: every client connection but the asker's.
async fn kill_normal_clients(local: &LocalCluster, node: usize) {
    let killed: i64 = redcluster::FromValue::from_value(
        local
            .connect_node(node)
            .await
            .unwrap()
            .send(
                redcluster::cmd("CLIENT")
                    .arg("KILL")
                    .arg("TYPE")
                    .arg("normal"),
            )
            .await
            .unwrap(),
    )
    .unwrap();
    assert!(killed >= 1, "{killed}");
}
