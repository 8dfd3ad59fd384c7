//! Test helpers: start a simulator and talk to it over real HTTP.
#![allow(dead_code)]

use google_workspace_sim::{
    AssertionClaims, SCOPE_DIRECTORY_READONLY, SCOPE_GMAIL_READONLY, ServiceAccountKey, SimConfig,
    Simulator, sign_assertion,
};
use serde_json::Value;

pub struct Env {
    pub sim: Simulator,
    pub http: reqwest::Client,
    pub key: ServiceAccountKey,
}

pub async fn start(cfg: SimConfig) -> Env {
    // reqwest is built with `rustls-no-provider`; plain http still needs a provider installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sim = Simulator::start(cfg).await.expect("simulator starts");
    let key = ServiceAccountKey::from_json(&sim.service_account_key_json()).expect("key json");
    Env {
        sim,
        http: reqwest::Client::new(),
        key,
    }
}

pub fn small() -> SimConfig {
    SimConfig {
        users: 8,
        messages_per_user: 120,
        seed: 7,
        quota: google_workspace_sim::QuotaConfig::off(),
        ..Default::default()
    }
}

impl Env {
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.sim.base_url(), path)
    }

    pub fn now(&self) -> i64 {
        self.sim.now_ms() / 1000
    }

    pub fn assertion(&self, sub: Option<&str>, scopes: &[&str]) -> String {
        let claims = AssertionClaims::google_auth(&self.key, sub, scopes, self.now());
        sign_assertion(&self.key, &claims).expect("sign")
    }

    /// POSTs an assertion; returns (status, body).
    pub async fn token_raw(&self, assertion: &str) -> (u16, Value) {
        let r = self
            .http
            .post(&self.key.token_uri)
            .form(&[
                ("grant_type", google_workspace_sim::JWT_BEARER),
                ("assertion", assertion),
            ])
            .send()
            .await
            .expect("token request");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn token(&self, sub: &str, scope: &str) -> String {
        let (s, v) = self.token_raw(&self.assertion(Some(sub), &[scope])).await;
        assert_eq!(s, 200, "token: {v}");
        v["access_token"]
            .as_str()
            .expect("access_token")
            .to_string()
    }

    pub async fn gmail_token(&self, sub: &str) -> String {
        self.token(sub, SCOPE_GMAIL_READONLY).await
    }

    pub async fn admin_token(&self) -> String {
        self.token(&self.sim.admin_email(), SCOPE_DIRECTORY_READONLY)
            .await
    }

    pub async fn get(&self, token: &str, path: &str) -> (u16, Value) {
        let r = self
            .http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .expect("request");
        let s = r.status().as_u16();
        (s, r.json().await.unwrap_or(Value::Null))
    }

    /// All ids of a paged messages.list.
    pub async fn list_all(&self, token: &str, user: &str, extra: &str, page: usize) -> Vec<String> {
        let mut ids = Vec::new();
        let mut tok: Option<String> = None;
        loop {
            let mut path = format!("/gmail/v1/users/{user}/messages?maxResults={page}{extra}");
            if let Some(t) = &tok {
                path.push_str(&format!("&pageToken={t}"));
            }
            let (s, v) = self.get(token, &path).await;
            assert_eq!(s, 200, "{v}");
            for m in v["messages"].as_array().into_iter().flatten() {
                ids.push(m["id"].as_str().expect("id").to_string());
            }
            match v["nextPageToken"].as_str() {
                Some(t) => tok = Some(t.to_string()),
                None => break,
            }
        }
        ids
    }

    /// An active (not suspended) non-admin user with a mailbox.
    pub fn regular_user(&self) -> String {
        self.sim
            .users()
            .into_iter()
            .find(|u| !u.is_admin && !u.suspended && u.is_mailbox_setup)
            .expect("a regular user")
            .primary_email
    }
}

pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
