//! The escrow reconciler (quorum unlock, DESIGN §6): keeps each consensus member's CUK split
//! into Shamir shares, one per other UP consensus member ([`crate::quorum::split`]), and splits
//! it again whenever that set of members changes; a node that is no consensus member (any more)
//! has no split, so a decommissioned node's shares are dropped everywhere. Holders learn their
//! shares through Watch, seal them, and confirm (`ConfirmShares`); until every share of its
//! current split is confirmed, a member keeps its own CUK sealed. It runs the loop of
//! [`super::reconciler`].

use polis_actors::{Actor, ActorRef, Ctx, Failure, Started};

use crate::consensus::Consensus;
use crate::curator::reconciler::{reconcile, Pass};
use crate::curator::records::{self, is_consensus_member, Records};
use crate::curator::CuratorError;
use crate::proto::common::NodeState;
use crate::proto::private::{Escrow, Node, Share};
use crate::quorum;

/// The lock the escrow reconcilers of all members take turns on.
const LEADER_LOCK: &str = "global/escrow_leader";

// ---- state ----

/// The escrow reconciler actor.
pub struct Escrower {
    consensus: ActorRef<Consensus>,
}

impl Escrower {
    /// A reconciler over the records that `consensus` holds.
    pub fn new(consensus: ActorRef<Consensus>) -> Self {
        Escrower { consensus }
    }
}

// ---- handlers ----

impl Actor for Escrower {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        let (consensus, log) = (self.consensus.clone(), ctx.log().clone());
        let run = async move {
            let split = Split { log: log.clone() };
            reconcile(&consensus, LEADER_LOCK, &log, &split).await
        };
        ctx.spawn(run, |ended, _, _| Err(ended));
        Ok(Started::Healthy)
    }
}

// ---- helpers ----

/// One pass: give every record the split its membership calls for.
struct Split {
    log: slog::Logger,
}

impl Pass for Split {
    const WHAT: &'static str = "escrowing the consensus members' cluster unlock keys";

    async fn pass(
        &self,
        nodes: &[Node],
        records: &mut Records,
    ) -> Result<Option<(String, CuratorError)>, Failure> {
        let mut failure = None;
        for node in nodes {
            let Some(holders) = wanted_split(nodes, node) else {
                continue;
            };
            let updated = records
                .update(&node.id, |current| {
                    let node = records::existing(current, &node.id)?;
                    Ok(Some(resplit(node, &holders)))
                })
                .await;
            match updated {
                Ok(_) => slog::info!(self.log, "cluster unlock key split among the other members";
                    "node" => &node.id, "holders" => holders.len(),
                    "threshold" => quorum::threshold(holders.len() + 1)),
                Err(e) => failure = Some((format!("splitting the CUK of {}", node.id), e)),
            }
        }
        Ok(failure)
    }
}

/// The UP consensus members of `nodes`, by ID.
fn members(nodes: &[Node]) -> Vec<&str> {
    let mut ids: Vec<&str> = nodes
        .iter()
        .filter(|n| n.fsm_state == NodeState::Up as i32 && is_consensus_member(n))
        .map(|n| n.id.as_str())
        .collect();
    ids.sort_unstable();
    ids
}

/// The holders `node`'s CUK must be split among now, if its split is not already that (empty:
/// it must have none — no consensus member, or the only one).
fn wanted_split(nodes: &[Node], node: &Node) -> Option<Vec<String>> {
    let members = members(nodes);
    let holders: Vec<String> = if members.contains(&node.id.as_str()) {
        members
            .iter()
            .filter(|id| **id != node.id)
            .map(|id| id.to_string())
            .collect()
    } else {
        Vec::new()
    };
    let current: Vec<&str> = node
        .escrow
        .iter()
        .flat_map(|e| e.shares.iter().map(|s| s.holder.as_str()))
        .collect();
    match (&node.escrow, holders.is_empty()) {
        (None, true) => None,
        (Some(_), false) if current == holders => None,
        _ => Some(holders),
    }
}

/// `node` with its CUK split anew among `holders` (none: no split), one generation on.
fn resplit(node: &Node, holders: &[String]) -> Node {
    let escrow = (!holders.is_empty()).then(|| {
        let generation = node.escrow.as_ref().map_or(0, |e| e.generation) + 1;
        Escrow {
            generation,
            shares: quorum::split(
                &node.cluster_unlock_key,
                &node.id,
                &node.join_key,
                holders,
                generation,
            ),
        }
    });
    Node {
        escrow,
        ..node.clone()
    }
}

/// The shares node `holder` is to hold, of every other node's split.
pub(super) fn held_shares(nodes: &[Node], holder: &str) -> Vec<Share> {
    nodes
        .iter()
        .flat_map(|n| n.escrow.iter().flat_map(|e| e.shares.iter()))
        .filter(|s| s.holder == holder)
        .cloned()
        .collect()
}

/// Whether consensus member `id` must keep its own CUK sealed: its current split is not yet
/// what membership calls for, or not every holder has confirmed its share.
pub(super) fn keeps_cluster_unlock_key(nodes: &[Node], id: &str) -> bool {
    let Some(node) = nodes.iter().find(|n| n.id == id) else {
        return false;
    };
    if !members(nodes).contains(&id) {
        return false;
    }
    let confirmed = node
        .escrow
        .as_ref()
        .is_some_and(|e| !e.shares.is_empty() && e.shares.iter().all(|s| s.confirmed));
    wanted_split(nodes, node).is_some() || !confirmed
}

/// `owner`'s record with the share of split `generation` that `holder` holds confirmed, if that
/// is its current split and the share is not confirmed yet.
pub(super) fn confirm(owner: &Node, holder: &str, generation: u64) -> Option<Node> {
    let escrow = owner.escrow.as_ref()?;
    if escrow.generation != generation {
        return None;
    }
    let index = escrow
        .shares
        .iter()
        .position(|s| s.holder == holder && !s.confirmed)?;
    let mut escrow = escrow.clone();
    escrow.shares[index].confirmed = true;
    Some(Node {
        escrow: Some(escrow),
        ..owner.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::node_roles::ConsensusMember;
    use crate::proto::common::NodeRoles;

    fn member(id: &str) -> Node {
        Node {
            id: id.into(),
            fsm_state: NodeState::Up as i32,
            cluster_unlock_key: vec![id.as_bytes()[0]; 32],
            join_key: vec![1; 32],
            roles: Some(NodeRoles {
                consensus_member: Some(ConsensusMember::default()),
                kubernetes_worker: None,
            }),
            ..Node::default()
        }
    }

    /// Apply the reconciler's decisions until it has nothing more to do.
    fn settle(nodes: &mut [Node]) {
        for i in 0..nodes.len() {
            if let Some(holders) = wanted_split(nodes, &nodes[i]) {
                nodes[i] = resplit(&nodes[i], &holders);
            }
        }
    }

    #[test]
    fn an_only_member_keeps_its_cuk_and_two_members_hold_each_others_shares() {
        let mut nodes = vec![member("a")];
        settle(&mut nodes);
        assert!(nodes[0].escrow.is_none(), "no one to hold a share");
        assert!(keeps_cluster_unlock_key(&nodes, "a"));
        nodes.push(member("b"));
        settle(&mut nodes);
        assert_eq!(held_shares(&nodes, "a").len(), 1);
        assert_eq!(held_shares(&nodes, "a")[0].owner, "b");
        assert!(keeps_cluster_unlock_key(&nodes, "a"), "not confirmed yet");
        nodes[0] = confirm(&nodes[0], "b", 1).unwrap();
        assert!(confirm(&nodes[0], "b", 1).is_none(), "confirmed once");
        assert!(confirm(&nodes[1], "a", 7).is_none(), "not its generation");
        assert!(!keeps_cluster_unlock_key(&nodes, "a"));
        assert!(keeps_cluster_unlock_key(&nodes, "b"));
    }

    #[test]
    fn a_membership_change_splits_again_and_a_decommissioned_node_loses_its_split() {
        let mut nodes = vec![member("a"), member("b"), member("c")];
        settle(&mut nodes);
        let first = nodes[0].escrow.clone().unwrap();
        assert_eq!(first.generation, 1);
        assert_eq!(first.shares.len(), 2);
        assert!(first.shares.iter().all(|s| s.threshold == 1));
        settle(&mut nodes);
        assert_eq!(
            nodes[0].escrow,
            Some(first),
            "nothing changed, nothing split"
        );
        nodes.push(member("d"));
        settle(&mut nodes);
        let second = nodes[0].escrow.clone().unwrap();
        assert_eq!(second.generation, 2);
        assert_eq!(second.shares.len(), 3);
        assert!(second.shares.iter().all(|s| s.threshold == 2));
        nodes[3].fsm_state = NodeState::Decommissioned as i32;
        settle(&mut nodes);
        assert!(nodes[3].escrow.is_none(), "its shares are dropped");
        assert!(held_shares(&nodes, "a").iter().all(|s| s.owner != "d"));
        assert!(held_shares(&nodes, "d").is_empty(), "and it holds none");
        assert!(!keeps_cluster_unlock_key(&nodes, "d"));
    }
}
