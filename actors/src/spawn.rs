//! Starting one incarnation of a child and watching it end. The incarnation's actix context runs
//! as its own task, so that its end is observed exactly: a normal return, a panic (tokio contains
//! it) or an abort (brutal kill). Its supervisor then gets one exit event with the reason.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use actix::AsyncContext;
use slog::Logger;

use crate::cell::{Cell, Control, Core};
use crate::metrics::ActorState;
use crate::registry::{self, ActorEntry, Kill};
use crate::{logging, Actor, ActorPath, ActorRef, ExitReason, Failure, Message, Registry};

/// What a child's incarnation tells its supervisor.
pub struct ChildEvent {
    pub(crate) name: String,
    pub(crate) generation: u64,
    pub(crate) kind: ChildEventKind,
}

pub(crate) enum ChildEventKind {
    Healthy,
    Exited(ExitReason),
}

impl Message for ChildEvent {
    type Reply = ();
}

/// Where a child's events go: its supervisor's mailbox, or the tree for the root.
pub(crate) type EventSink = Arc<dyn Fn(ChildEvent) + Send + Sync>;

/// What a supervisor hands a child spec to start one incarnation.
pub(crate) struct StartArgs {
    pub(crate) name: String,
    pub(crate) path: ActorPath,
    pub(crate) registry: Registry,
    pub(crate) parent_log: Logger,
    pub(crate) events: EventSink,
}

/// The state one incarnation shares with its watcher and its supervisor.
pub(crate) struct Incarnation {
    pub(crate) generation: u64,
    name: String,
    events: EventSink,
    /// Why it ends; set once. Lock-free, since every message checks it.
    exit: OnceLock<ExitReason>,
    stop_requested: AtomicBool,
    killed: AtomicBool,
    healthy: AtomicBool,
}

impl Incarnation {
    /// Record why this incarnation ends; the first reason recorded wins.
    pub(crate) fn exit(&self, reason: ExitReason) {
        let _ = self.exit.set(reason);
    }

    #[inline]
    pub(crate) fn is_ending(&self) -> bool {
        self.exit.get().is_some() || self.was_killed()
    }

    #[inline]
    pub(crate) fn was_killed(&self) -> bool {
        self.killed.load(Ordering::Acquire)
    }

    pub(crate) fn request_stop(&self, entry: &ActorEntry) {
        self.stop_requested.store(true, Ordering::Release);
        entry.metrics.set_state(ActorState::Stopping);
    }

    pub(crate) fn stop_was_requested(&self) -> bool {
        self.stop_requested.load(Ordering::Acquire)
    }

    /// Report healthy to the supervisor, once per incarnation.
    pub(crate) fn healthy(&self, entry: &ActorEntry) {
        if self.healthy.swap(true, Ordering::AcqRel) || self.is_ending() {
            return;
        }
        entry.metrics.set_state(ActorState::Healthy);
        (self.events)(ChildEvent {
            name: self.name.clone(),
            generation: self.generation,
            kind: ChildEventKind::Healthy,
        });
    }
}

/// A running incarnation as its supervisor holds it.
pub(crate) struct RunningChild {
    pub(crate) generation: u64,
    incarnation: Arc<Incarnation>,
    control: Box<dyn Fn(Control) + Send + Sync>,
    abort: tokio::task::AbortHandle,
}

impl RunningChild {
    /// Ask the incarnation to stop (its `stop_requested` hook runs).
    pub(crate) fn request_stop(&self) {
        (self.control)(Control::Stop);
    }

    /// End it at once; no user code runs.
    pub(crate) fn kill(&self) {
        kill_now(&self.incarnation, &self.abort);
    }
}

fn kill_now(incarnation: &Incarnation, abort: &tokio::task::AbortHandle) {
    incarnation.killed.store(true, Ordering::Release);
    abort.abort();
}

/// Start one incarnation of actor `A` built by `factory`, bound to `actor_ref`.
pub(crate) fn start_worker<A: Actor>(
    factory: &dyn Fn() -> Result<A, Failure>,
    actor_ref: &ActorRef<A>,
    args: StartArgs,
) -> Result<RunningChild, Failure> {
    let entry = args.registry.entry(&args.path);
    let generation = entry.next_generation();
    entry.metrics.starting(generation);
    let logger = logging::actor_logger(&args.parent_log, &args.path, entry.logs.clone());
    let actor = match factory() {
        Ok(actor) => actor,
        Err(failure) => {
            slog::error!(logger, "could not be built"; "error" => %failure);
            entry.record_exit(generation, &ExitReason::error(&failure));
            return Err(failure);
        }
    };
    let incarnation = Arc::new(Incarnation {
        generation,
        name: args.name,
        events: args.events,
        exit: OnceLock::new(),
        stop_requested: AtomicBool::new(false),
        killed: AtomicBool::new(false),
        healthy: AtomicBool::new(false),
    });

    let actx = actix::Context::<Cell<A>>::new();
    let addr = actx.address();
    actor_ref.bind(generation, addr.clone(), entry.clone());
    let core = Core::new(
        logger,
        args.parent_log.clone(),
        entry.clone(),
        incarnation.clone(),
        actor_ref.clone(),
        args.registry.clone(),
    );
    let task = actix_rt::spawn(actx.into_future(Cell { actor, core }));
    let abort = task.abort_handle();

    let control_addr = addr.clone();
    let control: Box<dyn Fn(Control) + Send + Sync> = Box::new(move |c| control_addr.do_send(c));
    let kill_incarnation = incarnation.clone();
    let kill_abort = abort.clone();
    entry.set_control(registry::Control {
        generation,
        kill: Box::new(move |how| match how {
            Kill::Crash => addr.do_send(Control::Crash),
            Kill::Brutal => kill_now(&kill_incarnation, &kill_abort),
        }),
    });

    let watched = incarnation.clone();
    let unbind = actor_ref.clone();
    actix_rt::spawn(async move {
        let reason = match task.await {
            Ok(()) => watched.exit.get().cloned().unwrap_or(ExitReason::Normal),
            Err(e) if e.is_panic() => ExitReason::panic(e.into_panic()),
            Err(_) => ExitReason::Killed,
        };
        unbind.unbind(generation);
        entry.record_exit(generation, &reason);
        (watched.events)(ChildEvent {
            name: watched.name.clone(),
            generation,
            kind: ChildEventKind::Exited(reason),
        });
    });

    Ok(RunningChild {
        generation,
        incarnation,
        control,
        abort,
    })
}
