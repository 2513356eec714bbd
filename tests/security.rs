//! Authentication, ACLs and TLS against real local clusters (the testkit): `requirepass`,
//! ACL users with and without the permissions they need, and TLS-only clusters with
//! mutual TLS. All traffic is to loopback addresses (127.0.0.1, and 127.0.0.2 for a
//! forwarder that stands in for NAT).

mod support;

use std::time::Duration;

use redcluster::testkit::{FailoverMode, LocalCluster, TlsAuthClients};
use redcluster::{
    cmd, key_slot, AddressRemap, ClusterClient, ClusterClientBuilder, Error, NodeConnection,
    TlsConfig, Value,
};

use support::{key_in_slot, other_master, set_user};

const PASSWORD: &str = "s3cret-cluster-pass";
const SETTLE: Duration = Duration::from_secs(30);

/// Commands the client itself sends, beyond the user's own: what an ACL user needs on
/// top of its data permissions (see the README's security notes). `HELLO` and `AUTH`
/// need none: the server allows them before authentication.
const CLIENT_PERMISSIONS: &str = "+cluster|shards +cluster|slots +cluster|nodes +command|info \
     +readonly +asking +ping +unwatch";

async fn crud(client: &ClusterClient, prefix: &str) {
    for i in 0..30 {
        let key = format!("{prefix}{i}");
        client.set(key.as_str(), format!("v{i}")).await.unwrap();
    }
    for i in 0..30 {
        let key = format!("{prefix}{i}");
        let v: Option<String> = client.get(key.as_str()).await.unwrap();
        assert_eq!(v.as_deref(), Some(format!("v{i}").as_str()), "{key}");
    }
    let n: i64 = client
        .query(cmd("INCR").arg(format!("{prefix}counter")))
        .await
        .unwrap();
    assert_eq!(n, 1);
    let deleted: i64 = client
        .query(cmd("DEL").arg(format!("{prefix}0")))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    let v: Option<String> = client.get(format!("{prefix}0")).await.unwrap();
    assert_eq!(v, None);
}

/// Fails the master of `key`'s slot over to its replica and checks the key survives.
async fn failover_and_check(local: &LocalCluster, client: &ClusterClient, key: &str) {
    client.set(key, "before-failover").await.unwrap();
    let slot = key_slot(key.as_bytes());
    let master = local.master_of_slot(slot).await.unwrap();
    let replica = local.replicas_of(master).await.unwrap()[0];
    local
        .failover(replica, FailoverMode::Graceful)
        .await
        .unwrap();
    assert_eq!(local.master_of_slot(slot).await.unwrap(), replica);
    let v: Option<String> = client.get(key).await.unwrap();
    assert_eq!(v.as_deref(), Some("before-failover"));
    client.set(key, "after-failover").await.unwrap();
    let v: Option<String> = client.get(key).await.unwrap();
    assert_eq!(v.as_deref(), Some("after-failover"));
    // The client now routes the slot to the promoted replica.
    client.refresh_topology().await.unwrap();
    assert_eq!(
        client.primary_for_slot(slot),
        Some(local.node_addr(replica))
    );
}

// ---- requirepass ------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requirepass_cluster_connects_discovers_serves_and_fails_over_with_the_password() {
    let local = LocalCluster::builder()
        .config("requirepass", PASSWORD)
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes([local.seeds()[0].as_str()])
        .password(PASSWORD)
        .build()
        .await
        .unwrap();
    let mut known = client.known_nodes();
    known.sort();
    let mut all = local.seeds();
    all.sort();
    assert_eq!(known, all, "every node is discovered from one seed");
    crud(&client, "rp:").await;
    failover_and_check(&local, &client, "rp:failover").await;

    // The password in a seed URL works the same.
    let url = format!("redis://:{PASSWORD}@{}", local.seeds()[1]);
    let client = ClusterClient::connect([url]).await.unwrap();
    let v: Option<String> = client.get("rp:failover").await.unwrap();
    assert_eq!(v.as_deref(), Some("after-failover"));

    // An empty password in a URL is no password: the first seed's `:@` does not hide
    // the second seed's (credentials come from the first seed that has them), on RESP2
    // too, where an empty one would go out as `AUTH ""`.
    let seeds = [
        format!("redis://:@{}", local.seeds()[0]),
        format!("redis://:{PASSWORD}@{}", local.seeds()[1]),
    ];
    for protocol in [redcluster::Protocol::Resp3, redcluster::Protocol::Resp2] {
        let client = ClusterClient::builder()
            .nodes(&seeds)
            .protocol(protocol)
            .build()
            .await
            .unwrap();
        let v: Option<String> = client.get("rp:failover").await.unwrap();
        assert_eq!(v.as_deref(), Some("after-failover"), "{protocol:?}");
    }
}

/// Three primaries, no replicas, `requirepass` set to [`PASSWORD`].
async fn password_cluster() -> LocalCluster {
    LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .config("requirepass", PASSWORD)
        .start()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_missing_password_fails_at_connect_time_with_auth() {
    let local = password_cluster().await;
    let err = ClusterClient::builder()
        .nodes(local.seeds())
        .password("not-the-password")
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    assert!(!err.is_retryable());

    let err = ClusterClient::builder()
        .nodes(local.seeds())
        .username("nobody")
        .password(PASSWORD)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");

    // No password at all: HELLO is refused with NOAUTH, an authentication failure too.
    let err = ClusterClient::connect(local.seeds()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("NOAUTH")),
        "{err:?}"
    );
    // On RESP2 the handshake would send nothing without a password: a PING asks.
    let err = ClusterClient::builder()
        .nodes(local.seeds())
        .protocol(redcluster::Protocol::Resp2)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("NOAUTH")),
        "{err:?}"
    );
}

// ---- credentials provider ---------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_provider_is_asked_on_every_new_connection() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    let local = password_cluster().await;
    let asked = Arc::new(AtomicUsize::new(0));
    let current = Arc::new(Mutex::new(PASSWORD.to_string()));
    let provider = {
        let (asked, current) = (Arc::clone(&asked), Arc::clone(&current));
        redcluster::CredentialsProvider::new(move || {
            asked.fetch_add(1, Ordering::SeqCst);
            let password = current.lock().unwrap().clone();
            async move { Ok((None, redcluster::Secret::new(password))) }
        })
    };
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .password("stale-password-ignored")
        .credentials_provider(provider)
        .build()
        .await
        .unwrap();
    crud(&client, "cp:").await;
    let after_connect = asked.load(Ordering::SeqCst);
    assert!(after_connect >= 3, "asked {after_connect} times");

    // Rotate the password on every node. Open connections stay authenticated; cut the
    // client's, and its new ones must use the provider's new answer.
    let rotated = "rotated-pass-2";
    *current.lock().unwrap() = rotated.to_string();
    let before = asked.load(Ordering::SeqCst);
    for killed in change_password_and_cut_clients(&local, rotated).await {
        assert!(killed >= 1, "{killed} connections cut");
    }
    for i in 1..30 {
        let v: Option<String> = client.get(format!("cp:{i}")).await.unwrap();
        assert_eq!(v, Some(format!("v{i}")));
    }
    assert!(
        asked.load(Ordering::SeqCst) > before,
        "reconnecting asked the provider again"
    );
    // The old password no longer works; a fresh client with the provider does.
    let err = ClusterClient::builder()
        .nodes(local.seeds())
        .password(PASSWORD)
        .build()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    let fresh = ClusterClient::builder()
        .nodes(local.seeds())
        .credentials_provider({
            let current = Arc::clone(&current);
            redcluster::CredentialsProvider::new(move || {
                let password = current.lock().unwrap().clone();
                async move { Ok((Some("default".to_string()), password.into())) }
            })
        })
        .build()
        .await
        .unwrap();
    crud(&fresh, "cp2:").await;

    // A provider that fails fails the connection with its error.
    let err = ClusterClient::builder()
        .nodes(local.seeds())
        .credentials_provider(redcluster::CredentialsProvider::new(|| async {
            Err(Error::Auth("vault unreachable".into()))
        }))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("vault")),
        "{err:?}"
    );
    // A provider that never answers (a secrets store down): its error, within the
    // connect timeout, not a handshake timeout that blames the node (and counts against
    // its breaker).
    let err = ClusterClient::builder()
        .nodes(local.seeds())
        .connect_timeout(Duration::from_millis(300))
        .credentials_provider(redcluster::CredentialsProvider::new(|| {
            std::future::pending::<redcluster::Result<(Option<String>, redcluster::Secret)>>()
        }))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Auth(m) if m.contains("credentials provider")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_password_changed_under_the_client_fails_requests_with_auth_at_once() {
    let local = password_cluster().await;
    let timeout = Duration::from_secs(5);
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .password(PASSWORD)
        .response_timeout(timeout)
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    client.set("pw:{a}", "v").await.unwrap();
    // The password changes on every node and the client's connections are cut: its
    // reconnects are refused.
    change_password_and_cut_clients(&local, "changed-pass").await;
    // Once the client has seen its connections cut (a request racing the cut would be
    // written on the dying connection, and report that it may have run):
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while client.health().nodes.iter().any(|n| n.connected) {
        assert!(
            std::time::Instant::now() < deadline,
            "the cut connections still look open"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // More requests than the breaker's threshold (5 failures): each is told the cause,
    // none retries to its deadline, and no breaker opens to answer `CircuitOpen`.
    for i in 0..8 {
        let started = std::time::Instant::now();
        let err = client.get::<_, Option<String>>("pw:{a}").await.unwrap_err();
        assert!(matches!(err, Error::Auth(_)), "request {i}: {err:?}");
        assert!(
            started.elapsed() < timeout / 2,
            "request {i} took {:?}",
            started.elapsed()
        );
    }
    let health = client.health();
    let owner = health
        .nodes
        .iter()
        .find(|n| n.last_error.is_some())
        .expect("the refused node's last error is reported");
    assert_eq!(owner.breaker, redcluster::BreakerState::Closed, "{owner:?}");
    let (why, _) = owner.last_error.as_ref().unwrap();
    assert!(
        !why.contains(PASSWORD) && !why.contains("changed-pass"),
        "{why}"
    );
}

/// Sets `requirepass` to `password` on every node, then cuts every client connection
/// but the one asking (open connections stay authenticated otherwise); how many each
/// node cut.
async fn change_password_and_cut_clients(local: &LocalCluster, password: &str) -> Vec<i64> {
    let mut killed = Vec::new();
    for node in local.nodes() {
        let admin = local.connect_node(node.index).await.unwrap();
        let reply = admin
            .send(cmd("CONFIG").arg("SET").arg("requirepass").arg(password))
            .await
            .unwrap();
        assert_eq!(reply, Value::Simple("OK".into()));
        let kill = cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal");
        match admin.send(kill.arg("SKIPME").arg("yes")).await.unwrap() {
            Value::Int(n) => killed.push(n),
            other => panic!("CLIENT KILL answered {other:?}"),
        }
    }
    killed
}

// ---- ACL --------------------------------------------------------------------------------

/// A cluster whose users come from its configuration (`user` directives): they exist on
/// every node from the start, replicas and restarted nodes included.
async fn acl_cluster() -> LocalCluster {
    LocalCluster::builder()
        .masters(3)
        .replicas_per_master(1)
        .acl_user(format!(
            "app on >apppass ~app:* +@read +@write -@dangerous {CLIENT_PERMISSIONS}"
        ))
        .acl_user(format!(
            "reader on >readpass ~app:* +@read -@dangerous {CLIENT_PERMISSIONS}"
        ))
        .start()
        .await
        .unwrap()
}

fn as_user(local: &LocalCluster, user: &str, password: &str) -> ClusterClientBuilder {
    ClusterClient::builder()
        .nodes(local.seeds())
        .username(user)
        .password(password.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_users_get_their_keys_and_noperm_elsewhere() {
    let local = acl_cluster().await;
    let app = as_user(&local, "app", "apppass").build().await.unwrap();
    crud(&app, "app:").await;
    // A pipeline across slots, and a read from replicas (READONLY), as the app user.
    let mut p = app.pipeline();
    for i in 0..20 {
        p.set(format!("app:p{i}"), i);
    }
    let replies = p.execute().await.unwrap();
    assert_eq!(replies.len(), 20);

    // Keys outside ~app:* are refused by the server with NOPERM.
    let err = app.set("other:1", "x").await.unwrap_err();
    assert_eq!(err.server_code(), Some("NOPERM"), "{err:?}");
    assert!(matches!(err, Error::Server(_)));
    let err = app
        .query::<Value>(cmd("GET").arg("other:1"))
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some("NOPERM"), "{err:?}");
    // -@dangerous: FLUSHALL is refused.
    let err = app.query::<Value>(cmd("FLUSHALL")).await.unwrap_err();
    assert_eq!(err.server_code(), Some("NOPERM"), "{err:?}");

    // The read-only user reads, and gets NOPERM on writes.
    let reader = as_user(&local, "reader", "readpass")
        .read_from(redcluster::ReadFrom::PreferReplica)
        .build()
        .await
        .unwrap();
    let v: Option<String> = reader.get("app:1").await.unwrap();
    assert_eq!(v.as_deref(), Some("v1"));
    let err = reader.set("app:1", "overwrite").await.unwrap_err();
    assert_eq!(err.server_code(), Some("NOPERM"), "{err:?}");
    let err = reader
        .query::<i64>(cmd("INCR").arg("app:counter"))
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some("NOPERM"), "{err:?}");

    // Wrong password for an ACL user: Error::Auth at connect time.
    let err = as_user(&local, "app", "wrong").build().await.unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");

    // The user and password in a seed URL, as the seed's connection strings give them:
    // every connection is the app user's, and NOPERM shows it.
    let url = format!("redis://app:apppass@{}", local.seeds()[0]);
    let from_url = ClusterClient::builder().nodes([url]).build().await.unwrap();
    crud(&from_url, "app:url:").await;
    let err = from_url.set("other:2", "x").await.unwrap_err();
    assert_eq!(err.server_code(), Some("NOPERM"), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_with_the_documented_permissions_uses_every_client_feature() {
    use futures_util::StreamExt;

    let local = acl_cluster().await;
    let app = as_user(&local, "app", "apppass").build().await.unwrap();
    for i in 0..50 {
        app.set(format!("app:s{i}"), i).await.unwrap();
    }
    // Replica reads (READONLY).
    let replica_reader = as_user(&local, "app", "apppass")
        .read_from(redcluster::ReadFrom::Replica)
        .build()
        .await
        .unwrap();
    let v: Option<String> = replica_reader.get("app:s1").await.unwrap();
    assert_eq!(v.as_deref(), Some("1"));
    // A cluster-wide SCAN (CLUSTER NODES).
    let mut scan = app.scan(redcluster::ScanOptions::default().pattern("app:s*"));
    let mut seen = 0;
    while let Some(key) = tokio::time::timeout(SETTLE, scan.next()).await.unwrap() {
        key.unwrap();
        seen += 1;
        assert!(seen <= 50, "the scan went past the 50 keys");
    }
    assert_eq!(seen, 50);
    // Blocking commands on dedicated connections, reused (UNWATCH + PING on return).
    for _ in 0..3 {
        let reply: Value = app
            .query(cmd("BLPOP").arg("app:list").arg(0.05))
            .await
            .unwrap();
        assert_eq!(reply, Value::Nil);
    }
    // ASK redirects while a slot migrates (ASKING).
    let slot = key_slot(b"app:s7");
    let to = other_master(&local, slot).await;
    let migration = local.begin_slot_migration(slot, to).await.unwrap();
    local.migrate_keys_batch(&migration, 100).await.unwrap();
    let asks = app.stats().ask;
    let v: Option<String> = app.get("app:s7").await.unwrap();
    assert_eq!(v.as_deref(), Some("7"));
    assert!(app.stats().ask > asks, "the read followed an ASK");
    local.finish_slot_migration(migration).await.unwrap();
    let v: Option<String> = app.get("app:s7").await.unwrap();
    assert_eq!(v.as_deref(), Some("7"));
}

/// A user without `+multi`: the server refuses `MULTI`, then runs the transaction's
/// commands one by one as they come. The client says so (`Error::NotAtomic`, which may
/// have executed) and never resends them; a watched connection's `exec` does the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_multi_is_reported_as_not_atomic_and_never_resent() {
    let local = acl_cluster().await;
    set_user(
        &local,
        &format!("nomulti on >nomultipass ~app:* +@read +@write {CLIENT_PERMISSIONS} +watch"),
    )
    .await;
    let admin = ClusterClient::connect(local.seeds()).await.unwrap();
    let client = as_user(&local, "nomulti", "nomultipass")
        .build()
        .await
        .unwrap();
    let mut tx = client.transaction();
    tx.add(cmd("INCR").arg("app:{tx}:n"))
        .add(cmd("RPUSH").arg("app:{tx}:l").arg("x"));
    let err = tx.execute().await.unwrap_err();
    match &err {
        Error::NotAtomic(refusal) => assert_eq!(refusal.code(), "NOPERM", "{refusal}"),
        other => panic!("a refused MULTI answered {other:?}"),
    }
    assert!(err.may_have_executed() && !err.is_retryable());
    // Both commands ran, once each.
    let n: Option<i64> = admin.get("app:{tx}:n").await.unwrap();
    assert_eq!(n, Some(1));
    let len: i64 = admin.query(cmd("LLEN").arg("app:{tx}:l")).await.unwrap();
    assert_eq!(len, 1);

    // On a watched connection (the user may WATCH, not MULTI).
    let watched = client.watch(["app:{tx}:n"]).await.unwrap();
    let err = watched
        .exec(vec![cmd("INCR").arg("app:{tx}:n")])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotAtomic(_)), "{err:?}");
    let n: Option<i64> = admin.get("app:{tx}:n").await.unwrap();
    assert_eq!(n, Some(2));
}

/// A user without `+unwatch`: a dedicated connection whose `UNWATCH` is refused when it
/// goes back to the pool is dropped, not handed to the next `watch()` with the last
/// one's keys still watched (whose change would abort an unrelated `EXEC`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_whose_unwatch_is_refused_is_not_reused() {
    let local = acl_cluster().await;
    set_user(
        &local,
        &format!(
            "nounwatch on >nounwatchpass ~app:* +@read +@write {CLIENT_PERMISSIONS} \
             +@transaction -unwatch"
        ),
    )
    .await;
    let admin = ClusterClient::connect(local.seeds()).await.unwrap();
    let client = as_user(&local, "nounwatch", "nounwatchpass")
        .build()
        .await
        .unwrap();
    // Watched, then given up without EXEC: the connection goes back to the pool.
    let abandoned = client.watch(["app:{w}:old"]).await.unwrap();
    drop(abandoned);
    admin.set("app:{w}:old", "changed").await.unwrap();
    // A new optimistic transaction on other keys of the slot commits.
    let watched = client.watch(["app:{w}:new"]).await.unwrap();
    let committed = watched
        .exec(vec![cmd("SET").arg("app:{w}:new").arg("v")])
        .await
        .unwrap();
    assert!(committed.is_some(), "EXEC aborted by a key watched before");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reads_fall_back_to_the_primary_for_a_user_without_readonly() {
    let local = acl_cluster().await;
    set_user(
        &local,
        "noro on >noropass ~app:* +@read +@write -@dangerous +cluster|shards +cluster|slots",
    )
    .await;
    let client = as_user(&local, "noro", "noropass")
        .read_from(redcluster::ReadFrom::Replica)
        .build()
        .await
        .unwrap();
    // The replica refuses READONLY (NOPERM): the read goes to the primary instead.
    client.set("app:noro", "v").await.unwrap();
    let primary = support::owner_index(&local, &client, "app:noro");
    let replica = local.replicas_of(primary).await.unwrap()[0];
    let (primary_gets, replica_gets) = (
        support::calls(&local, primary, "get").await,
        support::calls(&local, replica, "get").await,
    );
    let v: Option<String> = client.get("app:noro").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    assert_eq!(
        support::calls(&local, primary, "get").await,
        primary_gets + 1,
        "the primary served the read"
    );
    assert_eq!(support::calls(&local, replica, "get").await, replica_gets);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_user_without_topology_permission_cannot_connect_with_a_clear_error() {
    let local = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    set_user(
        &local,
        "bare on >barepass ~app:* +@read +@write -@dangerous",
    )
    .await;
    let err = as_user(&local, "bare", "barepass")
        .build()
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some("NOPERM"), "{err:?}");
    // Allowed `CLUSTER SLOTS` but not `CLUSTER SHARDS` (a Redis 6 rule kept after an
    // upgrade), it discovers and refreshes with `CLUSTER SLOTS`. It could not connect.
    set_user(&local, "bare +cluster|slots").await;
    let client = as_user(&local, "bare", "barepass").build().await.unwrap();
    crud(&client, "app:slots:").await;
    // The refusals are remembered: a refresh asks `CLUSTER SLOTS` at once, and adds no
    // entry to the nodes' ACL logs.
    let mut admins = Vec::new();
    for node in local.nodes() {
        let admin = local.connect_node(node.index).await.unwrap();
        admin
            .send(cmd("ACL").arg("LOG").arg("RESET"))
            .await
            .unwrap();
        admins.push(admin);
    }
    client.refresh_topology().await.unwrap();
    for admin in &admins {
        let log = admin.send(cmd("ACL").arg("LOG")).await.unwrap();
        assert_eq!(log, Value::Array(Vec::new()), "{log:?}");
    }
    // With only the topology permission added, it connects and serves its keys.
    set_user(&local, "bare -cluster|slots +cluster|shards").await;
    let client = as_user(&local, "bare", "barepass").build().await.unwrap();
    crud(&client, "app:bare:").await;
    // But it cannot follow ASK redirects: a read during a migration fails with the
    // refusal of its `ASKING` (no `@connection`).
    let slot = key_slot(b"app:bare:1");
    let to = other_master(&local, slot).await;
    let migration = local.begin_slot_migration(slot, to).await.unwrap();
    local.migrate_keys_batch(&migration, 100).await.unwrap();
    let res: redcluster::Result<Option<String>> = client.get("app:bare:1").await;
    assert_eq!(
        res.as_ref().err().and_then(|e| e.server_code()),
        Some("NOPERM"),
        "{res:?}"
    );
    // So does a blocking command, on its dedicated connection.
    let blpop = cmd("BLPOP").arg("app:bare:1").arg("0.1");
    let res = client.query::<redcluster::Value>(blpop).await;
    assert_eq!(
        res.as_ref().err().and_then(|e| e.server_code()),
        Some("NOPERM"),
        "{res:?}"
    );
    local.finish_slot_migration(migration).await.unwrap();
    // And replica reads need +readonly: the handshake's READONLY gets NOPERM, a
    // refusal of the user's rights that no command of the caller's met.
    let err = NodeConnection::connect(
        &local.node_addr(0),
        &redcluster::ConnectOptions::default()
            .username("bare")
            .password("barepass")
            .read_only(true),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&err, Error::Auth(text) if text.contains("READONLY") && text.contains("NOPERM")),
        "{err:?}"
    );
    assert!(!err.may_have_executed());
}

/// A user allowed `CLUSTER SLOTS` and not `CLUSTER SHARDS` (a Redis 6 rule kept after an
/// upgrade) follows an `ASK` to a master added a moment ago that serves no slot yet:
/// `CLUSTER SLOTS` does not list such a node, and a redirect is followed only to a node
/// the cluster lists; the redirecting node's `CLUSTER NODES` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slots_only_user_follows_an_ask_to_a_master_that_serves_no_slot_yet() {
    let local = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    let key = "app:slots:1";
    let slot = key_slot(key.as_bytes());
    let rules = "slotsonly on >slotspass ~app:* +@read +@write -@dangerous +cluster|slots \
                 +cluster|nodes +command|info +readonly +asking +ping +unwatch";
    set_user(&local, rules).await;
    let client = as_user(&local, "slotsonly", "slotspass")
        .build()
        .await
        .unwrap();
    client.set(key, "v").await.unwrap();
    let added = local.add_master().await.unwrap();
    set_user(&local, rules).await;
    client.refresh_topology().await.unwrap();
    let added_addr = local.node_addr(added);
    assert!(
        !client.known_nodes().contains(&added_addr),
        "CLUSTER SLOTS lists it"
    );
    let migration = local.begin_slot_migration(slot, added).await.unwrap();
    local.migrate_keys_batch(&migration, 100).await.unwrap();
    let v: Option<String> = client.get(key).await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    assert!(client.stats().ask >= 1, "{:?}", client.stats());
    // The cluster vouched for the address once: the next requests the migration sends
    // there follow at once. Each asked the source's `CLUSTER SLOTS` and `CLUSTER NODES`
    // again (and the client refreshed every 100 ms) for as long as the migration ran.
    let source = migration.source();
    let asked = support::calls(&local, source, "cluster|nodes").await;
    for _ in 0..20 {
        let v: Option<String> = client.get(key).await.unwrap();
        assert_eq!(v.as_deref(), Some("v"));
    }
    let asked_since = support::calls(&local, source, "cluster|nodes").await - asked;
    assert!(asked_since <= 1, "CLUSTER NODES asked {asked_since} times");
    // Nor does each `ASK` there ask the background task for a refresh (every 100 ms at
    // most, the rate limit, which stretches while they change nothing: two or three
    // over these 1.2 s), which would not name the node either until its first slot is
    // in.
    let refreshes = client.stats().refreshes;
    for _ in 0..24 {
        let v: Option<String> = client.get(key).await.unwrap();
        assert_eq!(v.as_deref(), Some("v"));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refreshed = client.stats().refreshes - refreshes;
    assert!(refreshed <= 1, "{refreshed} refreshes");
    local.finish_slot_migration(migration).await.unwrap();
}

// ---- TLS --------------------------------------------------------------------------------

async fn tls_cluster(masters: usize, replicas: usize, auth: TlsAuthClients) -> LocalCluster {
    LocalCluster::builder()
        .masters(masters)
        .replicas_per_master(replicas)
        .tls(true)
        .tls_auth_clients(auth)
        .config("requirepass", PASSWORD)
        .start()
        .await
        .expect("TLS cluster starts")
}

fn tls_client(local: &LocalCluster) -> ClusterClientBuilder {
    ClusterClient::builder()
        .nodes(local.seeds())
        .password(PASSWORD)
        .tls(local.tls_config().expect("a TLS cluster"))
}

/// A CA nobody signed the cluster's certificates with.
fn other_ca_pem() -> String {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.self_signed(&key).unwrap().pem()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_cluster_serves_crud_pipelines_moved_and_failover() {
    let local = tls_cluster(3, 1, TlsAuthClients::Required).await;
    assert!(local.is_tls());
    for path in [
        local.ca_cert_path(),
        local.client_cert_path(),
        local.client_key_path(),
    ] {
        assert!(path.unwrap().is_file());
    }
    // The plaintext port is closed: the nodes speak TLS only.
    let plain = NodeConnection::connect(
        &local.node_addr(0),
        &redcluster::ConnectOptions::default()
            .password(PASSWORD)
            .connect_timeout(Duration::from_secs(2)),
    )
    .await;
    assert!(plain.is_err(), "plaintext connection to a TLS port worked");

    // rediss:// seeds with the files the testkit generated.
    let tls = TlsConfig::new()
        .ca_cert_file(local.ca_cert_path().unwrap())
        .unwrap()
        .client_cert_files(
            local.client_cert_path().unwrap(),
            local.client_key_path().unwrap(),
        )
        .unwrap();
    let seeds: Vec<String> = local
        .seeds()
        .iter()
        .map(|s| format!("rediss://:{PASSWORD}@{s}"))
        .collect();
    let client = ClusterClient::builder()
        .nodes(&seeds)
        .tls(tls)
        .build()
        .await
        .unwrap();
    let mut known = client.known_nodes();
    known.sort();
    let mut all = local.seeds();
    all.sort();
    assert_eq!(known, all, "discovered nodes are at their TLS ports");
    crud(&client, "tls:").await;

    // A pipeline across slots.
    let mut p = client.pipeline();
    for i in 0..200 {
        p.set(format!("tls:p{i}"), i);
    }
    for i in 0..200 {
        p.get(format!("tls:p{i}"));
    }
    let replies = p.execute().await.unwrap();
    assert_eq!(replies.len(), 400);
    for (i, reply) in replies[200..].iter().enumerate() {
        assert_eq!(reply, &Value::Bulk(i.to_string().into()), "GET #{i}");
    }

    // Large writes and concurrent traffic over TLS (writes larger than the socket
    // buffer, many requests coalesced into one write).
    let big = "x".repeat(4 << 20);
    client.set("tls:big", big.as_str()).await.unwrap();
    let back: Option<String> = client.get("tls:big").await.unwrap();
    assert_eq!(back.map(|b| b.len()), Some(big.len()));
    let value = "v".repeat(1024);
    let writes = (0..500).map(|i| client.set(format!("tls:c{i}"), value.as_str()));
    for result in futures_util::future::join_all(writes).await {
        result.unwrap();
    }

    // MOVED after a slot move: the key moves with its slot and the client follows.
    let slot = key_slot(b"tls:moving");
    let key = key_in_slot(slot, 0);
    client.set(key.as_str(), "moved-value").await.unwrap();
    let to = other_master(&local, slot).await;
    let moved_before = client.stats().moved;
    local.move_slot(slot, to).await.unwrap();
    let v: Option<String> = client.get(key.as_str()).await.unwrap();
    assert_eq!(v.as_deref(), Some("moved-value"));
    assert!(
        client.stats().moved > moved_before,
        "the client followed a MOVED"
    );
    assert_eq!(client.primary_for_slot(slot), Some(local.node_addr(to)));

    failover_and_check(&local, &client, "tls:failover").await;
    local.wait_until_stable(SETTLE).await.unwrap();
}

/// Forwards every connection to a new port of 127.0.0.2 on to `to`, for the rest of the
/// test: a node reached at an address its certificate does not list, as behind NAT.
async fn forwarder(to: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            let to = to.clone();
            tokio::spawn(async move {
                if let Ok(mut outbound) = tokio::net::TcpStream::connect(&to).await {
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
            });
        }
    });
    addr
}

/// A client seeded with `seeds` through `remap`, after `crud`; asserts it reached every
/// node at the remap's addresses.
async fn crud_through(
    local: &LocalCluster,
    seeds: &[String],
    remap: &std::collections::HashMap<String, String>,
    prefix: &str,
) -> ClusterClient {
    let client = tls_client(local)
        .nodes(seeds.to_vec())
        .address_remap(AddressRemap::from_map(remap.clone()))
        .build()
        .await
        .unwrap();
    crud(&client, prefix).await;
    let mut connected = client.connected_nodes();
    connected.sort();
    let mut reached: Vec<String> = remap.values().cloned().collect();
    reached.sort();
    assert_eq!(connected, reached, "seeded with {seeds:?}");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_remap_certificates_may_carry_the_announced_name_or_the_dialled_one() {
    let local = tls_cluster(3, 0, TlsAuthClients::Required).await;

    // The nodes announce 127.0.0.1, which their certificate lists; the client reaches
    // them at 127.0.0.2, which it does not.
    let mut remap = std::collections::HashMap::new();
    for i in 0..3 {
        let addr = local.node_addr(i);
        remap.insert(addr.clone(), forwarder(addr).await);
    }
    let mut reached: Vec<String> = remap.values().cloned().collect();
    reached.sort();
    let err = NodeConnection::connect(&reached[0], &local.connect_options())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("bad name")),
        "dialled alone, 127.0.0.2 is not the certificate's: {err:?}"
    );
    // Seeded with the addresses the client can reach (the remap's table names them),
    // or with the announced ones (the table maps them): every node is reached through
    // its forwarder.
    let client = crud_through(&local, &reached, &remap, "tls-remap:").await;
    let announced: Vec<String> = remap.keys().cloned().collect();
    crud_through(&local, &announced, &remap, "tls-remap-announced:").await;
    let mut p = client.pipeline();
    for i in 0..30 {
        p.get(format!("tls-remap:{i}"));
    }
    assert_eq!(p.execute().await.unwrap().len(), 30);
    let sub = client.subscriber().await.unwrap();
    sub.ssubscribe(["tls-remap:{news}"]).await.unwrap();
    let receivers: i64 = client.spublish("tls-remap:{news}", "hi").await.unwrap();
    assert_eq!(
        receivers, 1,
        "the sharded subscription's connection passed TLS too"
    );

    // The other way round: the nodes announce names their certificate lacks, and the
    // client dials 127.0.0.1, which it lists.
    let remap =
        support::announce_hostnames(&local, 3, |i| format!("redis-cluster-{i}.invalid")).await;
    crud_through(&local, &local.seeds(), &remap, "tls-named:").await;

    // A certificate valid for neither name is refused: names the certificate lacks,
    // reached at 127.0.0.2, which it lacks too.
    let mut neither = std::collections::HashMap::new();
    for (announced, addr) in &remap {
        neither.insert(announced.clone(), forwarder(addr.clone()).await);
    }
    let err = tls_client(&local)
        .nodes(neither.values().cloned().collect::<Vec<_>>())
        .address_remap(AddressRemap::from_map(neither))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("bad name")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_failures_are_tls_errors_that_name_the_reason() {
    let local = tls_cluster(3, 0, TlsAuthClients::Required).await;
    let seeds = local.seeds();

    // A CA that did not sign the nodes' certificates.
    let wrong_ca = TlsConfig::new()
        .ca_cert_pem(other_ca_pem())
        .unwrap()
        .client_cert_files(
            local.client_cert_path().unwrap(),
            local.client_key_path().unwrap(),
        )
        .unwrap();
    let err = ClusterClient::builder()
        .nodes(&seeds)
        .password(PASSWORD)
        .tls(wrong_ca)
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("unknown CA")),
        "{err:?}"
    );
    assert!(!err.is_retryable());

    // A name the certificate does not carry.
    let err = tls_client(&local)
        .tls(local.tls_config().unwrap().server_name("redis.invalid"))
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("bad name")),
        "{err:?}"
    );
    // The right fixed name works for every node (the certificate lists localhost).
    let client = tls_client(&local)
        .tls(local.tls_config().unwrap().server_name("localhost"))
        .build()
        .await
        .unwrap();
    crud(&client, "tls-name:").await;

    // No client certificate, where the nodes require one.
    let no_cert = TlsConfig::new()
        .ca_cert_file(local.ca_cert_path().unwrap())
        .unwrap();
    let err = ClusterClient::builder()
        .nodes(&seeds)
        .password(PASSWORD)
        .tls(no_cert.clone())
        .build()
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("client certificate")),
        "{err:?}"
    );
    // The same straight to one node.
    let err = NodeConnection::connect(&seeds[0], &local.connect_options().tls(no_cert))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Tls(m) if m.contains("client certificate")),
        "{err:?}"
    );

    // Plain TCP to a TLS-only node fails too (not with a hang).
    let err = ClusterClient::builder()
        .nodes(&seeds)
        .password(PASSWORD)
        .connect_timeout(Duration::from_secs(2))
        .response_timeout(Duration::from_secs(2))
        .build()
        .await
        .unwrap_err();
    assert!(!matches!(err, Error::Tls(_)), "{err:?}");

    // Dangerous mode connects whatever the CA.
    let client = ClusterClient::builder()
        .nodes(&seeds)
        .password(PASSWORD)
        .tls(
            TlsConfig::new()
                .danger_accept_invalid_certificates()
                .client_cert_files(
                    local.client_cert_path().unwrap(),
                    local.client_key_path().unwrap(),
                )
                .unwrap(),
        )
        .build()
        .await
        .unwrap();
    crud(&client, "tls-danger:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_client_certificates_when_the_nodes_do_not_require_them() {
    let local = tls_cluster(3, 0, TlsAuthClients::No).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .password(PASSWORD)
        .tls(
            TlsConfig::new()
                .ca_cert_file(local.ca_cert_path().unwrap())
                .unwrap(),
        )
        .build()
        .await
        .unwrap();
    crud(&client, "tls-nocert:").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cluster_fails_over_a_killed_master_and_takes_it_back_after_a_restart() {
    let local = tls_cluster(3, 1, TlsAuthClients::Required).await;
    let client = tls_client(&local).build().await.unwrap();
    let key = "tls:kill";
    client.set(key, "survives").await.unwrap();
    let slot = key_slot(key.as_bytes());
    let master = local.master_of_slot(slot).await.unwrap();
    let replica = local.replicas_of(master).await.unwrap()[0];
    // Let the replica receive the write (over TLS replication) before the kill.
    let conn = local.connect_node(master).await.unwrap();
    let acked: i64 =
        redcluster::FromValue::from_value(conn.send(cmd("WAIT").arg(1).arg(5000)).await.unwrap())
            .unwrap();
    assert_eq!(acked, 1);

    local.kill(master).unwrap();
    local.wait_until_stable(SETTLE).await.unwrap();
    assert_eq!(local.master_of_slot(slot).await.unwrap(), replica);
    let v: Option<String> = client.get(key).await.unwrap();
    assert_eq!(v.as_deref(), Some("survives"));

    // The restarted node answers over TLS again and rejoins as a replica.
    local.restart(master).await.unwrap();
    local.wait_until_stable(SETTLE).await.unwrap();
    assert!(local.replicas().await.unwrap().contains(&master));
    let conn = local.connect_node(master).await.unwrap();
    let role: Value = conn.send(cmd("ROLE")).await.unwrap();
    assert!(format!("{role:?}").contains("slave"), "{role:?}");
}

// ---- Renamed commands -------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_commands_go_out_under_the_server_names_and_disabled_ones_are_refused() {
    const SECRET: &str = "9a7b8c5d3e2f1a0";
    // The seed's hardening, plus renames of commands the client sends on its own:
    // CLUSTER (topology), READONLY (replica reads) and WAIT (durable writes).
    let local = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(1)
        .config("rename-command", format!("CONFIG CONFIG_{SECRET}"))
        .config("rename-command", format!("CLUSTER CLUSTER_{SECRET}"))
        .config("rename-command", format!("READONLY READONLY_{SECRET}"))
        .config("rename-command", format!("WAIT WAIT_{SECRET}"))
        .config("rename-command", "FLUSHALL \"\"")
        .start()
        .await
        .unwrap();

    // Without the mapping the client cannot even read the topology.
    let unmapped = ClusterClient::builder()
        .nodes(local.seeds())
        .connect_timeout(Duration::from_secs(2))
        .build()
        .await;
    assert!(unmapped.is_err(), "{unmapped:?}");

    let builder = ClusterClient::builder()
        .nodes(local.seeds())
        .command_renames(local.command_renames())
        .read_from(redcluster::ReadFrom::Replica);
    let shown = format!("{builder:?}");
    assert!(!shown.contains(SECRET), "{shown}");
    let client = builder.build().await.unwrap();
    assert!(!format!("{client:?}").contains(SECRET));
    assert_eq!(client.known_nodes().len(), 6);

    // A durable write (WAIT), then a read from a replica (READONLY) that must see it.
    support::set_on_a_replica(&client, "renamed:k", "v").await;
    // The read comes from the replica: its connection's handshake (READONLY) worked. A
    // failed one would have sent the read to the primary instead.
    let primary = support::owner_index(&local, &client, "renamed:k");
    let replica = local.replicas_of(primary).await.unwrap()[0];
    let replica_gets = support::calls(&local, replica, "get").await;
    let v: Option<String> = client.get("renamed:k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    assert_eq!(
        support::calls(&local, replica, "get").await,
        replica_gets + 1,
        "the replica served the read"
    );
    let health = client.health();
    let replica_addr = local.node_addr(replica);
    assert!(
        health.node(&replica_addr).is_some_and(|n| n.connected),
        "{health:?}"
    );

    // The user's own CONFIG, under its documented name.
    let policy: Vec<String> = client
        .query(cmd("CONFIG").arg("GET").arg("maxmemory-policy"))
        .await
        .unwrap();
    assert_eq!(policy, ["maxmemory-policy", "noeviction"]);
    // And a topology refresh (CLUSTER SHARDS) still works.
    client.refresh_topology().await.unwrap();

    // A disabled command is refused by the client, typed, and not sent: the data stays.
    // Refusals are the caller's mistake, not the nodes': no breaker opens however many.
    for _ in 0..10 {
        let err = client.query::<Value>(cmd("flushall")).await.unwrap_err();
        assert!(matches!(err, Error::Config(_)), "{err:?}");
        assert!(!err.may_have_executed(), "{err:?}");
        assert!(err.to_string().contains("FLUSHALL"), "{err}");
    }
    let health = client.health();
    assert!(
        health
            .nodes
            .iter()
            .all(|n| n.breaker == redcluster::BreakerState::Closed),
        "{health:?}"
    );
    let v: Option<String> = client.get("renamed:k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));

    // A wrong mapping: the server quotes the name it was sent, a secret, in its error;
    // the client shows the documented name instead.
    let wrong = ClusterClient::builder()
        .nodes(local.seeds())
        .command_renames(local.command_renames().rename("CONFIG", "CONFIG_wr0ng"))
        .build()
        .await
        .unwrap();
    let err = wrong
        .query::<Value>(cmd("CONFIG").arg("GET").arg("maxmemory"))
        .await
        .unwrap_err();
    assert_eq!(err.server_code(), Some("ERR"), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(
        shown.contains("'CONFIG'") && !shown.contains("wr0ng"),
        "{shown}"
    );
}

/// `COMMAND INFO` calls the server ran, over every node.
async fn command_info_calls(local: &LocalCluster) -> u64 {
    let mut calls = 0;
    for node in local.nodes() {
        let conn = local.connect_node(node.index).await.unwrap();
        let stats = match conn.send(cmd("INFO").arg("commandstats")).await.unwrap() {
            Value::Bulk(b) | Value::Verbatim { text: b, .. } => {
                String::from_utf8(b.to_vec()).unwrap()
            }
            other => panic!("{other:?}"),
        };
        calls += stats
            .lines()
            .find_map(|l| l.strip_prefix("cmdstat_command|info:calls="))
            .and_then(|rest| rest.split(',').next()?.parse::<u64>().ok())
            .unwrap_or(0);
    }
    calls
}

/// A command the client's table lacks is looked up with `COMMAND INFO`; a refusal of
/// that lookup (a user without `+command|info`) is not remembered as "the server does
/// not know it either": once the user may ask, the client asks (no sooner than a
/// second after the refusal).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_command_lookup_is_asked_again_later() {
    let local = acl_cluster().await;
    let rules = format!("lookup on >lookuppass ~app:* +@all {CLIENT_PERMISSIONS}");
    set_user(&local, &format!("{rules} -command|info")).await;
    let client = as_user(&local, "lookup", "lookuppass")
        .build()
        .await
        .unwrap();
    let unknown = || cmd("NOSUCH.MODULECMD").arg("app:{lookup}:k");
    let err = client.query::<Value>(unknown()).await.unwrap_err();
    assert!(
        matches!(&err, Error::Server(e) if e.message().contains("unknown command")),
        "{err:?}"
    );
    let before = command_info_calls(&local).await;
    set_user(&local, &format!("{rules} +command|info")).await;
    // Within the second after the refusal, the client does not ask again.
    let err = client.query::<Value>(unknown()).await.unwrap_err();
    assert!(matches!(&err, Error::Server(_)), "{err:?}");
    assert_eq!(
        command_info_calls(&local).await,
        before,
        "asked again at once"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let err = client.query::<Value>(unknown()).await.unwrap_err();
    assert!(matches!(&err, Error::Server(_)), "{err:?}");
    assert_eq!(
        command_info_calls(&local).await,
        before + 1,
        "the lookup was not asked again once allowed"
    );
}

/// `ACL SETUSER` and `ACL DELUSER` through the cluster client reach every node, replicas
/// included: sent to one node, the user would exist on one node of six.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acl_changes_through_the_client_reach_every_node() {
    let local = acl_cluster().await;
    let admin = ClusterClient::connect(local.seeds()).await.unwrap();
    let exists_everywhere = |present: bool| {
        let local = &local;
        async move {
            for node in local.nodes() {
                let conn = local.connect_node(node.index).await.unwrap();
                let user = conn
                    .send(cmd("ACL").arg("GETUSER").arg("everywhere"))
                    .await
                    .unwrap();
                assert_eq!(user != Value::Nil, present, "node {}: {user:?}", node.index);
            }
        }
    };
    let ok: Value = admin
        .query(
            cmd("ACL")
                .arg("SETUSER")
                .arg("everywhere")
                .arg("on")
                .arg(">everywherepass")
                .arg("~app:*")
                .arg("+get"),
        )
        .await
        .unwrap();
    assert_eq!(ok, Value::Simple("OK".into()));
    exists_everywhere(true).await;
    let deleted: i64 = admin
        .query(cmd("ACL").arg("DELUSER").arg("everywhere"))
        .await
        .unwrap();
    assert_eq!(deleted, 1);
    exists_everywhere(false).await;
}

/// What the handshake may meet from a user's own settings, on a real cluster: a
/// `nopass` user named without a password logs in as that user (it ran as `default`);
/// a setting the server refuses at every connect says so as the caller's error,
/// `may_have_executed() == false` (it said a command may have run, and counted
/// against the node); and an `ACL SETUSER` the server refuses does not show the rule
/// it quotes, which may be a password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_refusals_and_acl_errors_say_what_they_are_and_hide_passwords() {
    let local = acl_cluster().await;
    set_user(
        &local,
        &format!(
            "guest on nopass ~guest:* +@read +@write -@dangerous +acl|whoami +client|setname \
             {CLIENT_PERMISSIONS}"
        ),
    )
    .await;
    let guest = ClusterClient::builder()
        .nodes(local.seeds())
        .username("guest")
        .build()
        .await
        .unwrap();
    let whoami: String = guest.query(cmd("ACL").arg("WHOAMI")).await.unwrap();
    assert_eq!(whoami, "guest", "not `default`");
    guest.set("guest:k", 1).await.unwrap();

    // A client name the server refuses: `build()` says so before connecting, and a
    // node connection given one gets the server's refusal as a setting error.
    let named = ClusterClient::builder()
        .nodes(local.seeds())
        .username("guest")
        .client_name("checkout svc")
        .build()
        .await;
    assert!(matches!(named, Err(Error::Config(_))), "{named:?}");
    let mut options = redcluster::ConnectOptions::default()
        .username("guest")
        .protocol(redcluster::Protocol::Resp2);
    options.client_name = Some("checkout svc".into());
    let refused = NodeConnection::connect(&local.node_addr(0), &options).await;
    match refused {
        Err(e @ Error::Config(_)) => assert!(!e.may_have_executed(), "{e}"),
        other => panic!("{other:?}"),
    }
    // A user without `+client|setname`, on RESP2 where the name is a command of its
    // own: refused for the user's rights.
    set_user(&local, "guest -client|setname").await;
    options.client_name = Some("checkout-svc".into());
    let refused = NodeConnection::connect(&local.node_addr(0), &options).await;
    match refused {
        Err(e @ Error::Auth(_)) => {
            assert!(!e.may_have_executed(), "{e}");
            assert!(e.to_string().contains("NOPERM"), "{e}");
        }
        other => panic!("{other:?}"),
    }

    // `<password` removes a password the user does not have: the server quotes it.
    let admin = local.connect_node(0).await.unwrap();
    let reply = admin
        .send(
            cmd("ACL")
                .arg("SETUSER")
                .arg("guest")
                .arg("<Quoted-pa55-Xy71"),
        )
        .await
        .unwrap();
    let Value::ServerError(e) = reply else {
        panic!("ACL SETUSER accepted the removal of a password never set: {reply:?}");
    };
    assert!(
        String::from_utf8_lossy(e.as_bytes()).contains("Quoted-pa55-Xy71"),
        "the server quotes the rule: {e:?}"
    );
    for shown in [
        e.to_string(),
        format!("{e:?}"),
        Error::Server(e.clone()).to_string(),
    ] {
        assert!(!shown.contains("Quoted-pa55-Xy71"), "{shown}");
        assert!(shown.contains("ACL SETUSER"), "{shown}");
    }
}
