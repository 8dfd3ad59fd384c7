//! Helpers shared by the Gmail test binaries.

use connector_framework::{
    connector::{Document, EncodedDocument, SyncRequest},
    model::{AdvancedSnippet, FilteringRules},
    sync::GENERATION_FIELD,
};
use connector_gmail::{GmailCheckpoint, GmailCursor};
use serde_json::{Map, Value};

/// The connector's document back from what it encoded (the Gmail connector encodes on its own
/// tasks): the `_source` without the fields the encoder adds.
pub fn decoded(d: &EncodedDocument) -> Document {
    let mut fields: Map<String, Value> =
        serde_json::from_slice(d.source()).expect("an encoded document is a JSON object");
    for added in ["id", "_timestamp", GENERATION_FIELD] {
        fields.remove(added);
    }
    Document {
        id: d.id().to_owned(),
        timestamp: d.timestamp().map(str::to_owned),
        fields,
    }
}

/// A sync request with DLS on and the advanced `rules` active.
pub fn request(
    cursor: Option<GmailCursor>,
    checkpoint: Option<GmailCheckpoint>,
    rules: Value,
) -> SyncRequest<GmailCursor, GmailCheckpoint> {
    SyncRequest {
        filtering: FilteringRules {
            advanced_snippet: AdvancedSnippet {
                value: rules,
                ..Default::default()
            },
            ..Default::default()
        },
        sync_rules_enabled: true,
        dls_enabled: true,
        cursor,
        checkpoint,
        encoder: Default::default(),
    }
}
