//! The node's supervision tree (DESIGN §2), as far as its subsystems exist.

use std::time::Duration;

use polis_actors::{Backoff, ChildSpec, Strategy, SupervisorSpec};

/// Restarts tolerated at the root before the node gives up (on a real node: reboots).
const ROOT_MAX_RESTARTS: u32 = 3;
const ROOT_PERIOD: Duration = Duration::from_secs(60);

/// The root supervisor: one_for_one, so that a failure inside `core` never stops the lifecycle
/// actor. The node-local subsystems (storage, tpm, network) join `core` in dependency order, and
/// `lifecycle` and `cluster` follow, as they are built.
pub fn tree_spec() -> SupervisorSpec {
    let core = SupervisorSpec::new(Strategy::RestForOne)
        .intensity(5, Duration::from_secs(30))
        .backoff(Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            reset_after: Duration::from_secs(60),
        });
    SupervisorSpec::new(Strategy::OneForOne)
        .intensity(ROOT_MAX_RESTARTS, ROOT_PERIOD)
        .child(ChildSpec::supervisor("core", core).0)
}
