//! `gws-sim`: run the Google Workspace simulator as a process.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use google_workspace_sim::{QuotaConfig, SimConfig, Simulator, parse_fault_spec};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser, Debug)]
#[command(
    name = "gws-sim",
    about = "A local Google Workspace (OAuth, Directory, Gmail) simulator"
)]
struct Args {
    /// Port to listen on (0 = any free port).
    #[arg(long, default_value_t = 8787)]
    port: u16,
    /// Address to bind.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    #[arg(long, default_value_t = 10)]
    users: usize,
    #[arg(long, default_value_t = 200)]
    messages_per_user: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Quota enforcement: on | off.
    #[arg(long, default_value = "on")]
    quota: String,
    /// Fault rules: inline JSON array or @file.json.
    #[arg(long)]
    faults: Option<String>,
    /// Write the service-account key JSON here.
    #[arg(long)]
    key_out: Option<std::path::PathBuf>,
    /// Share of each mailbox in conversations shared with colleagues.
    #[arg(long, default_value_t = 0.2)]
    shared_ratio: f64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let quota = match args.quota.as_str() {
        "on" => QuotaConfig::default(),
        "off" => QuotaConfig::off(),
        other => anyhow::bail!("--quota must be on or off, not {other}"),
    };
    let faults = match &args.faults {
        Some(s) => parse_fault_spec(s).context("--faults")?,
        None => Vec::new(),
    };
    let bind: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .context("--host/--port")?;
    let sim = Simulator::start(SimConfig {
        users: args.users,
        messages_per_user: args.messages_per_user,
        seed: args.seed,
        quota,
        faults,
        bind,
        shared_thread_ratio: args.shared_ratio,
        ..Default::default()
    })
    .await?;
    if let Some(path) = &args.key_out {
        std::fs::write(path, sim.service_account_key_json())
            .with_context(|| format!("writing {}", path.display()))?;
    }
    println!("{}", sim.base_url());
    eprintln!(
        "admin={} customer={} domain={}",
        sim.admin_email(),
        sim.customer_id(),
        sim.domain()
    );
    tokio::signal::ctrl_c()
        .await
        .context("waiting for ctrl-c")?;
    sim.shutdown().await;
    Ok(())
}
