//! `config.yml` + `CONNECTORS_*` environment (figment): the keys and defaults of Elastic's
//! connectors service (framework-spec §2), plus a few additions of ours (marked below).
//!
//! Precedence (lowest to highest): built-in defaults, the YAML file, environment variables named
//! `CONNECTORS_<SECTION>__<KEY>` (double underscore = one nesting level, e.g.
//! `CONNECTORS_ELASTICSEARCH__HOST`, `CONNECTORS_ELASTICSEARCH__BULK__CHUNK_SIZE`).
//! Environment variables whose first segment is not a configuration section
//! (e.g. `CONNECTORS_TEST_CONNECTORS`) are not configuration and are ignored.
//!
//! Unknown keys and values of the wrong type are errors naming the key path
//! (`elasticsearch.bulk.chunk_size: expected an integer, found a string "x"`).

use std::{collections::BTreeMap, path::Path, time::Duration};

use figment::{
    Figment,
    providers::{Format, Serialized, Yaml},
};
use serde::{Deserialize, Deserializer, Serialize};

use crate::{Classify, ErrorKind, EsConnection, Secret, es::EsAuth};

/// Prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "CONNECTORS_";
/// Default name of the connectors alias (Elastic's).
pub const DEFAULT_CONNECTORS_INDEX: &str = ".elastic-connectors";
/// Default name of the sync-jobs alias (Elastic's).
pub const DEFAULT_JOBS_INDEX: &str = ".elastic-connectors-sync-jobs";

/// A configuration problem, with the key it is about.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {message}")]
    Read { path: String, message: String },
    /// `key` is the dotted path (`elasticsearch.bulk.chunk_size`); empty for the document root.
    #[error("{}: {reason}{}", if key.is_empty() { "<root>" } else { key.as_str() }, source_suffix(origin.as_deref()))]
    Invalid {
        key: String,
        reason: String,
        /// The file or environment variable the value came from.
        origin: Option<String>,
    },
}

fn source_suffix(source: Option<&str>) -> String {
    source.map(|s| format!(" (in {s})")).unwrap_or_default()
}

impl ConfigError {
    /// The key path an [`Invalid`](ConfigError::Invalid) error is about.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::Read { .. } => None,
        }
    }

    fn invalid(key: &str, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.to_owned(),
            reason: reason.into(),
            origin: None,
        }
    }
}

impl Classify for ConfigError {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Configuration
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub elasticsearch: ElasticsearchConfig,
    pub service: ServiceConfig,
    /// Connectors served by this process: `{connector_id, service_type, api_key}`.
    pub connectors: Option<Vec<ConnectorEntry>>,
    /// Deprecated single-connector form (used only when `connectors` is empty).
    pub connector_id: Option<StringLike>,
    /// Deprecated single-connector form.
    pub service_type: Option<String>,
    /// Elastic's `module:Class` source registry. Accepted for compatibility and ignored: the
    /// connectors of this binary are compiled in.
    pub sources: Option<BTreeMap<String, serde_json::Value>>,
    /// Elastic's Data Extraction Service. Accepted for compatibility, not supported (ignored
    /// with a warning).
    pub extraction_service: Option<serde_json::Value>,
}

/// A string that YAML may have written as a number (`connector_id: 123`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(transparent)]
pub struct StringLike(pub String);

impl<'de> Deserialize<'de> for StringLike {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            S(String),
            I(i64),
            U(u64),
            F(f64),
        }
        Ok(StringLike(match Raw::deserialize(d)? {
            Raw::S(s) => s,
            Raw::I(i) => i.to_string(),
            Raw::U(u) => u.to_string(),
            Raw::F(f) => f.to_string(),
        }))
    }
}

/// One entry of `connectors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnectorEntry {
    pub connector_id: StringLike,
    #[serde(default)]
    pub service_type: Option<String>,
    /// Encoded API key for this connector's data-plane traffic.
    #[serde(default)]
    pub api_key: Option<Secret>,
}

/// `elasticsearch.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ElasticsearchConfig {
    pub host: String,
    pub username: String,
    pub password: Secret,
    pub api_key: Option<Secret>,
    pub ssl: bool,
    pub verify_certs: bool,
    pub ca_certs: Option<String>,
    pub headers: BTreeMap<String, String>,
    /// Seconds.
    pub request_timeout: f64,
    pub retry_on_timeout: bool,
    pub max_retries: u32,
    /// Seconds: base delay between retries.
    pub retry_interval: f64,
    /// Seconds the preflight check waits for Elasticsearch.
    pub max_wait_duration: f64,
    pub initial_backoff_duration: f64,
    pub backoff_multiplier: f64,
    pub log_level: LogLevel,
    pub feature_use_connectors_api: bool,
    pub bulk: BulkConfig,
}

impl Default for ElasticsearchConfig {
    fn default() -> Self {
        Self {
            host: "http://localhost:9200".into(),
            username: "elastic".into(),
            password: Secret::new("changeme"),
            api_key: None,
            ssl: true,
            verify_certs: true,
            ca_certs: None,
            headers: BTreeMap::new(),
            request_timeout: 240.0,
            retry_on_timeout: true,
            max_retries: 5,
            retry_interval: 10.0,
            max_wait_duration: 240.0,
            initial_backoff_duration: 1.0,
            backoff_multiplier: 2.0,
            log_level: LogLevel::Info,
            feature_use_connectors_api: true,
            bulk: BulkConfig::default(),
        }
    }
}

/// `elasticsearch.bulk.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BulkConfig {
    pub queue_max_size: usize,
    /// MiB.
    pub queue_max_mem_size: f64,
    /// Seconds.
    pub queue_refresh_interval: f64,
    /// Seconds.
    pub queue_refresh_timeout: f64,
    pub display_every: u64,
    /// Bulk body lines per request.
    pub chunk_size: usize,
    /// MiB per request.
    pub chunk_max_mem_size: f64,
    /// MiB per document without attachment; 0 disables.
    pub max_text_document_size: f64,
    pub max_concurrency: usize,
    pub concurrent_downloads: usize,
    pub max_retries: u32,
    /// Seconds.
    pub retry_interval: f64,
    pub enable_operations_logging: bool,
    pub error_monitor: ErrorMonitorConfig,
}

impl BulkConfig {
    /// The sink's settings from `elasticsearch.bulk.*`.
    pub fn to_options(&self) -> crate::sink::BulkOptions {
        let mib = |v: f64| (v.max(0.0) * 1024.0 * 1024.0) as usize;
        crate::sink::BulkOptions {
            queue_max_size: self.queue_max_size.max(1),
            queue_max_mem_size: mib(self.queue_max_mem_size).max(1),
            queue_refresh_timeout: secs(self.queue_refresh_timeout),
            chunk_size: self.chunk_size.max(2),
            chunk_max_mem_size: mib(self.chunk_max_mem_size).max(1),
            max_concurrency: self.max_concurrency.max(1),
            max_text_document_size: mib(self.max_text_document_size),
            max_retries: self.max_retries,
            retry_interval: secs(self.retry_interval),
            error_monitor: crate::sink::ErrorMonitorOptions {
                enabled: self.error_monitor.enabled,
                max_total_errors: self.error_monitor.max_total_errors,
                max_consecutive_errors: self.error_monitor.max_consecutive_errors,
                max_error_rate: self.error_monitor.max_error_rate,
                error_window_size: self.error_monitor.error_window_size,
                error_queue_size: self.error_monitor.error_queue_size,
            },
            ..crate::sink::BulkOptions::default()
        }
    }
}

impl Default for BulkConfig {
    fn default() -> Self {
        Self {
            queue_max_size: 1024,
            queue_max_mem_size: 25.0,
            queue_refresh_interval: 1.0,
            queue_refresh_timeout: 1300.0,
            display_every: 100,
            chunk_size: 500,
            chunk_max_mem_size: 3.0,
            max_text_document_size: 3.0,
            max_concurrency: 5,
            concurrent_downloads: 10,
            max_retries: 5,
            retry_interval: 10.0,
            enable_operations_logging: false,
            error_monitor: ErrorMonitorConfig::default(),
        }
    }
}

/// `elasticsearch.bulk.error_monitor.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ErrorMonitorConfig {
    pub enabled: bool,
    pub max_total_errors: u64,
    pub max_consecutive_errors: u64,
    pub max_error_rate: f64,
    pub error_window_size: usize,
    pub error_queue_size: usize,
}

impl Default for ErrorMonitorConfig {
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

/// `service.*`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// Seconds between passes of the scheduler and the executor.
    pub idling: f64,
    /// Seconds between connector check-ins.
    pub heartbeat: f64,
    pub max_errors: u32,
    /// Seconds.
    pub max_errors_span: f64,
    pub max_concurrent_content_syncs: usize,
    pub max_concurrent_access_control_syncs: usize,
    pub max_concurrent_scheduling_tasks: usize,
    /// Seconds between cleanup passes.
    pub job_cleanup_interval: f64,
    pub log_level: LogLevel,
    pub preflight_max_attempts: u32,
    /// Seconds.
    pub preflight_idle: f64,
    /// Bytes.
    pub max_file_download_size: u64,
    /// Service types whose (non-native, non-deleted) connectors this process serves.
    pub service_types: Vec<String>,
    /// Elastic's `worker_mode` (only affects start-up validation).
    pub worker_mode: bool,
    /// Elastic's `fips_mode`: accepted; this binary uses ring and is not FIPS-validated, so
    /// `true` is rejected by validation.
    pub fips_mode: bool,
    /// Ours: `text` (default) or `json` log lines.
    pub log_format: LogFormat,
    /// Ours: `host:port` of the `/metrics`, `/healthz`, `/readyz` endpoint (off when unset).
    pub metrics_address: Option<String>,
    /// Ours: threads that run syncs (the async runtime's workers). Unset: one per CPU (or
    /// `TOKIO_WORKER_THREADS`). On a machine whose cores Elasticsearch also uses, fewer leave
    /// the node its CPU and caches (see docs/operations.md).
    pub worker_threads: Option<usize>,
    /// Ours: seconds without a job heartbeat (`last_seen`) after which cleanup marks an
    /// `in_progress`/`canceling` job `error` (Elastic: fixed 300).
    pub job_stale_threshold: f64,
    /// Ours (hidden): alias of the connectors index.
    pub connectors_index: String,
    /// Ours (hidden): alias of the sync-jobs index.
    pub jobs_index: String,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            idling: 30.0,
            heartbeat: 300.0,
            max_errors: 20,
            max_errors_span: 600.0,
            max_concurrent_content_syncs: 1,
            max_concurrent_access_control_syncs: 1,
            max_concurrent_scheduling_tasks: 4,
            job_cleanup_interval: 300.0,
            log_level: LogLevel::Info,
            preflight_max_attempts: 10,
            preflight_idle: 30.0,
            max_file_download_size: 10_485_760,
            service_types: Vec::new(),
            worker_mode: false,
            fips_mode: false,
            log_format: LogFormat::Text,
            metrics_address: None,
            worker_threads: None,
            job_stale_threshold: 300.0,
            connectors_index: DEFAULT_CONNECTORS_INDEX.into(),
            jobs_index: DEFAULT_JOBS_INDEX.into(),
        }
    }
}

/// A log level, case-insensitive (`info`, `INFO`, `warning`/`warn`, `critical`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Trace,
    Debug,
    Info,
    Warning,
    Error,
    Critical,
}

impl LogLevel {
    /// The `tracing` filter directive of this level.
    pub fn as_filter(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warning => "warn",
            LogLevel::Error | LogLevel::Critical => "error",
        }
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "trace" | "notset" => LogLevel::Trace,
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "warn" | "warning" => LogLevel::Warning,
            "error" => LogLevel::Error,
            "critical" | "fatal" => LogLevel::Critical,
            other => {
                return Err(format!(
                    "unknown log level {other:?} (expected debug, info, warning, error or critical)"
                ));
            }
        })
    }
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// The most `service.worker_threads` accepted: the runtime is built with that many threads at
/// start-up (an absurd count panicked tokio's builder or ran out of memory).
pub const MAX_WORKER_THREADS: usize = 1024;

/// The most `elasticsearch.bulk.error_monitor.error_window_size` accepted: the window is
/// allocated whole when a sync starts.
pub const MAX_ERROR_WINDOW: usize = 1_000_000;

fn secs(v: f64) -> Duration {
    Duration::try_from_secs_f64(v.max(0.0)).unwrap_or(Duration::MAX)
}

impl Config {
    /// Loads `path` (must exist) over the defaults, then the environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        Self::from_yaml_with_env(&text, Some(&path.display().to_string()), std::env::vars())
    }

    /// Loads `path` when it exists, else defaults + environment only.
    pub fn load_optional(path: &Path) -> Result<Self, ConfigError> {
        if path.exists() {
            Self::load(path)
        } else {
            Self::from_yaml_with_env("", None, std::env::vars())
        }
    }

    /// Parses YAML text over the defaults, then the given environment (name, value) pairs.
    pub fn from_yaml_with_env(
        yaml: &str,
        source: Option<&str>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        // Elastic's loader accepts dotted top-level keys (`elasticsearch.host: x`); expand them.
        let doc: serde_yaml::Value = if yaml.trim().is_empty() {
            serde_yaml::Value::Mapping(Default::default())
        } else {
            serde_yaml::from_str(yaml).map_err(|e| ConfigError::Invalid {
                key: String::new(),
                reason: format!("not valid YAML: {e}"),
                origin: source.map(str::to_owned),
            })?
        };
        let doc = match doc {
            serde_yaml::Value::Null => serde_yaml::Value::Mapping(Default::default()),
            serde_yaml::Value::Mapping(m) => serde_yaml::Value::Mapping(expand_dotted(m)),
            _ => {
                return Err(ConfigError::Invalid {
                    key: String::new(),
                    reason: "the configuration must be a mapping of keys to values".into(),
                    origin: source.map(str::to_owned),
                });
            }
        };
        let expanded = serde_yaml::to_string(&doc).map_err(|e| ConfigError::Invalid {
            key: String::new(),
            reason: e.to_string(),
            origin: source.map(str::to_owned),
        })?;
        let env: Vec<(String, String)> =
            env.into_iter().filter(|(k, _)| is_config_env(k)).collect();
        let mut figment = Figment::from(Serialized::defaults(Config::default()));
        figment = figment.merge(Yaml::string(&expanded));
        // figment's Env reads the process environment; feed the filtered pairs through a
        // dictionary-shaped provider built from them instead so tests can pass their own.
        for (name, v) in env {
            let key = name[ENV_PREFIX.len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            let value: figment::value::Value = match v.parse() {
                Ok(value) => value,
                Err(never) => match never {},
            };
            figment = figment.merge(EnvVar { name, key, value });
        }
        let config: Config = figment.extract().map_err(|e| figment_error(e, source))?;
        config.validate()?;
        Ok(config)
    }

    /// Semantic checks beyond types.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let es = &self.elasticsearch;
        url::Url::parse(&es.host)
            .map_err(|e| ConfigError::invalid("elasticsearch.host", format!("not a URL: {e}")))?;
        let positive = [
            ("elasticsearch.request_timeout", es.request_timeout),
            ("service.idling", self.service.idling),
            ("service.heartbeat", self.service.heartbeat),
            (
                "service.job_cleanup_interval",
                self.service.job_cleanup_interval,
            ),
            (
                "service.job_stale_threshold",
                self.service.job_stale_threshold,
            ),
            ("service.max_errors_span", self.service.max_errors_span),
        ];
        for (key, v) in positive {
            if !(v.is_finite() && v > 0.0) {
                return Err(ConfigError::invalid(
                    key,
                    "must be a positive number of seconds",
                ));
            }
        }
        let non_negative = [
            ("elasticsearch.retry_interval", es.retry_interval),
            ("elasticsearch.max_wait_duration", es.max_wait_duration),
            (
                "elasticsearch.initial_backoff_duration",
                es.initial_backoff_duration,
            ),
            (
                "elasticsearch.bulk.max_text_document_size",
                es.bulk.max_text_document_size,
            ),
            (
                "elasticsearch.bulk.queue_max_mem_size",
                es.bulk.queue_max_mem_size,
            ),
            (
                "elasticsearch.bulk.chunk_max_mem_size",
                es.bulk.chunk_max_mem_size,
            ),
            ("elasticsearch.bulk.retry_interval", es.bulk.retry_interval),
            (
                "elasticsearch.bulk.queue_refresh_timeout",
                es.bulk.queue_refresh_timeout,
            ),
            ("service.preflight_idle", self.service.preflight_idle),
        ];
        for (key, v) in non_negative {
            if !(v.is_finite() && v >= 0.0) {
                return Err(ConfigError::invalid(key, "must not be negative"));
            }
        }
        if es.backoff_multiplier < 1.0 {
            return Err(ConfigError::invalid(
                "elasticsearch.backoff_multiplier",
                "must be at least 1",
            ));
        }
        let at_least_one = [
            ("elasticsearch.bulk.chunk_size", es.bulk.chunk_size),
            ("elasticsearch.bulk.queue_max_size", es.bulk.queue_max_size),
            (
                "elasticsearch.bulk.max_concurrency",
                es.bulk.max_concurrency,
            ),
            (
                "elasticsearch.bulk.concurrent_downloads",
                es.bulk.concurrent_downloads,
            ),
            (
                "service.max_concurrent_content_syncs",
                self.service.max_concurrent_content_syncs,
            ),
            (
                "service.max_concurrent_access_control_syncs",
                self.service.max_concurrent_access_control_syncs,
            ),
            (
                "service.max_concurrent_scheduling_tasks",
                self.service.max_concurrent_scheduling_tasks,
            ),
        ];
        for (key, v) in at_least_one {
            if v == 0 {
                return Err(ConfigError::invalid(key, "must be at least 1"));
            }
        }
        // These size a semaphore or a channel (at most `Semaphore::MAX_PERMITS`), or a window
        // allocated whole, when the service or a sync starts.
        let at_most = [
            (
                "elasticsearch.bulk.queue_max_size",
                es.bulk.queue_max_size,
                tokio::sync::Semaphore::MAX_PERMITS,
            ),
            (
                "elasticsearch.bulk.error_monitor.error_window_size",
                es.bulk.error_monitor.error_window_size,
                MAX_ERROR_WINDOW,
            ),
            (
                "service.max_concurrent_content_syncs",
                self.service.max_concurrent_content_syncs,
                tokio::sync::Semaphore::MAX_PERMITS,
            ),
            (
                "service.max_concurrent_access_control_syncs",
                self.service.max_concurrent_access_control_syncs,
                tokio::sync::Semaphore::MAX_PERMITS,
            ),
        ];
        for (key, v, max) in at_most {
            if v > max {
                return Err(ConfigError::invalid(key, format!("must be at most {max}")));
            }
        }
        if self.service.worker_threads == Some(0) {
            return Err(ConfigError::invalid(
                "service.worker_threads",
                "must be at least 1 (leave it unset for one per CPU)",
            ));
        }
        if self
            .service
            .worker_threads
            .is_some_and(|n| n > MAX_WORKER_THREADS)
        {
            return Err(ConfigError::invalid(
                "service.worker_threads",
                format!("must be at most {MAX_WORKER_THREADS} (leave it unset for one per CPU)"),
            ));
        }
        if self.service.fips_mode {
            return Err(ConfigError::invalid(
                "service.fips_mode",
                "FIPS mode is not supported by this build",
            ));
        }
        for (key, name) in [
            ("service.connectors_index", &self.service.connectors_index),
            ("service.jobs_index", &self.service.jobs_index),
        ] {
            if name.is_empty() || name.contains(['/', '*', ',', ' ', '"']) {
                return Err(ConfigError::invalid(key, "not a valid index name"));
            }
        }
        if let Some(addr) = &self.service.metrics_address
            && addr.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(ConfigError::invalid(
                "service.metrics_address",
                "expected host:port with an IP address, e.g. 0.0.0.0:9108",
            ));
        }
        for (i, entry) in self.connectors.iter().flatten().enumerate() {
            if entry.connector_id.0.trim().is_empty() {
                return Err(ConfigError::invalid(
                    &format!("connectors[{i}].connector_id"),
                    "must not be empty",
                ));
            }
            if entry.connector_id.0 == "changeme"
                || entry.service_type.as_deref() == Some("changeme")
            {
                return Err(ConfigError::invalid(
                    &format!("connectors[{i}]"),
                    "still holds the placeholder value \"changeme\"",
                ));
            }
        }
        Ok(())
    }

    /// The connector entries this process serves: `connectors`, or the deprecated
    /// `connector_id` + `service_type` when the list is empty. Duplicates: the last wins.
    pub fn connector_entries(&self) -> Vec<ConnectorEntry> {
        let mut out: Vec<ConnectorEntry> = Vec::new();
        let list = self.connectors.clone().unwrap_or_default();
        let list = if list.is_empty() {
            match &self.connector_id {
                Some(id) => vec![ConnectorEntry {
                    connector_id: id.clone(),
                    service_type: self.service_type.clone(),
                    api_key: None,
                }],
                None => Vec::new(),
            }
        } else {
            list
        };
        for entry in list {
            out.retain(|e| e.connector_id != entry.connector_id);
            out.push(entry);
        }
        out
    }

    /// Connection settings for the service's (control-plane) client.
    pub fn es_connection(&self) -> Result<EsConnection, ConfigError> {
        self.es_connection_with_key(None)
    }

    /// Connection settings, with `api_key` (a connector's own key) replacing the credentials.
    pub fn es_connection_with_key(
        &self,
        api_key: Option<&Secret>,
    ) -> Result<EsConnection, ConfigError> {
        let es = &self.elasticsearch;
        let host = url::Url::parse(&es.host)
            .map_err(|e| ConfigError::invalid("elasticsearch.host", format!("not a URL: {e}")))?;
        let mut conn = EsConnection::new(host);
        conn.auth = match (api_key, &es.api_key) {
            (Some(k), _) => EsAuth::ApiKey(k.clone()),
            (None, Some(k)) => EsAuth::ApiKey(k.clone()),
            (None, None) if es.username.is_empty() => EsAuth::None,
            (None, None) => EsAuth::Basic {
                username: es.username.clone(),
                password: es.password.clone(),
            },
        };
        if es.ssl {
            conn.verify_certs = es.verify_certs;
            conn.ca_certs = if es.verify_certs {
                es.ca_certs.as_ref().map(Into::into)
            } else {
                None
            };
        }
        conn.headers = es
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        conn.request_timeout = secs(es.request_timeout);
        conn.max_retries = es.max_retries.max(1);
        conn.retry_interval = secs(es.retry_interval);
        Ok(conn)
    }

    /// `service.idling` as a duration.
    pub fn idling(&self) -> Duration {
        secs(self.service.idling)
    }

    pub fn heartbeat(&self) -> Duration {
        secs(self.service.heartbeat)
    }

    pub fn job_cleanup_interval(&self) -> Duration {
        secs(self.service.job_cleanup_interval)
    }

    pub fn job_stale_threshold(&self) -> Duration {
        secs(self.service.job_stale_threshold)
    }

    pub fn max_errors_span(&self) -> Duration {
        secs(self.service.max_errors_span)
    }

    pub fn max_wait_duration(&self) -> Duration {
        secs(self.elasticsearch.max_wait_duration)
    }

    pub fn initial_backoff(&self) -> Duration {
        secs(self.elasticsearch.initial_backoff_duration)
    }

    pub fn preflight_idle(&self) -> Duration {
        secs(self.service.preflight_idle)
    }

    /// Warnings about accepted-but-ignored keys, for the caller to log.
    pub fn warnings(&self) -> Vec<String> {
        let mut w = Vec::new();
        if self.sources.is_some() {
            w.push("`sources` is ignored: the connectors of this binary are compiled in".into());
        }
        if self.extraction_service.is_some() {
            w.push("`extraction_service` is not supported and is ignored".into());
        }
        if self.connectors.as_ref().is_none_or(Vec::is_empty) && self.connector_id.is_some() {
            w.push(
                "top-level `connector_id`/`service_type` are deprecated; use `connectors`".into(),
            );
        }
        w
    }
}

/// Metadata name prefix of environment-variable providers.
const ENV_SOURCE: &str = "environment variable ";

/// One configuration environment variable as a figment provider (named after the variable, so
/// errors say where a bad value came from).
struct EnvVar {
    name: String,
    key: String,
    value: figment::value::Value,
}

impl figment::Provider for EnvVar {
    fn metadata(&self) -> figment::Metadata {
        figment::Metadata::named(format!("{ENV_SOURCE}{}", self.name))
    }

    fn data(
        &self,
    ) -> Result<figment::value::Map<figment::Profile, figment::value::Dict>, figment::Error> {
        let dict = figment::util::nest(&self.key, self.value.clone())
            .into_dict()
            .unwrap_or_default();
        Ok(figment::Profile::Default.collect(dict))
    }
}

/// Is this environment variable one of ours (`CONNECTORS_<SECTION>__…` or a top-level key)?
fn is_config_env(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
        return false;
    };
    let first = rest
        .split("__")
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    matches!(
        first.as_str(),
        "elasticsearch" | "service" | "connectors" | "connector_id" | "service_type"
    )
}

/// `a.b.c: v` at the top level → `a: {b: {c: v}}`, deep-merged with existing objects.
fn expand_dotted(m: serde_yaml::Mapping) -> serde_yaml::Mapping {
    let mut out = serde_yaml::Mapping::new();
    for (k, v) in m {
        let v = match v {
            serde_yaml::Value::Mapping(inner) => serde_yaml::Value::Mapping(expand_dotted(inner)),
            other => other,
        };
        match k.as_str() {
            Some(key) if key.contains('.') => {
                let mut parts: Vec<&str> = key.split('.').collect();
                let mut value = v;
                while parts.len() > 1 {
                    let last = parts.pop().unwrap_or_default();
                    let mut map = serde_yaml::Mapping::new();
                    map.insert(serde_yaml::Value::from(last), value);
                    value = serde_yaml::Value::Mapping(map);
                }
                merge_into(&mut out, serde_yaml::Value::from(parts[0]), value);
            }
            _ => merge_into(&mut out, k, v),
        }
    }
    out
}

fn merge_into(out: &mut serde_yaml::Mapping, k: serde_yaml::Value, v: serde_yaml::Value) {
    match (out.get_mut(&k), v) {
        (Some(serde_yaml::Value::Mapping(existing)), serde_yaml::Value::Mapping(new)) => {
            for (nk, nv) in new {
                merge_into(existing, nk, nv);
            }
        }
        (_, v) => {
            out.insert(k, v);
        }
    }
}

/// Turns figment's error into one naming the full key path.
fn figment_error(e: figment::Error, source: Option<&str>) -> ConfigError {
    use figment::error::Kind;
    let mut path: Vec<String> = e.path.clone();
    // figment prefixes the profile name ("default") to paths of some errors.
    if path
        .first()
        .is_some_and(|p| p == "default" || p == "global")
    {
        path.remove(0);
    }
    let origin = e
        .metadata
        .as_ref()
        .map(|m| m.name.to_string())
        .filter(|name| name.starts_with(ENV_SOURCE))
        .or_else(|| source.map(str::to_owned));
    let reason = match &e.kind {
        Kind::UnknownField(field, expected) => {
            if path.last() != Some(field) {
                path.push(field.clone());
            }
            if expected.is_empty() {
                "unknown key".to_owned()
            } else {
                format!("unknown key (expected one of: {})", expected.join(", "))
            }
        }
        Kind::MissingField(field) => {
            if path.last().map(String::as_str) != Some(field.as_ref()) {
                path.push(field.to_string());
            }
            "missing required key".to_owned()
        }
        Kind::InvalidType(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::InvalidValue(actual, expected) => format!("expected {expected}, found {actual}"),
        Kind::UnknownVariant(v, expected) => {
            format!(
                "unknown value {v:?} (expected one of: {})",
                expected.join(", ")
            )
        }
        other => other.to_string(),
    };
    ConfigError::Invalid {
        key: render_path(&path),
        reason,
        origin,
    }
}

fn render_path(path: &[String]) -> String {
    let mut out = String::new();
    for p in path {
        if p.parse::<usize>().is_ok() {
            out.push_str(&format!("[{p}]"));
        } else {
            if !out.is_empty() {
                out.push('.');
            }
            out.push_str(p);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml_with_env(yaml, Some("test.yml"), Vec::new())
    }

    #[test]
    fn defaults_match_elastic_head() {
        let c = parse("").unwrap();
        assert_eq!(c.elasticsearch.host, "http://localhost:9200");
        assert_eq!(c.elasticsearch.request_timeout, 240.0);
        assert_eq!(c.elasticsearch.max_retries, 5);
        assert_eq!(c.elasticsearch.bulk.chunk_size, 500);
        assert_eq!(c.elasticsearch.bulk.queue_refresh_timeout, 1300.0);
        assert_eq!(c.elasticsearch.bulk.error_monitor.max_error_rate, 0.15);
        assert_eq!(c.service.idling, 30.0);
        assert_eq!(c.service.max_concurrent_scheduling_tasks, 4);
        assert_eq!(c.service.max_file_download_size, 10_485_760);
        assert_eq!(c.service.connectors_index, ".elastic-connectors");
        assert_eq!(c.service.jobs_index, ".elastic-connectors-sync-jobs");
        assert!(c.connector_entries().is_empty());
    }

    #[test]
    fn unknown_key_names_the_path() {
        let e = parse("elasticsearch:\n  bulk:\n    chunk_sise: 3\n").unwrap_err();
        assert_eq!(e.key(), Some("elasticsearch.bulk.chunk_sise"), "{e}");
        assert!(e.to_string().contains("unknown key"), "{e}");
        let e = parse("servce:\n  idling: 3\n").unwrap_err();
        assert_eq!(e.key(), Some("servce"), "{e}");
    }

    #[test]
    fn wrong_type_names_the_path() {
        let e = parse("service:\n  idling: soon\n").unwrap_err();
        assert_eq!(e.key(), Some("service.idling"), "{e}");
        let e = parse("connectors:\n  - connector_id: a\n    api_key: [1]\n").unwrap_err();
        assert_eq!(e.key(), Some("connectors[0].api_key"), "{e}");
        let e = parse("service:\n  log_level: loud\n").unwrap_err();
        assert_eq!(e.key(), Some("service.log_level"), "{e}");
    }

    #[test]
    fn dotted_keys_and_connectors() {
        let c = parse(
            "elasticsearch.bulk.chunk_size: 100\nelasticsearch:\n  host: http://es:9200\n\
             connectors:\n  - connector_id: 123\n    service_type: gmail\n    api_key: secret-key\n",
        )
        .unwrap();
        assert_eq!(c.elasticsearch.bulk.chunk_size, 100);
        assert_eq!(c.elasticsearch.host, "http://es:9200");
        let entries = c.connector_entries();
        assert_eq!(entries[0].connector_id.0, "123");
        assert!(!format!("{c:?}").contains("secret-key"));
    }

    #[test]
    fn env_overrides_file() {
        let env = vec![
            (
                "CONNECTORS_ELASTICSEARCH__HOST".to_owned(),
                "http://other:9201".to_owned(),
            ),
            ("CONNECTORS_SERVICE__IDLING".to_owned(), "1.5".to_owned()),
            (
                "CONNECTORS_ELASTICSEARCH__BULK__CHUNK_SIZE".to_owned(),
                "7".to_owned(),
            ),
            ("CONNECTORS_TEST_CONNECTORS".to_owned(), "1".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let c = Config::from_yaml_with_env("elasticsearch:\n  host: http://es:9200\n", None, env)
            .unwrap();
        assert_eq!(c.elasticsearch.host, "http://other:9201");
        assert_eq!(c.service.idling, 1.5);
        assert_eq!(c.elasticsearch.bulk.chunk_size, 7);
    }

    #[test]
    fn env_unknown_and_wrong_type() {
        let env = vec![("CONNECTORS_SERVICE__IDLNG".to_owned(), "1".to_owned())];
        let e = Config::from_yaml_with_env("", None, env).unwrap_err();
        assert_eq!(e.key(), Some("service.idlng"), "{e}");
        let env = vec![(
            "CONNECTORS_SERVICE__MAX_ERRORS".to_owned(),
            "many".to_owned(),
        )];
        let e = Config::from_yaml_with_env("", None, env).unwrap_err();
        assert_eq!(e.key(), Some("service.max_errors"), "{e}");
    }

    #[test]
    fn semantic_validation() {
        assert_eq!(
            parse("service:\n  idling: 0\n").unwrap_err().key(),
            Some("service.idling")
        );
        assert_eq!(
            parse("elasticsearch:\n  host: 'not a url'\n")
                .unwrap_err()
                .key(),
            Some("elasticsearch.host")
        );
        assert_eq!(
            parse("connectors:\n  - connector_id: changeme\n")
                .unwrap_err()
                .key(),
            Some("connectors[0]")
        );
        assert_eq!(
            parse("service:\n  worker_threads: 0\n").unwrap_err().key(),
            Some("service.worker_threads")
        );
        assert_eq!(
            parse("service:\n  worker_threads: 1\n")
                .unwrap()
                .service
                .worker_threads,
            Some(1)
        );
        assert_eq!(parse("").unwrap().service.worker_threads, None);
        // More threads than a runtime can be built with: tokio's builder overflowed (or ran
        // out of memory) and the binary panicked before it could report anything.
        for n in ["18446744073709551615", "1000000000000", "1025"] {
            let yaml = format!("service:\n  worker_threads: {n}\n");
            assert_eq!(
                parse(&yaml).unwrap_err().key(),
                Some("service.worker_threads"),
                "{n}"
            );
        }
        assert_eq!(
            parse("service:\n  worker_threads: 1024\n")
                .unwrap()
                .service
                .worker_threads,
            Some(1024)
        );
    }

    /// Bulk durations from `config.yml` that `Duration::from_secs_f64` cannot take (infinite,
    /// or beyond `u64` seconds) panicked when the sink's options were built at start-up.
    #[test]
    fn bulk_durations_out_of_range_are_refused_or_saturate() {
        // Options built without validation (a caller that does it itself): no panic.
        let bulk = BulkConfig {
            retry_interval: f64::INFINITY,
            queue_refresh_timeout: f64::NAN,
            ..BulkConfig::default()
        };
        let opts = bulk.to_options();
        assert_eq!(opts.retry_interval, Duration::MAX);
        assert_eq!(opts.queue_refresh_timeout, Duration::ZERO);
        for key in ["retry_interval", "queue_refresh_timeout"] {
            // Finite but longer than a Duration: accepted, as long as possible.
            let yaml = format!("elasticsearch:\n  bulk:\n    {key}: 1e20\n");
            let opts = parse(&yaml).unwrap().elasticsearch.bulk.to_options();
            let got = match key {
                "retry_interval" => opts.retry_interval,
                _ => opts.queue_refresh_timeout,
            };
            assert_eq!(got, Duration::MAX, "{key}");
            for bad in [".inf", "-1", ".nan"] {
                let yaml = format!("elasticsearch:\n  bulk:\n    {key}: {bad}\n");
                let e = parse(&yaml).unwrap_err();
                assert_eq!(
                    e.key(),
                    Some(format!("elasticsearch.bulk.{key}").as_str()),
                    "{bad}: {e}"
                );
            }
        }
    }

    /// Counts that size a semaphore, a channel or a preallocated window: a huge value passed
    /// validation and panicked when the service or a sync started ("a semaphore may not have
    /// more than MAX_PERMITS permits", "capacity overflow").
    #[tokio::test]
    async fn huge_counts_are_refused_and_the_largest_accepted_do_not_panic() {
        let max = usize::MAX.to_string();
        for (section, key) in [
            (
                "elasticsearch:\n  bulk:\n    ",
                "elasticsearch.bulk.queue_max_size",
            ),
            (
                "elasticsearch:\n  bulk:\n    error_monitor:\n      ",
                "elasticsearch.bulk.error_monitor.error_window_size",
            ),
            ("service:\n  ", "service.max_concurrent_content_syncs"),
            (
                "service:\n  ",
                "service.max_concurrent_access_control_syncs",
            ),
        ] {
            let leaf = key.rsplit('.').next().unwrap_or(key);
            let e = parse(&format!("{section}{leaf}: {max}\n")).unwrap_err();
            assert_eq!(e.key(), Some(key), "{e}");
        }
        // The largest accepted values start a sink (and its error monitor) without a panic.
        let yaml = format!(
            "elasticsearch:\n  bulk:\n    queue_max_size: {}\n    error_monitor:\n      \
             error_window_size: {MAX_ERROR_WINDOW}\n",
            tokio::sync::Semaphore::MAX_PERMITS
        );
        let config = parse(&yaml).unwrap();
        let es = crate::EsClient::new(&config.es_connection().unwrap()).unwrap();
        let sink = crate::sink::Sink::start(
            es,
            "idx",
            None,
            config.elasticsearch.bulk.to_options(),
            None,
        );
        drop(sink);
        let _ = tokio::sync::Semaphore::new(tokio::sync::Semaphore::MAX_PERMITS);
    }

    #[test]
    fn connection_from_config() {
        let c = parse(
            "elasticsearch:\n  host: https://es:9200\n  api_key: abc\n  verify_certs: false\n  \
             request_timeout: 5\n  headers:\n    x-a: b\n",
        )
        .unwrap();
        let conn = c.es_connection().unwrap();
        assert!(matches!(conn.auth, EsAuth::ApiKey(_)));
        assert!(!conn.verify_certs);
        assert_eq!(conn.request_timeout, Duration::from_secs(5));
        assert_eq!(conn.headers, vec![("x-a".to_owned(), "b".to_owned())]);
        let basic = parse("").unwrap().es_connection().unwrap();
        assert!(matches!(basic.auth, EsAuth::Basic { .. }));
    }

    #[test]
    fn example_file_parses() {
        let text = include_str!("../../../config/config.yml.example");
        let c = parse(text).unwrap();
        // The example documents every key with its default (service ids aside).
        let d = Config::default();
        assert_eq!(c.elasticsearch.bulk, d.elasticsearch.bulk);
        assert_eq!(c.service.idling, d.service.idling);
    }
}
