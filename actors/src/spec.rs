//! Child specifications: what a supervisor starts, when it restarts it, how it stops it.

use std::sync::Arc;
use std::time::Duration;

use crate::spawn::{start_worker, RunningChild, StartArgs};
use crate::supervisor::Supervisor;
use crate::{Actor, ActorRef, Failure};

/// When a child that stopped is started again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Restart {
    /// Always restarted.
    Permanent,
    /// Restarted only after an abnormal exit.
    Transient,
    /// Never restarted.
    Temporary,
    /// Runs exactly once in the life of the tree; an abnormal exit is fatal to the whole tree.
    Once,
}

/// How a supervisor stops a child.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shutdown {
    /// Ask it to stop, and kill it if it has not stopped after this long.
    Timeout(Duration),
    /// Kill it at once; no cleanup hook runs.
    Brutal,
    /// Ask it to stop and wait as long as it takes (for supervisors, which stop their children).
    Infinity,
}

/// What a supervisor does to a child's siblings when the child fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Restart only the failed child.
    OneForOne,
    /// Stop all children, then start them all again.
    OneForAll,
    /// Stop the children started after the failed one, then start it and them again.
    RestForOne,
}

/// How many restarts a supervisor tolerates before it gives up and fails to its parent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Intensity {
    /// Restarts allowed within `period`; one more makes the supervisor give up.
    pub max_restarts: u32,
    /// The sliding window.
    pub period: Duration,
}

/// Delay before a restart: `base · 2^(n-1)` for the n-th consecutive failure, at most `cap`;
/// the count resets once the child has stayed healthy for `reset_after`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay; zero turns backoff off.
    pub base: Duration,
    /// The longest delay.
    pub cap: Duration,
    /// How long a child must stay healthy for its failure count to reset.
    pub reset_after: Duration,
}

impl Backoff {
    /// Restart at once, every time.
    pub const NONE: Backoff = Backoff {
        base: Duration::ZERO,
        cap: Duration::ZERO,
        reset_after: Duration::ZERO,
    };

    /// The delay before restarting after the `failures`-th consecutive failure (1-based).
    pub fn delay(&self, failures: u32) -> Duration {
        if self.base.is_zero() || failures == 0 {
            return Duration::ZERO;
        }
        let factor = 2u32.saturating_pow(failures - 1);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// Whether a child is a worker or a supervisor of its own subtree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildKind {
    /// An actor that does work.
    Worker,
    /// A supervisor.
    Supervisor,
}

pub(crate) type StartFn = Arc<dyn Fn(StartArgs) -> Result<RunningChild, Failure> + Send + Sync>;

/// One child of a supervisor: a name, how to build a fresh incarnation, and its policies.
#[derive(Clone)]
pub struct ChildSpec {
    pub(crate) name: String,
    pub(crate) restart: Restart,
    pub(crate) shutdown: Shutdown,
    pub(crate) start_timeout: Option<Duration>,
    pub(crate) kind: ChildKind,
    pub(crate) start: StartFn,
}

impl ChildSpec {
    /// A permanent worker built by `factory` on every start, with a 5 s stop timeout and a 30 s
    /// start timeout. The returned reference stays valid across restarts.
    pub fn worker<A, F>(name: &str, factory: F) -> (ChildSpec, ActorRef<A>)
    where
        A: Actor,
        F: Fn() -> Result<A, Failure> + Send + Sync + 'static,
    {
        let actor_ref = ActorRef::unbound();
        let slot = actor_ref.clone();
        let spec = ChildSpec {
            name: name.to_owned(),
            restart: Restart::Permanent,
            shutdown: Shutdown::Timeout(Duration::from_secs(5)),
            start_timeout: Some(Duration::from_secs(30)),
            kind: ChildKind::Worker,
            start: Arc::new(move |args| start_worker(&factory, &slot, args)),
        };
        (spec, actor_ref)
    }

    /// A permanent supervisor of its own subtree, stopped with [`Shutdown::Infinity`] and without
    /// a start timeout of its own (its children have theirs).
    pub fn supervisor(name: &str, spec: SupervisorSpec) -> (ChildSpec, ActorRef<Supervisor>) {
        let added = Arc::default();
        let (mut child, actor_ref) = ChildSpec::worker(name, move || {
            Ok(Supervisor::new(spec.clone(), Arc::clone(&added)))
        });
        child.kind = ChildKind::Supervisor;
        child.shutdown = Shutdown::Infinity;
        child.start_timeout = None;
        (child, actor_ref)
    }

    /// Set the restart type.
    pub fn restart(mut self, restart: Restart) -> Self {
        self.restart = restart;
        self
    }

    /// Set the shutdown policy.
    pub fn shutdown(mut self, shutdown: Shutdown) -> Self {
        self.shutdown = shutdown;
        self
    }

    /// Set how long the child may take to become healthy; `None` waits forever.
    pub fn start_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.start_timeout = timeout;
        self
    }

    /// The child's name, unique among its siblings.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A supervisor's configuration: strategy, intensity, backoff and its ordered children.
#[derive(Clone)]
pub struct SupervisorSpec {
    pub(crate) strategy: Strategy,
    pub(crate) intensity: Intensity,
    pub(crate) backoff: Backoff,
    pub(crate) children: Vec<ChildSpec>,
}

/// A spec that breaks a supervision rule.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum SpecError {
    /// Two children share a name, so their paths would collide.
    #[error("two children are called {0:?}")]
    DuplicateName(String),
    /// A name that cannot be a path segment.
    #[error("child name {0:?} is empty or contains '/'")]
    BadName(String),
    /// A `once` child placed where a sibling's failure would stop it.
    #[error(
        "once child {0:?} must not be under one_for_all, nor after a sibling under rest_for_one"
    )]
    OnceMisplaced(String),
}

impl SupervisorSpec {
    /// A supervisor with `strategy`, intensity 3 restarts in 5 s, and no backoff.
    pub fn new(strategy: Strategy) -> Self {
        SupervisorSpec {
            strategy,
            intensity: Intensity {
                max_restarts: 3,
                period: Duration::from_secs(5),
            },
            backoff: Backoff::NONE,
            children: Vec::new(),
        }
    }

    /// Set the restart intensity.
    pub fn intensity(mut self, max_restarts: u32, period: Duration) -> Self {
        self.intensity = Intensity {
            max_restarts,
            period,
        };
        self
    }

    /// Set the restart backoff.
    pub fn backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// Append a child; children start in the order they are added.
    pub fn child(mut self, child: ChildSpec) -> Self {
        self.children.push(child);
        self
    }

    /// Check the rules a spec must follow before it is started.
    pub fn validate(&self) -> Result<(), SpecError> {
        for (i, child) in self.children.iter().enumerate() {
            validate_name(&child.name)?;
            if self.children[..i].iter().any(|c| c.name == child.name) {
                return Err(SpecError::DuplicateName(child.name.clone()));
            }
        }
        if let Some((i, once)) = self
            .children
            .iter()
            .enumerate()
            .find(|(_, c)| c.restart == Restart::Once)
        {
            let misplaced = match self.strategy {
                Strategy::OneForOne => false,
                Strategy::OneForAll => self.children.len() > 1,
                Strategy::RestForOne => i > 0,
            };
            if misplaced {
                return Err(SpecError::OnceMisplaced(once.name.clone()));
            }
        }
        Ok(())
    }
}

pub(crate) fn validate_name(name: &str) -> Result<(), SpecError> {
    if name.is_empty() || name.contains('/') {
        return Err(SpecError::BadName(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Idle;
    impl Actor for Idle {}

    fn idle(name: &str) -> ChildSpec {
        ChildSpec::worker(name, || Ok(Idle)).0
    }

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let b = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
            reset_after: Duration::from_secs(1),
        };
        let delays: Vec<u128> = (1..=5).map(|n| b.delay(n).as_millis()).collect();
        assert_eq!(delays, vec![10, 20, 40, 50, 50]);
        assert_eq!(Backoff::NONE.delay(7), Duration::ZERO);
        assert_eq!(b.delay(u32::MAX), Duration::from_millis(50));
    }

    #[test]
    fn duplicate_and_bad_names_are_refused() {
        let spec = SupervisorSpec::new(Strategy::OneForOne)
            .child(idle("a"))
            .child(idle("a"));
        assert_eq!(spec.validate(), Err(SpecError::DuplicateName("a".into())));
        let spec = SupervisorSpec::new(Strategy::OneForOne).child(idle("a/b"));
        assert_eq!(spec.validate(), Err(SpecError::BadName("a/b".into())));
    }

    #[test]
    fn once_children_only_where_siblings_cannot_stop_them() {
        let once = || idle("life").restart(Restart::Once);
        let ok = SupervisorSpec::new(Strategy::OneForOne)
            .child(idle("a"))
            .child(once());
        assert_eq!(ok.validate(), Ok(()));
        let ok = SupervisorSpec::new(Strategy::RestForOne)
            .child(once())
            .child(idle("a"));
        assert_eq!(ok.validate(), Ok(()));
        let bad = SupervisorSpec::new(Strategy::RestForOne)
            .child(idle("a"))
            .child(once());
        assert_eq!(bad.validate(), Err(SpecError::OnceMisplaced("life".into())));
        let bad = SupervisorSpec::new(Strategy::OneForAll)
            .child(once())
            .child(idle("a"));
        assert_eq!(bad.validate(), Err(SpecError::OnceMisplaced("life".into())));
    }
}
