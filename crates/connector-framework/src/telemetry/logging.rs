//! Log output: a human format on a terminal, ECS-compatible JSON for log shippers.
//!
//! Every line emitted inside a span carries that span's fields (and its parents'): the executor
//! opens a `job` span with `connector_id`, `job_id`, `service_type` and `job_type`, so every line
//! about a job names it. In JSON those land under `labels` as Elastic's Python service does. The
//! per-request `http` spans are the exception: they exist for trace export only.
//!
//! [`Logging`] also attaches OpenTelemetry trace export when an OTLP endpoint is configured
//! (see [`super::otel`]); [`init`] and [`init_with_writer`] install logs only.

use std::{fmt, io};

use serde_json::{Map, Value};
use tracing::{Event, Subscriber, field::Field};
use tracing_subscriber::{
    EnvFilter, Layer, Registry,
    filter::{FilterExt as _, LevelFilter, filter_fn},
    fmt::{
        FmtContext, FormatEvent, FormatFields, FormattedFields, MakeWriter,
        format::{JsonFields, Writer},
        writer::BoxMakeWriter,
    },
    layer::SubscriberExt,
    registry::LookupSpan,
    util::SubscriberInitExt,
};

use super::otel::{OtelError, OtlpConfig, TelemetryGuard};
use crate::error::{Classify, ErrorKind};

/// Output format of the logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Readable lines (coloured on a terminal).
    #[default]
    Human,
    /// One ECS JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "human" | "text" | "plain" => Ok(LogFormat::Human),
            "json" | "ecs" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected human or json)"
            )),
        }
    }
}

/// Span and event fields that go under ECS `labels`.
const LABELS: [&str; 5] = [
    "connector_id",
    "job_id",
    "service_type",
    "job_type",
    "index_name",
];

/// Errors installing the subscriber.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log level {0:?}: {1}")]
    Level(String, String),
    #[error("a global logger is already installed")]
    AlreadyInstalled,
    #[error(transparent)]
    Otlp(#[from] OtelError),
}

impl Classify for LoggingError {
    fn kind(&self) -> ErrorKind {
        match self {
            LoggingError::Level(..) => ErrorKind::Configuration,
            LoggingError::AlreadyInstalled => ErrorKind::Fatal,
            LoggingError::Otlp(e) => e.kind(),
        }
    }
}

/// Translates Elastic's level names (`DEBUG`, `WARNING`, `CRITICAL` …) or a tracing filter
/// directive into an [`EnvFilter`].
pub fn filter(level: &str) -> Result<EnvFilter, LoggingError> {
    let directive = match level.to_ascii_uppercase().as_str() {
        "DEBUG" => "debug".to_owned(),
        "INFO" => "info".to_owned(),
        "WARNING" | "WARN" => "warn".to_owned(),
        "ERROR" | "CRITICAL" | "FATAL" => "error".to_owned(),
        "TRACE" | "NOTSET" => "trace".to_owned(),
        _ => level.to_owned(),
    };
    // Dependencies' debug output is noise for operators; keep them at warn unless asked for.
    let full = if directive.contains('=') {
        directive
    } else {
        format!("{directive},hyper=warn,hyper_util=warn,reqwest=warn,h2=warn,rustls=warn")
    };
    EnvFilter::try_new(&full).map_err(|e| LoggingError::Level(level.to_owned(), e.to_string()))
}

/// Installs the global subscriber writing to stderr (logs only, no trace export).
pub fn init(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    init_with_writer(format, level, io::stderr)
}

/// Installs the global subscriber with any writer (tests capture logs this way); logs only.
pub fn init_with_writer<W>(format: LogFormat, level: &str, writer: W) -> Result<(), LoggingError>
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    // Without an endpoint the guard holds nothing; dropping it is a no-op.
    Logging::new(format, level).writer(writer).init().map(drop)
}

type BoxedLayer = Box<dyn Layer<Registry> + Send + Sync>;

/// Logging (and, with an OTLP endpoint, trace export) set-up.
///
/// ```no_run
/// # use connector_framework::telemetry::{logging::{Logging, LogFormat}, otel::OtlpConfig};
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let configured: Option<OtlpConfig> = None; // e.g. from `service.otlp_endpoint`
/// let mut guard = Logging::new(LogFormat::Json, "INFO")
///     .otlp(OtlpConfig::explicit_or_env(configured))
///     .init()?;
/// // … run the service …
/// guard.shutdown()?; // sends the last spans
/// # Ok(()) }
/// ```
pub struct Logging {
    format: LogFormat,
    level: String,
    writer: BoxMakeWriter,
    otlp: Option<OtlpConfig>,
}

impl fmt::Debug for Logging {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Logging")
            .field("format", &self.format)
            .field("level", &self.level)
            .field("otlp", &self.otlp)
            .finish_non_exhaustive()
    }
}

impl Logging {
    /// Logs in `format` at `level` (Elastic level name or filter directive) to stderr, no traces.
    pub fn new(format: LogFormat, level: impl Into<String>) -> Self {
        Self {
            format,
            level: level.into(),
            writer: BoxMakeWriter::new(io::stderr),
            otlp: None,
        }
    }

    /// Writes logs to `writer` instead of stderr.
    pub fn writer<W>(mut self, writer: W) -> Self
    where
        W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
    {
        self.writer = BoxMakeWriter::new(writer);
        self
    }

    /// Exports spans to this OTLP endpoint; `None` (the default) creates nothing OTel-related.
    /// Use [`OtlpConfig::explicit_or_env`] to honour `OTEL_EXPORTER_OTLP_ENDPOINT` and
    /// `OTEL_SDK_DISABLED`.
    pub fn otlp(mut self, otlp: Option<OtlpConfig>) -> Self {
        self.otlp = otlp;
        self
    }

    /// Builds the subscriber without installing it, with the guard of its trace export.
    pub fn build(
        self,
    ) -> Result<
        (
            impl tracing::Subscriber + Send + Sync + 'static,
            TelemetryGuard,
        ),
        LoggingError,
    > {
        // The level filter applies to logs and spans alike. It is a filter of each layer rather
        // than of the whole subscriber so that a span no layer wants is disabled outright: the
        // trace-only `http` spans (one per outbound request) are not log context, so without
        // trace export nothing wants them and they cost nothing.
        let not_trace_only = filter_fn(|meta| !super::otel::trace_only(meta))
            .with_max_level_hint(LevelFilter::TRACE);
        let for_logs = filter(&self.level)?.and(not_trace_only);
        let fmt_layer: BoxedLayer = match self.format {
            LogFormat::Human => tracing_subscriber::fmt::layer()
                .with_writer(self.writer)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .with_filter(for_logs)
                .boxed(),
            LogFormat::Json => tracing_subscriber::fmt::layer()
                .with_writer(self.writer)
                .fmt_fields(JsonFields::new())
                .event_format(EcsFormat)
                .with_filter(for_logs)
                .boxed(),
        };
        let mut layers = vec![fmt_layer];
        let guard = match &self.otlp {
            Some(config) => {
                let (layer, provider) =
                    super::otel::build_layer::<Registry>(config, filter(&self.level)?)?;
                layers.push(layer.boxed());
                TelemetryGuard::new(provider)
            }
            None => TelemetryGuard::disabled(),
        };
        Ok((tracing_subscriber::registry().with(layers), guard))
    }

    /// Installs the subscriber globally. Keep the guard until the process exits.
    pub fn init(self) -> Result<TelemetryGuard, LoggingError> {
        let (subscriber, guard) = self.build()?;
        subscriber
            .try_init()
            .map_err(|_| LoggingError::AlreadyInstalled)?;
        Ok(guard)
    }
}

/// ECS JSON event formatter.
pub struct EcsFormat;

impl<S, N> FormatEvent<S, N> for EcsFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = Map::new();
        // Parent spans first, so inner spans and the event override them.
        if let Some(scope) = ctx.event_scope() {
            for span in scope.from_root() {
                let ext = span.extensions();
                if let Some(formatted) = ext.get::<FormattedFields<N>>()
                    && let Ok(Value::Object(map)) =
                        serde_json::from_str::<Value>(formatted.as_str())
                {
                    fields.extend(map);
                }
            }
        }
        let mut visitor = JsonVisitor(Map::new());
        event.record(&mut visitor);
        fields.extend(visitor.0);

        let meta = event.metadata();
        let mut line = Map::new();
        line.insert(
            "@timestamp".into(),
            Value::String(chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)),
        );
        line.insert(
            "log.level".into(),
            Value::String(meta.level().as_str().to_lowercase()),
        );
        let message = fields
            .remove("message")
            .unwrap_or(Value::String(String::new()));
        line.insert("message".into(), message);
        line.insert("ecs.version".into(), Value::String("8.11.0".into()));
        line.insert("log.logger".into(), Value::String(meta.target().to_owned()));
        line.insert("service.name".into(), Value::String("connectors".into()));
        line.insert("service.type".into(), Value::String("connectors-rs".into()));
        line.insert(
            "service.version".into(),
            Value::String(env!("CARGO_PKG_VERSION").into()),
        );
        let mut labels = Map::new();
        for key in LABELS {
            if let Some(v) = fields.remove(key) {
                labels.insert(key.to_owned(), v);
            }
        }
        if !labels.is_empty() {
            line.insert("labels".into(), Value::Object(labels));
        }
        if !fields.is_empty() {
            line.insert("fields".into(), Value::Object(fields));
        }
        let text = serde_json::to_string(&Value::Object(line)).map_err(|_| fmt::Error)?;
        writeln!(writer, "{text}")
    }
}

struct JsonVisitor(Map<String, Value>);

impl tracing::field::Visit for JsonVisitor {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), Value::String(format!("{value:?}")));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0
            .insert(field.name().to_owned(), Value::String(value.to_owned()));
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), Value::from(value));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buf(Arc<Mutex<Vec<u8>>>);
    impl io::Write for Buf {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            self.0
                .lock()
                .map_err(|_| io::Error::other("poisoned"))?
                .extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn ecs_lines_carry_job_labels_from_spans() {
        let buf = Buf::default();
        let writer = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter("DEBUG").unwrap())
            .with_writer(move || writer.clone())
            .fmt_fields(JsonFields::new())
            .event_format(EcsFormat)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!(
                "job",
                connector_id = "c1",
                job_id = "j1",
                service_type = "gmail",
                job_type = "full"
            );
            let _g = span.enter();
            tracing::info!(mailbox = "amy@example.com", docs = 3u64, "mailbox done");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let line: Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(line["message"], "mailbox done");
        assert_eq!(line["log.level"], "info");
        assert_eq!(line["labels"]["connector_id"], "c1");
        assert_eq!(line["labels"]["job_id"], "j1");
        assert_eq!(line["labels"]["service_type"], "gmail");
        assert_eq!(line["labels"]["job_type"], "full");
        assert_eq!(line["fields"]["mailbox"], "amy@example.com");
        assert_eq!(line["fields"]["docs"], 3);
        assert!(line["@timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn without_endpoint_no_exporter_is_created() {
        let (subscriber, guard) = Logging::new(LogFormat::Json, "INFO")
            .otlp(None)
            .build()
            .unwrap();
        assert!(!guard.is_exporting());
        // Spans still work for logs; there is simply no OTel context behind them.
        tracing::subscriber::with_default(subscriber, || {
            let span = crate::telemetry::otel::job_span("c", "j", "gmail", "full");
            assert!(crate::telemetry::otel::traceparent(&span).is_none());
        });
    }

    #[test]
    fn json_logs_carry_job_labels_and_skip_http_spans() {
        use crate::telemetry::otel::{bulk_span, http_client_span, job_span, mailbox_span};
        let buf = Buf::default();
        let writer = buf.clone();
        let (subscriber, guard) = Logging::new(LogFormat::Json, "INFO")
            .writer(move || writer.clone())
            .build()
            .unwrap();
        assert!(!guard.is_exporting());
        tracing::subscriber::with_default(subscriber, || {
            let job = job_span("c1", "j1", "gmail", "full");
            let _job = job.enter();
            let mailbox = mailbox_span("amy@example.com");
            assert!(!mailbox.is_disabled());
            assert!(!bulk_span("idx", 1, 10).is_disabled());
            // Without trace export nothing wants the per-request span.
            let http = http_client_span("GET", "gmail.googleapis.com", "/gmail/v1/users");
            assert!(http.is_disabled());
            let _mailbox = mailbox.enter();
            let _http = http.enter();
            tracing::info!("inside every span");
            tracing::debug!("below the level");
        });
        let out = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<Value> = out
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 1, "{out}");
        let line = &lines[0];
        assert_eq!(line["message"], "inside every span");
        assert_eq!(line["labels"]["connector_id"], "c1");
        assert_eq!(line["labels"]["job_id"], "j1");
        assert_eq!(line["labels"]["service_type"], "gmail");
        assert_eq!(line["labels"]["job_type"], "full");
        assert_eq!(line["fields"]["mailbox"], "amy@example.com");
        assert!(line["fields"].get("url.path").is_none(), "{line}");
    }

    #[test]
    fn bad_otlp_endpoint_fails_the_set_up() {
        let err = Logging::new(LogFormat::Human, "INFO")
            .otlp(Some(OtlpConfig::new("localhost:4318")))
            .build()
            .err()
            .unwrap();
        assert!(matches!(
            err,
            LoggingError::Otlp(OtelError::Endpoint { .. })
        ));
        assert_eq!(err.kind(), ErrorKind::Configuration);
    }

    #[test]
    fn elastic_level_names_are_accepted() {
        for l in [
            "DEBUG",
            "INFO",
            "WARNING",
            "ERROR",
            "CRITICAL",
            "info",
            "connectors=debug",
        ] {
            filter(l).unwrap();
        }
        assert!(filter("loud=[").is_err());
    }
}
