//! The subscriber task's tables: the subscriptions it holds and the callers waiting for
//! confirmations, each with the indexes that keep the work of one `subscribe` or one
//! confirmation proportional to what it names, not to everything held. A service that
//! subscribes per user or per device holds tens of thousands of channels and adds them
//! one call at a time; scanning them all per call made each call cost milliseconds.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::pubsub::link::Kind;

/// A subscription: its kind, its channel (or pattern) and, for a node-local one (see
/// [`super::manager::is_node_local`]), the primary it is made on.
pub(super) type Key = (Kind, Bytes, Option<Arc<str>>);

/// A confirmation a caller waits for: of a subscription (`true`) or of its end
/// (`false`).
pub(super) type Confirmation = (bool, Key);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum State {
    /// To be sent.
    Waiting,
    /// Sent on a link, not confirmed.
    Pending(u64),
    /// Confirmed on a link.
    Active(u64),
}

impl State {
    pub(super) fn link(self) -> Option<u64> {
        match self {
            State::Pending(id) | State::Active(id) => Some(id),
            State::Waiting => None,
        }
    }
}

#[derive(Debug)]
pub(super) struct Sub {
    /// Changed only through [`Subs::set_state`], which keeps the indexes.
    state: State,
    /// Was active once and lost since: its next confirmation is reported as a gap.
    pub(super) interrupted: bool,
    /// Refused along with others in one command: sent in a command of its own until
    /// confirmed, so that one refused channel (an ACL denies a whole `SUBSCRIBE` for
    /// one of its channels) does not take the others with it.
    pub(super) solo: bool,
}

impl Sub {
    pub(super) fn state(&self) -> State {
        self.state
    }
}

/// Every subscription asked for, by key.
#[derive(Debug, Default)]
pub(super) struct Subs {
    map: HashMap<Key, Sub>,
    /// The keys in state `Waiting`: what the next resync sends.
    waiting: HashSet<Key>,
    /// How many subscriptions each link carries, pending or active: a link with none is
    /// idle.
    per_link: HashMap<u64, usize>,
    /// How many node-local subscriptions name each node: where to look for a channel's.
    local_nodes: HashMap<Arc<str>, usize>,
}

impl Subs {
    pub(super) fn get(&self, key: &Key) -> Option<&Sub> {
        self.map.get(key)
    }

    pub(super) fn get_mut(&mut self, key: &Key) -> Option<&mut Sub> {
        self.map.get_mut(key)
    }

    pub(super) fn contains(&self, key: &Key) -> bool {
        self.map.contains_key(key)
    }

    pub(super) fn iter(&self) -> impl Iterator<Item = (&Key, &Sub)> {
        self.map.iter()
    }

    /// `key`'s subscription, added as waiting (and `interrupted`) if there was none;
    /// its state, and whether it was added.
    pub(super) fn ask(&mut self, key: Key, interrupted: bool) -> (State, bool) {
        match self.map.entry(key) {
            Entry::Occupied(entry) => (entry.get().state, false),
            Entry::Vacant(entry) => {
                let key = entry.key().clone();
                entry.insert(Sub {
                    state: State::Waiting,
                    interrupted,
                    solo: false,
                });
                if let Some(node) = &key.2 {
                    *self.local_nodes.entry(Arc::clone(node)).or_default() += 1;
                }
                self.waiting.insert(key);
                (State::Waiting, true)
            }
        }
    }

    pub(super) fn remove(&mut self, key: &Key) -> Option<Sub> {
        let sub = self.map.remove(key)?;
        self.unindex_state(key, sub.state);
        if let Some(node) = &key.2 {
            if let Entry::Occupied(mut count) = self.local_nodes.entry(Arc::clone(node)) {
                *count.get_mut() -= 1;
                if *count.get() == 0 {
                    count.remove();
                }
            }
        }
        Some(sub)
    }

    /// Moves `key`'s subscription, if there is one, to `state`.
    pub(super) fn set_state(&mut self, key: &Key, state: State) {
        let Some(sub) = self.map.get_mut(key) else {
            return;
        };
        let old = std::mem::replace(&mut sub.state, state);
        if old == state {
            return;
        }
        self.unindex_state(key, old);
        match state {
            State::Waiting => {
                self.waiting.insert(key.clone());
            }
            State::Pending(id) | State::Active(id) => *self.per_link.entry(id).or_default() += 1,
        }
    }

    fn unindex_state(&mut self, key: &Key, state: State) {
        match state {
            State::Waiting => {
                self.waiting.remove(key);
            }
            State::Pending(id) | State::Active(id) => {
                if let Entry::Occupied(mut count) = self.per_link.entry(id) {
                    *count.get_mut() -= 1;
                    if *count.get() == 0 {
                        count.remove();
                    }
                }
            }
        }
    }

    /// The subscriptions waiting to be sent.
    pub(super) fn waiting(&self) -> impl Iterator<Item = &Key> {
        self.waiting.iter()
    }

    pub(super) fn any_waiting(&self) -> bool {
        !self.waiting.is_empty()
    }

    /// Gives back the room of the waiting set once most of it is empty: after tens of
    /// thousands waited at once (a first subscribe, a lost link), each resync would
    /// otherwise walk that many empty places to find the few that wait.
    pub(super) fn shrink(&mut self) {
        if self.waiting.capacity() > 4 * self.waiting.len() + 1024 {
            self.waiting.shrink_to_fit();
        }
    }

    /// Whether link `id` carries a subscription, pending or active.
    pub(super) fn carries(&self, id: u64) -> bool {
        self.per_link.contains_key(&id)
    }

    /// The nodes some node-local subscription is made on (or waits for).
    pub(super) fn local_nodes(&self) -> impl Iterator<Item = &Arc<str>> {
        self.local_nodes.keys()
    }

    /// The keys of `channel`'s subscriptions of `kind`: one, or one per node for a
    /// node-local channel.
    pub(super) fn keys_of(&self, kind: Kind, channel: &Bytes, node_local: bool) -> Vec<Key> {
        let candidates: Vec<Key> = if node_local {
            self.local_nodes()
                .map(|node| (kind, channel.clone(), Some(Arc::clone(node))))
                .collect()
        } else {
            vec![(kind, channel.clone(), None)]
        };
        candidates
            .into_iter()
            .filter(|key| self.map.contains_key(key))
            .collect()
    }
}

/// A caller of `subscribe`/`unsubscribe` waiting for confirmations.
#[derive(Debug)]
struct Waiter {
    /// Confirmations still to come.
    left: usize,
    reply: oneshot::Sender<Result<()>>,
}

/// The callers waiting for confirmations, found by the confirmation.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    next_id: u64,
    by_id: HashMap<u64, Waiter>,
    /// Who waits for each confirmation. An id whose caller is gone (answered, failed,
    /// or gave up) may stay until the confirmation comes or [`Waiters::prune`] runs.
    by_key: HashMap<Confirmation, Vec<u64>>,
}

impl Waiters {
    /// Answers `reply` once every one of `keys` is confirmed; at once if there is none.
    pub(super) fn wait(&mut self, keys: HashSet<Confirmation>, reply: oneshot::Sender<Result<()>>) {
        if keys.is_empty() {
            let _ = reply.send(Ok(()));
            return;
        }
        self.next_id += 1;
        let id = self.next_id;
        self.by_id.insert(
            id,
            Waiter {
                left: keys.len(),
                reply,
            },
        );
        for key in keys {
            self.by_key.entry(key).or_default().push(id);
        }
    }

    /// `key` is confirmed: callers waiting only for it are answered.
    pub(super) fn resolve(&mut self, key: &Confirmation) {
        let Some(ids) = self.by_key.remove(key) else {
            return;
        };
        for id in ids {
            let Entry::Occupied(mut waiter) = self.by_id.entry(id) else {
                continue;
            };
            waiter.get_mut().left -= 1;
            if waiter.get().left == 0 || waiter.get().reply.is_closed() {
                let _ = waiter.remove().reply.send(Ok(()));
            }
        }
    }

    /// `key` failed for good: the callers waiting for it get `error`. Returns whether one
    /// was still there to hear it (a caller whose call timed out is not).
    pub(super) fn fail(&mut self, key: &Confirmation, error: &Error) -> bool {
        let mut told = false;
        for id in self.by_key.remove(key).unwrap_or_default() {
            if let Some(waiter) = self.by_id.remove(&id) {
                told |= waiter.reply.send(Err(error.clone())).is_ok();
            }
        }
        told
    }

    /// Whether a caller still waits for `key`.
    pub(super) fn awaited(&self, key: &Confirmation) -> bool {
        self.by_key.get(key).is_some_and(|ids| {
            ids.iter()
                .any(|id| self.by_id.get(id).is_some_and(|w| !w.reply.is_closed()))
        })
    }

    /// Forgets callers that gave up, and the confirmations only they waited for.
    pub(super) fn prune(&mut self) {
        self.by_id.retain(|_, w| !w.reply.is_closed());
        let by_id = &self.by_id;
        self.by_key.retain(|_, ids| {
            ids.retain(|id| by_id.contains_key(id));
            !ids.is_empty()
        });
    }

    /// Answers every caller still waiting with `error`.
    pub(super) fn fail_all(&mut self, error: &Error) {
        self.by_key.clear();
        for (_, waiter) in self.by_id.drain() {
            let _ = waiter.reply.send(Err(error.clone()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(channel: &'static str, node: Option<&str>) -> Key {
        (
            Kind::Channel,
            Bytes::from_static(channel.as_bytes()),
            node.map(Arc::from),
        )
    }

    /// The indexes, recomputed from the table.
    fn check_indexes(subs: &Subs) {
        let waiting: HashSet<Key> = subs
            .map
            .iter()
            .filter(|(_, s)| s.state == State::Waiting)
            .map(|(k, _)| k.clone())
            .collect();
        assert_eq!(subs.waiting, waiting);
        let mut per_link: HashMap<u64, usize> = HashMap::new();
        let mut local_nodes: HashMap<Arc<str>, usize> = HashMap::new();
        for (k, s) in &subs.map {
            if let Some(id) = s.state.link() {
                *per_link.entry(id).or_default() += 1;
            }
            if let Some(node) = &k.2 {
                *local_nodes.entry(Arc::clone(node)).or_default() += 1;
            }
        }
        assert_eq!(subs.per_link, per_link);
        assert_eq!(subs.local_nodes, local_nodes);
    }

    #[test]
    fn the_indexes_follow_every_change_of_the_table() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut subs = Subs::default();
        let keys: Vec<Key> = [
            ("a", None),
            ("b", None),
            ("c", Some("n1")),
            ("c", Some("n2")),
            ("d", Some("n1")),
        ]
        .into_iter()
        .map(|(c, n)| key(c, n))
        .collect();
        for _ in 0..2000 {
            let k = &keys[rng.usize(..keys.len())];
            match rng.u8(..5) {
                0 => {
                    let existed = subs.contains(k);
                    let (state, added) = subs.ask(k.clone(), false);
                    assert_eq!(added, !existed);
                    assert_eq!(state, subs.get(k).unwrap().state());
                }
                1 => {
                    let existed = subs.contains(k);
                    assert_eq!(subs.remove(k).is_some(), existed);
                }
                2 => subs.set_state(k, State::Waiting),
                3 => subs.set_state(k, State::Pending(rng.u64(1..3))),
                _ => subs.set_state(k, State::Active(rng.u64(1..3))),
            }
            check_indexes(&subs);
            for id in 1..3 {
                let carried = subs.iter().any(|(_, s)| s.state.link() == Some(id));
                assert_eq!(subs.carries(id), carried);
            }
        }
        // Each key was added at some point: the walk went through every state.
        subs.ask(keys[2].clone(), false);
        subs.ask(keys[3].clone(), false);
        let mut found = subs.keys_of(Kind::Channel, &keys[2].1, true);
        found.sort_by(|a, b| a.2.cmp(&b.2));
        assert_eq!(found, vec![keys[2].clone(), keys[3].clone()]);
        assert_eq!(
            subs.keys_of(Kind::Pattern, &keys[2].1, true),
            Vec::<Key>::new()
        );
        subs.ask(keys[0].clone(), false);
        assert_eq!(
            subs.keys_of(Kind::Channel, &keys[0].1, false),
            vec![keys[0].clone()]
        );
    }

    #[test]
    fn a_caller_is_answered_once_all_its_confirmations_came_or_one_failed() {
        let mut waiters = Waiters::default();
        let (a, b, c) = (key("a", None), key("b", None), key("c", None));
        let (tx1, mut rx1) = oneshot::channel();
        waiters.wait([(true, a.clone()), (true, b.clone())].into(), tx1);
        let (tx2, mut rx2) = oneshot::channel();
        waiters.wait([(true, b.clone()), (true, c.clone())].into(), tx2);
        let (tx3, mut rx3) = oneshot::channel();
        waiters.wait(HashSet::new(), tx3);
        assert!(matches!(rx3.try_recv(), Ok(Ok(()))), "nothing to wait for");

        waiters.resolve(&(true, b.clone()));
        assert!(rx1.try_recv().is_err() && rx2.try_recv().is_err());
        assert!(waiters.awaited(&(true, a.clone())));
        assert!(!waiters.awaited(&(false, a.clone())));
        waiters.resolve(&(true, a.clone()));
        assert!(matches!(rx1.try_recv(), Ok(Ok(()))));
        assert!(!waiters.awaited(&(true, a.clone())));

        assert!(waiters.fail(
            &(true, c.clone()),
            &Error::Timeout {
                may_have_executed: true
            }
        ));
        assert!(matches!(rx2.try_recv(), Ok(Err(Error::Timeout { .. }))));
        assert!(
            !waiters.fail(
                &(true, c.clone()),
                &Error::Timeout {
                    may_have_executed: true
                }
            ),
            "nobody left"
        );
        assert!(waiters.by_id.is_empty() && waiters.by_key.is_empty());
    }

    #[test]
    fn a_caller_that_gave_up_is_not_awaited_and_is_pruned() {
        let mut waiters = Waiters::default();
        let (a, b) = (key("a", None), key("b", None));
        let (tx, rx) = oneshot::channel();
        waiters.wait([(true, a.clone()), (true, b.clone())].into(), tx);
        drop(rx);
        assert!(!waiters.awaited(&(true, a.clone())));
        assert!(!waiters.fail(
            &(true, a.clone()),
            &Error::Timeout {
                may_have_executed: true
            }
        ));
        let (tx, rx) = oneshot::channel();
        waiters.wait([(true, b.clone())].into(), tx);
        drop(rx);
        waiters.prune();
        assert!(waiters.by_id.is_empty() && waiters.by_key.is_empty());
    }
}
