//! Reaching a Curator from a node: every address of every node of a cluster directory is tried
//! in turn (the reference tried only the first), pinning the cluster CA and presenting the
//! identity the call needs (ephemeral from the node key or join key, or the node certificate).

use std::net::{IpAddr, SocketAddr};

use tonic::transport::Channel;

use crate::curator::CURATOR_PORT;
use crate::grpc::channel;
use crate::proto::common::ClusterDirectory;
use crate::tls::{client_config, Identity, TlsError, Trust};

/// Why no Curator could be reached.
#[derive(Debug, thiserror::Error)]
pub enum ReachError {
    /// The directory names no node with an address.
    #[error("the cluster directory lists no node with an address")]
    EmptyDirectory,
    /// Every Curator was tried; each failure is listed.
    #[error("no Curator reachable: {0}")]
    Unreachable(String),
    /// The client's TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A channel to the first Curator of `directory` that completes a handshake, trusting only
/// `trust` and presenting what `identity` builds (a fresh one per attempt, as rustls consumes it).
pub async fn connect(
    directory: &ClusterDirectory,
    trust: &Trust,
    identity: impl Fn() -> Result<Identity, TlsError>,
) -> Result<Channel, ReachError> {
    let mut failures = Vec::new();
    for node in &directory.nodes {
        for address in &node.addresses {
            let Ok(ip) = address.host.parse::<IpAddr>() else {
                failures.push(format!("{} at {:?}: not an address", node.id, address.host));
                continue;
            };
            let config = client_config(Some(identity()?), trust)?;
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
