//! Crash-safe file primitives shared by the backends and the agent's state
//! file: a file is replaced whole or not at all.

use std::io::Write;
use std::path::Path;

use super::InstallError;

/// Fsyncs a directory so a rename or a new entry in it survives power loss.
///
/// # Errors
/// [`InstallError::Io`].
pub fn fsync_dir(dir: &Path) -> Result<(), InstallError> {
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| InstallError::io("fsync dir", dir, e))
}

/// Replaces `path` with `data` atomically: write `<path>.tmp`, fsync it,
/// rename it over `path`, fsync the directory.
///
/// # Errors
/// [`InstallError::Io`].
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<(), InstallError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(".tmp");
    let tmp = std::path::PathBuf::from(tmp_name);
    let mut f = std::fs::File::create(&tmp).map_err(|e| InstallError::io("create", &tmp, e))?;
    f.write_all(data)
        .map_err(|e| InstallError::io("write", &tmp, e))?;
    f.sync_all()
        .map_err(|e| InstallError::io("fsync", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| InstallError::io("rename", path, e))?;
    fsync_dir(dir)
}
