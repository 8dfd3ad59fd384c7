//! Advanced sync rules: `{"messages": ["<Gmail search query>", …]}`, each query run per mailbox
//! as `q` (results united and de-duplicated).

use serde_json::Value;

/// Validates advanced rules; one message per problem (empty = valid). An empty object or
/// `null` means "no advanced rules" and is valid.
pub fn validate(rules: &Value) -> Vec<String> {
    let map = match rules {
        Value::Null => return Vec::new(),
        Value::Object(m) => m,
        other => {
            return vec![format!(
                "advanced rules must be a JSON object like {{\"messages\": [\"from:amy\"]}}, got {}",
                kind(other)
            )];
        }
    };
    if map.is_empty() {
        return Vec::new();
    }
    let mut errors = Vec::new();
    for key in map.keys().filter(|k| k.as_str() != "messages") {
        errors.push(format!(
            "unknown key {key:?}: the only supported key is \"messages\""
        ));
    }
    match map.get("messages") {
        None => errors.push("\"messages\" is required (an array of Gmail search queries)".into()),
        Some(Value::Array(items)) => {
            if items.is_empty() {
                errors.push("\"messages\" must contain at least one query".into());
            }
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(s) if !s.trim().is_empty() => {}
                    Value::String(_) => errors.push(format!("messages[{i}] is an empty query")),
                    other => errors.push(format!(
                        "messages[{i}] must be a string (a Gmail search query), got {}",
                        kind(other)
                    )),
                }
            }
        }
        Some(other) => errors.push(format!(
            "\"messages\" must be an array of strings, got {}",
            kind(other)
        )),
    }
    errors
}

/// The queries to run per mailbox: `[None]` (list everything) without rules, otherwise the
/// distinct queries of `messages`. Call [`validate`] first; invalid entries are skipped.
pub fn queries(rules: &Value) -> Vec<Option<String>> {
    let mut out: Vec<Option<String>> = Vec::new();
    if let Some(Value::Array(items)) = rules.get("messages") {
        for q in items.iter().filter_map(Value::as_str).map(str::trim) {
            if !q.is_empty() && !out.iter().any(|o| o.as_deref() == Some(q)) {
                out.push(Some(q.to_owned()));
            }
        }
    }
    if out.is_empty() {
        out.push(None);
    }
    out
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn elastic_example_is_valid() {
        let r = json!({"messages": ["before:2021/10/10", "from:amy"]});
        assert!(validate(&r).is_empty());
        assert_eq!(
            queries(&r),
            vec![Some("before:2021/10/10".into()), Some("from:amy".into())]
        );
        assert!(validate(&json!({})).is_empty());
        assert!(validate(&Value::Null).is_empty());
        assert_eq!(queries(&json!({})), vec![None]);
    }

    #[test]
    fn precise_messages() {
        assert_eq!(
            validate(&json!({"messages": []})),
            vec!["\"messages\" must contain at least one query"]
        );
        assert_eq!(
            validate(&json!({"messages": ["ok", " ", 3]})),
            vec![
                "messages[1] is an empty query",
                "messages[2] must be a string (a Gmail search query), got a number"
            ]
        );
        assert_eq!(
            validate(&json!({"threads": ["x"]})),
            vec![
                "unknown key \"threads\": the only supported key is \"messages\"",
                "\"messages\" is required (an array of Gmail search queries)"
            ]
        );
        assert_eq!(
            validate(&json!({"messages": "from:amy"})),
            vec!["\"messages\" must be an array of strings, got a string"]
        );
        assert_eq!(validate(&json!(["from:amy"])).len(), 1);
    }

    #[test]
    fn duplicate_queries_run_once() {
        let r = json!({"messages": ["from:amy", " from:amy ", "to:bob"]});
        assert_eq!(
            queries(&r),
            vec![Some("from:amy".into()), Some("to:bob".into())]
        );
    }
}
