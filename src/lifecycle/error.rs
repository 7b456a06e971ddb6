//! Why the lifecycle could not bring the node into its cluster, and which of those reasons are
//! worth another try (DESIGN §8.2: transient errors are retried inside the flow, permanent ones
//! are fatal).

use polis_actors::{ChildError, SendError};
use tonic::Code;

use crate::curator::CuratorError;
use crate::issuer::IssuerError;
use crate::lifecycle::client::ReachError;
use crate::lifecycle::DecideError;
use crate::pki::{CredentialsError, PkiError};
use crate::storage::{DataError, EspError, StorageError};
use crate::tls::TlsError;
use crate::tpm::TpmError;

/// Why the lifecycle could not bring the node into its cluster.
#[derive(Debug, thiserror::Error)]
pub enum LifecycleError {
    /// No flow could be decided.
    #[error(transparent)]
    Decide(#[from] DecideError),
    /// An ESP file failed (the error names it).
    #[error(transparent)]
    Esp(#[from] EspError),
    /// The TPM refused (a tampered or foreign sealed file, a changed PCR 7).
    #[error(transparent)]
    Tpm(#[from] TpmError),
    /// The data partition refused (e.g. a wrong key).
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A sealed file decoded by the TPM is not what it should be.
    #[error("{path}: {reason}")]
    Corrupted {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The node's state on disk contradicts the step it reached; recovery needs a person.
    #[error("inconsistent state after step {step}: {reason}; to recover: {recovery}")]
    Inconsistent {
        /// The step reached.
        step: &'static str,
        /// What is wrong.
        reason: String,
        /// What to do.
        recovery: &'static str,
    },
    /// A Curator refused the call.
    #[error("{call} refused by the Curator: {status}")]
    Refused {
        /// The call.
        call: &'static str,
        /// The Curator's answer.
        status: tonic::Status,
    },
    /// The owner has not approved this node yet (retried until they do).
    #[error("waiting for the owner to approve this node")]
    AwaitingApproval,
    /// PCR 7 holds a value the owner has not decided on yet (retried until they do).
    #[error("waiting for the owner to approve PCR 7 value {pcr7} for node {node} (polisctl pcr-requests; polisctl approve-pcr {node})")]
    AwaitingPcrApproval {
        /// This node.
        node: String,
        /// PCR 7 now (hex).
        pcr7: String,
    },
    /// The owner refused the value PCR 7 holds now.
    #[error("the owner refused PCR 7 value {pcr7} for node {node}: this node will not unseal in this Secure Boot state; restore the firmware's previous state, or decommission the node")]
    PcrRefused {
        /// This node.
        node: String,
        /// PCR 7 now (hex).
        pcr7: String,
    },
    /// No Curator could be reached (retried).
    #[error(transparent)]
    Reach(#[from] ReachError),
    /// An actor the flow needs is away, e.g. restarting (retried).
    #[error("{0}")]
    ActorAway(#[from] SendError),
    /// A cluster child could not start (retried).
    #[error(transparent)]
    Child(#[from] ChildError),
    /// etcd or the records failed (retried).
    #[error(transparent)]
    Records(#[from] CuratorError),
    /// The issuer failed (retried).
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    /// Node credentials could not be written or read.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// A key could not be made or encoded.
    #[error(transparent)]
    Pki(#[from] PkiError),
    /// A TLS configuration could not be built.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The cluster decommissioned this node.
    #[error("this node was decommissioned; it will not rejoin")]
    Decommissioned,
    /// The node parameters on the ESP ask for something that cannot be (the error says what).
    #[error("the node parameters are invalid: {0}")]
    InvalidParameters(String),
}

impl LifecycleError {
    /// Whether retrying the same step may succeed.
    pub(super) fn is_transient(&self) -> bool {
        match self {
            // A Curator away or overloaded, or a connection that broke mid-call (tonic reports
            // some transport failures as UNKNOWN). INTERNAL means corrupt cluster state, which
            // no retry mends.
            LifecycleError::Refused { status, .. } => matches!(
                status.code(),
                Code::Unavailable
                    | Code::Unknown
                    | Code::DeadlineExceeded
                    | Code::Aborted
                    | Code::Cancelled
                    | Code::ResourceExhausted
            ),
            LifecycleError::Records(e) => e.code() == Code::Unavailable,
            LifecycleError::Issuer(e) => !matches!(
                e,
                IssuerError::Pki(_) | IssuerError::BadLifetime { .. } | IssuerError::Policy(_)
            ),
            LifecycleError::AwaitingApproval
            | LifecycleError::AwaitingPcrApproval { .. }
            | LifecycleError::Reach(ReachError::Unreachable(_))
            // The whole cluster coming back after being off past its CRL: no Curator serves
            // until enough members have started.
            | LifecycleError::Reach(ReachError::NoCurrentCrl(_))
            | LifecycleError::ActorAway(_)
            | LifecycleError::Child(ChildError::StartFailed { .. })
            | LifecycleError::Storage(StorageError::TpmUnavailable(_)) => true,
            _ => false,
        }
    }
}

impl From<DataError> for LifecycleError {
    fn from(e: DataError) -> Self {
        LifecycleError::Storage(e.into())
    }
}

impl From<crate::consensus::ConsensusError> for LifecycleError {
    fn from(e: crate::consensus::ConsensusError) -> Self {
        LifecycleError::Records(e.into())
    }
}
