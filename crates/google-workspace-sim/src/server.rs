//! HTTP routes: token endpoint, Directory, Gmail, batch.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, RawQuery, State as AxState};
use axum::http::{HeaderMap, HeaderValue, Request, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use serde_json::{Value, json};
use tower::ServiceExt as _;

use crate::api::{
    ApiError, Params, apply_mask, default_message, default_reason, json_response, make_page_token,
    parse_mask, read_page_token,
};
use crate::corpus::{self, Part, SYSTEM_LABELS};
use crate::keys::{GOOGLE_TOKEN_URL, JWT_BEARER, verify_rs256};
use crate::quota::{InflightGuard, Method, QuotaStyle};
use crate::rng::{h3, hash_bytes};
use crate::state::{State, TokenInfo, parse_hex_id};
use crate::tenant::{
    SCOPE_CLOUD, SCOPE_DIRECTORY, SCOPE_DIRECTORY_READONLY, SCOPE_GMAIL_METADATA,
    SCOPE_GMAIL_MODIFY, SCOPE_GMAIL_READONLY, SCOPE_MAIL, user_ts,
};

type St = AxState<Arc<State>>;

pub(crate) fn router(st: Arc<State>) -> Router {
    Router::new()
        .route("/token", post(token))
        .route("/oauth2/v4/token", post(token))
        .route("/o/oauth2/token", post(token))
        .route("/service_accounts/v1/jwk/{email}", get(jwk))
        .route("/robot/v1/metadata/jwk/{email}", get(jwk))
        .route("/admin/directory/v1/users", get(users_list))
        .route("/admin/directory/v1/users/{key}", get(users_get))
        .route("/gmail/v1/users/{u}/profile", get(profile))
        .route("/gmail/v1/users/{u}/messages", get(messages_list))
        .route("/gmail/v1/users/{u}/messages/{id}", get(messages_get))
        .route(
            "/gmail/v1/users/{u}/messages/{id}/attachments/{aid}",
            get(attachments_get),
        )
        .route("/gmail/v1/users/{u}/labels", get(labels_list))
        .route("/gmail/v1/users/{u}/labels/{id}", get(labels_get))
        .route("/gmail/v1/users/{u}/history", get(history_list))
        .route("/gmail/v1/users/{u}/threads", get(threads_list))
        .route("/gmail/v1/users/{u}/threads/{id}", get(threads_get))
        .route("/batch/gmail/v1", post(batch))
        .route("/batch", post(batch))
        .nest("/__admin", crate::admin::router())
        .fallback(|| async { ApiError::not_found() })
        .with_state(st)
}

// ---------------------------------------------------------------------------------------------
// Token endpoint

const KNOWN_SCOPE_PREFIXES: &[&str] = &[
    "https://www.googleapis.com/auth/",
    "https://mail.google.com/",
];

async fn token(AxState(st): St, headers: HeaderMap, body: Bytes) -> Response {
    let m = Method::Token;
    st.stats[m.index()].requests.fetch_add(1, Ordering::Relaxed);
    if let Some(f) = fault(&st, m, None, "/token").await {
        st.stats[m.index()].faults.fetch_add(1, Ordering::Relaxed);
        st.stats[m.index()].errors.fetch_add(1, Ordering::Relaxed);
        if f.status != 0 {
            let mut e = ApiError::oauth(
                f.status,
                f.reason.as_deref().unwrap_or("internal_failure"),
                f.message.unwrap_or_default(),
            );
            e.raw_body = f.body;
            return e.into_response();
        }
    }
    let _ = headers;
    match mint(&st, &body) {
        Ok(v) => json_response(&v),
        Err(e) => {
            st.stats[m.index()].errors.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(error = %e.reason, description = %e.message, "token request refused");
            e.into_response()
        }
    }
}

fn b64_json(seg: &str) -> Option<Value> {
    let bytes = URL_SAFE_NO_PAD.decode(seg.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

fn mint(st: &State, body: &[u8]) -> Result<Value, ApiError> {
    let form: Vec<(String, String)> = url::form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let field = |k: &str| form.iter().find(|(a, _)| a == k).map(|(_, v)| v.as_str());
    match field("grant_type") {
        Some(JWT_BEARER) => {}
        Some(g) => {
            return Err(ApiError::oauth(
                400,
                "unsupported_grant_type",
                format!("Invalid grant_type: {g}"),
            ));
        }
        None => {
            return Err(ApiError::oauth(
                400,
                "unsupported_grant_type",
                "Invalid grant_type: ",
            ));
        }
    }
    let Some(assertion) = field("assertion") else {
        return Err(ApiError::oauth(
            400,
            "invalid_request",
            "Missing required parameter: assertion",
        ));
    };
    let bad_sig = || ApiError::oauth(400, "invalid_grant", "Invalid JWT Signature.");
    let segs: Vec<&str> = assertion.split('.').collect();
    if segs.len() != 3 {
        return Err(bad_sig());
    }
    let header = b64_json(segs[0]).ok_or_else(bad_sig)?;
    if header.get("alg").and_then(Value::as_str) != Some("RS256") {
        return Err(bad_sig());
    }
    let claims = b64_json(segs[1]).ok_or_else(bad_sig)?;
    let t = &st.tenant;
    if claims.get("iss").and_then(Value::as_str) != Some(t.sa_email.as_str()) {
        return Err(ApiError::oauth(
            400,
            "invalid_grant",
            "Invalid grant: account not found",
        ));
    }
    if t.sa_disabled.load(Ordering::Relaxed) {
        return Err(ApiError::oauth(
            401,
            "disabled_client",
            "The OAuth client was disabled.",
        ));
    }
    if let Some(kid) = header.get("kid").and_then(Value::as_str)
        && kid != t.sa_key_id
    {
        return Err(bad_sig());
    }
    let sig = URL_SAFE_NO_PAD
        .decode(segs[2].trim_end_matches('='))
        .map_err(|_| bad_sig())?;
    let input_len = segs[0].len() + 1 + segs[1].len();
    if !verify_rs256(&st.key.public, &assertion.as_bytes()[..input_len], &sig) {
        return Err(bad_sig());
    }
    let aud = claims
        .get("aud")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let own = st.token_url();
    let accepted = [
        GOOGLE_TOKEN_URL,
        "https://www.googleapis.com/oauth2/v4/token",
        "https://accounts.google.com/o/oauth2/token",
        own.as_str(),
    ];
    if !accepted.contains(&aud) {
        return Err(ApiError::oauth(
            400,
            "invalid_grant",
            "Invalid JWT: Failed audience check.",
        ));
    }
    let now_s = st.now_ms() / 1000;
    let skew = st.cfg.clock_skew_secs;
    let iat = claims.get("iat").and_then(Value::as_i64);
    let exp = claims.get("exp").and_then(Value::as_i64);
    let timing_ok = match (iat, exp) {
        (Some(iat), Some(exp)) => {
            iat <= now_s + skew && exp > now_s - skew && exp > iat && exp - iat <= 3600
        }
        _ => false,
    };
    if !timing_ok {
        return Err(ApiError::oauth(
            400,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        ));
    }
    let scope = claims
        .get("scope")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let scopes: HashSet<String> = scope.split_whitespace().map(str::to_string).collect();
    if scopes.is_empty() {
        return Err(ApiError::oauth(
            400,
            "invalid_scope",
            "Empty or missing scope not allowed.",
        ));
    }
    if scopes
        .iter()
        .any(|s| !KNOWN_SCOPE_PREFIXES.iter().any(|p| s.starts_with(p)))
    {
        return Err(ApiError::oauth(
            400,
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        ));
    }
    let sub = claims.get("sub").and_then(Value::as_str);
    let user = match sub {
        Some(sub) => {
            let u = t
                .user_index(sub)
                .ok_or_else(|| ApiError::oauth(400, "invalid_grant", "Invalid email or User ID"))?;
            if t.is_suspended(u) {
                return Err(ApiError::oauth(
                    400,
                    "invalid_grant",
                    "Invalid email or User ID",
                ));
            }
            let grants = t.delegation.read().unwrap_or_else(|e| e.into_inner());
            let granted = grants.get(&t.sa_client_id);
            if !scopes
                .iter()
                .all(|s| granted.is_some_and(|g| g.contains(s)))
            {
                return Err(ApiError::oauth(
                    401,
                    "unauthorized_client",
                    "Client is unauthorized to retrieve access tokens using this method, or client not authorized for any of the scopes requested.",
                ));
            }
            Some(u)
        }
        None => None,
    };
    let n = st.token_counter.fetch_add(1, Ordering::Relaxed);
    let rnd = h3(st.cfg.seed, n, st.now_ms() as u64 ^ rand::random::<u64>());
    let token = format!(
        "ya29.sim.{}",
        URL_SAFE_NO_PAD.encode(format!("{rnd:016x}{n:x}{:016x}", rand::random::<u64>()))
    );
    let lifetime = st.cfg.token_lifetime_secs;
    st.tokens.insert(
        token.clone(),
        TokenInfo {
            user,
            scopes: Arc::new(scopes),
            expires_ms: st.now_ms() + lifetime * 1000,
        },
    );
    *st.tokens_minted
        .entry(sub.unwrap_or(&t.sa_email).to_lowercase())
        .or_insert(0) += 1;
    Ok(json!({"access_token": token, "expires_in": lifetime, "token_type": "Bearer"}))
}

/// The service account's public key as a JWK set (what Google serves for a service account).
async fn jwk(AxState(st): St, Path(email): Path<String>) -> Response {
    use rsa::traits::PublicKeyParts as _;
    if !email.eq_ignore_ascii_case(&st.tenant.sa_email) {
        return ApiError::not_found().into_response();
    }
    let k = &st.key.public;
    json_response(&json!({"keys": [{
        "kty": "RSA",
        "alg": "RS256",
        "use": "sig",
        "kid": st.tenant.sa_key_id,
        "n": URL_SAFE_NO_PAD.encode(k.n_bytes()),
        "e": URL_SAFE_NO_PAD.encode(k.e_bytes()),
    }]}))
}

// ---------------------------------------------------------------------------------------------
// Common request pipeline

async fn fault(
    st: &State,
    m: Method,
    user: Option<&str>,
    path: &str,
) -> Option<crate::quota::FaultRule> {
    let f = st.faults.check(st.cfg.seed, m, user, path)?;
    if f.delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(f.delay_ms)).await;
    }
    Some(f)
}

fn fault_error(f: crate::quota::FaultRule) -> ApiError {
    let mut e = ApiError::new(
        f.status,
        f.reason.as_deref().unwrap_or(default_reason(f.status)),
        f.message
            .clone()
            .unwrap_or_else(|| default_message(f.status).to_string()),
    );
    e.raw_body = f.body;
    e
}

fn bearer(headers: &HeaderMap, params: &Params) -> Option<String> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim().to_string());
        }
    }
    params.get("access_token").map(str::to_string)
}

fn authenticate(st: &State, headers: &HeaderMap, params: &Params) -> Result<TokenInfo, ApiError> {
    let Some(tok) = bearer(headers, params) else {
        return Err(ApiError::new(
            401,
            "required",
            "Request is missing required authentication credential. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
        )
        .header("www-authenticate", "Bearer realm=\"https://accounts.google.com/\"".into()));
    };
    let info = st.tokens.get(&tok).map(|r| r.value().clone());
    match info {
        Some(i) if i.expires_ms > st.now_ms() => Ok(i),
        Some(_) => {
            st.tokens.remove(&tok);
            Err(ApiError::unauthenticated())
        }
        None => Err(ApiError::unauthenticated()),
    }
}

fn insufficient() -> ApiError {
    ApiError::new(
        403,
        "insufficientPermissions",
        "Request had insufficient authentication scopes.",
    )
}

fn quota_error(st: &State, per_user: bool, retry_ms: i64) -> ApiError {
    let q = st.quota.read().unwrap_or_else(|e| e.into_inner()).clone();
    let mut e = match (q.style, per_user) {
        (QuotaStyle::Legacy403, true) => {
            ApiError::new(403, "userRateLimitExceeded", "User Rate Limit Exceeded").domain("usageLimits")
        }
        (QuotaStyle::Legacy403, false) => {
            ApiError::new(403, "rateLimitExceeded", "Rate Limit Exceeded").domain("usageLimits")
        }
        (QuotaStyle::RetryAfterText, true) => {
            let at = chrono::DateTime::from_timestamp_millis(st.now_ms() + retry_ms)
                .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
                .unwrap_or_default();
            ApiError::new(429, "rateLimitExceeded", format!("User-rate limit exceeded.  Retry after {at}"))
        }
        (_, user) => ApiError::new(
            429,
            "rateLimitExceeded",
            format!(
                "Quota exceeded for quota metric 'Queries' and limit 'Queries per minute{}' of service 'gmail.googleapis.com' for consumer 'project_number:{}'.",
                if user { " per user" } else { "" },
                st.tenant.sa_client_id.get(..12).unwrap_or("1")
            ),
        )
        .domain("usageLimits"),
    };
    if q.retry_after_header {
        e = e.header("retry-after", ((retry_ms + 999) / 1000).max(1).to_string());
    }
    e
}

/// An authorised Gmail call: token checked, user resolved, fault/quota applied.
struct GmailCall<'a> {
    user: usize,
    #[allow(dead_code)]
    token: TokenInfo,
    _guard: Option<InflightGuard<'a>>,
}

async fn gmail_call<'a>(
    st: &'a State,
    m: Method,
    user_path: &str,
    headers: &HeaderMap,
    params: &Params,
    path: &str,
) -> Result<GmailCall<'a>, ApiError> {
    let stats = &st.stats[m.index()];
    stats.requests.fetch_add(1, Ordering::Relaxed);
    let r = gmail_call_inner(st, m, user_path, headers, params, path).await;
    if r.is_err() {
        stats.errors.fetch_add(1, Ordering::Relaxed);
    }
    r
}

async fn gmail_call_inner<'a>(
    st: &'a State,
    m: Method,
    user_path: &str,
    headers: &HeaderMap,
    params: &Params,
    path: &str,
) -> Result<GmailCall<'a>, ApiError> {
    let token = authenticate(st, headers, params)?;
    let s = &token.scopes;
    let full = s.contains(SCOPE_GMAIL_READONLY)
        || s.contains(SCOPE_GMAIL_MODIFY)
        || s.contains(SCOPE_MAIL);
    if !full && !s.contains(SCOPE_GMAIL_METADATA) {
        return Err(insufficient());
    }
    if !full {
        let fmt = params.get("format").unwrap_or("full");
        if params.get("q").is_some() {
            return Err(ApiError::new(
                403,
                "forbidden",
                "Metadata scope does not support 'q' parameter",
            ));
        }
        if matches!(m, Method::MessagesGet | Method::ThreadsGet) && (fmt == "raw" || fmt == "full")
        {
            return Err(ApiError::new(
                403,
                "forbidden",
                format!("Metadata scope doesn't allow format {}", fmt.to_uppercase()),
            ));
        }
        if m == Method::AttachmentsGet {
            return Err(insufficient());
        }
    }
    let Some(subject) = token.user else {
        return Err(ApiError::bad(
            "failedPrecondition",
            "Precondition check failed.",
        ));
    };
    let subject_email = &st.tenant.users[subject].email;
    if user_path != "me" && !user_path.eq_ignore_ascii_case(subject_email) {
        return Err(ApiError::new(
            403,
            "forbidden",
            format!("Delegation denied for {subject_email}"),
        ));
    }
    if !st.tenant.flags[subject].mailbox.load(Ordering::Relaxed) {
        return Err(ApiError::bad(
            "failedPrecondition",
            "Mail service not enabled",
        ));
    }
    // A failing fault answers before quota is charged; a pure delay happens while the request
    // counts as in flight (so it interacts with the concurrency cap like real latency).
    let mut delay_ms = 0;
    if let Some(f) = st.faults.check(st.cfg.seed, m, Some(subject_email), path) {
        st.stats[m.index()].faults.fetch_add(1, Ordering::Relaxed);
        if f.status != 0 {
            if f.delay_ms > 0 {
                tokio::time::sleep(Duration::from_millis(f.delay_ms)).await;
            }
            return Err(fault_error(f));
        }
        delay_ms = f.delay_ms;
    }
    let rt = &st.users_rt[subject];
    rt.requests.fetch_add(1, Ordering::Relaxed);
    let mut guard = None;
    if st.quota_enabled.load(Ordering::Relaxed) {
        let q = st.quota.read().unwrap_or_else(|e| e.into_inner()).clone();
        if q.max_concurrent_per_user > 0 {
            let now_inflight = rt.inflight.fetch_add(1, Ordering::AcqRel) + 1;
            let g = InflightGuard(&rt.inflight);
            if now_inflight > q.max_concurrent_per_user {
                drop(g);
                st.stats[m.index()]
                    .concurrency_rejected
                    .fetch_add(1, Ordering::Relaxed);
                return Err(ApiError::new(
                    429,
                    "rateLimitExceeded",
                    "Too many concurrent requests for user",
                ));
            }
            rt.peak_inflight.fetch_max(now_inflight, Ordering::Relaxed);
            guard = Some(g);
        }
        let now = st.now_ms();
        let units = m.units();
        if let Err(retry) = rt
            .gmail
            .try_take(now, q.user_window_ms, q.user_units, units)
        {
            st.stats[m.index()]
                .throttled
                .fetch_add(1, Ordering::Relaxed);
            return Err(quota_error(st, true, retry));
        }
        if let Err(retry) = st
            .project
            .try_take(now, q.project_window_ms, q.project_units, units)
        {
            st.stats[m.index()]
                .throttled
                .fetch_add(1, Ordering::Relaxed);
            return Err(quota_error(st, false, retry));
        }
    } else {
        let n = rt.inflight.fetch_add(1, Ordering::AcqRel) + 1;
        rt.peak_inflight.fetch_max(n, Ordering::Relaxed);
        guard = Some(InflightGuard(&rt.inflight));
    }
    st.stats[m.index()]
        .units
        .fetch_add(m.units(), Ordering::Relaxed);
    if delay_ms > 0 {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
    }
    Ok(GmailCall {
        user: subject,
        token,
        _guard: guard,
    })
}

fn finish(v: Value, params: &Params) -> Response {
    match params.get("fields") {
        Some(f) if !f.is_empty() => match parse_mask(f) {
            Ok(m) => json_response(&apply_mask(v, &m)),
            Err(e) => e.into_response(),
        },
        _ => json_response(&v),
    }
}

fn respond(st: &State, m: Method, r: Result<Value, ApiError>, params: &Params) -> Response {
    match r {
        Ok(v) => finish(v, params),
        Err(e) => {
            if e.status >= 400 {
                st.stats[m.index()].errors.fetch_add(1, Ordering::Relaxed);
            }
            e.into_response()
        }
    }
}

fn hex(id: u64) -> String {
    format!("{id:x}")
}

// ---------------------------------------------------------------------------------------------
// Gmail handlers

async fn profile(
    AxState(st): St,
    Path(u): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref());
    let m = Method::GetProfile;
    let call = match gmail_call(&st, m, &u, &headers, &p, "/profile").await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let mb = st.read_mb(call.user);
    let v = json!({
        "emailAddress": st.tenant.users[call.user].email,
        "messagesTotal": mb.msgs.len(),
        "threadsTotal": mb.thread_count(),
        "historyId": mb.history_id.to_string(),
    });
    drop(mb);
    finish(v, &p)
}

fn query_hash(parts: &[&str]) -> u64 {
    hash_bytes(7, parts.join("\u{1}").as_bytes())
}

async fn messages_list(
    AxState(st): St,
    Path(u): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref());
    let m = Method::MessagesList;
    let call = match gmail_call(&st, m, &u, &headers, &p, "/messages").await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let r = (|| {
        let max = p.max_results(100, 500)?;
        let include = p.bool("includeSpamTrash")?;
        let labels = p.all("labelIds");
        let qs = p.get("q").filter(|s| !s.trim().is_empty());
        let qh = query_hash(&[
            qs.unwrap_or(""),
            &labels.join(","),
            if include { "1" } else { "0" },
        ]);
        let after = match p.get("pageToken").filter(|t| !t.is_empty()) {
            Some(t) => Some(read_page_token(st.page_secret, 1, qh, t)?),
            None => None,
        };
        let (page, more, total) = st
            .search(call.user, qs, &labels, include, after, max)
            .map_err(|e| ApiError::bad("invalidArgument", e.to_string()))?;
        let mut v = json!({});
        if !page.is_empty() {
            v["messages"] = page
                .iter()
                .map(|(id, t, _)| json!({"id": hex(*id), "threadId": hex(*t)}))
                .collect();
        }
        if more && let Some((id, _, ms)) = page.last() {
            v["nextPageToken"] = make_page_token(st.page_secret, 1, *ms, *id, qh).into();
        }
        v["resultSizeEstimate"] = total.into();
        Ok(v)
    })();
    respond(&st, m, r, &p)
}

/// Gmail-style attachment id for a part.
fn attachment_id(secret: u64, msg: u64, part_id: &str) -> String {
    let h = h3(secret, msg, hash_bytes(1, part_id.as_bytes()));
    let tail: String = part_id.bytes().map(|b| format!("{b:02x}")).collect();
    format!("ANGjdJ{h:016x}{:016x}{tail}", h3(h, 2, 3))
}

fn part_id_of_attachment(secret: u64, msg: u64, aid: &str) -> Option<String> {
    let rest = aid.strip_prefix("ANGjdJ")?;
    let tail = rest.get(32..)?;
    let bytes: Option<Vec<u8>> = (0..tail.len())
        .step_by(2)
        .map(|i| {
            tail.get(i..i + 2)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        })
        .collect();
    let part = String::from_utf8(bytes?).ok()?;
    (attachment_id(secret, msg, &part) == aid).then_some(part)
}

fn part_json(
    p: &Part,
    part_id: &str,
    secret: u64,
    msg: u64,
    out_headers: Option<&[String]>,
) -> Value {
    let headers: Vec<Value> = p
        .headers
        .iter()
        .filter(|(n, _, _)| {
            out_headers.is_none_or(|hs| hs.iter().any(|h| h.eq_ignore_ascii_case(n)))
        })
        .map(|(n, _, d)| json!({"name": n, "value": d}))
        .collect();
    let mut v = json!({
        "partId": part_id,
        "mimeType": p.mime,
        "filename": p.filename,
        "headers": headers,
    });
    if out_headers.is_some() {
        return v;
    }
    if !p.children.is_empty() {
        v["body"] = json!({"size": 0});
        let kids: Vec<Value> = p
            .children
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let id = if part_id.is_empty() {
                    i.to_string()
                } else {
                    format!("{part_id}.{i}")
                };
                part_json(c, &id, secret, msg, None)
            })
            .collect();
        v["parts"] = Value::Array(kids);
    } else if !p.filename.is_empty() {
        v["body"] =
            json!({"attachmentId": attachment_id(secret, msg, part_id), "size": p.body.len()});
    } else {
        v["body"] = json!({"size": p.body.len(), "data": URL_SAFE_NO_PAD.encode(&p.body)});
    }
    v
}

fn find_part<'a>(p: &'a Part, part_id: &str) -> Option<&'a Part> {
    if part_id.is_empty() {
        return Some(p);
    }
    let mut cur = p;
    for seg in part_id.split('.') {
        let i: usize = seg.parse().ok()?;
        cur = cur.children.get(i)?;
    }
    Some(cur)
}

fn message_json(
    st: &State,
    u: usize,
    msg: &corpus::Msg,
    label_ids: Vec<String>,
    p: &Params,
) -> Result<Value, ApiError> {
    let format = p.get("format").unwrap_or("full").to_ascii_lowercase();
    let spec = st.spec(u, msg);
    let mut v = json!({
        "id": hex(msg.id),
        "threadId": hex(msg.thread_id),
        "labelIds": label_ids,
        "snippet": corpus::snippet(&spec),
        "sizeEstimate": msg.size,
        "historyId": msg.history_id.to_string(),
        "internalDate": msg.internal_ms.to_string(),
    });
    match format.as_str() {
        "minimal" => {}
        "raw" => {
            let raw = corpus::render(&corpus::build_tree(&spec, msg.id));
            v["raw"] = if st.cfg.raw_padding {
                URL_SAFE.encode(&raw)
            } else {
                URL_SAFE_NO_PAD.encode(&raw)
            }
            .into();
        }
        "metadata" => {
            let tree = corpus::build_tree(&spec, msg.id);
            let hs = p.all("metadataHeaders");
            let mut pj = part_json(&tree, "", st.page_secret, msg.id, Some(&hs));
            if hs.is_empty() {
                pj = part_json(
                    &tree,
                    "",
                    st.page_secret,
                    msg.id,
                    Some(&all_header_names(&tree)),
                );
            }
            v["payload"] = pj;
        }
        "full" => {
            let tree = corpus::build_tree(&spec, msg.id);
            v["payload"] = part_json(&tree, "", st.page_secret, msg.id, None);
        }
        other => {
            return Err(ApiError::bad(
                "invalidArgument",
                format!("Invalid value at 'format' ({other})"),
            ));
        }
    }
    Ok(v)
}

fn all_header_names(p: &Part) -> Vec<String> {
    p.headers.iter().map(|(n, _, _)| n.clone()).collect()
}

async fn messages_get(
    AxState(st): St,
    Path((u, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref());
    let m = Method::MessagesGet;
    let call = match gmail_call(&st, m, &u, &headers, &p, "/messages/").await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let r = (|| {
        let id =
            parse_hex_id(&id).map_err(|_| ApiError::bad("invalidArgument", "Invalid id value"))?;
        let (msg, labels, rendered) = {
            let mb = st.read_mb_fast(call.user);
            let msg = mb.msgs.get(&id).cloned().ok_or_else(ApiError::not_found)?;
            let labels = mb.label_ids(msg.labels);
            let rendered = mb.rendered.get(&id).cloned();
            (msg, labels, rendered)
        };
        if p.get("fields").is_none()
            && p.get("format")
                .is_some_and(|f| f.eq_ignore_ascii_case("raw"))
        {
            // hot path: the answer is written straight into one buffer
            let rendered = rendered.unwrap_or_else(|| st.render(call.user, &msg));
            let body = raw_message_json(
                &msg,
                &labels,
                &rendered.snippet,
                &rendered.raw,
                st.cfg.raw_padding,
            );
            return Ok(GetOut::Raw(body));
        }
        message_json(&st, call.user, &msg, labels, &p).map(GetOut::Json)
    })();
    match r {
        Ok(GetOut::Raw(raw)) => {
            let mut resp = Response::new(Body::from(raw));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json; charset=UTF-8"),
            );
            resp
        }
        Ok(GetOut::Json(v)) => respond(&st, m, Ok(v), &p),
        Err(e) => respond(&st, m, Err(e), &p),
    }
}

enum GetOut {
    Json(Value),
    Raw(Vec<u8>),
}

/// The `messages.get?format=raw` answer (the same JSON as [`message_json`] gives), written
/// straight into one buffer: the base64url of the message, nearly all of the answer, needs no
/// JSON escaping, so it is encoded in place instead of being built as a string and escaped.
fn raw_message_json(
    msg: &corpus::Msg,
    labels: &[String],
    snippet: &str,
    raw: &[u8],
    padded: bool,
) -> Vec<u8> {
    use std::io::Write as _;
    let engine = if padded {
        &base64_simd::URL_SAFE
    } else {
        &base64_simd::URL_SAFE_NO_PAD
    };
    let encoded_len = engine.encoded_length(raw.len());
    let mut out = Vec::with_capacity(encoded_len + snippet.len() * 2 + 256);
    // Writing into a Vec cannot fail; strings go through serde_json for escaping.
    let _ = write!(
        out,
        "{{\"id\":\"{}\",\"threadId\":\"{}\",\"labelIds\":",
        hex(msg.id),
        hex(msg.thread_id)
    );
    let _ = serde_json::to_writer(&mut out, labels);
    out.extend_from_slice(b",\"snippet\":");
    let _ = serde_json::to_writer(&mut out, snippet);
    let _ = write!(
        out,
        ",\"sizeEstimate\":{},\"historyId\":\"{}\",\"internalDate\":\"{}\",\"raw\":\"",
        msg.size, msg.history_id, msg.internal_ms
    );
    // base64url written in place (SIMD, into the spare capacity: no zero-fill first): most of
    // the answer, and no JSON escaping needed.
    engine.encode_append(raw, &mut out);
    out.extend_from_slice(b"\"}");
    out
}

async fn attachments_get(
    AxState(st): St,
    Path((u, id, aid)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref());
    let m = Method::AttachmentsGet;
    let call = match gmail_call(&st, m, &u, &headers, &p, "/attachments/").await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let r = (|| {
        let id =
            parse_hex_id(&id).map_err(|_| ApiError::bad("invalidArgument", "Invalid id value"))?;
        let msg = st
            .read_mb_fast(call.user)
            .msgs
            .get(&id)
            .cloned()
            .ok_or_else(ApiError::not_found)?;
        let part_id = part_id_of_attachment(st.page_secret, id, &aid)
            .ok_or_else(|| ApiError::bad("invalidArgument", "Invalid attachment token"))?;
        let tree = corpus::build_tree(&st.spec(call.user, &msg), msg.id);
        let part = find_part(&tree, &part_id).ok_or_else(ApiError::not_found)?;
        Ok(json!({"size": part.body.len(), "data": URL_SAFE_NO_PAD.encode(&part.body)}))
    })();
    respond(&st, m, r, &p)
}

fn label_json(id: &str, name: &str, system: bool) -> Value {
    let mut v = json!({"id": id, "name": name, "type": if system { "system" } else { "user" }});
    if !system
        || matches!(
            id,
            "INBOX" | "SENT" | "DRAFT" | "SPAM" | "TRASH" | "STARRED" | "IMPORTANT" | "UNREAD"
        )
    {
        v["messageListVisibility"] = if system { "hide" } else { "show" }.into();
        v["labelListVisibility"] = "labelShow".into();
    }
    v
}

async fn labels_list(
    AxState(st): St,
    Path(u): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref());
    let m = Method::LabelsList;
    let call = match gmail_call(&st, m, &u, &headers, &p, "/labels").await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let mb = st.read_mb_fast(call.user);
    let mut labels: Vec<Value> = SYSTEM_LABELS
        .iter()
        .map(|l| label_json(l, l, true))
        .collect();
    labels.extend(
        mb.user_labels
            .iter()
            .map(|l| label_json(&l.id, &l.name, false)),
    );
    drop(mb);
    finish(json!({"labels": labels}), &p)
}

async fn labels_get(
    AxState(st): St,
    Path((u, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref());
    let m = Method::LabelsGet;
    let call = match gmail_call(&st, m, &u, &headers, &p, "/labels/").await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let r = (|| {
        let mb = st.read_mb_fast(call.user);
        let bit = mb.label_bit(&id).ok_or_else(ApiError::not_found)?;
        let system = SYSTEM_LABELS.iter().any(|s| *s == id);
        let name = if system {
            id.clone()
        } else {
            mb.user_labels
                .iter()
                .find(|l| l.id == id)
                .map(|l| l.name.clone())
                .unwrap_or_default()
        };
        let mut total = 0;
        let mut unread = 0;
        let mut threads = HashSet::new();
        let mut uthreads = HashSet::new();
        for msg in mb.msgs.values().filter(|m| m.labels & bit != 0) {
            total += 1;
            threads.insert(msg.thread_id);
            if msg.labels & corpus::L_UNREAD != 0 {
                unread += 1;
                uthreads.insert(msg.thread_id);
            }
        }
        let mut v = label_json(&id, &name, system);
        v["messagesTotal"] = total.into();
        v["messagesUnread"] = unread.into();
        v["threadsTotal"] = threads.len().into();
        v["threadsUnread"] = uthreads.len().into();
        Ok(v)
    })();
    respond(&st, m, r, &p)
}

async fn history_list(
    AxState(st): St,
    Path(u): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref());
    let m = Method::HistoryList;
    let call = match gmail_call(&st, m, &u, &headers, &p, "/history").await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let r = (|| {
        let start: u64 = p
            .get("startHistoryId")
            .ok_or_else(|| {
                ApiError::bad(
                    "invalidArgument",
                    "Missing required parameter: startHistoryId",
                )
            })?
            .parse()
            .map_err(|_| ApiError::bad("invalidArgument", "Invalid startHistoryId"))?;
        let max = p.max_results(100, 500)?;
        let types = p.all("historyTypes");
        let label = p.get("labelId").map(str::to_string);
        let qh = query_hash(&[
            &start.to_string(),
            &types.join(","),
            label.as_deref().unwrap_or(""),
        ]);
        let cursor = match p.get("pageToken").filter(|t| !t.is_empty()) {
            Some(t) => Some(read_page_token(st.page_secret, 2, qh, t)?.1),
            None => None,
        };
        let mb = st.read_mb(call.user);
        if start < mb.floor || start > mb.history_id {
            return Err(ApiError::not_found());
        }
        let label_bit =
            match &label {
                Some(l) => Some(mb.label_bit(l).ok_or_else(|| {
                    ApiError::bad("invalidArgument", format!("Invalid label: {l}"))
                })?),
                None => None,
            };
        let from = cursor.unwrap_or(start).max(start);
        let mut out = Vec::new();
        let mut more = false;
        let mut last = 0;
        for rec in mb.history.iter().filter(|r| r.id > from) {
            use crate::mailbox::HistKind;
            let tname = match rec.kind {
                HistKind::Added => "messageAdded",
                HistKind::Deleted => "messageDeleted",
                HistKind::LabelsAdded(_) => "labelAdded",
                HistKind::LabelsRemoved(_) => "labelRemoved",
            };
            if !types.is_empty() && !types.iter().any(|t| t == tname) {
                continue;
            }
            if let Some(b) = label_bit {
                let changed = match rec.kind {
                    HistKind::LabelsAdded(x) | HistKind::LabelsRemoved(x) => x,
                    _ => 0,
                };
                if (rec.labels_after | changed) & b == 0 {
                    continue;
                }
            }
            if out.len() >= max {
                more = true;
                break;
            }
            let mref = json!({"id": hex(rec.msg_id), "threadId": hex(rec.thread_id)});
            let with_labels = json!({"id": hex(rec.msg_id), "threadId": hex(rec.thread_id), "labelIds": mb.label_ids(rec.labels_after)});
            let mut h = json!({"id": rec.id.to_string(), "messages": [mref]});
            match rec.kind {
                HistKind::Added => h["messagesAdded"] = json!([{"message": with_labels}]),
                HistKind::Deleted => h["messagesDeleted"] = json!([{"message": with_labels}]),
                HistKind::LabelsAdded(x) => {
                    h["labelsAdded"] =
                        json!([{"message": with_labels, "labelIds": mb.label_ids(x)}])
                }
                HistKind::LabelsRemoved(x) => {
                    h["labelsRemoved"] =
                        json!([{"message": with_labels, "labelIds": mb.label_ids(x)}])
                }
            }
            last = rec.id;
            out.push(h);
        }
        let mut v = json!({});
        if !out.is_empty() {
            v["history"] = Value::Array(out);
        }
        if more {
            v["nextPageToken"] = make_page_token(st.page_secret, 2, 0, last, qh).into();
        }
        v["historyId"] = mb.history_id.to_string().into();
        Ok(v)
    })();
    respond(&st, m, r, &p)
}

async fn threads_list(
    AxState(st): St,
    Path(u): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref());
    let m = Method::ThreadsList;
    let call = match gmail_call(&st, m, &u, &headers, &p, "/threads").await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let r = (|| {
        let max = p.max_results(100, 500)?;
        let include = p.bool("includeSpamTrash")?;
        let labels = p.all("labelIds");
        let qs = p.get("q").filter(|s| !s.trim().is_empty());
        let qh = query_hash(&[
            qs.unwrap_or(""),
            &labels.join(","),
            if include { "1" } else { "0" },
            "t",
        ]);
        let offset = match p.get("pageToken").filter(|t| !t.is_empty()) {
            Some(t) => read_page_token(st.page_secret, 3, qh, t)?.1 as usize,
            None => 0,
        };
        let (all, _, _) = st
            .search(call.user, qs, &labels, include, None, usize::MAX)
            .map_err(|e| ApiError::bad("invalidArgument", e.to_string()))?;
        // threads ordered by their newest matching message
        let mut seen = HashSet::new();
        let threads: Vec<u64> = all
            .iter()
            .filter(|(_, t, _)| seen.insert(*t))
            .map(|(_, t, _)| *t)
            .collect();
        let mb = st.read_mb_fast(call.user);
        let page: Vec<Value> = threads
            .iter()
            .skip(offset)
            .take(max)
            .map(|t| {
                let newest = mb
                    .msgs
                    .values()
                    .filter(|m| m.thread_id == *t)
                    .max_by_key(|m| (m.internal_ms, m.id));
                let (snip, hid) = match newest {
                    Some(n) => (corpus::snippet(&st.spec(call.user, n)), n.history_id),
                    None => (String::new(), 0),
                };
                let hid = mb
                    .msgs
                    .values()
                    .filter(|m| m.thread_id == *t)
                    .map(|m| m.history_id)
                    .max()
                    .unwrap_or(hid);
                json!({"id": hex(*t), "snippet": snip, "historyId": hid.to_string()})
            })
            .collect();
        let mut v = json!({});
        let n = page.len();
        if n > 0 {
            v["threads"] = Value::Array(page);
        }
        if offset + n < threads.len() {
            v["nextPageToken"] =
                make_page_token(st.page_secret, 3, 0, (offset + n) as u64, qh).into();
        }
        v["resultSizeEstimate"] = threads.len().into();
        Ok(v)
    })();
    respond(&st, m, r, &p)
}

async fn threads_get(
    AxState(st): St,
    Path((u, id)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref());
    let m = Method::ThreadsGet;
    let call = match gmail_call(&st, m, &u, &headers, &p, "/threads/").await {
        Ok(c) => c,
        Err(e) => return e.into_response(),
    };
    let r = (|| {
        if p.get("format")
            .is_some_and(|f| f.eq_ignore_ascii_case("raw"))
        {
            return Err(ApiError::bad(
                "invalidArgument",
                "Invalid value at 'format' (raw)",
            ));
        }
        let tid =
            parse_hex_id(&id).map_err(|_| ApiError::bad("invalidArgument", "Invalid id value"))?;
        let msgs: Vec<(corpus::Msg, Vec<String>)> = {
            let mb = st.read_mb_fast(call.user);
            let mut v: Vec<_> = mb
                .msgs
                .values()
                .filter(|m| m.thread_id == tid)
                .map(|m| (m.clone(), mb.label_ids(m.labels)))
                .collect();
            v.sort_by_key(|(m, _)| (m.internal_ms, m.id));
            v
        };
        if msgs.is_empty() {
            return Err(ApiError::not_found());
        }
        let hid = msgs.iter().map(|(m, _)| m.history_id).max().unwrap_or(0);
        let items: Result<Vec<Value>, ApiError> = msgs
            .iter()
            .map(|(m, l)| message_json(&st, call.user, m, l.clone(), &p))
            .collect();
        Ok(json!({"id": hex(tid), "historyId": hid.to_string(), "messages": items?}))
    })();
    respond(&st, m, r, &p)
}

// ---------------------------------------------------------------------------------------------
// Directory

fn directory_auth(
    st: &State,
    m: Method,
    headers: &HeaderMap,
    p: &Params,
) -> Result<usize, ApiError> {
    let tok = authenticate(st, headers, p)?;
    let s = &tok.scopes;
    if !(s.contains(SCOPE_DIRECTORY_READONLY)
        || s.contains(SCOPE_DIRECTORY)
        || s.contains(SCOPE_CLOUD))
    {
        return Err(insufficient());
    }
    let forbidden = || {
        ApiError::new(
            403,
            "forbidden",
            "Not Authorized to access this resource/api",
        )
    };
    let u = tok.user.ok_or_else(forbidden)?;
    if !st.tenant.flags[u].admin.load(Ordering::Relaxed) {
        return Err(forbidden());
    }
    if st.quota_enabled.load(Ordering::Relaxed) {
        let q = st.quota.read().unwrap_or_else(|e| e.into_inner()).clone();
        if st.users_rt[u]
            .directory
            .try_take(st.now_ms(), 60_000, q.directory_per_minute, 1)
            .is_err()
        {
            st.stats[m.index()]
                .throttled
                .fetch_add(1, Ordering::Relaxed);
            return Err(
                ApiError::new(403, "userRateLimitExceeded", "User Rate Limit Exceeded")
                    .domain("usageLimits"),
            );
        }
    }
    Ok(u)
}

fn user_json(st: &State, i: usize) -> Value {
    let info = st.tenant.info(i);
    let ident = &st.tenant.users[i];
    let mut v = json!({
        "kind": "admin#directory#user",
        "id": info.id,
        "etag": format!("\"sim-{:x}\"", hash_bytes(2, info.id.as_bytes())),
        "primaryEmail": info.primary_email,
        "name": {"givenName": info.given_name, "familyName": info.family_name, "fullName": ident.full_name()},
        "isAdmin": info.is_admin,
        "isDelegatedAdmin": false,
        "lastLoginTime": user_ts(ident.creation_ms + 86_400_000 * 30),
        "creationTime": info.creation_time,
        "agreedToTerms": true,
        "suspended": info.suspended,
        "archived": false,
        "changePasswordAtNextLogin": false,
        "ipWhitelisted": false,
        "emails": [{"address": info.primary_email, "primary": true}],
        "customerId": st.tenant.customer_id,
        "orgUnitPath": ident.org_unit,
        "isMailboxSetup": info.is_mailbox_setup,
        "isEnrolledIn2Sv": false,
        "isEnforcedIn2Sv": false,
        "includeInGlobalAddressList": true,
    });
    if info.suspended {
        v["suspensionReason"] = "ADMIN".into();
    }
    v
}

fn user_matches(st: &State, i: usize, query: &str) -> bool {
    let info = st.tenant.info(i);
    let ident = &st.tenant.users[i];
    query.split_whitespace().all(|term| {
        let (k, v, op) = match term.find([':', '=']) {
            Some(pos) => (&term[..pos], &term[pos + 1..], &term[pos..pos + 1]),
            None => ("", term, ":"),
        };
        let v = v.trim_matches(['\'', '"']).to_lowercase();
        let text = |field: &str| {
            let f = field.to_lowercase();
            match v.strip_suffix('*') {
                Some(prefix) => f.starts_with(prefix),
                None if op == "=" => f == v,
                None => f == v || f.split(['@', '.', ' ']).any(|w| w == v),
            }
        };
        match k {
            "email" => text(&info.primary_email),
            "givenName" => text(&info.given_name),
            "familyName" => text(&info.family_name),
            "name" => text(&ident.full_name()),
            "isSuspended" => info.suspended.to_string() == v,
            "isAdmin" => info.is_admin.to_string() == v,
            "orgUnitPath" => ident.org_unit.to_lowercase() == v,
            "" => text(&info.primary_email) || text(&ident.full_name()),
            _ => true,
        }
    })
}

async fn users_list(AxState(st): St, RawQuery(q): RawQuery, headers: HeaderMap) -> Response {
    let p = Params::parse(q.as_deref());
    let m = Method::DirectoryUsersList;
    st.stats[m.index()].requests.fetch_add(1, Ordering::Relaxed);
    if let Some(f) = fault(&st, m, None, "/admin/directory/v1/users").await {
        st.stats[m.index()].faults.fetch_add(1, Ordering::Relaxed);
        if f.status != 0 {
            st.stats[m.index()].errors.fetch_add(1, Ordering::Relaxed);
            return fault_error(f).into_response();
        }
    }
    let r = (|| {
        directory_auth(&st, m, &headers, &p)?;
        let t = &st.tenant;
        match (p.get("customer"), p.get("domain")) {
            (None, None) => return Err(ApiError::bad("badRequest", "Bad Request")),
            (Some(c), _) if c != "my_customer" && c != t.customer_id => {
                return Err(ApiError::bad("badRequest", "Bad Request"));
            }
            (_, Some(d)) if !d.eq_ignore_ascii_case(&t.domain) => {
                return Err(ApiError::new(
                    403,
                    "forbidden",
                    "Not Authorized to access this resource/api",
                ));
            }
            _ => {}
        }
        let max = match p.get("maxResults") {
            None => 100,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if (1..=500).contains(&n) => n,
                _ => return Err(ApiError::bad("invalid", "Invalid Value")),
            },
        };
        let order = p.get("orderBy").unwrap_or("email");
        let desc = match p.get("sortOrder") {
            None => false,
            Some(s) if s.eq_ignore_ascii_case("ASCENDING") => false,
            Some(s) if s.eq_ignore_ascii_case("DESCENDING") => true,
            Some(_) => return Err(ApiError::bad("invalid", "Invalid Value")),
        };
        let query = p.get("query").unwrap_or("");
        let mut idx: Vec<usize> = (0..t.users.len())
            .filter(|i| user_matches(&st, *i, query))
            .collect();
        let key = |i: &usize| -> (String, String) {
            let u = &t.users[*i];
            let k = match order {
                "givenName" => u.given.to_lowercase(),
                "familyName" => u.family.to_lowercase(),
                _ => String::new(),
            };
            (k, u.email.clone())
        };
        match order {
            "email" | "givenName" | "familyName" => idx.sort_by_key(key),
            _ => return Err(ApiError::bad("invalid", "Invalid Value")),
        }
        if desc {
            idx.reverse();
        }
        let qh = query_hash(&[
            p.get("customer").unwrap_or(""),
            p.get("domain").unwrap_or(""),
            order,
            query,
            if desc { "d" } else { "a" },
        ]);
        let offset = match p.get("pageToken").filter(|s| !s.is_empty()) {
            Some(tok) => read_page_token(st.page_secret, 4, qh, tok)?.1 as usize,
            None => 0,
        };
        let page: Vec<Value> = idx
            .iter()
            .skip(offset)
            .take(max)
            .map(|i| user_json(&st, *i))
            .collect();
        let n = page.len();
        let mut v = json!({"kind": "admin#directory#users", "etag": "\"sim-users\""});
        if n > 0 {
            v["users"] = Value::Array(page);
        }
        if offset + n < idx.len() {
            v["nextPageToken"] =
                make_page_token(st.page_secret, 4, 0, (offset + n) as u64, qh).into();
        }
        Ok(v)
    })();
    respond(&st, m, r, &p)
}

async fn users_get(
    AxState(st): St,
    Path(key): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    let p = Params::parse(q.as_deref());
    let m = Method::DirectoryUsersGet;
    st.stats[m.index()].requests.fetch_add(1, Ordering::Relaxed);
    let r = (|| {
        directory_auth(&st, m, &headers, &p)?;
        let t = &st.tenant;
        let i = t
            .user_index(&key)
            .or_else(|| t.users.iter().position(|u| u.id == key))
            .ok_or_else(|| ApiError::new(404, "notFound", "Resource Not Found: userKey"))?;
        Ok(user_json(&st, i))
    })();
    respond(&st, m, r, &p)
}

// ---------------------------------------------------------------------------------------------
// Batch

const MAX_BATCH: usize = 100;

struct InnerReq {
    content_id: Option<String>,
    method: String,
    target: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn split_head(s: &[u8]) -> (&[u8], &[u8]) {
    for (i, w) in s.windows(4).enumerate() {
        if w == b"\r\n\r\n" {
            return (&s[..i], &s[i + 4..]);
        }
    }
    for (i, w) in s.windows(2).enumerate() {
        if w == b"\n\n" {
            return (&s[..i], &s[i + 2..]);
        }
    }
    (s, &[])
}

fn header_lines(h: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(h)
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || hay.len() < needle.len() {
        return None;
    }
    (from..=hay.len() - needle.len()).find(|&i| &hay[i..i + needle.len()] == needle)
}

fn parse_batch(content_type: &str, body: &[u8]) -> Result<Vec<InnerReq>, ApiError> {
    let bad = |m: &str| ApiError::bad("badRequest", m.to_string());
    if !content_type
        .to_ascii_lowercase()
        .starts_with("multipart/mixed")
    {
        return Err(bad("Bad Request"));
    }
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("boundary"))
        .map(|(_, v)| v.trim().trim_matches('"').to_string())
        .ok_or_else(|| bad("Missing boundary"))?;
    let delim = format!("--{boundary}");
    let mut pos = find(body, delim.as_bytes(), 0).ok_or_else(|| bad("Bad Request"))?;
    let mut out = Vec::new();
    loop {
        let after = pos + delim.len();
        if body.get(after..after + 2) == Some(b"--") {
            break;
        }
        let start = after;
        let next = find(body, delim.as_bytes(), start);
        let end = next.unwrap_or(body.len());
        let part = &body[start..end];
        let part = part
            .strip_prefix(b"\r\n")
            .or_else(|| part.strip_prefix(b"\n"))
            .unwrap_or(part);
        let (ph, inner) = split_head(part);
        let ph = header_lines(ph);
        let content_id = ph
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-id"))
            .map(|(_, v)| v.clone());
        let (ih, ibody) = split_head(inner);
        let ih_text = String::from_utf8_lossy(ih).to_string();
        let mut lines = ih_text.lines();
        let request_line = lines.next().unwrap_or("").trim().to_string();
        let mut rl = request_line.split_whitespace();
        let method = rl.next().unwrap_or("").to_string();
        let target = rl.next().unwrap_or("").to_string();
        if method.is_empty() || target.is_empty() {
            return Err(bad("Bad Request"));
        }
        let headers = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
            .collect();
        let mut b = ibody.to_vec();
        while b.ends_with(b"\r\n") || b.ends_with(b"\n") {
            let n = if b.ends_with(b"\r\n") { 2 } else { 1 };
            b.truncate(b.len() - n);
        }
        out.push(InnerReq {
            content_id,
            method,
            target,
            headers,
            body: b,
        });
        match next {
            Some(n) => pos = n,
            None => break,
        }
    }
    Ok(out)
}

async fn batch(AxState(st): St, headers: HeaderMap, body: Bytes) -> Response {
    let m = Method::Batch;
    st.stats[m.index()].requests.fetch_add(1, Ordering::Relaxed);
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let parts = match parse_batch(&ct, &body) {
        Ok(p) => p,
        Err(e) => {
            st.stats[m.index()].errors.fetch_add(1, Ordering::Relaxed);
            return e.into_response();
        }
    };
    if parts.len() > MAX_BATCH {
        st.stats[m.index()].errors.fetch_add(1, Ordering::Relaxed);
        return ApiError::bad(
            "badRequest",
            format!(
                "Inner request count exceeds the limit. Received: {}, Limit: {MAX_BATCH}",
                parts.len()
            ),
        )
        .into_response();
    }
    st.batch_calls.fetch_add(1, Ordering::Relaxed);
    st.batch_parts
        .fetch_add(parts.len() as u64, Ordering::Relaxed);
    st.batch_max
        .fetch_max(parts.len() as u64, Ordering::Relaxed);
    let Some(router) = st.router.get().cloned() else {
        return ApiError::new(500, "backendError", "router not ready").into_response();
    };
    let auth = headers.get(header::AUTHORIZATION).cloned();
    let futs = parts.iter().map(|part| {
        let router = router.clone();
        let auth = auth.clone();
        let st = st.clone();
        async move {
            let mut target = part.target.clone();
            if let Some(rest) = target
                .strip_prefix("https://")
                .or_else(|| target.strip_prefix("http://"))
            {
                target = rest
                    .find('/')
                    .map(|i| rest[i..].to_string())
                    .unwrap_or_else(|| "/".into());
            }
            if !target.starts_with("/gmail/v1/") {
                return (
                    400u16,
                    Bytes::from(
                        ApiError::bad("badRequest", "Batch requests must target the Gmail API")
                            .body_json()
                            .to_string(),
                    ),
                );
            }
            // Nearly every part of a batch is a `messages.get`: it goes to its handler
            // directly, with the path parameters and headers the router would give it.
            if let Some((u, id, query)) = messages_get_target(&part.method, &target)
                && let Some(headers) = part_headers(&part.headers, auth.as_ref())
            {
                let resp = messages_get(AxState(st), Path((u, id)), RawQuery(query), headers).await;
                return (resp.status().as_u16(), body_bytes(resp).await);
            }
            let mut req = Request::builder().method(part.method.as_str()).uri(&target);
            let mut has_auth = false;
            for (k, v) in &part.headers {
                if k.eq_ignore_ascii_case("authorization") {
                    has_auth = true;
                }
                req = req.header(k.as_str(), v.as_str());
            }
            if !has_auth && let Some(a) = auth {
                req = req.header(header::AUTHORIZATION, a);
            }
            let req = match req.body(Body::from(part.body.clone())) {
                Ok(r) => r,
                Err(_) => {
                    return (
                        400,
                        Bytes::from(
                            ApiError::bad("badRequest", "Bad Request")
                                .body_json()
                                .to_string(),
                        ),
                    );
                }
            };
            match router.oneshot(req).await {
                Ok(resp) => (resp.status().as_u16(), body_bytes(resp).await),
                Err(e) => match e {},
            }
        }
    });
    let results = futures::future::join_all(futs).await;
    let boundary = format!("batch_{:016x}", rand::random::<u64>());
    // The answer is sent as the parts' own buffers with small separators between them (the
    // socket takes them in one vectored write): no copy of the messages into one buffer.
    let mut chunks: Vec<Bytes> = Vec::with_capacity(2 * results.len() + 1);
    let mut separator = String::new();
    // Writing into a String cannot fail.
    use std::fmt::Write as _;
    for (part, (status, bytes)) in parts.iter().zip(results) {
        let _ = write!(
            separator,
            "--{boundary}\r\nContent-Type: application/http\r\n"
        );
        if let Some(cid) = &part.content_id {
            let inner = cid.trim().trim_start_matches('<').trim_end_matches('>');
            let _ = write!(separator, "Content-ID: <response-{inner}>\r\n");
        }
        let reason = axum::http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        let _ = write!(
            separator,
            "\r\nHTTP/1.1 {status} {reason}\r\nContent-Type: application/json; charset=UTF-8\r\nVary: Origin\r\nContent-Length: {}\r\n\r\n",
            bytes.len()
        );
        chunks.push(Bytes::from(std::mem::take(&mut separator)));
        chunks.push(bytes);
        separator.push_str("\r\n");
    }
    let _ = write!(separator, "--{boundary}--\r\n");
    chunks.push(Bytes::from(separator));
    let length: usize = chunks.iter().map(Bytes::len).sum();
    let frames = futures::stream::iter(chunks.into_iter().map(Ok::<_, std::convert::Infallible>));
    let mut resp = Response::new(Body::from_stream(frames));
    resp.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}")) {
        resp.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    resp
}

/// The body of a handler's answer, kept as the handler made it (one buffer, no copy).
async fn body_bytes(resp: Response) -> Bytes {
    axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap_or_default()
}

/// `GET /gmail/v1/users/{u}/messages/{id}` (an origin-form target): the path parameters,
/// percent-decoded as axum's `Path` decodes them, and the query. `None` for anything else,
/// including what the router would refuse (another method, an invalid URI or path segment).
fn messages_get_target(method: &str, target: &str) -> Option<(String, String, Option<String>)> {
    if method != "GET" || target.parse::<axum::http::Uri>().is_err() {
        return None;
    }
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, Some(q.to_owned())),
        None => (target, None),
    };
    let (u, id) = path
        .strip_prefix("/gmail/v1/users/")?
        .split_once("/messages/")?;
    if u.is_empty() || id.is_empty() || u.contains('/') || id.contains('/') {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8()
            .ok()
            .map(|c| c.into_owned())
    };
    Some((decode(u)?, decode(id)?, query))
}

/// The headers of a batch part as a request would carry them (the batch's `Authorization`
/// when the part has none); `None` when one is not a valid header (the router path answers
/// that).
fn part_headers(part: &[(String, String)], auth: Option<&HeaderValue>) -> Option<HeaderMap> {
    let mut headers = HeaderMap::with_capacity(part.len() + 1);
    for (k, v) in part {
        let name = header::HeaderName::from_bytes(k.as_bytes()).ok()?;
        headers.append(name, HeaderValue::from_str(v).ok()?);
    }
    if !headers.contains_key(header::AUTHORIZATION)
        && let Some(a) = auth
    {
        headers.insert(header::AUTHORIZATION, a.clone());
    }
    Some(headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #[test]
        fn batch_parser_never_panics(body in "[-a-zA-Z0-9 /:\r\n<>+]{0,200}") {
            let _ = parse_batch("multipart/mixed; boundary=b", body.as_bytes());
        }

        #[test]
        fn attachment_ids_never_panic(aid in "ANGjdJ[0-9a-fé]{0,50}") {
            let _ = part_id_of_attachment(1, 2, &aid);
        }
    }

    #[test]
    fn messages_get_parts_are_recognised_as_the_router_would_route_them() {
        let t = |m: &str, target: &str| messages_get_target(m, target);
        assert_eq!(
            t(
                "GET",
                "/gmail/v1/users/amy%40example.com/messages/00ab?format=raw"
            ),
            Some((
                "amy@example.com".into(),
                "00ab".into(),
                Some("format=raw".into())
            ))
        );
        assert_eq!(
            t("GET", "/gmail/v1/users/me/messages/1"),
            Some(("me".into(), "1".into(), None))
        );
        // Anything else goes through the router (and gets its answer there).
        for (m, target) in [
            ("POST", "/gmail/v1/users/me/messages/1"),
            ("get", "/gmail/v1/users/me/messages/1"),
            ("GET", "/gmail/v1/users/me/messages/1/"),
            ("GET", "/gmail/v1/users/me/messages/1/attachments/2"),
            ("GET", "/gmail/v1/users//messages/1"),
            ("GET", "/gmail/v1/users/me/messages/"),
            ("GET", "/gmail/v1/users/a/b/messages/1"),
            ("GET", "/gmail/v1/users/me/messages"),
            ("GET", "/gmail/v1/users/me/messages/%FF"),
            ("GET", "/gmail/v1/users/me/messages/a\u{7f}b"),
        ] {
            assert_eq!(t(m, target), None, "{m} {target}");
        }
    }

    #[test]
    fn part_headers_add_the_batch_authorization_only_when_missing() {
        let batch = HeaderValue::from_static("Bearer batch");
        let own = vec![("Authorization".to_string(), "Bearer part".to_string())];
        let h = part_headers(&own, Some(&batch)).expect("valid");
        assert_eq!(h.get_all(header::AUTHORIZATION).iter().count(), 1);
        assert_eq!(h[header::AUTHORIZATION], "Bearer part");
        let h = part_headers(&[], Some(&batch)).expect("valid");
        assert_eq!(h[header::AUTHORIZATION], "Bearer batch");
        let bad = vec![("Bad Name".to_string(), "x".to_string())];
        assert!(part_headers(&bad, Some(&batch)).is_none());
    }

    #[test]
    fn batch_parser_reads_parts() {
        let body = "--b\r\nContent-Type: application/http\r\nContent-ID: <x+1>\r\n\r\nGET /gmail/v1/users/me/profile HTTP/1.1\r\nAuthorization: Bearer t\r\n\r\n\r\n--b\nContent-Type: application/http\n\nGET /gmail/v1/users/me/labels\n\n--b--\r\n";
        let parts = parse_batch("multipart/mixed; boundary=\"b\"", body.as_bytes()).expect("parts");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].content_id.as_deref(), Some("<x+1>"));
        assert_eq!(parts[0].target, "/gmail/v1/users/me/profile");
        assert_eq!(
            parts[0].headers,
            vec![("Authorization".to_string(), "Bearer t".to_string())]
        );
        assert_eq!(parts[1].method, "GET");
        assert!(parse_batch("application/json", body.as_bytes()).is_err());
    }

    #[test]
    fn attachment_ids_round_trip() {
        let aid = attachment_id(5, 77, "0.1");
        assert_eq!(part_id_of_attachment(5, 77, &aid).as_deref(), Some("0.1"));
        assert_eq!(part_id_of_attachment(5, 78, &aid), None);
    }
}
