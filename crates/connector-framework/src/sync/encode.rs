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
        // A map of JSON values always serializes (string keys, finite numbers); the error arm
        // only keeps this total.
        let body = match serde_json::to_vec(&fields) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(id, error = %e, "cannot serialize a document; skipped");
                inner.dropped_too_large.fetch_add(1, Ordering::Relaxed);
                return None;
            }
        };
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
}
