//! Deadlines from durations that the configuration or the command line may make arbitrarily
//! long: an `Instant` plus too long a duration overflows (and panics).

use std::time::Duration;

use tokio::time::Instant;

/// About thirty years: a longer wait is this long.
pub const FOREVER: Duration = Duration::from_secs(30 * 365 * 24 * 60 * 60);

/// The instant `d` from now, `d` capped at [`FOREVER`].
pub fn deadline_in(d: Duration) -> Instant {
    Instant::now() + d.min(FOREVER)
}

/// `d` × `factor` (a backoff step), capped at `max`; never panics (a factor that is huge, or
/// not a number, gives `max`).
pub fn scaled(d: Duration, factor: f64, max: Duration) -> Duration {
    Duration::try_from_secs_f64(d.as_secs_f64() * factor)
        .unwrap_or(max)
        .min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_duration_overflows_a_deadline() {
        let before = Instant::now();
        assert!(deadline_in(Duration::MAX) >= before + FOREVER);
        assert!(deadline_in(Duration::from_secs(1)) < before + Duration::from_secs(2));
    }

    #[test]
    fn backoff_steps_are_capped() {
        let max = Duration::from_secs(60);
        assert_eq!(
            scaled(Duration::from_secs(2), 2.0, max),
            Duration::from_secs(4)
        );
        assert_eq!(scaled(Duration::from_secs(2), 1e300, max), max);
        assert_eq!(scaled(Duration::MAX, 2.0, max), max);
        assert_eq!(scaled(Duration::from_secs(2), f64::NAN, max), max);
    }
}
