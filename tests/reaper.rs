//! The reaper of process 1, in a process of its own (it must start before any other thread, as
//! `polis-node` starts it; so this test has its own `main`). The test process makes itself a
//! child subreaper, so orphans come to it as they come to init.
//!
//! Checked: every orphan is reaped (no zombie is left), and children that Polis waits for
//! itself still get their own exit status, not the reaper's.

use std::process::Command;
use std::time::Duration;

use polis::poll::Poll;
use polis::process::{reaper, run, ChildProcess, ProcessError};

fn zombie_children() -> Vec<u32> {
    let me = std::process::id().to_string();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let after = stat.rsplit_once(") ").map(|(_, rest)| rest).unwrap_or("");
            let fields: Vec<&str> = after.split_whitespace().collect();
            fields.first() == Some(&"Z") && fields.get(1) == Some(&me.as_str())
        })
        .collect()
}

fn main() {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    reaper::start(log.clone()).expect("the reaper starts");
    nix::sys::prctl::set_child_subreaper(true).expect("a child subreaper");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for round in 0..30 {
        // A short command that leaves an orphan behind: its own status must reach run().
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "sleep 0.05 & exit 3"]);
        match run(cmd) {
            Err(ProcessError::Failed { status, .. }) => {
                assert_eq!(status.code(), Some(3), "round {round}")
            }
            other => panic!("round {round}: run answered {other:?}"),
        }
        // A supervised child that exits at once: its waiter gets the status.
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "exit 7"]);
        let child = ChildProcess::spawn(cmd, "sh", &log).unwrap();
        let status = rt.block_on(child.exited());
        assert_eq!(status.code(), Some(7), "round {round}");
        // A successful command's output is kept.
        let mut cmd = Command::new("echo");
        cmd.arg("out");
        assert_eq!(run(cmd).unwrap().stdout, b"out\n");
    }
    // The orphans (`sleep 0.05`, re-parented to this process) are reaped by the reaper.
    Poll::new(Duration::from_millis(50), Duration::from_secs(30))
        .until_blocking(|| match zombie_children() {
            zombies if zombies.is_empty() => Ok(()),
            zombies => Err(zombies),
        })
        .unwrap_or_else(|zombies| panic!("zombies left: {zombies:?}"));
    println!("test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out");
}
