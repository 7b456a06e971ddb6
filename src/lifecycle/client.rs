//! Reaching a Curator from a node: every address of every Curator of a cluster directory (its
//! consensus members) is tried in turn (the reference tried only the first), pinning the cluster
//! CA, refusing what the directory's CRL revokes and any server certificate without the Curator
//! mark, and presenting the identity the call needs (ephemeral from the node key or join key, or
//! the node certificate). A directory whose CRL went stale (the node was off past its
//! nextUpdate) is not used as it is, nor is its CRL ignored: the current CRL is asked of the
//! Curators first, checked against the CA, which signed it, and the newest taken.

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
/// cluster CA `ca` with the directory's CRL (or, if that is stale, the newest current one the
/// Curators hand over), and presenting what `identity` builds (a fresh one per attempt, as rustls
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
    let connected = |channel| async move { Ok(channel) };
    let (mut channels, failures) =
        ask_curators(directory, &trust, &identity, connected, Until::First).await?;
    channels
        .pop()
        .ok_or_else(|| unanswered(failures, ReachError::Unreachable))
}

/// The cluster CA's current CRL: the newest that the Curators of `directory` hand over, of
/// those the CA signed, current and no older than the directory's. Asked of every Curator that
/// answers, without the stale CRL (which would refuse every server): the CRL checks itself, and
/// the newest wins, so a Curator revoked since (which could still hand over a current list from
/// before its revocation) is outvoted by any other that answers.
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
        Ok((current.number, answer.crl))
    };
    let (crls, failures) = ask_curators(directory, &pinned, identity, ask, Until::All).await?;
    crls.into_iter()
        .max_by_key(|(number, _)| *number)
        .map(|(_, crl)| crl)
        .ok_or_else(|| unanswered(failures, ReachError::NoCurrentCrl))
}

/// How many Curators [`ask_curators`] asks.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// Until one answers.
    First,
    /// Every one.
    All,
}

/// What `ask` answers of the Curators of `directory` that complete a handshake (trusting
/// `trust`), in turn, as `until` says; with the failures of the others.
async fn ask_curators<T, F>(
    directory: &ClusterDirectory,
    trust: &Trust,
    identity: &impl Fn() -> Result<Identity, TlsError>,
    ask: impl Fn(Channel) -> F,
    until: Until,
) -> Result<(Vec<T>, Vec<String>), ReachError>
where
    F: Future<Output = Result<T, String>>,
{
    let (mut answers, mut failures) = (Vec::new(), Vec::new());
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
                Ok(answer) => answers.push(answer),
                Err(e) => failures.push(e),
            }
            if until == Until::First && !answers.is_empty() {
                return Ok((answers, failures));
            }
        }
    }
    Ok((answers, failures))
}

/// Whether `directory` names a Curator with an address: one that [`connect`] would dial.
pub(super) fn names_a_curator(directory: &ClusterDirectory) -> bool {
    directory
        .nodes
        .iter()
        .any(|n| n.curator && !n.addresses.is_empty())
}

/// The error for no answer: the directory named no Curator to ask, or `failed` of every
/// failure.
fn unanswered(failures: Vec<String>, failed: fn(String) -> ReachError) -> ReachError {
    match failures.is_empty() {
        true => ReachError::EmptyDirectory,
        false => failed(failures.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::common::{cluster_directory::Node, Address};

    #[test]
    fn only_a_curator_with_an_address_is_one_to_ask() {
        let node = |curator: bool, hosts: &[&str]| Node {
            id: "metropolis-a".into(),
            addresses: hosts
                .iter()
                .map(|h| Address { host: (*h).into() })
                .collect(),
            curator,
        };
        let directory = |nodes: Vec<Node>| ClusterDirectory {
            nodes,
            crl: Vec::new(),
        };
        assert!(!names_a_curator(&directory(vec![])));
        assert!(!names_a_curator(&directory(vec![node(true, &[])])));
        assert!(!names_a_curator(&directory(vec![node(
            false,
            &["198.18.0.3"]
        )])));
        assert!(names_a_curator(&directory(vec![
            node(true, &[]),
            node(true, &["198.18.0.3"])
        ])));
    }
}
