//! MSI capability: one vector, 64-bit address, per-vector masking
//! (PCI Express Base 4.0 §7.7.1; PCI Local Bus 3.0 §6.8.1).

use crate::block::RegisterBlock;
use crate::regs::CAP_ID_MSI;

/// PCI Express Base 4.0 §7.7.1.2 Message Control Register for MSI offset.
pub const CONTROL: usize = 0x02;
/// PCI Express Base 4.0 §7.7.1.3 Message Address Register for MSI offset (bits 31:2).
pub const ADDRESS_LO: usize = 0x04;
/// PCI Express Base 4.0 §7.7.1.4 Message Upper Address Register for MSI offset.
pub const ADDRESS_HI: usize = 0x08;
/// PCI Express Base 4.0 §7.7.1.5 Message Data Register for MSI offset (64-bit layout).
pub const DATA: usize = 0x0c;
/// PCI Express Base 4.0 §7.7.1.6 Extended Message Data Register (not supported: 0).
pub const EXT_DATA: usize = 0x0e;
/// PCI Express Base 4.0 §7.7.1.7 Mask Bits Register for MSI offset (64-bit layout).
pub const MASK_BITS: usize = 0x10;
/// PCI Express Base 4.0 §7.7.1.8 Pending Bits Register for MSI offset (64-bit layout).
pub const PENDING_BITS: usize = 0x14;
/// Length of the 64-bit, per-vector-maskable capability structure.
pub const LEN: usize = 0x18;

/// PCI Express Base 4.0 §7.7.1.2 Message Control: MSI Enable.
pub const CTL_ENABLE: u16 = 1 << 0;
/// PCI Express Base 4.0 §7.7.1.2 Message Control: Multiple Message Capable (bits 3:1);
/// 000b = one vector.
pub const CTL_MMC_MASK: u16 = 0b111 << 1;
/// PCI Express Base 4.0 §7.7.1.2 Message Control: Multiple Message Enable (bits 6:4).
/// With one vector capable the only legal value is 000b, so the field is hardwired.
pub const CTL_MME_MASK: u16 = 0b111 << 4;
/// PCI Express Base 4.0 §7.7.1.2 Message Control: 64 bit address capable.
pub const CTL_64BIT: u16 = 1 << 7;
/// PCI Express Base 4.0 §7.7.1.2 Message Control: Per-Vector Masking Capable.
pub const CTL_PER_VECTOR_MASK: u16 = 1 << 8;
/// PCI Express Base 4.0 §7.7.1.3 Message Address: bits 1:0 are reserved (DWORD aligned).
pub const ADDRESS_LO_WRITABLE: u32 = 0xffff_fffc;
/// PCI Express Base 4.0 §7.7.1.7 Mask Bits: bit 0 masks vector 0 (the only vector).
pub const MASK_VECTOR0: u32 = 1 << 0;
/// PCI Express Base 4.0 §7.7.1.8 Pending Bits: bit 0, vector 0 has a pending message.
pub const PENDING_VECTOR0: u32 = 1 << 0;
/// Number of MSI vectors this function supports.
pub const VECTORS: u16 = 1;

/// What the MSI capability currently says, as the VMM needs it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiConfig {
    /// MSI Enable.
    pub enabled: bool,
    /// Message address (64-bit).
    pub address: u64,
    /// Message data.
    pub data: u32,
    /// Vector 0 mask bit.
    pub masked: bool,
    /// Vector 0 pending bit.
    pub pending: bool,
}

/// Installs the capability at `base` linking to `next`; the pending bit is device-owned.
pub(crate) fn install(block: &mut RegisterBlock, base: usize, next: u8) {
    block.init(base, 1, u32::from(CAP_ID_MSI), 0, 0);
    block.init(base + 1, 1, u32::from(next), 0, 0);
    block.init(
        base + CONTROL,
        2,
        u32::from(CTL_64BIT | CTL_PER_VECTOR_MASK),
        u32::from(CTL_ENABLE),
        0,
    );
    block.init(base + ADDRESS_LO, 4, 0, ADDRESS_LO_WRITABLE, 0);
    block.init(base + ADDRESS_HI, 4, 0, u32::MAX, 0);
    block.init(base + DATA, 2, 0, 0xffff, 0);
    block.init(base + MASK_BITS, 4, 0, MASK_VECTOR0, 0);
    block.init(base + PENDING_BITS, 4, 0, 0, 0);
    block.mark_device_owned(base + PENDING_BITS, 4, PENDING_VECTOR0);
}

/// Reads the capability.
pub(crate) fn config(block: &RegisterBlock, base: usize) -> MsiConfig {
    let lo = u64::from(block.u32(base + ADDRESS_LO));
    let hi = u64::from(block.u32(base + ADDRESS_HI));
    MsiConfig {
        enabled: block.u16(base + CONTROL) & CTL_ENABLE != 0,
        address: (hi << 32) | lo,
        data: u32::from(block.u16(base + DATA)),
        masked: block.u32(base + MASK_BITS) & MASK_VECTOR0 != 0,
        pending: block.u32(base + PENDING_BITS) & PENDING_VECTOR0 != 0,
    }
}

/// Device-side update of the vector 0 pending bit.
pub(crate) fn set_pending(block: &mut RegisterBlock, base: usize, pending: bool) {
    let bits = if pending { PENDING_VECTOR0 } else { 0 };
    block.set_device_bits(base + PENDING_BITS, 4, PENDING_VECTOR0, bits);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_and_view() {
        let mut b = RegisterBlock::new();
        install(&mut b, 0x50, 0x70);
        assert_eq!(b.u32(0x50), 0x0180_7005);
        b.guest_write(0x52, &[0xff, 0xff]);
        assert_eq!(b.u16(0x52), 0x0181, "only enable is writable");
        b.guest_write(0x54, &[0xff, 0x00, 0xe0, 0xfe]);
        b.guest_write(0x58, &[0x01, 0, 0, 0]);
        b.guest_write(0x5c, &[0x21, 0x40]);
        b.guest_write(0x5e, &[0xff, 0xff]);
        b.guest_write(0x60, &[0xff; 4]);
        b.guest_write(0x64, &[0xff; 4]);
        let c = config(&b, 0x50);
        assert_eq!(
            c,
            MsiConfig {
                enabled: true,
                address: 0x1_fee0_00fc,
                data: 0x4021,
                masked: true,
                pending: false,
            }
        );
        assert_eq!(b.u16(0x5e), 0, "extended message data is not supported");
        set_pending(&mut b, 0x50, true);
        assert!(config(&b, 0x50).pending);
        assert_eq!(b.u32(0x64), 1);
        set_pending(&mut b, 0x50, false);
        assert!(!config(&b, 0x50).pending);
    }
}
