//! The owner's `AAA` service: Escrow, which gives the initial owner its certificate: the one the
//! bootstrap issued, the same one until it is due for renewal (two thirds into its life), then a
//! new one that replaces it (the old one no longer passes the owner check, which compares the
//! stored certificate).

use ed25519_dalek::VerifyingKey;
use tonic::{Request, Response};

use super::auth::{caller_key, matches_stored};
use super::{Answer, Services};
use crate::consensus::ConsensusError;
use crate::curator::records::{self, OWNER_CERTIFICATE, OWNER_NAME};
use crate::curator::CuratorError;
use crate::issuer::IssueRecording;
use crate::pki::{renewal_due, Template};
use crate::proto::api::aaa_server::Aaa;
use crate::proto::api::{EscrowRequest, EscrowResponse};

#[tonic::async_trait]
impl Aaa for Services {
    async fn escrow(&self, request: Request<EscrowRequest>) -> Answer<EscrowResponse> {
        let key = caller_key(&request)?;
        if let Some(owner) = &self.initial_owner {
            if !matches_stored(Some(owner.to_vec()), key.as_bytes()) {
                return Err(CuratorError::NotInitialOwner.into());
            }
            // The bootstrap issued the first owner certificate: the owner's first Escrow, and
            // every one until it is due, is answered from memory.
            if let Some(certificate) = self.remembered_owner().filter(|c| !renewal_due(c)) {
                slog::info!(self.log, "the owner certificate handed over");
                return Ok(Response::new(EscrowResponse {
                    owner_certificate: certificate,
                }));
            }
        }
        let certificate = self.escrow_from_etcd(key).await?;
        self.remember_owner(Some(certificate.clone()));
        Ok(Response::new(EscrowResponse {
            owner_certificate: certificate,
        }))
    }
}

impl Services {
    /// Escrow as etcd has it: the initial owner checked, the stored owner certificate answered
    /// unless it is due (or absent, in a cluster bootstrapped before the bootstrap issued it),
    /// else a new one issued, stored and answered.
    async fn escrow_from_etcd(&self, key: VerifyingKey) -> Result<Vec<u8>, CuratorError> {
        // Both reads at once: the certificate's is harmless before the owner check.
        let (mut records, mut owners) = (self.records.clone(), self.records.clone());
        let (owner, (stored, revision)) = futures::try_join!(
            owners.kv().get(records::INITIAL_OWNER),
            records.kv().get_versioned(OWNER_CERTIFICATE),
        )?;
        if !matches_stored(owner, key.as_bytes()) {
            return Err(CuratorError::NotInitialOwner);
        }
        if let Some(certificate) = stored.filter(|c| !renewal_due(c)) {
            return Ok(certificate);
        }
        let template = Template::Client {
            common_name: OWNER_NAME.into(),
        };
        let (issued, recording) = self.issuer.ask(IssueRecording(template, key)).await??;
        // Of two concurrent escrows, both answer the certificate that was stored first. Stored
        // while the issuer records it: the answer waits for both.
        let kv = records.kv();
        let puts = [(OWNER_CERTIFICATE, issued.der.as_slice())];
        let (written, recorded) = futures::join!(
            kv.swap(OWNER_CERTIFICATE, revision, &[], &puts, &[]),
            recording.done()
        );
        recorded?;
        let certificate = match written? {
            true => issued.der,
            false => kv
                .get(OWNER_CERTIFICATE)
                .await?
                .ok_or_else(|| ConsensusError::Vanished(OWNER_CERTIFICATE.into()))?,
        };
        match revision {
            0 => slog::info!(self.log, "the owner took ownership"),
            _ => slog::info!(self.log, "the owner certificate renewed"),
        }
        Ok(certificate)
    }
}
