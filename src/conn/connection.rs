//! A multiplexed connection to one node: a cheap cloneable handle and two tasks that own
//! the socket.
//!
//! Callers hand requests to the writer task through a bounded queue, encoding their
//! commands into the queue's buffer as they do. The writer takes every request waiting
//! at that moment with their bytes (the two buffers trade places: nothing is copied) and
//! writes them with one system call (auto-pipelining), after recording them, in order,
//! in the in-flight queue. The commands themselves stay with their callers, who need
//! them only to send them again (after a redirect): what travels through the queues is
//! a few words per request. The reader task decodes replies and answers the in-flight
//! queue front to back: Redis answers requests on a connection in the order it received
//! them.
//!
//! While the server owes the replies of one write, the writer holds the next back, and
//! writes what gathered in the meantime as soon as those replies are in (or at once when
//! a full write's worth is queued). A lone request is written at once. Under load this
//! makes writes 1.5 to 2.5 times larger. On loopback the `send`s were a fifth to a third
//! of the client's CPU (the kernel runs the receiving side, and wakes the server, inside
//! the sender's call), and every batch saved spares the server a read and a write too.
//! The price: a request sent while another write is unanswered waits for that write's
//! replies first, at most one round trip more, while the server works on the earlier
//! requests anyway.
//!
//! At one request at a time the writer stays out of the way: a reply wakes it only when
//! a request is queued or `max_in_flight` was reached (else the caller's next request
//! does), and it lets the woken callers run first only after a write of several
//! requests. Waking it for nothing cost a second worker thread's wake-up and two idle
//! polls of the I/O driver per request: at 1 request in flight, 1.7 `futex` calls and 3
//! `epoll_wait`s per request before, none and 1 after, and 38 % less CPU per request.
//!
//! Deadlines are kept by the connection, not by each caller: a third task sleeps until
//! the earliest deadline of the requests it holds (queued or written) and answers those
//! whose deadline passed with [`Error::Timeout`] (`may_have_executed: false` for one
//! still queued, `true` for one written). One timer per connection instead of
//! one per request: registering and cancelling a timer per request was about a tenth of
//! the client's CPU under load. A written request that timed out keeps its place in the
//! in-flight queue, so that its late reply still lines up, and is answered only once.
//!
//! A connection the server stops answering is closed: once the oldest written request
//! the server owes replies to has timed out, and the server then sent no byte for
//! `unresponsive_timeout` (counted from that request's write or the last byte read,
//! whichever came later), the deadline task closes it, and the client opens a new one.
//! A flow that died silently (a NAT or a firewall forgot it, a peer gone without a
//! reset) gives no error at all: TCP retransmits unacknowledged data for about 15
//! minutes on Linux before it gives up, and keepalive probes only an idle connection.
//! Only after a timeout: a command that runs long within its deadline (a script under a
//! long response timeout) is no sign of a dead connection.
//!
//! When the connection dies, every request still queued is answered with
//! [`Error::ConnectionLost`] `{ may_have_executed: false }` and every request already
//! written with `may_have_executed: true`. None is left waiting.

use std::collections::VecDeque;
use std::future::Future as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::{Buf, BytesMut};
use smallvec::SmallVec;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::cmd::{Cmd, CommandRenames, Refusal};
use crate::conn::options::{ConnectOptions, Protocol};
use crate::conn::reply::{self, ReplyReceiver, ReplySender};
use crate::conn::{handshake, tls};
use crate::error::{Error, Result};
use crate::resp::{Decoder, Value};

/// How long the writer tries to shut its half down cleanly before dropping the socket.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// How long the deadline task waits, once it found a server silent past
/// `unresponsive_timeout`, before it closes the connection if nothing came meanwhile.
/// After a stall of this process (a starved runtime, a paused VM, a debugger) the
/// deadline task may run before the reader, with the replies already in the socket:
/// the reader gets to run first.
const SILENCE_RECHECK: std::time::Duration = std::time::Duration::from_millis(100);

/// Most requests the writer takes from the queue for one write.
const WRITE_BATCH: usize = 512;
/// How many times the writer lets other tasks run after replies came, before it takes
/// the requests queued (see `write_loop`).
const WRITER_YIELDS: usize = 2;
/// Read buffer growth step: room made before each read.
const READ_CHUNK: usize = 64 * 1024;
/// A read buffer larger than this, with less than a chunk in it, is given up for a new
/// one (see `read_loop`).
const MAX_IDLE_READ_BUFFER: usize = 4 * 1024 * 1024;

/// Whether a read buffer grew past [`MAX_IDLE_READ_BUFFER`] (for a large reply or
/// message): the reader keeps that in a sticky flag for [`make_room`], since the
/// buffer's `capacity` is the room left from where it stands, which no longer shows it
/// once the large frame is split off.
pub(crate) fn is_large(rbuf: &BytesMut) -> bool {
    rbuf.capacity() > MAX_IDLE_READ_BUFFER
}

/// Once a large frame is out (`large`, and less than `chunk` left), moves what is left
/// of the buffer to a new one: the frame is a slice of the buffer's allocation, so
/// reading on in the old one would keep the whole allocation alive after its reader
/// dropped the frame, and `reserve` would take it back to keep (a 256 MB value or
/// message read once would hold 256 MB for the connection's life). Called after each
/// frame taken out, not only before the next read: the frames that came in the large
/// one's last read (other callers' small replies) would be slices of it too, and a
/// caller that kept one (a cached `Bytes`) would keep the whole allocation.
pub(crate) fn leave_large_buffer(rbuf: &mut BytesMut, large: &mut bool, chunk: usize) {
    if *large && rbuf.len() < chunk {
        let mut fresh = BytesMut::with_capacity(chunk);
        fresh.extend_from_slice(rbuf);
        *rbuf = fresh;
        *large = false;
    }
}

/// Makes room in a read buffer before the next read, `chunk` at a time, in a new one
/// once a large frame is out ([`leave_large_buffer`]).
pub(crate) fn make_room(rbuf: &mut BytesMut, large: &mut bool, chunk: usize) {
    leave_large_buffer(rbuf, large, chunk);
    if rbuf.capacity() - rbuf.len() < chunk / 4 {
        rbuf.reserve(chunk);
    }
}

/// What a request sends: one command, or several that must be written back to back
/// (`ASKING` + command, `MULTI` ... `EXEC`, an explicit pipeline).
#[derive(Debug)]
pub(crate) enum Cmds {
    One(Cmd),
    Many(Vec<Cmd>),
}

impl Cmds {
    fn reply_count(&self) -> usize {
        match self {
            Cmds::One(_) => 1,
            Cmds::Many(cmds) => cmds.len(),
        }
    }

    fn iter(&self) -> std::slice::Iter<'_, Cmd> {
        match self {
            Cmds::One(cmd) => std::slice::from_ref(cmd).iter(),
            Cmds::Many(cmds) => cmds.iter(),
        }
    }

    /// Where the first `MULTI` of a batch is, and the `EXEC` (or `DISCARD`) that ends it:
    /// see [`left_in_multi`].
    fn first_transaction(&self) -> Option<Transaction> {
        let Cmds::Many(cmds) = self else {
            return None; // a lone `MULTI` is refused on a shared connection
        };
        let multi = cmds
            .iter()
            .position(|c| c.name().eq_ignore_ascii_case(b"MULTI"))?;
        let end = cmds[multi + 1..].iter().position(|c| {
            c.name().eq_ignore_ascii_case(b"EXEC") || c.name().eq_ignore_ascii_case(b"DISCARD")
        })?;
        let watch = cmds[..multi]
            .iter()
            .rposition(|c| c.name().eq_ignore_ascii_case(b"WATCH"));
        Some(Transaction {
            multi: u32::try_from(multi).ok()?,
            end: u32::try_from(multi + 1 + end).ok()?,
            watch: watch.and_then(|w| u32::try_from(w).ok()),
        })
    }

    /// The commands, in the order they are written.
    pub(crate) fn into_vec(self) -> Vec<Cmd> {
        match self {
            Cmds::One(cmd) => vec![cmd],
            Cmds::Many(cmds) => cmds,
        }
    }
}

/// The replies to one request; one reply is kept inline (no allocation).
pub(crate) type Replies = SmallVec<[Value; 1]>;

/// A request's answer: the reply (or replies, for [`Cmds::Many`]) and the commands,
/// handed back so a caller can resend them after a redirect without having cloned them.
#[derive(Debug)]
pub(crate) struct Answer {
    pub(crate) result: Result<Replies>,
    pub(crate) cmds: Cmds,
    /// With a failed `result`, the replies that came before it: the server answered
    /// the first of several commands before the connection failed or the deadline
    /// passed. Those ran, in order; only the others may or may not have.
    pub(crate) received: Vec<Value>,
}

impl Answer {
    /// The answer of a request that got no reply.
    pub(crate) fn failed(error: Error, cmds: Cmds) -> Answer {
        Answer {
            result: Err(error),
            cmds,
            received: Vec::new(),
        }
    }
}

/// What the connection's tasks hand a request's caller: its replies, or why there are
/// none. The caller still holds the commands.
pub(crate) type Outcome = Result<Replies>;

/// What the connection's tasks hand over: [`Outcome`], with a failure the replies that
/// came before it ([`Answer::received`]).
pub(crate) type Delivery = std::result::Result<Replies, Failed>;

/// A request's failure, and the replies it got before it (a `Vec`, empty without an
/// allocation: the failure rides the same cell as every reply, which stays small).
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: Error,
    pub(crate) received: Vec<Value>,
}

impl From<Error> for Failed {
    fn from(error: Error) -> Failed {
        Failed {
            error,
            received: Vec::new(),
        }
    }
}

/// A request handed over, not yet written. Its commands are already encoded in
/// [`Queue::bytes`].
struct Request {
    reply: ReplySender,
    deadline: Instant,
    /// How many bytes its commands take in the queue's buffer.
    len: usize,
    /// How many replies it gets.
    expected: usize,
    transaction: Option<Transaction>,
}

/// The positions in a batch of its first `MULTI`, of the `EXEC` or `DISCARD` that
/// ends that transaction, and of the last `WATCH` before it, if any.
#[derive(Debug, Clone, Copy)]
struct Transaction {
    multi: u32,
    end: u32,
    watch: Option<u32>,
}

/// Whether the server was left inside a transaction by a batch whose `MULTI` it took
/// and whose `EXEC`/`DISCARD` it refused without ending the transaction: it then queues
/// every later command on the connection, other callers' too, answering `QUEUED` (a
/// `SET` that never runs reads as done). So it does with an `EXEC` or `DISCARD` it does
/// not know (renamed or disabled on the node, the client not told), a `DISCARD` an ACL
/// refuses, and on Redis 6.0 any refused `EXEC`. The refusals that do end it: an
/// `EXEC` refused since 6.2 (`EXECABORT`), and the cluster's refusals of an `EXEC`
/// (`MOVED`, `ASK`, `TRYAGAIN`, `CLUSTERDOWN`: the transaction is discarded).
fn left_in_multi(replies: &Replies, transaction: Transaction) -> bool {
    const ENDED: [&str; 5] = ["EXECABORT", "MOVED", "ASK", "TRYAGAIN", "CLUSTERDOWN"];
    let at = |i: u32| usize::try_from(i).ok().and_then(|i| replies.get(i));
    taken(replies, transaction.multi)
        && matches!(at(transaction.end), Some(Value::ServerError(e)) if !ENDED.contains(&e.code()))
}

/// Whether the server was left watching keys by a batch whose `WATCH` it took and whose
/// `MULTI` it refused (an ACL user without `+multi`, `MULTI` renamed): the "EXEC without
/// MULTI" that follows unwatches nothing, and every later transaction on the
/// connection, another caller's too, would abort (a nil `EXEC`) when those keys change.
fn left_watching(replies: &Replies, transaction: Transaction) -> bool {
    transaction.watch.is_some_and(|w| taken(replies, w)) && !taken(replies, transaction.multi)
}

/// Whether the reply at `position` of `replies` is `OK`.
fn taken(replies: &Replies, position: u32) -> bool {
    let reply = usize::try_from(position).ok().and_then(|i| replies.get(i));
    matches!(reply, Some(Value::Simple(ok)) if ok.eq_ignore_ascii_case(b"OK"))
}

/// Requests handed over by callers, not yet taken by the writer.
#[derive(Default)]
struct Queue {
    requests: VecDeque<Request>,
    /// The commands of `requests`, encoded back to back in the same order.
    bytes: BytesMut,
}

/// A request written to the socket, waiting for its replies.
struct InFlight {
    /// `None` once the request was answered with a timeout: its replies are still owed
    /// by the server, and dropped when they come.
    reply: Option<ReplySender>,
    deadline: Instant,
    /// When it was written, in nanoseconds since [`Shared::epoch`].
    written: u64,
    replies: Replies,
    expected: usize,
    transaction: Option<Transaction>,
}

/// State the tasks and the handles share. The writer takes each lock once per write
/// batch, the reader once per read; a caller takes the queue's once per request.
struct Shared {
    /// Requests handed over by callers, not yet taken by the writer.
    queue: Mutex<Queue>,
    /// Written requests not yet answered by the server. With one write in flight at a
    /// time, they are all of the last write.
    in_flight: Mutex<VecDeque<InFlight>>,
    closed: AtomicBool,
    /// Whether a caller has reported this connection's failure
    /// ([`NodeConnection::first_to_report_failure`]).
    failure_reported: AtomicBool,
    /// Wakes every task when the connection closes.
    close: Notify,
    /// Wakes the writer when the reader's answers let it write: the last write is all
    /// answered and a request is queued, or there is room under `max_in_flight` again.
    /// Also on close.
    room: Notify,
    /// Wakes the writer when the queue stops being empty, and when it holds a full
    /// write's worth.
    work: Notify,
    /// Wakes callers waiting for room in a full queue (see [`Shared::wake_for_space`]).
    space: Notify,
    /// How many callers wait for room (counted before they look at the queue).
    waiting_for_space: AtomicUsize,
    /// How many times a caller found the queue full and waited.
    #[cfg(test)]
    waits_for_space: AtomicUsize,
    /// Wakes the deadline task when a request brings an earlier deadline than it sleeps
    /// until.
    sooner: Notify,
    /// The earliest deadline the deadline task knows of, in nanoseconds since `epoch`
    /// (`u64::MAX`: none). Never later than the earliest deadline held.
    next_deadline: AtomicU64,
    /// When the reader last answered a request within its deadline, in nanoseconds
    /// since `epoch` (0: not yet). A request that timed out while others were answered
    /// in time was held up by this client's load or its own short deadline, not by the
    /// node ([`NodeConnection::answered_since`]).
    last_reply: AtomicU64,
    /// When the reader last read any byte, in nanoseconds since `epoch`.
    last_heard: AtomicU64,
    /// How long the server may stay silent while it owes replies to a request that timed
    /// out before the connection is closed (see the module docs); `None`: never.
    unresponsive_timeout: Option<std::time::Duration>,
    /// When the deadline task found the server silent past `unresponsive_timeout`, in
    /// nanoseconds since `epoch` (0: it did not): it closes the connection only if the
    /// silence still holds [`SILENCE_RECHECK`] later.
    silence_noticed: AtomicU64,
    epoch: Instant,
    max_in_flight: usize,
}

impl Shared {
    fn new(max_in_flight: usize, unresponsive_timeout: Option<std::time::Duration>) -> Shared {
        Shared {
            queue: Mutex::new(Queue::default()),
            in_flight: Mutex::new(VecDeque::new()),
            closed: AtomicBool::new(false),
            failure_reported: AtomicBool::new(false),
            close: Notify::new(),
            room: Notify::new(),
            work: Notify::new(),
            space: Notify::new(),
            waiting_for_space: AtomicUsize::new(0),
            #[cfg(test)]
            waits_for_space: AtomicUsize::new(0),
            sooner: Notify::new(),
            next_deadline: AtomicU64::new(u64::MAX),
            last_reply: AtomicU64::new(0),
            last_heard: AtomicU64::new(0),
            unresponsive_timeout,
            silence_noticed: AtomicU64::new(0),
            epoch: Instant::now(),
            max_in_flight,
        }
    }

    /// Marks the connection dead, answers every queued request (never written) and every
    /// written one. Idempotent.
    fn close(&self, error: &Error) {
        self.close_failing(error, |position| match error {
            // A reply that is no RESP, or over the decoder's limits, was the first
            // request's: it gets the cause; the others, the connection's loss.
            Error::Protocol(_) if position == 0 => error.clone(),
            _ => lost_after_write(error),
        });
    }

    /// [`Shared::close`], failing the written requests with `written(position)`.
    fn close_failing(&self, error: &Error, written: impl Fn(usize) -> Error) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        tracing::debug!(%error, "connection closed");
        // `enqueue` checks `closed` under the queue's lock: nothing is queued after this.
        let unsent: Vec<Request> = {
            let mut queue = lock(&self.queue);
            queue.bytes.clear();
            queue.requests.drain(..).collect()
        };
        fail_unsent(unsent.into_iter().map(|r| r.reply));
        let drained: Vec<InFlight> = self.in_flight().drain(..).collect();
        for (position, entry) in drained.into_iter().enumerate() {
            if let Some(reply) = entry.reply {
                let error = written(position);
                let received = entry.replies.into_vec();
                let _ = reply.send(Err(Failed { error, received }));
            }
        }
        self.close.notify_waiters();
        self.room.notify_one();
        self.space.notify_waiters();
    }

    /// Wakes as many callers waiting for room in the queue as `freed` places: each takes
    /// a place, or waits again if another caller took it first. Waking them all for each
    /// write made a wait quadratic: a large pipeline of keyless commands is thousands of
    /// requests waiting on one connection, and each write of up to [`WRITE_BATCH`] woke
    /// every one of them to find the queue full again. (A woken waiter that gives up
    /// hands its turn on: see `Notify::notify_one`.)
    fn wake_for_space(&self, freed: usize) {
        // Read after the places were freed (under the queue's lock): a caller counted
        // later looks at the queue after that, and finds the room itself.
        let waiting = self.waiting_for_space.load(Ordering::Acquire);
        for _ in 0..freed.min(waiting) {
            self.space.notify_one();
        }
    }

    /// Queues `cmds` for the writer, encoded, unless the queue is full or the connection
    /// closed; returns where the answer will come.
    fn enqueue(
        &self,
        cmds: &Cmds,
        renames: &CommandRenames,
        deadline: Instant,
    ) -> std::result::Result<ReplyReceiver, Refused> {
        // Made before taking the lock, which other callers and the writer wait for.
        let (reply, answer) = reply::channel();
        let transaction = cmds.first_transaction();
        {
            let mut queue = lock(&self.queue);
            if self.is_closed() {
                return Err(Refused::Closed);
            }
            let Queue { requests, bytes } = &mut *queue;
            if requests.len() >= self.max_in_flight {
                return Err(Refused::Full);
            }
            let start = bytes.len();
            encode(cmds, renames, bytes);
            requests.push_back(Request {
                reply,
                deadline,
                len: bytes.len() - start,
                expected: cmds.reply_count(),
                transaction,
            });
            // Only the first request wakes the writer: it takes all that are queued. One
            // that fills a write wakes it too, as a writer holding back for replies
            // (`wait_for_turn`) writes a full one at once.
            if requests.len() == 1 || requests.len() == WRITE_BATCH.min(self.max_in_flight) {
                self.work.notify_one();
            }
        }
        self.note_deadline(deadline);
        Ok(answer)
    }

    /// Makes sure the deadline task wakes by `deadline`. With one timeout for every
    /// request, deadlines come in increasing order and this is one atomic load.
    fn note_deadline(&self, deadline: Instant) {
        let nanos = self.nanos(deadline);
        if nanos < self.next_deadline.load(Ordering::Acquire) {
            self.next_deadline.fetch_min(nanos, Ordering::AcqRel);
            self.sooner.notify_one();
        }
    }

    fn nanos(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX - 1)
    }

    /// Answers with [`Error::Timeout`] (unsent for a queued one) every request held
    /// whose deadline is `now` or earlier, and sets `next_deadline` to the earliest of
    /// the others. Closes the connection when the server has been silent too long (see
    /// the module docs).
    fn expire(&self, now: Instant) {
        // Reset first: a deadline noted while this scans is kept by `fetch_min` below.
        self.next_deadline.store(u64::MAX, Ordering::Release);
        let mut next: Option<Instant> = None;
        let mut later = |d: Instant| next = Some(next.map_or(d, |n| n.min(d)));
        // Each with the replies received in time and whether it was written.
        let mut expired: Vec<(ReplySender, Vec<Value>, bool)> = Vec::new();
        {
            let mut queue = lock(&self.queue);
            let Queue { requests, bytes } = &mut *queue;
            let before = requests.len();
            let mut kept = VecDeque::with_capacity(before);
            let mut cut = Compaction::default();
            for request in requests.drain(..) {
                let due = request.deadline <= now;
                cut.step(bytes, request.len, !due);
                if due {
                    expired.push((request.reply, Vec::new(), false));
                } else {
                    later(request.deadline);
                    kept.push_back(request);
                }
            }
            cut.finish(bytes);
            *requests = kept;
            let freed = before - requests.len();
            drop(queue);
            self.wake_for_space(freed);
        }
        let unresponsive = {
            let mut in_flight = self.in_flight();
            for entry in in_flight.iter_mut() {
                if entry.reply.is_none() {
                    continue;
                }
                if entry.deadline > now {
                    later(entry.deadline);
                } else if let Some(reply) = entry.reply.take() {
                    // The caller gets the replies that came in time; the entry stays,
                    // owed the rest, so that its late ones line up. A transaction's
                    // replies stay too (copies go to the caller): whether its end left
                    // the connection inside it is read from them by position.
                    let received = if entry.transaction.is_some() {
                        entry.replies.to_vec()
                    } else {
                        let received = std::mem::take(&mut entry.replies).into_vec();
                        entry.expected -= received.len();
                        received
                    };
                    expired.push((reply, received, true));
                }
            }
            // The oldest request the server owes replies to timed out: how long has the
            // server been silent since it was written?
            match (in_flight.front(), self.unresponsive_timeout) {
                (Some(oldest), Some(limit)) if oldest.reply.is_none() => {
                    let due = self.silence_due(oldest, limit);
                    let noticed = self.silence_noticed.load(Ordering::Relaxed);
                    if due > now {
                        self.silence_noticed.store(0, Ordering::Relaxed);
                        later(due);
                        None
                    } else if noticed == 0 {
                        let at = self.nanos(now).max(1);
                        self.silence_noticed.store(at, Ordering::Relaxed);
                        later(now + SILENCE_RECHECK);
                        None
                    } else {
                        let recheck =
                            self.epoch + std::time::Duration::from_nanos(noticed) + SILENCE_RECHECK;
                        if recheck <= now {
                            Some(limit)
                        } else {
                            later(recheck);
                            None
                        }
                    }
                }
                _ => {
                    self.silence_noticed.store(0, Ordering::Relaxed);
                    None
                }
            }
        };
        if let Some(next) = next {
            self.next_deadline
                .fetch_min(self.nanos(next), Ordering::AcqRel);
        }
        for (reply, received, may_have_executed) in expired {
            let error = Error::Timeout { may_have_executed };
            let _ = reply.send(Err(Failed { error, received }));
        }
        if let Some(limit) = unresponsive {
            let why = format!("the server owed replies and sent nothing for {limit:?}");
            tracing::warn!(
                "closing a connection whose server stopped answering: {why}; \
                 a new one is opened for the next request"
            );
            let silent = std::io::Error::new(std::io::ErrorKind::TimedOut, why);
            self.close(&Error::io(silent, true));
        }
    }

    /// When the server, owing `oldest` (a request that timed out) its replies, will
    /// have been silent for `limit`.
    fn silence_due(&self, oldest: &InFlight, limit: std::time::Duration) -> Instant {
        let heard = self.last_heard.load(Ordering::Acquire);
        let silent_since = self.epoch + std::time::Duration::from_nanos(oldest.written.max(heard));
        crate::deadline::after(silent_since, limit)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    fn in_flight(&self) -> std::sync::MutexGuard<'_, VecDeque<InFlight>> {
        lock(&self.in_flight)
    }
}

/// A request [`NodeConnection::submit`] queued; [`NodeConnection::answer`] waits for
/// its answer. It keeps the commands, to hand them back with the answer.
pub(crate) struct Queued {
    reply: ReplyReceiver,
    cmds: Cmds,
}

impl Queued {
    /// The commands, to send again; an empty `Cmds::Many` is left in their place.
    pub(crate) fn take_cmds(&mut self) -> Cmds {
        std::mem::replace(&mut self.cmds, Cmds::Many(Vec::new()))
    }
}

/// Why [`NodeConnection::submit`] did not queue a request.
pub(crate) enum NotQueued {
    /// It was refused (the connection is closed, the command disabled): the answer says
    /// why, and holds the commands.
    Answered(Answer),
    /// The queue is full: the commands, to queue when there is room.
    Full(Cmds),
}

impl NotQueued {
    /// The commands, to send some other way.
    pub(crate) fn into_cmds(self) -> Cmds {
        match self {
            NotQueued::Answered(answer) => answer.cmds,
            NotQueued::Full(cmds) => cmds,
        }
    }
}

/// Why [`Shared::enqueue`] refused a request.
enum Refused {
    Full,
    Closed,
}

/// Writes `cmds` for the server, under the names `renames` gives them.
fn encode(cmds: &Cmds, renames: &CommandRenames, out: &mut BytesMut) {
    if renames.is_empty() {
        cmds.iter().for_each(|c| c.write_to(out));
    } else {
        cmds.iter().for_each(|c| renames.write(c, out));
    }
}

/// Cuts requests out of their encoded bytes (the queue's buffer, a write buffer),
/// keeping the others' bytes back to back and in order. Rare: only requests whose
/// deadline passed or whose caller gave up before their write are cut.
#[derive(Default)]
struct Compaction {
    /// Where the next request's bytes start.
    read: usize,
    /// Where the next kept request's bytes go.
    write: usize,
}

impl Compaction {
    /// The next request, `len` bytes long: kept or cut.
    fn step(&mut self, bytes: &mut [u8], len: usize, keep: bool) {
        if keep {
            if self.write != self.read {
                bytes.copy_within(self.read..self.read + len, self.write);
            }
            self.write += len;
        }
        self.read += len;
    }

    /// Drops the bytes cut; any past the requests stepped through are kept.
    fn finish(self, bytes: &mut BytesMut) {
        if self.write == self.read {
            return;
        }
        let end = bytes.len();
        bytes.copy_within(self.read..end, self.write);
        bytes.truncate(self.write + (end - self.read));
    }
}

/// Locks one of the queues. Nothing panics while holding them, but if something ever
/// did, the queue is still consistent (every change is a push, a pop or a swap), so a
/// poisoned lock is used as is rather than leaving requests unanswered.
pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Closes the connection when the last handle is dropped.
struct Owner(Arc<Shared>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.close(&Error::ConnectionLost {
            may_have_executed: false,
        });
    }
}

/// The answer of a request the connection refused: it was never sent.
fn lost(cmds: Cmds) -> Answer {
    let error = Error::ConnectionLost {
        may_have_executed: false,
    };
    Answer::failed(error, cmds)
}

/// The error written requests get when the connection dies under them.
fn lost_after_write(cause: &Error) -> Error {
    match cause {
        Error::Io { source, .. } => Error::Io {
            source: Arc::clone(source),
            may_have_executed: true,
        },
        _ => Error::ConnectionLost {
            may_have_executed: true,
        },
    }
}

/// A multiplexed connection to one Redis node.
///
/// Cloning is cheap and clones share the connection: requests from many tasks are
/// coalesced into few writes. Dropping every clone closes the connection at once (a
/// caller still waiting holds a clone, so none is left waiting).
///
/// ```no_run
/// # async fn demo() -> redcluster::Result<()> {
/// use redcluster::{cmd, ConnectOptions, NodeConnection};
/// let conn = NodeConnection::connect("127.0.0.1:7000", &ConnectOptions::default()).await?;
/// let id = conn.send(cmd("CLUSTER").arg("MYID")).await?; // a Value: errors are data here
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct NodeConnection {
    /// Shared by the clones; the last one dropped closes the connection.
    _owner: Arc<Owner>,
    shared: Arc<Shared>,
    addr: Arc<str>,
    protocol: Protocol,
    default_timeout: std::time::Duration,
    renames: CommandRenames,
}

impl std::fmt::Debug for NodeConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConnection")
            .field("addr", &self.addr)
            .field("protocol", &self.protocol)
            .field("closed", &self.is_closed())
            .finish()
    }
}

impl NodeConnection {
    /// Connects over TCP to `addr` (`"host:port"`), with TLS when
    /// [`ConnectOptions::tls`] is set, performs the handshake (`HELLO 3`/`AUTH`,
    /// `CLIENT SETNAME`, `READONLY` as the options say) and starts the connection's tasks
    /// on the current tokio runtime.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] when the node cannot be reached within `connect_timeout`,
    /// [`Error::Tls`] when the TLS handshake fails (the message names the reason: unknown
    /// CA, bad name, a client certificate required or refused, ...), [`Error::Auth`] when
    /// the credentials are refused, [`Error::Protocol`] when the node does not speak RESP.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// use redcluster::{ConnectOptions, NodeConnection};
    /// let options = ConnectOptions::default()
    ///     .username("app")
    ///     .password("s3cret")
    ///     .connect_timeout(Duration::from_secs(1));
    /// let conn = NodeConnection::connect("127.0.0.1:7000", &options).await?;
    /// # Ok(()) }
    /// ```
    pub async fn connect(addr: &str, options: &ConnectOptions) -> Result<NodeConnection> {
        let deadline = crate::deadline::from_now(options.connect_timeout);
        let stream = tcp_connect(addr, options, deadline).await?;
        if let Some(tls) = &options.tls {
            let stream =
                tls::connect(addr, options.announced.as_deref(), stream, tls, deadline).await?;
            let (read, write) = tokio::io::split(stream);
            // A client certificate the node refuses shows only now, on the first read.
            return Self::start(addr, read, write, options, deadline)
                .await
                .map_err(|e| tls::classify(addr, e, tls));
        }
        let (read, write) = stream.into_split();
        Self::start(addr, read, write, options, deadline).await
    }

    /// Runs the handshake over an already connected byte stream (TLS, a Unix socket, a
    /// test double) and starts the connection's tasks.
    ///
    /// The stream is used as it is: [`ConnectOptions::tls`] is not applied to it.
    ///
    /// # Errors
    ///
    /// As [`NodeConnection::connect`], minus the TCP part.
    ///
    /// # Examples
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> redcluster::Result<()> {
    /// use redcluster::{cmd, ConnectOptions, NodeConnection, Protocol, Value};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// // A stand-in node on an in-memory pipe that answers two PINGs: the handshake's
    /// // (on RESP2 without a password, it asks whether one is needed) and ours.
    /// let (ours, mut node) = tokio::io::duplex(1024);
    /// tokio::spawn(async move {
    ///     for _ in 0..2 {
    ///         let _ = node.read(&mut [0u8; 64]).await;
    ///         let _ = node.write_all(b"+PONG\r\n").await;
    ///     }
    /// });
    /// let options = ConnectOptions::default().protocol(Protocol::Resp2); // no HELLO
    /// let conn = NodeConnection::over_stream("fake:6379", ours, &options).await?;
    /// assert_eq!(conn.send(cmd("PING")).await?, Value::Simple("PONG".into()));
    /// # Ok(()) }
    /// ```
    pub async fn over_stream<S>(
        addr: &str,
        stream: S,
        options: &ConnectOptions,
    ) -> Result<NodeConnection>
    where
        S: AsyncRead + AsyncWrite + Send + 'static,
    {
        let deadline = crate::deadline::from_now(options.connect_timeout);
        let (read, write) = tokio::io::split(stream);
        Self::start(addr, read, write, options, deadline).await
    }

    async fn start<R, W>(
        addr: &str,
        mut read: R,
        mut write: W,
        options: &ConnectOptions,
        deadline: Instant,
    ) -> Result<NodeConnection>
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let (rbuf, decoder, protocol) =
            handshake_within(addr, &mut read, &mut write, options, deadline).await?;

        // The fields are public: a 0 would leave no room for any request, or close the
        // connection at every timeout.
        let shared = Arc::new(Shared::new(
            options.max_in_flight.max(1),
            options
                .unresponsive_timeout
                .filter(|limit| !limit.is_zero()),
        ));
        let addr: Arc<str> = Arc::from(addr);
        // A root span: the connection outlives the request that opened it, whose span
        // would otherwise stay open (and hold the connection's events) until it closes.
        let span = tracing::debug_span!(parent: None, "redis_connection", node = %addr);
        let writer = CloseOnDrop(Arc::clone(&shared));
        tokio::spawn(tracing::Instrument::instrument(
            async move { write_loop(write, Arc::clone(&writer.0)).await },
            span.clone(),
        ));
        let timer = CloseOnDrop(Arc::clone(&shared));
        tokio::spawn(tracing::Instrument::instrument(
            async move { deadline_loop(Arc::clone(&timer.0)).await },
            span.clone(),
        ));
        let reader = CloseOnDrop(Arc::clone(&shared));
        tokio::spawn(tracing::Instrument::instrument(
            async move { read_loop(read, rbuf, decoder, Arc::clone(&reader.0)).await },
            span,
        ));
        Ok(NodeConnection {
            _owner: Arc::new(Owner(Arc::clone(&shared))),
            shared,
            addr,
            protocol,
            default_timeout: options.response_timeout,
            renames: options.renames.clone(),
        })
    }

    /// The address this connection was opened to.
    ///
    /// ```no_run
    /// # async fn demo(conn: redcluster::NodeConnection) -> redcluster::Result<()> {
    /// println!("talking to {}", conn.addr()); // "127.0.0.1:7000"
    /// # Ok(()) }
    /// ```
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The protocol the handshake settled on.
    ///
    /// ```no_run
    /// # async fn demo(conn: redcluster::NodeConnection) -> redcluster::Result<()> {
    /// use redcluster::Protocol;
    /// if conn.protocol() == Protocol::Resp2 {
    ///     println!("an old server: RESP2 only");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// Whether the connection has died (or been closed); a dead connection answers every
    /// request with [`Error::ConnectionLost`].
    ///
    /// ```no_run
    /// # async fn demo(conn: redcluster::NodeConnection) -> redcluster::Result<()> {
    /// if conn.is_closed() {
    ///     // reconnect
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.shared.is_closed()
    }

    /// `true` for the first caller only: when the connection fails, every request on
    /// it gets the same error, and whoever keeps count of failures (a circuit breaker)
    /// should count the connection's once, not once per request it carried.
    pub(crate) fn first_to_report_failure(&self) -> bool {
        !self.shared.failure_reported.swap(true, Ordering::AcqRel)
    }

    /// Whether the server answered a request on this connection within its deadline
    /// after `since` (when a request that timed out was sent): then the node was
    /// answering, and the request waited on the requests ahead of it or had too short a
    /// deadline for the node's pace. A node that answers nothing in time for a
    /// request's whole life (frozen, unreachable, stuck in a script, slower than every
    /// deadline) did fail it.
    pub(crate) fn answered_since(&self, since: std::time::Instant) -> bool {
        let last = self.shared.last_reply.load(Ordering::Relaxed);
        last > self.shared.nanos(Instant::from_std(since))
    }

    /// Whether the server owes replies on this connection: requests written and not
    /// all answered.
    pub(crate) fn owes_replies(&self) -> bool {
        !self.shared.in_flight().is_empty()
    }

    /// Closes the connection: queued and in-flight requests get
    /// [`Error::ConnectionLost`].
    ///
    /// ```no_run
    /// # async fn demo(conn: redcluster::NodeConnection) -> redcluster::Result<()> {
    /// conn.close();
    /// assert!(conn.is_closed());
    /// # Ok(()) }
    /// ```
    pub fn close(&self) {
        self.shared.close(&Error::ConnectionLost {
            may_have_executed: true,
        });
    }

    /// Sends one command and waits for its reply, within the connection's default
    /// response timeout.
    ///
    /// An error reply from the server is returned as `Ok(Value::ServerError(..))`: it is
    /// the reply. Use [`crate::FromValue`] to turn it into a typed result.
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when no reply came in time (`may_have_executed: false` when the
    /// deadline passed before it was written), [`Error::ConnectionLost`] or
    /// [`Error::Io`] when the connection died, [`Error::Protocol`] on a malformed reply;
    /// [`Error::Config`], unsent, for a command after which replies no longer answer
    /// requests one for one (`SUBSCRIBE` and the other pub/sub commands, `MONITOR`,
    /// `CLIENT REPLY`, `SYNC`, `PSYNC`): every later reply would go to the wrong
    /// caller; for one that changes the connection under every caller (`RESET`,
    /// `HELLO`, `AUTH`, `SELECT`, `QUIT`); and for `MULTI` or `WATCH` alone, which
    /// would start a transaction for every caller (send the whole transaction with
    /// [`NodeConnection::send_batch`]; a check-and-set that reads between `WATCH` and
    /// `MULTI` needs a connection of its own: `ClusterClient::watch`); and for an
    /// argument over 512 MiB, on which the server would close the connection.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(conn: redcluster::NodeConnection) -> redcluster::Result<()> {
    /// use redcluster::{cmd, Value};
    /// let pong = conn.send(cmd("PING")).await?;
    /// assert_eq!(pong, Value::Simple("PONG".into()));
    /// # Ok(()) }
    /// ```
    pub async fn send(&self, cmd: Cmd) -> Result<Value> {
        self.send_timeout(cmd, self.default_timeout).await
    }

    /// Like [`NodeConnection::send`], with this request's own timeout.
    ///
    /// A request still queued when its timeout passes is never written.
    ///
    /// # Errors
    ///
    /// As [`NodeConnection::send`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(conn: redcluster::NodeConnection) -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// use redcluster::cmd;
    /// let replication = cmd("INFO").arg("replication");
    /// let info = conn.send_timeout(replication, Duration::from_millis(200)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn send_timeout(&self, cmd: Cmd, timeout: std::time::Duration) -> Result<Value> {
        refuse_on_shared(std::slice::from_ref(&cmd))?;
        let deadline = crate::deadline::from_now(timeout);
        let replies = self.dispatch(Cmds::One(cmd), deadline).await.result?;
        Ok(replies.into_iter().next().unwrap_or(Value::Nil))
    }

    /// Sends several commands back to back (one write, nothing from other callers in
    /// between) and waits for all their replies, in order.
    ///
    /// # Errors
    ///
    /// As [`NodeConnection::send`]; one failure fails the whole batch. A batch may hold
    /// a whole transaction (`WATCH`, `MULTI`, ..., `EXEC`): its commands are written
    /// back to back. One that leaves a `MULTI` or a `WATCH` open (no `EXEC` or `DISCARD`
    /// after it; `UNWATCH` also ends a `WATCH`) is refused unsent, as it would pull the
    /// next callers' commands into the transaction.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(conn: redcluster::NodeConnection) -> redcluster::Result<()> {
    /// use redcluster::cmd;
    /// let replies = conn
    ///     .send_batch(vec![cmd("SET").arg("k").arg("v"), cmd("GET").arg("k")])
    ///     .await?;
    /// assert_eq!(replies.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn send_batch(&self, cmds: Vec<Cmd>) -> Result<Vec<Value>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        refuse_on_shared(&cmds)?;
        let deadline = crate::deadline::from_now(self.default_timeout);
        let replies = self.dispatch(Cmds::Many(cmds), deadline).await.result?;
        Ok(replies.into_vec())
    }

    /// Sends `cmds` and waits for the answer until `deadline`.
    ///
    /// The commands come back in the answer.
    pub(crate) async fn dispatch(&self, cmds: Cmds, deadline: Instant) -> Answer {
        let queued = match self.submit(cmds, deadline) {
            Ok(queued) => queued,
            Err(NotQueued::Answered(answer)) => return answer,
            // Only when the queue is full does the caller wait for room, which counts
            // against the deadline (a request that never got in was never sent). The
            // wait is boxed: its future would otherwise weigh on every request's.
            Err(NotQueued::Full(cmds)) => {
                match Box::pin(self.enqueue_when_room(cmds, deadline)).await {
                    Ok(queued) => queued,
                    Err(answer) => return answer,
                }
            }
        };
        self.answer(queued).await
    }

    /// Hands `cmds` to the writer without waiting, encoded: the first half of
    /// [`NodeConnection::dispatch`], for callers that keep their own future small (a
    /// request's future is copied at every layer on its way down, so the fast path
    /// awaits nothing bigger than the reply's receiver and the commands it keeps).
    // `NotQueued` hands the commands back by value: boxing them would cost an
    // allocation per request to save a move on the rare refusal.
    #[allow(clippy::result_large_err)]
    pub(crate) fn submit(
        &self,
        cmds: Cmds,
        deadline: Instant,
    ) -> std::result::Result<Queued, NotQueued> {
        if let Some(name) = self.renames.first_disabled(cmds.iter()) {
            let error = CommandRenames::disabled(&name);
            return Err(NotQueued::Answered(Answer::failed(error, cmds)));
        }
        match self.shared.enqueue(&cmds, &self.renames, deadline) {
            Ok(reply) => Ok(Queued { reply, cmds }),
            Err(Refused::Closed) => Err(NotQueued::Answered(lost(cmds))),
            Err(Refused::Full) => Err(NotQueued::Full(cmds)),
        }
    }

    /// Waits for the answer of a request [`NodeConnection::submit`] queued.
    pub(crate) async fn answer(&self, mut queued: Queued) -> Answer {
        let delivered = std::future::poll_fn(|cx| self.poll_delivery(&mut queued, cx)).await;
        let cmds = queued.take_cmds();
        match delivered {
            Ok(replies) => Answer {
                result: Ok(replies),
                cmds,
                received: Vec::new(),
            },
            Err(Failed { error, received }) => Answer {
                result: Err(error),
                cmds,
                received,
            },
        }
    }

    /// Polls for the outcome of a request [`NodeConnection::submit`] queued; not to be
    /// polled again once ready. The commands stay in `queued`. No timer here: the
    /// connection answers the request by its deadline (see the module docs).
    pub(crate) fn poll_outcome(
        &self,
        queued: &mut Queued,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Outcome> {
        self.poll_delivery(queued, cx)
            .map(|d| d.map_err(|f| f.error))
    }

    /// [`NodeConnection::poll_outcome`], with the replies a failed request got first.
    fn poll_delivery(
        &self,
        queued: &mut Queued,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Delivery> {
        let result = match std::task::ready!(std::pin::Pin::new(&mut queued.reply).poll(cx)) {
            Ok(mut result) => {
                if !self.renames.is_empty() {
                    let replies = match &mut result {
                        Ok(replies) => replies.as_mut_slice(),
                        Err(failed) => failed.received.as_mut_slice(),
                    };
                    replies.iter_mut().for_each(|r| self.renames.scrub(r));
                }
                result
            }
            // The tasks answer every request before they end; a dropped sender means a
            // task panicked, which must still not leave the caller hanging.
            Err(_) => Err(Error::ConnectionLost {
                may_have_executed: true,
            }
            .into()),
        };
        std::task::Poll::Ready(result)
    }

    /// Waits until the full queue takes `cmds`, or until `deadline`.
    async fn enqueue_when_room(
        &self,
        cmds: Cmds,
        deadline: Instant,
    ) -> std::result::Result<Queued, Answer> {
        let _counted = WaitingForSpace::count(&self.shared);
        loop {
            // In line for a place before looking: a place freed in between wakes it.
            let mut space = std::pin::pin!(self.shared.space.notified());
            space.as_mut().enable();
            match self.shared.enqueue(&cmds, &self.renames, deadline) {
                Ok(reply) => return Ok(Queued { reply, cmds }),
                Err(Refused::Closed) => return Err(lost(cmds)),
                Err(Refused::Full) => {}
            }
            #[cfg(test)]
            self.shared.waits_for_space.fetch_add(1, Ordering::Relaxed);
            if tokio::time::timeout_at(deadline, space).await.is_err() {
                return Err(Answer::failed(
                    Error::Timeout {
                        may_have_executed: false,
                    },
                    cmds,
                ));
            }
        }
    }
}

/// Counts a caller among those waiting for room for as long as it lives (see
/// [`Shared::wake_for_space`]), however the wait ends.
struct WaitingForSpace<'a>(&'a Shared);

impl<'a> WaitingForSpace<'a> {
    fn count(shared: &'a Shared) -> Self {
        shared.waiting_for_space.fetch_add(1, Ordering::AcqRel);
        WaitingForSpace(shared)
    }
}

impl Drop for WaitingForSpace<'_> {
    fn drop(&mut self) {
        self.0.waiting_for_space.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A connected, authenticated byte stream for a driver other than [`NodeConnection`]'s
/// request/reply matching: the subscriber's (`crate::pubsub`), which reads push frames
/// and pub/sub arrays rather than replies. The read buffer may already hold bytes that
/// arrived with the handshake's last reply.
pub(crate) struct RawConnection {
    pub(crate) read: Box<dyn AsyncRead + Unpin + Send>,
    pub(crate) write: Box<dyn AsyncWrite + Unpin + Send>,
    pub(crate) rbuf: BytesMut,
    pub(crate) decoder: Decoder,
    pub(crate) protocol: Protocol,
}

impl std::fmt::Debug for RawConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawConnection")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

/// Connects and runs the handshake exactly as [`NodeConnection::connect`] does (TCP,
/// TLS when the options say, `HELLO`/`AUTH`, name), but starts no tasks: the caller
/// drives the stream itself.
pub(crate) async fn connect_raw(addr: &str, options: &ConnectOptions) -> Result<RawConnection> {
    let deadline = crate::deadline::from_now(options.connect_timeout);
    let stream = tcp_connect(addr, options, deadline).await?;
    let (mut read, mut write): (
        Box<dyn AsyncRead + Unpin + Send>,
        Box<dyn AsyncWrite + Unpin + Send>,
    ) = match &options.tls {
        Some(tls) => {
            let stream =
                tls::connect(addr, options.announced.as_deref(), stream, tls, deadline).await?;
            let (read, write) = tokio::io::split(stream);
            (Box::new(read), Box::new(write))
        }
        None => {
            let (read, write) = stream.into_split();
            (Box::new(read), Box::new(write))
        }
    };
    let (rbuf, decoder, protocol) =
        handshake_within(addr, &mut read, &mut write, options, deadline)
            .await
            .map_err(|e| match &options.tls {
                Some(tls) => tls::classify(addr, e, tls),
                None => e,
            })?;
    Ok(RawConnection {
        read,
        write,
        rbuf,
        decoder,
        protocol,
    })
}

/// Opens the TCP connection within `deadline`, with the options' socket settings.
async fn tcp_connect(
    addr: &str,
    options: &ConnectOptions,
    deadline: Instant,
) -> Result<tokio::net::TcpStream> {
    let stream = tokio::time::timeout_at(deadline, connect_any(addr))
        .await
        .map_err(|_| {
            Error::io(
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "connecting to {addr} timed out after {:?}",
                        options.connect_timeout
                    ),
                ),
                false,
            )
        })?
        .map_err(|e| {
            Error::io(
                std::io::Error::new(e.kind(), format!("connecting to {addr}: {e}")),
                false,
            )
        })?;
    configure_tcp(&stream, options);
    Ok(stream)
}

/// How long a connect attempt to one address of a name has before the next address is
/// tried alongside it (RFC 8305's connection attempt delay).
const NEXT_ADDRESS_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// Connects to the first of `addr`'s addresses that answers. A name with several
/// addresses (both families, or a service's several hosts) has them tried in the
/// resolver's order (RFC 6724's, which the resolver applies; the families are not
/// interleaved as RFC 8305 also asks), each [`NEXT_ADDRESS_AFTER`] after the one
/// before or as soon as an attempt fails, and all left running until one connects: one
/// address that drops packets would otherwise use up the whole connect timeout, as
/// `TcpStream::connect`, which tries them one after another, lets it.
async fn connect_any(addr: &str) -> std::io::Result<tokio::net::TcpStream> {
    let addrs: Vec<std::net::SocketAddr> = tokio::net::lookup_host(addr).await?.collect();
    connect_first_of(&addrs, NEXT_ADDRESS_AFTER).await
}

async fn connect_first_of(
    addrs: &[std::net::SocketAddr],
    stagger: std::time::Duration,
) -> std::io::Result<tokio::net::TcpStream> {
    use futures_util::stream::{FuturesUnordered, StreamExt as _};
    match addrs {
        [] => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the name resolved to no address",
            ))
        }
        [only] => return tokio::net::TcpStream::connect(only).await,
        _ => {}
    }
    let mut waiting = addrs.iter();
    let mut attempts = FuturesUnordered::new();
    let mut first_error = None;
    // Fires when the next address is due: at once for the first.
    let next_due = tokio::time::sleep(std::time::Duration::ZERO);
    tokio::pin!(next_due);
    loop {
        tokio::select! {
            biased;
            Some(outcome) = attempts.next(), if !attempts.is_empty() => match outcome {
                Ok(stream) => return Ok(stream),
                Err(e) => {
                    first_error.get_or_insert(e);
                    // A failure brings the next address's turn forward (RFC 8305).
                    next_due.as_mut().reset(Instant::now());
                }
            },
            () = &mut next_due, if waiting.len() > 0 => {
                if let Some(&to) = waiting.next() {
                    attempts.push(tokio::net::TcpStream::connect(to));
                }
                next_due.as_mut().reset(Instant::now() + stagger);
            }
        }
        if attempts.is_empty() && waiting.len() == 0 {
            // Every address failed: the first error to come back, the likeliest to say
            // why (a refusal comes back before a timeout).
            return Err(first_error.unwrap_or_else(|| std::io::ErrorKind::NotFound.into()));
        }
    }
}

/// Runs the handshake within `deadline`; returns the read buffer and decoder to go on
/// with, and the protocol settled on.
async fn handshake_within<R, W>(
    addr: &str,
    read: &mut R,
    write: &mut W,
    options: &ConnectOptions,
    deadline: Instant,
) -> Result<(BytesMut, Decoder, Protocol)>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut rbuf = BytesMut::with_capacity(READ_CHUNK);
    // Pushes a server slips inside replies are dropped, as those between replies are
    // (see `read_loop`): counted in, they would shift every later reply.
    let mut decoder = Decoder::with_limits(options.limits).out_of_band_pushes();
    let protocol = tokio::time::timeout_at(
        deadline,
        handshake::run(
            addr,
            read,
            write,
            &mut rbuf,
            &mut decoder,
            options,
            deadline,
        ),
    )
    .await
    .map_err(|_| {
        Error::io(
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("handshake with {addr} timed out"),
            ),
            false,
        )
    })??;
    Ok((rbuf, decoder, protocol))
}

/// Unanswered keepalive probes that end a connection.
const KEEPALIVE_PROBES: u32 = 3;

/// The keepalive idle time `configure_tcp` sets for `asked`: whole seconds within what
/// Linux accepts.
fn keepalive_idle(asked: std::time::Duration) -> std::time::Duration {
    std::time::Duration::from_secs(asked.as_secs().clamp(1, 32_767))
}

fn configure_tcp(stream: &tokio::net::TcpStream, options: &ConnectOptions) {
    // Small requests must not wait for Nagle's algorithm; batching is done by the writer.
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY");
    }
    if let Some(idle) = options.tcp_keepalive {
        // Into what Linux takes (whole seconds, 1 to 32767): outside it refuses the
        // setting, and the connection keeps the system's two hours and nine probes.
        // (The cluster builder refuses such values; `ConnectOptions` is public.)
        let idle = keepalive_idle(idle);
        let keepalive = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(idle.min(std::time::Duration::from_secs(10)));
        // Three unanswered probes end the connection, not the system's nine (Linux): a
        // connection waiting on `BLPOP k 0`, which owes no reply within a deadline, is
        // found dead 30 s after the idle time rather than 90 s.
        #[cfg(any(
            target_os = "linux",
            target_os = "android",
            target_os = "macos",
            target_os = "freebsd"
        ))]
        let keepalive = keepalive.with_retries(KEEPALIVE_PROBES);
        if let Err(e) = socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive) {
            tracing::debug!(error = %e, "could not enable TCP keepalive");
        }
    }
}

async fn write_loop<W>(mut write: W, shared: Arc<Shared>)
where
    W: AsyncWrite + Unpin,
{
    let mut batch: Vec<Request> = Vec::with_capacity(WRITE_BATCH);
    let mut wbuf = BytesMut::with_capacity(16 * 1024);
    let mut written: Vec<InFlight> = Vec::with_capacity(WRITE_BATCH);
    // Requests in the last write: the callers its replies woke.
    let mut last_write = 0;
    let error = loop {
        let limit = WRITE_BATCH.min(shared.max_in_flight);
        let (waited, in_flight) = wait_for_turn(&shared, limit).await;
        // No more in flight than `max_in_flight`, this write's included. (Replies that
        // come meanwhile only make room.)
        let limit = limit.min(shared.max_in_flight.saturating_sub(in_flight));
        if waited && last_write > 1 {
            // Replies just came: the callers they woke are about to send their next
            // requests. Let them, so that those go in this write rather than the next.
            // Twice: at 64 GETs in flight, one yield made writes of 15.6 requests on
            // average, two made 17.9 (a seventh fewer `send`s, and server reads); more
            // yields added nothing but idle polls of the I/O driver. A write of one
            // request woke one caller at most, usually the one whose next request woke
            // the writer: yielding would only delay that request.
            for _ in 0..WRITER_YIELDS {
                tokio::task::yield_now().await;
            }
        }
        loop {
            let work = shared.work.notified();
            let closed = shared.close.notified();
            if shared.is_closed() || take(&shared, &mut batch, &mut wbuf, limit) > 0 {
                break;
            }
            tokio::select! {
                () = work => {}
                () = closed => {}
            }
        }
        if shared.is_closed() {
            break Error::ConnectionLost {
                may_have_executed: false,
            };
        }
        let now = Instant::now();
        let written_at = shared.nanos(now);
        let mut cut = Compaction::default();
        for request in batch.drain(..) {
            // A caller that gave up (future dropped) or whose deadline passed is not
            // written: its bytes are cut, and the request never reaches the server. The
            // latter is answered here, as the deadline task does not see requests between
            // the queue and the write.
            let abandoned = request.reply.is_closed();
            let late = !abandoned && request.deadline <= now;
            cut.step(&mut wbuf, request.len, !(abandoned || late));
            if abandoned {
                continue;
            }
            if late {
                let _ = request.reply.send(Err(Error::Timeout {
                    may_have_executed: false,
                }
                .into()));
                continue;
            }
            written.push(InFlight {
                expected: request.expected,
                // Room for all of a pipeline's replies at once, rather than growing
                // step by step as they come.
                replies: Replies::with_capacity(request.expected),
                reply: Some(request.reply),
                deadline: request.deadline,
                written: written_at,
                transaction: request.transaction,
            });
        }
        cut.finish(&mut wbuf);
        if written.is_empty() {
            wbuf.clear();
            continue;
        }
        let earliest = written.iter().map(|f| f.deadline).min();
        // Made before the check below: a `close` from now on wakes the blocked write.
        let closed = shared.close.notified();
        // Record before writing: the reader may see a reply as soon as bytes leave.
        {
            let mut q = shared.in_flight();
            if shared.is_closed() {
                drop(q);
                fail_unsent(written.drain(..).filter_map(|f| f.reply));
                break Error::ConnectionLost {
                    may_have_executed: false,
                };
            }
            last_write = written.len();
            q.extend(written.drain(..));
        }
        // The deadline task may have scanned while these were in no queue, and so
        // dropped their deadline: noted only now that they are in one, its next scan
        // finds them.
        if let Some(earliest) = earliest {
            shared.note_deadline(earliest);
        }
        // `flush` is free on TCP; TLS may still hold encrypted records after `write_all`
        // accepted every byte (the socket was full), which only a flush sends.
        let sent = async {
            write.write_all(&wbuf).await?;
            write.flush().await
        };
        // A server that stopped reading (frozen, or flooded) blocks the write: closing
        // the connection must still end this task and release the socket.
        let sent = tokio::select! {
            sent = sent => sent,
            () = closed => break Error::ConnectionLost { may_have_executed: true },
        };
        if let Err(e) = sent {
            break Error::io(e, true);
        }
        wbuf.clear();
        if wbuf.capacity() > 1024 * 1024 {
            // Do not keep a huge buffer around after one large pipeline.
            wbuf = BytesMut::with_capacity(16 * 1024);
        }
    };
    // Everything still queued was never written; `close` answers what the queue holds.
    shared.close(&error);
    fail_unsent(batch.drain(..).map(|r| r.reply));
    // TLS sends close_notify here, which a server that stopped reading never takes.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, write.shutdown()).await;
}

/// Waits until the writer may take requests for its next write: while the server owes
/// replies to the last write, unless `limit` requests are already queued, and while it
/// owes `max_in_flight` replies (backpressure). Returns whether it waited, and how many
/// requests were in flight when it stopped.
async fn wait_for_turn(shared: &Shared, limit: usize) -> (bool, usize) {
    let mut waited = false;
    loop {
        let room = shared.room.notified();
        let work = shared.work.notified();
        let in_flight = shared.in_flight().len();
        let owed = in_flight > 0 && lock(&shared.queue).requests.len() < limit;
        let full = in_flight >= shared.max_in_flight;
        if !(owed || full) || shared.is_closed() {
            return (waited, in_flight);
        }
        waited = true;
        tokio::select! {
            () = room => {}
            () = work => {}
        }
    }
}

/// Refuses a command after which the server's replies no longer answer requests one for
/// one (the pub/sub family, `MONITOR`, `CLIENT REPLY`, `SYNC`, `PSYNC`), or that changes
/// the connection under every other caller (`RESET`, `HELLO`, `AUTH`, `SELECT`, `QUIT`):
/// on a connection others share, every later reply would go to the wrong caller. The
/// list and the reasons are [`crate::cmd::Refusal`]; the cluster client refuses more of
/// it when it plans a command.
fn refuse_unpaired(cmd: &Cmd) -> Result<()> {
    match Refusal::of(cmd) {
        Some(Refusal::Subscription | Refusal::Unpaired | Refusal::ConnectionState) => {
            Err(Error::Config(format!(
                "{} is not sent on a shared connection: it would put the replies out of step \
                 with the requests, or change the connection for every caller",
                String::from_utf8_lossy(cmd.name())
            )))
        }
        // Their replies pair with their requests, and a batch writes its commands back to
        // back: `MULTI ... EXEC` in one `send_batch` stays one transaction (see
        // `refuse_on_shared`), and the dedicated pool's recycle check sends `UNWATCH`
        // this way. `WAIT` counts the connection's writes, whoever sent them, but its
        // reply is its own. A node connection's settings (`READONLY`, `CLIENT
        // NO-EVICT`) are its owner's to choose.
        Some(
            Refusal::Transaction
            | Refusal::Wait
            | Refusal::ClientManaged
            | Refusal::ConnectionSetting,
        )
        | None => Ok(()),
    }
}

/// [`refuse_unpaired`] and [`crate::cmd::refuse_overlong_args`] for each of `cmds`, which
/// go out back to back, and a refusal of
/// any that leave a transaction open after them: after a `MULTI` with no `EXEC` or
/// `DISCARD` later in `cmds`, the server would queue other callers' commands into it
/// (and they would get `QUEUED` for a reply); after a lone `WATCH`, their writes would
/// abort a transaction they know nothing of.
fn refuse_on_shared(cmds: &[Cmd]) -> Result<()> {
    let (mut multi, mut watch) = (false, false);
    for c in cmds {
        if c.is_empty() {
            // The server skips an empty request without a word: the next reply would
            // go to it, and every one after to the wrong caller.
            return Err(Error::Config("an empty command is not sent".into()));
        }
        crate::cmd::refuse_overlong_args(c)?;
        refuse_unpaired(c)?;
        let name = c.name();
        if name.eq_ignore_ascii_case(b"MULTI") {
            multi = true;
        } else if name.eq_ignore_ascii_case(b"WATCH") {
            watch = true;
        } else if multi
            && (name.eq_ignore_ascii_case(b"EXEC") || name.eq_ignore_ascii_case(b"DISCARD"))
        {
            // Without a MULTI they are refused by the server, and the WATCH holds.
            (multi, watch) = (false, false);
        } else if name.eq_ignore_ascii_case(b"UNWATCH") && !multi {
            // Inside `MULTI` it is only queued.
            watch = false;
        }
    }
    if multi || watch {
        return Err(Error::Config(format!(
            "{} without EXEC or DISCARD after it is not sent on a shared connection: it \
             would start a transaction for every caller; send the whole transaction in one \
             send_batch",
            if multi { "MULTI" } else { "WATCH" }
        )));
    }
    Ok(())
}

/// Whether `value` is a push frame, under any attributes.
fn is_push(value: &Value) -> bool {
    match value {
        Value::Push(_) => true,
        Value::Attribute { data, .. } => is_push(data),
        _ => false,
    }
}

/// Moves up to `limit` queued requests into `batch`, and their bytes to the end of
/// `wbuf`; returns how many.
fn take(shared: &Shared, batch: &mut Vec<Request>, wbuf: &mut BytesMut, limit: usize) -> usize {
    let mut queue = lock(&shared.queue);
    let Queue { requests, bytes } = &mut *queue;
    let n = requests.len().min(limit.saturating_sub(batch.len()));
    if n == requests.len() && wbuf.is_empty() {
        // All of them, into an empty buffer: the buffers trade places.
        std::mem::swap(bytes, wbuf);
    } else {
        let len = requests.iter().take(n).map(|r| r.len).sum();
        wbuf.extend_from_slice(&bytes[..len]);
        bytes.advance(len);
    }
    batch.extend(requests.drain(..n));
    drop(queue);
    shared.wake_for_space(n);
    n
}

/// Held by each of a connection's tasks: closes the connection when the task ends,
/// however it ends. The loops end on their own only once the connection is closed, but a
/// task dropped unfinished (its runtime shut down while a client built on it lives on)
/// would otherwise leave the connection open to requests that nothing writes, reads or
/// times out: they would wait for ever. Closed, it fails them, and the client opens a
/// new connection on the runtime its next request runs on.
struct CloseOnDrop(Arc<Shared>);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        self.0.close(&Error::ConnectionLost {
            may_have_executed: true,
        });
    }
}

/// Sleeps until the earliest deadline of the requests the connection holds, and
/// answers those whose deadline passed (see the module docs). Ends when the connection
/// closes.
async fn deadline_loop(shared: Arc<Shared>) {
    loop {
        let sooner = shared.sooner.notified();
        let closed = shared.close.notified();
        if shared.is_closed() {
            return;
        }
        let next = shared.next_deadline.load(Ordering::Acquire);
        if next == u64::MAX {
            tokio::select! {
                () = sooner => continue,
                () = closed => return,
            }
        }
        let at = shared.epoch + std::time::Duration::from_nanos(next);
        tokio::select! {
            () = tokio::time::sleep_until(at) => shared.expire(Instant::now()),
            () = sooner => {}
            () = closed => return,
        }
    }
}

fn fail_unsent(requests: impl Iterator<Item = ReplySender>) {
    for reply in requests {
        let error = Error::ConnectionLost {
            may_have_executed: false,
        };
        let _ = reply.send(Err(error.into()));
    }
}

async fn read_loop<R>(mut read: R, mut rbuf: BytesMut, mut decoder: Decoder, shared: Arc<Shared>)
where
    R: AsyncRead + Unpin,
{
    let mut replies: SmallVec<[Value; 16]> = SmallVec::new();
    let mut done: Vec<InFlight> = Vec::new();
    // The buffer grew for a large reply (see below). Sticky until the buffer is given
    // up: `capacity` is the room left from where the buffer stands, which the reply
    // once out no longer shows.
    let mut large = false;
    // When bytes last came: the handshake's last read left the first in the buffer.
    let mut heard = shared.nanos(Instant::now());
    let error = 'outer: loop {
        large |= is_large(&rbuf);
        // Replies may already sit in the buffer from the handshake's last read.
        loop {
            let decoded = decoder.decode(&mut rbuf);
            if matches!(decoded, Ok(Some(_))) {
                leave_large_buffer(&mut rbuf, &mut large, READ_CHUNK);
            }
            match decoded {
                Ok(Some(Value::Push(push))) => {
                    // Out-of-band data (client tracking, pub/sub on RESP3) is not a reply
                    // to any request on a multiplexed connection.
                    tracing::trace!(len = push.len(), "ignoring push frame");
                }
                // Nor is a push that carries attributes.
                Ok(Some(value @ Value::Attribute { .. })) if is_push(&value) => {
                    tracing::trace!("ignoring push frame with attributes");
                }
                Ok(Some(value)) => replies.push(value),
                Ok(None) => break,
                Err(e) => {
                    // Replies decoded before the bad bytes are still their requests'.
                    let _ = deliver(&shared, &mut replies, &mut done, heard);
                    break 'outer e;
                }
            }
        }
        if !replies.is_empty() {
            if let Err(e) = deliver(&shared, &mut replies, &mut done, heard) {
                break e;
            }
        }
        make_room(&mut rbuf, &mut large, READ_CHUNK);
        let closed = shared.close.notified();
        if shared.is_closed() {
            return;
        }
        let n = tokio::select! {
            n = read.read_buf(&mut rbuf) => n,
            () = closed => return,
        };
        if let Some(error) = read_ended(n) {
            break error;
        }
        // Any byte shows the server alive: a large reply's first ones as much as its
        // last (see `unresponsive_timeout`). Stamped before decoding, so that no
        // deadline check can see the reply popped and the old stamp.
        heard = shared.nanos(Instant::now());
        shared.last_heard.store(heard, Ordering::Release);
    };
    shared.close(&error);
}

/// What a socket read's result means for a connection: `None` to read on, or why it
/// ended (the server closed it, or the socket failed). Requests written on it may have
/// run either way.
pub(crate) fn read_ended(read: std::io::Result<usize>) -> Option<Error> {
    match read {
        Ok(0) => Some(closed_by_server("server closed the connection")),
        Ok(_) => None,
        Err(e) => Some(Error::io(e, true)),
    }
}

/// The error of a connection the server closed (`why` says when).
fn closed_by_server(why: &'static str) -> Error {
    Error::io(
        std::io::Error::new(std::io::ErrorKind::UnexpectedEof, why),
        true,
    )
}

/// Hands decoded replies to the requests at the front of the in-flight queue; `done`
/// is scratch space the reader keeps, so that this allocates nothing. `heard` is when
/// the replies' bytes were read (nanoseconds since the connection's epoch).
///
/// A reply that no request is waiting for means the stream is out of sync: the
/// requests already matched are still answered, then the error closes the connection.
fn deliver(
    shared: &Shared,
    replies: &mut SmallVec<[Value; 16]>,
    done: &mut Vec<InFlight>,
    heard: u64,
) -> Result<()> {
    let mut outcome = Ok(());
    // Whether a reply went to a request still within its deadline (a pipeline's count
    // as they come, before its last).
    let mut in_time = false;
    let mut left_in_transaction = false;
    let mut left_watching_keys = false;
    let (was_full, drained) = {
        let mut q = shared.in_flight();
        let was_full = q.len() >= shared.max_in_flight;
        for value in replies.drain(..) {
            let Some(front) = q.front_mut() else {
                outcome = Err(Error::Protocol(
                    "reply received with no request waiting for it".into(),
                ));
                break;
            };
            in_time |= front.reply.is_some();
            front.replies.push(value);
            if front.replies.len() == front.expected {
                let poisoned = front
                    .transaction
                    .is_some_and(|t| left_in_multi(&front.replies, t));
                left_watching_keys |= front
                    .transaction
                    .is_some_and(|t| left_watching(&front.replies, t));
                done.extend(q.pop_front());
                if poisoned {
                    // Whatever comes next is queued into that transaction: the
                    // connection goes, and the server drops the transaction with it.
                    left_in_transaction = true;
                    outcome = Err(Error::Protocol(
                        "the node took MULTI but refused EXEC (or DISCARD) without ending \
                         the transaction, which leaves the connection inside it; it was \
                         closed (is EXEC renamed on the node? see rename_command)"
                            .into(),
                    ));
                    break;
                }
            }
        }
        // A new oldest request that timed out already (its deadline shorter than the
        // one answered): the deadline task may have nothing else to wake it should the
        // server fall silent now.
        if let (false, Some(next), Some(limit)) =
            (done.is_empty(), q.front(), shared.unresponsive_timeout)
        {
            if next.reply.is_none() {
                shared.note_deadline(shared.silence_due(next, limit));
            }
        }
        (was_full, q.is_empty())
    };
    replies.clear();
    // Closed before the transaction's caller has its answer: its next request must not
    // be queued on this connection. The requests written after it were queued into the
    // transaction, which the server drops with the connection: none of them ran.
    if let (true, Err(error)) = (left_in_transaction, &outcome) {
        shared.close_failing(error, |_| Error::ConnectionLost {
            may_have_executed: false,
        });
    }
    // Left watching keys: the requests after it ran as usual, and those answered in this
    // read have their replies; the connection goes before the next is written.
    if left_watching_keys && outcome.is_ok() {
        let error = Error::Protocol(
            "the node took WATCH but refused MULTI, which leaves the connection watching \
             the keys; it was closed (is MULTI renamed on the node? see rename_command)"
                .into(),
        );
        shared.close_failing(&error, |_| Error::ConnectionLost {
            may_have_executed: true,
        });
        outcome = Err(error);
    }
    // Wake the writer if it may now write (see `wait_for_turn`): it waits for the
    // server to answer all it wrote, or for room under `max_in_flight`. With nothing
    // queued, the next caller's `enqueue` wakes it instead; waking it now would only
    // wake a second worker thread for nothing (at 1 request in flight, a `futex` call
    // per request).
    if was_full || (drained && !lock(&shared.queue).requests.is_empty()) {
        shared.room.notify_one();
    }
    // The node answered a request within its deadline: it makes progress. Late replies
    // to requests that timed out do not count, or a node slower than every deadline
    // would never open its breaker. The read's stamp, taken before the answers go out:
    // a caller woken by one may send its next request at once, and this stamp must not
    // fall within that request's life.
    if in_time {
        shared.last_reply.store(heard, Ordering::Relaxed);
    }
    // Answer outside the lock; a request that timed out was answered already.
    for entry in done.drain(..) {
        if let Some(reply) = entry.reply {
            let _ = reply.send(Ok(entry.replies));
        }
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::cmd;

    #[test]
    fn keepalive_idle_times_are_kept_within_what_linux_takes() {
        use std::time::Duration;
        assert_eq!(
            keepalive_idle(Duration::from_millis(500)),
            Duration::from_secs(1)
        );
        assert_eq!(
            keepalive_idle(Duration::from_secs(60)),
            Duration::from_secs(60)
        );
        assert_eq!(
            keepalive_idle(Duration::from_secs(40_000)),
            Duration::from_secs(32_767)
        );
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn keepalive_gives_up_after_three_probes_ten_seconds_apart() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        configure_tcp(&stream, &ConnectOptions::default());
        let socket = socket2::SockRef::from(&stream);
        assert!(socket.keepalive().unwrap());
        assert!(socket.tcp_nodelay().unwrap());
        assert_eq!(
            socket.tcp_keepalive_time().unwrap(),
            std::time::Duration::from_secs(60)
        );
        assert_eq!(
            socket.tcp_keepalive_interval().unwrap(),
            std::time::Duration::from_secs(10)
        );
        assert_eq!(socket.tcp_keepalive_retries().unwrap(), KEEPALIVE_PROBES);
        let off = ConnectOptions {
            tcp_keepalive: None,
            ..ConnectOptions::default()
        };
        let stream = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        configure_tcp(&stream, &off);
        assert!(!socket2::SockRef::from(&stream).keepalive().unwrap());
    }

    /// A loopback listener whose accept queue is full: a connect to it gets no answer
    /// (the kernel drops the SYN), as with an address that drops packets.
    fn black_hole() -> (std::net::TcpListener, std::net::TcpStream) {
        let socket =
            socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        let any: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
        socket.bind(&any.into()).unwrap();
        socket.listen(0).unwrap();
        let listener: std::net::TcpListener = socket.into();
        let filler = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        (listener, filler)
    }

    #[tokio::test]
    async fn an_address_that_drops_packets_does_not_hold_up_the_next() {
        let (silent, _filler) = black_hole();
        let silent = silent.local_addr().unwrap();
        // The black hole holds a connect for a second at least (the SYN's resend).
        let held = tokio::time::timeout(
            std::time::Duration::from_millis(300),
            tokio::net::TcpStream::connect(silent),
        )
        .await;
        assert!(held.is_err(), "the black hole answered: {held:?}");
        let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = good.local_addr().unwrap();
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            connect_first_of(&[silent, good], std::time::Duration::from_millis(50)),
        )
        .await
        .expect("the second address was not tried while the first hung")
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good);
        // A failure brings the next turn forward even while an earlier attempt hangs:
        // the third address starts with the second's refusal, at 1 s, not at 2 s.
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let stream = tokio::time::timeout(
            std::time::Duration::from_millis(1800),
            connect_first_of(
                &[silent, closed_addr, good],
                std::time::Duration::from_secs(1),
            ),
        )
        .await
        .expect("the third address waited out its turn after the second was refused")
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good);
    }

    #[tokio::test]
    async fn a_refused_address_passes_to_the_next_at_once_and_all_refused_is_the_first_error() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_addr = closed.local_addr().unwrap();
        drop(closed);
        let good = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let good = good.local_addr().unwrap();
        let an_hour = std::time::Duration::from_secs(3600);
        let stream = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            connect_first_of(&[closed_addr, good], an_hour),
        )
        .await
        .expect("a refusal did not start the next address")
        .unwrap();
        assert_eq!(stream.peer_addr().unwrap(), good);
        let err = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            connect_first_of(&[closed_addr, closed_addr], an_hour),
        )
        .await
        .unwrap()
        .unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::ConnectionRefused);
        let err = connect_first_of(&[], an_hour).await.unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    /// A written `MULTI`, `INCR`, `EXEC`, due in an hour.
    fn multi_incr_exec_in_flight(shared: &Shared) -> ReplyReceiver {
        let (reply, answer) = reply::channel();
        shared.in_flight().push_back(InFlight {
            reply: Some(reply),
            deadline: in_an_hour(),
            written: 0,
            replies: Replies::new(),
            expected: 3,
            transaction: Some(Transaction {
                multi: 0,
                end: 2,
                watch: None,
            }),
        });
        answer
    }

    fn shared(max_in_flight: usize) -> Arc<Shared> {
        Arc::new(Shared::new(max_in_flight, None))
    }

    fn in_flight(shared: &Shared) -> ReplyReceiver {
        let (reply, answer) = reply::channel();
        shared.in_flight().push_back(InFlight {
            reply: Some(reply),
            deadline: in_an_hour(),
            written: 0,
            replies: Replies::new(),
            expected: 1,
            transaction: None,
        });
        answer
    }

    fn timed_out(delivery: &Delivery) -> bool {
        matches!(
            delivery,
            Err(Failed {
                error: Error::Timeout { .. },
                ..
            })
        )
    }

    /// A written request of `expected` commands, due at `deadline`, written when the
    /// connection started.
    fn batch_in_flight(shared: &Shared, expected: usize, deadline: Instant) -> ReplyReceiver {
        let (reply, answer) = reply::channel();
        shared.in_flight().push_back(InFlight {
            reply: Some(reply),
            deadline,
            written: 0,
            replies: Replies::new(),
            expected,
            transaction: None,
        });
        answer
    }

    /// A request of one command written at `written` and due at `deadline`, both in
    /// milliseconds since the connection's epoch.
    fn written_at(shared: &Shared, written: u64, deadline: u64) -> ReplyReceiver {
        let (reply, answer) = reply::channel();
        let ms = std::time::Duration::from_millis;
        shared.in_flight().push_back(InFlight {
            reply: Some(reply),
            deadline: shared.epoch + ms(deadline),
            written: shared.nanos(shared.epoch + ms(written)),
            replies: Replies::new(),
            expected: 1,
            transaction: None,
        });
        answer
    }

    /// Where the deadline task sleeps until, in milliseconds since the epoch.
    fn wakes_at(shared: &Shared) -> u64 {
        shared.next_deadline.load(Ordering::Acquire) / 1_000_000
    }

    #[tokio::test]
    async fn silence_counts_from_the_oldest_write_or_the_last_byte_and_is_looked_at_twice() {
        let shared = Arc::new(Shared::new(16, Some(std::time::Duration::from_secs(10))));
        let at = |ms: u64| shared.epoch + std::time::Duration::from_millis(ms);
        let hear = |ms: u64| {
            shared
                .last_heard
                .store(shared.nanos(at(ms)), Ordering::Release)
        };
        // Written at 8 s and due at 9 s, after the last byte came at 2 s: silent from 8 s.
        let _timed_out = written_at(&shared, 8_000, 9_000);
        let waiting = written_at(&shared, 8_000, 3_600_000);
        hear(2_000);
        shared.expire(at(9_000));
        assert!(!shared.is_closed());
        assert_eq!(wakes_at(&shared), 18_000);
        // Bytes at 12 s: silent from then.
        hear(12_000);
        shared.expire(at(18_000));
        assert_eq!(wakes_at(&shared), 22_000);
        // Silent past the limit: looked at once more, and bytes meanwhile keep it open.
        shared.expire(at(22_000));
        assert!(!shared.is_closed());
        assert_eq!(wakes_at(&shared), 22_100);
        hear(22_050);
        shared.expire(at(22_100));
        assert!(!shared.is_closed());
        assert_eq!(wakes_at(&shared), 32_050);
        shared.expire(at(32_050));
        assert!(!shared.is_closed());
        // Another deadline within the 100 ms does not cut the second look short.
        shared.expire(at(32_080));
        assert!(!shared.is_closed());
        assert_eq!(wakes_at(&shared), 32_150);
        shared.expire(at(32_150));
        assert!(shared.is_closed());
        match waiting.await.expect("answered") {
            Err(Failed {
                error:
                    Error::Io {
                        source,
                        may_have_executed: true,
                    },
                ..
            }) => {
                assert_eq!(source.kind(), std::io::ErrorKind::TimedOut);
                assert!(
                    source.to_string().contains("sent nothing for 10s"),
                    "{source}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_long_silence_within_the_oldest_requests_deadline_keeps_the_connection() {
        let shared = Arc::new(Shared::new(16, Some(std::time::Duration::from_secs(10))));
        // A script that runs for a minute within its deadline of two, and a request
        // behind it with a deadline of one second: the server is not silent past the
        // limit until the script's deadline has passed.
        let _script = written_at(&shared, 0, 120_000);
        let _behind = written_at(&shared, 0, 1_000);
        shared.expire(shared.epoch + std::time::Duration::from_secs(60));
        assert!(!shared.is_closed());
        assert_eq!(wakes_at(&shared), 120_000);
        // Without a limit, never closed for silence.
        let unlimited = Arc::new(Shared::new(16, None));
        let _timed_out = written_at(&unlimited, 0, 0);
        for secs in [3600, 3601] {
            unlimited.expire(unlimited.epoch + std::time::Duration::from_secs(secs));
        }
        assert!(!unlimited.is_closed());
    }

    #[test]
    fn answering_the_oldest_request_makes_a_timed_out_one_behind_it_watched() {
        let shared = Arc::new(Shared::new(16, Some(std::time::Duration::from_secs(10))));
        let _answered = written_at(&shared, 0, 120_000);
        let _timed_out = written_at(&shared, 0, 1_000);
        shared.expire(shared.epoch + std::time::Duration::from_secs(2));
        assert_eq!(wakes_at(&shared), 120_000);
        // The first is answered at 50 s; the second, which timed out, is the oldest now.
        let heard = shared.nanos(shared.epoch + std::time::Duration::from_secs(50));
        shared.last_heard.store(heard, Ordering::Release);
        let mut replies: SmallVec<[Value; 16]> = SmallVec::from_elem(Value::Nil, 1);
        deliver(&shared, &mut replies, &mut Vec::new(), heard).unwrap();
        assert_eq!(wakes_at(&shared), 60_000);
    }

    fn deliver_ints(shared: &Shared, values: std::ops::Range<i64>) {
        let mut replies: SmallVec<[Value; 16]> = values.map(Value::Int).collect();
        deliver(shared, &mut replies, &mut Vec::new(), 0).expect("a request waits for them");
    }

    #[tokio::test]
    async fn a_transaction_left_open_closes_the_connection_and_fails_the_rest_unrun() {
        let err = |text: &str| Value::ServerError(crate::ServerError::new(text.to_owned()));
        let ok = || Value::Simple("OK".into());
        let queued = || Value::Simple("QUEUED".into());
        // [MULTI, INCR, EXEC]: whether the node is left inside the transaction.
        for (exec, left_open) in [
            (
                err("ERR unknown command 'EXEC', with args beginning with: "),
                true,
            ),
            (
                err("NOPERM this user has no permissions to run the 'discard' command"),
                true,
            ),
            (
                err("EXECABORT Transaction discarded because of previous errors."),
                false,
            ),
            (err("MOVED 3999 127.0.0.1:6381"), false),
            (
                err("TRYAGAIN Multiple keys request during rehashing of slot"),
                false,
            ),
            (Value::Array(vec![Value::Int(1)]), false),
        ] {
            let conn = shared(16);
            let transaction = multi_incr_exec_in_flight(&conn);
            let next = batch_in_flight(&conn, 1, in_an_hour());
            let mut replies: SmallVec<[Value; 16]> =
                [ok(), queued(), exec.clone()].into_iter().collect();
            let outcome = deliver(&conn, &mut replies, &mut Vec::new(), 0);
            let answered = transaction.await.expect("answered").expect("its replies");
            assert_eq!(answered.last(), Some(&exec));
            assert_eq!(outcome.is_err(), left_open, "{exec:?}");
            assert_eq!(conn.is_closed(), left_open, "{exec:?}");
            if left_open {
                // Queued into the transaction the server drops with the connection.
                let failed = next.await.expect("answered").expect_err("closed");
                assert!(
                    matches!(
                        failed.error,
                        Error::ConnectionLost {
                            may_have_executed: false
                        }
                    ),
                    "{failed:?}"
                );
            }
        }
        // The transaction's deadline passes after `MULTI`'s reply: the late refusal of
        // its `EXEC` is still read at its place.
        let conn = shared(16);
        let late = multi_incr_exec_in_flight(&conn);
        let mut replies: SmallVec<[Value; 16]> = [ok()].into_iter().collect();
        deliver(&conn, &mut replies, &mut Vec::new(), 0).unwrap();
        conn.in_flight().front_mut().unwrap().deadline = a_moment_ago();
        conn.expire(Instant::now());
        let failed = late.await.expect("answered").expect_err("timed out");
        assert_eq!(failed.received, vec![ok()]);
        let mut replies: SmallVec<[Value; 16]> = [queued(), err("ERR unknown command 'EXEC'")]
            .into_iter()
            .collect();
        assert!(deliver(&conn, &mut replies, &mut Vec::new(), 0).is_err());
        assert!(conn.is_closed());

        // A refused `MULTI` opened nothing.
        let replies: Replies = [
            err("NOPERM no MULTI"),
            queued(),
            err("ERR EXEC without MULTI"),
        ]
        .into_iter()
        .collect();
        let transaction = Transaction {
            multi: 0,
            end: 2,
            watch: None,
        };
        assert!(!left_in_multi(&replies, transaction));
        // Unless a `WATCH` before it was taken: the keys stay watched.
        let replies: Replies = [
            ok(),
            err("NOPERM no MULTI"),
            queued(),
            err("ERR EXEC without MULTI"),
        ]
        .into_iter()
        .collect();
        let watched = Transaction {
            multi: 1,
            end: 3,
            watch: Some(0),
        };
        assert!(left_watching(&replies, watched) && !left_in_multi(&replies, watched));
        // Taken and ended: nothing is left.
        let replies: Replies = [ok(), ok(), queued(), Value::Array(vec![ok()])]
            .into_iter()
            .collect();
        assert!(!left_watching(&replies, watched) && !left_in_multi(&replies, watched));
    }

    #[tokio::test]
    async fn a_batch_cut_short_hands_over_the_replies_that_came() {
        // The connection is lost after two of three replies.
        let conn = shared(16);
        let lost = batch_in_flight(&conn, 3, in_an_hour());
        deliver_ints(&conn, 1..3);
        conn.close(&Error::ConnectionLost {
            may_have_executed: true,
        });
        let failed = lost.await.expect("answered").expect_err("cut short");
        assert!(failed.error.may_have_executed(), "{failed:?}");
        assert_eq!(&failed.received[..], &[Value::Int(1), Value::Int(2)]);

        // The deadline passes after two of three: the caller gets those two, and the
        // request keeps its place, so that its last reply and the next request's line
        // up.
        let conn = shared(16);
        let late = batch_in_flight(&conn, 3, a_moment_ago());
        let next = batch_in_flight(&conn, 1, in_an_hour());
        deliver_ints(&conn, 1..3);
        conn.expire(Instant::now());
        let failed = late.await.expect("answered").expect_err("timed out");
        assert!(matches!(failed.error, Error::Timeout { .. }), "{failed:?}");
        assert_eq!(&failed.received[..], &[Value::Int(1), Value::Int(2)]);
        deliver_ints(&conn, 3..5);
        let replies = next.await.expect("answered").expect("its reply");
        assert_eq!(&replies[..], &[Value::Int(4)]);
    }

    /// Queues `command` with `Shared::enqueue`, which takes any deadline, even a past
    /// one (the caller's `submit` never passes one).
    fn queue_directly(shared: &Shared, command: &Cmd, deadline: Instant) -> ReplyReceiver {
        let cmds = Cmds::One(command.clone());
        let Ok(answer) = shared.enqueue(&cmds, &CommandRenames::default(), deadline) else {
            panic!("an open connection with room refused a request");
        };
        answer
    }

    fn encoded(commands: &[Cmd]) -> Vec<u8> {
        let mut bytes = BytesMut::new();
        commands.iter().for_each(|c| c.write_to(&mut bytes));
        bytes.to_vec()
    }

    fn a_moment_ago() -> Instant {
        Instant::now() - std::time::Duration::from_millis(1)
    }

    fn in_an_hour() -> Instant {
        Instant::now() + std::time::Duration::from_secs(3600)
    }

    #[tokio::test]
    async fn a_request_whose_deadline_passed_before_its_write_gets_a_timeout_unsent() {
        let shared = shared(16);
        // Queued directly, as if the deadline passed between the hand-over and the write;
        // the requests around it are written without it.
        let before = queue_directly(&shared, &cmd("GET").arg("a"), in_an_hour());
        let late = queue_directly(&shared, &cmd("INCR").arg("k"), a_moment_ago());
        let after = queue_directly(&shared, &cmd("GET").arg("b"), in_an_hour());
        let (client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(write_loop(client, Arc::clone(&shared)));
        let outcome = late.await.expect("answered, not dropped");
        assert!(timed_out(&outcome), "{outcome:?}");
        let expected = encoded(&[cmd("GET").arg("a"), cmd("GET").arg("b")]);
        let mut sent = vec![0u8; expected.len()];
        server.read_exact(&mut sent).await.unwrap();
        assert_eq!(sent, expected);
        shared.close(&Error::ConnectionLost {
            may_have_executed: false,
        });
        writer.await.unwrap();
        // Nothing else reached the server; the written requests may have run.
        let mut rest = Vec::new();
        server.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "{rest:?}");
        for written in [before, after] {
            let outcome = written.await.expect("answered");
            assert!(
                matches!(
                    outcome,
                    Err(Failed {
                        error: Error::ConnectionLost {
                            may_have_executed: true
                        },
                        ..
                    })
                ),
                "{outcome:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_expired_queued_request_is_cut_from_the_queued_bytes() {
        let shared = shared(16);
        let first = queue_directly(&shared, &cmd("GET").arg("a"), in_an_hour());
        let late = queue_directly(&shared, &cmd("SET").arg("k").arg("v"), a_moment_ago());
        let _last = queue_directly(&shared, &cmd("GET").arg("b"), in_an_hour());
        shared.expire(Instant::now());
        let outcome = late.await.expect("answered");
        assert!(timed_out(&outcome), "{outcome:?}");
        {
            let queue = lock(&shared.queue);
            assert_eq!(queue.requests.len(), 2);
            let expected = encoded(&[cmd("GET").arg("a"), cmd("GET").arg("b")]);
            assert_eq!(&queue.bytes[..], &expected[..]);
        }
        drop(first);
    }

    #[test]
    fn compaction_keeps_the_kept_bytes_in_order_and_any_tail() {
        let mut bytes = BytesMut::from(&b"aabbbcdddd"[..]);
        let mut cut = Compaction::default();
        cut.step(&mut bytes, 2, false);
        cut.step(&mut bytes, 3, true);
        cut.step(&mut bytes, 1, false);
        cut.finish(&mut bytes);
        assert_eq!(&bytes[..], b"bbbdddd", "the tail past the steps stays");
        let mut untouched = BytesMut::from(&b"abc"[..]);
        let mut keep_all = Compaction::default();
        keep_all.step(&mut untouched, 3, true);
        keep_all.finish(&mut untouched);
        assert_eq!(&untouched[..], b"abc");
    }

    /// A connection over an in-memory pipe; the other end plays the node (RESP2, so
    /// the handshake is one `PING`, answered here).
    async fn over_pipe() -> (NodeConnection, tokio::io::DuplexStream) {
        over_pipe_with(ConnectOptions::default()).await
    }

    async fn over_pipe_with(options: ConnectOptions) -> (NodeConnection, tokio::io::DuplexStream) {
        let (ours, mut node) = tokio::io::duplex(64 * 1024);
        let options = options.protocol(Protocol::Resp2);
        node.write_all(b"+PONG\r\n").await.unwrap();
        let conn = NodeConnection::over_stream("fake:1", ours, &options)
            .await
            .unwrap();
        let ping = b"*1\r\n$4\r\nPING\r\n";
        let mut asked = [0u8; 14];
        node.read_exact(&mut asked).await.unwrap();
        assert_eq!(&asked, ping);
        (conn, node)
    }

    /// Sends `GET key` on a task of its own, so that the test can play the server.
    fn spawn_get(
        conn: &NodeConnection,
        key: &'static str,
    ) -> tokio::task::JoinHandle<Result<Value>> {
        let conn = conn.clone();
        tokio::spawn(async move { conn.send(cmd("GET").arg(key)).await })
    }

    fn get(key: &str) -> Vec<u8> {
        let mut bytes = BytesMut::new();
        cmd("GET").arg(key).write_to(&mut bytes);
        bytes.to_vec()
    }

    // Paused clock: `sleep` returns only once every task waits, which is how these tests
    // know the writer has done all it was going to.
    #[tokio::test(start_paused = true)]
    async fn requests_sent_while_a_write_is_unanswered_go_together_in_the_next_write() {
        let (conn, mut node) = over_pipe().await;
        let send = |key| spawn_get(&conn, key);
        let first = send("a");
        let mut buf = vec![0u8; 4096];
        let n = node.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], get("a"), "a lone request is written at once");
        let later = [send("b"), send("c"), send("d")];
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        assert!(
            futures_util::FutureExt::now_or_never(node.read(&mut buf)).is_none(),
            "held back while the first write is unanswered"
        );
        node.write_all(b"$1\r\nA\r\n").await.unwrap();
        assert_eq!(
            first.await.unwrap().unwrap(),
            Value::Bulk(bytes::Bytes::from_static(b"A"))
        );
        let n = node.read(&mut buf).await.unwrap();
        assert_eq!(
            &buf[..n],
            [get("b"), get("c"), get("d")].concat(),
            "one write"
        );
        node.write_all(b"$1\r\nB\r\n$1\r\nC\r\n$-1\r\n")
            .await
            .unwrap();
        let mut replies = Vec::new();
        for task in later {
            replies.push(task.await.unwrap().unwrap());
        }
        assert_eq!(replies[2], Value::Nil);
    }

    #[tokio::test]
    async fn callers_waiting_for_room_are_woken_one_per_place_freed() {
        // 2000 requests on a connection that holds 8 queued: each write of up to 8 woke
        // every caller waiting (about 2000 * 2000 / 8 waits in all), each to find the
        // queue full again.
        const REQUESTS: usize = 2000;
        let options = ConnectOptions::default().max_in_flight(8);
        let (conn, mut node) = over_pipe_with(options).await;
        let requests: Vec<_> = (0..REQUESTS).map(|_| spawn_get(&conn, "k")).collect();
        let request_len = get("k").len();
        let (mut read, mut answered) = (0, 0);
        let mut buf = vec![0u8; 64 * 1024];
        while answered < REQUESTS {
            let n = node.read(&mut buf).await.unwrap();
            assert!(n > 0, "the connection closed");
            read += n;
            let due = read / request_len - answered;
            node.write_all(&b"$-1\r\n".repeat(due)).await.unwrap();
            answered += due;
        }
        for request in requests {
            assert_eq!(request.await.unwrap().unwrap(), Value::Nil);
        }
        let waits = conn.shared.waits_for_space.load(Ordering::Relaxed);
        assert!(waits < 3 * REQUESTS, "{waits} waits for room");
    }

    #[tokio::test]
    async fn a_reply_read_with_the_end_of_a_large_one_is_no_slice_of_its_buffer() {
        // A 5 MiB reply and a small one, written together: the large one's last read
        // brings the small one too. Decoded from the same buffer, the small reply kept
        // alive the whole large allocation for as long as its caller kept it.
        let (conn, mut node) = over_pipe().await;
        let (big, small) = (spawn_get(&conn, "big"), spawn_get(&conn, "small"));
        let mut asked = vec![0u8; get("big").len() + get("small").len()];
        node.read_exact(&mut asked).await.unwrap();
        let len = 5 * 1024 * 1024;
        let mut answer = format!("${len}\r\n").into_bytes();
        answer.resize(answer.len() + len, b'x');
        answer.extend_from_slice(b"\r\n$1\r\nv\r\n");
        node.write_all(&answer).await.unwrap();
        let (Value::Bulk(big), Value::Bulk(small)) =
            (big.await.unwrap().unwrap(), small.await.unwrap().unwrap())
        else {
            panic!("two bulk replies");
        };
        assert_eq!((big.len(), &small[..]), (len, &b"v"[..]));
        // Where the small reply stood in the large one's buffer, right after it.
        let in_big_buffer = big.as_ptr() as usize + big.len() + b"\r\n$1\r\n".len();
        assert_ne!(small.as_ptr() as usize, in_big_buffer);
    }

    #[tokio::test]
    async fn push_frames_with_or_without_attributes_answer_no_request() {
        let (conn, mut node) = over_pipe().await;
        let get_a = spawn_get(&conn, "a");
        let mut buf = vec![0u8; 4096];
        let n = node.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], get("a"));
        node.write_all(
            b">2\r\n+invalidate\r\n*0\r\n|1\r\n+k\r\n+v\r\n>2\r\n+invalidate\r\n*0\r\n$1\r\nA\r\n",
        )
        .await
        .unwrap();
        assert_eq!(
            get_a.await.unwrap().unwrap(),
            Value::Bulk(bytes::Bytes::from_static(b"A"))
        );
        assert!(!conn.is_closed());
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_max_in_flight_requests_are_written_unanswered() {
        let (conn, mut node) = over_pipe_with(ConnectOptions::default().max_in_flight(2)).await;
        let send = |key| spawn_get(&conn, key);
        let first = send("a");
        let mut buf = vec![0u8; 4096];
        let n = node.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], get("a"));
        // Two more gather while `a` is unanswered: a full batch for a limit of two, but
        // only one of them fits beside `a`.
        let later = [send("b"), send("c")];
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        let n = node.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], get("b"), "two in flight at most");
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        assert!(
            futures_util::FutureExt::now_or_never(node.read(&mut buf)).is_none(),
            "c waits for a reply"
        );
        // Then, one write in flight at a time: `c` goes once `b` is answered too.
        node.write_all(b"$1\r\nA\r\n$1\r\nB\r\n").await.unwrap();
        assert!(first.await.unwrap().is_ok());
        let n = node.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], get("c"));
        node.write_all(b"$1\r\nC\r\n").await.unwrap();
        for task in later {
            assert!(task.await.unwrap().is_ok());
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_held_behind_a_write_the_server_never_answers_times_out_unsent() {
        let (conn, mut node) = over_pipe().await;
        let slow = tokio::spawn({
            let conn = conn.clone();
            async move {
                conn.send_timeout(cmd("GET").arg("a"), std::time::Duration::from_secs(1))
                    .await
            }
        });
        let mut buf = vec![0u8; 4096];
        let n = node.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], get("a"));
        let in_100_ms = Instant::now() + std::time::Duration::from_millis(100);
        let held = conn
            .dispatch(Cmds::One(cmd("INCR").arg("n")), in_100_ms)
            .await;
        assert!(
            matches!(held.result, Err(Error::Timeout { .. })),
            "{held:?}"
        );
        assert!(
            matches!(&held.cmds, Cmds::One(c) if c.name() == b"INCR"),
            "the command comes back to be sent again: {held:?}"
        );
        assert!(matches!(slow.await.unwrap(), Err(Error::Timeout { .. })));
        conn.close();
        let mut rest = Vec::new();
        node.read_to_end(&mut rest).await.unwrap();
        assert!(
            rest.is_empty(),
            "the INCR never reached the server: {rest:?}"
        );
    }

    /// A connection over a pipe that closes after 10 s of silence, a `GET a` written on
    /// it with a deadline of 1 s (the node has read it), and an `INCR` queued behind.
    async fn silent_node() -> (
        NodeConnection,
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<Result<Value>>,
        tokio::task::JoinHandle<Result<Value>>,
    ) {
        let limit = Some(std::time::Duration::from_secs(10));
        let (conn, mut node) =
            over_pipe_with(ConnectOptions::default().unresponsive_timeout(limit)).await;
        let send = |command: Cmd, secs| {
            let conn = conn.clone();
            let timeout = std::time::Duration::from_secs(secs);
            tokio::spawn(async move { conn.send_timeout(command, timeout).await })
        };
        let get = send(cmd("GET").arg("a"), 1);
        let mut buf = vec![0u8; 4096];
        let n = node.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], self::get("a"));
        let incr = send(cmd("INCR").arg("n"), 3600);
        (conn, node, get, incr)
    }

    // Paused clock: the deadline task's timers fire in order as the test sleeps.
    #[tokio::test(start_paused = true)]
    async fn a_node_silent_after_a_timeout_loses_the_connection_with_no_other_traffic() {
        let start = Instant::now();
        let (conn, _node, get, incr) = silent_node().await;
        assert!(matches!(get.await.unwrap(), Err(Error::Timeout { .. })));
        tokio::time::sleep_until(start + std::time::Duration::from_millis(9_900)).await;
        assert!(!conn.is_closed());
        tokio::time::sleep_until(start + std::time::Duration::from_millis(10_200)).await;
        assert!(
            conn.is_closed(),
            "silent for 10 s after the GET was written"
        );
        // The INCR waited behind the unanswered write: it never reached the node.
        let incr = incr.await.unwrap();
        assert!(
            matches!(
                incr,
                Err(Error::ConnectionLost {
                    may_have_executed: false
                })
            ),
            "{incr:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_first_bytes_of_a_reply_still_coming_show_the_node_alive() {
        let start = Instant::now();
        let (conn, mut node, get, _incr) = silent_node().await;
        assert!(matches!(get.await.unwrap(), Err(Error::Timeout { .. })));
        tokio::time::sleep_until(start + std::time::Duration::from_secs(5)).await;
        // The start of a 100-byte value, the rest never comes.
        node.write_all(b"$100\r\nabc").await.unwrap();
        tokio::time::sleep_until(start + std::time::Duration::from_millis(14_900)).await;
        assert!(!conn.is_closed());
        tokio::time::sleep_until(start + std::time::Duration::from_millis(15_200)).await;
        assert!(conn.is_closed(), "silent for 10 s after the last byte");
    }

    #[tokio::test]
    async fn replies_decoded_before_garbage_still_reach_their_requests() {
        let shared = shared(16);
        let first = in_flight(&shared);
        let second = in_flight(&shared);
        let (client, mut server) = tokio::io::duplex(1024);
        server.write_all(b"$1\r\na\r\n@garbage\r\n").await.unwrap();
        let reader = tokio::spawn(read_loop(
            client,
            BytesMut::new(),
            Decoder::new(),
            Arc::clone(&shared),
        ));
        let first = first.await.unwrap().unwrap();
        assert_eq!(first[0], Value::Bulk(bytes::Bytes::from_static(b"a")));
        let err = second.await.unwrap().unwrap_err().error;
        assert!(err.may_have_executed(), "{err:?}");
        reader.await.unwrap();
        assert!(shared.is_closed());
    }

    #[test]
    fn a_reply_wakes_the_writer_only_when_it_may_write() {
        use futures_util::FutureExt as _;
        let reply = |shared: &Shared| {
            let mut replies: SmallVec<[Value; 16]> = SmallVec::new();
            replies.push(Value::Nil);
            deliver(shared, &mut replies, &mut Vec::new(), 0).unwrap();
            // `notify_one` leaves a permit for the next waiter when none waits.
            shared.room.notified().now_or_never().is_some()
        };
        let shared = shared(16);
        let _first = in_flight(&shared);
        let _second = in_flight(&shared);
        assert!(
            !reply(&shared),
            "a reply still owed: the writer keeps waiting"
        );
        assert!(!reply(&shared), "nothing queued: the next request wakes it");
        let _third = in_flight(&shared);
        let _queued = queue_directly(&shared, &cmd("GET").arg("a"), in_an_hour());
        assert!(reply(&shared), "all answered and a request waits: write it");

        // Backpressure: a reply makes room under `max_in_flight`.
        let full = self::shared(1);
        let _only = in_flight(&full);
        assert!(reply(&full), "room under max_in_flight");
    }

    #[tokio::test]
    async fn closing_ends_a_writer_blocked_on_a_server_that_stopped_reading() {
        let shared = shared(16);
        // The server end is kept but never read: once its 4 KiB buffer is full, every
        // write blocks.
        let (client, _server) = tokio::io::duplex(4096);
        let writer = tokio::spawn(write_loop(client, Arc::clone(&shared)));
        let big = cmd("SET").arg("k").arg(vec![b'x'; 1 << 20]);
        let answer = queue_directly(&shared, &big, in_an_hour());
        // The request is recorded as in flight just before its bytes go out.
        let recorded = async {
            while shared.in_flight().is_empty() {
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), recorded)
            .await
            .expect("the writer took the request");
        shared.close(&Error::ConnectionLost {
            may_have_executed: true,
        });
        let err = answer.await.unwrap().unwrap_err().error;
        assert!(err.may_have_executed(), "{err:?}");
        // The writer ends although the server still has not read a byte.
        tokio::time::timeout(std::time::Duration::from_secs(5), writer)
            .await
            .expect("the writer ended after close")
            .unwrap();
    }

    #[test]
    fn the_pairing_and_connection_changing_kinds_of_the_refusal_list_are_refused() {
        for &(name, kind) in crate::cmd::REFUSED {
            let c = crate::cmd::as_written(name);
            let refused = refuse_unpaired(&c);
            match kind {
                Refusal::Subscription | Refusal::Unpaired | Refusal::ConnectionState => {
                    assert!(matches!(refused, Err(Error::Config(_))), "{c:?}")
                }
                Refusal::Transaction
                | Refusal::Wait
                | Refusal::ClientManaged
                | Refusal::ConnectionSetting => assert!(refused.is_ok(), "{c:?}"),
            }
        }
        // What the dedicated pool's recycle check sends.
        assert!(refuse_on_shared(&[cmd("UNWATCH"), cmd("PING")]).is_ok());
        // An empty command would get no reply, and take the next one.
        assert!(matches!(
            refuse_on_shared(&[cmd("PING"), Cmd::new()]),
            Err(Error::Config(_))
        ));
        assert!(refuse_unpaired(&cmd("CLIENT").arg("LIST")).is_ok());
        assert!(refuse_unpaired(&cmd("GET").arg("subscribe")).is_ok());
    }

    #[test]
    fn a_transaction_left_open_is_refused_and_a_whole_one_is_sent() {
        let set = || cmd("SET").arg("k").arg("v");
        let open: [&[Cmd]; 7] = [
            &[cmd("MULTI")],
            &[cmd("watch").arg("k")],
            &[cmd("MULTI"), set()],
            &[cmd("WATCH").arg("k"), cmd("MULTI"), set()],
            // Inside MULTI, UNWATCH is only queued; nothing ends the MULTI.
            &[cmd("WATCH").arg("k"), cmd("MULTI"), cmd("UNWATCH")],
            &[cmd("MULTI"), set(), cmd("EXEC"), cmd("Multi")],
            // Without a MULTI the server refuses DISCARD, and the WATCH holds.
            &[cmd("WATCH").arg("k"), cmd("DISCARD")],
        ];
        for cmds in open {
            assert!(
                matches!(refuse_on_shared(cmds), Err(Error::Config(_))),
                "{cmds:?}"
            );
        }
        let whole: [&[Cmd]; 6] = [
            &[cmd("MULTI"), set(), cmd("EXEC")],
            &[cmd("multi"), set(), cmd("discard")],
            &[
                cmd("WATCH").arg("k"),
                cmd("GET").arg("k"),
                cmd("MULTI"),
                set(),
                cmd("EXEC"),
            ],
            &[cmd("WATCH").arg("k"), cmd("UNWATCH")],
            &[cmd("EXEC")],
            &[set(), cmd("GET").arg("k")],
        ];
        for cmds in whole {
            assert!(refuse_on_shared(cmds).is_ok(), "{cmds:?}");
        }
    }
}
