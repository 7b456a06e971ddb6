//! The node's own metrics, served beside the actors' mailbox metrics on the debug endpoint's
//! `/metrics`: the process's figures, the Curator's gRPC calls, and the cluster's health as
//! this node sees it.

pub mod grpc;
pub mod health;
pub mod process;

use prometheus_client::registry::Registry;

use grpc::GrpcMetrics;
use health::Health;
use process::ProcessCollector;

/// Every metric family of the node beyond its actors', created with the tree and handed to the
/// subsystems that update them.
#[derive(Clone, Debug, Default)]
pub struct NodeMetrics {
    /// The Curator's calls.
    pub grpc: GrpcMetrics,
    /// Lifecycle, etcd member, records and hosts file.
    pub health: Health,
}

impl NodeMetrics {
    /// Add every family, and the process collector, to `registry`.
    pub fn register(&self, registry: &mut Registry) {
        registry.register_collector(Box::new(ProcessCollector));
        self.grpc.register(registry);
        self.health.register(registry);
    }
}
