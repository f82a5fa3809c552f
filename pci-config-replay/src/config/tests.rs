use proptest::prelude::*;

use super::*;
use crate::caps::msix::ENTRY_WRITABLE;

fn dev() -> ConfigSpace {
    ConfigSpace::new(ConfigParams::default()).expect("default params are valid")
}

const MSI_CTL: u64 = 0x52;
const MSIX_CTL: u64 = 0x72;

#[test]
fn reset_header() {
    let d = dev();
    assert_eq!(d.read_u16(0x00), 0x8086);
    assert_eq!(d.read_u16(0x02), 0x1912);
    assert_eq!(d.read_u32(0x08), 0x0300_0006, "class VGA, revision 6");
    assert_eq!(d.read_u8(0x0e), 0x00, "type-0 header");
    assert_eq!(d.read_u16(0x06), STATUS_CAPABILITIES_LIST);
    assert_eq!(d.read_u32(0x2c), 0x2212_8086);
    assert_eq!(d.read_u8(0x34), 0x40);
    assert_eq!(d.read_u8(0x3d), 1, "INTA");
    assert_eq!(d.read_u32(0x20), 0, "BAR4 not implemented");
    assert_eq!(d.read_u32(0x30), 0, "no expansion ROM");
}

#[test]
fn capability_walk() {
    let d = dev();
    assert_eq!(
        d.capabilities(),
        vec![
            (CAP_ID_PM, 0x40),
            (CAP_ID_MSI, 0x50),
            (CAP_ID_MSIX, 0x70),
            (CAP_ID_PCIE, 0x80)
        ]
    );
    assert_eq!(d.read_u8(0x81), 0, "list terminated");
    assert_eq!(
        d.extended_capabilities(),
        vec![(EXT_CAP_ID_VSEC, 1, 0x100), (EXT_CAP_ID_LTR, 1, 0x110)]
    );
    assert_eq!(d.read_u32(0x110) >> 20, 0, "extended chain terminated");
}

#[test]
fn walks_survive_loops() {
    let mut d = dev();
    d.block_mut().set_raw(0x81, 1, 0x40);
    assert_eq!(d.capabilities().len(), 48);
    d.block_mut().set_raw(0x110, 4, 0x1000_0018);
    assert_eq!(d.extended_capabilities().len(), 960);
}

#[test]
fn undefined_and_out_of_range_reads() {
    let d = dev();
    assert_eq!(d.read_u32(0x200), 0, "undefined space reads 0");
    assert_eq!(d.read_u32(0xffc), 0);
    assert_eq!(d.read_u32(0x1000), u32::MAX, "beyond 4 KiB reads ones");
    assert_eq!(d.read_u8(u64::MAX), 0xff);
    assert_eq!(d.read_u32(0x02), u32::MAX, "misaligned reads ones");
    let mut three = [0u8; 3];
    d.read(0x00, &mut three);
    assert_eq!(three, [0xff; 3]);
    let mut empty = [0u8; 0];
    d.read(0, &mut empty);
}

#[test]
fn unsupported_writes_are_ignored() {
    let mut d = ConfigSpace::new(ConfigParams::default())
        .expect("valid")
        .with_logger(Logger::root(Discard, o!()));
    let before = d.state();
    assert!(d.write(0x04, &[0x07, 0, 0]).is_empty());
    assert!(d.write(0x05, &[0x07, 0]).is_empty());
    assert!(d.write(0x1000, &[0xff]).is_empty());
    assert!(d.write(u64::MAX, &[0xff]).is_empty());
    assert!(d.write(0x04, &[0; 8]).is_empty());
    assert!(d.write(0x04, &[]).is_empty());
    assert_eq!(d.state(), before);
    assert_eq!(
        ConfigSpace::check_access(0x05, 2),
        Err(AccessError::Alignment { offset: 5, len: 2 })
    );
    assert_eq!(
        ConfigSpace::check_access(0xffe, 4),
        Err(AccessError::Alignment {
            offset: 0xffe,
            len: 4
        })
    );
    assert_eq!(
        ConfigSpace::check_access(0x1000, 1),
        Err(AccessError::OutOfRange {
            offset: 0x1000,
            len: 1
        })
    );
    assert_eq!(
        ConfigSpace::check_access(0, 3),
        Err(AccessError::Size { offset: 0, len: 3 })
    );
    assert_eq!(ConfigSpace::check_access(0xffc, 4), Ok(0xffc));
}

#[test]
fn rate_limit_logs_powers_of_two() {
    let r = RateLimit::default();
    let logged: Vec<u64> = (0..20).filter_map(|_| r.hit()).collect();
    assert_eq!(logged, vec![1, 2, 4, 8, 16]);
}

#[test]
fn command_mask_and_changes() {
    let mut d = dev();
    d.write_u32(0x10, 0xde00_0000);
    d.write_u32(0x18, 0xc000_0000);
    let ch = d.write_u16(0x04, 0xffff);
    assert_eq!(d.command(), COMMAND_WRITABLE);
    assert_eq!(
        ch,
        vec![
            ConfigChange::IoDecode { enabled: true },
            ConfigChange::MemoryDecode { enabled: true },
            ConfigChange::BusMaster { enabled: true },
            ConfigChange::BarMoved {
                bar: 0,
                old: None,
                new: Some(0xde00_0000)
            },
            ConfigChange::BarMoved {
                bar: 2,
                old: None,
                new: Some(0xc000_0000)
            },
        ]
    );
    // Moving a BAR while decoding reports old and new.
    let ch = d.write_u32(0x10, 0xd000_0000);
    assert_eq!(
        ch,
        vec![ConfigChange::BarMoved {
            bar: 0,
            old: Some(0xde00_0000),
            new: Some(0xd000_0000)
        }]
    );
    assert!(d.write_u16(0x04, COMMAND_WRITABLE).is_empty(), "no change");
    let ch = d.write_u16(0x04, COMMAND_BUS_MASTER);
    assert_eq!(ch.len(), 4);
    assert!(ch.contains(&ConfigChange::BarMoved {
        bar: 2,
        old: Some(0xc000_0000),
        new: None
    }));
    assert_eq!(d.bar_address(0), None);
    assert_eq!(d.bar_address(1), None);
}

#[test]
fn status_write_one_to_clear() {
    let mut d = dev();
    let errs = u32::from(STATUS_RECEIVED_MASTER_ABORT | STATUS_DETECTED_PARITY_ERROR);
    d.block_mut().set_device_bits(0x06, 2, errs, errs);
    assert_eq!(d.status(), STATUS_CAPABILITIES_LIST | errs as u16);
    // Writing 0 keeps them; writing the read-only cap bit does nothing.
    d.write_u16(0x06, 0);
    assert_eq!(d.status(), STATUS_CAPABILITIES_LIST | errs as u16);
    // Writing 1 clears only the bit written.
    d.write_u16(0x06, STATUS_RECEIVED_MASTER_ABORT);
    assert_eq!(
        d.status(),
        STATUS_CAPABILITIES_LIST | STATUS_DETECTED_PARITY_ERROR
    );
    // A dword write to COMMAND with the status half all ones clears the rest.
    d.write_u32(0x04, 0xffff_0000);
    assert_eq!(d.status(), STATUS_CAPABILITIES_LIST);
    assert_eq!(d.command(), 0);
}

#[test]
fn interrupt_line_is_writable_and_pin_is_not() {
    let mut d = dev();
    d.write_u16(0x3c, 0xff0b);
    assert_eq!(d.read_u8(0x3c), 0x0b);
    assert_eq!(d.read_u8(0x3d), 1);
}

fn program_msi(d: &mut ConfigSpace) {
    d.write_u32(0x54, 0xfee0_1000);
    d.write_u32(0x58, 0);
    d.write_u16(0x5c, 0x4021);
}

#[test]
fn msi_delivery_masking_and_fire_on_unmask() {
    let mut d = dev();
    program_msi(&mut d);
    d.write_u16(0x04, COMMAND_BUS_MASTER);
    let ch = d.write_u16(MSI_CTL, msi::CTL_ENABLE);
    assert_eq!(
        ch,
        vec![ConfigChange::MsiChanged {
            enabled: true,
            address: 0xfee0_1000,
            data: 0x4021,
            masked: false
        }]
    );
    let msg = Delivery::Msi {
        address: 0xfee0_1000,
        data: 0x4021,
    };
    assert_eq!(d.trigger(0), msg);
    assert_eq!(
        d.trigger(1),
        Delivery::Dropped {
            reason: DropReason::VectorOutOfRange
        }
    );
    d.write_u32(0x60, 1);
    assert_eq!(d.trigger(0), Delivery::Pending);
    assert!(d.msi().pending);
    assert_eq!(d.read_u32(0x64), 1);
    let ch = d.write_u32(0x60, 0);
    assert_eq!(
        ch,
        vec![
            ConfigChange::MsiChanged {
                enabled: true,
                address: 0xfee0_1000,
                data: 0x4021,
                masked: false
            },
            ConfigChange::MsiFire {
                address: 0xfee0_1000,
                data: 0x4021
            }
        ]
    );
    assert!(!d.msi().pending);
    // Guest cannot write the pending bit.
    d.write_u32(0x64, 1);
    assert!(!d.msi().pending);
}

#[test]
fn bus_master_off_drops_unmasked_and_defers_pending() {
    let mut d = dev();
    program_msi(&mut d);
    d.write_u16(MSI_CTL, msi::CTL_ENABLE);
    assert_eq!(
        d.trigger(0),
        Delivery::Dropped {
            reason: DropReason::BusMasterDisabled
        }
    );
    d.write_u32(0x60, 1);
    assert_eq!(d.trigger(0), Delivery::Pending);
    assert!(!d.write_u32(0x60, 0).contains(&ConfigChange::MsiFire {
        address: 0xfee0_1000,
        data: 0x4021
    }));
    assert!(d.msi().pending, "no bus master: still pending");
    let ch = d.write_u16(0x04, COMMAND_BUS_MASTER);
    assert_eq!(
        ch,
        vec![
            ConfigChange::BusMaster { enabled: true },
            ConfigChange::MsiFire {
                address: 0xfee0_1000,
                data: 0x4021
            }
        ]
    );
}

#[test]
fn msix_pending_fires_on_vector_unmask_and_function_unmask() {
    let mut d = dev();
    d.write_u16(0x04, COMMAND_BUS_MASTER);
    let ch = d.write_u16(MSIX_CTL, msix::CTL_ENABLE);
    assert_eq!(
        ch,
        vec![ConfigChange::MsixEnable {
            enabled: true,
            function_mask: false
        }]
    );
    let v = 3u64;
    assert_eq!(
        d.msix_table_write(v * 16, &0xfee0_2000u32.to_le_bytes()),
        vec![ConfigChange::MsixEntryChanged {
            vector: 3,
            address: 0xfee0_2000,
            data: 0,
            masked: true
        }]
    );
    d.msix_table_write(v * 16 + 8, &0x55u32.to_le_bytes());
    // Masked at reset: pending.
    assert_eq!(d.trigger(3), Delivery::Pending);
    assert!(d.msix_pending(3));
    let mut pba = [0u8; 8];
    d.pba_read(0, &mut pba);
    assert_eq!(u64::from_le_bytes(pba), 1 << 3);
    let ch = d.msix_table_write(v * 16 + 12, &0u32.to_le_bytes());
    assert_eq!(
        ch,
        vec![
            ConfigChange::MsixEntryChanged {
                vector: 3,
                address: 0xfee0_2000,
                data: 0x55,
                masked: false
            },
            ConfigChange::MsixFire {
                vector: 3,
                address: 0xfee0_2000,
                data: 0x55
            }
        ]
    );
    assert!(!d.msix_pending(3));
    assert_eq!(
        d.trigger(3),
        Delivery::Msi {
            address: 0xfee0_2000,
            data: 0x55
        }
    );
    // Function mask.
    d.write_u16(MSIX_CTL, msix::CTL_ENABLE | msix::CTL_FUNCTION_MASK);
    assert_eq!(d.trigger(3), Delivery::Pending);
    let ch = d.write_u16(MSIX_CTL, msix::CTL_ENABLE);
    assert_eq!(
        ch,
        vec![
            ConfigChange::MsixEnable {
                enabled: true,
                function_mask: false
            },
            ConfigChange::MsixFire {
                vector: 3,
                address: 0xfee0_2000,
                data: 0x55
            }
        ]
    );
    assert_eq!(
        d.trigger(8),
        Delivery::Dropped {
            reason: DropReason::VectorOutOfRange
        }
    );
}

#[test]
fn msix_takes_precedence_over_msi() {
    let mut d = dev();
    program_msi(&mut d);
    d.write_u16(0x04, COMMAND_BUS_MASTER);
    d.write_u16(MSI_CTL, msi::CTL_ENABLE);
    d.write_u16(MSIX_CTL, msix::CTL_ENABLE);
    assert_eq!(d.trigger(0), Delivery::Pending, "MSI-X vector 0 is masked");
    assert!(!d.msi().pending);
    assert!(d.msix_pending(0));
}

#[test]
fn intx_level_follows_status_disable_and_msi() {
    let mut d = dev();
    assert_eq!(d.trigger(0), Delivery::Intx { asserted: true });
    assert!(d.intx_asserted());
    assert_eq!(d.status() & STATUS_INTERRUPT, STATUS_INTERRUPT);
    let ch = d.write_u16(0x04, COMMAND_INTX_DISABLE);
    assert_eq!(ch, vec![ConfigChange::IntxLevel { asserted: false }]);
    assert_eq!(
        d.trigger(0),
        Delivery::Dropped {
            reason: DropReason::IntxDisabled
        }
    );
    let ch = d.write_u16(0x04, 0);
    assert_eq!(ch, vec![ConfigChange::IntxLevel { asserted: true }]);
    let ch = d.write_u16(MSI_CTL, msi::CTL_ENABLE);
    assert!(ch.contains(&ConfigChange::IntxLevel { asserted: false }));
    d.write_u16(MSI_CTL, 0);
    assert_eq!(d.intx_deassert(), Some(Delivery::Intx { asserted: false }));
    assert_eq!(d.intx_deassert(), None);
    assert_eq!(d.status() & STATUS_INTERRUPT, 0);
}

#[test]
fn power_state_changes() {
    let mut d = dev();
    let ch = d.write_u16(0x44, 3);
    assert_eq!(
        ch,
        vec![ConfigChange::PowerState {
            old: PowerState::D0,
            new: PowerState::D3Hot
        }]
    );
    assert!(d.write_u16(0x44, 1).is_empty(), "D1 unsupported: discarded");
    assert_eq!(d.power_state(), PowerState::D3Hot);
    assert_eq!(d.write_u16(0x44, 0).len(), 1);
}

#[test]
fn msix_window_ranges() {
    let d = dev();
    assert_eq!(d.msix_table_range(), 0x40_0000..0x40_0080);
    assert_eq!(d.msix_pba_range(), 0x40_1000..0x40_1008);
    let mut e = [0u8; 16];
    d.msix_table_read(0, &mut e[..8]);
    assert_eq!(e[..8], [0; 8]);
    d.msix_table_read(12, &mut e[..4]);
    assert_eq!(u32::from_le_bytes([e[0], e[1], e[2], e[3]]), 1, "masked");
}

fn ro_snapshot(d: &ConfigSpace) -> Vec<u8> {
    (0..CONFIG_SPACE_SIZE)
        .map(|o| d.bytes()[o] & d.block().read_only_mask(o, 1) as u8)
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_writes_never_panic_or_touch_read_only_bits(
        writes in proptest::collection::vec(
            (0u64..4200, prop_oneof![Just(1usize), Just(2), Just(4), 0usize..9], any::<u32>()),
            1..64,
        ),
        table_writes in proptest::collection::vec((0u64..160, any::<u64>()), 0..16),
    ) {
        let mut d = dev();
        let ro_before = ro_snapshot(&d);
        let w1c: Vec<u8> = (0..CONFIG_SPACE_SIZE).map(|o| d.block().w1c_mask(o, 1) as u8).collect();
        let ro: Vec<u8> = (0..CONFIG_SPACE_SIZE).map(|o| d.block().read_only_mask(o, 1) as u8).collect();
        for (offset, size, value) in writes {
            // Mostly aligned, sometimes not, to cover both paths.
            let offset = if value % 7 == 0 { offset } else { offset & !(size.max(1) as u64 - 1) };
            let bytes: Vec<u8> = (0..size).map(|i| (u64::from(value) >> (8 * (i % 4))) as u8).collect();
            let before = d.bytes().to_vec();
            let _ = d.write(offset, &bytes);
            for (o, (&b, &a)) in before.iter().zip(d.bytes().iter()).enumerate() {
                prop_assert_eq!(a & w1c[o] & !b, 0, "w1c bit set by guest at {:#x}", o);
                prop_assert_eq!(a & ro[o], b & ro[o], "read-only bit changed at {:#x}", o);
            }
            let _ = d.read_u32(offset);
        }
        for (offset, value) in table_writes {
            let _ = d.msix_table_write(offset, &value.to_le_bytes()[..4]);
            let _ = d.msix_table_write(offset, &value.to_le_bytes());
            let _ = d.msix_table_write(offset, &value.to_le_bytes()[..2]);
        }
        prop_assert_eq!(ro_snapshot(&d), ro_before);
        for (i, entry) in d.msix_table().entry_bytes().chunks_exact(16).enumerate() {
            for (dw, mask) in ENTRY_WRITABLE.iter().enumerate() {
                let v = u32::from_le_bytes([entry[dw * 4], entry[dw * 4 + 1], entry[dw * 4 + 2], entry[dw * 4 + 3]]);
                prop_assert_eq!(v & !mask, 0, "vector {} dword {}", i, dw);
            }
        }
        prop_assert!(d.power_state().supported());
        prop_assert_eq!(d.bytes()[0x34], 0x40);
    }
}
