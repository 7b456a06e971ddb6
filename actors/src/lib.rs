//! Erlang/OTP supervision trees on actix, with no knowledge of clusters.
//!
//! - An [`Actor`] is rebuilt by its [`ChildSpec`]'s factory on every start and answers typed
//!   [`Message`]s through [`Handler`]s, addressed by an [`ActorRef`] that survives restarts.
//! - A [`Supervisor`] starts its children in order (each after the previous is healthy), stops
//!   them in reverse, restarts them by [`Strategy`] and [`Restart`] type within an [`Intensity`],
//!   with [`Backoff`], and escalates to its parent when it gives up. A handler error, an abnormal
//!   stop and a panic are all failures with a typed [`ExitReason`]; a panic never takes the
//!   process down.
//! - Every actor has an [`ActorPath`]; the [`Registry`] keeps its mailbox metrics (served as
//!   classic Prometheus text or [`Exposition::OpenMetrics`]), its recent log
//!   lines and a kill switch for fault injection; [`debug_http`] serves them on loopback.
//!
//! What a restart does to messages is the queued-message rule in [`address`](ActorRef).

mod actor;
mod address;
mod cell;
mod context;
pub mod debug_http;
mod exit;
mod exposition;
mod logging;
mod metrics;
mod path;
mod registry;
mod spawn;
mod spec;
mod supervisor;
mod tree;
mod watchable;

pub use actor::{Actor, Handler, Message, Reply, Started};
pub use address::{ActorRef, Ask, SendError};
pub use context::{Ctx, Timer};
pub use exit::{ExitReason, Failure};
pub use exposition::Exposition;
pub use logging::{bridge_log_crate, log_panics, terminal_logger, LogRing};
pub use metrics::{ActorSnapshot, ActorState, FailureReport};
pub use path::ActorPath;
pub use registry::{Kill, KillError, Registry};
pub use spawn::ChildEvent;
pub use spec::{
    Backoff, ChildKind, ChildSpec, Intensity, Restart, Shutdown, SpecError, Strategy,
    SupervisorSpec,
};
pub use supervisor::{
    ChildError, ChildInfo, ChildStatus, StartChild, Supervisor, TerminateChild, WhichChildren,
};
pub use tree::{Tree, TreeError};
pub use watchable::Watchable;

use std::sync::{Mutex, MutexGuard, PoisonError};

/// Lock a mutex whose data stays consistent even if a holder panicked (every critical section
/// here is a single assignment or read), so a contained panic never poisons the runtime.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
