//! history.list replay after mutations, and expiry.

mod common;

use std::collections::BTreeMap;

use common::{small, start};
use google_workspace_sim::{CustomMessage, Mutation};
use serde_json::Value;

fn label_vec(v: &Value) -> Vec<String> {
    let mut l: Vec<String> = v
        .as_array()
        .into_iter()
        .flatten()
        .map(|x| x.as_str().unwrap_or("").to_string())
        .collect();
    l.sort();
    l
}

#[tokio::test]
async fn replaying_history_reproduces_the_mailbox() {
    let env = start(small()).await;
    let user = env.regular_user();
    let tok = env.gmail_token(&user).await;
    let (_, p) = env.get(&tok, "/gmail/v1/users/me/profile").await;
    let start_id = p["historyId"].as_str().expect("hid").to_string();
    // nothing happened yet
    let (s, v) = env
        .get(
            &tok,
            &format!("/gmail/v1/users/me/history?startHistoryId={start_id}"),
        )
        .await;
    assert_eq!(s, 200);
    assert!(v.get("history").is_none());
    assert_eq!(v["historyId"], start_id.as_str());

    // the mailbox as a client saw it at `start_id`
    let mut local: BTreeMap<String, Vec<String>> = env
        .sim
        .messages(&user)
        .expect("truth")
        .into_iter()
        .map(|m| {
            let mut l = m.label_ids.clone();
            l.sort();
            (m.id, l)
        })
        .collect();

    let truth: Vec<_> = env
        .sim
        .messages(&user)
        .expect("truth")
        .into_iter()
        .filter(|m| {
            let has = |l: &str| m.label_ids.iter().any(|x| x == l);
            has("INBOX") && !has("TRASH") && !has("STARRED") && !has("Label_2")
        })
        .collect();
    assert!(truth.len() >= 4);
    let mut history_ids = Vec::new();
    let mut apply = |m: Mutation| {
        let r = env.sim.apply(m).expect("mutation");
        history_ids.push(r.history_id.parse::<u64>().expect("hid"));
        r
    };
    let added = apply(Mutation::AddMessage {
        user: user.clone(),
        labels: vec!["INBOX".into(), "UNREAD".into()],
        internal_date: None,
        thread_id: None,
        message: CustomMessage {
            from: Some("Amy Pond <amy@partner.test>".into()),
            subject: Some("New delivery".into()),
            body: Some("fresh unicorn news".into()),
            ..Default::default()
        },
    });
    let new_id = added.id.clone().expect("id");
    apply(Mutation::Delete {
        user: user.clone(),
        id: truth[0].id.clone(),
    });
    apply(Mutation::Trash {
        user: user.clone(),
        id: truth[1].id.clone(),
    });
    apply(Mutation::Modify {
        user: user.clone(),
        id: truth[2].id.clone(),
        add: vec!["STARRED".into(), "Label_2".into()],
        remove: vec!["UNREAD".into(), "INBOX".into()],
    });
    apply(Mutation::Modify {
        user: user.clone(),
        id: new_id.clone(),
        add: vec![],
        remove: vec!["UNREAD".into()],
    });
    apply(Mutation::Untrash {
        user: user.clone(),
        id: truth[1].id.clone(),
    });
    apply(Mutation::Delete {
        user: user.clone(),
        id: truth[3].id.clone(),
    });
    assert!(
        history_ids.windows(2).all(|w| w[1] > w[0]),
        "history ids increase: {history_ids:?}"
    );

    // replay with small pages
    let mut page: Option<String> = None;
    let mut records = 0;
    let mut last_id = 0u64;
    loop {
        let mut path = format!("/gmail/v1/users/me/history?startHistoryId={start_id}&maxResults=2");
        if let Some(p) = &page {
            path.push_str(&format!("&pageToken={p}"));
        }
        let (s, v) = env.get(&tok, &path).await;
        assert_eq!(s, 200, "{v}");
        for h in v["history"].as_array().into_iter().flatten() {
            records += 1;
            let hid: u64 = h["id"].as_str().expect("id").parse().expect("num");
            assert!(hid > last_id);
            last_id = hid;
            for a in h["messagesAdded"].as_array().into_iter().flatten() {
                local.insert(
                    a["message"]["id"].as_str().expect("id").into(),
                    label_vec(&a["message"]["labelIds"]),
                );
            }
            for d in h["messagesDeleted"].as_array().into_iter().flatten() {
                local.remove(d["message"]["id"].as_str().expect("id"));
            }
            for a in h["labelsAdded"].as_array().into_iter().flatten() {
                let e = local
                    .get_mut(a["message"]["id"].as_str().expect("id"))
                    .expect("known");
                e.extend(label_vec(&a["labelIds"]));
                e.sort();
                e.dedup();
            }
            for r in h["labelsRemoved"].as_array().into_iter().flatten() {
                let e = local
                    .get_mut(r["message"]["id"].as_str().expect("id"))
                    .expect("known");
                let gone = label_vec(&r["labelIds"]);
                e.retain(|l| !gone.contains(l));
            }
        }
        match v["nextPageToken"].as_str() {
            Some(t) => page = Some(t.to_string()),
            None => {
                assert_eq!(
                    v["historyId"]
                        .as_str()
                        .expect("hid")
                        .parse::<u64>()
                        .expect("n"),
                    env.sim.history_id(&user).expect("hid")
                );
                break;
            }
        }
    }
    assert_eq!(
        records, 8,
        "one record per change (modify with add+remove gives two)"
    );
    let now: BTreeMap<String, Vec<String>> = env
        .sim
        .messages(&user)
        .expect("truth")
        .into_iter()
        .map(|m| {
            let mut l = m.label_ids;
            l.sort();
            (m.id, l)
        })
        .collect();
    assert_eq!(local, now);

    // filters
    let (_, v) = env
        .get(
            &tok,
            &format!(
                "/gmail/v1/users/me/history?startHistoryId={start_id}&historyTypes=messageDeleted"
            ),
        )
        .await;
    assert_eq!(v["history"].as_array().expect("h").len(), 2);
    let (_, v) = env
        .get(
            &tok,
            &format!("/gmail/v1/users/me/history?startHistoryId={start_id}&labelId=TRASH"),
        )
        .await;
    assert_eq!(v["history"].as_array().expect("h").len(), 2, "{v}");
    // the new message is visible through the API
    let (s, m) = env
        .get(
            &tok,
            &format!("/gmail/v1/users/me/messages/{new_id}?format=full"),
        )
        .await;
    assert_eq!(s, 200);
    assert!(m["snippet"].as_str().expect("snippet").contains("unicorn"));
    let ids = env
        .list_all(&tok, &user, "&q=unicorn%20from%3Aamy", 100)
        .await;
    assert!(ids.contains(&new_id));
    // a deleted message is gone
    assert_eq!(
        env.get(
            &tok,
            &format!("/gmail/v1/users/me/messages/{}", truth[0].id)
        )
        .await
        .0,
        404
    );
}

#[tokio::test]
async fn expired_or_future_start_ids_get_404() {
    let env = start(small()).await;
    let user = env.regular_user();
    let tok = env.gmail_token(&user).await;
    let (_, p) = env.get(&tok, "/gmail/v1/users/me/profile").await;
    let start_id: u64 = p["historyId"].as_str().expect("hid").parse().expect("n");
    let truth = env.sim.messages(&user).expect("truth");
    for m in truth.iter().take(3) {
        env.sim
            .apply(Mutation::Trash {
                user: user.clone(),
                id: m.id.clone(),
            })
            .expect("trash");
    }
    assert_eq!(
        env.get(
            &tok,
            &format!("/gmail/v1/users/me/history?startHistoryId={start_id}")
        )
        .await
        .0,
        200
    );
    // older than the mailbox's first retained record
    let (s, v) = env
        .get(
            &tok,
            &format!("/gmail/v1/users/me/history?startHistoryId={}", start_id - 1),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["errors"][0]["reason"], "notFound");
    // after expiry the old cursor is gone, the current one still works
    let floor = env.sim.expire_history(&user, None).expect("expire");
    let (s, _) = env
        .get(
            &tok,
            &format!("/gmail/v1/users/me/history?startHistoryId={start_id}"),
        )
        .await;
    assert_eq!(s, 404);
    let (s, v) = env
        .get(
            &tok,
            &format!("/gmail/v1/users/me/history?startHistoryId={floor}"),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    // beyond the current id
    assert_eq!(
        env.get(
            &tok,
            &format!("/gmail/v1/users/me/history?startHistoryId={}", floor + 1000)
        )
        .await
        .0,
        404
    );
    // missing start id
    assert_eq!(env.get(&tok, "/gmail/v1/users/me/history").await.0, 400);
}

#[tokio::test]
async fn time_based_retention_expires_old_records() {
    let mut cfg = small();
    cfg.history_retention = Some(std::time::Duration::from_secs(3600));
    let env = start(cfg).await;
    let user = env.regular_user();
    let tok = env.gmail_token(&user).await;
    let (_, p) = env.get(&tok, "/gmail/v1/users/me/profile").await;
    let start_id = p["historyId"].as_str().expect("hid").to_string();
    let id = env.sim.messages(&user).expect("truth")[0].id.clone();
    env.sim
        .apply(Mutation::Trash {
            user: user.clone(),
            id,
        })
        .expect("trash");
    assert_eq!(
        env.get(
            &tok,
            &format!("/gmail/v1/users/me/history?startHistoryId={start_id}")
        )
        .await
        .0,
        200
    );
    env.sim.set_clock_offset(2 * 3600 * 1000);
    let tok = env.gmail_token(&user).await;
    assert_eq!(
        env.get(
            &tok,
            &format!("/gmail/v1/users/me/history?startHistoryId={start_id}")
        )
        .await
        .0,
        404
    );
}
