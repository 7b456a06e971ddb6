//! Node identity: Ed25519 keys and the node ID derived from the public key.

use ed25519_dalek::{SigningKey, VerifyingKey};
use ring::rand::{SecureRandom, SystemRandom};

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

/// The node ID: `metropolis-` and the hex of the public key's first 16 bytes.
pub fn node_id(public: &VerifyingKey) -> String {
    format!("metropolis-{}", hex(&public.as_bytes()[..16]))
}

/// Lowercase hex, as node IDs, etcd keys and logs spell binary values.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The node ID of the key a certificate (DER) certifies.
pub fn certificate_node_id(der: &[u8]) -> Result<String, PkiError> {
    let (_, certificate) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    let key: [u8; 32] = certificate
        .public_key()
        .subject_public_key
        .data
        .as_ref()
        .try_into()
        .map_err(|_| PkiError::BadCertificate("not an Ed25519 key".into()))?;
    let key =
        VerifyingKey::from_bytes(&key).map_err(|e| PkiError::BadCertificate(e.to_string()))?;
    Ok(node_id(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

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
