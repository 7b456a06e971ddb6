//! The tree's directory of actors by path: metrics, log ring and the controls of the running
//! incarnation. It outlives restarts, so numbers and logs survive the incarnations they describe,
//! and it is what `kill(path, how)`, snapshots and the debug endpoint use.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::logging::LogRing;
use crate::metrics::{
    unix_ms_now, ActorMetrics, ActorSnapshot, ActorState, FailureReport, Families,
};
use crate::{lock, ActorPath, ExitReason, Exposition};

/// How many log lines each actor keeps.
const LOG_LINES_KEPT: usize = 200;
/// How many of them a failure report carries.
const LOG_LINES_REPORTED: usize = 20;

/// How fault injection ends an actor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kill {
    /// It panics in its own context, as a bug would; `stopping` does not run.
    Crash,
    /// Its task is dropped at once, no cleanup hook runs.
    Brutal,
}

/// Why a kill could not be delivered.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KillError {
    /// No actor has ever run at that path.
    #[error("no actor at {0}")]
    NoSuchActor(String),
    /// The actor exists but no incarnation is running now.
    #[error("actor {0} is not running")]
    NotRunning(String),
}

/// The handles to a running incarnation that fault injection needs.
pub(crate) struct Control {
    pub(crate) generation: u64,
    pub(crate) kill: Box<dyn Fn(Kill) + Send + Sync>,
}

/// Everything the tree keeps about one path.
pub(crate) struct ActorEntry {
    pub(crate) path: ActorPath,
    pub(crate) metrics: ActorMetrics,
    pub(crate) logs: Arc<LogRing>,
    control: Mutex<Option<Control>>,
    generations: AtomicU64,
    /// When the path first started, relative to the others: siblings are listed in start order.
    started: u64,
}

impl ActorEntry {
    /// The number of the next incarnation (1 for the first).
    pub(crate) fn next_generation(&self) -> u64 {
        self.generations.fetch_add(1, Ordering::Relaxed) + 1
    }

    pub(crate) fn set_control(&self, control: Control) {
        *lock(&self.control) = Some(control);
    }

    /// Record the end of incarnation `generation`: its state, and a failure report if abnormal.
    pub(crate) fn record_exit(&self, generation: u64, reason: &ExitReason) {
        {
            let mut control = lock(&self.control);
            if control.as_ref().is_some_and(|c| c.generation == generation) {
                *control = None;
            }
        }
        if reason.is_abnormal() {
            self.metrics.failed(FailureReport {
                reason: reason.clone(),
                generation,
                at_unix_ms: unix_ms_now(),
                last_logs: self.logs.tail(LOG_LINES_REPORTED),
            });
        } else {
            self.metrics.set_state(ActorState::Stopped);
        }
    }
}

/// The directory of a supervision tree. Cheap to clone and usable from any thread.
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    entries: Mutex<BTreeMap<ActorPath, Arc<ActorEntry>>>,
    families: Families,
    /// How many paths have started so far.
    started: AtomicU64,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    /// An empty directory.
    pub fn new() -> Self {
        Registry {
            inner: Arc::new(Inner {
                entries: Mutex::new(BTreeMap::new()),
                families: Families::new(),
                started: AtomicU64::new(0),
            }),
        }
    }

    /// The entry for `path`, created on first use.
    pub(crate) fn entry(&self, path: &ActorPath) -> Arc<ActorEntry> {
        lock(&self.inner.entries)
            .entry(path.clone())
            .or_insert_with(|| {
                Arc::new(ActorEntry {
                    path: path.clone(),
                    metrics: self.inner.families.for_actor(path),
                    logs: Arc::new(LogRing::new(LOG_LINES_KEPT)),
                    control: Mutex::new(None),
                    generations: AtomicU64::new(0),
                    started: self.inner.started.fetch_add(1, Ordering::Relaxed),
                })
            })
            .clone()
    }

    fn find(&self, path: &str) -> Option<Arc<ActorEntry>> {
        lock(&self.inner.entries).get(path).cloned()
    }

    /// Fault injection: end the running incarnation at `path` as `how` says. Its supervisor
    /// handles the exit exactly as it would a real failure.
    pub fn kill(&self, path: &str, how: Kill) -> Result<(), KillError> {
        let entry = self
            .find(path)
            .ok_or_else(|| KillError::NoSuchActor(path.to_owned()))?;
        let control = lock(&entry.control);
        let control = control
            .as_ref()
            .ok_or_else(|| KillError::NotRunning(path.to_owned()))?;
        (control.kill)(how);
        Ok(())
    }

    /// Every actor's metrics as the tree reads: each parent before its children, siblings in
    /// the order they first started.
    pub fn snapshot(&self) -> Vec<ActorSnapshot> {
        let entries = lock(&self.inner.entries).clone();
        let mut ordered: Vec<(Vec<u64>, &Arc<ActorEntry>)> = entries
            .values()
            .map(|e| (tree_position(&entries, &e.path), e))
            .collect();
        ordered.sort_by(|a, b| a.0.cmp(&b.0));
        ordered
            .into_iter()
            .map(|(_, e)| e.metrics.snapshot(&e.path))
            .collect()
    }

    /// One actor's metrics.
    pub fn actor(&self, path: &str) -> Option<ActorSnapshot> {
        self.find(path).map(|e| e.metrics.snapshot(&e.path))
    }

    /// One actor's kept log lines, oldest first.
    pub fn logs(&self, path: &str) -> Option<Vec<String>> {
        self.find(path).map(|e| e.logs.lines())
    }

    /// All metrics as classic Prometheus text, what `promtool` and most readers expect.
    pub fn prometheus_text(&self) -> String {
        self.inner.families.encode(Exposition::Prometheus)
    }

    /// All metrics in `format`.
    pub fn metrics_text(&self, format: Exposition) -> String {
        self.inner.families.encode(format)
    }

    /// Serve the node's own metric families (process, gRPC, cluster health) beside the actors',
    /// on the same `/metrics`.
    pub fn register_metrics(
        &self,
        register: impl FnOnce(&mut prometheus_client::registry::Registry),
    ) {
        self.inner.families.extend(register);
    }
}

/// Where `path` comes in a depth-first walk of the tree: the start order of each of its
/// ancestors (the root excluded) and of itself.
fn tree_position(entries: &BTreeMap<ActorPath, Arc<ActorEntry>>, path: &ActorPath) -> Vec<u64> {
    let text = path.as_str();
    text.match_indices('/')
        .skip(1)
        .map(|(i, _)| &text[..i])
        .chain((!path.is_root()).then_some(text))
        .map(|prefix| entries.get(prefix).map_or(0, |e| e.started))
        .collect()
}
