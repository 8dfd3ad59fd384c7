//! Per-mailbox Gmail quota, in quota units (google-apis.md §5.1): 15,000 units per user per
//! minute (250/s moving average). We spend at most [`DEFAULT_UNITS_PER_SECOND`] per mailbox.
//!
//! The pace adapts to Gmail's answers (additive increase, multiplicative decrease): a mailbox
//! whose quota is smaller than the standard one, or shared with other applications, answers
//! with rate limits again and again; each repeated rate-limit event cuts that mailbox's pace
//! by [`PACE_DECREASE`], and the pace grows back by [`PACE_RECOVERY_PER_SECOND`] of the full
//! rate per second while Gmail stays quiet. A lone rate limit (the one-second window's
//! boundary, a burst of one batch) does not slow the mailbox: its retry is enough, and
//! pausing on it cost more than it saved (`docs/benchmarks.md`, session 6).
//!
//! The same events shrink the mailbox's window: how many `messages.get` calls it may have in
//! flight, and so how many one batch request may hold (Gmail runs a batch's calls
//! concurrently and refuses more than a few per user at once, and charges a whole batch the
//! moment it arrives). Each cut halves the window (floor 1); it grows back by
//! [`WINDOW_RECOVERY_PER_SECOND`] calls per second. Gmail answers the concurrency limit, a
//! batch's burst and a rate that is too high with the same 429 `rateLimitExceeded`; what the
//! refused request was tells them apart: a refused batch of several calls shrinks the window
//! only, a refused single call (a batch of one included) also cuts the pace.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter, clock::Clock as _};
use tokio::time::Instant;

/// `users.getProfile`.
pub const UNITS_PROFILE: u32 = 1;
/// `users.messages.list`.
pub const UNITS_LIST: u32 = 5;
/// `users.messages.get`.
pub const UNITS_GET: u32 = 5;
/// `users.history.list`.
pub const UNITS_HISTORY: u32 = 2;
/// Sustained rate per mailbox: 98 % of Gmail's per-user limit of 250 units/s. Gmail's limit is
/// a moving average that tolerates short bursts; with the burst of 10 units a one-second window
/// can reach 255 units (2 % over), which a strict one-second window (the simulator's) answers
/// with a rare 429 that is retried. At 240 units/s (no window ever over 250) a 50-mailbox sync
/// reached 89.6 % of the quota ceiling instead of 92.6 % (`cargo xtask bench gmail`).
pub const DEFAULT_UNITS_PER_SECOND: u32 = 245;
/// Gmail's per-user limit: 15,000 units per minute.
pub const GMAIL_UNITS_PER_SECOND: u32 = 250;

/// Rate-limit answers of one mailbox closer together than this are one event (the parts of
/// one batch, the calls in flight when the window filled).
pub const PACE_EVENT_GAP: Duration = Duration::from_millis(250);
/// A rate-limit event this soon after the previous one is a repeated one: the pace is cut.
pub const PACE_REPEAT_WINDOW: Duration = Duration::from_secs(5);
/// Factor applied to a mailbox's pace at each repeated rate-limit event.
pub const PACE_DECREASE: f64 = 0.7;
/// The pace never goes below this share of the configured rate.
pub const PACE_MIN: f64 = 0.1;
/// Share of the configured rate given back per second without rate limits.
pub const PACE_RECOVERY_PER_SECOND: f64 = 0.05;
/// `messages.get` calls a mailbox may have in flight at full pace (also the largest batch).
pub const WINDOW_MAX: usize = crate::sync::PER_MAILBOX_CONCURRENCY;
/// Factor applied to a mailbox's window at each repeated rate-limit event (rounded down, at
/// least 1).
pub const WINDOW_DECREASE: f64 = 0.5;
/// Calls given back to a mailbox's window per second without rate limits.
pub const WINDOW_RECOVERY_PER_SECOND: f64 = 0.25;
/// A call waiting for room in its mailbox's window looks again this often (the window also
/// grows with time, not only when calls end).
const WINDOW_RECHECK: Duration = Duration::from_millis(250);

/// The adaptive pace of one mailbox: the share of the configured rate it may spend, and how
/// many `messages.get` calls it may have in flight.
#[derive(Debug, Clone)]
struct Pace {
    factor: f64,
    /// Calls in flight allowed (its floor, at least 1, is what counts).
    window: f64,
    /// Calls in flight admitted through [`QuotaLimiter::admit`] while this entry exists.
    in_flight: usize,
    /// Woken when admitted calls end.
    released: Arc<Notify>,
    /// When `factor` and `window` were last brought up to date.
    updated: Instant,
    /// Start of the last rate-limit event.
    last_event: Option<Instant>,
}

impl Pace {
    fn new(now: Instant) -> Self {
        Self {
            factor: 1.0,
            window: WINDOW_MAX as f64,
            in_flight: 0,
            released: Arc::new(Notify::new()),
            updated: now,
            last_event: None,
        }
    }

    /// Gives back the pace and window earned since the last update.
    fn recover(&mut self, now: Instant) {
        let secs = now.saturating_duration_since(self.updated).as_secs_f64();
        self.factor = (self.factor + secs * PACE_RECOVERY_PER_SECOND).min(1.0);
        self.window = (self.window + secs * WINDOW_RECOVERY_PER_SECOND).min(WINDOW_MAX as f64);
        self.updated = now;
    }

    /// Calls in flight allowed now.
    fn calls(&self) -> usize {
        (self.window.floor() as usize).clamp(1, WINDOW_MAX)
    }

    /// Records a rate-limit answer to a request of `calls` calls (a batch's size, 1 for a
    /// plain call); true when it cut the window (and, for a single call, the pace).
    fn rate_limited(&mut self, now: Instant, calls: usize) -> bool {
        self.recover(now);
        match self.last_event.map(|t| now.saturating_duration_since(t)) {
            Some(since) if since < PACE_EVENT_GAP => false,
            Some(since) if since <= PACE_REPEAT_WINDOW => {
                if calls <= 1 {
                    self.factor = (self.factor * PACE_DECREASE).max(PACE_MIN);
                }
                self.window = (self.calls() as f64 * WINDOW_DECREASE).floor().max(1.0);
                self.last_event = Some(now);
                true
            }
            _ => {
                self.last_event = Some(now);
                false
            }
        }
    }

    /// Nothing left to remember: full pace and window, no call admitted through it, and no
    /// recent event.
    fn settled(&self, now: Instant) -> bool {
        self.factor >= 1.0
            && self.window >= WINDOW_MAX as f64
            && self.in_flight == 0
            && self
                .last_event
                .is_none_or(|t| now.saturating_duration_since(t) > PACE_REPEAT_WINDOW)
    }
}

/// Units charged to the limiter for a call of `units` at pace `factor` (a slower pace charges
/// more per call).
fn paced_units(units: u32, factor: f64) -> u32 {
    if factor >= 1.0 {
        units
    } else {
        (f64::from(units) / factor.max(PACE_MIN)).ceil() as u32
    }
}

/// A generic-cell-rate limiter per mailbox with a small burst (two `messages.get`, or 1/24 s of
/// quota when larger): at most `rate + burst` units in any one-second window (255 with the
/// default), times the mailbox's adaptive pace.
pub struct QuotaLimiter {
    limiter: DefaultKeyedRateLimiter<String>,
    rate: NonZeroU32,
    burst: NonZeroU32,
    /// Mailboxes whose pace is (or was recently) cut; absent = full pace.
    paces: Mutex<HashMap<String, Pace>>,
    /// `paces.len()`, read without the lock on every call.
    paced: AtomicUsize,
}

impl QuotaLimiter {
    pub fn new(units_per_second: u32) -> Self {
        let ups = NonZeroU32::new(units_per_second.max(1)).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new((ups.get() / 24).max(2 * UNITS_GET)).unwrap_or(NonZeroU32::MIN);
        Self {
            limiter: RateLimiter::keyed(Quota::per_second(ups).allow_burst(burst)),
            rate: ups,
            burst,
            paces: Mutex::new(HashMap::new()),
            paced: AtomicUsize::new(0),
        }
    }

    fn paces(&self) -> std::sync::MutexGuard<'_, HashMap<String, Pace>> {
        self.paces.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The share of the rate `key` may spend now (1.0 for nearly every call: no lock taken
    /// while no mailbox is slowed down).
    fn factor(&self, key: &str) -> f64 {
        if self.paced.load(Ordering::Relaxed) == 0 {
            return 1.0;
        }
        let now = Instant::now();
        let mut paces = self.paces();
        let Some(pace) = paces.get_mut(key) else {
            return 1.0;
        };
        pace.recover(now);
        let factor = pace.factor;
        if pace.settled(now) {
            paces.remove(key);
            self.paced.store(paces.len(), Ordering::Relaxed);
        }
        factor
    }

    /// Records a rate-limit answer (429, or 403 with a rate-limit reason) for `mailbox` to a
    /// request of `calls` calls; returns the mailbox's new pace and window when this answer
    /// cut them.
    pub fn rate_limited(&self, mailbox: &str, calls: usize) -> Option<(f64, usize)> {
        let now = Instant::now();
        let mut paces = self.paces();
        // Rate limits are rare: forget the mailboxes that are back at full pace here, so that
        // calls go back to the lock-free path once every mailbox has recovered.
        paces.retain(|_, pace| {
            pace.recover(now);
            !pace.settled(now)
        });
        let pace = paces
            .entry(mailbox.to_ascii_lowercase())
            .or_insert_with(|| Pace::new(now));
        let cut = pace
            .rate_limited(now, calls)
            .then(|| (pace.factor, pace.calls()));
        self.paced.store(paces.len(), Ordering::Relaxed);
        cut
    }

    /// The current pace of `mailbox` (1.0 = the configured rate).
    #[cfg(test)]
    fn pace(&self, mailbox: &str) -> f64 {
        self.factor(&mailbox.to_ascii_lowercase())
    }

    fn cost(&self, units: u32) -> NonZeroU32 {
        // A cost above the burst could never be granted: clamp it (only with tiny test quotas).
        NonZeroU32::new(units.clamp(1, self.burst.get())).unwrap_or(NonZeroU32::MIN)
    }

    /// Waits until `mailbox` may spend `units`.
    ///
    /// Sleeps on the Tokio timer rather than governor's `until_ready` (which runs its own
    /// `futures-timer` thread and wakes tasks across threads on every wait).
    pub async fn acquire(&self, mailbox: &str, units: u32) {
        let key = mailbox.to_ascii_lowercase();
        let factor = self.factor(&key);
        if factor >= 1.0 {
            self.acquire_n(&key, self.cost(units)).await;
            return;
        }
        // A slowed-down mailbox pays more units per call.
        self.acquire_pieces(&key, paced_units(units, factor)).await;
    }

    /// Spends `units` for `key` in pieces the burst can hold.
    async fn acquire_pieces(&self, key: &String, units: u32) {
        let mut left = units;
        while left > 0 {
            let piece = left.min(self.burst.get());
            self.acquire_n(key, self.cost(piece)).await;
            left -= piece;
        }
    }

    /// Units charged on top of a batch of `calls` calls of `units` each (0 when the batch fits
    /// in the burst). The limiter spends a batch's units one call after the other but Gmail
    /// receives them at once, so a one-second window can hold the sustained rate plus the
    /// whole batch. The surcharge slows a batching mailbox down to `limit - batch` units per
    /// second, where `limit` is Gmail's 250 units/s scaled like the configured rate (250 with
    /// the default 245), so that its worst window stays within Gmail's limit.
    pub fn batch_surcharge(&self, calls: usize, units: u32) -> u32 {
        let batch = calls as f64 * f64::from(units);
        let (rate, burst) = (f64::from(self.rate.get()), f64::from(self.burst.get()));
        if batch <= burst {
            return 0;
        }
        let limit = rate * f64::from(GMAIL_UNITS_PER_SECOND) / f64::from(DEFAULT_UNITS_PER_SECOND);
        // Tiny (test) quotas: never below the pace floor.
        let slower = (limit - batch).clamp(rate * PACE_MIN, rate);
        (batch * rate / slower - batch).ceil() as u32
    }

    /// Spends [`Self::batch_surcharge`] for a batch of `calls` calls of `units` each.
    pub async fn acquire_batch_surcharge(&self, mailbox: &str, calls: usize, units: u32) {
        let extra = self.batch_surcharge(calls, units);
        if extra > 0 {
            let key = mailbox.to_ascii_lowercase();
            self.acquire_pieces(&key, extra).await;
        }
    }

    async fn acquire_n(&self, key: &String, cost: NonZeroU32) {
        loop {
            match self.limiter.check_key_n(key, cost) {
                // The cost is clamped to the burst size, so capacity is always sufficient.
                Ok(Ok(())) | Err(_) => return,
                Ok(Err(not_until)) => {
                    let wait = not_until.wait_time_from(self.limiter.clock().now());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// Spends `units` now if the mailbox has them (at the configured rate, whatever its pace).
    pub fn try_acquire(&self, mailbox: &str, units: u32) -> bool {
        let key = mailbox.to_ascii_lowercase();
        matches!(self.limiter.check_key_n(&key, self.cost(units)), Ok(Ok(())))
    }

    /// How many `messages.get` calls `mailbox` may have in flight now, and so put in one batch
    /// ([`WINDOW_MAX`] unless repeated rate limits shrank it).
    pub fn window(&self, mailbox: &str) -> usize {
        if self.paced.load(Ordering::Relaxed) == 0 {
            return WINDOW_MAX;
        }
        let now = Instant::now();
        let mut paces = self.paces();
        paces
            .get_mut(&mailbox.to_ascii_lowercase())
            .map_or(WINDOW_MAX, |pace| {
                pace.recover(now);
                pace.calls()
            })
    }

    /// Waits until `mailbox` has room in its window for `calls` more calls in flight, and
    /// holds that room until the returned admission is dropped. A mailbox at full pace is
    /// admitted at once without counting (the sync never has more than [`WINDOW_MAX`] of its
    /// calls in flight); nor is a mailbox with nothing in flight ever kept waiting.
    pub async fn admit(&self, mailbox: &str, calls: usize) -> Admission<'_> {
        let free = Admission {
            limiter: self,
            held: None,
        };
        if self.paced.load(Ordering::Relaxed) == 0 {
            return free;
        }
        let key = mailbox.to_ascii_lowercase();
        loop {
            let released = {
                let now = Instant::now();
                let mut paces = self.paces();
                let Some(pace) = paces.get_mut(&key) else {
                    return free;
                };
                pace.recover(now);
                if pace.in_flight == 0 || pace.in_flight + calls <= pace.calls() {
                    pace.in_flight += calls;
                    return Admission {
                        limiter: self,
                        held: Some((key, calls)),
                    };
                }
                let mut released = Box::pin(Arc::clone(&pace.released).notified_owned());
                // Registered before the lock is let go: a release in between is not missed.
                released.as_mut().enable();
                released
            };
            let _ = tokio::time::timeout(WINDOW_RECHECK, released).await;
        }
    }

    fn release(&self, key: &str, calls: usize) {
        let mut paces = self.paces();
        if let Some(pace) = paces.get_mut(key) {
            pace.in_flight = pace.in_flight.saturating_sub(calls);
            pace.released.notify_waiters();
        }
    }
}

/// Room for calls in a mailbox's window, given back when dropped (see [`QuotaLimiter::admit`]).
#[must_use = "the room is given back when the admission is dropped"]
pub struct Admission<'a> {
    limiter: &'a QuotaLimiter,
    /// The mailbox's key and the calls counted; `None` when nothing was counted.
    held: Option<(String, usize)>,
}

impl Drop for Admission<'_> {
    fn drop(&mut self) {
        if let Some((key, calls)) = self.held.take() {
            self.limiter.release(&key, calls);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_is_two_gets() {
        let q = QuotaLimiter::new(DEFAULT_UNITS_PER_SECOND);
        // Burst 10 units / 5 per get = 2 gets immediately, the 3rd must wait.
        for i in 0..2 {
            assert!(q.try_acquire("ann@acme.test", UNITS_GET), "get {i}");
        }
        assert!(!q.try_acquire("ann@acme.test", UNITS_GET));
        // Mailboxes have independent quotas; keys are case-insensitive.
        assert!(q.try_acquire("bob@acme.test", UNITS_GET));
        assert!(!q.try_acquire("ANN@acme.test", UNITS_PROFILE));
    }

    #[test]
    fn a_lone_rate_limit_keeps_the_pace_repeated_ones_cut_it() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = Pace::new(t0);
        // The first event, and answers of the same event, change nothing.
        assert!(!p.rate_limited(at(0), 1));
        assert!(!p.rate_limited(at(100), 1));
        assert!(!p.rate_limited(at(240), 1));
        assert_eq!(p.factor, 1.0);
        // A second event within the repeat window cuts the pace.
        assert!(p.rate_limited(at(1_000), 1));
        assert!((p.factor - PACE_DECREASE).abs() < 1e-9, "{}", p.factor);
        // Again, 250 ms later: cut again (minus what was recovered meanwhile).
        assert!(p.rate_limited(at(1_250), 1));
        let expected = (PACE_DECREASE + 0.25 * PACE_RECOVERY_PER_SECOND) * PACE_DECREASE;
        assert!(
            (p.factor - expected).abs() < 1e-9,
            "{} vs {expected}",
            p.factor
        );
        // An event long after the previous one is a new first event.
        assert!(!p.rate_limited(at(20_000), 1));
        // By then the pace has recovered fully.
        assert_eq!(p.factor, 1.0);
        assert!(!p.settled(at(20_000)));
        // Settled once the last event is old and the window (halved twice) has grown back.
        let regrown = 1_250
            + (1_000.0 * (WINDOW_MAX - WINDOW_MAX / 4) as f64 / WINDOW_RECOVERY_PER_SECOND) as u64;
        p.recover(at(regrown - 100));
        assert!(!p.settled(at(regrown - 100)));
        p.recover(at(regrown + 1));
        assert!(p.settled(at(regrown + 1)));
    }

    #[test]
    fn the_pace_has_a_floor_and_recovers_linearly() {
        let t0 = Instant::now();
        let mut p = Pace::new(t0);
        let mut now = t0;
        p.rate_limited(now, 1);
        for _ in 0..40 {
            now += PACE_EVENT_GAP;
            p.rate_limited(now, 1);
        }
        assert!((p.factor - PACE_MIN).abs() < 0.02, "{}", p.factor);
        let low = p.factor;
        p.recover(now + Duration::from_secs(4));
        assert!((p.factor - (low + 4.0 * PACE_RECOVERY_PER_SECOND)).abs() < 1e-9);
        p.recover(now + Duration::from_secs(60));
        assert_eq!(p.factor, 1.0);
    }

    #[test]
    fn a_slower_pace_charges_more_units_per_call() {
        assert_eq!(paced_units(UNITS_GET, 1.0), 5);
        assert_eq!(paced_units(UNITS_GET, 0.5), 10);
        assert_eq!(paced_units(UNITS_GET, 0.7), 8);
        assert_eq!(paced_units(UNITS_GET, 0.01), 50);
    }

    #[tokio::test]
    async fn only_the_rate_limited_mailbox_slows_down() {
        let q = QuotaLimiter::new(DEFAULT_UNITS_PER_SECOND);
        assert_eq!(q.rate_limited("Ann@acme.test", 1), None);
        // The next event (after the gap) cuts Ann's pace; Bob keeps his.
        tokio::time::sleep(PACE_EVENT_GAP).await;
        let cut = q
            .rate_limited("ann@acme.test", 1)
            .expect("repeated event cuts the pace");
        assert!(cut.0 < 1.0);
        assert!(q.pace("ANN@acme.test") < 1.0);
        assert_eq!(q.pace("bob@acme.test"), 1.0);
        // A slowed mailbox spends more units per call: after the burst (2 gets at full pace),
        // Ann cannot take one more get immediately while Bob can take two.
        assert!(q.try_acquire("bob@acme.test", UNITS_GET));
        assert!(q.try_acquire("bob@acme.test", UNITS_GET));
        q.acquire("ann@acme.test", UNITS_GET).await;
        assert!(!q.try_acquire("ann@acme.test", UNITS_GET));
    }

    #[tokio::test(start_paused = true)]
    async fn recovered_mailboxes_are_forgotten() {
        let q = QuotaLimiter::new(DEFAULT_UNITS_PER_SECOND);
        assert_eq!(q.rate_limited("ann@acme.test", 1), None);
        assert_eq!(q.paced.load(Ordering::Relaxed), 1);
        tokio::time::advance(PACE_REPEAT_WINDOW + Duration::from_secs(1)).await;
        // Ann's lone event is old: forgotten when the next rate limit is recorded.
        assert_eq!(q.rate_limited("bob@acme.test", 1), None);
        assert_eq!(
            q.paces().keys().cloned().collect::<Vec<_>>(),
            ["bob@acme.test"]
        );
        // Once Bob's settles too, calls take the lock-free path again.
        tokio::time::advance(PACE_REPEAT_WINDOW + Duration::from_secs(1)).await;
        assert_eq!(q.pace("bob@acme.test"), 1.0);
        assert_eq!(q.paced.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn repeated_rate_limits_halve_the_window_and_time_restores_it() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut p = Pace::new(t0);
        assert_eq!(p.calls(), WINDOW_MAX);
        // A lone event keeps the window.
        p.rate_limited(at(0), 1);
        assert_eq!(p.calls(), WINDOW_MAX);
        // Repeated ones halve it, down to one call.
        p.rate_limited(at(300), 1);
        assert_eq!(p.calls(), WINDOW_MAX / 2);
        p.rate_limited(at(600), 1);
        assert_eq!(p.calls(), WINDOW_MAX / 4);
        for i in 0..10 {
            p.rate_limited(at(900 + 300 * i), 1);
        }
        assert_eq!(p.calls(), 1);
        // WINDOW_RECOVERY_PER_SECOND calls more per second without rate limits, up to the full
        // window.
        let quiet = 900 + 300 * 9;
        p.recover(at(quiet + (2_000.0 / WINDOW_RECOVERY_PER_SECOND) as u64));
        assert_eq!(p.calls(), 1 + 2);
        p.recover(at(quiet + 60_000));
        assert_eq!(p.calls(), WINDOW_MAX);
        // Refused batches of several calls shrink the window and keep the pace.
        let mut b = Pace::new(t0);
        b.rate_limited(at(0), 8);
        assert!(b.rate_limited(at(300), 8));
        assert_eq!((b.factor, b.calls()), (1.0, WINDOW_MAX / 2));
        // Not forgotten while calls admitted through it are in flight.
        p.in_flight = 1;
        assert!(!p.settled(at(quiet + 60_000)));
        p.in_flight = 0;
        assert!(p.settled(at(quiet + 60_000)));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shrunken_window_holds_calls_until_others_end() {
        let q = QuotaLimiter::new(DEFAULT_UNITS_PER_SECOND);
        // Full pace: admitted at once, nothing counted.
        assert_eq!(q.window("ann@acme.test"), WINDOW_MAX);
        let free = q.admit("ann@acme.test", WINDOW_MAX).await;
        assert!(free.held.is_none());
        drop(free);
        // Two events 300 ms apart: Ann's window is halved.
        q.rate_limited("ann@acme.test", 4);
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(
            q.rate_limited("ann@acme.test", 4),
            Some((1.0, WINDOW_MAX / 2)),
            "a refused batch shrinks the window, not the pace"
        );
        assert_eq!(q.window("ANN@acme.test"), WINDOW_MAX / 2);
        assert_eq!(q.window("bob@acme.test"), WINDOW_MAX);
        let first = q.admit("ann@acme.test", WINDOW_MAX / 2).await;
        // The window is full: the next call waits until the first ones end.
        let mut next = Box::pin(q.admit("ann@acme.test", 1));
        assert!(
            futures::poll!(next.as_mut()).is_pending(),
            "admitted beyond the window"
        );
        // Bob is not held by Ann's window.
        let bob = q.admit("bob@acme.test", WINDOW_MAX).await;
        drop(bob);
        drop(first);
        let admitted = next.await;
        assert_eq!(admitted.held.as_ref().map(|(_, n)| *n), Some(1));
        // A batch larger than the window is admitted when nothing else is in flight.
        drop(admitted);
        let big = q.admit("ann@acme.test", WINDOW_MAX).await;
        assert!(big.held.is_some());
    }

    #[test]
    fn batches_beyond_the_burst_pay_for_their_burst() {
        let q = QuotaLimiter::new(DEFAULT_UNITS_PER_SECOND);
        // Single calls and batches within the burst (10 units) pay nothing more.
        assert_eq!(q.batch_surcharge(1, UNITS_GET), 0);
        assert_eq!(q.batch_surcharge(2, UNITS_GET), 0);
        // 4 gets = 20 units: 245 units/s become 250 - 20 = 230 → 20 × 245 / 230 = 21.3 units.
        assert_eq!(q.batch_surcharge(4, UNITS_GET), 2);
        // 8 gets = 40 units: 210 units/s → 40 × 245 / 210 = 46.7 units per batch.
        assert_eq!(q.batch_surcharge(8, UNITS_GET), 7);
        // The worst window of a mailbox sending batches stays within Gmail's 250 units.
        for calls in [4, 8] {
            let batch = f64::from(calls * UNITS_GET);
            let extra = f64::from(q.batch_surcharge(calls as usize, UNITS_GET));
            let rate = 245.0 * batch / (batch + extra);
            assert!(rate + batch <= 250.0, "{calls}: {rate}");
        }
        // Without a quota (the benchmark's 1,000,000 units/s) nothing changes.
        let off = QuotaLimiter::new(1_000_000);
        assert_eq!(off.batch_surcharge(8, UNITS_GET), 0);
        // A tiny quota never charges more than the pace floor allows.
        let tiny = QuotaLimiter::new(20);
        assert_eq!(tiny.batch_surcharge(8, UNITS_GET), 360);
    }

    #[tokio::test]
    async fn sustained_rate_matches_the_quota() {
        // 100 units/s, burst 10; history calls of 2 units: 5 immediately, then 50/s.
        let q = QuotaLimiter::new(100);
        let start = std::time::Instant::now();
        for _ in 0..37 {
            q.acquire("ann@acme.test", UNITS_HISTORY).await;
        }
        let elapsed = start.elapsed().as_secs_f64();
        assert!((0.45..1.0).contains(&elapsed), "elapsed {elapsed}");
        // Worst one-second window with the defaults: rate + burst, 2 % over Gmail's 250 units.
        assert_eq!(DEFAULT_UNITS_PER_SECOND + 2 * UNITS_GET, 255);
        // 15,000 units per minute means 3,000 gets per minute per user at most.
        assert_eq!(15_000 / UNITS_GET, 3_000);
    }
}
