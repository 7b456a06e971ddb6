//! A node decommissioned while it could not hear of it: its watch broke, and its revoked node
//! certificate no longer opens any Curator. It asks JoinNode with its join key, is refused, and
//! stops instead of retrying for good.

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use polis::launch::LocalCluster;
use polis_integration::{polis_node_binary, test_logger, until_following};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_missed_its_decommission_learns_it_from_join_node_and_stops() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), 2, &polis_node_binary(), test_logger()).unwrap();
    let owner = cluster.bootstrap().await.unwrap();
    // Node 1: a worker, following node 0's Curator, the only one.
    let node = cluster.start_registration(1, &owner).await.unwrap();
    cluster.approve(1, &owner, &node).await.unwrap();
    // Frozen before its Watch opens, the node would hear of its decommission from the Watch,
    // not from JoinNode.
    until_following(&cluster, 1).await;

    // Freeze node 1, break its watch by crashing node 0's Curator, decommission it meanwhile.
    let pid = Pid::from_raw(cluster.nodes[1].pid().unwrap());
    kill(pid, Signal::SIGSTOP).unwrap();
    let body = r#"{"path": "/cluster/curator", "how": "crash"}"#;
    cluster.debug(0, "POST", "/debug/kill", body).unwrap();
    let mut owner = cluster
        .until(0, "serve the Curator again", || async {
            let mut owner = cluster.owner(0).await.ok()?;
            owner.nodes().await.ok()?;
            Some(owner)
        })
        .await
        .unwrap();
    owner.decommission(&node.id).await.unwrap();
    let before = std::fs::read_to_string(cluster.nodes[1].log_file())
        .unwrap()
        .len();
    kill(pid, Signal::SIGCONT).unwrap();

    let status = cluster.wait_exit(1).unwrap();
    assert!(!status.success(), "{status:?}");
    let log = std::fs::read_to_string(cluster.nodes[1].log_file()).unwrap();
    let log = &log[before..];
    assert!(log.contains("JoinNode refused this node"), "{log}");
    assert!(log.contains("decommissioned"), "{log}");
}
