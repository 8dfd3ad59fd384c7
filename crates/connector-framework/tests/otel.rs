//! OpenTelemetry trace export over OTLP/HTTP against a collector stand-in.
//!
//! The stand-in (`test_support::otlp`) is a small axum server accepting `POST /v1/traces` with a
//! protobuf `ExportTraceServiceRequest`, decoded with the official OTLP message types. This binary
//! installs the global subscriber once (in `spans_reach_the_collector_with_attributes_and_parents`);
//! the other tests use a thread-scoped subscriber.

use std::time::{Duration, Instant};

use axum::http::header;
use connector_framework::telemetry::{
    logging::{LogFormat, Logging},
    otel::{OtlpConfig, bulk_span, job_span, traceparent},
};
use test_support::otlp::{
    Collector, SpanKind, SpanStatusCode as OtelStatus, hex, int_attr, str_attr,
};
use tracing::Instrument;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_the_collector_with_attributes_and_parents() {
    let (collector, addr) = Collector::start().await;
    let config = OtlpConfig::new(format!("http://{addr}"))
        .with_header("Authorization", "ApiKey test-otlp-key");
    let mut guard = Logging::new(LogFormat::Json, "INFO")
        .writer(std::io::sink)
        .otlp(Some(config))
        .init()
        .expect("install logging with OTLP export");
    assert!(guard.is_exporting());

    let job_id = format!("job-{}", uuid::Uuid::new_v4());
    let job = job_span("connector-1", &job_id, "gmail", "full");
    let bulk_traceparent = async {
        tokio::task::yield_now().await;
        let bulk = bulk_span(".search-mail", 3, 2048);
        let parent = async {
            tracing::info!(items = 3u64, "bulk sent");
            tokio::task::yield_now().await;
            tracing::Span::current().record("http.response.status_code", 200i64);
            tracing::Span::current().record("failed_items", 0i64);
            traceparent(&tracing::Span::current())
        }
        .instrument(bulk)
        .await;
        // Neither of these may reach the collector: the HTTP stack's own spans are never
        // exported, and DEBUG is below the configured level.
        tracing::info_span!(target: "hyper_util::client", "connect").in_scope(|| {});
        tracing::debug_span!("too_detailed").in_scope(|| {});
        parent
    }
    .instrument(job)
    .await
    .expect("the bulk span has an OTel context");

    let started = Instant::now();
    guard.shutdown().expect("flush and shut down");
    let flush_time = started.elapsed();
    assert!(!guard.is_exporting());
    eprintln!("shutdown (flush of 2 spans over OTLP/HTTP) took {flush_time:?}");

    let spans = collector.spans();
    let names: Vec<&str> = spans.iter().map(|r| r.span.name.as_str()).collect();
    assert!(names.contains(&"job"), "received {names:?}");
    assert!(names.contains(&"bulk"), "received {names:?}");
    assert!(
        !names.contains(&"connect"),
        "HTTP stack span exported: {names:?}"
    );
    assert!(
        !names.contains(&"too_detailed"),
        "DEBUG span exported: {names:?}"
    );
    assert_eq!(spans.len(), 2, "received {names:?}");

    let job = &spans
        .iter()
        .find(|r| r.span.name == "job")
        .expect("job")
        .span;
    let bulk = spans.iter().find(|r| r.span.name == "bulk").expect("bulk");

    // Fields became attributes.
    assert_eq!(str_attr(&job.attributes, "job_id"), Some(job_id.as_str()));
    assert_eq!(
        str_attr(&job.attributes, "connector_id"),
        Some("connector-1")
    );
    assert_eq!(str_attr(&job.attributes, "service_type"), Some("gmail"));
    assert_eq!(str_attr(&job.attributes, "job_type"), Some("full"));
    let b = &bulk.span.attributes;
    assert_eq!(str_attr(b, "index_name"), Some(".search-mail"));
    assert_eq!(int_attr(b, "operations"), Some(3));
    assert_eq!(int_attr(b, "bytes"), Some(2048));
    assert_eq!(int_attr(b, "http.response.status_code"), Some(200));
    assert_eq!(int_attr(b, "failed_items"), Some(0));
    // The log line inside the span became a span event.
    assert!(
        bulk.span.events.iter().any(|e| e.name == "bulk sent"),
        "events: {:?}",
        bulk.span.events
    );

    // Parent/child and trace membership.
    assert_eq!(job.trace_id.len(), 16);
    assert_eq!(job.span_id.len(), 8);
    assert!(job.parent_span_id.is_empty(), "the job is a root span");
    assert_eq!(bulk.span.trace_id, job.trace_id);
    assert_eq!(bulk.span.parent_span_id, job.span_id);
    assert!(bulk.span.start_time_unix_nano >= job.start_time_unix_nano);
    assert!(bulk.span.end_time_unix_nano <= job.end_time_unix_nano);
    assert_eq!(
        bulk_traceparent,
        format!(
            "00-{}-{}-01",
            hex(&bulk.span.trace_id),
            hex(&bulk.span.span_id)
        )
    );

    // Resource and transport.
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        assert_eq!(str_attr(&bulk.resource, "service.name"), Some("connectors"));
    }
    assert_eq!(
        str_attr(&bulk.resource, "service.version"),
        Some(env!("CARGO_PKG_VERSION"))
    );
    let headers = collector.headers();
    assert!(!headers.is_empty());
    for h in &headers {
        assert_eq!(
            h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
            Some("application/x-protobuf")
        );
        assert_eq!(
            h.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()),
            Some("ApiKey test-otlp-key")
        );
    }

    // After shutdown spans are dropped quietly.
    let exports_before = headers.len();
    job_span("connector-1", "after", "gmail", "full").in_scope(|| {});
    guard.shutdown().expect("second shutdown is a no-op");
    assert_eq!(collector.headers().len(), exports_before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_bounded_when_the_collector_is_down() {
    // A port nothing listens on any more.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);

    let (subscriber, mut guard) = Logging::new(LogFormat::Human, "INFO")
        .writer(std::io::sink)
        .otlp(Some(OtlpConfig::new(format!("http://{addr}"))))
        .build()
        .expect("build");
    assert!(guard.is_exporting());
    tracing::subscriber::with_default(subscriber, || {
        job_span("c", "j", "gmail", "full").in_scope(|| {
            bulk_span("idx", 1, 10).in_scope(|| {});
        });
    });
    let started = Instant::now();
    // Export fails (connection refused); what matters is that shutdown returns promptly.
    let _ = guard.shutdown();
    let took = started.elapsed();
    eprintln!("shutdown with the collector down took {took:?}");
    assert!(took < Duration::from_secs(20), "shutdown took {took:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn flush_from_a_current_thread_runtime_does_not_deadlock() {
    let (collector, addr) = Collector::start_detached();
    let (subscriber, guard) = Logging::new(LogFormat::Human, "INFO")
        .writer(std::io::sink)
        .otlp(Some(OtlpConfig::new(format!("http://{addr}/"))))
        .build()
        .expect("build");
    tracing::subscriber::with_default(subscriber, || {
        job_span("c", "current-thread", "gmail", "full").in_scope(|| {});
    });
    // The batch exporter runs on its own thread, so this blocking flush completes even though
    // it blocks the only thread of this runtime.
    let started = Instant::now();
    guard.force_flush().expect("flush");
    assert!(started.elapsed() < Duration::from_secs(5));
    let spans = collector.spans();
    assert_eq!(spans.len(), 1);
    assert_eq!(
        str_attr(&spans[0].span.attributes, "job_id"),
        Some("current-thread")
    );
    drop(guard);
}

#[test]
fn export_works_when_set_up_outside_any_runtime() {
    // The host may install logging before it builds its runtime.
    let (collector, addr) = Collector::start_detached();
    let (subscriber, mut guard) = Logging::new(LogFormat::Json, "INFO")
        .writer(std::io::sink)
        .otlp(Some(OtlpConfig::new(format!("http://{addr}"))))
        .build()
        .expect("build");
    tracing::subscriber::with_default(subscriber, || {
        let job = job_span("c", "no-runtime", "gmail", "incremental");
        job.in_scope(|| {
            connector_framework::telemetry::otel::mailbox_span("amy@example.com").in_scope(|| {
                tracing::Span::current().record("documents", 7i64);
                let http = connector_framework::telemetry::otel::http_client_span(
                    "GET",
                    "gmail.googleapis.com",
                    "/gmail/v1/users/me/messages",
                );
                http.record("http.response.status_code", 200i64);
                drop(http);
                let failed = connector_framework::telemetry::otel::http_client_span(
                    "POST",
                    "oauth2.googleapis.com",
                    "/token",
                );
                failed.in_scope(|| {
                    tracing::Span::current().record("error.type", "timeout");
                    tracing::error!("token request timed out");
                });
            });
        });
    });
    guard.shutdown().expect("shutdown");
    let spans = collector.spans();
    let job = spans.iter().find(|r| r.span.name == "job").expect("job");
    let mailbox = spans
        .iter()
        .find(|r| r.span.name == "mailbox")
        .expect("mailbox");
    assert_eq!(mailbox.span.parent_span_id, job.span.span_id);
    assert_eq!(
        str_attr(&mailbox.span.attributes, "mailbox"),
        Some("amy@example.com")
    );
    assert_eq!(int_attr(&mailbox.span.attributes, "documents"), Some(7));
    assert_eq!(
        str_attr(&job.span.attributes, "job_type"),
        Some("incremental")
    );
    // `otel.name` / `otel.kind` set the OTel span name and kind.
    let http = spans
        .iter()
        .find(|r| r.span.name == "GET")
        .expect("http span");
    assert_eq!(http.span.kind, SpanKind::Client as i32);
    assert_eq!(http.span.parent_span_id, mailbox.span.span_id);
    let a = &http.span.attributes;
    assert_eq!(str_attr(a, "http.request.method"), Some("GET"));
    assert_eq!(str_attr(a, "server.address"), Some("gmail.googleapis.com"));
    assert_eq!(str_attr(a, "url.path"), Some("/gmail/v1/users/me/messages"));
    assert_eq!(int_attr(a, "http.response.status_code"), Some(200));
    assert_eq!(str_attr(a, "otel.kind"), None);
    assert_ne!(
        http.span.status.as_ref().map(|s| s.code),
        Some(OtelStatus::Error as i32)
    );
    // An ERROR event inside a span marks it failed.
    let failed = spans
        .iter()
        .find(|r| r.span.name == "POST")
        .expect("failed span");
    assert_eq!(
        str_attr(&failed.span.attributes, "error.type"),
        Some("timeout")
    );
    assert_eq!(
        failed.span.status.as_ref().map(|s| s.code),
        Some(OtelStatus::Error as i32)
    );
}
