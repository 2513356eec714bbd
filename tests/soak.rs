//! A soak under chaos, run by hand: workers send every kind of request (single commands,
//! cross-slot `MGET`, pipelines, transactions, blocking pops) and a subscriber listens
//! to a classic and a sharded channel that a publisher keeps publishing to, while the
//! cluster fails over gracefully, moves slots and has its clients' connections killed;
//! then the data is checked against what the client answered: no acknowledged write
//! lost or run twice, no read older than a write acknowledged before it was sent, no
//! request answered past its deadline, no message published lost without a `Gap` event
//! for its channel, none received twice, sharded ones in order but around a `Gap`.
//!
//! Ignored in the test suite (it runs for `SOAK_SECS` seconds, default 60):
//!
//! ```sh
//! cargo test --test soak -- --ignored --nocapture
//! SOAK_SECS=300 cargo test --test soak -- --ignored --nocapture
//! ```
//!
//! Only lossless faults: a graceful failover waits for the replica to catch up, a slot
//! migration moves keys atomically, a killed connection loses nothing on the server, a
//! primary frozen for less than half the node timeout is not failed over and keeps its
//! cluster-bus links (a node drops a bus link whose PONG is half a node timeout late,
//! and with it the classic messages queued on it for the frozen node's subscribers,
//! which no client can see), a killed replica's primary holds every write. (A killed
//! primary may lose writes it acknowledged, as Redis replication allows.)

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redcluster::testkit::{FailoverMode, LocalCluster};
use redcluster::{cmd, key_slot, ClusterClient, Error, PubSubEvent, Value};
use tokio::time::Instant;

const WORKERS: usize = 8;
const KEYS: usize = 6;
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);
/// What a request may take past its deadline before it counts as unanswered in time:
/// the runtime's scheduling on a loaded 2-core machine.
const SLACK: Duration = Duration::from_millis(500);
const BLOCK: Duration = Duration::from_secs(1);

/// What one worker saw.
#[derive(Default)]
struct Record {
    /// Per key: the last acknowledged sequence number, and the numbers of writes with an
    /// unknown outcome sent after it.
    keys: HashMap<String, (u64, Vec<u64>)>,
    /// `INCR`s acknowledged, and those with an unknown outcome.
    counter: (i64, i64),
    /// Transactions acknowledged (both `INCR`s ran), and those with an unknown outcome.
    transactions: (i64, i64),
    /// Items pushed (acknowledged), pushed maybe, popped, and pops with an unknown outcome.
    pushed: Vec<u64>,
    pushed_maybe: Vec<u64>,
    popped: Vec<u64>,
    pops_maybe: usize,
    /// Violations seen while running.
    violations: Vec<String>,
    requests: u64,
    errors: HashMap<String, u64>,
    /// Errors by the second of the run they came in, and the first one of each kind
    /// there (for the timeline printed at the end).
    timeline: std::collections::BTreeMap<u64, (u64, String)>,
    started: Option<Instant>,
    slowest: Duration,
}

impl Record {
    fn timed(&mut self, started: Instant, allowed: Duration, what: &str) {
        let took = started.elapsed();
        self.requests += 1;
        self.slowest = self.slowest.max(took);
        if took > allowed + SLACK {
            self.violations.push(format!(
                "{what} answered after {took:?} (allowed {allowed:?})"
            ));
        }
    }

    fn error(&mut self, e: &Error) {
        let kind = format!("{e:?}");
        let kind = kind.split([' ', '(', '{']).next().unwrap_or("").to_string();
        *self.errors.entry(kind).or_default() += 1;
        let second = self.started.map_or(0, |s| s.elapsed().as_secs());
        let entry = self.timeline.entry(second).or_insert((0, e.to_string()));
        entry.0 += 1;
    }

    /// Notes a write of `seq` to `key` with its outcome.
    fn wrote(&mut self, key: &str, seq: u64, outcome: Result<(), &Error>) {
        let entry = self.keys.entry(key.to_string()).or_default();
        match outcome {
            Ok(()) => *entry = (seq, Vec::new()),
            Err(e) if e.may_have_executed() => entry.1.push(seq),
            Err(_) => {}
        }
    }
}

fn key(worker: usize, i: usize) -> String {
    format!("soak:w{worker}:k{i}")
}

/// A worker's other keys: its counter, its transaction's two (one slot), its queue.
fn counter_key(worker: usize) -> String {
    format!("soak:w{worker}:counter")
}

fn transaction_keys(worker: usize) -> (String, String) {
    (
        format!("{{soak:w{worker}:tx}}:a"),
        format!("{{soak:w{worker}:tx}}:b"),
    )
}

fn queue_key(worker: usize) -> String {
    format!("soak:w{worker}:queue")
}

/// The number stored at `key`, 0 when there is none.
async fn stored(client: &ClusterClient, key: &str) -> i64 {
    client
        .get::<_, Option<i64>>(key)
        .await
        .unwrap()
        .unwrap_or(0)
}

async fn work(client: ClusterClient, worker: usize, stop: Arc<AtomicBool>) -> Record {
    let mut r = Record {
        started: Some(Instant::now()),
        ..Record::default()
    };
    let counter = counter_key(worker);
    let (tx_a, tx_b) = transaction_keys(worker);
    let queue = queue_key(worker);
    let mut seq = 0u64;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        // One key written alone.
        seq += 1;
        let k = key(worker, (round as usize) % KEYS);
        let started = Instant::now();
        let outcome = client.set(&k, seq).await;
        r.timed(started, RESPONSE_TIMEOUT, "SET");
        if let Err(e) = &outcome {
            r.error(e);
        }
        r.wrote(&k, seq, outcome.as_ref().map(|_| ()));

        let started = Instant::now();
        let incr = client.incr(&counter, 1).await;
        r.timed(started, RESPONSE_TIMEOUT, "INCR");
        match incr {
            Ok(_) => r.counter.0 += 1,
            Err(e) => {
                r.error(&e);
                if e.may_have_executed() {
                    r.counter.1 += 1;
                }
            }
        }

        if round % 3 == 0 {
            // Every key at once, across slots: none older than its last acknowledged
            // write, none newer than the last sent.
            let keys: Vec<String> = (0..KEYS).map(|i| key(worker, i)).collect();
            let before: Vec<(u64, u64)> = keys
                .iter()
                .map(|k| {
                    let (acked, maybe) = r.keys.get(k).cloned().unwrap_or_default();
                    (acked, maybe.into_iter().max().unwrap_or(0).max(acked))
                })
                .collect();
            let started = Instant::now();
            let read = client.mget::<_, Option<u64>>(&keys).await;
            r.timed(started, RESPONSE_TIMEOUT, "MGET");
            match read {
                Ok(values) => {
                    for ((k, v), (acked, newest)) in keys.iter().zip(values).zip(before) {
                        let v = v.unwrap_or(0);
                        if v < acked || v > newest {
                            r.violations.push(format!(
                                "MGET read {k} = {v}, acknowledged {acked}, newest sent {newest}"
                            ));
                        }
                    }
                }
                Err(e) => r.error(&e),
            }
        }

        if round % 4 == 0 {
            // A pipeline writing every key.
            let mut p = client.pipeline();
            let mut sent = Vec::new();
            for i in 0..KEYS {
                seq += 1;
                p.add(cmd("SET").arg(key(worker, i)).arg(seq));
                sent.push((key(worker, i), seq));
            }
            let started = Instant::now();
            let results = p.execute_each().await;
            r.timed(started, RESPONSE_TIMEOUT, "pipeline");
            for ((k, s), result) in sent.into_iter().zip(results) {
                match result {
                    Ok(Value::Simple(_)) => r.wrote(&k, s, Ok(())),
                    // Refused, not run (a `CLUSTERDOWN` past its retries).
                    Ok(Value::ServerError(e)) => r.error(&Error::Server(e)),
                    Ok(other) => r
                        .violations
                        .push(format!("pipeline SET {k} answered {other:?}")),
                    Err(e) => {
                        r.error(&e);
                        r.wrote(&k, s, Err(&e));
                    }
                }
            }
        }

        if round % 5 == 0 {
            let mut tx = client.transaction();
            tx.add(cmd("INCR").arg(&tx_a));
            tx.add(cmd("INCR").arg(&tx_b));
            let started = Instant::now();
            let done = tx.execute().await;
            r.timed(started, RESPONSE_TIMEOUT, "transaction");
            match done {
                Ok(replies) if replies.len() == 2 => r.transactions.0 += 1,
                Ok(replies) => r
                    .violations
                    .push(format!("transaction answered {replies:?}")),
                Err(e) => {
                    r.error(&e);
                    if e.may_have_executed() {
                        r.transactions.1 += 1;
                    }
                }
            }
        }

        if round % 7 == 0 {
            seq += 1;
            let started = Instant::now();
            let pushed = client.lpush(&queue, [seq]).await;
            r.timed(started, RESPONSE_TIMEOUT, "LPUSH");
            match pushed {
                Ok(_) => r.pushed.push(seq),
                Err(e) => {
                    r.error(&e);
                    if e.may_have_executed() {
                        r.pushed_maybe.push(seq);
                    }
                }
            }
            let started = Instant::now();
            let popped = client
                .query::<Option<(String, u64)>>(cmd("BLPOP").arg(&queue).arg(BLOCK.as_secs()))
                .await;
            r.timed(started, RESPONSE_TIMEOUT + BLOCK, "BLPOP");
            match popped {
                Ok(Some((_, item))) => r.popped.push(item),
                Ok(None) => {}
                Err(e) => {
                    r.error(&e);
                    if e.may_have_executed() {
                        r.pops_maybe += 1;
                    }
                }
            }
        }
    }
    r
}

/// Milliseconds since the soak began, the one clock of its timeline.
fn ms() -> u64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as u64
}

const CLASSIC: &str = "soak:news";
const SHARDED: &str = "soak:{orders}";
/// How long after a message was published the `Gap` that covers its loss may come:
/// the client learns of a failover, and moves the subscription, within about a second.
const GAP_WITHIN_MS: u64 = 2000;

/// Numbers published without an error, with when (ms on the soak's clock).
type Published = Vec<(u64, u64)>;

/// Publishes increasing numbers to both channels until `stop`; returns those published
/// without an error (classic, sharded).
async fn publish(client: ClusterClient, stop: Arc<AtomicBool>) -> (Published, Published) {
    let (mut classic, mut sharded) = (Vec::new(), Vec::new());
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        seq += 1;
        if client.publish(CLASSIC, seq).await.is_ok() {
            classic.push((seq, ms()));
        }
        if client.spublish(SHARDED, seq).await.is_ok() {
            sharded.push((seq, ms()));
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    (classic, sharded)
}

/// What the subscriber saw of one channel, in order, with when (ms): a message's
/// number, or `None` for a `Gap` (or `Lost`) event naming the channel.
type Heard = Vec<(Option<u64>, u64)>;

/// Listens until `stop` and 2 s more, for the messages still on their way.
async fn listen(mut sub: redcluster::Subscriber, stop: Arc<AtomicBool>) -> (Heard, Heard) {
    let (mut classic, mut sharded) = (Heard::new(), Heard::new());
    let mut quiet_since: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let since = *quiet_since.get_or_insert_with(Instant::now);
            if since.elapsed() > Duration::from_secs(2) {
                break;
            }
        }
        let event = match tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(_) => continue,
        };
        let heard = |channel: &[u8]| channel == CLASSIC.as_bytes() || channel == SHARDED.as_bytes();
        match event {
            PubSubEvent::Message(m) if heard(&m.channel) => {
                let seq = std::str::from_utf8(&m.payload).unwrap().parse().unwrap();
                let to = if m.sharded {
                    &mut sharded
                } else {
                    &mut classic
                };
                to.push((Some(seq), ms()));
            }
            PubSubEvent::Gap {
                channels,
                sharded: s,
                ..
            }
            | PubSubEvent::Lost {
                channels,
                sharded: s,
                ..
            } => {
                let to = if s { &mut sharded } else { &mut classic };
                if channels.iter().any(|c| heard(c)) {
                    to.push((None, ms()));
                }
            }
            other => println!("subscriber event: {other:?}"),
        }
    }
    (classic, sharded)
}

/// What `heard` breaks of the promises for a channel whose messages `published` (those
/// whose publish was answered): a number heard twice, except one published within
/// [`GAP_WITHIN_MS`] before a `Gap` (or just after), which may reach the subscription's
/// new node late, after it was heard on the old one; `ordered` (a sharded channel's
/// messages come in publishing order between gaps), published numbers heard out of
/// order with no `Gap` between, except one published within [`GAP_WITHIN_MS`] before a
/// `Gap` (or just after), which may come late, after newer ones (see below); a
/// published number never heard with no `Gap` heard within
/// [`GAP_WITHIN_MS`] after it was published. (The `Gap` of a failover may come after
/// messages that followed the loss: a failover can lose messages on the old primary
/// before the client learns of it, and a message can come late, through the cluster
/// bus, after the `Gap` of the subscription it missed, and after messages published on
/// the new owner directly. A publish that failed may still
/// have run, late: its number is held to nothing.) A classic channel's messages go out
/// through any primary and may arrive out of order.
fn check_channel(name: &str, published: &Published, heard: &Heard, ordered: bool) -> Vec<String> {
    let mut violations = Vec::new();
    let answered: HashSet<u64> = published.iter().map(|(seq, _)| *seq).collect();
    let published_at: HashMap<u64, u64> = published.iter().copied().collect();
    let gaps: Vec<u64> = heard
        .iter()
        .filter(|(e, _)| e.is_none())
        .map(|(_, at)| *at)
        .collect();
    // A Gap heard from just before a message was published (the clocks of publisher
    // and listener differ by a scheduling delay) to GAP_WITHIN_MS after.
    let covered = |at: u64| {
        gaps.iter()
            .any(|g| g + 200 >= at && *g <= at + GAP_WITHIN_MS)
    };
    // Published around a move: the message goes from node to node over the cluster
    // bus (a classic one to every node, a sharded one within its shard), and may reach
    // the subscription's new node late, after it was heard on the old one.
    let around_a_move = |seq: &u64| published_at.get(seq).is_some_and(|p| covered(*p));
    let (mut seen, mut twice) = (HashSet::new(), 0);
    for seq in heard.iter().filter_map(|(e, _)| *e) {
        if seen.insert(seq) {
            continue;
        }
        if around_a_move(&seq) {
            twice += 1;
        } else {
            violations.push(format!("{name}: message {seq} heard twice"));
        }
    }
    println!("{name}: {twice} heard twice, published around a Gap");
    if ordered {
        let (mut last, mut late) = (None, 0);
        for (event, at) in heard {
            // Published around a move: the old owner passes what it took last on to the
            // new one through the cluster bus, late, after newer messages published on
            // the new owner directly (while views of the move disagree, publishes and
            // the subscription may go back and forth between the two).
            match (event, last) {
                (None, _) => last = None,
                (Some(seq), Some(before)) if *seq <= before && around_a_move(seq) => late += 1,
                (Some(seq), _) if !answered.contains(seq) => {}
                (Some(seq), Some(before)) if *seq <= before => {
                    violations.push(format!("{name}: {seq} heard after {before}, at {at} ms"));
                }
                (Some(seq), _) => last = Some(*seq),
            }
        }
        println!("{name}: {late} heard after newer ones, published around a Gap");
    }
    // Published after the first message heard, never heard.
    let first = heard
        .iter()
        .filter_map(|(e, _)| *e)
        .min()
        .unwrap_or(u64::MAX);
    let never: Vec<&(u64, u64)> = published
        .iter()
        .filter(|(seq, _)| *seq > first && !seen.contains(seq))
        .collect();
    let uncovered: Vec<&&(u64, u64)> = never.iter().filter(|(_, at)| !covered(*at)).collect();
    if !uncovered.is_empty() {
        violations.push(format!(
            "{name}: {} published, never heard and no Gap within {GAP_WITHIN_MS} ms (number, \
             published at ms): {:?}; gaps heard at {gaps:?} ms",
            uncovered.len(),
            &uncovered[..uncovered.len().min(10)]
        ));
    }
    let unknown = seen.iter().filter(|s| !answered.contains(s)).count();
    // An error after the node took the message (a cut connection) is possible: noted.
    if unknown > 0 {
        println!("{name}: {unknown} heard though their publish failed");
    }
    println!(
        "{name}: {} published, {} heard, {} gaps, {} never heard",
        published.len(),
        seen.len(),
        gaps.len(),
        never.len()
    );
    violations
}

/// Faults, one every `every`, until `stop`: a graceful failover, a slot moved, every
/// client connection of a node killed, a primary frozen a moment, a replica restarted.
/// Returns what it did.
async fn chaos(local: &LocalCluster, stop: &AtomicBool, every: Duration) -> Vec<String> {
    let mut done = Vec::new();
    let mut turn = 0usize;
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(every).await;
        turn += 1;
        let outcome = match turn % 5 {
            0 => {
                let replicas = local.replicas().await.unwrap_or_default();
                let Some(&replica) = replicas.get(fastrand::usize(..replicas.len().max(1))) else {
                    continue;
                };
                local
                    .failover(replica, FailoverMode::Graceful)
                    .await
                    .map(|()| format!("failover to node {replica}"))
            }
            1 => {
                let k = key(fastrand::usize(..WORKERS), fastrand::usize(..KEYS));
                let slot = key_slot(k.as_bytes());
                let masters = local.masters().await.unwrap_or_default();
                let Some(&to) = masters.get(fastrand::usize(..masters.len().max(1))) else {
                    continue;
                };
                local
                    .move_slot(slot, to)
                    .await
                    .map(|()| format!("slot {slot} to node {to}"))
            }
            3 => {
                // Frozen for less than half the node timeout (no failover, no bus link
                // dropped), at times for longer than the response timeout.
                let masters = local.masters().await.unwrap_or_default();
                let Some(&node) = masters.get(fastrand::usize(..masters.len().max(1))) else {
                    continue;
                };
                let frozen = Duration::from_millis(fastrand::u64(300..2800));
                match local.pause(node) {
                    Ok(()) => {
                        tokio::time::sleep(frozen).await;
                        local
                            .resume(node)
                            .map(|()| format!("node {node} frozen for {frozen:?}"))
                    }
                    Err(e) => Err(e),
                }
            }
            4 => {
                // A replica killed and restarted: its primary holds every write.
                let replicas = local.replicas().await.unwrap_or_default();
                let Some(&node) = replicas.get(fastrand::usize(..replicas.len().max(1))) else {
                    continue;
                };
                match local.kill(node) {
                    Ok(()) => local
                        .restart(node)
                        .await
                        .map(|()| format!("replica {node} killed and restarted")),
                    Err(e) => Err(e),
                }
            }
            _ => {
                let masters = local.masters().await.unwrap_or_default();
                let Some(&node) = masters.get(fastrand::usize(..masters.len().max(1))) else {
                    continue;
                };
                let kind = if turn % 2 == 0 { "normal" } else { "pubsub" };
                match local.connect_node(node).await {
                    Ok(conn) => conn
                        .send(cmd("CLIENT").arg("KILL").arg("TYPE").arg(kind))
                        .await
                        .map(|killed| {
                            format!("{killed:?} {kind} connections of node {node} killed")
                        }),
                    Err(e) => Err(e),
                }
            }
        };
        let at = ms();
        done.push(match outcome {
            Ok(what) => format!("{at} ms: {what}"),
            Err(e) => format!("{at} ms: fault not made: {e}"),
        });
    }
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a soak of SOAK_SECS (default 60) seconds: run by hand"]
async fn a_soak_under_failovers_migrations_and_killed_connections_keeps_every_promise() {
    // `SOAK_LOG=file`: the client's debug log there.
    if let Ok(path) = std::env::var("SOAK_LOG") {
        let file = std::fs::File::create(path).unwrap();
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(std::sync::Mutex::new(file))
            .init();
    }
    ms();
    println!(
        "soak clock (ms) starts at {:?} after the epoch",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
    );
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    // A node timeout above twice the longest freeze: a frozen primary is never failed
    // over (which could lose writes it acknowledged) and keeps its bus links.
    let local = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(1)
        .node_timeout(Duration::from_secs(6))
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(RESPONSE_TIMEOUT)
        .build()
        .await
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let sub = client.subscriber().await.unwrap();
    sub.subscribe([CLASSIC]).await.unwrap();
    sub.ssubscribe([SHARDED]).await.unwrap();
    let listener = tokio::spawn(listen(sub, Arc::clone(&stop)));
    let publisher = tokio::spawn(publish(client.clone(), Arc::clone(&stop)));
    let workers: Vec<_> = (0..WORKERS)
        .map(|w| tokio::spawn(work(client.clone(), w, Arc::clone(&stop))))
        .collect();
    let faults = {
        let stop = Arc::clone(&stop);
        let run = async {
            tokio::time::sleep(Duration::from_secs(secs)).await;
            stop.store(true, Ordering::Relaxed);
        };
        let (faults, ()) = tokio::join!(chaos(&local, &stop, Duration::from_millis(1500)), run);
        faults
    };
    let mut records = Vec::new();
    for w in workers {
        // Every worker ends within a request's time of the stop.
        let record = tokio::time::timeout(RESPONSE_TIMEOUT + BLOCK + SLACK * 4, w)
            .await
            .expect("a worker ended in time")
            .unwrap();
        records.push(record);
    }
    let (classic_published, sharded_published) = publisher.await.unwrap();
    let (classic_heard, sharded_heard) = tokio::time::timeout(Duration::from_secs(10), listener)
        .await
        .expect("the subscriber stopped in time")
        .unwrap();
    local
        .wait_until_stable(Duration::from_secs(30))
        .await
        .unwrap();

    let mut violations = check_channel(CLASSIC, &classic_published, &classic_heard, false);
    violations.extend(check_channel(
        SHARDED,
        &sharded_published,
        &sharded_heard,
        true,
    ));
    let (mut requests, mut slowest) = (0, Duration::ZERO);
    let mut errors: HashMap<String, u64> = HashMap::new();
    let mut timeline: std::collections::BTreeMap<u64, (u64, String)> = Default::default();
    for (w, r) in records.iter().enumerate() {
        requests += r.requests;
        slowest = slowest.max(r.slowest);
        for (kind, n) in &r.errors {
            *errors.entry(kind.clone()).or_default() += n;
        }
        for (second, (n, first)) in &r.timeline {
            timeline.entry(*second).or_insert((0, first.clone())).0 += n;
        }
        violations.extend(r.violations.iter().map(|v| format!("worker {w}: {v}")));
        for (k, (acked, maybe)) in &r.keys {
            let stored: Option<u64> = client.get(k).await.unwrap();
            let stored = stored.unwrap_or(0);
            if stored != *acked && !maybe.contains(&stored) {
                violations.push(format!(
                    "worker {w}: {k} = {stored}, last acknowledged {acked}, maybe {maybe:?}"
                ));
            }
        }
        let counter = stored(&client, &counter_key(w)).await;
        let (acked, maybe) = r.counter;
        if counter < acked || counter > acked + maybe {
            violations.push(format!(
                "worker {w}: counter {counter}, acknowledged {acked}, maybe {maybe}"
            ));
        }
        let (tx_a, tx_b) = transaction_keys(w);
        let (a, b) = (stored(&client, &tx_a).await, stored(&client, &tx_b).await);
        let (acked, maybe) = r.transactions;
        if a != b || a < acked || a > acked + maybe {
            violations.push(format!(
                "worker {w}: transaction counters {a} and {b}, acknowledged {acked}, maybe {maybe}"
            ));
        }
        let left: Vec<u64> = client
            .query(cmd("LRANGE").arg(queue_key(w)).arg(0).arg(-1))
            .await
            .unwrap();
        let mut seen = HashSet::new();
        for item in r.popped.iter().chain(&left) {
            if !seen.insert(*item) {
                violations.push(format!("worker {w}: item {item} popped or left twice"));
            }
            if !r.pushed.contains(item) && !r.pushed_maybe.contains(item) {
                violations.push(format!("worker {w}: item {item} never pushed"));
            }
        }
        let missing = r.pushed.iter().filter(|i| !seen.contains(i)).count();
        if missing > r.pops_maybe {
            violations.push(format!(
                "worker {w}: {missing} acknowledged pushes gone, {} pops with an unknown outcome",
                r.pops_maybe
            ));
        }
    }
    println!("{requests} requests in {secs} s, the slowest {slowest:?}");
    println!("errors by kind: {errors:?}");
    println!("faults: {faults:#?}");
    println!("errors by second of the run (count, one of them): {timeline:#?}");
    assert!(violations.is_empty(), "{violations:#?}");
}
