//! The `/__admin` control plane: ground truth, mutations, faults, quota, clock, stats.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::SimError;
use crate::api::{ApiError, json_response};
use crate::quota::{FaultRule, QuotaConfig};
use crate::state::{Mutation, State, parse_hex_id};

type St = AxState<Arc<State>>;

pub(crate) fn router() -> Router<Arc<State>> {
    Router::new()
        .route("/tenant", get(tenant))
        .route("/key", get(key))
        .route("/delegations", post(set_delegation))
        .route("/delegations/{client_id}", delete(delete_delegation))
        .route("/users/{email}/messages", get(user_messages))
        .route("/users/{email}/messages/{id}/raw", get(raw))
        .route("/query", post(query))
        .route("/expected-docs", post(expected_docs))
        .route("/mutations", post(mutations))
        .route("/history/expire", post(expire))
        .route(
            "/faults",
            get(faults_get).post(faults_add).delete(faults_clear),
        )
        .route("/quota", get(quota_get).post(quota_set))
        .route("/clock", get(clock_get).post(clock_set))
        .route("/stats", get(stats))
        .route("/stats/reset", post(stats_reset))
        .route("/tokens/revoke", post(revoke))
}

fn err(e: SimError) -> Response {
    let status = match e {
        SimError::NotFound(_) => 404,
        _ => 400,
    };
    ApiError::new(
        status,
        if status == 404 {
            "notFound"
        } else {
            "badRequest"
        },
        e.to_string(),
    )
    .into_response()
}

fn ok<T: serde::Serialize>(r: Result<T, SimError>) -> Response {
    match r {
        Ok(v) => json_response(&serde_json::to_value(v).unwrap_or(Value::Null)),
        Err(e) => err(e),
    }
}

async fn tenant(AxState(st): St) -> Response {
    json_response(&crate::tenant_json(&st))
}

async fn key(AxState(st): St) -> Response {
    json_response(&serde_json::to_value(st.key_json()).unwrap_or(Value::Null))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Delegation {
    client_id: Option<String>,
    scopes: Vec<String>,
}

async fn set_delegation(AxState(st): St, axum::Json(d): axum::Json<Delegation>) -> Response {
    let id = d
        .client_id
        .unwrap_or_else(|| st.tenant.sa_client_id.clone());
    crate::set_delegation(&st, &id, d.scopes);
    json_response(&json!({"clientId": id}))
}

async fn delete_delegation(AxState(st): St, Path(id): Path<String>) -> Response {
    st.tenant
        .delegation
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&id);
    json_response(&json!({}))
}

async fn user_messages(AxState(st): St, Path(email): Path<String>) -> Response {
    ok(st.user(&email).map(|u| st.truth(u)))
}

async fn raw(AxState(st): St, Path((email, id)): Path<(String, String)>) -> Response {
    let r = (|| {
        let u = st.user(&email)?;
        let id = parse_hex_id(&id)?;
        st.raw(u, id)
            .ok_or_else(|| SimError::NotFound(format!("message {id:x}")))
    })();
    match r {
        Ok(bytes) => {
            let mut resp = Response::new(Body::from(bytes));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("message/rfc822"),
            );
            resp
        }
        Err(e) => err(e),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct QueryReq {
    user: String,
    #[serde(default)]
    q: Option<String>,
    #[serde(default)]
    include_spam_trash: bool,
    #[serde(default)]
    label_ids: Vec<String>,
}

async fn query(AxState(st): St, axum::Json(r): axum::Json<QueryReq>) -> Response {
    ok(crate::query_ids(
        &st,
        &r.user,
        r.q.as_deref(),
        r.include_spam_trash,
        &r.label_ids,
    )
    .map(|ids| json!({"ids": ids})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExpectedReq {
    #[serde(default)]
    include_spam_and_trash: bool,
    #[serde(default)]
    rules: Vec<String>,
}

async fn expected_docs(AxState(st): St, axum::Json(r): axum::Json<ExpectedReq>) -> Response {
    ok(crate::expected_docs(
        &st,
        r.include_spam_and_trash,
        &r.rules,
    ))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    Many(Vec<Mutation>),
    One(Mutation),
}

async fn mutations(AxState(st): St, axum::Json(m): axum::Json<OneOrMany>) -> Response {
    let list = match m {
        OneOrMany::Many(v) => v,
        OneOrMany::One(m) => vec![m],
    };
    ok(list
        .iter()
        .map(|m| st.apply(m))
        .collect::<Result<Vec<_>, _>>())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ExpireReq {
    user: String,
    #[serde(default)]
    through_history_id: Option<u64>,
}

async fn expire(AxState(st): St, axum::Json(r): axum::Json<ExpireReq>) -> Response {
    ok(st
        .expire_history(&r.user, r.through_history_id)
        .map(|f| json!({"floor": f.to_string()})))
}

async fn faults_get(AxState(st): St) -> Response {
    ok(Ok::<_, SimError>(st.faults.status()))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum RuleOrRules {
    Many(Vec<FaultRule>),
    One(FaultRule),
}

async fn faults_add(AxState(st): St, axum::Json(r): axum::Json<RuleOrRules>) -> Response {
    match r {
        RuleOrRules::Many(v) => v.into_iter().for_each(|r| st.faults.add(r)),
        RuleOrRules::One(r) => st.faults.add(r),
    }
    ok(Ok::<_, SimError>(st.faults.status()))
}

async fn faults_clear(AxState(st): St) -> Response {
    st.faults.set(Vec::new());
    json_response(&json!({}))
}

async fn quota_get(AxState(st): St) -> Response {
    ok(Ok::<_, SimError>(
        st.quota.read().unwrap_or_else(|e| e.into_inner()).clone(),
    ))
}

async fn quota_set(AxState(st): St, axum::Json(q): axum::Json<QuotaConfig>) -> Response {
    crate::set_quota(&st, q.clone());
    ok(Ok::<_, SimError>(q))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClockReq {
    #[serde(default)]
    offset_ms: Option<i64>,
    #[serde(default)]
    frozen_ms: Option<i64>,
}

async fn clock_get(AxState(st): St) -> Response {
    json_response(&json!({"nowMs": st.now_ms()}))
}

async fn clock_set(AxState(st): St, axum::Json(c): axum::Json<ClockReq>) -> Response {
    st.set_clock(c.offset_ms, c.frozen_ms);
    json_response(&json!({"nowMs": st.now_ms()}))
}

async fn stats(AxState(st): St) -> Response {
    ok(Ok::<_, SimError>(crate::stats(&st)))
}

async fn stats_reset(AxState(st): St) -> Response {
    crate::reset_stats(&st);
    json_response(&json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RevokeReq {
    #[serde(default)]
    user: Option<String>,
}

async fn revoke(AxState(st): St, axum::Json(r): axum::Json<RevokeReq>) -> impl IntoResponse {
    let n = crate::revoke_tokens(&st, r.user.as_deref());
    json_response(&json!({"revoked": n}))
}
