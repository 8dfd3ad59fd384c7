//! Prometheus metrics of the process (`/metrics`).
//!
//! One registry per process ([`metrics()`]); the executor, the sink and connectors record into
//! it through the typed methods below, so metric names and labels live in one place.

use std::sync::{
    OnceLock,
    atomic::{AtomicU64, Ordering},
};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabels {
    pub job_type: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobTypeLabels {
    pub job_type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectorLabels {
    pub connector_id: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: String,
}

/// Every metric of the service.
pub struct Metrics {
    registry: Registry,
    jobs_finished: Family<JobLabels, Counter>,
    jobs_running: Family<JobTypeLabels, Gauge>,
    documents_indexed: Family<ConnectorLabels, Counter>,
    documents_deleted: Family<ConnectorLabels, Counter>,
    documents_failed: Family<ConnectorLabels, Counter>,
    bulk_latency: Histogram,
    bulk_retries: Counter,
    google_requests: Family<MethodLabels, Counter>,
    google_rate_limited: Family<MethodLabels, Counter>,
    google_pace_reductions: Counter,
    google_quota_wait: Counter<f64, AtomicU64>,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("connectors");
        let jobs_finished = Family::<JobLabels, Counter>::default();
        registry.register(
            "jobs_finished",
            "Sync jobs that ended, by job type and final status",
            jobs_finished.clone(),
        );
        let jobs_running = Family::<JobTypeLabels, Gauge>::default();
        registry.register(
            "jobs_running",
            "Sync jobs running in this process",
            jobs_running.clone(),
        );
        let documents_indexed = Family::<ConnectorLabels, Counter>::default();
        registry.register(
            "documents_indexed",
            "Documents indexed or updated (acknowledged by Elasticsearch)",
            documents_indexed.clone(),
        );
        let documents_deleted = Family::<ConnectorLabels, Counter>::default();
        registry.register(
            "documents_deleted",
            "Documents deleted",
            documents_deleted.clone(),
        );
        let documents_failed = Family::<ConnectorLabels, Counter>::default();
        registry.register(
            "documents_failed",
            "Documents Elasticsearch rejected for good (after retries)",
            documents_failed.clone(),
        );
        let bulk_latency = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        registry.register(
            "bulk_request_duration_seconds",
            "Latency of _bulk requests",
            bulk_latency.clone(),
        );
        let bulk_retries = Counter::default();
        registry.register(
            "bulk_retries",
            "Bulk requests or items re-sent",
            bulk_retries.clone(),
        );
        let google_requests = Family::<MethodLabels, Counter>::default();
        registry.register(
            "google_api_requests",
            "Google API calls by method",
            google_requests.clone(),
        );
        let google_rate_limited = Family::<MethodLabels, Counter>::default();
        registry.register(
            "google_api_rate_limited",
            "Google API answers that asked to slow down (429, rate-limit 403), by method",
            google_rate_limited.clone(),
        );
        let google_pace_reductions = Counter::default();
        registry.register(
            "google_pace_reductions",
            "Repeated rate limits that slowed a mailbox's pace down",
            google_pace_reductions.clone(),
        );
        let google_quota_wait = Counter::<f64, AtomicU64>::default();
        registry.register(
            "google_quota_wait_seconds",
            "Time spent waiting for Google quota",
            google_quota_wait.clone(),
        );
        Self {
            registry,
            jobs_finished,
            jobs_running,
            documents_indexed,
            documents_deleted,
            documents_failed,
            bulk_latency,
            bulk_retries,
            google_requests,
            google_rate_limited,
            google_pace_reductions,
            google_quota_wait,
        }
    }

    pub fn job_started(&self, job_type: &str) {
        self.jobs_running
            .get_or_create(&JobTypeLabels {
                job_type: job_type.into(),
            })
            .inc();
    }

    pub fn job_finished(&self, job_type: &str, status: &str) {
        self.jobs_running
            .get_or_create(&JobTypeLabels {
                job_type: job_type.into(),
            })
            .dec();
        self.jobs_finished
            .get_or_create(&JobLabels {
                job_type: job_type.into(),
                status: status.into(),
            })
            .inc();
    }

    pub fn documents(&self, connector_id: &str, indexed: u64, deleted: u64, failed: u64) {
        let labels = ConnectorLabels {
            connector_id: connector_id.into(),
        };
        self.documents_indexed
            .get_or_create(&labels)
            .inc_by(indexed);
        self.documents_deleted
            .get_or_create(&labels)
            .inc_by(deleted);
        self.documents_failed.get_or_create(&labels).inc_by(failed);
    }

    pub fn bulk_request(&self, seconds: f64) {
        self.bulk_latency.observe(seconds);
    }

    pub fn bulk_retry(&self) {
        self.bulk_retries.inc();
    }

    pub fn google_request(&self, method: &str, rate_limited: bool) {
        let labels = MethodLabels {
            method: method.into(),
        };
        self.google_requests.get_or_create(&labels).inc();
        if rate_limited {
            self.google_rate_limited.get_or_create(&labels).inc();
        }
    }

    pub fn google_pace_reduction(&self) {
        self.google_pace_reductions.inc();
    }

    pub fn google_quota_wait(&self, seconds: f64) {
        self.google_quota_wait.inc_by(seconds);
    }

    /// The registry in Prometheus text format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }

    /// Total of `connectors_documents_indexed` for one connector (tests, progress).
    pub fn indexed_for(&self, connector_id: &str) -> u64 {
        self.documents_indexed
            .get_or_create(&ConnectorLabels {
                connector_id: connector_id.into(),
            })
            .get()
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// Monotonic counter helper for callers that only need a number (e.g. retries of one job).
#[derive(Debug, Default)]
pub struct LocalCounter(AtomicU64);

impl LocalCounter {
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_format_has_names_and_labels() {
        let m = metrics();
        m.job_started("full");
        m.job_finished("full", "completed");
        m.documents("conn-metrics-test", 5, 1, 0);
        m.google_request("messages.get", true);
        m.google_pace_reduction();
        m.bulk_request(0.02);
        let text = m.encode();
        assert!(
            text.contains("connectors_jobs_finished_total{job_type=\"full\",status=\"completed\"}")
        );
        assert!(
            text.contains(
                "connectors_documents_indexed_total{connector_id=\"conn-metrics-test\"} 5"
            )
        );
        assert!(text.contains("connectors_google_api_rate_limited_total{method=\"messages.get\"}"));
        assert!(text.contains("connectors_google_pace_reductions_total "));
        assert!(text.contains("connectors_bulk_request_duration_seconds_bucket"));
        assert_eq!(m.indexed_for("conn-metrics-test"), 5);
    }
}
