//! Job execution: full, incremental and access-control syncs, and the erasure of a typed
//! [`Connector`] into a [`DynConnector`].
//!
//! # Deleting what the source no longer has, without an id map (W5)
//!
//! Every document the framework writes carries [`GENERATION_FIELD`] (`_sync_generation`, a
//! `long`): the generation of the job that last saw it (the job's start time in milliseconds,
//! kept across a resume through the checkpoint). When a full sync ends with
//! [`SyncEvent::Complete`], the framework waits until every write is acknowledged, refreshes the
//! index and pages (point in time + `search_after`, or a scroll where PIT is missing) through the
//! documents whose generation is older (or missing), deleting them through the bulk sink in
//! bounded batches. Memory does not depend on the index size. A stream that fails or ends without
//! `Complete` deletes nothing and the job fails. [`SyncItem::PartitionComplete`] does the same
//! restricted to one partition (`field == value`, matched on the field or its `.keyword` / `.enum`
//! sub-field), in any job type. A job that starts (not resumes) on an empty or missing index
//! skips those passes: every document in the index is its own. It only refreshes the index at
//! the end, so its documents are searchable when it completes. (A pass per completed partition
//! — a sink flush, a refresh and a scan — cost the first full sync of 50 mailboxes 50 refreshes
//! and 50 stalls of the whole pipeline.)
//!
//! # Unchanged documents (W4)
//!
//! With [`SyncSettings::skip_unchanged`], upserts that carry a `timestamp` are buffered in small
//! groups (the sink's `chunk_size`); one `_mget` reads the stored `_timestamp` of the group, and a
//! document whose timestamp is unchanged is not re-sent: only its generation is updated (a tiny
//! partial `update`), which keeps it from being deleted. Documents without a timestamp are always
//! re-indexed. This saves wire bytes, not Elasticsearch work: a partial update is a realtime get
//! plus a full re-index inside Elasticsearch, and on the test node a run of generation-only
//! updates took about twice as long as re-indexing the same (small) documents. It is therefore
//! off by default for content and meant for large documents behind slow links. Access-control
//! jobs always skip unchanged identity documents (few and small, as Elastic does).
//!
//! # Sync rules and DLS
//!
//! When sync rules are enabled the basic rules decide for every upserted document (never for
//! deletes, W7); excluded documents are counted and logged. Content documents keep the
//! `_allow_access_control` field the connector sets when DLS is on; access-control jobs write the
//! connector's identity documents into the job's index (`.search-acl-filter-<index>`).
//!
//! # Checkpoints and cursors
//!
//! A [`SyncItem::Checkpoint`] is persisted (through [`JobReporter::checkpoint`](crate::job::JobReporter::checkpoint)) only once every
//! operation submitted before it is acknowledged; it is stored wrapped as
//! `{"sync_generation": <g>, "checkpoint": <connector checkpoint>}` so a resumed full sync keeps its
//! generation. The cursor of [`Completion`] is returned only after the sink acknowledged
//! everything.

pub mod dls;
pub mod encode;
pub mod index;

use std::{collections::VecDeque, marker::PhantomData, sync::Arc, time::Instant};

use bytes::Bytes;
use futures::StreamExt;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value, json};

use crate::{
    EsClient, EsError,
    connector::{Completion, Connector, SyncEvent, SyncItem, SyncRequest},
    es::{HttpMethod, encode_segment},
    job::{JobContext, JobCounters, JobOutcome, JobSpec},
    model::{
        DEFAULT_PIPELINE, Enabled, Features, FilteringRules, FilteringValidation, JobType,
        SyncRulesFeatures, ValidationState,
    },
    sink::{Action, BulkOptions, Sink, SinkError},
    source::{ConfigurationError, DynConnector, SourceError},
};
use encode::{DocumentEncoder, EncodedDocument};

/// Bookkeeping field: generation of the job that last wrote or saw the document.
pub const GENERATION_FIELD: &str = "_sync_generation";

/// Ids longer than this (UTF-8 bytes) are replaced by their SHA-256 hex digest.
pub const MAX_ID_BYTES: usize = 512;

/// Checkpoints waiting for acknowledgement, at most.
const MAX_PENDING_CHECKPOINTS: usize = 32;

/// Pipeline names that Elastic creates by default: a missing one is skipped with a warning.
const DEFAULT_PIPELINES: [&str; 2] = [DEFAULT_PIPELINE, "ent-search-generic-ingestion"];

/// Settings of the sync engine.
#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub bulk: BulkOptions,
    /// Skip re-indexing documents whose `_timestamp` is unchanged (W4; see the module docs).
    pub skip_unchanged: bool,
    /// Page size of the stale-document scan.
    pub scan_page_size: usize,
}

impl Default for SyncSettings {
    fn default() -> Self {
        Self {
            bulk: BulkOptions::default(),
            skip_unchanged: false,
            scan_page_size: 1000,
        }
    }
}

/// Erases a typed connector into the object-safe form the service uses, with default settings.
pub fn erase<C: Connector>(connector: C) -> Arc<dyn DynConnector> {
    erase_with(connector, SyncSettings::default())
}

/// [`erase`] with explicit settings (bulk options from `config.yml`).
pub fn erase_with<C: Connector>(connector: C, settings: SyncSettings) -> Arc<dyn DynConnector> {
    Arc::new(Erased {
        connector,
        settings,
    })
}

/// A typed connector behind [`DynConnector`].
pub struct Erased<C> {
    connector: C,
    settings: SyncSettings,
}

impl<C: Connector> Erased<C> {
    pub fn new(connector: C, settings: SyncSettings) -> Self {
        Self {
            connector,
            settings,
        }
    }

    pub fn connector(&self) -> &C {
        &self.connector
    }
}

/// The `features` object of a connector.
pub fn features_of(f: crate::connector::ConnectorFeatures) -> Features {
    let e = |b| if b { Enabled::ON } else { Enabled::OFF };
    Features {
        sync_rules: SyncRulesFeatures {
            basic: e(f.basic_rules),
            advanced: e(f.advanced_rules),
        },
        document_level_security: e(f.document_level_security),
        incremental_sync: e(f.incremental_sync),
        ..Features::default()
    }
}

#[async_trait::async_trait]
impl<C: Connector> DynConnector for Erased<C> {
    fn service_type(&self) -> &'static str {
        C::SERVICE_TYPE
    }

    fn display_name(&self) -> &'static str {
        C::DISPLAY_NAME
    }

    fn features(&self) -> Features {
        features_of(self.connector.features())
    }

    fn default_configuration(&self) -> Map<String, Value> {
        crate::schema::default_configuration::<C::Config>()
    }

    fn json_schema(&self) -> Value {
        crate::schema::json_schema::<C::Config>()
    }

    fn check_configuration(
        &self,
        configuration: &Map<String, Value>,
    ) -> Result<(), ConfigurationError> {
        crate::schema::parse_config::<C::Config>(configuration).map(|_| ())
    }

    async fn validate_config(&self, configuration: &Map<String, Value>) -> Result<(), SourceError> {
        let config = crate::schema::parse_config::<C::Config>(configuration)?;
        self.connector.validate_config(&config).await
    }

    async fn ping(&self, configuration: &Map<String, Value>) -> Result<(), SourceError> {
        let config = crate::schema::parse_config::<C::Config>(configuration)?;
        self.connector.ping(&config).await
    }

    async fn validate_filtering(&self, rules: &FilteringRules) -> FilteringValidation {
        crate::filtering::validate_rules(rules, &self.connector).await
    }

    async fn run_job(&self, spec: JobSpec, ctx: JobContext) -> JobOutcome {
        let started = Instant::now();
        let job_id = spec.job_id.clone();
        let outcome = run_job::<C>(&self.connector, &self.settings, spec, ctx).await;
        match &outcome {
            JobOutcome::Completed { counters, .. } => tracing::info!(
                job_id,
                indexed = counters.indexed_document_count,
                deleted = counters.deleted_document_count,
                elapsed_ms = started.elapsed().as_millis() as u64,
                "sync completed"
            ),
            JobOutcome::Failed { error, .. } => {
                tracing::warn!(job_id, error, "sync failed")
            }
            JobOutcome::Interrupted { .. } => tracing::info!(job_id, "sync interrupted"),
        }
        outcome
    }
}

/// Why a job did not complete.
#[derive(Debug, thiserror::Error)]
enum JobError {
    #[error("{0}")]
    Source(#[from] SourceError),
    #[error(transparent)]
    Sink(#[from] SinkError),
    #[error(transparent)]
    Es(#[from] EsError),
    #[error(transparent)]
    Index(#[from] index::IndexError),
    #[error("{0}")]
    Other(String),
    #[error("interrupted")]
    Interrupted,
}

/// What the framework wraps around a connector checkpoint.
#[derive(Debug, Serialize, serde::Deserialize)]
struct StoredCheckpoint {
    sync_generation: u64,
    checkpoint: Value,
}

fn decode<T: DeserializeOwned>(what: &str, v: Option<Value>) -> Option<T> {
    let v = v?;
    if v.is_null() {
        return None;
    }
    match serde_json::from_value(v) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(error = %e, "ignoring unreadable stored {what}");
            None
        }
    }
}

async fn run_job<C: Connector>(
    connector: &C,
    settings: &SyncSettings,
    spec: JobSpec,
    ctx: JobContext,
) -> JobOutcome {
    let mut engine = Engine::<C> {
        ctx: ctx.clone(),
        settings: settings.clone(),
        index: spec.index_name.clone(),
        generation: 0,
        sink: None,
        encoder: DocumentEncoder::default(),
        pending_checkpoints: VecDeque::new(),
        buffer: Vec::new(),
        index_existed: true,
        stale_possible: true,
        _c: PhantomData,
    };
    let result = engine.run(connector, spec).await;
    let (sink_result, counters) = match engine.sink.take() {
        Some(sink) => {
            if matches!(result, Err(JobError::Sink(_))) {
                let stats = sink.abort();
                (Ok(()), stats.counters)
            } else {
                match sink.finish().await {
                    Ok(stats) => {
                        tracing::info!(
                            bulk_requests = stats.bulk_requests,
                            item_retries = stats.item_retries,
                            failed_items = stats.failed_items,
                            unchanged = stats.touched,
                            "bulk statistics"
                        );
                        (Ok(()), stats.counters)
                    }
                    Err(e) => (Err(e), JobCounters::default()),
                }
            }
        }
        None => (Ok(()), JobCounters::default()),
    };
    ctx.reporter.counters(counters);
    let (filtered, dropped) = (
        engine.encoder.filtered(),
        engine.encoder.dropped_too_large(),
    );
    if filtered > 0 {
        tracing::info!(filtered, "documents excluded by sync rules");
    }
    if dropped > 0 {
        tracing::warn!(
            dropped,
            "documents not indexed: larger than bulk.max_text_document_size"
        );
    }
    match (result, sink_result) {
        (Ok(cursor), Ok(())) => JobOutcome::Completed { counters, cursor },
        (Err(JobError::Interrupted), _) => JobOutcome::Interrupted { counters },
        (Err(e), _) => JobOutcome::Failed {
            counters,
            error: e.to_string(),
        },
        (Ok(_), Err(e)) => JobOutcome::Failed {
            counters,
            error: e.to_string(),
        },
    }
}

struct Buffered {
    id: String,
    timestamp: String,
    body: Bytes,
}

struct Engine<C: Connector> {
    ctx: JobContext,
    settings: SyncSettings,
    index: String,
    generation: u64,
    sink: Option<Sink>,
    /// Encodes this job's documents (rules, framework fields, size limit) and counts what it
    /// leaves out. Set once the generation is known.
    encoder: DocumentEncoder,
    /// Checkpoints not yet persisted, oldest first, with the sequence number each needs
    /// acknowledged. Bounded: when full, the newest entry is replaced.
    pending_checkpoints: VecDeque<(u64, Value)>,
    /// Upserts waiting for the unchanged check.
    buffer: Vec<Buffered>,
    /// The target index existed before the job (otherwise nothing can be unchanged).
    index_existed: bool,
    /// The index may hold documents older than this job. False when a job that is not a
    /// resume starts on an empty or missing index: then every document in it is this job's,
    /// and the stale-document passes (a sink flush, a refresh and a scan at every completed
    /// partition) are skipped.
    stale_possible: bool,
    _c: PhantomData<C>,
}

impl<C: Connector> Engine<C> {
    fn start_sink(&mut self, es: EsClient, pipeline: Option<String>) {
        self.sink = Some(Sink::start(
            es,
            self.index.clone(),
            pipeline,
            self.settings.bulk.clone(),
            Some(self.ctx.reporter.clone()),
        ));
    }

    fn sink(&mut self) -> &mut Sink {
        // `run` starts the sink before any use.
        self.sink.as_mut().expect("sink started before use")
    }

    async fn run(&mut self, connector: &C, spec: JobSpec) -> Result<Option<Value>, JobError> {
        let config = crate::schema::parse_config::<C::Config>(&spec.configuration)
            .map_err(SourceError::from)?;
        let features = connector.features();
        let dls_enabled = features.document_level_security
            && spec.features.document_level_security.enabled
            && connector.dls_enabled(&config);
        let sync_rules_enabled = spec.features.sync_rules_enabled();
        let content = spec.job_type.is_content();
        if content
            && sync_rules_enabled
            && spec.filtering.validation.state != ValidationState::Valid
        {
            return Err(JobError::Other(format!(
                "Filtering in state {}, errors: {}",
                serde_json::to_value(spec.filtering.validation.state)
                    .unwrap_or_default()
                    .as_str()
                    .unwrap_or("invalid"),
                serde_json::to_string(&spec.filtering.validation.errors).unwrap_or_default()
            )));
        }
        let rules = if content && sync_rules_enabled {
            Some(
                crate::filtering::BasicRuleEngine::new(&spec.filtering.rules)
                    .map_err(|e| JobError::Other(format!("invalid basic sync rules: {e}")))?,
            )
        } else {
            None
        };

        // Resume: generation and connector checkpoint.
        let stored: Option<StoredCheckpoint> = decode("checkpoint", spec.checkpoint.clone());
        let (generation, checkpoint) = match stored {
            Some(s) => (s.sync_generation, Some(s.checkpoint)),
            None => (0, spec.checkpoint.clone()),
        };
        let es = self.ctx.es.clone();
        let resume = generation > 0;
        if resume {
            // A resume: the interrupted attempt's documents carry this generation, and what
            // was in the index before it is unknown here.
            self.generation = generation;
            self.stale_possible = true;
        } else {
            // The clock's generation; the index is asked for its newest one below, while the
            // source starts (an index ahead of this clock restarts the source).
            self.generation = clock_generation();
        }

        let max_text = self.settings.bulk.max_text_document_size;
        if !content {
            if !resume {
                let found = index_generations(&es, &self.index).await?;
                self.generation = self.generation.max(found.newest.saturating_add(1));
                self.stale_possible = found.documents != Some(0);
            }
            self.index_existed = index::index_exists(&es, &self.index).await?;
            self.start_sink(es, None);
            // Identity documents: no sync rules, no pipeline flags.
            self.encoder = DocumentEncoder::new(None, Vec::new(), self.generation, max_text);
            return self.run_access_control(connector, &config).await;
        }
        let flags = vec![
            (
                "_extract_binary_content",
                spec.pipeline.extract_binary_content,
            ),
            ("_reduce_whitespace", spec.pipeline.reduce_whitespace),
            ("_run_ml_inference", spec.pipeline.run_ml_inference),
        ];
        let encoder =
            |generation| DocumentEncoder::new(rules.clone(), flags.clone(), generation, max_text);
        let start_source = |encoder: &DocumentEncoder| {
            let request = SyncRequest {
                filtering: spec.filtering.clone(),
                sync_rules_enabled,
                dls_enabled,
                cursor: if spec.job_type == JobType::Incremental {
                    decode::<C::Cursor>("cursor", spec.sync_cursor.clone())
                } else {
                    None
                },
                checkpoint: decode::<C::Checkpoint>("checkpoint", checkpoint.clone()),
                encoder: encoder.clone(),
            };
            match spec.job_type {
                JobType::Incremental => connector.incremental_sync(&config, request),
                _ => connector.full_sync(&config, request),
            }
        };
        self.encoder = encoder(self.generation);
        // The source starts before anything is asked of the node: its first requests (tokens,
        // the user list, first pages) overlap the generation query, the index check (and the
        // index creation of a first sync) and the pipeline check, and what it produces
        // meanwhile waits in its bounded queue. A failure below drops the stream, which stops
        // the source.
        let mut stream = start_source(&self.encoder);
        let prepare_index =
            index::prepare_content_index(&es, &self.index, spec.language.as_deref());
        let generations = async {
            if resume {
                Ok(None)
            } else {
                index_generations(&es, &self.index).await.map(Some)
            }
        };
        let (existed, found, pipeline) = tokio::join!(
            prepare_index,
            generations,
            check_pipeline(&es, &spec.pipeline.name)
        );
        self.index_existed = existed? == index::IndexPreparation::Existing;
        let pipeline = pipeline?;
        if let Some(found) = found? {
            self.stale_possible = found.documents != Some(0);
            if found.newest >= self.generation {
                // The index holds a generation from a clock ahead of this one: the documents
                // must carry a newer one, or the stale-document pass would keep old ones.
                // Nothing was written yet; the source starts again with it.
                tracing::warn!(
                    index = %self.index,
                    newest = found.newest,
                    clock = self.generation,
                    "the index holds a newer sync generation than this host's clock; restarting the source"
                );
                drop(stream);
                self.generation = found.newest.saturating_add(1);
                self.encoder = encoder(self.generation);
                stream = start_source(&self.encoder);
            }
        }
        self.start_sink(es, pipeline);
        let cancel = self.ctx.cancel.clone();
        let completion: Completion<C::Cursor> = loop {
            let event = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    drop(stream);
                    self.stop_after_cancel().await;
                    return Err(JobError::Interrupted);
                }
                e = stream.next() => e,
                // A slow source: release checkpoints as their documents get acknowledged.
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)),
                    if !self.pending_checkpoints.is_empty() =>
                {
                    self.release_checkpoint().await?;
                    continue;
                }
            };
            let event = match event {
                None => {
                    return Err(JobError::Other(
                        "the source ended the sync without completing it (truncated enumeration); nothing was deleted".into(),
                    ));
                }
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(e)) => e,
            };
            match event {
                SyncEvent::Complete(c) => break c,
                SyncEvent::Item(SyncItem::Upsert(doc)) => {
                    if let Some(encoded) = self.encoder.encode(doc) {
                        self.upsert(encoded, self.settings.skip_unchanged).await?;
                    }
                }
                SyncEvent::Item(SyncItem::Encoded(encoded)) => {
                    if encoded.generation != self.encoder.generation() {
                        return Err(JobError::Other(format!(
                            "document {:?} was encoded for another job (generation {}, this job's {})",
                            encoded.id,
                            encoded.generation,
                            self.encoder.generation()
                        )));
                    }
                    self.upsert(encoded, self.settings.skip_unchanged).await?;
                }
                SyncEvent::Item(SyncItem::Delete { id }) => {
                    self.drain_buffer().await?;
                    let id = normalize_id(id);
                    self.submit(Action::Delete, id, None).await?;
                }
                SyncEvent::Item(SyncItem::Checkpoint(k)) => {
                    self.drain_buffer().await?;
                    let seq = self.sink().submitted();
                    let value = serde_json::to_value(StoredCheckpoint {
                        sync_generation: self.generation,
                        checkpoint: serde_json::to_value(&k).map_err(|e| {
                            JobError::Other(format!("cannot serialize the checkpoint: {e}"))
                        })?,
                    })
                    .unwrap_or(Value::Null);
                    if self.pending_checkpoints.len() >= MAX_PENDING_CHECKPOINTS {
                        self.pending_checkpoints.pop_back();
                    }
                    self.pending_checkpoints.push_back((seq, value));
                }
                SyncEvent::Item(SyncItem::PartitionComplete { field, value }) => {
                    self.drain_buffer().await?;
                    self.delete_stale(Some((&field, &value))).await?;
                }
            }
            self.release_checkpoint().await?;
        };
        drop(stream);
        self.drain_buffer().await?;
        if spec.job_type == JobType::Full {
            self.delete_stale(None).await?;
        }
        self.sink().flush().await?;
        // A crash before the executor records the completion resumes from here.
        self.release_checkpoint().await?;
        match completion.cursor {
            Some(c) => Ok(Some(serde_json::to_value(c).map_err(|e| {
                JobError::Other(format!("cannot serialize the cursor: {e}"))
            })?)),
            None => Ok(None),
        }
    }

    async fn run_access_control(
        &mut self,
        connector: &C,
        config: &C::Config,
    ) -> Result<Option<Value>, JobError> {
        let mut stream = connector.access_control(config);
        let cancel = self.ctx.cancel.clone();
        loop {
            let next = tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    drop(stream);
                    self.stop_after_cancel().await;
                    return Err(JobError::Interrupted);
                }
                n = stream.next() => n,
            };
            match next {
                None => break,
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(doc)) => {
                    // Identity documents are always checked (as Elastic does, spec §8.4).
                    if let Some(encoded) = self.encoder.encode(doc) {
                        self.upsert(encoded, true).await?;
                    }
                }
            }
        }
        drop(stream);
        self.drain_buffer().await?;
        self.delete_stale(None).await?;
        self.sink().flush().await?;
        Ok(None)
    }

    /// Queues one operation; a cancel while the queue is full interrupts the job.
    async fn submit(
        &mut self,
        action: Action,
        id: String,
        body: Option<Bytes>,
    ) -> Result<(), JobError> {
        let cancel = self.ctx.cancel.clone();
        tokio::select! {
            r = self.sink().submit(action, id, body) => r.map(|_| ()).map_err(JobError::from),
            _ = cancel.cancelled() => Err(JobError::Interrupted),
        }
    }

    /// After a cancel: lets queued writes finish and persists the last covered checkpoint.
    async fn stop_after_cancel(&mut self) {
        self.buffer.clear();
        if self.sink().flush().await.is_ok()
            && let Err(e) = self.release_checkpoint().await
        {
            tracing::warn!(error = %e, "cannot save the checkpoint of an interrupted sync");
        }
    }

    /// Indexes an encoded document: with `check_unchanged` (and an index that existed before
    /// the job), documents with a connector timestamp wait for the unchanged check first.
    async fn upsert(
        &mut self,
        doc: EncodedDocument,
        check_unchanged: bool,
    ) -> Result<(), JobError> {
        let EncodedDocument {
            id,
            timestamp,
            body,
            ..
        } = doc;
        match timestamp {
            Some(ts) if check_unchanged && self.index_existed => {
                self.buffer.push(Buffered {
                    id,
                    timestamp: ts,
                    body,
                });
                if self.buffer.len() >= self.settings.bulk.chunk_size.max(1) {
                    self.drain_buffer().await?;
                }
                Ok(())
            }
            _ => self.submit(Action::Index, id, Some(body)).await,
        }
    }

    /// Sends buffered upserts: unchanged ones (same stored `_timestamp`) as generation-only
    /// updates, the others as full `index` operations.
    async fn drain_buffer(&mut self) -> Result<(), JobError> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let buffer = std::mem::take(&mut self.buffer);
        let ids: Vec<&str> = buffer.iter().map(|b| b.id.as_str()).collect();
        let path = format!("/{}/_mget", encode_segment(&self.index));
        let resp = self
            .ctx
            .es
            .send(
                HttpMethod::Post,
                &path,
                &[("_source_includes", "_timestamp".into())],
                Some(&json!({ "ids": ids })),
            )
            .await?;
        let stored: std::collections::HashMap<String, String> = if resp.is_success() {
            resp.body["docs"]
                .as_array()
                .map(|docs| {
                    docs.iter()
                        .filter_map(|d| {
                            Some((
                                d["_id"].as_str()?.to_owned(),
                                d["_source"]["_timestamp"].as_str()?.to_owned(),
                            ))
                        })
                        .collect()
                })
                .unwrap_or_default()
        } else {
            tracing::warn!(
                status = resp.status,
                "unchanged-document check failed; re-indexing the batch"
            );
            Default::default()
        };
        let touch = Bytes::from(format!("{{\"{GENERATION_FIELD}\":{}}}", self.generation));
        for b in buffer {
            if stored.get(&b.id) == Some(&b.timestamp) {
                self.submit(Action::Touch, b.id, Some(touch.clone()))
                    .await?;
            } else {
                self.submit(Action::Index, b.id, Some(b.body)).await?;
            }
        }
        Ok(())
    }

    /// Persists the pending checkpoint when everything before it is acknowledged.
    async fn release_checkpoint(&mut self) -> Result<(), JobError> {
        let watermark = self.sink().watermark();
        let mut covered = None;
        while self
            .pending_checkpoints
            .front()
            .is_some_and(|(seq, _)| *seq <= watermark)
        {
            covered = self.pending_checkpoints.pop_front();
        }
        if let Some((_, value)) = covered {
            self.ctx
                .reporter
                .checkpoint(value)
                .await
                .map_err(|e| JobError::Other(e.to_string()))?;
        }
        Ok(())
    }

    /// Deletes documents of older generations (optionally of one partition).
    async fn delete_stale(&mut self, partition: Option<(&str, &Value)>) -> Result<(), JobError> {
        if !self.stale_possible && partition.is_some() {
            // Nothing older than this job is in the index; checkpoints are released as their
            // documents are acknowledged.
            return Ok(());
        }
        let es = self.ctx.es.clone();
        let index_path = encode_segment(&self.index);
        // At the end of the job everything is submitted and the last writes are in flight: a
        // refresh now writes out most of what the index has buffered while they finish, so the
        // refresh after them, which makes the job's documents searchable, has only their
        // documents left (it was a serial tail of up to a second on a busy node). On its own
        // task, so that a failed flush fails the job at once (dropping the handle aborts the
        // request) instead of after the refresh's retries.
        let early = partition.is_none().then(|| {
            let (es, path) = (es.clone(), format!("/{index_path}/_refresh"));
            tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
                let query = [("ignore_unavailable", "true".to_owned())];
                let _ = es.send(HttpMethod::Post, &path, &query, None).await;
            }))
        });
        let started = std::time::Instant::now();
        self.sink().flush().await?;
        let flushed = started.elapsed();
        if let Some(early) = early {
            let _ = early.await;
        }
        let early_done = started.elapsed();
        self.release_checkpoint().await?;
        let refresh = es
            .send(
                HttpMethod::Post,
                &format!("/{index_path}/_refresh"),
                &[],
                None,
            )
            .await?;
        tracing::debug!(
            index = %self.index,
            flush_ms = flushed.as_millis() as u64,
            early_refresh_ms = early_done.as_millis() as u64,
            refresh_ms = (started.elapsed() - early_done).as_millis() as u64,
            "writes acknowledged and index refreshed"
        );
        if refresh.status == 404 || !self.stale_possible {
            // Nothing was ever written, or everything is this job's: the refresh above makes
            // the job's documents searchable when it completes.
            return Ok(());
        }
        let mut filter = vec![];
        if let Some((field, value)) = partition {
            filter.push(json!({"bool": {"minimum_should_match": 1, "should": [
                {"term": {field: value}},
                {"term": {format!("{field}.keyword"): value}},
                {"term": {format!("{field}.enum"): value}},
            ]}}));
        }
        let query = json!({"bool": {
            "filter": filter,
            "must_not": [{"range": {GENERATION_FIELD: {"gte": self.generation}}}],
        }});
        let mut scan = Scanner::open(&es, &self.index, query, self.settings.scan_page_size).await?;
        let mut deleted = 0u64;
        while let Some(ids) = scan.next_page(&es).await? {
            for id in ids {
                if self.ctx.cancel.is_cancelled() {
                    scan.close(&es).await;
                    return Err(JobError::Interrupted);
                }
                self.submit(Action::Delete, id, None).await?;
                deleted += 1;
            }
        }
        scan.close(&es).await;
        tracing::info!(index = %self.index, deleted, partition = partition.is_some(), "deleting documents the source no longer has");
        self.sink().flush().await?;
        Ok(())
    }
}

/// What a new job learns about its index before writing.
struct IndexGenerations {
    /// The highest generation in the index (0 when none).
    newest: u64,
    /// Documents in the index (`None` when the search failed).
    documents: Option<u64>,
}

/// A new job's generation by the clock: the current time in milliseconds. The job takes the
/// index's highest generation + 1 instead when that is ahead (clock skew between hosts).
fn clock_generation() -> u64 {
    chrono::Utc::now().timestamp_millis().max(1) as u64
}

/// The index's highest generation and how many documents it holds.
async fn index_generations(es: &EsClient, index: &str) -> Result<IndexGenerations, EsError> {
    let path = format!("/{}/_search", encode_segment(index));
    let body = json!({"size": 0, "track_total_hits": true,
        "aggs": {"max_generation": {"max": {"field": GENERATION_FIELD}}}});
    let resp = es
        .send(
            HttpMethod::Post,
            &path,
            &[("ignore_unavailable", "true".into())],
            Some(&body),
        )
        .await?;
    let (max, documents) = if resp.is_success() {
        (
            resp.body["aggregations"]["max_generation"]["value"]
                .as_f64()
                .map_or(0, |v| v as u64),
            resp.body["hits"]["total"]["value"].as_u64(),
        )
    } else if resp.status == 404 {
        (0, Some(0))
    } else {
        (0, None)
    };
    Ok(IndexGenerations {
        newest: max,
        documents,
    })
}

/// `_id` as stored: ids over [`MAX_ID_BYTES`] become their SHA-256 hex digest.
pub fn normalize_id(id: String) -> String {
    if id.len() <= MAX_ID_BYTES {
        return id;
    }
    use sha2::Digest;
    let digest = sha2::Sha256::digest(id.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Checks the job's ingest pipeline once: present → used; a missing default pipeline is skipped
/// with a warning; a missing custom pipeline fails the job.
async fn check_pipeline(es: &EsClient, name: &str) -> Result<Option<String>, JobError> {
    if name.is_empty() {
        return Ok(None);
    }
    let path = format!("/_ingest/pipeline/{}", encode_segment(name));
    let resp = es.send(HttpMethod::Get, &path, &[], None).await?;
    if resp.is_success() && resp.body.get(name).is_some() {
        return Ok(Some(name.to_owned()));
    }
    if matches!(resp.status, 401 | 403) {
        // The data-plane key may lack the privilege to read pipelines: use it unverified.
        tracing::warn!(
            pipeline = name,
            status = resp.status,
            "cannot check the ingest pipeline; using it as configured"
        );
        return Ok(Some(name.to_owned()));
    }
    if resp.status != 404 && !resp.is_success() {
        return Err(crate::es::api_error(HttpMethod::Get, &path, &resp).into());
    }
    if DEFAULT_PIPELINES.contains(&name) {
        tracing::warn!(
            pipeline = name,
            "ingest pipeline not found on the cluster; indexing without it"
        );
        Ok(None)
    } else {
        Err(JobError::Other(format!(
            "ingest pipeline {name:?} does not exist on the cluster; create it or change the connector's pipeline"
        )))
    }
}

/// Pages through the ids of the documents matching a query: PIT + `search_after` when the
/// cluster supports it, else a scroll.
struct Scanner {
    index: String,
    query: Value,
    size: usize,
    pit: Option<String>,
    scroll: Option<String>,
    search_after: Option<Value>,
    started: bool,
    done: bool,
}

const KEEP_ALIVE: &str = "2m";

impl Scanner {
    async fn open(
        es: &EsClient,
        index: &str,
        query: Value,
        size: usize,
    ) -> Result<Scanner, EsError> {
        let path = format!("/{}/_pit", encode_segment(index));
        let resp = es
            .send(
                HttpMethod::Post,
                &path,
                &[("keep_alive", KEEP_ALIVE.into())],
                None,
            )
            .await?;
        let pit = if resp.is_success() {
            resp.body["id"].as_str().map(str::to_owned)
        } else {
            tracing::debug!(
                status = resp.status,
                "point in time unavailable; using a scroll"
            );
            None
        };
        Ok(Scanner {
            index: index.to_owned(),
            query,
            size: size.max(1),
            pit,
            scroll: None,
            search_after: None,
            started: false,
            done: false,
        })
    }

    async fn next_page(&mut self, es: &EsClient) -> Result<Option<Vec<String>>, EsError> {
        if self.done {
            return Ok(None);
        }
        let body = if let Some(pit) = &self.pit {
            let mut b = json!({
                "size": self.size,
                "_source": false,
                "query": self.query,
                "pit": {"id": pit, "keep_alive": KEEP_ALIVE},
                "sort": [{"_shard_doc": "asc"}],
                "track_total_hits": false,
            });
            if let Some(sa) = &self.search_after {
                b["search_after"] = sa.clone();
            }
            es.json(HttpMethod::Post, "/_search", &[], Some(&b)).await?
        } else if let Some(scroll) = &self.scroll {
            es.json(
                HttpMethod::Post,
                "/_search/scroll",
                &[],
                Some(&json!({"scroll": KEEP_ALIVE, "scroll_id": scroll})),
            )
            .await?
        } else {
            let path = format!("/{}/_search", encode_segment(&self.index));
            es.json(
                HttpMethod::Post,
                &path,
                &[("scroll", KEEP_ALIVE.into())],
                Some(&json!({"size": self.size, "_source": false, "query": self.query, "sort": ["_doc"]})),
            )
            .await?
        };
        self.started = true;
        if let Some(id) = body["pit_id"].as_str() {
            self.pit = Some(id.to_owned());
        }
        if let Some(id) = body["_scroll_id"].as_str() {
            self.scroll = Some(id.to_owned());
        }
        let hits = body["hits"]["hits"].as_array().cloned().unwrap_or_default();
        if hits.len() < self.size {
            self.done = true;
        }
        if let Some(last) = hits.last() {
            self.search_after = Some(last["sort"].clone());
        }
        let ids: Vec<String> = hits
            .iter()
            .filter_map(|h| h["_id"].as_str().map(str::to_owned))
            .collect();
        if ids.is_empty() {
            self.done = true;
            return Ok(None);
        }
        Ok(Some(ids))
    }

    async fn close(&mut self, es: &EsClient) {
        if let Some(pit) = self.pit.take() {
            let _ = es
                .send(HttpMethod::Delete, "/_pit", &[], Some(&json!({"id": pit})))
                .await;
        }
        if let Some(scroll) = self.scroll.take() {
            let _ = es
                .send(
                    HttpMethod::Delete,
                    "/_search/scroll",
                    &[],
                    Some(&json!({"scroll_id": scroll})),
                )
                .await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn generator() -> Arc<dyn DynConnector> {
        erase(crate::testing::GeneratorConnector::new())
    }

    #[test]
    fn erased_connector_describes_itself() {
        let c = generator();
        assert_eq!(c.service_type(), "generator");
        let f = c.features();
        assert!(f.document_level_security.enabled && f.incremental_sync.enabled);
        assert!(f.sync_rules.basic.enabled && !f.sync_rules.advanced.enabled);
        let d = c.default_configuration();
        assert_eq!(d["count"]["value"], 1000);
        assert_eq!(d["count"]["type"], "int");
        assert_eq!(c.json_schema()["title"], "GeneratorConfig");
        let mut bad = d.clone();
        bad["count"]["value"] = json!("many");
        let err = c.check_configuration(&bad).unwrap_err();
        assert_eq!(err.errors[0].field, "count");
        assert!(c.check_configuration(&d).is_ok());

        let mut registry = crate::source::Registry::new();
        registry.register(c);
        let files = crate::schema::render_schema_files(&registry);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "generator.schema.json",
                "generator.default-configuration.json"
            ]
        );
        assert!(files.iter().all(|(_, body)| body.ends_with("}\n")));
    }

    #[tokio::test]
    async fn filtering_validation_reports_instead_of_crashing() {
        let c = generator();
        let rules = FilteringRules {
            rules: vec![
                json!({"id": "ok", "order": 1, "policy": "include", "field": "title", "rule": "equals", "value": "x"}),
                json!({"id": "bad", "order": 2, "policy": "sometimes", "field": "title", "rule": "equals", "value": "x"}),
                json!({"id": "all", "order": 3, "policy": "exclude", "field": "title", "rule": "regex", "value": ".*"}),
                json!("not even an object"),
            ],
            ..Default::default()
        };
        let v = c.validate_filtering(&rules).await;
        assert_eq!(v.state, ValidationState::Invalid);
        let ids: Vec<&str> = v
            .errors
            .iter()
            .map(|e| e.ids.first().map_or("", String::as_str))
            .collect();
        assert!(ids.contains(&"bad") && ids.contains(&"all"), "{ids:?}");
        // The rule that is not even an object is reported too (it has no id).
        assert_eq!(v.errors.len(), 3, "{:?}", v.errors);
        let ok = c.validate_filtering(&FilteringRules::default()).await;
        assert_eq!(ok.state, ValidationState::Valid);
    }

    #[test]
    fn long_ids_are_hashed() {
        let long = "x".repeat(600);
        let h = normalize_id(long);
        assert_eq!(h.len(), 64);
        assert_eq!(normalize_id("short".into()), "short");
        let exactly = "y".repeat(512);
        assert_eq!(normalize_id(exactly.clone()), exactly);
    }

    #[test]
    fn the_rule_engine_decides_first_match_wins() {
        let rules = crate::filtering::BasicRuleEngine::new(&[
            json!({"id": "1", "order": 1, "policy": "exclude", "field": "title", "rule": "contains", "value": "secret"}),
            json!({"id": "2", "order": 2, "policy": "include", "field": "title", "rule": "regex", "value": ".*"}),
            json!({"id": "DEFAULT", "order": 0, "policy": "include", "field": "_", "rule": "regex", "value": ".*"}),
        ])
        .unwrap();
        let doc = |t: &str| json!({"title": t}).as_object().unwrap().clone();
        assert!(!rules.should_ingest(&doc("top secret")));
        assert!(rules.should_ingest(&doc("public")));
    }
}
