//! A cluster-wide `SCAN` that survives failovers and resharding.
//!
//! `SCAN` walks one node's keyspace. The cluster-wide scan walks every primary in turn and
//! keeps a set of slots already covered: a node's slot counts as covered only when its
//! scan finished and the node itself (its own `CLUSTER NODES` line) said it owned the
//! slot, neither migrating nor importing it, both before the scan began and after it
//! ended, with the same config epoch (which a slot handed back to it, or a failover and
//! back, would have moved on). Slots that do not qualify, because the node failed mid-way, a failover
//! happened, or a slot moved, are scanned again on their new owner. A node's pages all go
//! on one connection: a cursor means something only to the process that made it, so a
//! lost connection (a restart, which leaves the slots and epoch as they were) has the
//! node scanned again from cursor 0. As with `SCAN`
//! itself, a key present for the whole scan is returned at least once, and may be
//! returned more than once. An error that will come again (`NOPERM` or a bad option
//! from the server; `SCAN` or `CLUSTER` disabled in the client's `CommandRenames`;
//! refused credentials) ends the scan at once; a passing one (`LOADING`, `BUSY`, a lost
//! connection) is retried. The scan gives up with [`Error::ClusterDown`] after 20
//! passes (about 15 s of pauses between them) if some slot never qualified: a slot
//! with no reachable primary, or one migrating through every pass (a resharding moving
//! a large slot, or one left half-moved by an interrupted resharding, which
//! `redis-cli --cluster fix` closes).

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::cluster::node::{Admitted, Node};
use crate::cluster::{ClusterClient, Inner};
use crate::cmd::{self, cmd, Cmd};
use crate::error::ServerError;
use crate::error::{Error, Result};
use crate::observe::metrics::{self, Status};
use crate::policy::{classify, ErrorAction};
use crate::resp::Value;
use crate::slot::{key_slot, SLOT_COUNT};
use crate::topology::RefreshTrigger;

/// Options of [`ClusterClient::scan`].
///
/// ```
/// use redcluster::ScanOptions;
/// let options = ScanOptions::default().pattern("session:*").count(1000).key_type("hash");
/// assert_eq!(options.pattern.as_deref(), Some("session:*"));
/// assert_eq!(ScanOptions::default().count, None); // the server's default
/// ```
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ScanOptions {
    /// `MATCH` pattern; default none (every key).
    pub pattern: Option<String>,
    /// `COUNT` hint per `SCAN` call; default the server's (10).
    pub count: Option<u32>,
    /// `TYPE` filter (`string`, `hash`, ...); default none.
    pub key_type: Option<String>,
}

impl ScanOptions {
    /// Sets the `MATCH` pattern.
    ///
    /// ```
    /// let options = redcluster::ScanOptions::default().pattern("user:*:name");
    /// assert_eq!(options.pattern.as_deref(), Some("user:*:name"));
    /// ```
    pub fn pattern(mut self, pattern: impl Into<String>) -> Self {
        self.pattern = Some(pattern.into());
        self
    }

    /// Sets the `COUNT` hint.
    ///
    /// ```
    /// let options = redcluster::ScanOptions::default().count(500);
    /// assert_eq!(options.count, Some(500));
    /// ```
    pub fn count(mut self, count: u32) -> Self {
        self.count = Some(count);
        self
    }

    /// Sets the `TYPE` filter.
    ///
    /// ```
    /// let options = redcluster::ScanOptions::default().key_type("zset");
    /// assert_eq!(options.key_type.as_deref(), Some("zset"));
    /// ```
    pub fn key_type(mut self, key_type: impl Into<String>) -> Self {
        self.key_type = Some(key_type.into());
        self
    }
}

/// The keys of a cluster-wide scan, as a `futures::Stream` of `Result<Bytes>`.
///
/// Every primary is scanned with its own cursor, one node after another. As with
/// `SCAN` itself, a key present for the whole scan is returned at least once and may be
/// returned more than once (deduplicate if it matters); a key added or removed
/// meanwhile may or may not be. A node's slots count as covered only if the node owned
/// them, neither migrating nor importing, before and after its scan, with the same
/// config epoch, on one connection: slots that failed over, moved, or whose node
/// restarted or dropped the connection part way are scanned again on their owner, from
/// the start. A pattern that pins one slot (a literal prefix holding a `{tag}`:
/// `user:{42}:*`) is scanned on that slot's owner only.
///
/// The stream ends after every slot was covered, or after one error (then the scan is
/// incomplete): an error that would come again at once (`NOPERM`, a bad option, `SCAN`
/// disabled), or [`crate::Error::ClusterDown`] after 20 passes (about 15 s of pauses)
/// in which some slot never qualified (no reachable primary, or migrating throughout).
/// Passing errors (`LOADING`, `BUSY`, a lost connection) are retried. Dropping the
/// stream stops the scan. The scan runs on a task of the runtime `scan` was called on:
/// should that runtime shut down first, the stream ends with
/// [`crate::Error::ClusterDown`], not as if complete.
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// use futures_util::TryStreamExt;
/// use redcluster::ScanOptions;
/// let keys: Vec<bytes::Bytes> = client
///     .scan(ScanOptions::default().pattern("tmp:*"))
///     .try_collect()
///     .await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Scan {
    keys: mpsc::Receiver<Result<Bytes>>,
    /// Set by the scan's task when it ends of its own accord (every slot covered, or its
    /// error sent). The keys closed without it: the task was dropped part way (its
    /// runtime shut down), and the stream must not end as if complete.
    finished: Arc<AtomicBool>,
    /// Whether the stream has ended.
    ended: bool,
}

impl futures_core::Stream for Scan {
    type Item = Result<Bytes>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.ended {
            return Poll::Ready(None);
        }
        let key = std::task::ready!(self.keys.poll_recv(cx));
        if key.is_none() {
            self.ended = true;
            if !self.finished.load(Ordering::Acquire) {
                return Poll::Ready(Some(Err(Error::ClusterDown(
                    "the scan stopped before it covered every slot: its task ended early \
                     (its runtime shut down, or it panicked)"
                        .into(),
                ))));
            }
        }
        Poll::Ready(key)
    }
}

/// Passes over the remaining slots before the scan gives up; each pass covers every slot
/// whose owner could be scanned without interference.
const MAX_PASSES: u32 = 20;

impl ClusterClient {
    /// Scans the keys of the whole cluster (every primary), with `MATCH`, `COUNT` and
    /// `TYPE` as `options` says. See [`Scan`] for what it guarantees.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use futures_util::StreamExt;
    /// use redcluster::ScanOptions;
    /// let mut keys = client.scan(ScanOptions::default().pattern("user:*").count(500));
    /// while let Some(key) = keys.next().await {
    ///     println!("{:?}", key?);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn scan(&self, options: ScanOptions) -> Scan {
        let (tx, keys) = mpsc::channel(1024);
        let inner = Arc::clone(&self.inner);
        let timeout = self.response_timeout;
        let finished = Arc::new(AtomicBool::new(false));
        let done = Arc::clone(&finished);
        tokio::spawn(async move {
            // Dropped, the stream stops the scan at once, not after the request under
            // way: that one waits up to the response timeout (with an unbounded one on a
            // frozen node, for ever), and the task holds the client meanwhile.
            let scanned = tokio::select! {
                scanned = scan_cluster(&inner, timeout, &options, &tx) => scanned,
                () = tx.closed() => Ok(()),
            };
            if let Err(e) = scanned {
                let _ = tx.send(Err(e)).await;
            }
            done.store(true, Ordering::Release);
        });
        Scan {
            keys,
            finished,
            ended: false,
        }
    }
}

async fn scan_cluster(
    inner: &Inner,
    timeout: Duration,
    options: &ScanOptions,
    tx: &mpsc::Sender<Result<Bytes>>,
) -> Result<()> {
    let mut done = vec![false; usize::from(SLOT_COUNT)];
    // A pattern that pins one slot (`user:{42}:*`) is scanned on that slot's owner
    // alone: no key elsewhere can match it.
    if let Some(slot) = options.pattern.as_deref().and_then(pattern_slot) {
        done.fill(true);
        done[usize::from(slot)] = false;
    }
    // Why the last interrupted node scan stopped, for the error if the scan gives up.
    let mut last_error: Option<Error> = None;
    for pass in 0..MAX_PASSES {
        if done.iter().all(|&d| d) {
            return Ok(());
        }
        if pass > 0 {
            // Something interfered last pass (a failover, a migration): give the cluster
            // a moment and learn its new shape.
            tokio::time::sleep(Duration::from_millis(100 * u64::from(pass.min(10)))).await;
            // Within the scan's timeout, as a node scan is: against nodes that accept
            // connections and never answer, a refresh asks three after three, each for
            // up to its connect and response timeouts, and nineteen passes of that would
            // stretch the scan's end from seconds to minutes. Cut short, it installs
            // nothing, and this pass routes on what the client knows.
            let _ = tokio::time::timeout(timeout, inner.refresh(RefreshTrigger::Periodic)).await;
        }
        let owners = owners_of_remaining(inner, &done);
        for (addr, slots) in owners {
            if tx.is_closed() {
                return Ok(()); // Nobody wants more keys.
            }
            // The node's own word on its slots, before and after: a slot that moved in
            // or out meanwhile is not covered by this scan, nor any slot of a node whose
            // config epoch changed (a slot moved away and back, a failover and back).
            let scanned = async {
                let before = settled_slots(inner, timeout, &addr).await?;
                let more = scan_node(inner, timeout, &addr, &slots, options, tx).await?;
                let after = settled_slots(inner, timeout, &addr).await?;
                Ok::<_, Error>(more.then_some((before, after)))
            };
            match scanned.await {
                Ok(Some((before, after))) => {
                    let unchanged = before.epoch.is_some() && before.epoch == after.epoch;
                    let mut unsettled = 0usize;
                    for slot in slots {
                        if unchanged && before.contains(slot) && after.contains(slot) {
                            done[usize::from(slot)] = true;
                        } else {
                            unsettled += 1;
                        }
                    }
                    // The one outside sign of a rescan: the keys returned look the
                    // same whether the slots were scanned once or twice.
                    if unsettled > 0 {
                        tracing::debug!(
                            node = %addr,
                            slots = unsettled,
                            "slots of a node changed during its scan; will rescan them"
                        );
                    }
                }
                // The receiver is gone: nobody wants more keys.
                Ok(None) => return Ok(()),
                // Refused by the server (`NOPERM`, a bad option): the next pass would be
                // refused the same way. (`LOADING`, `BUSY` and the like pass.)
                Err(Error::Server(e)) if refused_for_good(&e, &addr) => {
                    return Err(Error::Server(e))
                }
                // Refused by the client before sending (`SCAN` or `CLUSTER` disabled in
                // its `CommandRenames`), or credentials and certificates the node
                // rejects: the same every pass.
                Err(e @ (Error::Config(_) | Error::Auth(_) | Error::Tls(_))) => return Err(e),
                Err(e) => {
                    tracing::debug!(node = %addr, error = %e, "scan of a node interrupted; will rescan its slots");
                    inner.signal.request(RefreshTrigger::ConnectionFailure);
                    last_error = Some(e);
                }
            }
        }
    }
    if done.iter().all(|&d| d) {
        Ok(())
    } else {
        let unscanned = done.iter().filter(|&&d| !d).count();
        Err(Error::ClusterDown(match last_error {
            Some(e) => {
                format!("scan incomplete: {unscanned} slots could not be scanned; last error: {e}")
            }
            None => format!(
                "scan incomplete: {unscanned} slots could not be scanned (owner unknown, or \
                 migrating through every pass)"
            ),
        }))
    }
}

/// The one slot every key matching `pattern` hashes to, when the pattern pins it: it
/// begins with a literal part (no `*`, `?`, `[` or `\`) that holds a non-empty
/// `{tag}`. A matching key begins with that part, so its first `{...}` is the same tag.
fn pattern_slot(pattern: &str) -> Option<u16> {
    let pattern = pattern.as_bytes();
    let open = pattern.iter().position(|&b| b == b'{')?;
    let len = pattern[open + 1..].iter().position(|&b| b == b'}')?;
    let literal = &pattern[..open + len + 2];
    let glob = |b: &u8| matches!(b, b'*' | b'?' | b'[' | b'\\');
    (len > 0 && !literal.iter().any(glob)).then(|| key_slot(literal))
}

/// The slots not yet covered, grouped by their current owner.
fn owners_of_remaining(inner: &Inner, done: &[bool]) -> Vec<(Arc<str>, Vec<u16>)> {
    let routes = inner.routes.load();
    let mut owners: Vec<(Arc<str>, Vec<u16>)> = Vec::new();
    for slot in 0..SLOT_COUNT {
        if done[usize::from(slot)] {
            continue;
        }
        let Some(owner) = routes.map.primary(slot) else {
            continue; // Uncovered right now; a later pass retries it.
        };
        match owners.iter_mut().find(|(a, _)| a == owner) {
            Some((_, slots)) => slots.push(slot),
            None => owners.push((Arc::clone(owner), vec![slot])),
        }
    }
    owners
}

/// Scans one node to the end, sending keys of `slots` to `tx`. `Ok(false)` when the
/// receiver went away.
async fn scan_node(
    inner: &Inner,
    timeout: Duration,
    addr: &Arc<str>,
    slots: &[u16],
    options: &ScanOptions,
    tx: &mpsc::Sender<Result<Bytes>>,
) -> Result<bool> {
    let mut wanted = vec![false; usize::from(SLOT_COUNT)];
    for &s in slots {
        wanted[usize::from(s)] = true;
    }
    let node = inner.registry.get(addr, false);
    let mut cursor: Bytes = Bytes::from_static(b"0");
    // Every page on one connection: a cursor means something only to the server process
    // that made it. Were a lost connection reopened between pages, the next page could
    // go to the node restarted (no failover: no replica, or back within
    // `cluster-node-timeout`, its slots and epoch as before), whose keyspace hashes
    // with another seed: the old cursor would skip keys there. A lost connection ends
    // the node's scan, and its slots are scanned again from cursor 0.
    let mut pinned: Option<Arc<crate::NodeConnection>> = None;
    loop {
        let _admitted = admission(inner, &node)?;
        let conn = match &pinned {
            Some(conn) => Arc::clone(conn),
            None => Arc::clone(pinned.insert(connection(inner, timeout, &node).await?)),
        };
        // Each page is a request like any other: counted in the metrics and the breaker.
        let started = std::time::Instant::now();
        let page = conn.send_timeout(scan_cmd(&cursor, options), timeout).await;
        inner.record_on(&node, &conn, &page, started);
        let label = metrics::command_label(cmd::lookup_name(b"scan"));
        node.metrics
            .command(label, Status::of(page.as_ref()), started.elapsed());
        let reply = page?;
        let (next, keys) = match reply {
            Value::Array(mut parts) if parts.len() == 2 => {
                let keys = parts.pop().unwrap_or(Value::Nil);
                let next = parts.pop().unwrap_or(Value::Nil);
                (next, keys)
            }
            Value::ServerError(e) => return Err(Error::Server(e)),
            other => return Err(Error::Protocol(format!("SCAN answered {}", other.kind()))),
        };
        let Some(next) = next.as_bytes().map(Bytes::copy_from_slice) else {
            return Err(Error::Protocol("SCAN cursor is not a string".into()));
        };
        let Value::Array(keys) = keys else {
            return Err(Error::Protocol("SCAN keys are not an array".into()));
        };
        for key in keys {
            let Value::Bulk(key) = key else { continue };
            if wanted[usize::from(key_slot(&key))] && tx.send(Ok(key)).await.is_err() {
                return Ok(false);
            }
        }
        // A page with no matching key sends nothing: notice a dropped stream anyway.
        if tx.is_closed() {
            return Ok(false);
        }
        if &next[..] == b"0" {
            return Ok(true);
        }
        cursor = next;
    }
}

fn scan_cmd(cursor: &Bytes, options: &ScanOptions) -> Cmd {
    let mut c = cmd("SCAN").arg(cursor);
    if let Some(p) = &options.pattern {
        c = c.arg("MATCH").arg(p.as_str());
    }
    if let Some(n) = options.count {
        c = c.arg("COUNT").arg(n);
    }
    if let Some(t) = &options.key_type {
        c = c.arg("TYPE").arg(t.as_str());
    }
    c
}

/// Whether the node's breaker lets one of the scan's requests through (held until the
/// request's outcome is recorded).
fn admission<'a>(inner: &Inner, node: &'a Node) -> Result<Admitted<'a>> {
    inner.admit(node).ok_or_else(|| Error::CircuitOpen {
        node: node.addr.to_string(),
    })
}

/// The node's connection for one of the scan's requests; a failure to connect counts
/// against the breaker (unless the scan's own deadline ran out first), as any
/// request's would.
async fn connection(
    inner: &Inner,
    timeout: Duration,
    node: &Arc<Node>,
) -> Result<Arc<crate::NodeConnection>> {
    let deadline = crate::deadline::from_now(timeout);
    node.connection(deadline)
        .await
        .inspect_err(|e| inner.record_connect_failure(node, e))
}

/// Whether an error reply will come again however often the scan retries: not a
/// redirect or a passing state (`LOADING`, `TRYAGAIN`, `CLUSTERDOWN`, `BUSY`, ...).
fn refused_for_good(e: &ServerError, addr: &str) -> bool {
    matches!(classify(e, addr), ErrorAction::Reply) && e.code() != "BUSY"
}

/// The slots a node serves undisturbed, by its own `CLUSTER NODES` line.
#[derive(Debug, PartialEq, Eq)]
struct Settled {
    /// Its config epoch, which a slot handed to it or a failover moves on.
    epoch: Option<u64>,
    /// Owned: the line's slot ranges.
    owned: Vec<(u16, u16)>,
    /// Migrating (`[slot->-id]`) or importing (`[slot-<-id]`).
    open: Vec<u16>,
}

impl Settled {
    fn contains(&self, slot: u16) -> bool {
        self.owned.iter().any(|&(a, b)| (a..=b).contains(&slot)) && !self.open.contains(&slot)
    }
}

/// Asks the node at `addr` for its own view of its slots.
///
/// # Errors
///
/// The request's error; an error reply ([`Error::Server`], `NOPERM` without
/// `+cluster|nodes`) as is; [`Error::Protocol`] for a reply without a `myself` line.
async fn settled_slots(inner: &Inner, timeout: Duration, addr: &str) -> Result<Settled> {
    let node = inner.registry.get(addr, false);
    let _admitted = admission(inner, &node)?;
    let conn = connection(inner, timeout, &node).await?;
    let sent = std::time::Instant::now();
    let reply = conn
        .send_timeout(cmd("CLUSTER").arg("NODES"), timeout)
        .await;
    inner.record_on(&node, &conn, &reply, sent);
    let reply = reply?;
    let text = match &reply {
        Value::Bulk(b) | Value::Verbatim { text: b, .. } => String::from_utf8_lossy(b),
        Value::ServerError(e) => return Err(Error::Server(e.clone())),
        other => {
            return Err(Error::Protocol(format!(
                "CLUSTER NODES answered {}",
                other.kind()
            )))
        }
    };
    settled(&text).ok_or_else(|| Error::Protocol("CLUSTER NODES without a myself line".into()))
}

/// The slots of the line of a `CLUSTER NODES` reply whose flags (the third field)
/// include `myself`; `None` without such a line.
fn settled(cluster_nodes: &str) -> Option<Settled> {
    let myself = cluster_nodes.lines().find(|line| {
        line.split(' ')
            .nth(2)
            .is_some_and(|flags| flags.split(',').any(|flag| flag == "myself"))
    })?;
    let mut settled = Settled {
        epoch: myself.split(' ').nth(6).and_then(|e| e.parse().ok()),
        owned: Vec::new(),
        open: Vec::new(),
    };
    // id addr flags master ping-sent pong-recv epoch link-state slot...
    for field in myself.split(' ').skip(8) {
        if let Some(open) = field.strip_prefix('[') {
            if let Some(slot) = open
                .split(['-', '>', '<'])
                .next()
                .and_then(|s| s.parse().ok())
            {
                settled.open.push(slot);
            }
        } else {
            let range = match field.split_once('-') {
                Some((a, b)) => a.parse().ok().zip(b.parse().ok()),
                None => field.parse().ok().map(|s| (s, s)),
            };
            settled
                .owned
                .extend(range.filter(|&(a, b): &(u16, u16)| a <= b));
        }
    }
    Some(settled)
}

#[cfg(test)]
mod tests {
    use super::{pattern_slot, settled};
    use crate::slot::key_slot;
    use proptest::prelude::*;

    #[test]
    fn a_pattern_with_a_literal_tag_pins_its_slot() {
        assert_eq!(pattern_slot("user:{42}:*"), Some(key_slot(b"{42}")));
        assert_eq!(pattern_slot("{42}*"), Some(key_slot(b"42")));
        // A glob before the tag: a key could hold an earlier `{...}`.
        assert_eq!(pattern_slot("*{42}*"), None);
        assert_eq!(pattern_slot("u?:{42}:*"), None);
        assert_eq!(pattern_slot("[ab]{42}"), None);
        assert_eq!(pattern_slot(r"a\{b}"), None);
        // A glob inside the tag, an empty tag, no tag, no end to the tag.
        assert_eq!(pattern_slot("user:{4*}:x"), None);
        assert_eq!(pattern_slot("user:{}:*"), None);
        assert_eq!(pattern_slot("user:*"), None);
        assert_eq!(pattern_slot("user:{42:*"), None);
    }

    /// Fields of `CLUSTER NODES` lines, and some that are not.
    fn field() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec![
                "myself", "myself,master", "master", "slave", "-", "0", "1", "connected",
                "0-16383", "16383-0", "5-", "-5", "[5->-a1]", "[5-<-a1]", "[", "[-", "65535",
                "65536", "18446744073709551616", "a1", "127.0.0.1:7000@17000", "",
            ])
            .prop_map(String::from),
            1 => ".{0,6}",
        ]
    }

    proptest! {
        #[test]
        fn any_cluster_nodes_text_gives_slots_in_range_or_none(
            lines in prop::collection::vec(prop::collection::vec(field(), 0..12), 0..4),
            newline in prop::sample::select(vec!["\n", "\r\n"]),
        ) {
            let text: Vec<String> = lines.iter().map(|fields| fields.join(" ")).collect();
            if let Some(settled) = settled(&text.join(newline)) {
                prop_assert!(settled.owned.iter().all(|&(a, b)| a <= b));
                for slot in [0, 5, 16383, u16::MAX] {
                    let _ = settled.contains(slot);
                }
            }
        }
    }

    #[test]
    fn settled_slots_come_from_the_myself_line_only() {
        // The first line's hostname says "myself"; only the flags field counts.
        let nodes = "\
a1 127.0.0.1:7001@17001,myself-host master - 0 0 2 connected 100-200 [300->-b2]
b2 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-99 [5-<-a1] [7->-c3] 8
c3 127.0.0.1:7002@17002 master - 0 0 3 connected 201-16383
";
        let b2 = settled(nodes).unwrap();
        assert_eq!(b2.epoch, Some(1));
        assert_eq!(b2.owned, vec![(0, 99), (8, 8)]);
        assert_eq!(b2.open, vec![5, 7]);
        assert!(b2.contains(0) && b2.contains(99) && b2.contains(8));
        assert!(!b2.contains(5), "importing");
        assert!(!b2.contains(7), "migrating");
        assert!(!b2.contains(100), "a1's");
        let all = settled("b2 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-16383\n");
        assert!(all.unwrap().contains(16383));
        // A replica (or an emptied primary) owns nothing.
        let replica = settled("c3 127.0.0.1:7002@17002 myself,slave a1 0 0 3 connected\n");
        assert!(replica.unwrap().owned.is_empty());
        assert_eq!(
            settled("c3 127.0.0.1:7002@17002 master - 0 0 3 connected\n"),
            None
        );
        assert_eq!(settled(""), None);
    }
}
