//! The supervisor: an actor that owns an ordered list of children and keeps the wanted ones
//! running. Children start in order, each after the previous is healthy, and stop in reverse
//! order. A failure is handled by the strategy (one_for_one, one_for_all, rest_for_one) within the
//! restart intensity, with exponential backoff; past the intensity the supervisor stops its
//! children and fails to its parent. A `once` child's failure is fatal all the way to the root.
//!
//! All of it is one reconciliation loop ([`Supervisor::drive`]) over each child's status and what
//! is wanted of it, so that failures arriving in the middle of a restart are handled like any
//! other: stop what must stop (highest first), then start what must run (lowest first).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use tokio::time::Instant;

use crate::spawn::{ChildEvent, ChildEventKind, EventSink, RunningChild, StartArgs};
use crate::spec::{validate_name, ChildKind, SpecError};
use crate::{
    Actor, ActorPath, ChildSpec, Ctx, ExitReason, Failure, Handler, Message, Reply, Restart,
    Shutdown, Started, Strategy, SupervisorSpec, Timer,
};

// ---- messages ----

/// Add a child at run time (as the lifecycle fills `/cluster`). Answers once the child is
/// healthy, or with why it could not start. The child stays part of this supervisor until it is
/// terminated, across restarts of the supervisor itself.
pub struct StartChild(pub ChildSpec);

impl Message for StartChild {
    type Reply = Result<(), ChildError>;
}

/// Stop a child (by its shutdown policy) and remove it. Answers once it has stopped.
pub struct TerminateChild(pub String);

impl Message for TerminateChild {
    type Reply = Result<(), ChildError>;
}

/// List the children with their status.
pub struct WhichChildren;

impl Message for WhichChildren {
    type Reply = Vec<ChildInfo>;
}

/// One child as [`WhichChildren`] reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ChildInfo {
    /// Its name among its siblings.
    pub name: String,
    /// Its path in the tree.
    pub path: ActorPath,
    /// Worker or supervisor.
    pub kind: ChildKind,
    /// Its restart type.
    pub restart: Restart,
    /// Where it is now.
    pub status: ChildStatus,
    /// The running incarnation's number.
    pub generation: Option<u64>,
}

/// A child's status as its supervisor sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ChildStatus {
    /// Not running (not started yet, waiting out a backoff, or done).
    Down,
    /// Started, not yet healthy.
    Starting,
    /// Healthy.
    Up,
    /// Asked to stop.
    Stopping,
}

/// Why a run-time child operation was refused or failed.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum ChildError {
    /// A child by that name exists already.
    #[error("a child called {0:?} exists already")]
    Exists(String),
    /// No child by that name.
    #[error("no child called {0:?}")]
    NotFound(String),
    /// The supervisor is stopping.
    #[error("the supervisor is shutting down")]
    ShuttingDown,
    /// The child did not become healthy.
    #[error("child {name} failed to start: {reason}")]
    StartFailed {
        /// The child's name.
        name: String,
        /// Why.
        reason: ExitReason,
    },
    /// The spec breaks a supervision rule.
    #[error(transparent)]
    Spec(#[from] SpecError),
}

// ---- state ----

/// A supervisor actor. Build one through [`ChildSpec::supervisor`] or [`crate::Tree::start`].
pub struct Supervisor {
    spec: SupervisorSpec,
    /// Children added at run time and not terminated, shared by every incarnation: a restarted
    /// supervisor starts them again after its spec's own, so what was added is not lost to a
    /// crash of the supervisor (OTP would drop them, and leave the adder to notice).
    added: Arc<Mutex<Vec<ChildSpec>>>,
    children: Vec<Child>,
    restarts: VecDeque<Instant>,
    phase: Phase,
    wake: Option<(Instant, Timer)>,
}

#[derive(Clone, Debug, PartialEq)]
enum Phase {
    /// Starting the initial children; any failure fails the supervisor's start.
    Starting,
    Running,
    /// Stopping every child, then exiting with this reason.
    Stopping(ExitReason),
}

struct Child {
    spec: ChildSpec,
    path: ActorPath,
    running: Option<RunningChild>,
    status: ChildStatus,
    /// Should be running.
    wanted: bool,
    /// Must be stopped (a strategy restart or the supervisor's own stop).
    must_stop: bool,
    remove_when_stopped: bool,
    /// Consecutive failures, for backoff.
    failures: u32,
    not_before: Option<Instant>,
    /// The reason to report when the supervisor itself killed it (start timeout).
    kill_reason: Option<ExitReason>,
    /// The child's one pending timer: start timeout, stop timeout or backoff reset.
    timer: Option<Timer>,
    on_started: Vec<oneshot::Sender<Result<(), ChildError>>>,
    on_stopped: Vec<oneshot::Sender<Result<(), ChildError>>>,
}

impl Child {
    fn new(spec: ChildSpec, parent: &ActorPath) -> Self {
        Child {
            path: parent.child(&spec.name),
            spec,
            running: None,
            status: ChildStatus::Down,
            wanted: true,
            must_stop: false,
            remove_when_stopped: false,
            failures: 0,
            not_before: None,
            kill_reason: None,
            timer: None,
            on_started: Vec::new(),
            on_stopped: Vec::new(),
        }
    }

    fn generation(&self) -> Option<u64> {
        self.running.as_ref().map(|r| r.generation)
    }

    /// Replace the child's pending timer (cancelling the old one) with `timer`, if any.
    fn set_timer<A: Actor>(&mut self, ctx: &mut Ctx<'_, A>, timer: Option<Timer>) {
        if let Some(old) = std::mem::replace(&mut self.timer, timer) {
            ctx.cancel(old);
        }
    }
}

impl Supervisor {
    pub(crate) fn new(spec: SupervisorSpec, added: Arc<Mutex<Vec<ChildSpec>>>) -> Self {
        Supervisor {
            spec,
            added,
            children: Vec::new(),
            restarts: VecDeque::new(),
            phase: Phase::Starting,
            wake: None,
        }
    }

    /// The children added at run time (the lock is never held across an await).
    fn added(&self) -> std::sync::MutexGuard<'_, Vec<ChildSpec>> {
        self.added
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn position(&self, name: &str) -> Option<usize> {
        self.children.iter().position(|c| c.spec.name == name)
    }
}

// ---- handlers ----

impl Actor for Supervisor {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        self.spec.validate()?;
        let parent = ctx.path().clone();
        let added = self.added().clone();
        self.children = self
            .spec
            .children
            .iter()
            .chain(added.iter())
            .map(|spec| Child::new(spec.clone(), &parent))
            .collect();
        self.drive(ctx);
        Ok(Started::Pending)
    }

    fn stop_requested(&mut self, ctx: &mut Ctx<'_, Self>) {
        self.begin_stopping(ExitReason::Shutdown);
        self.drive(ctx);
    }
}

impl Drop for Supervisor {
    /// A supervisor that is killed or panics takes its children with it.
    fn drop(&mut self) {
        for child in &mut self.children {
            if let Some(running) = child.running.take() {
                running.kill();
            }
        }
    }
}

impl Handler<ChildEvent> for Supervisor {
    fn handle(
        &mut self,
        ev: ChildEvent,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, ()>, Failure> {
        match self.position(&ev.name) {
            Some(i) if self.children[i].generation() == Some(ev.generation) => match ev.kind {
                ChildEventKind::Healthy => self.child_healthy(i, ctx),
                ChildEventKind::Exited(reason) => {
                    let child = &mut self.children[i];
                    let was = child.status;
                    child.running = None;
                    child.status = ChildStatus::Down;
                    self.child_exited(i, ev.generation, was, reason, ctx);
                }
            },
            _ => slog::debug!(ctx.log(), "stale child event ignored";
                "child" => &ev.name, "generation" => ev.generation),
        }
        self.drive(ctx);
        Ok(Reply::now(()))
    }
}

impl Handler<StartChild> for Supervisor {
    fn handle(
        &mut self,
        StartChild(spec): StartChild,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, Result<(), ChildError>>, Failure> {
        if matches!(self.phase, Phase::Stopping(_)) {
            return Ok(Reply::now(Err(ChildError::ShuttingDown)));
        }
        if let Err(e) = self.admit(&spec) {
            return Ok(Reply::now(Err(e)));
        }
        self.added().push(spec.clone());
        let (tx, rx) = oneshot::channel();
        let mut child = Child::new(spec, ctx.path());
        child.on_started.push(tx);
        self.children.push(child);
        self.drive(ctx);
        Ok(Reply::detached(async move {
            Ok(rx.await.unwrap_or(Err(ChildError::ShuttingDown)))
        }))
    }
}

impl Handler<TerminateChild> for Supervisor {
    fn handle(
        &mut self,
        TerminateChild(name): TerminateChild,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, Result<(), ChildError>>, Failure> {
        let Some(i) = self.position(&name) else {
            return Ok(Reply::now(Err(ChildError::NotFound(name))));
        };
        self.added().retain(|spec| spec.name != name);
        let child = &mut self.children[i];
        child.wanted = false;
        child.remove_when_stopped = true;
        if child.running.is_none() {
            self.children.remove(i);
            return Ok(Reply::now(Ok(())));
        }
        child.must_stop = true;
        let (tx, rx) = oneshot::channel();
        child.on_stopped.push(tx);
        self.drive(ctx);
        Ok(Reply::detached(async move {
            Ok(rx.await.unwrap_or(Err(ChildError::ShuttingDown)))
        }))
    }
}

impl Handler<WhichChildren> for Supervisor {
    fn handle(
        &mut self,
        _: WhichChildren,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, Vec<ChildInfo>>, Failure> {
        Ok(Reply::now(
            self.children
                .iter()
                .map(|c| ChildInfo {
                    name: c.spec.name.clone(),
                    path: c.path.clone(),
                    kind: c.spec.kind,
                    restart: c.spec.restart,
                    status: c.status,
                    generation: c.generation(),
                })
                .collect(),
        ))
    }
}

// ---- helpers ----

impl Supervisor {
    /// The reconciliation loop: one step at a time, stopping before starting.
    fn drive(&mut self, ctx: &mut Ctx<'_, Self>) {
        loop {
            if self
                .children
                .iter()
                .any(|c| c.status == ChildStatus::Stopping)
            {
                return; // one stop at a time, in reverse order
            }
            if let Some(i) = (0..self.children.len())
                .rev()
                .find(|&i| self.children[i].must_stop && self.children[i].running.is_some())
            {
                self.begin_stop(i, ctx);
                return;
            }
            if let Phase::Stopping(reason) = &self.phase {
                let reason = reason.clone();
                slog::info!(ctx.log(), "all children stopped"; "reason" => %reason);
                ctx.exit(reason);
                return;
            }
            if self
                .children
                .iter()
                .any(|c| c.status == ChildStatus::Starting)
            {
                return; // the next child waits for this one to be healthy
            }
            let Some(i) = self
                .children
                .iter()
                .position(|c| c.wanted && c.running.is_none())
            else {
                if self.phase == Phase::Starting {
                    self.phase = Phase::Running;
                    ctx.healthy();
                }
                return;
            };
            if let Some(not_before) = self.children[i].not_before {
                if not_before > Instant::now() {
                    self.wake(not_before, ctx);
                    return;
                }
            }
            match self.begin_start(i, ctx) {
                Ok(()) => return,
                Err(failure) => {
                    let reason = ExitReason::error(&failure);
                    self.child_exited(i, 0, ChildStatus::Starting, reason, ctx);
                }
            }
        }
    }

    fn begin_start(&mut self, i: usize, ctx: &mut Ctx<'_, Self>) -> Result<(), Failure> {
        let me = ctx.myself();
        let events: EventSink = Arc::new(move |ev| {
            // A supervisor that is gone has no use for its children's news.
            let _ = me.tell(ev);
        });
        let child = &mut self.children[i];
        let running = (child.spec.start)(StartArgs {
            name: child.spec.name.clone(),
            path: child.path.clone(),
            registry: ctx.registry().clone(),
            parent_log: ctx.base_log().clone(),
            events,
        })?;
        let generation = running.generation;
        child.running = Some(running);
        child.status = ChildStatus::Starting;
        slog::debug!(ctx.log(), "starting child"; "child" => %child.path, "generation" => generation);
        let timer = child.spec.start_timeout.map(|timeout| {
            let name = child.spec.name.clone();
            ctx.run_later(timeout, move |sup, ctx| {
                sup.start_timed_out(&name, generation, timeout, ctx);
                Ok(())
            })
        });
        child.set_timer(ctx, timer);
        Ok(())
    }

    fn begin_stop(&mut self, i: usize, ctx: &mut Ctx<'_, Self>) {
        let child = &mut self.children[i];
        let Some(running) = &child.running else {
            return;
        };
        child.status = ChildStatus::Stopping;
        slog::debug!(ctx.log(), "stopping child"; "child" => %child.path);
        match child.spec.shutdown {
            Shutdown::Brutal => running.kill(),
            Shutdown::Infinity => running.request_stop(),
            Shutdown::Timeout(timeout) => {
                running.request_stop();
                let (name, generation) = (child.spec.name.clone(), running.generation);
                let timer = ctx.run_later(timeout, move |sup, ctx| {
                    sup.stop_timed_out(&name, generation, ctx);
                    Ok(())
                });
                child.set_timer(ctx, Some(timer));
            }
        }
    }

    fn child_healthy(&mut self, i: usize, ctx: &mut Ctx<'_, Self>) {
        let reset_after = self.spec.backoff.reset_after;
        let child = &mut self.children[i];
        if child.status != ChildStatus::Starting {
            return;
        }
        child.status = ChildStatus::Up;
        slog::info!(ctx.log(), "child started"; "child" => %child.path);
        for tx in child.on_started.drain(..) {
            let _ = tx.send(Ok(()));
        }
        child.set_timer(ctx, None);
        if child.failures > 0 {
            let (name, generation) = (child.spec.name.clone(), child.generation());
            let timer = ctx.run_later(reset_after, move |sup, _| {
                if let Some(i) = sup.position(&name) {
                    let child = &mut sup.children[i];
                    if child.status == ChildStatus::Up && child.generation() == generation {
                        child.failures = 0;
                        child.timer = None;
                    }
                }
                Ok(())
            });
            child.set_timer(ctx, Some(timer));
        }
    }

    fn child_exited(
        &mut self,
        i: usize,
        generation: u64,
        was: ChildStatus,
        reason: ExitReason,
        ctx: &mut Ctx<'_, Self>,
    ) {
        let child = &mut self.children[i];
        child.set_timer(ctx, None);
        let reason = child.kill_reason.take().unwrap_or(reason);
        if was == ChildStatus::Stopping {
            child.must_stop = false;
            if matches!(reason, ExitReason::Shutdown | ExitReason::Killed) {
                slog::info!(ctx.log(), "child stopped"; "child" => %child.path, "reason" => %reason);
            } else {
                slog::warn!(ctx.log(), "child did not stop cleanly";
                    "child" => %child.path, "reason" => %reason);
            }
            for tx in child.on_stopped.drain(..) {
                let _ = tx.send(Ok(()));
            }
            if child.remove_when_stopped {
                self.children.remove(i);
            }
            return;
        }

        let path = child.path.clone();
        if reason.is_abnormal() {
            let last_logs = ctx
                .registry()
                .actor(path.as_str())
                .and_then(|s| s.last_failure)
                .map(|f| f.last_logs.join(" | "))
                .unwrap_or_default();
            slog::error!(ctx.log(), "child failed";
                "child" => %path, "generation" => generation, "reason" => %reason,
                "last_logs" => last_logs);
        } else {
            slog::info!(ctx.log(), "child exited"; "child" => %path, "reason" => %reason);
        }
        for tx in child.on_started.drain(..) {
            let _ = tx.send(Err(ChildError::StartFailed {
                name: child.spec.name.clone(),
                reason: reason.clone(),
            }));
        }
        if matches!(self.phase, Phase::Stopping(_)) {
            return;
        }
        if self.phase == Phase::Starting && was == ChildStatus::Starting && reason.is_abnormal() {
            let message = format!("child {path} failed to start: {reason}");
            self.begin_stopping(ExitReason::Error { message });
            return;
        }
        if matches!(reason, ExitReason::Fatal { .. }) {
            self.begin_stopping(reason);
            return;
        }
        let restart = match child.spec.restart {
            Restart::Once if reason.is_abnormal() => {
                self.begin_stopping(ExitReason::fatal(&path, reason));
                return;
            }
            Restart::Once | Restart::Temporary => false,
            Restart::Transient => reason.is_abnormal(),
            Restart::Permanent => true,
        };
        if restart {
            self.restart(i, reason, ctx);
        } else {
            child.wanted = false;
        }
    }

    fn restart(&mut self, i: usize, reason: ExitReason, ctx: &mut Ctx<'_, Self>) {
        let now = Instant::now();
        let intensity = self.spec.intensity;
        self.restarts
            .retain(|t| now.duration_since(*t) < intensity.period);
        self.restarts.push_back(now);
        let path = self.children[i].path.clone();
        if self.restarts.len() > intensity.max_restarts as usize {
            slog::error!(ctx.log(), "restart intensity exceeded, giving up";
                "child" => %path, "max_restarts" => intensity.max_restarts,
                "period_ms" => intensity.period.as_millis() as u64);
            self.begin_stopping(ExitReason::escalated(&path, reason));
            return;
        }
        let child = &mut self.children[i];
        child.failures = child.failures.saturating_add(1);
        let delay = self.spec.backoff.delay(child.failures);
        child.not_before = Some(now + delay);
        ctx.registry().entry(&path).metrics.restarting(&reason);
        slog::warn!(ctx.log(), "restarting child";
            "child" => %path, "reason" => %reason, "delay_ms" => delay.as_millis() as u64);
        let siblings = match self.spec.strategy {
            Strategy::OneForOne => 0..0,
            Strategy::RestForOne => i + 1..self.children.len(),
            Strategy::OneForAll => 0..self.children.len(),
        };
        for sibling in &mut self.children[siblings] {
            if sibling.running.is_some() {
                sibling.must_stop = true;
                if sibling.spec.restart == Restart::Temporary {
                    sibling.wanted = false;
                }
            }
        }
    }

    /// Stop every child, then exit with `reason`.
    fn begin_stopping(&mut self, reason: ExitReason) {
        if matches!(self.phase, Phase::Stopping(_)) {
            return;
        }
        self.phase = Phase::Stopping(reason);
        for child in &mut self.children {
            child.wanted = false;
            child.must_stop = child.running.is_some();
            for tx in child.on_started.drain(..) {
                let _ = tx.send(Err(ChildError::ShuttingDown));
            }
        }
    }

    fn start_timed_out(
        &mut self,
        name: &str,
        generation: u64,
        after: std::time::Duration,
        ctx: &mut Ctx<'_, Self>,
    ) {
        let Some(i) = self.position(name) else { return };
        let child = &mut self.children[i];
        if child.status != ChildStatus::Starting || child.generation() != Some(generation) {
            return;
        }
        slog::warn!(ctx.log(), "child not healthy in time, killing it";
            "child" => %child.path, "timeout_ms" => after.as_millis() as u64);
        child.kill_reason = Some(ExitReason::StartTimeout { after });
        if let Some(running) = &child.running {
            running.kill();
        }
    }

    fn stop_timed_out(&mut self, name: &str, generation: u64, ctx: &mut Ctx<'_, Self>) {
        let Some(i) = self.position(name) else { return };
        let child = &self.children[i];
        if child.status != ChildStatus::Stopping || child.generation() != Some(generation) {
            return;
        }
        slog::warn!(ctx.log(), "child ignored stop past its timeout, killing it"; "child" => %child.path);
        if let Some(running) = &child.running {
            running.kill();
        }
    }

    /// Drive again at `at` (a backoff ends), unless an earlier wake-up is already due.
    fn wake(&mut self, at: Instant, ctx: &mut Ctx<'_, Self>) {
        if self.wake.as_ref().is_some_and(|(w, _)| *w <= at) {
            return;
        }
        let timer = ctx.run_later(at.saturating_duration_since(Instant::now()), |sup, ctx| {
            sup.wake = None;
            sup.drive(ctx);
            Ok(())
        });
        if let Some((_, old)) = self.wake.replace((at, timer)) {
            ctx.cancel(old);
        }
    }

    /// Check that `spec` may join the running children.
    fn admit(&self, spec: &ChildSpec) -> Result<(), ChildError> {
        validate_name(&spec.name)?;
        if self.position(&spec.name).is_some() {
            return Err(ChildError::Exists(spec.name.clone()));
        }
        let mut probe = SupervisorSpec {
            children: self.children.iter().map(|c| c.spec.clone()).collect(),
            ..self.spec.clone()
        };
        probe.children.push(spec.clone());
        probe.validate()?;
        Ok(())
    }
}
