//! Load generator: N concurrent keep-alive clients hammer `messages.get?format=raw`.
//!
//! ```text
//! cargo run --release -p google-workspace-sim --example load -- --clients 64 --seconds 10
//! cargo run --release -p google-workspace-sim --example load -- --url http://127.0.0.1:8787
//! ```
//!
//! Without `--url` a simulator (quota off) is started in-process; with `--url` an already running
//! `gws-sim --quota off` is used (its key and users come from `/__admin/tenant`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser;
use google_workspace_sim::{
    AssertionClaims, JWT_BEARER, QuotaConfig, SCOPE_GMAIL_READONLY, ServiceAccountKey, SimConfig,
    Simulator, sign_assertion,
};
use serde_json::Value;

#[derive(Parser, Debug)]
struct Args {
    /// Use a running simulator instead of starting one.
    #[arg(long)]
    url: Option<String>,
    #[arg(long, default_value_t = 64)]
    clients: usize,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, default_value_t = 20)]
    users: usize,
    #[arg(long, default_value_t = 500)]
    messages_per_user: usize,
    /// Response format to request.
    #[arg(long, default_value = "raw")]
    format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let args = Args::parse();
    let mut _sim = None;
    let base = match &args.url {
        Some(u) => u.trim_end_matches('/').to_string(),
        None => {
            let sim = Simulator::start(SimConfig {
                users: args.users,
                messages_per_user: args.messages_per_user,
                quota: QuotaConfig::off(),
                ..Default::default()
            })
            .await?;
            let b = sim.base_url();
            _sim = Some(sim);
            b
        }
    };
    let setup = reqwest::Client::new();
    let tenant: Value = setup
        .get(format!("{base}/__admin/tenant"))
        .send()
        .await?
        .json()
        .await?;
    let key: ServiceAccountKey =
        serde_json::from_value(tenant["serviceAccount"]["keyJson"].clone())?;
    let users: Vec<String> = tenant["users"]
        .as_array()
        .context("users")?
        .iter()
        .filter(|u| u["suspended"] == false && u["isMailboxSetup"] == true)
        .filter_map(|u| u["primaryEmail"].as_str().map(str::to_string))
        .collect();
    // one token and the message ids of every user
    let mut targets: Vec<(String, String, Vec<String>)> = Vec::new();
    for u in &users {
        let now = chrono::Utc::now().timestamp();
        let a = sign_assertion(
            &key,
            &AssertionClaims::google_auth(&key, Some(u), &[SCOPE_GMAIL_READONLY], now),
        )?;
        let tok: Value = setup
            .post(&key.token_uri)
            .form(&[("grant_type", JWT_BEARER), ("assertion", a.as_str())])
            .send()
            .await?
            .json()
            .await?;
        let token = tok["access_token"].as_str().context("token")?.to_string();
        let list: Value = setup
            .get(format!(
                "{base}/gmail/v1/users/me/messages?maxResults=500&includeSpamTrash=true"
            ))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        let ids: Vec<String> = list["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["id"].as_str().map(str::to_string))
            .collect();
        if !ids.is_empty() {
            targets.push((u.clone(), token, ids));
        }
    }
    anyhow::ensure!(!targets.is_empty(), "no messages to fetch");
    let targets = Arc::new(targets);
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let targets = targets.clone();
        let (ok, failed, bytes) = (ok.clone(), failed.clone(), bytes.clone());
        let base = base.clone();
        let format = args.format.clone();
        tasks.push(tokio::spawn(async move {
            let client = reqwest::Client::builder()
                .pool_max_idle_per_host(1)
                .build()?;
            let mut i = c * 7919;
            while Instant::now() < deadline {
                let (_, token, ids) = &targets[i % targets.len()];
                let id = &ids[(i / targets.len()) % ids.len()];
                i += 1;
                let r = client
                    .get(format!(
                        "{base}/gmail/v1/users/me/messages/{id}?format={format}"
                    ))
                    .bearer_auth(token)
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().is_success() => {
                        let b = r.bytes().await?;
                        bytes.fetch_add(b.len() as u64, Ordering::Relaxed);
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let n = ok.load(Ordering::Relaxed);
    println!(
        "{} ok, {} failed in {:.2}s: {:.0} req/s, {:.1} MB/s, {} clients, {} users",
        n,
        failed.load(Ordering::Relaxed),
        secs,
        n as f64 / secs,
        bytes.load(Ordering::Relaxed) as f64 / secs / 1e6,
        args.clients,
        targets.len()
    );
    Ok(())
}
