//! The cluster lifecycle: deciding the boot flow (and, next, running it).

mod decide;

pub use decide::{decide, DecideError, Flow, FW_CFG_PARAMETERS, FW_CFG_WINS};
