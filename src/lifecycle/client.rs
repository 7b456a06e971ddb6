//! Reaching a Curator from a node: every address of every Curator of a cluster directory (its
//! consensus members) is tried in turn (the reference tried only the first), pinning the cluster
//! CA, refusing what the directory's CRL revokes and any server certificate without the Curator
//! mark, and presenting the identity the call needs (ephemeral from the node key or join key, or
//! the node certificate).

use std::net::{IpAddr, SocketAddr};

use tonic::transport::Channel;

use crate::curator::CURATOR_PORT;
use crate::grpc::channel;
use crate::proto::common::ClusterDirectory;
use crate::tls::{curator_client_config, Identity, TlsError, Trust};

/// Why no Curator could be reached.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    /// The directory names no Curator (consensus member) with an address.
    #[error("the cluster directory lists no Curator (consensus member) with an address")]
    EmptyDirectory,
    /// Every Curator was tried; each failure is listed.
    #[error("no Curator reachable: {0}")]
    Unreachable(String),
    /// The client's TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A channel to the first Curator of `directory` that completes a handshake, trusting only the
/// cluster CA `ca` with the directory's CRL, and presenting what `identity` builds (a fresh one
/// per attempt, as rustls consumes it). Nodes the directory does not mark as Curators are never
/// dialled.
pub async fn connect(
    directory: &ClusterDirectory,
    ca: &[u8],
    identity: impl Fn() -> Result<Identity, TlsError>,
) -> Result<Channel, ReachError> {
    let trust = Trust {
        ca: ca.to_vec(),
        crls: (!directory.crl.is_empty())
            .then(|| directory.crl.clone())
            .into_iter()
            .collect(),
    };
    let mut failures = Vec::new();
    for node in directory.nodes.iter().filter(|n| n.curator) {
        for address in &node.addresses {
            let Ok(ip) = address.host.parse::<IpAddr>() else {
                failures.push(format!("{} at {:?}: not an address", node.id, address.host));
                continue;
            };
            let config = curator_client_config(Some(identity()?), &trust)?;
            match channel(SocketAddr::new(ip, CURATOR_PORT), &node.id, config).await {
                Ok(channel) => return Ok(channel),
                Err(e) => failures.push(e.to_string()),
            }
        }
    }
    if failures.is_empty() {
        return Err(ReachError::EmptyDirectory);
    }
    Err(ReachError::Unreachable(failures.join("; ")))
}
