//! The Gmail connector through the framework's sync engine into the real Elasticsearch node,
//! against the Google Workspace simulator. Needs the test node
//! (`ES_URL` or `.state/es.json`).

use std::sync::{Arc, Mutex};

use connector_framework::{
    es::HttpMethod,
    job::{JobContext, JobCounters, JobOutcome, JobReporter, JobSpec, ReportError},
    model::{Enabled, Features, FilteringRules, JobType, Pipeline},
    source::DynConnector,
    sync::{SyncSettings, erase_with},
};
use connector_gmail::{ApiOptions, GmailConnector, retry::RetryPolicy};
use google_workspace_sim::{Mutation, QuotaConfig, SimConfig, Simulator};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Recorder {
    checkpoints: Mutex<Vec<Value>>,
}

#[async_trait::async_trait]
impl JobReporter for Recorder {
    fn counters(&self, _c: JobCounters) {}
    async fn checkpoint(&self, c: Value) -> Result<(), ReportError> {
        self.checkpoints.lock().expect("test step").push(c);
        Ok(())
    }
}

fn configuration(sim: &Simulator) -> Map<String, Value> {
    let mut m = Map::new();
    let mut put = |k: &str, v: Value| {
        m.insert(k.into(), json!({"value": v}));
    };
    put(
        "service_account_credentials",
        Value::from(sim.service_account_key_json()),
    );
    put("subject", Value::from(sim.admin_email()));
    put("customer_id", Value::from(sim.customer_id()));
    put("include_spam_and_trash", Value::from(false));
    put("include_full_raw_message", Value::from(false));
    put("use_document_level_security", Value::from(true));
    put("max_concurrent_mailboxes", Value::from(8));
    put("max_concurrent_requests", Value::from(64));
    put("google_api_base_url", Value::from(sim.base_url()));
    m
}

fn spec(job: JobType, index: &str, sim: &Simulator, cursor: Option<Value>) -> JobSpec {
    let mut f = Features {
        document_level_security: Enabled::ON,
        incremental_sync: Enabled::ON,
        ..Default::default()
    };
    f.sync_rules.advanced = Enabled::ON;
    JobSpec {
        job_id: format!("job-{}", index),
        connector_id: "gmail-1".into(),
        job_type: job,
        service_type: "gmail".into(),
        index_name: index.to_owned(),
        language: None,
        pipeline: Pipeline::default(),
        configuration: configuration(sim),
        filtering: FilteringRules::default(),
        features: f,
        sync_cursor: cursor,
        checkpoint: None,
    }
}

/// Every hit of `index` (refreshed first), with `_source` as asked.
async fn hits(es: &test_support::TestEs, index: &str, source: Value) -> Vec<Value> {
    let _ = es
        .client
        .send(HttpMethod::Post, &format!("/{index}/_refresh"), &[], None)
        .await;
    let r = es
        .client
        .send(
            HttpMethod::Post,
            &format!("/{index}/_search"),
            &[],
            Some(&json!({"size": 10000, "_source": source, "query": {"match_all": {}}})),
        )
        .await
        .expect("search");
    r.body["hits"]["hits"].as_array().expect("hits").clone()
}

async fn ids(es: &test_support::TestEs, index: &str) -> Vec<String> {
    let mut out: Vec<String> = hits(es, index, Value::Bool(false))
        .await
        .iter()
        .map(|h| h["_id"].as_str().expect("_id").to_owned())
        .collect();
    out.sort();
    out
}

fn truth(sim: &Simulator) -> Vec<String> {
    let mut v: Vec<String> = sim
        .expected_docs(false, &[])
        .expect("test step")
        .into_iter()
        .map(|d| format!("{}:{}", d.user.to_ascii_lowercase(), d.id))
        .collect();
    v.sort();
    v
}

/// A simulator, a fresh index on the node and the Gmail connector as the service erases it.
struct World {
    es: test_support::TestEs,
    index: String,
    sim: Simulator,
    connector: Arc<dyn DynConnector>,
}

impl World {
    async fn new(name: &str, users: usize, messages_per_user: usize, seed: u64) -> World {
        connector_framework::install_crypto_provider();
        let es = test_support::es().await;
        let index = es.unique_index(name);
        let sim = Simulator::start(SimConfig {
            users,
            messages_per_user,
            seed,
            quota: QuotaConfig::off(),
            ..Default::default()
        })
        .await
        .expect("simulator");
        let connector = erase_with(
            GmailConnector::with_options(ApiOptions {
                retry: RetryPolicy::fast(),
                ..ApiOptions::default()
            }),
            SyncSettings::default(),
        );
        World {
            es,
            index,
            sim,
            connector,
        }
    }

    /// Runs a job of `job_type` into `index` (the content index unless an ACL index is given).
    async fn run(&self, job_type: JobType, index: &str, cursor: Option<Value>) -> JobOutcome {
        let ctx = JobContext {
            es: self.es.client.clone(),
            cancel: CancellationToken::new(),
            reporter: Arc::new(Recorder::default()),
        };
        self.connector
            .run_job(spec(job_type, index, &self.sim, cursor), ctx)
            .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_then_incremental_into_elasticsearch() {
    let w = World::new("gmail", 5, 120, 3).await;
    let (es, index, sim) = (&w.es, w.index.as_str(), &w.sim);
    let out = w.run(JobType::Full, index, None).await;
    let JobOutcome::Completed { cursor, counters } = out else {
        panic!("{out:?}")
    };
    eprintln!("full: {counters:?}");
    assert_eq!(ids(es, index).await, truth(sim));

    let user = sim
        .users()
        .into_iter()
        .find(|u| !u.suspended && u.is_mailbox_setup && !u.is_admin)
        .expect("test step")
        .primary_email;
    let mids = sim.query(&user, None, false, &[]).expect("test step");
    sim.apply(Mutation::Trash {
        user: user.clone(),
        id: mids[0].clone(),
    })
    .expect("test step");
    sim.apply(Mutation::Delete {
        user: user.clone(),
        id: mids[1].clone(),
    })
    .expect("test step");
    let out = w.run(JobType::Incremental, index, cursor).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    eprintln!("incremental: {counters:?}");
    assert_eq!(ids(es, index).await, truth(sim));

    // A label change keeps internalDate but must reach the index even with skip_unchanged on
    // (the default): the change marker in `_timestamp` differs.
    let cursor = match w.run(JobType::Incremental, index, None).await {
        JobOutcome::Completed { cursor, .. } => cursor,
        other => panic!("{other:?}"),
    };
    sim.apply(Mutation::Modify {
        user: user.clone(),
        id: mids[2].clone(),
        add: vec!["STARRED".into()],
        remove: vec![],
    })
    .expect("modify");
    let out = w.run(JobType::Incremental, index, cursor).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(counters.indexed_document_count, 1, "{counters:?}");
    let doc_id = format!("{}:{}", user.to_ascii_lowercase(), mids[2]);
    let r = es
        .client
        .send(
            HttpMethod::Get,
            &format!("/{index}/_doc/{doc_id}"),
            &[],
            None,
        )
        .await
        .expect("get");
    let labels = r.body["_source"]["labels"]
        .as_array()
        .expect("labels")
        .clone();
    assert!(labels.contains(&Value::from("STARRED")), "{labels:?}");

    let acl = format!(".search-acl-filter-{index}");
    es.track(&acl);
    let out = w.run(JobType::AccessControl, &acl, None).await;
    assert!(matches!(out, JobOutcome::Completed { .. }), "{out:?}");
    assert_eq!(ids(es, &acl).await.len(), sim.users().len());
}

/// `_id` → sorted labels of every document of `index`.
async fn labels_by_id(
    es: &test_support::TestEs,
    index: &str,
) -> std::collections::BTreeMap<String, Vec<String>> {
    hits(es, index, json!(["labels"]))
        .await
        .iter()
        .map(|h| {
            let mut labels: Vec<String> = h["_source"]["labels"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|l| l.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            labels.sort();
            (h["_id"].as_str().expect("_id").to_owned(), labels)
        })
        .collect()
}

/// Ground truth in the same shape: every message outside spam and trash, with its labels.
fn truth_labels(sim: &Simulator) -> std::collections::BTreeMap<String, Vec<String>> {
    let mut out = std::collections::BTreeMap::new();
    for u in sim.users() {
        if u.suspended || !u.is_mailbox_setup {
            continue;
        }
        for m in sim.messages(&u.primary_email).expect("messages") {
            if m.label_ids.iter().any(|l| l == "SPAM" || l == "TRASH") {
                continue;
            }
            let mut labels = m.label_ids.clone();
            labels.sort();
            out.insert(
                format!("{}:{}", u.primary_email.to_ascii_lowercase(), m.id),
                labels,
            );
        }
    }
    out
}

/// Exactly 100 random mutations (seeded: new mail, permanent deletes, trash and untrash, spam,
/// label changes), then one incremental sync through the framework into Elasticsearch: the
/// index holds exactly the messages outside spam and trash, each with its current labels.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_after_100_random_mutations_equals_ground_truth() {
    use rand::{Rng as _, SeedableRng as _, seq::IndexedRandom as _};

    let w = World::new("gmail-mutations", 6, 150, 29).await;
    let (es, index, sim) = (&w.es, w.index.as_str(), &w.sim);
    let out = w.run(JobType::Full, index, None).await;
    let JobOutcome::Completed { cursor, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(labels_by_id(es, index).await, truth_labels(sim));

    let users: Vec<String> = sim
        .users()
        .into_iter()
        .filter(|u| !u.suspended && u.is_mailbox_setup)
        .map(|u| u.primary_email)
        .collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x6d61696c);
    let mut applied = std::collections::BTreeMap::<&str, usize>::new();
    let mut n = 0;
    while n < 100 {
        let user = users.choose(&mut rng).expect("users").clone();
        let all = sim.messages(&user).expect("messages");
        let Some(m) = all.choose(&mut rng) else {
            continue;
        };
        let id = m.id.clone();
        let trashed: Vec<&String> = all
            .iter()
            .filter(|m| m.label_ids.iter().any(|l| l == "TRASH"))
            .map(|m| &m.id)
            .collect();
        let untrash = rng
            .random_bool(0.5)
            .then(|| trashed.choose(&mut rng))
            .flatten();
        let (kind, mutation) = match rng.random_range(0..7) {
            0 => (
                "add",
                Mutation::AddMessage {
                    user,
                    labels: vec![
                        if rng.random_bool(0.8) {
                            "INBOX"
                        } else {
                            "SPAM"
                        }
                        .into(),
                    ],
                    internal_date: None,
                    thread_id: None,
                    message: Default::default(),
                },
            ),
            1 => ("delete", Mutation::Delete { user, id }),
            2 if untrash.is_some() => (
                "untrash",
                Mutation::Untrash {
                    user,
                    id: untrash.map(|id| (*id).clone()).unwrap_or(id),
                },
            ),
            2 => ("trash", Mutation::Trash { user, id }),
            k => {
                // Label changes: (kind, label added, label removed).
                const CHANGES: [(&str, &str, &str); 4] = [
                    ("spam", "SPAM", "INBOX"),
                    ("unspam", "INBOX", "SPAM"),
                    ("star", "STARRED", "UNREAD"),
                    ("unstar", "UNREAD", "STARRED"),
                ];
                let (kind, add, remove) = CHANGES[(k - 3) % CHANGES.len()];
                (
                    kind,
                    Mutation::Modify {
                        user,
                        id,
                        add: vec![add.into()],
                        remove: vec![remove.into()],
                    },
                )
            }
        };
        sim.apply(mutation).expect("mutation");
        *applied.entry(kind).or_default() += 1;
        n += 1;
    }
    eprintln!("mutations: {applied:?}");
    assert_eq!(applied.values().sum::<usize>(), 100);
    // Every kind was drawn, so each history record type reached the sync.
    assert_eq!(applied.len(), 8, "{applied:?}");

    let out = w.run(JobType::Incremental, index, cursor).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    eprintln!("incremental: {counters:?}");
    // Only changed messages were written: far fewer than the whole corpus.
    assert!(
        counters.indexed_document_count <= 100,
        "{counters:?} for 100 mutations"
    );
    assert_eq!(labels_by_id(es, index).await, truth_labels(sim));
}
