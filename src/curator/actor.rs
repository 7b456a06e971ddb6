//! The Curator actor: serves the Curator's services on the node's address once etcd and the
//! issuer are ready, presenting its Curator certificate (see [`super::server_certificate`]).
//! The server lives as long as the incarnation; if it ends, the actor fails and its supervisor
//! starts a new one. The cluster CRL is followed, and the Curator certificate renewed two
//! thirds into its life: each change swaps the TLS config that the next handshake uses.

use std::cell::RefCell;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use polis_actors::{Actor, ActorRef, Ctx, Failure, Started};
use rustls::ServerConfig;
use tokio::sync::watch;

use crate::consensus::{Consensus, Kv, NamespacedKv, NAMESPACE as CONSENSUS_NAMESPACE};
use crate::curator::owner_only::OwnerOnly;
use crate::curator::records::{Records, INITIAL_OWNER, NAMESPACE, OWNER_CERTIFICATE};
use crate::curator::{server_certificate, Services};
use crate::grpc::incoming;
use crate::issuer::{Issuer, Revoke, CRL_KEY};
use crate::metrics::health::Health;
use crate::metrics::NodeMetrics;
use crate::pki::{instant_at, not_after, renew_at, NodeCredentials};
use crate::proto::api::aaa_server::AaaServer;
use crate::proto::api::management_server::ManagementServer;
use crate::proto::curator::curator_local_server::CuratorLocalServer;
use crate::proto::curator::curator_server::CuratorServer;
use crate::retry::Retry;
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
    /// What a bootstrap hands its Curator's first start; taken by that start.
    pub handover: Arc<Mutex<Handover>>,
}

/// What a bootstrap hands its Curator's first start: the listener it bound as it began, so that
/// a client waits in its backlog for the first answer rather than polling a closed port, and
/// what it committed, so that the start reads nothing back. Every other start binds and reads
/// for itself.
#[derive(Debug, Default)]
pub struct Handover {
    /// The Curator's listener (non-blocking).
    pub listener: Option<std::net::TcpListener>,
    /// What the bootstrap committed.
    pub committed: Option<CuratorStart>,
}

/// What a Curator starts serving on: its certificate, the cluster CRL, the initial owner's key
/// and the owner certificate. Read from etcd at a start, or handed over by the bootstrap that
/// has just committed them (issue 12: reading them back cost 0.8–1.3 ms of a cold start).
#[derive(Debug)]
pub struct CuratorStart {
    /// The Curator certificate in the node's record (DER).
    pub certificate: Vec<u8>,
    /// The cluster CRL (DER).
    pub crl: Option<Vec<u8>>,
    /// The initial owner's public key.
    pub owner_key: Option<Vec<u8>>,
    /// The owner certificate the bootstrap issued.
    pub owner_certificate: Option<Vec<u8>>,
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
        // A lock poisoned by a panic elsewhere leaves this start to bind and read for itself.
        let handover = match self.config.handover.lock() {
            Ok(mut handover) => std::mem::take(&mut *handover),
            Err(_) => Handover::default(),
        };
        let (consensus, issuer, listen, log) = (
            self.consensus.clone(),
            self.issuer.clone(),
            self.config.listen,
            ctx.log().clone(),
        );
        let calls = self.config.metrics.grpc.layer();
        let health = self.config.metrics.health.clone();
        let serve = async move {
            // Bound before the reads below (a bootstrap's first start takes the listener its
            // bootstrap bound): a client connecting meanwhile waits in the listen backlog for its
            // handshake, not for a retry after a refusal. etcd has answered by now (a bootstrap's
            // is its own quorum), so nobody waits on a member that may never reach quorum.
            let listener = match handover.listener {
                Some(bound) => tokio::net::TcpListener::from_std(bound),
                None => tokio::net::TcpListener::bind(listen).await,
            }
            .map_err(|e| Failure::msg(format!("cannot listen on {listen}: {e}")))?;
            let kv = consensus.ask(Kv(NAMESPACE.into())).await??;
            let peer_kv = consensus.ask(Kv(CONSENSUS_NAMESPACE.into())).await??;
            let pki_kv = consensus.ask(Kv(crate::issuer::NAMESPACE.into())).await??;
            let records = Records::new(kv);
            let start = match handover.committed {
                Some(start) => start,
                None => {
                    read_start(records.clone(), pki_kv.clone(), &issuer, &credentials, &log).await?
                }
            };
            health.certificate_held("curator", &start.certificate);
            let identity = ServerIdentity {
                credentials,
                certificate: start.certificate,
            };
            let crl = start.crl;
            let (configs, updates) = watch::channel(tls_config(&identity, crl.clone())?);
            let tls = Rc::new(RefCell::new(ServedTls {
                identity,
                crl,
                configs,
            }));
            let services = Services::new(
                records.clone(),
                peer_kv,
                pki_kv.clone(),
                issuer.clone(),
                consensus,
                log.clone(),
            )
            .knowing_owner(start.owner_key, start.owner_certificate);
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
            Ok::<_, Failure>((server, tls, pki_kv, records, issuer))
        };
        let health = self.config.metrics.health.clone();
        ctx.spawn(serve, move |served, curator: &mut Self, ctx| {
            let (server, tls, mut pki_kv, records, issuer) = served?;
            let counted = records.clone();
            ctx.run_interval(COUNT_NODES_EVERY, move |curator: &mut Self, ctx| {
                curator.count_nodes(counted.clone(), ctx);
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
            let followed = tls.clone();
            let follow_crl = async move {
                pki_kv
                    .follow(CRL_KEY, |crl| {
                        let mut tls = followed.borrow_mut();
                        tls.crl = Some(crl.to_vec());
                        tls.send()?;
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
            let renewal = renew(tls, records, issuer, health, ctx.log().clone());
            ctx.spawn(renewal, |ended, _, _| Err(ended));
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

/// What a Curator starts on, read from etcd: its certificate (renewed or issued first if due or
/// missing), with the CRL and the owner's key and certificate read beside it, so that neither
/// serving nor the owner's first call waits for a round trip of its own.
async fn read_start(
    mut records: Records,
    mut pki_kv: NamespacedKv,
    issuer: &ActorRef<Issuer>,
    credentials: &NodeCredentials,
    log: &slog::Logger,
) -> Result<CuratorStart, Failure> {
    let (mut crl_kv, mut owner_records) = (pki_kv.clone(), records.clone());
    let mut owner_key_records = records.clone();
    let (served, crl, owner, owner_key) = futures::join!(
        server_certificate::current(&mut records, issuer, credentials),
        crl_kv.get(CRL_KEY),
        owner_records.kv().get(OWNER_CERTIFICATE),
        owner_key_records.kv().get(INITIAL_OWNER),
    );
    let served = served?;
    let crl = match served.retired.is_empty() {
        true => crl?,
        // No earlier incarnation serves any more: what it served can go, and the CRL served
        // is the one that lists it.
        false => {
            retire(issuer, served.retired, log).await;
            pki_kv.get(CRL_KEY).await?
        }
    };
    Ok(CuratorStart {
        certificate: served.certificate,
        crl,
        owner_key: owner_key?,
        owner_certificate: owner?,
    })
}

/// What the Curator presents: the node key with its Curator certificate.
struct ServerIdentity {
    credentials: NodeCredentials,
    certificate: Vec<u8>,
}

/// What the server's TLS config is made of, shared by the CRL watch and the renewal: a change
/// to either sends a new config, which the next handshake uses.
struct ServedTls {
    identity: ServerIdentity,
    crl: Option<Vec<u8>>,
    configs: watch::Sender<Arc<ServerConfig>>,
}

impl ServedTls {
    fn send(&self) -> Result<(), TlsError> {
        self.configs
            .send_replace(tls_config(&self.identity, self.crl.clone())?);
        Ok(())
    }
}

/// Renew the Curator certificate two thirds into its life, for as long as the server runs:
/// the new one is served from the next handshake, then the one it replaced is revoked. A
/// failure is logged as a warning and retried with backoff; only a TLS config that cannot be
/// built ends it (and the incarnation).
async fn renew(
    tls: Rc<RefCell<ServedTls>>,
    mut records: Records,
    issuer: ActorRef<Issuer>,
    health: Health,
    log: slog::Logger,
) -> Failure {
    let mut retry = Retry::new();
    loop {
        let (due, credentials) = {
            let tls = tls.borrow();
            let served = &tls.identity;
            (
                renew_at(&served.certificate).unwrap_or(0),
                served.credentials.clone(),
            )
        };
        tokio::time::sleep_until(instant_at(due)).await;
        let served = match server_certificate::current(&mut records, &issuer, &credentials).await {
            Ok(served) => served,
            Err(e) => {
                slog::warn!(log, "the Curator certificate could not be renewed"; "error" => %e);
                retry.wait(&log, "renew the Curator certificate", &e).await;
                continue;
            }
        };
        retry.reset();
        {
            let mut tls = tls.borrow_mut();
            tls.identity.certificate = served.certificate.clone();
            if let Err(e) = tls.send() {
                return Failure::msg(format!("the renewed Curator certificate: {e}"));
            }
        }
        health.certificate_held("curator", &served.certificate);
        slog::info!(log, "Curator certificate renewed";
            "expires" => not_after(&served.certificate).unwrap_or_default());
        retire(&issuer, served.retired, &log).await;
    }
}

/// Revoke Curator certificates no longer served. One that cannot be revoked is logged: it
/// lapses at its expiry, a node-certificate lifetime at most.
async fn retire(issuer: &ActorRef<Issuer>, retired: Vec<Vec<u8>>, log: &slog::Logger) {
    for certificate in retired {
        let error = match issuer.ask(Revoke(certificate)).await {
            Ok(Ok(_)) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(e) => e.to_string(),
        };
        slog::warn!(log, "a replaced Curator certificate could not be revoked; it lapses at its expiry";
            "error" => error);
    }
}

/// The server config: the Curator certificate (the CA's sent after it, for clients meeting
/// the cluster first), admitting clients of the cluster CA not revoked by `crl`, and ephemeral
/// ones (which the handlers authorize by key).
fn tls_config(
    served: &ServerIdentity,
    crl: Option<Vec<u8>>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let trust = Trust {
        ca: served.credentials.ca.clone(),
        crls: crl.into_iter().collect(),
    };
    let identity = Identity::new(&served.credentials.key, served.certificate.clone())?
        .with_ca(served.credentials.ca.clone());
    Ok(Arc::new(server_config(
        identity,
        ClientAuth::CaOrEphemeral(trust),
    )?))
}
