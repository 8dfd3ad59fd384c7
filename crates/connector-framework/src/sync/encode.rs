//! Documents turned into the `_source` bytes the sink sends.
//!
//! The engine encodes every [`SyncItem::Upsert`](crate::connector::SyncItem::Upsert) on the
//! job's own task. A connector that builds documents on many tasks can encode them there
//! instead, with the job's [`DocumentEncoder`] (given in the
//! [`SyncRequest`](crate::connector::SyncRequest)), and yield
//! [`SyncItem::Encoded`](crate::connector::SyncItem::Encoded): the serialization then runs in
//! parallel, on the thread that built the document while it is still in cache, and the
//! document's allocations are freed where they were made. Both paths give the same bytes.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use bytes::Bytes;
use serde_json::Value;

use crate::{connector::Document, filtering::BasicRuleEngine};

/// Encodes documents for one job: adds `id`, `_timestamp`, the pipeline flags and the sync
/// generation, applies the basic sync rules and the size limit of text documents. Cheap to
/// clone (shared counters).
#[derive(Clone, Default)]
pub struct DocumentEncoder {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    rules: Option<BasicRuleEngine>,
    flags: Vec<(&'static str, bool)>,
    generation: u64,
    /// Text documents (no `_attachment`) over this many bytes are dropped (0: no limit).
    max_text_document_size: usize,
    filtered: AtomicU64,
    dropped_too_large: AtomicU64,
}

impl std::fmt::Debug for DocumentEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DocumentEncoder")
            .field("rules", &self.inner.rules.is_some())
            .field("flags", &self.inner.flags)
            .field("generation", &self.inner.generation)
            .finish_non_exhaustive()
    }
}

/// A document ready for the sink, made by [`DocumentEncoder::encode`].
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedDocument {
    pub(crate) id: String,
    pub(crate) timestamp: Option<String>,
    pub(crate) body: Bytes,
    pub(crate) generation: u64,
}

impl EncodedDocument {
    /// The `_id` (normalized: ids over 512 bytes are hashed).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The connector's change marker (`None`: the encoding time was used).
    pub fn timestamp(&self) -> Option<&str> {
        self.timestamp.as_deref()
    }

    /// The serialized `_source`.
    pub fn source(&self) -> &[u8] {
        &self.body
    }
}

impl DocumentEncoder {
    /// An encoder for documents of sync `generation` with these pipeline `flags` (the engine
    /// makes the job's own; tools and benchmarks make one to encode as a job would).
    pub fn new(
        rules: Option<BasicRuleEngine>,
        flags: Vec<(&'static str, bool)>,
        generation: u64,
        max_text_document_size: usize,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                rules,
                flags,
                generation,
                max_text_document_size,
                filtered: AtomicU64::new(0),
                dropped_too_large: AtomicU64::new(0),
            }),
        }
    }

    /// The document as the sink sends it; `None` when it is not indexed (no id, excluded by
    /// the basic sync rules, or a text document over the size limit: each counted or logged).
    pub fn encode(&self, doc: Document) -> Option<EncodedDocument> {
        let inner = &*self.inner;
        let Document {
            id,
            timestamp,
            mut fields,
        } = doc;
        let id = super::normalize_id(id);
        if id.is_empty() {
            tracing::warn!("skipping a document without id");
            return None;
        }
        fields.insert("id".into(), Value::String(id.clone()));
        if let Some(rules) = &inner.rules
            && !rules.should_ingest(&fields)
        {
            inner.filtered.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let ts = timestamp
            .clone()
            .unwrap_or_else(crate::model::now_timestamp);
        fields.insert("_timestamp".into(), Value::String(ts));
        for (k, v) in &inner.flags {
            fields.insert((*k).into(), Value::Bool(*v));
        }
        fields.insert(
            super::GENERATION_FIELD.into(),
            Value::from(inner.generation),
        );
        // Sized up front: grown from empty, the buffer of a 10 kB document is reallocated and
        // copied about ten times.
        let mut body = Vec::with_capacity(encoded_size_hint(&fields));
        write_object(&mut body, &fields);
        let cap = inner.max_text_document_size;
        if cap > 0 && body.len() > cap && !fields.contains_key("_attachment") {
            inner.dropped_too_large.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                id,
                bytes = body.len(),
                limit = cap,
                "dropping a document larger than bulk.max_text_document_size"
            );
            return None;
        }
        Some(EncodedDocument {
            id,
            timestamp,
            body: Bytes::from(body),
            generation: inner.generation,
        })
    }

    /// Documents excluded by the basic sync rules so far.
    pub fn filtered(&self) -> u64 {
        self.inner.filtered.load(Ordering::Relaxed)
    }

    /// Documents dropped for their size so far.
    pub fn dropped_too_large(&self) -> u64 {
        self.inner.dropped_too_large.load(Ordering::Relaxed)
    }

    pub(crate) fn generation(&self) -> u64 {
        self.inner.generation
    }
}

/// Writes `map` as compact JSON, byte for byte what `serde_json::to_vec` writes, with strings
/// escaped by SIMD (`serde_json` looks at one byte at a time; the body text of a document is
/// most of its bytes).
fn write_object(out: &mut Vec<u8>, map: &serde_json::Map<String, Value>) {
    out.push(b'{');
    for (i, (key, value)) in map.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        json_escape_simd::escape_into(key, out);
        out.push(b':');
        write_value(out, value);
    }
    out.push(b'}');
}

fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        // Finite by construction (a `Number` cannot hold NaN or infinities): cannot fail.
        Value::Number(n) => {
            let _ = serde_json::to_writer(&mut *out, n);
        }
        Value::String(s) => json_escape_simd::escape_into(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(map) => write_object(out, map),
    }
}

/// About the length of `fields` as JSON (exact for keys, numbers aside, and strings without
/// escapes); a little is added for escapes, so a buffer of this size rarely grows.
fn encoded_size_hint(fields: &serde_json::Map<String, Value>) -> usize {
    fn value(v: &Value) -> usize {
        match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 20,
            Value::String(s) => s.len() + 2,
            Value::Array(a) => 2 + a.iter().map(|v| value(v) + 1).sum::<usize>(),
            Value::Object(o) => object(o),
        }
    }
    fn object(o: &serde_json::Map<String, Value>) -> usize {
        2 + o.iter().map(|(k, v)| k.len() + 4 + value(v)).sum::<usize>()
    }
    let n = object(fields);
    n + n / 32 + 16
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn doc(id: &str, body: &str) -> Document {
        Document {
            id: id.into(),
            timestamp: Some("2024-05-01T10:00:00.000000+00:00".into()),
            fields: json!({"body": body})
                .as_object()
                .cloned()
                .unwrap_or_default(),
        }
    }

    #[test]
    fn adds_the_framework_fields() {
        let e = DocumentEncoder::new(None, vec![("_reduce_whitespace", true)], 7, 0);
        let d = e.encode(doc("a", "hello")).expect("encoded");
        assert_eq!(d.id(), "a");
        let source: Value = serde_json::from_slice(d.source()).expect("json");
        assert_eq!(
            source,
            json!({
                "body": "hello",
                "id": "a",
                "_timestamp": "2024-05-01T10:00:00.000000+00:00",
                "_reduce_whitespace": true,
                super::super::GENERATION_FIELD: 7,
            })
        );
    }

    #[test]
    fn size_limit_and_missing_id_are_not_encoded() {
        let e = DocumentEncoder::new(None, Vec::new(), 1, 128);
        assert!(e.encode(doc("a", &"x".repeat(300))).is_none());
        assert_eq!(e.dropped_too_large(), 1);
        assert!(e.encode(doc("", "short")).is_none());
        assert!(e.encode(doc("b", "short")).is_some());
        // Clones share the counters.
        let clone = e.clone();
        assert!(clone.encode(doc("c", &"y".repeat(300))).is_none());
        assert_eq!(e.dropped_too_large(), 2);
    }

    #[test]
    fn the_size_hint_covers_a_typical_document() {
        let fields = json!({
            "subject": "Quarterly numbers",
            "body": "Hello Amy, the figures are attached and the draft is in the shared folder.\n"
                .repeat(40),
            "to": ["Amy <amy@example.com>", "bob@example.com"],
            "size": 123_456_789u64,
            "score": -1.5e-7,
            "has_attachments": true,
            "attachments": [{"filename": "q3.pdf", "content_type": "application/pdf", "size": 5}],
            "thread_id": null,
        });
        let fields = fields.as_object().expect("object");
        let len = serde_json::to_vec(fields).expect("json").len();
        let hint = encoded_size_hint(fields);
        // Escapes (a newline per line of text) are the only growth: covered by the margin.
        assert!(hint >= len, "{hint} < {len}");
        assert!(hint <= len + len / 10 + 128, "{hint} far above {len}");
    }

    fn json_value() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(Value::from),
            // Any characters: controls, quotes, backslashes, non-ASCII, long runs.
            any::<String>().prop_map(Value::String),
            "[ -~\\n\\t\\u{0}-\\u{1f}\"\\\\é€😀]{0,300}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                proptest::collection::vec((any::<String>(), inner), 0..8)
                    .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// The writer gives exactly serde_json's bytes, for any document.
        #[test]
        fn writes_what_serde_json_writes(
            fields in proptest::collection::vec((".{0,12}", json_value()), 0..12),
        ) {
            let map: serde_json::Map<String, Value> = fields.into_iter().collect();
            let mut ours = Vec::new();
            write_object(&mut ours, &map);
            let theirs = serde_json::to_vec(&map).expect("json");
            proptest::prop_assert_eq!(
                String::from_utf8_lossy(&ours),
                String::from_utf8_lossy(&theirs)
            );
        }
    }
}
