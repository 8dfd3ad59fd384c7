//! `validate_config` and `ping`: the Directory and Gmail checks with the admin subject, with
//! messages naming the fields to fix.

use connector_framework::source::{ConfigurationError, FieldError, SourceError};

use crate::{
    GmailConnector,
    api::{ApiOptions, GoogleApi},
    auth::{SCOPE_DIRECTORY, SCOPE_GMAIL},
    config::{FIELD_CREDENTIALS, FIELD_CUSTOMER_ID, FIELD_SUBJECT, GmailConfig, field},
    error::{GoogleError, GoogleErrorClass},
    retry::RetryPolicy,
};

fn options(base: ApiOptions) -> ApiOptions {
    // Interactive checks: a few quick attempts rather than minutes of patience.
    ApiOptions {
        retry: RetryPolicy {
            max_attempts: base.retry.max_attempts.min(3),
            ..base.retry
        },
        ..base
    }
}

fn config_error(errors: Vec<FieldError>) -> SourceError {
    SourceError::Configuration(ConfigurationError { errors })
}

/// Maps a failed Directory call (the check, or a sync's user listing) to field errors.
pub(crate) fn directory_error(config: &GmailConfig, e: &GoogleError) -> SourceError {
    let detail = e.to_string();
    match (e, e.class()) {
        (_, GoogleErrorClass::RateLimited | GoogleErrorClass::Transient) => {
            SourceError::Transient(format!("Directory API unreachable: {detail}"))
        }
        (GoogleError::Token { .. } | GoogleError::Key(_), _) => config_error(vec![
            field(
                FIELD_CREDENTIALS,
                format!(
                    "Google refused a token for {subject}: check that this key is valid and that its client ID has domain-wide delegation for {SCOPE_DIRECTORY} ({detail})",
                    subject = config.subject
                ),
            ),
            field(
                FIELD_SUBJECT,
                "must be an existing Google Workspace user the service account may impersonate"
                    .into(),
            ),
        ]),
        (_, GoogleErrorClass::Unauthorized | GoogleErrorClass::InvalidToken) => {
            config_error(vec![field(
                FIELD_SUBJECT,
                format!(
                    "{} may not list the Workspace users: it must be an administrator with user read privileges ({detail})",
                    config.subject
                ),
            )])
        }
        (_, GoogleErrorClass::BadRequest | GoogleErrorClass::NotFound) => {
            config_error(vec![field(
                FIELD_CUSTOMER_ID,
                format!(
                    "{:?} is not a customer ID of this Workspace (Admin console -> Account -> Customer ID, or my_customer) ({detail})",
                    config.customer_id
                ),
            )])
        }
        _ => SourceError::Fatal(format!("Directory API check failed: {detail}")),
    }
}

/// Maps a failed Gmail check to field errors; `None` when the check may be considered passed.
fn gmail_error(config: &GmailConfig, e: &GoogleError) -> Option<SourceError> {
    let detail = e.to_string();
    Some(match (e, e.class()) {
        (_, GoogleErrorClass::RateLimited | GoogleErrorClass::Transient) => {
            SourceError::Transient(format!("Gmail API unreachable: {detail}"))
        }
        // The token for the Gmail scope was issued; only the admin's own mailbox is missing,
        // which does not matter for syncing the other mailboxes.
        (GoogleError::Api { .. }, GoogleErrorClass::MailboxUnavailable) => {
            tracing::info!(subject = %config.subject, "admin has no gmail mailbox; gmail scope verified by token");
            return None;
        }
        (GoogleError::Token { .. } | GoogleError::Key(_), _) => config_error(vec![field(
            FIELD_CREDENTIALS,
            format!(
                "Google refused a Gmail token: the service account's client ID needs domain-wide delegation for {SCOPE_GMAIL} ({detail})"
            ),
        )]),
        (_, GoogleErrorClass::Unauthorized | GoogleErrorClass::InvalidToken) => {
            config_error(vec![field(
                FIELD_CREDENTIALS,
                format!("Gmail refused access with the delegated token ({detail})"),
            )])
        }
        _ => SourceError::Fatal(format!("Gmail API check failed: {detail}")),
    })
}

async fn checks(api: &GoogleApi, config: &GmailConfig) -> Result<(), SourceError> {
    api.list_users_page(&config.subject, &config.customer_id, None, "1")
        .await
        .map_err(|e| directory_error(config, &e))?;
    if let Err(e) = api.get_profile(&config.subject).await
        && let Some(err) = gmail_error(config, &e)
    {
        return Err(err);
    }
    Ok(())
}

pub(crate) async fn validate(
    connector: &GmailConnector,
    config: &GmailConfig,
) -> Result<(), SourceError> {
    let api = connector.api(config, options(connector.options), true)?;
    checks(&api, config).await
}

pub(crate) async fn ping(
    connector: &GmailConnector,
    config: &GmailConfig,
) -> Result<(), SourceError> {
    let api = connector.api(config, options(connector.options), true)?;
    checks(&api, config).await
}
