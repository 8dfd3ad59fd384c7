//! Service-account JWT-bearer grant with domain-wide delegation, and a token cache keyed by
//! (subject, scope) that refreshes before expiry and single-flights concurrent refreshes.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use connector_framework::Secret;
use jsonwebtoken::{Algorithm, Header};
use serde::{Deserialize, Serialize};

use crate::{
    api::SendTraced as _,
    config::ServiceAccountKey,
    error::GoogleError,
    retry::RetryPolicy,
    stats::{GmailStats, inc},
};

pub const SCOPE_GMAIL: &str = "https://www.googleapis.com/auth/gmail.readonly";
pub const SCOPE_DIRECTORY: &str = "https://www.googleapis.com/auth/admin.directory.user.readonly";
/// google-auth sends this audience whatever the `token_uri` is.
pub const JWT_AUDIENCE: &str = "https://oauth2.googleapis.com/token";
const GRANT_TYPE: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Assertion lifetime (Google's maximum).
const ASSERTION_LIFETIME_SECS: i64 = 3600;
/// A cached token is replaced when less than this remains.
const REFRESH_MARGIN: Duration = Duration::from_secs(300);

/// Claims of the JWT-bearer assertion (RFC 7523).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub scope: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

/// Signs an RS256 assertion impersonating `subject` for `scopes`, issued at `now` (epoch s).
pub fn sign_assertion(
    key: &ServiceAccountKey,
    subject: &str,
    scopes: &[&str],
    now: i64,
) -> Result<String, GoogleError> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = key.private_key_id.clone();
    let claims = Claims {
        iss: key.client_email.clone(),
        sub: subject.to_owned(),
        scope: scopes.join(" "),
        aud: JWT_AUDIENCE.to_owned(),
        iat: now,
        exp: now + ASSERTION_LIFETIME_SECS,
    };
    ring_rs256::install();
    jsonwebtoken::encode(&header, &claims, &key.signing_key)
        .map_err(|e| GoogleError::Key(format!("cannot sign the assertion: {}", e.kind_name())))
}

/// RS256 signatures made with `ring` (linked already, for TLS) instead of the pure-Rust `rsa`
/// crate behind jsonwebtoken's `rust_crypto` backend, which spent several milliseconds of CPU
/// per signature: one per (mailbox, scope) token, 51 for a sync of 50 mailboxes. jsonwebtoken
/// still builds the JWT; every other algorithm, and keys ring refuses (outside 2048 – 4096
/// bits), stay with `rust_crypto`.
mod ring_rs256 {
    use std::sync::LazyLock;

    use jsonwebtoken::{
        Algorithm, EncodingKey,
        crypto::{CryptoProvider, JwtSigner, rust_crypto},
        errors::Result,
    };
    use ring::{
        rand::SystemRandom,
        signature::{RSA_PKCS1_SHA256, RsaKeyPair},
    };

    pub(super) static PROVIDER: LazyLock<CryptoProvider> = LazyLock::new(|| CryptoProvider {
        signer_factory: new_signer,
        ..rust_crypto::DEFAULT_PROVIDER.clone()
    });

    /// Makes this the process's jsonwebtoken provider, unless one is set already (then that
    /// one signs: slower, same signatures).
    pub(super) fn install() {
        static INSTALLED: LazyLock<()> = LazyLock::new(|| {
            let _ = PROVIDER.install_default();
        });
        LazyLock::force(&INSTALLED);
    }

    fn new_signer(algorithm: &Algorithm, key: &EncodingKey) -> Result<Box<dyn JwtSigner>> {
        if *algorithm == Algorithm::RS256
            // The key's bytes are PKCS#1 `RSAPrivateKey` DER for an RSA key.
            && let Ok(pair) = RsaKeyPair::from_der(key.as_bytes())
        {
            return Ok(Box::new(RingRs256(pair)));
        }
        (rust_crypto::DEFAULT_PROVIDER.signer_factory)(algorithm, key)
    }

    struct RingRs256(RsaKeyPair);

    impl signature::Signer<Vec<u8>> for RingRs256 {
        fn try_sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, signature::Error> {
            let mut sig = vec![0; self.0.public().modulus_len()];
            // PKCS#1 v1.5 is deterministic: the generator only blinds the computation.
            self.0
                .sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), msg, &mut sig)
                .map_err(|_| signature::Error::new())?;
            Ok(sig)
        }
    }

    impl JwtSigner for RingRs256 {
        fn algorithm(&self) -> Algorithm {
            Algorithm::RS256
        }
    }
}

trait KindName {
    fn kind_name(&self) -> &'static str;
}

impl KindName for jsonwebtoken::errors::Error {
    fn kind_name(&self) -> &'static str {
        use jsonwebtoken::errors::ErrorKind as K;
        match self.kind() {
            K::InvalidRsaKey(_) => "invalid RSA key",
            K::InvalidKeyFormat => "invalid key format",
            K::RsaFailedSigning => "RSA signing failed",
            _ => "signing error",
        }
    }
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
}

#[derive(Clone)]
struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

type Slot = Arc<tokio::sync::Mutex<Option<CachedToken>>>;

/// Access tokens per (subject, scope).
pub struct TokenProvider {
    key: ServiceAccountKey,
    http: reqwest::Client,
    slots: Mutex<HashMap<(String, &'static str), Slot>>,
    stats: Arc<GmailStats>,
    retry: RetryPolicy,
}

impl TokenProvider {
    pub fn new(
        key: ServiceAccountKey,
        http: reqwest::Client,
        stats: Arc<GmailStats>,
        retry: RetryPolicy,
    ) -> Self {
        Self {
            key,
            http,
            slots: Mutex::new(HashMap::new()),
            stats,
            retry,
        }
    }

    fn slot(&self, subject: &str, scope: &'static str) -> Slot {
        // A poisoned map only means another task panicked mid-insert; the map is still sound.
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots
            .entry((subject.to_ascii_lowercase(), scope))
            .or_default()
            .clone()
    }

    /// A valid access token for `subject` and `scope`; at most one mint per key is in flight.
    pub async fn token(&self, subject: &str, scope: &'static str) -> Result<Secret, GoogleError> {
        let slot = self.slot(subject, scope);
        let mut guard = slot.lock().await;
        if let Some(cached) = guard.as_ref()
            && Instant::now() < cached.refresh_at
        {
            return Ok(cached.token.clone());
        }
        let fresh = self.mint(subject, scope).await?;
        let token = fresh.token.clone();
        *guard = Some(fresh);
        Ok(token)
    }

    /// Drops a token the API refused (401), so the next call mints a new one.
    pub async fn invalidate(&self, subject: &str, scope: &'static str, refused: &Secret) {
        let slot = self.slot(subject, scope);
        let mut guard = slot.lock().await;
        if guard.as_ref().is_some_and(|c| &c.token == refused) {
            *guard = None;
        }
    }

    async fn mint(&self, subject: &str, scope: &'static str) -> Result<CachedToken, GoogleError> {
        let mut attempt = 0u32;
        loop {
            match self.mint_once(subject, scope).await {
                Ok(t) => return Ok(t),
                Err(e) if e.is_retryable() && attempt + 1 < self.retry.max_attempts => {
                    inc(&self.stats.token_retries);
                    let wait = self.retry.delay(attempt, e.retry_after());
                    tracing::debug!(subject, error = %e, ?wait, "token request failed, retrying");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn mint_once(
        &self,
        subject: &str,
        scope: &'static str,
    ) -> Result<CachedToken, GoogleError> {
        let now = chrono::Utc::now().timestamp();
        // A few milliseconds of CPU, once per mailbox and hour: signed in place (the blocking
        // pool would start a thread per mailbox when a sync starts).
        let assertion = sign_assertion(&self.key, subject, &[scope], now)?;
        let started = Instant::now();
        inc(&self.stats.tokens_minted);
        let response = self
            .http
            .post(&self.key.token_uri)
            .form(&[
                ("grant_type", GRANT_TYPE),
                ("assertion", assertion.as_str()),
            ])
            .send_traced()
            .await
            .map_err(|source| GoogleError::Transport {
                method: "oauth2.token",
                source,
            })?;
        let status = response.status().as_u16();
        let retry_after = crate::api::retry_after_of(&response);
        let body = response
            .bytes()
            .await
            .map_err(|source| GoogleError::Transport {
                method: "oauth2.token",
                source,
            })?;
        if !(200..300).contains(&status) {
            return Err(GoogleError::from_token_response(
                subject,
                status,
                &body,
                retry_after,
            ));
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| GoogleError::Decode {
                method: "oauth2.token",
                message: "token response is not {access_token, expires_in}".into(),
            })?;
        let expires_in = parsed
            .expires_in
            .as_ref()
            .and_then(|v| match v {
                serde_json::Value::Number(n) => n.as_u64(),
                serde_json::Value::String(s) => s.trim().parse().ok(),
                _ => None,
            })
            .unwrap_or(3599);
        // A lifetime an `Instant` cannot hold (an endpoint answering u64::MAX) is thirty years.
        let lifetime = Duration::from_secs(expires_in).min(connector_framework::time::FOREVER);
        // Refresh 5 minutes early; for short-lived tokens (tests) at half of the lifetime.
        let margin = REFRESH_MARGIN.min(lifetime / 2);
        Ok(CachedToken {
            token: Secret::new(parsed.access_token),
            refresh_at: started + lifetime - margin,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use base64::Engine as _;

    use super::*;
    use crate::config::{ServiceAccountKey, tests::key_json};

    /// ring's RS256 signatures are byte for byte the `rsa` crate's (PKCS#1 v1.5 is
    /// deterministic), and ring takes the key of a Google-style (PKCS#8 PEM) service account.
    #[test]
    fn ring_signs_as_rust_crypto_does() {
        use jsonwebtoken::crypto::rust_crypto;
        use ring::signature::RsaKeyPair;
        let key = ServiceAccountKey::parse(&key_json(&[])).expect("key");
        assert!(RsaKeyPair::from_der(key.signing_key.as_bytes()).is_ok());
        let msg = b"header.claims";
        let ring = (ring_rs256::PROVIDER.signer_factory)(&Algorithm::RS256, &key.signing_key)
            .expect("signer")
            .try_sign(msg)
            .expect("signature");
        let rust =
            (rust_crypto::DEFAULT_PROVIDER.signer_factory)(&Algorithm::RS256, &key.signing_key)
                .expect("signer")
                .try_sign(msg)
                .expect("signature");
        assert_eq!(ring.len(), 256);
        assert_eq!(ring, rust);
        // Other algorithms are rust_crypto's.
        assert!((ring_rs256::PROVIDER.signer_factory)(&Algorithm::RS384, &key.signing_key).is_ok());
    }

    #[test]
    fn assertion_has_google_claims_and_kid() {
        let key = ServiceAccountKey::parse(&key_json(&[])).expect("key");
        let jwt = sign_assertion(&key, "ann@acme.test", &[SCOPE_GMAIL, SCOPE_DIRECTORY], 1000)
            .expect("sign");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let header: serde_json::Value =
            serde_json::from_slice(&b64.decode(parts[0]).expect("b64")).expect("json");
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], "0123456789abcdef0123456789abcdef01234567");
        let claims: Claims =
            serde_json::from_slice(&b64.decode(parts[1]).expect("b64")).expect("json");
        assert_eq!(
            claims,
            Claims {
                iss: "sync@p.iam.gserviceaccount.com".into(),
                sub: "ann@acme.test".into(),
                scope: format!("{SCOPE_GMAIL} {SCOPE_DIRECTORY}"),
                aud: JWT_AUDIENCE.into(),
                iat: 1000,
                exp: 4600,
            }
        );
        assert!(!parts[2].is_empty() && !parts[2].contains('='));
    }

    /// A token provider whose key's `token_uri` is `app`'s `/token`, served on a local port.
    async fn provider_of(app: axum::Router) -> TokenProvider {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        let key = ServiceAccountKey::parse(&key_json(&[(
            "token_uri",
            serde_json::Value::from(format!("http://{addr}/token")),
        )]))
        .expect("key");
        TokenProvider::new(
            key,
            reqwest::Client::new(),
            Arc::new(GmailStats::default()),
            RetryPolicy::fast(),
        )
    }

    /// A token answer whose `expires_in` is beyond what an `Instant` can hold panicked the
    /// sync (`Instant + Duration` overflow); the token is now used and cached.
    #[tokio::test]
    async fn a_huge_token_lifetime_does_not_panic() {
        connector_framework::install_crypto_provider();
        for expires_in in [
            serde_json::Value::from(u64::MAX),
            serde_json::Value::from("10000000000000000000"),
        ] {
            let app = axum::Router::new().route(
                "/token",
                axum::routing::post(move || {
                    let expires_in = expires_in.clone();
                    async move {
                        axum::Json(serde_json::json!({
                            "access_token": "ya29.long", "expires_in": expires_in
                        }))
                    }
                }),
            );
            let provider = provider_of(app).await;
            let token = provider.token("ann@acme.test", SCOPE_GMAIL).await;
            assert_eq!(token.expect("token").expose(), "ya29.long");
        }
    }

    #[tokio::test]
    async fn tokens_are_cached_and_single_flighted() {
        connector_framework::install_crypto_provider();
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let app = axum::Router::new().route(
            "/token",
            axum::routing::post(move || {
                let h = h.clone();
                async move {
                    h.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    axum::Json(serde_json::json!({
                        "access_token": "ya29.test", "expires_in": "3599", "token_type": "Bearer"
                    }))
                }
            }),
        );
        let provider = Arc::new(provider_of(app).await);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let p = provider.clone();
                tokio::spawn(async move { p.token("ann@acme.test", SCOPE_GMAIL).await })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.expect("join").expect("token").expose(), "ya29.test");
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        provider
            .token("bob@acme.test", SCOPE_GMAIL)
            .await
            .expect("bob");
        provider
            .token("ann@acme.test", SCOPE_DIRECTORY)
            .await
            .expect("dir");
        assert_eq!(hits.load(Ordering::SeqCst), 3);
        provider
            .invalidate("ann@acme.test", SCOPE_GMAIL, &Secret::new("ya29.test"))
            .await;
        provider
            .token("ann@acme.test", SCOPE_GMAIL)
            .await
            .expect("again");
        assert_eq!(hits.load(Ordering::SeqCst), 4);
    }
}
