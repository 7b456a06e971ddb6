//! Quorum unlock's cold-start service (tier 2): share holder actors on loopback addresses, their
//! shares sealed by a real swtpm, asked by `quorum::client::gather` as a member on a cold start
//! would: the owner's join key gets its shares, which recover its CUK; another key gets none; a
//! holder whose directory no longer counts the owner as a consensus member (decommissioned)
//! refuses; too few shares say how many are missing.

mod common;

use std::net::IpAddr;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use polis::network::NetworkStatus;
use polis::poll::Poll;
use polis::proto::common::{cluster_directory, Address, ClusterDirectory};
use polis::proto::private::HeldShares;
use polis::quorum::client::gather;
use polis::quorum::holder::ShareHolder;
use polis::quorum::{cuk_digest, split, QuorumError, COLD_START_PORT};
use polis::storage::{Esp, NodeRoot, UnlockKey};
use polis::tpm::{Seal, SealedKind, Swtpm, Tpm, TpmConfig};
use polis_actors::{ActorRef, ChildSpec, Strategy, SupervisorSpec, Tree, Watchable};
use prost::Message;

/// The owner's address, its four peers' (only the first two run a holder), by node ID.
const OWNER: (&str, &str) = ("owner", "127.0.0.11");
const PEERS: [(&str, &str); 4] = [
    ("h1", "127.0.0.12"),
    ("h2", "127.0.0.13"),
    ("h3", "127.0.0.14"),
    ("h4", "127.0.0.15"),
];

/// A five-member directory, with `owner` marked as a consensus member or not.
fn directory(owner_is_member: bool) -> ClusterDirectory {
    let node = |(id, host): (&str, &str), curator| cluster_directory::Node {
        id: id.into(),
        addresses: vec![Address { host: host.into() }],
        curator,
    };
    let mut nodes = vec![node(OWNER, owner_is_member)];
    nodes.extend(PEERS.iter().map(|p| node(*p, true)));
    ClusterDirectory {
        nodes,
        crl: Vec::new(),
    }
}

/// A share holder at `address`, serving from `esp`, under its own tree.
async fn holder(esp: Esp, tpm: ActorRef<Tpm>, address: &str) -> Tree {
    let status = Watchable::new(NetworkStatus {
        external_address: Some(address.parse().unwrap()),
    });
    let (spec, _) = ChildSpec::worker("shares", move || {
        Ok(ShareHolder::new(esp.clone(), tpm.clone(), status.clone()))
    });
    let root = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(5, Duration::from_secs(10))
        .child(spec);
    Tree::start(root, common::quiet()).await.unwrap()
}

/// Ask as the owner would on a cold start.
async fn gather_as_owner(join_key: &SigningKey, digest: &[u8]) -> Result<UnlockKey, QuorumError> {
    let own: IpAddr = OWNER.1.parse().unwrap();
    gather(&directory(true), own, join_key, digest).await
}

/// Wait until something listens on the cold-start port of `address` (a holder binds once
/// started), at most ~10 s.
async fn until_listening(address: &str) {
    let target = (address.parse::<IpAddr>().unwrap(), COLD_START_PORT);
    Poll::new(Duration::from_millis(100), Duration::from_secs(30))
        .until(async || tokio::net::TcpStream::connect(target).await)
        .await
        .unwrap_or_else(|e| panic!("no share holder listens on {address}: {e}"));
}

#[actix_rt::test]
async fn a_member_recovers_its_cuk_from_its_peers_shares_and_only_it_does() {
    let dir = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(&dir.path().join("swtpm"), &common::quiet()).unwrap();
    let tcti = swtpm.tcti();
    let esp = Esp::new(NodeRoot::new(dir.path()));
    let (tpm_spec, tpm) = ChildSpec::worker("tpm", move || {
        Ok(Tpm::new(TpmConfig::Tcti(tcti.clone()), esp.clone()))
    });
    let tpm_tree = Tree::start(
        SupervisorSpec::new(Strategy::OneForOne).child(tpm_spec),
        common::quiet(),
    )
    .await
    .unwrap();

    // The owner's CUK, split among its four peers: any two recover it.
    let join_key = SigningKey::from_bytes(&[3; 32]);
    let cuk = UnlockKey::from_slice(&[42; 32]).unwrap();
    let holders: Vec<String> = PEERS.iter().map(|(id, _)| id.to_string()).collect();
    let shares = split(
        cuk.as_bytes(),
        OWNER.0,
        join_key.verifying_key().as_bytes(),
        &holders,
        1,
    );
    let mut trees = Vec::new();
    let mut esps = Vec::new();
    for (i, (_, address)) in PEERS[..2].iter().enumerate() {
        let esp = Esp::new(NodeRoot::new(dir.path().join(format!("h{i}"))));
        let held = HeldShares {
            shares: vec![shares[i].clone()],
        };
        let envelope = tpm
            .ask(Seal(SealedKind::HeldShares, held.encode_to_vec().into()))
            .await
            .unwrap()
            .unwrap();
        esp.write_held_shares(&envelope).unwrap();
        esp.write_directory(&directory(true)).unwrap();
        trees.push(holder(esp.clone(), tpm.clone(), address).await);
        until_listening(address).await;
        esps.push(esp);
    }
    let digest = cuk_digest(&cuk);

    let recovered = gather_as_owner(&join_key, &digest).await.unwrap();
    assert_eq!(recovered.as_bytes(), cuk.as_bytes());

    // Another node's join key gets nothing.
    let stranger = SigningKey::from_bytes(&[4; 32]);
    match gather_as_owner(&stranger, &digest).await {
        Err(QuorumError::NotEnough {
            have: 0,
            need: 2,
            failures,
        }) => assert!(
            failures.contains("holds no share for join key"),
            "{failures}"
        ),
        other => panic!("{other:?}"),
    }

    // A wrong digest: the shares combine, but not to this node's key.
    assert!(matches!(
        gather_as_owner(&join_key, &[0; 32]).await,
        Err(QuorumError::WrongShares(2))
    ));

    // The first holder learnt that the owner was decommissioned: it refuses, and one share of
    // the two needed is not enough.
    esps[0].write_directory(&directory(false)).unwrap();
    match gather_as_owner(&join_key, &digest).await {
        Err(QuorumError::NotEnough {
            have: 1,
            need: 2,
            failures,
        }) => assert!(
            failures.contains("is not a consensus member in this node's cluster directory"),
            "{failures}"
        ),
        other => panic!("{other:?}"),
    }
    // And once its shares are dropped, it holds none for the owner at all.
    esps[0].remove_held_shares().unwrap();
    match gather_as_owner(&join_key, &digest).await {
        Err(QuorumError::NotEnough { failures, .. }) => {
            assert!(failures.contains("holds no share"), "{failures}")
        }
        other => panic!("{other:?}"),
    }

    for tree in trees {
        tree.shutdown().await;
    }
    tpm_tree.shutdown().await;
}
