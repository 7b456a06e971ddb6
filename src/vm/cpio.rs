//! A writer of cpio archives in the "newc" format, the one the kernel unpacks as an initramfs.

use std::io::{self, Write};

/// The kinds of entry an initramfs needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Entry {
    /// A directory.
    Dir,
    /// A regular file with these contents and permission bits.
    File {
        /// The contents.
        data: Vec<u8>,
        /// Permission bits, e.g. 0o755.
        mode: u32,
    },
    /// A symbolic link to `target`.
    Symlink(String),
    /// A character device.
    CharDev {
        /// Major number.
        major: u32,
        /// Minor number.
        minor: u32,
    },
}

/// Streams entries into `out` as a newc archive; [`CpioWriter::finish`] writes the trailer.
pub struct CpioWriter<W: Write> {
    out: W,
    ino: u32,
    written: u64,
}

impl<W: Write> CpioWriter<W> {
    /// An archive written to `out`.
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            ino: 1,
            written: 0,
        }
    }

    /// Append `entry` at `path` (relative, no leading slash: `usr/bin/etcd`).
    pub fn add(&mut self, path: &str, entry: &Entry) -> io::Result<()> {
        let (mode, data, rdev): (u32, &[u8], (u32, u32)) = match entry {
            Entry::Dir => (0o040755, &[], (0, 0)),
            Entry::File { data, mode } => (0o100000 | (mode & 0o7777), data, (0, 0)),
            Entry::Symlink(target) => (0o120777, target.as_bytes(), (0, 0)),
            Entry::CharDev { major, minor } => (0o020600, &[], (*major, *minor)),
        };
        let nlink = if matches!(entry, Entry::Dir) { 2 } else { 1 };
        self.header(path, mode, nlink, data.len() as u32, rdev)?;
        self.write_padded(data)
    }

    /// Write the trailer and answer the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.header("TRAILER!!!", 0, 1, 0, (0, 0))?;
        self.out.flush()?;
        Ok(self.out)
    }

    fn header(
        &mut self,
        name: &str,
        mode: u32,
        nlink: u32,
        size: u32,
        rdev: (u32, u32),
    ) -> io::Result<()> {
        let ino = self.ino;
        self.ino += 1;
        let fields = [
            ino,
            mode,
            0,
            0,
            nlink,
            0,
            size,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        let mut header = String::from("070701");
        for field in fields {
            header.push_str(&format!("{field:08X}"));
        }
        let mut bytes = header.into_bytes();
        bytes.extend_from_slice(name.as_bytes());
        bytes.push(0);
        self.write_padded(&bytes)
    }

    fn write_padded(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        let pad = (4 - (self.written % 4) as usize) % 4;
        self.out.write_all(&[0; 3][..pad])?;
        self.written += pad as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// GNU cpio reads back what the writer wrote: names, kinds, contents and modes.
    #[test]
    fn gnu_cpio_lists_and_extracts_the_archive() {
        let mut w = CpioWriter::new(Vec::new());
        w.add("etc", &Entry::Dir).unwrap();
        w.add(
            "etc/polis",
            &Entry::File {
                data: b"hello\n".to_vec(),
                mode: 0o640,
            },
        )
        .unwrap();
        w.add("etc/hosts", &Entry::Symlink("/ephemeral/hosts".into()))
            .unwrap();
        w.add(
            "odd",
            &Entry::File {
                data: vec![7; 5],
                mode: 0o755,
            },
        )
        .unwrap();
        let archive = w.finish().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.cpio");
        std::fs::write(&path, &archive).unwrap();
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "cd {} && cpio -idv --no-absolute-filenames < a.cpio",
                dir.path().display()
            ))
            .output()
            .expect("cpio is installed by scripts/setup.sh");
        assert!(out.status.success(), "{out:?}");
        assert_eq!(
            std::fs::read(dir.path().join("etc/polis")).unwrap(),
            b"hello\n"
        );
        assert_eq!(std::fs::read(dir.path().join("odd")).unwrap(), vec![7; 5]);
        assert_eq!(
            std::fs::read_link(dir.path().join("etc/hosts")).unwrap(),
            std::path::Path::new("/ephemeral/hosts")
        );
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("odd"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755);
    }
}
