//! Helpers shared by the Gmail test binaries.

use connector_framework::{
    connector::SyncRequest,
    model::{AdvancedSnippet, FilteringRules},
};
use connector_gmail::{GmailCheckpoint, GmailCursor};
use serde_json::Value;

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
    }
}
