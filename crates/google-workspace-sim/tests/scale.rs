//! A large tenant starts instantly: mailboxes are generated lazily from the seed.

mod common;

use std::time::Instant;

use common::start;
use google_workspace_sim::{QuotaConfig, SimConfig};

#[tokio::test]
async fn thousands_of_users_are_lazy() {
    let t = Instant::now();
    let env = start(SimConfig {
        users: 3000,
        messages_per_user: 2000,
        seed: 99,
        quota: QuotaConfig::off(),
        ..Default::default()
    })
    .await;
    let startup = t.elapsed();
    assert!(startup.as_secs() < 10, "startup took {startup:?}");
    // the Directory pages through all 3000 users
    let tok = env.admin_token().await;
    let mut n = 0;
    let mut page: Option<String> = None;
    loop {
        let mut path = format!(
            "/admin/directory/v1/users?customer=my_customer&maxResults=500&fields={}",
            common::enc("nextPageToken,users(primaryEmail)")
        );
        if let Some(p) = &page {
            path.push_str(&format!("&pageToken={p}"));
        }
        let (s, v) = env.get(&tok, &path).await;
        assert_eq!(s, 200);
        n += v["users"].as_array().expect("users").len();
        match v["nextPageToken"].as_str() {
            Some(p) => page = Some(p.to_string()),
            None => break,
        }
    }
    assert_eq!(n, 3000);
    // one mailbox deep in the tenant
    let user = env.sim.users()[2500].primary_email.clone();
    let t = Instant::now();
    let truth = env.sim.messages(&user).expect("truth");
    eprintln!(
        "startup {startup:?}, mailbox of {} messages generated in {:?}",
        truth.len(),
        t.elapsed()
    );
    assert!(
        truth.len() >= 1900 && truth.len() <= 2100,
        "about messages_per_user: {}",
        truth.len()
    );
    let gmail = env.gmail_token(&user).await;
    let ids = env
        .list_all(&gmail, &user, "&includeSpamTrash=true", 500)
        .await;
    assert_eq!(ids.len(), truth.len());
}
