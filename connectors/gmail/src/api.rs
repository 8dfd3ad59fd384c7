//! The Google client: Directory `users.list`, Gmail `getProfile`, `messages.list`,
//! `messages.get?format=raw`, `history.list`. One shared HTTP client, a token cache, a per-mailbox
//! quota limiter, a global concurrency cap, and retries with backoff for rate limits and 5xx.

use std::{fmt::Write as _, future::Future, sync::Arc, time::Duration};

use serde::{Deserialize, de::DeserializeOwned};
use tokio::sync::Semaphore;
use tracing::Instrument as _;

use crate::{
    auth::{SCOPE_DIRECTORY, SCOPE_GMAIL, TokenProvider},
    config::GmailConfig,
    error::{GoogleError, GoogleErrorClass, parse_retry_after},
    quota::{
        DEFAULT_UNITS_PER_SECOND, QuotaLimiter, UNITS_GET, UNITS_HISTORY, UNITS_LIST, UNITS_PROFILE,
    },
    retry::RetryPolicy,
    stats::{GmailStats, add, inc},
};

/// Most `messages.get` calls in one batch request: the per-mailbox concurrency, since Gmail runs
/// a batch's calls concurrently and answers more than about 10 per user at once with 429.
pub const MAX_BATCH: usize = crate::sync::PER_MAILBOX_CONCURRENCY;
const METHOD_GET: &str = "gmail.users.messages.get";
const METHOD_BATCH: &str = "gmail.batch";

/// Page size of every list call (Google's maximum).
pub const PAGE_SIZE: &str = "500";
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Tunables of a [`GoogleApi`] beyond the user's configuration (tests shrink them).
#[derive(Debug, Clone, Copy)]
pub struct ApiOptions {
    pub retry: RetryPolicy,
    pub units_per_second: u32,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            retry: RetryPolicy::google(),
            units_per_second: DEFAULT_UNITS_PER_SECOND,
        }
    }
}

/// A Directory user (the fields we use).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DirectoryUser {
    pub primary_email: String,
    #[serde(default)]
    pub creation_time: Option<String>,
    /// `false` for users without a Gmail mailbox.
    #[serde(default)]
    pub is_mailbox_setup: Option<bool>,
    #[serde(default)]
    pub suspended: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsersPage {
    #[serde(default)]
    users: Vec<DirectoryUser>,
    #[serde(default)]
    next_page_token: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    #[serde(default)]
    pub email_address: Option<String>,
    pub history_id: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MessageRef {
    pub id: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MessagesPage {
    #[serde(default)]
    pub messages: Vec<MessageRef>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// `messages.get?format=raw`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RawMessage {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub thread_id: Option<String>,
    #[serde(default)]
    pub label_ids: Vec<String>,
    #[serde(default)]
    pub snippet: Option<String>,
    #[serde(default)]
    pub history_id: Option<String>,
    #[serde(default)]
    pub internal_date: Option<String>,
    #[serde(default)]
    pub size_estimate: Option<u64>,
    #[serde(default)]
    pub raw: Option<RawBody>,
}

/// The `raw` field of a message (the RFC 822 source in base64url), decoded while the answer is
/// read: the JSON text is decoded in place, not copied into a string first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawBody {
    Decoded(Vec<u8>),
    /// Not base64: the document is built without the source (and a warning is counted).
    Invalid,
}

impl RawBody {
    /// Decodes base64url text (see [`crate::document::decode_raw`]).
    pub fn from_base64(encoded: &[u8]) -> RawBody {
        crate::document::decode_raw(encoded).map_or(RawBody::Invalid, RawBody::Decoded)
    }

    /// The decoded source, when it was base64.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            RawBody::Decoded(bytes) => Some(bytes),
            RawBody::Invalid => None,
        }
    }
}

impl<'de> Deserialize<'de> for RawBody {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawBody;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a base64url string")
            }
            fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<RawBody, E> {
                Ok(RawBody::from_base64(v))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawBody, E> {
                Ok(RawBody::from_base64(v.as_bytes()))
            }
        }
        // As bytes: serde_json hands over the string's text without copying or checking it as
        // UTF-8 (base64 is ASCII; anything else fails to decode and is reported as such).
        deserializer.deserialize_bytes(Visitor)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryMessage {
    pub id: String,
    #[serde(default)]
    pub label_ids: Option<Vec<String>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct HistoryChange {
    pub message: HistoryMessage,
}

/// One `history` record.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryRecord {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub messages_added: Vec<HistoryChange>,
    #[serde(default)]
    pub messages_deleted: Vec<HistoryChange>,
    #[serde(default)]
    pub labels_added: Vec<HistoryChange>,
    #[serde(default)]
    pub labels_removed: Vec<HistoryChange>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HistoryPage {
    #[serde(default)]
    pub history: Vec<HistoryRecord>,
    #[serde(default)]
    pub history_id: Option<String>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// Builds the HTTP client shared by every Google call of a connector instance.
pub fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    connector_framework::install_crypto_provider();
    reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(20))
        // No cap on idle connections: the requests in flight, so the connections open, are
        // bounded by `max_concurrent_requests`; a cap below it closed and reopened a connection
        // every few requests (one `connect` per 14 messages at 400 requests in flight). Idle
        // ones close after reqwest's 90 s idle timeout.
        .user_agent(concat!("connector-gmail/", env!("CARGO_PKG_VERSION")))
        // HTTP/1.1, also where TLS would negotiate HTTP/2 with Google: against the simulator
        // over HTTP/2 the connector spent 10 % more CPU per message and the server 22 % more
        // (docs/benchmarks.md, session 13), and a connection that fails takes one request with
        // it, not every request in flight.
        .http1_only()
        .build()
}

/// `send` inside an `http` client span. Every request to Google (APIs and token endpoint) is
/// sent with [`send_traced`](Self::send_traced).
pub(crate) trait SendTraced {
    /// Sends the request inside an `http` client span (method, host, and the path without the
    /// query string, which can carry page tokens) and records the answer's status, or the
    /// transport failure, on it. The span covers the request up to the response headers.
    fn send_traced(self) -> impl Future<Output = Result<reqwest::Response, reqwest::Error>> + Send;
}

impl SendTraced for reqwest::RequestBuilder {
    fn send_traced(self) -> impl Future<Output = Result<reqwest::Response, reqwest::Error>> + Send {
        let (client, request) = self.build_split();
        async move {
            let request = request?;
            let url = request.url();
            let span = connector_framework::telemetry::otel::http_client_span(
                request.method().as_str(),
                url.host_str().unwrap_or_default(),
                url.path(),
            );
            let result = client.execute(request).instrument(span.clone()).await;
            if !span.is_disabled() {
                record_answer(&span, &result);
            }
            result
        }
    }
}

fn record_answer(span: &tracing::Span, result: &Result<reqwest::Response, reqwest::Error>) {
    let failed = |error_type: &str| {
        span.record("error.type", error_type);
        span.record("otel.status_code", "error");
    };
    match result {
        Ok(response) => {
            let status = response.status();
            span.record("http.response.status_code", i64::from(status.as_u16()));
            if status.is_client_error() || status.is_server_error() {
                // OTel's HTTP convention names a failed answer by its status code.
                failed(status.as_str());
            }
        }
        Err(e) if e.is_timeout() => failed("timeout"),
        Err(e) if e.is_connect() => failed("connect"),
        Err(_) => failed("transport"),
    }
}

/// Google APIs for one configuration.
pub struct GoogleApi {
    http: reqwest::Client,
    tokens: Arc<TokenProvider>,
    directory_base: reqwest::Url,
    gmail_base: reqwest::Url,
    batch_url: reqwest::Url,
    quota: QuotaLimiter,
    global: Semaphore,
    /// Permits of `global` (`max_concurrent_requests`).
    global_cap: u32,
    stats: Arc<GmailStats>,
    retry: RetryPolicy,
}

#[derive(Clone, Copy)]
enum Api {
    Directory,
    Gmail,
}

/// `base` with `segments` appended, each percent-encoded.
fn endpoint(base: &reqwest::Url, segments: &[&str]) -> reqwest::Url {
    let mut url = base.clone();
    if let Ok(mut path) = url.path_segments_mut() {
        path.pop_if_empty().extend(segments);
    }
    url
}

/// The body of a Gmail batch request of `messages.get?format=raw` for `ids[slots]` of `user`,
/// `gmail` being the API's base URL.
fn batch_body(
    gmail: &reqwest::Url,
    user: &str,
    ids: &[String],
    slots: &[usize],
    boundary: &str,
) -> String {
    let mut body = String::with_capacity(slots.len() * 160);
    // Path and query only (google-apis.md §4); the path segments are percent-encoded. The
    // mailbox's part of the path is encoded once; Gmail's ids are alphanumeric and go in as
    // they are (any other id is encoded by the URL parser).
    let messages = endpoint(gmail, &["users", user, "messages"]);
    for &slot in slots {
        let id = ids[slot].as_str();
        let _ = write!(
            body,
            "--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <m{slot}>\r\n\r\nGET "
        );
        if !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            let _ = write!(body, "{}/{id}", messages.path());
        } else {
            body.push_str(endpoint(gmail, &["users", user, "messages", id]).path());
        }
        body.push_str("?format=raw\r\n\r\n");
    }
    let _ = write!(body, "--{boundary}--\r\n");
    body
}

impl GoogleApi {
    pub fn new(
        config: &GmailConfig,
        tokens: Arc<TokenProvider>,
        http: reqwest::Client,
        stats: Arc<GmailStats>,
        options: ApiOptions,
    ) -> Result<Self, GoogleError> {
        let parse = |s: String| {
            reqwest::Url::parse(&s).map_err(|_| GoogleError::Decode {
                method: "config",
                message: format!("invalid base URL {s:?}"),
            })
        };
        Ok(Self {
            tokens,
            http,
            directory_base: parse(config.directory_base())?,
            gmail_base: parse(config.gmail_base())?,
            batch_url: parse(config.gmail_batch_url())?,
            quota: QuotaLimiter::new(options.units_per_second),
            global: Semaphore::new(config.max_concurrent_requests.max(1) as usize),
            global_cap: config.max_concurrent_requests.max(1),
            stats,
            retry: options.retry,
        })
    }

    pub fn stats(&self) -> &Arc<GmailStats> {
        &self.stats
    }

    fn url(&self, api: Api, segments: &[&str]) -> reqwest::Url {
        match api {
            Api::Directory => endpoint(&self.directory_base, segments),
            Api::Gmail => endpoint(&self.gmail_base, segments),
        }
    }

    /// One API GET as `subject`, with quota, concurrency cap, token refresh and retries.
    #[allow(clippy::too_many_arguments)]
    async fn get<T: DeserializeOwned>(
        &self,
        method: &'static str,
        api: Api,
        subject: &str,
        units: u32,
        segments: &[&str],
        query: &[(&str, &str)],
    ) -> Result<T, GoogleError> {
        let scope = match api {
            Api::Directory => SCOPE_DIRECTORY,
            Api::Gmail => SCOPE_GMAIL,
        };
        let url = self.url(api, segments);
        let mut attempt = 0u32;
        let mut refreshed = false;
        loop {
            if matches!(api, Api::Gmail) {
                let waited = std::time::Instant::now();
                self.quota.acquire(subject, units).await;
                connector_framework::telemetry::metrics::metrics()
                    .google_quota_wait(waited.elapsed().as_secs_f64());
                add(&self.stats.quota_units, u64::from(units));
            }
            let token = self.tokens.token(subject, scope).await?;
            let result = {
                // The semaphore is never closed, so acquire cannot fail.
                let _permit = self.global.acquire().await;
                self.send_once::<T>(method, &url, query, &token).await
            };
            match result {
                Ok(v) => return Ok(v),
                Err(e) if e.class() == GoogleErrorClass::InvalidToken && !refreshed => {
                    refreshed = true;
                    self.tokens.invalidate(subject, scope, &token).await;
                }
                Err(e) if e.is_retryable() && attempt + 1 < self.retry.max_attempts => {
                    inc(&self.stats.api_retries);
                    if matches!(api, Api::Gmail) && e.class() == GoogleErrorClass::RateLimited {
                        self.slow_down(subject, 1);
                    }
                    let wait = self.retry.delay(attempt, e.retry_after());
                    tracing::debug!(method, subject, error = %e, ?wait, attempt, "retrying google call");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn send_once<T: DeserializeOwned>(
        &self,
        method: &'static str,
        url: &reqwest::Url,
        query: &[(&str, &str)],
        token: &connector_framework::Secret,
    ) -> Result<T, GoogleError> {
        inc(&self.stats.api_calls);
        let transport = |source| GoogleError::Transport { method, source };
        let response = self
            .http
            .get(url.clone())
            .query(query)
            .bearer_auth(token.expose())
            .send_traced()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = retry_after_of(&response);
        let body = response.bytes().await.map_err(transport)?;
        match self.answer(method, status, &body, retry_after) {
            None => serde_json::from_slice(&body).map_err(|e| GoogleError::Decode {
                method,
                message: format!("invalid JSON ({e})"),
            }),
            Some(err) => Err(err),
        }
    }

    /// Tells the mailbox's pace about a rate-limit answer to a request of `calls` calls (it
    /// slows down when they repeat).
    fn slow_down(&self, mailbox: &str, calls: usize) {
        if let Some((pace, window)) = self.quota.rate_limited(mailbox, calls) {
            inc(&self.stats.pace_reductions);
            connector_framework::telemetry::metrics::metrics().google_pace_reduction();
            tracing::debug!(
                mailbox,
                pace = format_args!("{pace:.2}"),
                window,
                "gmail keeps rate-limiting this mailbox: slowing down"
            );
        }
    }

    /// Counts one answer of `method` (metrics and stats; rate limits apart from server errors)
    /// and returns its error, or `None` for a 2xx.
    fn answer(
        &self,
        method: &'static str,
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Option<GoogleError> {
        let ok = (200..300).contains(&status);
        let err = (!ok).then(|| GoogleError::from_api_response(method, status, body, retry_after));
        let rate_limited = err
            .as_ref()
            .is_some_and(|e| e.class() == GoogleErrorClass::RateLimited);
        connector_framework::telemetry::metrics::metrics()
            .google_request(method, status == 429 || (status == 403 && rate_limited));
        if rate_limited && (status == 429 || status == 403) {
            inc(&self.stats.rate_limited);
        } else if status >= 500 {
            inc(&self.stats.server_errors);
        }
        err
    }

    /// One page of Directory users of `customer`, impersonating the admin `subject`.
    pub async fn list_users_page(
        &self,
        subject: &str,
        customer: &str,
        page_token: Option<&str>,
        max_results: &str,
    ) -> Result<(Vec<DirectoryUser>, Option<String>), GoogleError> {
        let mut query = vec![
            ("customer", customer),
            ("maxResults", max_results),
            ("orderBy", "email"),
        ];
        if let Some(t) = page_token {
            query.push(("pageToken", t));
        }
        let page: UsersPage = self
            .get(
                "directory.users.list",
                Api::Directory,
                subject,
                1,
                &["users"],
                &query,
            )
            .await?;
        Ok((page.users, page.next_page_token.filter(|t| !t.is_empty())))
    }

    /// Every Directory user.
    pub async fn list_users(
        &self,
        subject: &str,
        customer: &str,
    ) -> Result<Vec<DirectoryUser>, GoogleError> {
        let mut users = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let (page, next) = self
                .list_users_page(subject, customer, token.as_deref(), PAGE_SIZE)
                .await?;
            users.extend(page);
            match next {
                Some(n) if Some(&n) != token.as_ref() => token = Some(n),
                _ => break,
            }
        }
        Ok(users)
    }

    pub async fn get_profile(&self, user: &str) -> Result<Profile, GoogleError> {
        self.get(
            "gmail.users.getProfile",
            Api::Gmail,
            user,
            UNITS_PROFILE,
            &["users", user, "profile"],
            &[],
        )
        .await
    }

    pub async fn list_messages(
        &self,
        user: &str,
        q: Option<&str>,
        include_spam_trash: bool,
        page_token: Option<&str>,
    ) -> Result<MessagesPage, GoogleError> {
        let mut query = vec![
            ("maxResults", PAGE_SIZE),
            (
                "includeSpamTrash",
                if include_spam_trash { "true" } else { "false" },
            ),
        ];
        if let Some(q) = q {
            query.push(("q", q));
        }
        if let Some(t) = page_token {
            query.push(("pageToken", t));
        }
        self.get(
            "gmail.users.messages.list",
            Api::Gmail,
            user,
            UNITS_LIST,
            &["users", user, "messages"],
            &query,
        )
        .await
    }

    /// `messages.get?format=raw` of one message (it takes one call of the mailbox's window).
    pub async fn get_message_raw(&self, user: &str, id: &str) -> Result<RawMessage, GoogleError> {
        let _admission = self.quota.admit(user, 1).await;
        self.get(
            METHOD_GET,
            Api::Gmail,
            user,
            UNITS_GET,
            &["users", user, "messages", id],
            &[("format", "raw")],
        )
        .await
    }

    /// `messages.get?format=raw` of every id in `ids` in Gmail batch requests; one result per
    /// id, in the order of `ids`.
    ///
    /// A batch holds at most the mailbox's window of calls ([`MAX_BATCH`] unless repeated rate
    /// limits shrank it): more ids go out in several batches at once, each waiting for room in
    /// the window (so one batch's retry wait does not hold up the others).
    pub async fn get_messages_raw(
        &self,
        user: &str,
        ids: &[String],
    ) -> Result<Vec<Result<RawMessage, GoogleError>>, GoogleError> {
        let window = self.quota.window(user).max(1);
        if ids.len() <= window {
            return self.get_batch(user, ids).await;
        }
        let parts =
            futures::future::try_join_all(ids.chunks(window).map(|c| self.get_batch(user, c)))
                .await?;
        Ok(parts.into_iter().flatten().collect())
    }

    /// `messages.get?format=raw` of every id in `ids` (at most [`MAX_BATCH`]) in one Gmail
    /// batch request; one result per id, in the order of `ids`.
    ///
    /// The batch waits for room in the mailbox's window. Each message is charged its 5 quota
    /// units before the batch is sent. Parts answered with a retryable error (429 and 403 rate
    /// limits — Gmail runs a batch's calls concurrently, so per-user concurrency limits apply
    /// inside it —, 5xx, a part missing from the answer) are sent again, in a smaller batch,
    /// after the usual backoff, each message at most `max_attempts` times; a 401 refreshes the
    /// token once. Per-message failures (404, 400, …) are that message's result. `Err` is a
    /// failure of the batch request itself that retries did not cure.
    async fn get_batch(
        &self,
        user: &str,
        ids: &[String],
    ) -> Result<Vec<Result<RawMessage, GoogleError>>, GoogleError> {
        if ids.len() <= 1 {
            // One message: a plain request is smaller than a batch of one.
            let mut out = Vec::with_capacity(1);
            if let Some(id) = ids.first() {
                out.push(self.get_message_raw(user, id).await);
            }
            return Ok(out);
        }
        let mut results: Vec<Option<Result<RawMessage, GoogleError>>> =
            std::iter::repeat_with(|| None).take(ids.len()).collect();
        // The only caller cuts `ids` to the mailbox's window, at most MAX_BATCH.
        debug_assert!(ids.len() <= MAX_BATCH);
        let mut pending: Vec<usize> = (0..ids.len()).collect();
        // Attempts so far, per message.
        let mut attempts = vec![0u32; ids.len()];
        let mut refreshed = false;
        while !pending.is_empty() {
            for _ in &pending {
                self.quota.acquire(user, UNITS_GET).await;
                add(&self.stats.quota_units, u64::from(UNITS_GET));
            }
            // The batch reaches Gmail at once: it pays for its burst (not Gmail units).
            self.quota
                .acquire_batch_surcharge(user, pending.len(), UNITS_GET)
                .await;
            let token = self.tokens.token(user, SCOPE_GMAIL).await?;
            let attempt = pending
                .iter()
                .map(|&slot| attempts[slot])
                .max()
                .unwrap_or(0);
            let answer = {
                let _admission = self.quota.admit(user, pending.len()).await;
                // One permit per message: the cap counts Google calls in flight, and the calls
                // of a batch run concurrently at Google. A batch larger than the whole cap
                // takes all of it (asking for more would never be granted).
                let permits = (pending.len() as u32).min(self.global_cap);
                let _permits = self.global.acquire_many(permits).await;
                self.send_batch(user, ids, &pending, &token).await
            };
            let parts = match answer {
                Ok(parts) => parts,
                Err(e) if e.class() == GoogleErrorClass::InvalidToken && !refreshed => {
                    refreshed = true;
                    self.tokens.invalidate(user, SCOPE_GMAIL, &token).await;
                    continue;
                }
                Err(e) if e.is_retryable() && attempt + 1 < self.retry.max_attempts => {
                    inc(&self.stats.api_retries);
                    if e.class() == GoogleErrorClass::RateLimited {
                        self.slow_down(user, pending.len());
                    }
                    let wait = self.retry.delay(attempt, e.retry_after());
                    tracing::debug!(subject = user, error = %e, ?wait, attempt, "retrying gmail batch");
                    tokio::time::sleep(wait).await;
                    for &slot in &pending {
                        attempts[slot] += 1;
                    }
                    continue;
                }
                Err(e) => return Err(e),
            };
            let mut again = Vec::new();
            let mut retry_after = None;
            let mut token_refused = false;
            let mut rate_limited = false;
            for (slot, part) in pending.iter().copied().zip(parts) {
                let outcome = part.unwrap_or_else(|| {
                    Err(GoogleError::Decode {
                        method: METHOD_BATCH,
                        message: "the batch answer has no part for this message".into(),
                    })
                });
                match outcome {
                    Err(e) if e.class() == GoogleErrorClass::InvalidToken && !refreshed => {
                        token_refused = true;
                        again.push(slot);
                    }
                    Err(e) if e.is_retryable() && attempts[slot] + 1 < self.retry.max_attempts => {
                        retry_after = retry_after.max(e.retry_after());
                        rate_limited |= e.class() == GoogleErrorClass::RateLimited;
                        again.push(slot);
                    }
                    outcome => results[slot] = Some(outcome),
                }
            }
            if rate_limited {
                // The parts of one answer are one event for the pace.
                self.slow_down(user, pending.len());
            }
            if token_refused {
                refreshed = true;
                self.tokens.invalidate(user, SCOPE_GMAIL, &token).await;
            }
            if !again.is_empty() && !token_refused {
                add(&self.stats.api_retries, again.len() as u64);
                let wait = self.retry.delay(attempt, retry_after);
                tracing::debug!(
                    subject = user,
                    retried = again.len(),
                    ?wait,
                    attempt,
                    "retrying messages of a gmail batch"
                );
                tokio::time::sleep(wait).await;
                for &slot in &again {
                    attempts[slot] += 1;
                }
            }
            pending = again;
        }
        Ok(results
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(GoogleError::Decode {
                        method: METHOD_BATCH,
                        message: "no answer for this message".into(),
                    })
                })
            })
            .collect())
    }

    /// Sends one batch of `messages.get` for `ids[slots]`; the answer's parts in the order of
    /// `slots` (`None`: no part for that message).
    async fn send_batch(
        &self,
        user: &str,
        ids: &[String],
        slots: &[usize],
        token: &connector_framework::Secret,
    ) -> Result<Vec<Option<Result<RawMessage, GoogleError>>>, GoogleError> {
        inc(&self.stats.api_calls);
        inc(&self.stats.batch_requests);
        let boundary = format!("batch_{:016x}", rand::random::<u64>());
        let body = batch_body(&self.gmail_base, user, ids, slots, &boundary);
        let transport = |source| GoogleError::Transport {
            method: METHOD_BATCH,
            source,
        };
        let response = self
            .http
            .post(self.batch_url.clone())
            .bearer_auth(token.expose())
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/mixed; boundary={boundary}"),
            )
            .body(body)
            .send_traced()
            .await
            .map_err(transport)?;
        let status = response.status().as_u16();
        let retry_after = retry_after_of(&response);
        let content_type = header_text(&response, reqwest::header::CONTENT_TYPE)
            .unwrap_or_default()
            .to_owned();
        let body = response.bytes().await.map_err(transport)?;
        if let Some(err) = self.answer(METHOD_BATCH, status, &body, retry_after) {
            return Err(err);
        }
        let decode = |message: String| GoogleError::Decode {
            method: METHOD_BATCH,
            message,
        };
        let boundary = multipart_boundary(&content_type)
            .ok_or_else(|| decode(format!("not a multipart answer ({content_type:?})")))?;
        let parts = batch::parse_answer(&body, boundary).map_err(decode)?;
        let mut out: Vec<Option<Result<RawMessage, GoogleError>>> =
            std::iter::repeat_with(|| None).take(slots.len()).collect();
        for (n, part) in parts.into_iter().enumerate() {
            // Parts are matched by Content-ID (`<response-m{slot}>`), by position without one.
            let at = match part.content_id {
                Some(cid) => cid
                    .strip_prefix("response-m")
                    .and_then(|s| s.parse::<usize>().ok())
                    .and_then(|slot| slots.iter().position(|&s| s == slot)),
                None => Some(n).filter(|&n| n < slots.len()),
            };
            let Some(at) = at else { continue };
            let result = match self.answer(METHOD_GET, part.status, part.body, part.retry_after) {
                None => serde_json::from_slice(part.body).map_err(|e| GoogleError::Decode {
                    method: METHOD_GET,
                    message: format!("invalid JSON ({e})"),
                }),
                Some(err) => Err(err),
            };
            out[at] = Some(result);
        }
        Ok(out)
    }

    pub async fn list_history(
        &self,
        user: &str,
        start_history_id: &str,
        page_token: Option<&str>,
    ) -> Result<HistoryPage, GoogleError> {
        let mut query = vec![
            ("startHistoryId", start_history_id),
            ("maxResults", PAGE_SIZE),
            ("historyTypes", "messageAdded"),
            ("historyTypes", "messageDeleted"),
            ("historyTypes", "labelAdded"),
            ("historyTypes", "labelRemoved"),
        ];
        if let Some(t) = page_token {
            query.push(("pageToken", t));
        }
        self.get(
            "gmail.users.history.list",
            Api::Gmail,
            user,
            UNITS_HISTORY,
            &["users", user, "history"],
            &query,
        )
        .await
    }
}

/// A response header as text.
fn header_text(response: &reqwest::Response, name: reqwest::header::HeaderName) -> Option<&str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

/// The server's `Retry-After` (seconds or HTTP date).
pub(crate) fn retry_after_of(response: &reqwest::Response) -> Option<Duration> {
    header_text(response, reqwest::header::RETRY_AFTER).and_then(parse_retry_after)
}

/// The `boundary` parameter of a `multipart/*` content type.
fn multipart_boundary(content_type: &str) -> Option<&str> {
    let (kind, params) = content_type.split_once(';')?;
    if !kind.trim().to_ascii_lowercase().starts_with("multipart/") {
        return None;
    }
    params
        .split(';')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"'))
        .filter(|b| !b.is_empty())
}

/// Gmail batch answers: `multipart/mixed` parts, each an `application/http` HTTP response.
mod batch {
    use std::time::Duration;

    use crate::error::parse_retry_after;

    /// One inner answer of a batch.
    #[derive(Debug)]
    pub(super) struct Part<'a> {
        /// `Content-ID` without the angle brackets.
        pub content_id: Option<String>,
        pub status: u16,
        pub retry_after: Option<Duration>,
        pub body: &'a [u8],
    }

    const MAX_HEADERS: usize = 32;

    /// Splits a batch answer into its inner answers (RFC 2046 `multipart` with `boundary`).
    pub(super) fn parse_answer<'a>(
        body: &'a [u8],
        boundary: &str,
    ) -> Result<Vec<Part<'a>>, String> {
        let delimiter = format!("--{boundary}");
        let finder = memchr::memmem::Finder::new(delimiter.as_bytes());
        let mut starts = finder.find_iter(body).map(|i| i + delimiter.len());
        let mut at = starts
            .next()
            .ok_or("the batch answer has no multipart boundary")?;
        let mut parts = Vec::new();
        loop {
            if body[at..].starts_with(b"--") {
                return Ok(parts); // the close delimiter
            }
            let next = starts.next();
            // The line break before a delimiter belongs to the delimiter.
            let end = next.map_or(body.len(), |n| n - delimiter.len());
            let chunk = trim_line_break_end(&body[at..end]);
            parts.push(part(chunk)?);
            match next {
                Some(n) => at = n,
                None => return Err("the batch answer ends without its close delimiter".into()),
            }
        }
    }

    /// One part: its MIME headers, a blank line, then an HTTP response.
    fn part(chunk: &[u8]) -> Result<Part<'_>, String> {
        // The rest of the delimiter line (transport padding), then the part's headers.
        let line_end = memchr::memchr(b'\n', chunk).ok_or("a batch part has no headers")?;
        let chunk = &chunk[line_end + 1..];
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let (used, headers) = match httparse::parse_headers(chunk, &mut headers) {
            Ok(httparse::Status::Complete(done)) => done,
            Ok(httparse::Status::Partial) => return Err("a batch part's headers are cut".into()),
            Err(e) => return Err(format!("a batch part's headers are invalid ({e})")),
        };
        let content_id = headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-id"))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(|v| {
                v.trim()
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_owned()
            });
        let http = &chunk[used..];
        let mut inner = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut inner);
        let used = match response.parse(http) {
            Ok(httparse::Status::Complete(used)) => used,
            Ok(httparse::Status::Partial) => {
                return Err("a batch part's HTTP response is cut".into());
            }
            Err(e) => return Err(format!("a batch part is not an HTTP response ({e})")),
        };
        let status = response.code.ok_or("a batch part has no status")?;
        let header = |name: &str| {
            response
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .and_then(|h| std::str::from_utf8(h.value).ok())
        };
        let retry_after = header("retry-after").and_then(parse_retry_after);
        let mut body = &http[used..];
        if let Some(len) = header("content-length").and_then(|v| v.trim().parse::<usize>().ok()) {
            body = body
                .get(..len)
                .ok_or("a batch part is shorter than its Content-Length")?;
        }
        Ok(Part {
            content_id,
            status,
            retry_after,
            body,
        })
    }

    fn trim_line_break_end(b: &[u8]) -> &[u8] {
        let b = b.strip_suffix(b"\n").unwrap_or(b);
        b.strip_suffix(b"\r").unwrap_or(b)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        const ANSWER: &str = "--batch_Zq1\r\nContent-Type: application/http\r\nContent-ID: <response-m1>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{\"id\":\"b\"}\r\n--batch_Zq1\r\nContent-Type: application/http\r\nContent-ID: <response-m0>\r\n\r\nHTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json; charset=UTF-8\r\nRetry-After: 3\r\nContent-Length: 11\r\n\r\n{\"error\":1}\r\n--batch_Zq1--\r\n";

        #[test]
        fn parts_are_read_with_their_ids_statuses_and_bodies() {
            let parts = parse_answer(ANSWER.as_bytes(), "batch_Zq1").expect("parts");
            assert_eq!(parts.len(), 2);
            assert_eq!(parts[0].content_id.as_deref(), Some("response-m1"));
            assert_eq!(parts[0].status, 200);
            assert_eq!(parts[0].body, b"{\"id\":\"b\"}");
            assert_eq!(parts[1].content_id.as_deref(), Some("response-m0"));
            assert_eq!(parts[1].status, 429);
            assert_eq!(parts[1].retry_after, Some(Duration::from_secs(3)));
            assert_eq!(parts[1].body, b"{\"error\":1}");
        }

        #[test]
        fn lf_only_line_breaks_are_read_too() {
            let lf = ANSWER.replace("\r\n", "\n");
            let parts = parse_answer(lf.as_bytes(), "batch_Zq1").expect("parts");
            assert_eq!(parts.len(), 2);
            assert_eq!(parts[0].body, b"{\"id\":\"b\"}");
        }

        #[test]
        fn truncated_or_foreign_answers_are_errors() {
            let cut = &ANSWER[..ANSWER.len() - 20];
            assert!(parse_answer(cut.as_bytes(), "batch_Zq1").is_err());
            assert!(parse_answer(b"{\"users\":[]}", "batch_Zq1").is_err());
            let short = ANSWER.replace("Content-Length: 11", "Content-Length: 99");
            assert!(parse_answer(short.as_bytes(), "batch_Zq1").is_err());
        }

        proptest::proptest! {
            #[test]
            fn never_panics(body in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
                let _ = parse_answer(&body, "b");
            }

            #[test]
            fn mime_like_answers_never_panic(body in "(--b|\r\n|Content-ID: <x>|HTTP/1.1 200 OK|Content-Length: [0-9]{1,3}|[a-z{}\":]{0,8}){0,24}") {
                let _ = parse_answer(body.as_bytes(), "b");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_parts_address_each_message_as_the_url_parser_encodes_it() {
        let gmail = reqwest::Url::parse("https://gmail.googleapis.com/gmail/v1").expect("url");
        let ids: Vec<String> = ["18c2a0f3b4d5e6f7", "a/b?c", "é #%", ""]
            .map(str::to_owned)
            .into();
        let user = "ann+x@acme.test";
        let body = batch_body(&gmail, user, &ids, &[0, 1, 2, 3], "b1");
        let paths: Vec<&str> = body
            .lines()
            .filter_map(|l| l.strip_prefix("GET "))
            .collect();
        let expected: Vec<String> = ids
            .iter()
            .map(|id| {
                let url = endpoint(&gmail, &["users", user, "messages", id]);
                format!("{}?format=raw", url.path())
            })
            .collect();
        assert_eq!(paths, expected);
        assert_eq!(
            paths[0],
            "/gmail/v1/users/ann+x@acme.test/messages/18c2a0f3b4d5e6f7?format=raw"
        );
        assert!(
            body.starts_with("--b1\r\nContent-Type: application/http\r\nContent-ID: <m0>\r\n\r\n")
        );
        assert!(body.ends_with("\r\n\r\n--b1--\r\n"));
        assert_eq!(body.matches("Content-ID: <m").count(), 4);
    }
}
