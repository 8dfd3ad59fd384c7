//! Logs, metrics, traces (OpenTelemetry over OTLP) and the health endpoint of the service.

pub mod logging;
pub mod metrics;
pub mod otel;
pub mod server;
