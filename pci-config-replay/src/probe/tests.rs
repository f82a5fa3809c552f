use super::*;
use crate::error::ParamsError;

fn dev(p: ConfigParams) -> ConfigSpace {
    ConfigSpace::new(p).expect("valid params")
}

fn param_sets() -> Vec<ConfigParams> {
    let d = ConfigParams::default();
    vec![
        d,
        // Smallest: 4 KiB BARs, one vector, table at 0.
        ConfigParams {
            device_id: 0x0001,
            subsystem_id: 0x0002,
            revision: 0,
            bar0_size: 4096,
            bar2_size: 4096,
            msix_table_size: 1,
            msix_table_offset: 0,
            msix_pba_offset: 0x800,
            ..d
        },
        // The vgpu-sim layout: 16 MiB BAR0, table at 0xf000, PBA at 0xf800, 1 vector.
        ConfigParams {
            bar2_size: 64 << 20,
            msix_table_size: 1,
            msix_table_offset: 0xf000,
            msix_pba_offset: 0xf800,
            ..d
        },
        // Large: an 8 GiB aperture (sized through the upper dword), 2048 vectors.
        ConfigParams {
            vendor_id: 0x10de,
            bar2_size: 8 << 30,
            msix_table_size: 2048,
            msix_table_offset: 0x10_0000,
            msix_pba_offset: 0x20_0000,
            ..d
        },
    ]
}

#[test]
fn probe_finds_the_params_and_leaves_the_bytes_alone() {
    for p in param_sets() {
        let mut d = dev(p);
        let before = d.state();
        assert_eq!(probe(&mut d).expect("probe"), p);
        assert_eq!(d.state(), before, "fresh {p:?}");
        // Programmed BARs with memory decode on: the probe turns decode off while sizing
        // and puts everything back.
        d.write_u32(0x10, 0xd000_0000 & !(p.bar0_size as u32 - 1));
        d.write_u32(0x14, 0);
        d.write_u32(0x18, 0);
        d.write_u32(0x1c, 0x8);
        d.write_u16(0x04, 0x0547);
        let before = d.state();
        assert!(d.bar_address(0).is_some());
        assert_eq!(probe(&mut d).expect("probe"), p);
        assert_eq!(d.state(), before, "programmed {p:?}");
    }
}

/// A port over a device that changes what some reads return, or fails some accesses.
struct Patched {
    dev: ConfigSpace,
    patch: fn(u64, u32) -> u32,
    fail_read_at: Option<(u64, usize)>,
    reads: usize,
    writes: Vec<(u64, Vec<u8>)>,
}

impl Patched {
    fn new(patch: fn(u64, u32) -> u32) -> Self {
        Self {
            dev: dev(ConfigParams::default()),
            patch,
            fail_read_at: None,
            reads: 0,
            writes: Vec::new(),
        }
    }
}

impl ConfigPort for Patched {
    fn read(&mut self, offset: u64, data: &mut [u8]) -> Result<(), PortError> {
        if let Some((at, nth)) = self.fail_read_at {
            if at == offset {
                self.reads += 1;
                if self.reads == nth {
                    return Err(PortError::from_source(
                        "config region read",
                        std::io::Error::other("device gone"),
                    ));
                }
            }
        }
        // Patch at dword granularity.
        let base = offset & !3;
        let mut dw = [0u8; 4];
        self.dev.read(base, &mut dw);
        let v = (self.patch)(base, u32::from_le_bytes(dw)).to_le_bytes();
        let start = (offset - base) as usize;
        data.copy_from_slice(&v[start..start + data.len()]);
        Ok(())
    }

    fn write(&mut self, offset: u64, data: &[u8]) -> Result<(), PortError> {
        self.writes.push((offset, data.to_vec()));
        self.dev.write(offset, data);
        Ok(())
    }
}

fn probe_patched(patch: fn(u64, u32) -> u32) -> (ProbeError, Patched) {
    let mut port = Patched::new(patch);
    let before = port.dev.state();
    let err = probe(&mut port).expect_err("probe must refuse");
    assert_eq!(port.dev.state(), before, "config restored after {err}");
    (err, port)
}

#[test]
fn devices_unlike_the_model_are_refused_by_name() {
    let (e, _) = probe_patched(|o, v| if o == 0 { u32::MAX } else { v });
    assert!(
        matches!(e, ProbeError::NotPresent { vendor: 0xffff }),
        "{e}"
    );
    let (e, _) = probe_patched(|o, v| if o == 4 { v & !(0x10 << 16) } else { v });
    assert!(matches!(e, ProbeError::NoCapabilities { .. }), "{e}");
    // MSI links past MSI-X to PCI Express: no MSI-X in the list.
    let (e, _) = probe_patched(|o, v| if o == 0x50 { (v & !0xff00) | 0x8000 } else { v });
    match &e {
        ProbeError::NoMsix { found } => assert_eq!(found, &vec![0x01, 0x05, 0x10]),
        other => panic!("{other}"),
    }
    // A list pointing back to itself.
    let (e, _) = probe_patched(|o, v| if o == 0x40 { (v & !0xff00) | 0x4000 } else { v });
    assert!(
        matches!(
            e,
            ProbeError::CapabilityList {
                pointer: 0x40,
                reason: "loops"
            }
        ),
        "{e}"
    );
    let (e, _) = probe_patched(|o, v| if o == 0x40 { (v & !0xff00) | 0x2000 } else { v });
    assert!(
        matches!(e, ProbeError::CapabilityList { pointer: 0x20, .. }),
        "{e}"
    );
    let (e, _) = probe_patched(|o, v| if o == 0x74 { v | 1 } else { v });
    assert!(
        matches!(
            e,
            ProbeError::MsixBir {
                what: "table",
                bir: 1
            }
        ),
        "{e}"
    );
    let (e, _) = probe_patched(|o, v| if o == 0x78 { v | 2 } else { v });
    assert!(
        matches!(
            e,
            ProbeError::MsixBir {
                what: "PBA",
                bir: 2
            }
        ),
        "{e}"
    );
    // BAR2 a 32-bit BAR.
    let (e, port) = probe_patched(|o, v| if o == 0x18 { v & !0x6 } else { v });
    assert!(matches!(e, ProbeError::Not64Bit { bar: 2, .. }), "{e}");
    assert!(e.to_string().contains("BAR2 is not a 64-bit"), "{e}");
    // COMMAND was turned off for sizing and restored.
    assert_eq!(port.writes.first().map(|w| w.0), Some(0x04));
    assert_eq!(port.writes.last().map(|w| w.0), Some(0x04));
    let (e, _) = probe_patched(|o, v| if o == 0x10 { v | 1 } else { v });
    assert!(matches!(e, ProbeError::IoBar { bar: 0, .. }), "{e}");
    let (e, _) = probe_patched(|o, v| if o == 0x10 { v | 8 } else { v });
    assert!(
        matches!(
            e,
            ProbeError::Prefetchable {
                bar: 0,
                found: true,
                expected: false
            }
        ),
        "{e}"
    );
    // BAR0 hardwired: no address bits.
    let (e, _) = probe_patched(|o, v| match o {
        0x10 => 0x4,
        0x14 => 0,
        _ => v,
    });
    assert!(matches!(e, ProbeError::BarNotImplemented { bar: 0 }), "{e}");
    // The MSI-X table beyond BAR0.
    let (e, _) = probe_patched(|o, v| if o == 0x74 { 0x0100_0000 } else { v });
    match &e {
        ProbeError::Params { source } => {
            assert!(matches!(
                source,
                ParamsError::MsixOutsideBar0 { what: "table", .. }
            ))
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_failing_port_is_reported_and_the_config_restored() {
    // The read-back of BAR2's sized value fails: BAR2 and COMMAND are restored anyway.
    let mut port = Patched::new(|_, v| v);
    port.dev.write_u32(0x18, 0xc000_0000);
    port.dev.write_u16(0x04, 0x0006);
    let before = port.dev.state();
    port.fail_read_at = Some((0x18, 2));
    let e = probe(&mut port).expect_err("port failure");
    match &e {
        ProbeError::Port {
            doing,
            offset,
            source,
        } => {
            assert_eq!(*doing, "reading back a sized BAR");
            assert_eq!(*offset, 0x18);
            assert!(source.to_string().contains("config region read"));
        }
        other => panic!("{other}"),
    }
    assert_eq!(port.dev.state(), before);
    assert_eq!(port.dev.bar_address(2), Some(0xc000_0000));
    let e = PortError::msg("no such region");
    assert_eq!(e.to_string(), "no such region");
}
