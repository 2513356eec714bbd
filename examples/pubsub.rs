//! Pub/Sub: a classic subscription, a pattern and sharded channels on one subscriber;
//! publish a few messages and print what arrives.
//!
//! ```text
//! cargo run --example pubsub                      # spawns a local 6-node cluster
//! REDIS_CLUSTER_NODES=127.0.0.1:7000 cargo run --example pubsub
//! ```

#[path = "common/mod.rs"]
mod common;

use std::time::Duration;

use futures_util::StreamExt;
use redcluster::PubSubEvent;

#[tokio::main]
async fn main() -> redcluster::Result<()> {
    let (client, _cluster) = common::connect().await?;

    let mut sub = client.subscriber().await?;
    sub.subscribe(["news"]).await?;
    sub.psubscribe(["log.*"]).await?;
    // Sharded channels live on the primary owning their slot, like keys.
    let sharded = ["orders:{eu}", "orders:{us}", "orders:{asia}"];
    sub.ssubscribe(sharded).await?;
    for channel in sharded {
        println!(
            "sharded channel {channel:<14} on {}",
            client.node_for_key(channel.as_bytes()).unwrap_or_default()
        );
    }

    client.publish("news", "hello, cluster").await?;
    client.publish("log.app", "started").await?;
    for (i, channel) in sharded.iter().enumerate() {
        let receivers = client
            .spublish(*channel, format!("order #{i} paid"))
            .await?;
        println!("SPUBLISH {channel} -> {receivers} receiver(s)");
    }

    let expected = 2 + sharded.len();
    let mut received = 0;
    while received < expected {
        let event = match tokio::time::timeout(Duration::from_secs(5), sub.next()).await {
            Ok(Some(event)) => event,
            Ok(None) => break,
            Err(_) => {
                println!("no more messages within 5 s");
                break;
            }
        };
        match event {
            PubSubEvent::Message(m) => {
                received += 1;
                let kind = match (&m.pattern, m.sharded) {
                    (_, true) => "sharded".to_string(),
                    (Some(p), _) => format!("pattern {}", String::from_utf8_lossy(p)),
                    (None, false) => "classic".to_string(),
                };
                println!(
                    "{kind:<16} {:<14} {}",
                    String::from_utf8_lossy(&m.channel),
                    String::from_utf8_lossy(&m.payload)
                );
            }
            PubSubEvent::Gap { channels, .. } => {
                println!("gap: messages may have been missed on {channels:?}");
            }
            PubSubEvent::Lagged { dropped } => println!("consumer too slow: {dropped} dropped"),
            _ => {}
        }
    }
    println!("{received} messages received; {:?}", sub.stats());
    sub.sunsubscribe(Vec::<String>::new()).await?;
    Ok(())
}
