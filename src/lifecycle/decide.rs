//! What a booting node does, decided from what it finds (DESIGN §3): a sealed configuration
//! means join; an enrolment journal means resume that flow; node parameters mean bootstrap or
//! register; nothing is a fatal error that says what was looked for and where.

use std::path::{Path, PathBuf};

use prost::Message;

use crate::proto::api::node_parameters::{Cluster, ClusterBootstrap, ClusterRegister};
use crate::proto::api::NodeParameters;
use crate::proto::private::SealedEnvelope;
use crate::storage::{Esp, EspError};

/// Where QEMU's firmware configuration offers node parameters.
pub const FW_CFG_PARAMETERS: &str = "/sys/firmware/qemu_fw_cfg/by_name/opt/polis/parameters/raw";

/// What the lifecycle does on this boot.
#[derive(Debug)]
pub enum Flow {
    /// Rejoin: unseal this configuration, then JoinNode.
    Join(SealedEnvelope),
    /// Resume an interrupted enrolment from this sealed journal.
    Resume(SealedEnvelope),
    /// Start a new cluster owned by this key.
    Bootstrap(ClusterBootstrap),
    /// Register into an existing cluster.
    Register(ClusterRegister),
}

/// Why no flow can start.
#[derive(Debug, thiserror::Error)]
pub enum DecideError {
    /// Nothing says what this node is.
    #[error("nothing to boot from: no sealed configuration at {sealed}, no enrolment journal at {journal}, no node parameters at {parameters} nor in firmware configuration at {fw_cfg}")]
    NothingFound {
        /// Where the sealed configuration was looked for.
        sealed: PathBuf,
        /// Where the journal was looked for.
        journal: PathBuf,
        /// Where the parameters were looked for on the ESP.
        parameters: PathBuf,
        /// Where they were looked for in firmware configuration.
        fw_cfg: PathBuf,
    },
    /// Node parameters that name no flow.
    #[error("node parameters at {0} name neither cluster_bootstrap nor cluster_register")]
    EmptyParameters(String),
    /// Firmware-configuration parameters that do not decode.
    #[error("node parameters in firmware configuration at {path} are corrupted: {source}")]
    FwCfgCorrupted {
        /// The fw_cfg file.
        path: PathBuf,
        /// The decode error.
        source: prost::DecodeError,
    },
    /// An ESP file could not be read or is corrupted (the error names it).
    #[error(transparent)]
    Esp(#[from] EspError),
}

/// A warning the caller should log: parameters in both places, firmware configuration wins.
pub const FW_CFG_WINS: &str = "node parameters found on the ESP and in firmware configuration; using the firmware configuration's";

/// The node parameters, from firmware configuration or else the ESP, with where they came from
/// and whether both places had some (firmware configuration wins); `None` if neither has any.
pub fn parameters(
    esp: &Esp,
    fw_cfg: &Path,
) -> Result<Option<(NodeParameters, String, bool)>, DecideError> {
    let from_esp = match esp.parameters() {
        Ok(params) => Some(params),
        Err(EspError::NoParameters(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let from_fw_cfg = match std::fs::read(fw_cfg) {
        Ok(bytes) => Some(NodeParameters::decode(bytes.as_slice()).map_err(|source| {
            DecideError::FwCfgCorrupted {
                path: fw_cfg.to_owned(),
                source,
            }
        })?),
        Err(_) => None,
    };
    let both = from_esp.is_some() && from_fw_cfg.is_some();
    Ok(match (from_fw_cfg, from_esp) {
        (Some(params), _) => Some((params, fw_cfg.display().to_string(), both)),
        (None, Some(params)) => Some((params, esp.parameters_path().display().to_string(), both)),
        (None, None) => None,
    })
}

/// Decide this boot's flow from `esp` and the firmware configuration file at `fw_cfg` (absent on
/// most machines). Returns the flow and whether the fw_cfg-wins warning applies.
pub fn decide(esp: &Esp, fw_cfg: &Path) -> Result<(Flow, bool), DecideError> {
    match esp.sealed() {
        Ok(envelope) => return Ok((Flow::Join(envelope), false)),
        Err(EspError::NoSealed(_)) => {}
        Err(e) => return Err(e.into()),
    }
    match esp.journal() {
        Ok(envelope) => return Ok((Flow::Resume(envelope), false)),
        Err(EspError::NoJournal(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let (params, source, both) = match parameters(esp, fw_cfg)? {
        Some(found) => found,
        None => {
            return Err(DecideError::NothingFound {
                sealed: esp.sealed_path(),
                journal: esp.journal_path(),
                parameters: esp.parameters_path(),
                fw_cfg: fw_cfg.to_owned(),
            })
        }
    };
    let flow = match params.cluster {
        Some(Cluster::ClusterBootstrap(bootstrap)) => Flow::Bootstrap(bootstrap),
        Some(Cluster::ClusterRegister(register)) => Flow::Register(register),
        None => return Err(DecideError::EmptyParameters(source)),
    };
    Ok((flow, both))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::private::sealed_envelope::Protection;
    use crate::storage::NodeRoot;
    use crate::tpm::ENVELOPE_VERSION;

    fn setup() -> (tempfile::TempDir, Esp, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let esp = Esp::new(NodeRoot::new(dir.path()));
        let fw_cfg = dir.path().join("fw_cfg_raw");
        (dir, esp, fw_cfg)
    }

    fn bootstrap(key: u8) -> NodeParameters {
        NodeParameters {
            cluster: Some(Cluster::ClusterBootstrap(ClusterBootstrap {
                owner_public_key: vec![key; 32],
                ..Default::default()
            })),
            network: None,
        }
    }

    fn envelope() -> SealedEnvelope {
        SealedEnvelope {
            version: ENVELOPE_VERSION,
            protection: Protection::Tpm2Pcr7 as i32,
            payload: vec![1, 2, 3],
        }
    }

    #[test]
    fn nothing_found_names_every_place_looked() {
        let (_d, esp, fw_cfg) = setup();
        let err = decide(&esp, &fw_cfg).unwrap_err().to_string();
        for place in [
            "sealed_configuration.pb",
            "enrolment_journal.pb",
            "parameters.pb",
            "fw_cfg_raw",
        ] {
            assert!(err.contains(place), "{err}");
        }
    }

    #[test]
    fn parameters_from_the_esp_or_firmware_configuration_which_wins() {
        let (_d, esp, fw_cfg) = setup();
        esp.write_parameters(&bootstrap(1)).unwrap();
        match decide(&esp, &fw_cfg).unwrap() {
            (Flow::Bootstrap(b), false) => assert_eq!(b.owner_public_key, vec![1; 32]),
            other => panic!("{other:?}"),
        }
        std::fs::write(&fw_cfg, bootstrap(2).encode_to_vec()).unwrap();
        match decide(&esp, &fw_cfg).unwrap() {
            (Flow::Bootstrap(b), true) => assert_eq!(b.owner_public_key, vec![2; 32]),
            other => panic!("{other:?}"),
        }
        std::fs::write(&fw_cfg, [0x0a, 0xff]).unwrap();
        assert!(matches!(
            decide(&esp, &fw_cfg),
            Err(DecideError::FwCfgCorrupted { .. })
        ));
        std::fs::write(
            &fw_cfg,
            NodeParameters {
                cluster: None,
                network: None,
            }
            .encode_to_vec(),
        )
        .unwrap();
        assert!(matches!(
            decide(&esp, &fw_cfg),
            Err(DecideError::EmptyParameters(_))
        ));
    }

    #[test]
    fn a_journal_resumes_and_a_sealed_configuration_joins_whatever_the_parameters_say() {
        let (_d, esp, fw_cfg) = setup();
        esp.write_parameters(&bootstrap(1)).unwrap();
        esp.write_journal(&envelope()).unwrap();
        assert!(matches!(
            decide(&esp, &fw_cfg).unwrap(),
            (Flow::Resume(_), false)
        ));
        esp.write_sealed(&envelope()).unwrap();
        assert!(matches!(
            decide(&esp, &fw_cfg).unwrap(),
            (Flow::Join(_), false)
        ));
    }

    #[test]
    fn a_corrupted_sealed_configuration_stops_the_boot_instead_of_re_enrolling() {
        let (_d, esp, fw_cfg) = setup();
        esp.write_parameters(&bootstrap(1)).unwrap();
        std::fs::create_dir_all(esp.sealed_path().parent().unwrap()).unwrap();
        std::fs::write(esp.sealed_path(), b"garbage").unwrap();
        assert!(matches!(
            decide(&esp, &fw_cfg),
            Err(DecideError::Esp(EspError::SealedCorrupted { .. }))
        ));
    }
}
