//! The testkit against real `redis-server` clusters: forming, faults, topology changes,
//! cleanup. Each test has its own cluster on its own ports; all traffic is to 127.0.0.1.

mod support;

use std::time::Duration;

use redcluster::testkit::{FailoverMode, LocalCluster, NodeState};
use redcluster::{cmd, key_slot, Cmd, Error, FromValue, NodeConnection, Value, SLOT_COUNT};

const SETTLE: Duration = Duration::from_secs(30);

async fn send<T: FromValue>(conn: &NodeConnection, command: Cmd) -> T {
    let reply = conn.send(command).await.expect("request failed");
    T::from_value(reply).expect("unexpected reply")
}

fn info_field(text: &str, name: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .map(|v| v.trim().to_owned())
}

/// Node ids that node `index` lists in `CLUSTER NODES`.
async fn known_ids(cluster: &LocalCluster, index: usize) -> Vec<String> {
    let conn = cluster.connect_node(index).await.unwrap();
    let text: String = send(&conn, cmd("CLUSTER").arg("NODES")).await;
    text.lines()
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect()
}

/// `n` keys that all hash to one slot, and that slot.
fn keys_in_one_slot(tag: &str, n: usize) -> (u16, Vec<String>) {
    let keys: Vec<String> = (0..n).map(|i| format!("{{{tag}}}:{i}")).collect();
    (key_slot(keys[0].as_bytes()), keys)
}

async fn write_keys(conn: &NodeConnection, keys: &[String]) {
    for key in keys {
        let _: () = send(conn, cmd("SET").arg(key.as_str()).arg(format!("v-{key}"))).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forms_a_six_node_cluster_covering_every_slot() {
    let cluster = LocalCluster::start().await.unwrap();
    let nodes = cluster.nodes();
    assert_eq!(nodes.len(), 6);
    assert_eq!(cluster.seeds().len(), 6);
    assert!(nodes
        .iter()
        .all(|n| n.state == NodeState::Running && n.pid.is_some()));
    assert!(nodes.iter().all(|n| n.id.len() == 40));
    assert_eq!(cluster.masters().await.unwrap(), vec![0, 1, 2]);
    assert_eq!(cluster.replicas().await.unwrap(), vec![3, 4, 5]);
    for (slot, master) in [
        (0, 0),
        (5460, 0),
        (5461, 1),
        (10922, 1),
        (10923, 2),
        (16383, 2),
    ] {
        assert_eq!(
            cluster.master_of_slot(slot).await.unwrap(),
            master,
            "slot {slot}"
        );
    }
    for master in 0..3 {
        assert_eq!(cluster.replicas_of(master).await.unwrap(), vec![master + 3]);
    }
    // Every node agrees that all slots are served and knows all six nodes.
    for i in 0..6 {
        let conn = cluster.connect_node(i).await.unwrap();
        let info: String = send(&conn, cmd("CLUSTER").arg("INFO")).await;
        assert_eq!(info_field(&info, "cluster_state").as_deref(), Some("ok"));
        assert_eq!(
            info_field(&info, "cluster_slots_ok").as_deref(),
            Some(SLOT_COUNT.to_string().as_str())
        );
        assert_eq!(
            info_field(&info, "cluster_known_nodes").as_deref(),
            Some("6")
        );
    }
    assert!(cluster.master_of_slot(SLOT_COUNT).await.is_err());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_master_is_replaced_by_its_replica_and_rejoins_as_replica() {
    let cluster = LocalCluster::builder()
        .node_timeout(Duration::from_millis(1000))
        .start()
        .await
        .unwrap();
    let (slot, keys) = keys_in_one_slot("kill", 5);
    let owner = cluster.master_of_slot(slot).await.unwrap();
    let replica = cluster.replicas_of(owner).await.unwrap()[0];
    let conn = cluster.connect_node(owner).await.unwrap();
    write_keys(&conn, &keys).await;
    let acked: i64 = send(&conn, cmd("WAIT").arg(1).arg(5000)).await;
    assert_eq!(acked, 1);

    cluster.kill(owner).unwrap();
    assert_eq!(cluster.node(owner).state, NodeState::Killed);
    assert_eq!(cluster.node(owner).pid, None);
    assert_eq!(cluster.seeds().len(), 5);
    cluster.wait_until_stable(SETTLE).await.unwrap();
    assert_eq!(cluster.master_of_slot(slot).await.unwrap(), replica);
    assert!(cluster.masters().await.unwrap().contains(&replica));
    let promoted = cluster.connect_node(replica).await.unwrap();
    let value: String = send(&promoted, cmd("GET").arg(keys[0].as_str())).await;
    assert_eq!(value, format!("v-{}", keys[0]));

    let id = cluster.node(owner).id;
    cluster.restart(owner).await.unwrap();
    cluster.wait_until_stable(SETTLE).await.unwrap();
    assert_eq!(cluster.node(owner).id, id);
    assert_eq!(cluster.replicas_of(replica).await.unwrap(), vec![owner]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_node_answers_nothing_until_resumed() {
    let cluster = LocalCluster::start().await.unwrap();
    let options = cluster
        .connect_options()
        .response_timeout(Duration::from_millis(300));
    let conn = NodeConnection::connect(&cluster.node_addr(1), &options)
        .await
        .unwrap();
    cluster.pause(1).unwrap();
    assert_eq!(cluster.node(1).state, NodeState::Paused);
    let err = conn.send(cmd("PING")).await.unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err}");
    cluster.resume(1).unwrap();
    assert_eq!(cluster.node(1).state, NodeState::Running);
    let pong: String = send(&conn, cmd("PING")).await;
    assert_eq!(pong, "PONG");
    cluster.wait_until_stable(SETTLE).await.unwrap();
    // Paused for less than the node timeout: no failover.
    assert_eq!(cluster.master_of_slot(6000).await.unwrap(), 1);

    // A wait for stability keeps to its own timeout though the first node it asks does
    // not answer.
    cluster.pause(0).unwrap();
    let started = tokio::time::Instant::now();
    let unstable = cluster.wait_until_stable(Duration::from_millis(300)).await;
    let waited = started.elapsed();
    cluster.resume(0).unwrap();
    assert!(unstable.is_err());
    assert!(waited < Duration::from_millis(1500), "{waited:?}");
    cluster.wait_until_stable(SETTLE).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_master_rejoins_with_its_id_and_slots() {
    let cluster = LocalCluster::start().await.unwrap();
    let before = cluster.node(1);
    cluster.kill(1).unwrap();
    cluster.restart(1).await.unwrap();
    let after = cluster.node(1);
    assert_eq!(after.state, NodeState::Running);
    assert_eq!((after.port, &after.id), (before.port, &before.id));
    assert_ne!(after.pid, before.pid);
    cluster.wait_until_stable(SETTLE).await.unwrap();
    assert_eq!(cluster.master_of_slot(6000).await.unwrap(), 1);
    assert_eq!(cluster.replicas_of(1).await.unwrap(), vec![4]);
    for i in [0, 2, 3, 5] {
        assert!(known_ids(&cluster, i).await.contains(&after.id));
    }
}

/// A one-node cluster from `builder`, its node killed so that a test can change its
/// files before a restart; and the node's directory.
async fn one_node_killed(
    builder: redcluster::testkit::LocalClusterBuilder,
) -> (LocalCluster, std::path::PathBuf) {
    let cluster = builder
        .masters(1)
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    let node_dir = cluster.dir().join(format!("node-{}", cluster.node(0).port));
    cluster.kill(0).unwrap();
    (cluster, node_dir)
}

/// Appends `text` to the file at `path`.
fn append(path: &std::path::Path, text: &str) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    file.write_all(text.as_bytes()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_restart_is_judged_by_what_that_start_logged() {
    let (cluster, node_dir) = one_node_killed(LocalCluster::builder()).await;
    let port = cluster.node(0).port;
    // What an earlier start whose port was taken left in the log, which every start
    // appends to; then a directive that makes the next start fail for its own reason.
    append(
        &node_dir.join("redis.log"),
        &format!(
            "1:M 01 Jan 2026 00:00:00.000 # Warning: Could not create server TCP listening \
             socket 127.0.0.1:{port}: bind: Address already in use\n"
        ),
    );
    append(&node_dir.join("redis.conf"), "not-a-directive yes\n");
    // Not "port taken, try again" (until the old line scrolls out of the tail read):
    // one start, and its own error.
    let err = cluster.restart(0).await.unwrap_err();
    let message = err.to_string();
    let fatal = "FATAL CONFIG FILE ERROR";
    let log = std::fs::read_to_string(node_dir.join("redis.log")).unwrap();
    assert_eq!(
        log.matches(fatal).count(),
        1,
        "started more than once:\n{log}"
    );
    assert!(message.contains("exited during startup"), "{message}");
    assert_eq!(message.matches(fatal).count(), 1, "{message}");
    assert!(message.contains(">>> 'not-a-directive yes'"), "{message}");
    assert!(!message.contains("Address already in use"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_are_cut_from_the_logs_the_testkit_quotes() {
    // redis-server refuses the line (here `masterauth`, which the testkit sets to the
    // same value) and quotes it whole in its log.
    let err = LocalCluster::builder()
        .masters(1)
        .replicas_per_master(0)
        .config("requirepass", "\"s3cret-at-start\" extra")
        .start()
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(message.contains("FATAL CONFIG FILE ERROR"), "{message}");
    assert!(message.contains(">>> 'masterauth ***'"), "{message}");
    assert!(!message.contains("s3cret-at-start"), "{message}");

    let (cluster, node_dir) = one_node_killed(
        LocalCluster::builder()
            .config("requirepass", "s3cret-on-restart")
            .acl_user("app on >app-s3cret ~app:* +@read"),
    )
    .await;
    append(
        &node_dir.join("redis.conf"),
        "user app on >app-s3cret ~app:* +@read bad-rule\n",
    );
    let err = cluster.restart(0).await.unwrap_err();
    let message = err.to_string();
    assert!(message.contains("FATAL CONFIG FILE ERROR"), "{message}");
    assert!(message.contains("user app on >*** ~app:*"), "{message}");
    assert!(!message.contains("s3cret"), "{message}");
    let log = cluster.log_tail(0, 20);
    assert!(log.contains("FATAL CONFIG FILE ERROR"), "{log}");
    assert!(!log.contains("s3cret"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failovers_swap_roles() {
    let cluster = LocalCluster::start().await.unwrap();
    cluster.failover(3, FailoverMode::Graceful).await.unwrap();
    assert_eq!(cluster.masters().await.unwrap(), vec![1, 2, 3]);
    assert_eq!(cluster.replicas_of(3).await.unwrap(), vec![0]);
    assert_eq!(cluster.master_of_slot(0).await.unwrap(), 3);

    cluster.failover(0, FailoverMode::Takeover).await.unwrap();
    assert_eq!(cluster.masters().await.unwrap(), vec![0, 1, 2]);
    assert_eq!(cluster.replicas_of(0).await.unwrap(), vec![3]);

    let err = cluster.failover(1, FailoverMode::Force).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

/// A takeover is for a cluster that lost its majority: two of three masters killed,
/// the replica of one takes over, and `failover` returns once the running nodes see it
/// as master (the other shard, its replica killed too, stays unserved, so the cluster
/// never settles). It waited for a settled cluster and timed out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_takeover_works_without_a_majority_of_masters() {
    let cluster = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(1)
        .wait_timeout(Duration::from_secs(10))
        .start()
        .await
        .unwrap();
    let replica = cluster.replicas_of(0).await.unwrap()[0];
    let lost = cluster.replicas_of(1).await.unwrap()[0];
    for node in [0, 1, lost] {
        cluster.kill(node).unwrap();
    }
    cluster
        .failover(replica, FailoverMode::Takeover)
        .await
        .unwrap();
    assert_eq!(cluster.master_of_slot(0).await.unwrap(), replica);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_failed_over_back_and_forth_is_master_each_time() {
    // Redis 7.0 keeps an elected replica's votes for four node timeouts: a third
    // failover within them was claimed with the first's stale epoch and undone, and
    // `failover` returned with the old master still in charge.
    let cluster = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(1)
        .node_timeout(Duration::from_millis(1000))
        .start()
        .await
        .unwrap();
    for (round, promoted) in [3, 0, 3].into_iter().enumerate() {
        cluster
            .failover(promoted, FailoverMode::Graceful)
            .await
            .unwrap();
        assert_eq!(
            cluster.master_of_slot(0).await.unwrap(),
            promoted,
            "round {round}"
        );
        // The nodes say so themselves.
        let demoted = 3 - promoted;
        for (node, role) in [(promoted, "master"), (demoted, "slave")] {
            let conn = cluster.connect_node(node).await.unwrap();
            let reply: Vec<Value> = send(&conn, cmd("ROLE")).await;
            assert_eq!(
                reply[0],
                Value::Bulk(role.into()),
                "round {round}, node {node}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_master_receives_a_slot_with_its_keys() {
    let cluster = LocalCluster::builder()
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    let (slot, keys) = keys_in_one_slot("move", 250);
    let source = cluster.master_of_slot(slot).await.unwrap();
    write_keys(&cluster.connect_node(source).await.unwrap(), &keys).await;

    let new = cluster.add_master().await.unwrap();
    assert_eq!(new, 3);
    assert!(cluster.masters().await.unwrap().contains(&new));
    cluster.move_slot(slot, new).await.unwrap();
    assert_eq!(cluster.master_of_slot(slot).await.unwrap(), new);

    let target = cluster.connect_node(new).await.unwrap();
    let count: i64 = send(&target, cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot)).await;
    assert_eq!(count, 250);
    let value: String = send(&target, cmd("GET").arg(keys[7].as_str())).await;
    assert_eq!(value, format!("v-{}", keys[7]));
    let old = cluster.connect_node(source).await.unwrap();
    let count: i64 = send(&old, cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot)).await;
    assert_eq!(count, 0);
    // Every node routes the slot to the new owner.
    for i in 0..4 {
        let conn = cluster.connect_node(i).await.unwrap();
        let reply = conn.send(cmd("GET").arg(keys[0].as_str())).await.unwrap();
        if i != new {
            let expected = format!("{slot} {}", cluster.node_addr(new));
            assert!(
                matches!(&reply, Value::ServerError(e) if e.code() == "MOVED" && e.message() == expected),
                "node {i}: {reply:?}"
            );
        }
    }
    // Moving it where it is does nothing.
    cluster.move_slot(slot, new).await.unwrap();
    assert_eq!(cluster.master_of_slot(slot).await.unwrap(), new);
    let count: i64 = send(&target, cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot)).await;
    assert_eq!(count, 250);
    let value: String = send(&target, cmd("GET").arg(keys[7].as_str())).await;
    assert_eq!(value, format!("v-{}", keys[7]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_wise_migration_produces_ask_redirects() {
    let cluster = LocalCluster::builder()
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    let (slot, keys) = keys_in_one_slot("ask", 40);
    let source = cluster.master_of_slot(slot).await.unwrap();
    let target = (source + 1) % 3;
    let source_conn = cluster.connect_node(source).await.unwrap();
    let target_conn = cluster.connect_node(target).await.unwrap();
    write_keys(&source_conn, &keys).await;

    let migration = cluster.begin_slot_migration(slot, target).await.unwrap();
    assert_eq!(
        (migration.slot(), migration.source(), migration.target()),
        (slot, source, target)
    );
    assert_eq!(
        cluster.migrate_keys_batch(&migration, 15).await.unwrap(),
        15
    );

    let ask = format!("{slot} {}", cluster.node_addr(target));
    let mut moved = 0;
    for key in &keys {
        let expected = format!("v-{key}");
        match source_conn
            .send(cmd("GET").arg(key.as_str()))
            .await
            .unwrap()
        {
            Value::ServerError(e) => {
                assert_eq!((e.code(), e.message()), ("ASK", ask.as_str()));
                moved += 1;
                let replies = target_conn
                    .send_batch(vec![cmd("ASKING"), cmd("GET").arg(key.as_str())])
                    .await
                    .unwrap();
                assert_eq!(String::from_value(replies[1].clone()).unwrap(), expected);
                // Without ASKING the target does not serve the slot yet.
                let reply = target_conn
                    .send(cmd("GET").arg(key.as_str()))
                    .await
                    .unwrap();
                assert!(
                    matches!(&reply, Value::ServerError(e) if e.code() == "MOVED"),
                    "{reply:?}"
                );
            }
            value => assert_eq!(String::from_value(value).unwrap(), expected),
        }
    }
    assert_eq!(moved, 15);
    // The slot is still served by the source until the migration finishes.
    assert_eq!(cluster.master_of_slot(slot).await.unwrap(), source);

    cluster.finish_slot_migration(migration).await.unwrap();
    assert_eq!(cluster.master_of_slot(slot).await.unwrap(), target);
    let count: i64 = send(
        &target_conn,
        cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot),
    )
    .await;
    assert_eq!(count, 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn added_replica_syncs_from_its_master() {
    let cluster = LocalCluster::builder()
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    let owner = cluster.master_of_slot(key_slot(b"{b}")).await.unwrap();
    let master = cluster.connect_node(owner).await.unwrap();
    let _: () = send(&master, cmd("SET").arg("{b}").arg("before")).await;

    let replica = cluster.add_replica(owner).await.unwrap();
    assert_eq!(replica, 3);
    assert_eq!(cluster.replicas_of(owner).await.unwrap(), vec![3]);
    assert_eq!(cluster.replicas().await.unwrap(), vec![3]);
    let acked: i64 = send(&master, cmd("WAIT").arg(1).arg(5000)).await;
    assert_eq!(acked, 1);
    let conn = cluster.connect_node(replica).await.unwrap();
    let replies = conn
        .send_batch(vec![cmd("READONLY"), cmd("GET").arg("{b}")])
        .await
        .unwrap();
    assert_eq!(String::from_value(replies[1].clone()).unwrap(), "before");

    let err = cluster.add_replica(replica).await.unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_node_is_forgotten_by_every_other_node() {
    let cluster = LocalCluster::start().await.unwrap();
    let err = cluster.remove_node(0).await.unwrap_err();
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("serves slots")),
        "{err}"
    );

    let removed = cluster.node(5);
    cluster.remove_node(5).await.unwrap();
    assert_eq!(cluster.node(5).state, NodeState::Removed);
    assert_eq!(cluster.node(5).pid, None);
    assert!(!cluster.seeds().contains(&removed.addr()));
    for i in 0..5 {
        assert!(
            !known_ids(&cluster, i).await.contains(&removed.id),
            "node {i} still knows the removed node"
        );
    }
    assert_eq!(cluster.replicas_of(2).await.unwrap(), Vec::<usize>::new());
    assert!(cluster.restart(5).await.is_err());
}

/// Our `redis-server` children whose working directory is gone: what a cluster start
/// cancelled half-way used to leave running. (Other tests' nodes, also our children,
/// still have their directories.)
fn orphaned_servers() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // `pid (comm) state ppid ...`
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
            continue;
        };
        let comm = &stat[open + 1..close];
        let ppid = stat[close + 1..].split_whitespace().nth(1);
        if comm != "redis-server" || ppid != Some(me.as_str()) {
            continue;
        }
        if std::fs::read_link(format!("/proc/{pid}/cwd"))
            .is_ok_and(|cwd| cwd.to_string_lossy().ends_with("(deleted)"))
        {
            found.push(pid);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_start_cancelled_half_way_leaves_no_server_running() {
    // Cancelled at several points of the start: spawning, waiting for nodes to answer,
    // forming the cluster.
    for ms in [5, 20, 50, 100, 200, 400] {
        let start = LocalCluster::builder()
            .masters(3)
            .replicas_per_master(0)
            .start();
        if let Ok(started) = tokio::time::timeout(Duration::from_millis(ms), start).await {
            drop(started);
        }
        let orphans = orphaned_servers();
        for &pid in &orphans {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        assert!(
            orphans.is_empty(),
            "cancelled after {ms} ms, still running: {orphans:?}"
        );
    }
}

/// Run by [`a_killed_test_process_takes_its_nodes_with_it`] in a process of its own:
/// starts a cluster, prints its nodes' pids, and waits to be killed.
#[tokio::test]
#[ignore = "run by a_killed_test_process_takes_its_nodes_with_it"]
async fn holds_a_cluster_until_killed() {
    let cluster = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    let pids: Vec<String> = cluster
        .nodes()
        .iter()
        .map(|n| n.pid.unwrap().to_string())
        .collect();
    println!("PIDS {}", pids.join(" "));
    tokio::time::sleep(Duration::from_secs(60)).await;
    panic!("not killed within a minute");
}

/// Whether process `pid` is gone (or a zombie no one reaped yet: dead).
fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rfind(')')
            .is_some_and(|close| stat[close + 1..].trim_start().starts_with('Z')),
    }
}

/// A test process killed outright (SIGKILL: no destructor runs) takes its nodes with
/// it, rather than leaving them running on their ports until killed by hand.
#[test]
fn a_killed_test_process_takes_its_nodes_with_it() {
    use std::io::BufRead as _;
    let mut holder = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "holds_a_cluster_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let stdout = holder.stdout.take().unwrap();
    let (found, pids) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(list) = line.strip_prefix("PIDS ") {
                let pids: Vec<i32> = list.split(' ').filter_map(|p| p.parse().ok()).collect();
                let _ = found.send(pids);
                return;
            }
        }
    });
    let pids = pids.recv_timeout(Duration::from_secs(60));
    holder.kill().unwrap();
    holder.wait().unwrap();
    let pids = pids.expect("the holder printed no pids");
    assert_eq!(pids.len(), 3);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !pids.iter().all(|&pid| gone(pid)) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let running: Vec<i32> = pids.iter().copied().filter(|&pid| !gone(pid)).collect();
    for &pid in &running {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(running.is_empty(), "still running: {running:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_cluster_kills_every_process_and_removes_its_files() {
    let cluster = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(1)
        .start()
        .await
        .unwrap();
    cluster.pause(4).unwrap();
    let pids: Vec<i32> = cluster
        .nodes()
        .iter()
        .map(|n| n.pid.unwrap() as i32)
        .collect();
    let addrs = cluster.seeds();
    let dir = cluster.dir().to_owned();
    assert!(dir
        .join(format!("node-{}", cluster.node(0).port))
        .join("redis.log")
        .is_file());
    drop(cluster);
    for pid in pids {
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None);
        assert_eq!(
            alive,
            Err(nix::errno::Errno::ESRCH),
            "pid {pid} still exists"
        );
    }
    for addr in addrs {
        assert!(
            std::net::TcpStream::connect(&addr).is_err(),
            "{addr} still accepts"
        );
    }
    assert!(!dir.exists(), "{} still exists", dir.display());
}

#[tokio::test]
async fn missing_redis_server_is_a_config_error_that_says_how_to_install_it() {
    let err = LocalCluster::builder()
        .redis_server("/nonexistent/bin/redis-server")
        .start()
        .await
        .unwrap_err();
    let Error::Config(message) = &err else {
        panic!("expected Error::Config, got {err:?}")
    };
    assert!(
        message.contains("/nonexistent/bin/redis-server"),
        "{message}"
    );
    assert!(
        message.contains("apt-get install -y redis-server"),
        "{message}"
    );
    assert!(message.contains("brew install redis"), "{message}");
    assert!(message.contains("REDCLUSTER_REDIS_SERVER"), "{message}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_protected_cluster_forms_and_migrates() {
    let cluster = LocalCluster::builder()
        .masters(2)
        .replicas_per_master(1)
        .config("requirepass", "\"testkit secret\"")
        .start()
        .await
        .unwrap();
    // Without the password the node refuses the connection.
    let err = NodeConnection::connect(&cluster.node_addr(0), &Default::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err}");

    let (slot, keys) = keys_in_one_slot("auth", 10);
    let source = cluster.master_of_slot(slot).await.unwrap();
    write_keys(&cluster.connect_node(source).await.unwrap(), &keys).await;
    cluster.move_slot(slot, 1 - source).await.unwrap();
    let target = cluster.connect_node(1 - source).await.unwrap();
    let count: i64 = send(&target, cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot)).await;
    assert_eq!(count, 10);
}

#[tokio::test]
async fn misconfiguration_is_refused_before_anything_starts() {
    let err = LocalCluster::builder()
        .config("port", "6379")
        .start()
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("`port`")),
        "{err}"
    );
    let err = LocalCluster::builder()
        .masters(0)
        .start()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Config(_)), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiting_on_a_broken_cluster_times_out_naming_the_cause() {
    let cluster = LocalCluster::builder()
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    cluster.kill(0).unwrap();
    let err = cluster
        .wait_until_stable(Duration::from_millis(300))
        .await
        .unwrap_err();
    let Error::Io { source, .. } = &err else {
        panic!("expected a timeout, got {err:?}")
    };
    assert_eq!(source.kind(), std::io::ErrorKind::TimedOut);
    let message = err.to_string();
    assert!(
        message.contains("served by node 0, which is killed"),
        "{message}"
    );
    assert!(message.contains("log"), "{message}");
    let log = cluster.log_tail(0, 5);
    assert!(!log.is_empty() && log.lines().count() <= 5, "{log}");

    // A master without replicas comes back with its slots.
    cluster.restart(0).await.unwrap();
    cluster.wait_until_stable(SETTLE).await.unwrap();
    assert_eq!(cluster.master_of_slot(0).await.unwrap(), 0);
    let port = cluster.node(2).port;
    assert_eq!(cluster.index_of_addr(&format!("127.0.0.1:{port}")), Some(2));
    assert_eq!(cluster.index_of_id(&cluster.node(1).id), Some(1));
}

/// A node that lost a peer (here it forgot it: gossip may not bring it back for the
/// 60 s of the ban that `CLUSTER FORGET` sets) is introduced again by a wait, as the
/// testkit did when it formed the cluster, instead of the wait timing out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_introduces_nodes_that_lost_each_other_again() {
    let cluster = LocalCluster::builder()
        .replicas_per_master(0)
        .start()
        .await
        .unwrap();
    let lost = cluster.node(1).id;
    let conn = cluster.connect_node(0).await.unwrap();
    let _: () = send(&conn, cmd("CLUSTER").arg("FORGET").arg(lost.as_str())).await;
    assert!(!known_ids(&cluster, 0).await.contains(&lost));
    cluster
        .wait_until_stable(Duration::from_secs(20))
        .await
        .unwrap();
    assert!(known_ids(&cluster, 0).await.contains(&lost));
    assert_eq!(cluster.master_of_slot(5461).await.unwrap(), 1);
}

/// The cluster's directory is its owner's alone (the nodes' `redis.conf` files hold
/// their passwords), and a wait timeout of `Duration::MAX` means "no limit", not an
/// overflow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_directory_is_private_and_any_wait_timeout_is_taken() {
    use std::os::unix::fs::PermissionsExt as _;
    let starting = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .config("requirepass", "testkit-secret-pw")
        .wait_timeout(Duration::MAX)
        .start();
    let local = tokio::time::timeout(Duration::from_secs(60), starting)
        .await
        .expect("the cluster formed within a minute")
        .unwrap();
    let mode = std::fs::metadata(local.dir()).unwrap().permissions().mode();
    assert_eq!(mode & 0o077, 0, "{mode:o}");
    assert_eq!(local.masters().await.unwrap().len(), 3);
}

/// A node that exits by itself (a crash; here `SHUTDOWN NOSAVE` sent to it) makes every
/// later wait fail naming it, whatever looked at the nodes first, until it is started
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_exited_by_itself_is_reported_by_every_later_wait() {
    let cluster = LocalCluster::builder().start().await.unwrap();
    let replica = cluster.replicas().await.unwrap()[0];
    let conn = cluster.connect_node(replica).await.unwrap();
    // The connection closes under the command: no reply to wait for.
    let _ = conn.send(cmd("SHUTDOWN").arg("NOSAVE")).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while cluster.nodes()[replica].state != NodeState::Killed {
        assert!(
            std::time::Instant::now() < deadline,
            "the node never exited"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // `nodes()` noticed the exit first; the waits still report it, each of them.
    for _ in 0..2 {
        let err = cluster
            .wait_until_stable(Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("exited by itself"), "{err}");
    }
    cluster.restart(replica).await.unwrap();
    cluster.wait_until_stable(SETTLE).await.unwrap();
}

/// A relative path to `redis-server` is taken from the test's directory, not from the
/// node's (where the process starts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relative_redis_server_path_is_found_from_the_tests_directory() {
    let found = std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([std::path::PathBuf::from("/usr/bin")])
        .map(|dir| dir.join("redis-server"))
        .find(|p| p.is_file())
        .expect("redis-server installed");
    // Not canonicalized: Debian's `redis-server` links to `redis-check-rdb`, and the
    // binary acts by the name it is started under.
    let found = std::path::absolute(found).unwrap();
    // As many `..` as the working directory is deep, then the absolute path's parts.
    let cwd = std::env::current_dir().unwrap();
    let up = cwd.components().count() - 1;
    let relative: std::path::PathBuf = std::iter::repeat_n(std::path::Component::ParentDir, up)
        .map(|c| c.as_os_str().to_owned())
        .chain(found.components().skip(1).map(|c| c.as_os_str().to_owned()))
        .collect();
    assert!(relative.is_relative() && relative.is_file(), "{relative:?}");
    let cluster = LocalCluster::builder()
        .masters(1)
        .replicas_per_master(0)
        .redis_server(&relative)
        .start()
        .await
        .unwrap();
    assert!(cluster.nodes()[0].pid.is_some());
}

/// Another process's server on a killed node's port (taken while the node was down)
/// that refuses the testkit's login: the restart waits for the port, as for any port
/// taken, instead of failing at once with that server's refusal; freed, the port
/// serves the node again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_on_a_port_another_server_took_waits_for_the_port() {
    let cluster = LocalCluster::builder()
        .masters(3)
        .replicas_per_master(0)
        .wait_timeout(Duration::from_secs(20))
        .start()
        .await
        .unwrap();
    let port = cluster.node(0).port;
    cluster.kill(0).unwrap();
    let squatter = support::standalone::Standalone::start_on(port, &["--requirepass", "other"]);
    let log = cluster.dir().join(format!("node-{port}")).join("redis.log");
    let taken_before = std::fs::read_to_string(&log)
        .unwrap_or_default()
        .matches("Address already in use")
        .count();
    let restart = cluster.restart(0);
    let freed = async {
        // Until a start of the node found the port taken: then free it.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.matches("Address already in use").count() > taken_before {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no start found the port taken"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        drop(squatter);
    };
    let (restarted, ()) = tokio::join!(restart, freed);
    restarted.unwrap();
    assert_eq!(cluster.node(0).state, NodeState::Running);
}

/// A node that refuses the testkit's login (a password set by an ACL rule for
/// `default`, which the testkit cannot know) fails the start at once with the refusal,
/// not after the whole wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refusing_the_testkits_login_fails_the_start_at_once() {
    let started = std::time::Instant::now();
    let err = LocalCluster::builder()
        .masters(1)
        .replicas_per_master(0)
        .acl_user("default on >not-the-testkits ~* +@all")
        .wait_timeout(Duration::from_secs(20))
        .start()
        .await
        .unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("refused the testkit's connection"),
        "{message}"
    );
    assert!(!message.contains("not-the-testkits"), "{message}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// The README's testkit example, as written there.
#[tokio::test(flavor = "multi_thread")]
async fn the_readme_example_survives_a_failover() {
    let cluster = LocalCluster::builder().start().await.unwrap(); // 3 masters, 3 replicas
    let client = redcluster::ClusterClient::connect(cluster.seeds())
        .await
        .unwrap();
    let owner = cluster
        .master_of_slot(redcluster::key_slot(b"user:{42}"))
        .await
        .unwrap();
    cluster.kill(owner).unwrap();
    cluster
        .wait_until_stable(std::time::Duration::from_secs(20))
        .await
        .unwrap();
    // The client finds the promoted replica.
    client.set("user:{42}", "ada").await.unwrap();
    let name: Option<String> = client.get("user:{42}").await.unwrap();
    assert_eq!(name.as_deref(), Some("ada"));
}
