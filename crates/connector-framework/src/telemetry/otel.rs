//! OpenTelemetry traces exported over OTLP/HTTP (protobuf) to `{endpoint}/v1/traces`.
//!
//! Tracing is off unless an endpoint is configured: without one nothing OpenTelemetry-related is
//! built (no provider, no exporter, no background thread). With one,
//! [`Logging`](super::logging::Logging) adds a `tracing-opentelemetry` layer next to the log
//! layer, so every `tracing` span of the service becomes an OpenTelemetry span: the span's fields
//! become span attributes, its parent span becomes the parent, and events logged inside it
//! become span events (an `ERROR` event marks the span as failed).
//!
//! Spans are batched and exported by a task on a dedicated single-threaded tokio runtime (one
//! background thread), so exporting never competes with the service's runtime and flushing from
//! any context cannot deadlock. Keep the [`TelemetryGuard`] returned by the logging set-up alive
//! for the life of the process and call [`TelemetryGuard::shutdown`] (or drop it) before exiting
//! so the last spans are sent.
//!
//! # Configuration
//!
//! - The endpoint comes from the service configuration ([`OtlpConfig`]) or, when that is not set,
//!   from the standard `OTEL_EXPORTER_OTLP_ENDPOINT` environment variable
//!   ([`OtlpConfig::explicit_or_env`]). It is the collector's base URL, e.g.
//!   `http://localhost:4318`; `/v1/traces` is appended (an endpoint that already ends in
//!   `/v1/traces` is used as given).
//! - `OTEL_SDK_DISABLED=true` turns export off whatever the configuration says.
//! - Headers (e.g. `Authorization` for Elastic APM / an OTLP gateway) are [`Secret`]s in
//!   [`OtlpConfig::headers`]; the standard `OTEL_EXPORTER_OTLP_HEADERS` /
//!   `OTEL_EXPORTER_OTLP_TRACES_HEADERS` are read by the exporter too, as is
//!   `OTEL_EXPORTER_OTLP_TIMEOUT` (default 10 s per export request).
//! - Batching follows the standard `OTEL_BSP_*` variables (defaults: queue 2048 spans, batches of
//!   512, sent every 5 s or as soon as a batch is full; spans beyond a full queue are dropped).
//! - The resource is `service.name = connectors` (unless `OTEL_SERVICE_NAME` is set) and
//!   `service.version` = this crate's version; `OTEL_RESOURCE_ATTRIBUTES` adds more.
//! - Only spans the log filter lets through are exported (the `job`, `mailbox`, `bulk` and `http`
//!   spans are `INFO`), and never spans of the HTTP stack or of OpenTelemetry itself, so the
//!   exporter's own requests are not traced.
//! - The `http` spans are for traces only: the log layer ignores them (they are no log context
//!   worth formatting once per request), so without an endpoint nothing wants them and they are
//!   disabled, costing a cached callsite check per request.
//!
//! # Span convention
//!
//! The service's spans, their `tracing` names and fields (fields become OTel attributes with the
//! same names). Use the constructors below ([`job_span`], [`mailbox_span`], [`bulk_span`],
//! [`http_client_span`]) so names and fields stay consistent; fields marked *recorded* are
//! declared empty and filled in with [`tracing::Span::record`] when known.
//!
//! | span | level | fields |
//! |---|---|---|
//! | `job` — one sync job, from its start to its final status | INFO | `connector_id`, `job_id`, `service_type`, `job_type` (`full`, `incremental`, `access_control`) |
//! | `mailbox` — one mailbox (user) inside a job, child of `job` | INFO | `mailbox` (the account's address); recorded: `documents` (upserts and deletes the mailbox produced) |
//! | `bulk` — one `_bulk` request, child of the job whose sink sent it | INFO | `index_name`, `operations` (actions in the request), `bytes` (request body size); recorded: `failed_items` (items the answer did not apply, those re-sent included), `http.response.status_code`, `otel.status_code` (`error` when the request failed) |
//! | `http` — one outbound HTTP request (Google APIs, token endpoint) | INFO | `otel.kind = "client"`, `otel.name` (the method, e.g. `GET`, as OTel's HTTP convention names client spans), `http.request.method`, `server.address`, `url.path` (never the query string: it can carry tokens); recorded: `http.response.status_code`, `error.type` (the status code of a 4xx/5xx answer, or `timeout`, `connect`, `transport`), `otel.status_code` (`error` with `error.type`) |
//!
//! # Where the spans come from
//!
//! - `job`: the executor ([`crate::service`]) runs each claimed job inside one, from "job started"
//!   to the recorded outcome. The connector's sync and the job's watcher are tasks spawned inside
//!   it, so everything the job does is in its trace.
//! - `bulk`: the bounded sink ([`crate::sink`]), one per `_bulk` request (a re-send of items
//!   answered 429/5xx is a new request; the Elasticsearch client's retries of a whole request are
//!   inside the same span). The sink's batcher runs in the span that started the sink, the job's.
//! - `mailbox` and `http`: the Gmail connector, one `mailbox` span per mailbox pass of a full or
//!   incremental sync, and one `http` span per request to Google (API calls and token requests),
//!   up to the response headers. A request made for a mailbox is a child of its `mailbox`
//!   span; the Directory listing is a child of the `job`.
//!
//! Requests to Elasticsearch other than `_bulk` have no span of their own.
//!
//! Record numbers as `i64` (or `f64`/`bool`): `tracing-opentelemetry` turns `u64` values into
//! string attributes. E.g. `span.record("http.response.status_code", i64::from(status))`.
//! Every span also carries `code.*`, `thread.*`, `busy_ns` and `idle_ns` attributes.
//!
//! `otel.name`, `otel.kind`, `otel.status_code` and `otel.status_description` are special to
//! `tracing-opentelemetry`: they set the OTel span name, kind and status instead of attributes.
//! Never put a secret (token, API key, password) in a span field.
//!
//! The constructors' spans have the target `connector_framework::telemetry::otel`: a log level
//! given as a bare filter directive (e.g. `connectors=debug`) must also enable
//! `connector_framework` for them to exist (plain levels such as `INFO` do).
//!
//! [`traceparent`] gives the W3C `traceparent` header for the current span, for outbound
//! requests whose server takes part in the trace (Elasticsearch accepts it).

use std::{collections::HashMap, time::Duration};

use opentelemetry::{
    InstrumentationScope, KeyValue,
    trace::{TraceContextExt, TracerProvider as _},
};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::{
    Resource, runtime,
    trace::{SdkTracerProvider, span_processor_with_async_runtime::BatchSpanProcessor},
};
use tracing::Subscriber;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::registry::LookupSpan;

use crate::{
    Secret,
    error::{Classify, ErrorKind},
};

/// The standard environment variable naming the OTLP collector's base URL.
pub const ENDPOINT_ENV: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";

/// The standard kill switch: `true` turns trace export off whatever the configuration says.
pub const SDK_DISABLED_ENV: &str = "OTEL_SDK_DISABLED";

fn sdk_disabled(value: Option<&str>) -> bool {
    value.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

/// Service name reported in the trace resource.
pub const SERVICE_NAME: &str = "connectors";

/// Path of the traces signal under the OTLP/HTTP base URL.
const TRACES_PATH: &str = "/v1/traces";

/// Target prefixes whose spans are never exported: the exporter's own HTTP stack (exporting
/// them would trace every export, forever) and OpenTelemetry's internal diagnostics.
const NOT_EXPORTED: [&str; 8] = [
    "opentelemetry",
    "hyper",
    "hyper_util",
    "h2",
    "reqwest",
    "tower",
    "rustls",
    "tokio",
];

/// Where to export traces. `Debug` is safe to log: header values are [`Secret`]s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Base URL of the OTLP/HTTP collector, e.g. `http://localhost:4318`.
    pub endpoint: String,
    /// Extra request headers (typically `Authorization`).
    pub headers: Vec<(String, Secret)>,
}

impl OtlpConfig {
    /// An endpoint without extra headers.
    pub fn new(endpoint: impl Into<String>) -> Self {
        Self {
            endpoint: endpoint.into(),
            headers: Vec::new(),
        }
    }

    /// Adds a request header sent with every export.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<Secret>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The endpoint from `OTEL_EXPORTER_OTLP_ENDPOINT`, if set and not blank.
    pub fn from_env() -> Option<Self> {
        Self::from_env_value(std::env::var(ENDPOINT_ENV).ok())
    }

    /// `explicit` (the service configuration) when given, else [`OtlpConfig::from_env`]. `None`
    /// means tracing stays off, as it does whenever the standard `OTEL_SDK_DISABLED=true` is set.
    pub fn explicit_or_env(explicit: Option<OtlpConfig>) -> Option<Self> {
        if sdk_disabled(std::env::var(SDK_DISABLED_ENV).ok().as_deref()) {
            return None;
        }
        explicit
            .filter(|c| !c.endpoint.trim().is_empty())
            .or_else(Self::from_env)
    }

    fn from_env_value(value: Option<String>) -> Option<Self> {
        value
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
            .map(Self::new)
    }

    /// The URL spans are POSTed to: `{endpoint}/v1/traces`.
    pub fn traces_url(&self) -> Result<String, OtelError> {
        let raw = self.endpoint.trim();
        let url = url::Url::parse(raw).map_err(|e| OtelError::Endpoint {
            endpoint: raw.to_owned(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
            return Err(OtelError::Endpoint {
                endpoint: raw.to_owned(),
                reason: "expected an http:// or https:// URL with a host".to_owned(),
            });
        }
        if url.query().is_some() || url.fragment().is_some() {
            return Err(OtelError::Endpoint {
                endpoint: raw.to_owned(),
                reason: "the endpoint must not have a query or fragment".to_owned(),
            });
        }
        let base = url.as_str().trim_end_matches('/');
        if base.ends_with(TRACES_PATH) {
            Ok(base.to_owned())
        } else {
            Ok(format!("{base}{TRACES_PATH}"))
        }
    }

    /// Headers checked for HTTP validity (the exporter would silently drop bad ones).
    fn header_map(&self) -> Result<HashMap<String, String>, OtelError> {
        let mut map = HashMap::with_capacity(self.headers.len());
        for (name, value) in &self.headers {
            let name = name.trim();
            if name.is_empty() || !name.bytes().all(is_token_byte) {
                return Err(OtelError::Header {
                    name: name.to_owned(),
                    reason: "not a valid header name",
                });
            }
            if !value.expose().bytes().all(is_header_value_byte) {
                return Err(OtelError::Header {
                    name: name.to_owned(),
                    reason: "the value contains control characters",
                });
            }
            map.insert(name.to_owned(), value.expose().to_owned());
        }
        Ok(map)
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// RFC 9110 field-value characters: visible ASCII, space, tab and obs-text.
fn is_header_value_byte(b: u8) -> bool {
    b == b'\t' || b == b' ' || (0x21..=0x7e).contains(&b) || b >= 0x80
}

/// Errors setting up or shutting down trace export.
#[derive(Debug, thiserror::Error)]
pub enum OtelError {
    #[error("invalid OTLP endpoint {endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("invalid OTLP header {name:?}: {reason}")]
    Header { name: String, reason: &'static str },
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    #[error("flushing traces failed: {0}")]
    Flush(String),
}

impl Classify for OtelError {
    fn kind(&self) -> ErrorKind {
        match self {
            OtelError::Endpoint { .. } | OtelError::Header { .. } => ErrorKind::Configuration,
            OtelError::Exporter(_) => ErrorKind::Fatal,
            OtelError::Flush(_) => ErrorKind::Transient,
        }
    }
}

/// Builds the provider (batch exporter on its own runtime thread) and the layer feeding it.
///
/// The layer takes the spans `level` lets through, except those of [`NOT_EXPORTED`] targets.
/// Nothing is installed globally.
pub(crate) fn build_layer<S>(
    config: &OtlpConfig,
    level: tracing_subscriber::EnvFilter,
) -> Result<
    (
        impl tracing_subscriber::Layer<S> + Send + Sync + 'static,
        SdkTracerProvider,
    ),
    OtelError,
>
where
    S: Subscriber + for<'span> LookupSpan<'span> + Send + Sync,
{
    use tracing_subscriber::{
        Layer as _,
        filter::{FilterExt as _, LevelFilter, filter_fn},
    };

    let provider = build_provider(config)?;
    let tracer = provider.tracer_with_scope(
        InstrumentationScope::builder(SERVICE_NAME)
            .with_version(env!("CARGO_PKG_VERSION"))
            .build(),
    );
    let exported =
        filter_fn(|meta| exported_target(meta.target())).with_max_level_hint(LevelFilter::TRACE);
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(level.and(exported));
    Ok((layer, provider))
}

/// False for targets under a [`NOT_EXPORTED`] prefix (`hyper`, `hyper_util`, `hyper::client` …).
fn exported_target(target: &str) -> bool {
    !NOT_EXPORTED.iter().any(|prefix| {
        target
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::") || rest.starts_with('_'))
    })
}

fn build_provider(config: &OtlpConfig) -> Result<SdkTracerProvider, OtelError> {
    let url = config.traces_url()?;
    let headers = config.header_map()?;
    // reqwest 0.13 is built without a default rustls provider; https endpoints need one.
    crate::install_crypto_provider();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(url)
        .with_headers(headers)
        .build()
        .map_err(|e| OtelError::Exporter(e.to_string()))?;
    let processor = BatchSpanProcessor::builder(exporter, runtime::TokioCurrentThread).build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_resource(resource())
        .build())
}

fn resource() -> Resource {
    let mut builder = Resource::builder();
    // The standard variable wins; the default detector already read it.
    let from_env = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty());
    if !from_env {
        builder = builder.with_service_name(SERVICE_NAME);
    }
    builder
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build()
}

/// Keeps trace export alive; flushes and shuts it down on [`shutdown`](Self::shutdown) or drop.
///
/// A guard without a provider (no endpoint configured) does nothing.
#[must_use = "dropping the guard shuts trace export down"]
#[derive(Debug, Default)]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl TelemetryGuard {
    /// A guard for when tracing is off.
    pub fn disabled() -> Self {
        Self { provider: None }
    }

    pub(crate) fn new(provider: SdkTracerProvider) -> Self {
        Self {
            provider: Some(provider),
        }
    }

    /// Whether spans are being exported (an endpoint was configured and not shut down yet).
    pub fn is_exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Sends every span ended so far and waits for the collector's answer (bounded by the
    /// export timeout). Blocks the calling thread; on a multi-threaded tokio runtime it tells
    /// the runtime first.
    pub fn force_flush(&self) -> Result<(), OtelError> {
        match &self.provider {
            Some(provider) => {
                blocking(|| provider.force_flush()).map_err(|e| OtelError::Flush(e.to_string()))
            }
            None => Ok(()),
        }
    }

    /// Flushes the spans ended so far and stops exporting. Later spans are dropped. Calling it
    /// again does nothing.
    pub fn shutdown(&mut self) -> Result<(), OtelError> {
        match self.provider.take() {
            Some(provider) => blocking(|| provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT))
                .map_err(|e| OtelError::Flush(e.to_string())),
            None => Ok(()),
        }
    }
}

/// Upper bound asked of the provider on shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(15);

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::warn!(error = %e, "traces were not all exported at shutdown");
        }
    }
}

/// Runs a blocking wait. The batch task runs on its own thread, so blocking here cannot
/// deadlock; on a multi-threaded runtime `block_in_place` keeps the runtime's other tasks
/// moving meanwhile (it is not allowed on a current-thread runtime, where we simply block).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

/// The W3C `traceparent` header value for `span`, or `None` when it is not traced (tracing off,
/// or the span filtered out). Put it on outbound requests so the server joins the trace.
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let otel_span = context.span();
    let sc = otel_span.span_context();
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

/// Target of the spans made by the constructors below.
const SPAN_TARGET: &str = module_path!();

/// Spans exported as traces but never used as log context: the `http` client span (one per
/// outbound request, far too many to format for every log line's benefit).
pub(crate) fn trace_only(meta: &tracing::Metadata<'_>) -> bool {
    meta.is_span() && meta.name() == "http" && meta.target() == SPAN_TARGET
}

/// The `job` span: one sync job.
pub fn job_span(
    connector_id: &str,
    job_id: &str,
    service_type: &str,
    job_type: &str,
) -> tracing::Span {
    tracing::info_span!(
        "job",
        connector_id = connector_id,
        job_id = job_id,
        service_type = service_type,
        job_type = job_type
    )
}

/// The `mailbox` span: one mailbox of a job. Record `documents` when done.
pub fn mailbox_span(mailbox: &str) -> tracing::Span {
    tracing::info_span!(
        "mailbox",
        mailbox = mailbox,
        documents = tracing::field::Empty
    )
}

/// The `bulk` span: one `_bulk` request. Record `failed_items` and
/// `http.response.status_code` when the answer arrives.
pub fn bulk_span(index_name: &str, operations: u64, bytes: u64) -> tracing::Span {
    tracing::info_span!(
        "bulk",
        index_name = index_name,
        operations = saturating_i64(operations),
        bytes = saturating_i64(bytes),
        failed_items = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty
    )
}

/// OTel attributes are signed; counts never come near the limit.
fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// The `http` span: one outbound request. `path` must not include the query string. Record
/// `http.response.status_code` (and `error.type` on failure) when the answer arrives.
pub fn http_client_span(method: &str, host: &str, path: &str) -> tracing::Span {
    tracing::info_span!(
        "http",
        otel.kind = "client",
        otel.name = method,
        http.request.method = method,
        server.address = host,
        url.path = path,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        otel.status_code = tracing::field::Empty
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traces_url_appends_the_signal_path_once() {
        let url = |e: &str| OtlpConfig::new(e).traces_url().unwrap();
        assert_eq!(
            url("http://localhost:4318"),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            url(" http://localhost:4318/ "),
            "http://localhost:4318/v1/traces"
        );
        assert_eq!(
            url("https://apm.example.com/otlp"),
            "https://apm.example.com/otlp/v1/traces"
        );
        assert_eq!(
            url("http://collector:4318/v1/traces"),
            "http://collector:4318/v1/traces"
        );
    }

    #[test]
    fn bad_endpoints_are_configuration_errors() {
        for bad in [
            "localhost:4318",
            "ftp://x",
            "not a url",
            "http://h/?a=b",
            "",
        ] {
            let err = OtlpConfig::new(bad).traces_url().unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Configuration, "{bad}: {err}");
        }
    }

    #[test]
    fn headers_are_validated_and_redacted() {
        let good = OtlpConfig::new("http://h").with_header("Authorization", "ApiKey abc");
        assert_eq!(
            good.header_map().unwrap().get("Authorization").unwrap(),
            "ApiKey abc"
        );
        assert!(!format!("{good:?}").contains("abc"));
        let bad_name = OtlpConfig::new("http://h").with_header("Bad Name", "x");
        assert!(matches!(
            bad_name.header_map(),
            Err(OtelError::Header { .. })
        ));
        let bad_value = OtlpConfig::new("http://h").with_header("X-Key", "a\r\nb");
        let err = bad_value.header_map().unwrap_err();
        assert!(!err.to_string().contains("a\r\nb"));
        assert_eq!(err.kind(), ErrorKind::Configuration);
    }

    #[test]
    fn env_value_only_when_not_blank() {
        assert_eq!(OtlpConfig::from_env_value(None), None);
        assert_eq!(OtlpConfig::from_env_value(Some("  ".into())), None);
        assert_eq!(
            OtlpConfig::from_env_value(Some(" http://c:4318 ".into())),
            Some(OtlpConfig::new("http://c:4318"))
        );
    }

    #[test]
    fn explicit_endpoint_wins_over_env() {
        if sdk_disabled(std::env::var(SDK_DISABLED_ENV).ok().as_deref()) {
            return; // the environment switched OTel off; nothing to compare
        }
        let explicit = OtlpConfig::new("http://explicit:4318");
        assert_eq!(
            OtlpConfig::explicit_or_env(Some(explicit.clone())),
            Some(explicit)
        );
    }

    #[test]
    fn sdk_disabled_values() {
        assert!(sdk_disabled(Some("true")));
        assert!(sdk_disabled(Some(" TRUE ")));
        assert!(!sdk_disabled(Some("false")));
        assert!(!sdk_disabled(Some("")));
        assert!(!sdk_disabled(None));
    }

    #[test]
    fn exporter_target_spans_are_not_exported() {
        let skipped = |target: &str| !exported_target(target);
        assert!(skipped("hyper_util::client::legacy"));
        assert!(skipped("opentelemetry_sdk"));
        assert!(skipped("reqwest::connect"));
        assert!(!skipped("connector_framework::es"));
        assert!(!skipped("hyperion"));
    }

    #[test]
    fn traceparent_is_none_without_tracing() {
        assert_eq!(traceparent(&tracing::Span::none()), None);
        let span = job_span("c", "j", "gmail", "full");
        assert_eq!(traceparent(&span), None);
    }

    #[test]
    fn disabled_guard_does_nothing() {
        let mut guard = TelemetryGuard::disabled();
        assert!(!guard.is_exporting());
        guard.force_flush().unwrap();
        guard.shutdown().unwrap();
    }
}
