//! Per-item 429s: a fault-injecting HTTP proxy in front of the real node forwards only the first
//! half of the operations of the first bulk requests and answers 429 for the rest. The sink must
//! re-send those items; no document may be lost. Each request is a `bulk` span of the job.

#![allow(clippy::unwrap_used)]

#[path = "sync_support/mod.rs"]
mod common;

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, Method, StatusCode, Uri, header},
    response::{IntoResponse, Response},
};
use common::{Recorder, context, spec};
use connector_framework::{
    EsClient,
    job::JobOutcome,
    model::JobType,
    source::DynConnector,
    sync::{SyncSettings, erase_with},
    telemetry::{
        logging::{LogFormat, Logging},
        otel::{OtlpConfig, job_span},
    },
    testing::{GeneratorConfig, GeneratorConnector},
};
use serde_json::{Value, json};
use test_support::otlp::{Collector, int_attr, str_attr};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

#[derive(Clone)]
struct Proxy {
    upstream: String,
    client: reqwest::Client,
    /// Bulk requests still to damage.
    faults_left: Arc<AtomicUsize>,
    /// Items answered `fault_status` by the proxy.
    rejected: Arc<AtomicUsize>,
    /// Status of the synthesized item failures (429: retryable; 400: permanent).
    fault_status: u16,
    /// `(lines, bytes)` of every bulk request.
    bulks: Arc<std::sync::Mutex<Vec<(usize, usize)>>>,
    inflight: Arc<AtomicUsize>,
    max_inflight: Arc<AtomicUsize>,
}

/// Splits an NDJSON bulk body into operations (action line + optional source line).
fn operations(body: &[u8]) -> Vec<Vec<&[u8]>> {
    let mut ops: Vec<Vec<&[u8]>> = Vec::new();
    let mut lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    while let Some(action) = lines.next() {
        let parsed: Value = serde_json::from_slice(action).unwrap_or(Value::Null);
        let has_source = parsed.get("delete").is_none();
        let mut op = vec![action];
        if has_source && let Some(src) = lines.next() {
            op.push(src);
        }
        ops.push(op);
    }
    ops
}

async fn forward(
    p: &Proxy,
    method: Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: Bytes,
) -> (u16, Bytes, Option<String>) {
    let url = format!(
        "{}{}",
        p.upstream.trim_end_matches('/'),
        uri.path_and_query().map_or("/", |q| q.as_str())
    );
    let mut req = p.client.request(method, url).body(body);
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        req = req.header(header::CONTENT_TYPE, ct.clone());
    }
    let resp = req.send().await.expect("upstream answers");
    let status = resp.status().as_u16();
    let ct = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    (status, resp.bytes().await.unwrap_or_default(), ct)
}

async fn handle(
    State(p): State<Proxy>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let is_bulk = uri.path().ends_with("/_bulk");
    if is_bulk {
        let lines = body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        p.bulks.lock().unwrap().push((lines, body.len()));
        let now = p.inflight.fetch_add(1, Ordering::SeqCst) + 1;
        p.max_inflight.fetch_max(now, Ordering::SeqCst);
    }
    let response = respond(&p, is_bulk, method, uri, headers, body).await;
    if is_bulk {
        p.inflight.fetch_sub(1, Ordering::SeqCst);
    }
    response
}

async fn respond(
    p: &Proxy,
    is_bulk: bool,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let damage = is_bulk
        && p.faults_left
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
    if damage {
        let ops = operations(&body);
        let keep = ops.len() / 2;
        let mut items: Vec<Value> = Vec::new();
        if keep > 0 {
            let mut first = Vec::new();
            for op in &ops[..keep] {
                for line in op {
                    first.extend_from_slice(line);
                    first.push(b'\n');
                }
            }
            let (status, resp, _) = forward(p, method, &uri, &headers, Bytes::from(first)).await;
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
            let v: Value = serde_json::from_slice(&resp).unwrap();
            items.extend(v["items"].as_array().cloned().unwrap_or_default());
        }
        for op in &ops[keep..] {
            let action: Value = serde_json::from_slice(op[0]).unwrap();
            let (kind, meta) = action.as_object().unwrap().iter().next().unwrap();
            p.rejected.fetch_add(1, Ordering::SeqCst);
            let error_type = if p.fault_status == 429 {
                "es_rejected_execution_exception"
            } else {
                "document_parsing_exception"
            };
            items.push(json!({kind: {
                "_index": meta["_index"], "_id": meta["_id"], "status": p.fault_status,
                "error": {"type": error_type, "reason": "rejected by the test proxy"}
            }}));
        }
        let body = json!({"took": 1, "errors": true, "items": items});
        return (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body.to_string(),
        )
            .into_response();
    }
    let (status, resp, ct) = forward(p, method, &uri, &headers, body).await;
    let mut r = (
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY),
        resp,
    )
        .into_response();
    if let Some(ct) = ct
        && let Ok(v) = ct.parse()
    {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r
}

async fn start_proxy(
    es: &test_support::TestEs,
    faults: usize,
    fault_status: u16,
) -> (
    Proxy,
    EsClient,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let proxy = Proxy {
        upstream: es.client.url().to_string(),
        client: reqwest::Client::new(),
        faults_left: Arc::new(AtomicUsize::new(faults)),
        rejected: Arc::default(),
        fault_status,
        bulks: Arc::default(),
        inflight: Arc::default(),
        max_inflight: Arc::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new().fallback(handle).with_state(proxy.clone());
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let mut conn = test_support::connection();
    conn.host = format!("http://{addr}").parse().unwrap();
    (proxy, EsClient::new(&conn).unwrap(), server)
}

fn settings() -> SyncSettings {
    let mut settings = SyncSettings::default();
    settings.bulk.chunk_size = 200;
    settings.bulk.retry_interval = std::time::Duration::from_millis(20);
    settings
}

/// Runs a full sync of `cfg` into `index` through `client` (the proxy).
async fn full_sync(
    c: &Arc<dyn DynConnector>,
    client: &EsClient,
    index: &str,
    cfg: &GeneratorConfig,
) -> JobOutcome {
    let rec = Arc::new(Recorder::default());
    c.run_job(
        spec(JobType::Full, index, cfg),
        context(client, rec, CancellationToken::new()),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn items_answered_429_are_resent_and_nothing_is_lost() {
    let es = test_support::es().await;
    let (proxy, client, server) = start_proxy(&es, 12, 429).await;
    let index = es.unique_index("faults");
    let c = erase_with(GeneratorConnector::new(), settings());
    let cfg = GeneratorConfig {
        count: 3_000,
        doc_size: 48,
        ..Default::default()
    };
    let out = full_sync(&c, &client, &index, &cfg).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    let rejected = proxy.rejected.load(Ordering::SeqCst);
    assert!(rejected >= 300, "the proxy rejected only {rejected} items");
    assert_eq!(counters.indexed_document_count, 3_000);
    assert_eq!(es.count(&index).await, 3_000);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_item_failures_exhaust_the_error_budget() {
    let es = test_support::es().await;
    let (proxy, client, server) = start_proxy(&es, 1, 400).await;
    let index = es.unique_index("budget");
    let c = erase_with(GeneratorConnector::new(), settings());
    let cfg = GeneratorConfig {
        count: 1_000,
        doc_size: 32,
        ..Default::default()
    };
    let out = full_sync(&c, &client, &index, &cfg).await;
    let JobOutcome::Failed { error, .. } = out else {
        panic!("{out:?}")
    };
    assert!(
        error.starts_with("too many bulk item errors (11 consecutive errors)"),
        "{error}"
    );
    assert!(error.contains("document_parsing_exception"), "{error}");
    assert!(proxy.rejected.load(Ordering::SeqCst) >= 11);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_requests_respect_line_byte_and_concurrency_limits() {
    let es = test_support::es().await;
    let (proxy, client, server) = start_proxy(&es, 0, 429).await;
    let index = es.unique_index("limits");
    let mut s = settings();
    s.bulk.chunk_size = 100;
    s.bulk.chunk_max_mem_size = 20 * 1024;
    s.bulk.max_concurrency = 2;
    s.bulk.queue_max_size = 50;
    s.bulk.queue_max_mem_size = 64 * 1024;
    let c = erase_with(GeneratorConnector::new(), s);
    let count = |doc_size| GeneratorConfig {
        count: 1_500,
        doc_size,
        ..Default::default()
    };
    for (doc_size, name) in [(600, "big"), (8, "small")] {
        let target = format!("{index}-{name}");
        es.track(&target);
        let out = full_sync(&c, &client, &target, &count(doc_size)).await;
        assert!(matches!(out, JobOutcome::Completed { .. }), "{out:?}");
        assert_eq!(es.count(&target).await, 1_500);
    }
    let bulks = proxy.bulks.lock().unwrap().clone();
    assert!(bulks.iter().all(|(lines, _)| *lines <= 100), "{bulks:?}");
    assert!(
        bulks.iter().all(|(_, bytes)| *bytes <= 20 * 1024),
        "{bulks:?}"
    );
    // Large documents are cut by bytes, small ones by lines.
    assert!(bulks.iter().any(|(lines, _)| *lines < 60));
    assert!(bulks.iter().any(|(lines, _)| *lines == 100));
    assert!(proxy.max_inflight.load(Ordering::SeqCst) <= 2);
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_source_is_written_a_flush_interval_after_each_chunk_starts() {
    let es = test_support::es().await;
    let (proxy, client, server) = start_proxy(&es, 0, 429).await;
    let index = es.unique_index("trickle");
    let mut s = settings();
    s.bulk.flush_interval = std::time::Duration::from_millis(100);
    let c = erase_with(GeneratorConnector::new(), s);
    // A document every 30 ms: never 100 ms without one, so a timer restarted by every
    // operation would hold all of them until the source ends.
    let cfg = GeneratorConfig {
        count: 40,
        doc_size: 16,
        pace_ms: 30,
        ..Default::default()
    };
    let out = full_sync(&c, &client, &index, &cfg).await;
    assert!(matches!(out, JobOutcome::Completed { .. }), "{out:?}");
    assert_eq!(es.count(&index).await, 40);
    let bulks = proxy.bulks.lock().unwrap().clone();
    // 1.2 s of documents: a chunk about every 100 ms (each of about 4 documents, 8 lines).
    assert!(bulks.len() >= 6, "{bulks:?}");
    assert!(bulks.iter().all(|(lines, _)| *lines <= 20), "{bulks:?}");

    // No interval is too long to set: the chunk is then sent when the source ends.
    let mut s = settings();
    s.bulk.flush_interval = std::time::Duration::MAX;
    let c = erase_with(GeneratorConnector::new(), s);
    let target = format!("{index}-never");
    es.track(&target);
    let cfg = GeneratorConfig {
        count: 10,
        ..Default::default()
    };
    let out = full_sync(&c, &client, &target, &cfg).await;
    assert!(matches!(out, JobOutcome::Completed { .. }), "{out:?}");
    assert_eq!(es.count(&target).await, 10);
    server.abort();
}

// Every task of a current-thread runtime runs on the test's thread, so the thread-scoped
// subscriber also sees the sink's spawned tasks; the collector and the exporter have threads of
// their own.
#[tokio::test(flavor = "current_thread")]
async fn each_bulk_request_is_a_span_of_the_job_with_its_failed_items() {
    let (collector, addr) = Collector::start_detached();
    let (subscriber, mut guard) = Logging::new(LogFormat::Json, "INFO")
        .writer(std::io::sink)
        .otlp(Some(OtlpConfig::new(format!("http://{addr}"))))
        .build()
        .unwrap();
    let _default = tracing::subscriber::set_default(subscriber);
    let es = test_support::es().await;
    let (proxy, client, server) = start_proxy(&es, 2, 429).await;
    let index = es.unique_index("spans");
    let c = erase_with(GeneratorConnector::new(), settings());
    let cfg = GeneratorConfig {
        count: 600,
        doc_size: 32,
        ..Default::default()
    };
    let spec = spec(JobType::Full, &index, &cfg);
    let job_id = spec.job_id.clone();
    let rec = Arc::new(Recorder::default());
    let out = c
        .run_job(spec, context(&client, rec, CancellationToken::new()))
        .instrument(job_span("conn-1", &job_id, "generator", "full"))
        .await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(counters.indexed_document_count, 600);
    guard.shutdown().unwrap();
    server.abort();

    let spans = collector.spans();
    let job = spans
        .iter()
        .map(|r| &r.span)
        .find(|s| s.name == "job" && str_attr(&s.attributes, "job_id") == Some(&job_id))
        .expect("the job span");
    let bulks: Vec<_> = spans
        .iter()
        .map(|r| &r.span)
        .filter(|s| s.name == "bulk")
        .collect();
    // One span per request the node (behind the proxy) saw.
    assert_eq!(bulks.len(), proxy.bulks.lock().unwrap().len());
    let mut damaged = 0;
    let mut applied = 0;
    for bulk in &bulks {
        let a = &bulk.attributes;
        assert_eq!(bulk.trace_id, job.trace_id);
        assert_eq!(
            bulk.parent_span_id, job.span_id,
            "a bulk span's parent is the job"
        );
        assert_eq!(str_attr(a, "index_name"), Some(index.as_str()));
        assert_eq!(int_attr(a, "http.response.status_code"), Some(200));
        assert!(int_attr(a, "bytes").unwrap() > 0);
        let operations = int_attr(a, "operations").unwrap();
        let failed = int_attr(a, "failed_items").unwrap();
        if failed > 0 {
            // The proxy answers 429 for the second half of a damaged request.
            damaged += 1;
            assert_eq!(failed, operations - operations / 2);
        }
        applied += operations - failed;
    }
    assert_eq!(damaged, 2);
    assert_eq!(applied, 600, "every document acknowledged exactly once");
}
