//! What the client logs through `tracing`, captured for a test to read.
//!
//! A subscriber set with `tracing::subscriber::set_default` sees only its own thread:
//! run the client on a current-thread runtime so that every task it spawns runs there.

use std::sync::{Arc, Mutex};

/// Collects what a `fmt` subscriber writes.
#[derive(Clone, Default)]
pub struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;

    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

impl Capture {
    /// Every line written so far.
    pub fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// Installs, for this thread and until the guard drops, a subscriber that writes events
/// at `DEBUG` and above as JSON lines (`"message":"..."`, each field `"name":value`) into
/// the returned capture.
pub fn capture_debug_events() -> (Capture, ScopedSubscriber) {
    let capture = Capture::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(capture.clone())
        .finish();
    let guard = ScopedSubscriber {
        _default: tracing::subscriber::set_default(subscriber),
        _second: second_dispatcher(),
    };
    (capture, guard)
}

/// tracing decides whether a call site is enabled when a thread first reaches it. With
/// one scoped subscriber registered, it asks only the subscriber of that thread: in a
/// parallel test, often one with none, which disables the call site for this test too.
/// A second registered dispatcher makes it ask every live subscriber.
pub fn second_dispatcher() -> tracing::Dispatch {
    tracing::Dispatch::new(tracing::subscriber::NoSubscriber::default())
}

/// Keeps the subscriber of [`capture_debug_events`] installed.
pub struct ScopedSubscriber {
    _default: tracing::subscriber::DefaultGuard,
    _second: tracing::Dispatch,
}
