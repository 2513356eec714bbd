//! Deadlines from durations the user chose, which may be as large as `Duration::MAX`
//! (`response_timeout`, `Durability::timeout`, a retry backoff): such a deadline lies
//! a century ahead instead of overflowing the clock, which would panic.

use std::time::Duration;

use tokio::time::Instant;

/// Longer than any request or connection lives, and far below where `Instant` overflows
/// (or a server's millisecond timeouts: `WAIT` takes up to `i64::MAX` minus the time).
pub(crate) const FAR: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// `start + duration`, with `duration` capped at a century.
pub(crate) fn after(start: Instant, duration: Duration) -> Instant {
    start + duration.min(FAR)
}

/// [`after`] from now.
pub(crate) fn from_now(duration: Duration) -> Instant {
    after(Instant::now(), duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_durations_give_a_far_deadline_instead_of_a_panic() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        let far = after(now, Duration::MAX);
        assert!(far >= now + Duration::from_secs(99 * 365 * 24 * 3600));
        // A far deadline can be pushed further (a blocking command's block time).
        assert!(after(far, Duration::MAX) > far);
    }
}
