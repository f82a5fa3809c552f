//! The workload driver as a bootable x86-64 image (`guest-image`), for a KVM vCPU.

use vgpu_guest::x86;
use vmm::kvm::BootSpec;
use vmm::memory::{self, GuestMem};
use vmm::{GuestImage, GuestSignal};

/// The freestanding x86-64 build of the same driver the simulated vCPU runs, with the
/// memory contract of `vgpu_guest::x86`.
#[derive(Debug, Clone, Copy, Default)]
pub struct DriverImage;

impl GuestImage for DriverImage {
    fn load(&self, mem: &GuestMem) -> Result<BootSpec, Box<dyn std::error::Error + Send + Sync>> {
        if memory::size(mem) < x86::MIN_RAM {
            return Err(format!(
                "the x86 guest image needs at least {} MiB of guest RAM",
                x86::MIN_RAM >> 20
            )
            .into());
        }
        let loaded = guest_image::load(guest_image::GUEST_ELF, &mut |gpa, data| {
            memory::write(mem, gpa, data).map_err(|e| e.into())
        })?;
        Ok(BootSpec {
            tables_gpa: x86::BOOT_AREA_START,
            entry: loaded.entry,
            stack_top: x86::STACK_TOP,
        })
    }

    fn port_write(&self, port: u16, value: u32) -> GuestSignal {
        if port != x86::STATUS_PORT {
            return GuestSignal::Ignore;
        }
        match value {
            x86::STATUS_DONE => GuestSignal::Done,
            x86::STATUS_FAILED => GuestSignal::Failed(
                "the guest driver gave up: no parameters or an unexpected device".into(),
            ),
            x86::STATUS_PANIC => GuestSignal::Failed("the guest image panicked".into()),
            v if v >= x86::STATUS_EXCEPTION_BASE => GuestSignal::Failed(format!(
                "the guest took CPU exception {}",
                v - x86::STATUS_EXCEPTION_BASE
            )),
            v => GuestSignal::Failed(format!("the guest wrote unknown status {v:#x}")),
        }
    }
}
