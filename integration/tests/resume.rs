//! Every enrolment step survives a `kill -9`: the node is killed right after each step (by the
//! `--test-crash-after` hook, a SIGKILL of itself), restarted, and resumes from its sealed journal
//! to the end, with one identity throughout. So does every step of a join, and of becoming a
//! consensus member: after each kill and a plain boot, every invariant of the chaos soak holds
//! (nothing half done: the records, certificates, etcd's voters, the trees).

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use polis::chaos::{check, Expected};
use polis::launch::LocalCluster;
use polis::pki::NodeCredentials;
use polis::poll::{holds, Poll};
use polis::proto::api::node_parameters::{Cluster, ClusterRegister};
use polis::proto::common::NodeState;
use polis_integration::{boot_failing, log_of, polis_node_binary, test_logger};

/// What a node logs when it formats over a partition whose keys no journal kept.
const FORMATTED_AGAIN: &str = "formatting the partition again";

/// The node certificate that node `id`'s record in etcd holds (read through node 0's etcd).
async fn recorded_certificate(cluster: &LocalCluster, id: &str) -> Vec<u8> {
    use prost::Message;
    let mut client = polis::consensus::connect(&cluster.nodes[0].root)
        .await
        .unwrap();
    let key = format!("{}nodes/{id}", polis::curator::records::NAMESPACE);
    let got = client.get(key, None).await.unwrap();
    let value = got.kvs().first().expect("node 0's record").value();
    polis::proto::private::Node::decode(value)
        .unwrap()
        .node_certificate
}

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
    // its next boot is a join with no other Curator to ask, so it unlocks with its sealed CUK.
    cluster
        .write_parameters(
            0,
            Cluster::ClusterBootstrap(polis::proto::api::node_parameters::ClusterBootstrap {
                owner_public_key: cluster.owner_key().verifying_key().to_bytes().to_vec(),
                ..Default::default()
            }),
        )
        .unwrap();
    for step in [
        "bootstrap:formatted",
        "bootstrap:journaled",
        "bootstrap:committed",
        "bootstrap:sealed",
    ] {
        crash_after(&mut cluster, 0, step);
        if step == "bootstrap:committed" {
            // The credentials are saved beside the record's transaction, not durably: as if a
            // power cut had left their files empty, the next try must take the recorded ones.
            let dir = cluster.nodes[0].root.node_credentials();
            for file in std::fs::read_dir(&dir).unwrap() {
                std::fs::File::create(file.unwrap().path()).unwrap();
            }
        }
    }
    let bootstrap_id = cluster.nodes[0].id().unwrap();
    let owner = cluster.bootstrap().await.unwrap();
    assert_eq!(
        NodeCredentials::load(&cluster.nodes[0].root)
            .unwrap()
            .expect("node 0's credentials")
            .certificate,
        recorded_certificate(&cluster, &bootstrap_id).await,
        "the node serves the certificate its record holds"
    );
    assert_eq!(cluster.nodes[0].id().unwrap(), bootstrap_id);
    let log = std::fs::read_to_string(cluster.nodes[0].log_file()).unwrap();
    assert!(log.contains("resuming an interrupted enrolment"), "{log}");
    // A one-node cluster's restart asks no Curator: its own cannot answer yet.
    assert!(log.contains("no other Curator to ask"), "{log}");
    assert!(!log.contains("no Curator answered"), "{log}");
    // Killed before its journal kept the keys, the first try's format was done over.
    assert!(log.contains(FORMATTED_AGAIN), "{log}");

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
    for step in [
        "register:formatted",
        "register:journaled",
        "register:registered",
    ] {
        crash_after(&mut cluster, 1, step);
    }
    let log = std::fs::read_to_string(cluster.nodes[1].log_file()).unwrap();
    assert!(log.contains(FORMATTED_AGAIN), "{log}");
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

/// The Curator's role change and the decommission reconciler survive a kill after each of
/// their steps. The Curator killed after adding a learner (its role not yet recorded) leaves a
/// seat in etcd that the owner's repeated call completes; the reconcilers of both remaining
/// members, killed after revoking and after removing the member, hand the retirement on until
/// it is done. After each, every invariant of the chaos soak holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_change_and_retirement_resume_after_a_kill_at_every_step() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), 3, &polis_node_binary(), test_logger()).unwrap();
    let owner = cluster.bring_up(2, 0).await.unwrap();
    let node = cluster.start_registration(2, &owner).await.unwrap();
    cluster.approve(2, &owner, &node).await.unwrap();
    let mut expected = Expected {
        records: owner
            .clone()
            .nodes()
            .await
            .unwrap()
            .iter()
            .map(|n| (n.id.clone(), n.state))
            .collect(),
        running: [0, 1, 2].into(),
        ..Expected::default()
    };
    whole(&cluster, &expected).await;

    // The role change, its Curator killed once the learner is in etcd.
    restart_armed(&mut cluster, 0, "curator:learner-added", &expected).await;
    let mut on_0 = cluster.owner(0).await.unwrap();
    // etcd refuses member changes for a while after its start: ask until the hook fires.
    PATIENCE
        .until(async || {
            if died_at(&log_of(&cluster, 0), "curator:learner-added") {
                return Ok(());
            }
            let answer = on_0.make_consensus_member(&node.id).await;
            assert!(
                answer.is_err(),
                "the Curator answered a role change it died in"
            );
            Err("the hook did not fire")
        })
        .await
        .unwrap();
    let status = cluster.wait_exit(0).unwrap();
    assert_eq!(
        status.signal(),
        Some(9),
        "curator:learner-added: {status:?}"
    );
    cluster.start(0, &[]).unwrap();
    let members = cluster
        .until(0, "list the etcd members", || async {
            let mut client = polis::consensus::connect(&cluster.nodes[0].root)
                .await
                .ok()?;
            client.member_list().await.ok()
        })
        .await
        .unwrap();
    let learners = members.members().iter().filter(|m| m.is_learner()).count();
    assert_eq!(learners, 1, "killed after adding node 2's learner");
    cluster
        .make_consensus_member(2, &owner, &node.id)
        .await
        .unwrap();
    whole(&cluster, &expected).await;

    // Node 2, now a voter, dies and is decommissioned; whichever member retires it is killed
    // after revoking its certificates, then after removing its etcd member, until it is done.
    let certificate = NodeCredentials::load(&cluster.nodes[2].root)
        .unwrap()
        .unwrap()
        .certificate;
    for i in [0, 1] {
        restart_armed(&mut cluster, i, "decommission:revoked", &expected).await;
    }
    cluster.stop(2, nix::sys::signal::Signal::SIGKILL);
    expected.running.remove(&2);
    cluster
        .until(0, "decommission node 2", || {
            let (mut owner, id) = (owner.clone(), node.id.clone());
            async move { owner.decommission(&id).await.ok() }
        })
        .await
        .unwrap();
    expected
        .records
        .insert(node.id.clone(), NodeState::Decommissioned as i32);
    expected.retired.insert(node.id.clone(), certificate);
    let mut armed = ["decommission:revoked"; 2].map(Some);
    let mut fired = std::collections::BTreeSet::new();
    PATIENCE
        .until(async || {
            for i in [0, 1] {
                if cluster.is_running(i) {
                    continue;
                }
                let step = armed[i].expect("only an armed node is killed");
                let log = log_of(&cluster, i);
                assert!(died_at(&log, step), "node {i} died, not at {step}: {log}");
                fired.insert(step);
                armed[i] =
                    (step == "decommission:revoked").then_some("decommission:member-removed");
                match armed[i] {
                    Some(next) => cluster.start(i, &["--test-crash-after", next]).unwrap(),
                    None => cluster.start(i, &[]).unwrap(),
                }
            }
            check(&cluster, &expected).await?;
            holds(
                fired.len() == 2,
                &format!("retired, but only {fired:?} fired"),
            )
        })
        .await
        .unwrap();
    whole(&cluster, &expected).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_formatted_partition_no_journal_kept_is_refused_at_every_boot() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), 1, &polis_node_binary(), test_logger()).unwrap();
    cluster.bootstrap().await.unwrap();
    cluster.stop(0, nix::sys::signal::Signal::SIGTERM);
    let root = cluster.nodes[0].root.clone();
    let kept = root.data().join("kept");
    std::fs::write(&kept, b"a member's data").unwrap();
    // The ESP loses the sealed configuration; the bootstrap parameters are there again: the
    // next boot begins a new enrolment over a partition whose keys no journal of its holds.
    std::fs::remove_file(root.sealed_configuration()).unwrap();
    for boot in 1..=2 {
        cluster.write_bootstrap_parameters().unwrap();
        let log = boot_failing(&mut cluster, 0);
        assert!(log.contains("already formatted"), "boot {boot}: {log}");
        assert!(!log.contains(FORMATTED_AGAIN), "boot {boot}: {log}");
        // Refused before it was marked: the next boot refuses it again, not formats it over.
        assert!(!root.formatting_mark().exists(), "boot {boot}");
        assert_eq!(
            std::fs::read(&kept).unwrap(),
            b"a member's data",
            "boot {boot}"
        );
    }
}

/// Restart node `i` with the hook armed at `step`, and wait until the cluster is whole again.
async fn restart_armed(cluster: &mut LocalCluster, i: usize, step: &str, expected: &Expected) {
    cluster.stop(i, nix::sys::signal::Signal::SIGTERM);
    cluster.start(i, &["--test-crash-after", step]).unwrap();
    whole(cluster, expected).await;
}

/// Whether the hook last killed the node whose log is `log` at `step`.
fn died_at(log: &str, step: &str) -> bool {
    log.lines()
        .rev()
        .find(|line| line.contains("test hook"))
        .is_some_and(|line| line.contains(&format!("after: {step}")))
}

/// How long a cluster may take to be whole again.
const PATIENCE: Poll = Poll::new(Duration::from_millis(250), Duration::from_secs(180));

/// Wait until every invariant of the chaos soak holds.
async fn whole(cluster: &LocalCluster, expected: &Expected) {
    PATIENCE
        .until(async || check(cluster, expected).await)
        .await
        .unwrap_or_else(|last| panic!("the cluster is not whole again: {last}"));
}
