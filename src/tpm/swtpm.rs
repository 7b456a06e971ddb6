//! A software TPM (`swtpm`) as a supervised child process: the TPM of tests and of the local
//! cluster launcher. Its state directory plays the part of the TPM chip, so a node restarted with
//! the same directory finds its seeds, and therefore its sealed data, again.

use std::collections::HashSet;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use slog::Logger;

use crate::poll::{holds, Poll};
use crate::process::{ChildProcess, ProcessError};

/// Why a software TPM did not start.
#[derive(Debug, thiserror::Error)]
pub enum SwtpmError {
    /// The process could not be started.
    #[error(transparent)]
    Spawn(#[from] ProcessError),
    /// It started but never listened.
    #[error("swtpm with state {state} did not come up: {reason}")]
    NotReady {
        /// Its state directory.
        state: PathBuf,
        /// Why it is considered failed.
        reason: String,
    },
}

/// A running software TPM on loopback.
pub struct Swtpm {
    process: ChildProcess,
    port: u16,
}

impl Swtpm {
    /// Start swtpm with its state in `state_dir` (created if missing), logging to `log`.
    pub fn start(state_dir: &Path, log: &Logger) -> Result<Swtpm, SwtpmError> {
        std::fs::create_dir_all(state_dir).map_err(|e| SwtpmError::NotReady {
            state: state_dir.to_owned(),
            reason: format!("cannot create the state directory: {e}"),
        })?;
        // Free ports can be taken between the probe and swtpm's bind; try a few pairs.
        let mut last = String::new();
        for _ in 0..5 {
            // The swtpm TCTI finds the control channel at the server port + 1.
            let Some(port) = free_port_pair() else {
                last = "no two consecutive free ports on loopback".into();
                continue;
            };
            let ctrl = port + 1;
            let mut cmd = Command::new("swtpm");
            cmd.arg("socket")
                .arg("--tpm2")
                .arg("--server")
                .arg(format!("type=tcp,port={port},bindaddr=127.0.0.1"))
                .arg("--ctrl")
                .arg(format!("type=tcp,port={ctrl},bindaddr=127.0.0.1"))
                .arg("--tpmstate")
                .arg(format!("dir={}", state_dir.display()))
                .args(["--flags", "not-need-init,startup-clear"]);
            let process = ChildProcess::spawn(cmd, "swtpm", log)?;
            // A connection would prove only that someone listens: a swtpm started in parallel
            // can hold a port of this pair, and this one then exits, its ports someone else's.
            let probe = || listens_on(process.pid(), &[port, ctrl]);
            match wait_ready(&process, probe) {
                Ok(()) => return Ok(Swtpm { process, port }),
                Err(reason) => last = reason,
            }
        }
        Err(SwtpmError::NotReady {
            state: state_dir.to_owned(),
            reason: last,
        })
    }

    /// The TCTI configuration that reaches it.
    pub fn tcti(&self) -> String {
        format!("swtpm:host=127.0.0.1,port={}", self.port)
    }

    /// Its process ID.
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Start swtpm as a VM's TPM: state in `state_dir`, reached by QEMU's `tpm-emulator` through
    /// the control socket `socket` (QEMU initializes it, as firmware would a chip).
    pub fn start_for_vm(
        state_dir: &Path,
        socket: &Path,
        log: &Logger,
    ) -> Result<ChildProcess, SwtpmError> {
        let not_ready = |reason: String| SwtpmError::NotReady {
            state: state_dir.to_owned(),
            reason,
        };
        std::fs::create_dir_all(state_dir)
            .map_err(|e| not_ready(format!("cannot create the state directory: {e}")))?;
        let _ = std::fs::remove_file(socket);
        let mut cmd = Command::new("swtpm");
        cmd.arg("socket")
            .arg("--tpm2")
            .arg("--tpmstate")
            .arg(format!("dir={}", state_dir.display()))
            .arg("--ctrl")
            .arg(format!("type=unixio,path={}", socket.display()))
            .arg("--log")
            .arg(format!(
                "level=2,file={}",
                state_dir.with_extension("log").display()
            ));
        let process = ChildProcess::spawn(cmd, "swtpm", log)?;
        wait_ready(&process, || socket.exists()).map_err(not_ready)?;
        Ok(process)
    }
}

/// A free loopback port whose successor is free too.
fn free_port_pair() -> Option<u16> {
    (0..20).find_map(|_| {
        let first = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).ok()?;
        let port = first.local_addr().ok()?.port();
        let next = port.checked_add(1)?;
        TcpListener::bind((Ipv4Addr::LOCALHOST, next))
            .ok()
            .map(|_| port)
    })
}

/// Whether process `pid` itself listens on every one of `ports` on 127.0.0.1: its socket inodes
/// (`/proc/PID/fd`) against the listening sockets of its network namespace (`/proc/PID/net/tcp`).
fn listens_on(pid: u32, ports: &[u16]) -> bool {
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    let sockets: HashSet<String> = fds
        .flatten()
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?;
            let inode = target
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?;
            Some(inode.to_owned())
        })
        .collect();
    let Ok(table) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    // Columns: slot, local address, remote, state (0A: listening), ..., inode. An address is
    // the hex of its network-order bytes read as a native integer, then `:` and the port's hex.
    let loopback = u32::from_ne_bytes(Ipv4Addr::LOCALHOST.octets());
    let listening: Vec<(&str, &str)> = table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            (columns.get(3) == Some(&"0A")).then_some((*columns.get(1)?, *columns.get(9)?))
        })
        .collect();
    ports.iter().all(|port| {
        let local = format!("{loopback:08X}:{port:04X}");
        listening
            .iter()
            .any(|(address, inode)| *address == local && sockets.contains(*inode))
    })
}

/// Wait until `ready` says so, or the process exits, or 10 s pass.
fn wait_ready(process: &ChildProcess, ready: impl Fn() -> bool) -> Result<(), String> {
    let mut exited = None;
    Poll::new(Duration::from_millis(20), Duration::from_secs(10))
        .until_blocking(|| {
            exited = process.exit_status();
            holds(exited.is_some() || ready(), "")
        })
        .map_err(|_| "it did not listen within 10 s".to_owned())?;
    match exited {
        Some(status) => Err(format!("it exited with {status}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_counts_as_listened_on_only_by_its_owner() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        assert!(listens_on(std::process::id(), &[port]));
        let mut other = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let foreign = listens_on(other.id(), &[port]);
        other.kill().unwrap();
        other.wait().unwrap();
        assert!(!foreign, "another process's port was taken for the child's");
        drop(listener);
        assert!(!listens_on(std::process::id(), &[port]));
    }
}
