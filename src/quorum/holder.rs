//! The share holder actor (`/core/shares`): serves `ColdStart.GetShare` on the node's address
//! from the shares it holds sealed on its ESP, from boot on and whatever the lifecycle is doing,
//! so that consensus members waiting for each other on a cold start can all unlock. A caller
//! proves its join key (an ephemeral certificate) and gets the share held for that key, if the
//! node still counts its owner as a consensus member; it learns nothing else.

use std::net::SocketAddr;
use std::sync::Arc;

use ed25519_dalek::SigningKey;
use polis_actors::{Actor, ActorRef, Ctx, Failure, Started, Watchable};
use prost::Message;
use ring::rand::{SecureRandom, SystemRandom};
use tonic::{Code, Request, Response, Status};

use crate::grpc::{incoming, Peer};
use crate::network::{external_address, NetworkStatus};
use crate::pki::hex;
use crate::proto::curator::cold_start_server::{ColdStart, ColdStartServer};
use crate::proto::curator::{GetShareRequest, GetShareResponse};
use crate::proto::private::{HeldShares, Share};
use crate::quorum::COLD_START_PORT;
use crate::storage::{Esp, EspError};
use crate::tls::{server_config, ClientAuth, Identity};
use crate::tpm::{SealedKind, Tpm, TpmError, Unseal};

// ---- state ----

/// The share holder actor.
pub struct ShareHolder {
    esp: Esp,
    tpm: ActorRef<Tpm>,
    network: Watchable<NetworkStatus>,
    /// The server task, aborted with the incarnation.
    server: Option<tokio::task::AbortHandle>,
}

impl Drop for ShareHolder {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl ShareHolder {
    /// A holder serving from `esp`'s sealed shares, unsealed through `tpm`, on the address
    /// `network` reports.
    pub fn new(esp: Esp, tpm: ActorRef<Tpm>, network: Watchable<NetworkStatus>) -> Self {
        ShareHolder {
            esp,
            tpm,
            network,
            server: None,
        }
    }
}

/// Why a share was not handed out; each maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum HolderError {
    /// The caller presented no certificate.
    #[error("no client certificate")]
    Unauthenticated,
    /// This node holds no share for the caller's join key.
    #[error(
        "this node holds no share for join key {0}: not a consensus member, or decommissioned"
    )]
    NoShare(String),
    /// The share's owner is no consensus member in this node's directory.
    #[error(
        "node {0} is not a consensus member in this node's cluster directory (decommissioned?)"
    )]
    NotMember(String),
    /// The ESP's shares or directory cannot be read.
    #[error(transparent)]
    Esp(#[from] EspError),
    /// The TPM refused to unseal or is away.
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The TPM actor is not running.
    #[error("{0}")]
    Unavailable(#[from] polis_actors::SendError),
    /// The sealed shares unsealed but do not decode.
    #[error("the held shares at {0} do not decode")]
    Corrupted(String),
}

impl From<HolderError> for Status {
    fn from(e: HolderError) -> Status {
        let code = match &e {
            HolderError::Unauthenticated => Code::Unauthenticated,
            HolderError::NoShare(_) | HolderError::NotMember(_) => Code::PermissionDenied,
            HolderError::Corrupted(_) | HolderError::Esp(_) | HolderError::Tpm(_) => Code::Internal,
            HolderError::Unavailable(_) => Code::Unavailable,
        };
        Status::new(code, e.to_string())
    }
}

// ---- handlers ----

impl Actor for ShareHolder {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        let service = Service {
            esp: self.esp.clone(),
            tpm: self.tpm.clone(),
            log: ctx.log().clone(),
        };
        let (network, log) = (self.network.clone(), ctx.log().clone());
        let serve = async move {
            let listen = SocketAddr::new(external_address(&network, &log).await, COLD_START_PORT);
            // Made on a blocking thread: signing a certificate and building a TLS config
            // would hold up the event loop the node's start runs on (≈ 0.4 ms, traced).
            let config = tokio::task::spawn_blocking(tls_config)
                .await
                .map_err(|e| Failure::msg(format!("the share server's TLS config: {e}")))??;
            // One config for the server's life: a receiver keeps its value with no sender.
            let (_, config) = tokio::sync::watch::channel(Arc::new(config));
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| Failure::msg(format!("cannot listen on {listen}: {e}")))?;
            let server = tonic::transport::Server::builder()
                .add_service(ColdStartServer::new(service))
                .serve_with_incoming(incoming(listener, config, log));
            Ok::<_, Failure>((server, listen))
        };
        ctx.spawn(serve, |served, holder: &mut Self, ctx| {
            let (server, listen) = served?;
            let server = tokio::spawn(server);
            holder.server = Some(server.abort_handle());
            slog::info!(ctx.log(), "serving held shares"; "listen" => %listen);
            ctx.spawn(server, |ended, _, _| match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Failure::msg(format!("the share server failed: {e}"))),
                Err(e) => Err(Failure::msg(format!("the share server task ended: {e}"))),
            });
            Ok(())
        });
        // Healthy while it waits for the node's address, which may take long (or, on a node
        // whose interface never comes up, forever).
        Ok(Started::Healthy)
    }
}

/// The `ColdStart` handlers.
#[derive(Clone)]
struct Service {
    esp: Esp,
    tpm: ActorRef<Tpm>,
    log: slog::Logger,
}

#[tonic::async_trait]
impl ColdStart for Service {
    async fn get_share(
        &self,
        request: Request<GetShareRequest>,
    ) -> Result<Response<GetShareResponse>, Status> {
        let join_key = request
            .extensions()
            .get::<Peer>()
            .and_then(Peer::public_key)
            .ok_or(HolderError::Unauthenticated)?;
        let share = self.share_for(&join_key).await;
        match &share {
            Ok(share) => slog::info!(self.log, "handed out a held share"; "owner" => &share.owner),
            Err(e) => slog::warn!(self.log, "refused a share"; "join_key" => hex(&join_key),
                "reason" => %e),
        }
        Ok(Response::new(GetShareResponse {
            share: Some(share?),
        }))
    }
}

// ---- helpers ----

impl Service {
    /// The share held for `join_key`, if its owner is still a consensus member here.
    async fn share_for(&self, join_key: &[u8]) -> Result<Share, HolderError> {
        let envelope = match self.esp.held_shares() {
            Ok(envelope) => envelope,
            Err(EspError::NoHeldShares(_)) => return Err(HolderError::NoShare(hex(join_key))),
            Err(e) => return Err(e.into()),
        };
        let bytes = self
            .tpm
            .ask(Unseal(SealedKind::HeldShares, envelope))
            .await??;
        let held = HeldShares::decode(bytes.as_slice()).map_err(|_| {
            HolderError::Corrupted(self.esp.held_shares_path().display().to_string())
        })?;
        let share = held
            .shares
            .iter()
            .find(|s| s.owner_join_key == join_key)
            .cloned()
            .ok_or_else(|| HolderError::NoShare(hex(join_key)))?;
        let directory = self.esp.directory()?;
        if !directory
            .nodes
            .iter()
            .any(|n| n.id == share.owner && n.curator)
        {
            return Err(HolderError::NotMember(share.owner.clone()));
        }
        Ok(share)
    }
}

/// The server config: a fresh self-signed identity (callers check what they get by the CUK's
/// digest, not by who sent it), admitting only ephemeral client certificates.
fn tls_config() -> Result<rustls::ServerConfig, Failure> {
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| Failure::msg("no randomness for the share server's key"))?;
    let identity = Identity::ephemeral(&SigningKey::from_bytes(&seed))?;
    Ok(server_config(identity, ClientAuth::Ephemeral)?)
}
