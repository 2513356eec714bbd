//! Pub/Sub against real local clusters: sharded subscriptions spread over every primary,
//! following a slot move and a killed primary; a classic subscription whose node dies,
//! or freezes (found by the subscriber's own PING); a slow consumer at the queue's
//! bound; RESP2; `PUNSUBSCRIBE`; a subscribe that times out on a frozen primary and is
//! made when it thaws; keyspace notifications from every primary; a handle used from
//! another task.
//!
//! Every wait polls a real condition (an event, a server-side count) with a deadline.

mod support;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use redcluster::testkit::{FailoverMode, LocalCluster};
use redcluster::{
    cmd, key_slot, ClusterClient, Error, OverflowPolicy, Protocol, PubSubEvent, Subscriber,
    SubscriberConfig, Value,
};
use support::fake_cluster::{Action, FakeCluster};
use tokio::time::Instant;

/// 3 masters with `replicas` each (the testkit's 2 s node timeout: failovers are quick).
async fn cluster(replicas: usize) -> LocalCluster {
    support::cluster(3, replicas).await
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

/// Events until `want` (channel, payload) pairs have all arrived; panics at the
/// deadline naming what is missing. Returns every other event seen on the way.
async fn expect_messages(
    sub: &mut Subscriber,
    want: &[(Bytes, Bytes)],
    within: Duration,
) -> Vec<PubSubEvent> {
    let deadline = Instant::now() + within;
    let mut missing: HashSet<(Bytes, Bytes)> = want.iter().cloned().collect();
    let mut others = Vec::new();
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(PubSubEvent::Message(m))) => {
                missing.remove(&(m.channel.clone(), m.payload.clone()));
            }
            Ok(Some(other)) => others.push(other),
            Ok(None) => panic!("the subscriber's stream ended"),
            Err(_) => panic!(
                "{} of {} messages missing after {within:?}, e.g. {:?}; other events: {others:?}",
                missing.len(),
                want.len(),
                missing.iter().take(3).collect::<Vec<_>>()
            ),
        }
    }
    others
}

/// Waits for gap events until they have named every channel in `channels`; returns the
/// messages seen meanwhile.
async fn expect_gap(
    sub: &mut Subscriber,
    channels: &HashSet<Bytes>,
    sharded: bool,
    within: Duration,
) -> Vec<PubSubEvent> {
    let deadline = Instant::now() + within;
    let mut missing = channels.clone();
    let mut others = Vec::new();
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(PubSubEvent::Gap {
                channels,
                patterns,
                sharded: s,
                ..
            })) => {
                assert_eq!(s, sharded, "gap for {channels:?} {patterns:?}");
                for c in channels.iter().chain(&patterns) {
                    missing.remove(c);
                }
            }
            Ok(Some(other)) => others.push(other),
            Ok(None) => panic!("the subscriber's stream ended"),
            Err(_) => panic!(
                "no gap event for {} channels after {within:?}, e.g. {:?}; other events: {others:?}",
                missing.len(),
                missing.iter().take(3).collect::<Vec<_>>()
            ),
        }
    }
    others
}

/// Publishes one message to each channel (`SPUBLISH` when sharded), checking that
/// exactly one subscriber (ours) received each; returns what was sent.
async fn publish_all(
    client: &ClusterClient,
    channels: &[String],
    tag: &str,
    sharded: bool,
) -> Vec<(Bytes, Bytes)> {
    let mut sent = Vec::new();
    for c in channels {
        let payload = format!("{tag}:{c}");
        let receivers = if sharded {
            client.spublish(c.as_str(), payload.as_str()).await
        } else {
            client.publish(c.as_str(), payload.as_str()).await
        }
        .unwrap_or_else(|e| panic!("publishing to {c}: {e}"));
        if sharded {
            assert_eq!(receivers, 1, "receivers of {c} on its owner");
        }
        sent.push((b(c), b(&payload)));
    }
    sent
}

/// `PUBSUB SHARDCHANNELS` of every running node: node index -> channels subscribed there.
async fn shard_channels(local: &LocalCluster, nodes: &[usize]) -> HashMap<usize, Vec<String>> {
    let mut out = HashMap::new();
    for &n in nodes {
        let conn = local.connect_node(n).await.unwrap();
        let reply = conn.send(cmd("PUBSUB").arg("SHARDCHANNELS")).await.unwrap();
        let Value::Array(items) = reply else {
            panic!("PUBSUB SHARDCHANNELS on node {n}: {reply:?}");
        };
        let names = items
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes().unwrap()).into_owned())
            .collect();
        out.insert(n, names);
    }
    out
}

/// `PUBSUB SHARDNUMSUB channel` on one node.
async fn shard_numsub(local: &LocalCluster, node: usize, channel: &str) -> i64 {
    let conn = local.connect_node(node).await.unwrap();
    support::pubsub_count(&conn, "SHARDNUMSUB", channel).await
}

/// Polls until every subscribed channel is held exactly once, by the node that owns its
/// slot now, and nowhere else.
async fn expect_placement(local: &LocalCluster, channels: &[String], within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let masters = local.masters().await.unwrap();
        let held = shard_channels(local, &masters).await;
        let mut problems = Vec::new();
        let mut seen: HashMap<&str, Vec<usize>> = HashMap::new();
        for (node, names) in &held {
            for name in names {
                seen.entry(name.as_str()).or_default().push(*node);
            }
        }
        for c in channels {
            let owner = local.master_of_slot(key_slot(c.as_bytes())).await.unwrap();
            match seen.get(c.as_str()).map(Vec::as_slice) {
                Some([n]) if *n == owner => {
                    let count = shard_numsub(local, owner, c).await;
                    if count != 1 {
                        problems.push(format!("{c}: {count} subscribers on its owner {owner}"));
                    }
                }
                other => problems.push(format!("{c}: held by {other:?}, owner {owner}")),
            }
        }
        if problems.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "subscriptions not where they belong after {within:?}: {problems:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_subscriptions_follow_a_slot_move_and_a_failover() {
    let local = cluster(1).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let channels: Vec<String> = (0..100).map(|i| format!("orders:{i}")).collect();
    let masters = local.masters().await.unwrap();
    let mut by_master: HashMap<usize, Vec<String>> = HashMap::new();
    for c in &channels {
        let owner = local.master_of_slot(key_slot(c.as_bytes())).await.unwrap();
        by_master.entry(owner).or_default().push(c.clone());
    }
    assert_eq!(by_master.len(), masters.len(), "channels on every master");

    let mut sub = client.subscriber().await.unwrap();
    sub.ssubscribe(&channels).await.unwrap();
    expect_placement(&local, &channels, Duration::from_secs(5)).await;

    // Every message arrives.
    let sent = publish_all(&client, &channels, "first", true).await;
    let others = expect_messages(&mut sub, &sent, Duration::from_secs(10)).await;
    assert!(others.is_empty(), "{others:?}");

    // Move the slot of a subscribed channel to another master.
    let moved = channels[0].clone();
    let slot = key_slot(moved.as_bytes());
    let from = local.master_of_slot(slot).await.unwrap();
    let to = *masters.iter().find(|m| **m != from).unwrap();
    let in_slot: Vec<String> = channels
        .iter()
        .filter(|c| key_slot(c.as_bytes()) == slot)
        .cloned()
        .collect();
    local.move_slot(slot, to).await.unwrap();
    let gap: HashSet<Bytes> = in_slot.iter().map(|c| b(c)).collect();
    let seen = expect_gap(&mut sub, &gap, true, Duration::from_secs(10)).await;
    assert!(seen.is_empty(), "{seen:?}");
    expect_placement(&local, &channels, Duration::from_secs(5)).await;
    let sent = publish_all(&client, &channels, "after-move", true).await;
    expect_messages(&mut sub, &sent, Duration::from_secs(10)).await;
    println!("slot {slot} moved from node {from} to {to}: gap for {in_slot:?}, then all arrived");

    // Kill a master that holds subscriptions; its replica takes over.
    let victim = to;
    let victim_channels: HashSet<Bytes> = {
        let mut v = HashSet::new();
        for c in &channels {
            if local.master_of_slot(key_slot(c.as_bytes())).await.unwrap() == victim {
                v.insert(b(c));
            }
        }
        v
    };
    assert!(!victim_channels.is_empty());
    let started = Instant::now();
    local.kill(victim).unwrap();
    expect_gap(&mut sub, &victim_channels, true, Duration::from_secs(30)).await;
    println!(
        "killed node {victim}: gap for its {} channels after {:?}",
        victim_channels.len(),
        started.elapsed()
    );
    local
        .wait_until_stable(Duration::from_secs(30))
        .await
        .unwrap();
    expect_placement(&local, &channels, Duration::from_secs(10)).await;
    let sent = publish_all(&client, &channels, "after-failover", true).await;
    let others = expect_messages(&mut sub, &sent, Duration::from_secs(10)).await;
    assert!(
        others.iter().all(|e| matches!(e, PubSubEvent::Gap { .. })),
        "{others:?}"
    );

    // Unsubscribing leaves nothing behind.
    sub.sunsubscribe(&channels[..50]).await.unwrap();
    expect_placement(&local, &channels[50..], Duration::from_secs(5)).await;
    sub.sunsubscribe(Vec::<String>::new()).await.unwrap();
    expect_placement(&local, &[], Duration::from_secs(5)).await;
    let masters = local.masters().await.unwrap();
    assert!(shard_channels(&local, &masters)
        .await
        .values()
        .all(Vec::is_empty));
}

/// Adds what `sub` yields within `within` to `heard`: a message's number, or `None` for
/// a `Gap` naming `channel`.
async fn listen(
    sub: &mut Subscriber,
    channel: &str,
    heard: &mut Vec<Option<u64>>,
    within: Duration,
) {
    let deadline = Instant::now() + within;
    while let Ok(Some(event)) = tokio::time::timeout_at(deadline, sub.next()).await {
        match event {
            PubSubEvent::Message(m) => heard.push(Some(
                std::str::from_utf8(&m.payload).unwrap().parse().unwrap(),
            )),
            PubSubEvent::Gap { channels, .. } if channels.contains(&b(channel)) => heard.push(None),
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// A sharded subscription moved by a failover is unsubscribed on its old owner, which
/// goes on delivering until it takes that in, late (a replica now, it passes on what it
/// replicates): those messages are dropped, not mixed into the new owner's, so the
/// stream stays in publishing order, the move's `Gap` between. The old owner is reached
/// through a relay that holds back what it sends while the subscription moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_channels_old_owner_delivering_late_leaves_the_stream_in_order() {
    let local = cluster(1).await;
    let channel = "late:{7}";
    let a = local
        .master_of_slot(key_slot(channel.as_bytes()))
        .await
        .unwrap();
    let replica = local.replicas_of(a).await.unwrap()[0];
    let (relay, remap) = support::relay::Relay::in_front_of(local.node_addr(a)).await;
    let seeds: Vec<String> = local
        .seeds()
        .into_iter()
        .filter(|s| *s != local.node_addr(a))
        .collect();
    let client = ClusterClient::builder()
        .nodes(seeds)
        .address_remap(remap)
        .build()
        .await
        .unwrap();
    let publisher = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut sub = client.subscriber().await.unwrap();
    sub.ssubscribe([channel]).await.unwrap();

    // What the stream gives, in order: a number, or `None` for a `Gap` of the channel.
    let mut heard: Vec<Option<u64>> = Vec::new();
    let published = std::sync::atomic::AtomicU64::new(0);
    let publish = || {
        let n = published.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let publisher = publisher.clone();
        async move { publisher.spublish(channel, n).await.unwrap() }
    };
    for _ in 0..5 {
        publish().await;
    }
    listen(&mut sub, channel, &mut heard, Duration::from_millis(500)).await;
    assert_eq!(heard, (1..=5).map(Some).collect::<Vec<_>>());

    // The old owner's deliveries held back; it takes ten more, then hands over.
    relay.hold();
    for _ in 0..10 {
        publish().await;
    }
    local
        .failover(replica, FailoverMode::Graceful)
        .await
        .unwrap();
    client.refresh_topology().await.unwrap();
    // The subscription moves to the new owner: a gap, then its messages.
    let deadline = Instant::now() + Duration::from_secs(10);
    while heard
        .iter()
        .skip_while(|h| h.is_some())
        .filter(|h| h.is_some())
        .count()
        < 3
    {
        assert!(
            Instant::now() < deadline,
            "no gap and messages after it: {heard:?}"
        );
        publish().await;
        listen(&mut sub, channel, &mut heard, Duration::from_millis(50)).await;
    }
    // The old owner's late messages come now.
    relay.release();
    for _ in 0..5 {
        publish().await;
        listen(&mut sub, channel, &mut heard, Duration::from_millis(100)).await;
    }
    listen(&mut sub, channel, &mut heard, Duration::from_millis(500)).await;
    println!("heard {heard:?}");
    let mut last = 0;
    for n in heard.iter().flatten() {
        assert!(*n > last, "{n} after {last}: {heard:?}");
        last = *n;
    }
    assert!(heard.contains(&None), "a gap for the move: {heard:?}");
    let next = published.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(last, next, "the last published heard last: {heard:?}");
}

/// `PUBSUB NUMSUB channel` on every running node: the nodes where it has a subscriber.
async fn classic_holders(local: &LocalCluster, channel: &str) -> Vec<usize> {
    let mut holders = Vec::new();
    let masters = local.masters().await.unwrap();
    let replicas = local.replicas().await.unwrap();
    for n in masters.into_iter().chain(replicas) {
        let Ok(conn) = local.connect_node(n).await else {
            continue;
        };
        if support::pubsub_count(&conn, "NUMSUB", channel).await == 1 {
            holders.push(n);
        }
    }
    holders
}

/// `[channel, count, ...]` (RESP2) or a map (RESP3), as pairs.
fn channel_counts(reply: Value) -> Vec<(String, i64)> {
    let pairs: Vec<(Value, Value)> = match reply {
        Value::Map(pairs) => pairs,
        Value::Array(items) => items
            .chunks(2)
            .map(|pair| (pair[0].clone(), pair[1].clone()))
            .collect(),
        other => panic!("{other:?}"),
    };
    pairs
        .into_iter()
        .map(|(channel, count)| match (channel, count) {
            (Value::Bulk(c), Value::Int(n)) => (String::from_utf8(c.to_vec()).unwrap(), n),
            other => panic!("{other:?}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_introspection_answers_for_the_whole_cluster() {
    let local = cluster(1).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let sub = client.subscriber().await.unwrap();
    sub.subscribe(["news"]).await.unwrap();
    sub.psubscribe(["log.*"]).await.unwrap();
    sub.ssubscribe(["orders:{eu}"]).await.unwrap();
    for protocol in [Protocol::Resp3, Protocol::Resp2] {
        let asker = ClusterClient::builder()
            .nodes(local.seeds())
            .protocol(protocol)
            .build()
            .await
            .unwrap();
        // Asked more often than there are nodes: the answer never depends on which
        // node was asked.
        for _ in 0..7 {
            let numsub: Value = asker
                .query(cmd("PUBSUB").arg("NUMSUB").arg("news").arg("nobody"))
                .await
                .unwrap();
            assert_eq!(
                channel_counts(numsub),
                [("news".to_string(), 1), ("nobody".to_string(), 0)],
                "{protocol:?}"
            );
            let shard: Value = asker
                .query(cmd("PUBSUB").arg("SHARDNUMSUB").arg("orders:{eu}"))
                .await
                .unwrap();
            assert_eq!(channel_counts(shard), [("orders:{eu}".to_string(), 1)]);
            let channels: Vec<String> = asker.query(cmd("PUBSUB").arg("CHANNELS")).await.unwrap();
            assert_eq!(channels, ["news"]);
            let shard_channels: Vec<String> = asker
                .query(cmd("PUBSUB").arg("SHARDCHANNELS"))
                .await
                .unwrap();
            assert_eq!(shard_channels, ["orders:{eu}"]);
            let patterns: i64 = asker.query(cmd("PUBSUB").arg("NUMPAT")).await.unwrap();
            assert_eq!(patterns, 1);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_subscription_moves_when_its_node_dies() {
    let local = cluster(1).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut sub = client.subscriber().await.unwrap();
    sub.subscribe(["news"]).await.unwrap();
    sub.psubscribe(["log.*"]).await.unwrap();

    client.publish("news", "hello").await.unwrap();
    client.publish("log.app", "started").await.unwrap();
    let mut got = Vec::new();
    while got.len() < 2 {
        let event = tokio::time::timeout(Duration::from_secs(5), sub.next())
            .await
            .expect("messages arrive")
            .unwrap();
        got.push(event);
    }
    // The two PUBLISHes may go to different nodes, which forward them over the cluster
    // bus: their order of arrival is not defined.
    let Some(PubSubEvent::Message(m)) = got
        .iter()
        .find(|e| matches!(e, PubSubEvent::Message(m) if m.channel == b("log.app")))
    else {
        panic!("{got:?}")
    };
    assert_eq!(m.pattern.as_deref(), Some(&b"log.*"[..]));
    assert_eq!(m.channel, b("log.app"));
    assert!(!m.sharded);

    let holders = classic_holders(&local, "news").await;
    assert_eq!(holders.len(), 1, "one connection holds it: {holders:?}");
    let victim = holders[0];
    local.kill(victim).unwrap();
    let want: HashSet<Bytes> = [b("news"), b("log.*")].into_iter().collect();
    expect_gap(&mut sub, &want, false, Duration::from_secs(30)).await;
    let now = classic_holders(&local, "news").await;
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], victim);

    client.publish("news", "again").await.unwrap();
    client.publish("log.db", "up").await.unwrap();
    expect_messages(
        &mut sub,
        &[(b("news"), b("again")), (b("log.db"), b("up"))],
        Duration::from_secs(10),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_gets_the_newest_events_and_a_count_of_the_dropped() {
    let local = cluster(0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let capacity = 64;
    let mut sub = client
        .subscriber_with(SubscriberConfig::default().queue_capacity(capacity))
        .await
        .unwrap();
    sub.ssubscribe(["slow:{x}"]).await.unwrap();
    let total = 2000u64;
    // Nobody reads the stream meanwhile.
    for i in 0..total {
        client.spublish("slow:{x}", i.to_string()).await.unwrap();
        assert!(sub.stats().queued <= capacity);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while sub.stats().dropped + sub.stats().queued as u64 != total {
        assert!(Instant::now() < deadline, "{:?}", sub.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stats = sub.stats();
    println!("{stats:?}");
    assert_eq!(stats.queued, capacity);
    assert!(stats.peak_queued <= capacity, "{stats:?}");
    assert_eq!(stats.dropped, total - capacity as u64);
    assert_eq!(sub.dropped(), stats.dropped);

    // First the count, then the newest `capacity` messages, in order.
    let first = sub.next().await.unwrap();
    assert_eq!(
        first,
        PubSubEvent::Lagged {
            dropped: total - capacity as u64
        }
    );
    for i in total - capacity as u64..total {
        match sub.next().await.unwrap() {
            PubSubEvent::Message(m) => assert_eq!(m.payload, b(&i.to_string())),
            other => panic!("{other:?}"),
        }
    }
    // Still subscribed and delivering.
    client.spublish("slow:{x}", "live").await.unwrap();
    expect_messages(
        &mut sub,
        &[(b("slow:{x}"), b("live"))],
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(sub.stats().queued, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disconnect_policy_closes_the_subscriber_at_the_bound() {
    let local = cluster(0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut sub = client
        .subscriber_with(
            SubscriberConfig::default()
                .queue_capacity(8)
                .overflow(OverflowPolicy::Disconnect),
        )
        .await
        .unwrap();
    sub.ssubscribe(["burst:{y}"]).await.unwrap();
    let owner = local.master_of_slot(key_slot(b"burst:{y}")).await.unwrap();
    for i in 0..20 {
        client.spublish("burst:{y}", i.to_string()).await.unwrap();
    }
    // Nothing is read until the queue overflowed: a consumer reading while the
    // messages still come in (they can trail the publisher on a loaded machine) could
    // keep up, and the bound would never be met.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sub.is_closed() {
        assert!(Instant::now() < deadline, "never closed: {:?}", sub.stats());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut payloads = Vec::new();
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await.unwrap() {
            Some(PubSubEvent::Message(m)) => payloads.push(m.payload),
            Some(other) => panic!("{other:?}"),
            None => break,
        }
    }
    let expected: Vec<Bytes> = (0..8).map(|i: i32| b(&i.to_string())).collect();
    assert_eq!(payloads, expected);
    assert!(sub.is_closed());
    assert!(matches!(
        sub.ssubscribe(["other"]).await,
        Err(Error::ConnectionLost { .. })
    ));
    // The server let go of the subscription.
    let deadline = Instant::now() + Duration::from_secs(5);
    while shard_numsub(&local, owner, "burst:{y}").await != 0 {
        assert!(Instant::now() < deadline, "the subscription stayed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_never_pings_keeps_delivering() {
    let local = cluster(0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    // `Duration::MAX` once overflowed the clock in the subscriber's periodic liveness
    // check (every half second): its task panicked and the stream hung without an end.
    let mut sub = client
        .subscriber_with(SubscriberConfig::default().ping_interval(Duration::MAX))
        .await
        .unwrap();
    sub.subscribe(["quiet"]).await.unwrap();
    // Messages over three of those checks, each one answered.
    let started = Instant::now();
    let mut sent = 0;
    while started.elapsed() < Duration::from_millis(1600) {
        let payload = sent.to_string();
        client.publish("quiet", payload.as_str()).await.unwrap();
        expect_messages(
            &mut sub,
            &[(b("quiet"), b(&payload))],
            Duration::from_secs(3),
        )
        .await;
        sent += 1;
    }
    assert!(sent >= 3, "{sent}");
    assert!(!sub.is_closed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp2_subscriptions_work_and_follow_a_slot_move() {
    let local = cluster(0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .protocol(Protocol::Resp2)
        .build()
        .await
        .unwrap();
    let mut sub = client.subscriber().await.unwrap();
    let channels: Vec<String> = (0..20).map(|i| format!("r2:{i}")).collect();
    sub.ssubscribe(&channels).await.unwrap();
    sub.subscribe(["r2-news"]).await.unwrap();
    sub.psubscribe(["r2-log.*"]).await.unwrap();
    let mut sent = publish_all(&client, &channels, "one", true).await;
    client.publish("r2-news", "n1").await.unwrap();
    client.publish("r2-log.x", "l1").await.unwrap();
    sent.push((b("r2-news"), b("n1")));
    sent.push((b("r2-log.x"), b("l1")));
    let others = expect_messages(&mut sub, &sent, Duration::from_secs(10)).await;
    assert!(others.is_empty(), "{others:?}");

    let slot = key_slot(channels[3].as_bytes());
    let from = local.master_of_slot(slot).await.unwrap();
    let masters = local.masters().await.unwrap();
    let to = *masters.iter().find(|m| **m != from).unwrap();
    local.move_slot(slot, to).await.unwrap();
    let gap: HashSet<Bytes> = channels
        .iter()
        .filter(|c| key_slot(c.as_bytes()) == slot)
        .map(|c| b(c))
        .collect();
    expect_gap(&mut sub, &gap, true, Duration::from_secs(10)).await;
    expect_placement(&local, &channels, Duration::from_secs(5)).await;
    let sent = publish_all(&client, &channels, "two", true).await;
    expect_messages(&mut sub, &sent, Duration::from_secs(10)).await;

    sub.unsubscribe(["r2-news"]).await.unwrap();
    sub.sunsubscribe(&channels).await.unwrap();
    expect_placement(&local, &[], Duration::from_secs(5)).await;
    let left: BTreeSet<usize> = classic_holders(&local, "r2-news")
        .await
        .into_iter()
        .collect();
    assert!(left.is_empty(), "{left:?}");
    // The pattern subscription still delivers.
    client.publish("r2-log.y", "l2").await.unwrap();
    expect_messages(
        &mut sub,
        &[(b("r2-log.y"), b("l2"))],
        Duration::from_secs(5),
    )
    .await;
}

#[test]
fn a_subscriber_can_move_between_tasks() {
    fn check<T: Send + Sync + Unpin + 'static>() {}
    check::<Subscriber>();
    check::<PubSubEvent>();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_classic_subscription_on_a_frozen_node_moves_after_an_unanswered_ping() {
    // No replicas and a long node timeout: the cluster does nothing about the frozen
    // node; the subscriber's own PING finds it out.
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .node_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let config = SubscriberConfig::default().ping_interval(Duration::from_millis(200));
    let mut sub = client.subscriber_with(config).await.unwrap();
    sub.subscribe(["ticks"]).await.unwrap();
    let holders = classic_holders(&local, "ticks").await;
    assert_eq!(holders.len(), 1, "{holders:?}");
    let victim = holders[0];
    local.pause(victim).unwrap();
    let started = Instant::now();
    let want: HashSet<Bytes> = [b("ticks")].into_iter().collect();
    expect_gap(&mut sub, &want, false, Duration::from_secs(10)).await;
    let noticed = started.elapsed();
    // Published on a live node; the cluster bus brings it to the new holder.
    let live = (0..3).find(|&i| i != victim).unwrap();
    let node = local.connect_node(live).await.unwrap();
    node.send(cmd("PUBLISH").arg("ticks").arg("after"))
        .await
        .unwrap();
    expect_messages(
        &mut sub,
        &[(b("ticks"), b("after"))],
        Duration::from_secs(10),
    )
    .await;
    local.resume(victim).unwrap();
    println!("the frozen holder was left after {noticed:?}");
    assert!(noticed < Duration::from_secs(5), "{noticed:?}");
}

/// The next message event (others skipped), within `within`.
async fn next_message(sub: &mut Subscriber, within: Duration) -> redcluster::Message {
    let deadline = Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(PubSubEvent::Message(m))) => return m,
            Ok(Some(_)) => {}
            Ok(None) => panic!("the subscriber's stream ended"),
            Err(_) => panic!("no message within {within:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn punsubscribe_ends_a_pattern_and_leaves_the_rest() {
    let local = cluster(0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut sub = client.subscriber().await.unwrap();
    sub.psubscribe(["pt.*", "other.*"]).await.unwrap();
    sub.subscribe(["marker"]).await.unwrap();
    let publisher = local.connect_node(0).await.unwrap();
    let publish = |channel: &'static str, payload: &'static str| {
        let publisher = &publisher;
        async move {
            publisher
                .send(cmd("PUBLISH").arg(channel).arg(payload))
                .await
                .unwrap();
        }
    };
    publish("pt.a", "1").await;
    let m = next_message(&mut sub, Duration::from_secs(5)).await;
    assert_eq!((m.channel, m.pattern), (b("pt.a"), Some(b("pt.*"))));

    // One node relays one publisher's messages in order: once the marker is here, a
    // message to the pattern would have come first.
    sub.punsubscribe(["pt.*"]).await.unwrap();
    publish("pt.b", "2").await;
    publish("other.b", "3").await;
    publish("marker", "4").await;
    let m = next_message(&mut sub, Duration::from_secs(5)).await;
    assert_eq!((m.channel, m.pattern), (b("other.b"), Some(b("other.*"))));
    let m = next_message(&mut sub, Duration::from_secs(5)).await;
    assert_eq!((m.channel, m.pattern), (b("marker"), None));

    // No patterns named: every pattern goes; the channel stays.
    sub.punsubscribe(Vec::<String>::new()).await.unwrap();
    for node in 0..3 {
        let conn = local.connect_node(node).await.unwrap();
        let numpat = conn.send(cmd("PUBSUB").arg("NUMPAT")).await.unwrap();
        assert_eq!(numpat, Value::Int(0), "patterns left on node {node}");
    }
    publish("other.c", "5").await;
    publish("marker", "6").await;
    let m = next_message(&mut sub, Duration::from_secs(5)).await;
    assert_eq!((m.channel, m.payload), (b("marker"), b("6")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_to_a_frozen_primary_times_out_and_is_made_when_it_thaws() {
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .node_timeout(Duration::from_secs(30))
        .start()
        .await
        .unwrap();
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let timeout = Duration::from_millis(300);
    let config = SubscriberConfig::default().subscribe_timeout(timeout);
    let mut sub = client.subscriber_with(config).await.unwrap();
    let channel = "orders:{frozen}";
    let owner = local
        .master_of_slot(key_slot(channel.as_bytes()))
        .await
        .unwrap();
    local.pause(owner).unwrap();
    let started = Instant::now();
    let r = sub.ssubscribe([channel]).await;
    let took = started.elapsed();
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    assert!(
        took >= timeout && took < timeout + Duration::from_secs(1),
        "{took:?}"
    );

    // Still asked for: made once the node answers, with no second call.
    local.resume(owner).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while client.spublish(channel, "first").await.unwrap() == 0 {
        assert!(Instant::now() < deadline, "the subscription was never made");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let m = next_message(&mut sub, Duration::from_secs(5)).await;
    assert_eq!(
        (m.channel, m.payload, m.sharded),
        (b(channel), b("first"), true)
    );
}

/// A sharded subscribe sent to a primary that froze before answering (the call timed
/// out) goes to the slot's new owner once the client's map names it, as a confirmed one
/// does. It waited on the frozen node's link until something else ended that (seconds
/// later here; the link's unanswered PING at worst, 15 to 30 s), while the promoted
/// replica served the slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unconfirmed_sharded_subscribe_follows_a_failover_of_its_frozen_primary() {
    let local = cluster(1).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let config = SubscriberConfig::default().subscribe_timeout(Duration::from_millis(300));
    let mut sub = client.subscriber_with(config).await.unwrap();
    let channel = "orders:{unconfirmed}";
    let slot = key_slot(channel.as_bytes());
    let owner = local.master_of_slot(slot).await.unwrap();
    let replica = local.replicas_of(owner).await.unwrap()[0];
    local.pause(owner).unwrap();
    let r = sub.ssubscribe([channel]).await;
    assert!(matches!(r, Err(Error::Timeout { .. })), "{r:?}");
    local
        .failover(replica, FailoverMode::Takeover)
        .await
        .unwrap();
    let promoted = local.node_addr(replica);
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.node_for_key(channel.as_bytes()).as_deref() != Some(promoted.as_str()) {
        assert!(
            Instant::now() < deadline,
            "the client never saw the promotion"
        );
        let _ = client.refresh_topology().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The subscriber's housekeeping (every 500 ms) moves it: within 2 s (0.4 s here;
    // 4.6 s before).
    let seen = Instant::now();
    while client.spublish(channel, "after").await.unwrap() == 0 {
        assert!(
            seen.elapsed() < Duration::from_secs(2),
            "the subscription stayed on the frozen node"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = next_message(&mut sub, Duration::from_secs(5)).await;
    assert_eq!((m.channel, m.payload), (b(channel), b("after")));
    local.resume(owner).unwrap();
}

/// `PUBSUB NUMSUB channel` and `PUBSUB NUMPAT` on node `index`.
async fn subscriptions_on(local: &LocalCluster, index: usize, channel: &str) -> (i64, i64) {
    let conn = local.connect_node(index).await.unwrap();
    let numsub = support::pubsub_count(&conn, "NUMSUB", channel).await;
    match conn.send(cmd("PUBSUB").arg("NUMPAT")).await.unwrap() {
        Value::Int(numpat) => (numsub, numpat),
        other => panic!("NUMPAT: {other:?}"),
    }
}

/// Waits until every primary holds `channel` and one pattern, and no replica holds any.
async fn expect_on_primaries_only(local: &LocalCluster, channel: &str, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let masters = local.masters().await.unwrap();
        let replicas = local.replicas().await.unwrap();
        let mut found = Vec::new();
        for &n in masters.iter().chain(&replicas) {
            found.push((n, subscriptions_on(local, n, channel).await));
        }
        let placed = found.iter().all(|(n, counts)| {
            let want = if masters.contains(n) { (1, 1) } else { (0, 0) };
            *counts == want
        });
        if placed {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "(node, (subscribers, patterns)): {found:?}; primaries {masters:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_notifications_come_from_every_primary_once_and_follow_a_failover() {
    let local = cluster(1).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    // Key-space and key-event notifications of string commands, on every node.
    let () = client
        .query(
            cmd("CONFIG")
                .arg("SET")
                .arg("notify-keyspace-events")
                .arg("KE$"),
        )
        .await
        .unwrap();
    let mut sub = client.subscriber().await.unwrap();
    let event = "__keyevent@0__:set";
    sub.subscribe([event]).await.unwrap();
    sub.psubscribe(["__keyspace@0__:ks:*"]).await.unwrap();
    expect_on_primaries_only(&local, event, Duration::from_secs(5)).await;

    // A key on each primary: each SET is notified once by event and once by key.
    let masters = local.masters().await.unwrap();
    let mut keys: Vec<String> = Vec::new();
    for i in 0..1000 {
        let key = format!("ks:{i}");
        let owner = local
            .master_of_slot(key_slot(key.as_bytes()))
            .await
            .unwrap();
        if keys
            .iter()
            .all(|k| support::owner_index(&local, &client, k) != owner)
        {
            keys.push(key);
        }
        if keys.len() == masters.len() {
            break;
        }
    }
    assert_eq!(keys.len(), masters.len(), "a key on each primary: {keys:?}");
    for k in &keys {
        client.set(k.as_str(), "v").await.unwrap();
    }
    let mut want: Vec<(Bytes, Bytes)> = Vec::new();
    for k in &keys {
        want.push((b(event), b(k)));
        want.push((b(&format!("__keyspace@0__:{k}")), b("set")));
    }
    // Then a marker. Each node's messages come on their own connection, so the
    // marker's may come before another node's: read until every expected message
    // came; each came exactly once.
    client.set("ks:marker", "v").await.unwrap();
    let markers = [
        (b(event), b("ks:marker")),
        (b("__keyspace@0__:ks:marker"), b("set")),
    ];
    want.extend(markers.iter().cloned());
    let mut got = Vec::new();
    while !want.iter().all(|m| got.contains(m)) {
        let m = next_message(&mut sub, Duration::from_secs(5)).await;
        got.push((m.channel, m.payload));
    }
    got.sort();
    want.sort();
    assert_eq!(got, want);

    // A replica takes over a primary: the subscriptions leave the old primary and are
    // made on the new one, reported as a gap; its notifications arrive again.
    let old = support::owner_index(&local, &client, &keys[0]);
    let promoted = local.replicas_of(old).await.unwrap()[0];
    local
        .failover(promoted, FailoverMode::Graceful)
        .await
        .unwrap();
    // The client learns of it from the old primary's MOVED (and the refresh that follows).
    let deadline = Instant::now() + Duration::from_secs(20);
    while client.node_for_key(keys[0].as_bytes()) != Some(local.node_addr(promoted)) {
        assert!(
            Instant::now() < deadline,
            "the client never saw the failover"
        );
        let _ = client.get::<_, Option<String>>(keys[0].as_str()).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gap: HashSet<Bytes> = [b(event), b("__keyspace@0__:ks:*")].into_iter().collect();
    expect_gap(&mut sub, &gap, false, Duration::from_secs(20)).await;
    expect_on_primaries_only(&local, event, Duration::from_secs(10)).await;
    assert_eq!(subscriptions_on(&local, promoted, event).await, (1, 1));
    client.set(keys[0].as_str(), "w").await.unwrap();
    expect_messages(
        &mut sub,
        &[
            (b(event), b(&keys[0])),
            (b(&format!("__keyspace@0__:{}", keys[0])), b("set")),
        ],
        Duration::from_secs(5),
    )
    .await;

    // Unsubscribed: no node holds them.
    sub.unsubscribe([event]).await.unwrap();
    sub.punsubscribe(["__keyspace@0__:ks:*"]).await.unwrap();
    for n in local
        .masters()
        .await
        .unwrap()
        .into_iter()
        .chain(local.replicas().await.unwrap())
    {
        assert_eq!(subscriptions_on(&local, n, event).await, (0, 0), "node {n}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_changes_subscriptions_while_another_task_reads_the_events() {
    let local = cluster(0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut sub = client.subscriber().await.unwrap();
    let handle = sub.handle();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(event) = sub.next().await {
            if let PubSubEvent::Message(m) = event {
                if tx.send(m).is_err() {
                    break;
                }
            }
        }
    });
    handle.subscribe(["from-handle"]).await.unwrap();
    handle
        .clone()
        .ssubscribe(["orders:{handle}"])
        .await
        .unwrap();
    client.publish("from-handle", "1").await.unwrap();
    client.spublish("orders:{handle}", "2").await.unwrap();
    let mut got = Vec::new();
    for _ in 0..2 {
        let m = tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("a message within 5 s")
            .unwrap();
        got.push((m.channel, m.payload));
    }
    got.sort();
    assert_eq!(
        got,
        vec![(b("from-handle"), b("1")), (b("orders:{handle}"), b("2"))]
    );

    // The subscriber gone, its handle's calls fail at once, and its connections close.
    reader.abort();
    let _ = reader.await;
    let r = handle.subscribe(["too-late"]).await;
    assert!(matches!(r, Err(Error::ConnectionLost { .. })), "{r:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !classic_holders(&local, "from-handle").await.is_empty() {
        assert!(
            Instant::now() < deadline,
            "the subscription outlived its subscriber"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A cluster of 3 masters whose nodes have the ACL user `rules` (named `sub`, password
/// `subpass`), and a client connected as that user.
async fn as_acl_user(rules: &str) -> (LocalCluster, ClusterClient) {
    let local = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .acl_user(rules)
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .username("sub")
        .password("subpass")
        .build()
        .await
        .unwrap();
    (local, client)
}

/// A restoration the server refuses is never silent. The subscriber's user may no longer
/// read `chan:c` (the server then closes its connection); resubscribing all three in one
/// command is refused (`NOPERM` for the whole command), so each goes alone: `chan:a`
/// and `chan:b` are restored (a `Gap`), `chan:c` is reported `Lost`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_restoration_reports_the_refused_channel_lost_and_restores_the_rest() {
    let (local, client) = as_acl_user("sub on >subpass ~* &chan:* +@all").await;
    let mut sub = client.subscriber().await.unwrap();
    sub.subscribe(["chan:a", "chan:b", "chan:c"]).await.unwrap();
    support::set_user(&local, "sub resetchannels &chan:a &chan:b").await;
    let deadline = Instant::now() + Duration::from_secs(15);
    let (mut restored, mut lost) = (HashSet::new(), Vec::new());
    while restored.len() < 2 || lost.is_empty() {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(PubSubEvent::Gap { channels, .. })) => restored.extend(channels),
            Ok(Some(PubSubEvent::Lost {
                channels, error, ..
            })) => {
                assert_eq!(error.code(), "NOPERM", "{error}");
                lost.extend(channels);
            }
            Ok(Some(other)) => panic!("unexpected event {other:?}"),
            Ok(None) => panic!("the subscriber's stream ended"),
            Err(_) => panic!("restored {restored:?}, lost {lost:?} by the deadline"),
        }
    }
    assert_eq!(restored, HashSet::from([b("chan:a"), b("chan:b")]));
    assert_eq!(lost, vec![b("chan:c")]);
    // The restored ones deliver.
    let _: i64 = client.publish("chan:a", "after").await.unwrap();
    let m = next_message(&mut sub, Duration::from_secs(5)).await;
    assert_eq!((m.channel, m.payload), (b("chan:a"), b("after")));
}

/// A subscription whose call timed out stays asked for; when its node then refuses it
/// for good, nobody waits for the call's answer any more, so the stream says it
/// (`Lost`) rather than nothing. Here the owner of a sharded channel is frozen while
/// the call waits, and its ACL (per node) no longer lets the user read the channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_after_the_subscribe_call_timed_out_reaches_the_stream() {
    let (local, client) = as_acl_user("sub on >subpass ~* &* +@all").await;
    let channel = "orders:{late}";
    let owner = local
        .master_of_slot(redcluster::key_slot(channel.as_bytes()))
        .await
        .unwrap();
    let conn = local.connect_node(owner).await.unwrap();
    let reply = conn
        .send(
            cmd("ACL")
                .arg("SETUSER")
                .arg("sub")
                .arg("resetchannels")
                .arg("&news:*"),
        )
        .await
        .unwrap();
    assert_eq!(reply, Value::Simple("OK".into()));
    let config = SubscriberConfig::default().subscribe_timeout(Duration::from_millis(300));
    let mut sub = client.subscriber_with(config).await.unwrap();
    local.pause(owner).unwrap();
    let asked = sub.ssubscribe([channel]).await;
    local.resume(owner).unwrap();
    assert!(matches!(asked, Err(Error::Timeout { .. })), "{asked:?}");
    match tokio::time::timeout(Duration::from_secs(10), sub.next()).await {
        Ok(Some(PubSubEvent::Lost {
            channels,
            sharded,
            error,
            ..
        })) => {
            assert_eq!(channels, vec![b(channel)]);
            assert!(sharded);
            assert_eq!(error.code(), "NOPERM", "{error}");
        }
        other => panic!("expected the refusal on the stream, got {other:?}"),
    }
}

/// A node holding the classic subscriptions leaves the cluster while it keeps running
/// (the others `CLUSTER FORGET` it, it is reset): it still answers the subscriber's
/// PING, but messages published in the cluster no longer reach it. Once the client's
/// topology no longer lists it, the subscriptions move, with a `Gap`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn classic_subscriptions_leave_a_node_that_left_the_cluster() {
    let local = cluster(0).await;
    let leaver = local.add_replica(0).await.unwrap();
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    client.refresh_topology().await.unwrap();
    // The classic link goes to any node of the four: subscribe until it is the leaver's.
    let mut held = None;
    for attempt in 0..60 {
        let channel = format!("news:{attempt}");
        let sub = client.subscriber().await.unwrap();
        sub.subscribe([channel.as_str()]).await.unwrap();
        if classic_holders(&local, &channel).await == vec![leaver] {
            held = Some((sub, channel));
            break;
        }
    }
    let (mut sub, channel) = held.expect("no subscriber's link landed on the added replica");
    let id = local.node(leaver).id;
    for node in local.nodes() {
        if node.index != leaver {
            let conn = local.connect_node(node.index).await.unwrap();
            let reply = conn
                .send(cmd("CLUSTER").arg("FORGET").arg(id.as_str()))
                .await
                .unwrap();
            assert_eq!(reply, Value::Simple("OK".into()));
        }
    }
    let conn = local.connect_node(leaver).await.unwrap();
    let reply = conn
        .send(cmd("CLUSTER").arg("RESET").arg("SOFT"))
        .await
        .unwrap();
    assert_eq!(reply, Value::Simple("OK".into()));
    client.refresh_topology().await.unwrap();
    assert!(!client
        .known_nodes()
        .iter()
        .any(|n| *n == local.node_addr(leaver)));
    let want: HashSet<Bytes> = [b(&channel)].into_iter().collect();
    expect_gap(&mut sub, &want, false, Duration::from_secs(10)).await;
    client.publish(channel.as_str(), "after").await.unwrap();
    expect_messages(
        &mut sub,
        &[(b(&channel), b("after"))],
        Duration::from_secs(10),
    )
    .await;
}

/// An unsubscribe the node refuses (`BUSY`: a script runs past the busy threshold, and
/// `UNSUBSCRIBE` may not run then) leaves the channel subscribed there: it is asked
/// again once the node serves, so that the node does not keep sending its messages (and
/// counting the subscriber) for as long as the connection lasts. The call itself
/// returns at once: no message of the channel is delivered from then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsubscribe_refused_while_a_script_runs_is_made_once_the_node_serves() {
    let local = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .config("busy-reply-threshold", "100")
        .start()
        .await
        .unwrap();
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut sub = client.subscriber().await.unwrap();
    sub.subscribe(["keep", "leak"]).await.unwrap();
    let holders = classic_holders(&local, "leak").await;
    let [node] = holders[..] else {
        panic!("held by {holders:?}");
    };
    assert_eq!(classic_holders(&local, "keep").await, vec![node]);

    let runner = local.connect_node(node).await.unwrap();
    let script = tokio::spawn(async move {
        runner
            .send(cmd("EVAL").arg("while true do end").arg(0))
            .await
    });
    support::wait_until_busy(&local, node).await;
    tokio::time::timeout(Duration::from_secs(5), sub.unsubscribe(["leak"]))
        .await
        .expect("the unsubscribe call returns")
        .unwrap();
    let killer = local.connect_node(node).await.unwrap();
    let killed = killer.send(cmd("SCRIPT").arg("KILL")).await.unwrap();
    assert_eq!(killed, Value::Simple("OK".into()));
    let _ = script.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(5);
    while classic_holders(&local, "leak").await == vec![node] {
        assert!(
            Instant::now() < deadline,
            "leak is still subscribed on {node}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(classic_holders(&local, "keep").await, vec![node]);
    client.publish("leak", "gone").await.unwrap();
    client.publish("keep", "here").await.unwrap();
    let m = next_message(&mut sub, Duration::from_secs(5)).await;
    assert_eq!((m.channel, m.payload), (b("keep"), b("here")));
}

/// A subscribe answered by the confirmation of an earlier one the caller already
/// ended: subscribe `k`, unsubscribe it, subscribe it again, all before the node
/// answers. The node's first confirmation is the first subscribe's (it answers in
/// order): the second call must wait for its own, which comes only after the node has
/// taken the unsubscribe and the second subscribe. Answered at the first, the caller
/// would be told it listens while the node is between the two, and a message published
/// then would be missed with no `Gap`. A scripted fake: a real node cannot be held
/// between reading a command and answering it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_is_not_answered_by_the_confirmation_of_an_earlier_one_it_ended() {
    let fake = FakeCluster::start(|args, earlier| match (args[0].as_str(), earlier) {
        // Read; answered late (below), as a busy node would.
        ("SUBSCRIBE", 0) | ("UNSUBSCRIBE", _) => Action::Silent,
        // The second subscribe's arrival brings the first one's confirmation, and
        // nothing more.
        ("SUBSCRIBE", _) => Action::Reply(Value::Push(vec![
            Value::Bulk("subscribe".into()),
            Value::Bulk("k".into()),
            Value::Int(1),
        ])),
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    let client = ClusterClient::connect([fake.addr.as_str()]).await.unwrap();
    let sub = client
        .subscriber_with(SubscriberConfig::default().subscribe_timeout(Duration::from_millis(500)))
        .await
        .unwrap();
    let handle = sub.handle();
    let first = tokio::spawn(async move { handle.subscribe(["k"]).await });
    let sent_by = Instant::now() + Duration::from_secs(5);
    while fake.count("SUBSCRIBE") < 1 {
        assert!(Instant::now() < sent_by, "{:?}", fake.seen());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let handle = sub.handle();
    let ended = tokio::spawn(async move { handle.unsubscribe(["k"]).await });
    while fake.count("UNSUBSCRIBE") < 1 {
        assert!(Instant::now() < sent_by, "{:?}", fake.seen());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let again = sub.subscribe(["k"]).await;
    assert!(matches!(again, Err(Error::Timeout { .. })), "{again:?}");
    assert_eq!(fake.count("SUBSCRIBE"), 2, "{:?}", fake.seen());
    // The first call ended with the unsubscribe; the unsubscribe got no answer.
    assert!(first.await.unwrap().is_ok());
    assert!(matches!(ended.await.unwrap(), Err(Error::Timeout { .. })));

    // On a real node, which answers all three in order, each call is answered and the
    // channel is held once.
    let local = cluster(0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut sub = client.subscriber().await.unwrap();
    let (one, two) = (sub.handle(), sub.handle());
    let (first, ended, again) = tokio::join!(
        one.subscribe(["k"]),
        two.unsubscribe(["k"]),
        sub.subscribe(["k"])
    );
    first.unwrap();
    ended.unwrap();
    again.unwrap();
    assert_eq!(classic_holders(&local, "k").await.len(), 1);
    client.publish("k", "heard").await.unwrap();
    let m = next_message(&mut sub, Duration::from_secs(5)).await;
    assert_eq!((m.channel, m.payload), (b("k"), b("heard")));
}

/// A subscriber connection the node refuses (the user's password changed since the
/// client connected): a sharded subscribe, which only the slot's primary can hold,
/// fails at once with `Error::Auth`, not with a timeout. A classic one tries the other
/// nodes (ACLs are per node), here all refusing: it times out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscriber_connection_fails_the_subscribe_with_its_cause() {
    let (local, client) = as_acl_user("sub on >subpass ~* &* +@all").await;
    support::set_user(&local, "sub resetpass >rotated").await;
    let config = SubscriberConfig::default().subscribe_timeout(Duration::from_secs(20));
    let sub = client.subscriber_with(config).await.unwrap();
    let started = Instant::now();
    let err = sub.ssubscribe(["orders:{eu}"]).await.unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let config = SubscriberConfig::default().subscribe_timeout(Duration::from_secs(1));
    let sub = client.subscriber_with(config).await.unwrap();
    let err = sub.subscribe(["news"]).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tens_of_thousands_of_channels_subscribe_and_unsubscribe_in_one_call() {
    let local = cluster(0).await;
    // The default 5 s response timeout bounds each call: confirmations matched one by
    // one against the whole list took longer than that for 50,000 channels.
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut sub = client.subscriber().await.unwrap();
    let channels: Vec<String> = (0..50_000).map(|i| format!("many:{i}")).collect();
    sub.subscribe(&channels).await.unwrap();
    let shard: Vec<String> = (0..20_000).map(|i| format!("smany:{{x}}{i}")).collect();
    sub.ssubscribe(&shard).await.unwrap();
    client.publish("many:49999", "last").await.unwrap();
    client.spublish("smany:{x}19999", "last").await.unwrap();
    expect_messages(
        &mut sub,
        &[
            (b("many:49999"), b("last")),
            (b("smany:{x}19999"), b("last")),
        ],
        Duration::from_secs(5),
    )
    .await;
    // Sharded channels are counted on the primary of their slot only.
    let owner = local.master_of_slot(key_slot(b"smany:{x}0")).await.unwrap();
    let owner = local.connect_node(owner).await.unwrap();
    async fn shard_counts(owner: &redcluster::NodeConnection) -> Vec<i64> {
        let mut counts = Vec::new();
        for channel in ["smany:{x}0", "smany:{x}19999"] {
            counts.push(support::pubsub_count(owner, "SHARDNUMSUB", channel).await);
        }
        counts
    }
    assert_eq!(shard_counts(&owner).await, [1, 1]);
    sub.unsubscribe(&channels).await.unwrap();
    sub.sunsubscribe(&shard).await.unwrap();
    let counts: Value = client
        .query(cmd("PUBSUB").arg("NUMSUB").arg("many:0").arg("many:49999"))
        .await
        .unwrap();
    assert_eq!(
        channel_counts(counts),
        [("many:0".to_string(), 0), ("many:49999".to_string(), 0)]
    );
    assert_eq!(shard_counts(&owner).await, [0, 0]);
}

/// `PUBSUB NUMSUB` (or `SHARDNUMSUB`) of `channels`, summed over the cluster.
async fn subscriber_counts(client: &ClusterClient, sharded: bool, channels: &[String]) -> Vec<i64> {
    let sub = if sharded { "SHARDNUMSUB" } else { "NUMSUB" };
    let reply: Value = client
        .query(cmd("PUBSUB").arg(sub).args(channels))
        .await
        .unwrap();
    let counts: HashMap<String, i64> = channel_counts(reply).into_iter().collect();
    channels.iter().map(|c| counts[c]).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_subscribing_at_once_are_each_answered_and_each_channel_is_held_once() {
    let local = cluster(0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    // Room for every message the test publishes before it reads them.
    let config = SubscriberConfig::default().queue_capacity(10_000);
    let mut sub = client.subscriber_with(config).await.unwrap();
    let handle = sub.handle();
    let classic: Vec<String> = (0..1000).map(|i| format!("burst:{i}")).collect();
    let sharded: Vec<String> = (0..1000).map(|i| format!("sburst:{i}")).collect();
    let late: Vec<String> = classic.iter().map(|c| format!("{c}:late")).collect();
    // Every channel named by two callers at once and by a third that gives up at once;
    // and channels only callers that gave up named (their subscriptions stay asked for,
    // and are made).
    let subscribes = classic
        .iter()
        .chain(&classic)
        .map(|c| handle.subscribe([c]));
    let ssubscribes = sharded
        .iter()
        .chain(&sharded)
        .map(|c| handle.ssubscribe([c]));
    let gave_up = classic
        .iter()
        .chain(&late)
        .map(|c| tokio::time::timeout(Duration::ZERO, handle.subscribe([c])));
    let (subscribed, ssubscribed, _) = tokio::join!(
        futures_util::future::join_all(subscribes),
        futures_util::future::join_all(ssubscribes),
        futures_util::future::join_all(gave_up),
    );
    for result in subscribed.into_iter().chain(ssubscribed) {
        result.unwrap();
    }
    // The subscriptions of callers that gave up are made all the same.
    let deadline = Instant::now() + Duration::from_secs(5);
    while subscriber_counts(&client, false, &late).await != vec![1; 1000] {
        assert!(
            Instant::now() < deadline,
            "the late-only channels were not all made"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut sent = publish_all(&client, &classic, "1", false).await;
    sent.extend(publish_all(&client, &sharded, "1", true).await);
    sent.extend(publish_all(&client, &late, "1", false).await);
    // Each message comes once: counted until every one and a last marker came (classic
    // messages published through other nodes may still pass the marker).
    client.publish(classic[0].as_str(), "end").await.unwrap();
    let mut heard: HashMap<(Bytes, Bytes), usize> = HashMap::new();
    let mut marker = false;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !marker || heard.len() < sent.len() {
        match tokio::time::timeout_at(deadline, sub.next()).await {
            Ok(Some(PubSubEvent::Message(m))) if m.payload == b("end") => marker = true,
            Ok(Some(PubSubEvent::Message(m))) => {
                *heard.entry((m.channel, m.payload)).or_default() += 1;
            }
            Ok(Some(_)) => {}
            other => panic!(
                "{} of {} messages heard, marker {marker}: {other:?}",
                heard.len(),
                sent.len()
            ),
        }
    }
    let twice: Vec<_> = heard.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "heard more than once: {twice:?}");
    let unsent: Vec<_> = heard.keys().filter(|m| !sent.contains(m)).collect();
    assert!(unsent.is_empty(), "heard, never published: {unsent:?}");
    assert_eq!(
        subscriber_counts(&client, false, &classic).await,
        vec![1; 1000]
    );
    assert_eq!(
        subscriber_counts(&client, true, &sharded).await,
        vec![1; 1000]
    );

    // Half of them ended by callers at once, by name; the other half stay.
    let (ended, kept) = classic.split_at(500);
    let (sended, skept) = sharded.split_at(500);
    let unsubscribes = ended.iter().map(|c| handle.unsubscribe([c]));
    let sunsubscribes = sended.iter().map(|c| handle.sunsubscribe([c]));
    let (unsubscribed, sunsubscribed) = tokio::join!(
        futures_util::future::join_all(unsubscribes),
        futures_util::future::join_all(sunsubscribes),
    );
    for result in unsubscribed.into_iter().chain(sunsubscribed) {
        result.unwrap();
    }
    assert_eq!(subscriber_counts(&client, false, ended).await, vec![0; 500]);
    assert_eq!(subscriber_counts(&client, true, sended).await, vec![0; 500]);
    assert_eq!(subscriber_counts(&client, false, kept).await, vec![1; 500]);
    assert_eq!(subscriber_counts(&client, true, skept).await, vec![1; 500]);
    let mut sent = publish_all(&client, kept, "2", false).await;
    sent.extend(publish_all(&client, skept, "2", true).await);
    expect_messages(&mut sub, &sent, Duration::from_secs(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_over_the_servers_bulk_limit_is_refused_and_the_others_stay_up() {
    let local = cluster(0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let mut sub = client.subscriber().await.unwrap();
    sub.subscribe(["bulk-keep"]).await.unwrap();
    // Sent, the server would close the connection that carries "bulk-keep" too, on
    // every resubscription.
    let huge = Bytes::from(vec![b'c'; 512 * 1024 * 1024 + 1]);
    let refused = sub.subscribe([huge.clone()]).await;
    assert!(
        matches!(&refused, Err(Error::Config(m)) if m.contains("512 MiB")),
        "{refused:?}"
    );
    let refused = sub.ssubscribe([huge.clone()]).await;
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");
    let refused = sub.unsubscribe([huge]).await;
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");
    // The subscription held stayed up all along: its next message comes with no gap.
    client.publish("bulk-keep", "still").await.unwrap();
    let others = expect_messages(
        &mut sub,
        &[(b("bulk-keep"), b("still"))],
        Duration::from_secs(5),
    )
    .await;
    assert!(others.is_empty(), "{others:?}");
    assert_eq!(
        subscriber_counts(&client, false, &["bulk-keep".to_string()]).await,
        vec![1]
    );
}

/// A subscriber connection still in its handshake has no `PING` to answer: its
/// liveness is judged from when it is open (the connect timeout bounds the rest). A
/// handshake slower than two `ping_interval`s (TLS far away, a slow credentials
/// provider; here a relay holds the node's answers back) had the link replaced again
/// and again, a new connection each time, its subscriptions made late or never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_handshake_is_no_dead_subscriber_connection() {
    let local = cluster(0).await;
    let channel = "slow-hello:{3}";
    let owner = local
        .master_of_slot(key_slot(channel.as_bytes()))
        .await
        .unwrap();
    let (relay, remap) = support::relay::Relay::in_front_of(local.node_addr(owner)).await;
    let seeds: Vec<String> = local
        .seeds()
        .into_iter()
        .filter(|s| *s != local.node_addr(owner))
        .collect();
    let client = ClusterClient::builder()
        .nodes(seeds)
        .address_remap(remap)
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let config = SubscriberConfig::default()
        .ping_interval(Duration::from_millis(100))
        .subscribe_timeout(Duration::from_secs(10));
    let sub = client.subscriber_with(config).await.unwrap();
    let before = relay.accepted();
    relay.hold();
    let subscribing = tokio::spawn({
        let handle = sub.handle();
        async move { handle.ssubscribe([channel]).await }
    });
    // The handshake takes this long: many times the 200 ms a link may leave a `PING`
    // unanswered.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    relay.release();
    subscribing.await.unwrap().unwrap();
    assert_eq!(relay.accepted(), before + 1, "the link was replaced");
}
