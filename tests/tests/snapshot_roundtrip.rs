//! VM level: `run N` equals `dump K` + `restore` + continue to N, bit for bit.

use vgpu_migrate_tests::{booted, outcome, quiet, reference};
use vmm::StopAt;

fn dump_and_restore(frames: u64, k: u64, extra_cmds: u64, seed: u64) {
    let want = reference("vgpu-64", frames, seed);
    assert_eq!(want.checksums.len() as u64, frames);
    assert!(want.checksums.iter().all(|c| *c != 0), "every frame logged");

    let mut src = booted("vgpu-64", frames, seed, 100);
    src.run(StopAt::Frame(k)).unwrap();
    if extra_cmds > 0 {
        let c = src.command_count() + extra_cmds;
        src.run(StopAt::Command(c)).unwrap();
    }
    let mut snap = Vec::new();
    vmm::snapshot::save(&mut src, &mut snap).unwrap();
    drop(src);

    let mut dst = vgpu_platform::restore(&snap[..], &quiet(), Default::default(), 300).unwrap();
    dst.run(StopAt::Done).unwrap();
    let got = outcome(&mut dst, frames);
    assert_eq!(
        got.checksums, want.checksums,
        "checksum log, K={k} +{extra_cmds}"
    );
    assert_eq!(got.ram, want.ram, "guest RAM digest, K={k} +{extra_cmds}");
    assert_eq!(
        got.gmem, want.gmem,
        "graphics memory digest, K={k} +{extra_cmds}"
    );
}

#[test]
fn restore_between_frames() {
    dump_and_restore(6, 2, 0, 7);
}

#[test]
fn restore_mid_batch_at_several_points() {
    for extra in [1, 3, 7, 11] {
        dump_and_restore(5, 2, extra, 11);
    }
}

#[test]
fn restore_right_after_boot_and_near_the_end() {
    dump_and_restore(4, 0, 2, 3);
    dump_and_restore(4, 3, 5, 3);
}

#[test]
fn same_seed_same_checksums_other_seed_other_checksums() {
    let a = reference("vgpu-64", 3, 5);
    let b = reference("vgpu-64", 3, 5);
    let c = reference("vgpu-64", 3, 6);
    assert_eq!(a, b);
    assert_ne!(a.checksums, c.checksums);
}
