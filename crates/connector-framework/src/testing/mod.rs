//! A built-in test source: [`GeneratorConnector`] (service type `generator`) yields N documents
//! deterministically, cheaply (one small body string per document, nothing kept), with knobs to
//! simulate what real sources do: deletions (a drop range), changes (revisions), failures
//! half-way, checkpoints, incremental changes and document-level security.
//!
//! Document `i` (0 ≤ i < `count`) has id `doc-<i, 8 digits>`, a `title`, a `body` of about
//! `doc_size` bytes derived from `seed` and `i`, a `number` field `i`, an `owner` (the
//! `users[i % len]` when `users` is set) and `_timestamp` `2024-01-01T00:00:00.<rev>+00:00` where
//! `rev` is `revision` for documents with `i % changed_every == 0` and 0 otherwise.

use futures::stream::{self, BoxStream, StreamExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::{
    connector::{
        Completion, Connector, ConnectorFeatures, Document, DocumentEncoder, SyncEvent, SyncItem,
        SyncRequest, SyncStream,
    },
    source::SourceError,
    sync::dls::{ACCESS_CONTROL_FIELD, access_control_query},
};

fn d_count() -> u64 {
    1000
}
fn d_size() -> usize {
    256
}
fn d_checkpoint() -> u64 {
    0
}

/// Configuration of the generator.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct GeneratorConfig {
    /// Number of documents.
    #[serde(default = "d_count")]
    #[schemars(range(min = 0))]
    #[schemars(extend("x-order" = 1))]
    pub count: u64,
    /// Seed of the generated text.
    #[serde(default)]
    #[schemars(extend("x-order" = 2))]
    pub seed: u64,
    /// Approximate body size in bytes.
    #[serde(default = "d_size")]
    #[schemars(extend("x-order" = 3))]
    pub doc_size: usize,
    /// Fail the sync (transient source error) after yielding this many documents.
    #[serde(default)]
    #[schemars(extend("x-order" = 4))]
    pub fail_after: Option<u64>,
    /// First document index of the range the source no longer has.
    #[serde(default)]
    #[schemars(extend("x-order" = 5))]
    pub drop_from: u64,
    /// Size of that range (0: nothing dropped).
    #[serde(default)]
    #[schemars(extend("x-order" = 6))]
    pub drop_count: u64,
    /// Revision of changed documents (changes their `_timestamp` and `revision` field).
    #[serde(default)]
    #[schemars(extend("x-order" = 7))]
    pub revision: u64,
    /// Documents with `i % changed_every == 0` carry `revision` (0: none changes).
    #[serde(default)]
    #[schemars(extend("x-order" = 8))]
    pub changed_every: u64,
    /// Yield a checkpoint every this many documents (0: never).
    #[serde(default = "d_checkpoint")]
    #[schemars(extend("x-order" = 9))]
    pub checkpoint_every: u64,
    /// Owners of the documents (round robin) and identities of the access-control sync.
    #[serde(default)]
    #[schemars(extend("x-order" = 10))]
    pub users: Vec<String>,
    /// Turn document-level security on (the connector feature must be on too).
    #[serde(default)]
    #[schemars(extend("x-order" = 11, "x-label" = "Use document level security"))]
    pub use_document_level_security: bool,
    /// Number of partitions: document `i` has `partition: "p<i % partitions>"` (0: no field).
    #[serde(default)]
    #[schemars(extend("x-order" = 12))]
    pub partitions: u64,
    /// Incremental syncs re-enumerate only this partition and end it with
    /// `PartitionComplete` (documents of the partition not yielded are deleted).
    #[serde(default)]
    #[schemars(extend("x-order" = 13))]
    pub complete_partition: Option<u64>,
    /// Who encodes the documents: the engine (plain upserts), the source with the job's
    /// encoder, or the source with an encoder of no job (which the engine refuses).
    #[serde(default)]
    #[schemars(extend("x-order" = 14))]
    pub encode: EncodeBy,
    /// Milliseconds between two events (0: as fast as the sync takes them): a slow source.
    #[serde(default)]
    #[schemars(extend("x-order" = 15))]
    pub pace_ms: u64,
}

/// See [`GeneratorConfig::encode`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EncodeBy {
    #[default]
    Engine,
    Source,
    ForeignEncoder,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            count: d_count(),
            seed: 0,
            doc_size: d_size(),
            fail_after: None,
            drop_from: 0,
            drop_count: 0,
            revision: 0,
            changed_every: 0,
            checkpoint_every: d_checkpoint(),
            users: Vec::new(),
            use_document_level_security: false,
            partitions: 0,
            complete_partition: None,
            encode: EncodeBy::Engine,
            pace_ms: 0,
        }
    }
}

impl GeneratorConfig {
    /// The configuration as stored on a connector document (rich objects with `value`).
    pub fn to_configuration(&self) -> Map<String, Value> {
        let mut out = crate::schema::default_configuration::<GeneratorConfig>();
        if let Ok(Value::Object(values)) = serde_json::to_value(self) {
            for (k, v) in values {
                if let Some(Value::Object(field)) = out.get_mut(&k) {
                    field.insert("value".into(), v);
                }
            }
        }
        out
    }

    /// Is document `i` dropped from the source?
    pub fn is_dropped(&self, i: u64) -> bool {
        i >= self.drop_from && i < self.drop_from.saturating_add(self.drop_count)
    }

    /// Revision of document `i`.
    pub fn revision_of(&self, i: u64) -> u64 {
        if self.changed_every > 0 && i.is_multiple_of(self.changed_every) {
            self.revision
        } else {
            0
        }
    }

    /// Number of documents the source has.
    pub fn live_count(&self) -> u64 {
        let dropped = self
            .count
            .saturating_sub(self.drop_from)
            .min(self.drop_count);
        self.count - dropped
    }
}

/// Id of document `i`.
pub fn doc_id(i: u64) -> String {
    format!("doc-{i:08}")
}

/// Value of the `partition` field of partition `p`.
pub fn partition_name(p: u64) -> String {
    format!("p{p}")
}

/// Cross-run cursor: the revision last synced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GeneratorCursor {
    pub revision: u64,
}

/// In-run checkpoint: the next document index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct GeneratorCheckpoint {
    pub next: u64,
}

/// The generator source.
#[derive(Debug, Clone, Default)]
pub struct GeneratorConnector {
    pub features: ConnectorFeatures,
}

impl GeneratorConnector {
    /// Every feature on.
    pub fn new() -> Self {
        Self {
            features: ConnectorFeatures {
                basic_rules: true,
                advanced_rules: false,
                document_level_security: true,
                incremental_sync: true,
            },
        }
    }
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

const WORDS: [&str; 16] = [
    "alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliet",
    "kilo", "lima", "mike", "november", "oscar", "papa",
];

/// Document `i` of a configuration.
pub fn document(cfg: &GeneratorConfig, i: u64, dls: bool) -> Document {
    let mut state = splitmix(cfg.seed ^ i.wrapping_mul(0x2545_F491_4F6C_DD1D));
    let mut body = String::with_capacity(cfg.doc_size + 10);
    while body.len() < cfg.doc_size {
        state = splitmix(state);
        body.push_str(WORDS[(state & 15) as usize]);
        body.push(' ');
    }
    let rev = cfg.revision_of(i);
    let mut fields = Map::new();
    fields.insert(
        "title".into(),
        Value::String(format!("document {i} {}", WORDS[(i % 16) as usize])),
    );
    fields.insert("body".into(), Value::String(body));
    fields.insert("number".into(), json!(i));
    fields.insert("revision".into(), json!(rev));
    if !cfg.users.is_empty() {
        let owner = &cfg.users[(i % cfg.users.len() as u64) as usize];
        fields.insert("owner".into(), Value::String(owner.clone()));
        if dls {
            fields.insert(ACCESS_CONTROL_FIELD.into(), json!([owner]));
        }
    }
    if cfg.partitions > 0 {
        fields.insert(
            "partition".into(),
            Value::String(partition_name(i % cfg.partitions)),
        );
    }
    Document {
        id: doc_id(i),
        timestamp: Some(format!("2024-01-01T00:00:00.{rev:06}+00:00")),
        fields,
    }
}

type Event = Result<SyncEvent<GeneratorCursor, GeneratorCheckpoint>, SourceError>;

/// The event sequence of a sync: documents from `start` (skipping dropped ones, or deleting them
/// in delta mode), checkpoints, an optional failure and the completion.
struct Walk<'a> {
    cfg: &'a GeneratorConfig,
    i: u64,
    yielded: u64,
    dls: bool,
    /// Delta mode (incremental with a cursor): only changed documents, dropped ones deleted.
    delta_since: Option<u64>,
    checkpoint_due: bool,
    finished: bool,
    /// Re-enumerate only this partition and end it with `PartitionComplete`.
    partition: Option<u64>,
    /// Encode upserts here (`SyncItem::Encoded`) with this encoder.
    encoder: Option<DocumentEncoder>,
}

impl Walk<'_> {
    fn next_event(&mut self) -> Option<Event> {
        if self.finished {
            return None;
        }
        if self.checkpoint_due {
            self.checkpoint_due = false;
            return Some(Ok(SyncEvent::Item(SyncItem::Checkpoint(
                GeneratorCheckpoint { next: self.i },
            ))));
        }
        loop {
            if self.i >= self.cfg.count {
                if let Some(p) = self.partition.take() {
                    return Some(Ok(SyncEvent::Item(SyncItem::PartitionComplete {
                        field: "partition".into(),
                        value: Value::String(partition_name(p)),
                    })));
                }
                self.finished = true;
                return Some(Ok(SyncEvent::Complete(Completion {
                    cursor: Some(GeneratorCursor {
                        revision: self.cfg.revision,
                    }),
                })));
            }
            if let Some(k) = self.cfg.fail_after
                && self.yielded >= k
            {
                self.finished = true;
                return Some(Err(SourceError::Transient(format!(
                    "generator failure injected after {k} documents"
                ))));
            }
            let i = self.i;
            self.i += 1;
            let every = self.cfg.checkpoint_every;
            if every > 0 && self.i.is_multiple_of(every) {
                self.checkpoint_due = true;
            }
            let in_partition = |p: u64| self.cfg.partitions > 0 && i % self.cfg.partitions == p;
            let item = match (self.partition, self.delta_since) {
                (Some(p), _) if !in_partition(p) || self.cfg.is_dropped(i) => None,
                (Some(_), _) => Some(SyncItem::Upsert(document(self.cfg, i, self.dls))),
                (None, delta) => match delta {
                    None if self.cfg.is_dropped(i) => None,
                    None => Some(SyncItem::Upsert(document(self.cfg, i, self.dls))),
                    Some(_) if self.cfg.is_dropped(i) => Some(SyncItem::Delete { id: doc_id(i) }),
                    Some(since) if self.cfg.revision_of(i) > since => {
                        Some(SyncItem::Upsert(document(self.cfg, i, self.dls)))
                    }
                    Some(_) => None,
                },
            };
            let item = match (item, &self.encoder) {
                // Left out by the encoder (rules, size): nothing to yield.
                (Some(SyncItem::Upsert(doc)), Some(encoder)) => {
                    encoder.encode(doc).map(SyncItem::Encoded)
                }
                (item, _) => item,
            };
            if let Some(item) = item {
                self.yielded += 1;
                return Some(Ok(SyncEvent::Item(item)));
            }
            if self.checkpoint_due {
                self.checkpoint_due = false;
                return Some(Ok(SyncEvent::Item(SyncItem::Checkpoint(
                    GeneratorCheckpoint { next: self.i },
                ))));
            }
        }
    }
}

fn walk<'a>(
    cfg: &'a GeneratorConfig,
    request: &SyncRequest<GeneratorCursor, GeneratorCheckpoint>,
    delta_since: Option<u64>,
    partition: Option<u64>,
) -> SyncStream<'a, GeneratorCursor, GeneratorCheckpoint> {
    let mut w = Walk {
        partition,
        cfg,
        i: request.checkpoint.map_or(0, |c| c.next),
        yielded: 0,
        dls: request.dls_enabled,
        delta_since,
        checkpoint_due: false,
        finished: false,
        encoder: match cfg.encode {
            EncodeBy::Engine => None,
            EncodeBy::Source => Some(request.encoder.clone()),
            EncodeBy::ForeignEncoder => Some(DocumentEncoder::default()),
        },
    };
    let pace = std::time::Duration::from_millis(cfg.pace_ms);
    let events = stream::iter(std::iter::from_fn(move || w.next_event()));
    if pace.is_zero() {
        events.boxed()
    } else {
        events
            .then(move |event| async move {
                tokio::time::sleep(pace).await;
                event
            })
            .boxed()
    }
}

#[async_trait::async_trait]
impl Connector for GeneratorConnector {
    const SERVICE_TYPE: &'static str = "generator";
    const DISPLAY_NAME: &'static str = "Generator (test source)";
    type Config = GeneratorConfig;
    type Cursor = GeneratorCursor;
    type Checkpoint = GeneratorCheckpoint;

    fn features(&self) -> ConnectorFeatures {
        self.features
    }

    fn dls_enabled(&self, config: &GeneratorConfig) -> bool {
        config.use_document_level_security
    }

    async fn validate_config(&self, _config: &GeneratorConfig) -> Result<(), SourceError> {
        Ok(())
    }

    async fn ping(&self, _config: &GeneratorConfig) -> Result<(), SourceError> {
        Ok(())
    }

    fn full_sync<'a>(
        &'a self,
        config: &'a GeneratorConfig,
        request: SyncRequest<GeneratorCursor, GeneratorCheckpoint>,
    ) -> SyncStream<'a, GeneratorCursor, GeneratorCheckpoint> {
        walk(config, &request, None, None)
    }

    fn incremental_sync<'a>(
        &'a self,
        config: &'a GeneratorConfig,
        request: SyncRequest<GeneratorCursor, GeneratorCheckpoint>,
    ) -> SyncStream<'a, GeneratorCursor, GeneratorCheckpoint> {
        let since = request.cursor.map(|c| c.revision);
        walk(config, &request, since, config.complete_partition)
    }

    fn access_control<'a>(
        &'a self,
        config: &'a GeneratorConfig,
    ) -> BoxStream<'a, Result<Document, SourceError>> {
        stream::iter(config.users.iter().map(|u| {
            let mut fields = Map::new();
            fields.insert("identity".into(), json!({"email": u}));
            fields.insert("query".into(), access_control_query(&[Some(u.as_str())]));
            Ok(Document {
                id: u.clone(),
                timestamp: Some("2024-01-01T00:00:00.000000+00:00".into()),
                fields,
            })
        }))
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(
        cfg: &GeneratorConfig,
        req: SyncRequest<GeneratorCursor, GeneratorCheckpoint>,
        delta: Option<u64>,
    ) -> Vec<Event> {
        futures::executor::block_on(walk(cfg, &req, delta, None).collect::<Vec<_>>())
    }

    fn req() -> SyncRequest<GeneratorCursor, GeneratorCheckpoint> {
        SyncRequest {
            filtering: Default::default(),
            sync_rules_enabled: false,
            dls_enabled: false,
            cursor: None,
            checkpoint: None,
            encoder: Default::default(),
        }
    }

    #[test]
    fn deterministic_and_sized() {
        let cfg = GeneratorConfig::default();
        let a = document(&cfg, 7, false);
        let b = document(&cfg, 7, false);
        assert_eq!(a, b);
        let body = a.fields["body"].as_str().unwrap();
        assert!(body.len() >= 256 && body.len() < 256 + 12);
        assert_ne!(document(&cfg, 8, false).fields["body"], a.fields["body"]);
    }

    #[test]
    fn drops_checkpoints_and_completes() {
        let cfg = GeneratorConfig {
            count: 10,
            drop_from: 2,
            drop_count: 3,
            checkpoint_every: 4,
            ..Default::default()
        };
        let events = collect(&cfg, req(), None);
        let upserts = events
            .iter()
            .filter(|e| matches!(e, Ok(SyncEvent::Item(SyncItem::Upsert(_)))))
            .count();
        assert_eq!(upserts as u64, cfg.live_count());
        assert_eq!(upserts, 7);
        let cps: Vec<u64> = events
            .iter()
            .filter_map(|e| match e {
                Ok(SyncEvent::Item(SyncItem::Checkpoint(c))) => Some(c.next),
                _ => None,
            })
            .collect();
        assert_eq!(cps, [4, 8]);
        assert!(matches!(events.last(), Some(Ok(SyncEvent::Complete(_)))));
    }

    #[test]
    fn failure_and_resume() {
        let cfg = GeneratorConfig {
            count: 10,
            fail_after: Some(3),
            ..Default::default()
        };
        let events = collect(&cfg, req(), None);
        assert_eq!(events.len(), 4);
        assert!(events[3].is_err());
        let cfg = GeneratorConfig {
            count: 10,
            ..Default::default()
        };
        let mut r = req();
        r.checkpoint = Some(GeneratorCheckpoint { next: 6 });
        assert_eq!(collect(&cfg, r, None).len(), 5);
    }

    #[test]
    fn delta_mode_yields_changes_and_deletes() {
        let cfg = GeneratorConfig {
            count: 20,
            revision: 2,
            changed_every: 5,
            drop_from: 18,
            drop_count: 2,
            ..Default::default()
        };
        let events = collect(&cfg, req(), Some(1));
        let mut up = 0;
        let mut del = 0;
        for e in &events {
            match e {
                Ok(SyncEvent::Item(SyncItem::Upsert(_))) => up += 1,
                Ok(SyncEvent::Item(SyncItem::Delete { .. })) => del += 1,
                _ => {}
            }
        }
        assert_eq!((up, del), (4, 2));
    }
}
