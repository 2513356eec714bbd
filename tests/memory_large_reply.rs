//! A connection does not keep the memory of a large reply once its caller dropped it,
//! nor a subscriber's link that of a large message. One test in this binary, so the
//! process's resident size is this test's alone.

mod support;

use std::time::Duration;

use futures_util::StreamExt;
use redcluster::testkit::LocalCluster;
use redcluster::{ClusterClient, PubSubEvent, Subscriber};

const VALUE: usize = 64 * 1024 * 1024;
/// Over the 32 MB up to which the allocator may keep what is freed in its heap (its
/// mmap threshold grows up to that as large blocks are freed): a larger block goes back
/// to the system when freed, so the resident size shows whether it is still held. The
/// nodes let a subscriber's output buffer hold it (`client-output-buffer-limit pubsub`
/// off: by default they close a subscriber's connection past 32 MB).
const MESSAGE: usize = 48 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_reply_leaves_no_large_buffer_behind() {
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .config("client-output-buffer-limit", "pubsub 0 0 0")
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(30))
        .build()
        .await
        .unwrap();
    let key = "big:{a}";
    client.set(key, vec![b'x'; VALUE]).await.unwrap();
    client.set("small:{a}", "v").await.unwrap();
    client
        .set("medium:{a}", vec![b'm'; 200 * 1024])
        .await
        .unwrap();
    let before = support::rss_bytes();
    let value: Vec<u8> = client.get(key).await.unwrap();
    assert_eq!(value.len(), VALUE);
    drop(value);
    // Later replies on the same connection: the buffer makes room for them.
    for _ in 0..100 {
        let small: String = client.get("small:{a}").await.unwrap();
        assert_eq!(small, "v");
    }
    let after = support::rss_bytes();
    println!("resident before the large GET {before}, after it and 100 small ones {after}");
    assert!(
        after < before + VALUE as u64 / 2,
        "the connection kept the large reply's buffer: {before} -> {after} bytes resident"
    );
    // The large reply followed at once by one of 200 KB, likely in the same read: the
    // buffer is given up once that one is out too.
    let mut pipeline = client.pipeline();
    pipeline.get(key).get("medium:{a}");
    let replies = pipeline.execute().await.unwrap();
    assert_eq!(replies.len(), 2);
    drop(replies);
    for _ in 0..100 {
        let small: String = client.get("small:{a}").await.unwrap();
        assert_eq!(small, "v");
    }
    let later = support::rss_bytes();
    println!("after a pipeline of the large and a 200 KB reply: {later}");
    assert!(
        later < before + VALUE as u64 / 2,
        "the connection kept the large reply's buffer: {before} -> {later} bytes resident"
    );
    // The large reply followed by a small one that its caller keeps (a cached value):
    // read with the large one's end, it was a slice of the large buffer and kept it.
    let mut pipeline = client.pipeline();
    pipeline.get(key).get("small:{a}");
    let mut replies = pipeline.execute().await.unwrap();
    let kept = replies.pop().unwrap();
    drop(replies);
    for _ in 0..100 {
        let small: String = client.get("small:{a}").await.unwrap();
        assert_eq!(small, "v");
    }
    let keeping = support::rss_bytes();
    println!("after a pipeline of the large and a small reply kept: {keeping}");
    assert_eq!(kept, redcluster::Value::Bulk("v".into()));
    assert!(
        keeping < before + VALUE as u64 / 2,
        "the small reply kept the large reply's buffer: {before} -> {keeping} bytes resident"
    );

    // A subscriber's link alike: a large message read and dropped, then small ones,
    // enough to fill what is left of a 16 KB buffer's room many times over.
    let mut sub = client.subscriber().await.unwrap();
    sub.subscribe(["big-news"]).await.unwrap();
    let before = support::rss_bytes();
    client
        .publish("big-news", vec![b'x'; MESSAGE])
        .await
        .unwrap();
    assert_eq!(next_payload(&mut sub).await, MESSAGE);
    for _ in 0..200 {
        client.publish("big-news", vec![b's'; 512]).await.unwrap();
        assert_eq!(next_payload(&mut sub).await, 512);
    }
    let after = support::rss_bytes();
    println!("subscriber: resident before the large message {before}, after it {after}");
    assert!(
        after < before + MESSAGE as u64 / 2,
        "the subscriber's link kept the large message's buffer: {before} -> {after} bytes"
    );
}

/// The length of the next message's payload (dropped at once).
async fn next_payload(sub: &mut Subscriber) -> usize {
    let event = tokio::time::timeout(Duration::from_secs(30), sub.next())
        .await
        .expect("no message within 30 s")
        .expect("the stream ended");
    match event {
        PubSubEvent::Message(m) => m.payload.len(),
        other => panic!("expected a message, got {other:?}"),
    }
}
