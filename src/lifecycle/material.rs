//! What an unsealed configuration or enrolment journal holds, decoded and checked in one pure
//! step before any flow acts on it. The bytes come from the ESP through the TPM; whatever they
//! are, the result is the typed keys a flow needs or an error naming the file, never a panic
//! (the fuzz targets `sealed_configuration` and `enrolment_journal` drive this module).

use std::path::Path;

use ed25519_dalek::SigningKey;
use prost::Message;

use crate::lifecycle::LifecycleError;
use crate::proto::api::node_parameters::{Cluster, ClusterBootstrap, ClusterRegister};
use crate::proto::api::NodeParameters;
use crate::proto::private::enrolment_journal::Flow as JournalFlow;
use crate::proto::private::{EnrolmentJournal, SealedConfiguration};
use crate::storage::UnlockKey;
use crate::tpm::RecoveryKey;

/// A member's sealed configuration and the keys it holds.
pub struct Membership {
    /// The configuration as unsealed.
    pub sealed: SealedConfiguration,
    /// The key JoinNode is signed with.
    pub join_key: SigningKey,
    /// The node half of the data partition's key.
    pub nuk: UnlockKey,
    /// The cluster half, while the node keeps it sealed (a lone member, or shares not placed).
    pub sealed_cuk: Option<UnlockKey>,
}

impl Membership {
    /// Decode the unsealed bytes of the sealed configuration at `path` and check its keys.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self, LifecycleError> {
        let sealed = decode_message::<SealedConfiguration>(bytes, path)?;
        let join_key =
            signing_key(&sealed.join_key).ok_or_else(|| corrupted(path, "bad join key"))?;
        let nuk = UnlockKey::from_slice(&sealed.node_unlock_key)?;
        let sealed_cuk = match sealed.cluster_unlock_key.as_slice() {
            [] => None,
            bytes => Some(UnlockKey::from_slice(bytes)?),
        };
        Ok(Membership {
            sealed,
            join_key,
            nuk,
            sealed_cuk,
        })
    }
}

/// The keys an enrolment works with, from its journal.
pub struct EnrolmentKeys {
    /// The node half of the data partition's key.
    pub nuk: UnlockKey,
    /// The cluster half.
    pub cuk: UnlockKey,
    /// The node's identity key.
    pub node: SigningKey,
    /// The key JoinNode will be signed with.
    pub join: SigningKey,
    /// The TPM recovery key created for this enrolment (none without a TPM, or in a journal
    /// written before recovery keys existed).
    pub recovery: Option<RecoveryKey>,
}

/// What the enrolment does, from the journal's flow and parameters (which must agree).
pub enum EnrolmentParams {
    /// Bootstrap a new cluster.
    Bootstrap(ClusterBootstrap),
    /// Register into an existing one.
    Register(ClusterRegister),
}

/// An enrolment journal, checked.
pub struct Enrolment {
    /// The journal as read; its step says where to resume.
    pub journal: EnrolmentJournal,
    /// Its keys.
    pub keys: EnrolmentKeys,
    /// Its parameters.
    pub params: EnrolmentParams,
}

impl Enrolment {
    /// Decode the unsealed bytes of the enrolment journal at `path` and check it.
    pub fn decode(bytes: &[u8], path: &Path) -> Result<Self, LifecycleError> {
        Self::check(decode_message::<EnrolmentJournal>(bytes, path)?, path)
    }

    /// Check a journal (read from `path`, named in errors): its keys are keys, its parameters
    /// decode and agree with its flow.
    pub fn check(journal: EnrolmentJournal, path: &Path) -> Result<Self, LifecycleError> {
        let keys = EnrolmentKeys {
            nuk: UnlockKey::from_slice(&journal.node_unlock_key)?,
            cuk: UnlockKey::from_slice(&journal.cluster_unlock_key)?,
            node: signing_key(&journal.node_key).ok_or_else(|| corrupted(path, "bad node key"))?,
            join: signing_key(&journal.join_key).ok_or_else(|| corrupted(path, "bad join key"))?,
            recovery: (!journal.recovery_key_public.is_empty()).then(|| RecoveryKey {
                public: journal.recovery_key_public.clone(),
                private: journal.recovery_key_private.clone(),
            }),
        };
        let params = NodeParameters::decode(journal.parameters.as_slice())
            .map_err(|e| corrupted(path, &format!("bad parameters: {e}")))?;
        let params = match (journal.flow(), params.cluster) {
            (JournalFlow::Bootstrap, Some(Cluster::ClusterBootstrap(params))) => {
                EnrolmentParams::Bootstrap(params)
            }
            (JournalFlow::Register, Some(Cluster::ClusterRegister(params))) => {
                EnrolmentParams::Register(params)
            }
            _ => return Err(corrupted(path, "its flow and parameters disagree")),
        };
        Ok(Enrolment {
            journal,
            keys,
            params,
        })
    }
}

/// An Ed25519 signing key from its 32 secret bytes, if they are 32.
pub(super) fn signing_key(bytes: &[u8]) -> Option<SigningKey> {
    Some(SigningKey::from_bytes(bytes.try_into().ok()?))
}

fn decode_message<M: Message + Default>(bytes: &[u8], path: &Path) -> Result<M, LifecycleError> {
    M::decode(bytes).map_err(|e| corrupted(path, &format!("unsealed, but does not decode: {e}")))
}

fn corrupted(path: &Path, reason: &str) -> LifecycleError {
    LifecycleError::Corrupted {
        path: path.display().to_string(),
        reason: reason.to_owned(),
    }
}
