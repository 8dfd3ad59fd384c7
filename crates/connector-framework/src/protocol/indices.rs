//! The two system indices: explicit settings and mappings (the ones Elasticsearch's built-in
//! templates would give them, spec §4.1), created behind their aliases when missing.

use serde_json::{Value, json};

use crate::{EsClient, es::HttpMethod};

use super::StoreError;

fn keyword() -> Value {
    json!({"type": "keyword", "ignore_above": 8191})
}

fn date() -> Value {
    json!({"type": "date"})
}

/// Settings shared by both system indices.
pub fn settings() -> Value {
    json!({
        "index": {
            "hidden": true,
            "number_of_shards": 1,
            "auto_expand_replicas": "0-1",
            // An explicit interval keeps the shard from going search-idle, so documents
            // written by other processes become visible to the pollers within a second.
            "refresh_interval": "1s"
        }
    })
}

/// Mappings of the connectors index (`dynamic: false`: unmapped fields are stored, not indexed).
pub fn connectors_mappings() -> Value {
    let schedule =
        json!({"properties": {"enabled": {"type": "boolean"}, "interval": {"type": "text"}}});
    let enabled = json!({"properties": {"enabled": {"type": "boolean"}}});
    json!({
        "dynamic": false,
        "properties": {
            "api_key_id": keyword(),
            "api_key_secret_id": keyword(),
            "description": {"type": "text"},
            "error": keyword(),
            "features": {"properties": {
                "document_level_security": enabled,
                "incremental_sync": enabled,
                "native_connector_api_keys": enabled,
                "sync_rules": {"properties": {"advanced": enabled, "basic": enabled}}
            }},
            "index_name": keyword(),
            "is_native": {"type": "boolean"},
            "language": keyword(),
            "last_access_control_sync_error": keyword(),
            "last_access_control_sync_scheduled_at": date(),
            "last_access_control_sync_status": keyword(),
            "last_deleted_document_count": {"type": "long"},
            "last_incremental_sync_scheduled_at": date(),
            "last_indexed_document_count": {"type": "long"},
            "last_seen": date(),
            "last_sync_error": keyword(),
            "last_sync_scheduled_at": date(),
            "last_sync_status": keyword(),
            "last_synced": date(),
            "name": keyword(),
            "pipeline": {"properties": {
                "extract_binary_content": {"type": "boolean"},
                "name": keyword(),
                "reduce_whitespace": {"type": "boolean"},
                "run_ml_inference": {"type": "boolean"}
            }},
            "scheduling": {"properties": {
                "access_control": schedule,
                "full": schedule,
                "incremental": schedule
            }},
            "service_type": keyword(),
            "status": keyword(),
            "sync_now": {"type": "boolean"},
            "deleted": {"type": "boolean"},
            "created_at": date(),
            "updated_at": date()
        }
    })
}

/// Mappings of the sync-jobs index.
pub fn jobs_mappings() -> Value {
    json!({
        "dynamic": false,
        "properties": {
            "cancelation_requested_at": date(),
            "canceled_at": date(),
            "completed_at": date(),
            "connector": {"properties": {
                "id": keyword(),
                "index_name": keyword(),
                "language": keyword(),
                "pipeline": {"properties": {
                    "extract_binary_content": {"type": "boolean"},
                    "name": keyword(),
                    "reduce_whitespace": {"type": "boolean"},
                    "run_ml_inference": {"type": "boolean"}
                }},
                "service_type": keyword()
            }},
            "created_at": date(),
            "deleted_document_count": {"type": "integer"},
            "error": keyword(),
            "indexed_document_count": {"type": "integer"},
            "indexed_document_volume": {"type": "integer"},
            "job_type": keyword(),
            "last_seen": date(),
            "started_at": date(),
            "status": keyword(),
            "total_document_count": {"type": "integer"},
            "trigger_method": keyword(),
            "worker_hostname": keyword()
        }
    })
}

/// The concrete index behind an alias (`.elastic-connectors` → `.elastic-connectors-v1`).
pub fn concrete_name(alias: &str) -> String {
    format!("{alias}-v1")
}

/// Creates `<alias>-v1` with `mappings` and the alias unless the alias (or an index of that
/// name) exists. Concurrent creation by another process is fine.
pub async fn ensure_index(es: &EsClient, alias: &str, mappings: Value) -> Result<bool, StoreError> {
    let path = format!("/{}", crate::es::encode_segment(alias));
    let resp = es.send(HttpMethod::Head, &path, &[], None).await?;
    if resp.status == 200 {
        return Ok(false);
    }
    let concrete = concrete_name(alias);
    let body = json!({
        "settings": settings(),
        "mappings": mappings,
        "aliases": {alias: {"is_hidden": true}}
    });
    let cpath = format!("/{}", crate::es::encode_segment(&concrete));
    let resp = es.send(HttpMethod::Put, &cpath, &[], Some(&body)).await?;
    if resp.is_success() {
        tracing::info!(index = %concrete, alias, "created system index");
        return Ok(true);
    }
    if resp.body["error"]["type"].as_str() == Some("resource_already_exists_exception") {
        return Ok(false);
    }
    Err(crate::es::api_error(HttpMethod::Put, &cpath, &resp).into())
}
