//! Giving a node the consensus role (a peer certificate, a learner seat in etcd, the role in its
//! record) and undoing it when the record did not take it; how peers are named to etcd.

use crate::consensus::{peer_ca, peers, AddLearner, PEER_CRL_KEY, PEER_PORT};
use crate::curator::decommission::{remove_consensus_member, revoke_peer_certificate};
use crate::curator::records;
use crate::curator::CuratorError;
use crate::issuer::Issue;
use crate::pki::{Template, DEFAULT_CRL_VALIDITY};
use crate::proto::common::node_roles::ConsensusMember;
use crate::proto::private::Node;

use super::auth::verifying_key;
use super::Services;

impl Services {
    /// Give node `node` the consensus role: a peer certificate for its node key, a place in
    /// etcd as a learner, and the role in its record, in that order (each step repeatable).
    pub(super) async fn add_consensus_member(
        &self,
        node: &Node,
    ) -> Result<ConsensusMember, CuratorError> {
        let mut peer_kv = self.peer_kv.clone();
        let ca = peer_ca(&mut peer_kv).await?;
        let crl = peer_kv
            .ensure(PEER_CRL_KEY, &ca.crl(1, &[], DEFAULT_CRL_VALIDITY)?)
            .await?;
        let host = external_address(node);
        let ip = host.parse().map_err(|_| CuratorError::Invalid {
            field: "external_address",
            reason: format!("node {} has no usable address ({host:?})", node.id),
        })?;
        let public = verifying_key(&node.public_key, "public_key")?;
        let template = Template::Peer {
            name: node.id.clone(),
            ip,
        };
        let certificate = self.issuer.ask(Issue(template, public)).await??;
        let peers = self
            .consensus
            .ask(AddLearner {
                name: node.id.clone(),
                peer_url: peer_url(node),
            })
            .await??;
        Ok(ConsensusMember {
            ca_certificate: ca.certificate().to_vec(),
            peer_certificate: certificate.der,
            initial_crl: crl,
            peers,
        })
    }

    /// After `member` was made for `node` and its record written (or not, `written`): if the
    /// record did not take it (the node was decommissioned meanwhile), take the etcd seat and
    /// the peer certificate back; if a concurrent call's member won, revoke this one's unused
    /// peer certificate.
    pub(super) async fn settle_added_member(
        &self,
        node: &Node,
        member: &ConsensusMember,
        written: &Result<Node, CuratorError>,
    ) -> Result<(), CuratorError> {
        let recorded = written.as_ref().ok().and_then(records::consensus_role);
        match recorded {
            Some(kept) if kept.peer_certificate == member.peer_certificate => Ok(()),
            Some(_) => revoke_peer_certificate(&self.peer_kv, &member.peer_certificate).await,
            None => {
                slog::warn!(self.log, "the node left UP while it got the consensus role; undoing";
                    "node" => &node.id);
                remove_consensus_member(
                    &self.consensus,
                    &self.peer_kv,
                    node,
                    Some(member),
                    &self.log,
                )
                .await?;
                Ok(())
            }
        }
    }
}

/// The address a node reported (empty if none).
fn external_address(node: &Node) -> &str {
    node.status
        .as_ref()
        .map(|s| s.external_address.as_str())
        .unwrap_or_default()
}

/// Where other etcd members reach `node`, as it is added and removed.
pub(in crate::curator) fn peer_url(node: &Node) -> String {
    peers::peer_url(external_address(node), PEER_PORT)
}
