//! Enrolment (DESIGN §3, flows 2 and 3): bootstrap a new cluster or register into one. New
//! keys format the data partition under the ESP's formatting mark, then go into a TPM-sealed
//! journal on the ESP, which advances after each later step; a boot that finds the journal
//! resumes at its step, and one that finds only the mark formats again (the keys of that format
//! were never kept). The sealed configuration replaces the journal at the end, and nothing on
//! the ESP claims membership before etcd has recorded it.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::VerifyingKey;
use polis_actors::ActorRef;
use prost::Message;
use tonic::Code;

use crate::consensus::{peer_pki, Consensus, Kv, Mode};
use crate::curator::records::{self, InitialOwner, Records, OWNER_NAME};
use crate::curator::{CuratorStart, CURATOR_PORT};
use crate::fsutil::Durability;
use crate::issuer::{
    bounded_lifetime, ApprovePcr, FirstCrl, GetCaCertificate, IssueRecording, Lifetimes,
    PcrApproval, Revoke, MIN_LIFETIME,
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
use crate::storage::{MountNew, NewKeys, Previous, RefuseFormatted};
use crate::tls::Identity;
use crate::tpm::{RecoveryKey, SealedKind};

/// Journal steps: the last one completed. The first journal written is at `FORMATTED` already:
/// before it, the formatting mark stands for it.
const FORMATTED: u32 = 2;
const REGISTERED: u32 = 3;
const COMMITTED: u32 = 4;

/// A future that answers once the journal is on the ESP, with the journal and its recovery key.
trait Journaled:
    Future<Output = Result<(EnrolmentJournal, Option<RecoveryKey>), LifecycleError>>
{
}
impl<F> Journaled for F where
    F: Future<Output = Result<(EnrolmentJournal, Option<RecoveryKey>), LifecycleError>>
{
}

impl Run {
    /// A new enrolment: new keys, the data partition formatted with them, then the sealed
    /// journal that keeps them, written while the flow goes on (a bootstrap's etcd starts
    /// meanwhile) and awaited before anything leaves the partition or the node.
    pub(super) async fn begin(
        &self,
        flow: JournalFlow,
        params: Cluster,
    ) -> Result<(), LifecycleError> {
        slog::info!(self.log, "starting enrolment"; "flow" => ?flow);
        // The formatting mark's fsyncs run while the TPM makes the keys: only the format needs
        // both.
        let keys = self.retry("new keys", || async {
            Ok(self.deps.storage.ask(NewKeys).await??)
        });
        let ((nuk, cuk), previous) = futures::try_join!(keys, self.mark_formatting())?;
        // The recovery key comes with the journal: nothing needs it before.
        let journal = EnrolmentJournal {
            flow: flow as i32,
            recovery_key_public: Vec::new(),
            recovery_key_private: Vec::new(),
            step: FORMATTED,
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
        let enrolment = Enrolment::check(journal, &self.esp.journal_path())?;
        self.format(&enrolment.keys, previous).await?;
        self.checkpoint(flow, "formatted");
        let Enrolment {
            mut journal,
            keys,
            params,
        } = enrolment;
        let journaled = async move {
            let recovery = self.new_recovery_key().await?;
            let made = recovery.clone().unwrap_or_default();
            journal.recovery_key_public = made.public;
            journal.recovery_key_private = made.private;
            self.save_journal(&journal).await?;
            self.on_esp(|esp| esp.clear_formatting_mark()).await?;
            self.checkpoint(flow, "journaled");
            Ok((journal, recovery))
        };
        self.proceed(journaled, keys, params, false).await
    }

    /// Continue an enrolment from its journal's step: the partition it formatted is opened.
    pub(super) async fn enrol(&self, enrolment: Enrolment) -> Result<(), LifecycleError> {
        let Enrolment {
            journal,
            keys,
            params,
        } = enrolment;
        self.mount(&keys.nuk, &keys.cuk).await?;
        // A crash may have come after the journal's write, before the mark's removal.
        self.on_esp(|esp| esp.clear_formatting_mark()).await?;
        let recovery = keys.recovery.clone();
        self.proceed(async { Ok((journal, recovery)) }, keys, params, true)
            .await
    }

    /// The flow's own steps, once the partition is mounted and `journaled` is under way;
    /// `resumed` if an earlier boot began them.
    async fn proceed(
        &self,
        journaled: impl Journaled,
        mut keys: EnrolmentKeys,
        params: EnrolmentParams,
        resumed: bool,
    ) -> Result<(), LifecycleError> {
        match params {
            EnrolmentParams::Bootstrap(params) => {
                self.bootstrap(journaled, keys, params, resumed).await
            }
            EnrolmentParams::Register(params) => {
                let (journal, recovery) = journaled.await?;
                keys.recovery = recovery;
                self.register(journal, keys, params).await
            }
        }
    }

    /// The first node of a new cluster: etcd, the CA, its record, its credentials. Its etcd
    /// starts while `journaled` keeps the keys (and the recovery key, which it answers) in the
    /// journal; the CA waits for both. Every later step is idempotent, so a `resumed` bootstrap
    /// runs them all again and the journal needs no more steps until the sealed configuration
    /// replaces it. The credentials are saved while the record is written, not durably: all of
    /// them are in the record and the journal, so a resumed bootstrap takes the certificate the
    /// record holds (a new one if there is no record) and saves them again. They are made
    /// durable while the Curator starts, before the journal is replaced.
    async fn bootstrap(
        &self,
        journaled: impl Journaled,
        mut keys: EnrolmentKeys,
        params: ClusterBootstrap,
        resumed: bool,
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
        let owner_key = owner_key(&params)?;
        let mode = Mode::Bootstrap {
            peer_lifetime: lifetimes.node,
        };
        // The issuer stores the lifetimes as it starts, before the first certificate.
        let member = cluster::member_children(&cluster, mode, Some(lifetimes));
        let (consensus, issuer) = (member.consensus_ref, member.issuer_ref);
        // The Curator's port is bound now: a client (the owner, waiting for its first Escrow)
        // then waits in the backlog for the Curator to serve, not for its next try after a
        // refusal. If it cannot be bound now, the Curator tries again and names the error.
        let early = listen_early(SocketAddr::new(address, CURATOR_PORT));
        if let (Some(listener), Ok(mut handover)) = (early, member.curator_handover.lock()) {
            handover.listener = Some(listener);
        }
        // PCR 7 is read while etcd elects itself: nothing in it needs etcd.
        let (journaled, started, pcr7) =
            futures::join!(journaled, self.start_child(member.consensus), self.pcr7());
        keys.recovery = journaled?.1;
        started?;
        let pcr7 = pcr7?;
        self.start_child(member.pki).await?;

        let (recovery_key, pcr7_recorded) = recovery_record(&keys, &pcr7)?;
        // Every certificate issued here is recorded by the issuer while the node's record is
        // written: each comes with its recording, awaited before anything leaves the node.
        let issue = |template: Template, key: VerifyingKey| {
            let issuer = &issuer;
            async move {
                let (issued, recording) = issuer.ask(IssueRecording(template, key)).await??;
                Ok::<_, LifecycleError>((issued.der, recording))
            }
        };
        let node_certificate = self.retry("the node certificate", || async {
            let recorded = match resumed {
                true => self.recorded_certificate(&consensus, &id).await?,
                false => None,
            };
            let (certificate, recording) = match recorded {
                Some(certificate) => (certificate, None),
                None => {
                    let template = Template::Node {
                        node_id: id.clone(),
                    };
                    let (der, recording) = issue(template, keys.node.verifying_key()).await?;
                    (der, Some(recording))
                }
            };
            let credentials = NodeCredentials {
                ca: issuer.ask(GetCaCertificate).await??,
                certificate,
                key: keys.node.clone(),
            };
            Ok((credentials, recording))
        });
        // The record names the peer CA, read while the certificates are made.
        let peer_ca = self.retry("the etcd peer CA", || async {
            let mut kv = consensus
                .ask(Kv(crate::consensus::NAMESPACE.into()))
                .await??;
            let peer_ca = kv.get(crate::consensus::PEER_CA_CERTIFICATE).await?;
            Ok(peer_ca.unwrap_or_default())
        });
        // Its Curator certificate too, for the record: its Curator then starts on a read.
        let curator_certificate = self.retry("the Curator certificate", || {
            let template = Template::Curator {
                node_id: id.clone(),
            };
            issue(template, keys.node.verifying_key())
        });
        // And the owner's, for the record: the owner's first Escrow then only reads.
        let owner_certificate = self.retry("the owner certificate", || {
            let template = Template::Client {
                common_name: OWNER_NAME.into(),
            };
            issue(template, owner_key)
        });
        // And the CRL stored with the CA: a new cluster's Curator starts on what this bootstrap
        // committed, not on reading it back.
        let crl = self.retry("the cluster's first CRL", || async {
            Ok(issuer.ask(FirstCrl).await??)
        });
        let (
            (credentials, node_recording),
            peer_ca,
            (curator_certificate, curator_recording),
            (owner_certificate, owner_recording),
            crl,
        ) = futures::try_join!(
            node_certificate,
            peer_ca,
            curator_certificate,
            owner_certificate,
            crl
        )?;
        let recorded = async {
            if let Some(recording) = node_recording {
                recording.done().await?;
            }
            owner_recording.done().await?;
            Ok(curator_recording.done().await?)
        };

        let save = self.save_credentials(&credentials, Durability::Volatile);
        let record = self.retry("the node record", || async {
            let mut records = self.records(&consensus).await?;
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
            let owner = InitialOwner {
                public_key: params.owner_public_key.clone(),
                certificate: owner_certificate.clone(),
            };
            let Some(recorded) = records.bootstrap(&owner, first).await? else {
                return Err(LifecycleError::Inconsistent {
                    step: "formatted",
                    reason: "etcd names another owner than the node parameters".into(),
                    recovery: "reinstall the node with the parameters of this cluster",
                });
            };
            // A resumed bootstrap finds the records of an earlier try, with that try's Curator
            // and owner certificates: the ones just issued are never handed out, so nothing may
            // accept them.
            let mut found_issued = true;
            for (stored, issued) in [
                (&recorded.node.curator_certificate, &curator_certificate),
                (&recorded.owner_certificate, &owner_certificate),
            ] {
                if stored != issued {
                    issuer.ask(Revoke(issued.clone())).await??;
                    found_issued = false;
                }
            }
            Ok(found_issued)
        });
        let ((), found_issued, ()) = futures::try_join!(save, record, recorded)?;
        let synced = self.sync_credentials();
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
        // A bootstrap that found another try's certificates (and revoked its own), or another
        // try's CA, leaves its Curator to read what is committed.
        if let (true, Some(crl)) = (found_issued, crl) {
            if let Ok(mut handover) = member.curator_handover.lock() {
                handover.committed = Some(CuratorStart {
                    certificate: curator_certificate,
                    crl: Some(crl),
                    owner_key: Some(params.owner_public_key.clone()),
                    owner_certificate: Some(owner_certificate),
                });
            }
        }
        // The Curator needs the credentials and the record, not the authority, which only the
        // sealing below needs: both go at once. Should the authority fail, the lifecycle fails
        // and the node stops, Curator and all.
        let (kept, curator, synced) =
            futures::join!(authority, self.start_child(member.curator), synced);
        kept?;
        curator?;
        synced?;
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
            self.save_credentials(&credentials, Durability::Synced)
                .await?;
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

    /// Set the formatting mark before a new enrolment formats the data partition; answers what
    /// to do with a partition found there. A partition that an earlier, marked enrolment
    /// formatted is formatted over: that enrolment crashed before its journal kept the keys, so
    /// nothing in it could ever be opened. One formatted without the mark is refused, and not
    /// marked: its keys may be kept elsewhere (the cluster holds its recovery key).
    async fn mark_formatting(&self) -> Result<Previous, LifecycleError> {
        if !self.on_esp(|esp| Ok(esp.formatting_marked())).await? {
            // Refused before it is marked: a mark left beside it would have the next boot
            // format it over.
            self.deps.storage.ask(RefuseFormatted).await??;
            self.on_esp(|esp| esp.mark_formatting()).await?;
            return Ok(Previous::Refuse);
        }
        slog::warn!(
            self.log,
            "an earlier enrolment stopped before its journal kept the \
            keys of the data partition it formatted; formatting the partition again"
        );
        Ok(Previous::Discard)
    }

    /// Format the data partition for `keys`, under the formatting mark, doing with the
    /// partition found there what `previous` says.
    async fn format(&self, keys: &EnrolmentKeys, previous: Previous) -> Result<(), LifecycleError> {
        let formatted = self
            .retry("formatting the data partition", || async {
                let new = MountNew {
                    nuk: keys.nuk.clone(),
                    cuk: keys.cuk.clone(),
                    previous,
                };
                Ok(self.deps.storage.ask(new).await?)
            })
            .await?;
        Ok(formatted?)
    }

    /// The node records in `consensus`'s etcd.
    async fn records(&self, consensus: &ActorRef<Consensus>) -> Result<Records, LifecycleError> {
        Ok(Records::new(
            consensus.ask(Kv(records::NAMESPACE.into())).await??,
        ))
    }

    /// The node certificate of node `id`'s record, if etcd has the record.
    async fn recorded_certificate(
        &self,
        consensus: &ActorRef<Consensus>,
        id: &str,
    ) -> Result<Option<Vec<u8>>, LifecycleError> {
        let node = self.records(consensus).await?.get(id).await?;
        Ok(node.map(|n| n.node_certificate).filter(|c| !c.is_empty()))
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

/// A non-blocking listener on `address`, or none if it cannot be had now.
fn listen_early(address: SocketAddr) -> Option<std::net::TcpListener> {
    let listener = std::net::TcpListener::bind(address).ok()?;
    listener.set_nonblocking(true).ok()?;
    Some(listener)
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

/// The owner key of the bootstrap parameters, which the owner's certificate is issued to.
fn owner_key(params: &ClusterBootstrap) -> Result<VerifyingKey, LifecycleError> {
    <[u8; 32]>::try_from(params.owner_public_key.as_slice())
        .ok()
        .and_then(|bytes| VerifyingKey::from_bytes(&bytes).ok())
        .ok_or_else(|| {
            LifecycleError::InvalidParameters(format!(
                "owner_public_key ({} bytes) is not an Ed25519 public key",
                params.owner_public_key.len()
            ))
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

    #[test]
    fn the_owner_key_must_be_an_ed25519_public_key() {
        let key = generate_key().unwrap().verifying_key();
        let owned = |bytes: Vec<u8>| {
            owner_key(&ClusterBootstrap {
                owner_public_key: bytes,
                ..Default::default()
            })
        };
        assert_eq!(owned(key.to_bytes().to_vec()).unwrap(), key);
        for (bytes, length) in [(vec![], "(0 bytes)"), (vec![9; 31], "(31 bytes)")] {
            assert!(matches!(
                owned(bytes),
                Err(LifecycleError::InvalidParameters(reason))
                    if reason.contains("owner_public_key") && reason.contains(length)
            ));
        }
    }
}
