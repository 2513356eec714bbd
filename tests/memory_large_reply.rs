//! A connection does not keep the memory of a large reply once its caller dropped it.
//! One test in this binary, so the process's resident size is this test's alone.

mod support;

use std::time::Duration;

use redcluster::testkit::LocalCluster;
use redcluster::ClusterClient;

const VALUE: usize = 64 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_reply_leaves_no_large_buffer_behind() {
    let local = LocalCluster::builder()
        .replicas_per_master(0)
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
}
