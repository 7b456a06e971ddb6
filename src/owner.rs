//! The owner's side of the Curator: taking ownership (Escrow with the bootstrap owner key) and
//! the management calls (with the owner certificate). Used by `polisctl` and the cluster tests.

use std::net::{IpAddr, SocketAddr};

use ed25519_dalek::SigningKey;
use tonic::transport::Channel;

use crate::curator::CURATOR_PORT;
use crate::grpc::{channel, GrpcError};
use crate::pki::certificate_node_id;
use crate::proto::api::aaa_client::AaaClient;
use crate::proto::api::management_client::ManagementClient;
use crate::proto::api::{
    ApproveNodeRequest, DecommissionNodeRequest, EscrowRequest, GetClusterInfoRequest,
    GetClusterInfoResponse, GetNodesRequest, GetRegisterTicketRequest, Node,
    UpdateNodeRolesRequest,
};
use crate::proto::curator::curator_local_client::CuratorLocalClient;
use crate::proto::curator::GetCaCertificateRequest;
use crate::tls::{curator_client_config, first_use_client_config, Identity, TlsError, Trust};

/// Why an owner call failed.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// The Curator could not be reached.
    #[error(transparent)]
    Connect(#[from] GrpcError),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The Curator refused or failed.
    #[error("{call}: {status}")]
    Call {
        /// The call.
        call: &'static str,
        /// The Curator's answer.
        status: tonic::Status,
    },
}

/// Where a Curator is: its node ID (its certificate's name) and address.
#[derive(Clone, Debug)]
pub struct CuratorAddress {
    /// The node ID.
    pub node_id: String,
    /// The node's address.
    pub address: IpAddr,
}

async fn open(
    curator: &CuratorAddress,
    ca: &[u8],
    identity: Identity,
) -> Result<Channel, OwnerError> {
    let trust = Trust::pinned(ca.to_vec());
    let config = curator_client_config(Some(identity), &trust)?;
    let addr = SocketAddr::new(curator.address, CURATOR_PORT);
    Ok(channel(addr, &curator.node_id, config).await?)
}

fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> OwnerError {
    move |status| OwnerError::Call { call, status }
}

/// Take ownership: prove the owner key, get the owner certificate (the same one every time).
pub async fn escrow(
    curator: &CuratorAddress,
    ca: &[u8],
    owner_key: &SigningKey,
) -> Result<Vec<u8>, OwnerError> {
    let channel = open(curator, ca, Identity::ephemeral(owner_key)?).await?;
    let response = AaaClient::new(channel)
        .escrow(EscrowRequest {})
        .await
        .map_err(call("Escrow"))?;
    Ok(response.into_inner().owner_certificate)
}

/// Meet a cluster for the first time at `address`: ask the Curator there for the cluster CA
/// over a connection that trusts whoever answers (trust on first use; `owner_key` is the
/// ephemeral client identity), and learn that Curator's node ID from its certificate. Later
/// calls pin the CA and check the node's certificate against it.
pub async fn first_use(
    address: IpAddr,
    owner_key: &SigningKey,
) -> Result<(Vec<u8>, CuratorAddress), OwnerError> {
    let (config, seen) = first_use_client_config(Identity::ephemeral(owner_key)?)?;
    // Any valid name: the first-use verifier does not match it.
    let channel = channel(SocketAddr::new(address, CURATOR_PORT), "curator", config).await?;
    let ca = CuratorLocalClient::new(channel)
        .get_ca_certificate(GetCaCertificateRequest {})
        .await
        .map_err(call("GetCACertificate"))?
        .into_inner()
        .ca_certificate;
    let seen = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or_default();
    let node_id = certificate_node_id(&seen).map_err(|e| OwnerError::Call {
        call: "GetCACertificate",
        status: tonic::Status::internal(format!("the server's certificate: {e}")),
    })?;
    Ok((ca, CuratorAddress { node_id, address }))
}

/// The owner's management client (cheap to clone: clones share the connection).
#[derive(Clone)]
pub struct Owner {
    client: ManagementClient<Channel>,
}

impl Owner {
    /// Connect to `curator` as the owner (key and owner certificate), pinning `ca`.
    pub async fn connect(
        curator: &CuratorAddress,
        ca: &[u8],
        owner_key: &SigningKey,
        owner_certificate: Vec<u8>,
    ) -> Result<Self, OwnerError> {
        let identity = Identity::new(owner_key, owner_certificate)?;
        Ok(Owner {
            client: ManagementClient::new(open(curator, ca, identity).await?),
        })
    }

    /// The current register ticket.
    pub async fn ticket(&mut self) -> Result<Vec<u8>, OwnerError> {
        let response = self
            .client
            .get_register_ticket(GetRegisterTicketRequest {})
            .await
            .map_err(call("GetRegisterTicket"))?;
        Ok(response.into_inner().ticket)
    }

    /// The directory and CA.
    pub async fn cluster_info(&mut self) -> Result<GetClusterInfoResponse, OwnerError> {
        let response = self
            .client
            .get_cluster_info(GetClusterInfoRequest {})
            .await
            .map_err(call("GetClusterInfo"))?;
        Ok(response.into_inner())
    }

    /// Every node.
    pub async fn nodes(&mut self) -> Result<Vec<Node>, OwnerError> {
        let response = self
            .client
            .get_nodes(GetNodesRequest {})
            .await
            .map_err(call("GetNodes"))?;
        Ok(response.into_inner().nodes)
    }

    /// Approve the node with this public key.
    pub async fn approve(&mut self, pubkey: &[u8]) -> Result<(), OwnerError> {
        self.client
            .approve_node(ApproveNodeRequest {
                pubkey: pubkey.to_vec(),
            })
            .await
            .map_err(call("ApproveNode"))?;
        Ok(())
    }

    /// Give node `id` the consensus role.
    pub async fn make_consensus_member(&mut self, id: &str) -> Result<(), OwnerError> {
        self.client
            .update_node_roles(UpdateNodeRolesRequest {
                id: id.to_owned(),
                consensus_member: Some(true),
                kubernetes_worker: None,
            })
            .await
            .map_err(call("UpdateNodeRoles"))?;
        Ok(())
    }

    /// Decommission node `id`.
    pub async fn decommission(&mut self, id: &str) -> Result<(), OwnerError> {
        self.client
            .decommission_node(DecommissionNodeRequest { id: id.to_owned() })
            .await
            .map_err(call("DecommissionNode"))?;
        Ok(())
    }
}
