//! Quota windows, per-user concurrency, fault rules and counters. Lock-free on the hot path.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

use crate::rng::h3;

/// How exhausted quota is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum QuotaStyle {
    /// 403 `usageLimits`/`userRateLimitExceeded` "User Rate Limit Exceeded" (documented legacy form).
    Legacy403,
    /// 429 `RESOURCE_EXHAUSTED` "Quota exceeded for quota metric 'Queries' …".
    #[default]
    Quota429,
    /// 429 "User-rate limit exceeded.  Retry after <RFC 3339>".
    RetryAfterText,
}

/// Quota settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct QuotaConfig {
    pub enabled: bool,
    /// Gmail units per user per window (Google: 250 units/s moving average).
    pub user_units: u64,
    pub user_window_ms: u64,
    /// Gmail units per project per window (Google: 1,200,000/min).
    pub project_units: u64,
    pub project_window_ms: u64,
    /// Simultaneous requests per user (observed ≈10), 0 = unlimited.
    pub max_concurrent_per_user: u32,
    /// Directory queries per user per minute (Google: 2,400).
    pub directory_per_minute: u64,
    pub style: QuotaStyle,
    /// Send `Retry-After: <secs>` with quota errors (Google usually does not).
    pub retry_after_header: bool,
}

impl Default for QuotaConfig {
    fn default() -> Self {
        QuotaConfig {
            enabled: true,
            user_units: 250,
            user_window_ms: 1000,
            project_units: 1_200_000,
            project_window_ms: 60_000,
            max_concurrent_per_user: 10,
            directory_per_minute: 2400,
            style: QuotaStyle::Quota429,
            retry_after_header: true,
        }
    }
}

impl QuotaConfig {
    /// No quota, no concurrency cap.
    pub fn off() -> Self {
        QuotaConfig {
            enabled: false,
            ..QuotaConfig::default()
        }
    }
}

const SLOTS: usize = 10;

/// An approximate sliding window of `SLOTS` buckets.
#[derive(Debug, Default)]
pub(crate) struct Window {
    stamps: [AtomicI64; SLOTS],
    counts: [AtomicU64; SLOTS],
}

impl Window {
    /// Takes `units` if the window has room; else the milliseconds until some room frees up.
    pub(crate) fn try_take(
        &self,
        now_ms: i64,
        window_ms: u64,
        limit: u64,
        units: u64,
    ) -> Result<(), i64> {
        let slot_ms = (window_ms as i64 / SLOTS as i64).max(1);
        let cur = now_ms / slot_ms;
        let idx = (cur as usize) % SLOTS;
        if self.stamps[idx].load(Ordering::Acquire) != cur {
            self.stamps[idx].store(cur, Ordering::Release);
            self.counts[idx].store(0, Ordering::Release);
        }
        let mut sum = 0;
        for i in 0..SLOTS {
            let s = self.stamps[i].load(Ordering::Acquire);
            if s > cur - SLOTS as i64 && s <= cur {
                sum += self.counts[i].load(Ordering::Acquire);
            }
        }
        if sum + units > limit {
            return Err(slot_ms - now_ms % slot_ms + slot_ms);
        }
        self.counts[idx].fetch_add(units, Ordering::AcqRel);
        Ok(())
    }
}

/// Per-user runtime counters.
#[derive(Debug, Default)]
pub(crate) struct UserRt {
    pub gmail: Window,
    pub directory: Window,
    pub inflight: AtomicU32,
    pub peak_inflight: AtomicU32,
    pub requests: AtomicU64,
}

/// Decrements the in-flight counter on drop.
pub(crate) struct InflightGuard<'a>(pub &'a AtomicU32);

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// API methods, with Google's method ids and quota costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Method {
    Token,
    DirectoryUsersList,
    DirectoryUsersGet,
    GetProfile,
    MessagesList,
    MessagesGet,
    AttachmentsGet,
    LabelsList,
    LabelsGet,
    HistoryList,
    ThreadsList,
    ThreadsGet,
    Batch,
}

pub(crate) const METHODS: &[Method] = &[
    Method::Token,
    Method::DirectoryUsersList,
    Method::DirectoryUsersGet,
    Method::GetProfile,
    Method::MessagesList,
    Method::MessagesGet,
    Method::AttachmentsGet,
    Method::LabelsList,
    Method::LabelsGet,
    Method::HistoryList,
    Method::ThreadsList,
    Method::ThreadsGet,
    Method::Batch,
];

impl Method {
    pub fn id(self) -> &'static str {
        match self {
            Method::Token => "oauth2.token",
            Method::DirectoryUsersList => "directory.users.list",
            Method::DirectoryUsersGet => "directory.users.get",
            Method::GetProfile => "gmail.users.getProfile",
            Method::MessagesList => "gmail.users.messages.list",
            Method::MessagesGet => "gmail.users.messages.get",
            Method::AttachmentsGet => "gmail.users.messages.attachments.get",
            Method::LabelsList => "gmail.users.labels.list",
            Method::LabelsGet => "gmail.users.labels.get",
            Method::HistoryList => "gmail.users.history.list",
            Method::ThreadsList => "gmail.users.threads.list",
            Method::ThreadsGet => "gmail.users.threads.get",
            Method::Batch => "gmail.batch",
        }
    }

    /// Gmail quota units.
    pub fn units(self) -> u64 {
        match self {
            Method::GetProfile | Method::LabelsList | Method::LabelsGet => 1,
            Method::HistoryList => 2,
            Method::MessagesList | Method::MessagesGet | Method::AttachmentsGet => 5,
            Method::ThreadsList | Method::ThreadsGet => 10,
            _ => 0,
        }
    }

    pub(crate) fn index(self) -> usize {
        METHODS.iter().position(|m| *m == self).unwrap_or(0)
    }
}

/// Per-method counters.
#[derive(Debug, Default)]
pub(crate) struct MethodStats {
    pub requests: AtomicU64,
    pub units: AtomicU64,
    pub throttled: AtomicU64,
    pub concurrency_rejected: AtomicU64,
    pub errors: AtomicU64,
    pub faults: AtomicU64,
}

/// Counters of one method, as reported.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MethodCounters {
    pub requests: u64,
    pub units: u64,
    /// Quota rejections (403/429 for rate limits).
    pub throttled: u64,
    /// 429 "Too many concurrent requests for user".
    pub concurrency_rejected: u64,
    /// Non-2xx answers of any kind.
    pub errors: u64,
    /// Answers produced by fault rules.
    pub faults: u64,
}

impl MethodStats {
    pub(crate) fn snapshot(&self) -> MethodCounters {
        MethodCounters {
            requests: self.requests.load(Ordering::Relaxed),
            units: self.units.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            concurrency_rejected: self.concurrency_rejected.load(Ordering::Relaxed),
            errors: self.errors.load(Ordering::Relaxed),
            faults: self.faults.load(Ordering::Relaxed),
        }
    }

    pub(crate) fn reset(&self) {
        for a in [
            &self.requests,
            &self.units,
            &self.throttled,
            &self.concurrency_rejected,
            &self.errors,
            &self.faults,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }
}

/// A fault injection rule. Matching rules are evaluated in order; the first that fires wins.
#[derive(Debug, Clone, Serialize, Deserialize, Default, PartialEq)]
#[serde(rename_all = "camelCase", default)]
pub struct FaultRule {
    /// Method id (e.g. `gmail.users.messages.get`, `oauth2.token`); `None` = any.
    pub method: Option<String>,
    /// Mailbox / subject e-mail; `None` = any.
    pub user: Option<String>,
    /// Substring of the request path.
    pub path_contains: Option<String>,
    /// Status to answer; 0 = do not fail (only delay).
    pub status: u16,
    /// Error reason in the envelope (default derived from the status).
    pub reason: Option<String>,
    pub message: Option<String>,
    /// Raw body instead of the JSON envelope (e.g. an HTML 502 page).
    pub body: Option<String>,
    /// Delay before answering (also applies when `status` is 0).
    pub delay_ms: u64,
    /// Fire with this probability (deterministic given the seed).
    pub probability: Option<f64>,
    /// Fire on every n-th matching request (1 = every time).
    pub every_nth: Option<u64>,
    /// Fire at most this many times.
    pub times: Option<u64>,
}

/// A rule with its counters.
#[derive(Debug)]
pub(crate) struct FaultRt {
    pub rule: FaultRule,
    pub seen: AtomicU64,
    pub hits: AtomicU64,
}

/// A rule and how often it fired.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FaultStatus {
    pub rule: FaultRule,
    pub seen: u64,
    pub hits: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Faults {
    pub any: AtomicBool,
    pub rules: RwLock<Arc<Vec<FaultRt>>>,
}

impl Faults {
    pub(crate) fn set(&self, rules: Vec<FaultRule>) {
        let rts: Vec<FaultRt> = rules
            .into_iter()
            .map(|rule| FaultRt {
                rule,
                seen: AtomicU64::new(0),
                hits: AtomicU64::new(0),
            })
            .collect();
        self.any.store(!rts.is_empty(), Ordering::Release);
        *self.rules.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(rts);
    }

    pub(crate) fn add(&self, rule: FaultRule) {
        let mut all: Vec<FaultRule> = self.status().into_iter().map(|s| s.rule).collect();
        all.push(rule);
        self.set(all);
    }

    pub(crate) fn status(&self) -> Vec<FaultStatus> {
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner()).clone();
        rules
            .iter()
            .map(|r| FaultStatus {
                rule: r.rule.clone(),
                seen: r.seen.load(Ordering::Relaxed),
                hits: r.hits.load(Ordering::Relaxed),
            })
            .collect()
    }

    /// The first rule that fires for this request.
    pub(crate) fn check(
        &self,
        seed: u64,
        method: Method,
        user: Option<&str>,
        path: &str,
    ) -> Option<FaultRule> {
        if !self.any.load(Ordering::Acquire) {
            return None;
        }
        let rules = self.rules.read().unwrap_or_else(|e| e.into_inner()).clone();
        for (i, r) in rules.iter().enumerate() {
            let rule = &r.rule;
            if rule.method.as_deref().is_some_and(|m| m != method.id()) {
                continue;
            }
            if let Some(u) = &rule.user
                && !user.is_some_and(|x| x.eq_ignore_ascii_case(u))
            {
                continue;
            }
            if rule
                .path_contains
                .as_deref()
                .is_some_and(|p| !path.contains(p))
            {
                continue;
            }
            let n = r.seen.fetch_add(1, Ordering::AcqRel) + 1;
            if let Some(nth) = rule.every_nth
                && nth > 0
                && n % nth != 0
            {
                continue;
            }
            if let Some(p) = rule.probability {
                let x = (h3(seed, i as u64, n) >> 11) as f64 / (1u64 << 53) as f64;
                if x >= p {
                    continue;
                }
            }
            let prev = r.hits.fetch_add(1, Ordering::AcqRel);
            if rule.times.is_some_and(|t| prev >= t) {
                r.hits.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            return Some(rule.clone());
        }
        None
    }
}

/// Parses a `--faults` spec: inline JSON (an array of rules) or `@path` to a JSON file.
pub fn parse_fault_spec(spec: &str) -> Result<Vec<FaultRule>, crate::SimError> {
    let text = if let Some(path) = spec.strip_prefix('@') {
        std::fs::read_to_string(path)
            .map_err(|e| crate::SimError::InvalidInput(format!("{path}: {e}")))?
    } else {
        spec.to_string()
    };
    serde_json::from_str(&text)
        .map_err(|e| crate::SimError::InvalidInput(format!("fault rules: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_limits_and_slides() {
        let w = Window::default();
        assert!(w.try_take(0, 1000, 10, 5).is_ok());
        assert!(w.try_take(10, 1000, 10, 5).is_ok());
        assert!(w.try_take(20, 1000, 10, 5).is_err());
        // a full window later the old buckets no longer count
        assert!(w.try_take(1100, 1000, 10, 5).is_ok());
    }

    #[test]
    fn fault_every_nth_and_times() {
        let f = Faults::default();
        f.set(vec![FaultRule {
            method: Some("gmail.users.messages.get".into()),
            status: 503,
            every_nth: Some(2),
            times: Some(2),
            ..Default::default()
        }]);
        let fired: Vec<bool> = (0..8)
            .map(|_| f.check(1, Method::MessagesGet, None, "/x").is_some())
            .collect();
        assert_eq!(
            fired,
            vec![false, true, false, true, false, false, false, false]
        );
        assert!(f.check(1, Method::GetProfile, None, "/x").is_none());
    }
}
