//! Typed helpers for common commands. Each is a thin wrapper over
//! [`ClusterClient::query`]; anything not here is one `query(cmd(...))` away. Scripts
//! ([`ClusterClient::invoke`]) add one rule: `EVALSHA`, then `EVAL` where a node answers
//! `NOSCRIPT`.

use std::time::Duration;

use tokio::time::Instant;

use crate::cluster::{into_result, ClusterClient};
use crate::cmd::{cmd, Cmd, Script, ToArg};
use crate::error::Result;
use crate::resp::{FromValue, Value};

impl ClusterClient {
    /// `GET key`.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`]; a missing key is `Ok(None)` when `T` is an `Option`.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let name: Option<String> = client.get("user:{42}:name").await?;
    /// # Ok(()) }
    /// ```
    pub async fn get<K: ToArg, T: FromValue>(&self, key: K) -> Result<T> {
        self.query(cmd("GET").arg(key)).await
    }

    /// `SET key value`.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// client.set("user:{42}:name", "Ada").await?;
    /// # Ok(()) }
    /// ```
    pub async fn set<K: ToArg, V: ToArg>(&self, key: K, value: V) -> Result<()> {
        self.query(cmd("SET").arg(key).arg(value)).await
    }

    /// `SET key value PX ttl`: set with an expiry (millisecond precision).
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// client.set_ex("session:{42}", "token", Duration::from_secs(3600)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn set_ex<K: ToArg, V: ToArg>(&self, key: K, value: V, ttl: Duration) -> Result<()> {
        // `SET ... PX 0` is refused: a zero TTL is the shortest there is.
        let ms = crate::cmd::ttl_millis(ttl).max(1);
        self.query(cmd("SET").arg(key).arg(value).arg("PX").arg(ms))
            .await
    }

    /// `SET key value NX`: true when the key did not exist and was set.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// if client.set_nx("lock:{report}", "worker-1").await? {
    ///     println!("lock taken");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn set_nx<K: ToArg, V: ToArg>(&self, key: K, value: V) -> Result<bool> {
        self.query(cmd("SET").arg(key).arg(value).arg("NX")).await
    }

    /// `MGET keys...`, keys in any slots; values in key order (none for no keys, unsent).
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// // The keys may live on different nodes; values come back in key order.
    /// let names: Vec<Option<String>> = client.mget(["user:1:name", "user:2:name"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn mget<K: ToArg, T: FromValue>(
        &self,
        keys: impl IntoIterator<Item = K>,
    ) -> Result<Vec<T>> {
        let command = cmd("MGET").args(keys);
        // No keys, no values: a batch that happens to be empty is no error.
        if command.len() == 1 {
            return Ok(Vec::new());
        }
        self.query(command).await
    }

    /// `MSET key value ...`, keys in any slots (no pairs: nothing sent). Not atomic
    /// across slots: each slot's part is applied on its own.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// client.mset([("user:1:name", "Ada"), ("user:2:name", "Grace")]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn mset<K: ToArg, V: ToArg>(
        &self,
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Result<()> {
        let mut c = cmd("MSET");
        for (k, v) in pairs {
            c.push_arg(k);
            c.push_arg(v);
        }
        if c.len() == 1 {
            return Ok(());
        }
        self.query(c).await
    }

    /// `DEL keys...`, keys in any slots; how many existed (0 for no keys, unsent).
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let removed = client.del(["user:1:name", "user:2:name"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn del<K: ToArg>(&self, keys: impl IntoIterator<Item = K>) -> Result<i64> {
        self.count_keys(cmd("DEL").args(keys)).await
    }

    /// `EXISTS keys...`, keys in any slots; how many exist (0 for no keys, unsent).
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let present = client.exists(["user:1:name", "user:2:name"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn exists<K: ToArg>(&self, keys: impl IntoIterator<Item = K>) -> Result<i64> {
        self.count_keys(cmd("EXISTS").args(keys)).await
    }

    /// A command that counts its keys (`DEL`, `EXISTS`): 0 for no keys, unsent.
    async fn count_keys(&self, command: Cmd) -> Result<i64> {
        if command.len() == 1 {
            return Ok(0);
        }
        self.query(command).await
    }

    /// `PEXPIRE key ttl`: true when the key exists and got the expiry. A TTL is sent in
    /// whole milliseconds, rounded up (under 1 ms is 1 ms, not 0, which would delete
    /// the key at once); a zero TTL deletes it, as `PEXPIRE key 0` does.
    ///
    /// `PEXPIRE` is sent again after a lost connection (setting a TTL twice sets the
    /// same TTL), but for a zero TTL (the repeat would answer `false` for the key the
    /// first send deleted): when the first send ran and the key expired before the
    /// second (a TTL shorter than the retry's backoff), `false` answers for a key this
    /// very call expired.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let had_key = client.expire("session:{42}", Duration::from_secs(600)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn expire<K: ToArg>(&self, key: K, ttl: Duration) -> Result<bool> {
        let ms = crate::cmd::ttl_millis(ttl);
        self.query(cmd("PEXPIRE").arg(key).arg(ms)).await
    }

    /// `PTTL key`: the remaining time to live; `None` when the key does not exist or has
    /// no expiry.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// if let Some(left) = client.ttl("session:{42}").await? {
    ///     println!("expires in {left:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn ttl<K: ToArg>(&self, key: K) -> Result<Option<Duration>> {
        let ms: i64 = self.query(cmd("PTTL").arg(key)).await?;
        Ok(u64::try_from(ms).ok().map(Duration::from_millis))
    }

    /// `INCRBY key delta`: the new value.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let visits = client.incr("visits:{home}", 1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn incr<K: ToArg>(&self, key: K, delta: i64) -> Result<i64> {
        self.query(cmd("INCRBY").arg(key).arg(delta)).await
    }

    /// `HSET key field value`: true when the field is new.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let is_new = client.hset("user:{42}", "name", "Ada").await?;
    /// # Ok(()) }
    /// ```
    pub async fn hset<K: ToArg, F: ToArg, V: ToArg>(
        &self,
        key: K,
        field: F,
        value: V,
    ) -> Result<bool> {
        self.query(cmd("HSET").arg(key).arg(field).arg(value)).await
    }

    /// `HGET key field`.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let name: Option<String> = client.hget("user:{42}", "name").await?;
    /// # Ok(()) }
    /// ```
    pub async fn hget<K: ToArg, F: ToArg, T: FromValue>(&self, key: K, field: F) -> Result<T> {
        self.query(cmd("HGET").arg(key).arg(field)).await
    }

    /// `HGETALL key`, e.g. into a `HashMap<String, String>`.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use std::collections::HashMap;
    /// let user: HashMap<String, String> = client.hgetall("user:{42}").await?;
    /// # Ok(()) }
    /// ```
    pub async fn hgetall<K: ToArg, T: FromValue>(&self, key: K) -> Result<T> {
        self.query(cmd("HGETALL").arg(key)).await
    }

    /// `HDEL key fields...`: how many fields were removed.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let removed = client.hdel("user:{42}", ["email", "phone"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn hdel<K: ToArg, F: ToArg>(
        &self,
        key: K,
        fields: impl IntoIterator<Item = F>,
    ) -> Result<i64> {
        self.query(cmd("HDEL").arg(key).args(fields)).await
    }

    /// `LPUSH key values...`: the new length.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let len = client.lpush("jobs:{eu}", ["job-1", "job-2"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lpush<K: ToArg, V: ToArg>(
        &self,
        key: K,
        values: impl IntoIterator<Item = V>,
    ) -> Result<i64> {
        self.query(cmd("LPUSH").arg(key).args(values)).await
    }

    /// `RPUSH key values...`: the new length.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let len = client.rpush("jobs:{eu}", ["job-3"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn rpush<K: ToArg, V: ToArg>(
        &self,
        key: K,
        values: impl IntoIterator<Item = V>,
    ) -> Result<i64> {
        self.query(cmd("RPUSH").arg(key).args(values)).await
    }

    /// `LPOP key`.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let next: Option<String> = client.lpop("jobs:{eu}").await?;
    /// # Ok(()) }
    /// ```
    pub async fn lpop<K: ToArg, T: FromValue>(&self, key: K) -> Result<T> {
        self.query(cmd("LPOP").arg(key)).await
    }

    /// `RPOP key`.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let last: Option<String> = client.rpop("jobs:{eu}").await?;
    /// # Ok(()) }
    /// ```
    pub async fn rpop<K: ToArg, T: FromValue>(&self, key: K) -> Result<T> {
        self.query(cmd("RPOP").arg(key)).await
    }

    /// `LRANGE key start stop`.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let all: Vec<String> = client.lrange("jobs:{eu}", 0, -1).await?;
    /// # Ok(()) }
    /// ```
    pub async fn lrange<K: ToArg, T: FromValue>(&self, key: K, start: i64, stop: i64) -> Result<T> {
        self.query(cmd("LRANGE").arg(key).arg(start).arg(stop))
            .await
    }

    /// `SADD key members...`: how many were added.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let added = client.sadd("tags:{post:7}", ["rust", "redis"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn sadd<K: ToArg, M: ToArg>(
        &self,
        key: K,
        members: impl IntoIterator<Item = M>,
    ) -> Result<i64> {
        self.query(cmd("SADD").arg(key).args(members)).await
    }

    /// `SREM key members...`: how many were removed.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let removed = client.srem("tags:{post:7}", ["redis"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn srem<K: ToArg, M: ToArg>(
        &self,
        key: K,
        members: impl IntoIterator<Item = M>,
    ) -> Result<i64> {
        self.query(cmd("SREM").arg(key).args(members)).await
    }

    /// `SMEMBERS key`, e.g. into a `HashSet<String>`.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use std::collections::HashSet;
    /// let tags: HashSet<String> = client.smembers("tags:{post:7}").await?;
    /// # Ok(()) }
    /// ```
    pub async fn smembers<K: ToArg, T: FromValue>(&self, key: K) -> Result<T> {
        self.query(cmd("SMEMBERS").arg(key)).await
    }

    /// `SISMEMBER key member`.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let tagged = client.sismember("tags:{post:7}", "rust").await?;
    /// # Ok(()) }
    /// ```
    pub async fn sismember<K: ToArg, M: ToArg>(&self, key: K, member: M) -> Result<bool> {
        self.query(cmd("SISMEMBER").arg(key).arg(member)).await
    }

    /// `ZADD key score member`: true when the member is new.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let is_new = client.zadd("leaderboard", 4200.0, "ada").await?;
    /// # Ok(()) }
    /// ```
    pub async fn zadd<K: ToArg, M: ToArg>(&self, key: K, score: f64, member: M) -> Result<bool> {
        self.query(cmd("ZADD").arg(key).arg(score).arg(member))
            .await
    }

    /// `ZSCORE key member`.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let score = client.zscore("leaderboard", "ada").await?; // Option<f64>
    /// # Ok(()) }
    /// ```
    pub async fn zscore<K: ToArg, M: ToArg>(&self, key: K, member: M) -> Result<Option<f64>> {
        self.query(cmd("ZSCORE").arg(key).arg(member)).await
    }

    /// `ZRANGE key start stop` (by rank).
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let top3: Vec<String> = client.zrange("leaderboard", 0, 2).await?;
    /// # Ok(()) }
    /// ```
    pub async fn zrange<K: ToArg, T: FromValue>(&self, key: K, start: i64, stop: i64) -> Result<T> {
        self.query(cmd("ZRANGE").arg(key).arg(start).arg(stop))
            .await
    }

    /// `ZREM key members...`: how many were removed.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let removed = client.zrem("leaderboard", ["ada"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn zrem<K: ToArg, M: ToArg>(
        &self,
        key: K,
        members: impl IntoIterator<Item = M>,
    ) -> Result<i64> {
        self.query(cmd("ZREM").arg(key).args(members)).await
    }

    /// `XADD key * field value ...`: appends an entry whose ID the server picks, and
    /// returns that ID. Not sent again once it may have run (a repeat would add a second
    /// entry).
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let id = client.xadd("orders:{eu}", [("kind", "paid"), ("amount", "12.50")]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn xadd<K: ToArg, F: ToArg, V: ToArg>(
        &self,
        key: K,
        fields: impl IntoIterator<Item = (F, V)>,
    ) -> Result<String> {
        let mut command = cmd("XADD").arg(key).arg("*");
        for (field, value) in fields {
            command = command.arg(field).arg(value);
        }
        self.query(command).await
    }

    /// `XLEN key`: the number of entries.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let backlog = client.xlen("orders:{eu}").await?;
    /// # Ok(()) }
    /// ```
    pub async fn xlen<K: ToArg>(&self, key: K) -> Result<i64> {
        self.query(cmd("XLEN").arg(key)).await
    }

    /// `XRANGE key start end [COUNT count]`: the entries with IDs from `start` to `end`
    /// (`-` and `+` for the first and the last), oldest first.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// for entry in client.xrange("orders:{eu}", "-", "+", Some(100)).await? {
    ///     println!("{} {:?}", entry.id, entry.get("kind"));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn xrange<K: ToArg>(
        &self,
        key: K,
        start: &str,
        end: &str,
        count: Option<usize>,
    ) -> Result<Vec<crate::StreamEntry>> {
        let mut command = cmd("XRANGE").arg(key).arg(start).arg(end);
        if let Some(count) = count {
            command = command.arg("COUNT").arg(count);
        }
        self.query(command).await
    }

    /// `XGROUP CREATE key group start MKSTREAM`: creates a consumer group that reads
    /// from `start` (`$` for new entries only, `0` for the whole stream), and the
    /// stream if it does not exist. `Ok(false)` when the group exists already
    /// (`BUSYGROUP`), so that every consumer can call it at start. It is sent again
    /// after a lost connection (a second run changes nothing): then `Ok(false)` may
    /// answer for a group this very call created, so the flag cannot elect the one
    /// consumer that does a one-time setup.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let created = client.xgroup_create("orders:{eu}", "billing", "0").await?;
    /// # Ok(()) }
    /// ```
    pub async fn xgroup_create<K: ToArg, G: ToArg>(
        &self,
        key: K,
        group: G,
        start: &str,
    ) -> Result<bool> {
        let command = cmd("XGROUP")
            .arg("CREATE")
            .arg(key)
            .arg(group)
            .arg(start)
            .arg("MKSTREAM");
        // Safe to repeat: a second run finds the group and answers BUSYGROUP.
        match self.query_idempotent::<()>(command).await {
            Ok(()) => Ok(true),
            Err(e) if e.server_code() == Some("BUSYGROUP") => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `XREADGROUP GROUP group consumer COUNT count [BLOCK ms] STREAMS key >`: up to
    /// `count` (0: no limit) entries of `key` never delivered to the group, now delivered to
    /// `consumer` (pending until [`xack`](Self::xack)ed). With `block`, waits up to that
    /// long (at least 1 ms) for one, on a dedicated connection, and returns none when
    /// none came; the wait is added to the response timeout. Not sent again once it may
    /// have run (the entries it delivered would stay pending unseen).
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`]; `NOGROUP` when the group does not exist.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use std::time::Duration;
    /// let batch = client
    ///     .xreadgroup("billing", "worker-1", "orders:{eu}", 10, Some(Duration::from_secs(1)))
    ///     .await?;
    /// for entry in &batch {
    ///     // ... handle it, then:
    ///     client.xack("orders:{eu}", "billing", [&entry.id]).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn xreadgroup<G: ToArg, C: ToArg, K: ToArg>(
        &self,
        group: G,
        consumer: C,
        key: K,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<crate::StreamEntry>> {
        let mut command = cmd("XREADGROUP")
            .arg("GROUP")
            .arg(group)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            // `BLOCK 0` waits for ever; the server takes a signed 64-bit count.
            let millis = u64::try_from(block.as_millis())
                .unwrap_or(u64::MAX)
                .clamp(1, i64::MAX as u64);
            command = command.arg("BLOCK").arg(millis);
        }
        let reply: Value = self.query(command.arg("STREAMS").arg(key).arg(">")).await?;
        crate::cmd::stream::read_entries(reply)
    }

    /// `XACK key group ids...`: marks entries as handled; how many were pending. Sent
    /// again after a lost connection (acknowledging twice is harmless), so after such a
    /// resend the count may be lower than what this call acknowledged.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let acked = client.xack("orders:{eu}", "billing", ["1700000000000-0"]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn xack<K: ToArg, G: ToArg, I: ToArg>(
        &self,
        key: K,
        group: G,
        ids: impl IntoIterator<Item = I>,
    ) -> Result<i64> {
        self.query(cmd("XACK").arg(key).arg(group).args(ids)).await
    }

    /// `EVAL script numkeys keys... args...`; the keys must share a slot.
    ///
    /// # Errors
    ///
    /// [`crate::Error::CrossSlot`] when the keys do not share a slot; otherwise as
    /// [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let script = "return redis.call('INCRBY', KEYS[1], ARGV[1])";
    /// let visits: i64 = client.eval(script, ["{user:42}:visits"], [5]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn eval<K: ToArg, A: ToArg, T: FromValue>(
        &self,
        script: &str,
        keys: impl IntoIterator<Item = K>,
        args: impl IntoIterator<Item = A>,
    ) -> Result<T> {
        let keys: Vec<K> = keys.into_iter().collect();
        self.query(
            cmd("EVAL")
                .arg(script)
                .arg(keys.len())
                .args(keys)
                .args(args),
        )
        .await
    }

    /// Runs `script` with `keys` (which must share a slot) and `args`: `EVALSHA`, and,
    /// where the node answers `NOSCRIPT`, `EVAL` with the source, which also caches it
    /// there. Both sends share one deadline, this handle's
    /// [`response_timeout`](ClusterClient::response_timeout).
    ///
    /// A `NOSCRIPT` means the script did not run, so the second send never runs it
    /// twice. Otherwise the script is retried as any command is: a script that writes
    /// is not resent once it may have run; a [`Script::read_only`] one is, and may be
    /// served by a replica under [`ReadFrom`](crate::ReadFrom).
    ///
    /// # Errors
    ///
    /// [`crate::Error::CrossSlot`] when the keys do not share a slot; the script's own
    /// error as [`crate::Error::Server`]; otherwise as [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::Script;
    /// // Build it once (it hashes the source), then invoke it as often as needed.
    /// let add = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    /// let visits: i64 = client.invoke(&add, &["{user:42}:visits"], &[5]).await?;
    /// # Ok(()) }
    /// ```
    pub async fn invoke<K: ToArg, A: ToArg, T: FromValue>(
        &self,
        script: &Script,
        keys: &[K],
        args: &[A],
    ) -> Result<T> {
        let now = Instant::now();
        let deadline = crate::deadline::after(now, self.response_timeout);
        let value = match self
            .inner
            .execute(
                script.evalsha_cmd(keys, args),
                now,
                deadline,
                self.read_from,
            )
            .await?
        {
            // The server's own "No matching script": a script that wrote and then
            // returned `redis.error_reply("NOSCRIPT ...")` itself ran, and sent again as
            // `EVAL` it would run twice.
            Value::ServerError(e)
                if e.code() == "NOSCRIPT" && e.message().starts_with("No matching script") =>
            {
                tracing::debug!(sha = script.sha(), "NOSCRIPT: sending the script's source");
                self.inner
                    .execute(
                        script.eval_cmd(keys, args),
                        Instant::now(),
                        deadline,
                        self.read_from,
                    )
                    .await?
            }
            value => value,
        };
        into_result(value)
    }

    /// Runs a [`ScriptCall`](crate::ScriptCall) as [`ClusterClient::invoke`] runs a script: for keys and
    /// arguments of different types.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::invoke`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::Script;
    /// let limiter = Script::new(
    ///     "local n = redis.call('INCR', KEYS[1]) \
    ///      if n == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end \
    ///      return n <= tonumber(ARGV[1])",
    /// );
    /// let allowed: bool = client
    ///     .invoke_call(limiter.key("rate:{user:7}").arg(100).arg(60))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn invoke_call<T: FromValue>(&self, call: crate::ScriptCall) -> Result<T> {
        self.invoke(call.script(), call.keys(), call.args()).await
    }

    /// `SCRIPT LOAD` on every node, replicas included, so that `EVALSHA` finds the
    /// script anywhere, also in a [`crate::Pipeline`], which does not fall back to
    /// `EVAL` (see [`crate::Pipeline::invoke`]; a [`crate::Transaction`] sends the
    /// source). A node added to the
    /// cluster later, or one restarted without persistence of its script cache (Redis
    /// keeps none), does not have it until it is loaded again.
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`] for a command sent to every node: the first node's
    /// error, if any failed.
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// use redcluster::Script;
    /// let add = Script::new("return redis.call('INCRBY', KEYS[1], ARGV[1])");
    /// client.load_script(&add).await?;
    /// let mut p = client.pipeline();
    /// p.invoke(&add, &["{user:42}:visits"], &[1])
    ///     .invoke(&add, &["{user:7}:visits"], &[1]);
    /// p.execute().await?;
    /// # Ok(()) }
    /// ```
    pub async fn load_script(&self, script: &Script) -> Result<()> {
        let _: Value = self.query(script.load()).await?;
        Ok(())
    }

    /// `PUBLISH channel message`: how many subscribers received it on the node that took
    /// the `PUBLISH` (the server counts its own; the cluster bus carries the message to
    /// every other node's subscribers, uncounted).
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let receivers = client.publish("news", "hello").await?;
    /// # Ok(()) }
    /// ```
    pub async fn publish<C: ToArg, M: ToArg>(&self, channel: C, message: M) -> Result<i64> {
        self.query(cmd("PUBLISH").arg(channel).arg(message)).await
    }

    /// `SPUBLISH channel message` (sharded pub/sub, on the channel's slot owner).
    ///
    /// # Errors
    ///
    /// As [`ClusterClient::query`].
    ///
    /// # Examples
    ///
    /// ```no_run
    /// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
    /// let receivers = client.spublish("orders:{eu}", "paid").await?;
    /// # Ok(()) }
    /// ```
    pub async fn spublish<C: ToArg, M: ToArg>(&self, channel: C, message: M) -> Result<i64> {
        self.query(cmd("SPUBLISH").arg(channel).arg(message)).await
    }
}
