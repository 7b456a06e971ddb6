//! The decommission reconciler (DESIGN §5): DecommissionNode only marks the record; this actor
//! drives every DECOMMISSIONED record to its end state (node and Curator certificates revoked
//! into the cluster CRL, etcd member removed, peer certificate revoked into the peer CRL) and
//! records that it is done, recording what it waits on for the operator. It runs the loop of
//! [`super::reconciler`]: level-triggered, one member at a time, retried with backoff.

use polis_actors::{Actor, ActorRef, Ctx, Failure, Started};

use crate::consensus::{
    peer_ca, peer_pki, Consensus, Kv, NamespacedKv, RemoveMember, NAMESPACE as CONSENSUS_NAMESPACE,
    PEER_CRL_KEY,
};
use crate::crash_point;
use crate::curator::reconciler::{reconcile, Pass};
use crate::curator::records::{self, awaits_retirement, consensus_role, Records};
use crate::curator::service::peer_url;
use crate::curator::CuratorError;
use crate::issuer::{revoke, revoke_recorded, Issuer, Revoke};
use crate::proto::common::node_roles::ConsensusMember;
use crate::proto::private::{Node, Retirement};

/// The lock the reconcilers of all members take turns on.
const LEADER_LOCK: &str = "global/decommission_leader";

// ---- state ----

/// The reconciler actor.
pub struct Decommissioner {
    consensus: ActorRef<Consensus>,
    issuer: ActorRef<Issuer>,
}

impl Decommissioner {
    /// A reconciler over `consensus` (records, etcd membership) revoking through `issuer`.
    pub fn new(consensus: ActorRef<Consensus>, issuer: ActorRef<Issuer>) -> Self {
        Decommissioner { consensus, issuer }
    }
}

// ---- handlers ----

impl Actor for Decommissioner {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        let (consensus, issuer, log) = (
            self.consensus.clone(),
            self.issuer.clone(),
            ctx.log().clone(),
        );
        let run = async move {
            let peer_kv = match consensus.ask(Kv(CONSENSUS_NAMESPACE.into())).await {
                Ok(Ok(kv)) => kv,
                Ok(Err(e)) => return Failure::from(e),
                Err(e) => return Failure::from(e),
            };
            let retire = Retire {
                consensus: consensus.clone(),
                issuer,
                peer_kv,
                log: log.clone(),
            };
            reconcile(&consensus, LEADER_LOCK, &log, &retire).await
        };
        ctx.spawn(run, |ended, _, _| Err(ended));
        Ok(Started::Healthy)
    }
}

// ---- helpers ----

/// One pass: retire every node that awaits it, recording how far each got.
struct Retire {
    consensus: ActorRef<Consensus>,
    issuer: ActorRef<Issuer>,
    peer_kv: NamespacedKv,
    log: slog::Logger,
}

impl Pass for Retire {
    const WHAT: &'static str = "retiring decommissioned nodes";

    async fn pass(
        &self,
        nodes: &[Node],
        records: &mut Records,
    ) -> Result<Option<(String, CuratorError)>, Failure> {
        let pending: Vec<&Node> = nodes.iter().filter(|n| awaits_retirement(n)).collect();
        let mut failure = None;
        for node in pending {
            let outcome = self.retire(node).await;
            let retirement = match &outcome {
                Ok(()) => Retirement {
                    done: true,
                    waiting_on: String::new(),
                },
                Err(e) => Retirement {
                    done: false,
                    waiting_on: e.to_string(),
                },
            };
            record(records, &node.id, retirement).await?;
            match outcome {
                Ok(()) => slog::info!(self.log, "decommissioned node retired"; "node" => &node.id),
                Err(e) => failure = Some((format!("retiring {}", node.id), e)),
            }
        }
        Ok(failure)
    }
}

impl Retire {
    /// Take from a decommissioned node what it holds: its node and Curator certificates
    /// (revoked), its place in etcd if it has one and, if it was a consensus member, its peer
    /// certificate (revoked, so that etcd refuses it should it come back). Each step is
    /// repeatable.
    async fn retire(&self, node: &Node) -> Result<(), CuratorError> {
        for certificate in [&node.node_certificate, &node.curator_certificate] {
            if !certificate.is_empty() {
                self.issuer.ask(Revoke(certificate.to_vec())).await??;
            }
        }
        crash_point::pass(&self.log, "decommission:revoked");
        // Asked of every node, member or not: a Curator that died between adding a learner and
        // recording the role left a seat in etcd that no record names.
        let removed = remove_consensus_member(
            &self.consensus,
            &self.peer_kv,
            node,
            consensus_role(node),
            &self.log,
        )
        .await?;
        if removed {
            slog::info!(self.log, "etcd member removed"; "node" => &node.id);
        }
        Ok(())
    }
}

/// Take node `node`'s seat in etcd back, if it has one (by name, or by peer URL if its member
/// never started), and revoke into the peer CRL the peer certificate of its consensus role
/// `member`, if any, and every one the member recorded (renewals). Repeatable; answers whether
/// a member was removed.
pub(super) async fn remove_consensus_member(
    consensus: &ActorRef<Consensus>,
    peer_kv: &NamespacedKv,
    node: &Node,
    member: Option<&ConsensusMember>,
    log: &slog::Logger,
) -> Result<bool, CuratorError> {
    let removed = consensus
        .ask(RemoveMember {
            name: node.id.clone(),
            peer_url: peer_url(node),
        })
        .await??;
    // The seat is gone, whether this call took it or an earlier one whose answer was lost (a
    // removal proposed without quorum can commit after its caller's deadline).
    crash_point::pass(log, "decommission:member-removed");
    let seated = member
        .map(|m| m.peer_certificate.as_slice())
        .filter(|certificate| !certificate.is_empty());
    // Its etcd, removed, can record no more: these are all it was issued.
    let mut peer_kv = peer_kv.clone();
    let issued = peer_pki::issued_to(&mut peer_kv, &node.id).await?;
    if seated.is_none() && issued.is_empty() {
        return Ok(removed);
    }
    let ca = peer_ca(&mut peer_kv).await?;
    if let Some(certificate) = seated {
        revoke(&mut peer_kv, &ca, PEER_CRL_KEY, certificate).await?;
    }
    revoke_recorded(&mut peer_kv, &ca, PEER_CRL_KEY, &issued).await?;
    Ok(removed)
}

/// Revoke the etcd peer certificate `certificate` (DER) into the peer CRL, which every etcd
/// member follows. Repeatable.
pub(super) async fn revoke_peer_certificate(
    peer_kv: &NamespacedKv,
    certificate: &[u8],
) -> Result<(), CuratorError> {
    let mut peer_kv = peer_kv.clone();
    let ca = peer_ca(&mut peer_kv).await?;
    revoke(&mut peer_kv, &ca, PEER_CRL_KEY, certificate).await?;
    Ok(())
}

/// Record `retirement` in node `id`'s record (if it changed), for the operator to see.
async fn record(
    records: &mut Records,
    id: &str,
    retirement: Retirement,
) -> Result<(), CuratorError> {
    records
        .update(id, |current| {
            let node = records::existing(current, id)?;
            Ok(
                (node.retirement.as_ref() != Some(&retirement)).then(|| Node {
                    retirement: Some(retirement.clone()),
                    ..node.clone()
                }),
            )
        })
        .await?;
    Ok(())
}
