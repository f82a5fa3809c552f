use super::*;
use crate::params::ConfigParams;

fn dev() -> ConfigSpace {
    ConfigSpace::new(ConfigParams::default()).expect("default params are valid")
}

#[test]
fn hex_dump_matches_lspci_xxx() {
    let mut d = dev();
    d.write_u32(0x10, 0xde00_0000);
    d.write_u16(0x04, 0x0007);
    let hex = d.lspci_hex();
    let lines: Vec<&str> = hex.lines().collect();
    assert_eq!(lines.len(), 16);
    assert_eq!(
        lines[0],
        "00: 86 80 12 19 07 00 10 00 06 00 00 03 00 00 00 00"
    );
    assert_eq!(
        lines[1],
        "10: 04 00 00 de 00 00 00 00 0c 00 00 00 00 00 00 00"
    );
    assert_eq!(
        lines[3],
        "30: 00 00 00 00 40 00 00 00 00 00 00 00 00 01 00 00"
    );
    assert_eq!(
        lines[4],
        "40: 01 50 03 00 08 00 00 00 00 00 00 00 00 00 00 00"
    );
    assert!(lines[15].starts_with("f0: "));
    assert!(hex.ends_with('\n'));
    assert!(lines.iter().all(|l| l.len() == 4 + 16 * 3 - 1));
}

#[test]
fn extended_hex_dump_matches_lspci_xxxx() {
    let hex = dev().lspci_hex_extended();
    let lines: Vec<&str> = hex.lines().collect();
    assert_eq!(lines.len(), 256);
    assert_eq!(lines[..16].join("\n") + "\n", dev().lspci_hex());
    assert_eq!(
        lines[16],
        "100: 0b 00 01 11 01 00 01 01 76 47 50 55 01 00 00 00"
    );
    assert_eq!(
        lines[17],
        "110: 18 00 01 00 00 00 00 00 00 00 00 00 00 00 00 00"
    );
    assert!(lines[255].starts_with("ff0: "));
}

#[test]
fn sizes_print_like_lspci() {
    assert_eq!(size(16 << 20), "16M");
    assert_eq!(size(256 << 20), "256M");
    assert_eq!(size(4096), "4K");
    assert_eq!(size(8 << 30), "8G");
    assert_eq!(size(1536), "1536");
}

#[test]
fn decoded_view_lists_bars_and_capabilities() {
    let mut d = dev();
    d.write_u32(0x10, 0xde00_0000);
    d.write_u32(0x18, 0xc000_000c);
    d.write_u16(0x04, 0x0406);
    d.write_u32(0x54, 0xfee0_0000);
    d.write_u16(0x5c, 0x4021);
    d.write_u16(0x52, 1);
    d.write_u16(0x114, 0x0403);
    let text = d.decoded();
    for expected in [
        "VGA compatible controller [0300]: Device 8086:1912 (rev 06) (prog-if 00)",
        "\tSubsystem: Device 8086:2212",
        "\tControl: I/O- Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR- \
         FastB2B- DisINTx+",
        "\tStatus: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- \
         >SERR- <PERR- INTx-",
        "\tInterrupt: pin A routed to IRQ 0",
        "\tRegion 0: Memory at de000000 (64-bit, non-prefetchable) [size=16M]",
        "\tRegion 2: Memory at c0000000 (64-bit, prefetchable) [size=256M]",
        "\tCapabilities: [40] Power Management version 3",
        "\t\tStatus: D0 NoSoftRst+ PME-Enable- DSel=0 DScale=0 PME-",
        "\tCapabilities: [50] MSI: Enable+ Count=1/1 Maskable+ 64bit+",
        "\t\tAddress: 00000000fee00000  Data: 4021",
        "\t\tMasking: 00000000  Pending: 00000000",
        "\tCapabilities: [70] MSI-X: Enable- Count=8 Masked-",
        "\t\tVector table: BAR=0 offset=00400000",
        "\t\tPBA: BAR=0 offset=00401000",
        "\t\tEntry 0: Address: 0000000000000000  Data: 00000000  Masked+ Pending-",
        "\tCapabilities: [80] Express (v2) Endpoint, MSI 00",
        "\t\tLnkSta:\tSpeed 2.5GT/s, Width x1",
        "\tCapabilities: [100 v1] Vendor Specific Information: ID=0001 Rev=1 Len=010 <?>",
        "\tCapabilities: [110 v1] Latency Tolerance Reporting",
        "\t\tMax snoop latency: 96ns",
        "\t\tMax no snoop latency: 0ns",
    ] {
        assert!(
            text.lines().any(|l| l == expected),
            "missing line {expected:?} in\n{text}"
        );
    }
}

#[test]
fn decoded_view_marks_disabled_and_unassigned_bars() {
    let mut d = dev();
    d.write_u32(0x10, 0xde00_0000);
    let text = d.decoded();
    assert!(text.contains(
        "\tRegion 0: Memory at de000000 (64-bit, non-prefetchable) [disabled] [size=16M]"
    ));
    assert!(text.contains(
        "\tRegion 2: Memory at <unassigned> (64-bit, prefetchable) [disabled] [size=256M]"
    ));
}
