//! A VM's disk: a sparse raw image with a GPT, partition 1 the ESP (formatted vfat here, so the
//! node never has to), partition 2 the data partition, left empty for the node to format with
//! LUKS2 on its first boot.

use crate::fsutil::FsError;
use std::path::Path;
use std::process::Command;

use super::image::ImageError;

/// Where the ESP starts, in 512-byte sectors.
pub const ESP_START: u64 = 2048;
/// The ESP's size, in MiB.
pub const ESP_MIB: u64 = 64;
/// Where the data partition starts, in 512-byte sectors.
pub const DATA_START: u64 = ESP_START + ESP_MIB * 2048;
/// The offset of the data partition in the image, in bytes.
pub const DATA_OFFSET: u64 = DATA_START * 512;

/// Make the disk image `path` of `mib` MiB. Refuses to touch a file that exists: a disk holds a
/// node's data.
pub fn make_disk(path: &Path, mib: u64) -> Result<(), ImageError> {
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .map_err(|e| FsError::new("create (it must not exist yet)", path, e))?;
    file.set_len(mib << 20)
        .map_err(|e| FsError::new("size", path, e))?;
    drop(file);
    let mut gpt = Command::new("sgdisk");
    gpt.args([
        "-n",
        &format!("1:{ESP_START}:+{ESP_MIB}M"),
        "-t",
        "1:ef00",
        "-c",
        "1:ESP",
    ])
    .args([
        "-n",
        &format!("2:{DATA_START}:0"),
        "-t",
        "2:8309",
        "-c",
        "2:polis-data",
    ])
    .arg(path);
    crate::process::run(gpt)?;
    let mut fat = Command::new("mkfs.vfat");
    fat.args(["-F", "32", "-n", "ESP", &format!("--offset={ESP_START}")])
        .arg(path)
        .arg((ESP_MIB * 1024).to_string());
    crate::process::run(fat)?;
    Ok(())
}

/// The LUKS2 header's UUID on the data partition of the disk image `path`, if it has one
/// (offset 168 of the binary header, 40 bytes, NUL-padded).
pub fn luks_uuid(path: &Path) -> Result<Option<String>, ImageError> {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::open(path).map_err(|e| FsError::new("open", path, e))?;
    let mut header = [0u8; 208];
    file.read_exact_at(&mut header, DATA_OFFSET)
        .map_err(|e| FsError::new("read the data partition of", path, e))?;
    if &header[..6] != b"LUKS\xba\xbe" {
        return Ok(None);
    }
    let uuid = &header[168..208];
    let end = uuid.iter().position(|&b| b == 0).unwrap_or(uuid.len());
    Ok(Some(String::from_utf8_lossy(&uuid[..end]).into_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_disk_has_a_vfat_esp_and_an_empty_luks_partition() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk.img");
        make_disk(&disk, 128).unwrap();
        assert!(
            make_disk(&disk, 128).is_err(),
            "an existing disk is never overwritten"
        );
        let out = Command::new("sgdisk")
            .arg("-p")
            .arg(&disk)
            .output()
            .unwrap();
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(table.contains("EF00") && table.contains("8309"), "{table}");
        let boot = std::fs::read(&disk).unwrap();
        let esp = &boot[(ESP_START * 512) as usize..];
        assert_eq!(&esp[510..512], &[0x55, 0xaa], "a FAT boot sector");
        assert_eq!(&esp[82..87], b"FAT32");
        assert_eq!(
            luks_uuid(&disk).unwrap(),
            None,
            "the data partition is left empty"
        );
    }
}
