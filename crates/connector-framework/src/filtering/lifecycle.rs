//! The draft lifecycle of the connector's `filtering` array, as pure functions (framework-spec
//! §10.5). The store writes what these return.
//!
//! 1. Kibana edits the `DEFAULT` draft and sets `draft.validation.state = "edited"`.
//! 2. At a scheduler pass (connector configured, reachable, sync rules enabled),
//!    [`refresh_draft`] validates an edited draft, stores the result on the draft
//!    ([`validate_draft`]) and, when it is valid, copies it to `active` ([`activate_draft`]).
//!    An invalid draft stays a draft; the previous active rules remain in use.
//! 3. At job start, the job's snapshot of the active rules is validated again;
//!    [`check_validation`] turns an invalid result into the job's error.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::model::{
    AdvancedSnippet, DEFAULT_DOMAIN, FilteringEntry, FilteringRules, FilteringValidation,
    ValidationState, timestamp,
};

use super::{
    FilteringError,
    rule::DEFAULT_RULE_ID,
    validation::{AdvancedRulesValidator, validate_rules},
};

/// The entry of the `DEFAULT` domain, the only one the framework uses.
pub fn select_default(entries: &[FilteringEntry]) -> Option<&FilteringEntry> {
    entries.iter().find(|e| e.domain == DEFAULT_DOMAIN)
}

/// The active rules of the `DEFAULT` domain; empty rules (index everything) when there is none.
pub fn active_rules(entries: &[FilteringEntry]) -> FilteringRules {
    select_default(entries)
        .map(|e| e.active.clone())
        .unwrap_or_default()
}

/// Kibana marked the draft as edited: it must be validated.
pub fn draft_needs_validation(entry: &FilteringEntry) -> bool {
    entry.draft.validation.state == ValidationState::Edited
}

/// The entry with `validation` stored on its draft.
pub fn validate_draft(entry: &FilteringEntry, validation: FilteringValidation) -> FilteringEntry {
    let mut out = entry.clone();
    out.draft.validation = validation;
    out
}

/// The entry with its draft copied to `active` (rules, advanced snippet, validation), or `None`
/// when the draft is not `valid` (an invalid or unvalidated draft is never activated).
pub fn activate_draft(entry: &FilteringEntry) -> Option<FilteringEntry> {
    if entry.draft.validation.state != ValidationState::Valid {
        return None;
    }
    let mut out = entry.clone();
    out.active = entry.draft.clone();
    Some(out)
}

/// What a scheduler pass does to an edited draft.
#[derive(Debug, Clone, PartialEq)]
pub struct DraftUpdate {
    /// The validation result, stored on the draft.
    pub validation: FilteringValidation,
    /// Whether the draft was valid and has been copied to `active`.
    pub activated: bool,
    /// The entry to write back.
    pub entry: FilteringEntry,
}

/// Validates an edited draft and activates it when valid; `None` when the draft is not edited
/// (nothing to do).
pub async fn refresh_draft<A>(entry: &FilteringEntry, advanced: &A) -> Option<DraftUpdate>
where
    A: AdvancedRulesValidator + ?Sized,
{
    if !draft_needs_validation(entry) {
        return None;
    }
    let validation = validate_rules(&entry.draft, advanced).await;
    let validated = validate_draft(entry, validation.clone());
    Some(match activate_draft(&validated) {
        Some(activated) => DraftUpdate {
            validation,
            activated: true,
            entry: activated,
        },
        None => DraftUpdate {
            validation,
            activated: false,
            entry: validated,
        },
    })
}

/// `Ok` for a `valid` result; otherwise the error a job fails with
/// (`Filtering in state invalid, errors: [...]`).
pub fn check_validation(validation: &FilteringValidation) -> Result<(), FilteringError> {
    if validation.state == ValidationState::Valid {
        Ok(())
    } else {
        Err(FilteringError::NotValid {
            state: validation.state,
            errors: validation.errors.clone(),
        })
    }
}

/// The default rule (`DEFAULT`, include everything), stamped with `now`.
pub fn default_rule(now: DateTime<Utc>) -> Value {
    let ts = timestamp(now);
    json!({
        "id": DEFAULT_RULE_ID,
        "order": 0,
        "policy": "include",
        "field": "_",
        "rule": "regex",
        "value": ".*",
        "created_at": ts,
        "updated_at": ts,
    })
}

/// A rule set holding only the default rule, an empty advanced snippet, and a `valid` validation.
pub fn default_rules(now: DateTime<Utc>) -> FilteringRules {
    let ts = timestamp(now);
    FilteringRules {
        rules: vec![default_rule(now)],
        advanced_snippet: AdvancedSnippet {
            value: Value::Object(Default::default()),
            created_at: Some(ts.clone()),
            updated_at: Some(ts),
        },
        validation: FilteringValidation::default(),
    }
}

/// The `filtering` array of a new connector: one `DEFAULT` domain whose active and draft sets are
/// [`default_rules`].
pub fn default_filtering(now: DateTime<Utc>) -> Vec<FilteringEntry> {
    vec![FilteringEntry {
        domain: DEFAULT_DOMAIN.to_owned(),
        active: default_rules(now),
        draft: default_rules(now),
    }]
}
