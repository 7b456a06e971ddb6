//! Fuzz targets for every decoder of bytes Polis does not control: what lies on the ESP (sealed
//! envelopes and blobs, the configuration and journal they seal, node parameters, the cluster
//! directory, the PCR authority), what firmware configuration hands in, the data partition's header, certificates
//! and CRLs from peers, and etcd's `--initial-cluster`.
//!
//! Each target takes arbitrary bytes, must never panic, and checks a property where one exists
//! (round trips, the hosts file's shape). It answers whether the input was accepted, so that the
//! seed corpus can be checked to exercise the accepting paths. The binaries in `fuzz_targets/`
//! hand each target to libFuzzer; `scripts/fuzz.sh` builds them with coverage instrumentation
//! on the stable toolchain and runs them. The tests below run every checked-in input (seeds and
//! the inputs of crashes found and fixed) through its target.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ed25519_dalek::SigningKey;
use prost::Message;

use polis::consensus::peers;
use polis::grpc::Peer;
use polis::hostsfile;
use polis::lifecycle::material::{Enrolment, Membership};
use polis::lifecycle::{decide, Flow};
use polis::pki::{self, CertificateAuthority};
use polis::proto::api::node_parameters::Cluster;
use polis::proto::common::ClusterDirectory;
use polis::storage::{self, Esp, NodeRoot, UnlockKey, VolumeKey};
use polis::tls::{self, ClientAuth, Identity, Trust};
use polis::tpm::policy::verify_approval;
use polis::tpm::{RecoveryKey, SealedObject};

/// A fuzz target: arbitrary bytes in, whether they were accepted out; panics on a broken
/// property.
pub type Target = fn(&[u8]) -> bool;

/// Every target by name, as the corpus directories and the binaries are named.
pub const TARGETS: &[(&str, Target)] = &[
    ("sealed_blob", sealed_blob),
    ("sealed_envelope", sealed_envelope),
    ("sealed_configuration", sealed_configuration),
    ("enrolment_journal", enrolment_journal),
    ("node_parameters", node_parameters),
    ("cluster_directory", cluster_directory),
    ("volume_header", volume_header),
    ("certificate", certificate),
    ("crl", crl),
    ("initial_cluster", initial_cluster),
    ("pcr_authority", pcr_authority),
];

/// The key the `volume_header` target checks headers against (its seed was formatted with it).
pub fn volume_key() -> VolumeKey {
    let half =
        |b| UnlockKey::from_slice(&[b; storage::KEY_LEN]).expect("a key of the right length");
    VolumeKey::combine(&half(1), &half(2))
}

/// A TPM sealed blob, as `Sealer::unseal` takes it apart before the TPM sees it.
pub fn sealed_blob(data: &[u8]) -> bool {
    SealedObject::decode(data).is_ok()
}

/// The envelope around every sealed ESP file; what decodes must encode back to itself.
pub fn sealed_envelope(data: &[u8]) -> bool {
    let Ok(envelope) = storage::decode_envelope(Path::new("fuzz"), data) else {
        return false;
    };
    let again = storage::decode_envelope(Path::new("fuzz"), &envelope.encode_to_vec())
        .expect("a decoded envelope encodes to a valid one");
    assert_eq!(again, envelope);
    true
}

/// The PCR authority on the ESP (cleartext, read at every seal and unseal) and what a node takes
/// from it before its TPM sees any of it: the recovery key's public point, and each approval
/// checked against the policy key. Accepted if the recovery key is a P-256 point.
pub fn pcr_authority(data: &[u8]) -> bool {
    let scratch = scratch();
    put(&scratch.root.pcr_authority(), true, data);
    let Ok(Some(authority)) = Esp::new(scratch.root.clone()).pcr_authority() else {
        return false;
    };
    for approval in &authority.approvals {
        verify_approval(
            &authority.policy_key,
            &authority.node_id,
            &approval.pcr7,
            &approval.signature,
        );
    }
    let recovery = RecoveryKey {
        public: authority.recovery_key_public,
        private: authority.recovery_key_private,
    };
    match recovery.point() {
        Ok(point) => {
            assert_eq!(
                (point.len(), point[0]),
                (65, 4),
                "not an uncompressed point"
            );
            true
        }
        Err(_) => false,
    }
}

/// An unsealed SealedConfiguration and the keys a rejoin takes from it.
pub fn sealed_configuration(data: &[u8]) -> bool {
    Membership::decode(data, Path::new("fuzz")).is_ok()
}

/// An unsealed EnrolmentJournal, its keys and its nested parameters.
pub fn enrolment_journal(data: &[u8]) -> bool {
    Enrolment::decode(data, Path::new("fuzz")).is_ok()
}

/// NodeParameters on the ESP, in firmware configuration, or both (the first byte says where),
/// through the boot decision; a register ticket scrubbed from the ESP must be gone.
pub fn node_parameters(data: &[u8]) -> bool {
    let Some((&place, bytes)) = data.split_first() else {
        return false;
    };
    let scratch = scratch();
    let esp = Esp::new(scratch.root.clone());
    put(&scratch.root.parameters(), place & 1 != 0, bytes);
    put(&scratch.fw_cfg, place & 2 != 0, bytes);
    let Ok((flow, _)) = decide(&esp, &scratch.fw_cfg) else {
        return false;
    };
    if place & 1 != 0 && esp.scrub_register_ticket().is_ok() {
        if let Ok(params) = esp.parameters() {
            if let Some(Cluster::ClusterRegister(register)) = params.cluster {
                assert!(
                    register.register_ticket.is_empty(),
                    "ticket left after scrub"
                );
            }
        }
    }
    matches!(flow, Flow::Bootstrap(_) | Flow::Register(_))
}

/// A cluster directory and the hosts file rendered from it: every line is one address and one
/// name, and reading the file back gives exactly the directory's nodes at their first address.
pub fn cluster_directory(data: &[u8]) -> bool {
    let Ok(directory) = ClusterDirectory::decode(data) else {
        return false;
    };
    let own: IpAddr = "198.18.0.2".parse().expect("an address");
    let hosts = hostsfile::render("metropolis-self", Some(own), &directory);
    for line in hosts.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(fields.len(), 2, "hosts line {line:?} is not `address name`");
        assert!(fields[0].parse::<IpAddr>().is_ok(), "hosts line {line:?}");
        let printable = fields[1].bytes().all(|b| b.is_ascii_graphic() && b != b'#');
        assert!(printable, "hosts line {line:?} names a node unprintably");
    }
    let mut expected = BTreeMap::new();
    for node in &directory.nodes {
        let address = node
            .addresses
            .iter()
            .find_map(|a| a.host.parse::<IpAddr>().ok());
        let listable = hostsfile::is_listable(&node.id) && node.id != "metropolis-self";
        if let (Some(address), true) = (address, listable) {
            expected.insert(node.id.as_str(), address);
        }
    }
    for (id, address) in &expected {
        assert_eq!(hostsfile::resolve(&hosts, id), Some(*address), "{id}");
    }
    assert_eq!(hostsfile::resolve(&hosts, "metropolis-self"), Some(own));
    assert_eq!(hosts.lines().count(), 3 + expected.len(), "{hosts}");
    true
}

/// The directory backend's volume header, checked against [`volume_key`].
pub fn volume_header(data: &[u8]) -> bool {
    storage::check_volume_header(Path::new("fuzz/.polis-volume"), data, &volume_key()).is_ok()
}

/// A certificate (DER) as a peer presents it and as an ESP holds a CA: every parser and
/// verifier that takes one.
pub fn certificate(data: &[u8]) -> bool {
    let fixture = fixture();
    let peer = Peer {
        remote: "198.18.0.2:7835".parse().expect("an address"),
        certificate: Some(data.to_vec()),
    };
    let _ = peer.public_key();
    let _ = pki::certificate_node_id(data);
    let _ = pki::is_curator_certificate(data);
    let _ =
        pki::verify_node_certificate(fixture.ca.certificate(), data, &fixture.key.verifying_key());
    let _ = tls::curator_client_config(None, &Trust::pinned(data.to_vec()));
    pki::serial_of(data).is_ok()
}

/// A CRL (DER), as the directory and Watch hand it to clients, the peer CRL to servers, and a
/// Curator to a node whose CRL went stale (checked by `verify_crl`, read back by the issuer).
pub fn crl(data: &[u8]) -> bool {
    let fixture = fixture();
    let trust = Trust {
        ca: fixture.ca.certificate().to_vec(),
        crls: vec![data.to_vec()],
    };
    let client = tls::curator_client_config(None, &trust).is_ok();
    let identity = Identity::ephemeral(&fixture.key).expect("an ephemeral identity");
    let server = tls::server_config(identity, ClientAuth::Ca(trust)).is_ok();
    assert_eq!(client, server, "client and server disagree on a CRL");
    let read = polis::pki::read_crl(data).is_ok();
    let _ = polis::pki::revoked_serials(data);
    let verified = polis::pki::verify_crl(fixture.ca.certificate(), data, polis::pki::unix_now());
    if verified.is_ok() {
        assert!(
            read && client,
            "a CRL of the CA that verifies must read and configure TLS"
        );
    }
    client
}

/// A member of etcd's member list (`name=url`), as it is read back into the `--initial-cluster`
/// a joining member starts with: what parses formats back to exactly the same text, one entry.
pub fn initial_cluster(data: &[u8]) -> bool {
    let Some((name, url)) = std::str::from_utf8(data)
        .ok()
        .and_then(|t| t.split_once('='))
    else {
        return false;
    };
    let Some(peer) = peers::parse(name, url) else {
        return false;
    };
    let port = u16::try_from(peer.port).expect("a parsed port fits");
    assert_eq!(peers::peer_url(&peer.host, port), url);
    let flag = peers::initial_cluster(std::slice::from_ref(&peer));
    assert_eq!(flag, format!("{name}={url}"));
    assert_eq!(flag.matches(',').count(), 0);
    true
}

/// What the certificate targets check against: a CA and a node key.
struct Fixture {
    ca: CertificateAuthority,
    key: SigningKey,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| Fixture {
        ca: CertificateAuthority::new("fuzz CA").expect("a CA"),
        key: pki::generate_key().expect("a key"),
    })
}

/// A node root and a firmware-configuration file for the `node_parameters` target, made once.
struct Scratch {
    _dir: tempfile::TempDir,
    root: NodeRoot,
    fw_cfg: PathBuf,
}

fn scratch() -> &'static Scratch {
    static SCRATCH: OnceLock<Scratch> = OnceLock::new();
    SCRATCH.get_or_init(|| {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let root = NodeRoot::new(dir.path());
        std::fs::create_dir_all(root.esp()).expect("the ESP directory");
        Scratch {
            fw_cfg: dir.path().join("fw_cfg"),
            root,
            _dir: dir,
        }
    })
}

/// Write `bytes` to `path`, or remove it, as `present` says.
fn put(path: &Path, present: bool, bytes: &[u8]) {
    match present {
        true => std::fs::write(path, bytes).expect("a scratch file"),
        false => {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inputs(dir: &str, target: &str) -> Vec<(PathBuf, Vec<u8>)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        entries
            .map(|e| e.expect("a directory entry").path())
            .map(|path| {
                let bytes = std::fs::read(&path).expect("a corpus file");
                (path, bytes)
            })
            .collect()
    }

    /// Every target has seeds, and every seed is accepted: the corpus starts fuzzing from inputs
    /// that reach past the first check.
    #[test]
    fn every_seed_is_accepted_by_its_target() {
        for (target, run) in TARGETS {
            let seeds = inputs("corpus", target);
            assert!(!seeds.is_empty(), "no seeds for {target}");
            for (path, bytes) in seeds {
                assert!(run(&bytes), "{target} refuses its seed {}", path.display());
            }
        }
    }

    /// The input of every crash found and fixed runs through its target without one.
    #[test]
    fn every_fixed_crash_stays_fixed() {
        for (target, run) in TARGETS {
            for (_, bytes) in inputs("regressions", target) {
                run(&bytes);
            }
        }
    }
}
