//! Persistence of connectors and sync jobs in the system indices (spec §4–§6).
//!
//! [`Store`] is the one interface. It reads documents with their `_seq_no`/`_primary_term` and
//! writes the whole raw document back with `if_seq_no`/`if_primary_term`, so fields this version
//! does not know survive and concurrent writers are detected (409 → [`StoreError::Conflict`];
//! callers reload and decide again, see [`retry_on_conflict`]). Status changes go through
//! [`Store::transition_job`] / [`Store::transition_connector`], which refuse illegal transitions.
//!
//! Where the cluster has the `_connector` API (and the default index names are used) the store
//! also uses it for job creation, claims, stats, check-ins and filtering (spec §5.1); otherwise
//! every operation is a direct document operation. Listing pages with `search_after` over a
//! point in time (scroll where PIT is missing), never `from`/`size` (W18).

pub mod api;
pub mod docs;
pub mod indices;

use std::future::Future;

use serde_json::{Map, Value, json};

use crate::{
    Classify, ErrorKind, EsClient, EsError,
    config::{DEFAULT_CONNECTORS_INDEX, DEFAULT_JOBS_INDEX},
    es::{HttpMethod, encode_segment},
    job::JobCounters,
    model::{ConnectorStatus, JobStatus, JobType, TriggerMethod, now_timestamp},
};

pub use docs::{
    ConnectorDoc, JobDoc, Patch, Versioned, new_connector_document, new_job_document,
    parse_timestamp,
};

/// Failures of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Es(#[from] EsError),
    #[error("document {id} not found in {index}")]
    NotFound { index: String, id: String },
    #[error("document {id} in {index} was changed concurrently")]
    Conflict { index: String, id: String },
    #[error("illegal {what} status transition of {id}: {from} -> {to}")]
    IllegalTransition {
        what: &'static str,
        id: String,
        from: String,
        to: String,
    },
    #[error("document {id} is malformed: {message}")]
    Malformed { id: String, message: String },
    #[error("{0}")]
    Invalid(String),
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            StoreError::Es(e) => e.kind(),
            StoreError::NotFound { .. } => ErrorKind::NotFound,
            StoreError::Conflict { .. } => ErrorKind::Conflict,
            StoreError::IllegalTransition { .. }
            | StoreError::Malformed { .. }
            | StoreError::Invalid(_) => ErrorKind::Fatal,
        }
    }
}

/// Runs a read-decide-write closure again (up to `attempts` times) while it ends in a conflict.
pub async fn retry_on_conflict<T, F, Fut>(attempts: u32, mut f: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let mut n = 0;
    loop {
        n += 1;
        match f().await {
            Err(StoreError::Conflict { .. }) if n < attempts => {
                tokio::time::sleep(std::time::Duration::from_millis(
                    10 * u64::from(n) + rand::random::<u64>() % 20,
                ))
                .await;
            }
            other => return other,
        }
    }
}

/// Names of the two system aliases.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexNames {
    pub connectors: String,
    pub jobs: String,
}

impl Default for IndexNames {
    fn default() -> Self {
        Self {
            connectors: DEFAULT_CONNECTORS_INDEX.into(),
            jobs: DEFAULT_JOBS_INDEX.into(),
        }
    }
}

impl IndexNames {
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// How the store talks to the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreMode {
    /// Direct document operations on the system indices.
    Direct,
    /// The `_connector` API where it exists (create/claim/stats/check-in/filtering), direct
    /// document operations for the rest (as Elastic's service does).
    ConnectorApi,
}

/// The persistence interface for connectors and sync jobs.
#[derive(Debug, Clone)]
pub struct Store {
    es: EsClient,
    names: IndexNames,
    mode: StoreMode,
    point_in_time: bool,
}

/// Optimistic-concurrency attempts for read-modify-write (Elastic: 3).
pub const OCC_ATTEMPTS: u32 = 3;

/// Page size of listings.
const PAGE_SIZE: usize = 500;

impl Store {
    pub fn new(es: EsClient, names: IndexNames, mode: StoreMode, point_in_time: bool) -> Self {
        Self {
            es,
            names,
            mode,
            point_in_time,
        }
    }

    /// Detects what the cluster can do. The connector API is used only when `use_api` (the
    /// `feature_use_connectors_api` setting), the cluster has it, and the default index names
    /// are configured (the API works on those only).
    pub async fn detect(
        es: EsClient,
        names: IndexNames,
        use_api: bool,
    ) -> Result<Self, StoreError> {
        let info = es.info().await?;
        let caps = es.capabilities(&info).await?;
        let mode = if use_api && caps.connector_api && names.is_default() {
            StoreMode::ConnectorApi
        } else {
            StoreMode::Direct
        };
        tracing::debug!(?mode, pit = caps.point_in_time, "store capabilities");
        Ok(Self::new(es, names, mode, caps.point_in_time))
    }

    pub fn es(&self) -> &EsClient {
        &self.es
    }

    pub fn names(&self) -> &IndexNames {
        &self.names
    }

    pub fn mode(&self) -> StoreMode {
        self.mode
    }

    /// Creates the system indices (with explicit mappings) and their aliases when missing.
    pub async fn ensure_indices(&self) -> Result<(), StoreError> {
        indices::ensure_index(
            &self.es,
            &self.names.connectors,
            indices::connectors_mappings(),
        )
        .await?;
        indices::ensure_index(&self.es, &self.names.jobs, indices::jobs_mappings()).await?;
        Ok(())
    }

    async fn api(&self, req: api::ApiRequest) -> Result<Value, StoreError> {
        Ok(self
            .es
            .json(req.method, &req.path, &[], req.body.as_ref())
            .await?)
    }

    // ----- generic document operations -----

    async fn get(&self, index: &str, id: &str) -> Result<Option<Versioned>, StoreError> {
        let path = format!("/{}/_doc/{}", encode_segment(index), encode_segment(id));
        let resp = self.es.send(HttpMethod::Get, &path, &[], None).await?;
        if resp.status == 404 {
            return Ok(None);
        }
        if !resp.is_success() {
            return Err(crate::es::api_error(HttpMethod::Get, &path, &resp).into());
        }
        if resp.body["found"].as_bool() != Some(true) {
            return Ok(None);
        }
        Ok(Some(versioned_from_hit(&resp.body)?))
    }

    /// Writes the whole document back if nobody changed it since it was read.
    async fn put_versioned(
        &self,
        index: &str,
        doc: &Versioned,
        raw: Map<String, Value>,
        refresh: bool,
    ) -> Result<Versioned, StoreError> {
        let path = format!(
            "/{}/_doc/{}",
            encode_segment(index),
            encode_segment(&doc.id)
        );
        let mut query = vec![
            ("if_seq_no", doc.seq_no.to_string()),
            ("if_primary_term", doc.primary_term.to_string()),
        ];
        if refresh {
            query.push(("refresh", "true".into()));
        }
        let body = Value::Object(raw);
        let resp = self
            .es
            .send(HttpMethod::Put, &path, &query, Some(&body))
            .await?;
        if resp.status == 409 {
            return Err(StoreError::Conflict {
                index: index.to_owned(),
                id: doc.id.clone(),
            });
        }
        if !resp.is_success() {
            return Err(crate::es::api_error(HttpMethod::Put, &path, &resp).into());
        }
        let Value::Object(raw) = body else {
            return Err(StoreError::Invalid("document is not an object".into()));
        };
        Ok(Versioned {
            id: doc.id.clone(),
            seq_no: resp.body["_seq_no"].as_i64().unwrap_or(doc.seq_no + 1),
            primary_term: resp.body["_primary_term"]
                .as_i64()
                .unwrap_or(doc.primary_term),
            raw,
        })
    }

    async fn create_doc(
        &self,
        index: &str,
        id: Option<&str>,
        raw: &Map<String, Value>,
        refresh: bool,
    ) -> Result<String, StoreError> {
        let body = Value::Object(raw.clone());
        let query: Vec<(&str, String)> = if refresh {
            vec![("refresh", "true".to_owned())]
        } else {
            Vec::new()
        };
        let (path, method) = match id {
            Some(id) => (
                format!("/{}/_create/{}", encode_segment(index), encode_segment(id)),
                HttpMethod::Put,
            ),
            None => (format!("/{}/_doc", encode_segment(index)), HttpMethod::Post),
        };
        let resp = self.es.send(method, &path, &query, Some(&body)).await?;
        if resp.status == 409 {
            return Err(StoreError::Conflict {
                index: index.to_owned(),
                id: id.unwrap_or_default().to_owned(),
            });
        }
        if !resp.is_success() {
            return Err(crate::es::api_error(method, &path, &resp).into());
        }
        resp.body["_id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| StoreError::Invalid("no _id in the create answer".into()))
    }

    /// Every document matching `query`, sorted by `sort` (a `search_after` sort without the
    /// tiebreaker), at most `limit`.
    async fn search_all(
        &self,
        index: &str,
        query: Value,
        sort: Vec<Value>,
        limit: Option<usize>,
    ) -> Result<Vec<Versioned>, StoreError> {
        if self.point_in_time {
            self.search_pit(index, query, sort, limit).await
        } else {
            self.search_scroll(index, query, limit).await
        }
    }

    async fn search_pit(
        &self,
        index: &str,
        query: Value,
        mut sort: Vec<Value>,
        limit: Option<usize>,
    ) -> Result<Vec<Versioned>, StoreError> {
        let pit_path = format!("/{}/_pit", encode_segment(index));
        let opened = self
            .es
            .json(
                HttpMethod::Post,
                &pit_path,
                &[("keep_alive", "1m".into())],
                None,
            )
            .await?;
        let mut pit_id = opened["id"]
            .as_str()
            .ok_or_else(|| StoreError::Invalid("no id in the point-in-time answer".into()))?
            .to_owned();
        sort.push(json!({"_shard_doc": "asc"}));
        let mut out = Vec::new();
        let mut search_after: Option<Value> = None;
        let result = loop {
            let want = limit.map_or(PAGE_SIZE, |l| l.saturating_sub(out.len()).min(PAGE_SIZE));
            if want == 0 {
                break Ok(());
            }
            let mut body = json!({
                "size": want,
                "query": query,
                "sort": sort,
                "pit": {"id": pit_id, "keep_alive": "1m"},
                "seq_no_primary_term": true,
                "track_total_hits": false,
            });
            if let Some(sa) = &search_after {
                body["search_after"] = sa.clone();
            }
            let page = match self
                .es
                .json(HttpMethod::Post, "/_search", &[], Some(&body))
                .await
            {
                Ok(p) => p,
                Err(e) => break Err(e.into()),
            };
            if let Some(id) = page["pit_id"].as_str() {
                pit_id = id.to_owned();
            }
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            let n = hits.len();
            for hit in &hits {
                match versioned_from_hit(hit) {
                    Ok(v) => out.push(v),
                    Err(e) => tracing::warn!(error = %e, "skipping unreadable document"),
                }
            }
            search_after = hits.last().map(|h| h["sort"].clone());
            if n < want {
                break Ok(());
            }
        };
        let close = json!({"id": pit_id});
        if let Err(e) = self
            .es
            .send(HttpMethod::Delete, "/_pit", &[], Some(&close))
            .await
        {
            tracing::debug!(error = %e, "cannot close point in time");
        }
        result.map(|()| out)
    }

    async fn search_scroll(
        &self,
        index: &str,
        query: Value,
        limit: Option<usize>,
    ) -> Result<Vec<Versioned>, StoreError> {
        let path = format!("/{}/_search", encode_segment(index));
        let body = json!({
            "size": PAGE_SIZE,
            "query": query,
            "sort": ["_doc"],
            "seq_no_primary_term": true,
        });
        let mut page = self
            .es
            .json(
                HttpMethod::Post,
                &path,
                &[("scroll", "1m".into())],
                Some(&body),
            )
            .await?;
        let mut out = Vec::new();
        loop {
            let hits = page["hits"]["hits"].as_array().cloned().unwrap_or_default();
            if hits.is_empty() {
                break;
            }
            for hit in &hits {
                if let Ok(v) = versioned_from_hit(hit) {
                    out.push(v);
                }
            }
            if limit.is_some_and(|l| out.len() >= l) {
                break;
            }
            let Some(scroll_id) = page["_scroll_id"].as_str().map(str::to_owned) else {
                break;
            };
            page = self
                .es
                .json(
                    HttpMethod::Post,
                    "/_search/scroll",
                    &[],
                    Some(&json!({"scroll": "1m", "scroll_id": scroll_id})),
                )
                .await?;
        }
        if let Some(scroll_id) = page["_scroll_id"].as_str() {
            let _ = self
                .es
                .send(
                    HttpMethod::Delete,
                    "/_search/scroll",
                    &[],
                    Some(&json!({"scroll_id": scroll_id})),
                )
                .await;
        }
        // Scroll cannot sort stably; order by creation time here.
        out.sort_by(|a, b| {
            let ka = a
                .raw
                .get("created_at")
                .and_then(Value::as_str)
                .unwrap_or("");
            let kb = b
                .raw
                .get("created_at")
                .and_then(Value::as_str)
                .unwrap_or("");
            ka.cmp(kb).then_with(|| a.id.cmp(&b.id))
        });
        if let Some(l) = limit {
            out.truncate(l);
        }
        Ok(out)
    }

    // ----- connectors -----

    pub async fn get_connector(&self, id: &str) -> Result<Option<ConnectorDoc>, StoreError> {
        Ok(self
            .get(&self.names.connectors, id)
            .await?
            .map(ConnectorDoc))
    }

    /// Reads a connector that must exist.
    pub async fn connector(&self, id: &str) -> Result<ConnectorDoc, StoreError> {
        self.get_connector(id)
            .await?
            .ok_or_else(|| StoreError::NotFound {
                index: self.names.connectors.clone(),
                id: id.to_owned(),
            })
    }

    /// Creates a connector document (with `id` or an automatic one); returns its id.
    pub async fn create_connector(
        &self,
        id: Option<&str>,
        raw: &Map<String, Value>,
    ) -> Result<String, StoreError> {
        self.create_doc(&self.names.connectors, id, raw, true).await
    }

    /// All connector documents matching `query` (match_all when `None`).
    pub async fn list_connectors(
        &self,
        query: Option<Value>,
    ) -> Result<Vec<ConnectorDoc>, StoreError> {
        let query = query.unwrap_or_else(|| json!({"match_all": {}}));
        Ok(self
            .search_all(&self.names.connectors, query, Vec::new(), None)
            .await?
            .into_iter()
            .map(ConnectorDoc)
            .collect())
    }

    /// Writes non-status changes to a connector read earlier (conflict if it changed since).
    pub async fn update_connector(
        &self,
        doc: &ConnectorDoc,
        patch: &Patch,
    ) -> Result<ConnectorDoc, StoreError> {
        if patch.touches("status") {
            return Err(StoreError::Invalid(
                "status changes go through transition_connector".into(),
            ));
        }
        self.write_connector(doc, patch).await
    }

    async fn write_connector(
        &self,
        doc: &ConnectorDoc,
        patch: &Patch,
    ) -> Result<ConnectorDoc, StoreError> {
        let mut raw = doc.0.raw.clone();
        patch.apply(&mut raw);
        if raw == doc.0.raw {
            return Ok(doc.clone());
        }
        Ok(ConnectorDoc(
            self.put_versioned(&self.names.connectors, &doc.0, raw, false)
                .await?,
        ))
    }

    /// The one way to change a connector's status: checks the transition, then writes `status`
    /// plus `patch` with optimistic concurrency.
    pub async fn transition_connector(
        &self,
        doc: &ConnectorDoc,
        to: ConnectorStatus,
        patch: Patch,
    ) -> Result<ConnectorDoc, StoreError> {
        let from = doc.status();
        if !from.is_none_or(|from| crate::state::connector_transition_allowed(from, to)) {
            return Err(StoreError::IllegalTransition {
                what: "connector",
                id: doc.id().to_owned(),
                from: doc.status_str().unwrap_or("null").to_owned(),
                to: to.to_string(),
            });
        }
        let patch = patch.set("status", to.as_str());
        self.write_connector(doc, &patch).await
    }

    /// Heartbeat of a connector (`last_seen`).
    pub async fn check_in(&self, doc: &ConnectorDoc) -> Result<(), StoreError> {
        match self.mode {
            StoreMode::ConnectorApi => {
                self.api(api::check_in(doc.id())).await?;
            }
            StoreMode::Direct => {
                retry_on_conflict(OCC_ATTEMPTS, || async {
                    let fresh = self.connector(doc.id()).await?;
                    self.update_connector(&fresh, &Patch::new().set("last_seen", now_timestamp()))
                        .await
                })
                .await?;
            }
        }
        Ok(())
    }

    /// Soft delete (`deleted: true`, as `DELETE _connector/{id}` does) or removal of the document.
    pub async fn delete_connector(&self, id: &str, hard: bool) -> Result<(), StoreError> {
        if hard {
            let path = format!(
                "/{}/_doc/{}",
                encode_segment(&self.names.connectors),
                encode_segment(id)
            );
            let resp = self
                .es
                .send(
                    HttpMethod::Delete,
                    &path,
                    &[("refresh", "true".into())],
                    None,
                )
                .await?;
            if resp.status == 404 {
                return Err(StoreError::NotFound {
                    index: self.names.connectors.clone(),
                    id: id.to_owned(),
                });
            }
            if !resp.is_success() {
                return Err(crate::es::api_error(HttpMethod::Delete, &path, &resp).into());
            }
            return Ok(());
        }
        retry_on_conflict(OCC_ATTEMPTS, || async {
            let doc = self.connector(id).await?;
            self.update_connector(&doc, &Patch::new().set("deleted", true))
                .await
        })
        .await?;
        Ok(())
    }

    // ----- jobs -----

    pub async fn get_job(&self, id: &str) -> Result<Option<JobDoc>, StoreError> {
        Ok(self.get(&self.names.jobs, id).await?.map(JobDoc))
    }

    /// Reads a job that must exist.
    pub async fn job(&self, id: &str) -> Result<JobDoc, StoreError> {
        self.get_job(id).await?.ok_or_else(|| StoreError::NotFound {
            index: self.names.jobs.clone(),
            id: id.to_owned(),
        })
    }

    /// Creates a pending job for a connector; returns the job id.
    pub async fn create_job(
        &self,
        connector: &ConnectorDoc,
        job_type: JobType,
        trigger: TriggerMethod,
    ) -> Result<String, StoreError> {
        match self.mode {
            StoreMode::ConnectorApi => {
                let answer = self
                    .api(api::create_sync_job(connector.id(), job_type, trigger))
                    .await?;
                answer["id"]
                    .as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| StoreError::Invalid("no id in the _sync_job answer".into()))
            }
            StoreMode::Direct => {
                let raw = new_job_document(connector, job_type, trigger)?;
                self.create_doc(&self.names.jobs, None, &raw, false).await
            }
        }
    }

    /// Jobs matching `query`, oldest first, at most `limit`.
    pub async fn list_jobs(
        &self,
        query: Value,
        limit: Option<usize>,
    ) -> Result<Vec<JobDoc>, StoreError> {
        let sort = vec![json!({"created_at": {"order": "asc", "unmapped_type": "date"}})];
        Ok(self
            .search_all(&self.names.jobs, query, sort, limit)
            .await?
            .into_iter()
            .map(JobDoc)
            .collect())
    }

    /// Writes non-status changes to a job read earlier (conflict if it changed since).
    pub async fn update_job(&self, doc: &JobDoc, patch: &Patch) -> Result<JobDoc, StoreError> {
        if patch.touches("status") {
            return Err(StoreError::Invalid(
                "status changes go through transition_job".into(),
            ));
        }
        self.write_job(doc, patch).await
    }

    async fn write_job(&self, doc: &JobDoc, patch: &Patch) -> Result<JobDoc, StoreError> {
        let mut raw = doc.0.raw.clone();
        patch.apply(&mut raw);
        Ok(JobDoc(
            self.put_versioned(&self.names.jobs, &doc.0, raw, false)
                .await?,
        ))
    }

    /// The one way to change a job's status: checks the transition against the status of `doc`
    /// and writes `status` + `patch` only if the stored document is still `doc` (otherwise
    /// [`StoreError::Conflict`]). Terminal statuses also set `completed_at`, `canceled` sets
    /// `canceled_at`; every transition refreshes `last_seen`.
    pub async fn transition_job(
        &self,
        doc: &JobDoc,
        to: JobStatus,
        patch: Patch,
    ) -> Result<JobDoc, StoreError> {
        let from = doc.status()?;
        if !crate::state::job_transition_allowed(from, to) {
            return Err(StoreError::IllegalTransition {
                what: "job",
                id: doc.id().to_owned(),
                from: from.to_string(),
                to: to.to_string(),
            });
        }
        let now = now_timestamp();
        let mut patch = patch
            .set("status", to.as_str())
            .set("last_seen", now.clone());
        if to.is_terminal() {
            patch.push("completed_at", now.clone());
        }
        if to == JobStatus::Canceled {
            patch.push("canceled_at", now);
        }
        self.write_job(doc, &patch).await
    }

    /// Claims a pending or suspended job for this worker: `in_progress`, `started_at`,
    /// `worker_hostname`, `connector.sync_cursor` (incremental jobs). Exclusive: the write is
    /// conditional on the document read (W19). On the API path the `_claim` endpoint is called
    /// after the exclusive write so Elasticsearch records the claim its own way.
    pub async fn claim_job(
        &self,
        doc: &JobDoc,
        worker: &str,
        cursor: Option<Value>,
    ) -> Result<JobDoc, StoreError> {
        let patch = Patch::new()
            .set("started_at", now_timestamp())
            .set("worker_hostname", worker)
            .set(
                "connector.sync_cursor",
                cursor.clone().unwrap_or(Value::Null),
            )
            .set("error", Value::Null);
        let claimed = self
            .transition_job(doc, JobStatus::InProgress, patch)
            .await?;
        if self.mode == StoreMode::ConnectorApi {
            self.api(api::claim_sync_job(doc.id(), worker, cursor.as_ref()))
                .await?;
            return self.job(doc.id()).await;
        }
        Ok(claimed)
    }

    /// Periodic report of a running job: counters, `last_seen`, and (when given) the checkpoint
    /// in `metadata.checkpoint`. Retries on conflicts (the job may be changed concurrently, e.g.
    /// by a cancel request); never changes the status.
    pub async fn report_job(
        &self,
        id: &str,
        counters: &JobCounters,
        checkpoint: Option<&Value>,
    ) -> Result<JobDoc, StoreError> {
        if self.mode == StoreMode::ConnectorApi {
            let metadata = checkpoint.map(|c| json!({"checkpoint": c}));
            self.api(api::sync_job_stats(id, counters, metadata.as_ref(), None))
                .await?;
            return self.job(id).await;
        }
        retry_on_conflict(OCC_ATTEMPTS + 2, || async {
            let doc = self.job(id).await?;
            let mut patch = Patch::new().set("last_seen", now_timestamp());
            docs::counters_patch(&mut patch, counters);
            if let Some(c) = checkpoint {
                patch.push("metadata.checkpoint", c.clone());
            }
            self.update_job(&doc, &patch).await
        })
        .await
    }

    /// Cancels a job: `pending`/`suspended` → `canceled` at once (W9), `in_progress` →
    /// `canceling` (the worker stops it). Finished jobs cannot be canceled.
    pub async fn cancel_job(&self, id: &str) -> Result<JobDoc, StoreError> {
        retry_on_conflict(OCC_ATTEMPTS + 2, || async {
            let doc = self.job(id).await?;
            let from = doc.status()?;
            let action =
                crate::state::cancel_request(from).map_err(|_| StoreError::IllegalTransition {
                    what: "job",
                    id: id.to_owned(),
                    from: from.to_string(),
                    to: JobStatus::Canceled.to_string(),
                })?;
            let Some(to) = action.target_status() else {
                return Ok(doc);
            };
            let patch = Patch::new().set("cancelation_requested_at", now_timestamp());
            self.transition_job(&doc, to, patch).await
        })
        .await
    }

    /// Is a job of this connector and type pending, running, canceling or suspended?
    pub async fn active_job_exists(
        &self,
        connector_id: &str,
        job_type: JobType,
    ) -> Result<bool, StoreError> {
        let path = format!("/{}/_search", encode_segment(&self.names.jobs));
        let body = json!({
            "size": 1,
            "_source": false,
            "query": {"bool": {"filter": [
                {"term": {"connector.id": connector_id}},
                {"term": {"job_type": job_type.as_str()}},
                {"terms": {"status": ["pending", "in_progress", "canceling", "suspended"]}}
            ]}}
        });
        let page = self
            .es
            .json(HttpMethod::Post, &path, &[], Some(&body))
            .await?;
        Ok(page["hits"]["hits"]
            .as_array()
            .is_some_and(|h| !h.is_empty()))
    }

    /// Stores the validation result of the `DEFAULT` draft and, when `activate`, copies the
    /// draft to the active rules (spec §10.5). `doc` must have a `DEFAULT` entry.
    pub async fn store_filtering_validation(
        &self,
        doc: &ConnectorDoc,
        validation: &crate::model::FilteringValidation,
        activate: bool,
    ) -> Result<ConnectorDoc, StoreError> {
        if self.mode == StoreMode::ConnectorApi {
            self.api(api::filtering_validation(doc.id(), validation))
                .await?;
            if activate {
                self.api(api::activate_filtering(doc.id())).await?;
            }
            return self.connector(doc.id()).await;
        }
        let mut filtering = doc.filtering();
        let i = doc
            .default_filtering_index()
            .ok_or_else(|| StoreError::Invalid("no DEFAULT filtering entry".into()))?;
        let validation =
            serde_json::to_value(validation).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let entry = &mut filtering[i];
        if !entry["draft"].is_object() {
            entry["draft"] = json!({});
        }
        entry["draft"]["validation"] = validation;
        if activate {
            entry["active"] = entry["draft"].clone();
        }
        self.update_connector(doc, &Patch::new().set("filtering", Value::Array(filtering)))
            .await
    }

    /// Refreshes and counts an index (`None` when it does not exist).
    pub async fn count(&self, index: &str) -> Result<Option<u64>, StoreError> {
        let q = [("ignore_unavailable", "true".to_owned())];
        let path = format!("/{}/_refresh", encode_segment(index));
        self.es.send(HttpMethod::Post, &path, &q, None).await?;
        let path = format!("/{}/_count", encode_segment(index));
        let resp = self.es.send(HttpMethod::Post, &path, &[], None).await?;
        if resp.status == 404 {
            return Ok(None);
        }
        if !resp.is_success() {
            return Err(crate::es::api_error(HttpMethod::Post, &path, &resp).into());
        }
        Ok(resp.body["count"].as_u64())
    }

    /// Refreshes both system indices (tests and the CLI after writes).
    pub async fn refresh(&self) -> Result<(), StoreError> {
        for index in [&self.names.connectors, &self.names.jobs] {
            let path = format!("/{}/_refresh", encode_segment(index));
            self.es
                .send(
                    HttpMethod::Post,
                    &path,
                    &[("ignore_unavailable", "true".into())],
                    None,
                )
                .await?;
        }
        Ok(())
    }
}

fn versioned_from_hit(hit: &Value) -> Result<Versioned, StoreError> {
    let id = hit["_id"]
        .as_str()
        .ok_or_else(|| StoreError::Invalid("hit without _id".into()))?
        .to_owned();
    let raw = hit["_source"]
        .as_object()
        .cloned()
        .ok_or_else(|| StoreError::Malformed {
            id: id.clone(),
            message: "_source is not an object".into(),
        })?;
    Ok(Versioned {
        seq_no: hit["_seq_no"].as_i64().unwrap_or(-2),
        primary_term: hit["_primary_term"].as_i64().unwrap_or(0),
        id,
        raw,
    })
}
