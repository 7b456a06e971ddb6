//! The one way Polis runs a long-lived child process (etcd, swtpm): in its own process group, with
//! the parent's death delivering SIGKILL to it, its output logged line by line under the owning
//! actor's logger, reaped by a waiter thread, and killed (group and all) when its handle drops.
//! So a child never outlives its actor: not on a crash, not on a brutal kill, not when
//! `polis-node` itself dies. Short commands (mkfs) run to completion through [`run`]. Both go
//! through the [`reaper`] when `polis-node` is PID 1, so their exit status is never lost to it.

pub mod reaper;

use std::io::{BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;
use slog::Logger;
use tokio::sync::watch;

/// Why a child process could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// The program could not be executed.
    #[error("cannot start {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
    /// The program ran but failed.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        /// The program.
        program: String,
        /// How it ended.
        status: ExitStatus,
        /// The end of what it wrote to standard error.
        stderr: String,
    },
    /// Its exit status could not be learnt.
    #[error("cannot wait for {program}: {source}")]
    Wait {
        /// The program.
        program: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A running child process, owned by one actor.
pub struct ChildProcess {
    shared: Arc<Shared>,
}

/// What the handle, its futures and the waiter thread share.
struct Shared {
    pid: u32,
    name: String,
    log: Logger,
    exit: Exit,
    exited: watch::Receiver<Option<ExitStatus>>,
}

struct Exit {
    status: Mutex<Option<ExitStatus>>,
    reaped: Condvar,
}

impl ChildProcess {
    /// Start `cmd`, naming it `name` in logs; its stdout and stderr go to `log`.
    ///
    /// The parent-death signal follows the thread that forks: call this from a long-lived thread
    /// (an actor's arbiter), never from a short-lived worker thread.
    pub fn spawn(mut cmd: Command, name: &str, log: &Logger) -> Result<Self, ProcessError> {
        let parent = std::process::id();
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // Runs in the child between fork and exec: only async-signal-safe system calls.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))?;
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
                // The parent may have died before the line above took effect.
                if nix::unistd::getppid().as_raw() as u32 != parent {
                    return Err(std::io::Error::other("parent died during spawn"));
                }
                Ok(())
            });
        }
        let program = cmd.get_program().to_string_lossy().into_owned();
        let mut spawned = reaper::spawn(&mut cmd).map_err(|source| ProcessError::Spawn {
            program: program.clone(),
            source,
        })?;
        let child = &mut spawned.child;
        let pid = child.id();
        let log = log.new(slog::o!("process" => name.to_owned(), "pid" => pid));
        if let Some(out) = child.stdout.take() {
            forward_lines(out, "stdout", log.clone());
        }
        if let Some(err) = child.stderr.take() {
            forward_lines(err, "stderr", log.clone());
        }
        let (tx, exited) = watch::channel(None);
        let shared = Arc::new(Shared {
            pid,
            name: name.to_owned(),
            log: log.clone(),
            exit: Exit {
                status: Mutex::new(None),
                reaped: Condvar::new(),
            },
            exited,
        });
        spawn_waiter(spawned, shared.clone(), tx);
        slog::info!(log, "started"; "program" => program);
        Ok(ChildProcess { shared })
    }

    /// The child's process ID (also its process group ID).
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// How it ended, if it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *lock(&self.shared.exit.status)
    }

    /// A future that resolves when it has ended; it does not keep the process alive.
    pub fn exited(&self) -> impl std::future::Future<Output = ExitStatus> + 'static {
        let shared = self.shared.clone();
        async move { shared.exited().await }
    }

    /// Ask it to stop (SIGTERM to its group); after `grace`, kill the group. Resolves with how it
    /// ended.
    pub fn terminate(
        &self,
        grace: Duration,
    ) -> impl std::future::Future<Output = ExitStatus> + 'static {
        let shared = self.shared.clone();
        async move {
            shared.signal_group(Signal::SIGTERM);
            match tokio::time::timeout(grace, shared.exited()).await {
                Ok(status) => status,
                Err(_) => {
                    slog::warn!(shared.log, "did not stop in time, killing it"; "grace_ms" => grace.as_millis() as u64);
                    shared.signal_group(Signal::SIGKILL);
                    shared.exited().await
                }
            }
        }
    }
}

impl Shared {
    async fn exited(&self) -> ExitStatus {
        let mut rx = self.exited.clone();
        let status = match rx.wait_for(Option::is_some).await {
            Ok(status) => *status,
            Err(_) => None,
        };
        // The waiter thread records the status before it sends, so this is always set.
        status.unwrap_or_else(|| lock(&self.exit.status).unwrap_or_default())
    }

    fn signal_group(&self, signal: Signal) {
        // Only while unreaped: a reaped PID may belong to someone else.
        let status = lock(&self.exit.status);
        if status.is_none() {
            let _ = killpg(Pid::from_raw(self.pid as i32), signal);
        }
    }
}

impl Drop for ChildProcess {
    /// Kill the whole group and wait for the reap, so no orphan is left behind.
    fn drop(&mut self) {
        let shared = &self.shared;
        let mut status = lock(&shared.exit.status);
        if status.is_none() {
            let _ = killpg(Pid::from_raw(shared.pid as i32), Signal::SIGKILL);
            let deadline = Duration::from_secs(10);
            status = shared
                .exit
                .reaped
                .wait_timeout_while(status, deadline, |s| s.is_none())
                .map(|(s, _)| s)
                .unwrap_or_else(|e| e.into_inner().0);
            if status.is_none() {
                slog::error!(shared.log, "killed child was not reaped"; "name" => &shared.name);
            }
        }
    }
}

/// Whether process `pid` runs: it exists and has not ended. A zombie has ended (it only waits
/// for its parent to reap it) though it still answers `kill(pid, 0)`.
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the command name, which is in parentheses and may hold anything.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next());
    state.is_some_and(|state| !matches!(state, "Z" | "X"))
}

/// Run `cmd` to completion with its output captured; a non-zero exit is an error carrying its
/// standard error.
pub fn run(mut cmd: Command) -> Result<Output, ProcessError> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut spawned = reaper::spawn(&mut cmd).map_err(|source| ProcessError::Spawn {
        program: program.clone(),
        source,
    })?;
    let read = |stream: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut stream) = stream {
                let _ = stream.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = read(spawned.child.stdout.take().map(|s| Box::new(s) as _));
    let stderr = read(spawned.child.stderr.take().map(|s| Box::new(s) as _));
    let status = spawned.wait().map_err(|source| ProcessError::Wait {
        program: program.clone(),
        source,
    })?;
    let output = Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    };
    if !status.success() {
        return Err(ProcessError::Failed {
            program,
            status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

fn spawn_waiter(
    spawned: reaper::Spawned,
    shared: Arc<Shared>,
    tx: watch::Sender<Option<ExitStatus>>,
) {
    std::thread::spawn(move || {
        let (log, exit) = (&shared.log, &shared.exit);
        let status = match spawned.wait() {
            Ok(status) => status,
            Err(e) => {
                slog::error!(log, "cannot wait for child"; "error" => %e);
                ExitStatus::default()
            }
        };
        slog::info!(log, "exited"; "status" => %status);
        *lock(&exit.status) = Some(status);
        exit.reaped.notify_all();
        tx.send_replace(Some(status));
    });
}

fn forward_lines(stream: impl Read + Send + 'static, name: &'static str, log: Logger) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            match line {
                Ok(line) => slog::info!(log, "{}", line; "stream" => name),
                Err(_) => break,
            }
        }
    });
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;
    use crate::poll::{holds, Poll};

    /// How the tests wait for a child's doings: its output, its death.
    const WAIT: Poll = Poll::new(Duration::from_millis(10), Duration::from_secs(60));

    fn quiet() -> Logger {
        Logger::root(slog::Discard, slog::o!())
    }

    #[test]
    fn a_child_inherits_no_descriptor_but_its_stdio() {
        use std::os::fd::AsRawFd;
        // As a C library opens them: without close-on-exec.
        let (read, _write) = nix::unistd::pipe().unwrap();
        let fd = read.as_raw_fd();
        let flags = nix::fcntl::fcntl(&read, nix::fcntl::FcntlArg::F_GETFD).unwrap();
        assert_eq!(
            flags & libc::FD_CLOEXEC,
            0,
            "the test needs an inheritable descriptor"
        );
        let mut cmd = Command::new("sh");
        cmd.args(["-c", &format!("[ ! -e /proc/$$/fd/{fd} ]")]);
        run(cmd).unwrap_or_else(|e| panic!("descriptor {fd} leaked into the child: {e}"));
    }

    #[test]
    fn a_zombie_is_not_running() {
        let mut ended = Command::new("true").spawn().unwrap();
        let mut sleeping = Command::new("sleep").arg("300").spawn().unwrap();
        // Not reaped yet: a zombie once it has exited.
        WAIT.until_blocking(|| {
            let stat = std::fs::read_to_string(format!("/proc/{}/stat", ended.id()));
            holds(
                stat.unwrap_or_default().contains(") Z "),
                "not a zombie yet",
            )
        })
        .unwrap();
        assert!(!is_running(ended.id()));
        assert!(is_running(sleeping.id()));
        sleeping.kill().unwrap();
        let _ = (ended.wait(), sleeping.wait());
        assert!(!is_running(sleeping.id()), "reaped");
    }

    #[test]
    fn output_is_logged_and_exit_is_reported() {
        let (ring, log) = capture();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo out; echo err >&2; exit 3"]);
        let child = ChildProcess::spawn(cmd, "sh", &log).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let status = rt.block_on(child.exited());
        assert_eq!(status.code(), Some(3));
        // Readers may trail the exit by a moment.
        let _ = WAIT.until_blocking(|| {
            let streams = lines(&ring)
                .iter()
                .filter(|l| l.contains("stream="))
                .count();
            holds(streams == 2, "both streams read")
        });
        let lines = lines(&ring);
        assert!(lines.iter().any(|l| l == "out stream=stdout"), "{lines:?}");
        assert!(lines.iter().any(|l| l == "err stream=stderr"), "{lines:?}");
    }

    #[test]
    fn dropping_the_handle_kills_the_whole_group() {
        let mut cmd = Command::new("sh");
        // A grandchild in the same group, which must die too.
        cmd.args(["-c", "sleep 300 & echo $! ; wait"]);
        let (ring, log) = capture();
        let child = ChildProcess::spawn(cmd, "sh", &log).unwrap();
        let grandchild = WAIT.until_blocking(|| {
            lines(&ring)
                .iter()
                .find(|l| l.ends_with("stream=stdout"))
                .and_then(|l| l.split(' ').next()?.parse::<u32>().ok())
                .ok_or(())
        });
        let (pid, grandchild) = (child.pid(), grandchild.expect("grandchild pid"));
        assert!(is_running(pid) && is_running(grandchild));
        drop(child);
        assert!(!is_running(pid), "the child is reaped");
        WAIT.until_blocking(|| holds(!is_running(grandchild), "alive"))
            .unwrap_or_else(|_| panic!("grandchild {grandchild} survived"));
    }

    #[test]
    fn the_child_dies_with_its_parent_even_without_the_handle() {
        // The parent-death signal follows the forking thread: a thread that spawns, leaks the
        // handle (so no drop kills the child) and ends stands for polis-node dying.
        let pid = std::thread::spawn(|| {
            let mut cmd = Command::new("sleep");
            cmd.arg("300");
            let child = ChildProcess::spawn(cmd, "orphan-candidate", &quiet()).unwrap();
            let pid = child.pid();
            std::mem::forget(child);
            pid
        })
        .join()
        .unwrap();
        WAIT.until_blocking(|| holds(!is_running(pid), "alive"))
            .unwrap_or_else(|_| panic!("child {pid} outlived its parent"));
    }

    #[test]
    fn terminate_escalates_to_kill_after_the_grace_period() {
        let dir = tempfile::tempdir().unwrap();
        let trapped = dir.path().join("trapped");
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap '' TERM; touch \"$1\"; while true; do sleep 0.05; done",
            "sh",
        ])
        .arg(&trapped);
        let child = ChildProcess::spawn(cmd, "stubborn", &quiet()).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        // SIGTERM must arrive once the trap ignores it, which the shell tells by the file.
        WAIT.until_blocking(|| holds(trapped.exists(), "no trap"))
            .expect("the shell never installed its trap");
        let status = rt.block_on(child.terminate(Duration::from_millis(200)));
        assert_eq!(status.signal(), Some(9));
    }

    #[test]
    fn a_missing_program_is_a_typed_error() {
        let err = ChildProcess::spawn(Command::new("/nonexistent/etcd"), "etcd", &quiet())
            .err()
            .unwrap();
        assert!(
            err.to_string()
                .starts_with("cannot start /nonexistent/etcd"),
            "{err}"
        );
    }

    type Lines = Arc<Mutex<Vec<String>>>;

    fn capture() -> (Lines, Logger) {
        let lines = Lines::default();
        (lines.clone(), Logger::root(Capture(lines), slog::o!()))
    }

    fn lines(l: &Lines) -> Vec<String> {
        lock(l).clone()
    }

    /// A drain that keeps only the message and record keys, for asserting on output lines.
    struct Capture(Lines);
    impl slog::Drain for Capture {
        type Ok = ();
        type Err = slog::Never;
        fn log(&self, r: &slog::Record<'_>, _: &slog::OwnedKVList) -> Result<(), slog::Never> {
            let mut line = r.msg().to_string();
            let mut kv = KvOnly(&mut line);
            let _ = slog::KV::serialize(&r.kv(), r, &mut kv);
            lock(&self.0).push(line);
            Ok(())
        }
    }
    struct KvOnly<'a>(&'a mut String);
    impl slog::Serializer for KvOnly<'_> {
        fn emit_arguments(&mut self, k: slog::Key, v: &std::fmt::Arguments<'_>) -> slog::Result {
            use std::fmt::Write;
            let _ = write!(self.0, " {k}={v}");
            Ok(())
        }
    }
}
