//! Full-sync benchmark: the generator source into a fresh index of the test node.
//!
//! ```text
//! cargo run -p connector-framework --example full_sync_bench -- [count] [doc_size]
//! ```
//!
//! Defaults: 200,000 documents of ~256 bytes. Prints documents per second and the peak resident
//! set size (`VmHWM` of `/proc/self/status`). The node comes from `ES_URL` or `.state/es.json`.
//! The index is deleted at the end.

use std::{sync::Arc, time::Instant};

use connector_framework::{
    es::HttpMethod,
    job::{JobContext, JobCounters, JobOutcome, JobReporter, JobSpec, ReportError},
    model::{Features, FilteringRules, JobType, Pipeline},
    sync::{SyncSettings, erase_with},
    testing::{GeneratorConfig, GeneratorConnector},
};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

struct NoopReporter;

#[async_trait::async_trait]
impl JobReporter for NoopReporter {
    fn counters(&self, _counters: JobCounters) {}
    async fn checkpoint(&self, _checkpoint: Value) -> Result<(), ReportError> {
        Ok(())
    }
}

fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let count: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(200_000);
    let doc_size: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(256);

    let conn = test_support::connection();
    let es = connector_framework::EsClient::new(&conn)?;
    es.info().await?;
    let index = format!(
        "bench-full-sync-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    );
    let cfg = GeneratorConfig {
        count,
        doc_size,
        ..Default::default()
    };
    let connector = erase_with(GeneratorConnector::new(), SyncSettings::default());
    let spec = JobSpec {
        job_id: "bench".into(),
        connector_id: "bench".into(),
        job_type: JobType::Full,
        service_type: "generator".into(),
        index_name: index.clone(),
        language: None,
        pipeline: Pipeline::default(),
        configuration: cfg.to_configuration(),
        filtering: FilteringRules::default(),
        features: Features::default(),
        sync_cursor: None,
        checkpoint: None,
    };
    let ctx = JobContext {
        es: es.clone(),
        cancel: CancellationToken::new(),
        reporter: Arc::new(NoopReporter),
    };
    let started = Instant::now();
    let outcome = connector.run_job(spec, ctx).await;
    let elapsed = started.elapsed();
    let _ = es
        .send(HttpMethod::Delete, &format!("/{index}"), &[], None)
        .await;
    let counters = match outcome {
        JobOutcome::Completed { counters, .. } => counters,
        other => return Err(format!("sync did not complete: {other:?}").into()),
    };
    let secs = elapsed.as_secs_f64();
    println!(
        "documents={} bytes={} seconds={:.2} docs_per_sec={:.0} peak_rss_mib={:.1}",
        counters.indexed_document_count,
        counters.indexed_document_volume_bytes,
        secs,
        counters.indexed_document_count as f64 / secs,
        peak_rss_kib().unwrap_or(0) as f64 / 1024.0
    );
    Ok(())
}
