use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::*;
use crate::Secret;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
enum Mode {
    Fast,
    Thorough,
}

fn default_true() -> bool {
    true
}
fn default_batch() -> u32 {
    100
}
fn default_mode() -> Mode {
    Mode::Fast
}

/// A sample configuration exercising every mapping.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
struct Sample {
    /// JSON key of the service account.
    #[schemars(extend(
        "x-label" = "Service account credentials",
        "x-order" = 1,
        "x-display" = "textarea",
        "x-sensitive" = true
    ))]
    credentials: Secret,
    /// Admin email.
    #[schemars(regex(pattern = r"[^@\s]+@[^@\s]+"))]
    #[schemars(extend("x-label" = "Subject", "x-order" = 2))]
    subject: String,
    #[serde(default = "default_true")]
    #[schemars(extend("x-label" = "Enable DLS", "x-order" = 3, "x-tooltip" = "Restrict access."))]
    use_dls: bool,
    /// Group to restrict to.
    #[serde(default)]
    #[schemars(extend(
        "x-order" = 4,
        "x-depends-on" = [{"field": "use_dls", "value": true}],
        "x-required" = true
    ))]
    dls_group: String,
    #[serde(default = "default_batch")]
    #[schemars(range(min = 1, max = 500))]
    #[schemars(extend("x-order" = 5, "x-ui-restrictions" = ["advanced"]))]
    batch_size: u32,
    #[serde(default)]
    #[schemars(extend("x-order" = 6))]
    labels: Vec<String>,
    #[serde(default = "default_mode")]
    #[schemars(extend("x-order" = 7))]
    mode: Mode,
    #[serde(default)]
    #[schemars(extend("x-order" = 8))]
    ids: Vec<i64>,
    #[schemars(extend("x-order" = 9))]
    optional_note: Option<String>,
}

fn rich(v: Value) -> Value {
    json!({ "value": v })
}

fn config(pairs: &[(&str, Value)]) -> Map<String, Value> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), rich(v.clone())))
        .collect()
}

#[test]
fn generates_every_rich_field_attribute() {
    let d = default_configuration::<Sample>();
    let keys: Vec<&str> = d.keys().map(String::as_str).collect();
    assert_eq!(
        keys,
        [
            "credentials",
            "subject",
            "use_dls",
            "dls_group",
            "batch_size",
            "labels",
            "mode",
            "ids",
            "optional_note"
        ]
    );
    assert_eq!(
        d["credentials"],
        json!({
            "label": "Service account credentials", "order": 1, "type": "str", "display": "textarea",
            "required": true, "sensitive": true, "value": "", "default_value": null, "depends_on": [],
            "tooltip": "JSON key of the service account.", "ui_restrictions": [], "validations": [],
            "options": []
        })
    );
    assert_eq!(
        d["subject"]["validations"],
        json!([{"type": "regex", "constraint": r"[^@\s]+@[^@\s]+"}])
    );
    assert_eq!(d["use_dls"]["display"], "toggle");
    assert_eq!(d["use_dls"]["type"], "bool");
    assert_eq!(d["use_dls"]["value"], true);
    assert_eq!(d["use_dls"]["default_value"], true);
    assert_eq!(d["use_dls"]["required"], false);
    assert_eq!(d["use_dls"]["tooltip"], "Restrict access.");
    assert_eq!(
        d["dls_group"]["depends_on"],
        json!([{"field": "use_dls", "value": true}])
    );
    assert_eq!(d["dls_group"]["required"], true);
    assert_eq!(d["dls_group"]["label"], "Dls group");
    assert_eq!(d["batch_size"]["type"], "int");
    assert_eq!(d["batch_size"]["display"], "numeric");
    assert_eq!(d["batch_size"]["value"], 100);
    assert_eq!(d["batch_size"]["ui_restrictions"], json!(["advanced"]));
    assert_eq!(
        d["batch_size"]["validations"],
        json!([{"type": "greater_than", "constraint": 0}, {"type": "less_than", "constraint": 501}])
    );
    assert_eq!(d["labels"]["type"], "list");
    assert_eq!(
        d["labels"]["validations"],
        json!([{"type": "list_type", "constraint": "str"}])
    );
    assert_eq!(
        d["ids"]["validations"],
        json!([{"type": "list_type", "constraint": "int"}])
    );
    assert_eq!(d["mode"]["display"], "dropdown");
    assert_eq!(
        d["mode"]["options"],
        json!([{"label": "fast", "value": "fast"}, {"label": "thorough", "value": "thorough"}])
    );
    assert_eq!(
        d["mode"]["validations"],
        json!([{"type": "included_in", "constraint": ["fast", "thorough"]}])
    );
    assert_eq!(d["mode"]["value"], "fast");
    assert_eq!(d["optional_note"]["required"], false);
}

#[test]
fn parses_kibana_strings() {
    let c = config(&[
        ("credentials", json!("{\"k\": 1}")),
        ("subject", json!("admin@example.com")),
        ("use_dls", json!("true")),
        ("dls_group", json!("eng")),
        ("batch_size", json!("250")),
        ("labels", json!("a, b,,c")),
        ("mode", json!("thorough")),
        ("ids", json!("[1, 2]")),
    ]);
    let s: Sample = parse_config(&c).unwrap();
    assert_eq!(s.credentials.expose(), "{\"k\": 1}");
    assert!(s.use_dls);
    assert_eq!(s.batch_size, 250);
    assert_eq!(s.labels, ["a", "b", "c"]);
    assert_eq!(s.mode, Mode::Thorough);
    assert_eq!(s.ids, [1, 2]);
    assert_eq!(s.optional_note, None);
}

#[test]
fn optional_empty_takes_default() {
    let c = config(&[
        ("credentials", json!("x")),
        ("subject", json!("a@b.c")),
        ("use_dls", json!(false)),
        ("batch_size", json!("")),
        ("mode", json!(null)),
    ]);
    let s: Sample = parse_config(&c).unwrap();
    assert_eq!(s.batch_size, 100);
    assert_eq!(s.mode, Mode::Fast);
    // dls_group is required but depends on use_dls = true: not validated here.
    assert_eq!(s.dls_group, "");
}

#[test]
fn per_field_error_messages() {
    let c = config(&[
        ("credentials", json!("")),
        ("subject", json!("not-an-email")),
        ("use_dls", json!("maybe")),
        ("batch_size", json!("900")),
        ("labels", json!("a")),
        ("mode", json!("slow")),
        ("ids", json!("1, x")),
    ]);
    let err = parse_config::<Sample>(&c).unwrap_err();
    let by_field: std::collections::HashMap<&str, &str> = err
        .errors
        .iter()
        .map(|e| (e.field.as_str(), e.message.as_str()))
        .collect();
    assert_eq!(
        by_field["credentials"],
        "'Service account credentials' cannot be empty."
    );
    assert!(by_field["subject"].contains("does not match"), "{err}");
    assert_eq!(by_field["use_dls"], "'Enable DLS' must be true or false.");
    assert!(by_field["batch_size"].contains("less than 501"), "{err}");
    assert!(
        by_field["mode"].contains("should be one of fast, thorough"),
        "{err}"
    );
    assert!(by_field["ids"].contains("must be an integer"), "{err}");
    // use_dls is invalid → its default (true) counts, so dls_group is active and empty.
    assert_eq!(by_field["dls_group"], "'Dls group' cannot be empty.");
    assert!(err.to_string().starts_with("Field validation errors: "));
}

#[test]
fn depends_on_activates_validation() {
    let base = [("credentials", json!("x")), ("subject", json!("a@b.c"))];
    let mut on = config(&base);
    on.insert("use_dls".into(), rich(json!(true)));
    on.insert("dls_group".into(), rich(json!("")));
    let err = parse_config::<Sample>(&on).unwrap_err();
    assert_eq!(err.errors.len(), 1);
    assert_eq!(err.errors[0].field, "dls_group");

    let mut off = config(&base);
    off.insert("use_dls".into(), rich(json!("off")));
    off.insert("dls_group".into(), rich(json!("")));
    assert!(parse_config::<Sample>(&off).is_ok());
}

#[test]
fn bare_values_and_missing_keys() {
    let mut c = Map::new();
    c.insert("credentials".into(), json!("x"));
    c.insert("subject".into(), json!("a@b.c"));
    c.insert("use_dls".into(), json!(false));
    let s: Sample = parse_config(&c).unwrap();
    assert_eq!(s.batch_size, 100);
    assert!(s.labels.is_empty());
}

#[test]
fn default_configuration_round_trips_through_parse() {
    // A default configuration with the required fields filled parses.
    let mut d = default_configuration::<Sample>();
    d["credentials"]["value"] = json!("secret");
    d["subject"]["value"] = json!("a@b.c");
    d["dls_group"]["value"] = json!("g");
    let s: Sample = parse_config(&d).unwrap();
    assert!(s.use_dls);
    assert_eq!(s.dls_group, "g");
}

proptest::proptest! {
    #[test]
    fn coercion_never_panics(s in ".{0,40}") {
        for ty in [FieldType::Str, FieldType::Int, FieldType::Float, FieldType::Bool, FieldType::List, FieldType::Json] {
            let _ = coerce(&Value::String(s.clone()), ty, Some(FieldType::Int));
        }
    }

    #[test]
    fn int_strings_round_trip(n in proptest::num::i64::ANY) {
        proptest::prop_assert_eq!(coerce(&json!(n.to_string()), FieldType::Int, None).unwrap(), json!(n));
    }
}
