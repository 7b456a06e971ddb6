//! The Curator's server certificate. A consensus member serves the Curator with a certificate
//! of its own, marked for the role ([`crate::pki::CURATOR_URI`]), not with its node certificate:
//! clients accept only the mark, so no other node (a worker, a decommissioned member) can pose
//! as a Curator. The certificate lives in the member's record, from which decommissioning
//! revokes it. It is valid as long as a node certificate and renewed like one, two thirds into
//! its life; the one it replaces is revoked once the new one is served, so a member holds one
//! unrevoked Curator certificate at a time, the one decommissioning will revoke.

use polis_actors::ActorRef;

use crate::curator::records::{self, is_consensus_member, Records};
use crate::curator::CuratorError;
use crate::issuer::{Issue, Issuer};
use crate::pki::{node_id, renewal_due, NodeCredentials, Template};
use crate::proto::common::NodeState;
use crate::proto::private::Node;

/// The Curator certificate to serve with, and the certificates to revoke once it is served.
pub(super) struct Served {
    /// The certificate in the record (DER).
    pub certificate: Vec<u8>,
    /// The certificate it replaced, and one issued but not recorded (another incarnation of
    /// this Curator recorded its own first): neither is served any more.
    pub retired: Vec<Vec<u8>>,
}

/// The Curator certificate of the node holding `credentials`: the one in its record, or, if
/// there is none or it is due for renewal, a new one issued and recorded. Refused unless the
/// record says the node is an UP consensus member; the check and the write are one
/// transaction, so a decommission in between either sees the certificate (and revokes it) or
/// makes this fail.
pub(super) async fn current(
    records: &mut Records,
    issuer: &ActorRef<Issuer>,
    credentials: &NodeCredentials,
) -> Result<Served, CuratorError> {
    let public = credentials.key.verifying_key();
    let id = node_id(&public);
    let node = records.get(&id).await?;
    let recorded = eligible(node.as_ref(), &id)?.curator_certificate.clone();
    if !recorded.is_empty() && !renewal_due(&recorded) {
        return Ok(Served {
            certificate: recorded,
            retired: Vec::new(),
        });
    }
    let template = Template::Curator {
        node_id: id.clone(),
    };
    let issued = issuer.ask(Issue(template, public)).await??;
    let written = records
        .update(&id, |current| {
            let node = eligible(current, &id)?;
            Ok((node.curator_certificate == recorded).then(|| Node {
                curator_certificate: issued.der.clone(),
                ..node.clone()
            }))
        })
        .await?;
    let retired = match written.curator_certificate == issued.der {
        true => Some(recorded).filter(|r| !r.is_empty()),
        false => Some(issued.der),
    };
    Ok(Served {
        certificate: written.curator_certificate,
        retired: retired.into_iter().collect(),
    })
}

/// `node`, if its record lets it serve the Curator.
fn eligible<'a>(node: Option<&'a Node>, id: &str) -> Result<&'a Node, CuratorError> {
    let node = records::existing(node, id)?;
    if node.fsm_state != NodeState::Up as i32 || !is_consensus_member(node) {
        return Err(CuratorError::NotConsensusMember(id.to_owned()));
    }
    Ok(node)
}
