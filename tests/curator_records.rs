//! The Curator's records on real etcd: a decision that counts other nodes holds when it is
//! written. Two concurrent decommissions of the last two consensus members cannot both pass.
//! And the unauthenticated GetCACertificate does not reach the issuer's mailbox once answered.

mod common;

use std::time::Duration;

use polis::consensus::Kv;
use polis::curator::records::{awaits_retirement, decommission, Records};
use polis::curator::CuratorError;
use polis::curator::Services;
use polis::pki::{GetCaCertificate, Issuer};
use polis::proto::common::node_roles::ConsensusMember;
use polis::proto::common::{NodeRoles, NodeState};
use polis::proto::curator::curator_local_server::CuratorLocal;
use polis::proto::curator::GetCaCertificateRequest;
use polis::proto::private::Node;
use polis_actors::{ChildSpec, Strategy, SupervisorSpec, Tree};
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
    let (consensus_spec, consensus) = common::consensus(dir.path());
    let issuer_consensus = consensus.clone();
    let (issuer_spec, issuer) =
        ChildSpec::worker("pki", move || Ok(Issuer::new(issuer_consensus.clone())));
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
        kv(polis::pki::NAMESPACE).await.unwrap().unwrap(),
        issuer.clone(),
        consensus.clone(),
        common::quiet(),
    );
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
