//! Every enrolment step survives a `kill -9`: the node is killed right after each step (by the
//! `--test-crash-after` hook, a SIGKILL of itself), restarted, and resumes from its sealed journal
//! to the end, with one identity throughout.

use std::os::unix::process::ExitStatusExt;

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
}
