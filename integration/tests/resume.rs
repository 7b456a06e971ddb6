//! Every enrolment step survives a `kill -9`: the node is killed right after each step (by the
//! `--test-crash-after` hook, a SIGKILL of itself), restarted, and resumes from its sealed journal
//! to the end, with one identity throughout. So does every step of a join, and of becoming a
//! consensus member: after each kill and a plain boot, every invariant of the chaos soak holds
//! (nothing half done: the records, certificates, etcd's voters, the trees).

use std::os::unix::process::ExitStatusExt;

use polis::chaos::{check, Expected};
use polis::launch::LocalCluster;
use polis::proto::api::node_parameters::{Cluster, ClusterRegister};
use polis::proto::common::NodeState;
use polis_integration::{polis_node_binary, test_logger};

/// Start node `i` with the hook at `step`, and check that the hook killed it.
fn crash_after(cluster: &mut LocalCluster, i: usize, step: &str) {
    cluster.start(i, &["--test-crash-after", step]).unwrap();
    let status = cluster.wait_exit(i).unwrap();
    assert_eq!(status.signal(), Some(9), "{step}: {status:?}");
    let log = std::fs::read_to_string(cluster.nodes[i].log_file()).unwrap();
    assert!(log.contains(&format!("after: {step}")), "{step}: {log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_and_register_resume_after_a_kill_at_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), 2, &polis_node_binary(), test_logger()).unwrap();

    // Bootstrap, killed after every step. After the last the node is a sealed one-node cluster:
    // its next boot is a join that no other Curator can answer, so it unlocks with its sealed
    // CUK (a cold start).
    cluster
        .write_parameters(
            0,
            Cluster::ClusterBootstrap(polis::proto::api::node_parameters::ClusterBootstrap {
                owner_public_key: cluster.owner_key().verifying_key().to_bytes().to_vec(),
            }),
        )
        .unwrap();
    for step in [
        "bootstrap:keys",
        "bootstrap:formatted",
        "bootstrap:committed",
        "bootstrap:sealed",
    ] {
        crash_after(&mut cluster, 0, step);
    }
    let bootstrap_id = cluster.nodes[0].id().unwrap();
    let owner = cluster.bootstrap().await.unwrap();
    assert_eq!(cluster.nodes[0].id().unwrap(), bootstrap_id);
    let log = std::fs::read_to_string(cluster.nodes[0].log_file()).unwrap();
    assert!(log.contains("resuming an interrupted enrolment"), "{log}");
    assert!(log.contains("(cold start)"), "{log}");

    // Register node 1, killed after every step, approved while it waits.
    let mut o = owner.clone();
    let info = o.cluster_info().await.unwrap();
    cluster
        .write_parameters(
            1,
            Cluster::ClusterRegister(ClusterRegister {
                cluster_directory: info.cluster_directory,
                register_ticket: o.ticket().await.unwrap(),
                ca_certificate: info.ca_certificate,
            }),
        )
        .unwrap();
    for step in ["register:keys", "register:formatted", "register:registered"] {
        crash_after(&mut cluster, 1, step);
    }
    let nodes = o.nodes().await.unwrap();
    let new = nodes
        .iter()
        .find(|n| n.state == NodeState::New as i32)
        .expect("node 1 registered before its crash");
    o.approve(&new.pubkey).await.unwrap();
    for step in ["register:committed", "register:sealed"] {
        crash_after(&mut cluster, 1, step);
    }
    let id = cluster.nodes[1].id().unwrap();
    assert_eq!(id, new.id);
    // The last boot is a join: the sealed configuration replaced the journal.
    assert!(!cluster.nodes[1].root.enrolment_journal().exists());
    cluster.start(1, &[]).unwrap();
    cluster
        .until(1, "rejoin", || async {
            let log = std::fs::read_to_string(cluster.nodes[1].log_file()).ok()?;
            log.contains("rejoining the cluster").then_some(())
        })
        .await
        .unwrap();
    let nodes = o.nodes().await.unwrap();
    assert_eq!(nodes.len(), 2, "no record lost or duplicated");
    assert!(nodes.iter().all(|n| n.state == NodeState::Up as i32));
    let expected = Expected {
        records: nodes.iter().map(|n| (n.id.clone(), n.state)).collect(),
        running: [0, 1].into(),
        ..Expected::default()
    };
    whole(&cluster, &expected).await;

    // A join, killed after each of its steps, then booted plainly.
    for step in ["join:unlocked", "join:mounted", "join:hostsfile"] {
        cluster.stop(1, nix::sys::signal::Signal::SIGKILL);
        crash_after(&mut cluster, 1, step);
        cluster.start(1, &[]).unwrap();
        whole(&cluster, &expected).await;
    }

    // Becoming a consensus member, killed after sealing the CUK beside the node's key, then
    // after joining etcd; then a member's join, killed once its etcd runs.
    cluster.stop(1, nix::sys::signal::Signal::SIGKILL);
    cluster
        .start(1, &["--test-crash-after", "role:cuk-sealed"])
        .unwrap();
    whole(&cluster, &expected).await;
    let owner = cluster.owner(0).await.unwrap();
    cluster.make_consensus_member(1, &owner, &id).await.unwrap();
    let status = cluster.wait_exit(1).unwrap();
    assert_eq!(status.signal(), Some(9), "role:cuk-sealed: {status:?}");
    for step in ["role:etcd-joined", "join:member"] {
        crash_after(&mut cluster, 1, step);
    }
    cluster.start(1, &[]).unwrap();
    whole(&cluster, &expected).await;
    let members = polis::consensus::connect(&cluster.nodes[0].root)
        .await
        .unwrap()
        .member_list()
        .await
        .unwrap();
    assert_eq!(members.members().len(), 2, "node 1 is an etcd member");
}

/// Wait until every invariant of the chaos soak holds.
async fn whole(cluster: &LocalCluster, expected: &Expected) {
    let mut last = String::new();
    for _ in 0..600 {
        match check(cluster, expected).await {
            Ok(()) => return,
            Err(e) => last = e,
        }
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    panic!("the cluster is not whole again: {last}");
}
