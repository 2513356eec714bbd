//! A scripted fake Redis node, for what a real server cannot be made to do on demand: cut
//! a reply mid-frame, refuse `HELLO`, send a reply nobody asked for, stop answering.
//!
//! A script reads like the wire: "expect `GET k`, reply `$1\r\nv\r\n`, then close". The
//! fake listens on 127.0.0.1 only and runs the script on the first connection it accepts;
//! every expectation it checks is reported back through [`FakeNode::finish`].
#![allow(dead_code)]

use bytes::BytesMut;
use redcluster::resp::{Decoder, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// One step of a script.
#[derive(Debug, Clone)]
pub enum Step {
    /// Read one command and check its arguments.
    Expect(Vec<&'static str>),
    /// Read `n` commands without checking them (their names are recorded).
    ReadAny(usize),
    /// Write these bytes.
    Reply(&'static [u8]),
    /// Close the connection.
    Close,
    /// Wait until the test says go (see [`FakeNode::release`]).
    Hold,
}

/// The HELLO 3 exchange every connection starts with.
pub fn hello3() -> Vec<Step> {
    vec![
        Step::Expect(vec!["HELLO", "3"]),
        Step::Reply(b"%1\r\n+proto\r\n:3\r\n"),
    ]
}

pub struct FakeNode {
    pub addr: String,
    task: JoinHandle<Result<Vec<String>, String>>,
    release: Option<oneshot::Sender<()>>,
    held: Option<oneshot::Receiver<()>>,
}

/// The longest a test waits for a script to reach a step or to end: a client that
/// never connects, or never closes, fails the test instead of hanging it.
const SCRIPT_BOUND: std::time::Duration = std::time::Duration::from_secs(10);

impl FakeNode {
    /// Starts listening and runs `script` on the first connection.
    pub async fn start(script: Vec<Step>) -> FakeNode {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let (release, released) = oneshot::channel();
        let (hold, held) = oneshot::channel();
        let task = tokio::spawn(run(listener, script, released, hold));
        FakeNode {
            addr,
            task,
            release: Some(release),
            held: Some(held),
        }
    }

    /// Waits until the script reaches its [`Step::Hold`]: everything before it was read.
    /// Panics after [`SCRIPT_BOUND`] rather than hang the test.
    pub async fn wait_held(&mut self) {
        if let Some(held) = self.held.take() {
            tokio::time::timeout(SCRIPT_BOUND, held)
                .await
                .expect("the script reached its Hold step in time")
                .expect("the script reached its Hold step");
        }
    }

    /// Lets a [`Step::Hold`] continue.
    pub fn release(&mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the script to end; returns the names of all commands it read, or what
    /// did not match (or that it did not end within [`SCRIPT_BOUND`]).
    pub async fn finish(self) -> Result<Vec<String>, String> {
        match tokio::time::timeout(SCRIPT_BOUND, self.task).await {
            Ok(ended) => ended.map_err(|e| e.to_string())?,
            Err(_) => Err(format!("the script did not end within {SCRIPT_BOUND:?}")),
        }
    }
}

async fn run(
    listener: TcpListener,
    script: Vec<Step>,
    mut released: oneshot::Receiver<()>,
    hold: oneshot::Sender<()>,
) -> Result<Vec<String>, String> {
    let mut hold = Some(hold);
    let (mut socket, _) = listener.accept().await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::new();
    let mut decoder = Decoder::new();
    let mut seen = Vec::new();
    for step in script {
        match step {
            Step::Expect(want) => {
                let got = read_command(&mut socket, &mut buf, &mut decoder).await?;
                seen.push(got.first().cloned().unwrap_or_default());
                if got != want {
                    return Err(format!("expected {want:?}, got {got:?}"));
                }
            }
            Step::ReadAny(n) => {
                for _ in 0..n {
                    let got = read_command(&mut socket, &mut buf, &mut decoder).await?;
                    seen.push(got.join(" "));
                }
            }
            Step::Reply(bytes) => socket.write_all(bytes).await.map_err(|e| e.to_string())?,
            Step::Close => return Ok(seen),
            Step::Hold => {
                if let Some(hold) = hold.take() {
                    let _ = hold.send(());
                }
                let _ = (&mut released).await;
            }
        }
    }
    // Keep the connection open until the client closes it, so the script's end is not
    // mistaken for a server crash.
    let mut rest = [0u8; 1024];
    while let Ok(n) = socket.read(&mut rest).await {
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&rest[..n]);
        while let Ok(Some(Value::Array(args))) = decoder.decode(&mut buf) {
            seen.push(args_text(args).join(" "));
        }
    }
    Ok(seen)
}

async fn read_command(
    socket: &mut tokio::net::TcpStream,
    buf: &mut BytesMut,
    decoder: &mut Decoder,
) -> Result<Vec<String>, String> {
    loop {
        match decoder.decode(buf).map_err(|e| e.to_string())? {
            Some(Value::Array(args)) => return Ok(args_text(args)),
            Some(other) => return Err(format!("client sent a non-command {other:?}")),
            None => {}
        }
        let n = socket.read_buf(buf).await.map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("client closed the connection".into());
        }
    }
}

fn args_text(args: Vec<Value>) -> Vec<String> {
    args.into_iter()
        .map(|a| match a {
            Value::Bulk(b) => String::from_utf8_lossy(&b).into_owned(),
            other => format!("{other:?}"),
        })
        .collect()
}
