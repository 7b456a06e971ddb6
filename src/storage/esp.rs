//! Typed access to the ESP files. Reads tell "absent" from "unreadable" from "corrupted";
//! writes are atomic. The sealed configuration is handled only inside its versioned envelope,
//! so a sealed blob is never parsed as plaintext.

use std::path::{Path, PathBuf};

use prost::Message;

use crate::fsutil::{self, FsError, PUBLIC_MODE, SECRET_MODE};
use crate::proto::api::node_parameters::Cluster;
use crate::proto::api::NodeParameters;
use crate::proto::common::ClusterDirectory;
use crate::proto::private::sealed_envelope::Protection;
use crate::proto::private::{PcrAuthority, SealedEnvelope};
use crate::storage::NodeRoot;
use crate::tpm::ENVELOPE_VERSION;

/// What can be wrong with an ESP file; every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum EspError {
    /// The installer left no parameters.
    #[error("no node parameters at {0}")]
    NoParameters(PathBuf),
    /// The parameters do not decode.
    #[error("node parameters at {path} are corrupted: {source}")]
    ParametersCorrupted {
        /// The file.
        path: PathBuf,
        /// The decode error.
        source: prost::DecodeError,
    },
    /// No sealed configuration: the node is not a member yet.
    #[error("no sealed configuration at {0}")]
    NoSealed(PathBuf),
    /// The sealed configuration exists but cannot be read now (I/O); retrying may help.
    #[error("sealed configuration unavailable: {0}")]
    SealedUnavailable(#[source] FsError),
    /// The sealed configuration is not a valid envelope.
    #[error("sealed configuration at {path} is corrupted: {reason}")]
    SealedCorrupted {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No held shares: the node holds no share of a peer's CUK.
    #[error("no held shares at {0}")]
    NoHeldShares(PathBuf),
    /// No enrolment journal: no enrolment is under way.
    #[error("no enrolment journal at {0}")]
    NoJournal(PathBuf),
    /// No cluster directory.
    #[error("no cluster directory at {0}")]
    NoDirectory(PathBuf),
    /// The cluster directory does not decode.
    #[error("cluster directory at {path} is corrupted: {source}")]
    DirectoryCorrupted {
        /// The file.
        path: PathBuf,
        /// The decode error.
        source: prost::DecodeError,
    },
    /// No PCR authority: the node seals to PCR 7 itself.
    #[error("no PCR authority at {0}")]
    NoAuthority(PathBuf),
    /// The PCR authority does not decode.
    #[error("PCR authority at {path} is corrupted: {source}")]
    AuthorityCorrupted {
        /// The file.
        path: PathBuf,
        /// The decode error.
        source: prost::DecodeError,
    },
    /// Another I/O failure, naming the file.
    #[error(transparent)]
    Io(#[from] FsError),
}

/// The ESP of one node root.
#[derive(Clone, Debug)]
pub struct Esp {
    root: NodeRoot,
}

impl Esp {
    /// The ESP below `root`.
    pub fn new(root: NodeRoot) -> Self {
        Esp { root }
    }

    /// The node parameters the installer left.
    pub fn parameters(&self) -> Result<NodeParameters, EspError> {
        read_message(
            &self.root.parameters(),
            EspError::NoParameters,
            |path, source| EspError::ParametersCorrupted { path, source },
        )
    }

    /// Write node parameters (the installer's and the launcher's job).
    pub fn write_parameters(&self, params: &NodeParameters) -> Result<(), EspError> {
        Ok(fsutil::write_atomic(
            &self.root.parameters(),
            &params.encode_to_vec(),
            PUBLIC_MODE,
        )?)
    }

    /// Remove the register ticket from the parameters, if they hold one: once a node is
    /// enrolled it never needs the ticket again, and a ticket left readable on every node's ESP
    /// lets anyone who reads one register nodes. Answers whether there was one.
    pub fn scrub_register_ticket(&self) -> Result<bool, EspError> {
        let mut params = match self.parameters() {
            Ok(params) => params,
            Err(EspError::NoParameters(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        match &mut params.cluster {
            Some(Cluster::ClusterRegister(register)) if !register.register_ticket.is_empty() => {
                register.register_ticket.clear();
                self.write_parameters(&params)?;
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The sealed configuration's envelope, checked for format and version; unsealing it is the
    /// TPM sealer's job.
    pub fn sealed(&self) -> Result<SealedEnvelope, EspError> {
        read_envelope(&self.root.sealed_configuration(), EspError::NoSealed)
    }

    /// The sealed enrolment journal's envelope, checked like the sealed configuration's.
    pub fn journal(&self) -> Result<SealedEnvelope, EspError> {
        read_envelope(&self.root.enrolment_journal(), EspError::NoJournal)
    }

    /// Replace the enrolment journal (owner-only file, atomic).
    pub fn write_journal(&self, envelope: &SealedEnvelope) -> Result<(), EspError> {
        write_envelope(&self.root.enrolment_journal(), envelope)
    }

    /// Remove the enrolment journal once the sealed configuration has replaced it.
    pub fn remove_journal(&self) -> Result<(), EspError> {
        remove(&self.root.enrolment_journal())
    }

    /// Whether the formatting mark is there: an enrolment formatted the data partition and may
    /// have stopped before its journal held the keys.
    pub fn formatting_marked(&self) -> bool {
        self.root.formatting_mark().exists()
    }

    /// Set the formatting mark, durably, before a new enrolment formats the data partition.
    pub fn mark_formatting(&self) -> Result<(), EspError> {
        Ok(fsutil::create_mark(&self.root.formatting_mark())?)
    }

    /// Remove the formatting mark, durably, once the journal holds the partition's keys.
    pub fn clear_formatting_mark(&self) -> Result<(), EspError> {
        Ok(fsutil::remove_durably(&self.root.formatting_mark())?)
    }

    /// The sealed shares this node holds of its peers' CUKs (quorum unlock), checked like the
    /// sealed configuration's envelope.
    pub fn held_shares(&self) -> Result<SealedEnvelope, EspError> {
        read_envelope(&self.root.held_shares(), EspError::NoHeldShares)
    }

    /// Replace the held shares (owner-only file, atomic).
    pub fn write_held_shares(&self, envelope: &SealedEnvelope) -> Result<(), EspError> {
        write_envelope(&self.root.held_shares(), envelope)
    }

    /// Remove the held shares (the node holds none any more).
    pub fn remove_held_shares(&self) -> Result<(), EspError> {
        remove(&self.root.held_shares())
    }

    /// Where the held shares live.
    pub fn held_shares_path(&self) -> PathBuf {
        self.root.held_shares()
    }

    /// Where the sealed configuration lives.
    pub fn sealed_path(&self) -> PathBuf {
        self.root.sealed_configuration()
    }

    /// Where the enrolment journal lives.
    pub fn journal_path(&self) -> PathBuf {
        self.root.enrolment_journal()
    }

    /// Where the node parameters live.
    pub fn parameters_path(&self) -> PathBuf {
        self.root.parameters()
    }

    /// Replace the sealed configuration (owner-only file, atomic).
    pub fn write_sealed(&self, envelope: &SealedEnvelope) -> Result<(), EspError> {
        write_envelope(&self.root.sealed_configuration(), envelope)
    }

    /// The cluster's PCR policy for this node, if it has one (enrolled with a TPM by a Polis
    /// that seals under it).
    pub fn pcr_authority(&self) -> Result<Option<PcrAuthority>, EspError> {
        let path = self.root.pcr_authority();
        let read = read_message(&path, EspError::NoAuthority, |path, source| {
            EspError::AuthorityCorrupted { path, source }
        });
        match read {
            Ok(authority) => Ok(Some(authority)),
            Err(EspError::NoAuthority(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Where the PCR authority is kept.
    pub fn pcr_authority_path(&self) -> PathBuf {
        self.root.pcr_authority()
    }

    /// Replace the PCR authority (atomic; nothing in it is secret).
    pub fn write_pcr_authority(&self, authority: &PcrAuthority) -> Result<(), EspError> {
        Ok(fsutil::write_atomic(
            &self.root.pcr_authority(),
            &authority.encode_to_vec(),
            PUBLIC_MODE,
        )?)
    }

    /// The cluster directory as a boot needs it: the Curators and the CRL ([`boot_directory`]).
    pub fn directory(&self) -> Result<ClusterDirectory, EspError> {
        read_message(
            &self.root.cluster_directory(),
            EspError::NoDirectory,
            |path, source| EspError::DirectoryCorrupted { path, source },
        )
    }

    /// Where the cluster directory is kept.
    pub fn directory_path(&self) -> PathBuf {
        self.root.cluster_directory()
    }

    /// Replace the cluster directory with `directory`'s [`boot_directory`].
    pub fn write_directory(&self, directory: &ClusterDirectory) -> Result<(), EspError> {
        Ok(fsutil::write_atomic(
            &self.directory_path(),
            &boot_directory(directory).encode_to_vec(),
            PUBLIC_MODE,
        )?)
    }
}

/// What of `directory` the ESP keeps across reboots: the Curators (the only nodes a node dials)
/// and the CRL. Not the other nodes: the ESP copy then changes only when the Curators or the CRL
/// do, not at every registration, whose fsyncs on a busy Curator competed with etcd's (issue 12).
/// The hosts file gets the whole directory from the first Watch event after a boot.
pub fn boot_directory(directory: &ClusterDirectory) -> ClusterDirectory {
    ClusterDirectory {
        nodes: directory
            .nodes
            .iter()
            .filter(|node| node.curator)
            .cloned()
            .collect(),
        crl: directory.crl.clone(),
    }
}

/// Replace the sealed envelope at `path` (owner-only file, atomic).
fn write_envelope(path: &Path, envelope: &SealedEnvelope) -> Result<(), EspError> {
    Ok(fsutil::write_atomic(
        path,
        &envelope.encode_to_vec(),
        SECRET_MODE,
    )?)
}

/// Remove the file at `path`, if it is there.
fn remove(path: &Path) -> Result<(), EspError> {
    Ok(fsutil::remove_if_present(path, "remove").map(drop)?)
}

/// The bytes of the ESP file at `path`: `absent` (naming it) if there is none, `unreadable` if it
/// is there but cannot be read.
fn read(
    path: &Path,
    absent: fn(PathBuf) -> EspError,
    unreadable: fn(FsError) -> EspError,
) -> Result<Vec<u8>, EspError> {
    fsutil::read(path).map_err(|e| match e.is_not_found() {
        true => absent(path.to_owned()),
        false => unreadable(e),
    })
}

/// The protobuf message in the ESP file at `path`: `absent` if there is none, `corrupted` if it
/// does not decode.
fn read_message<M: Message + Default>(
    path: &Path,
    absent: fn(PathBuf) -> EspError,
    corrupted: fn(PathBuf, prost::DecodeError) -> EspError,
) -> Result<M, EspError> {
    let bytes = read(path, absent, EspError::Io)?;
    M::decode(bytes.as_slice()).map_err(|source| corrupted(path.to_owned(), source))
}

/// Read a sealed envelope at `path`: `absent` if there is none, `SealedUnavailable` if it cannot
/// be read now, else as [`decode_envelope`] finds it.
fn read_envelope(path: &Path, absent: fn(PathBuf) -> EspError) -> Result<SealedEnvelope, EspError> {
    let bytes = read(path, absent, EspError::SealedUnavailable)?;
    decode_envelope(path, &bytes)
}

/// Decode the bytes of the sealed envelope read from `path` (named in errors):
/// `SealedCorrupted` unless it is an envelope of a known version and protection. The fuzz target
/// `sealed_envelope` drives this with arbitrary bytes.
pub fn decode_envelope(path: &Path, bytes: &[u8]) -> Result<SealedEnvelope, EspError> {
    let corrupted = |reason: String| EspError::SealedCorrupted {
        path: path.to_owned(),
        reason,
    };
    let envelope =
        SealedEnvelope::decode(bytes).map_err(|e| corrupted(format!("not an envelope: {e}")))?;
    if envelope.version != ENVELOPE_VERSION {
        return Err(corrupted(format!(
            "unknown envelope version {}",
            envelope.version
        )));
    }
    match Protection::try_from(envelope.protection) {
        Ok(
            Protection::Tpm2Pcr7 | Protection::Tpm2Pcr7Authorized | Protection::InsecurePlaintext,
        ) => Ok(envelope),
        _ => Err(corrupted(format!(
            "unknown protection {}",
            envelope.protection
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::fs;
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::proto::api::node_parameters::{Cluster, ClusterBootstrap};
    use crate::proto::common::{cluster_directory, Address};

    fn esp() -> (tempfile::TempDir, NodeRoot, Esp) {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path());
        (dir, root.clone(), Esp::new(root))
    }

    #[test]
    fn absent_files_are_told_apart() {
        let (_d, root, esp) = esp();
        assert!(
            matches!(esp.parameters(), Err(EspError::NoParameters(p)) if p == root.parameters())
        );
        assert!(matches!(esp.sealed(), Err(EspError::NoSealed(_))));
        assert!(matches!(esp.directory(), Err(EspError::NoDirectory(_))));
    }

    #[test]
    fn round_trips() {
        let (_d, root, esp) = esp();
        let params = NodeParameters {
            cluster: Some(Cluster::ClusterBootstrap(ClusterBootstrap {
                owner_public_key: vec![1; 32],
                ..Default::default()
            })),
            network: None,
        };
        esp.write_parameters(&params).unwrap();
        assert_eq!(esp.parameters().unwrap(), params);

        let directory = ClusterDirectory {
            nodes: vec![cluster_directory::Node {
                addresses: vec![Address {
                    host: "198.18.0.2".into(),
                }],
                id: "metropolis-00".into(),
                curator: true,
            }],
            crl: vec![1, 2, 3],
        };
        let mut with_worker = directory.clone();
        with_worker.nodes.push(cluster_directory::Node {
            addresses: vec![Address {
                host: "198.18.0.3".into(),
            }],
            id: "metropolis-01".into(),
            curator: false,
        });
        esp.write_directory(&with_worker).unwrap();
        assert_eq!(
            esp.directory().unwrap(),
            directory,
            "the ESP keeps the Curators and the CRL, not the workers"
        );

        let envelope = SealedEnvelope {
            version: ENVELOPE_VERSION,
            protection: Protection::Tpm2Pcr7 as i32,
            payload: vec![9; 100],
        };
        esp.write_sealed(&envelope).unwrap();
        assert_eq!(esp.sealed().unwrap(), envelope);
        let mode = fs::metadata(root.sealed_configuration())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o400);
    }

    #[test]
    fn corrupted_files_are_typed_errors() {
        let (_d, root, esp) = esp();
        fs::create_dir_all(root.esp()).unwrap();
        // A truncated length-delimited field.
        fs::write(root.parameters(), [0x0a, 0x05, 0x01]).unwrap();
        assert!(matches!(
            esp.parameters(),
            Err(EspError::ParametersCorrupted { .. })
        ));
        fs::write(root.cluster_directory(), [0x0a, 0xff]).unwrap();
        assert!(matches!(
            esp.directory(),
            Err(EspError::DirectoryCorrupted { .. })
        ));

        // Raw sealed bytes, as an older format or an attacker would leave them.
        fs::write(root.sealed_configuration(), [0xde, 0xad, 0xbe, 0xef]).unwrap();
        assert!(matches!(
            esp.sealed(),
            Err(EspError::SealedCorrupted { .. })
        ));
        let future = SealedEnvelope {
            version: 2,
            protection: 1,
            payload: vec![],
        };
        fs::write(root.sealed_configuration(), future.encode_to_vec()).unwrap();
        let err = esp.sealed().unwrap_err();
        assert!(
            err.to_string().contains("unknown envelope version 2"),
            "{err}"
        );
        let unprotected = SealedEnvelope {
            version: 1,
            protection: 0,
            payload: vec![],
        };
        fs::write(root.sealed_configuration(), unprotected.encode_to_vec()).unwrap();
        assert!(matches!(
            esp.sealed(),
            Err(EspError::SealedCorrupted { .. })
        ));
    }

    #[test]
    fn an_unreadable_sealed_configuration_is_unavailable_not_absent() {
        let (_d, root, esp) = esp();
        // A directory where the file should be: reading it fails with an I/O error.
        fs::create_dir_all(root.sealed_configuration()).unwrap();
        assert!(matches!(esp.sealed(), Err(EspError::SealedUnavailable(_))));
    }
}
