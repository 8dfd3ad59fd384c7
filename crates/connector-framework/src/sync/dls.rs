//! Document-level security helpers (spec §12).
//!
//! Content documents carry `_allow_access_control: [identity, …]` (added by the connector when
//! DLS is on); identity documents in `.search-acl-filter-<index>` carry a role query built from
//! [`DLS_QUERY_TEMPLATE`], a mustache template kept byte-for-byte identical to the one of Elastic's
//! connectors service (Kibana and search applications compare it).
//!
//! Elasticsearch renders the template when an API key or role is created from the identity
//! document (that needs the `lang-mustache` module). [`render_dls_query`] renders the one
//! construct the template uses (`{{#toJson}}access_control{{/toJson}}`) in Rust, for tests and for
//! clusters without mustache.

use serde_json::{Value, json};

/// Field of content documents listing who may see them.
pub const ACCESS_CONTROL_FIELD: &str = "_allow_access_control";

/// The role query template of identity documents (byte-compatible with Elastic's).
pub const DLS_QUERY_TEMPLATE: &str = r#"{
                    "bool": {
                        "should": [
                            {
                                "bool": {
                                    "must_not": {
                                        "exists": {
                                            "field": "_allow_access_control"
                                        }
                                    }
                                }
                            },
                            {
                                "terms": {
                                    "_allow_access_control.enum": {{#toJson}}access_control{{/toJson}}
                                }
                            }
                        ]
                    }
                }"#;

const TO_JSON_ACCESS_CONTROL: &str = "{{#toJson}}access_control{{/toJson}}";

/// The `query` object of an identity document: `{"template": {"params": {"access_control":
/// [..]}, "source": DLS_QUERY_TEMPLATE}}`. `None` entries are dropped.
pub fn access_control_query<S: AsRef<str>>(identities: &[Option<S>]) -> Value {
    let ids: Vec<&str> = identities.iter().flatten().map(AsRef::as_ref).collect();
    json!({"template": {"params": {"access_control": ids}, "source": DLS_QUERY_TEMPLATE}})
}

/// `prefix:identity` (spec §12.2 `prefix_identity`); `None` if either is missing.
pub fn prefix_identity(prefix: Option<&str>, identity: Option<&str>) -> Option<String> {
    Some(format!("{}:{}", prefix?, identity?))
}

/// Renders an identity document's `query.template` into a search query, as Elasticsearch's
/// mustache would for this template. `None` when the object is not such a template or the
/// rendered text is not JSON.
pub fn render_dls_query(query: &Value) -> Option<Value> {
    let template = &query["template"];
    let source = template["source"].as_str()?;
    let params = template["params"]["access_control"].clone();
    let params = if params.is_null() { json!([]) } else { params };
    let rendered = source.replace(TO_JSON_ACCESS_CONTROL, &params.to_string());
    serde_json::from_str(&rendered).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_drops_nulls_and_renders() {
        let q = access_control_query(&[Some("a@x.com"), None, Some("b@x.com")]);
        assert_eq!(
            q["template"]["params"]["access_control"],
            json!(["a@x.com", "b@x.com"])
        );
        let rendered = render_dls_query(&q).unwrap();
        assert_eq!(
            rendered["bool"]["should"][1]["terms"]["_allow_access_control.enum"],
            json!(["a@x.com", "b@x.com"])
        );
        assert_eq!(
            rendered["bool"]["should"][0]["bool"]["must_not"]["exists"]["field"],
            "_allow_access_control"
        );
    }

    #[test]
    fn template_layout_is_stable() {
        assert!(DLS_QUERY_TEMPLATE.starts_with("{\n                    \"bool\": {\n"));
        assert!(DLS_QUERY_TEMPLATE.ends_with("\n                }"));
        assert_eq!(DLS_QUERY_TEMPLATE.lines().count(), 20);
    }

    #[test]
    fn prefixing() {
        assert_eq!(
            prefix_identity(Some("user"), Some("a")).as_deref(),
            Some("user:a")
        );
        assert_eq!(prefix_identity(None, Some("a")), None);
    }
}
