//! The local cluster commands: `launch` (which runs until stopped), `stop`, and the owner's calls
//! against a launched cluster, from the files `launch` leaves in its directory.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use polis::clusters::{Cluster, Clusters, ClustersError};
use polis::debug_client::read_token;
use polis::fsutil::{self, FsError, PUBLIC_MODE};
use polis::launch::{LaunchError, LocalCluster, Machines};
use polis::netns::NetError;
use polis::owner::OwnerError;
use polis::poll::{holds, Poll};
use polis::process;
use polis::vm::{build_initramfs, ImageError, Kernel};

/// Why a cluster command failed.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error(transparent)]
    Owner(#[from] OwnerError),
    #[error(transparent)]
    Fs(#[from] FsError),
    #[error(transparent)]
    Net(#[from] NetError),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error(transparent)]
    Bench(#[from] polis::bench::BenchError),
    #[error(transparent)]
    Clusters(#[from] ClustersError),
    #[error("{0}")]
    Usage(String),
    /// The launcher did not end after `polisctl stop` asked it to.
    #[error("the launcher (PID {pid}) has not stopped within {} s", STOP_PATIENCE.as_secs())]
    NotStopped { pid: i32 },
}

/// The launched nodes, in the cluster's directory.
pub const NODES_FILE: &str = "nodes.json";
const LAUNCHER_PID: &str = "launcher.pid";
/// How long `polisctl stop` waits for the launcher, which powers its nodes off in order.
const STOP_PATIENCE: Duration = Duration::from_secs(600);

/// Launch `n` nodes (processes, or VMs if `vm`) under `dir`, `consensus` of them consensus
/// members, print them, and run until SIGTERM or SIGINT.
pub fn launch(dir: &Path, n: usize, consensus: usize, vm: bool) -> Result<(), ClusterError> {
    if consensus == 0 || consensus > n {
        return Err(ClusterError::Usage(format!(
            "--consensus {consensus} must be between 1 and --nodes {n}"
        )));
    }
    let binary = fresh_dir(dir, n)?;
    let began = std::time::Instant::now();
    let log = polis_actors::terminal_logger(slog::Level::Info);
    let machines = match vm {
        false => Machines::Processes { binary },
        true => {
            let kernel = Kernel::installed()?;
            let initramfs = dir.join("initramfs.cpio.gz");
            eprintln!(
                "polisctl: building the VM image: {} and {} (polis-node as /init)",
                kernel.image.display(),
                initramfs.display()
            );
            build_initramfs(&binary, &kernel, &initramfs)?;
            Machines::Vms {
                kernel: kernel.image,
                initramfs,
            }
        }
    };
    let runtime = runtime(dir)?;
    runtime.block_on(async {
        eprintln!(
            "polisctl: creating the network and {n} node {} under {}",
            if vm { "VMs (QEMU, TCG)" } else { "namespaces" },
            dir.display()
        );
        let mut cluster = LocalCluster::create_with(dir, n, machines, log)?;
        eprintln!(
            "polisctl: bootstrapping node 0, taking ownership, registering, approving and \
             promoting nodes 1..{consensus} one at a time, then registering and approving {} \
             workers at once",
            n - consensus
        );
        let owner = cluster.bring_up(consensus, n - consensus).await?;
        let entries: Vec<serde_json::Value> = cluster
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                serde_json::json!({
                    "index": i,
                    "namespace": node.namespace,
                    "address": node.address.to_string(),
                    "id": node.id(),
                    "root": node.root.path(),
                    "log": node.log_file(),
                    "debug_socket": node.debug_socket(),
                })
            })
            .collect();
        let text = serde_json::to_string_pretty(&entries).unwrap_or_default();
        fsutil::write_atomic(&dir.join(NODES_FILE), text.as_bytes(), PUBLIC_MODE)?;
        crate::owner::print_nodes(&owner.clone().nodes().await?, false);
        eprintln!(
            "polisctl: {n} nodes ({consensus} consensus members) up in {:.1} s",
            began.elapsed().as_secs_f64()
        );
        if !vm {
            // Only a convenience: the cluster runs without it.
            if let Err(e) = remember(dir, &cluster, consensus) {
                eprintln!("polisctl: the cluster is not named in the clusters file: {e}");
            }
        }
        let pid = std::process::id().to_string();
        fsutil::write_atomic(&dir.join(LAUNCHER_PID), pid.as_bytes(), PUBLIC_MODE)?;
        eprintln!(
            "polisctl: cluster running; try `polisctl nodes`, `polisctl tree 1`; \
             `polisctl stop` (or Ctrl-C) stops it"
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| FsError::new("handle SIGTERM for", dir, e))?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!("polisctl: stopping the cluster");
        drop(cluster);
        let _ = std::fs::remove_file(dir.join(LAUNCHER_PID));
        Ok::<(), ClusterError>(())
    })
}

/// Name the launched cluster `local` in the clusters file, made current: its consensus members
/// as endpoints (reached through the bridge from the root namespace), `dir` as credentials. Then
/// the owner's commands reach it with `--cluster local` from anywhere on this machine.
fn remember(dir: &Path, cluster: &LocalCluster, consensus: usize) -> Result<(), ClusterError> {
    let path = Clusters::path()?;
    let mut clusters = Clusters::load(&path)?;
    let endpoints = cluster.nodes[..consensus]
        .iter()
        .map(|node| node.address.to_string())
        .collect();
    clusters.set_current(
        "local",
        Cluster {
            endpoints,
            credentials: dir.to_owned(),
        },
    );
    clusters.save(&path)?;
    eprintln!("polisctl: the cluster is `local` in {}", path.display());
    Ok(())
}

/// Run the benchmark suite under `dir`; progress on stderr, the report (a table, or JSON) on
/// stdout.
pub fn bench(dir: &Path, rounds: usize, launch: &[usize], json: bool) -> Result<(), ClusterError> {
    let binary = fresh_dir(dir, 1)?;
    let config = polis::bench::BenchConfig {
        dir: dir.to_owned(),
        binary,
        rounds,
        launch_sizes: launch.iter().copied().filter(|n| *n > 0).collect(),
    };
    let report = runtime(dir)?.block_on(polis::bench::run(&config, |line| {
        eprintln!("bench: {line}")
    }))?;
    match json {
        true => println!("{}", report.json()),
        false => print!("{}", report.table()),
    }
    Ok(())
}

/// Launch `nodes` consensus members and a spare slot under `dir`, and soak them with `config`;
/// prints progress on stderr and the report (a table, or JSON) on stdout. Answers the number
/// of violations.
pub fn chaos(
    dir: &Path,
    nodes: usize,
    config: &polis::chaos::ChaosConfig,
    json: bool,
) -> Result<usize, ClusterError> {
    with_fresh_cluster(dir, nodes, 1, async |cluster| {
        eprintln!(
            "polisctl: soaking with seed {}: {} faults",
            config.seed, config.kills
        );
        let report = polis::chaos::soak(cluster, config, |line| eprintln!("chaos: {line}")).await;
        match json {
            true => println!("{}", report.json()),
            false => print!("{}", report.table()),
        }
        report.violations()
    })
}

/// Launch `nodes` consensus members under `dir` and lose one per round, `rounds` times; prints
/// progress on stderr and the times on stdout. Answers whether every round failed over.
pub fn failover(dir: &Path, nodes: usize, rounds: usize, json: bool) -> Result<bool, ClusterError> {
    with_fresh_cluster(dir, nodes, 0, async |cluster| {
        let report =
            polis::chaos::failover(cluster, rounds, |line| eprintln!("failover: {line}")).await;
        match json {
            true => println!("{}", report.json()),
            false => print!("{}", report.table()),
        }
        report.failure.is_none()
    })
}

/// Launch `members` consensus members and `spare` empty slots under `dir` (replacing what is
/// there), run `work` against them on a two-thread runtime (a workload runs beside the work's
/// own blocking steps), and stop them.
fn with_fresh_cluster<T>(
    dir: &Path,
    members: usize,
    spare: usize,
    work: impl AsyncFnOnce(&mut LocalCluster) -> T,
) -> Result<T, ClusterError> {
    let binary = fresh_dir(dir, members)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| FsError::new("start a runtime for", dir, e))?;
    let log = polis_actors::terminal_logger(slog::Level::Warning);
    runtime.block_on(async {
        eprintln!(
            "polisctl: launching {members} consensus members and {spare} spare slots under {}",
            dir.display()
        );
        let mut cluster = LocalCluster::create(dir, members + spare, &binary, log)?;
        cluster.bring_up(members, 0).await?;
        Ok(work(&mut cluster).await)
    })
}

/// Make `dir` empty for a new cluster of `n` nodes, unless a launcher runs from it; answers the
/// `polis-node` binary beside this `polisctl`.
fn fresh_dir(dir: &Path, n: usize) -> Result<std::path::PathBuf, ClusterError> {
    if n == 0 {
        return Err(ClusterError::Usage(
            "a cluster needs at least one node".into(),
        ));
    }
    if dir.join(LAUNCHER_PID).exists() {
        return Err(ClusterError::Usage(format!(
            "a cluster may be running from {} already; `polisctl stop --dir {}` first",
            dir.display(),
            dir.display()
        )));
    }
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).map_err(|e| FsError::new("create", dir, e))?;
    Ok(std::env::current_exe()
        .map_err(|e| FsError::new("find", Path::new("polisctl"), e))?
        .with_file_name("polis-node"))
}

/// The runtime a command runs its async work on.
pub fn runtime(dir: &Path) -> Result<tokio::runtime::Runtime, ClusterError> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| FsError::new("start a runtime for", dir, e))?)
}

/// Stop the launcher running from `dir` and wait for it to clean up.
pub fn stop(dir: &Path) -> Result<(), ClusterError> {
    let path = dir.join(LAUNCHER_PID);
    let text = String::from_utf8_lossy(&fsutil::read(&path)?).into_owned();
    let pid: i32 = text
        .trim()
        .parse()
        .map_err(|_| ClusterError::Usage(format!("{} holds no PID", path.display())))?;
    let pid = Pid::from_raw(pid);
    if kill(pid, Signal::SIGTERM).is_err() {
        let _ = std::fs::remove_file(&path);
        return Err(ClusterError::Usage(format!(
            "no launcher runs as PID {pid}; removed {}",
            path.display()
        )));
    }
    // Not `kill(pid, 0)`: a launcher that ended but is not reaped yet still answers it.
    Poll::new(Duration::from_millis(100), STOP_PATIENCE)
        .until_blocking(|| holds(!process::is_running(pid.as_raw() as u32), "running"))
        .map_err(|_| ClusterError::NotStopped { pid: pid.as_raw() })?;
    eprintln!("polisctl: cluster stopped");
    Ok(())
}

/// Where node `n`'s debug endpoint is reached from, by the launch's node list.
pub enum DebugRoute {
    /// Its loopback, from inside its network namespace, with the token its root holds.
    Namespace(String, Option<String>),
    /// A VM's debug port, through QEMU's socket on the host.
    Port(std::path::PathBuf),
}

/// How to reach node `n`'s debug endpoint.
pub fn debug_route(dir: &Path, n: usize) -> Result<DebugRoute, ClusterError> {
    let nodes = launched(dir)?;
    let node = nodes.get(n).ok_or_else(|| {
        ClusterError::Usage(format!("the cluster in {} has no node {n}", dir.display()))
    })?;
    if let Some(socket) = node["debug_socket"].as_str() {
        return Ok(DebugRoute::Port(socket.into()));
    }
    let token = node["root"]
        .as_str()
        .and_then(|root| read_token(&polis::storage::NodeRoot::new(root)));
    node["namespace"]
        .as_str()
        .map(|ns| DebugRoute::Namespace(ns.to_owned(), token))
        .ok_or_else(|| ClusterError::Usage(format!("node {n} has no namespace in the node list")))
}

pub fn launched(dir: &Path) -> Result<Vec<serde_json::Value>, ClusterError> {
    let path = dir.join(NODES_FILE);
    serde_json::from_slice(&fsutil::read(&path)?)
        .map_err(|e| ClusterError::Usage(format!("{} is not a node list: {e}", path.display())))
}
