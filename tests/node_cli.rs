//! End to end through the real binaries: `polis-node` runs its tree and debug endpoint,
//! `polisctl` reads the tree, injects a fault and sees the recovery, and SIGTERM stops the node
//! cleanly.

mod common;

use std::process::{Child, Command, Output};
use std::time::Duration;

use polis::poll::{holds, Poll};

/// The lifecycle of these nodes waits for an address on an interface that does not exist, after
/// finding bootstrap parameters (written by [`with_parameters`]): the tree runs, nothing binds.
const WAITING_LIFECYCLE: [&str; 2] = ["--interface", "polis-none0"];

/// Give the node at `root` bootstrap parameters, so its lifecycle has a flow to start.
fn with_parameters(root: &std::path::Path) {
    use polis::proto::api::node_parameters::{Cluster, ClusterBootstrap};
    let esp = polis::storage::Esp::new(polis::storage::NodeRoot::new(root));
    esp.write_parameters(&polis::proto::api::NodeParameters {
        cluster: Some(Cluster::ClusterBootstrap(ClusterBootstrap {
            owner_public_key: vec![1; 32],
            ..Default::default()
        })),
        network: None,
    })
    .unwrap();
}

struct Node(Child);

impl Node {
    /// SIGTERM, then how it exited and what it wrote to standard error.
    fn terminate(&mut self) -> (std::process::ExitStatus, String) {
        let pid = nix::unistd::Pid::from_raw(self.0.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        let mut stderr = String::new();
        if let Some(err) = self.0.stderr.as_mut() {
            std::io::Read::read_to_string(err, &mut stderr).unwrap();
        }
        (self.0.wait().unwrap(), stderr)
    }
}

impl Drop for Node {
    /// Kill the node; when a test failed, show what the node wrote.
    fn drop(&mut self) {
        let _ = self.0.kill();
        if std::thread::panicking() {
            let mut stderr = String::new();
            if let Some(err) = self.0.stderr.as_mut() {
                let _ = std::io::Read::read_to_string(err, &mut stderr);
            }
            eprintln!("the node wrote:\n{stderr}");
        }
        let _ = self.0.wait();
    }
}

fn panic_logged_as_a_record(stderr: &str) -> bool {
    stderr.contains("CRIT panic")
        && stderr.contains("fault injection: crash of /core")
        && !stderr.contains("stack backtrace")
}

fn polisctl(debug: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_polisctl"))
        .arg("--debug")
        .arg(debug)
        .args(args)
        .output()
        .unwrap()
}

fn until(what: &str, mut cond: impl FnMut() -> bool) {
    Poll::new(Duration::from_millis(50), Duration::from_secs(60))
        .until_blocking(|| holds(cond(), what))
        .unwrap_or_else(|what| panic!("timed out waiting until {what}"));
}

fn tree_json(debug: &str) -> Vec<serde_json::Value> {
    let out = polisctl(debug, &["--output", "json", "tree"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn generation_of(debug: &str, path: &str) -> u64 {
    tree_json(debug)
        .iter()
        .find(|n| n["path"] == path)
        .and_then(|n| n["generation"].as_u64())
        .unwrap_or(0)
}

#[test]
fn node_serves_its_tree_recovers_from_a_kill_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    with_parameters(dir.path());
    let swtpm = polis::tpm::Swtpm::start(&dir.path().join("tpm"), &common::quiet()).unwrap();
    let root = dir.path().join("node");
    with_parameters(&root);
    let debug = format!("127.0.0.1:{}", common::free_port());
    let mut node = Node(
        Command::new(env!("CARGO_BIN_EXE_polis-node"))
            .args([
                "--debug-listen",
                &debug,
                "--log-level",
                "warning",
                "--tpm",
                &swtpm.tcti(),
            ])
            .args(WAITING_LIFECYCLE)
            .arg("--root")
            .arg(&root)
            .arg("--insecure-data-directory")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    until("the debug endpoint answers", || {
        polisctl(&debug, &["tree"]).status.success()
    });

    let human = String::from_utf8(polisctl(&debug, &["tree"]).stdout).unwrap();
    assert!(
        human
            .lines()
            .any(|l| l.trim_start().starts_with("core") && l.contains("healthy")),
        "{human}"
    );

    // A kill needs the node's debug token, which only the node's root directory holds.
    let kill = ["kill-actor", "/core", "--how", "crash"];
    let refused = polisctl(&debug, &kill);
    assert!(!refused.status.success());
    let said = String::from_utf8_lossy(&refused.stderr);
    assert!(said.contains("debug token"), "{said}");
    let root_arg = root.display().to_string();
    let out = polisctl(
        &debug,
        &[&["--node-root", root_arg.as_str()], &kill[..]].concat(),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    until("/core restarted", || generation_of(&debug, "/core") == 2);

    let logs = String::from_utf8(polisctl(&debug, &["logs", "/"]).stdout).unwrap();
    assert!(logs.contains("fault injection: crash of /core"), "{logs}");
    let metrics = String::from_utf8(polisctl(&debug, &["metrics"]).stdout).unwrap();
    assert!(
        metrics.contains("polis_actor_restarts_total{path=\"/core\",reason=\"panic\"} 1"),
        "{metrics}"
    );

    let out = polisctl(&debug, &["--node-root", &root_arg, "kill-actor", "/nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no actor at /nope"));

    let (status, stderr) = node.terminate();
    assert!(status.success(), "a clean stop exits 0, got {status}");
    assert!(panic_logged_as_a_record(&stderr), "{stderr}");
    let out = polisctl(&debug, &["tree"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach the debug endpoint"));
}

#[test]
fn node_refuses_a_debug_endpoint_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    with_parameters(dir.path());
    let out = Command::new(env!("CARGO_BIN_EXE_polis-node"))
        .args([
            "--debug-listen",
            "0.0.0.0:0",
            "--insecure-no-tpm",
            "--insecure-data-directory",
        ])
        .args(WAITING_LIFECYCLE)
        .arg("--root")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("only binds to loopback"));
}

#[test]
fn node_without_a_tpm_refuses_to_run_unless_told_to_be_insecure() {
    let dir = tempfile::tempdir().unwrap();
    with_parameters(dir.path());
    let tcti = format!("swtpm:host=127.0.0.1,port={}", common::free_port());
    let out = Command::new(env!("CARGO_BIN_EXE_polis-node"))
        .args([
            "--tpm",
            &tcti,
            "--insecure-data-directory",
            "--debug-listen",
            "127.0.0.1:0",
        ])
        .args(WAITING_LIFECYCLE)
        .arg("--root")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("the node did not start") && stderr.contains(&tcti),
        "{stderr}"
    );

    let debug = format!("127.0.0.1:{}", common::free_port());
    let mut node = Node(
        Command::new(env!("CARGO_BIN_EXE_polis-node"))
            .args([
                "--insecure-no-tpm",
                "--insecure-data-directory",
                "--debug-listen",
                &debug,
            ])
            .args(WAITING_LIFECYCLE)
            .arg("--root")
            .arg(dir.path())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    until("the insecure node answers", || {
        polisctl(&debug, &["tree"]).status.success()
    });
    let logs = String::from_utf8(polisctl(&debug, &["logs", "/core/tpm"]).stdout).unwrap();
    assert!(logs.contains("INSECURE: running without a TPM"), "{logs}");
    let (_, stderr) = node.terminate();
    assert!(
        stderr.contains("CRIT INSECURE: --insecure-no-tpm"),
        "{stderr}"
    );
}
