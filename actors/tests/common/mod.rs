//! A scriptable probe actor and a journal of what it did, for supervision tests.

#![allow(dead_code)] // each test file uses a different part of this harness

use std::sync::{Arc, Mutex};
use std::time::Duration;

use polis_actors::{
    Actor, ActorRef, ChildSpec, Ctx, Failure, Handler, Message, Reply, Started, SupervisorSpec,
    Tree,
};

/// An ordered record of what the probes did, shared by all probes of a test.
#[derive(Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<String>>>);

impl Journal {
    pub fn push(&self, entry: String) {
        self.0.lock().unwrap().push(entry);
    }

    pub fn entries(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// The entries that end with `what`, e.g. "stopping".
    pub fn only(&self, what: &str) -> Vec<String> {
        self.entries()
            .into_iter()
            .filter(|e| e.ends_with(what))
            .collect()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// How a probe starts.
#[derive(Clone, Copy, Debug)]
pub enum StartMode {
    Healthy,
    HealthyAfter(Duration),
    Never,
    Fail,
    Panic,
}

/// A probe's behaviour, changeable while the test runs.
#[derive(Clone, Copy, Debug)]
pub struct Script {
    pub start: StartMode,
    pub ignore_stop: bool,
    pub panic_in_stopping: bool,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            start: StartMode::Healthy,
            ignore_stop: false,
            panic_in_stopping: false,
        }
    }
}

pub struct Probe {
    name: String,
    journal: Journal,
    script: Arc<Mutex<Script>>,
}

impl Actor for Probe {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        self.journal.push(format!("{} start", self.name));
        let script = *self.script.lock().unwrap();
        match script.start {
            StartMode::Healthy => {
                self.journal.push(format!("{} healthy", self.name));
                Ok(Started::Healthy)
            }
            StartMode::HealthyAfter(delay) => {
                ctx.run_later(delay, |probe, ctx| {
                    probe.journal.push(format!("{} healthy", probe.name));
                    ctx.healthy();
                    Ok(())
                });
                Ok(Started::Pending)
            }
            StartMode::Never => Ok(Started::Pending),
            StartMode::Fail => Err(Failure::msg("scripted start failure")),
            StartMode::Panic => panic!("scripted panic in started"),
        }
    }

    fn stop_requested(&mut self, ctx: &mut Ctx<'_, Self>) {
        if self.script.lock().unwrap().ignore_stop {
            self.journal.push(format!("{} ignores stop", self.name));
        } else {
            ctx.stop();
        }
    }

    fn stopping(&mut self, _ctx: &mut Ctx<'_, Self>) {
        self.journal.push(format!("{} stopping", self.name));
        if self.script.lock().unwrap().panic_in_stopping {
            panic!("scripted panic in stopping");
        }
    }
}

/// Ask for the probe's generation.
pub struct Ping;
impl Message for Ping {
    type Reply = u64;
}
impl Handler<Ping> for Probe {
    fn handle(&mut self, _: Ping, ctx: &mut Ctx<'_, Self>) -> Result<Reply<Self, u64>, Failure> {
        Ok(Reply::now(ctx.generation()))
    }
}

/// Make the probe end itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Normal,
    Shutdown,
    Error,
    Panic,
}
impl Message for Exit {
    type Reply = ();
}
impl Handler<Exit> for Probe {
    fn handle(&mut self, how: Exit, ctx: &mut Ctx<'_, Self>) -> Result<Reply<Self, ()>, Failure> {
        match how {
            Exit::Normal => ctx.stop(),
            Exit::Shutdown => ctx.shutdown(),
            Exit::Error => return Err(Failure::msg("asked to fail")),
            Exit::Panic => panic!("asked to panic"),
        }
        Ok(Reply::now(()))
    }
}

/// Hold the mailbox until the incarnation ends.
pub struct Hold;
impl Message for Hold {
    type Reply = ();
}
impl Handler<Hold> for Probe {
    fn handle(&mut self, _: Hold, _: &mut Ctx<'_, Self>) -> Result<Reply<Self, ()>, Failure> {
        Ok(Reply::later(futures::future::pending()))
    }
}

/// A probe child named `name`, journaling into `journal`.
pub fn probe(name: &str, journal: &Journal) -> (ChildSpec, ActorRef<Probe>, Arc<Mutex<Script>>) {
    let script = Arc::new(Mutex::new(Script::default()));
    let (journal, name_owned, shared) = (journal.clone(), name.to_owned(), script.clone());
    let (spec, actor) = ChildSpec::worker(name, move || {
        Ok(Probe {
            name: name_owned.clone(),
            journal: journal.clone(),
            script: shared.clone(),
        })
    });
    (spec, actor, script)
}

pub fn quiet() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

pub async fn start(spec: SupervisorSpec) -> Tree {
    Tree::start(spec, quiet()).await.expect("tree starts")
}

/// Wait (in virtual time when paused) until `cond` holds; fail the test if it never does.
pub async fn until(what: &str, cond: impl Fn() -> bool) {
    for _ in 0..20_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("timed out waiting until {what}");
}

/// Let everything run that can, before a negative assertion. Every caller pauses time, and a
/// paused runtime advances its clock only when no task is ready: so once this virtual sleep
/// ends, every message sent before it has been handled and every restart or timer due within
/// ten seconds has run, however the threads were scheduled (a count of yields only hoped so).
pub async fn settle() {
    tokio::time::sleep(Duration::from_secs(10)).await;
}

pub fn generation(tree: &Tree, path: &str) -> u64 {
    tree.registry()
        .actor(path)
        .map(|s| s.generation)
        .unwrap_or(0)
}

/// Log a line through the actor's slog logger.
pub struct Say(pub String);
impl Message for Say {
    type Reply = ();
}
impl Handler<Say> for Probe {
    fn handle(
        &mut self,
        Say(line): Say,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, ()>, Failure> {
        slog::info!(ctx.log(), "{}", line);
        Ok(Reply::now(()))
    }
}

/// Log a line through the `log` crate, as a dependency would.
pub struct SayViaLogCrate(pub String);
impl Message for SayViaLogCrate {
    type Reply = ();
}
impl Handler<SayViaLogCrate> for Probe {
    fn handle(
        &mut self,
        SayViaLogCrate(line): SayViaLogCrate,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, ()>, Failure> {
        log::info!(target: "some_dependency", "{line}");
        Ok(Reply::now(()))
    }
}
