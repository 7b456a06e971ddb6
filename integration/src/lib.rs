//! Harness for multi-node tests of Polis: entering a node's network namespace from a test thread.

use std::fs::File;

use nix::sched::{setns, CloneFlags};

/// Move the calling thread into the network namespace `namespace` (made by `ip netns add`).
/// Only this thread moves; use a thread of its own.
pub fn enter_netns(namespace: &str) -> std::io::Result<()> {
    let file = File::open(format!("/var/run/netns/{namespace}"))?;
    setns(file, CloneFlags::CLONE_NEWNET).map_err(std::io::Error::from)
}
