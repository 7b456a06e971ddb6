//! Tier 3 (DESIGN §7): a three-node cluster in network namespaces, real etcd and swtpm:
//! bootstrap, register, approve, promote; restarts into join; the loss of the first node; a cold
//! start of the whole cluster through quorum unlock; decommissioning a member.

use nix::sys::signal::Signal;
use polis::launch::LocalCluster;
use polis::owner::Owner;
use polis::proto::api::node_parameters::Cluster;
use polis::proto::common::NodeState;
use polis_integration::{
    log_of, polis_node_binary, test_logger, until_cuks_escrowed, RETIREMENT_PATIENCE,
};

/// etcd's members as node 0's etcd reports them: (name, is_learner).
async fn etcd_members(cluster: &LocalCluster, i: usize) -> Option<Vec<(String, bool)>> {
    let mut client = polis::consensus::connect(&cluster.nodes[i].root)
        .await
        .ok()?;
    let members = client.member_list().await.ok()?;
    Some(
        members
            .members()
            .iter()
            .map(|m| (m.name().to_owned(), m.is_learner()))
            .collect(),
    )
}

/// The value at `key` in node 0's etcd.
async fn etcd_value(cluster: &LocalCluster, key: String) -> Option<Vec<u8>> {
    let mut client = polis::consensus::connect(&cluster.nodes[0].root)
        .await
        .unwrap();
    let got = client.get(key, None).await.unwrap();
    got.kvs().first().map(|kv| kv.value().to_vec())
}

/// Whether node 0's etcd records the issue of certificate `der` (`/cluster-pki/issued/<serial>`).
async fn issue_recorded(cluster: &LocalCluster, der: &[u8]) -> bool {
    let serial = polis::pki::hex(&polis::pki::serial_of(der).unwrap());
    let key = format!("{}issued/{serial}", polis::issuer::NAMESPACE);
    etcd_value(cluster, key).await.as_deref() == Some(der)
}

/// The owner's client on node `i`, once its Curator answers.
async fn curator_on(cluster: &LocalCluster, i: usize) -> Owner {
    cluster
        .until(i, "serve the Curator", || async {
            let mut owner = cluster.owner(i).await.ok()?;
            owner.nodes().await.ok()?;
            Some(owner)
        })
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_form_a_cluster_survive_restarts_and_the_loss_of_one() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), 3, &polis_node_binary(), test_logger()).unwrap();
    let owner = cluster.bootstrap().await.unwrap();
    // Every certificate the bootstrap and the owner's escrow handed out is recorded by then.
    let record = format!(
        "{}nodes/{}",
        polis::curator::records::NAMESPACE,
        cluster.nodes[0].id().unwrap()
    );
    let record = etcd_value(&cluster, record).await.expect("node 0's record");
    let record = <polis::proto::private::Node as prost::Message>::decode(&record[..]).unwrap();
    let node_certificate = polis::pki::NodeCredentials::load(&cluster.nodes[0].root)
        .unwrap()
        .unwrap()
        .certificate;
    let owner_certificate = polis::owner::Credentials::load(cluster.dir())
        .unwrap()
        .certificate;
    for (what, der) in [
        ("node", node_certificate),
        ("Curator", record.curator_certificate),
        ("owner", owner_certificate),
    ] {
        assert!(
            issue_recorded(&cluster, &der).await,
            "the {what} certificate"
        );
    }
    let mut ids = vec![cluster.nodes[0].id().unwrap()];
    for i in 1..3 {
        ids.push(cluster.register(i, &owner).await.unwrap());
        // CommitNode answered the node its certificate once the issuer had recorded it.
        let certificate = polis::pki::NodeCredentials::load(&cluster.nodes[i].root)
            .unwrap()
            .unwrap()
            .certificate;
        assert!(
            issue_recorded(&cluster, &certificate).await,
            "node {i}'s certificate"
        );
    }
    let nodes = owner.clone().nodes().await.unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n.state == NodeState::Up as i32));
    // Enrolled, the registered nodes keep no register ticket on their ESPs.
    for node in &cluster.nodes[1..] {
        let esp = polis::storage::Esp::new(node.root.clone());
        let params = esp.parameters().unwrap();
        let Some(Cluster::ClusterRegister(register)) = params.cluster else {
            panic!(
                "node {} lost its register parameters",
                node.root.path().display()
            );
        };
        assert!(
            register.register_ticket.is_empty(),
            "the ticket stayed on {}",
            esp.parameters_path().display()
        );
    }

    // etcd: three voters.
    cluster
        .until(0, "have three etcd voters", || async {
            let members = etcd_members(&cluster, 0).await?;
            (members.len() == 3 && members.iter().all(|(_, learner)| !learner)).then_some(())
        })
        .await
        .unwrap();
    // Every hosts file lists all three.
    for node in &cluster.nodes {
        let hosts = std::path::Path::new("/etc/netns")
            .join(&node.namespace)
            .join("hosts");
        cluster
            .until(0, "list every node in every hosts file", || async {
                let text = std::fs::read_to_string(&hosts).ok()?;
                ids.iter()
                    .all(|id| text.contains(id.as_str()))
                    .then_some(())
            })
            .await
            .unwrap();
    }
    // Every node serves a Curator whose certificate verifies against the pinned CA for its ID.
    for i in 0..3 {
        curator_on(&cluster, i).await;
    }

    // Restart each node in turn: it rejoins through unseal + JoinNode with the same identity.
    for (i, id) in ids.iter().enumerate() {
        cluster.stop(i, Signal::SIGTERM);
        cluster.start(i, &[]).unwrap();
        curator_on(&cluster, i).await;
        assert_eq!(&cluster.nodes[i].id().unwrap(), id);
    }

    // Lose node 0: the others answer; node 0 comes back.
    cluster.stop(0, Signal::SIGKILL);
    let mut survivor = curator_on(&cluster, 1).await;
    assert_eq!(survivor.nodes().await.unwrap().len(), 3);
    cluster.start(0, &[]).unwrap();
    curator_on(&cluster, 0).await;
    let log = log_of(&cluster, 0);
    assert!(log.contains("rejoining the cluster"), "{log}");

    // Quorum unlock: once every member's peers hold confirmed shares of its CUK, no member
    // keeps its own CUK sealed.
    until_cuks_escrowed(&cluster, 3).await;
    // A power cut of the whole cluster: no Curator is left to hand out CUKs. A member started
    // alone cannot unlock (one stolen machine cannot), and says why; with its peers back, the
    // members unlock each other with their shares, etcd regains quorum, and every Curator
    // answers.
    let before: Vec<usize> = (0..3).map(|i| log_of(&cluster, i).len()).collect();
    for i in 0..3 {
        cluster.stop(i, Signal::SIGKILL);
    }
    cluster.start(0, &[]).unwrap();
    cluster
        .until(0, "say why it cannot unlock alone", || async {
            let log = log_of(&cluster, 0);
            let log = &log[before[0]..];
            (log.contains("cannot unlock yet") && log.contains("0 of the 1 shares needed"))
                .then_some(())
        })
        .await
        .unwrap();
    assert!(
        !log_of(&cluster, 0)[before[0]..].contains("data partition mounted"),
        "node 0 unlocked alone"
    );
    for i in 1..3 {
        cluster.start(i, &[]).unwrap();
    }
    for i in 0..3 {
        curator_on(&cluster, i).await;
    }
    let quorum = (0..3)
        .filter(|&i| log_of(&cluster, i)[before[i]..].contains("(quorum unlock)"))
        .count();
    assert!(
        quorum >= 2,
        "a quorum of members had to unlock with their peers' shares, {quorum} did"
    );
    for i in 0..3 {
        let log = log_of(&cluster, i);
        assert!(
            !log[before[i]..].contains("unlocks with its sealed one"),
            "node {i} still held its own CUK"
        );
    }
    let mut owner = curator_on(&cluster, 2).await;
    let nodes = owner.nodes().await.unwrap();
    assert_eq!(nodes.len(), 3, "no record lost");
    assert!(nodes.iter().all(|n| n.state == NodeState::Up as i32));
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(&cluster.nodes[i].id().unwrap(), id);
    }

    // Decommission node 2 right after the cold start (etcd may still call itself unhealthy):
    // the call returns once the record says so. It leaves etcd, stops by itself, drops out of
    // the hosts files, and is refused when it boots again. The reconcilers that retire it are
    // crashed on both other members at once: the next incarnation finishes the work.
    let mut owner = curator_on(&cluster, 0).await;
    owner.decommission(&ids[2]).await.unwrap();
    // A member's Curator serves before its lifecycle adds `/cluster/decommission` after it, so
    // each is crashed once it runs.
    for i in [0, 1] {
        let body = r#"{"path": "/cluster/decommission", "how": "crash"}"#;
        cluster
            .until(i, "run its decommission reconciler", || async {
                cluster.debug(i, "POST", "/debug/kill", body).ok()
            })
            .await
            .unwrap();
    }
    owner
        .wait_retired(&ids[2], RETIREMENT_PATIENCE, |waiting_on| {
            eprintln!("retiring node 2: waiting on {waiting_on}")
        })
        .await
        .unwrap();
    let status = cluster.wait_exit(2).unwrap();
    assert!(!status.success(), "{status:?}");
    cluster
        .until(0, "have two etcd voters", || async {
            let members = etcd_members(&cluster, 0).await?;
            (members.len() == 2 && !members.iter().any(|(name, _)| name == &ids[2])).then_some(())
        })
        .await
        .unwrap();
    let hosts = std::path::Path::new("/etc/netns")
        .join(&cluster.nodes[0].namespace)
        .join("hosts");
    cluster
        .until(0, "forget node 2 in its hosts file", || async {
            let text = std::fs::read_to_string(&hosts).ok()?;
            (!text.contains(ids[2].as_str())).then_some(())
        })
        .await
        .unwrap();
    let before = log_of(&cluster, 2).len();
    cluster.start(2, &[]).unwrap();
    let status = cluster.wait_exit(2).unwrap();
    assert!(!status.success(), "{status:?}");
    let log = log_of(&cluster, 2);
    assert!(
        log[before..].contains("decommissioned"),
        "{}",
        &log[before..]
    );
    assert_eq!(owner.nodes().await.unwrap().len(), 3, "the record stays");
}
