//! The TPM: the actor that owns it, sealing to PCR 7 and randomness, and a software TPM for
//! tests and local runs.

mod actor;
mod sealer;
mod swtpm;

pub use actor::{Random, Seal, Tpm, TpmConfig, Unseal, ENVELOPE_VERSION};
pub use sealer::{SealedKind, SealedObject, Sealer, TpmError};
pub use swtpm::{Swtpm, SwtpmError};
