//! The Curator: the cluster's control-plane API, served by every consensus member over Polis TLS.
//! Nodes register, commit and join through it; the owner escrows and manages through it. Its
//! state is the node records in etcd ([`records`]); `service` holds the RPC handlers and
//! `actor` the supervised server.

mod actor;
mod decommission;
mod escrow;
pub mod mirror;
mod owner_only;
mod reconciler;
pub mod records;
mod server_certificate;
mod service;

pub use actor::{Curator, CuratorConfig, CuratorStart, Handover, CURATOR_PORT};
pub use decommission::Decommissioner;
pub use escrow::Escrower;
pub use records::Records;
pub use service::{Services, MAX_WATCHES_PER_NODE};

use tonic::{Code, Status};

use crate::consensus::ConsensusError;
use crate::issuer::{IssuerError, RevocationError};
use crate::pki::PkiError;

/// Why a Curator call was refused or failed; each maps to one gRPC code.
#[derive(Debug, thiserror::Error)]
pub enum CuratorError {
    /// The caller presented no certificate the call can authorize.
    #[error("no client certificate")]
    Unauthenticated,
    /// The register ticket is not the cluster's.
    #[error("wrong register ticket")]
    WrongTicket,
    /// Another node registered with this join key first.
    #[error("join key {0} belongs to another node")]
    JoinKeyInUse(String),
    /// The caller is not the owner.
    #[error("this call needs the owner certificate")]
    NotOwner,
    /// The caller's key is not the bootstrap owner key.
    #[error("this key is not the cluster's owner key")]
    NotInitialOwner,
    /// No node with this ID (or join key).
    #[error("unknown node {0}")]
    UnknownNode(String),
    /// The node was decommissioned and may never join.
    #[error("node {0} is decommissioned")]
    Decommissioned(String),
    /// The node registered with another join key.
    #[error("node {0} is registered with a different join key")]
    JoinKeyMismatch(String),
    /// The node committed another CUK before.
    #[error("node {0} committed a different cluster unlock key before")]
    CukMismatch(String),
    /// The node is the cluster's last consensus member: without it there is no etcd.
    #[error("node {0} is the cluster's last consensus member; it cannot be decommissioned")]
    LastConsensusMember(String),
    /// The node was approved after CommitNode read its record, so no certificate was issued
    /// for it; CommitNode reads again (a caller never sees this).
    #[error("node {0} was approved while it committed; retry")]
    ApprovedMeanwhile(String),
    /// The owner has not approved the node yet.
    #[error("node {0} is not approved yet")]
    NotApproved(String),
    /// The node is in the wrong state for the call.
    #[error("node {id} is {state}, not {wanted}")]
    WrongState {
        /// The node.
        id: String,
        /// Its state.
        state: &'static str,
        /// The state the call needs.
        wanted: &'static str,
    },
    /// A request field is malformed.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// The field.
        field: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// A recovery request not signed by the node's recorded recovery key.
    #[error("the PCR approval request for node {0} is not signed by its recovery key")]
    BadRecoverySignature(String),
    /// The node has no PCR request for the value the owner decided on.
    #[error("node {id} asks for no PCR 7 value {pcr7} (see polisctl pcr-requests)")]
    NoPcrRequest {
        /// The node.
        id: String,
        /// The value decided on (hex).
        pcr7: String,
    },
    /// What is asked is not supported.
    #[error("{0}")]
    Unsupported(&'static str),
    /// A record in etcd does not decode.
    #[error("corrupted record at {key}: {source}")]
    CorruptRecord {
        /// The etcd key.
        key: String,
        /// The decode error.
        source: prost::DecodeError,
    },
    /// A node holds as many Watch streams as it may.
    #[error("node {0} already holds {max} Watch streams", max = service::MAX_WATCHES_PER_NODE)]
    TooManyWatches(String),
    /// A node without the consensus role (or no longer UP) may not serve the Curator.
    #[error("node {0} is not an UP consensus member; it may not serve the Curator")]
    NotConsensusMember(String),
    /// etcd failed or refused (e.g. a learner still pending).
    #[error(transparent)]
    Consensus(#[from] ConsensusError),
    /// The issuer failed.
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    /// A certificate could not be made or read.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A certificate could not be revoked.
    #[error(transparent)]
    Revocation(#[from] RevocationError),
    /// An actor the Curator needs is not running.
    #[error("{0}")]
    Unavailable(#[from] polis_actors::SendError),
}

impl CuratorError {
    /// The gRPC code a caller sees; `UNAVAILABLE` is the only one worth retrying.
    pub fn code(&self) -> Code {
        use CuratorError::*;
        match self {
            Unauthenticated => Code::Unauthenticated,
            WrongTicket
            | NotOwner
            | NotInitialOwner
            | Decommissioned(_)
            | BadRecoverySignature(_) => Code::PermissionDenied,
            UnknownNode(_) | NoPcrRequest { .. } => Code::NotFound,
            JoinKeyMismatch(_) | JoinKeyInUse(_) | CukMismatch(_) => Code::AlreadyExists,
            NotApproved(_)
            | WrongState { .. }
            | LastConsensusMember(_)
            | NotConsensusMember(_)
            | Consensus(ConsensusError::LastMember(_)) => Code::FailedPrecondition,
            Invalid { .. } => Code::InvalidArgument,
            TooManyWatches(_) => Code::ResourceExhausted,
            Unsupported(_) => Code::Unimplemented,
            CorruptRecord { .. }
            | Pki(_)
            | Revocation(RevocationError::Pki(_))
            | Consensus(ConsensusError::Missing(_)) => Code::Internal,
            ApprovedMeanwhile(_) | Consensus(_) | Issuer(_) | Revocation(_) | Unavailable(_) => {
                Code::Unavailable
            }
        }
    }
}

impl From<CuratorError> for Status {
    fn from(e: CuratorError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}
