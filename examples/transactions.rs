//! Transactions: `MULTI`/`EXEC` on one slot, and optimistic `WATCH` transactions.
//!
//! Shows `client.transaction()` running commands atomically on keys that share a hash
//! tag (and `Error::CrossSlot` when they do not), then a balance transfer between
//! `{acct}:a` and `{acct}:b` with `client.watch_retry(...)`: the transfer reads both
//! balances under `WATCH`, a concurrent writer deposits into `{acct}:a` in between, `EXEC`
//! reports the conflict and the transfer runs again with fresh balances. Last, several
//! transfers race a depositor, and the total comes out exact.
//!
//! ```text
//! cargo run --example transactions                  # spawns a local 6-node cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example transactions
//! ```

#[path = "common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use redcluster::{cmd, key_slot, ClusterClient, Error, Value};

const A: &str = "{acct}:a";
const B: &str = "{acct}:b";

/// Moves `amount` from `{acct}:a` to `{acct}:b` if `a` has enough: an optimistic
/// transaction, retried (up to 10 times) when another client changed a watched key.
/// `on_attempt` runs after the balances were read, before `EXEC`; it returns the attempt
/// number. `Ok(None)`: every attempt conflicted. `Ok(Some(false))`: not enough money.
async fn transfer(
    client: &ClusterClient,
    amount: i64,
    on_attempt: impl Fn(u32) -> Option<tokio::task::JoinHandle<()>>,
) -> redcluster::Result<Option<bool>> {
    let attempts = AtomicU32::new(0);
    let attempts = &attempts;
    let on_attempt = &on_attempt;
    client
        .watch_retry(&[A, B], 10, |mut watched| async move {
            let attempt = attempts.fetch_add(1, Ordering::SeqCst) + 1;
            let a: Option<i64> = watched.query(cmd("GET").arg(A)).await?;
            let b: Option<i64> = watched.query(cmd("GET").arg(B)).await?;
            let (a, b) = (a.unwrap_or(0), b.unwrap_or(0));
            println!("   attempt {attempt}: read a={a} b={b}");
            if let Some(writer) = on_attempt(attempt) {
                // Wait for the concurrent write to land between our read and our EXEC.
                let _ = writer.await;
            }
            if a < amount {
                return Ok(Some(false)); // nothing to commit; WATCH ends with the connection
            }
            let committed = watched
                .exec(vec![
                    cmd("SET").arg(A).arg(a - amount),
                    cmd("SET").arg(B).arg(b + amount),
                ])
                .await?;
            match committed {
                Some(_) => println!("   attempt {attempt}: EXEC committed"),
                None => println!("   attempt {attempt}: EXEC returned nil: a watched key changed"),
            }
            Ok(committed.map(|_| true))
        })
        .await
}

#[tokio::main]
async fn main() -> redcluster::Result<()> {
    let (client, _cluster) = common::connect().await?;

    println!("\n1. MULTI/EXEC on one slot (keys share the tag {{user:1}})");
    client.del(["{user:1}:visits", "{user:1}:last"]).await?;
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("{user:1}:visits"));
    tx.add(cmd("SET").arg("{user:1}:last").arg("2024-05-01"));
    tx.add(cmd("LPUSH").arg("{user:1}:last").arg("x")); // fails when it runs
    tx.add(cmd("INCR").arg("{user:1}:visits"));
    let replies = tx.execute().await?;
    println!(
        "   INCR, SET, LPUSH (wrong type), INCR -> {}",
        common::show(&Value::Array(replies))
    );
    println!("   (a command failing inside EXEC does not undo the others: Redis has no rollback)");

    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("user:1:visits"));
    tx.add(cmd("SET").arg("user:2:last").arg("now"));
    match tx.execute().await {
        Err(Error::CrossSlot { slots }) => {
            println!("   untagged keys user:1:visits, user:2:last -> Error::CrossSlot {slots:?}")
        }
        other => println!("   untagged keys -> unexpected {other:?}"),
    }

    println!(
        "\n2. WATCH transfer of 30 from {A} to {B} (slot {}), with a concurrent deposit",
        key_slot(A.as_bytes())
    );
    client.mset([(A, 100), (B, 0)]).await?;
    let writer = client.clone();
    let done = transfer(&client, 30, |attempt| {
        (attempt == 1).then(|| {
            let writer = writer.clone();
            tokio::spawn(async move {
                let a = writer.incr(A, 50).await.expect("deposit");
                println!("   concurrent writer: INCRBY {A} 50 -> {a}");
            })
        })
    })
    .await?;
    let balances: Vec<i64> = client.mget([A, B]).await?;
    println!(
        "   transfer done: {done:?}; a={} b={} (100 + 50 deposited - 30 moved = 120 in a)",
        balances[0], balances[1]
    );

    println!("\n3. 8 transfers of 10 race 20 deposits of 1");
    client.mset([(A, 100), (B, 0)]).await?;
    let conflicts = Arc::new(AtomicU32::new(0));
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        let conflicts = Arc::clone(&conflicts);
        tasks.push(tokio::spawn(async move {
            client
                .watch_retry(&[A, B], 50, |mut w| {
                    let conflicts = Arc::clone(&conflicts);
                    async move {
                        let (a, b): (i64, i64) = (
                            w.query(cmd("GET").arg(A)).await?,
                            w.query(cmd("GET").arg(B)).await?,
                        );
                        tokio::task::yield_now().await;
                        let done = w
                            .exec(vec![
                                cmd("SET").arg(A).arg(a - 10),
                                cmd("SET").arg(B).arg(b + 10),
                            ])
                            .await?;
                        if done.is_none() {
                            conflicts.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(done.map(|_| ()))
                    }
                })
                .await
        }));
    }
    let depositor = {
        let client = client.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                client.incr(A, 1).await?;
                tokio::task::yield_now().await;
            }
            Ok::<_, Error>(())
        })
    };
    let mut committed = 0;
    for task in tasks {
        if task.await.expect("transfer task")?.is_some() {
            committed += 1;
        }
    }
    depositor.await.expect("depositor")?;
    let balances: Vec<i64> = client.mget([A, B]).await?;
    println!(
        "   {committed} of 8 transfers committed after {} conflicts (retried); a={} b={} total={} (expected 120)",
        conflicts.load(Ordering::Relaxed),
        balances[0],
        balances[1],
        balances[0] + balances[1]
    );

    client
        .del([A, B, "{user:1}:visits", "{user:1}:last"])
        .await?;
    Ok(())
}
