//! Google API failures, classified by HTTP status and the structured fields of Google's error
//! bodies (`error.errors[].reason`, `error.status`, OAuth2 `error`), never by message text.

use std::time::Duration;

use connector_framework::{Classify, ErrorKind};
use serde::Deserialize;

/// What a Google failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoogleErrorClass {
    /// 429, 403 with a usage-limit reason: back off and retry.
    RateLimited,
    /// 5xx, transport failures, token endpoint hiccups: retry.
    Transient,
    /// The access token is invalid or expired (API 401): refresh the token and retry once.
    InvalidToken,
    /// Delegation or credentials refused (token endpoint 400/401, API 403 `forbidden`, …).
    Unauthorized,
    /// Gmail refuses the mailbox (400 `failedPrecondition`: mail service not enabled, no `sub`).
    MailboxUnavailable,
    /// The thing asked for does not exist (404).
    NotFound,
    /// The request itself is wrong (400 and other 4xx).
    BadRequest,
    /// Quota that does not come back soon (`dailyLimitExceeded`).
    QuotaExhausted,
}

/// A failed Google call.
#[derive(Debug, thiserror::Error)]
pub enum GoogleError {
    /// An API answered with an error status (JSON error envelope parsed when present).
    #[error("google api {method} answered {status}{}: {message}", reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default())]
    Api {
        method: &'static str,
        status: u16,
        /// First `error.errors[].reason`.
        reason: Option<String>,
        /// `error.status` (canonical gRPC code name).
        status_name: Option<String>,
        message: String,
        retry_after: Option<Duration>,
    },
    /// The OAuth2 token endpoint refused the grant.
    #[error("token endpoint answered {status} for {subject}: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Token {
        status: u16,
        subject: String,
        /// OAuth2 `error` code (`unauthorized_client`, `invalid_grant`, …).
        error: String,
        description: Option<String>,
        retry_after: Option<Duration>,
    },
    /// Connection refused/reset, timeout, truncated body.
    #[error("{method}: transport error: {source}")]
    Transport {
        method: &'static str,
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx answer that is not what the API documents.
    #[error("{method}: unexpected response: {message}")]
    Decode {
        method: &'static str,
        message: String,
    },
    /// The service account key cannot sign.
    #[error("service account key: {0}")]
    Key(String),
}

#[derive(Deserialize)]
struct Envelope {
    error: EnvelopeError,
}

#[derive(Deserialize)]
struct EnvelopeError {
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    errors: Vec<EnvelopeItem>,
}

#[derive(Deserialize)]
struct EnvelopeItem {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// Reasons of 403/429 answers that mean "slow down and retry" (google-apis.md §5.2, §5.3).
const RATE_LIMIT_REASONS: &[&str] = &[
    "rateLimitExceeded",
    "userRateLimitExceeded",
    "quotaExceeded",
    "concurrentLimitExceeded",
];

impl GoogleError {
    /// Builds an API error from a non-2xx answer; the body may be Google's JSON envelope, an
    /// HTML page from a front end, or nothing.
    pub fn from_api_response(
        method: &'static str,
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Self {
        match serde_json::from_slice::<Envelope>(body) {
            Ok(env) => {
                let reason = env.error.errors.iter().find_map(|e| e.reason.clone());
                GoogleError::Api {
                    method,
                    status,
                    reason,
                    status_name: env.error.status,
                    message: env.error.message.unwrap_or_default(),
                    retry_after,
                }
            }
            Err(_) => GoogleError::Api {
                method,
                status,
                reason: None,
                status_name: None,
                message: format!("non-JSON error body ({} bytes)", body.len()),
                retry_after,
            },
        }
    }

    /// Builds a token-endpoint error from the OAuth2 `{"error","error_description"}` body.
    pub fn from_token_response(
        subject: &str,
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> Self {
        let (error, description) = match serde_json::from_slice::<OAuthError>(body) {
            Ok(e) => (e.error, e.error_description),
            Err(_) => (String::from("unparsable_response"), None),
        };
        GoogleError::Token {
            status,
            subject: subject.to_owned(),
            error,
            description,
            retry_after,
        }
    }

    pub fn class(&self) -> GoogleErrorClass {
        match self {
            GoogleError::Api {
                status,
                reason,
                status_name,
                ..
            } => classify_api(*status, reason.as_deref(), status_name.as_deref()),
            GoogleError::Token { status, error, .. } => classify_token(*status, error),
            GoogleError::Transport { .. } => GoogleErrorClass::Transient,
            GoogleError::Decode { .. } => GoogleErrorClass::Transient,
            GoogleError::Key(_) => GoogleErrorClass::Unauthorized,
        }
    }

    /// Worth retrying after a pause?
    pub fn is_retryable(&self) -> bool {
        matches!(
            self.class(),
            GoogleErrorClass::RateLimited | GoogleErrorClass::Transient
        )
    }

    /// The server's `Retry-After`, when it sent one.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GoogleError::Api { retry_after, .. } | GoogleError::Token { retry_after, .. } => {
                *retry_after
            }
            _ => None,
        }
    }

    /// The first `errors[].reason` or the OAuth2 error code.
    pub fn reason(&self) -> Option<&str> {
        match self {
            GoogleError::Api { reason, .. } => reason.as_deref(),
            GoogleError::Token { error, .. } => Some(error),
            _ => None,
        }
    }
}

fn classify_api(status: u16, reason: Option<&str>, status_name: Option<&str>) -> GoogleErrorClass {
    if reason == Some("dailyLimitExceeded") {
        return GoogleErrorClass::QuotaExhausted;
    }
    match status {
        429 => GoogleErrorClass::RateLimited,
        401 => GoogleErrorClass::InvalidToken,
        403 => {
            if reason.is_some_and(|r| RATE_LIMIT_REASONS.contains(&r))
                || status_name == Some("RESOURCE_EXHAUSTED")
            {
                GoogleErrorClass::RateLimited
            } else {
                GoogleErrorClass::Unauthorized
            }
        }
        404 => GoogleErrorClass::NotFound,
        400 if reason == Some("failedPrecondition")
            || status_name == Some("FAILED_PRECONDITION") =>
        {
            GoogleErrorClass::MailboxUnavailable
        }
        408 | 500..=599 => GoogleErrorClass::Transient,
        _ => GoogleErrorClass::BadRequest,
    }
}

fn classify_token(status: u16, error: &str) -> GoogleErrorClass {
    match error {
        "internal_failure" | "server_error" | "temporarily_unavailable" => {
            GoogleErrorClass::Transient
        }
        "unauthorized_client"
        | "invalid_grant"
        | "invalid_client"
        | "disabled_client"
        | "access_denied"
        | "admin_policy_enforced"
        | "org_internal" => GoogleErrorClass::Unauthorized,
        "invalid_scope" | "invalid_request" | "unsupported_grant_type" => {
            GoogleErrorClass::BadRequest
        }
        _ => match status {
            408 | 429 | 500..=599 => GoogleErrorClass::Transient,
            401 | 403 => GoogleErrorClass::Unauthorized,
            _ => GoogleErrorClass::BadRequest,
        },
    }
}

impl Classify for GoogleError {
    fn kind(&self) -> ErrorKind {
        match self.class() {
            GoogleErrorClass::RateLimited | GoogleErrorClass::Transient => ErrorKind::Transient,
            GoogleErrorClass::InvalidToken | GoogleErrorClass::Unauthorized => {
                ErrorKind::Unauthorized
            }
            GoogleErrorClass::MailboxUnavailable => ErrorKind::SkipDocument,
            GoogleErrorClass::NotFound => ErrorKind::NotFound,
            GoogleErrorClass::BadRequest | GoogleErrorClass::QuotaExhausted => ErrorKind::Fatal,
        }
    }
}

/// Parses `Retry-After` (delta seconds or an HTTP date).
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when.with_timezone(&chrono::Utc) - chrono::Utc::now();
    Some(delta.to_std().unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(status: u16, body: &str) -> GoogleError {
        GoogleError::from_api_response("test", status, body.as_bytes(), None)
    }

    #[test]
    fn legacy_403_rate_limits_are_retryable() {
        for reason in [
            "userRateLimitExceeded",
            "rateLimitExceeded",
            "quotaExceeded",
        ] {
            let body = format!(
                r#"{{"error":{{"errors":[{{"domain":"usageLimits","reason":"{reason}","message":"x"}}],"code":403,"message":"x"}}}}"#
            );
            let e = api(403, &body);
            assert_eq!(e.class(), GoogleErrorClass::RateLimited, "{reason}");
            assert!(e.is_retryable());
        }
    }

    #[test]
    fn quota_wording_with_403_status_resource_exhausted() {
        let e = api(
            403,
            r#"{"error":{"code":403,"message":"Quota exceeded for quota metric 'Queries'","status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert_eq!(e.class(), GoogleErrorClass::RateLimited);
    }

    #[test]
    fn concurrency_429_is_rate_limited() {
        let e = api(
            429,
            r#"{"error":{"code":429,"message":"Too many concurrent requests for user","errors":[{"message":"Too many concurrent requests for user","domain":"global","reason":"rateLimitExceeded"}],"status":"RESOURCE_EXHAUSTED"}}"#,
        );
        assert_eq!(e.class(), GoogleErrorClass::RateLimited);
        assert_eq!(e.kind(), ErrorKind::Transient);
        assert_eq!(e.reason(), Some("rateLimitExceeded"));
    }

    #[test]
    fn daily_limit_is_not_hot_retried() {
        let e = api(
            403,
            r#"{"error":{"errors":[{"domain":"usageLimits","reason":"dailyLimitExceeded"}],"code":403,"message":"Daily Limit Exceeded"}}"#,
        );
        assert_eq!(e.class(), GoogleErrorClass::QuotaExhausted);
        assert!(!e.is_retryable());
    }

    #[test]
    fn forbidden_and_scope_errors_are_unauthorized() {
        let delegation = api(
            403,
            r#"{"error":{"code":403,"message":"Delegation denied for ann@acme.test","errors":[{"message":"Delegation denied for ann@acme.test","domain":"global","reason":"forbidden"}],"status":"PERMISSION_DENIED"}}"#,
        );
        assert_eq!(delegation.class(), GoogleErrorClass::Unauthorized);
        let scopes = api(
            403,
            r#"{"error":{"code":403,"message":"Request had insufficient authentication scopes.","errors":[{"message":"Insufficient Permission","domain":"global","reason":"insufficientPermissions"}],"status":"PERMISSION_DENIED"}}"#,
        );
        assert_eq!(scopes.class(), GoogleErrorClass::Unauthorized);
        assert!(!scopes.is_retryable());
    }

    #[test]
    fn not_found_precondition_and_5xx() {
        let nf = api(
            404,
            r#"{"error":{"code":404,"message":"Requested entity was not found.","errors":[{"message":"Requested entity was not found.","domain":"global","reason":"notFound"}],"status":"NOT_FOUND"}}"#,
        );
        assert_eq!(nf.class(), GoogleErrorClass::NotFound);
        let pre = api(
            400,
            r#"{"error":{"code":400,"message":"Mail service not enabled","errors":[{"message":"Mail service not enabled","domain":"global","reason":"failedPrecondition"}],"status":"FAILED_PRECONDITION"}}"#,
        );
        assert_eq!(pre.class(), GoogleErrorClass::MailboxUnavailable);
        let html = api(502, "<html><body>Bad Gateway</body></html>");
        assert_eq!(html.class(), GoogleErrorClass::Transient);
        let unavailable = api(
            503,
            r#"{"error":{"code":503,"message":"The service is currently unavailable.","errors":[{"reason":"backendError"}],"status":"UNAVAILABLE"}}"#,
        );
        assert!(unavailable.is_retryable());
        let bad = api(
            400,
            r#"{"error":{"code":400,"message":"Invalid id value","errors":[{"reason":"invalidArgument"}],"status":"INVALID_ARGUMENT"}}"#,
        );
        assert_eq!(bad.class(), GoogleErrorClass::BadRequest);
        assert_eq!(api(401, "{}").class(), GoogleErrorClass::InvalidToken);
    }

    #[test]
    fn token_errors() {
        let t = |status, body: &str| {
            GoogleError::from_token_response("ann@acme.test", status, body.as_bytes(), None)
        };
        assert_eq!(
            t(
                401,
                r#"{"error":"unauthorized_client","error_description":"Client is unauthorized"}"#
            )
            .class(),
            GoogleErrorClass::Unauthorized
        );
        assert_eq!(
            t(
                400,
                r#"{"error":"invalid_grant","error_description":"Invalid JWT Signature."}"#
            )
            .class(),
            GoogleErrorClass::Unauthorized
        );
        assert_eq!(
            t(500, r#"{"error":"internal_failure"}"#).class(),
            GoogleErrorClass::Transient
        );
        assert_eq!(t(503, "oops").class(), GoogleErrorClass::Transient);
        assert_eq!(
            t(400, r#"{"error":"invalid_scope"}"#).class(),
            GoogleErrorClass::BadRequest
        );
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("7"), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }
}
