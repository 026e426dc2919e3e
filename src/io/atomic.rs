//! Atomic file output: write under a temporary name in the destination directory, then rename.
//!
//! A rename within one directory is atomic on POSIX file systems, so a reader (or a later run)
//! sees either the old file, or the complete new one, never a prefix. Temporary files are named
//! `.tmp-<name>` so that a crashed run's leftovers are recognisable and removed by [`clean_temps`].

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Prefix of every temporary file simat writes.
pub const TMP_PREFIX: &str = ".tmp-";

/// A file being written under a temporary name; [`AtomicFile::commit`] renames it into place.
/// Dropping it without committing removes the temporary file.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: PathBuf,
    dest: PathBuf,
    writer: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Start writing `dest`; the parent directory is created when missing.
    pub fn create(dest: impl AsRef<Path>) -> Result<Self> {
        let dest = dest.as_ref().to_path_buf();
        let tmp = tmp_path(&dest);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir).map_err(|e| Error::io("failed to create directory", dir, e))?;
        }
        let file = File::create(&tmp).map_err(|e| Error::io("failed to create", &tmp, e))?;
        Ok(AtomicFile {
            tmp,
            dest,
            writer: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The final path.
    pub fn dest(&self) -> &Path {
        &self.dest
    }

    /// The buffered writer of the temporary file.
    pub fn writer(&mut self) -> &mut BufWriter<File> {
        self.writer.as_mut().expect("writer taken only by commit")
    }

    /// Flush, sync and rename into place. On failure (a full disk shows up here, at the last
    /// flush) the temporary file is removed, as on drop.
    pub fn commit(mut self) -> Result<PathBuf> {
        let writer = self.writer.take().expect("commit called once");
        let done = (|| {
            let file = writer
                .into_inner()
                .map_err(|e| Error::io("failed to write", &self.tmp, e.into_error()))?;
            file.sync_all()
                .map_err(|e| Error::io("failed to sync", &self.tmp, e))?;
            drop(file);
            fs::rename(&self.tmp, &self.dest)
                .map_err(|e| Error::io("failed to rename into place", &self.dest, e))
        })();
        if let Err(e) = done {
            let _ = fs::remove_file(&self.tmp);
            return Err(e);
        }
        Ok(std::mem::take(&mut self.dest))
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.writer().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.writer().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.writer.is_some() {
            self.writer = None;
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// The temporary name used for `dest`.
pub fn tmp_path(dest: &Path) -> PathBuf {
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    dest.with_file_name(format!("{TMP_PREFIX}{name}"))
}

/// Write `bytes` to `dest` atomically.
pub fn write_atomic(dest: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    let mut file = AtomicFile::create(dest)?;
    let tmp = file.tmp.clone();
    file.writer()
        .write_all(bytes)
        .map_err(|e| Error::io("failed to write", &tmp, e))?;
    file.commit()?;
    Ok(())
}

/// Remove temporary files left in `dir` (recursively) by an interrupted run; returns how many.
pub fn clean_temps(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(Error::io("failed to list", dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io("failed to list", dir, e))?;
        let path = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        if is_dir {
            removed += clean_temps(&path)?;
        } else if entry.file_name().to_string_lossy().starts_with(TMP_PREFIX) {
            fs::remove_file(&path).map_err(|e| Error::io("failed to remove", &path, e))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uncommitted_file_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.bin");
        {
            let mut f = AtomicFile::create(&dest).unwrap();
            f.write_all(b"half").unwrap();
            assert!(tmp_path(&dest).exists());
        }
        assert!(!dest.exists());
        assert!(!tmp_path(&dest).exists());
    }

    #[test]
    fn commit_replaces_and_clean_removes_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("a.bin");
        write_atomic(&dest, b"one").unwrap();
        write_atomic(&dest, b"two").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        fs::write(dir.path().join(".tmp-b.bin"), b"x").unwrap();
        assert_eq!(clean_temps(dir.path()).unwrap(), 1);
        assert!(dest.exists());
    }
}
