//! The state's views equal the live device's, over many configurations.

use proptest::prelude::*;

use crate::caps::{msi, msix, MSIX_BASE, MSI_BASE};
use crate::host::HostRegion;
use crate::{
    BarMapping, ConfigParams, ConfigSpace, HostResources, InterruptKind, InterruptRoute,
    ResourceError,
};

/// One thing a guest (or the device) does to the configuration.
#[derive(Debug, Clone)]
enum Op {
    /// A config write of 1, 2 or 4 bytes at one of the interesting registers.
    Config(usize, u8, u32),
    /// A DWORD write into the MSI-X table.
    Table(u64, u32),
    /// The device raises a vector.
    Trigger(u16),
}

/// Registers whose values change the BAR map or the routes, and their widths.
const REGS: &[(usize, u8)] = &[
    (0x04, 2),
    (0x10, 4),
    (0x14, 4),
    (0x18, 4),
    (0x1c, 4),
    (0x20, 4),
    (MSI_BASE + msi::CONTROL, 2),
    (MSI_BASE + msi::ADDRESS_LO, 4),
    (MSI_BASE + msi::ADDRESS_HI, 4),
    (MSI_BASE + msi::DATA, 2),
    (MSI_BASE + msi::MASK_BITS, 4),
    (MSIX_BASE + msix::CONTROL, 2),
];

fn op() -> impl Strategy<Value = Op> {
    let value = prop_oneof![
        Just(0u32),
        Just(u32::MAX),
        Just(0x6),
        Just(0x8000),
        Just(0xc000),
        Just(1),
        any::<u32>(),
    ];
    prop_oneof![
        4 => (0..REGS.len(), value.clone()).prop_map(|(i, v)| {
            let (off, len) = REGS[i];
            Op::Config(off, len, v)
        }),
        3 => (0u64..(70 * 4), value).prop_map(|(dw, v)| Op::Table(dw * 4, v)),
        1 => (0u16..72).prop_map(Op::Trigger),
    ]
}

fn params() -> impl Strategy<Value = ConfigParams> {
    (1u16..=70, 12u32..=26, 12u32..=34).prop_map(|(vectors, b0, b2)| ConfigParams {
        bar0_size: 1 << b0.max(14),
        bar2_size: 1 << b2,
        msix_table_size: vectors,
        msix_table_offset: 0,
        msix_pba_offset: 0x2000,
        ..ConfigParams::default()
    })
}

fn host(regions: [bool; 2], sinks: usize) -> HostResources {
    HostResources {
        bar_regions: [
            regions[0].then_some(HostRegion::vfio_bar(0, 0x1000)),
            None,
            regions[1].then_some(HostRegion::vfio_bar(2, 0x2_0000)),
            None,
            None,
            None,
        ],
        interrupt_sinks: (500..500 + sinks as u32).collect(),
    }
}

fn apply(d: &mut ConfigSpace, op: &Op) {
    match *op {
        Op::Config(off, len, v) => {
            let bytes = v.to_le_bytes();
            d.write(off as u64, &bytes[..usize::from(len)]);
        }
        Op::Table(off, v) => {
            d.msix_table_write(off, &v.to_le_bytes());
        }
        Op::Trigger(vector) => {
            d.trigger(vector);
        }
    }
}

fn assert_same(d: &ConfigSpace, host: &HostResources) {
    let st = d.state();
    // An oracle from the live device's own accessors (ConfigSpace::bar_map and
    // interrupt_routes are this view, so comparing with them would prove nothing).
    let bars: Result<Vec<BarMapping>, ResourceError> = d
        .bars()
        .iter()
        .filter_map(|slot| d.bar_address(slot.index).map(|a| (slot, a)))
        .map(|(slot, guest_addr)| {
            let region = host.bar_regions[usize::from(slot.index)]
                .ok_or(ResourceError::MissingBarRegion { bar: slot.index })?;
            Ok(BarMapping {
                bar: slot.index,
                guest_addr,
                size: slot.size,
                region,
                prefetchable: slot.prefetchable,
            })
        })
        .collect();
    assert_eq!(st.bar_map(host), bars);
    let sink = |v: u16| {
        host.interrupt_sinks
            .get(usize::from(v))
            .copied()
            .ok_or(ResourceError::MissingInterruptSink { vector: v })
    };
    let ctl = d.msix_control();
    let routes: Result<Vec<InterruptRoute>, ResourceError> = if ctl.enabled {
        (0..d.params().msix_table_size)
            .filter_map(|v| d.msix_entry(v).map(|e| (v, e)))
            .map(|(v, e)| {
                Ok(InterruptRoute {
                    kind: InterruptKind::Msix,
                    vector: v,
                    address: e.address,
                    data: e.data,
                    masked: e.masked || ctl.function_mask,
                    sink: sink(v)?,
                })
            })
            .collect()
    } else if d.msi().enabled {
        let m = d.msi();
        sink(0).map(|s| {
            vec![InterruptRoute {
                kind: InterruptKind::Msi,
                vector: 0,
                address: m.address,
                data: m.data,
                masked: m.masked,
                sink: s,
            }]
        })
    } else {
        Ok(Vec::new())
    };
    assert_eq!(st.interrupt_routes(host), routes);
    assert_eq!(st.msix_control(), d.msix_control());
    assert_eq!(st.msi(), d.msi());
    assert_eq!(st.command(), d.command());
    for v in 0..d.params().msix_table_size + 2 {
        assert_eq!(st.msix_entry(v), d.msix_entry(v));
        assert_eq!(st.msix_pending(v), d.msix_pending(v));
        assert_eq!(
            st.msix_masked(v),
            d.msix_entry(v)
                .map(|e| e.masked || d.msix_control().function_mask)
        );
    }
    for bar in 0..7 {
        assert_eq!(st.bar_address(bar), d.bar_address(bar), "BAR{bar}");
    }
}

#[test]
fn table_of_configurations() {
    let full = host([true, true], 70);
    let mut d = ConfigSpace::new(ConfigParams::default()).expect("default params");
    let steps: Vec<Vec<Op>> = vec![
        vec![],
        // BAR0 programmed, decode off.
        vec![Op::Config(0x10, 4, 0xde00_0000), Op::Config(0x14, 4, 0)],
        // Decode on.
        vec![Op::Config(0x04, 2, 0x6)],
        // BAR2 above 4 GiB.
        vec![Op::Config(0x18, 4, 0), Op::Config(0x1c, 4, 0x4)],
        // BAR0 holding the sizing pattern: not decoding.
        vec![Op::Config(0x10, 4, u32::MAX), Op::Config(0x14, 4, u32::MAX)],
        // MSI enabled, masked, pending.
        vec![
            Op::Config(0x10, 4, 0xde00_0000),
            Op::Config(0x14, 4, 0),
            Op::Config(MSI_BASE + msi::ADDRESS_LO, 4, 0xfee0_0000),
            Op::Config(MSI_BASE + msi::DATA, 2, 0x41),
            Op::Config(MSI_BASE + msi::MASK_BITS, 4, 1),
            Op::Config(MSI_BASE + msi::CONTROL, 2, 1),
            Op::Trigger(0),
        ],
        // MSI-X enabled with the function mask; vector 3 unmasked, 5 pending.
        vec![
            Op::Table(3 * 16, 0xfee0_1000),
            Op::Table(3 * 16 + 8, 0x33),
            Op::Table(3 * 16 + 12, 0),
            Op::Config(MSIX_BASE + msix::CONTROL, 2, 0xc000),
            Op::Trigger(5),
        ],
        // Function mask off.
        vec![Op::Config(MSIX_BASE + msix::CONTROL, 2, 0x8000)],
        // Decode off again.
        vec![Op::Config(0x04, 2, 0x4)],
    ];
    for (i, ops) in steps.iter().enumerate() {
        for op in ops {
            apply(&mut d, op);
        }
        assert_same(&d, &full);
        for h in [
            host([false, true], 70),
            host([true, false], 2),
            host([true, true], 0),
        ] {
            assert_same(&d, &h);
        }
        if i == 2 {
            assert_eq!(
                d.state().bar_map(&host([false, true], 8)),
                Err(ResourceError::MissingBarRegion { bar: 0 })
            );
        }
    }
    let st = d.state();
    assert_eq!(st.msix_masked(5), Some(true));
    assert!(st.msix_pending(5));
    assert_eq!(st.msix_masked(3), Some(false));
    assert_eq!(st.msix_masked(8), None);
    assert_eq!(
        st.interrupt_routes(&host([true, true], 4)),
        Err(ResourceError::MissingInterruptSink { vector: 4 })
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn state_views_equal_the_live_device(
        p in params(),
        ops in proptest::collection::vec(op(), 0..40),
        regions in any::<[bool; 2]>(),
        sinks in 0usize..72,
    ) {
        let mut d = ConfigSpace::new(p).expect("valid params");
        let h = host(regions, sinks);
        let full = host([true, true], 72);
        for op in &ops {
            apply(&mut d, op);
            assert_same(&d, &h);
        }
        assert_same(&d, &full);
    }
}
