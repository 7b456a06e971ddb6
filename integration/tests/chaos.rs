//! A short chaos soak, as CI runs it: three consensus members and a spare slot, 60 faults from
//! a fixed seed (actor crashes and brutal kills, `kill -9` of polis-node, etcd and swtpm, paused
//! nodes, power cuts) while the owner's workload runs and the spare slot registers, promotes and
//! decommissions nodes. Every invariant holds again after every fault. `polisctl chaos` runs
//! the same soak at any length.

use polis::chaos::{soak, ChaosConfig};
use polis::launch::LocalCluster;
use polis_integration::{polis_node_binary, test_logger};

const MEMBERS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_seeded_faults_break_no_invariant() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), MEMBERS + 1, &polis_node_binary(), test_logger()).unwrap();
    cluster.bring_up(MEMBERS, 0).await.unwrap();
    let config = ChaosConfig {
        kills: 60,
        seed: 20261201,
        spare: Some(MEMBERS),
        cycle_every: 10,
        ..ChaosConfig::default()
    };
    let report = soak(&mut cluster, &config, |line| eprintln!("chaos: {line}")).await;
    eprintln!("{}", report.table());
    assert_eq!(report.violation, None, "seed {}", config.seed);
    assert_eq!(report.outcomes.len(), config.kills);
    let kinds: std::collections::BTreeSet<_> = report.outcomes.iter().map(|o| o.kind).collect();
    assert!(
        kinds.len() >= 6,
        "the schedule covers the fault kinds: {kinds:?}"
    );
    assert!(report.workload.registered >= 3 && report.workload.decommissioned >= 2);
    assert!(report.workload.calls_ok > 0);
    assert!(report.workload.watch_events > 0, "the Watch was held open");
}
