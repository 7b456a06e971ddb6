//! The chaos soak (`polisctl chaos`): a seeded schedule of faults against a local cluster while
//! a workload runs, with every invariant checked after each fault.
//!
//! After each fault the soak boots every node that should run and does not (as a machine
//! reboots), then waits until [`check::check`] passes; the time that takes is the fault's
//! recovery time. An invariant that does not hold within the patience is a violation: the soak
//! stops there, and its report names the seed, the schedule so far, and what did not hold.
//! Meanwhile the owner calls GetNodes in a loop and rotates the register ticket, a node's Watch
//! is held open (reconnecting after faults; every event must say UP), and every few
//! faults a spare slot registers a node (every second one also made a consensus member) or
//! decommissions the one it holds.

mod check;
mod failover;
mod fault;
mod report;
mod watcher;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::launch::LocalCluster;
use crate::owner::{CuratorAddress, Owner};
use crate::pki::NodeCredentials;
use crate::poll::Poll;
use crate::proto::common::NodeState;

pub use check::{check, curator, Expected, MEMBER_ACTORS, NODE_ACTORS};
pub use failover::{failover, FailoverReport, Round};
pub use fault::{child_named, draw, inject, Fault, Rng};
pub use report::{Outcome, Report, Workload};

/// What a soak does.
#[derive(Clone, Debug)]
pub struct ChaosConfig {
    /// How many faults.
    pub kills: usize,
    /// The schedule's seed.
    pub seed: u64,
    /// Stop after this long even if fewer faults were injected.
    pub duration: Option<Duration>,
    /// How long the invariants may take to hold again after a fault.
    pub patience: Duration,
    /// Every this many faults, a registration or decommission in the spare slot (0: never).
    pub cycle_every: usize,
    /// The slot kept free for registrations, if any (it must not run at the start).
    pub spare: Option<usize>,
}

impl Default for ChaosConfig {
    fn default() -> Self {
        ChaosConfig {
            kills: 60,
            seed: 1,
            duration: None,
            patience: Duration::from_secs(180),
            cycle_every: 10,
            spare: None,
        }
    }
}

/// Run a soak against `cluster`, whose running nodes are up; `progress` hears each step.
pub async fn soak(
    cluster: &mut LocalCluster,
    config: &ChaosConfig,
    mut progress: impl FnMut(&str),
) -> Report {
    let start = Instant::now();
    let mut report = Report {
        seed: config.seed,
        ..Report::default()
    };
    let mut soak = Soak {
        expected: Expected::default(),
        reboots: 0,
        patience: config.patience,
    };
    soak.expected.running = (0..cluster.nodes.len())
        .filter(|&i| Some(i) != config.spare && cluster.is_running(i))
        .collect();
    if let Err(e) = soak.baseline(cluster).await {
        report.violation = Some(format!("before any fault: {e}"));
        return report;
    }
    let workload = Background::start(cluster, &soak.expected);
    let mut rng = Rng::new(config.seed);
    let mut spare_id = None;
    for k in 1..=config.kills {
        if config.duration.is_some_and(|d| start.elapsed() >= d) {
            progress(&format!("duration reached after {} faults", k - 1));
            break;
        }
        if let Some(spare) = config
            .spare
            .filter(|_| config.cycle_every > 0 && k % config.cycle_every == 0)
        {
            workload.rotation.store(false, Ordering::SeqCst);
            let step = soak
                .cycle(
                    cluster,
                    spare,
                    &mut spare_id,
                    &mut report.workload,
                    &mut progress,
                )
                .await;
            workload.rotation.store(true, Ordering::SeqCst);
            if let Err(e) = step {
                report.violation = Some(format!("in the registration cycle before fault {k}: {e}"));
                break;
            }
        }
        let running: Vec<usize> = soak.expected.running.iter().copied().collect();
        let members = soak.members(cluster, &running).await;
        let fault = draw(&mut rng, &running, &members, |node| {
            healthy_actors(cluster, node)
        });
        progress(&format!("fault {k}/{}: {fault}", config.kills));
        if let Err(e) = inject(cluster, &fault).await {
            report.violation = Some(format!("fault {k}: {e}"));
            break;
        }
        let injected = Instant::now();
        if let Err(e) = soak.recover(cluster).await {
            report.violation = Some(format!("after fault {k} ({fault}): {e}"));
            break;
        }
        let recovery = injected.elapsed();
        progress(&format!(
            "  all invariants hold again after {:.2} s",
            recovery.as_secs_f64()
        ));
        report.outcomes.push(Outcome {
            kind: fault.kind(),
            fault: fault.to_string(),
            recovery,
        });
    }
    workload.stop(&mut report.workload).await;
    report.workload.reboots = soak.reboots;
    if report.workload.watch_wrong > 0 && report.violation.is_none() {
        report.violation = Some(format!(
            "the workload's Watch received {} events that did not say its node is UP",
            report.workload.watch_wrong
        ));
    }
    report.duration = start.elapsed();
    report
}

/// The soak's own state between faults.
struct Soak {
    expected: Expected,
    reboots: u64,
    patience: Duration,
}

impl Soak {
    /// Learn the records as they are and wait until every invariant holds before any fault.
    async fn baseline(&mut self, cluster: &mut LocalCluster) -> Result<(), String> {
        Poll::new(Duration::from_millis(250), self.patience)
            .until(async || {
                let (_, nodes) = self.any_owner(cluster).await?;
                self.expected.records = nodes.into_iter().map(|n| (n.id, n.state)).collect();
                check(cluster, &self.expected).await
            })
            .await
    }

    /// Boot what should run and does not, until every invariant holds or the patience is out.
    async fn recover(&mut self, cluster: &mut LocalCluster) -> Result<(), String> {
        Poll::new(Duration::from_millis(250), self.patience)
            .until(async || {
                self.reboot(cluster)?;
                check(cluster, &self.expected).await
            })
            .await
            .map_err(|e| format!("not within {:?}: {e}", self.patience))
    }

    /// Boot every node that should run and does not, as a machine reboots.
    fn reboot(&mut self, cluster: &mut LocalCluster) -> Result<(), String> {
        for &slot in &self.expected.running {
            if !cluster.is_running(slot) {
                cluster
                    .start(slot, &[])
                    .map_err(|e| format!("booting node {slot} again: {e}"))?;
                self.reboots += 1;
            }
        }
        Ok(())
    }

    /// Wait until the cluster has retired decommissioned `id`, booting what should run
    /// meanwhile (a fault just before may have ended a node the retirement needs).
    async fn until_retired(&mut self, cluster: &mut LocalCluster, id: &str) -> Result<(), String> {
        Poll::new(Duration::from_millis(250), self.patience)
            .until(async || {
                self.reboot(cluster)?;
                let (_, nodes) = self.any_owner(cluster).await?;
                crate::poll::holds(nodes.iter().any(|n| n.id == id && n.retired), "not retired")
            })
            .await
            .map_err(|e| format!("{id} not retired within {:?}: {e}", self.patience))
    }

    /// The slots among `running` that are consensus members, as the records say.
    async fn members(&self, cluster: &LocalCluster, running: &[usize]) -> Vec<usize> {
        let Ok((_, nodes)) = self.any_owner(cluster).await else {
            return Vec::new();
        };
        running
            .iter()
            .copied()
            .filter(|&slot| {
                let id = cluster.nodes[slot].id();
                nodes.iter().any(|n| {
                    Some(&n.id) == id.as_ref()
                        && n.roles
                            .as_ref()
                            .is_some_and(|r| r.consensus_member.is_some())
                })
            })
            .collect()
    }

    /// The owner on any running node whose Curator answers, and the nodes it lists.
    async fn any_owner(
        &self,
        cluster: &LocalCluster,
    ) -> Result<(Owner, Vec<crate::proto::api::Node>), String> {
        let slots = self.expected.running.iter().copied();
        check::curator(cluster, slots, crate::grpc::CALL_DEADLINE).await
    }

    /// One registration-cycle step in `spare`: register a node there (every second one also
    /// made a consensus member), or decommission the one it holds and wipe the slot.
    async fn cycle(
        &mut self,
        cluster: &mut LocalCluster,
        spare: usize,
        spare_id: &mut Option<String>,
        counts: &mut Workload,
        progress: &mut impl FnMut(&str),
    ) -> Result<(), String> {
        self.recover(cluster).await?;
        let (owner, _) = self.any_owner(cluster).await?;
        match spare_id.take() {
            None => {
                progress(&format!("registering a new node in slot {spare}"));
                let node = cluster
                    .start_registration(spare, &owner)
                    .await
                    .map_err(|e| e.to_string())?;
                cluster
                    .approve(spare, &owner, &node)
                    .await
                    .map_err(|e| e.to_string())?;
                self.expected.running.insert(spare);
                self.expected
                    .records
                    .insert(node.id.clone(), NodeState::Up as i32);
                counts.registered += 1;
                if counts.registered.is_multiple_of(2) {
                    progress(&format!("making {} a consensus member", node.id));
                    cluster
                        .make_consensus_member(spare, &owner, &node.id)
                        .await
                        .map_err(|e| e.to_string())?;
                    counts.promoted += 1;
                }
                *spare_id = Some(node.id);
            }
            Some(id) => {
                progress(&format!("decommissioning {id} in slot {spare}"));
                let certificate = NodeCredentials::load(&cluster.nodes[spare].root)
                    .ok()
                    .flatten()
                    .map(|c| c.certificate)
                    .ok_or_else(|| format!("slot {spare} has no credentials"))?;
                cluster
                    .until(spare, "be decommissioned", || {
                        let (mut owner, id) = (owner.clone(), id.clone());
                        async move { owner.decommission(&id).await.ok() }
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                // It stops by itself once refused; it is not booted again.
                self.expected.running.remove(&spare);
                self.until_retired(cluster, &id).await?;
                self.expected
                    .records
                    .insert(id.clone(), NodeState::Decommissioned as i32);
                self.expected.retired.insert(id, certificate);
                cluster.wipe(spare).map_err(|e| e.to_string())?;
                counts.decommissioned += 1;
            }
        }
        self.recover(cluster).await
    }
}

/// A node's healthy actors but the root, as faults may target them.
fn healthy_actors(cluster: &LocalCluster, node: usize) -> Vec<String> {
    let tree = check::actors(cluster, node).unwrap_or_default();
    tree.iter()
        .filter(|a| a["state"] == "healthy" && a["path"] != "/")
        .filter_map(|a| a["path"].as_str().map(str::to_owned))
        .collect()
}

/// The workload that runs beside the faults: the owner's GetNodes in a loop over every
/// Curator, a ticket rotation every 25 calls while `rotation` allows, and a Watch held open
/// ([`watcher`]).
struct Background {
    stop: Arc<AtomicBool>,
    rotation: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    rotated: Arc<AtomicU64>,
    watch: watcher::WatchCounts,
    task: tokio::task::JoinHandle<()>,
    watch_task: tokio::task::JoinHandle<()>,
}

impl Background {
    fn start(cluster: &LocalCluster, expected: &Expected) -> Background {
        let curators: Vec<CuratorAddress> = expected
            .running
            .iter()
            .filter_map(|&s| cluster.curator(s))
            .collect();
        let ca = cluster.ca().unwrap_or_default();
        let certificate =
            std::fs::read(cluster.dir().join(crate::owner::CERTIFICATE_FILE)).unwrap_or_default();
        let key = cluster.owner_key().clone();
        let (stop, rotation) = (
            Arc::new(AtomicBool::new(false)),
            Arc::new(AtomicBool::new(true)),
        );
        let (ok, failed, rotated) = (Arc::default(), Arc::default(), Arc::default());
        let watch = watcher::WatchCounts::default();
        // The first running node's credentials: a node the workload never decommissions.
        let credentials = expected.running.first().and_then(|&slot| {
            NodeCredentials::load(&cluster.nodes[slot].root)
                .ok()
                .flatten()
        });
        let watch_task = {
            let (curators, ca, key) = (curators.clone(), ca.clone(), key.clone());
            let (certificate, stop, watch) = (certificate.clone(), stop.clone(), watch.clone());
            let owner = async move |curator: &CuratorAddress| {
                Owner::connect(curator, &ca, &key, certificate.clone())
                    .await
                    .ok()
            };
            tokio::spawn(async move {
                if let Some(credentials) = credentials {
                    watcher::hold(credentials, curators, owner, stop, watch).await;
                }
            })
        };
        let task = {
            let (stop, rotation) = (stop.clone(), rotation.clone());
            let (ok, failed, rotated): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicU64>) =
                (Arc::clone(&ok), Arc::clone(&failed), Arc::clone(&rotated));
            tokio::spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::SeqCst) && !curators.is_empty() {
                    n += 1;
                    let curator = &curators[n % curators.len()];
                    let call = async {
                        let mut owner =
                            Owner::connect(curator, &ca, &key, certificate.clone()).await?;
                        owner.nodes().await?;
                        if n.is_multiple_of(25) && rotation.load(Ordering::SeqCst) {
                            owner.rotate_ticket().await?;
                            rotated.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok::<(), crate::owner::OwnerError>(())
                    };
                    match tokio::time::timeout(Duration::from_secs(20), call).await {
                        Ok(Ok(())) => ok.fetch_add(1, Ordering::Relaxed),
                        _ => failed.fetch_add(1, Ordering::Relaxed),
                    };
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            })
        };
        Background {
            stop,
            rotation,
            ok,
            failed,
            rotated,
            watch,
            task,
            watch_task,
        }
    }

    async fn stop(self, counts: &mut Workload) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.task.await;
        let _ = self.watch_task.await;
        counts.calls_ok = self.ok.load(Ordering::Relaxed);
        counts.calls_failed = self.failed.load(Ordering::Relaxed);
        counts.tickets_rotated = self.rotated.load(Ordering::Relaxed);
        counts.watch_events = self.watch.events.load(Ordering::Relaxed);
        counts.watch_reconnects = self.watch.reconnects.load(Ordering::Relaxed);
        counts.watch_wrong = self.watch.wrong.load(Ordering::Relaxed);
    }
}
