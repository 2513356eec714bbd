//! One `redis-server` process: its ports, its directory, starting it until it answers,
//! signals, and its log.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read as _, Seek as _};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::time::Instant;

use super::builder::{ConfSecrets, Settings};
use super::NodeState;
use crate::cmd::cmd;
use crate::conn::NodeConnection;
use crate::error::{Error, Result};
use crate::resp::{FromValue, Value};

/// Each node's log, in its directory; stdout and stderr go there too, so that errors
/// printed before the log file is opened (a bad `redis.conf`) are kept.
pub(crate) const LOG_FILE: &str = "redis.log";
const CONF_FILE: &str = "redis.conf";

/// How often readiness is polled while a node starts.
const START_POLL: Duration = Duration::from_millis(10);
/// How long a server at a starting node's port may refuse the testkit's credentials
/// before the start fails: long enough for a server of ours that found the port taken
/// to exit and say so.
const REFUSAL_GRACE: Duration = Duration::from_secs(1);
/// Fresh port pairs tried when a node finds its port taken.
const PORT_ATTEMPTS: usize = 8;

/// Ports handed to nodes of live clusters in this process. Port picking skips them, so
/// tests running in parallel in one process never pick each other's ports, even those
/// of killed nodes that will be restarted. Another process (tests run one per process,
/// as cargo-nextest does) may still take a killed node's ports before its restart,
/// which then fails with the log's "Address already in use".
static RESERVED: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

fn reserved() -> MutexGuard<'static, BTreeSet<u16>> {
    RESERVED.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Two free ports (client and cluster bus), found by binding to port 0 and released for
/// `redis-server` to bind. Another process may take them in between; starting retries.
fn reserve_ports() -> io::Result<(u16, u16)> {
    for _ in 0..64 {
        let a = TcpListener::bind(("127.0.0.1", 0))?;
        let b = TcpListener::bind(("127.0.0.1", 0))?;
        let ports = (a.local_addr()?.port(), b.local_addr()?.port());
        let mut taken = reserved();
        if taken.contains(&ports.0) || taken.contains(&ports.1) {
            continue;
        }
        taken.insert(ports.0);
        taken.insert(ports.1);
        return Ok(ports);
    }
    Err(io::Error::new(
        io::ErrorKind::AddrInUse,
        "no free pair of ports on 127.0.0.1",
    ))
}

/// Ports reserved for a node being started: released when dropped (the start failed, or
/// was cancelled with its future), unless the node took them over (`keep`).
struct Reservation(Option<[u16; 2]>);

impl Reservation {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if let Some(ports) = self.0.take() {
            release_ports(ports);
        }
    }
}

pub(crate) fn release_ports(ports: [u16; 2]) {
    let mut taken = reserved();
    for port in ports {
        taken.remove(&port);
    }
}

/// The process side of a node.
struct Process {
    child: Option<Child>,
    state: NodeState,
    /// How the process ended when it exited by itself; kept until the node is started
    /// again or stopped on purpose, so every later check reports it.
    exited: Option<std::process::ExitStatus>,
}

/// One node of a local cluster. Shared (`Arc`) so that the cluster's lock on its node
/// list is never held across an await.
pub(crate) struct Node {
    pub(crate) port: u16,
    pub(crate) cluster_port: u16,
    pub(crate) id: String,
    pub(crate) dir: PathBuf,
    process: Mutex<Process>,
    /// The testkit's own connection, reopened when it dies.
    conn: Mutex<Option<NodeConnection>>,
}

/// Why a start attempt failed.
enum StartError {
    /// The port was taken between picking and binding: try other ports.
    PortTaken(String),
    Failed(Error),
}

impl From<Error> for StartError {
    fn from(e: Error) -> Self {
        StartError::Failed(e)
    }
}

fn io_error(kind: io::ErrorKind, message: String) -> Error {
    Error::io(io::Error::new(kind, message), false)
}

impl Node {
    /// Starts a new empty node on free ports and waits until it answers.
    pub(crate) async fn launch(settings: &Settings) -> Result<Node> {
        let deadline = crate::deadline::from_now(settings.wait_timeout);
        let mut last = String::new();
        for _ in 0..PORT_ATTEMPTS {
            let (port, cluster_port) = reserve_ports().map_err(|e| Error::io(e, false))?;
            let reservation = Reservation(Some([port, cluster_port]));
            let dir = settings.dir.path().join(format!("node-{port}"));
            let attempt = async {
                fs::create_dir_all(&dir).map_err(|e| Error::io(e, false))?;
                fs::write(
                    dir.join(CONF_FILE),
                    settings.render_conf(port, cluster_port, &dir),
                )
                .map_err(|e| Error::io(e, false))?;
                start(settings, &dir, port, deadline).await
            };
            match attempt.await {
                Ok((child, conn, id)) => {
                    // The node releases them when it is dropped.
                    reservation.keep();
                    return Ok(Node {
                        port,
                        cluster_port,
                        id,
                        dir,
                        process: Mutex::new(Process {
                            child: Some(child),
                            state: NodeState::Running,
                            exited: None,
                        }),
                        conn: Mutex::new(Some(conn)),
                    });
                }
                Err(e) => {
                    drop(reservation);
                    let _ = fs::remove_dir_all(&dir);
                    match e {
                        StartError::PortTaken(why) => last = why,
                        StartError::Failed(e) => return Err(e),
                    }
                }
            }
        }
        Err(io_error(
            io::ErrorKind::AddrInUse,
            format!(
                "could not start a node: its ports were taken {PORT_ATTEMPTS} times; last: {last}"
            ),
        ))
    }

    /// Starts the node again from its `redis.conf` and `nodes.conf`, on the same ports,
    /// and waits until it answers with its old node id.
    pub(crate) async fn relaunch(&self, settings: &Settings) -> Result<()> {
        self.stop(NodeState::Killed);
        let deadline = crate::deadline::from_now(settings.wait_timeout);
        loop {
            match start(settings, &self.dir, self.port, deadline).await {
                Ok((child, conn, id)) => {
                    let mut process = self.process();
                    process.child = Some(child);
                    process.state = NodeState::Running;
                    drop(process);
                    *self.conn_slot() = Some(conn);
                    if id != self.id {
                        return Err(io_error(
                            io::ErrorKind::Other,
                            format!(
                                "node on {} came back with node id {id} instead of {}: \
                                 its nodes.conf was lost",
                                self.addr(),
                                self.id
                            ),
                        ));
                    }
                    return Ok(());
                }
                // The old port is held by someone else for now (a connection that
                // happened to get it as its local port); wait for it to be released.
                Err(StartError::PortTaken(why)) => {
                    if Instant::now() >= deadline {
                        return Err(io_error(
                            io::ErrorKind::AddrInUse,
                            format!("could not restart the node on {}: {why}", self.addr()),
                        ));
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(StartError::Failed(e)) => return Err(e),
            }
        }
    }

    pub(crate) fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn process(&self) -> MutexGuard<'_, Process> {
        self.process.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn conn_slot(&self) -> MutexGuard<'_, Option<NodeConnection>> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The node's state, noticing a process that exited by itself (it becomes
    /// [`NodeState::Killed`]), and how it exited, if it did by itself: reported on every
    /// call until the node is started again or stopped on purpose (any of the many
    /// callers could otherwise take the news before the check that reports it).
    pub(crate) fn poll_state(&self) -> (NodeState, Option<std::process::ExitStatus>) {
        let mut process = self.process();
        let exited = match process.child.as_mut() {
            Some(child) => child.try_wait().ok().flatten(),
            None => None,
        };
        if let Some(status) = exited {
            process.child = None;
            process.state = NodeState::Killed;
            process.exited = Some(status);
            drop(process);
            *self.conn_slot() = None;
            return (NodeState::Killed, Some(status));
        }
        (process.state, process.exited)
    }

    pub(crate) fn state(&self) -> NodeState {
        self.poll_state().0
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.process().child.as_ref().map(Child::id)
    }

    /// Kills the process (SIGKILL, which also ends a stopped one) and reaps it, so its
    /// pid is gone when this returns. The node ends in `state` unless it was removed.
    pub(crate) fn stop(&self, state: NodeState) {
        let mut process = self.process();
        if let Some(mut child) = process.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        process.exited = None;
        if process.state != NodeState::Removed {
            process.state = state;
        }
        drop(process);
        *self.conn_slot() = None;
    }

    /// Sends SIGSTOP or SIGCONT.
    pub(crate) fn signal(&self, stop: bool) -> Result<()> {
        use nix::sys::signal::{kill, Signal};
        use nix::unistd::Pid;
        let mut process = self.process();
        let pid = match (&process.child, process.state) {
            (Some(child), NodeState::Running | NodeState::Paused) => child.id(),
            (_, state) => {
                return Err(Error::Config(format!(
                    "node on {} is {}, not running",
                    self.addr(),
                    format!("{state:?}").to_lowercase()
                )))
            }
        };
        let pid = Pid::from_raw(i32::try_from(pid).unwrap_or(i32::MAX));
        let signal = if stop {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(pid, signal).map_err(|e| Error::io(io::Error::from(e), false))?;
        process.state = if stop {
            NodeState::Paused
        } else {
            NodeState::Running
        };
        drop(process);
        if stop {
            wait_until_stopped(pid.as_raw());
        }
        Ok(())
    }

    /// The cached connection, or a new one.
    pub(crate) async fn conn(&self, settings: &Settings) -> Result<NodeConnection> {
        if let Some(conn) = self.conn_slot().as_ref().filter(|c| !c.is_closed()) {
            return Ok(conn.clone());
        }
        let conn = NodeConnection::connect(&self.addr(), &settings.admin_options()).await?;
        *self.conn_slot() = Some(conn.clone());
        Ok(conn)
    }

    pub(crate) fn forget_conn(&self) {
        *self.conn_slot() = None;
    }

    pub(crate) fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let process = self
            .process
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(mut child) = process.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        release_ports([self.port, self.cluster_port]);
    }
}

/// Spawns `redis-server` on the `redis.conf` in `dir` and waits until the process we
/// spawned answers on `port`. Returns the child, a connection and the node id.
async fn start(
    settings: &Settings,
    dir: &Path,
    port: u16,
    deadline: Instant,
) -> Result<(Child, NodeConnection, String), StartError> {
    let log_path = dir.join(LOG_FILE);
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| Error::io(e, false))?;
    // A restart appends to the log of the earlier starts, whose lines (a port taken
    // then) say nothing about this one: this start reads from here on.
    let log_start = log.metadata().map_err(|e| Error::io(e, false))?.len();
    let stdout = log.try_clone().map_err(|e| Error::io(e, false))?;
    let mut command = match setpriv() {
        Some(setpriv) => {
            let mut command = Command::new(setpriv);
            command
                .args(["--pdeathsig", "KILL", "--"])
                .arg(&settings.binary);
            command
        }
        None => Command::new(&settings.binary),
    };
    command
        .arg(dir.join(CONF_FILE))
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(log);
    let child = spawn_tied(command).map_err(|e| {
        io_error(
            e.kind(),
            format!("spawning {}: {e}", settings.binary.display()),
        )
    })?;
    // Killed if this future is dropped before the node answers (a caller's timeout
    // around `LocalCluster::start` or `restart`), or if it never answers.
    let mut spawned = Spawned(Some(child));
    let (conn, id) =
        wait_ready(settings, &mut spawned, port, deadline, &log_path, log_start).await?;
    Ok((spawned.keep()?, conn, id))
}

/// A command spawned by [`spawn_tied`], with its reply.
type SpawnJob = (Command, mpsc::SyncSender<io::Result<Child>>);

/// Spawns `command` from one thread that lives as long as the process. With
/// [`setpriv`]'s `--pdeathsig KILL` in front, the kernel kills the node when this test
/// process ends, however it ends: one killed (SIGKILL, a CI job's timeout, Ctrl-C)
/// runs no destructor, and its nodes would go on running, on their ports, until
/// killed by hand. The signal comes when the thread that spawned the node ends, not
/// the process, hence the one thread: spawned from a runtime's worker, or a
/// `spawn_blocking` thread that ends when idle, a node would die with that thread.
fn spawn_tied(command: Command) -> io::Result<Child> {
    static SPAWNER: Mutex<Option<mpsc::Sender<SpawnJob>>> = Mutex::new(None);
    let gone = || io::Error::other("the testkit's spawning thread is gone");
    let sender = {
        let mut spawner = SPAWNER.lock().unwrap_or_else(PoisonError::into_inner);
        match &*spawner {
            Some(sender) => sender.clone(),
            None => {
                let (sender, jobs) = mpsc::channel::<SpawnJob>();
                std::thread::Builder::new()
                    .name("redcluster-testkit-spawner".into())
                    // Ends only with the process: the static keeps a sender.
                    .spawn(move || {
                        for (mut command, reply) in jobs {
                            let _ = reply.send(command.spawn());
                        }
                    })?;
                *spawner = Some(sender.clone());
                sender
            }
        }
    };
    let (reply, spawned) = mpsc::sync_channel(1);
    sender.send((command, reply)).map_err(|_| gone())?;
    // A fork and an exec: no wait worth handing to the runtime.
    spawned.recv().map_err(|_| gone())?
}

/// util-linux's `setpriv`, if on the `PATH` (Debian and Ubuntu have it in an essential
/// package) and new enough to take `--pdeathsig` (2.33): it sets the parent-death signal
/// and execs the node, which keeps its pid; the crate, free of `unsafe`, cannot set the
/// signal itself between fork and exec. Without it, nodes of a killed test process
/// outlive it.
fn setpriv() -> Option<&'static Path> {
    static FOUND: std::sync::OnceLock<Option<PathBuf>> = std::sync::OnceLock::new();
    FOUND
        .get_or_init(|| {
            let path = std::env::var_os("PATH")?;
            let setpriv = std::env::split_paths(&path)
                .map(|dir| dir.join("setpriv"))
                .find(|candidate| candidate.is_file())?;
            // An older one refuses the option, and every node would fail to start.
            let takes_it = Command::new(&setpriv)
                .args(["--pdeathsig", "KILL", "--", "true"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|status| status.success());
            takes_it.then_some(setpriv)
        })
        .as_deref()
}

/// A spawned `redis-server` that is killed (and reaped) when dropped, unless kept: a
/// dropped `std::process::Child` would leave the process running, on our ports, in a
/// directory about to be deleted.
struct Spawned(Option<Child>);

impl Spawned {
    fn child(&mut self) -> Result<&mut Child> {
        self.0
            .as_mut()
            .ok_or_else(|| io_error(io::ErrorKind::Other, "the process was handed over".into()))
    }

    /// The process, no longer killed on drop.
    fn keep(mut self) -> Result<Child> {
        self.0
            .take()
            .ok_or_else(|| io_error(io::ErrorKind::Other, "the process was handed over".into()))
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

async fn wait_ready(
    settings: &Settings,
    spawned: &mut Spawned,
    port: u16,
    deadline: Instant,
    log_path: &Path,
    log_start: u64,
) -> Result<(NodeConnection, String), StartError> {
    let addr = format!("127.0.0.1:{port}");
    let options = settings.admin_options();
    // When a server at the port first refused the testkit's credentials.
    let mut refused_since: Option<Instant> = None;
    loop {
        // Why this poll found the node not ready, for the error if it never is.
        let last_problem: String;
        let child = spawned.child()?;
        if let Some(status) = child.try_wait().map_err(|e| Error::io(e, false))? {
            let tail = tail_from(log_path, log_start, 20, &settings.secrets);
            // Looked for in the log as written: scrubbing a password that is a word of
            // the message ("use") would hide it.
            if port_taken_in_log(log_path, log_start) {
                return Err(StartError::PortTaken(format!(
                    "{addr}: {}",
                    tail.lines().last().unwrap_or("")
                )));
            }
            return Err(StartError::Failed(io_error(
                io::ErrorKind::Other,
                format!(
                    "redis-server for {addr} exited during startup ({status}); \
                     the end of its log ({}):\n{tail}",
                    log_path.display()
                ),
            )));
        }
        match NodeConnection::connect(&addr, &options).await {
            // Refused credentials or certificate from a running server: the settings
            // disagree with the testkit's (an ACL-only password, a TLS setting), and no
            // wait mends that. Unless the server is another process's, on the port
            // (taken while a killed node was down): then ours is about to exit with
            // "Address already in use", which the top of the loop tells, and the port
            // is waited for or another taken. Given a moment to show it.
            Err(e @ (Error::Auth(_) | Error::Tls(_)))
                if refused_since.get_or_insert_with(Instant::now).elapsed() < REFUSAL_GRACE =>
            {
                last_problem = format!("the connection was refused: {e}");
            }
            Err(e @ (Error::Auth(_) | Error::Tls(_))) => {
                return Err(StartError::Failed(io_error(
                    io::ErrorKind::Other,
                    format!(
                        "redis-server for {addr} refused the testkit's connection: {e}; the \
                         end of its log ({}):\n{}",
                        log_path.display(),
                        tail_from(log_path, log_start, 20, &settings.secrets)
                    ),
                )));
            }
            Err(e) => last_problem = format!("connecting failed: {e}"),
            Ok(conn) => {
                // Whoever answers must be the process we started: if another process
                // holds the port, ours is about to exit with "Address already in use".
                let info = conn.send(cmd("INFO").arg("server")).await;
                let pid: Option<u32> = info
                    .as_ref()
                    .ok()
                    .and_then(|v| String::from_value(v.clone()).ok())
                    .and_then(|text| {
                        super::topology::info_field(&text, "process_id")
                            .and_then(|p| p.parse().ok())
                    });
                let ours = spawned.child()?.id();
                if pid == Some(ours) {
                    // Ready once its data is loaded: a node restarted with an AOF or RDB
                    // answers `LOADING` meanwhile.
                    match conn.send(cmd("CLUSTER").arg("MYID")).await? {
                        Value::ServerError(e) if e.code() == "LOADING" => {
                            last_problem = "it was still loading its data".into();
                        }
                        reply => return Ok((conn, String::from_value(reply)?)),
                    }
                } else {
                    last_problem = match (&info, pid) {
                        (Err(e), _) => format!("INFO failed: {e}"),
                        (Ok(Value::ServerError(e)), _) => format!("INFO was refused: {e}"),
                        (Ok(_), Some(pid)) => format!(
                            "the port was answered by process {pid}, not the one started \
                             ({ours})"
                        ),
                        (Ok(_), None) => "INFO named no process id".into(),
                    };
                }
            }
        }
        if Instant::now() >= deadline {
            return Err(StartError::Failed(io_error(
                io::ErrorKind::TimedOut,
                format!(
                    "redis-server for {addr} was not ready in time ({last_problem}); the end \
                     of its log ({}):\n{}",
                    log_path.display(),
                    tail_from(log_path, log_start, 20, &settings.secrets)
                ),
            )));
        }
        tokio::time::sleep(START_POLL).await;
    }
}

/// Waits (briefly, bounded) until the kernel reports the process stopped, so that a
/// request sent right after `pause` cannot be served. Without `/proc` it returns at once.
fn wait_until_stopped(pid: i32) {
    let stat = format!("/proc/{pid}/stat");
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    while std::time::Instant::now() < deadline {
        let Ok(text) = fs::read_to_string(&stat) else {
            return;
        };
        // "pid (comm) S ...": the state follows the last ')'.
        let state = text
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.trim_start().chars().next());
        if matches!(state, Some('T' | 't') | None) {
            return;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The last `lines` lines of a node's log without `secrets`, or a note saying why there
/// are none.
pub(crate) fn tail(path: &Path, lines: usize, secrets: &ConfSecrets) -> String {
    tail_from(path, 0, lines, secrets)
}

/// What a node's log holds from byte `offset` on (all of it if the file is now shorter:
/// it was replaced).
fn log_from(path: &Path, offset: u64) -> io::Result<Vec<u8>> {
    let mut file = fs::File::open(path)?;
    if file.metadata()?.len() >= offset {
        file.seek(io::SeekFrom::Start(offset))?;
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// Whether the log written from `offset` says the port was taken.
fn port_taken_in_log(path: &Path, offset: u64) -> bool {
    const TAKEN: &[u8] = b"Address already in use";
    log_from(path, offset).is_ok_and(|bytes| bytes.windows(TAKEN.len()).any(|w| w == TAKEN))
}

/// The last `lines` lines of what a node's log holds from byte `offset` on (all of it if
/// the file is now shorter: it was replaced), without `secrets`, or a note saying why
/// there are none.
fn tail_from(path: &Path, offset: u64, lines: usize, secrets: &ConfSecrets) -> String {
    match log_from(path, offset) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            secrets.scrub(&all[all.len().saturating_sub(lines)..].join("\n"))
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Turns a reply into `T`, or into an error that names the node and the command.
pub(crate) fn expect<T: FromValue>(reply: Value, node: usize, addr: &str, what: &str) -> Result<T> {
    T::from_value(reply).map_err(|e| {
        io_error(
            io::ErrorKind::Other,
            format!("{what} on node {node} ({addr}) failed: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_start_reads_only_the_log_it_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(LOG_FILE);
        let none = ConfSecrets::default();
        fs::write(&path, "bind: Address already in use\n").unwrap();
        let offset = fs::metadata(&path).unwrap().len();
        let mut log = fs::OpenOptions::new().append(true).open(&path).unwrap();
        io::Write::write_all(&mut log, b"one\ntwo\nthree\n").unwrap();
        assert_eq!(tail_from(&path, offset, 20, &none), "one\ntwo\nthree");
        assert_eq!(tail_from(&path, offset, 2, &none), "two\nthree");
        assert_eq!(
            tail(&path, 20, &none),
            "bind: Address already in use\none\ntwo\nthree"
        );
        // A log shorter than the offset was replaced: all of it is new.
        fs::write(&path, "fresh\n").unwrap();
        assert_eq!(tail_from(&path, offset, 20, &none), "fresh");
        let missing = tail(&dir.path().join("missing.log"), 20, &none);
        assert!(missing.starts_with("(cannot read "), "{missing}");
    }
}
