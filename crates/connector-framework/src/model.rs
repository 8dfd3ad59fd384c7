//! The vocabulary shared by every part of the framework: job types and statuses, connector
//! statuses, pipeline and feature objects, and the stored shape of sync rules. Field names and
//! values are those of Elastic's connector and sync-job documents (framework-spec §4, §6, §10).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `job_type` of a sync job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobType {
    Full,
    Incremental,
    AccessControl,
}

impl JobType {
    pub const ALL: [JobType; 3] = [JobType::Full, JobType::Incremental, JobType::AccessControl];

    pub fn as_str(self) -> &'static str {
        match self {
            JobType::Full => "full",
            JobType::Incremental => "incremental",
            JobType::AccessControl => "access_control",
        }
    }

    /// Content jobs (full, incremental) write the content index; access-control jobs the ACL index.
    pub fn is_content(self) -> bool {
        !matches!(self, JobType::AccessControl)
    }
}

impl std::fmt::Display for JobType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for JobType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "full" => Ok(JobType::Full),
            "incremental" => Ok(JobType::Incremental),
            "access_control" => Ok(JobType::AccessControl),
            other => Err(format!(
                "unknown job type {other:?} (expected full, incremental or access_control)"
            )),
        }
    }
}

/// `trigger_method` of a sync job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TriggerMethod {
    OnDemand,
    Scheduled,
}

/// `status` of a sync job (spec §6.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    InProgress,
    Canceling,
    Canceled,
    Suspended,
    Completed,
    Error,
}

impl JobStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            JobStatus::Pending => "pending",
            JobStatus::InProgress => "in_progress",
            JobStatus::Canceling => "canceling",
            JobStatus::Canceled => "canceled",
            JobStatus::Suspended => "suspended",
            JobStatus::Completed => "completed",
            JobStatus::Error => "error",
        }
    }

    /// `completed`, `error` and `canceled` are final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobStatus::Completed | JobStatus::Error | JobStatus::Canceled
        )
    }
}

impl std::fmt::Display for JobStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `status` of a connector (spec §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectorStatus {
    Created,
    NeedsConfiguration,
    Configured,
    Connected,
    Error,
}

impl ConnectorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectorStatus::Created => "created",
            ConnectorStatus::NeedsConfiguration => "needs_configuration",
            ConnectorStatus::Configured => "configured",
            ConnectorStatus::Connected => "connected",
            ConnectorStatus::Error => "error",
        }
    }
}

impl std::fmt::Display for ConnectorStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Name of the ingest pipeline Elastic uses by default (HEAD; 8.16 used
/// `ent-search-generic-ingestion`).
pub const DEFAULT_PIPELINE: &str = "search-default-ingestion";

/// The connector's `pipeline` object (spec §4.5). Missing keys take their defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Pipeline {
    pub name: String,
    pub extract_binary_content: bool,
    pub reduce_whitespace: bool,
    pub run_ml_inference: bool,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self {
            name: DEFAULT_PIPELINE.to_owned(),
            extract_binary_content: true,
            reduce_whitespace: true,
            run_ml_inference: true,
        }
    }
}

/// `{"enabled": bool}` as stored in the features object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Enabled {
    #[serde(default)]
    pub enabled: bool,
}

impl Enabled {
    pub const ON: Enabled = Enabled { enabled: true };
    pub const OFF: Enabled = Enabled { enabled: false };
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct SyncRulesFeatures {
    #[serde(default)]
    pub basic: Enabled,
    #[serde(default)]
    pub advanced: Enabled,
}

/// The connector's `features` object (spec §4.6).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    #[serde(default)]
    pub sync_rules: SyncRulesFeatures,
    #[serde(default)]
    pub document_level_security: Enabled,
    #[serde(default)]
    pub incremental_sync: Enabled,
    #[serde(default = "native_keys_default")]
    pub native_connector_api_keys: Enabled,
    /// Keys this version does not know, kept so a write-back loses nothing.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

fn native_keys_default() -> Enabled {
    Enabled::OFF
}

impl Default for Features {
    fn default() -> Self {
        Self {
            sync_rules: SyncRulesFeatures::default(),
            document_level_security: Enabled::OFF,
            incremental_sync: Enabled::OFF,
            native_connector_api_keys: Enabled::OFF,
            other: Map::new(),
        }
    }
}

impl Features {
    /// "Sync rules enabled" = basic or advanced rules on (legacy flags included).
    pub fn sync_rules_enabled(&self) -> bool {
        self.sync_rules.basic.enabled
            || self.sync_rules.advanced.enabled
            || self.other.get("filtering_rules").and_then(Value::as_bool) == Some(true)
            || self
                .other
                .get("filtering_advanced_config")
                .and_then(Value::as_bool)
                == Some(true)
    }
}

/// `validation.state` of a filtering draft or active set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ValidationState {
    Edited,
    #[default]
    Valid,
    Invalid,
}

/// One `{ids, messages}` entry of a validation result.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ValidationError {
    pub ids: Vec<String>,
    pub messages: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct FilteringValidation {
    #[serde(default)]
    pub state: ValidationState,
    #[serde(default)]
    pub errors: Vec<ValidationError>,
}

/// `advanced_snippet` of a rule set.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AdvancedSnippet {
    #[serde(default)]
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub updated_at: Option<String>,
}

/// A rule set (`active` or `draft`, and the job's `connector.filtering` snapshot).
///
/// Rules stay raw JSON here: a malformed rule must survive a read-modify-write and be reported by
/// validation, never crash the reader (W10).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FilteringRules {
    #[serde(default)]
    pub rules: Vec<Value>,
    #[serde(default)]
    pub advanced_snippet: AdvancedSnippet,
    #[serde(default)]
    pub validation: FilteringValidation,
}

impl FilteringRules {
    /// The advanced rules object, `{}` when absent.
    pub fn advanced_rules(&self) -> Value {
        match &self.advanced_snippet.value {
            Value::Null => Value::Object(Map::new()),
            v => v.clone(),
        }
    }

    pub fn has_advanced_rules(&self) -> bool {
        match &self.advanced_snippet.value {
            Value::Null => false,
            Value::Object(m) => !m.is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        }
    }
}

/// One entry of the connector's `filtering` array.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct FilteringEntry {
    pub domain: String,
    #[serde(default)]
    pub active: FilteringRules,
    #[serde(default)]
    pub draft: FilteringRules,
}

/// The `DEFAULT` domain name.
pub const DEFAULT_DOMAIN: &str = "DEFAULT";

/// Prefix of the access-control index of a content index.
pub const ACL_INDEX_PREFIX: &str = ".search-acl-filter-";

/// Access-control index name for a content index.
pub fn acl_index_name(content_index: &str) -> String {
    format!("{ACL_INDEX_PREFIX}{content_index}")
}

/// Timestamp format of the Python service: ISO-8601, microseconds, `+00:00` offset.
pub fn timestamp(t: chrono::DateTime<chrono::Utc>) -> String {
    use chrono::{Datelike as _, Timelike as _};
    // Written digit by digit into a fixed buffer: `format` parses its pattern on every call,
    // and even `format!` costs a formatter per field, several times per document.
    // A leap second (nanoseconds ≥ 10^9) shows as second 60, as with `%S`.
    let leap = u32::from(t.nanosecond() >= 1_000_000_000);
    let year = t.year();
    let micros = (t.nanosecond() % 1_000_000_000) / 1_000;
    if !(0..=9999).contains(&year) {
        // Outside four digits (never a mail date): the general path, same shape as `%Y`.
        return format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:06}+00:00",
            year,
            t.month(),
            t.day(),
            t.hour(),
            t.minute(),
            t.second() + leap,
            micros
        );
    }
    /// `value` in `N` decimal digits, zero-padded (constant divisors: no division instruction).
    fn digits<const N: usize>(out: &mut [u8], mut value: u32) {
        for slot in out[..N].iter_mut().rev() {
            *slot = b'0' + (value % 10) as u8;
            value /= 10;
        }
    }
    let mut buf = *b"0000-00-00T00:00:00.000000+00:00";
    digits::<4>(&mut buf[0..], year as u32);
    digits::<2>(&mut buf[5..], t.month());
    digits::<2>(&mut buf[8..], t.day());
    digits::<2>(&mut buf[11..], t.hour());
    digits::<2>(&mut buf[14..], t.minute());
    digits::<2>(&mut buf[17..], t.second() + leap);
    digits::<6>(&mut buf[20..], micros);
    // Only ASCII digits and separators were written.
    String::from_utf8_lossy(&buf).into_owned()
}

/// [`timestamp`] of now.
pub fn now_timestamp() -> String {
    timestamp(chrono::Utc::now())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_type_round_trip() {
        for t in JobType::ALL {
            assert_eq!(t.as_str().parse::<JobType>().unwrap(), t);
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
        assert!("weekly".parse::<JobType>().is_err());
    }

    #[test]
    fn features_keep_unknown_keys() {
        let raw = serde_json::json!({
            "sync_rules": {"basic": {"enabled": true}, "advanced": {"enabled": false}},
            "document_level_security": {"enabled": true},
            "incremental_sync": {"enabled": false},
            "native_connector_api_keys": {"enabled": false},
            "future_flag": {"enabled": true}
        });
        let f: Features = serde_json::from_value(raw.clone()).unwrap();
        assert!(f.sync_rules_enabled());
        assert_eq!(serde_json::to_value(&f).unwrap(), raw);
    }

    #[test]
    fn pipeline_defaults_fill_missing_keys() {
        let p: Pipeline = serde_json::from_value(serde_json::json!({"name": "custom"})).unwrap();
        assert_eq!(p.name, "custom");
        assert!(p.extract_binary_content && p.reduce_whitespace && p.run_ml_inference);
    }

    #[test]
    fn timestamp_format() {
        let t = chrono::DateTime::parse_from_rfc3339("2024-05-01T10:00:00.123456Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        assert_eq!(timestamp(t), "2024-05-01T10:00:00.123456+00:00");
        // The same text as chrono's formatter, from year 6 to 9987 in uneven steps.
        let mut ms: i64 = -62_000_000_000_000;
        while ms < 253_000_000_000_000 {
            let t = chrono::DateTime::from_timestamp_millis(ms).expect("in range");
            assert_eq!(
                timestamp(t),
                t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
            );
            ms += 7_777_777_777_777 / 13;
        }
    }
}
