//! The cluster's PCR policy, computed in software: what the TPM will check, so that the cluster
//! can approve a PCR 7 value without the node's TPM, and the node can check an approval before
//! it trusts one.
//!
//! Data a node seals is bound by `TPM2_PolicyAuthorize` to the cluster's policy-signing key (a
//! P-256 key in etcd, beside the CA: TPMs do not verify Ed25519). It unseals only in a policy
//! session that has asserted the current PCR 7 (`TPM2_PolicyPCR`) and shown the key's signature
//! over that PolicyPCR digest ‖ SHA-256(node ID). So nothing unseals for a PCR 7 value the
//! cluster did not sign for that node, and the cluster signs only at enrolment (the value the
//! node enrolled with) and when the owner approves a new one.
//!
//! A node whose PCR 7 changed proves who it is with its recovery key, a TPM-resident signing key
//! whose public part its record holds: it signs [`recovery_request`].

use ring::digest::{digest, SHA256};
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};

/// `TPM_CC_PolicyPCR`.
const CC_POLICY_PCR: u32 = 0x0000_017f;
/// `TPM_CC_PolicyAuthorize`.
const CC_POLICY_AUTHORIZE: u32 = 0x0000_016a;
/// `TPM_ALG_SHA256`.
const ALG_SHA256: u16 = 0x000b;
/// The length of a PCR value in the SHA-256 bank, and of a policy digest.
pub const DIGEST_LEN: usize = 32;
/// The length of an uncompressed P-256 point (`04 ‖ x ‖ y`), the form every public key here
/// travels in.
pub const POINT_LEN: usize = 65;
/// The length of a P-256 signature as `r ‖ s`.
pub const SIGNATURE_LEN: usize = 64;
/// What a recovery request signs first, so the key signs nothing else that could pass for one.
const REQUEST_CONTEXT: &[u8] = b"polis pcr approval request";

/// What is wrong with a policy key, an approval or a recovery signature.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// A key that does not parse as a P-256 key.
    #[error("the {0} is not a P-256 key")]
    BadKey(&'static str),
    /// A PCR value of the wrong length.
    #[error("a PCR 7 value is {DIGEST_LEN} bytes, not {0}")]
    BadPcr(usize),
    /// The operating system's random generator failed.
    #[error("the operating system's random generator failed")]
    Rng,
}

/// The PolicyPCR digest of a fresh policy session asserting that PCR 7 (SHA-256 bank) holds
/// `pcr7`: what `TPM2_PolicyGetDigest` answers after `TPM2_PolicyPCR` on a TPM in that state.
pub fn pcr7_policy(pcr7: &[u8]) -> [u8; DIGEST_LEN] {
    // TPML_PCR_SELECTION: one selection, SHA-256, three bytes of bitmap, PCR 7 = bit 7 of byte 0.
    let mut selection = Vec::with_capacity(10);
    selection.extend_from_slice(&1u32.to_be_bytes());
    selection.extend_from_slice(&ALG_SHA256.to_be_bytes());
    selection.extend_from_slice(&[3, 0x80, 0, 0]);
    let pcr_digest = digest(&SHA256, pcr7);
    let mut input = vec![0u8; DIGEST_LEN];
    input.extend_from_slice(&CC_POLICY_PCR.to_be_bytes());
    input.extend_from_slice(&selection);
    input.extend_from_slice(pcr_digest.as_ref());
    sha256(&input)
}

/// The policy reference a node's approvals are made for: approving a value for one node never
/// approves it for another.
pub fn policy_ref(node_id: &str) -> [u8; DIGEST_LEN] {
    sha256(node_id.as_bytes())
}

/// The authorization policy of data sealed for `node_id` under the policy key whose TPM name is
/// `key_name`: `TPM2_PolicyAuthorize` from a fresh session.
pub fn authorized_policy(key_name: &[u8], node_id: &str) -> [u8; DIGEST_LEN] {
    let mut input = vec![0u8; DIGEST_LEN];
    input.extend_from_slice(&CC_POLICY_AUTHORIZE.to_be_bytes());
    input.extend_from_slice(key_name);
    let first = sha256(&input);
    let mut second = first.to_vec();
    second.extend_from_slice(&policy_ref(node_id));
    sha256(&second)
}

/// What the policy key signs to approve `pcr7` for `node_id` (the TPM verifies the signature
/// over this message's SHA-256).
pub fn approval_message(node_id: &str, pcr7: &[u8]) -> Vec<u8> {
    let mut message = pcr7_policy(pcr7).to_vec();
    message.extend_from_slice(&policy_ref(node_id));
    message
}

/// Whether `signature` is `policy_key`'s approval of `pcr7` for `node_id`.
pub fn verify_approval(policy_key: &[u8], node_id: &str, pcr7: &[u8], signature: &[u8]) -> bool {
    verify(policy_key, &approval_message(node_id, pcr7), signature)
}

/// What a node's recovery key signs to ask for `pcr7`'s approval (see `RequestPcrApproval`).
pub fn recovery_request(
    node_id: &str,
    pcr7: &[u8],
    event_log: &[u8],
    requested_at: i64,
) -> Vec<u8> {
    let mut message = REQUEST_CONTEXT.to_vec();
    message.extend_from_slice(node_id.as_bytes());
    message.push(0);
    message.extend_from_slice(pcr7);
    message.extend_from_slice(&sha256(event_log));
    message.extend_from_slice(&requested_at.to_be_bytes());
    message
}

/// Whether `signature` (r ‖ s) is `public`'s (an uncompressed P-256 point) over `message`.
pub fn verify(public: &[u8], message: &[u8], signature: &[u8]) -> bool {
    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, public)
        .verify(message, signature)
        .is_ok()
}

/// Whether `bytes` has the form of an uncompressed P-256 point (whether it is on the curve is
/// found out where it is used).
pub fn is_uncompressed_point(bytes: &[u8]) -> bool {
    bytes.len() == POINT_LEN && bytes[0] == 4
}

/// SHA-256, as every digest here is.
pub fn sha256(data: &[u8]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(digest(&SHA256, data).as_ref());
    out
}

/// The cluster's PCR policy-signing key.
pub struct PolicyKey {
    pair: EcdsaKeyPair,
}

impl PolicyKey {
    /// A new key, as PKCS#8, for the cluster to keep.
    pub fn generate() -> Result<Vec<u8>, PolicyError> {
        EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
            .map(|doc| doc.as_ref().to_vec())
            .map_err(|_| PolicyError::Rng)
    }

    /// The key stored as `pkcs8`.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, PolicyError> {
        EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .map(|pair| PolicyKey { pair })
        .map_err(|_| PolicyError::BadKey("PCR policy key"))
    }

    /// Its public key, an uncompressed P-256 point.
    pub fn public(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Approve `pcr7` for `node_id`: the signature (r ‖ s) that lets the node's TPM unseal where
    /// PCR 7 holds that value.
    pub fn approve(&self, node_id: &str, pcr7: &[u8]) -> Result<Vec<u8>, PolicyError> {
        if pcr7.len() != DIGEST_LEN {
            return Err(PolicyError::BadPcr(pcr7.len()));
        }
        self.pair
            .sign(&SystemRandom::new(), &approval_message(node_id, pcr7))
            .map(|signature| signature.as_ref().to_vec())
            .map_err(|_| PolicyError::Rng)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_approval_holds_for_its_node_and_value_only() {
        let key = PolicyKey::from_pkcs8(&PolicyKey::generate().unwrap()).unwrap();
        let other = PolicyKey::from_pkcs8(&PolicyKey::generate().unwrap()).unwrap();
        let pcr7 = [7u8; DIGEST_LEN];
        let signature = key.approve("node-a", &pcr7).unwrap();
        assert!(verify_approval(&key.public(), "node-a", &pcr7, &signature));
        assert!(!verify_approval(&key.public(), "node-b", &pcr7, &signature));
        assert!(!verify_approval(
            &key.public(),
            "node-a",
            &[8u8; DIGEST_LEN],
            &signature
        ));
        assert!(!verify_approval(
            &other.public(),
            "node-a",
            &pcr7,
            &signature
        ));
        assert!(matches!(
            key.approve("node-a", &[0; 20]),
            Err(PolicyError::BadPcr(20))
        ));
        assert!(PolicyKey::from_pkcs8(b"not a key").is_err());
    }

    #[test]
    fn a_recovery_request_covers_every_field() {
        let base = recovery_request("n", &[1; 32], b"log", 5);
        for changed in [
            recovery_request("m", &[1; 32], b"log", 5),
            recovery_request("n", &[2; 32], b"log", 5),
            recovery_request("n", &[1; 32], b"other log", 5),
            recovery_request("n", &[1; 32], b"log", 6),
        ] {
            assert_ne!(base, changed);
        }
    }
}
