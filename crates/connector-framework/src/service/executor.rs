//! The job executor (spec §7.2, §7.3 without W2/W9/W12/W16/W17/W19).
//!
//! Each pass lists pending and suspended jobs (oldest first) and starts as many as the free
//! slots allow (`service.max_concurrent_content_syncs`, `…_access_control_syncs`). A job whose
//! service type this binary lacks, or whose connector this process does not serve, is skipped
//! without blocking the others (W2); a job whose connector is gone or soft-deleted is marked
//! `error` (W17).
//!
//! Starting a job: the connector's `last_*_sync_status` is set to `in_progress` with a
//! conditional write (one content job and one access-control job per connector at a time), then
//! the job is claimed with a conditional write from `pending`/`suspended` to `in_progress`, so
//! two workers never run the same job (W19).
//!
//! While a job runs, a watcher reads the job every second (a `canceling` job is cancelled
//! within about a second) and persists counters and `last_seen` every few seconds (the
//! heartbeat the cleanup service checks). Checkpoints are persisted when the sync asks
//! ([`JobReporter::checkpoint`]) and handed back in [`JobSpec::checkpoint`] when a suspended job
//! is resumed. On shutdown running jobs are cancelled and written `suspended`.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde_json::Value;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use crate::{
    job::{JobContext, JobCounters, JobOutcome, JobReporter, JobSpec, ReportError},
    model::{ConnectorStatus, JobStatus, JobType, now_timestamp},
    protocol::{
        ConnectorDoc, JobDoc, OCC_ATTEMPTS, Patch, StoreError, docs::counters_patch,
        retry_on_conflict,
    },
    source::DynConnector,
};

use super::{ServiceContext, ServiceError};

/// Why a running job was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StopReason {
    Cancel,
    Shutdown,
    /// The job document vanished or was finished by someone else (e.g. cleanup).
    Lost,
}

struct Running {
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
}

fn set_reason(slot: &Mutex<Option<StopReason>>, reason: StopReason) {
    let mut r = slot
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if r.is_none() {
        *r = Some(reason);
    }
}

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    pub started: Vec<String>,
    pub errored: Vec<String>,
}

/// The execution service.
pub struct Executor {
    ctx: ServiceContext,
    content_slots: Arc<Semaphore>,
    acl_slots: Arc<Semaphore>,
    running: Arc<Mutex<HashMap<String, Running>>>,
    tasks: Mutex<tokio::task::JoinSet<()>>,
    wake: Arc<Notify>,
    warned_types: Mutex<HashSet<String>>,
}

impl Executor {
    pub fn new(ctx: ServiceContext) -> Self {
        let content = ctx.config.service.max_concurrent_content_syncs.max(1);
        let acl = ctx
            .config
            .service
            .max_concurrent_access_control_syncs
            .max(1);
        Self {
            ctx,
            content_slots: Arc::new(Semaphore::new(content)),
            acl_slots: Arc::new(Semaphore::new(acl)),
            running: Arc::default(),
            tasks: Mutex::new(tokio::task::JoinSet::new()),
            wake: Arc::new(Notify::new()),
            warned_types: Mutex::default(),
        }
    }

    /// Notified when a job ends (so the loop looks for more work at once).
    pub fn wake_handle(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Ids of the jobs running in this process.
    pub fn running_jobs(&self) -> Vec<String> {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .keys()
            .cloned()
            .collect()
    }

    fn is_running(&self, job_id: &str) -> bool {
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains_key(job_id)
    }

    /// One pass: start every startable pending/suspended job while slots are free.
    pub async fn run_pass(&self) -> Result<PassReport, ServiceError> {
        let mut report = PassReport::default();
        // Reap finished tasks.
        {
            let mut tasks = self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            while tasks.try_join_next().is_some() {}
        }
        if self.content_slots.available_permits() == 0 && self.acl_slots.available_permits() == 0 {
            return Ok(report);
        }
        let store = &self.ctx.store;
        let connectors: HashMap<String, ConnectorDoc> = store
            .list_connectors(None)
            .await?
            .into_iter()
            .map(|c| (c.id().to_owned(), c))
            .collect();
        let query = serde_json::json!({"terms": {"status": ["pending", "suspended"]}});
        let jobs = store.list_jobs(query, Some(1000)).await?;
        let mut busy_connectors: HashSet<(String, bool)> = HashSet::new();
        for job in jobs {
            if self.is_running(job.id()) {
                continue;
            }
            let Some(job_type) = job.job_type() else {
                tracing::warn!(job_id = job.id(), "job without a valid job_type; skipped");
                continue;
            };
            let connector_id = job.connector_id().unwrap_or_default().to_owned();
            let connector = connectors.get(&connector_id);
            if connector.is_none_or(ConnectorDoc::is_deleted) {
                match fail_orphan(&self.ctx, &job).await {
                    Ok(true) => report.errored.push(job.id().to_owned()),
                    Ok(false) => {}
                    Err(e) => {
                        tracing::warn!(job_id = job.id(), error = %e, "cannot fail orphaned job")
                    }
                }
                continue;
            }
            let Some(connector) = connector else { continue };
            if !self.ctx.serves(connector) {
                continue;
            }
            let service_type = job
                .service_type()
                .or(connector.service_type())
                .unwrap_or_default()
                .to_owned();
            let source = match self.ctx.registry.get(&service_type) {
                Ok(s) => s,
                Err(e) => {
                    let first = self
                        .warned_types
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(service_type.clone());
                    if first {
                        tracing::warn!(job_id = job.id(), error = %e, "cannot run job");
                    }
                    continue;
                }
            };
            let key = (connector_id.clone(), job_type.is_content());
            if busy_connectors.contains(&key) {
                continue;
            }
            let slots = if job_type.is_content() {
                &self.content_slots
            } else {
                &self.acl_slots
            };
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                continue;
            };
            match self.start(job, job_type, source, permit).await {
                Ok(Some(id)) => {
                    busy_connectors.insert(key);
                    report.started.push(id);
                }
                Ok(None) => {
                    busy_connectors.insert(key);
                }
                Err(e) => tracing::warn!(connector_id, error = %e, "cannot start job"),
            }
        }
        Ok(report)
    }

    /// Claims and spawns one job; `None` when someone else got it first or the connector is busy.
    async fn start(
        &self,
        job: JobDoc,
        job_type: JobType,
        source: Arc<dyn DynConnector>,
        permit: OwnedSemaphorePermit,
    ) -> Result<Option<String>, ServiceError> {
        let store = &self.ctx.store;
        let connector_id = job.connector_id().unwrap_or_default().to_owned();
        let (status_field, error_field) = ConnectorDoc::sync_status_fields(job_type);
        // sync_starts: one job per connector and kind at a time.
        let started = retry_on_conflict(OCC_ATTEMPTS, || async {
            let c = store.connector(&connector_id).await?;
            if c.last_sync_status(job_type) == Some(JobStatus::InProgress) {
                return Ok(None);
            }
            let previous = c.raw().get(status_field).cloned().unwrap_or(Value::Null);
            let patch = Patch::new()
                .set(status_field, JobStatus::InProgress.as_str())
                .set(error_field, Value::Null);
            let c = store.update_connector(&c, &patch).await?;
            Ok(Some((c, previous)))
        })
        .await?;
        let Some((connector, previous_status)) = started else {
            return Ok(None);
        };
        let cursor = if job_type == JobType::Incremental {
            connector.sync_cursor()
        } else {
            None
        };
        let claimed = match store
            .claim_job(&job, &self.ctx.worker, cursor.clone())
            .await
        {
            Ok(j) => j,
            Err(e) => {
                // Someone else claimed or changed it: give the connector slot back.
                let revert = retry_on_conflict(OCC_ATTEMPTS, || async {
                    let c = store.connector(&connector_id).await?;
                    store
                        .update_connector(
                            &c,
                            &Patch::new().set(status_field, previous_status.clone()),
                        )
                        .await
                })
                .await;
                if let Err(re) = revert {
                    tracing::warn!(connector_id, error = %re, "cannot reset connector sync status");
                }
                return match e {
                    StoreError::Conflict { .. } | StoreError::IllegalTransition { .. } => Ok(None),
                    other => Err(other.into()),
                };
            }
        };
        let job_id = claimed.id().to_owned();
        tracing::info!(job_id, connector_id, service_type = source.service_type(), %job_type, "job claimed");
        let running = Running {
            cancel: CancellationToken::new(),
            reason: Arc::default(),
        };
        let cancel = running.cancel.clone();
        let reason = running.reason.clone();
        self.running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(job_id.clone(), running);
        let ctx = self.ctx.clone();
        let runs = self.running.clone();
        let wake = self.wake.clone();
        let id = job_id.clone();
        let mut tasks = self
            .tasks
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        tasks.spawn(async move {
            run_job(&ctx, claimed, connector, job_type, source, cancel, reason).await;
            runs.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .remove(&id);
            drop(permit);
            wake.notify_one();
        });
        Ok(Some(job_id))
    }

    /// Cancels every running job as a shutdown (they end `suspended`) and waits up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        for r in self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
        {
            set_reason(&r.reason, StopReason::Shutdown);
            r.cancel.cancel();
        }
        let mut tasks = std::mem::take(
            &mut *self
                .tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner),
        );
        let wait = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(grace, wait).await.is_err() {
            tracing::warn!("running jobs did not stop in time");
        }
    }
}

/// Marks a job of a missing or soft-deleted connector `error` (W17). `false` if the job moved on.
pub(crate) async fn fail_orphan(ctx: &ServiceContext, job: &JobDoc) -> Result<bool, StoreError> {
    let store = &ctx.store;
    let message = format!(
        "connector {} was deleted",
        job.connector_id().unwrap_or("<none>")
    );
    let id = job.id().to_owned();
    retry_on_conflict(OCC_ATTEMPTS, || async {
        let Some(job) = store.get_job(&id).await? else {
            return Ok(false);
        };
        if job.status()?.is_terminal() {
            return Ok(false);
        }
        store
            .transition_job(
                &job,
                JobStatus::Error,
                Patch::new().set("error", message.as_str()),
            )
            .await?;
        tracing::warn!(job_id = id, error = %message, "job failed");
        Ok(true)
    })
    .await
}

/// Persists progress of one running job.
struct Reporter {
    store: crate::protocol::Store,
    job_id: String,
    counters: Mutex<JobCounters>,
}

impl Reporter {
    fn current(&self) -> JobCounters {
        *self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[async_trait::async_trait]
impl JobReporter for Reporter {
    fn counters(&self, counters: JobCounters) {
        *self
            .counters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = counters;
    }

    async fn checkpoint(&self, checkpoint: Value) -> Result<(), ReportError> {
        self.store
            .report_job(&self.job_id, &self.current(), Some(&checkpoint))
            .await
            .map(|_| ())
            .map_err(|e| ReportError(e.to_string()))
    }
}

/// How long a cancelled sync may take to stop before it is abandoned.
const CANCEL_GRACE: Duration = Duration::from_secs(5);

/// How often a running job's document is read (cancellation latency).
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Runs one claimed job to its end and writes the outcome, inside a `job` span that names the
/// job on every log line and trace (connector id, job id, service type, job type).
async fn run_job(
    ctx: &ServiceContext,
    job: JobDoc,
    connector: ConnectorDoc,
    job_type: JobType,
    source: Arc<dyn DynConnector>,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
) {
    use tracing::Instrument;
    let span = crate::telemetry::otel::job_span(
        connector.id(),
        job.id(),
        source.service_type(),
        job_type.as_str(),
    );
    run_job_in_span(ctx, job, connector, job_type, source, cancel, reason)
        .instrument(span)
        .await
}

async fn run_job_in_span(
    ctx: &ServiceContext,
    job: JobDoc,
    connector: ConnectorDoc,
    job_type: JobType,
    source: Arc<dyn DynConnector>,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
) {
    use tracing::Instrument;
    let job_id = job.id().to_owned();
    let connector_id = connector.id().to_owned();
    tracing::info!("job started");
    let metrics = crate::telemetry::metrics::metrics();
    metrics.job_started(job_type.as_str());
    let reporter = Arc::new(Reporter {
        store: ctx.store.clone(),
        job_id: job_id.clone(),
        counters: Mutex::default(),
    });
    let outcome = match build_spec(ctx, &job, &connector, job_type) {
        Err(message) => JobOutcome::Failed {
            counters: JobCounters::default(),
            error: message,
        },
        Ok((spec, es)) => {
            let job_ctx = JobContext {
                es,
                cancel: cancel.clone(),
                reporter: reporter.clone(),
            };
            // Both tasks stay in the job span: their log lines name the job, and the sync's
            // own spans (mailboxes, bulk requests, HTTP calls) become children of it.
            let watcher = tokio::spawn(
                watch(
                    ctx.clone(),
                    job_id.clone(),
                    reporter.clone(),
                    cancel.clone(),
                    reason.clone(),
                )
                .in_current_span(),
            );
            let mut run =
                tokio::spawn(async move { source.run_job(spec, job_ctx).await }.in_current_span());
            // A sync that ignores its cancel token is abandoned after a grace period, so a
            // cancel or a shutdown always ends the job.
            let grace = async {
                cancel.cancelled().await;
                tokio::time::sleep(CANCEL_GRACE).await;
            };
            let outcome = tokio::select! {
                joined = &mut run => match joined {
                    Ok(o) => o,
                    Err(e) => JobOutcome::Failed {
                        counters: reporter.current(),
                        error: format!("the connector crashed: {e}"),
                    },
                },
                () = grace => {
                    tracing::warn!(job_id, "the sync did not stop within the grace period; abandoned");
                    run.abort();
                    JobOutcome::Interrupted { counters: reporter.current() }
                }
            };
            watcher.abort();
            let _ = watcher.await;
            outcome
        }
    };
    let counters = outcome.counters();
    metrics.documents(
        &connector_id,
        counters.indexed_document_count,
        counters.deleted_document_count,
        0,
    );
    let reason = *reason
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    match finish(ctx, &job_id, job_type, outcome, reason).await {
        Ok(status) => metrics.job_finished(
            job_type.as_str(),
            status.map(JobStatus::as_str).unwrap_or("lost"),
        ),
        Err(e) => {
            metrics.job_finished(job_type.as_str(), "unrecorded");
            tracing::error!(job_id, error = %e, "cannot record the end of the job");
        }
    }
}

fn build_spec(
    ctx: &ServiceContext,
    job: &JobDoc,
    connector: &ConnectorDoc,
    job_type: JobType,
) -> Result<(JobSpec, crate::EsClient), String> {
    let filtering = job.filtering().map_err(|e| e.to_string())?;
    let es = ctx.data_client(connector.id()).map_err(|e| e.to_string())?;
    let spec = JobSpec {
        job_id: job.id().to_owned(),
        connector_id: connector.id().to_owned(),
        job_type,
        service_type: job
            .service_type()
            .or(connector.service_type())
            .unwrap_or_default()
            .to_owned(),
        index_name: job
            .index_name()
            .ok_or_else(|| "the job has no connector.index_name".to_owned())?
            .to_owned(),
        language: job.language().map(str::to_owned),
        pipeline: job.pipeline(),
        configuration: job.configuration(),
        filtering,
        features: connector.features(),
        sync_cursor: job.sync_cursor(),
        checkpoint: job.checkpoint(),
    };
    Ok((spec, es))
}

/// Reads the job every second (cancellation, loss) and reports counters every few seconds.
async fn watch(
    ctx: ServiceContext,
    job_id: String,
    reporter: Arc<Reporter>,
    cancel: CancellationToken,
    reason: Arc<Mutex<Option<StopReason>>>,
) {
    let report_every = (ctx.config.job_stale_threshold() / 4)
        .clamp(Duration::from_secs(1), Duration::from_secs(10));
    let mut last_report = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        match ctx.store.get_job(&job_id).await {
            Ok(None) => {
                set_reason(&reason, StopReason::Lost);
                cancel.cancel();
                return;
            }
            Ok(Some(job)) => match job.status() {
                Ok(JobStatus::InProgress) => {}
                Ok(JobStatus::Canceling) => {
                    tracing::info!(job_id, "cancel requested");
                    set_reason(&reason, StopReason::Cancel);
                    cancel.cancel();
                    return;
                }
                _ => {
                    set_reason(&reason, StopReason::Lost);
                    cancel.cancel();
                    return;
                }
            },
            Err(e) => tracing::warn!(job_id, error = %e, "cannot read running job"),
        }
        if last_report.elapsed() >= report_every {
            let counters = reporter.current();
            match ctx.store.report_job(&job_id, &counters, None).await {
                Ok(_) => last_report = tokio::time::Instant::now(),
                Err(e) => tracing::warn!(job_id, error = %e, "cannot report job progress"),
            }
        }
    }
}

/// Writes the job's final (or suspended) state and the connector's bookkeeping (§6.4).
async fn finish(
    ctx: &ServiceContext,
    job_id: &str,
    job_type: JobType,
    outcome: JobOutcome,
    reason: Option<StopReason>,
) -> Result<Option<JobStatus>, ServiceError> {
    let store = &ctx.store;
    let counters = outcome.counters();
    let (mut to, error, cursor) = match (&outcome, reason) {
        (JobOutcome::Completed { cursor, .. }, _) => (JobStatus::Completed, None, cursor.clone()),
        (JobOutcome::Failed { error, .. }, _) => (JobStatus::Error, Some(error.clone()), None),
        (JobOutcome::Interrupted { .. }, Some(StopReason::Cancel)) => {
            (JobStatus::Canceled, None, None)
        }
        (JobOutcome::Interrupted { .. }, Some(StopReason::Shutdown)) => {
            (JobStatus::Suspended, None, None)
        }
        (JobOutcome::Interrupted { .. }, Some(StopReason::Lost)) => {
            tracing::warn!(job_id, "job was finished elsewhere; nothing to record");
            return Ok(None);
        }
        (JobOutcome::Interrupted { .. }, None) => (
            JobStatus::Error,
            Some("the sync stopped without being asked to".to_owned()),
            None,
        ),
    };
    let job = retry_on_conflict(OCC_ATTEMPTS + 2, || {
        let error = error.clone();
        async move {
            let Some(job) = store.get_job(job_id).await? else {
                return Ok(None);
            };
            let current = job.status()?;
            if !matches!(current, JobStatus::InProgress | JobStatus::Canceling) {
                return Ok(None);
            }
            // A cancel request wins over a shutdown or a late completion.
            let target = if current == JobStatus::Canceling
                && matches!(to, JobStatus::Suspended | JobStatus::Completed)
            {
                JobStatus::Canceled
            } else {
                to
            };
            let mut patch =
                Patch::new().set("error", error.map(Value::from).unwrap_or(Value::Null));
            counters_patch(&mut patch, &counters);
            if let (true, Some(index)) = (target != JobStatus::Suspended, job.index_name()) {
                match store.count(index).await {
                    Ok(n) => patch.push("total_document_count", n.unwrap_or(0)),
                    Err(e) => tracing::warn!(job_id, error = %e, "cannot count the index"),
                }
            }
            store.transition_job(&job, target, patch).await.map(Some)
        }
    })
    .await?;
    let Some(job) = job else {
        tracing::warn!(job_id, "job changed elsewhere before its end was recorded");
        return Ok(None);
    };
    to = job.status()?;
    tracing::info!(
        job_id,
        status = %to,
        indexed = counters.indexed_document_count,
        deleted = counters.deleted_document_count,
        error = error.as_deref().unwrap_or(""),
        "job ended"
    );
    let Some(connector_id) = job.connector_id() else {
        return Ok(Some(to));
    };
    sync_done(
        ctx,
        connector_id,
        job_type,
        to,
        error.as_deref(),
        &counters,
        cursor,
    )
    .await?;
    Ok(Some(to))
}

/// The connector side of a job's end (spec §6.4).
pub(crate) async fn sync_done(
    ctx: &ServiceContext,
    connector_id: &str,
    job_type: JobType,
    status: JobStatus,
    error: Option<&str>,
    counters: &JobCounters,
    cursor: Option<Value>,
) -> Result<(), ServiceError> {
    let store = &ctx.store;
    let (status_field, error_field) = ConnectorDoc::sync_status_fields(job_type);
    let error = match (status, error) {
        (JobStatus::Error, None) => Some("unknown error"),
        (_, e) => e,
    };
    retry_on_conflict(OCC_ATTEMPTS + 2, || {
        let cursor = cursor.clone();
        async move {
            let Some(c) = store.get_connector(connector_id).await? else {
                return Ok(());
            };
            let mut patch = Patch::new()
                .set(status_field, status.as_str())
                .set(error_field, error.map(Value::from).unwrap_or(Value::Null))
                .set("last_synced", now_timestamp());
            if status.is_terminal() {
                patch.push(
                    "last_indexed_document_count",
                    counters.indexed_document_count,
                );
                patch.push(
                    "last_deleted_document_count",
                    counters.deleted_document_count,
                );
            }
            if let (true, JobStatus::Completed, Some(cursor)) =
                (job_type.is_content(), status, cursor)
            {
                patch.push("sync_cursor", cursor);
            }
            let target = crate::state::connector_status_after_job(Some(status));
            if target == ConnectorStatus::Error {
                patch.push("error", error.unwrap_or("unknown error"));
            } else {
                patch.push("error", Value::Null);
            }
            if c.status()
                .is_some_and(|from| crate::state::connector_transition_allowed(from, target))
            {
                store.transition_connector(&c, target, patch).await?;
            } else {
                // Keep the status (e.g. `needs_configuration`); record the job's end only.
                let patch = Patch(patch.0.into_iter().filter(|(k, _)| k != "error").collect());
                store.update_connector(&c, &patch).await?;
            }
            Ok(())
        }
    })
    .await?;
    Ok(())
}
