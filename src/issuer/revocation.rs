//! Revocation, the same for both CAs (the cluster CA's node certificates, the etcd peer CA's
//! member certificates): serials listed under `revoked/` in the CA's etcd namespace, and a CRL
//! that lists them all, written in the same transaction.

use crate::consensus::{ConsensusError, NamespacedKv};
use crate::pki::{hex, CertificateAuthority, PkiError};

/// Where revoked serials are listed, under the CA's namespace.
const REVOKED: &str = "revoked/";

/// Why a certificate could not be revoked.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    /// etcd failed.
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    /// The CRL could not be signed, or the certificate does not parse.
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// Revoke `serial`: record it and store at `crl_key` a CRL of `ca` listing every revoked serial.
/// Answers the CRL now in force. Concurrent revocations cannot drop each other's serial (each
/// write is guarded by the CRL's revision, and retried on conflict); revoking a serial again
/// changes nothing.
pub async fn revoke(
    kv: &mut NamespacedKv,
    ca: &CertificateAuthority,
    crl_key: &str,
    serial: &[u8],
) -> Result<Vec<u8>, RevocationError> {
    let entry = format!("{REVOKED}{}", hex(serial));
    loop {
        let (current, revision) = kv.get_versioned(crl_key).await?;
        let mut revoked: Vec<Vec<u8>> = kv
            .list(REVOKED)
            .await?
            .into_iter()
            .map(|(_, v)| v)
            .collect();
        match (current, revoked.iter().any(|s| s == serial)) {
            (Some(crl), true) => return Ok(crl),
            (_, false) => revoked.push(serial.to_vec()),
            // Listed, but its CRL is missing: write it.
            (None, true) => {}
        }
        // The CRL number grows with every revocation (revocations are never undone).
        let crl = ca.crl(revoked.len() as u64 + 1, &revoked)?;
        if kv
            .swap(crl_key, revision, &[], &[(&entry, serial), (crl_key, &crl)])
            .await?
        {
            return Ok(crl);
        }
    }
}
