//! One error type for the whole tool. Two things matter to an operator reading it: what went
//! wrong and what to do about it; and, when cleanup after a failure failed too, both causes
//! (the stratisd pattern: "Rollback failed; causal error: …, rollback error: …").
use std::fmt;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug)]
pub enum Error {
    /// Guard refused to start: nothing was changed. `fix` tells the operator what to do.
    Refused {
        problem: String,
        fix: String,
    },
    /// The command to guard does not exist (exit 127) or cannot be executed (exit 126).
    CommandNotFound(String),
    CommandNotExecutable(String),
    /// An external program (lvm, mount, …) failed; keeps the tail of its stderr.
    Tool {
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
    Io {
        context: String,
        source: std::io::Error,
    },
    /// Anything else that is guard's own fault or the system's, with context.
    Other(String),
    /// An action failed and undoing it failed as well: both are reported.
    RollbackFailed {
        cause: Box<Error>,
        rollback: Box<Error>,
    },
}

impl Error {
    pub fn refused(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        Error::Refused {
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// The exit code guard uses when this error ends a run before the command ran,
    /// following the env/timeout convention.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::CommandNotFound(_) => 127,
            Error::CommandNotExecutable(_) => 126,
            _ => 125,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Refused { problem, fix } => {
                write!(f, "{problem}")?;
                if !fix.is_empty() {
                    write!(f, "\n  fix: {fix}")?;
                }
                Ok(())
            }
            Error::CommandNotFound(c) => write!(
                f,
                "command not found: {c}\n  fix: check the spelling, or give the full path (guard -- /usr/bin/…)"
            ),
            Error::CommandNotExecutable(c) => write!(
                f,
                "command is not executable: {c}\n  fix: chmod +x it, or run it through its interpreter (guard -- sh {c})"
            ),
            Error::Tool { program, args, status, stderr } => {
                write!(f, "{program} {args} failed ({status})")?;
                if !stderr.is_empty() {
                    write!(f, ": {stderr}")?;
                }
                Ok(())
            }
            Error::Io { context, source } => write!(f, "{context}: {source}"),
            Error::Other(s) => write!(f, "{s}"),
            Error::RollbackFailed { cause, rollback } => write!(
                f,
                "Rollback failed; causal error: {cause}; rollback error: {rollback}"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Error::Other(format!("cannot parse JSON: {e}"))
    }
}
