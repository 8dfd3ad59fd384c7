//! Rich configurable fields (spec §4.3) generated from a connector's typed configuration, and the
//! reverse: stored values parsed and validated into the typed configuration.
//!
//! # Writing a configuration type
//!
//! The configuration is a plain serde struct deriving [`schemars::JsonSchema`]. Each field becomes
//! one rich configurable field. The JSON Schema keywords map as follows:
//!
//! | JSON Schema (from Rust) | rich field |
//! |---|---|
//! | doc comment (`description`) | `tooltip` (unless `x-tooltip` is set) |
//! | `title` | `label` (unless `x-label` is set; else the key in sentence case) |
//! | `#[serde(default …)]` (`default`) | `default_value` and the initial `value` |
//! | listed in `required` (no serde default, not an `Option`) | `required: true` |
//! | `string` / `integer` / `number` / `boolean` / `array` | `type` `str` / `int` / `float` / `bool` / `list` |
//! | enum of strings (`enum` or `oneOf` of `const`s) | `display: dropdown`, `options`, `included_in` validation |
//! | `pattern` (`#[schemars(regex(pattern = …))]`) | `regex` validation (full match) |
//! | `minimum` / `maximum` (`#[schemars(range(min = …, max = …))]`) | `greater_than` / `less_than` (the inclusive bound minus / plus one for integers) |
//! | `exclusiveMinimum` / `exclusiveMaximum` | `greater_than` / `less_than` |
//! | `array` `items` type | `list_type` validation (`str` / `int`) |
//! | `writeOnly` (e.g. [`Secret`](crate::Secret)) | `sensitive: true` |
//! | `object` (no fixed type) | `type: str`, `display: textarea`; the stored string is parsed as JSON |
//!
//! UI metadata goes through schemars extensions on the field:
//!
//! ```ignore
//! #[schemars(extend(
//!     "x-label" = "Service account credentials",
//!     "x-order" = 1,
//!     "x-display" = "textarea",          // text | textarea | numeric | toggle | dropdown
//!     "x-sensitive" = true,
//!     "x-tooltip" = "Paste the JSON key of the service account.",
//!     "x-depends-on" = [{"field": "use_document_level_security", "value": true}],
//!     "x-ui-restrictions" = ["advanced"],
//!     "x-required" = true,                // overrides the `required` inference
//! ))]
//! ```
//!
//! # Parsing stored values
//!
//! [`parse_config`] accepts the connector document's `configuration` object: each entry a rich
//! object whose `value` Kibana writes as a string, number or boolean (sometimes JSON in a string),
//! or a bare value. Values are coerced by the field's type (`"42"` → 42, `"true"`/`"yes"`/`"on"` →
//! true, `"a, b"` → `["a", "b"]`, `"[1,2]"` → `[1, 2]`, `"{…}"` → an object). A field whose
//! `depends_on` conditions do not all hold (compared with the other fields' typed values) is not
//! validated and takes its default (or its type's empty value). An empty value (`null`, `""`,
//! `[]`) of a required field is an error (`'<label>' cannot be empty.`); of an optional field it
//! takes the default. Every problem becomes one [`FieldError`]; all are returned together.

use std::collections::HashMap;

use regex::Regex;
use schemars::JsonSchema;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value, json};

use crate::source::{ConfigurationError, FieldError, Registry};

/// JSON Schema (draft 2020-12) of a configuration type.
pub fn json_schema<T: JsonSchema>() -> Value {
    schemars::schema_for!(T).to_value()
}

/// The value type of a field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Str,
    Int,
    Float,
    Bool,
    List,
    /// Any JSON (stored as a string holding JSON).
    Json,
}

impl FieldType {
    fn rich(self) -> &'static str {
        match self {
            FieldType::Str | FieldType::Json => "str",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Bool => "bool",
            FieldType::List => "list",
        }
    }
}

/// One field as read from the schema.
#[derive(Debug, Clone)]
pub struct FieldDef {
    pub key: String,
    pub label: String,
    pub order: i64,
    pub ty: FieldType,
    pub display: String,
    pub required: bool,
    pub sensitive: bool,
    pub default: Option<Value>,
    pub tooltip: Option<String>,
    pub depends_on: Vec<(String, Value)>,
    pub ui_restrictions: Vec<Value>,
    pub validations: Vec<Value>,
    pub options: Vec<Value>,
    /// Type of list items (`str` / `int`), for `list` fields.
    pub item_type: Option<FieldType>,
}

fn resolve<'a>(root: &'a Value, mut schema: &'a Value) -> &'a Value {
    for _ in 0..16 {
        let Some(r) = schema.get("$ref").and_then(Value::as_str) else {
            return schema;
        };
        let Some(name) = r.strip_prefix("#/$defs/") else {
            return schema;
        };
        match root["$defs"].get(name) {
            Some(s) => schema = s,
            None => return schema,
        }
    }
    schema
}

/// Merges a property schema with what its `$ref` / `anyOf [T, null]` point to (siblings win).
fn flatten(root: &Value, prop: &Value) -> Map<String, Value> {
    let mut out = Map::new();
    let mut base = resolve(root, prop);
    if let Some(any) = prop
        .get("anyOf")
        .or(prop.get("oneOf"))
        .and_then(Value::as_array)
    {
        let non_null: Vec<&Value> = any.iter().filter(|s| s["type"] != "null").collect();
        if non_null.len() == 1 && any.len() == 2 {
            base = resolve(root, non_null[0]);
        }
    }
    if let Some(m) = base.as_object() {
        out.extend(m.clone());
    }
    if let Some(m) = prop.as_object() {
        for (k, v) in m {
            if k != "$ref" && k != "anyOf" {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

fn type_name(s: &Map<String, Value>) -> Option<String> {
    match s.get("type") {
        Some(Value::String(t)) => Some(t.clone()),
        Some(Value::Array(ts)) => ts
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .map(str::to_owned),
        _ => None,
    }
}

fn enum_values(s: &Map<String, Value>) -> Option<Vec<(Value, Option<String>)>> {
    if let Some(e) = s.get("enum").and_then(Value::as_array) {
        return Some(
            e.iter()
                .filter(|v| !v.is_null())
                .map(|v| (v.clone(), None))
                .collect(),
        );
    }
    let one = s.get("oneOf").and_then(Value::as_array)?;
    let mut out = Vec::new();
    for o in one {
        let c = o.get("const")?;
        if c.is_null() {
            continue;
        }
        out.push((c.clone(), o["description"].as_str().map(str::to_owned)));
    }
    Some(out)
}

fn sentence_case(key: &str) -> String {
    let s = key.replace('_', " ");
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }
}

fn simple_type(t: Option<&str>) -> FieldType {
    match t {
        Some("string") => FieldType::Str,
        Some("integer") => FieldType::Int,
        Some("number") => FieldType::Float,
        Some("boolean") => FieldType::Bool,
        Some("array") => FieldType::List,
        _ => FieldType::Json,
    }
}

/// Reads the fields of a configuration type from its JSON Schema.
pub fn fields<T: JsonSchema>() -> Vec<FieldDef> {
    fields_of_schema(&json_schema::<T>())
}

/// Reads the fields of a root JSON Schema (an object schema with `properties`).
pub fn fields_of_schema(root: &Value) -> Vec<FieldDef> {
    let required: Vec<&str> = root["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let Some(props) = root["properties"].as_object() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (i, (key, prop)) in props.iter().enumerate() {
        let s = flatten(root, prop);
        let nullable = matches!(prop.get("type"), Some(Value::Array(ts)) if ts.iter().any(|t| t == "null"))
            || prop
                .get("anyOf")
                .and_then(Value::as_array)
                .is_some_and(|a| a.iter().any(|t| t["type"] == "null"));
        let enums = enum_values(&s);
        let tname = type_name(&s);
        let ty = if enums.is_some() {
            match enums.as_ref().and_then(|e| e.first()).map(|(v, _)| v) {
                Some(Value::Number(n)) if n.is_i64() || n.is_u64() => FieldType::Int,
                Some(Value::Number(_)) => FieldType::Float,
                Some(Value::Bool(_)) => FieldType::Bool,
                _ => FieldType::Str,
            }
        } else {
            simple_type(tname.as_deref())
        };
        let item_type = if ty == FieldType::List {
            let items = s.get("items").map(|i| flatten(root, i)).unwrap_or_default();
            Some(simple_type(type_name(&items).as_deref()))
        } else {
            None
        };
        let x = |k: &str| s.get(k).cloned();
        let label = x("x-label")
            .and_then(|v| v.as_str().map(str::to_owned))
            .or_else(|| s.get("title").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| sentence_case(key));
        let display = x("x-display")
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_else(|| {
                match (ty, enums.is_some()) {
                    (_, true) => "dropdown",
                    (FieldType::Bool, _) => "toggle",
                    (FieldType::Int | FieldType::Float, _) => "numeric",
                    (FieldType::Json, _) => "textarea",
                    _ => "text",
                }
                .to_owned()
            });
        let required = x("x-required")
            .and_then(|v| v.as_bool())
            .unwrap_or(!nullable && required.contains(&key.as_str()));
        let sensitive = x("x-sensitive")
            .and_then(|v| v.as_bool())
            .unwrap_or(s.get("writeOnly") == Some(&Value::Bool(true)));
        let default = s.get("default").cloned().filter(|d| !d.is_null());
        let tooltip = x("x-tooltip")
            .and_then(|v| v.as_str().map(str::to_owned))
            .or_else(|| {
                s.get("description")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            });
        let depends_on = x("x-depends-on")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|d| Some((d["field"].as_str()?.to_owned(), d["value"].clone())))
            .collect();
        let ui_restrictions = x("x-ui-restrictions")
            .and_then(|v| v.as_array().cloned())
            .unwrap_or_default();
        let order = x("x-order")
            .and_then(|v| v.as_i64())
            .unwrap_or(i as i64 + 1);

        let mut validations = Vec::new();
        let integer = ty == FieldType::Int;
        let num = |k: &str| s.get(k).and_then(Value::as_f64);
        let as_num = |f: f64| {
            if integer { json!(f as i64) } else { json!(f) }
        };
        if let Some(m) = num("exclusiveMinimum") {
            validations.push(json!({"type": "greater_than", "constraint": as_num(m)}));
        } else if let Some(m) = num("minimum") {
            let c = if integer { m - 1.0 } else { m };
            validations.push(json!({"type": "greater_than", "constraint": as_num(c)}));
        }
        if let Some(m) = num("exclusiveMaximum") {
            validations.push(json!({"type": "less_than", "constraint": as_num(m)}));
        } else if let Some(m) = num("maximum") {
            let c = if integer { m + 1.0 } else { m };
            validations.push(json!({"type": "less_than", "constraint": as_num(c)}));
        }
        if let Some(p) = s.get("pattern").and_then(Value::as_str) {
            validations.push(json!({"type": "regex", "constraint": p}));
        }
        if let Some(it) = item_type {
            let c = match it {
                FieldType::Int => Some("int"),
                FieldType::Str => Some("str"),
                _ => None,
            };
            if let Some(c) = c {
                validations.push(json!({"type": "list_type", "constraint": c}));
            }
        }
        let mut options = Vec::new();
        if let Some(e) = &enums {
            let values: Vec<Value> = e.iter().map(|(v, _)| v.clone()).collect();
            validations.push(json!({"type": "included_in", "constraint": values}));
            for (v, label) in e {
                let label = label.clone().unwrap_or_else(|| match v {
                    Value::String(s) => s.clone(),
                    o => o.to_string(),
                });
                options.push(json!({"label": label, "value": v}));
            }
        }
        out.push(FieldDef {
            key: key.clone(),
            label,
            order,
            ty,
            display,
            required,
            sensitive,
            default,
            tooltip,
            depends_on,
            ui_restrictions,
            validations,
            options,
            item_type,
        });
    }
    out
}

impl FieldDef {
    /// The rich configurable field object (spec §4.3) with the default as value.
    pub fn rich(&self) -> Value {
        let value = match (&self.default, self.ty) {
            (None, _) => Value::String(String::new()),
            (Some(Value::String(s)), _) => Value::String(s.clone()),
            (Some(v), FieldType::Json) => Value::String(v.to_string()),
            (Some(v), _) => v.clone(),
        };
        let depends_on: Vec<Value> = self
            .depends_on
            .iter()
            .map(|(f, v)| json!({"field": f, "value": v}))
            .collect();
        json!({
            "label": self.label,
            "order": self.order,
            "type": self.ty.rich(),
            "display": self.display,
            "required": self.required,
            "sensitive": self.sensitive,
            "value": value,
            "default_value": self.default,
            "depends_on": depends_on,
            "tooltip": self.tooltip,
            "ui_restrictions": self.ui_restrictions,
            "validations": self.validations,
            "options": self.options,
        })
    }
}

/// The default configuration (`get_default_configuration`): every rich field with its default.
pub fn default_configuration<T: JsonSchema>() -> Map<String, Value> {
    fields::<T>()
        .iter()
        .map(|f| (f.key.clone(), f.rich()))
        .collect()
}

fn is_empty(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::String(s) => s.trim().is_empty(),
        Value::Array(a) => a
            .iter()
            .all(|i| i.is_null() || i.as_str().is_some_and(|s| s.trim().is_empty())),
        _ => false,
    }
}

fn parse_bool(s: &str) -> Option<bool> {
    match s.trim().to_lowercase().as_str() {
        "true" | "t" | "yes" | "y" | "on" | "1" => Some(true),
        "false" | "f" | "no" | "n" | "off" | "0" => Some(false),
        _ => None,
    }
}

/// Coerces a stored value to a field type; empty values become `Null`.
pub fn coerce(v: &Value, ty: FieldType, item: Option<FieldType>) -> Result<Value, String> {
    if is_empty(v) && !(ty == FieldType::Str && v.is_string()) {
        return Ok(Value::Null);
    }
    match (ty, v) {
        (FieldType::Str, Value::String(s)) => Ok(if s.is_empty() {
            Value::Null
        } else {
            Value::String(s.clone())
        }),
        (FieldType::Str, Value::Number(n)) => Ok(Value::String(n.to_string())),
        (FieldType::Str, Value::Bool(b)) => Ok(Value::String(b.to_string())),
        (FieldType::Str, _) => Err("must be a string".into()),
        (FieldType::Int, Value::Number(n)) => n
            .as_i64()
            .map(Value::from)
            .or_else(|| {
                n.as_f64()
                    .filter(|f| f.fract() == 0.0 && f.abs() < 9.0e15)
                    .map(|f| Value::from(f as i64))
            })
            .ok_or_else(|| "must be an integer".into()),
        (FieldType::Int, Value::String(s)) => s
            .trim()
            .parse::<i64>()
            .map(Value::from)
            .map_err(|_| "must be an integer".into()),
        (FieldType::Float, Value::Number(n)) => Ok(Value::Number(n.clone())),
        (FieldType::Float, Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .ok()
            .and_then(|f| serde_json::Number::from_f64(f).map(Value::Number))
            .ok_or_else(|| "must be a number".into()),
        (FieldType::Bool, Value::Bool(b)) => Ok(Value::Bool(*b)),
        (FieldType::Bool, Value::String(s)) => parse_bool(s)
            .map(Value::Bool)
            .ok_or_else(|| "must be true or false".into()),
        (FieldType::Bool, Value::Number(n)) => match n.as_i64() {
            Some(0) => Ok(Value::Bool(false)),
            Some(1) => Ok(Value::Bool(true)),
            _ => Err("must be true or false".into()),
        },
        (FieldType::List, v) => {
            let items: Vec<Value> = match v {
                Value::Array(a) => a.clone(),
                Value::String(s) if s.trim_start().starts_with('[') => {
                    match serde_json::from_str::<Value>(s) {
                        Ok(Value::Array(a)) => a,
                        _ => return Err("is not a valid JSON list".into()),
                    }
                }
                Value::String(s) => s
                    .split(',')
                    .map(|p| Value::String(p.trim().to_owned()))
                    .collect(),
                other => vec![other.clone()],
            };
            let item = item.unwrap_or(FieldType::Json);
            let mut out = Vec::new();
            for i in items.iter().filter(|i| !is_empty(i)) {
                out.push(match item {
                    FieldType::Int | FieldType::Str | FieldType::Float | FieldType::Bool => {
                        coerce(i, item, None).map_err(|e| format!("has an item that {e}"))?
                    }
                    _ => i.clone(),
                });
            }
            Ok(Value::Array(out))
        }
        (FieldType::Json, Value::String(s)) => {
            serde_json::from_str(s).map_err(|e| format!("is not valid JSON: {e}"))
        }
        (FieldType::Json, v) => Ok(v.clone()),
        (_, _) => Err(format!("has an unexpected value {v}")),
    }
}

/// The raw stored value of a field: the rich object's `value`, or a bare value.
fn stored_value(configuration: &Map<String, Value>, key: &str) -> Option<Value> {
    match configuration.get(key)? {
        Value::Object(o) => Some(o.get("value").cloned().unwrap_or(Value::Null)),
        v => Some(v.clone()),
    }
}

fn check_validation(f: &FieldDef, v: &Value, rule: &Value) -> Option<String> {
    let c = &rule["constraint"];
    let label = &f.label;
    let as_f = |v: &Value| v.as_f64();
    match rule["type"].as_str()? {
        "greater_than" => match (as_f(v), as_f(c)) {
            (Some(a), Some(b)) if a <= b => {
                Some(format!("'{label}' value '{v}' should be greater than {c}."))
            }
            _ => None,
        },
        "less_than" => match (as_f(v), as_f(c)) {
            (Some(a), Some(b)) if a >= b => {
                Some(format!("'{label}' value '{v}' should be less than {c}."))
            }
            _ => None,
        },
        "regex" => {
            let pattern = c.as_str()?;
            let Ok(re) = Regex::new(&format!("^(?:{pattern})$")) else {
                return Some(format!(
                    "'{label}' has an invalid validation pattern {pattern:?}."
                ));
            };
            match v.as_str() {
                Some(s) if re.is_match(s) => None,
                _ => Some(format!(
                    "'{label}' value '{}' does not match the pattern {pattern:?}.",
                    plain(v)
                )),
            }
        }
        "included_in" => {
            let allowed = c.as_array()?;
            let bad: Vec<String> = match v {
                Value::Array(items) => items
                    .iter()
                    .filter(|i| !allowed.contains(i))
                    .map(plain)
                    .collect(),
                other if !allowed.contains(other) => vec![plain(other)],
                _ => vec![],
            };
            (!bad.is_empty()).then(|| {
                let allowed: Vec<String> = allowed.iter().map(plain).collect();
                format!(
                    "'{label}' value '{}' should be one of {}.",
                    bad.join(", "),
                    allowed.join(", ")
                )
            })
        }
        "list_type" => {
            let items = v.as_array()?;
            let ok = |i: &Value| match c.as_str() {
                Some("int") => i.is_i64() || i.is_u64(),
                Some("str") => i.is_string(),
                _ => true,
            };
            (!items.iter().all(ok))
                .then(|| format!("'{label}' list items should all be of type {c}."))
        }
        _ => None,
    }
}

fn plain(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        o => o.to_string(),
    }
}

fn empty_of(ty: FieldType) -> Value {
    match ty {
        FieldType::Str => json!(""),
        FieldType::Int => json!(0),
        FieldType::Float => json!(0.0),
        FieldType::Bool => json!(false),
        FieldType::List => json!([]),
        FieldType::Json => Value::Null,
    }
}

/// Parses and validates a stored configuration into the typed configuration (see the module
/// documentation for the rules).
pub fn parse_config<T: JsonSchema + DeserializeOwned>(
    configuration: &Map<String, Value>,
) -> Result<T, ConfigurationError> {
    let defs = fields::<T>();
    let values = parse_fields(&defs, configuration)?;
    serde_json::from_value(Value::Object(values)).map_err(|e| ConfigurationError {
        errors: vec![FieldError {
            field: "configuration".into(),
            message: e.to_string(),
        }],
    })
}

/// The typed values (as JSON) of a stored configuration, validated against field definitions.
pub fn parse_fields(
    defs: &[FieldDef],
    configuration: &Map<String, Value>,
) -> Result<Map<String, Value>, ConfigurationError> {
    let mut errors = Vec::new();
    // First pass: coerce every field (errors kept for the fields that turn out to be active).
    let mut coerced: HashMap<&str, Result<Value, String>> = HashMap::new();
    for f in defs {
        let raw = stored_value(configuration, &f.key);
        let v = match raw {
            None => Ok(Value::Null),
            Some(r) => coerce(&r, f.ty, f.item_type),
        };
        coerced.insert(f.key.as_str(), v);
    }
    // Effective (typed, defaulted) values, used for `depends_on`.
    let effective = |key: &str| -> Option<Value> {
        let f = defs.iter().find(|f| f.key == key)?;
        match coerced.get(key) {
            Some(Ok(v)) if !v.is_null() => Some(v.clone()),
            _ => Some(
                f.default
                    .as_ref()
                    .map(|d| coerce(d, f.ty, f.item_type).unwrap_or_else(|_| d.clone()))
                    .unwrap_or(Value::Null),
            ),
        }
    };
    let mut out = Map::new();
    for f in defs {
        let mut active = true;
        for (dep, expected) in &f.depends_on {
            match effective(dep) {
                None => {
                    errors.push(FieldError {
                        field: f.key.clone(),
                        message: format!("'{}' depends on the unknown field '{dep}'.", f.label),
                    });
                    active = false;
                }
                Some(actual) => {
                    let dep_def = defs.iter().find(|d| &d.key == dep);
                    let expected = dep_def
                        .and_then(|d| coerce(expected, d.ty, d.item_type).ok())
                        .unwrap_or_else(|| expected.clone());
                    if actual != expected {
                        active = false;
                    }
                }
            }
        }
        let value = match coerced
            .get(f.key.as_str())
            .cloned()
            .unwrap_or(Ok(Value::Null))
        {
            Ok(v) => v,
            Err(msg) => {
                if active {
                    errors.push(FieldError {
                        field: f.key.clone(),
                        message: format!("'{}' {msg}.", f.label),
                    });
                }
                Value::Null
            }
        };
        let value = if value.is_null() {
            if active && f.required {
                errors.push(FieldError {
                    field: f.key.clone(),
                    message: format!("'{}' cannot be empty.", f.label),
                });
            }
            match &f.default {
                Some(d) => coerce(d, f.ty, f.item_type).unwrap_or_else(|_| d.clone()),
                None if f.required => empty_of(f.ty),
                None => Value::Null,
            }
        } else {
            if active {
                for rule in &f.validations {
                    if let Some(m) = check_validation(f, &value, rule) {
                        errors.push(FieldError {
                            field: f.key.clone(),
                            message: m,
                        });
                    }
                }
            }
            value
        };
        if !value.is_null() {
            out.insert(f.key.clone(), value);
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(ConfigurationError { errors })
    }
}

/// Files for `cargo xtask schema`: per connector, `<service_type>.schema.json` (JSON Schema of the
/// configuration) and `<service_type>.default-configuration.json` (the rich fields). Pretty JSON,
/// newline-terminated, sorted by service type.
pub fn render_schema_files(registry: &Registry) -> Vec<(String, String)> {
    let mut files = Vec::new();
    for st in registry.service_types() {
        let Ok(c) = registry.get(&st) else { continue };
        let pretty = |v: &Value| {
            let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
            s.push('\n');
            s
        };
        files.push((format!("{st}.schema.json"), pretty(&c.json_schema())));
        files.push((
            format!("{st}.default-configuration.json"),
            pretty(&Value::Object(c.default_configuration())),
        ));
    }
    files
}

#[cfg(test)]
mod tests;
