//! Helpers shared by the integration tests of this crate.
#![allow(dead_code)]

use connector_framework::{
    EsClient,
    es::HttpMethod,
    protocol::{IndexNames, Store},
};

/// Deletes indices when dropped, with a client of its own (a client's pooled connections
/// belong to the runtime that made them, so the test's client cannot be used from `Drop`).
pub struct Cleanup(pub Vec<String>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let indices = std::mem::take(&mut self.0);
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(client) = EsClient::new(&test_support::connection()) else {
                    return;
                };
                for index in indices {
                    let q = [
                        ("ignore_unavailable", "true".to_owned()),
                        ("expand_wildcards", "all".to_owned()),
                    ];
                    let _ = client
                        .send(HttpMethod::Delete, &format!("/{index}"), &q, None)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Unique system index names for one test, plus their clean-up.
pub fn names(es: &test_support::TestEs) -> (IndexNames, Cleanup) {
    let names = IndexNames {
        connectors: es.unique_name("conn"),
        jobs: es.unique_name("jobs"),
    };
    let cleanup = Cleanup(vec![
        format!("{}*", names.connectors),
        format!("{}*", names.jobs),
    ]);
    (names, cleanup)
}

/// A store on unique system indices, created.
pub async fn store(es: &test_support::TestEs) -> (Store, Cleanup) {
    let (names, cleanup) = names(es);
    let store = Store::detect(es.client.clone(), names, true).await.unwrap();
    store.ensure_indices().await.unwrap();
    (store, cleanup)
}
