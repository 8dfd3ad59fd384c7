//! Token endpoint, API authorisation and Directory users.list over real HTTP.

mod common;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::{enc, small, start};
use google_workspace_sim::{
    AssertionClaims, SCOPE_DIRECTORY_READONLY, SCOPE_GMAIL_MODIFY, SCOPE_GMAIL_READONLY, rsa_key,
    sign_assertion, sign_jwt_value,
};
use serde_json::json;

#[tokio::test]
async fn key_json_has_every_field_and_points_at_the_simulator() {
    let env = start(small()).await;
    let v: serde_json::Value =
        serde_json::from_str(&env.sim.service_account_key_json()).expect("json");
    for f in [
        "type",
        "project_id",
        "private_key_id",
        "private_key",
        "client_email",
        "client_id",
        "auth_uri",
        "token_uri",
        "auth_provider_x509_cert_url",
        "client_x509_cert_url",
        "universe_domain",
    ] {
        assert!(
            v.get(f)
                .and_then(|x| x.as_str())
                .is_some_and(|s| !s.is_empty()),
            "missing {f}"
        );
    }
    assert_eq!(v["type"], "service_account");
    assert_eq!(v["token_uri"], format!("{}/token", env.sim.base_url()));
    assert!(
        v["private_key"]
            .as_str()
            .expect("pk")
            .starts_with("-----BEGIN PRIVATE KEY-----\n")
    );
    assert_eq!(v["private_key_id"].as_str().expect("kid").len(), 40);
    assert!(
        v["client_id"]
            .as_str()
            .expect("cid")
            .chars()
            .all(|c| c.is_ascii_digit())
    );
}

#[tokio::test]
async fn token_success_profile_and_expiry() {
    let env = start(small()).await;
    let admin = env.sim.admin_email();
    let (s, v) = env
        .token_raw(&env.assertion(Some(&admin), &[SCOPE_GMAIL_READONLY]))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["token_type"], "Bearer");
    assert_eq!(v["expires_in"], 3599);
    let tok = v["access_token"].as_str().expect("token");
    let (s, p) = env.get(tok, "/gmail/v1/users/me/profile").await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["emailAddress"], admin.as_str());
    assert!(p["historyId"].as_str().expect("hid").parse::<u64>().is_ok());
    assert_eq!(
        p["messagesTotal"].as_u64(),
        Some(env.sim.messages(&admin).expect("truth").len() as u64)
    );
    // the sim's own token URL as aud is accepted too
    let mut claims =
        AssertionClaims::google_auth(&env.key, Some(&admin), &[SCOPE_GMAIL_READONLY], env.now());
    claims.aud = env.sim.token_url();
    let (s, _) = env
        .token_raw(&sign_assertion(&env.key, &claims).expect("sign"))
        .await;
    assert_eq!(s, 200);
    // tokens expire with the simulator clock
    env.sim.set_clock_offset(3600 * 1000);
    let (s, e) = env.get(tok, "/gmail/v1/users/me/profile").await;
    assert_eq!(s, 401);
    assert_eq!(e["error"]["errors"][0]["reason"], "authError");
    assert_eq!(e["error"]["status"], "UNAUTHENTICATED");
    // no credentials at all
    let r = env
        .http
        .get(env.url("/gmail/v1/users/me/profile"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status().as_u16(), 401);
    let stats = env.sim.stats();
    assert_eq!(stats.tokens_minted.get(&admin).copied(), Some(2));
}

async fn expect_token_error(
    env: &common::Env,
    assertion: &str,
    status: u16,
    error: &str,
) -> String {
    let (s, v) = env.token_raw(assertion).await;
    assert_eq!((s, v["error"].as_str()), (status, Some(error)), "{v}");
    assert!(
        v.get("code").is_none(),
        "oauth errors have no envelope: {v}"
    );
    v["error_description"]
        .as_str()
        .expect("description")
        .to_string()
}

#[tokio::test]
async fn token_endpoint_failures_use_googles_codes() {
    let env = start(small()).await;
    let admin = env.sim.admin_email();
    let now = env.now();
    let scopes = [SCOPE_GMAIL_READONLY];

    // bad signature: flip a byte of the signature
    let good = env.assertion(Some(&admin), &scopes);
    let (head, sig) = good.rsplit_once('.').expect("3 parts");
    let mut sig_bytes = URL_SAFE_NO_PAD.decode(sig).expect("b64");
    sig_bytes[10] ^= 0x55;
    let forged = format!("{head}.{}", URL_SAFE_NO_PAD.encode(sig_bytes));
    let d = expect_token_error(&env, &forged, 400, "invalid_grant").await;
    assert_eq!(d, "Invalid JWT Signature.");

    // signed by another key with the same kid and iss
    let mut other = env.key.clone();
    other.private_key = rsa_key(999).private_key_pem().to_string();
    let claims = AssertionClaims::google_auth(&env.key, Some(&admin), &scopes, now);
    let d = expect_token_error(
        &env,
        &sign_assertion(&other, &claims).expect("sign"),
        400,
        "invalid_grant",
    )
    .await;
    assert_eq!(d, "Invalid JWT Signature.");

    // expired
    let mut c = AssertionClaims::google_auth(&env.key, Some(&admin), &scopes, now - 7200);
    let d = expect_token_error(
        &env,
        &sign_assertion(&env.key, &c).expect("sign"),
        400,
        "invalid_grant",
    )
    .await;
    assert!(d.contains("short-lived"), "{d}");
    // lifetime above one hour
    c = AssertionClaims::google_auth(&env.key, Some(&admin), &scopes, now);
    c.exp = now + 7200;
    expect_token_error(
        &env,
        &sign_assertion(&env.key, &c).expect("sign"),
        400,
        "invalid_grant",
    )
    .await;
    // issued in the future beyond the skew
    c = AssertionClaims::google_auth(&env.key, Some(&admin), &scopes, now + 1800);
    expect_token_error(
        &env,
        &sign_assertion(&env.key, &c).expect("sign"),
        400,
        "invalid_grant",
    )
    .await;

    // wrong audience
    c = AssertionClaims::google_auth(&env.key, Some(&admin), &scopes, now);
    c.aud = "https://example.test/token".into();
    let d = expect_token_error(
        &env,
        &sign_assertion(&env.key, &c).expect("sign"),
        400,
        "invalid_grant",
    )
    .await;
    assert_eq!(d, "Invalid JWT: Failed audience check.");

    // unknown service account
    c = AssertionClaims::google_auth(&env.key, Some(&admin), &scopes, now);
    c.iss = "nobody@x.iam.gserviceaccount.com".into();
    expect_token_error(
        &env,
        &sign_assertion(&env.key, &c).expect("sign"),
        400,
        "invalid_grant",
    )
    .await;

    // scope not granted by domain-wide delegation → 401 unauthorized_client
    let a = env.assertion(Some(&admin), &[SCOPE_GMAIL_MODIFY]);
    expect_token_error(&env, &a, 401, "unauthorized_client").await;
    // one granted, one not → still refused
    let a = env.assertion(Some(&admin), &[SCOPE_GMAIL_READONLY, SCOPE_GMAIL_MODIFY]);
    expect_token_error(&env, &a, 401, "unauthorized_client").await;
    // revoking the grant at runtime
    env.sim.set_delegation(
        &env.sim.client_id(),
        vec![SCOPE_DIRECTORY_READONLY.to_string()],
    );
    expect_token_error(
        &env,
        &env.assertion(Some(&admin), &scopes),
        401,
        "unauthorized_client",
    )
    .await;
    env.sim.set_delegation(
        &env.sim.client_id(),
        vec![
            SCOPE_GMAIL_READONLY.to_string(),
            SCOPE_DIRECTORY_READONLY.to_string(),
        ],
    );

    // unknown and suspended users
    let d = expect_token_error(
        &env,
        &env.assertion(Some("ghost@acme.test"), &scopes),
        400,
        "invalid_grant",
    )
    .await;
    assert_eq!(d, "Invalid email or User ID");
    let suspended = env
        .sim
        .users()
        .into_iter()
        .find(|u| u.suspended)
        .expect("a suspended user");
    expect_token_error(
        &env,
        &env.assertion(Some(&suspended.primary_email), &scopes),
        400,
        "invalid_grant",
    )
    .await;

    // bad and empty scopes
    let d = expect_token_error(
        &env,
        &env.assertion(Some(&admin), &["https://example.test/scope"]),
        400,
        "invalid_scope",
    )
    .await;
    assert_eq!(d, "Invalid OAuth scope or ID token audience provided.");
    let d = expect_token_error(
        &env,
        &env.assertion(Some(&admin), &[]),
        400,
        "invalid_scope",
    )
    .await;
    assert_eq!(d, "Empty or missing scope not allowed.");

    // wrong algorithm header
    let header = json!({"alg": "HS256", "typ": "JWT"});
    let claims = serde_json::to_value(AssertionClaims::google_auth(
        &env.key,
        Some(&admin),
        &scopes,
        now,
    ))
    .expect("claims");
    let a = sign_jwt_value(&env.key.private_key, &header, &claims).expect("sign");
    expect_token_error(&env, &a, 400, "invalid_grant").await;

    // wrong grant type / missing assertion
    let r = env
        .http
        .post(&env.key.token_uri)
        .form(&[("grant_type", "client_credentials")])
        .send()
        .await
        .expect("req");
    assert_eq!(r.status().as_u16(), 400);
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"], "unsupported_grant_type");
    let r = env
        .http
        .post(&env.key.token_uri)
        .form(&[("grant_type", google_workspace_sim::JWT_BEARER)])
        .send()
        .await
        .expect("req");
    let v: serde_json::Value = r.json().await.expect("json");
    assert_eq!(v["error"], "invalid_request");
}

#[tokio::test]
async fn mailbox_access_is_bound_to_subject_and_scope() {
    let env = start(small()).await;
    let user = env.regular_user();
    let admin = env.sim.admin_email();
    let tok = env.gmail_token(&user).await;
    // own mailbox by address and by `me`
    assert_eq!(
        env.get(&tok, &format!("/gmail/v1/users/{user}/profile"))
            .await
            .0,
        200
    );
    // another user's mailbox → 403 Delegation denied
    let (s, v) = env
        .get(&tok, &format!("/gmail/v1/users/{admin}/messages"))
        .await;
    assert_eq!(s, 403, "{v}");
    assert_eq!(v["error"]["errors"][0]["reason"], "forbidden");
    assert_eq!(
        v["error"]["message"],
        format!("Delegation denied for {user}")
    );
    // a Directory token cannot read mail
    let dir = env.admin_token().await;
    let (s, v) = env.get(&dir, "/gmail/v1/users/me/profile").await;
    assert_eq!(s, 403);
    assert_eq!(v["error"]["errors"][0]["reason"], "insufficientPermissions");
    // a Gmail token cannot list users
    let (s, _) = env
        .get(
            &tok,
            &format!(
                "/admin/directory/v1/users?customer={}",
                env.sim.customer_id()
            ),
        )
        .await;
    assert_eq!(s, 403);
    // token without subject: Gmail answers failedPrecondition
    let (s, v) = env
        .token_raw(&env.assertion(None, &[SCOPE_GMAIL_READONLY]))
        .await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = env
        .get(
            v["access_token"].as_str().expect("tok"),
            "/gmail/v1/users/me/profile",
        )
        .await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["message"], "Precondition check failed.");
}

#[tokio::test]
async fn mailbox_not_set_up_is_failed_precondition() {
    let mut cfg = small();
    cfg.users_without_mailbox = vec![2];
    let env = start(cfg).await;
    let u = env.sim.users()[2].primary_email.clone();
    let tok = env.gmail_token(&u).await;
    let (s, v) = env.get(&tok, "/gmail/v1/users/me/profile").await;
    assert_eq!(s, 400);
    assert_eq!(v["error"]["message"], "Mail service not enabled");
}

#[tokio::test]
async fn directory_users_list_pages_orders_and_filters() {
    let env = start(small()).await;
    let tok = env.admin_token().await;
    let cust = env.sim.customer_id();
    let mut emails = Vec::new();
    let mut page: Option<String> = None;
    let mut calls = 0;
    loop {
        let mut path =
            format!("/admin/directory/v1/users?customer={cust}&maxResults=3&orderBy=email");
        if let Some(p) = &page {
            path.push_str(&format!("&pageToken={p}"));
        }
        let (s, v) = env.get(&tok, &path).await;
        assert_eq!(s, 200, "{v}");
        calls += 1;
        assert_eq!(v["kind"], "admin#directory#users");
        for u in v["users"].as_array().expect("users") {
            assert_eq!(u["kind"], "admin#directory#user");
            emails.push(u["primaryEmail"].as_str().expect("email").to_string());
        }
        match v["nextPageToken"].as_str() {
            Some(t) => page = Some(t.to_string()),
            None => break,
        }
    }
    assert_eq!(calls, 3);
    let mut expected: Vec<String> = env
        .sim
        .users()
        .into_iter()
        .map(|u| u.primary_email)
        .collect();
    expected.sort();
    assert_eq!(emails, expected);

    // my_customer + the connector's field mask
    let (s, v) = env
        .get(
            &tok,
            &format!(
                "/admin/directory/v1/users?customer=my_customer&fields={}",
                enc("nextPageToken,users(primaryEmail,creationTime)")
            ),
        )
        .await;
    assert_eq!(s, 200);
    let first = &v["users"][0];
    assert_eq!(first.as_object().expect("obj").len(), 2, "{first}");
    assert!(first["creationTime"].as_str().expect("ts").ends_with("Z"));

    // query subset
    let (_, v) = env
        .get(
            &tok,
            &format!("/admin/directory/v1/users?customer={cust}&query=isSuspended%3Dtrue"),
        )
        .await;
    let suspended: Vec<_> = v["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|u| u["suspended"].clone())
        .collect();
    assert!(!suspended.is_empty() && suspended.iter().all(|s| s == true));
    let (_, v) = env
        .get(
            &tok,
            &format!(
                "/admin/directory/v1/users?domain={}&query={}",
                env.sim.domain(),
                enc("email:admin*")
            ),
        )
        .await;
    assert_eq!(v["users"].as_array().expect("users").len(), 1);

    // errors
    assert_eq!(env.get(&tok, "/admin/directory/v1/users").await.0, 400);
    let (s, v) = env
        .get(
            &tok,
            &format!("/admin/directory/v1/users?customer={cust}&maxResults=501"),
        )
        .await;
    assert_eq!(
        (s, v["error"]["errors"][0]["reason"].as_str()),
        (400, Some("invalid"))
    );
    assert_eq!(
        env.get(&tok, "/admin/directory/v1/users?customer=C0nope")
            .await
            .0,
        400
    );
    let (s, _) = env
        .get(
            &tok,
            &format!("/admin/directory/v1/users?customer={cust}&pageToken=bogus"),
        )
        .await;
    assert_eq!(s, 400);
    // a non-admin subject gets a token but no access
    let user = env.regular_user();
    let t2 = env.token(&user, SCOPE_DIRECTORY_READONLY).await;
    let (s, v) = env
        .get(&t2, &format!("/admin/directory/v1/users?customer={cust}"))
        .await;
    assert_eq!(s, 403);
    assert_eq!(
        v["error"]["message"],
        "Not Authorized to access this resource/api"
    );
}
