//! The one way Polis writes a file that must survive a crash whole: a temporary file beside it
//! (truncated, written, fsynced), renamed over the target, then the directory fsynced. A reader
//! sees the old contents or the new, never half of either. Files rebuilt on every boot (under
//! `ephemeral/`) are replaced the same way without the fsyncs, as are files made durable later
//! ([`sync_files`]); files of one directory written together share one directory fsync
//! ([`write_atomic_in`]). Any of these writes can be moved off the node's event-loop thread
//! with [`off_thread`].

use std::fs::{self, File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A filesystem operation that failed, naming the file.
#[derive(Debug, thiserror::Error)]
#[error("cannot {op} {path}: {source}")]
pub struct FsError {
    /// What was being done.
    pub op: &'static str,
    /// To which file.
    pub path: PathBuf,
    /// Why it failed.
    #[source]
    pub source: std::io::Error,
}

impl FsError {
    /// Wrap an I/O error with the operation and file it concerns.
    pub fn new(op: &'static str, path: &Path, source: std::io::Error) -> Self {
        FsError {
            op,
            path: path.to_owned(),
            source,
        }
    }

    /// Whether the file was not there.
    pub fn is_not_found(&self) -> bool {
        self.source.kind() == std::io::ErrorKind::NotFound
    }
}

/// File mode for secrets: readable by the owner only.
pub const SECRET_MODE: u32 = 0o400;
/// File mode for everything else Polis writes.
pub const PUBLIC_MODE: u32 = 0o644;

/// Replace `path` with `contents` atomically and durably, creating its directory if needed;
/// the file gets `mode`.
pub fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    replace(path, contents, mode, Durability::Synced)
}

/// Replace several files of one directory (`name`, `contents`, `mode`), each atomically. If
/// `durability` asks, all durably: every file is fsynced, then all are renamed into place and
/// the directory fsynced once, not once per file. For files written together (a node's
/// credentials, etcd's peer PKI); a crash part-way may leave some of them new and some old, as
/// separate writes would.
pub fn write_atomic_in(
    dir: &Path,
    files: &[(&str, impl AsRef<[u8]>, u32)],
    durability: Durability,
) -> Result<(), FsError> {
    let mut staged = Vec::with_capacity(files.len());
    for (name, contents, mode) in files {
        let path = dir.join(name);
        let tmp = stage(&path, contents.as_ref(), *mode, durability)?;
        staged.push((tmp, path));
    }
    for (tmp, path) in staged {
        fs::rename(&tmp, &path).map_err(|e| FsError::new("rename into place", &path, e))?;
    }
    match durability {
        Durability::Synced => sync_directory(dir),
        Durability::Volatile => Ok(()),
    }
}

/// Make `files`, and their directories' entries, durable: for files written not durably
/// ([`write_ephemeral`], [`Durability::Volatile`]) whose durability can wait until something
/// else is under way (etcd's peer PKI, synced while etcd first elects itself).
pub fn sync_files(files: &[PathBuf]) -> Result<(), FsError> {
    for path in files {
        File::open(path)
            .and_then(|f| f.sync_all())
            .map_err(|e| FsError::new("fsync", path, e))?;
    }
    let mut dirs: Vec<&Path> = files.iter().map(|path| parent(path)).collect();
    dirs.dedup();
    dirs.into_iter().try_for_each(sync_directory)
}

/// Replace `path` with `contents` atomically but not durably: for files that are rebuilt on
/// every boot (`ephemeral/`, a tmpfs on a real node), where an fsync buys nothing and costs
/// milliseconds on every change, or that are made durable later ([`sync_files`]). A reader
/// still sees the old contents or the new, never half.
pub fn write_ephemeral(path: &Path, contents: &[u8], mode: u32) -> Result<(), FsError> {
    replace(path, contents, mode, Durability::Volatile)
}

/// Run the file work `f` on the blocking thread pool. A node's actors share one event-loop
/// thread, which also serves the Curator: an fsync there stalls every call in flight. The work
/// starts at once (call this inside the runtime); a panic in it comes back as an error naming
/// `path`.
pub fn off_thread<T, E, F>(path: &Path, f: F) -> impl Future<Output = Result<T, E>> + 'static
where
    T: Send + 'static,
    E: From<FsError> + Send + 'static,
    F: FnOnce() -> Result<T, E> + Send + 'static,
{
    let path = path.to_owned();
    let work = tokio::task::spawn_blocking(f);
    async move {
        work.await.unwrap_or_else(|e| {
            Err(FsError::new(
                "finish the work (its thread failed) on",
                &path,
                std::io::Error::other(e.to_string()),
            )
            .into())
        })
    }
}

/// Whether a write makes the new contents durable before returning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// The file and its directory are fsynced: the new contents survive a power cut.
    Synced,
    /// Nothing is fsynced: a power cut may leave the old contents (never a mix).
    Volatile,
}

/// Write a temporary file beside `path` and rename it over `path`.
fn replace(path: &Path, contents: &[u8], mode: u32, durability: Durability) -> Result<(), FsError> {
    let tmp = stage(path, contents, mode, durability)?;
    fs::rename(&tmp, path).map_err(|e| FsError::new("rename into place", path, e))?;
    if durability == Durability::Volatile {
        return Ok(());
    }
    sync_directory(parent(path))
}

/// The directory `path` is in.
fn parent(path: &Path) -> &Path {
    path.parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// Create the directory `path` is in, if it is not there; answers it.
fn create_parent(path: &Path) -> Result<&Path, FsError> {
    let dir = parent(path);
    fs::create_dir_all(dir).map_err(|e| FsError::new("create directory", dir, e))?;
    Ok(dir)
}

/// Write `contents` to a temporary file beside `path` (its directory created if needed), with
/// `mode`, fsynced if `durability` asks; answers the temporary file's path.
fn stage(
    path: &Path,
    contents: &[u8],
    mode: u32,
    durability: Durability,
) -> Result<PathBuf, FsError> {
    let dir = create_parent(path)?;
    let name = path
        .file_name()
        .ok_or_else(|| FsError::new("write", path, std::io::ErrorKind::InvalidInput.into()))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(".tmp");
    let tmp = dir.join(tmp_name);
    // A temporary file left by a crash may be read-only; it is garbage, never data.
    remove_if_present(&tmp, "remove stale")?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(|e| FsError::new("create", &tmp, e))?;
    file.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(|e| FsError::new("set mode of", &tmp, e))?;
    file.write_all(contents)
        .map_err(|e| FsError::new("write", &tmp, e))?;
    if durability == Durability::Synced {
        file.sync_all()
            .map_err(|e| FsError::new("fsync", &tmp, e))?;
    }
    Ok(tmp)
}

/// Create the empty file `path`, if it is not there, durably (its directory created if needed,
/// as [`write_atomic`] does): a mark whose existence is all it says. It has no contents to
/// stage, so it costs one journal commit where [`write_atomic`] costs two (the file's fsync
/// commits its directory entry with it on ext4; the directory's fsync, then nearly free, makes
/// sure of it elsewhere).
pub fn create_mark(path: &Path) -> Result<(), FsError> {
    let dir = create_parent(path)?;
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(PUBLIC_MODE)
        .open(path)
        .and_then(|file| file.sync_all())
        .map_err(|e| FsError::new("create", path, e))?;
    sync_directory(dir)
}

/// Remove the file at `path`, if it is there, durably: its directory is fsynced, so a crash
/// cannot bring it back. A file that is not there costs no fsync.
pub fn remove_durably(path: &Path) -> Result<(), FsError> {
    match remove_if_present(path, "remove")? {
        true => sync_directory(parent(path)),
        false => Ok(()),
    }
}

/// Remove the file at `path`, if it is there (`op` names the removal in the error); whether it
/// was.
pub fn remove_if_present(path: &Path, op: &'static str) -> Result<bool, FsError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(FsError::new(op, path, e)),
    }
}

/// Remove the directory `dir` and everything in it, if it is there.
pub fn remove_dir_if_present(dir: &Path) -> Result<(), FsError> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(FsError::new("remove", dir, e)),
        _ => Ok(()),
    }
}

/// Make the entries of `dir` (a rename, a removal) durable.
fn sync_directory(dir: &Path) -> Result<(), FsError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| FsError::new("fsync directory", dir, e))
}

/// Overwrite the file at `path` in place (same inode), not durably. Only for a file that is
/// bind-mounted elsewhere and rebuilt on every start, such as a network namespace's
/// `/etc/hosts`, where a rename would leave the mount on the old inode; everything else uses
/// [`write_atomic`] or [`write_ephemeral`].
pub fn overwrite_in_place(path: &Path, contents: &[u8]) -> Result<(), FsError> {
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| FsError::new("open", path, e))?;
    file.write_all(contents)
        .map_err(|e| FsError::new("write", path, e))
}

/// Read a whole file, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, FsError> {
    fs::read(path).map_err(|e| FsError::new("read", path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_with_the_given_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("esp/metropolis/x.pb");
        write_atomic(&path, b"first", PUBLIC_MODE).unwrap();
        write_atomic(&path, b"second, longer", SECRET_MODE).unwrap();
        assert_eq!(read(&path).unwrap(), b"second, longer");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SECRET_MODE);
        let leftovers: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers, vec!["x.pb"]);
    }

    #[test]
    fn files_written_together_are_each_whole_with_their_modes() {
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("node/credentials");
        write_atomic(&creds.join("cert.pem"), b"old", PUBLIC_MODE).unwrap();
        let files = [
            ("cert.pem", b"new cert".to_vec(), PUBLIC_MODE),
            ("key.pem", b"new key".to_vec(), SECRET_MODE),
        ];
        write_atomic_in(&creds, &files, Durability::Synced).unwrap();
        for (name, contents, mode) in &files {
            let path = creds.join(name);
            assert_eq!(&read(&path).unwrap(), contents);
            let got = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
            assert_eq!(got, *mode, "{name}");
        }
        let mut names: Vec<_> = fs::read_dir(&creds)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        names.sort();
        assert_eq!(names, vec!["cert.pem", "key.pem"], "no temporary file left");
    }

    /// A file is removed (and said to be); one that is not there is no error, and a directory in
    /// its way is.
    #[test]
    fn removal_takes_the_file_and_tolerates_its_absence() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mark");
        write_atomic(&path, b"", PUBLIC_MODE).unwrap();
        remove_durably(&path).unwrap();
        assert!(!path.exists());
        remove_durably(&path).unwrap();
        assert!(!remove_if_present(&path, "remove").unwrap());
        write_atomic(&path, b"", PUBLIC_MODE).unwrap();
        assert!(remove_if_present(&path, "remove").unwrap());
        fs::create_dir(&path).unwrap();
        let refused = remove_durably(&path).unwrap_err();
        assert_eq!(refused.path, path);
    }

    #[test]
    fn ephemeral_files_are_replaced_whole_and_off_thread_work_names_its_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ephemeral/hosts");
        write_ephemeral(&path, b"127.0.0.1 localhost\n", PUBLIC_MODE).unwrap();
        write_ephemeral(&path, b"::1 localhost\n", SECRET_MODE).unwrap();
        assert_eq!(read(&path).unwrap(), b"::1 localhost\n");
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, SECRET_MODE);
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);

        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let moved = path.clone();
        let written = runtime.block_on(async {
            off_thread(&path, move || {
                write_ephemeral(&moved, b"from the pool", PUBLIC_MODE)
            })
            .await
        });
        written.unwrap();
        assert_eq!(read(&path).unwrap(), b"from the pool");
        let failed = runtime.block_on(async {
            off_thread(&path, || -> Result<(), FsError> {
                panic!("the writer broke")
            })
            .await
        });
        assert!(failed.unwrap_err().to_string().contains("ephemeral/hosts"));
    }

    #[test]
    fn a_stale_read_only_temporary_file_does_not_block_a_write() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key.pem");
        let stale = dir.path().join(".key.pem.tmp");
        fs::write(&stale, b"half").unwrap();
        fs::set_permissions(&stale, fs::Permissions::from_mode(0o400)).unwrap();
        write_atomic(&path, b"whole", SECRET_MODE).unwrap();
        assert_eq!(read(&path).unwrap(), b"whole");
        assert!(!stale.exists());
    }

    #[test]
    fn errors_name_the_file() {
        let err = read(Path::new("/nonexistent/polis/file")).unwrap_err();
        assert!(err.is_not_found());
        assert_eq!(
            err.to_string(),
            "cannot read /nonexistent/polis/file: No such file or directory (os error 2)"
        );
    }

    #[test]
    fn a_mark_is_created_empty_and_an_existing_one_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mark = dir.path().join("first_start");
        create_mark(&mark).unwrap();
        assert_eq!(read(&mark).unwrap(), b"");
        fs::write(&mark, b"kept").unwrap();
        create_mark(&mark).unwrap();
        assert_eq!(read(&mark).unwrap(), b"kept");
    }

    #[test]
    fn syncing_a_missing_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let present = dir.path().join("present");
        write_ephemeral(&present, b"x", PUBLIC_MODE).unwrap();
        sync_files(std::slice::from_ref(&present)).unwrap();
        let missing = dir.path().join("missing");
        let err = sync_files(&[present, missing.clone()]).unwrap_err();
        assert_eq!(err.path, missing);
        assert!(err.is_not_found());
    }
}
