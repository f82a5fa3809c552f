use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::*;

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let n = SERIAL.fetch_add(1, Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("vmm-atomic-{tag}-{}-{n}", std::process::id()));
        fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Writes fail with ENOSPC once `left` bytes went through.
struct FailAfter<'a> {
    inner: &'a mut AtomicFile,
    left: usize,
}

impl Write for FailAfter<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        let n = self.inner.write(&buf[..buf.len().min(self.left)])?;
        self.left -= n;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[test]
fn a_committed_file_is_whole_and_no_temporary_file_is_left() {
    let d = TempDir::new("commit");
    let path = d.0.join("snap.vgm");
    fs::write(&path, b"old").unwrap();
    let mut f = AtomicFile::create(&path).unwrap();
    assert!(
        f.temp_path().starts_with(&d.0),
        "the temporary file is beside the final one"
    );
    f.write_all(&[7u8; 300_000]).unwrap();
    assert_eq!(
        fs::read(&path).unwrap(),
        b"old",
        "nothing changes before the commit"
    );
    f.commit().unwrap();
    assert_eq!(fs::read(&path).unwrap(), vec![7u8; 300_000]);
    assert_eq!(names(&d.0), ["snap.vgm"]);
}

#[test]
fn a_writer_that_fails_midway_leaves_no_file_and_the_old_one_intact() {
    for (old, fail_at) in [
        (None, 0usize),
        (None, 5000),
        (Some(&b"old snapshot"[..]), 1 << 20),
    ] {
        let d = TempDir::new("fail");
        let path = d.0.join("snap.vgm");
        if let Some(o) = old {
            fs::write(&path, o).unwrap();
        }
        let mut f = AtomicFile::create(&path).unwrap();
        let r = FailAfter {
            inner: &mut f,
            left: fail_at,
        }
        .write_all(&[1u8; 3 << 20]);
        assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::ENOSPC));
        drop(f);
        match old {
            Some(o) => assert_eq!(fs::read(&path).unwrap(), o, "the old file is intact"),
            None => assert!(!path.exists(), "no file at the final path"),
        }
        let want: Vec<String> = old.iter().map(|_| "snap.vgm".to_string()).collect();
        assert_eq!(names(&d.0), want, "no temporary file is left");
    }
}

#[test]
fn bad_paths_are_refused_with_what_failed() {
    let e = AtomicFile::create(Path::new("/")).unwrap_err();
    assert!(matches!(e, AtomicFileError::NoFileName { .. }), "{e}");
    let e = AtomicFile::create(Path::new("/nonexistent-dir-for-vmm/x.vgm")).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("cannot create /nonexistent-dir-for-vmm/.x.vgm.tmp-"),
        "{e}"
    );
}

/// A tmpfs mounted for one test, unmounted on drop.
struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_disk_that_fills_up_leaves_no_file_and_the_old_one_intact() {
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a 64 KiB tmpfs needs root");
        return;
    }
    let d = TempDir::new("tmpfs");
    let mounted = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=64k", "tmpfs"])
        .arg(&d.0)
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped: cannot mount a tmpfs here (no mount permission in this sandbox)");
        return;
    }
    let _m = Mount(d.0.clone());
    let path = d.0.join("snap.vgm");
    fs::write(&path, b"the old snapshot").unwrap();
    let mut f = AtomicFile::create(&path).unwrap();
    // 256 KiB cannot fit in 64 KiB: the write or the commit's flush fails with ENOSPC.
    let r = f.write_all(&[3u8; 256 << 10]).map_err(|e| e.raw_os_error());
    let e = match r {
        Err(code) => {
            drop(f);
            code
        }
        Ok(()) => match f.commit().unwrap_err() {
            AtomicFileError::Step { source, .. } => source.raw_os_error(),
            other => panic!("{other}"),
        },
    };
    assert_eq!(e, Some(libc::ENOSPC));
    assert_eq!(fs::read(&path).unwrap(), b"the old snapshot");
    assert_eq!(names(&d.0), ["snap.vgm"], "no temporary file is left");
}
