//! A tiny in-process stand-in for Google (token endpoint, Directory users.list, Gmail profile,
//! messages.list/get, history.list) used until the workspace simulator is available. It checks
//! what matters to the connector's logic: delegation per subject, paging, spam/trash, history,
//! expired history ids, injected faults.

#![allow(dead_code, clippy::result_large_err)]

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::{Arc, Mutex},
};

use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use base64::Engine as _;
use serde_json::{Value, json};

#[derive(Clone, Debug)]
pub struct Msg {
    pub labels: Vec<String>,
    pub raw: String,
    pub internal_date: i64,
}

#[derive(Default, Debug)]
pub struct Mailbox {
    pub messages: BTreeMap<String, Msg>,
    /// (history id, record JSON)
    pub history: Vec<(u64, Value)>,
    pub history_id: u64,
    pub floor: u64,
    pub next_id: u64,
}

#[derive(Default)]
pub struct World {
    pub users: Vec<(String, bool)>,
    pub admins: HashSet<String>,
    pub mailboxes: HashMap<String, Mailbox>,
    /// Subjects the token endpoint refuses (revoked delegation).
    pub denied: HashSet<String>,
    /// Every n-th API call fails with 503 / 429 alternately.
    pub fault_every: Option<u64>,
    pub calls: u64,
    pub faults_served: u64,
    pub tokens: u64,
    pub customer: String,
}

pub type Shared = Arc<Mutex<World>>;

fn envelope(code: u16, reason: &str, status: &str) -> Response {
    let body = json!({"error": {"code": code, "message": reason,
        "errors": [{"message": reason, "domain": "global", "reason": reason}], "status": status}});
    (
        StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        Json(body),
    )
        .into_response()
}

fn lock(s: &Shared) -> std::sync::MutexGuard<'_, World> {
    s.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn raw_message(from: &str, subject: &str, body: &str) -> String {
    let text = format!(
        "From: {from}\r\nTo: someone@acme.test\r\nSubject: {subject}\r\nMessage-ID: <{subject}@x>\r\nDate: Tue, 10 Oct 2023 12:00:00 +0000\r\nContent-Type: text/plain\r\n\r\n{body}\r\n"
    );
    base64::engine::general_purpose::URL_SAFE.encode(text)
}

impl World {
    pub fn add_user(&mut self, email: &str, has_mail: bool) {
        self.users.push((email.to_owned(), has_mail));
        self.mailboxes
            .entry(email.to_owned())
            .or_insert_with(|| Mailbox {
                history_id: 1000,
                floor: 0,
                ..Default::default()
            });
    }

    fn record(mb: &mut Mailbox, rec: Value) {
        mb.history_id += 3;
        let mut rec = rec;
        rec["id"] = Value::from(mb.history_id.to_string());
        mb.history.push((mb.history_id, rec));
    }

    pub fn deliver(&mut self, user: &str, from: &str, subject: &str, labels: &[&str]) -> String {
        let mb = self.mailboxes.get_mut(user).expect("mailbox");
        mb.next_id += 1;
        let id = format!("{:016x}", 0x18c0_0000_0000_0000u64 + mb.next_id);
        let labels: Vec<String> = labels.iter().map(|s| s.to_string()).collect();
        mb.messages.insert(
            id.clone(),
            Msg {
                labels: labels.clone(),
                raw: raw_message(from, subject, "hello"),
                internal_date: 1_696_939_200_000 + mb.next_id as i64,
            },
        );
        Self::record(
            mb,
            json!({"messagesAdded": [{"message": {"id": id, "threadId": id, "labelIds": labels}}]}),
        );
        id
    }

    pub fn delete(&mut self, user: &str, id: &str) {
        let mb = self.mailboxes.get_mut(user).expect("mailbox");
        mb.messages.remove(id);
        Self::record(
            mb,
            json!({"messagesDeleted": [{"message": {"id": id, "threadId": id}}]}),
        );
    }

    pub fn add_label(&mut self, user: &str, id: &str, label: &str) {
        let mb = self.mailboxes.get_mut(user).expect("mailbox");
        let m = mb.messages.get_mut(id).expect("message");
        m.labels.push(label.to_owned());
        let labels = m.labels.clone();
        Self::record(
            mb,
            json!({"labelsAdded": [{"message": {"id": id, "threadId": id, "labelIds": labels}, "labelIds": [label]}]}),
        );
    }

    pub fn remove_label(&mut self, user: &str, id: &str, label: &str) {
        let mb = self.mailboxes.get_mut(user).expect("mailbox");
        let m = mb.messages.get_mut(id).expect("message");
        m.labels.retain(|l| l != label);
        let labels = m.labels.clone();
        Self::record(
            mb,
            json!({"labelsRemoved": [{"message": {"id": id, "threadId": id, "labelIds": labels}, "labelIds": [label]}]}),
        );
    }

    /// Expected `_id`s: every message outside spam/trash (unless included) matching `matches`.
    pub fn expected(
        &self,
        include_spam_trash: bool,
        matches: impl Fn(&Msg) -> bool,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (user, has_mail) in &self.users {
            if !has_mail {
                continue;
            }
            for (id, m) in &self.mailboxes[user].messages {
                let hidden = m.labels.iter().any(|l| l == "SPAM" || l == "TRASH");
                if (include_spam_trash || !hidden) && matches(m) {
                    out.push(format!("{user}:{id}"));
                }
            }
        }
        out.sort();
        out
    }

    fn fault(&mut self) -> Option<Response> {
        self.calls += 1;
        let n = self.fault_every?;
        if self.calls.is_multiple_of(n) {
            self.faults_served += 1;
            return Some(if (self.calls / n).is_multiple_of(2) {
                envelope(503, "backendError", "UNAVAILABLE")
            } else {
                envelope(429, "rateLimitExceeded", "RESOURCE_EXHAUSTED")
            });
        }
        None
    }
}

fn subject_of(headers: &HeaderMap) -> Option<String> {
    let auth = headers.get("authorization")?.to_str().ok()?;
    auth.strip_prefix("Bearer tok:").map(str::to_owned)
}

async fn token(State(s): State<Shared>, Form(form): Form<HashMap<String, String>>) -> Response {
    let assertion = form.get("assertion").cloned().unwrap_or_default();
    let payload = assertion.split('.').nth(1).unwrap_or_default();
    let claims: Value = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null);
    let sub = claims["sub"].as_str().unwrap_or_default().to_owned();
    let mut w = lock(&s);
    w.tokens += 1;
    if w.denied.contains(&sub) {
        return (StatusCode::UNAUTHORIZED, Json(json!({"error": "unauthorized_client", "error_description": "Client is unauthorized to retrieve access tokens using this method"}))).into_response();
    }
    if !w.users.iter().any(|(u, _)| *u == sub) {
        return (
            StatusCode::BAD_REQUEST,
            Json(
                json!({"error": "invalid_grant", "error_description": "Invalid email or User ID"}),
            ),
        )
            .into_response();
    }
    Json(json!({"access_token": format!("tok:{sub}"), "expires_in": 3599, "token_type": "Bearer"}))
        .into_response()
}

fn page<T: Clone>(items: &[T], q: &HashMap<String, String>) -> (Vec<T>, Option<String>) {
    let size: usize = q
        .get("maxResults")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .min(500);
    let start: usize = q.get("pageToken").and_then(|v| v.parse().ok()).unwrap_or(0);
    let end = (start + size).min(items.len());
    let next = (end < items.len()).then(|| end.to_string());
    (items.get(start..end).unwrap_or_default().to_vec(), next)
}

async fn users(
    State(s): State<Shared>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut w = lock(&s);
    if let Some(f) = w.fault() {
        return f;
    }
    let Some(sub) = subject_of(&headers) else {
        return envelope(401, "authError", "UNAUTHENTICATED");
    };
    if !w.admins.contains(&sub) {
        return envelope(403, "forbidden", "PERMISSION_DENIED");
    }
    if q.get("customer").map(String::as_str) != Some(w.customer.as_str())
        && q.get("customer").map(String::as_str) != Some("my_customer")
    {
        return envelope(400, "badRequest", "INVALID_ARGUMENT");
    }
    let all: Vec<Value> = w
        .users
        .iter()
        .map(|(u, m)| json!({"primaryEmail": u, "creationTime": "2020-01-01T00:00:00.000Z", "isMailboxSetup": m}))
        .collect();
    let (items, next) = page(&all, &q);
    let mut body = json!({"users": items});
    if let Some(n) = next {
        body["nextPageToken"] = Value::from(n);
    }
    Json(body).into_response()
}

fn gmail_guard(w: &mut World, headers: &HeaderMap, user: &str) -> Result<(), Response> {
    if let Some(f) = w.fault() {
        return Err(f);
    }
    let sub = subject_of(headers).ok_or_else(|| envelope(401, "authError", "UNAUTHENTICATED"))?;
    if sub != user {
        return Err(envelope(403, "forbidden", "PERMISSION_DENIED"));
    }
    match w.users.iter().find(|(u, _)| u == user) {
        Some((_, true)) => Ok(()),
        Some((_, false)) => Err(envelope(400, "failedPrecondition", "FAILED_PRECONDITION")),
        None => Err(envelope(404, "notFound", "NOT_FOUND")),
    }
}

async fn profile(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(user): Path<String>,
) -> Response {
    let mut w = lock(&s);
    if let Err(r) = gmail_guard(&mut w, &headers, &user) {
        return r;
    }
    let mb = &w.mailboxes[&user];
    Json(json!({"emailAddress": user, "historyId": mb.history_id.to_string(), "messagesTotal": mb.messages.len()})).into_response()
}

async fn list(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut w = lock(&s);
    if let Err(r) = gmail_guard(&mut w, &headers, &user) {
        return r;
    }
    let include = q
        .get("includeSpamTrash")
        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let query = q.get("q").cloned();
    let mb = &w.mailboxes[&user];
    let ids: Vec<Value> = mb
        .messages
        .iter()
        .rev()
        .filter(|(_, m)| include || !m.labels.iter().any(|l| l == "SPAM" || l == "TRASH"))
        .filter(|(_, m)| match &query {
            None => true,
            Some(q) => matches_query(m, q),
        })
        .map(|(id, _)| json!({"id": id, "threadId": id}))
        .collect();
    let (items, next) = page(&ids, &q);
    let mut body = json!({"resultSizeEstimate": ids.len()});
    if !items.is_empty() {
        body["messages"] = Value::from(items);
    }
    if let Some(n) = next {
        body["nextPageToken"] = Value::from(n);
    }
    Json(body).into_response()
}

/// `from:x` = sender contains x; `label:X` = carries label X.
pub fn matches_query(m: &Msg, q: &str) -> bool {
    if let Some(l) = q.strip_prefix("label:") {
        return m.labels.iter().any(|x| x.eq_ignore_ascii_case(l));
    }
    if let Some(f) = q.strip_prefix("from:") {
        let raw = base64::engine::general_purpose::URL_SAFE
            .decode(&m.raw)
            .unwrap_or_default();
        let text = String::from_utf8_lossy(&raw);
        return text
            .lines()
            .next()
            .is_some_and(|l| l.to_lowercase().contains(&f.to_lowercase()));
    }
    false
}

async fn get_message(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((user, id)): Path<(String, String)>,
) -> Response {
    let mut w = lock(&s);
    if let Err(r) = gmail_guard(&mut w, &headers, &user) {
        return r;
    }
    let mb = &w.mailboxes[&user];
    match mb.messages.get(&id) {
        None => envelope(404, "notFound", "NOT_FOUND"),
        Some(m) => Json(
            json!({"id": id, "threadId": id, "labelIds": m.labels, "snippet": "hello",
            "historyId": mb.history_id.to_string(), "internalDate": m.internal_date.to_string(),
            "sizeEstimate": m.raw.len(), "raw": m.raw}),
        )
        .into_response(),
    }
}

async fn history(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(user): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let mut w = lock(&s);
    if let Err(r) = gmail_guard(&mut w, &headers, &user) {
        return r;
    }
    let start: u64 = q
        .get("startHistoryId")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mb = &w.mailboxes[&user];
    if start < mb.floor || start > mb.history_id {
        return envelope(404, "notFound", "NOT_FOUND");
    }
    let recs: Vec<Value> = mb
        .history
        .iter()
        .filter(|(h, _)| *h > start)
        .map(|(_, r)| r.clone())
        .collect();
    let (items, next) = page(&recs, &q);
    let mut body = json!({"historyId": mb.history_id.to_string()});
    if !items.is_empty() {
        body["history"] = Value::from(items);
    }
    if let Some(n) = next {
        body["nextPageToken"] = Value::from(n);
    }
    Json(body).into_response()
}

/// Starts the fake; returns its base URL.
pub async fn start(world: Shared) -> String {
    let app = Router::new()
        .route("/token", post(token))
        .route("/admin/directory/v1/users", get(users))
        .route("/gmail/v1/users/{user}/profile", get(profile))
        .route("/gmail/v1/users/{user}/messages", get(list))
        .route("/gmail/v1/users/{user}/messages/{id}", get(get_message))
        .route("/gmail/v1/users/{user}/history", get(history))
        .with_state(world);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}
