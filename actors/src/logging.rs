//! Structured logs that know where they come from: every actor logs through a slog logger that
//! carries its path and copies each record into a bounded ring buffer kept per path, so a failure
//! report can hold the actor's last lines. Records of dependencies that use the `log` crate (and
//! `tracing`, through its `log` feature) are bridged into the actor that was running, or the node.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::fmt::{self, Write as _};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use slog::{o, Drain, Logger, Never, OwnedKVList, Record, KV};

use crate::{lock, ActorPath};

/// The last records of one actor, oldest first, at most `capacity` of them.
pub struct LogRing {
    lines: Mutex<VecDeque<String>>,
    capacity: usize,
}

impl LogRing {
    /// An empty ring that keeps `capacity` lines.
    pub fn new(capacity: usize) -> Self {
        LogRing {
            lines: Mutex::new(VecDeque::with_capacity(capacity.min(1024))),
            capacity,
        }
    }

    fn push(&self, line: String) {
        let mut lines = lock(&self.lines);
        if lines.len() == self.capacity {
            lines.pop_front();
        }
        lines.push_back(line);
    }

    /// All kept lines, oldest first.
    pub fn lines(&self) -> Vec<String> {
        lock(&self.lines).iter().cloned().collect()
    }

    /// The newest `n` lines, oldest first.
    pub fn tail(&self, n: usize) -> Vec<String> {
        let lines = lock(&self.lines);
        lines
            .iter()
            .skip(lines.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

/// Formats a record as `LEVEL message key=value …` into its ring.
struct RingDrain(Arc<LogRing>);

impl Drain for RingDrain {
    type Ok = ();
    type Err = Never;

    fn log(&self, record: &Record<'_>, values: &OwnedKVList) -> Result<(), Never> {
        let mut line = format!("{} {}", record.level().as_short_str(), record.msg());
        let mut kv = KvLine(&mut line);
        // Serializing into a String cannot fail.
        let _ = record.kv().serialize(record, &mut kv);
        let _ = values.serialize(record, &mut kv);
        self.0.push(line);
        Ok(())
    }
}

struct KvLine<'a>(&'a mut String);

impl slog::Serializer for KvLine<'_> {
    fn emit_arguments(&mut self, key: slog::Key, val: &fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

/// A logger for the actor at `path`: its records carry `actor = path`, go to `parent`, and are
/// kept in `ring`.
pub(crate) fn actor_logger(parent: &Logger, path: &ActorPath, ring: Arc<LogRing>) -> Logger {
    let drain = slog::Duplicate::new(RingDrain(ring), parent.clone()).ignore_res();
    Logger::root(drain, o!("actor" => path.to_string()))
}

/// The node's human-readable log on standard error, at `level` and above.
pub fn terminal_logger(level: slog::Level) -> Logger {
    let decorator = slog_term::PlainSyncDecorator::new(std::io::stderr());
    let drain = slog_term::FullFormat::new(decorator).build().fuse();
    Logger::root(drain.filter_level(level).fuse(), o!())
}

thread_local! {
    static CURRENT: RefCell<Vec<Logger>> = const { RefCell::new(Vec::new()) };
}

/// Whether the `log` bridge or the panic hook is installed; without them nobody reads
/// `CURRENT`, so actors skip it.
static BRIDGED: AtomicBool = AtomicBool::new(false);

/// Marks `logger` as the running actor's until the guard drops, so that bridged records from
/// libraries called synchronously by the actor land in its log.
#[inline]
pub(crate) fn enter(logger: &Logger) -> EnterGuard {
    let entered = BRIDGED.load(Ordering::Relaxed);
    if entered {
        CURRENT.with(|c| c.borrow_mut().push(logger.clone()));
    }
    EnterGuard { entered }
}

pub(crate) struct EnterGuard {
    entered: bool,
}

impl Drop for EnterGuard {
    #[inline]
    fn drop(&mut self) {
        if self.entered {
            CURRENT.with(|c| {
                c.borrow_mut().pop();
            });
        }
    }
}

struct LogBridge {
    fallback: Logger,
}

impl log::Log for LogBridge {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= log::Level::Info
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let current = CURRENT.with(|c| c.borrow().last().cloned());
        let logger = current.as_ref().unwrap_or(&self.fallback);
        let target = record.target().to_owned();
        let args = record.args();
        match record.level() {
            log::Level::Error => slog::error!(logger, "{}", args; "target" => target),
            log::Level::Warn => slog::warn!(logger, "{}", args; "target" => target),
            log::Level::Info => slog::info!(logger, "{}", args; "target" => target),
            log::Level::Debug => slog::debug!(logger, "{}", args; "target" => target),
            log::Level::Trace => slog::trace!(logger, "{}", args; "target" => target),
        }
    }

    fn flush(&self) {}
}

/// Route records of the `log` crate (and of `tracing` with its `log` feature, which tonic and
/// hyper use) into slog: to the actor running on this thread, else to `fallback`. Process-wide;
/// returns false when a `log` logger was already installed (the first one stays).
pub fn bridge_log_crate(fallback: Logger) -> bool {
    let installed = log::set_boxed_logger(Box::new(LogBridge { fallback })).is_ok();
    if installed {
        BRIDGED.store(true, Ordering::Relaxed);
        log::set_max_level(log::LevelFilter::Info);
    }
    installed
}

/// Log panics as structured records instead of raw text on standard error: to the actor running
/// on this thread (so its ring keeps it), else to `fallback`. The supervisor contains the panic
/// and reports it as the actor's exit reason; this keeps where it happened.
pub fn log_panics(fallback: Logger) {
    std::panic::set_hook(Box::new(move |info| {
        let current = CURRENT.with(|c| c.try_borrow().ok().and_then(|c| c.last().cloned()));
        let logger = current.as_ref().unwrap_or(&fallback);
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| (*s).to_owned())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "non-string panic payload".to_owned());
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        slog::crit!(logger, "panic"; "message" => message, "at" => location);
    }));
    // Panics are attributed through the same per-thread scope the log bridge uses.
    BRIDGED.store(true, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_keeps_the_newest_lines() {
        let ring = Arc::new(LogRing::new(3));
        let log = actor_logger(
            &Logger::root(slog::Discard, o!()),
            &ActorPath::from("/a"),
            ring.clone(),
        );
        for i in 0..5 {
            slog::info!(log, "step"; "n" => i);
        }
        assert_eq!(
            ring.lines(),
            vec![
                "INFO step n=2 actor=/a",
                "INFO step n=3 actor=/a",
                "INFO step n=4 actor=/a"
            ]
        );
        assert_eq!(ring.tail(1), vec!["INFO step n=4 actor=/a"]);
    }
}
