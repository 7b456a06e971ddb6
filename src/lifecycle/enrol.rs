//! Enrolment (DESIGN §3, flows 2 and 3): bootstrap a new cluster or register into one. Before
//! formatting, the keys go into a TPM-sealed journal on the ESP, which advances after each step;
//! a boot that finds it resumes at its step. The sealed configuration replaces the journal at the
//! end, and nothing on the ESP claims membership before etcd has recorded it.

use std::time::Duration;

use prost::Message;
use tonic::Code;

use crate::consensus::{peer_pki, Kv, Mode};
use crate::curator::records::{self, Records};
use crate::issuer::{
    bounded_lifetime, ApprovePcr, GetCaCertificate, Issue, Lifetimes, PcrApproval, Revoke,
    MIN_LIFETIME,
};
use crate::lifecycle::actor::{refused, Run};
use crate::lifecycle::client::connect;
use crate::lifecycle::cluster;
use crate::lifecycle::material::{Enrolment, EnrolmentKeys, EnrolmentParams};
use crate::lifecycle::LifecycleError;
use crate::pki::{generate_key, node_id, verify_node_certificate, NodeCredentials, Template};
use crate::proto::api::node_parameters::{Cluster, ClusterBootstrap, ClusterRegister};
use crate::proto::api::NodeParameters;
use crate::proto::common::{cluster_directory, Address, ClusterDirectory};
use crate::proto::curator::curator_client::CuratorClient;
use crate::proto::curator::{CommitNodeRequest, RegisterNodeRequest};
use crate::proto::private::enrolment_journal::Flow as JournalFlow;
use crate::proto::private::{EnrolmentJournal, SealedConfiguration};
use crate::storage::{DataError, MountNew, NewKeys, StorageError};
use crate::tls::Identity;
use crate::tpm::{RecoveryKey, SealedKind};

/// Journal steps: the last one completed.
const KEYS: u32 = 1;
const FORMATTED: u32 = 2;
const REGISTERED: u32 = 3;
const COMMITTED: u32 = 4;

impl Run {
    /// New keys into a sealed journal: the first write of an enrolment, before anything
    /// irreversible.
    pub(super) async fn begin(
        &self,
        flow: JournalFlow,
        params: Cluster,
    ) -> Result<(), LifecycleError> {
        slog::info!(self.log, "starting enrolment"; "flow" => ?flow);
        let (nuk, cuk) = self
            .retry("new keys", || async {
                Ok(self.deps.storage.ask(NewKeys).await??)
            })
            .await?;
        // The recovery key comes later, with the FORMATTED step: nothing needs it before.
        let journal = EnrolmentJournal {
            flow: flow as i32,
            recovery_key_public: Vec::new(),
            recovery_key_private: Vec::new(),
            step: KEYS,
            node_unlock_key: nuk.as_bytes().to_vec(),
            cluster_unlock_key: cuk.as_bytes().to_vec(),
            node_key: generate_key()?.to_bytes().to_vec(),
            join_key: generate_key()?.to_bytes().to_vec(),
            parameters: NodeParameters {
                cluster: Some(params),
                network: None,
            }
            .encode_to_vec(),
        };
        self.save_journal(&journal).await?;
        self.checkpoint(flow, "keys");
        self.enrol(Enrolment::check(journal, &self.esp.journal_path())?)
            .await
    }

    /// Continue an enrolment from its journal's step.
    pub(super) async fn enrol(&self, enrolment: Enrolment) -> Result<(), LifecycleError> {
        let Enrolment {
            mut journal,
            mut keys,
            params,
        } = enrolment;
        let flow = journal.flow();
        let formatting = journal.step < FORMATTED;
        if formatting {
            self.mount_new(&keys).await?;
            journal.step = FORMATTED;
        } else {
            self.mount(&keys.nuk, &keys.cuk).await?;
        }
        // The step only spares a resumed enrolment the formatting: one that finds the
        // partition formatted opens it (`mount_new`), so nothing needs to wait for this. It
        // records the recovery key too, made here (a TPM key, a few milliseconds) rather than
        // before the formatting: the cluster learns it only after this step.
        let (recording, mut recovery) = (&mut journal, keys.recovery.clone());
        let recorded = async move {
            if !formatting {
                return Ok(recovery);
            }
            if recovery.is_none() {
                recovery = self.new_recovery_key().await?;
            }
            let made = recovery.clone().unwrap_or_default();
            recording.recovery_key_public = made.public;
            recording.recovery_key_private = made.private;
            self.save_journal(recording).await?;
            self.checkpoint(flow, "formatted");
            Ok(recovery)
        };
        match params {
            EnrolmentParams::Bootstrap(params) => self.bootstrap(recorded, keys, params).await,
            EnrolmentParams::Register(params) => {
                keys.recovery = recorded.await?;
                self.register(journal, keys, params).await
            }
        }
    }

    /// The first node of a new cluster: etcd, the CA, its record, its credentials. Its etcd
    /// starts while `formatted` records the formatting (and the recovery key, which it answers)
    /// in the journal. Every later step is idempotent, so a resumed bootstrap runs them all
    /// again and the journal needs no more steps until the sealed configuration replaces it.
    async fn bootstrap(
        &self,
        formatted: impl std::future::Future<Output = Result<Option<RecoveryKey>, LifecycleError>>,
        mut keys: EnrolmentKeys,
        params: ClusterBootstrap,
    ) -> Result<(), LifecycleError> {
        let id = node_id(&keys.node.verifying_key());
        let address = self.address().await;
        let cluster = self.cluster_config(&id, address);
        self.deps.directory.set(ClusterDirectory {
            nodes: vec![cluster_directory::Node {
                id: id.clone(),
                addresses: vec![Address {
                    host: address.to_string(),
                }],
                curator: true,
            }],
            crl: Vec::new(),
        });
        self.start_hostsfile(&cluster).await?;
        let lifetimes = certificate_lifetimes(&params)?;
        let mode = Mode::Bootstrap {
            peer_lifetime: lifetimes.node,
        };
        // The issuer stores the lifetimes as it starts, before the first certificate.
        let member = cluster::member_children(&cluster, mode, Some(lifetimes));
        let (consensus, issuer) = (member.consensus_ref, member.issuer_ref);
        // PCR 7 is read while etcd elects itself: nothing in it needs etcd.
        let (formatted, started, pcr7) =
            futures::join!(formatted, self.start_child(member.consensus), self.pcr7());
        keys.recovery = formatted?;
        started?;
        let pcr7 = pcr7?;
        self.start_child(member.pki).await?;

        let (recovery_key, pcr7_recorded) = recovery_record(&keys, &pcr7)?;
        let node_certificate = self.retry("the node certificate", || async {
            if let Some(credentials) = NodeCredentials::load(&self.config.root)? {
                return Ok(credentials);
            }
            let template = Template::Node {
                node_id: id.clone(),
            };
            let issued = issuer
                .ask(Issue(template, keys.node.verifying_key()))
                .await??;
            let credentials = NodeCredentials {
                ca: issuer.ask(GetCaCertificate).await??,
                certificate: issued.der,
                key: keys.node.clone(),
            };
            self.save_credentials(&credentials).await?;
            Ok(credentials)
        });
        // The record names the peer CA, read while the node certificate is made and saved.
        let peer_ca = self.retry("the etcd peer CA", || async {
            let mut kv = consensus
                .ask(Kv(crate::consensus::NAMESPACE.into()))
                .await??;
            let peer_ca = kv.get(crate::consensus::PEER_CA_CERTIFICATE).await?;
            Ok(peer_ca.unwrap_or_default())
        });
        // Its Curator certificate too, for the record: its Curator then starts on a read.
        let curator_certificate = self.retry("the Curator certificate", || async {
            let template = Template::Curator {
                node_id: id.clone(),
            };
            let issued = issuer.ask(Issue(template, keys.node.verifying_key()));
            Ok(issued.await??.der)
        });
        let (credentials, peer_ca, curator_certificate) =
            futures::try_join!(node_certificate, peer_ca, curator_certificate)?;

        self.retry("the node record", || async {
            let mut records = Records::new(consensus.ask(Kv(records::NAMESPACE.into())).await??);
            let peer_certificate = peer_pki::served(&self.config.root)?;
            let first = records::first_node(records::FirstNode {
                id: id.clone(),
                public_key: keys.node.verifying_key().to_bytes().to_vec(),
                join_key: keys.join.verifying_key().to_bytes().to_vec(),
                cluster_unlock_key: keys.cuk.as_bytes().to_vec(),
                node_certificate: credentials.certificate.clone(),
                address: address.to_string(),
                peer_ca_certificate: peer_ca.clone(),
                peer_certificate,
                recovery_key: recovery_key.clone(),
                pcr7: pcr7_recorded.clone(),
                curator_certificate: curator_certificate.clone(),
            });
            let Some(recorded) = records.bootstrap(&params.owner_public_key, first).await? else {
                return Err(LifecycleError::Inconsistent {
                    step: "formatted",
                    reason: "etcd names another owner than the node parameters".into(),
                    recovery: "reinstall the node with the parameters of this cluster",
                });
            };
            // A resumed bootstrap finds the record of an earlier try, with that try's Curator
            // certificate: the one just issued is never served, so nothing may accept it.
            if recorded.curator_certificate != curator_certificate {
                issuer.ask(Revoke(curator_certificate.clone())).await??;
            }
            Ok(())
        })
        .await?;
        self.checkpoint(JournalFlow::Bootstrap, "committed");
        let authority = async {
            if let (Some(recovery), Some(pcr7)) = (&keys.recovery, &pcr7) {
                let approval = self
                    .retry("approving PCR 7", || async {
                        let approve = ApprovePcr {
                            node_id: id.clone(),
                            pcr7: pcr7.clone(),
                        };
                        Ok(issuer.ask(approve).await??)
                    })
                    .await?;
                self.keep_authority(&id, &credentials.ca, recovery, pcr7, approval, "committed")
                    .await?;
            }
            Ok::<_, LifecycleError>(())
        };
        // The Curator needs the credentials and the record, not the authority, which only the
        // sealing below needs: both go at once. Should the authority fail, the lifecycle fails
        // and the node stops, Curator and all.
        let (kept, curator) = futures::join!(authority, self.start_child(member.curator));
        kept?;
        curator?;
        self.start_child(member.decommission).await?;
        self.start_child(member.escrow).await?;
        let sealed = self
            .finish(JournalFlow::Bootstrap, &keys, &credentials, true)
            .await?;
        self.follow(credentials, address, sealed, keys.cuk, true)
            .await
    }

    /// A new node of an existing cluster: RegisterNode, the owner's approval, CommitNode.
    async fn register(
        &self,
        mut journal: EnrolmentJournal,
        keys: EnrolmentKeys,
        params: ClusterRegister,
    ) -> Result<(), LifecycleError> {
        let ip = self.address().await;
        let address = ip.to_string();
        let directory = params.cluster_directory.clone().unwrap_or_default();
        let ephemeral = || Identity::ephemeral(&keys.node);
        let id = node_id(&keys.node.verifying_key());
        let pcr7 = self.pcr7().await?;
        let (recovery_key, pcr7_recorded) = recovery_record(&keys, &pcr7)?;
        if journal.step < REGISTERED {
            self.retry("RegisterNode", || async {
                let channel = connect(&directory, &params.ca_certificate, ephemeral).await?;
                let request = RegisterNodeRequest {
                    register_ticket: params.register_ticket.clone(),
                    join_key: keys.join.verifying_key().to_bytes().to_vec(),
                    external_address: address.clone(),
                    recovery_key: recovery_key.clone(),
                    pcr7: pcr7_recorded.clone(),
                };
                CuratorClient::new(channel)
                    .register_node(request)
                    .await
                    .map_err(|status| refused("RegisterNode", status))?;
                Ok(())
            })
            .await?;
            journal.step = REGISTERED;
            self.save_journal(&journal).await?;
            self.checkpoint(JournalFlow::Register, "registered");
        }
        let credentials = if journal.step < COMMITTED {
            let response = self
                .retry("CommitNode", || async {
                    let channel = connect(&directory, &params.ca_certificate, ephemeral).await?;
                    let request = CommitNodeRequest {
                        cluster_unlock_key: keys.cuk.as_bytes().to_vec(),
                    };
                    match CuratorClient::new(channel).commit_node(request).await {
                        Ok(response) => Ok(response.into_inner()),
                        Err(s) if s.code() == Code::FailedPrecondition => {
                            Err(LifecycleError::AwaitingApproval)
                        }
                        Err(status) => Err(refused("CommitNode", status)),
                    }
                })
                .await?;
            if response.ca_certificate != params.ca_certificate {
                return Err(LifecycleError::Inconsistent {
                    step: "registered",
                    reason: "CommitNode answered a CA other than the pinned one".into(),
                    recovery: "check the CA certificate in the node parameters",
                });
            }
            verify_node_certificate(
                &params.ca_certificate,
                &response.node_certificate,
                &keys.node.verifying_key(),
            )
            .map_err(|e| LifecycleError::Inconsistent {
                step: "registered",
                reason: format!("CommitNode answered a certificate that is not this node's: {e}"),
                recovery: "the Curator that answered is not to be trusted; check the cluster",
            })?;
            if let (Some(recovery), Some(pcr7)) = (&keys.recovery, &pcr7) {
                let approval = PcrApproval {
                    policy_key: response.pcr_policy_key,
                    signature: response.pcr7_approval,
                };
                self.keep_authority(
                    &id,
                    &response.ca_certificate,
                    recovery,
                    pcr7,
                    approval,
                    "registered",
                )
                .await?;
            }
            let credentials = NodeCredentials {
                ca: response.ca_certificate,
                certificate: response.node_certificate,
                key: keys.node.clone(),
            };
            self.save_credentials(&credentials).await?;
            journal.step = COMMITTED;
            self.save_journal(&journal).await?;
            self.checkpoint(JournalFlow::Register, "committed");
            credentials
        } else {
            self.credentials("committed")?
        };
        self.deps.directory.set(directory);
        let sealed = self
            .finish(JournalFlow::Register, &keys, &credentials, false)
            .await?;
        let cluster = self.cluster_config(&id, ip);
        self.start_hostsfile(&cluster).await?;
        self.follow(credentials, ip, sealed, keys.cuk, false).await
    }

    // ---- helpers ----

    /// Format the data partition, or — resuming after a crash that came after formatting —
    /// open what was formatted.
    async fn mount_new(&self, keys: &EnrolmentKeys) -> Result<(), LifecycleError> {
        let formatted = self
            .retry("formatting the data partition", || async {
                let new = MountNew {
                    nuk: keys.nuk.clone(),
                    cuk: keys.cuk.clone(),
                };
                Ok(self.deps.storage.ask(new).await?)
            })
            .await?;
        match formatted {
            Ok(()) => Ok(()),
            Err(StorageError::Data(DataError::AlreadyFormatted(path))) => {
                slog::info!(self.log, "the data partition was formatted before a crash; opening it";
                    "path" => %path.display());
                self.mount(&keys.nuk, &keys.cuk).await
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Seal the final configuration over the journal, with the directory beside it. A consensus
    /// member's includes its CUK: when every member is down, no Curator can hand it out (see
    /// `join`). Answers what was sealed.
    async fn finish(
        &self,
        flow: JournalFlow,
        keys: &EnrolmentKeys,
        credentials: &NodeCredentials,
        member: bool,
    ) -> Result<SealedConfiguration, LifecycleError> {
        let directory = self.deps.directory.get();
        self.on_esp(move |esp| esp.write_directory(&directory))
            .await?;
        let sealed = SealedConfiguration {
            node_unlock_key: keys.nuk.as_bytes().to_vec(),
            join_key: keys.join.to_bytes().to_vec(),
            cluster_ca: credentials.ca.clone(),
            cluster_unlock_key: if member {
                keys.cuk.as_bytes().to_vec()
            } else {
                Vec::new()
            },
            cluster_unlock_key_digest: if member {
                crate::quorum::cuk_digest(&keys.cuk)
            } else {
                Vec::new()
            },
        };
        self.seal_configuration(&sealed).await?;
        self.on_esp(|esp| esp.remove_journal()).await?;
        slog::info!(self.log, "enrolment complete; the sealed configuration replaced the journal";
            "node" => node_id(&keys.node.verifying_key()));
        self.scrub_register_ticket().await;
        self.checkpoint(flow, "sealed");
        Ok(sealed)
    }

    async fn save_journal(&self, journal: &EnrolmentJournal) -> Result<(), LifecycleError> {
        let envelope = self.seal(SealedKind::EnrolmentJournal, journal).await?;
        self.on_esp(move |esp| esp.write_journal(&envelope)).await
    }
}

/// What the cluster records of the node's TPM: its recovery key (an uncompressed P-256 point)
/// and its PCR 7 value now, or neither (no TPM, or a journal from before recovery keys).
fn recovery_record(
    keys: &EnrolmentKeys,
    pcr7: &Option<Vec<u8>>,
) -> Result<(Vec<u8>, Vec<u8>), LifecycleError> {
    match (&keys.recovery, pcr7) {
        (Some(recovery), Some(pcr7)) => Ok((recovery.point()?, pcr7.clone())),
        _ => Ok(Default::default()),
    }
}

/// The certificate lifetimes that bootstrap parameters name (0: the default); one shorter than
/// [`MIN_LIFETIME`] is refused.
fn certificate_lifetimes(params: &ClusterBootstrap) -> Result<Lifetimes, LifecycleError> {
    let defaults = Lifetimes::default();
    let lifetime = |field: &str, seconds: u64, default: Duration| match seconds {
        0 => Ok(default),
        seconds => bounded_lifetime(seconds).ok_or_else(|| {
            LifecycleError::InvalidParameters(format!(
                "{field} is {seconds}, below the minimum of {} s",
                MIN_LIFETIME.as_secs()
            ))
        }),
    };
    Ok(Lifetimes {
        node: lifetime(
            "node_certificate_seconds",
            params.node_certificate_seconds,
            defaults.node,
        )?,
        owner: lifetime(
            "owner_certificate_seconds",
            params.owner_certificate_seconds,
            defaults.owner,
        )?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asking(node: u64, owner: u64) -> ClusterBootstrap {
        ClusterBootstrap {
            node_certificate_seconds: node,
            owner_certificate_seconds: owner,
            ..Default::default()
        }
    }

    #[test]
    fn certificate_lifetimes_are_the_defaults_or_at_least_the_minimum() {
        let lifetimes = |node, owner| certificate_lifetimes(&asking(node, owner));
        assert_eq!(lifetimes(0, 0).unwrap(), Lifetimes::default());
        let short = Lifetimes {
            node: Duration::from_secs(10),
            owner: Duration::from_secs(11),
        };
        assert_eq!(lifetimes(10, 11).unwrap(), short);
        for (node, owner, field) in [
            (9, 0, "node_certificate_seconds is 9"),
            (0, 9, "owner_certificate_seconds is 9"),
        ] {
            assert!(matches!(
                lifetimes(node, owner),
                Err(LifecycleError::InvalidParameters(reason))
                    if reason.contains(field) && reason.contains("minimum of 10 s")
            ));
        }
    }
}
