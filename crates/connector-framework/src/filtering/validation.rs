//! Validation of a rule set (a draft, or a job's active rules): basic rules with the framework's
//! validators, advanced rules with the connector's.
//!
//! Validation never fails and never panics: every problem, including a rule too malformed to
//! parse, becomes an entry of an `invalid` result (fixes W10, where one malformed draft rule
//! turned the whole connector into `status: error`).
//!
//! Basic-rule checks, in this order (each reports every offending rule, not just the first):
//! 1. shape: `id` non-empty string, `policy` `include|exclude`, `field` non-empty string, `rule`
//!    one of the seven spellings, `value` non-empty string, `order` integer;
//! 2. no match-all regex (`.*` or `(.*)`) except on the `DEFAULT` rule;
//! 3. every `regex` value compiles (Rust `regex` syntax, full match);
//! 4. `<` / `>` values are numbers or dates (anything else could never match);
//! 5. no two rules with the same `field`, `rule` and `value` (policy ignored): both are reported.
//!
//! Checks 2–5 only look at rules that passed check 1.
//!
//! Each problem is one `{ids: [rule id], messages: [message]}` entry (`ids` is empty for a rule
//! without a usable id); messages name rules as Elastic does, `Basic rule <order+1> (id: '<id>')`.
//! Advanced-rule problems use the id `advanced_snippet`.

use serde_json::Value;

use crate::model::{FilteringRules, FilteringValidation, ValidationError, ValidationState};

use super::{
    coerce::{Num, parse_date},
    engine::compile_full_match,
    rule::{BasicRule, RuleKind, parse_rules},
};

/// The id advanced-rule problems are reported under.
pub const ADVANCED_SNIPPET_ID: &str = "advanced_snippet";

/// Regexes that match everything, refused on any rule but `DEFAULT` (Elastic's list).
pub const MATCH_ALL_REGEXES: [&str; 2] = [".*", "(.*)"];

/// Checks a connector's advanced rules (`advanced_snippet.value`).
#[async_trait::async_trait]
pub trait AdvancedRulesValidator: Send + Sync {
    /// One message per problem; empty when the rules are valid.
    async fn validate_advanced(&self, advanced_rules: &Value) -> Vec<String>;
}

/// For connectors without advanced rules: accepts anything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoAdvancedRules;

#[async_trait::async_trait]
impl AdvancedRulesValidator for NoAdvancedRules {
    async fn validate_advanced(&self, _advanced_rules: &Value) -> Vec<String> {
        Vec::new()
    }
}

/// An advanced-rules validator from a plain (synchronous) function.
#[derive(Debug, Clone, Copy)]
pub struct AdvancedRulesFn<F>(pub F);

#[async_trait::async_trait]
impl<F> AdvancedRulesValidator for AdvancedRulesFn<F>
where
    F: Fn(&Value) -> Vec<String> + Send + Sync,
{
    async fn validate_advanced(&self, advanced_rules: &Value) -> Vec<String> {
        (self.0)(advanced_rules)
    }
}

#[async_trait::async_trait]
impl<T: AdvancedRulesValidator + ?Sized> AdvancedRulesValidator for std::sync::Arc<T> {
    async fn validate_advanced(&self, advanced_rules: &Value) -> Vec<String> {
        (**self).validate_advanced(advanced_rules).await
    }
}

/// Every connector validates its advanced rules with
/// [`Connector::validate_advanced_rules`](crate::connector::Connector::validate_advanced_rules),
/// so `validate_rules(&rules, &connector)` works for any connector.
#[async_trait::async_trait]
impl<C: crate::connector::Connector> AdvancedRulesValidator for C {
    async fn validate_advanced(&self, advanced_rules: &Value) -> Vec<String> {
        crate::connector::Connector::validate_advanced_rules(self, advanced_rules).await
    }
}

/// Validates a whole rule set: basic rules (see the module documentation) and, when the set has
/// advanced rules (a non-empty `advanced_snippet.value`), the connector's advanced validator.
pub async fn validate_rules<A>(rules: &FilteringRules, advanced: &A) -> FilteringValidation
where
    A: AdvancedRulesValidator + ?Sized,
{
    let mut errors = basic_rule_errors(&rules.rules);
    if rules.has_advanced_rules() {
        let messages = advanced.validate_advanced(&rules.advanced_rules()).await;
        errors.extend(messages.into_iter().map(|m| ValidationError {
            ids: vec![ADVANCED_SNIPPET_ID.to_owned()],
            messages: vec![m],
        }));
    }
    into_validation(errors)
}

/// Validates basic rules only.
pub fn validate_basic_rules(rules: &[Value]) -> FilteringValidation {
    into_validation(basic_rule_errors(rules))
}

fn into_validation(errors: Vec<ValidationError>) -> FilteringValidation {
    FilteringValidation {
        state: if errors.is_empty() {
            ValidationState::Valid
        } else {
            ValidationState::Invalid
        },
        errors,
    }
}

fn entry(id: Option<&str>, message: String) -> ValidationError {
    ValidationError {
        ids: id.map(|i| vec![i.to_owned()]).unwrap_or_default(),
        messages: vec![message],
    }
}

fn basic_rule_errors(raw: &[Value]) -> Vec<ValidationError> {
    let (rules, rule_errors) = parse_rules(raw);
    let mut errors = Vec::new();

    // 1. shape
    for e in &rule_errors {
        let reference = e.reference();
        for problem in &e.problems {
            errors.push(entry(
                e.id.as_deref(),
                format!("{reference} is invalid: {problem}"),
            ));
        }
    }

    // 2. match-all regexes
    for rule in rules.iter().filter(|r| !r.is_default()) {
        if rule.rule == RuleKind::Regex && MATCH_ALL_REGEXES.contains(&rule.value.as_str()) {
            errors.push(entry(
                Some(&rule.id),
                format!(
                    "{} uses a match all regexps ['.*', '(.*)'], which are not allowed.",
                    rule.reference()
                ),
            ));
        }
    }

    // 3. regex syntax
    for rule in rules.iter().filter(|r| r.rule == RuleKind::Regex) {
        if let Err(e) = compile_full_match(&rule.value) {
            errors.push(entry(
                Some(&rule.id),
                format!(
                    "{} has an invalid regular expression {:?}: {}",
                    rule.reference(),
                    rule.value,
                    one_line(&e.to_string())
                ),
            ));
        }
    }

    // 4. comparison values
    for rule in rules
        .iter()
        .filter(|r| matches!(r.rule, RuleKind::LessThan | RuleKind::GreaterThan))
    {
        if Num::parse(&rule.value).is_none() && parse_date(&rule.value).is_none() {
            errors.push(entry(
                Some(&rule.id),
                format!(
                    "{} compares with '{}' but its value {:?} is neither a number nor a date.",
                    rule.reference(),
                    rule.rule,
                    rule.value
                ),
            ));
        }
    }

    // 5. semantic duplicates
    for (i, later) in rules.iter().enumerate() {
        if let Some(first) = rules[..i].iter().find(|r| same_meaning(r, later)) {
            errors.push(entry(
                Some(&later.id),
                format!(
                    "{} is semantically equal to {}.",
                    later.reference(),
                    first.reference()
                ),
            ));
            errors.push(entry(
                Some(&first.id),
                format!(
                    "{} is semantically equal to {}.",
                    first.reference(),
                    later.reference()
                ),
            ));
        }
    }
    errors
}

fn same_meaning(a: &BasicRule, b: &BasicRule) -> bool {
    a.field == b.field && a.rule == b.rule && a.value == b.value
}

/// `regex` errors span several lines (a caret diagram); a validation message is one line.
fn one_line(s: &str) -> String {
    s.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}
