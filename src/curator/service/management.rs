//! The owner's `Management` service (every call checked by [`crate::curator::owner_only`]):
//! register tickets, cluster info, nodes, approval, roles, decommissioning.

use tonic::{Request, Response, Status};

use super::auth::verifying_key;
use super::{Answer, Services};
use crate::curator::records::{self, REGISTER_TICKET};
use crate::curator::CuratorError;
use crate::pki::{node_id, not_after};
use crate::proto::api::management_server::Management;
use crate::proto::api::{self, *};
use crate::proto::common::node_roles::KubernetesWorker;
use crate::proto::common::NodeRoles;
use crate::proto::private::Node;

#[tonic::async_trait]
impl Management for Services {
    async fn get_register_ticket(
        &self,
        _: Request<GetRegisterTicketRequest>,
    ) -> Answer<GetRegisterTicketResponse> {
        let mut records = self.records.clone();
        let ticket = records
            .kv()
            .ensure(REGISTER_TICKET, &fresh_ticket()?)
            .await
            .map_err(CuratorError::from)?;
        Ok(Response::new(GetRegisterTicketResponse { ticket }))
    }

    async fn rotate_register_ticket(
        &self,
        _: Request<RotateRegisterTicketRequest>,
    ) -> Answer<RotateRegisterTicketResponse> {
        let ticket = fresh_ticket()?;
        let mut records = self.records.clone();
        records
            .kv()
            .put(REGISTER_TICKET, &ticket)
            .await
            .map_err(CuratorError::from)?;
        slog::warn!(
            self.log,
            "the register ticket was rotated; the old one registers no node"
        );
        Ok(Response::new(RotateRegisterTicketResponse { ticket }))
    }

    async fn get_pcr_requests(
        &self,
        _: Request<GetPcrRequestsRequest>,
    ) -> Answer<GetPcrRequestsResponse> {
        Ok(Response::new(GetPcrRequestsResponse {
            requests: self.pcr_requests().await?,
        }))
    }

    async fn decide_pcr_request(
        &self,
        request: Request<DecidePcrRequestRequest>,
    ) -> Answer<DecidePcrRequestResponse> {
        self.decide_pcr_request(request.into_inner()).await?;
        Ok(Response::new(DecidePcrRequestResponse {}))
    }

    async fn get_cluster_info(
        &self,
        _: Request<GetClusterInfoRequest>,
    ) -> Answer<GetClusterInfoResponse> {
        let (_, directory) = self.directory().await?;
        Ok(Response::new(GetClusterInfoResponse {
            cluster_directory: Some(directory),
            ca_certificate: self.ca_certificate().await?,
        }))
    }

    async fn get_nodes(&self, _: Request<GetNodesRequest>) -> Answer<GetNodesResponse> {
        let nodes = self.records.clone().list().await?;
        Ok(Response::new(GetNodesResponse {
            nodes: nodes
                .into_iter()
                .map(|n| {
                    let certificate_expires = self.certificate_expires(&n);
                    let retirement = n.retirement.unwrap_or_default();
                    api::Node {
                        pubkey: n.public_key,
                        state: n.fsm_state,
                        status: n.status,
                        roles: n.roles,
                        id: n.id,
                        retired: retirement.done,
                        retirement_waiting_on: retirement.waiting_on,
                        certificate_expires,
                    }
                })
                .collect(),
        }))
    }

    async fn approve_node(
        &self,
        request: Request<ApproveNodeRequest>,
    ) -> Answer<ApproveNodeResponse> {
        let id = node_id(&verifying_key(&request.get_ref().pubkey, "pubkey")?);
        self.records
            .clone()
            .update(&id, |current| records::approve(current, &id))
            .await?;
        slog::info!(self.log, "node approved"; "node" => &id);
        Ok(Response::new(ApproveNodeResponse {}))
    }

    async fn update_node_roles(
        &self,
        request: Request<UpdateNodeRolesRequest>,
    ) -> Answer<UpdateNodeRolesResponse> {
        let msg = request.into_inner();
        let mut records = self.records.clone();
        let node = records::existing(records.get(&msg.id).await?, &msg.id)?;
        records::require_up(&node)?;
        let has_consensus = records::is_consensus_member(&node);
        let member = match msg.consensus_member {
            Some(true) if !has_consensus => {
                let member = self.add_consensus_member(&node).await?;
                crate::crash_point::pass(&self.log, "curator:learner-added");
                Some(member)
            }
            Some(false) if has_consensus => {
                return Err(CuratorError::Unsupported(
                    "removing the consensus role is not supported",
                )
                .into())
            }
            _ => None,
        };
        let id = msg.id.clone();
        let written = records
            .update(&id, |current| {
                let node = records::existing(current, &id)?;
                // Checked again where it is written: a decommission may have come in between.
                records::require_up(node)?;
                let mut roles = node.roles.clone().unwrap_or_default();
                if let Some(member) = &member {
                    roles.consensus_member.get_or_insert_with(|| member.clone());
                }
                match msg.kubernetes_worker {
                    Some(true) => roles.kubernetes_worker = Some(KubernetesWorker {}),
                    Some(false) => roles.kubernetes_worker = None,
                    None => {}
                }
                let roles: NodeRoles = roles;
                Ok((node.roles.as_ref() != Some(&roles)).then(|| Node {
                    roles: Some(roles),
                    ..node.clone()
                }))
            })
            .await;
        if let Some(member) = &member {
            self.settle_added_member(&node, member, &written).await?;
        }
        written?;
        slog::info!(self.log, "node roles updated"; "node" => &msg.id);
        Ok(Response::new(UpdateNodeRolesResponse {}))
    }

    async fn decommission_node(
        &self,
        request: Request<DecommissionNodeRequest>,
    ) -> Answer<DecommissionNodeResponse> {
        let id = request.into_inner().id;
        // Decided against every record, so that two decommissions cannot both take away "the
        // other" consensus member; the reconciler ([`super::decommission`]) does the rest.
        self.records
            .clone()
            .update_against_all(&id, |nodes| records::decommission(nodes, &id))
            .await?;
        slog::warn!(self.log, "node decommissioned; its retirement is under way"; "node" => &id);
        Ok(Response::new(DecommissionNodeResponse {}))
    }
}

impl Services {
    /// When node `n`'s certificate expires (0 if it has none). A certificate that does not
    /// parse is logged and shown as none: one damaged record must not hide every node.
    fn certificate_expires(&self, n: &Node) -> i64 {
        if n.node_certificate.is_empty() {
            return 0;
        }
        not_after(&n.node_certificate).unwrap_or_else(|e| {
            slog::warn!(self.log, "a node certificate in the records does not parse";
                "node" => &n.id, "error" => %e);
            0
        })
    }
}

/// 32 random bytes for a register ticket.
fn fresh_ticket() -> Result<Vec<u8>, Status> {
    let mut fresh = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
        .map_err(|_| Status::internal("the operating system's random generator failed"))?;
    Ok(fresh)
}
