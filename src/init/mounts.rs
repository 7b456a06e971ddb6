//! The filesystems an init mounts before anything else runs, and the ESP.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// A mount that failed, naming its target.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// `mount(2)` refused.
    #[error("cannot mount {fstype} at {target}: {source}")]
    Mount {
        /// The filesystem type.
        fstype: String,
        /// Where.
        target: PathBuf,
        /// Why.
        source: nix::Error,
    },
    /// A mount point could not be made.
    #[error("cannot create the mount point {0}: {1}")]
    MountPoint(PathBuf, std::io::Error),
    /// The ESP has no filesystem and could not be given one.
    #[error("cannot format the empty ESP {device}: {reason}")]
    Format {
        /// The partition.
        device: PathBuf,
        /// Why.
        reason: String,
    },
}

/// `/proc`, `/sys`, `/dev` (devtmpfs), `/dev/pts`, `/run`, securityfs, and the node root's mount
/// points below `root`. A filesystem that is mounted already (the kernel may have mounted
/// devtmpfs) is left as it is.
pub fn mount_system(root: &Path) -> Result<(), MountError> {
    let hardened = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
    let table: [(&str, &str, MsFlags, Option<&str>); 6] = [
        ("proc", "/proc", hardened, None),
        ("sysfs", "/sys", hardened, None),
        ("devtmpfs", "/dev", MsFlags::MS_NOSUID, Some("mode=0755")),
        (
            "devpts",
            "/dev/pts",
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
            Some("gid=5,mode=0620,ptmxmode=0666"),
        ),
        (
            "tmpfs",
            "/run",
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
            Some("mode=0755"),
        ),
        ("securityfs", "/sys/kernel/security", hardened, None),
    ];
    for (fstype, target, flags, data) in table {
        let target = Path::new(target);
        std::fs::create_dir_all(target).map_err(|e| MountError::MountPoint(target.into(), e))?;
        match mount(Some(fstype), target, Some(fstype), flags, data) {
            Ok(()) | Err(nix::errno::Errno::EBUSY) => {}
            Err(source) => {
                return Err(MountError::Mount {
                    fstype: fstype.into(),
                    target: target.into(),
                    source,
                })
            }
        }
    }
    for dir in super::NODE_MOUNT_POINTS {
        let target = root.join(dir);
        std::fs::create_dir_all(&target).map_err(|e| MountError::MountPoint(target, e))?;
    }
    Ok(())
}

/// Mount the ESP (`device`, vfat) at `target`. A partition with no filesystem at all (all zero
/// where a boot sector would be) is formatted first; one that has any is never formatted again,
/// and a failed mount of it is an error.
pub fn mount_esp(device: &Path, target: &Path) -> Result<(), MountError> {
    if is_blank(device).map_err(|e| MountError::Format {
        device: device.into(),
        reason: format!("cannot read it: {e}"),
    })? {
        let mut cmd = std::process::Command::new("mkfs.vfat");
        cmd.args(["-F", "32", "-n", "ESP"]).arg(device);
        crate::process::run(cmd).map_err(|e| MountError::Format {
            device: device.into(),
            reason: e.to_string(),
        })?;
    }
    std::fs::create_dir_all(target).map_err(|e| MountError::MountPoint(target.into(), e))?;
    mount(
        Some(device),
        target,
        Some("vfat"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("umask=0077"),
    )
    .map_err(|source| MountError::Mount {
        fstype: "vfat".into(),
        target: target.into(),
        source,
    })
}

/// Whether the first 64 KiB of `device` are all zero: no boot sector, no superblock.
fn is_blank(device: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    let mut head = vec![0u8; 64 << 10];
    let mut file = std::fs::File::open(device)?;
    let mut filled = 0;
    while filled < head.len() {
        match file.read(&mut head[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(head[..filled].iter().all(|&b| b == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_all_zero_head_counts_as_blank() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp.img");
        std::fs::File::create(&path)
            .unwrap()
            .set_len(1 << 20)
            .unwrap();
        assert!(is_blank(&path).unwrap());
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[510] = 0x55; // a boot sector signature
        std::fs::write(&path, &bytes).unwrap();
        assert!(!is_blank(&path).unwrap());
    }
}
