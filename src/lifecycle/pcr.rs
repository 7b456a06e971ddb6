//! The node's side of the cluster's PCR policy (DESIGN §6): at enrolment, a recovery key and
//! the cluster's approval of the PCR 7 value the node enrolled with, kept on the ESP as its
//! [`PcrAuthority`] before anything is sealed under it; at a boot where PCR 7 holds a value not
//! approved, a request for the owner's approval signed by the recovery key, and the wait for it.

use zeroize::Zeroizing;

use crate::issuer::PcrApproval;
use crate::lifecycle::actor::{refused, Run};
use crate::lifecycle::client::connect;
use crate::lifecycle::LifecycleError;
use crate::pki::{generate_key, hex, unix_now};
use crate::proto::curator::curator_client::CuratorClient;
use crate::proto::curator::request_pcr_approval_response::State;
use crate::proto::curator::RequestPcrApprovalRequest;
use crate::proto::private::pcr_authority::Approval;
use crate::proto::private::sealed_envelope::Protection;
use crate::proto::private::{PcrAuthority, SealedEnvelope};
use crate::tls::Identity;
use crate::tpm::policy::{self, verify_approval};
use crate::tpm::{
    CreateRecoveryKey, ReadPcr7, RecoveryKey, SealedKind, SignWithRecoveryKey, TpmError,
};

/// Where the kernel offers the firmware's TPM event log, sent along so the owner can see what
/// changed.
const EVENT_LOG: &str = "/sys/kernel/security/tpm0/binary_bios_measurements";
/// The most of the event log a request carries (the Curator takes up to 1 MiB).
const MAX_EVENT_LOG: u64 = 1 << 20;

/// What a node without a TPM answers where a recovery key or PCR 7 is asked for.
fn absent_without_tpm<T>(result: Result<T, TpmError>) -> Result<Option<T>, LifecycleError> {
    match result {
        Ok(value) => Ok(Some(value)),
        Err(TpmError::NoTpm) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

impl Run {
    /// A new recovery key for this enrolment; `None` on a node without a TPM.
    pub(super) async fn new_recovery_key(&self) -> Result<Option<RecoveryKey>, LifecycleError> {
        self.retry("creating the recovery key", || async {
            absent_without_tpm(self.deps.tpm.ask(CreateRecoveryKey).await?)
        })
        .await
    }

    /// The value PCR 7 holds now; `None` on a node without a TPM.
    pub(super) async fn pcr7(&self) -> Result<Option<Vec<u8>>, LifecycleError> {
        self.retry("reading PCR 7", || async {
            absent_without_tpm(self.deps.tpm.ask(ReadPcr7).await?)
        })
        .await
    }

    /// Keep on the ESP, before anything is sealed under it, the cluster's PCR policy for node
    /// `id` with the `approval` of `pcr7` (enrolment).
    pub(super) async fn keep_authority(
        &self,
        id: &str,
        ca: &[u8],
        recovery: &RecoveryKey,
        pcr7: &[u8],
        approval: PcrApproval,
        step: &'static str,
    ) -> Result<(), LifecycleError> {
        let authority = PcrAuthority {
            node_id: id.to_owned(),
            ca_certificate: ca.to_vec(),
            policy_key: approval.policy_key.clone(),
            recovery_key_public: recovery.public.clone(),
            recovery_key_private: recovery.private.clone(),
            approvals: Vec::new(),
        };
        self.keep_approval(authority, pcr7, approval, step).await?;
        slog::info!(self.log, "the cluster approved this node's PCR 7 value; sealing under the cluster's PCR policy";
            "pcr7" => hex(pcr7));
        Ok(())
    }

    /// Keep `authority` on the ESP with `approval` of `pcr7` as its only approval (a firmware
    /// rolled back needs the owner again), once the approval is checked to be the authority's
    /// policy key's signature for this node and value.
    async fn keep_approval(
        &self,
        mut authority: PcrAuthority,
        pcr7: &[u8],
        approval: PcrApproval,
        step: &'static str,
    ) -> Result<(), LifecycleError> {
        let PcrApproval {
            policy_key,
            signature,
        } = approval;
        if policy_key != authority.policy_key
            || !verify_approval(&policy_key, &authority.node_id, pcr7, &signature)
        {
            return Err(LifecycleError::Inconsistent {
                step,
                reason: format!(
                    "the cluster's approval of PCR 7 value {} is not its PCR policy key's signature",
                    hex(pcr7)
                ),
                recovery: "the Curator that answered is not to be trusted; check the cluster",
            });
        }
        authority.approvals = vec![Approval {
            pcr7: pcr7.to_vec(),
            signature,
        }];
        self.on_esp(move |esp| esp.write_pcr_authority(&authority))
            .await
    }

    /// Unseal the sealed configuration; if it is sealed under the cluster's PCR policy and PCR 7
    /// holds a value not approved for this node, wait for the owner's approval first.
    pub(super) async fn unseal_configuration(
        &self,
        envelope: SealedEnvelope,
    ) -> Result<Zeroizing<Vec<u8>>, LifecycleError> {
        let kind = SealedKind::Configuration;
        match self.unseal(kind, envelope.clone()).await {
            Err(LifecycleError::Tpm(TpmError::Unapproved { .. } | TpmError::PolicyRejected(_)))
                if envelope.protection == Protection::Tpm2Pcr7Authorized as i32 =>
            {
                self.await_pcr_approval().await?;
                self.unseal(kind, envelope).await
            }
            unsealed => unsealed,
        }
    }

    /// PCR 7 holds a value the cluster has not approved for this node: ask a Curator, signed by
    /// the recovery key, until the owner approves it (then keep the approval on the ESP) or
    /// refuses it (then stop).
    pub(super) async fn await_pcr_approval(&self) -> Result<(), LifecycleError> {
        let path = self.esp.pcr_authority_path();
        let authority = self.esp.pcr_authority()?.ok_or_else(|| {
            LifecycleError::Tpm(TpmError::BadAuthority(format!(
                "no PCR authority at {}",
                path.display()
            )))
        })?;
        let id = authority.node_id.clone();
        let recovery = RecoveryKey {
            public: authority.recovery_key_public.clone(),
            private: authority.recovery_key_private.clone(),
        };
        let pcr7 = self.pcr7().await?.ok_or(TpmError::NoTpm)?;
        let event_log = event_log();
        let directory = self.esp.directory()?;
        self.deps
            .metrics
            .health
            .lifecycle_step("join:awaiting-pcr-approval");
        slog::crit!(self.log, "PCR 7 changed since this node enrolled (firmware or Secure Boot update?): it cannot unseal until the owner approves the new value";
            "node" => &id, "pcr7" => hex(&pcr7),
            "to_approve" => format!("polisctl pcr-requests; polisctl approve-pcr {id}"));
        let approved = self
            .retry("waiting for the owner to approve PCR 7", || async {
                let requested_at = unix_now();
                let message = policy::recovery_request(&id, &pcr7, &event_log, requested_at);
                let signature = self
                    .deps
                    .tpm
                    .ask(SignWithRecoveryKey(recovery.clone(), message))
                    .await??;
                // Its node key is on the locked data partition: an ephemeral TLS identity.
                let key = generate_key()?;
                let channel = connect(&directory, &authority.ca_certificate, || {
                    Identity::ephemeral(&key)
                })
                .await?;
                let request = RequestPcrApprovalRequest {
                    node_id: id.clone(),
                    pcr7: pcr7.clone(),
                    event_log: event_log.clone(),
                    requested_at,
                    signature,
                };
                let response = CuratorClient::new(channel)
                    .request_pcr_approval(request)
                    .await
                    .map_err(|status| refused("RequestPcrApproval", status))?
                    .into_inner();
                match response.state() {
                    State::Approved => Ok(response),
                    State::Refused => Err(LifecycleError::PcrRefused {
                        node: id.clone(),
                        pcr7: hex(&pcr7),
                    }),
                    _ => Err(LifecycleError::AwaitingPcrApproval {
                        node: id.clone(),
                        pcr7: hex(&pcr7),
                    }),
                }
            })
            .await?;
        let approval = PcrApproval {
            policy_key: approved.pcr_policy_key,
            signature: approved.pcr7_approval,
        };
        self.keep_approval(authority, &pcr7, approval, "joining")
            .await?;
        slog::warn!(self.log, "the owner approved this node's new PCR 7 value"; "pcr7" => hex(&pcr7));
        Ok(())
    }
}

/// The firmware's TPM event log, if the kernel offers one (empty in tests and VMs without).
fn event_log() -> Vec<u8> {
    use std::io::Read;
    let mut log = Vec::new();
    if let Ok(file) = std::fs::File::open(EVENT_LOG) {
        let _ = file.take(MAX_EVENT_LOG).read_to_end(&mut log);
    }
    log
}
