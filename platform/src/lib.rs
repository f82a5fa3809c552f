//! The composition: the VMM (`vmm`, which knows devices only through the VFIO contract)
//! with the simulated vGPU (`vgpu-sim`) and its guest driver (`vgpu-guest`), on the
//! platform layout the driver expects. The `vgpu-migrate` tool and the end-to-end tests
//! build their VMs here; nothing in `vmm` names the vGPU.
//!
//! * [`VgpuFactory`]: builds the device (a [`SharedVgpu`]), its engine as the platform's
//!   [`SimHardware`], the driver as the simulated vCPU's [`GuestProgram`], and the same
//!   driver as a bootable x86-64 [`DriverImage`] for a KVM vCPU.
//! * [`VgpuVm`]: the host-side workload operations on a [`Vm`] (loader, frame limit,
//!   checksum log, display, graphics-memory digest), done through guest-physical accesses
//!   and region reads, as a VMM's management tools would.

#![deny(missing_docs)]

mod guest;
mod hardware;
pub mod idle;
mod image;
pub mod parent;
pub mod remote;
mod workload;

use std::io::Read;
use std::sync::{Arc, Mutex};

use slog::Logger;
use vgpu_sim::workload::layout::{BAR0_GPA, BAR2_GPA, ECAM_GPA, MIN_GUEST_RAM, MMIO_HOLE_START};
use vgpu_sim::{DirtyTracking, SharedVgpu, Vgpu, VgpuConfig, VgpuType};
use vmm::memory::GuestMem;
use vmm::{MachineParts, PlatformLayout, SimHardware, Vm, VmConfig, VmFactory};

pub use guest::DriverProgram;
pub use hardware::VgpuHardware;
pub use idle::{device_digest, IdleFactory};
pub use image::DriverImage;
pub use parent::{available_instances, InstanceLease, ParentFactory, SharedParent};
pub use remote::{device_factory, RemoteFactory, RemoteHardware};
pub use workload::VgpuVm;

/// Builds vGPU VMs: the device with the given DMA tracking and migration features, its
/// engine, the driver.
#[derive(Debug, Clone, Copy)]
pub struct VgpuFactory {
    /// How the device tracks its DMA writes for migration.
    pub tracking: DirtyTracking,
    /// The v2 migration features the device offers (`VFIO_MIGRATION_*`).
    pub migration_features: u32,
    /// How strictly the v1 region checks the VMM's access sequence.
    pub v1_checks: state_region::V1Checks,
    /// Fault in each device's first resume staging when it is built (a migration target
    /// made ahead of the stream; see `VgpuConfig::prefault_staging`).
    pub prefault_staging: bool,
}

impl Default for VgpuFactory {
    fn default() -> Self {
        Self {
            tracking: DirtyTracking::default(),
            migration_features: vgpu_sim::device::MIGRATION_FEATURES,
            v1_checks: state_region::V1Checks::Strict,
            prefault_staging: false,
        }
    }
}

/// Parse a feature set as `--migration-features` takes it: a comma-separated list of
/// `stop-copy`, `p2p`, `pre-copy` (STOP_COPY is mandatory, as in the uAPI).
pub fn parse_migration_features(s: &str) -> Result<u32, String> {
    use vfio_bindings::bindings::vfio::{
        VFIO_MIGRATION_P2P, VFIO_MIGRATION_PRE_COPY, VFIO_MIGRATION_STOP_COPY,
    };
    let mut bits = 0;
    for name in s.split(',').map(str::trim) {
        bits |= match name {
            "stop-copy" => VFIO_MIGRATION_STOP_COPY,
            "p2p" => VFIO_MIGRATION_P2P,
            "pre-copy" => VFIO_MIGRATION_PRE_COPY,
            other => {
                return Err(format!(
                    "'{other}' is not a migration feature (stop-copy, p2p, pre-copy)"
                ))
            }
        };
    }
    if bits & VFIO_MIGRATION_STOP_COPY == 0 {
        return Err(format!(
            "'{s}' lacks stop-copy, which every migratable device offers"
        ));
    }
    Ok(bits)
}

/// The layout the vGPU's guest driver expects.
pub fn layout() -> PlatformLayout {
    PlatformLayout {
        mmio_hole_start: MMIO_HOLE_START,
        min_ram: MIN_GUEST_RAM,
        ecam_gpa: ECAM_GPA,
        bar_gpas: vec![(0, BAR0_GPA), (2, BAR2_GPA)],
    }
}

impl VmFactory for VgpuFactory {
    fn layout(&self) -> PlatformLayout {
        layout()
    }

    fn parts(
        &self,
        device_type: &str,
        mem: &GuestMem,
        log: &Logger,
    ) -> Result<MachineParts, Box<dyn std::error::Error + Send + Sync>> {
        let ty = VgpuType::by_name(device_type)?;
        let mut cfg = VgpuConfig::new(ty, mem.clone());
        cfg.dirty_tracking = self.tracking;
        cfg.migration_features = self.migration_features;
        cfg.v1_checks = self.v1_checks;
        cfg.prefault_staging = self.prefault_staging;
        cfg.logger = log.clone();
        let dev = SharedVgpu::new(Vgpu::new(cfg)?);
        let hardware = VgpuHardware::new(dev.handle());
        Ok(MachineParts {
            device: Box::new(dev),
            hardware: Box::new(hardware),
            guest: Box::new(DriverProgram),
            image: Some(Arc::new(DriverImage)),
        })
    }
}

/// A factory for vGPU VMs with `tracking`.
pub fn factory(tracking: DirtyTracking) -> Arc<dyn VmFactory> {
    Arc::new(VgpuFactory {
        tracking,
        ..VgpuFactory::default()
    })
}

/// A factory for vGPU VMs with `tracking` whose devices offer `migration_features`.
pub fn factory_with(tracking: DirtyTracking, migration_features: u32) -> Arc<dyn VmFactory> {
    Arc::new(VgpuFactory {
        tracking,
        migration_features,
        ..VgpuFactory::default()
    })
}

/// [`factory_with`], with the v1 region's checks (`V1Checks::Lenient` accepts the
/// out-of-order v1 steps the strict default refuses; see docs/UAPI.md).
pub fn factory_checked(
    tracking: DirtyTracking,
    migration_features: u32,
    v1_checks: state_region::V1Checks,
) -> Arc<dyn VmFactory> {
    Arc::new(checked(tracking, migration_features, v1_checks))
}

/// The factory of a migration target made ahead of the stream: [`factory_checked`]'s
/// devices, each with its first resume's staging faulted in when it is built.
pub fn target_factory(
    tracking: DirtyTracking,
    migration_features: u32,
    v1_checks: state_region::V1Checks,
) -> Arc<dyn VmFactory> {
    Arc::new(VgpuFactory {
        prefault_staging: true,
        ..checked(tracking, migration_features, v1_checks)
    })
}

fn checked(
    tracking: DirtyTracking,
    migration_features: u32,
    v1_checks: state_region::V1Checks,
) -> VgpuFactory {
    VgpuFactory {
        tracking,
        migration_features,
        v1_checks,
        prefault_staging: false,
    }
}

/// A VM config for a vGPU of `mdev_type` with precise (shadow page table) DMA tracking and
/// the VMM's defaults.
pub fn vm_config(mdev_type: &str, log: Logger) -> VmConfig {
    VmConfig::new(mdev_type, factory(DirtyTracking::ShadowPt), log)
}

/// Restore a snapshot stream into a fresh vGPU VM with `tracking`, its interrupt sinks
/// numbered from `sink_base`.
pub fn restore<R: Read>(
    input: R,
    log: &Logger,
    tracking: DirtyTracking,
    sink_base: u32,
) -> vmm::Result<Vm> {
    let mut cfg = VmConfig::new("", factory(tracking), log.clone());
    cfg.irq_sink_base = sink_base;
    vmm::snapshot::restore_with(input, &cfg)
}

/// The device behind a vGPU VM, for test hooks and tools that need its internals (never
/// used by the VMM). `None` for a VM that another factory built.
pub fn vgpu_of(vm: &mut Vm) -> Option<Arc<Mutex<Vgpu>>> {
    let hw: &mut dyn SimHardware = vm.hardware();
    hw.as_any()
        .downcast_mut::<VgpuHardware>()
        .map(|h| h.handle())
}

/// The device's own config space state (its model, including device-owned bits), for
/// tests that compare source and target devices. `None` for a VM another factory built.
pub fn device_config_state(vm: &mut Vm) -> Option<pci_config_replay::ConfigSpaceState> {
    let dev = vgpu_of(vm)?;
    let state = vgpu_sim::device::shared::lock(&dev).config().state();
    Some(state)
}
