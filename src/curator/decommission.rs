//! The decommission reconciler (DESIGN §5): DecommissionNode only marks the record; this actor
//! drives every DECOMMISSIONED record to its end state (node and Curator certificates revoked
//! into the cluster CRL, etcd member removed, peer certificate revoked into the peer CRL) and
//! records that it is done. It is level-triggered from the records, so nothing is lost to a
//! failed call or a crash, and retries with backoff, recording what it waits on for the operator.
//! Every consensus member runs one; an etcd lock lets only one act at a time.

use std::time::Duration;

use polis_actors::{Actor, ActorRef, Ctx, Failure, Started};

use crate::backoff::Backoff;
use crate::consensus::{
    peer_ca, Consensus, Kv, NamespacedKv, RemoveMember, NAMESPACE as CONSENSUS_NAMESPACE,
    PEER_CRL_KEY,
};
use crate::curator::records::{awaits_retirement, consensus_role, Records, NAMESPACE};
use crate::curator::service::peer_url;
use crate::curator::CuratorError;
use crate::pki::{revoke, serial_of, Issuer, Revoke};
use crate::proto::common::node_roles::ConsensusMember;
use crate::proto::private::{Node, Retirement};

/// The lock the reconcilers of all members take turns on.
const LEADER_LOCK: &str = "global/decommission_leader";
/// How long a dead leader keeps the lock.
const LEASE: Duration = Duration::from_secs(6);

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
        let deps = Deps {
            consensus: self.consensus.clone(),
            issuer: self.issuer.clone(),
            log: ctx.log().clone(),
        };
        ctx.spawn(deps.run(), |ended, _, _| Err(ended));
        Ok(Started::Healthy)
    }
}

// ---- helpers ----

/// What one incarnation's loop works with.
struct Deps {
    consensus: ActorRef<Consensus>,
    issuer: ActorRef<Issuer>,
    log: slog::Logger,
}

impl Deps {
    /// Lead, then retire every node that awaits it, again after each change of the records and
    /// after a backoff while some retirement fails. Ends only by failing.
    async fn run(self) -> Failure {
        match self.reconcile().await {
            Ok(never) => match never {},
            Err(e) => e,
        }
    }

    async fn reconcile(&self) -> Result<std::convert::Infallible, Failure> {
        let mut records = Records::new(self.consensus.ask(Kv(NAMESPACE.into())).await??);
        let peer_kv = self.consensus.ask(Kv(CONSENSUS_NAMESPACE.into())).await??;
        let mut leadership = records.kv().lead(LEADER_LOCK, LEASE).await?;
        slog::info!(self.log, "leading the retirement of decommissioned nodes");
        let mut changes = records.watch().await?;
        let mut backoff = Backoff::new();
        loop {
            let pending: Vec<Node> = records
                .list()
                .await?
                .into_iter()
                .filter(awaits_retirement)
                .collect();
            let mut failure = None;
            for node in pending {
                let outcome = self.retire(&peer_kv, &node).await;
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
                record(&mut records, &node.id, retirement).await?;
                match outcome {
                    Ok(()) => {
                        slog::info!(self.log, "decommissioned node retired"; "node" => &node.id)
                    }
                    Err(e) => failure = Some((node.id, e)),
                }
            }
            // After a failure, try again after a backoff; else when the records change.
            let next = async {
                match failure {
                    Some((id, e)) => {
                        backoff.wait(&self.log, &format!("retiring {id}"), &e).await;
                        Ok(())
                    }
                    None => {
                        backoff.reset();
                        match changes.message().await {
                            Ok(Some(_)) => Ok(()),
                            _ => Err(Failure::msg("the watch of the node records ended")),
                        }
                    }
                }
            };
            tokio::select! {
                _ = leadership.lost() => {
                    return Err(Failure::msg("lost the decommission lock's lease"));
                }
                next = next => next?,
            }
        }
    }

    /// Take from a decommissioned node what it holds: its node and Curator certificates
    /// (revoked), and if it was a consensus member its place in etcd and its peer certificate
    /// (revoked, so that etcd refuses it should it come back). Each step is repeatable.
    async fn retire(&self, peer_kv: &NamespacedKv, node: &Node) -> Result<(), CuratorError> {
        for certificate in [&node.node_certificate, &node.curator_certificate] {
            if !certificate.is_empty() {
                self.issuer.ask(Revoke(serial_of(certificate)?)).await??;
            }
        }
        let Some(member) = consensus_role(node) else {
            return Ok(());
        };
        let removed = remove_consensus_member(&self.consensus, peer_kv, node, member).await?;
        slog::info!(self.log, "etcd member removed"; "node" => &node.id, "was_member" => removed);
        Ok(())
    }
}

/// Take the consensus role `member` of `node` back: remove its etcd member (by name, or by peer
/// URL if it never started) and revoke its peer certificate into the peer CRL. Repeatable;
/// answers whether a member was removed.
pub(super) async fn remove_consensus_member(
    consensus: &ActorRef<Consensus>,
    peer_kv: &NamespacedKv,
    node: &Node,
    member: &ConsensusMember,
) -> Result<bool, CuratorError> {
    let removed = consensus
        .ask(RemoveMember {
            name: node.id.clone(),
            peer_url: peer_url(node),
        })
        .await??;
    if !member.peer_certificate.is_empty() {
        revoke_peer_certificate(peer_kv, &member.peer_certificate).await?;
    }
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
    revoke(&mut peer_kv, &ca, PEER_CRL_KEY, &serial_of(certificate)?).await?;
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
            let node = current.ok_or_else(|| CuratorError::UnknownNode(id.to_owned()))?;
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
