//! The `connectors` host: the connectors this binary is built with, and generated references.

use connector_framework::{
    source::Registry,
    sync::{SyncSettings, erase_with},
};
use serde_json::Value;

/// Every production connector this binary is built with, keyed by `service_type`. Bulk settings
/// from `config.yml` apply to all of them.
pub fn registry_with(settings: SyncSettings) -> Registry {
    let mut registry = Registry::new();
    registry.register(erase_with(connector_gmail::connector(), settings));
    registry
}

/// [`registry_with`] the default bulk settings.
pub fn registry() -> Registry {
    registry_with(SyncSettings::default())
}

/// Files of `config/schema/` (JSON Schema and default configuration per connector) and
/// `docs/reference/connectors.md`, generated from the code. `cargo xtask schema` writes them; a
/// test fails when the committed files drift from the code.
pub fn generated_files() -> Vec<(String, String)> {
    let registry = registry();
    let mut files: Vec<(String, String)> =
        connector_framework::schema::render_schema_files(&registry)
            .into_iter()
            .map(|(name, content)| (format!("config/schema/{name}"), content))
            .collect();
    files.push(("docs/reference/connectors.md".into(), reference(&registry)));
    files
}

fn cell(v: &Value) -> String {
    let text = match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    text.replace('|', "\\|").replace('\n', " ")
}

/// Markdown reference of every connector's configuration fields.
fn reference(registry: &Registry) -> String {
    let mut out = String::from(
        "# Connector configuration reference\n\n\
         Generated from the code by `cargo xtask schema`; do not edit by hand. Each field is one\n\
         rich configurable field of the connector document's `configuration` (what Kibana shows).\n",
    );
    for st in registry.service_types() {
        let Ok(c) = registry.get(&st) else { continue };
        out.push_str(&format!(
            "\n## {} (`service_type: {st}`)\n\n| key | label | type | required | sensitive | default | description |\n|---|---|---|---|---|---|---|\n",
            c.display_name()
        ));
        let config = c.default_configuration();
        let mut fields: Vec<(&String, &Value)> = config.iter().collect();
        fields.sort_by_key(|(_, f)| f["order"].as_i64().unwrap_or(i64::MAX));
        for (key, f) in fields {
            out.push_str(&format!(
                "| `{key}` | {} | {} | {} | {} | {} | {} |\n",
                cell(&f["label"]),
                cell(&f["type"]),
                cell(&f["required"]),
                cell(&f["sensitive"]),
                cell(&f["default_value"]),
                cell(&f["tooltip"]),
            ));
        }
        let features = serde_json::to_value(c.features()).unwrap_or_default();
        out.push_str(&format!("\nFeatures: `{features}`\n"));
    }
    out
}
