//! PCI Express Capability of an endpoint with a x1 2.5 GT/s link
//! (PCI Express Base 4.0 §7.5.3). Slot and root registers are not implemented by an
//! endpoint and read 0.

use crate::block::RegisterBlock;
use crate::regs::CAP_ID_PCIE;

/// PCI Express Base 4.0 §7.5.3.2 PCI Express Capabilities Register offset.
pub const CAPABILITIES: usize = 0x02;
/// PCI Express Base 4.0 §7.5.3.3 Device Capabilities Register offset.
pub const DEVICE_CAPABILITIES: usize = 0x04;
/// PCI Express Base 4.0 §7.5.3.4 Device Control Register offset.
pub const DEVICE_CONTROL: usize = 0x08;
/// PCI Express Base 4.0 §7.5.3.5 Device Status Register offset.
pub const DEVICE_STATUS: usize = 0x0a;
/// PCI Express Base 4.0 §7.5.3.6 Link Capabilities Register offset.
pub const LINK_CAPABILITIES: usize = 0x0c;
/// PCI Express Base 4.0 §7.5.3.7 Link Control Register offset.
pub const LINK_CONTROL: usize = 0x10;
/// PCI Express Base 4.0 §7.5.3.8 Link Status Register offset.
pub const LINK_STATUS: usize = 0x12;
/// PCI Express Base 4.0 §7.5.3.15 Device Capabilities 2 Register offset.
pub const DEVICE_CAPABILITIES2: usize = 0x24;
/// PCI Express Base 4.0 §7.5.3.16 Device Control 2 Register offset.
pub const DEVICE_CONTROL2: usize = 0x28;
/// PCI Express Base 4.0 §7.5.3.18 Link Capabilities 2 Register offset.
pub const LINK_CAPABILITIES2: usize = 0x2c;
/// PCI Express Base 4.0 §7.5.3.19 Link Control 2 Register offset.
pub const LINK_CONTROL2: usize = 0x30;
/// Length of a version 2 capability structure.
pub const LEN: usize = 0x3c;

/// PCI Express Base 4.0 §7.5.3.2: Capability Version field (bits 3:0) = 2.
pub const CAP_VERSION_2: u16 = 0x2;
/// PCI Express Base 4.0 §7.5.3.2: Device/Port Type (bits 7:4) 0000b, PCI Express Endpoint.
pub const CAP_TYPE_ENDPOINT: u16 = 0x0 << 4;
/// PCI Express Base 4.0 §7.5.3.2: Device/Port Type field mask.
pub const CAP_TYPE_MASK: u16 = 0xf << 4;

/// PCI Express Base 4.0 §7.5.3.3 Device Capabilities: Max_Payload_Size Supported (2:0),
/// 000b = 128 bytes.
pub const DEVCAP_MPS_128: u32 = 0b000;
/// PCI Express Base 4.0 §7.5.3.3 Device Capabilities: Extended Tag Field Supported.
pub const DEVCAP_EXT_TAG: u32 = 1 << 5;
/// PCI Express Base 4.0 §7.5.3.3 Device Capabilities: Role-Based Error Reporting.
pub const DEVCAP_RBER: u32 = 1 << 15;
/// PCI Express Base 4.0 §7.5.3.3 Device Capabilities: Function Level Reset Capability
/// (not advertised).
pub const DEVCAP_FLR: u32 = 1 << 28;

/// PCI Express Base 4.0 §7.5.3.4 Device Control: Correctable Error Reporting Enable.
pub const DEVCTL_CORR_ERR: u16 = 1 << 0;
/// PCI Express Base 4.0 §7.5.3.4 Device Control: Non-Fatal Error Reporting Enable.
pub const DEVCTL_NONFATAL_ERR: u16 = 1 << 1;
/// PCI Express Base 4.0 §7.5.3.4 Device Control: Fatal Error Reporting Enable.
pub const DEVCTL_FATAL_ERR: u16 = 1 << 2;
/// PCI Express Base 4.0 §7.5.3.4 Device Control: Unsupported Request Reporting Enable.
pub const DEVCTL_UNSUP_REQ: u16 = 1 << 3;
/// PCI Express Base 4.0 §7.5.3.4 Device Control: Enable Relaxed Ordering.
pub const DEVCTL_RELAXED_ORDERING: u16 = 1 << 4;
/// PCI Express Base 4.0 §7.5.3.4 Device Control: Max_Payload_Size field (bits 7:5).
pub const DEVCTL_MPS_MASK: u16 = 0b111 << 5;
/// PCI Express Base 4.0 §7.5.3.4 Device Control: Extended Tag Field Enable.
pub const DEVCTL_EXT_TAG: u16 = 1 << 8;
/// PCI Express Base 4.0 §7.5.3.4 Device Control: Enable No Snoop.
pub const DEVCTL_NO_SNOOP: u16 = 1 << 11;
/// PCI Express Base 4.0 §7.5.3.4 Device Control: Max_Read_Request_Size field (14:12).
pub const DEVCTL_MRRS_MASK: u16 = 0b111 << 12;
/// PCI Express Base 4.0 §7.5.3.4 Device Control: Max_Read_Request_Size 010b = 512 bytes.
pub const DEVCTL_MRRS_512: u16 = 0b010 << 12;
/// Device Control bits the guest may change (no phantom functions, AUX power or FLR).
pub const DEVCTL_WRITABLE: u16 = DEVCTL_CORR_ERR
    | DEVCTL_NONFATAL_ERR
    | DEVCTL_FATAL_ERR
    | DEVCTL_UNSUP_REQ
    | DEVCTL_RELAXED_ORDERING
    | DEVCTL_MPS_MASK
    | DEVCTL_EXT_TAG
    | DEVCTL_NO_SNOOP
    | DEVCTL_MRRS_MASK;

/// PCI Express Base 4.0 §7.5.3.5 Device Status: Correctable Error Detected (RW1C).
pub const DEVSTA_CORR_ERR: u16 = 1 << 0;
/// PCI Express Base 4.0 §7.5.3.5 Device Status: Non-Fatal Error Detected (RW1C).
pub const DEVSTA_NONFATAL_ERR: u16 = 1 << 1;
/// PCI Express Base 4.0 §7.5.3.5 Device Status: Fatal Error Detected (RW1C).
pub const DEVSTA_FATAL_ERR: u16 = 1 << 2;
/// PCI Express Base 4.0 §7.5.3.5 Device Status: Unsupported Request Detected (RW1C).
pub const DEVSTA_UNSUP_REQ: u16 = 1 << 3;
/// Device Status write-1-to-clear bits.
pub const DEVSTA_W1C: u16 =
    DEVSTA_CORR_ERR | DEVSTA_NONFATAL_ERR | DEVSTA_FATAL_ERR | DEVSTA_UNSUP_REQ;

/// PCI Express Base 4.0 §7.5.3.6 Link Capabilities: Max Link Speed (3:0), 0001b = 2.5 GT/s.
pub const LNKCAP_SPEED_2_5GT: u32 = 0x1;
/// PCI Express Base 4.0 §7.5.3.6 Link Capabilities: Maximum Link Width (9:4) = x1.
pub const LNKCAP_WIDTH_X1: u32 = 0x1 << 4;

/// PCI Express Base 4.0 §7.5.3.7 Link Control: ASPM Control field (bits 1:0).
pub const LNKCTL_ASPM_MASK: u16 = 0b11;
/// PCI Express Base 4.0 §7.5.3.7 Link Control: Common Clock Configuration.
pub const LNKCTL_COMMON_CLOCK: u16 = 1 << 6;
/// PCI Express Base 4.0 §7.5.3.7 Link Control: Extended Synch.
pub const LNKCTL_EXTENDED_SYNCH: u16 = 1 << 7;
/// Link Control bits the guest may change.
pub const LNKCTL_WRITABLE: u16 = LNKCTL_ASPM_MASK | LNKCTL_COMMON_CLOCK | LNKCTL_EXTENDED_SYNCH;

/// PCI Express Base 4.0 §7.5.3.8 Link Status: Current Link Speed 0001b (2.5 GT/s) and
/// Negotiated Link Width x1 (bits 9:4).
pub const LNKSTA_2_5GT_X1: u16 = 0x1 | (0x1 << 4);

/// PCI Express Base 4.0 §7.5.3.15 Device Capabilities 2: Completion Timeout Ranges
/// Supported (3:0), ranges A-D.
pub const DEVCAP2_COMPLETION_TIMEOUT_RANGES: u32 = 0xf;
/// PCI Express Base 4.0 §7.5.3.15 Device Capabilities 2: Completion Timeout Disable Supported.
pub const DEVCAP2_COMPLETION_TIMEOUT_DISABLE: u32 = 1 << 4;
/// PCI Express Base 4.0 §7.5.3.15 Device Capabilities 2: LTR Mechanism Supported.
pub const DEVCAP2_LTR: u32 = 1 << 11;

/// PCI Express Base 4.0 §7.5.3.16 Device Control 2: Completion Timeout Value (3:0).
pub const DEVCTL2_COMPLETION_TIMEOUT_MASK: u16 = 0xf;
/// PCI Express Base 4.0 §7.5.3.16 Device Control 2: Completion Timeout Disable.
pub const DEVCTL2_COMPLETION_TIMEOUT_DISABLE: u16 = 1 << 4;
/// PCI Express Base 4.0 §7.5.3.16 Device Control 2: LTR Mechanism Enable.
pub const DEVCTL2_LTR_ENABLE: u16 = 1 << 10;
/// Device Control 2 bits the guest may change.
pub const DEVCTL2_WRITABLE: u16 =
    DEVCTL2_COMPLETION_TIMEOUT_MASK | DEVCTL2_COMPLETION_TIMEOUT_DISABLE | DEVCTL2_LTR_ENABLE;

/// PCI Express Base 4.0 §7.5.3.18 Link Capabilities 2: Supported Link Speeds Vector (7:1),
/// bit 1 = 2.5 GT/s.
pub const LNKCAP2_SPEED_2_5GT: u32 = 1 << 1;
/// PCI Express Base 4.0 §7.5.3.19 Link Control 2: Target Link Speed field (bits 3:0).
pub const LNKCTL2_TARGET_SPEED_MASK: u16 = 0xf;

/// Installs the capability at `base` linking to `next`.
pub(crate) fn install(block: &mut RegisterBlock, base: usize, next: u8) {
    block.init(base, 1, u32::from(CAP_ID_PCIE), 0, 0);
    block.init(base + 1, 1, u32::from(next), 0, 0);
    block.init(
        base + CAPABILITIES,
        2,
        u32::from(CAP_VERSION_2 | CAP_TYPE_ENDPOINT),
        0,
        0,
    );
    block.init(
        base + DEVICE_CAPABILITIES,
        4,
        DEVCAP_MPS_128 | DEVCAP_EXT_TAG | DEVCAP_RBER,
        0,
        0,
    );
    block.init(
        base + DEVICE_CONTROL,
        2,
        u32::from(DEVCTL_RELAXED_ORDERING | DEVCTL_NO_SNOOP | DEVCTL_MRRS_512),
        u32::from(DEVCTL_WRITABLE),
        0,
    );
    block.init(base + DEVICE_STATUS, 2, 0, 0, u32::from(DEVSTA_W1C));
    block.init(
        base + LINK_CAPABILITIES,
        4,
        LNKCAP_SPEED_2_5GT | LNKCAP_WIDTH_X1,
        0,
        0,
    );
    block.init(base + LINK_CONTROL, 2, 0, u32::from(LNKCTL_WRITABLE), 0);
    block.init(base + LINK_STATUS, 2, u32::from(LNKSTA_2_5GT_X1), 0, 0);
    block.init(
        base + DEVICE_CAPABILITIES2,
        4,
        DEVCAP2_COMPLETION_TIMEOUT_RANGES | DEVCAP2_COMPLETION_TIMEOUT_DISABLE | DEVCAP2_LTR,
        0,
        0,
    );
    block.init(base + DEVICE_CONTROL2, 2, 0, u32::from(DEVCTL2_WRITABLE), 0);
    block.init(base + LINK_CAPABILITIES2, 4, LNKCAP2_SPEED_2_5GT, 0, 0);
    block.init(
        base + LINK_CONTROL2,
        2,
        0x1,
        u32::from(LNKCTL2_TARGET_SPEED_MASK),
        0,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_v2_with_masks() {
        let mut b = RegisterBlock::new();
        install(&mut b, 0x80, 0);
        assert_eq!(b.u32(0x80), 0x0002_0010);
        assert_eq!(b.u16(0x82) & CAP_TYPE_MASK, CAP_TYPE_ENDPOINT);
        assert_eq!(b.u16(0x88), 0x2810);
        b.guest_write(0x88, &[0xff, 0xff]);
        assert_eq!(b.u16(0x88), DEVCTL_WRITABLE);
        assert_eq!(b.u16(0x88) & 0x8000, 0, "no FLR");
        // Device status: error bits are device-owned and RW1C.
        b.set_device_bits(0x8a, 2, 0xffff, 0x0005);
        assert_eq!(b.u16(0x8a), 0x0005);
        b.guest_write(0x8a, &[0x04, 0x00]);
        assert_eq!(b.u16(0x8a), 0x0001);
        b.guest_write(0x92, &[0xff, 0xff]);
        assert_eq!(b.u16(0x92), LNKSTA_2_5GT_X1, "link status read-only");
        b.guest_write(0xa8, &[0xff, 0xff]);
        assert_eq!(b.u16(0xa8), DEVCTL2_WRITABLE);
    }
}
