//! Join (DESIGN §3, flow 1) and what every flow ends in: following the node's record.
//!
//! A member rejoins by unsealing its configuration and asking a Curator for its CUK (JoinNode).
//! When no Curator answers — the whole cluster is starting cold — a consensus member unlocks
//! through its peers instead (quorum unlock, [`crate::quorum`]): it gathers their shares of its
//! CUK and checks what they combine to against the digest its sealed configuration keeps. Only
//! a consensus member whose CUK no peer holds yet (a cluster's only member, or one whose shares
//! are still being placed) keeps its CUK sealed and unlocks with that. A Curator's answer always
//! wins, so a decommissioned member that reaches the cluster is refused.

use std::net::IpAddr;

use ed25519_dalek::SigningKey;
use tonic::transport::Channel;
use tonic::Code;

use crate::consensus::Mode;
use crate::fsutil::Durability;
use crate::lifecycle::actor::{refused, Run};
use crate::lifecycle::client::{connect, names_a_curator};
use crate::lifecycle::material::{signing_key, Membership};
use crate::lifecycle::LifecycleError;
use crate::pki::{self, node_id, pkcs8, verify_node_certificate, NodeCredentials};
use crate::proto::common::{cluster_directory, ClusterDirectory, NodeState};
use crate::proto::curator::confirm_shares_request::Sealed;
use crate::proto::curator::curator_client::CuratorClient;
use crate::proto::curator::{
    ConfirmSharesRequest, JoinNodeRequest, RenewCertificateRequest, WatchEvent, WatchRequest,
};
use crate::proto::private::{HeldShares, SealedConfiguration, SealedEnvelope, Share};
use crate::quorum::{self, client::gather};
use crate::retry::Retry;
use crate::storage::{boot_directory, UnlockKey};
use crate::tls::Identity;
use crate::tpm::SealedKind;

impl Run {
    /// A member rejoins: unseal, JoinNode for the CUK (or, on a cold start, the peers' shares
    /// or the sealed CUK), mount, and run its roles.
    pub(super) async fn join(&self, envelope: SealedEnvelope) -> Result<(), LifecycleError> {
        let path = self.esp.sealed_path();
        let bytes = self.unseal_configuration(envelope).await?;
        let Membership {
            sealed,
            join_key,
            nuk,
            sealed_cuk,
        } = Membership::decode(&bytes, &path)?;
        let escrowed = !sealed.cluster_unlock_key_digest.is_empty();
        // An enrolment that crashed right after sealing may have left it.
        self.scrub_register_ticket().await;
        let directory = self.esp.directory()?;
        let address = self.address().await;
        slog::info!(self.log, "rejoining the cluster"; "curators" => directory.nodes.len(),
            "sealed_cuk" => sealed_cuk.is_some(), "escrowed_cuk" => escrowed);
        let others = others(&directory, address);
        let join_node = || self.join_node(&others, &sealed, &join_key, address);
        let Joined { cuk, certificate } = match (sealed_cuk, escrowed) {
            (Some(sealed_cuk), _) if !names_a_curator(&others) => {
                slog::info!(self.log, "no other Curator to ask: this consensus member, whose cluster unlock key no peer holds, unlocks with its sealed one");
                Joined {
                    cuk: sealed_cuk,
                    certificate: Vec::new(),
                }
            }
            (Some(sealed_cuk), _) => match join_node().await {
                Ok(joined) => joined,
                Err(e) if e.is_transient() => {
                    slog::warn!(self.log, "no Curator answered; this consensus member, whose cluster unlock key no peer holds, unlocks with its sealed one (cold start)";
                        "reason" => %e);
                    Joined {
                        cuk: sealed_cuk,
                        certificate: Vec::new(),
                    }
                }
                Err(e) => return Err(e),
            },
            (None, true) => {
                self.quorum_unlock(&directory, &sealed, &join_key, address)
                    .await?
            }
            (None, false) => self.retry("JoinNode", join_node).await?,
        };
        self.crash_point("join:unlocked");
        self.mount(&nuk, &cuk).await?;
        self.crash_point("join:mounted");
        let credentials = self
            .adopt_certificate(self.credentials("joined")?, certificate)
            .await?;
        let id = node_id(&credentials.key.verifying_key());
        self.deps.directory.set(directory);
        let cluster = self.cluster_config(&id, address);
        self.start_hostsfile(&cluster).await?;
        self.crash_point("join:hostsfile");
        let member = self.config.root.etcd_member_to_restart();
        if member {
            // A member sealed before quorum unlock existed keeps its CUK until its shares are
            // placed (then `follow` drops it).
            let sealed = match escrowed {
                true => sealed,
                false => self.seal_cuk(sealed.clone(), &cuk).await?,
            };
            self.start_member(&cluster, Mode::Restart).await?;
            self.crash_point("join:member");
            return self.follow(credentials, address, sealed, cuk, true).await;
        }
        self.follow(credentials, address, sealed, cuk, false).await
    }

    /// A consensus member whose CUK its peers hold: JoinNode while a Curator answers, else
    /// gather the peers' shares, until one of the two gives the CUK. Each round that fails says
    /// why (which peers, how many shares of how many needed).
    async fn quorum_unlock(
        &self,
        directory: &ClusterDirectory,
        sealed: &SealedConfiguration,
        join_key: &SigningKey,
        address: std::net::IpAddr,
    ) -> Result<Joined, LifecycleError> {
        let mut retry = Retry::new();
        loop {
            match self.join_node(directory, sealed, join_key, address).await {
                Ok(joined) => return Ok(joined),
                Err(e) if e.is_transient() => {
                    slog::info!(self.log, "no Curator answered; asking the other consensus members for their shares of this node's cluster unlock key";
                        "reason" => %e);
                }
                Err(e) => return Err(e),
            }
            let digest = &sealed.cluster_unlock_key_digest;
            match gather(directory, address, join_key, digest).await {
                Ok(cuk) => {
                    slog::info!(
                        self.log,
                        "unlocked with the other consensus members' shares (quorum unlock)"
                    );
                    // No certificate: if it expired meanwhile, the watch's JoinNode renews it.
                    return Ok(Joined {
                        cuk,
                        certificate: Vec::new(),
                    });
                }
                Err(why) => {
                    slog::warn!(self.log, "this consensus member cannot unlock yet: no Curator answered, and its peers' shares do not suffice";
                        "reason" => %why);
                    retry.wait(&self.log, "quorum unlock", &why).await;
                }
            }
        }
    }

    /// Follow this node's record through a Curator's Watch, for good: keep the directory
    /// (hosts file, ESP) current, start etcd when the node becomes a consensus member, and
    /// renew the node certificate two thirds into its life (then watch again with the new one:
    /// the Curator accepts only the certificate its record holds).
    pub(super) async fn follow(
        &self,
        mut credentials: NodeCredentials,
        address: std::net::IpAddr,
        mut sealed: SealedConfiguration,
        cuk: UnlockKey,
        mut member: bool,
    ) -> Result<(), LifecycleError> {
        let id = node_id(&credentials.key.verifying_key());
        let mut retry = Retry::new();
        // The shares this node last sealed on its ESP, once it has.
        let mut held: Option<Vec<Share>> = None;
        loop {
            let watched = async {
                let identity = || Identity::new(&credentials.key, credentials.certificate.clone());
                let channel =
                    connect(&self.deps.directory.get(), &credentials.ca, identity).await?;
                let mut client = CuratorClient::new(channel);
                let mut events = client
                    .watch(WatchRequest {})
                    .await
                    .map_err(|s| refused("Watch", s))?
                    .into_inner();
                let renewal = tokio::time::sleep_until(pki::instant_at(pki::renew_at(
                    &credentials.certificate,
                )?));
                tokio::pin!(renewal);
                loop {
                    let next = tokio::select! {
                        next = events.message() => next.map_err(|s| refused("Watch", s))?,
                        () = &mut renewal => return self.renew(&mut client).await.map(Some),
                    };
                    let Some(event) = next else { break };
                    retry.reset();
                    self.deps.metrics.health.lifecycle_done();
                    let health = &self.deps.metrics.health;
                    health.certificate_held("node", &credentials.certificate);
                    if event.state == NodeState::Decommissioned as i32 {
                        return Err(LifecycleError::Decommissioned);
                    }
                    if let Some(directory) = event.directory.clone() {
                        let known = self.deps.directory.get();
                        if directory != known && !directory.nodes.is_empty() {
                            if boot_directory(&directory) != boot_directory(&known) {
                                let written = directory.clone();
                                self.on_esp(move |esp| esp.write_directory(&written))
                                    .await?;
                            }
                            self.deps.directory.set(directory);
                        }
                    }
                    let role = event.roles.clone().and_then(|r| r.consensus_member);
                    if let (false, Some(role)) = (member, role) {
                        slog::info!(self.log, "this node is now a consensus member; joining etcd";
                            "peers" => role.peers.len());
                        sealed = self.seal_cuk(sealed.clone(), &cuk).await?;
                        self.crash_point("role:cuk-sealed");
                        let mode = Mode::Join {
                            peers: role.peers,
                            ca: role.ca_certificate,
                            certificate: role.peer_certificate,
                            key: pkcs8(&credentials.key)?.to_vec(),
                            crl: role.initial_crl,
                        };
                        self.start_member(&self.cluster_config(&id, address), mode)
                            .await?;
                        self.crash_point("role:etcd-joined");
                        member = true;
                    }
                    held = Some(
                        self.hold_shares(&event, held.as_deref(), &mut client)
                            .await?,
                    );
                    sealed = self.escrow_cuk(&event, sealed.clone(), &cuk).await?;
                }
                Ok::<Option<Vec<u8>>, LifecycleError>(None)
            };
            let watched = watched.await;
            match watched {
                Ok(Some(renewed)) => {
                    credentials = self.adopt_certificate(credentials, renewed).await?
                }
                Ok(None) => slog::info!(self.log, "the Curator ended the watch; reconnecting"),
                Err(e) if e.is_transient() => {
                    let certificate = self.rejoin_after_failure(&sealed, address).await?;
                    if let Some(certificate) = certificate {
                        credentials = self.adopt_certificate(credentials, certificate).await?;
                    }
                    retry.wait(&self.log, "watch", &e).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// RenewCertificate, authorized by the current certificate; answers the new one. A failure
    /// is logged here and retried by the caller.
    async fn renew(&self, client: &mut CuratorClient<Channel>) -> Result<Vec<u8>, LifecycleError> {
        match client.renew_certificate(RenewCertificateRequest {}).await {
            Ok(renewed) => Ok(renewed.into_inner().node_certificate),
            Err(status) => {
                slog::warn!(self.log, "the node certificate could not be renewed; trying again";
                    "answer" => %status);
                Err(refused("RenewCertificate", status))
            }
        }
    }

    /// Keep `certificate`, which a Curator handed this node, as its node certificate: checked
    /// (the pinned CA, this node's key and ID), then written beside the key. Answers the
    /// credentials to use from now on. One that fails the check is logged and not kept: the
    /// node goes on with its own, and a Curator's bad answer never stops it.
    async fn adopt_certificate(
        &self,
        mut credentials: NodeCredentials,
        certificate: Vec<u8>,
    ) -> Result<NodeCredentials, LifecycleError> {
        if certificate.is_empty() || certificate == credentials.certificate {
            return Ok(credentials);
        }
        let key = credentials.key.verifying_key();
        if let Err(e) = verify_node_certificate(&credentials.ca, &certificate, &key) {
            slog::error!(self.log, "a Curator handed this node a certificate it refuses; keeping its own";
                "reason" => %e);
            return Ok(credentials);
        }
        credentials.certificate = certificate;
        self.save_credentials(&credentials, Durability::Synced)
            .await?;
        slog::info!(self.log, "node certificate renewed";
            "expires" => pki::not_after(&credentials.certificate)?);
        Ok(credentials)
    }

    /// The watch failed: perhaps because the node was decommissioned while no watch was open,
    /// and its node certificate revoked (TLS 1.3 reports that only at the first call), or
    /// because its certificate expired while it was off. JoinNode, by the join key, which no CRL
    /// lists, says which: a refusal stops the node; otherwise it answers the node's certificate,
    /// renewed if it was due, and the watch is tried again.
    async fn rejoin_after_failure(
        &self,
        sealed: &SealedConfiguration,
        address: std::net::IpAddr,
    ) -> Result<Option<Vec<u8>>, LifecycleError> {
        let Some(join_key) = signing_key(&sealed.join_key) else {
            return Ok(None);
        };
        let directory = self.deps.directory.get();
        match self.join_node(&directory, sealed, &join_key, address).await {
            Err(LifecycleError::Refused { status, .. })
                if status.code() == Code::PermissionDenied =>
            {
                slog::crit!(self.log, "JoinNode refused this node"; "answer" => %status);
                Err(LifecycleError::Decommissioned)
            }
            Ok(joined) => Ok(Some(joined.certificate)),
            Err(_) => Ok(None),
        }
    }

    /// Ask the Curators of `directory` for this node's CUK, as its join key.
    async fn join_node(
        &self,
        directory: &ClusterDirectory,
        sealed: &SealedConfiguration,
        join_key: &SigningKey,
        address: std::net::IpAddr,
    ) -> Result<Joined, LifecycleError> {
        let channel = connect(directory, &sealed.cluster_ca, || {
            Identity::ephemeral(join_key)
        })
        .await?;
        let request = JoinNodeRequest {
            external_address: address.to_string(),
        };
        let response = CuratorClient::new(channel)
            .join_node(request)
            .await
            .map_err(|status| refused("JoinNode", status))?
            .into_inner();
        Ok(Joined {
            cuk: UnlockKey::from_slice(&response.cluster_unlock_key)?,
            certificate: response.node_certificate,
        })
    }

    /// A new consensus member's sealed configuration carries its CUK (and its digest) until its
    /// peers hold shares of it (see the module comment); add it before etcd starts, so a member
    /// is never without a way to unlock on a cold start.
    async fn seal_cuk(
        &self,
        mut sealed: SealedConfiguration,
        cuk: &UnlockKey,
    ) -> Result<SealedConfiguration, LifecycleError> {
        if sealed.cluster_unlock_key.as_slice() != cuk.as_bytes() {
            sealed.cluster_unlock_key = cuk.as_bytes().to_vec();
            sealed.cluster_unlock_key_digest = quorum::cuk_digest(cuk);
            self.seal_configuration(&sealed).await?;
            slog::info!(
                self.log,
                "sealed the cluster unlock key beside the node's (consensus member)"
            );
        }
        Ok(sealed)
    }

    /// Keep the shares the Curator says this node holds (`event.held_shares`) sealed on the ESP
    /// (none: no file), and confirm to the Curator those it has not counted as sealed yet.
    /// `last` is what this node sealed before, if it knows; answers what is sealed now.
    async fn hold_shares(
        &self,
        event: &WatchEvent,
        last: Option<&[Share]>,
        client: &mut CuratorClient<Channel>,
    ) -> Result<Vec<Share>, LifecycleError> {
        let mut shares: Vec<Share> = event
            .held_shares
            .iter()
            .map(|s| {
                let mut share = s.clone();
                share.confirmed = false;
                share
            })
            .collect();
        shares.sort_by(|a, b| a.owner.cmp(&b.owner));
        if last != Some(shares.as_slice()) {
            if shares.is_empty() {
                self.on_esp(|esp| esp.remove_held_shares()).await?;
            } else {
                let held = HeldShares {
                    shares: shares.clone(),
                };
                let envelope = self.seal(SealedKind::HeldShares, &held).await?;
                self.on_esp(move |esp| esp.write_held_shares(&envelope))
                    .await?;
            }
            slog::info!(self.log, "held shares of the other members' cluster unlock keys sealed";
                "shares" => shares.len());
        }
        let unconfirmed: Vec<Sealed> = event
            .held_shares
            .iter()
            .filter(|s| !s.confirmed)
            .map(|s| Sealed {
                owner: s.owner.clone(),
                generation: s.generation,
            })
            .collect();
        if !unconfirmed.is_empty() {
            client
                .confirm_shares(ConfirmSharesRequest {
                    sealed: unconfirmed,
                })
                .await
                .map_err(|s| refused("ConfirmShares", s))?;
        }
        Ok(shares)
    }

    /// Keep this node's own CUK sealed only while the Curator says it must (a consensus member
    /// whose CUK its peers do not all hold yet); else drop it, keeping its digest (quorum
    /// unlock). Answers the sealed configuration as it is now.
    async fn escrow_cuk(
        &self,
        event: &WatchEvent,
        mut sealed: SealedConfiguration,
        cuk: &UnlockKey,
    ) -> Result<SealedConfiguration, LifecycleError> {
        let member = event
            .roles
            .as_ref()
            .is_some_and(|r| r.consensus_member.is_some());
        if member && event.keep_cluster_unlock_key {
            return self.seal_cuk(sealed, cuk).await;
        }
        if sealed.cluster_unlock_key.is_empty() {
            return Ok(sealed);
        }
        sealed.cluster_unlock_key.clear();
        sealed.cluster_unlock_key_digest = match member {
            true => quorum::cuk_digest(cuk),
            false => Vec::new(),
        };
        self.seal_configuration(&sealed).await?;
        slog::info!(self.log, "the cluster unlock key is no longer sealed on this node";
            "why" => if member { "its peers hold confirmed shares of it (quorum unlock)" }
                else { "not a consensus member" });
        Ok(sealed)
    }
}

/// `directory` without the node at `address`: this node's own Curator cannot answer before its
/// etcd runs, so asking it cost every restart a refused connection (issue 12).
fn others(directory: &ClusterDirectory, address: IpAddr) -> ClusterDirectory {
    let at = |node: &cluster_directory::Node| {
        node.addresses
            .iter()
            .any(|a| a.host.parse::<IpAddr>() == Ok(address))
    };
    ClusterDirectory {
        nodes: directory.nodes.iter().filter(|n| !at(n)).cloned().collect(),
        crl: directory.crl.clone(),
    }
}

/// What JoinNode answers: the CUK, and the node certificate (empty when it came from elsewhere).
struct Joined {
    cuk: UnlockKey,
    certificate: Vec<u8>,
}
