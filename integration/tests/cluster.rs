//! Tier 3 (DESIGN §7): a three-node cluster in network namespaces, real etcd and swtpm.

use std::time::Duration;

use polis::launch::LocalCluster;
use polis::proto::common::NodeState;
use polis_integration::{polis_node_binary, test_logger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_register_and_become_voters() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), 3, &polis_node_binary(), test_logger()).unwrap();
    let owner = cluster.bootstrap().await.unwrap();
    let mut ids = vec![cluster.nodes[0].id().unwrap()];
    for i in 1..3 {
        ids.push(cluster.register(i, &owner).await.unwrap());
    }
    let mut o = owner.clone();
    let nodes = o.nodes().await.unwrap();
    assert_eq!(nodes.len(), 3);
    assert!(nodes.iter().all(|n| n.state == NodeState::Up as i32));
    // Every hosts file lists all three.
    for node in &cluster.nodes {
        let ns_hosts = std::path::Path::new("/etc/netns")
            .join(&node.namespace)
            .join("hosts");
        cluster
            .until(0, "list every node in the hosts files", || {
                let (ids, ns_hosts) = (ids.clone(), ns_hosts.clone());
                async move {
                    let text = std::fs::read_to_string(&ns_hosts).ok()?;
                    ids.iter()
                        .all(|id| text.contains(id.as_str()))
                        .then_some(())
                }
            })
            .await
            .unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
}
