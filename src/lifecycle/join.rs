//! Join (DESIGN §3, flow 1) and what every flow ends in: following the node's record.
//!
//! A member rejoins by unsealing its configuration and asking a Curator for its CUK (JoinNode).
//! A consensus member also keeps its CUK sealed: when no Curator answers — the whole cluster is
//! starting cold, or a one-node cluster reboots — it unlocks with that, so that its etcd can come
//! back and with it a Curator. A Curator's answer always wins, so a decommissioned member that
//! reaches the cluster is refused.

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use tonic::Code;

use crate::backoff::Backoff;
use crate::consensus::Mode;
use crate::lifecycle::actor::{refused, signing_key, Run};
use crate::lifecycle::client::connect;
use crate::lifecycle::LifecycleError;
use crate::pki::{node_id, NodeCredentials, PkiError};
use crate::proto::common::{ClusterDirectory, NodeState};
use crate::proto::curator::curator_client::CuratorClient;
use crate::proto::curator::{JoinNodeRequest, WatchRequest};
use crate::proto::private::{SealedConfiguration, SealedEnvelope};
use crate::storage::UnlockKey;
use crate::tls::Identity;
use crate::tpm::SealedKind;

impl Run {
    /// A member rejoins: unseal, JoinNode for the CUK (or, for a consensus member that no
    /// Curator answers, the sealed CUK), mount, and run its roles.
    pub(super) async fn join(&self, envelope: SealedEnvelope) -> Result<(), LifecycleError> {
        let path = self.esp.sealed_path();
        let sealed: SealedConfiguration = self
            .unseal(SealedKind::Configuration, envelope, &path)
            .await?;
        let join_key = signing_key(&sealed.join_key).ok_or_else(|| LifecycleError::Corrupted {
            path: self.esp.sealed_path().display().to_string(),
            reason: "bad join key".into(),
        })?;
        let nuk = UnlockKey::from_slice(&sealed.node_unlock_key)?;
        let sealed_cuk = match sealed.cluster_unlock_key.as_slice() {
            [] => None,
            bytes => Some(UnlockKey::from_slice(bytes)?),
        };
        // An enrolment that crashed right after sealing may have left it.
        self.scrub_register_ticket();
        let directory = self.esp.directory()?;
        let address = self.address().await;
        slog::info!(self.log, "rejoining the cluster"; "curators" => directory.nodes.len(),
            "consensus_member" => sealed_cuk.is_some());
        let join_node = || self.join_node(&directory, &sealed, &join_key, address);
        let cuk = match sealed_cuk {
            None => self.retry("JoinNode", join_node).await?,
            Some(sealed_cuk) => match join_node().await {
                Ok(cuk) => cuk,
                Err(e) if e.is_transient() => {
                    slog::warn!(self.log, "no Curator answered; this consensus member unlocks with its sealed cluster unlock key (cold start)";
                        "reason" => %e);
                    sealed_cuk
                }
                Err(e) => return Err(e),
            },
        };
        self.mount(&nuk, &cuk).await?;
        let credentials = self.credentials("joined")?;
        let id = node_id(&credentials.key.verifying_key());
        self.deps.directory.set(directory);
        let cluster = self.cluster_config(&id, address);
        self.start_hostsfile(&cluster).await?;
        let member = self.config.root.etcd_data().join("member").exists();
        if member {
            let sealed = self.seal_cuk(sealed.clone(), &cuk).await?;
            self.start_member(&cluster, Mode::Restart).await?;
            return self.follow(credentials, address, sealed, cuk, true).await;
        }
        self.follow(credentials, address, sealed, cuk, false).await
    }

    /// Follow this node's record through a Curator's Watch, for good: keep the directory
    /// (hosts file, ESP) current and start etcd when the node becomes a consensus member.
    pub(super) async fn follow(
        &self,
        credentials: NodeCredentials,
        address: std::net::IpAddr,
        mut sealed: SealedConfiguration,
        cuk: UnlockKey,
        mut member: bool,
    ) -> Result<(), LifecycleError> {
        let id = node_id(&credentials.key.verifying_key());
        let identity = || Identity::new(&credentials.key, credentials.certificate.clone());
        let mut backoff = Backoff::new();
        loop {
            let watched = async {
                let channel =
                    connect(&self.deps.directory.get(), &credentials.ca, identity).await?;
                let mut events = CuratorClient::new(channel)
                    .watch(WatchRequest {})
                    .await
                    .map_err(|s| refused("Watch", s))?
                    .into_inner();
                while let Some(event) = events.message().await.map_err(|s| refused("Watch", s))? {
                    backoff.reset();
                    if event.state == NodeState::Decommissioned as i32 {
                        return Err(LifecycleError::Decommissioned);
                    }
                    if let Some(directory) = event.directory {
                        if directory != self.deps.directory.get() && !directory.nodes.is_empty() {
                            self.esp.write_directory(&directory)?;
                            self.deps.directory.set(directory);
                        }
                    }
                    let role = event.roles.and_then(|r| r.consensus_member);
                    if let (false, Some(role)) = (member, role) {
                        slog::info!(self.log, "this node is now a consensus member; joining etcd";
                            "peers" => role.peers.len());
                        sealed = self.seal_cuk(sealed.clone(), &cuk).await?;
                        let mode = Mode::Join {
                            initial_cluster: crate::curator::initial_cluster(&role.peers),
                            ca: role.ca_certificate,
                            certificate: role.peer_certificate,
                            key: credentials
                                .key
                                .to_pkcs8_der()
                                .map_err(|e| PkiError::BadKey(e.to_string()))?
                                .as_bytes()
                                .to_vec(),
                            crl: role.initial_crl,
                        };
                        self.start_member(&self.cluster_config(&id, address), mode)
                            .await?;
                        member = true;
                    }
                }
                Ok::<(), LifecycleError>(())
            };
            match watched.await {
                Ok(()) => slog::info!(self.log, "the Curator ended the watch; reconnecting"),
                Err(e) if e.is_transient() => {
                    self.refuse_if_decommissioned(&sealed, address).await?;
                    backoff.wait(&self.log, "watch", &e).await
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The watch failed: perhaps because the node was decommissioned while no watch was open,
    /// and its node certificate revoked (TLS 1.3 reports that only at the first call).
    /// JoinNode, by the join key, which no CRL lists, says so; any other answer means retrying
    /// the watch.
    async fn refuse_if_decommissioned(
        &self,
        sealed: &SealedConfiguration,
        address: std::net::IpAddr,
    ) -> Result<(), LifecycleError> {
        let Some(join_key) = signing_key(&sealed.join_key) else {
            return Ok(());
        };
        let directory = self.deps.directory.get();
        match self.join_node(&directory, sealed, &join_key, address).await {
            Err(LifecycleError::Refused { status, .. })
                if status.code() == Code::PermissionDenied =>
            {
                slog::crit!(self.log, "JoinNode refused this node"; "answer" => %status);
                Err(LifecycleError::Decommissioned)
            }
            _ => Ok(()),
        }
    }

    /// Ask the Curators of `directory` for this node's CUK, as its join key.
    async fn join_node(
        &self,
        directory: &ClusterDirectory,
        sealed: &SealedConfiguration,
        join_key: &SigningKey,
        address: std::net::IpAddr,
    ) -> Result<UnlockKey, LifecycleError> {
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
            .map_err(|status| refused("JoinNode", status))?;
        Ok(UnlockKey::from_slice(
            &response.into_inner().cluster_unlock_key,
        )?)
    }

    /// A consensus member's sealed configuration carries its CUK (see the module comment); add
    /// it before etcd starts, so a member never runs without it.
    async fn seal_cuk(
        &self,
        mut sealed: SealedConfiguration,
        cuk: &UnlockKey,
    ) -> Result<SealedConfiguration, LifecycleError> {
        if sealed.cluster_unlock_key.as_slice() != cuk.as_bytes() {
            sealed.cluster_unlock_key = cuk.as_bytes().to_vec();
            self.seal_configuration(&sealed).await?;
            slog::info!(
                self.log,
                "sealed the cluster unlock key beside the node's (consensus member)"
            );
        }
        Ok(sealed)
    }
}
