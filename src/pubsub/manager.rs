//! The subscriber's task: the subscriptions the user asked for, the connections that
//! carry them, and the repairs when a connection dies or a slot moves.
//!
//! Every subscription is in one of three states: waiting (to be sent), pending (sent on
//! a link, not confirmed) or active (confirmed on a link). A link that dies, an
//! unsolicited `sunsubscribe` (the slot moved away), or a new slot map that puts a
//! channel's slot elsewhere sends it back to waiting, marked interrupted; when it is
//! confirmed again the stream gets a `Gap` naming it before any message it carries.
//! Messages count only from the link their subscription is active on: the old link
//! delivers until it takes in the unsubscribe, late and out of order with the new one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::cluster::Inner;
use crate::cmd::cmd;
use crate::error::{Error, Result, ServerError};
use crate::pubsub::link::{Frame, Kind, Link, LinkEvent};
use crate::pubsub::queue::EventQueue;
use crate::pubsub::subs::{Key, State, Subs, Waiters};
use crate::pubsub::{Message, PubSubEvent, SubscriberConfig};
use crate::slot::{key_slot, parse_redirect, Redirect};
use crate::topology::RefreshTrigger;

/// How often the task checks the slot map and the links' liveness, at most (see `run`).
const HOUSEKEEPING: Duration = Duration::from_millis(500);
/// First and largest delay before subscriptions are sent again after failures.
const RETRY_BASE: Duration = Duration::from_millis(50);
const RETRY_MAX: Duration = Duration::from_secs(1);
/// How long a node whose connection failed is not chosen for classic subscriptions.
const AVOID_FOR: Duration = Duration::from_secs(5);
/// Most link events handled before the queue of gaps is flushed.
const EVENT_BATCH: usize = 256;

/// A request from the [`crate::pubsub::Subscriber`] handle.
#[derive(Debug)]
pub(crate) enum Control {
    Subscribe {
        kind: Kind,
        channels: Vec<Bytes>,
        reply: oneshot::Sender<Result<()>>,
    },
    Unsubscribe {
        kind: Kind,
        /// Empty: every subscription of the kind.
        channels: Vec<Bytes>,
        reply: oneshot::Sender<Result<()>>,
    },
}

/// Whether a subscription is made on every primary instead of on any one node: keyspace
/// notifications (`__keyspace@<db>__:<key>`, `__keyevent@<db>__:<event>`, and patterns
/// beginning `__key*`). A node publishes them to its own subscribers only, unlike
/// `PUBLISH`ed messages, which the cluster broadcasts. Replicas are left out: they
/// notify the writes they replicate again.
pub(crate) fn is_node_local(kind: Kind, channel: &[u8]) -> bool {
    match kind {
        Kind::Shard => false,
        Kind::Channel => channel.starts_with(b"__keyspace@") || channel.starts_with(b"__keyevent@"),
        Kind::Pattern => {
            channel.starts_with(b"__keyspace@")
                || channel.starts_with(b"__keyevent@")
                || channel.starts_with(b"__key*")
        }
    }
}

/// Whether a node's refusal of a (un)subscribe passes: asked again later, it may be
/// taken (a script running, the cluster or the slot in transition, a node loading).
fn passing_refusal(e: &ServerError) -> bool {
    matches!(
        e.code(),
        "TRYAGAIN" | "CLUSTERDOWN" | "LOADING" | "MASTERDOWN" | "BUSY"
    )
}

/// The key of `channel`'s subscription of `kind` on a link to `addr`.
fn key_at(kind: Kind, channel: Bytes, addr: &Arc<str>) -> Key {
    let node = is_node_local(kind, &channel).then(|| Arc::clone(addr));
    (kind, channel, node)
}

/// A command written on a link and not fully answered yet.
#[derive(Debug)]
enum Sent {
    Sub {
        kind: Kind,
        subscribe: bool,
        /// Channels whose confirmation has not arrived, in the order sent: the server
        /// confirms them in that order, so each confirmation is found at the front.
        remaining: std::collections::VecDeque<Bytes>,
    },
    Ping,
}

#[derive(Debug)]
struct LinkState {
    link: Link,
    sent: VecDeque<Sent>,
    /// Its connect and handshake are done. Until then it has no `PING` to answer (the
    /// connect timeout bounds that part), so liveness is not judged: a handshake
    /// slower than a `ping_interval` (TLS far away, a slow credentials provider) had
    /// the link replaced again and again, its subscriptions never made.
    up: bool,
    awaiting_pong: bool,
    /// When the last `PING` went, or the link came up.
    last_ping: Instant,
    /// Channels whose unsubscribe the node refused (`BUSY` while a script runs,
    /// `CLUSTERDOWN`, `TRYAGAIN`): still subscribed there, asked again by housekeeping
    /// while the link carries other subscriptions (closed, it takes them all along).
    unsubscribe_again: Vec<(Kind, Bytes)>,
}

#[derive(Debug, Default)]
struct Gaps {
    channels: Vec<Bytes>,
    patterns: Vec<Bytes>,
    shards: Vec<Bytes>,
}

pub(crate) struct Manager {
    inner: Arc<Inner>,
    ping_interval: Duration,
    queue: Arc<EventQueue>,
    control: mpsc::UnboundedReceiver<Control>,
    events_tx: mpsc::Sender<LinkEvent>,
    events: mpsc::Receiver<LinkEvent>,
    next_id: u64,
    links: HashMap<u64, LinkState>,
    classic: Option<u64>,
    /// Links to a given primary, for its sharded and node-local subscriptions.
    node_links: HashMap<Arc<str>, u64>,
    /// Node-local subscriptions asked for, whatever the primaries: what
    /// `follow_primaries` makes on each primary.
    local_wanted: HashSet<(Kind, Bytes)>,
    subs: Subs,
    waiters: Waiters,
    retry_at: Option<Instant>,
    failures: u32,
    avoid: HashMap<Arc<str>, Instant>,
    routes_version: u64,
    gaps: Gaps,
    stopped: bool,
}

/// However the task ends, returning or unwinding from a panic, the subscriber's stream
/// ends and every caller waiting for a confirmation gets an answer: nobody waits on a
/// task that is gone. Dropping the links closes their connections.
impl Drop for Manager {
    fn drop(&mut self) {
        self.queue.close();
        self.waiters.fail_all(&Error::ConnectionLost {
            may_have_executed: true,
        });
    }
}

impl Manager {
    pub(crate) fn new(
        inner: Arc<Inner>,
        config: &SubscriberConfig,
        queue: Arc<EventQueue>,
        control: mpsc::UnboundedReceiver<Control>,
    ) -> Manager {
        let (events_tx, events) = mpsc::channel(EVENT_BATCH * 4);
        let routes_version = inner.routes_version();
        Manager {
            inner,
            ping_interval: config.ping_interval.max(Duration::from_millis(100)),
            queue,
            control,
            events_tx,
            events,
            next_id: 0,
            links: HashMap::new(),
            classic: None,
            node_links: HashMap::new(),
            local_wanted: HashSet::new(),
            subs: Subs::default(),
            waiters: Waiters::default(),
            retry_at: None,
            failures: 0,
            avoid: HashMap::new(),
            routes_version,
            gaps: Gaps::default(),
            stopped: false,
        }
    }

    /// Runs until the [`crate::pubsub::Subscriber`] is dropped, or the queue overflowed
    /// under [`crate::pubsub::OverflowPolicy::Disconnect`].
    pub(crate) async fn run(mut self) {
        // Often enough for a short ping interval to be kept: a link is checked at
        // least twice per interval, so a dead one is found within one to two.
        let mut tick = tokio::time::interval(HOUSEKEEPING.min(self.ping_interval / 2));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        while !self.stopped {
            let retry = self.retry_at;
            let far = Instant::now() + Duration::from_secs(3600);
            tokio::select! {
                control = self.control.recv() => match control {
                    Some(control) => self.on_control(control),
                    None => break,
                },
                Some(event) = self.events.recv() => {
                    self.on_link_event(event);
                    for _ in 0..EVENT_BATCH {
                        match self.events.try_recv() {
                            Ok(event) => self.on_link_event(event),
                            Err(_) => break,
                        }
                    }
                    self.flush_gaps();
                }
                () = tokio::time::sleep_until(retry.unwrap_or(far)), if retry.is_some() => {
                    self.retry_at = None;
                    self.resync();
                }
                _ = tick.tick() => self.housekeeping(),
            }
        }
        // Dropping `self` ends the stream and answers the waiters.
    }

    fn on_control(&mut self, control: Control) {
        match control {
            Control::Subscribe {
                kind,
                channels,
                reply,
            } => {
                let mut keys = HashSet::new();
                let primaries = self.inner.primary_addrs();
                let mut undiscovered = false;
                for channel in channels {
                    let nodes: Vec<Option<Arc<str>>> = if is_node_local(kind, &channel) {
                        self.local_wanted.insert((kind, channel.clone()));
                        undiscovered |= primaries.is_empty();
                        primaries.iter().cloned().map(Some).collect()
                    } else {
                        vec![None]
                    };
                    for node in nodes {
                        let key = (kind, channel.clone(), node);
                        let (state, _) = self.subs.ask(key.clone(), false);
                        if !matches!(state, State::Active(_)) {
                            keys.insert((true, key));
                        }
                    }
                }
                if undiscovered {
                    // No primary to wait for yet; made once the cluster is discovered.
                    self.inner.request_refresh(RefreshTrigger::Uncovered);
                    let _ = reply.send(Err(Error::ClusterDown(
                        "no primary known yet: keyspace subscriptions are made on every \
                         primary once the cluster is discovered"
                            .into(),
                    )));
                    self.resync();
                    return;
                }
                self.waiters.wait(keys, reply);
                self.resync();
            }
            Control::Unsubscribe {
                kind,
                channels,
                reply,
            } => {
                // Every subscription of these channels (one per primary for a
                // node-local one), or every one of the kind.
                let ended: Vec<Key> = if channels.is_empty() {
                    self.local_wanted.retain(|(k, _)| *k != kind);
                    self.subs
                        .iter()
                        .filter(|((k, _, _), _)| *k == kind)
                        .map(|(key, _)| key.clone())
                        .collect()
                } else {
                    let mut ended = Vec::new();
                    for channel in &channels {
                        let node_local = is_node_local(kind, channel);
                        if node_local {
                            self.local_wanted.remove(&(kind, channel.clone()));
                        }
                        ended.extend(self.subs.keys_of(kind, channel, node_local));
                    }
                    ended
                };
                let mut per_link: HashMap<(u64, u16), Vec<Bytes>> = HashMap::new();
                let mut keys = HashSet::new();
                for key in ended {
                    let Some(sub) = self.subs.remove(&key) else {
                        continue;
                    };
                    // Whoever waits for this subscription waits no more.
                    self.waiters.resolve(&(true, key.clone()));
                    if let Some(id) = sub.state().link().filter(|id| self.links.contains_key(id)) {
                        let slot = if kind == Kind::Shard {
                            key_slot(&key.1)
                        } else {
                            0
                        };
                        per_link.entry((id, slot)).or_default().push(key.1.clone());
                        keys.insert((false, key));
                    }
                }
                for ((id, _), channels) in per_link {
                    self.send(id, kind, false, channels);
                }
                self.waiters.wait(keys, reply);
            }
        }
    }

    /// Writes `(P|S)(UN)SUBSCRIBE channels` on link `id` and records it.
    fn send(&mut self, id: u64, kind: Kind, subscribe: bool, channels: Vec<Bytes>) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        let name = if subscribe {
            kind.subscribe_cmd()
        } else {
            kind.unsubscribe_cmd()
        };
        let mut command = cmd(name);
        for channel in &channels {
            command = command.arg(channel);
        }
        link.link.send(command);
        link.sent.push_back(Sent::Sub {
            kind,
            subscribe,
            remaining: channels.into(),
        });
    }

    fn open(&mut self, addr: Arc<str>, classic: bool) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        // Subscriptions live on primaries (sharded) or anywhere (classic); never READONLY.
        let options = self.inner.connect_options(&addr, false);
        let link = Link::open(id, Arc::clone(&addr), options, self.events_tx.clone());
        self.links.insert(
            id,
            LinkState {
                link,
                sent: VecDeque::new(),
                up: false,
                awaiting_pong: false,
                last_ping: Instant::now(),
                unsubscribe_again: Vec::new(),
            },
        );
        if classic {
            self.classic = Some(id);
        } else {
            self.node_links.insert(addr, id);
        }
        id
    }

    fn emit(&mut self, event: PubSubEvent) {
        if !self.queue.push(event) {
            // Once: the rest of the batch being handled meets the closed queue too.
            if !self.stopped {
                tracing::warn!("subscriber queue overflowed; disconnecting as configured");
            }
            self.stopped = true;
        }
    }

    fn flush_gaps(&mut self) {
        let mut gaps = std::mem::take(&mut self.gaps);
        for channels in [&mut gaps.channels, &mut gaps.patterns, &mut gaps.shards] {
            let mut seen = HashSet::with_capacity(channels.len());
            channels.retain(|c| seen.insert(c.clone()));
        }
        if !gaps.channels.is_empty() || !gaps.patterns.is_empty() {
            self.emit(PubSubEvent::Gap {
                channels: gaps.channels,
                patterns: gaps.patterns,
                sharded: false,
            });
        }
        if !gaps.shards.is_empty() {
            self.emit(PubSubEvent::Gap {
                channels: gaps.shards,
                patterns: Vec::new(),
                sharded: true,
            });
        }
    }

    fn on_link_event(&mut self, event: LinkEvent) {
        match event {
            LinkEvent::Down { id, error } => self.on_link_down(id, &error),
            LinkEvent::Up { id } => {
                if let Some(link) = self.links.get_mut(&id) {
                    link.up = true;
                    link.last_ping = Instant::now();
                }
            }
            LinkEvent::Frame { id, frame } => {
                if !self.links.contains_key(&id) {
                    return; // a link already dropped
                }
                self.on_frame(id, frame);
            }
        }
    }

    fn on_frame(&mut self, id: u64, frame: Frame) {
        match frame {
            Frame::Message {
                channel,
                payload,
                pattern,
                sharded,
            } => {
                // Only from the link its subscription is active on. One moved elsewhere
                // (a failover, a slot move) is unsubscribed on its old link, which
                // still delivers until the server takes that in: the old owner, a
                // replica now, passes on what it replicates, late. Those messages,
                // older than the new link's, would come out of order, or twice; the
                // `Gap` of the move covers them.
                let active = |kind: Kind, name: &Bytes| {
                    self.key_on(id, kind, name.clone())
                        .and_then(|key| self.subs.get(&key))
                        .is_some_and(|sub| sub.state() == State::Active(id))
                };
                let sharded = match (&pattern, sharded) {
                    (Some(pattern), _) => active(Kind::Pattern, pattern).then_some(false),
                    (None, true) => active(Kind::Shard, &channel).then_some(true),
                    // Redis 7.0.0 delivers sharded messages as `message` (`smessage`
                    // from 7.0.1 on).
                    (None, false) => {
                        if active(Kind::Channel, &channel) {
                            Some(false)
                        } else {
                            active(Kind::Shard, &channel).then_some(true)
                        }
                    }
                };
                let Some(sharded) = sharded else {
                    tracing::debug!(node = %self.links.get(&id).map_or("", |l| &l.link.addr), "message from a link its subscription left: dropped");
                    return;
                };
                // A gap is reported before the first message after it.
                self.flush_gaps();
                self.emit(PubSubEvent::Message(Message {
                    channel,
                    payload,
                    pattern,
                    sharded,
                }));
            }
            Frame::Confirm {
                kind,
                subscribe,
                channel,
            } => {
                let Some(channel) = channel else {
                    return;
                };
                let matched = self.match_sent(id, kind, subscribe, &channel);
                match (matched, subscribe) {
                    // A subscribe the caller ended before its confirmation came: the
                    // unsubscribe after it answers for it, and a subscribe made again
                    // after that waits for its own confirmation.
                    (true, true) if self.unsubscribe_pending(id, kind, &channel) => {}
                    (true, true) => self.on_subscribed(id, kind, channel),
                    (true, false) => {
                        if let Some(key) = self.key_on(id, kind, channel) {
                            self.waiters.resolve(&(false, key));
                        }
                    }
                    // The server dropped it on its own: the slot moved away.
                    (false, false) => self.on_lost(id, kind, channel),
                    (false, true) => {
                        tracing::debug!(?kind, "unexpected subscribe confirmation");
                    }
                }
            }
            Frame::Pong => {
                if let Some(link) = self.links.get_mut(&id) {
                    link.awaiting_pong = false;
                    if let Some(i) = link.sent.iter().position(|s| matches!(s, Sent::Ping)) {
                        link.sent.remove(i);
                    }
                }
            }
            Frame::Error(e) => {
                let Some(link) = self.links.get_mut(&id) else {
                    return;
                };
                if !may_answer(link.sent.front(), &e) {
                    // The answer to an `SUNSUBSCRIBE` whose entry the server's own
                    // `sunsubscribe` (the slot moved) took: popped, it would be taken
                    // for the next command's.
                    tracing::debug!(error = %e, "redirect for a command already answered: dropped");
                    return;
                }
                let Some(front) = link.sent.pop_front() else {
                    tracing::debug!(error = %e, "error reply with no command waiting for it");
                    return;
                };
                match front {
                    Sent::Ping => {
                        if let Some(link) = self.links.get_mut(&id) {
                            link.awaiting_pong = false;
                        }
                    }
                    Sent::Sub {
                        kind,
                        subscribe: false,
                        remaining,
                    } => {
                        // A passing refusal (`BUSY` while a script runs, `CLUSTERDOWN`,
                        // ...) leaves the subscription in place, to be asked again. Not
                        // `MOVED` (the slot went, and the server dropped it then, saying
                        // so with a `sunsubscribe`), nor one for good (`NOPERM`, a
                        // renamed command: asking again would only fill the ACL log).
                        // Either way the caller is done: no message of it is delivered
                        // from now on.
                        let still_held = passing_refusal(&e);
                        for channel in remaining {
                            if let (true, Some(link)) = (still_held, self.links.get_mut(&id)) {
                                link.unsubscribe_again.push((kind, channel.clone()));
                            }
                            if let Some(key) = self.key_on(id, kind, channel) {
                                self.waiters.resolve(&(false, key));
                            }
                        }
                    }
                    Sent::Sub {
                        kind,
                        subscribe: true,
                        remaining,
                    } => self.on_subscribe_error(id, kind, remaining.into(), &e),
                }
                self.close_idle_links();
            }
            Frame::Other(value) => {
                tracing::debug!(kind = value.kind(), "unexpected frame on a subscriber link");
            }
        }
    }

    /// Removes `channel` from the oldest command on link `id` that waits for its
    /// confirmation; whether there was one. (A server's own `sunsubscribe`, when a
    /// slot moves away, takes the entry of an `SUNSUBSCRIBE` of that channel still on
    /// its way; the server then answers that one `MOVED`, which [`may_answer`] tells
    /// from the next command's answer.)
    fn match_sent(&mut self, id: u64, kind: Kind, subscribe: bool, channel: &Bytes) -> bool {
        let Some(link) = self.links.get_mut(&id) else {
            return false;
        };
        for i in 0..link.sent.len() {
            if let Sent::Sub {
                kind: k,
                subscribe: s,
                remaining,
            } = &mut link.sent[i]
            {
                if *k != kind || *s != subscribe {
                    continue;
                }
                if let Some(at) = remaining.iter().position(|c| c == channel) {
                    remaining.remove(at);
                    if remaining.is_empty() {
                        link.sent.remove(i);
                    }
                    return true;
                }
            }
        }
        false
    }

    /// Whether an unsubscribe of `channel` written on link `id` waits for its
    /// confirmation. (Called once a subscribe's confirmation removed that subscribe:
    /// confirmations come in the order sent, so such an unsubscribe was sent after it.)
    fn unsubscribe_pending(&self, id: u64, kind: Kind, channel: &Bytes) -> bool {
        self.links.get(&id).is_some_and(|link| {
            link.sent.iter().any(|sent| {
                matches!(sent, Sent::Sub { kind: k, subscribe: false, remaining }
                    if *k == kind && remaining.contains(channel))
            })
        })
    }

    /// The key of `channel`'s subscription of `kind` on link `id`, if the link is open.
    fn key_on(&self, id: u64, kind: Kind, channel: Bytes) -> Option<Key> {
        let link = self.links.get(&id)?;
        Some(key_at(kind, channel, &link.link.addr))
    }

    fn on_subscribed(&mut self, id: u64, kind: Kind, channel: Bytes) {
        self.failures = 0;
        let Some(key) = self.key_on(id, kind, channel.clone()) else {
            return;
        };
        match self.subs.get_mut(&key) {
            Some(sub) if sub.state() == State::Pending(id) => {
                sub.solo = false;
                let interrupted = std::mem::take(&mut sub.interrupted);
                self.subs.set_state(&key, State::Active(id));
                if interrupted {
                    let gaps = match kind {
                        Kind::Channel => &mut self.gaps.channels,
                        Kind::Pattern => &mut self.gaps.patterns,
                        Kind::Shard => &mut self.gaps.shards,
                    };
                    // (A node-local subscription restored on several primaries at once
                    // is one gap: `flush_gaps` drops the repeats.)
                    gaps.push(channel.clone());
                }
            }
            Some(sub) if sub.state() == State::Active(id) => {}
            Some(_) => {
                // Subscribed here while it belongs elsewhere now: no duplicate stays.
                self.send(id, kind, false, vec![channel.clone()]);
            }
            // Unsubscribed meanwhile; the unsubscribe is already on its way.
            None => {}
        }
        self.waiters.resolve(&(true, key));
    }

    fn on_lost(&mut self, id: u64, kind: Kind, channel: Bytes) {
        let Some(key) = self.key_on(id, kind, channel) else {
            return;
        };
        let Some(sub) = self.subs.get_mut(&key) else {
            return;
        };
        if sub.state().link() != Some(id) {
            return;
        }
        sub.interrupted |= matches!(sub.state(), State::Active(_));
        self.subs.set_state(&key, State::Waiting);
        tracing::debug!(?kind, "subscription dropped by the server; resubscribing");
        self.inner.request_refresh(RefreshTrigger::Moved);
        self.schedule_retry();
    }

    fn on_subscribe_error(&mut self, id: u64, kind: Kind, channels: Vec<Bytes>, e: &ServerError) {
        let addr = match self.links.get(&id) {
            Some(link) => Arc::clone(&link.link.addr),
            None => return,
        };
        // A target without a known host (`MOVED 5 ?:6379`) is for a refresh to find.
        let parsed = parse_redirect(e, &addr);
        let unknown_host = parsed.as_ref().is_some_and(Redirect::host_unknown);
        let redirect = parsed.filter(|_| !unknown_host);
        let retry = redirect.is_some() || unknown_host || passing_refusal(e);
        let error = Error::Server(e.clone());
        let together = channels.len() > 1;
        let (mut split, mut lost) = (false, Vec::new());
        for channel in channels {
            let key = key_at(kind, channel, &addr);
            let Some(sub) = self.subs.get_mut(&key) else {
                continue;
            };
            if sub.state() != State::Pending(id) {
                continue;
            }
            let restoring = sub.interrupted;
            if retry || together {
                // Redirected or refused for now: sent again. Refused for good with
                // others: one refused channel refuses the whole command (the ACL check
                // covers them all), whoever asked for which, so each goes again alone.
                sub.solo |= !retry;
                split |= !retry;
                self.subs.set_state(&key, State::Waiting);
                continue;
            }
            let told = if key.2.is_some() {
                // A node-local subscription is made on every primary or on none.
                self.drop_local(kind, &key.1, &error)
            } else {
                self.subs.remove(&key);
                self.waiters.fail(&(true, key.clone()), &error)
            };
            // A refusal reaches the caller or the stream, never neither: restored ones
            // were the stream's, and so is one whose call timed out.
            if (restoring || !told) && !lost.contains(&key.1) {
                lost.push(key.1.clone());
            }
        }
        if !lost.is_empty() {
            // A gap held for a channel now lost (a node-local subscription restored on
            // one primary and refused on another ends on all) would come after the
            // `Lost`, and read as restored.
            let held = match kind {
                Kind::Channel => &mut self.gaps.channels,
                Kind::Pattern => &mut self.gaps.patterns,
                Kind::Shard => &mut self.gaps.shards,
            };
            held.retain(|channel| !lost.contains(channel));
            tracing::warn!(error = %e, subscriptions = lost.len(), "subscriptions could not be restored");
            let (channels, patterns) = match kind {
                Kind::Pattern => (Vec::new(), lost),
                Kind::Channel | Kind::Shard => (lost, Vec::new()),
            };
            self.emit(PubSubEvent::Lost {
                channels,
                patterns,
                sharded: kind == Kind::Shard,
                error: e.clone(),
            });
        }
        if split {
            tracing::debug!(error = %e, "resubscription refused as a batch; trying each alone");
            self.schedule_retry();
            return;
        }
        if !retry {
            tracing::warn!(error = %e, "subscription refused");
            return;
        }
        tracing::debug!(error = %e, "subscription redirected or refused for now; retrying");
        match redirect {
            Some(Redirect::Moved { slot, addr }) => {
                let addr = self.inner.remap(&addr);
                self.inner.patch_moved(slot, &addr);
            }
            Some(Redirect::Ask { .. }) => self.inner.request_refresh(RefreshTrigger::Moved),
            None => self.inner.request_refresh(RefreshTrigger::ClusterDown),
        }
        self.schedule_retry();
    }

    fn on_link_down(&mut self, id: u64, error: &Error) {
        let Some(state) = self.links.remove(&id) else {
            return;
        };
        let addr = Arc::clone(&state.link.addr);
        if self.classic == Some(id) {
            self.classic = None;
        }
        if self.node_links.get(&addr) == Some(&id) {
            self.node_links.remove(&addr);
        }
        // With the connection gone, so are its subscriptions: unsubscribes are done.
        for sent in state.sent {
            if let Sent::Sub {
                kind,
                subscribe: false,
                remaining,
            } = sent
            {
                for channel in remaining {
                    self.waiters.resolve(&(false, key_at(kind, channel, &addr)));
                }
            }
        }
        // A connection the node refuses for good (credentials, certificate): the
        // sharded and keyspace subscriptions never made yet, which only this node can
        // hold, fail with that cause now, not with a timeout later. Classic ones try
        // another node (ACLs are per node), and those once active are restored as after
        // any loss (the credentials may come back).
        let refused = matches!(error, Error::Auth(_) | Error::Tls(_) | Error::Config(_));
        let mut never_made = Vec::new();
        let mut affected = 0usize;
        let on_link: Vec<Key> = self
            .subs
            .iter()
            .filter(|(_, sub)| sub.state().link() == Some(id))
            .map(|(key, _)| key.clone())
            .collect();
        for key in on_link {
            let Some(sub) = self.subs.get_mut(&key) else {
                continue;
            };
            let node_bound = key.0 == Kind::Shard || key.2.is_some();
            let active = matches!(sub.state(), State::Active(_));
            if refused && node_bound && !sub.interrupted && !active {
                never_made.push(key);
                continue;
            }
            sub.interrupted |= active;
            self.subs.set_state(&key, State::Waiting);
            affected += 1;
        }
        for key in never_made {
            // A call that timed out left its subscription asked for, to be made once a
            // node accepts it: it waits on, as one interrupted does.
            if !self.waiters.awaited(&(true, key.clone())) {
                if self.subs.contains(&key) {
                    self.subs.set_state(&key, State::Waiting);
                    affected += 1;
                }
            } else if key.2.is_some() {
                self.drop_local(key.0, &key.1, error);
            } else {
                self.subs.remove(&key);
                self.waiters.fail(&(true, key), error);
            }
        }
        if refused || affected > 0 {
            self.avoid
                .insert(Arc::clone(&addr), Instant::now() + AVOID_FOR);
        }
        if affected > 0 {
            tracing::info!(node = %addr, %error, subscriptions = affected, "subscriber connection lost; resubscribing");
            self.inner
                .request_refresh(RefreshTrigger::ConnectionFailure);
            self.schedule_retry();
        }
    }

    /// Sends everything waiting after a delay that grows with consecutive failures.
    fn schedule_retry(&mut self) {
        let exp = self.failures.min(6);
        let delay = (RETRY_BASE * 2u32.pow(exp)).min(RETRY_MAX);
        let delay = delay.mul_f64(0.5 + fastrand::f64() * 0.5);
        let at = Instant::now() + delay;
        self.retry_at = Some(self.retry_at.map_or(at, |r| r.min(at)));
        self.failures = self.failures.saturating_add(1);
    }

    /// Sends every waiting subscription to where it belongs now.
    fn resync(&mut self) {
        if self.stopped {
            return;
        }
        let now = Instant::now();
        self.avoid.retain(|_, until| *until > now);
        // What waits, in the commands that will carry it: classic subscriptions all on
        // one link to any node, sharded ones one command per slot on the slot's
        // primary, node-local ones one command per kind on their primary's link.
        let (mut channels, mut patterns) = (Vec::new(), Vec::new());
        let mut shards: HashMap<(Arc<str>, u16), Vec<Bytes>> = HashMap::new();
        let mut local: HashMap<(Arc<str>, Kind), Vec<Bytes>> = HashMap::new();
        let mut unowned = false;
        for (kind, channel, node) in self.subs.waiting() {
            let channel = channel.clone();
            match (kind, node) {
                (kind, Some(node)) => local
                    .entry((Arc::clone(node), *kind))
                    .or_default()
                    .push(channel),
                (Kind::Channel, None) => channels.push(channel),
                (Kind::Pattern, None) => patterns.push(channel),
                (Kind::Shard, None) => {
                    let slot = key_slot(&channel);
                    match self.inner.slot_owner(slot) {
                        Some(owner) => shards.entry((owner, slot)).or_default().push(channel),
                        None => unowned = true,
                    }
                }
            }
        }
        if !channels.is_empty() || !patterns.is_empty() {
            let id = match self.classic {
                Some(id) => Some(id),
                None => self.pick_classic_node().map(|addr| self.open(addr, true)),
            };
            match id {
                Some(id) => {
                    for (kind, list) in [(Kind::Channel, channels), (Kind::Pattern, patterns)] {
                        if list.is_empty() {
                            continue;
                        }
                        self.mark_pending(kind, &list, None, id);
                        self.send_subscribes(id, kind, list, None);
                    }
                }
                None => {
                    self.inner.request_refresh(RefreshTrigger::Uncovered);
                    self.schedule_retry();
                }
            }
        }
        if unowned {
            self.inner.request_refresh(RefreshTrigger::Uncovered);
            self.schedule_retry();
        }
        for ((owner, _), list) in shards {
            let id = self.node_link(owner);
            self.mark_pending(Kind::Shard, &list, None, id);
            self.send_subscribes(id, Kind::Shard, list, None);
        }
        for ((node, kind), list) in local {
            let id = self.node_link(Arc::clone(&node));
            self.mark_pending(kind, &list, Some(&node), id);
            self.send_subscribes(id, kind, list, Some(&node));
        }
        self.close_idle_links();
    }

    /// Subscribes to `channels` on link `id` in one command, except those to be sent
    /// alone (see `Sub::solo` in [`crate::pubsub::subs`]).
    fn send_subscribes(
        &mut self,
        id: u64,
        kind: Kind,
        channels: Vec<Bytes>,
        node: Option<&Arc<str>>,
    ) {
        let (alone, together): (Vec<Bytes>, Vec<Bytes>) =
            channels.into_iter().partition(|channel| {
                self.subs
                    .get(&(kind, channel.clone(), node.cloned()))
                    .is_some_and(|sub| sub.solo)
            });
        if !together.is_empty() {
            self.send(id, kind, true, together);
        }
        for channel in alone {
            self.send(id, kind, true, vec![channel]);
        }
    }

    /// The link to `node` for sharded and node-local subscriptions, opened if needed.
    fn node_link(&mut self, node: Arc<str>) -> u64 {
        match self.node_links.get(&node) {
            Some(id) => *id,
            None => self.open(node, false),
        }
    }

    fn mark_pending(&mut self, kind: Kind, channels: &[Bytes], node: Option<&Arc<str>>, id: u64) {
        for channel in channels {
            self.subs
                .set_state(&(kind, channel.clone(), node.cloned()), State::Pending(id));
        }
    }

    /// A node for classic subscriptions: any node of the slot map (messages published
    /// anywhere reach every node), preferring those that did not fail lately.
    fn pick_classic_node(&self) -> Option<Arc<str>> {
        let nodes = self.inner.node_addrs();
        let healthy: Vec<&Arc<str>> = nodes
            .iter()
            .filter(|n| !self.avoid.contains_key(*n))
            .collect();
        if !healthy.is_empty() {
            return Some(Arc::clone(healthy[fastrand::usize(..healthy.len())]));
        }
        if nodes.is_empty() {
            return None;
        }
        Some(Arc::clone(&nodes[fastrand::usize(..nodes.len())]))
    }

    /// Sends again the unsubscribes a node refused, of channels not subscribed on that
    /// link again since.
    fn unsubscribe_again(&mut self) {
        let ids: Vec<u64> = self
            .links
            .iter()
            .filter(|(_, l)| !l.unsubscribe_again.is_empty())
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            let Some(link) = self.links.get_mut(&id) else {
                continue;
            };
            let leftovers = std::mem::take(&mut link.unsubscribe_again);
            // One command per kind (and per slot: `SUNSUBSCRIBE` takes one slot's).
            let mut per_command: HashMap<(Kind, u16), Vec<Bytes>> = HashMap::new();
            for (kind, channel) in leftovers {
                let wanted_here = self
                    .key_on(id, kind, channel.clone())
                    .and_then(|key| self.subs.get(&key))
                    .is_some_and(|sub| sub.state().link() == Some(id));
                if wanted_here {
                    continue;
                }
                let slot = if kind == Kind::Shard {
                    key_slot(&channel)
                } else {
                    0
                };
                per_command.entry((kind, slot)).or_default().push(channel);
            }
            for ((kind, _), channels) in per_command {
                self.send(id, kind, false, channels);
            }
        }
    }

    /// Closes links that carry no subscription and owe no unsubscribe confirmation.
    fn close_idle_links(&mut self) {
        let idle: Vec<u64> = self
            .links
            .iter()
            .filter(|(id, l)| {
                !self.subs.carries(**id) && !l.sent.iter().any(|s| matches!(s, Sent::Sub { .. }))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in idle {
            if let Some(state) = self.links.remove(&id) {
                tracing::debug!(node = %state.link.addr, "closing idle subscriber connection");
                if self.classic == Some(id) {
                    self.classic = None;
                }
                if self.node_links.get(&state.link.addr) == Some(&id) {
                    self.node_links.remove(&state.link.addr);
                }
            }
        }
    }

    /// Keeps node-local subscriptions on exactly the current primaries: a node that is
    /// no longer one drops them, a new one (promoted, added) gets them, reported as a gap
    /// once made (its notifications until then were missed). Whether anything changed.
    fn follow_primaries(&mut self) -> bool {
        let primaries = self.inner.primary_addrs();
        let gone: Vec<Key> = if self.subs.local_nodes().all(|n| primaries.contains(n)) {
            Vec::new()
        } else {
            self.subs
                .iter()
                .map(|(key, _)| key)
                .filter(|(_, _, node)| node.as_ref().is_some_and(|n| !primaries.contains(n)))
                .cloned()
                .collect()
        };
        let mut changed = !gone.is_empty();
        for key in gone {
            let Some(sub) = self.subs.remove(&key) else {
                continue;
            };
            if let Some(id) = sub.state().link().filter(|id| self.links.contains_key(id)) {
                self.send(id, key.0, false, vec![key.1.clone()]);
            }
            // A caller waiting for it waits for the primaries there are.
            self.waiters.resolve(&(true, key));
        }
        let wanted: Vec<(Kind, Bytes)> = self.local_wanted.iter().cloned().collect();
        for (kind, channel) in wanted {
            for primary in &primaries {
                let key = (kind, channel.clone(), Some(Arc::clone(primary)));
                let (_, added) = self.subs.ask(key, true);
                changed |= added;
            }
        }
        changed
    }

    /// Ends the node-local subscription of `channel` on every primary: one of them
    /// refused it for good (`NOPERM`), and its callers get `error`. Returns whether a
    /// caller was there to hear it.
    fn drop_local(&mut self, kind: Kind, channel: &Bytes, error: &Error) -> bool {
        self.local_wanted.remove(&(kind, channel.clone()));
        let mut told = false;
        for key in self.subs.keys_of(kind, channel, true) {
            let Some(sub) = self.subs.remove(&key) else {
                continue;
            };
            if let Some(id) = sub.state().link().filter(|id| self.links.contains_key(id)) {
                self.send(id, kind, false, vec![channel.clone()]);
            }
            told |= self.waiters.fail(&(true, key), error);
        }
        told
    }

    fn housekeeping(&mut self) {
        // A new slot map may put subscribed channels' slots on other primaries (a
        // failover the old primary could not report, a move seen by a refresh first).
        let version = self.inner.routes_version();
        if version != self.routes_version {
            self.routes_version = version;
            let mut moves: HashMap<(u64, u16), Vec<Bytes>> = HashMap::new();
            let mut moved = Vec::new();
            // Sent and not confirmed yet too: sent to a primary that froze before it
            // answered (the caller's subscribe timed out), it would wait there until the
            // link's PING found the node dead, 15 to 30 s, while the new owner serves.
            for (key, sub) in self.subs.iter() {
                let (Kind::Shard, State::Active(id) | State::Pending(id)) = (key.0, sub.state())
                else {
                    continue;
                };
                let slot = key_slot(&key.1);
                let (Some(owner), Some(link)) = (self.inner.slot_owner(slot), self.links.get(&id))
                else {
                    continue;
                };
                if owner != link.link.addr {
                    moves.entry((id, slot)).or_default().push(key.1.clone());
                    moved.push(key.clone());
                }
            }
            for key in moved {
                if let Some(sub) = self.subs.get_mut(&key) {
                    sub.interrupted = true;
                }
                self.subs.set_state(&key, State::Waiting);
            }
            let mut changed = self.follow_primaries();
            // The classic link's node left the cluster (removed with `CLUSTER FORGET`
            // while still running, or reset): it still answers PING, but messages
            // published in the cluster no longer reach it. Its subscriptions move. Only
            // judged on a map that serves every slot: one without a failed primary's
            // shard leaves out that shard's replicas too, though they are members.
            if let Some(id) = self.classic.filter(|_| self.inner.covers_every_slot()) {
                let nodes = self.inner.node_addrs();
                let left = self.links.get(&id).and_then(|l| {
                    (!nodes.contains(&l.link.addr)).then(|| Arc::clone(&l.link.addr))
                });
                if let Some(addr) = left {
                    let why = Error::ClusterDown(format!("{addr} left the cluster"));
                    self.on_link_down(id, &why);
                    changed = true;
                }
            }
            for ((id, _), channels) in moves {
                // Drop the old subscription, should the old owner still hold it.
                self.send(id, Kind::Shard, false, channels);
                changed = true;
            }
            if changed {
                self.resync();
            }
        }
        // Liveness: a link that did not answer the last PING within an interval is dead.
        let now = Instant::now();
        let mut dead = Vec::new();
        for (id, link) in &mut self.links {
            if !link.up || now.duration_since(link.last_ping) < self.ping_interval {
                continue;
            }
            if link.awaiting_pong {
                dead.push(*id);
                continue;
            }
            link.link.send(cmd("PING"));
            link.sent.push_back(Sent::Ping);
            link.awaiting_pong = true;
            link.last_ping = now;
        }
        for id in dead {
            self.on_link_down(
                id,
                &Error::Timeout {
                    may_have_executed: true,
                },
            );
        }
        self.unsubscribe_again();
        self.close_idle_links();
        self.waiters.prune();
        self.subs.shrink();
        // A safety net: anything still waiting gets another try.
        if self.retry_at.is_none() && self.subs.any_waiting() {
            self.schedule_retry();
        }
    }
}

/// Whether error reply `e` may answer `front`, the oldest command on the link waiting
/// for its answer. Only a sharded command is redirected, and only for the slot its
/// channels hash to (one slot per command): a `MOVED`/`ASK` for another slot, or
/// before anything else, answers a command whose entry is gone already.
fn may_answer(front: Option<&Sent>, e: &ServerError) -> bool {
    let Some(redirect) = parse_redirect(e, "") else {
        return true;
    };
    matches!(
        front,
        Some(Sent::Sub { kind: Kind::Shard, remaining, .. })
            if remaining.front().is_some_and(|c| key_slot(c) == redirect.slot())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_redirect_answers_only_a_sharded_command_of_its_slot() {
        let shard = |channels: &[&str], subscribe| Sent::Sub {
            kind: Kind::Shard,
            subscribe,
            remaining: channels
                .iter()
                .map(|c| Bytes::copy_from_slice(c.as_bytes()))
                .collect(),
        };
        let moved = |channel: &str| {
            ServerError::new(format!(
                "MOVED {} 127.0.0.1:7001",
                key_slot(channel.as_bytes())
            ))
        };
        let c = shard(&["{c}a", "{c}b"], true);
        assert!(may_answer(Some(&c), &moved("{c}x")));
        assert!(may_answer(Some(&shard(&["{c}a"], false)), &moved("{c}a")));
        // `SUNSUBSCRIBE {d}` answered by the server's own sunsubscribe, then `MOVED`
        // for it: not the next `SSUBSCRIBE {c}a`'s, nor a PING's.
        assert!(!may_answer(Some(&c), &moved("{d}")));
        assert!(!may_answer(Some(&Sent::Ping), &moved("{d}")));
        assert!(!may_answer(None, &moved("{d}")));
        let channel = Sent::Sub {
            kind: Kind::Channel,
            subscribe: true,
            remaining: [Bytes::from_static(b"{d}")].into(),
        };
        assert!(!may_answer(Some(&channel), &moved("{d}")));
        // Other errors answer whatever is first.
        let busy = ServerError::new("BUSY Redis is busy running a script");
        assert!(may_answer(Some(&c), &busy) && may_answer(Some(&Sent::Ping), &busy));
    }

    #[test]
    fn keyspace_notifications_are_node_local_and_nothing_else() {
        for (kind, channel) in [
            (Kind::Channel, "__keyevent@0__:expired"),
            (Kind::Channel, "__keyspace@3__:user:1"),
            (Kind::Pattern, "__keyspace@0__:user:*"),
            (Kind::Pattern, "__keyevent@*__:*"),
            (Kind::Pattern, "__key*__:*"),
        ] {
            assert!(
                is_node_local(kind, channel.as_bytes()),
                "{kind:?} {channel}"
            );
        }
        for (kind, channel) in [
            (Kind::Channel, "news"),
            (Kind::Channel, "__keyboard"),
            (Kind::Pattern, "*"),
            (Kind::Pattern, "__keyboard*"),
            (Kind::Shard, "__keyevent@0__:expired"),
        ] {
            assert!(
                !is_node_local(kind, channel.as_bytes()),
                "{kind:?} {channel}"
            );
        }
        let addr: Arc<str> = Arc::from("10.0.0.1:6379");
        let local = key_at(
            Kind::Channel,
            Bytes::from_static(b"__keyevent@0__:del"),
            &addr,
        );
        assert_eq!(local.2.as_deref(), Some("10.0.0.1:6379"));
        assert_eq!(
            key_at(Kind::Channel, Bytes::from_static(b"news"), &addr).2,
            None
        );
    }
}
