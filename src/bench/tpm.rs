//! The TPM's share of P1 and P2: a software TPM's operations as a boot runs them, each timed
//! beside the floor, a TPM command that needs no session (GetRandom), round by round. A cold
//! boot derives the storage primary at its first seal and seals its enrolment journal; a
//! restart unseals its configuration under the cluster's PCR policy.

use std::path::Path;
use std::time::Instant;

use super::{ms, BenchError};
use crate::proto::private::pcr_authority::Approval;
use crate::proto::private::PcrAuthority;
use crate::tpm::policy::PolicyKey;
use crate::tpm::{SealedKind, Sealer, Swtpm};

/// A node ID for the approval: any will do.
const NODE: &str = "metropolis-00000000000000000000000000000000";
/// About an enrolment journal's size.
const SECRET: [u8; 600] = [0x5a; 600];

/// Every round's times, milliseconds (a TPM command without a session takes a tenth of one).
#[derive(Clone, Debug, Default)]
pub struct TpmTimes {
    /// A new connection's first seal, which derives the storage primary.
    pub first_seal: Vec<f64>,
    /// A seal on a connection in use.
    pub seal: Vec<f64>,
    /// An unseal under the cluster's PCR policy (`TPM2_PolicyAuthorize`).
    pub unseal: Vec<f64>,
    /// The same on a new connection, as a restarted node's: the connection, the kept primary
    /// looked up and its salted session started, then the unseal.
    pub new_connection_unseal: Vec<f64>,
    /// The floor: 32 random bytes, a command without a session.
    pub floor: Vec<f64>,
}

/// `rounds` rounds against a new swtpm whose state lives below `dir`.
pub fn operations(dir: &Path, rounds: usize, log: &slog::Logger) -> Result<TpmTimes, BenchError> {
    let swtpm = Swtpm::start(&dir.join("tpm"), log)?;
    let key = PolicyKey::from_pkcs8(&PolicyKey::generate()?)?;
    let kind = SealedKind::Configuration;
    let mut out = TpmTimes::default();
    for _ in 0..rounds {
        let began = Instant::now();
        let mut sealer = Sealer::connect(&swtpm.tcti())?;
        sealer.seal(kind, &SECRET)?;
        out.first_seal.push(ms(began.elapsed()));

        let pcr7 = sealer.pcr7()?;
        let authority = PcrAuthority {
            node_id: NODE.into(),
            policy_key: key.public(),
            approvals: vec![Approval {
                signature: key.approve(NODE, &pcr7)?,
                pcr7,
            }],
            ..Default::default()
        };
        let began = Instant::now();
        sealer.random(32)?;
        out.floor.push(ms(began.elapsed()));
        let began = Instant::now();
        let blob = sealer.seal_authorized(kind, &SECRET, &authority)?;
        out.seal.push(ms(began.elapsed()));
        let began = Instant::now();
        sealer.unseal_authorized(kind, &blob, &authority)?;
        out.unseal.push(ms(began.elapsed()));
        drop(sealer);
        let began = Instant::now();
        Sealer::connect(&swtpm.tcti())?.unseal_authorized(kind, &blob, &authority)?;
        out.new_connection_unseal.push(ms(began.elapsed()));
    }
    Ok(out)
}
