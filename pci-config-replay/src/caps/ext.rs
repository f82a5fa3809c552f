//! Extended capabilities in the 4 KiB space (PCI Express Base 4.0 §7.6): a
//! Vendor-Specific Extended Capability naming the simulated vGPU, then Latency Tolerance
//! Reporting; the chain ends with a Next Capability Offset of 0.

use crate::block::RegisterBlock;
use crate::regs::{ext_cap_header, EXT_CAP_ID_LTR, EXT_CAP_ID_VSEC};

/// PCI Express Base 4.0 §7.9.5.2 Vendor-Specific Header offset: VSEC ID (15:0),
/// VSEC Rev (19:16), VSEC Length (31:20).
pub const VSEC_HEADER: usize = 0x04;
/// First vendor-specific data dword: the ASCII tag `vGPU`.
pub const VSEC_TAG: usize = 0x08;
/// Second vendor-specific data dword: the simulated device model revision.
pub const VSEC_MODEL: usize = 0x0c;
/// Length of the vendor-specific capability, headers included.
pub const VSEC_LEN: usize = 0x10;
/// VSEC ID of the simulated vGPU information block.
pub const VSEC_ID_VGPU: u16 = 0x0001;
/// VSEC revision.
pub const VSEC_REV: u8 = 1;
/// Value of the tag dword (`vGPU` little-endian).
pub const VSEC_TAG_VALUE: u32 = u32::from_le_bytes(*b"vGPU");
/// Value of the model dword.
pub const VSEC_MODEL_VALUE: u32 = 1;

/// PCI Express Base 4.0 §7.8.2.2 Max Snoop Latency Register offset.
pub const LTR_MAX_SNOOP: usize = 0x04;
/// PCI Express Base 4.0 §7.8.2.3 Max No-Snoop Latency Register offset.
pub const LTR_MAX_NO_SNOOP: usize = 0x06;
/// Length of the LTR capability.
pub const LTR_LEN: usize = 0x08;
/// PCI Express Base 4.0 §7.8.2.2: Latency Value (9:0) and Latency Scale (12:10) are RW.
pub const LTR_LATENCY_WRITABLE: u16 = 0x1fff;

/// Installs the vendor-specific capability at `base` linking to `next`.
pub(crate) fn install_vsec(block: &mut RegisterBlock, base: usize, next: u16) {
    block.init(base, 4, ext_cap_header(EXT_CAP_ID_VSEC, 1, next), 0, 0);
    let vsec = u32::from(VSEC_ID_VGPU) | (u32::from(VSEC_REV) << 16) | ((VSEC_LEN as u32) << 20);
    block.init(base + VSEC_HEADER, 4, vsec, 0, 0);
    block.init(base + VSEC_TAG, 4, VSEC_TAG_VALUE, 0, 0);
    block.init(base + VSEC_MODEL, 4, VSEC_MODEL_VALUE, 0, 0);
}

/// Installs the LTR capability at `base` linking to `next`.
pub(crate) fn install_ltr(block: &mut RegisterBlock, base: usize, next: u16) {
    block.init(base, 4, ext_cap_header(EXT_CAP_ID_LTR, 1, next), 0, 0);
    block.init(
        base + LTR_MAX_SNOOP,
        2,
        0,
        u32::from(LTR_LATENCY_WRITABLE),
        0,
    );
    block.init(
        base + LTR_MAX_NO_SNOOP,
        2,
        0,
        u32::from(LTR_LATENCY_WRITABLE),
        0,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vsec_and_ltr_layout() {
        let mut b = RegisterBlock::new();
        install_vsec(&mut b, 0x100, 0x110);
        install_ltr(&mut b, 0x110, 0);
        assert_eq!(b.u32(0x100), 0x1101_000b);
        assert_eq!(b.u32(0x104), 0x0101_0001);
        assert_eq!(&b.bytes()[0x108..0x10c], b"vGPU");
        assert_eq!(b.u32(0x110), 0x0001_0018);
        b.guest_write(0x114, &[0xff; 4]);
        assert_eq!(b.u32(0x114), 0x1fff_1fff);
        b.guest_write(0x108, &[0; 4]);
        assert_eq!(b.u32(0x108), VSEC_TAG_VALUE, "vendor data is read-only");
    }
}
