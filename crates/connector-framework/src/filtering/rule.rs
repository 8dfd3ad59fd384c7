//! Basic rules parsed from their stored JSON, with one error per bad rule.

use serde_json::{Map, Value, json};

/// `id` of the default rule every connector is created with.
pub const DEFAULT_RULE_ID: &str = "DEFAULT";

/// `policy` of a basic rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Policy {
    /// A matching document is indexed.
    Include,
    /// A matching document is skipped.
    Exclude,
}

impl Policy {
    /// The stored spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::Include => "include",
            Policy::Exclude => "exclude",
        }
    }

    /// Parses a stored policy, case-insensitively.
    pub fn parse(s: &str) -> Option<Policy> {
        if s.eq_ignore_ascii_case("include") {
            Some(Policy::Include)
        } else if s.eq_ignore_ascii_case("exclude") {
            Some(Policy::Exclude)
        } else {
            None
        }
    }
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `rule` (the comparison) of a basic rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleKind {
    /// The field value equals the rule value (see the engine for typed comparisons).
    Equals,
    /// The field's text contains the rule value.
    Contains,
    /// The field's text starts with the rule value.
    StartsWith,
    /// The field's text ends with the rule value.
    EndsWith,
    /// The whole field value matches the regular expression (anchored at both ends).
    Regex,
    /// Stored as `<`.
    LessThan,
    /// Stored as `>`.
    GreaterThan,
}

impl RuleKind {
    /// Every kind, in Kibana's order.
    pub const ALL: [RuleKind; 7] = [
        RuleKind::Equals,
        RuleKind::Contains,
        RuleKind::StartsWith,
        RuleKind::EndsWith,
        RuleKind::Regex,
        RuleKind::LessThan,
        RuleKind::GreaterThan,
    ];

    /// The stored spelling (`equals`, `contains`, `starts_with`, `ends_with`, `regex`, `<`, `>`).
    pub fn as_str(self) -> &'static str {
        match self {
            RuleKind::Equals => "equals",
            RuleKind::Contains => "contains",
            RuleKind::StartsWith => "starts_with",
            RuleKind::EndsWith => "ends_with",
            RuleKind::Regex => "regex",
            RuleKind::LessThan => "<",
            RuleKind::GreaterThan => ">",
        }
    }

    /// Parses a stored spelling, case-insensitively. Only Elastic's seven spellings are accepted.
    pub fn parse(s: &str) -> Option<RuleKind> {
        RuleKind::ALL
            .into_iter()
            .find(|k| k.as_str().eq_ignore_ascii_case(s))
    }
}

impl std::fmt::Display for RuleKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A well-formed basic rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BasicRule {
    /// Identifier (Kibana uses UUIDs; `DEFAULT` for the default rule).
    pub id: String,
    /// Priority: rules are applied by ascending `order` (stable for equal orders).
    pub order: i64,
    /// What a match means: index or skip the document.
    pub policy: Policy,
    /// Document field the rule looks at (top-level key, or a dotted path into nested objects).
    pub field: String,
    /// The comparison.
    pub rule: RuleKind,
    /// The value to compare with, as stored (always a string).
    pub value: String,
}

impl BasicRule {
    /// Parses one stored rule, reporting every problem it has (never the first only).
    ///
    /// Requirements (those of Elastic's schema validator): `id` a non-empty string, `policy`
    /// `include|exclude`, `field` a non-empty string, `rule` one of the seven spellings, `value` a
    /// non-empty string, `order` an integer. `policy` and `rule` are case-insensitive. Other keys
    /// (`created_at`, `updated_at`, …) are ignored.
    pub fn from_json(raw: &Value) -> Result<BasicRule, Vec<String>> {
        let Some(obj) = raw.as_object() else {
            return Err(vec![format!(
                "a rule must be a JSON object, found {}",
                json_type(raw)
            )]);
        };
        let mut problems = Vec::new();
        let id = non_empty_string(obj, "id", &mut problems);
        let field = non_empty_string(obj, "field", &mut problems);
        let value = non_empty_string(obj, "value", &mut problems);
        let policy = match obj.get("policy") {
            None => {
                problems.push("'policy' is missing".to_owned());
                None
            }
            Some(Value::String(s)) => Policy::parse(s).or_else(|| {
                problems.push(format!(
                    "'policy' must be 'include' or 'exclude', found {s:?}"
                ));
                None
            }),
            Some(other) => {
                problems.push(format!(
                    "'policy' must be 'include' or 'exclude', found {}",
                    json_type(other)
                ));
                None
            }
        };
        let rule = match obj.get("rule") {
            None => {
                problems.push("'rule' is missing".to_owned());
                None
            }
            Some(Value::String(s)) => RuleKind::parse(s).or_else(|| {
                problems.push(format!(
                    "'rule' must be one of {}, found {s:?}",
                    rule_list()
                ));
                None
            }),
            Some(other) => {
                problems.push(format!(
                    "'rule' must be one of {}, found {}",
                    rule_list(),
                    json_type(other)
                ));
                None
            }
        };
        let order = match obj.get("order") {
            None => {
                problems.push("'order' is missing".to_owned());
                None
            }
            Some(v) => order_of(v).or_else(|| {
                problems.push(format!("'order' must be an integer, found {v}"));
                None
            }),
        };
        match (id, order, policy, field, rule, value) {
            (Some(id), Some(order), Some(policy), Some(field), Some(rule), Some(value))
                if problems.is_empty() =>
            {
                Ok(BasicRule {
                    id,
                    order,
                    policy,
                    field,
                    rule,
                    value,
                })
            }
            _ => Err(problems),
        }
    }

    /// The stored JSON form (without timestamps).
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "order": self.order,
            "policy": self.policy.as_str(),
            "field": self.field,
            "rule": self.rule.as_str(),
            "value": self.value,
        })
    }

    /// The rule every connector starts with (id `DEFAULT`); the engine ignores it.
    pub fn is_default(&self) -> bool {
        self.id == DEFAULT_RULE_ID
    }

    /// How messages name this rule: `Basic rule <order+1> (id: '<id>')`, the id shortened like
    /// Elastic's to its first and last five characters when it is long (a UUID).
    pub fn reference(&self) -> String {
        reference(Some(self.order), Some(&self.id), 0)
    }
}

/// Elastic's way of naming a rule in messages, with fallbacks for rules too broken to have an
/// `order` or an `id` (`position` is the 1-based index in the stored array).
pub(crate) fn reference(order: Option<i64>, id: Option<&str>, position: usize) -> String {
    let head = match order {
        Some(order) => format!("Basic rule {}", order.saturating_add(1)),
        None => format!("Basic rule at position {position}"),
    };
    match id {
        Some(id) => format!("{head} (id: '{}')", shorten_id(id)),
        None => format!("{head} (no id)"),
    }
}

/// Long ids (UUIDs) keep their first and last five characters: `0a1b2...e5f6a`.
fn shorten_id(id: &str) -> String {
    let chars: Vec<char> = id.chars().collect();
    if chars.len() <= 13 {
        return id.to_owned();
    }
    let head: String = chars[..5].iter().collect();
    let tail: String = chars[chars.len() - 5..].iter().collect();
    format!("{head}...{tail}")
}

/// The id of a raw rule when it has a usable one.
pub(crate) fn raw_id(raw: &Value) -> Option<&str> {
    raw.get("id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

/// The order of a raw rule when it has a usable one.
pub(crate) fn raw_order(raw: &Value) -> Option<i64> {
    raw.get("order").and_then(order_of)
}

fn order_of(v: &Value) -> Option<i64> {
    let n = v.as_number()?;
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    // An integral float (`1.0`) is an integer for our purposes.
    let f = n.as_f64()?;
    (f.fract() == 0.0 && f.abs() < 9.0e15).then_some(f as i64)
}

fn non_empty_string(
    obj: &Map<String, Value>,
    key: &str,
    problems: &mut Vec<String>,
) -> Option<String> {
    match obj.get(key) {
        None => {
            problems.push(format!("'{key}' is missing"));
            None
        }
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::String(_)) => {
            problems.push(format!("'{key}' must not be empty"));
            None
        }
        Some(other) => {
            problems.push(format!(
                "'{key}' must be a string, found {}",
                json_type(other)
            ));
            None
        }
    }
}

fn rule_list() -> String {
    RuleKind::ALL
        .iter()
        .map(|k| format!("'{}'", k.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A stored rule that cannot be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// 0-based index in the stored array.
    pub index: usize,
    /// The rule's id when it has one.
    pub id: Option<String>,
    /// The rule's order when it has one.
    pub order: Option<i64>,
    /// Everything wrong with it.
    pub problems: Vec<String>,
}

impl RuleError {
    /// `Basic rule 3 (id: 'abc')` (or `Basic rule at position 3 (no id)`).
    pub fn reference(&self) -> String {
        reference(self.order, self.id.as_deref(), self.index + 1)
    }
}

impl std::fmt::Display for RuleError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} is invalid: {}",
            self.reference(),
            self.problems.join("; ")
        )
    }
}

/// Parses every stored rule; the good ones in stored order, an error for each bad one.
pub fn parse_rules(raw: &[Value]) -> (Vec<BasicRule>, Vec<RuleError>) {
    let mut rules = Vec::with_capacity(raw.len());
    let mut errors = Vec::new();
    for (index, r) in raw.iter().enumerate() {
        match BasicRule::from_json(r) {
            Ok(rule) => rules.push(rule),
            Err(problems) => errors.push(RuleError {
                index,
                id: raw_id(r).map(str::to_owned),
                order: raw_order(r),
                problems,
            }),
        }
    }
    (rules, errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_good_rule_case_insensitively() {
        let raw = json!({"id": "r1", "order": 2, "policy": "EXCLUDE", "field": "title",
                         "rule": "Starts_With", "value": "spam", "created_at": "x"});
        let rule = BasicRule::from_json(&raw).unwrap();
        assert_eq!(
            rule,
            BasicRule {
                id: "r1".into(),
                order: 2,
                policy: Policy::Exclude,
                field: "title".into(),
                rule: RuleKind::StartsWith,
                value: "spam".into(),
            }
        );
        assert_eq!(
            rule.to_json(),
            json!({"id": "r1", "order": 2, "policy": "exclude", "field": "title",
                   "rule": "starts_with", "value": "spam"})
        );
        for kind in RuleKind::ALL {
            assert_eq!(RuleKind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(RuleKind::parse("less_than"), None);
    }

    #[test]
    fn reports_every_problem() {
        let raw = json!({"id": "", "order": "1", "policy": "maybe", "rule": 3, "value": 5});
        let problems = BasicRule::from_json(&raw).unwrap_err();
        assert_eq!(
            problems,
            vec![
                "'id' must not be empty".to_owned(),
                "'field' is missing".to_owned(),
                "'value' must be a string, found a number".to_owned(),
                "'policy' must be 'include' or 'exclude', found \"maybe\"".to_owned(),
                "'rule' must be one of 'equals', 'contains', 'starts_with', 'ends_with', 'regex', '<', '>', found a number".to_owned(),
                "'order' must be an integer, found \"1\"".to_owned(),
            ]
        );
        assert_eq!(
            BasicRule::from_json(&json!("rule")).unwrap_err(),
            vec!["a rule must be a JSON object, found a string".to_owned()]
        );
    }

    #[test]
    fn float_orders() {
        let mut raw = json!({"id": "a", "order": 3.0, "policy": "include", "field": "f",
                             "rule": "equals", "value": "v"});
        assert_eq!(BasicRule::from_json(&raw).unwrap().order, 3);
        raw["order"] = json!(1.5);
        assert!(BasicRule::from_json(&raw).is_err());
    }

    #[test]
    fn references() {
        let rule = BasicRule {
            id: "3f1a2b4c-aaaa-bbbb-cccc-1234567890ab".into(),
            order: 0,
            policy: Policy::Include,
            field: "f".into(),
            rule: RuleKind::Equals,
            value: "v".into(),
        };
        assert_eq!(rule.reference(), "Basic rule 1 (id: '3f1a2...890ab')");
        assert_eq!(
            reference(Some(4), Some("short"), 9),
            "Basic rule 5 (id: 'short')"
        );
        assert_eq!(reference(None, None, 2), "Basic rule at position 2 (no id)");
    }

    #[test]
    fn parse_rules_keeps_going() {
        let raw = vec![
            json!({"id": "a", "order": 0, "policy": "include", "field": "f", "rule": "equals", "value": "v"}),
            json!(null),
            json!({"id": "c", "order": 2, "policy": "include", "field": "f", "rule": "nope", "value": "v"}),
            json!({"id": "d", "order": 3, "policy": "exclude", "field": "g", "rule": "<", "value": "4"}),
        ];
        let (rules, errors) = parse_rules(&raw);
        assert_eq!(
            rules.iter().map(|r| r.id.as_str()).collect::<Vec<_>>(),
            ["a", "d"]
        );
        assert_eq!(errors.len(), 2);
        assert_eq!(errors[0].index, 1);
        assert_eq!(
            errors[0].to_string(),
            "Basic rule at position 2 (no id) is invalid: a rule must be a JSON object, found null"
        );
        assert_eq!(errors[1].id.as_deref(), Some("c"));
        assert!(
            errors[1]
                .to_string()
                .starts_with("Basic rule 3 (id: 'c') is invalid: 'rule' must be one of")
        );
    }
}
