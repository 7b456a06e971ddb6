//! The TLS builder under real handshakes: mutual TLS 1.3 with Ed25519 certificates from a pinned
//! CA works; revoked, foreign-CA, non-Ed25519 and TLS 1.2 peers are refused; ephemeral
//! self-signed clients are admitted only where asked for; no session is resumed.

use std::sync::Arc;
use std::time::Duration;

use polis::pki::{generate_key, CertificateAuthority, Template, DEFAULT_CRL_VALIDITY};
use polis::tls::{
    curator_client_config, first_use_client_config, server_config, verify_curator_certificate,
    ClientAuth, Identity, Trust,
};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use rustls::{ClientConfig, HandshakeKind, ProtocolVersion, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::{TlsAcceptor, TlsConnector};

/// Run one handshake; the server's view decides client authentication, the client's view
/// server authentication.
async fn handshake(
    server: ServerConfig,
    client: ClientConfig,
    name: &str,
) -> (Result<ProtocolVersion, String>, Result<(), String>) {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(Arc::new(server));
    let connector = TlsConnector::from(Arc::new(client));
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let (s, c) = tokio::join!(acceptor.accept(a), connector.connect(name, b));
    let server_view = s
        .map(|stream| stream.get_ref().1.protocol_version().unwrap())
        .map_err(|e| e.to_string());
    (server_view, c.map(|_| ()).map_err(|e| e.to_string()))
}

struct Node {
    id: String,
    key: ed25519_dalek::SigningKey,
    serial: Vec<u8>,
    cert: Vec<u8>,
}

/// A node with its node certificate: a client of the Curator.
fn node(ca: &CertificateAuthority, id: &str) -> Node {
    issued(ca, id, Template::Node { node_id: id.into() })
}

/// A consensus member with its Curator certificate: a Curator server.
fn curator(ca: &CertificateAuthority, id: &str) -> Node {
    issued(ca, id, Template::Curator { node_id: id.into() })
}

fn issued(ca: &CertificateAuthority, id: &str, template: Template) -> Node {
    let key = generate_key().unwrap();
    let issued = ca.issue(&template, &key.verifying_key()).unwrap();
    Node {
        id: id.into(),
        key,
        serial: issued.serial,
        cert: issued.der,
    }
}

fn identity(n: &Node) -> Identity {
    Identity::new(&n.key, n.cert.clone()).unwrap()
}

fn trust(ca: &CertificateAuthority, crls: Vec<Vec<u8>>) -> Trust {
    Trust {
        ca: ca.certificate().to_vec(),
        crls,
    }
}

#[tokio::test]
async fn mutual_tls_13_between_nodes_of_one_ca() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let (a, b) = (curator(&ca, "metropolis-a"), node(&ca, "metropolis-b"));
    let server = server_config(identity(&a), ClientAuth::Ca(trust(&ca, vec![]))).unwrap();
    let client = curator_client_config(Some(identity(&b)), &trust(&ca, vec![])).unwrap();
    let (s, c) = handshake(server, client, &a.id).await;
    assert_eq!(s, Ok(ProtocolVersion::TLSv1_3));
    assert_eq!(c, Ok(()));
}

/// One connection with the configs a server and a client keep between connections: a full
/// exchange (the client sends a byte, the server answers one, so any session ticket reaches
/// the client); answers how the server saw the handshake.
async fn connection(
    server: &Arc<ServerConfig>,
    client: &Arc<ClientConfig>,
    name: &str,
) -> Option<HandshakeKind> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let acceptor = TlsAcceptor::from(server.clone());
    let connector = TlsConnector::from(client.clone());
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let serve = async {
        let mut stream = acceptor.accept(a).await.unwrap();
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.unwrap();
        stream.write_all(&byte).await.unwrap();
        stream.flush().await.unwrap();
        stream.get_ref().1.handshake_kind()
    };
    let call = async {
        let mut stream = connector.connect(name, b).await.unwrap();
        stream.write_all(b"x").await.unwrap();
        stream.flush().await.unwrap();
        let mut byte = [0u8];
        stream.read_exact(&mut byte).await.unwrap();
        stream
    };
    let (kind, _stream) = tokio::join!(serve, call);
    kind
}

#[tokio::test]
async fn no_connection_resumes_a_session_so_every_one_checks_the_certificates() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let (a, b) = (curator(&ca, "metropolis-a"), node(&ca, "metropolis-b"));
    let server = server_config(identity(&a), ClientAuth::Ca(trust(&ca, vec![]))).unwrap();
    let client = curator_client_config(Some(identity(&b)), &trust(&ca, vec![])).unwrap();
    let (server, client) = (Arc::new(server), Arc::new(client));
    let mut kinds = Vec::new();
    for _ in 0..3 {
        kinds.push(connection(&server, &client, &a.id).await);
    }
    assert_eq!(kinds, vec![Some(HandshakeKind::Full); 3]);
}

#[tokio::test]
async fn a_revoked_client_and_a_wrong_server_name_are_refused() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let (a, b) = (curator(&ca, "metropolis-a"), node(&ca, "metropolis-b"));
    let crl = ca
        .crl(2, std::slice::from_ref(&b.serial), DEFAULT_CRL_VALIDITY)
        .unwrap();
    let server = server_config(identity(&a), ClientAuth::Ca(trust(&ca, vec![crl]))).unwrap();
    let client = curator_client_config(Some(identity(&b)), &trust(&ca, vec![])).unwrap();
    let (s, _) = handshake(server, client, &a.id).await;
    assert!(s.as_ref().unwrap_err().contains("Revoked"), "{s:?}");

    let server = server_config(identity(&a), ClientAuth::Ca(trust(&ca, vec![]))).unwrap();
    let client = curator_client_config(Some(identity(&b)), &trust(&ca, vec![])).unwrap();
    let (_, c) = handshake(server, client, "metropolis-someone-else").await;
    assert!(
        c.is_err(),
        "the server's certificate must name the node asked for"
    );
}

/// A CRL past its nextUpdate no longer says what is revoked: a server holding one refuses
/// every client of the CA, and a client holding one refuses every server, each saying why.
#[tokio::test]
async fn a_stale_crl_is_refused_by_servers_and_clients() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let (a, b) = (curator(&ca, "metropolis-a"), node(&ca, "metropolis-b"));
    let stale = ca.crl(2, &[], Duration::from_secs(1)).unwrap();
    let current = ca.crl(3, &[], DEFAULT_CRL_VALIDITY).unwrap();
    // Whole seconds: the CRL's nextUpdate is in them.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let server = |crl: &Vec<u8>| {
        server_config(identity(&a), ClientAuth::Ca(trust(&ca, vec![crl.clone()]))).unwrap()
    };
    let client = |crl: &Vec<u8>| {
        curator_client_config(Some(identity(&b)), &trust(&ca, vec![crl.clone()])).unwrap()
    };
    let (s, _) = handshake(server(&stale), client(&current), &a.id).await;
    assert!(
        s.as_ref()
            .unwrap_err()
            .contains("certificate revocation list expired"),
        "{s:?}"
    );
    let (_, c) = handshake(server(&current), client(&stale), &a.id).await;
    assert!(
        c.as_ref()
            .unwrap_err()
            .contains("certificate revocation list expired"),
        "{c:?}"
    );
    let (s, c) = handshake(server(&current), client(&current), &a.id).await;
    assert!(s.is_ok() && c.is_ok(), "{s:?} {c:?}");
}

#[tokio::test]
async fn only_an_unrevoked_curator_certificate_serves_the_curator() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let client = node(&ca, "metropolis-b");
    // A worker serving with its own valid node certificate.
    let worker = node(&ca, "metropolis-w");
    let server = server_config(identity(&worker), ClientAuth::Ca(trust(&ca, vec![]))).unwrap();
    let config = curator_client_config(Some(identity(&client)), &trust(&ca, vec![])).unwrap();
    let (_, c) = handshake(server, config, &worker.id).await;
    assert!(
        c.as_ref().unwrap_err().contains("invalid peer certificate"),
        "{c:?}"
    );
    // A certificate of the CA for serving, but without the Curator mark.
    let unmarked = issued(
        &ca,
        "metropolis-p",
        Template::Peer {
            name: "metropolis-p".into(),
            ip: "198.18.0.9".parse().unwrap(),
        },
    );
    let server = server_config(identity(&unmarked), ClientAuth::Ca(trust(&ca, vec![]))).unwrap();
    let config = curator_client_config(Some(identity(&client)), &trust(&ca, vec![])).unwrap();
    let (_, c) = handshake(server, config, &unmarked.id).await;
    assert!(c.as_ref().unwrap_err().contains("not a Curator's"), "{c:?}");
    // A decommissioned member: its Curator certificate is in the CRL the client holds.
    let retired = curator(&ca, "metropolis-r");
    let crl = ca
        .crl(
            2,
            std::slice::from_ref(&retired.serial),
            DEFAULT_CRL_VALIDITY,
        )
        .unwrap();
    let server = server_config(identity(&retired), ClientAuth::Ca(trust(&ca, vec![]))).unwrap();
    let config = curator_client_config(Some(identity(&client)), &trust(&ca, vec![crl])).unwrap();
    let (_, c) = handshake(server, config, &retired.id).await;
    assert!(c.as_ref().unwrap_err().contains("Revoked"), "{c:?}");
    // The same member before its decommission.
    let server = server_config(identity(&retired), ClientAuth::Ca(trust(&ca, vec![]))).unwrap();
    let config = curator_client_config(Some(identity(&client)), &trust(&ca, vec![])).unwrap();
    assert_eq!(handshake(server, config, &retired.id).await.1, Ok(()));
}

/// What a first-use connection was shown passes for a pinned one only if a pinned client
/// would have accepted it: a Curator certificate of that CA, naming the node.
#[test]
fn a_certificate_seen_on_first_use_is_checked_as_a_pinned_client_checks_it() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let other = CertificateAuthority::new("Polis cluster CA").unwrap();
    let a = curator(&ca, "metropolis-a");
    verify_curator_certificate(ca.certificate(), &a.cert, &a.id).unwrap();
    let refusals = [
        (ca.certificate(), a.cert.clone(), "metropolis-b"),
        (
            ca.certificate(),
            node(&ca, "metropolis-a").cert,
            "metropolis-a",
        ),
        (other.certificate(), a.cert.clone(), "metropolis-a"),
    ];
    for (pinned, seen, name) in refusals {
        assert!(
            verify_curator_certificate(pinned, &seen, name).is_err(),
            "{name}"
        );
    }
}

#[tokio::test]
async fn certificates_of_another_ca_are_refused_both_ways() {
    let ours = CertificateAuthority::new("Polis cluster CA").unwrap();
    let theirs = CertificateAuthority::new("Polis cluster CA").unwrap();
    let (a, stranger) = (
        curator(&ours, "metropolis-a"),
        curator(&theirs, "metropolis-a"),
    );
    // A client with a foreign certificate.
    let server = server_config(identity(&a), ClientAuth::Ca(trust(&ours, vec![]))).unwrap();
    let client = curator_client_config(Some(identity(&stranger)), &trust(&ours, vec![])).unwrap();
    assert!(handshake(server, client, &a.id).await.0.is_err());
    // A server with a foreign certificate: the client pins its own CA.
    let server =
        server_config(identity(&stranger), ClientAuth::Ca(trust(&theirs, vec![]))).unwrap();
    let client = curator_client_config(Some(identity(&a)), &trust(&ours, vec![])).unwrap();
    let (_, c) = handshake(server, client, &a.id).await;
    assert!(c.unwrap_err().contains("invalid peer certificate"));
}

#[tokio::test]
async fn a_first_use_client_learns_the_ca_a_curator_sends_after_its_certificate() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let a = curator(&ca, "metropolis-a");
    let owner = generate_key().unwrap();
    let served = |with_ca: bool| {
        let identity = match with_ca {
            true => identity(&a).with_ca(ca.certificate().to_vec()),
            false => identity(&a),
        };
        server_config(identity, ClientAuth::CaOrEphemeral(trust(&ca, vec![]))).unwrap()
    };
    for with_ca in [true, false] {
        let (client, seen) = first_use_client_config(Identity::ephemeral(&owner).unwrap()).unwrap();
        let (server_view, client_view) = handshake(served(with_ca), client, "curator").await;
        assert_eq!(server_view, Ok(ProtocolVersion::TLSv1_3));
        client_view.unwrap();
        let shown = seen
            .lock()
            .unwrap()
            .clone()
            .expect("the handshake showed a certificate");
        assert_eq!(shown.certificate, a.cert);
        let expected = with_ca.then(|| ca.certificate().to_vec());
        assert_eq!(shown.ca, expected, "sent with the CA: {with_ca}");
    }
    // A pinned client accepts the chain with the CA in it as it accepts the certificate alone.
    let pinned = curator_client_config(
        Some(identity(&node(&ca, "metropolis-b"))),
        &trust(&ca, vec![]),
    )
    .unwrap();
    assert_eq!(handshake(served(true), pinned, &a.id).await.1, Ok(()));
}

#[tokio::test]
async fn ephemeral_clients_only_where_admitted() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let a = curator(&ca, "metropolis-a");
    let joining = generate_key().unwrap();
    let strict = server_config(identity(&a), ClientAuth::Ca(trust(&ca, vec![]))).unwrap();
    let client = curator_client_config(
        Some(Identity::ephemeral(&joining).unwrap()),
        &trust(&ca, vec![]),
    )
    .unwrap();
    assert!(handshake(strict, client, &a.id).await.0.is_err());

    let open = server_config(identity(&a), ClientAuth::CaOrEphemeral(trust(&ca, vec![]))).unwrap();
    let client = curator_client_config(
        Some(Identity::ephemeral(&joining).unwrap()),
        &trust(&ca, vec![]),
    )
    .unwrap();
    assert_eq!(
        handshake(open, client, &a.id).await.0,
        Ok(ProtocolVersion::TLSv1_3)
    );

    // Still refused there: a revoked CA-issued client (it does not fall back to "self-signed").
    let b = node(&ca, "metropolis-b");
    let crl = ca
        .crl(2, std::slice::from_ref(&b.serial), DEFAULT_CRL_VALIDITY)
        .unwrap();
    let open = server_config(
        identity(&a),
        ClientAuth::CaOrEphemeral(trust(&ca, vec![crl])),
    )
    .unwrap();
    let client = curator_client_config(Some(identity(&b)), &trust(&ca, vec![])).unwrap();
    assert!(handshake(open, client, &a.id).await.0.is_err());
}

/// An ECDSA P-256 CA and a leaf for `name`, as a foreign implementation would use.
fn ecdsa(name: &str) -> (Vec<u8>, Vec<u8>, PrivateKeyDer<'static>) {
    use rcgen::{
        BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, PKCS_ECDSA_P256_SHA256,
    };
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &Issuer::new(ca_params, ca_key))
        .unwrap();
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    (ca_cert.der().to_vec(), leaf.der().to_vec(), der)
}

fn foreign_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

#[tokio::test]
async fn non_ed25519_and_tls_12_peers_are_refused() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let a = curator(&ca, "metropolis-a");

    // An ECDSA client certificate, even from a CA the server trusts.
    let (ecdsa_ca, leaf, key) = ecdsa("metropolis-x");
    let server = server_config(
        identity(&a),
        ClientAuth::Ca(Trust {
            ca: ecdsa_ca.clone(),
            crls: vec![],
        }),
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.certificate().to_vec().into()).unwrap();
    let client = ClientConfig::builder_with_provider(foreign_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots.clone())
        .with_client_auth_cert(vec![leaf.clone().into()], key.clone_key())
        .unwrap();
    assert!(
        handshake(server, client, &a.id).await.0.is_err(),
        "ECDSA client admitted"
    );

    // An ECDSA server, even under the pinned CA's name.
    let server = ServerConfig::builder_with_provider(foreign_provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.into()], key)
        .unwrap();
    let client = curator_client_config(
        None,
        &Trust {
            ca: ecdsa_ca,
            crls: vec![],
        },
    )
    .unwrap();
    assert!(
        handshake(server, client, "metropolis-x").await.1.is_err(),
        "ECDSA server accepted"
    );

    // A TLS 1.2 client.
    let server = server_config(identity(&a), ClientAuth::Ca(trust(&ca, vec![]))).unwrap();
    let client = ClientConfig::builder_with_provider(foreign_provider())
        .with_protocol_versions(&[&rustls::version::TLS12])
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(identity_chain(&a), identity_key(&a))
        .unwrap();
    let (s, _) = handshake(server, client, &a.id).await;
    assert!(
        s.unwrap_err().contains("Tls12NotOfferedOrEnabled"),
        "TLS 1.2 admitted"
    );
}

fn identity_chain(n: &Node) -> Vec<rustls::pki_types::CertificateDer<'static>> {
    vec![n.cert.clone().into()]
}

fn identity_key(n: &Node) -> PrivateKeyDer<'static> {
    use ed25519_dalek::pkcs8::EncodePrivateKey;
    PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(
        n.key.to_pkcs8_der().unwrap().as_bytes().to_vec(),
    ))
}
