//! Debian's etcd as this node's consensus member: its command line and a client over the local
//! unix socket.

use std::net::SocketAddr;
use std::process::Command;

use etcd_client::Client;
use hyper_util::rt::TokioIo;
use tonic::transport::Endpoint;

use super::peer_pki::PEER_CERTIFICATE_FILE;
use super::peers::{initial_cluster, peer_url, Peer};
use crate::fsutil::{self, FsError};
use crate::pki::PkiError;
use crate::storage::NodeRoot;

/// The peer CA's name.
pub const PEER_CA_NAME: &str = "Polis etcd peer CA";

/// The etcd peer port.
pub const PEER_PORT: u16 = 7834;
/// The socket's name in etcd's working directory (`ephemeral/consensus`): etcd 3.4 reads a
/// `unix://name:0` URL relative to its working directory, and names the socket file `name:0`.
const SOCKET_NAME: &str = "client.sock";

/// Why consensus could not start or serve.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// A file of the peer PKI or etcd's data could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// The peer PKI could not be made.
    #[error("etcd peer PKI: {0}")]
    Pki(#[from] PkiError),
    /// etcd could not be reached or refused a request.
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    /// The new peer CA kept on disk until etcd holds it cannot be read.
    #[error("the pending etcd peer CA: {0}")]
    PendingCa(#[from] crate::pki::CredentialsError),
    /// etcd already holds another peer CA than the one this member created.
    #[error("etcd holds another peer CA than the one this member created")]
    PeerCaConflict,
    /// etcd is not ready yet.
    #[error("etcd is not ready yet")]
    NotReady,
    /// etcd 3.4 allows one learner at a time, and one is still waiting for promotion.
    #[error("a learner ({0}) is still waiting for promotion; add the next member after it")]
    LearnerPending(String),
    /// Removing this member would leave the cluster without etcd.
    #[error("refusing to remove {0}: it is the cluster's last etcd voter")]
    LastMember(String),
    /// A membership change did not complete in time; it may yet apply, so callers look again.
    #[error("etcd did not complete {0} in time")]
    TimedOut(&'static str),
    /// etcd lists a member whose peer URL cannot be handed to a new member.
    #[error("etcd lists member {name:?} at {url:?}, which is not an https://host:port URL Polis can pass on")]
    BadPeer {
        /// The member's name.
        name: String,
        /// Its peer URL.
        url: String,
    },
    /// etcd closed a watch.
    #[error("etcd closed the watch on {0}")]
    WatchClosed(String),
    /// A value every running cluster holds is absent.
    #[error("etcd holds no {0}")]
    Missing(String),
    /// A key read back in the same transaction that found it was gone.
    #[error("etcd key {0} vanished during a transaction")]
    Vanished(String),
    /// The member's peer certificate is due, and the member has no copy of the peer CA to
    /// renew it with (a member keeps one once its etcd is ready).
    #[error("the etcd peer certificate {certificate} is due for renewal, but there is no copy of the peer CA at {ca} to renew it with")]
    NoLocalPeerCa {
        /// The certificate file.
        certificate: String,
        /// Where the CA copy would be.
        ca: String,
    },
    /// The client connection could not be set up.
    #[error("cannot connect to etcd at {path}: {reason}")]
    Connect {
        /// The socket.
        path: String,
        /// Why.
        reason: String,
    },
}

/// What the node's etcd member is called and where it listens.
#[derive(Clone, Debug)]
pub struct Member {
    /// The member name: the node ID.
    pub name: String,
    /// The host other members reach it by: the node's external address (a loopback address in
    /// tests).
    pub advertise_host: String,
    /// Where it listens for peers.
    pub peer_listen: SocketAddr,
}

/// How this member comes into being the first time it starts (later starts reuse its data).
#[derive(Clone, Debug)]
pub enum Mode {
    /// The first member of a new cluster; it creates the peer CA.
    Bootstrap {
        /// How long its peer certificate is valid (the cluster's node-certificate lifetime).
        peer_lifetime: std::time::Duration,
    },
    /// A member that has started before: its data directory must exist.
    Restart,
    /// A member the cluster has added as a learner (see `AddLearner`), with the peer PKI the
    /// cluster issued for it.
    Join {
        /// Every member, this one included.
        peers: Vec<Peer>,
        /// The peer CA certificate (DER).
        ca: Vec<u8>,
        /// This member's peer certificate (DER).
        certificate: Vec<u8>,
        /// This member's peer key (PKCS#8 DER).
        key: Vec<u8>,
        /// The current peer CRL (DER).
        crl: Vec<u8>,
    },
}

impl Member {
    /// The URL other members reach this one at.
    pub fn peer_url(&self) -> String {
        peer_url(&self.advertise_host, self.peer_listen.port())
    }

    /// This member as a peer of others.
    pub fn peer(&self) -> Peer {
        Peer {
            name: self.name.clone(),
            host: self.advertise_host.clone(),
            port: i32::from(self.peer_listen.port()),
        }
    }
}

/// The etcd command line for `member`: with `join` unset, the first member of a new cluster;
/// with `join` set (every member), a learner joining an existing one. Restarting
/// from a data directory, etcd ignores both.
pub fn command(root: &NodeRoot, member: &Member, join: Option<&[Peer]>) -> Command {
    let pki = root.etcd_peer_pki();
    let socket = format!("unix://{SOCKET_NAME}:0");
    let mut cmd = Command::new("etcd");
    cmd.current_dir(root.consensus())
        .arg("--name")
        .arg(&member.name)
        .arg("--data-dir")
        .arg(root.etcd_data())
        .arg("--listen-client-urls")
        .arg(&socket)
        .arg("--advertise-client-urls")
        .arg(&socket)
        .arg("--listen-peer-urls")
        .arg(format!("https://{}", member.peer_listen))
        .arg("--initial-advertise-peer-urls")
        .arg(member.peer_url())
        .arg("--initial-cluster")
        .arg(match join {
            Some(peers) => initial_cluster(peers),
            None => initial_cluster(&[member.peer()]),
        })
        .arg("--initial-cluster-state")
        .arg(if join.is_some() { "existing" } else { "new" })
        .arg("--peer-cert-file")
        .arg(pki.join(PEER_CERTIFICATE_FILE))
        .arg("--peer-key-file")
        .arg(pki.join("key.pem"))
        .arg("--peer-trusted-ca-file")
        .arg(pki.join("ca.pem"))
        .arg("--peer-client-cert-auth")
        .arg("--peer-crl-file")
        .arg(root.etcd_peer_crl())
        .args(["--logger", "zap", "--log-outputs", "stderr"]);
    cmd
}

/// The socket file etcd creates.
fn socket_path(root: &NodeRoot) -> std::path::PathBuf {
    root.consensus().join(format!("{SOCKET_NAME}:0"))
}

/// Remove the socket a killed etcd left behind, which would stop the next one from listening.
pub fn remove_stale_socket(root: &NodeRoot) -> Result<(), FsError> {
    fsutil::remove_if_present(&socket_path(root), "remove stale socket").map(drop)
}

/// A client over the local socket.
pub async fn connect(root: &NodeRoot) -> Result<Client, ConsensusError> {
    let path = socket_path(root);
    let display = path.display().to_string();
    let connect_err = |reason: String| ConsensusError::Connect {
        path: display.clone(),
        reason,
    };
    // The URI is a placeholder: the connector below dials the socket.
    let channel = Endpoint::try_from("http://[::1]:2379")
        .map_err(|e| connect_err(e.to_string()))?
        .connect_with_connector(tower::service_fn(move |_| {
            let path = path.clone();
            async move {
                tokio::net::UnixStream::connect(path)
                    .await
                    .map(TokioIo::new)
            }
        }))
        .await
        .map_err(|e| connect_err(e.to_string()))?;
    Ok(Client::from_channel(etcd_client::Channel::Tonic(channel), None).await?)
}
