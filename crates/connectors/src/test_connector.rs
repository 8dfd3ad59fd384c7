//! `test-sleeper`: a connector **for tests only**, registered when the environment variable
//! `CONNECTORS_TEST_CONNECTORS=1` is set. It indexes nothing into a content index; a job sleeps
//! `sleep_ms` in steps of `step_ms`, counts one "document" per step, saves a checkpoint
//! (`{"step": n}`) every `checkpoint_every` steps, resumes from a stored checkpoint, honours
//! the cancel token, and fails on demand (`fail: true`).
//!
//! When `record_index` is set, every run leaves evidence there: a `start` document per run
//! (auto id, with the checkpoint it started from) and one `done` document per completed job,
//! created with `op_type=create` under the job id, so a job that completes twice fails loudly.

use std::time::Duration;

use connector_framework::{
    es::{HttpMethod, encode_segment},
    job::{JobContext, JobCounters, JobOutcome, JobSpec},
    model::{Enabled, Features, FilteringRules, FilteringValidation, now_timestamp},
    source::{ConfigurationError, DynConnector, FieldError, SourceError},
};
use serde_json::{Map, Value, json};

pub const SERVICE_TYPE: &str = "test-sleeper";

pub struct TestSleeper;

fn field(label: &str, order: u32, kind: &str, display: &str, value: Value) -> Value {
    json!({
        "label": label, "order": order, "type": kind, "display": display, "required": false,
        "sensitive": false, "value": value, "default_value": value, "depends_on": [],
        "tooltip": null, "ui_restrictions": [], "validations": [], "options": []
    })
}

fn value<'a>(c: &'a Map<String, Value>, k: &str) -> &'a Value {
    c.get(k).map(|f| &f["value"]).unwrap_or(&Value::Null)
}

/// Integer field values may be stored as numbers or numeric strings.
fn int(c: &Map<String, Value>, k: &str, default: u64) -> Result<u64, String> {
    match value(c, k) {
        Value::Null => Ok(default),
        Value::Number(n) => n
            .as_u64()
            .ok_or_else(|| format!("{k} must be a non-negative integer")),
        Value::String(s) if s.is_empty() => Ok(default),
        Value::String(s) => s
            .parse()
            .map_err(|_| format!("{k} must be a non-negative integer")),
        _ => Err(format!("{k} must be a non-negative integer")),
    }
}

fn truthy(c: &Map<String, Value>, k: &str) -> bool {
    match value(c, k) {
        Value::Bool(b) => *b,
        Value::String(s) => matches!(s.as_str(), "true" | "1" | "yes"),
        _ => false,
    }
}

struct Settings {
    sleep_ms: u64,
    step_ms: u64,
    checkpoint_every: u64,
    fail: bool,
    record_index: String,
}

fn settings(c: &Map<String, Value>) -> Result<Settings, ConfigurationError> {
    let mut errors = Vec::new();
    let mut get = |k: &str, d: u64| {
        int(c, k, d).unwrap_or_else(|message| {
            errors.push(FieldError {
                field: k.to_owned(),
                message,
            });
            d
        })
    };
    let s = Settings {
        sleep_ms: get("sleep_ms", 1000),
        step_ms: get("step_ms", 50).max(1),
        checkpoint_every: get("checkpoint_every", 5).max(1),
        fail: truthy(c, "fail"),
        record_index: value(c, "record_index").as_str().unwrap_or("").to_owned(),
    };
    if errors.is_empty() {
        Ok(s)
    } else {
        Err(ConfigurationError { errors })
    }
}

async fn record(ctx: &JobContext, index: &str, id: Option<&str>, doc: Value) -> Result<(), String> {
    let (method, path) = match id {
        Some(id) => (
            HttpMethod::Put,
            format!("/{}/_create/{}", encode_segment(index), encode_segment(id)),
        ),
        None => (HttpMethod::Post, format!("/{}/_doc", encode_segment(index))),
    };
    let resp = ctx
        .es
        .send(method, &path, &[], Some(&doc))
        .await
        .map_err(|e| e.to_string())?;
    if resp.status == 409 {
        return Err(format!("job {} completed twice", id.unwrap_or_default()));
    }
    if !resp.is_success() {
        return Err(format!("cannot record the run: {}", resp.body));
    }
    Ok(())
}

#[async_trait::async_trait]
impl DynConnector for TestSleeper {
    fn service_type(&self) -> &'static str {
        SERVICE_TYPE
    }

    fn display_name(&self) -> &'static str {
        "Test sleeper (tests only)"
    }

    fn features(&self) -> Features {
        Features {
            incremental_sync: Enabled::ON,
            ..Features::default()
        }
    }

    fn default_configuration(&self) -> Map<String, Value> {
        let mut m = Map::new();
        m.insert(
            "sleep_ms".into(),
            field("Sleep (ms)", 1, "int", "numeric", json!(1000)),
        );
        m.insert(
            "step_ms".into(),
            field("Step (ms)", 2, "int", "numeric", json!(50)),
        );
        m.insert(
            "checkpoint_every".into(),
            field("Checkpoint every N steps", 3, "int", "numeric", json!(5)),
        );
        m.insert(
            "fail".into(),
            field("Fail", 4, "bool", "toggle", json!(false)),
        );
        m.insert(
            "record_index".into(),
            field("Record index", 5, "str", "text", json!("")),
        );
        m
    }

    fn json_schema(&self) -> Value {
        json!({"type": "object"})
    }

    fn check_configuration(&self, c: &Map<String, Value>) -> Result<(), ConfigurationError> {
        settings(c).map(|_| ())
    }

    async fn validate_config(&self, c: &Map<String, Value>) -> Result<(), SourceError> {
        settings(c)?;
        Ok(())
    }

    async fn ping(&self, _c: &Map<String, Value>) -> Result<(), SourceError> {
        Ok(())
    }

    async fn validate_filtering(&self, _rules: &FilteringRules) -> FilteringValidation {
        FilteringValidation::default()
    }

    async fn run_job(&self, spec: JobSpec, ctx: JobContext) -> JobOutcome {
        let mut counters = JobCounters::default();
        let s = match settings(&spec.configuration) {
            Ok(s) => s,
            Err(e) => {
                return JobOutcome::Failed {
                    counters,
                    error: e.to_string(),
                };
            }
        };
        let start_step = spec
            .checkpoint
            .as_ref()
            .and_then(|c| c["step"].as_u64())
            .unwrap_or(0);
        if !s.record_index.is_empty() {
            let doc = json!({"kind": "start", "job_id": spec.job_id, "checkpoint": spec.checkpoint,
                             "at": now_timestamp()});
            if let Err(error) = record(&ctx, &s.record_index, None, doc).await {
                return JobOutcome::Failed { counters, error };
            }
        }
        let steps = s.sleep_ms / s.step_ms;
        counters.indexed_document_count = start_step;
        for step in start_step..steps {
            tokio::select! {
                _ = ctx.cancel.cancelled() => return JobOutcome::Interrupted { counters },
                _ = tokio::time::sleep(Duration::from_millis(s.step_ms)) => {}
            }
            counters.indexed_document_count = step + 1;
            ctx.reporter.counters(counters);
            if (step + 1) % s.checkpoint_every == 0
                && let Err(e) = ctx.reporter.checkpoint(json!({"step": step + 1})).await
            {
                return JobOutcome::Failed {
                    counters,
                    error: e.to_string(),
                };
            }
        }
        if s.fail {
            return JobOutcome::Failed {
                counters,
                error: "failed on demand".into(),
            };
        }
        if !s.record_index.is_empty() {
            let doc = json!({"kind": "done", "job_id": spec.job_id, "at": now_timestamp()});
            if let Err(error) = record(&ctx, &s.record_index, Some(&spec.job_id), doc).await {
                return JobOutcome::Failed { counters, error };
            }
        }
        JobOutcome::Completed {
            counters,
            cursor: Some(json!({"last_job": spec.job_id})),
        }
    }
}
