//! The one Elasticsearch client of the process.
//!
//! Wraps the official `elasticsearch` crate behind a small interface: raw JSON requests with
//! retries on transient failures, NDJSON bulk, cluster info and capability detection. One
//! [`EsClient`] is shared (cheaply cloned) by every service that uses the same credentials (no
//! client sprawl, W11).

use std::{path::PathBuf, sync::Arc, time::Duration};

use elasticsearch::{
    Elasticsearch,
    auth::Credentials,
    cert::{Certificate, CertificateValidation},
    http::{
        Method,
        headers::{HeaderMap, HeaderName, HeaderValue},
        transport::{SingleNodeConnectionPool, TransportBuilder},
    },
};
use serde_json::Value;
use url::Url;

use crate::{
    error::{Classify, ErrorKind},
    secret::Secret,
};

pub use elasticsearch::http::Method as HttpMethod;

/// How to authenticate against the cluster.
#[derive(Debug, Clone, Default)]
pub enum EsAuth {
    #[default]
    None,
    Basic {
        username: String,
        password: Secret,
    },
    /// An encoded API key (`base64(id:api_key)`), as Kibana shows it.
    ApiKey(Secret),
}

/// Everything needed to open a connection. Built from `config.yml` by the configuration module.
#[derive(Debug, Clone)]
pub struct EsConnection {
    pub host: Url,
    pub auth: EsAuth,
    /// Verify the server's certificate (ignored for `http://`).
    pub verify_certs: bool,
    /// PEM bundle of the CA that signed the server certificate.
    pub ca_certs: Option<PathBuf>,
    pub headers: Vec<(String, String)>,
    pub request_timeout: Duration,
    /// Attempts per request on transient failures (429, 502, 503, 504, connection errors).
    pub max_retries: u32,
    /// First backoff between attempts; doubled each attempt, with jitter, capped at 60 s.
    pub retry_interval: Duration,
    /// Sent as `user-agent`.
    pub user_agent: String,
}

impl EsConnection {
    pub fn new(host: Url) -> Self {
        Self {
            host,
            auth: EsAuth::None,
            verify_certs: true,
            ca_certs: None,
            headers: Vec::new(),
            request_timeout: Duration::from_secs(240),
            max_retries: 5,
            retry_interval: Duration::from_millis(500),
            user_agent: format!(
                "elastic-connectors-rs-{}/service",
                env!("CARGO_PKG_VERSION")
            ),
        }
    }
}

/// Failures talking to Elasticsearch.
#[derive(Debug, thiserror::Error)]
pub enum EsError {
    #[error("invalid elasticsearch connection settings: {0}")]
    Config(String),
    #[error("elasticsearch unreachable at {url}: {message}")]
    Transport {
        url: String,
        message: String,
        timeout: bool,
    },
    #[error("elasticsearch answered {status} to {method} {path}: {reason}")]
    Api {
        status: u16,
        method: String,
        path: String,
        /// `error.type` of the answer, e.g. `version_conflict_engine_exception`.
        error_type: Option<String>,
        reason: String,
    },
    #[error("unexpected answer from elasticsearch to {path}: {message}")]
    Decode { path: String, message: String },
}

impl EsError {
    pub fn status(&self) -> Option<u16> {
        match self {
            EsError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
}

impl Classify for EsError {
    fn kind(&self) -> ErrorKind {
        match self {
            EsError::Config(_) => ErrorKind::Configuration,
            EsError::Transport { .. } => ErrorKind::Transient,
            EsError::Decode { .. } => ErrorKind::Fatal,
            EsError::Api { status, .. } => status_kind(*status),
        }
    }
}

/// Classification of an HTTP status from Elasticsearch (also used per bulk item).
pub fn status_kind(status: u16) -> ErrorKind {
    match status {
        429 | 502 | 503 | 504 => ErrorKind::Transient,
        409 => ErrorKind::Conflict,
        404 => ErrorKind::NotFound,
        401 | 403 => ErrorKind::Unauthorized,
        500..=599 => ErrorKind::Transient,
        _ => ErrorKind::Fatal,
    }
}

/// A decoded answer of any status.
#[derive(Debug, Clone)]
pub struct EsResponse {
    pub status: u16,
    pub body: Value,
}

/// An answer whose body has not been parsed.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub body: bytes::Bytes,
}

impl RawResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The body as JSON (a body that is not JSON becomes a JSON string; an empty one, or the
    /// answer to a `HEAD`, `null`).
    pub fn into_response(self, method: Method) -> EsResponse {
        let body = if self.body.is_empty() || method == Method::Head {
            Value::Null
        } else {
            match serde_json::from_slice(&self.body) {
                Ok(v) => v,
                Err(_) => Value::String(String::from_utf8_lossy(&self.body).into_owned()),
            }
        };
        EsResponse {
            status: self.status,
            body,
        }
    }
}

impl EsResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// Which product answers, and what it can do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Distribution {
    Elasticsearch,
    OpenSearch,
}

#[derive(Debug, Clone)]
pub struct ClusterInfo {
    pub distribution: Distribution,
    pub version: String,
    pub cluster_name: String,
    pub build_flavor: Option<String>,
}

impl ClusterInfo {
    pub fn is_serverless(&self) -> bool {
        self.build_flavor.as_deref() == Some("serverless")
    }

    /// `(major, minor)` of the version, when it parses.
    pub fn major_minor(&self) -> Option<(u32, u32)> {
        let mut it = self.version.split(['.', '-']);
        Some((it.next()?.parse().ok()?, it.next()?.parse().ok()?))
    }
}

/// Optional APIs detected at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capabilities {
    /// `_connector` and `_connector/_sync_job` APIs (x-pack Elasticsearch ≥ 8.12).
    pub connector_api: bool,
    /// Elasticsearch's point-in-time searches (`_pit`).
    pub point_in_time: bool,
}

#[derive(Clone)]
pub struct EsClient {
    inner: Arc<Inner>,
}

struct Inner {
    client: Elasticsearch,
    url: Url,
    max_retries: u32,
    retry_interval: Duration,
}

impl std::fmt::Debug for EsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EsClient")
            .field("url", &self.inner.url.as_str())
            .finish()
    }
}

impl EsClient {
    pub fn new(conn: &EsConnection) -> Result<Self, EsError> {
        let mut url = conn.host.clone();
        // The transport joins relative paths: a base with a path prefix must end with '/'.
        if !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        let mut builder = TransportBuilder::new(SingleNodeConnectionPool::new(url.clone()))
            .timeout(conn.request_timeout)
            .enable_meta_header(false);
        let mut headers = HeaderMap::new();
        for (k, v) in &conn.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| EsError::Config(format!("header name {k:?}: {e}")))?;
            let value = HeaderValue::from_str(v)
                .map_err(|e| EsError::Config(format!("header value for {k:?}: {e}")))?;
            headers.insert(name, value);
        }
        headers.insert(
            elasticsearch::http::headers::USER_AGENT,
            HeaderValue::from_str(&conn.user_agent)
                .map_err(|e| EsError::Config(format!("user agent: {e}")))?,
        );
        headers.insert(
            HeaderName::from_static("x-elastic-product-origin"),
            HeaderValue::from_static("connectors"),
        );
        builder = builder.headers(headers);
        builder = match &conn.auth {
            EsAuth::None => builder,
            EsAuth::Basic { username, password } => builder.auth(Credentials::Basic(
                username.clone(),
                password.expose().to_owned(),
            )),
            EsAuth::ApiKey(key) => {
                builder.auth(Credentials::EncodedApiKey(key.expose().to_owned()))
            }
        };
        if url.scheme() == "https" {
            let validation = if !conn.verify_certs {
                CertificateValidation::None
            } else if let Some(path) = &conn.ca_certs {
                let pem = std::fs::read(path).map_err(|e| {
                    EsError::Config(format!("cannot read ca_certs {}: {e}", path.display()))
                })?;
                let cert = Certificate::from_pem(&pem).map_err(|e| {
                    EsError::Config(format!("ca_certs {} is not PEM: {e}", path.display()))
                })?;
                CertificateValidation::Full(cert)
            } else {
                CertificateValidation::Default
            };
            builder = builder.cert_validation(validation);
        }
        let transport = builder
            .build()
            .map_err(|e| EsError::Config(format!("cannot build http client: {e}")))?;
        Ok(Self {
            inner: Arc::new(Inner {
                client: Elasticsearch::new(transport),
                url,
                max_retries: conn.max_retries.max(1),
                retry_interval: conn.retry_interval,
            }),
        })
    }

    pub fn url(&self) -> &Url {
        &self.inner.url
    }

    /// One request, retried on transient failures; answers of every status are returned.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<EsResponse, EsError> {
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap_or_default());
        self.send_bytes(method, path, query, bytes.map(bytes::Bytes::from), false)
            .await
    }

    /// Like [`send`](Self::send) with a pre-serialized body; `ndjson` selects the bulk content type.
    pub async fn send_bytes(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<bytes::Bytes>,
        ndjson: bool,
    ) -> Result<EsResponse, EsError> {
        let raw = self
            .send_bytes_raw(method, path, query, body, ndjson)
            .await?;
        Ok(raw.into_response(method))
    }

    /// Like [`send_bytes`](Self::send_bytes), with the answer's body left unparsed (for answers
    /// read into a typed structure, such as `_bulk`'s).
    pub async fn send_bytes_raw(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<bytes::Bytes>,
        ndjson: bool,
    ) -> Result<RawResponse, EsError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let result = self
                .send_once(method, path, query, body.clone(), ndjson)
                .await;
            let retry = match &result {
                Ok(resp) => status_kind(resp.status) == ErrorKind::Transient,
                Err(e) => e.kind() == ErrorKind::Transient,
            };
            if !retry || attempt >= self.inner.max_retries {
                return result;
            }
            let delay = backoff_delay(self.inner.retry_interval, attempt);
            tracing::debug!(
                path,
                attempt,
                delay_ms = delay.as_millis() as u64,
                "retrying elasticsearch request"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<bytes::Bytes>,
        ndjson: bool,
    ) -> Result<RawResponse, EsError> {
        let mut headers = HeaderMap::new();
        if ndjson {
            headers.insert(
                elasticsearch::http::headers::CONTENT_TYPE,
                HeaderValue::from_static("application/x-ndjson"),
            );
        }
        let q: Option<&[(&str, String)]> = if query.is_empty() { None } else { Some(query) };
        let response = self
            .inner
            .client
            .send(method, path.trim_start_matches('/'), headers, q, body, None)
            .await
            .map_err(|e| EsError::Transport {
                url: self.inner.url.to_string(),
                message: e.to_string(),
                timeout: e.is_timeout(),
            })?;
        let status = response.status_code().as_u16();
        let bytes = response.bytes().await.map_err(|e| EsError::Transport {
            url: self.inner.url.to_string(),
            message: e.to_string(),
            timeout: e.is_timeout(),
        })?;
        Ok(RawResponse {
            status,
            body: bytes,
        })
    }

    /// A request whose answer must be 2xx; anything else becomes [`EsError::Api`].
    pub async fn json(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
    ) -> Result<Value, EsError> {
        let resp = self.send(method, path, query, body).await?;
        if resp.is_success() {
            Ok(resp.body)
        } else {
            Err(api_error(method, path, &resp))
        }
    }

    /// Product, version and flavour: `GET /`, or `GET /_nodes/_local` where the root endpoint is
    /// missing (the Elasticsearch test distribution answers 405 to `GET /`).
    pub async fn info(&self) -> Result<ClusterInfo, EsError> {
        let root = self.send(Method::Get, "/", &[], None).await?;
        if root.is_success() {
            let version = &root.body["version"];
            if let Some(number) = version["number"].as_str() {
                let distribution = if version["distribution"].as_str() == Some("opensearch") {
                    Distribution::OpenSearch
                } else {
                    Distribution::Elasticsearch
                };
                return Ok(ClusterInfo {
                    distribution,
                    version: number.to_owned(),
                    cluster_name: root.body["cluster_name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned(),
                    build_flavor: version["build_flavor"].as_str().map(str::to_owned),
                });
            }
        }
        let query = [(
            "filter_path",
            "cluster_name,nodes.*.version,nodes.*.build_flavor".to_owned(),
        )];
        let body = self
            .json(Method::Get, "/_nodes/_local", &query, None)
            .await?;
        let node = body["nodes"]
            .as_object()
            .and_then(|nodes| nodes.values().next())
            .ok_or_else(|| EsError::Decode {
                path: "/_nodes/_local".into(),
                message: "no node in the answer".into(),
            })?;
        let number = node["version"].as_str().ok_or_else(|| EsError::Decode {
            path: "/_nodes/_local".into(),
            message: "no version in the answer".into(),
        })?;
        // Only Elasticsearch reports a build flavour.
        let build_flavor = node["build_flavor"].as_str().map(str::to_owned);
        Ok(ClusterInfo {
            distribution: if build_flavor.is_some() {
                Distribution::Elasticsearch
            } else {
                Distribution::OpenSearch
            },
            version: number.to_owned(),
            cluster_name: body["cluster_name"].as_str().unwrap_or_default().to_owned(),
            build_flavor,
        })
    }

    /// Probes the optional APIs. `GET _connector` answers 200 (possibly an empty list) where the
    /// connector API exists, and 400/404 ("no handler", "invalid index name") where it does not.
    pub async fn capabilities(&self, info: &ClusterInfo) -> Result<Capabilities, EsError> {
        let connector_api = match info.distribution {
            Distribution::OpenSearch => false,
            Distribution::Elasticsearch => {
                let resp = self
                    .send(Method::Get, "/_connector", &[("size", "0".into())], None)
                    .await?;
                resp.is_success() && resp.body.get("results").is_some()
            }
        };
        // Elasticsearch's `_pit` API. OpenSearch's point in time has another API
        // (`_search/point_in_time`); the callers fall back to a scroll there.
        let point_in_time = info.distribution == Distribution::Elasticsearch
            && info.major_minor().is_some_and(|v| v >= (7, 10));
        Ok(Capabilities {
            connector_api,
            point_in_time,
        })
    }

    /// Waits until the cluster answers `GET /`, up to `max_wait`, with exponential backoff.
    pub async fn wait_until_available(&self, max_wait: Duration) -> Result<ClusterInfo, EsError> {
        let deadline = crate::time::deadline_in(max_wait);
        let mut delay = Duration::from_millis(250);
        loop {
            match self.info().await {
                Ok(info) => return Ok(info),
                Err(e) if crate::time::deadline_in(delay) < deadline => {
                    tracing::info!(error = %e, "waiting for elasticsearch");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Builds [`EsError::Api`] from a non-2xx answer.
pub fn api_error(method: Method, path: &str, resp: &EsResponse) -> EsError {
    let err = &resp.body["error"];
    let (error_type, reason) = match err {
        Value::Object(_) => (
            err["type"].as_str().map(str::to_owned),
            err["reason"]
                .as_str()
                .unwrap_or("no reason given")
                .to_owned(),
        ),
        Value::String(s) => (None, s.clone()),
        _ => (None, resp.body.to_string()),
    };
    EsError::Api {
        status: resp.status,
        method: format!("{method:?}").to_uppercase(),
        path: path.to_owned(),
        error_type,
        reason,
    }
}

/// Exponential backoff with full jitter: `base * 2^(attempt-1)`, capped at 60 s.
pub fn backoff_delay(base: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let cap = exp.min(Duration::from_secs(60));
    let jitter: f64 = rand::random::<f64>() * 0.5 + 0.5;
    cap.mul_f64(jitter)
}

/// Percent-encodes one path segment (document ids, index names) for [`EsClient::send`].
pub fn encode_segment(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classification() {
        assert_eq!(status_kind(429), ErrorKind::Transient);
        assert_eq!(status_kind(503), ErrorKind::Transient);
        assert_eq!(status_kind(409), ErrorKind::Conflict);
        assert_eq!(status_kind(404), ErrorKind::NotFound);
        assert_eq!(status_kind(403), ErrorKind::Unauthorized);
        assert_eq!(status_kind(400), ErrorKind::Fatal);
    }

    #[test]
    fn backoff_grows_and_caps() {
        let base = Duration::from_millis(100);
        assert!(backoff_delay(base, 1) <= Duration::from_millis(100));
        assert!(backoff_delay(base, 4) >= Duration::from_millis(400));
        assert!(backoff_delay(base, 30) <= Duration::from_secs(60));
    }

    #[test]
    fn segment_encoding() {
        assert_eq!(encode_segment("a b/c"), "a%20b%2Fc");
        assert_eq!(encode_segment("abc-1"), "abc-1");
    }

    #[test]
    fn version_parsing() {
        let info = ClusterInfo {
            distribution: Distribution::Elasticsearch,
            version: "8.19.9-SNAPSHOT".into(),
            cluster_name: "x".into(),
            build_flavor: None,
        };
        assert_eq!(info.major_minor(), Some((8, 19)));
    }
}
