//! Output files that appear whole or not at all.
//!
//! A bundle or an extracted payload is written to `NAME.tmp` beside its
//! destination and renamed over it only once complete and verified, so a
//! crash, a full disk or a failed check never leaves a plausible-looking
//! partial file where a device or an operator would pick it up.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A file being written to a temporary name. Dropped without
/// [`AtomicFile::commit`], it removes itself.
#[derive(Debug)]
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    dest: PathBuf,
}

impl AtomicFile {
    /// Creates (or truncates a stale) `DEST.tmp`.
    ///
    /// # Errors
    /// The I/O error from creating the file, e.g. a missing directory.
    pub fn create(dest: &Path) -> io::Result<Self> {
        let mut name = dest.as_os_str().to_owned();
        name.push(".tmp");
        let tmp = PathBuf::from(name);
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        Ok(Self {
            file: Some(file),
            tmp,
            dest: dest.to_path_buf(),
        })
    }

    /// The temporary path being written.
    pub fn tmp_path(&self) -> &Path {
        &self.tmp
    }

    /// Flushes the data to disk and renames the file into place.
    ///
    /// # Errors
    /// The I/O error from syncing or renaming; the temporary file is
    /// removed in that case.
    pub fn commit(mut self) -> io::Result<()> {
        if let Some(file) = self.file.take() {
            file.sync_all()?;
        }
        std::fs::rename(&self.tmp, &self.dest)
    }

    fn file(&mut self) -> io::Result<&mut File> {
        self.file
            .as_mut()
            .ok_or_else(|| io::Error::other("atomic file already committed"))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file()?.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file()?.flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // After a successful commit the temporary name no longer exists,
        // so this only ever cleans up after a failure.
        if self.file.take().is_some() || self.tmp.exists() {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_uncommitted_file_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.write_all(b"partial").unwrap();
        }
        assert!(!dest.exists());
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_committed_file_replaces_the_destination() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("out.bin");
        std::fs::write(&dest, b"old").unwrap();
        let mut f = AtomicFile::create(&dest).unwrap();
        f.write_all(b"new").unwrap();
        f.commit().unwrap();
        assert_eq!(std::fs::read(&dest).unwrap(), b"new");
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
