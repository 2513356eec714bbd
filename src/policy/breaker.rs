//! The per-node circuit breaker, as a state machine that is handed the time.
//!
//! Closed: requests flow; the breaker counts outcomes. It opens after
//! `consecutive_failures` failures in a row, or when at least `min_requests` requests in
//! the current `window` saw a failure rate of `failure_rate` or more. Open: every request
//! fails fast until `open_for` has passed. Half-open: one probe request is let through;
//! its success closes the breaker, its failure opens it again.
//!
//! Call order: [`Breaker::allow`] before each request; then at most one of
//! [`Breaker::on_success`] or [`Breaker::on_failure`] for each request that was allowed.
//! Server error replies are successes: the node answered. A shared connection that
//! fails is one failure, however many requests it carried: the caller reports it for
//! the first of them only.

use std::time::{Duration, Instant};

/// When a node's breaker opens and for how long.
///
/// Failures are timeouts, failed connects, connections lost and replies that are not
/// RESP. A timeout counts only when the node answered no request in time on the
/// request's connection since it was sent: one that waited behind slow requests, or
/// whose handle's deadline is shorter than the node's pace, met a node that works.
/// A shared connection that is lost counts once, however many requests were in
/// flight on it: a reset connection (a server-side `CLIENT KILL`, an idle timeout, a
/// proxy restarting) does not open a healthy node's breaker. The failure rate therefore
/// sees a node that keeps resetting connections as one failure per connection, against
/// the requests answered in between; one that drops every connection before answering
/// opens after `consecutive_failures` of them. A failed connect counts once too, however
/// many requests waited on it or were answered its error during the reconnect backoff
/// that follows (about 100 ms after the first failure, doubling to 5 s): a node that
/// refuses connections opens its breaker after `consecutive_failures` attempts, not
/// after that many requests met one refusal.
///
/// ```
/// use std::time::Duration;
/// use redcluster::{CircuitBreakerConfig, ClusterClient};
/// let breaker = CircuitBreakerConfig::default()
///     .consecutive_failures(3)
///     .open_for(Duration::from_millis(500));
/// assert_eq!(breaker.failure_rate, 0.5); // the default
/// let builder = ClusterClient::builder().nodes(["127.0.0.1:7000"]).circuit_breaker(breaker);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CircuitBreakerConfig {
    /// Failures in a row that open the breaker. Default 5.
    pub consecutive_failures: u32,
    /// Share of failed requests in a window that opens the breaker. Default 0.5.
    pub failure_rate: f64,
    /// Requests a window needs before its failure rate counts. Default 20.
    pub min_requests: u32,
    /// Length of the failure-rate window. Default 10 s. Successes are counted only while
    /// the current window holds a failure, which keeps the breaker off a healthy node's
    /// request path: a window that counts begins with a failure and counts the requests
    /// after it; the first request after `window` has passed begins the next window.
    pub window: Duration,
    /// How long an open breaker fails requests before it lets a probe through.
    /// Default 1 s.
    pub open_for: Duration,
    /// Whether breakers are used at all. Default true.
    pub enabled: bool,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        CircuitBreakerConfig {
            consecutive_failures: 5,
            failure_rate: 0.5,
            min_requests: 20,
            window: Duration::from_secs(10),
            open_for: Duration::from_secs(1),
            enabled: true,
        }
    }
}

impl CircuitBreakerConfig {
    /// Sets [`Self::consecutive_failures`] (at least 1).
    ///
    /// ```
    /// let breaker = redcluster::CircuitBreakerConfig::default().consecutive_failures(0);
    /// assert_eq!(breaker.consecutive_failures, 1);
    /// ```
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.consecutive_failures = n.max(1);
        self
    }

    /// Sets [`Self::failure_rate`] and [`Self::min_requests`].
    ///
    /// ```
    /// // Open when a quarter of at least 100 requests in the window failed.
    /// let breaker = redcluster::CircuitBreakerConfig::default().failure_rate(0.25, 100);
    /// assert_eq!((breaker.failure_rate, breaker.min_requests), (0.25, 100));
    /// ```
    pub fn failure_rate(mut self, rate: f64, min_requests: u32) -> Self {
        self.failure_rate = rate.clamp(0.0, 1.0);
        self.min_requests = min_requests.max(1);
        self
    }

    /// Sets [`Self::window`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let breaker = redcluster::CircuitBreakerConfig::default().window(Duration::from_secs(30));
    /// assert_eq!(breaker.window, Duration::from_secs(30));
    /// ```
    pub fn window(mut self, window: Duration) -> Self {
        self.window = window;
        self
    }

    /// Sets [`Self::open_for`].
    ///
    /// ```
    /// use std::time::Duration;
    /// let breaker = redcluster::CircuitBreakerConfig::default().open_for(Duration::from_secs(5));
    /// assert_eq!(breaker.open_for, Duration::from_secs(5));
    /// ```
    pub fn open_for(mut self, open_for: Duration) -> Self {
        self.open_for = open_for;
        self
    }

    /// Turns breakers off: every request is sent, whatever happened before.
    ///
    /// ```
    /// assert!(!redcluster::CircuitBreakerConfig::default().disabled().enabled);
    /// ```
    pub fn disabled(mut self) -> Self {
        self.enabled = false;
        self
    }
}

/// The breaker's state, as reported in health snapshots.
///
/// ```no_run
/// # async fn demo(client: redcluster::ClusterClient) -> redcluster::Result<()> {
/// use redcluster::BreakerState;
/// for node in client.health().nodes {
///     if node.breaker == BreakerState::Open {
///         println!("{} fails fast", node.addr);
///     }
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BreakerState {
    /// Requests flow.
    Closed,
    /// Requests fail fast with [`crate::Error::CircuitOpen`].
    Open,
    /// One probe request is allowed to test the node.
    HalfOpen,
}

/// What [`Breaker::allow`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    Allowed,
    /// Allowed as the half-open probe.
    Probe,
    Rejected,
}

/// A state change worth reporting (and, when opening, a reason to refresh topology).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transition {
    Opened,
    HalfOpened,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open {
        until: Instant,
    },
    /// `probe` is when the current probe was let through; a probe whose outcome never
    /// came back (its caller gave up) is replaced once it has surely ended: after
    /// `open_for` and the probe timeout, whichever is longer. Replacing it sooner would
    /// let a stream of requests through to a node that still does not answer.
    HalfOpen {
        probe: Option<Instant>,
    },
}

/// One node's breaker.
#[derive(Debug, Clone)]
pub(crate) struct Breaker {
    config: CircuitBreakerConfig,
    /// How long a probe may hold the half-open breaker: the request timeout of the
    /// client, at most [`MAX_PROBE_WAIT`].
    probe_timeout: Duration,
    state: State,
    consecutive: u32,
    window_start: Option<Instant>,
    window_requests: u32,
    window_failures: u32,
}

/// The longest the response timeout keeps other requests out while a probe has no
/// outcome (`open_for` still applies, if longer). A probe's outcome can go missing (its
/// caller dropped the request), and with a long or unbounded response timeout the node
/// would then refuse everything for that long. A probe still running past this only
/// lets a second one in.
pub(crate) const MAX_PROBE_WAIT: Duration = Duration::from_secs(10);

impl Breaker {
    pub(crate) fn new(config: CircuitBreakerConfig, probe_timeout: Duration) -> Self {
        Breaker {
            config,
            probe_timeout: probe_timeout.min(MAX_PROBE_WAIT),
            state: State::Closed,
            consecutive: 0,
            window_start: None,
            window_requests: 0,
            window_failures: 0,
        }
    }

    /// Closed with no failure in the current window: nothing to count until one comes.
    pub(crate) fn is_quiet(&self) -> bool {
        self.state == State::Closed && self.consecutive == 0 && self.window_failures == 0
    }

    pub(crate) fn state(&self) -> BreakerState {
        match self.state {
            State::Closed => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Whether a request may go to the node now; may move Open to HalfOpen.
    pub(crate) fn allow(&mut self, now: Instant) -> (Admission, Option<Transition>) {
        if !self.config.enabled {
            return (Admission::Allowed, None);
        }
        if self.rejects_at(now) {
            return (Admission::Rejected, None);
        }
        match self.state {
            State::Closed => (Admission::Allowed, None),
            State::Open { .. } => {
                self.state = State::HalfOpen { probe: Some(now) };
                (Admission::Probe, Some(Transition::HalfOpened))
            }
            State::HalfOpen { .. } => {
                self.state = State::HalfOpen { probe: Some(now) };
                (Admission::Probe, None)
            }
        }
    }

    /// Whether [`Breaker::allow`] would reject a request at `now`, without its side
    /// effects (letting a probe through): open, or half-open with its probe out.
    pub(crate) fn rejects_at(&self, now: Instant) -> bool {
        if !self.config.enabled {
            return false;
        }
        match self.state {
            State::Closed => false,
            State::Open { until } => now < until,
            State::HalfOpen {
                probe: Some(started),
            } => now.duration_since(started) < self.config.open_for.max(self.probe_timeout),
            State::HalfOpen { probe: None } => false,
        }
    }

    /// Frees the half-open breaker for the next probe when the one let through at
    /// `started` ended with nothing to say about the node (its request was refused
    /// before it was sent, a certificate that did not verify, its caller gave up):
    /// otherwise every request would be rejected until the probe timed out. Not a probe
    /// after it, nor one whose outcome was recorded; whether it was released.
    pub(crate) fn release_probe_of(&mut self, started: Instant) -> bool {
        if self.state
            == (State::HalfOpen {
                probe: Some(started),
            })
        {
            self.state = State::HalfOpen { probe: None };
            return true;
        }
        false
    }

    pub(crate) fn on_success(&mut self, now: Instant) -> Option<Transition> {
        self.consecutive = 0;
        self.count(now, false);
        match self.state {
            State::HalfOpen { .. } => {
                self.state = State::Closed;
                self.reset_window(now);
                Some(Transition::Closed)
            }
            _ => None,
        }
    }

    pub(crate) fn on_failure(&mut self, now: Instant) -> Option<Transition> {
        if !self.config.enabled {
            return None;
        }
        self.consecutive = self.consecutive.saturating_add(1);
        self.count(now, true);
        let open = match self.state {
            State::HalfOpen { .. } => true,
            State::Open { .. } => false,
            State::Closed => {
                let rate_exceeded = self.window_requests >= self.config.min_requests
                    && f64::from(self.window_failures)
                        >= self.config.failure_rate * f64::from(self.window_requests);
                self.consecutive >= self.config.consecutive_failures || rate_exceeded
            }
        };
        if open {
            self.state = State::Open {
                // `open_for(Duration::MAX)`, "stay open", must not overflow the clock.
                until: now + self.config.open_for.min(crate::deadline::FAR),
            };
            self.reset_window(now);
            return Some(Transition::Opened);
        }
        None
    }

    fn count(&mut self, now: Instant, failed: bool) {
        match self.window_start {
            Some(start) if now.duration_since(start) < self.config.window => {}
            _ => self.reset_window(now),
        }
        self.window_requests = self.window_requests.saturating_add(1);
        if failed {
            self.window_failures = self.window_failures.saturating_add(1);
        }
    }

    fn reset_window(&mut self, now: Instant) {
        self.window_start = Some(now);
        self.window_requests = 0;
        self.window_failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

    fn config() -> CircuitBreakerConfig {
        CircuitBreakerConfig::default()
            .consecutive_failures(3)
            .failure_rate(0.5, 10)
            .open_for(Duration::from_secs(1))
    }

    #[test]
    fn opens_after_consecutive_failures_and_fails_fast() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), PROBE_TIMEOUT);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.on_failure(t0), Some(Transition::Opened));
        assert_eq!(b.state(), BreakerState::Open);
        assert_eq!(
            b.allow(t0 + Duration::from_millis(999)).0,
            Admission::Rejected
        );
    }

    #[test]
    fn a_success_resets_the_run_of_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), PROBE_TIMEOUT);
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_success(t0);
        assert_eq!(b.on_failure(t0), None);
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn opens_on_failure_rate_over_a_window() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config().consecutive_failures(100), PROBE_TIMEOUT);
        let mut opened = None;
        for i in 0..20 {
            // Alternate: 50 % failures, never 3 in a row.
            let t = t0 + Duration::from_millis(i);
            opened = if i % 2 == 0 {
                b.on_success(t)
            } else {
                b.on_failure(t)
            }
            .or(opened);
        }
        assert_eq!(opened, Some(Transition::Opened));
        // The same rate spread over many windows never reaches min_requests in one.
        let mut b = Breaker::new(
            config()
                .consecutive_failures(100)
                .window(Duration::from_millis(5)),
            PROBE_TIMEOUT,
        );
        for i in 0..100 {
            let t = t0 + Duration::from_millis(i);
            let tr = if i % 2 == 0 {
                b.on_success(t)
            } else {
                b.on_failure(t)
            };
            assert_eq!(tr, None);
        }
    }

    #[test]
    fn half_open_probe_closes_or_reopens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), PROBE_TIMEOUT);
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            b.allow(later),
            (Admission::Probe, Some(Transition::HalfOpened))
        );
        assert_eq!(b.allow(later).0, Admission::Rejected, "one probe at a time");
        // A probe that never reports back is replaced once it has surely ended: after
        // `open_for` (1 s) and the probe timeout (2 s).
        assert_eq!(
            b.allow(later + Duration::from_secs(1)).0,
            Admission::Rejected
        );
        assert_eq!(b.allow(later + Duration::from_secs(2)).0, Admission::Probe);
        assert_eq!(b.on_failure(later), Some(Transition::Opened));
        let again = later + Duration::from_secs(1);
        assert_eq!(b.allow(again).0, Admission::Probe);
        assert_eq!(b.on_success(again), Some(Transition::Closed));
        assert_eq!(b.allow(again).0, Admission::Allowed);
    }

    #[test]
    fn a_probe_without_an_outcome_frees_the_breaker_when_released_or_after_at_most_10_s() {
        let t0 = Instant::now();
        // An unbounded response timeout: the probe's wait is still capped.
        let mut b = Breaker::new(config(), Duration::MAX);
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let later = t0 + Duration::from_secs(1);
        assert_eq!(b.allow(later).0, Admission::Probe);
        assert_eq!(
            b.allow(later + Duration::from_secs(9)).0,
            Admission::Rejected
        );
        assert_eq!(b.allow(later + MAX_PROBE_WAIT).0, Admission::Probe);
        // The probe's request was refused unsent: the next request probes at once.
        let again = later + MAX_PROBE_WAIT;
        assert!(b.release_probe_of(again));
        assert_eq!(b.allow(again).0, Admission::Probe);
        assert_eq!(b.allow(again).0, Admission::Rejected, "still one at a time");
        // Releasing outside a probe changes nothing.
        let mut closed = Breaker::new(config(), PROBE_TIMEOUT);
        assert!(!closed.release_probe_of(t0));
        assert_eq!(closed.allow(t0), (Admission::Allowed, None));
    }

    #[test]
    fn a_dropped_probe_frees_the_breaker_only_while_it_is_the_probe_out() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config(), PROBE_TIMEOUT);
        for _ in 0..3 {
            b.on_failure(t0);
        }
        let first = t0 + Duration::from_secs(1);
        assert_eq!(b.allow(first).0, Admission::Probe);
        // Timed out and replaced: the first one's release leaves the second out.
        let second = first + Duration::from_secs(2);
        assert_eq!(b.allow(second).0, Admission::Probe);
        assert!(!b.release_probe_of(first));
        assert_eq!(b.allow(second).0, Admission::Rejected);
        assert!(b.release_probe_of(second));
        assert_eq!(b.allow(second).0, Admission::Probe);
        // A probe whose outcome was recorded is no longer out.
        assert_eq!(b.on_success(second), Some(Transition::Closed));
        assert!(!b.release_probe_of(second));
        assert_eq!(b.state(), BreakerState::Closed);
    }

    #[test]
    fn disabled_breakers_always_allow() {
        let t0 = Instant::now();
        let mut b = Breaker::new(config().disabled(), PROBE_TIMEOUT);
        for _ in 0..10 {
            assert_eq!(b.on_failure(t0), None);
        }
        assert_eq!(b.allow(t0).0, Admission::Allowed);
    }
}
