//! Document-level security: content documents carry `_allow_access_control`, the access-control
//! job writes identity documents with the role query template, and a search filtered by the
//! rendered query of user A returns only A's documents (and documents without restrictions).
//!
//! The test node has no `lang-mustache`, so the template is rendered in Rust
//! (`render_dls_query`), exactly as Elasticsearch renders this template.

#![allow(clippy::unwrap_used)]

#[path = "sync_support/mod.rs"]
mod common;

use std::sync::Arc;

use common::{Recorder, context, spec};
use connector_framework::{
    es::HttpMethod,
    job::JobOutcome,
    model::{JobType, acl_index_name},
    sync::{
        dls::{DLS_QUERY_TEMPLATE, render_dls_query},
        erase,
    },
    testing::{GeneratorConfig, GeneratorConnector},
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_filtered_by_identity_query_returns_only_own_documents() {
    let es = test_support::es().await;
    let index = es.unique_index("dls");
    let acl = acl_index_name(&index);
    es.track(&acl);
    let c = erase(GeneratorConnector::new());
    let mut cfg = GeneratorConfig {
        count: 300,
        doc_size: 32,
        users: vec![
            "alice@example.com".into(),
            "bob@example.com".into(),
            "carol@example.com".into(),
        ],
        use_document_level_security: true,
        ..Default::default()
    };
    let run = |spec| {
        let c = c.clone();
        let client = es.client.clone();
        async move {
            let rec = Arc::new(Recorder::default());
            c.run_job(spec, context(&client, rec, CancellationToken::new()))
                .await
        }
    };

    let out = run(spec(JobType::Full, &index, &cfg)).await;
    assert!(matches!(out, JobOutcome::Completed { .. }), "{out:?}");
    let out = run(spec(JobType::AccessControl, &acl, &cfg)).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(counters.indexed_document_count, 3);

    let identity = es
        .client
        .json(
            HttpMethod::Get,
            &format!("/{acl}/_doc/alice@example.com"),
            &[],
            None,
        )
        .await
        .unwrap();
    let query = &identity["_source"]["query"];
    assert_eq!(query["template"]["source"], DLS_QUERY_TEMPLATE);
    assert_eq!(
        identity["_source"]["identity"]["email"],
        "alice@example.com"
    );
    let filter = render_dls_query(query).expect("renders");

    es.count(&index).await; // refresh
    let found = es
        .client
        .json(
            HttpMethod::Post,
            &format!("/{index}/_search"),
            &[],
            Some(&json!({"size": 1000, "query": filter, "_source": ["owner"]})),
        )
        .await
        .unwrap();
    let hits = found["hits"]["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 100);
    assert!(
        hits.iter()
            .all(|h| h["_source"]["owner"] == "alice@example.com")
    );

    // A user removed from the source loses the identity document.
    cfg.users.pop();
    let out = run(spec(JobType::AccessControl, &acl, &cfg)).await;
    let JobOutcome::Completed { counters, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(counters.deleted_document_count, 1);
    assert_eq!(
        counters.indexed_document_count, 0,
        "unchanged identities are not re-sent"
    );
    assert_eq!(es.count(&acl).await, 2);

    // With the connector's DLS toggle off, no access-control field is written.
    let plain = es.unique_index("nodls");
    cfg.use_document_level_security = false;
    let out = run(spec(JobType::Full, &plain, &cfg)).await;
    assert!(matches!(out, JobOutcome::Completed { .. }), "{out:?}");
    es.count(&plain).await;
    let with_acl = es
        .client
        .json(
            HttpMethod::Post,
            &format!("/{plain}/_count"),
            &[],
            Some(&json!({"query": {"exists": {"field": "_allow_access_control"}}})),
        )
        .await
        .unwrap();
    assert_eq!(with_acl["count"], 0);
}
