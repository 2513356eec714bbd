//! Faults under load, against real local clusters (and a fake node for a drop after a
//! write): primaries killed or frozen, every node restarted, unreachable seeds, replica
//! reads. Numbers are printed so a run shows how the client rode through.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redcluster::testkit::LocalCluster;
use redcluster::{
    cmd, key_slot, BreakerState, CircuitBreakerConfig, ClusterClient, Error, ReadFrom, ServerError,
    Value,
};
use support::calls;
use support::fake_cluster::{one_shard, Action, FakeCluster};
use tokio::time::Instant;

/// What a writer sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Write {
    /// `SET key value`: idempotent, so the client may send it again.
    Set(u64),
    /// `INCR key`: not idempotent, so the client never sends it again once it may have run.
    Incr,
    /// `SADD key member`, a member no other request adds: its repeat would count 0, so the
    /// client never sends it again once it may have run.
    Sadd(u64),
}

/// One request's outcome, as a writer saw it.
#[derive(Debug, Clone)]
struct Outcome {
    writer: usize,
    /// The writer's request number, from 0.
    seq: u64,
    key: String,
    write: Write,
    slot: u16,
    started: Instant,
    took: Duration,
    error: Option<Error>,
    /// What a `SADD` answered.
    added: Option<i64>,
}

impl Outcome {
    fn ended(&self) -> Instant {
        self.started + self.took
    }
}

/// What the writers send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// SETs only.
    Sets,
    /// SETs, and every other request an INCR of one of the writer's counters.
    SetsAndIncrs,
    /// As `SetsAndIncrs`, with each INCR declared safe to repeat (`query_idempotent`).
    SetsAndRepeatableIncrs,
    /// SETs, and every other request a SADD of a new member to one of the writer's sets.
    SetsAndSadds,
}

/// Writer tasks, each sending one request at a time and logging every outcome.
struct Writers {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Outcome>>>,
    tasks: Vec<tokio::task::JoinHandle<u64>>,
}

impl Writers {
    /// Starts `writers` tasks. Writer `t` SETs its keys `ft:{t}:0` to `ft:{t}:63` in turn,
    /// to values `t << 32 | n` for its `n`th request, so that each key's values grow; with
    /// [`Mix::SetsAndIncrs`] every other request INCRs one of its counters `ft:{t}:c0` to
    /// `ft:{t}:c7` instead. The keys hash to every shard. Bounded by
    /// [`Writers::finish`] and by 50 000 requests per task.
    fn spawn(client: &ClusterClient, writers: usize, mix: Mix) -> Writers {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..writers)
            .map(|t| {
                let (client, stop, log) = (client.clone(), Arc::clone(&stop), Arc::clone(&log));
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) && n < 50_000 {
                        let value = (t as u64) << 32 | n;
                        let (key, write) = match mix {
                            Mix::Sets => (format!("ft:{t}:{}", n % 64), Write::Set(value)),
                            Mix::SetsAndIncrs | Mix::SetsAndRepeatableIncrs if n % 2 == 1 => {
                                (format!("ft:{t}:c{}", n / 2 % 8), Write::Incr)
                            }
                            Mix::SetsAndSadds if n % 2 == 1 => {
                                (format!("ft:{t}:s{}", n / 2 % 8), Write::Sadd(value))
                            }
                            Mix::SetsAndIncrs | Mix::SetsAndRepeatableIncrs | Mix::SetsAndSadds => {
                                (format!("ft:{t}:{}", n / 2 % 64), Write::Set(value))
                            }
                        };
                        let incr = cmd("INCR").arg(key.as_str());
                        let started = Instant::now();
                        let mut added = None;
                        let result = match write {
                            Write::Set(value) => client.set(key.as_str(), value).await,
                            Write::Incr if mix == Mix::SetsAndRepeatableIncrs => {
                                client.query_idempotent::<i64>(incr).await.map(drop)
                            }
                            Write::Incr => client.query::<i64>(incr).await.map(drop),
                            Write::Sadd(member) => {
                                let sadd = cmd("SADD").arg(key.as_str()).arg(member);
                                client.query::<i64>(sadd).await.map(|n| added = Some(n))
                            }
                        };
                        let outcome = Outcome {
                            writer: t,
                            seq: n,
                            slot: key_slot(key.as_bytes()),
                            key,
                            write,
                            started,
                            took: started.elapsed(),
                            error: result.err(),
                            added,
                        };
                        log.lock().unwrap().push(outcome);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        Writers { stop, log, tasks }
    }

    /// `f` of the outcomes logged so far.
    fn with_log<T>(&self, f: impl FnOnce(&[Outcome]) -> T) -> T {
        f(&self.log.lock().unwrap())
    }

    /// Stops the writers and returns every outcome.
    ///
    /// # Panics
    ///
    /// When a writer is not done `within` the stop (a request hangs), or when a request
    /// was not answered exactly once.
    async fn finish(self, within: Duration) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + within;
        let mut sent = Vec::with_capacity(self.tasks.len());
        for (t, task) in self.tasks.into_iter().enumerate() {
            match tokio::time::timeout_at(deadline, task).await {
                Ok(n) => sent.push(n.unwrap()),
                Err(_) => panic!("writer {t} still waits for an answer {within:?} after the stop"),
            }
        }
        let log = self.log.lock().unwrap().clone();
        for (t, &n) in sent.iter().enumerate() {
            let mut seqs: Vec<u64> = log
                .iter()
                .filter(|o| o.writer == t)
                .map(|o| o.seq)
                .collect();
            seqs.sort_unstable();
            assert!(
                seqs.iter().copied().eq(0..n),
                "writer {t} sent {n} requests and logged {} answers",
                seqs.len()
            );
        }
        log
    }
}

fn p99(mut v: Vec<Duration>) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort();
    v[(v.len() * 99 / 100).min(v.len() - 1)]
}

/// The node that serves each slot, as the cluster sees it now (`CLUSTER SLOTS`).
async fn slot_owners(local: &LocalCluster) -> Vec<usize> {
    let observer = local.masters().await.unwrap()[0];
    let conn = local.connect_node(observer).await.unwrap();
    let reply = conn.send(cmd("CLUSTER").arg("SLOTS")).await.unwrap();
    let Value::Array(ranges) = reply else {
        panic!("CLUSTER SLOTS answered {reply:?}")
    };
    let mut owners = vec![usize::MAX; 16384];
    for range in &ranges {
        // [start, end, [host, port, id, ...], replicas...]
        let Value::Array(range) = range else {
            panic!("CLUSTER SLOTS range {range:?}")
        };
        let [Value::Int(start), Value::Int(end), Value::Array(primary), ..] = &range[..] else {
            panic!("CLUSTER SLOTS range {range:?}")
        };
        let (Value::Bulk(host), Value::Int(port)) = (&primary[0], &primary[1]) else {
            panic!("CLUSTER SLOTS node {primary:?}")
        };
        let addr = format!("{}:{port}", String::from_utf8_lossy(host));
        let owner = local.index_of_addr(&addr).unwrap();
        owners[usize::try_from(*start).unwrap()..=usize::try_from(*end).unwrap()].fill(owner);
    }
    assert!(
        !owners.contains(&usize::MAX),
        "a slot has no owner: {ranges:?}"
    );
    owners
}

/// Checks the data: no value whose write was reported as never executed is stored.
async fn no_unexecuted_write_is_stored(client: &ClusterClient, outcomes: &[Outcome]) {
    let not_executed: HashSet<(&str, u64)> = outcomes
        .iter()
        .filter(|o| o.error.as_ref().is_some_and(|e| !e.may_have_executed()))
        .filter_map(|o| match o.write {
            Write::Set(value) => Some((o.key.as_str(), value)),
            Write::Incr | Write::Sadd(_) => None,
        })
        .collect();
    let keys: HashSet<&str> = outcomes
        .iter()
        .filter(|o| matches!(o.write, Write::Set(_)))
        .map(|o| o.key.as_str())
        .collect();
    for key in keys {
        let stored: Option<u64> = client.get(key).await.unwrap();
        if let Some(v) = stored {
            assert!(
                !not_executed.contains(&(key, v)),
                "{key} holds {v}, whose write was reported as not executed"
            );
        }
    }
}

/// Checks the data: each key holds the last value it was acknowledged to hold, or a later
/// one of the same writer (whose write failed but may have run), never an older one.
async fn every_acknowledged_write_is_stored(client: &ClusterClient, outcomes: &[Outcome]) {
    // Per key: the last acknowledged value, and every value that may have been written.
    let mut keys: HashMap<&str, (Option<u64>, HashSet<u64>)> = HashMap::new();
    for o in outcomes {
        let Write::Set(value) = o.write else { continue };
        let (acked, maybe) = keys.entry(o.key.as_str()).or_default();
        match &o.error {
            None => {
                *acked = (*acked).max(Some(value));
                maybe.insert(value);
            }
            Some(e) if e.may_have_executed() => {
                maybe.insert(value);
            }
            Some(_) => {}
        }
    }
    for (key, (acked, maybe)) in keys {
        let stored: Option<u64> = client.get(key).await.unwrap();
        assert!(
            stored >= acked,
            "{key} holds {stored:?}, older than its acknowledged {acked:?}"
        );
        if let Some(v) = stored {
            assert!(
                maybe.contains(&v),
                "{key} holds {v}, which was never written"
            );
        }
    }
}

/// Checks the data: each counter is at least its acknowledged INCRs, and at most those
/// plus the INCRs that failed but may have run; so no INCR ran twice, and none that was
/// reported as not executed ran. Returns how many INCRs failed but ran.
async fn every_increment_counts_at_most_once(client: &ClusterClient, outcomes: &[Outcome]) -> i64 {
    // Per counter: acknowledged INCRs, and failed ones that may have run.
    let mut counters: HashMap<&str, (i64, i64)> = HashMap::new();
    for o in outcomes.iter().filter(|o| o.write == Write::Incr) {
        let (acked, maybe) = counters.entry(o.key.as_str()).or_default();
        match &o.error {
            None => *acked += 1,
            Some(e) if e.may_have_executed() => *maybe += 1,
            Some(_) => {}
        }
    }
    let mut ran_anyway = 0;
    for (key, (acked, maybe)) in counters {
        let stored: i64 = client
            .get::<_, Option<i64>>(key)
            .await
            .unwrap()
            .unwrap_or(0);
        assert!(
            (acked..=acked + maybe).contains(&stored),
            "{key} counts {stored}: {acked} INCRs were acknowledged, {maybe} more may have run"
        );
        ran_anyway += stored - acked;
    }
    ran_anyway
}

async fn kill_a_primary_under_writers(full_coverage: bool) {
    let local = LocalCluster::builder()
        .node_timeout(Duration::from_millis(2000))
        .config(
            "cluster-require-full-coverage",
            if full_coverage { "yes" } else { "no" },
        )
        .start()
        .await
        .unwrap();
    // With full coverage required, every shard's requests wait out the CLUSTERDOWN
    // window within their deadline: leave room for a second election on a loaded
    // machine.
    let timeout = Duration::from_secs(if full_coverage { 8 } else { 3 });
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(timeout)
        .build()
        .await
        .unwrap();
    let victim = local.master_of_slot(key_slot(b"ft:0:0")).await.unwrap();
    let owners = slot_owners(&local).await;
    let on_victim = |o: &Outcome| owners[usize::from(o.slot)] == victim;
    let writers = Writers::spawn(&client, 32, Mix::Sets);
    // Traffic before the fault: the victim's shard has served writes.
    let started = Instant::now();
    while writers.with_log(|log| {
        log.iter()
            .filter(|o| on_victim(o) && o.error.is_none())
            .count()
    }) < 100
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no traffic before the kill"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A key of another shard, read directly from its primary meanwhile: whether that
    // shard, too, answered CLUSTERDOWN.
    let bystander = owners
        .iter()
        .position(|&owner| owner != victim)
        .expect("a slot of another shard");
    let probe = local.connect_node(owners[bystander]).await.unwrap();
    let probe_key = support::key_in_slot(u16::try_from(bystander).unwrap(), 0);
    let mut bystander_down = false;
    let killed_at = Instant::now();
    local.kill(victim).unwrap();
    // Run until the dead shard has served writes again for a while, or 15 s at most.
    let deadline = killed_at + Duration::from_secs(15);
    let recovered_at = loop {
        let reply = probe
            .send_timeout(cmd("GET").arg(probe_key.as_str()), Duration::from_secs(1))
            .await;
        bystander_down |= matches!(&reply, Ok(Value::ServerError(e)) if e.code() == "CLUSTERDOWN");
        let recovered = writers.with_log(|log| {
            log.iter().find_map(|o| {
                (o.started > killed_at && on_victim(o) && o.error.is_none()).then_some(o.started)
            })
        });
        if let Some(at) = recovered {
            if Instant::now() > at + Duration::from_secs(1) {
                break at;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the dead shard never served again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let outcomes = writers.finish(timeout + Duration::from_millis(500)).await;
    let (dead, alive): (Vec<&Outcome>, Vec<&Outcome>) = outcomes.iter().partition(|o| on_victim(o));
    let alive_failures: Vec<&&Outcome> = alive.iter().filter(|o| o.error.is_some()).collect();
    let dead_failures = dead.iter().filter(|o| o.error.is_some()).count();
    let alive_p99 = p99(alive.iter().map(|o| o.took).collect());
    let slowest = outcomes.iter().map(|o| o.took).max().unwrap_or_default();
    println!(
        "kill -9 (full coverage {full_coverage}): {} requests; other shards: {} ok, {} failed, p99 {:?}, \
         CLUSTERDOWN seen {bystander_down}; dead shard: {} requests, {} failed; served again {:?} after \
         the kill; slowest request {:?}; {:?}",
        outcomes.len(),
        alive.len() - alive_failures.len(),
        alive_failures.len(),
        alive_p99,
        dead.len(),
        dead_failures,
        recovered_at - killed_at,
        slowest,
        client.stats()
    );
    if !full_coverage {
        assert!(
            alive_failures.is_empty(),
            "other shards failed: {:?}",
            &alive_failures[..alive_failures.len().min(3)]
        );
        assert!(
            alive_p99 < Duration::from_millis(100),
            "other shards' p99 {alive_p99:?}"
        );
    } else {
        // Every node answers CLUSTERDOWN until the promotion; the client retries them
        // within the deadline, so they succeed once the cluster is whole again.
        assert!(
            bystander_down,
            "the other shards never answered CLUSTERDOWN"
        );
        assert!(
            alive_failures.is_empty(),
            "other shards failed: {:?}",
            &alive_failures[..alive_failures.len().min(3)]
        );
    }
    assert!(
        slowest <= timeout + Duration::from_millis(500),
        "a request took {slowest:?}"
    );
    // The promotion takes a few node timeouts (2 s); a second election, should the
    // first fail on a loaded machine, takes about 4 s more.
    assert!(recovered_at - killed_at <= Duration::from_millis(2000) + Duration::from_secs(8));
    no_unexecuted_write_is_stored(&client, &outcomes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_primary_costs_only_its_shard_and_only_until_promotion() {
    kill_a_primary_under_writers(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_full_coverage_required_clusterdown_is_retried_within_the_deadline() {
    kill_a_primary_under_writers(true).await;
}

/// While a primary is flagged failed and no replica takes over (here none may:
/// `cluster-replica-no-failover`), its shard's replicas still serve the reads that
/// allow them, on a cluster that keeps serving without full coverage. The slots had
/// no node at all in the client's map: replica reads failed with `ClusterDown`, and the
/// replicas' connections were closed. Writes and primary reads still fail fast.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_serve_reads_while_their_failed_primary_holds_its_slots() {
    let local = LocalCluster::builder()
        .node_timeout(Duration::from_millis(1000))
        .config("cluster-require-full-coverage", "no")
        .config("cluster-replica-no-failover", "yes")
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::Replica)
        .response_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap();
    let key = "down:{r}";
    let slot = key_slot(key.as_bytes());
    let wait = redcluster::Durability::new(1, Duration::from_secs(5));
    client
        .query_durable::<Value>(cmd("SET").arg(key).arg("v"), wait)
        .await
        .unwrap();
    let primary = local.master_of_slot(slot).await.unwrap();
    let replica = local.replicas_of(primary).await.unwrap()[0];
    local.kill(primary).unwrap();
    // Until the client's map has the primary failed (the nodes flag it within a few
    // node timeouts).
    let flagged_by = Instant::now() + Duration::from_secs(30);
    while client.primary_for_slot(slot).is_some() {
        assert!(
            Instant::now() < flagged_by,
            "the primary never showed as failed"
        );
        let _ = client.refresh_topology().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let before = calls(&local, replica, "get").await;
    for _ in 0..5 {
        let value: Option<String> = client.get(key).await.unwrap();
        assert_eq!(value.as_deref(), Some("v"));
    }
    assert_eq!(calls(&local, replica, "get").await, before + 5);
    // A node of the topology still, for a command sent to it by name.
    let replica_addr = local.node_addr(replica);
    let pong: String = client.query_node(&replica_addr, cmd("PING")).await.unwrap();
    assert_eq!(pong, "PONG");
    let write = client.set(key, "w").await.unwrap_err();
    assert!(matches!(write, Error::ClusterDown(_)), "{write:?}");
    let primary_read = client
        .with_read_from(ReadFrom::Primary)
        .get::<_, Option<String>>(key)
        .await
        .unwrap_err();
    assert!(
        matches!(primary_read, Error::ClusterDown(_)),
        "{primary_read:?}"
    );
}

/// A node that leaves the client's topology keeps its connections for the time of the
/// requests on them. Here a primary is paused with an `INCR` unanswered, the cluster
/// flags it failed (no replica takes over) and the client's map leaves it out, then it
/// is let go: the `INCR` gets the node's answer. Its connection was closed the moment
/// the map left the node out, and the `INCR` failed as may-have-run (not resent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_primary_that_left_the_topology_still_gets_its_answer() {
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .node_timeout(Duration::from_millis(1000))
        .config("cluster-require-full-coverage", "no")
        .start()
        .await
        .unwrap();
    // No health checks: a `PING` the paused node owes would hold the `INCR` back,
    // unwritten (one write in flight per connection), and it could be resent.
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(20))
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let key = "left:{p}";
    let slot = key_slot(key.as_bytes());
    client.set(key, 0).await.unwrap();
    let primary = local.master_of_slot(slot).await.unwrap();
    local.pause(primary).unwrap();
    let incr = tokio::spawn({
        let client = client.clone();
        async move { client.query::<i64>(cmd("INCR").arg(key)).await }
    });
    let flagged_by = Instant::now() + Duration::from_secs(15);
    while client.primary_for_slot(slot).is_some() {
        if Instant::now() > flagged_by {
            local.resume(primary).unwrap();
            panic!("the paused primary never showed as failed");
        }
        let _ = client.refresh_topology().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    local.resume(primary).unwrap();
    let answered = incr.await.unwrap();
    // Its reply, or the node's refusal if it came back thinking the cluster down: an
    // answer over the connection, either way.
    assert!(
        !matches!(
            answered,
            Err(Error::ConnectionLost { .. } | Error::Io { .. })
        ),
        "{answered:?}"
    );
    println!(
        "the INCR on the primary that left: {answered:?}, {:?}",
        client.stats()
    );
}

/// A client built on one runtime and used on another (a `static` client shared by
/// `#[tokio::test]`s, one built in a short-lived `block_on`): its background tasks died
/// with the first runtime, and the first trouble on the second brings them back, so a
/// failover is followed. Before, no refresh ever ran again: every request for the
/// killed primary's slots went to it and failed, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_whose_first_runtime_shut_down_still_follows_a_failover() {
    let local = LocalCluster::builder()
        .node_timeout(Duration::from_millis(1000))
        .start()
        .await
        .unwrap();
    let seeds = local.seeds();
    let client = std::thread::spawn(move || {
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Refreshes an hour apart: the task started again on the second runtime runs
        // the refresh it was started for at once, not an interval after the build's
        // discovery.
        let build = ClusterClient::builder()
            .nodes(seeds)
            .response_timeout(Duration::from_secs(2))
            .refresh_min_interval(Duration::from_secs(3600))
            .build();
        first.block_on(build).unwrap()
        // The first runtime shuts down here, and every task of the client with it.
    })
    .join()
    .unwrap();
    let key = "runtimes:{a}";
    client.set(key, "before").await.unwrap();
    let victim = support::owner_index(&local, &client, key);
    let refreshes = client.stats().refreshes;
    local.kill(victim).unwrap();
    local
        .wait_until_stable(Duration::from_secs(30))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.set(key, "after").await {
            Ok(()) => break,
            Err(e) => assert!(
                Instant::now() < deadline,
                "the failover was never followed: {e:?}"
            ),
        }
    }
    let v: Option<String> = client.get(key).await.unwrap();
    assert_eq!(v.as_deref(), Some("after"));
    assert!(client.stats().refreshes > refreshes);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusterdown_retries_follow_the_switch_the_attempt_limit_and_the_budget() {
    // No replicas and full coverage required: once a primary is seen dead, the whole
    // cluster answers CLUSTERDOWN until it returns.
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .node_timeout(Duration::from_millis(1000))
        .start()
        .await
        .unwrap();
    let seeds = local.seeds();
    let build = |b: redcluster::ClusterClientBuilder| {
        let seeds = seeds.clone();
        async move {
            b.nodes(seeds)
                .response_timeout(Duration::from_secs(20))
                .retry_backoff(Duration::from_millis(10), Duration::from_millis(20))
                .health_check_interval(None)
                .build()
                .await
                .unwrap()
        }
    };
    let no_retry = build(ClusterClient::builder().retry_on_cluster_down(false)).await;
    let two_attempts = build(ClusterClient::builder().cluster_down_retry_attempts(2)).await;
    let two_in_budget = build(
        ClusterClient::builder()
            .cluster_down_retry_attempts(1000)
            .retry_budget(redcluster::RetryBudgetConfig::new(0.0, 0.0, 2.0)),
    )
    .await;
    let dead = local.masters().await.unwrap()[0];
    // A key of a live primary: CLUSTERDOWN comes from the cluster's state, not its node.
    let key = (0..100)
        .map(|i| format!("down:{{{i}}}"))
        .find(|k| support::owner_index(&local, &no_retry, k) != dead)
        .unwrap();
    let key = key.as_str();
    local.kill(dead).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match no_retry.get::<_, Option<String>>(key).await {
            Err(Error::ClusterDown(_)) => break,
            other => assert!(
                Instant::now() < deadline,
                "the cluster never went down: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Switched off: the first CLUSTERDOWN is the answer, with no retry.
    let before = no_retry.stats().retries;
    let started = Instant::now();
    let r = no_retry.get::<_, Option<String>>(key).await;
    assert!(matches!(r, Err(Error::ClusterDown(_))), "{r:?}");
    assert_eq!(no_retry.stats().retries, before);
    assert!(started.elapsed() < Duration::from_secs(2));

    // Two attempts: two retries, then the answer, long before the 20 s deadline.
    let started = Instant::now();
    let r = two_attempts.get::<_, Option<String>>(key).await;
    assert!(matches!(r, Err(Error::ClusterDown(_))), "{r:?}");
    assert_eq!(two_attempts.stats().retries, 2);
    assert!(started.elapsed() < Duration::from_secs(5));

    // A budget of two retries for the whole client, earning none: ten requests retry
    // twice in all, then each fails at its first CLUSTERDOWN.
    let started = Instant::now();
    for _ in 0..10 {
        let r = two_in_budget.get::<_, Option<String>>(key).await;
        assert!(matches!(r, Err(Error::ClusterDown(_))), "{r:?}");
    }
    assert_eq!(two_in_budget.stats().retries, 2);
    assert!(started.elapsed() < Duration::from_secs(5));
}

/// Three primaries without replicas and with a long node timeout: the cluster never
/// fails a frozen node over, so the client alone deals with it.
async fn never_failing_over() -> LocalCluster {
    never_failing_over_with(0).await
}

/// [`never_failing_over`] with `replicas` replicas per primary (within the test's
/// minute: the node timeout is 30 s).
async fn never_failing_over_with(replicas: usize) -> LocalCluster {
    LocalCluster::builder()
        .replicas_per_master(replicas)
        .node_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_under_writers_resend_sets_and_never_run_an_increment_twice() {
    let (_local, client, outcomes, killed) = writers_with_connections_cut(Mix::SetsAndIncrs).await;
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    println!(
        "{} requests, {killed} connections cut, {} failed",
        outcomes.len(),
        failed.len()
    );
    for o in &failed {
        let e = o.error.as_ref().unwrap();
        // A SET is idempotent: resent after a cut, never failed. An INCR that may have
        // run is not resent: its caller hears so.
        assert_eq!(o.write, Write::Incr, "a SET failed: {e:?}");
        assert!(
            matches!(e, Error::ConnectionLost { .. } | Error::Io { .. }) && e.may_have_executed(),
            "{e:?}"
        );
    }
    // The cuts landed on requests in flight: some were resent (SETs) or failed (INCRs).
    assert!(
        client.stats().retries > 0 || !failed.is_empty(),
        "no cut met a request: {killed} connections cut"
    );
    every_increment_counts_at_most_once(&client, &outcomes).await;
    every_acknowledged_write_is_stored(&client, &outcomes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn increments_declared_repeatable_are_resent_after_a_cut_and_never_lost() {
    let (_local, client, outcomes, killed) =
        writers_with_connections_cut(Mix::SetsAndRepeatableIncrs).await;
    // Every request answered: the INCRs cut off after their write were sent again.
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.error.is_some()).collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert!(client.stats().retries > 0, "the cuts caused resends");
    // So each counter holds at least its INCRs, and more where a resent one had run.
    let mut acked: HashMap<&str, i64> = HashMap::new();
    for o in outcomes.iter().filter(|o| o.write == Write::Incr) {
        *acked.entry(o.key.as_str()).or_default() += 1;
    }
    let mut doubled = 0;
    for (key, n) in acked {
        let stored: i64 = client.get(key).await.unwrap();
        assert!(stored >= n, "{key} counts {stored} of {n} INCRs");
        doubled += stored - n;
    }
    println!(
        "{} requests, {killed} connections cut, {doubled} INCRs ran twice",
        outcomes.len()
    );
    every_acknowledged_write_is_stored(&client, &outcomes).await;
}

/// A write whose reply counts what it changed is not resent after a cut: its repeat
/// would count 0 what the first run added (a `SADD seen id` answering 0 has a new message
/// dropped as a duplicate). Every `SADD` of a new member answers 1, or fails saying it
/// may have run; and every member acknowledged is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_under_writers_never_have_a_new_member_counted_0() {
    let (_local, client, outcomes, killed) = writers_with_connections_cut(Mix::SetsAndSadds).await;
    let mut failed = 0;
    for o in &outcomes {
        match (&o.error, o.write) {
            (None, Write::Sadd(member)) => {
                assert_eq!(o.added, Some(1), "SADD {} {member}", o.key);
                let stored: bool = client
                    .query(cmd("SISMEMBER").arg(o.key.as_str()).arg(member))
                    .await
                    .unwrap();
                assert!(stored, "{} lacks {member}, whose SADD answered 1", o.key);
            }
            (Some(e), Write::Sadd(_)) => {
                failed += 1;
                assert!(
                    matches!(e, Error::ConnectionLost { .. } | Error::Io { .. })
                        && e.may_have_executed(),
                    "{e:?}"
                );
            }
            (error, _) => assert!(error.is_none(), "a SET failed: {error:?}"),
        }
    }
    println!(
        "{} requests, {killed} connections cut, {failed} SADDs failed",
        outcomes.len()
    );
    assert!(
        client.stats().retries > 0 || failed > 0,
        "no cut met a request: {killed} connections cut"
    );
    every_acknowledged_write_is_stored(&client, &outcomes).await;
}

/// The same as the test above, where a real server cannot be made to lose a reply on
/// demand: a node that runs `ZREM queue job` and drops the connection before it answers.
/// The claim fails saying it may have run, sent once (resent, it answered 0: the job
/// looked taken by another worker); declared safe to repeat, it is resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_count_returning_write_is_not_resent_after_its_connection_dropped() {
    let fake = FakeCluster::start(|args, earlier| match (args[0].as_str(), earlier) {
        // The first claim, and the first attempt of the one declared repeatable.
        ("ZREM", 0 | 1) => Action::Drop,
        ("ZREM", _) => Action::Reply(Value::Int(0)),
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    let client = ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        .response_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let claim = || cmd("ZREM").arg("queue").arg("job");
    let e = client.query::<i64>(claim()).await.unwrap_err();
    assert!(
        matches!(e, Error::ConnectionLost { .. } | Error::Io { .. }) && e.may_have_executed(),
        "{e:?}"
    );
    assert_eq!(fake.count("ZREM"), 1, "{:?}", fake.seen());
    let repeated: i64 = client.query_idempotent(claim()).await.unwrap();
    assert_eq!(repeated, 0);
    assert_eq!(fake.count("ZREM"), 3, "{:?}", fake.seen());
}

/// The cluster (kept alive for the checks after), its client, every writer's outcome,
/// and how many connections were cut.
type CutRun = (LocalCluster, ClusterClient, Vec<Outcome>, i64);

/// Eight writers of `mix` on a cluster that never fails over, with every client
/// connection of every primary cut six times under them (at least six connections).
async fn writers_with_connections_cut(mix: Mix) -> CutRun {
    let local = never_failing_over().await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(5))
        .build()
        .await
        .unwrap();
    let writers = Writers::spawn(&client, 8, mix);
    let killed = cut_connections_under(&local, &writers).await;
    let outcomes = writers.finish(Duration::from_secs(15)).await;
    assert!(killed >= 6, "the client's connections were cut ({killed})");
    (local, client, outcomes, killed)
}

/// Cuts every client connection of every primary six times, after some of the writers'
/// traffic each time; how many connections were cut.
async fn cut_connections_under(local: &LocalCluster, writers: &Writers) -> i64 {
    let masters = local.masters().await.unwrap();
    let logged = |writers: &Writers| writers.with_log(<[Outcome]>::len);
    let mut killed = 0;
    for _ in 0..6 {
        // Some traffic first, then every client connection of every primary cut (the
        // killing connection itself is skipped).
        let before = logged(writers);
        let deadline = Instant::now() + Duration::from_secs(10);
        while logged(writers) < before + 300 {
            assert!(Instant::now() < deadline, "the writers stalled");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        for &m in &masters {
            let node = local.connect_node(m).await.unwrap();
            let cut = node
                .send(cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal"))
                .await
                .unwrap();
            if let Value::Int(n) = cut {
                killed += n;
            }
        }
    }
    killed
}

/// A lost connection counts once (see the test above), but a node that drops every
/// connection before it answers still opens its breaker: one failure per connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_drops_every_connection_still_opens_its_breaker() {
    let fake = FakeCluster::start(|args, _| match args[0].as_str() {
        "GET" => Action::Drop,
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    let client = ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        .response_timeout(Duration::from_secs(5))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .health_check_interval(None)
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(3)
                .open_for(Duration::from_secs(30)),
        )
        .build()
        .await
        .unwrap();
    // GET is resent on a new connection each time, and each is dropped.
    let err = client.get::<_, Option<String>>("k").await.unwrap_err();
    let breaker = client.health().nodes[0].breaker;
    assert_eq!(breaker, BreakerState::Open, "{err:?}");
    assert!(fake.count("GET") >= 3, "{}", fake.count("GET"));
    let started = Instant::now();
    let err = client.get::<_, Option<String>>("k").await.unwrap_err();
    assert!(matches!(err, Error::CircuitOpen { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1));
}

/// A failed connect counts once, like a lost connection: twenty requests that meet a
/// node refusing connections, each retrying through its reconnect backoff, are one
/// failure per connect attempt, not one per request and retry. Attempts that go on
/// failing still open the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connect_counts_once_however_many_requests_met_it() {
    const THRESHOLD: u32 = 6;
    let local = never_failing_over().await;
    let victim = local.master_of_slot(key_slot(b"refused")).await.unwrap();
    let victim_addr = local.node_addr(victim);
    // Seeded with the other nodes, health checks off: the client holds no connection to
    // the victim when it dies, so every failure below is a refused connect.
    let seeds = seeds_without(&local, &victim_addr);
    let client = ClusterClient::builder()
        .nodes(seeds)
        .response_timeout(Duration::from_millis(300))
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .health_check_interval(None)
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(THRESHOLD)
                .open_for(Duration::from_secs(30)),
        )
        .build()
        .await
        .unwrap();
    assert_eq!(
        client.node_for_key(b"refused").as_deref(),
        Some(victim_addr.as_str())
    );
    local.kill(victim).unwrap();
    let breaker_of_victim = |client: &ClusterClient| {
        client
            .health()
            .node(&victim_addr)
            .map(|n| n.breaker)
            .unwrap()
    };
    // Twenty at once, each retrying until its 300 ms are up: in that time the reconnect
    // backoff (50-100 ms after the first failure, then 100-200 ms, 200-400 ms) lets at
    // most four attempts through, fewer than the threshold.
    let requests = (0..20).map(|_| {
        let client = client.clone();
        tokio::spawn(async move { client.get::<_, Option<String>>("refused").await })
    });
    for outcome in futures_util::future::join_all(requests).await {
        let err = outcome.unwrap().unwrap_err();
        assert!(
            matches!(err, Error::Io { .. } | Error::Timeout { .. }),
            "a killed node's request: {err:?}"
        );
    }
    assert_eq!(breaker_of_victim(&client), BreakerState::Closed);
    // One request at a time from here: attempts go on failing (backoff doubling), and
    // the breaker opens after the sixth, within about 3 s.
    let deadline = Instant::now() + Duration::from_secs(15);
    let err = loop {
        match client.get::<_, Option<String>>("refused").await {
            Err(Error::CircuitOpen { node }) => break node,
            Err(_) => {}
            Ok(v) => panic!("a killed node answered: {v:?}"),
        }
        assert!(Instant::now() < deadline, "the breaker never opened");
    };
    assert_eq!(err, victim_addr);
    assert_eq!(breaker_of_victim(&client), BreakerState::Open);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_with_its_own_response_timeout_gives_its_requests_that_deadline() {
    let local = never_failing_over().await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_millis(800))
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let key = "deadline:{a}";
    client.set(key, "v").await.unwrap();
    let owner = support::owner_index(&local, &client, key);
    let patient = client.with_response_timeout(Duration::from_secs(20));
    let hasty = client.with_response_timeout(Duration::from_millis(100));
    assert_eq!(patient.response_timeout(), Duration::from_secs(20));
    assert_eq!(client.response_timeout(), Duration::from_millis(800));

    // A frozen node: the hasty handle's requests fail at its 100 ms, a single command
    // and a pipeline alike, well before the client's 800 ms.
    local.pause(owner).unwrap();
    let started = Instant::now();
    let single = hasty.get::<_, Option<String>>(key).await;
    let single_took = started.elapsed();
    let started = Instant::now();
    let mut p = hasty.pipeline();
    p.get(key);
    let piped = p.execute_each().await;
    let piped_took = started.elapsed();
    // The single GET was written to the frozen node, so it may have run; the pipeline's
    // GET waited behind that unanswered write (the connection's one write in flight)
    // and was never sent.
    assert!(
        matches!(
            single,
            Err(Error::Timeout {
                may_have_executed: true
            })
        ),
        "{single:?}"
    );
    assert!(
        matches!(
            piped[0],
            Err(Error::Timeout {
                may_have_executed: false
            })
        ),
        "{piped:?}"
    );
    for took in [single_took, piped_took] {
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(700),
            "{took:?}"
        );
    }

    // The patient handle's request waits past the client's 800 ms for the node to
    // thaw, and gets its answer. The thaw comes from outside, as a fault ends.
    let started = Instant::now();
    let answered = async {
        let answer = patient.get::<_, Option<String>>(key).await;
        (answer, started.elapsed())
    };
    let ((answer, took), ()) = tokio::join!(answered, async {
        tokio::time::sleep(Duration::from_millis(1200)).await;
        local.resume(owner).unwrap();
    });
    assert_eq!(answer.unwrap().as_deref(), Some("v"));
    assert!(
        took >= Duration::from_millis(1200),
        "answered before the thaw: {took:?}"
    );
    // The client's own requests keep its 800 ms.
    local.pause(owner).unwrap();
    let r = client.get::<_, Option<String>>(key).await;
    local.resume(owner).unwrap();
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
}

/// A node that completes no handshake within the requests' deadlines, with no
/// connection open to it (frozen before the client first needed it), opens its breaker:
/// each request times out waiting for the connect attempt it started, and reports the
/// failure of the attempt before it, which no request did. The requests come 1.2 s
/// apart, past each attempt's end (600 ms) and its reconnect backoff (at most 400 ms
/// after the third failure), as sparse traffic does: each starts an attempt of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_completes_a_handshake_opens_its_breaker() {
    never_completes_a_handshake(false).await;
}

/// [`a_node_that_never_completes_a_handshake_opens_its_breaker`] for blocking commands,
/// whose dedicated connections come from a pool of their own: a node reached only by
/// them opens its breaker too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_never_completes_a_dedicated_handshake_opens_its_breaker() {
    never_completes_a_handshake(true).await;
}

async fn never_completes_a_handshake(blocking: bool) {
    let local = never_failing_over().await;
    let key = "ice:{a}";
    let victim = local
        .master_of_slot(key_slot(key.as_bytes()))
        .await
        .unwrap();
    let victim_addr = local.node_addr(victim);
    let seeds: Vec<String> = local
        .nodes()
        .iter()
        .filter(|n| n.index != victim)
        .map(|n| local.node_addr(n.index))
        .collect();
    local.pause(victim).unwrap();
    let client = ClusterClient::builder()
        .nodes(seeds)
        .response_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(600))
        .health_check_interval(None)
        .refresh_interval(Duration::from_secs(3600))
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(2)
                .open_for(Duration::from_secs(30)),
        )
        .build()
        .await
        .unwrap();
    assert_eq!(
        client.node_for_key(key.as_bytes()),
        Some(victim_addr.clone())
    );
    let mut errors = Vec::new();
    // The third request reports the second failure: the fourth fails fast. (Before,
    // failures reached the breaker only once the reconnect backoff outgrew the gap.)
    for _ in 0..4 {
        let started = Instant::now();
        let err = if blocking {
            let blpop = cmd("BLPOP").arg(key).arg(0.1);
            client.query::<Value>(blpop).await.unwrap_err()
        } else {
            client.get::<_, Option<String>>(key).await.unwrap_err()
        };
        let open = matches!(err, Error::CircuitOpen { .. });
        errors.push(err);
        if open {
            break;
        }
        tokio::time::sleep_until(started + Duration::from_millis(1200)).await;
    }
    local.resume(victim).unwrap();
    assert!(
        matches!(errors.last(), Some(Error::CircuitOpen { node }) if *node == victim_addr),
        "{errors:?}"
    );
    assert!(
        matches!(
            errors[0],
            Error::Timeout {
                may_have_executed: false
            }
        ),
        "{errors:?}"
    );
}

/// A request whose deadline is too short to write it at all (a zero timeout), on a
/// connection that owes nothing, says nothing about the node: however many fail so,
/// the node's breaker stays closed for the client's other requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_that_time_out_unsent_on_an_idle_connection_leave_the_breaker_closed() {
    let local = never_failing_over().await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .health_check_interval(None)
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(2)
                .open_for(Duration::from_secs(30)),
        )
        .build()
        .await
        .unwrap();
    let key = "zero:{a}";
    client.set(key, "v").await.unwrap();
    let addr = client.node_for_key(key.as_bytes()).unwrap();
    let zero = client.with_response_timeout(Duration::ZERO);
    for _ in 0..10 {
        let r = zero.get::<_, Option<String>>(key).await;
        assert!(
            matches!(
                r,
                Err(Error::Timeout {
                    may_have_executed: false
                })
            ),
            "{r:?}"
        );
    }
    let breaker = client.health().node(&addr).unwrap().breaker;
    assert_eq!(breaker, BreakerState::Closed);
    assert_eq!(
        client
            .get::<_, Option<String>>(key)
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
}

/// With one request in flight per connection, a request behind one the frozen owner
/// holds waits for room; its deadline passes there, so it fails with
/// `Timeout { may_have_executed: false }` (safe to send again) and never runs, while
/// the written one is answered once the node thaws.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_waited_for_room_past_its_deadline_says_it_never_ran() {
    let local = never_failing_over().await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .max_in_flight_per_connection(1)
        .response_timeout(Duration::from_secs(10))
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let key = "room:{a}";
    client.del([key]).await.unwrap();
    let owner = support::owner_index(&local, &client, key);
    let hasty = client.with_response_timeout(Duration::from_millis(200));
    local.pause(owner).unwrap();
    // `join!` polls in order: the first INCR is queued (and written, the one request
    // the connection may have out) before the second asks for room.
    let (first, second) = tokio::join!(client.incr(key, 1), async {
        let second = hasty.incr(key, 1).await;
        local.resume(owner).unwrap();
        second
    });
    let second = second.unwrap_err();
    assert!(
        matches!(
            second,
            Error::Timeout {
                may_have_executed: false
            }
        ),
        "{second:?}"
    );
    assert!(second.is_retryable() && !second.may_have_executed());
    assert_eq!(first.unwrap(), 1);
    // The held INCR never reached the server.
    assert_eq!(client.get::<_, Option<i64>>(key).await.unwrap(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_opens_its_breaker_and_closes_it_after_it_thaws() {
    let local = never_failing_over().await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_millis(300))
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(3)
                .open_for(Duration::from_millis(500)),
        )
        .build()
        .await
        .unwrap();
    let frozen = local.master_of_slot(key_slot(b"frozen")).await.unwrap();
    let frozen_addr = local.node_addr(frozen);
    let healthy_key = (0..1000)
        .map(|i| format!("healthy:{i}"))
        .find(|k| client.node_for_key(k.as_bytes()).as_deref() != Some(frozen_addr.as_str()))
        .unwrap();
    client.set("frozen", 1).await.unwrap();
    local.pause(frozen).unwrap();
    let mut timeouts = 0;
    let mut fast_failures = 0;
    for _ in 0..20 {
        let started = Instant::now();
        match client.get::<_, Option<String>>("frozen").await {
            Err(Error::Timeout { .. }) => timeouts += 1,
            Err(Error::CircuitOpen { node }) => {
                assert_eq!(node, frozen_addr);
                // Failed fast: not after waiting out backoffs, as a retry would.
                assert!(started.elapsed() < Duration::from_secs(1));
                fast_failures += 1;
            }
            other => panic!("a frozen node answered: {other:?}"),
        }
        // Other shards are unaffected meanwhile: answered within their own response
        // timeout (300 ms), or this would fail with `Timeout`.
        client.set(healthy_key.as_str(), 1).await.unwrap();
    }
    let health = client.health();
    println!("frozen primary: {timeouts} timeouts, {fast_failures} fast failures; {health:?}");
    assert!(timeouts >= 3, "the first requests timed out");
    assert!(fast_failures > 0, "then the breaker failed requests fast");
    assert_eq!(
        health.node(&frozen_addr).unwrap().breaker,
        BreakerState::Open
    );
    local.resume(frozen).unwrap();
    // The next probe after `open_for` finds the node answering and closes the breaker.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(v) = client.get::<_, Option<i64>>("frozen").await {
            assert_eq!(v, Some(1));
            break;
        }
        assert!(Instant::now() < deadline, "the node never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        client.health().node(&frozen_addr).unwrap().breaker,
        BreakerState::Closed
    );
}

/// A script that keeps its node busy for `ARGV[1]` microseconds, then answers 1.
const SPIN: &str = "local s = redis.call('TIME') repeat local n = redis.call('TIME') \
                    until (n[1] - s[1]) * 1000000 + n[2] - s[2] >= tonumber(ARGV[1]) return 1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_while_the_node_answers_other_requests_does_not_open_its_breaker() {
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .node_timeout(Duration::from_secs(30))
        .config("busy-reply-threshold", "100")
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(10))
        .health_check_interval(None)
        .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(1))
        .build()
        .await
        .unwrap();
    let key = "hasty:{a}";
    client.set(key, "v").await.unwrap();
    let node = client.node_for_key(key.as_bytes()).unwrap();
    let owner = support::owner_index(&local, &client, key);
    let spin = |micros: u32| {
        let client = client.clone();
        async move {
            client
                .query::<i64>(cmd("EVAL").arg(SPIN).arg(1).arg(key).arg(micros))
                .await
        }
    };

    // A 400 ms script runs alone on the client's connection to the node (the node
    // answers others `BUSY`); a 600 ms one and a read with a 500 ms deadline queue
    // behind it, for the next write. The first script's reply comes in the read's
    // lifetime; then the read times out behind the second script.
    let first = tokio::spawn(spin(400_000));
    support::wait_until_busy(&local, owner).await;
    // Polled in this order on this task: the second script is queued before the read.
    let hasty = client.with_response_timeout(Duration::from_millis(500));
    let (second, read) =
        futures_util::future::join(spin(600_000), hasty.get::<_, Option<String>>(key)).await;
    assert!(matches!(read, Err(Error::Timeout { .. })), "{read:?}");
    assert_eq!(second.unwrap(), 1);
    assert_eq!(first.await.unwrap().unwrap(), 1);
    // The node answered meanwhile: the read's short deadline was no failure of the
    // node's, and its breaker stays closed for every handle.
    assert_eq!(
        client.health().node(&node).unwrap().breaker,
        BreakerState::Closed
    );
    assert_eq!(
        client
            .get::<_, Option<String>>(key)
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timeout_behind_a_pipeline_whose_replies_stream_in_does_not_open_the_breaker() {
    let local = never_failing_over().await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(30))
        .health_check_interval(None)
        .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(1))
        .build()
        .await
        .unwrap();
    // Ten values of 1 MB written to one node in one pipeline, each followed by a 30 ms
    // script: the node reads the request a piece at a time and sends what it has
    // answered whenever it waits for more, reply after reply, for 300 ms at least.
    let value = vec![b'x'; 1024 * 1024];
    let node = client.node_for_key(b"{stream}").unwrap();
    let mut pipeline = client.pipeline();
    for i in 0..10 {
        pipeline.set(format!("{{stream}}:{i}"), value.as_slice());
        pipeline.add(cmd("EVAL").arg(SPIN).arg(1).arg("{stream}").arg(30_000));
    }
    // Polled in this order on this task: the pipeline is written first, and the read
    // waits behind its replies past its 100 ms.
    let hasty = client.with_response_timeout(Duration::from_millis(100));
    let (replies, read) = futures_util::future::join(
        pipeline.execute(),
        hasty.get::<_, Option<Vec<u8>>>("{stream}:other"),
    )
    .await;
    assert!(matches!(read, Err(Error::Timeout { .. })), "{read:?}");
    assert_eq!(replies.unwrap().len(), 20);
    // The node answered the pipeline meanwhile, one reply after another.
    assert_eq!(
        client.health().node(&node).unwrap().breaker,
        BreakerState::Closed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_slower_than_every_deadline_still_opens_its_breaker() {
    let local = never_failing_over().await;
    let client = slow_node_client(&local, None).await;
    let (slow, _) = open_the_breaker_of_a_slow_node(&client).await;
    let r = client.query::<i64>(slow).await;
    assert!(matches!(r, Err(Error::CircuitOpen { .. })), "{r:?}");
}

/// A client with a 200 ms response timeout and a breaker that opens after two failures
/// for 30 s (and `budget` for its retries, if given).
async fn slow_node_client(
    local: &LocalCluster,
    budget: Option<redcluster::RetryBudgetConfig>,
) -> ClusterClient {
    let mut builder = slow_node_builder(local);
    if let Some(budget) = budget {
        builder = builder.retry_budget(budget);
    }
    builder.build().await.unwrap()
}

/// [`slow_node_client`]'s settings.
fn slow_node_builder(local: &LocalCluster) -> redcluster::ClusterClientBuilder {
    ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_millis(200))
        .health_check_interval(None)
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(2)
                .open_for(Duration::from_secs(30)),
        )
}

/// Opens the breaker of the node of `slow:{a}` with two scripts that each take it
/// 300 ms, past the client's 200 ms: every one times out, and its reply comes late,
/// during the next one's wait (late replies are no progress). The slow command, and the
/// node's address.
async fn open_the_breaker_of_a_slow_node(client: &ClusterClient) -> (redcluster::Cmd, String) {
    open_the_breaker_of_the_node_of(client, "slow:{a}").await
}

/// [`open_the_breaker_of_a_slow_node`] for the node of `key`.
async fn open_the_breaker_of_the_node_of(
    client: &ClusterClient,
    key: &str,
) -> (redcluster::Cmd, String) {
    let node = client.node_for_key(key.as_bytes()).unwrap();
    let slow = cmd("EVAL").arg(SPIN).arg(1).arg(key).arg(300_000);
    for _ in 0..2 {
        let r = client.query::<i64>(slow.clone()).await;
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    }
    assert_eq!(
        client.health().node(&node).unwrap().breaker,
        BreakerState::Open
    );
    (slow, node)
}

/// A keyless command (`EVAL ... 0`, `PUBLISH`) may run on any primary: one whose
/// breaker is open is passed over for another, at once. It took its turn in the round
/// robin, waited a backoff and spent a retry of the budget, and with the budget spent
/// (likely in the incident that opened the breaker) failed with `CircuitOpen`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_command_passes_over_a_primary_whose_breaker_is_open() {
    let local = never_failing_over().await;
    let no_retries = redcluster::RetryBudgetConfig::new(0.0, 0.0, 0.0);
    let client = slow_node_client(&local, Some(no_retries)).await;
    open_the_breaker_of_a_slow_node(&client).await;
    // The slow node is still busy with the scripts: a request it took would time out.
    for i in 0..30 {
        let r = client
            .query::<i64>(cmd("EVAL").arg("return 1").arg(0))
            .await;
        assert!(matches!(r, Ok(1)), "{i}: {r:?}");
    }
    assert_eq!(client.stats().retries, 0);
}

/// With every primary's breaker open, a keyless command fails at once with
/// `CircuitOpen`, as a keyed one does. It went from one open primary to the next as if
/// the topology routed it elsewhere, waiting a backoff and spending a retry of the
/// client's budget each time, until its deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_command_fails_fast_when_every_primary_breaker_is_open() {
    let local = never_failing_over().await;
    // No refresh: one that an opening breaker asks for would reach the next node
    // while its slow script holds it, and its answer there, in time, would keep that
    // script's timeout from counting (the node answered).
    let client = slow_node_builder(&local)
        .refresh_min_interval(Duration::from_secs(3600))
        .build()
        .await
        .unwrap();
    let mut opened = Vec::new();
    for i in 0..1000 {
        let key = format!("slow:{{{i}}}");
        let node = client.node_for_key(key.as_bytes()).unwrap();
        if !opened.contains(&node) {
            open_the_breaker_of_the_node_of(&client, &key).await;
            opened.push(node);
        }
        if opened.len() == 3 {
            break;
        }
    }
    assert_eq!(opened.len(), 3, "three primaries");
    let retries = client.stats().retries;
    let r = client
        .query::<i64>(cmd("EVAL").arg("return 1").arg(0))
        .await;
    assert!(matches!(r, Err(Error::CircuitOpen { .. })), "{r:?}");
    assert_eq!(client.stats().retries, retries, "no retry");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_probe_its_caller_dropped_lets_the_next_request_probe() {
    let local = never_failing_over().await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(3))
        .health_check_interval(None)
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(1)
                .open_for(Duration::from_millis(300)),
        )
        .build()
        .await
        .unwrap();
    let key = "probe:{a}";
    client.set(key, "v").await.unwrap();
    let owner = support::owner_index(&local, &client, key);
    let node = client.node_for_key(key.as_bytes()).unwrap();
    local.pause(owner).unwrap();
    let first = client
        .with_response_timeout(Duration::from_millis(200))
        .get::<_, Option<String>>(key)
        .await;
    assert!(matches!(first, Err(Error::Timeout { .. })), "{first:?}");
    assert_eq!(
        client.health().node(&node).unwrap().breaker,
        BreakerState::Open
    );
    // Past `open_for`, the next request is the probe; its caller gives up on it.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let dropped = tokio::time::timeout(
        Duration::from_millis(100),
        client.get::<_, Option<String>>(key),
    )
    .await;
    assert!(dropped.is_err(), "{dropped:?}");
    local.resume(owner).unwrap();
    // The probe's outcome will never come: the next request probes in its place,
    // rather than fail fast until the dropped one would have timed out (3 s).
    let started = Instant::now();
    let answer = client.get::<_, Option<String>>(key).await;
    assert_eq!(answer.unwrap().as_deref(), Some("v"));
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(
        client.health().node(&node).unwrap().breaker,
        BreakerState::Closed
    );
}

/// The response timeout of the failure-rate test: each failure costs one.
const RATE_TEST_TIMEOUT: Duration = Duration::from_millis(300);

/// One request to a primary that `local` freezes for the request (`fail`: it times out)
/// or leaves running (it is answered); what the breaker sees, one at a time.
async fn request_to(local: &LocalCluster, client: &ClusterClient, node: usize, fail: bool) {
    if fail {
        local.pause(node).unwrap();
        let r = client.get::<_, Option<i64>>("flaky").await;
        local.resume(node).unwrap();
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    } else {
        assert_eq!(
            client.get::<_, Option<i64>>("flaky").await.unwrap(),
            Some(1)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_failing_every_other_request_opens_its_breaker_by_rate_within_a_window() {
    let local = never_failing_over().await;
    // Never by failures in a row: only the rate can open it.
    let breaker = CircuitBreakerConfig::default()
        .consecutive_failures(1000)
        .failure_rate(0.5, 10)
        .open_for(Duration::from_secs(60));
    let build = |window: Duration| {
        ClusterClient::builder()
            .nodes(local.seeds())
            .response_timeout(RATE_TEST_TIMEOUT)
            .max_retries(0)
            .health_check_interval(None)
            .circuit_breaker(breaker.window(window))
            .build()
    };
    let client = build(Duration::from_secs(60)).await.unwrap();
    client.set("flaky", 1).await.unwrap();
    let node = local.master_of_slot(key_slot(b"flaky")).await.unwrap();
    let addr = local.node_addr(node);
    let breaker_of = |client: &ClusterClient| client.health().node(&addr).unwrap().breaker;

    // Failure, success, ...: counting starts at the first failure. After ten requests,
    // five failed: 50 %, but the rate is checked as a failure comes. The sixth failure
    // (6 of 11) opens it.
    for i in 0..10 {
        request_to(&local, &client, node, i % 2 == 0).await;
        assert_eq!(breaker_of(&client), BreakerState::Closed, "request {i}");
    }
    request_to(&local, &client, node, true).await;
    assert_eq!(breaker_of(&client), BreakerState::Open);
    let r = client.get::<_, Option<i64>>("flaky").await;
    assert!(
        matches!(&r, Err(Error::CircuitOpen { node }) if *node == addr),
        "{r:?}"
    );

    // The same ten with a window shorter than the wait before the eleventh: the window
    // that counted them has ended, and one failure of one request is below the 10
    // requests a rate needs.
    let window = Duration::from_secs(4);
    let client = build(window).await.unwrap();
    assert_eq!(
        client.get::<_, Option<i64>>("flaky").await.unwrap(),
        Some(1)
    );
    let started = Instant::now();
    for i in 0..10 {
        request_to(&local, &client, node, i % 2 == 0).await;
    }
    // The window is what this waits for: its end is the point of the test. It began
    // when the first failure was recorded, a response timeout after `started` or a
    // little later; the eleventh is recorded a response timeout after this wait.
    assert!(
        started.elapsed() < window,
        "ten requests took the whole window"
    );
    tokio::time::sleep_until(started + window + RATE_TEST_TIMEOUT).await;
    request_to(&local, &client, node, true).await;
    assert_eq!(breaker_of(&client), BreakerState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reads_go_to_the_primary_while_the_replicas_breaker_is_open() {
    let local = LocalCluster::builder()
        .node_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::Replica)
        .response_timeout(Duration::from_millis(200))
        .health_check_interval(None)
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(2)
                .open_for(Duration::from_secs(60)),
        )
        .build()
        .await
        .unwrap();
    let key = "replica-breaker";
    let primary = local
        .master_of_slot(key_slot(key.as_bytes()))
        .await
        .unwrap();
    let replica = local.replicas_of(primary).await.unwrap()[0];
    client.set(key, "v").await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while client
        .get::<_, Option<String>>(key)
        .await
        .unwrap()
        .is_none()
    {
        assert!(Instant::now() < deadline, "never replicated");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    local.pause(replica).unwrap();
    // Two reads time out on the frozen replica (a read that timed out is not resent:
    // its deadline has passed) and open its breaker.
    for _ in 0..2 {
        let r = client.get::<_, Option<String>>(key).await;
        assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    }
    let replica_addr = local.node_addr(replica);
    assert_eq!(
        client.health().node(&replica_addr).unwrap().breaker,
        BreakerState::Open
    );
    // Then reads go to the primary, at once, while the replica is still frozen.
    let primary_gets = calls(&local, primary, "get").await;
    for _ in 0..5 {
        let started = Instant::now();
        let read: Option<String> = client.get(key).await.unwrap();
        assert_eq!(read.as_deref(), Some("v"));
        assert!(started.elapsed() < Duration::from_millis(200));
    }
    assert_eq!(calls(&local, primary, "get").await, primary_gets + 5);
    local.resume(replica).unwrap();
}

/// How long the frozen-primary test freezes its node: several response timeouts, so that
/// the breaker opens, probes, and opens again, and short of the cluster's node timeout.
const FREEZE: Duration = Duration::from_secs(3);

/// How much later than its response timeout a request may be answered: timers that fire
/// late and tasks that wait for a core on a loaded two-core machine (this file's tests
/// run two at a time). Half a response timeout: a request that waited for two would
/// exceed it.
const FREEZE_SLACK: Duration = Duration::from_millis(250);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_primary_costs_its_own_requests_a_timeout_and_nothing_else() {
    let local = never_failing_over().await;
    let timeout = Duration::from_millis(500);
    let breaker = CircuitBreakerConfig::default();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(timeout)
        .circuit_breaker(breaker)
        .build()
        .await
        .unwrap();
    let frozen = local.master_of_slot(key_slot(b"ft:0:0")).await.unwrap();
    let frozen_addr = local.node_addr(frozen);
    let masters = local.masters().await.unwrap();
    let owners = slot_owners(&local).await;
    let shard = |o: &Outcome| owners[usize::from(o.slot)];
    let served = |log: &[Outcome], node: usize, since: Instant| {
        log.iter()
            .filter(|o| o.started >= since && shard(o) == node && o.error.is_none())
            .count()
    };
    let writers = Writers::spawn(&client, 32, Mix::SetsAndIncrs);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    while !writers.with_log(|log| masters.iter().all(|&m| served(log, m, started) >= 100)) {
        assert!(Instant::now() < deadline, "no traffic before the freeze");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    local.pause(frozen).unwrap(); // returns once the process is stopped
    let frozen_at = Instant::now();
    tokio::time::sleep(FREEZE).await;
    let thawed_at = Instant::now();
    local.resume(frozen).unwrap();
    // Run until the thawed shard has served 100 requests sent after the thaw.
    let deadline = thawed_at + Duration::from_secs(10);
    while writers.with_log(|log| served(log, frozen, thawed_at)) < 100 {
        assert!(
            Instant::now() < deadline,
            "the thawed shard never served again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let outcomes = writers.finish(timeout + FREEZE_SLACK).await;

    let slowest = outcomes.iter().max_by_key(|o| o.took).unwrap();
    assert!(
        slowest.took <= timeout + FREEZE_SLACK,
        "a request took {:?}: {slowest:?}",
        slowest.took
    );
    let (on_frozen, elsewhere): (Vec<&Outcome>, Vec<&Outcome>) =
        outcomes.iter().partition(|o| shard(o) == frozen);
    let in_freeze = |o: &&&Outcome| o.started >= frozen_at && o.ended() < thawed_at;

    // The other shards never fail, and keep serving quickly during the freeze.
    let failed: Vec<&&Outcome> = elsewhere.iter().filter(|o| o.error.is_some()).collect();
    assert!(
        failed.is_empty(),
        "other shards failed {} times: {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
    let elsewhere_in_freeze: Vec<&&Outcome> = elsewhere.iter().filter(in_freeze).collect();
    let served_in_freeze: Vec<(usize, usize)> = masters
        .iter()
        .filter(|&&m| m != frozen)
        .map(|&m| {
            let n = elsewhere_in_freeze.iter().filter(|o| shard(o) == m).count();
            (m, n)
        })
        .collect();
    let elsewhere_p99 = p99(elsewhere_in_freeze.iter().map(|o| o.took).collect());

    // The frozen shard's requests fail with a timeout, or once its breaker is open with
    // `CircuitOpen` (never sent); none sent during the freeze is answered before the thaw.
    let (mut timeouts, mut open) = (0, Vec::new());
    for o in &on_frozen {
        match &o.error {
            None => assert!(!in_freeze(&o), "a frozen node answered: {o:?}"),
            // Written to the frozen node (may have run), or held behind such a write
            // until its deadline (never sent: `no_unexecuted_write_is_stored` below
            // checks none of those ran).
            Some(Error::Timeout { .. }) => timeouts += 1,
            Some(Error::CircuitOpen { node }) => {
                assert_eq!(node, &frozen_addr, "{o:?}");
                open.push(o.took);
            }
            Some(e) => panic!("the frozen shard failed with {e:?}: {o:?}"),
        }
    }
    // After the thaw: the shard serves again within one `open_for` and a probe, and from
    // then on nothing fails.
    let served_again_at = on_frozen
        .iter()
        .filter(|o| o.started >= thawed_at && o.error.is_none())
        .map(|o| o.ended())
        .min()
        .unwrap();
    let late_failures: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| o.started > served_again_at && o.error.is_some())
        .collect();
    println!(
        "SIGSTOP for {FREEZE:?}: {} requests; during the freeze, other shards served {:?} \
         (node, requests), p99 {elsewhere_p99:?}; the frozen shard: {} requests, {timeouts} \
         timeouts, {} circuit open (p99 {:?}); served again {:?} after the thaw; slowest \
         request {:?}; {:?}",
        outcomes.len(),
        served_in_freeze,
        on_frozen.len(),
        open.len(),
        p99(open.clone()),
        served_again_at - thawed_at,
        slowest.took,
        client.stats()
    );
    for (m, n) in served_in_freeze {
        assert!(n >= 100, "node {m} served {n} requests during the freeze");
    }
    // Generous bounds: 32 writers and the servers share 2 cores with other tests.
    assert!(
        elsewhere_p99 < Duration::from_millis(100),
        "other shards' p99 during the freeze {elsewhere_p99:?}"
    );
    assert!(timeouts > 0, "requests to the frozen node timed out");
    assert!(!open.is_empty(), "its breaker opened");
    // An open breaker fails requests fast: they do not wait out their timeout.
    let open_p99 = p99(open.clone());
    assert!(
        open_p99 < timeout / 4,
        "CircuitOpen took {open_p99:?} (p99)"
    );
    assert!(
        served_again_at - thawed_at <= breaker.open_for + timeout + FREEZE_SLACK,
        "served again {:?} after the thaw",
        served_again_at - thawed_at
    );
    assert!(
        late_failures.is_empty(),
        "requests failed after the shard served again: {:?}",
        &late_failures[..late_failures.len().min(3)]
    );

    // The data agree with what the writers were told.
    no_unexecuted_write_is_stored(&client, &outcomes).await;
    every_acknowledged_write_is_stored(&client, &outcomes).await;
    let ran_anyway = every_increment_counts_at_most_once(&client, &outcomes).await;
    println!("{ran_anyway} INCRs that timed out ran after the thaw");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_connection_dropped_is_not_resent_but_a_read_is() {
    let fake = FakeCluster::start(|args, earlier| match args[0].as_str() {
        // Read, then the connection drops: the first two INCRs, the first GET, and the
        // first two SETs.
        "INCR" if earlier < 2 => Action::Drop,
        "GET" if earlier == 0 => Action::Drop,
        "SET" if earlier < 2 => Action::Drop,
        "GET" => Action::Reply(Value::Bulk("v".into())),
        "SET" => Action::Reply(Value::Simple("OK".into())),
        _ => Action::Reply(Value::Int(1)),
    })
    .await;
    let client = fake.quickly_retrying_client().await;
    let err = client
        .query::<i64>(cmd("INCR").arg("counter"))
        .await
        .unwrap_err();
    assert!(err.may_have_executed(), "{err:?}");
    assert!(!err.is_retryable(), "{err:?}");
    assert_eq!(
        fake.count("INCR"),
        1,
        "the write was not sent again: {:?}",
        fake.seen()
    );
    // Declared safe to repeat, the next INCR is sent again after the same drop.
    let n: i64 = client
        .query_idempotent(cmd("INCR").arg("counter"))
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert_eq!(fake.count("INCR"), 3, "{:?}", fake.seen());
    let v: String = client.get("k").await.unwrap();
    assert_eq!(v, "v");
    assert_eq!(
        fake.count("GET"),
        2,
        "the read was sent again: {:?}",
        fake.seen()
    );
    // A lock taken with SET NX is not sent again: a repeat would answer "not set" to
    // the caller that holds the lock. A plain SET is.
    let lock = cmd("SET")
        .arg("lock")
        .arg("token")
        .arg("NX")
        .arg("PX")
        .arg(30000);
    let err = client.query::<Value>(lock).await.unwrap_err();
    assert!(err.may_have_executed(), "{err:?}");
    assert_eq!(fake.count("SET"), 1, "{:?}", fake.seen());
    client.set("k", "v2").await.unwrap();
    assert_eq!(fake.count("SET"), 3, "{:?}", fake.seen());
}

/// An idempotent request resent after its connection dropped (it may have run) ends in
/// its last attempt's error reply when that reply is the answer: a script that returned
/// an error reading like a redirect (`MOVED` for a slot its keys are not in) ran, and
/// says so. A refusal (`TRYAGAIN` until the retries are spent) says the last attempt did
/// not run, so the request ends in the dropped connection's error: the first may have.
/// A scripted fake: a real server cannot be made to drop a connection after reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resent_request_ends_in_its_reply_but_not_in_a_refusal() {
    let key = "k";
    let elsewhere = (key_slot(key.as_bytes()) + 1) % 16384;
    let forged = format!("MOVED {elsewhere} 127.0.0.1:1");
    let reply = forged.clone();
    let fake = FakeCluster::start(move |args, earlier| match args[0].as_str() {
        "EVAL" | "GET" if earlier == 0 => Action::Drop,
        "EVAL" => Action::Reply(Value::ServerError(ServerError::new(reply.clone()))),
        "GET" => Action::Reply(Value::ServerError(ServerError::new("TRYAGAIN later"))),
        _ => Action::Reply(Value::Int(1)),
    })
    .await;
    let client = fake.quickly_retrying_client().await;
    let script = cmd("EVAL")
        .arg(format!("return redis.error_reply('{forged}')"))
        .arg(1)
        .arg(key);
    let err = client.query_idempotent::<Value>(script).await.unwrap_err();
    assert!(
        matches!(&err, Error::Server(e) if e.to_string() == forged),
        "{err:?}"
    );
    assert_eq!(fake.count("EVAL"), 2, "{:?}", fake.seen());

    let err = client.get::<_, String>(key).await.unwrap_err();
    let dropped = matches!(err, Error::ConnectionLost { .. } | Error::Io { .. });
    assert!(dropped && err.may_have_executed(), "{err:?}");
    assert!(fake.count("GET") >= 2, "resent: {:?}", fake.seen());
}

/// A handshake slower than the response timeout (TLS over a long link, a busy node):
/// the reconnect is not cut with the request that started it, so it completes and
/// serves the requests after. A scripted fake: a real server cannot be made to answer
/// `HELLO` slowly on demand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnect_slower_than_the_response_timeout_still_completes() {
    let fake = FakeCluster::start_with_hello_delay(Duration::from_millis(150), |args, earlier| {
        match args[0].as_str() {
            // The first health check's PING: the connection drops, with no request in
            // flight, so nothing asks for a topology refresh (which would reconnect
            // with its own, longer, deadline).
            "PING" if earlier == 0 => Action::Drop,
            "PING" => Action::Reply(Value::Simple("PONG".into())),
            _ => Action::Reply(Value::Bulk("v".into())),
        }
    })
    .await;
    let client = ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        .response_timeout(Duration::from_millis(60))
        .refresh_interval(Duration::from_secs(3600))
        .health_check_interval(Some(Duration::from_millis(100)))
        .circuit_breaker(CircuitBreakerConfig::default().disabled())
        .build()
        .await
        .unwrap();
    assert_eq!(client.get::<_, String>("k").await.unwrap(), "v");
    let waited_since = Instant::now();
    while fake.count("PING") == 0 {
        assert!(
            waited_since.elapsed() < Duration::from_secs(5),
            "no health check"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Each GET waits at most 60 ms; the reconnect takes 150 ms.
    let mut timed_out = 0;
    let answered = loop {
        match client.get::<_, String>("k").await {
            Ok(v) => break v,
            Err(Error::Timeout { .. }) if timed_out < 40 => timed_out += 1,
            Err(e) => panic!("after {timed_out} timeouts: {e:?}"),
        }
    };
    assert_eq!(answered, "v");
    assert!(timed_out <= 15, "{timed_out} requests timed out first");
    // The discovery's handshake and one reconnect: not one cut attempt per request.
    assert!(fake.count("HELLO") <= 3, "{:?}", fake.seen());
}

/// Seeds that never answer the TCP handshake (their SYNs dropped), dialled together,
/// fail the build once the connect timeout has passed, with an error naming them.
#[tokio::test]
async fn unreachable_seeds_fail_within_the_connect_timeout_naming_them() {
    let silent: Vec<support::SilentAddr> = (0..3).map(|_| support::silent_addr()).collect();
    let dead: Vec<String> = silent.iter().map(|s| s.addr.clone()).collect();
    let timeout = Duration::from_secs(1);
    let started = Instant::now();
    let err = ClusterClient::builder()
        .nodes(&dead)
        .connect_timeout(timeout)
        .build()
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(took >= timeout, "gave up before the timeout: {took:?}");
    // Dialled at once, not one after another.
    assert!(took < timeout + Duration::from_millis(800), "{took:?}");
    assert!(!err.may_have_executed());
    let text = err.to_string();
    assert!(dead.iter().any(|d| text.contains(d.as_str())), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_seed_costs_the_build_its_connect_timeout_at_most() {
    let local = never_failing_over().await;
    let seeds = local.seeds();
    local.pause(0).unwrap();
    // Frozen, the first seed accepts the TCP connection (the kernel does) and never
    // answers the handshake: only the connect timeout ends it.
    for frozen_alone in [false, true] {
        let nodes = if frozen_alone {
            vec![seeds[0].clone()]
        } else {
            seeds.clone()
        };
        let started = Instant::now();
        let built = ClusterClient::builder()
            .nodes(nodes)
            .connect_timeout(Duration::from_millis(700))
            .response_timeout(Duration::from_secs(30))
            .build()
            .await;
        let took = started.elapsed();
        if frozen_alone {
            let err = built.unwrap_err();
            assert!(took >= Duration::from_millis(700), "{took:?}");
            assert!(took < Duration::from_secs(4), "{took:?}: {err}");
        } else {
            let client = built.unwrap();
            assert!(took < Duration::from_secs(3), "{took:?}");
            let key = (0..100)
                .map(|i| format!("seed:{{{i}}}"))
                .find(|k| client.node_for_key(k.as_bytes()).as_deref() != Some(&*seeds[0]))
                .unwrap();
            client.set(key.as_str(), "v").await.unwrap();
        }
    }
    local.resume(0).unwrap();
}

/// Restarts every (killed) node of `local`, waits for the cluster to settle, then SETs
/// `key` through `client` every 100 ms until it is served, within 20 s; how many
/// attempts that took.
async fn restart_every_node_and_set(
    local: &LocalCluster,
    client: &ClusterClient,
    key: &str,
    value: i64,
) -> u32 {
    for i in 0..local.nodes().len() {
        local.restart(i).await.unwrap();
    }
    local
        .wait_until_stable(Duration::from_secs(30))
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut attempts = 0;
    loop {
        attempts += 1;
        match client.set(key, value).await {
            Ok(()) => return attempts,
            Err(e) => assert!(Instant::now() < deadline, "never served again: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_recovers_after_every_node_is_killed_and_restarted() {
    let local = LocalCluster::builder().start().await.unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    client.set("before", 1).await.unwrap();
    for i in 0..local.nodes().len() {
        local.kill(i).unwrap();
    }
    assert!(client.get::<_, Option<i64>>("before").await.is_err());
    let attempts = restart_every_node_and_set(&local, &client, "after", 2).await;
    println!("recovered after {attempts} attempts; {:?}", client.stats());
    assert_eq!(client.get::<_, i64>("after").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lazy_client_is_built_while_the_cluster_is_down_and_serves_once_it_is_up() {
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    let seeds = local.seeds();
    for i in 0..local.nodes().len() {
        local.kill(i).unwrap();
    }
    // Built the usual way, the client needs a seed to answer.
    let eager = ClusterClient::builder()
        .nodes(seeds.clone())
        .connect_timeout(Duration::from_millis(500))
        .build()
        .await;
    assert!(eager.is_err(), "built with every node down");
    let started = Instant::now();
    let client = ClusterClient::builder()
        .nodes(seeds)
        .lazy_connect(true)
        .connect_timeout(Duration::from_millis(500))
        .response_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    assert!(started.elapsed() < Duration::from_millis(500));
    // Meanwhile a request fails within its deadline with the reason: no seed answers.
    let started = Instant::now();
    let r = client.get::<_, Option<i64>>("lazy").await;
    assert!(
        matches!(&r, Err(e @ (Error::Io { .. } | Error::ConnectionLost { .. })) if !e.may_have_executed()),
        "{r:?}"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // A command for every node too (no node is known to send it to).
    let r = client.query::<i64>(cmd("DBSIZE")).await;
    assert!(
        matches!(&r, Err(Error::Io { .. } | Error::ConnectionLost { .. })),
        "{r:?}"
    );
    // A keyspace subscription (made on every primary) cannot be yet: it is made once
    // the cluster is discovered.
    let sub = client.subscriber().await.unwrap();
    let r = sub.subscribe(["__keyevent@0__:set"]).await;
    assert!(matches!(r, Err(Error::ClusterDown(_))), "{r:?}");

    // Discovery is retried in the background; the first request after it is served.
    restart_every_node_and_set(&local, &client, "lazy", 1).await;
    assert_eq!(client.get::<_, i64>("lazy").await.unwrap(), 1);
    assert_eq!(client.known_nodes().len(), local.nodes().len());
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0..local.nodes().len() {
        let node = local.connect_node(i).await.unwrap();
        loop {
            let numsub = support::pubsub_count(&node, "NUMSUB", "__keyevent@0__:set").await;
            if numsub == 1 {
                break;
            }
            assert!(Instant::now() < deadline, "node {i}: {numsub} subscribers");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(sub);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_holds_up_health_checks_of_the_others_for_a_second_at_most() {
    let local = never_failing_over().await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        // Far longer than the test: a health PING must not wait this long.
        .response_timeout(Duration::from_secs(3600))
        .health_check_interval(Some(Duration::from_millis(100)))
        .build()
        .await
        .unwrap();
    // Connected to every node, so that the frozen one's PING hangs on an open
    // connection rather than failing to connect.
    for i in 0..3 {
        let addr = local.node_addr(i);
        let key = (0..1000)
            .map(|n| format!("hc:{n}"))
            .find(|k| client.node_for_key(k.as_bytes()).as_deref() == Some(addr.as_str()))
            .unwrap();
        client.set(key.as_str(), 1).await.unwrap();
    }
    local.pause(0).unwrap();
    let before = calls(&local, 1, "ping").await;
    // Rounds keep coming while node 0 never answers: each PING of it gives up after a
    // second, so node 1 is PINGed again and again. Five rounds of a second and an
    // interval each take 5.5 s at most (the first may have begun before the freeze);
    // held up two seconds each, the four after the first would take 8.4 s.
    const ROUNDS: u32 = 5;
    let budget = (Duration::from_secs(1) + Duration::from_millis(100)) * ROUNDS;
    let slack = Duration::from_millis(1500);
    let deadline = Instant::now() + budget + slack;
    let mut pinged = 0;
    while pinged < u64::from(ROUNDS) {
        assert!(
            Instant::now() < deadline,
            "node 1 got {pinged} health PINGs in {:?} while node 0 was frozen",
            budget + slack
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
        pinged = calls(&local, 1, "ping").await - before;
    }
    local.resume(0).unwrap();
    drop(client);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_node_delays_a_topology_refresh_by_a_moment_only() {
    let local = never_failing_over().await;
    let timeout = Duration::from_secs(5);
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(timeout)
        .build()
        .await
        .unwrap();
    local.pause(2).unwrap();
    // All three primaries are asked; two answer at once and the third never does. The
    // refresh goes by the two, instead of waiting the frozen one's response timeout.
    for _ in 0..3 {
        let started = Instant::now();
        client.refresh_topology().await.unwrap();
        assert!(
            started.elapsed() < timeout / 2,
            "a refresh took {:?}",
            started.elapsed()
        );
    }
    local.resume(2).unwrap();
}

/// `CLUSTER NODES` of a view in which `primary` serves every slot at config epoch
/// `epoch`, and `other` is its replica, or (`other_master`) a master of the same epoch
/// that serves nothing: two masters of one epoch.
fn nodes_of_one_shard(primary: u16, other: u16, epoch: u64, other_master: bool) -> Value {
    let id = |port: u16| format!("{port:0>40}");
    let bus = |port: u16| u32::from(port) + 10000;
    let other_role = if other_master {
        "master -".to_string()
    } else {
        format!("slave {}", id(primary))
    };
    Value::Bulk(
        format!(
            "{} 127.0.0.1:{primary}@{} master - 0 0 {epoch} connected 0-16383\n\
             {} 127.0.0.1:{other}@{} {other_role} 0 0 {epoch} connected\n",
            id(primary),
            bus(primary),
            id(other),
            bus(other),
        )
        .into(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_view_with_the_newer_config_epoch_wins_against_a_stale_majority() {
    // Phase 0: b was promoted and took config epoch 2; a and c have not heard yet: both
    // still give a (epoch 1) as the primary and b as its replica, two votes against
    // one. Each answers at once, all three are asked at every refresh.
    // Phase 1: every node gives the stale view (as when the three a refresh asks are
    // all nodes that have not heard yet).
    // Phase 2: every node gives a as the primary at epoch 3 and b as its replica (a took
    // the slots back).
    // Phase 3: every node gives b as the primary at epoch 3, and a as a master of the
    // same epoch: two masters of one epoch, a collision the nodes have not settled.
    // All within a few seconds.
    let ports = Arc::new(Mutex::new((0u16, 0u16)));
    let phase = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let node = |of_b: bool| {
        let (for_shards, for_nodes) = (Arc::clone(&ports), Arc::clone(&ports));
        let (phase_shards, phase_nodes) = (Arc::clone(&phase), Arc::clone(&phase));
        let topology = move |_own: u16| {
            let (a, b) = *for_shards.lock().unwrap();
            match phase_shards.load(Ordering::SeqCst) {
                0 if of_b => one_shard(b, a, false),
                3 => one_shard(b, a, false),
                _ => one_shard(a, b, false),
            }
        };
        let nodes = move |_own: u16| {
            let (a, b) = *for_nodes.lock().unwrap();
            match phase_nodes.load(Ordering::SeqCst) {
                0 if of_b => nodes_of_one_shard(b, a, 2, false),
                0 | 1 => nodes_of_one_shard(a, b, 1, false),
                2 => nodes_of_one_shard(a, b, 3, false),
                _ => nodes_of_one_shard(b, a, 3, true),
            }
        };
        let nil = |_: &[String], _: usize| Action::Reply(Value::Nil);
        FakeCluster::start_with_shards_after(topology, nodes, |_| Duration::ZERO, nil)
    };
    let (a, b, c) = (node(false).await, node(true).await, node(false).await);
    *ports.lock().unwrap() = (a.port(), b.port());
    let client = ClusterClient::builder()
        .nodes([a.addr.as_str(), b.addr.as_str(), c.addr.as_str()])
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let owner = || client.node_for_key(b"k");
    for round in 0..10 {
        assert_eq!(owner().as_deref(), Some(b.addr.as_str()), "refresh {round}");
        client.refresh_topology().await.unwrap();
    }
    for node in [&a, &b, &c] {
        assert!(node.count("CLUSTER") >= 10, "{:?}", node.seen());
    }
    // The older view is kept out.
    phase.store(1, Ordering::SeqCst);
    for round in 0..3 {
        client.refresh_topology().await.unwrap();
        assert_eq!(owner().as_deref(), Some(b.addr.as_str()), "stale {round}");
    }
    // A newer epoch is followed at once.
    phase.store(2, Ordering::SeqCst);
    client.refresh_topology().await.unwrap();
    assert_eq!(owner().as_deref(), Some(a.addr.as_str()));
    // Two masters of one epoch: the routing installed stays.
    phase.store(3, Ordering::SeqCst);
    for round in 0..3 {
        client.refresh_topology().await.unwrap();
        assert_eq!(
            owner().as_deref(),
            Some(a.addr.as_str()),
            "collision {round}"
        );
    }
}

/// Two scripted nodes, a and b, each calling itself the one primary and the other its
/// replica (b calls a failed if `b_saw_a_fail`), each answering its `n`-th `CLUSTER
/// SHARDS` after `delay(n, of_a)`; with a client seeded with both.
async fn two_scripted_nodes(
    b_saw_a_fail: bool,
    delay: fn(usize, bool) -> Duration,
) -> (FakeCluster, FakeCluster, ClusterClient) {
    let ports = Arc::new(Mutex::new((0u16, 0u16)));
    let node = |of_a: bool| {
        let ports = Arc::clone(&ports);
        let topology = move |_own: u16| {
            let (a, b) = *ports.lock().unwrap();
            if of_a {
                one_shard(a, b, false)
            } else {
                one_shard(b, a, b_saw_a_fail)
            }
        };
        let nil = |_: &[String], _: usize| Action::Reply(Value::Nil);
        // No config epochs: a user without `+cluster|nodes`, say.
        let nodes =
            |_own: u16| Value::ServerError(redcluster::ServerError::new("NOPERM no permissions"));
        FakeCluster::start_with_shards_after(topology, nodes, move |n| delay(n, of_a), nil)
    };
    let (a, b) = (node(true).await, node(false).await);
    *ports.lock().unwrap() = (a.port(), b.port());
    let client = ClusterClient::builder()
        .nodes([a.addr.as_str(), b.addr.as_str()])
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    (a, b, client)
}

/// Refreshes take turns: one asked for while another is under way (the background
/// task's, `refresh_topology`, a scan's) waits for it, then asks. Otherwise the earlier
/// one, answered late, would install its view over the later one's: here a failover
/// undone until the next refresh. Two scripted nodes: the cluster's view is what it is
/// when asked, the first refresh's answers come 500 ms late; two connections per node,
/// so that the later refresh's answers need not queue behind them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_answered_late_never_installs_over_a_later_one() {
    // Phase 0: a is the primary, answered at once. 1: the same, answered 500 ms late.
    // 2: b is the primary (a failover), answered at once.
    let ports = Arc::new(Mutex::new((0u16, 0u16)));
    let phase = Arc::new(std::sync::atomic::AtomicU8::new(0));
    let node = || {
        let (ports, phase_of_view, phase_of_delay) =
            (Arc::clone(&ports), Arc::clone(&phase), Arc::clone(&phase));
        let topology = move |_own: u16| {
            let (a, b) = *ports.lock().unwrap();
            match phase_of_view.load(Ordering::SeqCst) {
                0 | 1 => one_shard(a, b, false),
                _ => one_shard(b, a, false),
            }
        };
        let delay = move |_n: usize| match phase_of_delay.load(Ordering::SeqCst) {
            1 => Duration::from_millis(500),
            _ => Duration::ZERO,
        };
        let nodes =
            |_own: u16| Value::ServerError(redcluster::ServerError::new("NOPERM no permissions"));
        let nil = |_: &[String], _: usize| Action::Reply(Value::Nil);
        FakeCluster::start_with_shards_after(topology, nodes, delay, nil)
    };
    let (a, b) = (node().await, node().await);
    *ports.lock().unwrap() = (a.port(), b.port());
    let client = ClusterClient::builder()
        .nodes([a.addr.as_str(), b.addr.as_str()])
        .health_check_interval(None)
        .connections_per_node(2)
        .build()
        .await
        .unwrap();
    let owner = || client.node_for_key(b"k");
    assert_eq!(owner().as_deref(), Some(a.addr.as_str()));
    let shards_asked = || {
        [&a, &b]
            .iter()
            .map(|n| n.seen().iter().filter(|s| *s == "CLUSTER SHARDS").count())
            .sum::<usize>()
    };
    let before = shards_asked();

    phase.store(1, Ordering::SeqCst);
    let earlier = tokio::spawn({
        let client = client.clone();
        async move { client.refresh_topology().await }
    });
    // Until both nodes have been asked (and will answer late).
    let asked_by = Instant::now() + Duration::from_secs(5);
    while shards_asked() < before + 2 {
        assert!(Instant::now() < asked_by, "{:?} {:?}", a.seen(), b.seen());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    phase.store(2, Ordering::SeqCst);
    client.refresh_topology().await.unwrap();
    earlier.await.unwrap().unwrap();
    assert_eq!(
        owner().as_deref(),
        Some(b.addr.as_str()),
        "the later view stays: {:?}",
        a.seen()
    );
}

/// A refresh runs on a task of its own: a `refresh_topology()` future polled once and
/// then kept, never polled again, holds up no other refresh. It held the client-wide turn
/// on the caller's task, and every later refresh (the background task's, a request's
/// vetting a redirect, this `refresh_topology()`) waited for it as long as it was kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_future_kept_unpolled_holds_up_no_other_refresh() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .build()
        .await
        .unwrap();
    let mut kept = std::pin::pin!(client.refresh_topology());
    let first_poll = tokio::time::timeout(Duration::ZERO, &mut kept).await;
    assert!(
        first_poll.is_err(),
        "a refresh waits for the nodes' answers"
    );
    let later = tokio::time::timeout(Duration::from_secs(10), client.refresh_topology()).await;
    assert!(matches!(later, Ok(Ok(()))), "{later:?}");
    // The kept one went on meanwhile: polled again, it has its outcome.
    let kept = tokio::time::timeout(Duration::from_secs(10), kept).await;
    assert!(matches!(kept, Ok(Ok(()))), "{kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_views_that_serve_every_slot_the_one_that_saw_the_failover_wins() {
    // Node a has not heard that it failed: it still calls itself the primary and b its
    // replica. Node b was promoted and reports a as failed. Each view serves every slot
    // and gets one vote; the answers come in any order.
    let (_a, b, client) = two_scripted_nodes(true, |_, _| Duration::ZERO).await;
    for round in 0..20 {
        client.refresh_topology().await.unwrap();
        assert_eq!(
            client.node_for_key(b"k").as_deref(),
            Some(b.addr.as_str()),
            "refresh {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn of_two_views_that_tie_the_routing_installed_stays_whichever_answers_first() {
    // While a graceful failover spreads, old and new primary may each call itself the
    // primary and the other its replica, neither failed: one vote each. The answers
    // come in turn, a first at one refresh and b first at the next; the client's map
    // used to follow the order, back and forth at every refresh.
    let (a, b, client) = two_scripted_nodes(false, |n, of_a| {
        if (n % 2 == 0) == of_a {
            Duration::ZERO
        } else {
            Duration::from_millis(30)
        }
    })
    .await;
    let installed = client.node_for_key(b"k");
    assert!(installed.is_some());
    for round in 0..10 {
        client.refresh_topology().await.unwrap();
        assert_eq!(client.node_for_key(b"k"), installed, "refresh {round}");
    }
    // Both were asked every time, in turn first.
    assert!(a.count("CLUSTER") >= 10 && b.count("CLUSTER") >= 10);
    // `CLUSTER NODES`, refused at the first refresh, was not asked again (each refusal
    // is an entry in the server's ACL log).
    for node in [&a, &b] {
        let asked = node.seen().iter().filter(|c| *c == "CLUSTER NODES").count();
        assert_eq!(asked, 1, "{:?}", node.seen());
    }
}

/// Round-robin reads rotate per shard: a task reading two shards in alternation still
/// reaches every node of each. (With one turn counter for the client it took every
/// other turn, and always landed on the same node of each shard.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_reads_rotate_per_shard_for_a_task_alternating_shards() {
    let local = support::cluster(3, 1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::RoundRobin)
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let a = "rr:{a}";
    let b = support::key_elsewhere(&client, a, "rr:b");
    let primary = local.master_of_slot(key_slot(a.as_bytes())).await.unwrap();
    let replica = local.replicas_of(primary).await.unwrap()[0];
    let before = (
        calls(&local, primary, "get").await,
        calls(&local, replica, "get").await,
    );
    for _ in 0..20 {
        client.get::<_, Option<String>>(a).await.unwrap();
        client.get::<_, Option<String>>(b.as_str()).await.unwrap();
    }
    let served = (
        calls(&local, primary, "get").await - before.0,
        calls(&local, replica, "get").await - before.1,
    );
    assert!(
        served.0 >= 5 && served.1 >= 5,
        "primary and replica served {served:?}"
    );
}

/// A pipeline's reads whose replica refuses connections (killed, not yet known failed)
/// go to the primary at once, as a single read's do: a reroute that spends no retry of
/// the client's budget (they were resent one by one as a retry, and failed once the
/// budget was spent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipelines_reads_go_to_the_primary_when_their_replica_refuses_connections() {
    let local = never_failing_over_with(1).await;
    let writer = ClusterClient::connect(local.seeds()).await.unwrap();
    let keys: Vec<String> = (0..10).map(|i| format!("pipe-replica:{{a}}:{i}")).collect();
    writer
        .mset(keys.iter().map(|k| (k.as_str(), "v")))
        .await
        .unwrap();
    let primary = support::owner_index(&local, &writer, &keys[0]);
    let replica = local.replicas_of(primary).await.unwrap()[0];
    local.kill(replica).unwrap();
    // A client that knows the replica as online (the cluster has not flagged it yet).
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::Replica)
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let replica_addr = local.node_addr(replica);
    assert!(client.known_nodes().contains(&replica_addr));
    let retries = client.stats().retries;
    let gets = calls(&local, primary, "get").await;
    let mut pipe = client.pipeline();
    for key in &keys {
        pipe.get(key.as_str());
    }
    let replies = pipe.execute_each().await;
    for reply in &replies {
        assert_eq!(
            reply.as_ref().unwrap(),
            &Value::Bulk("v".into()),
            "{replies:?}"
        );
    }
    assert_eq!(client.stats().retries, retries, "{:?}", client.stats());
    assert_eq!(calls(&local, primary, "get").await, gets + 10);
}

/// `LowestLatency` leaves out a replica whose health checks stopped getting answers: it
/// kept its last good latency, and reads kept going to it (and timing out) until its
/// breaker opened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lowest_latency_reads_leave_out_a_replica_that_stopped_answering_its_checks() {
    let local = never_failing_over_with(1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::LowestLatency)
        .response_timeout(Duration::from_millis(300))
        .health_check_interval(Some(Duration::from_millis(200)))
        // Not the breaker's doing: it would take a hundred failures to open.
        .circuit_breaker(CircuitBreakerConfig::default().consecutive_failures(100))
        .build()
        .await
        .unwrap();
    let key = "ll-silent:{a}";
    support::set_on_a_replica(&client, key, "v").await;
    let primary = support::owner_index(&local, &client, key);
    let replica = local.replicas_of(primary).await.unwrap()[0];
    let replica_addr = local.node_addr(replica);
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.health().nodes.iter().any(|n| n.latency.is_none()) {
        assert!(Instant::now() < deadline, "no latencies measured");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    local.pause(replica).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client
        .health()
        .node(&replica_addr)
        .unwrap()
        .latency
        .is_some()
    {
        assert!(
            Instant::now() < deadline,
            "the silent replica kept its latency"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for _ in 0..10 {
        let read = client.get::<_, Option<String>>(key).await;
        assert_eq!(read.unwrap().as_deref(), Some("v"));
    }
    local.resume(replica).unwrap();
}

/// Under `RoundRobin` and `LowestLatency`, which read from primaries too, a primary whose
/// breaker is open is passed over for its replicas: reads keep being served while it is
/// down and not yet failed over (they failed fast, or spent their retries, each time
/// their turn came to the primary).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_that_may_use_the_primary_pass_it_over_while_its_breaker_is_open() {
    let local = never_failing_over_with(1).await;
    for policy in [ReadFrom::RoundRobin, ReadFrom::LowestLatency] {
        let client = ClusterClient::builder()
            .nodes(local.seeds())
            .read_from(policy)
            .response_timeout(Duration::from_millis(300))
            .health_check_interval(Some(Duration::from_millis(500)))
            .circuit_breaker(
                CircuitBreakerConfig::default()
                    .consecutive_failures(2)
                    .open_for(Duration::from_secs(60)),
            )
            .build()
            .await
            .unwrap();
        let key = format!("rr-open:{policy:?}:{{a}}");
        support::set_on_a_replica(&client, &key, "v").await;
        let primary = support::owner_index(&local, &client, &key);
        let primary_addr = local.node_addr(primary);
        // Measured latencies first, so that `LowestLatency` counts the primary in.
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.health().nodes.iter().any(|n| n.latency.is_none()) {
            assert!(Instant::now() < deadline, "no latencies measured");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        local.pause(primary).unwrap();
        // Writes, which only the primary takes, time out until its breaker opens.
        let deadline = Instant::now() + Duration::from_secs(20);
        while client.health().node(&primary_addr).unwrap().breaker != BreakerState::Open {
            assert!(
                Instant::now() < deadline,
                "{policy:?}: the breaker never opened"
            );
            let _ = client.set(format!("{key}:w"), 1).await;
        }
        for _ in 0..10 {
            let read = client.get::<_, Option<String>>(key.as_str()).await;
            assert_eq!(read.unwrap().as_deref(), Some("v"), "{policy:?}");
        }
        local.resume(primary).unwrap();
    }
}

/// A replica whose breaker is open is passed over for the shard's other replica, not
/// swapped for the primary: with two replicas and one frozen, replica reads keep off
/// the primary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reads_pass_over_a_replica_whose_breaker_is_open_for_another_replica() {
    let local = never_failing_over_with(2).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::Replica)
        .response_timeout(Duration::from_millis(300))
        .health_check_interval(None)
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(2)
                .open_for(Duration::from_secs(30)),
        )
        .build()
        .await
        .unwrap();
    // A key of a shard with two replicas (replica migration may leave one with fewer).
    let mut shard = None;
    for i in 0..100 {
        let key = format!("two:{{k{i}}}");
        let primary = local
            .master_of_slot(key_slot(key.as_bytes()))
            .await
            .unwrap();
        let replicas = local.replicas_of(primary).await.unwrap();
        if replicas.len() == 2 {
            shard = Some((key, primary, replicas));
            break;
        }
    }
    let (key, primary, replicas) = shard.expect("no shard with two replicas");
    let key = key.as_str();
    client.set(key, "v").await.unwrap();
    // Both replicas have the write before any read counts.
    let deadline = Instant::now() + Duration::from_secs(10);
    for &replica in &replicas {
        let conn = local.connect_node(replica).await.unwrap();
        conn.send(cmd("READONLY")).await.unwrap();
        while conn.send(cmd("GET").arg(key)).await.unwrap() != Value::Bulk("v".into()) {
            assert!(
                Instant::now() < deadline,
                "replica {replica} never got the write"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    // Replica reads take turns over both replicas (each gets its connection), though
    // neither is connected before the first read. Once, a replica the first pick found
    // unconnected lost its turn to the next pick, and was never connected or read from.
    let before = [
        calls(&local, replicas[0], "get").await,
        calls(&local, replicas[1], "get").await,
    ];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut served = [0; 2];
        for (i, replica) in replicas.iter().enumerate() {
            served[i] = calls(&local, *replica, "get").await - before[i];
        }
        if served.iter().all(|&n| n >= 2) {
            break;
        }
        assert!(Instant::now() < deadline, "replica reads served {served:?}");
        for _ in 0..10 {
            client.get::<_, Option<String>>(key).await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    local.pause(replicas[0]).unwrap();
    // Reads that pick the frozen replica time out; two in a row open its breaker.
    let mut timeouts = 0;
    for _ in 0..50 {
        match client.get::<_, Option<String>>(key).await {
            Ok(v) => assert_eq!(v.as_deref(), Some("v")),
            Err(Error::Timeout { .. }) => timeouts += 1,
            Err(e) => panic!("{e:?}"),
        }
        if timeouts == 2 {
            break;
        }
    }
    assert_eq!(timeouts, 2, "the frozen replica was never picked twice");
    let primary_gets = calls(&local, primary, "get").await;
    let reads: Vec<Option<String>> =
        futures_util::future::join_all((0..20).map(|_| client.get::<_, Option<String>>(key)))
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
    local.resume(replicas[0]).unwrap();
    assert!(reads.iter().all(|v| v.as_deref() == Some("v")));
    assert_eq!(
        calls(&local, primary, "get").await,
        primary_gets,
        "every read was served by the other replica"
    );
}

/// A replica read whose replica does not answer its connect (a host gone silent; here,
/// a frozen replica the client has no connection to yet) waits half its deadline for
/// it at most, then reads from the primary; the next reads pass the replica over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_read_to_a_silent_replica_falls_back_to_the_primary_in_time() {
    let local = never_failing_over_with(1).await;
    let timeout = Duration::from_secs(2);
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::Replica)
        .response_timeout(timeout)
        .connect_timeout(Duration::from_secs(10))
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let key = "silent:{k}";
    client.set(key, "v").await.unwrap();
    let primary = local
        .master_of_slot(key_slot(key.as_bytes()))
        .await
        .unwrap();
    let replica = local.replicas_of(primary).await.unwrap()[0];
    local.pause(replica).unwrap();
    let started = Instant::now();
    let read = client.get::<_, Option<String>>(key).await;
    let waited = started.elapsed();
    // Passed over now: the next read goes to the primary without waiting.
    let again_started = Instant::now();
    let again = client.get::<_, Option<String>>(key).await;
    let again_waited = again_started.elapsed();
    local.resume(replica).unwrap();
    assert_eq!(read.unwrap().as_deref(), Some("v"));
    // Half the deadline, then a read from the primary: a few milliseconds more.
    assert!(waited >= timeout / 2, "{waited:?}");
    assert!(
        waited < timeout / 2 + Duration::from_millis(400),
        "{waited:?}"
    );
    assert_eq!(again.unwrap().as_deref(), Some("v"));
    assert!(again_waited < timeout / 4, "{again_waited:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reads_reach_replicas_and_fall_back_to_the_primary() {
    let local = LocalCluster::builder().start().await.unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::Replica)
        .build()
        .await
        .unwrap();
    let keys: Vec<String> = (0..200).map(|i| format!("rr:{i}")).collect();
    for k in &keys {
        client.set(k.as_str(), k.as_str()).await.unwrap();
    }
    // Replication is asynchronous: wait for the replicas to have the writes.
    for k in &keys {
        let deadline = Instant::now() + Duration::from_secs(5);
        while client
            .get::<_, Option<String>>(k.as_str())
            .await
            .unwrap()
            .is_none()
        {
            assert!(Instant::now() < deadline, "{k} never replicated");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let replicas = local.replicas().await.unwrap();
    let masters = local.masters().await.unwrap();
    let replica_gets: u64 =
        futures_util::future::join_all(replicas.iter().map(|&r| calls(&local, r, "get")))
            .await
            .iter()
            .sum();
    let master_gets: u64 =
        futures_util::future::join_all(masters.iter().map(|&m| calls(&local, m, "get")))
            .await
            .iter()
            .sum();
    let master_sets: u64 =
        futures_util::future::join_all(masters.iter().map(|&m| calls(&local, m, "set")))
            .await
            .iter()
            .sum();
    println!("replica GETs {replica_gets}, primary GETs {master_gets}, primary SETs {master_sets}");
    assert!(replica_gets >= 200, "reads went to replicas");
    assert_eq!(master_gets, 0, "no read went to a primary");
    assert_eq!(master_sets, 200, "writes went to primaries");

    // A replica dies: its shard's reads fall back to the primary, without errors.
    let dead = replicas[0];
    local.kill(dead).unwrap();
    for k in &keys {
        let v: String = client.get(k.as_str()).await.unwrap();
        assert_eq!(&v, k);
    }
    let master_gets: u64 =
        futures_util::future::join_all(masters.iter().map(|&m| calls(&local, m, "get")))
            .await
            .iter()
            .sum();
    assert!(
        master_gets > 0,
        "the orphaned shard's reads went to its primary"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_reads_where_it_says_and_the_client_as_before() {
    let local = LocalCluster::builder().start().await.unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .build()
        .await
        .unwrap();
    assert_eq!(client.read_from(), ReadFrom::Primary);
    let keys: Vec<String> = (0..60).map(|i| format!("handle:{i}")).collect();
    for k in &keys {
        // Acknowledged by the replica, so a replica read finds it.
        support::set_on_a_replica(&client, k, k).await;
    }
    let replicas = local.replicas().await.unwrap();
    let masters = local.masters().await.unwrap();
    let sum = |nodes: Vec<usize>, name: &'static str| {
        let local = &local;
        async move {
            futures_util::future::join_all(nodes.iter().map(|&n| calls(local, n, name)))
                .await
                .iter()
                .sum::<u64>()
        }
    };

    let lagging_ok = client.with_read_from(ReadFrom::Replica);
    for k in &keys {
        let v: String = lagging_ok.get(k.as_str()).await.unwrap();
        assert_eq!(&v, k);
    }
    let mut p = lagging_ok.pipeline();
    for k in &keys {
        p.get(k.as_str());
    }
    assert_eq!(p.execute().await.unwrap().len(), keys.len());
    let all: Vec<Option<String>> = lagging_ok
        .query(cmd("MGET").args(keys.iter().map(String::as_str)))
        .await
        .unwrap();
    assert!(all.iter().zip(&keys).all(|(v, k)| v.as_deref() == Some(k)));
    assert_eq!(
        sum(replicas.clone(), "get").await,
        120,
        "GETs and the pipeline's"
    );
    assert!(
        sum(replicas.clone(), "mget").await >= 3,
        "the split MGET's parts"
    );
    assert_eq!(sum(masters.clone(), "get").await, 0);
    assert_eq!(sum(masters.clone(), "mget").await, 0);

    // A blocking read in a pipeline waits on the primary, as a single one does.
    let stream = "handle:{s}";
    client
        .query::<Value>(cmd("XADD").arg(stream).arg("*").arg("f").arg("v"))
        .await
        .unwrap();
    let owner = support::owner_index(&local, &client, stream);
    let mut p = lagging_ok.pipeline();
    p.add(
        cmd("XREAD")
            .arg("BLOCK")
            .arg(10)
            .arg("STREAMS")
            .arg(stream)
            .arg("0"),
    );
    assert!(matches!(
        &p.execute().await.unwrap()[0],
        Value::Array(_) | Value::Map(_)
    ));
    assert_eq!(calls(&local, owner, "xread").await, 1);
    assert_eq!(sum(replicas.clone(), "xread").await, 0);

    // The client itself still reads from primaries.
    for k in &keys {
        let v: String = client.get(k.as_str()).await.unwrap();
        assert_eq!(&v, k);
    }
    assert_eq!(sum(masters.clone(), "get").await, 60);
    assert_eq!(sum(replicas.clone(), "get").await, 120);

    // PreferReplica reads from replicas while they serve; RoundRobin from all in turn.
    for k in &keys {
        let v: String = client
            .with_read_from(ReadFrom::PreferReplica)
            .get(k.as_str())
            .await
            .unwrap();
        assert_eq!(&v, k);
    }
    assert_eq!(sum(replicas.clone(), "get").await, 180);
    assert_eq!(sum(masters.clone(), "get").await, 60);
    let round_robin = client.with_read_from(ReadFrom::RoundRobin);
    for k in &keys {
        let v: String = round_robin.get(k.as_str()).await.unwrap();
        assert_eq!(&v, k);
    }
    let (to_replicas, to_masters) = (
        sum(replicas, "get").await - 180,
        sum(masters, "get").await - 60,
    );
    assert_eq!(to_replicas + to_masters, 60);
    assert!(
        to_replicas >= 10 && to_masters >= 10,
        "in turn: {to_replicas} to replicas, {to_masters} to primaries"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_report_how_many_replicas_acknowledged() {
    use redcluster::Durability;
    let local = LocalCluster::builder()
        .node_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let wait = Durability::new(1, Duration::from_millis(500));
    let ((), acked) = client
        .query_durable(cmd("SET").arg("durable").arg(1), wait)
        .await
        .unwrap();
    assert_eq!(acked, 1, "the healthy replica acknowledged");
    // Freeze the replica: the write runs, but nobody acknowledges it in time.
    let master = local.master_of_slot(key_slot(b"durable")).await.unwrap();
    let replica = local.replicas_of(master).await.unwrap()[0];
    local.pause(replica).unwrap();
    let started = Instant::now();
    let err = client
        .query_durable::<()>(cmd("SET").arg("durable").arg(2), wait)
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            Error::NotReplicated {
                acknowledged: 0,
                requested: 1
            }
        ),
        "{err:?}"
    );
    assert!(err.may_have_executed());
    assert!(
        took >= Duration::from_millis(500) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(
        client.get::<_, i64>("durable").await.unwrap(),
        2,
        "the write itself ran"
    );
    local.resume(replica).unwrap();

    // Client-wide: every write waits.
    let durable = ClusterClient::builder()
        .nodes(local.seeds())
        .durable_writes(wait)
        .build()
        .await
        .unwrap();
    durable.set("durable", 3).await.unwrap();
    local.pause(replica).unwrap();
    let err = durable.set("durable", 4).await.unwrap_err();
    assert!(matches!(err, Error::NotReplicated { .. }), "{err:?}");
    local.resume(replica).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_primary_that_returns_as_a_replica_is_noticed() {
    use redcluster::NodeRole;
    let local = LocalCluster::builder()
        .node_timeout(Duration::from_millis(2000))
        .start()
        .await
        .unwrap();
    // The default 30 s periodic refresh would be too slow to notice on its own.
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let victim = local.master_of_slot(key_slot(b"back")).await.unwrap();
    let victim_addr = local.node_addr(victim);
    local.kill(victim).unwrap();
    local
        .wait_until_stable(Duration::from_secs(30))
        .await
        .unwrap();
    // Traffic makes the client learn the promotion.
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.set("back", 1).await.is_err() {
        assert!(Instant::now() < deadline, "the shard never served again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        client.health().node(&victim_addr).is_none(),
        "the dead node is out of the topology"
    );
    local.restart(victim).await.unwrap();
    local
        .wait_until_stable(Duration::from_secs(30))
        .await
        .unwrap();
    // A refresh may catch the node in the moment it is back but not yet told of its
    // demotion (a master without slots): the client keeps refreshing every second while
    // the cluster settles, so it sees the settled role well before the 30 s periodic
    // refresh would show it.
    let started = Instant::now();
    loop {
        let role = client.health().node(&victim_addr).map(|n| n.role);
        if role == Some(NodeRole::Replica) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the returned node was never seen as a replica (last seen: {role:?})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!(
        "the old primary was seen back as a replica {:?} after it rejoined",
        started.elapsed()
    );
}

/// A command for every node never answers for part of the cluster: with a shard's
/// primary failed and no replica to promote (`cluster-require-full-coverage no`, so the
/// other shards serve on), `DBSIZE` and `FLUSHALL` fail with `ClusterDown`, unsent,
/// instead of counting or flushing what the other shards hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_with_a_shard_lost_fails_instead_of_answering_for_the_rest() {
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .node_timeout(Duration::from_millis(1000))
        .config("cluster-require-full-coverage", "no")
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let lost_key = "lost:{a}";
    let kept_key = support::key_elsewhere(&client, lost_key, "kept:");
    client.set(lost_key, "v").await.unwrap();
    client.set(kept_key.as_str(), "v").await.unwrap();
    assert_eq!(client.query::<i64>(cmd("DBSIZE")).await.unwrap(), 2);
    let victim = support::owner_index(&local, &client, lost_key);
    let victim_addr = local.node_addr(victim);
    local.kill(victim).unwrap();
    // The cluster flags it failed; a refresh leaves its shard out.
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.known_nodes().contains(&victim_addr) {
        assert!(
            Instant::now() < deadline,
            "the client never saw the failure"
        );
        let _ = client.refresh_topology().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let dbsize = client.query::<i64>(cmd("DBSIZE")).await;
    assert!(matches!(dbsize, Err(Error::ClusterDown(_))), "{dbsize:?}");
    let flushed = client.query::<Value>(cmd("FLUSHALL")).await;
    assert!(matches!(flushed, Err(Error::ClusterDown(_))), "{flushed:?}");
    // A per-node report, keyed by node, comes from the nodes there are.
    match client
        .query::<Value>(cmd("INFO").arg("server"))
        .await
        .unwrap()
    {
        Value::Map(per_node) => assert_eq!(per_node.len(), 2),
        other => panic!("{other:?}"),
    }
    // The other shards still serve, and nothing was flushed.
    let kept: Option<String> = client.get(kept_key.as_str()).await.unwrap();
    assert_eq!(kept.as_deref(), Some("v"));
    // A write split over slots: the kept shard's part runs, the lost one's cannot. The
    // error says the write is partial, not "nothing ran, retry".
    let err = client.del([lost_key, kept_key.as_str()]).await.unwrap_err();
    match &err {
        Error::Partial { source } => {
            assert!(matches!(**source, Error::ClusterDown(_)), "{source:?}")
        }
        other => panic!("{other:?}"),
    }
    assert!(err.may_have_executed() && !err.is_retryable());
    let kept: Option<String> = client.get(kept_key.as_str()).await.unwrap();
    assert_eq!(kept, None, "the kept shard's part ran");
}

/// A client built on a runtime that has since shut down (a client in a `static` shared by
/// `#[tokio::test]`s, each with a runtime of its own): its connections' tasks went with
/// that runtime. Its next request, on another runtime, reconnects there, never waits
/// for ever on a connection nothing serves.
#[test]
fn a_client_outliving_its_runtime_reconnects_on_the_next_one() {
    let main = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let local = main.block_on(support::cluster(3, 0));
    let seeds = local.seeds();
    let client = std::thread::spawn(move || {
        let first = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = first.block_on(async {
            let client = ClusterClient::builder()
                .nodes(seeds)
                .response_timeout(Duration::from_secs(2))
                .build()
                .await
                .unwrap();
            client.set("runtime:k", "v").await.unwrap();
            client
        });
        // Its tasks go: the connections' loops, the refresh and health tasks.
        drop(first);
        client
    })
    .join()
    .unwrap();
    main.block_on(async {
        let read = tokio::time::timeout(
            Duration::from_secs(10),
            client.get::<_, Option<String>>("runtime:k"),
        )
        .await
        .expect("the request waited on a connection whose runtime is gone");
        assert_eq!(read.unwrap().as_deref(), Some("v"));
        client.set("runtime:k", "w").await.unwrap();
        assert_eq!(
            client
                .get::<_, Option<String>>("runtime:k")
                .await
                .unwrap()
                .as_deref(),
            Some("w")
        );
    });
    drop(client);
    drop(local);
}

/// After `open_for`, the breaker's probe is a connect attempt even while the node's
/// reconnect backoff runs, so a node that stays down keeps failing fast. (Answered from
/// the backoff with the last error, the probe said nothing of the node, and every
/// request after it went through as a new probe, failing slowly through its retries.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_stays_down_keeps_failing_fast_after_open_for() {
    let local = never_failing_over().await;
    let victim = local.master_of_slot(key_slot(b"down")).await.unwrap();
    let victim_addr = local.node_addr(victim);
    let seeds = seeds_without(&local, &victim_addr);
    let client = ClusterClient::builder()
        .nodes(seeds)
        .response_timeout(Duration::from_secs(2))
        .health_check_interval(None)
        .circuit_breaker(
            CircuitBreakerConfig::default()
                .consecutive_failures(3)
                .open_for(Duration::from_millis(300)),
        )
        .build()
        .await
        .unwrap();
    local.kill(victim).unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match client.get::<_, Option<String>>("down").await {
            Err(Error::CircuitOpen { .. }) => break,
            Err(_) => assert!(Instant::now() < deadline, "the breaker never opened"),
            Ok(v) => panic!("a killed node answered: {v:?}"),
        }
    }
    // Ten `open_for` periods, one request at a time: each fails well within its 2 s.
    let window = Instant::now();
    let (mut slowest, mut requests) = (Duration::ZERO, 0);
    while window.elapsed() < Duration::from_secs(3) {
        let started = Instant::now();
        let err = client.get::<_, Option<String>>("down").await.unwrap_err();
        assert!(
            matches!(err, Error::CircuitOpen { .. } | Error::Io { .. }),
            "{err:?}"
        );
        slowest = slowest.max(started.elapsed());
        requests += 1;
        // A caller's pace, not a busy loop of instant refusals.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    println!("{requests} requests to a node that stays down, the slowest {slowest:?}");
    assert!(slowest < Duration::from_secs(1), "{slowest:?}");
}

/// A connection whose flow died silently (a NAT or a firewall forgot it, a peer went
/// without a reset) is closed once the node has owed it a reply for
/// `unresponsive_timeout` with nothing heard, and the node is served again on a new
/// connection: not only once TCP's retransmissions give up (about 15 minutes on Linux),
/// nor never, while keepalive waits for an idle connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_gone_silent_is_replaced_and_its_node_served_again() {
    let local = never_failing_over().await;
    let owner = local.master_of_slot(key_slot(b"hole")).await.unwrap();
    let (relay, remap) = support::relay::Relay::in_front_of(local.node_addr(owner)).await;
    let client = ClusterClient::builder()
        .nodes(seeds_without(&local, &local.node_addr(owner)))
        .address_remap(remap)
        .response_timeout(Duration::from_millis(300))
        .unresponsive_timeout(Some(Duration::from_secs(1)))
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    client.set("hole", 1).await.unwrap();
    assert_eq!(relay.accepted(), 1, "the node is reached through the relay");
    relay.black_hole();
    let started = Instant::now();
    let mut errors = Vec::new();
    loop {
        match client.get::<_, Option<i64>>("hole").await {
            Ok(v) => {
                assert_eq!(v, Some(1));
                break;
            }
            Err(e) => errors.push(e),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the node was not served again in 20 s: {} errors, the last {:?}",
            errors.len(),
            errors.last()
        );
        // A caller's pace, not a busy loop of instant refusals.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let took = started.elapsed();
    println!("served again after {took:?}; errors meanwhile: {errors:?}");
    assert!(
        matches!(errors.first(), Some(Error::Timeout { .. })),
        "the first request into the black hole timed out: {errors:?}"
    );
    assert_eq!(relay.accepted(), 2, "on one new connection");
    // Closed after the silence it allows, and reopened after the breaker's `open_for`
    // (1 s) at most.
    assert!(took >= Duration::from_secs(1), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

/// An address the client learned that now reaches a node of another cluster (a
/// Kubernetes pod IP handed to a pod of another cluster) gets none of this cluster's
/// requests, and its topology is not taken: the node's id is not the one this
/// cluster's topology gives the address. A seed that is no learned address names the
/// cluster to follow: once every node the client knew is gone, another cluster behind it
/// (a cluster recreated behind the same name) is followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_now_reaches_another_clusters_node_gets_none_of_its_requests() {
    let (ours, theirs) = tokio::join!(never_failing_over(), never_failing_over());
    let key = "tenant";
    let slot = key_slot(key.as_bytes());
    let (x, y) = (
        ours.master_of_slot(slot).await.unwrap(),
        theirs.master_of_slot(slot).await.unwrap(),
    );
    let masters = ours.masters().await.unwrap();
    let other = *masters.iter().find(|&&m| m != x).unwrap();
    let mut elsewhere = Vec::new();
    for i in 0..20 {
        let k = format!("elsewhere-{i}");
        if ours.master_of_slot(key_slot(k.as_bytes())).await.unwrap() != x {
            elsewhere.push(k);
        }
    }
    // The client reaches `x` at an address of its own, which is then handed to `y`.
    let (reused, remap) = support::relay::Relay::in_front_of(ours.node_addr(x)).await;
    // The seed is a name for the cluster, not an address the client learns.
    let seed = support::relay::Relay::start(ours.node_addr(other)).await;
    let client = ClusterClient::builder()
        .nodes([seed.addr()])
        .address_remap(remap)
        .response_timeout(Duration::from_millis(300))
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    client.set(key, "ours").await.unwrap();
    assert_eq!(reused.accepted(), 1, "x is reached at the reused address");

    ours.kill(x).unwrap();
    reused.retarget(theirs.node_addr(y));
    let theirs_y = theirs.connect_node(y).await.unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    let mut refused = Vec::new();
    while Instant::now() < until {
        match client.set(key, "written into the other cluster").await {
            Ok(()) => panic!("a write went to the other cluster's node after {refused:?}"),
            Err(e) => refused.push(e),
        }
        // A caller's pace, not a busy loop of instant refusals.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("refused: {refused:?}");
    assert!(
        reused.accepted() >= 2,
        "the client reconnected to the reused address"
    );
    assert_eq!(
        theirs_y.send(cmd("GET").arg(key)).await.unwrap(),
        Value::Nil
    );

    // Every node of ours gone: the reused address is the only one that answers, and
    // its view is of another cluster. Not taken, even where the node's identity cannot
    // be checked (its ACL refuses `CLUSTER MYID`).
    let acl = cmd("ACL")
        .arg("SETUSER")
        .arg("default")
        .arg("-cluster|myid");
    assert_eq!(
        theirs_y.send(acl).await.unwrap(),
        Value::Simple("OK".into())
    );
    for node in masters.iter().filter(|&&m| m != x) {
        ours.kill(*node).unwrap();
    }
    // Refreshed until one reached the reused address (its reconnect backoff after the
    // refusals above may hold the first ones back): each fails.
    let before = reused.accepted();
    let until = Instant::now() + Duration::from_secs(10);
    while reused.accepted() == before {
        assert!(
            Instant::now() < until,
            "no refresh reached the reused address"
        );
        let refresh = client.refresh_topology().await;
        assert!(refresh.is_err(), "{refresh:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refresh = client.refresh_topology().await;
    assert!(refresh.is_err(), "{refresh:?}");
    for key in &elsewhere {
        assert!(client.set(key, "lost").await.is_err());
    }
    for node in theirs.masters().await.unwrap() {
        let conn = theirs.connect_node(node).await.unwrap();
        let got = conn.send(cmd("DBSIZE")).await.unwrap();
        assert_eq!(got, Value::Int(0), "written into the other cluster");
    }

    // The seed now reaches the other cluster: followed.
    seed.retarget(theirs.node_addr(y));
    // Within the seed's reconnect backoff (its last connect failed), a refresh does
    // not try it yet.
    let until = Instant::now() + Duration::from_secs(10);
    while let Err(e) = client.refresh_topology().await {
        assert!(
            Instant::now() < until,
            "the seed's cluster not followed: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.set(key, "theirs").await.unwrap();
    let got = theirs_y.send(cmd("GET").arg(key)).await.unwrap();
    assert_eq!(got, Value::Bulk("theirs".into()));
}

/// A learned address that now reaches a plain Redis (cluster mode off, which answers
/// every command of every slot) gets none of the cluster's requests either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_that_now_reaches_a_server_outside_cluster_mode_gets_no_requests() {
    let ours = never_failing_over().await;
    let plain = support::standalone::Standalone::start();
    let key = "tenant";
    let x = ours.master_of_slot(key_slot(key.as_bytes())).await.unwrap();
    let (reused, remap) = support::relay::Relay::in_front_of(ours.node_addr(x)).await;
    let client = ClusterClient::builder()
        .nodes(seeds_without(&ours, &ours.node_addr(x)))
        .address_remap(remap)
        .response_timeout(Duration::from_millis(300))
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    client.set(key, "ours").await.unwrap();
    ours.kill(x).unwrap();
    reused.retarget(plain.addr.clone());
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        let written = client.set(key, "written into a plain Redis").await;
        assert!(written.is_err(), "a write went to the plain Redis");
        // A caller's pace, not a busy loop of instant refusals.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reused.accepted() >= 2,
        "the client reconnected to the reused address"
    );
    let conn = redcluster::NodeConnection::connect(&plain.addr, &Default::default())
        .await
        .unwrap();
    assert_eq!(conn.send(cmd("DBSIZE")).await.unwrap(), Value::Int(0));
}

/// A node replaced at its address by another node of the same cluster (a new node id:
/// its data directory lost, re-added) is refused until a refresh names it there, and
/// served at once after: the failures of the refused connections (reconnect backoff,
/// an open breaker) are not held against it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_the_topology_names_at_an_address_after_a_refusal_is_served_at_once() {
    let ours = never_failing_over().await;
    let masters = ours.masters().await.unwrap();
    let (x, w) = (masters[0], masters[1]);
    let (x_addr, w_addr) = (ours.node_addr(x), ours.node_addr(w));
    let shared = support::relay::Relay::start(x_addr.clone()).await;
    // Which node the topology names at the relay's address: `x`, then `w`.
    let named = Arc::new(Mutex::new(x_addr.clone()));
    let remap = {
        let (named, relay_addr) = (Arc::clone(&named), shared.addr());
        redcluster::AddressRemap::from_fn(move |a| {
            (*named.lock().unwrap() == a).then(|| relay_addr.clone())
        })
    };
    let key_of = |node: usize| {
        let ours = &ours;
        async move {
            for i in 0..1000 {
                let k = format!("replaced-{i}");
                if ours.master_of_slot(key_slot(k.as_bytes())).await.unwrap() == node {
                    return k;
                }
            }
            unreachable!("no key of node {node} in 1000");
        }
    };
    let (key_x, key_w) = (key_of(x).await, key_of(w).await);
    let client = ClusterClient::builder()
        .nodes(seeds_without(&ours, &x_addr))
        .address_remap(remap)
        .response_timeout(Duration::from_millis(300))
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    client.set(&key_x, 1).await.unwrap();
    // `w` takes over the address: refused while the topology names `x` there.
    shared.retarget(w_addr.clone());
    ours.kill(x).unwrap();
    let until = Instant::now() + Duration::from_secs(2);
    let mut refused = 0;
    while Instant::now() < until {
        assert!(client.set(&key_x, 2).await.is_err());
        refused += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let accepted = shared.accepted();
    assert!(
        accepted >= 3,
        "{accepted} connections, {refused} requests refused"
    );
    // The topology names `w` there now.
    *named.lock().unwrap() = w_addr.clone();
    client.refresh_topology().await.unwrap();
    client.set(&key_w, 3).await.unwrap();
    assert!(shared.accepted() > accepted, "served through the relay");
}

/// Requests to a dead primary's slots ask for a refresh each, and until its replica is
/// promoted every refresh finds the same map: the client stretches the interval between
/// refreshes (to a second), instead of asking three nodes for the topology ten times a
/// second for as long as the failover takes, with every client doing the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refreshes_that_learn_nothing_while_a_primary_is_down_slow_down() {
    let local = never_failing_over().await;
    let victim = local.master_of_slot(key_slot(b"down")).await.unwrap();
    let victim_addr = local.node_addr(victim);
    let client = ClusterClient::builder()
        .nodes(seeds_without(&local, &victim_addr))
        .response_timeout(Duration::from_millis(300))
        .health_check_interval(None)
        .circuit_breaker(CircuitBreakerConfig::default().disabled())
        .build()
        .await
        .unwrap();
    local.kill(victim).unwrap();
    let before = client.stats();
    let window = Instant::now();
    let mut failed = 0;
    while window.elapsed() < Duration::from_secs(4) {
        if client.get::<_, Option<String>>("down").await.is_err() {
            failed += 1;
        }
        // A caller's pace, not a busy loop of instant refusals.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let refreshes = client.stats().refreshes - before.refreshes;
    println!("{failed} failed requests, {refreshes} refreshes in 4 s");
    // Each fails within its 300 ms, retries included.
    assert!(
        failed >= 8,
        "the dead node's requests failed all along: {failed}"
    );
    // 100, 200, 400, 800 ms, then one a second: about seven; at the minimum interval it
    // would have been about forty.
    assert!((3..=12).contains(&refreshes), "{refreshes} refreshes");
}

/// Callers asking for a refresh at once (scans a failover interrupted, a loop of
/// `refresh_topology`) share refreshes: each waits for the one under way, and takes the
/// outcome of one that began after it asked rather than run another. Sixteen callers
/// cost one or two refreshes, not sixteen in a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_refreshing_at_once_share_the_refreshes() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let before = client.stats().refreshes;
    let callers = (0..16).map(|_| {
        let client = client.clone();
        async move { client.refresh_topology().await }
    });
    for outcome in futures_util::future::join_all(callers).await {
        outcome.unwrap();
    }
    let refreshes = client.stats().refreshes - before;
    assert!((1..=2).contains(&refreshes), "{refreshes} refreshes");
    // One asked after they all ended runs its own.
    client.refresh_topology().await.unwrap();
    assert_eq!(client.stats().refreshes - before, refreshes + 1);
}

/// A keyless write sent to a primary that a failover has since made a replica is
/// answered `READONLY` and did not run: the client learns the new topology and sends it
/// to a primary again, rather than hand the refusal to the caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keyless_write_refused_by_a_demoted_primary_goes_to_a_primary() {
    use redcluster::testkit::FailoverMode;
    let local = support::cluster(3, 1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let old = local.masters().await.unwrap()[0];
    let promoted = local.replicas_of(old).await.unwrap()[0];
    local
        .failover(promoted, FailoverMode::Graceful)
        .await
        .unwrap();
    // The client's map still names the old primary; keyless commands take the
    // primaries in turn, so six of them reach it at least once.
    // A script with flags and without `no-writes` may write: a replica refuses it.
    let write = || cmd("EVAL").arg("#!lua\nreturn 1").arg(0);
    let retries = client.stats().retries;
    for _ in 0..6 {
        let ran: Value = client.query(write()).await.unwrap();
        assert_eq!(ran, Value::Int(1));
    }
    assert!(
        client.stats().retries > retries,
        "no write met the demoted primary"
    );
}

/// The cluster's seeds but `addr`: a client seeded with them holds no connection to that
/// node until a request needs one.
fn seeds_without(local: &LocalCluster, addr: &str) -> Vec<String> {
    local.seeds().into_iter().filter(|s| s != addr).collect()
}
