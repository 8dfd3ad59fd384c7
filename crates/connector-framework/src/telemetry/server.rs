//! The operations endpoint: `/metrics` (Prometheus text), `/healthz` (the process is alive and
//! its loops are not stuck) and `/readyz` (connected to Elasticsearch and serving).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicI64, Ordering},
    },
    time::Duration,
};

use axum::{Router, extract::State, http::StatusCode, response::IntoResponse, routing::get};
use tokio_util::sync::CancellationToken;

use super::metrics::metrics;

/// Shared health state, updated by the service loops.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// Unix seconds of the last completed loop iteration of any service.
    last_beat: AtomicI64,
}

impl Health {
    pub fn new() -> Arc<Self> {
        let h = Arc::new(Self::default());
        h.beat();
        h
    }

    /// Ready once preflight passed; not ready while shutting down.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::SeqCst);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Called by service loops after each iteration.
    pub fn beat(&self) {
        self.last_beat
            .store(chrono::Utc::now().timestamp(), Ordering::SeqCst);
    }

    /// Alive when some loop iterated within `stale`.
    pub fn is_alive(&self, stale: Duration) -> bool {
        let age = chrono::Utc::now().timestamp() - self.last_beat.load(Ordering::SeqCst);
        age <= i64::try_from(stale.as_secs()).unwrap_or(i64::MAX)
    }
}

#[derive(Clone)]
struct AppState {
    health: Arc<Health>,
    stale: Duration,
}

/// Serves the endpoint until `shutdown` is cancelled. Returns the bound address.
pub async fn serve(
    addr: SocketAddr,
    health: Arc<Health>,
    stale: Duration,
    shutdown: CancellationToken,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(AppState { health, stale });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let handle = tokio::spawn(async move {
        let result = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = result {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    tracing::info!(address = %bound, "serving /metrics, /healthz and /readyz");
    Ok((bound, handle))
}

async fn metrics_handler() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        metrics().encode(),
    )
}

async fn healthz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_alive(state.stale) {
        (StatusCode::OK, "ok")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "service loops are stuck")
    }
}

async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    if state.health.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_that_just_beat_is_alive_whatever_the_staleness_limit() {
        let health = Health::new();
        assert!(health.is_alive(Duration::from_secs(1)));
        assert!(health.is_alive(Duration::MAX));
        health
            .last_beat
            .store(chrono::Utc::now().timestamp() - 120, Ordering::SeqCst);
        assert!(!health.is_alive(Duration::from_secs(60)));
        assert!(health.is_alive(Duration::MAX));
    }
}
