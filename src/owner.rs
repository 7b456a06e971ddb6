//! The owner's side of the Curator: taking ownership (Escrow with the bootstrap owner key), the
//! credentials that result (key, owner certificate, cluster CA: one directory), and the
//! management calls. Used by `polisctl` and the cluster tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ed25519_dalek::SigningKey;
use tonic::transport::Channel;

use crate::fsutil::{self, FsError, PUBLIC_MODE, SECRET_MODE};
use crate::grpc::{channel, GrpcError};
use crate::pki::{certificate_node_id, node_id, renewal_due};
use crate::proto::api::aaa_client::AaaClient;
use crate::proto::api::management_client::ManagementClient;
use crate::proto::api::{
    ApproveNodeRequest, DecidePcrRequestRequest, DecommissionNodeRequest, EscrowRequest,
    GetClusterInfoRequest, GetClusterInfoResponse, GetNodesRequest, GetPcrRequestsRequest,
    GetRegisterTicketRequest, Node, PcrRequest, RotateRegisterTicketRequest,
    UpdateNodeRolesRequest,
};
use crate::tls::{
    curator_client_config, first_use_client_config, verify_curator_certificate, Identity, TlsError,
    Trust,
};

/// Why an owner call failed.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// The Curator could not be reached.
    #[error(transparent)]
    Connect(#[from] GrpcError),
    /// The TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A decommissioned node is not retired yet (certificates revoked, etcd member removed).
    #[error("node {id} is decommissioned but not yet retired; waiting on: {waiting_on}")]
    NotRetired {
        /// The node.
        id: String,
        /// What the cluster is waiting on.
        waiting_on: String,
    },
    /// A credentials file could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The cluster's CA was not accepted on first use.
    #[error("the cluster CA (SHA-256 {fingerprint}) is not trusted: {why}")]
    CaRefused {
        /// The CA's fingerprint.
        fingerprint: String,
        /// Why not.
        why: String,
    },
    /// The owner key file does not hold a 32-byte Ed25519 seed.
    #[error("{0} does not hold an Ed25519 owner key (a 32-byte seed)")]
    BadKey(PathBuf),
    /// The server met on first use showed no Curator certificate of the CA it sent with it.
    #[error("the server at {address} is no Curator of the CA it sent: {reason}")]
    FirstUse {
        /// Where it was met.
        address: SocketAddr,
        /// What is wrong with its certificates.
        reason: String,
    },
    /// The Curator refused or failed.
    #[error("{call}: {status}")]
    Call {
        /// The call.
        call: &'static str,
        /// The Curator's answer.
        status: tonic::Status,
    },
}

/// How often a decommission's progress is read.
const RETIREMENT_POLL: Duration = Duration::from_millis(250);

/// Where a Curator is: its node ID (its certificate's name) and its address and port.
#[derive(Clone, Debug)]
pub struct CuratorAddress {
    /// The node ID.
    pub node_id: String,
    /// Where it serves the Curator.
    pub address: SocketAddr,
}

async fn open(
    curator: &CuratorAddress,
    ca: &[u8],
    identity: Identity,
) -> Result<Channel, OwnerError> {
    let trust = Trust::pinned(ca.to_vec());
    let config = curator_client_config(Some(identity), &trust)?;
    Ok(channel(curator.address, &curator.node_id, config).await?)
}

fn call(call: &'static str) -> impl FnOnce(tonic::Status) -> OwnerError {
    move |status| OwnerError::Call { call, status }
}

/// Take ownership: prove the owner key, get the owner certificate (the same one until it is
/// due for renewal, then a new one that replaces it).
pub async fn escrow(
    curator: &CuratorAddress,
    ca: &[u8],
    owner_key: &SigningKey,
) -> Result<Vec<u8>, OwnerError> {
    escrow_over(open(curator, ca, Identity::ephemeral(owner_key)?).await?).await
}

/// [`escrow`] over `channel`: a connection to a Curator checked against the accepted CA, as
/// pinned ones are ([`Met::channel`]), presenting the owner key.
pub async fn escrow_over(channel: Channel) -> Result<Vec<u8>, OwnerError> {
    let response = AaaClient::new(channel)
        .escrow(EscrowRequest {})
        .await
        .map_err(call("Escrow"))?;
    Ok(response.into_inner().owner_certificate)
}

/// What meeting a cluster for the first time gives ([`first_use`]).
pub struct Met {
    /// The cluster CA's certificate, as the Curator met sent it: for the caller to accept
    /// (e.g. by its fingerprint) before it asks anything more.
    pub ca: Vec<u8>,
    /// Where that Curator is.
    pub curator: CuratorAddress,
    /// The connection, whose server certificate was checked against `ca` as a pinned
    /// connection checks it: once `ca` is accepted, later calls can use it (presenting the
    /// owner key) and spare a handshake.
    pub channel: Channel,
}

/// Meet a cluster for the first time at `address` (a Curator's address and port): connect
/// trusting whoever answers (trust on first use; `owner_key` is the ephemeral client identity),
/// take the cluster CA from the chain the Curator sent in the handshake, learn its node ID from
/// its certificate, and check that certificate against that CA. Other connections pin the CA
/// and check the node's certificate against it.
pub async fn first_use(address: SocketAddr, owner_key: &SigningKey) -> Result<Met, OwnerError> {
    let (config, seen) = first_use_client_config(Identity::ephemeral(owner_key)?)?;
    // Any valid name: the first-use verifier does not match it.
    let channel = channel(address, "curator", config).await?;
    let shown = seen
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
        .unwrap_or_default();
    let refused = |e: &dyn std::fmt::Display| OwnerError::FirstUse {
        address,
        reason: e.to_string(),
    };
    let ca = shown
        .ca
        .ok_or_else(|| refused(&"the server sent no CA certificate after its own"))?;
    let node_id = certificate_node_id(&shown.certificate).map_err(|e| refused(&e))?;
    verify_curator_certificate(&ca, &shown.certificate, &node_id).map_err(|e| refused(&e))?;
    Ok(Met {
        ca,
        curator: CuratorAddress { node_id, address },
        channel,
    })
}

/// The files of an owner's credentials directory.
pub const KEY_FILE: &str = "owner.key";
/// The owner certificate Escrow issued.
pub const CERTIFICATE_FILE: &str = "owner.crt";
/// The cluster CA, as the owner met it (trust on first use, confirmed by its fingerprint).
pub const CA_FILE: &str = "ca.crt";

/// What an owner holds to manage a cluster, kept in one directory: the owner key (0400), the
/// owner certificate and the cluster CA.
#[derive(Clone)]
pub struct Credentials {
    /// The owner key.
    pub key: SigningKey,
    /// The owner certificate (DER).
    pub certificate: Vec<u8>,
    /// The cluster CA's certificate (DER).
    pub ca: Vec<u8>,
}

impl Credentials {
    /// The credentials kept in `dir`.
    pub fn load(dir: &Path) -> Result<Self, OwnerError> {
        Ok(Credentials {
            key: read_key(&dir.join(KEY_FILE))?,
            certificate: fsutil::read(&dir.join(CERTIFICATE_FILE))?,
            ca: fsutil::read(&dir.join(CA_FILE))?,
        })
    }

    /// Renew the owner certificate through Escrow at `curator` (by the owner key, which needs no
    /// certificate, so an expired one renews too) if it is due, two thirds into its life, and
    /// keep the new one in `dir`: what `polisctl` does before every owner call.
    pub async fn renew_if_due(
        &mut self,
        curator: &CuratorAddress,
        dir: &Path,
    ) -> Result<(), OwnerError> {
        if !renewal_due(&self.certificate) {
            return Ok(());
        }
        let renewed = escrow(curator, &self.ca, &self.key).await?;
        // The connection pinned the CA; the certificate must be for this key.
        if certificate_node_id(&renewed).ok() != Some(node_id(&self.key.verifying_key())) {
            return Err(OwnerError::Call {
                call: "Escrow",
                status: tonic::Status::internal(
                    "the renewed owner certificate is not for the owner key",
                ),
            });
        }
        self.certificate = renewed;
        fsutil::write_atomic(&dir.join(CERTIFICATE_FILE), &self.certificate, PUBLIC_MODE)?;
        Ok(())
    }

    /// Keep these credentials in `dir` (the key readable by its owner only).
    pub fn save(&self, dir: &Path) -> Result<(), OwnerError> {
        save_key(dir, &self.key)?;
        fsutil::write_atomic(&dir.join(CERTIFICATE_FILE), &self.certificate, PUBLIC_MODE)?;
        fsutil::write_atomic(&dir.join(CA_FILE), &self.ca, PUBLIC_MODE)?;
        Ok(())
    }
}

/// Keep `key` in `dir` as the owner key (a 32-byte seed, 0400), before ownership is taken.
pub fn save_key(dir: &Path, key: &SigningKey) -> Result<(), OwnerError> {
    let seed = zeroize::Zeroizing::new(key.to_bytes());
    Ok(fsutil::write_atomic(
        &dir.join(KEY_FILE),
        seed.as_slice(),
        SECRET_MODE,
    )?)
}

/// The owner key in the file at `path` (a 32-byte Ed25519 seed).
pub fn read_key(path: &Path) -> Result<SigningKey, OwnerError> {
    let seed = zeroize::Zeroizing::new(fsutil::read(path)?);
    let seed: [u8; 32] = seed
        .as_slice()
        .try_into()
        .map_err(|_| OwnerError::BadKey(path.to_owned()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Take ownership of the cluster whose Curator answers at `address` with `key` (the owner key
/// named at bootstrap): meet its CA (trust on first use), which `accept_ca` must accept (e.g.
/// by its fingerprint), then Escrow. Answers the credentials; the same every time for the same
/// key while the certificate is not due for renewal, as Escrow answers the same one.
pub async fn take_ownership(
    address: SocketAddr,
    key: SigningKey,
    accept_ca: impl FnOnce(&[u8]) -> Result<(), OwnerError>,
) -> Result<Credentials, OwnerError> {
    let met = first_use(address, &key).await?;
    accept_ca(&met.ca)?;
    let certificate = escrow_over(met.channel).await?;
    Ok(Credentials {
        key,
        certificate,
        ca: met.ca,
    })
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

    /// Connect as the owner to the Curator at `address`, knowing only where it is: its node ID
    /// is learnt from the certificate it shows, and the connection then made pins the CA of
    /// `credentials` and checks that certificate (chain, Curator mark, that name). The owner
    /// certificate is renewed first if it is due, and kept in `dir`.
    pub async fn at(
        address: SocketAddr,
        credentials: &mut Credentials,
        dir: &Path,
    ) -> Result<Self, OwnerError> {
        let curator = first_use(address, &credentials.key).await?.curator;
        credentials.renew_if_due(&curator, dir).await?;
        Owner::connect(
            &curator,
            &credentials.ca,
            &credentials.key,
            credentials.certificate.clone(),
        )
        .await
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

    /// Replace the register ticket; answers the new one. The old one registers no node from
    /// now on (a node whose registration is under way keeps the record it has).
    pub async fn rotate_ticket(&mut self) -> Result<Vec<u8>, OwnerError> {
        let response = self
            .client
            .rotate_register_ticket(RotateRegisterTicketRequest {})
            .await
            .map_err(call("RotateRegisterTicket"))?;
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

    /// The PCR 7 values nodes ask the owner to approve (undecided or refused).
    pub async fn pcr_requests(&mut self) -> Result<Vec<PcrRequest>, OwnerError> {
        let response = self
            .client
            .get_pcr_requests(GetPcrRequestsRequest {})
            .await
            .map_err(call("GetPcrRequests"))?;
        Ok(response.into_inner().requests)
    }

    /// Approve (or refuse) node `id`'s request for PCR 7 value `pcr7`, the value the owner was
    /// shown: a node that asks for another value meanwhile is not approved by this.
    pub async fn decide_pcr(
        &mut self,
        id: &str,
        pcr7: &[u8],
        approve: bool,
    ) -> Result<(), OwnerError> {
        self.client
            .decide_pcr_request(DecidePcrRequestRequest {
                id: id.to_owned(),
                requested_pcr7: pcr7.to_vec(),
                approve,
            })
            .await
            .map_err(call("DecidePcrRequest"))?;
        Ok(())
    }

    /// Decommission node `id`: from now on it is refused; the cluster retires it in the
    /// background (see [`Owner::wait_retired`]).
    pub async fn decommission(&mut self, id: &str) -> Result<(), OwnerError> {
        self.client
            .decommission_node(DecommissionNodeRequest { id: id.to_owned() })
            .await
            .map_err(call("DecommissionNode"))?;
        Ok(())
    }

    /// Wait (up to `patience`) until the cluster has retired decommissioned node `id`: its
    /// certificates revoked, its etcd member removed. `progress` hears what the cluster is
    /// waiting on whenever that changes.
    pub async fn wait_retired(
        &mut self,
        id: &str,
        patience: Duration,
        mut progress: impl FnMut(&str),
    ) -> Result<(), OwnerError> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut said = String::new();
        loop {
            // Retiring a member changes etcd's membership, which may elect a new leader: the
            // Curator is briefly unavailable, which is progress to report, not a failure.
            let waiting_on = match self.nodes().await {
                Ok(nodes) => {
                    let Some(node) = nodes.into_iter().find(|n| n.id == id) else {
                        return Err(OwnerError::NotRetired {
                            id: id.to_owned(),
                            waiting_on: "its record is gone".into(),
                        });
                    };
                    if node.retired {
                        return Ok(());
                    }
                    match node.retirement_waiting_on.as_str() {
                        "" => "the decommission reconciler".to_owned(),
                        reason => reason.to_owned(),
                    }
                }
                Err(OwnerError::Call { status, .. })
                    if status.code() == tonic::Code::Unavailable =>
                {
                    format!("the Curator, unavailable for now: {}", status.message())
                }
                Err(e) => return Err(e),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(OwnerError::NotRetired {
                    id: id.to_owned(),
                    waiting_on,
                });
            }
            if waiting_on != said {
                progress(&waiting_on);
                said = waiting_on;
            }
            tokio::time::sleep(RETIREMENT_POLL).await;
        }
    }
}
