//! Verification: does a run equal a run that never migrated?

use slog::Logger;
use vgpu_platform::VgpuVm;
use vgpu_sim::workload::Params;
use vmm::{StopAt, Vm};

/// Everything a finished run shows the guest: checksum log and final memory digests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fingerprint {
    /// Checksum log.
    pub checksums: Vec<u64>,
    /// SHA-256 of guest RAM; `None` for a guest on a KVM vCPU, whose RAM also holds the
    /// x86 image's stack and heap (their contents depend on where interrupts arrived, so
    /// they differ run to run while the driver's results do not).
    pub ram: Option<[u8; 32]>,
    /// SHA-256 of graphics memory.
    pub gmem: [u8; 32],
}

/// Fingerprint of a VM that finished `frames` frames.
pub fn fingerprint(vm: &mut Vm, frames: u64) -> Fingerprint {
    Fingerprint {
        checksums: vm.checksums(frames),
        ram: (!vm.on_kvm()).then(|| vm.ram_digest()),
        gmem: vm.gmem_digest(),
    }
}

/// Run a reference that never migrates: same type, RAM, parameters, frames.
pub fn reference(
    mdev_type: &str,
    ram_size: u64,
    params: &Params,
    frames: u64,
    log: &Logger,
) -> vmm::Result<Fingerprint> {
    let mut cfg = vgpu_platform::vm_config(mdev_type, log.clone());
    cfg.ram_size = ram_size;
    let mut vm = Vm::new(&cfg)?;
    vm.boot(&Params {
        frame_limit: frames,
        ..*params
    })?;
    vm.run(StopAt::Done)?;
    Ok(fingerprint(&mut vm, frames))
}

/// Compare, and say what differs.
pub fn compare(got: &Fingerprint, want: &Fingerprint) -> (bool, String) {
    let mut diffs = Vec::new();
    if got.checksums != want.checksums {
        let first = got
            .checksums
            .iter()
            .zip(&want.checksums)
            .position(|(a, b)| a != b)
            .unwrap_or(got.checksums.len().min(want.checksums.len()));
        diffs.push(format!("checksum log differs from frame {first}"));
    }
    if let (Some(g), Some(w)) = (got.ram, want.ram) {
        if g != w {
            diffs.push("final guest RAM differs".into());
        }
    }
    if got.gmem != want.gmem {
        diffs.push("final graphics memory differs".into());
    }
    (diffs.is_empty(), diffs.join("; "))
}
