//! Explicit pipelines across slots, and `MULTI`/`EXEC` transactions.
//!
//! A [`Pipeline`] takes commands for any slots; they are grouped by node, each node's
//! share written at once, in the order added, all nodes in parallel, and the replies
//! come back in the order the commands were added. A [`Transaction`] runs its commands
//! atomically on one node; they must all hash to one slot. Neither takes the commands
//! that hold a connection (`MULTI`, `EXEC`, `DISCARD`, `WATCH`, `UNWATCH`): they send
//! their own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use crate::cluster::{plan, Plan};
use crate::cluster::{ClusterClient, Landing, Lease};
use crate::cmd::{cmd, Cmd, CmdArena, Script, ToArg};
use crate::conn::Cmds;
use crate::error::{Error, Result};
use crate::observe::metrics;
use crate::resp::{FromValue, Value};

/// The last of a request's replies (`EXEC`'s, in a transaction), for its metrics status.
#[allow(clippy::ptr_arg)] // must match `observed`'s `fn(&T) -> &Value` with `T = Vec<Value>`
fn last_reply(replies: &Vec<Value>) -> &Value {
    replies.last().unwrap_or(&NIL)
}

/// [`last_reply`] of a watched transaction's replies, with `WAIT`'s count beside them.
fn exec_reply(answer: &(Vec<Value>, u32)) -> &Value {
    last_reply(&answer.0)
}

/// A reply that counts as "ok" in the metrics.
static NIL: Value = Value::Nil;

/// Commands for any slots, sent together; see [`ClusterClient::pipeline`].
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// use redcluster::{cmd, Value};
/// let mut p = client.pipeline();
/// p.set("key1", "value1").set("key2", "value2").get("key1");
/// p.add(cmd("INCR").arg("counter"));
/// let replies: Vec<Value> = p.execute().await?;
/// # Ok(()) }
/// ```
///
/// The typed helpers ([`Pipeline::set`], [`Pipeline::get`], ...) build their commands
/// back to back in shared buffers: a pipeline of a thousand takes a few allocations
/// where [`Pipeline::add`] takes one per command.
///
/// Order: a slot's commands run in the order added; with reads from replicas
/// ([`crate::ReadFrom`]), the reads of a slot the pipeline also writes go to its primary,
/// so that they see the writes before them. A command resent after an `ASK` runs after
/// the slot's later commands the node had already served (other keys); a refusal
/// (`TRYAGAIN`, `CLUSTERDOWN`, ...) followed by a served command of its slot is not
/// resent, and is that command's answer (it did not run), nor one followed by a command of
/// its slot that may have run before the connection failed; a command whose keys span
/// slots (`MGET`, `DEL a b`, split per slot), that runs on every node (`DBSIZE`) or that
/// has no keys (`EVAL ... 0`, `PUBLISH`) runs alongside the others, in no set order. `MULTI`, `WATCH` and their
/// kin, `WAIT` and the pub/sub commands are refused at their index
/// ([`Error::Config`], nothing sent): use [`ClusterClient::transaction`],
/// [`crate::Durability`], [`ClusterClient::subscriber`].
#[derive(Debug, Clone)]
pub struct Pipeline {
    client: ClusterClient,
    cmds: Vec<Cmd>,
    /// Where the typed helpers (`set`, `get`, ...) build their commands: a pipeline of
    /// a thousand takes a few allocations, not one per command.
    arena: CmdArena,
}

impl Pipeline {
    pub(crate) fn new(client: ClusterClient) -> Pipeline {
        Pipeline {
            client,
            cmds: Vec::new(),
            arena: CmdArena::default(),
        }
    }

    /// Adds a command.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// use redcluster::cmd;
    /// p.add(cmd("PFADD").arg("visitors:{2024-06-01}").arg("ada"));
    /// p.add(cmd("XADD").arg("events:{eu}").arg("*").arg("kind").arg("login"));
    /// # Ok(()) }
    /// ```
    pub fn add(&mut self, cmd: Cmd) -> &mut Self {
        self.cmds.push(cmd);
        self
    }

    /// How many commands were added.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// p.get("a").get("b");
    /// assert_eq!(p.len(), 2);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    /// Whether no command was added.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// assert!(p.is_empty());
    /// p.get("a");
    /// assert!(!p.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// Sends every command and returns their replies in order.
    ///
    /// Every command is sent and answered even when some fail; this returns the replies
    /// only if all succeeded.
    ///
    /// # Errors
    ///
    /// [`Error::Pipeline`] naming the first failed command (by position) and why: an
    /// error reply (`source` is [`Error::Server`], or [`Error::ClusterDown`] for
    /// `CLUSTERDOWN`) or a transport error. The others may
    /// have run; [`Pipeline::execute_each`] returns every outcome.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// use redcluster::Error;
    /// p.set("user:{42}:name", "Ada").incr("visits:{home}", 1).get("user:{7}:name");
    /// match p.execute().await {
    ///     Ok(replies) => println!("{replies:?}"), // one per command, in order
    ///     Err(Error::Pipeline { index, source }) => println!("command {index} failed: {source}"),
    ///     Err(e) => return Err(e),
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn execute(self) -> Result<Vec<Value>> {
        let mut replies = Vec::with_capacity(self.cmds.len());
        for (index, result) in self.execute_each().await.into_iter().enumerate() {
            match result {
                Ok(v) => replies.push(v),
                Err(source) => {
                    return Err(Error::Pipeline {
                        index,
                        source: Box::new(source),
                    })
                }
            }
        }
        Ok(replies)
    }

    /// [`Pipeline::execute`], with the replies converted to one Rust value: a tuple, a
    /// `Vec<T>`, ... as a reply array would be.
    ///
    /// # Errors
    ///
    /// As [`Pipeline::execute`]; [`Error::Type`] when the replies do not convert (the
    /// commands ran).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// p.set("user:{42}:name", "Ada").get("user:{42}:name").incr("visits:{home}", 1);
    /// let ((), name, visits): ((), String, i64) = p.execute_as().await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_as<T: FromValue>(self) -> Result<T> {
        T::from_value(Value::Array(self.execute().await?))
    }

    /// Sends every command and returns one result per command, in order: the reply, or
    /// the error (an error reply becomes [`Error::Server`], `CLUSTERDOWN`
    /// [`Error::ClusterDown`], as for a single command). When a node's connection is
    /// lost, or the deadline passes, part way through its commands, those it answered
    /// first keep their replies: only the later ones get the error (and
    /// [`Error::may_have_executed`] says whether they may have run). Not with
    /// `durable_writes` for a node's batch with writes: without its `WAIT`'s answer no
    /// write of it is known to be durable, and every command of it gets the error.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// use redcluster::cmd;
    /// p.get("user:{42}:name").add(cmd("LPOP").arg("user:{42}:name")); // fails: WRONGTYPE
    /// for (i, result) in p.execute_each().await.into_iter().enumerate() {
    ///     match result {
    ///         Ok(reply) => println!("{i}: {reply:?}"),
    ///         Err(e) => println!("{i} failed: {e}"),
    ///     }
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn execute_each(self) -> Vec<Result<Value>> {
        let deadline = crate::deadline::from_now(self.client.response_timeout);
        self.client
            .inner
            .execute_pipeline(self.cmds, deadline, self.client.read_from)
            .await
            .into_iter()
            .map(|r| match r {
                Ok(Value::ServerError(e)) => Err(crate::cluster::reply_error(e)),
                other => other,
            })
            .collect()
    }

    /// Adds the command `name` with the arguments `build` gives it, built in the arena.
    fn typed(&mut self, name: &str, build: impl FnOnce(Cmd) -> Cmd) -> &mut Self {
        let command = self.arena.cmd(name, build);
        self.add(command)
    }

    /// Adds `GET key`.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// p.get("user:{42}:name").get("user:{7}:name"); // any slots
    /// # Ok(()) }
    /// ```
    pub fn get<K: ToArg>(&mut self, key: K) -> &mut Self {
        self.typed("GET", |c| c.arg(key))
    }

    /// Adds `SET key value`.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// p.set("user:{42}:name", "Ada").set("user:{7}:name", "Grace");
    /// # Ok(()) }
    /// ```
    pub fn set<K: ToArg, V: ToArg>(&mut self, key: K, value: V) -> &mut Self {
        self.typed("SET", |c| c.arg(key).arg(value))
    }

    /// Adds `DEL key`.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// p.del("session:{42}").del("session:{7}");
    /// # Ok(()) }
    /// ```
    pub fn del<K: ToArg>(&mut self, key: K) -> &mut Self {
        self.typed("DEL", |c| c.arg(key))
    }

    /// Adds `INCRBY key delta`.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// p.incr("visits:{home}", 1).incr("visits:{about}", 1);
    /// # Ok(()) }
    /// ```
    pub fn incr<K: ToArg>(&mut self, key: K, delta: i64) -> &mut Self {
        self.typed("INCRBY", |c| c.arg(key).arg(delta))
    }

    /// Adds `PEXPIRE key ttl`, the TTL rounded up to whole milliseconds (as
    /// [`ClusterClient::expire`]).
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// use std::time::Duration;
    /// p.expire("session:{42}", Duration::from_secs(600));
    /// # Ok(()) }
    /// ```
    pub fn expire<K: ToArg>(&mut self, key: K, ttl: std::time::Duration) -> &mut Self {
        let ms = crate::cmd::ttl_millis(ttl);
        self.typed("PEXPIRE", |c| c.arg(key).arg(ms))
    }

    /// Adds `HSET key field value`.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// p.hset("user:{42}", "name", "Ada").hset("user:{42}", "lang", "en");
    /// # Ok(()) }
    /// ```
    pub fn hset<K: ToArg, F: ToArg, V: ToArg>(&mut self, key: K, field: F, value: V) -> &mut Self {
        self.typed("HSET", |c| c.arg(key).arg(field).arg(value))
    }

    /// Adds `HGET key field`.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// p.hget("user:{42}", "name").hget("user:{7}", "name");
    /// # Ok(()) }
    /// ```
    pub fn hget<K: ToArg, F: ToArg>(&mut self, key: K, field: F) -> &mut Self {
        self.typed("HGET", |c| c.arg(key).arg(field))
    }

    /// Adds `RPUSH key value`.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// p.rpush("jobs:{eu}", "job-1").rpush("jobs:{us}", "job-2");
    /// # Ok(()) }
    /// ```
    pub fn rpush<K: ToArg, V: ToArg>(&mut self, key: K, value: V) -> &mut Self {
        self.typed("RPUSH", |c| c.arg(key).arg(value))
    }

    /// Adds `SADD key member`.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// p.sadd("tags:{post:7}", "rust").sadd("tags:{post:8}", "redis");
    /// # Ok(()) }
    /// ```
    pub fn sadd<K: ToArg, M: ToArg>(&mut self, key: K, member: M) -> &mut Self {
        self.typed("SADD", |c| c.arg(key).arg(member))
    }

    /// Adds `ZADD key score member`.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// p.zadd("leaderboard", 4200.0, "ada").zadd("leaderboard", 3100.0, "grace");
    /// # Ok(()) }
    /// ```
    pub fn zadd<K: ToArg, M: ToArg>(&mut self, key: K, score: f64, member: M) -> &mut Self {
        self.typed("ZADD", |c| c.arg(key).arg(score).arg(member))
    }

    /// Adds `EVALSHA` of `script` with `keys` (one slot) and `args`.
    ///
    /// Unlike [`ClusterClient::invoke`], a pipeline does not fall back to `EVAL`: its
    /// other commands have run by the time a `NOSCRIPT` comes back, and sending the
    /// script then would run it out of order. A node without the script answers this
    /// command with a `NOSCRIPT` error; [`ClusterClient::load_script`] beforehand loads it
    /// on every node.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::Script;
    /// let add = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    /// client.load_script(&add).await?;
    /// let mut p = client.pipeline();
    /// p.invoke(&add, &["{user:42}:visits"], &[1])
    ///     .invoke(&add, &["{user:7}:visits"], &[1]);
    /// let replies = p.execute().await?;
    /// # Ok(()) }
    /// ```
    pub fn invoke<K: ToArg, A: ToArg>(
        &mut self,
        script: &Script,
        keys: &[K],
        args: &[A],
    ) -> &mut Self {
        self.add(script.evalsha_cmd(keys, args))
    }
}

/// An atomic `MULTI`/`EXEC` transaction on one slot; see [`ClusterClient::transaction`].
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// use redcluster::{cmd, Value};
/// let mut tx = client.transaction();
/// tx.add(cmd("INCR").arg("{user:1}:visits"));
/// tx.add(cmd("SET").arg("{user:1}:last").arg("now"));
/// let replies: Vec<Value> = tx.execute().await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Transaction {
    client: ClusterClient,
    cmds: Vec<Cmd>,
}

impl Transaction {
    pub(crate) fn new(client: ClusterClient) -> Transaction {
        Transaction {
            client,
            cmds: Vec::new(),
        }
    }

    /// Adds a command.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut tx = client.transaction();
    /// use redcluster::cmd;
    /// tx.add(cmd("DECRBY").arg("{acct:7}:balance").arg(10))
    ///     .add(cmd("RPUSH").arg("{acct:7}:history").arg("-10"));
    /// # Ok(()) }
    /// ```
    pub fn add(&mut self, cmd: Cmd) -> &mut Self {
        self.cmds.push(cmd);
        self
    }

    /// Adds `script` with `keys` (in the transaction's slot) and `args`, as `EVAL` with
    /// its source: an `EVALSHA` that a node answered `NOSCRIPT` inside `EXEC` would leave
    /// the transaction's other commands run without it. The node caches the script.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::{cmd, Script};
    /// let add = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    /// let mut tx = client.transaction();
    /// tx.invoke(&add, &["{acct:7}:balance"], &[-10])
    ///     .add(cmd("RPUSH").arg("{acct:7}:history").arg("-10"));
    /// tx.execute().await?;
    /// # Ok(()) }
    /// ```
    pub fn invoke<K: ToArg, A: ToArg>(
        &mut self,
        script: &Script,
        keys: &[K],
        args: &[A],
    ) -> &mut Self {
        self.add(script.eval_cmd(keys, args))
    }

    /// How many commands were added.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut tx = client.transaction();
    /// tx.add(redcluster::cmd("INCR").arg("{user:42}:visits"));
    /// assert_eq!(tx.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn len(&self) -> usize {
        self.cmds.len()
    }

    /// Whether no command was added.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut tx = client.transaction();
    /// assert!(tx.is_empty());
    /// # Ok(()) }
    /// ```
    pub fn is_empty(&self) -> bool {
        self.cmds.is_empty()
    }

    /// Runs the commands atomically and returns their replies in order. A command that
    /// fails when it runs (`WRONGTYPE`) does not stop the others: its reply is a
    /// [`Value::ServerError`] in the list, as Redis reports it.
    ///
    /// # Errors
    ///
    /// [`Error::CrossSlot`] before anything is sent when the keys span slots;
    /// [`Error::Config`], before anything is sent, for a command that runs on every node
    /// (`KEYS`, `DBSIZE`) or holds a connection (`MULTI`, `WATCH`); the error reply of a
    /// command the server refused to queue (wrong arity, unknown command: then nothing
    /// ran); [`Error::NotAtomic`] when the server refused `MULTI` itself (an ACL user
    /// without `+multi`) and ran the commands one by one; with
    /// [`durable_writes`](crate::ClusterClientBuilder::durable_writes) and a write among
    /// the commands, [`Error::NotReplicated`] when it committed but fewer replicas than
    /// asked acknowledged it; transport errors as for any request (a transaction is
    /// never resent once it may have reached the server).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut tx = client.transaction();
    /// use redcluster::cmd;
    /// // One hash tag, one slot: both run, or neither.
    /// tx.add(cmd("DECRBY").arg("{acct:7}:balance").arg(10))
    ///     .add(cmd("RPUSH").arg("{acct:7}:history").arg("-10"));
    /// let replies = tx.execute().await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute(self) -> Result<Vec<Value>> {
        if self.cmds.is_empty() {
            return Ok(Vec::new());
        }
        let deadline = crate::deadline::from_now(self.client.response_timeout);
        match self
            .client
            .inner
            .execute_transaction(self.cmds, deadline)
            .await?
        {
            Value::Array(replies) => Ok(replies),
            Value::ServerError(e) => Err(crate::cluster::reply_error(e)),
            other => Err(Error::Protocol(format!("EXEC answered {}", other.kind()))),
        }
    }

    /// [`Transaction::execute`], with the replies converted to one Rust value (a tuple,
    /// a `Vec<T>`, ...). A command that failed inside `EXEC` is a
    /// [`Value::ServerError`] in the list: converted, it is that command's
    /// [`Error::Server`] (the others ran), unless the type asked for takes `Value`.
    ///
    /// # Errors
    ///
    /// As [`Transaction::execute`]; [`Error::Type`] when the replies do not convert
    /// (the transaction ran).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut tx = client.transaction();
    /// use redcluster::cmd;
    /// tx.add(cmd("DECRBY").arg("{acct:7}:balance").arg(10))
    ///     .add(cmd("RPUSH").arg("{acct:7}:history").arg("-10"));
    /// let (balance, entries): (i64, i64) = tx.execute_as().await?;
    /// # Ok(()) }
    /// ```
    pub async fn execute_as<T: FromValue>(self) -> Result<T> {
        T::from_value(Value::Array(self.execute().await?))
    }
}

impl ClusterClient {
    /// A pipeline: commands for any slots, sent together.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let mut p = client.pipeline();
    /// p.set("user:{42}:name", "Ada").get("user:{7}:name");
    /// let replies = p.execute().await?;
    /// # Ok(()) }
    /// ```
    pub fn pipeline(&self) -> Pipeline {
        Pipeline::new(self.clone())
    }

    /// A `MULTI`/`EXEC` transaction; its keys must share one slot (use a hash tag).
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::cmd;
    /// let mut tx = client.transaction();
    /// tx.add(cmd("INCR").arg("{user:42}:visits"));
    /// tx.add(cmd("SET").arg("{user:42}:seen").arg("now"));
    /// let replies = tx.execute().await?;
    /// # Ok(()) }
    /// ```
    pub fn transaction(&self) -> Transaction {
        Transaction::new(self.clone())
    }
}

/// Keys under `WATCH`, on a dedicated connection to their slot's primary; see
/// [`ClusterClient::watch`]. Dropping it returns the connection to the pool, where it is
/// `UNWATCH`ed before anyone else gets it.
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// use redcluster::cmd;
/// let mut w = client.watch(["{acct:7}:balance"]).await?;
/// let balance: Option<i64> = w.query(cmd("GET").arg("{acct:7}:balance")).await?;
/// let set = cmd("SET").arg("{acct:7}:balance").arg(balance.unwrap_or(0) + 10);
/// match w.exec(vec![set]).await? {
///     Some(_) => println!("committed"),
///     None => println!("the balance changed meanwhile; nothing ran"),
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Watched {
    client: ClusterClient,
    lease: Lease,
    slot: u16,
    /// The watched keys, named again inside the transaction (see [`Watched::exec`]).
    keys: Vec<Vec<u8>>,
    /// Under [`ClusterClient::watch_retry`]: set while this transaction's `EXEC` may
    /// have run, so that an error of the body after it does not run the body again.
    exec_may_have_run: Option<Arc<AtomicBool>>,
}

impl Watched {
    /// Runs a command on the watched connection (typically reading the watched keys).
    /// Its keys must be in the watched slot.
    ///
    /// # Errors
    ///
    /// [`Error::CrossSlot`] for keys in another slot; [`Error::Config`] for a command
    /// that runs on every node or would end the watch (`UNWATCH`, `MULTI`: use
    /// [`Watched::exec`]); otherwise as [`ClusterClient::query`], except that redirects
    /// are not followed: a `MOVED` here means the slot moved, and the caller should
    /// start over.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// # let mut w = client.watch(["{acct:7}:balance"]).await?;
    /// let balance: Option<i64> = w.query(redcluster::cmd("GET").arg("{acct:7}:balance")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn query<T: FromValue>(&mut self, command: Cmd) -> Result<T> {
        let deadline = crate::deadline::from_now(self.client.response_timeout);
        // The built-in entry, or the one learned from the server (a module's command),
        // which names the command in metrics as on every other path.
        let info = self.check_slot(&command, deadline).await?;
        let name = metrics::command_label(info);
        // A blocking command (`BLPOP`, `XREAD BLOCK`) gets the time it asks for, as
        // `query` gives it.
        let reply_deadline = match info {
            Some(info) if crate::cmd::blocks(&command, info) => {
                crate::cluster::blocking_reply_deadline(&command, deadline)
            }
            _ => deadline,
        };
        // A redirect reply naming another slot than the watched one is no redirect of
        // the server's (a script's error reply): the command ran.
        let slot = self.slot;
        let landing = Landing::on(self.lease.node());
        let lease = &mut self.lease;
        let sent = async {
            let answer = lease.dispatch(Cmds::One(command), reply_deadline).await;
            answer
                .result
                .map(|replies| replies.into_iter().last().unwrap_or(Value::Nil))
        };
        // The lease discards its connection itself when a request fails.
        let reply = self
            .client
            .inner
            .observed(name, Some(self.slot), |v| v, &landing, sent)
            .await?;
        match reply {
            Value::ServerError(e) => {
                let elsewhere =
                    crate::slot::parse_redirect(&e, "").is_some_and(|r| r.slot() != slot);
                let e = if elsewhere { e.taken_as_reply() } else { e };
                Err(crate::cluster::reply_error(e))
            }
            v => T::from_value(v),
        }
    }

    /// Runs `cmds` in `MULTI`/`EXEC` on the watched connection. `Ok(None)` when a watched
    /// key changed since `WATCH` and nothing ran; `Ok(Some(replies))` when it committed.
    ///
    /// The transaction also names the watched keys (`EXISTS`, its reply taken out of
    /// `replies`): should the slot start migrating after `WATCH`, a watched key absent
    /// then may be created on the importing node, out of this `WATCH`'s sight; named, a
    /// key missing on this node makes it refuse the transaction (`ASK`/`TRYAGAIN`,
    /// unrun and retryable) rather than commit over it.
    ///
    /// # Errors
    ///
    /// [`Error::CrossSlot`] for keys outside the watched slot (nothing is sent); an error
    /// reply of a command refused while queueing (nothing ran); [`Error::NotAtomic`] when
    /// the server refused `MULTI` itself and ran the commands one by one, unchecked;
    /// with [`durable_writes`](crate::ClusterClientBuilder::durable_writes) and a write
    /// among `cmds`, [`Error::NotReplicated`] when it committed but fewer replicas than
    /// asked acknowledged it (`EXEC` is followed by `WAIT` on the same connection);
    /// transport errors, after which the outcome is unknown (`may_have_executed()`).
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// # let mut w = client.watch(["{acct:7}:balance"]).await?;
    /// use redcluster::cmd;
    /// let replies = w.exec(vec![cmd("INCRBY").arg("{acct:7}:balance").arg(10)]).await?;
    /// if replies.is_none() {
    ///     // a watched key changed: read again and retry (or use `watch_retry`)
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn exec(mut self, cmds: Vec<Cmd>) -> Result<Option<Vec<Value>>> {
        let deadline = crate::deadline::from_now(self.client.response_timeout);
        let durability = self.client.inner.config.durability;
        let mut writes = false;
        for command in &cmds {
            self.check_slot(command, deadline).await?;
            if durability.is_some() {
                let info = self.client.inner.command_info(command, deadline).await;
                writes |= info.is_some_and(|i| i.is_durable_write());
            }
        }
        // The connection is this transaction's own, so `WAIT` counts its writes alone.
        let durability = durability.filter(|_| writes);
        let mut all = Vec::with_capacity(cmds.len() + 4);
        all.push(cmd("MULTI"));
        // The watched keys, named by the transaction itself: should the slot start
        // migrating after `WATCH`, a key absent here may be created on the importing
        // node (a writer told `ASK`), where this connection's `WATCH` never sees it, and
        // an `EXEC` of the slot's other keys, present here, would commit over it. Named
        // here, an absent key makes the node refuse the transaction as it refuses any
        // command missing keys during a migration (`ASK`/`TRYAGAIN`: aborted, unrun).
        // Its count is taken out of `EXEC`'s reply.
        all.push(cmd("EXISTS").args(self.keys.iter()));
        all.extend(cmds);
        all.push(cmd("EXEC"));
        let mut reply_deadline = deadline;
        if let Some(d) = durability {
            all.push(cmd("WAIT").arg(d.replicas).arg(d.wait_millis()));
            reply_deadline = crate::deadline::after(deadline, d.timeout);
        }
        let landing = Landing::on(self.lease.node());
        // Set before it is sent: a body that drops this future mid-way may have run it.
        let may_have_run = self.exec_may_have_run.take();
        if let Some(flag) = &may_have_run {
            flag.store(true, Ordering::Relaxed);
        }
        let result = self
            .send_exec(all, durability, reply_deadline, &landing)
            .await;
        // Refused unrun (`MOVED`: the slot moved after `WATCH`; nothing sent; an error
        // reply: `EXEC` refused, or aborted by a command refused while queueing), or a
        // conflict: nothing of it ran.
        let unrun = matches!(&result, Ok(None) | Err(Error::Server(_)))
            || matches!(&result, Err(e) if e.is_retryable());
        if let (Some(flag), true) = (&may_have_run, unrun) {
            flag.store(false, Ordering::Relaxed);
        }
        result
    }

    /// Sends `all` (`MULTI`, the commands, `EXEC`, and `WAIT` under `durability`) and
    /// reads `EXEC`'s outcome.
    async fn send_exec(
        &mut self,
        all: Vec<Cmd>,
        durability: Option<crate::Durability>,
        reply_deadline: Instant,
        landing: &Landing,
    ) -> Result<Option<Vec<Value>>> {
        let lease = &mut self.lease;
        let sent = async {
            let answer = lease.dispatch(Cmds::Many(all), reply_deadline).await;
            answer.result.map(|replies| {
                let mut replies = replies.into_vec();
                let acked = match durability {
                    Some(_) => crate::cluster::replicas_acked(replies.pop()),
                    None => 0,
                };
                (replies, acked)
            })
        };
        // Counted as one `exec`, with EXEC's reply as its status; the lease discards its
        // connection itself when the request fails.
        let (mut replies, acked) = self
            .client
            .inner
            .observed(
                metrics::TRANSACTION_COMMAND,
                Some(self.slot),
                exec_reply,
                landing,
                sent,
            )
            .await?;
        crate::cluster::multi_accepted(replies.first())?;
        match replies.pop() {
            Some(Value::Array(mut results)) if !results.is_empty() => match durability {
                Some(d) if acked < d.replicas => Err(Error::NotReplicated {
                    acknowledged: acked,
                    requested: d.replicas,
                }),
                _ => {
                    results.remove(0); // the `EXISTS` of the watched keys
                    Ok(Some(results))
                }
            },
            // EXEC answers nil when a watched key changed: a conflict, not an error.
            Some(Value::Nil) => Ok(None),
            Some(Value::ServerError(exec_error)) => {
                let queued = replies.into_iter().skip(1).find_map(|r| match r {
                    Value::ServerError(e) => Some(e),
                    _ => None,
                });
                Err(crate::cluster::reply_error(queued.unwrap_or(exec_error)))
            }
            other => Err(Error::Protocol(format!(
                "EXEC answered {}",
                other.as_ref().map_or("nothing", Value::kind)
            ))),
        }
    }

    /// Refuses `command` unless its keys are all in the watched slot; its command-table
    /// entry, built-in or learned.
    async fn check_slot(
        &self,
        command: &Cmd,
        deadline: Instant,
    ) -> Result<Option<&'static crate::cmd::CommandInfo>> {
        let inner = &self.client.inner;
        let info = inner.command_info(command, deadline).await;
        let mut slots = vec![self.slot];
        match plan::plan(command, info)? {
            Plan::Slot { slot, .. } if slot != self.slot => slots.push(slot),
            Plan::Split { parts, .. } => {
                slots.extend(parts.iter().map(|p| p.slot).filter(|&s| s != self.slot))
            }
            Plan::FanOut { .. } => plan::fan_out_in_transaction(command)?,
            _ => {}
        }
        slots.dedup();
        if slots.len() > 1 {
            return Err(Error::CrossSlot { slots });
        }
        Ok(info)
    }
}

impl ClusterClient {
    /// Sends `WATCH keys` on a dedicated connection to the keys' primary, for an
    /// optimistic transaction: read with [`Watched::query`], then [`Watched::exec`],
    /// which reports a conflict as `Ok(None)`. The keys must share one slot.
    ///
    /// # Errors
    ///
    /// [`Error::CrossSlot`] when the keys span slots; [`Error::Config`] for no keys or
    /// a key over 512 MiB (nothing is sent); connection errors.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::cmd;
    /// let mut w = client.watch(["{acct:7}:balance", "{acct:7}:limit"]).await?;
    /// let (balance, limit): (Option<i64>, Option<i64>) =
    ///     w.query(cmd("MGET").arg("{acct:7}:balance").arg("{acct:7}:limit")).await?;
    /// # Ok(()) }
    /// ```
    pub async fn watch<K: ToArg>(&self, keys: impl IntoIterator<Item = K>) -> Result<Watched> {
        let keys: Vec<Vec<u8>> = keys
            .into_iter()
            .map(|k| k.with_bytes(<[u8]>::to_vec))
            .collect();
        let mut slots: Vec<u16> = keys.iter().map(|k| crate::key_slot(k)).collect();
        slots.dedup();
        let slot = match slots.as_slice() {
            [] => return Err(Error::Config("WATCH needs at least one key".into())),
            [slot] => *slot,
            _ => {
                let mut distinct = Vec::new();
                for s in slots {
                    if !distinct.contains(&s) {
                        distinct.push(s);
                    }
                }
                return Err(Error::CrossSlot { slots: distinct });
            }
        };
        // Checked as every command is: on a key over 512 MiB the server answers a
        // protocol error and closes the connection.
        let watch = crate::cmd::cmd("WATCH").args(keys.iter());
        crate::cmd::refuse_overlong_args(&watch)?;
        let deadline = crate::deadline::from_now(self.response_timeout);
        // Counted as a `watch` (status from the outcome: a refused WATCH is an error).
        let landing = Landing::default();
        let watching = self.inner.watch(slot, watch, deadline, &landing);
        let lease = self
            .inner
            .observed("watch", Some(slot), |_| &NIL, &landing, watching)
            .await?;
        Ok(Watched {
            client: self.clone(),
            lease,
            slot,
            keys,
            exec_may_have_run: None,
        })
    }

    /// An optimistic transaction with retries: `WATCH`es `keys`, runs `body`, and runs
    /// it again (up to `attempts` times) while it reports a conflict. `body` reads
    /// through the [`Watched`] it is given and ends with [`Watched::exec`]; it returns
    /// `Ok(Some(value))` when that committed and `Ok(None)` on a conflict. The result is
    /// `Ok(None)` when every attempt conflicted.
    ///
    /// An error of `body` that [`Error::is_retryable`] (the slot moved under the
    /// transaction, so `EXEC` was aborted with `MOVED`; `TRYAGAIN`, `CLUSTERDOWN`, a
    /// connection lost or a deadline passed before sending) counts as an attempt too:
    /// nothing of the transaction ran, and the next attempt watches the keys at their
    /// owner again, after the client's retry backoff, as a retry of the client's retry
    /// budget (with the budget spent, the error ends it; so does a `ClusterDown` under
    /// `retry_on_cluster_down(false)`). Other errors end it, and so
    /// does any error after an [`Watched::exec`] that may have run (a `publish` of the
    /// body's that timed out unsent after a committed `EXEC`): the body is not run twice,
    /// and such an error, retryable on its own, comes as [`Error::Partial`], which
    /// says the whole may have run. So does `Ok(None)` after such an `exec` (`exec`
    /// answered `Some`, or its future was dropped once sent): a conflict the body reports
    /// then is not one the transaction had. As after a conflict,
    /// what `body` does outside the transaction runs again.
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::cmd;
    /// let balance = client
    ///     .watch_retry(&["{acct:7}:balance"], 5, |mut w| async move {
    ///         let balance: i64 = w.query(cmd("GET").arg("{acct:7}:balance")).await?;
    ///         let done = w
    ///             .exec(vec![cmd("SET").arg("{acct:7}:balance").arg(balance - 10)])
    ///             .await?;
    ///         Ok(done.map(|_| balance - 10))
    ///     })
    ///     .await?;
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// The first error of `watch` or `body`.
    pub async fn watch_retry<K, T, F, Fut>(
        &self,
        keys: &[K],
        attempts: u32,
        mut body: F,
    ) -> Result<Option<T>>
    where
        K: ToArg,
        F: FnMut(Watched) -> Fut,
        Fut: std::future::Future<Output = Result<Option<T>>>,
    {
        let attempts = attempts.max(1);
        let backoff = self.inner.backoff();
        for attempt in 1..=attempts {
            let mut watched = self.watch(keys.iter()).await?;
            let exec_may_have_run = Arc::new(AtomicBool::new(false));
            watched.exec_may_have_run = Some(Arc::clone(&exec_may_have_run));
            match body(watched).await {
                Ok(Some(value)) => return Ok(Some(value)),
                // A conflict reported after an `EXEC` that committed or may have (a reply
                // the body could not convert, an `exec` it dropped at a time limit of its
                // own): run again, the transaction would commit twice.
                Ok(None) if exec_may_have_run.load(Ordering::Relaxed) => {
                    return Err(Error::Partial {
                        source: Box::new(Error::Config(
                            "the watch_retry body reported a conflict after an exec that \
                             committed or may have; it is not run again"
                                .to_owned(),
                        )),
                    })
                }
                Ok(None) => {}
                // Not after an `EXEC` that may have run: the body's later error (a
                // `publish` that timed out unsent) would run the transaction twice. A
                // retry like any other: with the client's budget spent (an outage's retry
                // storm), the error is the answer. A `ClusterDown` is the caller's to
                // decide under `retry_on_cluster_down(false)`, as for any request.
                Err(e)
                    if e.is_retryable()
                        && !exec_may_have_run.load(Ordering::Relaxed)
                        && (self.inner.config.retry_on_cluster_down
                            || !matches!(e, Error::ClusterDown(_)))
                        && attempt < attempts
                        && self.inner.spend_retry() =>
                {
                    tracing::debug!(error = %e, attempt, "transaction refused before it ran; watching again");
                    tokio::time::sleep(backoff.delay(attempt - 1, fastrand::f64())).await;
                }
                // The transaction may have committed: an error that would say "safe to
                // send again" on its own says the whole may have run in part.
                Err(e) if e.is_retryable() && exec_may_have_run.load(Ordering::Relaxed) => {
                    return Err(Error::Partial {
                        source: Box::new(e),
                    })
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }
}
