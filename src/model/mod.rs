//! The typed states of a run's targets, with no I/O: one place that says what a rollback of a
//! target came to, and what that means for the run as a whole. Strings compared in several
//! places let a failed merge be reported as done; an enum cannot be misspelt.
pub mod change;
pub mod record;
use serde::{Deserialize, Serialize};

/// What the rollback of one target came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetState {
    /// Merged: the origin holds the snapshot's data again.
    Done,
    /// The merge started and completes at the origin's next activation.
    Scheduled,
    /// The merge could not be started; the snapshot is still there: `guard rollback RUN`
    /// retries it.
    Failed,
    /// The rollback point is gone (invalidated or missing snapshot): nothing can bring it back.
    Impossible,
}

impl TargetState {
    pub fn as_str(self) -> &'static str {
        match self {
            TargetState::Done => "done",
            TargetState::Scheduled => "scheduled",
            TargetState::Failed => "failed",
            TargetState::Impossible => "impossible",
        }
    }
}

/// What a rollback of the whole set came to, from its targets' states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetRollback {
    /// Every target merged.
    Complete,
    /// Every target merged or scheduled, at least one scheduled.
    Scheduled,
    /// Some target failed and can be retried: the rollback is not over.
    Retry,
    /// Nothing left to retry, but some target could not be rolled back.
    Partial,
}

impl SetRollback {
    pub fn of(states: impl IntoIterator<Item = Option<TargetState>>) -> Self {
        let (mut scheduled, mut failed, mut impossible) = (false, false, false);
        for s in states {
            match s {
                Some(TargetState::Done) => {}
                Some(TargetState::Scheduled) => scheduled = true,
                // a target never attempted is as unsettled as a failed one
                Some(TargetState::Failed) | None => failed = true,
                Some(TargetState::Impossible) => impossible = true,
            }
        }
        if failed {
            SetRollback::Retry
        } else if impossible {
            SetRollback::Partial
        } else if scheduled {
            SetRollback::Scheduled
        } else {
            SetRollback::Complete
        }
    }

    /// The report's `action` for a rolled-back run.
    pub fn action(self) -> &'static str {
        match self {
            SetRollback::Complete => "rolled-back",
            SetRollback::Scheduled => "rollback-scheduled",
            SetRollback::Retry | SetRollback::Partial => "partial",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TargetState::*;

    #[test]
    fn a_set_is_rolled_back_only_when_every_target_is() {
        assert_eq!(
            SetRollback::of([Some(Done), Some(Done)]),
            SetRollback::Complete
        );
        assert_eq!(
            SetRollback::of([Some(Done), Some(Scheduled)]),
            SetRollback::Scheduled
        );
        assert_eq!(
            SetRollback::of([Some(Done), Some(Failed)]),
            SetRollback::Retry
        );
        assert_eq!(SetRollback::of([Some(Scheduled), None]), SetRollback::Retry);
        assert_eq!(
            SetRollback::of([Some(Done), Some(Impossible)]),
            SetRollback::Partial
        );
        // every target impossible is not "rolled back"
        assert_eq!(SetRollback::of([Some(Impossible)]).action(), "partial");
        assert_eq!(SetRollback::of([Some(Failed)]).action(), "partial");
    }

    #[test]
    fn states_keep_their_journal_spelling() {
        for s in [Done, Scheduled, Failed, Impossible] {
            let j = serde_json::to_string(&s).unwrap();
            assert_eq!(j, format!("\"{}\"", s.as_str()));
            assert_eq!(serde_json::from_str::<TargetState>(&j).unwrap(), s);
        }
    }
}
