//! Sync streams against a small in-process fake of Google (see `fake/mod.rs`): document sets,
//! partitions, cursors, history, expired history, faults, revoked delegation, validation.

mod common;
mod fake;

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use common::request;
use connector_framework::{
    Classify as _, ErrorKind,
    connector::{Connector, Document, SyncEvent, SyncItem},
    source::SourceError,
};
use connector_gmail::{
    ApiOptions, GmailCheckpoint, GmailConfig, GmailConnector, GmailCursor, retry::RetryPolicy,
};
use fake::{Shared, World};
use futures::StreamExt as _;
use serde_json::{Value, json};

const ADMIN: &str = "admin@acme.test";
const ANN: &str = "ann@acme.test";
const BOB: &str = "bob@acme.test";
const NOMAIL: &str = "robot@acme.test";

fn key_json(token_uri: &str) -> String {
    json!({
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "0123456789abcdef0123456789abcdef01234567",
        "private_key": include_str!("data/test-key.pem"),
        "client_email": "sync@p.iam.gserviceaccount.com",
        "client_id": "100000000000000000001",
        "token_uri": token_uri,
        "universe_domain": "googleapis.com"
    })
    .to_string()
}

fn world() -> Shared {
    let mut w = World {
        customer: "C123".into(),
        ..Default::default()
    };
    w.add_user(ADMIN, true);
    w.admins.insert(ADMIN.into());
    w.add_user(ANN, true);
    w.add_user(BOB, true);
    w.add_user(NOMAIL, false);
    for i in 0..7 {
        w.deliver(
            ANN,
            "Amy Pond <amy@partner.test>",
            &format!("amy{i}"),
            &["INBOX"],
        );
    }
    for i in 0..5 {
        w.deliver(
            ANN,
            "carl@x.test",
            &format!("carl{i}"),
            &["INBOX", "Label_1"],
        );
    }
    w.deliver(ANN, "spammer@x.test", "spam", &["SPAM"]);
    w.deliver(BOB, "amy@acme.test", "trashed", &["TRASH"]);
    for i in 0..4 {
        w.deliver(BOB, "dan@x.test", &format!("dan{i}"), &["INBOX"]);
    }
    w.deliver(ADMIN, "x@x.test", "admin mail", &["INBOX"]);
    Arc::new(Mutex::new(w))
}

async fn setup() -> (Shared, GmailConfig, GmailConnector) {
    let w = world();
    let base = fake::start(w.clone()).await;
    let mut cfg = GmailConfig::new(key_json(&format!("{base}/token")), ADMIN, "C123");
    cfg.google_api_base_url = base;
    // The fake serves single requests only; batches are tested against the simulator.
    cfg.messages_per_batch_request = 1;
    let connector = GmailConnector::with_options(ApiOptions {
        retry: RetryPolicy::fast(),
        ..ApiOptions::default()
    });
    (w, cfg, connector)
}

#[derive(Default, Debug)]
struct Run {
    upserts: BTreeMap<String, Document>,
    deletes: Vec<String>,
    partitions: Vec<String>,
    checkpoints: Vec<GmailCheckpoint>,
    complete: Option<Option<GmailCursor>>,
    error: Option<SourceError>,
}

impl Run {
    fn ids(&self) -> Vec<String> {
        self.upserts.keys().cloned().collect()
    }
}

async fn collect(
    mut s: futures::stream::BoxStream<
        '_,
        Result<SyncEvent<GmailCursor, GmailCheckpoint>, SourceError>,
    >,
) -> Run {
    let mut run = Run::default();
    while let Some(ev) = s.next().await {
        assert!(run.complete.is_none(), "nothing may follow Complete");
        match ev {
            Ok(SyncEvent::Item(SyncItem::Encoded(d))) => {
                let d = common::decoded(&d);
                run.upserts.insert(d.id.clone(), d);
            }
            Ok(SyncEvent::Item(SyncItem::Upsert(d))) => {
                panic!(
                    "the Gmail connector encodes its documents; got a plain upsert of {}",
                    d.id
                )
            }
            Ok(SyncEvent::Item(SyncItem::Delete { id })) => run.deletes.push(id),
            Ok(SyncEvent::Item(SyncItem::PartitionComplete { field, value })) => {
                assert_eq!(field, "mailbox");
                run.partitions
                    .push(value.as_str().unwrap_or_default().to_owned());
            }
            Ok(SyncEvent::Item(SyncItem::Checkpoint(c))) => run.checkpoints.push(c),
            Ok(SyncEvent::Complete(c)) => run.complete = Some(c.cursor),
            Err(e) => {
                run.error = Some(e);
                break;
            }
        }
    }
    run.partitions.sort();
    run.deletes.sort();
    run
}

fn expected(w: &Shared, include: bool) -> Vec<String> {
    w.lock().expect("lock").expected(include, |_| true)
}

#[tokio::test]
async fn full_sync_yields_every_mailbox_message_and_completes() {
    let (w, cfg, c) = setup().await;
    let run = collect(c.full_sync(&cfg, request(None, None, Value::Null))).await;
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(run.ids(), expected(&w, false));
    assert_eq!(run.ids().len(), 17);
    assert_eq!(run.partitions, vec![ADMIN, ANN, BOB]);
    let cursor = run.complete.expect("complete").expect("cursor");
    assert_eq!(cursor.mailboxes.len(), 3);
    assert_eq!(
        cursor.mailboxes[ANN],
        w.lock().expect("lock").mailboxes[ANN]
            .history_id
            .to_string()
    );
    assert_eq!(
        run.checkpoints.last().expect("checkpoint").finished,
        cursor.mailboxes
    );
    let doc = run
        .upserts
        .values()
        .find(|d| d.fields["subject"] == "amy3")
        .expect("amy3");
    assert_eq!(doc.fields["_allow_access_control"], json!([ANN]));
    assert_eq!(doc.fields["mailbox"], ANN);
    assert_eq!(doc.fields["from"], json!(["Amy Pond <amy@partner.test>"]));
    assert!(doc.timestamp.is_some());
    let stats = c.stats().snapshot();
    assert_eq!(stats.messages_fetched, 17);
    assert_eq!(stats.tokens_minted, 4, "one token per (subject, scope)");
}

#[tokio::test]
async fn spam_and_trash_toggle() {
    let (w, mut cfg, c) = setup().await;
    cfg.include_spam_and_trash = true;
    let run = collect(c.full_sync(&cfg, request(None, None, Value::Null))).await;
    assert_eq!(run.ids(), expected(&w, true));
    assert_eq!(run.ids().len(), 19);
}

#[tokio::test]
async fn advanced_rules_union_without_duplicates() {
    let (w, cfg, c) = setup().await;
    let rules = json!({"messages": ["from:amy", "label:Label_1", "from:amy pond"]});
    let run = collect(c.full_sync(&cfg, request(None, None, rules))).await;
    let want = w.lock().expect("lock").expected(false, |m| {
        fake::matches_query(m, "from:amy")
            || fake::matches_query(m, "label:Label_1")
            || fake::matches_query(m, "from:amy pond")
    });
    assert_eq!(run.ids(), want);
    assert_eq!(run.ids().len(), 12);
    assert_eq!(
        c.stats().snapshot().messages_fetched,
        12,
        "each message fetched once"
    );
}

#[tokio::test]
async fn incremental_applies_history() {
    let (w, cfg, c) = setup().await;
    let full = collect(c.full_sync(&cfg, request(None, None, Value::Null))).await;
    let cursor = full.complete.expect("complete").expect("cursor");
    let (new_id, deleted, trashed, untrashed) = {
        let mut w = w.lock().expect("lock");
        let new_id = w.deliver(ANN, "new@x.test", "fresh", &["INBOX"]);
        let ids: Vec<String> = w.mailboxes[ANN].messages.keys().cloned().collect();
        w.delete(ANN, &ids[0]);
        w.add_label(ANN, &ids[1], "TRASH");
        let bob_trashed = w.mailboxes[BOB]
            .messages
            .iter()
            .find(|(_, m)| m.labels.iter().any(|l| l == "TRASH"))
            .map(|(id, _)| id.clone())
            .expect("trashed");
        w.remove_label(BOB, &bob_trashed, "TRASH");
        (new_id, ids[0].clone(), ids[1].clone(), bob_trashed)
    };
    let run =
        collect(c.incremental_sync(&cfg, request(Some(cursor.clone()), None, Value::Null))).await;
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(
        run.ids(),
        vec![format!("{ANN}:{new_id}"), format!("{BOB}:{untrashed}")]
    );
    assert_eq!(
        run.deletes,
        vec![format!("{ANN}:{deleted}"), format!("{ANN}:{trashed}")]
    );
    assert!(run.partitions.is_empty(), "no mailbox was re-enumerated");
    let next = run.complete.expect("complete").expect("cursor");
    assert!(
        next.mailboxes[ANN].parse::<u64>().expect("num")
            > cursor.mailboxes[ANN].parse::<u64>().expect("num")
    );
    // Nothing changed since: nothing to do.
    let again =
        collect(c.incremental_sync(&cfg, request(Some(next.clone()), None, Value::Null))).await;
    assert!(again.upserts.is_empty() && again.deletes.is_empty());
    assert_eq!(again.complete.expect("complete").expect("cursor"), next);
}

#[tokio::test]
async fn expired_history_resyncs_only_that_mailbox() {
    let (w, cfg, c) = setup().await;
    let full = collect(c.full_sync(&cfg, request(None, None, Value::Null))).await;
    let cursor = full.complete.expect("complete").expect("cursor");
    {
        let mut w = w.lock().expect("lock");
        w.deliver(BOB, "late@x.test", "late", &["INBOX"]);
        let mb = w.mailboxes.get_mut(ANN).expect("ann");
        mb.floor = mb.history_id + 1;
        mb.history_id += 10;
    }
    let run = collect(c.incremental_sync(&cfg, request(Some(cursor), None, Value::Null))).await;
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(run.partitions, vec![ANN]);
    let ann_docs = run.ids().iter().filter(|id| id.starts_with(ANN)).count();
    assert_eq!(ann_docs, 12);
    assert_eq!(run.ids().iter().filter(|id| id.starts_with(BOB)).count(), 1);
    assert_eq!(c.stats().snapshot().history_resyncs, 1);
}

#[tokio::test]
async fn injected_faults_are_retried_and_counted() {
    let (w, cfg, c) = setup().await;
    w.lock().expect("lock").fault_every = Some(5);
    let run = collect(c.full_sync(&cfg, request(None, None, Value::Null))).await;
    assert!(run.error.is_none(), "{:?}", run.error);
    assert_eq!(run.ids(), expected(&w, false));
    assert!(run.complete.is_some());
    let stats = c.stats().snapshot();
    let served = w.lock().expect("lock").faults_served;
    assert!(served >= 4);
    assert_eq!(stats.api_retries, served);
    assert!(stats.rate_limited >= 1 && stats.server_errors >= 1);
}

#[tokio::test]
async fn revoked_delegation_skips_the_mailbox_and_keeps_its_documents() {
    let (w, cfg, c) = setup().await;
    w.lock().expect("lock").denied.insert(BOB.into());
    let run = collect(c.full_sync(&cfg, request(None, None, Value::Null))).await;
    match &run.error {
        Some(SourceError::Unauthorized(m)) => assert!(m.contains(BOB), "{m}"),
        other => panic!("expected an authorization error naming bob, got {other:?}"),
    }
    assert!(
        run.complete.is_none(),
        "no global Complete: bob's documents must not be deleted"
    );
    assert_eq!(run.partitions, vec![ADMIN, ANN]);
    assert!(run.ids().iter().all(|id| !id.starts_with(BOB)));
    assert_eq!(c.stats().snapshot().mailboxes_skipped, 1);
}

#[tokio::test]
async fn resumed_full_sync_skips_finished_mailboxes() {
    let (w, cfg, c) = setup().await;
    let hid = w.lock().expect("lock").mailboxes[ANN]
        .history_id
        .to_string();
    let checkpoint = GmailCheckpoint {
        finished: BTreeMap::from([(ANN.to_owned(), hid.clone())]),
    };
    let run = collect(c.full_sync(&cfg, request(None, Some(checkpoint), Value::Null))).await;
    assert_eq!(run.partitions, vec![ADMIN, BOB]);
    assert!(run.ids().iter().all(|id| !id.starts_with(ANN)));
    let cursor = run.complete.expect("complete").expect("cursor");
    assert_eq!(cursor.mailboxes[ANN], hid);
}

#[tokio::test]
async fn incremental_removes_users_gone_from_directory_and_adds_new_ones() {
    let (w, cfg, c) = setup().await;
    let full = collect(c.full_sync(&cfg, request(None, None, Value::Null))).await;
    let cursor = full.complete.expect("complete").expect("cursor");
    {
        let mut w = w.lock().expect("lock");
        w.users.retain(|(u, _)| u != BOB);
        w.add_user("eve@acme.test", true);
        w.deliver("eve@acme.test", "z@x.test", "hi eve", &["INBOX"]);
    }
    let run = collect(c.incremental_sync(&cfg, request(Some(cursor), None, Value::Null))).await;
    assert_eq!(
        run.partitions,
        vec![BOB.to_owned(), "eve@acme.test".to_owned()]
    );
    assert_eq!(run.ids().len(), 1);
    let next = run.complete.expect("complete").expect("cursor");
    assert!(next.mailboxes.contains_key("eve@acme.test") && !next.mailboxes.contains_key(BOB));
}

#[tokio::test]
async fn access_control_yields_one_identity_per_user() {
    let (_w, cfg, c) = setup().await;
    let docs: Vec<Document> = c
        .access_control(&cfg)
        .map(|r| r.expect("identity"))
        .collect()
        .await;
    let ids: Vec<&str> = docs.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, vec![ADMIN, ANN, BOB, NOMAIL]);
    assert_eq!(docs[1].fields["identity"]["email"], ANN);
    let mut off = cfg.clone();
    off.use_document_level_security = false;
    assert_eq!(c.access_control(&off).count().await, 0);
}

fn fields_of(e: SourceError) -> Vec<String> {
    match e {
        SourceError::Configuration(c) => c.errors.into_iter().map(|f| f.field).collect(),
        other => panic!("expected a configuration error, got {other:?}"),
    }
}

#[tokio::test]
async fn validation_names_the_fields_to_fix() {
    let (w, cfg, c) = setup().await;
    c.validate_config(&cfg).await.expect("valid");
    c.ping(&cfg).await.expect("ping");

    let mut bad_customer = cfg.clone();
    bad_customer.customer_id = "C999".into();
    let e = c
        .validate_config(&bad_customer)
        .await
        .expect_err("customer");
    assert_eq!(e.kind(), ErrorKind::Configuration);
    assert_eq!(fields_of(e), vec!["customer_id"]);

    let mut not_admin = cfg.clone();
    not_admin.subject = ANN.into();
    assert_eq!(
        fields_of(c.validate_config(&not_admin).await.expect_err("admin")),
        vec!["subject"]
    );

    w.lock().expect("lock").denied.insert(ADMIN.into());
    assert_eq!(
        fields_of(c.validate_config(&cfg).await.expect_err("denied")),
        vec!["service_account_credentials", "subject"]
    );

    let mut broken = cfg.clone();
    broken.service_account_credentials = connector_framework::Secret::new("{\"type\": \"user\"}");
    assert_eq!(
        fields_of(c.validate_config(&broken).await.expect_err("key")),
        vec!["service_account_credentials"]
    );
}

#[tokio::test]
async fn advanced_rule_validation() {
    let c = GmailConnector::new();
    assert!(
        c.validate_advanced_rules(&json!({"messages": ["before:2021/10/10", "from:amy"]}))
            .await
            .is_empty()
    );
    assert_eq!(
        c.validate_advanced_rules(&json!({"messages": []}))
            .await
            .len(),
        1
    );
}
