//! Shared helpers for the end-to-end tests in `tests/`.

pub mod doubles;
pub mod process;

use slog::{o, Discard, Logger};
use vgpu_platform::VgpuVm;
use vgpu_sim::workload::Params;
use vmm::{StopAt, Vm};

/// A logger that drops everything.
pub fn quiet() -> Logger {
    Logger::root(Discard, o!())
}

/// Small, fast workload parameters for tests.
pub fn small_params(frames: u64, seed: u64) -> Params {
    Params {
        seed,
        width: 320,
        height: 200,
        triangles: 600,
        frame_limit: frames,
        profile: vgpu_sim::workload::Profile::Light,
    }
}

/// The command-line flags of [`small_params`] and [`booted`]'s 64 MiB of RAM.
pub const SMALL_ARGS: [&str; 10] = [
    "--profile",
    "light",
    "--width",
    "320",
    "--height",
    "200",
    "--triangles",
    "600",
    "--ram-mib",
    "64",
];

/// A booted VM of `mdev_type` with the small workload.
pub fn booted(mdev_type: &str, frames: u64, seed: u64, sink_base: u32) -> Vm {
    let mut cfg = vgpu_platform::vm_config(mdev_type, quiet());
    cfg.ram_size = 64 << 20;
    cfg.irq_sink_base = sink_base;
    let mut vm = Vm::new(&cfg).expect("create VM");
    vm.boot(&small_params(frames, seed)).expect("boot");
    vm
}

/// What a finished run shows: checksum log, guest RAM digest, graphics memory digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// Checksum log.
    pub checksums: Vec<u64>,
    /// SHA-256 of guest RAM.
    pub ram: [u8; 32],
    /// SHA-256 of graphics memory.
    pub gmem: [u8; 32],
}

/// Collect the outcome of a VM that finished `frames` frames.
pub fn outcome(vm: &mut Vm, frames: u64) -> Outcome {
    Outcome {
        checksums: vm.checksums(frames),
        ram: vm.ram_digest(),
        gmem: vm.gmem_digest(),
    }
}

/// Run a reference that never stops.
pub fn reference(mdev_type: &str, frames: u64, seed: u64) -> Outcome {
    let mut vm = booted(mdev_type, frames, seed, 100);
    vm.run(StopAt::Done).expect("reference run");
    outcome(&mut vm, frames)
}

/// The check every CLI failure must pass: a non-zero exit that is not a panic's (101), no
/// panic message, and stderr exactly one line `error: ...`. Returns that line; `what`
/// names the run in assertion messages.
pub fn one_error_line<'a>(what: &str, code: Option<i32>, stderr: &'a str) -> &'a str {
    assert!(
        code.is_some_and(|c| c != 0 && c != 101),
        "{what}: exit {code:?}\n{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{what}: {stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{what}: stderr {stderr:?}");
    assert!(lines[0].starts_with("error: "), "{what}: {:?}", lines[0]);
    lines[0]
}
