//! The TPM actor under supervision, against a real swtpm: requests, fault injection while a
//! client keeps asking, the insecure mode, and a missing TPM.

mod common;

/// What these tests seal.
const KIND: SealedKind = SealedKind::Configuration;

use std::path::Path;
use std::time::Duration;

use polis::poll::{holds, Poll};
use polis::proto::private::sealed_envelope::Protection;
use polis::storage::{Esp, NodeRoot};
use polis::tpm::{Random, Seal, SealedKind, Swtpm, Tpm, TpmConfig, TpmError, Unseal};
use polis_actors::{ActorRef, ChildSpec, Kill, Strategy, SupervisorSpec, Tree, TreeError};

/// How long a killed actor may take to serve again.
const BACK: Poll = Poll::new(Duration::from_millis(5), Duration::from_secs(30));

/// A TPM actor for `config`, whose node root (the ESP it looks for a PCR authority on) is
/// `root`.
async fn start(config: TpmConfig, root: &Path) -> Result<(Tree, ActorRef<Tpm>), TreeError> {
    let esp = Esp::new(NodeRoot::new(root));
    let (spec, tpm) = ChildSpec::worker("tpm", move || Ok(Tpm::new(config.clone(), esp.clone())));
    let root = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(10, Duration::from_secs(10))
        .child(spec);
    Ok((Tree::start(root, common::quiet()).await?, tpm))
}

#[actix_rt::test]
async fn seals_unseals_and_serializes_concurrent_requests() {
    let dir = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(dir.path(), &common::quiet()).unwrap();
    let (tree, tpm) = start(TpmConfig::Tcti(swtpm.tcti()), dir.path())
        .await
        .unwrap();
    let sealed = tpm
        .ask(Seal(KIND, b"join key".to_vec().into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(sealed.protection, Protection::Tpm2Pcr7 as i32);
    assert_eq!(
        *tpm.ask(Unseal(KIND, sealed)).await.unwrap().unwrap(),
        b"join key"
    );

    let asks: Vec<_> = (0..8).map(|_| tpm.ask(Random(32))).collect();
    for reply in futures::future::join_all(asks).await {
        assert_eq!(reply.unwrap().unwrap().len(), 32);
    }
    let snap = tree.registry().actor("/tpm").unwrap();
    assert_eq!((snap.handled, snap.queue_depth_max >= 7), (10, true));
    tree.shutdown().await;
}

#[actix_rt::test]
async fn requests_succeed_again_after_each_kind_of_kill() {
    let dir = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(dir.path(), &common::quiet()).unwrap();
    let (tree, tpm) = start(TpmConfig::Tcti(swtpm.tcti()), dir.path())
        .await
        .unwrap();
    let sealed = tpm
        .ask(Seal(KIND, b"survives".to_vec().into()))
        .await
        .unwrap()
        .unwrap();
    for (round, how) in [Kill::Crash, Kill::Brutal].into_iter().enumerate() {
        tree.kill("/tpm", how).unwrap();
        // A client that keeps asking: some requests fail while the actor restarts, then all work.
        let unsealed = BACK
            .until(async || tpm.ask(Unseal(KIND, sealed.clone())).await)
            .await
            .expect("the TPM actor never came back")
            .unwrap();
        assert_eq!(*unsealed, b"survives");
        let snap = tree.registry().actor("/tpm").unwrap();
        assert_eq!(snap.generation, round as u64 + 2, "{how:?}");
    }
    tree.shutdown().await;
}

#[actix_rt::test]
async fn insecure_mode_warns_at_every_start_and_never_mixes_protections() {
    let dir = tempfile::tempdir().unwrap();
    let (tree, insecure) = start(TpmConfig::InsecureNone, dir.path()).await.unwrap();
    tree.kill("/tpm", Kill::Crash).unwrap();
    BACK.until(async || {
        let generation = tree.registry().actor("/tpm").unwrap().generation;
        holds(generation >= 2 && insecure.is_running(), "not restarted")
    })
    .await
    .unwrap();
    let warnings = tree
        .registry()
        .logs("/tpm")
        .unwrap()
        .into_iter()
        .filter(|l| l.starts_with("WARN INSECURE: running without a TPM"))
        .count();
    assert_eq!(warnings, 2);
    let plaintext = insecure
        .ask(Seal(KIND, b"k".to_vec().into()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(plaintext.protection, Protection::InsecurePlaintext as i32);
    assert_eq!(
        *insecure
            .ask(Unseal(KIND, plaintext.clone()))
            .await
            .unwrap()
            .unwrap(),
        b"k"
    );

    let dir = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(dir.path(), &common::quiet()).unwrap();
    let (tpm_tree, tpm) = start(TpmConfig::Tcti(swtpm.tcti()), dir.path())
        .await
        .unwrap();
    let refused = tpm.ask(Unseal(KIND, plaintext)).await.unwrap();
    assert!(
        matches!(refused, Err(TpmError::SealedCorrupted(ref r)) if r.contains("plaintext")),
        "{refused:?}"
    );
    let sealed = tpm
        .ask(Seal(KIND, b"k".to_vec().into()))
        .await
        .unwrap()
        .unwrap();
    assert!(insecure.ask(Unseal(KIND, sealed)).await.unwrap().is_err());
    tpm_tree.shutdown().await;
    tree.shutdown().await;
}

#[actix_rt::test]
async fn a_missing_tpm_fails_the_start_with_the_place_it_looked() {
    let port = common::free_port();
    let tcti = format!("swtpm:host=127.0.0.1,port={port}");
    let dir = tempfile::tempdir().unwrap();
    match start(TpmConfig::Tcti(tcti.clone()), dir.path()).await {
        Err(TreeError::StartFailed(reason)) => {
            assert!(reason.to_string().contains(&tcti), "{reason}")
        }
        Err(other) => panic!("unexpected {other}"),
        Ok(_) => panic!("no TPM there"),
    }
}
