//! What every example starts with: a client for the cluster in `REDIS_CLUSTER_NODES`, or
//! for a 6-node cluster (3 masters, 3 replicas) spawned on 127.0.0.1 for the example.

use redcluster::testkit::LocalCluster;
use redcluster::ClusterClient;

/// The client, and the local cluster when one was spawned: keep it alive while the
/// example runs; dropping it stops the servers.
pub(crate) async fn connect() -> redcluster::Result<(ClusterClient, Option<LocalCluster>)> {
    if std::env::var_os("REDIS_CLUSTER_NODES").is_some() {
        println!("using the cluster in REDIS_CLUSTER_NODES");
        println!("(the examples write and delete demo keys: use a scratch cluster)");
        let client = ClusterClient::builder_from_env()?.build().await?;
        return Ok((client, None));
    }
    println!("spawning a local 6-node cluster (3 masters, 3 replicas) ...");
    let cluster = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(1)
        .start()
        .await?;
    println!("cluster up: {}", cluster.seeds().join(", "));
    let client = ClusterClient::connect(cluster.seeds()).await?;
    Ok((client, Some(cluster)))
}

/// A reply as `redis-cli` would print it on one line: `OK`, `42`, `"text"`, `(nil)`,
/// `(error) WRONGTYPE ...`, `[1, "a"]`.
#[allow(dead_code)] // not every example prints raw replies
pub(crate) fn show(value: &redcluster::Value) -> String {
    use redcluster::Value;
    let list = |items: &[Value]| {
        let parts: Vec<String> = items.iter().map(show).collect();
        format!("[{}]", parts.join(", "))
    };
    match value {
        Value::Nil => "(nil)".to_string(),
        Value::Int(n) => n.to_string(),
        Value::Simple(s) => String::from_utf8_lossy(s).into_owned(),
        Value::Bulk(b) => format!("{:?}", String::from_utf8_lossy(b)),
        Value::ServerError(e) => format!("(error) {e}"),
        Value::Array(items) | Value::Set(items) | Value::Push(items) => list(items),
        Value::Double(d) => d.to_string(),
        Value::Bool(b) => b.to_string(),
        other => format!("{other:?}"),
    }
}
