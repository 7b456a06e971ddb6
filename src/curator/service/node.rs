//! The node-facing `Curator` service: RegisterNode, CommitNode, JoinNode, Watch, ConfirmShares.

use std::pin::Pin;

use ed25519_dalek::VerifyingKey;
use futures::Stream;
use tonic::{Request, Response, Status};

use super::auth::{caller_key, check_address, check_len, matches_stored, verifying_key};
use super::{Answer, Services};
use crate::curator::escrow;
use crate::curator::mirror::NodeMirror;
use crate::curator::records::{self, REGISTER_TICKET};
use crate::curator::CuratorError;
use crate::issuer::{Issue, IssueRecording, CRL_KEY};
use crate::pki::{self, node_id, Template};
use crate::proto::common::{ClusterDirectory, NodeState};
use crate::proto::curator::curator_server::Curator;
use crate::proto::curator::*;
use crate::proto::private::Node;
use crate::tpm::policy::{self, DIGEST_LEN, POINT_LEN};

/// How often a Curator notes in a node's record that the node's Watch is still open.
const LAST_SEEN_EVERY: std::time::Duration = std::time::Duration::from_secs(60);
/// How long noting that may take before it is given up (etcd away): the Watch goes on.
const LAST_SEEN_PATIENCE: std::time::Duration = std::time::Duration::from_secs(5);

/// The most shares one ConfirmShares may confirm (a holder holds one per other member).
const MAX_CONFIRMED_SHARES: usize = 64;

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
        check_recovery(msg)?;
        let id = node_id(&public);
        // The ticket is read while the record is: nothing is written unless it matches.
        let mut global = self.records.clone();
        let ticket_matches = async move {
            let ticket = global.kv().get(REGISTER_TICKET).await?;
            match matches_stored(ticket, &msg.register_ticket) {
                true => Ok(()),
                false => Err(CuratorError::WrongTicket),
            }
        };
        self.records
            .clone()
            .update_alongside(&id, ticket_matches, |current, ()| {
                let registration = records::Registration {
                    public_key: public.as_bytes(),
                    join_key: &msg.join_key,
                    address: &msg.external_address,
                    recovery_key: &msg.recovery_key,
                    pcr7: &msg.pcr7,
                };
                records::register(current, &id, registration)
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
        // The issuer's record of the certificate, written while the node's is.
        let mut recording = None;
        let node = loop {
            let current = records.get(&id).await?;
            // A certificate is issued only for a node that may commit now; the record decides.
            // It is issued while the record is read again for the transaction.
            let standby = current.as_ref().map(|n| n.fsm_state) == Some(NodeState::Standby as i32);
            let certificate = async {
                if !standby {
                    return Ok(Vec::new());
                }
                let template = Template::Node {
                    node_id: id.clone(),
                };
                let (issued, recorded) =
                    self.issuer.ask(IssueRecording(template, public)).await??;
                recording = Some(recorded);
                Ok(issued.der)
            };
            match records
                .update_alongside(&id, certificate, |current, certificate| {
                    records::commit(current, &id, cuk, certificate)
                })
                .await
            {
                // Approved between the read and the write: read again, and issue this time.
                Err(CuratorError::ApprovedMeanwhile(_)) => continue,
                committed => break committed?,
            }
        };
        if let Some(recording) = recording {
            recording.done().await.map_err(CuratorError::from)?;
        }
        let approval = match node.pcr7.is_empty() {
            true => None,
            false => Some(self.approve_pcr(&id, &node.pcr7).await?),
        };
        slog::info!(self.log, "node committed"; "node" => &id);
        let (pcr_policy_key, pcr7_approval) = approval
            .map(|a| (a.policy_key, a.signature))
            .unwrap_or_default();
        Ok(Response::new(CommitNodeResponse {
            ca_certificate: self.ca_certificate().await?,
            node_certificate: node.node_certificate,
            pcr_policy_key,
            pcr7_approval,
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
                let node = records::existing(current, &id)?;
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
        // A node that was off past two thirds of its certificate's life (or past its end)
        // rejoins with a new one: it could not renew it by itself.
        let due = pki::renewal_due(&node.node_certificate);
        let node = match due {
            true => {
                let public = verifying_key(&node.public_key, "the record's public key")?;
                self.reissue(&id, public).await?
            }
            false => node,
        };
        slog::info!(self.log, "node joined"; "node" => &id, "certificate_renewed" => due);
        Ok(Response::new(JoinNodeResponse {
            cluster_unlock_key: node.cluster_unlock_key,
            node_certificate: node.node_certificate,
        }))
    }

    async fn renew_certificate(
        &self,
        request: Request<RenewCertificateRequest>,
    ) -> Answer<RenewCertificateResponse> {
        // Authorized by the certificate the record holds now, so one renewal answers one
        // certificate: the old one can never renew again.
        let id = self.node(&request).await?.id;
        let node = self.reissue(&id, caller_key(&request)?).await?;
        slog::info!(self.log, "node certificate renewed"; "node" => &id);
        Ok(Response::new(RenewCertificateResponse {
            node_certificate: node.node_certificate,
        }))
    }

    async fn request_pcr_approval(
        &self,
        request: Request<RequestPcrApprovalRequest>,
    ) -> Answer<RequestPcrApprovalResponse> {
        // Authorized by the recovery signature alone: the node's keys are on its locked data
        // partition, so its TLS identity is ephemeral.
        Ok(Response::new(
            self.request_pcr_approval(request.into_inner()).await?,
        ))
    }

    type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

    async fn watch(&self, request: Request<WatchRequest>) -> Answer<Self::WatchStream> {
        let id = self.node(&request).await?.id;
        let slot = self.watch_slots.claim(&id)?;
        // Records and CRL are both watched before the first read, so no change is missed; the
        // records are kept in a mirror, not listed again on every change.
        let mut mirror = NodeMirror::open(&mut self.records.clone()).await?;
        let mut crl_changes = self
            .pki_kv
            .clone()
            .watch(CRL_KEY, None)
            .await
            .map_err(CuratorError::from)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let services = self.clone();
        tokio::spawn(async move {
            // Held until the stream ends, however it ends (the client going away included).
            let slot = slot;
            services.mark_seen(&id).await;
            let mut heartbeat = tokio::time::interval(LAST_SEEN_EVERY);
            heartbeat.tick().await;
            let mut last = None;
            // The CRL as last read; read again after it changes.
            let mut crl = None;
            let ended: Result<(), Status> = async {
                loop {
                    let current = match crl.take() {
                        Some(current) => current,
                        None => services.crl().await?,
                    };
                    let nodes = mirror.nodes();
                    let directory = records::directory(nodes, current.clone());
                    let event = watch_event(nodes, directory, &id);
                    crl = Some(current);
                    if last.as_ref() != Some(&event) {
                        if tx.send(Ok(event.clone())).await.is_err() {
                            return Ok(());
                        }
                        last = Some(event);
                    }
                    tokio::select! {
                        changed = mirror.changed() => changed.map_err(|e| {
                            Status::unavailable(format!("the etcd watch ended: {e}"))
                        })?,
                        m = crl_changes.message() => match m {
                            Ok(Some(_)) => crl = None,
                            _ => return Err(Status::unavailable("the etcd watch of the CRL ended")),
                        },
                        _ = heartbeat.tick() => services.mark_seen(&id).await,
                        _ = tx.closed() => return Ok(()),
                    }
                }
            }
            .await;
            drop(slot);
            if let Err(status) = ended {
                let _ = tx.send(Err(status)).await;
            }
            services.mark_seen(&id).await;
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

impl Services {
    /// Issue node `id` a new node certificate for `public` and record it, while the node is
    /// UP; answers the record as written.
    async fn reissue(&self, id: &str, public: VerifyingKey) -> Result<Node, CuratorError> {
        let template = Template::Node {
            node_id: id.to_owned(),
        };
        let issued = self.issuer.ask(Issue(template, public)).await??.der;
        self.records
            .clone()
            .update(id, |current| {
                let node = records::existing(current, id)?;
                records::require_up(node)?;
                Ok(Some(Node {
                    node_certificate: issued.clone(),
                    ..node.clone()
                }))
            })
            .await
    }

    /// Note in node `id`'s record that a Curator hears from it now. A failure, or etcd taking
    /// longer than [`LAST_SEEN_PATIENCE`], is logged, not fatal: the Watch it comes from serves
    /// on.
    async fn mark_seen(&self, id: &str) {
        let now = pki::unix_now();
        let mut records = self.records.clone();
        let noted = records.update(id, |current| {
            Ok(current.map(|node| {
                let mut node = node.clone();
                node.status.get_or_insert_with(Default::default).last_seen = now;
                node
            }))
        });
        let why = match tokio::time::timeout(LAST_SEEN_PATIENCE, noted).await {
            Ok(Ok(_)) => return,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("etcd did not answer within {LAST_SEEN_PATIENCE:?}"),
        };
        slog::warn!(self.log, "cannot note when the node was last seen"; "node" => id, "error" => why);
    }
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

/// A registering node brings both its recovery key (an uncompressed P-256 point) and its PCR 7
/// value, or neither (it runs without a TPM).
fn check_recovery(msg: &RegisterNodeRequest) -> Result<(), CuratorError> {
    let invalid = |field, reason: String| Err(CuratorError::Invalid { field, reason });
    if msg.recovery_key.is_empty() && msg.pcr7.is_empty() {
        return Ok(());
    }
    if !policy::is_uncompressed_point(&msg.recovery_key) {
        return invalid(
            "recovery_key",
            format!(
                "must be an uncompressed P-256 point ({POINT_LEN} bytes from 0x04), got {} bytes",
                msg.recovery_key.len()
            ),
        );
    }
    if msg.pcr7.len() != DIGEST_LEN {
        return invalid(
            "pcr7",
            format!("must be {DIGEST_LEN} bytes, got {}", msg.pcr7.len()),
        );
    }
    Ok(())
}
