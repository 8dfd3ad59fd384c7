//! Connectors (data sources) as the rest of the framework sees them: the object-safe
//! [`DynConnector`] and the [`Registry`] keyed by `service_type`.
//!
//! Connector authors implement the typed trait of this module (associated `Config`, `Cursor` and
//! `Checkpoint` types); a blanket implementation erases it into [`DynConnector`] once, here.

use std::{collections::BTreeMap, sync::Arc};

use serde_json::{Map, Value};

use crate::{
    error::{Classify, ErrorKind},
    job::{JobContext, JobOutcome, JobSpec},
    model::{Features, FilteringRules, FilteringValidation},
};

/// One field's problem in a connector configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The configuration key (`service_account_credentials`, `subject`, …).
    pub field: String,
    pub message: String,
}

/// A configuration that cannot be used, with a message per field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_field_errors(.errors))]
pub struct ConfigurationError {
    pub errors: Vec<FieldError>,
}

fn render_field_errors(errors: &[FieldError]) -> String {
    let parts: Vec<String> = errors
        .iter()
        .map(|e| format!("{}: {}", e.field, e.message))
        .collect();
    format!("Field validation errors: {}", parts.join("; "))
}

/// Failures of a connector's remote checks and syncs.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(transparent)]
    Configuration(#[from] ConfigurationError),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Transient(String),
    #[error("{0}")]
    Fatal(String),
}

impl Classify for SourceError {
    fn kind(&self) -> ErrorKind {
        match self {
            SourceError::Configuration(_) => ErrorKind::Configuration,
            SourceError::Unauthorized(_) => ErrorKind::Unauthorized,
            SourceError::Transient(_) => ErrorKind::Transient,
            SourceError::Fatal(_) => ErrorKind::Fatal,
        }
    }
}

/// A connector, erased. Configuration arguments are the rich configuration objects stored on the
/// connector document (`field → {label, value, …}`).
#[async_trait::async_trait]
pub trait DynConnector: Send + Sync {
    fn service_type(&self) -> &'static str;
    /// Human name (e.g. "Gmail").
    fn display_name(&self) -> &'static str;
    /// The features object this connector supports.
    fn features(&self) -> Features;
    /// The default configuration: every rich configurable field with its default value.
    fn default_configuration(&self) -> Map<String, Value>;
    /// JSON Schema of the typed configuration.
    fn json_schema(&self) -> Value;
    /// Parses and validates the stored values locally (types, required, validations), with a
    /// message per field. No network.
    fn check_configuration(
        &self,
        configuration: &Map<String, Value>,
    ) -> Result<(), ConfigurationError>;
    /// Full validation including remote checks (credentials, permissions).
    async fn validate_config(&self, configuration: &Map<String, Value>) -> Result<(), SourceError>;
    /// Is the backend reachable with this configuration?
    async fn ping(&self, configuration: &Map<String, Value>) -> Result<(), SourceError>;
    /// Validates a rule set (basic rules with the framework's validators plus this connector's,
    /// advanced rules with this connector's validators).
    async fn validate_filtering(&self, rules: &FilteringRules) -> FilteringValidation;
    /// Runs one claimed job to its end.
    async fn run_job(&self, spec: JobSpec, ctx: JobContext) -> JobOutcome;
}

/// Unknown `service_type`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("unknown service type {service_type:?}; registered: {}", .registered.join(", "))]
pub struct UnknownServiceType {
    pub service_type: String,
    pub registered: Vec<String>,
}

/// The connectors this binary is built with, keyed by `service_type`.
#[derive(Clone, Default)]
pub struct Registry {
    connectors: BTreeMap<String, Arc<dyn DynConnector>>,
}

impl Registry {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers a connector; a second registration of the same service type replaces the first.
    pub fn register(&mut self, connector: Arc<dyn DynConnector>) -> &mut Self {
        self.connectors
            .insert(connector.service_type().to_owned(), connector);
        self
    }

    pub fn get(&self, service_type: &str) -> Result<Arc<dyn DynConnector>, UnknownServiceType> {
        self.connectors
            .get(service_type)
            .cloned()
            .ok_or_else(|| UnknownServiceType {
                service_type: service_type.to_owned(),
                registered: self.service_types(),
            })
    }

    pub fn contains(&self, service_type: &str) -> bool {
        self.connectors.contains_key(service_type)
    }

    pub fn service_types(&self) -> Vec<String> {
        self.connectors.keys().cloned().collect()
    }
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("service_types", &self.service_types())
            .finish()
    }
}
