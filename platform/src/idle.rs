//! The idle workload: a VM whose guest runs no device workload at all.
//!
//! [`IdleFactory`] takes another factory's device, hardware and layout (the vGPU's, the
//! serial device's, or through [`crate::RemoteFactory`] a device in another process) and
//! gives the VM a guest that does nothing: the firmware places the BARs, and the guest is
//! idle from its first step. It is how `vgpu-migrate migrate --workload idle` moves a device
//! that is not a vGPU (or a vGPU nobody drives): the VMM migrates guest RAM, config space
//! and the device's state through the VFIO contract like any other.
//!
//! With no workload there is no checksum log to compare, so an idle migration is verified
//! on the device itself: [`device_digest`] is SHA-256 over a full save of the device's state
//! (stop-and-copy from a stopped device). The source takes it of its stopped device after
//! the handover, the target of its device once it resumed; an idle device does not change,
//! so the two are equal exactly when the target's device holds what the source's held.

use std::io::Write;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use slog::Logger;
use vmm::memory::GuestMem;
use vmm::{GuestBus, GuestProgram, GuestStep, MachineParts, PlatformLayout, Vm, VmFactory};

/// Builds VMs with `inner`'s device and layout and a guest that stays idle.
#[derive(Debug, Clone)]
pub struct IdleFactory {
    /// The factory whose device, hardware and layout the VM uses (its guest is not).
    pub inner: Arc<dyn VmFactory>,
}

impl IdleFactory {
    /// `inner`'s VMs, with an idle guest.
    pub fn new(inner: Arc<dyn VmFactory>) -> Self {
        Self { inner }
    }
}

impl VmFactory for IdleFactory {
    fn layout(&self) -> PlatformLayout {
        self.inner.layout()
    }

    fn parts(
        &self,
        device_type: &str,
        mem: &GuestMem,
        log: &Logger,
    ) -> Result<MachineParts, Box<dyn std::error::Error + Send + Sync>> {
        let parts = self.inner.parts(device_type, mem, log)?;
        Ok(MachineParts {
            guest: Box::new(IdleGuest),
            image: None,
            ..parts
        })
    }

    fn shared_memory(&self) -> bool {
        self.inner.shared_memory()
    }
}

/// A guest that is idle from its first step and never touches the device.
#[derive(Debug, Clone, Copy, Default)]
pub struct IdleGuest;

impl GuestProgram for IdleGuest {
    fn step(&mut self, _bus: &mut dyn GuestBus) -> GuestStep {
        GuestStep::Done
    }

    fn interrupt(&mut self, _bus: &mut dyn GuestBus, _vector: u32) {}

    fn progress(&mut self, _bus: &mut dyn GuestBus) -> u64 {
        0
    }
}

/// SHA-256 of a full save of `vm`'s device state, in hex: the device is stopped first
/// (ending a session a migration left open), then saved whole; it is left in STOP_COPY
/// (put it back with `vmm::snapshot::resume_source` where it may run again).
pub fn device_digest(vm: &mut Vm) -> vmm::Result<String> {
    let mut hasher = HashWriter(Sha256::new());
    vmm::snapshot::SnapshotDevice::of(vm)?.stop(vm)?;
    vmm::snapshot::save_device_only(vm, &mut hasher)?;
    Ok(state_region::format::hex(&hasher.0.finalize()))
}

/// A `Write` that only hashes.
struct HashWriter(Sha256);

impl Write for HashWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::VgpuFactory;

    fn idle_vm(log: &Logger) -> Vm {
        let mut cfg = crate::vm_config("vgpu-64", log.clone());
        cfg.ram_size = 64 << 20;
        cfg.factory = Arc::new(IdleFactory::new(Arc::new(VgpuFactory::default())));
        let mut vm = Vm::new(&cfg).unwrap();
        vm.firmware().unwrap();
        vm
    }

    #[test]
    fn the_idle_guest_is_done_at_once_and_leaves_the_device_alone() {
        let log = Logger::root(slog::Discard, slog::o!());
        let mut vm = idle_vm(&log);
        let before = device_digest(&mut vm).unwrap();
        vmm::snapshot::resume_source(&mut vm).unwrap();
        vm.run(vmm::StopAt::Done).unwrap();
        assert_eq!(vm.completed_frames(), 0);
        let after = device_digest(&mut vm).unwrap();
        assert_eq!(before, after, "an idle guest changed its device");
        assert_eq!(before.len(), 64);
    }

    #[test]
    fn the_digest_sees_a_changed_device() {
        let log = Logger::root(slog::Discard, slog::o!());
        let mut vm = idle_vm(&log);
        let before = device_digest(&mut vm).unwrap();
        vmm::snapshot::resume_source(&mut vm).unwrap();
        // A scratch register of BAR0 (any register the device saves would do).
        vm.device()
            .region_write(
                vfio_bindings::bindings::vfio::VFIO_PCI_BAR0_REGION_INDEX,
                u64::from(vgpu_sim::regs::REG_SCRATCH0),
                &0xdead_beefu32.to_le_bytes(),
            )
            .unwrap();
        let after = device_digest(&mut vm).unwrap();
        assert_ne!(before, after);
    }
}
