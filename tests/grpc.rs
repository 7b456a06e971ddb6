//! gRPC over Polis TLS end to end: a tonic service behind our acceptor sees the caller's verified
//! key; ephemeral, CA-issued, revoked and certificate-less callers get what the config says.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;

use polis::grpc::{channel, channel_with_deadline, incoming, Peer};
use polis::pki::{generate_key, CertificateAuthority, Template, DEFAULT_CRL_VALIDITY};
use polis::proto::curator::curator_local_client::CuratorLocalClient;
use polis::proto::curator::curator_local_server::{CuratorLocal, CuratorLocalServer};
use polis::proto::curator::{GetCaCertificateRequest, GetCaCertificateResponse};
use polis::tls::{curator_client_config, server_config, ClientAuth, Identity, Trust};
use rustls::ServerConfig;
use tokio::sync::watch;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Answers with the caller's public key, to show what a handler can authorize by.
struct Echo;

#[tonic::async_trait]
impl CuratorLocal for Echo {
    async fn get_ca_certificate(
        &self,
        request: Request<GetCaCertificateRequest>,
    ) -> Result<Response<GetCaCertificateResponse>, Status> {
        let key = request
            .extensions()
            .get::<Peer>()
            .and_then(Peer::public_key)
            .ok_or_else(|| Status::unauthenticated("no client key"))?;
        Ok(Response::new(GetCaCertificateResponse {
            ca_certificate: key.to_vec(),
            crl: Vec::new(),
        }))
    }
}

/// A server trusting `ca` with `crls`; send it new configs through the answered sender, end it
/// by aborting the answered task.
async fn serve(
    ca: &CertificateAuthority,
    crls: Vec<Vec<u8>>,
) -> (
    SocketAddr,
    watch::Sender<Arc<ServerConfig>>,
    tokio::task::JoinHandle<()>,
) {
    let listen = "127.0.0.1:0".parse().unwrap();
    serve_at(
        listen,
        config(ca, crls, curator_template("metropolis-server")),
    )
    .await
}

/// A server at `listen` with `config`, as [`serve`] describes.
async fn serve_at(
    listen: SocketAddr,
    config: ServerConfig,
) -> (
    SocketAddr,
    watch::Sender<Arc<ServerConfig>>,
    tokio::task::JoinHandle<()>,
) {
    let (configs, updates) = watch::channel(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(listen).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = incoming(listener, updates, common::quiet());
    let server = tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(CuratorLocalServer::new(Echo))
            .serve_with_incoming(connections)
            .await;
    });
    (addr, configs, server)
}

fn curator_template(id: &str) -> Template {
    Template::Curator { node_id: id.into() }
}

/// A server config for a new key's certificate of kind `template` from `ca`, admitting clients
/// as a Curator does.
fn config(ca: &CertificateAuthority, crls: Vec<Vec<u8>>, template: Template) -> ServerConfig {
    let key = generate_key().unwrap();
    let cert = ca.issue(&template, &key.verifying_key()).unwrap();
    let trust = Trust {
        ca: ca.certificate().to_vec(),
        crls,
    };
    server_config(
        Identity::new(&key, cert.der).unwrap(),
        ClientAuth::CaOrEphemeral(trust),
    )
    .unwrap()
}

async fn ask(
    addr: SocketAddr,
    ca: &CertificateAuthority,
    identity: Option<Identity>,
) -> Result<Vec<u8>, String> {
    let trust = Trust {
        ca: ca.certificate().to_vec(),
        crls: vec![],
    };
    let channel = channel(
        addr,
        "metropolis-server",
        curator_client_config(identity, &trust).unwrap(),
    )
    .await
    .map_err(|e| e.to_string())?;
    ask_on(&channel).await
}

async fn ask_on(channel: &Channel) -> Result<Vec<u8>, String> {
    CuratorLocalClient::new(channel.clone())
        .get_ca_certificate(GetCaCertificateRequest {})
        .await
        .map(|r| r.into_inner().ca_certificate)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn handlers_see_the_verified_caller_and_refused_callers_get_nowhere() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let node = generate_key().unwrap();
    let node_cert = ca
        .issue(
            &Template::Node {
                node_id: "metropolis-n".into(),
            },
            &node.verifying_key(),
        )
        .unwrap();
    let revoked = generate_key().unwrap();
    let revoked_cert = ca
        .issue(
            &Template::Node {
                node_id: "metropolis-r".into(),
            },
            &revoked.verifying_key(),
        )
        .unwrap();
    let (addr, _configs, _server) = serve(
        &ca,
        vec![ca
            .crl(
                2,
                std::slice::from_ref(&revoked_cert.serial),
                DEFAULT_CRL_VALIDITY,
            )
            .unwrap()],
    )
    .await;

    let joining = generate_key().unwrap();
    assert_eq!(
        ask(addr, &ca, Some(Identity::ephemeral(&joining).unwrap()))
            .await
            .unwrap(),
        joining.verifying_key().to_bytes()
    );
    assert_eq!(
        ask(
            addr,
            &ca,
            Some(Identity::new(&node, node_cert.der).unwrap())
        )
        .await
        .unwrap(),
        node.verifying_key().to_bytes()
    );
    assert!(ask(
        addr,
        &ca,
        Some(Identity::new(&revoked, revoked_cert.der).unwrap())
    )
    .await
    .is_err());
    assert!(
        ask(addr, &ca, None).await.is_err(),
        "a client certificate is required"
    );

    // A client pinning another CA does not talk to this server at all.
    let other = CertificateAuthority::new("Polis cluster CA").unwrap();
    let err = ask(addr, &other, Some(Identity::ephemeral(&joining).unwrap()))
        .await
        .unwrap_err();
    assert!(err.contains("cannot reach"), "{err}");
}

#[tokio::test]
async fn a_new_crl_refuses_the_next_handshake_of_a_revoked_client() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let node = generate_key().unwrap();
    let cert = ca
        .issue(
            &Template::Node {
                node_id: "metropolis-n".into(),
            },
            &node.verifying_key(),
        )
        .unwrap();
    let (addr, configs, _server) =
        serve(&ca, vec![ca.crl(1, &[], DEFAULT_CRL_VALIDITY).unwrap()]).await;
    let identity = || Some(Identity::new(&node, cert.der.clone()).unwrap());
    assert!(ask(addr, &ca, identity()).await.is_ok());

    configs.send_replace(Arc::new(config(
        &ca,
        vec![ca
            .crl(2, std::slice::from_ref(&cert.serial), DEFAULT_CRL_VALIDITY)
            .unwrap()],
        curator_template("metropolis-server"),
    )));
    assert!(
        ask(addr, &ca, identity()).await.is_err(),
        "the server still admits a certificate its newest CRL revokes"
    );
}

#[tokio::test]
async fn connections_end_with_the_server_that_accepted_them() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let (addr, _configs, server) = serve(&ca, vec![]).await;
    let key = generate_key().unwrap();
    let trust = Trust::pinned(ca.certificate().to_vec());
    let config = curator_client_config(Some(Identity::ephemeral(&key).unwrap()), &trust).unwrap();
    let open = channel(addr, "metropolis-server", config).await.unwrap();
    assert!(ask_on(&open).await.is_ok());

    server.abort();
    let _ = server.await;
    assert!(
        ask_on(&open).await.is_err(),
        "a connection outlived the server that accepted it"
    );
}

/// A node reaches only a Curator, registering (with its node key) or joining (with its join key)
/// alike: it never dials a node its directory does not mark as a Curator, and it refuses a
/// worker serving with its valid node certificate and a decommissioned member whose Curator
/// certificate the directory's CRL revokes.
#[tokio::test]
async fn a_node_reaches_only_an_unrevoked_curator_of_its_directory() {
    use polis::curator::CURATOR_PORT;
    use polis::lifecycle::{connect, ReachError};
    use polis::proto::common::{cluster_directory, Address, ClusterDirectory};
    use std::net::{IpAddr, Ipv4Addr};

    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    // Loopback addresses of this test alone, as the Curator's port is fixed.
    let subnet = 100 + (std::process::id() % 100) as u8;
    let ip = |n: u8| IpAddr::V4(Ipv4Addr::new(127, 77, subnet, n));
    let at = |n: u8| SocketAddr::new(ip(n), CURATOR_PORT);
    let worker = Template::Node {
        node_id: "metropolis-w".into(),
    };
    let _worker = serve_at(at(1), config(&ca, vec![], worker)).await;
    let retired_key = generate_key().unwrap();
    let retired = ca
        .issue(
            &curator_template("metropolis-r"),
            &retired_key.verifying_key(),
        )
        .unwrap();
    let trust = Trust {
        ca: ca.certificate().to_vec(),
        crls: vec![],
    };
    let identity = Identity::new(&retired_key, retired.der).unwrap();
    let retired_config = server_config(identity, ClientAuth::CaOrEphemeral(trust)).unwrap();
    let _retired = serve_at(at(2), retired_config).await;
    let _curator = serve_at(at(3), config(&ca, vec![], curator_template("metropolis-c"))).await;

    let entry = |id: &str, n: u8, curator: bool| cluster_directory::Node {
        id: id.into(),
        addresses: vec![Address {
            host: ip(n).to_string(),
        }],
        curator,
    };
    let crl = ca.crl(2, &[retired.serial], DEFAULT_CRL_VALIDITY).unwrap();
    for key in [generate_key().unwrap(), generate_key().unwrap()] {
        let identity = || Identity::ephemeral(&key);
        let mut directory = ClusterDirectory {
            nodes: vec![entry("metropolis-w", 1, false)],
            crl: crl.clone(),
        };
        let reached = connect(&directory, ca.certificate(), identity).await;
        assert!(
            matches!(reached, Err(ReachError::EmptyDirectory)),
            "a worker was dialled: {:?}",
            reached.err()
        );
        // A forged or stale directory calling them Curators: refused at the handshake.
        directory.nodes = vec![
            entry("metropolis-w", 1, true),
            entry("metropolis-r", 2, true),
        ];
        let refused = connect(&directory, ca.certificate(), identity)
            .await
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("does not allow extended key usage for server authentication"),
            "{refused}"
        );
        assert!(refused.contains("Revoked"), "{refused}");
        // The real Curator listed after them answers.
        directory.nodes.push(entry("metropolis-c", 3, true));
        let channel = connect(&directory, ca.certificate(), identity)
            .await
            .unwrap();
        assert_eq!(
            ask_on(&channel).await.unwrap(),
            key.verifying_key().to_bytes()
        );
    }
}

/// Forward connections from the answered address to `server` until `frozen` says stop; then
/// hold both sockets open and forward nothing, as a powered-off host's peer sees it.
async fn freezable_relay(server: SocketAddr, frozen: watch::Receiver<bool>) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = tokio::net::TcpStream::connect(server).await.unwrap();
            let (client_read, client_write) = client.into_split();
            let (server_read, server_write) = upstream.into_split();
            for (mut from, mut to) in [
                (
                    Box::new(client_read) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                    Box::new(server_write) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
                ),
                (Box::new(server_read), Box::new(client_write)),
            ] {
                let frozen = frozen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = from.read(&mut buf).await {
                        if n == 0 || *frozen.borrow() {
                            // Keep `from` and `to` open, forwarding nothing.
                            std::future::pending::<()>().await;
                        }
                        if to.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        }
    });
    addr
}

/// A server that stops answering without closing (a Curator host powered off) ends the
/// client's calls through HTTP/2 keepalive instead of hanging them.
#[tokio::test]
async fn a_call_to_a_server_that_stopped_answering_fails_instead_of_hanging() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let (server, _configs, _task) = serve(&ca, vec![]).await;
    let (freeze, frozen) = watch::channel(false);
    let relay = freezable_relay(server, frozen).await;
    let key = generate_key().unwrap();
    let trust = Trust {
        ca: ca.certificate().to_vec(),
        crls: vec![],
    };
    let config = curator_client_config(Some(Identity::ephemeral(&key).unwrap()), &trust).unwrap();
    let channel = channel(relay, "metropolis-server", config).await.unwrap();
    assert!(ask_on(&channel).await.is_ok());
    freeze.send_replace(true);
    // Bounds a hang only: keepalive ends the call within about ten seconds.
    let answer = tokio::time::timeout(std::time::Duration::from_secs(120), ask_on(&channel))
        .await
        .expect("the call hung on a server that stopped answering");
    assert!(answer.is_err(), "{answer:?}");
}

/// Never answers: a handler stuck behind a paused actor or an etcd without quorum.
struct Stuck;

#[tonic::async_trait]
impl CuratorLocal for Stuck {
    async fn get_ca_certificate(
        &self,
        _: Request<GetCaCertificateRequest>,
    ) -> Result<Response<GetCaCertificateResponse>, Status> {
        std::future::pending().await
    }
}

/// A call whose handler never answers, on a live connection (keepalive is answered), ends at
/// the channel's deadline instead of hanging.
#[tokio::test]
async fn a_call_that_gets_no_answer_ends_at_its_deadline() {
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let server_config = config(&ca, vec![], curator_template("metropolis-server"));
    let (_configs, updates) = watch::channel(Arc::new(server_config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = incoming(listener, updates, common::quiet());
    let _server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(CuratorLocalServer::new(Stuck))
            .serve_with_incoming(connections),
    );
    let key = generate_key().unwrap();
    let trust = Trust::pinned(ca.certificate().to_vec());
    let client = curator_client_config(Some(Identity::ephemeral(&key).unwrap()), &trust).unwrap();
    let deadline = std::time::Duration::from_secs(1);
    let channel = channel_with_deadline(addr, "metropolis-server", client, deadline)
        .await
        .unwrap();
    // Bounds a hang only: the deadline ends the call after a second.
    let answer = tokio::time::timeout(std::time::Duration::from_secs(60), ask_on(&channel))
        .await
        .expect("the call hung past its deadline");
    assert!(answer.is_err(), "{answer:?}");
}

/// Unauthenticated clients cannot make a server hold unbounded state: past
/// `MAX_HANDSHAKES` silent connections, a new one is closed at once while the earlier ones are
/// still held (each until its handshake times out).
#[tokio::test]
async fn handshakes_in_flight_are_bounded() {
    use polis::grpc::MAX_HANDSHAKES;
    use tokio::io::AsyncReadExt;
    let ca = CertificateAuthority::new("Polis cluster CA").unwrap();
    let (server, _configs, _task) = serve(&ca, vec![]).await;
    let mut held = Vec::new();
    for _ in 0..MAX_HANDSHAKES {
        held.push(tokio::net::TcpStream::connect(server).await.unwrap());
    }
    let mut extra = tokio::net::TcpStream::connect(server).await.unwrap();
    let mut buf = [0u8; 1];
    let read = extra.read(&mut buf).await;
    assert!(
        matches!(read, Ok(0)) || read.is_err(),
        "the connection past the limit was not closed: {read:?}"
    );
    // The first one is still held: closed only by its handshake timeout, which has not come.
    let first = held[0].try_read(&mut buf);
    assert!(
        matches!(&first, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "{first:?}"
    );
}
