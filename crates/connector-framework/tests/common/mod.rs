//! Helpers shared by the integration tests of this crate.
#![allow(dead_code)]

use connector_framework::protocol::{IndexNames, Store};

pub use test_support::Cleanup;

/// Unique system index names for one test, plus their clean-up.
pub fn names(es: &test_support::TestEs) -> (IndexNames, Cleanup) {
    let names = IndexNames {
        connectors: es.unique_name("conn"),
        jobs: es.unique_name("jobs"),
    };
    let cleanup = Cleanup::new(vec![
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
