//! The framework's Elasticsearch client against the real test node.

use std::time::Duration;

use connector_framework::{
    Classify, ErrorKind, EsClient, EsConnection,
    es::{Distribution, EsAuth, EsError, HttpMethod},
    secret::Secret,
};

#[tokio::test]
async fn connects_reads_version_and_detects_capabilities() {
    let es = test_support::es().await;
    let info = es.client.info().await.expect("cluster info");
    eprintln!(
        "connected to {:?} {} ({})",
        info.distribution, info.version, info.cluster_name
    );
    let (major, _) = info.major_minor().expect("numeric version");
    assert!(major >= 2, "unexpected version {}", info.version);
    if let Ok(expected) = std::env::var("SEARCH_ENGINE") {
        let want = if expected == "opensearch" {
            Distribution::OpenSearch
        } else {
            Distribution::Elasticsearch
        };
        assert_eq!(info.distribution, want);
    }

    let caps = es.client.capabilities(&info).await.expect("capabilities");
    // Ask the cluster directly: the connector API exists iff `GET _connector` lists connectors.
    let raw = es
        .client
        .send(HttpMethod::Get, "/_connector", &[], None)
        .await
        .expect("raw request");
    let has_api = raw.is_success() && raw.body.get("results").is_some();
    assert_eq!(caps.connector_api, has_api);
    if info.build_flavor.as_deref() == Some("default")
        && info.distribution == Distribution::Elasticsearch
    {
        eprintln!("connector api available: {}", caps.connector_api);
    }
}

#[tokio::test]
async fn writes_and_reads_a_document_with_auth_settings() {
    let es = test_support::es().await;
    let index = es.unique_index("client");
    // Basic credentials are sent; a node without security ignores them.
    let mut conn = test_support::connection();
    if matches!(conn.auth, EsAuth::None) {
        conn.auth = EsAuth::Basic {
            username: "elastic".into(),
            password: Secret::new("changeme"),
        };
    }
    let client = EsClient::new(&conn).expect("client");
    let body = serde_json::json!({"title": "hello"});
    client
        .json(
            HttpMethod::Put,
            &format!("/{index}/_doc/1"),
            &[("refresh", "true".into())],
            Some(&body),
        )
        .await
        .expect("index a document");
    let got = client
        .json(HttpMethod::Get, &format!("/{index}/_doc/1"), &[], None)
        .await
        .expect("get it back");
    assert_eq!(got["_source"]["title"], "hello");

    // A missing document is an API error classified NotFound, with the status kept.
    let err = client
        .json(HttpMethod::Get, &format!("/{index}/_doc/nope"), &[], None)
        .await
        .expect_err("404");
    assert_eq!(err.status(), Some(404));
    assert_eq!(err.kind(), ErrorKind::NotFound);
}

#[tokio::test]
async fn unreachable_node_is_a_transient_transport_error() {
    test_support::init();
    // A port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let mut conn = EsConnection::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    conn.max_retries = 2;
    conn.retry_interval = Duration::from_millis(10);
    let client = EsClient::new(&conn).unwrap();
    let err = client.info().await.expect_err("nothing listens");
    assert!(matches!(err, EsError::Transport { .. }), "{err:?}");
    assert_eq!(err.kind(), ErrorKind::Transient);
}

#[test]
fn tls_settings_are_validated() {
    test_support::init();
    let mut conn = EsConnection::new("https://localhost:9200".parse().unwrap());
    conn.ca_certs = Some("/nonexistent/ca.pem".into());
    let err = EsClient::new(&conn).expect_err("missing CA file");
    assert_eq!(err.kind(), ErrorKind::Configuration);
    assert!(err.to_string().contains("/nonexistent/ca.pem"));

    conn.ca_certs = None;
    conn.verify_certs = false;
    EsClient::new(&conn).expect("verification can be turned off");

    conn.auth = EsAuth::ApiKey(Secret::new("aWQ6a2V5"));
    let client = EsClient::new(&conn).expect("api key auth");
    assert!(!format!("{client:?}").contains("aWQ6a2V5"));
}
