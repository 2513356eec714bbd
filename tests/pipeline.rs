//! Explicit pipelines and transactions against real local clusters: ordering across
//! slots, per-command failures, redirects that resend one command only, atomicity and
//! the one-slot rule.

mod support;

use std::time::Duration;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use redcluster::{cmd, key_slot, ClusterClient, Error, ServerError, Value};
use support::fake_cluster::{Action, FakeCluster};
use support::{key_in_slot, other_master};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_slot_pipeline_answers_in_the_order_commands_were_added() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut p = client.pipeline();
    for i in 0..500 {
        p.set(format!("pl:{i}"), i);
    }
    for i in 0..500 {
        p.get(format!("pl:{i}"));
    }
    assert_eq!(p.len(), 1000);
    let replies = p.execute().await.unwrap();
    assert_eq!(replies.len(), 1000);
    for (i, reply) in replies[..500].iter().enumerate() {
        assert_eq!(reply, &Value::Simple("OK".into()), "SET #{i}");
    }
    for (i, reply) in replies[500..].iter().enumerate() {
        assert_eq!(reply, &Value::Bulk(i.to_string().into()), "GET #{i}");
    }
}

/// A read whose reply the client cannot decode (a read-only script's 2 MB status line,
/// over the decoder's 1 MiB line limit) fails with `Protocol` and is not sent again,
/// alone or in a pipeline: each resend got the same reply and closed the node's shared
/// connection again under its other callers (up to `max_retries` times, and once more
/// for a pipeline's). A command after it in the pipeline, answered never, is resent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_over_the_decoders_limits_is_not_asked_for_again() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let owner = support::owner_index(&local, &client, "{u}k");
    let huge_line = || {
        cmd("EVAL_RO")
            .arg("return redis.status_reply(string.rep('x', 2000000))")
            .arg(1)
            .arg("{u}k")
    };
    let before = support::calls(&local, owner, "eval_ro").await;
    let alone = client.query::<Value>(huge_line()).await.unwrap_err();
    assert!(matches!(alone, Error::Protocol(_)), "{alone:?}");
    assert_eq!(support::calls(&local, owner, "eval_ro").await, before + 1);

    client.set("{u}after", "v").await.unwrap();
    let mut p = client.pipeline();
    p.add(huge_line()).get("{u}after");
    let each = p.execute_each().await;
    assert!(matches!(each[0], Err(Error::Protocol(_))), "{each:?}");
    assert_eq!(each[1].as_ref().unwrap(), &Value::Bulk("v".into()));
    assert_eq!(support::calls(&local, owner, "eval_ro").await, before + 2);
}

/// A pipeline of keyless commands is one request per command; on connections that hold
/// 8 requests queued, thousands of them wait for room at once, and every one is
/// answered (they are woken one per place freed: see the connection's unit test for
/// the count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_keyless_commands_waiting_for_room_are_all_answered() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .max_in_flight_per_connection(8)
        .response_timeout(Duration::from_secs(60))
        .build()
        .await
        .unwrap();
    let mut p = client.pipeline();
    for i in 0..20_000 {
        p.add(cmd("PUBLISH").arg("nobody-listens").arg(i));
    }
    let replies = p.execute().await.unwrap();
    assert_eq!(replies, vec![Value::Int(0); 20_000]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_command_is_reported_with_its_index_and_the_rest_still_run() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    client.set("pf:string", "x").await.unwrap();
    let build = || {
        let mut p = client.pipeline();
        p.incr("pf:a", 1)
            .add(cmd("LPUSH").arg("pf:string").arg("y"))
            .incr("pf:b", 1);
        p
    };
    let err = build().execute().await.unwrap_err();
    match &err {
        Error::Pipeline { index, source } => {
            assert_eq!(*index, 1);
            assert_eq!(source.server_code(), Some("WRONGTYPE"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.server_code(), Some("WRONGTYPE"));
    // The commands around the failure ran (once per pipeline run).
    assert_eq!(client.get::<_, i64>("pf:a").await.unwrap(), 1);
    assert_eq!(client.get::<_, i64>("pf:b").await.unwrap(), 1);
    let each = build().execute_each().await;
    assert_eq!(each.len(), 3);
    assert_eq!(each[0].as_ref().unwrap(), &Value::Int(2));
    assert_eq!(
        each[1].as_ref().unwrap_err().server_code(),
        Some("WRONGTYPE")
    );
    assert_eq!(each[2].as_ref().unwrap(), &Value::Int(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_slot_resends_only_its_command_never_the_whole_pipeline() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let slot = key_slot(b"pm:moving");
    let moving: Vec<String> = (0..5).map(|n| key_in_slot(slot, n)).collect();
    let staying: Vec<String> = (0..100)
        .map(|i| format!("pm:{i}"))
        .filter(|k| key_slot(k.as_bytes()) != slot)
        .collect();
    // Move the slot behind the client's back: its map still names the old owner.
    let to = other_master(&local, slot).await;
    local.move_slot(slot, to).await.unwrap();
    let before = client.stats();
    let mut p = client.pipeline();
    for k in staying.iter().chain(&moving) {
        p.incr(k.as_str(), 1);
    }
    let replies = p.execute().await.unwrap();
    assert!(
        replies.iter().all(|r| *r == Value::Int(1)),
        "every INCR ran exactly once: {replies:?}"
    );
    assert!(
        client.stats().moved > before.moved,
        "the moved commands were redirected"
    );
    for k in staying.iter().chain(&moving) {
        assert_eq!(client.get::<_, i64>(k.as_str()).await.unwrap(), 1, "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_follows_ask_during_a_migration() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let slot = key_slot(b"pa:slot");
    let keys: Vec<String> = (0..40).map(|n| key_in_slot(slot, n)).collect();
    for k in &keys {
        client.set(k.as_str(), k.as_str()).await.unwrap();
    }
    let to = other_master(&local, slot).await;
    let migration = local.begin_slot_migration(slot, to).await.unwrap();
    // Half the keys move; the slot still belongs to the source, which answers ASK for them.
    let moved = local.migrate_keys_batch(&migration, 20).await.unwrap();
    assert_eq!(moved, 20);
    let before = client.stats();
    let source = local.master_of_slot(slot).await.unwrap();
    // `GET`s the source redirected: counted apart from those it ran.
    let redirected_gets = || async {
        let node = local.connect_node(source).await.unwrap();
        let info = node.send(cmd("INFO").arg("commandstats")).await.unwrap();
        let text = String::from_utf8(info.as_bytes().unwrap().to_vec()).unwrap();
        // No line before the first `GET`.
        let Some(line) = text.lines().find(|l| l.starts_with("cmdstat_get:")) else {
            return 0;
        };
        let field = line
            .split(',')
            .find_map(|f| f.strip_prefix("rejected_calls="));
        field.unwrap().trim().parse::<u64>().unwrap()
    };
    let redirected_before = redirected_gets().await;
    let mut p = client.pipeline();
    for k in &keys {
        p.get(k.as_str());
    }
    let replies = p.execute().await.unwrap();
    for (k, r) in keys.iter().zip(&replies) {
        assert_eq!(r, &Value::Bulk(k.clone().into()));
    }
    // The 20 keys that moved on went to the importing node together, each after
    // `ASKING`: one `ASK` each, not back to the source first for a second one.
    assert_eq!(client.stats().ask, before.ask + 20, "{:?}", client.stats());
    assert_eq!(redirected_gets().await - redirected_before, 20);
    assert_eq!(support::calls(&local, to, "asking").await, 20);
    local.finish_slot_migration(migration).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_run_atomically_on_one_slot() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{user:1}:visits"))
        .add(cmd("SET").arg("{user:1}:last").arg("now"))
        .add(cmd("GET").arg("{user:1}:last"));
    let replies = tx.execute().await.unwrap();
    assert_eq!(
        replies,
        vec![
            Value::Int(1),
            Value::Simple("OK".into()),
            Value::Bulk("now".into())
        ]
    );

    // PING asks after the transaction's node, as on any one connection; a command
    // that fans out to every node has no place in it.
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{user:1}:visits")).add(cmd("PING"));
    assert_eq!(
        tx.execute().await.unwrap(),
        [Value::Int(2), Value::Simple("PONG".into())]
    );
    let mut w = client.watch(["{user:1}:visits"]).await.unwrap();
    let pong: String = w.query(cmd("PING")).await.unwrap();
    assert_eq!(pong, "PONG");
    let committed = w.exec(vec![cmd("PING")]).await.unwrap();
    assert_eq!(committed, Some(vec![Value::Simple("PONG".into())]));
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{user:1}:visits"))
        .add(cmd("DBSIZE"));
    assert!(matches!(tx.execute().await, Err(Error::Config(_))));

    // Keys in different slots: refused before anything is sent.
    let mut tx = client.transaction();
    tx.add(cmd("SET").arg("tx:a").arg(1))
        .add(cmd("SET").arg("tx:b").arg(1));
    match tx.execute().await.unwrap_err() {
        Error::CrossSlot { slots } => assert_eq!(slots, vec![key_slot(b"tx:a"), key_slot(b"tx:b")]),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client.exists(["tx:a", "tx:b"]).await.unwrap(),
        0,
        "nothing ran"
    );

    // A runtime error inside the transaction is one reply among the others.
    client.set("{t}:s", "x").await.unwrap();
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{t}:n"))
        .add(cmd("LPUSH").arg("{t}:s").arg(1))
        .add(cmd("INCR").arg("{t}:n"));
    let replies = tx.execute().await.unwrap();
    assert_eq!(replies[0], Value::Int(1));
    assert!(matches!(&replies[1], Value::ServerError(e) if e.code() == "WRONGTYPE"));
    assert_eq!(replies[2], Value::Int(2));

    // A command the server refuses while queueing discards the whole transaction.
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{t}:n"))
        .add(cmd("NOSUCHCOMMAND").arg("{t}:n"));
    let err = tx.execute().await.unwrap_err();
    assert_eq!(err.server_code(), Some("ERR"), "{err:?}");
    assert!(err.to_string().contains("unknown command"), "{err}");
    assert_eq!(
        client.get::<_, i64>("{t}:n").await.unwrap(),
        2,
        "the INCR did not run"
    );
    // Too few arguments to find a known command's keys: caught before sending.
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{t}:n")).add(cmd("GET"));
    assert!(matches!(tx.execute().await.unwrap_err(), Error::Config(_)));
    assert_eq!(client.get::<_, i64>("{t}:n").await.unwrap(), 2);
    // Too many (a later version's option, to this server none): the server judges,
    // refuses it while queueing, and nothing runs.
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{t}:n"))
        .add(cmd("GET").arg("{t}:n").arg("extra"));
    let err = tx.execute().await.unwrap_err();
    assert_eq!(err.server_code(), Some("ERR"), "{err:?}");
    assert_eq!(client.get::<_, i64>("{t}:n").await.unwrap(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_follows_its_slot_to_a_new_owner() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let slot = key_slot(b"{acct}");
    client.set("{acct}:balance", 100).await.unwrap();
    let to = other_master(&local, slot).await;
    local.move_slot(slot, to).await.unwrap();
    let mut tx = client.transaction();
    tx.add(cmd("DECRBY").arg("{acct}:balance").arg(30))
        .add(cmd("INCRBY").arg("{acct}:spent").arg(30));
    assert_eq!(
        tx.execute().await.unwrap(),
        vec![Value::Int(70), Value::Int(30)]
    );
    assert_eq!(
        client.get::<_, i64>("{acct}:balance").await.unwrap(),
        70,
        "ran exactly once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_that_hold_a_connection_never_ride_the_shared_one() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();

    // MULTI and its kin would turn a shared connection into a transaction for everyone:
    // refused wherever a user command goes, before anything is sent.
    for c in [
        cmd("MULTI"),
        cmd("exec"),
        cmd("DISCARD"),
        cmd("WATCH").arg("hc:k"),
        cmd("UNWATCH"),
        // Not MULTI's kin, but as bad for a shared connection: never answered, or
        // answered by a debugger session.
        cmd("REPLCONF").arg("ACK").arg(0),
        cmd("script").arg("debug").arg("sync"),
    ] {
        let refused = client.query::<Value>(c.clone()).await;
        assert!(
            matches!(refused, Err(Error::Config(_))),
            "{c:?}: {refused:?}"
        );
    }
    let mut p = client.pipeline();
    p.set("hc:a", 1).add(cmd("MULTI")).get("hc:a");
    let each = p.execute_each().await;
    assert!(matches!(each[1], Err(Error::Config(_))), "{each:?}");
    assert_eq!(each[2].as_ref().unwrap(), &Value::Bulk("1".into()));
    // No shared connection was left inside a MULTI: every primary answers with values,
    // not `QUEUED`.
    for i in 0..30 {
        let key = format!("hc:{i}");
        client.set(&key, i).await.unwrap();
        assert_eq!(client.get::<_, i64>(&key).await.unwrap(), i);
    }

    // A command that runs on every node has no place in a transaction, which runs on one.
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{hc}:n")).add(cmd("DBSIZE"));
    assert!(matches!(tx.execute().await, Err(Error::Config(_))));
    assert_eq!(
        client.get::<_, Option<i64>>("{hc}:n").await.unwrap(),
        None,
        "nothing ran"
    );
    let mut watched = client.watch(["{hc}:n"]).await.unwrap();
    let keys = watched.query::<Value>(cmd("KEYS").arg("*")).await;
    assert!(matches!(keys, Err(Error::Config(_))), "{keys:?}");
    let unwatch = watched.query::<Value>(cmd("UNWATCH")).await;
    assert!(matches!(unwatch, Err(Error::Config(_))), "{unwatch:?}");
    // The watch still holds: a change by someone else aborts the EXEC.
    client.set("{hc}:n", 10).await.unwrap();
    let aborted = watched.exec(vec![cmd("INCR").arg("{hc}:n")]).await.unwrap();
    assert_eq!(aborted, None);

    // A blocking command in a pipeline gets a connection of its own: while it waits,
    // the node's shared connection keeps answering.
    let (list, flag) = ("{hq}:jobs", "{hq}:flag");
    client.set(flag, "up").await.unwrap();
    let master = local
        .master_of_slot(key_slot(list.as_bytes()))
        .await
        .unwrap();
    let blocked = || support::info_field(&local, master, "clients", "blocked_clients");
    let blocked_before = blocked().await.unwrap();
    let mut p = client.pipeline();
    p.get(flag).add(cmd("BLPOP").arg(list).arg(0)).get(flag);
    let pipeline = tokio::spawn(p.execute());
    let waited_since = tokio::time::Instant::now();
    while blocked().await.unwrap() == blocked_before {
        assert!(
            waited_since.elapsed() < Duration::from_secs(5),
            "the BLPOP never blocked"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let answered = tokio::time::timeout(Duration::from_secs(2), client.get::<_, String>(flag))
        .await
        .expect("a GET on the node is not held up behind the pipeline's BLPOP");
    assert_eq!(answered.unwrap(), "up");
    client
        .query::<i64>(cmd("LPUSH").arg(list).arg("job"))
        .await
        .unwrap();
    let replies = tokio::time::timeout(Duration::from_secs(5), pipeline)
        .await
        .expect("the BLPOP got the pushed job")
        .unwrap()
        .unwrap();
    assert_eq!(
        replies,
        vec![
            Value::Bulk("up".into()),
            Value::Array(vec![Value::Bulk(list.into()), Value::Bulk("job".into())]),
            Value::Bulk("up".into()),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_in_a_pipeline_each_get_a_wait_and_huge_timeouts_never_panic() {
    let local = support::cluster(3, 0).await;
    // `Duration::MAX` everywhere a user may put it: deadlines a century ahead, and a
    // `WAIT` timeout the server accepts.
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::MAX)
        .durable_writes(redcluster::Durability::new(0, Duration::MAX))
        .build()
        .await
        .unwrap();
    let masters = local.masters().await.unwrap();
    let waits = || async {
        let mut calls = 0;
        for &m in &masters {
            calls += support::info_field(&local, m, "commandstats", "cmdstat_wait:calls")
                .await
                .unwrap_or(0);
        }
        calls
    };
    let before = waits().await;
    let mut p = client.pipeline();
    let mut primaries = Vec::new();
    for i in 0..10 {
        let key = format!("dp:{i}");
        let primary = local
            .master_of_slot(key_slot(key.as_bytes()))
            .await
            .unwrap();
        if !primaries.contains(&primary) {
            primaries.push(primary);
        }
        p.set(key, i);
    }
    // Read after the write it depends on: a durable batch keeps the pipeline's order.
    p.get("dp:3");
    let replies = p.execute().await.unwrap();
    assert_eq!(replies.len(), 11);
    assert_eq!(replies[10], Value::Bulk("3".into()));
    assert_eq!(
        waits().await - before,
        primaries.len() as u64,
        "one WAIT after each node's batch"
    );

    // A cluster without replicas cannot meet one acknowledgement: each write says so,
    // after it ran on its primary; the read is answered as usual.
    let strict = ClusterClient::builder()
        .nodes(local.seeds())
        .durable_writes(redcluster::Durability::new(1, Duration::from_millis(20)))
        .build()
        .await
        .unwrap();
    let mut p = strict.pipeline();
    p.set("{dp}:b", "x").get("{dp}:b").incr("dp:c", 1);
    let each = p.execute_each().await;
    assert!(
        matches!(
            each[0],
            Err(Error::NotReplicated {
                acknowledged: 0,
                requested: 1
            })
        ),
        "{each:?}"
    );
    assert_eq!(each[1].as_ref().unwrap(), &Value::Bulk("x".into()));
    assert!(
        matches!(each[2], Err(Error::NotReplicated { .. })),
        "{each:?}"
    );
    assert_eq!(client.get::<_, i64>("dp:c").await.unwrap(), 1);

    client.set("{dp}:a", 1).await.unwrap();
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{dp}:a"));
    assert_eq!(tx.execute().await.unwrap(), vec![Value::Int(2)]);
    let mut watched = client.watch(["{dp}:a"]).await.unwrap();
    assert_eq!(
        watched
            .query::<i64>(cmd("GET").arg("{dp}:a"))
            .await
            .unwrap(),
        2
    );
}

/// A node that makes every command wait: `TRYAGAIN` to its first two sendings, then it
/// runs (a scripted fake: a real server cannot be made to refuse twice on demand).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_commands_of_one_slot_run_in_the_order_they_were_added() {
    let sendings: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let ran: Arc<Mutex<Vec<String>>> = Arc::default();
    let (counted, log) = (Arc::clone(&sendings), Arc::clone(&ran));
    let fake = FakeCluster::start(move |args, _| {
        let command = args.join(" ");
        let mut sendings = counted.lock().unwrap();
        let n = sendings.entry(command.clone()).or_default();
        *n += 1;
        if *n <= 2 {
            return Action::Reply(Value::ServerError(ServerError::new(
                "TRYAGAIN Multiple keys request during rehashing of slot",
            )));
        }
        log.lock().unwrap().push(command);
        Action::Reply(Value::Int(1))
    })
    .await;
    let client = ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        // Jitter wider than the timer's millisecond ticks.
        .retry_backoff(Duration::from_millis(20), Duration::from_millis(100))
        .build()
        .await
        .unwrap();
    // Each backoff has its own jitter: resent side by side, the second command of a
    // pair would overtake the first about every other time.
    let mut p = client.pipeline();
    for pair in 0..8 {
        p.del(format!("{{o{pair}}}:list"))
            .rpush(format!("{{o{pair}}}:list"), "fresh");
    }
    let before = client.stats().retries;
    let replies = p.execute().await.unwrap();
    assert_eq!(replies, vec![Value::Int(1); 16]);
    // Each command was refused twice: the pipeline's own resend is one retry for the
    // node's batch, as for one request; the second, on each command's own path, one
    // per command.
    assert_eq!(client.stats().retries - before, 1 + 16);
    let ran = ran.lock().unwrap().clone();
    assert_eq!(ran.len(), 16, "{ran:?}");
    for pair in 0..8 {
        let at = |name: &str| {
            let command = format!("{name} {{o{pair}}}:list");
            ran.iter().position(|c| c.starts_with(&command)).unwrap()
        };
        assert!(at("DEL") < at("RPUSH"), "pair {pair}: {ran:?}");
    }
}

/// A node's connection lost after its commands were written: a command safe to repeat
/// is resent only if no later command of its slot that may have run stays unanswered
/// (`SET k a` resent after `APPEND k b` ran would undo the append); another slot's is
/// resent as usual. (A scripted fake: a real server cannot be made to run commands and
/// then drop the connection before it answers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_resends_no_command_of_a_slot_ahead_of_one_it_cannot_resend() {
    let fake = FakeCluster::start(|args, earlier| match (args[0].as_str(), earlier) {
        // The first write: read, unanswered, and its last command drops the connection.
        ("SET" | "APPEND" | "HMSET", 0) => Action::Silent,
        ("GET", 0) => Action::Drop,
        ("GET", _) => Action::Reply(Value::Bulk("x".into())),
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    let client = ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        .build()
        .await
        .unwrap();
    let mut p = client.pipeline();
    p.set("{k}:v", "a")
        .add(cmd("APPEND").arg("{k}:v").arg("b"))
        .add(cmd("HMSET").arg("other").arg("f").arg("v"))
        .get("{k}:last");
    let each = p.execute_each().await;
    for (i, name) in [(0, "SET"), (1, "APPEND")] {
        match &each[i] {
            Err(e) => assert!(e.may_have_executed(), "{name}: {e:?}"),
            Ok(v) => panic!("{name} answered {v:?}"),
        }
    }
    assert_eq!(each[2].as_ref().unwrap(), &Value::Simple("OK".into()));
    assert_eq!(each[3].as_ref().unwrap(), &Value::Bulk("x".into()));
    assert_eq!(fake.count("SET"), 1, "{:?}", fake.seen());
    assert_eq!(fake.count("APPEND"), 1);
    assert_eq!(fake.count("HMSET"), 2, "the other slot's HMSET is resent");
    assert_eq!(fake.count("GET"), 2, "a read after the APPEND is resent");
}

/// A transaction whose `EXEC` was read before the connection dropped may have
/// committed: it fails saying so, and is never sent again, on the shared connection or
/// the watched one. (A scripted fake: a real server cannot be made to run `EXEC` and
/// then drop the connection before it answers.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_exec_was_read_before_the_connection_dropped_is_never_resent() {
    let fake = FakeCluster::start(|args, _| match args[0].as_str() {
        "EXEC" => Action::Drop,
        "MULTI" | "WATCH" | "UNWATCH" => Action::Reply(Value::Simple("OK".into())),
        "PING" => Action::Reply(Value::Simple("PONG".into())),
        _ => Action::Reply(Value::Simple("QUEUED".into())),
    })
    .await;
    let client = ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        .build()
        .await
        .unwrap();
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{t}:n"));
    let err = tx.execute().await.unwrap_err();
    assert!(err.may_have_executed() && !err.is_retryable(), "{err:?}");
    assert_eq!(fake.count("EXEC"), 1, "{:?}", fake.seen());
    assert_eq!(fake.count("INCR"), 1);

    // The same under `watch_retry`: the body runs once.
    let runs = std::sync::atomic::AtomicU32::new(0);
    let runs_ref = &runs;
    let outcome = client
        .watch_retry(&["{t}:n"], 3, |w| async move {
            runs_ref.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            w.exec(vec![cmd("INCR").arg("{t}:n")]).await
        })
        .await;
    let err = outcome.unwrap_err();
    assert!(err.may_have_executed() && !err.is_retryable(), "{err:?}");
    assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(fake.count("EXEC"), 2, "{:?}", fake.seen());
}

/// A refused command (`CLUSTERDOWN`: the node's state changed between two reads of the
/// batch) whose slot's later command the node served is not resent: it would run after
/// that one (`SET k 1` after `SET k 2`). It gets its refusal, which says it did not run;
/// another slot's refusal is resent as usual. (A scripted fake: a real node's state
/// cannot be changed between two reads of one batch on demand.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_followed_by_a_served_command_of_its_slot_is_not_resent() {
    let stored: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&stored);
    let fake = FakeCluster::start(move |args, earlier| match (args[0].as_str(), earlier) {
        ("SET", 0) | ("GET", 0) => Action::Reply(Value::ServerError(ServerError::new(
            "CLUSTERDOWN The cluster is down",
        ))),
        ("SET", _) => {
            log.lock().unwrap().push(args[2].clone());
            Action::Reply(Value::Simple("OK".into()))
        }
        ("GET", _) => Action::Reply(Value::Bulk("v".into())),
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    let client = fake.quickly_retrying_client().await;
    let mut p = client.pipeline();
    p.get("other").set("k", "1").set("k", "2");
    let each = p.execute_each().await;
    assert_eq!(
        each[0].as_ref().unwrap(),
        &Value::Bulk("v".into()),
        "resent"
    );
    match &each[1] {
        Err(e @ Error::ClusterDown(_)) => assert!(!e.may_have_executed(), "{e:?}"),
        other => panic!("{other:?}"),
    }
    assert_eq!(each[2].as_ref().unwrap(), &Value::Simple("OK".into()));
    assert_eq!(*stored.lock().unwrap(), ["2"], "{:?}", fake.seen());
    assert_eq!(fake.count("GET"), 2);
}

/// The same for a `MOVED` (the node took the slot between two reads of the batch): not
/// resent to run after the slot's later command the node served; it answers with its
/// redirect (retryable: it ran nothing). Another slot's `MOVED` is followed as usual.
/// (A scripted fake that sends the client to itself.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_command_followed_by_a_served_command_of_its_slot_is_not_resent() {
    let stored: Arc<Mutex<Vec<String>>> = Arc::default();
    let log = Arc::clone(&stored);
    let me: Arc<std::sync::OnceLock<String>> = Arc::default();
    let own = Arc::clone(&me);
    let fake = FakeCluster::start(move |args, earlier| match (args[0].as_str(), earlier) {
        ("SET", 0) | ("GET", 0) => {
            let slot = key_slot(args[1].as_bytes());
            let moved = format!("MOVED {slot} {}", own.get().unwrap());
            Action::Reply(Value::ServerError(ServerError::new(moved)))
        }
        ("SET", _) => {
            log.lock().unwrap().push(args[2].clone());
            Action::Reply(Value::Simple("OK".into()))
        }
        ("GET", _) => Action::Reply(Value::Bulk("v".into())),
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    me.set(fake.addr.clone()).unwrap();
    let client = fake.quickly_retrying_client().await;
    let mut p = client.pipeline();
    p.get("other").set("k", "1").set("k", "2");
    let each = p.execute_each().await;
    assert_eq!(
        each[0].as_ref().unwrap(),
        &Value::Bulk("v".into()),
        "followed"
    );
    match &each[1] {
        Err(e) => assert!(
            e.server_code() == Some("MOVED") && e.is_retryable(),
            "{e:?}"
        ),
        other => panic!("{other:?}"),
    }
    assert_eq!(each[2].as_ref().unwrap(), &Value::Simple("OK".into()));
    assert_eq!(*stored.lock().unwrap(), ["2"], "{:?}", fake.seen());
    assert_eq!(fake.count("GET"), 2);
}

/// A command whose keys the client cannot tell (a module command the table lacks and
/// `COMMAND INFO` does not explain: routed by its first argument) and that the node
/// sends with a `MOVED` for another slot than the client's goes where the redirect
/// says. It was grouped again under the client's slot, whose owner had not changed,
/// and sent back to the same node up to four more times. (Two scripted nodes, one
/// shard each.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_moved_to_another_slot_than_the_clients_goes_where_the_redirect_says() {
    use support::fake_cluster::two_shard_nodes;
    let in_range = |low: bool| {
        (0..10_000)
            .map(|i| format!("k{i}"))
            .find(|k| (key_slot(k.as_bytes()) < 8192) == low)
            .unwrap()
    };
    let (first_arg, real_key) = (in_range(true), in_range(false));
    let real_slot = key_slot(real_key.as_bytes());
    let (a, b) = two_shard_nodes(move |to_a, args, _, (_, b)| match args[0].as_str() {
        "MYMOD.GET" if to_a => {
            let moved = format!("MOVED {real_slot} 127.0.0.1:{b}");
            Action::Reply(Value::ServerError(ServerError::new(moved)))
        }
        "MYMOD.GET" => Action::Reply(Value::Simple("OK".into())),
        "COMMAND" => Action::Reply(Value::ServerError(ServerError::new("ERR no"))),
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    let client = ClusterClient::builder()
        .nodes([a.addr.as_str()])
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let mut p = client.pipeline();
    p.add(
        cmd("MYMOD.GET")
            .arg(first_arg.as_str())
            .arg(real_key.as_str()),
    );
    let each = p.execute_each().await;
    assert_eq!(each[0].as_ref().unwrap(), &Value::Simple("OK".into()));
    assert_eq!(b.count("MYMOD.GET"), 1, "{:?}", b.seen());
    assert!(a.count("MYMOD.GET") <= 2, "{:?}", a.seen());
}

/// A batch sent after `ASK` whose `ASKING` the importing node refuses (a user without
/// `+asking`), its connection then lost part way: the commands answered before the
/// loss get the refusal, which says why, as when the whole batch is answered. Their
/// own reply, a `MOVED` back to the source, sent them round again (source, `ASK`,
/// refused) until the re-batches ran out. (Two scripted nodes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_asking_answers_its_command_when_the_batch_is_cut_short() {
    use support::fake_cluster::two_shard_nodes;
    let keys: Vec<String> = (0..10_000)
        .map(|i| format!("k{i}"))
        .filter(|k| key_slot(k.as_bytes()) < 8192)
        .take(2)
        .collect();
    let (a, b) = two_shard_nodes(|source, args, earlier, (a, b)| {
        let slot = key_slot(args.get(1).map_or(&b""[..], |k| k.as_bytes()));
        let refusal = |text: String| Action::Reply(Value::ServerError(ServerError::new(text)));
        match (args[0].as_str(), source, earlier) {
            ("GET", true, _) => refusal(format!("ASK {slot} 127.0.0.1:{b}")),
            // The importing node: its second GET drops the connection (the last
            // command of the batch, read whole: the replies before it arrive).
            ("GET", false, 1) => Action::Drop,
            ("ASKING", false, _) => refusal("NOPERM no ASKING".into()),
            ("GET", false, _) => refusal(format!("MOVED {slot} 127.0.0.1:{a}")),
            _ => Action::Reply(Value::Simple("OK".into())),
        }
    })
    .await;
    let client = ClusterClient::builder()
        .nodes([a.addr.as_str()])
        .health_check_interval(None)
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let mut p = client.pipeline();
    p.get(keys[0].as_str()).get(keys[1].as_str());
    let each = p.execute_each().await;
    for (i, result) in each.iter().enumerate() {
        match result {
            Err(e) => assert_eq!(e.server_code(), Some("NOPERM"), "{i}: {e:?}"),
            Ok(v) => panic!("{i} answered {v:?}"),
        }
    }
    // The first batch's two, and the resent command's (the connection was lost before
    // its `ASKING` was answered).
    assert_eq!(b.count("ASKING"), 3, "{:?}", b.seen());
}

/// A refused command (`TRYAGAIN`) followed by a command of its slot that the node may
/// have run before the connection dropped (an `APPEND`, which is not resent) is not
/// resent either: it would run after that one (`MSET {t}a 1 ...` over the appended
/// value). Only commands the node answered counted as run. (A scripted fake.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_followed_by_a_command_that_may_have_run_is_not_resent() {
    let fake = FakeCluster::start(|args, earlier| match (args[0].as_str(), earlier) {
        ("MSET", 0) => Action::Reply(Value::ServerError(ServerError::new(
            "TRYAGAIN Multiple keys request during rehashing of slot",
        ))),
        ("APPEND", 0) => Action::Drop,
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    let client = fake.quickly_retrying_client().await;
    let mut p = client.pipeline();
    p.add(cmd("MSET").arg("{t}a").arg(1).arg("{t}b").arg(1))
        .add(cmd("APPEND").arg("{t}a").arg("x"));
    let each = p.execute_each().await;
    assert!(
        matches!(&each[0], Err(Error::Server(e)) if e.code() == "TRYAGAIN"),
        "{each:?}"
    );
    assert!(
        each[1].as_ref().is_err_and(Error::may_have_executed),
        "{each:?}"
    );
    assert_eq!(fake.count("MSET"), 1, "{:?}", fake.seen());
    assert_eq!(fake.count("APPEND"), 1, "{:?}", fake.seen());
}

/// With reads from replicas, a pipeline's read of a slot it writes goes to the primary
/// also when no owner of the slot was known as the pipeline was planned (a lazily
/// connected client before its discovery): it went to a replica, which may not have
/// the write yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_a_written_slot_without_a_known_owner_go_to_the_primary() {
    use futures_util::FutureExt as _;
    let local = support::cluster(3, 1).await;
    let masters = local.masters().await.unwrap();
    let replica_gets = || async {
        let mut total = 0;
        for node in (0..6).filter(|n| !masters.contains(n)) {
            total += support::calls(&local, node, "get").await;
        }
        total
    };
    let seed = masters[0];
    let client = support::lazy_client_of_a_frozen_seed(&local, seed)
        .read_from(redcluster::ReadFrom::Replica)
        .build()
        .await
        .unwrap();
    let before = replica_gets().await;
    let mut p = client.pipeline();
    p.set("ryw-lazy:{a}", "v").get("ryw-lazy:{a}");
    let mut pipeline = Box::pin(p.execute());
    // Planned at its first poll, while the only seed is frozen: no owner known.
    assert!((&mut pipeline).now_or_never().is_none());
    local.resume(seed).unwrap();
    let replies = pipeline.await.unwrap();
    assert_eq!(replies[1], Value::Bulk("v".into()));
    assert_eq!(replica_gets().await, before, "no GET on a replica");
}

/// A command resent after its batch's connection dropped (it may have run; a `SET` may
/// be resent) whose resend is refused until the retries are spent (`CLUSTERDOWN`: the
/// node failed) ends in the lost connection's error, which says it may have run, not in
/// the refusal, which says it did not. A command of the same batch refused before the
/// drop did not run: its own error stays. (A scripted fake.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resend_refused_after_a_lost_connection_says_the_command_may_have_run() {
    let fake = FakeCluster::start(|args, earlier| match (args[0].as_str(), earlier) {
        ("GET", 0) => Action::Reply(Value::ServerError(ServerError::new(
            "TRYAGAIN Multiple keys request during rehashing of slot",
        ))),
        ("GET", _) => Action::Reply(Value::ServerError(ServerError::new(
            "CLUSTERDOWN The cluster is down",
        ))),
        ("SET", 0) => Action::Drop,
        ("SET", _) => Action::Reply(Value::ServerError(ServerError::new(
            "CLUSTERDOWN The cluster is down",
        ))),
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    let client = ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        .retry_on_cluster_down(false)
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .build()
        .await
        .unwrap();
    let mut p = client.pipeline();
    p.get("other").set("k", "v");
    let each = p.execute_each().await;
    match &each[0] {
        Err(e @ Error::ClusterDown(_)) => assert!(!e.may_have_executed(), "{e:?}"),
        other => panic!("GET: {other:?}"),
    }
    match &each[1] {
        Err(e @ (Error::ConnectionLost { .. } | Error::Io { .. })) => {
            assert!(e.may_have_executed(), "{e:?}")
        }
        other => panic!("SET: {other:?}"),
    }
    assert_eq!(fake.count("SET"), 2, "resent once: {:?}", fake.seen());
}

/// A batch's commands resent after its connection dropped take one retry of the
/// client's budget, counted as one; with none left they end in the lost connection's
/// error, as a single command's resend would. Before, they went again whatever the
/// budget (a retry storm's every pipeline resent), and no retry was counted. (A
/// scripted fake: the connection drops after the node read the batch.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_resent_after_a_lost_connection_take_one_retry_of_the_budget() {
    let behave = |args: &[String], earlier: usize| match (args[0].as_str(), earlier) {
        ("GET", 0) => Action::Silent,
        ("EXISTS", 0) => Action::Drop,
        ("GET", _) => Action::Reply(Value::Bulk("v".into())),
        ("EXISTS", _) => Action::Reply(Value::Int(1)),
        _ => Action::Reply(Value::Simple("OK".into())),
    };
    let no_budget = redcluster::RetryBudgetConfig::new(0.0, 0.0, 0.0);
    for budget in [None, Some(no_budget)] {
        let fake = FakeCluster::start(behave).await;
        let mut builder = ClusterClient::builder().nodes([fake.addr.as_str()]);
        if let Some(budget) = budget {
            builder = builder.retry_budget(budget);
        }
        let client = builder.build().await.unwrap();
        let mut p = client.pipeline();
        p.get("a").add(cmd("EXISTS").arg("b"));
        let each = p.execute_each().await;
        if budget.is_none() {
            assert_eq!(each[0].as_ref().unwrap(), &Value::Bulk("v".into()));
            assert_eq!(each[1].as_ref().unwrap(), &Value::Int(1));
            assert_eq!(client.stats().retries, 1, "one for the batch");
            assert_eq!(fake.count("GET"), 2, "resent: {:?}", fake.seen());
        } else {
            for result in &each {
                match result {
                    Err(e @ (Error::ConnectionLost { .. } | Error::Io { .. })) => {
                        assert!(e.may_have_executed(), "{e:?}")
                    }
                    other => panic!("{other:?}"),
                }
            }
            assert_eq!(client.stats().retries, 0);
            assert_eq!(fake.count("GET"), 1, "not resent: {:?}", fake.seen());
        }
    }
    // Nothing to resend (the GET runs before an INCR of its slot that may have run): no
    // retry spent or counted.
    let fake = FakeCluster::start(|args, _| match args[0].as_str() {
        "GET" => Action::Silent,
        "INCR" => Action::Drop,
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    let client = ClusterClient::connect([fake.addr.as_str()]).await.unwrap();
    let mut p = client.pipeline();
    p.get("{k}").add(cmd("INCR").arg("{k}"));
    assert!(p.execute_each().await.iter().all(Result::is_err));
    assert_eq!(client.stats().retries, 0);
    assert_eq!(fake.count("GET"), 1, "{:?}", fake.seen());
}

/// Commands of a slot no node is known to serve yet (a lazily connected client whose
/// seed has not answered) wait for an owner one after another, in the order added.
/// Side by side, each with its own jittered backoff, they ran in any order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_of_a_slot_without_a_known_owner_keep_their_order() {
    use futures_util::FutureExt as _;
    let local = support::cluster(3, 0).await;
    let client = support::lazy_client_of_a_frozen_seed(&local, 0)
        .build()
        .await
        .unwrap();
    let mut p = client.pipeline();
    p.del("{u}:list");
    for i in 0..20 {
        p.rpush("{u}:list", i);
    }
    p.add(cmd("LRANGE").arg("{u}:list").arg(0).arg(-1));
    let mut pipeline = Box::pin(p.execute());
    // Planned at its first poll, while the only seed is frozen: no owner known.
    assert!((&mut pipeline).now_or_never().is_none());
    assert!(client.known_nodes().is_empty());
    local.resume(0).unwrap();
    let replies = pipeline.await.unwrap();
    let pushed: Vec<Value> = (0..20).map(|i| Value::Bulk(i.to_string().into())).collect();
    assert_eq!(replies.last(), Some(&Value::Array(pushed)));
}

/// A node's batch with several blocking commands may take their times added up (the
/// server runs them one after another), on top of the response timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocking_commands_of_one_batch_get_their_block_times_added() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(1))
        .build()
        .await
        .unwrap();
    let mut p = client.pipeline();
    for list in ["{bl}:a", "{bl}:b", "{bl}:c"] {
        p.add(cmd("BLPOP").arg(list).arg(1));
    }
    // About 3 s of blocking: more than the longest one (1 s) and the response timeout.
    let replies = p.execute().await.unwrap();
    assert_eq!(replies, vec![Value::Nil; 3]);
}

/// With no retry allowed (`retry_on_cluster_down(false)`, `max_retries(0)`), a
/// pipeline's `CLUSTERDOWN` or `TRYAGAIN` is the command's answer, as it is for a single
/// command: sent once, not resent (a scripted fake: a real cluster's refusals cannot be
/// held on demand while the test sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_does_not_resend_a_refusal_when_no_retry_is_allowed() {
    for (refusal, code) in [
        ("CLUSTERDOWN The cluster is down", "CLUSTERDOWN"),
        (
            "TRYAGAIN Multiple keys request during rehashing of slot",
            "TRYAGAIN",
        ),
    ] {
        let fake = FakeCluster::start(move |_, _| {
            Action::Reply(Value::ServerError(ServerError::new(refusal)))
        })
        .await;
        let client = ClusterClient::builder()
            .nodes([fake.addr.as_str()])
            .retry_on_cluster_down(false)
            .max_retries(0)
            .build()
            .await
            .unwrap();
        let mut p = client.pipeline();
        for i in 0..4 {
            p.get(format!("cd:{i}"));
        }
        for reply in p.execute_each().await {
            match reply {
                // As a single command's: the cluster's refusal is `ClusterDown`.
                Err(Error::ClusterDown(_)) if code == "CLUSTERDOWN" => {}
                Err(Error::Server(e)) if code != "CLUSTERDOWN" => assert_eq!(e.code(), code),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(fake.count("GET"), 4, "{:?}", fake.seen());
        assert_eq!(client.stats().retries, 0);
    }
}

/// A node that refuses a whole batch (`CLUSTERDOWN` for every command, as when it has
/// lost its view) costs the retry budget one retry, as one request would: the batch
/// waits once and goes again. Each refused command used to spend one, so a pipeline
/// emptied the budget (5 here; 1,000 by default) and most of its commands got the
/// refusal as their answer, as did other requests after it (a scripted fake: a real
/// cluster's refusals cannot be held on demand while the test sends).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_spends_one_retry_of_the_budget() {
    const COMMANDS: usize = 50;
    let fake = FakeCluster::start(|args, earlier| match args[0].as_str() {
        "SET" if earlier < COMMANDS => Action::Reply(Value::ServerError(ServerError::new(
            "CLUSTERDOWN The cluster is down",
        ))),
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    let client = ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        .retry_backoff(Duration::from_millis(5), Duration::from_millis(20))
        .retry_budget(redcluster::RetryBudgetConfig::new(0.0, 0.0, 5.0))
        .build()
        .await
        .unwrap();
    let mut p = client.pipeline();
    for i in 0..COMMANDS {
        p.set(format!("budget:{i}"), i);
    }
    let refused: Vec<_> = p
        .execute_each()
        .await
        .into_iter()
        .enumerate()
        .filter(|(_, reply)| reply.is_err())
        .collect();
    assert!(refused.is_empty(), "{refused:?}");
    assert_eq!(fake.count("SET"), 2 * COMMANDS, "each sent again once");
    assert_eq!(client.stats().retries, 1);
}

/// A pipeline's commands earn the retry budget their share, as requests sent one by one
/// do: after a retry spent the budget (a ratio of 0.1 per request, at most 1 saved), 20
/// pipelined commands earn the next. Before, a pipeline earned nothing, and a client
/// that sends pipelines lived on the budget's time allowance alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_commands_earn_the_retry_budget() {
    let fake = FakeCluster::start(|args, earlier| match args[0].as_str() {
        // The first GET of each single request is refused once.
        "GET" if args[1] == "single" && earlier % 2 == 0 => Action::Reply(Value::ServerError(
            ServerError::new("TRYAGAIN Multiple keys request during rehashing of slot"),
        )),
        _ => Action::Reply(Value::Bulk("v".into())),
    })
    .await;
    let client = ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        .retry_backoff(Duration::from_millis(1), Duration::from_millis(2))
        .retry_budget(redcluster::RetryBudgetConfig::new(0.1, 0.0, 1.0))
        .build()
        .await
        .unwrap();
    // The budget starts full: one retry.
    let v: String = client.get("single").await.unwrap();
    assert_eq!(v, "v");
    let mut p = client.pipeline();
    for i in 0..20 {
        p.get(format!("piped:{i}"));
    }
    assert_eq!(p.execute().await.unwrap().len(), 20);
    let again: Result<String, Error> = client.get("single").await;
    assert_eq!(again.unwrap(), "v", "{:?}", fake.seen());
    assert_eq!(client.stats().retries, 2);
}

/// The same on a real cluster: a primary with one of its slots taken away (`CLUSTER
/// DELSLOTS`) refuses every command (`CLUSTERDOWN`: it no longer sees every slot
/// served) while the other nodes still route that slot to it. A pipeline sent then waits
/// once for that node's share, which runs when the slot is back, on a budget of five
/// retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_rides_out_a_refusing_node_on_a_small_retry_budget() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        // The first wait takes 1 to 2 s: time for the test to give the slot back.
        .retry_backoff(Duration::from_secs(2), Duration::from_secs(2))
        .retry_budget(redcluster::RetryBudgetConfig::new(0.0, 0.0, 5.0))
        .response_timeout(Duration::from_secs(20))
        .build()
        .await
        .unwrap();
    let owner = local.master_of_slot(0).await.unwrap();
    let keys: Vec<String> = (0..60)
        .map(|i| format!("ride:{i}"))
        .filter(|k| key_slot(k.as_bytes()) != 0)
        .collect();
    let owner_addr = local.node(owner).addr();
    let refused_share = keys
        .iter()
        .filter(|k| client.node_for_key(k.as_bytes()).as_deref() == Some(owner_addr.as_str()))
        .count();
    assert!(
        refused_share > 5,
        "{refused_share} commands for the refusing node"
    );
    let owner_conn = local.connect_node(owner).await.unwrap();
    let slots = |what: &'static str| cmd("CLUSTER").arg(what).arg(0);
    owner_conn.send(slots("DELSLOTS")).await.unwrap();
    // `SET`s the node refused: `rejected_calls=N` in its `cmdstat_set` line.
    let rejected = || async {
        let info = match owner_conn.send(cmd("INFO").arg("commandstats")).await {
            Ok(Value::Bulk(b) | Value::Verbatim { text: b, .. }) => b,
            other => panic!("{other:?}"),
        };
        String::from_utf8_lossy(&info)
            .lines()
            .find(|line| line.starts_with("cmdstat_set:"))
            .and_then(|line| {
                line.split_once("rejected_calls=")?
                    .1
                    .split(',')
                    .next()?
                    .parse()
                    .ok()
            })
            .unwrap_or(0u64)
    };
    let before = rejected().await;

    let mut p = client.pipeline();
    for (i, key) in keys.iter().enumerate() {
        p.set(key, i);
    }
    let pipeline = tokio::spawn(async move { p.execute_each().await });
    // Once the node has refused its share, the slot comes back.
    let refused = async {
        while rejected().await < before + refused_share as u64 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), refused)
        .await
        .expect("the node refuses the pipeline's share");
    owner_conn.send(slots("ADDSLOTS")).await.unwrap();
    let failed: Vec<_> = pipeline
        .await
        .unwrap()
        .into_iter()
        .enumerate()
        .filter(|(_, reply)| reply.is_err())
        .collect();
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(client.stats().retries, 1);
    for (i, key) in keys.iter().enumerate() {
        assert_eq!(client.get::<_, usize>(key).await.unwrap(), i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_and_transactions_convert_their_replies_to_one_typed_value() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut p = client.pipeline();
    p.set("typed:{a}", "Ada")
        .get("typed:{a}")
        .incr("typed:{b}", 2);
    let ((), name, n): ((), String, i64) = p.clone().execute_as().await.unwrap();
    assert_eq!((name.as_str(), n), ("Ada", 2));
    // The same pipeline again (cloned before): INCR runs twice in all.
    let again: Vec<Value> = p.execute_as().await.unwrap();
    assert_eq!(again[2], Value::Int(4));
    // Replies that do not fit the type: the commands ran, and the error says so.
    let mut p = client.pipeline();
    p.incr("typed:{b}", 1);
    let r = p.execute_as::<(i64, i64)>().await;
    assert!(
        matches!(&r, Err(e @ Error::Type { .. }) if e.may_have_executed()),
        "{r:?}"
    );
    assert_eq!(client.get::<_, i64>("typed:{b}").await.unwrap(), 5);

    let mut tx = client.transaction();
    tx.add(cmd("INCRBY").arg("{acct}:balance").arg(10))
        .add(cmd("RPUSH").arg("{acct}:history").arg("+10"));
    let (balance, entries): (i64, i64) = tx.execute_as().await.unwrap();
    assert_eq!((balance, entries), (10, 1));
    // A command that failed inside EXEC is an error, even read as `()`.
    let mut tx = client.transaction();
    tx.add(cmd("SET").arg("{acct}:note").arg("x"))
        .add(cmd("LPUSH").arg("{acct}:balance").arg("not a list"));
    let r = tx.execute_as::<()>().await;
    assert!(
        matches!(&r, Err(Error::Server(e)) if e.code() == "WRONGTYPE"),
        "{r:?}"
    );
    // Pairs from a hash (a map over RESP3) and from a sorted set with scores.
    client
        .query::<()>(cmd("HSET").arg("{acct}:h").arg("f").arg("v"))
        .await
        .unwrap();
    let fields: Vec<(String, String)> = client.query(cmd("HGETALL").arg("{acct}:h")).await.unwrap();
    assert_eq!(fields, [("f".to_string(), "v".to_string())]);
    client
        .query::<()>(cmd("ZADD").arg("{acct}:z").arg(1.5).arg("m"))
        .await
        .unwrap();
    let scored: Vec<(String, f64)> = client
        .query(
            cmd("ZRANGE")
                .arg("{acct}:z")
                .arg(0)
                .arg(-1)
                .arg("WITHSCORES"),
        )
        .await
        .unwrap();
    assert_eq!(scored, [("m".to_string(), 1.5)]);
    // The map types read the same reply (pairs over RESP3, flat over RESP2), an odd
    // number of members too; a whole score reads as an integer over both.
    client
        .query::<()>(cmd("ZADD").arg("{acct}:z").arg(2).arg("n").arg(5).arg("o"))
        .await
        .unwrap();
    let with_scores = || {
        cmd("ZRANGE")
            .arg("{acct}:z")
            .arg(0)
            .arg(-1)
            .arg("WITHSCORES")
    };
    let resp2 = ClusterClient::builder()
        .nodes(local.seeds())
        .protocol(redcluster::Protocol::Resp2)
        .build()
        .await
        .unwrap();
    for (protocol, client) in [("resp3", &client), ("resp2", &resp2)] {
        let scores: HashMap<String, f64> = client.query(with_scores()).await.unwrap();
        assert_eq!(scores.len(), 3, "{protocol}");
        assert_eq!(scores["o"], 5.0, "{protocol}");
        let sorted: BTreeMap<String, f64> = client.query(with_scores()).await.unwrap();
        assert_eq!(
            sorted.keys().collect::<Vec<_>>(),
            ["m", "n", "o"],
            "{protocol}"
        );
        let score: i64 = client
            .query(cmd("ZSCORE").arg("{acct}:z").arg("o"))
            .await
            .unwrap();
        assert_eq!(score, 5, "{protocol}");
    }
    // An odd counter past 2^53 is no f64 (it would read one off), but is an i64; a
    // score past f32's range is no f32.
    client
        .query::<()>(cmd("SET").arg("{acct}:big").arg(9_007_199_254_740_993_i64))
        .await
        .unwrap();
    let as_f64 = client.get::<_, f64>("{acct}:big").await;
    assert!(matches!(as_f64, Err(Error::Type { .. })), "{as_f64:?}");
    assert_eq!(
        client.get::<_, i64>("{acct}:big").await.unwrap(),
        9_007_199_254_740_993
    );
    let incremented = client
        .query::<f64>(cmd("INCRBY").arg("{acct}:big").arg(2))
        .await;
    assert!(
        matches!(incremented, Err(Error::Type { .. })),
        "{incremented:?}"
    );
    client
        .query::<()>(cmd("ZADD").arg("{acct}:z").arg("1e39").arg("huge"))
        .await
        .unwrap();
    for (protocol, client) in [("resp3", &client), ("resp2", &resp2)] {
        let huge = client
            .query::<f32>(cmd("ZSCORE").arg("{acct}:z").arg("huge"))
            .await;
        assert!(
            matches!(huge, Err(Error::Type { .. })),
            "{protocol}: {huge:?}"
        );
        let huge: f64 = client
            .query(cmd("ZSCORE").arg("{acct}:z").arg("huge"))
            .await
            .unwrap();
        assert_eq!(huge, 1e39, "{protocol}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_replica_reads_a_pipeline_reads_its_own_writes() {
    let local = support::cluster(3, 1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(redcluster::ReadFrom::Replica)
        .build()
        .await
        .unwrap();
    // Each pipeline writes a key and reads it back: the read runs after the write, on
    // the primary, never on a replica the write has not reached.
    for i in 0..200 {
        let key = format!("ryw:{}", i % 10);
        let mut p = client.pipeline();
        p.set(&key, i);
        p.get(&key);
        let replies = p.execute().await.unwrap();
        assert_eq!(
            replies[1],
            Value::Bulk(i.to_string().into()),
            "pipeline {i}"
        );
    }
    // A pipeline that only reads still reads from replicas.
    let masters = local.masters().await.unwrap();
    let replica_gets = || async {
        let mut total = 0;
        for node in (0..6).filter(|n| !masters.contains(n)) {
            total += support::calls(&local, node, "get").await;
        }
        total
    };
    let before = replica_gets().await;
    let mut p = client.pipeline();
    for i in 0..10 {
        p.get(format!("ryw:{i}"));
    }
    p.execute().await.unwrap();
    assert_eq!(replica_gets().await - before, 10);
    // A write split over slots (`MSET` of two slots) counts as a write of each: their
    // reads go to the primaries.
    assert_ne!(key_slot(b"ryw:0"), key_slot(b"ryw:1"));
    let before = replica_gets().await;
    let mut p = client.pipeline();
    p.add(cmd("MSET").arg("ryw:0").arg("x").arg("ryw:1").arg("y"));
    p.get("ryw:0").get("ryw:1");
    p.execute().await.unwrap();
    assert_eq!(replica_gets().await - before, 0);
}

/// How many of a pipeline of `INCR`s of one counter (then other commands) were answered
/// before it was cut short: the results are that many replies, in order (1, 2, ...),
/// more than none and fewer than the `before` `INCR`s, then only errors, each as
/// `failed` expects.
fn answered_prefix(
    each: &[redcluster::Result<Value>],
    before: usize,
    failed: impl Fn(&Error) -> bool,
) -> usize {
    let answered = each.iter().take_while(|r| r.is_ok()).count();
    assert!(
        answered > 0 && answered < before,
        "{answered} answered; first failure: {:?}",
        each.iter().find(|r| r.is_err())
    );
    for (i, result) in each.iter().enumerate() {
        match result {
            Ok(v) => {
                assert!(i < answered, "command {i} answered after a failure: {v:?}");
                assert_eq!(v, &Value::Int(i as i64 + 1), "INCR {i}");
            }
            Err(e) => assert!(failed(e), "command {i}: {e:?}"),
        }
    }
    answered
}

/// A connection lost part way through a pipeline: the replies that came before the loss
/// are answers (those commands ran, once), and only the commands after them may or may
/// not have run. The node closes the connection itself: the reply to a `GET` late in the
/// pipeline overflows the output buffer limit set for the test. The server reads a
/// large pipeline in chunks (16 KB) and sends each chunk's replies before it reads the
/// next, so the `INCR`s of the chunks before the `GET`'s are answered before the close.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_came_before_a_lost_connection_are_answers() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let (counter, big) = ("{partial}:n", "{partial}:big");
    let owner = support::owner_index(&local, &client, counter);
    let node = local.connect_node(owner).await.unwrap();
    // Not through the client: a large request grows the server's read buffer for the
    // connection, and the server would then read the whole pipeline at once.
    let set_big = cmd("SET").arg(big).arg(vec![b'x'; 2 << 20]);
    assert_eq!(
        node.send(set_big).await.unwrap(),
        Value::Simple("OK".into())
    );
    let limit = cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg("normal 1mb 1mb 0");
    assert_eq!(node.send(limit).await.unwrap(), Value::Simple("OK".into()));

    const BEFORE: usize = 2000;
    let mut p = client.pipeline();
    for _ in 0..BEFORE {
        p.incr(counter, 1);
    }
    p.get(big);
    for _ in 0..10 {
        p.incr(counter, 1);
    }
    let each = p.execute_each().await;

    let unlimited = cmd("CONFIG")
        .arg("SET")
        .arg("client-output-buffer-limit")
        .arg("normal 0 0 0");
    assert_eq!(
        node.send(unlimited).await.unwrap(),
        Value::Simple("OK".into())
    );
    let answered = answered_prefix(&each, BEFORE, Error::may_have_executed);
    // None of them was sent twice; the `INCR`s of the `GET`'s chunk before it ran
    // unanswered, those after it never ran.
    let n: i64 = client.get(counter).await.unwrap();
    assert!(
        (answered as i64..=BEFORE as i64).contains(&n),
        "counter {n}, {answered} answered"
    );
}

/// A pipeline whose deadline passes part way: the replies that came in time are
/// answers, and only the commands after them time out. A script late in the pipeline
/// holds the node past the deadline, after the chunks the server read before it were
/// answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_that_came_before_the_deadline_are_answers() {
    let local = support::cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let counter = "{partial}:n";
    let hasty = client.with_response_timeout(Duration::from_millis(300));
    const BEFORE: usize = 2000;
    let mut p = hasty.pipeline();
    for _ in 0..BEFORE {
        p.incr(counter, 1);
    }
    let spin = "local s = redis.call('TIME') repeat local n = redis.call('TIME') \
                until (n[1] - s[1]) * 1000000 + (n[2] - s[2]) > 800000 return 1";
    p.add(cmd("EVAL").arg(spin).arg(1).arg(counter));
    p.incr(counter, 1);
    let each = p.execute_each().await;

    answered_prefix(&each, BEFORE, |e| matches!(e, Error::Timeout { .. }));
    // Every command ran once, answered in time or not: none was sent twice.
    let n: i64 = client.get(counter).await.unwrap();
    assert_eq!(n, BEFORE as i64 + 1);
}

/// A node that takes `MULTI` but does not know `EXEC` (renamed there, the client not
/// told) kept the shared connection inside the transaction: every later command of
/// every caller on it was queued, answered `QUEUED` (a `SET` that never ran read as
/// done, a `GET` read "QUEUED"). The connection is closed instead (the server drops the
/// transaction with it), and the requests after are served on a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_exec_the_node_does_not_know_leaves_no_connection_inside_it() {
    let local = redcluster::testkit::LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .config("rename-command", "EXEC EXEC_hidden")
        .start()
        .await
        .unwrap();
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{unknown-exec}:n"));
    let err = tx.execute().await.unwrap_err();
    assert_eq!(err.server_code(), Some("ERR"), "{err:?}");
    client.set("{unknown-exec}:k", "v").await.unwrap();
    let v: Option<String> = client.get("{unknown-exec}:k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    // Neither the transaction's INCR nor anything after it ran inside it.
    let n: Option<i64> = client.get("{unknown-exec}:n").await.unwrap();
    assert_eq!(n, None);
}

/// A command disabled on the cluster (`rename_command(.., "")`) fails alone, unsent; the
/// commands beside it in its node's batch run. It failed the whole batch, whose other
/// commands were resent one by one as retries of the client's budget, or failed with
/// its error once the budget was spent (here from the start).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_command_in_a_pipeline_fails_alone() {
    let local = redcluster::testkit::LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .rename_command("GETDEL", "")
        .retry_budget(redcluster::RetryBudgetConfig::new(0.0, 0.0, 0.0))
        .build()
        .await
        .unwrap();
    let mut p = client.pipeline();
    p.set("{disabled}:x", 1);
    p.add(cmd("GETDEL").arg("{disabled}:y"));
    let each = p.execute_each().await;
    assert!(each[0].is_ok(), "{each:?}");
    assert!(
        matches!(&each[1], Err(Error::Config(m)) if m.contains("GETDEL")),
        "{each:?}"
    );
    let x: Option<String> = client.get("{disabled}:x").await.unwrap();
    assert_eq!(x.as_deref(), Some("1"));
    assert_eq!(client.stats().retries, 0);
}
