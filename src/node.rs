//! The node's supervision tree (DESIGN §2).

use std::time::Duration;

use polis_actors::{Backoff, ChildSpec, Restart, Strategy, SupervisorSpec, Watchable};

use crate::lifecycle::{cluster, Lifecycle, LifecycleConfig, LifecycleDeps};
use crate::metrics::NodeMetrics;
use crate::proto::common::ClusterDirectory;

use crate::network::{AddressSource, Network, NetworkStatus};
use crate::quorum::holder::ShareHolder;
use crate::storage::Esp;
use crate::storage::{Storage, StorageConfig};
use crate::tpm::{Tpm, TpmConfig};

/// Restarts tolerated at the root before the node gives up (on a real node: reboots).
const ROOT_MAX_RESTARTS: u32 = 3;
const ROOT_PERIOD: Duration = Duration::from_secs(60);

/// What a node needs to build its tree.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The node root, the data partition's backend and the ephemeral tmpfs.
    pub storage: StorageConfig,
    /// Where the TPM is, or the explicit choice to run without one.
    pub tpm: TpmConfig,
    /// Where the node's external address comes from.
    pub address: AddressSource,
    /// What the lifecycle needs beyond the disk: fw_cfg, hostname, hosts file, test hook.
    pub lifecycle: LifecycleConfig,
}

/// The values actors of the tree publish for others, which outlive any one incarnation.
#[derive(Clone, Debug)]
pub struct NodeState {
    /// The node's network status, published by `/core/network`.
    pub network: Watchable<NetworkStatus>,
    /// The cluster directory as the lifecycle last learnt it.
    pub directory: Watchable<ClusterDirectory>,
    /// The node's own metric families, for the debug endpoint to serve.
    pub metrics: NodeMetrics,
}

/// The root supervisor: one_for_one, so that a failure inside `core` never stops the lifecycle
/// actor. `core` holds the node-local subsystems in dependency order (storage, tpm, network,
/// and the share holder that serves peers on a cold start), rest_for_one; `lifecycle` runs once; `cluster` starts empty and the lifecycle fills it once
/// the data partition is up.
pub fn tree_spec(config: &NodeConfig) -> (SupervisorSpec, NodeState) {
    let state = NodeState {
        network: Watchable::new(NetworkStatus::default()),
        directory: Watchable::new(ClusterDirectory::default()),
        metrics: NodeMetrics::default(),
    };
    let (source, status) = (config.address.clone(), state.network.clone());
    let (network, _) = ChildSpec::worker("network", move || {
        Ok(Network::new(source.clone(), status.clone()))
    });
    let (tpm_config, tpm_esp) = (config.tpm.clone(), Esp::new(config.lifecycle.root.clone()));
    let (tpm, tpm_ref) = ChildSpec::worker("tpm", move || {
        Ok(Tpm::new(tpm_config.clone(), tpm_esp.clone()))
    });
    let storage_config = config.storage.clone();
    let storage_tpm = tpm_ref.clone();
    let (storage, storage_ref) = ChildSpec::worker("storage", move || {
        Ok(Storage::new(storage_config.clone(), storage_tpm.clone()))
    });
    let (holder_esp, holder_tpm, holder_network) = (
        Esp::new(config.lifecycle.root.clone()),
        tpm_ref.clone(),
        state.network.clone(),
    );
    let (shares, _) = ChildSpec::worker("shares", move || {
        Ok(ShareHolder::new(
            holder_esp.clone(),
            holder_tpm.clone(),
            holder_network.clone(),
        ))
    });
    let (cluster, cluster_ref) = cluster::supervisor();
    let deps = LifecycleDeps {
        storage: storage_ref,
        tpm: tpm_ref,
        cluster: cluster_ref,
        network: state.network.clone(),
        directory: state.directory.clone(),
        metrics: state.metrics.clone(),
    };
    let lifecycle_config = config.lifecycle.clone();
    let (lifecycle, _) = ChildSpec::worker("lifecycle", move || {
        Ok(Lifecycle::new(lifecycle_config.clone(), deps.clone()))
    });
    let core = SupervisorSpec::new(Strategy::RestForOne)
        .intensity(5, Duration::from_secs(30))
        .backoff(Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(10),
            reset_after: Duration::from_secs(60),
        })
        .child(storage)
        .child(tpm)
        .child(network)
        .child(shares);
    let root = SupervisorSpec::new(Strategy::OneForOne)
        .intensity(ROOT_MAX_RESTARTS, ROOT_PERIOD)
        .child(ChildSpec::supervisor("core", core).0)
        .child(lifecycle.restart(Restart::Once).start_timeout(None))
        .child(cluster);
    (root, state)
}
