//! A fake one-node cluster for faults a real server cannot be made to show on demand:
//! dropping the connection right after reading a request.
//!
//! It accepts any number of connections on 127.0.0.1, answers `HELLO`, `CLUSTER SHARDS`
//! (itself owning every slot, unless the test gives the reply), `CLUSTER MYID` and
//! `CLUSTER NODES` (an error, unless the test gives the reply: a client must do without
//! config epochs) on its own, and asks the test's `behave` function what to do with
//! every other command.
//! Every command it reads is recorded.

use std::sync::{Arc, Mutex};

use bytes::BytesMut;
use redcluster::resp::{encode_value, Decoder, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Counts a connection open for as long as it lives.
struct OpenConnection(Arc<std::sync::atomic::AtomicUsize>);

impl OpenConnection {
    fn counted(count: &Arc<std::sync::atomic::AtomicUsize>) -> OpenConnection {
        count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        OpenConnection(Arc::clone(count))
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// What the fake does with a command.
pub enum Action {
    /// Answer with this value.
    Reply(Value),
    /// Close the connection without answering (the request was read).
    Drop,
    /// Never answer, and keep reading (the request was read and, as far as the client
    /// can tell, may have run).
    Silent,
}

pub struct FakeCluster {
    pub addr: String,
    seen: Arc<Mutex<Vec<String>>>,
    /// Connections accepted and not yet closed by the client.
    open: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeCluster {
    /// Starts serving; `behave` gets each command (name upper-cased, then arguments) and
    /// how many times a command with that name was seen before.
    pub async fn start<F>(behave: F) -> FakeCluster
    where
        F: Fn(&[String], usize) -> Action + Send + Sync + 'static,
    {
        FakeCluster::start_with_hello_delay(std::time::Duration::ZERO, behave).await
    }

    /// [`FakeCluster::start`], answering every `HELLO` only after `hello_delay`: a slow
    /// handshake (TLS over a long link, an overloaded node).
    pub async fn start_with_hello_delay<F>(
        hello_delay: std::time::Duration,
        behave: F,
    ) -> FakeCluster
    where
        F: Fn(&[String], usize) -> Action + Send + Sync + 'static,
    {
        FakeCluster::start_with(
            "127.0.0.1",
            hello_delay,
            Arc::new(shards),
            no_delay(),
            no_nodes(),
            behave,
        )
        .await
    }

    /// [`FakeCluster::start`] on `[::1]`, announcing itself as `::1`, as a node of an
    /// IPv6 cluster does.
    #[allow(dead_code)] // not every test binary has an IPv6 test
    pub async fn start_ipv6<F>(behave: F) -> FakeCluster
    where
        F: Fn(&[String], usize) -> Action + Send + Sync + 'static,
    {
        let topology = |port| shards_at("::1", port);
        FakeCluster::start_with(
            "::1",
            std::time::Duration::ZERO,
            Arc::new(topology),
            no_delay(),
            no_nodes(),
            behave,
        )
        .await
    }

    /// [`FakeCluster::start`], answering `CLUSTER SHARDS` with what `topology` makes of
    /// its own port (a node whose view of the cluster the test writes), its `n`-th
    /// (from 0) only after `delay(n)` (the view as it was when asked): which of two
    /// nodes answers a refresh first, or a refresh that answers after a later one; and
    /// `CLUSTER NODES` with what `nodes` makes of it (the config epochs of that view).
    #[allow(dead_code)] // not every test binary scripts views
    pub async fn start_with_shards_after<F>(
        topology: impl Fn(u16) -> Value + Send + Sync + 'static,
        nodes: impl Fn(u16) -> Value + Send + Sync + 'static,
        delay: impl Fn(usize) -> std::time::Duration + Send + Sync + 'static,
        behave: F,
    ) -> FakeCluster
    where
        F: Fn(&[String], usize) -> Action + Send + Sync + 'static,
    {
        FakeCluster::start_with(
            "127.0.0.1",
            std::time::Duration::ZERO,
            Arc::new(topology),
            Arc::new(delay),
            Arc::new(nodes),
            behave,
        )
        .await
    }

    async fn start_with<F>(
        host: &str,
        hello_delay: std::time::Duration,
        topology: Arc<dyn Fn(u16) -> Value + Send + Sync>,
        shards_delay: Arc<dyn Fn(usize) -> std::time::Duration + Send + Sync>,
        nodes: Arc<dyn Fn(u16) -> Value + Send + Sync>,
        behave: F,
    ) -> FakeCluster
    where
        F: Fn(&[String], usize) -> Action + Send + Sync + 'static,
    {
        let listener = TcpListener::bind((host, 0)).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let seen: Arc<Mutex<Vec<String>>> = Arc::new(Mutex::new(Vec::new()));
        let behave = Arc::new(behave);
        let port = addr.port();
        let log = Arc::clone(&seen);
        let open = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counting = Arc::clone(&open);
        tokio::spawn(async move {
            // Bounded by the test's lifetime: the runtime ends with the test.
            while let Ok((mut socket, _)) = listener.accept().await {
                let (behave, log) = (Arc::clone(&behave), Arc::clone(&log));
                let topology = Arc::clone(&topology);
                let shards_delay = Arc::clone(&shards_delay);
                let nodes = Arc::clone(&nodes);
                let open = OpenConnection::counted(&counting);
                tokio::spawn(async move {
                    let _open = open;
                    let mut buf = BytesMut::new();
                    let mut decoder = Decoder::new();
                    loop {
                        let args = loop {
                            match decoder.decode(&mut buf) {
                                Ok(Some(Value::Array(args))) => break args,
                                Ok(None) => {}
                                _ => return,
                            }
                            match socket.read_buf(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(_) => {}
                            }
                        };
                        let mut args: Vec<String> = args
                            .into_iter()
                            .map(|a| match a {
                                Value::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
                                other => format!("{other:?}"),
                            })
                            .collect();
                        if let Some(name) = args.first_mut() {
                            *name = name.to_ascii_uppercase();
                        }
                        let earlier = {
                            let mut seen = log.lock().unwrap();
                            let n = seen
                                .iter()
                                .filter(|s| s.split(' ').next() == args.first().map(String::as_str))
                                .count();
                            seen.push(args.join(" "));
                            n
                        };
                        let action = match args.first().map(String::as_str) {
                            Some("HELLO") => {
                                tokio::time::sleep(hello_delay).await;
                                Action::Reply(Value::Map(vec![(bulk("proto"), Value::Int(3))]))
                            }
                            Some("CLUSTER")
                                if args
                                    .get(1)
                                    .is_some_and(|a| a.eq_ignore_ascii_case("shards")) =>
                            {
                                let asked = log
                                    .lock()
                                    .unwrap()
                                    .iter()
                                    .filter(|s| s.eq_ignore_ascii_case("CLUSTER SHARDS"))
                                    .count();
                                // The view as it is when asked, delivered late; a
                                // client that closes the connection meanwhile is seen
                                // at once (its open connections are counted).
                                let view = topology(port);
                                let due = tokio::time::Instant::now() + shards_delay(asked - 1);
                                loop {
                                    tokio::select! {
                                        () = tokio::time::sleep_until(due) => break,
                                        read = socket.read_buf(&mut buf) => match read {
                                            Ok(0) | Err(_) => return,
                                            Ok(_) => {}
                                        },
                                    }
                                }
                                Action::Reply(view)
                            }
                            Some("CLUSTER")
                                if args.get(1).is_some_and(|a| a.eq_ignore_ascii_case("nodes")) =>
                            {
                                Action::Reply(nodes(port))
                            }
                            // The client checks a node's identity when it connects.
                            Some("CLUSTER")
                                if args.get(1).is_some_and(|a| a.eq_ignore_ascii_case("myid")) =>
                            {
                                Action::Reply(own_id(&topology(port), port))
                            }
                            _ => behave(&args, earlier),
                        };
                        match action {
                            Action::Reply(v) => {
                                let mut out = BytesMut::new();
                                encode_value(&v, &mut out);
                                if socket.write_all(&out).await.is_err() {
                                    return;
                                }
                            }
                            Action::Drop => return,
                            Action::Silent => {}
                        }
                    }
                });
            }
        });
        FakeCluster {
            addr: addr.to_string(),
            seen,
            open,
        }
    }

    /// Connections accepted that the client has not closed.
    #[allow(dead_code)] // not every test binary needs it
    pub fn open_connections(&self) -> usize {
        self.open.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Waits until the client side has closed every connection to it, `within` at most.
    ///
    /// # Panics
    ///
    /// When some are still open then.
    #[allow(dead_code)] // not every test binary checks
    pub async fn wait_until_all_closed(&self, within: std::time::Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.open_connections() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{} connections stayed open",
                self.open_connections()
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The port it listens on.
    #[allow(dead_code)] // not every test binary needs it
    pub fn port(&self) -> u16 {
        self.addr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .expect("the fake's address ends with its port")
    }

    /// Every command read so far, as `NAME arg arg`.
    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }

    /// How many commands named `name` were read.
    pub fn count(&self, name: &str) -> usize {
        self.seen()
            .iter()
            .filter(|s| s.split(' ').next() == Some(name))
            .count()
    }

    /// A client of this fake alone, retrying after 5 to 20 ms (not the default 100 ms
    /// and up), so that a test's resends take little time.
    #[allow(dead_code)] // not every test binary resends
    pub async fn quickly_retrying_client(&self) -> redcluster::ClusterClient {
        redcluster::ClusterClient::builder()
            .nodes([self.addr.as_str()])
            .retry_backoff(
                std::time::Duration::from_millis(5),
                std::time::Duration::from_millis(20),
            )
            .build()
            .await
            .unwrap()
    }
}

fn no_delay() -> Arc<dyn Fn(usize) -> std::time::Duration + Send + Sync> {
    Arc::new(|_| std::time::Duration::ZERO)
}

fn no_nodes() -> Arc<dyn Fn(u16) -> Value + Send + Sync> {
    Arc::new(|_| {
        Value::ServerError(redcluster::ServerError::new(
            "ERR unknown subcommand 'NODES'",
        ))
    })
}

fn bulk(s: &str) -> Value {
    Value::Bulk(bytes::Bytes::copy_from_slice(s.as_bytes()))
}

/// The id `topology` gives the node at `port`, or the error of a server that does not
/// say (a topology without ids).
fn own_id(topology: &Value, port: u16) -> Value {
    let unknown = || {
        Value::ServerError(redcluster::ServerError::new(
            "ERR unknown subcommand 'MYID'",
        ))
    };
    let field = |node: &Value, name: &str| match node {
        Value::Map(pairs) => pairs
            .iter()
            .find(|(k, _)| k.as_bytes() == Some(name.as_bytes()))
            .map(|(_, v)| v.clone()),
        _ => None,
    };
    let Value::Array(shards) = topology else {
        return unknown();
    };
    shards
        .iter()
        .filter_map(|shard| match field(shard, "nodes") {
            Some(Value::Array(nodes)) => Some(nodes),
            _ => None,
        })
        .flatten()
        .find(|node| field(node, "port") == Some(Value::Int(i64::from(port))))
        .and_then(|node| field(&node, "id"))
        .unwrap_or_else(unknown)
}

/// A one-shard `CLUSTER SHARDS` reply: `primary` serves every slot, `other` is listed
/// beside it as a replica, or as the failed old primary.
#[allow(dead_code)] // not every test binary scripts views
pub fn one_shard(primary: u16, other: u16, other_failed: bool) -> Value {
    let other = if other_failed {
        shard_node(other, "master", "fail")
    } else {
        shard_node(other, "replica", "online")
    };
    shard_of(vec![shard_node(primary, "master", "online"), other])
}

/// A node that answers the commands named in `redirected` with a `MOVED` for key `k`'s
/// slot to an address no node lists, answers the client's discovery, and stalls every
/// `CLUSTER SHARDS` after it (the refreshes a redirect's vetting asks for; each
/// connection's later requests wait behind a stalled one), and a client of it with a
/// 600 ms response timeout and no health checks.
#[allow(dead_code)] // not every test binary scripts views
pub async fn stalling_redirect_vetting(
    redirected: &'static [&'static str],
) -> (FakeCluster, redcluster::ClusterClient) {
    let moved = format!("MOVED {} 127.0.0.1:1", redcluster::key_slot(b"k"));
    let fake = FakeCluster::start_with_shards_after(
        lone_shard,
        |_own| Value::ServerError(redcluster::ServerError::new("ERR unknown")),
        |n| {
            if n == 0 {
                std::time::Duration::ZERO
            } else {
                std::time::Duration::from_secs(30)
            }
        },
        move |args, _| {
            if redirected.contains(&args[0].as_str()) {
                Action::Reply(Value::ServerError(redcluster::ServerError::new(
                    moved.clone(),
                )))
            } else {
                Action::Reply(Value::Simple("OK".into()))
            }
        },
    )
    .await;
    let client = redcluster::ClusterClient::builder()
        .nodes([fake.addr.as_str()])
        .response_timeout(std::time::Duration::from_millis(600))
        .health_check_interval(None)
        .build()
        .await
        .unwrap();
    (fake, client)
}

/// [`one_shard`] with `primary` alone.
#[allow(dead_code)] // not every test binary scripts views
pub fn lone_shard(primary: u16) -> Value {
    shard_of(vec![shard_node(primary, "master", "online")])
}

/// A two-shard `CLUSTER SHARDS` reply: `first` serves slots 0 to 8191, `second` the
/// others, each alone.
fn two_shards(first: u16, second: u16) -> Value {
    let shard = |port: u16, from: i64, to: i64| {
        Value::Map(vec![
            (
                bulk("slots"),
                Value::Array(vec![Value::Int(from), Value::Int(to)]),
            ),
            (
                bulk("nodes"),
                Value::Array(vec![shard_node(port, "master", "online")]),
            ),
        ])
    };
    Value::Array(vec![shard(first, 0, 8191), shard(second, 8192, 16383)])
}

/// Two scripted nodes, `a` and `b`, each its own shard of [`two_shards`] (`a` slots 0
/// to 8191), `CLUSTER NODES` refused; `behave` gets whether the command came to `a`,
/// the command, how many of its name that node read before, and both ports.
#[allow(dead_code)] // not every test binary scripts views
pub async fn two_shard_nodes<F>(behave: F) -> (FakeCluster, FakeCluster)
where
    F: Fn(bool, &[String], usize, (u16, u16)) -> Action + Clone + Send + Sync + 'static,
{
    let ports: Arc<Mutex<(u16, u16)>> = Arc::default();
    let node = |is_a: bool| {
        let (view_ports, behave_ports) = (Arc::clone(&ports), Arc::clone(&ports));
        let behave = behave.clone();
        FakeCluster::start_with_shards_after(
            move |_own| {
                let (a, b) = *view_ports.lock().unwrap();
                two_shards(a, b)
            },
            |_own| Value::ServerError(redcluster::ServerError::new("ERR unknown subcommand")),
            |_| std::time::Duration::ZERO,
            move |args, earlier| behave(is_a, args, earlier, *behave_ports.lock().unwrap()),
        )
    };
    let (a, b) = (node(true).await, node(false).await);
    *ports.lock().unwrap() = (a.port(), b.port());
    (a, b)
}

/// A one-shard `CLUSTER SHARDS` reply: `nodes` serve every slot.
fn shard_of(nodes: Vec<Value>) -> Value {
    Value::Array(vec![Value::Map(vec![
        (
            bulk("slots"),
            Value::Array(vec![Value::Int(0), Value::Int(16383)]),
        ),
        (bulk("nodes"), Value::Array(nodes)),
    ])])
}

/// A node of a `CLUSTER SHARDS` shard on 127.0.0.1, its id made of its port.
fn shard_node(port: u16, role: &str, health: &str) -> Value {
    Value::Map(vec![
        (bulk("id"), bulk(&format!("{port:0>40}"))),
        (bulk("port"), Value::Int(i64::from(port))),
        (bulk("endpoint"), bulk("127.0.0.1")),
        (bulk("role"), bulk(role)),
        (bulk("replication-offset"), Value::Int(100)),
        (bulk("health"), bulk(health)),
    ])
}

/// `CLUSTER SHARDS` of a cluster that is this one node, owning every slot.
fn shards(port: u16) -> Value {
    shards_at("127.0.0.1", port)
}

/// [`shards`] for a node announcing itself as `host`.
fn shards_at(host: &str, port: u16) -> Value {
    let node = Value::Map(vec![
        (bulk("id"), bulk("fakefakefakefakefakefakefakefakefakefake")),
        (bulk("port"), Value::Int(i64::from(port))),
        (bulk("ip"), bulk(host)),
        (bulk("endpoint"), bulk(host)),
        (bulk("role"), bulk("master")),
        (bulk("replication-offset"), Value::Int(0)),
        (bulk("health"), bulk("online")),
    ]);
    Value::Array(vec![Value::Map(vec![
        (
            bulk("slots"),
            Value::Array(vec![Value::Int(0), Value::Int(16383)]),
        ),
        (bulk("nodes"), Value::Array(vec![node])),
    ])])
}
