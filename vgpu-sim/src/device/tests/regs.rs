//! Register semantics, bad guest accesses, GTT window and aperture.

use mdev_core::uapi::*;
use mdev_core::{MigrationDevice, VfioDevice};
use shadow_pt::{PTE_ADDR_MASK, PTE_PRESENT, PTE_WRITABLE};

use super::*;
use crate::device::mmio::REG_VERSION_VALUE;
use crate::device::regfile::RING_OFFSET_MASK;

#[test]
fn gtt_bits_match_shadow_pt() {
    assert_eq!(GTT_PRESENT, PTE_PRESENT);
    assert_eq!(GTT_WRITABLE, PTE_WRITABLE);
    assert_eq!(GTT_ADDR_MASK, PTE_ADDR_MASK);
    assert_eq!(PAGE_SIZE, shadow_pt::PAGE_SIZE);
}

#[test]
fn identification_registers_are_read_only() {
    let mut d = device();
    assert_eq!(rd(&mut d, REG_ID), ID_VALUE);
    assert_eq!(rd(&mut d, REG_VERSION), REG_VERSION_VALUE);
    assert_eq!(rd(&mut d, REG_GMEM_SIZE_LO), 64 << 20);
    assert_eq!(rd(&mut d, REG_GMEM_SIZE_HI), 0);
    assert_eq!(rd(&mut d, REG_GTT_ENTRIES), GTT_ENTRIES as u32);
    wr(&mut d, REG_ID, 0);
    wr(&mut d, REG_SEQNO, 7);
    wr(&mut d, REG_FLIP_COUNT, 7);
    assert_eq!(rd(&mut d, REG_ID), ID_VALUE);
    assert_eq!(rd(&mut d, REG_SEQNO), 0);
    assert_eq!(rd(&mut d, REG_FLIP_COUNT), 0);
}

#[test]
fn scratch_and_masks() {
    let mut d = device();
    for i in 0..SCRATCH_COUNT {
        wr(&mut d, REG_SCRATCH0 + 4 * i, 0xdead_0000 | i);
    }
    for i in 0..SCRATCH_COUNT {
        assert_eq!(rd(&mut d, REG_SCRATCH0 + 4 * i), 0xdead_0000 | i);
    }
    assert_eq!(rd(&mut d, REG_IMR), INT_ALL, "power-on: everything masked");
    wr(&mut d, REG_IMR, u32::MAX);
    assert_eq!(rd(&mut d, REG_IMR), INT_ALL);
    wr(&mut d, REG_DSP_CTL, u32::MAX);
    assert_eq!(rd(&mut d, REG_DSP_CTL), DSP_CTL_ENABLE);
    wr(&mut d, REG_RING_TAIL, u32::MAX);
    assert_eq!(rd(&mut d, REG_RING_TAIL), RING_OFFSET_MASK);
}

#[test]
fn unknown_offsets_and_bad_widths_are_ignored() {
    let mut d = device();
    let before = d.state();
    // Unknown register, inside and outside the register file.
    wr(&mut d, 0x0500, 1);
    assert_eq!(rd(&mut d, 0x0500), 0);
    let mut b = [0xffu8; 4];
    d.region_read(VFIO_PCI_BAR0_REGION_INDEX, 0x20_0000, &mut b)
        .unwrap();
    assert_eq!(b, [0; 4]);
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, 0x20_0000, &[1; 4])
        .unwrap();
    // Wrong widths and alignments.
    for (off, len) in [
        (REG_SCRATCH0 as u64, 2usize),
        (REG_SCRATCH0 as u64 + 1, 4),
        (REG_SCRATCH0 as u64, 8),
        (REG_SCRATCH0 as u64, 1),
    ] {
        let data = vec![0xaa; len];
        d.region_write(VFIO_PCI_BAR0_REGION_INDEX, off, &data)
            .unwrap();
        let mut r = vec![0xffu8; len];
        d.region_read(VFIO_PCI_BAR0_REGION_INDEX, off, &mut r)
            .unwrap();
        assert!(r.iter().all(|&x| x == 0), "{off:#x}/{len}");
    }
    // GTT window takes 8-byte accesses only.
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, GTT_WINDOW_OFFSET, &[3, 0, 0, 0])
        .unwrap();
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, GTT_WINDOW_OFFSET + 4, &[0; 8])
        .unwrap();
    // PBA writes are dropped.
    d.region_write(VFIO_PCI_BAR0_REGION_INDEX, MSIX_PBA_OFFSET, &[0xff; 8])
        .unwrap();
    assert_eq!(d.state(), before);
    // Outside the region: a VMM error, not a guest access.
    assert!(d
        .region_read(VFIO_PCI_BAR0_REGION_INDEX, BAR0_SIZE - 2, &mut b)
        .is_err());
    assert!(d
        .region_read(VFIO_PCI_BAR1_REGION_INDEX, 0, &mut b)
        .is_err());
    assert!(d.region_read(42, 0, &mut b).is_err());
}

#[test]
fn ring_registers_follow_enable() {
    let mut d = device();
    ring_on(&mut d);
    assert_eq!(rd(&mut d, REG_RING_CTL) & RING_CTL_ENABLE, RING_CTL_ENABLE);
    // Head and start are frozen while enabled; the tail is not.
    wr(&mut d, REG_RING_HEAD, 0x40);
    wr(&mut d, REG_RING_START_LO, 0x1000);
    wr(&mut d, REG_RING_TAIL, 0x40);
    assert_eq!(rd(&mut d, REG_RING_HEAD), 0);
    assert_eq!(rd(&mut d, REG_RING_START_LO), 0);
    assert_eq!(rd(&mut d, REG_RING_TAIL), 0x40);
    wr(&mut d, REG_RING_CTL, 0);
    wr(&mut d, REG_RING_HEAD, 0x40);
    assert_eq!(rd(&mut d, REG_RING_HEAD), 0x40);
    // Enabling a ring outside the GTT range is refused with a command error.
    wr(&mut d, REG_RING_START_HI, 0);
    wr(&mut d, REG_IMR, 0);
    wr(&mut d, REG_RING_CTL, RING_CTL_ENABLE);
    assert_eq!(rd(&mut d, REG_RING_CTL) & RING_CTL_ENABLE, 0);
    assert_eq!(rd(&mut d, REG_ERROR_STATUS), INT_CMD_ERROR);
    assert_eq!(rd(&mut d, REG_IIR), INT_CMD_ERROR);
    // ERROR_STATUS is write-1-to-clear.
    wr(&mut d, REG_ERROR_STATUS, INT_CMD_ERROR);
    assert_eq!(rd(&mut d, REG_ERROR_STATUS), 0);
    assert_eq!(rd(&mut d, REG_ISR) & INT_CMD_ERROR, 0);
}

#[test]
fn display_surface_stays_in_graphics_memory() {
    let mut d = device();
    wr(&mut d, REG_DSP_SURF, 0x10_0000);
    assert_eq!(rd(&mut d, REG_DSP_SURF), 0x10_0000);
    wr(&mut d, REG_DSP_SURF, 64 << 20);
    assert_eq!(rd(&mut d, REG_DSP_SURF), 0x10_0000);
}

#[test]
fn gtt_outside_ram_maps_scratch_and_raises_gtt_error() {
    let mut d = device();
    let rec = wire_msix(&mut d);
    wr(&mut d, REG_IMR, 0);
    wr(&mut d, REG_IER, INT_ALL);
    let good = gpa(0) | GTT_PRESENT | GTT_WRITABLE;
    gtt_wr(&mut d, 0, good);
    assert_eq!(rd(&mut d, REG_IIR), 0);
    let bad = (RAM as u64 + 0x5000) | GTT_PRESENT | GTT_WRITABLE;
    gtt_wr(&mut d, 1, bad);
    assert_eq!(gtt_rd(&mut d, 0), good);
    assert_eq!(gtt_rd(&mut d, 1), bad, "the guest reads back what it wrote");
    assert_eq!(d.gtt().translation(1), Ok(shadow_pt::Translation::Scratch));
    assert_eq!(rd(&mut d, REG_IIR), INT_GTT_ERROR);
    assert_eq!(rd(&mut d, REG_ERROR_STATUS), INT_GTT_ERROR);
    assert_eq!(rd(&mut d, REG_ERROR_ADDR_LO), RAM as u32 + 0x5000);
    assert_eq!(rec.take(), vec![(VFIO_PCI_MSIX_IRQ_INDEX, 0)]);
}

#[test]
fn aperture_reads_and_writes_graphics_memory() {
    let mut d = device();
    let data: Vec<u8> = (0..10000u32).map(|i| i as u8).collect();
    d.region_write(VFIO_PCI_BAR2_REGION_INDEX, 4093, &data)
        .unwrap();
    let mut back = vec![0u8; 10000];
    d.region_read(VFIO_PCI_BAR2_REGION_INDEX, 4093, &mut back)
        .unwrap();
    assert_eq!(back, data);
    assert_eq!(d.graphics_memory().dirty().count(), 4);
    assert!(d
        .region_write(VFIO_PCI_BAR2_REGION_INDEX, (64 << 20) - 1, &[1, 2])
        .is_err());
}

#[test]
fn device_and_region_info() {
    let d = device();
    let info = d.device_info();
    assert_eq!(info.num_regions, 10);
    assert_eq!(info.num_irqs, VFIO_PCI_NUM_IRQS);
    assert_eq!(info.flags, VFIO_DEVICE_FLAGS_RESET | VFIO_DEVICE_FLAGS_PCI);
    assert_eq!(d.region_info(0).unwrap().size(), BAR0_SIZE);
    assert_eq!(d.region_info(2).unwrap().size(), 64 << 20);
    assert_eq!(d.region_info(7).unwrap().size(), 4096);
    for i in [1, 3, 4, 5, 6, 8] {
        assert_eq!(d.region_info(i).unwrap().size(), 0);
    }
    assert!(d.region_info(10).is_err());
    assert_eq!(d.find_region(state_region::MIGRATION_REGION_TYPE), Some(9));
    assert_eq!(d.irq_info(VFIO_PCI_MSIX_IRQ_INDEX).unwrap().count, 1);
    assert_eq!(d.irq_info(VFIO_PCI_ERR_IRQ_INDEX).unwrap().count, 1);
    assert!(d.irq_info(9).is_err());
    // Config space: a VGA function with the type's identity.
    assert_eq!(d.config().read_u16(0), crate::types::VENDOR_ID);
    assert_eq!(d.config().read_u32(0x08) >> 8, 0x03_0000);
    assert_eq!(d.migration_flags(), crate::device::MIGRATION_FEATURES);
}

#[test]
fn set_irqs_checks_vectors() {
    let mut d = device();
    let r = std::sync::Arc::new(Recorder::default());
    assert!(d
        .set_irqs(VFIO_PCI_MSIX_IRQ_INDEX, 0, 2, Some(r.clone()))
        .is_err());
    assert!(d
        .set_irqs(VFIO_PCI_MSI_IRQ_INDEX, 1, 1, Some(r.clone()))
        .is_err());
    assert!(d.set_irqs(7, 0, 1, Some(r.clone())).is_err());
    d.set_irqs(VFIO_PCI_ERR_IRQ_INDEX, 0, 1, Some(r)).unwrap();
    d.set_irqs(VFIO_PCI_ERR_IRQ_INDEX, 0, 0, None).unwrap();
}

#[test]
fn reset_returns_to_power_on() {
    let (mut d, _m, _rec) = booted();
    wr(&mut d, REG_SCRATCH0, 5);
    d.region_write(VFIO_PCI_BAR2_REGION_INDEX, 0, &[1; 64])
        .unwrap();
    let config = d.state().config;
    d.set_mig_state(mdev_core::MigState::Stop).unwrap();
    d.reset().unwrap();
    assert_eq!(d.mig_state(), mdev_core::MigState::Running);
    // Everything but the configuration space, which a function reset keeps (vfio-pci
    // saves and restores it around the reset).
    let mut fresh = device().state();
    assert_ne!(fresh.config, config, "booted() programmed the config space");
    fresh.config = config;
    assert_eq!(d.state(), fresh);
    assert!(d.graphics_memory().bytes()[..64].iter().all(|&b| b == 0));
}
