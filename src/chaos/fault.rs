//! The faults a soak injects, how one is drawn from the seed, and how it is done to a local
//! cluster's processes (by their real PIDs) or actors (through the debug endpoint).

use std::fmt;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::launch::LocalCluster;
use crate::poll::{holds, Poll};

/// How long a paused node stays paused.
pub const PAUSE: Duration = Duration::from_secs(3);

/// One fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// An actor panics, as a bug would (its supervisor restarts it).
    CrashActor {
        /// The node.
        node: usize,
        /// The actor's path.
        path: String,
    },
    /// An actor is stopped at once, without its cleanup.
    BrutalActor {
        /// The node.
        node: usize,
        /// The actor's path.
        path: String,
    },
    /// `kill -9` of a node's `polis-node` (its etcd dies with it); the machine reboots.
    KillNode(usize),
    /// `kill -9` of a consensus member's etcd.
    KillEtcd(usize),
    /// `kill -9` of a node's swtpm, which then comes back, as a TPM after a glitch.
    KillSwtpm(usize),
    /// SIGSTOP of a node's `polis-node` and etcd for `PAUSE`, then SIGCONT: a paused peer.
    Pause(usize),
    /// Every node's processes and TPM killed at once, then every machine booted again.
    PowerCut,
}

impl Fault {
    /// The fault's kind, as the report groups them.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::CrashActor { .. } => "actor crash",
            Fault::BrutalActor { .. } => "actor brutal kill",
            Fault::KillNode(_) => "kill -9 polis-node",
            Fault::KillEtcd(_) => "kill -9 etcd",
            Fault::KillSwtpm(_) => "kill -9 swtpm",
            Fault::Pause(_) => "pause (SIGSTOP 3 s)",
            Fault::PowerCut => "power cut",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Fault::CrashActor { node, path } | Fault::BrutalActor { node, path } => {
                write!(f, "{} of {path} on node {node}", self.kind())
            }
            Fault::KillNode(n) | Fault::KillEtcd(n) | Fault::KillSwtpm(n) | Fault::Pause(n) => {
                write!(f, "{} of node {n}", self.kind())
            }
            Fault::PowerCut => f.write_str("power cut of every node"),
        }
    }
}

/// A small seeded generator (SplitMix64): the same seed gives the same schedule.
pub struct Rng(u64);

impl Rng {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number below `n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}

/// Draw the next fault among `running` nodes (`members` among them run etcd); `actors(node)`
/// lists a node's healthy actors. Weights: actor faults most often, a power cut rarely.
pub fn draw(
    rng: &mut Rng,
    running: &[usize],
    members: &[usize],
    actors: impl Fn(usize) -> Vec<String>,
) -> Fault {
    let node = running[rng.below(running.len())];
    let roll = rng.below(100);
    let actor = |rng: &mut Rng| {
        let paths = actors(node);
        match paths.is_empty() {
            true => None,
            false => Some(paths[rng.below(paths.len())].clone()),
        }
    };
    match roll {
        0..=24 => match actor(rng) {
            Some(path) => Fault::CrashActor { node, path },
            None => Fault::KillNode(node),
        },
        25..=44 => match actor(rng) {
            Some(path) => Fault::BrutalActor { node, path },
            None => Fault::KillNode(node),
        },
        45..=59 => Fault::KillNode(node),
        60..=74 if !members.is_empty() => Fault::KillEtcd(members[rng.below(members.len())]),
        60..=74 => Fault::KillNode(node),
        75..=84 => Fault::KillSwtpm(node),
        85..=95 => Fault::Pause(node),
        _ => Fault::PowerCut,
    }
}

/// Do `fault` to `cluster`, and return once it has visibly happened (the actor's incarnation or
/// the etcd process has changed), so that no check sees the cluster as it was before. Nodes a
/// fault ends are not started here: the soak boots every node that should run and does not,
/// as a machine reboots.
pub async fn inject(cluster: &mut LocalCluster, fault: &Fault) -> Result<(), String> {
    match fault {
        Fault::CrashActor { node, path } => kill_actor(cluster, *node, path, "crash").await,
        Fault::BrutalActor { node, path } => kill_actor(cluster, *node, path, "brutal").await,
        Fault::KillNode(n) => {
            cluster.stop(*n, Signal::SIGKILL);
            Ok(())
        }
        Fault::KillEtcd(n) => {
            let etcd = || cluster.nodes[*n].pid().and_then(|p| child_named(p, "etcd"));
            if let Some(pid) = etcd() {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                observe(fault, || etcd() != Some(pid)).await?;
            }
            Ok(())
        }
        Fault::KillSwtpm(n) => {
            if let Some(pid) = cluster.swtpm_pid(*n) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            cluster.ensure_swtpm(*n).map_err(|e| e.to_string())
        }
        Fault::Pause(n) => {
            let pids = node_processes(cluster, *n);
            signal_all(&pids, Signal::SIGSTOP);
            tokio::time::sleep(PAUSE).await;
            signal_all(&pids, Signal::SIGCONT);
            Ok(())
        }
        Fault::PowerCut => {
            for n in 0..cluster.nodes.len() {
                let mut pids = node_processes(cluster, n);
                pids.extend(cluster.swtpm_pid(n));
                signal_all(&pids, Signal::SIGKILL);
                cluster.stop(n, Signal::SIGKILL);
            }
            // Booting them again (swtpm first) is the soak's recovery.
            Ok(())
        }
    }
}

/// Kill `path` on `node` by `how`, and wait until its incarnation has changed (or the node is
/// gone, as killing `/lifecycle` or exhausting the root's restarts makes it).
async fn kill_actor(
    cluster: &LocalCluster,
    node: usize,
    path: &str,
    how: &str,
) -> Result<(), String> {
    let generation = || -> Option<(u64, String)> {
        let tree = super::check::actors(cluster, node).ok()?;
        let actor = tree.iter().find(|a| a["path"] == path)?;
        Some((
            actor["generation"].as_u64()?,
            actor["state"].as_str()?.to_owned(),
        ))
    };
    let Some((before, _)) = generation() else {
        return Ok(());
    };
    let body = serde_json::json!({ "path": path, "how": how }).to_string();
    let _ = cluster.debug(node, "POST", "/debug/kill", &body);
    let fault = Fault::CrashActor {
        node,
        path: path.to_owned(),
    };
    observe(&fault, || {
        generation().is_none_or(|(g, state)| g > before || state != "healthy")
    })
    .await
}

/// Wait until `happened`, or fail naming `fault` as one that had no effect.
async fn observe(fault: &Fault, happened: impl Fn() -> bool) -> Result<(), String> {
    Poll::new(Duration::from_millis(50), Duration::from_secs(30))
        .until(async || holds(happened(), "no effect"))
        .await
        .map_err(|_| format!("{fault} had no visible effect within 30 s"))
}

/// A node's `polis-node` and its etcd, while they run.
fn node_processes(cluster: &LocalCluster, n: usize) -> Vec<i32> {
    let Some(pid) = cluster.nodes[n].pid() else {
        return Vec::new();
    };
    let mut pids = vec![pid];
    pids.extend(child_named(pid, "etcd"));
    pids
}

fn signal_all(pids: &[i32], signal: Signal) {
    for pid in pids {
        let _ = kill(Pid::from_raw(*pid), signal);
    }
}

/// The PID of `parent`'s child process whose command is `name`, from `/proc`.
pub fn child_named(parent: i32, name: &str) -> Option<i32> {
    let entries = std::fs::read_dir("/proc").ok()?;
    entries.flatten().find_map(|entry| {
        let pid: i32 = entry.file_name().to_str()?.parse().ok()?;
        let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
        // `pid (comm) state ppid …`: comm may hold spaces, so split after its closing paren.
        let (head, tail) = stat.rsplit_once(") ")?;
        let comm = head.split_once(" (")?.1;
        let ppid: i32 = tail.split_whitespace().nth(1)?.parse().ok()?;
        (ppid == parent && comm == name).then_some(pid)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_draws_the_same_schedule_and_another_seed_another() {
        let schedule = |seed| {
            let mut rng = Rng::new(seed);
            (0..50)
                .map(|_| draw(&mut rng, &[0, 1, 2], &[0, 1, 2], |_| vec!["/core".into()]))
                .collect::<Vec<_>>()
        };
        assert_eq!(schedule(7), schedule(7));
        assert_ne!(schedule(7), schedule(8));
        let kinds: std::collections::BTreeSet<_> = schedule(7).iter().map(Fault::kind).collect();
        assert!(kinds.len() >= 5, "50 draws cover most kinds: {kinds:?}");
    }

    #[test]
    fn a_child_is_found_by_its_command_name() {
        let mut child = std::process::Command::new("sleep")
            .arg("10")
            .spawn()
            .unwrap();
        let me = std::process::id() as i32;
        assert_eq!(child_named(me, "sleep"), Some(child.id() as i32));
        assert_eq!(child_named(me, "no-such-command"), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
