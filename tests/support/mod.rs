//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

pub mod capture;
pub mod fake_cluster;
pub mod fake_node;
pub mod relay;
pub mod standalone;

/// A started local cluster of `masters` masters with `replicas` replicas each (testkit
/// defaults otherwise).
pub async fn cluster(masters: usize, replicas: usize) -> redcluster::testkit::LocalCluster {
    redcluster::testkit::LocalCluster::builder()
        .masters(masters)
        .replicas_per_master(replicas)
        .start()
        .await
        .expect("local cluster starts")
}

/// Freezes node `seed` of `local` and gives a builder of a lazily connected client with
/// it as its only seed (a 5 s connect timeout, a 10 s response timeout): the client's
/// first requests are routed with no owner known for any slot, and wait for the
/// discovery that follows `local.resume(seed)`.
pub fn lazy_client_of_a_frozen_seed(
    local: &redcluster::testkit::LocalCluster,
    seed: usize,
) -> redcluster::ClusterClientBuilder {
    local.pause(seed).unwrap();
    redcluster::ClusterClient::builder()
        .nodes([local.node_addr(seed)])
        .lazy_connect(true)
        .connect_timeout(std::time::Duration::from_secs(5))
        .response_timeout(std::time::Duration::from_secs(10))
}

/// A key whose slot is `slot`, with `n` as a distinguishing suffix: `{tag}:n` for the
/// first tag that hashes there (`t0` to `t166935` cover every slot).
pub fn key_in_slot(slot: u16, n: usize) -> String {
    (0u64..1_000_000)
        .map(|i| format!("{{t{i}}}:{n}"))
        .find(|k| redcluster::key_slot(k.as_bytes()) == slot)
        .expect("some tag hashes to every slot")
}

/// Makes every node of `local` announce itself as `name(index)` (a host name, as in
/// `docker/` where nodes announce `redis-cluster-N:6379`) and waits until node 0 reports
/// all of them. Returns the `announced -> reachable` address map for an `AddressRemap`.
pub async fn announce_hostnames(
    local: &redcluster::testkit::LocalCluster,
    nodes: usize,
    name: impl Fn(usize) -> String,
) -> std::collections::HashMap<String, String> {
    use redcluster::{cmd, Value};
    let mut remap = std::collections::HashMap::new();
    for i in 0..nodes {
        let node = local.connect_node(i).await.unwrap();
        for (param, value) in [
            ("cluster-announce-hostname", name(i)),
            ("cluster-preferred-endpoint-type", "hostname".to_owned()),
        ] {
            let reply = node
                .send(cmd("CONFIG").arg("SET").arg(param).arg(value.as_str()))
                .await
                .unwrap();
            assert_eq!(reply, Value::Simple("OK".into()), "CONFIG SET {param}");
        }
        let port = local.node_addr(i).rsplit_once(':').unwrap().1.to_string();
        remap.insert(format!("{}:{port}", name(i)), local.node_addr(i));
    }
    // Host names spread by gossip; wait until node 0 reports all of them.
    let node = local.connect_node(0).await.unwrap();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let shards = node.send(cmd("CLUSTER").arg("SHARDS")).await.unwrap();
        let text = format!("{shards:?}");
        if (0..nodes).all(|i| text.contains(&name(i))) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "host names never spread: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    remap
}

/// A master of `local` other than `node`.
pub async fn master_other_than(local: &redcluster::testkit::LocalCluster, node: usize) -> usize {
    local
        .masters()
        .await
        .unwrap()
        .into_iter()
        .find(|&m| m != node)
        .unwrap()
}

/// A master other than the one that owns `slot` now: where to move or migrate it.
pub async fn other_master(local: &redcluster::testkit::LocalCluster, slot: u16) -> usize {
    let owner = local.master_of_slot(slot).await.unwrap();
    master_other_than(local, owner).await
}

/// The number in `field` of `INFO <section>` on node `index`: the line `field:N`
/// (`blocked_clients`), or `N` in a line `name:field=N,…` named `name:field`
/// (`cmdstat_get:calls`). `None` when the node reports no such field.
pub async fn info_field(
    local: &redcluster::testkit::LocalCluster,
    index: usize,
    section: &str,
    field: &str,
) -> Option<u64> {
    use redcluster::{cmd, Value};
    let node = local.connect_node(index).await.unwrap();
    let info = match node.send(cmd("INFO").arg(section)).await.unwrap() {
        Value::Bulk(b) | Value::Verbatim { text: b, .. } => String::from_utf8(b.to_vec()).unwrap(),
        other => panic!("{other:?}"),
    };
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix([':', '=']))
        .and_then(|rest| rest.split(',').next()?.trim().parse().ok())
}

/// The subscriber count `PUBSUB <subcommand> channel` (`NUMSUB`, `SHARDNUMSUB`) reports
/// on `conn`'s node: an array `[channel, n]` over RESP2, a map over RESP3.
pub async fn pubsub_count(
    conn: &redcluster::NodeConnection,
    subcommand: &str,
    channel: &str,
) -> i64 {
    use redcluster::{cmd, Value};
    let reply = conn
        .send(cmd("PUBSUB").arg(subcommand).arg(channel))
        .await
        .unwrap();
    let count = match &reply {
        Value::Array(items) => items.get(1),
        Value::Map(pairs) => pairs.first().map(|(_, v)| v),
        _ => None,
    };
    match count {
        Some(Value::Int(n)) => *n,
        _ => panic!("PUBSUB {subcommand} {channel}: {reply:?}"),
    }
}

/// Sets `key` to `value` with one replica's acknowledgement (`WAIT`), so that a replica
/// read finds it; panics if no replica acknowledged within 5 s.
#[allow(dead_code)] // not every test binary reads from replicas
pub async fn set_on_a_replica(client: &redcluster::ClusterClient, key: &str, value: &str) {
    let ((), acked) = client
        .query_durable(
            redcluster::cmd("SET").arg(key).arg(value),
            redcluster::Durability::new(1, std::time::Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert_eq!(acked, 1, "{key}: no replica acknowledged");
}

/// `cmdstat_<name>` calls on node `index`, from `INFO commandstats` (0 when none ran).
pub async fn calls(local: &redcluster::testkit::LocalCluster, index: usize, name: &str) -> u64 {
    let field = format!("cmdstat_{name}:calls");
    info_field(local, index, "commandstats", &field)
        .await
        .unwrap_or(0)
}

/// The index in `local` of the node `client` sends `key` to (its slot's primary, as the
/// client's slot map has it).
pub fn owner_index(
    local: &redcluster::testkit::LocalCluster,
    client: &redcluster::ClusterClient,
    key: &str,
) -> usize {
    let addr = client.node_for_key(key.as_bytes()).expect("a routed slot");
    local.index_of_addr(&addr).expect("a node of the cluster")
}

/// A key named `{prefix}{{n}}` (the first `n` that works) that `client` routes to another
/// node than `key`.
#[allow(dead_code)] // not every test binary needs one
pub fn key_elsewhere(client: &redcluster::ClusterClient, key: &str, prefix: &str) -> String {
    let node = client.node_for_key(key.as_bytes());
    (0..10_000)
        .map(|i| format!("{prefix}{{{i}}}"))
        .find(|k| client.node_for_key(k.as_bytes()) != node)
        .expect("a key on another node")
}

/// Runs `ACL SETUSER` with `rules` (split at spaces) on every node: ACLs are per node.
pub async fn set_user(local: &redcluster::testkit::LocalCluster, rules: &str) {
    for node in local.nodes() {
        let conn = local.connect_node(node.index).await.unwrap();
        let mut command = redcluster::cmd("ACL").arg("SETUSER");
        for rule in rules.split_whitespace() {
            command = command.arg(rule);
        }
        let reply = conn.send(command).await.unwrap();
        assert_eq!(
            reply,
            redcluster::Value::Simple("OK".into()),
            "ACL SETUSER {rules}"
        );
    }
}

/// Waits until node `index` answers `BUSY`: a script has run there past the cluster's
/// `busy-reply-threshold` (10 s at most).
pub async fn wait_until_busy(local: &redcluster::testkit::LocalCluster, index: usize) {
    let probe = local.connect_node(index).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match probe.send(redcluster::cmd("PING")).await.unwrap() {
            redcluster::Value::ServerError(e) if e.code() == "BUSY" => return,
            other => assert!(
                std::time::Instant::now() < deadline,
                "never BUSY: {other:?}"
            ),
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// A loopback address whose connects are never answered, as of a host gone silent: a
/// listener with a backlog of 0, whose one queue place a connection it never accepts
/// fills. Linux then drops further SYNs, so a dialler waits until its own timeout,
/// where a closed port would refuse at once. Silent while this value lives.
pub struct SilentAddr {
    pub addr: String,
    _listener: socket2::Socket,
    _queued: std::net::TcpStream,
}

/// A [`SilentAddr`], checked to be silent.
pub fn silent_addr() -> SilentAddr {
    use socket2::{Domain, Socket, Type};
    let listener = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    let any_port: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    listener.bind(&any_port.into()).unwrap();
    listener.listen(0).unwrap();
    let addr = listener.local_addr().unwrap().as_socket().unwrap();
    let queued = std::net::TcpStream::connect(addr).unwrap();
    // A kernel that queued more than the backlog would make the tests that rely on
    // silence pass or fail for the wrong reason.
    let probe = std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(200));
    assert!(
        matches!(&probe, Err(e) if e.kind() == std::io::ErrorKind::TimedOut),
        "a connect to a full backlog did not time out: {probe:?}"
    );
    SilentAddr {
        addr: addr.to_string(),
        _listener: listener,
        _queued: queued,
    }
}

/// Resident set size of this process, from /proc.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}
