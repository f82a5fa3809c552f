//! Snapshot files are written atomically: a save that fails half way (here a writer that
//! reports a full disk after N bytes, at every stage of the stream) leaves no file at the
//! final path and an older snapshot there intact, and no temporary file behind; a save
//! that completes restores. The device is `serial-sim`, driven by the same VMM code as
//! the vGPU.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serial_sim::compose::{self, SerialFactory, DEVICE_TYPE};
use slog::{o, Discard, Logger};
use vmm::snapshot::{self, SaveFileError};
use vmm::{StopAt, Vm, VmConfig};

fn config() -> VmConfig {
    let mut cfg = VmConfig::new(
        DEVICE_TYPE,
        Arc::new(SerialFactory::default()),
        Logger::root(Discard, o!()),
    );
    cfg.ram_size = 4 << 20;
    cfg
}

fn stopped_vm() -> Vm {
    let mut vm = Vm::new(&config()).expect("create VM");
    compose::boot(&mut vm, 7, 3000, 0x45).expect("boot");
    vm.run(StopAt::Command(1234)).expect("run");
    vm
}

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn temp_dir(tag: &str) -> TempDir {
    let p = std::env::temp_dir().join(format!("vmm-snapfile-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&p);
    std::fs::create_dir_all(&p).unwrap();
    TempDir(p)
}

fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_save_that_fails_at_any_point_leaves_no_file_and_the_old_one_intact() {
    let d = temp_dir("fail");
    let path = d.0.join("snap.vgm");
    // The whole snapshot, to know its size and to have a good one to compare.
    let mut vm = stopped_vm();
    let total = snapshot::save_file(&mut vm, &path, false).expect("save");
    let good = std::fs::read(&path).unwrap();
    assert_eq!(good.len() as u64, total);
    // Into a directory without that file, and over the good one: fail at the header, in
    // RAM, in the device data, in the trailer, one byte short.
    for old in [true, false] {
        if !old {
            std::fs::remove_file(&path).unwrap();
        }
        for at in [0, 20, total / 3, total / 2, total - 48, total - 1] {
            let mut vm = stopped_vm();
            let e = snapshot::save_file_failing_after(&mut vm, &path, false, Some(at))
                .expect_err("the injected full disk");
            assert!(matches!(e, SaveFileError::Save { .. }), "{e}");
            assert!(e.to_string().contains("No space left"), "{e}");
            if old {
                assert!(
                    std::fs::read(&path).unwrap() == good,
                    "the old file changed"
                );
                assert_eq!(entries(&d.0), ["snap.vgm"], "a temporary file is left");
            } else {
                assert!(
                    !path.exists(),
                    "a partial file at the final path (failed at {at})"
                );
                assert!(entries(&d.0).is_empty(), "a temporary file is left");
            }
        }
    }
    // A save that completes restores and goes on.
    snapshot::save_file(&mut stopped_vm(), &path, false).expect("save");
    let f = std::fs::File::open(&path).unwrap();
    let mut vm = snapshot::restore_with(std::io::BufReader::new(f), &config()).expect("restore");
    vm.run(StopAt::Done).expect("runs to the end");
}
