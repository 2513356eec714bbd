//! The one-shot hand-over of a request's answer from the connection's tasks to its
//! caller, in a cell the caller's thread takes from a small pool and gives back.
//!
//! It replaces a oneshot channel allocated and freed per request: that allocation and
//! the channel's bookkeeping were 7 % of the client's user-space instructions per GET
//! (callgrind, 64 in flight). Cells are reused once both halves are gone: each thread
//! keeps up to [`MAX_FREE_CELLS`] of them.
//!
//! The halves behave as a oneshot channel's: the sender answers once, the receiver
//! learns when the sender went away without answering, and the sender can see that
//! the receiver gave up.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use crate::conn::connection::{lock, Delivery};

/// Free cells kept per thread: enough for every request in flight from one thread
/// under heavy load, and a bound however many there were at a peak.
const MAX_FREE_CELLS: usize = 1024;

thread_local! {
    static FREE_CELLS: RefCell<Vec<Arc<Cell>>> = const { RefCell::new(Vec::new()) };
}

#[derive(Default)]
struct Cell {
    state: Mutex<State>,
}

#[derive(Default)]
enum State {
    /// No answer yet; the waker of the receiver, once it polled.
    Waiting(Option<Waker>),
    Answered(Delivery),
    /// The sender went away without answering.
    SenderGone,
    /// The receiver took the answer, or went away.
    #[default]
    Finished,
}

impl Cell {
    fn state(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding it, and every state is consistent on its own.
        lock(&self.state)
    }
}

/// A new sender and receiver pair, on a pooled cell when one is free.
pub(crate) fn channel() -> (ReplySender, ReplyReceiver) {
    let cell = FREE_CELLS
        .try_with(|free| free.borrow_mut().pop())
        .ok()
        .flatten()
        .unwrap_or_default();
    *cell.state() = State::Waiting(None);
    (
        ReplySender(Some(Arc::clone(&cell))),
        ReplyReceiver(Some(cell)),
    )
}

/// Puts `cell` back in this thread's pool if nobody else holds it.
fn recycle(cell: Arc<Cell>) {
    // Both halves dropped their clones after their last use of the cell (under its
    // lock), so a count of one means it is ours alone.
    if Arc::strong_count(&cell) != 1 {
        return;
    }
    let _ = FREE_CELLS.try_with(|free| {
        let mut free = free.borrow_mut();
        if free.len() < MAX_FREE_CELLS {
            free.push(cell);
        }
    });
}

/// The connection's half: answers once.
pub(crate) struct ReplySender(Option<Arc<Cell>>);

impl ReplySender {
    /// Hands `answer` to the receiver; gives it back if the receiver went away, as a
    /// oneshot sender does.
    pub(crate) fn send(mut self, answer: Delivery) -> Result<(), Delivery> {
        let Some(cell) = self.0.take() else {
            return Err(answer);
        };
        let waker = {
            let mut state = cell.state();
            let State::Waiting(waker) = &mut *state else {
                return Err(answer);
            };
            let waker = waker.take();
            *state = State::Answered(answer);
            waker
        };
        // Dropped before waking: the receiver may reuse the cell as soon as it runs.
        drop(cell);
        if let Some(waker) = waker {
            waker.wake();
        }
        Ok(())
    }

    /// Whether the receiver went away (its caller gave up): then this half holds the
    /// only reference (a receiver gives its up when it takes the answer, which needs
    /// this half to have sent it).
    pub(crate) fn is_closed(&self) -> bool {
        self.0
            .as_ref()
            .is_none_or(|cell| Arc::strong_count(cell) == 1)
    }
}

impl Drop for ReplySender {
    fn drop(&mut self) {
        let Some(cell) = self.0.take() else {
            return;
        };
        let waker = {
            let mut state = cell.state();
            match &mut *state {
                State::Waiting(waker) => {
                    let waker = waker.take();
                    *state = State::SenderGone;
                    waker
                }
                _ => None,
            }
        };
        drop(cell);
        if let Some(waker) = waker {
            waker.wake();
        }
    }
}

/// The sender went away without answering (a connection task panicked).
#[derive(Debug)]
pub(crate) struct SenderGone;

/// The caller's half: a future of the answer.
pub(crate) struct ReplyReceiver(Option<Arc<Cell>>);

impl Future for ReplyReceiver {
    type Output = Result<Delivery, SenderGone>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Some(cell) = &this.0 else {
            // Polled again after it was ready.
            return Poll::Ready(Err(SenderGone));
        };
        let ready = {
            let mut state = cell.state();
            match std::mem::take(&mut *state) {
                State::Answered(answer) => Ok(answer),
                State::SenderGone | State::Finished => Err(SenderGone),
                State::Waiting(waker) => {
                    let waker = match waker {
                        Some(w) if w.will_wake(cx.waker()) => w,
                        _ => cx.waker().clone(),
                    };
                    *state = State::Waiting(Some(waker));
                    return Poll::Pending;
                }
            }
        };
        if let Some(cell) = this.0.take() {
            recycle(cell);
        }
        Poll::Ready(ready)
    }
}

impl Drop for ReplyReceiver {
    fn drop(&mut self) {
        let Some(cell) = self.0.take() else {
            return;
        };
        // An answer that came after the caller gave up is dropped with the cell's
        // state, here.
        let unclaimed = std::mem::take(&mut *cell.state());
        drop(unclaimed);
        recycle(cell);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(n: i64) -> Delivery {
        Ok(std::iter::once(crate::resp::Value::Int(n)).collect())
    }

    fn value(answer: Delivery) -> crate::resp::Value {
        answer.expect("a reply").remove(0)
    }

    /// A waker that notes it was woken.
    #[derive(Default)]
    struct Woken(std::sync::atomic::AtomicBool);

    impl std::task::Wake for Woken {
        fn wake(self: Arc<Self>) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    impl Woken {
        fn was_woken(&self) -> bool {
            self.0.load(std::sync::atomic::Ordering::SeqCst)
        }
    }

    /// A receiver polled once, so that it waits with a waker noting its wake-up.
    fn waiting_receiver() -> (ReplySender, ReplyReceiver, Arc<Woken>, Waker) {
        let (tx, mut rx) = channel();
        let woken = Arc::new(Woken::default());
        let waker = Waker::from(Arc::clone(&woken));
        let first = Pin::new(&mut rx).poll(&mut Context::from_waker(&waker));
        assert!(first.is_pending(), "nothing sent yet");
        (tx, rx, woken, waker)
    }

    #[test]
    fn an_answer_sent_before_or_after_the_receiver_waits_arrives() {
        let (tx, rx) = channel();
        tx.send(answer(1)).expect("receiver waiting");
        let got = futures_util::FutureExt::now_or_never(rx).expect("ready");
        assert_eq!(value(got.expect("answered")), crate::resp::Value::Int(1));

        let (tx, mut rx, woken, waker) = waiting_receiver();
        tx.send(answer(2)).expect("receiver waiting");
        assert!(woken.was_woken(), "the answer woke the waiting receiver");
        match Pin::new(&mut rx).poll(&mut Context::from_waker(&waker)) {
            Poll::Ready(Ok(got)) => assert_eq!(value(got), crate::resp::Value::Int(2)),
            other => panic!("{:?}", other.map(|r| r.map(|_| ()))),
        }
    }

    #[test]
    fn a_sender_dropped_unanswered_ends_the_wait() {
        let (tx, mut rx, woken, waker) = waiting_receiver();
        drop(tx);
        assert!(
            woken.was_woken(),
            "the sender's end woke the waiting receiver"
        );
        let got = Pin::new(&mut rx).poll(&mut Context::from_waker(&waker));
        assert!(matches!(got, Poll::Ready(Err(SenderGone))));
    }

    #[test]
    fn the_sender_sees_a_receiver_that_gave_up_and_gets_its_answer_back() {
        let (tx, rx) = channel();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        let back = tx.send(answer(3)).expect_err("handed back");
        assert_eq!(value(back), crate::resp::Value::Int(3));
    }

    #[test]
    fn cells_are_reused_only_once_both_halves_are_gone() {
        let (tx, rx) = channel();
        let first = Arc::as_ptr(rx.0.as_ref().expect("a cell"));
        // The receiver goes first: the sender still holds the cell, which is not pooled.
        drop(rx);
        let (tx2, rx2) = channel();
        assert_ne!(Arc::as_ptr(rx2.0.as_ref().expect("a cell")), first);
        drop(tx);
        // A cell answered and taken, with both halves gone, is pooled and reused clean.
        let second = Arc::as_ptr(rx2.0.as_ref().expect("a cell"));
        tx2.send(answer(4)).expect("receiver waiting");
        let mut rx2 = rx2;
        let got = Pin::new(&mut rx2).poll(&mut Context::from_waker(Waker::noop()));
        assert!(matches!(got, Poll::Ready(Ok(_))));
        drop(rx2);
        let (tx3, rx3) = channel();
        assert_eq!(Arc::as_ptr(rx3.0.as_ref().expect("a cell")), second);
        assert!(!tx3.is_closed());
        drop(tx3);
        let err = futures_util::FutureExt::now_or_never(rx3).expect("ready");
        assert!(err.is_err(), "a reused cell starts empty");
    }
}
