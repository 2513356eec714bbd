//! One subscriber connection: a task that owns the socket, writes the commands the
//! subscriber's task hands it and forwards every frame it reads, parsed.
//!
//! It does no request/reply matching: in RESP3 the replies to `SUBSCRIBE` and friends
//! are push frames, not replies, and in RESP2 a subscribed connection only sends
//! `["message", ...]`-style arrays. Both arrive here as the same [`Frame`]s; the
//! subscriber's task matches confirmations and error replies to what it sent.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

use crate::cmd::Cmd;
use crate::conn::{
    connect_raw, is_large, leave_large_buffer, make_room, read_ended, ConnectOptions, RawConnection,
};
use crate::error::{Error, ServerError};
use crate::resp::Value;

/// Read buffer growth step.
const READ_CHUNK: usize = 16 * 1024;

/// The three kinds of subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    /// `SUBSCRIBE` / `UNSUBSCRIBE`.
    Channel,
    /// `PSUBSCRIBE` / `PUNSUBSCRIBE`.
    Pattern,
    /// `SSUBSCRIBE` / `SUNSUBSCRIBE`.
    Shard,
}

impl Kind {
    pub(crate) fn subscribe_cmd(self) -> &'static str {
        match self {
            Kind::Channel => "SUBSCRIBE",
            Kind::Pattern => "PSUBSCRIBE",
            Kind::Shard => "SSUBSCRIBE",
        }
    }

    pub(crate) fn unsubscribe_cmd(self) -> &'static str {
        match self {
            Kind::Channel => "UNSUBSCRIBE",
            Kind::Pattern => "PUNSUBSCRIBE",
            Kind::Shard => "SUNSUBSCRIBE",
        }
    }
}

/// A frame read from a subscriber connection.
#[derive(Debug)]
pub(crate) enum Frame {
    /// `message`, `pmessage` or `smessage`.
    Message {
        channel: Bytes,
        payload: Bytes,
        pattern: Option<Bytes>,
        sharded: bool,
    },
    /// A (un)subscribe confirmation, asked for or not (`sunsubscribe` when a slot moved
    /// away). `channel` is `None` for an unsubscribe-all with nothing subscribed.
    Confirm {
        kind: Kind,
        subscribe: bool,
        channel: Option<Bytes>,
    },
    /// The answer to `PING` (`+PONG`, or `["pong", ""]` in RESP2 subscribed mode).
    Pong,
    /// An error reply (`MOVED`, `CLUSTERDOWN`, `NOPERM`, ...) to the oldest command not
    /// yet answered.
    Error(ServerError),
    /// Anything else; not expected.
    Other(Value),
}

fn bytes_of(value: Value) -> Option<Bytes> {
    match value {
        Value::Bulk(b) | Value::Simple(b) => Some(b),
        Value::Verbatim { text, .. } => Some(text),
        _ => None,
    }
}

/// Parses one decoded value, RESP2 or RESP3.
pub(crate) fn parse(value: Value) -> Frame {
    let items = match value.without_attributes() {
        Value::Push(items) | Value::Array(items) => items,
        Value::ServerError(e) => return Frame::Error(e),
        Value::Simple(s) if s.eq_ignore_ascii_case(b"pong") => return Frame::Pong,
        other => return Frame::Other(other),
    };
    let Some(name) = items.first().and_then(Value::as_bytes) else {
        return Frame::Other(Value::Array(items));
    };
    let name = name.to_ascii_lowercase();
    let confirm = |kind: Kind, subscribe: bool| (kind, subscribe);
    let (kind, subscribe) = match name.as_slice() {
        b"message" | b"smessage" if items.len() == 3 => {
            let sharded = name.as_slice() == b"smessage";
            let mut it = items.into_iter().skip(1);
            let channel = it.next().and_then(bytes_of).unwrap_or_default();
            let payload = it.next().and_then(bytes_of).unwrap_or_default();
            return Frame::Message {
                channel,
                payload,
                pattern: None,
                sharded,
            };
        }
        b"pmessage" if items.len() == 4 => {
            let mut it = items.into_iter().skip(1);
            let pattern = it.next().and_then(bytes_of);
            let channel = it.next().and_then(bytes_of).unwrap_or_default();
            let payload = it.next().and_then(bytes_of).unwrap_or_default();
            return Frame::Message {
                channel,
                payload,
                pattern,
                sharded: false,
            };
        }
        b"pong" => return Frame::Pong,
        b"subscribe" => confirm(Kind::Channel, true),
        b"psubscribe" => confirm(Kind::Pattern, true),
        b"ssubscribe" => confirm(Kind::Shard, true),
        b"unsubscribe" => confirm(Kind::Channel, false),
        b"punsubscribe" => confirm(Kind::Pattern, false),
        b"sunsubscribe" => confirm(Kind::Shard, false),
        _ => return Frame::Other(Value::Array(items)),
    };
    let channel = items.into_iter().nth(1).and_then(bytes_of);
    Frame::Confirm {
        kind,
        subscribe,
        channel,
    }
}

/// What a link reports to the subscriber's task.
#[derive(Debug)]
pub(crate) enum LinkEvent {
    /// The connection is open, its handshake done: from now on it can answer a `PING`.
    Up { id: u64 },
    /// A frame, in the order read.
    Frame { id: u64, frame: Frame },
    /// The connection could not be opened, or died; nothing more comes from this link.
    Down { id: u64, error: Error },
}

/// The subscriber task's handle on one link. Dropping it closes the connection (the
/// server then drops every subscription it held).
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) addr: Arc<str>,
    commands: mpsc::UnboundedSender<Cmd>,
    task: tokio::task::AbortHandle,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Link {
    /// Starts a link to `addr`: connects and handshakes in the background; commands sent
    /// meanwhile are written once the handshake is done.
    pub(crate) fn open(
        id: u64,
        addr: Arc<str>,
        options: ConnectOptions,
        events: mpsc::Sender<LinkEvent>,
    ) -> Link {
        let (commands, rx) = mpsc::unbounded_channel();
        let span = tracing::debug_span!("redis_subscriber_connection", node = %addr, id);
        let task = tokio::spawn(tracing::Instrument::instrument(
            drive(id, Arc::clone(&addr), options, rx, events),
            span,
        ));
        Link {
            addr,
            commands,
            task: task.abort_handle(),
        }
    }

    /// Hands `command` to the link's task; it is written in order, fire-and-forget: what
    /// it causes comes back as frames.
    pub(crate) fn send(&self, command: Cmd) {
        // A dead task has reported (or will report) `Down`; the command is moot then.
        let _ = self.commands.send(command);
    }
}

async fn drive(
    id: u64,
    addr: Arc<str>,
    options: ConnectOptions,
    mut commands: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::Sender<LinkEvent>,
) {
    let raw = match connect_raw(&addr, &options).await {
        Ok(raw) => raw,
        Err(error) => {
            tracing::debug!(%error, "subscriber connection failed");
            let _ = events.send(LinkEvent::Down { id, error }).await;
            return;
        }
    };
    let RawConnection {
        mut read,
        mut write,
        mut rbuf,
        mut decoder,
        protocol,
    } = raw;
    tracing::debug!(?protocol, "subscriber connection open");
    if events.send(LinkEvent::Up { id }).await.is_err() {
        return; // the subscriber is gone
    }
    let renames = options.renames;
    let mut wbuf = BytesMut::with_capacity(1024);
    // A large message grew the buffer: given up once it is out (see `make_room`).
    let mut large = false;
    let error = 'outer: loop {
        large |= is_large(&rbuf);
        // Frames may already sit in the buffer from the handshake's last read.
        loop {
            match decoder.decode(&mut rbuf) {
                Ok(Some(mut value)) => {
                    leave_large_buffer(&mut rbuf, &mut large, READ_CHUNK);
                    // A refused (P|S)SUBSCRIBE quotes the name it was sent, maybe a secret.
                    renames.scrub(&mut value);
                    let frame = parse(value);
                    if events.send(LinkEvent::Frame { id, frame }).await.is_err() {
                        return; // the subscriber is gone
                    }
                }
                Ok(None) => break,
                Err(e) => break 'outer e,
            }
        }
        make_room(&mut rbuf, &mut large, READ_CHUNK);
        tokio::select! {
            command = commands.recv() => {
                let Some(command) = command else {
                    return; // the link was dropped: close the connection
                };
                renames.write(&command, &mut wbuf);
                while let Ok(command) = commands.try_recv() {
                    renames.write(&command, &mut wbuf);
                }
                let written = async {
                    write.write_all(&wbuf).await?;
                    write.flush().await
                };
                if let Err(e) = written.await {
                    break Error::io(e, true);
                }
                wbuf.clear();
            }
            n = read.read_buf(&mut rbuf) => if let Some(error) = read_ended(n) {
                break error;
            },
        }
    };
    tracing::debug!(%error, "subscriber connection lost");
    let _ = events.send(LinkEvent::Down { id, error }).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::Bulk(Bytes::copy_from_slice(s.as_bytes()))
    }

    #[test]
    fn parses_resp3_pushes_and_resp2_arrays_alike() {
        for wrap in [Value::Push as fn(Vec<Value>) -> Value, Value::Array] {
            match parse(wrap(vec![bulk("smessage"), bulk("ch"), bulk("hi")])) {
                Frame::Message {
                    channel,
                    payload,
                    pattern: None,
                    sharded: true,
                } => assert_eq!((&channel[..], &payload[..]), (&b"ch"[..], &b"hi"[..])),
                other => panic!("{other:?}"),
            }
            match parse(wrap(vec![
                bulk("pmessage"),
                bulk("l.*"),
                bulk("l.a"),
                bulk("x"),
            ])) {
                Frame::Message {
                    pattern: Some(p),
                    sharded: false,
                    ..
                } => assert_eq!(&p[..], b"l.*"),
                other => panic!("{other:?}"),
            }
            assert!(matches!(
                parse(wrap(vec![bulk("sunsubscribe"), bulk("ch"), Value::Int(0)])),
                Frame::Confirm {
                    kind: Kind::Shard,
                    subscribe: false,
                    channel: Some(_)
                }
            ));
            assert!(matches!(
                parse(wrap(vec![bulk("unsubscribe"), Value::Nil, Value::Int(0)])),
                Frame::Confirm {
                    kind: Kind::Channel,
                    subscribe: false,
                    channel: None
                }
            ));
            assert!(matches!(
                parse(wrap(vec![bulk("pong"), bulk("")])),
                Frame::Pong
            ));
        }
        assert!(matches!(
            parse(Value::Simple(Bytes::from_static(b"PONG"))),
            Frame::Pong
        ));
        assert!(matches!(
            parse(Value::ServerError(ServerError::new(
                "MOVED 1 127.0.0.1:7000"
            ))),
            Frame::Error(_)
        ));
    }
}
