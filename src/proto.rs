//! The protobuf messages and gRPC services of `proto/`, generated at build time.

#![allow(
    missing_docs,
    clippy::large_enum_variant,
    clippy::doc_lazy_continuation
)]

/// Types shared by nodes, the Curator and the owner's tools.
pub mod common {
    tonic::include_proto!("polis.common");
}

/// Node parameters and the owner's management services.
pub mod api {
    tonic::include_proto!("polis.api");
}

/// Sealed configuration and the node records that only nodes and the Curator see.
pub mod private {
    tonic::include_proto!("polis.private");
}

/// The node-facing Curator services.
pub mod curator {
    tonic::include_proto!("polis.curator");
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::api::node_parameters::{Cluster, ClusterBootstrap};
    use super::api::NodeParameters;

    #[test]
    fn node_parameters_round_trip_and_corrupt_bytes_are_an_error() {
        let params = NodeParameters {
            cluster: Some(Cluster::ClusterBootstrap(ClusterBootstrap {
                owner_public_key: vec![7; 32],
                ..Default::default()
            })),
            network: None,
        };
        let bytes = params.encode_to_vec();
        assert_eq!(NodeParameters::decode(bytes.as_slice()).unwrap(), params);
        // A length prefix that runs past the end of the buffer.
        assert!(NodeParameters::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(NodeParameters::decode(&[0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f][..]).is_err());
    }

    #[test]
    fn messages_that_carry_keys_are_wiped_when_dropped() {
        // A compile-time check: build.rs derives the wipe; without it this test does not build.
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<super::private::SealedConfiguration>();
        wiped_on_drop::<super::private::EnrolmentJournal>();
        wiped_on_drop::<super::private::HeldShares>();
        wiped_on_drop::<super::private::Share>();
    }
}
