//! Shared helpers for integration tests.
//!
//! Every test that persists anything talks to a real Elasticsearch (or OpenSearch) node. The node's
//! URL comes from `ES_URL`, else from the state file written by `cargo xtask es up`
//! (`.state/es.json` at the workspace root). Tests create uniquely named indices, so they run in
//! parallel, and delete them when the [`TestEs`] handle is dropped (also on panic).
//!
//! No node reachable → the test fails with a message saying how to start one. It never skips.
//!
//! With the `otlp` feature, the `otlp` module has an OTLP collector stand-in for trace tests.

#[cfg(feature = "otlp")]
pub mod otlp;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, Once},
    time::Duration,
};

use connector_framework::{
    EsClient, EsConnection,
    es::{ClusterInfo, EsAuth, HttpMethod},
    secret::Secret,
};

/// Where `cargo xtask es up` writes the node's URL.
pub fn state_file() -> PathBuf {
    workspace_root().join(".state").join("es.json")
}

/// The workspace root (two levels above this crate).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .and_then(|p| p.parent())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// The node's URL: `ES_URL`, else the state file.
pub fn es_url() -> Option<String> {
    if let Ok(url) = std::env::var("ES_URL")
        && !url.trim().is_empty()
    {
        return Some(url);
    }
    let raw = std::fs::read_to_string(state_file()).ok()?;
    let v: serde_json::Value = serde_json::from_str(&raw).ok()?;
    v["url"].as_str().map(str::to_owned)
}

/// Installs the crypto provider and a test log subscriber (once per process).
pub fn init() {
    static INIT: Once = Once::new();
    INIT.call_once(|| {
        connector_framework::install_crypto_provider();
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_env("TEST_LOG")
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    });
}

const HOW_TO_START: &str = "start one with `cargo xtask es up` (or run the suite with `cargo xtask test`), \
or point ES_URL at a node (ES_API_KEY / ES_USERNAME + ES_PASSWORD for auth)";

/// Connection settings for the test node, with auth from `ES_API_KEY` or `ES_USERNAME`/`ES_PASSWORD`.
pub fn connection() -> EsConnection {
    init();
    let Some(url) = es_url() else {
        panic!("no Elasticsearch node configured for integration tests: {HOW_TO_START}");
    };
    let parsed = url
        .parse()
        .unwrap_or_else(|e| panic!("ES_URL {url:?} is not a URL: {e}"));
    let mut conn = EsConnection::new(parsed);
    conn.request_timeout = Duration::from_secs(60);
    conn.max_retries = 3;
    conn.retry_interval = Duration::from_millis(200);
    if let Ok(key) = std::env::var("ES_API_KEY") {
        conn.auth = EsAuth::ApiKey(Secret::new(key));
    } else if let (Ok(username), Ok(password)) =
        (std::env::var("ES_USERNAME"), std::env::var("ES_PASSWORD"))
    {
        conn.auth = EsAuth::Basic {
            username,
            password: Secret::new(password),
        };
    }
    if std::env::var("ES_VERIFY_CERTS").as_deref() == Ok("false") {
        conn.verify_certs = false;
    }
    conn
}

/// A connected test node plus the indices this test created.
pub struct TestEs {
    pub client: EsClient,
    pub info: ClusterInfo,
    /// Lower-case, unique per handle: prefix of every name this test creates.
    pub prefix: String,
    conn: EsConnection,
    created: Arc<Mutex<Vec<String>>>,
}

/// Connects to the test node and checks it answers; panics with instructions otherwise.
pub async fn es() -> TestEs {
    let conn = connection();
    let url = conn.host.to_string();
    let client = EsClient::new(&conn).unwrap_or_else(|e| panic!("cannot build client: {e}"));
    let info = match client.info().await {
        Ok(info) => info,
        Err(e) => panic!("no Elasticsearch node answers at {url} ({e}): {HOW_TO_START}"),
    };
    let prefix = format!("test-{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    TestEs {
        client,
        info,
        prefix,
        conn,
        created: Arc::default(),
    }
}

impl TestEs {
    /// A unique index name (`test-<random>-<name>`), deleted when this handle drops.
    pub fn unique_index(&self, name: &str) -> String {
        let index = format!("{}-{}", self.prefix, name.to_lowercase());
        self.track(&index);
        index
    }

    /// A unique name for something that is not an index (connector ids, aliases …).
    pub fn unique_name(&self, name: &str) -> String {
        format!("{}-{}", self.prefix, name.to_lowercase())
    }

    /// Registers an index (or a wildcard pattern) to delete when this handle drops.
    pub fn track(&self, index: &str) {
        if let Ok(mut v) = self.created.lock() {
            v.push(index.to_owned());
        }
    }

    /// Refreshes an index and returns its document count.
    pub async fn count(&self, index: &str) -> u64 {
        let path = format!("/{index}/_refresh");
        self.client
            .json(HttpMethod::Post, &path, &[], None)
            .await
            .unwrap_or_else(|e| panic!("refresh {index}: {e}"));
        let body = self
            .client
            .json(HttpMethod::Get, &format!("/{index}/_count"), &[], None)
            .await
            .unwrap_or_else(|e| panic!("count {index}: {e}"));
        body["count"]
            .as_u64()
            .unwrap_or_else(|| panic!("no count in {body}"))
    }

    /// The stored document `id` of `index` (`GET /<index>/_doc/<id>`: `_source` and metadata).
    pub async fn doc(&self, index: &str, id: &str) -> serde_json::Value {
        self.client
            .json(HttpMethod::Get, &format!("/{index}/_doc/{id}"), &[], None)
            .await
            .unwrap_or_else(|e| panic!("get {index}/{id}: {e}"))
    }

    /// Sends `ndjson` to `path` (a `_bulk` endpoint) with `refresh=true` and checks that every
    /// item succeeded.
    pub async fn bulk(&self, path: &str, ndjson: String) {
        let resp = self
            .client
            .send_bytes(
                HttpMethod::Post,
                path,
                &[("refresh", "true".into())],
                Some(ndjson.into()),
                true,
            )
            .await
            .unwrap_or_else(|e| panic!("bulk {path}: {e}"));
        assert!(
            resp.is_success() && resp.body["errors"] == serde_json::json!(false),
            "bulk {path}: {}",
            resp.body
        );
    }
}

impl Drop for TestEs {
    fn drop(&mut self) {
        let indices = self.created.lock().map(|v| v.clone()).unwrap_or_default();
        drop(Cleanup::with_connection(indices, self.conn.clone()));
    }
}

/// Deletes indices (names or wildcard patterns) when dropped, also on panic.
///
/// `Drop` cannot await, so the deletion runs on a helper thread with its own small runtime and
/// its own client: pooled connections of the test's runtime are unusable from another one.
pub struct Cleanup {
    indices: Vec<String>,
    conn: Option<EsConnection>,
}

impl Cleanup {
    /// Deletes `indices` on the test node when dropped.
    pub fn new(indices: Vec<String>) -> Self {
        Self {
            indices,
            conn: None,
        }
    }

    fn with_connection(indices: Vec<String>, conn: EsConnection) -> Self {
        Self {
            indices,
            conn: Some(conn),
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let indices = std::mem::take(&mut self.indices);
        if indices.is_empty() {
            return;
        }
        let conn = self.conn.take().unwrap_or_else(connection);
        let handle = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = EsClient::new(&conn) else {
                    return;
                };
                for index in indices {
                    let path = format!("/{index}");
                    let query = [
                        ("ignore_unavailable", "true".to_owned()),
                        ("expand_wildcards", "all".to_owned()),
                    ];
                    let _ = client.send(HttpMethod::Delete, &path, &query, None).await;
                }
            });
        });
        let _ = handle.join();
    }
}
