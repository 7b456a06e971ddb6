//! Node identity: Ed25519 keys and the node ID derived from the public key.

use ed25519_dalek::{SigningKey, VerifyingKey};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, UnixTime};
use zeroize::Zeroizing;

use crate::pki::PkiError;

/// A fresh Ed25519 key (a node key or a join key).
pub fn generate_key() -> Result<SigningKey, PkiError> {
    let mut seed = [0u8; 32];
    SystemRandom::new()
        .fill(&mut seed)
        .map_err(|_| PkiError::Rng)?;
    let key = SigningKey::from_bytes(&seed);
    seed.fill(0);
    Ok(key)
}

/// `key` as PKCS#8 DER, the form etcd, rustls and rcgen read it in; wiped when dropped.
pub fn pkcs8(key: &SigningKey) -> Result<Zeroizing<Vec<u8>>, PkiError> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    let document = key
        .to_pkcs8_der()
        .map_err(|e| PkiError::BadKey(e.to_string()))?;
    Ok(Zeroizing::new(document.as_bytes().to_vec()))
}

/// The node ID: `metropolis-` and the hex of the public key's first 16 bytes.
pub fn node_id(public: &VerifyingKey) -> String {
    format!("metropolis-{}", hex(&public.as_bytes()[..16]))
}

/// Lowercase hex, as node IDs, etcd keys and logs spell binary values.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A certificate's fingerprint: the SHA-256 of its DER, in lowercase hex. An owner meeting a
/// cluster confirms its CA by this before trusting it.
pub fn fingerprint(der: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, der).as_ref())
}

/// The node ID of the key a certificate (DER) certifies.
pub fn certificate_node_id(der: &[u8]) -> Result<String, PkiError> {
    Ok(node_id(&certificate_key(der)?))
}

/// The Ed25519 key a certificate (DER) certifies: a renewal certifies the same one.
pub fn certificate_key(der: &[u8]) -> Result<VerifyingKey, PkiError> {
    let key: [u8; 32] = parse(der)?
        .public_key()
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| PkiError::BadCertificate("not an Ed25519 key".into()))?;
    VerifyingKey::from_bytes(&key).map_err(|e| PkiError::BadCertificate(e.to_string()))
}

/// When `certificate` (DER) expires: its notAfter, in seconds since the Unix epoch.
pub fn not_after(certificate: &[u8]) -> Result<i64, PkiError> {
    Ok(parse(certificate)?.validity().not_after.timestamp())
}

/// Now, as certificates, CRLs and records keep times: seconds since the Unix epoch (0 before it).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
}

/// The instant of a Unix time `at` (seconds), or now if it has passed: for sleeping until a
/// certificate is due.
pub fn instant_at(at: i64) -> tokio::time::Instant {
    let wait = at.saturating_sub(unix_now()).max(0);
    tokio::time::Instant::now() + std::time::Duration::from_secs(wait.unsigned_abs())
}

/// When the holder of `certificate` (DER, issued by the cluster CA) should renew it: two thirds
/// into its lifetime, which runs from its issue (an hour after its notBefore, which is backdated
/// for clocks that run behind) to its notAfter. In seconds since the Unix epoch.
pub fn renew_at(certificate: &[u8]) -> Result<i64, PkiError> {
    let (issued, not_after) = issued_and_not_after(certificate)?;
    Ok(issued + (not_after - issued) * 2 / 3)
}

/// How long `certificate` (DER, issued by a cluster CA) was issued to be valid: from its issue
/// to its notAfter. A holder that renews by itself asks for as long again.
pub fn lifetime(certificate: &[u8]) -> Result<std::time::Duration, PkiError> {
    let (issued, not_after) = issued_and_not_after(certificate)?;
    let seconds = u64::try_from(not_after - issued)
        .map_err(|_| PkiError::BadCertificate("it expires before its issue".into()))?;
    Ok(std::time::Duration::from_secs(seconds))
}

/// When `certificate` was issued (an hour after its notBefore, which is backdated for clocks
/// that run behind) and its notAfter, in seconds since the Unix epoch.
fn issued_and_not_after(certificate: &[u8]) -> Result<(i64, i64), PkiError> {
    let parsed = parse(certificate)?;
    let validity = parsed.validity();
    let issued = validity.not_before.timestamp() + super::ca::BACKDATE.whole_seconds();
    Ok((issued, validity.not_after.timestamp()))
}

/// Whether the holder of `certificate` (DER) should renew it now ([`renew_at`] has come, or it
/// does not parse).
pub fn renewal_due(certificate: &[u8]) -> bool {
    renew_at(certificate).map_or(true, |at| at <= unix_now())
}

/// Whether `certificate` (DER) carries the Curator mark ([`crate::pki::CURATOR_URI`]). Only
/// meaningful for a certificate already verified to chain to the cluster CA.
pub fn is_curator_certificate(certificate: &[u8]) -> Result<bool, PkiError> {
    use x509_parser::extensions::GeneralName;
    let parsed = parse(certificate)?;
    let names = parsed
        .subject_alternative_name()
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    Ok(names.is_some_and(|names| {
        names
            .value
            .general_names
            .iter()
            .any(|n| matches!(n, GeneralName::URI(uri) if *uri == crate::pki::CURATOR_URI))
    }))
}

/// A certificate (DER), parsed.
fn parse(der: &[u8]) -> Result<x509_parser::certificate::X509Certificate<'_>, PkiError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    Ok(certificate)
}

/// Check that `certificate` chains to `anchor` (a CA, or the certificate itself when it is
/// self-signed) with Ed25519 signatures and is valid at `now` for client authentication; answers
/// it parsed, for further checks.
pub fn verify_client_certificate<'a>(
    anchor: &CertificateDer<'_>,
    certificate: &'a CertificateDer<'a>,
    now: UnixTime,
) -> Result<webpki::EndEntityCert<'a>, webpki::Error> {
    let anchor = webpki::anchor_from_trusted_cert(anchor)?;
    let cert = webpki::EndEntityCert::try_from(certificate)?;
    cert.verify_for_usage(
        &[webpki::ring::ED25519],
        &[anchor],
        &[],
        now,
        webpki::KeyUsage::client_auth(),
        None,
        None,
    )?;
    Ok(cert)
}

/// Check that `certificate` (DER) is a node certificate that `ca` issued for `key`: it chains to
/// the CA, is valid now for client authentication, certifies exactly this key, and names the
/// node ID of that key. A node checks what CommitNode hands it, so that a Curator cannot give it
/// someone else's identity.
pub fn verify_node_certificate(
    ca: &[u8],
    certificate: &[u8],
    key: &VerifyingKey,
) -> Result<(), PkiError> {
    let bad = |reason: String| PkiError::BadCertificate(reason);
    let (ca, der) = (CertificateDer::from(ca), CertificateDer::from(certificate));
    let cert = verify_client_certificate(&ca, &der, UnixTime::now())
        .map_err(|e| bad(format!("not issued by the cluster CA: {e}")))?;
    if certificate_key(certificate)? != *key {
        return Err(bad("it certifies another key than this node's".into()));
    }
    let id = node_id(key);
    let name = rustls_pki_types::ServerName::try_from(id.as_str())
        .map_err(|e| bad(format!("node ID {id}: {e}")))?;
    cert.verify_is_valid_for_subject_name(&name)
        .map_err(|_| bad(format!("it does not name node {id}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_certificate_is_checked_for_its_ca_key_and_name() {
        use crate::pki::{CertificateAuthority, Template};
        let (ca, other_ca) = (
            CertificateAuthority::new("cluster").unwrap(),
            CertificateAuthority::new("other").unwrap(),
        );
        let (key, other_key) = (generate_key().unwrap(), generate_key().unwrap());
        let public = key.verifying_key();
        let for_node = |ca: &CertificateAuthority, id: String| {
            ca.issue(&Template::Node { node_id: id }, &public)
                .unwrap()
                .der
        };
        let good = for_node(&ca, node_id(&public));
        verify_node_certificate(ca.certificate(), &good, &public).unwrap();
        let refused = [
            verify_node_certificate(other_ca.certificate(), &good, &public),
            verify_node_certificate(ca.certificate(), &good, &other_key.verifying_key()),
            verify_node_certificate(
                ca.certificate(),
                &for_node(&ca, node_id(&other_key.verifying_key())),
                &public,
            ),
            verify_node_certificate(
                ca.certificate(),
                &for_node(&other_ca, node_id(&public)),
                &public,
            ),
        ];
        for (i, result) in refused.into_iter().enumerate() {
            assert!(
                matches!(result, Err(PkiError::BadCertificate(_))),
                "case {i}: {result:?}"
            );
        }
    }

    #[test]
    fn a_certificate_names_the_node_of_its_key() {
        let key = generate_key().unwrap();
        let der = crate::pki::self_signed_client(&key).unwrap();
        assert_eq!(
            certificate_node_id(&der).unwrap(),
            node_id(&key.verifying_key())
        );
        assert!(matches!(
            certificate_node_id(&der[..der.len() / 2]),
            Err(PkiError::BadCertificate(_))
        ));
    }

    #[test]
    fn node_id_is_the_hex_of_the_first_half_of_the_public_key() {
        let key = SigningKey::from_bytes(&[7; 32]);
        let id = node_id(&key.verifying_key());
        let hex: String = key.verifying_key().as_bytes()[..16]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(id, format!("metropolis-{hex}"));
        assert_eq!(id.len(), "metropolis-".len() + 32);
        assert_ne!(node_id(&generate_key().unwrap().verifying_key()), id);
    }
}
