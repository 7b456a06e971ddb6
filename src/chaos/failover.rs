//! Failover, measured (`polisctl failover`): one consensus member of a running cluster is lost
//! (`kill -9`; every other round it is etcd's leader, asked of etcd), and the rounds time how
//! long until a Curator answers GetNodes again from the survivors, and how long the lost node,
//! booted again at once, takes until every invariant holds (it is UP, a voter, healthy).

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::json;

use crate::chaos::{check, curator, Expected};
use crate::consensus::connect;
use crate::launch::LocalCluster;
use crate::poll::Poll;

/// How long one round may take before it counts as a failure to fail over.
const PATIENCE: Duration = Duration::from_secs(180);
/// One GetNodes attempt's limit, so a call to a dead Curator does not hide a live one.
const ATTEMPT: Duration = Duration::from_secs(1);

/// One round.
#[derive(Clone, Debug)]
pub struct Round {
    /// The slot lost.
    pub victim: usize,
    /// Whether it led etcd when it was lost.
    pub leader: bool,
    /// From the kill to a survivor's Curator answering GetNodes.
    pub serving: Duration,
    /// From booting the lost node again to every invariant holding.
    pub back: Duration,
}

/// Every round, or the first that did not fail over.
#[derive(Clone, Debug, Default)]
pub struct FailoverReport {
    /// The rounds, in order.
    pub rounds: Vec<Round>,
    /// What did not come back, if anything.
    pub failure: Option<String>,
}

/// Lose one member of `cluster` (all of whose slots run and are consensus members) per round.
pub async fn failover(
    cluster: &mut LocalCluster,
    rounds: usize,
    mut progress: impl FnMut(&str),
) -> FailoverReport {
    let mut report = FailoverReport::default();
    let mut expected = Expected {
        running: (0..cluster.nodes.len()).collect(),
        ..Expected::default()
    };
    for r in 0..rounds {
        match round(cluster, &mut expected, r % 2 == 0).await {
            Ok(round) => {
                progress(&format!(
                    "round {}: node {}{} lost; a Curator answers after {:.2} s; back after {:.2} s",
                    r + 1,
                    round.victim,
                    if round.leader { " (etcd leader)" } else { "" },
                    round.serving.as_secs_f64(),
                    round.back.as_secs_f64()
                ));
                report.rounds.push(round);
            }
            Err(e) => {
                report.failure = Some(format!("round {}: {e}", r + 1));
                break;
            }
        }
    }
    report
}

async fn round(
    cluster: &mut LocalCluster,
    expected: &mut Expected,
    leader: bool,
) -> Result<Round, String> {
    until(cluster, expected).await?;
    let leader_slot = etcd_leader(cluster).await?;
    let victim = match leader {
        true => leader_slot,
        false => (leader_slot + 1) % cluster.nodes.len(),
    };
    cluster.stop(victim, Signal::SIGKILL);
    let killed = Instant::now();
    let survivors: Vec<usize> = (0..cluster.nodes.len()).filter(|&s| s != victim).collect();
    // No pause between attempts: the time until one answers is what is measured.
    Poll::new(Duration::ZERO, PATIENCE)
        .until(async || curator(cluster, survivors.iter().copied(), ATTEMPT).await)
        .await
        .map_err(|e| format!("no survivor's Curator answered after node {victim} was lost: {e}"))?;
    let serving = killed.elapsed();
    cluster
        .start(victim, &[])
        .map_err(|e| format!("booting node {victim} again: {e}"))?;
    let booted = Instant::now();
    until(cluster, expected).await?;
    Ok(Round {
        victim,
        leader: victim == leader_slot,
        serving,
        back: booted.elapsed(),
    })
}

/// Wait until every invariant holds, learning the records on the first pass.
async fn until(cluster: &LocalCluster, expected: &mut Expected) -> Result<(), String> {
    Poll::new(Duration::from_millis(100), PATIENCE)
        .until(async || {
            if expected.records.is_empty() {
                let slots = expected.running.clone();
                let (_, nodes) = curator(cluster, slots, ATTEMPT).await?;
                expected.records = nodes.into_iter().map(|n| (n.id, n.state)).collect();
            }
            check(cluster, expected).await
        })
        .await
}

/// The slot whose etcd leads, as a running member's etcd says.
async fn etcd_leader(cluster: &LocalCluster) -> Result<usize, String> {
    let mut client = connect(&cluster.nodes[0].root)
        .await
        .map_err(|e| format!("node 0's etcd: {e}"))?;
    let status = client
        .status()
        .await
        .map_err(|e| format!("etcd status: {e}"))?;
    let members = client
        .member_list()
        .await
        .map_err(|e| format!("etcd member list: {e}"))?;
    let name = members
        .members()
        .iter()
        .find(|m| m.id() == status.leader())
        .map(|m| m.name().to_owned())
        .ok_or("etcd names no leader")?;
    (0..cluster.nodes.len())
        .find(|&s| cluster.nodes[s].id().as_deref() == Some(name.as_str()))
        .ok_or_else(|| format!("the leader {name} is no node of this cluster"))
}

impl FailoverReport {
    fn times(&self, pick: impl Fn(&Round) -> Duration, leader: Option<bool>) -> (f64, f64) {
        let mut t: Vec<f64> = self
            .rounds
            .iter()
            .filter(|r| leader.is_none_or(|l| r.leader == l))
            .map(|r| pick(r).as_secs_f64())
            .collect();
        if t.is_empty() {
            return (0.0, 0.0);
        }
        t.sort_by(f64::total_cmp);
        (t[(t.len() - 1) / 2], t[t.len() - 1])
    }

    /// The report as a table: p50 and max of both times, for the leader lost and a follower.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} rounds\n\n{:<18} {:>7} {:>16} {:>16} {:>16} {:>16}\n",
            self.rounds.len(),
            "node lost",
            "rounds",
            "serving p50 (s)",
            "serving max (s)",
            "back p50 (s)",
            "back max (s)"
        );
        for (name, leader) in [
            ("etcd leader", Some(true)),
            ("follower", Some(false)),
            ("any", None),
        ] {
            let n = self
                .rounds
                .iter()
                .filter(|r| leader.is_none_or(|l| r.leader == l))
                .count();
            let (s50, smax) = self.times(|r| r.serving, leader);
            let (b50, bmax) = self.times(|r| r.back, leader);
            out.push_str(&format!(
                "{name:<18} {n:>7} {s50:>16.2} {smax:>16.2} {b50:>16.2} {bmax:>16.2}\n"
            ));
        }
        if let Some(failure) = &self.failure {
            out.push_str(&format!("\nFAILED: {failure}\n"));
        }
        out
    }

    /// The report as JSON.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "rounds": self.rounds.iter().map(|r| json!({
                "victim": r.victim,
                "leader": r.leader,
                "serving_ms": r.serving.as_millis(),
                "back_ms": r.back.as_millis(),
            })).collect::<Vec<_>>(),
            "failure": self.failure,
        })
    }
}
