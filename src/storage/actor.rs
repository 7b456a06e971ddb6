//! The storage actor: owns the node root. It prepares `ephemeral/` (a tmpfs on a real node),
//! hands out the ESP's typed accessors, and mounts the data partition on request, new or
//! existing. Formatting and mounting block, so they run on the blocking pool.

use polis_actors::{Actor, ActorRef, Ctx, Failure, Handler, Message, Reply, SendError, Started};

use crate::fsutil::FsError;
use crate::storage::{
    DataBackend, DataError, Esp, NodeRoot, Previous, UnlockKey, VolumeKey, KEY_LEN,
};
use crate::tpm::{Random, Tpm, TpmError};

// ---- messages ----

/// Fresh key halves (NUK, CUK) for a new data partition: the TPM's randomness mixed with the
/// operating system's. Nothing is written; the caller keeps them in its enrolment journal, and
/// until it has, a partition formatted with them holds nothing that could be lost.
pub struct NewKeys;
impl Message for NewKeys {
    type Reply = Result<(UnlockKey, UnlockKey), StorageError>;
}

/// Format a new data partition with NUK ⊕ CUK and mount it. A formatted one is refused or
/// formatted over, as `previous` says.
pub struct MountNew {
    /// The node half.
    pub nuk: UnlockKey,
    /// The cluster half.
    pub cuk: UnlockKey,
    /// What to do with a partition formatted already.
    pub previous: Previous,
}
impl Message for MountNew {
    type Reply = Result<(), StorageError>;
}

/// Refuse a data partition that is formatted already (`DataError::AlreadyFormatted`): an
/// enrolment asks before it sets its formatting mark, so that a partition it must not format is
/// never marked as its own.
pub struct RefuseFormatted;
impl Message for RefuseFormatted {
    type Reply = Result<(), StorageError>;
}

/// Mount the existing data partition with NUK ⊕ CUK.
pub struct MountExisting {
    /// The node half, from the sealed configuration.
    pub nuk: UnlockKey,
    /// The cluster half, from the cluster.
    pub cuk: UnlockKey,
}
impl Message for MountExisting {
    type Reply = Result<(), StorageError>;
}

/// The ESP's typed accessors (reads and atomic writes).
pub struct GetEsp;
impl Message for GetEsp {
    type Reply = Esp;
}

/// Why a storage request failed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The data partition is mounted already.
    #[error("the data partition is already mounted")]
    AlreadyMounted,
    /// The data partition refused or failed.
    #[error(transparent)]
    Data(#[from] DataError),
    /// The TPM could not give randomness for new keys.
    #[error("no randomness from the TPM: {0}")]
    Tpm(#[from] TpmError),
    /// The TPM actor is not running.
    #[error("the TPM actor is unavailable: {0}")]
    TpmUnavailable(#[from] SendError),
}

// ---- state ----

/// Where the node's storage is and how it is set up.
#[derive(Clone, Debug)]
pub struct StorageConfig {
    /// The node root.
    pub root: NodeRoot,
    /// The data partition's backend.
    pub backend: DataBackend,
    /// Mount a tmpfs at `ephemeral/` (a real node); tests use a plain directory.
    pub ephemeral_tmpfs: bool,
}

/// The storage actor.
pub struct Storage {
    config: StorageConfig,
    tpm: ActorRef<Tpm>,
    mounted: bool,
}

impl Storage {
    /// A storage actor for `config` that asks `tpm` for key material.
    pub fn new(config: StorageConfig, tpm: ActorRef<Tpm>) -> Self {
        Storage {
            config,
            tpm,
            mounted: false,
        }
    }
}

// ---- handlers ----

impl Actor for Storage {
    fn started(&mut self, ctx: &mut Ctx<'_, Self>) -> Result<Started, Failure> {
        if !self.config.backend.is_encrypted() {
            slog::warn!(ctx.log(), "INSECURE: the data partition is a plain directory, not encrypted";
                "path" => %self.config.root.data().display());
        }
        let ephemeral = self.config.root.ephemeral();
        std::fs::create_dir_all(&ephemeral).map_err(|e| FsError::new("create", &ephemeral, e))?;
        if self.config.ephemeral_tmpfs && !is_mount_point(&ephemeral) {
            use nix::mount::{mount, MsFlags};
            mount(
                Some("tmpfs"),
                &ephemeral,
                Some("tmpfs"),
                MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
                Some("mode=0755"),
            )
            .map_err(|e| {
                Failure::msg(format!(
                    "cannot mount tmpfs at {}: {e}",
                    ephemeral.display()
                ))
            })?;
        }
        Ok(Started::Healthy)
    }
}

impl Handler<NewKeys> for Storage {
    fn handle(
        &mut self,
        _: NewKeys,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <NewKeys as Message>::Reply>, Failure> {
        let tpm = self.tpm.clone();
        // Beside the mailbox: the TPM serializes its own work, and an enrolment asks whether
        // the partition is formatted meanwhile.
        Ok(Reply::detached(async move {
            let random = match tpm.ask(Random(2 * KEY_LEN)).await {
                Ok(Ok(random)) => random,
                Ok(Err(e)) => return Ok(Err(e.into())),
                Err(e) => return Ok(Err(e.into())),
            };
            let keys = UnlockKey::generate(&random[..KEY_LEN])
                .and_then(|nuk| Ok((nuk, UnlockKey::generate(&random[KEY_LEN..])?)));
            Ok(keys.map_err(StorageError::from))
        }))
    }
}

impl Handler<RefuseFormatted> for Storage {
    fn handle(
        &mut self,
        _: RefuseFormatted,
        _: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <RefuseFormatted as Message>::Reply>, Failure> {
        let (root, backend) = (self.config.root.clone(), self.config.backend.clone());
        Ok(Reply::detached(async move {
            let checked = tokio::task::spawn_blocking(move || backend.refuse_formatted(&root))
                .await
                .map_err(|e| Failure::msg(format!("data partition thread failed: {e}")))?;
            Ok(checked.map_err(StorageError::from))
        }))
    }
}

impl Handler<MountNew> for Storage {
    fn handle(
        &mut self,
        msg: MountNew,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <MountNew as Message>::Reply>, Failure> {
        slog::info!(ctx.log(), "formatting a new data partition";
            "backend" => ?self.config.backend, "previous" => ?msg.previous);
        let previous = msg.previous;
        Ok(self.mount(
            VolumeKey::combine(&msg.nuk, &msg.cuk),
            move |backend, root, key| backend.format(root, key, previous),
        ))
    }
}

impl Handler<MountExisting> for Storage {
    fn handle(
        &mut self,
        msg: MountExisting,
        ctx: &mut Ctx<'_, Self>,
    ) -> Result<Reply<Self, <MountExisting as Message>::Reply>, Failure> {
        slog::info!(ctx.log(), "mounting the data partition"; "backend" => ?self.config.backend);
        Ok(self.mount(VolumeKey::combine(&msg.nuk, &msg.cuk), DataBackend::open))
    }
}

impl Handler<GetEsp> for Storage {
    fn handle(&mut self, _: GetEsp, _: &mut Ctx<'_, Self>) -> Result<Reply<Self, Esp>, Failure> {
        Ok(Reply::now(Esp::new(self.config.root.clone())))
    }
}

// ---- helpers ----

impl Storage {
    /// Run `op` (format or open) with `key` on the blocking pool, then record the mount.
    fn mount<F>(&self, key: VolumeKey, op: F) -> Reply<Self, Result<(), StorageError>>
    where
        F: FnOnce(&DataBackend, &NodeRoot, &VolumeKey) -> Result<(), DataError> + Send + 'static,
    {
        if self.mounted {
            return Reply::now(Err(StorageError::AlreadyMounted));
        }
        let (root, backend) = (self.config.root.clone(), self.config.backend.clone());
        let work = async move {
            tokio::task::spawn_blocking(move || op(&backend, &root, &key))
                .await
                .map_err(|e| Failure::msg(format!("data partition thread failed: {e}")))
        };
        Reply::later_then(work, |result, storage: &mut Self, ctx| {
            let result = result.map_err(StorageError::from);
            match &result {
                Ok(()) => {
                    storage.mounted = true;
                    slog::info!(ctx.log(), "data partition mounted"; "path" => %storage.config.root.data().display());
                }
                Err(e) => slog::error!(ctx.log(), "data partition not mounted"; "error" => %e),
            }
            Ok(result)
        })
    }
}

/// Whether `path` is a mount point (its device differs from its parent's).
fn is_mount_point(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (
        std::fs::metadata(path),
        path.parent().map(std::fs::metadata),
    ) {
        (Ok(own), Some(Ok(parent))) => own.dev() != parent.dev(),
        _ => false,
    }
}
