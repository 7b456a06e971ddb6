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

/// The value of the sample named `series` (its name with its labels, as printed) in
/// Prometheus text: how the benchmark and the tests read a node's `/metrics`.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.trim().parse().ok()
    })
}

#[cfg(test)]
mod tests {
    use super::sample;

    #[test]
    fn a_sample_is_found_by_its_whole_name_and_labels() {
        let text = "# HELP x_seconds help\n\
                    x_seconds_sum{grpc_method=\"RegisterNode\"} 0.5\n\
                    x_seconds_sum{grpc_method=\"Register\"} 0.25\n\
                    x_seconds_count{grpc_method=\"RegisterNode\"} 4\n\
                    polis_consensus_ready_seconds 0.031\n";
        assert_eq!(
            sample(text, "x_seconds_sum{grpc_method=\"Register\"}"),
            Some(0.25)
        );
        assert_eq!(
            sample(text, "x_seconds_count{grpc_method=\"RegisterNode\"}"),
            Some(4.0)
        );
        assert_eq!(sample(text, "polis_consensus_ready_seconds"), Some(0.031));
        assert_eq!(sample(text, "polis_consensus_ready"), None);
    }
}
