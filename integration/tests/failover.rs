//! Failover: three consensus members; four rounds each lose one member (`kill -9`), the etcd
//! leader every other round. A survivor's Curator answers again, and the lost node, booted
//! again, is back (UP, a voter, healthy) every time. `polisctl failover` runs the same rounds
//! at any count and reports the times.

use polis::chaos::failover;
use polis::launch::LocalCluster;
use polis_integration::{polis_node_binary, test_logger};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_any_member_the_leader_included_fails_over_and_it_comes_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), 3, &polis_node_binary(), test_logger()).unwrap();
    cluster.bring_up(3, 0).await.unwrap();
    let report = failover(&mut cluster, 4, |line| eprintln!("failover: {line}")).await;
    eprintln!("{}", report.table());
    assert_eq!(report.failure, None);
    assert_eq!(report.rounds.len(), 4);
    assert_eq!(
        report.rounds.iter().filter(|r| r.leader).count(),
        2,
        "the leader, every other round"
    );
}
