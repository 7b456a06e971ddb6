//! The owner's `AAA` service: Escrow, which gives the initial owner its certificate, the same
//! one until it is due for renewal (two thirds into its life), then a new one that replaces it
//! (the old one no longer passes the owner check, which compares the stored certificate).

use tonic::{Request, Response};

use super::auth::{caller_key, matches_stored};
use super::{Answer, Services};
use crate::consensus::ConsensusError;
use crate::curator::records::{self, OWNER_CERTIFICATE};
use crate::curator::CuratorError;
use crate::issuer::IssueRecording;
use crate::pki::{renewal_due, Template};
use crate::proto::api::aaa_server::Aaa;
use crate::proto::api::{EscrowRequest, EscrowResponse};

#[tonic::async_trait]
impl Aaa for Services {
    async fn escrow(&self, request: Request<EscrowRequest>) -> Answer<EscrowResponse> {
        let key = caller_key(&request)?;
        // Both reads at once: the certificate's is harmless before the owner check.
        let (mut records, mut owners) = (self.records.clone(), self.records.clone());
        let (owner, (stored, revision)) = futures::try_join!(
            owners.kv().get(records::INITIAL_OWNER),
            records.kv().get_versioned(OWNER_CERTIFICATE),
        )
        .map_err(CuratorError::from)?;
        if !matches_stored(owner, key.as_bytes()) {
            return Err(CuratorError::NotInitialOwner.into());
        }
        if let Some(certificate) = stored.filter(|c| !renewal_due(c)) {
            return Ok(Response::new(EscrowResponse {
                owner_certificate: certificate,
            }));
        }
        let template = Template::Client {
            common_name: "owner".into(),
        };
        let (issued, recording) = self
            .issuer
            .ask(IssueRecording(template, key))
            .await
            .map_err(CuratorError::from)?
            .map_err(CuratorError::from)?;
        // Of two concurrent escrows, both answer the certificate that was stored first. Stored
        // while the issuer records it: the answer waits for both.
        let kv = records.kv();
        let puts = [(OWNER_CERTIFICATE, issued.der.as_slice())];
        let (written, recorded) = futures::join!(
            kv.swap(OWNER_CERTIFICATE, revision, &[], &puts, &[]),
            recording.done()
        );
        recorded.map_err(CuratorError::from)?;
        let written = written.map_err(CuratorError::from)?;
        let certificate = match written {
            true => issued.der,
            false => kv
                .get(OWNER_CERTIFICATE)
                .await
                .map_err(CuratorError::from)?
                .ok_or_else(|| {
                    CuratorError::from(ConsensusError::Vanished(OWNER_CERTIFICATE.into()))
                })?,
        };
        match revision {
            0 => slog::info!(self.log, "the owner took ownership"),
            _ => slog::info!(self.log, "the owner certificate renewed"),
        }
        Ok(Response::new(EscrowResponse {
            owner_certificate: certificate,
        }))
    }
}
