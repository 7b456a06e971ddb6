//! The cluster's health as this node sees it, for an operator's dashboard: where the lifecycle
//! is, what etcd says of this member, how many nodes the Curator holds in each state, and how
//! many entries the hosts file has. Each subsystem sets its own gauges; they outlive restarts.

use std::sync::atomic::AtomicU64;
use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::proto::common::NodeState;
use crate::proto::private::Node;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StepLabel {
    step: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabel {
    kind: String,
}

/// What etcd's Status call says of this member.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// This member leads the raft group.
    pub leader: bool,
    /// This member is a learner (not yet a voter).
    pub learner: bool,
    /// The raft term it has seen.
    pub raft_term: u64,
    /// Its database's size on disk.
    pub db_size_bytes: i64,
}

/// The node's health gauges, shared by the subsystems that set them.
#[derive(Clone, Debug, Default)]
pub struct Health {
    step: Family<StepLabel, Gauge>,
    done: Gauge,
    leader: Gauge,
    learner: Gauge,
    raft_term: Gauge,
    db_size: Gauge,
    status_at: Gauge<f64, AtomicU64>,
    ready_seconds: Gauge<f64, AtomicU64>,
    nodes: Family<StateLabel, Gauge>,
    hosts_entries: Gauge,
    certificates: Family<KindLabel, Gauge>,
}

impl Health {
    /// Add every gauge to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        let gauges: [(&str, &str, Gauge); 6] = [
            (
                "polis_lifecycle_done",
                "1 once the lifecycle's boot flow has finished and it follows the node's record",
                self.done.clone(),
            ),
            (
                "polis_consensus_leader",
                "1 if this node's etcd member leads the raft group",
                self.leader.clone(),
            ),
            (
                "polis_consensus_learner",
                "1 if this node's etcd member is a learner, not yet a voter",
                self.learner.clone(),
            ),
            (
                "polis_consensus_raft_term",
                "The raft term this node's etcd member has seen",
                self.raft_term.clone(),
            ),
            (
                "polis_consensus_db_size_bytes",
                "Size of this node's etcd database on disk",
                self.db_size.clone(),
            ),
            (
                "polis_hostsfile_entries",
                "Entries in the hosts file this node last wrote",
                self.hosts_entries.clone(),
            ),
        ];
        for (name, help, gauge) in gauges {
            registry.register(name, help, gauge);
        }
        registry.register(
            "polis_lifecycle_step",
            "1 for the last step the lifecycle passed (bootstrap, register, join or role change)",
            self.step.clone(),
        );
        registry.register(
            "polis_consensus_last_status_timestamp_seconds",
            "When etcd last answered this node's Status call, since the Unix epoch",
            self.status_at.clone(),
        );
        registry.register(
            "polis_consensus_ready_seconds",
            "Seconds from spawning this member's etcd to its first answered read, at its latest start",
            self.ready_seconds.clone(),
        );
        registry.register(
            "polis_certificate_expiry_timestamp_seconds",
            "When each certificate this node holds expires (its notAfter), since the Unix epoch, \
             by kind: node, curator (a consensus member's Curator), peer (its etcd member)",
            self.certificates.clone(),
        );
        registry.register(
            "polis_curator_nodes",
            "Nodes in the cluster's records by state, as this node's Curator reads them",
            self.nodes.clone(),
        );
    }

    /// The lifecycle passed `step` (e.g. `join:mounted`).
    pub fn lifecycle_step(&self, step: &str) {
        self.step.clear();
        self.step
            .get_or_create(&StepLabel {
                step: step.to_owned(),
            })
            .set(1);
    }

    /// This node holds `certificate` (DER) as its `kind` certificate (`node`, `curator`,
    /// `peer`): report when it expires. One that does not parse is not reported.
    pub fn certificate_held(&self, kind: &str, certificate: &[u8]) {
        if let Ok(expires) = crate::pki::not_after(certificate) {
            self.certificates
                .get_or_create(&KindLabel {
                    kind: kind.to_owned(),
                })
                .set(expires);
        }
    }

    /// The lifecycle's flow has finished: it now follows the node's record.
    pub fn lifecycle_done(&self) {
        self.done.set(1);
    }

    /// etcd answered a Status call with `status`, now.
    pub fn member_status(&self, status: MemberStatus) {
        self.leader.set(i64::from(status.leader));
        self.learner.set(i64::from(status.learner));
        self.raft_term
            .set(i64::try_from(status.raft_term).unwrap_or(i64::MAX));
        self.db_size.set(status.db_size_bytes);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.status_at.set(now);
    }

    /// This member's etcd, spawned `elapsed` ago, has answered its first read: how long a start
    /// waits on etcd itself, which a node's own start time is measured against.
    pub fn consensus_ready(&self, elapsed: std::time::Duration) {
        self.ready_seconds.set(elapsed.as_secs_f64());
    }

    /// The Curator read `nodes`: count them by state, every state present (0 if none).
    pub fn nodes(&self, nodes: &[Node]) {
        for state in [
            NodeState::New,
            NodeState::Standby,
            NodeState::Up,
            NodeState::Decommissioned,
        ] {
            let count = nodes.iter().filter(|n| n.fsm_state == state as i32).count();
            let label = StateLabel {
                state: state_name(state).to_owned(),
            };
            self.nodes
                .get_or_create(&label)
                .set(i64::try_from(count).unwrap_or(i64::MAX));
        }
    }

    /// The hosts file was written with `entries` entries.
    pub fn hosts_entries(&self, entries: usize) {
        self.hosts_entries
            .set(i64::try_from(entries).unwrap_or(i64::MAX));
    }
}

/// A state's short name, as `polisctl nodes` shows it.
fn state_name(state: NodeState) -> &'static str {
    state
        .as_str_name()
        .strip_prefix("NODE_STATE_")
        .unwrap_or("INVALID")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(health: &Health) -> String {
        let mut registry = Registry::default();
        health.register(&mut registry);
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &registry).unwrap();
        out
    }

    #[test]
    fn only_the_last_step_is_current_and_every_state_is_counted() {
        let health = Health::default();
        health.lifecycle_step("join:unlocked");
        health.lifecycle_step("join:mounted");
        let up = |fsm_state: NodeState| Node {
            fsm_state: fsm_state as i32,
            ..Node::default()
        };
        health.nodes(&[up(NodeState::Up), up(NodeState::Up), up(NodeState::New)]);
        let text = text(&health);
        assert!(
            text.contains("polis_lifecycle_step{step=\"join:mounted\"} 1\n"),
            "{text}"
        );
        assert!(!text.contains("join:unlocked"), "{text}");
        for (state, n) in [("UP", 2), ("NEW", 1), ("STANDBY", 0), ("DECOMMISSIONED", 0)] {
            let line = format!("polis_curator_nodes{{state=\"{state}\"}} {n}\n");
            assert!(text.contains(&line), "{line} in {text}");
        }
    }
}
