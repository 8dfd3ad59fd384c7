//! The scheduler (spec §7.1, without W1/W3/W6/W10).
//!
//! Every pass lists all connectors and processes **every** served one, at most
//! `service.max_concurrent_scheduling_tasks` at a time (W1). Per connector:
//!
//! 1. **Prepare** (self-managed connectors, spec §7.1 prepare): a connector listed in
//!    `connectors` without `service_type` gets the configured one; an empty `configuration` gets
//!    the source's default configuration, its `features`, and status `needs_configuration`;
//!    fields the source added since are filled in.
//! 2. **Heartbeat**: `last_seen` when older than `service.heartbeat` (and once per process).
//! 3. **Validation**: `needs_configuration` → `configured` once the stored values pass the local
//!    checks; then local checks + remote `validate_config` + `ping` + the enabled schedules'
//!    cron expressions → `connected`, or `error` with the message. Only when the configuration
//!    (or schedules) changed since this process last validated them (W3); a failed validation is
//!    retried after `service.heartbeat`, and a connector whose stored status disagrees with the
//!    remembered result (e.g. a job failure set `error`) is revalidated at most once a minute.
//! 4. **Sync rules**: an `edited` DEFAULT draft is validated with the source; the result is
//!    stored on the draft and a valid draft is activated. A malformed draft becomes `invalid`;
//!    the connector is never set to `error` for it (W10).
//! 5. **Schedules** (access control when DLS is on, incremental when both the connector and the
//!    source support it, full): a job is created when the next occurrence after the last
//!    scheduled one (or after the start of this process, for a never-scheduled connector) has
//!    passed, unless a job of that type is pending, running, canceling or suspended.
//!
//! **Missed runs** (`crate::cron::due_since`): occurrences missed while the service was down (or
//! while an earlier job of the type was still active) are not replayed one by one: they fire
//! **once**, at the next pass that finds the type free, and the latest missed occurrence is
//! recorded as `last_*_scheduled_at`, so the next job waits for the following occurrence. A type
//! never scheduled counts from the start of this process.
//!
//! Two scheduler processes cannot create the same job twice: the creation is preceded by a
//! conditional write (`if_seq_no`/`if_primary_term`) of `last_*_scheduled_at`.

use std::{
    collections::HashMap,
    hash::{Hash, Hasher},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde_json::{Map, Value};

use crate::{
    model::{
        ConnectorStatus, Features, FilteringRules, FilteringValidation, JobType, TriggerMethod,
        ValidationError, ValidationState, timestamp,
    },
    protocol::{ConnectorDoc, OCC_ATTEMPTS, Patch, StoreError, retry_on_conflict},
    source::DynConnector,
};

use super::{ServiceContext, ServiceError};
use crate::cron::{QuartzCron, due_since};

/// What a pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PassReport {
    /// Connectors processed.
    pub processed: usize,
    /// Connectors whose processing failed (logged; the pass carries on).
    pub failed: usize,
    /// Ids of the jobs created.
    pub jobs_created: Vec<String>,
}

#[derive(Debug, Clone)]
struct Memo {
    hash: u64,
    result: Result<(), String>,
    at: Instant,
}

/// The scheduling service.
pub struct Scheduler {
    ctx: ServiceContext,
    started_at: DateTime<Utc>,
    validated: Mutex<HashMap<String, Memo>>,
    checked_in: Mutex<std::collections::HashSet<String>>,
}

/// How often a connector whose stored status disagrees with the last validation is rechecked.
const DISAGREEMENT_RECHECK: Duration = Duration::from_secs(60);

impl Scheduler {
    pub fn new(ctx: ServiceContext) -> Self {
        Self {
            ctx,
            started_at: Utc::now(),
            validated: Mutex::default(),
            checked_in: Mutex::default(),
        }
    }

    /// One pass over every served connector.
    pub async fn run_pass(&self) -> Result<PassReport, ServiceError> {
        let connectors = self.ctx.store.list_connectors(None).await?;
        let served: Vec<ConnectorDoc> = connectors
            .into_iter()
            .filter(|c| self.ctx.serves(c))
            .collect();
        for entry in self.ctx.config.connector_entries() {
            if !served.iter().any(|c| c.id() == entry.connector_id.0) {
                tracing::debug!(connector_id = %entry.connector_id.0, "configured connector not found (or deleted)");
            }
        }
        let report = Mutex::new(PassReport::default());
        let limit = self
            .ctx
            .config
            .service
            .max_concurrent_scheduling_tasks
            .max(1);
        futures::stream::iter(served)
            .for_each_concurrent(limit, |c| {
                let report = &report;
                async move {
                    let id = c.id().to_owned();
                    let result = self.process(&id).await;
                    let mut r = report.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    r.processed += 1;
                    match result {
                        Ok(jobs) => r.jobs_created.extend(jobs),
                        Err(e) => {
                            r.failed += 1;
                            tracing::warn!(connector_id = %id, error = %e, "cannot process connector");
                        }
                    }
                }
            })
            .await;
        Ok(report
            .into_inner()
            .unwrap_or_else(std::sync::PoisonError::into_inner))
    }

    /// Processes one connector; returns the ids of the jobs it created.
    pub async fn process(&self, id: &str) -> Result<Vec<String>, ServiceError> {
        let store = &self.ctx.store;
        let Some(doc) = store.get_connector(id).await? else {
            return Ok(Vec::new());
        };
        if !self.ctx.serves(&doc) {
            return Ok(Vec::new());
        }
        let configured_type = self.ctx.entry(id).and_then(|e| e.service_type.clone());
        let Some(service_type) = doc.service_type().map(str::to_owned).or(configured_type) else {
            tracing::warn!(
                connector_id = id,
                "connector has no service_type; set it in config.yml"
            );
            return Ok(Vec::new());
        };
        let Ok(source) = self.ctx.registry.get(&service_type) else {
            tracing::debug!(
                connector_id = id,
                service_type,
                "service type not built into this binary"
            );
            return Ok(Vec::new());
        };
        let doc = self.prepare(id, &service_type, &source).await?;
        self.heartbeat(&doc).await?;
        let Some(doc) = self.validate(id, &source).await? else {
            return Ok(Vec::new());
        };
        let features = doc.features();
        if features.sync_rules_enabled()
            && let Err(e) = self.sync_rules(id, &source).await
        {
            tracing::warn!(connector_id = id, error = %e, "cannot validate the sync rules draft");
        }
        let mut created = Vec::new();
        let source_features = source.features();
        let mut types = Vec::new();
        if features.document_level_security.enabled {
            types.push(JobType::AccessControl);
        }
        if features.incremental_sync.enabled && source_features.incremental_sync.enabled {
            types.push(JobType::Incremental);
        }
        types.push(JobType::Full);
        for job_type in types {
            if let Some(job) = self.schedule(id, job_type).await? {
                created.push(job);
            }
        }
        Ok(created)
    }

    /// Step 1: service type, default configuration, features.
    async fn prepare(
        &self,
        id: &str,
        service_type: &str,
        source: &Arc<dyn DynConnector>,
    ) -> Result<ConnectorDoc, ServiceError> {
        let store = &self.ctx.store;
        let listed = self.ctx.entry(id).is_some();
        Ok(retry_on_conflict(OCC_ATTEMPTS, || async {
            let doc = store.connector(id).await?;
            let mut patch = Patch::new();
            if doc.service_type().is_none() {
                patch.push("service_type", service_type);
            }
            let defaults = source.default_configuration();
            let stored = doc.configuration();
            let mut new_status = None;
            if stored.is_empty() {
                patch.push("configuration", Value::Object(defaults));
                new_status = Some(ConnectorStatus::NeedsConfiguration);
            } else {
                let filled = fill_configuration(&stored, &defaults);
                if filled != stored {
                    patch.push("configuration", Value::Object(filled));
                }
            }
            if listed {
                let wanted = merge_features(&doc.features(), &source.features());
                if wanted != doc.features() {
                    patch.push(
                        "features",
                        serde_json::to_value(&wanted).unwrap_or(Value::Null),
                    );
                }
            }
            if doc.status() == Some(ConnectorStatus::Created) {
                new_status = Some(ConnectorStatus::NeedsConfiguration);
            }
            match new_status {
                Some(to)
                    if doc.status().is_none_or(|from| {
                        crate::state::connector_transition_allowed(from, to)
                    }) =>
                {
                    tracing::info!(connector_id = id, "connector prepared; needs configuration");
                    store.transition_connector(&doc, to, patch).await
                }
                _ if patch.is_empty() => Ok(doc),
                _ => store.update_connector(&doc, &patch).await,
            }
        })
        .await?)
    }

    /// Step 2: `last_seen`.
    async fn heartbeat(&self, doc: &ConnectorDoc) -> Result<(), ServiceError> {
        let first = self
            .checked_in
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(doc.id().to_owned());
        let stale = doc.last_seen().is_none_or(|t| {
            Utc::now()
                .signed_duration_since(t)
                .to_std()
                .unwrap_or_default()
                >= self.ctx.config.heartbeat()
        });
        if first || stale {
            self.ctx.store.check_in(doc).await?;
        }
        Ok(())
    }

    /// Step 3. Returns the connector when it is ready to sync (`connected`).
    async fn validate(
        &self,
        id: &str,
        source: &Arc<dyn DynConnector>,
    ) -> Result<Option<ConnectorDoc>, ServiceError> {
        let store = &self.ctx.store;
        let mut doc = store.connector(id).await?;
        let configuration = doc.configuration();
        if doc.status() == Some(ConnectorStatus::NeedsConfiguration) {
            match source.check_configuration(&configuration) {
                Ok(()) => {
                    doc = store
                        .transition_connector(
                            &doc,
                            ConnectorStatus::Configured,
                            Patch::new().set("error", Value::Null),
                        )
                        .await?;
                }
                Err(e) => {
                    tracing::debug!(connector_id = id, error = %e, "connector still needs configuration");
                    return Ok(None);
                }
            }
        }
        let Some(status) = doc.status() else {
            return Ok(None);
        };
        if matches!(
            status,
            ConnectorStatus::Created | ConnectorStatus::NeedsConfiguration
        ) {
            return Ok(None);
        }
        let hash = validation_hash(&doc);
        let memo = self
            .validated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(id)
            .cloned();
        if let Some(memo) = memo.filter(|m| m.hash == hash) {
            let agrees = match &memo.result {
                Ok(()) => status == ConnectorStatus::Connected,
                Err(msg) => status == ConnectorStatus::Error && doc.error() == Some(msg.as_str()),
            };
            let recheck_after = match (&memo.result, agrees) {
                (_, false) => DISAGREEMENT_RECHECK,
                (Ok(()), true) => Duration::MAX,
                (Err(_), true) => self.ctx.config.heartbeat(),
            };
            if memo.at.elapsed() < recheck_after {
                return Ok(memo.result.is_ok().then_some(doc).filter(|_| agrees));
            }
        }
        let result = self.check(&doc, &configuration, source).await;
        self.validated
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                id.to_owned(),
                Memo {
                    hash,
                    result: result.clone(),
                    at: Instant::now(),
                },
            );
        let outcome = retry_on_conflict(OCC_ATTEMPTS, || {
            let result = result.clone();
            async move {
                let doc = store.connector(id).await?;
                match &result {
                    Ok(()) => {
                        store
                            .transition_connector(
                                &doc,
                                ConnectorStatus::Connected,
                                Patch::new().set("error", Value::Null),
                            )
                            .await
                    }
                    Err(msg) => {
                        store
                            .transition_connector(
                                &doc,
                                ConnectorStatus::Error,
                                Patch::new().set("error", msg.as_str()),
                            )
                            .await
                    }
                }
            }
        })
        .await;
        match (outcome, result) {
            (Ok(doc), Ok(())) => {
                tracing::info!(connector_id = id, "connector validated");
                Ok(Some(doc))
            }
            (Ok(_), Err(msg)) => {
                tracing::warn!(connector_id = id, error = %msg, "connector validation failed");
                Ok(None)
            }
            (Err(StoreError::IllegalTransition { .. }), _) => Ok(None),
            (Err(e), _) => Err(e.into()),
        }
    }

    async fn check(
        &self,
        doc: &ConnectorDoc,
        configuration: &Map<String, Value>,
        source: &Arc<dyn DynConnector>,
    ) -> Result<(), String> {
        for job_type in JobType::ALL {
            let (enabled, interval) = doc.schedule(job_type);
            if enabled {
                QuartzCron::parse(interval.as_deref().unwrap_or_default())
                    .map_err(|e| format!("{job_type} schedule: {e}"))?;
            }
        }
        source
            .check_configuration(configuration)
            .map_err(|e| e.to_string())?;
        source
            .validate_config(configuration)
            .await
            .map_err(|e| e.to_string())?;
        source
            .ping(configuration)
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Step 4: the `edited` DEFAULT draft.
    async fn sync_rules(
        &self,
        id: &str,
        source: &Arc<dyn DynConnector>,
    ) -> Result<(), ServiceError> {
        let store = &self.ctx.store;
        retry_on_conflict(OCC_ATTEMPTS, || async {
            let doc = store.connector(id).await?;
            let Some(i) = doc.default_filtering_index() else {
                return Ok(());
            };
            let draft = doc.filtering()[i]["draft"].clone();
            if draft["validation"]["state"].as_str() != Some("edited") {
                return Ok(());
            }
            let validation = match serde_json::from_value::<FilteringRules>(draft) {
                Ok(rules) => source.validate_filtering(&rules).await,
                Err(e) => FilteringValidation {
                    state: ValidationState::Invalid,
                    errors: vec![ValidationError {
                        ids: vec!["draft".into()],
                        messages: vec![format!("malformed sync rules draft: {e}")],
                    }],
                },
            };
            let activate = validation.state == ValidationState::Valid;
            tracing::info!(connector_id = id, state = ?validation.state, "sync rules draft validated");
            store
                .store_filtering_validation(&doc, &validation, activate)
                .await
                .map(|_| ())
        })
        .await?;
        Ok(())
    }

    /// Step 5 for one job type; returns the id of the job created.
    async fn schedule(&self, id: &str, job_type: JobType) -> Result<Option<String>, ServiceError> {
        let store = &self.ctx.store;
        let started_at = self.started_at;
        Ok(retry_on_conflict(OCC_ATTEMPTS, || async move {
            let doc = store.connector(id).await?;
            if doc.is_deleted() {
                return Ok(None);
            }
            let (enabled, interval) = doc.schedule(job_type);
            if !enabled {
                return Ok(None);
            }
            let Ok(schedule) = QuartzCron::parse(interval.as_deref().unwrap_or_default()) else {
                // Reported by validation.
                return Ok(None);
            };
            let since = doc.last_scheduled_at(job_type).unwrap_or(started_at);
            let Some(occurrence) = due_since(&schedule, since, Utc::now()) else {
                return Ok(None);
            };
            if store.active_job_exists(id, job_type).await? {
                tracing::debug!(connector_id = id, %job_type, "job due but one is still active");
                return Ok(None);
            }
            let field = ConnectorDoc::scheduled_at_field(job_type);
            let doc = store
                .update_connector(&doc, &Patch::new().set(field, timestamp(occurrence)))
                .await?;
            let job = store
                .create_job(&doc, job_type, TriggerMethod::Scheduled)
                .await?;
            tracing::info!(connector_id = id, job_id = %job, %job_type, "scheduled sync job created");
            Ok(Some(job))
        })
        .await?)
    }
}

/// Hash of what validation depends on: configuration, schedules, service type.
fn validation_hash(doc: &ConnectorDoc) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    let raw = doc.raw();
    for key in ["configuration", "scheduling", "service_type"] {
        raw.get(key)
            .map(Value::to_string)
            .unwrap_or_default()
            .hash(&mut h);
    }
    h.finish()
}

/// Adds fields of `defaults` missing from `stored`, and properties missing from stored fields
/// (stored values win).
fn fill_configuration(
    stored: &Map<String, Value>,
    defaults: &Map<String, Value>,
) -> Map<String, Value> {
    let mut out = stored.clone();
    for (name, default) in defaults {
        match out.get_mut(name) {
            None => {
                out.insert(name.clone(), default.clone());
            }
            Some(Value::Object(field)) => {
                if let Value::Object(d) = default {
                    for (k, v) in d {
                        if !field.contains_key(k) {
                            field.insert(k.clone(), v.clone());
                        }
                    }
                }
            }
            Some(_) => {}
        }
    }
    out
}

/// The source's features with stored keys the source does not define kept.
fn merge_features(stored: &Features, source: &Features) -> Features {
    let mut out = source.clone();
    for (k, v) in &stored.other {
        out.other.entry(k.clone()).or_insert_with(|| v.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn fill_keeps_stored_values() {
        let stored = json!({"a": {"value": "x", "label": "A"}})
            .as_object()
            .cloned()
            .unwrap();
        let defaults = json!({"a": {"value": "", "label": "A", "order": 1}, "b": {"value": 2}})
            .as_object()
            .cloned()
            .unwrap();
        let out = fill_configuration(&stored, &defaults);
        assert_eq!(
            Value::Object(out),
            json!({"a": {"value": "x", "label": "A", "order": 1}, "b": {"value": 2}})
        );
    }
}
