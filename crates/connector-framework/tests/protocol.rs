//! The store against the real node: documents in Elastic's shape survive read-modify-write,
//! status transitions are enforced, paging goes past one page, claims are exclusive.
// Helpers of tests unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use connector_framework::{
    Classify, ErrorKind,
    job::JobCounters,
    model::{ConnectorStatus, Features, JobStatus, JobType, TriggerMethod},
    protocol::{Patch, Store, StoreError, StoreMode, new_connector_document},
};
use serde_json::{Value, json};

mod common;

async fn store(es: &test_support::TestEs) -> (Store, common::Cleanup) {
    let (store, cleanup) = common::store(es).await;
    assert_eq!(
        store.mode(),
        StoreMode::Direct,
        "custom names never use the API"
    );
    // Idempotent.
    store.ensure_indices().await.unwrap();
    (store, cleanup)
}

/// The example connector document of framework-spec §4.2 (placeholders replaced by values),
/// plus fields this version does not know.
fn elastic_connector() -> serde_json::Map<String, Value> {
    let ts = "2024-05-01T10:00:00.123456+00:00";
    let rules = json!({
        "rules": [{"id": "DEFAULT", "order": 0, "policy": "include", "field": "_", "rule": "regex",
                   "value": ".*", "created_at": ts, "updated_at": ts}],
        "advanced_snippet": {"value": {}, "created_at": ts, "updated_at": ts},
        "validation": {"state": "valid", "errors": []}
    });
    json!({
        "api_key_id": "k1", "api_key_secret_id": null,
        "configuration": {
            "subject": {"default_value": null, "depends_on": [], "display": "text", "label": "Google Workspace admin email",
                        "options": [], "order": 2, "required": true, "sensitive": false, "tooltip": "Admin account email address",
                        "type": "str", "ui_restrictions": [], "validations": [{"type": "regex", "constraint": "^\\S+@\\S+\\.\\S+$"}],
                        "value": "admin@example.com"}
        },
        "custom_scheduling": {}, "description": null, "error": null,
        "features": {"sync_rules": {"basic": {"enabled": true}, "advanced": {"enabled": true}},
                     "document_level_security": {"enabled": true}, "incremental_sync": {"enabled": true},
                     "native_connector_api_keys": {"enabled": false}},
        "filtering": [{"domain": "DEFAULT", "active": rules, "draft": rules}],
        "index_name": "search-gmail", "is_native": false, "language": "en",
        "last_access_control_sync_error": null, "last_access_control_sync_scheduled_at": null,
        "last_access_control_sync_status": null, "last_deleted_document_count": 0,
        "last_incremental_sync_scheduled_at": null, "last_indexed_document_count": 0,
        "last_seen": ts, "last_sync_error": null,
        "last_sync_scheduled_at": null, "last_sync_status": "completed", "last_synced": ts,
        "name": "gmail", "pipeline": {"name": "search-default-ingestion", "extract_binary_content": true,
                                      "reduce_whitespace": true, "run_ml_inference": true},
        "scheduling": {"full": {"enabled": true, "interval": "0 0 0 * * ?"},
                       "incremental": {"enabled": false, "interval": "0 0 0 * * ?"},
                       "access_control": {"enabled": false, "interval": "0 0 0 * * ?"}},
        "service_type": "gmail", "status": "connected", "sync_cursor": null, "sync_now": false, "deleted": false,
        "future_field": {"nested": [1, 2, {"x": "y"}]},
        "kibana_ui_state": "opaque"
    })
    .as_object()
    .cloned()
    .unwrap()
}

#[tokio::test]
async fn elastic_shaped_connector_survives_read_modify_write() {
    let es = test_support::es().await;
    let (store, _cleanup) = store(&es).await;
    let original = elastic_connector();
    let id = store
        .create_connector(Some("c-1"), &original)
        .await
        .unwrap();
    assert_eq!(id, "c-1");

    let doc = store.connector("c-1").await.unwrap();
    assert_eq!(doc.status(), Some(ConnectorStatus::Connected));
    assert_eq!(doc.service_type(), Some("gmail"));
    assert_eq!(doc.index_name(), Some("search-gmail"));
    assert!(doc.features().document_level_security.enabled);
    assert_eq!(
        doc.schedule(JobType::Full),
        (true, Some("0 0 0 * * ?".into()))
    );
    assert_eq!(
        doc.last_sync_status(JobType::Full),
        Some(JobStatus::Completed)
    );

    let updated = store
        .update_connector(
            &doc,
            &Patch::new().set("last_seen", "2024-06-01T00:00:00.000000+00:00"),
        )
        .await
        .unwrap();
    let updated = store
        .transition_connector(
            &updated,
            ConnectorStatus::Error,
            Patch::new().set("error", "boom"),
        )
        .await
        .unwrap();
    let reread = store.connector("c-1").await.unwrap();
    assert_eq!(reread.raw(), updated.raw());
    let mut expected = original.clone();
    expected.insert(
        "last_seen".into(),
        json!("2024-06-01T00:00:00.000000+00:00"),
    );
    expected.insert("status".into(), json!("error"));
    expected.insert("error".into(), json!("boom"));
    assert_eq!(reread.raw(), &expected, "only the written fields changed");
}

#[tokio::test]
async fn job_document_round_trip_and_transitions() {
    let es = test_support::es().await;
    let (store, _cleanup) = store(&es).await;
    let mut raw = elastic_connector();
    raw.insert("index_name".into(), json!("search-x"));
    store.create_connector(Some("c-2"), &raw).await.unwrap();
    let connector = store.connector("c-2").await.unwrap();
    let job_id = store
        .create_job(&connector, JobType::Full, TriggerMethod::OnDemand)
        .await
        .unwrap();
    let job = store.job(&job_id).await.unwrap();
    assert_eq!(job.status().unwrap(), JobStatus::Pending);
    assert_eq!(job.connector_id(), Some("c-2"));
    assert_eq!(job.index_name(), Some("search-x"));
    assert_eq!(job.service_type(), Some("gmail"));
    assert_eq!(job.configuration()["subject"]["value"], "admin@example.com");
    assert_eq!(job.filtering().unwrap().rules[0]["id"], "DEFAULT");
    assert_eq!(job.trigger_method(), Some(TriggerMethod::OnDemand));

    // An unknown field added by someone else survives our writes.
    let with_unknown = store
        .update_job(&job, &Patch::new().set("x_extra", json!({"keep": true})))
        .await
        .unwrap();

    // Illegal: pending -> completed. Error, document unchanged.
    let err = store
        .transition_job(&with_unknown, JobStatus::Completed, Patch::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition { .. }), "{err}");
    let unchanged = store.job(&job_id).await.unwrap();
    assert_eq!(unchanged, with_unknown);

    // Status changes must go through transition_job.
    assert!(
        store
            .update_job(&unchanged, &Patch::new().set("status", "completed"))
            .await
            .is_err()
    );

    // Claim, then a stale second claim loses (exclusive).
    let claimed = store.claim_job(&unchanged, "worker-a", None).await.unwrap();
    assert_eq!(claimed.status().unwrap(), JobStatus::InProgress);
    assert_eq!(claimed.worker_hostname(), Some("worker-a"));
    let second = store
        .claim_job(&unchanged, "worker-b", None)
        .await
        .unwrap_err();
    assert_eq!(second.kind(), ErrorKind::Conflict, "{second}");

    // Checkpoint and counters.
    let counters = JobCounters {
        indexed_document_count: 7,
        indexed_document_volume_bytes: 2 * 1024 * 1024,
        deleted_document_count: 1,
    };
    let reported = store
        .report_job(&job_id, &counters, Some(&json!({"page": 3})))
        .await
        .unwrap();
    assert_eq!(reported.checkpoint(), Some(json!({"page": 3})));
    assert_eq!(reported.indexed_document_count(), 7);
    assert_eq!(reported.indexed_document_volume(), 2);
    // A new checkpoint replaces the old one entirely.
    let reported = store
        .report_job(&job_id, &counters, Some(&json!({"cursor": "z"})))
        .await
        .unwrap();
    assert_eq!(reported.checkpoint(), Some(json!({"cursor": "z"})));

    // in_progress -> canceling via cancel; then -> canceled; then nothing more.
    let canceling = store.cancel_job(&job_id).await.unwrap();
    assert_eq!(canceling.status().unwrap(), JobStatus::Canceling);
    let canceled = store
        .transition_job(&canceling, JobStatus::Canceled, Patch::new())
        .await
        .unwrap();
    assert!(canceled.raw()["completed_at"].is_string());
    assert!(canceled.raw()["canceled_at"].is_string());
    assert_eq!(canceled.raw()["x_extra"], json!({"keep": true}));
    let err = store
        .transition_job(&canceled, JobStatus::InProgress, Patch::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition { .. }));
    assert_eq!(store.job(&job_id).await.unwrap(), canceled);
    // Canceling a finished job is refused too.
    assert!(store.cancel_job(&job_id).await.is_err());

    // A pending job cancels straight to canceled (W9).
    let pending = store
        .create_job(&connector, JobType::AccessControl, TriggerMethod::OnDemand)
        .await
        .unwrap();
    let job = store.job(&pending).await.unwrap();
    assert_eq!(job.index_name(), Some(".search-acl-filter-search-x"));
    let c = store.cancel_job(&pending).await.unwrap();
    assert_eq!(c.status().unwrap(), JobStatus::Canceled);
}

#[tokio::test]
async fn connector_transitions_are_enforced() {
    let es = test_support::es().await;
    let (store, _cleanup) = store(&es).await;
    let raw = new_connector_document(
        "search-y",
        "gmail",
        "y",
        Default::default(),
        &Features::default(),
        ConnectorStatus::Created,
    );
    let id = store.create_connector(None, &raw).await.unwrap();
    let doc = store.connector(&id).await.unwrap();
    let err = store
        .transition_connector(&doc, ConnectorStatus::Connected, Patch::new())
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::IllegalTransition { .. }), "{err}");
    assert_eq!(store.connector(&id).await.unwrap(), doc, "unchanged");
    let doc = store
        .transition_connector(&doc, ConnectorStatus::NeedsConfiguration, Patch::new())
        .await
        .unwrap();
    assert_eq!(doc.status(), Some(ConnectorStatus::NeedsConfiguration));
    // A stale copy cannot overwrite a newer document.
    let stale = store.connector(&id).await.unwrap();
    store
        .update_connector(&stale, &Patch::new().set("name", "renamed"))
        .await
        .unwrap();
    let err = store
        .update_connector(&stale, &Patch::new().set("name", "lost update"))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Conflict);
    assert_eq!(store.connector(&id).await.unwrap().name(), Some("renamed"));
}

#[tokio::test]
async fn listing_pages_past_one_page() {
    let es = test_support::es().await;
    let (store, _cleanup) = store(&es).await;
    let raw = elastic_connector();
    store.create_connector(Some("c-p"), &raw).await.unwrap();
    let connector = store.connector("c-p").await.unwrap();
    // 1,100 jobs through one bulk request (more than two pages of 500).
    let job = connector_framework::protocol::new_job_document(
        &connector,
        JobType::Full,
        TriggerMethod::Scheduled,
    )
    .unwrap();
    let mut body = String::new();
    for i in 0..1100 {
        body.push_str(&format!("{{\"index\":{{\"_id\":\"job-{i:05}\"}}}}\n"));
        let mut j = job.clone();
        j.insert(
            "created_at".into(),
            json!(format!(
                "2024-01-01T00:{:02}:{:02}.000000+00:00",
                i / 60 % 60,
                i % 60
            )),
        );
        body.push_str(&serde_json::to_string(&j).unwrap());
        body.push('\n');
    }
    let path = format!("/{}/_bulk", store.names().jobs);
    es.bulk(&path, body).await;
    let all = store
        .list_jobs(json!({"term": {"connector.id": "c-p"}}), None)
        .await
        .unwrap();
    assert_eq!(all.len(), 1100);
    let ids: std::collections::HashSet<_> = all.iter().map(|j| j.id().to_owned()).collect();
    assert_eq!(ids.len(), 1100, "no duplicates across pages");
    let limited = store
        .list_jobs(json!({"term": {"connector.id": "c-p"}}), Some(600))
        .await
        .unwrap();
    assert_eq!(limited.len(), 600);
    assert!(
        limited
            .windows(2)
            .all(|w| w[0].created_at() <= w[1].created_at())
    );
}
