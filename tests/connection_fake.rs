//! Node connection behaviour a real server cannot be made to show on demand, checked
//! against a scripted fake node: replies cut mid-frame, `HELLO` refused, replies nobody
//! asked for, a server that stops answering.

mod support;

use std::time::Duration;

use redcluster::{cmd, ConnectOptions, Error, NodeConnection, Protocol, Value};
use support::fake_node::{hello3, FakeNode, Step};
use tokio::time::Instant;

fn script(steps: impl IntoIterator<Item = Step>) -> Vec<Step> {
    let mut all = hello3();
    all.extend(steps);
    all
}

#[tokio::test]
async fn reply_cut_mid_frame_fails_the_request_as_maybe_executed() {
    let fake = FakeNode::start(script([
        Step::Expect(vec!["INCR", "n"]),
        Step::Reply(b"$10\r\nhal"),
        Step::Close,
    ]))
    .await;
    let conn = NodeConnection::connect(&fake.addr, &ConnectOptions::default())
        .await
        .unwrap();
    let err = conn.send(cmd("INCR").arg("n")).await.unwrap_err();
    assert!(err.may_have_executed(), "{err:?}");
    assert!(
        !err.is_retryable(),
        "a maybe-executed INCR must not look retryable"
    );
    assert!(conn.is_closed());
    // A request sent after the death was never written anywhere.
    let err = conn.send(cmd("GET").arg("k")).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::ConnectionLost {
                may_have_executed: false
            }
        ),
        "{err:?}"
    );
    assert_eq!(fake.finish().await.unwrap(), ["HELLO", "INCR"]);
}

/// A push a server slips inside a reply (a client-tracking invalidation within an
/// `MGET`'s, as Redis 6 and early 7.0 could) is dropped, as pushes between replies are:
/// taken as an element, it ended the `MGET` one element early, and the `MGET`'s last
/// element answered the `GET`, every later reply one request off.
#[tokio::test]
async fn a_push_inside_a_reply_does_not_shift_the_replies() {
    let fake = FakeNode::start(script([
        Step::Expect(vec!["MGET", "a", "b"]),
        Step::Expect(vec!["GET", "c"]),
        Step::Reply(
            b"*2\r\n$1\r\n1\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\na\r\n$1\r\n2\r\n$1\r\n3\r\n",
        ),
        Step::Close,
    ]))
    .await;
    let conn = NodeConnection::connect(&fake.addr, &ConnectOptions::default())
        .await
        .unwrap();
    let replies = conn
        .send_batch(vec![cmd("MGET").arg("a").arg("b"), cmd("GET").arg("c")])
        .await
        .unwrap();
    assert_eq!(
        replies,
        [
            Value::Array(vec![Value::Bulk("1".into()), Value::Bulk("2".into())]),
            Value::Bulk("3".into())
        ]
    );
    fake.finish().await.unwrap();
}

#[tokio::test]
async fn every_in_flight_request_is_answered_when_the_connection_dies() {
    let mut fake = FakeNode::start(script([Step::ReadAny(20), Step::Hold, Step::Close])).await;
    let conn = NodeConnection::connect(&fake.addr, &ConnectOptions::default())
        .await
        .unwrap();
    let requests: Vec<_> = (0..20)
        .map(|i| {
            let conn = conn.clone();
            tokio::spawn(async move { conn.send(cmd("SET").arg(i).arg(i)).await })
        })
        .collect();
    fake.wait_held().await;
    fake.release();
    for r in requests {
        let err = r.await.unwrap().unwrap_err();
        assert!(err.may_have_executed(), "{err:?}");
    }
    assert_eq!(fake.finish().await.unwrap().len(), 21);
}

#[tokio::test]
async fn hello_refused_falls_back_to_auth_on_resp2() {
    let fake = FakeNode::start(vec![
        Step::Expect(vec!["HELLO", "3", "AUTH", "app", "s3cret"]),
        Step::Reply(b"-ERR unknown command 'HELLO', with args beginning with: '3' 'AUTH'\r\n"),
        Step::Expect(vec!["AUTH", "app", "s3cret"]),
        Step::Reply(b"+OK\r\n"),
        Step::Expect(vec!["READONLY"]),
        Step::Reply(b"+OK\r\n"),
        Step::Expect(vec!["PING"]),
        Step::Reply(b"+PONG\r\n"),
    ])
    .await;
    let options = ConnectOptions::default()
        .username("app")
        .password("s3cret")
        .read_only(true);
    let conn = NodeConnection::connect(&fake.addr, &options).await.unwrap();
    assert_eq!(conn.protocol(), Protocol::Resp2);
    assert_eq!(
        conn.send(cmd("PING")).await.unwrap(),
        Value::Simple("PONG".into())
    );
    conn.close();
    fake.finish().await.unwrap();
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_at_connect_time() {
    let fake = FakeNode::start(vec![
        Step::Expect(vec!["HELLO", "3", "AUTH", "default", "not-the-password"]),
        Step::Reply(b"-WRONGPASS invalid username-password pair or user is disabled.\r\n"),
    ])
    .await;
    let options = ConnectOptions::default().password("not-the-password");
    let err = NodeConnection::connect(&fake.addr, &options)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("not-the-password"), "{shown}");
}

#[tokio::test]
async fn a_server_that_quotes_the_password_never_gets_it_into_the_error() {
    // RESP2, so `AUTH` itself, and a server that knows no `AUTH` (renamed or disabled):
    // its error quotes the arguments, the password among them.
    let fake = FakeNode::start(vec![
        Step::Expect(vec!["AUTH", "hunter2-secret"]),
        Step::Reply(
            b"-ERR unknown command 'AUTH', with args beginning with: 'hunter2-secret' \r\n",
        ),
    ])
    .await;
    let options = ConnectOptions::default()
        .protocol(Protocol::Resp2)
        .password("hunter2-secret");
    let err = NodeConnection::connect(&fake.addr, &options)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("does not know AUTH"), "{shown}");

    // Any other refusal that quotes it has it cut out.
    let fake = FakeNode::start(vec![
        Step::Expect(vec!["AUTH", "app", "hunter2-secret"]),
        Step::Reply(b"-WRONGPASS proxy: no user app with password hunter2-secret\r\n"),
    ])
    .await;
    let err = NodeConnection::connect(&fake.addr, &options.clone().username("app"))
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("WRONGPASS"), "{shown}");
}

#[tokio::test]
async fn a_reply_nobody_asked_for_closes_the_connection_after_answering_the_rest() {
    let fake = FakeNode::start(script([
        Step::Expect(vec!["PING"]),
        Step::Reply(b"+PONG\r\n+EXTRA\r\n"),
    ]))
    .await;
    let conn = NodeConnection::connect(&fake.addr, &ConnectOptions::default())
        .await
        .unwrap();
    assert_eq!(
        conn.send(cmd("PING")).await.unwrap(),
        Value::Simple("PONG".into())
    );
    // The fake wrote both replies at once; the reader finds the stray one right after
    // PONG and closes the connection.
    let deadline = Instant::now() + Duration::from_secs(2);
    while !conn.is_closed() {
        assert!(Instant::now() < deadline, "the connection stayed open");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let err = conn.send(cmd("PING")).await.unwrap_err();
    assert!(conn.is_closed());
    assert!(
        matches!(err, Error::ConnectionLost { .. } | Error::Protocol(_)),
        "{err:?}"
    );
}

/// A reply that is no RESP answers its own request with `Error::Protocol` (the cause),
/// not "connection lost"; the connection closes.
#[tokio::test]
async fn a_malformed_reply_is_its_requests_protocol_error() {
    let fake = FakeNode::start(script([
        Step::Expect(vec!["GET", "k"]),
        Step::Reply(b"?not resp\r\n"),
    ]))
    .await;
    let conn = NodeConnection::connect(&fake.addr, &ConnectOptions::default())
        .await
        .unwrap();
    let err = conn.send(cmd("GET").arg("k")).await.unwrap_err();
    assert!(matches!(err, Error::Protocol(_)), "{err:?}");
    assert!(err.may_have_executed());
    assert!(conn.is_closed());
}

#[tokio::test]
async fn silent_server_costs_the_request_its_timeout_and_nothing_more() {
    let fake = FakeNode::start(script([Step::ReadAny(1), Step::Hold])).await;
    let conn = NodeConnection::connect(&fake.addr, &ConnectOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let err = conn
        .send_timeout(cmd("GET").arg("k"), Duration::from_millis(200))
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            Error::Timeout {
                may_have_executed: true
            }
        ),
        "{err:?}"
    );
    assert!(took >= Duration::from_millis(200), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn a_request_that_expires_while_queued_is_never_written() {
    let mut fake = FakeNode::start(script([
        Step::Expect(vec!["GET", "first"]),
        Step::Hold,
        Step::Reply(b"$1\r\n1\r\n"),
        Step::Expect(vec!["GET", "third"]),
        Step::Reply(b"$1\r\n3\r\n"),
    ]))
    .await;
    // One request in flight at most: the second waits in the queue behind the first.
    let options = ConnectOptions::default().max_in_flight(1);
    let conn = NodeConnection::connect(&fake.addr, &options).await.unwrap();
    let first = {
        let conn = conn.clone();
        tokio::spawn(async move {
            conn.send_timeout(cmd("GET").arg("first"), Duration::from_secs(10))
                .await
        })
    };
    fake.wait_held().await;
    let err = conn
        .send_timeout(cmd("GET").arg("second"), Duration::from_millis(100))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Timeout {
                may_have_executed: false
            }
        ),
        "{err:?}"
    );
    fake.release();
    assert_eq!(first.await.unwrap().unwrap(), Value::Bulk("1".into()));
    // The script expects `third` next: `second` would fail the expectation.
    assert_eq!(
        conn.send(cmd("GET").arg("third")).await.unwrap(),
        Value::Bulk("3".into())
    );
    conn.close();
    assert_eq!(fake.finish().await.unwrap(), ["HELLO", "GET", "GET"]);
}

/// A node refusing `HELLO` for now (`LOADING` after a restart) is no server without
/// RESP3: the connect fails, to be tried again, rather than settle for RESP2 on that
/// connection for its whole life.
#[tokio::test]
async fn a_passing_refusal_of_hello_fails_the_connect_instead_of_falling_back_to_resp2() {
    let fake = FakeNode::start(vec![
        Step::Expect(vec!["HELLO", "3"]),
        Step::Reply(b"-LOADING Redis is loading the dataset in memory\r\n"),
    ])
    .await;
    let err = NodeConnection::connect(&fake.addr, &ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Io {
                may_have_executed: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.is_retryable(), "{err:?}");
    assert!(err.to_string().contains("LOADING"), "{err}");
}

#[tokio::test]
async fn no_password_against_a_protected_server_is_an_auth_error() {
    let fake = FakeNode::start(vec![
        Step::Expect(vec!["HELLO", "3"]),
        Step::Reply(b"-NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time\r\n"),
    ])
    .await;
    let err = NodeConnection::connect(&fake.addr, &ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Auth(_)), "{err:?}");
}

/// A node that never answers the TCP handshake (its SYNs dropped) fails the connect
/// once the connect timeout has passed, not sooner and not much later.
#[tokio::test]
async fn unreachable_node_fails_within_the_connect_timeout() {
    let silent = support::silent_addr();
    let addr = silent.addr.clone();
    let timeout = Duration::from_secs(1);
    let options = ConnectOptions::default().connect_timeout(timeout);
    let started = Instant::now();
    let err = NodeConnection::connect(&addr, &options).await.unwrap_err();
    let took = started.elapsed();
    assert!(took >= timeout, "gave up before the timeout: {took:?}");
    assert!(took < timeout + Duration::from_millis(500), "{took:?}");
    assert!(
        matches!(
            err,
            Error::Io {
                may_have_executed: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&addr),
        "the error names the node: {err}"
    );
}

/// A server at `maxclients` writes its refusal on accept and closes: the connect fails,
/// saying nothing was sent, on RESP2 too (whose `PING` probe took the refusal for an
/// answer and handed out the closed connection, to fail its first request after writing
/// it). A real server, its one client slot held.
#[tokio::test]
async fn a_server_at_maxclients_fails_the_connect_on_resp3_and_resp2() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = support::standalone::Standalone::start_on(port, &["--maxclients", "1"]);
    // The start's own probe connection may hold the slot a moment longer.
    let deadline = Instant::now() + Duration::from_secs(5);
    let holder = loop {
        match NodeConnection::connect(&server.addr, &ConnectOptions::default()).await {
            Ok(conn) => break conn,
            Err(e) => assert!(Instant::now() < deadline, "{e:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pong: Value = holder.send(cmd("PING")).await.unwrap();
    assert_eq!(pong, Value::Simple("PONG".into()));
    for protocol in [Protocol::Resp3, Protocol::Resp2] {
        let options = ConnectOptions::default().protocol(protocol);
        let err = NodeConnection::connect(&server.addr, &options)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Io {
                    may_have_executed: false,
                    ..
                }
            ),
            "{protocol:?}: {err:?}"
        );
    }
}

/// A service on the port that is no Redis (an HTTP server) fails the connect as a node
/// failure that ran nothing, not as a `Protocol` error (which says a command may have
/// run).
#[tokio::test]
async fn a_reply_that_is_no_resp_during_the_handshake_says_nothing_ran() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let server = tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        let (mut socket, _) = listener.accept().await.unwrap();
        socket
            .write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
            .await
            .unwrap();
        socket
    });
    let err = NodeConnection::connect(&addr, &ConnectOptions::default())
        .await
        .unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Io {
                may_have_executed: false,
                ..
            }
        ) && !err.may_have_executed(),
        "{err:?}"
    );
    drop(tokio::time::timeout(Duration::from_secs(5), server).await);
}

/// An empty password with no user name is no password, on RESP3 and RESP2 alike (over
/// RESP2, `AUTH ""` was refused by a server without one, and the connect failed with
/// `Auth`, where RESP3's `HELLO 3 AUTH default ""` passed). A real server.
#[tokio::test]
async fn an_empty_password_is_none_on_both_protocols() {
    let server = support::standalone::Standalone::start();
    for protocol in [Protocol::Resp3, Protocol::Resp2] {
        let options = ConnectOptions::default().password("").protocol(protocol);
        let conn = NodeConnection::connect(&server.addr, &options)
            .await
            .unwrap();
        let pong: Value = conn.send(cmd("PING")).await.unwrap();
        assert_eq!(pong, Value::Simple("PONG".into()), "{protocol:?}");
    }
}

/// A refusal whose text holds the password (here the password is a word of the
/// server's own `WRONGPASS invalid username-password pair ...`) is shown by its code
/// alone: the password cut out of it, the words around the cut spelled it
/// (`username-*** pair`). A real server, both protocols.
#[tokio::test]
async fn a_refusal_that_holds_the_password_is_not_shown_around_it() {
    let server =
        support::standalone::Standalone::start_with_args(&["--requirepass", "the-real-one"]);
    for protocol in [Protocol::Resp3, Protocol::Resp2] {
        let options = ConnectOptions::default()
            .password("password")
            .protocol(protocol);
        let err = NodeConnection::connect(&server.addr, &options)
            .await
            .unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(matches!(err, redcluster::Error::Auth(_)), "{shown}");
        assert!(shown.contains("WRONGPASS"), "{shown}");
        assert!(!shown.contains("username-"), "{shown}");
        // A password the reply does not hold leaves it whole.
        let options = ConnectOptions::default()
            .password("zq-81xv")
            .protocol(protocol);
        let err = NodeConnection::connect(&server.addr, &options)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("username-password pair"), "{err}");
    }
}
