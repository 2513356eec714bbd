//! Heap allocations on the request hot path, counted with a counting global allocator.
//!
//! The budget (issue #4): encoding, routing, sending and receiving one `GET` may
//! allocate at most twice beyond what the reply itself needs (a bulk reply is a slice
//! of the read buffer: nothing). It allocates once: the command's buffer. The cell its
//! answer comes back in is reused from a per-thread pool. A pipeline's typed helpers
//! share their commands' buffers. This binary holds one test only, so no other test
//! allocates while it counts.

// A global allocator can only be written with `unsafe`; the library itself forbids it.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redcluster::testkit::LocalCluster;
use redcluster::{cmd, ClusterClient};

struct Counting;

static COUNTING: AtomicBool = AtomicBool::new(false);
static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: forwarding the caller's layout to the system allocator unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.load(Ordering::Relaxed) {
            ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: as for `alloc` and `dealloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn a_get_allocates_at_most_twice_beyond_its_reply() {
    // One thread runs the client's tasks and the test, so the count is this work's only.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let local = LocalCluster::builder()
            .masters(3)
            .replicas_per_master(0)
            .start()
            .await
            .unwrap();
        // No health checks or periodic refreshes: their allocations would be counted.
        let client = ClusterClient::builder()
            .nodes(local.seeds())
            .health_check_interval(None)
            .refresh_interval(Duration::from_secs(3600))
            .build()
            .await
            .unwrap();
        client.set("alloc:key", "a small value").await.unwrap();
        // Warm up: connections open, buffers grown.
        for _ in 0..2000 {
            let _: Option<Bytes> = client.get("alloc:key").await.unwrap();
        }
        const N: usize = 10_000;
        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        for _ in 0..N {
            let v: Option<Bytes> = client.get("alloc:key").await.unwrap();
            assert!(v.is_some());
        }
        COUNTING.store(false, Ordering::Relaxed);
        let per_request = ALLOCATIONS.load(Ordering::Relaxed) as f64 / N as f64;
        println!("allocations per GET: {per_request:.3}");
        assert!(per_request <= 1.05, "{per_request:.3} allocations per GET");

        // The same through the raw command API.
        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        for _ in 0..N {
            let v: Option<Bytes> = client.query(cmd("GET").arg("alloc:key")).await.unwrap();
            assert!(v.is_some());
        }
        COUNTING.store(false, Ordering::Relaxed);
        let per_request = ALLOCATIONS.load(Ordering::Relaxed) as f64 / N as f64;
        println!("allocations per query(GET): {per_request:.3}");
        assert!(
            per_request <= 1.05,
            "{per_request:.3} allocations per query(GET)"
        );

        // A 1000-command pipeline built with the typed helpers shares its commands'
        // buffers: building it, and sending it to three nodes, allocates a few dozen
        // times in all, not once per command.
        let keys: Vec<String> = (0..1000).map(|i| format!("alloc:pipe:{i}")).collect();
        let pipeline = |keys: &[String]| {
            let mut p = client.pipeline();
            for k in keys {
                p.set(k.as_str(), "a small value");
            }
            p
        };
        pipeline(&keys).execute().await.unwrap();
        ALLOCATIONS.store(0, Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        let p = pipeline(&keys);
        COUNTING.store(false, Ordering::Relaxed);
        let building = ALLOCATIONS.load(Ordering::Relaxed);
        COUNTING.store(true, Ordering::Relaxed);
        let replies = p.execute().await.unwrap();
        COUNTING.store(false, Ordering::Relaxed);
        let in_all = ALLOCATIONS.load(Ordering::Relaxed);
        println!("allocations for a 1000-SET pipeline: {building} building it, {in_all} in all");
        assert_eq!(replies.len(), 1000);
        assert!(
            building <= 40,
            "{building} allocations to build the pipeline"
        );
        assert!(
            in_all <= 100,
            "{in_all} allocations to build and run the pipeline"
        );
    });
}
