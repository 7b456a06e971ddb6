//! The cluster's PCR policy against real software TPMs: data sealed under `TPM2_PolicyAuthorize`
//! unseals only where PCR 7 holds a value the cluster's policy key approved for this node, and
//! the recovery key signs what a Curator verifies.

mod common;

use common::sealer as tpm;
use polis::pki::hex;
use polis::proto::private::pcr_authority::Approval;
use polis::proto::private::PcrAuthority;
use polis::tpm::policy::{self, PolicyKey};
use polis::tpm::{SealedKind, TpmError};

const KIND: SealedKind = SealedKind::Configuration;
const NODE: &str = "metropolis-00112233445566778899aabbccddeeff";

fn policy_key() -> PolicyKey {
    PolicyKey::from_pkcs8(&PolicyKey::generate().unwrap()).unwrap()
}

/// `key`'s authority for `node`, approving `pcr7` with `signature`.
fn authority(key: &PolicyKey, node: &str, pcr7: &[u8], signature: Vec<u8>) -> PcrAuthority {
    PcrAuthority {
        node_id: node.into(),
        policy_key: key.public(),
        approvals: vec![Approval {
            pcr7: pcr7.to_vec(),
            signature,
        }],
        ..Default::default()
    }
}

fn secret() -> Vec<u8> {
    (0..1500u32).map(|i| (i * 13 % 251) as u8).collect()
}

#[test]
fn sealed_data_unseals_only_at_a_pcr7_value_the_cluster_approved_for_this_node() {
    let (_dir, _swtpm, mut sealer) = tpm();
    let key = policy_key();
    let enrolled = sealer.pcr7().unwrap();
    let at_enrolment = authority(&key, NODE, &enrolled, key.approve(NODE, &enrolled).unwrap());
    let blob = sealer
        .seal_authorized(KIND, &secret(), &at_enrolment)
        .unwrap();
    assert_eq!(
        *sealer
            .unseal_authorized(KIND, &blob, &at_enrolment)
            .unwrap(),
        secret()
    );
    assert!(
        matches!(sealer.unseal(KIND, &blob), Err(TpmError::PolicyRejected(_))),
        "the PCR policy alone does not open it"
    );

    sealer.extend_pcr7(b"a dbx update").unwrap();
    let changed = sealer.pcr7().unwrap();
    assert_ne!(changed, enrolled);
    match sealer.unseal_authorized(KIND, &blob, &at_enrolment) {
        Err(TpmError::Unapproved { pcr7 }) => assert_eq!(pcr7, hex(&changed)),
        other => panic!("expected Unapproved, got {other:?}"),
    }
    // What no one approved is refused by the TPM itself, however it is presented.
    let other = policy_key();
    let refused = [
        // Another key's approval, presented as the cluster's.
        authority(&key, NODE, &changed, other.approve(NODE, &changed).unwrap()),
        // The cluster's approval of this value for another node.
        authority(
            &key,
            NODE,
            &changed,
            key.approve("metropolis-other", &changed).unwrap(),
        ),
        // The cluster's approval of the old value, presented for the new one.
        authority(&key, NODE, &changed, key.approve(NODE, &enrolled).unwrap()),
        // Another key with its own, valid approval: the blob is bound to the cluster's key.
        authority(
            &other,
            NODE,
            &changed,
            other.approve(NODE, &changed).unwrap(),
        ),
    ];
    for (i, forged) in refused.iter().enumerate() {
        match sealer.unseal_authorized(KIND, &blob, forged) {
            Err(TpmError::PolicyRejected(_)) => {}
            other => panic!("forgery {i}: expected PolicyRejected, got {other:?}"),
        }
    }
    let approved = authority(&key, NODE, &changed, key.approve(NODE, &changed).unwrap());
    assert_eq!(
        *sealer.unseal_authorized(KIND, &blob, &approved).unwrap(),
        secret(),
        "the owner's approval of the new value opens what was sealed before it"
    );
}

#[test]
fn an_approval_that_is_not_a_signature_is_a_clear_error() {
    let (_dir, _swtpm, mut sealer) = tpm();
    let key = policy_key();
    let pcr7 = sealer.pcr7().unwrap();
    let good = authority(&key, NODE, &pcr7, key.approve(NODE, &pcr7).unwrap());
    let blob = sealer.seal_authorized(KIND, b"secret", &good).unwrap();
    let short = authority(&key, NODE, &pcr7, vec![1; 10]);
    assert!(matches!(
        sealer.unseal_authorized(KIND, &blob, &short),
        Err(TpmError::BadAuthority(_))
    ));
    let mut no_key = good.clone();
    no_key.policy_key = vec![4; 10];
    assert!(matches!(
        sealer.seal_authorized(KIND, b"secret", &no_key),
        Err(TpmError::BadAuthority(_))
    ));
    assert_eq!(
        *sealer.unseal_authorized(KIND, &blob, &good).unwrap(),
        b"secret"
    );
}

#[test]
fn the_recovery_key_signs_what_a_curator_verifies_and_only_on_its_own_tpm() {
    let (_dir, _swtpm, mut sealer) = tpm();
    let key = sealer.create_recovery_key().unwrap();
    let point = key.point().unwrap();
    assert_eq!((point.len(), point[0]), (65, 4));
    let message = policy::recovery_request(NODE, &[1; 32], b"event log", 1_700_000_000);
    let signature = sealer.sign_with_recovery_key(&key, &message).unwrap();
    assert!(policy::verify(&point, &message, &signature));
    let altered = policy::recovery_request(NODE, &[2; 32], b"event log", 1_700_000_000);
    assert!(!policy::verify(&point, &altered, &signature));
    let another = sealer.create_recovery_key().unwrap();
    assert!(!policy::verify(
        &another.point().unwrap(),
        &message,
        &signature
    ));

    let (_d2, _t2, mut foreign) = tpm();
    assert!(matches!(
        foreign.sign_with_recovery_key(&key, &message),
        Err(TpmError::BadAuthority(_))
    ));
}
