//! The Gmail connector's configuration (field names are Elastic's) and the service account key.

use connector_framework::{
    Secret,
    source::{ConfigurationError, FieldError},
};
use jsonwebtoken::EncodingKey;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub const FIELD_CREDENTIALS: &str = "service_account_credentials";
pub const FIELD_SUBJECT: &str = "subject";
pub const FIELD_CUSTOMER_ID: &str = "customer_id";
pub const FIELD_BASE_URL: &str = "google_api_base_url";

/// Regex of Elastic's `subject` validation.
pub const EMAIL_PATTERN: &str = r"^\S+@\S+\.\S+$";

fn default_true() -> bool {
    true
}
fn default_mailboxes() -> u32 {
    8
}
fn default_requests() -> u32 {
    64
}
fn default_batch() -> u32 {
    1
}

/// Configuration of a Gmail connector (service type `gmail`).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct GmailConfig {
    /// The service account credentials generated from Google Cloud Platform (JSON string).
    #[schemars(extend(
        "x-label" = "GMail service account JSON",
        "x-order" = 1,
        "x-display" = "textarea",
        "x-sensitive" = true,
        "x-tooltip" = "The JSON key of a service account with domain-wide delegation for the scopes https://www.googleapis.com/auth/gmail.readonly and https://www.googleapis.com/auth/admin.directory.user.readonly."
    ))]
    pub service_account_credentials: Secret,

    /// Google Workspace admin email. Required to enable document level security (DLS).
    #[schemars(
        regex(pattern = r"^\S+@\S+\.\S+$"),
        extend(
            "x-label" = "Google Workspace admin email",
            "x-order" = 2,
            "x-display" = "text",
            "x-tooltip" = "The service account impersonates this admin to list the Workspace users (Directory API)."
        )
    )]
    pub subject: String,

    /// Google customer id. Required to fetch messages and to enable document level security (DLS).
    #[schemars(extend(
        "x-label" = "Google customer ID",
        "x-order" = 3,
        "x-display" = "text",
        "x-tooltip" = "Google Workspace Admin Console -> Account -> Customer ID (or my_customer)."
    ))]
    pub customer_id: String,

    /// Toggle to fetch spam and trash emails.
    #[serde(default)]
    #[schemars(extend(
        "x-label" = "Include spam and trash emails",
        "x-order" = 4,
        "x-display" = "toggle",
        "x-tooltip" = "Will include spam and trash emails, when set to true."
    ))]
    pub include_spam_and_trash: bool,

    /// Index the whole raw RFC 822 message (base64) in `_attachment` for the ingest pipeline.
    #[serde(default)]
    #[schemars(extend(
        "x-label" = "Include full raw message",
        "x-order" = 5,
        "x-display" = "toggle",
        "x-tooltip" = "Adds the complete raw message (headers, all parts, attachments) as _attachment for the ingest pipeline's attachment processor. Off: only parsed fields and the body text are indexed."
    ))]
    pub include_full_raw_message: bool,

    /// Toggle to enable document level security (DLS).
    #[serde(default = "default_true")]
    #[schemars(extend(
        "x-label" = "Enable document level security",
        "x-order" = 6,
        "x-display" = "toggle",
        "x-tooltip" = "Document level security ensures identities and permissions set in GMail are maintained in Elasticsearch: each message is visible to its mailbox owner only. Access control syncs fetch the Workspace users."
    ))]
    pub use_document_level_security: bool,

    /// How many mailboxes are synced at the same time.
    #[serde(default = "default_mailboxes")]
    #[schemars(
        range(min = 1, max = 256),
        extend(
            "x-label" = "Maximum concurrent mailboxes",
            "x-order" = 7,
            "x-display" = "numeric",
            "x-tooltip" = "Number of mailboxes fetched in parallel. Each mailbox has its own Gmail quota."
        )
    )]
    pub max_concurrent_mailboxes: u32,

    /// Upper bound of Google API requests in flight (all mailboxes together).
    #[serde(default = "default_requests")]
    #[schemars(
        range(min = 1, max = 1024),
        extend(
            "x-label" = "Maximum concurrent requests",
            "x-order" = 8,
            "x-display" = "numeric",
            "x-tooltip" = "Global cap of Google API requests in flight. Per mailbox at most 8 are sent at once and about 245 quota units are spent per second (98 % of Gmail's per-user limit of 250)."
        )
    )]
    pub max_concurrent_requests: u32,

    /// `messages.get` calls sent together in one Gmail batch request (1 = no batching).
    #[serde(default = "default_batch")]
    #[schemars(
        range(min = 1, max = 8),
        extend(
            "x-label" = "Messages per batch request",
            "x-order" = 9,
            "x-display" = "numeric",
            "x-tooltip" = "Messages fetched per Gmail batch request (1 to 8; 1 = one request per message). Batches save CPU and requests when Gmail's per-user quota is not what limits the sync. Gmail charges all messages of a batch the moment it arrives, so the connector slows a batching mailbox down to keep each burst within the per-user quota (batches of 8 fetch about 15 % fewer messages per second than single requests there): keep 1 when the quota is the limit."
        )
    )]
    pub messages_per_batch_request: u32,

    /// Advanced: base URL replacing Google's API hosts (e.g. a local simulator). Empty = Google.
    #[serde(default)]
    #[schemars(extend(
        "x-label" = "Google API base URL (advanced)",
        "x-order" = 10,
        "x-display" = "text",
        "x-ui-restrictions" = ["advanced"],
        "x-tooltip" = "Leave empty. For tests against a Google Workspace simulator: its URL; Directory and Gmail paths are appended. The token endpoint is always the key's token_uri."
    ))]
    pub google_api_base_url: String,
}

impl GmailConfig {
    /// A configuration with Elastic's defaults for the optional fields.
    pub fn new(credentials: impl Into<String>, subject: &str, customer_id: &str) -> Self {
        Self {
            service_account_credentials: Secret::new(credentials.into()),
            subject: subject.to_owned(),
            customer_id: customer_id.to_owned(),
            include_spam_and_trash: false,
            include_full_raw_message: false,
            use_document_level_security: true,
            max_concurrent_mailboxes: default_mailboxes(),
            max_concurrent_requests: default_requests(),
            messages_per_batch_request: default_batch(),
            google_api_base_url: String::new(),
        }
    }

    /// Local checks (no network), with one message per field.
    pub fn check(&self) -> Result<ServiceAccountKey, ConfigurationError> {
        let mut errors = Vec::new();
        let key = match ServiceAccountKey::parse(self.service_account_credentials.expose()) {
            Ok(k) => Some(k),
            Err(message) => {
                errors.push(field(FIELD_CREDENTIALS, message));
                None
            }
        };
        if !is_email(&self.subject) {
            errors.push(field(
                FIELD_SUBJECT,
                format!("{:?} is not an email address", self.subject),
            ));
        }
        if self.customer_id.trim().is_empty() {
            errors.push(field(
                FIELD_CUSTOMER_ID,
                "is required (the Google Workspace customer ID, or my_customer)".into(),
            ));
        }
        let base = self.google_api_base_url.trim();
        if !base.is_empty() && url_ok(base).is_err() {
            errors.push(field(
                FIELD_BASE_URL,
                format!("{base:?} is not an http(s) URL"),
            ));
        }
        match key {
            Some(key) if errors.is_empty() => Ok(key),
            _ => Err(ConfigurationError { errors }),
        }
    }

    /// The API base (no trailing slash) for Directory and Gmail calls.
    pub fn directory_base(&self) -> String {
        match self.base_override() {
            Some(b) => format!("{b}/admin/directory/v1"),
            None => "https://admin.googleapis.com/admin/directory/v1".into(),
        }
    }

    pub fn gmail_base(&self) -> String {
        match self.base_override() {
            Some(b) => format!("{b}/gmail/v1"),
            None => "https://gmail.googleapis.com/gmail/v1".into(),
        }
    }

    /// Gmail's batch endpoint (google-apis.md §4).
    pub fn gmail_batch_url(&self) -> String {
        match self.base_override() {
            Some(b) => format!("{b}/batch/gmail/v1"),
            None => "https://gmail.googleapis.com/batch/gmail/v1".into(),
        }
    }

    fn base_override(&self) -> Option<&str> {
        let b = self.google_api_base_url.trim().trim_end_matches('/');
        (!b.is_empty()).then_some(b)
    }
}

fn url_ok(s: &str) -> Result<(), ()> {
    let parsed = reqwest::Url::parse(s).map_err(|_| ())?;
    if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() {
        Ok(())
    } else {
        Err(())
    }
}

pub(crate) fn field(name: &str, message: String) -> FieldError {
    FieldError {
        field: name.to_owned(),
        message,
    }
}

/// Elastic's `^\S+@\S+\.\S+$`, without a regex engine.
pub fn is_email(s: &str) -> bool {
    if s.is_empty() || s.chars().any(char::is_whitespace) {
        return false;
    }
    let Some(at) = s.find('@') else { return false };
    let (local, rest) = (&s[..at], &s[at + 1..]);
    if local.is_empty() {
        return false;
    }
    // `\S+\.\S+` after the first `@`: some dot with at least one char on each side.
    rest.char_indices()
        .any(|(i, c)| c == '.' && i > 0 && i + 1 < rest.len())
}

/// Keys a service account key file may have (aiogoogle's set plus `universe_domain`).
const ALLOWED_KEYS: &[&str] = &[
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
    "subject",
    "scopes",
    "additional_claims",
];

pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";

/// A parsed service account key.
#[derive(Clone)]
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key_id: Option<String>,
    pub token_uri: String,
    pub(crate) signing_key: EncodingKey,
    /// Identifies the key material (for sharing token caches between jobs).
    pub(crate) fingerprint: u64,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.private_key_id)
            .field("token_uri", &self.token_uri)
            .field("private_key", &Secret::REDACTED)
            .finish()
    }
}

impl ServiceAccountKey {
    /// Parses the key JSON (or a JSON string holding the key JSON). Messages never contain the
    /// private key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Err("is required: paste the service account's JSON key".into());
        }
        let mut value: Value = serde_json::from_str(text).map_err(|e| {
            format!(
                "is not valid JSON (line {}, column {})",
                e.line(),
                e.column()
            )
        })?;
        if let Value::String(inner) = &value {
            value = serde_json::from_str(inner).map_err(|e| {
                format!(
                    "is a JSON string that does not hold valid JSON (line {}, column {})",
                    e.line(),
                    e.column()
                )
            })?;
        }
        let Value::Object(map) = value else {
            return Err("must be a JSON object (the service account key file)".into());
        };
        let mut unknown: Vec<&str> = map
            .keys()
            .map(String::as_str)
            .filter(|k| !ALLOWED_KEYS.contains(k))
            .collect();
        if !unknown.is_empty() {
            unknown.sort_unstable();
            return Err(format!(
                "has unknown keys: {}; expected a Google service account key file",
                unknown.join(", ")
            ));
        }
        let get = |k: &str| -> Result<Option<&str>, String> {
            match map.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => Err(format!("key {k:?} must be a string")),
            }
        };
        match get("type")? {
            Some("service_account") => {}
            Some(other) => {
                return Err(format!(
                    "has type {other:?}; a service account key (type \"service_account\") is required"
                ));
            }
            None => return Err("lacks \"type\": \"service_account\"".into()),
        }
        if let Some(universe) = get("universe_domain")?
            && universe != "googleapis.com"
        {
            return Err(format!(
                "belongs to universe {universe:?}; domain-wide delegation needs googleapis.com"
            ));
        }
        let client_email = get("client_email")?
            .filter(|s| !s.trim().is_empty())
            .ok_or("lacks \"client_email\"")?
            .to_owned();
        let token_uri = get("token_uri")?
            .filter(|s| !s.trim().is_empty())
            .unwrap_or(DEFAULT_TOKEN_URI)
            .to_owned();
        if url_ok(&token_uri).is_err() {
            return Err(format!("has an invalid \"token_uri\" {token_uri:?}"));
        }
        let pem = get("private_key")?
            .filter(|s| !s.trim().is_empty())
            .ok_or("lacks \"private_key\"")?;
        let pem = pem.replace("\r\n", "\n");
        let signing_key = EncodingKey::from_rsa_pem(pem.as_bytes()).map_err(|_| {
            "has a \"private_key\" that is not an RSA private key in PEM".to_owned()
        })?;
        let private_key_id = get("private_key_id")?.map(str::to_owned);
        let fingerprint = {
            use std::hash::{Hash as _, Hasher as _};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            (&client_email, &private_key_id, &token_uri, &pem).hash(&mut h);
            h.finish()
        };
        let key = Self {
            client_email,
            private_key_id,
            token_uri,
            signing_key,
            fingerprint,
        };
        // The PEM parser checks the envelope only; a test signature proves the key works.
        crate::auth::sign_assertion(&key, "validation@example.com", &["scope"], 0).map_err(
            |_| "has a \"private_key\" that cannot sign (not a valid RSA private key)".to_owned(),
        )?;
        Ok(key)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A 2048-bit RSA test key (generated for these tests only).
    pub const TEST_PEM: &str = include_str!("../tests/data/test-key.pem");

    pub fn key_json(extra: &[(&str, Value)]) -> String {
        let mut v = serde_json::json!({
            "type": "service_account",
            "project_id": "p",
            "private_key_id": "0123456789abcdef0123456789abcdef01234567",
            "private_key": TEST_PEM,
            "client_email": "sync@p.iam.gserviceaccount.com",
            "client_id": "100000000000000000001",
            "token_uri": "https://oauth2.googleapis.com/token",
            "universe_domain": "googleapis.com"
        });
        for (k, val) in extra {
            v[*k] = val.clone();
        }
        v.to_string()
    }

    fn err_of(cfg: &GmailConfig) -> Vec<FieldError> {
        cfg.check().err().map(|e| e.errors).unwrap_or_default()
    }

    #[test]
    fn valid_key_and_double_encoded_key() {
        let json = key_json(&[]);
        let k = ServiceAccountKey::parse(&json).expect("valid");
        assert_eq!(k.client_email, "sync@p.iam.gserviceaccount.com");
        assert!(!format!("{k:?}").contains("PRIVATE KEY"));
        let double = serde_json::to_string(&json).expect("string");
        assert!(ServiceAccountKey::parse(&double).is_ok());
    }

    #[test]
    fn pkcs1_pem_and_crlf_are_accepted() {
        let pkcs1 = include_str!("../tests/data/test-key-pkcs1.pem");
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let json = key_json(&[("private_key", Value::from(pkcs1.replace('\n', "\r\n")))]);
        assert!(ServiceAccountKey::parse(&json).is_ok());
    }

    #[test]
    fn key_rejections_name_the_problem() {
        let unknown = ServiceAccountKey::parse(&key_json(&[("foo", Value::from(1))]));
        assert!(unknown.expect_err("unknown").contains("unknown keys: foo"));
        let universe =
            ServiceAccountKey::parse(&key_json(&[("universe_domain", Value::from("example.eu"))]));
        assert!(universe.expect_err("universe").contains("example.eu"));
        let typ = ServiceAccountKey::parse(&key_json(&[("type", Value::from("authorized_user"))]));
        assert!(typ.expect_err("type").contains("authorized_user"));
        let bad_pem = ServiceAccountKey::parse(&key_json(&[(
            "private_key",
            Value::from("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"),
        )]));
        let msg = bad_pem.expect_err("pem");
        assert!(msg.contains("private_key"), "{msg}");
        assert!(!msg.contains("AAAA"));
        assert!(ServiceAccountKey::parse("not json").is_err());
        assert!(ServiceAccountKey::parse("[1]").is_err());
        assert!(ServiceAccountKey::parse("").is_err());
    }

    #[test]
    fn config_check_reports_each_field() {
        let mut cfg = GmailConfig::new("{}", "admin", " ");
        cfg.google_api_base_url = "ftp://x".into();
        let errors = err_of(&cfg);
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            fields,
            vec![
                FIELD_CREDENTIALS,
                FIELD_SUBJECT,
                FIELD_CUSTOMER_ID,
                FIELD_BASE_URL
            ]
        );
        let ok = GmailConfig::new(key_json(&[]), "admin@acme.test", "my_customer");
        assert!(ok.check().is_ok());
    }

    #[test]
    fn email_check_matches_elastic_regex() {
        let re = regex_lite(EMAIL_PATTERN);
        for s in [
            "a@b.c",
            "admin@acme.test",
            "a@b",
            "a b@c.d",
            "@b.c",
            "a@.c",
            "a@b.",
            "",
            "a@b.c.d",
            "a@@b.c",
        ] {
            assert_eq!(is_email(s), re(s), "{s:?}");
        }
    }

    // Hand-rolled equivalent of the regex for the test (no regex dependency in this crate).
    fn regex_lite(_p: &str) -> impl Fn(&str) -> bool {
        |s: &str| {
            // ^\S+@\S+\.\S+$ : some '@' split with non-empty left, and in the right some '.'
            // with non-empty sides, all non-whitespace.
            if s.chars().any(char::is_whitespace) {
                return false;
            }
            s.char_indices().any(|(i, c)| {
                c == '@'
                    && i > 0
                    && s[i + 1..]
                        .char_indices()
                        .any(|(j, d)| d == '.' && j > 0 && i + 1 + j + 1 < s.len())
            })
        }
    }

    #[test]
    fn defaults_follow_elastic() {
        let cfg: GmailConfig = serde_json::from_value(serde_json::json!({
            "service_account_credentials": "{}",
            "subject": "a@b.c",
            "customer_id": "x"
        }))
        .expect("parse");
        assert!(cfg.use_document_level_security);
        assert!(!cfg.include_spam_and_trash);
        assert!(!cfg.include_full_raw_message);
        assert_eq!(cfg.gmail_base(), "https://gmail.googleapis.com/gmail/v1");
        let schema = serde_json::to_value(schemars::schema_for!(GmailConfig)).expect("schema");
        let props = &schema["properties"];
        assert_eq!(props["subject"]["pattern"], EMAIL_PATTERN);
        assert_eq!(props["service_account_credentials"]["x-sensitive"], true);
        assert_eq!(props["use_document_level_security"]["default"], true);
    }
}
