//! Hash tags: the seed's "Key Design and Hash Tags" section in Rust.
//!
//! Shows that keys sharing a `{tag}` hash to one slot (and so one node) while untagged
//! keys scatter; that `MGET` works across slots anyway (the client splits it into one
//! `MGET` per slot, unlike redis-py, where it fails); that a multi-key command which must
//! be atomic (`MSETNX`, `RENAME`, a transaction) fails with `Error::CrossSlot` naming the
//! slots, before anything is sent; and how a hash tag fixes it.
//!
//! ```text
//! cargo run --example hash_tags                      # spawns a local 6-node cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example hash_tags
//! ```

#[path = "common/mod.rs"]
mod common;

use redcluster::{cmd, hash_tag, key_slot, ClusterClient, Error};

#[tokio::main]
async fn main() -> redcluster::Result<()> {
    let (client, _cluster) = common::connect().await?;

    let good = [
        "user:{1234}:profile",
        "user:{1234}:settings",
        "user:{1234}:preferences",
    ];
    let bad = [
        "user:1234:profile",
        "user:1234:settings",
        "user:1234:preferences",
    ];
    client.del(good.iter().chain(&bad)).await?;

    println!("\n1. keys with a hash tag share one slot; keys without one scatter");
    for key in good.iter().chain(&bad) {
        print_slot(&client, key);
    }

    println!("\n2. MGET: within one slot it is one command on one node; across slots the");
    println!("   client splits it per slot, sends the parts concurrently, and keeps key order");
    client
        .mset(good.iter().map(|k| (*k, format!("value of {k}"))))
        .await?;
    client
        .mset([
            ("user:1234:profile", "Ada"),
            ("user:5678:settings", "dark-mode"),
        ])
        .await?;
    let same_slot: Vec<Option<String>> = client.mget(&good[..2]).await?;
    println!("   MGET {} {} -> {same_slot:?}", good[0], good[1]);
    let across: Vec<Option<String>> = client
        .mget(["user:1234:profile", "user:5678:settings", "user:0:missing"])
        .await?;
    println!(
        "   MGET user:1234:profile (slot {}) user:5678:settings (slot {}) user:0:missing -> {across:?}",
        key_slot(b"user:1234:profile"),
        key_slot(b"user:5678:settings"),
    );

    println!("\n3. commands that must be atomic cannot span slots: Error::CrossSlot, nothing sent");
    let attempts = [
        (
            "MSETNX user:1234:profile .. user:1234:settings ..",
            cmd("MSETNX")
                .arg("user:1234:profile")
                .arg("a")
                .arg("user:1234:settings")
                .arg("b"),
        ),
        (
            "RENAME user:1234:profile user:1234:preferences",
            cmd("RENAME")
                .arg("user:1234:profile")
                .arg("user:1234:preferences"),
        ),
    ];
    for (what, command) in attempts {
        match client.query::<redcluster::Value>(command).await {
            Err(Error::CrossSlot { slots }) => {
                println!("   {what:<48} -> Error::CrossSlot, slots {slots:?}")
            }
            other => println!("   {what:<48} -> unexpected: {other:?}"),
        }
    }
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("user:1234:visits"));
    tx.add(cmd("SET").arg("user:1234:last_seen").arg("now"));
    match tx.execute().await {
        Err(Error::CrossSlot { slots }) => println!(
            "   {:<48} -> Error::CrossSlot, slots {slots:?}",
            "MULTI INCR user:1234:visits SET user:1234:last_seen"
        ),
        other => println!("   transaction -> unexpected: {other:?}"),
    }

    println!("\n4. the fix: give related keys one hash tag");
    println!(
        "   the tag of {:?} is {:?}: only it is hashed",
        good[0],
        String::from_utf8_lossy(hash_tag(good[0].as_bytes()))
    );
    client
        .del(["user:{1234}:new_a", "user:{1234}:new_b"])
        .await?;
    let set: i64 = client
        .query(
            cmd("MSETNX")
                .arg("user:{1234}:new_a")
                .arg("a")
                .arg("user:{1234}:new_b")
                .arg("b"),
        )
        .await?;
    println!("   MSETNX user:{{1234}}:new_a .. user:{{1234}}:new_b .. -> {set} (all set)");
    let ok: String = client
        .query(
            cmd("RENAME")
                .arg("user:{1234}:new_a")
                .arg("user:{1234}:renamed"),
        )
        .await?;
    println!("   RENAME user:{{1234}}:new_a user:{{1234}}:renamed -> {ok}");
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("user:{1234}:visits"));
    tx.add(cmd("SET").arg("user:{1234}:last_seen").arg("now"));
    let replies = tx.execute().await?;
    println!(
        "   MULTI INCR user:{{1234}}:visits SET user:{{1234}}:last_seen EXEC -> {}",
        common::show(&redcluster::Value::Array(replies))
    );

    println!("\n   rule of thumb: tag what must change together ({{user-id}}, {{order-id}}),");
    println!("   never one tag for everything, or that slot becomes a hot spot");

    client
        .del([
            "user:{1234}:profile",
            "user:{1234}:settings",
            "user:{1234}:preferences",
            "user:{1234}:new_b",
            "user:{1234}:renamed",
            "user:{1234}:visits",
            "user:{1234}:last_seen",
            "user:1234:profile",
            "user:5678:settings",
        ])
        .await?;
    Ok(())
}

fn print_slot(client: &ClusterClient, key: &str) {
    println!(
        "   {key:<24} slot {:>5} on {}",
        key_slot(key.as_bytes()),
        client.node_for_key(key.as_bytes()).unwrap_or_default()
    );
}
