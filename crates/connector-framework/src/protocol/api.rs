//! Requests of Elasticsearch's `_connector` / `_connector/_sync_job` API (spec §5.2), built as
//! plain values so they can be checked without a cluster that has the API.

use serde_json::{Value, json};

use crate::{
    es::{HttpMethod, encode_segment},
    job::JobCounters,
    model::{FilteringValidation, JobType, TriggerMethod},
};

use super::docs::volume_mib;

/// One request: method, path, body.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiRequest {
    pub method: HttpMethod,
    pub path: String,
    pub body: Option<Value>,
}

impl ApiRequest {
    fn new(method: HttpMethod, path: String, body: Option<Value>) -> Self {
        Self { method, path, body }
    }
}

/// `PUT _connector/{id}/_check_in`.
pub fn check_in(connector_id: &str) -> ApiRequest {
    ApiRequest::new(
        HttpMethod::Put,
        format!("/_connector/{}/_check_in", encode_segment(connector_id)),
        None,
    )
}

/// `POST _connector/_sync_job` → `{"id": job_id}`.
pub fn create_sync_job(
    connector_id: &str,
    job_type: JobType,
    trigger: TriggerMethod,
) -> ApiRequest {
    ApiRequest::new(
        HttpMethod::Post,
        "/_connector/_sync_job".into(),
        Some(json!({"id": connector_id, "job_type": job_type, "trigger_method": trigger})),
    )
}

/// `PUT _connector/_sync_job/{id}/_claim`; `sync_cursor` omitted when null.
pub fn claim_sync_job(job_id: &str, worker_hostname: &str, cursor: Option<&Value>) -> ApiRequest {
    let mut body = json!({"worker_hostname": worker_hostname});
    if let Some(c) = cursor.filter(|c| !c.is_null()) {
        body["sync_cursor"] = c.clone();
    }
    ApiRequest::new(
        HttpMethod::Put,
        format!("/_connector/_sync_job/{}/_claim", encode_segment(job_id)),
        Some(body),
    )
}

/// `PUT _connector/_sync_job/{id}/_stats` (Elasticsearch sets `last_seen`); the in-run
/// checkpoint travels in `metadata`.
pub fn sync_job_stats(
    job_id: &str,
    counters: &JobCounters,
    metadata: Option<&Value>,
    total_document_count: Option<u64>,
) -> ApiRequest {
    let mut body = json!({
        "indexed_document_count": counters.indexed_document_count,
        "indexed_document_volume": volume_mib(counters.indexed_document_volume_bytes),
        "deleted_document_count": counters.deleted_document_count,
    });
    if let Some(m) = metadata {
        body["metadata"] = m.clone();
    }
    if let Some(t) = total_document_count {
        body["total_document_count"] = json!(t);
    }
    ApiRequest::new(
        HttpMethod::Put,
        format!("/_connector/_sync_job/{}/_stats", encode_segment(job_id)),
        Some(body),
    )
}

/// `PUT _connector/_sync_job/{id}/_cancel`: pending/suspended → canceled, else → canceling.
pub fn cancel_sync_job(job_id: &str) -> ApiRequest {
    ApiRequest::new(
        HttpMethod::Put,
        format!("/_connector/_sync_job/{}/_cancel", encode_segment(job_id)),
        None,
    )
}

/// `PUT _connector/{id}/_filtering/_validation`.
pub fn filtering_validation(connector_id: &str, validation: &FilteringValidation) -> ApiRequest {
    ApiRequest::new(
        HttpMethod::Put,
        format!(
            "/_connector/{}/_filtering/_validation",
            encode_segment(connector_id)
        ),
        Some(json!({"validation": validation})),
    )
}

/// `PUT _connector/{id}/_filtering/_activate`.
pub fn activate_filtering(connector_id: &str) -> ApiRequest {
    ApiRequest::new(
        HttpMethod::Put,
        format!(
            "/_connector/{}/_filtering/_activate",
            encode_segment(connector_id)
        ),
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ValidationState;

    #[test]
    fn requests() {
        let r = create_sync_job("c 1", JobType::AccessControl, TriggerMethod::Scheduled);
        assert_eq!(r.method, HttpMethod::Post);
        assert_eq!(r.path, "/_connector/_sync_job");
        assert_eq!(
            r.body.unwrap(),
            json!({"id": "c 1", "job_type": "access_control", "trigger_method": "scheduled"})
        );

        let r = claim_sync_job("j1", "host-1", None);
        assert_eq!(r.method, HttpMethod::Put);
        assert_eq!(r.path, "/_connector/_sync_job/j1/_claim");
        assert_eq!(r.body.unwrap(), json!({"worker_hostname": "host-1"}));
        let r = claim_sync_job("j1", "host-1", Some(&json!({"h": 5})));
        assert_eq!(r.body.unwrap()["sync_cursor"], json!({"h": 5}));

        let counters = JobCounters {
            indexed_document_count: 3,
            indexed_document_volume_bytes: 5 * 1024 * 1024,
            deleted_document_count: 1,
        };
        let r = sync_job_stats(
            "j1",
            &counters,
            Some(&json!({"checkpoint": {"p": 1}})),
            None,
        );
        assert_eq!(r.path, "/_connector/_sync_job/j1/_stats");
        assert_eq!(
            r.body.unwrap(),
            json!({"indexed_document_count": 3, "indexed_document_volume": 5,
                   "deleted_document_count": 1, "metadata": {"checkpoint": {"p": 1}}})
        );

        assert_eq!(check_in("a/b").path, "/_connector/a%2Fb/_check_in");
        assert_eq!(cancel_sync_job("j").path, "/_connector/_sync_job/j/_cancel");
        let v = FilteringValidation {
            state: ValidationState::Invalid,
            errors: vec![],
        };
        assert_eq!(
            filtering_validation("c", &v).body.unwrap(),
            json!({"validation": {"state": "invalid", "errors": []}})
        );
        assert_eq!(
            activate_filtering("c").path,
            "/_connector/c/_filtering/_activate"
        );
    }
}
