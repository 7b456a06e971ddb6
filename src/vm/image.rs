//! The boot image of a Polis VM, made from this machine's Debian packages only: Debian's kernel
//! (`linux-image-amd64`) and an initramfs holding `polis-node` as `/init`, etcd, mkfs, every
//! shared library they load (resolved as `ldd` does, plus the TPM's dlopen'ed TCTI), and the
//! kernel modules a node needs with their dependencies, listed in load order for init.

use crate::fsutil::FsError;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::cpio::{CpioWriter, Entry};
use crate::init::MODULES_LIST;

/// The kernel modules a Polis VM loads (dependencies are added; those built into the kernel,
/// like Debian's TPM drivers, are skipped): disk, network, the TPM, dm-crypt with AES-XTS, the
/// ESP's vfat, the data partition's ext4, fw_cfg, and the virtio console for the debug port.
pub const MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_console",
    "qemu_fw_cfg",
    "tpm_tis",
    "tpm_crb",
    "dm_mod",
    "dm_crypt",
    "aesni_intel",
    "ecb",
    "xts",
    "crc32c_generic",
    "ext4",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "vfat",
];

/// Programs the node runs, looked up in the system's sbin and bin directories.
const PROGRAMS: &[&str] = &["etcd", "mkfs.ext4", "mkfs.vfat"];
/// Libraries loaded with dlopen, which `ldd` cannot see: the TPM device TCTI.
const DLOPENED: &[&str] = &["/usr/lib/x86_64-linux-gnu/libtss2-tcti-device.so.0"];
/// Configuration files taken as they are.
const CONFIG_FILES: &[&str] = &["/etc/mke2fs.conf"];

/// Why an image could not be made, naming the file or program at fault.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// A file could not be read or written.
    #[error(transparent)]
    Fs(#[from] FsError),
    /// A tool the builder runs failed.
    #[error(transparent)]
    Tool(#[from] crate::process::ProcessError),
    /// No kernel (or no modules for it) is installed.
    #[error("no Debian kernel found: {0} (install linux-image-amd64)")]
    NoKernel(String),
    /// A program the node needs is not installed.
    #[error("{0} is not installed")]
    NoProgram(String),
    /// A module the node needs is not in the kernel's modules.dep (nor built in).
    #[error("kernel module {module} is neither in {dep} nor built in")]
    NoModule {
        /// The module.
        module: String,
        /// The dependency file looked at.
        dep: PathBuf,
    },
}

/// A kernel and its modules directory.
#[derive(Clone, Debug)]
pub struct Kernel {
    /// Its version, e.g. `6.1.0-57-amd64`.
    pub version: String,
    /// `/boot/vmlinuz-<version>`.
    pub image: PathBuf,
}

impl Kernel {
    /// The newest Debian kernel installed with its modules.
    pub fn installed() -> Result<Kernel, ImageError> {
        let boot = Path::new("/boot");
        let mut versions: Vec<String> = std::fs::read_dir(boot)
            .map_err(|e| ImageError::NoKernel(format!("{}: {e}", boot.display())))?
            .filter_map(|e| {
                e.ok()?
                    .file_name()
                    .into_string()
                    .ok()?
                    .strip_prefix("vmlinuz-")
                    .map(str::to_owned)
            })
            .filter(|v| {
                Path::new("/lib/modules")
                    .join(v)
                    .join("modules.dep")
                    .exists()
            })
            .collect();
        versions.sort();
        let version = versions.pop().ok_or_else(|| {
            ImageError::NoKernel("no /boot/vmlinuz-* with /lib/modules/*/modules.dep".into())
        })?;
        Ok(Kernel {
            image: boot.join(format!("vmlinuz-{version}")),
            version,
        })
    }

    fn modules_dir(&self) -> PathBuf {
        Path::new("/lib/modules").join(&self.version)
    }
}

/// The files of an initramfs, by path inside it (no leading slash).
#[derive(Default)]
struct Tree {
    entries: BTreeMap<String, Entry>,
}

impl Tree {
    fn add(&mut self, path: &str, entry: Entry) {
        let path = path.trim_start_matches('/');
        let mut parent = Path::new(path).parent();
        while let Some(dir) = parent.filter(|d| !d.as_os_str().is_empty()) {
            self.entries
                .entry(dir.to_string_lossy().into_owned())
                .or_insert(Entry::Dir);
            parent = dir.parent();
        }
        self.entries.insert(path.to_owned(), entry);
    }

    /// Copy the host file `source` (through symlinks) to `dest`.
    fn copy(&mut self, source: &Path, dest: &str, mode: u32) -> Result<(), ImageError> {
        let data = std::fs::read(source).map_err(|e| FsError::new("read", source, e))?;
        self.add(dest, Entry::File { data, mode });
        Ok(())
    }

    /// Copy the host file `source` to the same place inside, keeping its name but resolving the
    /// directories (`/lib` → `/usr/lib` on a merged-/usr system), and its libraries with it.
    fn copy_with_libraries(&mut self, source: &Path) -> Result<(), ImageError> {
        self.copy(source, &in_image(source)?, 0o755)?;
        for library in libraries(source)? {
            let dest = in_image(&library)?;
            if !self.entries.contains_key(&dest) {
                self.copy(&library, &dest, 0o755)?;
            }
        }
        Ok(())
    }

    /// Write the archive, gzip-compressed (as the kernel unpacks it), to `out`.
    fn write(&self, out: &Path) -> Result<(), ImageError> {
        let mut plain = out.as_os_str().to_owned();
        plain.push(".cpio");
        let plain = PathBuf::from(plain);
        let file = std::fs::File::create(&plain).map_err(|e| FsError::new("create", &plain, e))?;
        let mut writer = CpioWriter::new(std::io::BufWriter::new(file));
        for (path, entry) in &self.entries {
            writer
                .add(path, entry)
                .map_err(|e| FsError::new("write", &plain, e))?;
        }
        writer
            .finish()
            .map_err(|e| FsError::new("write", &plain, e))?;
        let mut gzip = Command::new("gzip");
        gzip.args(["-6", "-n", "-f"]).arg(&plain);
        crate::process::run(gzip)?;
        let mut compressed = plain.into_os_string();
        compressed.push(".gz");
        let compressed = PathBuf::from(compressed);
        std::fs::rename(&compressed, out).map_err(|e| FsError::new("rename", &compressed, e))?;
        Ok(())
    }
}

/// Where a host file goes in the image: its real directory, its own name.
fn in_image(path: &Path) -> Result<String, ImageError> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let dir = std::fs::canonicalize(dir).map_err(|e| FsError::new("resolve", dir, e))?;
    let name = path.file_name().unwrap_or_default();
    Ok(dir
        .join(name)
        .to_string_lossy()
        .trim_start_matches('/')
        .to_owned())
}

/// The shared libraries `binary` loads, as `ldd` resolves them.
fn libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let mut cmd = Command::new("ldd");
    cmd.arg(binary);
    let out = match crate::process::run(cmd) {
        Ok(out) => out,
        // A static binary: "not a dynamic executable", exit 1.
        Err(crate::process::ProcessError::Failed { stderr, .. })
            if stderr.contains("not a dynamic") =>
        {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e.into()),
    };
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once(" => ") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// A program's path in the system's sbin and bin directories.
fn program(name: &str) -> Result<PathBuf, ImageError> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|p| p.exists())
        .ok_or_else(|| ImageError::NoProgram(name.into()))
}

/// The files of `wanted` modules and of everything they depend on, dependencies first, from the
/// kernel's `modules.dep`; built-in modules are skipped.
pub fn resolve_modules(modules_dir: &Path, wanted: &[&str]) -> Result<Vec<PathBuf>, ImageError> {
    let dep_file = modules_dir.join("modules.dep");
    let deps =
        std::fs::read_to_string(&dep_file).map_err(|e| FsError::new("read", &dep_file, e))?;
    let builtin = std::fs::read_to_string(modules_dir.join("modules.builtin")).unwrap_or_default();
    let name_of = |file: &str| {
        let base = file.rsplit('/').next().unwrap_or(file);
        base.split(".ko").next().unwrap_or(base).replace('-', "_")
    };
    let table: BTreeMap<String, (String, Vec<String>)> = deps
        .lines()
        .filter_map(|line| {
            let (file, rest) = line.split_once(':')?;
            Some((
                name_of(file),
                (
                    file.to_owned(),
                    rest.split_whitespace().map(str::to_owned).collect(),
                ),
            ))
        })
        .collect();
    let builtin: Vec<String> = builtin.lines().map(name_of).collect();
    let mut order = Vec::new();
    fn visit(name: &str, table: &BTreeMap<String, (String, Vec<String>)>, order: &mut Vec<String>) {
        let Some((file, deps)) = table.get(name) else {
            return;
        };
        if order.contains(file) {
            return;
        }
        // modules.dep lists every (transitive) dependency; load the deepest ones first.
        for dep in deps.iter().rev() {
            let dep_name = dep
                .rsplit('/')
                .next()
                .unwrap_or(dep)
                .split(".ko")
                .next()
                .unwrap_or(dep)
                .replace('-', "_");
            visit(&dep_name, table, order);
        }
        order.push(file.clone());
    }
    for module in wanted {
        let name = module.replace('-', "_");
        if table.contains_key(&name) {
            visit(&name, &table, &mut order);
        } else if !builtin.contains(&name) {
            return Err(ImageError::NoModule {
                module: (*module).into(),
                dep: dep_file,
            });
        }
    }
    Ok(order.into_iter().map(|f| modules_dir.join(f)).collect())
}

/// Build the initramfs (gzip-compressed cpio) for `node_binary` (debug information stripped) and
/// `kernel` at `out`.
pub fn build_initramfs(node_binary: &Path, kernel: &Kernel, out: &Path) -> Result<(), ImageError> {
    let mut tree = Tree::default();
    for dir in [
        "dev",
        "proc",
        "sys",
        "run",
        "tmp",
        "esp",
        "data",
        "ephemeral",
        "usr/bin",
        "usr/sbin",
        "usr/lib64",
    ] {
        tree.add(dir, Entry::Dir);
    }
    for (link, target) in [
        ("bin", "usr/bin"),
        ("sbin", "usr/sbin"),
        ("lib", "usr/lib"),
        ("lib64", "usr/lib64"),
    ] {
        tree.add(link, Entry::Symlink(target.into()));
    }
    tree.add("dev/console", Entry::CharDev { major: 5, minor: 1 });
    tree.add("dev/null", Entry::CharDev { major: 1, minor: 3 });
    tree.add("etc/hosts", Entry::Symlink("/ephemeral/hosts".into()));
    tree.add(
        "etc/machine-id",
        Entry::Symlink("/ephemeral/machine-id".into()),
    );

    let stripped = out.with_extension("polis-node");
    let mut strip = Command::new("objcopy");
    strip.arg("--strip-debug").arg(node_binary).arg(&stripped);
    crate::process::run(strip)?;
    tree.copy(&stripped, "init", 0o755)?;
    let _ = std::fs::remove_file(&stripped);
    for library in libraries(node_binary)? {
        tree.copy(&library, &in_image(&library)?, 0o755)?;
    }
    for name in PROGRAMS {
        tree.copy_with_libraries(&program(name)?)?;
    }
    for library in DLOPENED {
        tree.copy_with_libraries(Path::new(library))?;
    }
    for file in CONFIG_FILES.iter().map(Path::new).filter(|f| f.exists()) {
        tree.copy(file, &in_image(file)?, 0o644)?;
    }
    let modules = resolve_modules(&kernel.modules_dir(), MODULES)?;
    let mut list = String::new();
    for module in &modules {
        let dest = in_image(module)?;
        tree.copy(module, &dest, 0o644)?;
        list.push_str(&format!("/{dest}\n"));
    }
    tree.add(
        MODULES_LIST,
        Entry::File {
            data: list.into_bytes(),
            mode: 0o644,
        },
    );
    tree.write(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_gives_every_library_path() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn modules_come_after_their_dependencies_and_unknown_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("modules.dep"),
            "kernel/fs/ext4/ext4.ko: kernel/lib/crc16.ko kernel/fs/mbcache.ko kernel/fs/jbd2/jbd2.ko\n\
             kernel/fs/jbd2/jbd2.ko:\nkernel/lib/crc16.ko:\nkernel/fs/mbcache.ko:\n\
             kernel/drivers/md/dm-crypt.ko: kernel/drivers/md/dm-mod.ko\nkernel/drivers/md/dm-mod.ko:\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/drivers/char/tpm/tpm.ko\n",
        )
        .unwrap();
        let files = resolve_modules(dir.path(), &["dm_crypt", "ext4", "dm-mod", "tpm"]).unwrap();
        let names: Vec<String> = files
            .iter()
            .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "dm-mod.ko",
                "dm-crypt.ko",
                "jbd2.ko",
                "mbcache.ko",
                "crc16.ko",
                "ext4.ko"
            ]
        );
        let err = resolve_modules(dir.path(), &["virtio_blk"])
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("kernel module virtio_blk is neither in"),
            "{err}"
        );
    }
}
