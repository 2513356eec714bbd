//! Nodes that refuse requests for a while, on real local clusters: a node loading its
//! dataset (`LOADING`), a replica cut off from its primary (`MASTERDOWN`), a node busy
//! running a script (`BUSY`). The server makes each state on demand: `DEBUG RELOAD` with a
//! per-key load delay, a wrong `masterauth` on a replica, a script that loops.

mod support;

use std::time::Duration;

use redcluster::testkit::LocalCluster;
use redcluster::{cmd, key_slot, ClusterClient, NodeConnection, ReadFrom, Value};
use support::calls;
use tokio::time::Instant;

/// A cluster whose nodes accept `DEBUG` (off by default since Redis 7).
async fn debuggable_cluster() -> LocalCluster {
    LocalCluster::builder()
        .config("enable-debug-command", "yes")
        .start()
        .await
        .expect("local cluster starts")
}

async fn ok(conn: &NodeConnection, command: redcluster::Cmd) {
    let reply = conn.send(command).await.unwrap();
    assert_eq!(reply, Value::Simple("OK".into()));
}

/// Gives `key`'s slot (its tag's) 20,000 more keys: what makes a reload take a while.
async fn fill_slot_of(client: &ClusterClient, key: &str) {
    let tag = key
        .split_once('{')
        .and_then(|(_, t)| t.split_once('}'))
        .unwrap()
        .0;
    let mut filler = client.pipeline();
    for i in 0..20_000 {
        filler.set(format!("{{{tag}}}:filler:{i}"), "x");
    }
    filler.execute().await.unwrap();
}

/// Makes node `index` load keys slowly enough that a `DEBUG RELOAD` of 20,000 keys keeps
/// it loading for about two seconds.
async fn load_slowly(local: &LocalCluster, index: usize) {
    let node = local.connect_node(index).await.unwrap();
    // 100 us a key; events served every KiB loaded, so `LOADING` comes back at once.
    ok(
        &node,
        cmd("CONFIG").arg("SET").arg("key-load-delay").arg(100),
    )
    .await;
    ok(
        &node,
        cmd("CONFIG")
            .arg("SET")
            .arg("loading-process-events-interval-bytes")
            .arg(1024),
    )
    .await;
}

/// Starts `DEBUG RELOAD` on node `index` and returns once the node answers a read of
/// `key` (in its slots) with `LOADING`, with the reload's task to await at the end.
async fn reload(
    local: &LocalCluster,
    index: usize,
    key: &str,
) -> tokio::task::JoinHandle<redcluster::Result<Value>> {
    let node = local.connect_node(index).await.unwrap();
    // Read-only, so that a replica answers for its primary's slots instead of `MOVED`.
    let probe = local.connect_node(index).await.unwrap();
    ok(&probe, cmd("READONLY")).await;
    let reload = tokio::spawn(async move {
        node.send_timeout(cmd("DEBUG").arg("RELOAD"), Duration::from_secs(30))
            .await
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match probe.send(cmd("GET").arg(key)).await {
            Ok(Value::ServerError(e)) if e.code() == "LOADING" => return reload,
            other => assert!(
                Instant::now() < deadline,
                "the node never began loading: {other:?}"
            ),
        }
        if reload.is_finished() {
            panic!("the reload ended before it was seen: {:?}", reload.await);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loading_replica_sends_reads_to_its_primary_and_a_loading_primary_is_waited_for() {
    let local = debuggable_cluster().await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(10))
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .max_retries(200)
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let key = "loading:{k}";
    let slot = key_slot(key.as_bytes());
    let primary = local.master_of_slot(slot).await.unwrap();
    let replica = local.replicas_of(primary).await.unwrap()[0];
    client.set(key, "v").await.unwrap();
    fill_slot_of(&client, key).await;
    load_slowly(&local, primary).await;
    load_slowly(&local, replica).await;
    wait_replicated(&local, replica, &format!("{{k}}:filler:{}", 19_999)).await;

    // The replica reloads: a replica read goes to the primary at once, a reroute and no
    // retry, so a client allowed none still reads.
    let no_retries = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::Replica)
        .max_retries(0)
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let replica_reads = client.with_read_from(ReadFrom::Replica);
    let primary_gets = calls(&local, primary, "get").await;
    let reloading = reload(&local, replica, key).await;
    let retries = client.stats().retries;
    let read: Option<String> = no_retries.get(key).await.unwrap();
    assert_eq!(read.as_deref(), Some("v"));
    let read: Option<String> = replica_reads.get(key).await.unwrap();
    assert_eq!(read.as_deref(), Some("v"));
    // The pipeline's reads find the replica passed over, and go to the primary directly.
    let mut pipeline = replica_reads.pipeline();
    pipeline.get(key).get(key);
    let reads = pipeline.execute().await.unwrap();
    assert!(
        !reloading.is_finished(),
        "the replica must still be loading for this test to say anything"
    );
    assert_eq!(
        reads,
        vec![Value::Bulk("v".into()), Value::Bulk("v".into())]
    );
    assert_eq!(calls(&local, primary, "get").await, primary_gets + 4);
    assert_eq!(client.stats().retries, retries, "rerouted, not retried");
    assert_eq!(no_retries.stats().retries, 0);
    assert_eq!(
        reloading.await.unwrap().unwrap(),
        Value::Simple("OK".into())
    );

    // The primary reloads: nothing else can take its writes, so they wait for it. An
    // INCR answered LOADING never ran, so it is sent again, and runs once.
    let reloading = reload(&local, primary, key).await;
    let retries = client.stats().retries;
    let counter = "loading:{k}:counter";
    let n: i64 = client.incr(counter, 1).await.unwrap();
    assert_eq!(n, 1);
    assert!(client.stats().retries > retries, "the LOADING was retried");
    let read: Option<String> = client.get(key).await.unwrap();
    assert_eq!(read.as_deref(), Some("v"));
    assert_eq!(
        reloading.await.unwrap().unwrap(),
        Value::Simple("OK".into())
    );
}

/// Waits until node `index` (a replica) has `key`.
async fn wait_replicated(local: &LocalCluster, index: usize, key: &str) {
    let node = local.connect_node(index).await.unwrap();
    ok(&node, cmd("READONLY")).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.send(cmd("EXISTS").arg(key)).await.unwrap() != Value::Int(1) {
        assert!(Instant::now() < deadline, "{key} never replicated");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_cut_off_from_its_primary_sends_reads_to_the_primary() {
    let local = LocalCluster::builder().start().await.unwrap();
    // A backoff longer than the deadline: going to the primary waits for none.
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::Replica)
        .response_timeout(Duration::from_millis(800))
        .retry_backoff(Duration::from_secs(2), Duration::from_secs(2))
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let key = "masterdown:{k}";
    let slot = key_slot(key.as_bytes());
    let primary = local.master_of_slot(slot).await.unwrap();
    let replica = local.replicas_of(primary).await.unwrap()[0];
    client.set(key, "v").await.unwrap();
    wait_replicated(&local, replica, key).await;

    // The replica refuses reads while its link to the primary is down, and the link
    // stays down: the replica now authenticates with a password the primary rejects.
    let node = local.connect_node(replica).await.unwrap();
    ok(
        &node,
        cmd("CONFIG")
            .arg("SET")
            .arg("replica-serve-stale-data")
            .arg("no"),
    )
    .await;
    ok(
        &node,
        cmd("CONFIG")
            .arg("SET")
            .arg("masterauth")
            .arg("not-the-password"),
    )
    .await;
    node.send(cmd("CLIENT").arg("KILL").arg("TYPE").arg("master"))
        .await
        .unwrap();
    ok(&node, cmd("READONLY")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match node.send(cmd("GET").arg(key)).await {
            Ok(Value::ServerError(e)) if e.code() == "MASTERDOWN" => break,
            other => assert!(Instant::now() < deadline, "never MASTERDOWN: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let primary_gets = calls(&local, primary, "get").await;
    let retries = client.stats().retries;
    for _ in 0..3 {
        let read: Option<String> = client.get(key).await.unwrap();
        assert_eq!(read.as_deref(), Some("v"));
    }
    let mut pipeline = client.pipeline();
    pipeline.get(key).get(key);
    assert_eq!(
        pipeline.execute().await.unwrap(),
        vec![Value::Bulk("v".into()), Value::Bulk("v".into())]
    );
    assert_eq!(calls(&local, primary, "get").await, primary_gets + 5);
    // Straight to the primary, rerouted rather than retried.
    assert_eq!(client.stats().retries, retries);

    // The link back: the replica serves reads again.
    ok(&node, cmd("CONFIG").arg("SET").arg("masterauth").arg("")).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.send(cmd("GET").arg(key)).await.unwrap() != Value::Bulk("v".into()) {
        assert!(Instant::now() < deadline, "the replica never caught up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Passed over for a second after its last refusal, then read from again.
    let replica_gets = calls(&local, replica, "get").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let read: Option<String> = client.get(key).await.unwrap();
        assert_eq!(read.as_deref(), Some("v"));
        if calls(&local, replica, "get").await > replica_gets {
            break;
        }
        assert!(Instant::now() < deadline, "replica reads never came back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_busy_with_a_script_refuses_typed_and_one_script_kill_frees_it() {
    let local = busy_cluster().await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .build()
        .await
        .unwrap();
    let key = "busy:{k}";
    let busy = local
        .master_of_slot(key_slot(key.as_bytes()))
        .await
        .unwrap();
    let elsewhere = support::key_elsewhere(&client, key, "busy:");
    client.set(key, "v").await.unwrap();

    // No script runs: SCRIPT KILL goes to every primary and none has one to kill.
    let r = client.query::<Value>(cmd("SCRIPT").arg("KILL")).await;
    assert!(
        matches!(&r, Err(e) if e.server_code() == Some("NOTBUSY")),
        "{r:?}"
    );

    // A script that never ends, on one primary.
    let runner = local.connect_node(busy).await.unwrap();
    let script = tokio::spawn(async move {
        runner
            .send_timeout(
                cmd("EVAL").arg("while true do end").arg(0),
                Duration::from_secs(30),
            )
            .await
    });
    support::wait_until_busy(&local, busy).await;

    // Its node's requests get the typed refusal, unretried; the other nodes' are
    // served. A refusal is an answer: the node's breaker stays closed after more of
    // them than `consecutive_failures`.
    let retries = client.stats().retries;
    for _ in 0..10 {
        let r = client.get::<_, Option<String>>(key).await;
        assert!(
            matches!(&r, Err(e) if e.server_code() == Some("BUSY")),
            "{r:?}"
        );
    }
    assert_eq!(client.stats().retries, retries);
    let health = client.health();
    let node = health.node(&local.node_addr(busy)).unwrap();
    assert_eq!(node.breaker, redcluster::BreakerState::Closed);
    client.set(elsewhere.as_str(), "w").await.unwrap();

    // One SCRIPT KILL across the cluster: the busy node kills its script (the others
    // answer NOTBUSY), and the node serves again.
    let killed: Value = client.query(cmd("SCRIPT").arg("KILL")).await.unwrap();
    assert_eq!(killed, Value::Simple("OK".into()));
    let ended = script.await.unwrap().unwrap();
    assert!(
        matches!(&ended, Value::ServerError(e) if e.to_string().contains("killed")),
        "{ended:?}"
    );
    let read: Option<String> = client.get(key).await.unwrap();
    assert_eq!(read.as_deref(), Some("v"));
}

/// A script this client started, on its own shared connection to the node, is stopped
/// by the client's `SCRIPT KILL`: that goes on a connection of its own, not behind the
/// script on the shared one, which the server does not read while the script runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_the_client_started_is_stopped_by_its_own_script_kill() {
    let local = busy_cluster().await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(3))
        .build()
        .await
        .unwrap();
    let key = "busy:{own}";
    client.set(key, "v").await.unwrap();
    let busy = support::owner_index(&local, &client, key);
    let script = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .query::<Value>(cmd("EVAL").arg("while true do end").arg(1).arg(key))
                .await
        })
    };
    support::wait_until_busy(&local, busy).await;
    let killed: Value = client.query(cmd("SCRIPT").arg("KILL")).await.unwrap();
    assert_eq!(killed, Value::Simple("OK".into()));
    let ended = script.await.unwrap();
    assert!(
        matches!(&ended, Err(e) if e.to_string().contains("killed")),
        "{ended:?}"
    );
    let read: Option<String> = client.get(key).await.unwrap();
    assert_eq!(read.as_deref(), Some("v"));
}

/// A read-only script that runs on a replica (replica reads, `EVAL_RO`) is stopped by
/// the client's `SCRIPT KILL` too: it goes to every node, not only to the primaries,
/// which answered `NOTBUSY` while the replica stayed busy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_script_on_a_replica_is_stopped_by_script_kill() {
    let local = busy_cluster().await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(redcluster::ReadFrom::Replica)
        .response_timeout(Duration::from_secs(3))
        .build()
        .await
        .unwrap();
    let key = "busy:{ro}";
    client.set(key, "v").await.unwrap();
    let primary = support::owner_index(&local, &client, key);
    let replica = local.replicas_of(primary).await.unwrap()[0];
    let script = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .query::<Value>(cmd("EVAL_RO").arg("while true do end").arg(1).arg(key))
                .await
        })
    };
    support::wait_until_busy(&local, replica).await;
    let killed: Value = client.query(cmd("SCRIPT").arg("KILL")).await.unwrap();
    assert_eq!(killed, Value::Simple("OK".into()));
    let ended = tokio::time::timeout(Duration::from_secs(10), script)
        .await
        .expect("the script ended")
        .unwrap();
    assert!(
        matches!(&ended, Err(e) if e.to_string().contains("killed")),
        "{ended:?}"
    );
}

/// A cluster whose nodes answer `BUSY` once a script has run 100 ms (5 s by default).
async fn busy_cluster() -> LocalCluster {
    LocalCluster::builder()
        .config("busy-reply-threshold", "100")
        .start()
        .await
        .unwrap()
}
