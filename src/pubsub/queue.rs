//! The bounded queue between the subscriber's task and the consumer of the stream.
//!
//! The task never waits for the consumer: at the bound, the configured
//! [`OverflowPolicy`] decides. Drops are counted, not stored, so the queue never holds
//! more than its capacity.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use crate::pubsub::{OverflowPolicy, PubSubEvent};

#[derive(Debug, Default)]
struct State {
    events: VecDeque<PubSubEvent>,
    waker: Option<Waker>,
    /// Dropped since the consumer last saw a `Lagged` event.
    unreported: u64,
    dropped: u64,
    peak: usize,
    gaps: u64,
    /// No more events will come: the stream ends once `events` is empty.
    closed: bool,
}

#[derive(Debug)]
pub(crate) struct EventQueue {
    state: Mutex<State>,
    capacity: usize,
    policy: OverflowPolicy,
}

/// A copy of the queue's counters.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Counters {
    pub(crate) queued: usize,
    pub(crate) peak: usize,
    pub(crate) dropped: u64,
    pub(crate) gaps: u64,
}

impl EventQueue {
    pub(crate) fn new(capacity: usize, policy: OverflowPolicy) -> Self {
        EventQueue {
            state: Mutex::new(State::default()),
            capacity: capacity.max(1),
            policy,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Only plain queue operations happen under the lock; a poisoned one is consistent.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queues `event`; `false` when the queue was full and the policy is to disconnect
    /// (the queue is closed then, and `event` dropped).
    pub(crate) fn push(&self, event: PubSubEvent) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        if matches!(event, PubSubEvent::Gap { .. }) {
            state.gaps += 1;
        }
        if state.events.len() >= self.capacity {
            match self.policy {
                OverflowPolicy::DropOldest => {
                    // The oldest message goes; a `Gap` or `Lost` stays, or the consumer
                    // would not learn which channels missed messages or are gone. With
                    // no message queued, a new message is the one dropped, and a new
                    // notice joins a queued one of its kind (not past a notice of the
                    // other kind), or is kept beyond the bound:
                    // a node restarting again and again while the consumer stalls adds
                    // no notice after the first.
                    let oldest_message = state
                        .events
                        .iter()
                        .position(|e| matches!(e, PubSubEvent::Message(_)));
                    match oldest_message {
                        Some(at) => {
                            state.events.remove(at);
                            state.dropped += 1;
                            state.unreported += 1;
                        }
                        None if matches!(event, PubSubEvent::Message(_)) => {
                            state.dropped += 1;
                            state.unreported += 1;
                            return true;
                        }
                        None => match join_notice(&mut state.events, event) {
                            None => return true,
                            Some(unlike) => {
                                state.events.push_back(unlike);
                                state.peak = state.peak.max(state.events.len());
                                return true;
                            }
                        },
                    }
                }
                OverflowPolicy::Disconnect => {
                    state.dropped += 1;
                    state.closed = true;
                    if let Some(waker) = state.waker.take() {
                        drop(state);
                        waker.wake();
                    }
                    return false;
                }
            }
        }
        state.events.push_back(event);
        state.peak = state.peak.max(state.events.len());
        if let Some(waker) = state.waker.take() {
            drop(state);
            waker.wake();
        }
        true
    }

    /// Ends the stream once the queued events are taken.
    pub(crate) fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        if let Some(waker) = state.waker.take() {
            drop(state);
            waker.wake();
        }
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// The next event: a `Lagged` notice first when events were dropped since the last.
    pub(crate) fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Option<PubSubEvent>> {
        let mut state = self.lock();
        if state.unreported > 0 {
            let dropped = std::mem::take(&mut state.unreported);
            return Poll::Ready(Some(PubSubEvent::Lagged { dropped }));
        }
        if let Some(event) = state.events.pop_front() {
            return Poll::Ready(Some(event));
        }
        if state.closed {
            return Poll::Ready(None);
        }
        match &mut state.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    pub(crate) fn counters(&self) -> Counters {
        let state = self.lock();
        Counters {
            queued: state.events.len(),
            peak: state.peak,
            dropped: state.dropped,
            gaps: state.gaps,
        }
    }
}

/// Adds the channels and patterns of `notice` (a `Gap` or `Lost`) to a queued notice of
/// the same kind (sharded or not; for `Lost`, the same refusal); hands `notice` back
/// when there is none.
fn join_notice(events: &mut VecDeque<PubSubEvent>, notice: PubSubEvent) -> Option<PubSubEvent> {
    fn unite(into: &mut Vec<bytes::Bytes>, from: Vec<bytes::Bytes>) {
        for name in from {
            if !into.contains(&name) {
                into.push(name);
            }
        }
    }
    let same = |queued: &PubSubEvent| match (queued, &notice) {
        (PubSubEvent::Gap { sharded: a, .. }, PubSubEvent::Gap { sharded: b, .. }) => a == b,
        (
            PubSubEvent::Lost {
                sharded: a,
                error: e,
                ..
            },
            PubSubEvent::Lost {
                sharded: b,
                error: f,
                ..
            },
        ) => a == b && e == f,
        _ => false,
    };
    // Not past a notice of the other kind: a `Gap` joined to one before a `Lost` of the
    // same channel would say "lost" last, when the channel was subscribed again since.
    let other_kind = |queued: &PubSubEvent| {
        matches!(
            (queued, &notice),
            (PubSubEvent::Gap { .. }, PubSubEvent::Lost { .. })
                | (PubSubEvent::Lost { .. }, PubSubEvent::Gap { .. })
        )
    };
    let Some(queued) = events
        .iter_mut()
        .rev()
        .take_while(|queued| !other_kind(queued))
        .find(|queued| same(queued))
    else {
        return Some(notice);
    };
    match (queued, notice) {
        (
            PubSubEvent::Gap {
                channels, patterns, ..
            }
            | PubSubEvent::Lost {
                channels, patterns, ..
            },
            PubSubEvent::Gap {
                channels: more_channels,
                patterns: more_patterns,
                ..
            }
            | PubSubEvent::Lost {
                channels: more_channels,
                patterns: more_patterns,
                ..
            },
        ) => {
            unite(channels, more_channels);
            unite(patterns, more_patterns);
            None
        }
        (_, notice) => Some(notice),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pubsub::Message;
    use bytes::Bytes;

    fn message(i: u32) -> PubSubEvent {
        PubSubEvent::Message(Message {
            channel: Bytes::from_static(b"c"),
            payload: Bytes::from(i.to_string()),
            pattern: None,
            sharded: false,
        })
    }

    fn next(q: &EventQueue) -> Poll<Option<PubSubEvent>> {
        let waker = futures_util::task::noop_waker();
        q.poll_next(&mut Context::from_waker(&waker))
    }

    fn gap(channels: &[&'static str], sharded: bool) -> PubSubEvent {
        PubSubEvent::Gap {
            channels: channels
                .iter()
                .map(|c| Bytes::from_static(c.as_bytes()))
                .collect(),
            patterns: Vec::new(),
            sharded,
        }
    }

    #[test]
    fn notices_past_the_bound_join_a_queued_one_of_their_kind() {
        let q = EventQueue::new(2, OverflowPolicy::DropOldest);
        assert!(q.push(gap(&["a"], false)));
        assert!(q.push(gap(&["s"], true)));
        // A node restarting again and again while nobody reads.
        for _ in 0..100 {
            assert!(q.push(gap(&["a", "b"], false)));
            assert!(q.push(gap(&["t"], true)));
        }
        assert_eq!(q.counters().queued, 2);
        assert_eq!(next(&q), Poll::Ready(Some(gap(&["a", "b"], false))));
        assert_eq!(next(&q), Poll::Ready(Some(gap(&["s", "t"], true))));
        // A message is dropped rather than a notice is joined; one of another kind is
        // kept beyond the bound.
        assert!(q.push(message(1)));
        assert!(q.push(gap(&["c"], false)));
        assert!(q.push(gap(&["d"], false)));
        assert!(q.push(gap(&["e"], false)));
        let lost = PubSubEvent::Lost {
            channels: vec![Bytes::from_static(b"f")],
            patterns: Vec::new(),
            sharded: false,
            error: crate::ServerError::new("NOPERM no"),
        };
        assert!(q.push(lost.clone()));
        assert_eq!(q.counters().queued, 3);
        assert_eq!(
            next(&q),
            Poll::Ready(Some(PubSubEvent::Lagged { dropped: 1 }))
        );
        assert_eq!(next(&q), Poll::Ready(Some(gap(&["c"], false))));
        assert_eq!(next(&q), Poll::Ready(Some(gap(&["d", "e"], false))));
        assert_eq!(next(&q), Poll::Ready(Some(lost.clone())));
        // Not joined across a notice of the other kind: "f" was subscribed again and
        // interrupted after it was lost.
        let q = EventQueue::new(2, OverflowPolicy::DropOldest);
        assert!(q.push(gap(&["f"], false)));
        assert!(q.push(lost.clone()));
        assert!(q.push(gap(&["f"], false)));
        assert_eq!(next(&q), Poll::Ready(Some(gap(&["f"], false))));
        assert_eq!(next(&q), Poll::Ready(Some(lost)));
        assert_eq!(next(&q), Poll::Ready(Some(gap(&["f"], false))));
    }

    #[test]
    fn drop_oldest_keeps_the_newest_and_reports_the_count_first() {
        let q = EventQueue::new(3, OverflowPolicy::DropOldest);
        for i in 0..10 {
            assert!(q.push(message(i)));
            assert!(q.counters().queued <= 3);
        }
        let c = q.counters();
        assert_eq!((c.queued, c.peak, c.dropped), (3, 3, 7));
        assert_eq!(
            next(&q),
            Poll::Ready(Some(PubSubEvent::Lagged { dropped: 7 }))
        );
        for i in 7..10 {
            assert_eq!(next(&q), Poll::Ready(Some(message(i))));
        }
        assert_eq!(next(&q), Poll::Pending);
        q.close();
        assert_eq!(next(&q), Poll::Ready(None));
    }

    #[test]
    fn drop_oldest_drops_messages_and_keeps_gaps() {
        let q = EventQueue::new(3, OverflowPolicy::DropOldest);
        let gap = PubSubEvent::Gap {
            channels: vec![Bytes::from_static(b"c")],
            patterns: Vec::new(),
            sharded: false,
        };
        assert!(q.push(gap.clone()));
        for i in 0..5 {
            assert!(q.push(message(i)));
        }
        assert_eq!(
            next(&q),
            Poll::Ready(Some(PubSubEvent::Lagged { dropped: 3 }))
        );
        assert_eq!(next(&q), Poll::Ready(Some(gap.clone())));
        assert_eq!(next(&q), Poll::Ready(Some(message(3))));
        assert_eq!(next(&q), Poll::Ready(Some(message(4))));
        // A queue of notices only: a new message is dropped, a new notice joins the
        // queued one.
        let q = EventQueue::new(1, OverflowPolicy::DropOldest);
        assert!(q.push(gap.clone()));
        assert!(q.push(message(5)));
        assert!(q.push(gap.clone()));
        assert_eq!(
            next(&q),
            Poll::Ready(Some(PubSubEvent::Lagged { dropped: 1 }))
        );
        assert_eq!(next(&q), Poll::Ready(Some(gap)));
        assert_eq!(next(&q), Poll::Pending);
    }

    #[test]
    fn disconnect_closes_at_the_bound_and_keeps_what_was_queued() {
        let q = EventQueue::new(2, OverflowPolicy::Disconnect);
        assert!(q.push(message(0)));
        assert!(q.push(message(1)));
        assert!(!q.push(message(2)));
        assert!(q.is_closed());
        assert_eq!(q.counters().dropped, 1);
        assert_eq!(next(&q), Poll::Ready(Some(message(0))));
        assert_eq!(next(&q), Poll::Ready(Some(message(1))));
        assert_eq!(next(&q), Poll::Ready(None));
    }
}
