//! The reaper of process 1. Orphans are re-parented to init, and a zombie that nobody waits for
//! stays in the process table for good; so when `polis-node` is PID 1 one thread reaps every
//! child with `waitpid(-1)`. Children that Polis started itself (etcd, mkfs) must still get
//! their own exit status: they are registered under the reaper's lock at spawn, and the reaper
//! hands their status to the registered owner instead of dropping it.
//!
//! When `polis-node` is not PID 1 (tests, the namespace launcher) no reaper runs and children
//! are waited for by PID, as `std::process::Child::wait` does.

use std::collections::HashMap;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Mutex, OnceLock};

use nix::errno::Errno;
use nix::sys::signal::{SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Owners waiting for their children's exit, by PID.
struct Reaper {
    owners: Mutex<HashMap<i32, Sender<ExitStatus>>>,
    log: slog::Logger,
}

static REAPER: OnceLock<Reaper> = OnceLock::new();

/// Why the reaper could not start.
#[derive(Debug, thiserror::Error)]
pub enum ReaperError {
    /// SIGCHLD could not be blocked for `sigwait`.
    #[error("cannot block SIGCHLD for the reaper: {0}")]
    Mask(Errno),
    /// A reaper already runs.
    #[error("the reaper is already running")]
    Running,
    /// Its thread could not be started.
    #[error("cannot start the reaper thread: {0}")]
    Thread(std::io::Error),
}

/// Start the reaper. Call it first thing in `main`, before any other thread exists: SIGCHLD is
/// blocked in the calling thread, and every thread spawned later inherits the mask, so the
/// reaper's `sigwait` is the only place SIGCHLD lands. (Children get a clean mask: the standard
/// library resets it before `exec`.)
pub fn start(log: slog::Logger) -> Result<(), ReaperError> {
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    mask.thread_block().map_err(ReaperError::Mask)?;
    REAPER
        .set(Reaper {
            owners: Mutex::new(HashMap::new()),
            log,
        })
        .map_err(|_| ReaperError::Running)?;
    std::thread::Builder::new()
        .name("reaper".into())
        .spawn(move || reap_forever(mask))
        .map_err(ReaperError::Thread)?;
    Ok(())
}

/// A started child and how to learn its exit status.
pub(crate) struct Spawned {
    /// The child (its pipes); never `wait`ed on while the reaper runs.
    pub child: Child,
    exit: Option<Receiver<ExitStatus>>,
}

impl Spawned {
    /// Block until the child has exited, and say how.
    pub fn wait(mut self) -> std::io::Result<ExitStatus> {
        match self.exit.take() {
            Some(exit) => exit
                .recv()
                .map_err(|_| std::io::Error::other("the reaper stopped")),
            None => self.child.wait(),
        }
    }
}

/// Spawn `cmd`. While the reaper runs, the child is registered before the reaper can see it
/// exit (the spawn holds the lock the reaper reaps under), so its status always reaches us.
/// The child inherits no descriptor but its stdio (see [`stdio_only`]).
pub(crate) fn spawn(cmd: &mut Command) -> std::io::Result<Spawned> {
    stdio_only(cmd);
    let Some(reaper) = REAPER.get() else {
        return Ok(Spawned {
            child: cmd.spawn()?,
            exit: None,
        });
    };
    let mut owners = lock(&reaper.owners);
    let child = cmd.spawn()?;
    let (tx, rx) = channel();
    owners.insert(child.id() as i32, tx);
    Ok(Spawned {
        child,
        exit: Some(rx),
    })
}

/// Mark every descriptor above stdio close-on-exec in `cmd`'s child, between fork and exec. C
/// libraries open descriptors without close-on-exec (the TPM's TCTI among them): etcd that
/// inherits a TPM connection holds it for as long as it lives, which keeps swtpm (one
/// connection at a time) from ever serving the node again, and hands a real TPM to a program
/// that has no business with it.
fn stdio_only(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // close_range(2) is async-signal-safe; the CLOEXEC flag leaves Rust's own exec-error pipe
    // working.
    unsafe {
        cmd.pre_exec(|| {
            let flags = libc::CLOSE_RANGE_CLOEXEC as libc::c_int;
            match libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, flags) {
                0 => Ok(()),
                _ => Err(std::io::Error::last_os_error()),
            }
        });
    }
}

fn reap_forever(mask: SigSet) {
    let Some(reaper) = REAPER.get() else { return };
    loop {
        reap_all(reaper);
        // Children that exit while we reap raise SIGCHLD again, so nothing is missed.
        if let Err(e) = mask.wait() {
            slog::error!(reaper.log, "sigwait failed; reaping by polling"; "error" => %e);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
}

fn reap_all(reaper: &Reaper) {
    let mut owners = lock(&reaper.owners);
    loop {
        let (pid, status) = match waitpid(Pid::from_raw(-1), Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::from_raw((code & 0xff) << 8)),
            Ok(WaitStatus::Signaled(pid, signal, core)) => (
                pid,
                ExitStatus::from_raw(signal as i32 | if core { 0x80 } else { 0 }),
            ),
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
            Ok(_) => continue,
            Err(Errno::EINTR) => continue,
            Err(e) => {
                slog::error!(reaper.log, "waitpid failed"; "error" => %e);
                return;
            }
        };
        match owners.remove(&pid.as_raw()) {
            // The owner may have gone; its status then has no one to tell.
            Some(owner) => drop(owner.send(status)),
            None => {
                slog::debug!(reaper.log, "reaped an orphan"; "pid" => pid.as_raw(), "status" => %status)
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
