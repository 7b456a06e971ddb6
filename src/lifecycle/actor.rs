//! The lifecycle actor (restart `once`): decides the boot flow, runs it to the end — bootstrap,
//! register or join (DESIGN §3) — fills `/cluster`, and then follows the node's record through a
//! Curator's Watch: the directory (hosts file, ESP) and the roles (starting etcd when the node
//! becomes a consensus member).
//!
//! Enrolment is resumable: before formatting, the keys go into a TPM-sealed journal on the ESP,
//! which advances after each step; a boot that finds it resumes at its step. Transient failures
//! (a Curator or an actor away) are retried with backoff inside the flow; only a permanent one
//! fails the actor, which the tree treats as fatal.

use std::future::Future;
use std::time::Duration;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use polis_actors::{
    Actor, ActorRef, ChildError, ChildSpec, Ctx, Failure, SendError, StartChild, Started,
    Supervisor, Watchable,
};
use prost::Message;
use tonic::Code;

use crate::consensus::{Kv, Mode, PEER_PORT};
use crate::curator::records::{self, Records, INITIAL_OWNER};
use crate::curator::CuratorError;
use crate::lifecycle::client::{connect, ReachError};
use crate::lifecycle::cluster::{self, ClusterConfig};
use crate::lifecycle::{decide, DecideError, Flow, FW_CFG_WINS};
use crate::network::NetworkStatus;
use crate::pki::{
    generate_key, node_id, CredentialsError, GetCaCertificate, Issue, IssuerError, NodeCredentials,
    PkiError, Template,
};
use crate::proto::api::node_parameters::{Cluster, ClusterBootstrap, ClusterRegister};
use crate::proto::api::NodeParameters;
use crate::proto::common::node_roles::{consensus_member, ConsensusMember, KubernetesWorker};
use crate::proto::common::{cluster_directory, Address, ClusterDirectory, NodeRoles, NodeState};
use crate::proto::curator::curator_client::CuratorClient;
use crate::proto::curator::{
    CommitNodeRequest, JoinNodeRequest, RegisterNodeRequest, WatchRequest,
};
use crate::proto::private::enrolment_journal::Flow as JournalFlow;
use crate::proto::private::{EnrolmentJournal, Node, SealedConfiguration, SealedEnvelope};
use crate::storage::{
    DataError, Esp, EspError, MountExisting, MountNew, NewKeys, NodeRoot, Storage, StorageError,
    UnlockKey,
};
use crate::tls::{Identity, TlsError, Trust};
use crate::tpm::{Seal, Tpm, TpmError, Unseal};

/// Journal steps: the last one completed.
const KEYS: u32 = 1;
const FORMATTED: u32 = 2;
const REGISTERED: u32 = 3;
const COMMITTED: u32 = 4;

/// Retry delays for transient failures.
const RETRY_FIRST: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(5);

// ---- errors ----

/// Why the lifecycle could not bring the node into its cluster.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No flow could be decided.
    #[error(transparent)]
    Decide(#[from] DecideError),
    /// An ESP file failed (the error names it).
    #[error(transparent)]
    Esp(#[from] EspError),
    /// The TPM refused (a tampered or foreign sealed file, a changed PCR 7).
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The data partition refused (e.g. a wrong key).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A sealed file decoded by the TPM is not what it should be.
    #[error("{path}: {reason}")]
    Corrupted {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The node's state on disk contradicts the step it reached; recovery needs a person.
    #[error("inconsistent state after step {step}: {reason}; to recover: {recovery}")]
    Inconsistent {
        /// The step reached.
        step: &'static str,
        /// What is wrong.
        reason: String,
        /// What to do.
        recovery: &'static str,
    },
    /// A Curator refused the call.
    #[error("{call} refused by the Curator: {status}")]
    Refused {
        /// The call.
        call: &'static str,
        /// The Curator's answer.
        status: tonic::Status,
    },
    /// The owner has not approved this node yet (retried until they do).
    #[error("waiting for the owner to approve this node")]
    AwaitingApproval,
    /// No Curator could be reached (retried).
    #[error(transparent)]
    Reach(#[from] ReachError),
    /// An actor the flow needs is away, e.g. restarting (retried).
    #[error("{0}")]
    ActorAway(#[from] SendError),
    /// A cluster child could not start (retried).
    #[error(transparent)]
    Child(#[from] ChildError),
    /// etcd or the records failed (retried).
    #[error(transparent)]
    Records(#[from] CuratorError),
    /// The issuer failed (retried).
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    /// Node credentials could not be written or read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// A key could not be made or encoded.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The cluster decommissioned this node.
    #[error("this node was decommissioned; it will not rejoin")]
    Decommissioned,
}

impl LifecycleError {
    /// Whether retrying the same step may succeed.
    fn is_transient(&self) -> bool {
        match self {
            LifecycleError::Refused { status, .. } => matches!(
                status.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::ResourceExhausted
                    | Code::Internal
            ),
            LifecycleError::AwaitingApproval
            | LifecycleError::Reach(ReachError::Unreachable(_))
            | LifecycleError::ActorAway(_)
            | LifecycleError::Child(ChildError::StartFailed { .. })
            | LifecycleError::Records(_)
            | LifecycleError::Issuer(_) => true,
            LifecycleError::Storage(StorageError::TpmUnavailable(_)) => true,
            _ => false,
        }
    }
}

impl From<DataError> for LifecycleError {
    fn from(e: DataError) -> Self {
        LifecycleError::Storage(e.into())
    }
}

impl From<crate::consensus::ConsensusError> for LifecycleError {
    fn from(e: crate::consensus::ConsensusError) -> Self {
        LifecycleError::Records(e.into())
    }
}

// ---- state ----

/// What the lifecycle needs to know beyond what it finds on disk.
#[derive(Clone, Debug)]
pub struct LifecycleConfig {
    /// The node root.
    pub root: NodeRoot,
    /// Where firmware configuration may hold node parameters.
    pub fw_cfg: std::path::PathBuf,
    /// Set the hostname to the node ID.
    pub set_hostname: bool,
    /// The system hosts file to keep in place (a bind mount), if any.
    pub system_hosts: Option<std::path::PathBuf>,
    /// Test hook: kill this process (SIGKILL) right after this step, named `flow:step`
    /// (e.g. `register:formatted`), to prove that every step is resumable.
    pub crash_after: Option<String>,
}

/// The actors and values the lifecycle works with.
#[derive(Clone)]
pub struct LifecycleDeps {
    /// `/core/storage`.
    pub storage: ActorRef<Storage>,
    /// `/core/tpm`.
    pub tpm: ActorRef<Tpm>,
    /// `/cluster`, which the lifecycle fills.
    pub cluster: ActorRef<Supervisor>,
    /// The node's network status.
    pub network: Watchable<NetworkStatus>,
    /// The cluster directory, as last learnt.
    pub directory: Watchable<ClusterDirectory>,
}

/// The lifecycle actor.
pub struct Lifecycle {
    config: LifecycleConfig,
    deps: LifecycleDeps,
}

impl Lifecycle {
    /// A lifecycle over `deps`.
    pub fn new(config: LifecycleConfig, deps: LifecycleDeps) -> Self {
        Lifecycle { config, deps }
    }
}

// ---- handlers ----

impl Actor for Lifecycle {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        let run = Run {
            config: self.config.clone(),
            deps: self.deps.clone(),
            esp: Esp::new(self.config.root.clone()),
            log: ctx.log().clone(),
        };
        ctx.spawn(async move { run.run().await }, |result, _, ctx| {
            if let Err(e) = &result {
                slog::crit!(ctx.log(), "the node cannot join its cluster"; "error" => %e);
            }
            result.map_err(Failure::from)
        });
        Ok(Started::Healthy)
    }
}

// ---- the flows ----

/// One run of the lifecycle: everything a flow needs, by value, so it can live in a future.
struct Run {
    config: LifecycleConfig,
    deps: LifecycleDeps,
    esp: Esp,
    log: slog::Logger,
}

/// What an enrolment works with, from its journal.
struct Keys {
    nuk: UnlockKey,
    cuk: UnlockKey,
    node: SigningKey,
    join: SigningKey,
}

impl Run {
    async fn run(&self) -> Result<(), LifecycleError> {
        let (flow, fw_cfg_wins) = decide(&self.esp, &self.config.fw_cfg)?;
        if fw_cfg_wins {
            slog::warn!(self.log, "{}", FW_CFG_WINS);
        }
        match flow {
            Flow::Join(envelope) => self.join(envelope).await,
            Flow::Resume(envelope) => {
                let journal: EnrolmentJournal =
                    self.unseal(envelope, &self.esp.journal_path()).await?;
                slog::info!(self.log, "resuming an interrupted enrolment";
                    "flow" => ?journal.flow(), "step" => journal.step);
                self.enrol(journal).await
            }
            Flow::Bootstrap(params) => {
                self.begin(JournalFlow::Bootstrap, Cluster::ClusterBootstrap(params))
                    .await
            }
            Flow::Register(params) => {
                self.begin(JournalFlow::Register, Cluster::ClusterRegister(params))
                    .await
            }
        }
    }

    /// New keys into a sealed journal: the first write of an enrolment, before anything
    /// irreversible.
    async fn begin(&self, flow: JournalFlow, params: Cluster) -> Result<(), LifecycleError> {
        slog::info!(self.log, "starting enrolment"; "flow" => ?flow);
        let (nuk, cuk) = self
            .retry("new keys", || async {
                Ok(self.deps.storage.ask(NewKeys).await??)
            })
            .await?;
        let journal = EnrolmentJournal {
            flow: flow as i32,
            step: KEYS,
            node_unlock_key: nuk.as_bytes().to_vec(),
            cluster_unlock_key: cuk.as_bytes().to_vec(),
            node_key: generate_key()?.to_bytes().to_vec(),
            join_key: generate_key()?.to_bytes().to_vec(),
            parameters: NodeParameters {
                cluster: Some(params),
            }
            .encode_to_vec(),
        };
        self.save_journal(&journal).await?;
        self.checkpoint(flow, "keys");
        self.enrol(journal).await
    }

    /// Continue an enrolment from its journal's step.
    async fn enrol(&self, mut journal: EnrolmentJournal) -> Result<(), LifecycleError> {
        let path = self.esp.journal_path().display().to_string();
        let corrupted = |reason: &str| LifecycleError::Corrupted {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let keys = Keys {
            nuk: UnlockKey::from_slice(&journal.node_unlock_key)?,
            cuk: UnlockKey::from_slice(&journal.cluster_unlock_key)?,
            node: signing_key(&journal.node_key).ok_or_else(|| corrupted("bad node key"))?,
            join: signing_key(&journal.join_key).ok_or_else(|| corrupted("bad join key"))?,
        };
        let params = NodeParameters::decode(journal.parameters.as_slice())
            .map_err(|e| corrupted(&format!("bad parameters: {e}")))?;
        let flow = journal.flow();
        if journal.step < FORMATTED {
            self.mount_new(&keys).await?;
            journal.step = FORMATTED;
            self.save_journal(&journal).await?;
            self.checkpoint(flow, "formatted");
        } else {
            self.mount(&keys.nuk, &keys.cuk).await?;
        }
        match (flow, params.cluster) {
            (JournalFlow::Bootstrap, Some(Cluster::ClusterBootstrap(params))) => {
                self.bootstrap(journal, keys, params).await
            }
            (JournalFlow::Register, Some(Cluster::ClusterRegister(params))) => {
                self.register(journal, keys, params).await
            }
            _ => Err(corrupted("its flow and parameters disagree")),
        }
    }

    /// The first node of a new cluster: etcd, the CA, its record, its credentials.
    async fn bootstrap(
        &self,
        mut journal: EnrolmentJournal,
        keys: Keys,
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
            }],
        });
        self.start_hostsfile(&cluster).await?;
        let member = cluster::member_children(&cluster, Mode::Bootstrap);
        let (consensus, issuer) = (member.consensus_ref, member.issuer_ref);
        self.start_child(member.consensus).await?;
        self.start_child(member.pki).await?;

        let credentials = self
            .retry("the node certificate", || async {
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
                credentials.save(&self.config.root)?;
                Ok(credentials)
            })
            .await?;

        if journal.step < COMMITTED {
            self.retry("the node record", || async {
                let mut records =
                    Records::new(consensus.ask(Kv(records::NAMESPACE.into())).await??);
                let owner = records
                    .kv()
                    .ensure(INITIAL_OWNER, &params.owner_public_key)
                    .await?;
                if owner != params.owner_public_key {
                    return Err(LifecycleError::Inconsistent {
                        step: "formatted",
                        reason: "etcd names another owner than the node parameters".into(),
                        recovery: "reinstall the node with the parameters of this cluster",
                    });
                }
                let peer_ca = consensus
                    .ask(Kv(crate::consensus::NAMESPACE.into()))
                    .await??
                    .get(crate::consensus::PEER_CA_CERTIFICATE)
                    .await?
                    .unwrap_or_default();
                let record = Node {
                    public_key: keys.node.verifying_key().to_bytes().to_vec(),
                    cluster_unlock_key: keys.cuk.as_bytes().to_vec(),
                    fsm_state: NodeState::Up as i32,
                    roles: Some(NodeRoles {
                        consensus_member: Some(ConsensusMember {
                            ca_certificate: peer_ca,
                            peers: vec![consensus_member::Peer {
                                name: id.clone(),
                                port: PEER_PORT.into(),
                                host: address.to_string(),
                            }],
                            ..ConsensusMember::default()
                        }),
                        kubernetes_worker: Some(KubernetesWorker {}),
                    }),
                    join_key: keys.join.verifying_key().to_bytes().to_vec(),
                    id: id.clone(),
                    node_certificate: credentials.certificate.clone(),
                    status: Some(records::status(&address.to_string())),
                };
                records
                    .update(&id, |current| Ok(current.is_none().then(|| record.clone())))
                    .await?;
                Ok(())
            })
            .await?;
            journal.step = COMMITTED;
            self.save_journal(&journal).await?;
            self.checkpoint(JournalFlow::Bootstrap, "committed");
        }
        self.start_child(member.curator).await?;
        self.finish(JournalFlow::Bootstrap, &keys, &credentials)
            .await?;
        self.follow(credentials, address, true).await
    }

    /// A new node of an existing cluster: RegisterNode, the owner's approval, CommitNode.
    async fn register(
        &self,
        mut journal: EnrolmentJournal,
        keys: Keys,
        params: ClusterRegister,
    ) -> Result<(), LifecycleError> {
        let ip = self.address().await;
        let address = ip.to_string();
        let directory = params.cluster_directory.clone().unwrap_or_default();
        let trust = Trust::pinned(params.ca_certificate.clone());
        let ephemeral = || Identity::ephemeral(&keys.node);
        if journal.step < REGISTERED {
            self.retry("RegisterNode", || async {
                let channel = connect(&directory, &trust, ephemeral).await?;
                let request = RegisterNodeRequest {
                    register_ticket: params.register_ticket.clone(),
                    join_key: keys.join.verifying_key().to_bytes().to_vec(),
                    external_address: address.clone(),
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
                    let channel = connect(&directory, &trust, ephemeral).await?;
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
            let credentials = NodeCredentials {
                ca: response.ca_certificate,
                certificate: response.node_certificate,
                key: keys.node.clone(),
            };
            credentials.save(&self.config.root)?;
            journal.step = COMMITTED;
            self.save_journal(&journal).await?;
            self.checkpoint(JournalFlow::Register, "committed");
            credentials
        } else {
            self.credentials("committed")?
        };
        self.deps.directory.set(directory);
        self.finish(JournalFlow::Register, &keys, &credentials)
            .await?;
        let id = node_id(&keys.node.verifying_key());
        let cluster = self.cluster_config(&id, ip);
        self.start_hostsfile(&cluster).await?;
        self.follow(credentials, ip, false).await
    }

    /// A member rejoins: unseal, JoinNode for the CUK, mount, and run its roles.
    async fn join(&self, envelope: SealedEnvelope) -> Result<(), LifecycleError> {
        let sealed: SealedConfiguration = self.unseal(envelope, &self.esp.sealed_path()).await?;
        let path = self.esp.sealed_path().display().to_string();
        let join_key = signing_key(&sealed.join_key).ok_or_else(|| LifecycleError::Corrupted {
            path: path.clone(),
            reason: "bad join key".into(),
        })?;
        let nuk = UnlockKey::from_slice(&sealed.node_unlock_key)?;
        let directory = self.esp.directory()?;
        let trust = Trust::pinned(sealed.cluster_ca.clone());
        let address = self.address().await;
        slog::info!(self.log, "rejoining the cluster"; "curators" => directory.nodes.len());
        let cuk = self
            .retry("JoinNode", || async {
                let channel =
                    connect(&directory, &trust, || Identity::ephemeral(&join_key)).await?;
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
            })
            .await?;
        self.mount(&nuk, &cuk).await?;
        let credentials = self.credentials("joined")?;
        let id = node_id(&credentials.key.verifying_key());
        self.deps.directory.set(directory);
        let cluster = self.cluster_config(&id, address);
        self.start_hostsfile(&cluster).await?;
        let member = self.config.root.etcd_data().join("member").exists();
        if member {
            self.start_member(&cluster, Mode::Restart).await?;
        }
        self.follow(credentials, address, member).await
    }

    /// Follow this node's record through a Curator's Watch, for good: keep the directory
    /// (hosts file, ESP) current and start etcd when the node becomes a consensus member.
    async fn follow(
        &self,
        credentials: NodeCredentials,
        address: std::net::IpAddr,
        mut member: bool,
    ) -> Result<(), LifecycleError> {
        let trust = Trust::pinned(credentials.ca.clone());
        let id = node_id(&credentials.key.verifying_key());
        let identity = || Identity::new(&credentials.key, credentials.certificate.clone());
        let mut delay = RETRY_FIRST;
        loop {
            let watched = async {
                let channel = connect(&self.deps.directory.get(), &trust, identity).await?;
                let mut events = CuratorClient::new(channel)
                    .watch(WatchRequest {})
                    .await
                    .map_err(|s| refused("Watch", s))?
                    .into_inner();
                while let Some(event) = events.message().await.map_err(|s| refused("Watch", s))? {
                    delay = RETRY_FIRST;
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
                    slog::info!(self.log, "watch interrupted; retrying"; "error" => %e,
                        "retry_in_ms" => delay.as_millis() as u64)
                }
                Err(e) => return Err(e),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(RETRY_CAP);
        }
    }

    // ---- helpers ----

    /// Add the hosts file, the first child of `/cluster`.
    async fn start_hostsfile(&self, cluster: &ClusterConfig) -> Result<(), LifecycleError> {
        let network = self.deps.network.clone();
        self.start_child(cluster::hostsfile(
            cluster,
            network,
            self.deps.directory.clone(),
        ))
        .await
    }

    /// Add the consensus member's children to `/cluster`.
    async fn start_member(
        &self,
        cluster: &ClusterConfig,
        mode: Mode,
    ) -> Result<(), LifecycleError> {
        let member = cluster::member_children(cluster, mode);
        self.start_child(member.consensus).await?;
        self.start_child(member.pki).await?;
        self.start_child(member.curator).await
    }

    /// Add `child` to `/cluster` and wait until it is healthy. A child that failed its first
    /// start stays with its supervisor, which keeps restarting it; what needs it retries.
    async fn start_child(&self, child: ChildSpec) -> Result<(), LifecycleError> {
        let name = child.name().to_owned();
        match self.deps.cluster.ask(StartChild(child)).await? {
            Ok(()) | Err(ChildError::Exists(_)) => Ok(()),
            Err(e @ ChildError::StartFailed { .. }) => {
                slog::warn!(self.log, "a cluster child failed its first start; its supervisor retries";
                    "child" => name, "error" => %e);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Format the data partition, or — resuming after a crash that came after formatting —
    /// open what was formatted.
    async fn mount_new(&self, keys: &Keys) -> Result<(), LifecycleError> {
        let new = MountNew {
            nuk: keys.nuk.clone(),
            cuk: keys.cuk.clone(),
        };
        match self.deps.storage.ask(new).await? {
            Ok(()) => Ok(()),
            Err(StorageError::Data(DataError::AlreadyFormatted(path))) => {
                slog::info!(self.log, "the data partition was formatted before a crash; opening it";
                    "path" => %path.display());
                self.mount(&keys.nuk, &keys.cuk).await
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn mount(&self, nuk: &UnlockKey, cuk: &UnlockKey) -> Result<(), LifecycleError> {
        let existing = MountExisting {
            nuk: nuk.clone(),
            cuk: cuk.clone(),
        };
        match self.deps.storage.ask(existing).await? {
            Ok(()) | Err(StorageError::AlreadyMounted) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Seal the final configuration over the journal, with the directory beside it.
    async fn finish(
        &self,
        flow: JournalFlow,
        keys: &Keys,
        credentials: &NodeCredentials,
    ) -> Result<(), LifecycleError> {
        let directory = self.deps.directory.get();
        self.esp.write_directory(&directory)?;
        let sealed = SealedConfiguration {
            node_unlock_key: keys.nuk.as_bytes().to_vec(),
            join_key: keys.join.to_bytes().to_vec(),
            cluster_ca: credentials.ca.clone(),
        };
        let envelope = self
            .retry("sealing the configuration", || async {
                Ok(self.deps.tpm.ask(Seal(sealed.encode_to_vec())).await??)
            })
            .await?;
        self.esp.write_sealed(&envelope)?;
        self.esp.remove_journal()?;
        slog::info!(self.log, "enrolment complete; the sealed configuration replaced the journal";
            "node" => node_id(&keys.node.verifying_key()));
        self.checkpoint(flow, "sealed");
        Ok(())
    }

    fn credentials(&self, step: &'static str) -> Result<NodeCredentials, LifecycleError> {
        NodeCredentials::load(&self.config.root)?.ok_or_else(|| LifecycleError::Inconsistent {
            step,
            reason: format!(
                "no node credentials at {}",
                self.config.root.node_credentials().display()
            ),
            recovery: "decommission this node and register it again",
        })
    }

    async fn save_journal(&self, journal: &EnrolmentJournal) -> Result<(), LifecycleError> {
        let envelope = self
            .retry("sealing the journal", || async {
                Ok(self.deps.tpm.ask(Seal(journal.encode_to_vec())).await??)
            })
            .await?;
        Ok(self.esp.write_journal(&envelope)?)
    }

    async fn unseal<T: Message + Default>(
        &self,
        envelope: SealedEnvelope,
        path: &std::path::Path,
    ) -> Result<T, LifecycleError> {
        let bytes = self
            .retry("unsealing", || async {
                Ok(self.deps.tpm.ask(Unseal(envelope.clone())).await??)
            })
            .await?;
        T::decode(bytes.as_slice()).map_err(|e| LifecycleError::Corrupted {
            path: path.display().to_string(),
            reason: format!("unsealed, but does not decode: {e}"),
        })
    }

    /// The node's external address, once the network actor knows it.
    async fn address(&self) -> std::net::IpAddr {
        let mut status = self.deps.network.subscribe();
        loop {
            if let Some(address) = status.borrow_and_update().external_address {
                return address;
            }
            slog::info!(self.log, "waiting for an external address");
            if status.changed().await.is_err() {
                // The value can no longer change; wait to be stopped.
                std::future::pending::<()>().await;
            }
        }
    }

    fn cluster_config(&self, id: &str, address: std::net::IpAddr) -> ClusterConfig {
        ClusterConfig {
            root: self.config.root.clone(),
            node_id: id.to_owned(),
            address,
            set_hostname: self.config.set_hostname,
            system_hosts: self.config.system_hosts.clone(),
        }
    }

    /// Run `op` until it succeeds or fails permanently, backing off after transient failures.
    async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, LifecycleError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, LifecycleError>>,
    {
        let mut delay = RETRY_FIRST;
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_transient() => {
                    slog::info!(self.log, "retrying"; "step" => what, "reason" => %e,
                        "retry_in_ms" => delay.as_millis() as u64);
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(RETRY_CAP);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The test hook: die here, as a power cut would.
    fn checkpoint(&self, flow: JournalFlow, step: &str) {
        let name = format!(
            "{}:{step}",
            match flow {
                JournalFlow::Register => "register",
                _ => "bootstrap",
            }
        );
        slog::info!(self.log, "enrolment step done"; "step" => &name);
        if self.config.crash_after.as_deref() == Some(name.as_str()) {
            slog::crit!(self.log, "test hook: killing this process"; "after" => &name);
            let _ = nix::sys::signal::kill(nix::unistd::getpid(), nix::sys::signal::SIGKILL);
        }
    }
}

fn refused(call: &'static str, status: tonic::Status) -> LifecycleError {
    LifecycleError::Refused { call, status }
}

fn signing_key(bytes: &[u8]) -> Option<SigningKey> {
    Some(SigningKey::from_bytes(bytes.try_into().ok()?))
}
