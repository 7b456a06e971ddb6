//! What a supervised actor is: the [`Actor`] lifecycle hooks, typed [`Message`]s, and the
//! [`Handler`] that answers them with a [`Reply`].

use std::future::Future;
use std::pin::Pin;

use actix::fut::{wrap_future, ActorFuture, ActorFutureExt};
use futures::future::LocalBoxFuture;

use crate::cell::Cell;
use crate::{Ctx, Failure};

/// State plus behaviour, rebuilt from its factory on every (re)start. Runs on an actix arbiter;
/// every hook runs with `&mut self`, one at a time.
pub trait Actor: Sized + Unpin + 'static {
    /// Runs first in every incarnation. Return [`Started::Pending`] for an actor that becomes ready
    /// later (it then calls [`Ctx::healthy`]); an error fails the start.
    fn started(&mut self, _ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        Ok(Started::Healthy)
    }

    /// Its supervisor asks it to stop. The default stops at once; an actor with work to wind down
    /// (a child process to end) may do that first and call [`Ctx::stop`] when done. The shutdown
    /// policy still applies: past its timeout the actor is killed.
    fn stop_requested(&mut self, ctx: &mut Ctx<'_, Self>) {
        ctx.stop();
    }

    /// Last words of an incarnation that started and then stops or fails; not called after a
    /// failed `started`, a brutal kill or a panic (the state may be half-updated), where only
    /// `Drop` runs.
    fn stopping(&mut self, _ctx: &mut Ctx<'_, Self>) {}
}

/// Whether an actor is ready when `started` returns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Started {
    /// Ready now: the supervisor may start the next child.
    Healthy,
    /// Not yet: the actor calls [`Ctx::healthy`] when it is.
    Pending,
}

/// A typed request. Messages cross threads, so they and their replies are `Send`.
pub trait Message: Send + 'static {
    /// What the handler answers.
    type Reply: Send + 'static;
}

/// How an actor handles message `M`. Returning `Err` fails the incarnation (the caller gets
/// [`crate::SendError::Failed`]); an answer that is itself an error belongs in `M::Reply`.
pub trait Handler<M: Message>: Actor {
    /// Handle one message.
    fn handle(&mut self, msg: M, ctx: &mut Ctx<'_, Self>)
        -> Result<Reply<Self, M::Reply>, Failure>;
}

/// A handler's answer: now, or after a future.
pub struct Reply<A: Actor, R>(pub(crate) ReplyKind<A, R>);

pub(crate) type CellFuture<A, T> = Pin<Box<dyn ActorFuture<Cell<A>, Output = T>>>;

pub(crate) enum ReplyKind<A: Actor, R> {
    Now(R),
    Later(CellFuture<A, Result<R, Failure>>),
    Detached(LocalBoxFuture<'static, Result<R, Failure>>),
}

impl<A: Actor, R: 'static> Reply<A, R> {
    /// The answer is ready.
    pub fn now(reply: R) -> Self {
        Reply(ReplyKind::Now(reply))
    }

    /// Answer after `fut`. The mailbox is paused meanwhile, so the actor serves one such request
    /// at a time (what a TPM or a disk needs). An `Err` fails the actor.
    pub fn later<F>(fut: F) -> Self
    where
        F: Future<Output = Result<R, Failure>> + 'static,
    {
        Reply(ReplyKind::Later(Box::pin(wrap_future(fut))))
    }

    /// Like [`Reply::later`], then update the actor's state from the future's output.
    pub fn later_then<F, T>(
        fut: F,
        then: impl FnOnce(T, &mut A, &mut Ctx<'_, A>) -> Result<R, Failure> + 'static,
    ) -> Self
    where
        F: Future<Output = Result<T, Failure>> + 'static,
        T: 'static,
    {
        let fut = wrap_future::<_, Cell<A>>(fut).map(move |out, cell, actx| match out {
            Ok(value) => cell.with_ctx(actx, |actor, ctx| then(value, actor, ctx)),
            Err(e) => Err(e),
        });
        Reply(ReplyKind::Later(Box::pin(fut)))
    }

    /// Answer after `fut`, which runs beside the mailbox (the actor keeps serving messages).
    /// For answers that wait on the actor's own later events, e.g. a supervisor's child start.
    pub fn detached<F>(fut: F) -> Self
    where
        F: Future<Output = Result<R, Failure>> + 'static,
    {
        Reply(ReplyKind::Detached(Box::pin(fut)))
    }
}
