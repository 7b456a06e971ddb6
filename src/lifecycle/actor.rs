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

use polis_actors::{
    Actor, ActorRef, ChildError, ChildSpec, Ctx, Failure, StartChild, Started, Supervisor,
    Watchable,
};
use prost::Message;
use zeroize::Zeroizing;

use crate::consensus::Mode;
use crate::fsutil::{self, Durability};
use crate::lifecycle::cluster::{self, ClusterConfig};
use crate::lifecycle::material::Enrolment;
use crate::lifecycle::{decide, Flow, LifecycleError, FW_CFG_WINS};
use crate::metrics::NodeMetrics;
use crate::network::NetworkStatus;
use crate::pki::NodeCredentials;
use crate::proto::api::node_parameters::Cluster;
use crate::proto::common::ClusterDirectory;
use crate::proto::private::enrolment_journal::Flow as JournalFlow;
use crate::proto::private::{SealedConfiguration, SealedEnvelope};
use crate::retry::Retry;
use crate::storage::{Esp, EspError, MountExisting, NodeRoot, Storage, StorageError, UnlockKey};
use crate::tpm::{Seal, SealedKind, Tpm, Unseal};

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
    /// The node's metrics: the lifecycle reports its steps, and hands them to `/cluster`.
    pub metrics: NodeMetrics,
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

/// One run of the lifecycle: everything a flow needs, by value, so it can live in a future. The
/// flows themselves are in `enrol` (bootstrap, register) and `join` (join, then following the
/// node's record).
pub(super) struct Run {
    pub(super) config: LifecycleConfig,
    pub(super) deps: LifecycleDeps,
    pub(super) esp: Esp,
    pub(super) log: slog::Logger,
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
                let bytes = self.unseal(SealedKind::EnrolmentJournal, envelope).await?;
                let enrolment = Enrolment::decode(&bytes, &self.esp.journal_path())?;
                slog::info!(self.log, "resuming an interrupted enrolment";
                    "flow" => ?enrolment.journal.flow(), "step" => enrolment.journal.step);
                self.enrol(enrolment).await
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

    // ---- helpers ----

    /// Add the hosts file, the first child of `/cluster`.
    pub(super) async fn start_hostsfile(
        &self,
        cluster: &ClusterConfig,
    ) -> Result<(), LifecycleError> {
        let network = self.deps.network.clone();
        self.start_child(cluster::hostsfile(
            cluster,
            network,
            self.deps.directory.clone(),
        ))
        .await
    }

    /// Add the consensus member's children to `/cluster`.
    pub(super) async fn start_member(
        &self,
        cluster: &ClusterConfig,
        mode: Mode,
    ) -> Result<(), LifecycleError> {
        let member = cluster::member_children(cluster, mode, None);
        self.start_child(member.consensus).await?;
        self.start_child(member.pki).await?;
        self.start_child(member.curator).await?;
        self.start_child(member.decommission).await?;
        self.start_child(member.escrow).await
    }

    /// Add `child` to `/cluster` and wait until it is healthy. A child that failed its first
    /// start stays with its supervisor, which keeps restarting it; what needs it retries.
    pub(super) async fn start_child(&self, child: ChildSpec) -> Result<(), LifecycleError> {
        let name = child.name().to_owned();
        let started = self
            .retry("starting a cluster child", || async {
                Ok(self.deps.cluster.ask(StartChild(child.clone())).await?)
            })
            .await?;
        match started {
            Ok(()) | Err(ChildError::Exists(_)) => Ok(()),
            Err(e @ ChildError::StartFailed { .. }) => {
                slog::warn!(self.log, "a cluster child failed its first start; its supervisor retries";
                    "child" => name, "error" => %e);
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Write to the ESP with `write`, off the event loop: the node's Curator serves on that
    /// thread too, and an fsync there stalls every call in flight (issue 12).
    pub(super) async fn on_esp<T: Send + 'static>(
        &self,
        write: impl FnOnce(&Esp) -> Result<T, EspError> + Send + 'static,
    ) -> Result<T, LifecycleError> {
        let esp = self.esp.clone();
        Ok(fsutil::off_thread(&self.config.root.esp(), move || write(&esp)).await?)
    }

    /// Save the node's credentials off the event loop: their fsyncs would stall every actor.
    pub(super) async fn save_credentials(
        &self,
        credentials: &NodeCredentials,
        durability: Durability,
    ) -> Result<(), LifecycleError> {
        let (credentials, root) = (credentials.clone(), self.config.root.clone());
        let dir = root.node_credentials();
        Ok(fsutil::off_thread(&dir, move || credentials.save(&root, durability)).await?)
    }

    /// Make credentials saved with [`Durability::Volatile`] durable, off the event loop; the
    /// work starts at once.
    pub(super) fn sync_credentials(
        &self,
    ) -> impl Future<Output = Result<(), LifecycleError>> + 'static {
        let root = self.config.root.clone();
        let synced = fsutil::off_thread(&root.node_credentials(), move || {
            NodeCredentials::sync(&root)
        });
        async move { Ok(synced.await?) }
    }

    /// Remove the register ticket from the ESP's parameters (an enrolled node never needs it).
    /// A failure is logged, not fatal: the node works without it, and the next boot tries again.
    pub(super) async fn scrub_register_ticket(&self) {
        match self.on_esp(|esp| esp.scrub_register_ticket()).await {
            Ok(true) => slog::info!(self.log, "register ticket removed from the ESP";
                "path" => %self.esp.parameters_path().display()),
            Ok(false) => {}
            Err(e) => slog::warn!(self.log, "cannot remove the register ticket from the ESP";
                "error" => %e),
        }
    }

    /// Mount the existing data partition, asking again while the storage actor restarts.
    pub(super) async fn mount(
        &self,
        nuk: &UnlockKey,
        cuk: &UnlockKey,
    ) -> Result<(), LifecycleError> {
        self.retry("mounting the data partition", || async {
            let existing = MountExisting {
                nuk: nuk.clone(),
                cuk: cuk.clone(),
            };
            match self.deps.storage.ask(existing).await? {
                Ok(()) | Err(StorageError::AlreadyMounted) => Ok(()),
                Err(e) => Err(e.into()),
            }
        })
        .await
    }

    pub(super) fn credentials(
        &self,
        step: &'static str,
    ) -> Result<NodeCredentials, LifecycleError> {
        NodeCredentials::load(&self.config.root)?.ok_or_else(|| LifecycleError::Inconsistent {
            step,
            reason: format!(
                "no node credentials at {}",
                self.config.root.node_credentials().display()
            ),
            recovery: "decommission this node and register it again",
        })
    }

    /// Unseal `envelope`, an object of `kind`, asking again while the TPM actor restarts.
    pub(super) async fn unseal(
        &self,
        kind: SealedKind,
        envelope: SealedEnvelope,
    ) -> Result<Zeroizing<Vec<u8>>, LifecycleError> {
        self.retry("unsealing", || async {
            Ok(self.deps.tpm.ask(Unseal(kind, envelope.clone())).await??)
        })
        .await
    }

    /// The node's external address, once the network actor knows it.
    pub(super) async fn address(&self) -> std::net::IpAddr {
        crate::network::external_address(&self.deps.network, &self.log).await
    }

    pub(super) fn cluster_config(&self, id: &str, address: std::net::IpAddr) -> ClusterConfig {
        ClusterConfig {
            root: self.config.root.clone(),
            node_id: id.to_owned(),
            address,
            set_hostname: self.config.set_hostname,
            system_hosts: self.config.system_hosts.clone(),
            metrics: self.deps.metrics.clone(),
        }
    }

    /// Run `op` until it succeeds or fails permanently, backing off after transient failures.
    pub(super) async fn retry<T, F, Fut>(&self, what: &str, mut op: F) -> Result<T, LifecycleError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, LifecycleError>>,
    {
        let mut retry = Retry::new();
        loop {
            match op().await {
                Ok(value) => return Ok(value),
                Err(e) if e.is_transient() => retry.wait(&self.log, what, &e).await,
                Err(e) => return Err(e),
            }
        }
    }

    /// Seal `sealed` with the TPM and put it in place on the ESP (one atomic rename).
    pub(super) async fn seal_configuration(
        &self,
        sealed: &SealedConfiguration,
    ) -> Result<(), LifecycleError> {
        let envelope = self.seal(SealedKind::Configuration, sealed).await?;
        self.on_esp(move |esp| esp.write_sealed(&envelope)).await
    }

    /// Seal `message`, an object of `kind`, with the TPM, asking again while the TPM actor
    /// restarts. The encoded plaintext is wiped once sealed.
    pub(super) async fn seal(
        &self,
        kind: SealedKind,
        message: &impl Message,
    ) -> Result<SealedEnvelope, LifecycleError> {
        self.retry(&format!("sealing {}", kind.name()), || async {
            let bytes = Zeroizing::new(message.encode_to_vec());
            Ok(self.deps.tpm.ask(Seal(kind, bytes)).await??)
        })
        .await
    }

    /// An enrolment step is done: say so, then pass its crash point.
    pub(super) fn checkpoint(&self, flow: JournalFlow, step: &str) {
        let name = format!(
            "{}:{step}",
            match flow {
                JournalFlow::Register => "register",
                _ => "bootstrap",
            }
        );
        slog::info!(self.log, "enrolment step done"; "step" => &name);
        self.crash_point(&name);
    }

    /// A step of the flow is done: report it as the current step, then pass the test hook
    /// ([`crate::crash_point`]): die here if it is armed at `name`.
    pub(super) fn crash_point(&self, name: &str) {
        self.deps.metrics.health.lifecycle_step(name);
        crate::crash_point::pass(&self.log, name);
    }
}

/// A Curator's refusal of `call`.
pub(super) fn refused(call: &'static str, status: tonic::Status) -> LifecycleError {
    LifecycleError::Refused { call, status }
}
