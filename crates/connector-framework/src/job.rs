//! The contract between the executor (which claims jobs and keeps their documents up to date) and
//! the sync engine (which moves documents). The executor builds a [`JobSpec`] from the claimed
//! job document, hands it with a [`JobContext`] to the connector's `run_job`, and writes the
//! [`JobOutcome`] back.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tokio_util::sync::CancellationToken;

use crate::{
    EsClient,
    model::{Features, FilteringRules, JobType, Pipeline},
};

/// Everything a sync needs, taken from the job document's connector snapshot (and the connector
/// document for what the snapshot lacks).
#[derive(Debug, Clone)]
pub struct JobSpec {
    pub job_id: String,
    pub connector_id: String,
    pub job_type: JobType,
    pub service_type: String,
    /// Content index for content jobs; the ACL index (`.search-acl-filter-<index>`) for
    /// access-control jobs, as in the job document.
    pub index_name: String,
    pub language: Option<String>,
    pub pipeline: Pipeline,
    /// The rich configuration fields (`field → {label, value, …}`) of the snapshot.
    pub configuration: Map<String, Value>,
    /// The active sync rules of the snapshot.
    pub filtering: FilteringRules,
    /// The connector's features at claim time.
    pub features: Features,
    /// The connector's `sync_cursor` at claim time (incremental jobs).
    pub sync_cursor: Option<Value>,
    /// In-run checkpoint saved by an earlier run of this same job (a suspended or crashed job
    /// being resumed); `None` on a fresh start.
    pub checkpoint: Option<Value>,
}

/// Counters of a job, as persisted on the job document.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobCounters {
    /// Successful `index` + `update` items.
    pub indexed_document_count: u64,
    /// Serialized bytes of those documents (the job document stores MiB, rounded).
    pub indexed_document_volume_bytes: u64,
    /// `delete` items that Elasticsearch answered.
    pub deleted_document_count: u64,
}

/// Errors of [`JobReporter`].
#[derive(Debug, thiserror::Error)]
#[error("cannot save job progress: {0}")]
pub struct ReportError(pub String);

/// Implemented by the executor: where a running sync reports progress.
#[async_trait::async_trait]
pub trait JobReporter: Send + Sync {
    /// Latest counters; the executor persists them every few seconds (and they are the job's
    /// heartbeat together with `last_seen`).
    fn counters(&self, counters: JobCounters);

    /// Persists an in-run checkpoint. Call only after Elasticsearch acknowledged every document
    /// the checkpoint covers. Returns once it is durable.
    async fn checkpoint(&self, checkpoint: Value) -> Result<(), ReportError>;
}

/// What the executor gives a running sync.
#[derive(Clone)]
pub struct JobContext {
    /// Client for data-plane traffic (content and ACL indices); may carry the connector's own
    /// API key from `config.yml`.
    pub es: EsClient,
    /// Cancelled when the job must stop (cancel request or service shutdown). The sync stops
    /// promptly and returns [`JobOutcome::Interrupted`]; the executor decides between `canceled`
    /// and `suspended`.
    pub cancel: CancellationToken,
    pub reporter: Arc<dyn JobReporter>,
}

/// How a sync ended.
#[derive(Debug, Clone)]
pub enum JobOutcome {
    /// Every document acknowledged. `cursor` is the new cross-run cursor of the connector
    /// (content jobs); `None` leaves the stored one unchanged.
    Completed {
        counters: JobCounters,
        cursor: Option<Value>,
    },
    /// The job failed; `error` is the message shown on the job and connector documents.
    Failed {
        counters: JobCounters,
        error: String,
    },
    /// Stopped through the cancellation token.
    Interrupted { counters: JobCounters },
}

impl JobOutcome {
    pub fn counters(&self) -> JobCounters {
        match self {
            JobOutcome::Completed { counters, .. }
            | JobOutcome::Failed { counters, .. }
            | JobOutcome::Interrupted { counters } => *counters,
        }
    }
}
