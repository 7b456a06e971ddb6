//! The benchmark suite's smoke run: one round of every start measure and a launch with workers,
//! gating nothing on time. Each measure must come back with a sample (and its floor's, where it
//! has one: 20 registrations through the Curator among them), Polis's overhead must be a part
//! of its total, and the five-node launch (three
//! consensus members, two workers approved at once) must bring every node up. The TPM's
//! operations come back against their floor.

use polis::bench::{run, BenchConfig};
use polis_integration::polis_node_binary;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_round_of_every_measure_comes_back_complete() {
    let dir = tempfile::tempdir().unwrap();
    let config = BenchConfig {
        dir: dir.path().join("bench"),
        binary: polis_node_binary(),
        rounds: 1,
        launch_sizes: vec![5],
    };
    let report = run(&config, |line| eprintln!("bench: {line}"))
        .await
        .unwrap();
    eprintln!("{}", report.table());
    let get = |prefix: &str| {
        report
            .measures
            .iter()
            .find(|m| m.name.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix} in {report:?}"))
    };
    // (measure, samples, the floor's samples): one per round, one per registration for the P5
    // steps, one per floor iteration for etcd's pacing.
    for (name, samples, floored) in [
        ("P1 cold", 1, 1),
        ("P1 overhead", 1, 0),
        ("P2 restart", 1, 1),
        ("P2 overhead", 1, 0),
        ("P1, P2 process start", 1, 0),
        ("P5 registrations per second", 1, 1),
        ("P5 registration latency", 1, 0),
        ("P5 etcd put+get, 1 ms idle vs busy", 20, 20),
        ("P5 step: TLS connection", 20, 0),
        ("P5 step: CommitNode", 20, 0),
        ("P5 inside the Curator: RegisterNode", 1, 0),
        ("P5 inside the Curator: ApproveNode", 1, 0),
        ("P5 inside the Curator: CommitNode", 1, 0),
        ("P6 idle RSS, node", 1, 1),
        ("P6 idle RSS, swtpm", 1, 0),
        ("launch 5 nodes, 3 consensus", 1, 0),
        ("TPM first seal", 1, 1),
        ("TPM seal", 1, 1),
        ("TPM unseal, PCR policy", 1, 1),
        ("TPM unseal on a new connection", 1, 1),
    ] {
        let m = get(name);
        assert_eq!(m.polis.len(), samples, "{m:?}");
        assert!(m.polis.iter().all(|p| *p > 0.0), "{m:?}");
        assert_eq!(m.floor.len(), floored, "{m:?}");
        assert!(m.floor.iter().all(|f| *f > 0.0), "{m:?}");
    }
    assert!(get("P1 overhead").polis[0] < get("P1 cold").polis[0]);
    assert!(get("P2 overhead").polis[0] < get("P2 restart").polis[0]);
    // The process start (ms) is part of the restart (s).
    assert!(get("P1, P2 process start").polis[0] / 1000.0 < get("P2 restart").polis[0]);
    // Resident memory in MiB: a running process holds at least one.
    assert!(get("P6 idle RSS, node").polis[0] > 1.0);
    // A call's time inside the Curator is part of the caller's time for it.
    let median = |name: &str| {
        let mut v = get(name).polis.clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let inside = get("P5 inside the Curator: CommitNode").polis[0];
    assert!(inside < get("P5 registration latency").polis[0], "{inside}");
    assert!(median("P5 step: CommitNode") > 0.0);
    assert_eq!(report.json()["measures"].as_array().unwrap().len(), 22);
}
