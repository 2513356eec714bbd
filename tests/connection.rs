//! The node connection against a real server: coalesced writes, RESP3 and RESP2, push
//! frames between replies, a connection killed by the server under a pending request,
//! requests that expire or are abandoned while held back (cut from the queued bytes,
//! never run), TCP keepalive as the kernel reports it.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use redcluster::testkit::LocalCluster;
use redcluster::{cmd, ConnectOptions, Error, FromValue, NodeConnection, Protocol, Value};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

async fn one_node() -> LocalCluster {
    LocalCluster::builder()
        .masters(1)
        .replicas_per_master(0)
        .start()
        .await
        .expect("local cluster starts")
}

/// A TCP stream that counts the writes made to it.
struct CountingStream {
    inner: tokio::net::TcpStream,
    writes: Arc<AtomicUsize>,
}

impl AsyncRead for CountingStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for CountingStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(_))) {
            self.writes.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_are_coalesced_into_few_writes() {
    let local = one_node().await;
    let addr = local.node_addr(0);
    let writes = Arc::new(AtomicUsize::new(0));
    let stream = CountingStream {
        inner: tokio::net::TcpStream::connect(&addr).await.unwrap(),
        writes: Arc::clone(&writes),
    };
    let conn = NodeConnection::over_stream(&addr, stream, &ConnectOptions::default())
        .await
        .unwrap();
    let handshake_writes = writes.load(Ordering::Relaxed);
    let requests = (0..500).map(|i| {
        let conn = conn.clone();
        async move { conn.send(cmd("SET").arg(format!("k{i}")).arg(i)).await }
    });
    for r in futures_util::future::join_all(requests).await {
        assert_eq!(r.unwrap(), Value::Simple("OK".into()));
    }
    let used = writes.load(Ordering::Relaxed) - handshake_writes;
    println!("500 concurrent SETs took {used} writes");
    // One write per request would be 500; coalescing makes it a small fraction, how small
    // depending on scheduling (measured 5 to 60 on a busy 2-core machine).
    assert!(used < 250, "{used} writes for 500 requests: not coalesced");
    // Replies were matched to their requests in order.
    for i in [0, 77, 499] {
        let v = conn.send(cmd("GET").arg(format!("k{i}"))).await.unwrap();
        assert_eq!(i64::from_value(v).unwrap(), i);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resp3_and_resp2_both_work_and_convert_alike() {
    let local = one_node().await;
    let addr = local.node_addr(0);
    let resp3 = connect(&addr).await;
    let resp2 =
        NodeConnection::connect(&addr, &ConnectOptions::default().protocol(Protocol::Resp2))
            .await
            .unwrap();
    assert_eq!(resp3.protocol(), Protocol::Resp3);
    assert_eq!(resp2.protocol(), Protocol::Resp2);
    resp3
        .send(cmd("HSET").arg("h").arg("a").arg(1).arg("b").arg(2))
        .await
        .unwrap();
    let v3 = resp3.send(cmd("HGETALL").arg("h")).await.unwrap();
    let v2 = resp2.send(cmd("HGETALL").arg("h")).await.unwrap();
    assert!(matches!(v3, Value::Map(_)), "{v3:?}");
    assert!(matches!(v2, Value::Array(_)), "{v2:?}");
    type Fields = std::collections::HashMap<String, i64>;
    assert_eq!(
        Fields::from_value(v3).unwrap(),
        Fields::from_value(v2).unwrap()
    );
    let d = resp3
        .send(cmd("ZADD").arg("z").arg(1.5).arg("m"))
        .await
        .unwrap();
    assert_eq!(d, Value::Int(1));
    assert!(
        matches!(resp3.send(cmd("ZSCORE").arg("z").arg("m")).await.unwrap(), Value::Double(x) if x == 1.5)
    );
    let s2 = resp2.send(cmd("ZSCORE").arg("z").arg("m")).await.unwrap();
    assert_eq!(f64::from_value(s2).unwrap(), 1.5);
    let err = resp3.send(cmd("LPUSH").arg("h").arg("x")).await.unwrap();
    match err {
        Value::ServerError(e) => assert_eq!(e.code(), "WRONGTYPE"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_frames_between_replies_do_not_desynchronise_the_connection() {
    let local = one_node().await;
    let addr = local.node_addr(0);
    let tracked = connect(&addr).await;
    let writer = connect(&addr).await;
    assert_eq!(
        tracked
            .send(cmd("CLIENT").arg("TRACKING").arg("on"))
            .await
            .unwrap(),
        Value::Simple("OK".into())
    );
    writer.send(cmd("SET").arg("t").arg("0")).await.unwrap();
    for round in 0..20 {
        // Reading the key makes the server track it; the next write to it sends an
        // invalidation push to `tracked`, interleaved with its replies.
        let v = tracked.send(cmd("GET").arg("t")).await.unwrap();
        assert_eq!(v, Value::Bulk(round.to_string().into()));
        writer
            .send(cmd("SET").arg("t").arg(round + 1))
            .await
            .unwrap();
        assert_eq!(
            tracked
                .send(cmd("ECHO").arg(format!("e{round}")))
                .await
                .unwrap(),
            Value::Bulk(format!("e{round}").into())
        );
    }

    // Commands whose replies would not pair with requests are refused unsent, and the
    // connection stays in step (on RESP3, SUBSCRIBE's confirmation is a push frame:
    // sent, it would take the next caller's reply).
    for refused in [
        vec![cmd("SUBSCRIBE").arg("ch")],
        vec![cmd("get").arg("t"), cmd("ssubscribe").arg("t")],
        vec![cmd("CLIENT").arg("reply").arg("SKIP")],
        vec![cmd("MONITOR")],
        // Never answered, or answered by a debugger session: the same.
        vec![cmd("REPLCONF").arg("ACK").arg(0)],
        vec![cmd("SCRIPT").arg("DEBUG").arg("YES")],
        // The server skips an empty request without a reply.
        vec![redcluster::Cmd::new()],
        vec![cmd("GET").arg("t"), redcluster::Cmd::new()],
        // A transaction left open would queue the next caller's commands into it.
        vec![cmd("MULTI")],
        vec![cmd("WATCH").arg("t"), cmd("MULTI"), cmd("INCR").arg("t")],
    ] {
        let err = match &refused[..] {
            [one] => tracked.send(one.clone()).await.unwrap_err(),
            many => tracked.send_batch(many.to_vec()).await.unwrap_err(),
        };
        assert!(matches!(err, Error::Config(_)), "{refused:?}: {err:?}");
        assert_eq!(
            tracked.send(cmd("ECHO").arg("in step")).await.unwrap(),
            Value::Bulk("in step".into())
        );
    }
    // A whole transaction in one batch runs as one, and the connection stays shared.
    let replies = tracked
        .send_batch(vec![
            cmd("WATCH").arg("t"),
            cmd("MULTI"),
            cmd("INCR").arg("t"),
            cmd("EXEC"),
        ])
        .await
        .unwrap();
    assert_eq!(replies[3], Value::Array(vec![Value::Int(21)]));
    assert_eq!(
        writer.send(cmd("GET").arg("t")).await.unwrap(),
        Value::Bulk("21".into())
    );
    assert_eq!(
        tracked.send(cmd("ECHO").arg("after")).await.unwrap(),
        Value::Bulk("after".into())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_by_the_server_answers_its_pending_request() {
    let local = one_node().await;
    let addr = local.node_addr(0);
    let victim = connect(&addr).await;
    let admin = connect(&addr).await;
    let id = i64::from_value(victim.send(cmd("CLIENT").arg("ID")).await.unwrap()).unwrap();
    let pending = {
        let victim = victim.clone();
        tokio::spawn(async move {
            victim
                .send_timeout(cmd("BLPOP").arg("never").arg(30), Duration::from_secs(60))
                .await
        })
    };
    // Wait until the server has the BLPOP blocked, then kill that client.
    wait_until_blocked(&admin, id, "blpop").await;
    let killed = admin
        .send(cmd("CLIENT").arg("KILL").arg("ID").arg(id))
        .await
        .unwrap();
    assert_eq!(killed, Value::Int(1));
    let started = tokio::time::Instant::now();
    let err = pending.await.unwrap().unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "answered at once, not at its timeout"
    );
    assert!(err.may_have_executed(), "{err:?}");
    let err = victim.send(cmd("PING")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ConnectionLost {
                may_have_executed: false
            }
        ),
        "{err:?}"
    );
}

/// A connection to `addr` with the default options.
async fn connect(addr: &str) -> NodeConnection {
    NodeConnection::connect(addr, &ConnectOptions::default())
        .await
        .unwrap()
}

/// Polls `admin` until the server shows a client blocked in `cmd=<name>` (bounded).
async fn wait_until_blocked(admin: &NodeConnection, id: i64, name: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let list =
            String::from_value(admin.send(cmd("CLIENT").arg("LIST")).await.unwrap()).unwrap();
        if list
            .lines()
            .any(|l| l.contains(&format!("id={id} ")) && l.contains(&format!("cmd={name}")))
        {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never reached the server"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_expired_or_abandoned_while_held_back_never_run_and_the_rest_stay_in_step() {
    let local = one_node().await;
    let addr = local.node_addr(0);
    let conn = connect(&addr).await;
    let admin = connect(&addr).await;
    conn.send(
        cmd("DEL")
            .arg("held:counter")
            .arg("held:abandoned")
            .arg("held:key"),
    )
    .await
    .unwrap();
    let id = i64::from_value(conn.send(cmd("CLIENT").arg("ID")).await.unwrap()).unwrap();
    // A BLPOP that the server holds for a second: while its reply is owed, the
    // connection holds the next requests back in its queue, already encoded.
    let blocked = {
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.send_timeout(
                cmd("BLPOP").arg("held:empty").arg(1),
                Duration::from_secs(10),
            )
            .await
        })
    };
    wait_until_blocked(&admin, id, "blpop").await;
    // Queued in this order: a write that expires in the queue, one whose caller gives
    // up (its future dropped) while it waits, one that is kept, and another that
    // expires. The connection cuts the expired ones out of the queued bytes, and the
    // abandoned one when it comes to write it.
    let short = Duration::from_millis(200);
    let long = Duration::from_secs(10);
    let (first, abandoned, kept, last) = futures_util::future::join4(
        conn.send_timeout(cmd("INCR").arg("held:counter"), short),
        tokio::time::timeout(
            short,
            conn.send_timeout(cmd("INCR").arg("held:abandoned"), long),
        ),
        conn.send_timeout(cmd("SET").arg("held:key").arg("kept"), long),
        conn.send_timeout(cmd("INCR").arg("held:counter"), short),
    )
    .await;
    for expired in [first, last] {
        let err = expired.unwrap_err();
        assert!(
            matches!(
                err,
                Error::Timeout {
                    may_have_executed: false
                }
            ),
            "{err:?}"
        );
    }
    assert!(
        abandoned.is_err(),
        "the caller gave up first: {abandoned:?}"
    );
    assert_eq!(kept.unwrap(), Value::Simple("OK".into()));
    assert_eq!(
        blocked.await.unwrap().unwrap(),
        Value::Nil,
        "BLPOP timed out"
    );
    // None of the INCRs ran, and later replies still match their requests.
    for counter in ["held:counter", "held:abandoned"] {
        let value = conn.send(cmd("GET").arg(counter)).await.unwrap();
        assert_eq!(value, Value::Nil, "{counter}");
    }
    let kept = conn.send(cmd("GET").arg("held:key")).await.unwrap();
    assert_eq!(String::from_value(kept).unwrap(), "kept");
    assert_eq!(
        conn.send(cmd("ECHO").arg("in step")).await.unwrap(),
        Value::Bulk("in step".into())
    );
}

/// The `timer` column of the `/proc/net/tcp` line of the local connection from `port` to
/// `server_port`: `(kind, clock ticks until it fires)`. Kind 2 is the socket's own timer,
/// which an idle established connection has pending only for TCP keepalive.
fn tcp_timer(port: u16, server_port: u16) -> (u8, u64) {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port_of = |field: &str| u16::from_str_radix(field.rsplit_once(':').unwrap().1, 16).unwrap();
    table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| port_of(f[1]) == port && port_of(f[2]) == server_port)
        .map(|f| {
            let (kind, when) = f[5].split_once(':').unwrap();
            (
                u8::from_str_radix(kind, 16).unwrap(),
                u64::from_str_radix(when, 16).unwrap(),
            )
        })
        .unwrap_or_else(|| panic!("no connection {port} -> {server_port} in {table}"))
}

#[tokio::test]
async fn tcp_keepalive_arms_each_connections_keepalive_timer_with_the_idle_time_given() {
    let local = one_node().await;
    let server_port: u16 = local
        .node_addr(0)
        .rsplit_once(':')
        .unwrap()
        .1
        .parse()
        .unwrap();
    let build = |name: &str, keepalive: Option<Duration>| {
        redcluster::ClusterClient::builder()
            .nodes(local.seeds())
            .client_name(name)
            .tcp_keepalive(keepalive)
            // No PING in flight: its retransmission timer would hide the keepalive's.
            .health_check_interval(None)
            .build()
    };
    let with = build("keepalive-7s", Some(Duration::from_secs(7)))
        .await
        .unwrap();
    let without = build("no-keepalive", None).await.unwrap();
    for client in [&with, &without] {
        client.set("k", 1).await.unwrap();
    }
    let admin = connect(&local.node_addr(0)).await;
    let list = String::from_value(admin.send(cmd("CLIENT").arg("LIST")).await.unwrap()).unwrap();
    let ports = |name: &str| -> Vec<u16> {
        list.lines()
            .filter(|l| l.split(' ').any(|f| f == format!("name={name}")))
            .map(|l| {
                let addr = l.split(' ').find_map(|f| f.strip_prefix("addr=")).unwrap();
                addr.rsplit_once(':').unwrap().1.parse().unwrap()
            })
            .collect()
    };
    let (on, off) = (ports("keepalive-7s"), ports("no-keepalive"));
    assert!(!on.is_empty() && !off.is_empty(), "{list}");
    for port in on {
        let (kind, ticks) = tcp_timer(port, server_port);
        // 7 s at 100 ticks a second, less the moment since the connection was last used.
        assert_eq!(kind, 2, "connection from {port}: no keepalive timer");
        assert!(
            ticks <= 700,
            "connection from {port}: keepalive in {ticks} ticks"
        );
    }
    for port in off {
        assert_eq!(tcp_timer(port, server_port).0, 0, "connection from {port}");
    }
}

/// A handle with a zero response timeout has a deadline already passed: every request,
/// single or pipelined, fails with `Error::Timeout` and never reaches the server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zero_response_timeout_fails_every_request_unsent() {
    let local = one_node().await;
    let client = redcluster::ClusterClient::connect(local.seeds())
        .await
        .unwrap();
    client.set("zero", "1").await.unwrap();
    let calls = |name: &'static str| {
        let local = &local;
        async move {
            let node = local.connect_node(0).await.unwrap();
            let info = node.send(cmd("INFO").arg("commandstats")).await.unwrap();
            let text = String::from_utf8(info.as_bytes().unwrap().to_vec()).unwrap();
            let field = format!("cmdstat_{name}:calls=");
            text.lines()
                .find_map(|l| l.strip_prefix(&field))
                .map_or(0, |rest| {
                    rest.split(',').next().unwrap().parse::<u64>().unwrap()
                })
        }
    };
    let (gets, incrs) = (calls("get").await, calls("incr").await);
    let zero = client.with_response_timeout(Duration::ZERO);
    let got = zero.get::<_, Option<String>>("zero").await;
    assert!(
        matches!(
            got,
            Err(Error::Timeout {
                may_have_executed: false
            })
        ),
        "{got:?}"
    );
    let e = got.unwrap_err();
    assert!(e.is_retryable() && !e.may_have_executed(), "{e:?}");
    assert_eq!(e.to_string(), "request timed out before it was sent");
    let mut p = zero.pipeline();
    p.incr("zero", 1).get("zero");
    for result in p.execute_each().await {
        assert!(
            matches!(
                result,
                Err(Error::Timeout {
                    may_have_executed: false
                })
            ),
            "{result:?}"
        );
    }
    assert_eq!((calls("get").await, calls("incr").await), (gets, incrs));
}

/// A batch whose `WATCH` the node took and whose `MULTI` it refused (a user without
/// `+multi`) left the connection watching the key: "EXEC without MULTI" unwatches
/// nothing, and every later transaction on it, another caller's too, aborted (a nil
/// `EXEC`) once the key changed. The batch gets its replies and the connection is
/// closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_left_by_a_refused_multi_closes_the_connection() {
    let local = one_node().await;
    let addr = local.node_addr(0);
    let admin = connect(&addr).await;
    let user = cmd("ACL")
        .arg("SETUSER")
        .arg("nomulti")
        .arg("on")
        .arg(">nomultipass")
        .arg("~*")
        .arg("+@all")
        .arg("-multi");
    assert_eq!(admin.send(user).await.unwrap(), Value::Simple("OK".into()));
    let options = ConnectOptions::default()
        .username("nomulti")
        .password("nomultipass");
    let conn = NodeConnection::connect(&addr, &options).await.unwrap();
    let replies = conn
        .send_batch(vec![
            cmd("WATCH").arg("wl:k"),
            cmd("MULTI"),
            cmd("SET").arg("wl:x").arg("1"),
            cmd("EXEC"),
        ])
        .await
        .unwrap();
    assert_eq!(replies[0], Value::Simple("OK".into()));
    assert!(
        matches!(&replies[1], Value::ServerError(e) if e.code() == "NOPERM"),
        "{replies:?}"
    );
    assert!(matches!(&replies[3], Value::ServerError(_)), "{replies:?}");
    assert!(conn.is_closed(), "the connection still watches wl:k");
    let later = conn.send(cmd("PING")).await.unwrap_err();
    assert!(
        matches!(
            later,
            Error::ConnectionLost {
                may_have_executed: false
            }
        ),
        "{later:?}"
    );
}
