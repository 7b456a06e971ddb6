//! The Curator's records on real etcd: a decision that counts other nodes holds when it is
//! written. Two concurrent decommissions of the last two consensus members cannot both pass.
//! A role change racing a decommission never gives the decommissioned node a role or a seat. And the
//! unauthenticated GetCACertificate does not reach the issuer's mailbox once answered.

mod common;

use std::time::Duration;

use ed25519_dalek::SigningKey;
use polis::consensus::{Consensus, Kv, RemoveMember};
use polis::curator::mirror::NodeMirror;
use polis::curator::records::{
    awaits_retirement, consensus_role, decommission, Bootstrapped, InitialOwner, Records,
    INITIAL_OWNER, OWNER_CERTIFICATE, OWNER_NAME,
};
use polis::curator::{CuratorError, Services};
use polis::grpc::Peer;
use polis::issuer::{GetCaCertificate, Issue, Issuer};
use polis::pki::{generate_key, node_id, Template};
use polis::proto::api::aaa_server::Aaa;
use polis::proto::api::management_server::Management;
use polis::proto::api::{DecommissionNodeRequest, EscrowRequest, UpdateNodeRolesRequest};
use polis::proto::common::node_roles::ConsensusMember;
use polis::proto::common::{NodeRoles, NodeState};
use polis::proto::curator::curator_local_server::CuratorLocal;
use polis::proto::curator::GetCaCertificateRequest;
use polis::proto::private::Node;
use polis::storage::NodeRoot;
use polis_actors::{ActorRef, ChildSpec, Strategy, SupervisorSpec, Tree};
use tonic::Request;

fn member(id: &str) -> Node {
    Node {
        id: id.into(),
        fsm_state: NodeState::Up as i32,
        roles: Some(NodeRoles {
            consensus_member: Some(ConsensusMember::default()),
            kubernetes_worker: None,
        }),
        ..Node::default()
    }
}

#[actix_rt::test]
async fn of_two_concurrent_decommissions_of_the_last_two_members_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (consensus_spec, consensus) = common::consensus(dir.path());
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(60))
        .child(consensus_spec);
    let tree = Tree::start(spec, common::quiet()).await.unwrap();
    for round in 0..30 {
        // Each round in a namespace of its own: two UP members, nothing else.
        let kv = consensus
            .ask(Kv(format!("/round-{round}/")))
            .await
            .unwrap()
            .unwrap();
        let mut records = Records::new(kv);
        for id in ["a", "b"] {
            records.update(id, |_| Ok(Some(member(id)))).await.unwrap();
        }
        let (mut first, mut second) = (records.clone(), records.clone());
        let (a, b) = futures::join!(
            first.update_against_all("a", |nodes| decommission(nodes, "a")),
            second.update_against_all("b", |nodes| decommission(nodes, "b")),
        );
        let gone = a.as_ref().or(b.as_ref());
        assert!(gone.is_ok_and(awaits_retirement), "round {round}");
        let refused = [&a, &b]
            .iter()
            .filter(|r| matches!(r, Err(CuratorError::LastConsensusMember(_))))
            .count();
        assert_eq!(
            (a.is_ok() as u32 + b.is_ok() as u32, refused),
            (1, 1),
            "round {round}: {a:?} / {b:?}"
        );
        let up = records
            .list()
            .await
            .unwrap()
            .iter()
            .filter(|n| n.fsm_state == NodeState::Up as i32)
            .count();
        assert_eq!(up, 1, "round {round}: one consensus member must remain");
    }
    tree.shutdown().await;
}

#[actix_rt::test]
async fn get_ca_certificate_asks_the_issuer_once() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, services, _consensus, issuer) = services(dir.path()).await;
    let handled = || tree.registry().actor("/pki").unwrap().handled;
    let ca = issuer.ask(GetCaCertificate).await.unwrap().unwrap();
    let before = handled();
    let asks =
        (0..50).map(|_| services.get_ca_certificate(Request::new(GetCaCertificateRequest {})));
    for answer in futures::future::join_all(asks).await {
        assert_eq!(answer.unwrap().into_inner().ca_certificate, ca);
    }
    // The cache's one ask, for fifty calls.
    assert_eq!(
        handled() - before,
        1,
        "GetCACertificate queued in the issuer's mailbox"
    );
    tree.shutdown().await;
}

/// A Curator's handlers over a fresh single-member etcd below `dir` and its issuer.
async fn services(
    dir: &std::path::Path,
) -> (Tree, Services, ActorRef<Consensus>, ActorRef<Issuer>) {
    let (consensus_spec, consensus) = common::consensus(dir);
    let issuer_consensus = consensus.clone();
    let (issuer_spec, issuer) = ChildSpec::worker("pki", move || {
        Ok(Issuer::new(issuer_consensus.clone(), None))
    });
    let spec = SupervisorSpec::new(Strategy::RestForOne)
        .intensity(10, Duration::from_secs(60))
        .child(consensus_spec)
        .child(issuer_spec);
    let tree = Tree::start(spec, common::quiet()).await.unwrap();
    let kv = |namespace: &str| consensus.ask(Kv(namespace.into()));
    let services = Services::new(
        Records::new(
            kv(polis::curator::records::NAMESPACE)
                .await
                .unwrap()
                .unwrap(),
        ),
        kv(polis::consensus::NAMESPACE).await.unwrap().unwrap(),
        kv(polis::issuer::NAMESPACE).await.unwrap().unwrap(),
        issuer.clone(),
        consensus.clone(),
        common::quiet(),
    );
    (tree, services, consensus, issuer)
}

#[actix_rt::test]
async fn a_role_change_racing_a_decommission_never_gives_a_decommissioned_node_a_role_or_a_seat() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, services, consensus, _issuer) = services(dir.path()).await;
    let mut records = Records::new(
        consensus
            .ask(Kv(polis::curator::records::NAMESPACE.into()))
            .await
            .unwrap()
            .unwrap(),
    );
    // Another consensus member, so that the node may always be decommissioned.
    records
        .update("a", |_| Ok(Some(member("a"))))
        .await
        .unwrap();
    let mut etcd = polis::consensus::connect(&NodeRoot::new(dir.path()))
        .await
        .unwrap();
    let mut changed = 0;
    const ROUNDS: u8 = 25;
    for round in 0..ROUNDS {
        let key = generate_key().unwrap();
        let id = node_id(&key.verifying_key());
        let address = format!("127.0.1.{}", round + 1);
        let node = Node {
            id: id.clone(),
            public_key: key.verifying_key().to_bytes().to_vec(),
            join_key: vec![round; 32],
            fsm_state: NodeState::Up as i32,
            status: Some(polis::curator::records::status(&address)),
            ..Node::default()
        };
        records
            .update(&id, |_| Ok(Some(node.clone())))
            .await
            .unwrap();
        let promote = UpdateNodeRolesRequest {
            id: id.clone(),
            consensus_member: Some(true),
            kubernetes_worker: None,
        };
        let retire = DecommissionNodeRequest { id: id.clone() };
        // The decommission comes a little later each round, so that rounds fall before, inside
        // and after the role change's window between its first check and its write.
        let delay = Duration::from_millis(2 * round as u64);
        let (promoted, retired) =
            futures::join!(services.update_node_roles(Request::new(promote)), async {
                tokio::time::sleep(delay).await;
                services.decommission_node(Request::new(retire)).await
            },);
        retired.unwrap();
        changed += promoted.is_ok() as u32;
        let record = records.get(&id).await.unwrap().unwrap();
        assert_eq!(record.fsm_state, NodeState::Decommissioned as i32);
        // No write after the decommission gave the node a role (the role change re-checks UP
        // where it writes), read from the record's history in etcd.
        let history = history(&mut etcd, &format!("/curator/nodes/{id}")).await;
        let decommissioned_at = history
            .iter()
            .position(|n| n.fsm_state == NodeState::Decommissioned as i32)
            .unwrap();
        assert!(
            history[decommissioned_at..]
                .windows(2)
                .all(|w| consensus_role(&w[0]).is_some() || consensus_role(&w[1]).is_none()),
            "round {round}: {id} got the consensus role after it was decommissioned"
        );
        let peer_url = format!("https://{address}:7834");
        let seated = etcd
            .member_list()
            .await
            .unwrap()
            .members()
            .iter()
            .any(|m| m.peer_urls().contains(&peer_url));
        assert!(
            !seated || consensus_role(&record).is_some(),
            "round {round}: an etcd seat for {id} that its record does not know of"
        );
        // What the decommission reconciler would do: free the seat (etcd 3.4 takes one learner
        // at a time).
        consensus
            .ask(RemoveMember {
                name: id.clone(),
                peer_url,
            })
            .await
            .unwrap()
            .unwrap();
    }
    eprintln!(
        "the role change was written before the decommission in {changed} of {ROUNDS} rounds"
    );
    tree.shutdown().await;
}

/// Every version of the record at `key`, oldest first (the test's etcd never compacts).
async fn history(etcd: &mut etcd_client::Client, key: &str) -> Vec<Node> {
    use prost::Message;
    let mut versions = Vec::new();
    let mut at = 0;
    loop {
        let options = etcd_client::GetOptions::new().with_revision(at);
        let answer = etcd.get(key, Some(options)).await.unwrap();
        let Some(kv) = answer.kvs().first() else {
            break;
        };
        versions.push(Node::decode(kv.value()).unwrap());
        if kv.mod_revision() == kv.create_revision() {
            break;
        }
        at = kv.mod_revision() - 1;
    }
    versions.reverse();
    versions
}

#[actix_rt::test]
async fn bootstrap_writes_the_owner_and_first_node_once_and_refuses_another_owner() {
    let dir = tempfile::tempdir().unwrap();
    let (consensus_spec, consensus) = common::consensus(dir.path());
    let tree = Tree::start(
        SupervisorSpec::new(Strategy::OneForOne).child(consensus_spec),
        common::quiet(),
    )
    .await
    .unwrap();
    let kv = consensus
        .ask(Kv("/bootstrap/".into()))
        .await
        .unwrap()
        .unwrap();
    let mut records = Records::new(kv);
    let owner = |certificate: u8| InitialOwner {
        public_key: b"owner".to_vec(),
        certificate: vec![certificate],
    };
    let bootstrapped = |cuk: u8, certificate: u8| {
        Some(Bootstrapped {
            node: first(cuk),
            owner_certificate: vec![certificate],
        })
    };
    let recorded = records.bootstrap(&owner(10), first(3)).await.unwrap();
    assert_eq!(recorded, bootstrapped(3, 10));
    let stored = records.kv().get(OWNER_CERTIFICATE).await.unwrap();
    assert_eq!(
        stored,
        Some(vec![10]),
        "the owner certificate came with the record"
    );
    let written = records.get("metropolis-first").await.unwrap().unwrap();
    assert_eq!(written, first(3));
    assert_eq!(written.fsm_state, NodeState::Up as i32);
    assert_eq!(
        consensus_role(&written).map(|m| m.peers.len()),
        Some(1),
        "the first member is its own only peer"
    );
    // The join key's index came with it: no other node can take that join key.
    let mut taker = first(3);
    taker.id = "metropolis-other".into();
    let taken = records.update("metropolis-other", |_| Ok(Some(taker.clone())));
    assert!(matches!(taken.await, Err(CuratorError::JoinKeyInUse(_))));
    // Repeated (a resumed step): nothing changes, not even with other values; it answers the
    // records as they stand.
    let recorded = records.bootstrap(&owner(11), first(9)).await.unwrap();
    assert_eq!(recorded, bootstrapped(3, 10));
    assert_eq!(
        records.get("metropolis-first").await.unwrap().unwrap(),
        first(3)
    );
    // Where etcd names another owner, bootstrap is refused and writes no node.
    let kv = consensus.ask(Kv("/other/".into())).await.unwrap().unwrap();
    let mut other = Records::new(kv);
    let owner_key = polis::curator::records::INITIAL_OWNER;
    other.kv().put(owner_key, b"owner").await.unwrap();
    let another = InitialOwner {
        public_key: b"another owner".to_vec(),
        certificate: vec![12],
    };
    assert_eq!(other.bootstrap(&another, first(3)).await.unwrap(), None);
    assert!(other.get("metropolis-first").await.unwrap().is_none());
    assert!(other.kv().get(OWNER_CERTIFICATE).await.unwrap().is_none());
    // Where it names this owner but holds no node and no owner certificate (a bootstrap cut
    // short step by step), both are written.
    let recorded = other.bootstrap(&owner(13), first(3)).await.unwrap();
    assert_eq!(recorded, bootstrapped(3, 13));
    let stored = other.kv().get(OWNER_CERTIFICATE).await.unwrap();
    assert_eq!(stored, Some(vec![13]));
    assert_eq!(
        other.get("metropolis-first").await.unwrap().unwrap(),
        first(3)
    );
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_mirror_holds_every_record_and_follows_each_later_change() {
    let dir = tempfile::tempdir().unwrap();
    let (consensus_spec, consensus) = common::consensus(dir.path());
    let spec = SupervisorSpec::new(Strategy::OneForOne).child(consensus_spec);
    let tree = Tree::start(spec, common::quiet()).await.unwrap();
    let kv = consensus.ask(Kv("/mirror/".into())).await.unwrap().unwrap();
    let mut records = Records::new(kv);
    for id in ["a", "b"] {
        records.update(id, |_| Ok(Some(member(id)))).await.unwrap();
    }
    let mut mirror = NodeMirror::open(&mut records).await.unwrap();
    assert_eq!(mirror.nodes(), vec![member("a"), member("b")]);

    // A change, two creations, and a deletion by a client that is not the Curator's.
    let mut changed = member("b");
    changed.fsm_state = NodeState::Decommissioned as i32;
    records
        .update("b", |_| Ok(Some(changed.clone())))
        .await
        .unwrap();
    for id in ["c", "aa"] {
        records.update(id, |_| Ok(Some(member(id)))).await.unwrap();
    }
    let mut raw = polis::consensus::connect(&NodeRoot::new(dir.path()))
        .await
        .unwrap();
    raw.delete("/mirror/nodes/a", None).await.unwrap();
    // In key order, the record created between two others in its place.
    let want = vec![member("aa"), changed, member("c")];
    while mirror.nodes() != want {
        tokio::time::timeout(Duration::from_secs(10), mirror.changed())
            .await
            .unwrap_or_else(|_| panic!("the mirror stopped at {:?}", mirror.nodes()))
            .unwrap();
    }
    // A record that does not decode fails the mirror, naming its key.
    raw.put("/mirror/nodes/d", vec![0xff; 3], None)
        .await
        .unwrap();
    let broken = tokio::time::timeout(Duration::from_secs(10), mirror.changed())
        .await
        .unwrap();
    assert!(
        broken
            .as_ref()
            .is_err_and(|e| e.to_string().contains("nodes/d")),
        "{broken:?}"
    );
    tree.shutdown().await;
}

/// The owner's Escrow answers the owner certificate the bootstrap recorded from what the
/// Curator read at its start, reading nothing from etcd; a caller with another key is refused
/// the same way; a Curator that read nothing at its start answers what etcd holds.
#[actix_rt::test]
async fn escrow_answers_the_bootstrapped_owner_certificate_without_reading_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, services, consensus, issuer) = services(dir.path()).await;
    let issue = |key: SigningKey| {
        let issuer = issuer.clone();
        async move {
            let template = Template::Client {
                common_name: OWNER_NAME.into(),
            };
            let issue = Issue(template, key.verifying_key());
            issuer.ask(issue).await.unwrap().unwrap().der
        }
    };
    let (owner_key, stranger_key) = (generate_key().unwrap(), generate_key().unwrap());
    let stranger_public = stranger_key.verifying_key().to_bytes();
    let (bootstrapped, stranger) = (issue(owner_key.clone()).await, issue(stranger_key).await);
    let namespace = polis::curator::records::NAMESPACE;
    let mut records = Records::new(consensus.ask(Kv(namespace.into())).await.unwrap().unwrap());
    let owner = InitialOwner {
        public_key: owner_key.verifying_key().to_bytes().to_vec(),
        certificate: bootstrapped.clone(),
    };
    records.bootstrap(&owner, first(3)).await.unwrap().unwrap();
    let escrow = |services: Services, presented: Vec<u8>| async move {
        let mut request = Request::new(EscrowRequest {});
        request.extensions_mut().insert(Peer {
            remote: "198.18.0.1:1".parse().unwrap(),
            certificate: Some(presented),
        });
        services
            .escrow(request)
            .await
            .map(|answer| answer.into_inner().owner_certificate)
    };
    // A Curator that read nothing at its start reads etcd.
    let answered = escrow(services.clone(), bootstrapped.clone())
        .await
        .unwrap();
    assert_eq!(answered, bootstrapped);
    // One that read the owner's key and certificate at its start answers from them: etcd's
    // records, changed behind its back, are not read.
    let knowing = services
        .clone()
        .knowing_owner(Some(owner.public_key.clone()), Some(bootstrapped.clone()));
    records
        .kv()
        .put(OWNER_CERTIFICATE, b"changed behind its back")
        .await
        .unwrap();
    records
        .kv()
        .put(INITIAL_OWNER, &stranger_public)
        .await
        .unwrap();
    let answered = escrow(knowing.clone(), bootstrapped.clone()).await.unwrap();
    assert_eq!(answered, bootstrapped, "Escrow read etcd");
    let refused = escrow(knowing, stranger).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::PermissionDenied);
    tree.shutdown().await;
}

/// A first node's record, its cluster unlock key and Curator certificate made of `cuk`.
fn first(cuk: u8) -> Node {
    polis::curator::records::first_node(polis::curator::records::FirstNode {
        id: "metropolis-first".into(),
        public_key: vec![1; 32],
        join_key: vec![2; 32],
        cluster_unlock_key: vec![cuk; 32],
        node_certificate: vec![4],
        address: "198.18.0.2".into(),
        peer_ca_certificate: vec![5],
        peer_certificate: vec![6],
        recovery_key: vec![7],
        pcr7: vec![8; 32],
        curator_certificate: vec![cuk],
    })
}
