//! A TCP relay on loopback in front of one real node, that can turn the connections it
//! carries into black holes: a flow a NAT or a firewall forgot, or a peer gone without
//! a reset. Bytes sent on such a connection are taken and dropped, nothing comes back,
//! and neither side sees it closed; connections made afterwards are relayed as usual.
//! It can also send the connections made from some point on to another node (an
//! address handed to another machine), and hold back what the node sends (a slow
//! path from it) until released.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

struct State {
    /// One switch per connection accepted: set, it passes nothing on.
    holes: Mutex<Vec<Arc<AtomicBool>>>,
    accepted: AtomicUsize,
    /// Where new connections go.
    target: Mutex<String>,
    /// While true, nothing the node sends is passed on (it waits, in order).
    held: tokio::sync::watch::Sender<bool>,
}

pub struct Relay {
    addr: String,
    state: Arc<State>,
    /// Accepts, and owns every connection's pumps: aborted (on drop), it ends them all.
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    /// Listens on a free loopback port and relays each connection to `target`.
    pub async fn start(target: String) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let state = Arc::new(State {
            target: Mutex::new(target),
            held: tokio::sync::watch::Sender::new(false),
            holes: Mutex::default(),
            accepted: AtomicUsize::default(),
        });
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            let mut pumps = tokio::task::JoinSet::new();
            while let Ok((client, _)) = listener.accept().await {
                let target = shared.target.lock().unwrap().clone();
                let Ok(server) = TcpStream::connect(&target).await else {
                    continue; // The client sees its connection closed.
                };
                let hole = Arc::new(AtomicBool::new(false));
                shared.holes.lock().unwrap().push(Arc::clone(&hole));
                shared.accepted.fetch_add(1, Ordering::SeqCst);
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                let never_held = tokio::sync::watch::Sender::new(false).subscribe();
                pumps.spawn(pump(
                    client_read,
                    server_write,
                    Arc::clone(&hole),
                    never_held,
                ));
                pumps.spawn(pump(
                    server_read,
                    client_write,
                    hole,
                    shared.held.subscribe(),
                ));
            }
        });
        Relay { addr, state, task }
    }

    /// A relay in front of the node at `target`, and the remap that sends a cluster
    /// client there whenever the cluster names `target`: the node as the client reaches
    /// it.
    pub async fn in_front_of(target: String) -> (Relay, redcluster::AddressRemap) {
        let relay = Relay::start(target.clone()).await;
        let addr = relay.addr();
        let remap = redcluster::AddressRemap::from_fn(move |a| (a == target).then(|| addr.clone()));
        (relay, remap)
    }

    /// Where clients connect.
    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    /// How many connections the relay accepted so far.
    pub fn accepted(&self) -> usize {
        self.state.accepted.load(Ordering::SeqCst)
    }

    /// Connections accepted from now on go to `target`; those open stay where they are.
    pub fn retarget(&self, target: String) {
        *self.state.target.lock().unwrap() = target;
    }

    /// What the node sends on any connection is held back from now on, until
    /// [`Relay::release`].
    pub fn hold(&self) {
        self.state.held.send_replace(true);
    }

    /// Passes on what was held back, and what comes after.
    pub fn release(&self) {
        self.state.held.send_replace(false);
    }

    /// Every connection open now passes nothing on from here on, either way, and stays
    /// open.
    pub fn black_hole(&self) {
        for hole in self.state.holes.lock().unwrap().iter() {
            hole.store(true, Ordering::SeqCst);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Copies `from` to `to` until either ends; while `hole` is set, reads and drops; while
/// `held` says so, passes nothing on.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    hole: Arc<AtomicBool>,
    mut held: tokio::sync::watch::Receiver<bool>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if held.wait_for(|held| !held).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if hole.load(Ordering::SeqCst) {
            continue;
        }
        // Read while not held, but held since: kept back too.
        if held.wait_for(|held| !held).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
