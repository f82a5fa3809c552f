//! `factory_checked` reaches the device: the v1 region of a vGPU built with
//! `V1Checks::Lenient` accepts a `data_size` read before `data_offset` (staging the chunk as
//! `data_offset` would), which the strict default refuses.

use slog::{o, Discard, Logger};
use state_region::{driver as v1, V1Checks, MIGRATION_REGION_TYPE};
use vfio_bindings::bindings::vfio::{vfio_device_migration_info, VFIO_DEVICE_STATE_V1_SAVING};
use vgpu_sim::DirtyTracking;
use vmm::Vm;

fn vm(checks: V1Checks) -> Vm {
    let mut cfg = vgpu_platform::vm_config("vgpu-64", Logger::root(Discard, o!()));
    cfg.ram_size = 64 << 20;
    cfg.factory = vgpu_platform::factory_checked(
        DirtyTracking::ShadowPt,
        vgpu_sim::device::MIGRATION_FEATURES,
        checks,
    );
    Vm::new(&cfg).unwrap()
}

/// Stop the device for saving and read `data_size` first: Ok(size) or the refusal.
fn data_size_first(checks: V1Checks) -> Result<u64, String> {
    let mut vm = vm(checks);
    let dev = vm.device();
    let index = dev.find_region(MIGRATION_REGION_TYPE).unwrap();
    v1::set_device_state(dev, index, VFIO_DEVICE_STATE_V1_SAVING).unwrap();
    assert!(v1::read_pending(dev, index).unwrap() > 0);
    let at = std::mem::offset_of!(vfio_device_migration_info, data_size) as u64;
    let off = dev.region_info(index).unwrap().info.offset;
    let mut b = [0u8; 8];
    dev.region_read(index, at, &mut b)
        .map(|()| u64::from_ne_bytes(b))
        .map_err(|e| format!("{e} (region at {off:#x})"))
}

#[test]
fn lenient_v1_checks_reach_the_device() {
    let e = data_size_first(V1Checks::Strict).unwrap_err();
    assert!(e.contains("data_offset"), "{e}");
    let n = data_size_first(V1Checks::Lenient).unwrap();
    assert!(n > 0, "the first chunk was staged and its size read");
}
