//! Unpacking `Archive` payloads (POSIX tar) into a slot directory.
//!
//! The archive is the verified payload the manifest pins, but a release
//! key is not a licence to write outside the slot: an entry whose path
//! would land outside the destination (`..`, or through a symlink the
//! archive itself planted) fails the whole install, and device nodes and
//! FIFOs are refused. The tree is unpacked beside its destination, every
//! file and directory is fsynced, and only then is it renamed into place,
//! so after power loss a slot holds the old tree or the whole new one.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use super::{fsync_dir, InstallError};

/// What an unpack wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Unpacked {
    /// Entries written (files, directories, links).
    pub entries: u64,
    /// Bytes of regular file content.
    pub bytes: u64,
}

fn bad(path: &Path, why: impl std::fmt::Display) -> InstallError {
    InstallError::Verify(format!("archive {}: {why}", path.display()))
}

/// Unpacks the tar file `archive` into `dest`, replacing what was there.
///
/// # Errors
/// [`InstallError::Verify`] for an archive that is malformed or tries to
/// leave `dest`; [`InstallError::Io`] for the filesystem.
pub fn unpack_tar(archive: &Path, dest: &Path) -> Result<Unpacked, InstallError> {
    let parent = dest
        .parent()
        .ok_or_else(|| InstallError::State(format!("{} has no parent", dest.display())))?;
    let staging = dest.with_extension("unpacking");
    remove_tree(&staging)?;
    std::fs::create_dir_all(&staging).map_err(|e| InstallError::io("create dir", &staging, e))?;
    let file = File::open(archive).map_err(|e| InstallError::io("open", archive, e))?;
    let mut tar = tar::Archive::new(BufReader::new(file));
    tar.set_preserve_permissions(true);
    tar.set_preserve_mtime(true);
    tar.set_unpack_xattrs(false);
    tar.set_overwrite(true);
    let mut done = Unpacked::default();
    let entries = tar.entries().map_err(|e| bad(archive, e))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| bad(archive, e))?;
        let kind = entry.header().entry_type();
        let name = entry
            .path()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "<unreadable name>".into());
        use tar::EntryType as T;
        match kind {
            T::Regular | T::Continuous | T::Directory | T::Symlink | T::Link => {}
            // Metadata entries the tar crate folds into the next entry.
            T::GNULongName | T::GNULongLink | T::XHeader | T::XGlobalHeader => {}
            other => {
                remove_tree(&staging)?;
                return Err(bad(
                    archive,
                    format!("entry {name:?} is a {other:?}, which a slot may not hold"),
                ));
            }
        }
        let size = entry.header().size().unwrap_or(0);
        match entry.unpack_in(&staging) {
            Ok(true) => {
                done.entries += 1;
                if kind.is_file() {
                    done.bytes += size;
                }
            }
            Ok(false) => {
                remove_tree(&staging)?;
                return Err(bad(
                    archive,
                    format!("entry {name:?} points outside the slot"),
                ));
            }
            Err(e) => {
                remove_tree(&staging)?;
                return Err(bad(archive, format!("entry {name:?}: {e}")));
            }
        }
    }
    sync_tree(&staging)?;
    remove_tree(dest)?;
    std::fs::rename(&staging, dest).map_err(|e| InstallError::io("rename", dest, e))?;
    fsync_dir(parent)?;
    Ok(done)
}

/// Removes a directory tree if it exists.
pub(crate) fn remove_tree(path: &Path) -> Result<(), InstallError> {
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(InstallError::io("remove", path, e)),
    }
}

/// Fsyncs every regular file and directory under `root`, without
/// following symlinks.
fn sync_tree(root: &Path) -> Result<(), InstallError> {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).map_err(|e| InstallError::io("read dir", &dir, e))? {
            let e = e.map_err(|err| InstallError::io("read dir", &dir, err))?;
            let path = e.path();
            let ty = e
                .file_type()
                .map_err(|err| InstallError::io("stat", &path, err))?;
            if ty.is_dir() {
                stack.push(path);
            } else if ty.is_file() {
                File::open(&path)
                    .and_then(|f| f.sync_all())
                    .map_err(|err| InstallError::io("fsync", &path, err))?;
            }
        }
        fsync_dir(&dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    /// A tar whose single entry is named `name` verbatim (the builder
    /// refuses `..`, an attacker's tool does not).
    fn raw_tar(name: &[u8], data: &[u8]) -> Vec<u8> {
        let mut h = tar::Header::new_old();
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        let mut out = h.as_bytes().to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512 + 1024, 0);
        out
    }

    #[test]
    fn an_archive_is_unpacked_whole_and_replaces_the_previous_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let ar = tmp.path().join("payload");
        let dest = tmp.path().join("root");
        std::fs::write(
            &ar,
            tar_of(&[("etc/app.conf", b"v=1"), ("bin/app", b"\x7fELF")]),
        )
        .unwrap();
        let n = unpack_tar(&ar, &dest).unwrap();
        assert_eq!(n.bytes, 7);
        assert_eq!(std::fs::read(dest.join("etc/app.conf")).unwrap(), b"v=1");

        std::fs::write(&ar, tar_of(&[("etc/app.conf", b"v=2")])).unwrap();
        unpack_tar(&ar, &dest).unwrap();
        assert_eq!(std::fs::read(dest.join("etc/app.conf")).unwrap(), b"v=2");
        assert!(!dest.join("bin/app").exists(), "the old tree is gone");
        assert!(!tmp.path().join("root.unpacking").exists());
    }

    #[test]
    fn an_entry_that_climbs_out_of_the_slot_fails_the_install_and_writes_nothing_outside() {
        let tmp = tempfile::tempdir().unwrap();
        let slot = tmp.path().join("slot");
        std::fs::create_dir_all(&slot).unwrap();
        let ar = slot.join("payload");
        std::fs::write(&ar, raw_tar(b"../../evil", b"x")).unwrap();
        let err = unpack_tar(&ar, &slot.join("root")).unwrap_err();
        assert!(matches!(err, InstallError::Verify(_)), "{err}");
        assert!(!tmp.path().join("evil").exists());
        assert!(!slot.join("root").exists());
        assert!(!slot.join("root.unpacking").exists());
    }

    #[test]
    fn a_file_written_through_a_symlink_the_archive_planted_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir_all(&outside).unwrap();
        let mut b = tar::Builder::new(Vec::new());
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_size(0);
        h.set_mode(0o777);
        b.append_link(&mut h, "escape", &outside).unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "escape/evil", &b"x"[..]).unwrap();
        let ar = tmp.path().join("payload");
        std::fs::write(&ar, b.into_inner().unwrap()).unwrap();
        assert!(unpack_tar(&ar, &tmp.path().join("root")).is_err());
        assert!(!outside.join("evil").exists());
    }

    #[test]
    fn a_device_node_in_an_archive_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Char);
        h.set_size(0);
        h.set_mode(0o600);
        h.set_cksum();
        let mut b = tar::Builder::new(Vec::new());
        b.append_data(&mut h, "dev/mem", std::io::empty()).unwrap();
        let ar = tmp.path().join("payload");
        std::fs::write(&ar, b.into_inner().unwrap()).unwrap();
        let err = unpack_tar(&ar, &tmp.path().join("root")).unwrap_err();
        assert!(err.to_string().contains("dev/mem"), "{err}");
    }

    #[test]
    fn garbage_is_a_typed_error_not_a_panic() {
        let tmp = tempfile::tempdir().unwrap();
        let ar = tmp.path().join("payload");
        std::fs::write(&ar, vec![0xAB; 3000]).unwrap();
        assert!(unpack_tar(&ar, &tmp.path().join("root")).is_err());
    }
}
