//! The bounded bulk pipeline between a sync and Elasticsearch.
//!
//! ```text
//! producer ──(bounded channel: queue_max_size items AND queue_max_mem_size serialized bytes)──▶
//!   batcher ──(chunks of ≤ chunk_size lines and ≤ chunk_max_mem_size bytes)──▶
//!   ≤ max_concurrency concurrent `_bulk` requests ──▶ per-item accounting
//! ```
//!
//! * Memory is bounded whatever the number of documents: the queue by count and bytes (the
//!   serialized `_source`, never a heuristic object size, W13), the batch being built by
//!   `chunk_max_mem_size`, the requests in flight by `max_concurrency` batches.
//! * Whole `_bulk` requests are retried by [`EsClient`] on 429/5xx/connection errors (exponential
//!   backoff with jitter). Items answered 429/502/503/504 are re-sent on their own, up to
//!   `max_retries` times with exponential backoff + jitter (W15); any other item failure counts
//!   against the [`ErrorMonitor`] budget. A `delete` answered `not_found` is not an error (W21).
//! * Every operation gets a sequence number. The sink publishes a *watermark*: every operation with
//!   a smaller sequence number is resolved (acknowledged, or failed and counted within the error
//!   budget). [`Sink::flush`] waits until everything submitted so far is resolved, which is what a
//!   checkpoint or a cursor needs.
//! * A chunk that does not fill up is sent `flush_interval` after its first operation, however
//!   steadily a slow source trickles: its documents reach the index, and its checkpoints are
//!   released, within that time.

use std::{
    collections::{BTreeSet, VecDeque},
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::{BufMut, Bytes, BytesMut};
use futures::FutureExt as _;
use serde::Deserialize;
use serde_json::Value;
use tokio::{
    sync::{OwnedSemaphorePermit, Semaphore, mpsc, watch},
    task::JoinSet,
};
use tracing::Instrument;

use crate::{
    EsClient, EsError,
    error::{Classify, ErrorKind},
    es::{HttpMethod, backoff_delay, status_kind},
    job::{JobCounters, JobReporter},
    telemetry::otel::bulk_span,
};

const MIB: usize = 1024 * 1024;

/// Error budget of bulk items (Elastic's `bulk.error_monitor.*`, spec §9.5).
#[derive(Debug, Clone, PartialEq)]
pub struct ErrorMonitorOptions {
    pub enabled: bool,
    pub max_total_errors: u64,
    pub max_consecutive_errors: u64,
    pub max_error_rate: f64,
    pub error_window_size: usize,
    pub error_queue_size: usize,
}

impl Default for ErrorMonitorOptions {
    fn default() -> Self {
        Self {
            enabled: true,
            max_total_errors: 1000,
            max_consecutive_errors: 10,
            max_error_rate: 0.15,
            error_window_size: 100,
            error_queue_size: 10,
        }
    }
}

/// Settings of the sink (`elasticsearch.bulk.*` of `config.yml`), with Elastic's defaults.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkOptions {
    /// Max items waiting in the queue.
    pub queue_max_size: usize,
    /// Max serialized bytes waiting in the queue.
    pub queue_max_mem_size: usize,
    /// How long a producer may stay blocked on a full queue before the sync fails (overloaded).
    pub queue_refresh_timeout: Duration,
    /// Max lines per `_bulk` body (index/update = 2 lines, delete = 1).
    pub chunk_size: usize,
    /// Max serialized bytes per `_bulk` body.
    pub chunk_max_mem_size: usize,
    /// Concurrent `_bulk` requests per sync.
    pub max_concurrency: usize,
    /// Documents without an `_attachment` whose serialized source exceeds this many bytes are
    /// dropped with a warning (0: no limit). Applied by the sync engine.
    pub max_text_document_size: usize,
    /// Re-sends of an item answered 429/502/503/504.
    pub max_retries: u32,
    /// First backoff before re-sending items (doubled each attempt, jittered, capped at 60 s).
    pub retry_interval: Duration,
    /// A partially filled chunk is sent at most this long after its first operation arrived (so
    /// the documents of a slow source are written, and its checkpoints released, however slowly
    /// they trickle in).
    pub flush_interval: Duration,
    pub error_monitor: ErrorMonitorOptions,
}

impl Default for BulkOptions {
    fn default() -> Self {
        Self {
            queue_max_size: 1024,
            queue_max_mem_size: 25 * MIB,
            queue_refresh_timeout: Duration::from_secs(1300),
            chunk_size: 500,
            chunk_max_mem_size: 3 * MIB,
            max_concurrency: 5,
            max_text_document_size: 3 * MIB,
            max_retries: 5,
            retry_interval: Duration::from_secs(10),
            flush_interval: Duration::from_secs(1),
            error_monitor: ErrorMonitorOptions::default(),
        }
    }
}

/// Failures of the sink; any of them fails the sync.
#[derive(Debug, Clone, thiserror::Error)]
pub enum SinkError {
    #[error("too many bulk item errors ({summary}); last errors: {}", .last_errors.join(" | "))]
    TooManyErrors {
        summary: String,
        last_errors: Vec<String>,
    },
    #[error(
        "Connector was unable to ingest data into overloaded Elasticsearch: the queue stayed full for {0:?}"
    )]
    Overloaded(Duration),
    #[error("bulk request failed: {message}")]
    Bulk { message: String, kind: ErrorKind },
    #[error("the bulk sink stopped: {0}")]
    Stopped(String),
}

impl Classify for SinkError {
    fn kind(&self) -> ErrorKind {
        match self {
            SinkError::Overloaded(_) => ErrorKind::Transient,
            SinkError::Bulk { kind, .. } => *kind,
            _ => ErrorKind::Fatal,
        }
    }
}

impl From<EsError> for SinkError {
    fn from(e: EsError) -> Self {
        SinkError::Bulk {
            kind: e.kind(),
            message: e.to_string(),
        }
    }
}

/// Kind of a bulk operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Full replace (`index`); counted as indexed.
    Index,
    /// Partial update with `doc_as_upsert`; counted as indexed.
    Update,
    /// Partial update of bookkeeping fields of an unchanged document (no upsert); not counted as
    /// indexed.
    Touch,
    /// `delete`; counted as deleted whatever the answer (`not_found` included, W21).
    Delete,
}

impl Action {
    fn op(self) -> &'static str {
        match self {
            Action::Index => "index",
            Action::Update | Action::Touch => "update",
            Action::Delete => "delete",
        }
    }
}

struct Item {
    seq: u64,
    action: Action,
    id: String,
    /// The action line, newline included.
    header: Bytes,
    /// `index`: the `_source`; `update`/`touch`: the partial document. Serialized JSON.
    body: Option<Bytes>,
}

const DOC_PREFIX: &[u8] = b"{\"doc\":";
const UPSERT_SUFFIX: &[u8] = b",\"doc_as_upsert\":true}";

/// `{"<op>":{"_index":<index_json>,"_id":"<id>"}}\n`, written straight into a buffer of its
/// exact size (one allocation per item, no JSON tree). `index_json` is the index name as a JSON
/// string ([`json_string`]), escaped once per sink.
fn action_line(action: Action, index_json: &[u8], id: &str) -> Bytes {
    const PARTS: [&[u8]; 4] = [b"{\"", b"\":{\"_index\":", b",\"_id\":", b"}}\n"];
    let op = action.op();
    let len = PARTS.iter().map(|p| p.len()).sum::<usize>()
        + op.len()
        + index_json.len()
        + json_string_len(id);
    let mut line = Vec::with_capacity(len);
    line.extend_from_slice(PARTS[0]);
    line.extend_from_slice(op.as_bytes());
    line.extend_from_slice(PARTS[1]);
    line.extend_from_slice(index_json);
    line.extend_from_slice(PARTS[2]);
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut line, id);
    line.extend_from_slice(PARTS[3]);
    debug_assert_eq!(line.len(), len);
    // Length equal to capacity: the Vec becomes the Bytes without another allocation.
    Bytes::from(line)
}

/// `s` as a JSON string, as `serde_json` writes it.
fn json_string(s: &str) -> Box<[u8]> {
    let mut out = Vec::with_capacity(json_string_len(s));
    // Writing a string into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, s);
    out.into_boxed_slice()
}

/// The length of `s` as `serde_json` writes it: quoted, with `"`, `\\` and control characters
/// escaped (`\n`-style where JSON has a short form, else `\u00XX`).
fn json_string_len(s: &str) -> usize {
    2 + s
        .bytes()
        .map(|b| match b {
            b'"' | b'\\' | 0x08 | 0x0c | b'\n' | b'\r' | b'\t' => 2,
            0..0x20 => 6,
            _ => 1,
        })
        .sum::<usize>()
}

impl Item {
    fn new(seq: u64, action: Action, index_json: &[u8], id: String, body: Option<Bytes>) -> Item {
        let header = action_line(action, index_json, &id);
        Item {
            seq,
            action,
            id,
            header,
            body,
        }
    }

    /// Exact bytes this item adds to a bulk body.
    fn wire_size(&self) -> usize {
        let body = self.body.as_ref().map_or(0, Bytes::len);
        self.header.len()
            + match self.action {
                Action::Index => body + 1,
                Action::Update => DOC_PREFIX.len() + body + UPSERT_SUFFIX.len() + 1,
                Action::Touch => DOC_PREFIX.len() + body + 2,
                Action::Delete => 0,
            }
    }

    fn lines(&self) -> usize {
        if self.body.is_some() { 2 } else { 1 }
    }
}

enum Msg {
    Op(Item, OwnedSemaphorePermit),
    Flush,
}

/// Tracks item outcomes against the error budget (spec §9.5 semantics: consecutive errors,
/// total errors, error rate in a sliding window initialised with successes).
#[derive(Debug)]
pub struct ErrorMonitor {
    opts: ErrorMonitorOptions,
    consecutive: u64,
    total: u64,
    window: VecDeque<bool>,
    window_errors: usize,
    last: VecDeque<String>,
}

impl ErrorMonitor {
    pub fn new(opts: ErrorMonitorOptions) -> Self {
        let size = opts.error_window_size.max(1);
        Self {
            window: std::iter::repeat_n(false, size).collect(),
            window_errors: 0,
            consecutive: 0,
            total: 0,
            last: VecDeque::new(),
            opts,
        }
    }

    fn push(&mut self, error: bool) {
        if let Some(old) = self.window.pop_front()
            && old
        {
            self.window_errors -= 1;
        }
        self.window.push_back(error);
        if error {
            self.window_errors += 1;
        }
    }

    pub fn success(&mut self) {
        self.consecutive = 0;
        self.push(false);
    }

    /// Records an error; `Err` once the budget is exhausted.
    pub fn error(&mut self, message: String) -> Result<(), SinkError> {
        self.consecutive += 1;
        self.total += 1;
        self.push(true);
        self.last.push_back(message);
        while self.last.len() > self.opts.error_queue_size.max(1) {
            self.last.pop_front();
        }
        if !self.opts.enabled {
            return Ok(());
        }
        let rate = self.window_errors as f64 / self.window.len() as f64;
        let summary = if self.consecutive > self.opts.max_consecutive_errors {
            Some(format!("{} consecutive errors", self.consecutive))
        } else if self.total > self.opts.max_total_errors {
            Some(format!("{} errors in total", self.total))
        } else if rate > self.opts.max_error_rate {
            Some(format!(
                "error rate {:.2} over the last {} items",
                rate,
                self.window.len()
            ))
        } else {
            None
        };
        match summary {
            Some(summary) => Err(SinkError::TooManyErrors {
                summary,
                last_errors: self.last.iter().cloned().collect(),
            }),
            None => Ok(()),
        }
    }

    pub fn total_errors(&self) -> u64 {
        self.total
    }
}

/// Statistics beyond the job counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SinkStats {
    pub counters: JobCounters,
    /// Items that failed permanently (within the error budget).
    pub failed_items: u64,
    /// Item re-sends after 429/5xx answers.
    pub item_retries: u64,
    /// Unchanged documents whose bookkeeping fields were updated.
    pub touched: u64,
    pub bulk_requests: u64,
}

struct State {
    stats: SinkStats,
    /// Operations taken from the queue and not resolved yet.
    pending: BTreeSet<u64>,
    /// Sequence number after the last operation taken from the queue.
    received: u64,
    monitor: ErrorMonitor,
    failure: Option<SinkError>,
}

struct Shared {
    es: EsClient,
    index: String,
    /// `index` as a JSON string, for the action lines.
    index_json: Box<[u8]>,
    query: Vec<(&'static str, String)>,
    opts: BulkOptions,
    state: Mutex<State>,
    watermark: watch::Sender<Progress>,
    reporter: Option<Arc<dyn JobReporter>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Progress {
    watermark: u64,
    failed: bool,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A poisoned lock means a panic in accounting code; the state is still consistent
        // enough to report (counters only grow).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(&self, st: &State) {
        let watermark = st.pending.first().copied().unwrap_or(st.received);
        let failed = st.failure.is_some();
        self.watermark.send_if_modified(|p| {
            let new = Progress { watermark, failed };
            let changed = *p != new;
            *p = new;
            changed
        });
    }

    fn fail(&self, e: SinkError) {
        let mut st = self.lock();
        if st.failure.is_none() {
            st.failure = Some(e);
        }
        self.publish(&st);
    }
}

/// The producer side of a running sink. Dropping it without [`finish`](Self::finish) stops the
/// sink after the queued operations.
pub struct Sink {
    tx: mpsc::Sender<Msg>,
    mem: Arc<Semaphore>,
    mem_cap: usize,
    next_seq: u64,
    shared: Arc<Shared>,
    progress: watch::Receiver<Progress>,
    task: tokio::task::JoinHandle<()>,
}

impl Sink {
    /// Starts a sink writing into `index` (with `?pipeline=` when `pipeline` is set).
    pub fn start(
        es: EsClient,
        index: impl Into<String>,
        pipeline: Option<String>,
        opts: BulkOptions,
        reporter: Option<Arc<dyn JobReporter>>,
    ) -> Sink {
        let mut opts = opts;
        opts.queue_max_size = opts.queue_max_size.max(1);
        opts.queue_max_mem_size = opts.queue_max_mem_size.max(1024);
        opts.chunk_size = opts.chunk_size.max(1);
        opts.max_concurrency = opts.max_concurrency.max(1);
        let (tx, rx) = mpsc::channel(opts.queue_max_size);
        let (wtx, wrx) = watch::channel(Progress {
            watermark: 0,
            failed: false,
        });
        let mem_cap = opts
            .queue_max_mem_size
            .min(Semaphore::MAX_PERMITS)
            .min(u32::MAX as usize);
        // Only what the accounting reads: each item's status and error. A full answer repeats
        // `_index`, `_id`, `_version`, `result`, `_shards`, `_seq_no` and `_primary_term` for
        // every item, which the node writes and the sink parses for nothing (about 7 % of the
        // connector's CPU in `cargo xtask bench gmail`).
        let mut query = vec![("filter_path", BULK_FILTER_PATH.to_owned())];
        if let Some(p) = pipeline {
            query.push(("pipeline", p));
        }
        let index: String = index.into();
        let shared = Arc::new(Shared {
            es,
            index_json: json_string(&index),
            index,
            query,
            state: Mutex::new(State {
                stats: SinkStats::default(),
                pending: BTreeSet::new(),
                received: 0,
                monitor: ErrorMonitor::new(opts.error_monitor.clone()),
                failure: None,
            }),
            opts,
            watermark: wtx,
            reporter,
        });
        let task = spawn_supervised(run_batcher(rx, shared.clone()), shared.clone());
        Sink {
            tx,
            mem: Arc::new(Semaphore::new(mem_cap)),
            mem_cap,
            next_seq: 0,
            shared,
            progress: wrx,
            task,
        }
    }

    /// Sequence number the next operation will get (= operations submitted so far).
    pub fn submitted(&self) -> u64 {
        self.next_seq
    }

    /// Every operation with a smaller sequence number is resolved.
    pub fn watermark(&self) -> u64 {
        self.progress.borrow().watermark
    }

    pub fn stats(&self) -> SinkStats {
        self.shared.lock().stats
    }

    fn failure(&self) -> Option<SinkError> {
        self.shared.lock().failure.clone()
    }

    /// Queues one operation; waits while the queue is full. Returns its sequence number.
    pub async fn submit(
        &mut self,
        action: Action,
        id: String,
        body: Option<Bytes>,
    ) -> Result<u64, SinkError> {
        if let Some(e) = self.failure() {
            return Err(e);
        }
        let body = match action {
            Action::Delete => None,
            _ => Some(body.unwrap_or_else(|| Bytes::from_static(b"{}"))),
        };
        let seq = self.next_seq;
        let item = Item::new(seq, action, &self.shared.index_json, id, body);
        let size = item.wire_size().min(self.mem_cap) as u32;
        let timeout = self.shared.opts.queue_refresh_timeout;
        let mem = self.mem.clone();
        let tx = self.tx.clone();
        let send = async move {
            let permit = mem
                .acquire_many_owned(size)
                .await
                .map_err(|_| SinkError::Stopped("queue closed".into()))?;
            tx.send(Msg::Op(item, permit))
                .await
                .map_err(|_| SinkError::Stopped("queue closed".into()))
        };
        match tokio::time::timeout(timeout, send).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(self.failure().unwrap_or(e)),
            Err(_) => {
                let e = SinkError::Overloaded(timeout);
                self.shared.fail(e.clone());
                return Err(e);
            }
        }
        self.next_seq += 1;
        Ok(seq)
    }

    /// Sends the partial chunk now and waits until every operation submitted so far is resolved.
    pub async fn flush(&mut self) -> Result<(), SinkError> {
        let target = self.next_seq;
        if self.watermark() >= target {
            return self.failure().map_or(Ok(()), Err);
        }
        if self.tx.send(Msg::Flush).await.is_err() {
            return Err(self
                .failure()
                .unwrap_or_else(|| SinkError::Stopped("queue closed".into())));
        }
        let res = self
            .progress
            .wait_for(|p| p.failed || p.watermark >= target)
            .await
            .map(|p| *p);
        match res {
            Ok(p) if !p.failed => Ok(()),
            _ => Err(self
                .failure()
                .unwrap_or_else(|| SinkError::Stopped("sink ended".into()))),
        }
    }

    /// Sends everything queued, waits for every request and returns the statistics.
    pub async fn finish(self) -> Result<SinkStats, SinkError> {
        let Sink {
            tx, shared, task, ..
        } = self;
        drop(tx);
        if let Err(e) = task.await {
            shared.fail(SinkError::Stopped(format!(
                "bulk task ended abnormally: {e}"
            )));
        }
        let st = shared.lock();
        if let Some(r) = &shared.reporter {
            r.counters(st.stats.counters);
        }
        match &st.failure {
            Some(e) => Err(e.clone()),
            None => Ok(st.stats),
        }
    }

    /// Stops at once: queued operations are dropped, requests in flight are abandoned.
    pub fn abort(self) -> SinkStats {
        self.task.abort();
        self.shared.lock().stats
    }
}

/// Runs `batcher` on a task of its own, in the caller's span (the job's, so that each `bulk`
/// span is a child of the job that produced it). A panic in it fails the sink: whoever waits
/// for the watermark (a flush submitted before the panic) is woken with the error instead of
/// waiting forever.
fn spawn_supervised(
    batcher: impl Future<Output = ()> + Send + 'static,
    shared: Arc<Shared>,
) -> tokio::task::JoinHandle<()> {
    let supervised = async move {
        if std::panic::AssertUnwindSafe(batcher)
            .catch_unwind()
            .await
            .is_err()
        {
            tracing::error!("the bulk batcher panicked");
            shared.fail(SinkError::Stopped("the bulk batcher panicked".into()));
        }
    };
    tokio::spawn(supervised.in_current_span())
}

#[derive(Default)]
struct Batch {
    items: Vec<Item>,
    lines: usize,
    bytes: usize,
}

async fn run_batcher(mut rx: mpsc::Receiver<Msg>, shared: Arc<Shared>) {
    let opts = shared.opts.clone();
    let mut batch = Batch::default();
    let mut inflight: JoinSet<()> = JoinSet::new();
    // When the chunk being filled is sent even if not full: `flush_interval` after its first
    // operation (one timer per chunk, not one per operation).
    let flush = tokio::time::sleep(opts.flush_interval);
    tokio::pin!(flush);
    loop {
        if shared.lock().failure.is_some() {
            break;
        }
        let msg = tokio::select! {
            m = rx.recv() => m,
            () = &mut flush, if !batch.items.is_empty() => Some(Msg::Flush),
            Some(r) = inflight.join_next(), if !inflight.is_empty() => {
                check_join(&shared, r);
                continue;
            }
        };
        match msg {
            None => break,
            Some(Msg::Flush) => dispatch(&shared, &mut batch, &mut inflight).await,
            Some(Msg::Op(item, permit)) => {
                drop(permit);
                {
                    let mut st = shared.lock();
                    st.pending.insert(item.seq);
                    st.received = item.seq + 1;
                }
                let (lines, size) = (item.lines(), item.wire_size());
                if !batch.items.is_empty()
                    && (batch.lines + lines > opts.chunk_size
                        || batch.bytes + size > opts.chunk_max_mem_size)
                {
                    dispatch(&shared, &mut batch, &mut inflight).await;
                }
                if batch.items.is_empty() {
                    flush
                        .as_mut()
                        .reset(crate::time::deadline_in(opts.flush_interval));
                }
                batch.items.push(item);
                batch.lines += lines;
                batch.bytes += size;
                if batch.lines >= opts.chunk_size || batch.bytes >= opts.chunk_max_mem_size {
                    dispatch(&shared, &mut batch, &mut inflight).await;
                }
            }
        }
    }
    if shared.lock().failure.is_none() {
        dispatch(&shared, &mut batch, &mut inflight).await;
    }
    while let Some(r) = inflight.join_next().await {
        check_join(&shared, r);
    }
    let st = shared.lock();
    shared.publish(&st);
}

async fn dispatch(shared: &Arc<Shared>, batch: &mut Batch, inflight: &mut JoinSet<()>) {
    if batch.items.is_empty() {
        return;
    }
    while inflight.len() >= shared.opts.max_concurrency {
        if let Some(r) = inflight.join_next().await {
            check_join(shared, r);
        }
    }
    let items = std::mem::take(batch).items;
    let shared = shared.clone();
    inflight.spawn(
        async move {
            if let Err(e) = send_items(&shared, items).await {
                tracing::error!(error = %e, "bulk request failed");
                shared.fail(e);
            }
        }
        .in_current_span(),
    );
}

/// A bulk task that panicked leaves its items unresolved: fail the sink rather than wait forever.
fn check_join(shared: &Shared, r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        shared.fail(SinkError::Stopped(format!(
            "bulk task ended abnormally: {e}"
        )));
    }
}

fn build_body(items: &[Item]) -> Bytes {
    let cap: usize = items.iter().map(Item::wire_size).sum();
    let mut out = BytesMut::with_capacity(cap);
    for item in items {
        out.put_slice(&item.header);
        match (item.action, &item.body) {
            (Action::Index, Some(b)) => out.put_slice(b),
            (Action::Update, Some(b)) => {
                out.put_slice(DOC_PREFIX);
                out.put_slice(b);
                out.put_slice(UPSERT_SUFFIX);
            }
            (Action::Touch, Some(b)) => {
                out.put_slice(DOC_PREFIX);
                out.put_slice(b);
                out.put_u8(b'}');
            }
            _ => continue,
        }
        out.put_u8(b'\n');
    }
    out.freeze()
}

/// Sends items, re-sending those answered 429/5xx, until each is resolved.
/// `filter_path` of every `_bulk` request: the overall flag and each item's status and error.
pub const BULK_FILTER_PATH: &str = "errors,items.*.status,items.*.error";

async fn send_items(shared: &Shared, mut items: Vec<Item>) -> Result<(), SinkError> {
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let body = build_body(&items);
        let span = bulk_span(&shared.index, items.len() as u64, body.len() as u64);
        let retry = send_bulk(shared, items, body, attempt, &span)
            .instrument(span.clone())
            .await?;
        drop(span);
        if retry.is_empty() {
            return Ok(());
        }
        let delay = backoff_delay(shared.opts.retry_interval, attempt);
        tracing::debug!(
            items = retry.len(),
            attempt,
            delay_ms = delay.as_millis() as u64,
            "re-sending bulk items answered with a transient error"
        );
        tokio::time::sleep(delay).await;
        items = retry;
    }
}

/// One `_bulk` request (inside its `bulk` span) and the accounting of its items; returns the
/// items to re-send.
async fn send_bulk(
    shared: &Shared,
    items: Vec<Item>,
    body: Bytes,
    attempt: u32,
    span: &tracing::Span,
) -> Result<Vec<Item>, SinkError> {
    let opts = &shared.opts;
    let metrics = crate::telemetry::metrics::metrics();
    if attempt > 1 {
        metrics.bulk_retry();
    }
    let started = std::time::Instant::now();
    let resp = match shared
        .es
        .send_bytes_raw(HttpMethod::Post, "/_bulk", &shared.query, Some(body), true)
        .await
    {
        Ok(resp) => resp,
        Err(e) => {
            span.record("otel.status_code", "error");
            return Err(e.into());
        }
    };
    let took = started.elapsed();
    metrics.bulk_request(took.as_secs_f64());
    tracing::debug!(
        items = items.len(),
        status = resp.status,
        took_ms = took.as_millis() as u64,
        "bulk request answered"
    );
    shared.lock().stats.bulk_requests += 1;
    span.record("http.response.status_code", i64::from(resp.status));
    if !resp.is_success() {
        span.record("otel.status_code", "error");
        let resp = resp.into_response(HttpMethod::Post);
        let err = crate::es::api_error(HttpMethod::Post, "/_bulk", &resp);
        return Err(err.into());
    }
    // Read into a typed answer: a `Value` tree of the items cost two maps per document.
    let results = match serde_json::from_slice::<BulkAnswer>(&resp.body) {
        Ok(answer) => answer.items,
        Err(e) => {
            return Err(SinkError::Bulk {
                message: format!("unreadable _bulk answer: {e}"),
                kind: ErrorKind::Fatal,
            });
        }
    };
    if results.len() != items.len() {
        return Err(SinkError::Bulk {
            message: format!(
                "_bulk answered {} items for {} operations",
                results.len(),
                items.len()
            ),
            kind: ErrorKind::Fatal,
        });
    }
    let mut retry = Vec::new();
    // Items this request did not apply (re-sent ones included; a delete's `not_found` is fine).
    let mut failed_items = 0i64;
    {
        let mut st = shared.lock();
        let mut budget: Result<(), SinkError> = Ok(());
        for (item, res) in items.into_iter().zip(results) {
            let status = res.status;
            let ok = (200..300).contains(&status);
            let already_deleted = item.action == Action::Delete && status == 404;
            if !ok && !already_deleted {
                failed_items += 1;
            }
            let transient = status_kind(status) == ErrorKind::Transient;
            if !ok && transient && attempt <= opts.max_retries {
                st.stats.item_retries += 1;
                retry.push(item);
                continue;
            }
            match item.action {
                Action::Delete => {
                    // `not_found` means already gone: the goal of a delete (W21).
                    if ok || status == 404 {
                        st.stats.counters.deleted_document_count += 1;
                        st.monitor.success();
                    } else if budget.is_ok() {
                        budget = record_failure(&mut st, &item, &res);
                    }
                }
                Action::Index | Action::Update if ok => {
                    st.stats.counters.indexed_document_count += 1;
                    st.stats.counters.indexed_document_volume_bytes +=
                        item.body.as_ref().map_or(0, |b| b.len() as u64);
                    st.monitor.success();
                }
                Action::Touch if ok => {
                    st.stats.touched += 1;
                    st.monitor.success();
                }
                _ => {
                    if budget.is_ok() {
                        budget = record_failure(&mut st, &item, &res);
                    }
                }
            }
            st.pending.remove(&item.seq);
        }
        span.record("failed_items", failed_items);
        if let Err(e) = budget {
            st.failure.get_or_insert(e.clone());
            shared.publish(&st);
            return Err(e);
        }
        shared.publish(&st);
        if let Some(r) = &shared.reporter {
            r.counters(st.stats.counters);
        }
    }
    Ok(retry)
}

/// What the sink reads of a `_bulk` answer (filtered by [`BULK_FILTER_PATH`]).
#[derive(Debug, Deserialize)]
struct BulkAnswer {
    #[serde(default)]
    items: Vec<BulkItem>,
}

/// One item of a `_bulk` answer, `{"<op>": {"status": …, "error": …}}`: the result of its one
/// operation (status 0 when the answer has none).
#[derive(Debug, Default)]
struct BulkItem {
    status: u16,
    error: Value,
}

impl<'de> Deserialize<'de> for BulkItem {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct OpResult {
            #[serde(default)]
            status: u16,
            #[serde(default)]
            error: Value,
        }
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = BulkItem;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a bulk item: {\"<op>\": {\"status\": …}}")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<BulkItem, A::Error> {
                let mut item = BulkItem::default();
                let mut first = true;
                while map.next_key::<serde::de::IgnoredAny>()?.is_some() {
                    if first {
                        let r: OpResult = map.next_value()?;
                        item = BulkItem {
                            status: r.status,
                            error: r.error,
                        };
                        first = false;
                    } else {
                        map.next_value::<serde::de::IgnoredAny>()?;
                    }
                }
                Ok(item)
            }
        }
        d.deserialize_map(Visitor)
    }
}

fn record_failure(st: &mut State, item: &Item, res: &BulkItem) -> Result<(), SinkError> {
    st.stats.failed_items += 1;
    let err = &res.error;
    let message = format!(
        "{} {:?}: {} {}",
        item.action.op(),
        item.id,
        res.status,
        if err.is_null() {
            "(no error details)".to_owned()
        } else {
            format!(
                "{}: {}",
                err["type"].as_str().unwrap_or("error"),
                err["reason"].as_str().unwrap_or("")
            )
        }
    );
    tracing::error!(id = %item.id, op = item.action.op(), error = %message, "bulk item failed");
    st.monitor.error(message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bulk_answers_are_read_item_by_item() {
        let body = br#"{"errors":true,"items":[
            {"index":{"status":201}},
            {"delete":{"status":404}},
            {"update":{"status":400,"error":{"type":"mapper_parsing_exception","reason":"bad"}}},
            {"index":{}},
            {"index":{"status":200},"unexpected":{"status":500}}
        ]}"#;
        let answer: BulkAnswer = serde_json::from_slice(body).unwrap();
        let statuses: Vec<u16> = answer.items.iter().map(|i| i.status).collect();
        assert_eq!(statuses, [201, 404, 400, 0, 200]);
        assert_eq!(answer.items[2].error["type"], "mapper_parsing_exception");
        assert!(answer.items[0].error.is_null());
        // Filtered to nothing (no items) and a shape that is not a bulk answer.
        let empty: BulkAnswer = serde_json::from_slice(br#"{"errors":false}"#).unwrap();
        assert!(empty.items.is_empty());
        assert!(serde_json::from_slice::<BulkAnswer>(br#"{"items":[42]}"#).is_err());
        assert!(serde_json::from_slice::<BulkAnswer>(b"not json").is_err());
    }

    #[test]
    fn monitor_consecutive_limit() {
        let mut m = ErrorMonitor::new(ErrorMonitorOptions {
            max_consecutive_errors: 2,
            max_error_rate: 1.0,
            ..Default::default()
        });
        assert!(m.error("a".into()).is_ok());
        assert!(m.error("b".into()).is_ok());
        let e = m.error("c".into()).unwrap_err();
        assert!(e.to_string().contains("3 consecutive"), "{e}");
    }

    #[test]
    fn monitor_rate_window() {
        let mut m = ErrorMonitor::new(ErrorMonitorOptions {
            max_consecutive_errors: 100,
            error_window_size: 10,
            max_error_rate: 0.25,
            ..Default::default()
        });
        for _ in 0..2 {
            m.error("x".into()).unwrap();
            m.success();
        }
        // 3 errors in a window of 10 > 0.25
        assert!(m.error("y".into()).is_err());
    }

    #[test]
    fn monitor_disabled_only_counts() {
        let mut m = ErrorMonitor::new(ErrorMonitorOptions {
            enabled: false,
            ..Default::default()
        });
        for _ in 0..50 {
            m.error("x".into()).unwrap();
        }
        assert_eq!(m.total_errors(), 50);
    }

    #[tokio::test]
    async fn a_panicking_batcher_fails_the_sink_and_wakes_its_waiters() {
        let conn = crate::EsConnection::new("http://127.0.0.1:9".parse().expect("url"));
        let es = EsClient::new(&conn).expect("client");
        let mut sink = Sink::start(es, "idx", None, BulkOptions::default(), None);
        let mut progress = sink.progress.clone();
        let panicking = spawn_supervised(
            async { panic!("a bug in the batcher") },
            sink.shared.clone(),
        );
        assert!(panicking.await.is_ok(), "the panic is caught");
        let woken = progress.wait_for(|p| p.failed).await.map(|p| *p);
        assert!(woken.is_ok_and(|p| p.failed));
        assert!(matches!(sink.flush().await, Err(SinkError::Stopped(_))));
        assert!(matches!(
            sink.submit(Action::Index, "a".into(), None).await,
            Err(SinkError::Stopped(_))
        ));
    }

    #[test]
    fn action_lines_are_what_serde_json_writes() {
        let control: String = (0u8..0x20).map(char::from).collect();
        let ids = [
            "plain:18c2a0f3",
            "a\"b\\c",
            control.as_str(),
            "\u{7f}é\u{2028}🙂",
            "",
        ];
        for action in [Action::Index, Action::Update, Action::Touch, Action::Delete] {
            for id in ids {
                let line = action_line(action, &json_string("idx-\"q\""), id);
                let mut expected = serde_json::to_vec(
                    &serde_json::json!({ action.op(): {"_index": "idx-\"q\"", "_id": id} }),
                )
                .expect("json");
                expected.push(b'\n');
                assert_eq!(&line[..], &expected[..], "{action:?} {id:?}");
            }
        }
    }

    #[test]
    fn bulk_body_shapes() {
        let idx = json_string("idx");
        let items = vec![
            Item::new(
                0,
                Action::Index,
                &idx,
                "a\"b".into(),
                Some(Bytes::from_static(b"{\"x\":1}")),
            ),
            Item::new(
                1,
                Action::Update,
                &idx,
                "c".into(),
                Some(Bytes::from_static(b"{\"y\":2}")),
            ),
            Item::new(
                2,
                Action::Touch,
                &idx,
                "e".into(),
                Some(Bytes::from_static(b"{\"g\":3}")),
            ),
            Item::new(3, Action::Delete, &idx, "d".into(), None),
        ];
        let body = build_body(&items);
        assert_eq!(body.len(), items.iter().map(Item::wire_size).sum::<usize>());
        let text = std::str::from_utf8(&body).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 7);
        assert_eq!(lines[5], r#"{"doc":{"g":3}}"#);
        assert_eq!(lines[0], r#"{"index":{"_index":"idx","_id":"a\"b"}}"#);
        assert_eq!(lines[3], r#"{"doc":{"y":2},"doc_as_upsert":true}"#);
        assert_eq!(lines[6], r#"{"delete":{"_index":"idx","_id":"d"}}"#);
        assert!(text.ends_with('\n'));
    }
}
