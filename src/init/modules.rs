//! Kernel modules of the image. The image builder resolves the modules a node needs and their
//! dependencies at build time and lists their files, dependencies first, in [`MODULES_LIST`];
//! init loads them in that order with `finit_module`.

use std::ffi::CString;
use std::path::{Path, PathBuf};

/// The list of module files to load, one path per line, dependencies first.
pub const MODULES_LIST: &str = "/etc/polis/modules";

/// A module that could not be loaded, by name.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The list itself is unreadable.
    #[error("cannot read the module list {path}: {source}")]
    List {
        /// The list.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A listed module file is missing from the image.
    #[error("kernel module {module} is missing: {path}: {source}")]
    Missing {
        /// The module's name.
        module: String,
        /// Its file.
        path: PathBuf,
        /// Why it could not be opened.
        source: std::io::Error,
    },
    /// The kernel refused the module.
    #[error("the kernel refused module {module} ({path}): {source}")]
    Refused {
        /// The module's name.
        module: String,
        /// Its file.
        path: PathBuf,
        /// The kernel's answer.
        source: nix::Error,
    },
}

/// Load every module in the list at `list`, in order; answers how many were loaded (a module
/// already in the kernel counts as loaded).
pub fn load_modules(list: &Path) -> Result<usize, ModuleError> {
    let text = std::fs::read_to_string(list).map_err(|source| ModuleError::List {
        path: list.into(),
        source,
    })?;
    let files: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    for file in &files {
        load(Path::new(file))?;
    }
    Ok(files.len())
}

fn load(path: &Path) -> Result<(), ModuleError> {
    let module = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let file = std::fs::File::open(path).map_err(|source| ModuleError::Missing {
        module: module.clone(),
        path: path.into(),
        source,
    })?;
    let no_params = CString::default();
    match nix::kmod::finit_module(&file, &no_params, nix::kmod::ModuleInitFlags::empty()) {
        Ok(()) | Err(nix::errno::Errno::EEXIST) => Ok(()),
        Err(source) => Err(ModuleError::Refused {
            module,
            path: path.into(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_module_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let list = dir.path().join("modules");
        std::fs::write(&list, "\n/lib/modules/none/dm-crypt.ko\n").unwrap();
        let err = load_modules(&list).unwrap_err().to_string();
        assert!(
            err.starts_with("kernel module dm-crypt is missing"),
            "{err}"
        );
        let err = load_modules(&dir.path().join("absent"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("cannot read the module list"), "{err}");
    }
}
