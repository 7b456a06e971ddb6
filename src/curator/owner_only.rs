//! The Management service answers only the owner. The check wraps the whole service, in front
//! of every handler, so that a handler added later cannot forget it.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;

use crate::curator::Services;
use crate::grpc::Peer;

/// `inner` (the Management server), reached only by a caller presenting the owner certificate.
#[derive(Clone)]
pub struct OwnerOnly<S> {
    inner: S,
    services: Services,
}

impl<S> OwnerOnly<S> {
    /// Guard `inner` with the owner check of `services`.
    pub fn new(inner: S, services: Services) -> Self {
        OwnerOnly { inner, services }
    }
}

impl<S, B> tower::Service<http::Request<B>> for OwnerOnly<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        // The instance that was polled ready serves this call; its clone stays for the next.
        let ready = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, ready);
        let services = self.services.clone();
        Box::pin(async move {
            let presented = request
                .extensions()
                .get::<Peer>()
                .and_then(|p| p.certificate.clone());
            match services.check_owner(presented.as_deref()).await {
                Ok(()) => inner.call(request).await,
                Err(e) => Ok(tonic::Status::from(e).into_http()),
            }
        })
    }
}

impl<S: NamedService> NamedService for OwnerOnly<S> {
    const NAME: &'static str = S::NAME;
}
