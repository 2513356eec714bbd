//! The built-in command table checked against a real server: the keys the client finds
//! in a command are the keys the server's `COMMAND GETKEYS` finds, for every shape of
//! key spec, and every command the server has is in the table.

mod support;

use redcluster::{cmd, Cmd, ConnectOptions, NodeConnection, Value};
use support::standalone::Standalone;

/// The generated table, read as text for the coverage check (the table itself is not
/// public API).
const TABLE_RS: &str = include_str!("../src/cmd/table.rs");

/// A command from words; `''` is an empty argument.
fn line(words: &str) -> Cmd {
    Cmd::new().args(words.split(' ').map(|w| if w == "''" { "" } else { w }))
}

/// Command lines covering every key-spec shape: fixed index, ranges with negative last
/// keys and steps, keynum, keyword searches forward and backward, `limit`, subcommands,
/// and the commands the server finds keys for by hand (`SORT`, `MIGRATE`).
const LINES: &[&str] = &[
    // Index + range.
    "GET k1",
    "SET k1 v EX 10",
    "SET k1 v GET",
    "GETEX k1 PERSIST",
    "APPEND k1 v",
    "MGET k1 k2 k3",
    "MSET k1 v1 k2 v2 k3 v3",
    "MSETNX k1 v1 k2 v2",
    "DEL k1 k2 k3",
    "UNLINK k1",
    "EXISTS k1 k2",
    "TOUCH k1 k2",
    "RENAME k1 k2",
    "COPY k1 k2 REPLACE",
    "LCS k1 k2 LEN",
    "BITOP AND d1 k1 k2",
    "BITOP NOT d1 k1",
    "BITFIELD k1 GET u8 0",
    "SMOVE k1 k2 m",
    "SINTERSTORE d1 k1 k2",
    "SUNION k1 k2 k3",
    "LMOVE k1 k2 LEFT RIGHT",
    "BLMOVE k1 k2 LEFT RIGHT 0",
    "BLPOP k1 k2 0",
    "BZPOPMIN k1 k2 1.5",
    "RPOPLPUSH k1 k2",
    "PFMERGE d1 k1 k2",
    "PFCOUNT k1 k2",
    "GEOSEARCHSTORE d1 k1 FROMMEMBER m BYRADIUS 1 km",
    "ZRANGESTORE d1 k1 0 -1",
    "XADD k1 * f v",
    "XCLAIM k1 g c 0 1-1",
    "WATCH k1 k2",
    "OBJECT ENCODING k1",
    "object freq k1",
    "MEMORY USAGE k1 SAMPLES 5",
    "XINFO STREAM k1 FULL",
    "XGROUP CREATE k1 g $ MKSTREAM",
    // Keynum.
    "EVAL s 2 k1 k2 a1 a2",
    "EVALSHA 0123456789012345678901234567890123456789 1 k1 a1",
    "EVAL_RO s 1 k1",
    "FCALL f 3 k1 k2 k3 a1",
    "FCALL_RO f 1 k1",
    "EVAL s 0 a1",
    "ZUNIONSTORE d1 2 k1 k2 WEIGHTS 1 2",
    "ZINTERSTORE d1 1 k1",
    "ZDIFFSTORE d1 2 k1 k2",
    "ZUNION 2 k1 k2 WITHSCORES",
    "ZINTER 3 k1 k2 k3",
    "ZDIFF 1 k1",
    "ZINTERCARD 2 k1 k2 LIMIT 1",
    "SINTERCARD 2 k1 k2 LIMIT 5",
    "LMPOP 2 k1 k2 LEFT COUNT 2",
    "ZMPOP 1 k1 MIN",
    "BLMPOP 0 2 k1 k2 RIGHT",
    "BZMPOP 1.5 3 k1 k2 k3 MAX COUNT 2",
    // Keyword, forward, with `limit` halving what follows STREAMS.
    "XREAD STREAMS k1 0",
    "XREAD COUNT 2 BLOCK 0 STREAMS k1 k2 0 0",
    "xread block 10 streams k1 k2 k3 0 $ 0",
    "XREADGROUP GROUP g c COUNT 1 BLOCK 5 NOACK STREAMS k1 k2 > >",
    "XREADGROUP GROUP g streams STREAMS k1 >",
    "GEORADIUS k1 0 0 10 km",
    "GEORADIUS k1 0 0 10 km STORE d1",
    "GEORADIUS k1 0 0 10 km WITHDIST STORE d1 STOREDIST d2",
    "GEORADIUSBYMEMBER k1 m 10 km STOREDIST d1",
    "GEORADIUS k1 0 0 10 km STORE",
    // By hand in the server.
    "SORT k1",
    "SORT k1 BY w_* LIMIT 0 10 GET o_* STORE d1",
    "SORT k1 GET store STORE d1",
    "SORT k1 STORE d1 STORE d2",
    "SORT_RO k1 BY w_* GET o_*",
    "MIGRATE h 6379 k1 0 5000",
    "MIGRATE h 6379 k1 0 5000 COPY REPLACE AUTH keys",
    "MIGRATE h 6379 '' 0 5000 KEYS k1 k2 k3",
    "MIGRATE h 6379 '' 0 5000 COPY AUTH2 u keys KEYS k1 k2",
    "MIGRATE h 6379 k1 0 5000 KEYS",
    // No keys.
    "PING hello",
    "CLUSTER INFO",
    "CONFIG GET maxmemory",
    "PUBLISH ch m",
    "SPUBLISH ch m",
    "ECHO hi",
];

/// What the server says the keys are: `COMMAND GETKEYS`, with "no key arguments"
/// meaning none.
async fn server_keys(conn: &NodeConnection, c: &Cmd) -> Result<Vec<Vec<u8>>, String> {
    let getkeys = cmd("COMMAND").arg("GETKEYS").args(c.arg_iter());
    match conn.send(getkeys).await.expect("COMMAND GETKEYS sent") {
        Value::Array(keys) => Ok(keys
            .iter()
            .map(|k| k.as_bytes().expect("a key name").to_vec())
            .collect()),
        Value::ServerError(e) if e.message().contains("no key arguments") => Ok(vec![]),
        Value::ServerError(e) => Err(e.to_string()),
        other => panic!("COMMAND GETKEYS replied {other:?}"),
    }
}

#[tokio::test]
async fn keys_match_the_server_command_getkeys() {
    let server = Standalone::start();
    let conn = NodeConnection::connect(&server.addr, &ConnectOptions::default())
        .await
        .unwrap();
    let mut with_keys = 0;
    for words in LINES {
        let c = line(words);
        let ours: Vec<Vec<u8>> = c
            .keys()
            .unwrap_or_else(|e| panic!("{words}: {e}"))
            .unwrap_or_else(|| panic!("{words}: not in the table"))
            .into_iter()
            .map(<[u8]>::to_vec)
            .collect();
        let theirs = server_keys(&conn, &c)
            .await
            .unwrap_or_else(|e| panic!("{words}: the server refused: {e}"));
        assert_eq!(
            ours.iter()
                .map(|k| String::from_utf8_lossy(k))
                .collect::<Vec<_>>(),
            theirs
                .iter()
                .map(|k| String::from_utf8_lossy(k))
                .collect::<Vec<_>>(),
            "{words}"
        );
        if !ours.is_empty() {
            with_keys += 1;
        }
    }
    assert!(LINES.len() >= 60, "{}", LINES.len());
    assert!(with_keys >= 70, "only {with_keys} lines had keys");
}

/// Commands whose arguments cannot be valid: the client refuses to find keys in them,
/// and so does the server.
#[tokio::test]
async fn malformed_commands_are_refused_like_the_server_does() {
    let server = Standalone::start();
    let conn = NodeConnection::connect(&server.addr, &ConnectOptions::default())
        .await
        .unwrap();
    for words in [
        "GET",
        "MSET k1",
        "OBJECT ENCODING",
        "ZUNIONSTORE d1 3 k1 k2",
        "ZUNION x k1",
        "SINTERCARD -1 k1",
        "LMPOP 5 k1 LEFT",
        "XREAD COUNT 1 STREAMS k1",
        "MIGRATE h 6379 k1 0 5000 KEYS k2 k3",
    ] {
        let c = line(words);
        let ours = c.keys();
        assert!(
            matches!(ours, Err(redcluster::Error::Config(_))),
            "{words}: {ours:?}"
        );
        let theirs = server_keys(&conn, &c).await;
        assert!(theirs.is_err(), "{words}: the server found {theirs:?}");
    }
    // More arguments than a fixed arity: routed by the keys where the table says, for
    // the server to judge (a later version's option: `ZRANK k m WITHSCORE` in 7.2).
    for (words, key) in [("GET k1 k2", "k1"), ("ZRANK z1 m WITHSCORE", "z1")] {
        let c = line(words);
        assert_eq!(c.keys().unwrap(), Some(vec![key.as_bytes()]), "{words}");
    }
}

/// Every command (and subcommand) of the server is in the table with the same arity,
/// so the table is not stale for this server version.
#[tokio::test]
async fn table_has_every_command_of_the_server() {
    let server = Standalone::start();
    let conn = NodeConnection::connect(&server.addr, &ConnectOptions::default())
        .await
        .unwrap();
    let table_version = TABLE_RS
        .split("REDIS_VERSION: &str = \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the table names its version");
    let Value::Array(entries) = conn.send(cmd("COMMAND")).await.unwrap() else {
        panic!("COMMAND is not an array");
    };
    let mut missing = Vec::new();
    let mut checked = 0;
    let mut check = |entry: &Value, missing: &mut Vec<String>| -> Vec<Value> {
        let Value::Array(fields) = entry else {
            panic!("{entry:?}")
        };
        let name = String::from_utf8_lossy(fields[0].as_bytes().unwrap()).to_lowercase();
        let Value::Int(arity) = fields[1] else {
            panic!("{name}: arity {:?}", fields[1])
        };
        if !TABLE_RS.contains(&format!("c!(\"{name}\", {arity}, ")) {
            missing.push(format!("{name} (arity {arity})"));
        }
        checked += 1;
        match fields.get(9) {
            Some(Value::Array(subs)) => subs.clone(),
            _ => vec![],
        }
    };
    for entry in &entries {
        for sub in check(entry, &mut missing) {
            check(&sub, &mut missing);
        }
    }
    assert!(checked >= entries.len() + 100, "{checked}");
    assert!(
        missing.is_empty(),
        "the table (from redis {table_version}) lacks commands of this server: {missing:?}; \
         rerun scripts/gen_command_table.py"
    );
    // Top-level commands are found through the public API too (module commands are not).
    for entry in &entries {
        let Value::Array(fields) = entry else {
            unreachable!()
        };
        let name = fields[0].as_bytes().unwrap();
        let c = Cmd::new().arg(name);
        assert!(
            !matches!(c.keys(), Ok(None)),
            "{}",
            String::from_utf8_lossy(name)
        );
    }
    assert_eq!(cmd("MODULE.NOPE").arg("k").keys().unwrap(), None);
}

/// Keyless commands that act on the one node they are sent to (`BGSAVE`, `CLIENT KILL`,
/// `CLUSTER FAILOVER`, `DEBUG OBJECT key`, `SHUTDOWN`, ...) are refused by `query`, which
/// would send them to whichever primary came next, and go through `query_node` to the
/// node named. The `CLIENT` settings of the calling connection (`SETNAME`, `TRACKING`,
/// `CACHING`, `NO-EVICT`, `NO-TOUCH`, `SETINFO`) are refused either way: they would
/// change the connection every caller shares. Under replica reads, `TOUCH` (sent for
/// its effect on the primary's access times) goes to the primary. `RANDOMKEY` asks
/// every primary, and answers a key if any has one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_commands_are_refused_unless_a_node_is_named_and_touch_goes_to_the_primary() {
    use redcluster::{ClusterClient, Error, ReadFrom};
    let local = support::cluster(3, 1).await;
    let client = ClusterClient::builder()
        .nodes(local.seeds())
        .read_from(ReadFrom::Replica)
        .build()
        .await
        .unwrap();
    let one_node = [
        cmd("BGSAVE"),
        cmd("save"),
        cmd("CLIENT").arg("KILL").arg("ID").arg(999_999),
        cmd("CLUSTER").arg("FAILOVER"),
        cmd("CLUSTER").arg("FORGET").arg("0123"),
        cmd("DEBUG").arg("OBJECT").arg("k"),
        cmd("MODULE").arg("LOAD").arg("/nonexistent.so"),
        cmd("REPLICAOF").arg("NO").arg("ONE"),
        cmd("SHUTDOWN").arg("ABORT"),
    ];
    for c in &one_node {
        let refused = client.query::<Value>(c.clone()).await;
        assert!(
            matches!(&refused, Err(Error::Config(m)) if m.contains("query_node")),
            "{c:?}: {refused:?}"
        );
    }
    let primary = client.node_for_key(b"k").unwrap();
    let reply = client
        .query_node::<Value>(&primary, cmd("CLIENT").arg("KILL").arg("ID").arg(999_999))
        .await;
    // The filter form answers how many clients it killed.
    assert_eq!(reply.unwrap(), Value::Int(0), "sent to the node named");

    let connection_state = [
        cmd("CLIENT").arg("SETNAME").arg("mine"),
        cmd("client").arg("tracking").arg("on"),
        cmd("CLIENT").arg("CACHING").arg("yes"),
        cmd("CLIENT").arg("NO-EVICT").arg("on"),
        cmd("CLIENT").arg("NO-TOUCH").arg("on"),
        cmd("CLIENT").arg("SETINFO").arg("LIB-NAME").arg("x"),
    ];
    for c in &connection_state {
        let refused = client.query::<Value>(c.clone()).await;
        assert!(
            matches!(refused, Err(Error::Config(_))),
            "{c:?}: {refused:?}"
        );
        let refused = client.query_node::<Value>(&primary, c.clone()).await;
        assert!(
            matches!(refused, Err(Error::Config(_))),
            "{c:?}: {refused:?}"
        );
    }
    // A node connection of one's own takes them.
    let own = local.connect_node(0).await.unwrap();
    let set = own.send(cmd("CLIENT").arg("NO-EVICT").arg("on")).await;
    assert_eq!(set.unwrap(), Value::Simple("OK".into()));

    client.set("k", "v").await.unwrap();
    let owner = local.index_of_addr(&primary).unwrap();
    let replica = local.replicas_of(owner).await.unwrap()[0];
    let (primary_before, replica_before) = (
        support::calls(&local, owner, "touch").await,
        support::calls(&local, replica, "touch").await,
    );
    for _ in 0..5 {
        let touched: i64 = client.query(cmd("TOUCH").arg("k")).await.unwrap();
        assert_eq!(touched, 1);
    }
    assert_eq!(
        support::calls(&local, owner, "touch").await - primary_before,
        5
    );
    assert_eq!(
        support::calls(&local, replica, "touch").await,
        replica_before
    );

    // `RANDOMKEY` finds the one key of the cluster, whichever primary it asks first:
    // the two without keys answer nil.
    let _: Value = client.query(cmd("FLUSHALL")).await.unwrap();
    let none: Option<String> = client.query(cmd("RANDOMKEY")).await.unwrap();
    assert_eq!(none, None);
    client.set("only", "1").await.unwrap();
    for _ in 0..10 {
        let key: Option<String> = client.query(cmd("RANDOMKEY")).await.unwrap();
        assert_eq!(key.as_deref(), Some("only"));
    }
    // In a transaction it asks the transaction's node, as any keyless command there.
    let mut tx = client.transaction();
    tx.add(cmd("GET").arg("only")).add(cmd("RANDOMKEY"));
    let replies = tx.execute().await.unwrap();
    assert_eq!(replies[1], Value::Bulk("only".into()));
}
