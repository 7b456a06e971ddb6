//! The issuer actor on real etcd: one CA however many start at once, certificates recorded and
//! verifiable, revocation through the CRL and its reissue, restarts keeping the CA, and the
//! bootstrap commit.

mod common;

use std::time::Duration;

use common::verify;
use polis::consensus::Kv;
use polis::issuer::{GetCaCertificate, Issue, Issuer, Lifetimes, Revoke, NAMESPACE};
use polis::pki::{generate_key, read_crl, revoked_serials, Template};
use polis::poll::Poll;
use polis_actors::{ChildSpec, Kill, Strategy, SupervisorSpec, Tree};
use webpki::{Error, KeyUsage};

#[actix_rt::test]
async fn one_ca_for_concurrent_issuers_issuing_recording_revoking_and_restarting() {
    let dir = tempfile::tempdir().unwrap();
    let (consensus_spec, consensus) = common::consensus(dir.path());
    let (a_cons, b_cons) = (consensus.clone(), consensus.clone());
    let (a_spec, a) = ChildSpec::worker("issuer-a", move || Ok(Issuer::new(a_cons.clone(), None)));
    let (b_spec, b) = ChildSpec::worker("issuer-b", move || Ok(Issuer::new(b_cons.clone(), None)));
    // A spec starts children one after another; to make the two issuers race for the CA,
    // both are added at run time at once, after etcd is up.
    let spec = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(60))
        .child(consensus_spec);
    let tree = Tree::start(spec, common::quiet()).await.unwrap();
    let (ra, rb) = futures::join!(
        tree.root().ask(polis_actors::StartChild(a_spec)),
        tree.root().ask(polis_actors::StartChild(b_spec))
    );
    ra.unwrap().unwrap();
    rb.unwrap().unwrap();
    let ca = a.ask(GetCaCertificate).await.unwrap().unwrap();
    assert_eq!(
        b.ask(GetCaCertificate).await.unwrap().unwrap(),
        ca,
        "one CA"
    );

    let node = generate_key().unwrap();
    let issued = a
        .ask(Issue(
            Template::Node {
                node_id: "metropolis-aa".into(),
            },
            node.verifying_key(),
        ))
        .await
        .unwrap()
        .unwrap();
    verify(&ca, &issued.der, KeyUsage::client_auth(), None).unwrap();
    let mut kv = consensus.ask(Kv(NAMESPACE.into())).await.unwrap().unwrap();
    let recorded = kv.list("issued/").await.unwrap();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].1, issued.der);

    let crl = b.ask(Revoke(issued.der.clone())).await.unwrap().unwrap();
    assert_eq!(
        verify(&ca, &issued.der, KeyUsage::client_auth(), Some(&crl)),
        Err(Error::CertRevoked)
    );
    assert_eq!(kv.get("crl").await.unwrap(), Some(crl.clone()));
    // Revoking again changes nothing; a second revocation keeps the first.
    assert_eq!(
        a.ask(Revoke(issued.der.clone())).await.unwrap().unwrap(),
        crl
    );
    let other = a
        .ask(Issue(
            Template::Node {
                node_id: "metropolis-bb".into(),
            },
            generate_key().unwrap().verifying_key(),
        ))
        .await
        .unwrap()
        .unwrap();
    let both = a.ask(Revoke(other.der.clone())).await.unwrap().unwrap();
    for der in [&issued.der, &other.der] {
        assert_eq!(
            verify(&ca, der, KeyUsage::client_auth(), Some(&both)),
            Err(Error::CertRevoked)
        );
    }

    // An issuer started with the lifetimes a bootstrap asks for stores them (none were: the
    // others only read), and the CRL made for the default validity is reissued for the shorter
    // one at once: numbered one past, listing the same certificates.
    let before = read_crl(&both).unwrap();
    let lifetimes = Lifetimes {
        node: Duration::from_secs(20),
        owner: Duration::from_secs(40),
    };
    let start_asking = |name: &'static str, asked: Lifetimes| {
        let (cons, root) = (consensus.clone(), tree.root().clone());
        async move {
            let (spec, issuer) =
                ChildSpec::worker(name, move || Ok(Issuer::new(cons.clone(), Some(asked))));
            root.ask(polis_actors::StartChild(spec))
                .await
                .unwrap()
                .unwrap();
            // Healthy as it starts; it answers once it has loaded (and stored) what it needs.
            issuer.ask(GetCaCertificate).await.unwrap().unwrap();
        }
    };
    start_asking("issuer-c", lifetimes).await;
    assert_eq!(
        kv.get("lifetimes/node").await.unwrap().as_deref(),
        Some(&b"20"[..])
    );
    // Stored lifetimes win over asked ones (a bootstrap resumed after a crash asks again).
    start_asking("issuer-d", Lifetimes::default()).await;
    assert_eq!(
        kv.get("lifetimes/owner").await.unwrap().as_deref(),
        Some(&b"40"[..])
    );
    let reissued = Poll::new(Duration::from_millis(20), Duration::from_secs(30))
        .until(async || {
            let crl = kv.clone().get("crl").await.unwrap().unwrap();
            match read_crl(&crl).unwrap() {
                info if info.number > before.number => Ok((crl, info)),
                _ => Err(()),
            }
        })
        .await
        .expect("the CRL reissued");
    assert_eq!(reissued.1.number, before.number + 1);
    assert_eq!(reissued.1.next_update - reissued.1.issued, 20);
    let mut listed = revoked_serials(&reissued.0).unwrap();
    listed.sort();
    let mut expected = vec![issued.serial.clone(), other.serial.clone()];
    expected.sort();
    assert_eq!(listed, expected);

    tree.kill("/issuer-a", Kill::Crash).unwrap();
    let again = Poll::new(Duration::from_millis(10), Duration::from_secs(30))
        .until(async || match a.ask(GetCaCertificate).await {
            Ok(Ok(cert)) => Ok(cert),
            _ => Err(()),
        })
        .await;
    assert_eq!(again, Ok(ca), "the restarted issuer loads the same CA");
    tree.shutdown().await;
}
