//! Metrics and tracing against a real local cluster.
//!
//! Each test runs the client on a current-thread runtime, so every task of the client
//! runs on the test's own thread: a thread-local metrics recorder
//! (`metrics::set_default_local_recorder`) and a thread-local tracing subscriber
//! (`tracing::subscriber::set_default`) see everything the client does, and the tests
//! can run in parallel without sharing a global recorder.

mod support;

use std::collections::HashMap;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use metrics_util::MetricKind;
use redcluster::testkit::LocalCluster;
use redcluster::{cmd, key_slot, ClusterClient, Durability, ScanOptions, Value};
use support::capture::Capture;
use support::{master_other_than, other_master};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// A recorder that lives for the whole process, so its address is never reused.
fn recorder() -> &'static DebuggingRecorder {
    Box::leak(Box::new(DebuggingRecorder::new()))
}

#[derive(Debug)]
struct Metric {
    kind: MetricKind,
    name: String,
    labels: Vec<(String, String)>,
    value: DebugValue,
}

impl Metric {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn matches(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.name == name && labels.iter().all(|(k, v)| self.label(k) == Some(v))
    }

    /// A counter's value, or a histogram's sample count.
    fn count(&self) -> u64 {
        match &self.value {
            DebugValue::Counter(n) => *n,
            DebugValue::Histogram(samples) => samples.len() as u64,
            DebugValue::Gauge(_) => panic!("{} is a gauge", self.name),
        }
    }

    fn gauge(&self) -> f64 {
        match &self.value {
            DebugValue::Gauge(v) => v.0,
            _ => panic!("{} is not a gauge", self.name),
        }
    }
}

/// Runs `test` on a fresh runtime, against a fresh cluster of 3 masters, with a fresh
/// recorder installed for this thread; `test` gets the cluster and the recorder's
/// snapshotter.
fn on_a_recorded_cluster<F>(test: impl FnOnce(LocalCluster, Snapshotter) -> F)
where
    F: std::future::Future<Output = ()>,
{
    on_a_recorded_cluster_with(0, test);
}

/// [`on_a_recorded_cluster`] with `replicas` replicas per master.
fn on_a_recorded_cluster_with<F>(replicas: usize, test: impl FnOnce(LocalCluster, Snapshotter) -> F)
where
    F: std::future::Future<Output = ()>,
{
    let recorder = recorder();
    let snapshotter = recorder.snapshotter();
    let _recorder = metrics::set_default_local_recorder(recorder);
    runtime().block_on(async {
        let local = support::cluster(3, replicas).await;
        test(local, snapshotter).await;
    });
}

/// Everything recorded since the last snapshot: a snapshot drains the recorder (counters
/// and gauges read as 0 afterwards), so each test takes one, at the end.
fn collect(snapshotter: &Snapshotter) -> Vec<Metric> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| {
            let kind = key.kind();
            let key = key.key();
            Metric {
                kind,
                name: key.name().to_string(),
                labels: key
                    .labels()
                    .map(|l| (l.key().to_string(), l.value().to_string()))
                    .collect(),
                value,
            }
        })
        .collect()
}

/// Sum of counters (or histogram sample counts) named `name` with these labels.
fn sum(metrics: &[Metric], name: &str, labels: &[(&str, &str)]) -> u64 {
    metrics
        .iter()
        .filter(|m| m.matches(name, labels))
        .map(Metric::count)
        .sum()
}

fn gauge(metrics: &[Metric], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .iter()
        .find(|m| m.matches(name, labels) && m.kind == MetricKind::Gauge)
        .map(Metric::gauge)
}

/// Fails if any label value contains one of `secrets` (case-insensitive).
fn assert_no_label_contains(metrics: &[Metric], secrets: &[&str]) {
    for m in metrics {
        for (k, v) in &m.labels {
            for s in secrets {
                assert!(
                    !v.to_ascii_lowercase().contains(&s.to_ascii_lowercase()),
                    "label {k}={v:?} of {} contains {s:?}",
                    m.name
                );
            }
        }
    }
}

#[test]
fn pipelined_commands_are_counted_once_each_by_status() {
    on_a_recorded_cluster(|local, snapshotter| async move {
        let client = ClusterClient::connect(local.seeds()).await.unwrap();
        const SETS: usize = 50;
        let mut p = client.pipeline();
        for i in 0..SETS {
            p.set(format!("obs-pipe:{i}"), i.to_string());
        }
        p.get("obs-pipe:0").get("obs-pipe:1");
        // An error reply in the middle of a node's batch.
        p.add(cmd("LPUSH").arg("obs-pipe:2").arg("x"));
        let results = p.execute_each().await;
        assert_eq!(results.len(), SETS + 3);
        assert!(results[SETS + 2].is_err(), "{:?}", results[SETS + 2]);
        let metrics = collect(&snapshotter);
        let total = "redis_commands_total";
        assert_eq!(
            sum(&metrics, total, &[("command", "set"), ("status", "ok")]),
            SETS as u64
        );
        assert_eq!(
            sum(&metrics, total, &[("command", "get"), ("status", "ok")]),
            2
        );
        assert_eq!(
            sum(
                &metrics,
                total,
                &[("command", "lpush"), ("status", "error")]
            ),
            1
        );
        let duration = "redis_command_duration_seconds";
        assert_eq!(sum(&metrics, duration, &[("command", "set")]), SETS as u64);
        assert_eq!(sum(&metrics, duration, &[("command", "get")]), 2);
    });
}

#[test]
fn commands_are_counted_per_command_node_and_status() {
    on_a_recorded_cluster(|local, snapshotter| async move {
        let client = ClusterClient::connect(local.seeds()).await.unwrap();
        const SETS: usize = 60;
        const GETS: usize = 40;
        let key = |i: usize| format!("obs-secret-key:{i}");
        let value = |i: usize| format!("obs-secret-value-{i}");
        let mut sets_per_node: HashMap<String, u64> = HashMap::new();
        for i in 0..SETS {
            client.set(key(i), value(i)).await.unwrap();
            let node = client.node_for_key(key(i).as_bytes()).unwrap();
            *sets_per_node.entry(node).or_default() += 1;
        }
        for i in 0..GETS {
            let v: Option<String> = client.get(key(i)).await.unwrap();
            assert_eq!(v, Some(value(i)));
        }
        // One error reply: the value is not an integer.
        let err = client
            .query::<i64>(cmd("INCR").arg(key(0)))
            .await
            .unwrap_err();
        assert_eq!(err.server_code(), Some("ERR"), "{err}");
        // A command the server does not know either: labelled `other`.
        let err = client
            .query::<Value>(cmd("OBSNOSUCHCMD").arg(key(1)))
            .await
            .unwrap_err();
        assert!(err.server_code().is_some(), "{err}");
        // Publishes the node gauges (connections are open by now).
        client.refresh_topology().await.unwrap();

        let metrics = collect(&snapshotter);
        let total = "redis_commands_total";
        assert_eq!(
            sum(&metrics, total, &[("command", "set"), ("status", "ok")]),
            SETS as u64
        );
        assert_eq!(sum(&metrics, total, &[("command", "set")]), SETS as u64);
        assert_eq!(sets_per_node.len(), 3, "keys spread over the 3 masters");
        for (node, sets) in &sets_per_node {
            assert_eq!(
                sum(
                    &metrics,
                    total,
                    &[("command", "set"), ("node", node), ("status", "ok")]
                ),
                *sets,
                "SETs counted on {node}"
            );
        }
        assert_eq!(
            sum(&metrics, total, &[("command", "get"), ("status", "ok")]),
            GETS as u64
        );
        assert_eq!(
            sum(&metrics, total, &[("command", "incr"), ("status", "error")]),
            1
        );
        assert_eq!(
            sum(
                &metrics,
                total,
                &[("command", "other"), ("status", "error")]
            ),
            1
        );
        assert_eq!(sum(&metrics, total, &[("status", "failure")]), 0);
        // Every command label is a command name (the unknown command was looked up with
        // `COMMAND INFO` once).
        for m in metrics.iter().filter(|m| m.name == total) {
            let command = m.label("command").unwrap();
            assert!(
                ["set", "get", "incr", "other", "command|info"].contains(&command),
                "unexpected command label {command:?}"
            );
        }
        // One duration sample per command.
        let duration = "redis_command_duration_seconds";
        assert_eq!(sum(&metrics, duration, &[("command", "set")]), SETS as u64);
        assert_eq!(sum(&metrics, duration, &[("command", "get")]), GETS as u64);
        assert_eq!(sum(&metrics, "redis_timeouts_total", &[]), 0);
        assert_eq!(
            gauge(&metrics, "redis_requests_in_flight", &[]),
            Some(0.0),
            "nothing left in flight"
        );
        assert!(
            sum(
                &metrics,
                "redis_topology_refreshes_total",
                &[("trigger", "periodic")]
            ) >= 1
        );

        // Cluster gauges.
        let nodes = "redis_cluster_nodes";
        assert_eq!(gauge(&metrics, nodes, &[("state", "primary")]), Some(3.0));
        assert_eq!(gauge(&metrics, nodes, &[("state", "replica")]), Some(0.0));
        assert_eq!(gauge(&metrics, nodes, &[("state", "connected")]), Some(3.0));
        assert_eq!(
            gauge(&metrics, nodes, &[("state", "breaker_open")]),
            Some(0.0)
        );
        for node in sets_per_node.keys() {
            assert_eq!(
                gauge(&metrics, "redis_circuit_breaker_state", &[("node", node)]),
                Some(0.0)
            );
            let conns = gauge(
                &metrics,
                "redis_connections",
                &[("node", node), ("kind", "multiplexed")],
            );
            assert!(conns.is_some_and(|n| n >= 1.0), "{node}: {conns:?}");
        }

        assert_no_label_contains(&metrics, &["obs-secret", "obsnosuchcmd"]);
    });
}

#[test]
fn redirects_are_counted_by_kind() {
    on_a_recorded_cluster(|local, snapshotter| async move {
        let client = ClusterClient::connect(local.seeds()).await.unwrap();
        let key = "{obs-migrating}:secret-key";
        client.set(key, "secret-value").await.unwrap();
        let slot = key_slot(key.as_bytes());
        let to = other_master(&local, slot).await;

        // The key moved while the slot migrates: the source answers ASK.
        let migration = local.begin_slot_migration(slot, to).await.unwrap();
        assert_eq!(local.migrate_keys_batch(&migration, 10).await.unwrap(), 1);
        let v: Option<String> = client.get(key).await.unwrap();
        assert_eq!(v.as_deref(), Some("secret-value"));
        // The migration ends; the client's map still says the source: MOVED.
        local.finish_slot_migration(migration).await.unwrap();
        let refreshes = client.stats().refreshes;
        let v: Option<String> = client.get(key).await.unwrap();
        assert_eq!(v.as_deref(), Some("secret-value"));

        let stats = client.stats();
        assert!(stats.ask >= 1 && stats.moved >= 1, "{stats:?}");
        // The MOVED asked for a refresh; wait for it. (A snapshot drains the recorder:
        // take one only, at the end.)
        refreshed_since(&client, refreshes).await;

        let metrics = collect(&snapshotter);
        let redirects = "redis_redirects_total";
        assert_eq!(sum(&metrics, redirects, &[("kind", "ask")]), stats.ask);
        assert_eq!(sum(&metrics, redirects, &[("kind", "moved")]), stats.moved);
        // Both GETs ended on the target, after their redirect.
        let target = local.node_addr(to);
        assert_eq!(
            sum(
                &metrics,
                "redis_commands_total",
                &[("command", "get"), ("node", &target), ("status", "ok")]
            ),
            2
        );
        assert!(
            sum(
                &metrics,
                "redis_topology_refreshes_total",
                &[("trigger", "moved")]
            ) >= 1
        );
        assert_no_label_contains(&metrics, &["obs-migrating", "secret"]);
    });
}

/// Waits (at most 10 s) for `client` to finish a topology refresh after the `before`th.
async fn refreshed_since(client: &ClusterClient, before: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.stats().refreshes == before {
        assert!(tokio::time::Instant::now() < deadline, "no refresh");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn a_redirect_to_a_node_the_client_never_saw_refreshes_as_unknown_node() {
    on_a_recorded_cluster(|local, snapshotter| async move {
        let client = ClusterClient::connect(local.seeds()).await.unwrap();
        let key = "{obs-grown}:secret-key";
        client.set(key, "secret-value").await.unwrap();
        let slot = key_slot(key.as_bytes());

        // ASK: the slot migrates to a master added after the client last looked.
        let first = local.add_master().await.unwrap();
        let first_addr = local.node_addr(first);
        assert!(!client.known_nodes().contains(&first_addr));
        let migration = local.begin_slot_migration(slot, first).await.unwrap();
        assert_eq!(local.migrate_keys_batch(&migration, 10).await.unwrap(), 1);
        let before = client.stats().refreshes;
        let v: Option<String> = client.get(key).await.unwrap();
        assert_eq!(v.as_deref(), Some("secret-value"));
        assert_eq!(client.stats().ask, 1);
        refreshed_since(&client, before).await;
        assert!(client.known_nodes().contains(&first_addr));
        local.finish_slot_migration(migration).await.unwrap();

        // MOVED: the slot moves on to another new master.
        let second = local.add_master().await.unwrap();
        let second_addr = local.node_addr(second);
        assert!(!client.known_nodes().contains(&second_addr));
        local.move_slot(slot, second).await.unwrap();
        let before = client.stats().refreshes;
        let v: Option<String> = client.get(key).await.unwrap();
        assert_eq!(v.as_deref(), Some("secret-value"));
        refreshed_since(&client, before).await;
        assert!(client.known_nodes().contains(&second_addr));

        let metrics = collect(&snapshotter);
        let refreshes = "redis_topology_refreshes_total";
        assert!(
            sum(&metrics, refreshes, &[("trigger", "unknown_node")]) >= 2,
            "{:?}",
            metrics
                .iter()
                .filter(|m| m.name == refreshes)
                .collect::<Vec<_>>()
        );
        assert_eq!(
            sum(
                &metrics,
                "redis_commands_total",
                &[("command", "get"), ("node", &second_addr), ("status", "ok")]
            ),
            1
        );
        assert_no_label_contains(&metrics, &["obs-grown", "secret"]);
    });
}

/// A breaker's transition sets its node's gauge and the count of nodes with an open
/// breaker at once, with no refresh or health check to publish them (before, the count
/// waited for one, up to the refresh interval).
#[test]
fn an_opening_breaker_shows_in_the_gauges_at_once() {
    on_a_recorded_cluster(|local, snapshotter| async move {
        let client = ClusterClient::builder()
            .nodes(local.seeds())
            .response_timeout(Duration::from_millis(200))
            .health_check_interval(None)
            .refresh_min_interval(Duration::from_secs(3600))
            .circuit_breaker(redcluster::CircuitBreakerConfig::default().consecutive_failures(2))
            .build()
            .await
            .unwrap();
        let key = "obs-breaker:{a}";
        let owner = support::owner_index(&local, &client, key);
        let node = local.node_addr(owner);
        local.pause(owner).unwrap();
        for _ in 0..2 {
            let r = client.get::<_, Option<String>>(key).await;
            assert!(matches!(r, Err(redcluster::Error::Timeout { .. })), "{r:?}");
        }
        local.resume(owner).unwrap();
        assert_eq!(
            client.health().node(&node).unwrap().breaker,
            redcluster::BreakerState::Open
        );
        let metrics = collect(&snapshotter);
        assert_eq!(
            gauge(
                &metrics,
                "redis_cluster_nodes",
                &[("state", "breaker_open")]
            ),
            Some(1.0)
        );
        assert_eq!(
            gauge(&metrics, "redis_circuit_breaker_state", &[("node", &node)]),
            Some(2.0)
        );
    });
}

/// A node's breaker gauge is the breaker of the role the topology gives it: a primary
/// whose breaker opened, then swapped roles with its replica (a manual failover, no
/// failure flag), shows its replica connection's closed breaker, not the primary
/// connection's open one, which no request reaches any more (it showed open for good).
#[test]
fn a_breaker_gauge_follows_the_node_into_its_new_role() {
    on_a_recorded_cluster_with(1, |local, snapshotter| async move {
        let client = ClusterClient::builder()
            .nodes(local.seeds())
            .response_timeout(Duration::from_millis(200))
            .health_check_interval(None)
            .refresh_min_interval(Duration::from_secs(3600))
            .circuit_breaker(
                redcluster::CircuitBreakerConfig::default()
                    .consecutive_failures(2)
                    .open_for(Duration::from_secs(3600)),
            )
            .build()
            .await
            .unwrap();
        let key = "obs-roles:{a}";
        let owner = support::owner_index(&local, &client, key);
        let node = local.node_addr(owner);
        local.pause(owner).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !matches!(
            client.get::<_, Option<String>>(key).await,
            Err(redcluster::Error::CircuitOpen { .. })
        ) {
            assert!(
                std::time::Instant::now() < deadline,
                "the breaker never opened"
            );
        }
        local.resume(owner).unwrap();
        let replica = local.replicas_of(owner).await.unwrap()[0];
        local
            .failover(replica, redcluster::testkit::FailoverMode::Graceful)
            .await
            .unwrap();
        client.refresh_topology().await.unwrap();
        let health = client.health();
        let now = health.node(&node).unwrap();
        assert_eq!(now.role, redcluster::NodeRole::Replica, "{health:?}");
        assert_eq!(now.breaker, redcluster::BreakerState::Closed);
        let metrics = collect(&snapshotter);
        assert_eq!(
            gauge(&metrics, "redis_circuit_breaker_state", &[("node", &node)]),
            Some(0.0)
        );
        assert_eq!(
            gauge(
                &metrics,
                "redis_cluster_nodes",
                &[("state", "breaker_open")]
            ),
            Some(0.0)
        );
    });
}

#[test]
fn scan_pages_watch_transactions_and_dedicated_redirects_are_counted() {
    use futures_util::StreamExt;

    on_a_recorded_cluster(|local, snapshotter| async move {
        // No background refresh: one landing after a `move_slot` below would teach the
        // client the new owner before the request the test expects to be redirected.
        let client = ClusterClient::builder()
            .nodes(local.seeds())
            .refresh_min_interval(Duration::from_secs(3600))
            .build()
            .await
            .unwrap();
        for i in 0..30 {
            client.set(format!("obs-scan:{i}"), i).await.unwrap();
        }
        // A cluster-wide SCAN: every page is a request to a primary.
        let mut scan = client.scan(ScanOptions::default().count(5));
        let mut keys = 0;
        while let Some(key) = tokio::time::timeout(Duration::from_secs(10), scan.next())
            .await
            .expect("the scan went on")
        {
            key.unwrap();
            keys += 1;
            assert!(keys <= 30, "the scan went past the 30 keys");
        }
        assert_eq!(keys, 30);

        // WATCH, a read and EXEC on the watched connection.
        let key = "{obs-watch}:secret-key";
        let mut watched = client.watch([key]).await.unwrap();
        let before: Option<String> = watched.query(cmd("GET").arg(key)).await.unwrap();
        assert_eq!(before, None);
        let committed = watched
            .exec(vec![cmd("SET").arg(key).arg("secret-value")])
            .await
            .unwrap();
        assert!(committed.is_some());
        let watch_node = client.node_for_key(key.as_bytes()).unwrap();

        // A blocking command whose slot moved behind the client's back: the dedicated
        // connection's MOVED is counted like any other.
        let list = "{obs-block}:list";
        let slot = key_slot(list.as_bytes());
        let to = other_master(&local, slot).await;
        local.move_slot(slot, to).await.unwrap();
        let moved_before = client.stats().moved;
        let reply: Value = client.query(cmd("BLPOP").arg(list).arg(0.1)).await.unwrap();
        assert_eq!(reply, Value::Nil);
        assert_eq!(client.stats().moved, moved_before + 1);

        // So is a durable write's (a write and WAIT on a dedicated connection).
        let durable = "{obs-durable}:secret-key";
        let slot = key_slot(durable.as_bytes());
        let durable_to = other_master(&local, slot).await;
        local.move_slot(slot, durable_to).await.unwrap();
        let no_replicas = Durability::new(0, Duration::from_millis(100));
        let (n, _): (i64, u32) = client
            .query_durable(cmd("INCR").arg(durable), no_replicas)
            .await
            .unwrap();
        assert_eq!(n, 1);
        assert_eq!(client.stats().moved, moved_before + 2);

        // A WATCH the slot's owner refuses with `CLUSTERDOWN` (the slot taken from it)
        // is retried as `cluster_down`, not `no_route` (the client knew a route).
        let down = "{obs-down}:k";
        let owner = support::owner_index(&local, &client, down);
        let owner_conn = local.connect_node(owner).await.unwrap();
        let slot = i64::from(key_slot(down.as_bytes()));
        let deleted: Value = owner_conn
            .send(cmd("CLUSTER").arg("DELSLOTS").arg(slot))
            .await
            .unwrap();
        assert!(
            matches!(&deleted, Value::Simple(ok) if &ok[..] == b"OK"),
            "{deleted:?}"
        );
        let watched = client
            .with_response_timeout(Duration::from_millis(500))
            .watch([down])
            .await;
        assert!(
            matches!(watched, Err(redcluster::Error::ClusterDown(_))),
            "{:?}",
            watched.err()
        );

        let metrics = collect(&snapshotter);
        let total = "redis_commands_total";
        for master in local.masters().await.unwrap() {
            let node = local.node_addr(master);
            assert!(
                sum(
                    &metrics,
                    total,
                    &[("command", "scan"), ("node", &node), ("status", "ok")]
                ) >= 1,
                "SCAN pages counted on {node}"
            );
        }
        for command in ["watch", "get", "exec"] {
            assert_eq!(
                sum(
                    &metrics,
                    total,
                    &[
                        ("command", command),
                        ("node", &watch_node),
                        ("status", "ok")
                    ]
                ),
                1,
                "{command} on the watched connection"
            );
        }
        // Counted on the node that answered, after the redirect.
        let blpop_node = local.node_addr(to);
        assert_eq!(
            sum(
                &metrics,
                total,
                &[
                    ("command", "blpop"),
                    ("node", &blpop_node),
                    ("status", "ok")
                ]
            ),
            1
        );
        let durable_node = local.node_addr(durable_to);
        assert_eq!(
            sum(
                &metrics,
                total,
                &[
                    ("command", "incr"),
                    ("node", &durable_node),
                    ("status", "ok")
                ]
            ),
            1
        );
        assert_eq!(
            sum(&metrics, "redis_redirects_total", &[("kind", "moved")]),
            client.stats().moved
        );
        let retries = "redis_retries_total";
        assert!(
            sum(&metrics, retries, &[("reason", "cluster_down")]) >= 1,
            "{:?}",
            metrics
                .iter()
                .filter(|m| m.name == retries)
                .collect::<Vec<_>>()
        );
        assert_no_label_contains(&metrics, &["obs-", "secret"]);
    });
}

#[test]
fn requests_run_in_spans_and_redirects_are_logged() {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .with_current_span(true)
        .with_writer(capture.clone())
        .finish();
    let _subscriber = tracing::subscriber::set_default(subscriber);
    let _second = support::capture::second_dispatcher();
    runtime().block_on(async {
        let local = support::cluster(3, 0).await;
        // No background refresh: one asked for by a MOVED and landing after a later
        // `move_slot` would teach the client the pipeline's new owner before it runs
        // (the test refreshes by hand where it needs to).
        let client = ClusterClient::builder()
            .nodes(local.seeds())
            .refresh_min_interval(Duration::from_secs(3600))
            .build()
            .await
            .unwrap();
        // A second client that stays idle, to see the topology change on its refresh.
        let idle = ClusterClient::connect(local.seeds()).await.unwrap();
        let key = "{obs-traced}:secret-key";
        let value = "secret-value-never-logged";
        client.set(key, value).await.unwrap();
        let slot = key_slot(key.as_bytes());
        let from = local.master_of_slot(slot).await.unwrap();
        let to = master_other_than(&local, from).await;
        let migration = local.begin_slot_migration(slot, to).await.unwrap();
        local.migrate_keys_batch(&migration, 10).await.unwrap();
        let v: Option<String> = client.get(key).await.unwrap();
        assert_eq!(v.as_deref(), Some(value));
        local.finish_slot_migration(migration).await.unwrap();
        let v: Option<String> = client.get(key).await.unwrap();
        assert_eq!(v.as_deref(), Some(value));
        // The idle client refreshes until it sees the slot on the target (a node asked
        // may lag a moment behind the others).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while idle.primary_for_slot(slot) != Some(local.node_addr(to)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the idle client never saw the move"
            );
            idle.refresh_topology().await.unwrap();
        }
        // A blocking command, on a dedicated connection, whose slot went back to the
        // source behind the client's back: MOVED from the target.
        while client.primary_for_slot(slot) != Some(local.node_addr(to)) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the client never saw the move"
            );
            client.refresh_topology().await.unwrap();
        }
        local.move_slot(slot, from).await.unwrap();
        let list = "{obs-traced}:list";
        let popped: Value = client.query(cmd("BLPOP").arg(list).arg(0.1)).await.unwrap();
        assert_eq!(popped, Value::Nil);
        assert_eq!(client.primary_for_slot(slot), Some(local.node_addr(from)));
        // A pipeline whose slot moved whole behind the client's back: every command is
        // answered MOVED, and they go again as one batch to the new owner, in order
        // (RPUSH answers the list's length).
        local.move_slot(slot, to).await.unwrap();
        let mut p = client.pipeline();
        for i in 0..20 {
            p.rpush(list, i);
        }
        let replies = p.execute().await.unwrap();
        assert_eq!(replies, (1..=20).map(Value::Int).collect::<Vec<_>>());

        let lines = capture.lines();
        let target = local.node_addr(to);
        let source = local.node_addr(from);
        let on_target = format!(r#""node":"{target}""#);
        let on_source = format!(r#""node":"{source}""#);
        let in_slot = format!(r#""slot":{slot}"#);
        let logged = |parts: &[&str]| lines.iter().any(|l| parts.iter().all(|p| l.contains(p)));
        let span = r#""name":"redis_command""#;
        // Sent to the old owner (the map was stale), then again as one batch.
        let pipeline = r#""name":"redis_pipeline""#;
        assert!(
            logged(&[pipeline, &on_source, r#""commands":20"#]),
            "the pipeline went to the old owner first"
        );
        assert!(
            logged(&[pipeline, &on_target, r#""commands":20"#]),
            "the moved commands went again as one batch"
        );
        // The request spans, closed: command, slot and node, never the key.
        assert!(
            logged(&[
                span,
                r#""command":"set""#,
                &in_slot,
                &on_source,
                r#""attempt":1"#
            ]),
            "no span for the SET:\n{}",
            lines.join("\n")
        );
        assert!(
            logged(&[span, r#""command":"get""#, &on_target, r#""redirects":1"#]),
            "no span for a redirected GET"
        );
        // BLPOP's span names each attempt's node: the target while the MOVED is logged,
        // the source when it closes.
        assert!(
            logged(&[
                r#""message":"MOVED redirect""#,
                r#""command":"blpop""#,
                &on_target
            ]),
            "no MOVED event in BLPOP's span on the target:\n{}",
            lines.join("\n")
        );
        assert!(
            logged(&[
                span,
                r#""message":"close""#,
                r#""command":"blpop""#,
                &on_source
            ]),
            "BLPOP's span does not close on the source:\n{}",
            lines.join("\n")
        );
        // Redirect events.
        let event = |message: &str| {
            lines
                .iter()
                .find(|l| l.contains(&format!(r#""message":"{message}""#)))
                .cloned()
        };
        let moved = event("MOVED redirect").expect("a MOVED event");
        assert!(moved.contains(&format!(r#""slot":{slot}"#)), "{moved}");
        assert!(moved.contains(&target), "{moved}");
        assert!(event("ASK redirect").is_some(), "an ASK event");
        // The idle client saw the slot move.
        let changed = event("topology changed").unwrap_or_else(|| {
            let topology: Vec<&String> = lines.iter().filter(|l| l.contains("topology")).collect();
            panic!("no topology change event: {topology:#?}")
        });
        assert!(
            changed.contains(&format!("{slot} {source}->{target}")),
            "{changed}"
        );
        // Keys and values never appear.
        for line in &lines {
            assert!(!line.contains("obs-traced"), "key logged: {line}");
            assert!(!line.contains(value), "value logged: {line}");
        }
    });
}

#[test]
fn each_named_client_sets_its_own_cluster_gauges() {
    on_a_recorded_cluster(|local, snapshotter| async move {
        let orders = ClusterClient::builder()
            .nodes(local.seeds())
            .client_name("orders")
            .connections_per_node(2)
            .build()
            .await
            .unwrap();
        let sessions = ClusterClient::connect(local.seeds()).await.unwrap();
        // Traffic to every node opens each client's connections there; a topology
        // refresh then sets the gauges, one client after the other.
        let keys: Vec<String> = (0..30).map(|i| format!("gauges:{i}")).collect();
        for client in [&orders, &sessions] {
            for k in &keys {
                client.set(k.as_str(), 1).await.unwrap();
            }
        }
        orders.refresh_topology().await.unwrap();
        sessions.refresh_topology().await.unwrap();
        let metrics = collect(&snapshotter);
        for node in orders.known_nodes() {
            let conns = |client: &str| {
                gauge(
                    &metrics,
                    "redis_connections",
                    &[("client", client), ("node", &node), ("kind", "multiplexed")],
                )
            };
            assert_eq!(conns("orders"), Some(2.0), "{node}");
            assert_eq!(conns("default"), Some(1.0), "{node}");
        }
        for client in ["orders", "default"] {
            assert_eq!(
                gauge(
                    &metrics,
                    "redis_cluster_nodes",
                    &[("client", client), ("state", "primary")]
                ),
                Some(3.0),
                "{client}"
            );
        }
    });
}

/// An error reply counts as `error` whichever way it ends (a refused `WATCH` comes back
/// as `Err(Server)`), and a write short of replicas as `ok` (the primary replied), alone
/// and in a pipeline alike: the refused `WATCH` counted as `failure` (no reply), and so
/// did the pipeline's short write, where the same write alone counted `ok`.
#[test]
fn refusals_and_writes_short_of_replicas_count_by_what_the_node_replied() {
    on_a_recorded_cluster(|local, snapshotter| async move {
        support::set_user(&local, "obs-no-watch on >obs-pw ~* &* +@all -watch").await;
        let client = ClusterClient::builder()
            .nodes(local.seeds())
            .username("obs-no-watch")
            .password("obs-pw")
            .durable_writes(Durability::new(1, Duration::from_millis(20)))
            .build()
            .await
            .unwrap();
        let refused = client.watch(["obs-w:{1}"]).await.unwrap_err();
        assert_eq!(refused.server_code(), Some("NOPERM"), "{refused:?}");
        let alone = client.set("obs-short:{1}", 1).await.unwrap_err();
        assert!(
            matches!(alone, redcluster::Error::NotReplicated { .. }),
            "{alone:?}"
        );
        let mut p = client.pipeline();
        p.set("obs-short:{2}", 2);
        let each = p.execute_each().await;
        assert!(
            matches!(each[0], Err(redcluster::Error::NotReplicated { .. })),
            "{each:?}"
        );
        let metrics = collect(&snapshotter);
        let total = "redis_commands_total";
        let count = |command: &str, status: &str| {
            sum(&metrics, total, &[("command", command), ("status", status)])
        };
        assert_eq!(count("watch", "error"), 1);
        assert_eq!(count("watch", "failure"), 0);
        assert_eq!(count("set", "ok"), 2);
        assert_eq!(count("set", "failure"), 0);
    });
}
