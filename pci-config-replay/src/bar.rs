//! Base Address Registers: layout, masks (which make sizing work) and decoding.
//!
//! Sizing needs no special case: the writable mask of a BAR holds exactly the address bits
//! above its size, so writing all ones and reading back yields the size mask with the
//! read-only type bits below it (PCI Local Bus 3.0 §6.2.5.1 Address Maps).

use crate::block::RegisterBlock;
use crate::params::ConfigParams;
use crate::regs::{BAR0, BAR_COUNT, BAR_MEM_INFO_MASK, BAR_MEM_PREFETCHABLE, BAR_MEM_TYPE_64};

/// One implemented 64-bit memory BAR: a pair of BAR registers (`index`, `index + 1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BarSlot {
    /// BAR number of the low dword (0 or 2).
    pub index: u8,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Whether the region is prefetchable.
    pub prefetchable: bool,
}

impl BarSlot {
    /// Offset of the low dword in configuration space.
    pub fn offset(&self) -> usize {
        BAR0 + 4 * usize::from(self.index)
    }

    /// The read-only type bits of the low dword: 64-bit memory, maybe prefetchable.
    pub fn type_bits(&self) -> u32 {
        BAR_MEM_TYPE_64
            | if self.prefetchable {
                BAR_MEM_PREFETCHABLE
            } else {
                0
            }
    }

    /// Writable mask of the 64-bit address: every bit above the size.
    pub fn address_mask(&self) -> u64 {
        !(self.size.wrapping_sub(1)) & !u64::from(BAR_MEM_INFO_MASK)
    }

    /// Installs the register pair with its type bits and masks (address 0).
    pub(crate) fn install(&self, block: &mut RegisterBlock) {
        let mask = self.address_mask();
        block.init(self.offset(), 4, self.type_bits(), mask as u32, 0);
        block.init(self.offset() + 4, 4, 0, (mask >> 32) as u32, 0);
    }

    /// The programmed 64-bit address, whether or not memory decode is on.
    pub(crate) fn address(&self, block: &RegisterBlock) -> u64 {
        let lo = u64::from(block.u32(self.offset()) & !BAR_MEM_INFO_MASK);
        let hi = u64::from(block.u32(self.offset() + 4));
        (hi << 32) | lo
    }

    /// The address the BAR decodes at: `None` when memory decode is off or the BAR is not
    /// programmed (address 0, or the all-ones sizing pattern).
    pub(crate) fn decode(&self, block: &RegisterBlock, memory_enabled: bool) -> Option<u64> {
        let addr = self.address(block);
        (memory_enabled && addr != 0 && addr != self.address_mask()).then_some(addr)
    }
}

/// The BARs a device built from `params` implements: BAR0 (64-bit, non-prefetchable
/// MMIO + GTT) and BAR2 (64-bit, prefetchable aperture). BAR1, BAR3 are their high dwords;
/// BAR4, BAR5 and the expansion ROM are not implemented and read 0.
pub fn bar_slots(params: &ConfigParams) -> [BarSlot; 2] {
    [
        BarSlot {
            index: 0,
            size: params.bar0_size,
            prefetchable: false,
        },
        BarSlot {
            index: 2,
            size: params.bar2_size,
            prefetchable: true,
        },
    ]
}

/// Size of every BAR register by BAR number (0 for high dwords and unimplemented BARs).
pub fn bar_sizes(params: &ConfigParams) -> [u64; BAR_COUNT] {
    let mut sizes = [0; BAR_COUNT];
    for slot in bar_slots(params) {
        if let Some(s) = sizes.get_mut(usize::from(slot.index)) {
            *s = slot.size;
        }
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block_with_bars(params: &ConfigParams) -> (RegisterBlock, [BarSlot; 2]) {
        let mut b = RegisterBlock::new();
        let slots = bar_slots(params);
        for s in &slots {
            s.install(&mut b);
        }
        (b, slots)
    }

    #[test]
    fn sizing_64bit_low_and_high_dwords() {
        let p = ConfigParams::default();
        let (mut b, [bar0, bar2]) = block_with_bars(&p);
        assert_eq!(b.u32(0x10), 0x4);
        assert_eq!(b.u32(0x18), 0xc);
        for off in [0x10, 0x14, 0x18, 0x1c] {
            b.guest_write(off, &[0xff; 4]);
        }
        // 16 MiB non-prefetchable 64-bit: size mask in bits 31:24, type bits 0x4 kept.
        assert_eq!(b.u32(0x10), 0xff00_0004);
        assert_eq!(b.u32(0x14), 0xffff_ffff);
        // 256 MiB prefetchable 64-bit.
        assert_eq!(b.u32(0x18), 0xf000_000c);
        assert_eq!(b.u32(0x1c), 0xffff_ffff);
        // Size as software computes it.
        let size0 = !(u64::from(b.u32(0x14)) << 32 | u64::from(b.u32(0x10) & !0xf)) + 1;
        assert_eq!(size0, bar0.size);
        assert_eq!(
            bar0.decode(&b, true),
            None,
            "sizing pattern is not an address"
        );
        assert_eq!(bar2.decode(&b, true), None);
    }

    #[test]
    fn type_bits_are_read_only() {
        let p = ConfigParams::default();
        let (mut b, _) = block_with_bars(&p);
        b.guest_write(0x10, &[0x00, 0x00, 0x00, 0x00]);
        assert_eq!(b.u32(0x10), 0x4);
        b.guest_write(0x18, &[0x03, 0x00, 0x00, 0x00]);
        assert_eq!(b.u32(0x18), 0xc);
        b.guest_write(0x10, &[0x0f, 0xff, 0x00, 0xe0]);
        assert_eq!(
            b.u32(0x10),
            0xe000_0004,
            "bits below 16 MiB are read-only 0"
        );
    }

    #[test]
    fn large_bar_uses_high_dword_mask() {
        let p = ConfigParams {
            bar2_size: 8 << 30,
            ..Default::default()
        };
        let (mut b, [_, bar2]) = block_with_bars(&p);
        b.guest_write(0x18, &[0xff; 4]);
        b.guest_write(0x1c, &[0xff; 4]);
        assert_eq!(b.u32(0x18), 0x0000_000c);
        assert_eq!(b.u32(0x1c), 0xffff_fffe);
        b.guest_write(0x18, &[0; 4]);
        b.guest_write(0x1c, &[0x04, 0, 0, 0]);
        assert_eq!(bar2.decode(&b, true), Some(0x4_0000_0000));
        assert_eq!(bar2.decode(&b, false), None);
    }

    #[test]
    fn decode_needs_programmed_address() {
        let p = ConfigParams::default();
        let (mut b, [bar0, _]) = block_with_bars(&p);
        assert_eq!(bar0.decode(&b, true), None);
        b.guest_write(0x10, &0xde00_0000u32.to_le_bytes());
        assert_eq!(bar0.address(&b), 0xde00_0000);
        assert_eq!(bar0.decode(&b, true), Some(0xde00_0000));
    }

    #[test]
    fn sizes_by_bar_number() {
        let p = ConfigParams::default();
        assert_eq!(bar_sizes(&p), [16 << 20, 0, 256 << 20, 0, 0, 0]);
    }
}
