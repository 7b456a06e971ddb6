//! The Curator's RPC handlers: node-facing (`Curator`, `CuratorLocal`) and owner-facing
//! (`Management`, `AAA`). Every handler authorizes by the caller's TLS certificate, which the
//! acceptor verified: an ephemeral certificate proves a key (node key, join key, owner key); a
//! CA-issued one is checked against the certificate the Curator recorded for its holder.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use ed25519_dalek::VerifyingKey;
use futures::Stream;
use polis_actors::ActorRef;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::consensus::{peer_ca, AddLearner, Consensus, NamespacedKv, PEER_CRL_KEY, PEER_PORT};
use crate::curator::decommission::{remove_consensus_member, revoke_peer_certificate};
use crate::curator::escrow;
use crate::curator::records::{self, Records, OWNER_CERTIFICATE, REGISTER_TICKET};
use crate::curator::CuratorError;
use crate::grpc::Peer;
use crate::issuer::{GetCaCertificate, Issue, Issuer, CRL_KEY};
use crate::pki::{node_id, Template};
use crate::proto::api::aaa_server::Aaa;
use crate::proto::api::management_server::Management;
use crate::proto::api::{self, *};
use crate::proto::common::node_roles::{consensus_member, ConsensusMember, KubernetesWorker};
use crate::proto::common::{ClusterDirectory, NodeRoles, NodeState};
use crate::proto::curator::curator_local_server::CuratorLocal;
use crate::proto::curator::curator_server::Curator;
use crate::proto::curator::*;
use crate::proto::private::Node;

/// The most shares one ConfirmShares may confirm (a holder holds one per other member).
const MAX_CONFIRMED_SHARES: usize = 64;

/// The handlers, sharing etcd clients and the actors they ask.
#[derive(Clone)]
pub struct Services {
    records: Records,
    peer_kv: NamespacedKv,
    pki_kv: NamespacedKv,
    issuer: ActorRef<Issuer>,
    consensus: ActorRef<Consensus>,
    watch_slots: WatchSlots,
    /// The cluster CA's certificate, once the issuer has answered it: it never changes, and the
    /// unauthenticated GetCACertificate must not queue in the issuer's mailbox.
    ca: Arc<tokio::sync::OnceCell<Vec<u8>>>,
    log: slog::Logger,
}

impl Services {
    /// Handlers over `records` (the Curator namespace), `peer_kv` (the consensus namespace, for
    /// the peer CA) and `pki_kv` (the PKI namespace, for the cluster CRL), issuing through
    /// `issuer` and adding members through `consensus`.
    pub fn new(
        records: Records,
        peer_kv: NamespacedKv,
        pki_kv: NamespacedKv,
        issuer: ActorRef<Issuer>,
        consensus: ActorRef<Consensus>,
        log: slog::Logger,
    ) -> Self {
        Services {
            records,
            peer_kv,
            pki_kv,
            issuer,
            consensus,
            watch_slots: WatchSlots::default(),
            ca: Arc::default(),
            log,
        }
    }

    /// The cluster CA's certificate, asked of the issuer once per incarnation.
    async fn ca_certificate(&self) -> Result<Vec<u8>, CuratorError> {
        let ca = self
            .ca
            .get_or_try_init(|| async {
                Ok::<_, CuratorError>(self.issuer.ask(GetCaCertificate).await??)
            })
            .await?;
        Ok(ca.clone())
    }

    /// The directory as it stands: the records and the cluster CA's current CRL.
    async fn directory(&self) -> Result<(Vec<Node>, ClusterDirectory), CuratorError> {
        let nodes = self.records.clone().list().await?;
        let crl = self.pki_kv.clone().get(CRL_KEY).await?.unwrap_or_default();
        let directory = records::directory(&nodes, crl);
        Ok((nodes, directory))
    }

    /// The caller must hold the owner certificate that Escrow issued (`presented`, from its TLS
    /// handshake). Checked for every Management call by [`super::owner_only::OwnerOnly`].
    pub(super) async fn check_owner(&self, presented: Option<&[u8]>) -> Result<(), CuratorError> {
        let presented = presented.ok_or(CuratorError::Unauthenticated)?;
        let mut records = self.records.clone();
        match records.kv().get(OWNER_CERTIFICATE).await? {
            Some(owner) if bool::from(owner.as_slice().ct_eq(presented)) => Ok(()),
            _ => Err(CuratorError::NotOwner),
        }
    }

    /// The caller must present the node certificate recorded for its key: answers its record.
    async fn node<T>(&self, request: &Request<T>) -> Result<Node, CuratorError> {
        let presented = caller_certificate(request)?.to_vec();
        let id = node_id(&caller_key(request)?);
        let node = self
            .records
            .clone()
            .get(&id)
            .await?
            .ok_or_else(|| CuratorError::UnknownNode(id.clone()))?;
        if node.node_certificate.is_empty() || node.node_certificate != presented {
            return Err(CuratorError::Unauthenticated);
        }
        if node.fsm_state == NodeState::Decommissioned as i32 {
            return Err(CuratorError::Decommissioned(id));
        }
        Ok(node)
    }

    /// Give node `node` the consensus role: a peer certificate for its node key, a place in
    /// etcd as a learner, and the role in its record, in that order (each step repeatable).
    async fn add_consensus_member(&self, node: &Node) -> Result<ConsensusMember, CuratorError> {
        let mut peer_kv = self.peer_kv.clone();
        let ca = peer_ca(&mut peer_kv).await?;
        let crl = peer_kv.ensure(PEER_CRL_KEY, &ca.crl(1, &[])?).await?;
        let host = external_address(node);
        let ip = host.parse().map_err(|_| CuratorError::Invalid {
            field: "external_address",
            reason: format!("node {} has no usable address ({host:?})", node.id),
        })?;
        let public = verifying_key(&node.public_key, "public_key")?;
        let template = Template::Peer {
            name: node.id.clone(),
            dns: vec![node.id.clone()],
            ips: vec![ip],
        };
        let certificate = ca.issue(&template, &public)?;
        let initial_cluster = self
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
            peers: parse_initial_cluster(&initial_cluster),
        })
    }
}

impl Services {
    /// After `member` was made for `node` and its record written (or not, `written`): if the
    /// record did not take it (the node was decommissioned meanwhile), take the etcd seat and
    /// the peer certificate back; if a concurrent call's member won, revoke this one's unused
    /// peer certificate.
    async fn settle_added_member(
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

/// How many Watch streams one node may hold open at once: a node needs one, a few more cover
/// reconnects the Curator has not noticed yet; no node can make a Curator hold unbounded state.
pub const MAX_WATCHES_PER_NODE: usize = 4;

/// Open Watch streams per node ID.
#[derive(Clone, Default)]
struct WatchSlots(Arc<Mutex<HashMap<String, usize>>>);

/// One node's claim on a Watch stream, given back when dropped.
struct WatchSlot {
    slots: WatchSlots,
    id: String,
}

impl WatchSlots {
    /// A slot for node `id`, unless it holds [`MAX_WATCHES_PER_NODE`] already.
    fn claim(&self, id: &str) -> Result<WatchSlot, CuratorError> {
        let mut open = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        let count = open.entry(id.to_owned()).or_default();
        if *count >= MAX_WATCHES_PER_NODE {
            return Err(CuratorError::TooManyWatches(id.to_owned()));
        }
        *count += 1;
        Ok(WatchSlot {
            slots: self.clone(),
            id: id.to_owned(),
        })
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        let mut open = self.slots.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&self.id) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.id);
            }
        }
    }
}

/// 32 random bytes for a register ticket.
fn fresh_ticket() -> Result<Vec<u8>, Status> {
    let mut fresh = vec![0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut fresh)
        .map_err(|_| Status::internal("the operating system's random generator failed"))?;
    Ok(fresh)
}

/// The address a node reported (empty if none).
fn external_address(node: &Node) -> &str {
    node.status
        .as_ref()
        .map(|s| s.external_address.as_str())
        .unwrap_or_default()
}

/// Where other etcd members reach `node`, as it is added and removed.
pub(super) fn peer_url(node: &Node) -> String {
    format!("https://{}:{PEER_PORT}", external_address(node))
}

/// `name=https://host:port,…` as peers; members that are not of that form are left out. The
/// fuzz target `initial_cluster` checks it against [`initial_cluster`], its inverse.
pub fn parse_initial_cluster(initial_cluster: &str) -> Vec<consensus_member::Peer> {
    initial_cluster
        .split(',')
        .filter_map(|member| {
            let (name, url) = member.split_once('=')?;
            let authority = url.strip_prefix("https://")?;
            let (host, port) = authority.rsplit_once(':')?;
            Some(consensus_member::Peer {
                name: name.to_owned(),
                port: port.parse().ok()?,
                host: host.to_owned(),
            })
        })
        .collect()
}

/// The `--initial-cluster` value of `peers` (the inverse of [`parse_initial_cluster`]).
pub fn initial_cluster(peers: &[consensus_member::Peer]) -> String {
    peers
        .iter()
        .map(|p| format!("{}=https://{}:{}", p.name, p.host, p.port))
        .collect::<Vec<_>>()
        .join(",")
}

fn caller_certificate<T>(request: &Request<T>) -> Result<&[u8], CuratorError> {
    request
        .extensions()
        .get::<Peer>()
        .and_then(|p| p.certificate.as_deref())
        .ok_or(CuratorError::Unauthenticated)
}

fn caller_key<T>(request: &Request<T>) -> Result<VerifyingKey, CuratorError> {
    let key = request
        .extensions()
        .get::<Peer>()
        .and_then(Peer::public_key)
        .ok_or(CuratorError::Unauthenticated)?;
    VerifyingKey::from_bytes(&key).map_err(|_| CuratorError::Unauthenticated)
}

fn verifying_key(bytes: &[u8], field: &'static str) -> Result<VerifyingKey, CuratorError> {
    let invalid = |reason: String| CuratorError::Invalid { field, reason };
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| invalid(format!("an Ed25519 key is 32 bytes, got {}", bytes.len())))?;
    VerifyingKey::from_bytes(&array).map_err(|e| invalid(e.to_string()))
}

fn check_len(bytes: &[u8], field: &'static str) -> Result<(), CuratorError> {
    if bytes.len() != 32 {
        return Err(CuratorError::Invalid {
            field,
            reason: format!("must be 32 bytes, got {}", bytes.len()),
        });
    }
    Ok(())
}

/// A node's reported address must be an IP address: it becomes its etcd peer URL and its
/// directory entry, so a name or a URL fragment there would point elsewhere.
fn check_address(address: &str, field: &'static str) -> Result<(), CuratorError> {
    address
        .parse::<std::net::IpAddr>()
        .map(drop)
        .map_err(|_| CuratorError::Invalid {
            field,
            reason: format!("{address:?} is not an IP address"),
        })
}

/// What a node's Watch sees.
fn watch_event(nodes: &[Node], directory: ClusterDirectory, id: &str) -> WatchEvent {
    let own = nodes.iter().find(|n| n.id == id);
    WatchEvent {
        directory: Some(directory),
        roles: own.and_then(|n| n.roles.clone()),
        state: own.map_or(NodeState::Invalid as i32, |n| n.fsm_state),
        held_shares: escrow::held_shares(nodes, id),
        keep_cluster_unlock_key: escrow::keeps_cluster_unlock_key(nodes, id),
    }
}

type Answer<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl Curator for Services {
    async fn register_node(
        &self,
        request: Request<RegisterNodeRequest>,
    ) -> Answer<RegisterNodeResponse> {
        let public = caller_key(&request)?;
        let msg = request.get_ref();
        check_len(&msg.join_key, "join_key")?;
        check_address(&msg.external_address, "external_address")?;
        let mut records = self.records.clone();
        let ticket = records
            .kv()
            .get(REGISTER_TICKET)
            .await
            .map_err(CuratorError::from)?;
        match ticket {
            Some(t) if bool::from(t.as_slice().ct_eq(&msg.register_ticket)) => {}
            _ => return Err(CuratorError::WrongTicket.into()),
        }
        let id = node_id(&public);
        records
            .update(&id, |current| {
                records::register(
                    current,
                    &id,
                    public.as_bytes(),
                    &msg.join_key,
                    &msg.external_address,
                )
            })
            .await?;
        slog::info!(self.log, "node registered"; "node" => &id);
        Ok(Response::new(RegisterNodeResponse {}))
    }

    async fn commit_node(&self, request: Request<CommitNodeRequest>) -> Answer<CommitNodeResponse> {
        let public = caller_key(&request)?;
        let cuk = &request.get_ref().cluster_unlock_key;
        check_len(cuk, "cluster_unlock_key")?;
        let id = node_id(&public);
        let mut records = self.records.clone();
        let node = loop {
            let current = records.get(&id).await?;
            // A certificate is issued only for a node that may commit now; the record decides.
            let certificate = match current.as_ref().map(|n| n.fsm_state) {
                Some(s) if s == NodeState::Standby as i32 => {
                    let template = Template::Node {
                        node_id: id.clone(),
                    };
                    self.issuer
                        .ask(Issue(template, public))
                        .await
                        .map_err(CuratorError::from)?
                        .map_err(CuratorError::from)?
                        .der
                }
                _ => Vec::new(),
            };
            match records
                .update(&id, |current| {
                    records::commit(current, &id, cuk, &certificate)
                })
                .await
            {
                // Approved between the read and the write: read again, and issue this time.
                Err(CuratorError::ApprovedMeanwhile(_)) => continue,
                committed => break committed?,
            }
        };
        slog::info!(self.log, "node committed"; "node" => &id);
        Ok(Response::new(CommitNodeResponse {
            ca_certificate: self.ca_certificate().await?,
            node_certificate: node.node_certificate,
        }))
    }

    async fn join_node(&self, request: Request<JoinNodeRequest>) -> Answer<JoinNodeResponse> {
        let join_key = caller_key(&request)?;
        let address = request.get_ref().external_address.clone();
        if !address.is_empty() {
            check_address(&address, "external_address")?;
        }
        let mut records = self.records.clone();
        let node = records
            .by_join_key(join_key.as_bytes())
            .await?
            .ok_or_else(|| {
                CuratorError::UnknownNode(format!(
                    "with join key {}",
                    crate::pki::hex(join_key.as_bytes())
                ))
            })?;
        let id = node.id.clone();
        let node = records
            .update(&id, |current| {
                let node = current.ok_or_else(|| CuratorError::UnknownNode(id.clone()))?;
                match NodeState::try_from(node.fsm_state) {
                    Ok(NodeState::Up) => {}
                    Ok(NodeState::Decommissioned) => {
                        return Err(CuratorError::Decommissioned(id.clone()))
                    }
                    _ => {
                        return Err(CuratorError::WrongState {
                            id: id.clone(),
                            state: records::state_name(node.fsm_state),
                            wanted: "UP",
                        })
                    }
                }
                let moved = !address.is_empty()
                    && node.status.as_ref().map(|s| s.external_address.as_str())
                        != Some(address.as_str());
                Ok(moved.then(|| Node {
                    status: Some(records::status(&address)),
                    ..node.clone()
                }))
            })
            .await?;
        slog::info!(self.log, "node joined"; "node" => &id);
        Ok(Response::new(JoinNodeResponse {
            cluster_unlock_key: node.cluster_unlock_key,
        }))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

    async fn watch(&self, request: Request<WatchRequest>) -> Answer<Self::WatchStream> {
        let id = self.node(&request).await?.id;
        let slot = self.watch_slots.claim(&id)?;
        // Records and CRL are both watched before the first read, so no change is missed.
        let mut node_changes = self.records.clone().watch().await?;
        let mut crl_changes = self
            .pki_kv
            .clone()
            .watch(CRL_KEY)
            .await
            .map_err(CuratorError::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let services = self.clone();
        tokio::spawn(async move {
            // Held until the stream ends, however it ends (the client going away included).
            let _slot = slot;
            let mut last = None;
            loop {
                let event = match services.directory().await {
                    Ok((nodes, directory)) => watch_event(&nodes, directory, &id),
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                };
                if last.as_ref() != Some(&event) {
                    if tx.send(Ok(event.clone())).await.is_err() {
                        return;
                    }
                    last = Some(event);
                }
                let changed = tokio::select! {
                    m = node_changes.message() => matches!(m, Ok(Some(_))),
                    m = crl_changes.message() => matches!(m, Ok(Some(_))),
                    _ = tx.closed() => return,
                };
                if !changed {
                    let _ = tx
                        .send(Err(Status::unavailable("the etcd watch ended")))
                        .await;
                    return;
                }
            }
        });
        let events = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|event| (event, rx))
        });
        Ok(Response::new(Box::pin(events)))
    }

    async fn confirm_shares(
        &self,
        request: Request<ConfirmSharesRequest>,
    ) -> Answer<ConfirmSharesResponse> {
        let holder = self.node(&request).await?.id;
        let sealed = &request.get_ref().sealed;
        if sealed.len() > MAX_CONFIRMED_SHARES {
            return Err(CuratorError::Invalid {
                field: "sealed",
                reason: format!("more than {MAX_CONFIRMED_SHARES} shares"),
            }
            .into());
        }
        let mut records = self.records.clone();
        for share in sealed {
            let confirmed = records
                .update(&share.owner, |current| {
                    Ok(current.and_then(|owner| escrow::confirm(owner, &holder, share.generation)))
                })
                .await;
            match confirmed {
                // An owner whose record is gone has no split to confirm.
                Ok(_) | Err(CuratorError::UnknownNode(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        slog::info!(self.log, "held shares confirmed"; "node" => &holder, "shares" => sealed.len());
        Ok(Response::new(ConfirmSharesResponse {}))
    }
}

#[tonic::async_trait]
impl CuratorLocal for Services {
    async fn get_ca_certificate(
        &self,
        _: Request<GetCaCertificateRequest>,
    ) -> Answer<GetCaCertificateResponse> {
        Ok(Response::new(GetCaCertificateResponse {
            ca_certificate: self.ca_certificate().await?,
        }))
    }
}

#[tonic::async_trait]
impl Aaa for Services {
    async fn escrow(&self, request: Request<EscrowRequest>) -> Answer<EscrowResponse> {
        let key = caller_key(&request)?;
        let mut records = self.records.clone();
        let owner = records
            .kv()
            .get(records::INITIAL_OWNER)
            .await
            .map_err(CuratorError::from)?;
        match owner {
            Some(o) if bool::from(o.as_slice().ct_eq(key.as_bytes())) => {}
            _ => return Err(CuratorError::NotInitialOwner.into()),
        }
        if let Some(certificate) = records
            .kv()
            .get(OWNER_CERTIFICATE)
            .await
            .map_err(CuratorError::from)?
        {
            return Ok(Response::new(EscrowResponse {
                owner_certificate: certificate,
            }));
        }
        let template = Template::Client {
            common_name: "owner".into(),
        };
        let issued = self
            .issuer
            .ask(Issue(template, key))
            .await
            .map_err(CuratorError::from)?
            .map_err(CuratorError::from)?;
        // Of two concurrent escrows, both answer the certificate that was stored first.
        let certificate = records
            .kv()
            .ensure(OWNER_CERTIFICATE, &issued.der)
            .await
            .map_err(CuratorError::from)?;
        slog::info!(self.log, "the owner took ownership");
        Ok(Response::new(EscrowResponse {
            owner_certificate: certificate,
        }))
    }
}

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
                    let retirement = n.retirement.unwrap_or_default();
                    api::Node {
                        pubkey: n.public_key,
                        state: n.fsm_state,
                        status: n.status,
                        roles: n.roles,
                        id: n.id,
                        retired: retirement.done,
                        retirement_waiting_on: retirement.waiting_on,
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
        let node = records
            .get(&msg.id)
            .await?
            .ok_or_else(|| CuratorError::UnknownNode(msg.id.clone()))?;
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
                let Some(node) = current else {
                    return Err(CuratorError::UnknownNode(id.clone()));
                };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initial_cluster_round_trips_through_peers() {
        let text = "a=https://198.18.0.2:7834,b=https://198.18.0.3:7834";
        let peers = parse_initial_cluster(text);
        assert_eq!(peers.len(), 2);
        assert_eq!(peers[1].name, "b");
        assert_eq!(peers[1].host, "198.18.0.3");
        assert_eq!(peers[1].port, 7834);
        assert_eq!(initial_cluster(&peers), text);
        assert!(parse_initial_cluster("garbage").is_empty());
    }
}
