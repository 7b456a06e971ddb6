//! Polis: the init process of a cluster node. The supervision runtime lives in `polis-actors`;
//! this crate holds the node's subsystems, its protobufs and its binaries.

pub mod chaos;
pub mod consensus;
pub mod crash_point;
pub mod curator;
pub mod debug_client;
pub mod fsutil;
pub mod grpc;
pub mod hostsfile;
pub mod init;
pub mod launch;
pub mod lifecycle;
pub mod metrics;
pub mod netns;
pub mod network;
pub mod node;
pub mod owner;
pub mod pki;
pub mod poll;
pub mod process;
pub mod proto;
pub mod quorum;
pub mod retry;
pub mod storage;
pub mod tls;
pub mod tpm;
pub mod vm;
