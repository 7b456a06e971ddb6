//! The end of a machine's life as Polis sees it: once the node's tree has stopped, init ends what
//! is left, syncs, unmounts the data partition, closes its LUKS mapping, unmounts the ESP and
//! powers off or reboots. It never returns: process 1 must not exit.

use std::time::{Duration, Instant};

use nix::sys::reboot::{reboot, RebootMode};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::OnStop;
use crate::storage::{close_data_partition, NodeRoot};

/// How long processes left after the tree get between SIGTERM and SIGKILL.
const GRACE: Duration = Duration::from_secs(3);
/// How long a failure's reason stays on the console before the machine reboots.
const REASON_PAUSE: Duration = Duration::from_secs(5);

/// Halt the machine after the node stopped: `failure` is why it stopped if it was not asked to.
pub fn halt(log: &slog::Logger, failure: Option<String>, on_stop: OnStop, root: &NodeRoot) -> ! {
    if let Some(reason) = &failure {
        slog::crit!(log, "the node failed; the machine will {}", verb(on_stop); "reason" => reason);
        std::thread::sleep(REASON_PAUSE);
    }
    end_the_rest(log);
    nix::unistd::sync();
    let closed = std::panic::catch_unwind(|| close_data_partition(root));
    match closed {
        Ok(Ok(())) => slog::info!(log, "data partition unmounted and its mapping closed"),
        Ok(Err(e)) => slog::error!(log, "cannot close the data partition"; "error" => %e),
        Err(_) => slog::error!(log, "closing the data partition panicked (logged above)"),
    }
    for (what, path) in [
        ("ephemeral", root.ephemeral()),
        ("ESP", root.path().join("esp")),
    ] {
        match nix::mount::umount(&path) {
            Ok(()) => slog::info!(log, "unmounted"; "what" => what, "path" => %path.display()),
            Err(nix::errno::Errno::EINVAL) => {}
            Err(e) => {
                slog::error!(log, "cannot unmount"; "what" => what, "path" => %path.display(), "error" => %e)
            }
        }
    }
    nix::unistd::sync();
    slog::info!(log, "the machine will {} now", verb(on_stop));
    let mode = match on_stop {
        OnStop::Poweroff => RebootMode::RB_POWER_OFF,
        OnStop::Reboot => RebootMode::RB_AUTOBOOT,
    };
    let err = reboot(mode).err();
    slog::crit!(log, "the kernel refused to {}; waiting forever", verb(on_stop); "error" => ?err);
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn verb(on_stop: OnStop) -> &'static str {
    match on_stop {
        OnStop::Poweroff => "power off",
        OnStop::Reboot => "reboot",
    }
}

/// SIGTERM to every process but init, then SIGKILL to those still there after [`GRACE`].
fn end_the_rest(log: &slog::Logger) {
    let everyone = Pid::from_raw(-1);
    if user_processes() == 0 {
        return;
    }
    let _ = kill(everyone, Signal::SIGTERM);
    let deadline = Instant::now() + GRACE;
    while Instant::now() < deadline {
        if user_processes() == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    slog::warn!(log, "processes outlived the node's stop; killing them"; "count" => user_processes());
    let _ = kill(everyone, Signal::SIGKILL);
    std::thread::sleep(Duration::from_millis(200));
}

/// How many processes other than init are alive: kernel threads (and zombies, which the reaper
/// takes) have an empty command line. `kill(-1, 0)` cannot tell, as it counts kernel threads.
fn user_processes() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != 1)
        .filter(|pid| std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| !c.is_empty()))
        .count()
}
