//! Logs, metrics and the health endpoint of the service.

pub mod logging;
pub mod metrics;
pub mod server;
