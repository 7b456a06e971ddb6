//! [`Tree`]: a running supervision tree: its root supervisor, its registry, and its end.

use std::sync::{Arc, Mutex};

use slog::Logger;
use tokio::sync::{oneshot, watch};

use crate::spawn::{ChildEvent, ChildEventKind, EventSink, RunningChild, StartArgs};
use crate::supervisor::Supervisor;
use crate::{
    lock, ActorPath, ActorRef, ChildSpec, ExitReason, Kill, KillError, Registry, SpecError,
    SupervisorSpec,
};

/// Why a tree did not start.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    /// The root spec breaks a supervision rule.
    #[error("invalid supervision spec: {0}")]
    Spec(#[from] SpecError),
    /// The root supervisor failed before it was healthy.
    #[error("the supervision tree failed to start: {0}")]
    StartFailed(ExitReason),
}

/// A running supervision tree. Must be started inside an actix system.
pub struct Tree {
    registry: Registry,
    root: ActorRef<Supervisor>,
    running: RunningChild,
    exit: watch::Receiver<Option<ExitReason>>,
}

impl Tree {
    /// Start the root supervisor at `/` with `spec`, logging to `logger`; returns once every
    /// child has started and is healthy.
    pub async fn start(spec: SupervisorSpec, logger: Logger) -> Result<Tree, TreeError> {
        spec.validate()?;
        let registry = Registry::new();
        let (root_spec, root) = ChildSpec::supervisor("root", spec);
        let (health_tx, health_rx) = oneshot::channel();
        let health_tx = Mutex::new(Some(health_tx));
        let (exit_tx, exit) = watch::channel(None);
        let events: EventSink = Arc::new(move |ev: ChildEvent| match ev.kind {
            ChildEventKind::Healthy => {
                if let Some(tx) = lock(&health_tx).take() {
                    let _ = tx.send(());
                }
            }
            ChildEventKind::Exited(reason) => {
                exit_tx.send_replace(Some(reason));
            }
        });
        let running = (root_spec.start)(StartArgs {
            name: "/".to_owned(),
            path: ActorPath::root(),
            registry: registry.clone(),
            parent_log: logger,
            events,
        })
        .map_err(|f| TreeError::StartFailed(ExitReason::error(&f)))?;
        let tree = Tree {
            registry,
            root,
            running,
            exit,
        };
        // The root either becomes healthy or exits first; the exit wins a tie.
        let failed = tokio::select! {
            biased;
            reason = tree.exited() => Some(reason),
            Ok(()) = health_rx => None,
        };
        match failed {
            Some(reason) => Err(TreeError::StartFailed(reason)),
            None => Ok(tree),
        }
    }

    /// The tree's registry: metrics, logs and fault injection by path.
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// The root supervisor, for `StartChild`, `TerminateChild` and `WhichChildren`.
    pub fn root(&self) -> &ActorRef<Supervisor> {
        &self.root
    }

    /// Fault injection: see [`Registry::kill`].
    pub fn kill(&self, path: &str, how: Kill) -> Result<(), KillError> {
        self.registry.kill(path, how)
    }

    /// Wait until the root supervisor has exited, and say why.
    pub async fn exited(&self) -> ExitReason {
        let mut exit = self.exit.clone();
        let reason = match exit.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        reason.unwrap_or(ExitReason::Killed)
    }

    /// Stop the whole tree in reverse start order and wait for it.
    pub async fn shutdown(&self) -> ExitReason {
        self.running.request_stop();
        self.exited().await
    }
}
