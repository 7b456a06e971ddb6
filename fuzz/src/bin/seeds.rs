//! Writes the seed corpus: one or more valid inputs per target, so that fuzzing starts past the
//! first check of each decoder. Run once when a format changes:
//! `cargo run -p polis-fuzz --bin seeds -- fuzz/corpus` (needs swtpm, for a real sealed blob).

use std::path::{Path, PathBuf};

use prost::Message;

use polis::pki::{generate_key, CertificateAuthority, Template};
use polis::proto::api::node_parameters::{Cluster, ClusterBootstrap, ClusterRegister};
use polis::proto::api::NodeParameters;
use polis::proto::common::{cluster_directory, Address, ClusterDirectory};
use polis::proto::private::enrolment_journal::Flow;
use polis::proto::private::pcr_authority::Approval;
use polis::proto::private::sealed_envelope::Protection;
use polis::proto::private::{EnrolmentJournal, PcrAuthority, SealedConfiguration, SealedEnvelope};
use polis::storage::{DataBackend, NodeRoot, Previous};
use polis::tpm::policy::PolicyKey;
use polis::tpm::ENVELOPE_VERSION;
use polis::tpm::{SealedKind, Sealer, Swtpm};

type Seeds = Vec<(&'static str, Vec<u8>)>;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(std::env::args().nth(1).ok_or("usage: seeds CORPUS_DIR")?);
    let mut seeds: Seeds = Vec::new();
    let scratch = tempfile::tempdir()?;

    let log = slog::Logger::root(slog::Discard, slog::o!());
    let swtpm = Swtpm::start(&scratch.path().join("tpm"), &log)?;
    let mut sealer = Sealer::connect(&swtpm.tcti())?;
    let blob = sealer.seal(SealedKind::Configuration, b"seed")?;
    seeds.push(("sealed_blob", blob.clone()));
    let recovery = sealer.create_recovery_key()?;
    let policy_key = PolicyKey::from_pkcs8(&PolicyKey::generate()?)?;
    let pcr7 = sealer.pcr7()?;
    let node = "metropolis-00000000000000000000000000000000";
    let authority = PcrAuthority {
        node_id: node.into(),
        ca_certificate: b"ca".to_vec(),
        policy_key: policy_key.public(),
        recovery_key_public: recovery.public,
        recovery_key_private: recovery.private,
        approvals: vec![Approval {
            signature: policy_key.approve(node, &pcr7)?,
            pcr7,
        }],
    };
    seeds.push(("pcr_authority", authority.encode_to_vec()));
    for (protection, payload) in [
        (Protection::Tpm2Pcr7, blob),
        (Protection::InsecurePlaintext, b"plain".to_vec()),
    ] {
        let envelope = SealedEnvelope {
            version: ENVELOPE_VERSION,
            protection: protection as i32,
            payload,
        };
        seeds.push(("sealed_envelope", envelope.encode_to_vec()));
    }

    let key = |b: u8| vec![b; 32];
    let config = SealedConfiguration {
        node_unlock_key: key(1),
        join_key: key(2),
        cluster_ca: b"ca".to_vec(),
        cluster_unlock_key: key(3),
        cluster_unlock_key_digest: key(4),
    };
    seeds.push(("sealed_configuration", config.encode_to_vec()));
    let mut escrowed = config.clone();
    escrowed.cluster_unlock_key.clear();
    seeds.push(("sealed_configuration", escrowed.encode_to_vec()));

    let ca = CertificateAuthority::new("seed CA")?;
    let directory = ClusterDirectory {
        nodes: ["198.18.0.2", "198.18.0.3", "fd00::4"]
            .iter()
            .enumerate()
            .map(|(i, host)| cluster_directory::Node {
                id: format!("metropolis-{i:032x}"),
                addresses: vec![Address {
                    host: host.to_string(),
                }],
                curator: i == 0,
            })
            .collect(),
        crl: ca.crl(1, &[], polis::pki::DEFAULT_CRL_VALIDITY)?,
    };
    seeds.push(("cluster_directory", directory.encode_to_vec()));
    let bootstrap = Cluster::ClusterBootstrap(ClusterBootstrap {
        owner_public_key: key(5),
        ..Default::default()
    });
    let register = Cluster::ClusterRegister(ClusterRegister {
        cluster_directory: Some(directory),
        register_ticket: key(6),
        ca_certificate: ca.certificate().to_vec(),
    });
    for (flow, cluster) in [(Flow::Bootstrap, bootstrap), (Flow::Register, register)] {
        let params = NodeParameters {
            cluster: Some(cluster),
            network: None,
        }
        .encode_to_vec();
        // The first byte says where the target puts them: 1 the ESP, 2 fw_cfg, 3 both.
        for place in 1..=3u8 {
            seeds.push(("node_parameters", [&[place][..], &params].concat()));
        }
        let journal = EnrolmentJournal {
            flow: flow as i32,
            step: 2,
            node_unlock_key: key(1),
            node_key: key(7),
            join_key: key(2),
            parameters: params,
            cluster_unlock_key: key(3),
            recovery_key_public: key(4),
            recovery_key_private: key(5),
        };
        seeds.push(("enrolment_journal", journal.encode_to_vec()));
    }

    let root = NodeRoot::new(scratch.path().join("node"));
    DataBackend::Directory.format(&root, &polis_fuzz::volume_key(), Previous::Refuse)?;
    seeds.push((
        "volume_header",
        std::fs::read(root.data().join(".polis-volume"))?,
    ));

    let node_id = "metropolis-00000000000000000000000000000000".to_owned();
    let public = generate_key()?.verifying_key();
    seeds.push(("certificate", ca.certificate().to_vec()));
    for template in [
        Template::Node {
            node_id: node_id.clone(),
        },
        Template::Curator { node_id },
    ] {
        seeds.push(("certificate", ca.issue(&template, &public)?.der));
    }
    seeds.push(("crl", ca.crl(1, &[], polis::pki::DEFAULT_CRL_VALIDITY)?));
    seeds.push((
        "crl",
        ca.crl(
            2,
            &[vec![1, 2, 3], vec![4, 5, 6]],
            polis::pki::DEFAULT_CRL_VALIDITY,
        )?,
    ));

    seeds.push((
        "initial_cluster",
        b"metropolis-a=https://198.18.0.2:7834".to_vec(),
    ));
    seeds.push((
        "initial_cluster",
        b"metropolis-a=https://198.18.0.2:7834,metropolis-b=https://[fd00::3]:7834".to_vec(),
    ));

    write(&out, seeds)
}

/// Replace every target's `seed-*` files in `out` with `seeds`, numbered in order.
fn write(out: &Path, seeds: Seeds) -> Result<(), Box<dyn std::error::Error>> {
    for (target, _) in polis_fuzz::TARGETS {
        let dir = out.join(target);
        std::fs::create_dir_all(&dir)?;
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("seed-"))
            {
                std::fs::remove_file(path)?;
            }
        }
        let mine = seeds.iter().filter(|(t, _)| t == target);
        for (i, (_, bytes)) in mine.enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), bytes)?;
        }
    }
    Ok(())
}
