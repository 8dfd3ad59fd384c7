//! Engine, validation and lifecycle tests: tables for the documented semantics, properties for
//! robustness and the numeric / date / regex / priority laws.

use chrono::{DateTime, FixedOffset, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::{Map, Value, json};

use super::*;
use crate::model::{
    FilteringEntry, FilteringRules, FilteringValidation, ValidationError, ValidationState,
};

fn rule(id: &str, order: i64, policy: &str, field: &str, kind: &str, value: &str) -> Value {
    json!({"id": id, "order": order, "policy": policy, "field": field, "rule": kind, "value": value})
}

fn doc(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// (document, field, rule, value, expected match)
type Case = (Value, &'static str, &'static str, &'static str, bool);

/// Every case is run as an exclusion rule (match → skip) and as the only rule.
fn run_cases(cases: &[Case]) {
    for (i, (d, field, kind, value, expected)) in cases.iter().enumerate() {
        let engine = BasicRuleEngine::new(&[rule("r", 0, "exclude", field, kind, value)])
            .unwrap_or_else(|e| panic!("case {i}: {e}"));
        let d = doc(d.clone());
        let matched = engine.matching_rule(&d).is_some();
        assert_eq!(
            matched, *expected,
            "case {i}: {field} {kind} {value:?} on {d:?}"
        );
        assert_eq!(engine.should_ingest(&d), !expected, "case {i}");
    }
}

#[test]
fn booleans() {
    run_cases(&[
        (json!({"read": true}), "read", "equals", "true", true),
        (json!({"read": true}), "read", "equals", "TRUE", true),
        (json!({"read": true}), "read", "equals", "yes", true),
        (json!({"read": true}), "read", "equals", "on", true),
        (json!({"read": true}), "read", "equals", "1", true),
        (json!({"read": true}), "read", "equals", "false", false),
        (json!({"read": true}), "read", "equals", "maybe", false),
        (json!({"read": false}), "read", "equals", "no", true),
        (json!({"read": false}), "read", "equals", "False", true),
        (json!({"read": false}), "read", "equals", "true", false),
        (json!({"read": true}), "read", "contains", "ru", true),
        (json!({"read": true}), "read", "regex", "t.*e", true),
        (json!({"read": true}), "read", ">", "0", false),
        (json!({"read": "true"}), "read", "equals", "yes", false),
    ]);
}

#[test]
fn numbers() {
    run_cases(&[
        (json!({"size": 10}), "size", ">", "5", true),
        (json!({"size": 10}), "size", ">", "10", false),
        (json!({"size": 10}), "size", "<", "10.5", true),
        (json!({"size": 10}), "size", "equals", "10.0", true),
        (json!({"size": 10}), "size", "equals", "1e1", true),
        (json!({"size": 10}), "size", "equals", "ten", false),
        // A non-numeric value never matches and never fails (W8).
        (json!({"size": 10}), "size", ">", "abc", false),
        (json!({"size": 10}), "size", "<", "abc", false),
        (json!({"size": 2.5}), "size", "<", "3", true),
        (json!({"size": -1}), "size", "<", "0", true),
        (json!({"size": 1234}), "size", "starts_with", "12", true),
        (json!({"size": 1234}), "size", "regex", "\\d{4}", true),
        (
            json!({"n": 9_007_199_254_740_993_i64}),
            "n",
            "equals",
            "9007199254740993",
            true,
        ),
        (
            json!({"n": 9_007_199_254_740_993_i64}),
            "n",
            "equals",
            "9007199254740992",
            false,
        ),
        (
            json!({"n": u64::MAX}),
            "n",
            ">",
            "9223372036854775807",
            true,
        ),
        // Strings holding numbers compare numerically with `<` / `>` ("10" > "9").
        (json!({"size": "10"}), "size", ">", "9", true),
        (json!({"size": " 10 "}), "size", "<", "9", false),
        (json!({"size": "ten"}), "size", ">", "9", false),
        // …but `equals` on a string is text equality.
        (json!({"size": "10"}), "size", "equals", "10.0", false),
        (json!({"size": "007"}), "size", "equals", "7", false),
        (json!({"size": "10"}), "size", "equals", "10", true),
    ]);
}

#[test]
fn dates() {
    run_cases(&[
        (
            json!({"d": "2024-05-01T12:00:00+02:00"}),
            "d",
            "<",
            "2024-05-01T10:00:01Z",
            true,
        ),
        (
            json!({"d": "2024-05-01T12:00:00+02:00"}),
            "d",
            "<",
            "2024-05-01T10:00:00Z",
            false,
        ),
        (
            json!({"d": "2024-05-01T12:00:00+02:00"}),
            "d",
            ">",
            "2024-05-01T09:59:59Z",
            true,
        ),
        (
            json!({"d": "2024-05-01T12:00:00+02:00"}),
            "d",
            ">",
            "2024-05-01",
            true,
        ),
        (json!({"d": "2024-05-01"}), "d", "<", "2024-05-02", true),
        (json!({"d": "2024-05-01"}), "d", ">", "2024-05-01", false),
        (
            json!({"d": "2024-05-01T10:00:00"}),
            "d",
            ">",
            "2024-05-01T09:59:59+00:00",
            true,
        ),
        (
            json!({"d": "2024-05-01 10:00:00.5+00:00"}),
            "d",
            ">",
            "2024-05-01T10:00:00Z",
            true,
        ),
        (
            json!({"d": "Wed, 1 May 2024"}),
            "d",
            "<",
            "2025-01-01",
            false,
        ),
        (json!({"d": "not a date"}), "d", "<", "2025-01-01", false),
        // `equals` on dates: same instant, whatever the spelling.
        (
            json!({"d": "2024-05-01T10:00:00.000000+00:00"}),
            "d",
            "equals",
            "2024-05-01T10:00:00Z",
            true,
        ),
        (
            json!({"d": "2024-05-01T12:00:00+02:00"}),
            "d",
            "equals",
            "2024-05-01T10:00:00Z",
            true,
        ),
        (
            json!({"d": "2024-05-01"}),
            "d",
            "equals",
            "2024-05-01T00:00:00Z",
            true,
        ),
        (
            json!({"d": "2024-05-01T10:00:01Z"}),
            "d",
            "equals",
            "2024-05-01T10:00:00Z",
            false,
        ),
        (
            json!({"d": "2024-05-01"}),
            "d",
            "equals",
            "2024-05-01",
            true,
        ),
        (json!({"d": 1_714_557_600}), "d", "<", "2025-01-01", false),
    ]);
}

#[test]
fn text_rules() {
    run_cases(&[
        (
            json!({"s": "Invoice 2024"}),
            "s",
            "equals",
            "Invoice 2024",
            true,
        ),
        (
            json!({"s": "Invoice 2024"}),
            "s",
            "equals",
            "invoice 2024",
            false,
        ),
        (json!({"s": "Invoice 2024"}), "s", "contains", "ice 2", true),
        (
            json!({"s": "Invoice 2024"}),
            "s",
            "starts_with",
            "Inv",
            true,
        ),
        (
            json!({"s": "Invoice 2024"}),
            "s",
            "starts_with",
            "2024",
            false,
        ),
        (json!({"s": "Invoice 2024"}), "s", "ends_with", "2024", true),
        (json!({"s": "Invoice 2024"}), "s", "ends_with", "Inv", false),
        (json!({"s": "Invoice 2024"}), "s", "<", "5", false),
    ]);
}

#[test]
fn regex_is_a_full_match() {
    run_cases(&[
        (json!({"s": "invoice 2024"}), "s", "regex", "invoice", false),
        (
            json!({"s": "invoice 2024"}),
            "s",
            "regex",
            "invoice.*",
            true,
        ),
        (
            json!({"s": "invoice 2024"}),
            "s",
            "regex",
            "voice \\d+",
            false,
        ),
        (
            json!({"s": "invoice 2024"}),
            "s",
            "regex",
            ".*voice \\d+",
            true,
        ),
        (
            json!({"s": "invoice 2024"}),
            "s",
            "regex",
            "(?i)INVOICE \\d{4}",
            true,
        ),
        // The anchors bind the whole alternation.
        (json!({"s": "ab"}), "s", "regex", "a|b", false),
        (json!({"s": "a"}), "s", "regex", "a|b", true),
        // A trailing newline is not ignored.
        (json!({"s": "abc\n"}), "s", "regex", "abc", false),
        (json!({"s": ""}), "s", "regex", "x?", true),
    ]);
}

#[test]
fn field_lookup() {
    run_cases(&[
        // Lists: any element.
        (
            json!({"labels": ["a", "INBOX"]}),
            "labels",
            "equals",
            "INBOX",
            true,
        ),
        (
            json!({"labels": ["a", "b"]}),
            "labels",
            "equals",
            "INBOX",
            false,
        ),
        (json!({"labels": []}), "labels", "equals", "INBOX", false),
        (
            json!({"labels": [["x", ["INBOX"]]]}),
            "labels",
            "equals",
            "INBOX",
            true,
        ),
        (json!({"sizes": [1, 50]}), "sizes", ">", "10", true),
        // Objects never match…
        (json!({"from": {"name": "x"}}), "from", "equals", "x", false),
        (
            json!({"from": {"name": "x"}}),
            "from",
            "contains",
            "name",
            false,
        ),
        // …but dotted paths reach into them, and through arrays.
        (
            json!({"from": {"name": "x"}}),
            "from.name",
            "equals",
            "x",
            true,
        ),
        (json!({"a": {"b": {"c": 5}}}), "a.b.c", ">", "4", true),
        (
            json!({"attachments": [{"name": "a.pdf"}, {"name": "b.exe"}]}),
            "attachments.name",
            "ends_with",
            ".exe",
            true,
        ),
        (
            json!({"attachments": [{"name": "a.pdf"}, {"size": 3}]}),
            "attachments.name",
            "ends_with",
            ".exe",
            false,
        ),
        // A top-level key wins over the path.
        (
            json!({"a.b": "1", "a": {"b": "2"}}),
            "a.b",
            "equals",
            "2",
            false,
        ),
        (
            json!({"a.b": "1", "a": {"b": "2"}}),
            "a.b",
            "equals",
            "1",
            true,
        ),
        // Missing or null: no match.
        (json!({"other": "x"}), "s", "equals", "x", false),
        (json!({"s": null}), "s", "equals", "null", false),
        (json!({"a": "x"}), "a.b", "equals", "x", false),
    ]);
}

#[test]
fn first_matching_rule_by_order_decides() {
    let d = doc(json!({"subject": "cheap spam offer", "size": 5}));
    // Stored out of order: the include rule (order 0) wins over the exclude rule (order 1).
    let engine = BasicRuleEngine::new(&[
        rule("ex", 1, "exclude", "subject", "contains", "spam"),
        rule("in", 0, "include", "subject", "contains", "offer"),
    ])
    .unwrap();
    assert_eq!(engine.matching_rule(&d).map(|r| r.id.as_str()), Some("in"));
    assert!(engine.should_ingest(&d));
    assert_eq!(
        engine.rules().map(|r| r.id.as_str()).collect::<Vec<_>>(),
        ["in", "ex"]
    );

    // Equal orders keep their stored order.
    let engine = BasicRuleEngine::new(&[
        rule("ex", 3, "exclude", "subject", "contains", "spam"),
        rule("in", 3, "include", "subject", "contains", "offer"),
    ])
    .unwrap();
    assert!(!engine.should_ingest(&d));

    // A rule that does not match is skipped; the next one decides.
    let engine = BasicRuleEngine::new(&[
        rule("in", 0, "include", "subject", "contains", "invoice"),
        rule("ex", 1, "exclude", "size", "<", "10"),
    ])
    .unwrap();
    assert_eq!(engine.matching_rule(&d).map(|r| r.id.as_str()), Some("ex"));
    assert!(!engine.should_ingest(&d));

    // Nothing matches: indexed, even when every rule is an include rule.
    let engine =
        BasicRuleEngine::new(&[rule("in", 0, "include", "subject", "equals", "x")]).unwrap();
    assert!(engine.should_ingest(&d));
}

#[test]
fn default_rule_is_ignored() {
    let d = doc(json!({"subject": "x"}));
    let engine = BasicRuleEngine::new(&[lifecycle::default_rule(Utc::now())]).unwrap();
    assert!(engine.is_empty());
    assert!(engine.should_ingest(&d));
    // Even a default rule turned into an exclusion is never consulted.
    let engine = BasicRuleEngine::new(&[
        rule("DEFAULT", 0, "exclude", "_", "regex", ".*"),
        rule("ex", 1, "exclude", "subject", "equals", "y"),
    ])
    .unwrap();
    assert_eq!(engine.rules().count(), 1);
    assert!(engine.should_ingest(&d));
    assert!(!engine.should_ingest(&doc(json!({"subject": "y"}))));
    // No rules at all.
    assert!(BasicRuleEngine::new(&[]).unwrap().should_ingest(&d));
}

#[test]
fn id_kept_apart_from_fields() {
    let engine =
        BasicRuleEngine::new(&[rule("r", 0, "exclude", "id", "starts_with", "draft-")]).unwrap();
    let fields = doc(json!({"subject": "x"}));
    assert!(!engine.should_ingest_with_id("draft-1", &fields));
    assert!(engine.should_ingest_with_id("msg-1", &fields));
    // An `id` in the fields wins.
    assert!(engine.should_ingest_with_id("draft-1", &doc(json!({"id": "msg-2"}))));
}

#[test]
fn engine_reports_every_bad_rule() {
    let err = BasicRuleEngine::new(&[
        rule("ok", 0, "include", "f", "equals", "v"),
        json!({"id": "p", "order": 1, "policy": "sometimes", "field": "f", "rule": "equals", "value": "v"}),
        rule("re", 2, "include", "f", "regex", "(unclosed"),
        json!(42),
    ])
    .unwrap_err();
    let FilteringError::InvalidRules(errors) = &err else {
        panic!("{err:?}");
    };
    assert_eq!(
        errors.iter().map(|e| e.index).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    let text = err.to_string();
    assert!(
        text.contains("Basic rule 2 (id: 'p') is invalid: 'policy' must be"),
        "{text}"
    );
    assert!(
        text.contains("Basic rule 3 (id: 're') is invalid: invalid regular expression"),
        "{text}"
    );
    assert!(text.contains("Basic rule at position 4 (no id)"), "{text}");
    assert_eq!(crate::Classify::kind(&err), crate::ErrorKind::Configuration);
    // The full-match wrapper cannot be escaped by a value with unbalanced groups.
    assert!(BasicRuleEngine::new(&[rule("r", 0, "include", "f", "regex", "a)|(b")]).is_err());
}

// ---------------------------------------------------------------------------------------------
// validation

fn messages(v: &FilteringValidation) -> Vec<(Vec<String>, String)> {
    v.errors
        .iter()
        .flat_map(|e| e.messages.iter().map(move |m| (e.ids.clone(), m.clone())))
        .collect()
}

#[test]
fn valid_rules_validate() {
    let now = Utc::now();
    let rules = vec![
        rule("a", 0, "include", "subject", "regex", "invoice.*"),
        rule("b", 1, "exclude", "size", ">", "100"),
        rule("c", 2, "exclude", "date", "<", "2024-01-01"),
        lifecycle::default_rule(now),
    ];
    let v = validate_basic_rules(&rules);
    assert_eq!(
        v,
        FilteringValidation {
            state: ValidationState::Valid,
            errors: vec![]
        }
    );
}

#[test]
fn each_check_reports_its_rules() {
    let rules = vec![
        rule("ok", 0, "include", "f", "equals", "v"),
        json!({"id": "bad", "order": 1, "policy": "include", "field": "", "rule": "equals", "value": "v"}),
        json!(7),
        rule("all", 3, "include", "f", "regex", ".*"),
        rule("all2", 4, "exclude", "g", "regex", "(.*)"),
        rule("re", 5, "include", "f", "regex", "[z-a]"),
        rule("lt", 6, "exclude", "size", "<", "big"),
        rule("dup", 7, "exclude", "f", "equals", "v"),
        lifecycle::default_rule(Utc::now()),
    ];
    let v = validate_basic_rules(&rules);
    assert_eq!(v.state, ValidationState::Invalid);
    let got = messages(&v);
    let ids = |s: &str| vec![s.to_owned()];
    let expected = [
        (ids("bad"), "Basic rule 2 (id: 'bad') is invalid: 'field' must not be empty".to_owned()),
        (vec![], "Basic rule at position 3 (no id) is invalid: a rule must be a JSON object, found a number".to_owned()),
        (ids("all"), "Basic rule 4 (id: 'all') uses a match all regexps ['.*', '(.*)'], which are not allowed.".to_owned()),
        (ids("all2"), "Basic rule 5 (id: 'all2') uses a match all regexps ['.*', '(.*)'], which are not allowed.".to_owned()),
    ];
    assert_eq!(got[..4], expected[..], "{got:#?}");
    let rest: Vec<&(Vec<String>, String)> = got[4..].iter().collect();
    assert_eq!(rest.len(), 4, "{rest:#?}");
    assert_eq!(rest[0].0, ids("re"));
    assert!(
        rest[0]
            .1
            .starts_with("Basic rule 6 (id: 're') has an invalid regular expression \"[z-a]\": "),
        "{}",
        rest[0].1
    );
    assert!(!rest[0].1.contains('\n'));
    assert_eq!(
        rest[1],
        &(ids("lt"), "Basic rule 7 (id: 'lt') compares with '<' but its value \"big\" is neither a number nor a date.".to_owned())
    );
    assert_eq!(
        rest[2],
        &(
            ids("dup"),
            "Basic rule 8 (id: 'dup') is semantically equal to Basic rule 1 (id: 'ok').".to_owned()
        )
    );
    assert_eq!(
        rest[3],
        &(
            ids("ok"),
            "Basic rule 1 (id: 'ok') is semantically equal to Basic rule 8 (id: 'dup').".to_owned()
        )
    );
}

#[test]
fn default_rule_may_match_all() {
    let v = validate_basic_rules(&[rule("DEFAULT", 0, "include", "_", "regex", ".*")]);
    assert_eq!(v.state, ValidationState::Valid);
}

struct GmailLike;

#[async_trait::async_trait]
impl AdvancedRulesValidator for GmailLike {
    async fn validate_advanced(&self, advanced: &Value) -> Vec<String> {
        match advanced.get("messages") {
            Some(Value::Array(a)) if !a.is_empty() && a.iter().all(Value::is_string) => vec![],
            _ => vec!["'messages' must be a non-empty array of strings".to_owned()],
        }
    }
}

fn rules_with_snippet(rules: Vec<Value>, snippet: Value) -> FilteringRules {
    FilteringRules {
        rules,
        advanced_snippet: crate::model::AdvancedSnippet {
            value: snippet,
            created_at: None,
            updated_at: None,
        },
        validation: FilteringValidation::default(),
    }
}

#[tokio::test]
async fn advanced_rules_are_validated_by_the_connector() {
    let bad = rules_with_snippet(vec![], json!({"messages": []}));
    let v = validate_rules(&bad, &GmailLike).await;
    assert_eq!(
        v,
        FilteringValidation {
            state: ValidationState::Invalid,
            errors: vec![ValidationError {
                ids: vec!["advanced_snippet".into()],
                messages: vec!["'messages' must be a non-empty array of strings".into()],
            }],
        }
    );
    let good = rules_with_snippet(vec![], json!({"messages": ["from:boss"]}));
    assert_eq!(
        validate_rules(&good, &GmailLike).await.state,
        ValidationState::Valid
    );
    // An empty snippet is not validated at all.
    let empty = rules_with_snippet(vec![], json!({}));
    assert_eq!(
        validate_rules(&empty, &GmailLike).await.state,
        ValidationState::Valid
    );
    // Basic and advanced problems are combined.
    let both = rules_with_snippet(vec![json!({"id": "x"})], json!({"nope": 1}));
    let v = validate_rules(
        &both,
        &AdvancedRulesFn(|_: &Value| vec!["bad snippet".to_owned()]),
    )
    .await;
    let got = messages(&v);
    assert_eq!(
        got.last(),
        Some(&(
            vec!["advanced_snippet".to_owned()],
            "bad snippet".to_owned()
        ))
    );
    assert!(got.len() > 1);
    let shared: std::sync::Arc<dyn AdvancedRulesValidator> = std::sync::Arc::new(NoAdvancedRules);
    assert_eq!(
        validate_rules(&both, &shared).await.errors.len(),
        got.len() - 1
    );
}

// ---------------------------------------------------------------------------------------------
// lifecycle

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

#[test]
fn default_filtering_shape() {
    let entries = default_filtering(at("2024-05-01T10:00:00Z"));
    let ts = "2024-05-01T10:00:00.000000+00:00";
    let set = json!({
        "rules": [{"id": "DEFAULT", "order": 0, "policy": "include", "field": "_", "rule": "regex",
                   "value": ".*", "created_at": ts, "updated_at": ts}],
        "advanced_snippet": {"value": {}, "created_at": ts, "updated_at": ts},
        "validation": {"state": "valid", "errors": []}
    });
    assert_eq!(
        serde_json::to_value(&entries).unwrap(),
        json!([{"domain": "DEFAULT", "active": set, "draft": set}])
    );
    assert_eq!(
        validate_basic_rules(&entries[0].draft.rules).state,
        ValidationState::Valid
    );
}

#[test]
fn select_default_domain() {
    let mut other = default_filtering(Utc::now()).remove(0);
    other.domain = "other".into();
    let default = default_filtering(Utc::now()).remove(0);
    let entries = vec![other.clone(), default.clone()];
    assert_eq!(select_default(&entries), Some(&default));
    assert_eq!(select_default(&[other]), None);
    assert_eq!(active_rules(&[]), FilteringRules::default());
}

fn edited(rules: Vec<Value>) -> FilteringEntry {
    let mut entry = default_filtering(at("2024-05-01T10:00:00Z")).remove(0);
    entry.draft.rules = rules;
    entry.draft.validation.state = ValidationState::Edited;
    entry
}

#[tokio::test]
async fn malformed_draft_is_invalid_and_stays_a_draft() {
    let entry = edited(vec![
        rule("good", 0, "exclude", "subject", "contains", "spam"),
        json!({"id": "broken", "order": 1, "policy": "include", "field": "x", "rule": "like", "value": "v"}),
    ]);
    let update = refresh_draft(&entry, &NoAdvancedRules)
        .await
        .expect("edited draft");
    assert!(!update.activated);
    assert_eq!(update.validation.state, ValidationState::Invalid);
    assert_eq!(update.validation.errors.len(), 1);
    assert_eq!(update.validation.errors[0].ids, ["broken"]);
    assert!(
        update.validation.errors[0].messages[0]
            .starts_with("Basic rule 2 (id: 'broken') is invalid: 'rule' must be one of"),
        "{:?}",
        update.validation
    );
    // The draft carries the result; the active set is untouched.
    assert_eq!(update.entry.draft.validation, update.validation);
    assert_eq!(update.entry.draft.rules, entry.draft.rules);
    assert_eq!(update.entry.active, entry.active);
    assert!(activate_draft(&update.entry).is_none());
    let err = check_validation(&update.validation).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("Filtering in state invalid, errors: [(ids: [\"broken\"]"),
        "{err}"
    );
}

#[tokio::test]
async fn valid_draft_activates() {
    let entry = edited(vec![
        rule("good", 0, "exclude", "subject", "contains", "spam"),
        lifecycle::default_rule(Utc::now()),
    ]);
    let update = refresh_draft(&entry, &NoAdvancedRules)
        .await
        .expect("edited draft");
    assert!(update.activated);
    assert_eq!(update.validation.state, ValidationState::Valid);
    assert_eq!(update.entry.active, update.entry.draft);
    assert_eq!(update.entry.active.rules, entry.draft.rules);
    assert_eq!(update.entry.active.validation.state, ValidationState::Valid);
    check_validation(&update.entry.active.validation).unwrap();
    // The activated rules work.
    let engine = BasicRuleEngine::new(&update.entry.active.rules).unwrap();
    assert!(!engine.should_ingest(&doc(json!({"subject": "spam!"}))));
    // A draft that is not edited needs nothing.
    assert!(
        refresh_draft(&update.entry, &NoAdvancedRules)
            .await
            .is_none()
    );
    // An edited draft is never activated before validation.
    assert!(activate_draft(&entry).is_none());
    let validated = validate_draft(&entry, FilteringValidation::default());
    assert_eq!(validated.draft.validation.state, ValidationState::Valid);
    assert!(activate_draft(&validated).is_some());
}

// ---------------------------------------------------------------------------------------------
// properties

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        "\\PC{0,8}".prop_map(Value::String),
        prop::sample::select(vec![
            "include",
            "EXCLUDE",
            "equals",
            "regex",
            "<",
            ">",
            ".*",
            "(",
            "DEFAULT",
            "1",
            "2024-01-01",
            "true",
            "a.b",
        ])
        .prop_map(|s| Value::String(s.to_owned())),
    ];
    leaf.prop_recursive(3, 20, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z.]{1,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Mostly rule-shaped objects, with any key missing or holding anything.
fn arb_rule() -> impl Strategy<Value = Value> {
    let key = |valid: Vec<Value>| {
        prop::option::weighted(
            0.9,
            prop_oneof![4 => prop::sample::select(valid), 1 => arb_json()],
        )
    };
    let s = |v: &[&str]| v.iter().map(|x| json!(x)).collect::<Vec<_>>();
    (
        key(s(&["a", "b", "DEFAULT", ""])),
        key(vec![json!(0), json!(1), json!(2), json!(1.0)]),
        key(s(&["include", "exclude", "Exclude"])),
        key(s(&["f", "g", "a.b", "id"])),
        key(s(&[
            "equals",
            "contains",
            "starts_with",
            "ends_with",
            "regex",
            "<",
            ">",
        ])),
        key(s(&[
            "v",
            "1",
            "10",
            "2024-01-01",
            ".*",
            "(",
            "[a-z]+",
            "true",
        ])),
    )
        .prop_map(|(id, order, policy, field, rule, value)| {
            let mut m = Map::new();
            for (k, v) in [
                ("id", id),
                ("order", order),
                ("policy", policy),
                ("field", field),
                ("rule", rule),
                ("value", value),
            ] {
                if let Some(v) = v {
                    m.insert(k.to_owned(), v);
                }
            }
            Value::Object(m)
        })
}

fn arb_doc() -> impl Strategy<Value = Map<String, Value>> {
    prop::collection::btree_map(
        prop::sample::select(vec!["f", "g", "a", "a.b", "id"]).prop_map(str::to_owned),
        arb_json(),
        0..5,
    )
    .prop_map(|m| m.into_iter().collect())
}

const BOOL_SPELLINGS: [(&str, bool); 12] = [
    ("true", true),
    ("True", true),
    ("t", true),
    ("yes", true),
    ("Y", true),
    ("on", true),
    ("false", false),
    ("FALSE", false),
    ("f", false),
    ("no", false),
    ("n", false),
    ("off", false),
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    /// Whatever is stored, nothing panics; validation is `invalid` exactly when it has errors;
    /// a `valid` rule set always builds an engine.
    #[test]
    fn arbitrary_rules_never_panic(
        rules in prop::collection::vec(prop_oneof![6 => arb_rule(), 1 => arb_json()], 0..6),
        docs in prop::collection::vec(arb_doc(), 0..4),
    ) {
        let v = validate_basic_rules(&rules);
        prop_assert_eq!(v.state == ValidationState::Invalid, !v.errors.is_empty());
        let engine = BasicRuleEngine::new(&rules);
        if v.state == ValidationState::Valid {
            prop_assert!(engine.is_ok(), "{:?}", engine.err());
        }
        if let Ok(engine) = engine {
            for d in &docs {
                let decision = engine.should_ingest(d);
                let expected = engine.matching_rule(d).is_none_or(|r| r.policy == Policy::Include);
                prop_assert_eq!(decision, expected);
            }
        }
    }

    #[test]
    fn no_rules_ingest_everything(d in arb_doc()) {
        prop_assert!(BasicRuleEngine::new(&[]).unwrap().should_ingest(&d));
    }

    /// `<` / `>` on integers, stored as JSON numbers or as strings, follow integer order.
    #[test]
    fn integer_comparisons(a in any::<i64>(), b in any::<i64>(), as_text in any::<bool>()) {
        let field = if as_text { json!(a.to_string()) } else { json!(a) };
        let d = doc(json!({"n": field}));
        let gt = BasicRuleEngine::new(&[rule("r", 0, "exclude", "n", ">", &b.to_string())]).unwrap();
        let lt = BasicRuleEngine::new(&[rule("r", 0, "exclude", "n", "<", &b.to_string())]).unwrap();
        prop_assert_eq!(gt.should_ingest(&d), a <= b);
        prop_assert_eq!(lt.should_ingest(&d), a >= b);
        let eq = BasicRuleEngine::new(&[rule("r", 0, "exclude", "n", "equals", &b.to_string())]).unwrap();
        prop_assert_eq!(eq.should_ingest(&d), a != b);
    }

    /// Floats compare numerically, and a non-numeric rule value never matches a number.
    #[test]
    fn float_comparisons(
        a in -1e12f64..1e12,
        b in -1e12f64..1e12,
        junk in "[a-zA-Z ]{1,6}",
    ) {
        let d = doc(json!({"x": a}));
        let gt = BasicRuleEngine::new(&[rule("r", 0, "exclude", "x", ">", &b.to_string())]).unwrap();
        prop_assert_eq!(gt.should_ingest(&d), a <= b);
        let bad = BasicRuleEngine::new(&[rule("r", 0, "exclude", "x", ">", &junk)]).unwrap();
        prop_assert!(bad.should_ingest(&d));
        let bad = BasicRuleEngine::new(&[rule("r", 0, "exclude", "x", "equals", &junk)]).unwrap();
        prop_assert!(bad.should_ingest(&d));
    }

    /// Dates compare as instants whatever the offsets they are written with.
    #[test]
    fn date_comparisons(
        a in 0i64..4_000_000_000,
        b in 0i64..4_000_000_000,
        offset_minutes in -720i32..=840,
        date_only in any::<bool>(),
    ) {
        let offset = FixedOffset::east_opt(offset_minutes * 60).unwrap();
        let ta = offset.timestamp_opt(a, 0).unwrap();
        let tb = Utc.timestamp_opt(b, 0).unwrap();
        let (rule_value, tb) = if date_only {
            let day = tb.date_naive();
            (day.format("%Y-%m-%d").to_string(), day.and_hms_opt(0, 0, 0).unwrap().and_utc())
        } else {
            (tb.to_rfc3339(), tb)
        };
        let d = doc(json!({"d": ta.to_rfc3339()}));
        let lt = BasicRuleEngine::new(&[rule("r", 0, "exclude", "d", "<", &rule_value)]).unwrap();
        let gt = BasicRuleEngine::new(&[rule("r", 0, "exclude", "d", ">", &rule_value)]).unwrap();
        prop_assert_eq!(lt.should_ingest(&d), ta >= tb);
        prop_assert_eq!(gt.should_ingest(&d), ta <= tb);
    }

    /// A regex matches the whole value, not a prefix, suffix or part of it.
    #[test]
    fn regex_full_match(s in "[a-z0-9 .*+?()]{1,10}", extra in "[a-z]{1,3}") {
        let engine = BasicRuleEngine::new(&[rule("r", 0, "exclude", "f", "regex", &regex::escape(&s))]).unwrap();
        let exact = doc(json!({"f": s.clone()}));
        let longer = doc(json!({"f": format!("{s}{extra}")}));
        let prefixed = doc(json!({"f": format!("{extra}{s}")}));
        prop_assert!(!engine.should_ingest(&exact));
        prop_assert!(engine.should_ingest(&longer));
        prop_assert!(engine.should_ingest(&prefixed));
    }

    /// Booleans match their spellings, any case.
    #[test]
    fn boolean_equals(b in any::<bool>(), spelling in prop::sample::select(BOOL_SPELLINGS.to_vec())) {
        let (text, meaning) = spelling;
        let engine = BasicRuleEngine::new(&[rule("r", 0, "exclude", "flag", "equals", text)]).unwrap();
        prop_assert_eq!(engine.should_ingest(&doc(json!({"flag": b}))), b != meaning);
    }

    /// Among matching rules, the lowest order (then the first stored) decides.
    #[test]
    fn priorities(specs in prop::collection::vec((0i64..5, any::<bool>(), any::<bool>()), 1..8)) {
        let rules: Vec<Value> = specs
            .iter()
            .enumerate()
            .map(|(i, (order, include, matches))| {
                let value = if *matches { "v" } else { "w" };
                rule(&format!("r{i}"), *order, if *include { "include" } else { "exclude" }, "f", "equals", value)
            })
            .collect();
        let engine = BasicRuleEngine::new(&rules).unwrap();
        let d = doc(json!({"f": "v"}));
        let expected = specs
            .iter()
            .enumerate()
            .filter(|(_, (_, _, matches))| *matches)
            .min_by_key(|(i, (order, _, _))| (*order, *i));
        match expected {
            Some((i, (_, include, _))) => {
                let id = format!("r{i}");
                prop_assert_eq!(engine.matching_rule(&d).map(|r| r.id.as_str()), Some(id.as_str()));
                prop_assert_eq!(engine.should_ingest(&d), *include);
            }
            None => {
                prop_assert!(engine.matching_rule(&d).is_none());
                prop_assert!(engine.should_ingest(&d));
            }
        }
    }

    /// Exclusion by list membership: a list field matches when any element does.
    #[test]
    fn list_membership(labels in prop::collection::vec("[a-c]{1,2}", 0..5), target in "[a-c]{1,2}") {
        let engine = BasicRuleEngine::new(&[rule("r", 0, "exclude", "labels", "equals", &target)]).unwrap();
        let d = doc(json!({"labels": labels.clone()}));
        prop_assert_eq!(engine.should_ingest(&d), !labels.contains(&target));
    }
}

/// A connector is an advanced-rules validator through its own `validate_advanced_rules`.
#[tokio::test]
async fn connectors_validate_their_advanced_rules() {
    use crate::connector::{Connector, ConnectorFeatures, SyncRequest, SyncStream};
    use crate::source::SourceError;

    struct Picky;

    #[async_trait::async_trait]
    impl Connector for Picky {
        const SERVICE_TYPE: &'static str = "picky";
        const DISPLAY_NAME: &'static str = "Picky";
        type Config = ();
        type Cursor = ();
        type Checkpoint = ();

        fn features(&self) -> ConnectorFeatures {
            ConnectorFeatures::default()
        }
        async fn validate_config(&self, _config: &()) -> Result<(), SourceError> {
            Ok(())
        }
        async fn ping(&self, _config: &()) -> Result<(), SourceError> {
            Ok(())
        }
        async fn validate_advanced_rules(&self, rules: &Value) -> Vec<String> {
            if rules.get("query").is_some() {
                vec![]
            } else {
                vec!["'query' is required".to_owned()]
            }
        }
        fn full_sync<'a>(
            &'a self,
            _config: &'a (),
            _request: SyncRequest<(), ()>,
        ) -> SyncStream<'a, (), ()> {
            Box::pin(futures::stream::empty())
        }
    }

    let bad = rules_with_snippet(vec![], json!({"q": 1}));
    let v = validate_rules(&bad, &Picky).await;
    assert_eq!(
        messages(&v),
        [(
            vec!["advanced_snippet".to_owned()],
            "'query' is required".to_owned()
        )]
    );
    let good = rules_with_snippet(vec![], json!({"query": "x"}));
    assert_eq!(
        validate_rules(&good, &Picky).await.state,
        ValidationState::Valid
    );
}
