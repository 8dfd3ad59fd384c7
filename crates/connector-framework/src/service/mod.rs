//! The connectors service: scheduler, executor and cleanup loops (spec §7), start-up checks and
//! shutdown.
//!
//! * [`scheduler`]: every `service.idling`, processes **every** served connector (bounded
//!   concurrency, W1): preparation, heartbeat, validation (only when the configuration changed,
//!   W3), draft sync-rule validation, and scheduled job creation.
//! * [`executor`]: claims pending and suspended jobs exclusively (W19), runs them through the
//!   connector, reports progress, notices cancellation, suspends on shutdown.
//! * [`cleanup`]: marks jobs whose worker died, and jobs of deleted connectors, `error`.
//!
//! A failing pass is logged and charged to that loop's error budget (`service.max_errors` within
//! `service.max_errors_span`, the window reset before counting, W20); a panic inside a pass is
//! caught and counted the same way. Only an exhausted budget ends [`run`] with an error (the
//! binary then exits non-zero so a supervisor restarts it). One failing connector or job never
//! fails a pass.

pub mod cleanup;
pub mod executor;
pub mod scheduler;

use std::{
    collections::HashMap,
    future::Future,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio_util::sync::CancellationToken;

use crate::{
    Classify, ErrorKind, EsClient, EsError,
    config::{Config, ConfigError, ConnectorEntry},
    es::ClusterInfo,
    protocol::{ConnectorDoc, IndexNames, Store, StoreError, StoreMode},
    source::Registry,
};

/// Failures of the service.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Es(#[from] EsError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{0}")]
    Preflight(String),
    #[error(
        "the {service} service failed more than {max} times within {span:?}; last error: {last}"
    )]
    BudgetExceeded {
        service: &'static str,
        max: u32,
        span: Duration,
        last: String,
    },
}

impl Classify for ServiceError {
    fn kind(&self) -> ErrorKind {
        match self {
            ServiceError::Store(e) => e.kind(),
            ServiceError::Es(e) => e.kind(),
            ServiceError::Config(_) => ErrorKind::Configuration,
            ServiceError::Preflight(_) | ServiceError::BudgetExceeded { .. } => ErrorKind::Fatal,
        }
    }
}

/// What every service loop shares: configuration, store, registry, this worker's name, and the
/// data-plane clients (one per credential set, W11).
#[derive(Clone)]
pub struct ServiceContext {
    pub config: Arc<Config>,
    pub store: Store,
    pub registry: Registry,
    /// Written as `worker_hostname` on claimed jobs.
    pub worker: String,
    /// Liveness/readiness for the health endpoint; every finished pass is a beat.
    pub health: Arc<crate::telemetry::server::Health>,
    entries: Arc<HashMap<String, ConnectorEntry>>,
    data_clients: Arc<Mutex<HashMap<String, EsClient>>>,
}

impl std::fmt::Debug for ServiceContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceContext")
            .field("worker", &self.worker)
            .field("registry", &self.registry)
            .finish()
    }
}

/// Checks a Quartz cron expression (as the scheduler will read it).
pub fn validate_cron(expr: &str) -> Result<(), String> {
    crate::cron::QuartzCron::parse(expr)
        .map(|_| ())
        .map_err(|e| e.to_string())
}

/// This machine's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned())
}

impl ServiceContext {
    pub fn new(config: Arc<Config>, store: Store, registry: Registry) -> Self {
        let entries = config
            .connector_entries()
            .into_iter()
            .map(|e| (e.connector_id.0.clone(), e))
            .collect();
        Self {
            config,
            store,
            registry,
            worker: hostname(),
            health: crate::telemetry::server::Health::new(),
            entries: Arc::new(entries),
            data_clients: Arc::default(),
        }
    }

    /// The `connectors` entry of a connector id.
    pub fn entry(&self, connector_id: &str) -> Option<&ConnectorEntry> {
        self.entries.get(connector_id)
    }

    /// Does this process serve the connector? Listed in `connectors`, or of a type in
    /// `service.service_types` and not native; never when soft-deleted (W17 is handled by
    /// cleanup).
    pub fn serves(&self, doc: &ConnectorDoc) -> bool {
        if doc.is_deleted() {
            return false;
        }
        if self.entries.contains_key(doc.id()) {
            return true;
        }
        !doc.is_native()
            && doc
                .service_type()
                .is_some_and(|t| self.config.service.service_types.iter().any(|s| s == t))
    }

    /// The client for a connector's data-plane traffic: its own API key from `connectors`
    /// when set, else the service's client.
    pub fn data_client(&self, connector_id: &str) -> Result<EsClient, ServiceError> {
        let Some(key) = self.entry(connector_id).and_then(|e| e.api_key.clone()) else {
            return Ok(self.store.es().clone());
        };
        let mut clients = self
            .data_clients
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(c) = clients.get(connector_id) {
            return Ok(c.clone());
        }
        let conn = self.config.es_connection_with_key(Some(&key))?;
        let client = EsClient::new(&conn)?;
        clients.insert(connector_id.to_owned(), client.clone());
        Ok(client)
    }
}

/// Per-loop error budget (W20 done right): the window is reset *before* counting, and the
/// error that opens a new window is counted in it.
#[derive(Debug, Clone)]
pub struct ErrorBudget {
    max: u32,
    span: Duration,
    count: u32,
    window_start: Option<Instant>,
}

impl ErrorBudget {
    pub fn new(max: u32, span: Duration) -> Self {
        Self {
            max,
            span,
            count: 0,
            window_start: None,
        }
    }

    /// Records one error at `now`; `true` when the budget is exhausted.
    pub fn record(&mut self, now: Instant) -> bool {
        if self
            .window_start
            .is_none_or(|s| now.duration_since(s) > self.span)
        {
            self.window_start = Some(now);
            self.count = 0;
        }
        self.count += 1;
        self.count > self.max
    }
}

/// Runs `pass` every `interval` (or when `wake` fires) until `shutdown`; panics and errors of a
/// pass are logged and charged to the budget.
pub(crate) async fn service_loop<F, Fut>(
    name: &'static str,
    config: &Config,
    health: &crate::telemetry::server::Health,
    interval: Duration,
    shutdown: CancellationToken,
    wake: Option<Arc<tokio::sync::Notify>>,
    mut pass: F,
) -> Result<(), ServiceError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), ServiceError>> + Send + 'static,
{
    let mut budget = ErrorBudget::new(config.service.max_errors, config.max_errors_span());
    while !shutdown.is_cancelled() {
        let failure = match tokio::spawn(pass()).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(join) => Some(format!("pass panicked: {join}")),
        };
        health.beat();
        if let Some(message) = failure {
            tracing::error!(service = name, error = %message, "service pass failed");
            if budget.record(Instant::now()) {
                return Err(ServiceError::BudgetExceeded {
                    service: name,
                    max: config.service.max_errors,
                    span: config.max_errors_span(),
                    last: message,
                });
            }
        }
        let woken = async {
            match &wake {
                Some(n) => n.notified().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
            _ = woken => {}
        }
    }
    Ok(())
}

/// Start-up checks (spec §1.3): wait for the cluster, validate what the configuration asks
/// this process to serve, create the system indices. Returns the ready store.
pub async fn preflight(config: &Config, es: EsClient) -> Result<Store, ServiceError> {
    let entries = config.connector_entries();
    if config.service.worker_mode {
        if config.service.service_types.is_empty() {
            return Err(ServiceError::Preflight(
                "service.worker_mode needs service.service_types".into(),
            ));
        }
    } else if entries.is_empty() && config.service.service_types.is_empty() {
        return Err(ServiceError::Preflight(
            "you must configure at least one connector (connectors) or service.service_types"
                .into(),
        ));
    }
    let info = wait_for_cluster(config, &es).await?;
    tracing::info!(version = %info.version, cluster = %info.cluster_name, "elasticsearch is up");
    let names = IndexNames {
        connectors: config.service.connectors_index.clone(),
        jobs: config.service.jobs_index.clone(),
    };
    let store = Store::detect(
        es.clone(),
        names,
        config.elasticsearch.feature_use_connectors_api,
    )
    .await?;
    if store.mode() == StoreMode::ConnectorApi {
        tracing::info!("using the _connector API");
    }
    let mut attempt = 0;
    loop {
        match store.ensure_indices().await {
            Ok(()) => break,
            Err(e) if attempt < config.service.preflight_max_attempts => {
                attempt += 1;
                tracing::warn!(error = %e, attempt, "cannot create the system indices; retrying");
                tokio::time::sleep(config.preflight_idle()).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(store)
}

async fn wait_for_cluster(config: &Config, es: &EsClient) -> Result<ClusterInfo, ServiceError> {
    // Probe without the client's own retries, so the backoff below is the one that applies.
    let mut conn = config.es_connection()?;
    conn.max_retries = 1;
    conn.request_timeout = conn.request_timeout.min(Duration::from_secs(10));
    let probe = EsClient::new(&conn).unwrap_or_else(|_| es.clone());
    let es = &probe;
    let deadline = crate::time::deadline_in(config.max_wait_duration());
    let mut delay = config.initial_backoff();
    loop {
        match es.info().await {
            Ok(info) => return Ok(info),
            Err(e) if crate::time::deadline_in(delay) < deadline => {
                tracing::info!(error = %e, "waiting for elasticsearch");
                tokio::time::sleep(delay).await;
                delay = crate::time::scaled(
                    delay,
                    config.elasticsearch.backoff_multiplier,
                    Duration::from_secs(60),
                );
            }
            Err(e) => {
                return Err(ServiceError::Preflight(format!(
                    "elasticsearch at {} seems to be unreachable: {e}",
                    config.elasticsearch.host
                )));
            }
        }
    }
}

/// Runs scheduler, executor and cleanup until `shutdown` is cancelled (or a loop exhausts its
/// error budget), then suspends the running jobs and returns.
pub async fn run(ctx: ServiceContext, shutdown: CancellationToken) -> Result<(), ServiceError> {
    let stop = shutdown.child_token();
    let scheduler = Arc::new(scheduler::Scheduler::new(ctx.clone()));
    let executor = Arc::new(executor::Executor::new(ctx.clone()));
    let cleanup = Arc::new(cleanup::Cleanup::new(ctx.clone(), executor.clone()));
    let config = ctx.config.clone();
    ctx.health.set_ready(true);
    let mut set = tokio::task::JoinSet::new();
    {
        let (s, stop, config) = (scheduler.clone(), stop.clone(), config.clone());
        let health = ctx.health.clone();
        set.spawn(async move {
            service_loop(
                "scheduler",
                &config,
                &health,
                config.idling(),
                stop,
                None,
                move || {
                    let s = s.clone();
                    async move { s.run_pass().await.map(|_| ()) }
                },
            )
            .await
        });
    }
    {
        let (e, stop, config) = (executor.clone(), stop.clone(), config.clone());
        let health = ctx.health.clone();
        let wake = executor.wake_handle();
        set.spawn(async move {
            service_loop(
                "executor",
                &config,
                &health,
                config.idling(),
                stop,
                Some(wake),
                move || {
                    let e = e.clone();
                    async move { e.run_pass().await.map(|_| ()) }
                },
            )
            .await
        });
    }
    {
        let (c, stop, config) = (cleanup.clone(), stop.clone(), config.clone());
        let health = ctx.health.clone();
        set.spawn(async move {
            service_loop(
                "cleanup",
                &config,
                &health,
                config.job_cleanup_interval(),
                stop,
                None,
                move || {
                    let c = c.clone();
                    async move { c.run_pass().await.map(|_| ()) }
                },
            )
            .await
        });
    }
    let mut result = Ok(());
    while let Some(joined) = set.join_next().await {
        let r = match joined {
            Ok(r) => r,
            Err(e) => Err(ServiceError::Preflight(format!("service task failed: {e}"))),
        };
        if let Err(e) = r {
            tracing::error!(error = %e, "stopping the service");
            stop.cancel();
            if result.is_ok() {
                result = Err(e);
            }
        }
    }
    ctx.health.set_ready(false);
    tracing::info!("suspending running jobs");
    executor.shutdown(Duration::from_secs(60)).await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Durations too long for an `Instant` (1e19 s) give a wait, not a panic: the first backoff
    /// step already ends after the deadline, so an unreachable node is reported at once.
    #[tokio::test]
    async fn huge_configured_waits_do_not_panic() {
        let yaml = "elasticsearch:\n  host: http://127.0.0.1:9\n  max_wait_duration: 0.2\n  \
                    initial_backoff_duration: 1e19\n  backoff_multiplier: 1e300\n";
        let config = Config::from_yaml_with_env(yaml, None, []).expect("config");
        let es = EsClient::new(&config.es_connection().expect("connection")).expect("client");
        let err = wait_for_cluster(&config, &es)
            .await
            .expect_err("unreachable");
        assert!(err.to_string().contains("seems to be unreachable"), "{err}");
    }

    #[test]
    fn budget_resets_before_counting() {
        let t0 = Instant::now();
        let mut b = ErrorBudget::new(2, Duration::from_secs(10));
        assert!(!b.record(t0));
        assert!(!b.record(t0 + Duration::from_secs(1)));
        assert!(b.record(t0 + Duration::from_secs(2)));
        // After the window, the error opens a new window and counts as the first.
        let mut b = ErrorBudget::new(2, Duration::from_secs(10));
        b.record(t0);
        b.record(t0 + Duration::from_secs(1));
        assert!(!b.record(t0 + Duration::from_secs(11)));
        assert!(!b.record(t0 + Duration::from_secs(12)));
        assert!(b.record(t0 + Duration::from_secs(13)));
    }
}
