//! Sync engine against the real node: full syncs with deletions, failures, sync rules,
//! incremental syncs with checkpoints and resume, pipelines, index preparation.

#![allow(clippy::unwrap_used)]

#[path = "sync_support/mod.rs"]
mod common;

use std::sync::Arc;

use common::{Recorder, context, spec};
use connector_framework::{
    es::HttpMethod,
    job::{JobOutcome, JobSpec},
    model::{JobType, ValidationState},
    source::DynConnector,
    sync::{GENERATION_FIELD, SyncSettings, erase_with},
    testing::{EncodeBy, GeneratorConfig, GeneratorConnector, doc_id},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

fn connector() -> Arc<dyn DynConnector> {
    connector_with(false)
}

fn connector_with(skip_unchanged: bool) -> Arc<dyn DynConnector> {
    let mut settings = SyncSettings {
        skip_unchanged,
        ..Default::default()
    };
    settings.bulk.retry_interval = std::time::Duration::from_millis(50);
    erase_with(GeneratorConnector::new(), settings)
}

async fn run(
    es: &test_support::TestEs,
    c: &Arc<dyn DynConnector>,
    spec: JobSpec,
) -> (JobOutcome, Arc<Recorder>) {
    let rec = Arc::new(Recorder::default());
    let out = c
        .run_job(
            spec,
            context(&es.client, rec.clone(), CancellationToken::new()),
        )
        .await;
    (out, rec)
}

async fn exists(es: &test_support::TestEs, index: &str, id: &str) -> bool {
    let r = es
        .client
        .send(HttpMethod::Get, &format!("/{index}/_doc/{id}"), &[], None)
        .await
        .unwrap();
    r.status == 200
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_sync_deletes_only_after_a_complete_enumeration() {
    let es = test_support::es().await;
    let index = es.unique_index("full");
    let c = connector();
    let mut cfg = GeneratorConfig {
        count: 20_000,
        doc_size: 64,
        ..Default::default()
    };

    // 1. Initial full sync.
    let (out, rec) = run(&es, &c, spec(JobType::Full, &index, &cfg)).await;
    let JobOutcome::Completed { counters, cursor } = out else {
        panic!("{out:?}")
    };
    assert_eq!(counters.indexed_document_count, 20_000);
    assert_eq!(counters.deleted_document_count, 0);
    assert!(counters.indexed_document_volume_bytes > 20_000 * 64);
    assert_eq!(cursor, Some(json!({"revision": 0})));
    assert_eq!(es.count(&index).await, 20_000);
    assert!(!rec.counters.lock().unwrap().is_empty());

    // 2. The source dropped 1,000 documents: exactly those are deleted.
    cfg.drop_from = 5_000;
    cfg.drop_count = 1_000;
    cfg.revision = 1;
    cfg.changed_every = 190;
    let (out, _) = run(&es, &c, spec(JobType::Full, &index, &cfg)).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(counters.deleted_document_count, 1_000);
    assert_eq!(counters.indexed_document_count, 19_000);
    assert_eq!(es.count(&index).await, 19_000);
    assert!(!exists(&es, &index, &doc_id(5_500)).await);
    assert!(exists(&es, &index, &doc_id(6_000)).await);
    assert!(exists(&es, &index, &doc_id(4_999)).await);

    // 3. A sync whose source fails half-way deletes nothing and fails with the message.
    let failing = GeneratorConfig {
        drop_from: 0,
        drop_count: 15_000,
        fail_after: Some(2_000),
        ..cfg.clone()
    };
    let (out, _) = run(&es, &c, spec(JobType::Full, &index, &failing)).await;
    let JobOutcome::Failed { error, counters } = out else {
        panic!("{out:?}")
    };
    assert!(
        error.contains("generator failure injected after 2000"),
        "{error}"
    );
    assert_eq!(counters.deleted_document_count, 0);
    assert_eq!(es.count(&index).await, 19_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_documents_are_only_touched() {
    let es = test_support::es().await;
    let index = es.unique_index("unchanged");
    let c = connector_with(true);
    let mut cfg = GeneratorConfig {
        count: 3_000,
        doc_size: 64,
        ..Default::default()
    };
    let (out, _) = run(&es, &c, spec(JobType::Full, &index, &cfg)).await;
    assert!(matches!(out, JobOutcome::Completed { .. }), "{out:?}");
    cfg.drop_from = 1_000;
    cfg.drop_count = 200;
    cfg.revision = 1;
    cfg.changed_every = 7;
    let (out, _) = run(&es, &c, spec(JobType::Full, &index, &cfg)).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    let changed = (0..3_000u64)
        .filter(|i| i % 7 == 0 && !cfg.is_dropped(*i))
        .count() as u64;
    assert_eq!(counters.indexed_document_count, changed);
    assert_eq!(counters.deleted_document_count, 200);
    assert_eq!(es.count(&index).await, 2_800);
    // Unchanged documents kept their content; changed ones carry the new revision.
    let d = es.doc(&index, &doc_id(7)).await;
    assert_eq!(d["_source"]["revision"], 1);
    let d = es.doc(&index, &doc_id(8)).await;
    assert_eq!(d["_source"]["revision"], 0);
    assert!(d["_source"]["body"].as_str().unwrap().len() >= 64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_sync_rules_filter_upserts() {
    let es = test_support::es().await;
    let c = connector();
    // The same outcome whether the engine or the source encodes the documents.
    for encode in [EncodeBy::Engine, EncodeBy::Source] {
        let index = es.unique_index("rules");
        let cfg = GeneratorConfig {
            count: 1_000,
            doc_size: 32,
            encode,
            ..Default::default()
        };
        let mut s = spec(JobType::Full, &index, &cfg);
        s.features = common::features(false, true);
        s.filtering.rules = vec![
            json!({"id": "r1", "order": 1, "policy": "exclude", "field": "title", "rule": "ends_with", "value": "alpha"}),
            json!({"id": "DEFAULT", "order": 0, "policy": "include", "field": "_", "rule": "regex", "value": ".*"}),
        ];
        let (out, _) = run(&es, &c, s.clone()).await;
        let JobOutcome::Completed { counters, .. } = out else {
            panic!("{encode:?}: {out:?}")
        };
        // titles end with WORDS[i % 16]; "alpha" is i % 16 == 0 → 63 excluded.
        assert_eq!(counters.indexed_document_count, 937, "{encode:?}");
        assert_eq!(es.count(&index).await, 937, "{encode:?}");
        let d = es.doc(&index, &doc_id(1)).await;
        assert_eq!(d["_source"]["id"], doc_id(1), "{encode:?}");
        assert!(
            d["_source"][GENERATION_FIELD].as_u64() >= Some(1),
            "{encode:?}"
        );

        // Invalid active rules fail the job.
        s.filtering.validation.state = ValidationState::Invalid;
        let (out, _) = run(&es, &c, s).await;
        assert!(
            matches!(&out, JobOutcome::Failed { error, .. } if error.starts_with("Filtering in state invalid")),
            "{out:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn documents_encoded_for_another_job_fail_the_job() {
    let es = test_support::es().await;
    let index = es.unique_index("foreign");
    let cfg = GeneratorConfig {
        count: 10,
        encode: EncodeBy::ForeignEncoder,
        ..Default::default()
    };
    let (out, _) = run(&es, &connector(), spec(JobType::Full, &index, &cfg)).await;
    assert!(
        matches!(&out, JobOutcome::Failed { error, .. } if error.contains("encoded for another job")),
        "{out:?}"
    );
    assert_eq!(es.count(&index).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_resumes_from_checkpoint_and_returns_cursor_after_ack() {
    let es = test_support::es().await;
    let index = es.unique_index("incr");
    let c = connector();
    let cfg = GeneratorConfig {
        count: 6_000,
        doc_size: 64,
        checkpoint_every: 500,
        ..Default::default()
    };

    // Run 1: cancelled after the 3rd persisted checkpoint.
    let cancel = CancellationToken::new();
    let rec = Arc::new(Recorder {
        cancel_after: Some((3, cancel.clone())),
        ..Default::default()
    });
    let out = c
        .run_job(
            spec(JobType::Incremental, &index, &cfg),
            context(&es.client, rec.clone(), cancel),
        )
        .await;
    assert!(matches!(out, JobOutcome::Interrupted { .. }), "{out:?}");
    let checkpoint = rec.last_checkpoint().expect("a checkpoint was saved");
    let next = checkpoint["checkpoint"]["next"].as_u64().unwrap();
    assert!((1_500..6_000).contains(&next), "{checkpoint}");
    // Every document the checkpoint covers is in the index.
    let in_index = es.count(&index).await;
    assert!(in_index >= next, "{in_index} < {next}");

    // Run 2: resumes from the checkpoint.
    let mut s = spec(JobType::Incremental, &index, &cfg);
    s.checkpoint = Some(checkpoint.clone());
    let (out, rec2) = run(&es, &c, s).await;
    let JobOutcome::Completed { counters, cursor } = out else {
        panic!("{out:?}")
    };
    // Documents after the checkpoint that run 1 had already written are only touched.
    assert!(
        counters.indexed_document_count <= 6_000 - next,
        "{counters:?}"
    );
    assert!(counters.indexed_document_count > 0, "{counters:?}");
    assert_eq!(cursor, Some(json!({"revision": 0})));
    // The cursor came back only after every document was acknowledged.
    assert_eq!(es.count(&index).await, 6_000);
    // Checkpoints of run 2 keep the generation of run 1.
    let first = rec2.checkpoints.lock().unwrap()[0].clone();
    assert_eq!(first["sync_generation"], checkpoint["sync_generation"]);

    // Run 3: delta mode from the cursor: changes and deletions only.
    let delta = GeneratorConfig {
        revision: 1,
        changed_every: 10,
        drop_from: 100,
        drop_count: 100,
        checkpoint_every: 0,
        ..cfg.clone()
    };
    let mut s = spec(JobType::Incremental, &index, &delta);
    s.sync_cursor = cursor;
    let (out, _) = run(&es, &c, s).await;
    let JobOutcome::Completed { counters, cursor } = out else {
        panic!("{out:?}")
    };
    assert_eq!(counters.deleted_document_count, 100);
    assert_eq!(counters.indexed_document_count, 600 - 10);
    assert_eq!(cursor, Some(json!({"revision": 1})));
    assert_eq!(es.count(&index).await, 5_900);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_and_index_preparation() {
    let es = test_support::es().await;
    let c = connector();
    let cfg = GeneratorConfig {
        count: 10,
        ..Default::default()
    };

    // A missing custom pipeline fails the job with a clear message.
    let index = es.unique_index("pipe");
    let mut s = spec(JobType::Full, &index, &cfg);
    s.pipeline.name = "my-custom-pipeline".into();
    let (out, _) = run(&es, &c, s).await;
    assert!(
        matches!(&out, JobOutcome::Failed { error, .. } if error.contains("\"my-custom-pipeline\" does not exist")),
        "{out:?}"
    );

    // The missing default pipeline is skipped; the index is created with mappings.
    let (out, _) = run(&es, &c, spec(JobType::Full, &index, &cfg)).await;
    assert!(matches!(out, JobOutcome::Completed { .. }), "{out:?}");
    let m = es
        .client
        .json(HttpMethod::Get, &format!("/{index}/_mapping"), &[], None)
        .await
        .unwrap();
    let mapping = &m[&index]["mappings"];
    assert_eq!(mapping["properties"]["id"]["type"], "keyword");
    assert_eq!(mapping["properties"]["_sync_generation"]["type"], "long");
    assert_eq!(
        mapping["properties"]["title"]["fields"]["enum"]["type"],
        "keyword"
    );

    // An alias is respected: documents go through it into the aliased index.
    let target = es.unique_index("target");
    let alias = es.unique_name("alias");
    es.client
        .json(
            HttpMethod::Put,
            &format!("/{target}"),
            &[],
            Some(&json!({"aliases": {&alias: {"is_write_index": true}}})),
        )
        .await
        .unwrap();
    let (out, _) = run(&es, &c, spec(JobType::Full, &alias, &cfg)).await;
    assert!(matches!(out, JobOutcome::Completed { .. }), "{out:?}");
    assert_eq!(es.count(&target).await, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupted_full_sync_resumes_with_its_generation() {
    let es = test_support::es().await;
    let index = es.unique_index("resume");
    let c = connector();
    let mut cfg = GeneratorConfig {
        count: 6_000,
        doc_size: 48,
        checkpoint_every: 500,
        ..Default::default()
    };
    let (out, _) = run(&es, &c, spec(JobType::Full, &index, &cfg)).await;
    assert!(matches!(out, JobOutcome::Completed { .. }), "{out:?}");

    // The source lost 300 documents; the next full sync is interrupted after 3 checkpoints.
    cfg.drop_from = 100;
    cfg.drop_count = 300;
    let cancel = CancellationToken::new();
    let rec = Arc::new(Recorder {
        cancel_after: Some((3, cancel.clone())),
        ..Default::default()
    });
    let out = c
        .run_job(
            spec(JobType::Full, &index, &cfg),
            context(&es.client, rec.clone(), cancel),
        )
        .await;
    assert!(matches!(out, JobOutcome::Interrupted { .. }), "{out:?}");
    assert_eq!(
        out.counters().deleted_document_count,
        0,
        "an interrupted sync deletes nothing"
    );
    assert_eq!(es.count(&index).await, 6_000);

    // Resumed: the documents written before the interruption keep the job's generation, so only
    // the 300 dropped ones are deleted.
    let mut s = spec(JobType::Full, &index, &cfg);
    s.checkpoint = rec.last_checkpoint();
    let (out, _) = run(&es, &c, s).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(counters.deleted_document_count, 300);
    assert_eq!(es.count(&index).await, 5_700);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_index_ahead_of_the_clock_still_loses_its_stale_documents() {
    let es = test_support::es().await;
    let c = connector();
    // The same outcome whether the engine or the source (started before the index is asked
    // for its newest generation, then started again) encodes the documents.
    for encode in [EncodeBy::Engine, EncodeBy::Source] {
        let index = es.unique_index("skew");
        let mut cfg = GeneratorConfig {
            count: 400,
            doc_size: 32,
            encode,
            ..Default::default()
        };
        let (out, _) = run(&es, &c, spec(JobType::Full, &index, &cfg)).await;
        assert!(matches!(out, JobOutcome::Completed { .. }), "{out:?}");
        // Another host, its clock a day ahead, wrote them last.
        let ahead = chrono::Utc::now().timestamp_millis() as u64 + 86_400_000;
        let mut body = String::new();
        for i in 0..400 {
            body.push_str(&format!(
                "{}\n{}\n",
                json!({"update": {"_id": doc_id(i)}}),
                json!({"doc": {GENERATION_FIELD: ahead}})
            ));
        }
        es.bulk(&format!("/{index}/_bulk"), body).await;

        cfg.drop_from = 100;
        cfg.drop_count = 50;
        let (out, _) = run(&es, &c, spec(JobType::Full, &index, &cfg)).await;
        let JobOutcome::Completed { counters, .. } = out else {
            panic!("{encode:?}: {out:?}")
        };
        assert_eq!(counters.deleted_document_count, 50, "{encode:?}");
        assert_eq!(es.count(&index).await, 350, "{encode:?}");
        assert!(!exists(&es, &index, &doc_id(120)).await, "{encode:?}");
        let d = es.doc(&index, &doc_id(7)).await;
        assert!(
            d["_source"][GENERATION_FIELD].as_u64() > Some(ahead),
            "{encode:?}: {d}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_complete_deletes_only_within_the_partition() {
    let es = test_support::es().await;
    let index = es.unique_index("partition");
    let c = connector();
    let mut cfg = GeneratorConfig {
        count: 2_000,
        doc_size: 32,
        partitions: 4,
        ..Default::default()
    };
    let (out, _) = run(&es, &c, spec(JobType::Full, &index, &cfg)).await;
    assert!(matches!(out, JobOutcome::Completed { .. }), "{out:?}");

    // Documents 0..400 are gone from the source; an incremental sync re-enumerates partition p1.
    cfg.drop_from = 0;
    cfg.drop_count = 400;
    cfg.complete_partition = Some(1);
    let (out, _) = run(&es, &c, spec(JobType::Incremental, &index, &cfg)).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(counters.deleted_document_count, 100);
    assert_eq!(counters.indexed_document_count, 400);
    assert_eq!(es.count(&index).await, 1_900);
    assert!(!exists(&es, &index, &doc_id(1)).await);
    assert!(exists(&es, &index, &doc_id(2)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_documents_are_dropped() {
    let es = test_support::es().await;
    let index = es.unique_index("oversized");
    let mut settings = SyncSettings::default();
    settings.bulk.max_text_document_size = 2_000;
    let c = erase_with(GeneratorConnector::new(), settings);
    let cfg = GeneratorConfig {
        count: 20,
        doc_size: 4_000,
        ..Default::default()
    };
    let (out, _) = run(&es, &c, spec(JobType::Full, &index, &cfg)).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(counters.indexed_document_count, 0);
    assert_eq!(es.count(&index).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_sync_of_an_empty_index_is_searchable_when_it_completes() {
    // The index exists (created with the connector) but is empty: the sync skips its
    // stale-document passes and refreshes once at the end.
    let es = test_support::es().await;
    let index = es.unique_index("empty-first");
    connector_framework::sync::index::prepare_content_index(&es.client, &index, None)
        .await
        .expect("index");
    let c = connector();
    let cfg = GeneratorConfig {
        count: 1_200,
        doc_size: 32,
        partitions: 6,
        ..Default::default()
    };
    let (out, _) = run(&es, &c, spec(JobType::Full, &index, &cfg)).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(counters.indexed_document_count, 1_200);
    assert_eq!(counters.deleted_document_count, 0);
    // No refresh by the test: the job's own refresh made everything visible.
    let hits = es
        .client
        .json(
            HttpMethod::Post,
            &format!("/{index}/_count"),
            &[],
            Some(&json!({"query": {"match_all": {}}})),
        )
        .await
        .expect("count");
    assert_eq!(hits["count"], 1_200);

    // The next full sync finds the documents and removes what the source dropped, per
    // partition and at the end.
    let cfg = GeneratorConfig {
        drop_from: 0,
        drop_count: 300,
        ..cfg
    };
    let (out, _) = run(&es, &c, spec(JobType::Full, &index, &cfg)).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(counters.deleted_document_count, 300);
    assert_eq!(es.count(&index).await, 900);
}
