//! Snapshot files that appear whole or not at all.
//!
//! A snapshot is written to a temporary name in the directory of its final path, flushed
//! and `fsync`ed, and only then renamed over the final path (and the directory `fsync`ed,
//! so that the rename itself survives a crash). A save that fails half way (a full disk,
//! a device error, a killed process) leaves no file at the final path, and an older file
//! there untouched: the temporary file is removed when the [`AtomicFile`] is dropped
//! without [`AtomicFile::commit`], and a process killed before it could remove it leaves
//! only a `.NAME.tmp-PID-N` file, which never restores by the final name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use snafu::{ResultExt, Snafu};

/// What failed while writing a snapshot file; the final path is left as it was.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub))]
pub enum AtomicFileError {
    /// The path has no file name (it names a directory or is empty).
    #[snafu(display("{} does not name a file", path.display()))]
    NoFileName {
        /// The path.
        path: PathBuf,
    },
    /// A step on the temporary file or the rename failed.
    #[snafu(display("cannot {step} {}: {source}", path.display()))]
    Step {
        /// The step: "create", "write", "fsync", "rename into place", "fsync the directory of".
        step: &'static str,
        /// The file (or directory) the step was on.
        path: PathBuf,
        /// The cause.
        source: io::Error,
    },
}

/// Temporary files made by this process, to keep their names unique.
static SERIAL: AtomicU64 = AtomicU64::new(0);

/// A file being written under a temporary name, renamed to its final path by
/// [`AtomicFile::commit`] and removed if dropped before.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    tmp: PathBuf,
    out: Option<BufWriter<File>>,
}

impl AtomicFile {
    /// Create the temporary file beside `path` (same directory, so the rename cannot cross
    /// file systems). Nothing at `path` changes until [`commit`](Self::commit).
    pub fn create(path: &Path) -> Result<Self, AtomicFileError> {
        let name = path
            .file_name()
            .ok_or_else(|| AtomicFileError::NoFileName {
                path: path.to_path_buf(),
            })?;
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp-{}-{n}", std::process::id()));
        let tmp = path.with_file_name(tmp_name);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .context(StepSnafu {
                step: "create",
                path: &tmp,
            })?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            out: Some(BufWriter::with_capacity(1 << 20, file)),
        })
    }

    /// The temporary file's path (where the bytes are until the commit).
    pub fn temp_path(&self) -> &Path {
        &self.tmp
    }

    /// Flush, `fsync`, rename over the final path, `fsync` the directory. On an error the
    /// temporary file is removed and the final path is as it was.
    pub fn commit(mut self) -> Result<(), AtomicFileError> {
        let out = self.out.take().ok_or_else(|| AtomicFileError::Step {
            step: "write",
            path: self.tmp.clone(),
            source: io::Error::other("already committed"),
        })?;
        let file = out.into_inner().map_err(|e| AtomicFileError::Step {
            step: "write",
            path: self.tmp.clone(),
            source: e.into_error(),
        })?;
        let tmp = &self.tmp;
        file.sync_all().context(StepSnafu {
            step: "fsync",
            path: tmp,
        })?;
        drop(file);
        fs::rename(tmp, &self.path).context(StepSnafu {
            step: "rename into place",
            path: &self.path,
        })?;
        // Renamed: nothing left to remove.
        self.tmp = PathBuf::new();
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .context(StepSnafu {
                step: "fsync the directory of",
                path: &self.path,
            })
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self.out.as_mut() {
            Some(o) => o.write(buf),
            None => Err(io::Error::other("the snapshot file is already committed")),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.out.as_mut().map_or(Ok(()), |o| o.flush())
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        // Not committed (or the commit failed before the rename): the partial file goes.
        drop(self.out.take());
        if !self.tmp.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

#[cfg(test)]
mod tests;
