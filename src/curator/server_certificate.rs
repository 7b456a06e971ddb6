//! The Curator's server certificate. A consensus member serves the Curator with a certificate
//! of its own, marked for the role ([`crate::pki::CURATOR_URI`]), not with its node certificate:
//! clients accept only the mark, so no other node (a worker, a decommissioned member) can pose
//! as a Curator. The certificate lives in the member's record, from which decommissioning
//! revokes it.

use polis_actors::ActorRef;

use crate::curator::records::{self, is_consensus_member, Records};
use crate::curator::CuratorError;
use crate::issuer::{Issue, Issuer};
use crate::pki::{node_id, NodeCredentials, Template};
use crate::proto::common::NodeState;
use crate::proto::private::Node;

/// The Curator certificate of the node holding `credentials`: the one in its record, or a new
/// one issued and recorded. Refused unless the record says the node is an UP consensus member;
/// the check and the write are one transaction, so a decommission in between either sees the
/// certificate (and revokes it) or makes this fail.
pub(super) async fn ensure(
    records: &mut Records,
    issuer: &ActorRef<Issuer>,
    credentials: &NodeCredentials,
) -> Result<Vec<u8>, CuratorError> {
    let public = credentials.key.verifying_key();
    let id = node_id(&public);
    let node = records.get(&id).await?;
    let node = eligible(node.as_ref(), &id)?;
    if !node.curator_certificate.is_empty() {
        return Ok(node.curator_certificate.clone());
    }
    let template = Template::Curator {
        node_id: id.clone(),
    };
    let issued = issuer.ask(Issue(template, public)).await??;
    let written = records
        .update(&id, |current| {
            let node = eligible(current, &id)?;
            Ok(node.curator_certificate.is_empty().then(|| Node {
                curator_certificate: issued.der.clone(),
                ..node.clone()
            }))
        })
        .await?;
    Ok(written.curator_certificate)
}

/// `node`, if its record lets it serve the Curator.
fn eligible<'a>(node: Option<&'a Node>, id: &str) -> Result<&'a Node, CuratorError> {
    let node = records::existing(node, id)?;
    if node.fsm_state != NodeState::Up as i32 || !is_consensus_member(node) {
        return Err(CuratorError::NotConsensusMember(id.to_owned()));
    }
    Ok(node)
}
