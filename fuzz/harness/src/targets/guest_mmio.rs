//! Guest MMIO to every BAR and region of the vGPU: BAR0 (registers, MSI-X table and PBA,
//! the GTT window), BAR2 (the aperture onto graphics memory), the config region, and
//! indexes that do not exist, at any offset and width, with engine runs in between.
//!
//! Invariants: no panic; accesses outside a region fail cleanly; at the end (for one input
//! in eight, by length: the check is slow) the device is migratable (its state saved and
//! loaded unchanged).

use mdev_core::uapi::{
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_BAR2_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX,
};
use mdev_core::VfioDevice;
use vgpu_sim::regs::{GTT_WINDOW_OFFSET, MSIX_TABLE_OFFSET};

use crate::device::{assert_migratable, booted, check_migratable, guest_mem};
use crate::Input;

/// Where offsets are drawn near: the register page, the MSI-X table, the GTT window.
pub const BASES: [u64; 4] = [0, MSIX_TABLE_OFFSET, GTT_WINDOW_OFFSET, 0x1000];
/// Access widths.
pub const WIDTHS: [usize; 8] = [4, 8, 1, 2, 3, 16, 0, 64];

/// The fuzz target's body.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    let (mut d, _sink) = booted(guest_mem());
    let mut steps = 0;
    while !i.is_empty() && steps < 512 {
        steps += 1;
        let sel = i.u8();
        let index = match sel % 8 {
            0..=3 => VFIO_PCI_BAR0_REGION_INDEX,
            4 | 5 => VFIO_PCI_BAR2_REGION_INDEX,
            6 => VFIO_PCI_CONFIG_REGION_INDEX,
            _ => u32::from(i.u8()),
        };
        let size = d.region_info(index).map(|r| r.size()).unwrap_or(1 << 20);
        let off = match (sel >> 3) % 4 {
            0 => i.pick(&BASES) + u64::from(i.u16()),
            1 => i.u64() % size.max(1),
            2 => i.u64(),
            _ => size.saturating_sub(u64::from(i.u8())),
        };
        let width = i.pick(&WIDTHS);
        if sel & 0x20 == 0 {
            let _ = d.region_write(index, off, i.bytes(width));
        } else {
            let mut b = vec![0u8; width];
            let _ = d.region_read(index, off, &mut b);
        }
        if sel & 0x40 != 0 {
            d.run(usize::from(i.u8() % 32));
        }
    }
    if check_migratable(data.len()) {
        assert_migratable(&mut d);
    }
}
