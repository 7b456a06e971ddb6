//! The Curator's RPC handlers, one file per service as the protobufs define them: node-facing
//! [`node`] (`Curator`) and [`local`] (`CuratorLocal`), owner-facing [`management`]
//! (`Management`) and [`aaa`] (`AAA`). Every handler authorizes by the caller's TLS certificate,
//! which the acceptor verified ([`auth`]): an ephemeral certificate proves a key (node key, join
//! key, owner key); a CA-issued one is checked against the certificate the Curator recorded for
//! its holder. Giving a node the consensus role is [`membership`].

mod aaa;
mod auth;
mod local;
mod management;
mod membership;
mod node;
mod pcr;
mod watch_slots;

use std::sync::Arc;

use polis_actors::ActorRef;
use tonic::{Response, Status};

use crate::consensus::{Consensus, NamespacedKv};
use crate::curator::records::{self, Records};
use crate::curator::CuratorError;
use crate::issuer::{GetCaCertificate, Issuer, CRL_KEY};
use crate::proto::common::ClusterDirectory;
use crate::proto::private::Node;

pub(super) use membership::peer_url;
use watch_slots::WatchSlots;
pub use watch_slots::MAX_WATCHES_PER_NODE;

/// The handlers, sharing etcd clients and the actors they ask.
#[derive(Clone)]
pub struct Services {
    records: Records,
    peer_kv: NamespacedKv,
    pki_kv: NamespacedKv,
    issuer: ActorRef<Issuer>,
    consensus: ActorRef<Consensus>,
    watch_slots: WatchSlots,
    /// The cluster CA's certificate, once the issuer has answered it: it never changes, and the
    /// unauthenticated GetCACertificate must not queue in the issuer's mailbox.
    ca: Arc<tokio::sync::OnceCell<Vec<u8>>>,
    /// The initial owner's key as the Curator read it at its start, if it was there (it always
    /// is once the bootstrap has recorded it, and never changes): Escrow checks the caller
    /// against it without a read.
    initial_owner: Option<Arc<[u8]>>,
    /// The owner certificate as last read, so that every Management call need not read it
    /// from etcd: read again only when a caller presents another (Escrow renewed it).
    owner_certificate: Arc<std::sync::RwLock<Option<Vec<u8>>>>,
    log: slog::Logger,
}

impl Services {
    /// Handlers over `records` (the Curator namespace), `peer_kv` (the consensus namespace, for
    /// the peer CA) and `pki_kv` (the PKI namespace, for the cluster CRL), issuing through
    /// `issuer` and adding members through `consensus`.
    pub fn new(
        records: Records,
        peer_kv: NamespacedKv,
        pki_kv: NamespacedKv,
        issuer: ActorRef<Issuer>,
        consensus: ActorRef<Consensus>,
        log: slog::Logger,
    ) -> Self {
        Services {
            records,
            peer_kv,
            pki_kv,
            issuer,
            consensus,
            watch_slots: WatchSlots::default(),
            ca: Arc::default(),
            initial_owner: None,
            owner_certificate: Arc::default(),
            log,
        }
    }

    /// Start with the initial owner's key and the owner certificate as the Curator read them at
    /// its start (beside its own certificate): the owner's first Escrow and Management call
    /// then read nothing from etcd. A caller presenting another certificate still has etcd
    /// asked, as after a renewal.
    pub fn knowing_owner(mut self, key: Option<Vec<u8>>, certificate: Option<Vec<u8>>) -> Self {
        self.initial_owner = key.map(Arc::from);
        self.remember_owner(certificate);
        self
    }

    /// The owner certificate as last read (see `owner_certificate`).
    fn remembered_owner(&self) -> Option<Vec<u8>> {
        self.owner_certificate
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Keep `certificate` as the owner certificate last read (see `owner_certificate`).
    fn remember_owner(&self, certificate: Option<Vec<u8>>) {
        *self
            .owner_certificate
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = certificate;
    }

    /// The cluster CA's certificate, asked of the issuer once per incarnation.
    async fn ca_certificate(&self) -> Result<Vec<u8>, CuratorError> {
        let ca = self
            .ca
            .get_or_try_init(|| async {
                Ok::<_, CuratorError>(self.issuer.ask(GetCaCertificate).await??)
            })
            .await?;
        Ok(ca.clone())
    }

    /// The directory as it stands: the records and the cluster CA's current CRL.
    async fn directory(&self) -> Result<(Vec<Node>, ClusterDirectory), CuratorError> {
        let nodes = self.records.clone().list().await?;
        let directory = records::directory(&nodes, self.crl().await?);
        Ok((nodes, directory))
    }

    /// The cluster CA's current CRL (empty before the first).
    async fn crl(&self) -> Result<Vec<u8>, CuratorError> {
        Ok(self.pki_kv.clone().get(CRL_KEY).await?.unwrap_or_default())
    }
}

/// What every handler answers.
type Answer<T> = Result<Response<T>, Status>;
