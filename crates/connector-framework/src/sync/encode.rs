//! Documents turned into the `_source` bytes the sink sends.
//!
//! The engine encodes every [`SyncItem::Upsert`](crate::connector::SyncItem::Upsert) on the
//! job's own task. A connector that builds documents on many tasks can encode them there
//! instead, with the job's [`DocumentEncoder`] (given in the
//! [`SyncRequest`](crate::connector::SyncRequest)), and yield
//! [`SyncItem::Encoded`](crate::connector::SyncItem::Encoded): the serialization then runs in
//! parallel, on the thread that built the document while it is still in cache, and the
//! document's allocations are freed where they were made. Both paths give the same bytes.
//!
//! A connector that builds many documents can also skip the map of fields: it writes them
//! one by one into a [`SourceWriter`] (from [`DocumentEncoder::source`]), straight into the
//! `_source` bytes, and [`SourceWriter::finish`] adds what `encode` adds. `encode` itself
//! writes a [`Document`]'s fields through the same writer, so both give the same bytes for the
//! same fields in the same order.

use std::{
    cell::Cell,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use serde_json::{Map, Value};

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
    /// The top-level keys the rules read (their values are kept while a document is written).
    rule_fields: Vec<String>,
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

/// About the bytes the framework adds to a document (`id`, `_timestamp`, flags, generation).
const TAIL_SIZE_HINT: usize = 256;

/// A document's `_source` written field by field by the connector: no map of fields, no copy
/// of their values, strings escaped (SIMD) as they are written. Made by
/// [`DocumentEncoder::source`]; [`finish`](Self::finish) adds the framework's fields and
/// applies the job's rules and size limit.
///
/// Each key at most once: a key written twice is written twice (Elasticsearch refuses such a
/// document; debug builds assert). The keys the framework writes itself — `id`, `_timestamp`,
/// the pipeline flags, `_sync_generation` — are ignored, as [`DocumentEncoder::encode`]
/// replaces them in a [`Document`].
pub struct SourceWriter<'e> {
    inner: &'e Inner,
    buf: Vec<u8>,
    /// An `_attachment` was written: a binary document, exempt from the text size limit.
    has_attachment: bool,
    /// The values of the fields the job's basic rules read (`None`: no rules).
    captured: Option<Map<String, Value>>,
    /// The keys written so far (debug builds check that none is written twice).
    #[cfg(debug_assertions)]
    keys: Vec<String>,
}

impl std::fmt::Debug for SourceWriter<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceWriter")
            .field("bytes", &self.buf.len())
            .finish_non_exhaustive()
    }
}

impl Drop for SourceWriter<'_> {
    fn drop(&mut self) {
        let buf = std::mem::take(&mut self.buf);
        if buf.capacity() <= SCRATCH_KEEP {
            // During the thread's exit there is no scratch to return to: the buffer is freed.
            let _ = SCRATCH.try_with(|scratch| scratch.set(buf));
        }
    }
}

thread_local! {
    /// The buffer documents are written into on this thread (see [`DocumentEncoder::source`]).
    static SCRATCH: Cell<Vec<u8>> = const { Cell::new(Vec::new()) };
}

/// A scratch buffer grown beyond this by one large document is freed after it.
const SCRATCH_KEEP: usize = 1 << 20;

impl SourceWriter<'_> {
    /// A string field.
    pub fn string(&mut self, key: &str, value: &str) {
        if let Some(keep) = self.key(key) {
            write_str(&mut self.buf, value);
            if keep {
                self.capture(key, Value::from(value));
            }
        }
    }

    /// An array of strings.
    pub fn strings<I>(&mut self, key: &str, values: I)
    where
        I: IntoIterator,
        I::Item: AsRef<str>,
    {
        let Some(keep) = self.key(key) else { return };
        let mut kept = Vec::new();
        self.buf.push(b'[');
        for (i, value) in values.into_iter().enumerate() {
            if i > 0 {
                self.buf.push(b',');
            }
            write_str(&mut self.buf, value.as_ref());
            if keep {
                kept.push(Value::from(value.as_ref()));
            }
        }
        self.buf.push(b']');
        if keep {
            self.capture(key, Value::Array(kept));
        }
    }

    /// An unsigned integer field.
    pub fn u64(&mut self, key: &str, value: u64) {
        if let Some(keep) = self.key(key) {
            self.buf
                .extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
            if keep {
                self.capture(key, Value::from(value));
            }
        }
    }

    /// A boolean field.
    pub fn bool(&mut self, key: &str, value: bool) {
        if let Some(keep) = self.key(key) {
            self.buf
                .extend_from_slice(if value { b"true" } else { b"false" });
            if keep {
                self.capture(key, Value::Bool(value));
            }
        }
    }

    /// Binary content as a standard base64 string (the `_attachment` of Elastic's ingest
    /// pipelines), encoded straight into the document: no base64 copy of the bytes first.
    pub fn base64(&mut self, key: &str, bytes: &[u8]) {
        if let Some(keep) = self.key(key) {
            let start = self.buf.len();
            self.buf.push(b'"');
            base64_simd::STANDARD.encode_append(bytes, &mut self.buf);
            self.buf.push(b'"');
            if keep {
                let encoded = String::from_utf8_lossy(&self.buf[start + 1..self.buf.len() - 1]);
                self.capture(key, Value::String(encoded.into_owned()));
            }
        }
    }

    /// Any JSON value (objects, arrays of objects, numbers of any kind, null).
    pub fn value(&mut self, key: &str, value: &Value) {
        if let Some(keep) = self.key(key) {
            write_value(&mut self.buf, value);
            if keep {
                self.capture(key, value.clone());
            }
        }
    }

    /// The document as the sink sends it; `None` when it is not indexed (no id, excluded by
    /// the basic sync rules, or a text document over the size limit: each counted or logged).
    /// `timestamp` is the connector's change marker (`None`: the encoding time).
    pub fn finish(mut self, id: String, timestamp: Option<String>) -> Option<EncodedDocument> {
        let inner = self.inner;
        let id = super::normalize_id(id);
        if id.is_empty() {
            tracing::warn!("skipping a document without id");
            return None;
        }
        if let (Some(rules), Some(fields)) = (&inner.rules, self.captured.as_mut()) {
            fields.insert("id".into(), Value::String(id.clone()));
            if !rules.should_ingest(fields) {
                inner.filtered.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        }
        let ts = timestamp
            .clone()
            .unwrap_or_else(crate::model::now_timestamp);
        self.tail_string("id", &id);
        self.tail_string("_timestamp", &ts);
        for (key, value) in &inner.flags {
            self.tail_key(key);
            self.buf
                .extend_from_slice(if *value { b"true" } else { b"false" });
        }
        self.tail_key(super::GENERATION_FIELD);
        self.buf
            .extend_from_slice(itoa::Buffer::new().format(inner.generation).as_bytes());
        self.buf.push(b'}');
        let len = self.buf.len();
        let cap = inner.max_text_document_size;
        if cap > 0 && len > cap && !self.has_attachment {
            inner.dropped_too_large.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(
                id,
                bytes = len,
                limit = cap,
                "dropping a document larger than bulk.max_text_document_size"
            );
            return None;
        }
        // Exactly the document's bytes: the scratch buffer goes back to the thread.
        Some(EncodedDocument {
            id,
            timestamp,
            body: Bytes::copy_from_slice(&self.buf),
            generation: inner.generation,
        })
    }

    /// Starts field `key`: `None` when the framework writes it itself, else whether the rules
    /// read it.
    fn key(&mut self, key: &str) -> Option<bool> {
        let inner = self.inner;
        if key == "id"
            || key == "_timestamp"
            || key == super::GENERATION_FIELD
            || inner.flags.iter().any(|(flag, _)| *flag == key)
        {
            return None;
        }
        #[cfg(debug_assertions)]
        {
            assert!(
                !self.keys.iter().any(|k| k == key),
                "field {key:?} written twice in one document"
            );
            self.keys.push(key.to_owned());
        }
        self.tail_key(key);
        if key == "_attachment" {
            self.has_attachment = true;
        }
        Some(self.captured.is_some() && inner.rule_fields.iter().any(|f| f == key))
    }

    fn tail_key(&mut self, key: &str) {
        if self.buf.len() > 1 {
            self.buf.push(b',');
        }
        write_str(&mut self.buf, key);
        self.buf.push(b':');
    }

    fn tail_string(&mut self, key: &str, value: &str) {
        self.tail_key(key);
        write_str(&mut self.buf, value);
    }

    fn capture(&mut self, key: &str, value: Value) {
        if let Some(fields) = self.captured.as_mut() {
            fields.insert(key.to_owned(), value);
        }
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
        let mut rule_fields: Vec<String> = rules
            .iter()
            .flat_map(BasicRuleEngine::top_level_fields)
            .map(str::to_owned)
            .collect();
        rule_fields.sort_unstable();
        rule_fields.dedup();
        Self {
            inner: Arc::new(Inner {
                rules,
                rule_fields,
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
        let Document {
            id,
            timestamp,
            fields,
        } = doc;
        // Sized up front: grown from empty, the buffer of a 10 kB document is reallocated and
        // copied about ten times.
        let mut source = self.source(encoded_size_hint(&fields));
        for (key, value) in &fields {
            source.value(key, value);
        }
        source.finish(id, timestamp)
    }

    /// A document written field by field (see [`SourceWriter`]); `capacity` is about the
    /// length of its fields as JSON (the framework's own fields are added to it).
    pub fn source(&self, capacity: usize) -> SourceWriter<'_> {
        let inner = &*self.inner;
        // The thread's scratch buffer: hot in cache, and grown once rather than per document.
        let mut buf = SCRATCH.try_with(Cell::take).unwrap_or_default();
        buf.clear();
        buf.reserve(capacity + TAIL_SIZE_HINT);
        buf.push(b'{');
        SourceWriter {
            inner,
            buf,
            has_attachment: false,
            captured: inner.rules.as_ref().map(|_| Map::new()),
            #[cfg(debug_assertions)]
            keys: Vec::new(),
        }
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

/// Strings longer than this are written without the SIMD escaper, which reserves six bytes of
/// room per byte of input (200 MB for the `_attachment` of a 25 MB message).
const LARGE_STRING: usize = 64 * 1024;

/// Writes `value` as a JSON string, byte for byte what `serde_json` writes. Up to
/// [`LARGE_STRING`] bytes by SIMD; a longer string is copied as it is when nothing in it needs
/// an escape (base64, most text without line breaks), else escaped by `serde_json`, a byte at a
/// time but without the sixfold reserve.
fn write_str(out: &mut Vec<u8>, value: &str) {
    if value.len() <= LARGE_STRING {
        json_escape_simd::escape_into(value, out);
    } else if value.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.reserve(value.len() + 2);
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
    } else {
        // Writing into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
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
        write_str(out, key);
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
        Value::String(s) => write_str(out, s),
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

    fn rule(policy: &str, field: &str, kind: &str, value: &str) -> Value {
        json!({"id": "r", "order": 0, "policy": policy, "field": field, "rule": kind, "value": value})
    }

    /// A mail-like document written field by field.
    fn written(e: &DocumentEncoder, subject: &str, to: &[&str]) -> Option<EncodedDocument> {
        let mut w = e.source(64);
        w.string("subject", subject);
        w.strings("to", to);
        w.u64("size", 42);
        w.bool("has_attachments", true);
        w.value(
            "attachments",
            &json!([{"filename": "a.pdf", "content_type": "application/pdf"}]),
        );
        w.finish("m1".into(), Some("2024-05-01T10:00:00.000000+00:00".into()))
    }

    #[test]
    fn a_written_source_is_the_encoded_document() {
        let e = DocumentEncoder::new(None, vec![("_reduce_whitespace", true)], 3, 0);
        let by_field =
            written(&e, "Q3 \"numbers\"\n", &["amy@x.test", "Bob <b@x.test>"]).expect("written");
        let fields = json!({
            "subject": "Q3 \"numbers\"\n",
            "to": ["amy@x.test", "Bob <b@x.test>"],
            "size": 42,
            "has_attachments": true,
            "attachments": [{"filename": "a.pdf", "content_type": "application/pdf"}],
        });
        let by_map = e
            .encode(Document {
                id: "m1".into(),
                timestamp: Some("2024-05-01T10:00:00.000000+00:00".into()),
                fields: fields.as_object().cloned().unwrap_or_default(),
            })
            .expect("encoded");
        assert_eq!(by_field, by_map);
        let source: Value = serde_json::from_slice(by_field.source()).expect("json");
        assert_eq!(source["id"], "m1");
        assert_eq!(source["_reduce_whitespace"], true);
        assert_eq!(source[super::super::GENERATION_FIELD], 3);
        assert_eq!(source["to"][1], "Bob <b@x.test>");
    }

    #[test]
    fn the_framework_fields_cannot_be_written_by_the_connector() {
        let e = DocumentEncoder::new(None, vec![("_run_ml_inference", false)], 9, 0);
        let mut w = e.source(0);
        w.string("id", "forged");
        w.string("_timestamp", "1970-01-01T00:00:00+00:00");
        w.bool("_run_ml_inference", true);
        w.u64(super::super::GENERATION_FIELD, 1);
        w.string("title", "kept");
        let d = w.finish("real".into(), None).expect("written");
        let source: serde_json::Map<String, Value> =
            serde_json::from_slice(d.source()).expect("json");
        assert_eq!(source["id"], "real");
        assert_eq!(source["_run_ml_inference"], false);
        assert_eq!(source[super::super::GENERATION_FIELD], 9);
        assert_ne!(source["_timestamp"], "1970-01-01T00:00:00+00:00");
        // Each key once: the forged ones were not written at all.
        let text = String::from_utf8_lossy(d.source());
        assert_eq!(text.matches("\"id\":").count(), 1, "{text}");
        assert_eq!(source.len(), 5);
    }

    #[test]
    fn basic_rules_see_the_written_fields() {
        let engine = |rules: &[Value]| {
            DocumentEncoder::new(
                Some(BasicRuleEngine::new(rules).expect("rules")),
                Vec::new(),
                1,
                0,
            )
        };
        // On a string, on an element of an array, on a nested path, on the id.
        let e = engine(&[rule("exclude", "subject", "contains", "secret")]);
        assert!(written(&e, "top secret", &[]).is_none());
        assert!(written(&e, "public", &[]).is_some());
        let e = engine(&[rule("exclude", "to", "equals", "amy@x.test")]);
        assert!(written(&e, "s", &["bob@x.test", "amy@x.test"]).is_none());
        assert!(written(&e, "s", &["bob@x.test"]).is_some());
        let e = engine(&[rule(
            "exclude",
            "attachments.content_type",
            "equals",
            "application/pdf",
        )]);
        assert!(written(&e, "s", &[]).is_none());
        let e = engine(&[rule("exclude", "id", "equals", "m1")]);
        assert!(written(&e, "s", &[]).is_none());
        let e = engine(&[rule("exclude", "size", ">", "41")]);
        assert!(written(&e, "s", &[]).is_none());
        assert_eq!(e.filtered(), 1);
        let e = engine(&[rule("include", "has_attachments", "equals", "false")]);
        // An include rule that does not match leaves the document to the default (index).
        assert!(written(&e, "s", &[]).is_some());
    }

    #[test]
    fn the_size_limit_spares_documents_with_an_attachment() {
        let e = DocumentEncoder::new(None, Vec::new(), 1, 128);
        let mut w = e.source(0);
        w.string("body", &"x".repeat(300));
        assert!(w.finish("a".into(), None).is_none());
        let mut w = e.source(0);
        w.string("body", &"x".repeat(300));
        w.string("_attachment", "aGVsbG8=");
        assert!(w.finish("b".into(), None).is_some());
        assert_eq!(e.dropped_too_large(), 1);
        assert!(e.source(0).finish(String::new(), None).is_none());
    }

    #[test]
    fn large_strings_are_written_as_serde_json_writes_them_without_a_sixfold_reserve() {
        let base64 = "QUJD".repeat(LARGE_STRING); // 256 KiB, nothing to escape
        let text = "line \"one\"\r\n\ttab é\u{1}".repeat(LARGE_STRING / 8);
        for value in [base64.as_str(), text.as_str(), "short \"quoted\""] {
            let mut out = Vec::new();
            write_str(&mut out, value);
            assert_eq!(out, serde_json::to_vec(value).expect("json"));
            if value.len() > LARGE_STRING {
                assert!(
                    out.capacity() < 3 * value.len(),
                    "{} for {}",
                    out.capacity(),
                    value.len()
                );
            }
        }
    }

    #[test]
    fn binary_content_is_written_as_standard_base64() {
        let e = DocumentEncoder::new(None, Vec::new(), 1, 16);
        let bytes: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut w = e.source(0);
        w.base64("_attachment", &bytes);
        // A binary document: the text size limit does not apply.
        let d = w.finish("a".into(), None).expect("written");
        let source: Value = serde_json::from_slice(d.source()).expect("json");
        let text = source["_attachment"].as_str().expect("string");
        assert_eq!(text, base64_simd::STANDARD.encode_to_string(&bytes));
    }

    #[test]
    fn writers_alive_at_once_on_one_thread_each_get_their_own_buffer() {
        let e = DocumentEncoder::default();
        let mut outer = e.source(16);
        outer.string("a", "outer");
        let mut inner = e.source(16);
        inner.string("b", "inner");
        let inner = inner.finish("i".into(), None).expect("inner");
        outer.string("c", "still outer");
        let outer = outer.finish("o".into(), None).expect("outer");
        let read =
            |d: &EncodedDocument| -> Value { serde_json::from_slice(d.source()).expect("json") };
        assert_eq!(read(&inner)["b"], "inner");
        assert!(read(&inner).get("a").is_none());
        assert_eq!(read(&outer)["a"], "outer");
        assert_eq!(read(&outer)["c"], "still outer");
        // A writer dropped unfinished gives its buffer back; the next document starts clean.
        let mut dropped = e.source(16);
        dropped.string("junk", "x");
        drop(dropped);
        let next = e.source(0).finish("n".into(), None).expect("next");
        assert!(read(&next).get("junk").is_none());
    }

    #[test]
    #[should_panic(expected = "written twice")]
    fn a_key_written_twice_is_a_bug() {
        let e = DocumentEncoder::default();
        let mut w = e.source(0);
        w.string("subject", "a");
        w.strings("subject", ["b"]);
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
