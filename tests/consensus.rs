//! The consensus actor against Debian's etcd: a new single-member cluster with peer TLS, keys that
//! survive crashes and brutal kills of the actor, no etcd process ever left behind, the peer
//! CA committed once and kept, and a peer certificate that renews itself.

mod common;

use std::path::Path;
use std::time::Duration;

use polis::consensus::{Consensus, Kv, Member, NamespacedKv};
use polis::poll::{holds, Poll};
use polis_actors::{ActorRef, Kill, Strategy, SupervisorSpec, Tree};

/// How long the consensus actor may take to copy a new peer CRL to its file.
const COPIED: Poll = Poll::new(Duration::from_millis(10), Duration::from_secs(30));

async fn start(root: &Path) -> (Tree, ActorRef<Consensus>) {
    start_as(root, common::member()).await
}

/// A tree running consensus below `root` as `member`.
async fn start_as(root: &Path, member: Member) -> (Tree, ActorRef<Consensus>) {
    start_lived(root, member, polis::issuer::DEFAULT_NODE_LIFETIME).await
}

/// [`start_as`], the peer certificate of a new cluster valid for `peer_lifetime`.
async fn start_lived(
    root: &Path,
    member: Member,
    peer_lifetime: Duration,
) -> (Tree, ActorRef<Consensus>) {
    let (spec, consensus) = common::consensus_lived(root, member, peer_lifetime);
    let root_spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(60))
        .child(spec);
    (
        Tree::start(root_spec, common::quiet()).await.unwrap(),
        consensus,
    )
}

/// PIDs of etcd processes whose command line mentions `root`.
fn etcds_of(root: &Path) -> Vec<u32> {
    let needle = root.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline);
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            cmdline.starts_with("etcd\0") && cmdline.contains(&needle) && !stat.contains(") Z ")
        })
        .collect()
}

async fn kv(consensus: &ActorRef<Consensus>, prefix: &str) -> NamespacedKv {
    // Right after a kill no incarnation may run yet; once one does, WaitReady answers when etcd
    // is ready, and from then on a client is there at the first ask.
    Poll::new(Duration::from_millis(10), Duration::from_secs(60))
        .until(
            async || match consensus.ask(polis::consensus::WaitReady).await {
                Ok(Ok(())) => Ok(consensus.ask(Kv(prefix.into())).await.unwrap().unwrap()),
                _ => Err(()),
            },
        )
        .await
        .expect("consensus never became ready")
}

/// A lock waiter dropped while it waits (its actor crashed) stops renewing its lease: etcd takes
/// its waiting key back, and with the holder gone too, no lease is left alive (a leaked renewal
/// would keep one for good, and a task running for every crash).
#[actix_rt::test]
async fn a_dropped_lock_waiter_stops_renewing_its_lease() {
    const TTL: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let (tree, consensus) = start(dir.path()).await;
    let mut locks = kv(&consensus, "/locks/").await;
    let held = locks.clone().lead("l", TTL).await.unwrap();
    let mut waiting = locks.clone();
    let waiter = tokio::spawn(async move { waiting.lead("l", TTL).await.map(drop) });
    // The waiter's key is in etcd (etcd's lock keys are `<name>/<lease>`) before it goes.
    let wait = Poll::new(Duration::from_millis(10), Duration::from_secs(60));
    wait.until(async || {
        let keys = locks.list("l/").await.map_err(|e| e.to_string())?;
        holds(keys.len() == 2, "the waiter has not queued yet")
    })
    .await
    .unwrap();
    waiter.abort();
    drop(held);
    let mut etcd = polis::consensus::connect(&polis::storage::NodeRoot::new(dir.path()))
        .await
        .unwrap();
    wait.until(async || {
        let leases = etcd.leases().await.map_err(|e| e.to_string())?;
        holds(leases.leases().is_empty(), "a lease is still renewed")
    })
    .await
    .unwrap();
    assert!(locks.lead("l", TTL).await.is_ok());
    tree.shutdown().await;
}

/// A stop gives etcd its SIGTERM and the time to shut down cleanly (its WAL and snapshot
/// consistent): it exits by itself, and is not killed when its CRL watch ends.
#[actix_rt::test]
async fn a_stop_lets_etcd_exit_by_itself() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, consensus) = start(dir.path()).await;
    let _ = kv(&consensus, "/").await;
    let registry = tree.registry().clone();
    tree.shutdown().await;
    let logs = registry.logs("/consensus").unwrap_or_default();
    // etcd ends by re-raising the SIGTERM once it has closed its server.
    let stopped = logs.iter().find(|l| l.contains("etcd stopped"));
    assert!(
        stopped.is_some_and(|l| l.contains("SIGTERM")),
        "etcd was not left to stop: {stopped:?}"
    );
    // etcd's own lines reach the log through a reader thread, which may trail the reap.
    Poll::new(Duration::from_millis(10), Duration::from_secs(10))
        .until(async || {
            let logs = registry.logs("/consensus").unwrap_or_default();
            let closed = logs.iter().any(|l| l.contains("closed etcd server"));
            holds(closed, "etcd did not log closing its server")
        })
        .await
        .unwrap();
}

#[actix_rt::test]
async fn keys_survive_every_kind_of_kill_and_no_etcd_is_left_behind() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, consensus) = start(dir.path()).await;
    let mut curator = kv(&consensus, "/curator/").await;
    curator.put("nodes/a", b"first").await.unwrap();
    let first = etcds_of(dir.path());
    assert_eq!(first.len(), 1, "one etcd runs");
    let peer_ca = kv(&consensus, "/consensus/")
        .await
        .get("peer-ca/certificate")
        .await
        .unwrap()
        .unwrap();
    let on_disk = std::fs::read_to_string(dir.path().join("data/etcd/peer_pki/ca.pem")).unwrap();
    assert!(on_disk.contains("BEGIN CERTIFICATE"));

    let mut previous = first;
    for (round, how) in [Kill::Crash, Kill::Brutal].into_iter().enumerate() {
        tree.kill("/consensus", how).unwrap();
        let mut curator = kv(&consensus, "/curator/").await;
        assert_eq!(
            tree.registry().actor("/consensus").unwrap().generation,
            round as u64 + 2
        );
        let now = etcds_of(dir.path());
        for pid in &previous {
            assert!(!now.contains(pid), "old etcd {pid} orphaned after {how:?}");
        }
        assert_eq!(now.len(), 1, "exactly one etcd after {how:?}: {now:?}");
        assert_eq!(
            curator.get("nodes/a").await.unwrap().as_deref(),
            Some(&b"first"[..]),
            "{how:?}"
        );
        curator
            .put(&format!("nodes/{round}"), b"more")
            .await
            .unwrap();
        previous = now;
    }

    // Restarted from disk: the same peer CA, committed once.
    let mut consensus_kv = kv(&consensus, "/consensus/").await;
    assert_eq!(
        consensus_kv
            .get("peer-ca/certificate")
            .await
            .unwrap()
            .unwrap(),
        peer_ca
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("data/etcd/peer_pki/ca.pem")).unwrap(),
        on_disk
    );
    assert_eq!(
        consensus_kv
            .ensure("peer-ca/certificate", b"another")
            .await
            .unwrap(),
        peer_ca
    );

    tree.shutdown().await;
    assert!(etcds_of(dir.path()).is_empty(), "shutdown stops etcd");
}

#[actix_rt::test]
async fn the_peer_key_is_owner_only_and_namespaces_do_not_mix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let (tree, consensus) = start(dir.path()).await;
    let mode = std::fs::metadata(dir.path().join("data/etcd/peer_pki/key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o400);
    let mut a = kv(&consensus, "/a/").await;
    let mut b = kv(&consensus, "/b/").await;
    a.put("k", b"in a").await.unwrap();
    assert_eq!(b.get("k").await.unwrap(), None);
    assert_eq!(a.get("k").await.unwrap().as_deref(), Some(&b"in a"[..]));
    tree.shutdown().await;
}

/// A group `ensure_all_with` creates brings its companions in the same transaction (a new CA's
/// first CRL); once the group exists, they are neither written again nor read, whether the
/// client reads first or not.
#[actix_rt::test]
async fn companions_are_written_only_with_the_group_they_come_with() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, consensus) = start(dir.path()).await;
    let mut store = kv(&consensus, "/c/").await;
    let first: [(&str, &[u8]); 2] = [("ca", b"one"), ("key", b"k1")];
    let stored = store
        .ensure_all_with(&first, &[("crl", b"first")])
        .await
        .unwrap();
    assert_eq!(stored, vec![b"one".to_vec(), b"k1".to_vec()]);
    assert_eq!(
        store.get("crl").await.unwrap().as_deref(),
        Some(&b"first"[..])
    );
    store.put("crl", b"reissued").await.unwrap();
    let second: [(&str, &[u8]); 2] = [("ca", b"two"), ("key", b"k2")];
    let again = store
        .ensure_all_with(&second, &[("crl", b"other")])
        .await
        .unwrap();
    assert_eq!(again, stored);
    // A client expecting them absent goes straight to the transaction: the same answer.
    let mut expecting = store.clone().expecting_absent();
    let third = expecting
        .ensure_all_with(&second, &[("crl", b"other")])
        .await
        .unwrap();
    assert_eq!(third, stored);
    assert_eq!(
        store.get("crl").await.unwrap().as_deref(),
        Some(&b"reissued"[..])
    );
    let created = expecting.ensure("new", b"created").await.unwrap();
    assert_eq!(created, b"created");
    assert_eq!(store.ensure("new", b"other").await.unwrap(), b"created");
    tree.shutdown().await;
}

#[actix_rt::test]
async fn the_crl_watcher_copies_every_peer_crl_to_the_file_etcd_checks() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, consensus) = start(dir.path()).await;
    let file = dir.path().join("data/etcd/peer_crl.pem");
    let mut store = kv(&consensus, polis::consensus::NAMESPACE).await;
    let read = || std::fs::read(&file).unwrap_or_default();
    for version in [&b"crl version 2"[..], b"crl version 3"] {
        store
            .put(polis::consensus::PEER_CRL_KEY, version)
            .await
            .unwrap();
        let _ = COPIED.until(async || holds(read() == version, "")).await;
        assert_eq!(read(), version);
    }
    // A restarted actor copies the current CRL again, even over a stale file.
    std::fs::write(&file, b"stale").unwrap();
    tree.kill("/consensus", Kill::Brutal).unwrap();
    let _ = kv(&consensus, "/").await;
    let _ = COPIED
        .until(async || holds(read() == b"crl version 3", ""))
        .await;
    assert_eq!(read(), b"crl version 3");
    tree.shutdown().await;
}

/// A crash between etcd's first start and the commit of the new cluster's peer CA loses
/// nothing: the CA's key is on disk (owner-only), where the member keeps its copy, and the next
/// start commits it, certificate, key and first CRL together.
#[actix_rt::test]
async fn a_peer_ca_not_committed_before_a_crash_is_committed_at_the_next_start() {
    use polis::consensus::peer_pki::{bootstrap_peer_pki, LOCAL_CA_KEY_FILE};
    use polis::consensus::{etcd_command, peer_ca};
    use polis::storage::NodeRoot;
    use std::os::unix::fs::PermissionsExt;

    let dir = tempfile::tempdir().unwrap();
    let root = NodeRoot::new(dir.path());
    let member = common::member();
    // What a first start leaves when the node dies before the commit: the peer PKI with the
    // pending CA key, and etcd's data directory.
    std::fs::create_dir_all(root.consensus()).unwrap();
    let ca = bootstrap_peer_pki(&root, &member, Duration::from_secs(3600)).unwrap();
    let first_crl = std::fs::read(root.etcd_peer_crl()).unwrap();
    let local = root.etcd_peer_pki().join(LOCAL_CA_KEY_FILE);
    let mode = std::fs::metadata(&local).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o400, "the CA key is a secret");
    let mut etcd = etcd_command(&root, &member, None)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // etcd serves, and the node dies before it commits the CA.
    Poll::new(Duration::from_millis(50), Duration::from_secs(60))
        .until(async || {
            let mut client = polis::consensus::connect(&root).await.map_err(drop)?;
            client.get("probe", None).await.map_err(drop)
        })
        .await
        .expect("etcd serves");
    etcd.kill().unwrap();
    etcd.wait().unwrap();

    let (tree, consensus) = start_as(dir.path(), member).await;
    let mut peer_kv = kv(&consensus, "/consensus/").await;
    let committed = peer_ca(&mut peer_kv).await.unwrap();
    assert_eq!(committed.certificate(), ca.certificate());
    // With its first CRL, the one on disk, in the same transaction: no issuer writes one.
    let crl = peer_kv
        .get(polis::consensus::PEER_CRL_KEY)
        .await
        .unwrap()
        .expect("the peer CRL committed with the CA");
    assert_eq!(crl, first_crl);
    assert_eq!(polis::pki::read_crl(&crl).unwrap().number, 1);
    assert_eq!(committed.key_pkcs8().unwrap(), ca.key_pkcs8().unwrap());
    let kept = polis::consensus::peer_pki::local_peer_ca(&root)
        .unwrap()
        .unwrap();
    assert_eq!(kept.key_pkcs8().unwrap(), ca.key_pkcs8().unwrap());
    tree.shutdown().await;
}

/// A member renews its own peer certificate two thirds into its life while etcd runs, for the
/// same key and as long again, and records in etcd each one it serves, keeping the one it
/// replaced for the issuer to revoke. Stopped past its certificate's expiry, it comes back with
/// a current one (that this happens before etcd starts matters only with peers: the
/// `renewal` integration test stops a whole cluster so).
#[actix_rt::test]
async fn the_peer_certificate_renews_itself_while_running_and_before_a_restart() {
    use polis::consensus::peer_pki::served;
    use polis::pki::{certificate_key, hex, lifetime, not_after, serial_of, unix_now};
    use polis::storage::NodeRoot;

    const LIFETIME: Duration = Duration::from_secs(3);
    let dir = tempfile::tempdir().unwrap();
    let root = NodeRoot::new(dir.path());
    let member = common::member();
    let (tree, consensus) = start_lived(dir.path(), member.clone(), LIFETIME).await;
    let mut peer_kv = kv(&consensus, "/consensus/").await;
    let first = served(&root).unwrap();
    let current = format!("peer-certificates/{}/current", member.name);

    // Three certificates served in turn, each recorded as served once it is.
    let mut seen = vec![first.clone()];
    Poll::new(Duration::from_millis(100), Duration::from_secs(30))
        .until(async || {
            let now = served(&root).map_err(|e| e.to_string())?;
            if !seen.contains(&now) {
                seen.push(now);
            }
            holds(seen.len() >= 3, "three certificates served")
        })
        .await
        .unwrap();
    for certificate in &seen {
        assert_eq!(
            certificate_key(certificate).unwrap(),
            certificate_key(&first).unwrap()
        );
        assert_eq!(lifetime(certificate).unwrap(), LIFETIME);
    }
    let replaced: Vec<String> = seen[..2]
        .iter()
        .map(|c| {
            format!(
                "peer-certificates/{}/replaced/{}",
                member.name,
                hex(&serial_of(c).unwrap())
            )
        })
        .collect();
    Poll::new(Duration::from_millis(100), Duration::from_secs(10))
        .until(async || {
            let recorded = peer_kv.get(&current).await.map_err(|e| e.to_string())?;
            holds(
                recorded == served(&root).ok(),
                "the served certificate recorded",
            )?;
            for key in &replaced {
                let kept = peer_kv.get(key).await.map_err(|e| e.to_string())?;
                holds(kept.is_some(), "a replaced certificate kept for revocation")?;
            }
            Ok::<(), String>(())
        })
        .await
        .unwrap();
    tree.shutdown().await;

    // Off until the certificate has expired.
    let lapsed = served(&root).unwrap();
    while unix_now() <= not_after(&lapsed).unwrap() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (tree, consensus) = start_lived(dir.path(), member, LIFETIME).await;
    let _ = kv(&consensus, "/consensus/").await;
    let renewed = served(&root).unwrap();
    assert_ne!(renewed, lapsed);
    assert!(not_after(&renewed).unwrap() >= unix_now());
    tree.shutdown().await;
}

/// A first start of etcd cut short (the node killed before etcd first answered) leaves a data
/// directory etcd may not restart from, here a WAL file with nothing in it; the next start
/// begins it again. Once etcd has answered, a restart keeps its data.
#[actix_rt::test]
async fn a_first_start_cut_short_begins_again_and_a_finished_one_is_kept() {
    use polis::storage::NodeRoot;

    let dir = tempfile::tempdir().unwrap();
    let root = NodeRoot::new(dir.path());
    let wal = root.etcd_data().join("member/wal");
    std::fs::create_dir_all(&wal).unwrap();
    std::fs::write(wal.join("0000000000000000-0000000000000000.wal"), b"").unwrap();
    std::fs::write(root.etcd_first_start(), b"").unwrap();

    let (tree, consensus) = start(dir.path()).await;
    let mut kv = kv(&consensus, "/test/").await;
    assert!(
        !root.etcd_first_start().exists(),
        "etcd answered: the mark is gone"
    );
    kv.put("kept", b"yes").await.unwrap();
    tree.shutdown().await;

    let (tree, consensus) = start(dir.path()).await;
    let mut kv = self::kv(&consensus, "/test/").await;
    assert_eq!(kv.get("kept").await.unwrap().as_deref(), Some(&b"yes"[..]));
    tree.shutdown().await;
}
