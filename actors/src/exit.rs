//! Exit reasons and handler failures: why an actor stopped, which is what a supervisor decides on.

use std::fmt;
use std::time::Duration;

use crate::ActorPath;

/// Why an actor incarnation ended. Supervisors restart on it according to the child's restart
/// type; `Normal` and `Shutdown` are the two normal reasons.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ExitReason {
    /// The actor finished its work and stopped itself.
    Normal,
    /// The actor stopped because its supervisor asked it to.
    Shutdown,
    /// A handler, `started` or a continuation returned an error.
    Error {
        /// The error and its sources, outermost first.
        message: String,
    },
    /// The actor panicked; the panic was contained.
    Panic {
        /// The panic payload, when it was a string.
        message: String,
    },
    /// The actor was stopped at once: a brutal kill, or it ignored a stop request past its timeout.
    Killed,
    /// The actor did not signal healthy within its start timeout and was killed.
    StartTimeout {
        /// The timeout it exceeded.
        #[serde(with = "duration_ms")]
        after: Duration,
    },
    /// A supervisor gave up: a child restarted more often than its intensity allows.
    Escalated {
        /// The child whose failure went over the limit.
        child: String,
        /// That child's exit reason.
        reason: Box<ExitReason>,
    },
    /// A `once` child failed; every supervisor up to the root stops.
    Fatal {
        /// The `once` child that failed.
        child: String,
        /// That child's exit reason.
        reason: Box<ExitReason>,
    },
}

impl ExitReason {
    /// Whether this is a failure (anything but `Normal` and `Shutdown`).
    pub fn is_abnormal(&self) -> bool {
        !matches!(self, ExitReason::Normal | ExitReason::Shutdown)
    }

    /// A short stable name for metrics labels.
    pub fn kind(&self) -> &'static str {
        match self {
            ExitReason::Normal => "normal",
            ExitReason::Shutdown => "shutdown",
            ExitReason::Error { .. } => "error",
            ExitReason::Panic { .. } => "panic",
            ExitReason::Killed => "killed",
            ExitReason::StartTimeout { .. } => "start_timeout",
            ExitReason::Escalated { .. } => "escalated",
            ExitReason::Fatal { .. } => "fatal",
        }
    }

    /// Every value `kind` can return, so metrics can be created for all of them up front.
    pub const KINDS: [&'static str; 8] = [
        "normal",
        "shutdown",
        "error",
        "panic",
        "killed",
        "start_timeout",
        "escalated",
        "fatal",
    ];

    pub(crate) fn error(failure: &Failure) -> Self {
        ExitReason::Error {
            message: failure.to_string(),
        }
    }

    pub(crate) fn panic(payload: Box<dyn std::any::Any + Send>) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_owned()
        };
        ExitReason::Panic { message }
    }

    pub(crate) fn escalated(child: &ActorPath, reason: ExitReason) -> Self {
        ExitReason::Escalated {
            child: child.to_string(),
            reason: Box::new(reason),
        }
    }

    pub(crate) fn fatal(child: &ActorPath, reason: ExitReason) -> Self {
        ExitReason::Fatal {
            child: child.to_string(),
            reason: Box::new(reason),
        }
    }
}

impl fmt::Display for ExitReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitReason::Normal => f.write_str("normal"),
            ExitReason::Shutdown => f.write_str("shutdown"),
            ExitReason::Error { message } => write!(f, "error: {message}"),
            ExitReason::Panic { message } => write!(f, "panic: {message}"),
            ExitReason::Killed => f.write_str("killed"),
            ExitReason::StartTimeout { after } => {
                write!(f, "not healthy within {} ms", after.as_millis())
            }
            ExitReason::Escalated { child, reason } => {
                write!(f, "restart intensity exceeded by {child} ({reason})")
            }
            ExitReason::Fatal { child, reason } => {
                write!(f, "once child {child} failed ({reason})")
            }
        }
    }
}

mod duration_ms {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u128(d.as_millis())
    }
}

/// The error a handler returns to say "this incarnation is broken, restart me". Any error type
/// converts into it with `?`; its message keeps the whole source chain.
pub struct Failure(Box<dyn std::error::Error + Send + Sync>);

impl Failure {
    /// A failure with just a message, for conditions that have no error type of their own.
    pub fn msg(message: impl Into<String>) -> Self {
        Failure(message.into().into())
    }
}

impl<E: Into<Box<dyn std::error::Error + Send + Sync>>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.into())
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(s) = source {
            write!(f, ": {s}")?;
            source = s.source();
        }
        Ok(())
    }
}

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Failure({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn failure_keeps_the_source_chain() {
        let f: Failure = Outer(std::io::Error::other("disk gone")).into();
        assert_eq!(f.to_string(), "outer: disk gone");
        assert_eq!(
            ExitReason::error(&f),
            ExitReason::Error {
                message: "outer: disk gone".into()
            }
        );
    }

    #[test]
    fn normal_reasons_are_not_failures() {
        assert!(!ExitReason::Normal.is_abnormal());
        assert!(!ExitReason::Shutdown.is_abnormal());
        assert!(ExitReason::Killed.is_abnormal());
        for kind in ExitReason::KINDS {
            assert!(!kind.is_empty());
        }
    }

    #[test]
    fn panic_payloads_are_read() {
        assert_eq!(
            ExitReason::panic(Box::new("boom")),
            ExitReason::Panic {
                message: "boom".into()
            }
        );
        assert_eq!(
            ExitReason::panic(Box::new(String::from("bang"))),
            ExitReason::Panic {
                message: "bang".into()
            }
        );
    }
}
