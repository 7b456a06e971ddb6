//! `polisctl bench`: Polis's performance, each figure against its floor measured in the same run
//! and interleaved with it, so that a shared machine's noise falls on both alike (issue 12).
//!
//! - P1 cold bootstrap: `polis-node` spawned → the owner holds a certificate from its Curator
//!   (Escrow's answer received; the launcher writes the node's parameters before and saves the
//!   owner's credentials after, untimed), against a bare etcd (the same command line) spawned
//!   → first put answered.
//! - P2 restart: the node stopped cleanly and started again → an owner call answered, against
//!   the bare etcd restarted from its data → first put.
//! - For both, Polis's overhead: its time minus its own etcd's spawn → first read
//!   (`polis_consensus_ready_seconds`), the part Polis controls (etcd's election delay is random);
//!   and the share of it a process start takes before the node's code runs (entering the node's
//!   namespaces, loading the binary: timed to `polis-node --version`'s exit).
//! - P5 registrations per second through the Curator (RegisterNode, ApproveNode, CommitNode of
//!   synthetic nodes over TLS), against the etcd reads and transactions they need issued
//!   straight to the same member, batch by batch; and a registration's p99 latency.
//! - P6 resident memory of an idle `polis-node` (its etcd and swtpm beside it, for scale).
//! - The TPM's share of P1 and P2: swtpm's first seal, seal and unseal against a command without
//!   a session.
//! - Launch time against N: a local cluster of N nodes (min(N, 3) consensus members) up.
//!
//! P3 (supervised against raw actix) and P4 (actor restart latency) are in-process and live in
//! `cargo bench -p polis-actors --bench mailbox`.

mod curator;
mod floor;
mod report;
mod tpm;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

pub use report::{Measure, Report};

use crate::fsutil::{off_thread, FsError};
use crate::launch::{LaunchError, LocalCluster};
use crate::metrics::sample;

/// What the suite runs.
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// Where the clusters and bare etcds live (replaced).
    pub dir: PathBuf,
    /// The `polis-node` binary.
    pub binary: PathBuf,
    /// Rounds of P1, P2 and P6 (each: bare etcd cold and restarted, a node cold and restarted).
    pub rounds: usize,
    /// Cluster sizes to launch.
    pub launch_sizes: Vec<usize>,
}

/// Why the suite could not finish.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// A local cluster failed to come up or to answer.
    #[error(transparent)]
    Launch(#[from] LaunchError),
    /// A bare etcd failed.
    #[error(transparent)]
    Consensus(#[from] crate::consensus::ConsensusError),
    /// A process could not be started.
    #[error(transparent)]
    Process(#[from] crate::process::ProcessError),
    /// A file could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A Curator refused a synthetic node's call.
    #[error("{call} refused: {status}")]
    Refused {
        /// The call.
        call: &'static str,
        /// What the Curator answered.
        status: tonic::Status,
    },
    /// An owner call failed.
    #[error(transparent)]
    Owner(#[from] crate::owner::OwnerError),
    /// No Curator could be reached.
    #[error(transparent)]
    Reach(#[from] crate::lifecycle::ReachError),
    /// A key could not be made.
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    /// The software TPM did not start.
    #[error(transparent)]
    Swtpm(#[from] crate::tpm::SwtpmError),
    /// A TPM operation failed.
    #[error(transparent)]
    Tpm(#[from] crate::tpm::TpmError),
    /// The PCR policy key could not be made or sign.
    #[error(transparent)]
    Policy(#[from] crate::tpm::policy::PolicyError),
    /// A node's metrics or /proc lack what the suite reads.
    #[error("node {node}: {what}")]
    Missing {
        /// The node's index.
        node: usize,
        /// What was missing.
        what: String,
    },
}

/// Run the suite; `progress` gets a line per step.
pub async fn run(config: &BenchConfig, progress: impl Fn(&str)) -> Result<Report, BenchError> {
    let log = slog::Logger::root(slog::Discard, slog::o!());
    let _ = std::fs::remove_dir_all(&config.dir);
    std::fs::create_dir_all(&config.dir).map_err(|e| FsError::new("create", &config.dir, e))?;
    let mut samples = Samples::default();
    for round in 0..config.rounds {
        // Which goes first alternates, so that neither always meets a warmer machine.
        let (etcd, node) = match round % 2 {
            0 => {
                let etcd = floor::etcd_starts(&config.dir.join("etcd"), &log).await?;
                (etcd, node_starts(config, &log).await?)
            }
            _ => {
                let node = node_starts(config, &log).await?;
                (
                    floor::etcd_starts(&config.dir.join("etcd"), &log).await?,
                    node,
                )
            }
        };
        progress(&format!(
            "round {}/{}: cold {:.0} ms (etcd {:.0} ms), restart {:.0} ms (etcd {:.0} ms)",
            round + 1,
            config.rounds,
            ms(node.cold),
            ms(etcd.cold),
            ms(node.restart),
            ms(etcd.restart)
        ));
        samples.add(etcd, node);
    }
    progress(&format!(
        "P5: {} batches of {} registrations through the Curator, interleaved with etcd",
        config.rounds,
        curator::PER_BATCH
    ));
    let throughput = curator_throughput(config, &log, &progress).await?;
    progress(&format!(
        "TPM: {} rounds of swtpm operations",
        config.rounds
    ));
    // The TPM's commands block: they run off the event loop, as the node's sealer runs them.
    let (dir, rounds, tpm_log) = (config.dir.clone(), config.rounds, log.clone());
    let tpm = off_thread(&config.dir, move || tpm::operations(&dir, rounds, &tpm_log)).await?;
    let mut launches = Vec::new();
    for &n in &config.launch_sizes {
        let took = launch(config, n, &log).await?;
        progress(&format!("launch of {n} nodes: {:.1} s", took.as_secs_f64()));
        launches.push((n, took));
    }
    Ok(samples.report(throughput, tpm, launches))
}

/// P5 on a one-node cluster of its own.
async fn curator_throughput(
    config: &BenchConfig,
    log: &slog::Logger,
    progress: &impl Fn(&str),
) -> Result<curator::Throughput, BenchError> {
    let dir = config.dir.join("curator");
    std::fs::create_dir_all(&dir).map_err(|e| FsError::new("create", &dir, e))?;
    let mut cluster = LocalCluster::create(&dir, 1, &config.binary, log.clone())?;
    let owner = cluster.bootstrap().await?;
    let throughput = curator::registrations(&cluster, &owner, config.rounds, progress).await;
    let throughput = match throughput {
        Ok(mut t) => curator_means(&cluster).map(|inside| {
            t.inside = inside;
            t
        }),
        Err(e) => Err(e),
    };
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    throughput
}

/// The mean time node 0's Curator spent inside each of [`curator::CALLS`], from its
/// `grpc_server_handling_seconds` sum and count: what the bench's timings of the same calls
/// spent outside it is transport (TLS, HTTP/2, the network namespace's veth).
fn curator_means(cluster: &LocalCluster) -> Result<Vec<f64>, BenchError> {
    let text = cluster.debug(0, "GET", "/metrics", "")?;
    curator::CALLS
        .iter()
        .map(|(service, method)| {
            let labels = format!("{{grpc_service=\"{service}\",grpc_method=\"{method}\"}}");
            let sum = sample(&text, &format!("grpc_server_handling_seconds_sum{labels}"));
            let count = sample(
                &text,
                &format!("grpc_server_handling_seconds_count{labels}"),
            );
            match (sum, count) {
                (Some(sum), Some(count)) if count > 0.0 => Ok(sum / count),
                _ => Err(BenchError::Missing {
                    node: 0,
                    what: format!("no grpc_server_handling_seconds for {method}"),
                }),
            }
        })
        .collect()
}

/// One node's start times, its etcd's share of each, and its memory once idle.
#[derive(Clone, Copy, Debug)]
struct NodeStarts {
    cold: Duration,
    cold_etcd: Duration,
    restart: Duration,
    restart_etcd: Duration,
    /// A process start to `polis-node --version`'s exit: the share of `cold` and `restart`
    /// before the node's own code runs.
    process_start: Duration,
    rss: Rss,
}

/// Resident memory, bytes.
#[derive(Clone, Copy, Debug)]
struct Rss {
    node: f64,
    etcd: f64,
    swtpm: f64,
}

/// How long an idle node is left before its memory is read.
const IDLE: Duration = Duration::from_secs(3);

/// Bootstrap a one-node cluster, stop it cleanly, start it again; time both starts closely.
async fn node_starts(config: &BenchConfig, log: &slog::Logger) -> Result<NodeStarts, BenchError> {
    let dir = config.dir.join("node");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| FsError::new("create", &dir, e))?;
    let mut cluster = LocalCluster::create(&dir, 1, &config.binary, log.clone())?;
    cluster.poll_every(Duration::from_millis(2));
    cluster.ensure_swtpm(0)?;
    // The launcher's own files (the parameters before, the owner's credentials after) are
    // outside the time, as a bare etcd's command line is outside the floor's.
    cluster.write_bootstrap_parameters()?;
    let began = Instant::now();
    cluster.start(0, &[])?;
    let credentials = cluster.meet_owner().await?;
    let cold = began.elapsed();
    credentials.save(cluster.dir()).map_err(LaunchError::from)?;
    let cold_etcd = etcd_ready(&cluster)?;
    cluster.stop(0, Signal::SIGTERM);
    let process_start = cluster.process_start(0)?;
    let began = Instant::now();
    cluster.start(0, &[])?;
    cluster
        .until(0, "answer the owner after a restart", || async {
            cluster.owner(0).await.ok()?.nodes().await.ok()
        })
        .await?;
    let restart = began.elapsed();
    let restart_etcd = etcd_ready(&cluster)?;
    tokio::time::sleep(IDLE).await;
    let rss = rss_of(&cluster)?;
    Ok(NodeStarts {
        cold,
        cold_etcd,
        restart,
        restart_etcd,
        process_start,
        rss,
    })
}

/// Node 0's etcd spawn → first read, from its metrics.
fn etcd_ready(cluster: &LocalCluster) -> Result<Duration, BenchError> {
    let text = cluster.debug(0, "GET", "/metrics", "")?;
    let secs =
        sample(&text, "polis_consensus_ready_seconds").ok_or_else(|| BenchError::Missing {
            node: 0,
            what: "no polis_consensus_ready_seconds in its metrics".into(),
        })?;
    Ok(Duration::from_secs_f64(secs))
}

/// Node 0's resident memory, and its etcd's and swtpm's.
fn rss_of(cluster: &LocalCluster) -> Result<Rss, BenchError> {
    let missing = |what: &str| BenchError::Missing {
        node: 0,
        what: what.to_owned(),
    };
    let node = cluster.nodes[0]
        .pid()
        .ok_or_else(|| missing("no node.pid"))?;
    let etcd = children(node)
        .into_iter()
        .find(|pid| comm(*pid).as_deref() == Some("etcd"))
        .ok_or_else(|| missing("no etcd child"))?;
    let swtpm = cluster
        .swtpm_pid(0)
        .ok_or_else(|| missing("no swtpm.pid"))?;
    let read = |pid: i32| {
        crate::metrics::process::resident_memory_bytes(pid)
            .ok_or_else(|| missing(&format!("no resident memory in /proc/{pid}/stat")))
    };
    Ok(Rss {
        node: read(node)?,
        etcd: read(etcd)?,
        swtpm: read(swtpm)?,
    })
}

fn children(pid: i32) -> Vec<i32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

fn comm(pid: i32) -> Option<String> {
    Some(
        std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .ok()?
            .trim()
            .to_owned(),
    )
}

/// Launch `n` nodes (min(n, 3) consensus members) and time it until every one is UP.
async fn launch(
    config: &BenchConfig,
    n: usize,
    log: &slog::Logger,
) -> Result<Duration, BenchError> {
    let dir = config.dir.join(format!("launch{n}"));
    std::fs::create_dir_all(&dir).map_err(|e| FsError::new("create", &dir, e))?;
    let began = Instant::now();
    let mut cluster = LocalCluster::create(&dir, n, &config.binary, log.clone())?;
    let consensus = n.min(3);
    cluster.bring_up(consensus, n - consensus).await?;
    let took = began.elapsed();
    drop(cluster);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(took)
}

/// Every round's figures, paired.
#[derive(Default)]
struct Samples {
    etcd: Vec<floor::EtcdStarts>,
    node: Vec<NodeStarts>,
}

impl Samples {
    fn add(&mut self, etcd: floor::EtcdStarts, node: NodeStarts) {
        self.etcd.push(etcd);
        self.node.push(node);
    }

    fn report(
        &self,
        throughput: curator::Throughput,
        tpm: tpm::TpmTimes,
        launches: Vec<(usize, Duration)>,
    ) -> Report {
        let secs = |f: &dyn Fn(&NodeStarts) -> Duration| -> Vec<f64> {
            self.node.iter().map(|n| f(n).as_secs_f64()).collect()
        };
        let etcd = |f: &dyn Fn(&floor::EtcdStarts) -> Duration| -> Vec<f64> {
            self.etcd.iter().map(|e| f(e).as_secs_f64()).collect()
        };
        let overhead = |total: &dyn Fn(&NodeStarts) -> Duration,
                        own: &dyn Fn(&NodeStarts) -> Duration| {
            self.node
                .iter()
                .map(|n| total(n).saturating_sub(own(n)).as_secs_f64())
                .collect::<Vec<f64>>()
        };
        let in_ms = |seconds: f64| seconds * 1000.0;
        let mib = |f: &dyn Fn(&Rss) -> f64| -> Vec<f64> {
            self.node.iter().map(|n| f(&n.rss) / 1048576.0).collect()
        };
        let mut measures = vec![
            Measure::paired(
                "P1 cold bootstrap (s)",
                secs(&|n| n.cold),
                etcd(&|e| e.cold),
                "ratio ≤ 1.05",
            ),
            Measure::alone(
                "P1 overhead outside etcd (s)",
                overhead(&|n| n.cold, &|n| n.cold_etcd),
                "≤ 0.025",
            ),
            Measure::paired(
                "P2 restart (s)",
                secs(&|n| n.restart),
                etcd(&|e| e.restart),
                "ratio ≤ 1.05",
            ),
            Measure::alone(
                "P2 overhead outside etcd (s)",
                overhead(&|n| n.restart, &|n| n.restart_etcd),
                "≤ 0.025",
            ),
            Measure::alone(
                "P1, P2 process start: polis-node --version (ms)",
                self.node.iter().map(|n| ms(n.process_start)).collect(),
                "-",
            ),
            Measure::paired(
                "P5 registrations per second",
                throughput.polis,
                throughput.floor,
                "ratio ≥ 0.5",
            ),
            Measure::alone(
                "P5 registration latency, p99 (ms)",
                report::p99(&throughput.latencies)
                    .into_iter()
                    .map(in_ms)
                    .collect(),
                "-",
            ),
            Measure::paired(
                "P5 etcd put+get, 1 ms idle vs busy (ms)",
                throughput.paced.into_iter().map(in_ms).collect(),
                throughput.back_to_back.into_iter().map(in_ms).collect(),
                "-",
            ),
        ];
        for (step, samples) in curator::STEPS.iter().zip(throughput.steps) {
            measures.push(Measure::alone(
                &format!("P5 step: {step} (ms)"),
                samples.into_iter().map(in_ms).collect(),
                "-",
            ));
        }
        for ((_, method), mean) in curator::CALLS.iter().zip(throughput.inside) {
            measures.push(Measure::alone(
                &format!("P5 inside the Curator: {method}, mean (ms)"),
                vec![in_ms(mean)],
                "-",
            ));
        }
        measures.extend([
            Measure::paired(
                "P6 idle RSS, node vs its etcd (MiB)",
                mib(&|r| r.node),
                mib(&|r| r.etcd),
                "-",
            ),
            Measure::alone("P6 idle RSS, swtpm (MiB)", mib(&|r| r.swtpm), "-"),
            Measure::paired(
                "TPM first seal, primary derived (ms)",
                tpm.first_seal,
                tpm.floor.clone(),
                "-",
            ),
            Measure::paired("TPM seal (ms)", tpm.seal, tpm.floor.clone(), "-"),
            Measure::paired(
                "TPM unseal, PCR policy (ms)",
                tpm.unseal,
                tpm.floor.clone(),
                "-",
            ),
            Measure::paired(
                "TPM unseal on a new connection (ms)",
                tpm.new_connection_unseal,
                tpm.floor,
                "-",
            ),
        ]);
        for (n, took) in launches {
            let goal = if n == 12 { "< 15 (3 + 9)" } else { "-" };
            measures.push(Measure::alone(
                &format!("launch {n} nodes, {} consensus (s)", n.min(3)),
                vec![took.as_secs_f64()],
                goal,
            ));
        }
        Report { measures }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}
