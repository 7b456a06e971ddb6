//! Finding the node's disk by its GPT: partition 1 is the ESP (EFI System type), partition 2 the
//! data partition (LUKS type). The partitions are looked up through sysfs, so any disk driver's
//! naming (`vda2`, `nvme0n1p2`) works.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// The EFI System partition type, as GPT stores it (mixed-endian).
pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
/// The Linux LUKS partition type.
pub const LUKS_TYPE: &str = "CA7D7CCB-63ED-4C53-861C-1742536059CC";

/// Why no disk was found, with what was looked at.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    /// No disk carries a GPT with an ESP as partition 1 and a LUKS partition as partition 2.
    #[error("no disk with a GPT whose partition 1 is an ESP and partition 2 a LUKS partition; looked at: {0}")]
    NotFound(String),
}

/// The node's disk and its two partitions' device files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Disk {
    /// The whole disk, e.g. `/dev/vda`.
    pub device: PathBuf,
    /// Partition 1, the ESP.
    pub esp: PathBuf,
    /// Partition 2, the LUKS2 data partition.
    pub data: PathBuf,
}

/// Look through the block devices in `sys_block` (`/sys/block`), whose device files are in `dev`.
pub fn find_disk(sys_block: &Path, dev: &Path) -> Result<Disk, DiskError> {
    let mut looked = Vec::new();
    let mut names: Vec<String> = std::fs::read_dir(sys_block)
        .map(|entries| {
            entries
                .filter_map(|e| e.ok()?.file_name().into_string().ok())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    for name in names {
        if ["loop", "ram", "dm-", "sr", "zram"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let device = dev.join(&name);
        let verdict = match partition_types(&device) {
            Ok(types)
                if types.first().map(String::as_str) == Some(ESP_TYPE)
                    && types.get(1).map(String::as_str) == Some(LUKS_TYPE) =>
            {
                match (
                    partition(sys_block, dev, &name, 1),
                    partition(sys_block, dev, &name, 2),
                ) {
                    (Some(esp), Some(data)) => return Ok(Disk { device, esp, data }),
                    _ => "its partitions have no device files yet".to_owned(),
                }
            }
            Ok(types) => format!("partition types {types:?}"),
            Err(reason) => reason,
        };
        looked.push(format!("{} ({verdict})", device.display()));
    }
    Err(DiskError::NotFound(match looked.is_empty() {
        true => format!("no block device in {}", sys_block.display()),
        false => looked.join("; "),
    }))
}

/// The type GUIDs of the first partition entries of `device`'s GPT.
fn partition_types(device: &Path) -> Result<Vec<String>, String> {
    let file = File::open(device).map_err(|e| format!("cannot open: {e}"))?;
    let read = |offset: u64, len: usize| -> Result<Vec<u8>, String> {
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| format!("cannot read: {e}"))?;
        Ok(buf)
    };
    // The header is at LBA 1; disks here have 512-byte logical sectors, and 4096-byte ones are
    // tried too.
    for sector in [512u64, 4096] {
        let header = read(sector, 92)?;
        if &header[..8] != b"EFI PART" {
            continue;
        }
        let le64 = |o: usize| u64::from_le_bytes(header[o..o + 8].try_into().unwrap_or_default());
        let le32 = |o: usize| u32::from_le_bytes(header[o..o + 4].try_into().unwrap_or_default());
        let (entries_lba, count, size) = (le64(72), le32(80), le32(84) as u64);
        if size < 128 {
            return Err(format!("GPT entries of {size} bytes"));
        }
        let mut types = Vec::new();
        for i in 0..u64::from(count.min(2)) {
            let entry = read(entries_lba * sector + i * size, 16)?;
            types.push(guid_string(&entry));
        }
        return Ok(types);
    }
    Err("no GPT".into())
}

/// The text form of a GUID stored mixed-endian, as GPT does.
fn guid_string(b: &[u8]) -> String {
    format!(
        "{:02X}{:02X}{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{:02X}{:02X}-{}",
        b[3],
        b[2],
        b[1],
        b[0],
        b[5],
        b[4],
        b[7],
        b[6],
        b[8],
        b[9],
        b[10..16]
            .iter()
            .map(|x| format!("{x:02X}"))
            .collect::<String>()
    )
}

/// The device file of partition `number` of disk `name`, from sysfs.
fn partition(sys_block: &Path, dev: &Path, name: &str, number: u32) -> Option<PathBuf> {
    let entries = std::fs::read_dir(sys_block.join(name)).ok()?;
    entries.filter_map(Result::ok).find_map(|entry| {
        let part = std::fs::read_to_string(entry.path().join("partition")).ok()?;
        let file = dev.join(entry.file_name());
        (part.trim() == number.to_string() && file.exists()).then_some(file)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A disk image partitioned by sgdisk (as the image builder does), seen through a fake sysfs.
    #[test]
    fn finds_the_esp_and_the_luks_partition_of_a_gpt_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (sys, dev) = (dir.path().join("sys"), dir.path().join("dev"));
        std::fs::create_dir_all(&dev).unwrap();
        let disk = dev.join("vdb");
        std::fs::File::create(&disk)
            .unwrap()
            .set_len(16 << 20)
            .unwrap();
        let out = std::process::Command::new("sgdisk")
            .args([
                "-n",
                "1:2048:+4M",
                "-t",
                "1:ef00",
                "-n",
                "2:0:0",
                "-t",
                "2:8309",
            ])
            .arg(&disk)
            .output()
            .expect("sgdisk (gdisk) is installed by scripts/setup.sh");
        assert!(out.status.success(), "{out:?}");
        for (part, n) in [("vdb1", 1), ("vdb2", 2)] {
            std::fs::create_dir_all(sys.join("vdb").join(part)).unwrap();
            std::fs::write(
                sys.join("vdb").join(part).join("partition"),
                format!("{n}\n"),
            )
            .unwrap();
            std::fs::write(dev.join(part), b"").unwrap();
        }
        std::fs::create_dir_all(sys.join("loop0")).unwrap();
        let found = find_disk(&sys, &dev).unwrap();
        assert_eq!(found.esp, dev.join("vdb1"));
        assert_eq!(found.data, dev.join("vdb2"));

        // Partition 2 of another type is not taken for the data partition.
        let out = std::process::Command::new("sgdisk")
            .args(["-t", "2:8300"])
            .arg(&disk)
            .output()
            .unwrap();
        assert!(out.status.success());
        let err = find_disk(&sys, &dev).unwrap_err().to_string();
        assert!(
            err.contains("0FC63DAF-8483-4772-8E79-3D69D8477DE4"),
            "{err}"
        );
    }
}
