//! The connector built in `docs/adding-a-connector.md`: documents from a JSON Lines file.
//!
//! This file is compiled and run by `crates/connector-framework/tests/guide.rs`; the guide quotes
//! it verbatim (the test checks that too).

// ANCHOR: config
use connector_framework::{
    connector::{
        Completion, Connector, ConnectorFeatures, Document, SyncEvent, SyncItem, SyncRequest,
        SyncStream,
    },
    source::{ConfigurationError, FieldError, SourceError},
};
use futures::StreamExt;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Configuration of the JSON Lines connector.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonlConfig {
    /// Absolute path of the `.jsonl` file to index.
    #[schemars(extend("x-label" = "File path", "x-order" = 1))]
    pub path: String,
    /// Field of each line that holds the document id.
    #[serde(default = "default_id_field")]
    #[schemars(extend("x-label" = "Id field", "x-order" = 2, "x-ui-restrictions" = ["advanced"]))]
    pub id_field: String,
}

fn default_id_field() -> String {
    "id".to_owned()
}
// ANCHOR_END: config

// ANCHOR: connector
/// Indexes every line of a JSON Lines file as one document.
#[derive(Debug, Default)]
pub struct JsonlConnector;

#[async_trait::async_trait]
impl Connector for JsonlConnector {
    const SERVICE_TYPE: &'static str = "jsonl";
    const DISPLAY_NAME: &'static str = "JSON Lines file";
    type Config = JsonlConfig;
    // No incremental sync, so no cursor; no resumable progress, so no checkpoint.
    type Cursor = ();
    type Checkpoint = ();

    fn features(&self) -> ConnectorFeatures {
        ConnectorFeatures {
            basic_rules: true,
            ..ConnectorFeatures::default()
        }
    }

    async fn validate_config(&self, config: &JsonlConfig) -> Result<(), SourceError> {
        // Remote (here: file system) checks; types and required fields are checked already.
        if !std::path::Path::new(&config.path).is_absolute() {
            return Err(field_error("path", "must be an absolute path"));
        }
        Ok(())
    }

    async fn ping(&self, config: &JsonlConfig) -> Result<(), SourceError> {
        tokio::fs::metadata(&config.path)
            .await
            .map(|_| ())
            .map_err(|e| field_error("path", &format!("cannot read {}: {e}", config.path)))
    }

    fn full_sync<'a>(
        &'a self,
        config: &'a JsonlConfig,
        _request: SyncRequest<(), ()>,
    ) -> SyncStream<'a, (), ()> {
        futures::stream::once(read_all(config))
            .flat_map(|result| match result {
                Ok(events) => futures::stream::iter(events.into_iter().map(Ok)).boxed(),
                Err(e) => futures::stream::iter([Err(e)]).boxed(),
            })
            .boxed()
    }
}
// ANCHOR_END: connector

// ANCHOR: read
/// Reads the file into sync events: one upsert per line, then `Complete` — which tells the
/// framework the enumeration was whole, so documents no longer in the file get deleted.
async fn read_all(config: &JsonlConfig) -> Result<Vec<SyncEvent<(), ()>>, SourceError> {
    let text = tokio::fs::read_to_string(&config.path)
        .await
        .map_err(|e| SourceError::Transient(format!("cannot read {}: {e}", config.path)))?;
    let mut events = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let fields: Map<String, Value> = serde_json::from_str(line).map_err(|e| {
            SourceError::Fatal(format!(
                "{} line {}: not a JSON object: {e}",
                config.path,
                n + 1
            ))
        })?;
        let id = match fields.get(&config.id_field) {
            Some(Value::String(s)) => s.clone(),
            Some(v @ Value::Number(_)) => v.to_string(),
            _ => {
                return Err(SourceError::Fatal(format!(
                    "{} line {}: no {:?} field",
                    config.path,
                    n + 1,
                    config.id_field
                )));
            }
        };
        events.push(SyncEvent::Item(SyncItem::Upsert(Document {
            id,
            timestamp: None,
            fields,
        })));
    }
    events.push(SyncEvent::Complete(Completion { cursor: None }));
    Ok(events)
}

fn field_error(field: &str, message: &str) -> SourceError {
    SourceError::Configuration(ConfigurationError {
        errors: vec![FieldError {
            field: field.to_owned(),
            message: message.to_owned(),
        }],
    })
}
// ANCHOR_END: read
