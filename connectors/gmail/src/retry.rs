//! Truncated exponential backoff with jitter (google-apis.md §5.3).

use std::time::Duration;

use rand::Rng as _;

/// How often and how long to wait between attempts of one Google call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total (first try included).
    pub max_attempts: u32,
    /// Wait before the second attempt; doubled for each further one. Also the jitter range.
    pub base: Duration,
    /// Cap of the exponential part.
    pub max_delay: Duration,
    /// Cap of a server-sent `Retry-After`.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self::google()
    }
}

impl RetryPolicy {
    /// Google's recommendation: 1 s, 2 s, 4 s … capped at 32 s, plus up to 1 s of jitter,
    /// 8 attempts (about 1.5 minutes of patience per call).
    pub const fn google() -> Self {
        Self {
            max_attempts: 8,
            base: Duration::from_secs(1),
            max_delay: Duration::from_secs(32),
            max_retry_after: Duration::from_secs(120),
        }
    }

    /// Millisecond delays for tests.
    pub const fn fast() -> Self {
        Self {
            max_attempts: 8,
            base: Duration::from_millis(5),
            max_delay: Duration::from_millis(100),
            max_retry_after: Duration::from_millis(200),
        }
    }

    /// Exponential part of the wait before attempt `attempt + 1` (0-based `attempt`).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.max_delay)
    }

    /// The wait before the next attempt: backoff plus jitter, or the server's `Retry-After` when
    /// that is longer (capped).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let jitter_ms = u64::try_from(self.base.as_millis()).unwrap_or(u64::MAX);
        let jitter = Duration::from_millis(rand::rng().random_range(0..=jitter_ms));
        let computed = self.backoff(attempt) + jitter;
        match retry_after {
            Some(ra) => computed.max(ra.min(self.max_retry_after)),
            None => computed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_caps() {
        let p = RetryPolicy::google();
        let secs: Vec<u64> = (0..8).map(|a| p.backoff(a).as_secs()).collect();
        assert_eq!(secs, vec![1, 2, 4, 8, 16, 32, 32, 32]);
        assert_eq!(p.backoff(500), Duration::from_secs(32));
    }

    #[test]
    fn delay_has_bounded_jitter_and_honours_retry_after() {
        let p = RetryPolicy::google();
        for attempt in 0..6 {
            let d = p.delay(attempt, None);
            assert!(d >= p.backoff(attempt) && d <= p.backoff(attempt) + p.base);
        }
        let d = p.delay(0, Some(Duration::from_secs(20)));
        assert_eq!(d, Duration::from_secs(20));
        let capped = p.delay(0, Some(Duration::from_secs(3600)));
        assert_eq!(capped, p.max_retry_after);
    }
}
