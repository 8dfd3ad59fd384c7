//! Service-account keys: deterministic RSA 2048 keys, key JSON, RS256 JWT signing and verification.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use rsa::sha2::Sha256;
use rsa::{PrivateKey, PublicKey};
use serde::{Deserialize, Serialize};

use crate::SimError;
use crate::rng::{KeyRng, h2};

/// Google's token URL, which google-auth puts into `aud` whatever `token_uri` says.
pub const GOOGLE_TOKEN_URL: &str = "https://oauth2.googleapis.com/token";
/// The JWT-bearer grant type.
pub const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

/// An RSA key pair with its PKCS#8 PEM.
pub struct KeyMaterial {
    pub(crate) pem: String,
    pub(crate) public: PublicKey,
}

impl KeyMaterial {
    /// The PKCS#8 PEM of the private key.
    pub fn private_key_pem(&self) -> &str {
        &self.pem
    }
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyMaterial").finish_non_exhaustive()
    }
}

/// A 2048-bit RSA key derived deterministically from `seed`. Generation is slow (a second or
/// more), so keys are cached for the life of the process.
pub fn rsa_key(seed: u64) -> Arc<KeyMaterial> {
    static CACHE: OnceLock<Mutex<HashMap<u64, Arc<KeyMaterial>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(|| Mutex::new(HashMap::new()));
    // Holding the lock while generating serialises concurrent generation of the same key,
    // which is what we want (generate once).
    let mut map = cache.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(k) = map.get(&seed) {
        return k.clone();
    }
    let mut rng = KeyRng::new(h2(seed, 0x5eed_4b65_79));
    // A 2048-bit key with the 65537 exponent cannot fail to generate with an infallible RNG.
    let key = match PrivateKey::new(&mut rng, 2048) {
        Ok(k) => k,
        Err(e) => panic!("rsa key generation failed: {e}"),
    };
    let pem = match key.to_pkcs8_pem(LineEnding::LF) {
        Ok(p) => p.to_string(),
        Err(e) => panic!("pkcs8 encoding failed: {e}"),
    };
    let km = Arc::new(KeyMaterial {
        public: key.to_public_key(),
        pem,
    });
    map.insert(seed, km.clone());
    km
}

/// The service-account key JSON, field for field as the Cloud console writes it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServiceAccountKey {
    #[serde(rename = "type")]
    pub key_type: String,
    pub project_id: String,
    pub private_key_id: String,
    pub private_key: String,
    pub client_email: String,
    pub client_id: String,
    pub auth_uri: String,
    pub token_uri: String,
    pub auth_provider_x509_cert_url: String,
    pub client_x509_cert_url: String,
    pub universe_domain: String,
}

impl ServiceAccountKey {
    /// Parses a key JSON string.
    pub fn from_json(json: &str) -> Result<Self, SimError> {
        serde_json::from_str(json).map_err(|e| SimError::InvalidInput(format!("key json: {e}")))
    }

    /// Serialises as pretty JSON (what a download looks like).
    pub fn to_json(&self) -> String {
        // Serialising a struct of strings cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }
}

/// Claims for [`sign_assertion`].
#[derive(Debug, Clone, Serialize)]
pub struct AssertionClaims {
    pub iss: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<String>,
    pub scope: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

impl AssertionClaims {
    /// Claims as google-auth builds them: `aud` = Google's token URL, one hour lifetime.
    pub fn google_auth(
        key: &ServiceAccountKey,
        sub: Option<&str>,
        scopes: &[&str],
        now: i64,
    ) -> Self {
        AssertionClaims {
            iss: key.client_email.clone(),
            sub: sub.map(str::to_string),
            scope: scopes.join(" "),
            aud: GOOGLE_TOKEN_URL.to_string(),
            iat: now,
            exp: now + 3600,
        }
    }
}

/// Signs an RS256 JWT with the key's private key, header `{"typ":"JWT","alg":"RS256","kid":…}`.
pub fn sign_assertion(
    key: &ServiceAccountKey,
    claims: &AssertionClaims,
) -> Result<String, SimError> {
    let header = serde_json::json!({"typ": "JWT", "alg": "RS256", "kid": key.private_key_id});
    let claims = serde_json::to_value(claims).map_err(|e| SimError::InvalidInput(e.to_string()))?;
    sign_jwt_value(&key.private_key, &header, &claims)
}

/// Signs arbitrary header and claims JSON (tests use it to forge odd assertions).
pub fn sign_jwt_value(
    private_key_pem: &str,
    header: &serde_json::Value,
    claims: &serde_json::Value,
) -> Result<String, SimError> {
    let key = PrivateKey::from_pkcs8_pem(private_key_pem)
        .map_err(|e| SimError::InvalidInput(format!("private key: {e}")))?;
    let mut input = URL_SAFE_NO_PAD.encode(header.to_string());
    input.push('.');
    input.push_str(&URL_SAFE_NO_PAD.encode(claims.to_string()));
    let sig = key
        .pkcs1v15_sign::<Sha256>(input.as_bytes())
        .map_err(|e| SimError::InvalidInput(format!("signing: {e}")))?;
    input.push('.');
    input.push_str(&URL_SAFE_NO_PAD.encode(sig));
    Ok(input)
}

/// Verifies an RS256 signature over `signing_input`.
pub(crate) fn verify_rs256(public: &PublicKey, signing_input: &[u8], sig: &[u8]) -> bool {
    public.pkcs1v15_verify::<Sha256>(signing_input, sig).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_is_deterministic_and_signs() {
        let a = rsa_key(7);
        let b = rsa_key(7);
        assert_eq!(a.pem, b.pem);
        assert!(a.pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let key = ServiceAccountKey {
            key_type: "service_account".into(),
            project_id: "p".into(),
            private_key_id: "k".into(),
            private_key: a.pem.clone(),
            client_email: "sa@p.iam.gserviceaccount.com".into(),
            client_id: "1".into(),
            auth_uri: String::new(),
            token_uri: String::new(),
            auth_provider_x509_cert_url: String::new(),
            client_x509_cert_url: String::new(),
            universe_domain: "googleapis.com".into(),
        };
        let claims = AssertionClaims::google_auth(&key, Some("u@x.test"), &["s"], 1000);
        let jwt = sign_assertion(&key, &claims).expect("sign");
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let input = format!("{}.{}", parts[0], parts[1]);
        let sig = URL_SAFE_NO_PAD.decode(parts[2]).expect("b64");
        assert!(verify_rs256(&a.public, input.as_bytes(), &sig));
        assert!(!verify_rs256(&a.public, b"other", &sig));
    }
}
