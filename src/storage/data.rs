//! The data partition and its key. The volume key is NUK ⊕ CUK: the node half sealed by the TPM,
//! the cluster half held by the cluster. Two backends:
//!
//! - `Luks2` on a block device through libcryptsetup: a LUKS2 header whose digest refuses a
//!   wrong key, then dm-crypt activation, ext4 and a mount at `data/`.
//! - `Directory`, for unprivileged local runs, **insecure** (nothing is encrypted): `data/` is a
//!   plain directory, but it still refuses a wrong key through an authenticated key-check header,
//!   so a node with the wrong CUK never proceeds as if its data were there.

use std::fs;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use libcryptsetup_rs::consts::flags::CryptActivate;
use libcryptsetup_rs::consts::vals::EncryptionFormat;
use libcryptsetup_rs::{CryptInit, Either, LibcryptErr};
use ring::rand::{SecureRandom, SystemRandom};
use ring::{hkdf, hmac};

use crate::fsutil::{self, FsError, SECRET_MODE};
use crate::storage::NodeRoot;

/// Length of each key half and of the volume key.
pub const KEY_LEN: usize = 32;

/// What can go wrong with the data partition; every variant names the partition or file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Key material of the wrong length (a corrupted record or a bad peer).
    #[error("a data partition key half must be {KEY_LEN} bytes, got {0}")]
    KeyLength(usize),
    /// The operating system's random generator failed.
    #[error("the operating system's random generator failed")]
    Rng,
    /// Formatting would destroy an existing partition.
    #[error("the data partition at {0} is already formatted; refusing to format it again")]
    AlreadyFormatted(PathBuf),
    /// There is no partition to open.
    #[error("the data partition at {0} is not formatted")]
    NotFormatted(PathBuf),
    /// The header is not one Polis wrote.
    #[error("the data partition header at {path} is corrupted: {reason}")]
    HeaderCorrupted {
        /// The header's file or device.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The key does not open this partition.
    #[error("wrong key for the data partition at {0}")]
    WrongKey(PathBuf),
    /// A libcryptsetup call failed.
    #[error("LUKS2 {op} on {path} failed: {source}")]
    Luks {
        /// The operation.
        op: &'static str,
        /// The device.
        path: PathBuf,
        /// libcryptsetup's error.
        source: LibcryptErr,
    },
    /// Making the filesystem or mounting it failed.
    #[error("{op} of {path} failed: {reason}")]
    Mount {
        /// The operation.
        op: &'static str,
        /// The device.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// File I/O, naming the file.
    #[error(transparent)]
    Io(#[from] FsError),
}

macro_rules! secret_bytes {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq)]
        pub struct $name([u8; KEY_LEN]);

        impl $name {
            /// The key's bytes, for sealing or sending to its one rightful holder.
            pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
                &self.0
            }

            /// A key from exactly [`KEY_LEN`] bytes.
            pub fn from_slice(bytes: &[u8]) -> Result<Self, DataError> {
                let array: [u8; KEY_LEN] =
                    bytes.try_into().map_err(|_| DataError::KeyLength(bytes.len()))?;
                Ok($name(array))
            }
        }

        impl std::fmt::Debug for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(concat!(stringify!($name), "(redacted)"))
            }
        }

        impl Drop for $name {
            fn drop(&mut self) {
                zeroize::Zeroize::zeroize(&mut self.0);
            }
        }

        impl zeroize::ZeroizeOnDrop for $name {}
    };
}

secret_bytes!(
    /// One half of the data partition key: the NUK (node) or the CUK (cluster). Never printed,
    /// zeroed when dropped.
    UnlockKey
);
secret_bytes!(
    /// The data partition's volume key, NUK ⊕ CUK.
    VolumeKey
);

impl UnlockKey {
    /// A fresh key half: `tpm_random` (from the TPM's generator) mixed by XOR with the operating
    /// system's generator, so the key is as strong as the better of the two.
    pub fn generate(tpm_random: &[u8]) -> Result<Self, DataError> {
        let tpm: &[u8; KEY_LEN] = tpm_random
            .get(..KEY_LEN)
            .and_then(|s| s.try_into().ok())
            .ok_or(DataError::KeyLength(tpm_random.len()))?;
        let mut key = [0u8; KEY_LEN];
        SystemRandom::new()
            .fill(&mut key)
            .map_err(|_| DataError::Rng)?;
        for (k, t) in key.iter_mut().zip(tpm) {
            *k ^= t;
        }
        Ok(UnlockKey(key))
    }
}

impl VolumeKey {
    /// NUK ⊕ CUK.
    pub fn combine(nuk: &UnlockKey, cuk: &UnlockKey) -> Self {
        let mut key = [0u8; KEY_LEN];
        for ((k, n), c) in key.iter_mut().zip(nuk.as_bytes()).zip(cuk.as_bytes()) {
            *k = n ^ c;
        }
        VolumeKey(key)
    }
}

/// Where the data partition lives and how it is protected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DataBackend {
    /// LUKS2 on a block device, mounted at `data/`.
    Luks2 {
        /// The block device (or, for header-only work, an image file).
        device: PathBuf,
    },
    /// A plain directory with a key-check header: for local runs only, not encrypted.
    Directory,
}

/// What formatting does with a data partition that is formatted already.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Previous {
    /// Refuse it ([`DataError::AlreadyFormatted`]): it may hold a member's data.
    Refuse,
    /// Format over it: an enrolment formatted it and stopped before its journal held the keys,
    /// so nothing in it can ever be opened again.
    Discard,
}

/// Make the LUKS2 data partition unavailable again, if it is open: unmount `data/` and close its
/// mapping (the last steps of a machine's shutdown, whatever state the node stopped in).
pub fn close_data_partition(root: &NodeRoot) -> Result<(), DataError> {
    luks2::close(&root.data())
}

/// The dm-crypt mapping name of the data partition.
const DM_NAME: &str = "polis-data";

impl DataBackend {
    /// Create a new, empty data partition protected by `key` and make it available at
    /// `data/`. A partition that is already formatted is refused or discarded, as `previous`
    /// says.
    pub fn format(
        &self,
        root: &NodeRoot,
        key: &VolumeKey,
        previous: Previous,
    ) -> Result<(), DataError> {
        match self {
            DataBackend::Directory => directory::format(root, key, previous),
            DataBackend::Luks2 { device } => {
                luks2::format_header(device, key, previous)?;
                luks2::activate(device, key)?;
                luks2::make_filesystem()?;
                luks2::mount(&root.data())
            }
        }
    }

    /// Refuse a partition that is formatted already ([`DataError::AlreadyFormatted`]): before
    /// an enrolment sets its formatting mark, which would let the next boot format over it.
    pub fn refuse_formatted(&self, root: &NodeRoot) -> Result<(), DataError> {
        match self {
            DataBackend::Directory => directory::refuse_formatted(root),
            DataBackend::Luks2 { device } => luks2::refuse_formatted(device),
        }
    }

    /// Check `key` against the partition and make it available at `data/`.
    pub fn open(&self, root: &NodeRoot, key: &VolumeKey) -> Result<(), DataError> {
        match self {
            DataBackend::Directory => directory::open(root, key),
            DataBackend::Luks2 { device } => {
                luks2::verify_key(device, key)?;
                luks2::activate(device, key)?;
                luks2::mount(&root.data())
            }
        }
    }

    /// Whether this backend encrypts (for the loud warning the directory backend deserves).
    pub fn is_encrypted(&self) -> bool {
        matches!(self, DataBackend::Luks2 { .. })
    }
}

/// Check the directory backend's volume header, `header` as read from `path`, against `key`:
/// what opening the data partition does before anything else, so arbitrary bytes there must
/// end as [`DataError::HeaderCorrupted`] or [`DataError::WrongKey`] (the fuzz target
/// `volume_header` drives this).
pub fn check_volume_header(path: &Path, header: &[u8], key: &VolumeKey) -> Result<(), DataError> {
    directory::check_header(path, header, key)
}

/// The directory backend: `data/.polis-volume` holds magic, salt and
/// HMAC-SHA256(volume key, magic ‖ salt).
mod directory {
    use super::*;

    const MAGIC: &[u8; 8] = b"POLISDV1";
    const SALT_LEN: usize = 32;
    const HEADER_LEN: usize = MAGIC.len() + SALT_LEN + 32;

    fn header_path(root: &NodeRoot) -> PathBuf {
        root.data().join(".polis-volume")
    }

    fn tag_key(key: &VolumeKey) -> hmac::Key {
        hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes())
    }

    pub(super) fn refuse_formatted(root: &NodeRoot) -> Result<(), DataError> {
        match header_path(root).exists() {
            true => Err(DataError::AlreadyFormatted(root.data())),
            false => Ok(()),
        }
    }

    pub(super) fn format(
        root: &NodeRoot,
        key: &VolumeKey,
        previous: Previous,
    ) -> Result<(), DataError> {
        let data = root.data();
        match previous {
            Previous::Refuse => refuse_formatted(root)?,
            Previous::Discard => fsutil::remove_dir_if_present(&data)?,
        }
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&data)
            .map_err(|e| FsError::new("create", &data, e))?;
        let mut header = Vec::with_capacity(HEADER_LEN);
        header.extend_from_slice(MAGIC);
        let mut salt = [0u8; SALT_LEN];
        SystemRandom::new()
            .fill(&mut salt)
            .map_err(|_| DataError::Rng)?;
        header.extend_from_slice(&salt);
        let tag = hmac::sign(&tag_key(key), &header);
        header.extend_from_slice(tag.as_ref());
        fsutil::write_atomic(&header_path(root), &header, SECRET_MODE)?;
        Ok(())
    }

    pub(super) fn open(root: &NodeRoot, key: &VolumeKey) -> Result<(), DataError> {
        let path = header_path(root);
        let header = fsutil::read(&path).map_err(|e| match e.is_not_found() {
            true => DataError::NotFormatted(root.data()),
            false => DataError::Io(e),
        })?;
        check_header(&path, &header, key)
    }

    /// Check `header`, read from `path` (its directory is the data partition), against `key`.
    pub(super) fn check_header(
        path: &Path,
        header: &[u8],
        key: &VolumeKey,
    ) -> Result<(), DataError> {
        let corrupted = |reason| DataError::HeaderCorrupted {
            path: path.to_owned(),
            reason,
        };
        if header.len() != HEADER_LEN {
            return Err(corrupted("wrong length"));
        }
        if &header[..MAGIC.len()] != MAGIC {
            return Err(corrupted("not a Polis volume header"));
        }
        let (signed, tag) = header.split_at(MAGIC.len() + SALT_LEN);
        let data = path.parent().unwrap_or(path).to_owned();
        // Constant-time comparison inside ring.
        hmac::verify(&tag_key(key), signed, tag).map_err(|_| DataError::WrongKey(data))
    }
}

/// The LUKS2 backend. Header work (format, key check) needs no kernel support; activation needs
/// device-mapper, which the boot test's VM kernel has.
pub(crate) mod luks2 {
    use super::*;

    /// AES-256 in XTS mode takes two 256-bit keys; they are expanded from the volume key.
    const CIPHER: (&str, &str) = ("aes", "xts-plain64");
    const LUKS_KEY_LEN: usize = 64;

    struct LuksKeyLen;
    impl hkdf::KeyType for LuksKeyLen {
        fn len(&self) -> usize {
            LUKS_KEY_LEN
        }
    }

    /// The key handed to dm-crypt: HKDF-SHA256 of the volume key, 64 bytes.
    fn luks_key(key: &VolumeKey) -> [u8; LUKS_KEY_LEN] {
        let prk =
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"polis data partition").extract(key.as_bytes());
        let mut out = [0u8; LUKS_KEY_LEN];
        // The output length is fixed and within HKDF's limit, so neither step can fail.
        if let Ok(okm) = prk.expand(&[b"luks2 aes-xts-plain64"], LuksKeyLen) {
            let _ = okm.fill(&mut out);
        }
        out
    }

    fn luks_err<'a>(
        op: &'static str,
        device: &'a Path,
    ) -> impl FnOnce(LibcryptErr) -> DataError + 'a {
        move |source| DataError::Luks {
            op,
            path: device.to_owned(),
            source,
        }
    }

    /// Refuse `device` if it holds a LUKS2 header.
    pub(crate) fn refuse_formatted(device: &Path) -> Result<(), DataError> {
        let mut dev = CryptInit::init(device).map_err(luks_err("open", device))?;
        match dev
            .context_handle()
            .load::<()>(Some(EncryptionFormat::Luks2), None)
        {
            Ok(()) => Err(DataError::AlreadyFormatted(device.to_owned())),
            Err(_) => Ok(()),
        }
    }

    /// Write a LUKS2 header for `key` to `device`; one already there is refused or written
    /// over, as `previous` says.
    pub(crate) fn format_header(
        device: &Path,
        key: &VolumeKey,
        previous: Previous,
    ) -> Result<(), DataError> {
        if previous == Previous::Refuse {
            refuse_formatted(device)?;
        }
        let mut dev = CryptInit::init(device).map_err(luks_err("open", device))?;
        let luks_key = luks_key(key);
        dev.context_handle()
            .format::<()>(
                EncryptionFormat::Luks2,
                CIPHER,
                None,
                Either::Left(&luks_key),
                None,
            )
            .map_err(luks_err("format", device))
    }

    /// Check `key` against the header's digest without activating anything.
    pub(crate) fn verify_key(device: &Path, key: &VolumeKey) -> Result<(), DataError> {
        let mut dev = CryptInit::init(device).map_err(luks_err("open", device))?;
        dev.context_handle()
            .load::<()>(Some(EncryptionFormat::Luks2), None)
            .map_err(|_| DataError::NotFormatted(device.to_owned()))?;
        dev.activate_handle()
            .activate_by_volume_key(None, Some(&luks_key(key)), CryptActivate::empty())
            .map_err(|_| DataError::WrongKey(device.to_owned()))
    }

    /// Map the device to `/dev/mapper/polis-data` with `key`.
    pub(super) fn activate(device: &Path, key: &VolumeKey) -> Result<(), DataError> {
        let mut dev = CryptInit::init(device).map_err(luks_err("open", device))?;
        dev.context_handle()
            .load::<()>(Some(EncryptionFormat::Luks2), None)
            .map_err(luks_err("load header", device))?;
        dev.activate_handle()
            .activate_by_volume_key(Some(DM_NAME), Some(&luks_key(key)), CryptActivate::empty())
            .map_err(luks_err("activate", device))
    }

    fn mapped() -> PathBuf {
        Path::new("/dev/mapper").join(DM_NAME)
    }

    /// Make an ext4 filesystem on the freshly activated mapping.
    pub(super) fn make_filesystem() -> Result<(), DataError> {
        let device = mapped();
        let mut cmd = std::process::Command::new("mkfs.ext4");
        cmd.args(["-q", "-F"]).arg(&device);
        crate::process::run(cmd).map_err(|e| DataError::Mount {
            op: "mkfs.ext4",
            path: device.clone(),
            reason: e.to_string(),
        })?;
        Ok(())
    }

    /// Unmount `target` if the mapping is mounted there, then deactivate the mapping.
    pub(super) fn close(target: &Path) -> Result<(), DataError> {
        use libcryptsetup_rs::consts::flags::CryptDeactivate;
        let device = mapped();
        if !device.exists() {
            return Ok(());
        }
        match nix::mount::umount(target) {
            Ok(()) | Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => {
                return Err(DataError::Mount {
                    op: "umount",
                    path: target.to_owned(),
                    reason: e.to_string(),
                })
            }
        }
        let mut dev = CryptInit::init_by_name_and_header(DM_NAME, None)
            .map_err(luks_err("find the mapping of", &device))?;
        dev.activate_handle()
            .deactivate(DM_NAME, CryptDeactivate::empty())
            .map_err(luks_err("close", &device))
    }

    /// Mount the mapping at `target`.
    pub(super) fn mount(target: &Path) -> Result<(), DataError> {
        use nix::mount::{mount, MsFlags};
        fs::create_dir_all(target).map_err(|e| FsError::new("create", target, e))?;
        let device = mapped();
        mount(
            Some(&device),
            target,
            Some("ext4"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .map_err(|e| DataError::Mount {
            op: "mount",
            path: device,
            reason: e.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> UnlockKey {
        UnlockKey::from_slice(&[b; KEY_LEN]).unwrap()
    }

    #[test]
    fn volume_key_is_nuk_xor_cuk_and_secrets_are_not_printed() {
        let v = VolumeKey::combine(&key(0b1010), &key(0b0110));
        assert_eq!(v.as_bytes(), &[0b1100; KEY_LEN]);
        assert_eq!(
            format!("{:?} {:?}", key(1), v),
            "UnlockKey(redacted) VolumeKey(redacted)"
        );
        assert!(matches!(
            UnlockKey::from_slice(&[0; 31]),
            Err(DataError::KeyLength(31))
        ));
    }

    #[test]
    fn generated_keys_mix_in_the_os_generator() {
        let tpm = [0u8; KEY_LEN];
        let (a, b) = (
            UnlockKey::generate(&tpm).unwrap(),
            UnlockKey::generate(&tpm).unwrap(),
        );
        assert_ne!(
            a, b,
            "an all-zero TPM answer must not give a predictable key"
        );
        assert!(matches!(
            UnlockKey::generate(&[1; 8]),
            Err(DataError::KeyLength(8))
        ));
    }

    #[test]
    fn key_halves_and_volume_keys_are_wiped_when_dropped() {
        // A compile-time check: removing the wipe from either type fails to build this test.
        fn wiped_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        wiped_on_drop::<UnlockKey>();
        wiped_on_drop::<VolumeKey>();
    }

    #[test]
    fn directory_backend_refuses_a_wrong_key_and_a_second_format() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path());
        let (nuk, cuk) = (key(1), key(2));
        let backend = DataBackend::Directory;
        assert!(!backend.is_encrypted());
        assert!(matches!(
            backend.open(&root, &VolumeKey::combine(&nuk, &cuk)),
            Err(DataError::NotFormatted(_))
        ));
        backend
            .format(&root, &VolumeKey::combine(&nuk, &cuk), Previous::Refuse)
            .unwrap();
        fs::write(root.data().join("kept"), b"data").unwrap();
        backend
            .open(&root, &VolumeKey::combine(&nuk, &cuk))
            .unwrap();
        let wrong = VolumeKey::combine(&nuk, &key(3));
        assert!(matches!(
            backend.open(&root, &wrong),
            Err(DataError::WrongKey(_))
        ));
        assert!(matches!(
            backend.format(&root, &wrong, Previous::Refuse),
            Err(DataError::AlreadyFormatted(_))
        ));
        assert_eq!(
            fs::read(root.data().join("kept")).unwrap(),
            b"data",
            "nothing lost"
        );
        // Discarded, the partition is new: empty, and only the new key opens it.
        backend.format(&root, &wrong, Previous::Discard).unwrap();
        assert!(!root.data().join("kept").exists());
        backend.open(&root, &wrong).unwrap();
        assert!(matches!(
            backend.open(&root, &VolumeKey::combine(&nuk, &cuk)),
            Err(DataError::WrongKey(_))
        ));
    }

    #[test]
    fn directory_backend_detects_a_tampered_header() {
        let dir = tempfile::tempdir().unwrap();
        let root = NodeRoot::new(dir.path());
        let k = VolumeKey::combine(&key(1), &key(2));
        DataBackend::Directory
            .format(&root, &k, Previous::Refuse)
            .unwrap();
        let header = root.data().join(".polis-volume");
        let mut bytes = fs::read(&header).unwrap();
        bytes[20] ^= 1; // a salt bit: the tag no longer matches
        fsutil::write_atomic(&header, &bytes, SECRET_MODE).unwrap();
        assert!(matches!(
            DataBackend::Directory.open(&root, &k),
            Err(DataError::WrongKey(_))
        ));
        fsutil::write_atomic(&header, &bytes[..40], SECRET_MODE).unwrap();
        assert!(matches!(
            DataBackend::Directory.open(&root, &k),
            Err(DataError::HeaderCorrupted { .. })
        ));
    }

    #[test]
    fn luks2_header_round_trip_and_key_check_on_an_image_file() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("data.img");
        fs::File::create(&image).unwrap().set_len(32 << 20).unwrap();
        let right = VolumeKey::combine(&key(4), &key(5));
        let wrong = VolumeKey::combine(&key(4), &key(6));
        assert!(matches!(
            luks2::verify_key(&image, &right),
            Err(DataError::NotFormatted(_))
        ));
        luks2::format_header(&image, &right, Previous::Refuse).unwrap();
        let head = fs::read(&image).unwrap();
        assert_eq!(&head[..6], b"LUKS\xba\xbe", "a LUKS header on disk");
        assert_eq!(u16::from_be_bytes([head[6], head[7]]), 2, "LUKS version 2");
        luks2::verify_key(&image, &right).unwrap();
        assert!(matches!(
            luks2::verify_key(&image, &wrong),
            Err(DataError::WrongKey(_))
        ));
        assert!(matches!(
            luks2::format_header(&image, &wrong, Previous::Refuse),
            Err(DataError::AlreadyFormatted(_))
        ));
        luks2::verify_key(&image, &right).unwrap();
        luks2::format_header(&image, &wrong, Previous::Discard).unwrap();
        luks2::verify_key(&image, &wrong).unwrap();
        assert!(matches!(
            luks2::verify_key(&image, &right),
            Err(DataError::WrongKey(_))
        ));
    }
}
