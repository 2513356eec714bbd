//! Error handling: the seed's `try`/`except` block in Rust.
//!
//! The seed catches `ClusterDownError`, `ConnectionError`, `TimeoutError` and
//! `ResponseError`. Here one `match` on [`Error`] does the same, and the predicates
//! `is_retryable()` (safe to send again: it cannot have run) and `may_have_executed()`
//! (it may have run: only an idempotent command may be sent again) decide what to do;
//! `retry_with_backoff` applies that rule. Shown: a `WRONGTYPE` server error (not
//! retried: fix the code), a `CrossSlot` error (fix the keys with a hash tag), a
//! connection error (a seed nobody listens on), and, on the local cluster, timeouts
//! against a master frozen with the testkit's `pause`: a `GET` that is retried with
//! backoff until the node is back, and an `INCR` that is not retried because it may have
//! run, and indeed did.
//!
//! ```text
//! cargo run --example error_handling                 # spawns a local 6-node cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example error_handling
//! ```
//!
//! With `REDIS_CLUSTER_NODES` the fault part (pausing a node) is skipped: faults are only
//! injected into the cluster the example spawns.

#[path = "common/mod.rs"]
mod common;

use std::future::Future;
use std::time::Duration;

use redcluster::testkit::LocalCluster;
use redcluster::{cmd, key_slot, ClusterClient, Error, Result};

/// The seed's `except` clauses as one `match`: what the error is and what to do.
fn advice(e: &Error) -> String {
    match e {
        Error::ClusterDown(_) => {
            "cluster down (the client already retried with backoff until its deadline): \
             wait a second and retry"
                .into()
        }
        Error::Io { .. } | Error::ConnectionLost { .. } => format!(
            "connection failed; the client reconnects by itself (no reconnect_cluster()): {}",
            if e.may_have_executed() {
                "it may have run, retry only if idempotent"
            } else {
                "it never reached the server, safe to retry"
            }
        ),
        Error::Timeout {
            may_have_executed: true,
        } => "timed out: it may have run; retry with backoff only if the command is idempotent"
            .into(),
        Error::Timeout { .. } => {
            "timed out before it was sent (the node is slow or overloaded): safe to retry \
             with backoff"
                .into()
        }
        Error::CircuitOpen { node } => format!("node {node} is failing fast; retry after a pause"),
        Error::CrossSlot { slots } => {
            format!("keys in slots {slots:?}: a bug in the key design, use a hash tag")
        }
        Error::Partial { source } => format!(
            "applied on some slots or nodes only ({source}): check what is there before \
             sending it again"
        ),
        Error::Server(_) => match e.server_code() {
            Some("WRONGTYPE") => "the key holds another type: a bug, do not retry".into(),
            Some("NOPERM") | Some("NOAUTH") => "not allowed: fix the ACL, do not retry".into(),
            Some("OOM") => "server out of memory: back off, alert".into(),
            Some(code) => format!("server error {code}: do not retry blindly"),
            None => "server error".into(),
        },
        _ => "other error: log it".into(),
    }
}

/// Prints an error the way an application would log it.
fn report(what: &str, e: &Error) {
    println!("   {what}");
    println!("     error:  {e}");
    println!(
        "     is_retryable={} may_have_executed={} server_code={:?}",
        e.is_retryable(),
        e.may_have_executed(),
        e.server_code()
    );
    println!("     action: {}", advice(e));
}

/// The seed's `retry_with_backoff`, with the rule it leaves out: an error that
/// `may_have_executed` is retried only for idempotent commands (GET, SET, DEL, ...), never
/// for INCR or LPUSH, which would apply twice.
async fn retry_with_backoff<T, F, Fut>(
    what: &str,
    idempotent: bool,
    attempts: u32,
    mut op: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut delay = Duration::from_millis(100);
    for attempt in 1.. {
        let e = match op().await {
            Ok(v) => {
                println!("   {what}: attempt {attempt} succeeded");
                return Ok(v);
            }
            Err(e) => e,
        };
        let transient = matches!(
            e,
            Error::Timeout { .. }
                | Error::Io { .. }
                | Error::ConnectionLost { .. }
                | Error::ClusterDown(_)
                | Error::CircuitOpen { .. }
        );
        let safe = e.is_retryable() || (idempotent && transient);
        if !safe || attempt >= attempts {
            println!("   {what}: attempt {attempt} failed ({e}); giving up");
            return Err(e);
        }
        let jitter = Duration::from_millis(fastrand::u64(0..=delay.as_millis() as u64 / 4));
        println!("   {what}: attempt {attempt} failed ({e}); retrying in {delay:?} (+jitter)");
        tokio::time::sleep(delay + jitter).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    unreachable!("the loop returns")
}

#[tokio::main]
async fn main() -> Result<()> {
    let (client, cluster) = common::connect().await?;

    println!("\n1. a server error: LPUSH on a key that holds a string");
    client.set("errors:name", "Ada").await?;
    match client.lpush("errors:name", ["x"]).await {
        Ok(n) => println!("   unexpected success: {n}"),
        Err(e) => report("LPUSH errors:name x", &e),
    }

    println!("\n2. a command that must run on one node, with keys in two slots");
    match client
        .query::<String>(cmd("RENAME").arg("errors:name").arg("errors:other"))
        .await
    {
        Ok(_) => println!("   unexpected success"),
        Err(e) => report("RENAME errors:name errors:other", &e),
    }

    println!("\n3. a connection error: a seed nobody listens on");
    match ClusterClient::builder()
        .nodes(["127.0.0.1:1"])
        .connect_timeout(Duration::from_millis(500))
        .build()
        .await
    {
        Ok(_) => println!("   unexpected success"),
        Err(e) => report("connect to 127.0.0.1:1", &e),
    }

    match &cluster {
        Some(cluster) => timeouts(cluster).await?,
        None => println!(
            "\n4. timeouts: skipped (REDIS_CLUSTER_NODES is set; faults are only injected \
             into a cluster the example spawns)"
        ),
    }

    client
        .del(["errors:name", "{errors:slow}:counter", "{errors:slow}:key"])
        .await?;
    Ok(())
}

/// Freezes the master of one slot (SIGSTOP, as a long GC pause or a partition would) and
/// shows what timeouts look like, and which requests may be sent again.
async fn timeouts(cluster: &LocalCluster) -> Result<()> {
    const KEY: &str = "{errors:slow}:key";
    const COUNTER: &str = "{errors:slow}:counter";
    // A client with a short deadline, so the example does not wait 5 s per request.
    let client = ClusterClient::builder()
        .nodes(cluster.seeds())
        .response_timeout(Duration::from_millis(300))
        .build()
        .await?;
    client.set(KEY, "still here").await?;
    client.del([COUNTER]).await?;
    let master = cluster.master_of_slot(key_slot(KEY.as_bytes())).await?;

    println!(
        "\n4. timeouts: node {master} ({}), master of slot {}, is paused (SIGSTOP)",
        cluster.node_addr(master),
        key_slot(KEY.as_bytes())
    );
    cluster.pause(master)?;

    match client.get::<_, Option<String>>(KEY).await {
        Ok(v) => println!("   unexpected answer {v:?}"),
        Err(e) => report("GET (read-only, idempotent)", &e),
    }
    match client.query::<i64>(cmd("INCR").arg(COUNTER)).await {
        Ok(v) => println!("   unexpected answer {v}"),
        Err(e) => report("INCR (not idempotent: NOT retried)", &e),
    }

    println!("   the node is resumed in 800 ms; meanwhile GET is retried with backoff:");
    let resumed = async {
        tokio::time::sleep(Duration::from_millis(800)).await;
        cluster.resume(master)
    };
    let retried = retry_with_backoff("GET", true, 8, || client.get::<_, Option<String>>(KEY));
    let (resumed, value) = tokio::join!(resumed, retried);
    resumed?;
    println!("   GET -> {:?}", value?);

    let counter: Option<i64> = client.get(COUNTER).await?;
    println!(
        "   the INCR that timed out did run once the node woke up: counter = {counter:?} \
         (retrying it would have made it 2)"
    );
    Ok(())
}
