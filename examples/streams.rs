//! Streams as a work queue: producers append orders, a consumer group of three workers
//! shares them (each order handled by one worker), every order is acknowledged, and
//! nothing is left pending.
//!
//! ```text
//! cargo run --example streams                       # spawns a local 6-node cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example streams
//! ```

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use redcluster::{cmd, ClusterClient, Result, Value};

/// The stream, and with it its consumer group, lives on the primary of its slot (its
/// hash tag's). A name no application would use: the example deletes it.
const STREAM: &str = "example:streams:orders:{eu}";
const GROUP: &str = "billing";
const ORDERS: usize = 30;

#[tokio::main]
async fn main() -> Result<()> {
    let (client, _cluster) = common::connect().await?;
    client.del([STREAM]).await?;
    // Every worker may call this at start: `false` when the group exists already.
    let created = client.xgroup_create(STREAM, GROUP, "$").await?;
    println!("group {GROUP} on {STREAM} created: {created}");

    for n in 0..ORDERS {
        let amount = format!("{}.00", 10 + n);
        client
            .xadd(STREAM, [("order", n.to_string()), ("amount", amount)])
            .await?;
    }
    println!("{} orders appended", client.xlen(STREAM).await?);

    let workers: Vec<_> = (1..=3)
        .map(|w| tokio::spawn(work(client.clone(), format!("worker-{w}"))))
        .collect();
    let mut handled_by: BTreeMap<String, usize> = BTreeMap::new();
    let mut orders: Vec<usize> = Vec::new();
    for worker in workers {
        let (name, handled) = worker.await.expect("a worker panicked")?;
        handled_by.insert(name, handled.len());
        orders.extend(handled);
    }
    orders.sort_unstable();
    println!("orders handled per worker: {handled_by:?}");
    assert_eq!(
        orders,
        (0..ORDERS).collect::<Vec<_>>(),
        "each order handled exactly once"
    );

    // XPENDING's summary: nothing delivered and left unacknowledged.
    let pending: Value = client.query(cmd("XPENDING").arg(STREAM).arg(GROUP)).await?;
    println!("pending after the run: {pending:?}");
    match &pending {
        Value::Array(summary) => assert_eq!(summary.first(), Some(&Value::Int(0))),
        other => panic!("XPENDING answered {other:?}"),
    }
    client.del([STREAM]).await?;
    Ok(())
}

/// Reads batches of new orders for `name` until a read waits 200 ms for nothing;
/// acknowledges each batch once handled. Returns the orders it handled.
async fn work(client: ClusterClient, name: String) -> Result<(String, Vec<usize>)> {
    let mut handled = Vec::new();
    loop {
        let batch = client
            .xreadgroup(GROUP, &name, STREAM, 4, Some(Duration::from_millis(200)))
            .await?;
        if batch.is_empty() {
            return Ok((name, handled));
        }
        for entry in &batch {
            // ... bill the order ...
            let order = entry
                .get("order")
                .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok())
                .expect("every entry names its order");
            handled.push(order);
        }
        let ids: Vec<&String> = batch.iter().map(|e| &e.id).collect();
        client.xack(STREAM, GROUP, ids).await?;
    }
}
