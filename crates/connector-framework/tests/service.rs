//! Scheduler, executor and cleanup against the real node, in-process.
// Helpers of tests unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod common;

use std::{sync::Arc, time::Duration};

use connector_framework::{
    config::Config,
    job::{JobContext, JobCounters, JobOutcome, JobSpec},
    model::{
        ConnectorStatus, Enabled, Features, FilteringRules, FilteringValidation, JobStatus,
        JobType, TriggerMethod, ValidationError, ValidationState, timestamp,
    },
    protocol::{Patch, Store, new_connector_document},
    service::{ServiceContext, cleanup::Cleanup, executor::Executor, scheduler::Scheduler},
    source::{ConfigurationError, DynConnector, FieldError, Registry, SourceError},
};
use serde_json::{Map, Value, json};

/// A connector for these tests: `token` must be set; `mode: bad` fails remote validation;
/// jobs sleep `sleep_ms` in 20 ms steps.
struct Fake;

fn value<'a>(c: &'a Map<String, Value>, k: &str) -> &'a Value {
    c.get(k).map(|f| &f["value"]).unwrap_or(&Value::Null)
}

#[async_trait::async_trait]
impl DynConnector for Fake {
    fn service_type(&self) -> &'static str {
        "fake"
    }
    fn display_name(&self) -> &'static str {
        "Fake"
    }
    fn features(&self) -> Features {
        Features {
            sync_rules: connector_framework::model::SyncRulesFeatures {
                basic: Enabled::ON,
                advanced: Enabled::OFF,
            },
            ..Features::default()
        }
    }
    fn default_configuration(&self) -> Map<String, Value> {
        json!({
            "token": {"label": "Token", "order": 1, "type": "str", "display": "text", "required": true,
                      "sensitive": true, "value": "", "default_value": null, "depends_on": [],
                      "tooltip": null, "ui_restrictions": [], "validations": [], "options": []},
            "mode": {"label": "Mode", "order": 2, "type": "str", "display": "text", "required": false,
                     "sensitive": false, "value": "ok", "default_value": "ok", "depends_on": [],
                     "tooltip": null, "ui_restrictions": [], "validations": [], "options": []},
            "sleep_ms": {"label": "Sleep", "order": 3, "type": "int", "display": "numeric", "required": false,
                         "sensitive": false, "value": 0, "default_value": 0, "depends_on": [],
                         "tooltip": null, "ui_restrictions": [], "validations": [], "options": []}
        })
        .as_object()
        .cloned()
        .unwrap()
    }
    fn json_schema(&self) -> Value {
        json!({})
    }
    fn check_configuration(&self, c: &Map<String, Value>) -> Result<(), ConfigurationError> {
        match value(c, "token").as_str() {
            Some(t) if !t.is_empty() => Ok(()),
            _ => Err(ConfigurationError {
                errors: vec![FieldError {
                    field: "token".into(),
                    message: "required".into(),
                }],
            }),
        }
    }
    async fn validate_config(&self, c: &Map<String, Value>) -> Result<(), SourceError> {
        if value(c, "mode") == "bad" {
            return Err(SourceError::Unauthorized("the token was refused".into()));
        }
        Ok(())
    }
    async fn ping(&self, _c: &Map<String, Value>) -> Result<(), SourceError> {
        Ok(())
    }
    async fn validate_filtering(&self, rules: &FilteringRules) -> FilteringValidation {
        let bad: Vec<String> = rules
            .rules
            .iter()
            .filter(|r| r.get("field").and_then(Value::as_str).is_none())
            .map(|r| r["id"].as_str().unwrap_or("?").to_owned())
            .collect();
        if bad.is_empty() {
            FilteringValidation::default()
        } else {
            FilteringValidation {
                state: ValidationState::Invalid,
                errors: vec![ValidationError {
                    ids: bad,
                    messages: vec!["field missing".into()],
                }],
            }
        }
    }
    async fn run_job(&self, spec: JobSpec, ctx: JobContext) -> JobOutcome {
        if value(&spec.configuration, "mode") == "stubborn" {
            // Ignores its cancel token.
            tokio::time::sleep(Duration::from_secs(120)).await;
        }
        let ms = value(&spec.configuration, "sleep_ms").as_u64().unwrap_or(0);
        let mut counters = JobCounters::default();
        let steps = ms / 20;
        for _ in 0..steps {
            if ctx.cancel.is_cancelled() {
                return JobOutcome::Interrupted { counters };
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            counters.indexed_document_count += 1;
            ctx.reporter.counters(counters);
        }
        JobOutcome::Completed {
            counters,
            cursor: Some(json!({"done": spec.job_id})),
        }
    }
}

fn registry() -> Registry {
    let mut r = Registry::new();
    r.register(Arc::new(Fake));
    r
}

fn config(store: &Store, extra: &str) -> Arc<Config> {
    let yaml = format!(
        "service:\n  idling: 1\n  max_concurrent_scheduling_tasks: 4\n  max_concurrent_content_syncs: 4\n  \
         connectors_index: {}\n  jobs_index: {}\n{extra}",
        store.names().connectors,
        store.names().jobs
    );
    Arc::new(Config::from_yaml_with_env(&yaml, None, Vec::new()).unwrap())
}

fn connector(status: ConnectorStatus, token: &str, cron: Option<&str>) -> Map<String, Value> {
    let mut configuration = Fake.default_configuration();
    configuration["token"]["value"] = json!(token);
    let mut raw = new_connector_document(
        "search-fake",
        "fake",
        "fake",
        configuration,
        &Fake.features(),
        status,
    );
    if let Some(cron) = cron {
        raw["scheduling"]["full"] = json!({"enabled": true, "interval": cron});
        let hour_ago = chrono::Utc::now() - chrono::Duration::hours(1);
        raw.insert("last_sync_scheduled_at".into(), json!(timestamp(hour_ago)));
    }
    raw
}

/// The connector once its `last_sync_status` no longer says `in_progress`.
async fn connector_after_job(
    store: &Store,
    id: &str,
) -> connector_framework::protocol::ConnectorDoc {
    for _ in 0..50 {
        let c = store.connector(id).await.unwrap();
        if c.last_sync_status(JobType::Full) != Some(JobStatus::InProgress) {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("connector {id} still records a running job");
}

#[tokio::test]
async fn fifty_due_connectors_get_exactly_one_job_each_in_one_pass() {
    let es = test_support::es().await;
    let (store, _cleanup) = common::store(&es).await;
    let ctx = ServiceContext::new(
        config(&store, "  service_types: [fake]\n"),
        store.clone(),
        registry(),
    );
    for i in 0..50 {
        let raw = connector(ConnectorStatus::Connected, "t", Some("0 * * * * ?"));
        store
            .create_connector(Some(&format!("c{i:02}")), &raw)
            .await
            .unwrap();
    }
    // One connector with a broken schedule: error with the message, the others carry on.
    let raw = connector(ConnectorStatus::Connected, "t", Some("every full moon"));
    store.create_connector(Some("broken"), &raw).await.unwrap();
    store.refresh().await.unwrap();

    let scheduler = Scheduler::new(ctx.clone());
    let started = std::time::Instant::now();
    let report = scheduler.run_pass().await.unwrap();
    eprintln!("pass over 51 connectors: {:?}", started.elapsed());
    assert_eq!(report.processed, 51);
    assert_eq!(report.failed, 0, "{report:?}");
    assert_eq!(report.jobs_created.len(), 50);
    store.refresh().await.unwrap();
    let all = store
        .list_jobs(json!({"match_all": {}}), None)
        .await
        .unwrap();
    assert_eq!(all.len(), 50);
    let mut per_connector = std::collections::HashMap::new();
    for j in &all {
        assert_eq!(j.status().unwrap(), JobStatus::Pending);
        assert_eq!(j.trigger_method(), Some(TriggerMethod::Scheduled));
        *per_connector
            .entry(j.connector_id().unwrap().to_owned())
            .or_insert(0) += 1;
    }
    assert_eq!(per_connector.len(), 50);
    assert!(per_connector.values().all(|n| *n == 1));
    let broken = store.connector("broken").await.unwrap();
    assert_eq!(broken.status(), Some(ConnectorStatus::Error));
    assert!(
        broken.error().unwrap().contains("every full moon"),
        "{:?}",
        broken.error()
    );

    // A second pass creates nothing more (jobs still pending, schedules recorded).
    let seq_before = store.connector("c00").await.unwrap().0.seq_no;
    let report = scheduler.run_pass().await.unwrap();
    assert!(report.jobs_created.is_empty(), "{report:?}");
    // And does not rewrite a validated connector (W3).
    assert_eq!(store.connector("c00").await.unwrap().0.seq_no, seq_before);
}

#[tokio::test]
async fn configured_connector_is_prepared_then_validated() {
    let es = test_support::es().await;
    let (store, _cleanup) = common::store(&es).await;
    let ctx = ServiceContext::new(
        config(
            &store,
            "connectors:\n  - connector_id: mine\n    service_type: fake\n",
        ),
        store.clone(),
        registry(),
    );
    // As `PUT _connector` creates it: no configuration, no service type, status created.
    let mut raw = connector(ConnectorStatus::Created, "", None);
    raw.insert("configuration".into(), json!({}));
    raw.insert("service_type".into(), Value::Null);
    raw.insert("features".into(), json!({}));
    store.create_connector(Some("mine"), &raw).await.unwrap();
    // Not ours: untouched.
    store
        .create_connector(
            Some("other"),
            &connector(ConnectorStatus::Created, "", None),
        )
        .await
        .unwrap();

    let scheduler = Scheduler::new(ctx.clone());
    scheduler.process("mine").await.unwrap();
    let doc = store.connector("mine").await.unwrap();
    assert_eq!(doc.status(), Some(ConnectorStatus::NeedsConfiguration));
    assert_eq!(doc.service_type(), Some("fake"));
    assert_eq!(doc.configuration()["mode"]["value"], "ok");
    assert!(doc.features().sync_rules.basic.enabled);
    assert!(doc.last_seen().is_some());
    store.refresh().await.unwrap();
    scheduler.run_pass().await.unwrap();
    assert_eq!(
        store.connector("other").await.unwrap().status(),
        Some(ConnectorStatus::Created)
    );

    // The user fills the token: configured, then connected in the same pass.
    let doc = store.connector("mine").await.unwrap();
    store
        .update_connector(
            &doc,
            &Patch::new().set("configuration.token.value", "secret"),
        )
        .await
        .unwrap();
    scheduler.process("mine").await.unwrap();
    let doc = store.connector("mine").await.unwrap();
    assert_eq!(
        doc.status(),
        Some(ConnectorStatus::Connected),
        "{:?}",
        doc.error()
    );
    // Unchanged configuration: no revalidation, no write (W3).
    scheduler.process("mine").await.unwrap();
    assert_eq!(
        store.connector("mine").await.unwrap().0.seq_no,
        doc.0.seq_no
    );

    // A configuration the source refuses: error with the message.
    store
        .update_connector(&doc, &Patch::new().set("configuration.mode.value", "bad"))
        .await
        .unwrap();
    scheduler.process("mine").await.unwrap();
    let doc = store.connector("mine").await.unwrap();
    assert_eq!(doc.status(), Some(ConnectorStatus::Error));
    assert_eq!(doc.error(), Some("the token was refused"));
}

#[tokio::test]
async fn sync_rule_drafts_are_validated_without_failing_the_connector() {
    let es = test_support::es().await;
    let (store, _cleanup) = common::store(&es).await;
    let ctx = ServiceContext::new(
        config(&store, "  service_types: [fake]\n"),
        store.clone(),
        registry(),
    );
    let scheduler = Scheduler::new(ctx);
    store
        .create_connector(Some("r"), &connector(ConnectorStatus::Connected, "t", None))
        .await
        .unwrap();
    // A malformed draft (rules is not a list).
    let doc = store.connector("r").await.unwrap();
    let doc = store
        .update_connector(
            &doc,
            &Patch::new().set(
                "filtering",
                json!([{"domain": "DEFAULT", "active": doc.filtering()[0]["active"],
                        "draft": {"rules": "oops", "validation": {"state": "edited", "errors": []}}}]),
            ),
        )
        .await
        .unwrap();
    scheduler.process("r").await.unwrap();
    let after = store.connector("r").await.unwrap();
    assert_eq!(after.status(), Some(ConnectorStatus::Connected), "W10");
    assert_eq!(
        after.filtering()[0]["draft"]["validation"]["state"],
        "invalid"
    );
    assert_eq!(after.filtering()[0]["active"], doc.filtering()[0]["active"]);

    // A valid draft is activated.
    let rule = json!({"id": "r1", "order": 1, "policy": "exclude", "field": "title",
                      "rule": "equals", "value": "x"});
    let after = store
        .update_connector(
            &after,
            &Patch::new().set(
                "filtering",
                json!([{"domain": "DEFAULT", "active": doc.filtering()[0]["active"],
                        "draft": {"rules": [rule], "advanced_snippet": {"value": {}},
                                  "validation": {"state": "edited", "errors": []}}}]),
            ),
        )
        .await
        .unwrap();
    scheduler.process("r").await.unwrap();
    let done = store.connector("r").await.unwrap();
    assert_eq!(done.filtering()[0]["draft"]["validation"]["state"], "valid");
    assert_eq!(done.filtering()[0]["active"]["rules"][0]["id"], "r1");
    assert_ne!(done.0.seq_no, after.0.seq_no);
}

#[tokio::test]
async fn executor_runs_cancels_and_cleans_up() {
    let es = test_support::es().await;
    let (store, _cleanup) = common::store(&es).await;
    let cfg = config(
        &store,
        "  service_types: [fake]\n  job_stale_threshold: 2\n",
    );
    let ctx = ServiceContext::new(cfg, store.clone(), registry());
    let mut quick = connector(ConnectorStatus::Connected, "t", None);
    quick["configuration"]["sleep_ms"]["value"] = json!(100);
    store.create_connector(Some("quick"), &quick).await.unwrap();
    let mut slow = connector(ConnectorStatus::Connected, "t", None);
    slow["configuration"]["sleep_ms"]["value"] = json!(60_000);
    store.create_connector(Some("slow"), &slow).await.unwrap();
    store
        .create_connector(
            Some("gone"),
            &connector(ConnectorStatus::Connected, "t", None),
        )
        .await
        .unwrap();
    // A job of a service type this binary lacks must not block the others (W2).
    let mut alien = connector(ConnectorStatus::Connected, "t", None);
    alien.insert("service_type".into(), json!("alien"));
    store.create_connector(Some("alien"), &alien).await.unwrap();

    let c = |id: &'static str| {
        let store = store.clone();
        async move { store.connector(id).await.unwrap() }
    };
    let alien_job = store
        .create_job(&c("alien").await, JobType::Full, TriggerMethod::OnDemand)
        .await
        .unwrap();
    let quick_job = store
        .create_job(&c("quick").await, JobType::Full, TriggerMethod::OnDemand)
        .await
        .unwrap();
    let slow_job = store
        .create_job(&c("slow").await, JobType::Full, TriggerMethod::OnDemand)
        .await
        .unwrap();
    let gone_job = store
        .create_job(&c("gone").await, JobType::Full, TriggerMethod::OnDemand)
        .await
        .unwrap();
    store.delete_connector("gone", false).await.unwrap();
    store.refresh().await.unwrap();

    let executor = Executor::new(ctx.clone());
    let report = executor.run_pass().await.unwrap();
    assert!(report.started.contains(&quick_job), "{report:?}");
    assert!(report.started.contains(&slow_job), "{report:?}");
    assert_eq!(report.errored, vec![gone_job.clone()]);
    let gone = store.job(&gone_job).await.unwrap();
    assert_eq!(gone.status().unwrap(), JobStatus::Error);
    assert_eq!(
        store.job(&alien_job).await.unwrap().status().unwrap(),
        JobStatus::Pending
    );

    // The quick job completes and the connector records it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let j = store.job(&quick_job).await.unwrap();
        if j.status().unwrap() == JobStatus::Completed {
            assert_eq!(j.indexed_document_count(), 5);
            assert!(j.raw()["total_document_count"].is_number());
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "quick job did not complete"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The connector side is written right after the job's end.
    let q = connector_after_job(&store, "quick").await;
    assert_eq!(
        q.last_sync_status(JobType::Full),
        Some(JobStatus::Completed)
    );
    assert_eq!(q.raw()["last_indexed_document_count"], 5);
    assert_eq!(q.sync_cursor(), Some(json!({"done": quick_job})));
    assert!(q.raw()["last_synced"].is_string());

    // Cancel the running one: canceled within 10 s.
    let t = std::time::Instant::now();
    store.cancel_job(&slow_job).await.unwrap();
    loop {
        let j = store.job(&slow_job).await.unwrap();
        if j.status().unwrap() == JobStatus::Canceled {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not canceled in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("running job canceled in {:?}", t.elapsed());
    let s = connector_after_job(&store, "slow").await;
    assert_eq!(s.last_sync_status(JobType::Full), Some(JobStatus::Canceled));

    // A job whose worker died (claimed, then silent): cleanup marks it error.
    let dead = store
        .create_job(&c("quick").await, JobType::Full, TriggerMethod::OnDemand)
        .await
        .unwrap();
    let j = store.job(&dead).await.unwrap();
    store.claim_job(&j, "dead-worker", None).await.unwrap();
    let cleanup = Cleanup::standalone(ctx.clone());
    let report = cleanup.run_pass().await.unwrap();
    assert!(report.stale.is_empty(), "fresh heartbeat: {report:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    store.refresh().await.unwrap();
    let report = cleanup.run_pass().await.unwrap();
    assert_eq!(report.stale, vec![dead.clone()]);
    let j = store.job(&dead).await.unwrap();
    assert_eq!(j.status().unwrap(), JobStatus::Error);
    assert_eq!(
        j.error(),
        Some(connector_framework::service::cleanup::STALE_JOB_ERROR)
    );
    executor.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn cleanup_releases_a_connector_reserved_by_a_dead_worker() {
    let es = test_support::es().await;
    let (store, _cleanup) = common::store(&es).await;
    let ctx = ServiceContext::new(
        config(&store, "  service_types: [fake]\n"),
        store.clone(),
        registry(),
    );
    let mut raw = connector(ConnectorStatus::Connected, "t", None);
    raw.insert("last_sync_status".into(), json!("in_progress"));
    store.create_connector(Some("stuck"), &raw).await.unwrap();
    let mut busy = connector(ConnectorStatus::Connected, "t", None);
    busy.insert("last_sync_status".into(), json!("in_progress"));
    store.create_connector(Some("busy"), &busy).await.unwrap();
    let job = store
        .create_job(
            &store.connector("busy").await.unwrap(),
            JobType::Full,
            TriggerMethod::OnDemand,
        )
        .await
        .unwrap();
    store
        .claim_job(&store.job(&job).await.unwrap(), "alive", None)
        .await
        .unwrap();
    store.refresh().await.unwrap();
    let cleanup = Cleanup::standalone(ctx);
    let first = cleanup.run_pass().await.unwrap();
    assert!(first.released.is_empty(), "seen once only: {first:?}");
    let second = cleanup.run_pass().await.unwrap();
    assert_eq!(second.released, vec!["stuck".to_owned()]);
    let stuck = store.connector("stuck").await.unwrap();
    assert_eq!(
        stuck.last_sync_status(JobType::Full),
        Some(JobStatus::Error)
    );
    let busy = store.connector("busy").await.unwrap();
    assert_eq!(
        busy.last_sync_status(JobType::Full),
        Some(JobStatus::InProgress)
    );
}

#[tokio::test]
async fn a_sync_ignoring_its_cancel_token_is_abandoned() {
    let es = test_support::es().await;
    let (store, _cleanup) = common::store(&es).await;
    let ctx = ServiceContext::new(
        config(&store, "  service_types: [fake]\n"),
        store.clone(),
        registry(),
    );
    let mut raw = connector(ConnectorStatus::Connected, "t", None);
    raw["configuration"]["mode"]["value"] = json!("stubborn");
    store
        .create_connector(Some("stubborn"), &raw)
        .await
        .unwrap();
    let job = store
        .create_job(
            &store.connector("stubborn").await.unwrap(),
            JobType::Full,
            TriggerMethod::OnDemand,
        )
        .await
        .unwrap();
    store.refresh().await.unwrap();
    let executor = Executor::new(ctx);
    assert_eq!(
        executor.run_pass().await.unwrap().started,
        vec![job.clone()]
    );
    let t = std::time::Instant::now();
    store.cancel_job(&job).await.unwrap();
    while store.job(&job).await.unwrap().status().unwrap() != JobStatus::Canceled {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "not canceled in 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Its slot is free again.
    for _ in 0..30 {
        if executor.running_jobs().is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the abandoned job still holds its slot");
}
