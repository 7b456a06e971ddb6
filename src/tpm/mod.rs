//! The TPM: sealing to PCR 7 and randomness, and a software TPM for tests and local runs.

mod sealer;
mod swtpm;

pub use sealer::{Sealer, TpmError};
pub use swtpm::{Swtpm, SwtpmError};
