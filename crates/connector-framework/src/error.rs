//! Error classification shared by the framework and connectors.
//!
//! Every library error type implements [`Classify`]: its [`ErrorKind`] decides what the caller does
//! (retry, skip the document, fail the job, report a configuration problem). Nothing in the
//! framework decides by matching error text.

/// What a failure means for the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Temporary (rate limit, 5xx, connection reset, timeout): retry with backoff.
    Transient,
    /// This one document or item cannot be processed; count it and carry on.
    SkipDocument,
    /// Optimistic-concurrency conflict: reload and retry the read-modify-write.
    Conflict,
    /// The thing asked for does not exist.
    NotFound,
    /// Credentials are wrong or lack privileges.
    Unauthorized,
    /// The user's configuration is invalid; show the message where they configure it.
    Configuration,
    /// Anything else: fail the job (or the operation) with the message.
    Fatal,
}

impl ErrorKind {
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Transient)
    }
}

/// Implemented by every error type that crosses a crate boundary.
pub trait Classify {
    fn kind(&self) -> ErrorKind;
}
