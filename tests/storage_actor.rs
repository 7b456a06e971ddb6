//! The storage actor with a real swtpm: new and existing data partitions across a reboot, wrong
//! keys refused, fault injection, and the insecure backend named at every start.

mod common;

use std::path::Path;
use std::time::Duration;

use polis::poll::Poll;
use polis::storage::{
    DataBackend, DataError, Esp, GetEsp, MountExisting, MountNew, NewKeys, NodeRoot, Previous,
    RefuseFormatted, Storage, StorageConfig, StorageError, UnlockKey,
};
use polis::tpm::{Swtpm, Tpm, TpmConfig};
use polis_actors::{ActorRef, ChildSpec, Kill, Strategy, SupervisorSpec, Tree};

/// A node's `core` subtree as DESIGN §2 orders it: storage, then tpm.
async fn core(root: &Path, tcti: String) -> (Tree, ActorRef<Storage>) {
    let esp = Esp::new(NodeRoot::new(root));
    let (tpm_spec, tpm) = ChildSpec::worker("tpm", move || {
        Ok(Tpm::new(TpmConfig::Tcti(tcti.clone()), esp.clone()))
    });
    let config = StorageConfig {
        root: NodeRoot::new(root),
        backend: DataBackend::Directory,
        ephemeral_tmpfs: false,
    };
    let (storage_spec, storage) = ChildSpec::worker("storage", move || {
        Ok(Storage::new(config.clone(), tpm.clone()))
    });
    let core = SupervisorSpec::new(Strategy::RestForOne)
        .intensity(10, Duration::from_secs(10))
        .child(storage_spec)
        .child(tpm_spec);
    let root_spec =
        SupervisorSpec::new(Strategy::OneForOne).child(ChildSpec::supervisor("core", core).0);
    (
        Tree::start(root_spec, common::quiet()).await.unwrap(),
        storage,
    )
}

fn same(k: &UnlockKey) -> UnlockKey {
    UnlockKey::from_slice(k.as_bytes()).unwrap()
}

#[actix_rt::test]
async fn a_new_partition_reopens_after_a_reboot_and_refuses_a_wrong_key() {
    let dir = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(&dir.path().join("tpm"), &common::quiet()).unwrap();
    let node = dir.path().join("node");

    let (tree, storage) = core(&node, swtpm.tcti()).await;
    let (nuk, cuk) = storage.ask(NewKeys).await.unwrap().unwrap();
    assert_ne!(nuk, cuk);
    let (other_nuk, _) = storage.ask(NewKeys).await.unwrap().unwrap();
    assert_ne!(nuk, other_nuk, "every call gives fresh keys");
    assert!(
        !node.join("data").exists(),
        "asking for keys writes nothing"
    );
    let new = |nuk: &UnlockKey, cuk: &UnlockKey| MountNew {
        nuk: same(nuk),
        cuk: same(cuk),
        previous: Previous::Refuse,
    };
    storage.ask(RefuseFormatted).await.unwrap().unwrap();
    storage.ask(new(&nuk, &cuk)).await.unwrap().unwrap();
    std::fs::write(node.join("data/precious"), b"kept").unwrap();
    assert!(matches!(
        storage.ask(new(&nuk, &cuk)).await.unwrap(),
        Err(StorageError::AlreadyMounted)
    ));
    assert!(node.join("ephemeral").is_dir());
    tree.shutdown().await;

    // Reboot: a new tree on the same node root.
    let (tree, storage) = core(&node, swtpm.tcti()).await;
    let wrong = UnlockKey::from_slice(&[7; 32]).unwrap();
    let refused = storage
        .ask(MountExisting {
            nuk: same(&nuk),
            cuk: wrong,
        })
        .await
        .unwrap();
    assert!(
        matches!(refused, Err(StorageError::Data(DataError::WrongKey(_)))),
        "{refused:?}"
    );
    let checked = storage.ask(RefuseFormatted).await.unwrap();
    assert!(
        matches!(
            checked,
            Err(StorageError::Data(DataError::AlreadyFormatted(_)))
        ),
        "{checked:?}"
    );
    let again = storage.ask(new(&nuk, &cuk)).await.unwrap();
    assert!(
        matches!(
            again,
            Err(StorageError::Data(DataError::AlreadyFormatted(_)))
        ),
        "{again:?}"
    );
    storage
        .ask(MountExisting {
            nuk: same(&nuk),
            cuk: same(&cuk),
        })
        .await
        .unwrap()
        .unwrap();
    assert_eq!(std::fs::read(node.join("data/precious")).unwrap(), b"kept");
    tree.shutdown().await;
}

#[actix_rt::test]
async fn storage_serves_again_after_each_kind_of_kill_and_names_its_insecure_backend() {
    let dir = tempfile::tempdir().unwrap();
    let swtpm = Swtpm::start(&dir.path().join("tpm"), &common::quiet()).unwrap();
    let (tree, storage) = core(&dir.path().join("node"), swtpm.tcti()).await;
    let (nuk, cuk) = storage.ask(NewKeys).await.unwrap().unwrap();
    storage
        .ask(MountNew {
            nuk: same(&nuk),
            cuk: same(&cuk),
            previous: Previous::Refuse,
        })
        .await
        .unwrap()
        .unwrap();
    for how in [Kill::Crash, Kill::Brutal] {
        let before = tree.registry().actor("/core/storage").unwrap().generation;
        tree.kill("/core/storage", how).unwrap();
        let mounted = Poll::new(Duration::from_millis(5), Duration::from_secs(30))
            .until(async || {
                let (nuk, cuk) = (same(&nuk), same(&cuk));
                storage.ask(MountExisting { nuk, cuk }).await
            })
            .await
            .expect("storage never came back");
        mounted.unwrap();
        assert_eq!(
            tree.registry().actor("/core/storage").unwrap().generation,
            before + 1
        );
        // rest_for_one: the TPM after it was restarted too.
        assert_eq!(
            tree.registry().actor("/core/tpm").unwrap().generation,
            before + 1
        );
    }
    let esp = storage.ask(GetEsp).await.unwrap();
    assert!(esp.parameters().is_err(), "no installer ran here");
    let warnings = tree
        .registry()
        .logs("/core/storage")
        .unwrap()
        .into_iter()
        .filter(|l| l.starts_with("WARN INSECURE: the data partition is a plain directory"))
        .count();
    assert_eq!(warnings, 3, "one warning per start");
    tree.shutdown().await;
}
