//! Shared simulator state: tenant, mailboxes, tokens, quota, faults, clock, counters.

use std::cell::OnceCell;
use std::collections::HashSet;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, RwLockReadGuard, RwLockWriteGuard};

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use crate::corpus::{self, CustomMessage, Msg, Origin, World};
use crate::keys::{KeyMaterial, ServiceAccountKey, rsa_key};
use crate::mailbox::{Mailbox, Shape, spam_or_trash};
use crate::query::{self, Ctx};
use crate::quota::{Faults, METHODS, MethodStats, QuotaConfig, UserRt};
use crate::rng::{h2, hash_bytes};
use crate::tenant::Tenant;
use crate::{SimConfig, SimError};

/// A minted access token.
#[derive(Debug, Clone)]
pub(crate) struct TokenInfo {
    pub user: Option<usize>,
    pub scopes: Arc<HashSet<String>>,
    pub expires_ms: i64,
}

pub(crate) struct State {
    pub cfg: SimConfig,
    pub tenant: Tenant,
    pub key: Arc<KeyMaterial>,
    pub base_url: OnceLock<String>,
    pub mailboxes: Vec<OnceLock<RwLock<Mailbox>>>,
    pub users_rt: Vec<UserRt>,
    pub tokens: DashMap<String, TokenInfo>,
    pub tokens_minted: DashMap<String, u64>,
    pub token_counter: AtomicU64,
    pub quota: RwLock<QuotaConfig>,
    pub quota_enabled: std::sync::atomic::AtomicBool,
    pub project: crate::quota::Window,
    pub faults: Faults,
    pub stats: Vec<MethodStats>,
    pub batch_calls: AtomicU64,
    pub batch_parts: AtomicU64,
    pub batch_max: AtomicU64,
    pub clock_offset_ms: AtomicI64,
    pub clock_frozen_ms: AtomicI64,
    pub page_secret: u64,
    pub mutations: AtomicU64,
    pub router: OnceLock<axum::Router>,
}

const NOT_FROZEN: i64 = i64::MIN;

/// One message of the ground truth.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MessageTruth {
    pub id: String,
    pub thread_id: String,
    pub label_ids: Vec<String>,
    pub internal_date: String,
    pub history_id: String,
    pub size_estimate: u64,
    pub message_id: String,
    pub subject: String,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub attachments: Vec<String>,
}

impl State {
    pub(crate) fn new(cfg: SimConfig) -> State {
        let tenant = Tenant::new(
            cfg.seed,
            cfg.users,
            &cfg.domain,
            cfg.customer_id.clone(),
            cfg.suspended_every,
            &cfg.users_without_mailbox,
        );
        let n = tenant.users.len();
        let quota = cfg.quota.clone();
        let faults = Faults::default();
        faults.set(cfg.faults.clone());
        State {
            key: rsa_key(cfg.key_seed.unwrap_or(0x51_4d_5f_4b_45_59)),
            mailboxes: (0..n).map(|_| OnceLock::new()).collect(),
            users_rt: (0..n).map(|_| UserRt::default()).collect(),
            tokens: DashMap::new(),
            tokens_minted: DashMap::new(),
            token_counter: AtomicU64::new(0),
            quota_enabled: std::sync::atomic::AtomicBool::new(quota.enabled),
            quota: RwLock::new(quota),
            project: Default::default(),
            faults,
            stats: METHODS.iter().map(|_| MethodStats::default()).collect(),
            batch_calls: AtomicU64::new(0),
            batch_parts: AtomicU64::new(0),
            batch_max: AtomicU64::new(0),
            clock_offset_ms: AtomicI64::new(0),
            clock_frozen_ms: AtomicI64::new(NOT_FROZEN),
            page_secret: h2(cfg.seed, 0x9a9e),
            mutations: AtomicU64::new(0),
            base_url: OnceLock::new(),
            router: OnceLock::new(),
            tenant,
            cfg,
        }
    }

    pub(crate) fn now_ms(&self) -> i64 {
        let f = self.clock_frozen_ms.load(Ordering::Relaxed);
        if f != NOT_FROZEN {
            return f;
        }
        chrono::Utc::now().timestamp_millis() + self.clock_offset_ms.load(Ordering::Relaxed)
    }

    pub(crate) fn set_clock(&self, offset_ms: Option<i64>, frozen_ms: Option<i64>) {
        if let Some(o) = offset_ms {
            self.clock_offset_ms.store(o, Ordering::Relaxed);
        }
        self.clock_frozen_ms
            .store(frozen_ms.unwrap_or(NOT_FROZEN), Ordering::Relaxed);
    }

    pub(crate) fn base_url(&self) -> String {
        self.base_url.get().cloned().unwrap_or_default()
    }

    pub(crate) fn token_url(&self) -> String {
        format!("{}/token", self.base_url())
    }

    pub(crate) fn key_json(&self) -> ServiceAccountKey {
        let t = &self.tenant;
        ServiceAccountKey {
            key_type: "service_account".into(),
            project_id: t.project_id.clone(),
            private_key_id: t.sa_key_id.clone(),
            private_key: self.key.pem.clone(),
            client_email: t.sa_email.clone(),
            client_id: t.sa_client_id.clone(),
            auth_uri: format!("{}/o/oauth2/auth", self.base_url()),
            token_uri: self.token_url(),
            auth_provider_x509_cert_url: format!("{}/oauth2/v1/certs", self.base_url()),
            client_x509_cert_url: format!(
                "{}/robot/v1/metadata/x509/{}",
                self.base_url(),
                t.sa_email.replace('@', "%40")
            ),
            universe_domain: "googleapis.com".into(),
        }
    }

    pub(crate) fn world(&self) -> World<'_> {
        World {
            seed: self.cfg.seed,
            domain: &self.tenant.domain,
            users: &self.tenant.users,
        }
    }

    fn shape(&self) -> Shape {
        Shape {
            messages: self.cfg.messages_per_user,
            shared_ratio: self.cfg.shared_thread_ratio,
            n_users: self.tenant.users.len(),
        }
    }

    fn mailbox_lock(&self, u: usize) -> &RwLock<Mailbox> {
        self.mailboxes[u].get_or_init(|| {
            let mb = if self.tenant.flags[u].mailbox.load(Ordering::Relaxed) {
                Mailbox::generate(&self.world(), u, &self.shape())
            } else {
                Mailbox::empty(self.cfg.seed, u)
            };
            RwLock::new(mb)
        })
    }

    pub(crate) fn read_mb(&self, u: usize) -> RwLockReadGuard<'_, Mailbox> {
        // time-based retention is applied lazily
        if let Some(ret) = self.cfg.history_retention {
            let cutoff = self.now_ms() - ret.as_millis() as i64;
            let mut mb = self.write_mb(u);
            if mb.history.front().is_some_and(|r| r.at_ms < cutoff) {
                mb.expire_before(cutoff);
            }
        }
        self.mailbox_lock(u)
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Read access without the retention check (hot path).
    pub(crate) fn read_mb_fast(&self, u: usize) -> RwLockReadGuard<'_, Mailbox> {
        self.mailbox_lock(u)
            .read()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn write_mb(&self, u: usize) -> RwLockWriteGuard<'_, Mailbox> {
        self.mailbox_lock(u)
            .write()
            .unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn spec(&self, u: usize, m: &Msg) -> corpus::Spec {
        corpus::spec_of(&self.world(), u, m)
    }

    /// Ids (newest first) matching `q`/`labelIds`/`includeSpamTrash`, starting after `after`
    /// (a `(internal_ms, id)` keyset cursor); at most `max`. Returns (page, more, total matches).
    #[allow(clippy::type_complexity)]
    pub(crate) fn search(
        &self,
        u: usize,
        q: Option<&str>,
        label_ids: &[String],
        include_spam_trash: bool,
        after: Option<(i64, u64)>,
        max: usize,
    ) -> Result<(Vec<(u64, u64, i64)>, bool, usize), SimError> {
        let mb = self.read_mb(u);
        let node = q.map(query::parse);
        let mut want = 0u64;
        for l in label_ids {
            match mb.label_bit(l) {
                Some(b) => want |= b,
                None => return Err(SimError::InvalidInput(format!("Invalid label: {l}"))),
            }
        }
        let explicit = node.as_ref().is_some_and(query::mentions_spam_trash)
            || want & (corpus::L_SPAM | corpus::L_TRASH) != 0;
        let owner_email = self.tenant.users[u].email.clone();
        let now = self.now_ms();
        let make = |m: &Msg| self.spec(u, m);
        let mut out = Vec::new();
        let mut total = 0usize;
        let mut more = false;
        for &(ms, id) in mb.order.iter().rev() {
            let Some(m) = mb.msgs.get(&id) else { continue };
            if !include_spam_trash && !explicit && spam_or_trash(m.labels) {
                continue;
            }
            if m.labels & want != want {
                continue;
            }
            if let Some(n) = &node {
                let ctx = Ctx {
                    msg: m,
                    user_labels: &mb.user_labels,
                    owner_email: &owner_email,
                    now_ms: now,
                    spec: OnceCell::new(),
                    make_spec: &make,
                };
                if !query::eval(n, &ctx) {
                    continue;
                }
            }
            total += 1;
            if let Some(c) = after
                && (ms, id) >= c
            {
                continue;
            }
            if out.len() < max {
                out.push((id, m.thread_id, ms));
            } else {
                more = true;
            }
        }
        Ok((out, more, total))
    }

    pub(crate) fn truth(&self, u: usize) -> Vec<MessageTruth> {
        let mb = self.read_mb(u);
        let mut out = Vec::with_capacity(mb.msgs.len());
        for &(_, id) in mb.order.iter().rev() {
            let Some(m) = mb.msgs.get(&id) else { continue };
            let s = self.spec(u, m);
            let fmt = |a: &corpus::Addr| {
                if a.name.is_empty() {
                    a.email.clone()
                } else {
                    format!("{} <{}>", a.name, a.email)
                }
            };
            out.push(MessageTruth {
                id: format!("{:x}", m.id),
                thread_id: format!("{:x}", m.thread_id),
                label_ids: mb.label_ids(m.labels),
                internal_date: m.internal_ms.to_string(),
                history_id: m.history_id.to_string(),
                size_estimate: u64::from(m.size),
                message_id: s.message_id.clone(),
                subject: s.subject.clone(),
                from: fmt(&s.from),
                to: s.to.iter().map(fmt).collect(),
                cc: s.cc.iter().map(fmt).collect(),
                bcc: s.bcc.iter().map(fmt).collect(),
                attachments: s.attachments.iter().map(|a| a.filename.clone()).collect(),
            });
        }
        out
    }

    /// Renders message `m` of user `u` (RFC 822 bytes and snippet).
    pub(crate) fn render(&self, u: usize, m: &Msg) -> crate::mailbox::Rendered {
        let spec = self.spec(u, m);
        crate::mailbox::Rendered {
            raw: corpus::render(&corpus::build_tree(&spec, m.id)).into(),
            snippet: corpus::snippet(&spec).into(),
        }
    }

    /// The RFC 822 bytes of message `id` of user `u`: the stored rendering when there is one.
    pub(crate) fn raw(&self, u: usize, id: u64) -> Option<Vec<u8>> {
        let (m, stored) = {
            let mb = self.read_mb_fast(u);
            (mb.msgs.get(&id)?.clone(), mb.rendered.get(&id).cloned())
        };
        Some(stored.unwrap_or_else(|| self.render(u, &m)).raw.to_vec())
    }

    pub(crate) fn user(&self, email: &str) -> Result<usize, SimError> {
        self.tenant
            .user_index(email)
            .ok_or_else(|| SimError::NotFound(format!("user {email}")))
    }

    /// Applies one mutation.
    pub(crate) fn apply(&self, m: &Mutation) -> Result<MutationResult, SimError> {
        let now = self.now_ms();
        self.mutations.fetch_add(1, Ordering::Relaxed);
        let (user, out) = match m {
            Mutation::AddMessage {
                user,
                labels,
                internal_date,
                thread_id,
                message,
            } => {
                let u = self.user(user)?;
                let ms = internal_date.unwrap_or(now);
                let origin = Origin::Custom(Arc::new(message.clone()));
                let mut mb = self.write_mb(u);
                let mut bits = 0;
                for l in labels {
                    bits |= mb
                        .label_bit(l)
                        .ok_or_else(|| SimError::InvalidInput(format!("unknown label {l}")))?;
                }
                let thread = match thread_id {
                    Some(t) => parse_hex_id(t)?,
                    None => 0,
                };
                let mut msg = Msg {
                    id: ((ms as u64) << 20)
                        | (hash_bytes(self.cfg.seed, &now.to_le_bytes()) & 0xf_ffff),
                    thread_id: thread,
                    internal_ms: ms,
                    history_id: 0,
                    labels: bits,
                    size: 0,
                    origin,
                };
                let spec = self.spec(u, &msg);
                msg.size = corpus::render(&corpus::build_tree(&spec, msg.id)).len() as u32;
                let (id, h) = mb.add(now, msg);
                (
                    user.clone(),
                    MutationResult {
                        id: Some(format!("{id:x}")),
                        history_id: h.to_string(),
                    },
                )
            }
            Mutation::Delete { user, id } => {
                let u = self.user(user)?;
                let id = parse_hex_id(id)?;
                let h = self
                    .write_mb(u)
                    .delete(now, id)
                    .ok_or_else(|| SimError::NotFound(format!("message {id:x}")))?;
                (
                    user.clone(),
                    MutationResult {
                        id: Some(format!("{id:x}")),
                        history_id: h.to_string(),
                    },
                )
            }
            Mutation::Modify {
                user,
                id,
                add,
                remove,
            } => {
                let u = self.user(user)?;
                let id = parse_hex_id(id)?;
                let mut mb = self.write_mb(u);
                let mut a = 0;
                let mut r = 0;
                for l in add {
                    a |= mb
                        .label_bit(l)
                        .ok_or_else(|| SimError::InvalidInput(format!("unknown label {l}")))?;
                }
                for l in remove {
                    r |= mb
                        .label_bit(l)
                        .ok_or_else(|| SimError::InvalidInput(format!("unknown label {l}")))?;
                }
                let h = mb
                    .modify(now, id, a, r)
                    .ok_or_else(|| SimError::NotFound(format!("message {id:x}")))?;
                (
                    user.clone(),
                    MutationResult {
                        id: Some(format!("{id:x}")),
                        history_id: h.to_string(),
                    },
                )
            }
            Mutation::Trash { user, id } => {
                return self.apply(&Mutation::Modify {
                    user: user.clone(),
                    id: id.clone(),
                    add: vec!["TRASH".into()],
                    remove: vec![],
                });
            }
            Mutation::Untrash { user, id } => {
                return self.apply(&Mutation::Modify {
                    user: user.clone(),
                    id: id.clone(),
                    add: vec![],
                    remove: vec!["TRASH".into()],
                });
            }
            Mutation::CreateLabel { user, name } => {
                let u = self.user(user)?;
                let l = self
                    .write_mb(u)
                    .create_label(name)
                    .ok_or_else(|| SimError::InvalidInput("too many labels".into()))?;
                let h = self.read_mb_fast(u).history_id;
                (
                    user.clone(),
                    MutationResult {
                        id: Some(l.id),
                        history_id: h.to_string(),
                    },
                )
            }
            Mutation::SetUser {
                user,
                suspended,
                admin,
                mailbox,
            } => {
                let u = self.user(user)?;
                let f = &self.tenant.flags[u];
                if let Some(s) = suspended {
                    f.suspended.store(*s, Ordering::Relaxed);
                }
                if let Some(a) = admin {
                    f.admin.store(*a, Ordering::Relaxed);
                }
                if let Some(m) = mailbox {
                    f.mailbox.store(*m, Ordering::Relaxed);
                }
                (
                    user.clone(),
                    MutationResult {
                        id: None,
                        history_id: String::new(),
                    },
                )
            }
        };
        tracing::debug!(user = %user, "mutation applied");
        Ok(out)
    }

    pub(crate) fn expire_history(&self, user: &str, through: Option<u64>) -> Result<u64, SimError> {
        let u = self.user(user)?;
        let mut mb = self.write_mb(u);
        let floor = through.unwrap_or(mb.history_id);
        mb.expire_through(floor);
        Ok(mb.floor)
    }
}

pub(crate) fn parse_hex_id(s: &str) -> Result<u64, SimError> {
    u64::from_str_radix(s, 16).map_err(|_| SimError::InvalidInput(format!("Invalid id value: {s}")))
}

/// A change to a mailbox or the tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase")]
pub enum Mutation {
    /// Deliver a new message (`messagesAdded`).
    #[serde(rename_all = "camelCase")]
    AddMessage {
        user: String,
        #[serde(default)]
        labels: Vec<String>,
        /// Epoch ms; default now (simulator clock).
        #[serde(default)]
        internal_date: Option<i64>,
        /// Put the message into an existing thread.
        #[serde(default)]
        thread_id: Option<String>,
        #[serde(default)]
        message: CustomMessage,
    },
    /// Permanent deletion (`messagesDeleted`).
    Delete {
        user: String,
        id: String,
    },
    /// Add/remove labels (`labelsAdded` / `labelsRemoved`).
    Modify {
        user: String,
        id: String,
        #[serde(default)]
        add: Vec<String>,
        #[serde(default)]
        remove: Vec<String>,
    },
    Trash {
        user: String,
        id: String,
    },
    Untrash {
        user: String,
        id: String,
    },
    CreateLabel {
        user: String,
        name: String,
    },
    /// Tenant change: suspend/unsuspend, admin flag, mailbox set up.
    SetUser {
        user: String,
        #[serde(default)]
        suspended: Option<bool>,
        #[serde(default)]
        admin: Option<bool>,
        #[serde(default)]
        mailbox: Option<bool>,
    },
}

/// Result of a mutation.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct MutationResult {
    /// Message id (hex) or label id.
    pub id: Option<String>,
    /// The mailbox's history id after the change.
    pub history_id: String,
}

#[cfg(test)]
mod bench {
    use super::*;

    #[test]
    #[ignore = "timing breakdown, run by hand"]
    fn render_breakdown() {
        let st = State::new(SimConfig {
            users: 5,
            messages_per_user: 1000,
            ..Default::default()
        });
        let mb = st.read_mb(1);
        let msgs: Vec<Msg> = mb.msgs.values().cloned().collect();
        drop(mb);
        let t = std::time::Instant::now();
        let specs: Vec<_> = msgs.iter().map(|m| st.spec(1, m)).collect();
        let t_spec = t.elapsed();
        let t = std::time::Instant::now();
        let trees: Vec<_> = specs
            .iter()
            .zip(&msgs)
            .map(|(s, m)| corpus::build_tree(s, m.id))
            .collect();
        let t_tree = t.elapsed();
        let t = std::time::Instant::now();
        let raws: Vec<_> = trees.iter().map(corpus::render).collect();
        let t_render = t.elapsed();
        let total: usize = raws.iter().map(Vec::len).sum();
        eprintln!(
            "n={} spec={t_spec:?} tree={t_tree:?} render={t_render:?} avg_size={}",
            msgs.len(),
            total / msgs.len()
        );
    }
}
