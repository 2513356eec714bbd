//! Commands that hold a connection, against a real cluster: blocking commands on
//! dedicated connections, WATCH transactions, pool recycling.

mod support;

use std::sync::Arc;
use std::time::Duration;

use redcluster::testkit::LocalCluster;
use redcluster::{cmd, ClusterClient, Value};
use tokio::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_command_never_stalls_other_requests() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let blocked = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .query::<Option<(String, String)>>(cmd("BLPOP").arg("{q}:jobs").arg(10))
                .await
        })
    };
    // Same slot, so the same node: with one shared connection these would wait 10 s.
    let started = Instant::now();
    for i in 0..100 {
        client.set(format!("{{q}}:k{i}"), i).await.unwrap();
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(!blocked.is_finished());
    let pushed: i64 = client
        .query(cmd("RPUSH").arg("{q}:jobs").arg("job-1"))
        .await
        .unwrap();
    assert_eq!(pushed, 1);
    let popped = blocked.await.unwrap().unwrap();
    assert_eq!(popped, Some(("{q}:jobs".to_string(), "job-1".to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_command_gets_the_time_it_asks_for_beyond_the_response_timeout() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let started = Instant::now();
    let popped: Option<(String, String)> = client
        .query(cmd("BLPOP").arg("empty").arg(1))
        .await
        .unwrap();
    assert_eq!(
        popped, None,
        "the server's own timeout answered, not the client's"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    // XREAD BLOCK likewise.
    let read: Value = client
        .query(
            cmd("XREAD")
                .arg("BLOCK")
                .arg(500)
                .arg("STREAMS")
                .arg("nostream")
                .arg("$"),
        )
        .await
        .unwrap();
    assert_eq!(read, Value::Nil);
    // XREADGROUP with its options in any order the server takes: BLOCK before GROUP.
    let created: Value = client
        .query(
            cmd("XGROUP")
                .arg("CREATE")
                .arg("{xg}:stream")
                .arg("readers")
                .arg("$")
                .arg("MKSTREAM"),
        )
        .await
        .unwrap();
    assert_eq!(created, Value::Simple("OK".into()));
    let started = Instant::now();
    let read: Value = client
        .query(
            cmd("XREADGROUP")
                .arg("BLOCK")
                .arg(700)
                .arg("GROUP")
                .arg("readers")
                .arg("reader-1")
                .arg("STREAMS")
                .arg("{xg}:stream")
                .arg(">"),
        )
        .await
        .unwrap();
    assert_eq!(read, Value::Nil);
    assert!(started.elapsed() >= Duration::from_millis(700));
    // A timeout the server reads as hexadecimal (`strtold`): 0x1 is one second.
    let started = Instant::now();
    let popped: Value = client
        .query(cmd("BLPOP").arg("empty").arg("0x1"))
        .await
        .unwrap();
    assert_eq!(popped, Value::Nil);
    assert!(started.elapsed() >= Duration::from_secs(1));
    // And on a watched connection: the watch holds while the read waits.
    let mut watched = client.watch(["{wb}:flag"]).await.unwrap();
    let read: Value = watched
        .query(
            cmd("XREAD")
                .arg("BLOCK")
                .arg(800)
                .arg("STREAMS")
                .arg("{wb}:stream")
                .arg("$"),
        )
        .await
        .unwrap();
    assert_eq!(read, Value::Nil);
    let committed = watched
        .exec(vec![cmd("SET").arg("{wb}:flag").arg(1)])
        .await
        .unwrap();
    assert!(committed.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_reports_a_conflict_as_none_and_commits_otherwise() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    client.set("{w}:x", 1).await.unwrap();

    let mut w = client.watch(["{w}:x"]).await.unwrap();
    let x: i64 = w.query(cmd("GET").arg("{w}:x")).await.unwrap();
    client.set("{w}:x", 5).await.unwrap(); // someone else writes meanwhile
    let outcome = w
        .exec(vec![cmd("SET").arg("{w}:x").arg(x + 1)])
        .await
        .unwrap();
    assert_eq!(outcome, None, "conflict, nothing ran");
    assert_eq!(client.get::<_, i64>("{w}:x").await.unwrap(), 5);

    let mut w = client.watch(["{w}:x"]).await.unwrap();
    let x: i64 = w.query(cmd("GET").arg("{w}:x")).await.unwrap();
    let outcome = w
        .exec(vec![cmd("SET").arg("{w}:x").arg(x + 1)])
        .await
        .unwrap();
    assert_eq!(outcome, Some(vec![Value::Simple("OK".into())]));
    assert_eq!(client.get::<_, i64>("{w}:x").await.unwrap(), 6);

    let err = client.watch(["{w}:x", "other"]).await.unwrap_err();
    assert!(
        matches!(err, redcluster::Error::CrossSlot { .. }),
        "{err:?}"
    );

    // A key over the 512 MiB a server takes (`proto-max-bulk-len`) is refused unsent,
    // as in any command: the server would answer a protocol error and close the
    // connection.
    let mut huge = b"{w}:".to_vec();
    huge.resize(512 * 1024 * 1024 + 1, b'x');
    let started = Instant::now();
    let err = client.watch([&huge[..]]).await.unwrap_err();
    assert!(
        matches!(&err, redcluster::Error::Config(m) if m.contains("512 MiB")),
        "{err:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "refused at once"
    );
    drop(huge);
    let w = client.watch(["{w}:x"]).await.unwrap();
    assert!(w.exec(vec![]).await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_retry_makes_concurrent_increments_exact() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    client.set("{c}:n", 0).await.unwrap();
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move {
                client
                    .watch_retry(&["{c}:n"], 100, |mut w| async move {
                        let n: i64 = w.query(cmd("GET").arg("{c}:n")).await?;
                        tokio::task::yield_now().await;
                        let done = w.exec(vec![cmd("SET").arg("{c}:n").arg(n + 1)]).await?;
                        Ok(done.map(|_| n + 1))
                    })
                    .await
            })
        })
        .collect();
    for t in tasks {
        assert!(
            t.await.unwrap().unwrap().is_some(),
            "committed within 100 attempts"
        );
    }
    assert_eq!(client.get::<_, i64>("{c}:n").await.unwrap(), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_waits_out_a_migration_of_its_slot_and_watches_at_the_new_owner() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let key = "{wm}:new";
    let slot = redcluster::key_slot(key.as_bytes());
    let to = support::other_master(&local, slot).await;
    let migration = local.begin_slot_migration(slot, to).await.unwrap();
    let watching = spawn_watch_meeting_ask(&client, key).await;
    assert!(
        !watching.is_finished(),
        "the watch ended during the migration: {:?}",
        watching.await
    );
    // The migration ends while the watch waits: it watches at the new owner.
    local.finish_slot_migration(migration).await.unwrap();
    let committed = watching.await.unwrap().unwrap();
    assert_eq!(committed, Some(vec![Value::Simple("OK".into())]));
    assert_eq!(client.get::<_, i64>(key).await.unwrap(), 1);
    assert_eq!(local.master_of_slot(slot).await.unwrap(), to);
}

/// A task that `WATCH`es `key`, of a migrating slot, and then sets it to 1; returned once
/// the `WATCH` was answered `ASK` (the source does not hold the key), within 10 s.
async fn spawn_watch_meeting_ask(
    client: &ClusterClient,
    key: &'static str,
) -> tokio::task::JoinHandle<redcluster::Result<Option<Vec<Value>>>> {
    let watching = {
        let client = client.clone();
        tokio::spawn(async move {
            let watched = client.watch([key]).await?;
            watched.exec(vec![cmd("SET").arg(key).arg(1)]).await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.stats().ask == 0 && !watching.is_finished() {
        assert!(Instant::now() < deadline, "WATCH was never answered ASK");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(client.stats().ask > 0, "WATCH was never answered ASK");
    watching
}

/// A `WATCH` answered `ASK` waits out the migration with backoffs, without its
/// dedicated connection: with one per node, other transactions on the node go on
/// meanwhile, each within a short timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_waiting_out_a_migration_leaves_the_node_its_connection_meanwhile() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(10))
        .max_connections_per_node(1)
        .retry_backoff(Duration::from_millis(200), Duration::from_millis(400))
        .max_retries(100)
        .build()
        .await
        .unwrap();
    let key = "{wl}:new";
    let slot = redcluster::key_slot(key.as_bytes());
    // A key of a neighbouring slot, on the same node, which does not move.
    let source = client.node_for_key(key.as_bytes()).unwrap();
    let other = [slot + 1, slot - 1]
        .into_iter()
        .map(|s| support::key_in_slot(s, 0))
        .find(|k| client.node_for_key(k.as_bytes()).unwrap() == source)
        .unwrap();
    let to = support::other_master(&local, slot).await;
    let migration = local.begin_slot_migration(slot, to).await.unwrap();
    let watching = spawn_watch_meeting_ask(&client, key).await;
    let hasty = client.with_response_timeout(Duration::from_millis(300));
    for i in 0..5 {
        let watched = hasty.watch([other.as_str()]).await.unwrap();
        let done = watched
            .exec(vec![cmd("SET").arg(other.as_str()).arg(i)])
            .await
            .unwrap();
        assert_eq!(done, Some(vec![Value::Simple("OK".into())]));
    }
    assert!(
        !watching.is_finished(),
        "the watch ended during the migration: {:?}",
        watching.await
    );
    local.finish_slot_migration(migration).await.unwrap();
    let committed = watching.await.unwrap().unwrap();
    assert_eq!(committed, Some(vec![Value::Simple("OK".into())]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_retry_watches_again_when_the_slot_moved_before_exec() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let key = "{wr}:n";
    let (committed, runs) = increment_across_a_slot_move(&local, &client, key).await;
    assert_eq!(committed.unwrap(), Some(2));
    assert_eq!(runs, 2);
    assert_eq!(client.get::<_, i64>(key).await.unwrap(), 2);
}

/// `watch_retry` (three attempts) incrementing `key`, set to 1 first, whose slot moves
/// to another master between the first attempt's `WATCH` and `EXEC` (`EXEC` is aborted
/// with `MOVED`): its outcome, and how many times its body ran.
async fn increment_across_a_slot_move(
    local: &LocalCluster,
    client: &ClusterClient,
    key: &'static str,
) -> (redcluster::Result<Option<i64>>, u32) {
    client.set(key, 1).await.unwrap();
    let slot = redcluster::key_slot(key.as_bytes());
    let to = support::other_master(local, slot).await;
    let runs = std::sync::atomic::AtomicU32::new(0);
    let runs_ref = &runs;
    let outcome = client
        .watch_retry(&[key], 3, |mut w| async move {
            let n: i64 = w.query(cmd("GET").arg(key)).await?;
            if runs_ref.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0 {
                local.move_slot(slot, to).await.unwrap();
            }
            let done = w.exec(vec![cmd("SET").arg(key).arg(n + 1)]).await?;
            Ok(done.map(|_| n + 1))
        })
        .await;
    (outcome, runs.load(std::sync::atomic::Ordering::SeqCst))
}

/// A body whose `EXEC` committed and whose next request then failed unsent (retryable
/// on its own) is not run again: that would commit the transaction twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_retry_never_runs_a_committed_transaction_again() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let balance = "{acct:9}:balance";
    client.set(balance, 100).await.unwrap();
    let unsent = client.with_response_timeout(Duration::ZERO);
    let runs = std::sync::atomic::AtomicU32::new(0);
    let (runs_ref, unsent_ref) = (&runs, &unsent);
    let outcome = client
        .watch_retry(&[balance], 3, |mut w| async move {
            runs_ref.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let b: i64 = w.query(cmd("GET").arg(balance)).await?;
            let done = w.exec(vec![cmd("SET").arg(balance).arg(b - 10)]).await?;
            // After the commit: a request that fails before it is sent.
            unsent_ref.incr("{acct:9}:audit", 1).await?;
            Ok(done.map(|_| b - 10))
        })
        .await;
    // Not "safe to send again", as the unsent request alone would say: the transaction
    // committed.
    let err = outcome.unwrap_err();
    assert!(err.may_have_executed() && !err.is_retryable(), "{err:?}");
    assert!(
        matches!(
            &err,
            redcluster::Error::Partial { source }
                if matches!(**source, redcluster::Error::Timeout { may_have_executed: false })
        ),
        "{err:?}"
    );
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(client.get::<_, i64>(balance).await.unwrap(), 90);
}

/// A body that reports a conflict (`Ok(None)`) after its `EXEC` committed (here a reply
/// it could not read as it wanted) is not run again either: the conflict is not the
/// transaction's, and a second run would commit it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_retry_takes_no_conflict_after_a_commit_for_one() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let counter = "{acct:10}:count";
    let runs = std::sync::atomic::AtomicU32::new(0);
    let runs_ref = &runs;
    let outcome = client
        .watch_retry(&[counter], 3, |w| async move {
            runs_ref.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let done = w.exec(vec![cmd("INCR").arg(counter)]).await?;
            // Committed (`Some`), but read as a conflict: the body wanted a string.
            Ok(done.and_then(|replies| match &replies[0] {
                Value::Bulk(b) => Some(b.clone()),
                _ => None,
            }))
        })
        .await;
    let err = outcome.unwrap_err();
    assert!(err.may_have_executed() && !err.is_retryable(), "{err:?}");
    assert!(matches!(err, redcluster::Error::Partial { .. }), "{err:?}");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(client.get::<_, i64>(counter).await.unwrap(), 1);
}

/// An `EXEC` the node refused (a command refused while queueing aborts it) ran nothing:
/// a body that reads that as a conflict (`Ok(None)`) is run again, not stopped as if the
/// transaction may have committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_retry_runs_again_after_an_exec_the_node_refused() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let key = "{wr-abort}:n";
    let runs = std::sync::atomic::AtomicU32::new(0);
    let runs_ref = &runs;
    let outcome = client
        .watch_retry(&[key], 2, |w| async move {
            runs_ref.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            // `INCR` with one argument too many: refused while queueing, `EXECABORT`.
            match w.exec(vec![cmd("INCR").arg(key).arg("extra")]).await {
                Err(e) if e.server_code().is_some() => Ok(None),
                other => other.map(|_| Some(())),
            }
        })
        .await;
    assert!(matches!(outcome, Ok(None)), "{outcome:?}");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert_eq!(client.get::<_, Option<i64>>(key).await.unwrap(), None);
}

/// With `retry_on_cluster_down(false)`, a body's `ClusterDown` ends `watch_retry` at
/// once, as it ends any request: the caller decides. It was watched and run again, up
/// to the attempts given.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_retry_leaves_a_cluster_down_to_the_caller_when_told_to() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .retry_on_cluster_down(false)
        .build()
        .await
        .unwrap();
    let down = "{wr-down}:k";
    let owner = support::owner_index(&local, &client, down);
    // The slot's owner gives it up: it answers `CLUSTERDOWN` (it no longer sees every
    // slot served), the other nodes, which still list the slot as its, serve theirs.
    let slot = i64::from(redcluster::key_slot(down.as_bytes()));
    let deleted = local
        .connect_node(owner)
        .await
        .unwrap()
        .send(cmd("CLUSTER").arg("DELSLOTS").arg(slot))
        .await
        .unwrap();
    assert_eq!(deleted, Value::Simple("OK".into()));
    let watched = support::key_elsewhere(&client, down, "wr-up");
    let runs = std::sync::atomic::AtomicU32::new(0);
    let (runs_ref, client_ref, watched_ref) = (&runs, &client, watched.as_str());
    let outcome = client
        .watch_retry(&[watched_ref], 3, |w| async move {
            runs_ref.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _: Option<String> = client_ref.get(down).await?;
            w.exec(vec![cmd("INCR").arg(watched_ref)]).await
        })
        .await;
    assert!(
        matches!(outcome, Err(redcluster::Error::ClusterDown(_))),
        "{outcome:?}"
    );
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
}

/// `watch_retry`'s attempts after a retryable error are retries of the client's
/// budget: with the budget spent, the `MOVED` that aborted `EXEC` is the answer rather
/// than another round of `WATCH` and body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_retry_stops_when_the_retry_budget_is_spent() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .retry_budget(redcluster::RetryBudgetConfig::new(0.0, 0.0, 0.0))
        .build()
        .await
        .unwrap();
    let key = "{wb}:n";
    let (outcome, runs) = increment_across_a_slot_move(&local, &client, key).await;
    let err = outcome.unwrap_err();
    assert_eq!(err.server_code(), Some("MOVED"), "{err:?}");
    assert_eq!(runs, 1);
    assert_eq!(client.get::<_, i64>(key).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dedicated_connect_slower_than_the_response_timeout_still_serves_the_next_request() {
    const PASSWORD: &str = "slow-provider-pass";
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .config("requirepass", PASSWORD)
        .start()
        .await
        .unwrap();
    // Every connect takes 400 ms (a slow secrets service); requests may take 250 ms.
    let provider = redcluster::CredentialsProvider::new(|| async {
        tokio::time::sleep(Duration::from_millis(400)).await;
        Ok((None, redcluster::Secret::new(PASSWORD)))
    });
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .credentials_provider(provider)
        .connect_timeout(Duration::from_secs(5))
        .response_timeout(Duration::from_millis(250))
        .build()
        .await
        .unwrap();
    let key = "{slow}:list";
    let blpop = || client.query::<Option<(String, String)>>(cmd("BLPOP").arg(key).arg("0.05"));
    let mut outcomes = Vec::new();
    for _ in 0..5 {
        let outcome = blpop().await;
        let served = outcome.is_ok();
        outcomes.push(outcome);
        if served {
            break;
        }
    }
    // The first waited out its deadline while its connection was opened; a later one
    // gets that connection.
    assert!(
        matches!(
            outcomes.first(),
            Some(Err(redcluster::Error::Timeout { .. }))
        ),
        "{outcomes:?}"
    );
    assert!(
        matches!(outcomes.last(), Some(Ok(None))),
        "every BLPOP timed out while connecting: {outcomes:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_comes_back_unwatched() {
    let local = support::cluster(3, 0).await;
    // One dedicated connection per node, so the second WATCH reuses the first's.
    let client = Arc::new(
        ClusterClient::builder()
            .nodes(local.seeds())
            .max_connections_per_node(1)
            .build()
            .await
            .unwrap(),
    );
    let mut w = client.watch(["{r}:a"]).await.unwrap();
    let _: Option<String> = w.query(cmd("GET").arg("{r}:a")).await.unwrap();
    let id: i64 = w.query(cmd("CLIENT").arg("ID")).await.unwrap();
    drop(w); // given back without EXEC: still watching {r}:a until recycled
    client.set("{r}:a", "changed").await.unwrap();
    let mut w = client.watch(["{r}:b"]).await.unwrap();
    let same: i64 = w.query(cmd("CLIENT").arg("ID")).await.unwrap();
    assert_eq!(same, id, "the pool handed out the same connection");
    let outcome = w.exec(vec![cmd("SET").arg("{r}:b").arg(1)]).await.unwrap();
    assert!(
        outcome.is_some(),
        "the old WATCH on {{r}}:a was cleared by the recycle check"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_multiplexed_connections_per_node_share_the_load() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .connections_per_node(4)
        .client_name("mux-test")
        // No PINGs: the last command of every connection is one of the test's.
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let writes = (0..400).map(|i| client.set(format!("m:{i}"), i));
    for r in futures_util::future::join_all(writes).await {
        r.unwrap();
    }
    // Count this client's connections on one node: four multiplexed ones were opened.
    let node = local.connect_node(0).await.unwrap();
    let list = String::from_utf8(match node.send(cmd("CLIENT").arg("LIST")).await.unwrap() {
        Value::Bulk(b) | Value::Verbatim { text: b, .. } => b.to_vec(),
        other => panic!("{other:?}"),
    })
    .unwrap();
    let ours: Vec<&str> = list
        .lines()
        .filter(|l| l.contains("name=mux-test "))
        .collect();
    assert_eq!(ours.len(), 4, "the client's connections to node 0:\n{list}");
    // Redis 7.0 counts no commands per connection, but shows the last one: `set` on
    // each connection that carried some of the writes.
    let writing = ours.iter().filter(|l| l.contains(" cmd=set ")).count();
    assert!(
        writing >= 2,
        "the writes went over {writing} of the connections:\n{list}"
    );
    for i in [0, 199, 399] {
        assert_eq!(client.get::<_, i64>(format!("m:{i}")).await.unwrap(), i);
    }
}

/// A consumer blocked on a primary that a failover demotes gracefully is let go by the
/// server with `UNBLOCKED force unblock from blocking operation, instance state
/// changed` (Redis 7.0; nothing was popped), and blocks again at the promoted replica
/// after a refresh: the consumer got that error, for every consumer of the shard on
/// every rolling upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_blocked_through_a_graceful_failover_blocks_again_at_the_new_primary() {
    use redcluster::testkit::FailoverMode;
    let local = support::cluster(3, 1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let queue = "{graceful}:jobs";
    let primary = support::owner_index(&local, &client, queue);
    let replica = local.replicas_of(primary).await.unwrap()[0];
    let consumer = spawn_blpop(&client, queue, 0, false);
    until_blocked(&local, &client, queue, true).await;
    local
        .failover(replica, FailoverMode::Graceful)
        .await
        .unwrap();
    // The consumer's own resend asks for the refresh that names the new primary.
    let promoted = local.node_addr(replica);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.node_for_key(queue.as_bytes()).as_deref() != Some(promoted.as_str()) {
        assert!(
            !consumer.is_finished() && Instant::now() < deadline,
            "the consumer ended or never moved: finished {}",
            consumer.is_finished()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    until_blocked(&local, &client, queue, true).await;
    let producer = ClusterClient::connect(local.seeds()).await.unwrap();
    producer
        .query::<i64>(cmd("RPUSH").arg(queue).arg("job"))
        .await
        .unwrap();
    let popped = tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("the consumer was answered")
        .unwrap()
        .unwrap();
    assert_eq!(popped, Some((queue.to_string(), "job".to_string())));
}

/// `BLPOP queue block` on a task of its own, alone or as a pipeline of one
/// (`pipeline`); what it popped.
fn spawn_blpop(
    client: &ClusterClient,
    queue: &'static str,
    block: u64,
    pipeline: bool,
) -> tokio::task::JoinHandle<redcluster::Result<Option<(String, String)>>> {
    let client = client.clone();
    tokio::spawn(async move {
        let blpop = cmd("BLPOP").arg(queue).arg(block);
        if pipeline {
            let mut p = client.pipeline();
            p.add(blpop);
            p.execute_as::<Vec<Option<(String, String)>>>()
                .await
                .map(|popped| popped.into_iter().next().flatten())
        } else {
            client.query::<Option<(String, String)>>(blpop).await
        }
    })
}

/// Waits (5 s at most) until a client is blocked on the node serving `key`, or until
/// none is (`blocked` false).
async fn until_blocked(local: &LocalCluster, client: &ClusterClient, key: &str, blocked: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while (blocked_clients(local, client, key).await > 0) != blocked {
        let what = if blocked {
            "never blocked"
        } else {
            "still blocks"
        };
        assert!(Instant::now() < deadline, "the command on {key} {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `blocked_clients` of the node serving `key`, from `INFO clients`.
async fn blocked_clients(local: &LocalCluster, client: &ClusterClient, key: &str) -> u64 {
    let index = support::owner_index(local, client, key);
    support::info_field(local, index, "clients", "blocked_clients")
        .await
        .unwrap()
}

/// Requests queued for one node's full pool hold none of the client-wide
/// `max_connections`: a blocking command for another node still gets a connection.
/// (Three, of which blocking commands may hold two: one is kept for others.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_queued_for_a_busy_node_leaves_other_nodes_their_connections() {
    use futures_util::FutureExt as _;
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .max_connections(3)
        .max_connections_per_node(1)
        .response_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let busy = "{busy}:held";
    let elsewhere = support::key_elsewhere(&client, busy, "free:list:");
    // The busy node's only dedicated connection blocks for 2 s.
    let holder = {
        let client = client.clone();
        tokio::spawn(async move { client.query::<Value>(cmd("BLPOP").arg(busy).arg(2)).await })
    };
    until_blocked(&local, &client, busy, true).await;
    // A second one for that node, allowed to wait 5 s: polled once, it is queued.
    let patient = client.with_response_timeout(Duration::from_secs(5));
    let mut queued = Box::pin(async move {
        patient
            .query::<Value>(cmd("BLPOP").arg("{busy}:next").arg(1))
            .await
    });
    assert!((&mut queued).now_or_never().is_none());
    let queued = tokio::spawn(queued);
    // The other node's blocking command is served at once.
    let served: Value = client
        .query(cmd("BLPOP").arg(elsewhere.as_str()).arg(0.1))
        .await
        .unwrap();
    assert_eq!(served, Value::Nil);
    assert_eq!(holder.await.unwrap().unwrap(), Value::Nil);
    assert_eq!(queued.await.unwrap().unwrap(), Value::Nil);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_for_a_dedicated_connection_costs_the_request_timeout_not_its_block_time() {
    let local = support::cluster(3, 0).await;
    let timeout = Duration::from_millis(300);
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .max_connections(1)
        .response_timeout(timeout)
        .build()
        .await
        .unwrap();
    // The only dedicated connection blocks for up to 10 s.
    let holder = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .query::<Option<(String, String)>>(cmd("BLPOP").arg("{q}:held").arg(10))
                .await
        })
    };
    until_blocked(&local, &client, "{q}:held", true).await;
    // A second blocking command cannot get a connection: it fails after the request
    // timeout, unsent, instead of waiting out its own 10 s block time.
    let started = Instant::now();
    let err = client
        .query::<Value>(cmd("BLPOP").arg("{q}:other").arg(10))
        .await
        .unwrap_err();
    let waited = started.elapsed();
    assert!(matches!(err, redcluster::Error::Timeout { .. }), "{err:?}");
    assert!(
        waited >= timeout && waited < Duration::from_secs(3),
        "{waited:?}"
    );
    // The holder is still served.
    client.rpush("{q}:held", ["job"]).await.unwrap();
    let got = holder.await.unwrap().unwrap();
    assert_eq!(got, Some(("{q}:held".to_owned(), "job".to_owned())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_blpop_leaves_later_jobs_to_the_next_consumer() {
    let local = support::cluster(3, 0).await;
    // One dedicated connection per node: were the dropped BLPOP's connection pooled
    // again, still blocked on the server, the next BLPOP would get it.
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .max_connections_per_node(1)
        .build()
        .await
        .unwrap();
    let key = "{q}:dropped";
    let blpop = client.query::<Value>(cmd("BLPOP").arg(key).arg(0));
    let waiting = until_blocked(&local, &client, key, true);
    // The BLPOP blocks on the server; then its future is dropped.
    tokio::select! {
        r = blpop => panic!("BLPOP k 0 answered with nothing pushed: {r:?}"),
        () = waiting => {}
    }
    // Its connection is closed, so the server stops blocking it ...
    until_blocked(&local, &client, key, false).await;
    // ... and a job pushed now waits for the next consumer, who gets it.
    client.rpush(key, ["job-1"]).await.unwrap();
    let left: i64 = client.query(cmd("LLEN").arg(key)).await.unwrap();
    assert_eq!(left, 1, "nobody took the job");
    let got: Option<(String, String)> = client.query(cmd("BLPOP").arg(key).arg(1)).await.unwrap();
    assert_eq!(got, Some((key.to_owned(), "job-1".to_owned())));
}

/// A blocking command that waited most of its response timeout for a dedicated
/// connection still gets the whole timeout for its reply once sent: the server may pop
/// for it late (here a script holds the server past the request's first deadline), and a
/// client that gave up then would lose the popped element.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_command_leased_late_still_gets_its_reply() {
    let local = support::cluster(3, 0).await;
    let timeout = Duration::from_secs(4);
    let block = Duration::from_secs(1);
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .max_connections_per_node(1)
        .response_timeout(timeout)
        .build()
        .await
        .unwrap();
    let (held, late) = ("{late}:held", "{late}:list");
    // The node's only dedicated connection blocks until released.
    let holder = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .query::<Option<(String, String)>>(cmd("BLPOP").arg(held).arg(0))
                .await
        })
    };
    until_blocked(&local, &client, held, true).await;
    // A second one waits for that connection for most of its response timeout.
    let started = Instant::now();
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .query::<Option<(String, String)>>(cmd("BLPOP").arg(late).arg(block.as_secs()))
                .await
        })
    };
    tokio::time::sleep(timeout * 3 / 4).await;
    client.rpush(held, ["release"]).await.unwrap();
    let released = tokio::time::timeout(Duration::from_secs(10), holder)
        .await
        .expect("the holder was answered")
        .unwrap()
        .unwrap();
    assert_eq!(released, Some((held.to_owned(), "release".to_owned())));
    until_blocked(&local, &client, late, true).await;
    // A script pushes its element, then holds the server until well past the second
    // BLPOP's first deadline (its response timeout plus its block time).
    let hold_until = started + timeout + block + Duration::from_millis(700);
    let hold = hold_until.saturating_duration_since(Instant::now());
    let script = "redis.call('RPUSH', KEYS[1], ARGV[1]) \
        local t = redis.call('TIME') \
        local stop = t[1] * 1000000 + t[2] + tonumber(ARGV[2]) \
        repeat t = redis.call('TIME') until t[1] * 1000000 + t[2] >= stop \
        return 1";
    let ran: i64 = client
        .query(
            cmd("EVAL")
                .arg(script)
                .arg(1)
                .arg(late)
                .arg("job")
                .arg(hold.as_micros().to_string()),
        )
        .await
        .unwrap();
    assert_eq!(ran, 1);
    // The reply comes after the server is free again: the element, or (had the server
    // timed the BLPOP out first) nothing, with the element still queued. Never lost.
    let got = waiting.await.unwrap();
    assert!(
        started.elapsed() > timeout + block,
        "the server answered before the first deadline: the test proves nothing"
    );
    let left: i64 = client.query(cmd("LLEN").arg(late)).await.unwrap();
    match got.expect("the late-leased BLPOP failed after its element may have been popped") {
        Some((key, value)) => {
            assert_eq!((key.as_str(), value.as_str()), (late, "job"));
            assert_eq!(left, 0);
        }
        None => assert_eq!(left, 1, "the element was lost"),
    }
}

/// Under `durable_writes`, a watched transaction with a write is followed by `WAIT` on
/// its own connection: when it returns, the replica has the write, or the caller hears
/// that it does not (`NotReplicated`, the transaction committed all the same).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_transaction_under_durable_writes_waits_for_its_replicas() {
    use redcluster::{Durability, Error};
    let local = support::cluster(3, 1).await;
    let durable = |replicas, timeout| {
        ClusterClient::builder()
            .nodes(local.seeds())
            .durable_writes(Durability::new(replicas, timeout))
            .build()
    };
    let client = durable(1, Duration::from_secs(5)).await.unwrap();
    let key = "{dw}:n";
    let owner = support::owner_index(&local, &client, key);
    let waits = support::calls(&local, owner, "wait").await;
    let watched = client.watch([key]).await.unwrap();
    let committed = watched.exec(vec![cmd("INCR").arg(key)]).await.unwrap();
    assert_eq!(committed, Some(vec![Value::Int(1)]));
    assert_eq!(support::calls(&local, owner, "wait").await, waits + 1);
    // The replica has it already: WAIT said so.
    let replica = local.replicas_of(owner).await.unwrap()[0];
    let on_replica = local.connect_node(replica).await.unwrap();
    on_replica.send(cmd("READONLY")).await.unwrap();
    assert_eq!(
        on_replica.send(cmd("GET").arg(key)).await.unwrap(),
        Value::Bulk("1".into())
    );
    // A read-only transaction gets no WAIT.
    let watched = client.watch([key]).await.unwrap();
    let read = watched.exec(vec![cmd("GET").arg(key)]).await.unwrap();
    assert_eq!(read, Some(vec![Value::Bulk("1".into())]));
    assert_eq!(support::calls(&local, owner, "wait").await, waits + 1);
    // More replicas than the shard has: committed, and reported short.
    let strict = durable(2, Duration::from_millis(200)).await.unwrap();
    let watched = strict.watch([key]).await.unwrap();
    let err = watched.exec(vec![cmd("INCR").arg(key)]).await.unwrap_err();
    assert!(
        // The one replica within 200 ms, as a rule; a loaded machine may say none.
        matches!(
            err,
            Error::NotReplicated {
                acknowledged: 0 | 1,
                requested: 2
            }
        ),
        "{err:?}"
    );
    assert_eq!(client.get::<_, i64>(key).await.unwrap(), 2);

    // `transaction()` likewise: on a connection of its own, then WAIT.
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg(key)).add(cmd("GET").arg(key));
    let replies = tx.execute().await.unwrap();
    assert_eq!(replies, [Value::Int(3), Value::Bulk("3".into())]);
    assert_eq!(support::calls(&local, owner, "wait").await, waits + 3);
    assert_eq!(
        on_replica.send(cmd("GET").arg(key)).await.unwrap(),
        Value::Bulk("3".into())
    );
    let mut tx = strict.transaction();
    tx.add(cmd("INCR").arg(key));
    let err = tx.execute().await.unwrap_err();
    assert!(matches!(err, Error::NotReplicated { .. }), "{err:?}");
    assert_eq!(client.get::<_, i64>(key).await.unwrap(), 4);
    // Its slot moved behind the client's back: MOVED while queueing, nothing ran; it
    // runs once on the new owner.
    let slot = redcluster::key_slot(key.as_bytes());
    let masters = local.masters().await.unwrap();
    let to = masters.into_iter().find(|&m| m != owner).unwrap();
    local.move_slot(slot, to).await.unwrap();
    let moved = client.stats().moved;
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg(key));
    assert_eq!(tx.execute().await.unwrap(), [Value::Int(5)]);
    assert!(client.stats().moved > moved);
    assert_eq!(client.get::<_, i64>(key).await.unwrap(), 5);
}

/// A consumer that only ever sends `BLPOP` rides a failover of its queue's primary:
/// connects refused by the dead node ask for a refresh and are retried (the breaker
/// fails some fast meanwhile), and once the replica is promoted the next `BLPOP` goes
/// there. No other traffic, periodic refresh or health check is there to notice the
/// failover for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blpop_consumer_follows_a_failover_on_its_own() {
    let local = support::cluster(3, 1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .refresh_interval(Duration::from_secs(3600))
        .health_check_interval(None)
        .response_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let queue = "{failover}:jobs";
    let primary = local
        .master_of_slot(redcluster::key_slot(queue.as_bytes()))
        .await
        .unwrap();
    let empty: Option<(String, String)> = client
        .query(cmd("BLPOP").arg(queue).arg(0.1))
        .await
        .unwrap();
    assert_eq!(empty, None);
    local.kill(primary).unwrap();
    // A producer of its own, so that the consumer's client learns nothing from it.
    let producer = ClusterClient::connect(local.seeds()).await.unwrap();
    let pushed = tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match producer
                .query::<i64>(cmd("RPUSH").arg(queue).arg("job"))
                .await
            {
                Ok(_) => return,
                Err(e) => assert!(Instant::now() < deadline, "never pushed: {e:?}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let started = Instant::now();
    let mut errors = Vec::new();
    let job = loop {
        match client
            .query::<Option<(String, String)>>(cmd("BLPOP").arg(queue).arg(1))
            .await
        {
            Ok(Some((_, job))) => break job,
            Ok(None) => {}
            Err(e) => {
                errors.push(e);
                // A caller's pace, not a busy loop of fast refusals.
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(40),
            "the consumer never reached the new primary: {} errors, the last {:?}",
            errors.len(),
            errors.last()
        );
    };
    pushed.await.unwrap();
    assert_eq!(job, "job");
    println!(
        "consumer served after {:?}; {} errors meanwhile, the first {:?}",
        started.elapsed(),
        errors.len(),
        errors.first()
    );
}

/// A `BLPOP` on a `Watched` connection whose future is dropped (a `timeout` around it)
/// closes that connection, though the `Watched` lives on: left blocked on the server,
/// it would pop the next job pushed, for no one. The `Watched` then answers its next
/// request with a connection error, unsent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_blpop_on_a_watched_connection_pops_nothing_later() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let key = "{w}:jobs";
    let mut watched = client.watch([key]).await.unwrap();
    let blpop = watched.query::<Value>(cmd("BLPOP").arg(key).arg(0));
    let waiting = until_blocked(&local, &client, key, true);
    tokio::select! {
        r = blpop => panic!("BLPOP k 0 answered with nothing pushed: {r:?}"),
        () = waiting => {}
    }
    until_blocked(&local, &client, key, false).await;
    client.rpush(key, ["job-1"]).await.unwrap();
    let left: i64 = client.query(cmd("LLEN").arg(key)).await.unwrap();
    assert_eq!(left, 1, "the job waits for the next consumer");
    let next = watched.query::<Value>(cmd("LLEN").arg(key)).await;
    assert!(
        matches!(
            next,
            Err(redcluster::Error::ConnectionLost {
                may_have_executed: false
            })
        ),
        "{next:?}"
    );
}

/// Blocking commands may hold all of a node's dedicated connections but one: workers
/// blocked for good on a queue (`BLPOP k 0`) leave a `WATCH` transaction on that node a
/// connection. One worker more than their share waits for a connection within its
/// response timeout, as for a full pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_workers_leave_watch_a_dedicated_connection() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .max_connections_per_node(2)
        .response_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let queue = "{work}:jobs";
    let worker = |client: ClusterClient| {
        tokio::spawn(async move {
            client
                .query::<Option<(String, String)>>(cmd("BLPOP").arg(queue).arg(0))
                .await
        })
    };
    let first = worker(client.clone());
    until_blocked(&local, &client, queue, true).await;
    // The second worker finds no share left: it times out unsent.
    let second = tokio::time::timeout(Duration::from_secs(5), worker(client.clone()))
        .await
        .expect("the second worker got a connection and blocked")
        .unwrap();
    assert!(
        matches!(second, Err(redcluster::Error::Timeout { .. })),
        "{second:?}"
    );
    assert_eq!(blocked_clients(&local, &client, queue).await, 1);
    // A transaction on the same node still gets the connection kept for it.
    let watched = client.watch(["{work}:count"]).await.unwrap();
    let committed = watched
        .exec(vec![cmd("INCR").arg("{work}:count")])
        .await
        .unwrap();
    assert!(committed.is_some());
    client.rpush(queue, ["job"]).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the first worker was answered")
        .unwrap()
        .unwrap();
    assert_eq!(got, Some((queue.to_owned(), "job".to_owned())));
}

/// A blocking command let through as a recovered node's breaker probe settles the
/// breaker as soon as its connection answers, not when its block time is up: other
/// requests to the node are served at once, not failed fast for the `BLPOP`'s seconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_probe_closes_the_breaker_once_its_connection_answers() {
    blocking_probe(false).await;
}

/// The same, the probe a pipeline holding the blocking command: it settled the breaker
/// only once its block time was up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_blocking_probe_closes_the_breaker_once_its_connection_answers() {
    blocking_probe(true).await;
}

/// A recovered node's breaker probe is a `BLPOP q 3`, alone or in a pipeline
/// (`pipeline`): a `GET` while it blocks is served.
/// A cluster and a client (300 ms timeouts, breakers open for 300 ms after two
/// failures) whose breaker for the owner of `key` (set to 1) was opened by a freeze the
/// owner has just come out of; and the owner's index.
async fn a_breaker_opened_for(key: &str) -> (LocalCluster, ClusterClient, usize) {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_millis(300))
        .health_check_interval(None)
        .circuit_breaker(
            redcluster::CircuitBreakerConfig::default()
                .consecutive_failures(2)
                .open_for(Duration::from_millis(300)),
        )
        .build()
        .await
        .unwrap();
    client.set(key, 1).await.unwrap();
    let owner = support::owner_index(&local, &client, key);
    local.pause(owner).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !matches!(
        client.get::<_, Option<i64>>(key).await,
        Err(redcluster::Error::CircuitOpen { .. })
    ) {
        assert!(Instant::now() < deadline, "the breaker never opened");
    }
    local.resume(owner).unwrap();
    (local, client, owner)
}

async fn blocking_probe(pipeline: bool) {
    let (queue, key) = ("{probe}:q", "{probe}:k");
    let (local, client, _) = a_breaker_opened_for(key).await;
    // Past `open_for`: the next request is the probe.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let probe = spawn_blpop(&client, queue, 3, pipeline);
    until_blocked(&local, &client, queue, true).await;
    let served = client.get::<_, Option<i64>>(key).await;
    assert!(matches!(served, Ok(Some(1))), "{served:?}");
    assert_eq!(probe.await.unwrap().unwrap(), None);
}

/// A recovered node that refuses the credentials of a blocking command's new dedicated
/// connection has answered: as its breaker's probe, the refusal closes the breaker (as
/// on the shared path). It was handed over unrecorded, leaving the breaker half-open
/// for as long as only blocking commands came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocking_probe_refused_its_credentials_closes_the_breaker() {
    refused_probe(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_blocking_probe_refused_its_credentials_closes_the_breaker() {
    refused_probe(true).await;
}

async fn refused_probe(pipeline: bool) {
    let (queue, key) = ("{refused}:q", "{refused}:k");
    let (local, client, owner) = a_breaker_opened_for(key).await;
    let addr = client.node_for_key(key.as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    // New connections to the node now need a password the client does not have.
    let admin = local.connect_node(owner).await.unwrap();
    admin
        .send(
            cmd("CONFIG")
                .arg("SET")
                .arg("requirepass")
                .arg("rotated-pw"),
        )
        .await
        .unwrap();
    // A pipeline's failure is its command's.
    let cause = |e: redcluster::Error| match e {
        redcluster::Error::Pipeline { source, .. } => *source,
        e => e,
    };
    // Past `open_for`, the BLPOP is the probe, on a new dedicated connection.
    let refused = loop {
        match spawn_blpop(&client, queue, 1, pipeline)
            .await
            .unwrap()
            .map_err(cause)
        {
            Err(redcluster::Error::CircuitOpen { .. }) => {
                assert!(Instant::now() < deadline, "no probe was let through");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => break other,
        }
    };
    assert!(
        matches!(refused, Err(redcluster::Error::Auth(_))),
        "{refused:?}"
    );
    let breaker = client.health().node(&addr).unwrap().breaker;
    assert_eq!(breaker, redcluster::BreakerState::Closed);
}

/// A durable write (a write and `WAIT` on a dedicated connection) to a slot with no
/// known owner yet waits for the refresh that finds one, within its timeout, as every
/// other request does: here a lazily connected client whose only seed is frozen until
/// the write was made. It failed at once with `ClusterDown`. (The same wait covers a
/// failed primary's slots before its replica's promotion.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_durable_write_waits_for_an_owner_of_its_slot() {
    use futures_util::FutureExt as _;
    use redcluster::Durability;
    let local = support::cluster(3, 0).await;
    let client = support::lazy_client_of_a_frozen_seed(&local, 0)
        .durable_writes(Durability::new(0, Duration::from_millis(100)))
        .build()
        .await
        .unwrap();
    let wait = Durability::new(0, Duration::from_millis(100));
    let mut durable = Box::pin(client.query_durable::<Value>(cmd("SET").arg("{d}:a").arg(1), wait));
    let mut set = Box::pin(client.set("{d}:b", 2));
    // Routed at their first poll, while the only seed is frozen: no owner known.
    assert!((&mut durable).now_or_never().is_none());
    assert!((&mut set).now_or_never().is_none());
    assert!(client.known_nodes().is_empty());
    local.resume(0).unwrap();
    let (reply, acked) = durable.await.unwrap();
    assert_eq!((reply, acked), (Value::Simple("OK".into()), 0));
    set.await.unwrap();
    let got: Vec<Option<i64>> = client.mget(["{d}:a", "{d}:b"]).await.unwrap();
    assert_eq!(got, [Some(1), Some(2)]);
}

/// A command blocked longer than the response timeout and then sent away by its node
/// (the slot moved: the node unblocks it with `MOVED`) follows the redirect and blocks
/// at the new owner: the time it was blocked is not taken from its next attempt's time
/// for a connection. It failed with `Timeout`, which says it may have popped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_blocked_past_the_timeout_follows_its_slot_to_the_new_owner() {
    blocked_past_the_timeout_then_moved(false).await;
}

/// The same, the command sent in a pipeline: the batch's resends took the pipeline's
/// deadline, long past, and the `BLPOP` failed with `Timeout` before it could block at
/// the new owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelined_command_blocked_past_the_timeout_follows_its_slot_to_the_new_owner() {
    blocked_past_the_timeout_then_moved(true).await;
}

/// A `BLPOP k 0`, alone or in a pipeline (`pipeline`), blocked past a 300 ms response
/// timeout, its slot then moved: it pops at the new owner.
async fn blocked_past_the_timeout_then_moved(pipeline: bool) {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_millis(300))
        .build()
        .await
        .unwrap();
    let queue = "{mv}:jobs";
    let slot = redcluster::key_slot(queue.as_bytes());
    let consumer = spawn_blpop(&client, queue, 0, pipeline);
    until_blocked(&local, &client, queue, true).await;
    // Past the response timeout (a wait for time to pass, not for an event).
    tokio::time::sleep(Duration::from_millis(600)).await;
    let to = support::other_master(&local, slot).await;
    local.move_slot(slot, to).await.unwrap();
    // Blocked again, at the new owner.
    let deadline = Instant::now() + Duration::from_secs(5);
    while support::info_field(&local, to, "clients", "blocked_clients")
        .await
        .unwrap()
        == 0
    {
        assert!(!consumer.is_finished(), "{:?}", consumer.await.unwrap());
        assert!(Instant::now() < deadline, "never blocked at the new owner");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    client.rpush(queue, ["job"]).await.unwrap();
    let popped = tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .expect("the consumer was answered")
        .unwrap()
        .unwrap();
    assert_eq!(popped, Some((queue.to_string(), "job".to_string())));
}

/// A client whose connections to the master of `key`'s slot go through a relay (the
/// others direct), with `response_timeout`, and that checks no node's health.
async fn client_through_relay(
    local: &LocalCluster,
    key: &str,
    response_timeout: Duration,
) -> (ClusterClient, support::relay::Relay, usize) {
    let owner = local
        .master_of_slot(redcluster::key_slot(key.as_bytes()))
        .await
        .unwrap();
    let (relay, remap) = support::relay::Relay::in_front_of(local.node_addr(owner)).await;
    let client = ClusterClient::builder()
        .nodes(
            local
                .seeds()
                .into_iter()
                .filter(|s| *s != local.node_addr(owner)),
        )
        .address_remap(remap)
        .client_name("through-relay")
        .response_timeout(response_timeout)
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    (client, relay, owner)
}

/// Idle dedicated connections whose flows the network dropped silently (a NAT or a
/// firewall forgot them all at once) fail their checks within half the lease's time
/// left each, and the request is served on a new connection: a check waited on one for
/// all the time left, and then (a fixed half of the lease's time each) two used it up,
/// and the request failed with a timeout a new connection would have spared it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_gone_silent_are_replaced_within_the_request() {
    let local = support::cluster(3, 0).await;
    let key = "{silent-pool}:q";
    let (client, relay, _) = client_through_relay(&local, key, Duration::from_secs(2)).await;
    // Two at once: two dedicated connections, both idle in the pool afterwards.
    let blpop = || async {
        client
            .query::<Option<(String, String)>>(cmd("BLPOP").arg(key).arg(0.2))
            .await
            .unwrap()
    };
    let (first, second) = tokio::join!(blpop(), blpop());
    assert_eq!((first, second), (None, None));
    assert!(relay.accepted() >= 2, "{}", relay.accepted());
    let before = relay.accepted();
    relay.black_hole();
    let popped: Option<(String, String)> = client
        .query(cmd("BLPOP").arg(key).arg(0.01))
        .await
        .expect("not served on a new connection");
    assert_eq!(popped, None);
    assert!(relay.accepted() > before, "no new connection was opened");
}

/// A dedicated connection whose connect outlived its request waits for the next one,
/// and gets the check a pooled connection gets before that request is written on it:
/// gone silent meanwhile, it was handed out unchecked, and the request written into it
/// failed as may-have-run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_left_by_a_connect_is_checked_before_it_serves() {
    let local = support::cluster(3, 0).await;
    let key = "{silent-parked}:q";
    let (client, relay, owner) =
        client_through_relay(&local, key, Duration::from_millis(300)).await;
    // The node's replies are held: the connect (its handshake) outlives the request.
    relay.hold();
    let err = client
        .query::<Option<(String, String)>>(cmd("BLPOP").arg(key).arg(0.01))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            redcluster::Error::Timeout {
                may_have_executed: false
            }
        ),
        "{err:?}"
    );
    relay.release();
    // The connect ends with `CLUSTER MYID`, the handshake's last step: once the node
    // has answered it, the connection is kept for the next request.
    let direct = local.connect_node(owner).await.unwrap();
    let started = Instant::now();
    loop {
        let list: String = redcluster::FromValue::from_value(
            direct.send(cmd("CLIENT").arg("LIST")).await.unwrap(),
        )
        .unwrap();
        if list
            .lines()
            .any(|l| l.contains("name=through-relay") && l.contains("cmd=cluster|myid"))
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the connect did not complete: {list}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // (Should the answer still be in the relay now, the connect hangs instead of
    // leaving its connection, and the request below connects anew: a pass whatever the
    // check, never a failure.)
    relay.black_hole();
    let popped: Option<(String, String)> = client
        .with_response_timeout(Duration::from_secs(3))
        .query(cmd("BLPOP").arg(key).arg(0.01))
        .await
        .expect("the silent connection served the request");
    assert_eq!(popped, None);
}

/// A blocking command sent with `query_durable` (`BLMOVE` of a reliable queue) gets the
/// time it asks to block, beyond the response timeout, as when sent alone, then its
/// `WAIT`: it had only the response timeout, so a wait timed out as may-have-run, and an
/// element moved as the deadline passed was lost to the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_durable_gives_a_blocking_command_its_block_time() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    let pusher = client.clone();
    let push = tokio::spawn(async move {
        // Pushed once the response timeout has passed: the move waits for it.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        pusher
            .query::<i64>(cmd("RPUSH").arg("{dq}:in").arg("job"))
            .await
    });
    let wait = redcluster::Durability::new(0, Duration::from_millis(10));
    let (moved, acked): (Option<String>, u32) = client
        .query_durable(
            cmd("BLMOVE")
                .arg("{dq}:in")
                .arg("{dq}:work")
                .arg("LEFT")
                .arg("RIGHT")
                .arg(5),
            wait,
        )
        .await
        .unwrap();
    assert_eq!(push.await.unwrap().unwrap(), 1);
    assert_eq!((moved.as_deref(), acked), (Some("job"), 0));
    let work: Vec<String> = client
        .query(cmd("LRANGE").arg("{dq}:work").arg(0).arg(-1))
        .await
        .unwrap();
    assert_eq!(work, vec!["job".to_string()]);
}

/// A `WATCH` of a key absent from its node guards it though the slot starts migrating
/// before `EXEC`: a writer told `ASK` creates the key on the importing node, where the
/// watching connection's node never sees it, and an `EXEC` of other keys of the slot,
/// all present on the source, committed over the guard. The transaction now names the
/// watched keys itself, so the source answers it as it answers any command missing a
/// key during a migration (`ASK`/`TRYAGAIN`: aborted, unrun, retryable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watched_absent_key_created_on_the_importing_node_aborts_the_exec() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let (guard, data) = ("{g-mig}:lock", "{g-mig}:data");
    client.set(data, "before").await.unwrap();
    let slot = redcluster::key_slot(guard.as_bytes());
    let owner = support::owner_index(&local, &client, guard);
    let target = support::master_other_than(&local, owner).await;

    let mut w = client.watch([guard]).await.unwrap();
    let held: Option<String> = w.query(cmd("GET").arg(guard)).await.unwrap();
    assert_eq!(held, None);
    let migration = local.begin_slot_migration(slot, target).await.unwrap();
    // Another writer takes the guard: the source has no such key and sends it to the
    // target (`ASK`), where it is created.
    let other = ClusterClient::connect(local.seeds()).await.unwrap();
    other.set(guard, "taken").await.unwrap();
    let on_target: Option<String> = redcluster::FromValue::from_value(
        local
            .connect_node(target)
            .await
            .unwrap()
            .send_batch(vec![cmd("ASKING"), cmd("GET").arg(guard)])
            .await
            .unwrap()
            .pop()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(on_target.as_deref(), Some("taken"));

    let outcome = w.exec(vec![cmd("SET").arg(data).arg("after")]).await;
    assert!(
        matches!(&outcome, Ok(None)) || matches!(&outcome, Err(e) if e.is_retryable()),
        "the guarded write committed over the guard: {outcome:?}"
    );
    local.finish_slot_migration(migration).await.unwrap();
    assert_eq!(
        client.get::<_, String>(data).await.unwrap(),
        "before",
        "the guarded write ran"
    );
}

/// A `BLPOP` or a `WATCH` the node refuses with a `MOVED` to an address the client
/// cannot vouch for within the deadline (the refreshes that would name it do not
/// answer) ran nothing: it fails as `Timeout { may_have_executed: false }`, retryable,
/// where it said it may have run (the vetting's rule for commands a script's forged
/// redirect may have followed). A scripted node: a real one cannot be made to stall
/// its `CLUSTER SHARDS` alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_whose_redirect_cannot_be_vetted_in_time_says_nothing_ran() {
    let (_fake, client) =
        support::fake_cluster::stalling_redirect_vetting(&["BLPOP", "WATCH"]).await;
    let err = client
        .query::<Value>(cmd("BLPOP").arg("k").arg(0.1))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            redcluster::Error::Timeout {
                may_have_executed: false
            }
        ),
        "{err:?}"
    );
    let Err(err) = client.watch(["k"]).await else {
        panic!("the WATCH was refused")
    };
    assert!(
        matches!(
            err,
            redcluster::Error::Timeout {
                may_have_executed: false
            }
        ),
        "{err:?}"
    );
}
