//! `connector-framework`: everything a connector needs to sync a source into Elasticsearch the way
//! Elastic's connectors service does: configuration, persisted connectors and sync jobs,
//! scheduling, sync rules, a bounded-memory bulk sink, and document-level security.

pub mod config;
pub mod connector;
pub mod cron;
pub mod error;
pub mod es;
pub mod filtering;
pub mod job;
pub mod model;
pub mod protocol;
pub mod schema;
pub mod secret;
pub mod service;
pub mod sink;
pub mod source;
pub mod state;
pub mod sync;
pub mod telemetry;
pub mod testing;
pub mod time;

pub use error::{Classify, ErrorKind};
pub use es::{EsClient, EsConnection, EsError};
pub use secret::Secret;

/// Installs the process-wide rustls crypto provider (ring). Call once at start-up, before any
/// reqwest 0.13 client is built (it panics without one); calling it again is harmless.
pub fn install_crypto_provider() {
    // An `Err` only says a provider is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
}
