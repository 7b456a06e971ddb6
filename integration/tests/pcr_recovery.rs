//! A node whose PCR 7 changed (issue 13 §2) recovers with the owner's approval instead of being
//! lost. A three-member cluster seals under the cluster's PCR policy; node 2 is stopped, its
//! TPM's PCR 7 extended (as a dbx or firmware update does) and started again:
//! - it cannot unseal, asks a Curator for approval signed by its TPM recovery key, and waits:
//!   the owner sees the request with the old and the new value, and until the owner decides the
//!   node stays locked (its data partition is not opened);
//! - a request for node 2 signed by any other key is refused;
//! - once the owner approves, node 2 unseals and follows its record again: the same node, its
//!   etcd data the same as before;
//! - after another change, refused by the owner, it stops with a message that says so;
//! - once decommissioned, its request is refused, and it stops saying why.

use std::time::Duration;

use nix::sys::signal::Signal;
use polis::launch::LocalCluster;
use polis::pki::{generate_key, hex, unix_now};
use polis::proto::curator::curator_client::CuratorClient;
use polis::proto::curator::RequestPcrApprovalRequest;
use polis::tpm::policy;
use polis_integration::{
    boot_failing, dial_curator, log_of, polis_node_binary, polisctl, test_logger, until_following,
};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use tonic::Code;

/// What node 2's ESP says the cluster approved last.
fn approved_pcr7(cluster: &LocalCluster) -> Vec<u8> {
    let esp = polis::storage::Esp::new(cluster.root(2).clone());
    let authority = esp
        .pcr_authority()
        .unwrap()
        .expect("a PCR authority on the ESP");
    assert_eq!(authority.approvals.len(), 1, "{authority:?}");
    authority.approvals[0].pcr7.clone()
}

/// The names of node 2's etcd WAL files, once its etcd member has started: the same ones after
/// recovery means the same etcd data.
async fn wal_files(cluster: &LocalCluster) -> Vec<String> {
    let wal = cluster.root(2).etcd_data().join("member/wal");
    cluster
        .until(2, "start its etcd member", || async {
            let mut names: Vec<String> = std::fs::read_dir(&wal)
                .ok()?
                .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
                .filter(|name| name.ends_with(".wal"))
                .collect();
            names.sort();
            (!names.is_empty()).then_some(names)
        })
        .await
        .unwrap()
}

/// Wait until the owner sees node `id` asking for a value other than the one it enrolled with;
/// answers (approved, requested).
async fn until_requested(cluster: &LocalCluster, id: &str) -> (Vec<u8>, Vec<u8>) {
    cluster
        .until(2, "ask for a new PCR 7 value's approval", || async {
            let mut owner = cluster.owner(0).await.ok()?;
            let requests = owner.pcr_requests().await.ok()?;
            let request = requests.into_iter().find(|r| r.id == id && !r.refused)?;
            Some((request.approved_pcr7, request.requested_pcr7))
        })
        .await
        .unwrap()
}

/// `polisctl ARGS` as the owner, through node 0's Curator with the credentials the harness
/// keeps (and no configuration of the machine's).
fn owner_polisctl(cluster: &LocalCluster, args: &[&str]) -> std::process::Output {
    let config = tempfile::tempdir().unwrap();
    let endpoint = cluster.nodes[0].address.to_string();
    let credentials = cluster.dir().display().to_string();
    let target = ["--endpoint", &endpoint, "--credentials", &credentials];
    polisctl(config.path(), &[&target[..], args].concat())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_pcr7_changed_recovers_only_with_the_owners_approval() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), 3, &polis_node_binary(), test_logger()).unwrap();
    let owner = cluster.bootstrap().await.unwrap();
    let mut ids = Vec::new();
    for i in 1..3 {
        ids.push(cluster.register(i, &owner).await.unwrap());
    }
    for i in 0..3 {
        until_following(&cluster, i).await;
    }
    let id = ids[1].clone();
    let enrolled = approved_pcr7(&cluster);
    let wal = wal_files(&cluster).await;

    // A firmware update while node 2 is off.
    cluster.stop(2, Signal::SIGTERM);
    cluster.extend_pcr7(2, b"a dbx update").unwrap();
    let before = log_of(&cluster, 2).len();
    cluster.start(2, &[]).unwrap();
    let (approved, requested) = until_requested(&cluster, &id).await;
    assert_eq!(
        approved, enrolled,
        "the owner is shown the value it enrolled with"
    );
    assert_ne!(requested, enrolled);
    assert_eq!(requested.len(), 32);

    // Undecided, it keeps waiting and never unseals.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = log_of(&cluster, 2)[before..].to_owned();
    assert!(
        log.contains("PCR 7 changed since this node enrolled"),
        "{log}"
    );
    assert!(log.contains(&format!("polisctl approve-pcr {id}")), "{log}");
    assert!(!log.contains("rejoining the cluster"), "{log}");
    assert!(cluster.is_running(2));

    // A request for node 2 signed by a key other than its recovery key is refused.
    let rng = SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
    let forger =
        EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng).unwrap();
    let requested_at = unix_now();
    let message = policy::recovery_request(&id, &[9; 32], b"", requested_at);
    let forged = RequestPcrApprovalRequest {
        node_id: id.clone(),
        pcr7: vec![9; 32],
        event_log: Vec::new(),
        requested_at,
        signature: forger.sign(&rng, &message).unwrap().as_ref().to_vec(),
    };
    let ca = cluster.ca().unwrap();
    let channel = dial_curator(&cluster, 0, &ca, &generate_key().unwrap())
        .await
        .unwrap();
    let refused = CuratorClient::new(channel.clone())
        .request_pcr_approval(forged.clone())
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused}");
    assert!(refused.message().contains("recovery key"), "{refused}");
    let mut malformed = forged;
    malformed.pcr7 = vec![9; 20];
    let refused = CuratorClient::new(channel)
        .request_pcr_approval(malformed)
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused}");

    // `polisctl pcr-requests` shows the request; the owner approves the value shown with
    // `polisctl approve-pcr`: node 2 unseals, rejoins as itself, with its data.
    let listed = owner_polisctl(&cluster, &["pcr-requests", "--output", "json"]);
    assert!(listed.status.success());
    let listed: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(listed[0]["id"], id.as_str(), "{listed}");
    assert_eq!(listed[0]["approved_pcr7"], hex(&enrolled), "{listed}");
    assert_eq!(listed[0]["requested_pcr7"], hex(&requested), "{listed}");
    assert_eq!(listed[0]["refused"], false, "{listed}");
    let approved = owner_polisctl(&cluster, &["approve-pcr", &id]);
    assert!(approved.status.success());
    assert!(String::from_utf8_lossy(&approved.stderr).contains(&hex(&requested)));
    until_following(&cluster, 2).await;
    assert_eq!(approved_pcr7(&cluster), requested);
    let mut owner = cluster.owner(0).await.unwrap();
    let nodes = owner.nodes().await.unwrap();
    assert!(
        nodes
            .iter()
            .any(|n| n.id == id && n.state == polis::proto::common::NodeState::Up as i32),
        "{nodes:?}"
    );
    let after = wal_files(&cluster).await;
    assert!(
        wal.iter().all(|name| after.contains(name)),
        "etcd WAL before {wal:?}, after {after:?}"
    );
    assert!(owner.pcr_requests().await.unwrap().is_empty());

    // Another change, which the owner refuses: node 2 stops, saying so.
    cluster.stop(2, Signal::SIGTERM);
    cluster.extend_pcr7(2, b"secure boot disabled").unwrap();
    let before = log_of(&cluster, 2).len();
    cluster.start(2, &[]).unwrap();
    let (approved, requested) = until_requested(&cluster, &id).await;
    assert_eq!(approved, approved_pcr7(&cluster));
    assert_ne!(requested, approved);
    assert!(owner_polisctl(&cluster, &["approve-pcr", &id, "--refuse"])
        .status
        .success());
    let status = cluster.wait_exit(2).unwrap();
    assert!(!status.success(), "{status:?}");
    let log = log_of(&cluster, 2)[before..].to_owned();
    assert!(log.contains("the owner refused PCR 7 value"), "{log}");
    assert!(!log.contains("rejoining the cluster"), "{log}");
    let listed = owner.pcr_requests().await.unwrap();
    assert!(listed.iter().any(|r| r.id == id && r.refused), "{listed:?}");

    // Decommissioned, node 2's requests are refused, and it stops saying why.
    owner.decommission(&id).await.unwrap();
    let log = boot_failing(&mut cluster, 2);
    assert!(log.contains("RequestPcrApproval refused"), "{log}");
    assert!(log.contains("decommissioned"), "{log}");
}
