//! The typed connector trait that connector authors implement.
//!
//! A connector has a typed configuration (`Config`), a cross-run cursor (`Cursor`, stored on the
//! connector document as `sync_cursor` after a completed content sync) and an in-run checkpoint
//! (`Checkpoint`, stored on the job document so a suspended or crashed job resumes where it
//! stopped). All three are serde + `JsonSchema`.
//!
//! Syncs are streams of [`SyncItem`]s. The framework indexes documents through its bounded sink;
//! a [`SyncItem::Checkpoint`] is persisted only after every document yielded before it was
//! acknowledged by Elasticsearch; [`SyncEvent::Complete`] says the enumeration was complete (only
//! then does a full sync delete what the source no longer has) and carries the new cursor.
//!
//! The blanket implementation that erases a [`Connector`] into a
//! [`DynConnector`](crate::source::DynConnector) lives in the `sync` module.

use futures::stream::BoxStream;
use schemars::JsonSchema;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::{Map, Value};

pub use crate::sync::encode::{DocumentEncoder, EncodedDocument, SourceWriter};
use crate::{model::FilteringRules, source::SourceError};

/// A document for the content or ACL index. `id` becomes `_id`; `fields` is the `_source`
/// (the framework adds `id`, pipeline flags and bookkeeping fields).
#[derive(Debug, Clone, PartialEq)]
pub struct Document {
    pub id: String,
    /// ISO-8601 change marker (`_timestamp`): equal timestamps mean an unchanged document.
    pub timestamp: Option<String>,
    pub fields: Map<String, Value>,
}

/// One element of a sync stream.
#[derive(Debug, Clone)]
pub enum SyncItem<K> {
    /// Index (full replace) this document (encoded by the framework on the job's task).
    Upsert(Document),
    /// Index (full replace) a document the connector already encoded with the request's
    /// [`DocumentEncoder`] (see [`crate::sync::encode`]).
    Encoded(EncodedDocument),
    /// Remove the document with this id (incremental syncs).
    Delete { id: String },
    /// Everything yielded before this item is covered by this checkpoint.
    Checkpoint(K),
    /// Documents whose `field` equals `value` and that were not (re)yielded by this job are gone
    /// from the source: delete them once all prior items are acknowledged. Lets a connector
    /// re-enumerate one partition (e.g. one mailbox whose history expired) inside an
    /// incremental sync.
    PartitionComplete { field: String, value: Value },
}

/// The last item of a sync that enumerated everything it was asked to.
#[derive(Debug, Clone)]
pub struct Completion<C> {
    /// The new cross-run cursor (content syncs); `None` keeps the stored one.
    pub cursor: Option<C>,
}

/// What a connector supports; becomes the `features` object of the connector document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConnectorFeatures {
    pub basic_rules: bool,
    pub advanced_rules: bool,
    pub document_level_security: bool,
    pub incremental_sync: bool,
}

/// What a sync is given besides the configuration.
#[derive(Debug, Clone)]
pub struct SyncRequest<C, K> {
    /// Active sync rules of the job (advanced rules for the connector to apply; basic rules may
    /// be pushed down by the connector, the framework applies them to every document anyway).
    pub filtering: FilteringRules,
    /// Are sync rules enabled for this connector?
    pub sync_rules_enabled: bool,
    /// Is document-level security on (connector feature and the connector's own toggle)?
    pub dls_enabled: bool,
    /// Stored cross-run cursor (incremental syncs; `None` for full syncs or when never synced).
    pub cursor: Option<C>,
    /// Checkpoint of an earlier, interrupted run of this job.
    pub checkpoint: Option<K>,
    /// This job's document encoder, for connectors that encode on their own tasks
    /// ([`SyncItem::Encoded`]). The default one (tests) has no rules, flags nor generation.
    pub encoder: DocumentEncoder,
}

/// A stream of sync items ending (on success) with a [`Completion`].
pub type SyncStream<'a, C, K> = BoxStream<'a, Result<SyncEvent<C, K>, SourceError>>;

/// An item of a [`SyncStream`].
#[derive(Debug, Clone)]
pub enum SyncEvent<C, K> {
    Item(SyncItem<K>),
    /// Must be the last event; without it the sync counts as truncated (nothing is deleted and
    /// the cursor is not advanced).
    Complete(Completion<C>),
}

/// A data source.
#[async_trait::async_trait]
pub trait Connector: Send + Sync + 'static {
    /// `service_type` stored on connector documents (e.g. `gmail`).
    const SERVICE_TYPE: &'static str;
    /// Human name (e.g. "Gmail").
    const DISPLAY_NAME: &'static str;

    /// Typed configuration; its JSON Schema (with the `x-*` UI extensions of the `schema` module)
    /// generates the rich configurable fields.
    type Config: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static;
    /// Cross-run cursor.
    type Cursor: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static;
    /// In-run checkpoint.
    type Checkpoint: Serialize + DeserializeOwned + JsonSchema + Send + Sync + 'static;

    fn features(&self) -> ConnectorFeatures;

    /// Whether the connector's own configuration turns document-level security on (e.g. Gmail's
    /// `use_document_level_security` toggle). The feature flag must be on too.
    fn dls_enabled(&self, _config: &Self::Config) -> bool {
        false
    }

    /// Remote checks of a configuration (credentials, permissions). Local checks (types,
    /// required fields, validations) are done by the framework before this is called.
    async fn validate_config(&self, config: &Self::Config) -> Result<(), SourceError>;

    /// Is the backend reachable?
    async fn ping(&self, config: &Self::Config) -> Result<(), SourceError>;

    /// Validates advanced rules (the `advanced_snippet.value`); returns one message per problem.
    async fn validate_advanced_rules(&self, _rules: &Value) -> Vec<String> {
        Vec::new()
    }

    /// Every document (full sync).
    fn full_sync<'a>(
        &'a self,
        config: &'a Self::Config,
        request: SyncRequest<Self::Cursor, Self::Checkpoint>,
    ) -> SyncStream<'a, Self::Cursor, Self::Checkpoint>;

    /// Changes since `request.cursor` (incremental sync). The default runs a full sync.
    fn incremental_sync<'a>(
        &'a self,
        config: &'a Self::Config,
        request: SyncRequest<Self::Cursor, Self::Checkpoint>,
    ) -> SyncStream<'a, Self::Cursor, Self::Checkpoint> {
        self.full_sync(config, request)
    }

    /// Identity documents for the access-control index (one per user). The default yields none.
    fn access_control<'a>(
        &'a self,
        _config: &'a Self::Config,
    ) -> BoxStream<'a, Result<Document, SourceError>> {
        Box::pin(futures::stream::empty())
    }
}
