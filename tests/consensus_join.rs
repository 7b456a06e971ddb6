//! Two etcd members: the second joins the first as a learner with a peer certificate from the
//! cluster's peer CA, the first's autopromoter makes it a voter, data flows both ways, one learner
//! at a time, and the joined member restarts from its own disk.

mod common;

use std::path::Path;
use std::time::Duration;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use polis::consensus::{
    connect, peer_pki::peer_template, AddLearner, Consensus, ConsensusConfig, ConsensusError, Kv,
    Member, Mode, NAMESPACE,
};
use polis::pki::{generate_key, DEFAULT_CRL_VALIDITY};
use polis::poll::Poll;
use polis::storage::NodeRoot;
use polis_actors::{ActorRef, ChildSpec, Kill, Strategy, SupervisorSpec, Tree};

async fn tree_of(spec: ChildSpec) -> Tree {
    let root = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(60))
        .child(spec);
    Tree::start(root, common::quiet()).await.unwrap()
}

async fn eventually<T>(what: &str, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    Poll::new(Duration::from_millis(100), Duration::from_secs(60))
        .until(async || f().await.ok_or(()))
        .await
        .unwrap_or_else(|()| panic!("timed out waiting for {what}"))
}

async fn voters(root: &Path) -> Option<(usize, usize)> {
    let mut client = connect(&NodeRoot::new(root)).await.ok()?;
    let list = client.member_list().await.ok()?;
    let voters = list.members().iter().filter(|m| !m.is_learner()).count();
    Some((voters, list.members().len()))
}

#[actix_rt::test]
async fn a_learner_joins_is_promoted_and_serves() {
    let (a_dir, b_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (a_spec, a) = common::consensus(a_dir.path());
    let a_tree = tree_of(a_spec).await;
    let mut a_kv = eventually("a ready", async || {
        a.ask(Kv(NAMESPACE.into())).await.ok()?.ok()
    })
    .await;

    // The cluster issues the new member's peer certificate from its peer CA.
    let ca = polis::consensus::peer_ca(&mut a_kv).await.unwrap();
    let member = Member {
        name: "metropolis-bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb".into(),
        advertise_host: "127.0.0.1".into(),
        peer_listen: format!("127.0.0.1:{}", common::free_port())
            .parse()
            .unwrap(),
    };
    let key = generate_key().unwrap();
    let certificate = ca
        .issue(&peer_template(&member), &key.verifying_key())
        .unwrap();
    let add = || AddLearner {
        name: member.name.clone(),
        peer_url: member.peer_url(),
    };
    let peers = a.ask(add()).await.unwrap().unwrap();
    assert_eq!(peers.len(), 2, "{peers:?}");
    assert!(peers.contains(&member.peer()), "{peers:?}");
    assert_eq!(
        a.ask(add()).await.unwrap().unwrap(),
        peers,
        "repeating the add is harmless"
    );
    let third = AddLearner {
        name: "metropolis-c".into(),
        peer_url: "https://127.0.0.1:1".into(),
    };
    assert!(matches!(
        a.ask(third).await.unwrap(),
        Err(ConsensusError::LearnerPending(_))
    ));

    let config = ConsensusConfig {
        root: NodeRoot::new(b_dir.path()),
        member,
        mode: Mode::Join {
            peers,
            ca: ca.certificate().to_vec(),
            certificate: certificate.der,
            key: key.to_pkcs8_der().unwrap().as_bytes().to_vec(),
            crl: ca.crl(1, &[], DEFAULT_CRL_VALIDITY).unwrap(),
        },
        health: Default::default(),
    };
    let (b_spec, b): (ChildSpec, ActorRef<Consensus>) =
        ChildSpec::worker("consensus", move || Ok(Consensus::new(config.clone())));
    let b_tree = tree_of(b_spec.start_timeout(Some(Duration::from_secs(60)))).await;

    eventually("b promoted to voter", async || {
        (voters(a_dir.path()).await == Some((2, 2))).then_some(())
    })
    .await;

    a_kv.put("from-a", b"hello").await.unwrap();
    let mut b_kv = eventually("b serves", async || {
        b.ask(Kv(NAMESPACE.into())).await.ok()?.ok()
    })
    .await;
    let seen = eventually("a's write on b", async || {
        b_kv.get("from-a").await.ok().flatten()
    })
    .await;
    assert_eq!(seen, b"hello");
    b_kv.put("from-b", b"hi").await.unwrap();
    assert_eq!(
        a_kv.get("from-b").await.unwrap().as_deref(),
        Some(&b"hi"[..])
    );

    // The joined member restarts from its own disk, still a member.
    b_tree.kill("/consensus", Kill::Brutal).unwrap();
    let mut b_kv = eventually("b back", async || {
        let mut kv = b.ask(Kv(NAMESPACE.into())).await.ok()?.ok()?;
        kv.get("from-b").await.ok().flatten().map(|_| kv)
    })
    .await;
    assert_eq!(
        b_kv.get("from-a").await.unwrap().as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(voters(a_dir.path()).await, Some((2, 2)));

    b_tree.shutdown().await;
    a_tree.shutdown().await;
}
