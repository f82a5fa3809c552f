use super::*;
use crate::caps::{msix, pm, PM_BASE};
use crate::host::HostRegion;
use crate::regs::{COMMAND_BUS_MASTER, COMMAND_INTX_DISABLE, COMMAND_MEMORY_SPACE, STATUS};

fn dev_with(params: ConfigParams) -> ConfigSpace {
    ConfigSpace::new(params).expect("valid params")
}

pub(super) fn dev() -> ConfigSpace {
    dev_with(ConfigParams::default())
}

fn source_host() -> HostResources {
    HostResources {
        bar_regions: [
            Some(HostRegion::vfio_bar(0, 0)),
            None,
            Some(HostRegion::vfio_bar(2, 0)),
            None,
            None,
            None,
        ],
        interrupt_sinks: (0..8).collect(),
    }
}

/// Deliberately different from the source: other region ids, offsets and sinks.
pub(super) fn target_host() -> HostResources {
    HostResources {
        bar_regions: [
            Some(HostRegion {
                id: 40,
                offset: 0x7000_0000,
            }),
            None,
            Some(HostRegion {
                id: 41,
                offset: 0x1_0000_0000,
            }),
            None,
            None,
            None,
        ],
        interrupt_sinks: vec![900, 907, 913, 921, 934, 955, 989, 1044],
    }
}

/// A device the guest has fully set up: BARs, decode, MSI-X with a masked pending vector,
/// MSI programmed, error bits, PM, PCIe and LTR registers.
pub(super) fn guest_setup() -> ConfigSpace {
    let mut d = dev();
    d.write_u32(0x10, 0xde00_0000);
    d.write_u32(0x14, 0);
    d.write_u32(0x18, 0x0000_000c);
    d.write_u32(0x1c, 0x4);
    d.write_u16(
        0x04,
        COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE,
    );
    d.write_u8(0x0c, 0x10);
    d.write_u8(0x3c, 0x0b);
    d.write_u32(0x54, 0xfee0_0000);
    d.write_u32(0x58, 0);
    d.write_u16(0x5c, 0x4022);
    d.write_u32(0x60, 1);
    for v in 0..8u64 {
        d.msix_table_write(v * 16, &(0xfee0_0000u32 | (v as u32) << 12).to_le_bytes());
        d.msix_table_write(v * 16 + 8, &(0x30 + v as u32).to_le_bytes());
        // Vector 5 stays masked; the rest are unmasked.
        let ctrl = u32::from(v == 5);
        d.msix_table_write(v * 16 + 12, &ctrl.to_le_bytes());
    }
    d.write_u16(0x72, msix::CTL_ENABLE);
    assert_eq!(d.trigger(5), crate::Delivery::Pending);
    d.write_u16(0x88, 0x2830);
    d.write_u16(0x90, 0x0042);
    d.write_u16(0xa8, 0x0405);
    d.write_u16(0x114, 0x1003);
    d.write_u16(0x116, 0x0c05);
    d.block_mut().set_device_bits(STATUS, 2, 0x2000, 0x2000);
    d.block_mut().set_device_bits(0x8a, 2, 0x0001, 0x0001);
    d
}

#[test]
fn replay_onto_fresh_device_gives_identical_state() {
    let src = guest_setup();
    let saved = ConfigSpaceState::from_bytes(&src.state().to_bytes()).expect("parse");
    let mut target = dev();
    let r = replay(&mut target, &saved, &target_host()).expect("replay");
    assert_eq!(target.bytes(), src.bytes(), "config bytes equal");
    assert_eq!(target.state(), src.state(), "table and PBA equal");
    assert_eq!(target.lspci_hex_extended(), src.lspci_hex_extended());
    assert!(r.fire.is_empty());
    assert!(!r.intx_asserted);
}

#[test]
fn replay_onto_used_target_gives_identical_state() {
    let src = guest_setup();
    let mut target = dev();
    target.write_u16(0x04, 0x0007);
    target.write_u32(0x10, 0xa000_0000);
    target.write_u16(0x52, 1);
    target.trigger(0);
    target.write_u16(0x44, 3);
    replay(&mut target, &src.state(), &target_host()).expect("replay");
    assert_eq!(target.state(), src.state());
}

#[test]
fn replay_writes_in_safe_order() {
    let src = guest_setup();
    let mut target = dev();
    let r = replay(&mut target, &src.state(), &target_host()).expect("replay");
    let pos = |pred: &dyn Fn(&ConfigChange) -> bool| r.changes.iter().position(pred);
    let decode = pos(&|c| matches!(c, ConfigChange::MemoryDecode { enabled: true }));
    let first_bar = pos(&|c| matches!(c, ConfigChange::BarMoved { .. }));
    let msi = pos(&|c| matches!(c, ConfigChange::MsiChanged { .. }));
    let entry = pos(&|c| matches!(c, ConfigChange::MsixEntryChanged { .. }));
    let enable = pos(&|c| matches!(c, ConfigChange::MsixEnable { enabled: true, .. }));
    assert!(decode.is_some() && first_bar.is_some() && msi.is_some());
    assert!(
        decode < first_bar,
        "BARs programmed with decode off, moved on enable"
    );
    assert!(first_bar < msi);
    assert!(
        msi < entry && entry < enable,
        "table entries before MSI-X enable"
    );
    // BARs appear exactly once each, already at their final address.
    let moves: Vec<_> = r
        .changes
        .iter()
        .filter(|c| matches!(c, ConfigChange::BarMoved { .. }))
        .collect();
    assert_eq!(
        moves,
        vec![
            &ConfigChange::BarMoved {
                bar: 0,
                old: None,
                new: Some(0xde00_0000)
            },
            &ConfigChange::BarMoved {
                bar: 2,
                old: None,
                new: Some(0x4_0000_0000)
            },
        ]
    );
}

#[test]
fn routes_and_bar_map_use_target_host_resources() {
    let src = guest_setup();
    let src_routes = src.interrupt_routes(&source_host()).expect("source routes");
    let mut target = dev();
    let r = replay(&mut target, &src.state(), &target_host()).expect("replay");
    assert_eq!(
        r.bar_map,
        vec![
            BarMapping {
                bar: 0,
                guest_addr: 0xde00_0000,
                size: 16 << 20,
                region: HostRegion {
                    id: 40,
                    offset: 0x7000_0000
                },
                prefetchable: false,
            },
            BarMapping {
                bar: 2,
                guest_addr: 0x4_0000_0000,
                size: 256 << 20,
                region: HostRegion {
                    id: 41,
                    offset: 0x1_0000_0000
                },
                prefetchable: true,
            },
        ]
    );
    assert_eq!(r.interrupt_routes.len(), 8);
    for (t, s) in r.interrupt_routes.iter().zip(src_routes.iter()) {
        assert_eq!(
            (t.vector, t.address, t.data, t.masked),
            (s.vector, s.address, s.data, s.masked)
        );
        assert_eq!(t.sink, target_host().interrupt_sinks[usize::from(t.vector)]);
        assert_ne!(t.sink, s.sink, "nothing works by equal numbers");
    }
    assert!(r.interrupt_routes[5].masked);
    assert_eq!(r.interrupt_routes[3].data, 0x33);
    assert_eq!(target.bar_map(&target_host()), Ok(r.bar_map.clone()));
    assert_eq!(
        target.interrupt_routes(&target_host()),
        Ok(r.interrupt_routes)
    );
}

#[test]
fn masked_pending_vector_survives_replay_and_fires_on_unmask() {
    let src = guest_setup();
    assert!(src.msix_pending(5));
    let mut target = dev();
    let r = replay(&mut target, &src.state(), &target_host()).expect("replay");
    assert_eq!(
        r.pending,
        vec![PendingVector {
            kind: InterruptKind::Msix,
            vector: 5
        }]
    );
    assert!(target.msix_pending(5));
    let ch = target.msix_table_write(5 * 16 + 12, &0u32.to_le_bytes());
    assert!(ch.contains(&ConfigChange::MsixFire {
        vector: 5,
        address: 0xfee0_5000,
        data: 0x35
    }));
    assert!(!target.msix_pending(5));
}

#[test]
fn masked_msi_pending_survives_replay() {
    let mut src = dev();
    src.write_u32(0x54, 0xfee0_0000);
    src.write_u16(0x5c, 0x21);
    src.write_u32(0x60, 1);
    src.write_u16(0x52, 1);
    src.write_u16(0x04, COMMAND_BUS_MASTER);
    assert_eq!(src.trigger(0), crate::Delivery::Pending);
    let mut target = dev();
    let r = replay(&mut target, &src.state(), &target_host()).expect("replay");
    assert_eq!(
        r.pending,
        vec![PendingVector {
            kind: InterruptKind::Msi,
            vector: 0
        }]
    );
    assert_eq!(r.interrupt_routes[0].sink, 900);
    assert!(target.write_u32(0x60, 0).contains(&ConfigChange::MsiFire {
        address: 0xfee0_0000,
        data: 0x21
    }));
}

#[test]
fn deliverable_pending_vector_fires_during_replay() {
    // A state where a vector is pending but unmasked (e.g. unmasked while Bus Master was
    // off, then saved): the target delivers it once decode and bus master are back.
    let mut src = guest_setup();
    src.write_u16(0x04, COMMAND_MEMORY_SPACE);
    assert_eq!(
        src.trigger(2),
        crate::Delivery::Dropped {
            reason: crate::DropReason::BusMasterDisabled
        }
    );
    let mut saved = src.state();
    saved.msix_pba[0] |= 1 << 2;
    saved.config[0x04] |= COMMAND_BUS_MASTER as u8;
    let mut target = dev();
    let r = replay(&mut target, &saved, &target_host()).expect("replay");
    assert_eq!(
        r.fire,
        vec![FireVector {
            kind: InterruptKind::Msix,
            vector: 2,
            address: 0xfee0_2000,
            data: 0x32
        }]
    );
    assert!(!target.msix_pending(2));
    assert!(target.msix_pending(5));
}

#[test]
fn intx_level_is_reraised() {
    let mut src = dev();
    assert_eq!(src.trigger(0), crate::Delivery::Intx { asserted: true });
    let mut target = dev();
    let r = replay(&mut target, &src.state(), &HostResources::default()).expect("replay");
    assert!(r.intx_asserted);
    assert!(target.intx_asserted());
    assert_eq!(target.bytes(), src.bytes());
}

#[test]
fn migrate_change_migrate_again_follows_the_guest() {
    let a = guest_setup();
    let mut b = dev();
    replay(&mut b, &a.state(), &source_host()).expect("first migration");
    // The guest moves BAR0 (decode off, move, decode on) and reprograms MSI-X vector 1.
    b.write_u16(0x04, COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE);
    b.write_u32(0x10, 0xd000_0000);
    b.write_u16(
        0x04,
        COMMAND_MEMORY_SPACE | COMMAND_BUS_MASTER | COMMAND_INTX_DISABLE,
    );
    b.msix_table_write(16 + 8, &0x77u32.to_le_bytes());
    let mut c = dev();
    let r = replay(&mut c, &b.state(), &target_host()).expect("second migration");
    assert_eq!(c.state(), b.state());
    assert_eq!(r.bar_map[0].guest_addr, 0xd000_0000);
    assert_eq!(r.bar_map[0].region.id, 40);
    assert_eq!(r.interrupt_routes[1].data, 0x77);
    assert_eq!(r.interrupt_routes[1].sink, 907);
    assert_ne!(c.state(), a.state());
}

#[test]
fn from_state_builds_the_target() {
    let src = guest_setup();
    let (target, r) =
        ConfigSpace::from_state(ConfigParams::default(), &src.state(), &target_host())
            .expect("restore");
    assert_eq!(target.state(), src.state());
    assert_eq!(r.bar_map.len(), 2);
    let bad = ConfigParams {
        bar0_size: 3,
        ..Default::default()
    };
    assert!(matches!(
        ConfigSpace::from_state(bad, &src.state(), &target_host()),
        Err(ReplayError::Params { .. })
    ));
}

fn refused(target_params: ConfigParams) -> (ReplayError, ConfigSpace, ConfigSpace) {
    let src = guest_setup();
    let mut target = dev_with(target_params);
    let before = target.clone();
    let err = replay(&mut target, &src.state(), &target_host()).expect_err("must refuse");
    (err, target, before)
}

#[test]
fn refuses_different_device_id() {
    let (err, target, before) = refused(ConfigParams {
        device_id: 0x1913,
        ..Default::default()
    });
    assert_eq!(
        err,
        ReplayError::ReadOnlyMismatch {
            field: "device ID",
            offset: 2,
            saved: 0x1912,
            target: 0x1913
        }
    );
    assert_eq!(
        err.to_string(),
        "read-only device ID at 0x002 differs: saved 0x1912, target 0x1913"
    );
    assert_eq!(target.state(), before.state(), "target untouched");
}

#[test]
fn refuses_different_bar_size() {
    let (err, ..) = refused(ConfigParams {
        bar2_size: 512 << 20,
        ..Default::default()
    });
    assert_eq!(
        err,
        ReplayError::BarSizeMismatch {
            bar: 2,
            saved: 256 << 20,
            target: 512 << 20
        }
    );
}

#[test]
fn refuses_different_msix_table_size() {
    let (err, ..) = refused(ConfigParams {
        msix_table_size: 16,
        ..Default::default()
    });
    assert_eq!(
        err,
        ReplayError::ReadOnlyMismatch {
            field: "MSI-X message control (table size)",
            offset: 0x72,
            saved: 7,
            target: 15
        }
    );
}

#[test]
fn refuses_other_read_only_differences() {
    let (err, ..) = refused(ConfigParams {
        revision: 7,
        ..Default::default()
    });
    assert!(matches!(
        err,
        ReplayError::ReadOnlyMismatch {
            field: "revision ID",
            saved: 6,
            target: 7,
            ..
        }
    ));
    let (err, ..) = refused(ConfigParams {
        msix_pba_offset: 0x40_2000,
        ..Default::default()
    });
    assert!(matches!(
        err,
        ReplayError::ReadOnlyMismatch {
            field: "MSI-X PBA offset/BIR",
            ..
        }
    ));
    let mut saved = dev().state();
    saved.config[0x300] = 1;
    assert_eq!(
        check_compatible(&dev(), &saved),
        Err(ReplayError::ReadOnlyMismatch {
            field: "reserved byte",
            offset: 0x300,
            saved: 1,
            target: 0
        })
    );
}

#[test]
fn refuses_inconsistent_saved_tables() {
    let target = dev();
    let mut saved = dev().state();
    saved.msix_table.truncate(64);
    assert_eq!(
        check_compatible(&target, &saved),
        Err(ReplayError::MsixTableLength {
            saved: 64,
            target: 128
        })
    );
    let mut saved = dev().state();
    saved.msix_pba.push(0);
    assert_eq!(
        check_compatible(&target, &saved),
        Err(ReplayError::PbaLength {
            saved: 2,
            target: 1
        })
    );
    let mut saved = dev().state();
    saved.msix_table[3 * 16 + 12 + 1] = 0x80;
    assert_eq!(
        check_compatible(&target, &saved),
        Err(ReplayError::MsixEntryReadOnly {
            vector: 3,
            dword: 3,
            bits: 0x8000
        })
    );
    let mut saved = dev().state();
    saved.msix_pba[0] = 1 << 40;
    assert_eq!(
        check_compatible(&target, &saved),
        Err(ReplayError::PbaBitOutOfRange { vector: 40 })
    );
}

#[test]
fn refuses_values_the_device_discards() {
    let mut saved = dev().state();
    saved.config[PM_BASE + pm::PMCSR] |= 1; // D1: not supported
    let mut target = dev();
    let before = target.state();
    assert_eq!(
        replay(&mut target, &saved, &HostResources::default()),
        Err(ReplayError::Diverged {
            what: "config",
            offset: PM_BASE + pm::PMCSR,
            saved: 0x09,
            target: 0x08
        })
    );
    assert_eq!(target.state(), before);
}

#[test]
fn refuses_missing_target_resources() {
    let src = guest_setup();
    let mut target = dev();
    let before = target.state();
    let mut host = target_host();
    host.bar_regions[2] = None;
    assert_eq!(
        replay(&mut target, &src.state(), &host),
        Err(ReplayError::Resources {
            source: ResourceError::MissingBarRegion { bar: 2 }
        })
    );
    let mut host = target_host();
    host.interrupt_sinks.truncate(4);
    assert_eq!(
        replay(&mut target, &src.state(), &host),
        Err(ReplayError::Resources {
            source: ResourceError::MissingInterruptSink { vector: 4 }
        })
    );
    assert_eq!(target.state(), before);
}
