//! Sync rules (framework-spec §10): the basic rule engine, the validators, the advanced-rule
//! validation plumbing and the draft lifecycle.
//!
//! Stored rules stay raw JSON in [`crate::model::FilteringRules`]; this module parses them only to
//! use or validate them, so a malformed rule is reported, never fatal.
//!
//! * [`BasicRuleEngine`] decides per document (see [`engine`] for the exact matching semantics).
//! * [`validate_rules`] / [`validate_basic_rules`] produce a [`FilteringValidation`](crate::model::FilteringValidation)
//!   (see [`validation`] for the checks).
//! * [`lifecycle`] holds the draft → active functions and the defaults of a new connector.

pub mod coerce;
pub mod engine;
pub mod lifecycle;
pub mod rule;
pub mod validation;

pub use engine::BasicRuleEngine;
pub use lifecycle::{
    DraftUpdate, activate_draft, active_rules, check_validation, default_filtering, default_rule,
    default_rules, draft_needs_validation, refresh_draft, select_default, validate_draft,
};
pub use rule::{BasicRule, DEFAULT_RULE_ID, Policy, RuleError, RuleKind, parse_rules};
pub use validation::{
    ADVANCED_SNIPPET_ID, AdvancedRulesFn, AdvancedRulesValidator, NoAdvancedRules,
    validate_basic_rules, validate_rules,
};

use crate::{
    error::{Classify, ErrorKind},
    model::{ValidationError, ValidationState},
};

/// Sync rules that cannot be used.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FilteringError {
    /// Some stored rules cannot be parsed or compiled (every bad rule is listed).
    #[error("invalid sync rules: {}", join_rule_errors(.0))]
    InvalidRules(Vec<RuleError>),
    /// A rule set whose validation is not `valid` (the job-time check).
    #[error("Filtering in state {}, errors: [{}]", state_str(*.state), join_validation_errors(.errors))]
    NotValid {
        /// The validation state (`invalid` or `edited`).
        state: ValidationState,
        /// The validation's errors.
        errors: Vec<ValidationError>,
    },
}

impl Classify for FilteringError {
    /// Sync rules are user configuration: the user fixes them in Kibana.
    fn kind(&self) -> ErrorKind {
        ErrorKind::Configuration
    }
}

fn join_rule_errors(errors: &[RuleError]) -> String {
    errors
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

fn state_str(state: ValidationState) -> &'static str {
    match state {
        ValidationState::Edited => "edited",
        ValidationState::Valid => "valid",
        ValidationState::Invalid => "invalid",
    }
}

fn join_validation_errors(errors: &[ValidationError]) -> String {
    errors
        .iter()
        .map(|e| format!("(ids: {:?}, messages: {:?})", e.ids, e.messages))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests;
