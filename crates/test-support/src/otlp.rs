//! An OTLP collector stand-in: a small HTTP server accepting `POST /v1/traces` with a protobuf
//! `ExportTraceServiceRequest` (what the service's OTLP/HTTP exporter sends), decoded with the
//! official OTLP message types and kept for the test to inspect.
//!
//! ```no_run
//! # async fn demo() {
//! let (collector, addr) = test_support::otlp::Collector::start().await;
//! // point the exporter at format!("http://{addr}") …
//! let spans = collector.spans();
//! # }
//! ```

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

pub use axum::http::HeaderMap;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{StatusCode, header},
    routing::post,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
pub use opentelemetry_proto::tonic::{
    common::v1::{AnyValue, KeyValue, any_value::Value},
    trace::v1::{Span, span::SpanKind, status::StatusCode as SpanStatusCode},
};
use prost::Message;

/// What the collector stand-in received. Clones share the received data.
#[derive(Clone, Default)]
pub struct Collector {
    exports: Arc<Mutex<Vec<Export>>>,
}

struct Export {
    headers: HeaderMap,
    request: ExportTraceServiceRequest,
}

/// A received span with the attributes of its resource.
#[derive(Debug, Clone)]
pub struct Received {
    pub span: Span,
    pub resource: Vec<KeyValue>,
}

impl Collector {
    /// Serves on a free loopback port on the current runtime; the address to export to.
    pub async fn start() -> (Self, SocketAddr) {
        let collector = Collector::default();
        let app = Router::new()
            .route("/v1/traces", post(traces))
            .with_state(collector.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector stand-in");
        let addr = listener.local_addr().expect("local address");
        tokio::spawn(async move {
            axum::serve(listener, app).await.expect("collector serve");
        });
        (collector, addr)
    }

    /// The stand-in on its own runtime thread, for tests that block their own runtime.
    pub fn start_detached() -> (Self, SocketAddr) {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("collector runtime");
            rt.block_on(async move {
                let started = Collector::start().await;
                tx.send(started).expect("send the collector address");
                std::future::pending::<()>().await;
            });
        });
        rx.recv().expect("collector started")
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<Received> {
        let exports = self.exports.lock().expect("collector lock");
        let mut out = Vec::new();
        for export in exports.iter() {
            for rs in &export.request.resource_spans {
                let resource = rs
                    .resource
                    .as_ref()
                    .map(|r| r.attributes.clone())
                    .unwrap_or_default();
                for ss in &rs.scope_spans {
                    for span in &ss.spans {
                        out.push(Received {
                            span: span.clone(),
                            resource: resource.clone(),
                        });
                    }
                }
            }
        }
        out
    }

    /// The request headers of every export request received so far.
    pub fn headers(&self) -> Vec<HeaderMap> {
        let exports = self.exports.lock().expect("collector lock");
        exports.iter().map(|e| e.headers.clone()).collect()
    }
}

async fn traces(
    State(collector): State<Collector>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    match ExportTraceServiceRequest::decode(body) {
        Ok(request) => {
            collector
                .exports
                .lock()
                .expect("collector lock")
                .push(Export { headers, request });
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/x-protobuf")],
                ExportTraceServiceResponse::default().encode_to_vec(),
            )
        }
        Err(_) => (
            StatusCode::BAD_REQUEST,
            [(header::CONTENT_TYPE, "text/plain")],
            b"not an ExportTraceServiceRequest".to_vec(),
        ),
    }
}

/// The value of attribute `key`.
pub fn attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a Value> {
    attrs
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v: &AnyValue| v.value.as_ref())
}

/// The string attribute `key` (`None` when missing or of another type).
pub fn str_attr<'a>(attrs: &'a [KeyValue], key: &str) -> Option<&'a str> {
    match attr(attrs, key) {
        Some(Value::StringValue(s)) => Some(s),
        _ => None,
    }
}

/// The integer attribute `key` (`None` when missing or of another type).
pub fn int_attr(attrs: &[KeyValue], key: &str) -> Option<i64> {
    match attr(attrs, key) {
        Some(Value::IntValue(i)) => Some(*i),
        _ => None,
    }
}

/// Lower-case hex of a trace or span id.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The spans of one trace, by span id, to walk parent chains.
pub struct Trace<'a> {
    by_id: HashMap<&'a [u8], &'a Span>,
}

impl<'a> Trace<'a> {
    /// The received spans of `trace_id`.
    pub fn new(spans: &'a [Received], trace_id: &[u8]) -> Self {
        let by_id = spans
            .iter()
            .filter(|r| r.span.trace_id == trace_id)
            .map(|r| (r.span.span_id.as_slice(), &r.span))
            .collect();
        Self { by_id }
    }

    /// The received parent of `span`, if any.
    pub fn parent(&self, span: &Span) -> Option<&'a Span> {
        self.by_id.get(span.parent_span_id.as_slice()).copied()
    }

    /// Whether `ancestor` is on the parent chain of `span` (within this trace).
    pub fn descends_from(&self, span: &Span, ancestor: &Span) -> bool {
        let mut current = self.parent(span);
        // A chain never has more links than the trace has spans (guards against cycles).
        for _ in 0..=self.by_id.len() {
            match current {
                Some(p) if p.span_id == ancestor.span_id => return true,
                Some(p) => current = self.parent(p),
                None => return false,
            }
        }
        false
    }

    /// The nearest ancestor of `span` named `name`.
    pub fn ancestor_named(&self, span: &Span, name: &str) -> Option<&'a Span> {
        let mut current = self.parent(span);
        for _ in 0..=self.by_id.len() {
            match current {
                Some(p) if p.name == name => return Some(p),
                Some(p) => current = self.parent(p),
                None => return None,
            }
        }
        None
    }
}
