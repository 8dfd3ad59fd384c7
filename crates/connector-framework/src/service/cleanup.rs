//! The cleanup service (spec §7.4, without W9/W17).
//!
//! Every `service.job_cleanup_interval`:
//! * a job that is `in_progress` or `canceling` and whose `last_seen` is older than
//!   `service.job_stale_threshold` (its worker died: kill -9, crash, lost node) is marked
//!   `error`, and its connector's `last_*_sync_status` is reset so new jobs can start;
//! * a job that is not finished and whose connector is gone or soft-deleted is marked `error`
//!   (Elastic leaves pending ones forever, W17).
//!
//! Jobs running in this process are never touched here. Any process cleans any job: a job
//! whose heartbeat stopped is dead whoever ran it.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
};

use chrono::Utc;
use serde_json::json;

use crate::{
    job::JobCounters,
    model::{JobStatus, JobType},
    protocol::{ConnectorDoc, OCC_ATTEMPTS, Patch, retry_on_conflict},
};

use super::{ServiceContext, ServiceError, executor::Executor};

/// Error message of a job whose worker stopped reporting (Elastic's wording).
pub const STALE_JOB_ERROR: &str = "The job has not seen any update for some time.";

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub stale: Vec<String>,
    pub orphaned: Vec<String>,
    /// Connectors whose `last_*_sync_status` said `in_progress` with no job running (a worker
    /// died between reserving the connector and claiming the job); reset so jobs can start.
    pub released: Vec<String>,
}

/// The cleanup service.
pub struct Cleanup {
    ctx: ServiceContext,
    executor: Option<Arc<Executor>>,
    /// Connector sync slots (`last_*_sync_status: in_progress` without a running job) seen in
    /// the previous pass; reset when seen twice in a row.
    suspects: Mutex<HashSet<(String, bool)>>,
}

impl Cleanup {
    pub fn new(ctx: ServiceContext, executor: Arc<Executor>) -> Self {
        Self {
            ctx,
            executor: Some(executor),
            suspects: Mutex::default(),
        }
    }

    /// A cleanup that does not know of any local executor (tools and tests).
    pub fn standalone(ctx: ServiceContext) -> Self {
        Self {
            ctx,
            executor: None,
            suspects: Mutex::default(),
        }
    }

    pub async fn run_pass(&self) -> Result<PassReport, ServiceError> {
        let store = &self.ctx.store;
        let mut report = PassReport::default();
        let local: Vec<String> = self
            .executor
            .as_ref()
            .map(|e| e.running_jobs())
            .unwrap_or_default();
        let connectors: HashMap<String, ConnectorDoc> = store
            .list_connectors(None)
            .await?
            .into_iter()
            .map(|c| (c.id().to_owned(), c))
            .collect();
        let query =
            json!({"terms": {"status": ["pending", "suspended", "in_progress", "canceling"]}});
        let jobs = store.list_jobs(query, None).await?;
        let threshold = self.ctx.config.job_stale_threshold();
        for job in jobs {
            if local.iter().any(|id| id == job.id()) {
                continue;
            }
            let connector = job.connector_id().and_then(|id| connectors.get(id));
            if connector.is_none_or(ConnectorDoc::is_deleted) {
                match super::executor::fail_orphan(&self.ctx, &job).await {
                    Ok(true) => report.orphaned.push(job.id().to_owned()),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(job_id = job.id(), error = %e, "cannot fail orphaned job")
                    }
                }
                continue;
            }
            let Ok(status) = job.status() else { continue };
            if !matches!(status, JobStatus::InProgress | JobStatus::Canceling) {
                continue;
            }
            let idle = job.last_seen().map(|t| {
                Utc::now()
                    .signed_duration_since(t)
                    .to_std()
                    .unwrap_or_default()
            });
            if idle.is_some_and(|d| d < threshold) {
                continue;
            }
            match self.fail_stale(job.id()).await {
                Ok(true) => report.stale.push(job.id().to_owned()),
                Ok(false) => {}
                Err(e) => tracing::warn!(job_id = job.id(), error = %e, "cannot fail stale job"),
            }
        }
        self.release_abandoned(&connectors, &mut report).await?;
        Ok(report)
    }

    /// A connector marked `in_progress` for a job kind while no job of that kind runs blocks
    /// every future job of the connector. Seen in two consecutive passes (the executor
    /// claims right after marking, so a live start never spans two passes) → reset.
    async fn release_abandoned(
        &self,
        connectors: &HashMap<String, ConnectorDoc>,
        report: &mut PassReport,
    ) -> Result<(), ServiceError> {
        let store = &self.ctx.store;
        let mut candidates = HashSet::new();
        for c in connectors.values() {
            for (content, job_type) in [(true, JobType::Full), (false, JobType::AccessControl)] {
                if c.last_sync_status(job_type) == Some(JobStatus::InProgress) {
                    candidates.insert((c.id().to_owned(), content));
                }
            }
        }
        if candidates.is_empty() {
            self.suspects
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clear();
            return Ok(());
        }
        store.refresh().await?;
        let running = store
            .list_jobs(
                json!({"terms": {"status": ["in_progress", "canceling"]}}),
                None,
            )
            .await?;
        let busy: HashSet<(String, bool)> = running
            .iter()
            .filter_map(|j| Some((j.connector_id()?.to_owned(), j.job_type()?.is_content())))
            .collect();
        let abandoned: HashSet<(String, bool)> = candidates.difference(&busy).cloned().collect();
        let previous = std::mem::replace(
            &mut *self
                .suspects
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
            abandoned.clone(),
        );
        for (id, content) in abandoned.intersection(&previous) {
            let job_type = if *content {
                JobType::Full
            } else {
                JobType::AccessControl
            };
            let (status_field, error_field) = ConnectorDoc::sync_status_fields(job_type);
            let released = retry_on_conflict(OCC_ATTEMPTS, || async {
                let c = store.connector(id).await?;
                if c.last_sync_status(job_type) != Some(JobStatus::InProgress) {
                    return Ok(false);
                }
                let patch = Patch::new()
                    .set(status_field, JobStatus::Error.as_str())
                    .set(error_field, "the worker stopped before the job started");
                store.update_connector(&c, &patch).await.map(|_| true)
            })
            .await;
            match released {
                Ok(true) => {
                    tracing::warn!(connector_id = %id, "released a connector reserved by a dead worker");
                    report.released.push(id.clone());
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(connector_id = %id, error = %e, "cannot release connector")
                }
            }
        }
        Ok(())
    }

    async fn fail_stale(&self, job_id: &str) -> Result<bool, ServiceError> {
        let store = &self.ctx.store;
        let threshold = self.ctx.config.job_stale_threshold();
        let failed = retry_on_conflict(OCC_ATTEMPTS, || async {
            let Some(job) = store.get_job(job_id).await? else {
                return Ok(None);
            };
            // Re-check on the fresh document: it may have reported meanwhile.
            let status = job.status()?;
            let idle = job.last_seen().map(|t| {
                Utc::now()
                    .signed_duration_since(t)
                    .to_std()
                    .unwrap_or_default()
            });
            if !matches!(status, JobStatus::InProgress | JobStatus::Canceling)
                || idle.is_some_and(|d| d < threshold)
            {
                return Ok(None);
            }
            store
                .transition_job(
                    &job,
                    JobStatus::Error,
                    Patch::new().set("error", STALE_JOB_ERROR),
                )
                .await
                .map(Some)
        })
        .await?;
        let Some(job) = failed else { return Ok(false) };
        tracing::warn!(job_id, "job marked error: its worker stopped reporting");
        if let (Some(connector_id), Some(job_type)) = (job.connector_id(), job.job_type()) {
            let counters = JobCounters {
                indexed_document_count: job.indexed_document_count(),
                indexed_document_volume_bytes: 0,
                deleted_document_count: job.deleted_document_count(),
            };
            super::executor::sync_done(
                &self.ctx,
                connector_id,
                job_type,
                JobStatus::Error,
                Some(STALE_JOB_ERROR),
                &counters,
                None,
            )
            .await?;
        }
        Ok(true)
    }
}
