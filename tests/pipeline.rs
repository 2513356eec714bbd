//! Explicit pipelines and transactions against real local clusters: ordering across
//! slots, per-command failures, redirects that resend one command only, atomicity and
//! the one-slot rule.

mod support;

use std::time::Duration;

use redcluster::{cmd, key_slot, ClusterClient, Error, Value};
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
    let mut p = client.pipeline();
    for k in &keys {
        p.get(k.as_str());
    }
    let replies = p.execute().await.unwrap();
    for (k, r) in keys.iter().zip(&replies) {
        assert_eq!(r, &Value::Bulk(k.clone().into()));
    }
    assert!(
        client.stats().ask >= before.ask + 20,
        "{:?}",
        client.stats()
    );
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
    // Wrong arity of a known command is caught before sending.
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{t}:n"))
        .add(cmd("GET").arg("{t}:n").arg("extra"));
    assert!(matches!(tx.execute().await.unwrap_err(), Error::Config(_)));
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
