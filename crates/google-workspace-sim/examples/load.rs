//! Load generator: N concurrent keep-alive clients hammer `messages.get?format=raw`.
//!
//! ```text
//! cargo run --release -p google-workspace-sim --example load -- --clients 64 --seconds 10
//! cargo run --release -p google-workspace-sim --example load -- --url http://127.0.0.1:8787
//! ```
//!
//! Without `--url` a simulator (quota off) is started in-process; with `--url` an already running
//! `gws-sim --quota off` is used (its key and users come from `/__admin/tenant`).
//!
//! With `--wrk` the requests are sent by [wrk](https://github.com/wg/wrk) (a C load generator,
//! Debian package `wrk`) instead of this process: tokens and message ids are prepared here, then
//! `wrk` runs with a Lua script that cycles through them. On a 2-core machine the generator's own
//! CPU cost decides how much is left for the simulator, so the lean generator gives the figure
//! closest to the simulator's capacity. `cargo xtask bench sim` runs this mode against a separate
//! `gws-sim` process when `wrk` is installed.

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
    /// Send the load with `wrk` (must be on PATH) instead of in-process clients.
    #[arg(long)]
    wrk: bool,
    /// `wrk` threads (with `--wrk`).
    #[arg(long, default_value_t = 1)]
    wrk_threads: usize,
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
    if args.wrk {
        return run_wrk(&args, &base, &targets);
    }
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

/// Runs `wrk` over every (token, message) pair, interleaving users; prints wrk's report and a
/// summary line in the same shape as the in-process mode.
fn run_wrk(
    args: &Args,
    base: &str,
    targets: &[(String, String, Vec<String>)],
) -> anyhow::Result<()> {
    use std::fmt::Write as _;
    let longest = targets.iter().map(|t| t.2.len()).max().unwrap_or(0);
    let mut lua = String::from("local targets = {\n");
    for i in 0..longest {
        for (_, token, ids) in targets {
            if let Some(id) = ids.get(i) {
                writeln!(
                    lua,
                    "  {{\"/gmail/v1/users/me/messages/{id}?format={}\", \"Bearer {token}\"}},",
                    args.format
                )?;
            }
        }
    }
    lua.push_str(
        r#"}
local requests = {}
local n = 0
init = function(args)
  for i, t in ipairs(targets) do
    requests[i] = wrk.format("GET", t[1], { ["Authorization"] = t[2] })
  end
end
request = function()
  n = n + 1
  return requests[(n % #requests) + 1]
end
"#,
    );
    let script = std::env::temp_dir().join(format!("gws-sim-load-{}.lua", std::process::id()));
    std::fs::write(&script, lua)?;
    let out = std::process::Command::new("wrk")
        .arg(format!("-t{}", args.wrk_threads.max(1)))
        .arg(format!("-c{}", args.clients))
        .arg(format!("-d{}s", args.seconds))
        .arg("--latency")
        .arg("-s")
        .arg(&script)
        .arg(base)
        .output()
        .context("cannot run wrk (Debian package `wrk`)")?;
    let _ = std::fs::remove_file(&script);
    let report = String::from_utf8_lossy(&out.stdout);
    print!("{report}");
    anyhow::ensure!(
        out.status.success(),
        "wrk failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let number = |prefix: &str| -> Option<f64> {
        report
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    };
    let rps = number("Requests/sec:").context("wrk printed no Requests/sec")?;
    let non_2xx = number("Non-2xx or 3xx responses:").unwrap_or(0.0);
    println!(
        "wrk: {rps:.0} req/s, {non_2xx} non-2xx, {} clients, {} users",
        args.clients,
        targets.len()
    );
    anyhow::ensure!(non_2xx == 0.0, "{non_2xx} requests failed");
    Ok(())
}
