//! Helpers shared by the node's integration tests: loggers, ports, a consensus child on real
//! etcd, and certificate verification as rustls does it.

#![allow(dead_code)] // each test file uses a different part

use std::path::Path;
use std::time::Duration;

use polis::consensus::{Consensus, ConsensusConfig, Member, Mode};
use polis::storage::NodeRoot;
use polis_actors::{ActorRef, ChildSpec};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use webpki::{
    anchor_from_trusted_cert, CertRevocationList, EndEntityCert, Error, KeyUsage,
    OwnedCertRevocationList, RevocationOptionsBuilder,
};

pub fn quiet() -> slog::Logger {
    slog::Logger::root(slog::Discard, slog::o!())
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A fresh software TPM and a sealer connected to it; the directory holds its state.
pub fn sealer() -> (tempfile::TempDir, polis::tpm::Swtpm, polis::tpm::Sealer) {
    let dir = tempfile::tempdir().unwrap();
    let swtpm = polis::tpm::Swtpm::start(&dir.path().join("tpm"), &quiet()).unwrap();
    let sealer = polis::tpm::Sealer::connect(&swtpm.tcti()).unwrap();
    (dir, swtpm, sealer)
}

/// A consensus child running a new single-member etcd below `root`, on loopback.
pub fn consensus(root: &Path) -> (ChildSpec, ActorRef<Consensus>) {
    consensus_of(root, member())
}

/// The etcd member of a test node, on loopback with a free peer port.
pub fn member() -> Member {
    Member {
        name: "metropolis-0123456789abcdef0123456789abcdef".into(),
        advertise_host: "127.0.0.1".into(),
        peer_listen: format!("127.0.0.1:{}", free_port()).parse().unwrap(),
    }
}

/// A consensus child running etcd as `member` below `root`, started as a new cluster (or
/// restarted, if `root` holds etcd's data).
pub fn consensus_of(root: &Path, member: Member) -> (ChildSpec, ActorRef<Consensus>) {
    consensus_lived(root, member, polis::issuer::DEFAULT_NODE_LIFETIME)
}

/// [`consensus_of`], its peer certificate (in a new cluster) valid for `peer_lifetime`.
pub fn consensus_lived(
    root: &Path,
    member: Member,
    peer_lifetime: Duration,
) -> (ChildSpec, ActorRef<Consensus>) {
    let config = ConsensusConfig {
        root: NodeRoot::new(root),
        member,
        mode: Mode::Bootstrap { peer_lifetime },
        health: Default::default(),
    };
    let (spec, consensus) =
        ChildSpec::worker("consensus", move || Ok(Consensus::new(config.clone())));
    (spec.start_timeout(Some(Duration::from_secs(60))), consensus)
}

/// Verify `cert` against the CA `ca` for `usage`, with `crl` if given, Ed25519 only.
pub fn verify(ca: &[u8], cert: &[u8], usage: KeyUsage, crl: Option<&[u8]>) -> Result<(), Error> {
    let ca = CertificateDer::from(ca.to_vec());
    let anchors = [anchor_from_trusted_cert(&ca).unwrap().to_owned()];
    let cert = CertificateDer::from(cert.to_vec());
    let end = EndEntityCert::try_from(&cert)?;
    let crls: Vec<CertRevocationList<'_>> = crl
        .map(|der| {
            let der = CertificateRevocationListDer::from(der.to_vec());
            OwnedCertRevocationList::from_der(&der).unwrap().into()
        })
        .into_iter()
        .collect();
    let crl_refs: Vec<&CertRevocationList<'_>> = crls.iter().collect();
    let revocation =
        (!crl_refs.is_empty()).then(|| RevocationOptionsBuilder::new(&crl_refs).unwrap().build());
    end.verify_for_usage(
        &[webpki::ring::ED25519],
        &anchors,
        &[],
        UnixTime::now(),
        usage,
        revocation,
        None,
    )
    .map(|_| ())
}
