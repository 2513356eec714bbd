//! The cluster doctor against real local clusters: one set up to break the seed's
//! checklist in as many ways as one cluster can (no replicas, `appendonly no`, no
//! password, no TLS, a 1000 ms node timeout, slots skewed onto a fourth master, no
//! `maxmemory`, dangerous commands allowed, a big and a hot key), and one configured as
//! the seed recommends, checked both with full rights and as a restricted ACL user.
//! Both clusters start concurrently (the two tests run in parallel).

use std::time::Duration;

use redcluster::testkit::LocalCluster;
use redcluster::{cmd, Check, CheckStatus, ClusterClient, DoctorReport, Value};

const PASSWORD: &str = "s3cret-doctor-pass";
const APP_PASSWORD: &str = "app-doctor-pass";
/// What `CONFIG` is renamed to on the well-configured cluster (the seed's own example).
const CONFIG_SECRET: &str = "CONFIG_9a7b8c5d3e2f1a0";

/// The checks a well-configured cluster may still warn about when all its nodes run on
/// one machine, as every testkit cluster does (127.0.0.1): each replica shares its
/// master's host.
const UNAVOIDABLE_ON_ONE_HOST: &[&str] = &["replica-placement"];

fn lines<'a>(report: &'a DoctorReport, name: &str) -> Vec<&'a Check> {
    let lines: Vec<&Check> = report.checks_named(name).collect();
    assert!(!lines.is_empty(), "no check {name} in\n{report}");
    lines
}

/// The one line of check `name` (every node answered the same, or it is cluster-wide).
fn single<'a>(report: &'a DoctorReport, name: &str) -> &'a Check {
    let lines = lines(report, name);
    assert_eq!(lines.len(), 1, "one line of {name} expected in\n{report}");
    lines[0]
}

fn assert_status(report: &DoctorReport, name: &str, status: CheckStatus) {
    for line in lines(report, name) {
        assert_eq!(line.status, status, "{line:?}\n{report}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_each_misconfiguration_of_a_badly_configured_cluster() {
    // The testkit's defaults already give appendonly no, no password, no TLS and no
    // maxmemory (so noeviction matters not); the rest is asked for.
    let local = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .node_timeout(Duration::from_millis(1000))
        .config("maxmemory-policy", "allkeys-lfu")
        // Every access counts one, so a few hundred GETs make a hot key (at the default
        // factor of 10 it takes about 100,000).
        .config("lfu-log-factor", "0")
        .start()
        .await
        .unwrap();
    // A resharding onto a new master that stopped after two slots: 4 masters serving
    // slots, one of them almost none.
    let fourth = local.add_master().await.unwrap();
    for slot in [0, 1] {
        local.move_slot(slot, fourth).await.unwrap();
    }
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    client.set("doctor:big", "x".repeat(2 << 20)).await.unwrap();
    client.set("doctor:hot", "1").await.unwrap();
    let mut reads = client.pipeline();
    for _ in 0..300 {
        reads.get("doctor:hot");
    }
    reads.execute().await.unwrap();

    let report = client.doctor().await.unwrap();
    println!("{report}");

    for name in ["node-reachable", "cluster-state", "slot-coverage"] {
        assert_status(&report, name, CheckStatus::Ok);
    }
    let balance = single(&report, "slot-balance");
    assert_eq!(balance.status, CheckStatus::Warn);
    assert_eq!(
        balance.node.as_deref(),
        Some(local.node_addr(fourth).as_str())
    );
    assert!(balance.observed.contains("serves 2 "), "{balance:?}");
    let masters = single(&report, "masters");
    assert_eq!(
        masters.status,
        CheckStatus::Warn,
        "an even number of masters"
    );
    assert_eq!(masters.observed, "4 masters serving slots");
    // One line per master, each without a replica.
    let replicas = lines(&report, "replicas");
    assert_eq!(replicas.len(), 4, "{report}");
    assert_status(&report, "replicas", CheckStatus::Fail);
    assert_eq!(single(&report, "replica-placement").observed, "no replicas");
    assert_eq!(single(&report, "replication").status, CheckStatus::Unknown);
    let timeout = single(&report, "cluster-node-timeout");
    assert_eq!(timeout.status, CheckStatus::Warn);
    assert_eq!(timeout.observed, "1000 ms (all 4 nodes)");
    assert_status(&report, "maxmemory", CheckStatus::Warn);
    assert_status(&report, "maxmemory-policy", CheckStatus::Ok);
    let persistence = single(&report, "persistence");
    assert_eq!(persistence.status, CheckStatus::Warn);
    assert_eq!(persistence.observed, "appendonly no (all 4 nodes)");
    assert_status(&report, "authentication", CheckStatus::Fail);
    assert_status(&report, "tls", CheckStatus::Warn);
    let dangerous = single(&report, "dangerous-commands");
    assert_eq!(dangerous.status, CheckStatus::Warn);
    assert!(
        dangerous
            .observed
            .starts_with("FLUSHALL, FLUSHDB, CONFIG allowed for default"),
        "{dangerous:?}"
    );
    let big = single(&report, "big-keys");
    assert_eq!(big.status, CheckStatus::Warn);
    assert!(big.observed.contains("\"doctor:big\""), "{big:?}");
    assert_eq!(big.node, client.node_for_key(b"doctor:big"));
    let hot = single(&report, "hot-keys");
    assert_eq!(hot.status, CheckStatus::Warn);
    assert!(hot.observed.contains("\"doctor:hot\""), "{hot:?}");
    assert!(!report.is_healthy());

    // A node that goes away is a failed check of that node, not an error.
    local.kill(fourth).unwrap();
    let report = client.doctor().await.unwrap();
    let gone: Vec<&Check> = report
        .failures()
        .filter(|c| c.name == "node-reachable")
        .collect();
    assert_eq!(gone.len(), 1, "{report}");
    assert_eq!(
        gone[0].node.as_deref(),
        Some(local.node_addr(fourth).as_str())
    );
    assert_eq!(
        lines(&report, "node-reachable")
            .iter()
            .filter(|c| c.status == CheckStatus::Ok)
            .count(),
        3,
        "{report}"
    );
    // However long the response timeout (`Duration::MAX` is a valid one), the doctor
    // runs: its key sample's deadline is capped as every other.
    let patient = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::MAX)
        .build()
        .await
        .unwrap();
    let again = patient.doctor().await.unwrap();
    let reachable = lines(&again, "node-reachable");
    assert!(
        reachable
            .iter()
            .filter(|c| c.status == CheckStatus::Ok)
            .count()
            >= 3,
        "{again}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_a_cluster_configured_as_the_seed_recommends() {
    // The seed's production configuration, with DEBUG disabled as well, and an
    // application user denied the dangerous commands.
    let local = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(1)
        .node_timeout(Duration::from_millis(5000))
        .tls(true)
        .config("requirepass", PASSWORD)
        .config("appendonly", "yes")
        .config("appendfsync", "everysec")
        .config("maxmemory", "100mb")
        // LFU so that the hot-key check measures too (the seed's allkeys-lru counts no
        // accesses).
        .config("maxmemory-policy", "allkeys-lfu")
        .config("rename-command", "FLUSHALL \"\"")
        .config("rename-command", "FLUSHDB \"\"")
        .config("rename-command", "DEBUG \"\"")
        .config("rename-command", format!("CONFIG {CONFIG_SECRET}"))
        .acl_user(format!(
            "app on >{APP_PASSWORD} ~app:* +@read +@write -@dangerous +cluster|shards \
             +cluster|slots +cluster|nodes +command|info +readonly +asking +ping +unwatch"
        ))
        .start()
        .await
        .unwrap();
    let builder = || {
        ClusterClient::builder()
            .nodes(local.seeds())
            .tls(local.tls_config().expect("a TLS cluster"))
            .command_renames(local.command_renames())
    };
    let client = builder().password(PASSWORD).build().await.unwrap();
    for i in 0..30 {
        client
            .set(format!("app:{i}"), format!("value {i}"))
            .await
            .unwrap();
    }

    let report = client.doctor().await.unwrap();
    println!("{report}");
    let table = report.to_string();
    assert!(
        !table.contains(PASSWORD) && !table.contains(CONFIG_SECRET),
        "{table}"
    );

    assert_eq!(report.failures().count(), 0, "{report}");
    for warning in report.warnings() {
        assert!(
            UNAVOIDABLE_ON_ONE_HOST.contains(&warning.name),
            "unexpected warning {warning:?}\n{report}"
        );
    }
    assert_eq!(lines(&report, "replica-placement").len(), 3, "{report}");
    for name in [
        "node-reachable",
        "cluster-state",
        "slot-coverage",
        "slot-balance",
        "masters",
        "replicas",
        "replication",
        "cluster-node-timeout",
        "maxmemory",
        "maxmemory-policy",
        "memory-usage",
        "persistence",
        "authentication",
        "tls",
        "dangerous-commands",
        "big-keys",
        "hot-keys",
    ] {
        assert_status(&report, name, CheckStatus::Ok);
    }
    assert_eq!(
        single(&report, "persistence").observed,
        "appendonly yes, appendfsync everysec (all 6 nodes)"
    );
    assert!(
        single(&report, "tls").observed.starts_with("TLS only"),
        "{report}"
    );
    assert_eq!(
        single(&report, "dangerous-commands").observed,
        "FLUSHALL, FLUSHDB, CONFIG, DEBUG renamed or disabled (all 6 nodes)"
    );
    assert_eq!(
        single(&report, "cluster-node-timeout").observed,
        "5000 ms (all 6 nodes)"
    );
    assert!(report.is_healthy());

    // The application user may not read CONFIG, INFO or ACLs: those checks say so
    // instead of failing, and what it can learn (commands renamed, a connection without
    // a password refused, TLS on its own connection) is still judged.
    let app = builder()
        .username("app")
        .password(APP_PASSWORD)
        .build()
        .await
        .unwrap();
    let report = app.doctor().await.unwrap();
    println!("{report}");
    assert_eq!(report.failures().count(), 0, "{report}");
    for name in [
        "cluster-state",
        "cluster-node-timeout",
        "maxmemory",
        "persistence",
    ] {
        let line = single(&report, name);
        assert_eq!(line.status, CheckStatus::Unknown, "{line:?}");
        assert!(line.observed.contains("NOPERM"), "{line:?}");
    }
    let auth = single(&report, "authentication");
    assert_eq!(auth.status, CheckStatus::Ok);
    assert!(
        auth.observed.contains("without credentials is refused"),
        "{auth:?}"
    );
    assert_status(&report, "dangerous-commands", CheckStatus::Ok);
    // TLS on its own connection, but not whether plaintext is served too: unknown.
    let tls = single(&report, "tls");
    assert_eq!(tls.status, CheckStatus::Unknown, "{tls:?}");
    assert!(tls.observed.contains("connects over TLS"), "{tls:?}");
    assert!(tls.observed.contains("NOPERM"), "{tls:?}");
    assert_status(&report, "big-keys", CheckStatus::Ok);

    // The doctor changed nothing.
    let value: Value = client.query(cmd("GET").arg("app:7")).await.unwrap();
    assert_eq!(value, Value::Bulk("value 7".into()));

    // Keys the application user may not read: its key sample stops at the first one
    // on each node, a refusal or two in the server's ACL log (one per command), not
    // one per key sampled (a hundred would push out the entries that matter).
    for i in 0..60 {
        client.set(format!("other:{i}"), i).await.unwrap();
    }
    let primaries: std::collections::BTreeSet<String> = (0..60)
        .filter_map(|i| client.node_for_key(format!("other:{i}").as_bytes()))
        .collect();
    for node in &primaries {
        client
            .query_node::<()>(node, cmd("ACL").arg("LOG").arg("RESET"))
            .await
            .unwrap();
    }
    let report = app.doctor().await.unwrap();
    assert_eq!(report.failures().count(), 0, "{report}");
    for node in &primaries {
        let log: Vec<std::collections::HashMap<String, Value>> = client
            .query_node(node, cmd("ACL").arg("LOG").arg(200))
            .await
            .unwrap();
        let refused_keys = log
            .iter()
            .filter(|entry| entry.get("reason") == Some(&Value::Bulk("key".into())))
            .count();
        assert!((1..=2).contains(&refused_keys), "{node}: {log:?}");
    }
}

/// A client that knows no topology yet (connected lazily, its seeds not answering) asks
/// its seeds: none answering, the doctor fails with why, instead of a report with no
/// node in it, which read healthy (a monitoring job would have passed an unreachable
/// cluster).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_seeds_never_answered_gets_no_healthy_report() {
    let unreachable = ClusterClient::builder()
        .nodes(["127.0.0.1:1"])
        .lazy_connect(true)
        .build()
        .await
        .unwrap();
    let outcome = unreachable.doctor().await;
    assert!(outcome.is_err(), "{:?}", outcome.map(|r| r.to_string()));
}
