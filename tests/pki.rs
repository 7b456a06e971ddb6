//! Every certificate the PKI issues, parsed and verified the way rustls will verify it
//! (webpki, Ed25519 only), including revocation through the CRL.

mod common;

use std::net::IpAddr;

use common::verify;

use polis::pki::{
    generate_key, node_id, CertificateAuthority, PkiError, Template, DEFAULT_CRL_VALIDITY,
};
use rustls_pki_types::{CertificateDer, ServerName};
use webpki::{EndEntityCert, Error, KeyUsage};

fn valid_for(cert: &[u8], name: &str) -> bool {
    let cert = CertificateDer::from(cert.to_vec());
    let end = EndEntityCert::try_from(&cert).unwrap();
    end.verify_is_valid_for_subject_name(&ServerName::try_from(name.to_owned()).unwrap())
        .is_ok()
}

#[test]
fn node_certificates_name_the_node_and_only_call_curator_certificates_serve() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let node = generate_key().unwrap();
    let id = node_id(&node.verifying_key());
    let cert = ca
        .issue(
            &Template::Node {
                node_id: id.clone(),
            },
            &node.verifying_key(),
        )
        .unwrap();
    assert!(
        verify(ca.certificate(), &cert.der, KeyUsage::server_auth(), None).is_err(),
        "a node certificate must not serve"
    );
    verify(ca.certificate(), &cert.der, KeyUsage::client_auth(), None).unwrap();
    assert!(!polis::pki::is_curator_certificate(&cert.der).unwrap());
    let curator = ca
        .issue(
            &Template::Curator {
                node_id: id.clone(),
            },
            &node.verifying_key(),
        )
        .unwrap();
    verify(
        ca.certificate(),
        &curator.der,
        KeyUsage::server_auth(),
        None,
    )
    .unwrap();
    assert!(polis::pki::is_curator_certificate(&curator.der).unwrap());
    assert!(valid_for(&curator.der, &id));
    assert!(valid_for(&cert.der, &id));
    assert!(!valid_for(&cert.der, "metropolis-someoneelse"));

    let (_, parsed) = x509_parser::parse_x509_certificate(&cert.der).unwrap();
    assert_eq!(
        parsed.subject_pki.subject_public_key.data.as_ref(),
        node.verifying_key().as_bytes()
    );
    assert_eq!(
        parsed.signature_algorithm.algorithm.to_id_string(),
        "1.3.101.112",
        "Ed25519"
    );
    assert_eq!(parsed.raw_serial(), cert.serial.as_slice());
    assert!(!parsed.is_ca());
    let (_, ca_parsed) = x509_parser::parse_x509_certificate(ca.certificate()).unwrap();
    assert!(ca_parsed.is_ca());
}

#[test]
fn peer_and_client_certificates_carry_their_names_and_usages() {
    let ca = CertificateAuthority::new("etcd peer CA").unwrap();
    let key = generate_key().unwrap();
    let ip: IpAddr = "198.18.0.2".parse().unwrap();
    let peer = ca
        .issue(
            &Template::Peer {
                name: "metropolis-ab".into(),
                ip,
            },
            &key.verifying_key(),
        )
        .unwrap();
    verify(ca.certificate(), &peer.der, KeyUsage::server_auth(), None).unwrap();
    verify(ca.certificate(), &peer.der, KeyUsage::client_auth(), None).unwrap();
    assert!(valid_for(&peer.der, "metropolis-ab") && valid_for(&peer.der, "198.18.0.2"));

    let owner = ca
        .issue(
            &Template::Client {
                common_name: "owner".into(),
            },
            &key.verifying_key(),
        )
        .unwrap();
    verify(ca.certificate(), &owner.der, KeyUsage::client_auth(), None).unwrap();
    assert!(matches!(
        verify(ca.certificate(), &owner.der, KeyUsage::server_auth(), None),
        Err(Error::RequiredEkuNotFoundContext(_))
    ));
}

#[test]
fn the_crl_revokes_exactly_the_listed_certificates() {
    let ca = CertificateAuthority::new("etcd peer CA").unwrap();
    let issue = |name: &str| {
        let key = generate_key().unwrap();
        ca.issue(
            &Template::Node {
                node_id: name.into(),
            },
            &key.verifying_key(),
        )
        .unwrap()
    };
    let (gone, kept) = (issue("metropolis-gone"), issue("metropolis-kept"));
    let crl = ca
        .crl(2, std::slice::from_ref(&gone.serial), DEFAULT_CRL_VALIDITY)
        .unwrap();
    assert_eq!(
        verify(
            ca.certificate(),
            &gone.der,
            KeyUsage::client_auth(),
            Some(&crl)
        ),
        Err(Error::CertRevoked)
    );
    verify(
        ca.certificate(),
        &kept.der,
        KeyUsage::client_auth(),
        Some(&crl),
    )
    .unwrap();
    let empty = ca.crl(1, &[], DEFAULT_CRL_VALIDITY).unwrap();
    verify(
        ca.certificate(),
        &gone.der,
        KeyUsage::client_auth(),
        Some(&empty),
    )
    .unwrap();

    use x509_parser::prelude::FromDer;
    let (_, parsed) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(&crl).unwrap();
    assert_eq!(parsed.crl_number().map(|n| n.to_string()), Some("2".into()));
    let listed: Vec<&[u8]> = parsed
        .iter_revoked_certificates()
        .map(|r| r.raw_serial())
        .collect();
    assert_eq!(listed, vec![gone.serial.as_slice()]);
}

#[test]
fn a_restored_ca_signs_like_the_original_and_other_cas_are_not_trusted() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let restored = CertificateAuthority::from_parts(
        "Polis cluster CA",
        &ca.key_pkcs8().unwrap(),
        ca.certificate().to_vec(),
    )
    .unwrap();
    let key = generate_key().unwrap();
    let cert = restored
        .issue(
            &Template::Node {
                node_id: "metropolis-x".into(),
            },
            &key.verifying_key(),
        )
        .unwrap();
    verify(ca.certificate(), &cert.der, KeyUsage::client_auth(), None).unwrap();
    let crl = restored
        .crl(3, std::slice::from_ref(&cert.serial), DEFAULT_CRL_VALIDITY)
        .unwrap();
    assert_eq!(
        verify(
            ca.certificate(),
            &cert.der,
            KeyUsage::client_auth(),
            Some(&crl)
        ),
        Err(Error::CertRevoked)
    );

    let stranger = CertificateAuthority::new("Polis cluster CA").unwrap();
    let foreign = stranger
        .issue(
            &Template::Node {
                node_id: "metropolis-x".into(),
            },
            &key.verifying_key(),
        )
        .unwrap();
    assert!(verify(
        ca.certificate(),
        &foreign.der,
        KeyUsage::client_auth(),
        None
    )
    .is_err());

    assert!(matches!(
        CertificateAuthority::from_parts("x", b"not a key", vec![]),
        Err(PkiError::BadKey(_))
    ));
}

#[test]
fn a_certificate_says_when_it_expires() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let key = generate_key().unwrap();
    let id = node_id(&key.verifying_key());
    let issued = ca
        .issue(&Template::Node { node_id: id }, &key.verifying_key())
        .unwrap();
    let now = polis::pki::unix_now();
    let expires = polis::pki::not_after(&issued.der).unwrap();
    assert!(expires > now + 86_400, "{expires} is not after {now}");
    assert!(polis::pki::not_after(&issued.der[..20]).is_err());
}

#[test]
fn a_bounded_certificate_is_due_for_renewal_two_thirds_into_its_life() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let key = generate_key().unwrap();
    let template = Template::Node {
        node_id: node_id(&key.verifying_key()),
    };
    let lifetime = std::time::Duration::from_secs(300);
    let before = polis::pki::unix_now();
    let issued = ca
        .issue_valid_for(&template, &key.verifying_key(), lifetime)
        .unwrap();
    let after = polis::pki::unix_now();
    let expires = polis::pki::not_after(&issued.der).unwrap();
    assert!((before + 300..=after + 300).contains(&expires), "{expires}");
    let due = polis::pki::renew_at(&issued.der).unwrap();
    assert!(
        (before + 200..=after + 200).contains(&due),
        "due at {due}, issued at {before}"
    );
    assert!(polis::pki::renew_at(&issued.der[..20]).is_err());
}
