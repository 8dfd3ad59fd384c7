//! Counters of one connector instance (all jobs), for the host to export as metrics.

use std::sync::atomic::{AtomicU64, Ordering};

/// Monotonic counters. Read with [`GmailStats::snapshot`].
#[derive(Debug, Default)]
pub struct GmailStats {
    pub api_calls: AtomicU64,
    pub api_retries: AtomicU64,
    /// Gmail batch requests (each also counted in `api_calls`).
    pub batch_requests: AtomicU64,
    pub rate_limited: AtomicU64,
    /// Repeated rate limits that cut a mailbox's pace (see `quota`).
    pub pace_reductions: AtomicU64,
    pub server_errors: AtomicU64,
    pub quota_units: AtomicU64,
    pub tokens_minted: AtomicU64,
    pub token_retries: AtomicU64,
    pub messages_fetched: AtomicU64,
    pub messages_vanished: AtomicU64,
    pub messages_failed: AtomicU64,
    pub mime_warnings: AtomicU64,
    pub mailboxes_synced: AtomicU64,
    pub mailboxes_skipped: AtomicU64,
    pub history_resyncs: AtomicU64,
}

/// A point-in-time copy of [`GmailStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub api_calls: u64,
    pub api_retries: u64,
    pub batch_requests: u64,
    pub rate_limited: u64,
    pub pace_reductions: u64,
    pub server_errors: u64,
    pub quota_units: u64,
    pub tokens_minted: u64,
    pub token_retries: u64,
    pub messages_fetched: u64,
    pub messages_vanished: u64,
    pub messages_failed: u64,
    pub mime_warnings: u64,
    pub mailboxes_synced: u64,
    pub mailboxes_skipped: u64,
    pub history_resyncs: u64,
}

pub(crate) fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn add(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

impl GmailStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        let g = |c: &AtomicU64| c.load(Ordering::Relaxed);
        StatsSnapshot {
            api_calls: g(&self.api_calls),
            api_retries: g(&self.api_retries),
            batch_requests: g(&self.batch_requests),
            rate_limited: g(&self.rate_limited),
            pace_reductions: g(&self.pace_reductions),
            server_errors: g(&self.server_errors),
            quota_units: g(&self.quota_units),
            tokens_minted: g(&self.tokens_minted),
            token_retries: g(&self.token_retries),
            messages_fetched: g(&self.messages_fetched),
            messages_vanished: g(&self.messages_vanished),
            messages_failed: g(&self.messages_failed),
            mime_warnings: g(&self.mime_warnings),
            mailboxes_synced: g(&self.mailboxes_synced),
            mailboxes_skipped: g(&self.mailboxes_skipped),
            history_resyncs: g(&self.history_resyncs),
        }
    }
}
