//! Allowed status transitions of jobs and connectors.
//!
//! replaced by crate::state when merged: this is a minimal private stand-in so the store can
//! refuse illegal status writes until the `state` module lands.

use crate::model::{ConnectorStatus, JobStatus};

/// May a job go from `from` to `to` (spec §6.2, plus `pending|suspended → canceled` and
/// `pending|suspended → error` for jobs of deleted connectors)?
pub(crate) fn job_transition_allowed(from: JobStatus, to: JobStatus) -> bool {
    use JobStatus::*;
    matches!(
        (from, to),
        (Pending, InProgress | Canceled | Error)
            | (Suspended, InProgress | Canceled | Error)
            | (
                InProgress,
                Completed | Error | Canceling | Suspended | Canceled
            )
            | (Canceling, Canceled | Completed | Error)
    )
}

/// May a connector go from `from` to `to` (Elasticsearch's connector state machine, §6.1)?
/// Same-status writes are allowed; a missing status may become anything.
pub(crate) fn connector_transition_allowed(
    from: Option<ConnectorStatus>,
    to: ConnectorStatus,
) -> bool {
    use ConnectorStatus::*;
    let Some(from) = from else { return true };
    from == to
        || matches!(
            (from, to),
            (Created, NeedsConfiguration | Error)
                | (NeedsConfiguration, Configured | Error)
                | (Configured, NeedsConfiguration | Connected | Error)
                | (Connected, Configured | Error)
                | (Error, Connected | Configured | NeedsConfiguration)
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_jobs_never_move() {
        use JobStatus::*;
        for from in [Completed, Error, Canceled] {
            for to in [
                Pending, InProgress, Canceling, Canceled, Suspended, Completed, Error,
            ] {
                assert!(!job_transition_allowed(from, to), "{from} -> {to}");
            }
        }
        assert!(job_transition_allowed(Pending, Canceled));
        assert!(!job_transition_allowed(Pending, Canceling));
        assert!(!job_transition_allowed(Pending, Completed));
        assert!(job_transition_allowed(Suspended, InProgress));
    }

    #[test]
    fn connector_machine() {
        use ConnectorStatus::*;
        assert!(connector_transition_allowed(None, Connected));
        assert!(connector_transition_allowed(
            Some(Created),
            NeedsConfiguration
        ));
        assert!(!connector_transition_allowed(Some(Created), Connected));
        assert!(!connector_transition_allowed(
            Some(NeedsConfiguration),
            Connected
        ));
        assert!(connector_transition_allowed(Some(Error), Connected));
    }
}
