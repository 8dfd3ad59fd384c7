//! The simulated Workspace tenant: customer, domain, users, service account, delegation.

use std::collections::{HashMap, HashSet};
use std::sync::RwLock;
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::corpus::user_name;
use crate::rng::{Rng, h2};

/// Immutable identity of a user.
#[derive(Debug, Clone)]
pub(crate) struct UserIdent {
    pub id: String,
    pub email: String,
    pub given: String,
    pub family: String,
    pub creation_ms: i64,
    pub org_unit: &'static str,
}

impl UserIdent {
    pub(crate) fn full_name(&self) -> String {
        format!("{} {}", self.given, self.family)
    }
}

/// Mutable user flags.
#[derive(Debug, Default)]
pub(crate) struct UserFlags {
    pub suspended: AtomicBool,
    pub admin: AtomicBool,
    pub mailbox: AtomicBool,
}

/// A user as reported by the ground-truth API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct UserInfo {
    pub id: String,
    pub primary_email: String,
    pub given_name: String,
    pub family_name: String,
    pub is_admin: bool,
    pub suspended: bool,
    pub is_mailbox_setup: bool,
    pub creation_time: String,
}

pub(crate) struct Tenant {
    pub domain: String,
    pub customer_id: String,
    pub users: Vec<UserIdent>,
    pub flags: Vec<UserFlags>,
    pub by_email: HashMap<String, usize>,
    pub sa_email: String,
    pub sa_client_id: String,
    pub sa_key_id: String,
    pub project_id: String,
    /// Domain-wide delegation: client id → granted scopes.
    pub delegation: RwLock<HashMap<String, HashSet<String>>>,
    /// Service account disabled (token endpoint answers `invalid_client`... see docs).
    pub sa_disabled: AtomicBool,
}

pub const SCOPE_GMAIL_READONLY: &str = "https://www.googleapis.com/auth/gmail.readonly";
pub const SCOPE_GMAIL_MODIFY: &str = "https://www.googleapis.com/auth/gmail.modify";
pub const SCOPE_GMAIL_METADATA: &str = "https://www.googleapis.com/auth/gmail.metadata";
pub const SCOPE_MAIL: &str = "https://mail.google.com/";
pub const SCOPE_DIRECTORY_READONLY: &str =
    "https://www.googleapis.com/auth/admin.directory.user.readonly";
pub const SCOPE_DIRECTORY: &str = "https://www.googleapis.com/auth/admin.directory.user";
pub const SCOPE_CLOUD: &str = "https://www.googleapis.com/auth/cloud-platform";

pub(crate) fn user_ts(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default()
}

impl Tenant {
    pub(crate) fn new(
        seed: u64,
        n_users: usize,
        domain: &str,
        customer_id: Option<String>,
        suspended_every: usize,
        no_mailbox: &[usize],
    ) -> Tenant {
        let mut r = Rng::new(h2(seed, 0x7e4a));
        let customer_id =
            customer_id.unwrap_or_else(|| format!("C0{:07x}", r.below(0x0fff_ffff) + 0x100_0000));
        let mut users = Vec::with_capacity(n_users);
        let mut flags = Vec::with_capacity(n_users);
        let mut by_email = HashMap::with_capacity(n_users);
        for i in 0..n_users.max(1) {
            let (given, family) = user_name(seed, i);
            let email = if i == 0 {
                format!("admin@{domain}")
            } else {
                let fam: String = family
                    .chars()
                    .map(|c| match c {
                        'ü' => 'u',
                        'ö' => 'o',
                        'ä' => 'a',
                        c => c,
                    })
                    .collect();
                format!(
                    "{}.{}{}@{domain}",
                    given.to_lowercase(),
                    fam.to_lowercase(),
                    i
                )
            };
            let ident = UserIdent {
                id: format!("1{:020}", h2(seed, i as u64)),
                email: email.clone(),
                given,
                family,
                creation_ms: 1_420_070_400_000 + r.below(220_000_000_000) as i64,
                org_unit: if i % 3 == 0 { "/" } else { "/Sales" },
            };
            let f = UserFlags::default();
            f.admin.store(i == 0, Ordering::Relaxed);
            f.suspended.store(
                i != 0 && suspended_every > 0 && i % suspended_every == suspended_every - 1,
                Ordering::Relaxed,
            );
            f.mailbox.store(!no_mailbox.contains(&i), Ordering::Relaxed);
            by_email.insert(email.to_lowercase(), i);
            users.push(ident);
            flags.push(f);
        }
        let project_id = format!("sim-project-{}", r.below(900_000) + 100_000);
        let sa_client_id = format!("1{:020}", r.next_u64());
        let sa_key_id = format!(
            "{:016x}{:016x}{:08x}",
            r.next_u64(),
            r.next_u64(),
            r.next_u64() as u32
        );
        let mut delegation = HashMap::new();
        delegation.insert(
            sa_client_id.clone(),
            [SCOPE_GMAIL_READONLY, SCOPE_DIRECTORY_READONLY]
                .iter()
                .map(|s| s.to_string())
                .collect::<HashSet<_>>(),
        );
        Tenant {
            domain: domain.to_string(),
            customer_id,
            users,
            flags,
            by_email,
            sa_email: format!("gws-sim-sync@{project_id}.iam.gserviceaccount.com"),
            sa_client_id,
            sa_key_id,
            project_id,
            delegation: RwLock::new(delegation),
            sa_disabled: AtomicBool::new(false),
        }
    }

    pub(crate) fn user_index(&self, email: &str) -> Option<usize> {
        self.by_email.get(&email.to_lowercase()).copied()
    }

    pub(crate) fn info(&self, i: usize) -> UserInfo {
        let u = &self.users[i];
        let f = &self.flags[i];
        UserInfo {
            id: u.id.clone(),
            primary_email: u.email.clone(),
            given_name: u.given.clone(),
            family_name: u.family.clone(),
            is_admin: f.admin.load(Ordering::Relaxed),
            suspended: f.suspended.load(Ordering::Relaxed),
            is_mailbox_setup: f.mailbox.load(Ordering::Relaxed),
            creation_time: user_ts(u.creation_ms),
        }
    }

    pub(crate) fn is_suspended(&self, i: usize) -> bool {
        self.flags[i].suspended.load(Ordering::Relaxed)
    }
}
