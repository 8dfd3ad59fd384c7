//! `connector-gmail`: the Gmail connector (service type `gmail`).
//!
//! Syncs every message of every Google Workspace mailbox through a service account with
//! domain-wide delegation: the Directory API lists the users, Gmail's `messages.list` /
//! `messages.get?format=raw` enumerate and fetch messages, and the History API drives
//! incremental syncs. See `docs/gmail.md`.

pub mod api;
pub mod auth;
pub mod config;
pub mod document;
pub mod error;
pub mod mime;
pub mod quota;
pub mod retry;
pub mod rules;
pub mod stats;
pub mod sync;
mod validate;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use connector_framework::{
    connector::{Connector, ConnectorFeatures, Document, SyncRequest, SyncStream},
    source::SourceError,
};
use futures::{StreamExt as _, stream::BoxStream};
use serde_json::Value;

pub use crate::{
    api::ApiOptions,
    config::GmailConfig,
    stats::{GmailStats, StatsSnapshot},
    sync::{GmailCheckpoint, GmailCursor},
};
use crate::{
    api::GoogleApi,
    auth::TokenProvider,
    sync::{SyncCtx, error_stream, generate, identity_document, source_error},
};

/// Capacity of the channel between a sync's producers and its consumer (documents).
const STREAM_CAPACITY: usize = 256;

/// The Gmail connector.
pub struct GmailConnector {
    http: Mutex<Option<reqwest::Client>>,
    /// Token caches per service account key, shared by the jobs of this instance.
    tokens: Mutex<HashMap<u64, Arc<TokenProvider>>>,
    stats: Arc<GmailStats>,
    options: ApiOptions,
}

impl Default for GmailConnector {
    fn default() -> Self {
        Self::new()
    }
}

/// The connector for the host's registry.
pub fn connector() -> GmailConnector {
    GmailConnector::new()
}

impl GmailConnector {
    pub fn new() -> Self {
        Self::with_options(ApiOptions::default())
    }

    /// A connector with other retry and quota settings (tests).
    pub fn with_options(options: ApiOptions) -> Self {
        Self {
            http: Mutex::new(None),
            tokens: Mutex::new(HashMap::new()),
            stats: Arc::new(GmailStats::default()),
            options,
        }
    }

    /// Counters of every call made by this connector instance.
    pub fn stats(&self) -> Arc<GmailStats> {
        self.stats.clone()
    }

    fn http(&self) -> Result<reqwest::Client, SourceError> {
        let mut guard = self.http.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let client = api::http_client()
            .map_err(|e| SourceError::Fatal(format!("cannot build the HTTP client: {e}")))?;
        *guard = Some(client.clone());
        Ok(client)
    }

    /// A client for `config`. Syncs share this instance's token cache; validation and ping
    /// (`fresh_tokens`) mint new tokens so they prove the credentials as they are now.
    pub(crate) fn api(
        &self,
        config: &GmailConfig,
        options: ApiOptions,
        fresh_tokens: bool,
    ) -> Result<GoogleApi, SourceError> {
        let key = config.check()?;
        let http = self.http()?;
        let tokens = if fresh_tokens {
            Arc::new(TokenProvider::new(
                key,
                http.clone(),
                self.stats.clone(),
                options.retry,
            ))
        } else {
            let mut map = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
            map.entry(key.fingerprint)
                .or_insert_with(|| {
                    Arc::new(TokenProvider::new(
                        key,
                        http.clone(),
                        self.stats.clone(),
                        self.options.retry,
                    ))
                })
                .clone()
        };
        GoogleApi::new(config, tokens, http, self.stats.clone(), options)
            .map_err(|e| SourceError::Fatal(e.to_string()))
    }

    /// What a full or incremental sync of `config` runs with.
    fn sync_ctx(
        &self,
        config: &GmailConfig,
        request: &SyncRequest<GmailCursor, GmailCheckpoint>,
    ) -> Result<SyncCtx, SourceError> {
        let api = self.api(config, self.options, false)?;
        Ok(SyncCtx::new(api, config, request))
    }
}

#[async_trait::async_trait]
impl Connector for GmailConnector {
    const SERVICE_TYPE: &'static str = "gmail";
    const DISPLAY_NAME: &'static str = "GMail";

    type Config = GmailConfig;
    type Cursor = GmailCursor;
    type Checkpoint = GmailCheckpoint;

    fn features(&self) -> ConnectorFeatures {
        ConnectorFeatures {
            basic_rules: true,
            advanced_rules: true,
            document_level_security: true,
            incremental_sync: true,
        }
    }

    fn dls_enabled(&self, config: &GmailConfig) -> bool {
        config.use_document_level_security
    }

    async fn validate_config(&self, config: &GmailConfig) -> Result<(), SourceError> {
        validate::validate(self, config).await
    }

    async fn ping(&self, config: &GmailConfig) -> Result<(), SourceError> {
        validate::ping(self, config).await
    }

    async fn validate_advanced_rules(&self, rules: &Value) -> Vec<String> {
        rules::validate(rules)
    }

    fn full_sync<'a>(
        &'a self,
        config: &'a GmailConfig,
        request: SyncRequest<GmailCursor, GmailCheckpoint>,
    ) -> SyncStream<'a, GmailCursor, GmailCheckpoint> {
        let ctx = match self.sync_ctx(config, &request) {
            Ok(ctx) => ctx,
            Err(e) => return error_stream(e),
        };
        generate(STREAM_CAPACITY, move |tx| {
            ctx.run_full(request.checkpoint, tx)
        })
    }

    fn incremental_sync<'a>(
        &'a self,
        config: &'a GmailConfig,
        request: SyncRequest<GmailCursor, GmailCheckpoint>,
    ) -> SyncStream<'a, GmailCursor, GmailCheckpoint> {
        let ctx = match self.sync_ctx(config, &request) {
            Ok(ctx) => ctx,
            Err(e) => return error_stream(e),
        };
        // Mailboxes without a cursor entry are enumerated (with PartitionComplete), so an
        // incremental sync without any cursor syncs everything and records the cursor.
        let cursor = request.cursor.unwrap_or_default();
        generate(STREAM_CAPACITY, move |tx| {
            ctx.run_incremental(cursor, request.checkpoint, tx)
        })
    }

    fn access_control<'a>(
        &'a self,
        config: &'a GmailConfig,
    ) -> BoxStream<'a, Result<Document, SourceError>> {
        if !config.use_document_level_security {
            return futures::stream::empty().boxed();
        }
        let api = match self.api(config, self.options, false) {
            Ok(a) => a,
            Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
        };
        let (subject, customer_id) = (config.subject.clone(), config.customer_id.clone());
        generate(STREAM_CAPACITY, move |mut tx| async move {
            use futures::SinkExt as _;
            let mut token: Option<String> = None;
            loop {
                let page = api
                    .list_users_page(&subject, &customer_id, token.as_deref(), api::PAGE_SIZE)
                    .await;
                let (users, next) = match page {
                    Ok(p) => p,
                    Err(e) => {
                        let _ = tx
                            .send(Err(source_error("listing Workspace users", &e)))
                            .await;
                        return;
                    }
                };
                for user in &users {
                    if tx.send(Ok(identity_document(user))).await.is_err() {
                        return;
                    }
                }
                match next {
                    Some(n) if Some(&n) != token.as_ref() => token = Some(n),
                    _ => return,
                }
            }
        })
    }
}
