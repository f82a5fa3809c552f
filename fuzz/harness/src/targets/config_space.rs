//! Guest writes to the vGPU's config space (`pci-config-replay`'s `ConfigSpace` behind the
//! device's config region, and the MSI-X table in BAR0), and the saved config space parser
//! (`ConfigSpaceState::from_bytes`, which a restore applies to the stream's CONFIG record).
//!
//! First byte 0xff: the rest is a saved config state. Otherwise the rest is a sequence of
//! accesses (offset, width, value) to the config region or the MSI-X table.
//!
//! Invariants: no panic; the identity (vendor, device, revision, class, header type,
//! subsystem) and the capability pointer never change whatever the guest writes; every
//! in-range access of width 1, 2 or 4 succeeds; a state that parses re-encodes to one that
//! parses back equal; the device's own state always round-trips; at the end (for one
//! input in eight, by length: the check is slow) the device is migratable.

use mdev_core::uapi::{VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX};
use mdev_core::VfioDevice;
use pci_config_replay::ConfigSpaceState;
use vgpu_sim::regs::MSIX_TABLE_OFFSET;

use crate::device::{assert_migratable, booted, check_migratable, guest_mem};
use crate::Input;

/// Bytes of config space that no guest write may change: IDs, revision and class, header
/// type, subsystem IDs, capability pointer.
pub const READ_ONLY: [(u64, usize); 5] = [(0x00, 4), (0x08, 4), (0x0e, 1), (0x2c, 4), (0x34, 1)];
/// Config space size.
pub const CONFIG_SIZE: u64 = 4096;

fn identity(d: &mut vgpu_sim::Vgpu) -> Vec<u8> {
    let mut out = Vec::new();
    for (off, len) in READ_ONLY {
        let mut b = vec![0u8; len];
        d.region_read(VFIO_PCI_CONFIG_REGION_INDEX, off, &mut b)
            .expect("an in-range config read");
        out.extend(b);
    }
    out
}

/// The fuzz target's body.
pub fn run(data: &[u8]) {
    let mut i = Input::new(data);
    if data.first() == Some(&0xff) {
        i.u8();
        if let Ok(state) = ConfigSpaceState::from_bytes(i.rest()) {
            let again = ConfigSpaceState::from_bytes(&state.to_bytes()).expect("re-encoded");
            assert_eq!(again, state, "config state changed through its encoding");
        }
        return;
    }
    let (mut d, _sink) = booted(guest_mem());
    let id = identity(&mut d);
    let mut steps = 0;
    while !i.is_empty() && steps < 512 {
        steps += 1;
        let sel = i.u8();
        let width = [1usize, 2, 4, 3, 8, 0][usize::from(sel >> 2) % 6];
        let (index, off) = if sel & 1 == 0 {
            (
                VFIO_PCI_CONFIG_REGION_INDEX,
                u64::from(i.u16()) % (CONFIG_SIZE + 8),
            )
        } else {
            (
                VFIO_PCI_BAR0_REGION_INDEX,
                MSIX_TABLE_OFFSET + u64::from(i.u8() % 0x20),
            )
        };
        let in_range = off + width as u64 <= CONFIG_SIZE && matches!(width, 1 | 2 | 4);
        let aligned = off % width.max(1) as u64 == 0;
        if sel & 2 == 0 {
            let r = d.region_write(index, off, i.bytes(width));
            if index == VFIO_PCI_CONFIG_REGION_INDEX && in_range && aligned && r.is_err() {
                panic!("an aligned {width}-byte config write at {off:#x} failed: {r:?}");
            }
        } else {
            let mut b = vec![0u8; width];
            let r = d.region_read(index, off, &mut b);
            if index == VFIO_PCI_CONFIG_REGION_INDEX && in_range && aligned && r.is_err() {
                panic!("an aligned {width}-byte config read at {off:#x} failed: {r:?}");
            }
        }
        d.run(1);
    }
    assert_eq!(
        identity(&mut d),
        id,
        "a guest write changed a read-only config byte"
    );
    let state = d.config().state();
    let again = ConfigSpaceState::from_bytes(&state.to_bytes()).expect("own state parses");
    assert_eq!(
        again, state,
        "the device's config state does not round-trip"
    );
    if check_migratable(data.len()) {
        assert_migratable(&mut d);
    }
}
