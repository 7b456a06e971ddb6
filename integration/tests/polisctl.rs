//! `polisctl` for a cluster it did not launch: the cluster is launched in one directory; a fresh
//! configuration directory and a fresh credentials directory, with only the cluster's endpoint
//! and the owner key, take ownership (refused for a wrong CA fingerprint) and then manage it,
//! first through the clusters file alone (the node's last-seen time and certificate expiry among what it lists), then
//! through --endpoint and --credentials alone.

use std::os::unix::fs::PermissionsExt;

use polis::launch::LocalCluster;
use polis::owner::{CA_FILE, KEY_FILE};
use polis::pki::fingerprint;
use polis_integration::{polis_node_binary, polisctl, test_logger, until_following};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_launched_elsewhere_is_managed_from_its_endpoint_and_credentials() {
    let launched = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(launched.path(), 1, &polis_node_binary(), test_logger()).unwrap();
    let began = polis::pki::unix_now();
    let mut owner = cluster.bootstrap().await.unwrap();
    until_following(&cluster, 0).await;
    let endpoint = cluster.nodes[0].address.to_string();
    let key = launched.path().join(KEY_FILE);
    let ca = std::fs::read(launched.path().join(CA_FILE)).unwrap();

    let config = tempfile::tempdir().unwrap();
    let credentials = config.path().join("lab");
    let credentials_arg = credentials.to_str().unwrap();
    let take = |fingerprint: &str| {
        polisctl(
            config.path(),
            &[
                "--endpoint",
                &endpoint,
                "--credentials",
                credentials_arg,
                "take-ownership",
                "--owner-key",
                key.to_str().unwrap(),
                "--ca-fingerprint",
                fingerprint,
                "--name",
                "lab",
            ],
        )
    };
    let wrong = take(&"00".repeat(32));
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains(&fingerprint(&ca)));
    assert!(!credentials.join(KEY_FILE).exists(), "nothing kept");
    assert!(take(&fingerprint(&ca)).status.success());
    let mode = std::fs::metadata(credentials.join(KEY_FILE))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400);

    // Through the clusters file alone: the cluster taken is the current one.
    let nodes = polisctl(config.path(), &["nodes", "--output", "json"]);
    assert!(nodes.status.success());
    let nodes: serde_json::Value = serde_json::from_slice(&nodes.stdout).unwrap();
    assert_eq!(nodes[0]["id"], cluster.nodes[0].id().unwrap().as_str());
    assert_eq!(nodes[0]["state"], "UP");
    let expires = nodes[0]["certificate_expires"].as_i64().unwrap();
    assert!(expires > polis::pki::unix_now(), "{expires}");
    let seen = nodes[0]["last_seen"].as_i64().unwrap();
    assert!((began..=polis::pki::unix_now()).contains(&seen), "{seen}");

    // Through --endpoint and --credentials alone, in an empty configuration directory.
    let empty = tempfile::tempdir().unwrap();
    let ticket = polisctl(
        empty.path(),
        &[
            "--endpoint",
            &endpoint,
            "--credentials",
            credentials_arg,
            "ticket",
        ],
    );
    assert!(ticket.status.success());
    let want = polis::pki::hex(&owner.ticket().await.unwrap());
    assert_eq!(String::from_utf8_lossy(&ticket.stdout).trim(), want);

    // With neither, nothing is guessed.
    let none = polisctl(empty.path(), &["nodes"]);
    assert!(!none.status.success());
    assert!(String::from_utf8_lossy(&none.stderr).contains("no cluster to manage"));
}
