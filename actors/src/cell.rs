//! The actix actor that hosts one incarnation of a supervised [`Actor`]. It meters messages,
//! turns handler errors into exits, and keeps user code away from a state that a panic or a
//! brutal kill left behind.

use std::sync::Arc;
use std::time::Instant;

use actix::fut::{wrap_future, ActorFutureExt};
use actix::{AsyncContext, Running};
use slog::Logger;

use crate::actor::ReplyKind;
use crate::address::{Envelope, Pending};
use crate::spawn::Incarnation;
use crate::{logging, registry::ActorEntry};
use crate::{
    Actor, ActorRef, Ctx, ExitReason, Failure, Handler, Message, Registry, SendError, Started,
};

/// The hosted actor and what its context needs.
pub(crate) struct Cell<A: Actor> {
    pub(crate) actor: A,
    pub(crate) core: Core<A>,
}

/// The parts of a cell that [`Ctx`] exposes.
pub(crate) struct Core<A: Actor> {
    pub(crate) logger: Logger,
    /// The node's logger without this actor's scope, for the loggers of its children.
    pub(crate) base_log: Logger,
    pub(crate) entry: Arc<ActorEntry>,
    pub(crate) incarnation: Arc<Incarnation>,
    pub(crate) myself: ActorRef<A>,
    pub(crate) registry: Registry,
    /// Set while user code runs; still set afterwards means that code panicked.
    busy: bool,
    /// `started` returned Ok; only then does `stopping` run (as OTP calls no terminate after a
    /// failed init).
    started: bool,
}

impl<A: Actor> Core<A> {
    /// End the incarnation with `failure`: log it, record it as the exit reason, stop.
    pub(crate) fn fail(&self, actx: &mut actix::Context<Cell<A>>, failure: Failure) {
        slog::error!(self.logger, "failed"; "error" => %failure);
        self.incarnation.exit(ExitReason::error(&failure));
        actix::ActorContext::stop(actx);
    }

    pub(crate) fn new(
        logger: Logger,
        base_log: Logger,
        entry: Arc<ActorEntry>,
        incarnation: Arc<Incarnation>,
        myself: ActorRef<A>,
        registry: Registry,
    ) -> Self {
        Core {
            logger,
            base_log,
            entry,
            incarnation,
            myself,
            registry,
            busy: false,
            started: false,
        }
    }
}

/// Control messages from the supervisor and fault injection; not metered.
pub(crate) enum Control {
    Stop,
    Crash,
}

impl actix::Message for Control {
    type Result = ();
}

impl<A: Actor> Cell<A> {
    /// Whether this incarnation is ending: it has decided to exit, was killed, or panicked.
    /// A halted cell handles no more messages and runs no more user code.
    fn halted(&self) -> bool {
        self.core.busy || self.core.incarnation.is_ending()
    }

    /// Run user code with a [`Ctx`], inside the actor's log scope.
    pub(crate) fn with_ctx<T>(
        &mut self,
        actx: &mut actix::Context<Self>,
        f: impl FnOnce(&mut A, &mut Ctx<'_, A>) -> T,
    ) -> T {
        let _scope = logging::enter(&self.core.logger);
        self.core.busy = true;
        let out = {
            let mut ctx = Ctx {
                actx,
                core: &self.core,
            };
            f(&mut self.actor, &mut ctx)
        };
        self.core.busy = false;
        out
    }

    /// Run user code that may fail; a failure ends the incarnation.
    pub(crate) fn run(
        &mut self,
        actx: &mut actix::Context<Self>,
        f: impl FnOnce(&mut A, &mut Ctx<'_, A>) -> Result<(), Failure>,
    ) {
        if self.halted() {
            return;
        }
        if let Err(failure) = self.with_ctx(actx, f) {
            self.fail(actx, failure);
        }
    }

    fn fail(&mut self, actx: &mut actix::Context<Self>, failure: Failure) {
        self.core.fail(actx, failure);
    }

    /// Answer a caller and count the message as handled.
    fn finish<M: Message>(
        &self,
        reply: Pending<M>,
        began: Option<Instant>,
        result: Result<M::Reply, SendError>,
    ) {
        self.core
            .entry
            .metrics
            .handled(began.map(|began| began.elapsed()));
        reply.answer(result);
    }

    fn failed_reply<R>(&self) -> Result<R, SendError> {
        Err(SendError::Failed(self.core.entry.path.clone()))
    }
}

impl<A: Actor> actix::Actor for Cell<A> {
    type Context = actix::Context<Self>;

    fn started(&mut self, actx: &mut Self::Context) {
        match self.with_ctx(actx, |actor, ctx| actor.started(ctx)) {
            Ok(started) => {
                self.core.started = true;
                if started == Started::Healthy {
                    self.core.incarnation.healthy(&self.core.entry);
                }
            }
            Err(failure) => self.fail(actx, failure),
        }
    }

    fn stopping(&mut self, actx: &mut Self::Context) -> Running {
        // After a panic or a brutal kill actix still polls the context once while dropping it;
        // the actor's state is not to be trusted then, so no user code runs.
        self.core.incarnation.exit(ExitReason::Normal);
        if self.core.busy || self.core.incarnation.was_killed() || !self.core.started {
            return Running::Stop;
        }
        self.with_ctx(actx, |actor, ctx| actor.stopping(ctx));
        Running::Stop
    }
}

impl<A, M> actix::Handler<Envelope<M>> for Cell<A>
where
    A: Handler<M>,
    M: Message,
{
    type Result = ();

    fn handle(&mut self, envelope: Envelope<M>, actx: &mut Self::Context) {
        if self.halted() {
            return; // dropping the envelope tells the caller Stopped
        }
        let (msg, reply, began) = envelope.open(&self.core.entry.metrics);
        match self.with_ctx(actx, |actor, ctx| actor.handle(msg, ctx)) {
            Err(failure) => {
                self.finish(reply, began, self.failed_reply());
                self.fail(actx, failure);
            }
            Ok(reply_kind) => match reply_kind.0 {
                ReplyKind::Now(answer) => self.finish(reply, began, Ok(answer)),
                ReplyKind::Later(fut) => {
                    actx.wait(fut.map(move |result, cell: &mut Self, actx| {
                        cell.complete(actx, reply, began, result)
                    }));
                }
                ReplyKind::Detached(fut) => {
                    actx.spawn(wrap_future(fut).map(move |result, cell: &mut Self, actx| {
                        cell.complete(actx, reply, began, result)
                    }));
                }
            },
        }
    }
}

impl<A: Actor> Cell<A> {
    fn complete<M: Message>(
        &mut self,
        actx: &mut actix::Context<Self>,
        reply: Pending<M>,
        began: Option<Instant>,
        result: Result<M::Reply, Failure>,
    ) {
        match result {
            Ok(answer) => self.finish(reply, began, Ok(answer)),
            Err(failure) => {
                self.finish(reply, began, self.failed_reply());
                self.fail(actx, failure);
            }
        }
    }
}

impl<A: Actor> actix::Handler<Control> for Cell<A> {
    type Result = ();

    fn handle(&mut self, control: Control, actx: &mut Self::Context) {
        if self.halted() {
            return;
        }
        match control {
            Control::Stop => {
                self.core.incarnation.request_stop(&self.core.entry);
                slog::debug!(self.core.logger, "stop requested");
                self.run(actx, |actor, ctx| {
                    actor.stop_requested(ctx);
                    Ok(())
                });
            }
            Control::Crash => {
                // Fails like a bug would: a panic in the actor's own context, with no cleanup.
                self.core.busy = true;
                panic!("fault injection: crash of {}", self.core.entry.path);
            }
        }
    }
}
