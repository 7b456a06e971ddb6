//! The consensus actor: runs this node's etcd member as a supervised child process and hands
//! other actors namespaced clients. It is healthy once etcd answers on the local socket; if etcd
//! exits, the actor fails and its supervisor restarts both. The child never outlives the actor.
//! It keeps the member's peer certificate current ([`peer_pki`]), renewing it before etcd
//! starts if it is due, and while etcd runs.

mod etcd;
mod kv;
pub mod peer_pki;
pub mod peers;

use std::time::Duration;

use etcd_client::Client;
use futures::future::OptionFuture;
use polis_actors::{Actor, Ctx, Failure, Handler, Message, Reply, Started};
use tokio::sync::oneshot;

pub use etcd::{
    command as etcd_command, connect, remove_stale_socket, ConsensusError, Member, Mode,
    PEER_CA_NAME, PEER_PORT,
};
pub use kv::{Leadership, NamespacedKv};

use crate::fsutil::{self, FsError, PUBLIC_MODE};
use crate::metrics::health::{Health, MemberStatus};
use crate::pki::{instant_at, renew_at, CertificateAuthority};
use crate::poll::Poll;
use crate::process::ChildProcess;
use crate::retry::Retry;
use crate::storage::NodeRoot;

/// How long etcd gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often readiness is probed until etcd's socket answers (a refused connection costs
/// microseconds; once connected, the first read itself waits for a leader).
const READY_POLL: Duration = Duration::from_millis(5);
/// How often the autopromoter looks for learners to promote.
const PROMOTE_EVERY: Duration = Duration::from_secs(1);
/// How long etcd gets to stop cleanly before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The etcd namespace of the consensus actor's own records (the peer CA and its CRL).
pub const NAMESPACE: &str = "/consensus/";
/// The peer CA certificate (DER) under [`NAMESPACE`], stored by the cluster's first member.
pub const PEER_CA_CERTIFICATE: &str = "peer-ca/certificate";
/// The peer CA key (PKCS#8 DER) under [`NAMESPACE`], for issuing new members' certificates.
pub const PEER_CA_KEY: &str = "peer-ca/key";
/// The peer CRL (DER) under [`NAMESPACE`]; whoever revokes a peer writes it there, and every
/// member's CRL watcher copies it to the file etcd checks peers against.
pub const PEER_CRL_KEY: &str = "peer-crl";

// ---- messages ----

/// A client for keys under `prefix` (e.g. `/curator/`), once etcd is ready.
pub struct Kv(pub String);
impl Message for Kv {
    type Reply = Result<NamespacedKv, ConsensusError>;
}

/// Answer once etcd is ready (at once if it is).
pub struct WaitReady;
impl Message for WaitReady {
    type Reply = Result<(), ConsensusError>;
}

/// Add a member as a learner (etcd 3.4 allows one learner at a time; a second is refused until
/// the first is promoted). Answers every member, the new one included: the peers the new member
/// starts with (its `--initial-cluster`). Repeating
/// the call for a member already added answers the same and adds nothing.
pub struct AddLearner {
    /// The new member's name (its node ID).
    pub name: String,
    /// Where other members reach it.
    pub peer_url: String,
}
impl Message for AddLearner {
    type Reply = Result<Vec<peers::Peer>, ConsensusError>;
}

/// Remove the member called `name` (a node ID) or, if it never started and so has no name yet,
/// the nameless one at `peer_url` (a started member is only ever removed by its name: a peer URL
/// comes from an address a node reported). Answers whether one was removed: repeating the call changes nothing.
/// Removing the last voter is refused.
pub struct RemoveMember {
    /// The member's name (its node ID).
    pub name: String,
    /// Where other members reach it.
    pub peer_url: String,
}
impl Message for RemoveMember {
    type Reply = Result<bool, ConsensusError>;
}

// ---- state ----

/// Where the node's etcd lives and what it is called.
#[derive(Clone, Debug)]
pub struct ConsensusConfig {
    /// The node root (`data/etcd`, `ephemeral/consensus`).
    pub root: NodeRoot,
    /// This member's name and addresses.
    pub member: Member,
    /// How it first comes into being.
    pub mode: Mode,
    /// Where the member's status is reported.
    pub health: Health,
}

/// The consensus actor.
pub struct Consensus {
    config: ConsensusConfig,
    etcd: Option<ChildProcess>,
    client: Option<Client>,
    promoting: bool,
    waiting: Vec<oneshot::Sender<()>>,
    /// A stop was asked for: etcd's exit and the end of the CRL watch are expected, not failures
    /// (failing would kill etcd in the middle of its clean shutdown).
    stopping: bool,
}

impl Consensus {
    /// An actor for `config`; etcd starts when the actor does.
    pub fn new(config: ConsensusConfig) -> Self {
        Consensus {
            config,
            etcd: None,
            client: None,
            promoting: false,
            waiting: Vec::new(),
            stopping: false,
        }
    }
}

// ---- handlers ----

impl Actor for Consensus {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        let root = self.config.root.clone();
        let dir = root.consensus();
        std::fs::create_dir_all(&dir).map_err(|e| FsError::new("create", &dir, e))?;
        // etcd's first start on a new data directory is marked until etcd first answers: a kill
        // in between (the resume test found one) can leave a member directory with no log to
        // restart from, and etcd then waits for an election forever. Nothing of Polis's is in it
        // yet (Polis writes only once etcd answers), so the next start begins it again.
        let first_start = root.etcd_first_start();
        if first_start.exists() && !matches!(self.config.mode, Mode::Restart) {
            let data = root.etcd_data();
            slog::warn!(ctx.log(), "etcd's first start was cut short; starting its data directory over";
                "path" => %data.display());
            fsutil::remove_dir_if_present(&data)?;
        }
        let restart = root.etcd_member_to_restart();
        let join = if restart {
            if !root.etcd_peer_pki().join(peer_pki::KEY_FILE).exists() {
                return Err(Failure::msg(format!(
                    "etcd data exists at {} but its peer PKI at {} is missing",
                    root.etcd_data().display(),
                    root.etcd_peer_pki().display()
                )));
            }
            slog::info!(ctx.log(), "restarting etcd from its data directory");
            // Before etcd: its peers refuse an expired certificate, and may be waiting for
            // this member to renew its own to form a quorum at all.
            match peer_pki::renew_if_due(&root, &self.config.member) {
                Ok(Some(_)) => slog::info!(ctx.log(), "etcd peer certificate renewed"),
                Ok(None) => {}
                Err(e) => slog::warn!(ctx.log(), "the etcd peer certificate could not be renewed";
                    "error" => %e),
            }
            None
        } else {
            if matches!(self.config.mode, Mode::Restart) {
                return Err(Failure::msg(format!(
                    "this member has run before, but its etcd data at {} is missing or never finished its first start",
                    root.etcd_data().display()
                )));
            }
            // The mark's fsyncs run on a thread of their own while the peer PKI is made and
            // written: etcd waits for both, neither for the other.
            std::thread::scope(|scope| {
                let marked = std::thread::Builder::new()
                    .name("first-start-mark".into())
                    .spawn_scoped(scope, || fsutil::create_mark(&first_start))
                    .map_err(|e| Failure::msg(format!("cannot start a thread: {e}")))?;
                let peer_pki = self.write_peer_pki(ctx);
                marked.join().map_err(|_| {
                    Failure::msg("the thread writing etcd's first-start mark panicked")
                })??;
                peer_pki
            })?
        };
        etcd::remove_stale_socket(&root)?;
        let command = etcd::command(&root, &self.config.member, join.as_deref());
        let process = ChildProcess::spawn(command, "etcd", ctx.log())?;
        ctx.spawn(
            process.exited(),
            |status, consensus: &mut Self, _| match consensus.stopping {
                true => Ok(()),
                false => Err(Failure::msg(format!("etcd exited unexpectedly: {status}"))),
            },
        );
        self.etcd = Some(process);
        let spawned = std::time::Instant::now();
        // A first start's peer PKI was written without fsyncs: they run while etcd elects.
        let synced = (!restart).then(|| {
            let root = root.clone();
            fsutil::off_thread(&root.etcd_peer_pki(), move || {
                peer_pki::sync_peer_pki(&root)
            })
        });
        ctx.spawn(
            ready(root, synced),
            move |result, consensus: &mut Self, ctx| {
                let client = result?;
                fsutil::remove_durably(&consensus.config.root.etcd_first_start())?;
                let elapsed = spawned.elapsed();
                slog::info!(ctx.log(), "etcd ready"; "after_ms" => elapsed.as_millis());
                consensus.config.health.consensus_ready(elapsed);
                ctx.spawn(
                    keep_peer_certificate(
                        client.clone(),
                        consensus.config.clone(),
                        ctx.log().clone(),
                    ),
                    |(), _, _| Ok(()),
                );
                let crl_file = consensus.config.root.etcd_peer_crl();
                ctx.spawn(
                    watch_crl(client.clone(), crl_file),
                    |ended, consensus: &mut Self, _| match consensus.stopping {
                        true => Ok(()),
                        false => Err(Failure::msg(format!("the peer CRL watch ended: {ended}"))),
                    },
                );
                consensus.client = Some(client);
                for waiter in consensus.waiting.drain(..) {
                    let _ = waiter.send(());
                }
                ctx.healthy();
                ctx.run_interval(PROMOTE_EVERY, |consensus: &mut Self, ctx| {
                    consensus.autopromote(ctx);
                    Ok(())
                });
                Ok(())
            },
        );
        Ok(Started::Pending)
    }

    fn stop_requested(&mut self, ctx: &mut Ctx<'_, Self>) {
        self.client = None;
        self.stopping = true;
        match &self.etcd {
            Some(etcd) => ctx.spawn(etcd.terminate(STOP_GRACE), |status, _, ctx| {
                slog::info!(ctx.log(), "etcd stopped"; "status" => %status);
                ctx.stop();
                Ok(())
            }),
            None => ctx.stop(),
        }
    }
}

impl Handler<Kv> for Consensus {
    fn handle(
        &mut self,
        Kv(prefix): Kv,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <Kv as Message>::Reply>, Failure> {
        Ok(Reply::now(match &self.client {
            Some(client) => Ok(NamespacedKv::new(client.clone(), prefix)),
            None => Err(ConsensusError::NotReady),
        }))
    }
}

impl Handler<WaitReady> for Consensus {
    fn handle(
        &mut self,
        _: WaitReady,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <WaitReady as Message>::Reply>, Failure> {
        if self.client.is_some() {
            return Ok(Reply::now(Ok(())));
        }
        let (tx, rx) = oneshot::channel();
        self.waiting.push(tx);
        Ok(Reply::detached(async move {
            Ok(rx.await.map_err(|_| ConsensusError::NotReady))
        }))
    }
}

impl Handler<AddLearner> for Consensus {
    fn handle(
        &mut self,
        msg: AddLearner,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <AddLearner as Message>::Reply>, Failure> {
        let Some(client) = self.client.clone() else {
            return Ok(Reply::now(Err(ConsensusError::NotReady)));
        };
        slog::info!(ctx.log(), "adding a learner"; "name" => &msg.name, "peer_url" => &msg.peer_url);
        Ok(Reply::later(async move {
            Ok(bounded("adding a learner", add_learner(client, msg)).await)
        }))
    }
}

impl Handler<RemoveMember> for Consensus {
    fn handle(
        &mut self,
        msg: RemoveMember,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <RemoveMember as Message>::Reply>, Failure> {
        let Some(client) = self.client.clone() else {
            return Ok(Reply::now(Err(ConsensusError::NotReady)));
        };
        let log = ctx.log().clone();
        Ok(Reply::later(async move {
            Ok(bounded("removing a member", remove_member(client, msg, &log)).await)
        }))
    }
}

// ---- helpers ----

impl Consensus {
    /// A first start's peer PKI, not yet durable: made for a new cluster, or written as the
    /// cluster handed it to a joining member. Answers the peers a joining member starts with.
    fn write_peer_pki(&self, ctx: &Ctx<'_, Self>) -> Result<Option<Vec<peers::Peer>>, Failure> {
        let root = &self.config.root;
        match &self.config.mode {
            Mode::Restart => Ok(None),
            Mode::Bootstrap { peer_lifetime } => {
                slog::info!(ctx.log(), "starting a new single-member cluster"; "member" => &self.config.member.name);
                peer_pki::bootstrap_peer_pki(root, &self.config.member, *peer_lifetime)?;
                Ok(None)
            }
            Mode::Join {
                peers,
                ca,
                certificate,
                key,
                crl,
            } => {
                slog::info!(ctx.log(), "joining the cluster as a learner";
                    "initial_cluster" => peers::initial_cluster(peers));
                peer_pki::write_peer_pki(root, ca, certificate, key, crl)?;
                Ok(Some(peers.clone()))
            }
        }
    }

    /// On the leader, promote one learner that has started (etcd itself refuses one that has not
    /// caught up). etcd 3.4.23 may wrongly promote a learner whose process never started, hence
    /// the started check here.
    fn autopromote(&mut self, ctx: &mut Ctx<'_, Self>) {
        let Some(client) = self.client.clone().filter(|_| !self.promoting) else {
            return;
        };
        self.promoting = true;
        ctx.spawn(
            bounded(
                "promoting a learner",
                promote_started_learner(client, self.config.health.clone()),
            ),
            |result, consensus: &mut Self, ctx| {
                consensus.promoting = false;
                match result {
                    Ok(Some(name)) => {
                        slog::info!(ctx.log(), "promoted a learner to voter"; "name" => name)
                    }
                    Ok(None) => {}
                    Err(e) => slog::debug!(ctx.log(), "no learner promoted"; "reason" => %e),
                }
                Ok(())
            },
        );
    }
}

/// `call`, a membership change, within [`crate::grpc::CALL_DEADLINE`]: etcd waits for a
/// membership change to apply with no limit of its own, so one whose proposal a leader change
/// dropped would wait for ever (`polisctl chaos` found a decommission stuck so).
async fn bounded<T>(
    what: &'static str,
    call: impl std::future::Future<Output = Result<T, ConsensusError>>,
) -> Result<T, ConsensusError> {
    tokio::time::timeout(crate::grpc::CALL_DEADLINE, call)
        .await
        .unwrap_or(Err(ConsensusError::TimedOut(what)))
}

/// Each round also reports the member's status (leader, learner, term, database size) to the
/// node's health metrics.
async fn promote_started_learner(
    mut client: Client,
    health: Health,
) -> Result<Option<String>, ConsensusError> {
    let status = client.status().await?;
    let me = status.header().map(|h| h.member_id());
    health.member_status(MemberStatus {
        leader: me == Some(status.leader()),
        learner: status.is_learner(),
        raft_term: status.raft_term(),
        db_size_bytes: status.db_size(),
    });
    if me != Some(status.leader()) {
        return Ok(None);
    }
    let members = client.member_list().await?;
    let Some(learner) = members
        .members()
        .iter()
        .find(|m| m.is_learner() && !m.name().is_empty() && !m.client_urls().is_empty())
    else {
        return Ok(None);
    };
    let (id, name) = (learner.id(), learner.name().to_owned());
    client.member_promote(id).await?;
    Ok(Some(name))
}

async fn add_learner(
    mut client: Client,
    msg: AddLearner,
) -> Result<Vec<peers::Peer>, ConsensusError> {
    let members = client.member_list().await?;
    let known = members
        .members()
        .iter()
        .any(|m| m.peer_urls().contains(&msg.peer_url));
    if !known {
        if let Some(learner) = members.members().iter().find(|m| m.is_learner()) {
            return Err(ConsensusError::LearnerPending(
                learner.peer_urls().join(","),
            ));
        }
        let options = etcd_client::MemberAddOptions::new().with_is_learner();
        client
            .member_add([msg.peer_url.as_str()], Some(options))
            .await?;
    }
    let members = client.member_list().await?;
    members
        .members()
        .iter()
        .filter_map(|m| {
            let url = m.peer_urls().first()?;
            // The new member has no name until it starts: it gets the one it will start with.
            let name = if *url == msg.peer_url {
                msg.name.as_str()
            } else {
                m.name()
            };
            Some((name, url))
        })
        .map(|(name, url)| {
            peers::parse(name, url).ok_or_else(|| ConsensusError::BadPeer {
                name: name.to_owned(),
                url: url.clone(),
            })
        })
        .collect()
}

async fn remove_member(
    mut client: Client,
    msg: RemoveMember,
    log: &slog::Logger,
) -> Result<bool, ConsensusError> {
    let members = client.member_list().await?;
    let Some(member) = members.members().iter().find(|m| {
        m.name() == msg.name || (m.name().is_empty() && m.peer_urls().contains(&msg.peer_url))
    }) else {
        return Ok(false);
    };
    let voters = members.members().iter().filter(|m| !m.is_learner()).count();
    if !member.is_learner() && voters <= 1 {
        return Err(ConsensusError::LastMember(msg.name));
    }
    slog::warn!(log, "removing a member"; "name" => &msg.name, "peer_url" => &msg.peer_url,
        "learner" => member.is_learner());
    // Raft drops a membership change proposed while another is unapplied (two reconcilers
    // removing the same member as their lock changes hands), and etcd then leaves the call
    // waiting: the member being gone answers it as well.
    let id = member.id();
    let watcher = client.clone();
    tokio::select! {
        removed = client.member_remove(id) => {
            removed?;
        }
        () = until_gone(watcher, id) => {}
    }
    Ok(true)
}

/// Answers once etcd lists no member `id`; never, if that does not happen in time.
async fn until_gone(mut client: Client, id: u64) {
    let gone = Poll::new(Duration::from_millis(200), crate::grpc::CALL_DEADLINE)
        .until(async || {
            let members = client.member_list().await.map_err(|e| e.to_string())?;
            crate::poll::holds(!members.members().iter().any(|m| m.id() == id), "listed")
        })
        .await;
    if gone.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Copy the stored peer CRL to `file` now and on every change; returns only when the watch
/// breaks (the actor then fails and restarts, and the copy starts over).
async fn watch_crl(client: Client, file: std::path::PathBuf) -> ConsensusError {
    NamespacedKv::new(client, NAMESPACE.to_owned())
        .follow(PEER_CRL_KEY, |crl| {
            fsutil::write_atomic(&file, crl, PUBLIC_MODE).map_err(ConsensusError::from)
        })
        .await
}

/// The peer CA as the first member stored it, from `kv` confined to [`NAMESPACE`]: what issues
/// a new member's peer certificate.
pub async fn peer_ca(kv: &mut NamespacedKv) -> Result<CertificateAuthority, ConsensusError> {
    let missing = |key: &str| ConsensusError::Missing(format!("{NAMESPACE}{key}"));
    let certificate = kv
        .get(PEER_CA_CERTIFICATE)
        .await?
        .ok_or_else(|| missing(PEER_CA_CERTIFICATE))?;
    let key = kv
        .get(PEER_CA_KEY)
        .await?
        .ok_or_else(|| missing(PEER_CA_KEY))?;
    Ok(CertificateAuthority::from_parts(
        PEER_CA_NAME,
        &key,
        certificate,
    )?)
}

/// Wait until etcd answers, then make etcd and this member's copy of the peer CA agree
/// ([`peer_pki::keep_peer_ca`]); and until `synced`, a first start's fsync of the peer PKI, if
/// there is one, has ended.
async fn ready(
    root: NodeRoot,
    synced: Option<impl std::future::Future<Output = Result<(), FsError>>>,
) -> Result<Client, Failure> {
    let (client, synced) = futures::join!(answering(&root), OptionFuture::from(synced));
    synced.transpose()?;
    client
}

/// Wait until etcd answers, then make etcd and this member's copy of the peer CA agree.
async fn answering(root: &NodeRoot) -> Result<Client, Failure> {
    // Ready means serving linearizable reads, which a learner refuses until it is promoted.
    let client = Poll::new(READY_POLL, READY_TIMEOUT)
        .until(async || {
            let mut client = etcd::connect(root).await?;
            client
                .get(format!("{NAMESPACE}{PEER_CRL_KEY}"), None)
                .await?;
            Ok::<_, ConsensusError>(client)
        })
        .await
        .map_err(|e| {
            let within = READY_TIMEOUT.as_secs();
            Failure::msg(format!("etcd not ready within {within} s: {e}"))
        })?;
    let mut kv = NamespacedKv::new(client.clone(), NAMESPACE.to_owned());
    peer_pki::keep_peer_ca(root, &mut kv).await?;
    Ok(client)
}

/// Keep this member's peer certificate current for as long as etcd runs: renew it when due
/// ([`peer_pki::renew_if_due`]), show its expiry in the node's metrics, and record the one
/// served in etcd ([`peer_pki::record_served`]). A failure is logged as a warning and retried
/// with backoff.
async fn keep_peer_certificate(client: Client, config: ConsensusConfig, log: slog::Logger) {
    let mut kv = NamespacedKv::new(client, NAMESPACE.to_owned());
    let mut retry = Retry::new();
    loop {
        let kept = async {
            if peer_pki::renew_if_due(&config.root, &config.member)?.is_some() {
                slog::info!(log, "etcd peer certificate renewed");
            }
            let served = peer_pki::served(&config.root)?;
            config.health.certificate_held("peer", &served);
            peer_pki::record_served(&mut kv, &config.member.name, &served).await?;
            Ok::<_, ConsensusError>(renew_at(&served)?)
        };
        match kept.await {
            Ok(due) => {
                retry.reset();
                tokio::time::sleep_until(instant_at(due)).await;
            }
            Err(e) => {
                slog::warn!(log, "the etcd peer certificate could not be renewed"; "error" => %e);
                retry.wait(&log, "etcd peer certificate", &e).await;
            }
        }
    }
}
