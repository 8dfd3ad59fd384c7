//! The connector and sync-job state machines, in one place (framework-spec §6).
//!
//! Every status write the framework performs goes through [`check_job_transition`] or
//! [`check_connector_transition`] first, so an impossible move (claiming a job that another worker
//! already runs, cancelling a finished job, declaring a connector `connected` before it was ever
//! configured) is refused here instead of being written to Elasticsearch.
//!
//! # Sync jobs
//!
//! ```text
//! pending ───claim──▶ in_progress ──done────────────▶ completed
//! suspended ─claim──▶ in_progress ──fail────────────▶ error
//!                     in_progress ──service shutdown▶ suspended
//!                     in_progress ──cancel request──▶ canceling ──runner notices──▶ canceled
//! pending|suspended ──cancel request───────────────▶ canceled
//! in_progress|canceling ──cleanup (idle or orphaned)▶ error
//! canceling ──runner fails while stopping───────────▶ error
//! pending|suspended ──refused without running───────▶ error      (extension, see below)
//! ```
//!
//! Terminal statuses (`completed`, `error`, `canceled`) have no way out. A job never moves to the
//! status it already has: a second claim of an `in_progress` job is exactly the double run that
//! Elastic's service cannot prevent (W19), so it is illegal.
//!
//! Extension over Elastic's diagram: `pending|suspended → error`. The executor uses it for a job it
//! refuses to start (unknown service type, connector deleted, sync rules invalid at start) instead
//! of leaving it `pending` forever (W2, W17).
//!
//! Cancellation goes through [`cancel_request`]: a job that never started (`pending`,
//! `suspended`) is `canceled` at once — it is never written as `canceling`, which nobody would
//! ever pick up and which the idle cleanup would later turn into `error` plus a connector in
//! `error` (W9); a running job becomes `canceling` and its runner finishes it; a finished job
//! cannot be cancelled.
//!
//! # Connectors
//!
//! Elasticsearch's own machine (enforced by `_connector/{id}/_status` only) plus two edges the
//! framework needs:
//!
//! | from | to |
//! |---|---|
//! | `created` | `needs_configuration`, `error` |
//! | `needs_configuration` | `configured`, `error` |
//! | `configured` | `needs_configuration`, `connected`, `error` |
//! | `connected` | `configured`, `error`, **`needs_configuration`** |
//! | `error` | `connected`, `configured`, **`needs_configuration`** |
//!
//! and every status may be rewritten with itself (the scheduler re-asserts `connected` or `error`
//! after each validation; an unchanged value is an idempotent write, not a transition).
//!
//! The bold edges are the framework's `prepare` step: a connector whose `configuration` is found
//! empty gets the connector's default configuration and `needs_configuration`, whatever its
//! previous status. `connected` is reached only from `configured` or `error` (a successful
//! validation or a job start); a connector still `created` or `needs_configuration` is never
//! validated, scheduled or synced. `configured` is written by Kibana / the CLI, never by the
//! scheduler.

use crate::{
    error::{Classify, ErrorKind},
    model::{ConnectorStatus, JobStatus},
};

/// Every job status, for exhaustive checks.
pub const ALL_JOB_STATUSES: [JobStatus; 7] = [
    JobStatus::Pending,
    JobStatus::InProgress,
    JobStatus::Canceling,
    JobStatus::Canceled,
    JobStatus::Suspended,
    JobStatus::Completed,
    JobStatus::Error,
];

/// Every connector status, for exhaustive checks.
pub const ALL_CONNECTOR_STATUSES: [ConnectorStatus; 5] = [
    ConnectorStatus::Created,
    ConnectorStatus::NeedsConfiguration,
    ConnectorStatus::Configured,
    ConnectorStatus::Connected,
    ConnectorStatus::Error,
];

/// A status change the state machine does not allow.
///
/// Its kind is [`ErrorKind::Conflict`]: in a running service an illegal transition means the stored
/// document is not in the state the caller read it in (another worker claimed the job, Kibana
/// cancelled it, the job finished meanwhile). The right reaction is the conflict one — reload the
/// document and decide again — not failing the process; retrying the same write blindly would be
/// wrong, and callers never do that for a conflict.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum IllegalTransition {
    /// A sync job cannot move from `from` to `to`.
    #[error("sync job status cannot change from {from} to {to}{}", job_hint(*.from, *.to))]
    Job {
        /// The stored status.
        from: JobStatus,
        /// The status that was to be written.
        to: JobStatus,
    },
    /// A connector cannot move from `from` to `to`.
    #[error("connector status cannot change from {from} to {to}{}", connector_hint(*.from, *.to))]
    Connector {
        /// The stored status.
        from: ConnectorStatus,
        /// The status that was to be written.
        to: ConnectorStatus,
    },
}

fn job_hint(from: JobStatus, to: JobStatus) -> &'static str {
    if from.is_terminal() {
        " (the job has already finished)"
    } else if from == to {
        " (it already has that status)"
    } else {
        ""
    }
}

fn connector_hint(from: ConnectorStatus, to: ConnectorStatus) -> &'static str {
    match (from, to) {
        (ConnectorStatus::Created | ConnectorStatus::NeedsConfiguration, _) => {
            " (the connector has not been configured yet)"
        }
        _ => "",
    }
}

impl Classify for IllegalTransition {
    fn kind(&self) -> ErrorKind {
        ErrorKind::Conflict
    }
}

/// Is `from → to` a legal sync-job transition? See the module documentation for the diagram.
pub fn job_transition_allowed(from: JobStatus, to: JobStatus) -> bool {
    use JobStatus::*;
    matches!(
        (from, to),
        // claim
        (Pending | Suspended, InProgress)
        // the runner ends, suspends or is asked to cancel a job (its failure: below)
        | (InProgress, Completed | Suspended | Canceling)
        // the runner notices a cancel request (failing while stopping: cleanup arm below)
        | (Canceling, Canceled)
        // a job that never started is cancelled directly (W9)
        | (Pending | Suspended, Canceled)
        // the runner fails, or cleanup fails an idle / orphaned running job
        | (InProgress | Canceling, Error)
        // extension: the executor refuses a job without running it (W2, W17)
        | (Pending | Suspended, Error)
    )
}

/// Checks a sync-job status change before it is written.
pub fn check_job_transition(from: JobStatus, to: JobStatus) -> Result<(), IllegalTransition> {
    if job_transition_allowed(from, to) {
        Ok(())
    } else {
        Err(IllegalTransition::Job { from, to })
    }
}

/// What a cancel request (Kibana, the CLI, the API) does to a job in a given status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelAction {
    /// The job never started (`pending`, `suspended`): write `canceled` now; nobody will run it.
    CancelNow,
    /// The job runs (`in_progress`): write `canceling`; its runner stops and writes `canceled`.
    RequestCancel,
    /// The job is already `canceling`: nothing to write.
    AlreadyCanceling,
}

impl CancelAction {
    /// The status to write, `None` for nothing.
    pub fn target_status(self) -> Option<JobStatus> {
        match self {
            CancelAction::CancelNow => Some(JobStatus::Canceled),
            CancelAction::RequestCancel => Some(JobStatus::Canceling),
            CancelAction::AlreadyCanceling => None,
        }
    }
}

/// What a cancel request does to a job in `status` (fixes W9: a pending job is never left in
/// `canceling`). A finished job (`completed`, `error`, `canceled`) cannot be cancelled: the error
/// says so, and the caller reports it to the user instead of writing anything.
pub fn cancel_request(status: JobStatus) -> Result<CancelAction, IllegalTransition> {
    match status {
        JobStatus::Pending | JobStatus::Suspended => Ok(CancelAction::CancelNow),
        JobStatus::InProgress => Ok(CancelAction::RequestCancel),
        JobStatus::Canceling => Ok(CancelAction::AlreadyCanceling),
        JobStatus::Completed | JobStatus::Error | JobStatus::Canceled => {
            Err(IllegalTransition::Job {
                from: status,
                to: JobStatus::Canceled,
            })
        }
    }
}

/// Is `from → to` a legal connector status change? Rewriting the current status is always
/// allowed. See the module documentation for the table.
pub fn connector_transition_allowed(from: ConnectorStatus, to: ConnectorStatus) -> bool {
    use ConnectorStatus::*;
    from == to
        || matches!(
            (from, to),
            (Created, NeedsConfiguration | Error)
                | (NeedsConfiguration, Configured | Error)
                | (Configured, NeedsConfiguration | Connected | Error)
                | (Connected, Configured | Error | NeedsConfiguration)
                | (Error, Connected | Configured | NeedsConfiguration)
        )
}

/// Checks a connector status change before it is written.
pub fn check_connector_transition(
    from: ConnectorStatus,
    to: ConnectorStatus,
) -> Result<(), IllegalTransition> {
    if connector_transition_allowed(from, to) {
        Ok(())
    } else {
        Err(IllegalTransition::Connector { from, to })
    }
}

/// The connector status written when a job ends (`sync_done`): `error` when the job failed or
/// its document disappeared (`None`), `connected` otherwise (completed, canceled, suspended).
pub fn connector_status_after_job(job: Option<JobStatus>) -> ConnectorStatus {
    match job {
        None | Some(JobStatus::Error) => ConnectorStatus::Error,
        Some(_) => ConnectorStatus::Connected,
    }
}

/// A connector in this status is waiting for someone to configure it (`created`,
/// `needs_configuration`): the scheduler neither validates, schedules nor syncs it.
pub fn awaits_configuration(status: ConnectorStatus) -> bool {
    matches!(
        status,
        ConnectorStatus::Created | ConnectorStatus::NeedsConfiguration
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use ConnectorStatus as C;
    use JobStatus as J;

    /// The complete list of legal job transitions, written independently of the `matches!`.
    const LEGAL_JOB: &[(JobStatus, JobStatus)] = &[
        (J::Pending, J::InProgress),
        (J::Pending, J::Canceled),
        (J::Pending, J::Error),
        (J::Suspended, J::InProgress),
        (J::Suspended, J::Canceled),
        (J::Suspended, J::Error),
        (J::InProgress, J::Completed),
        (J::InProgress, J::Error),
        (J::InProgress, J::Suspended),
        (J::InProgress, J::Canceling),
        (J::Canceling, J::Canceled),
        (J::Canceling, J::Error),
    ];

    const LEGAL_CONNECTOR: &[(ConnectorStatus, ConnectorStatus)] = &[
        (C::Created, C::NeedsConfiguration),
        (C::Created, C::Error),
        (C::NeedsConfiguration, C::Configured),
        (C::NeedsConfiguration, C::Error),
        (C::Configured, C::NeedsConfiguration),
        (C::Configured, C::Connected),
        (C::Configured, C::Error),
        (C::Connected, C::Configured),
        (C::Connected, C::Error),
        (C::Connected, C::NeedsConfiguration),
        (C::Error, C::Connected),
        (C::Error, C::Configured),
        (C::Error, C::NeedsConfiguration),
    ];

    #[test]
    fn job_transitions_exhaustive() {
        let mut legal = 0;
        for from in ALL_JOB_STATUSES {
            for to in ALL_JOB_STATUSES {
                let expected = LEGAL_JOB.contains(&(from, to));
                let got = check_job_transition(from, to);
                assert_eq!(got.is_ok(), expected, "{from} -> {to}: {got:?}");
                if let Err(e) = got {
                    assert_eq!(e, IllegalTransition::Job { from, to });
                    assert_eq!(e.kind(), ErrorKind::Conflict);
                } else {
                    legal += 1;
                }
            }
        }
        assert_eq!(legal, LEGAL_JOB.len());
    }

    #[test]
    fn terminal_job_statuses_have_no_exit() {
        for from in ALL_JOB_STATUSES.into_iter().filter(|s| s.is_terminal()) {
            for to in ALL_JOB_STATUSES {
                let err = check_job_transition(from, to).unwrap_err();
                assert!(err.to_string().contains("already finished"), "{err}");
            }
        }
    }

    #[test]
    fn double_claim_is_illegal() {
        let err = check_job_transition(J::InProgress, J::InProgress).unwrap_err();
        assert_eq!(
            err.to_string(),
            "sync job status cannot change from in_progress to in_progress (it already has that status)"
        );
    }

    #[test]
    fn connector_transitions_exhaustive() {
        let mut legal = 0;
        for from in ALL_CONNECTOR_STATUSES {
            for to in ALL_CONNECTOR_STATUSES {
                let expected = from == to || LEGAL_CONNECTOR.contains(&(from, to));
                let got = check_connector_transition(from, to);
                assert_eq!(got.is_ok(), expected, "{from} -> {to}: {got:?}");
                match got {
                    Ok(()) => legal += 1,
                    Err(e) => {
                        assert_eq!(e, IllegalTransition::Connector { from, to });
                        assert_eq!(e.kind(), ErrorKind::Conflict);
                    }
                }
            }
        }
        assert_eq!(legal, LEGAL_CONNECTOR.len() + ALL_CONNECTOR_STATUSES.len());
    }

    #[test]
    fn unconfigured_connector_cannot_connect() {
        for from in [C::Created, C::NeedsConfiguration] {
            assert!(awaits_configuration(from));
            let err = check_connector_transition(from, C::Connected).unwrap_err();
            assert!(err.to_string().contains("not been configured"), "{err}");
        }
        assert!(!awaits_configuration(C::Configured));
    }

    #[test]
    fn connector_after_job() {
        assert_eq!(connector_status_after_job(None), C::Error);
        for job in ALL_JOB_STATUSES {
            let expected = if job == J::Error {
                C::Error
            } else {
                C::Connected
            };
            assert_eq!(connector_status_after_job(Some(job)), expected, "{job}");
            // From a connected connector (the state during a sync) this is always legal.
            check_connector_transition(C::Connected, expected).unwrap();
        }
    }

    #[test]
    fn cancel_requests() {
        let table = [
            (J::Pending, Ok(CancelAction::CancelNow)),
            (J::Suspended, Ok(CancelAction::CancelNow)),
            (J::InProgress, Ok(CancelAction::RequestCancel)),
            (J::Canceling, Ok(CancelAction::AlreadyCanceling)),
            (J::Completed, Err(())),
            (J::Error, Err(())),
            (J::Canceled, Err(())),
        ];
        for (status, expected) in table {
            let got = cancel_request(status);
            match (got, expected) {
                (Ok(action), Ok(e)) => {
                    assert_eq!(action, e, "{status}");
                    // Whatever the action writes is itself a legal transition.
                    if let Some(to) = action.target_status() {
                        check_job_transition(status, to).unwrap();
                    }
                }
                (Err(err), Err(())) => {
                    assert!(err.to_string().contains("already finished"), "{err}");
                }
                (got, expected) => panic!("{status}: got {got:?}, expected {expected:?}"),
            }
        }
    }
}
