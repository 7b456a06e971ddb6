//! A consensus member on a cold start asks its peers for their shares of its CUK: every other
//! consensus member of its directory at once, each as its join key, and combines what arrives.

use std::net::{IpAddr, SocketAddr};

use ed25519_dalek::SigningKey;

use crate::grpc::channel;
use crate::proto::common::ClusterDirectory;
use crate::proto::curator::cold_start_client::ColdStartClient;
use crate::proto::curator::GetShareRequest;
use crate::proto::private::Share;
use crate::quorum::{combine, threshold, QuorumError, COLD_START_PORT};
use crate::storage::UnlockKey;
use crate::tls::{first_use_client_config, Identity};

/// This node's CUK, recovered from the shares that the consensus members of `directory` (but
/// the one at `own_address`) hold for `join_key`, and checked against `digest`.
pub async fn gather(
    directory: &ClusterDirectory,
    own_address: IpAddr,
    join_key: &SigningKey,
    digest: &[u8],
) -> Result<UnlockKey, QuorumError> {
    let peers: Vec<(String, IpAddr)> = directory
        .nodes
        .iter()
        .filter(|n| n.curator)
        .filter_map(|n| {
            let ip = n.addresses.first()?.host.parse().ok()?;
            (ip != own_address).then(|| (n.id.clone(), ip))
        })
        .collect();
    if peers.is_empty() {
        return Err(QuorumError::NoPeers);
    }
    // Each ask is bounded: connecting by the channel's connect timeout, the call by its deadline.
    let asks = peers
        .iter()
        .map(|(id, ip)| async move { (id, ask(id, *ip, join_key).await) });
    let mut shares = Vec::new();
    let mut failures = Vec::new();
    for (id, answer) in futures::future::join_all(asks).await {
        match answer {
            Ok(mut share) if share.owner_join_key == join_key.verifying_key().as_bytes() => {
                share.holder = id.clone();
                shares.push(share)
            }
            Ok(_) => failures.push(format!("{id}: a share for another key")),
            Err(e) => failures.push(format!("{id}: {e}")),
        }
    }
    match combine(&shares, digest) {
        Err(QuorumError::NotEnough { have, need, .. }) => Err(QuorumError::NotEnough {
            have,
            // With no share at all, the threshold is the directory's to tell.
            need: match have {
                0 => threshold(peers.len() + 1) as usize,
                _ => need,
            },
            failures: failures.join("; "),
        }),
        combined => combined,
    }
}

/// The share that node `id` at `ip` holds for `join_key`.
async fn ask(id: &str, ip: IpAddr, join_key: &SigningKey) -> Result<Share, String> {
    // The answer is checked against the CUK's digest, so the server's identity does not matter.
    let (config, _) =
        first_use_client_config(Identity::ephemeral(join_key).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
    let channel = channel(SocketAddr::new(ip, COLD_START_PORT), id, config)
        .await
        .map_err(|e| e.to_string())?;
    let response = ColdStartClient::new(channel)
        .get_share(GetShareRequest {})
        .await
        .map_err(|status| format!("{:?}: {}", status.code(), status.message()))?;
    response
        .into_inner()
        .share
        .ok_or_else(|| "an empty answer".to_owned())
}
