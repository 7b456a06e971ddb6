//! The local cluster commands: `launch` (which runs until stopped), `stop`, and the owner's calls
//! against a launched cluster, from the files `launch` leaves in its directory.

use std::path::Path;
use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use polis::debug_client::read_token;
use polis::fsutil::{self, FsError, PUBLIC_MODE};
use polis::launch::{read_owner_key, LaunchError, LocalCluster, Machines, CA_FILE};
use polis::netns::{within, NetError};
use polis::owner::{CuratorAddress, Owner, OwnerError};
use polis::pki::hex;
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
    #[error("{0}")]
    Usage(String),
    /// The launcher did not end after `polisctl stop` asked it to.
    #[error("the launcher (PID {pid}) has not stopped within {} s", STOP_PATIENCE.as_secs())]
    NotStopped { pid: i32 },
}

const NODES_FILE: &str = "nodes.json";
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
        print_nodes(&owner.clone().nodes().await?, false);
        eprintln!(
            "polisctl: {n} nodes ({consensus} consensus members) up in {:.1} s",
            began.elapsed().as_secs_f64()
        );
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
fn runtime(dir: &Path) -> Result<tokio::runtime::Runtime, ClusterError> {
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

fn launched(dir: &Path) -> Result<Vec<serde_json::Value>, ClusterError> {
    let path = dir.join(NODES_FILE);
    serde_json::from_slice(&fsutil::read(&path)?)
        .map_err(|e| ClusterError::Usage(format!("{} is not a node list: {e}", path.display())))
}

/// Run `call` as the owner against the first node that answers, from inside that node's
/// namespace (a VM's is the one with the bridge).
fn with_owner<T: Send>(
    dir: &Path,
    call: impl AsyncFn(&mut Owner) -> Result<T, OwnerError> + Sync,
) -> Result<T, ClusterError> {
    let key = read_owner_key(dir)?;
    let certificate = fsutil::read(&dir.join("owner.crt"))?;
    let ca = fsutil::read(&dir.join(CA_FILE))?;
    let mut last = ClusterError::Usage(format!("no node listed in {}", dir.display()));
    for node in launched(dir)? {
        let (Some(id), Some(address), Some(namespace)) = (
            node["id"].as_str(),
            node["address"].as_str().and_then(|a| a.parse().ok()),
            node["namespace"].as_str(),
        ) else {
            continue;
        };
        let curator = CuratorAddress {
            node_id: id.to_owned(),
            address,
        };
        let answer = within(namespace, || {
            runtime(dir)?.block_on(async {
                let mut owner = Owner::connect(&curator, &ca, &key, certificate.clone()).await?;
                Ok::<_, ClusterError>(call(&mut owner).await?)
            })
        })?;
        match answer {
            Ok(value) => return Ok(value),
            Err(e) => last = e,
        }
    }
    Err(last)
}

pub fn nodes(dir: &Path, json: bool) -> Result<(), ClusterError> {
    let nodes = with_owner(dir, async |owner| owner.nodes().await)?;
    print_nodes(&nodes, json);
    Ok(())
}

/// Print the register ticket, replacing it first if `rotate`.
pub fn ticket(dir: &Path, rotate: bool) -> Result<(), ClusterError> {
    let ticket = with_owner(dir, async |owner| match rotate {
        true => owner.rotate_ticket().await,
        false => owner.ticket().await,
    })?;
    println!("{}", hex(&ticket));
    Ok(())
}

pub fn approve(dir: &Path, pubkey: &str) -> Result<(), ClusterError> {
    let key = unhex(pubkey).ok_or_else(|| ClusterError::Usage(format!("{pubkey:?} is not hex")))?;
    with_owner(dir, async |owner| owner.approve(&key).await)
}

/// Decommission node `id` and wait until it is retired, saying what the cluster waits on.
pub fn decommission(dir: &Path, id: &str) -> Result<(), ClusterError> {
    with_owner(dir, async |owner| {
        owner.decommission(id).await?;
        owner
            .wait_retired(id, DECOMMISSION_PATIENCE, |waiting_on| {
                eprintln!("decommissioning {id}: waiting on {waiting_on}")
            })
            .await
    })?;
    eprintln!("{id} is decommissioned and retired");
    Ok(())
}

/// How long `polisctl decommission` waits for the retirement before saying what blocks it.
const DECOMMISSION_PATIENCE: std::time::Duration = std::time::Duration::from_secs(120);

fn unhex(s: &str) -> Option<Vec<u8>> {
    s.len()
        .is_multiple_of(2)
        .then(|| {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
                .collect()
        })
        .flatten()
}

fn print_nodes(nodes: &[polis::proto::api::Node], json: bool) {
    use polis::curator::records::state_name;
    if json {
        let list: Vec<serde_json::Value> = nodes
            .iter()
            .map(|n| {
                serde_json::json!({
                    "id": n.id,
                    "pubkey": hex(&n.pubkey),
                    "state": state_name(n.state),
                    "address": n.status.as_ref().map(|s| s.external_address.clone()),
                    "roles": held_roles(n),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(list));
        return;
    }
    let rows: Vec<[String; 4]> = nodes
        .iter()
        .map(|n| {
            let roles = held_roles(n);
            [
                n.id.clone(),
                state_name(n.state).to_owned(),
                n.status
                    .as_ref()
                    .map_or(String::new(), |s| s.external_address.clone()),
                match roles.is_empty() {
                    true => "-".to_owned(),
                    false => roles.join(","),
                },
            ]
        })
        .collect();
    let header = ["NODE", "STATE", "ADDRESS", "ROLES"].map(str::to_owned);
    print!("{}", crate::table::table(&header, &rows));
}

/// The roles node `n` holds: only an UP node holds any (a decommissioned node's record keeps the
/// roles it had, which it no longer holds).
fn held_roles(n: &polis::proto::api::Node) -> Vec<&'static str> {
    let up = n.state == polis::proto::common::NodeState::Up as i32;
    let roles = n.roles.as_ref().filter(|_| up);
    [
        (
            "consensus",
            roles.is_some_and(|r| r.consensus_member.is_some()),
        ),
        (
            "kubernetes-worker",
            roles.is_some_and(|r| r.kubernetes_worker.is_some()),
        ),
    ]
    .into_iter()
    .filter_map(|(name, held)| held.then_some(name))
    .collect()
}
