//! The test hook behind `polis-node --test-crash-after NAME`: the process kills itself
//! (SIGKILL) right after the step NAME, as a power cut there would, so that tests can prove
//! every step of every flow resumable. Process-wide, because a crash is: the lifecycle, the
//! Curator's role change and the decommission reconciler all pass their points here.
//!
//! Points are named `flow:step`: `bootstrap:*` and `register:*` (enrolment), `join:*`,
//! `role:*` (a node becoming a consensus member), `curator:learner-added` (the Curator added a
//! learner to etcd but has not recorded the role), `decommission:revoked` and
//! `decommission:member-removed` (the reconciler's steps).

use std::sync::OnceLock;

/// The armed point, if any; set once at start.
static ARMED: OnceLock<String> = OnceLock::new();

/// Arm the hook at `name` (once per process; a second call is ignored).
pub fn arm(name: String) {
    let _ = ARMED.set(name);
}

/// The step `name` is done: if the hook is armed there, die now.
pub fn pass(log: &slog::Logger, name: &str) {
    if ARMED.get().map(String::as_str) == Some(name) {
        slog::crit!(log, "test hook: killing this process"; "after" => name);
        let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::SIGKILL);
    }
}
