//! Harness for multi-node tests of Polis: the binary under test and the tests' logger.

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
