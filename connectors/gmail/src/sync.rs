//! Full, incremental and access-control syncs.
//!
//! Mailboxes are partitions (`mailbox` field). Every mailbox that was enumerated completely ends
//! with `PartitionComplete{field: "mailbox"}` and a checkpoint listing the finished mailboxes
//! with the `historyId` read from `users.getProfile` *before* the mailbox was listed. A full sync
//! ends with `Complete` only when every mailbox was enumerated; when a mailbox was skipped for
//! an authorization failure (revoked delegation, …) the stream ends with an `Unauthorized` error
//! naming those mailboxes instead of `Complete`, so nothing outside the finished partitions is
//! deleted and the skipped mailboxes keep their documents. Incremental syncs keep the old cursor
//! position of such mailboxes and complete (nothing is deleted by an incremental `Complete`).

use std::{
    cell::Cell,
    collections::{BTreeMap, BTreeSet, HashSet},
    future::Future,
    sync::{Arc, Mutex},
};
use tracing::Instrument;

use connector_framework::{
    connector::{
        Completion, Document, DocumentEncoder, EncodedDocument, SyncEvent, SyncItem, SyncRequest,
        SyncStream,
    },
    model::now_timestamp,
    source::SourceError,
};
use futures::{
    SinkExt as _, StreamExt as _,
    channel::mpsc,
    stream::{self, BoxStream},
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::{
    api::{DirectoryUser, GoogleApi, MAX_BATCH, RawBody},
    auth::SCOPE_GMAIL,
    config::FIELD_CREDENTIALS,
    config::GmailConfig,
    document::{DocOptions, build_document, doc_id},
    error::{GoogleError, GoogleErrorClass},
    rules,
    stats::{GmailStats, inc},
};

/// The partition field of message documents.
pub const MAILBOX_FIELD: &str = "mailbox";
/// Requests in flight per mailbox (Gmail refuses more than about 10 concurrent per user).
pub const PER_MAILBOX_CONCURRENCY: usize = 8;

/// Cross-run cursor: the Gmail `historyId` of each synced mailbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GmailCursor {
    #[serde(default)]
    pub mailboxes: BTreeMap<String, String>,
}

/// In-run checkpoint: mailboxes finished by this job, with their new `historyId`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GmailCheckpoint {
    #[serde(default)]
    pub finished: BTreeMap<String, String>,
}

pub type Event = SyncEvent<GmailCursor, GmailCheckpoint>;
type Tx = mpsc::Sender<Result<Event, SourceError>>;

/// Why a mailbox pass stopped early.
#[derive(Debug)]
pub(crate) enum Abort {
    Google(GoogleError),
    /// The consumer dropped the stream.
    Stopped,
}

impl From<GoogleError> for Abort {
    fn from(e: GoogleError) -> Self {
        Abort::Google(e)
    }
}

/// Runs `driver` in its own task and returns the stream of what it sends (at most `capacity`
/// items ahead of the consumer).
///
/// The driver is a task of its own so that it keeps issuing requests while the consumer is busy
/// (serializing, waiting for the bulk queue): were it polled only through the stream, every
/// pause of the consumer would stall all mailboxes and waste their quota. Dropping the stream
/// (a cancelled job) aborts the task.
pub(crate) fn generate<T, F, Fut>(capacity: usize, driver: F) -> BoxStream<'static, T>
where
    T: Send + 'static,
    F: FnOnce(mpsc::Sender<T>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = mpsc::channel(capacity);
    let task = tokio::spawn(driver(tx).in_current_span());
    Driven {
        rx,
        _task: tokio_util::task::AbortOnDropHandle::new(task),
    }
    .boxed()
}

/// The receiving end of a [`generate`]d stream; owns the driver's task.
struct Driven<T> {
    rx: mpsc::Receiver<T>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl<T> futures::Stream for Driven<T> {
    type Item = T;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        self.rx.poll_next_unpin(cx)
    }
}

async fn emit(tx: &mut Tx, item: Result<Event, SourceError>) -> Result<(), Abort> {
    tx.send(item).await.map_err(|_| Abort::Stopped)
}

tokio::task_local! {
    /// Documents (upserts and deletes) emitted by the mailbox pass being polled, for its span.
    static MAILBOX_DOCUMENTS: Cell<u64>;
}

async fn emit_item(tx: &mut Tx, item: SyncItem<GmailCheckpoint>) -> Result<(), Abort> {
    if matches!(
        item,
        SyncItem::Upsert(_) | SyncItem::Encoded(_) | SyncItem::Delete { .. }
    ) {
        // Outside a mailbox pass there is nothing to count.
        let _ = MAILBOX_DOCUMENTS.try_with(|n| n.set(n.get() + 1));
    }
    emit(tx, Ok(SyncEvent::Item(item))).await
}

/// Maps a Google failure that ends a sync to the framework's error.
pub(crate) fn source_error(context: &str, e: &GoogleError) -> SourceError {
    let message = format!("{context}: {e}");
    match e.class() {
        GoogleErrorClass::RateLimited | GoogleErrorClass::Transient => {
            SourceError::Transient(message)
        }
        GoogleErrorClass::InvalidToken | GoogleErrorClass::Unauthorized => {
            SourceError::Unauthorized(message)
        }
        GoogleErrorClass::MailboxUnavailable
        | GoogleErrorClass::NotFound
        | GoogleErrorClass::BadRequest
        | GoogleErrorClass::QuotaExhausted => SourceError::Fatal(message),
    }
}

/// What became of one mailbox.
enum MailboxOutcome {
    /// Enumerated (or caught up); the new history id.
    Done(String),
    /// Gmail refuses the mailbox (no mail service, suspended): nothing to sync.
    Unavailable,
    /// Authorization failed for this mailbox: its documents must be kept.
    Skipped,
}

/// Messages whose source (`raw`, decoded) is larger than this are parsed on the blocking pool; smaller ones
/// (almost all mail) on the fetching task, which avoids a thread hand-off per message.
const INLINE_PARSE_MAX: usize = 256 * 1024;

/// Whether a message with `labels` stays out of the index.
fn is_excluded(include_spam_and_trash: bool, labels: &[String]) -> bool {
    !include_spam_and_trash && labels.iter().any(|l| l == "SPAM" || l == "TRASH")
}

enum Fetched {
    /// Encoded for the sink; `None` when the encoder left it out (basic sync rules, size).
    Doc(Option<EncodedDocument>),
    /// Permanently deleted between list and get.
    Gone,
    /// In spam or trash while those are excluded.
    Excluded,
}

/// A message id and what fetching it gave.
type FetchedId = (String, Result<Fetched, GoogleError>);

/// Messages per batch request: the configured number, within 1..=[`MAX_BATCH`].
fn batch_size(config: &GmailConfig) -> usize {
    (config.messages_per_batch_request as usize).clamp(1, MAX_BATCH)
}

/// Turns one `messages.get` answer into a document (or gone / excluded).
async fn process(
    api: &GoogleApi,
    owner: &str,
    id: &str,
    answer: Result<crate::api::RawMessage, GoogleError>,
    options: DocOptions,
    include_spam_and_trash: bool,
    encoder: &DocumentEncoder,
) -> Result<Fetched, GoogleError> {
    let message = match answer {
        Ok(m) => m,
        Err(e) if e.class() == GoogleErrorClass::NotFound => {
            inc(&api.stats().messages_vanished);
            return Ok(Fetched::Gone);
        }
        Err(e) => return Err(e),
    };
    inc(&api.stats().messages_fetched);
    if is_excluded(include_spam_and_trash, &message.label_ids) {
        return Ok(Fetched::Excluded);
    }
    let large = message
        .raw
        .as_ref()
        .and_then(RawBody::bytes)
        .is_some_and(|r| r.len() > INLINE_PARSE_MAX);
    // The document is encoded here, on the task that built it (in parallel, in cache), not on
    // the job's single task.
    let (doc, warnings) = if large {
        // Parsing a big message takes milliseconds: not on an I/O worker.
        let (owner, mid, encoder) = (owner.to_owned(), id.to_owned(), encoder.clone());
        tokio::task::spawn_blocking(move || {
            build_document(&encoder, &owner, &mid, &message, options)
        })
        .await
        .map_err(|e| GoogleError::Decode {
            method: "gmail.users.messages.get",
            message: format!("parsing the message failed: {e}"),
        })?
    } else {
        build_document(encoder, owner, id, &message, options)
    };
    if !warnings.is_empty() {
        inc(&api.stats().mime_warnings);
        tracing::warn!(
            mailbox = %owner,
            message_id = %id,
            ?warnings,
            "message parsed partially"
        );
    }
    Ok(Fetched::Doc(doc))
}

pub(crate) struct SyncCtx {
    pub api: Arc<GoogleApi>,
    pub config: GmailConfig,
    pub queries: Vec<Option<String>>,
    pub has_rules: bool,
    pub doc: DocOptions,
    pub stats: Arc<GmailStats>,
    pub encoder: DocumentEncoder,
}

impl SyncCtx {
    pub fn new(
        api: GoogleApi,
        config: &GmailConfig,
        request: &SyncRequest<GmailCursor, GmailCheckpoint>,
    ) -> Self {
        let advanced = if request.sync_rules_enabled {
            request.filtering.advanced_rules()
        } else {
            Value::Null
        };
        let queries = rules::queries(&advanced);
        let has_rules = queries.iter().any(Option::is_some);
        let stats = api.stats().clone();
        Self {
            api: Arc::new(api),
            config: config.clone(),
            queries,
            has_rules,
            doc: DocOptions {
                dls: request.dls_enabled,
                include_raw: config.include_full_raw_message,
            },
            stats,
            encoder: request.encoder.clone(),
        }
    }

    async fn users(&self) -> Result<Vec<DirectoryUser>, SourceError> {
        let users = self
            .api
            .list_users(&self.config.subject, &self.config.customer_id)
            .await
            // The same field-level message as the configuration check: a delegation revoked
            // after the connector was set up shows on the connector as what to fix.
            .map_err(|e| crate::validate::directory_error(&self.config, &e))?;
        tracing::info!(users = users.len(), "listed workspace users");
        Ok(users)
    }

    /// Fetches and parses the messages `ids` of `mailbox` — one Gmail batch request, or a plain
    /// `messages.get` for a single message — in a task of their own, so the HTTP, JSON, base64
    /// and MIME work of a sync spreads over the runtime's worker threads instead of the sync's
    /// single task. One result per id; `Err` when the request itself failed.
    async fn fetch(&self, mailbox: &str, ids: Vec<String>) -> Result<Vec<FetchedId>, GoogleError> {
        let api = Arc::clone(&self.api);
        let owner = mailbox.to_owned();
        let (options, include_spam_and_trash) = (self.doc, self.config.include_spam_and_trash);
        let encoder = self.encoder.clone();
        let task = tokio::spawn(
            async move {
                let answers = api.get_messages_raw(&owner, &ids).await?;
                let mut out = Vec::with_capacity(ids.len());
                for (id, answer) in ids.into_iter().zip(answers) {
                    let fetched = process(
                        &api,
                        &owner,
                        &id,
                        answer,
                        options,
                        include_spam_and_trash,
                        &encoder,
                    )
                    .await;
                    out.push((id, fetched));
                    // A batch's messages are parsed one after the other: other tasks run in
                    // between once the task's cooperative budget is spent (a yield after every
                    // message rescheduled the task eight times per batch).
                    tokio::task::consume_budget().await;
                }
                Ok(out)
            }
            .in_current_span(),
        );
        // Dropping the sync (cancellation) aborts the task too. A task that panicked (a bug:
        // the MIME parser's panics are already contained) ends the pass with an error instead
        // of skipping its messages, so the mailbox is not completed and nothing of it is
        // deleted.
        tokio_util::task::AbortOnDropHandle::new(task)
            .await
            .unwrap_or_else(|e| {
                Err(GoogleError::Decode {
                    method: "gmail.users.messages.get",
                    message: format!("processing the messages failed: {e}"),
                })
            })
    }

    /// Fetches the messages of `ids` ([`PER_MAILBOX_CONCURRENCY`] at a time, in batch requests
    /// of `messages_per_batch_request`) and emits upserts (and, when `delete_missing`, deletes
    /// for messages that are gone or excluded).
    ///
    /// `ids` may be a listing still in progress: the next page is requested while the messages
    /// of the current one are being fetched, so the mailbox's quota is not left idle at page
    /// boundaries. A listing error ends the pass.
    async fn fetch_and_emit<S>(
        &self,
        mailbox: &str,
        ids: S,
        delete_missing: bool,
        tx: &mut Tx,
    ) -> Result<(), Abort>
    where
        S: futures::Stream<Item = Result<String, GoogleError>> + Send,
    {
        let per_batch = batch_size(&self.config);
        let mut batches = std::pin::pin!(
            ids.ready_chunks(per_batch)
                .map(|listed| async move {
                    let ids = listed.into_iter().collect::<Result<Vec<_>, _>>()?;
                    self.fetch(mailbox, ids).await
                })
                .buffer_unordered((PER_MAILBOX_CONCURRENCY / per_batch).max(1))
        );
        while let Some(batch) = batches.next().await {
            for (id, result) in batch? {
                match result {
                    Ok(Fetched::Doc(Some(doc))) => emit_item(tx, SyncItem::Encoded(doc)).await?,
                    // Left out by the basic sync rules or the size limit (counted there).
                    Ok(Fetched::Doc(None)) => {}
                    Ok(Fetched::Gone | Fetched::Excluded) => {
                        if delete_missing {
                            emit_item(
                                tx,
                                SyncItem::Delete {
                                    id: doc_id(mailbox, &id),
                                },
                            )
                            .await?;
                        }
                    }
                    Err(e) if matches!(e.class(), GoogleErrorClass::BadRequest) => {
                        inc(&self.stats.messages_failed);
                        tracing::warn!(mailbox, message_id = %id, error = %e, "message skipped");
                    }
                    Err(e) => return Err(Abort::Google(e)),
                }
            }
        }
        Ok(())
    }

    /// Message ids of `mailbox` matching `q`, page after page (a page is requested when the
    /// previous one has been consumed).
    fn list_ids<'s>(
        &'s self,
        mailbox: &'s str,
        q: Option<&'s str>,
    ) -> impl futures::Stream<Item = Result<String, GoogleError>> + Send + 's {
        /// Where the listing is: the next page's token, or done.
        enum Next {
            Page(Option<String>),
            Done,
        }
        stream::unfold(Next::Page(None), move |next| async move {
            let Next::Page(token) = next else {
                return None;
            };
            let page = self
                .api
                .list_messages(
                    mailbox,
                    q,
                    self.config.include_spam_and_trash,
                    token.as_deref(),
                )
                .await;
            Some(match page {
                Ok(page) => {
                    let ids: Vec<Result<String, GoogleError>> =
                        page.messages.into_iter().map(|m| Ok(m.id)).collect();
                    let next = match page.next_page_token.filter(|t| !t.is_empty()) {
                        Some(n) if Some(&n) != token.as_ref() => Next::Page(Some(n)),
                        _ => Next::Done,
                    };
                    (ids, next)
                }
                Err(e) => (vec![Err(e)], Next::Done),
            })
        })
        .flat_map(stream::iter)
    }

    /// Enumerates a whole mailbox (every query), emits its documents and
    /// `PartitionComplete`; returns the history id read before listing.
    async fn enumerate_mailbox(&self, mailbox: &str, tx: &mut Tx) -> Result<String, Abort> {
        let profile = self.api.get_profile(mailbox).await?;
        // With several rule queries a message can match more than one: fetch it once. With one
        // query the listing has no duplicates and nothing needs remembering.
        let dedup = self.queries.len() > 1;
        let mut seen: HashSet<String> = HashSet::new();
        for q in &self.queries {
            let seen = &mut seen;
            let ids = self.list_ids(mailbox, q.as_deref()).filter(move |listed| {
                let fresh = match listed {
                    Ok(id) if dedup => seen.insert(id.clone()),
                    _ => true,
                };
                futures::future::ready(fresh)
            });
            self.fetch_and_emit(mailbox, ids, false, tx).await?;
        }
        emit_item(
            tx,
            SyncItem::PartitionComplete {
                field: MAILBOX_FIELD.into(),
                value: Value::from(mailbox.to_ascii_lowercase()),
            },
        )
        .await?;
        Ok(profile.history_id)
    }

    /// Applies the history of `mailbox` since `start`; returns the new history id.
    async fn catch_up_mailbox(
        &self,
        mailbox: &str,
        start: &str,
        tx: &mut Tx,
    ) -> Result<String, Abort> {
        let mut touched: BTreeSet<String> = BTreeSet::new();
        let mut deleted: BTreeSet<String> = BTreeSet::new();
        let mut token: Option<String> = None;
        let mut latest = start.to_owned();
        loop {
            let page = self
                .api
                .list_history(mailbox, start, token.as_deref())
                .await?;
            for record in page.history {
                for change in record
                    .messages_added
                    .iter()
                    .chain(&record.labels_added)
                    .chain(&record.labels_removed)
                {
                    touched.insert(change.message.id.clone());
                }
                for change in &record.messages_deleted {
                    deleted.insert(change.message.id.clone());
                }
            }
            if let Some(h) = page.history_id {
                latest = h;
            }
            match page.next_page_token.filter(|t| !t.is_empty()) {
                Some(next) if Some(&next) != token.as_ref() => token = Some(next),
                _ => break,
            }
        }
        for id in &deleted {
            touched.remove(id);
            emit_item(
                tx,
                SyncItem::Delete {
                    id: doc_id(mailbox, id),
                },
            )
            .await?;
        }
        let mut to_fetch: Vec<String> = touched.into_iter().collect();
        if self.has_rules && !to_fetch.is_empty() {
            // A changed message belongs to the index iff one of the rule queries matches it.
            let mut matching: HashSet<String> = HashSet::new();
            for q in &self.queries {
                let mut ids = std::pin::pin!(self.list_ids(mailbox, q.as_deref()));
                while let Some(id) = ids.next().await {
                    matching.insert(id?);
                }
            }
            let (keep, drop): (Vec<String>, Vec<String>) =
                to_fetch.into_iter().partition(|id| matching.contains(id));
            for id in drop {
                emit_item(
                    tx,
                    SyncItem::Delete {
                        id: doc_id(mailbox, &id),
                    },
                )
                .await?;
            }
            to_fetch = keep;
        }
        let to_fetch = stream::iter(to_fetch.into_iter().map(Ok));
        self.fetch_and_emit(mailbox, to_fetch, true, tx).await?;
        Ok(latest)
    }

    /// Runs `pass` for `mailbox` inside its `mailbox` span (which records the documents the
    /// pass emitted), turning per-mailbox failures into outcomes.
    async fn guarded(
        &self,
        mailbox: &str,
        pass: impl Future<Output = Result<String, Abort>>,
    ) -> Result<MailboxOutcome, Abort> {
        let span = connector_framework::telemetry::otel::mailbox_span(mailbox);
        let (result, documents) = MAILBOX_DOCUMENTS
            .scope(Cell::new(0), async {
                let result = pass.await;
                (result, MAILBOX_DOCUMENTS.with(Cell::get))
            })
            .instrument(span.clone())
            .await;
        span.record("documents", i64::try_from(documents).unwrap_or(i64::MAX));
        span.in_scope(|| self.outcome(mailbox, result))
    }

    fn outcome(
        &self,
        mailbox: &str,
        result: Result<String, Abort>,
    ) -> Result<MailboxOutcome, Abort> {
        match result {
            Ok(h) => {
                inc(&self.stats.mailboxes_synced);
                Ok(MailboxOutcome::Done(h))
            }
            Err(Abort::Google(e)) => match e.class() {
                GoogleErrorClass::MailboxUnavailable => {
                    inc(&self.stats.mailboxes_skipped);
                    tracing::warn!(mailbox, error = %e, "mailbox unavailable, skipped");
                    Ok(MailboxOutcome::Unavailable)
                }
                GoogleErrorClass::Unauthorized | GoogleErrorClass::InvalidToken => {
                    inc(&self.stats.mailboxes_skipped);
                    tracing::warn!(mailbox, error = %e, "mailbox not authorized, skipped; its documents are kept");
                    Ok(MailboxOutcome::Skipped)
                }
                GoogleErrorClass::NotFound => {
                    // The user vanished between the Directory listing and the Gmail calls.
                    inc(&self.stats.mailboxes_skipped);
                    tracing::warn!(mailbox, error = %e, "mailbox not found, skipped");
                    Ok(MailboxOutcome::Unavailable)
                }
                _ => Err(Abort::Google(e)),
            },
            Err(Abort::Stopped) => Err(Abort::Stopped),
        }
    }

    async fn finish_mailbox(
        &self,
        mailbox: &str,
        history_id: String,
        finished: &Mutex<BTreeMap<String, String>>,
        tx: &mut Tx,
    ) -> Result<(), Abort> {
        let snapshot = {
            let mut f = finished.lock().unwrap_or_else(|p| p.into_inner());
            f.insert(mailbox.to_ascii_lowercase(), history_id);
            f.clone()
        };
        emit_item(
            tx,
            SyncItem::Checkpoint(GmailCheckpoint { finished: snapshot }),
        )
        .await
    }

    fn mailbox_users(&self, users: Vec<DirectoryUser>) -> Vec<String> {
        let mut out: Vec<String> = users
            .into_iter()
            .filter(|u| {
                // Google refuses to impersonate suspended users and users without a mailbox
                // have no mail: neither is synced (their documents go with the next full sync).
                let has_mail = u.is_mailbox_setup != Some(false);
                let suspended = u.suspended == Some(true);
                if !has_mail || suspended {
                    tracing::debug!(user = %u.primary_email, has_mail, suspended, "mailbox not synced");
                }
                has_mail && !suspended
            })
            .map(|u| u.primary_email.to_ascii_lowercase())
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// The mailboxes of a pass: all of them, those the checkpoint already finished (with their
    /// history ids) and those still to do. `None` (the error sent) when the Directory cannot be
    /// listed.
    async fn plan(
        &self,
        checkpoint: Option<GmailCheckpoint>,
        tx: &mut Tx,
    ) -> Option<(Vec<String>, Mutex<BTreeMap<String, String>>, Vec<String>)> {
        let users = match self.users().await {
            Ok(u) => u,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return None;
            }
        };
        let finished = checkpoint.map(|c| c.finished).unwrap_or_default();
        let mailboxes = self.mailbox_users(users);
        let pending = mailboxes
            .iter()
            .filter(|m| !finished.contains_key(*m))
            .cloned()
            .collect();
        Some((mailboxes, Mutex::new(finished), pending))
    }

    /// Full sync driver.
    pub async fn run_full(self, checkpoint: Option<GmailCheckpoint>, mut tx: Tx) {
        let Some((_, finished, pending)) = self.plan(checkpoint, &mut tx).await else {
            return;
        };
        let concurrency = self.config.max_concurrent_mailboxes.max(1) as usize;
        let mut incomplete = Vec::new();
        {
            let this = &self;
            let finished = &finished;
            let worker_tx = tx.clone();
            let mut runs = stream::iter(pending)
                .map(|mailbox| {
                    let mut tx = worker_tx.clone();
                    async move {
                        let outcome = this
                            .guarded(&mailbox, this.enumerate_mailbox(&mailbox, &mut tx))
                            .await;
                        if let Ok(MailboxOutcome::Done(h)) = &outcome {
                            this.finish_mailbox(&mailbox, h.clone(), finished, &mut tx)
                                .await?;
                        }
                        outcome.map(|o| (mailbox, o))
                    }
                })
                .buffer_unordered(concurrency);
            while let Some(result) = runs.next().await {
                match result {
                    Ok((_, MailboxOutcome::Done(_) | MailboxOutcome::Unavailable)) => {}
                    Ok((mailbox, MailboxOutcome::Skipped)) => incomplete.push(mailbox),
                    Err(Abort::Stopped) => return,
                    Err(Abort::Google(e)) => {
                        let _ = tx.send(Err(source_error("gmail sync", &e))).await;
                        return;
                    }
                }
            }
        }
        if !incomplete.is_empty() {
            incomplete.sort();
            tracing::warn!(
                mailboxes = ?incomplete,
                "full sync incomplete: mailboxes skipped for authorization failures keep their documents"
            );
            // Without `Complete` nothing outside the finished mailboxes is deleted; the error
            // tells the user which mailboxes to look at.
            let _ = tx
                .send(Err(SourceError::Unauthorized(format!(
                    "{} mailbox(es) could not be synced because Google refused access ({FIELD_CREDENTIALS}: check the service account's domain-wide delegation for {SCOPE_GMAIL}): {}; their documents were kept, the other mailboxes are up to date",
                    incomplete.len(),
                    incomplete.join(", ")
                ))))
                .await;
            return;
        }
        let cursor = GmailCursor {
            mailboxes: finished.into_inner().unwrap_or_else(|p| p.into_inner()),
        };
        let _ = tx
            .send(Ok(SyncEvent::Complete(Completion {
                cursor: Some(cursor),
            })))
            .await;
    }

    /// Incremental sync driver.
    pub async fn run_incremental(
        self,
        cursor: GmailCursor,
        checkpoint: Option<GmailCheckpoint>,
        mut tx: Tx,
    ) {
        let Some((mailboxes, finished, pending)) = self.plan(checkpoint, &mut tx).await else {
            return;
        };
        let concurrency = self.config.max_concurrent_mailboxes.max(1) as usize;
        // Mailboxes kept at their old position (skipped or unavailable this time).
        let mut kept: BTreeMap<String, String> = BTreeMap::new();
        {
            let this = &self;
            let finished = &finished;
            let cursor = &cursor;
            let worker_tx = tx.clone();
            let mut runs = stream::iter(pending)
                .map(|mailbox| {
                    let mut tx = worker_tx.clone();
                    async move {
                        let start = cursor.mailboxes.get(&mailbox).cloned();
                        let outcome = this
                            .guarded(&mailbox, async {
                                match &start {
                                    None => this.enumerate_mailbox(&mailbox, &mut tx).await,
                                    Some(start) => {
                                        match this.catch_up_mailbox(&mailbox, start, &mut tx).await
                                        {
                                            Err(Abort::Google(e))
                                                if e.class() == GoogleErrorClass::NotFound =>
                                            {
                                                inc(&this.stats.history_resyncs);
                                                tracing::info!(
                                                    mailbox,
                                                    start,
                                                    "history expired, resyncing mailbox"
                                                );
                                                this.enumerate_mailbox(&mailbox, &mut tx).await
                                            }
                                            other => other,
                                        }
                                    }
                                }
                            })
                            .await;
                        if let Ok(MailboxOutcome::Done(h)) = &outcome {
                            this.finish_mailbox(&mailbox, h.clone(), finished, &mut tx)
                                .await?;
                        }
                        outcome.map(|o| (mailbox, start, o))
                    }
                })
                .buffer_unordered(concurrency);
            while let Some(result) = runs.next().await {
                match result {
                    Ok((_, _, MailboxOutcome::Done(_))) => {}
                    Ok((mailbox, start, MailboxOutcome::Skipped | MailboxOutcome::Unavailable)) => {
                        if let Some(s) = start {
                            kept.insert(mailbox, s);
                        }
                    }
                    Err(Abort::Stopped) => return,
                    Err(Abort::Google(e)) => {
                        let _ = tx
                            .send(Err(source_error("gmail incremental sync", &e)))
                            .await;
                        return;
                    }
                }
            }
        }
        // Mailboxes of the cursor whose users are gone from the Directory: drop their documents.
        let current: HashSet<&String> = mailboxes.iter().collect();
        for gone in cursor.mailboxes.keys().filter(|m| !current.contains(m)) {
            tracing::info!(mailbox = %gone, "user no longer in the directory, removing its documents");
            let item = SyncItem::PartitionComplete {
                field: MAILBOX_FIELD.into(),
                value: Value::from(gone.clone()),
            };
            if tx.send(Ok(SyncEvent::Item(item))).await.is_err() {
                return;
            }
        }
        let mut next = finished.into_inner().unwrap_or_else(|p| p.into_inner());
        for (m, h) in kept {
            next.entry(m).or_insert(h);
        }
        let _ = tx
            .send(Ok(SyncEvent::Complete(Completion {
                cursor: Some(GmailCursor { mailboxes: next }),
            })))
            .await;
    }
}

/// The DLS role query of an identity: the framework's template, byte-compatible with Elastic's
/// (framework-spec §12.2).
pub fn access_control_query(access_control: &[String]) -> Value {
    let ids: Vec<Option<&str>> = access_control.iter().map(|s| Some(s.as_str())).collect();
    connector_framework::sync::dls::access_control_query(&ids)
}

/// The mustache source of the role query.
pub use connector_framework::sync::dls::DLS_QUERY_TEMPLATE;

/// The identity document of a Workspace user for the access-control index.
pub fn identity_document(user: &DirectoryUser) -> Document {
    let email = user.primary_email.to_ascii_lowercase();
    let created_at = user.creation_time.clone().unwrap_or_else(now_timestamp);
    let mut fields = serde_json::Map::new();
    fields.insert("identity".into(), json!({"email": email}));
    fields.insert("created_at".into(), Value::from(created_at));
    fields.insert(
        "query".into(),
        access_control_query(std::slice::from_ref(&email)),
    );
    Document {
        id: email,
        timestamp: None,
        fields,
    }
}

pub(crate) fn error_stream<'a>(e: SourceError) -> SyncStream<'a, GmailCursor, GmailCheckpoint> {
    stream::once(futures::future::ready(Err(e))).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identity_documents_follow_elastic() {
        let d = identity_document(&DirectoryUser {
            primary_email: "Ann@acme.test".into(),
            creation_time: Some("2019-03-11T10:00:00.000Z".into()),
            is_mailbox_setup: Some(true),
            suspended: Some(false),
        });
        assert_eq!(d.id, "ann@acme.test");
        assert_eq!(d.fields["identity"], json!({"email": "ann@acme.test"}));
        assert_eq!(d.fields["created_at"], "2019-03-11T10:00:00.000Z");
        assert_eq!(
            d.fields["query"]["template"]["params"]["access_control"],
            json!(["ann@acme.test"])
        );
        let source = d.fields["query"]["template"]["source"]
            .as_str()
            .expect("source");
        assert!(source.contains("{{#toJson}}access_control{{/toJson}}"));
        assert!(source.contains("_allow_access_control"));
    }

    #[tokio::test]
    async fn dropping_a_generated_stream_stops_its_driver() {
        struct Flag(Arc<std::sync::atomic::AtomicBool>);
        impl Drop for Flag {
            fn drop(&mut self) {
                self.0.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let mut s = generate(1, move |mut tx: mpsc::Sender<u32>| async move {
            let _flag = flag;
            let _ = tx.send(0).await;
            // A driver waiting on something else than the channel (a Google answer, the quota):
            // only aborting its task stops it.
            std::future::pending::<()>().await;
        });
        assert_eq!(s.next().await, Some(0));
        drop(s);
        // The driver's task is aborted.
        for _ in 0..100 {
            if dropped.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("the driver still runs after its stream was dropped");
    }

    #[tokio::test]
    async fn generate_yields_driver_items_then_ends() {
        let s = generate(2, |mut tx: mpsc::Sender<u32>| async move {
            for i in 0..10 {
                if tx.send(i).await.is_err() {
                    return;
                }
            }
        });
        let got: Vec<u32> = s.collect().await;
        assert_eq!(got, (0..10).collect::<Vec<_>>());
    }
}
