//! Who is calling: the key and certificate the TLS acceptor verified, checked against what the
//! records hold (in constant time where a stored secret or credential is compared), and the
//! shape checks of what callers send.

use ed25519_dalek::VerifyingKey;
use subtle::ConstantTimeEq;
use tonic::Request;

use super::Services;
use crate::curator::records::{self, OWNER_CERTIFICATE};
use crate::curator::CuratorError;
use crate::grpc::Peer;
use crate::pki::node_id;
use crate::proto::common::NodeState;
use crate::proto::private::Node;

impl Services {
    /// The caller must hold the owner certificate that Escrow issued (`presented`, from its TLS
    /// handshake). Checked for every Management call by [`crate::curator::owner_only::OwnerOnly`].
    pub(in crate::curator) async fn check_owner(
        &self,
        presented: Option<&[u8]>,
    ) -> Result<(), CuratorError> {
        let presented = presented.ok_or(CuratorError::Unauthenticated)?;
        if matches_stored(self.remembered_owner(), presented) {
            return Ok(());
        }
        // Perhaps renewed since it was read (by this Curator or another).
        let stored = self.records.clone().kv().get(OWNER_CERTIFICATE).await?;
        self.remember_owner(stored.clone());
        match matches_stored(stored, presented) {
            true => Ok(()),
            false => Err(CuratorError::NotOwner),
        }
    }

    /// The caller must present the node certificate recorded for its key: answers its record.
    pub(super) async fn node<T>(&self, request: &Request<T>) -> Result<Node, CuratorError> {
        let presented = caller_certificate(request)?.to_vec();
        let id = node_id(&caller_key(request)?);
        let node = records::existing(self.records.clone().get(&id).await?, &id)?;
        if node.node_certificate.is_empty() || node.node_certificate != presented {
            return Err(CuratorError::Unauthenticated);
        }
        if node.fsm_state == NodeState::Decommissioned as i32 {
            return Err(CuratorError::Decommissioned(id));
        }
        Ok(node)
    }
}

/// Whether `presented` equals the value stored (none stored: never), compared in constant time:
/// the one comparison of a caller's ticket, key or certificate with the cluster's.
pub(super) fn matches_stored(stored: Option<Vec<u8>>, presented: &[u8]) -> bool {
    stored.is_some_and(|stored| bool::from(stored.as_slice().ct_eq(presented)))
}

/// The caller's certificate, as its TLS handshake presented it.
pub(super) fn caller_certificate<T>(request: &Request<T>) -> Result<&[u8], CuratorError> {
    request
        .extensions()
        .get::<Peer>()
        .and_then(|p| p.certificate.as_deref())
        .ok_or(CuratorError::Unauthenticated)
}

/// The key the caller's certificate proves.
pub(super) fn caller_key<T>(request: &Request<T>) -> Result<VerifyingKey, CuratorError> {
    let key = request
        .extensions()
        .get::<Peer>()
        .and_then(Peer::public_key)
        .ok_or(CuratorError::Unauthenticated)?;
    VerifyingKey::from_bytes(&key).map_err(|_| CuratorError::Unauthenticated)
}

/// `bytes` as an Ed25519 public key, or why not (naming `field`).
pub(super) fn verifying_key(
    bytes: &[u8],
    field: &'static str,
) -> Result<VerifyingKey, CuratorError> {
    let invalid = |reason: String| CuratorError::Invalid { field, reason };
    let array: [u8; 32] = bytes
        .try_into()
        .map_err(|_| invalid(format!("an Ed25519 key is 32 bytes, got {}", bytes.len())))?;
    VerifyingKey::from_bytes(&array).map_err(|e| invalid(e.to_string()))
}

/// `bytes` must be 32 bytes long (a key or a secret).
pub(super) fn check_len(bytes: &[u8], field: &'static str) -> Result<(), CuratorError> {
    if bytes.len() != 32 {
        return Err(CuratorError::Invalid {
            field,
            reason: format!("must be 32 bytes, got {}", bytes.len()),
        });
    }
    Ok(())
}

/// A node's reported address must be an IP address: it becomes its etcd peer URL and its
/// directory entry, so a name or a URL fragment there would point elsewhere.
pub(super) fn check_address(address: &str, field: &'static str) -> Result<(), CuratorError> {
    address
        .parse::<std::net::IpAddr>()
        .map(drop)
        .map_err(|_| CuratorError::Invalid {
            field,
            reason: format!("{address:?} is not an IP address"),
        })
}
