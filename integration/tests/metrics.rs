//! Every node of a launched three-node cluster serves `/metrics` that Prometheus's own linter
//! accepts (`promtool check metrics`, exit 0), with the families an operator expects and
//! values that fit the cluster: process figures, the Curator's gRPC calls, the lifecycle done,
//! one etcd leader and no learner, the records by state, and the hosts file's entries.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{SystemTime, UNIX_EPOCH};

use polis::launch::LocalCluster;
use polis_integration::{polis_node_binary, test_logger};

/// The samples of `text` whose series starts with `series` (a name, or a name and the start of
/// its labels), with their values.
fn samples(text: &str, series: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#') && line.starts_with(series))
        .filter_map(|line| {
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// The one sample of `series` in `text`.
fn value(text: &str, series: &str) -> f64 {
    match samples(text, series).as_slice() {
        [(_, v)] => *v,
        found => panic!("one sample of {series} expected, found {found:?}"),
    }
}

/// `promtool check metrics` on `text`: its exit status and what it said.
fn promtool(text: &str) -> (bool, String) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (package prometheus; run scripts/setup.sh)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), said)
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_serves_lint_clean_metrics_that_fit_the_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), 3, &polis_node_binary(), test_logger()).unwrap();
    let owner = cluster.bootstrap().await.unwrap();
    for i in 1..3 {
        cluster.register(i, &owner).await.unwrap();
    }
    owner.clone().nodes().await.unwrap();
    let metrics = |i: usize| cluster.debug(i, "GET", "/metrics", "").unwrap();

    // Once every member is a voter, every Curator has counted three UP nodes, and every node
    // follows its record, exactly one node leads.
    let texts = cluster
        .until(
            0,
            "report a settled three-node cluster in every node's metrics",
            || async {
                let texts: Vec<String> = (0..3).map(metrics).collect();
                let settled = texts.iter().all(|t| {
                    samples(t, "polis_consensus_learner ")
                        == [("polis_consensus_learner".into(), 0.0)]
                        && samples(t, "polis_curator_nodes{state=\"UP\"}")
                            .first()
                            .map(|s| s.1)
                            == Some(3.0)
                        && samples(t, "polis_lifecycle_done ").first().map(|s| s.1) == Some(1.0)
                });
                let leaders: f64 = texts
                    .iter()
                    .map(|t| value(t, "polis_consensus_leader "))
                    .sum();
                (settled && leaders == 1.0).then_some(texts)
            },
        )
        .await
        .unwrap();

    let (mut registrations, mut timed) = (0.0, 0.0);
    for (i, text) in texts.iter().enumerate() {
        let (clean, said) = promtool(text);
        assert!(clean, "promtool check metrics on node {i}: {said}\n{text}");

        // The process.
        assert!(
            value(text, "process_resident_memory_bytes ") > 1e6,
            "node {i}"
        );
        assert!(value(text, "process_open_fds ") > 3.0, "node {i}");
        assert!(value(text, "process_max_fds ") >= value(text, "process_open_fds "));
        assert!(value(text, "process_cpu_seconds_total ") > 0.0, "node {i}");
        let started = value(text, "process_start_time_seconds ");
        assert!(
            started <= now() && started > now() - 3600.0,
            "node {i}: {started}"
        );

        // The actors.
        let handled = value(
            text,
            "polis_actor_messages_handled_total{path=\"/cluster/consensus\"}",
        );
        assert!(handled > 0.0, "node {i}");

        // The lifecycle passed a step, and only one is current.
        let steps = samples(text, "polis_lifecycle_step{");
        assert_eq!(steps.len(), 1, "node {i}: {steps:?}");
        assert_eq!(steps[0].1, 1.0);

        // etcd, as this member sees it, answered within the last minute.
        assert!(value(text, "polis_consensus_raft_term ") >= 1.0, "node {i}");
        assert!(
            value(text, "polis_consensus_db_size_bytes ") > 0.0,
            "node {i}"
        );
        let status_at = value(text, "polis_consensus_last_status_timestamp_seconds ");
        assert!(status_at > now() - 60.0, "node {i}: status at {status_at}");
        let ready = value(text, "polis_consensus_ready_seconds ");
        assert!(
            ready > 0.0 && ready < 60.0,
            "node {i}: etcd ready after {ready} s"
        );

        // Each member holds a node, a Curator and an etcd peer certificate, valid now (and
        // issued for 20 years: within 21 from now).
        for kind in ["node", "curator", "peer"] {
            let series = format!("polis_certificate_expiry_timestamp_seconds{{kind=\"{kind}\"}}");
            let expires = value(text, &series);
            assert!(
                expires > now() && expires < now() + 21.0 * 365.25 * 86400.0,
                "node {i}: its {kind} certificate expires at {expires}"
            );
        }

        // Every node's hosts file: localhost twice and the three nodes.
        assert_eq!(value(text, "polis_hostsfile_entries "), 5.0, "node {i}");
        for state in ["NEW", "STANDBY", "DECOMMISSIONED"] {
            let series = format!("polis_curator_nodes{{state=\"{state}\"}}");
            assert_eq!(value(text, &series), 0.0, "node {i}");
        }

        // The Curator's calls: every registration went through one of them.
        registrations += samples(text, "grpc_server_handled_total{grpc_service=\"polis.curator.Curator\",grpc_method=\"RegisterNode\",grpc_code=\"OK\"}")
            .iter()
            .map(|s| s.1)
            .sum::<f64>();
        // A Curator no one has called yet (the newest member's) has timed nothing.
        timed += samples(text, "grpc_server_handling_seconds_count{")
            .iter()
            .map(|s| s.1)
            .sum::<f64>();
    }
    assert!(
        registrations >= 2.0,
        "two nodes registered, {registrations} counted"
    );
    assert!(timed >= registrations, "{timed} calls timed");
}
