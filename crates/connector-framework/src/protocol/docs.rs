//! Connector and sync-job documents: the raw JSON as stored (so fields this version does not
//! know survive every read-modify-write) plus typed views over it (spec §4.2, §4.4).

use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Map, Value, json};

use crate::{
    job::JobCounters,
    model::{
        ConnectorStatus, DEFAULT_DOMAIN, Features, FilteringRules, JobStatus, JobType, Pipeline,
        TriggerMethod, acl_index_name, now_timestamp,
    },
};

use super::StoreError;

/// Parses a stored timestamp; naive timestamps are UTC.
pub fn parse_timestamp(s: &str) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M:%S",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(t) = NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    None
}

/// A set of changes to a document: dotted paths (`metadata.checkpoint`) to new values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Patch(pub Vec<(String, Value)>);

impl Patch {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn set(mut self, path: impl Into<String>, value: impl Into<Value>) -> Self {
        self.0.push((path.into(), value.into()));
        self
    }

    pub fn push(&mut self, path: impl Into<String>, value: impl Into<Value>) {
        self.0.push((path.into(), value.into()));
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn touches(&self, top_level: &str) -> bool {
        self.0
            .iter()
            .any(|(p, _)| p.split('.').next() == Some(top_level))
    }

    /// Applies the changes to a raw document (replacing values, creating objects on the way).
    pub fn apply(&self, raw: &mut Map<String, Value>) {
        'paths: for (path, value) in &self.0 {
            let mut parts: Vec<&str> = path.split('.').collect();
            let last = parts.pop().unwrap_or_default();
            let mut cur = &mut *raw;
            for p in parts {
                let entry = cur.entry(p.to_owned()).or_insert_with(|| json!({}));
                if !entry.is_object() {
                    *entry = json!({});
                }
                let Value::Object(m) = entry else {
                    continue 'paths;
                };
                cur = m;
            }
            cur.insert(last.to_owned(), value.clone());
        }
    }
}

/// A document read with its optimistic-concurrency coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned {
    pub id: String,
    pub seq_no: i64,
    pub primary_term: i64,
    pub raw: Map<String, Value>,
}

fn str_at<'a>(raw: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    raw.get(key).and_then(Value::as_str)
}

/// A connector document (`.elastic-connectors`).
#[derive(Debug, Clone, PartialEq)]
pub struct ConnectorDoc(pub Versioned);

impl ConnectorDoc {
    pub fn id(&self) -> &str {
        &self.0.id
    }

    pub fn raw(&self) -> &Map<String, Value> {
        &self.0.raw
    }

    /// The stored status; `None` when absent or not one of the known values.
    pub fn status(&self) -> Option<ConnectorStatus> {
        self.0
            .raw
            .get("status")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    pub fn status_str(&self) -> Option<&str> {
        str_at(&self.0.raw, "status")
    }

    pub fn service_type(&self) -> Option<&str> {
        str_at(&self.0.raw, "service_type").filter(|s| !s.is_empty())
    }

    pub fn index_name(&self) -> Option<&str> {
        str_at(&self.0.raw, "index_name").filter(|s| !s.is_empty())
    }

    pub fn name(&self) -> Option<&str> {
        str_at(&self.0.raw, "name")
    }

    pub fn language(&self) -> Option<&str> {
        str_at(&self.0.raw, "language")
    }

    pub fn error(&self) -> Option<&str> {
        str_at(&self.0.raw, "error")
    }

    pub fn is_native(&self) -> bool {
        self.0.raw.get("is_native").and_then(Value::as_bool) == Some(true)
    }

    /// Soft-deleted (`deleted: true`).
    pub fn is_deleted(&self) -> bool {
        self.0.raw.get("deleted").and_then(Value::as_bool) == Some(true)
    }

    pub fn configuration(&self) -> Map<String, Value> {
        self.0
            .raw
            .get("configuration")
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    /// Features; a malformed object reads as the defaults.
    pub fn features(&self) -> Features {
        self.0
            .raw
            .get("features")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    pub fn pipeline(&self) -> Pipeline {
        self.0
            .raw
            .get("pipeline")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    pub fn sync_cursor(&self) -> Option<Value> {
        self.0
            .raw
            .get("sync_cursor")
            .filter(|v| !v.is_null())
            .cloned()
    }

    /// The raw `filtering` array.
    pub fn filtering(&self) -> Vec<Value> {
        self.0
            .raw
            .get("filtering")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    }

    /// Index of the `DEFAULT` domain entry in `filtering`.
    pub fn default_filtering_index(&self) -> Option<usize> {
        self.filtering()
            .iter()
            .position(|e| e.get("domain").and_then(Value::as_str) == Some(DEFAULT_DOMAIN))
    }

    /// The active rules of the `DEFAULT` domain (the job snapshot), `None` when absent.
    pub fn active_filtering(&self) -> Option<Value> {
        let i = self.default_filtering_index()?;
        self.filtering().get(i)?.get("active").cloned()
    }

    /// `scheduling.<type>`: `(enabled, interval)`.
    pub fn schedule(&self, job_type: JobType) -> (bool, Option<String>) {
        let s = &self
            .0
            .raw
            .get("scheduling")
            .and_then(|s| s.get(job_type.as_str()));
        let enabled = s
            .and_then(|s| s.get("enabled"))
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let interval = s
            .and_then(|s| s.get("interval"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        (enabled, interval)
    }

    /// The field recording the last scheduled occurrence of a job type.
    pub fn scheduled_at_field(job_type: JobType) -> &'static str {
        match job_type {
            JobType::Full => "last_sync_scheduled_at",
            JobType::Incremental => "last_incremental_sync_scheduled_at",
            JobType::AccessControl => "last_access_control_sync_scheduled_at",
        }
    }

    pub fn last_scheduled_at(&self, job_type: JobType) -> Option<DateTime<Utc>> {
        str_at(&self.0.raw, Self::scheduled_at_field(job_type)).and_then(parse_timestamp)
    }

    pub fn last_seen(&self) -> Option<DateTime<Utc>> {
        str_at(&self.0.raw, "last_seen").and_then(parse_timestamp)
    }

    /// `(status field, error field)` of the connector-side bookkeeping of a job type (§6.4).
    pub fn sync_status_fields(job_type: JobType) -> (&'static str, &'static str) {
        if job_type.is_content() {
            ("last_sync_status", "last_sync_error")
        } else {
            (
                "last_access_control_sync_status",
                "last_access_control_sync_error",
            )
        }
    }

    pub fn last_sync_status(&self, job_type: JobType) -> Option<JobStatus> {
        let (field, _) = Self::sync_status_fields(job_type);
        self.0
            .raw
            .get(field)
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }
}

/// A new connector document in Elastic's shape (as the CLI / `_connector` API write it).
pub fn new_connector_document(
    index_name: &str,
    service_type: &str,
    name: &str,
    configuration: Map<String, Value>,
    features: &Features,
    status: ConnectorStatus,
) -> Map<String, Value> {
    let now = now_timestamp();
    let default_rule = json!({
        "id": "DEFAULT", "order": 0, "policy": "include", "field": "_", "rule": "regex",
        "value": ".*", "created_at": now, "updated_at": now
    });
    let rules = json!({
        "rules": [default_rule],
        "advanced_snippet": {"value": {}, "created_at": now, "updated_at": now},
        "validation": {"state": "valid", "errors": []}
    });
    let schedule = json!({"enabled": false, "interval": "0 0 0 * * ?"});
    let doc = json!({
        "api_key_id": null,
        "api_key_secret_id": null,
        "configuration": configuration,
        "custom_scheduling": {},
        "description": null,
        "error": null,
        "features": features,
        "filtering": [{"domain": DEFAULT_DOMAIN, "active": rules, "draft": rules}],
        "index_name": index_name,
        "is_native": false,
        "language": null,
        "last_access_control_sync_error": null,
        "last_access_control_sync_scheduled_at": null,
        "last_access_control_sync_status": null,
        "last_deleted_document_count": 0,
        "last_incremental_sync_scheduled_at": null,
        "last_indexed_document_count": 0,
        "last_seen": null,
        "last_sync_error": null,
        "last_sync_scheduled_at": null,
        "last_sync_status": null,
        "last_synced": null,
        "name": name,
        "pipeline": Pipeline::default(),
        "scheduling": {"full": schedule, "incremental": schedule, "access_control": schedule},
        "service_type": service_type,
        "status": status,
        "sync_cursor": null,
        "sync_now": false,
        "deleted": false,
        "created_at": now,
        "updated_at": now,
    });
    match doc {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// A sync-job document (`.elastic-connectors-sync-jobs`).
#[derive(Debug, Clone, PartialEq)]
pub struct JobDoc(pub Versioned);

impl JobDoc {
    pub fn id(&self) -> &str {
        &self.0.id
    }

    pub fn raw(&self) -> &Map<String, Value> {
        &self.0.raw
    }

    /// The status; an unknown value is an error (a job we cannot reason about).
    pub fn status(&self) -> Result<JobStatus, StoreError> {
        let v = self.0.raw.get("status").cloned().unwrap_or(Value::Null);
        serde_json::from_value(v.clone()).map_err(|_| StoreError::Malformed {
            id: self.0.id.clone(),
            message: format!("unknown job status {v}"),
        })
    }

    pub fn job_type(&self) -> Option<JobType> {
        str_at(&self.0.raw, "job_type").and_then(|s| s.parse().ok())
    }

    pub fn trigger_method(&self) -> Option<TriggerMethod> {
        self.0
            .raw
            .get("trigger_method")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
    }

    fn connector(&self) -> Option<&Map<String, Value>> {
        self.0.raw.get("connector").and_then(Value::as_object)
    }

    pub fn connector_id(&self) -> Option<&str> {
        self.connector()?.get("id")?.as_str()
    }

    pub fn service_type(&self) -> Option<&str> {
        self.connector()?.get("service_type")?.as_str()
    }

    pub fn index_name(&self) -> Option<&str> {
        self.connector()?.get("index_name")?.as_str()
    }

    pub fn language(&self) -> Option<&str> {
        self.connector()?.get("language")?.as_str()
    }

    pub fn pipeline(&self) -> Pipeline {
        self.connector()
            .and_then(|c| c.get("pipeline"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default()
    }

    pub fn configuration(&self) -> Map<String, Value> {
        self.connector()
            .and_then(|c| c.get("configuration"))
            .and_then(Value::as_object)
            .cloned()
            .unwrap_or_default()
    }

    /// The rules snapshot; a malformed one is an error (the job cannot run with it).
    pub fn filtering(&self) -> Result<FilteringRules, StoreError> {
        match self.connector().and_then(|c| c.get("filtering")) {
            None | Some(Value::Null) => Ok(FilteringRules::default()),
            // Some writers store the whole `filtering` array; take the DEFAULT entry's active.
            Some(Value::Array(entries)) => {
                let active = entries
                    .iter()
                    .find(|e| e.get("domain").and_then(Value::as_str) == Some(DEFAULT_DOMAIN))
                    .or_else(|| entries.first())
                    .and_then(|e| e.get("active"))
                    .cloned()
                    .unwrap_or(Value::Null);
                if active.is_null() {
                    return Ok(FilteringRules::default());
                }
                serde_json::from_value(active).map_err(|e| self.malformed(e))
            }
            Some(v) => serde_json::from_value(v.clone()).map_err(|e| self.malformed(e)),
        }
    }

    fn malformed(&self, e: serde_json::Error) -> StoreError {
        StoreError::Malformed {
            id: self.0.id.clone(),
            message: format!("connector.filtering: {e}"),
        }
    }

    pub fn sync_cursor(&self) -> Option<Value> {
        self.connector()?
            .get("sync_cursor")
            .filter(|v| !v.is_null())
            .cloned()
    }

    /// The in-run checkpoint (`metadata.checkpoint`).
    pub fn checkpoint(&self) -> Option<Value> {
        self.0
            .raw
            .get("metadata")?
            .get("checkpoint")
            .filter(|v| !v.is_null())
            .cloned()
    }

    pub fn error(&self) -> Option<&str> {
        str_at(&self.0.raw, "error")
    }

    pub fn worker_hostname(&self) -> Option<&str> {
        str_at(&self.0.raw, "worker_hostname")
    }

    pub fn last_seen(&self) -> Option<DateTime<Utc>> {
        str_at(&self.0.raw, "last_seen").and_then(parse_timestamp)
    }

    pub fn created_at(&self) -> Option<DateTime<Utc>> {
        str_at(&self.0.raw, "created_at").and_then(parse_timestamp)
    }

    fn count(&self, key: &str) -> u64 {
        self.0.raw.get(key).and_then(Value::as_u64).unwrap_or(0)
    }

    pub fn indexed_document_count(&self) -> u64 {
        self.count("indexed_document_count")
    }

    pub fn deleted_document_count(&self) -> u64 {
        self.count("deleted_document_count")
    }

    pub fn indexed_document_volume(&self) -> u64 {
        self.count("indexed_document_volume")
    }
}

/// The job document Elastic's legacy path writes at creation (§4.4, §5.1), from the connector.
pub fn new_job_document(
    connector: &ConnectorDoc,
    job_type: JobType,
    trigger: TriggerMethod,
) -> Result<Map<String, Value>, StoreError> {
    let index = connector.index_name().ok_or_else(|| {
        StoreError::Invalid(format!("connector {} has no index_name", connector.id()))
    })?;
    let service_type = connector.service_type().ok_or_else(|| {
        StoreError::Invalid(format!("connector {} has no service_type", connector.id()))
    })?;
    let index_name = if job_type.is_content() {
        index.to_owned()
    } else {
        acl_index_name(index)
    };
    let filtering = connector
        .active_filtering()
        .unwrap_or_else(|| json!({"advanced_snippet": {}, "rules": []}));
    let now = now_timestamp();
    let doc = json!({
        "job_type": job_type,
        "trigger_method": trigger,
        "status": JobStatus::Pending,
        "error": null,
        "connector": {
            "id": connector.id(),
            "index_name": index_name,
            "language": connector.language(),
            "pipeline": connector.pipeline(),
            "service_type": service_type,
            "configuration": connector.configuration(),
            "filtering": filtering,
            "sync_cursor": null,
        },
        "created_at": now,
        "last_seen": now,
        "started_at": null,
        "completed_at": null,
        "canceled_at": null,
        "cancelation_requested_at": null,
        "worker_hostname": null,
        "indexed_document_count": 0,
        "indexed_document_volume": 0,
        "deleted_document_count": 0,
        "total_document_count": null,
        "metadata": {},
    });
    Ok(match doc {
        Value::Object(m) => m,
        _ => Map::new(),
    })
}

/// `indexed_document_volume` is stored in MiB, rounded.
pub fn volume_mib(bytes: u64) -> u64 {
    ((bytes as f64) / (1024.0 * 1024.0)).round() as u64
}

/// The counter fields of a job document.
pub fn counters_patch(patch: &mut Patch, counters: &JobCounters) {
    patch.push("indexed_document_count", counters.indexed_document_count);
    patch.push(
        "indexed_document_volume",
        volume_mib(counters.indexed_document_volume_bytes),
    );
    patch.push("deleted_document_count", counters.deleted_document_count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_sets_nested_paths_and_keeps_the_rest() {
        let mut raw =
            json!({"a": 1, "metadata": {"x": 2, "checkpoint": {"old": 1}}, "unknown": [1]})
                .as_object()
                .cloned()
                .unwrap();
        Patch::new()
            .set("metadata.checkpoint", json!({"new": 2}))
            .set("b.c", 3)
            .apply(&mut raw);
        assert_eq!(
            Value::Object(raw),
            json!({"a": 1, "metadata": {"x": 2, "checkpoint": {"new": 2}}, "unknown": [1], "b": {"c": 3}})
        );
    }

    #[test]
    fn timestamps() {
        let t = parse_timestamp("2024-05-01T10:00:00.123456+00:00").unwrap();
        assert_eq!(t.timestamp(), 1714557600);
        assert!(parse_timestamp("2024-05-01T10:00:00").is_some());
        assert!(parse_timestamp("2024-05-01T10:00:00.5Z").is_some());
        assert!(parse_timestamp("yesterday").is_none());
    }

    #[test]
    fn job_snapshot_from_connector() {
        let raw = new_connector_document(
            "search-x",
            "gmail",
            "x",
            Map::new(),
            &Features::default(),
            ConnectorStatus::Configured,
        );
        let c = ConnectorDoc(Versioned {
            id: "c1".into(),
            seq_no: 0,
            primary_term: 1,
            raw,
        });
        let job = new_job_document(&c, JobType::AccessControl, TriggerMethod::OnDemand).unwrap();
        assert_eq!(
            job["connector"]["index_name"],
            ".search-acl-filter-search-x"
        );
        assert_eq!(job["status"], "pending");
        assert_eq!(job["connector"]["filtering"]["rules"][0]["id"], "DEFAULT");
        let j = JobDoc(Versioned {
            id: "j".into(),
            seq_no: 0,
            primary_term: 1,
            raw: job,
        });
        assert_eq!(j.job_type(), Some(JobType::AccessControl));
        assert_eq!(j.filtering().unwrap().rules.len(), 1);
        assert_eq!(volume_mib(3 * 1024 * 1024 + 10), 3);
    }
}
