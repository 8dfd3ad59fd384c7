//! End-to-end sync streams against the Google Workspace simulator, compared with its ground
//! truth.

mod common;

use std::collections::{BTreeMap, BTreeSet};

use connector_framework::{
    Classify as _, ErrorKind,
    connector::{Connector, SyncEvent, SyncItem, SyncRequest},
    source::SourceError,
};
use connector_gmail::{
    ApiOptions, GmailCheckpoint, GmailConfig, GmailConnector, GmailCursor, retry::RetryPolicy,
};
use futures::StreamExt as _;
use google_workspace_sim::{
    CustomMessage, FaultRule, Mutation, QuotaConfig, SCOPE_DIRECTORY_READONLY,
    SCOPE_GMAIL_READONLY, SimConfig, Simulator,
};
use serde_json::{Value, json};

struct Env {
    sim: Simulator,
    cfg: GmailConfig,
    connector: GmailConnector,
}

async fn env(sim_cfg: SimConfig) -> Env {
    connector_framework::install_crypto_provider();
    let sim = Simulator::start(sim_cfg).await.expect("simulator");
    let mut cfg = GmailConfig::new(
        sim.service_account_key_json(),
        &sim.admin_email(),
        &sim.customer_id(),
    );
    cfg.google_api_base_url = sim.base_url();
    let connector = GmailConnector::with_options(ApiOptions {
        retry: RetryPolicy {
            max_attempts: 10,
            ..RetryPolicy::fast()
        },
        ..ApiOptions::default()
    });
    Env {
        sim,
        cfg,
        connector,
    }
}

impl Env {
    /// A full sync of `cfg` with advanced `rules` into a fresh stand-in index.
    async fn full(&self, cfg: &GmailConfig, rules: Value) -> (Index, Outcome) {
        let mut index = Index::default();
        let out = index
            .apply(self.connector.full_sync(cfg, request(None, rules)), true)
            .await;
        (index, out)
    }
}

fn small() -> SimConfig {
    SimConfig {
        users: 6,
        messages_per_user: 80,
        seed: 11,
        quota: QuotaConfig::off(),
        ..Default::default()
    }
}

fn request(cursor: Option<GmailCursor>, rules: Value) -> SyncRequest<GmailCursor, GmailCheckpoint> {
    common::request(cursor, None, rules)
}

/// A stand-in index: applies a sync stream like the framework does.
#[derive(Default, Debug, Clone)]
struct Index {
    docs: BTreeMap<String, String>, // _id -> mailbox
}

#[derive(Debug)]
struct Outcome {
    cursor: Option<GmailCursor>,
    completed: bool,
    partitions: Vec<String>,
    upserts: usize,
    error: Option<SourceError>,
}

impl Index {
    async fn apply(
        &mut self,
        mut s: futures::stream::BoxStream<
            '_,
            Result<SyncEvent<GmailCursor, GmailCheckpoint>, SourceError>,
        >,
        full: bool,
    ) -> Outcome {
        let mut seen: BTreeSet<String> = BTreeSet::new();
        let mut out = Outcome {
            cursor: None,
            completed: false,
            partitions: Vec::new(),
            upserts: 0,
            error: None,
        };
        while let Some(ev) = s.next().await {
            match ev {
                Ok(SyncEvent::Item(SyncItem::Encoded(d))) => {
                    let d = common::decoded(&d);
                    let mb = d.fields["mailbox"].as_str().expect("mailbox").to_owned();
                    assert_eq!(d.fields["_allow_access_control"], json!([mb.clone()]));
                    seen.insert(d.id.clone());
                    self.docs.insert(d.id, mb);
                    out.upserts += 1;
                }
                Ok(SyncEvent::Item(SyncItem::Upsert(d))) => {
                    panic!(
                        "the Gmail connector encodes its documents; got a plain upsert of {}",
                        d.id
                    )
                }
                Ok(SyncEvent::Item(SyncItem::Delete { id })) => {
                    self.docs.remove(&id);
                }
                Ok(SyncEvent::Item(SyncItem::PartitionComplete { value, .. })) => {
                    let mb = value.as_str().expect("mailbox").to_owned();
                    self.docs.retain(|id, m| *m != mb || seen.contains(id));
                    out.partitions.push(mb);
                }
                Ok(SyncEvent::Item(SyncItem::Checkpoint(_))) => {}
                Ok(SyncEvent::Complete(c)) => {
                    if full {
                        self.docs.retain(|id, _| seen.contains(id));
                    }
                    out.completed = true;
                    out.cursor = c.cursor;
                }
                Err(e) => {
                    out.error = Some(e);
                    break;
                }
            }
        }
        out.partitions.sort();
        out
    }

    fn ids(&self) -> BTreeSet<String> {
        self.docs.keys().cloned().collect()
    }
}

fn truth(sim: &Simulator, include: bool, rules: &[&str]) -> BTreeSet<String> {
    let rules: Vec<String> = rules.iter().map(|s| s.to_string()).collect();
    sim.expected_docs(include, &rules)
        .expect("expected docs")
        .into_iter()
        .map(|d| format!("{}:{}", d.user.to_ascii_lowercase(), d.id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_equals_ground_truth_with_and_without_spam_and_trash() {
    let e = env(small()).await;
    let (index, out) = e.full(&e.cfg, Value::Null).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(out.completed);
    let want = truth(&e.sim, false, &[]);
    assert!(!want.is_empty());
    assert_eq!(index.ids(), want);

    let mut with = e.cfg.clone();
    with.include_spam_and_trash = true;
    let (index2, out) = e.full(&with, Value::Null).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    let want_all = truth(&e.sim, true, &[]);
    assert!(want_all.len() > want.len());
    assert_eq!(index2.ids(), want_all);

    // Tokens are cached: one per (subject, scope).
    let stats = e.sim.stats();
    assert!(
        stats.tokens_minted.values().all(|&n| n <= 4),
        "{:?}",
        stats.tokens_minted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn advanced_rules_equal_the_query_oracle() {
    let e = env(small()).await;
    let rules = ["before:2021/10/10", "from:amy"];
    let (index, out) = e.full(&e.cfg, json!({"messages": rules})).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(index.ids(), truth(&e.sim, false, &rules));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_after_mutations_and_expired_history() {
    let e = env(small()).await;
    let (mut index, out) = e.full(&e.cfg, Value::Null).await;
    let cursor = out.cursor.expect("cursor");
    let users: Vec<String> = cursor.mailboxes.keys().cloned().collect();
    let (u1, u2) = (&users[0], &users[1]);
    let ids1: Vec<String> = e.sim.query(u1, None, false, &[]).expect("query");
    let ids2: Vec<String> = e.sim.query(u2, None, false, &[]).expect("query");
    for m in [
        Mutation::AddMessage {
            user: u1.clone(),
            labels: vec!["INBOX".into()],
            internal_date: None,
            thread_id: None,
            message: CustomMessage {
                subject: Some("fresh".into()),
                ..Default::default()
            },
        },
        Mutation::Delete {
            user: u1.clone(),
            id: ids1[0].clone(),
        },
        Mutation::Trash {
            user: u1.clone(),
            id: ids1[1].clone(),
        },
        Mutation::Modify {
            user: u2.clone(),
            id: ids2[0].clone(),
            add: vec!["SPAM".into()],
            remove: vec![],
        },
        Mutation::Trash {
            user: u2.clone(),
            id: ids2[1].clone(),
        },
        Mutation::Untrash {
            user: u2.clone(),
            id: ids2[1].clone(),
        },
    ] {
        e.sim.apply(m).expect("mutation");
    }
    let out = index
        .apply(
            e.connector
                .incremental_sync(&e.cfg, request(Some(cursor.clone()), Value::Null)),
            false,
        )
        .await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(out.completed);
    assert!(out.partitions.is_empty());
    assert!(
        out.upserts <= 3,
        "only changed messages are fetched: {}",
        out.upserts
    );
    assert_eq!(index.ids(), truth(&e.sim, false, &[]));
    let cursor = out.cursor.expect("cursor");

    // Expired history of one mailbox: that mailbox (only) is re-enumerated.
    e.sim.expire_history(u2, None).expect("expire");
    e.sim
        .apply(Mutation::Delete {
            user: u2.clone(),
            id: ids2[2].clone(),
        })
        .expect("delete");
    e.sim.expire_history(u2, None).expect("expire");
    let out = index
        .apply(
            e.connector
                .incremental_sync(&e.cfg, request(Some(cursor), Value::Null)),
            false,
        )
        .await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(out.partitions, vec![u2.clone()]);
    assert_eq!(index.ids(), truth(&e.sim, false, &[]));
    assert_eq!(e.connector.stats().snapshot().history_resyncs, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_faults_still_converge() {
    let e = env(SimConfig {
        users: 4,
        messages_per_user: 60,
        ..small()
    })
    .await;
    e.sim.set_faults(vec![
        FaultRule {
            status: 503,
            probability: Some(0.1),
            ..Default::default()
        },
        FaultRule {
            status: 429,
            probability: Some(0.1),
            ..Default::default()
        },
    ]);
    // In batches of 4: faults hit batch requests and messages inside them alike.
    let mut cfg = e.cfg.clone();
    cfg.messages_per_batch_request = 4;
    let (index, out) = e.full(&cfg, Value::Null).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(out.completed);
    assert_eq!(index.ids(), truth(&e.sim, false, &[]));
    assert!(e.sim.stats().batch_calls > 0);
    let hits: u64 = e.sim.faults().iter().map(|f| f.hits).sum();
    let stats = e.connector.stats().snapshot();
    assert!(hits > 10, "faults served: {hits}");
    assert_eq!(stats.api_retries + stats.token_retries, hits);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_quota_is_respected() {
    let e = env(SimConfig {
        users: 3,
        messages_per_user: 150,
        quota: QuotaConfig::default(),
        ..small()
    })
    .await;
    let (index, out) = e.full(&e.cfg, Value::Null).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(index.ids(), truth(&e.sim, false, &[]));
    let stats = e.sim.stats();
    assert!(
        stats.peak_concurrency.values().all(|&p| p <= 10),
        "{:?}",
        stats.peak_concurrency
    );
}

fn fields(e: SourceError) -> Vec<String> {
    assert_eq!(e.kind(), ErrorKind::Configuration, "{e:?}");
    match e {
        SourceError::Configuration(c) => c.errors.into_iter().map(|f| f.field).collect(),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_delegation_and_wrong_key_are_field_errors() {
    let e = env(small()).await;
    e.connector.validate_config(&e.cfg).await.expect("valid");

    // Directory scope revoked.
    e.sim
        .set_delegation(&e.sim.client_id(), vec![SCOPE_GMAIL_READONLY.to_owned()]);
    let err = e
        .connector
        .validate_config(&e.cfg)
        .await
        .expect_err("revoked");
    assert!(fields(err).contains(&"service_account_credentials".to_owned()));

    // Gmail scope revoked: the message names the Gmail scope.
    e.sim.set_delegation(
        &e.sim.client_id(),
        vec![SCOPE_DIRECTORY_READONLY.to_owned()],
    );
    match e.connector.validate_config(&e.cfg).await {
        Err(SourceError::Configuration(c)) => {
            assert_eq!(c.errors.len(), 1, "{c:?}");
            assert_eq!(c.errors[0].field, "service_account_credentials");
            assert!(c.errors[0].message.contains(SCOPE_GMAIL_READONLY), "{c:?}");
        }
        other => panic!("expected a configuration error, got {other:?}"),
    }

    // A key the simulator does not know.
    let mut key: Value = serde_json::from_str(&e.sim.service_account_key_json()).expect("key json");
    key["private_key"] = Value::from(include_str!("data/test-key.pem"));
    let mut wrong = e.cfg.clone();
    wrong.service_account_credentials = connector_framework::Secret::new(key.to_string());
    let err = e
        .connector
        .validate_config(&wrong)
        .await
        .expect_err("wrong key");
    assert!(fields(err).contains(&"service_account_credentials".to_owned()));
}

/// Throughput with the simulator's real quota engine (250 units/s/user, 10 concurrent per user).
/// `cargo test -p connector-gmail --features simulator-tests --test simulator -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn throughput_with_real_quota() {
    let e = env(SimConfig {
        users: 8,
        messages_per_user: 400,
        quota: QuotaConfig::default(),
        suspended_every: 0,
        ..small()
    })
    .await;
    let started = std::time::Instant::now();
    let (index, out) = e.full(&e.cfg, Value::Null).await;
    let secs = started.elapsed().as_secs_f64();
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(index.ids(), truth(&e.sim, false, &[]));
    let n = index.ids().len();
    let stats = e.connector.stats().snapshot();
    eprintln!(
        "{n} messages in {secs:.2}s = {:.0} msg/s; api calls {}, retries {}, rate limited {}, peak concurrency {:?}",
        n as f64 / secs,
        stats.api_calls,
        stats.api_retries,
        stats.rate_limited,
        e.sim.stats().peak_concurrency
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_reused_across_jobs_and_refreshed_when_revoked() {
    let e = env(small()).await;
    let (mut index, out) = e.full(&e.cfg, Value::Null).await;
    let cursor = out.cursor.expect("cursor");
    let minted = e.connector.stats().snapshot().tokens_minted;
    // A second job reuses the cached tokens.
    let out = index
        .apply(
            e.connector
                .incremental_sync(&e.cfg, request(Some(cursor.clone()), Value::Null)),
            false,
        )
        .await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(e.connector.stats().snapshot().tokens_minted, minted);
    // Revoked tokens answer 401: the connector mints new ones and carries on.
    assert!(e.sim.revoke_tokens(None) > 0);
    let out = index
        .apply(
            e.connector
                .incremental_sync(&e.cfg, request(Some(cursor), Value::Null)),
            false,
        )
        .await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(out.completed);
    assert!(e.connector.stats().snapshot().tokens_minted > minted);
    assert_eq!(index.ids(), truth(&e.sim, false, &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn suspended_and_mailboxless_users_are_not_synced_and_the_sync_completes() {
    let e = env(SimConfig {
        users: 7,
        messages_per_user: 40,
        suspended_every: 3,
        users_without_mailbox: vec![4],
        ..small()
    })
    .await;
    let users = e.sim.users();
    assert!(users.iter().any(|u| u.suspended));
    assert!(users.iter().any(|u| !u.is_mailbox_setup));
    let (index, out) = e.full(&e.cfg, Value::Null).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(out.completed);
    assert_eq!(index.ids(), truth(&e.sim, false, &[]));
    let synced = users
        .iter()
        .filter(|u| !u.suspended && u.is_mailbox_setup)
        .count();
    assert_eq!(out.partitions.len(), synced);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_tokens_are_refreshed_mid_sync() {
    let e = env(SimConfig {
        users: 3,
        messages_per_user: 150,
        suspended_every: 0,
        token_lifetime_secs: 2,
        quota: QuotaConfig::default(),
        ..small()
    })
    .await;
    let started = std::time::Instant::now();
    let (index, out) = e.full(&e.cfg, Value::Null).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert_eq!(index.ids(), truth(&e.sim, false, &[]));
    let minted = e.connector.stats().snapshot().tokens_minted;
    // 4 (subject, scope) pairs; a sync longer than the lifetime must have refreshed some.
    if started.elapsed().as_secs() >= 2 {
        assert!(minted > 4, "minted {minted}");
    }
}

/// Every document of a full sync of `cfg`: `_id` → (fields, `_timestamp`).
async fn documents(e: &Env, cfg: &GmailConfig) -> BTreeMap<String, Value> {
    let mut stream = e.connector.full_sync(cfg, request(None, Value::Null));
    let mut docs = BTreeMap::new();
    while let Some(event) = stream.next().await {
        match event.expect("sync event") {
            SyncEvent::Item(SyncItem::Encoded(d)) => {
                let d = common::decoded(&d);
                docs.insert(d.id, json!({"fields": d.fields, "timestamp": d.timestamp}));
            }
            SyncEvent::Complete(_) => return docs,
            _ => {}
        }
    }
    panic!("the sync ended without completing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_and_single_requests_give_the_same_documents() {
    let e = env(small()).await;
    let mut single = e.cfg.clone();
    single.messages_per_batch_request = 1;
    let one_by_one = documents(&e, &single).await;
    let before = e.sim.stats();
    assert_eq!(before.batch_calls, 0, "one message per request: no batch");

    let mut batched = e.cfg.clone();
    batched.messages_per_batch_request = 8;
    // Fewer requests allowed in flight than messages in a batch: a batch takes the whole cap.
    batched.max_concurrent_requests = 3;
    let in_batches =
        tokio::time::timeout(std::time::Duration::from_secs(60), documents(&e, &batched))
            .await
            .expect("a batch larger than the request cap must not wait forever");
    let after = e.sim.stats();
    let gets = |s: &google_workspace_sim::Stats| {
        s.methods
            .get("gmail.users.messages.get")
            .map_or(0, |m| m.requests)
    };
    assert_eq!(in_batches.len(), truth(&e.sim, false, &[]).len());
    assert_eq!(one_by_one, in_batches);
    // The second sync fetched its messages in batches of at most 8 (a lone message left at
    // the end of a listing goes as a plain request).
    let batched_gets = gets(&after) - gets(&before);
    assert!(
        after.batch_parts >= batched_gets * 9 / 10,
        "{} of {batched_gets} messages in batches",
        after.batch_parts
    );
    assert_eq!(after.batch_max_parts, 8);
    assert!(
        after.batch_calls * 7 <= batched_gets,
        "{} batches for {batched_gets} messages",
        after.batch_calls
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailboxes_with_a_smaller_quota_slow_down_and_complete() {
    // Each user's quota is 40 % of Gmail's standard one (100 units/s: 20 messages.get/s),
    // e.g. shared with other applications: the connector paced for 245 units/s gets repeated
    // 429s, cuts those mailboxes' pace and still syncs everything.
    let e = env(SimConfig {
        users: 2,
        messages_per_user: 60,
        quota: QuotaConfig {
            user_units: 100,
            ..QuotaConfig::default()
        },
        suspended_every: 0,
        ..small()
    })
    .await;
    let (index, out) = e.full(&e.cfg, Value::Null).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(out.completed);
    assert_eq!(index.ids(), truth(&e.sim, false, &[]));
    let stats = e.connector.stats().snapshot();
    assert!(stats.rate_limited > 0, "the smaller quota was never hit");
    assert!(
        stats.pace_reductions > 0,
        "{} rate limits and the pace never slowed",
        stats.rate_limited
    );
    assert!(stats.pace_reductions <= stats.rate_limited);
    assert_eq!(stats.messages_failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_429s_inside_batches_shrink_the_batches_and_the_sync_completes() {
    // Gmail runs a batch's calls concurrently and refuses more than a few per user at once:
    // here 3, against batches of 8 whose calls overlap (each takes 20 ms).
    const USERS: usize = 3;
    const MESSAGES: usize = 80;
    let e = env(SimConfig {
        users: USERS,
        messages_per_user: MESSAGES,
        quota: QuotaConfig {
            max_concurrent_per_user: 3,
            ..QuotaConfig::default()
        },
        suspended_every: 0,
        ..small()
    })
    .await;
    e.sim.set_faults(vec![FaultRule {
        method: Some("gmail.users.messages.get".into()),
        status: 0,
        delay_ms: 20,
        ..Default::default()
    }]);
    let mut cfg = e.cfg.clone();
    cfg.messages_per_batch_request = 8;
    let (index, out) = e.full(&cfg, Value::Null).await;
    assert!(out.error.is_none(), "{:?}", out.error);
    assert!(out.completed);
    assert_eq!(index.ids(), truth(&e.sim, false, &[]));
    let sim = e.sim.stats();
    let rejected: u64 = sim.methods.values().map(|m| m.concurrency_rejected).sum();
    assert!(sim.batch_calls > 0);
    assert!(rejected > 0, "no call of a batch was refused");
    assert!(sim.peak_concurrency.values().all(|&p| p <= 3));
    let stats = e.connector.stats().snapshot();
    assert_eq!(stats.rate_limited, rejected);
    assert!(stats.api_retries >= rejected);
    assert_eq!(stats.messages_failed, 0);
    // Batches of 8 against a cap of 3 would each have 5 calls refused: at least 5 per 8
    // messages without adapting (measured: 89 for 120 messages). Repeated refusals halve each
    // mailbox's window, and so its batches, to what Gmail accepts.
    let unadapted = (index.ids().len() as u64 / 8) * 5;
    assert!(
        stats.pace_reductions >= USERS as u64,
        "{} windows cut for {USERS} mailboxes",
        stats.pace_reductions
    );
    assert!(
        rejected * 2 < unadapted,
        "{rejected} calls refused; batches of 8 would have had at least {unadapted}"
    );
    assert!(
        sim.batch_parts < sim.batch_calls * 8,
        "no batch was smaller than 8 ({} parts in {} batches)",
        sim.batch_parts,
        sim.batch_calls
    );
}
