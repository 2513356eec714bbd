//! The cluster doctor's questions: asks every node, concurrently, what
//! `crate::observe::doctor` needs to judge the cluster against the seed's checklist.
//!
//! Owns only the asking: which connection each question goes over and in which order.
//! What to ask for and what the answers mean live in `observe/doctor.rs`. Questions go
//! over the client's own connections (primaries' and replica-read ones); nodes the
//! routing snapshot leaves out (failed nodes, masters without slots) get a connection of
//! their own for the duration. Every command keeps its documented name: the connection
//! applies the client's `CommandRenames`.

use std::sync::Arc;

use bytes::Bytes;

use crate::cluster::node::Node;
use crate::cluster::{into_result, ClusterClient, Inner};
use crate::cmd::{cmd, Cmd};
use crate::conn::NodeConnection;
use crate::error::{Error, Result};
use crate::observe::doctor::{self as judge, Answers, KeySample, NodeFacts, Reply, SampledKey};
use crate::observe::DoctorReport;
use crate::resp::Value;

impl ClusterClient {
    /// Checks the cluster against the seed's production checklist and best practices:
    /// cluster state, slot coverage and balance, masters and replicas, replication,
    /// `cluster-node-timeout`, memory, persistence, authentication, TLS, dangerous
    /// commands, and big and hot keys in a sample. See [`DoctorReport`] for every check
    /// and its thresholds; print the report for a table.
    ///
    /// Every node the client knows, and every node the cluster reports (failed ones and
    /// masters without slots included), is asked concurrently, each command with the
    /// client's response timeout. A node that cannot be reached is a failed
    /// `node-reachable` check, not an error; a check the client's user may not make
    /// (`NOPERM`, a command renamed without the client being told) is
    /// [`CheckStatus::Unknown`](crate::CheckStatus::Unknown) and says why.
    ///
    /// What it sends, besides `CLUSTER SHARDS`, `CLUSTER INFO` and `INFO`: `CONFIG GET`
    /// of `cluster-node-timeout`, `appendfsync`, `port`, `tls-port` and
    /// `enable-debug-command` (never `requirepass`); `ACL WHOAMI`, `ACL GETUSER
    /// default` (only its flags are read) and `ACL DRYRUN` (which runs nothing) for
    /// `FLUSHALL`, `FLUSHDB`, `CONFIG SET` and `DEBUG`; `COMMAND INFO` of those; where
    /// the default user's flags cannot be read, a `PING` on a connection opened without
    /// credentials; and on each primary up to 10 `SCAN` calls for a sample of at most
    /// 100 keys, with `MEMORY USAGE` (and `OBJECT FREQ` under an LFU policy) for each, a
    /// key at a time, stopping at the first key the user may not read. It changes no
    /// data; what the user may not run or read is refused, each refusal an entry of the
    /// server's ACL log, as for any request. The report names the largest and the hottest sampled keys;
    /// it never shows a password or the names commands are renamed to.
    ///
    /// It asks in a few rounds (the nodes, then the unauthenticated probe and the nodes
    /// the client does not route to, then the key samples), each command bounded by the
    /// response timeout: against nodes that stop answering, a report can take several
    /// response timeouts. Wrap the call in `tokio::time::timeout` to bound it.
    ///
    /// To make every check, an ACL user needs, besides what the client itself needs
    /// (see the README's security notes): `+cluster|info +info +config|get +acl|whoami
    /// +acl|getuser +acl|dryrun +command|info +scan +memory|usage +object|freq` and read
    /// access to the keys (`%R~*`). An application user usually has less, and gets
    /// `Unknown` checks saying which permission was missing: run the doctor as an
    /// administrator for the full picture, as the application's user to see what it
    /// may do.
    ///
    /// ```no_run
    /// # async fn demo() -> redcluster::Result<()> {
    /// let client = redcluster::ClusterClient::connect(["127.0.0.1:7000"]).await?;
    /// let report = client.doctor().await?;
    /// println!("{report}");
    /// for check in report.failures() {
    ///     eprintln!("{}: {} ({})", check.name, check.observed, check.recommendation);
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    ///
    /// Only when no node at all could be reached: the first node's connection error
    /// ([`Error::Io`], [`Error::Timeout`], [`Error::Auth`], ...).
    pub async fn doctor(&self) -> Result<DoctorReport> {
        self.inner.doctor().await
    }
}

/// One node being examined: its facts so far, and the connection to ask more over.
struct Examined {
    facts: NodeFacts,
    conn: Option<Arc<NodeConnection>>,
    /// The connection was opened for the doctor (the node has no handle) and is closed
    /// when it is done.
    own: bool,
}

impl Inner {
    async fn doctor(&self) -> Result<DoctorReport> {
        let mut known = self.doctor_targets();
        if known.is_empty() {
            // No topology yet (a lazy client before its discovery, a cluster that never
            // answered): the seeds are asked. With no node asked the report would read
            // healthy, every per-node check missing.
            known = self
                .config
                .seeds
                .iter()
                .map(|seed| (self.seed_address(seed), None))
                .collect();
        }
        let mut examined: Vec<Examined> = futures_util::future::join_all(
            known
                .iter()
                .map(|(addr, node)| self.examine(addr, node.as_ref())),
        )
        .await;
        let tls = self.config.connect.tls.is_some();
        let remap = |addr: &str| self.remap(addr);
        let view = judge::agreed_view(
            examined.iter().filter_map(|e| {
                Some((
                    e.facts.addr.as_str(),
                    &e.facts.answers.as_ref().ok()?.shards,
                ))
            }),
            tls,
            &remap,
        );
        if let Some(view) = &view {
            let unseen: Vec<String> = view
                .members()
                .into_iter()
                .filter(|m| !examined.iter().any(|e| e.facts.addr == *m))
                .map(str::to_owned)
                .collect();
            let extra =
                futures_util::future::join_all(unseen.iter().map(|addr| self.examine(addr, None)))
                    .await;
            examined.extend(extra);
            futures_util::future::join_all(
                examined
                    .iter_mut()
                    .filter(|e| view.is_primary(&e.facts.addr))
                    .map(|e| self.sample_keys(e)),
            )
            .await;
        }
        for e in &examined {
            if let (true, Some(conn)) = (e.own, &e.conn) {
                conn.close();
            }
        }
        if examined.iter().all(|e| e.facts.answers.is_err()) {
            if let Some(Err(e)) = examined.first().map(|e| &e.facts.answers) {
                return Err(e.clone());
            }
        }
        let nodes: Vec<NodeFacts> = examined.into_iter().map(|e| e.facts).collect();
        let client = judge::ClientSide {
            tls,
            credentials: self.authenticates(),
        };
        Ok(judge::evaluate(&nodes, view.as_ref(), client))
    }

    /// Whether the client sends credentials (a password or a credentials provider).
    fn authenticates(&self) -> bool {
        self.config.connect.password.is_some() || self.config.connect.credentials.is_some()
    }

    /// The nodes of the routing snapshot with their handles, primaries first.
    fn doctor_targets(&self) -> Vec<(String, Option<Arc<Node>>)> {
        let routes = self.routes.load();
        let mut targets: Vec<(String, Option<Arc<Node>>)> = Vec::new();
        for node in routes
            .primaries
            .iter()
            .chain(routes.replicas.iter().flatten())
        {
            if !targets.iter().any(|(a, _)| **a == *node.addr) {
                targets.push((node.addr.to_string(), Some(Arc::clone(node))));
            }
        }
        targets
    }

    /// Asks one node everything but the key sample. `node` is the client's handle, if
    /// the node has one; otherwise a connection is opened for the doctor alone.
    async fn examine(&self, addr: &str, node: Option<&Arc<Node>>) -> Examined {
        let timeout = self.config.response_timeout;
        let deadline = crate::deadline::from_now(timeout);
        let conn = match node {
            Some(node) => node.connection(deadline).await,
            None => {
                let options = self.connect_options(addr, false);
                match tokio::time::timeout_at(deadline, NodeConnection::connect(addr, &options))
                    .await
                {
                    Ok(conn) => conn.map(Arc::new),
                    Err(_) => Err(Error::Timeout {
                        may_have_executed: false,
                    }),
                }
            }
        };
        let conn = match conn {
            Ok(conn) => conn,
            Err(e) => {
                return Examined {
                    facts: NodeFacts {
                        addr: addr.to_owned(),
                        answers: Err(e),
                    },
                    conn: None,
                    own: false,
                }
            }
        };
        let ask = |c: Cmd| conn.send_timeout(c, timeout);
        let mut config = cmd("CONFIG").arg("GET");
        for name in judge::CONFIG_PARAMETERS {
            config = config.arg(name);
        }
        let mut command_info = cmd("COMMAND").arg("INFO");
        for (name, _) in judge::DANGEROUS_COMMANDS {
            command_info = command_info.arg(name);
        }
        let (shards, cluster_info, info, config, whoami, default_user, command_info) = tokio::join!(
            ask(cmd("CLUSTER").arg("SHARDS")),
            ask(cmd("CLUSTER").arg("INFO")),
            ask(cmd("INFO")),
            ask(config),
            ask(cmd("ACL").arg("WHOAMI")),
            ask(cmd("ACL").arg("GETUSER").arg("default")),
            ask(command_info),
        );
        // A node that accepted the connection but answers nothing (paused, overloaded)
        // is as unreachable as one that refused it.
        if let Err(e) = &cluster_info {
            if !matches!(e, Error::Config(_)) {
                if node.is_none() {
                    conn.close();
                }
                return Examined {
                    facts: NodeFacts {
                        addr: addr.to_owned(),
                        answers: Err(e.clone()),
                    },
                    conn: None,
                    own: false,
                };
            }
        }
        let user = match whoami.and_then(into_result::<String>) {
            Ok(user) => Some(user),
            // A credentials provider may name any user; without one it is the
            // configured user, or `default`.
            Err(_) if self.config.connect.credentials.is_none() => Some(
                self.config
                    .connect
                    .username
                    .clone()
                    .unwrap_or_else(|| "default".to_owned()),
            ),
            Err(_) => None,
        };
        let dry_runs = match &user {
            Some(user) => {
                let targets = judge::dry_run_targets(&command_info);
                let replies = futures_util::future::join_all(targets.iter().map(|(name, args)| {
                    let mut dry_run = cmd("ACL").arg("DRYRUN").arg(user.as_str()).arg(*name);
                    for a in *args {
                        dry_run = dry_run.arg(*a);
                    }
                    ask(dry_run)
                }))
                .await;
                targets.iter().map(|(n, _)| *n).zip(replies).collect()
            }
            None => Vec::new(),
        };
        let unauthenticated =
            if self.authenticates() && judge::needs_unauthenticated_probe(&default_user) {
                Some(self.probe_without_credentials(addr).await)
            } else {
                None
            };
        Examined {
            facts: NodeFacts {
                addr: addr.to_owned(),
                answers: Ok(Answers {
                    shards,
                    cluster_info,
                    info,
                    config,
                    default_user,
                    unauthenticated,
                    command_info,
                    user,
                    dry_runs,
                    keys: None,
                }),
            },
            conn: Some(conn),
            own: node.is_none(),
        }
    }

    /// `PING` on a connection opened without credentials: a refused handshake or
    /// `NOAUTH` means authentication is on. Used only where the default user's flags
    /// cannot be read.
    async fn probe_without_credentials(&self, addr: &str) -> Reply {
        let mut options = self.connect_options(addr, false);
        options.username = None;
        options.password = None;
        options.credentials = None;
        // Naming the connection would be refused before PING could tell anything.
        options.client_name = None;
        options.read_only = false;
        let timeout = self.config.response_timeout;
        let conn = tokio::time::timeout(timeout, NodeConnection::connect(addr, &options))
            .await
            .map_err(|_| Error::Timeout {
                may_have_executed: false,
            })??;
        let reply = conn.send_timeout(cmd("PING"), timeout).await;
        conn.close();
        reply
    }

    /// Samples up to `KEY_SAMPLE_PER_PRIMARY` keys of a reachable primary with `SCAN`,
    /// then asks their memory (and access frequency, unless the policy is known not to
    /// count it), a key at a time, within one response timeout in all. It stops at the
    /// first key the client's user may not read: each such refusal is an entry of the
    /// server's ACL log (one per key: they are not merged), and a batch of a hundred
    /// would push out the entries that matter.
    async fn sample_keys(&self, examined: &mut Examined) {
        let (Some(conn), Ok(answers)) = (&examined.conn, &mut examined.facts.answers) else {
            return;
        };
        let timeout = self.config.response_timeout;
        let mut sample = KeySample::default();
        let mut keys: Vec<Bytes> = Vec::new();
        let mut cursor = Bytes::from_static(b"0");
        for _ in 0..judge::SCAN_CALLS_PER_PRIMARY {
            let page = conn
                .send_timeout(
                    cmd("SCAN")
                        .arg(&cursor)
                        .arg("COUNT")
                        .arg(judge::KEY_SAMPLE_PER_PRIMARY),
                    timeout,
                )
                .await
                .and_then(into_result::<(Bytes, Vec<Bytes>)>);
            match page {
                Ok((next, page)) => {
                    keys.extend(page);
                    cursor = next;
                }
                Err(e) => {
                    sample.error = Some(e);
                    break;
                }
            }
            if keys.len() >= judge::KEY_SAMPLE_PER_PRIMARY || &cursor[..] == b"0" {
                break;
            }
        }
        // SCAN may return a key more than once.
        keys.sort_unstable();
        keys.dedup();
        keys.truncate(judge::KEY_SAMPLE_PER_PRIMARY);
        let ask_freq = judge::may_track_frequency(&answers.info);
        let deadline = crate::deadline::from_now(timeout);
        let missing = || Err(Error::Protocol("no reply in batch".into()));
        let refused = |r: &Reply| matches!(r, Ok(Value::ServerError(e)) if e.code() == "NOPERM");
        for key in keys {
            let mut batch = vec![cmd("MEMORY").arg("USAGE").arg(&key).arg("SAMPLES").arg(5)];
            if ask_freq {
                batch.push(cmd("OBJECT").arg("FREQ").arg(&key));
            }
            let replies = tokio::time::timeout_at(deadline, conn.send_batch(batch))
                .await
                .unwrap_or(Err(Error::Timeout {
                    may_have_executed: true,
                }));
            let (memory, freq, stop): (Reply, Option<Reply>, bool) = match replies {
                Ok(values) => {
                    let mut values = values.into_iter().map(Ok);
                    let memory = values.next().unwrap_or_else(missing);
                    let freq = ask_freq.then(|| values.next().unwrap_or_else(missing));
                    let stop = refused(&memory) || freq.as_ref().is_some_and(refused);
                    (memory, freq, stop)
                }
                Err(e) => (Err(e.clone()), ask_freq.then(|| Err(e)), true),
            };
            sample.keys.push(SampledKey { key, memory, freq });
            if stop {
                break;
            }
        }
        answers.keys = Some(sample);
    }
}
