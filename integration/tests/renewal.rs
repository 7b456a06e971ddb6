//! Certificates that expire and renew themselves (issue 13 §1). A three-node cluster is
//! bootstrapped with node certificates valid for 12 s: every node renews its own at two thirds
//! of that (RenewCertificate, authorized by the current one) and watches again with the new one,
//! and every Curator renews its Curator certificate as often and revokes the one it replaced,
//! with no actor restarted and every owner call, each over a new connection, answered
//! meanwhile; the owner certificate (also 12 s) is renewed on use, and a connection holding
//! the replaced one is refused. Both CRLs (the cluster CA's
//! and the etcd peer CA's) are current for as long and reissued half-way, so at every look they
//! are current and their numbers grow. A node stopped until its certificate and its CRL have
//! expired rejoins: it takes the current CRL from a Curator (checking the CA's signature), and
//! JoinNode, by its join key, hands it a new certificate.
//!
//! Every member renews its etcd peer certificate (also 12 s) as often, from its own copy of the
//! peer CA, and the issuers revoke the replaced ones. etcd reads the certificate file at each
//! handshake: node 2 rejoining after its peers' first certificates have expired shows they
//! serve their renewed ones. The whole cluster stopped until every certificate has expired
//! comes back: each member renews its peer certificate before its etcd starts, so the members
//! form a quorum again. Decommissioning a member then revokes the peer certificate it issued
//! itself.

use std::collections::BTreeSet;
use std::time::Duration;

use nix::sys::signal::Signal;
use polis::issuer::Lifetimes;
use polis::launch::LocalCluster;
use polis::pki::{
    not_after, read_pem, revoked_serials, serial_of, unix_now as now, verify_crl, CrlInfo,
};
use polis_integration::{polis_node_binary, test_logger, until_following};

/// The node-certificate lifetime the cluster is bootstrapped with.
const LIFETIME: Duration = Duration::from_secs(12);
/// Renewals each node must go through (each certificate after its first).
const RENEWALS: usize = 2;

/// The notAfter of node `i`'s certificate of `kind` (`node`, `curator`), as its metrics say.
fn expiry(cluster: &LocalCluster, i: usize, kind: &str) -> Option<i64> {
    let text = cluster.debug(i, "GET", "/metrics", "").ok()?;
    let series = format!("polis_certificate_expiry_timestamp_seconds{{kind=\"{kind}\"}}");
    polis::metrics::sample(&text, &series).map(|v| v as i64)
}

/// Node `i`'s node certificate's notAfter, as its metrics say.
fn node_expiry(cluster: &LocalCluster, i: usize) -> Option<i64> {
    expiry(cluster, i, "node")
}

/// Every actor restart node `i` has counted, summed over actors and reasons.
fn restarts(cluster: &LocalCluster, i: usize) -> f64 {
    let text = cluster.debug(i, "GET", "/metrics", "").unwrap();
    text.lines()
        .filter(|line| line.starts_with("polis_actor_restarts_total{"))
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

/// The cluster CRL as the owner is told it (over a new connection to node 0's Curator), which
/// must be the CA's and current, with the serials it lists.
async fn cluster_crl(cluster: &LocalCluster) -> (CrlInfo, Vec<Vec<u8>>) {
    let mut owner = cluster.owner(0).await.expect("an owner connection");
    let info = owner.cluster_info().await.expect("an owner call");
    let crl = &info.cluster_directory.unwrap_or_default().crl;
    let current = verify_crl(&info.ca_certificate, crl, now()).expect("the cluster CRL is current");
    (current, revoked_serials(crl).unwrap())
}

/// The etcd peer CRL node `i` hands its etcd, which must be the peer CA's and current.
fn peer_crl(cluster: &LocalCluster, i: usize) -> CrlInfo {
    let root = cluster.root(i);
    let ca = read_pem(&root.etcd_peer_pki().join("ca.pem"), "CERTIFICATE").unwrap();
    let crl = std::fs::read(root.etcd_peer_crl()).unwrap();
    verify_crl(&ca, &crl, now()).expect("node's etcd peer CRL is current")
}

/// The etcd peer certificate node `i` serves (DER).
fn peer_certificate(cluster: &LocalCluster, i: usize) -> Vec<u8> {
    polis::consensus::peer_pki::served(cluster.root(i)).unwrap()
}

/// The notAfter of the owner certificate the launcher keeps.
fn owner_expiry(cluster: &LocalCluster) -> Option<i64> {
    let certificate = std::fs::read(cluster.dir().join(polis::owner::CERTIFICATE_FILE)).ok()?;
    polis::pki::not_after(&certificate).ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_certificates_renew_themselves_and_a_node_off_past_expiry_rejoins() {
    let dir = tempfile::tempdir().unwrap();
    let mut cluster =
        LocalCluster::create(dir.path(), 3, &polis_node_binary(), test_logger()).unwrap();
    cluster.certificate_lifetimes(Lifetimes {
        node: LIFETIME,
        owner: LIFETIME,
    });
    let mut first_owner = cluster.bootstrap().await.unwrap();
    for i in 1..3 {
        cluster.register(i, &first_owner).await.unwrap();
    }
    for i in 0..3 {
        until_following(&cluster, i).await;
    }
    // Every member serves the Curator (a new member's starts after it joins etcd).
    let serving_by = now() + 30;
    for i in 0..3 {
        while let Err(e) = cluster.owner(i).await {
            assert!(now() < serving_by, "node {i} serves no Curator: {e}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let restarted: Vec<f64> = (0..3).map(|i| restarts(&cluster, i)).collect();

    // Each node's certificates as its metrics show them, until each has renewed its node and
    // Curator certificates RENEWALS times and each CRL has been reissued as often; every
    // record's certificate and both CRLs are valid at every look, and the owner is answered
    // by each Curator in turn over a new connection (which checks its Curator certificate).
    let mut seen: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); 3];
    let mut curator_seen: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); 3];
    let mut peer_seen: Vec<BTreeSet<i64>> = vec![BTreeSet::new(); 3];
    let mut peer_served: Vec<BTreeSet<Vec<u8>>> = vec![BTreeSet::new(); 3];
    let mut owner_seen = BTreeSet::new();
    let (mut crls, mut peer_crls) = (BTreeSet::new(), BTreeSet::new());
    let deadline = now() + 120;
    let mut look = 0;
    while seen
        .iter()
        .chain(&curator_seen)
        .chain(&peer_seen)
        .any(|s| s.len() <= RENEWALS)
        || crls.len().min(peer_crls.len()).min(owner_seen.len()) <= RENEWALS
    {
        assert!(
            now() < deadline,
            "certificates seen in 120 s: {seen:?}, Curator certificates {curator_seen:?}, \
             peer certificates {peer_seen:?}, CRLs {crls:?}, peer CRLs {peer_crls:?}, \
             owner certificates {owner_seen:?}"
        );
        for i in 0..3 {
            seen[i].extend(node_expiry(&cluster, i));
            curator_seen[i].extend(expiry(&cluster, i, "curator"));
            peer_seen[i].extend(expiry(&cluster, i, "peer"));
            peer_served[i].insert(peer_certificate(&cluster, i));
        }
        crls.insert(cluster_crl(&cluster).await.0.number);
        owner_seen.extend(owner_expiry(&cluster));
        peer_crls.insert(peer_crl(&cluster, 0).number);
        look += 1;
        let mut fresh = cluster
            .owner(look % 3)
            .await
            .expect("a new owner connection to a Curator");
        let nodes = fresh.nodes().await.expect("an owner call during renewals");
        for node in &nodes {
            assert!(
                node.certificate_expires > now(),
                "node {}'s recorded certificate lapsed at {}",
                node.id,
                node.certificate_expires
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The connection opened with the first owner certificate presents one no longer the owner's.
    let refused = first_owner.nodes().await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("owner")),
        "a connection with a replaced owner certificate: {refused:?}"
    );

    // Every Curator certificate replaced is revoked (the revocation follows the swap).
    let replaced: usize = curator_seen.iter().map(|s| s.len() - 1).sum();
    let revoked_by = now() + 10;
    while cluster_crl(&cluster).await.1.len() < replaced {
        assert!(
            now() < revoked_by,
            "{replaced} Curator certificates replaced, fewer revoked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let revoked_by = now() + 10;
    // Every peer certificate replaced is revoked too, by an issuer, into the peer CRL each
    // member's etcd checks.
    let peer_replaced: Vec<Vec<u8>> = (0..3)
        .flat_map(|i| {
            let current = peer_certificate(&cluster, i);
            peer_served[i]
                .iter()
                .filter(|c| **c != current)
                .map(|c| serial_of(c).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(peer_replaced.len() >= 3 * RENEWALS, "{peer_replaced:?}");
    while let Some(serial) = {
        let crl = std::fs::read(cluster.root(0).etcd_peer_crl()).unwrap();
        let listed = revoked_serials(&crl).unwrap();
        peer_replaced.iter().find(|s| !listed.contains(s)).cloned()
    } {
        assert!(
            now() < revoked_by,
            "replaced peer certificate {serial:?} not revoked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (i, expiries) in seen
        .iter()
        .chain(&curator_seen)
        .chain(&peer_seen)
        .enumerate()
    {
        // A renewal comes two thirds into the lifetime, so each certificate outlives the last
        // by about a third of it, never by more than a lifetime.
        let gaps: Vec<i64> = expiries
            .iter()
            .zip(expiries.iter().skip(1))
            .map(|(a, b)| b - a)
            .collect();
        assert!(
            gaps.iter()
                .all(|&gap| gap > 0 && gap <= LIFETIME.as_secs() as i64),
            "series {i} (node certificates of nodes 0-2, then their Curator certificates, \
             then their peer certificates): expiring at {expiries:?}"
        );
    }
    for (i, before) in restarted.iter().enumerate() {
        assert_eq!(
            restarts(&cluster, i),
            *before,
            "node {i} restarted an actor"
        );
    }

    // Node 2 is stopped until its certificate and any CRL it can hold have expired, then
    // started again.
    let lapsed = node_expiry(&cluster, 2).unwrap();
    cluster.stop(2, Signal::SIGTERM);
    let (held_crl, _) = cluster_crl(&cluster).await;
    while now() <= lapsed.max(held_crl.next_update) + 1 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    cluster.start(2, &[]).unwrap();
    until_following(&cluster, 2).await;
    let renewed = node_expiry(&cluster, 2).unwrap();
    assert!(
        renewed > now() && renewed > lapsed,
        "node 2 follows with a certificate that expires at {renewed} (the old one: {lapsed})"
    );

    // The whole cluster is stopped until every certificate and CRL it holds has expired, then
    // started again.
    let (held_crl, _) = cluster_crl(&cluster).await;
    let mut lapsed = held_crl.next_update;
    for i in 0..3 {
        lapsed = lapsed
            .max(not_after(&peer_certificate(&cluster, i)).unwrap())
            .max(node_expiry(&cluster, i).unwrap())
            .max(expiry(&cluster, i, "curator").unwrap());
    }
    for i in 0..3 {
        cluster.stop(i, Signal::SIGTERM);
    }
    while now() <= lapsed + 1 {
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for i in 0..3 {
        cluster.start(i, &[]).unwrap();
    }
    for i in 0..3 {
        until_following(&cluster, i).await;
        assert!(not_after(&peer_certificate(&cluster, i)).unwrap() > lapsed);
    }
    let mut owner = cluster
        .owner(0)
        .await
        .expect("an owner connection after the restart");
    let nodes = owner
        .nodes()
        .await
        .expect("an owner call after the restart");
    assert!(
        nodes.iter().all(|n| n.certificate_expires > now()),
        "{nodes:?}"
    );

    // Decommissioning node 2 revokes the peer certificate it serves, one it issued itself
    // (not the one its record holds).
    let served = serial_of(&peer_certificate(&cluster, 2)).unwrap();
    let id = polis::pki::certificate_node_id(&peer_certificate(&cluster, 2)).unwrap();
    owner
        .decommission(&id)
        .await
        .expect("decommissioning node 2");
    let revoked_by = now() + 30;
    while !revoked_serials(&std::fs::read(cluster.root(0).etcd_peer_crl()).unwrap())
        .unwrap()
        .contains(&served)
    {
        assert!(
            now() < revoked_by,
            "node 2's served peer certificate not revoked"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
