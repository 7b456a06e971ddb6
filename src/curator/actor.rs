//! The Curator actor: serves the Curator's services on the node's address once etcd and the
//! issuer are ready, presenting its Curator certificate (see [`super::server_certificate`]).
//! The server lives as long as the incarnation; if it ends, the actor fails and its supervisor
//! starts a new one. The cluster CRL is followed:
//! each change swaps the TLS config that the next handshake uses.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use polis_actors::{Actor, ActorRef, Ctx, Failure, Started};
use rustls::ServerConfig;
use tokio::sync::watch;

use crate::consensus::{Consensus, Kv, NAMESPACE as CONSENSUS_NAMESPACE};
use crate::curator::owner_only::OwnerOnly;
use crate::curator::records::{Records, NAMESPACE};
use crate::curator::{server_certificate, Services};
use crate::grpc::incoming;
use crate::issuer::{Issuer, CRL_KEY};
use crate::metrics::NodeMetrics;
use crate::pki::NodeCredentials;
use crate::proto::api::aaa_server::AaaServer;
use crate::proto::api::management_server::ManagementServer;
use crate::proto::curator::curator_local_server::CuratorLocalServer;
use crate::proto::curator::curator_server::CuratorServer;
use crate::storage::NodeRoot;
use crate::tls::{server_config, ClientAuth, Identity, TlsError, Trust};

/// The Curator's port.
pub const CURATOR_PORT: u16 = 7835;

/// Where the Curator serves and whose credentials it presents.
#[derive(Clone, Debug)]
pub struct CuratorConfig {
    /// The node root (`data/node/credentials`).
    pub root: NodeRoot,
    /// The address to listen on.
    pub listen: SocketAddr,
    /// Its calls are counted there, and the records by state.
    pub metrics: NodeMetrics,
}

/// How often the records are counted by state for the metrics.
const COUNT_NODES_EVERY: Duration = Duration::from_secs(5);

/// The Curator actor.
pub struct Curator {
    config: CuratorConfig,
    consensus: ActorRef<Consensus>,
    issuer: ActorRef<Issuer>,
    /// The server task; aborted when the incarnation ends, however it ends, which closes its
    /// listener and every open stream at once.
    server: Option<tokio::task::AbortHandle>,
}

impl Drop for Curator {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.abort();
        }
    }
}

impl Curator {
    /// A Curator over `consensus` and `issuer`.
    pub fn new(
        config: CuratorConfig,
        consensus: ActorRef<Consensus>,
        issuer: ActorRef<Issuer>,
    ) -> Self {
        Curator {
            config,
            consensus,
            issuer,
            server: None,
        }
    }
}

impl Actor for Curator {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        let credentials = NodeCredentials::load(&self.config.root)?.ok_or_else(|| {
            Failure::msg(format!(
                "no node credentials at {}",
                self.config.root.node_credentials().display()
            ))
        })?;
        let (consensus, issuer, listen, log) = (
            self.consensus.clone(),
            self.issuer.clone(),
            self.config.listen,
            ctx.log().clone(),
        );
        let calls = self.config.metrics.grpc.layer();
        let health = self.config.metrics.health.clone();
        let serve = async move {
            let kv = consensus.ask(Kv(NAMESPACE.into())).await??;
            let peer_kv = consensus.ask(Kv(CONSENSUS_NAMESPACE.into())).await??;
            let mut pki_kv = consensus.ask(Kv(crate::issuer::NAMESPACE.into())).await??;
            let mut records = Records::new(kv);
            let served = server_certificate::ensure(&mut records, &issuer, &credentials).await?;
            health.certificate_held("curator", &served);
            let identity = ServerIdentity {
                credentials,
                certificate: served,
            };
            let crl = pki_kv.get(CRL_KEY).await?;
            let (configs, updates) = watch::channel(tls_config(&identity, crl)?);
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| Failure::msg(format!("cannot listen on {listen}: {e}")))?;
            let services = Services::new(
                records.clone(),
                peer_kv,
                pki_kv.clone(),
                issuer,
                consensus,
                log.clone(),
            );
            let server = tonic::transport::Server::builder()
                .layer(calls)
                .add_service(CuratorServer::new(services.clone()))
                .add_service(CuratorLocalServer::new(services.clone()))
                .add_service(OwnerOnly::new(
                    ManagementServer::new(services.clone()),
                    services.clone(),
                ))
                .add_service(AaaServer::new(services))
                .serve_with_incoming(incoming(listener, updates, log));
            Ok::<_, Failure>((server, configs, pki_kv, identity, records))
        };
        ctx.spawn(serve, move |served, curator: &mut Self, ctx| {
            let (server, configs, mut pki_kv, identity, records) = served?;
            ctx.run_interval(COUNT_NODES_EVERY, move |curator: &mut Self, ctx| {
                curator.count_nodes(records.clone(), ctx);
                Ok(())
            });
            let server = tokio::spawn(server);
            curator.server = Some(server.abort_handle());
            slog::info!(ctx.log(), "serving"; "listen" => %listen);
            ctx.healthy();
            ctx.spawn(server, |ended, _, _| match ended {
                Ok(Ok(())) => Ok(()),
                Ok(Err(e)) => Err(Failure::msg(format!("the Curator server failed: {e}"))),
                Err(e) => Err(Failure::msg(format!("the Curator server task ended: {e}"))),
            });
            // A revocation reaches the next handshake: a new CRL means a new TLS config.
            let log = ctx.log().clone();
            let follow_crl = async move {
                pki_kv
                    .follow(CRL_KEY, |crl| {
                        configs.send_replace(tls_config(&identity, Some(crl.to_vec()))?);
                        slog::debug!(log, "TLS config follows the cluster CRL";
                            "crl_bytes" => crl.len());
                        Ok::<(), Failure>(())
                    })
                    .await
            };
            ctx.spawn(follow_crl, |ended, _, _| {
                Err(Failure::msg(format!(
                    "the cluster CRL watch ended: {ended}"
                )))
            });
            Ok(())
        });
        Ok(Started::Pending)
    }
}

// ---- helpers ----

impl Curator {
    /// Count the records by state for the node's health metrics; a failed read is only logged
    /// (the next round tries again).
    fn count_nodes(&self, records: Records, ctx: &mut Ctx<'_, Self>) {
        let health = self.config.metrics.health.clone();
        ctx.spawn(
            async move { records.clone().list().await },
            move |listed, _, ctx| {
                match listed {
                    Ok(nodes) => health.nodes(&nodes),
                    Err(e) => slog::debug!(ctx.log(), "records not counted"; "reason" => %e),
                }
                Ok(())
            },
        );
    }
}

/// What the Curator presents: the node key with its Curator certificate.
struct ServerIdentity {
    credentials: NodeCredentials,
    certificate: Vec<u8>,
}

/// The server config: the Curator certificate, admitting clients of the cluster CA not revoked
/// by `crl`, and ephemeral ones (which the handlers authorize by key).
fn tls_config(
    served: &ServerIdentity,
    crl: Option<Vec<u8>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let trust = Trust {
        ca: served.credentials.ca.clone(),
        crls: crl.into_iter().collect(),
    };
    let identity = Identity::new(&served.credentials.key, served.certificate.clone())?;
    Ok(Arc::new(server_config(
        identity,
        ClientAuth::CaOrEphemeral(trust),
    )?))
}
