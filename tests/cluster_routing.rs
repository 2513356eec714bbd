//! The cluster client against real local clusters: slot hashing as the server does it,
//! discovery, routing of every slot, MOVED/ASK under traffic, refresh bounds, multi-slot
//! and cluster-wide commands, address remap.

mod support;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use redcluster::testkit::{FailoverMode, LocalCluster};
use redcluster::{
    cmd, key_slot, AddressRemap, ClusterClient, Durability, Error, ReadFrom, Script, Value,
};
use support::{calls, cluster, key_in_slot, master_other_than, other_master};

/// One key per slot, found by trying `k0`, `k1`, ... (151,592 hashes; a million at
/// most).
fn key_per_slot() -> Vec<String> {
    let mut keys: Vec<Option<String>> = vec![None; 16384];
    let mut missing = 16384;
    let mut i = 0u64;
    while missing > 0 {
        assert!(i < 1_000_000, "{missing} slots without a key");
        let key = format!("k{i}");
        let slot = usize::from(key_slot(key.as_bytes()));
        if keys[slot].is_none() {
            keys[slot] = Some(key);
            missing -= 1;
        }
        i += 1;
    }
    keys.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_slot_matches_the_server_for_random_and_edge_case_keys() {
    let local = cluster(1, 0).await;
    let node = local.connect_node(0).await.unwrap();
    let mut keys: Vec<Vec<u8>> = [
        &b"{}"[..],
        b"{}{a}",
        b"{{a}}",
        b"a{b}{c}",
        b"{",
        b"}",
        b"{tag}",
        b"",
        b"}{a}",
        b"a{}b{c}",
        b"123456789",
    ]
    .iter()
    .map(|k| k.to_vec())
    .collect();
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..10_000 {
        let len = rng.usize(0..24);
        // Binary bytes, with braces made common so hash tags are exercised.
        keys.push(
            (0..len)
                .map(|_| match rng.u8(0..8) {
                    0 => b'{',
                    1 => b'}',
                    _ => rng.u8(..),
                })
                .collect(),
        );
    }
    let answers = futures_util::future::join_all(
        keys.iter()
            .map(|k| node.send(cmd("CLUSTER").arg("KEYSLOT").arg(&k[..]))),
    )
    .await;
    for (key, answer) in keys.iter().zip(answers) {
        let server = match answer.unwrap() {
            Value::Int(n) => n,
            other => panic!("KEYSLOT answered {other:?}"),
        };
        assert_eq!(i64::from(key_slot(key)), server, "key {key:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_slot_is_written_and_read_back_from_its_owner() {
    let local = cluster(3, 1).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let keys = key_per_slot();
    for chunk in keys.chunks(1024) {
        let writes = chunk
            .iter()
            .map(|k| client.set(k.as_str(), format!("v-{k}")));
        for r in futures_util::future::join_all(writes).await {
            r.unwrap();
        }
    }
    for chunk in keys.chunks(1024) {
        let reads = chunk.iter().map(|k| client.get::<_, String>(k.as_str()));
        for (k, r) in chunk
            .iter()
            .zip(futures_util::future::join_all(reads).await)
        {
            assert_eq!(r.unwrap(), format!("v-{k}"));
        }
    }
    // Read each value straight from the node that owns its slot, bypassing the client.
    let mut owners = HashMap::new();
    for slot in 0..16384u16 {
        let owner = local.master_of_slot(slot).await.unwrap();
        owners.entry(owner).or_insert_with(Vec::new).push(slot);
    }
    assert_eq!(owners.len(), 3, "three masters own slots");
    for (owner, slots) in owners {
        let node = local.connect_node(owner).await.unwrap();
        let reads = slots
            .iter()
            .map(|&s| node.send(cmd("GET").arg(keys[usize::from(s)].as_str())));
        for (s, r) in slots
            .iter()
            .zip(futures_util::future::join_all(reads).await)
        {
            let key = &keys[usize::from(*s)];
            assert_eq!(
                r.unwrap(),
                Value::Bulk(format!("v-{key}").into()),
                "slot {s} on node {owner}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connects_past_a_dead_first_seed_and_from_a_replica_alone() {
    let local = cluster(3, 1).await;
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().to_string()
    };
    let mut seeds = vec![dead];
    seeds.extend(local.seeds());
    let client = ClusterClient::connect(seeds).await.unwrap();
    client.set("a", "1").await.unwrap();
    assert_eq!(client.known_nodes().len(), 6);

    let replica = local.replicas().await.unwrap()[0];
    let client = ClusterClient::connect([local.node_addr(replica)])
        .await
        .unwrap();
    assert_eq!(client.known_nodes().len(), 6);
    client.set("b", "2").await.unwrap();
    assert_eq!(client.get::<_, String>("b").await.unwrap(), "2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_slot_commands_split_and_single_slot_ones_refuse_cross_slot() {
    let local = cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let keys: Vec<String> = (0..50).map(|i| format!("multi:{i}")).collect();
    let slots: std::collections::HashSet<u16> =
        keys.iter().map(|k| key_slot(k.as_bytes())).collect();
    assert!(slots.len() > 10, "keys spread over many slots");
    client
        .mset(keys.iter().map(|k| (k.as_str(), k.as_str())))
        .await
        .unwrap();
    let mut wanted: Vec<&str> = keys.iter().map(String::as_str).collect();
    wanted.insert(7, "multi:missing");
    let values: Vec<Option<String>> = client.mget(wanted.iter().copied()).await.unwrap();
    assert_eq!(values.len(), 51);
    for (k, v) in wanted.iter().zip(&values) {
        if *k == "multi:missing" {
            assert_eq!(v, &None);
        } else {
            assert_eq!(v.as_deref(), Some(*k));
        }
    }
    assert_eq!(client.exists(wanted.iter().copied()).await.unwrap(), 50);
    assert_eq!(
        client
            .del(keys[..20].iter().map(String::as_str))
            .await
            .unwrap(),
        20
    );
    assert_eq!(
        client
            .exists(keys.iter().map(String::as_str))
            .await
            .unwrap(),
        30
    );
    let unlinked: i64 = client
        .query(cmd("UNLINK").args(keys[20..].iter().map(String::as_str)))
        .await
        .unwrap();
    assert_eq!(unlinked, 30);

    // An MSET a value short is refused as the server would refuse it, split or not:
    // nothing is written (never `b = ""`).
    for keys in [["multi:a", "multi:b"], ["{multi}:a", "{multi}:b"]] {
        let short = cmd("MSET").arg(keys[0]).arg("1").arg(keys[1]);
        let err = client.query::<Value>(short).await.unwrap_err();
        assert!(
            matches!(err, Error::Config(_)) || err.server_code() == Some("ERR"),
            "{err:?}"
        );
        assert_eq!(client.exists(keys).await.unwrap(), 0, "nothing written");
    }

    // Optional keys left out: `PFMERGE dst` is routed by `dst` alone.
    let () = client.query(cmd("PFMERGE").arg("multi:hll")).await.unwrap();
    assert_eq!(client.exists(["multi:hll"]).await.unwrap(), 1);

    // Atomic multi-key commands refuse keys in several slots before sending anything.
    let err = client
        .query::<Value>(cmd("RENAME").arg("multi:a").arg("multi:b"))
        .await
        .unwrap_err();
    match err {
        Error::CrossSlot { slots } => {
            assert_eq!(slots, vec![key_slot(b"multi:a"), key_slot(b"multi:b")]);
        }
        other => panic!("{other:?}"),
    }
    let err = client
        .query::<Value>(cmd("MSETNX").arg("x").arg(1).arg("y").arg(2))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CrossSlot { .. }), "{err:?}");
    // With a hash tag they share a slot and work.
    client.set("{multi}:a", "1").await.unwrap();
    let () = client
        .query(cmd("RENAME").arg("{multi}:a").arg("{multi}:b"))
        .await
        .unwrap();
    assert_eq!(client.get::<_, String>("{multi}:b").await.unwrap(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_wide_commands_fan_out_and_combine() {
    let local = cluster(3, 1).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let keys: Vec<String> = (0..30).map(|i| format!("fan:{i}")).collect();
    client
        .mset(keys.iter().map(|k| (k.as_str(), "v")))
        .await
        .unwrap();
    let size: i64 = client.query(cmd("DBSIZE")).await.unwrap();
    assert_eq!(size, 30, "DBSIZE sums the primaries, not the replicas");
    let mut found: Vec<String> = client.query(cmd("KEYS").arg("fan:*")).await.unwrap();
    found.sort();
    let mut expected = keys.clone();
    expected.sort();
    assert_eq!(found, expected);
    let pong: String = client.query(cmd("PING")).await.unwrap();
    assert_eq!(pong, "PONG");
    let info: HashMap<String, String> = client.query(cmd("INFO").arg("server")).await.unwrap();
    assert_eq!(info.len(), 3, "INFO answers per primary");
    assert!(info.values().all(|v| v.contains("redis_version")));
    let sha: String = client
        .query(cmd("SCRIPT").arg("LOAD").arg("return 1"))
        .await
        .unwrap();
    // Loaded on every node, so EVALSHA works wherever the key lands.
    for k in ["a", "b", "c", "d"] {
        let one: i64 = client
            .query(cmd("EVALSHA").arg(sha.as_str()).arg(1).arg(k))
            .await
            .unwrap();
        assert_eq!(one, 1);
    }
    // Questions about one slot go to its owner, the only node that knows its keys.
    let slot = key_slot(b"fan:0");
    let in_slot: Vec<&String> = keys
        .iter()
        .filter(|k| key_slot(k.as_bytes()) == slot)
        .collect();
    for _ in 0..3 {
        let count: i64 = client
            .query(cmd("CLUSTER").arg("COUNTKEYSINSLOT").arg(slot))
            .await
            .unwrap();
        assert_eq!(count, in_slot.len() as i64);
        let mut listed: Vec<String> = client
            .query(cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(100))
            .await
            .unwrap();
        listed.sort();
        assert_eq!(listed.iter().collect::<Vec<_>>(), in_slot);
    }

    let () = client.query(cmd("FLUSHALL")).await.unwrap();
    assert_eq!(client.query::<i64>(cmd("DBSIZE")).await.unwrap(), 0);

    // Per-node reports come back by node address: the node that ran a slow script has
    // a latency event. (Others may have one too: a server kept off a busy core.)
    let () = client
        .query(
            cmd("CONFIG")
                .arg("SET")
                .arg("latency-monitor-threshold")
                .arg(50),
        )
        .await
        .unwrap();
    let spin = "local s = redis.call('TIME') repeat local n = redis.call('TIME') \
                until (n[1] - s[1]) * 1000000 + n[2] - s[2] > 100000 return 1";
    let slow_key = "latency:{a}";
    let one: i64 = client
        .query(cmd("EVAL").arg(spin).arg(1).arg(slow_key))
        .await
        .unwrap();
    assert_eq!(one, 1);
    let slow_node = client.node_for_key(slow_key.as_bytes()).unwrap();
    let latest: HashMap<String, Vec<Value>> =
        client.query(cmd("LATENCY").arg("LATEST")).await.unwrap();
    let mut addrs: Vec<&String> = latest.keys().collect();
    addrs.sort();
    let mut primaries: Vec<String> = local
        .masters()
        .await
        .unwrap()
        .into_iter()
        .map(|m| local.node_addr(m))
        .collect();
    primaries.sort();
    assert_eq!(addrs, primaries.iter().collect::<Vec<_>>());
    assert!(
        format!("{:?}", latest[&slow_node]).contains("command"),
        "{latest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirect_limit_wait_refusal_and_no_partial_fan_out() {
    let local = cluster(3, 0).await;
    let strict = ClusterClient::builder()
        .nodes(local.seeds())
        .max_redirects(0)
        .build()
        .await
        .unwrap();
    let key = "limits:{a}";
    strict.set(key, "v").await.unwrap();
    let slot = key_slot(key.as_bytes());
    local
        .move_slot(slot, other_master(&local, slot).await)
        .await
        .unwrap();
    match strict.get::<_, Option<String>>(key).await {
        Err(Error::TooManyRedirects { redirects: 0 }) => {}
        other => panic!("{other:?}"),
    }
    // The MOVED it did not follow still taught it the new owner.
    let v: Option<String> = strict.get(key).await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));

    // WAIT counts the writes of its own connection, which a shared one cannot tell:
    // refused, and never sent.
    let before = calls_anywhere(&local, "wait").await;
    match strict.query::<Value>(cmd("WAIT").arg(1).arg(0)).await {
        Err(Error::Config(_)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(calls_anywhere(&local, "wait").await, before);

    // A fan-out never answers with part of the cluster: a frozen primary fails DBSIZE
    // instead of leaving its keys out of the sum.
    let quick = strict.with_response_timeout(Duration::from_millis(300));
    let frozen = local.masters().await.unwrap()[0];
    local.pause(frozen).unwrap();
    let partial = quick.query::<i64>(cmd("DBSIZE")).await;
    local.resume(frozen).unwrap();
    assert!(matches!(partial, Err(Error::Timeout { .. })), "{partial:?}");
    assert_eq!(strict.query::<i64>(cmd("DBSIZE")).await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_typed_helper_does_what_its_command_does() {
    let local = cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .build()
        .await
        .unwrap();
    let k = |name: &str| format!("typed:{{u}}:{name}");

    // Strings.
    client.set(k("s"), "v").await.unwrap();
    let v: Option<String> = client.get(k("s")).await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    let none: Option<String> = client.get(k("missing")).await.unwrap();
    assert_eq!(none, None);
    assert!(client.set_nx(k("nx"), "first").await.unwrap());
    assert!(!client.set_nx(k("nx"), "second").await.unwrap());
    let v: String = client.get(k("nx")).await.unwrap();
    assert_eq!(v, "first");
    client
        .set_ex(k("ex"), "v", Duration::from_secs(100))
        .await
        .unwrap();
    let ttl = client.ttl(k("ex")).await.unwrap().unwrap();
    assert!(ttl > Duration::from_secs(90) && ttl <= Duration::from_secs(100));
    assert_eq!(client.ttl(k("s")).await.unwrap(), None, "no expiry");
    assert_eq!(client.ttl(k("missing")).await.unwrap(), None, "no key");
    assert!(client
        .expire(k("s"), Duration::from_secs(50))
        .await
        .unwrap());
    assert!(!client
        .expire(k("missing"), Duration::from_secs(50))
        .await
        .unwrap());
    assert!(client.ttl(k("s")).await.unwrap().is_some());
    assert_eq!(client.incr(k("n"), 5).await.unwrap(), 5);
    assert_eq!(client.incr(k("n"), -2).await.unwrap(), 3);

    // Keys over several slots.
    let spread: Vec<String> = (0..4u16).map(|i| key_in_slot(i * 4000, 0)).collect();
    client
        .mset(spread.iter().map(|k| (k.as_str(), format!("{k}!"))))
        .await
        .unwrap();
    let got: Vec<Option<String>> = client
        .mget(spread.iter().map(String::as_str).chain(["typed:none"]))
        .await
        .unwrap();
    let mut expected: Vec<Option<String>> = spread.iter().map(|k| Some(format!("{k}!"))).collect();
    expected.push(None);
    assert_eq!(got, expected);
    assert_eq!(client.exists(&spread).await.unwrap(), 4);
    assert_eq!(client.del(&spread).await.unwrap(), 4);
    assert_eq!(client.exists(&spread).await.unwrap(), 0);

    // Hashes.
    assert!(client.hset(k("h"), "f1", "a").await.unwrap());
    assert!(!client.hset(k("h"), "f1", "b").await.unwrap(), "an update");
    client.hset(k("h"), "f2", 2).await.unwrap();
    let f1: Option<String> = client.hget(k("h"), "f1").await.unwrap();
    assert_eq!(f1.as_deref(), Some("b"));
    let all: HashMap<String, String> = client.hgetall(k("h")).await.unwrap();
    let expected: HashMap<String, String> =
        HashMap::from([("f1".into(), "b".into()), ("f2".into(), "2".into())]);
    assert_eq!(all, expected);
    assert_eq!(client.hdel(k("h"), ["f1", "nope"]).await.unwrap(), 1);

    // Lists.
    assert_eq!(client.rpush(k("l"), ["b", "c"]).await.unwrap(), 2);
    assert_eq!(client.lpush(k("l"), ["a"]).await.unwrap(), 3);
    let list: Vec<String> = client.lrange(k("l"), 0, -1).await.unwrap();
    assert_eq!(list, ["a", "b", "c"]);
    let first: Option<String> = client.lpop(k("l")).await.unwrap();
    let last: Option<String> = client.rpop(k("l")).await.unwrap();
    assert_eq!((first.as_deref(), last.as_deref()), (Some("a"), Some("c")));

    // Sets.
    assert_eq!(client.sadd(k("set"), ["x", "y", "x"]).await.unwrap(), 2);
    assert!(client.sismember(k("set"), "x").await.unwrap());
    assert!(!client.sismember(k("set"), "z").await.unwrap());
    assert_eq!(client.srem(k("set"), ["x", "z"]).await.unwrap(), 1);
    let members: Vec<String> = client.smembers(k("set")).await.unwrap();
    assert_eq!(members, ["y"]);

    // Sorted sets.
    assert!(client.zadd(k("z"), 2.5, "b").await.unwrap());
    assert!(client.zadd(k("z"), 1.0, "a").await.unwrap());
    assert!(!client.zadd(k("z"), 3.0, "b").await.unwrap(), "a new score");
    assert_eq!(client.zscore(k("z"), "b").await.unwrap(), Some(3.0));
    assert_eq!(client.zscore(k("z"), "none").await.unwrap(), None);
    let ranked: Vec<String> = client.zrange(k("z"), 0, -1).await.unwrap();
    assert_eq!(ranked, ["a", "b"]);
    assert_eq!(client.zrem(k("z"), ["a"]).await.unwrap(), 1);

    // A reply of the wrong type: the command ran, and the error says it may have.
    let r = client
        .query::<i64>(cmd("SET").arg(k("typed")).arg("v"))
        .await;
    assert!(
        matches!(&r, Err(e @ Error::Type { .. }) if e.may_have_executed()),
        "{r:?}"
    );
    assert_eq!(client.get::<_, String>(k("typed")).await.unwrap(), "v");

    // Scripts and pub/sub (nobody subscribed).
    let script = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    let n: i64 = client.eval(script, [k("n")], [10]).await.unwrap();
    assert_eq!(n, 13);
    assert_eq!(client.publish("typed:chan", "hi").await.unwrap(), 0);
    assert_eq!(client.spublish(k("chan"), "hi").await.unwrap(), 0);

    // The pipeline's helpers.
    let mut p = client.pipeline();
    p.set(k("p"), "1")
        .get(k("p"))
        .incr(k("p"), 2)
        .expire(k("p"), Duration::from_secs(30))
        .hset(k("ph"), "f", "v")
        .hget(k("ph"), "f")
        .rpush(k("pl"), "x")
        .sadd(k("ps"), "m")
        .zadd(k("pz"), 1.0, "m")
        .del(k("p"));
    assert_eq!(
        p.execute().await.unwrap(),
        [
            Value::Simple("OK".into()),
            Value::Bulk("1".into()),
            Value::Int(3),
            Value::Int(1),
            Value::Int(1),
            Value::Bulk("v".into()),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
            Value::Int(1),
        ]
    );
}

/// `name`'s calls on every node of `local`, summed.
async fn calls_anywhere(local: &LocalCluster, name: &str) -> u64 {
    let nodes = 0..local.nodes().len();
    futures_util::future::join_all(nodes.map(|i| calls(local, i, name)))
        .await
        .iter()
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_run_by_digest_and_send_their_source_only_where_a_node_lacks_them() {
    let local = cluster(3, 1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .build()
        .await
        .unwrap();
    let add = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    let key = "script:{a}:visits";
    let owner = support::owner_index(&local, &client, key);

    // The owner does not know the digest yet: it gets the source once, and the script
    // runs once.
    let n: i64 = client.invoke(&add, &[key], &[5]).await.unwrap();
    assert_eq!(n, 5);
    assert_eq!(
        calls(&local, owner, "eval").await,
        1,
        "the source went once"
    );
    let n: i64 = client.invoke(&add, &[key], &[5]).await.unwrap();
    assert_eq!(n, 10);
    assert_eq!(
        calls(&local, owner, "eval").await,
        1,
        "the second run went by digest alone"
    );
    assert_eq!(calls(&local, owner, "evalsha").await, 2);

    // The node forgets its scripts (as after a restart): the source goes again, and the
    // write runs once, not twice.
    let node = local.connect_node(owner).await.unwrap();
    node.send(cmd("SCRIPT").arg("FLUSH")).await.unwrap();
    let n: i64 = client.invoke(&add, &[key], &[5]).await.unwrap();
    assert_eq!(n, 15, "the script ran once");
    assert_eq!(calls(&local, owner, "eval").await, 2);

    // Keys and arguments of different types, one at a time.
    let mixed = Script::new("return {KEYS[1], ARGV[1], ARGV[2], ARGV[3]}");
    let (k, a, b, c): (String, i64, String, f64) = client
        .invoke_call(mixed.key(key).arg(7).arg("text").arg(2.5))
        .await
        .unwrap();
    assert_eq!((k.as_str(), a, b.as_str(), c), (key, 7, "text", 2.5));

    // The script's own error is the caller's.
    let fails = Script::new("return redis.error_reply('MYCODE went wrong')");
    match client.invoke::<_, &str, Value>(&fails, &[key], &[]).await {
        Err(Error::Server(e)) => assert_eq!(e.code(), "MYCODE"),
        other => panic!("{other:?}"),
    }

    // Keys of several slots are refused before anything is sent.
    let evalsha_before = calls(&local, owner, "evalsha").await;
    match client
        .invoke::<_, &str, Value>(&add, &["script:{a}:x", "script:{b}:y"], &[])
        .await
    {
        Err(Error::CrossSlot { slots }) => assert_eq!(slots.len(), 2),
        other => panic!("{other:?}"),
    }
    assert_eq!(calls(&local, owner, "evalsha").await, evalsha_before);

    // `load_script` reaches every node, replicas included; a pipeline then runs the
    // script by digest on each primary, with no source sent.
    let _: Value = client.query(cmd("SCRIPT").arg("FLUSH")).await.unwrap();
    client.load_script(&add).await.unwrap();
    for i in 0..local.nodes().len() {
        let node = local.connect_node(i).await.unwrap();
        let known = node
            .send(cmd("SCRIPT").arg("EXISTS").arg(add.sha()))
            .await
            .unwrap();
        assert_eq!(known, Value::Array(vec![Value::Int(1)]), "node {i}");
    }
    let evals = calls_anywhere(&local, "eval").await;
    let others: Vec<String> = (0..16384u16)
        .step_by(16384 / 3 + 1)
        .map(|slot| key_in_slot(slot, 0))
        .collect();
    let mut p = client.pipeline();
    p.invoke(&add, &[key], &[1]);
    for k in &others {
        p.invoke(&add, &[k.as_str()], &[1]);
    }
    let replies = p.execute().await.unwrap();
    assert_eq!(
        replies,
        [Value::Int(16), Value::Int(1), Value::Int(1), Value::Int(1)]
    );
    assert_eq!(
        calls_anywhere(&local, "eval").await,
        evals,
        "no source was sent"
    );

    // Where a node lacks it, a pipeline's EVALSHA gets NOSCRIPT as its own result (the
    // pipeline does not resend it out of order); the rest run.
    node.send(cmd("SCRIPT").arg("FLUSH")).await.unwrap();
    let mut p = client.pipeline();
    p.invoke(&add, &[key], &[1]).get(key);
    let results = p.execute_each().await;
    match &results[0] {
        Err(Error::Server(e)) => assert_eq!(e.code(), "NOSCRIPT"),
        other => panic!("{other:?}"),
    }
    assert_eq!(results[1].as_ref().unwrap(), &Value::Bulk("16".into()));

    // A transaction sends the source, so it runs where the node lacks the script.
    let mut tx = client.transaction();
    tx.invoke(&add, &[key], &[4]).add(cmd("GET").arg(key));
    assert_eq!(
        tx.execute().await.unwrap(),
        [Value::Int(20), Value::Bulk("20".into())]
    );

    // With durable writes, a script (it may write) is followed by a WAIT; a read-only
    // one is not.
    let durable = ClusterClient::builder()
        .nodes(local.seeds())
        .durable_writes(Durability::new(1, Duration::from_secs(5)))
        .build()
        .await
        .unwrap();
    let waits = calls(&local, owner, "wait").await;
    let n: i64 = durable.invoke(&add, &[key], &[1]).await.unwrap();
    assert_eq!(n, 21);
    assert_eq!(calls(&local, owner, "wait").await, waits + 1);
    let get = Script::new("return redis.call('GET', KEYS[1])").read_only();
    let v: String = durable.invoke(&get, &[key], &[0u8; 0]).await.unwrap();
    assert_eq!(v, "21");
    assert_eq!(calls(&local, owner, "wait").await, waits + 1, "no WAIT");
}

/// A script's error reply that reads like a redirect (`redis.error_reply("MOVED ...")`)
/// is the script's reply, on every path a script takes: followed, it would send the
/// script (a write perhaps) to the node it names and repoint the slot for every caller.
/// The server's own redirects of a script are still followed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_error_that_reads_like_a_redirect_is_the_reply() {
    let local = cluster(3, 1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .build()
        .await
        .unwrap();
    let key = "forged:{a}";
    let slot = key_slot(key.as_bytes());
    // A slot of another master than the key's: the forged redirects name it and a
    // third master, so that a redirect followed would be seen (the map, the calls).
    let other = other_master(&local, slot).await;
    let elsewhere = (0..16384u16)
        .find(|&s| client.primary_for_slot(s) == Some(local.node(other).addr()))
        .unwrap();
    let masters = local.masters().await.unwrap();
    let owner = local.master_of_slot(slot).await.unwrap();
    let third = *masters.iter().find(|&&m| m != owner && m != other).unwrap();
    let third_addr = local.node(third).addr();
    let evals_anywhere = || async {
        let mut n = 0;
        for &m in &masters {
            n += calls(&local, m, "eval").await;
        }
        n
    };
    let forged = |text: &str, keys: &[&str]| {
        cmd("EVAL")
            .arg(format!("return redis.error_reply('{text}')"))
            .arg(keys.len())
            .args(keys.iter())
    };
    let texts = [
        format!("MOVED {elsewhere} {third_addr}"),
        format!("ASK {elsewhere} {third_addr}"),
    ];
    let is_forged = |result: &Result<Value, Error>, text: &str| match result {
        Err(Error::Server(e)) => format!("{} {}", e.code(), e.message()) == text,
        _ => false,
    };
    for text in &texts {
        for keys in [&[][..], &[key][..]] {
            let before = evals_anywhere().await;
            let result = client.query::<Value>(forged(text, keys)).await;
            assert!(is_forged(&result, text), "{text} {keys:?}: {result:?}");
            assert_eq!(evals_anywhere().await, before + 1, "{text}: sent once");
            assert_eq!(
                client.primary_for_slot(elsewhere),
                Some(local.node(other).addr()),
                "{text}: the slot it names keeps its owner"
            );
        }
        // In a pipeline: that command's reply, the others run.
        let before = evals_anywhere().await;
        let mut pipe = client.pipeline();
        pipe.add(forged(text, &[key]))
            .add(cmd("SET").arg(key).arg("after"));
        let results = pipe.execute_each().await;
        assert!(is_forged(&results[0], text), "{text}: {results:?}");
        assert!(
            matches!(&results[1], Ok(Value::Simple(ok)) if &ok[..] == b"OK"),
            "{results:?}"
        );
        assert_eq!(evals_anywhere().await, before + 1, "{text}: sent once");
        assert_eq!(
            client.primary_for_slot(elsewhere),
            Some(local.node(other).addr())
        );
        // A durable write (a dedicated connection, `WAIT` after it).
        let before = evals_anywhere().await;
        let wait = Durability::new(1, Duration::from_secs(5));
        let result = client
            .query_durable::<Value>(forged(text, &[key]), wait)
            .await
            .map(|(reply, _acked)| reply);
        assert!(is_forged(&result, text), "{text} durable: {result:?}");
        assert_eq!(evals_anywhere().await, before + 1, "{text}: sent once");
        assert_eq!(
            client.primary_for_slot(elsewhere),
            Some(local.node(other).addr())
        );
    }

    // The server's own redirect of a script is followed: the key's slot moved to
    // another master, and the client has not heard.
    local.move_slot(slot, other).await.unwrap();
    let set = cmd("EVAL")
        .arg("return redis.call('SET', KEYS[1], ARGV[1])")
        .arg(1)
        .arg(key)
        .arg("moved");
    assert_eq!(client.query::<String>(set).await.unwrap(), "OK");
    assert_eq!(
        client.primary_for_slot(slot),
        Some(local.node(other).addr())
    );
    let v: Option<String> = client.get(key).await.unwrap();
    assert_eq!(v.as_deref(), Some("moved"));
}

/// A redirect naming the slot of the command's own keys but an address no node of the
/// cluster lists (a script's `redis.error_reply`, here, or a confused node) is not
/// followed: the client would hand its credentials and the command to whatever listens
/// there. The request fails with `Error::Protocol` on every path a script takes, the
/// script ran once, nothing connected to the address, and the slot keeps its owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_an_address_no_node_lists_is_not_followed() {
    let local = cluster(3, 1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .build()
        .await
        .unwrap();
    // What would answer at the forged address: it must see no connection.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let stranger = listener.local_addr().unwrap().to_string();
    let key = "unlisted:{u}";
    let counter = "unlisted:{u}:runs";
    let slot = key_slot(key.as_bytes());
    let owner = client.primary_for_slot(slot).unwrap();
    let forged = |kind: &str| {
        cmd("EVAL")
            .arg(
                "redis.call('INCR', KEYS[2]) \
                 return redis.error_reply(ARGV[1] .. ' ' .. ARGV[2] .. ' ' .. ARGV[3])",
            )
            .arg(2)
            .arg(key)
            .arg(counter)
            .arg(kind)
            .arg(slot)
            .arg(stranger.as_str())
    };
    let refused = |result: &Result<Value, Error>| match result {
        Err(e @ Error::Protocol(text)) => {
            text.contains(&stranger) && text.contains("does not list") && e.may_have_executed()
        }
        _ => false,
    };
    let mut runs = 0;
    for kind in ["MOVED", "ASK"] {
        let result = client.query::<Value>(forged(kind)).await;
        assert!(refused(&result), "{kind}: {result:?}");
        // Refused again, from what the client remembers.
        let result = client.query::<Value>(forged(kind)).await;
        assert!(refused(&result), "{kind} again: {result:?}");
        // In a pipeline: that command's error; the others run.
        let mut pipe = client.pipeline();
        pipe.add(forged(kind)).add(cmd("SET").arg(key).arg(kind));
        let results = pipe.execute_each().await;
        assert!(refused(&results[0]), "{kind} in a pipeline: {results:?}");
        assert!(
            matches!(&results[1], Ok(Value::Simple(ok)) if &ok[..] == b"OK"),
            "{results:?}"
        );
        // A durable write (a dedicated connection, `WAIT` after it).
        let wait = Durability::new(1, Duration::from_secs(5));
        let result = client
            .query_durable::<Value>(forged(kind), wait)
            .await
            .map(|(reply, _acked)| reply);
        assert!(refused(&result), "{kind} durable: {result:?}");
        runs += 4;
        let ran: i64 = client.query(cmd("GET").arg(counter)).await.unwrap();
        assert_eq!(ran, runs, "{kind}: each sent once");
        assert_eq!(
            client.primary_for_slot(slot).as_deref(),
            Some(owner.as_str())
        );
        assert!(!client.known_nodes().contains(&stranger));
    }
    assert!(
        matches!(listener.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "something connected to the forged address"
    );
    let v: Option<String> = client.get(key).await.unwrap();
    assert_eq!(v.as_deref(), Some("ASK"));
}

/// A script that writes and then returns a `NOSCRIPT` error of its own ran: it is that
/// reply, not sent again by its source as the server's own `NOSCRIPT` is (it ran twice).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_whose_own_error_reads_noscript_runs_once() {
    let local = cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let key = "noscript:{n}";
    let forger = Script::new(
        "redis.call('INCR', KEYS[1]) return redis.error_reply('NOSCRIPT forged by the script')",
    );
    for run in 1..=2i64 {
        // The first run meets the server's own NOSCRIPT and sends the source; the second
        // finds the script loaded.
        let err = client
            .invoke::<_, u8, Value>(&forger, &[key], &[])
            .await
            .unwrap_err();
        assert_eq!(err.server_code(), Some("NOSCRIPT"), "{err:?}");
        let runs: i64 = client.query(cmd("GET").arg(key)).await.unwrap();
        assert_eq!(runs, run, "the script ran once per call");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_only_scripts_are_served_by_replicas_and_may_not_write() {
    let local = cluster(3, 1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::Replica)
        .build()
        .await
        .unwrap();
    let key = "script:{ro}:name";
    let owner = support::owner_index(&local, &client, key);
    let replica = local.replicas_of(owner).await.unwrap()[0];
    // Written with one replica's acknowledgement, so the replica has it when read.
    support::set_on_a_replica(&client, key, "Ada").await;

    let get = Script::new("return redis.call('GET', KEYS[1])").read_only();
    let name: Option<String> = client.invoke(&get, &[key], &[0u8; 0]).await.unwrap();
    assert_eq!(name.as_deref(), Some("Ada"));
    let name: Option<String> = client.invoke(&get, &[key], &[0u8; 0]).await.unwrap();
    assert_eq!(name.as_deref(), Some("Ada"));
    assert_eq!(calls(&local, replica, "eval_ro").await, 1, "source once");
    assert_eq!(calls(&local, replica, "evalsha_ro").await, 2);
    assert_eq!(
        calls(&local, owner, "evalsha_ro").await,
        0,
        "none on the primary"
    );
    assert_eq!(calls(&local, owner, "eval_ro").await, 0);

    // The server refuses a write from a read-only script; the value stays.
    let sneaky = Script::new("return redis.call('SET', KEYS[1], 'Grace')").read_only();
    match client.invoke::<_, u8, Value>(&sneaky, &[key], &[]).await {
        Err(Error::Server(_)) => {}
        other => panic!("{other:?}"),
    }
    let direct = local.connect_node(owner).await.unwrap();
    assert_eq!(
        direct.send(cmd("GET").arg(key)).await.unwrap(),
        Value::Bulk("Ada".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn moved_slot_under_traffic_loses_no_request_and_follows_ask_and_moved() {
    let local = cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let slot = key_slot(b"migrating");
    // 32 writers x 7 keys each: no two writers share a key.
    let keys: Vec<String> = (0..224).map(|n| key_in_slot(slot, n)).collect();
    for k in &keys {
        client.set(k.as_str(), 0).await.unwrap();
    }
    let to = other_master(&local, slot).await;

    // 32 writers each own some keys and record the last value acknowledged.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let acked: Arc<Vec<AtomicU64>> = Arc::new((0..keys.len()).map(|_| AtomicU64::new(0)).collect());
    let keys = Arc::new(keys);
    let mut tasks = Vec::new();
    for t in 0..32usize {
        let (client, stop, acked, keys) =
            (client.clone(), stop.clone(), acked.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut ops = 0u64;
            let mut n = 1u64;
            // Bounded: stops when told, or after 20 000 operations at most.
            while !stop.load(Ordering::Relaxed) && ops < 20_000 {
                let i = (t + 32 * (n as usize % 7)) % keys.len();
                client
                    .set(keys[i].as_str(), n)
                    .await
                    .map_err(|e| format!("SET {}: {e}", keys[i]))?;
                acked[i].store(n, Ordering::Relaxed);
                let read: u64 = client
                    .get(keys[i].as_str())
                    .await
                    .map_err(|e| format!("GET {}: {e}", keys[i]))?;
                if read != n {
                    return Err(format!("read {read}, wrote {n}"));
                }
                n += 1;
                ops += 2;
            }
            Ok::<u64, String>(ops)
        }));
    }
    local.move_slot(slot, to).await.unwrap();
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap().unwrap();
    }
    assert!(total > 0);
    assert_eq!(local.master_of_slot(slot).await.unwrap(), to);
    for (i, k) in keys.iter().enumerate() {
        let last = acked[i].load(Ordering::Relaxed);
        if last > 0 {
            let v: u64 = client.get(k.as_str()).await.unwrap();
            assert_eq!(v, last, "{k} holds the last acknowledged write");
        }
    }
    let stats = client.stats();
    println!("slot move under traffic: {total} requests, {stats:?}");
    assert!(stats.moved > 0, "MOVED followed: {stats:?}");
    assert!(stats.ask > 0, "ASK followed: {stats:?}");
}

/// Nodes set to prefer host names that have none report their endpoint as `?`, in
/// `CLUSTER SHARDS` and in `MOVED`: the client finds them at their `ip`, and never
/// dials a host named `?`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_prefer_host_names_they_lack_are_reached_at_their_ip() {
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .config("cluster-preferred-endpoint-type", "hostname")
        .start()
        .await
        .unwrap();
    let probe = local.connect_node(0).await.unwrap();
    let shards = probe.send(cmd("CLUSTER").arg("SHARDS")).await.unwrap();
    assert!(format!("{shards:?}").contains("\"?\""), "{shards:?}");
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let key = "ep:{a}";
    client.set(key, "v").await.unwrap();
    let slot = key_slot(key.as_bytes());
    let to = other_master(&local, slot).await;
    local.move_slot(slot, to).await.unwrap();
    // The next request meets `MOVED <slot> ?:<port>`.
    assert_eq!(
        client
            .get::<_, Option<String>>(key)
            .await
            .unwrap()
            .as_deref(),
        Some("v")
    );
    assert_eq!(
        client.node_for_key(key.as_bytes()).as_deref(),
        Some(local.node_addr(to).as_str())
    );
    let nodes: Vec<String> = client
        .health()
        .nodes
        .iter()
        .map(|n| n.addr.clone())
        .collect();
    assert!(nodes.iter().all(|n| !n.starts_with('?')), "{nodes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_moved_replies_causes_few_refreshes() {
    let local = cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .refresh_min_interval(Duration::from_millis(200))
        .build()
        .await
        .unwrap();
    let slot = key_slot(b"burst");
    let keys: Vec<String> = (0..2000).map(|n| key_in_slot(slot, n % 50)).collect();
    client.set(keys[0].as_str(), "x").await.unwrap();
    let to = other_master(&local, slot).await;
    local.move_slot(slot, to).await.unwrap();
    let before = client.stats();
    let reads = keys
        .iter()
        .map(|k| client.get::<_, Option<String>>(k.as_str()));
    for r in futures_util::future::join_all(reads).await {
        r.unwrap();
    }
    // Wait for the refresh the MOVED asked for, rather than guessing how long it takes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.stats().refreshes == before.refreshes {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no refresh after the MOVED replies"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // What is bounded is a rate: a refresh every `refresh_min_interval` would pass a
    // check made at the first one. Five intervals more give such a storm time to show.
    tokio::time::sleep(Duration::from_millis(5 * 200)).await;
    let after = client.stats();
    println!("2000 reads after a slot move: {before:?} {after:?}");
    assert!(after.moved > before.moved);
    let refreshes = after.refreshes - before.refreshes;
    assert!((1..=3).contains(&refreshes), "{refreshes} refreshes");
}

/// The longest a writer of [`Traffic`] runs: far more than any test needs, so that a
/// test that never stops its writers fails instead of hanging.
const TRAFFIC_CAP: Duration = Duration::from_secs(120);

/// Writers for the tests "under traffic": 32 tasks, each SETting and GETting keys of its
/// own (`key(task, n)` for its `n`th round trip) and checking it reads what it wrote,
/// until stopped. The first failure ends a writer with its error.
struct Traffic {
    stop: Arc<std::sync::atomic::AtomicBool>,
    round_trips: Arc<AtomicU64>,
    tasks: Vec<tokio::task::JoinHandle<Result<u64, String>>>,
}

impl Traffic {
    fn start(
        client: &ClusterClient,
        key: impl Fn(usize, u64) -> String + Send + Sync + 'static,
    ) -> Self {
        let key = Arc::new(key);
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let round_trips = Arc::new(AtomicU64::new(0));
        let tasks = (0..32)
            .map(|t| {
                let (client, stop, round_trips, key) = (
                    client.clone(),
                    stop.clone(),
                    round_trips.clone(),
                    key.clone(),
                );
                tokio::spawn(async move {
                    let started = tokio::time::Instant::now();
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        if started.elapsed() > TRAFFIC_CAP {
                            return Err(format!("still writing after {TRAFFIC_CAP:?}"));
                        }
                        let key = key(t, n);
                        client
                            .set(key.as_str(), n)
                            .await
                            .map_err(|e| format!("SET {key}: {e}"))?;
                        let read: u64 = client
                            .get(key.as_str())
                            .await
                            .map_err(|e| format!("GET {key}: {e}"))?;
                        if read != n {
                            return Err(format!("{key}: read {read}, wrote {n}"));
                        }
                        n += 1;
                        round_trips.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(n)
                })
            })
            .collect();
        Self {
            stop,
            round_trips,
            tasks,
        }
    }

    /// Waits until the writers have made `n` more round trips, within 10 s; panics,
    /// with its error, if a writer has ended meanwhile.
    async fn advance(&mut self, n: u64, when: &str) {
        let target = self.round_trips.load(Ordering::Relaxed) + n;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.round_trips.load(Ordering::Relaxed) < target {
            self.assert_running(when).await;
            assert!(
                tokio::time::Instant::now() < deadline,
                "no traffic {when}: {} round trips short",
                target - self.round_trips.load(Ordering::Relaxed)
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.assert_running(when).await;
    }

    /// Panics, with its error, if a writer has ended.
    async fn assert_running(&mut self, when: &str) {
        for task in &mut self.tasks {
            if task.is_finished() {
                panic!("a writer ended {when}: {:?}", task.await);
            }
        }
    }

    /// Stops the writers; the round trips they made, or the first one's error.
    async fn finish(self) -> Result<u64, String> {
        self.stop.store(true, Ordering::Relaxed);
        let mut total = 0;
        for task in self.tasks {
            total += task.await.unwrap()?;
        }
        Ok(total)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_failover_under_traffic_fails_no_request() {
    let local = cluster(3, 1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let mut traffic = Traffic::start(&client, |t, n| format!("fo:{t}:{}", n % 16));
    traffic.advance(500, "before the failover").await;
    let moved_before = client.stats().moved;
    let slot = key_slot(b"fo:0:0");
    let master = local.master_of_slot(slot).await.unwrap();
    let replica = local.replicas_of(master).await.unwrap()[0];
    local
        .failover(replica, FailoverMode::Graceful)
        .await
        .unwrap();
    assert_eq!(local.master_of_slot(slot).await.unwrap(), replica);
    // The writers were at it all along, and met the switch: the demoted primary
    // redirected some of their requests.
    traffic.assert_running("during the failover").await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.stats().moved == moved_before {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request was redirected by the failover: {:?}",
            client.stats()
        );
        traffic.assert_running("after the failover").await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    traffic.advance(500, "after the failover").await;
    let total = traffic.finish().await.unwrap();
    println!(
        "manual failover under traffic: {total} writes, {:?}",
        client.stats()
    );
    // A MOVED for another of the demoted primary's slots may have come first: then the
    // refresh it asked for brings this slot's new primary.
    let new_primary = local.node_addr(replica);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.primary_for_slot(slot).as_deref() != Some(new_primary.as_str()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the client still routes slot {slot} to {:?}",
            client.primary_for_slot(slot)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_announced_by_unresolvable_names_are_reached_through_the_remap() {
    let local = cluster(3, 0).await;
    let remap =
        support::announce_hostnames(&local, 3, |i| format!("redis-cluster-{i}.invalid")).await;
    let client = ClusterClient::builder()
        .nodes([local.node_addr(0)])
        .address_remap(AddressRemap::from_map(remap.clone()))
        .build()
        .await
        .unwrap();
    // A node given by both its names (announced, and the one the remap maps it to) is
    // asked once at discovery.
    let announced_0 = remap
        .iter()
        .find(|(_, to)| **to == local.node_addr(0))
        .map(|(name, _)| name.clone())
        .unwrap();
    let asked = support::calls(&local, 0, "cluster|shards").await;
    let twice_named = ClusterClient::builder()
        .nodes([local.node_addr(0), announced_0])
        .address_remap(AddressRemap::from_map(remap))
        .build()
        .await
        .unwrap();
    assert_eq!(support::calls(&local, 0, "cluster|shards").await, asked + 1);
    drop(twice_named);
    let mut known = client.known_nodes();
    known.sort();
    let mut expected: Vec<String> = (0..3).map(|i| local.node_addr(i)).collect();
    expected.sort();
    assert_eq!(known, expected);
    for i in 0..100 {
        client.set(format!("remap:{i}"), i).await.unwrap();
    }
    let mut connected = client.connected_nodes();
    connected.sort();
    assert_eq!(
        connected, expected,
        "every node was reached at its remapped address"
    );
}

/// Every item of a scan, or the rest of one begun: a scan that never ends (a cursor
/// that cycles, a rescan that repeats) fails the test after `most` items or 30 s
/// instead of hanging it.
async fn drain<S: futures_util::Stream>(scan: S, most: usize) -> Vec<S::Item> {
    use futures_util::StreamExt;
    let items = tokio::time::timeout(Duration::from_secs(30), scan.take(most + 1).collect())
        .await
        .expect("the scan ended within 30 s");
    let items: Vec<S::Item> = items;
    assert!(items.len() <= most, "the scan went past {most} items");
    items
}

/// The keys a cluster-wide scan returns, each once, sorted; panics on a scan error.
async fn scanned(client: &ClusterClient, options: redcluster::ScanOptions) -> Vec<String> {
    let keys = drain(client.scan(options), 100_000).await;
    sorted(
        keys.into_iter()
            .map(|k| String::from_utf8(k.unwrap().to_vec()).unwrap())
            .collect(),
    )
}

fn sorted(mut keys: Vec<String>) -> Vec<String> {
    keys.sort();
    keys.dedup();
    keys
}

/// A scan whose task died with the runtime it ran on (made on one runtime, read on
/// another) ends with an error, not as if it had covered every slot: the stream just
/// ended, and the caller took the keys it saw (none here) for all there were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_whose_runtime_shut_down_ends_with_an_error() {
    let local = cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    for i in 0..10 {
        client.set(format!("gone:{i}"), i).await.unwrap();
    }
    let made = client.clone();
    let scan = std::thread::spawn(move || {
        let other = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // Its task is spawned there and never runs: the runtime shuts down with the
        // thread.
        other.block_on(async { made.scan(redcluster::ScanOptions::default()) })
    })
    .join()
    .unwrap();
    let items = drain(scan, 100).await;
    assert!(
        matches!(items.last(), Some(Err(Error::ClusterDown(_)))),
        "{items:?}"
    );
    // The same client's scans on this runtime are whole.
    assert_eq!(
        scanned(
            &client,
            redcluster::ScanOptions::default().pattern("gone:*")
        )
        .await
        .len(),
        10
    );
}

/// A dropped scan stops at once, not after the request under way: with a response
/// timeout without end and a node that never answers its `SCAN`, the scan's task held
/// the client, whose connections stayed open after it and the client were dropped. A
/// scripted node: it reads the `SCAN` and never answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_scan_lets_the_client_go_while_a_node_does_not_answer() {
    use futures_util::StreamExt;
    use support::fake_cluster::{lone_shard, Action, FakeCluster};
    // The node's own word on its slots, which the scan asks before scanning them.
    let nodes = |port: u16| {
        Value::Bulk(
            format!("{port:0>40} 127.0.0.1:{port}@1 myself,master - 0 0 1 connected 0-16383\n")
                .into(),
        )
    };
    let fake = FakeCluster::start_with_shards_after(
        lone_shard,
        nodes,
        |_| Duration::ZERO,
        |args, _| match args[0].as_str() {
            "SCAN" => Action::Silent,
            _ => Action::Reply(Value::Simple("OK".into())),
        },
    )
    .await;
    let client = ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        .response_timeout(Duration::MAX)
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let mut scan = client.scan(redcluster::ScanOptions::default());
    let waited = tokio::time::timeout(Duration::from_millis(300), scan.next()).await;
    assert!(waited.is_err(), "the node answered: {waited:?}");
    assert!(fake.count("SCAN") >= 1, "{:?}", fake.seen());
    drop(scan);
    drop(client);
    fake.wait_until_all_closed(Duration::from_secs(5)).await;
}

/// A `refresh_topology()` given up by its caller stops: it runs on a task of its own,
/// which, left to finish, held the client (its connections, its tasks) after the last
/// handle was dropped, for as long as a node that never answers `CLUSTER SHARDS` took
/// (5 s per answer). A scripted node that stalls every view after the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refresh_given_up_lets_the_client_go() {
    use support::fake_cluster::{lone_shard, Action, FakeCluster};
    let fake = FakeCluster::start_with_shards_after(
        lone_shard,
        |_own| Value::ServerError(redcluster::ServerError::new("ERR unknown")),
        |n| {
            if n == 0 {
                Duration::ZERO
            } else {
                Duration::from_secs(30)
            }
        },
        |_, _| Action::Reply(Value::Simple("OK".into())),
    )
    .await;
    let client = ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        .response_timeout(Duration::from_secs(10))
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    let given_up =
        tokio::time::timeout(Duration::from_millis(300), client.refresh_topology()).await;
    assert!(given_up.is_err(), "the node answered: {given_up:?}");
    drop(client);
    fake.wait_until_all_closed(Duration::from_secs(2)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_covers_the_cluster_with_match_count_and_type() {
    use redcluster::ScanOptions;
    let local = cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let keys: Vec<String> = (0..1000).map(|i| format!("scan:{i}")).collect();
    client
        .mset(keys.iter().map(|k| (k.as_str(), "v")))
        .await
        .unwrap();
    for i in 0..50 {
        client.hset(format!("scanh:{i}"), "f", "v").await.unwrap();
    }
    let found = scanned(&client, ScanOptions::default().pattern("scan:*").count(100)).await;
    assert_eq!(found, sorted(keys.clone()));
    let hashes = drain(client.scan(ScanOptions::default().key_type("hash")), 1000).await;
    assert_eq!(hashes.len(), 50);
    assert!(hashes
        .iter()
        .all(|k| k.as_ref().unwrap().starts_with(b"scanh:")));
    // An option the server refuses ends the scan at once with the server's error, not
    // after passes that could only be refused again.
    let refused = drain(client.scan(ScanOptions::default().count(0)), 10).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(matches!(&refused[0], Err(Error::Server(_))), "{refused:?}");
    // So does a `SCAN` the client itself refuses (disabled in its `CommandRenames`).
    let no_scan = ClusterClient::builder()
        .nodes(local.seeds())
        .rename_command("SCAN", "")
        .build()
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let refused = drain(no_scan.scan(ScanOptions::default()), 10).await;
    assert_eq!(refused.len(), 1, "{refused:?}");
    assert!(matches!(&refused[0], Err(Error::Config(_))), "{refused:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scan_whose_pattern_pins_a_hash_tag_asks_only_that_slots_owner() {
    use redcluster::ScanOptions;
    let local = cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let tagged: Vec<String> = (0..200).map(|i| format!("u:{{42}}:{i}")).collect();
    client
        .mset(tagged.iter().map(|k| (k.as_str(), "v")))
        .await
        .unwrap();
    // Keys of other tags, on every primary, that the pattern does not match.
    for i in (0..200).filter(|&i| i != 42) {
        client.set(format!("u:{{{i}}}:x"), "v").await.unwrap();
    }
    let owner = support::owner_index(&local, &client, "u:{42}:0");
    let masters = local.masters().await.unwrap();
    let mut scans_before = Vec::new();
    for &m in &masters {
        scans_before.push(calls(&local, m, "scan").await);
    }
    let found = scanned(
        &client,
        ScanOptions::default().pattern("u:{42}:*").count(50),
    )
    .await;
    assert_eq!(found, sorted(tagged));
    for (&m, before) in masters.iter().zip(scans_before) {
        let scans = calls(&local, m, "scan").await - before;
        if m == owner {
            assert!(scans > 0, "the owner was scanned");
        } else {
            assert_eq!(scans, 0, "node {m} holds no key of the pattern's slot");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scan_misses_no_key_of_a_primary_restarted_part_way() {
    use futures_util::StreamExt;
    use redcluster::ScanOptions;
    // No replica: the restarted primary keeps its slots and epoch, and its keys (AOF).
    let local = LocalCluster::builder()
        .replicas_per_master(0)
        .config("appendonly", "yes")
        .config("appendfsync", "always")
        .start()
        .await
        .unwrap();
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    // Every key on one master, many more than the stream buffers (1024): once the test
    // has read a key, the scan is part way through this master.
    let master = local.master_of_slot(key_slot(b"sr:0")).await.unwrap();
    let master_addr = local.node_addr(master);
    let keys: Vec<String> = (0u32..100_000)
        .map(|i| format!("sr:{i}"))
        .filter(|k| {
            client.primary_for_slot(key_slot(k.as_bytes())).as_deref() == Some(master_addr.as_str())
        })
        .take(6000)
        .collect();
    assert_eq!(keys.len(), 6000);
    client
        .mset(keys.iter().map(|k| (k.as_str(), "v")))
        .await
        .unwrap();
    let mut scan = client.scan(ScanOptions::default().pattern("sr:*").count(10));
    let mut found: HashSet<Vec<u8>> = HashSet::new();
    for _ in 0..100 {
        found.insert(scan.next().await.unwrap().unwrap().to_vec());
    }
    // The next page's cursor belongs to the process that is gone.
    local.restart(master).await.unwrap();
    for key in drain(&mut scan, 60_000).await {
        found.insert(key.unwrap().to_vec());
    }
    local
        .wait_until_stable(Duration::from_secs(20))
        .await
        .unwrap();
    let kept: i64 = client
        .exists(keys.iter().map(String::as_str))
        .await
        .unwrap();
    assert_eq!(kept, 6000, "the restarted primary kept its keys");
    let missed: Vec<&String> = keys
        .iter()
        .filter(|k| !found.contains(k.as_bytes()))
        .collect();
    assert!(
        missed.is_empty(),
        "{} keys missed: {:?}",
        missed.len(),
        &missed[..missed.len().min(5)]
    );
}

/// Nodes list shards in their own order; a refresh that asks other nodes than the last
/// one sees the same topology and must not install it again. Seen through the client's
/// `DEBUG` events, on a current-thread runtime so that its tasks log on this thread.
#[test]
fn refreshes_of_an_unchanged_cluster_change_nothing() {
    let (capture, _subscriber) = support::capture::capture_debug_events();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let local = cluster(3, 1).await;
        let client = ClusterClient::connect(local.seeds()).await.unwrap();
        for _ in 0..30 {
            client.refresh_topology().await.unwrap();
        }
        let lines = capture.lines();
        let refreshed = lines
            .iter()
            .filter(|l| l.contains("topology"))
            .cloned()
            .collect::<Vec<_>>();
        assert!(
            refreshed.iter().any(|l| l.contains("topology discovered")),
            "{refreshed:#?}"
        );
        let reinstalled: Vec<&String> = refreshed
            .iter()
            .filter(|l| l.contains("topology updated"))
            .collect();
        assert!(reinstalled.is_empty(), "{reinstalled:#?}");
    });
}

/// The scan's rescan path is seen through its `DEBUG` event, captured by a subscriber of
/// this thread: the client runs on a current-thread runtime so that the scan's task runs
/// here too.
#[test]
fn scan_survives_a_failover_and_a_slot_move_part_way() {
    use futures_util::StreamExt;
    use redcluster::ScanOptions;
    let (capture, _subscriber) = support::capture::capture_debug_events();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let local = cluster(3, 1).await;
        let client = ClusterClient::builder()
            .nodes(local.seeds())
            .response_timeout(Duration::from_secs(10))
            .build()
            .await
            .unwrap();
        // Every key on one master, many more than the stream buffers (1024): whichever
        // order the scan takes the masters in, once the test has read a key the scan
        // has begun on this one, and it cannot end before the test reads on.
        let master = local.master_of_slot(key_slot(b"sv:0")).await.unwrap();
        let master_addr = local.node_addr(master);
        let on_master = |key: &String| {
            client.primary_for_slot(key_slot(key.as_bytes())).as_deref()
                == Some(master_addr.as_str())
        };
        let keys: Vec<String> = (0u32..100_000)
            .map(|i| format!("sv:{i}"))
            .filter(on_master)
            .take(3000)
            .collect();
        assert_eq!(keys.len(), 3000);
        let master_slots = (0..redcluster::SLOT_COUNT)
            .filter(|&s| client.primary_for_slot(s).as_deref() == Some(master_addr.as_str()))
            .count();
        client
            .mset(keys.iter().map(|k| (k.as_str(), "v")))
            .await
            .unwrap();
        let rescans = |lines: &[String]| -> Vec<String> {
            lines
                .iter()
                .filter(|l| l.contains("will rescan"))
                .cloned()
                .collect()
        };

        // Undisturbed, the scan covers every slot in one pass.
        let found = drain(client.scan(ScanOptions::default().count(5)), 30_000).await;
        let found: std::collections::HashSet<_> = found.into_iter().map(Result::unwrap).collect();
        assert_eq!(found.len(), keys.len());
        assert_eq!(rescans(&capture.lines()), Vec::<String>::new());

        // A small COUNT makes many round trips; the stream's buffer stops the scan
        // part-way through the master until the test reads on.
        let mut scan = client.scan(ScanOptions::default().count(5));
        let mut seen = std::collections::HashSet::new();
        for _ in 0..100 {
            let key = scan.next().await.unwrap().unwrap();
            seen.insert(key);
        }
        let replica = local.replicas_of(master).await.unwrap()[0];
        local
            .failover(replica, FailoverMode::Graceful)
            .await
            .unwrap();
        let other = master_other_than(&local, replica).await;
        local
            .move_slot(key_slot(keys[1].as_bytes()), other)
            .await
            .unwrap();
        for key in drain(&mut scan, 30_000).await {
            seen.insert(key.unwrap());
        }
        let missing: Vec<&String> = keys
            .iter()
            .filter(|k| !seen.contains(k.as_bytes()))
            .collect();
        assert!(
            missing.is_empty(),
            "{} keys missed, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(5)]
        );
        // The old master, a replica when its scan ended, no longer held its slots: all
        // of them were scanned again, on their new owners.
        let rescans = rescans(&capture.lines());
        let expected = [
            r#""message":"slots of a node changed during its scan; will rescan them""#.to_owned(),
            format!(r#""node":"{master_addr}""#),
            format!(r#""slots":{master_slots}"#),
        ];
        assert!(
            rescans
                .iter()
                .any(|l| expected.iter().all(|part| l.contains(part.as_str()))),
            "no rescan of {master_addr}'s {master_slots} slots: {rescans:#?}"
        );
    });
}

/// Commands for every primary reach one that serves no slot yet: a master being filled
/// by a migration already holds keys (`DBSIZE` counts them, `FLUSHALL` deletes them),
/// and a function loaded while it is empty must be there when its first slot arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_for_every_primary_reach_a_master_that_serves_no_slot_yet() {
    let local = cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let keys: Vec<String> = (0..20).map(|i| format!("filling:{{m}}:{i}")).collect();
    for key in &keys {
        client.set(key.as_str(), "v").await.unwrap();
    }
    let slot = key_slot(b"{m}");
    let added = local.add_master().await.unwrap();
    client.refresh_topology().await.unwrap();
    let migration = local.begin_slot_migration(slot, added).await.unwrap();
    assert_eq!(local.migrate_keys_batch(&migration, 10).await.unwrap(), 10);
    // The slot is still the source's: 10 keys there, 10 on the new master.
    let dbsize: i64 = client.query(cmd("DBSIZE")).await.unwrap();
    assert_eq!(dbsize, 20);
    let library = "#!lua name=fillinglib\n\
                   redis.register_function('filling_get', function(keys) \
                   return redis.call('GET', keys[1]) end)";
    let _: Value = client
        .query(cmd("FUNCTION").arg("LOAD").arg(library))
        .await
        .unwrap();
    let _: Value = client.query(cmd("FLUSHALL")).await.unwrap();
    local.finish_slot_migration(migration).await.unwrap();
    client.refresh_topology().await.unwrap();
    assert_eq!(
        client
            .exists(keys.iter().map(String::as_str))
            .await
            .unwrap(),
        0
    );
    // The new master has the function its first slot's keys are called with.
    client.set(keys[0].as_str(), "after").await.unwrap();
    let got: String = client
        .query(cmd("FCALL").arg("filling_get").arg(1).arg(keys[0].as_str()))
        .await
        .unwrap();
    assert_eq!(got, "after");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_out_and_in_under_traffic_fails_no_request() {
    let local = cluster(3, 0).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(10))
        .refresh_interval(Duration::from_millis(500))
        .build()
        .await
        .unwrap();
    // 16 slots spread over the three masters move to a new master and back.
    let slots: Vec<u16> = (0..16u16).map(|i| i * 1021).collect();
    let keys: Vec<String> = slots
        .iter()
        .flat_map(|&s| (0..4).map(move |n| key_in_slot(s, n)))
        .collect();
    // Each writer owns keys t and t + 32: no two write the same key.
    let mut traffic = Traffic::start(&client, move |t, n| keys[t + 32 * (n as usize % 2)].clone());
    traffic.advance(500, "before the scale-out").await;
    let moved_before = client.stats().moved;
    let new_master = local.add_master().await.unwrap();
    let mut previous = Vec::new();
    for &slot in &slots {
        previous.push(local.master_of_slot(slot).await.unwrap());
        local.move_slot(slot, new_master).await.unwrap();
    }
    let new_addr = local.node_addr(new_master);
    client.refresh_topology().await.unwrap();
    assert!(
        client.known_nodes().contains(&new_addr),
        "the new master is known"
    );
    traffic.advance(500, "after the scale-out").await;
    // Scale in: the new master gives every slot back and leaves the cluster.
    for (&slot, &owner) in slots.iter().zip(&previous) {
        local.move_slot(slot, owner).await.unwrap();
    }
    local.remove_node(new_master).await.unwrap();
    // The periodic refresh notices the node is gone and closes the connection to it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while client.connected_nodes().contains(&new_addr) || client.known_nodes().contains(&new_addr) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "connection to the removed node still open"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    traffic.advance(500, "after the scale-in").await;
    let total = traffic.finish().await.unwrap();
    let stats = client.stats();
    println!("scale out and in under traffic: {total} round trips, {stats:?}");
    // The moves happened under the writers' feet: the old owners redirected some of
    // their requests.
    assert!(stats.moved > moved_before, "{stats:?}");
}

/// A client, and the slot of `{ta}` half migrated: 5 of its 10 keys on each node, so
/// the source answers multi-key commands with TRYAGAIN until the migration ends.
async fn split_slot(
    local: &LocalCluster,
) -> (
    ClusterClient,
    Vec<String>,
    redcluster::testkit::SlotMigration,
) {
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .response_timeout(Duration::from_secs(10))
        .build()
        .await
        .unwrap();
    let slot = key_slot(b"{ta}");
    let keys: Vec<String> = (0..10).map(|i| format!("{{ta}}:{i}")).collect();
    client
        .mset(keys.iter().map(|k| (k.as_str(), k.as_str())))
        .await
        .unwrap();
    let to = other_master(local, slot).await;
    let migration = local.begin_slot_migration(slot, to).await.unwrap();
    assert_eq!(local.migrate_keys_batch(&migration, 5).await.unwrap(), 5);
    (client, keys, migration)
}

/// Waits until `client` retried something since `before`.
async fn wait_for_a_retry(client: &ClusterClient, before: redcluster::ClientStats) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while client.stats().retries == before.retries {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no TRYAGAIN was retried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_key_requests_ride_out_tryagain_during_a_migration() {
    let local = cluster(3, 0).await;
    let (client, keys, migration) = split_slot(&local).await;
    // Half the keys are on each node: the server answers TRYAGAIN until the move ends.
    let before = client.stats();
    let mget = {
        let client = client.clone();
        let keys = keys.clone();
        tokio::spawn(async move {
            client
                .mget::<_, Option<String>>(keys.iter().map(String::as_str))
                .await
        })
    };
    wait_for_a_retry(&client, before).await;
    assert!(
        !mget.is_finished(),
        "still retrying while the slot is split"
    );
    local.finish_slot_migration(migration).await.unwrap();
    let values = mget.await.unwrap().unwrap();
    let expected: Vec<Option<String>> = keys.iter().map(|k| Some(k.clone())).collect();
    assert_eq!(values, expected);
}

/// A script refused by the server (`TRYAGAIN` for its keys half migrated: it did not
/// run) is sent again until the migration ends. A refusal the script wrote itself
/// (`redis.error_reply("TRYAGAIN ...")`, after it wrote) is its reply: sent again, it
/// would run again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_rides_out_the_servers_refusals_but_not_its_own() {
    let local = cluster(3, 0).await;
    let (client, keys, migration) = split_slot(&local).await;
    let counted = "{ta}:count";
    let incr_then_refuse = "redis.call('INCR', KEYS[1]) return redis.error_reply(ARGV[1])";
    // Before the migration splits anything for this key: it is on the source.
    let texts = [
        "TRYAGAIN not now",
        "CLUSTERDOWN says the script",
        "LOADING in a while",
        "MASTERDOWN or so",
    ];
    for (i, text) in texts.iter().enumerate() {
        let script = cmd("EVAL")
            .arg(incr_then_refuse)
            .arg(1)
            .arg(counted)
            .arg(*text);
        let r = client.query::<Value>(script).await;
        assert!(
            r.as_ref().is_err_and(|e| e.to_string().contains(text)),
            "{r:?}"
        );
        let n: i64 = client.get(counted).await.unwrap();
        assert_eq!(n, i as i64 + 1, "{text}: the script ran once");
    }
    // A keyless one (any primary runs it) answering `READONLY`, which from the server
    // says it went to a primary a failover demoted and did not run: sent once.
    let masters = local.masters().await.unwrap();
    let evals = || async {
        let mut n = 0;
        for &m in &masters {
            n += calls(&local, m, "eval").await;
        }
        n
    };
    let before = evals().await;
    let text = "READONLY says the script";
    let script = cmd("EVAL")
        .arg(format!("return redis.error_reply('{text}')"))
        .arg(0);
    let r = client.query::<Value>(script).await;
    assert!(
        r.as_ref().is_err_and(|e| e.to_string().contains(text)),
        "{r:?}"
    );
    assert_eq!(evals().await, before + 1, "{text}: sent once");
    // The server's own TRYAGAIN: two keys, one of them moved on.
    let before = client.stats();
    let both = {
        let client = client.clone();
        let (a, b) = (keys[0].clone(), keys[9].clone());
        tokio::spawn(async move {
            let script = cmd("EVAL")
                .arg("return redis.call('MGET', KEYS[1], KEYS[2])")
                .arg(2)
                .arg(a)
                .arg(b);
            client.query::<Vec<String>>(script).await
        })
    };
    wait_for_a_retry(&client, before).await;
    assert!(
        !both.is_finished(),
        "still retrying while the slot is split"
    );
    local.finish_slot_migration(migration).await.unwrap();
    assert_eq!(
        both.await.unwrap().unwrap(),
        [keys[0].clone(), keys[9].clone()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_writes_ride_out_tryagain_during_a_migration() {
    let local = cluster(3, 0).await;
    let (client, keys, migration) = split_slot(&local).await;
    let before = client.stats();
    let write = {
        let client = client.clone();
        let keys = keys.clone();
        tokio::spawn(async move {
            let mset = cmd("MSET").args(keys.iter().flat_map(|k| [k.as_str(), "new"]));
            // No replicas here: WAIT 0 answers at once, the retry path is what is tested.
            let wait = redcluster::Durability::new(0, Duration::from_millis(10));
            client.query_durable::<()>(mset, wait).await
        })
    };
    wait_for_a_retry(&client, before).await;
    assert!(
        !write.is_finished(),
        "still retrying while the slot is split"
    );
    local.finish_slot_migration(migration).await.unwrap();
    let ((), acked) = write.await.unwrap().unwrap();
    assert_eq!(acked, 0);
    let values: Vec<Option<String>> = client.mget(keys.iter().map(String::as_str)).await.unwrap();
    assert!(
        values.iter().all(|v| v.as_deref() == Some("new")),
        "{values:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_node_asks_the_node_named_replicas_included() {
    let local = cluster(3, 1).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let nodes = client.known_nodes();
    assert_eq!(nodes.len(), 6);
    let mut ids = Vec::new();
    for addr in &nodes {
        let id: String = client
            .query_node(addr, cmd("CLUSTER").arg("MYID"))
            .await
            .unwrap();
        // The node that answered is the one at that address.
        assert_eq!(local.index_of_id(&id), local.index_of_addr(addr), "{addr}");
        let role: String = client
            .query_node(addr, cmd("INFO").arg("replication"))
            .await
            .unwrap();
        let replica = local
            .replicas()
            .await
            .unwrap()
            .contains(&local.index_of_addr(addr).unwrap());
        assert_eq!(role.contains("role:slave"), replica, "{addr}: {role}");
        ids.push(id);
    }
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 6);

    // A keyed command on a primary that does not serve the key: the MOVED is followed.
    client.set("qn:{k}", "v").await.unwrap();
    let owner = client.node_for_key(b"qn:{k}").unwrap();
    let other = local
        .masters()
        .await
        .unwrap()
        .into_iter()
        .map(|m| local.node_addr(m))
        .find(|a| *a != owner)
        .unwrap();
    let v: String = client
        .query_node(&other, cmd("GET").arg("qn:{k}"))
        .await
        .unwrap();
    assert_eq!(v, "v");

    // Refused before sending: a stranger, a blocking command, a connection-state one.
    for (addr, command) in [
        ("127.0.0.1:1", cmd("PING")),
        (nodes[0].as_str(), cmd("BLPOP").arg("qn:list").arg(1)),
        (nodes[0].as_str(), cmd("SUBSCRIBE").arg("qn:chan")),
    ] {
        let r = client.query_node::<Value>(addr, command).await;
        assert!(matches!(r, Err(Error::Config(_))), "{addr}: {r:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_helpers_produce_consume_and_acknowledge_over_resp3_and_resp2() {
    let local = cluster(3, 0).await;
    let resp3 = ClusterClient::connect(local.seeds()).await.unwrap();
    let resp2 = ClusterClient::builder()
        .nodes(local.seeds())
        .protocol(redcluster::Protocol::Resp2)
        .build()
        .await
        .unwrap();
    for (name, client) in [("resp3", &resp3), ("resp2", &resp2)] {
        let key = format!("stream:{{{name}}}");
        let key = key.as_str();
        assert!(client.xgroup_create(key, "billing", "0").await.unwrap());
        assert!(
            !client.xgroup_create(key, "billing", "0").await.unwrap(),
            "exists"
        );
        let mut ids = Vec::new();
        for i in 0..3 {
            let amount = i.to_string();
            let id = client
                .xadd(key, [("kind", "paid"), ("amount", amount.as_str())])
                .await
                .unwrap();
            ids.push(id);
        }
        assert_eq!(client.xlen(key).await.unwrap(), 3);
        let all = client.xrange(key, "-", "+", None).await.unwrap();
        assert_eq!(
            all.iter().map(|e| &e.id).collect::<Vec<_>>(),
            ids.iter().collect::<Vec<_>>()
        );
        assert_eq!(all[2].get("amount").map(|v| &v[..]), Some(&b"2"[..]));
        assert_eq!(
            client.xrange(key, "-", "+", Some(1)).await.unwrap().len(),
            1
        );

        // Two consumers share the group's entries: each entry goes to one of them.
        let first = client
            .xreadgroup("billing", "w1", key, 2, None)
            .await
            .unwrap();
        let second = client
            .xreadgroup("billing", "w2", key, 10, Some(Duration::from_millis(100)))
            .await
            .unwrap();
        assert_eq!(first.len() + second.len(), 3, "{first:?} {second:?}");
        assert_eq!(first[0], all[0]);
        // Nothing new: a blocking read waits its time and returns none.
        let started = tokio::time::Instant::now();
        let none = client
            .xreadgroup("billing", "w1", key, 10, Some(Duration::from_millis(200)))
            .await
            .unwrap();
        assert!(none.is_empty());
        assert!(started.elapsed() >= Duration::from_millis(200));
        let delivered: Vec<&String> = first.iter().chain(&second).map(|e| &e.id).collect();
        assert_eq!(
            client
                .xack(key, "billing", delivered.clone())
                .await
                .unwrap(),
            3
        );
        assert_eq!(client.xack(key, "billing", delivered).await.unwrap(), 0);
        let r = client.xreadgroup("nogroup", "w1", key, 1, None).await;
        assert!(
            matches!(&r, Err(e) if e.server_code() == Some("NOGROUP")),
            "{r:?}"
        );
    }
}

/// Servers write a redirect's IPv6 target bare (`MOVED 5 ::1:7000`); the client reads it
/// as the node its topology names (`[::1]:7000`), not as a stranger it cannot dial. (A
/// scripted fake on `[::1]`: the testkit's clusters run on 127.0.0.1.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipv6_redirect_target_is_the_node_the_topology_names() {
    use std::sync::{Arc, OnceLock};
    use support::fake_cluster::{Action, FakeCluster};
    let port: Arc<OnceLock<u16>> = Arc::default();
    let own = Arc::clone(&port);
    let fake = FakeCluster::start_ipv6(move |args, earlier| match (args[0].as_str(), earlier) {
        ("GET", 0) => Action::Reply(Value::ServerError(redcluster::ServerError::new(format!(
            "MOVED {} ::1:{}",
            redcluster::key_slot(b"k"),
            own.get().unwrap()
        )))),
        ("GET", _) => Action::Reply(Value::Bulk("v".into())),
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    port.set(fake.port()).unwrap();
    let client = ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    assert_eq!(client.known_nodes(), vec![fake.addr.clone()]);
    let v: Option<String> = client.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    let stats = client.stats();
    assert_eq!((stats.moved, stats.retries), (1, 0), "{stats:?}");
    assert_eq!(client.known_nodes(), vec![fake.addr.clone()]);
}

/// Two nodes that disagree for a moment (each sends the slot to the other, as around a
/// failover not yet agreed on) cost the request backoffs within its deadline, not
/// every redirect it may follow in a few milliseconds. (Scripted fakes: real nodes
/// agree again too fast to catch them at it. Both list the two of them, `a` the
/// primary: a redirect is followed only to a node the cluster lists.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_that_send_a_slot_to_each_other_are_waited_out_not_bounced_between() {
    use std::sync::{Arc, OnceLock};
    use std::time::Instant;
    use support::fake_cluster::{one_shard, Action, FakeCluster};
    let slot = redcluster::key_slot(b"k");
    let moved = move |to: &OnceLock<String>| {
        Action::Reply(Value::ServerError(redcluster::ServerError::new(format!(
            "MOVED {slot} {}",
            to.get().unwrap()
        ))))
    };
    let (a_addr, b_addr): (Arc<OnceLock<String>>, Arc<OnceLock<String>>) = Default::default();
    let port = |addr: &OnceLock<String>| -> u16 {
        addr.get()
            .unwrap()
            .rsplit_once(':')
            .unwrap()
            .1
            .parse()
            .unwrap()
    };
    let view = |a: Arc<OnceLock<String>>, b: Arc<OnceLock<String>>| {
        move |_own: u16| one_shard(port(&a), port(&b), false)
    };
    let no_epochs = |_own: u16| Value::ServerError(redcluster::ServerError::new("ERR unknown"));
    let first_get: Arc<OnceLock<Instant>> = Arc::default();
    let (to_b, since) = (Arc::clone(&b_addr), Arc::clone(&first_get));
    let a = FakeCluster::start_with_shards_after(
        view(Arc::clone(&a_addr), Arc::clone(&b_addr)),
        no_epochs,
        |_| Duration::ZERO,
        move |args, _| match args[0].as_str() {
            "GET" if since.get_or_init(Instant::now).elapsed() < Duration::from_millis(300) => {
                moved(&to_b)
            }
            "GET" => Action::Reply(Value::Bulk("v".into())),
            _ => Action::Reply(Value::Simple("OK".into())),
        },
    )
    .await;
    let to_a = Arc::clone(&a_addr);
    let b = FakeCluster::start_with_shards_after(
        view(Arc::clone(&a_addr), Arc::clone(&b_addr)),
        no_epochs,
        |_| Duration::ZERO,
        move |args, _| match args[0].as_str() {
            "GET" => moved(&to_a),
            _ => Action::Reply(Value::Simple("OK".into())),
        },
    )
    .await;
    a_addr.set(a.addr.clone()).unwrap();
    b_addr.set(b.addr.clone()).unwrap();
    let client = ClusterClient::builder()
        .nodes([a.addr.as_str()])
        .retry_backoff(Duration::from_millis(30), Duration::from_millis(100))
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    // Bounced through its 16 redirects in a few milliseconds, it would have failed
    // with `TooManyRedirects` long before `a` gives in (300 ms); it waited instead.
    let v: Option<String> = client.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    assert!(client.stats().retries >= 1, "{:?}", client.stats());
}

/// A redirect to a node the refresh's view lacks is followed once the redirecting
/// node's own view lists it (a node that joined a moment ago: the view a refresh
/// chooses may come from nodes that have not heard yet). Scripted: `a` lists only
/// itself until its second `CLUSTER SHARDS` (the refresh the redirect asks for) has
/// been answered, then `b` beside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_a_node_only_the_redirecting_node_lists_is_followed() {
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, OnceLock};
    use support::fake_cluster::{lone_shard, one_shard, Action, FakeCluster};
    let a_port: Arc<OnceLock<u16>> = Arc::default();
    let of_a = Arc::clone(&a_port);
    let b = FakeCluster::start_with_shards_after(
        move |own: u16| one_shard(*of_a.get().unwrap(), own, false),
        |_own: u16| Value::ServerError(redcluster::ServerError::new("ERR unknown")),
        |_| Duration::ZERO,
        |args, _| match args[0].as_str() {
            "GET" => Action::Reply(Value::Bulk("v".into())),
            _ => Action::Reply(Value::Simple("OK".into())),
        },
    )
    .await;
    let b_port = b.port();
    let joined = Arc::new(AtomicBool::new(false));
    let (seen, learns) = (Arc::clone(&joined), Arc::clone(&joined));
    let to_b = b.addr.clone();
    let slot = key_slot(b"k");
    let a = FakeCluster::start_with_shards_after(
        move |own: u16| {
            if seen.load(Ordering::SeqCst) {
                one_shard(own, b_port, false)
            } else {
                lone_shard(own)
            }
        },
        |_own: u16| Value::ServerError(redcluster::ServerError::new("ERR unknown")),
        move |asked_before: usize| {
            if asked_before == 1 {
                learns.store(true, Ordering::SeqCst);
            }
            Duration::ZERO
        },
        move |args, earlier| match (args[0].as_str(), earlier) {
            ("GET", 0) => Action::Reply(Value::ServerError(redcluster::ServerError::new(format!(
                "MOVED {slot} {to_b}"
            )))),
            _ => Action::Reply(Value::Simple("OK".into())),
        },
    )
    .await;
    a_port.set(a.port()).unwrap();
    let client = ClusterClient::builder()
        .nodes([a.addr.as_str()])
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    assert_eq!(client.known_nodes(), vec![a.addr.clone()]);
    let v: Option<String> = client.get("k").await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    // Discovery, the refresh that did not name `b`, the question that did.
    let shards = a.seen().iter().filter(|c| *c == "CLUSTER SHARDS").count();
    assert!(
        joined.load(Ordering::SeqCst) && shards >= 3,
        "{:?}",
        a.seen()
    );
    assert_eq!(b.count("GET"), 1);
}

/// Commands the client sends itself (`READONLY`, `READWRITE`, `ASKING`) are refused from
/// callers: `READWRITE` on a replica's shared connection would send every later replica
/// read back to the primary as a `MOVED`. A raw `SCAN` through `query` is refused too:
/// each call could go to another primary, with the last one's cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_the_client_sends_itself_and_raw_scan_are_refused() {
    let local = cluster(3, 1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::Replica)
        .build()
        .await
        .unwrap();
    let key = "managed:{rw}:k";
    support::set_on_a_replica(&client, key, "v").await;
    let owner = support::owner_index(&local, &client, key);
    let replica = local.node_addr(local.replicas_of(owner).await.unwrap()[0]);
    let v: Option<String> = client.get(key).await.unwrap();
    assert_eq!(v.as_deref(), Some("v"));
    for c in [cmd("READWRITE"), cmd("readonly"), cmd("Asking")] {
        let refused = client.query_node::<Value>(&replica, c.clone()).await;
        assert!(
            matches!(refused, Err(Error::Config(_))),
            "{c:?}: {refused:?}"
        );
        let refused = client.query::<Value>(c.clone()).await;
        assert!(
            matches!(refused, Err(Error::Config(_))),
            "{c:?}: {refused:?}"
        );
    }
    // The replica's connection still reads: no MOVED back to the primary.
    let moved = client.stats().moved;
    for _ in 0..10 {
        let v: Option<String> = client.get(key).await.unwrap();
        assert_eq!(v.as_deref(), Some("v"));
    }
    assert_eq!(client.stats().moved, moved);

    let scan = client.query::<Value>(cmd("SCAN").arg(0)).await;
    assert!(matches!(scan, Err(Error::Config(_))), "{scan:?}");
    // One node's SCAN goes to the node named.
    let primary = local.node_addr(owner);
    let page: (String, Vec<String>) = client
        .query_node(&primary, cmd("SCAN").arg(0).arg("COUNT").arg(1000))
        .await
        .unwrap();
    assert!(page.1.iter().any(|k| k == key), "{page:?}");
}

/// The multi-key helpers answer an empty key list themselves (a batch that happens to
/// be empty), where the server refuses it as a wrong number of arguments.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_key_lists_are_answered_without_a_request() {
    let local = cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let none: [&str; 0] = [];
    let values: Vec<Option<String>> = client.mget(none).await.unwrap();
    assert!(values.is_empty());
    assert_eq!(client.del(none).await.unwrap(), 0);
    assert_eq!(client.exists(none).await.unwrap(), 0);
    let no_pairs: [(&str, &str); 0] = [];
    client.mset(no_pairs).await.unwrap();
}

/// A `MOVED` to a node whose address its redirecting node does not know (`?:port`, a
/// node set to prefer host names without one) is waited out like `CLUSTERDOWN`, and
/// what comes back when that is over is `Error::ClusterDown`, as for a slot with no
/// owner: never the raw `MOVED`, alone or in a pipeline, with retries or without.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_an_unknown_host_ends_in_cluster_down_never_a_raw_moved() {
    use redcluster::ServerError;
    use support::fake_cluster::{Action, FakeCluster};
    let moved = format!("MOVED {} ?:6379", redcluster::key_slot(b"k"));
    let fake = FakeCluster::start(move |args, _| match args[0].as_str() {
        "GET" => Action::Reply(Value::ServerError(ServerError::new(moved.clone()))),
        _ => Action::Reply(Value::Simple("OK".into())),
    })
    .await;
    for retry in [true, false] {
        let client = ClusterClient::builder()
            .nodes([fake.addr.as_str()])
            .retry_on_cluster_down(retry)
            .cluster_down_retry_attempts(2)
            .retry_backoff(Duration::from_millis(10), Duration::from_millis(20))
            .health_check_interval(None)
            .build()
            .await
            .unwrap();
        let got = client.get::<_, Option<String>>("k").await;
        assert!(matches!(got, Err(Error::ClusterDown(_))), "{got:?}");
        let mut p = client.pipeline();
        p.get("k");
        let each = p.execute_each().await;
        assert!(matches!(each[0], Err(Error::ClusterDown(_))), "{each:?}");
    }
    // Retried: two more `GET`s for the single command; the pipeline's goes again
    // through the single-command path, which counts its retries afresh (one more).
    assert_eq!(fake.count("GET"), 3 + 4 + 1 + 1, "{:?}", fake.seen());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_argument_over_the_servers_bulk_limit_is_refused_unsent_and_the_others_run() {
    let local = cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    // One byte over the 512 MiB a server takes by default (`proto-max-bulk-len`): a
    // server reads its length, answers a protocol error and closes the connection, which
    // every request to that node shares.
    let huge = vec![b'x'; 512 * 1024 * 1024 + 1];
    let set = cmd("SET").arg("bulk:{b}:huge").arg(&huge[..]);
    drop(huge);
    // Writes that must not run twice, sent with it to the same node.
    let neighbours = (0..64).map(|i| {
        let client = client.clone();
        async move { client.incr(format!("bulk:{{b}}:{i}"), 1).await }
    });
    let (refused, neighbours) = tokio::join!(
        client.query::<Value>(set.clone()),
        futures_util::future::join_all(neighbours)
    );
    match refused {
        Err(Error::Config(m)) => assert!(m.contains("512 MiB"), "{m}"),
        other => panic!("{other:?}"),
    }
    for result in neighbours {
        assert_eq!(result.unwrap(), 1);
    }
    // In a pipeline it is that command's error; the others run.
    let mut pipe = client.pipeline();
    pipe.set("bulk:{b}:before", "1");
    pipe.add(set.clone());
    pipe.set("bulk:{b}:after", "2");
    let each = pipe.execute_each().await;
    assert!(matches!(each[1], Err(Error::Config(_))), "{each:?}");
    assert!(each[0].is_ok() && each[2].is_ok(), "{each:?}");
    // So on a node connection of one's own.
    let owner = local.master_of_slot(key_slot(b"{b}")).await.unwrap();
    let node = local.connect_node(owner).await.unwrap();
    let (refused, after) =
        tokio::join!(node.send(set), node.send(cmd("GET").arg("bulk:{b}:after")));
    assert!(matches!(refused, Err(Error::Config(_))), "{refused:?}");
    assert_eq!(after.unwrap(), Value::Bulk("2".into()));
}

/// Requests whose futures are dropped mid-flight (a caller's own `timeout`, a `select!`
/// that took another branch) leave every connection in step: each request that is
/// answered gets its own reply, single commands and pipelines alike, and so do all the
/// requests after them. Dropped at their first poll (queued, perhaps written, never
/// answered to anyone) or a little later (written, the reply on its way).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_dropped_mid_flight_leave_every_reply_to_its_own_request() {
    let local = cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    const KEYS: usize = 200;
    let key = |i: usize| format!("dropped:{i}");
    let value = |i: usize| format!("v{i}");
    client
        .mset((0..KEYS).map(|i| (key(i), value(i))))
        .await
        .unwrap();
    let tasks = (0..4u64).map(|t| {
        let client = client.clone();
        tokio::spawn(async move {
            let mut rng = fastrand::Rng::with_seed(t);
            let (mut answered, mut dropped) = (0u32, 0u32);
            for _ in 0..400 {
                let cut = Duration::from_micros(rng.u64(0..400));
                let i = rng.usize(0..KEYS);
                if rng.bool() {
                    match tokio::time::timeout(cut, client.get::<_, Option<String>>(key(i))).await {
                        Ok(got) => {
                            assert_eq!(got.unwrap(), Some(value(i)), "GET {}", key(i));
                            answered += 1;
                        }
                        Err(_) => dropped += 1,
                    }
                } else {
                    let picked: Vec<usize> = (0..5).map(|_| rng.usize(0..KEYS)).collect();
                    let mut pipe = client.pipeline();
                    for &i in &picked {
                        pipe.get(key(i));
                    }
                    match tokio::time::timeout(cut, pipe.execute_each()).await {
                        Ok(replies) => {
                            for (&i, reply) in picked.iter().zip(replies) {
                                let reply = reply.unwrap();
                                assert_eq!(reply, Value::Bulk(value(i).into()), "{}", key(i));
                            }
                            answered += 1;
                        }
                        Err(_) => dropped += 1,
                    }
                }
            }
            (answered, dropped)
        })
    });
    let (mut answered, mut dropped) = (0, 0);
    for task in futures_util::future::join_all(tasks).await {
        let (a, d) = task.unwrap();
        answered += a;
        dropped += d;
    }
    println!("dropped mid-flight: {dropped}, answered: {answered}");
    assert!(
        dropped > 0 && answered > 0,
        "{dropped} dropped, {answered} answered"
    );
    // Afterwards, every key reads back its own value.
    let all: Vec<Option<String>> = client.mget((0..KEYS).map(key)).await.unwrap();
    for (i, got) in all.into_iter().enumerate() {
        assert_eq!(got, Some(value(i)), "{}", key(i));
    }
}

/// A command that runs no script, refused with a `MOVED` the client cannot vet in time
/// (the refreshes that would name the address do not answer), ran nothing: it fails as
/// `Timeout { may_have_executed: false }`, where it said it may have run (the vetting's
/// rule for scripts, which can forge a redirect after writing). A script's stays
/// may-have-run. A scripted node: a real one cannot be made to stall `CLUSTER SHARDS`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_whose_redirect_cannot_be_vetted_in_time_says_whether_it_ran() {
    use support::fake_cluster::stalling_redirect_vetting;
    // One node (and client) per command: a stalled refresh holds up its connection.
    let (fake, client) = stalling_redirect_vetting(&["INCR", "EVAL"]).await;
    let err = client.query::<i64>(cmd("INCR").arg("k")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                may_have_executed: false
            }
        ),
        "{err:?}"
    );
    assert_eq!(fake.count("INCR"), 1);
    let (fake, client) = stalling_redirect_vetting(&["INCR", "EVAL"]).await;
    let err = client
        .query::<Value>(cmd("EVAL").arg("return 1").arg(1).arg("k"))
        .await
        .unwrap_err();
    assert!(err.may_have_executed(), "{err:?}");
    assert_eq!(fake.count("EVAL"), 1);
}

/// A script's own `redis.error_reply("MOVED ...")` naming another slot than its keys'
/// is its reply, and no retryable error: the script ran (it wrote first), and a caller
/// (or `watch_retry`) that retried on `is_retryable()` ran it again. One naming an
/// address no node has (`?:port`) is no `ClusterDown` either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scripts_redirect_for_another_slot_is_no_retryable_error() {
    let local = cluster(3, 0).await;
    let client = ClusterClient::connect(local.seeds()).await.unwrap();
    let counter = "{forged-retry}:n";
    assert_ne!(key_slot(counter.as_bytes()), 0);
    let other = local.node_addr(local.master_of_slot(0).await.unwrap());
    let forge = |to: &str| {
        cmd("EVAL")
            .arg("redis.call('INCR', KEYS[1]) return redis.error_reply('MOVED 0 ' .. ARGV[1])")
            .arg(1)
            .arg(counter)
            .arg(to.to_owned())
    };
    for to in [other.as_str(), "?:6379"] {
        let err = client.query::<Value>(forge(to)).await.unwrap_err();
        assert!(
            matches!(&err, Error::Server(e) if e.code() == "MOVED"),
            "{err:?}"
        );
        assert!(err.may_have_executed() && !err.is_retryable(), "{err:?}");
    }
    assert_eq!(client.get::<_, i64>(counter).await.unwrap(), 2);
    // The same script in a watch body: one run, not one per attempt.
    let watched = "{forged-retry}:w";
    let forged = forge(&other);
    let outcome = client
        .watch_retry(&[watched], 3, |mut w| {
            let forged = forged.clone();
            async move {
                w.query::<Value>(forged).await?;
                w.exec(vec![cmd("INCR").arg(watched)]).await
            }
        })
        .await;
    assert!(matches!(outcome, Err(Error::Server(_))), "{outcome:?}");
    assert_eq!(client.get::<_, i64>(counter).await.unwrap(), 3);
}
