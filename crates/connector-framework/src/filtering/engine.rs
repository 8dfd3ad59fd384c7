//! The basic rule engine: decides, document by document, whether to index it.
//!
//! # Decision
//!
//! Rules are applied by ascending `order` (stable: equal orders keep their stored order); the
//! `DEFAULT` rule is dropped. The **first rule that matches decides**: `include` → index,
//! `exclude` → skip. When no rule matches, the document is indexed (the default rule's policy is
//! never consulted, as in Elastic's service).
//!
//! The engine only decides about documents to *index*. Deletions never go through it: an
//! exclusion rule must not keep a stale document in the index (W7).
//!
//! # Finding the field
//!
//! `field` is first looked up as a top-level key (a key that contains dots included). When there
//! is no such key and the name contains dots, it is read as a path into nested objects
//! (`sender.address`); an array met on the way applies the rest of the path to each element, so
//! `attachments.name` yields the name of every attachment. A missing field or `null` never
//! matches.
//!
//! # Comparing (fixes W8)
//!
//! The rule value is always a string. It is read according to the document value's type:
//!
//! | document value | `equals` | `contains` `starts_with` `ends_with` `regex` | `<` `>` |
//! |---|---|---|---|
//! | string | same text (case-sensitive), or the same instant when both sides are dates | on the text | numerically if both sides are numbers, as instants if both are dates, else no match |
//! | number | numerically (rule value not a number → no match) | on the number's JSON text (`5`, `2.5`) | numerically; rule value not a number → no match |
//! | boolean | rule value read as a boolean (`true/t/yes/y/on/1`, `false/f/no/n/off/0`, any case) | on `true` / `false` | never matches |
//! | array | any element matches (rules apply to elements, recursively) | same | same |
//! | object | never matches | never matches | never matches |
//!
//! Dates are RFC 3339 (any offset, `T` or space), date-times without offset (read as UTC), or
//! bare dates (midnight UTC); they are compared as instants, so `2024-05-01T12:00:00+02:00` equals
//! `2024-05-01T10:00:00Z`. Apart from dates, `equals` on a string is a plain text comparison
//! (`"007"` does not equal `"7"`, `"10"` does not equal `"10.0"`): text identifiers must not be
//! reinterpreted as numbers.
//!
//! `regex` is a **full** match (anchored at both ends, unlike Elastic's prefix-anchored `re.match`)
//! with Rust's `regex` syntax (linear time; no look-around or back-references). Each regex is
//! compiled once, when the engine is built.
//!
//! Nothing here panics or fails on a document: a value that cannot be compared does not match.

use regex::{Regex, RegexBuilder};
use serde_json::{Map, Value};

use super::{
    FilteringError,
    coerce::{Num, parse_bool, parse_date},
    rule::{BasicRule, Policy, RuleError, RuleKind, raw_id, raw_order},
};

/// Compiled-size limit of one rule's regex (a rule is user input).
const REGEX_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a rule's regex for a full match. The value is first compiled alone so that a value
/// such as `a)|(b` cannot escape the anchoring group.
pub(crate) fn compile_full_match(value: &str) -> Result<Regex, regex::Error> {
    RegexBuilder::new(value)
        .size_limit(REGEX_SIZE_LIMIT)
        .build()?;
    RegexBuilder::new(&format!(r"\A(?:{value})\z"))
        .size_limit(REGEX_SIZE_LIMIT)
        .build()
}

#[derive(Debug, Clone)]
struct CompiledRule {
    rule: BasicRule,
    /// `field` split on dots, for the nested lookup.
    path: Vec<String>,
    regex: Option<Regex>,
    number: Option<Num>,
    date: Option<chrono::DateTime<chrono::Utc>>,
    boolean: Option<bool>,
}

impl CompiledRule {
    fn new(rule: BasicRule) -> Result<CompiledRule, regex::Error> {
        let regex = match rule.rule {
            RuleKind::Regex => Some(compile_full_match(&rule.value)?),
            _ => None,
        };
        Ok(CompiledRule {
            path: rule.field.split('.').map(str::to_owned).collect(),
            number: Num::parse(&rule.value),
            date: parse_date(&rule.value),
            boolean: parse_bool(&rule.value),
            regex,
            rule,
        })
    }

    fn matches(&self, value: &Value) -> bool {
        match value {
            Value::Null | Value::Object(_) => false,
            Value::Array(items) => items.iter().any(|v| self.matches(v)),
            Value::Bool(b) => match self.rule.rule {
                RuleKind::Equals => self.boolean == Some(*b),
                RuleKind::LessThan | RuleKind::GreaterThan => false,
                _ => self.matches_text(if *b { "true" } else { "false" }),
            },
            Value::Number(n) => match self.rule.rule {
                RuleKind::Equals | RuleKind::LessThan | RuleKind::GreaterThan => {
                    match (Num::from_json(n), self.number) {
                        (Some(doc), Some(rule)) => self.ordering_matches(doc.compare(rule)),
                        _ => false,
                    }
                }
                _ => self.matches_text(&n.to_string()),
            },
            Value::String(s) => match self.rule.rule {
                RuleKind::LessThan | RuleKind::GreaterThan => self.compare_text(s),
                RuleKind::Equals => self.matches_text(s) || self.same_instant(s),
                _ => self.matches_text(s),
            },
        }
    }

    fn matches_text(&self, s: &str) -> bool {
        let v = self.rule.value.as_str();
        match self.rule.rule {
            RuleKind::Equals => s == v,
            RuleKind::Contains => s.contains(v),
            RuleKind::StartsWith => s.starts_with(v),
            RuleKind::EndsWith => s.ends_with(v),
            RuleKind::Regex => self.regex.as_ref().is_some_and(|r| r.is_match(s)),
            RuleKind::LessThan | RuleKind::GreaterThan => false,
        }
    }

    /// `equals` on a string field that is a date, against a rule value that is a date.
    fn same_instant(&self, s: &str) -> bool {
        self.date
            .is_some_and(|rule| parse_date(s).is_some_and(|doc| doc == rule))
    }

    /// `<` / `>` on a string field: numbers if both sides are numbers, else instants if both
    /// are dates, else no match.
    fn compare_text(&self, s: &str) -> bool {
        if let Some(rule) = self.number
            && let Some(doc) = Num::parse(s)
        {
            return self.ordering_matches(doc.compare(rule));
        }
        if let Some(rule) = self.date
            && let Some(doc) = parse_date(s)
        {
            return self.ordering_matches(Some(doc.cmp(&rule)));
        }
        false
    }

    /// Does `document <op> rule value` hold, given their ordering?
    fn ordering_matches(&self, ordering: Option<std::cmp::Ordering>) -> bool {
        use std::cmp::Ordering::*;
        matches!(
            (self.rule.rule, ordering),
            (RuleKind::Equals, Some(Equal))
                | (RuleKind::LessThan, Some(Less))
                | (RuleKind::GreaterThan, Some(Greater))
        )
    }
}

/// The values a rule's field designates in a document (see the module documentation); `id` is
/// the document id kept apart from its fields, used for the field `id` when `doc` has none.
fn lookup<'a>(
    doc: &'a Map<String, Value>,
    rule: &CompiledRule,
    id: Option<&'a Value>,
    out: &mut Vec<&'a Value>,
) {
    let field = rule.rule.field.as_str();
    if let Some(v) = doc.get(field) {
        out.push(v);
        return;
    }
    if field == "id"
        && let Some(id) = id
    {
        out.push(id);
        return;
    }
    if let [first, rest @ ..] = rule.path.as_slice()
        && !rest.is_empty()
        && let Some(v) = doc.get(first)
    {
        walk(v, rest, out);
    }
}

fn walk<'a>(value: &'a Value, path: &[String], out: &mut Vec<&'a Value>) {
    let Some((head, rest)) = path.split_first() else {
        out.push(value);
        return;
    };
    match value {
        Value::Object(m) => {
            if let Some(v) = m.get(head) {
                walk(v, rest, out);
            }
        }
        Value::Array(items) => {
            for item in items {
                walk(item, path, out);
            }
        }
        _ => {}
    }
}

/// Basic sync rules, ready to apply to documents. Cheap to share (`Arc`) between tasks.
#[derive(Debug, Clone, Default)]
pub struct BasicRuleEngine {
    rules: Vec<CompiledRule>,
}

impl BasicRuleEngine {
    /// Builds the engine from stored rules: every rule must parse and every regex compile (all
    /// problems are reported together); the `DEFAULT` rule is dropped; rules are stably sorted
    /// by `order`.
    pub fn new(rules: &[Value]) -> Result<BasicRuleEngine, FilteringError> {
        let mut errors = Vec::new();
        let mut compiled = Vec::with_capacity(rules.len());
        for (index, raw) in rules.iter().enumerate() {
            let rule = match BasicRule::from_json(raw) {
                Ok(rule) => rule,
                Err(problems) => {
                    errors.push(RuleError {
                        index,
                        id: raw_id(raw).map(str::to_owned),
                        order: raw_order(raw),
                        problems,
                    });
                    continue;
                }
            };
            if rule.is_default() {
                continue;
            }
            let (id, order) = (rule.id.clone(), rule.order);
            match CompiledRule::new(rule) {
                Ok(c) => compiled.push(c),
                Err(e) => errors.push(RuleError {
                    index,
                    id: Some(id),
                    order: Some(order),
                    problems: vec![format!("invalid regular expression: {e}")],
                }),
            }
        }
        if !errors.is_empty() {
            return Err(FilteringError::InvalidRules(errors));
        }
        compiled.sort_by_key(|c| c.rule.order);
        Ok(BasicRuleEngine { rules: compiled })
    }

    /// Builds the engine from parsed rules (the `DEFAULT` rule is dropped, rules are stably
    /// sorted by `order`); fails only on a regex that does not compile.
    pub fn from_rules(rules: Vec<BasicRule>) -> Result<BasicRuleEngine, FilteringError> {
        let raw: Vec<Value> = rules.iter().map(BasicRule::to_json).collect();
        BasicRuleEngine::new(&raw)
    }

    /// No rule besides the default one: every document is indexed.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The rules in application order.
    pub fn rules(&self) -> impl Iterator<Item = &BasicRule> {
        self.rules.iter().map(|c| &c.rule)
    }

    /// The rule that decides about this document, if any matches.
    pub fn matching_rule(&self, doc: &Map<String, Value>) -> Option<&BasicRule> {
        self.find(doc, None)
    }

    fn find<'a>(&'a self, doc: &Map<String, Value>, id: Option<&Value>) -> Option<&'a BasicRule> {
        let mut values = Vec::new();
        self.rules
            .iter()
            .find(|c| {
                values.clear();
                lookup(doc, c, id, &mut values);
                values.iter().any(|v| c.matches(v))
            })
            .map(|c| &c.rule)
    }

    /// The top-level keys of a document the rules read: each rule's field as written and the
    /// first step of its dotted path. A document's other fields cannot change a decision.
    pub fn top_level_fields(&self) -> impl Iterator<Item = &str> {
        self.rules.iter().flat_map(|c| {
            std::iter::once(c.rule.field.as_str()).chain(c.path.first().map(String::as_str))
        })
    }

    /// Should this document be indexed? The first matching rule decides; no match → yes.
    pub fn should_ingest(&self, doc: &Map<String, Value>) -> bool {
        self.matching_rule(doc)
            .is_none_or(|r| r.policy == Policy::Include)
    }

    /// [`matching_rule`](Self::matching_rule) for a document whose id is kept apart from its
    /// fields (the framework's `Document`): a rule on `id` sees `id` when `fields` has no `id`.
    pub fn matching_rule_with_id(
        &self,
        id: &str,
        fields: &Map<String, Value>,
    ) -> Option<&BasicRule> {
        let id = Value::String(id.to_owned());
        self.find(fields, Some(&id))
    }

    /// [`should_ingest`](Self::should_ingest) with the id kept apart from the fields.
    pub fn should_ingest_with_id(&self, id: &str, fields: &Map<String, Value>) -> bool {
        self.matching_rule_with_id(id, fields)
            .is_none_or(|r| r.policy == Policy::Include)
    }
}
