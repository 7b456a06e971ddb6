//! The cluster lifecycle (DESIGN §3): deciding the boot flow, running it resumably, filling the
//! `/cluster` subtree, and following the node's record afterwards.

mod actor;
mod client;
pub mod cluster;
mod decide;
mod enrol;
mod error;
mod join;
pub mod material;
mod pcr;

pub use actor::{Lifecycle, LifecycleConfig, LifecycleDeps};
pub use client::{connect, ReachError};
pub use decide::{decide, parameters, DecideError, Flow, FW_CFG_PARAMETERS, FW_CFG_WINS};
pub use error::LifecycleError;
