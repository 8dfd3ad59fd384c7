//! `connectors`: the connectors service (`connectors run`) and its management command line.

mod test_connector;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, anyhow, bail};
use clap::{Args, Parser, Subcommand};
use connector_framework::{
    EsClient,
    config::{Config, LogFormat},
    es::{HttpMethod, encode_segment},
    model::{ConnectorStatus, JobStatus, JobType, TriggerMethod},
    protocol::{ConnectorDoc, IndexNames, JobDoc, Patch, Store, new_connector_document},
    service::{self, ServiceContext},
    source::Registry,
    sync::index::{IndexPreparation, analysis_settings, create_content_index, index_exists},
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

/// The connectors this binary is built with.
/// The connectors of this binary (`connectors::registry_with`), with the bulk settings of
/// `config.yml`; plus the test connectors when `CONNECTORS_TEST_CONNECTORS=1` (tests only).
fn registry(config: &Config) -> Registry {
    let settings = connector_framework::sync::SyncSettings {
        bulk: config.elasticsearch.bulk.to_options(),
        ..Default::default()
    };
    let mut registry = connectors::registry_with(settings.clone());
    if std::env::var("CONNECTORS_TEST_CONNECTORS").as_deref() == Ok("1") {
        registry.register(Arc::new(test_connector::TestSleeper));
        registry.register(connector_framework::sync::erase_with(
            connector_framework::testing::GeneratorConnector::new(),
            settings,
        ));
    }
    registry
}

#[derive(Parser, Debug)]
#[command(
    name = "connectors",
    version,
    about = "Elasticsearch connectors service and management"
)]
struct Cli {
    /// Configuration file.
    #[arg(short = 'c', long = "config", global = true)]
    config: Option<PathBuf>,
    /// Print JSON instead of tables (for scripts).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the service: scheduler, job executor and cleanup, until SIGTERM/SIGINT.
    Run,
    /// Configuration file commands.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Manage connectors.
    #[command(subcommand)]
    Connector(ConnectorCommand),
    /// Start syncs.
    #[command(subcommand)]
    Sync(SyncCommand),
    /// Inspect and cancel sync jobs.
    #[command(subcommand)]
    Job(JobCommand),
}

#[derive(Subcommand, Debug)]
enum ConfigCommand {
    /// Validate the configuration file (and environment overrides).
    Check,
}

#[derive(Subcommand, Debug)]
enum ConnectorCommand {
    /// Create a connector document.
    Create(CreateArgs),
    /// List connectors.
    List,
    /// Show one connector.
    Show {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Set configuration values (`--set key=value`) and schedules (`--schedule full=CRON`).
    Configure {
        #[arg(allow_hyphen_values = true)]
        id: String,
        #[command(flatten)]
        settings: Settings,
    },
    /// Delete a connector (soft delete, as Elastic's API does; `--hard` removes the document).
    Delete {
        #[arg(allow_hyphen_values = true)]
        id: String,
        #[arg(long)]
        hard: bool,
    },
}

#[derive(Args, Debug)]
struct CreateArgs {
    /// Content index the connector writes.
    #[arg(long)]
    index_name: String,
    #[arg(long)]
    service_type: String,
    /// Display name (defaults to the index name).
    #[arg(long)]
    name: Option<String>,
    /// Connector id (automatic when omitted).
    #[arg(long, allow_hyphen_values = true)]
    id: Option<String>,
    /// Language of the content index's analyzers (`en` when omitted), e.g. `fr`, `ja`.
    #[arg(long)]
    index_language: Option<String>,
    /// Write into an index that already exists instead of creating it. Without it, an existing
    /// index is refused: a full sync deletes every document its source does not have.
    #[arg(long)]
    from_index: bool,
    #[command(flatten)]
    settings: Settings,
}

#[derive(Args, Debug, Default)]
struct Settings {
    /// Configuration value, `key=value` (value parsed as JSON when it is valid JSON).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Schedule, `full|incremental|access_control=<quartz cron>`, or `<type>=off`.
    #[arg(long = "schedule", value_name = "TYPE=CRON")]
    schedule: Vec<String>,
}

#[derive(Subcommand, Debug)]
enum SyncCommand {
    /// Create an on-demand sync job.
    Start {
        #[arg(allow_hyphen_values = true)]
        connector_id: String,
        #[arg(long = "type", default_value = "full")]
        job_type: JobType,
        /// Wait until the job ends; exit non-zero unless it completed.
        #[arg(long)]
        wait: bool,
        /// Seconds to wait at most with --wait.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
    },
}

#[derive(Subcommand, Debug)]
enum JobCommand {
    /// List jobs, oldest first.
    List {
        #[arg(long, allow_hyphen_values = true)]
        connector: Option<String>,
        #[arg(long)]
        status: Option<String>,
    },
    /// Show one job.
    Show {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
    /// Cancel a job: pending/suspended ones at once, running ones by their worker.
    Cancel {
        #[arg(allow_hyphen_values = true)]
        id: String,
    },
}

/// mimalloc: the service allocates per document (JSON trees, MIME parts, bulk bodies).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    connector_framework::install_crypto_provider();
    let cli = Cli::parse();
    // Read before the runtime exists: `service.worker_threads` sizes it.
    let config = load_config(cli.config.as_deref());
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = config
        .as_ref()
        .ok()
        .and_then(|c| c.service.worker_threads)
        .filter(|n| *n > 0)
    {
        builder.worker_threads(n);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let result = runtime.block_on(dispatch(cli, config));
    shutdown_telemetry();
    if let Err(e) = result {
        eprintln!("error: {}", one_line(&e));
        std::process::exit(1);
    }
}

fn one_line(e: &anyhow::Error) -> String {
    e.chain()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ")
        .replace('\n', " ")
}

fn load_config(path: Option<&Path>) -> Result<Config> {
    match path {
        Some(p) => Config::load(p).map_err(Into::into),
        None => Config::load_optional(Path::new("config.yml")).map_err(Into::into),
    }
}

fn init_logging(config: &Config) {
    use connector_framework::telemetry::logging;
    let format = match config.service.log_format {
        LogFormat::Json => logging::LogFormat::Json,
        LogFormat::Text => logging::LogFormat::Human,
    };
    // RUST_LOG (a tracing filter) wins over service.log_level.
    let level = std::env::var("RUST_LOG")
        .ok()
        .filter(|l| !l.trim().is_empty())
        .unwrap_or_else(|| config.service.log_level.as_filter().to_owned());
    // Traces go to OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set; nothing is exported otherwise.
    let otlp = connector_framework::telemetry::otel::OtlpConfig::explicit_or_env(None);
    match logging::Logging::new(format, level).otlp(otlp).init() {
        // The guard flushes spans when the process ends.
        Ok(guard) => {
            let _ = TELEMETRY.set(std::sync::Mutex::new(Some(guard)));
        }
        Err(e) => eprintln!("warning: cannot set up logging: {e}"),
    }
}

/// Flushes and shuts down the trace exporter (called before the process exits).
fn shutdown_telemetry() {
    if let Some(slot) = TELEMETRY.get()
        && let Ok(mut guard) = slot.lock()
        && let Some(mut guard) = guard.take()
    {
        let _ = guard.shutdown();
    }
}

static TELEMETRY: std::sync::OnceLock<
    std::sync::Mutex<Option<connector_framework::telemetry::otel::TelemetryGuard>>,
> = std::sync::OnceLock::new();

async fn dispatch(cli: Cli, config: Result<Config>) -> Result<()> {
    if let Command::Config(ConfigCommand::Check) = cli.command {
        let config = config?;
        return config_check(&config, cli.config.as_deref(), cli.json);
    }
    let config = config?;
    init_logging(&config);
    for w in config.warnings() {
        tracing::warn!("{w}");
    }
    match cli.command {
        Command::Run => run(config).await,
        Command::Config(_) => Ok(()),
        Command::Connector(c) => connector_command(&config, c, cli.json).await,
        Command::Sync(c) => sync_command(&config, c, cli.json).await,
        Command::Job(c) => job_command(&config, c, cli.json).await,
    }
}

fn config_check(config: &Config, path: Option<&Path>, json: bool) -> Result<()> {
    let entries = config.connector_entries();
    if json {
        println!(
            "{}",
            json!({
                "valid": true,
                "file": path.map(|p| p.display().to_string()),
                "elasticsearch": config.elasticsearch.host,
                "connectors": entries.iter().map(|e| json!({
                    "connector_id": e.connector_id.0, "service_type": e.service_type,
                    "api_key": e.api_key.is_some()})).collect::<Vec<_>>(),
                "service_types": config.service.service_types,
            })
        );
    } else {
        println!(
            "configuration is valid{}",
            path.map(|p| format!(" ({})", p.display()))
                .unwrap_or_default()
        );
        println!("  elasticsearch: {}", config.elasticsearch.host);
        println!("  connectors:    {}", entries.len());
        for e in &entries {
            println!(
                "    - {} ({})",
                e.connector_id.0,
                e.service_type
                    .as_deref()
                    .unwrap_or("service type from the document")
            );
        }
        if !config.service.service_types.is_empty() {
            println!(
                "  service types: {}",
                config.service.service_types.join(", ")
            );
        }
        for w in config.warnings() {
            println!("  warning: {w}");
        }
    }
    Ok(())
}

async fn run(config: Config) -> Result<()> {
    let registry = registry(&config);
    if registry.service_types().is_empty() {
        tracing::warn!("this binary has no connectors registered");
    }
    let es = EsClient::new(&config.es_connection()?)?;
    let store = service::preflight(&config, es)
        .await
        .context("preflight check failed")?;
    let metrics_address = config.service.metrics_address.clone();
    let stale = config
        .idling()
        .max(config.job_cleanup_interval())
        .saturating_mul(3);
    let ctx = ServiceContext::new(Arc::new(config), store, registry);
    let shutdown = CancellationToken::new();
    if let Some(addr) = metrics_address {
        let addr = addr
            .parse()
            .with_context(|| format!("service.metrics_address {addr:?}"))?;
        connector_framework::telemetry::server::serve(
            addr,
            ctx.health.clone(),
            stale,
            shutdown.clone(),
        )
        .await
        .with_context(|| format!("cannot serve metrics on {addr}"))?;
    }
    let signal = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signal.cancel();
    });
    tracing::info!(
        worker = %ctx.worker,
        worker_threads = tokio::runtime::Handle::current().metrics().num_workers(),
        "connectors service started"
    );
    service::run(ctx, shutdown).await?;
    tracing::info!("connectors service stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) {
            (Ok(mut term), Ok(mut int)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
            }
            _ => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn open_store(config: &Config) -> Result<Store> {
    let es = EsClient::new(&config.es_connection()?)?;
    let names = IndexNames {
        connectors: config.service.connectors_index.clone(),
        jobs: config.service.jobs_index.clone(),
    };
    let store = Store::detect(es, names, config.elasticsearch.feature_use_connectors_api)
        .await
        .with_context(|| {
            format!(
                "cannot reach elasticsearch at {}",
                config.elasticsearch.host
            )
        })?;
    store.ensure_indices().await?;
    // People and scripts expect to see what was just written: make recent writes searchable.
    store.refresh().await?;
    Ok(store)
}

/// `key=value` → (key, value parsed as JSON, else the string).
fn parse_assignment(s: &str) -> Result<(String, Value)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("expected KEY=VALUE, got {s:?}"))?;
    let k = k.trim();
    if k.is_empty() {
        bail!("empty key in {s:?}");
    }
    let value = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_owned()));
    Ok((k.to_owned(), value))
}

/// Applies `--set` and `--schedule` to a patch, checking keys against `configuration`.
fn settings_patch(
    settings: &Settings,
    configuration: &serde_json::Map<String, Value>,
) -> Result<Patch> {
    let mut patch = Patch::new();
    for s in &settings.set {
        let (k, v) = parse_assignment(s)?;
        if !configuration.contains_key(&k) {
            let mut known: Vec<&String> = configuration.keys().collect();
            known.sort();
            bail!(
                "unknown configuration field {k:?} (fields: {})",
                known
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
        }
        patch.push(format!("configuration.{k}.value"), v);
    }
    for s in &settings.schedule {
        let (k, v) = s
            .split_once('=')
            .ok_or_else(|| anyhow!("expected TYPE=CRON, got {s:?}"))?;
        let job_type: JobType = k.trim().parse().map_err(|e: String| anyhow!(e))?;
        let v = v.trim();
        if v == "off" {
            patch.push(format!("scheduling.{job_type}.enabled"), false);
        } else {
            service::validate_cron(v).map_err(|e| anyhow!(e))?;
            patch.push(
                format!("scheduling.{job_type}"),
                json!({"enabled": true, "interval": v}),
            );
        }
    }
    Ok(patch)
}

fn connector_json(c: &ConnectorDoc) -> Value {
    let mut raw = c.raw().clone();
    // Never print secrets: mask sensitive configuration values.
    if let Some(Value::Object(conf)) = raw.get_mut("configuration") {
        for field in conf.values_mut() {
            if field["sensitive"] == json!(true) && !field["value"].is_null() {
                field["value"] = json!("********");
            }
        }
    }
    json!({"id": c.id(), "connector": raw})
}

fn job_json(j: &JobDoc) -> Value {
    json!({
        "id": j.id(),
        "connector_id": j.connector_id(),
        "index_name": j.index_name(),
        "job_type": j.job_type(),
        "status": j.raw().get("status"),
        "trigger_method": j.trigger_method(),
        "indexed_document_count": j.indexed_document_count(),
        "indexed_document_volume": j.indexed_document_volume(),
        "deleted_document_count": j.deleted_document_count(),
        "error": j.error(),
        "created_at": j.raw().get("created_at"),
        "completed_at": j.raw().get("completed_at"),
        "worker_hostname": j.worker_hostname(),
    })
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    for r in rows {
        println!("{}", line(r));
    }
}

fn s(v: Option<&str>) -> String {
    v.unwrap_or("-").to_owned()
}

/// The content index of a connector being created, as Elastic's `connector create` prepares
/// it: created with the connector's mappings (and the language's analyzers when the cluster has
/// them), unless `--from-index` names an existing one. Refuses an index that exists without
/// `--from-index`, a missing one with it, and an index another connector writes. Whether the
/// index was created here.
async fn prepare_index(store: &Store, args: &CreateArgs) -> Result<bool> {
    let index = &args.index_name;
    if let Some(language) = &args.index_language {
        analysis_settings(language).map_err(|e| anyhow!("--index-language: {e}"))?;
    }
    let users: Vec<String> = store
        .list_connectors(Some(json!({"term": {"index_name": index}})))
        .await?
        .iter()
        .filter(|c| !c.is_deleted())
        .map(|c| c.id().to_owned())
        .collect();
    if !users.is_empty() {
        bail!(
            "index {index} is already the content index of connector {}",
            users.join(", ")
        );
    }
    let exists = index_exists(store.es(), index)
        .await
        .with_context(|| format!("cannot check whether index {index} exists"))?;
    match (exists, args.from_index) {
        (true, true) => Ok(false),
        (true, false) => bail!(
            "index {index} already exists: pass --from-index to write into it (a full sync \
             deletes the documents its source does not have)"
        ),
        (false, true) => {
            bail!("index {index} does not exist (--from-index needs an existing index)")
        }
        (false, false) => {
            let outcome = create_content_index(store.es(), index, args.index_language.as_deref())
                .await
                .with_context(|| format!("cannot create index {index}"))?;
            tracing::debug!(index, ?outcome, "content index prepared");
            // One that appeared meanwhile is not this command's to remove on a failure.
            Ok(outcome != IndexPreparation::Existing)
        }
    }
}

async fn connector_command(config: &Config, cmd: ConnectorCommand, as_json: bool) -> Result<()> {
    let store = open_store(config).await?;
    let registry = registry(config);
    match cmd {
        ConnectorCommand::Create(args) => {
            let source = registry.get(&args.service_type)?;
            let mut configuration = source.default_configuration();
            let patch = settings_patch(&args.settings, &configuration)?;
            let mut raw = serde_json::Map::new();
            raw.insert("configuration".into(), Value::Object(configuration.clone()));
            patch.apply(&mut raw);
            if let Some(Value::Object(c)) = raw.remove("configuration") {
                configuration = c;
            }
            let status = if source.check_configuration(&configuration).is_ok() {
                ConnectorStatus::Configured
            } else {
                ConnectorStatus::NeedsConfiguration
            };
            let mut doc = new_connector_document(
                &args.index_name,
                &args.service_type,
                args.name.as_deref().unwrap_or(&args.index_name),
                configuration,
                &source.features(),
                status,
            );
            if let Some(Value::Object(s)) = raw.remove("scheduling") {
                for (k, v) in s {
                    doc["scheduling"][&k] = v;
                }
            }
            if let Some(language) = &args.index_language {
                doc["language"] = json!(language);
            }
            let created_index = prepare_index(&store, &args).await?;
            let id = match store.create_connector(args.id.as_deref(), &doc).await {
                Ok(id) => id,
                Err(e) => {
                    // Leave nothing behind: the index was created for this connector only.
                    if created_index {
                        let path = format!("/{}", encode_segment(&args.index_name));
                        let _ = store.es().send(HttpMethod::Delete, &path, &[], None).await;
                    }
                    return Err(e.into());
                }
            };
            let index = &args.index_name;
            if as_json {
                println!(
                    "{}",
                    json!({"id": id, "status": status, "index_name": index, "index_created": created_index})
                );
            } else if created_index {
                println!("created connector {id} (status {status}) and its content index {index}");
            } else {
                println!("created connector {id} (status {status}) writing into index {index}");
            }
        }
        ConnectorCommand::List => {
            let list = store.list_connectors(None).await?;
            if as_json {
                let v: Vec<Value> = list.iter().map(connector_json).collect();
                println!("{}", Value::Array(v));
            } else {
                table(
                    &[
                        "ID",
                        "NAME",
                        "INDEX",
                        "SERVICE TYPE",
                        "STATUS",
                        "LAST SYNC",
                        "DELETED",
                    ],
                    list.iter()
                        .map(|c| {
                            vec![
                                c.id().to_owned(),
                                s(c.name()),
                                s(c.index_name()),
                                s(c.service_type()),
                                s(c.status_str()),
                                c.last_sync_status(JobType::Full)
                                    .map(|x| x.to_string())
                                    .unwrap_or_else(|| "-".into()),
                                if c.is_deleted() {
                                    "yes".into()
                                } else {
                                    String::new()
                                },
                            ]
                        })
                        .collect(),
                );
            }
        }
        ConnectorCommand::Show { id } => {
            let c = store.connector(&id).await?;
            let v = connector_json(&c);
            if as_json {
                println!("{v}");
            } else {
                println!("{}", serde_json::to_string_pretty(&v)?);
            }
        }
        ConnectorCommand::Configure { id, settings } => {
            let updated = connector_framework::protocol::retry_on_conflict(3, || async {
                let c = store.connector(&id).await?;
                let patch = settings_patch(&settings, &c.configuration()).map_err(|e| {
                    connector_framework::protocol::StoreError::Invalid(e.to_string())
                })?;
                store.update_connector(&c, &patch).await
            })
            .await?;
            if as_json {
                println!("{}", connector_json(&updated));
            } else {
                println!("connector {id} updated");
            }
        }
        ConnectorCommand::Delete { id, hard } => {
            store.delete_connector(&id, hard).await?;
            if as_json {
                println!("{}", json!({"id": id, "deleted": true, "hard": hard}));
            } else {
                println!("connector {id} deleted");
            }
        }
    }
    Ok(())
}

async fn sync_command(config: &Config, cmd: SyncCommand, as_json: bool) -> Result<()> {
    let store = open_store(config).await?;
    let SyncCommand::Start {
        connector_id,
        job_type,
        wait,
        timeout,
    } = cmd;
    let c = store.connector(&connector_id).await?;
    if c.is_deleted() {
        bail!("connector {connector_id} is deleted");
    }
    let id = store
        .create_job(&c, job_type, TriggerMethod::OnDemand)
        .await?;
    if !wait {
        if as_json {
            println!("{}", json!({"id": id}));
        } else {
            println!("{id}");
        }
        return Ok(());
    }
    let deadline = connector_framework::time::deadline_in(Duration::from_secs(timeout));
    // A live line on a terminal: status, documents, rate, mailboxes (or other partitions) done.
    let progress = if as_json {
        indicatif::ProgressBar::hidden()
    } else {
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        bar
    };
    let started = std::time::Instant::now();
    loop {
        let job = store.job(&id).await?;
        let status = job.status()?;
        let indexed = job.indexed_document_count();
        let rate = indexed as f64 / started.elapsed().as_secs_f64().max(0.001);
        let finished = job.raw()["metadata"]["checkpoint"]["checkpoint"]["finished"]
            .as_object()
            .map(|m| format!(", {} mailboxes done", m.len()))
            .unwrap_or_default();
        progress.set_message(format!(
            "{job_type} sync {status}: {indexed} documents ({rate:.0}/s), {} deleted{finished}",
            job.deleted_document_count()
        ));
        if status.is_terminal() {
            progress.finish_and_clear();
            if as_json {
                println!("{}", job_json(&job));
            } else {
                println!(
                    "{id} {status}{}",
                    job.error().map(|e| format!(": {e}")).unwrap_or_default()
                );
            }
            if status != JobStatus::Completed {
                bail!(
                    "job {id} ended {status}{}",
                    job.error().map(|e| format!(": {e}")).unwrap_or_default()
                );
            }
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("job {id} still {status} after {timeout} s");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn job_command(config: &Config, cmd: JobCommand, as_json: bool) -> Result<()> {
    let store = open_store(config).await?;
    match cmd {
        JobCommand::List { connector, status } => {
            let mut filters = Vec::new();
            if let Some(c) = connector {
                filters.push(json!({"term": {"connector.id": c}}));
            }
            if let Some(s) = status {
                let _: JobStatus = serde_json::from_value(json!(s))
                    .map_err(|_| anyhow!("unknown job status {s:?}"))?;
                filters.push(json!({"term": {"status": s}}));
            }
            let jobs = store
                .list_jobs(json!({"bool": {"filter": filters}}), None)
                .await?;
            if as_json {
                println!("{}", Value::Array(jobs.iter().map(job_json).collect()));
            } else {
                table(
                    &[
                        "ID",
                        "CONNECTOR",
                        "INDEX",
                        "TYPE",
                        "STATUS",
                        "INDEXED",
                        "VOLUME (MiB)",
                        "DELETED",
                    ],
                    jobs.iter()
                        .map(|j| {
                            vec![
                                j.id().to_owned(),
                                s(j.connector_id()),
                                s(j.index_name()),
                                j.job_type()
                                    .map(|t| t.to_string())
                                    .unwrap_or_else(|| "-".into()),
                                s(j.raw().get("status").and_then(Value::as_str)),
                                j.indexed_document_count().to_string(),
                                j.indexed_document_volume().to_string(),
                                j.deleted_document_count().to_string(),
                            ]
                        })
                        .collect(),
                );
            }
        }
        JobCommand::Show { id } => {
            let j = store.job(&id).await?;
            if as_json {
                println!("{}", job_json(&j));
            } else {
                println!("{}", serde_json::to_string_pretty(&job_json(&j))?);
            }
        }
        JobCommand::Cancel { id } => {
            let j = store.cancel_job(&id).await?;
            let status = j.status()?;
            if as_json {
                println!("{}", json!({"id": id, "status": status}));
            } else {
                println!("job {id} {status}");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Elasticsearch's generated ids are URL-safe base64 and may start with `-`; such an id is a
    /// value, not an unknown flag, wherever the CLI takes one. Known flags still parse as flags.
    #[test]
    fn ids_starting_with_a_hyphen_are_values() {
        let id = "-IvOz5oBAAAAQ3_x9Tk1";
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("connectors").chain(args.iter().copied()))
                .unwrap_or_else(|e| panic!("{args:?}: {e}"))
        };
        match parse(&["job", "cancel", id]).command {
            Command::Job(JobCommand::Cancel { id: got }) => assert_eq!(got, id),
            other => panic!("{other:?}"),
        }
        match parse(&["--json", "job", "show", id]).command {
            Command::Job(JobCommand::Show { id: got }) => assert_eq!(got, id),
            other => panic!("{other:?}"),
        }
        match parse(&["connector", "show", id]).command {
            Command::Connector(ConnectorCommand::Show { id: got }) => assert_eq!(got, id),
            other => panic!("{other:?}"),
        }
        match parse(&["connector", "delete", id, "--hard"]).command {
            Command::Connector(ConnectorCommand::Delete { id: got, hard }) => {
                assert_eq!(got, id);
                assert!(hard);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["connector", "configure", id, "--set", "a=1"]).command {
            Command::Connector(ConnectorCommand::Configure { id: got, settings }) => {
                assert_eq!(got, id);
                assert_eq!(settings.set, ["a=1"]);
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["sync", "start", id, "--type", "incremental", "--wait"]);
        match cli.command {
            Command::Sync(SyncCommand::Start {
                connector_id,
                job_type,
                wait,
                ..
            }) => {
                assert_eq!(connector_id, id);
                assert_eq!(job_type, JobType::Incremental);
                assert!(wait);
            }
            other => panic!("{other:?}"),
        }
        match parse(&["job", "list", "--connector", id, "--status", "error"]).command {
            Command::Job(JobCommand::List { connector, status }) => {
                assert_eq!(connector.as_deref(), Some(id));
                assert_eq!(status.as_deref(), Some("error"));
            }
            other => panic!("{other:?}"),
        }
        match parse(&[
            "connector",
            "create",
            "--index-name",
            "mail",
            "--service-type",
            "gmail",
            "--id",
            id,
        ])
        .command
        {
            Command::Connector(ConnectorCommand::Create(args)) => {
                assert_eq!(args.id.as_deref(), Some(id));
                assert_eq!(args.index_name, "mail");
            }
            other => panic!("{other:?}"),
        }
        let cli = parse(&["job", "cancel", "--json", id]);
        assert!(cli.json);
        match cli.command {
            Command::Job(JobCommand::Cancel { id: got }) => assert_eq!(got, id),
            other => panic!("{other:?}"),
        }
    }
}
