//! Reaching a Curator from a node: every address of every Curator of a cluster directory (its
//! consensus members) is tried in turn (the reference tried only the first), pinning the cluster
//! CA, refusing what the directory's CRL revokes and any server certificate without the Curator
//! mark, and presenting the identity the call needs (ephemeral from the node key or join key, or
//! the node certificate). A directory whose CRL went stale (the node was off past its
//! nextUpdate) is not used as it is, nor is its CRL ignored: the current CRL is asked of the
//! Curators first and checked against the CA, which signed it.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};

use tonic::transport::Channel;

use crate::curator::CURATOR_PORT;
use crate::grpc::channel;
use crate::pki::{read_crl, unix_now, verify_crl};
use crate::proto::common::ClusterDirectory;
use crate::proto::curator::curator_local_client::CuratorLocalClient;
use crate::proto::curator::GetCaCertificateRequest;
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
    /// The directory's CRL is stale, and no Curator gave a current one of the CA; each failure
    /// is listed.
    #[error("the cluster directory's CRL is stale, and no Curator gave a current one: {0}")]
    NoCurrentCrl(String),
    /// The client's TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// A channel to the first Curator of `directory` that completes a handshake, trusting only the
/// cluster CA `ca` with the directory's CRL (or, if that is stale, the current one a Curator
/// hands over), and presenting what `identity` builds (a fresh one per attempt, as rustls
/// consumes it). Nodes the directory does not mark as Curators are never dialled.
pub async fn connect(
    directory: &ClusterDirectory,
    ca: &[u8],
    identity: impl Fn() -> Result<Identity, TlsError>,
) -> Result<Channel, ReachError> {
    let mut crl = directory.crl.clone();
    if !crl.is_empty() && read_crl(&crl).map_or(true, |held| held.stale(unix_now())) {
        crl = current_crl(directory, ca, &identity).await?;
    }
    let trust = Trust {
        ca: ca.to_vec(),
        crls: (!crl.is_empty()).then_some(crl).into_iter().collect(),
    };
    first_answer(
        directory,
        &trust,
        &identity,
        |channel| async move { Ok(channel) },
        ReachError::Unreachable,
    )
    .await
}

/// The cluster CA's current CRL, from the first Curator of `directory` that hands over one the
/// CA signed, current and no older than the directory's. Asked without the stale CRL, which
/// would refuse every server; the CRL checks itself, so who serves it does not matter.
async fn current_crl(
    directory: &ClusterDirectory,
    ca: &[u8],
    identity: &impl Fn() -> Result<Identity, TlsError>,
) -> Result<Vec<u8>, ReachError> {
    let held = read_crl(&directory.crl).map_or(0, |held| held.number);
    let pinned = Trust::pinned(ca.to_vec());
    let ask = |channel| async move {
        let answer = CuratorLocalClient::new(channel)
            .get_ca_certificate(GetCaCertificateRequest {})
            .await
            .map_err(|status| format!("asking for the CRL: {}", status.message()))?
            .into_inner();
        let current = verify_crl(ca, &answer.crl, unix_now())
            .map_err(|e| format!("the CRL handed over: {e}"))?;
        if current.number < held {
            return Err(format!(
                "the CRL handed over is number {}, older than the held number {held}",
                current.number
            ));
        }
        Ok(answer.crl)
    };
    first_answer(directory, &pinned, identity, ask, ReachError::NoCurrentCrl).await
}

/// What `ask` answers of the first Curator of `directory` to complete a handshake (trusting
/// `trust`) and answer; if every one failed, `failed` of their failures.
async fn first_answer<T, F>(
    directory: &ClusterDirectory,
    trust: &Trust,
    identity: &impl Fn() -> Result<Identity, TlsError>,
    ask: impl Fn(Channel) -> F,
    failed: fn(String) -> ReachError,
) -> Result<T, ReachError>
where
    F: Future<Output = Result<T, String>>,
{
    let mut failures = Vec::new();
    for node in directory.nodes.iter().filter(|n| n.curator) {
        for address in &node.addresses {
            let Ok(ip) = address.host.parse::<IpAddr>() else {
                failures.push(format!("{} at {:?}: not an address", node.id, address.host));
                continue;
            };
            let config = curator_client_config(Some(identity()?), trust)?;
            let answer = match channel(SocketAddr::new(ip, CURATOR_PORT), &node.id, config).await {
                Ok(channel) => ask(channel).await,
                Err(e) => Err(e.to_string()),
            };
            match answer {
                Ok(answer) => return Ok(answer),
                Err(e) => failures.push(e),
            }
        }
    }
    match failures.is_empty() {
        true => Err(ReachError::EmptyDirectory),
        false => Err(failed(failures.join("; "))),
    }
}
