//! The Google client: Directory `users.list`, Gmail `getProfile`, `messages.list`,
//! `messages.get?format=raw`, `history.list`. One shared HTTP client, a token cache, a per-mailbox
//! quota limiter, a global concurrency cap, and retries with backoff for rate limits and 5xx.

use std::{future::Future, sync::Arc, time::Duration};

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
    pub raw: Option<String>,
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
        .pool_max_idle_per_host(64)
        .user_agent(concat!("connector-gmail/", env!("CARGO_PKG_VERSION")))
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
    quota: QuotaLimiter,
    global: Semaphore,
    stats: Arc<GmailStats>,
    retry: RetryPolicy,
}

#[derive(Clone, Copy)]
enum Api {
    Directory,
    Gmail,
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
            quota: QuotaLimiter::new(options.units_per_second),
            global: Semaphore::new(config.max_concurrent_requests.max(1) as usize),
            stats,
            retry: options.retry,
        })
    }

    pub fn stats(&self) -> &Arc<GmailStats> {
        &self.stats
    }

    fn url(&self, api: Api, segments: &[&str]) -> reqwest::Url {
        let mut url = match api {
            Api::Directory => self.directory_base.clone(),
            Api::Gmail => self.gmail_base.clone(),
        };
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
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
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let body = response.bytes().await.map_err(transport)?;
        let rate_limited = status == 429
            || (status == 403
                && GoogleError::from_api_response(method, status, &body, retry_after).class()
                    == GoogleErrorClass::RateLimited);
        connector_framework::telemetry::metrics::metrics().google_request(method, rate_limited);
        if (200..300).contains(&status) {
            return serde_json::from_slice(&body).map_err(|e| GoogleError::Decode {
                method,
                message: format!("invalid JSON ({e})"),
            });
        }
        if status == 429 || status == 403 {
            // Counted separately from 5xx so rate limiting is visible.
            let err = GoogleError::from_api_response(method, status, &body, retry_after);
            if err.class() == GoogleErrorClass::RateLimited {
                inc(&self.stats.rate_limited);
            }
            return Err(err);
        }
        if status >= 500 {
            inc(&self.stats.server_errors);
        }
        Err(GoogleError::from_api_response(
            method,
            status,
            &body,
            retry_after,
        ))
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

    pub async fn get_message_raw(&self, user: &str, id: &str) -> Result<RawMessage, GoogleError> {
        self.get(
            "gmail.users.messages.get",
            Api::Gmail,
            user,
            UNITS_GET,
            &["users", user, "messages", id],
            &[("format", "raw")],
        )
        .await
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
