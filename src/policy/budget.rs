//! A retry budget shared by all requests of a client, so that a failing cluster does not
//! get a storm of retries on top of its normal load.
//!
//! Every request earns `ratio` of a retry (each command of a pipeline is one, a
//! transaction is one); time earns `per_second`; the balance never
//! exceeds `max`. A retry spends one. With the defaults, retries can add at most 20 %
//! to the request rate, plus 100 per second, in bursts of up to 1000.

use std::time::{Duration, Instant};

/// How many retries a client may spend.
///
/// ```
/// use redcluster::{ClusterClient, RetryBudgetConfig};
/// // Retries may add 10 % to the load, plus 10 per second, in bursts of up to 100.
/// let budget = RetryBudgetConfig::new(0.1, 10.0, 100.0);
/// assert_eq!(RetryBudgetConfig::default().ratio, 0.2);
/// let builder = ClusterClient::builder().nodes(["127.0.0.1:7000"]).retry_budget(budget);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct RetryBudgetConfig {
    /// Retries earned per request sent. Default 0.2.
    pub ratio: f64,
    /// Retries earned per second regardless of traffic. Default 100.
    pub per_second: f64,
    /// Most retries saved up. Default 1000.
    pub max: f64,
}

impl Default for RetryBudgetConfig {
    fn default() -> Self {
        RetryBudgetConfig {
            ratio: 0.2,
            per_second: 100.0,
            max: 1000.0,
        }
    }
}

impl RetryBudgetConfig {
    /// Sets all three numbers (negative values count as zero).
    ///
    /// ```
    /// use redcluster::RetryBudgetConfig;
    /// let no_retries = RetryBudgetConfig::new(0.0, 0.0, 0.0);
    /// assert_eq!(no_retries.max, 0.0);
    /// assert_eq!(RetryBudgetConfig::new(-1.0, 5.0, 50.0).ratio, 0.0); // negative counts as zero
    /// ```
    pub fn new(ratio: f64, per_second: f64, max: f64) -> Self {
        RetryBudgetConfig {
            ratio: ratio.max(0.0),
            per_second: per_second.max(0.0),
            max: max.max(0.0),
        }
    }
}

/// The budget's balance. Requests are counted elsewhere (an atomic counter) and handed
/// in when a retry asks, so sending a request takes no lock.
#[derive(Debug, Clone)]
pub(crate) struct RetryBudget {
    config: RetryBudgetConfig,
    balance: f64,
    requests_seen: u64,
    last: Option<Instant>,
}

impl RetryBudget {
    pub(crate) fn new(config: RetryBudgetConfig) -> Self {
        RetryBudget {
            config,
            // Start full: a client that meets a failure at once may still retry.
            balance: config.max,
            requests_seen: 0,
            last: None,
        }
    }

    /// Spends one retry if the budget allows; `requests` is the total sent so far.
    pub(crate) fn try_spend(&mut self, requests: u64, now: Instant) -> bool {
        let new_requests = requests.saturating_sub(self.requests_seen);
        self.requests_seen = self.requests_seen.max(requests);
        let elapsed = self
            .last
            .map_or(Duration::ZERO, |l| now.saturating_duration_since(l));
        self.last = Some(now);
        self.balance = (self.balance
            + new_requests as f64 * self.config.ratio
            + elapsed.as_secs_f64() * self.config.per_second)
            .min(self.config.max);
        if self.balance >= 1.0 {
            self.balance -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spends_what_requests_and_time_earn() {
        let t0 = Instant::now();
        let mut b = RetryBudget::new(RetryBudgetConfig::new(0.5, 10.0, 3.0));
        // Starts full: three retries, then nothing.
        assert!(b.try_spend(0, t0));
        assert!(b.try_spend(0, t0));
        assert!(b.try_spend(0, t0));
        assert!(!b.try_spend(0, t0));
        // Two requests earn one retry.
        assert!(b.try_spend(2, t0));
        assert!(!b.try_spend(2, t0));
        // A tenth of a second earns one more.
        assert!(b.try_spend(2, t0 + Duration::from_millis(100)));
        assert!(!b.try_spend(2, t0 + Duration::from_millis(100)));
        // Never more than max, however long it waits.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..3).all(|_| b.try_spend(2, later)));
        assert!(!b.try_spend(2, later));
    }
}
