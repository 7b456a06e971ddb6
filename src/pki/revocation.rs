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

/// The serial number of a DER certificate, as [`revoke`] takes it.
pub fn serial_of(der: &[u8]) -> Result<Vec<u8>, PkiError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    Ok(certificate.raw_serial().to_vec())
}

/// The serial numbers a CRL (DER) lists, as [`serial_of`] spells them.
pub fn revoked_serials(crl: &[u8]) -> Result<Vec<Vec<u8>>, PkiError> {
    use x509_parser::prelude::FromDer;
    let (_, list) = x509_parser::revocation_list::CertificateRevocationList::from_der(crl)
        .map_err(|e| PkiError::BadCertificate(format!("CRL: {e}")))?;
    Ok(list
        .iter_revoked_certificates()
        .map(|r| r.raw_serial().to_vec())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{generate_key, Template};

    #[test]
    fn the_serial_of_an_issued_certificate_is_the_one_it_was_issued_with() {
        let ca = CertificateAuthority::new("test CA").unwrap();
        let issued = ca
            .issue(
                &Template::Node {
                    node_id: "metropolis-x".into(),
                },
                &generate_key().unwrap().verifying_key(),
            )
            .unwrap();
        assert_eq!(serial_of(&issued.der).unwrap(), issued.serial);
        assert!(serial_of(b"not a certificate").is_err());
    }
}
