//! [`Ctx`]: what an actor can do from inside its hooks and handlers.

use std::future::Future;
use std::time::Duration;

use actix::fut::{wrap_future, ActorFutureExt};
use actix::{ActorContext, AsyncContext, SpawnHandle};
use slog::Logger;

use crate::cell::{Cell, Core};
use crate::{Actor, ActorPath, ActorRef, ExitReason, Failure, Registry};

/// A pending [`Ctx::run_later`], to cancel with [`Ctx::cancel`].
#[derive(Debug)]
pub struct Timer(SpawnHandle);

/// The running actor's context: its identity, logger, health and exit, timers and futures.
pub struct Ctx<'a, A: Actor> {
    pub(crate) actx: &'a mut actix::Context<Cell<A>>,
    pub(crate) core: &'a Core<A>,
}

impl<A: Actor> Ctx<'_, A> {
    /// The actor's path in the tree.
    pub fn path(&self) -> &ActorPath {
        &self.core.entry.path
    }

    /// The actor's logger; records carry its path and land in its log ring.
    pub fn log(&self) -> &Logger {
        &self.core.logger
    }

    /// This incarnation's number, counting from 1 for the first start of the path.
    pub fn generation(&self) -> u64 {
        self.core.incarnation.generation
    }

    /// A reference to this actor that stays valid across its restarts.
    pub fn myself(&self) -> ActorRef<A> {
        self.core.myself.clone()
    }

    /// Signal that the actor is ready (after `started` returned [`crate::Started::Pending`]).
    /// Its supervisor then starts the next child. Idempotent.
    pub fn healthy(&mut self) {
        self.core.incarnation.healthy(&self.core.entry);
    }

    /// Stop this incarnation: `Shutdown` if its supervisor asked for it, else `Normal`.
    pub fn stop(&mut self) {
        let reason = if self.core.incarnation.stop_was_requested() {
            ExitReason::Shutdown
        } else {
            ExitReason::Normal
        };
        self.exit(reason);
    }

    /// Stop this incarnation with reason `Shutdown`, as an actor does that winds down because
    /// what it serves is going away; a transient child is not restarted for it.
    pub fn shutdown(&mut self) {
        self.exit(ExitReason::Shutdown);
    }

    /// Fail this incarnation with `failure`; its supervisor decides what follows.
    pub fn fail(&mut self, failure: impl Into<Failure>) {
        self.core.fail(self.actx, failure.into());
    }

    /// End this incarnation with exactly `reason` (a supervisor's escalation).
    pub(crate) fn exit(&mut self, reason: ExitReason) {
        self.core.incarnation.exit(reason);
        self.actx.stop();
    }

    pub(crate) fn base_log(&self) -> &Logger {
        &self.core.base_log
    }

    pub(crate) fn registry(&self) -> &Registry {
        &self.core.registry
    }

    /// Run `f` on the actor after `delay`, unless the incarnation ends or the timer is
    /// cancelled first. An error fails the actor. Cancel timers that are no longer needed: a
    /// pending timer costs a little on every wake of the actor.
    pub fn run_later<F>(&mut self, delay: Duration, f: F) -> Timer
    where
        F: FnOnce(&mut A, &mut Ctx<'_, A>) -> Result<(), Failure> + 'static,
    {
        Timer(
            self.actx
                .run_later(delay, move |cell, actx| cell.run(actx, f)),
        )
    }

    /// Cancel a timer from [`Ctx::run_later`]; a timer that already fired is left alone.
    pub fn cancel(&mut self, timer: Timer) {
        self.actx.cancel_future(timer.0);
    }

    /// Run `f` on the actor every `period` for as long as the incarnation lives.
    pub fn run_interval<F>(&mut self, period: Duration, mut f: F)
    where
        F: FnMut(&mut A, &mut Ctx<'_, A>) -> Result<(), Failure> + 'static,
    {
        self.actx
            .run_interval(period, move |cell, actx| cell.run(actx, &mut f));
    }

    /// Run `fut` beside the mailbox, then `then` on the actor with its output. The future is
    /// dropped if the incarnation ends first; an error from `then` fails the actor.
    pub fn spawn<T, F, G>(&mut self, fut: F, then: G)
    where
        T: 'static,
        F: Future<Output = T> + 'static,
        G: FnOnce(T, &mut A, &mut Ctx<'_, A>) -> Result<(), Failure> + 'static,
    {
        self.actx.spawn(
            wrap_future::<_, Cell<A>>(fut)
                .map(move |out, cell, actx| cell.run(actx, move |a, c| then(out, a, c))),
        );
    }
}
