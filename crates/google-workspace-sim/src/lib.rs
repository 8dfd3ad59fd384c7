//! A faithful local Google Workspace for tests, demos and benchmarks: the OAuth token endpoint
//! (JWT-bearer grant with domain-wide delegation), the Directory `users.list`, and the Gmail read
//! API (profile, messages, attachments, labels, history, threads, batch), with a deterministic
//! corpus, mutations and history, quotas, fault injection and a ground-truth admin API.
//!
//! ```no_run
//! # async fn demo() -> Result<(), google_workspace_sim::SimError> {
//! use google_workspace_sim::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig { users: 5, messages_per_user: 50, ..Default::default() }).await?;
//! let base = sim.base_url(); // e.g. http://127.0.0.1:38211
//! let key_json = sim.service_account_key_json(); // token_uri = {base}/token
//! sim.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! See `docs/simulator.md` for the URL layout and the known differences from Google.

mod admin;
mod api;
mod corpus;
mod keys;
mod mailbox;
pub mod query;
mod quota;
mod rng;
mod server;
mod state;
mod tenant;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use corpus::{CustomAttachment, CustomMessage};
pub use keys::{
    AssertionClaims, GOOGLE_TOKEN_URL, JWT_BEARER, ServiceAccountKey, rsa_key, sign_assertion,
    sign_jwt_value,
};
pub use mailbox::LabelInfo;
pub use quota::{
    FaultRule, FaultStatus, Method, MethodCounters, QuotaConfig, QuotaStyle, parse_fault_spec,
};
pub use state::{MessageTruth, Mutation, MutationResult};
pub use tenant::{
    SCOPE_CLOUD, SCOPE_DIRECTORY, SCOPE_DIRECTORY_READONLY, SCOPE_GMAIL_METADATA,
    SCOPE_GMAIL_MODIFY, SCOPE_GMAIL_READONLY, SCOPE_MAIL, UserInfo,
};

use state::State;

/// Simulator errors.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("invalid input: {0}")]
    InvalidInput(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// Simulator configuration.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Number of users (user 0 is `admin@<domain>`, the only administrator).
    pub users: usize,
    /// Messages per mailbox (exact when `shared_thread_ratio` is 0, approximate otherwise).
    pub messages_per_user: usize,
    pub seed: u64,
    pub quota: QuotaConfig,
    pub domain: String,
    /// Default: derived from the seed (`C0xxxxxxx`).
    pub customer_id: Option<String>,
    /// Share of each mailbox made of conversations shared with other users (0 disables).
    pub shared_thread_ratio: f64,
    /// Every n-th user (index n-1, 2n-1, …) is suspended; 0 = nobody.
    pub suspended_every: usize,
    /// Indices of users whose mailbox is not set up (`isMailboxSetup=false`).
    pub users_without_mailbox: Vec<usize>,
    /// History records older than this are dropped (start ids before them get 404).
    pub history_retention: Option<Duration>,
    /// Access-token lifetime (`expires_in`), seconds.
    pub token_lifetime_secs: i64,
    /// Allowed clock skew for JWT `iat`/`exp`.
    pub clock_skew_secs: i64,
    pub faults: Vec<FaultRule>,
    /// Listen address; port 0 picks a free port.
    pub bind: SocketAddr,
    /// `raw` with `=` padding (as observed from Google) or without.
    pub raw_padding: bool,
    /// Seed of the service-account RSA key (default: a fixed seed, so the key is stable).
    pub key_seed: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            users: 10,
            messages_per_user: 200,
            seed: 42,
            quota: QuotaConfig::default(),
            domain: "acme.test".into(),
            customer_id: None,
            shared_thread_ratio: 0.2,
            suspended_every: 7,
            users_without_mailbox: Vec::new(),
            history_retention: None,
            token_lifetime_secs: 3599,
            clock_skew_secs: 300,
            faults: Vec::new(),
            bind: SocketAddr::from(([127, 0, 0, 1], 0)),
            raw_padding: true,
            key_seed: None,
        }
    }
}

/// Counters reported by `/__admin/stats`.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// Per method id.
    pub methods: BTreeMap<String, MethodCounters>,
    /// Tokens minted per subject (or service account e-mail without subject).
    pub tokens_minted: BTreeMap<String, u64>,
    /// Highest number of simultaneous Gmail requests seen per user (only users with traffic).
    pub peak_concurrency: BTreeMap<String, u32>,
    /// Gmail requests per user.
    pub requests_per_user: BTreeMap<String, u64>,
    pub batch_calls: u64,
    pub batch_parts: u64,
    pub batch_max_parts: u64,
    pub mutations: u64,
}

/// An expected Elasticsearch document (`_id` = Gmail message id, owner = mailbox).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct ExpectedDoc {
    pub id: String,
    pub user: String,
    pub internal_date: String,
}

/// A running simulator.
pub struct Simulator {
    st: Arc<State>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    /// Builds the world and starts serving on `cfg.bind`.
    pub async fn start(cfg: SimConfig) -> Result<Simulator, SimError> {
        let bind = cfg.bind;
        // RSA key generation is CPU-heavy; keep it off the async workers.
        let st = tokio::task::spawn_blocking(move || State::new(cfg))
            .await
            .map_err(|e| SimError::InvalidInput(format!("startup: {e}")))?;
        let st = Arc::new(st);
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let _ = st.base_url.set(format!("http://{addr}"));
        let app = server::router(st.clone());
        let _ = st.router.set(app.clone());
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            use axum::serve::ListenerExt as _;
            // small JSON answers on keep-alive connections: no Nagle delay
            let listener = listener.tap_io(|tcp| {
                if let Err(e) = tcp.set_nodelay(true) {
                    tracing::debug!(error = %e, "set_nodelay failed");
                }
            });
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "simulator server stopped");
            }
        });
        tracing::info!(%addr, "google workspace simulator listening");
        Ok(Simulator {
            st,
            addr,
            stop: Some(tx),
            task: Some(task),
        })
    }

    /// `http://127.0.0.1:<port>`; every Google path is served under it.
    pub fn base_url(&self) -> String {
        self.st.base_url()
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `<base>/token`.
    pub fn token_url(&self) -> String {
        self.st.token_url()
    }

    /// The service-account key JSON (`token_uri` points at the simulator).
    pub fn service_account_key_json(&self) -> String {
        self.st.key_json().to_json()
    }

    pub fn service_account_key(&self) -> ServiceAccountKey {
        self.st.key_json()
    }

    pub fn admin_email(&self) -> String {
        self.st.tenant.users[0].email.clone()
    }

    pub fn customer_id(&self) -> String {
        self.st.tenant.customer_id.clone()
    }

    pub fn domain(&self) -> String {
        self.st.tenant.domain.clone()
    }

    /// The numeric client id that domain-wide delegation grants are keyed by.
    pub fn client_id(&self) -> String {
        self.st.tenant.sa_client_id.clone()
    }

    /// Builds every mailbox now instead of on first use (mailboxes are generated lazily), so a
    /// benchmark does not count the simulator's corpus generation as the client's time.
    /// Returns the number of messages.
    pub fn materialize(&self) -> usize {
        (0..self.st.tenant.users.len())
            .map(|u| self.st.read_mb_fast(u).msgs.len())
            .sum()
    }

    /// Builds every mailbox and renders every message once, keeping the RFC 822 bytes in
    /// memory (about 6 kB per message), so `messages.get?format=raw` serves stored content
    /// instead of generating it on each request — as Google serves stored mail. For load
    /// tests: generating a message costs more CPU than serving it. Returns the messages
    /// rendered. Messages added later are rendered on request.
    pub fn prerender(&self) -> usize {
        let mut rendered = 0;
        for u in 0..self.st.tenant.users.len() {
            let todo: Vec<corpus::Msg> = {
                let mb = self.st.read_mb_fast(u);
                mb.msgs
                    .values()
                    .filter(|m| !mb.rendered.contains_key(&m.id))
                    .cloned()
                    .collect()
            };
            let done: Vec<(u64, mailbox::Rendered)> =
                todo.iter().map(|m| (m.id, self.st.render(u, m))).collect();
            rendered += done.len();
            self.st.write_mb(u).rendered.extend(done);
        }
        rendered
    }

    pub fn users(&self) -> Vec<UserInfo> {
        (0..self.st.tenant.users.len())
            .map(|i| self.st.tenant.info(i))
            .collect()
    }

    /// Ground truth: every message of a mailbox, newest first.
    pub fn messages(&self, user: &str) -> Result<Vec<MessageTruth>, SimError> {
        let u = self.st.user(user)?;
        Ok(self.st.truth(u))
    }

    /// The RFC 822 bytes of a message.
    pub fn raw_message(&self, user: &str, id: &str) -> Result<Vec<u8>, SimError> {
        let u = self.st.user(user)?;
        let id = state::parse_hex_id(id)?;
        self.st
            .raw(u, id)
            .ok_or_else(|| SimError::NotFound(format!("message {id:x}")))
    }

    /// Ids (newest first) that `messages.list` would return for this query, all pages together.
    pub fn query(
        &self,
        user: &str,
        q: Option<&str>,
        include_spam_trash: bool,
        label_ids: &[String],
    ) -> Result<Vec<String>, SimError> {
        query_ids(&self.st, user, q, include_spam_trash, label_ids)
    }

    /// Documents a full sync should produce (non-suspended users with a mailbox).
    pub fn expected_docs(
        &self,
        include_spam_and_trash: bool,
        rules: &[String],
    ) -> Result<Vec<ExpectedDoc>, SimError> {
        expected_docs(&self.st, include_spam_and_trash, rules)
    }

    /// The mailbox's current history id.
    pub fn history_id(&self, user: &str) -> Result<u64, SimError> {
        let u = self.st.user(user)?;
        Ok(self.st.read_mb(u).history_id)
    }

    /// Applies a mutation.
    pub fn apply(&self, m: Mutation) -> Result<MutationResult, SimError> {
        self.st.apply(&m)
    }

    /// Drops history records up to `through` (default: everything) so older start ids get 404.
    /// Returns the new floor.
    pub fn expire_history(&self, user: &str, through: Option<u64>) -> Result<u64, SimError> {
        self.st.expire_history(user, through)
    }

    /// Replaces the domain-wide delegation grant of a client id.
    pub fn set_delegation(&self, client_id: &str, scopes: Vec<String>) {
        set_delegation(&self.st, client_id, scopes)
    }

    /// Disables (or re-enables) the service account: the token endpoint then answers 401
    /// `disabled_client`.
    pub fn set_service_account_disabled(&self, disabled: bool) {
        self.st
            .tenant
            .sa_disabled
            .store(disabled, Ordering::Relaxed);
    }

    pub fn set_faults(&self, rules: Vec<FaultRule>) {
        self.st.faults.set(rules)
    }

    pub fn add_fault(&self, rule: FaultRule) {
        self.st.faults.add(rule)
    }

    pub fn faults(&self) -> Vec<FaultStatus> {
        self.st.faults.status()
    }

    pub fn set_quota(&self, q: QuotaConfig) {
        set_quota(&self.st, q)
    }

    pub fn stats(&self) -> Stats {
        stats(&self.st)
    }

    pub fn reset_stats(&self) {
        reset_stats(&self.st)
    }

    /// Simulator time (epoch ms).
    pub fn now_ms(&self) -> i64 {
        self.st.now_ms()
    }

    /// Shifts the simulator clock by `offset_ms` from real time.
    pub fn set_clock_offset(&self, offset_ms: i64) {
        self.st.set_clock(Some(offset_ms), None)
    }

    /// Freezes the clock at `ms` (`None` unfreezes).
    pub fn freeze_clock(&self, ms: Option<i64>) {
        self.st.set_clock(None, ms)
    }

    /// Issues an access token directly, without the token endpoint or any checks (for tests
    /// that need to call the API without signing a JWT). Not counted in `tokensMinted`.
    pub fn issue_token(&self, sub: Option<&str>, scopes: &[&str]) -> Result<String, SimError> {
        let user = match sub {
            Some(s) => Some(self.st.user(s)?),
            None => None,
        };
        let n = self.st.token_counter.fetch_add(1, Ordering::Relaxed);
        let token = format!("ya29.sim.direct{n:x}{:016x}", rand::random::<u64>());
        self.st.tokens.insert(
            token.clone(),
            state::TokenInfo {
                user,
                scopes: Arc::new(scopes.iter().map(|s| s.to_string()).collect()),
                expires_ms: self.st.now_ms() + self.st.cfg.token_lifetime_secs * 1000,
            },
        );
        Ok(token)
    }

    /// Revokes access tokens (of one subject, or all); returns how many.
    pub fn revoke_tokens(&self, user: Option<&str>) -> usize {
        revoke_tokens(&self.st, user)
    }

    /// Stops the server.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Operations shared by the programmatic API and `/__admin`

pub(crate) fn tenant_json(st: &State) -> Value {
    let t = &st.tenant;
    let grants: BTreeMap<String, Vec<String>> = t
        .delegation
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .map(|(k, v)| {
            let mut s: Vec<String> = v.iter().cloned().collect();
            s.sort();
            (k.clone(), s)
        })
        .collect();
    json!({
        "domain": t.domain,
        "customerId": t.customer_id,
        "adminEmail": t.users[0].email,
        "users": (0..t.users.len()).map(|i| t.info(i)).collect::<Vec<_>>(),
        "serviceAccount": {"clientEmail": t.sa_email, "clientId": t.sa_client_id, "keyJson": st.key_json()},
        "delegation": grants,
        "baseUrl": st.base_url(),
    })
}

pub(crate) fn set_delegation(st: &State, client_id: &str, scopes: Vec<String>) {
    st.tenant
        .delegation
        .write()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            client_id.to_string(),
            scopes.into_iter().collect::<HashSet<_>>(),
        );
}

pub(crate) fn query_ids(
    st: &State,
    user: &str,
    q: Option<&str>,
    include_spam_trash: bool,
    label_ids: &[String],
) -> Result<Vec<String>, SimError> {
    let u = st.user(user)?;
    let (ids, _, _) = st.search(u, q, label_ids, include_spam_trash, None, usize::MAX)?;
    Ok(ids
        .into_iter()
        .map(|(id, _, _)| format!("{id:x}"))
        .collect())
}

pub(crate) fn expected_docs(
    st: &State,
    include: bool,
    rules: &[String],
) -> Result<Vec<ExpectedDoc>, SimError> {
    let mut out = Vec::new();
    for (i, u) in st.tenant.users.iter().enumerate() {
        let f = &st.tenant.flags[i];
        if f.suspended.load(Ordering::Relaxed) || !f.mailbox.load(Ordering::Relaxed) {
            continue;
        }
        let queries: Vec<Option<&str>> = if rules.is_empty() {
            vec![None]
        } else {
            rules.iter().map(|r| Some(r.as_str())).collect()
        };
        let mut seen = HashSet::new();
        for q in queries {
            let (ids, _, _) = st.search(i, q, &[], include, None, usize::MAX)?;
            for (id, _, ms) in ids {
                if seen.insert(id) {
                    out.push(ExpectedDoc {
                        id: format!("{id:x}"),
                        user: u.email.clone(),
                        internal_date: ms.to_string(),
                    });
                }
            }
        }
    }
    Ok(out)
}

pub(crate) fn set_quota(st: &State, q: QuotaConfig) {
    st.quota_enabled.store(q.enabled, Ordering::Relaxed);
    *st.quota.write().unwrap_or_else(|e| e.into_inner()) = q;
}

pub(crate) fn stats(st: &State) -> Stats {
    let mut s = Stats::default();
    for m in quota::METHODS {
        s.methods
            .insert(m.id().to_string(), st.stats[m.index()].snapshot());
    }
    for e in st.tokens_minted.iter() {
        s.tokens_minted.insert(e.key().clone(), *e.value());
    }
    for (i, rt) in st.users_rt.iter().enumerate() {
        let n = rt.requests.load(Ordering::Relaxed);
        if n > 0 {
            let email = st.tenant.users[i].email.clone();
            s.peak_concurrency
                .insert(email.clone(), rt.peak_inflight.load(Ordering::Relaxed));
            s.requests_per_user.insert(email, n);
        }
    }
    s.batch_calls = st.batch_calls.load(Ordering::Relaxed);
    s.batch_parts = st.batch_parts.load(Ordering::Relaxed);
    s.batch_max_parts = st.batch_max.load(Ordering::Relaxed);
    s.mutations = st.mutations.load(Ordering::Relaxed);
    s
}

pub(crate) fn reset_stats(st: &State) {
    for m in &st.stats {
        m.reset();
    }
    st.tokens_minted.clear();
    for rt in &st.users_rt {
        rt.requests.store(0, Ordering::Relaxed);
        rt.peak_inflight.store(0, Ordering::Relaxed);
    }
    st.batch_calls.store(0, Ordering::Relaxed);
    st.batch_parts.store(0, Ordering::Relaxed);
    st.batch_max.store(0, Ordering::Relaxed);
}

pub(crate) fn revoke_tokens(st: &State, user: Option<&str>) -> usize {
    let target = user.and_then(|u| st.tenant.user_index(u));
    let before = st.tokens.len();
    match (user, target) {
        (None, _) => st.tokens.clear(),
        (Some(_), Some(t)) => st.tokens.retain(|_, v| v.user != Some(t)),
        (Some(_), None) => {}
    }
    before - st.tokens.len()
}
