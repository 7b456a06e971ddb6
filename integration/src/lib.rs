//! Harness for multi-node tests of Polis: entering a node's network namespace from a test thread.

use std::fs::File;

use nix::sched::{setns, CloneFlags};

/// Move the calling thread into the network namespace `namespace` (made by `ip netns add`).
/// Only this thread moves; use a thread of its own.
pub fn enter_netns(namespace: &str) -> std::io::Result<()> {
    let file = File::open(format!("/var/run/netns/{namespace}"))?;
    setns(file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}

/// The `polis-node` binary that `cargo test --workspace` built beside this test's executable.
pub fn polis_node_binary() -> std::path::PathBuf {
    let exe = std::env::current_exe().expect("the test's own path");
    // target/<profile>/deps/<test> → target/<profile>/polis-node
    let binary = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|profile| profile.join("polis-node"))
        .expect("a target directory");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build --bins` (or `cargo test --workspace`) first",
        binary.display()
    );
    binary
}

/// A logger that writes to the test's standard error at info level.
pub fn test_logger() -> slog::Logger {
    polis_actors::terminal_logger(slog::Level::Info)
}
