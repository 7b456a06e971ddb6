//! The TPM: the actor that owns it, sealing to PCR 7 or under the cluster's PCR policy, the
//! node's recovery key, randomness, and a software TPM for tests and local runs.

mod actor;
mod openssl_context;
pub mod policy;
mod sealer;
mod swtpm;

pub use actor::{
    CreateRecoveryKey, Random, ReadPcr7, Seal, SignWithRecoveryKey, Tpm, TpmConfig, Unseal,
    ENVELOPE_VERSION,
};
pub use sealer::{RecoveryKey, SealedKind, SealedObject, Sealer, TpmError};
pub use swtpm::{Swtpm, SwtpmError};
