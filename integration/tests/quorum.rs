//! Quorum unlock in a five-member cluster (DESIGN §6): after a power cut, three members come
//! back with two absent — each unlocks with two of its peers' shares (threshold ⌈4/2⌉ = 2),
//! etcd regains quorum — and the two others then rejoin through JoinNode.

use nix::sys::signal::Signal;
use polis::launch::LocalCluster;
use polis::proto::common::NodeState;
use polis_integration::{log_of, polis_node_binary, test_logger, until_cuks_escrowed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_members_come_back_cold_with_two_absent() {
    let dir = tempfile::tempdir().unwrap();
    let start = std::time::Instant::now();
    let phase = |what: &str| eprintln!("{:>6.1} s  {what}", start.elapsed().as_secs_f64());
    let mut cluster =
        LocalCluster::create(dir.path(), 5, &polis_node_binary(), test_logger()).unwrap();
    let owner = cluster.bootstrap().await.unwrap();
    for i in 1..5 {
        cluster.register(i, &owner).await.unwrap();
    }
    until_cuks_escrowed(&cluster, 5).await;

    phase("five members, every CUK escrowed");
    let before: Vec<usize> = (0..5).map(|i| log_of(&cluster, i).len()).collect();
    for i in 0..5 {
        cluster.stop(i, Signal::SIGKILL);
    }
    for i in 0..3 {
        cluster.start(i, &[]).unwrap();
    }
    for i in 0..3 {
        cluster
            .until(i, "serve the Curator after a cold start", || async {
                let mut owner = cluster.owner(i).await.ok()?;
                owner.nodes().await.ok()
            })
            .await
            .unwrap();
        let log = log_of(&cluster, i);
        assert!(
            log[before[i]..].contains("(quorum unlock)"),
            "node {i} did not unlock with its peers' shares"
        );
    }
    phase("three members back after the power cut");
    for i in 3..5 {
        cluster.start(i, &[]).unwrap();
    }
    let mut owner = cluster.owner(0).await.unwrap();
    for (i, &from) in before.iter().enumerate().skip(3) {
        cluster
            .until(i, "rejoin", || async {
                log_of(&cluster, i)[from..]
                    .contains("data partition mounted")
                    .then_some(())
            })
            .await
            .unwrap();
    }
    phase("the other two rejoined");
    let nodes = owner.nodes().await.unwrap();
    assert_eq!(nodes.len(), 5, "no record lost");
    assert!(nodes.iter().all(|n| n.state == NodeState::Up as i32));
}
