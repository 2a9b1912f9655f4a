//! Files written whole or not at all: [`AtomicFile`] is a temporary file beside its destination
//! (so the final rename stays on one filesystem and is atomic), synced and renamed into place by
//! [`AtomicFile::commit`]; dropped without a commit (an error, a panic), it is removed and the
//! destination is untouched. Every file the workspace writes for a user goes through it.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// A file being written to a temporary sibling of its destination.
#[derive(Debug)]
pub struct AtomicFile {
    tmp: NamedTempFile,
    path: PathBuf,
}

impl AtomicFile {
    /// Starts writing `path`: a temporary file in the same folder (created if missing), named
    /// after it (`.NAME.XXXXXX.tmp`), so a leftover from a killed process is recognisable.
    pub fn create(path: impl AsRef<Path>) -> io::Result<Self> {
        let path = path.as_ref().to_path_buf();
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&dir)?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            .tempfile_in(&dir)?;
        Ok(Self { tmp, path })
    }

    /// The destination.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The temporary file's path, for writers that take a path rather than a handle (they must
    /// write it in place, not replace it).
    pub fn temp_path(&self) -> &Path {
        self.tmp.path()
    }

    /// The temporary file.
    pub fn file_mut(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Syncs the written bytes to disk and renames the file into place.
    pub fn commit(self) -> io::Result<()> {
        self.tmp.as_file().sync_all()?;
        self.tmp.persist(&self.path).map_err(|e| e.error)?;
        Ok(())
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tmp.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.tmp.flush()
    }
}

impl Seek for AtomicFile {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.tmp.seek(pos)
    }
}

/// Writes `bytes` to `path` whole or not at all.
pub fn write_atomically(path: impl AsRef<Path>, bytes: &[u8]) -> io::Result<()> {
    let mut file = AtomicFile::create(path)?;
    file.write_all(bytes)?;
    file.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_commit_replaces_the_file_and_a_drop_leaves_it_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("sub").join("a.json");
        write_atomically(&path, b"first").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"first");
        let mut f = AtomicFile::create(&path).expect("create");
        f.write_all(b"second, unfinished").expect("write");
        drop(f);
        assert_eq!(std::fs::read(&path).expect("read"), b"first");
        let left: Vec<_> = std::fs::read_dir(path.parent().expect("dir"))
            .expect("list")
            .collect();
        assert_eq!(left.len(), 1, "the temporary file is removed: {left:?}");
        write_atomically(&path, b"third").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"third");
    }
}
