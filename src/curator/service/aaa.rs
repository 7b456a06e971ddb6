//! The owner's `AAA` service: Escrow, which gives the initial owner its certificate once.

use tonic::{Request, Response};

use super::auth::{caller_key, matches_stored};
use super::{Answer, Services};
use crate::curator::records::{self, OWNER_CERTIFICATE};
use crate::curator::CuratorError;
use crate::issuer::Issue;
use crate::pki::Template;
use crate::proto::api::aaa_server::Aaa;
use crate::proto::api::{EscrowRequest, EscrowResponse};

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
        if !matches_stored(owner, key.as_bytes()) {
            return Err(CuratorError::NotInitialOwner.into());
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
