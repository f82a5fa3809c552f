//! Bulk throughput of saving and loading a vgpu-512 context, against memcpy and SHA-256 of
//! the same bytes. Ignored by default (it moves 1.5 GiB); run with
//! `cargo test -p vgpu-sim --release perf -- --ignored --nocapture`.

use std::time::Instant;

use mdev_core::uapi::VFIO_PCI_BAR2_REGION_INDEX;
use mdev_core::{MigState, MigrationDevice, VfioDevice};
use sha2::{Digest, Sha256};

use super::*;
use crate::types::VGPU_512;

/// CPU time of the whole process (all threads), in seconds.
fn cpu_secs() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `clock_gettime` writes one `timespec` we own.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

fn gbps(bytes: usize, secs: f64) -> f64 {
    bytes as f64 / secs / 1e9
}

#[test]
#[ignore]
fn vgpu_512_save_and_load_throughput() {
    let size = VGPU_512.gmem_size as usize;
    let mut d = device_on(VGPU_512, mem());
    let row: Vec<u8> = (0..1 << 20).map(|i: u32| (i * 31 + 7) as u8).collect();
    for off in (0..size).step_by(row.len()) {
        d.region_write(VFIO_PCI_BAR2_REGION_INDEX, off as u64, &row)
            .unwrap();
    }
    let src = d.graphics_memory().bytes().to_vec();
    let mut dst = vec![1u8; size];
    let t = Instant::now();
    dst.copy_from_slice(&src);
    let memcpy = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let digest = Sha256::digest(&dst);
    let sha = t.elapsed().as_secs_f64();
    drop(src);
    drop(dst);

    let s = d.set_mig_state(MigState::StopCopy).unwrap().stream.unwrap();
    let total = d.stop_copy_size().unwrap() as usize;
    let mut stream = vec![1u8; total];
    let t = Instant::now();
    let cpu = cpu_secs();
    let mut n = 0;
    while n < total {
        let k = d
            .read_data(s, &mut stream[n..(n + (1 << 20)).min(total)])
            .unwrap();
        n += k;
    }
    let save = t.elapsed().as_secs_f64();
    let save_cores = (cpu_secs() - cpu) / save;
    assert_eq!(d.read_data(s, &mut [0; 16]).unwrap(), 0);
    d.set_mig_state(MigState::Stop).unwrap();
    drop(d);

    let mut t_dev = device_on(VGPU_512, mem());
    let r = t_dev
        .set_mig_state(MigState::Resuming)
        .unwrap()
        .stream
        .unwrap();
    let t = Instant::now();
    let cpu = cpu_secs();
    for c in stream.chunks(1 << 20) {
        t_dev.write_data(r, c).unwrap();
    }
    t_dev.set_mig_state(MigState::Stop).unwrap();
    let load = t.elapsed().as_secs_f64();
    let load_cores = (cpu_secs() - cpu) / load;
    println!(
        "512 MiB: memcpy {:.2} GB/s, sha256 {:.2} GB/s ({:02x?}..), save {:.2} GB/s ({:.2} of sha, {save_cores:.2} cores busy), load {:.2} GB/s ({:.2} of sha, {load_cores:.2} cores busy)",
        gbps(size, memcpy),
        gbps(size, sha),
        &digest[..2],
        gbps(size, save),
        sha / save,
        gbps(size, load),
        sha / load
    );
}
