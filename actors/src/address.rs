//! [`ActorRef`]: the stable, typed address of a supervised actor. It follows the actor across
//! restarts and meters every message it sends.
//!
//! The queued-message rule: messages waiting in a mailbox when its incarnation ends (stop,
//! failure, panic, kill) are dropped, and so is the one being handled when a crash happens;
//! each waiting caller gets [`SendError::Stopped`]. A restarted actor begins with an empty
//! mailbox. While no incarnation runs, sends fail at once with [`SendError::NotRunning`]. Nothing
//! is replayed: a caller that needs its request done retries it.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use actix::Addr;
use tokio::sync::oneshot;

use crate::cell::Cell;
use crate::metrics::ActorMetrics;
use crate::registry::ActorEntry;
use crate::{Actor, ActorPath, Handler, Message};

/// Why a message got no answer.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
pub enum SendError {
    /// No incarnation is running (not started yet, restarting, or stopped).
    #[error("actor {0} is not running")]
    NotRunning(ActorPath),
    /// The incarnation ended before it answered; the message was dropped.
    #[error("actor {0} stopped before answering")]
    Stopped(ActorPath),
    /// The handler failed on this message, and the incarnation with it.
    #[error("actor {0} failed while handling the message")]
    Failed(ActorPath),
}

/// The address of an actor that stays valid across its restarts. Clone it freely; it can be sent
/// to and used from any thread.
pub struct ActorRef<A: Actor> {
    slot: Arc<Slot<A>>,
}

struct Slot<A: Actor> {
    path: OnceLock<ActorPath>,
    live: RwLock<Option<Live<A>>>,
}

struct Live<A: Actor> {
    generation: u64,
    addr: Addr<Cell<A>>,
    entry: Arc<ActorEntry>,
}

impl<A: Actor> Clone for ActorRef<A> {
    fn clone(&self) -> Self {
        ActorRef {
            slot: self.slot.clone(),
        }
    }
}

impl<A: Actor> ActorRef<A> {
    pub(crate) fn unbound() -> Self {
        ActorRef {
            slot: Arc::new(Slot {
                path: OnceLock::new(),
                live: RwLock::new(None),
            }),
        }
    }

    /// Point at a new incarnation.
    pub(crate) fn bind(&self, generation: u64, addr: Addr<Cell<A>>, entry: Arc<ActorEntry>) {
        let _ = self.slot.path.set(entry.path.clone());
        *self.slot.live.write().unwrap_or_else(|e| e.into_inner()) = Some(Live {
            generation,
            addr,
            entry,
        });
    }

    /// Forget incarnation `generation`, which has ended, unless a newer one is already bound; the
    /// messages it never took are counted as dropped. Exact: its mailbox takes no more, and no
    /// sender is between counting a message and posting it (each does both under the read lock).
    pub(crate) fn unbind(&self, generation: u64) {
        let mut live = self.slot.live.write().unwrap_or_else(|e| e.into_inner());
        if let Some(ended) = live.take_if(|l| l.generation == generation) {
            ended.entry.metrics.settle_dropped();
        }
    }

    /// The actor's path, once it has been started.
    pub fn path(&self) -> Option<&ActorPath> {
        self.slot.path.get()
    }

    /// The path for error messages; an actor never started has none yet.
    fn name(&self) -> ActorPath {
        self.path()
            .cloned()
            .unwrap_or_else(|| ActorPath::from("<never started>"))
    }

    /// Whether an incarnation is running now.
    pub fn is_running(&self) -> bool {
        let live = self.slot.live.read().unwrap_or_else(|e| e.into_inner());
        live.as_ref().is_some_and(|l| l.addr.connected())
    }

    /// Send `msg` and wait for the answer.
    pub fn ask<M>(&self, msg: M) -> Ask<M::Reply>
    where
        M: Message,
        A: Handler<M>,
    {
        let (tx, rx) = oneshot::channel();
        match self.deliver(msg, Some(tx)) {
            Ok(()) => Ask(Ok(rx)),
            Err(refused) => Ask(Err(refused)),
        }
    }

    /// Send `msg` without waiting for an answer.
    pub fn tell<M>(&self, msg: M) -> Result<(), SendError>
    where
        M: Message,
        A: Handler<M>,
    {
        self.deliver(msg, None)
    }

    fn deliver<M>(&self, msg: M, reply: Option<ReplyTo<M>>) -> Result<(), SendError>
    where
        M: Message,
        A: Handler<M>,
    {
        let live = self.slot.live.read().unwrap_or_else(|e| e.into_inner());
        let live = match live.as_ref() {
            Some(l) if l.addr.connected() => l,
            _ => return Err(SendError::NotRunning(self.name())),
        };
        let timed = live.entry.metrics.enqueued();
        live.addr.do_send(Envelope {
            msg,
            pending: Pending {
                reply,
                path: live.entry.path.clone(),
            },
            sent_at: timed.then(Instant::now),
        });
        Ok(())
    }
}

/// The answer to [`ActorRef::ask`], once it comes: a future of its own rather than an `async`
/// block, since every message awaits one (issue 12).
#[must_use = "an answer does nothing unless awaited"]
pub struct Ask<R>(Result<oneshot::Receiver<Result<R, SendError>>, SendError>);

impl<R> Future for Ask<R> {
    type Output = Result<R, SendError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.0 {
            Ok(rx) => Pin::new(rx).poll(cx).map(|answer| {
                // Only a `Pending` drops the sender, and it answers first (naming the actor). So
                // this fallback is never reached; it spares every call a copy of the name.
                answer.unwrap_or_else(|_| Err(SendError::Stopped(ActorPath::from("<unanswered>"))))
            }),
            Err(refused) => Poll::Ready(Err(refused.clone())),
        }
    }
}

type ReplyTo<M> = oneshot::Sender<Result<<M as Message>::Reply, SendError>>;

/// A message's promise of an answer, from its sending to its answer. Dropped unanswered (its
/// incarnation ended with the message waiting or its handling unfinished) it tells the caller
/// [`SendError::Stopped`].
pub(crate) struct Pending<M: Message> {
    /// `None` for a message sent with `tell`, or once answered.
    reply: Option<ReplyTo<M>>,
    /// The actor's, for the caller's error; a copy costs no reference count (paths are interned).
    path: ActorPath,
}

impl<M: Message> Pending<M> {
    /// Answer the caller, if one waits; it may have given up waiting, which is its business.
    pub(crate) fn answer(mut self, result: Result<M::Reply, SendError>) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(result);
        }
    }
}

impl<M: Message> Drop for Pending<M> {
    fn drop(&mut self) {
        if let Some(tx) = self.reply.take() {
            let _ = tx.send(Err(SendError::Stopped(self.path.clone())));
        }
    }
}

/// A message in a mailbox, stamped for the time-in-mailbox metric. Dropped unopened (its
/// incarnation ended), its [`Pending`] tells the caller `Stopped`; the incarnation's end counts it
/// as dropped ([`ActorRef::unbind`]), so that a message carries no reference to the metrics.
pub(crate) struct Envelope<M: Message> {
    msg: M,
    pending: Pending<M>,
    /// When it was sent, if it is one of the messages timed.
    sent_at: Option<Instant>,
}

impl<M: Message> actix::Message for Envelope<M> {
    type Result = ();
}

impl<M: Message> Envelope<M> {
    /// Take the message out for handling, which begins now, counting it in its actor's
    /// `metrics`; answers when, if it is timed.
    pub(crate) fn open(self, metrics: &ActorMetrics) -> (M, Pending<M>, Option<Instant>) {
        let began = self.sent_at.map(|sent| (sent, Instant::now()));
        metrics.dequeued(began.map(|(sent, now)| now.saturating_duration_since(sent)));
        (self.msg, self.pending, began.map(|(_, now)| now))
    }
}
