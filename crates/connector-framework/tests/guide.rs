//! `docs/adding-a-connector.md`: its code is this crate's example connector, compiled here and run
//! against the real node; every Rust block of the guide must appear verbatim in that file.

#[path = "../../../docs/examples/jsonl_connector.rs"]
mod jsonl;

use std::sync::{Arc, Mutex};

use connector_framework::{
    job::{JobContext, JobCounters, JobOutcome, JobReporter, JobSpec, ReportError},
    model::{Features, FilteringRules, JobType, Pipeline},
    source::DynConnector,
    sync::erase,
};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const GUIDE: &str = include_str!("../../../docs/adding-a-connector.md");
const CODE: &str = include_str!("../../../docs/examples/jsonl_connector.rs");

#[test]
fn every_rust_block_of_the_guide_is_the_tested_code() {
    let mut blocks = 0;
    let mut rest = GUIDE;
    while let Some(start) = rest.find("```rust\n") {
        let body = &rest[start + "```rust\n".len()..];
        let end = body.find("```").expect("closed code block");
        let block = &body[..end];
        assert!(
            CODE.contains(block.trim_end()),
            "guide block not in the example file:\n{block}"
        );
        blocks += 1;
        rest = &body[end + 3..];
    }
    assert!(blocks >= 3, "the guide shows the code ({blocks} blocks)");
}

#[derive(Default)]
struct Recorder {
    counters: Mutex<Vec<JobCounters>>,
}

#[async_trait::async_trait]
impl JobReporter for Recorder {
    fn counters(&self, counters: JobCounters) {
        self.counters.lock().unwrap().push(counters);
    }
    async fn checkpoint(&self, _checkpoint: Value) -> Result<(), ReportError> {
        Ok(())
    }
}

fn spec(connector: &dyn DynConnector, index: &str, path: &str) -> JobSpec {
    let mut configuration = connector.default_configuration();
    configuration["path"]["value"] = json!(path);
    JobSpec {
        job_id: format!("job-{}", uuid::Uuid::new_v4()),
        connector_id: "guide".into(),
        job_type: JobType::Full,
        service_type: connector.service_type().into(),
        index_name: index.into(),
        language: None,
        pipeline: Pipeline::default(),
        configuration,
        filtering: FilteringRules::default(),
        features: Features::default(),
        sync_cursor: None,
        checkpoint: None,
    }
}

#[tokio::test]
async fn the_guide_connector_syncs_and_mirrors_deletions() {
    let es = test_support::es().await;
    let index = es.unique_index("guide");
    let connector = erase(jsonl::JsonlConnector);

    // The generated configuration: labels and defaults from the typed config.
    let defaults = connector.default_configuration();
    assert_eq!(defaults["path"]["label"], "File path");
    assert_eq!(defaults["path"]["required"], true);
    assert_eq!(defaults["id_field"]["value"], "id");
    assert_eq!(defaults["id_field"]["ui_restrictions"], json!(["advanced"]));
    // A missing path is reported on its field.
    let err = connector
        .check_configuration(&defaults)
        .expect_err("path is required");
    assert_eq!(err.errors[0].field, "path", "{err}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("docs.jsonl");
    std::fs::write(
        &file,
        "{\"id\": \"a\", \"title\": \"first\"}\n{\"id\": \"b\", \"title\": \"second\"}\n{\"id\": 3, \"title\": \"third\"}\n",
    )
    .unwrap();
    let path = file.to_str().unwrap();
    let spec1 = spec(connector.as_ref(), &index, path);
    connector
        .validate_config(&spec1.configuration)
        .await
        .expect("valid");
    connector
        .ping(&spec1.configuration)
        .await
        .expect("file readable");

    let ctx = || JobContext {
        es: es.client.clone(),
        cancel: CancellationToken::new(),
        reporter: Arc::new(Recorder::default()),
    };
    match connector.run_job(spec1, ctx()).await {
        JobOutcome::Completed { counters, .. } => assert_eq!(counters.indexed_document_count, 3),
        other => panic!("first sync: {other:?}"),
    }
    assert_eq!(es.count(&index).await, 3);

    // The file loses a line: the next full sync deletes that document.
    std::fs::write(
        &file,
        "{\"id\": \"a\", \"title\": \"first\"}\n{\"id\": 3, \"title\": \"third\"}\n",
    )
    .unwrap();
    match connector
        .run_job(spec(connector.as_ref(), &index, path), ctx())
        .await
    {
        JobOutcome::Completed { counters, .. } => assert_eq!(counters.deleted_document_count, 1),
        other => panic!("second sync: {other:?}"),
    }
    assert_eq!(es.count(&index).await, 2);

    // A malformed line fails the job and deletes nothing.
    std::fs::write(&file, "{\"id\": \"a\"}\nnot json\n").unwrap();
    match connector
        .run_job(spec(connector.as_ref(), &index, path), ctx())
        .await
    {
        JobOutcome::Failed { error, .. } => assert!(error.contains("line 2"), "{error}"),
        other => panic!("third sync: {other:?}"),
    }
    assert_eq!(es.count(&index).await, 2);
}
