//! The `CuratorLocal` service: the cluster CA's certificate and its current CRL, for anyone who
//! asks.

use tonic::{Request, Response};

use super::{Answer, Services};
use crate::proto::curator::curator_local_server::CuratorLocal;
use crate::proto::curator::{GetCaCertificateRequest, GetCaCertificateResponse};

#[tonic::async_trait]
impl CuratorLocal for Services {
    async fn get_ca_certificate(
        &self,
        _: Request<GetCaCertificateRequest>,
    ) -> Answer<GetCaCertificateResponse> {
        let (ca_certificate, crl) = futures::try_join!(self.ca_certificate(), self.crl())?;
        Ok(Response::new(GetCaCertificateResponse {
            ca_certificate,
            crl,
        }))
    }
}
