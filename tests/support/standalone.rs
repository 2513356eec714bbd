//! One throwaway standalone `redis-server`, for tests that ask a real server what it
//! thinks (`COMMAND GETKEYS`, `COMMAND`), not for cluster behaviour (see the testkit).
//!
//! It listens on a free 127.0.0.1 port, saves nothing, runs in its own temporary
//! directory, and is killed (and the directory removed) when dropped. The binary is
//! the testkit's (`$REDCLUSTER_REDIS_SERVER`), else `$REDIS_SERVER`, else `redis-server`
//! from the `PATH`.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running server; dropping it kills it.
pub struct Standalone {
    /// `127.0.0.1:<port>`.
    pub addr: String,
    child: Child,
    dir: PathBuf,
}

impl Standalone {
    /// Starts a server and waits until it accepts connections.
    ///
    /// Panics when the binary cannot be run or does not come up within 10 s: a test that
    /// needs a real server has nothing to check without one.
    pub fn start() -> Standalone {
        Standalone::start_with(None, &[])
    }

    /// [`Standalone::start`] with `args` added to its command line.
    #[allow(dead_code)] // not every test binary needs one
    pub fn start_with_args(args: &[&str]) -> Standalone {
        Standalone::start_with(None, args)
    }

    /// [`Standalone::start`] on `port` (another process's server on a port the test
    /// wants taken), with `args` added to its command line.
    pub fn start_on(port: u16, args: &[&str]) -> Standalone {
        Standalone::start_with(Some(port), args)
    }

    fn start_with(port: Option<u16>, args: &[&str]) -> Standalone {
        let binary = std::env::var(redcluster::testkit::REDIS_SERVER_ENV)
            .or_else(|_| std::env::var("REDIS_SERVER"))
            .unwrap_or_else(|_| "redis-server".into());
        // A free port can be taken by someone else before the server binds it; retry.
        for attempt in 0..5 {
            let port = port.unwrap_or_else(|| {
                TcpListener::bind("127.0.0.1:0")
                    .and_then(|l| l.local_addr())
                    .expect("a free port")
                    .port()
            });
            let dir = std::env::temp_dir().join(format!(
                "redcluster-standalone-{}-{port}-{attempt}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).expect("temp dir");
            let child = Command::new(&binary)
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
                .args(args)
                .arg("--dir")
                .arg(&dir)
                .current_dir(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {binary}: {e}"));
            let mut server = Standalone {
                addr: format!("127.0.0.1:{port}"),
                child,
                dir,
            };
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = server.child.try_wait() {
                    break; // Exited: most likely the port was taken.
                }
                if TcpStream::connect(&server.addr).is_ok() {
                    return server;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            drop(server);
        }
        panic!("{binary} did not start");
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
