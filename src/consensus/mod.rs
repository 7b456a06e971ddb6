//! The consensus actor: runs this node's etcd member as a supervised child process and hands
//! other actors namespaced clients. It is healthy once etcd answers on the local socket; if etcd
//! exits, the actor fails and its supervisor restarts both. The child never outlives the actor.

mod etcd;
mod kv;

use std::time::Duration;

use etcd_client::Client;
use polis_actors::{Actor, Ctx, Failure, Handler, Message, Reply, Started};

pub use etcd::{ConsensusError, Member, PEER_PORT};
pub use kv::NamespacedKv;

use crate::fsutil::{self, FsError, PUBLIC_MODE};
use crate::pki::CertificateAuthority;
use crate::process::ChildProcess;
use crate::storage::NodeRoot;

/// How long etcd gets to become ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long etcd gets to stop cleanly before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// The etcd namespace of the consensus actor's own records (the peer CA and its CRL).
pub const NAMESPACE: &str = "/consensus/";
/// The peer CRL (DER) under [`NAMESPACE`]; whoever revokes a peer writes it there, and every
/// member's CRL watcher copies it to the file etcd checks peers against.
pub const PEER_CRL_KEY: &str = "peer-crl";

// ---- messages ----

/// A client for keys under `prefix` (e.g. `/curator/`), once etcd is ready.
pub struct Kv(pub String);
impl Message for Kv {
    type Reply = Result<NamespacedKv, ConsensusError>;
}

// ---- state ----

/// Where the node's etcd lives and what it is called.
#[derive(Clone, Debug)]
pub struct ConsensusConfig {
    /// The node root (`data/etcd`, `ephemeral/consensus`).
    pub root: NodeRoot,
    /// This member's name and addresses.
    pub member: Member,
}

/// The consensus actor.
pub struct Consensus {
    config: ConsensusConfig,
    etcd: Option<ChildProcess>,
    client: Option<Client>,
}

impl Consensus {
    /// An actor for `config`; etcd starts when the actor does.
    pub fn new(config: ConsensusConfig) -> Self {
        Consensus {
            config,
            etcd: None,
            client: None,
        }
    }
}

// ---- handlers ----

impl Actor for Consensus {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        let root = self.config.root.clone();
        let dir = etcd::socket_dir(&root);
        std::fs::create_dir_all(&dir).map_err(|e| FsError::new("create", &dir, e))?;
        let new_ca = if root.etcd_data().join("member").exists() {
            if !root.etcd_peer_pki().join("key.pem").exists() {
                return Err(Failure::msg(format!(
                    "etcd data exists at {} but its peer PKI at {} is missing",
                    root.etcd_data().display(),
                    root.etcd_peer_pki().display()
                )));
            }
            slog::info!(ctx.log(), "restarting etcd from its data directory");
            None
        } else {
            slog::info!(ctx.log(), "starting a new single-member cluster"; "member" => &self.config.member.name);
            Some(etcd::bootstrap_peer_pki(&root, &self.config.member)?)
        };
        etcd::remove_stale_socket(&root)?;
        let process =
            ChildProcess::spawn(etcd::command(&root, &self.config.member), "etcd", ctx.log())?;
        ctx.spawn(process.exited(), |status, _, _| {
            Err(Failure::msg(format!("etcd exited unexpectedly: {status}")))
        });
        self.etcd = Some(process);
        ctx.spawn(ready(root, new_ca), |result, consensus: &mut Self, ctx| {
            let client = result?;
            slog::info!(ctx.log(), "etcd ready");
            let crl_file = consensus.config.root.etcd_peer_crl();
            ctx.spawn(watch_crl(client.clone(), crl_file), |ended, _, _| {
                Err(Failure::msg(format!("the peer CRL watch ended: {ended}")))
            });
            consensus.client = Some(client);
            ctx.healthy();
            Ok(())
        });
        Ok(Started::Pending)
    }

    fn stop_requested(&mut self, ctx: &mut Ctx<'_, Self>) {
        self.client = None;
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

// ---- helpers ----

/// Copy the stored peer CRL to `file` now and on every change; returns only when the watch
/// breaks (the actor then fails and restarts, and the copy starts over).
async fn watch_crl(mut client: Client, file: std::path::PathBuf) -> ConsensusError {
    let key = format!("{NAMESPACE}{PEER_CRL_KEY}");
    let mut stream = match client.watch(key.as_str(), None).await {
        Ok(stream) => stream,
        Err(e) => return e.into(),
    };
    // Read after the watch exists, so no change between the two is missed.
    match client.get(key.as_str(), None).await {
        Ok(current) => {
            if let Some(kv) = current.kvs().first() {
                if let Err(e) = fsutil::write_atomic(&file, kv.value(), PUBLIC_MODE) {
                    return e.into();
                }
            }
        }
        Err(e) => return e.into(),
    }
    loop {
        match stream.message().await {
            Ok(Some(response)) => {
                for event in response.events() {
                    let Some(kv) = event.kv().filter(|kv| !kv.value().is_empty()) else {
                        continue;
                    };
                    if let Err(e) = fsutil::write_atomic(&file, kv.value(), PUBLIC_MODE) {
                        return e.into();
                    }
                }
            }
            Ok(None) => return ConsensusError::WatchClosed(key),
            Err(e) => return e.into(),
        }
    }
}

/// Wait until etcd answers, then commit a new cluster's peer CA (create-if-absent).
async fn ready(root: NodeRoot, new_ca: Option<CertificateAuthority>) -> Result<Client, Failure> {
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    let mut client = loop {
        let attempt = async {
            let mut client = etcd::connect(&root).await?;
            client.status().await?;
            Ok::<_, ConsensusError>(client)
        };
        match attempt.await {
            Ok(client) => break client,
            Err(e) if tokio::time::Instant::now() >= deadline => {
                return Err(Failure::msg(format!(
                    "etcd not ready within {} s: {e}",
                    READY_TIMEOUT.as_secs()
                )))
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    if let Some(ca) = new_ca {
        let mut kv = NamespacedKv::new(client.clone(), NAMESPACE.to_owned());
        kv.ensure("peer-ca/certificate", ca.certificate()).await?;
        kv.ensure("peer-ca/key", &ca.key_pkcs8()?).await?;
    }
    client.status().await.map_err(ConsensusError::from)?;
    Ok(client)
}
