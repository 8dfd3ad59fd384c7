//! Gmail endpoints, batch, quota and faults over real HTTP.

mod common;

use std::collections::HashSet;

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use common::{enc, small, start};
use google_workspace_sim::{FaultRule, QuotaConfig, QuotaStyle};
use serde_json::Value;

#[tokio::test]
async fn messages_list_pages_match_ground_truth() {
    let env = start(small()).await;
    let user = env.regular_user();
    let tok = env.gmail_token(&user).await;
    let truth = env.sim.messages(&user).expect("truth");
    // default: spam and trash excluded, newest first
    let ids = env.list_all(&tok, &user, "", 7).await;
    let expected: Vec<String> = truth
        .iter()
        .filter(|m| !m.label_ids.iter().any(|l| l == "SPAM" || l == "TRASH"))
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(ids, expected);
    assert!(ids.len() < truth.len(), "the corpus has spam/trash");
    // includeSpamTrash (Python sends "True")
    let all = env
        .list_all(&tok, &user, "&includeSpamTrash=True", 500)
        .await;
    assert_eq!(all.len(), truth.len());
    let dates: Vec<i64> = truth
        .iter()
        .map(|m| m.internal_date.parse().expect("ms"))
        .collect();
    assert!(dates.windows(2).all(|w| w[0] >= w[1]), "newest first");
    // labelIds must all match
    let inbox_unread = env
        .list_all(&tok, &user, "&labelIds=INBOX&labelIds=UNREAD", 100)
        .await;
    let exp: Vec<String> = truth
        .iter()
        .filter(|m| m.label_ids.contains(&"INBOX".into()) && m.label_ids.contains(&"UNREAD".into()))
        .map(|m| m.id.clone())
        .collect();
    assert_eq!(inbox_unread, exp);
    // field mask and estimate
    let (s, v) = env
        .get(
            &tok,
            &format!(
                "/gmail/v1/users/me/messages?maxResults=5&fields={}",
                enc("nextPageToken,messages(id)")
            ),
        )
        .await;
    assert_eq!(s, 200);
    assert!(v.get("resultSizeEstimate").is_none());
    assert_eq!(v["messages"][0].as_object().expect("obj").len(), 1);
    let (_, v) = env
        .get(&tok, "/gmail/v1/users/me/messages?maxResults=5")
        .await;
    assert_eq!(
        v["resultSizeEstimate"].as_u64(),
        Some(expected.len() as u64)
    );
    // maxResults above 500 is clamped, a forged page token is refused
    let (s, _) = env
        .get(&tok, "/gmail/v1/users/me/messages?maxResults=900")
        .await;
    assert_eq!(s, 200);
    let (s, v) = env
        .get(&tok, "/gmail/v1/users/me/messages?pageToken=abc")
        .await;
    assert_eq!(s, 400, "{v}");
}

#[tokio::test]
async fn messages_get_in_every_format() {
    let env = start(small()).await;
    let user = env.regular_user();
    let tok = env.gmail_token(&user).await;
    let truth = env.sim.messages(&user).expect("truth");
    let m = &truth[0];
    // raw: base64url of the canonical bytes
    let (s, v) = env
        .get(
            &tok,
            &format!("/gmail/v1/users/me/messages/{}?format=raw", m.id),
        )
        .await;
    assert_eq!(s, 200, "{v}");
    let raw = URL_SAFE
        .decode(v["raw"].as_str().expect("raw"))
        .expect("padded base64url");
    assert_eq!(raw, env.sim.raw_message(&user, &m.id).expect("raw"));
    assert_eq!(v["sizeEstimate"].as_u64(), Some(raw.len() as u64));
    assert_eq!(v["internalDate"], m.internal_date.as_str());
    assert_eq!(v["threadId"], m.thread_id.as_str());
    assert!(v.get("payload").is_none());
    // The unmasked raw answer (written by a hand-rolled fast path) equals the generic
    // JSON path's answer with every field asked for by a mask, for every message and both
    // paddings of the tenant's default.
    let mut answers = Vec::new();
    for m in truth.iter().take(40) {
        let (_, fast) = env
            .get(
                &tok,
                &format!("/gmail/v1/users/me/messages/{}?format=raw", m.id),
            )
            .await;
        answers.push(fast.clone());
        let (_, generic) = env
            .get(
                &tok,
                &format!(
                    "/gmail/v1/users/me/messages/{}?format=raw&fields={}",
                    m.id,
                    enc("id,threadId,labelIds,snippet,sizeEstimate,historyId,internalDate,raw")
                ),
            )
            .await;
        assert_eq!(fast, generic, "message {}", m.id);
    }
    // Prerendered messages are served with the same answers.
    assert!(env.sim.prerender() >= truth.len());
    for (m, before) in truth.iter().take(40).zip(&answers) {
        let (_, after) = env
            .get(
                &tok,
                &format!("/gmail/v1/users/me/messages/{}?format=raw", m.id),
            )
            .await;
        assert_eq!(&after, before, "message {}", m.id);
    }
    // the connector's mask
    let (_, v) = env
        .get(
            &tok,
            &format!(
                "/gmail/v1/users/me/messages/{}?format=raw&fields={}",
                m.id,
                enc("raw,internalDate")
            ),
        )
        .await;
    let keys: HashSet<&str> = v
        .as_object()
        .expect("obj")
        .keys()
        .map(|k| k.as_str())
        .collect();
    assert_eq!(keys, HashSet::from(["raw", "internalDate"]));
    // full
    let (_, v) = env
        .get(&tok, &format!("/gmail/v1/users/{user}/messages/{}", m.id))
        .await;
    let payload = &v["payload"];
    assert_eq!(payload["partId"], "");
    let subject = payload["headers"]
        .as_array()
        .expect("headers")
        .iter()
        .find(|h| h["name"] == "Subject")
        .expect("subject header");
    assert_eq!(subject["value"], m.subject.as_str());
    assert!(v["snippet"].is_string());
    // metadata with one header
    let (_, v) = env
        .get(
            &tok,
            &format!(
                "/gmail/v1/users/me/messages/{}?format=metadata&metadataHeaders=From",
                m.id
            ),
        )
        .await;
    let hs = v["payload"]["headers"].as_array().expect("headers");
    assert_eq!(hs.len(), 1);
    assert_eq!(hs[0]["name"], "From");
    assert!(v["payload"].get("parts").is_none());
    // minimal
    let (_, v) = env
        .get(
            &tok,
            &format!("/gmail/v1/users/me/messages/{}?format=minimal", m.id),
        )
        .await;
    assert!(v.get("payload").is_none() && v.get("raw").is_none());
    assert_eq!(
        v["labelIds"].as_array().expect("labels").len(),
        m.label_ids.len()
    );
    // errors
    let (s, v) = env
        .get(&tok, "/gmail/v1/users/me/messages/00000000000000ff")
        .await;
    assert_eq!(s, 404);
    assert_eq!(v["error"]["message"], "Requested entity was not found.");
    let (s, _) = env.get(&tok, "/gmail/v1/users/me/messages/not-hex!").await;
    assert_eq!(s, 400);
}

fn find_attachment(part: &Value) -> Option<(String, u64, String)> {
    if let Some(aid) = part["body"]["attachmentId"].as_str() {
        return Some((
            aid.to_string(),
            part["body"]["size"].as_u64()?,
            part["filename"].as_str()?.to_string(),
        ));
    }
    part["parts"].as_array()?.iter().find_map(find_attachment)
}

#[tokio::test]
async fn attachments_and_mime_variety() {
    let env = start(small()).await;
    let user = env.regular_user();
    let tok = env.gmail_token(&user).await;
    let truth = env.sim.messages(&user).expect("truth");
    let with_att = truth
        .iter()
        .find(|m| m.attachments.iter().any(|a| a != "logo.png"))
        .expect("a message with an attachment");
    let (_, v) = env
        .get(
            &tok,
            &format!("/gmail/v1/users/me/messages/{}?format=full", with_att.id),
        )
        .await;
    let (aid, size, filename) = find_attachment(&v["payload"]).expect("attachment part");
    assert!(with_att.attachments.contains(&filename));
    let (s, a) = env
        .get(
            &tok,
            &format!(
                "/gmail/v1/users/me/messages/{}/attachments/{aid}",
                with_att.id
            ),
        )
        .await;
    assert_eq!(s, 200, "{a}");
    let data = URL_SAFE_NO_PAD
        .decode(a["data"].as_str().expect("data"))
        .expect("b64");
    assert_eq!(data.len() as u64, size);
    assert_eq!(a["size"].as_u64(), Some(size));
    let (s, _) = env
        .get(
            &tok,
            &format!(
                "/gmail/v1/users/me/messages/{}/attachments/ANGjdJbogus",
                with_att.id
            ),
        )
        .await;
    assert_eq!(s, 400);

    // corpus variety across the tenant
    let mut seen = HashSet::new();
    for u in env
        .sim
        .users()
        .iter()
        .filter(|u| u.is_mailbox_setup)
        .take(4)
    {
        for m in env
            .sim
            .messages(&u.primary_email)
            .expect("truth")
            .iter()
            .take(80)
        {
            let raw = String::from_utf8_lossy(
                &env.sim.raw_message(&u.primary_email, &m.id).expect("raw"),
            )
            .to_string();
            for (needle, tag) in [
                ("multipart/alternative", "alternative"),
                ("multipart/mixed", "mixed"),
                ("multipart/related", "related"),
                ("Content-ID: <", "inline"),
                ("=?UTF-8?B?", "rfc2047"),
                ("charset=\"ISO-8859-1\"", "latin1"),
                ("charset=\"windows-1252\"", "cp1252"),
                ("message/rfc822", "forwarded"),
                ("Content-Transfer-Encoding: x-unknown", "malformed"),
                ("In-Reply-To:", "thread"),
            ] {
                if raw.contains(needle) {
                    seen.insert(tag);
                }
            }
            if !raw.contains("\r\nMIME-Version") {
                seen.insert("odd");
            }
        }
    }
    for tag in [
        "alternative",
        "mixed",
        "related",
        "inline",
        "rfc2047",
        "latin1",
        "cp1252",
        "forwarded",
        "malformed",
        "thread",
    ] {
        assert!(seen.contains(tag), "corpus lacks {tag}");
    }
}

#[tokio::test]
async fn shared_threads_span_mailboxes() {
    let env = start(small()).await;
    let users = env.sim.users();
    let mut by_msgid: std::collections::HashMap<String, Vec<String>> = Default::default();
    for u in &users {
        for m in env.sim.messages(&u.primary_email).expect("truth") {
            by_msgid
                .entry(m.message_id.clone())
                .or_default()
                .push(u.primary_email.clone());
        }
    }
    let shared = by_msgid.values().filter(|v| v.len() > 1).count();
    assert!(
        shared > 10,
        "messages delivered to several mailboxes: {shared}"
    );
    // same corpus for the same seed
    let env2 = start(small()).await;
    let u = &users[1].primary_email;
    assert_eq!(
        env.sim.messages(u).expect("a"),
        env2.sim.messages(u).expect("b")
    );
}

#[tokio::test]
async fn labels_threads_and_batch() {
    let env = start(small()).await;
    let user = env.regular_user();
    let tok = env.gmail_token(&user).await;
    let (s, v) = env.get(&tok, "/gmail/v1/users/me/labels").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = v["labels"]
        .as_array()
        .expect("labels")
        .iter()
        .map(|l| l["id"].as_str().expect("id"))
        .collect();
    assert!(ids.contains(&"INBOX") && ids.contains(&"Label_1"));
    let (s, v) = env.get(&tok, "/gmail/v1/users/me/labels/INBOX").await;
    assert_eq!(s, 200);
    assert!(v["messagesTotal"].as_u64().expect("total") > 0);

    // threads
    let (s, v) = env
        .get(
            &tok,
            "/gmail/v1/users/me/threads?maxResults=5&includeSpamTrash=true",
        )
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["nextPageToken"].is_string());
    let truth = env.sim.messages(&user).expect("truth");
    let long = truth
        .iter()
        .map(|m| m.thread_id.clone())
        .fold(
            std::collections::HashMap::<String, usize>::new(),
            |mut acc, t| {
                *acc.entry(t).or_default() += 1;
                acc
            },
        )
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .expect("a thread");
    let (s, v) = env
        .get(
            &tok,
            &format!("/gmail/v1/users/me/threads/{}?format=minimal", long.0),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(v["messages"].as_array().expect("msgs").len(), long.1);
    assert!(long.1 > 2, "long threads exist");

    // batch: two gets and one missing message
    let boundary = "sync_7f3a";
    let mut body = String::new();
    for (i, id) in [
        truth[0].id.as_str(),
        truth[1].id.as_str(),
        "00000000000000ff",
    ]
    .iter()
    .enumerate()
    {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Type: application/http\r\nContent-ID: <a1b2+{i}>\r\n\r\nGET /gmail/v1/users/me/messages/{id}?format=raw&fields=raw,internalDate HTTP/1.1\r\n\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let r = env
        .http
        .post(env.url("/batch/gmail/v1"))
        .bearer_auth(&tok)
        .header(
            "content-type",
            format!("multipart/mixed; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status().as_u16(), 200);
    let ct = r.headers()["content-type"]
        .to_str()
        .expect("ct")
        .to_string();
    assert!(ct.starts_with("multipart/mixed; boundary=batch_"));
    let text = r.text().await.expect("body");
    assert!(text.contains("Content-ID: <response-a1b2+0>"));
    assert!(text.contains("Content-ID: <response-a1b2+2>"));
    assert_eq!(text.matches("HTTP/1.1 200 OK").count(), 2, "{text}");
    assert_eq!(text.matches("HTTP/1.1 404 Not Found").count(), 1);
    // more than 100 parts is refused outright
    let mut big = String::new();
    for i in 0..101 {
        big.push_str(&format!("--b\r\nContent-Type: application/http\r\nContent-ID: <{i}>\r\n\r\nGET /gmail/v1/users/me/profile\r\n\r\n"));
    }
    big.push_str("--b--\r\n");
    let r = env
        .http
        .post(env.url("/batch/gmail/v1"))
        .bearer_auth(&tok)
        .header("content-type", "multipart/mixed; boundary=b")
        .body(big)
        .send()
        .await
        .expect("batch");
    assert_eq!(r.status().as_u16(), 400);
    let v: Value = r.json().await.expect("json");
    assert_eq!(
        v["error"]["message"],
        "Inner request count exceeds the limit. Received: 101, Limit: 100"
    );
    let st = env.sim.stats();
    assert_eq!(st.batch_max_parts, 3);
    assert_eq!(st.methods["gmail.users.messages.get"].requests, 3);
}

#[tokio::test]
async fn per_user_quota_answers_429_with_retry_after() {
    let mut cfg = small();
    cfg.quota = QuotaConfig {
        user_units: 50,
        user_window_ms: 60_000,
        ..QuotaConfig::default()
    };
    let env = start(cfg).await;
    let user = env.regular_user();
    let tok = env.gmail_token(&user).await;
    let id = env.sim.messages(&user).expect("truth")[0].id.clone();
    let mut codes = Vec::new();
    for _ in 0..12 {
        let r = env
            .http
            .get(env.url(&format!("/gmail/v1/users/me/messages/{id}?format=minimal")))
            .bearer_auth(&tok)
            .send()
            .await
            .expect("get");
        let code = r.status().as_u16();
        if code == 429 {
            assert!(r.headers().get("retry-after").is_some());
            let v: Value = r.json().await.expect("json");
            assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
            assert_eq!(v["error"]["errors"][0]["reason"], "rateLimitExceeded");
        }
        codes.push(code);
    }
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 10, "{codes:?}");
    assert_eq!(
        env.sim.stats().methods["gmail.users.messages.get"].throttled,
        2
    );
    // another user has its own budget
    let other = env
        .sim
        .users()
        .into_iter()
        .find(|u| u.primary_email != user && !u.suspended)
        .expect("other")
        .primary_email;
    let t2 = env.gmail_token(&other).await;
    assert_eq!(env.get(&t2, "/gmail/v1/users/me/profile").await.0, 200);
    // legacy 403 style
    env.sim.set_quota(QuotaConfig {
        user_units: 1,
        user_window_ms: 60_000,
        style: QuotaStyle::Legacy403,
        ..QuotaConfig::default()
    });
    let (s, v) = env.get(&tok, "/gmail/v1/users/me/labels").await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["errors"][0]["reason"], "userRateLimitExceeded");
    assert_eq!(v["error"]["errors"][0]["domain"], "usageLimits");
    // switched off
    env.sim.set_quota(QuotaConfig::off());
    assert_eq!(env.get(&tok, "/gmail/v1/users/me/labels").await.0, 200);
}

#[tokio::test]
async fn concurrency_cap_and_faults() {
    let mut cfg = small();
    cfg.quota = QuotaConfig {
        max_concurrent_per_user: 2,
        ..QuotaConfig::default()
    };
    let env = start(cfg).await;
    let user = env.regular_user();
    let tok = env.gmail_token(&user).await;
    env.sim.set_faults(vec![FaultRule {
        method: Some("gmail.users.getProfile".into()),
        delay_ms: 1500,
        ..Default::default()
    }]);
    let futs = (0..5).map(|_| env.get(&tok, "/gmail/v1/users/me/profile"));
    let results = futures::future::join_all(futs).await;
    let rejected: Vec<&Value> = results
        .iter()
        .filter(|(s, _)| *s == 429)
        .map(|(_, v)| v)
        .collect();
    assert_eq!(results.iter().filter(|(s, _)| *s == 200).count(), 2);
    assert_eq!(rejected.len(), 3);
    assert_eq!(
        rejected[0]["error"]["message"],
        "Too many concurrent requests for user"
    );
    assert_eq!(env.sim.stats().peak_concurrency[&user], 2);

    // every second messages.get fails with 503, at most twice
    env.sim.set_faults(vec![FaultRule {
        method: Some("gmail.users.messages.get".into()),
        status: 503,
        every_nth: Some(2),
        times: Some(2),
        ..Default::default()
    }]);
    let id = env.sim.messages(&user).expect("truth")[0].id.clone();
    let mut codes = Vec::new();
    for _ in 0..6 {
        codes.push(
            env.get(
                &tok,
                &format!("/gmail/v1/users/me/messages/{id}?format=minimal"),
            )
            .await
            .0,
        );
    }
    assert_eq!(codes, vec![200, 503, 200, 503, 200, 200]);
    assert_eq!(env.sim.faults()[0].hits, 2);
    // HTML 502 from the front end, through the admin API
    let r = env
        .http
        .post(env.url("/__admin/faults"))
        .json(&serde_json::json!({"method": "gmail.users.labels.list", "status": 502, "body": "<html>bad gateway</html>"}))
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status().as_u16(), 200);
    let r = env
        .http
        .get(env.url("/gmail/v1/users/me/labels"))
        .bearer_auth(&tok)
        .send()
        .await
        .expect("req");
    assert_eq!(r.status().as_u16(), 502);
    assert!(r.text().await.expect("text").contains("bad gateway"));
    // token endpoint fault
    env.sim.set_faults(vec![FaultRule {
        method: Some("oauth2.token".into()),
        status: 503,
        times: Some(1),
        ..Default::default()
    }]);
    let (s, v) = env
        .token_raw(&env.assertion(Some(&user), &[google_workspace_sim::SCOPE_GMAIL_READONLY]))
        .await;
    assert_eq!(s, 503);
    assert_eq!(v["error"], "internal_failure");
    // revoked tokens answer 401
    env.sim.set_faults(vec![]);
    assert_eq!(env.sim.revoke_tokens(Some(&user)), 1);
    assert_eq!(env.get(&tok, "/gmail/v1/users/me/profile").await.0, 401);
}

#[tokio::test]
async fn admin_http_api_reports_truth_and_stats() {
    let env = start(small()).await;
    let user = env.regular_user();
    let r: Value = env
        .http
        .get(env.url("/__admin/tenant"))
        .send()
        .await
        .expect("t")
        .json()
        .await
        .expect("json");
    assert_eq!(r["customerId"], env.sim.customer_id().as_str());
    assert_eq!(r["users"].as_array().expect("users").len(), 8);
    let msgs: Value = env
        .http
        .get(env.url(&format!("/__admin/users/{user}/messages")))
        .send()
        .await
        .expect("m")
        .json()
        .await
        .expect("json");
    assert_eq!(
        msgs.as_array().expect("arr").len(),
        env.sim.messages(&user).expect("t").len()
    );
    let q: Value = env
        .http
        .post(env.url("/__admin/query"))
        .json(&serde_json::json!({"user": user, "q": "from:amy"}))
        .send()
        .await
        .expect("q")
        .json()
        .await
        .expect("json");
    assert_eq!(
        q["ids"].as_array().expect("ids").len(),
        env.sim
            .query(&user, Some("from:amy"), false, &[])
            .expect("q")
            .len()
    );
    let docs: Value = env
        .http
        .post(env.url("/__admin/expected-docs"))
        .json(&serde_json::json!({"includeSpamAndTrash": false}))
        .send()
        .await
        .expect("d")
        .json()
        .await
        .expect("json");
    assert!(docs.as_array().expect("docs").len() > 100);
    let tok = env
        .sim
        .issue_token(Some(&user), &[google_workspace_sim::SCOPE_GMAIL_READONLY])
        .expect("direct token");
    assert_eq!(env.get(&tok, "/gmail/v1/users/me/profile").await.0, 200);
    let s: Value = env
        .http
        .get(env.url("/__admin/stats"))
        .send()
        .await
        .expect("s")
        .json()
        .await
        .expect("json");
    assert_eq!(s["methods"]["gmail.users.getProfile"]["requests"], 1);
    assert_eq!(s["methods"]["gmail.users.getProfile"]["units"], 1);
    let c: Value = env
        .http
        .post(env.url("/__admin/clock"))
        .json(&serde_json::json!({"frozenMs": 1_700_000_000_000i64}))
        .send()
        .await
        .expect("c")
        .json()
        .await
        .expect("json");
    assert_eq!(c["nowMs"], 1_700_000_000_000i64);
}
