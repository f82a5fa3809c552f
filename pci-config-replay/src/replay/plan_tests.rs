//! The replay plan a VMM performs through the config region, and checking what it reads
//! back.

use super::tests::{dev, guest_setup, target_host};
use super::*;
use crate::caps::{msi, msix, pm, MSIX_BASE, MSI_BASE, PM_BASE};
use crate::probe::probe;
use crate::regs::{COMMAND, COMMAND_BUS_MASTER, COMMAND_MEMORY_SPACE};

fn cfg(offset: usize, data: &[u8]) -> ReplayWrite {
    ReplayWrite::Config {
        offset: offset as u64,
        data: data.to_vec(),
    }
}

#[test]
fn plan_lists_the_writes_in_replay_order() {
    let src = guest_setup();
    let saved = src.state();
    let target = dev();
    let plan = replay_plan(&target, &saved).expect("plan");
    assert_eq!(target.state(), dev().state(), "the target is not modified");
    let head = [
        cfg(COMMAND, &[0, 0]),
        cfg(MSI_BASE + msi::CONTROL, &[0, 0]),
        cfg(MSIX_BASE + msix::CONTROL, &[0, 0]),
        cfg(0x10, &0xde00_0004u32.to_le_bytes()),
        cfg(0x14, &[0; 4]),
        cfg(0x18, &0xcu32.to_le_bytes()),
        cfg(0x1c, &4u32.to_le_bytes()),
        cfg(0x20, &[0; 4]),
        cfg(0x24, &[0; 4]),
        cfg(COMMAND, &src.command().to_le_bytes()),
        cfg(MSI_BASE + msi::ADDRESS_LO, &0xfee0_0000u32.to_le_bytes()),
        cfg(MSI_BASE + msi::ADDRESS_HI, &[0; 4]),
        cfg(MSI_BASE + msi::DATA, &0x4022u16.to_le_bytes()),
        cfg(MSI_BASE + msi::MASK_BITS, &1u32.to_le_bytes()),
        cfg(MSI_BASE + msi::CONTROL, &0x0180u16.to_le_bytes()),
    ];
    assert_eq!(&plan[..head.len()], &head[..]);
    let table: Vec<&ReplayWrite> = plan[head.len()..head.len() + 32].iter().collect();
    for (i, w) in table.iter().enumerate() {
        let want = ReplayWrite::MsixTable {
            offset: 4 * i as u64,
            data: saved.msix_table[4 * i..4 * i + 4]
                .try_into()
                .expect("dword"),
        };
        assert_eq!(**w, want);
    }
    let rest = &plan[head.len() + 32..];
    assert_eq!(
        rest[0],
        cfg(MSIX_BASE + msix::CONTROL, &(0x8000u16 | 7).to_le_bytes())
    );
    assert_eq!(
        rest[1],
        cfg(
            PM_BASE + pm::PMCSR,
            &(pm::PMCSR_NO_SOFT_RESET).to_le_bytes()
        )
    );
    // Then the other writable dwords that differ from a fresh device: cache line size,
    // interrupt line, PCIe device control, link control, link control 2, LTR.
    let offsets: Vec<u64> = rest[2..]
        .iter()
        .map(|w| match w {
            ReplayWrite::Config { offset, data } => {
                assert_eq!(data.len(), 4);
                *offset
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(offsets, vec![0x0c, 0x3c, 0x88, 0x90, 0xa8, 0x114]);
}

#[test]
fn plan_refuses_incompatible_state() {
    let saved = guest_setup().state();
    let other = ConfigSpace::new(ConfigParams {
        device_id: 0x1234,
        ..ConfigParams::default()
    })
    .expect("params");
    assert!(matches!(
        replay_plan(&other, &saved),
        Err(ReplayError::ReadOnlyMismatch {
            field: "device ID",
            ..
        })
    ));
}

/// What a VMM does: probe the device through its config port, plan against a model built
/// from the probed params, perform every write on the device, read the result back.
fn vmm_replay(device: &mut ConfigSpace, saved: &ConfigSpaceState) -> Vec<ConfigChange> {
    let params = probe(device).expect("probe");
    let model = ConfigSpace::new(params).expect("model");
    let plan = replay_plan(&model, saved).expect("plan");
    plan.iter().flat_map(|w| w.apply(device)).collect()
}

#[test]
fn vmm_replay_through_the_plan_matches_replay() {
    let saved = guest_setup().state();
    // The device committed its own context (device-owned bits included) before the VMM
    // replays the guest-writable rest through the config region.
    let mut device = dev();
    restore_device_bits(&mut device, &saved);
    let changes = vmm_replay(&mut device, &saved);
    let now = device.state();
    assert_eq!(verify_replayed(&saved, &now), Ok(()));
    let mut reference = dev();
    let r = replay(&mut reference, &saved, &target_host()).expect("replay");
    assert_eq!(now, reference.state());
    assert_eq!(changes, r.changes);
    assert!(device.msix_pending(5), "masked vector still pending");
    // Replaying again onto a device that already holds the state changes nothing and
    // fires nothing.
    let again = vmm_replay(&mut device, &saved);
    assert!(!again.iter().any(|c| matches!(
        c,
        ConfigChange::MsixFire { .. } | ConfigChange::MsiFire { .. }
    )));
    assert_eq!(device.state(), now);
}

#[test]
fn delivered_pending_bits_are_accepted_masked_ones_are_not() {
    let mut saved = guest_setup().state();
    saved.msix_pba[0] |= 1 << 2; // vector 2 unmasked: deliverable
    let mut device = dev();
    restore_device_bits(&mut device, &saved);
    let changes = vmm_replay(&mut device, &saved);
    assert!(changes.contains(&ConfigChange::MsixFire {
        vector: 2,
        address: 0xfee0_2000,
        data: 0x32
    }));
    let now = device.state();
    assert_eq!(now.msix_pba[0], 1 << 5);
    assert_eq!(verify_replayed(&saved, &now), Ok(()));
    // Vector 5 is masked: its pending bit may not disappear.
    let mut lost = now.clone();
    lost.msix_pba[0] = 0;
    assert_eq!(
        verify_replayed(&saved, &lost),
        Err(ReplayError::Diverged {
            what: "PBA",
            offset: 0,
            saved: 1 << 5,
            target: 0
        })
    );
    // Nor may a bit appear.
    let mut extra = now.clone();
    extra.msix_pba[0] |= 1 << 7;
    assert!(matches!(
        verify_replayed(&saved, &extra),
        Err(ReplayError::Diverged { what: "PBA", .. })
    ));
    // With the function mask set nothing is deliverable.
    let mut masked = saved.clone();
    masked.config[MSIX_BASE + msix::CONTROL + 1] |= 0x40;
    assert!(matches!(
        verify_replayed(&masked, &now),
        Err(ReplayError::Diverged {
            what: "config",
            offset: 0x73,
            ..
        })
    ));
    let mut masked_now = now.clone();
    masked_now.config[MSIX_BASE + msix::CONTROL + 1] |= 0x40;
    assert!(matches!(
        verify_replayed(&masked, &masked_now),
        Err(ReplayError::Diverged { what: "PBA", .. })
    ));
}

#[test]
fn msi_pending_is_accepted_only_when_deliverable() {
    let mut src = dev();
    src.write_u32(0x54, 0xfee0_0000);
    src.write_u16(0x52, 1);
    src.write_u32(0x60, 1);
    src.write_u16(0x04, COMMAND_BUS_MASTER | COMMAND_MEMORY_SPACE);
    src.trigger(0);
    let masked = src.state();
    assert!(masked.msi().pending);
    let mut cleared = masked.clone();
    cleared.config[MSI_BASE + msi::PENDING_BITS] = 0;
    assert_eq!(
        verify_replayed(&masked, &cleared),
        Err(ReplayError::Diverged {
            what: "config",
            offset: MSI_BASE + msi::PENDING_BITS,
            saved: 1,
            target: 0
        })
    );
    // Unmasked (saved while bus master was off, say): the replay delivered it.
    let mut deliverable = masked.clone();
    deliverable.config[MSI_BASE + msi::MASK_BITS] = 0;
    cleared.config[MSI_BASE + msi::MASK_BITS] = 0;
    assert_eq!(verify_replayed(&deliverable, &cleared), Ok(()));
}

#[test]
fn verify_replayed_names_every_other_difference() {
    let saved = guest_setup().state();
    assert_eq!(verify_replayed(&saved, &saved), Ok(()));
    let mut now = saved.clone();
    now.config[0x0c] = 0x20;
    assert_eq!(
        verify_replayed(&saved, &now),
        Err(ReplayError::Diverged {
            what: "config",
            offset: 0x0c,
            saved: 0x10,
            target: 0x20
        })
    );
    let mut now = saved.clone();
    now.msix_table[3 * 16 + 8] ^= 1;
    assert!(matches!(
        verify_replayed(&saved, &now),
        Err(ReplayError::Diverged {
            what: "MSI-X table",
            offset: 56,
            ..
        })
    ));
    let mut now = saved.clone();
    now.bar_sizes[2] = 128 << 20;
    assert!(matches!(
        verify_replayed(&saved, &now),
        Err(ReplayError::BarSizeMismatch { bar: 2, .. })
    ));
    let mut now = saved.clone();
    now.msix_table.truncate(64);
    assert!(matches!(
        verify_replayed(&saved, &now),
        Err(ReplayError::MsixTableLength {
            saved: 128,
            target: 64
        })
    ));
    let mut now = saved.clone();
    now.msix_pba.push(0);
    assert!(matches!(
        verify_replayed(&saved, &now),
        Err(ReplayError::PbaLength {
            saved: 1,
            target: 2
        })
    ));
}
