//! PCR 7 recovery (DESIGN §6): a node whose PCR 7 changed asks, signed by its TPM recovery key,
//! that the owner approve the new value; the owner lists and decides; an approved value is
//! signed by the cluster's PCR policy key, which is what lets the node's TPM unseal again.

use super::Services;
use crate::curator::records;
use crate::curator::CuratorError;
use crate::issuer::{ApprovePcr, PcrApproval};
use crate::pki::unix_now;
use crate::proto::api;
use crate::proto::curator::request_pcr_approval_response::State;
use crate::proto::curator::{RequestPcrApprovalRequest, RequestPcrApprovalResponse};
use crate::proto::private::pcr_request::State as PcrState;
use crate::proto::private::PcrRequest;
use crate::tpm::policy::{self, DIGEST_LEN, SIGNATURE_LEN};

/// The largest TPM event log a request may carry (real ones are tens of KiB).
const MAX_EVENT_LOG: usize = 1 << 20;
/// How far a request's time may be from the Curator's: an old signed request is not replayed.
const MAX_SKEW_S: i64 = 600;

impl Services {
    /// RequestPcrApproval: check the recovery signature against the node's record, note the
    /// request, and answer where it stands.
    pub(super) async fn request_pcr_approval(
        &self,
        request: RequestPcrApprovalRequest,
    ) -> Result<RequestPcrApprovalResponse, CuratorError> {
        check_request(&request)?;
        let id = request.node_id.clone();
        let mut records = self.records.clone();
        let node = records::existing(records.get(&id).await?, &id)?;
        let message =
            policy::recovery_request(&id, &request.pcr7, &request.event_log, request.requested_at);
        if node.recovery_key.is_empty() {
            return Err(CuratorError::Unsupported(
                "this node enrolled without a TPM recovery key: it cannot ask for a PCR 7 approval",
            ));
        }
        if !policy::verify(&node.recovery_key, &message, &request.signature) {
            slog::warn!(self.log, "refused a PCR approval request not signed by the node's recovery key";
                "node" => &id);
            return Err(CuratorError::BadRecoverySignature(id));
        }
        let asked = PcrRequest {
            pcr7: request.pcr7.clone(),
            event_log_digest: match request.event_log.is_empty() {
                true => Vec::new(),
                false => policy::sha256(&request.event_log).to_vec(),
            },
            requested_at: request.requested_at,
            state: PcrState::Pending as i32,
        };
        let node = records
            .update(&id, |current| {
                records::request_pcr(current, &id, asked.clone())
            })
            .await?;
        if node.pcr7 == request.pcr7 {
            let approval = self.approve_pcr(&id, &request.pcr7).await?;
            slog::info!(self.log, "answered an approved PCR 7 value"; "node" => &id,
                "pcr7" => crate::pki::hex(&request.pcr7));
            return Ok(RequestPcrApprovalResponse {
                state: State::Approved as i32,
                pcr_policy_key: approval.policy_key,
                pcr7_approval: approval.signature,
            });
        }
        let refused = node
            .pcr_request
            .as_ref()
            .is_some_and(|r| r.state == PcrState::Refused as i32);
        slog::info!(self.log, "a node waits for the owner to approve a new PCR 7 value";
            "node" => &id, "pcr7" => crate::pki::hex(&request.pcr7), "refused" => refused);
        Ok(RequestPcrApprovalResponse {
            state: match refused {
                true => State::Refused as i32,
                false => State::Pending as i32,
            },
            ..Default::default()
        })
    }

    /// GetPcrRequests: every node's request, undecided or refused.
    pub(super) async fn pcr_requests(&self) -> Result<Vec<api::PcrRequest>, CuratorError> {
        let nodes = self.records.clone().list().await?;
        Ok(nodes
            .into_iter()
            .filter_map(|node| {
                let request = node.pcr_request?;
                Some(api::PcrRequest {
                    id: node.id,
                    approved_pcr7: node.pcr7,
                    requested_pcr7: request.pcr7,
                    event_log_digest: request.event_log_digest,
                    requested_at: request.requested_at,
                    refused: request.state == PcrState::Refused as i32,
                })
            })
            .collect())
    }

    /// DecidePcrRequest: approve or refuse what node `id` asks for now.
    pub(super) async fn decide_pcr_request(
        &self,
        decision: api::DecidePcrRequestRequest,
    ) -> Result<(), CuratorError> {
        let id = decision.id;
        self.records
            .clone()
            .update(&id, |current| {
                records::decide_pcr(current, &id, &decision.requested_pcr7, decision.approve)
            })
            .await?;
        slog::warn!(self.log, "the owner decided on a node's new PCR 7 value"; "node" => &id,
            "pcr7" => crate::pki::hex(&decision.requested_pcr7), "approved" => decision.approve);
        Ok(())
    }

    /// The PCR policy key's approval of `pcr7` for node `id`.
    pub(super) async fn approve_pcr(
        &self,
        id: &str,
        pcr7: &[u8],
    ) -> Result<PcrApproval, CuratorError> {
        let approve = ApprovePcr {
            node_id: id.to_owned(),
            pcr7: pcr7.to_vec(),
        };
        Ok(self.issuer.ask(approve).await??)
    }
}

/// The request's fields are well-formed and its time is near ours.
fn check_request(request: &RequestPcrApprovalRequest) -> Result<(), CuratorError> {
    let invalid = |field, reason: String| Err(CuratorError::Invalid { field, reason });
    if request.node_id.is_empty() || request.node_id.len() > 128 {
        return invalid("node_id", format!("{} bytes", request.node_id.len()));
    }
    if request.pcr7.len() != DIGEST_LEN {
        return invalid(
            "pcr7",
            format!("must be {DIGEST_LEN} bytes, got {}", request.pcr7.len()),
        );
    }
    if request.signature.len() != SIGNATURE_LEN {
        return invalid(
            "signature",
            format!(
                "must be {SIGNATURE_LEN} bytes, got {}",
                request.signature.len()
            ),
        );
    }
    if request.event_log.len() > MAX_EVENT_LOG {
        return invalid(
            "event_log",
            format!(
                "{} bytes, more than {MAX_EVENT_LOG}",
                request.event_log.len()
            ),
        );
    }
    let skew = (request.requested_at - unix_now()).abs();
    if skew > MAX_SKEW_S {
        return invalid(
            "requested_at",
            format!("{skew} s from this Curator's clock, more than {MAX_SKEW_S} s"),
        );
    }
    Ok(())
}
