//! What the Curator and a node refuse, each with its error: a wrong ticket, a commit before
//! approval, unknown and decommissioned join keys, a decommissioned node's revoked certificate,
//! decommissioning the last consensus member, a server from another CA, a management call
//! without the owner certificate, and a tampered sealed configuration.

use std::net::SocketAddr;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use polis::curator::{CURATOR_PORT, MAX_WATCHES_PER_NODE};
use polis::grpc::channel;
use polis::launch::LocalCluster;
use polis::pki::{generate_key, CertificateAuthority};
use polis::poll::Poll;
use polis::proto::api::management_client::ManagementClient;
use polis::proto::api::{
    ApproveNodeRequest, DecommissionNodeRequest, GetClusterInfoRequest, GetNodesRequest,
    GetRegisterTicketRequest, RotateRegisterTicketRequest, UpdateNodeRolesRequest,
};
use polis::proto::common::NodeState;
use polis::proto::curator::curator_client::CuratorClient;
use polis::proto::curator::curator_local_client::CuratorLocalClient;
use polis::proto::curator::{
    CommitNodeRequest, GetCaCertificateRequest, JoinNodeRequest, RegisterNodeRequest, WatchRequest,
};
use polis::tls::{curator_client_config, Identity, Trust};
use polis_integration::{dial_curator, polis_node_binary, test_logger, RETIREMENT_PATIENCE};
use tonic::transport::Channel;
use tonic::Code;

async fn dial(cluster: &LocalCluster, ca: &[u8], key: &SigningKey) -> Result<Channel, String> {
    dial_curator(cluster, 0, ca, key).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_curator_and_the_node_refuse_what_they_must() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), 1, &polis_node_binary(), test_logger()).unwrap();
    let mut owner = cluster.bootstrap().await.unwrap();
    let ca = cluster.ca().unwrap();
    let ticket = owner.ticket().await.unwrap();
    let (node_key, join_key) = (generate_key().unwrap(), generate_key().unwrap());
    let mut client = CuratorClient::new(dial(&cluster, &ca, &node_key).await.unwrap());
    let register = |ticket: Vec<u8>| RegisterNodeRequest {
        register_ticket: ticket,
        join_key: join_key.verifying_key().to_bytes().to_vec(),
        external_address: "198.18.0.99".into(),
        ..Default::default()
    };

    // A reported address that is not an IP address is refused (it would become a peer URL).
    let mut odd = register(ticket.clone());
    odd.external_address = "198.18.0.99:1@elsewhere".into();
    let odd = client.register_node(odd).await.unwrap_err();
    assert_eq!(odd.code(), Code::InvalidArgument, "{odd}");
    // A recovery key that is no P-256 point, or one without a PCR 7 value, is refused: the
    // record would promise a recovery that could never be checked.
    for (recovery_key, pcr7) in [
        (vec![4; 10], vec![0; 32]),
        ([vec![4], vec![1; 64]].concat(), vec![]),
    ] {
        let mut bad = register(ticket.clone());
        (bad.recovery_key, bad.pcr7) = (recovery_key, pcr7);
        let bad = client.register_node(bad).await.unwrap_err();
        assert_eq!(bad.code(), Code::InvalidArgument, "{bad}");
    }
    assert!(odd.message().contains("not an IP address"), "{odd}");

    let wrong = client
        .register_node(register(vec![0; 32]))
        .await
        .unwrap_err();
    assert_eq!(wrong.code(), Code::PermissionDenied, "{wrong}");
    assert!(wrong.message().contains("ticket"), "{wrong}");
    // The ticket is checked while the record is read: a wrong one writes nothing.
    let id = polis::pki::node_id(&node_key.verifying_key());
    let nodes = owner.nodes().await.unwrap();
    assert!(nodes.iter().all(|n| n.id != id), "{nodes:?}");

    client
        .register_node(register(ticket.clone()))
        .await
        .unwrap();
    // Registering again with the same keys is harmless.
    client.register_node(register(ticket)).await.unwrap();
    let commit = CommitNodeRequest {
        cluster_unlock_key: vec![7; 32],
    };
    let early = client.commit_node(commit.clone()).await.unwrap_err();
    assert_eq!(early.code(), Code::FailedPrecondition, "{early}");
    assert!(early.message().contains("not approved"), "{early}");

    owner
        .approve(&node_key.verifying_key().to_bytes())
        .await
        .unwrap();
    let first = client
        .commit_node(commit.clone())
        .await
        .unwrap()
        .into_inner();
    let again = client.commit_node(commit).await.unwrap().into_inner();
    assert_eq!(first.node_certificate, again.node_certificate);
    assert_eq!(first.ca_certificate, ca);

    // Another node cannot register with this node's join key (which would send the real node's
    // next JoinNode to the other record).
    let thief = generate_key().unwrap();
    let mut as_thief = CuratorClient::new(dial(&cluster, &ca, &thief).await.unwrap());
    let taken = as_thief
        .register_node(register(owner.ticket().await.unwrap()))
        .await
        .unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken}");
    assert!(
        taken.message().contains("belongs to another node"),
        "{taken}"
    );

    // Rotating the ticket: the old one registers no node from now on, the new one does.
    let old = owner.ticket().await.unwrap();
    let new = owner.rotate_ticket().await.unwrap();
    assert_ne!(old, new);
    assert_eq!(owner.ticket().await.unwrap(), new);
    let latecomer = generate_key().unwrap();
    let mut as_latecomer = CuratorClient::new(dial(&cluster, &ca, &latecomer).await.unwrap());
    let late = |ticket: Vec<u8>| RegisterNodeRequest {
        register_ticket: ticket,
        join_key: generate_key().unwrap().verifying_key().to_bytes().to_vec(),
        external_address: "198.18.0.98".into(),
        ..Default::default()
    };
    let stale = as_latecomer.register_node(late(old)).await.unwrap_err();
    assert_eq!(stale.code(), Code::PermissionDenied, "{stale}");
    let late_id = polis::pki::node_id(&latecomer.verifying_key());
    let nodes = owner.nodes().await.unwrap();
    assert!(nodes.iter().all(|n| n.id != late_id), "{nodes:?}");
    as_latecomer.register_node(late(new)).await.unwrap();

    // Join: an unknown join key, then the decommissioned node's.
    let stranger = generate_key().unwrap();
    let mut as_stranger = CuratorClient::new(dial(&cluster, &ca, &stranger).await.unwrap());
    let unknown = as_stranger
        .join_node(JoinNodeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown}");
    let mut as_joiner = CuratorClient::new(dial(&cluster, &ca, &join_key).await.unwrap());
    let cuk = as_joiner
        .join_node(JoinNodeRequest::default())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(cuk.cluster_unlock_key, vec![7; 32]);
    let moved = as_joiner
        .join_node(JoinNodeRequest {
            external_address: "elsewhere.example".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(moved.code(), Code::InvalidArgument, "{moved}");
    let trust = Trust::pinned(ca.clone());
    let addr = SocketAddr::new(cluster.nodes[0].address, CURATOR_PORT);
    let server = cluster.nodes[0].id().unwrap();
    let as_node = || async {
        let identity = Identity::new(&node_key, first.node_certificate.clone()).unwrap();
        let config = curator_client_config(Some(identity), &trust).unwrap();
        let channel = channel(addr, &server, config)
            .await
            .map_err(|e| e.to_string())?;
        CuratorLocalClient::new(channel)
            .get_ca_certificate(GetCaCertificateRequest {})
            .await
            .map_err(|e| e.to_string())
    };
    assert!(as_node().await.is_ok(), "the node certificate works before");
    // A node holds a bounded number of Watch streams; one given up frees its slot.
    let node_channel = || async {
        let identity = Identity::new(&node_key, first.node_certificate.clone()).unwrap();
        let config = curator_client_config(Some(identity), &trust).unwrap();
        CuratorClient::new(channel(addr, &server, config).await.unwrap())
    };
    let mut watches = Vec::new();
    for _ in 0..MAX_WATCHES_PER_NODE {
        let mut client = node_channel().await;
        watches.push(client.watch(WatchRequest {}).await.unwrap().into_inner());
    }
    let mut client = node_channel().await;
    let refused = client.watch(WatchRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused}");
    drop(watches.pop());
    Poll::new(Duration::from_millis(50), Duration::from_secs(30))
        .until(async || client.watch(WatchRequest {}).await.map(drop))
        .await
        .expect("a given-up Watch stream's slot was not freed");
    drop(watches);
    owner.decommission(&id).await.unwrap();
    owner
        .wait_retired(&id, RETIREMENT_PATIENCE, |_| {})
        .await
        .unwrap();
    let gone = as_joiner
        .join_node(JoinNodeRequest::default())
        .await
        .unwrap_err();
    assert_eq!(gone.code(), Code::PermissionDenied, "{gone}");
    assert!(gone.message().contains("decommissioned"), "{gone}");
    // Its node certificate is revoked, and the Curator, following the CRL, refuses it in the
    // handshake.
    let refused = Poll::new(Duration::from_millis(100), Duration::from_secs(30))
        .until(async || match as_node().await {
            Ok(_) => Err(()),
            Err(e) => Ok(e),
        })
        .await;
    assert!(refused.is_ok(), "a revoked node certificate was admitted");
    // The last consensus member cannot be decommissioned.
    let last = owner.decommission(&server).await.unwrap_err().to_string();
    assert!(last.contains("last consensus member"), "{last}");

    // A client pinning another CA refuses the server.
    let other_ca = CertificateAuthority::new("another cluster").unwrap();
    let refused = dial(&cluster, other_ca.certificate(), &node_key).await;
    assert!(refused.is_err(), "a server from another CA was accepted");

    // Management without the owner certificate (an ephemeral certificate of the owner key):
    // every method refuses, before it does anything.
    let channel = dial(&cluster, &ca, cluster.owner_key()).await.unwrap();
    let mut management = ManagementClient::new(channel);
    let id = cluster.nodes[0].id().unwrap();
    let denied = [
        management
            .get_register_ticket(GetRegisterTicketRequest {})
            .await
            .map(drop),
        management
            .get_cluster_info(GetClusterInfoRequest {})
            .await
            .map(drop),
        management.get_nodes(GetNodesRequest {}).await.map(drop),
        management
            .approve_node(ApproveNodeRequest {
                pubkey: node_key.verifying_key().to_bytes().to_vec(),
            })
            .await
            .map(drop),
        management
            .update_node_roles(UpdateNodeRolesRequest {
                id: id.clone(),
                consensus_member: Some(false),
                kubernetes_worker: None,
            })
            .await
            .map(drop),
        management
            .decommission_node(DecommissionNodeRequest { id: id.clone() })
            .await
            .map(drop),
        management
            .rotate_register_ticket(RotateRegisterTicketRequest {})
            .await
            .map(drop),
    ];
    for (i, answer) in denied.into_iter().enumerate() {
        let status = answer.expect_err("a Management call without the owner certificate");
        assert_eq!(
            status.code(),
            Code::PermissionDenied,
            "method {i}: {status}"
        );
        assert!(
            status.message().contains("owner certificate"),
            "method {i}: {status}"
        );
    }
    let nodes = owner.clone().nodes().await.unwrap();
    assert!(nodes
        .iter()
        .any(|n| n.id == id && n.state == NodeState::Up as i32));

    // A tampered sealed configuration stops the node with an error naming it.
    cluster.stop(0, nix::sys::signal::Signal::SIGTERM);
    let sealed = cluster.nodes[0].root.sealed_configuration();
    let mut bytes = std::fs::read(&sealed).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x55;
    std::fs::remove_file(&sealed).unwrap();
    std::fs::write(&sealed, &bytes).unwrap();
    let before = std::fs::read_to_string(cluster.nodes[0].log_file())
        .unwrap()
        .len();
    cluster.start(0, &[]).unwrap();
    let status = cluster.wait_exit(0).unwrap();
    assert!(!status.success());
    let log = std::fs::read_to_string(cluster.nodes[0].log_file()).unwrap();
    let log = &log[before..];
    assert!(
        log.contains("the node cannot join its cluster") && log.contains("TPM"),
        "{log}"
    );
}
