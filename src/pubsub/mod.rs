//! Pub/Sub: a [`Subscriber`] with connections of its own, classic and sharded, that
//! follows failovers and slot moves.
//!
//! This module owns the subscriber's connections (never the client's multiplexed ones),
//! the subscriptions asked for, and the bounded queue of events handed to the consumer.
//! It asks the client only for its slot map and for topology refreshes.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use redcluster::{ClusterClient, PubSubEvent};
//!
//! # async fn demo() -> redcluster::Result<()> {
//! let client = ClusterClient::connect(["127.0.0.1:7000"]).await?;
//! let mut sub = client.subscriber().await?;
//! sub.subscribe(["news"]).await?;
//! sub.psubscribe(["log.*"]).await?;
//! sub.ssubscribe(["orders:{eu}"]).await?;
//! client.spublish("orders:{eu}", "paid").await?;
//! while let Some(event) = sub.next().await {
//!     match event {
//!         PubSubEvent::Message(m) => println!("{:?}: {:?}", m.channel, m.payload),
//!         PubSubEvent::Gap { channels, .. } => println!("may have missed messages on {channels:?}"),
//!         PubSubEvent::Lagged { dropped } => println!("too slow: {dropped} events dropped"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Where subscriptions live
//!
//! - Classic subscriptions (`SUBSCRIBE`, `PSUBSCRIBE`) share one connection to any one
//!   node: a cluster broadcasts `PUBLISH`ed messages to every node. When that node fails,
//!   they move to another node.
//! - Sharded subscriptions (`SSUBSCRIBE`) live on the primary that owns the channel's
//!   slot (the slot of the channel name, hash tags included, as for keys), one
//!   connection per primary, one `SSUBSCRIBE` per slot. When the slot moves (the server
//!   answers `MOVED`, or drops the subscription with an `sunsubscribe` of its own, or a
//!   new slot map says so) or its primary fails, they are sent again to the new owner,
//!   and the old owner keeps no copy.
//! - Keyspace notifications (channels and patterns that begin with `__keyspace@` or
//!   `__keyevent@`, and patterns that begin with `__key*`) live on every primary, one
//!   subscription each, on the same per-primary connections: a node notifies its own
//!   subscribers of its own keys' events, and the cluster does not broadcast them. So a
//!   `subscribe(["__keyevent@0__:expired"])` hears every expiry in the cluster, each
//!   once (replicas are left out: they notify the writes they replicate again). When
//!   the client sees a new primary (a failover, a node added) the subscriptions are made
//!   there, reported as a [`PubSubEvent::Gap`], and dropped from a node that is no
//!   longer one (until the client sees the new topology, a demoted primary may repeat
//!   a few notifications of the writes it replicates). `subscribe` returns once every
//!   primary confirmed (those the client knew as they did: one a failover promotes
//!   while the call waits is subscribed after it, with its `Gap`); one that does not
//!   answer makes it a [`Error::Timeout`], and
//!   the subscription is still made there when it does; one that refuses (`NOPERM`)
//!   fails the call with that error, and no primary keeps the subscription. Before the client knows any primary (with
//!   `lazy_connect`) it is [`Error::ClusterDown`], and made once the cluster is
//!   discovered. Only these prefixes count: a pattern such as `*` or `__keysp*` lives
//!   on one node and hears that node's notifications only. The server must have
//!   notifications on: `CONFIG SET notify-keyspace-events ...`, which
//!   `client.query(cmd("CONFIG").arg("SET")...)` sends to every node. A message
//!   `PUBLISH`ed to such a channel by hand arrives once per primary.
//!
//! # From several tasks
//!
//! Reading events needs `&mut Subscriber`; [`Subscriber::handle`] gives a
//! [`SubscriberHandle`] (cheap to clone) that subscribes and unsubscribes from any task
//! meanwhile. Dropping the `Subscriber` ends it all: its handles' calls then fail with
//! [`Error::ConnectionLost`].
//!
//! # Delivery: at most once, and gaps are reported
//!
//! Redis Pub/Sub keeps no messages: a message published while a subscription is being
//! moved or re-established is lost for this subscriber. The subscriber never hides that:
//! once an interrupted subscription is restored, the stream yields a
//! [`PubSubEvent::Gap`] naming the channels (and patterns) concerned, before any message
//! received through the restored subscription. Messages are never duplicated by a
//! resubscription, and arrive in publication order per channel between gaps; but one
//! published around the move can reach the new node late over the cluster bus, after
//! newer ones or after it was heard on the old node (see [`PubSubEvent::Gap`]). A
//! subscription the server refuses to restore (a `NOPERM` after an ACL change) is
//! reported as [`PubSubEvent::Lost`], never dropped in silence; the channels restored
//! in the same command are tried one by one first, so only the refused ones are lost.
//!
//! # A slow consumer
//!
//! Events wait for the consumer in a queue of [`SubscriberConfig::queue_capacity`]
//! (default 1024) events; the subscriber never waits for the consumer, and messages
//! never take more room than that. When the queue is full,
//! [`SubscriberConfig::overflow`] decides: [`OverflowPolicy::DropOldest`] (the default)
//! drops the oldest queued message (never a `Gap` or `Lost` notice: when no message
//! is left to drop, a new notice joins its channels to a queued one of its kind, or is
//! queued past the bound if there is none, so a node that restarts again and again
//! while the consumer stalls adds nothing after its first notice) and counts it, and
//! the consumer gets a
//! [`PubSubEvent::Lagged`] with the count before the next event;
//! [`OverflowPolicy::Disconnect`] closes the subscriber: the stream yields what was
//! queued and then ends. [`Subscriber::stats`] has the counters.
//!
//! # Protocols
//!
//! With RESP3 the server sends confirmations and messages as push frames; with RESP2
//! (`ClusterClientBuilder::protocol(Protocol::Resp2)`) as arrays on a connection in
//! subscribed mode. Both work the same way. Connections are opened with the client's
//! settings (TLS, credentials, name, timeouts); a connection that leaves a `PING`
//! unanswered for a [`SubscriberConfig::ping_interval`] is replaced (found within one
//! to two intervals), counted from when its handshake is done (the connect timeout
//! bounds the handshake).

#[cfg(not(test))]
mod link;
#[cfg(test)]
pub(crate) mod link;
mod manager;
mod queue;
mod subs;

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use crate::cluster::ClusterClient;
use crate::cmd::ToArg;
use crate::error::{Error, Result, ServerError};
use link::Kind;
use manager::{Control, Manager};
use queue::EventQueue;

/// One message received on a subscription.
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// # let mut sub = client.subscriber().await?;
/// use futures_util::StreamExt;
/// use redcluster::PubSubEvent;
/// sub.psubscribe(["orders.*"]).await?;
/// if let Some(PubSubEvent::Message(m)) = sub.next().await {
///     println!("{:?} on {:?}, matched by {:?}", m.payload, m.channel, m.pattern);
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Message {
    /// The channel it was published to.
    pub channel: Bytes,
    /// What was published.
    pub payload: Bytes,
    /// The pattern that matched, for a `PSUBSCRIBE` subscription.
    pub pattern: Option<Bytes>,
    /// Whether it came through a sharded (`SSUBSCRIBE`) subscription.
    pub sharded: bool,
}

/// What a [`Subscriber`] yields.
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// # let mut sub = client.subscriber().await?;
/// use futures_util::StreamExt;
/// use redcluster::PubSubEvent;
/// while let Some(event) = sub.next().await {
///     match event {
///         PubSubEvent::Message(m) => println!("{:?}", m.payload),
///         PubSubEvent::Gap { channels, .. } => println!("missed messages on {channels:?}?"),
///         PubSubEvent::Lagged { dropped } => println!("{dropped} events dropped: too slow"),
///         _ => {}
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PubSubEvent {
    /// A message.
    Message(Message),
    /// These subscriptions were interrupted (a connection died, a slot moved, a
    /// failover) and are restored now: messages published to them meanwhile were missed.
    /// Messages received through the restored subscriptions follow this event. A
    /// failover can also lose messages on the old primary before the client learns of
    /// it: the `Gap` then comes when the subscription moves (within about a second),
    /// after messages that followed the loss. And a message published on the old owner
    /// around the move can still come after the `Gap`, even after newer messages, or a
    /// second time: the cluster bus brings it to the subscription's new node late (the
    /// old owner passes it on to the new one; a classic message goes to every node),
    /// after it was heard on the old node. Pub/sub is at most once otherwise.
    #[non_exhaustive]
    Gap {
        /// The channels concerned: sharded ones when `sharded`, classic ones otherwise.
        channels: Vec<Bytes>,
        /// The patterns concerned (classic only).
        patterns: Vec<Bytes>,
        /// Whether these are sharded subscriptions.
        sharded: bool,
    },
    /// The server refused these subscriptions for good (a `NOPERM` after an ACL change,
    /// for one) where no call is there to say it: they were interrupted and could not
    /// be restored, or their `subscribe` call had timed out (a subscription stays asked
    /// for then) before a node refused it. They are gone, and their messages with them.
    /// Subscribe again once the cause is fixed. Channels refused together are each
    /// tried alone first, so one refused channel does not take the others with it.
    #[non_exhaustive]
    Lost {
        /// The channels concerned: sharded ones when `sharded`, classic ones otherwise.
        channels: Vec<Bytes>,
        /// The patterns concerned (classic only).
        patterns: Vec<Bytes>,
        /// Whether these are sharded subscriptions.
        sharded: bool,
        /// The server's refusal.
        error: ServerError,
    },
    /// The consumer fell behind and this many messages were dropped, the oldest first
    /// ([`OverflowPolicy::DropOldest`]); yielded before the next event kept.
    Lagged {
        /// Events dropped since the last `Lagged`.
        dropped: u64,
    },
}

/// What a [`Subscriber`] does when its event queue is full.
///
/// ```
/// use redcluster::{OverflowPolicy, SubscriberConfig};
/// assert_eq!(OverflowPolicy::default(), OverflowPolicy::DropOldest);
/// // Rather no subscriber than one that silently lost events.
/// let config = SubscriberConfig::default().overflow(OverflowPolicy::Disconnect);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// Drop the oldest queued message (notices of gaps and lost subscriptions stay),
    /// count it, and report the count with [`PubSubEvent::Lagged`] (default).
    #[default]
    DropOldest,
    /// Close the subscriber: its connections are closed and the stream ends after the
    /// events already queued; later calls fail with [`Error::ConnectionLost`].
    Disconnect,
}

/// Settings of a [`Subscriber`], for [`ClusterClient::subscriber_with`].
///
/// ```
/// use std::time::Duration;
/// use redcluster::{OverflowPolicy, SubscriberConfig};
/// let config = SubscriberConfig::default()
///     .queue_capacity(10_000)
///     .overflow(OverflowPolicy::DropOldest)
///     .ping_interval(Duration::from_secs(5));
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SubscriberConfig {
    /// Events queued for the consumer, at most. Default 1024.
    pub queue_capacity: usize,
    /// What happens at that bound. Default [`OverflowPolicy::DropOldest`].
    pub overflow: OverflowPolicy,
    /// How often each connection is sent a `PING`; one not answered by the next is
    /// considered dead and its subscriptions move. Default 15 s.
    pub ping_interval: Duration,
    /// How long `subscribe` and friends wait for the server's confirmation; `None` is
    /// the response timeout of the client handle that made the subscriber
    /// ([`ClusterClient::response_timeout`](crate::ClusterClient::response_timeout)).
    /// Default `None`. A connection refused for good (credentials, certificate) by the
    /// node a sharded or keyspace subscription needs fails the call at once with that
    /// cause ([`Error::Auth`], [`Error::Tls`]); a classic subscription tries another
    /// node (ACLs are per node).
    pub subscribe_timeout: Option<Duration>,
}

impl Default for SubscriberConfig {
    fn default() -> Self {
        SubscriberConfig {
            queue_capacity: 1024,
            overflow: OverflowPolicy::DropOldest,
            ping_interval: Duration::from_secs(15),
            subscribe_timeout: None,
        }
    }
}

impl SubscriberConfig {
    /// Sets [`SubscriberConfig::queue_capacity`] (at least 1).
    ///
    /// ```
    /// let config = redcluster::SubscriberConfig::default().queue_capacity(0);
    /// assert_eq!(config.queue_capacity, 1); // at least one
    /// ```
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.max(1);
        self
    }

    /// Sets [`SubscriberConfig::overflow`].
    ///
    /// ```
    /// use redcluster::{OverflowPolicy, SubscriberConfig};
    /// let config = SubscriberConfig::default().overflow(OverflowPolicy::Disconnect);
    /// assert_eq!(config.overflow, OverflowPolicy::Disconnect);
    /// ```
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = policy;
        self
    }

    /// Sets [`SubscriberConfig::ping_interval`] (at least 100 ms).
    ///
    /// ```
    /// use std::time::Duration;
    /// let config = redcluster::SubscriberConfig::default().ping_interval(Duration::ZERO);
    /// assert_eq!(config.ping_interval, Duration::from_millis(100)); // the least
    /// ```
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.max(Duration::from_millis(100));
        self
    }

    /// Sets [`SubscriberConfig::subscribe_timeout`].
    ///
    /// ```
    /// use std::time::Duration;
    /// use redcluster::SubscriberConfig;
    /// let config = SubscriberConfig::default().subscribe_timeout(Duration::from_secs(2));
    /// assert_eq!(config.subscribe_timeout, Some(Duration::from_secs(2)));
    /// ```
    pub fn subscribe_timeout(mut self, timeout: Duration) -> Self {
        self.subscribe_timeout = Some(timeout);
        self
    }
}

/// Counters of a [`Subscriber`]; see [`Subscriber::stats`].
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// # let mut sub = client.subscriber().await?;
/// let stats = sub.stats();
/// println!("{} queued (peak {})", stats.queued, stats.peak_queued);
/// println!("{} dropped, {} gaps", stats.dropped, stats.gaps);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct SubscriberStats {
    /// Events waiting for the consumer now.
    pub queued: usize,
    /// The most events that ever waited at once: at most the queue capacity, plus the
    /// `Gap` and `Lost` notices kept past it when no message was left to drop.
    pub peak_queued: usize,
    /// Events dropped because the queue was full.
    pub dropped: u64,
    /// [`PubSubEvent::Gap`] events produced.
    pub gaps: u64,
}

/// Subscriptions on a cluster, and the [`futures_core::Stream`] of their events.
///
/// Made by [`ClusterClient::subscriber`]. It has connections of its own, opened when
/// first needed, and a background task that keeps its subscriptions where they belong
/// (see the [module docs](crate::pubsub) for what happens on failovers and slot moves).
/// Dropping it closes its connections; it keeps the client's topology tracking alive
/// while it exists.
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// use futures_util::StreamExt;
/// let mut sub = client.subscriber().await?;
/// sub.subscribe(["news"]).await?;
/// while let Some(event) = sub.next().await {
///     println!("{event:?}");
/// }
/// # Ok(()) }
/// ```
pub struct Subscriber {
    queue: Arc<EventQueue>,
    /// Keeps the task running: it ends when the last strong sender is dropped.
    _alive: mpsc::UnboundedSender<Control>,
    handle: SubscriberHandle,
}

/// Changes a [`Subscriber`]'s subscriptions from other tasks while one task reads its
/// events: `Subscriber::next` needs `&mut`, these calls do not. Cheap to clone. Once
/// the subscriber is dropped, its handles' calls fail with
/// [`Error::ConnectionLost`].
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// use futures_util::StreamExt;
/// let mut sub = client.subscriber().await?;
/// let handle = sub.handle();
/// tokio::spawn(async move {
///     while let Some(event) = sub.next().await {
///         println!("{event:?}");
///     }
/// });
/// handle.subscribe(["news"]).await?; // from any task
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct SubscriberHandle {
    control: mpsc::WeakUnboundedSender<Control>,
    timeout: Duration,
}

impl std::fmt::Debug for SubscriberHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubscriberHandle")
            .field(
                "subscriber_alive",
                &self.control.upgrade().is_some_and(|s| !s.is_closed()),
            )
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Subscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscriber")
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl ClusterClient {
    /// A [`Subscriber`] with the default [`SubscriberConfig`].
    ///
    /// # Errors
    ///
    /// None today: connections are opened by the first subscription. The `Result`
    /// leaves room for checks at creation.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let sub = client.subscriber().await?;
    /// sub.ssubscribe(["orders:{eu}"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscriber(&self) -> Result<Subscriber> {
        self.subscriber_with(SubscriberConfig::default()).await
    }

    /// A [`Subscriber`] with these settings.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::subscriber`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::{OverflowPolicy, SubscriberConfig};
    /// let config = SubscriberConfig::default()
    ///     .queue_capacity(10_000)
    ///     .overflow(OverflowPolicy::Disconnect);
    /// let sub = client.subscriber_with(config).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscriber_with(&self, config: SubscriberConfig) -> Result<Subscriber> {
        let queue = Arc::new(EventQueue::new(config.queue_capacity, config.overflow));
        let (control, rx) = mpsc::unbounded_channel();
        let manager = Manager::new(Arc::clone(&self.inner), &config, Arc::clone(&queue), rx);
        tokio::spawn(tracing::Instrument::instrument(
            manager.run(),
            // A root span, as for connections: the subscriber outlives the caller's span.
            tracing::debug_span!(parent: None, "redis_subscriber"),
        ));
        let handle = SubscriberHandle {
            control: control.downgrade(),
            timeout: config.subscribe_timeout.unwrap_or(self.response_timeout),
        };
        Ok(Subscriber {
            queue,
            _alive: control,
            handle,
        })
    }
}

/// Refuses a channel or pattern over 512 MiB: the server would close the subscriber's
/// connection on it, and the subscription, made again on every new connection, would
/// take every other one on that connection down with it, again and again.
fn refuse_overlong(channels: &[Bytes]) -> Result<()> {
    match channels
        .iter()
        .enumerate()
        .find(|(_, c)| c.len() > crate::cmd::MAX_ARG_LEN)
    {
        None => Ok(()),
        Some((index, channel)) => Err(Error::Config(format!(
            "channel {index} of the call is {} bytes, over the 512 MiB a server takes \
             (proto-max-bulk-len): not sent, as the server would close the subscriber's \
             connection",
            channel.len()
        ))),
    }
}

fn to_bytes<I>(channels: I) -> Vec<Bytes>
where
    I: IntoIterator,
    I::Item: ToArg,
{
    let mut out: Vec<Bytes> = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for channel in channels {
        let channel = channel.with_bytes(Bytes::copy_from_slice);
        if seen.insert(channel.clone()) {
            out.push(channel);
        }
    }
    out
}

impl SubscriberHandle {
    async fn request(
        &self,
        control: impl FnOnce(oneshot::Sender<Result<()>>) -> Control,
    ) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        let gone = || Error::ConnectionLost {
            may_have_executed: false,
        };
        let sender = self.control.upgrade().ok_or_else(gone)?;
        sender.send(control(reply)).map_err(|_| gone())?;
        // Not held while waiting: a subscriber dropped meanwhile ends its task.
        drop(sender);
        match tokio::time::timeout(self.timeout, answer).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(gone()),
            Err(_) => Err(Error::Timeout {
                may_have_executed: true,
            }),
        }
    }

    async fn subscribe_kind(&self, kind: Kind, channels: Vec<Bytes>) -> Result<()> {
        if channels.is_empty() {
            return Ok(());
        }
        refuse_overlong(&channels)?;
        self.request(|reply| Control::Subscribe {
            kind,
            channels,
            reply,
        })
        .await
    }

    async fn unsubscribe_kind(&self, kind: Kind, channels: Vec<Bytes>) -> Result<()> {
        refuse_overlong(&channels)?;
        self.request(|reply| Control::Unsubscribe {
            kind,
            channels,
            reply,
        })
        .await
    }

    /// `SUBSCRIBE`: receive messages `PUBLISH`ed to these channels. Returns once the
    /// server confirmed every one.
    ///
    /// # Errors
    ///
    /// [`Error::Server`] when the server refused (`NOPERM`): the channels it refused are
    /// not subscribed, those of the call it accepted are (each channel of a refused
    /// command is tried alone, so that one refused channel does not take the others
    /// with it); [`Error::Auth`] or [`Error::Tls`] when the node a sharded channel
    /// needs refuses the connection; [`Error::Timeout`] when no confirmation came within
    /// the subscribe timeout (the subscription stays asked for, and is made as soon as
    /// a node accepts it; should a node refuse it for good instead, the stream says so
    /// with [`PubSubEvent::Lost`]), [`Error::ConnectionLost`] when the subscriber was
    /// closed; [`Error::Config`], nothing sent, for a channel over 512 MiB (the server
    /// would close the subscriber's connection on it).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// # let mut sub = client.subscriber().await?;
    /// sub.subscribe(["news", "alerts"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn subscribe<I>(&self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        self.subscribe_kind(Kind::Channel, to_bytes(channels)).await
    }

    /// `PSUBSCRIBE`: receive messages published to channels matching these glob
    /// patterns ([`Message::pattern`] says which matched).
    ///
    /// # Errors
    ///
    /// As [`Subscriber::subscribe`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// # let mut sub = client.subscriber().await?;
    /// sub.psubscribe(["log.*", "metrics.?"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn psubscribe<I>(&self, patterns: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        self.subscribe_kind(Kind::Pattern, to_bytes(patterns)).await
    }

    /// `SSUBSCRIBE`: receive messages `SPUBLISH`ed to these sharded channels, on the
    /// primaries owning their slots (channels in different slots are fine).
    ///
    /// # Errors
    ///
    /// As [`Subscriber::subscribe`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// # let mut sub = client.subscriber().await?;
    /// // Channels in different slots are fine: each goes to its own primary.
    /// sub.ssubscribe(["orders:{eu}", "orders:{us}"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn ssubscribe<I>(&self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        self.subscribe_kind(Kind::Shard, to_bytes(channels)).await
    }

    /// `UNSUBSCRIBE` these channels, or every classic channel when `channels` is empty.
    /// Returns once the server confirmed; messages already queued stay queued. A node
    /// that refuses it for a while (`BUSY` while a script runs) is asked again until it
    /// takes it, while the connection carries other subscriptions (the call returns at
    /// the refusal: no message of these channels is delivered from then on).
    ///
    /// # Errors
    ///
    /// [`Error::Timeout`] when no confirmation came in time, [`Error::ConnectionLost`]
    /// when the subscriber was closed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// # let mut sub = client.subscriber().await?;
    /// sub.unsubscribe(["alerts"]).await?;
    /// sub.unsubscribe(Vec::<String>::new()).await?; // every classic channel
    /// # Ok(()) }
    /// ```
    pub async fn unsubscribe<I>(&self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        self.unsubscribe_kind(Kind::Channel, to_bytes(channels))
            .await
    }

    /// `PUNSUBSCRIBE` these patterns, or every pattern when `patterns` is empty.
    ///
    /// # Errors
    ///
    /// As [`Subscriber::unsubscribe`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// # let mut sub = client.subscriber().await?;
    /// sub.punsubscribe(["log.*"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn punsubscribe<I>(&self, patterns: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        self.unsubscribe_kind(Kind::Pattern, to_bytes(patterns))
            .await
    }

    /// `SUNSUBSCRIBE` these sharded channels, or every sharded channel when `channels`
    /// is empty.
    ///
    /// # Errors
    ///
    /// As [`Subscriber::unsubscribe`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// # let mut sub = client.subscriber().await?;
    /// sub.sunsubscribe(["orders:{us}"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn sunsubscribe<I>(&self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        self.unsubscribe_kind(Kind::Shard, to_bytes(channels)).await
    }
}

impl Subscriber {
    /// A handle to change this subscriber's subscriptions from other tasks while one
    /// task reads its events.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let sub = client.subscriber().await?;
    /// let handle = sub.handle();
    /// handle.psubscribe(["log.*"]).await?;
    /// # Ok(()) }
    /// ```
    pub fn handle(&self) -> SubscriberHandle {
        self.handle.clone()
    }

    /// `SUBSCRIBE`: see [`SubscriberHandle::subscribe`], which this calls.
    ///
    /// # Errors
    ///
    /// As [`SubscriberHandle::subscribe`].
    pub async fn subscribe<I>(&self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        self.handle.subscribe(channels).await
    }

    /// `PSUBSCRIBE`: see [`SubscriberHandle::psubscribe`], which this calls.
    ///
    /// # Errors
    ///
    /// As [`SubscriberHandle::psubscribe`].
    pub async fn psubscribe<I>(&self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        self.handle.psubscribe(channels).await
    }

    /// `SSUBSCRIBE`: see [`SubscriberHandle::ssubscribe`], which this calls.
    ///
    /// # Errors
    ///
    /// As [`SubscriberHandle::ssubscribe`].
    pub async fn ssubscribe<I>(&self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        self.handle.ssubscribe(channels).await
    }

    /// `UNSUBSCRIBE`: see [`SubscriberHandle::unsubscribe`], which this calls.
    ///
    /// # Errors
    ///
    /// As [`SubscriberHandle::unsubscribe`].
    pub async fn unsubscribe<I>(&self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        self.handle.unsubscribe(channels).await
    }

    /// `PUNSUBSCRIBE`: see [`SubscriberHandle::punsubscribe`], which this calls.
    ///
    /// # Errors
    ///
    /// As [`SubscriberHandle::punsubscribe`].
    pub async fn punsubscribe<I>(&self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        self.handle.punsubscribe(channels).await
    }

    /// `SUNSUBSCRIBE`: see [`SubscriberHandle::sunsubscribe`], which this calls.
    ///
    /// # Errors
    ///
    /// As [`SubscriberHandle::sunsubscribe`].
    pub async fn sunsubscribe<I>(&self, channels: I) -> Result<()>
    where
        I: IntoIterator,
        I::Item: ToArg,
    {
        self.handle.sunsubscribe(channels).await
    }

    /// Queue length, its peak, drops and gaps so far.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// # let mut sub = client.subscriber().await?;
    /// if sub.stats().queued > 1000 {
    ///     println!("the consumer falls behind");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn stats(&self) -> SubscriberStats {
        let c = self.queue.counters();
        SubscriberStats {
            queued: c.queued,
            peak_queued: c.peak,
            dropped: c.dropped,
            gaps: c.gaps,
        }
    }

    /// Events dropped so far because the consumer fell behind.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// # let mut sub = client.subscriber().await?;
    /// let lost = sub.dropped();
    /// # Ok(()) }
    /// ```
    pub fn dropped(&self) -> u64 {
        self.queue.counters().dropped
    }

    /// Whether the subscriber was closed ([`OverflowPolicy::Disconnect`]); its stream
    /// ends once the queued events are taken.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// # let mut sub = client.subscriber().await?;
    /// if sub.is_closed() {
    ///     // OverflowPolicy::Disconnect closed it: subscribe again from scratch
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }
}

impl futures_core::Stream for Subscriber {
    type Item = PubSubEvent;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PubSubEvent>> {
        self.queue.poll_next(cx)
    }
}
