//! `dump` onto a disk that fills up: the command fails with one line naming the cause,
//! no file restores by the final name, an older snapshot there stays intact, and no
//! temporary file is left (the snapshot is written to a temporary name and renamed only
//! when complete). Needs root to mount a 256 KiB tmpfs; skips with the reason otherwise.

use std::path::PathBuf;
use std::process::Command;

use vgpu_migrate_tests::process::Proc;
use vgpu_migrate_tests::SMALL_ARGS;

struct Mounted(PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn a_dump_onto_a_full_disk_leaves_the_old_snapshot_and_nothing_else() {
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: mounting a tmpfs needs root");
        return;
    }
    let dir = std::env::temp_dir().join(format!("vgpu-dump-full-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ok = Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=256k", "tmpfs"])
        .arg(&dir)
        .status()
        .is_ok_and(|s| s.success());
    let _m = Mounted(dir.clone());
    if !ok {
        eprintln!("skipped: cannot mount a tmpfs here");
        return;
    }
    let snap = dir.join("snap.vgm");
    std::fs::write(&snap, b"the old snapshot").unwrap();
    let out_s = snap.to_str().unwrap().to_string();
    let mut args = vec![
        "dump", "--type", "vgpu-64", "--frames", "1", "--out", &out_s,
    ];
    args.extend(SMALL_ARGS);
    let out = Proc::start("dump", &args).wait();
    let line = out.one_error_line().to_string();
    assert!(line.contains("No space left on device"), "{line}");
    assert_eq!(std::fs::read(&snap).unwrap(), b"the old snapshot");
    let names: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["snap.vgm"], "a temporary file is left");
}
