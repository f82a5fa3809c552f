//! Register storage: the 4 KiB of configuration bytes and their masks.
//!
//! Every byte has three masks, fixed when the device is built:
//! - `writable`: bits the guest sets with `(old & !mask) | (value & mask)`;
//! - `w1c`: write-1-to-clear bits; the guest clears them by writing 1, and writing 0 keeps them;
//! - `device`: bits only the device sets (interrupt status, pending bits, and the w1c error
//!   flags). They are state but not guest-writable, so a restore copies them directly.
//!
//! Every other bit is read-only and fixed by the device model.

use crate::regs::CONFIG_SPACE_SIZE;

/// The configuration bytes and their masks. All accessors bounds-check and never panic.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct RegisterBlock {
    bytes: Box<[u8; CONFIG_SPACE_SIZE]>,
    writable: Box<[u8; CONFIG_SPACE_SIZE]>,
    w1c: Box<[u8; CONFIG_SPACE_SIZE]>,
    device: Box<[u8; CONFIG_SPACE_SIZE]>,
}

impl std::fmt::Debug for RegisterBlock {
    /// Only the header's first bytes: the full dump is [`crate::ConfigSpace::lspci_hex`].
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisterBlock")
            .field(
                "id",
                &format_args!("{:04x}:{:04x}", self.u16(0), self.u16(2)),
            )
            .field("command", &format_args!("{:#06x}", self.u16(4)))
            .field("status", &format_args!("{:#06x}", self.u16(6)))
            .finish_non_exhaustive()
    }
}

/// Applies one guest write to one byte under its masks.
pub(crate) const fn masked_byte(old: u8, value: u8, writable: u8, w1c: u8) -> u8 {
    let writable = writable & !w1c;
    (old & !(writable | w1c)) | (value & writable) | (old & w1c & !value)
}

impl RegisterBlock {
    /// An all-zero block with every bit read-only.
    pub(crate) fn new() -> Self {
        Self {
            bytes: Box::new([0; CONFIG_SPACE_SIZE]),
            writable: Box::new([0; CONFIG_SPACE_SIZE]),
            w1c: Box::new([0; CONFIG_SPACE_SIZE]),
            device: Box::new([0; CONFIG_SPACE_SIZE]),
        }
    }

    /// The raw bytes.
    pub(crate) fn bytes(&self) -> &[u8; CONFIG_SPACE_SIZE] {
        &self.bytes
    }

    fn get_le(arr: &[u8; CONFIG_SPACE_SIZE], offset: usize, len: usize) -> u32 {
        let mut value = 0u32;
        for i in (0..len.min(4)).rev() {
            let byte = offset
                .checked_add(i)
                .and_then(|o| arr.get(o))
                .copied()
                .unwrap_or(0);
            value = (value << 8) | u32::from(byte);
        }
        value
    }

    fn set_le(arr: &mut [u8; CONFIG_SPACE_SIZE], offset: usize, len: usize, value: u32) {
        for i in 0..len.min(4) {
            if let Some(b) = offset.checked_add(i).and_then(|o| arr.get_mut(o)) {
                *b = (value >> (8 * i)) as u8;
            }
        }
    }

    /// Reads `len` (1, 2 or 4) bytes little-endian; bytes outside the block read 0.
    pub(crate) fn read(&self, offset: usize, len: usize) -> u32 {
        Self::get_le(&self.bytes, offset, len)
    }

    /// Reads one byte.
    pub(crate) fn u8(&self, offset: usize) -> u8 {
        self.read(offset, 1) as u8
    }

    /// Reads a 16-bit register.
    pub(crate) fn u16(&self, offset: usize) -> u16 {
        self.read(offset, 2) as u16
    }

    /// Reads a 32-bit register.
    pub(crate) fn u32(&self, offset: usize) -> u32 {
        self.read(offset, 4)
    }

    /// The writable mask of `len` bytes at `offset`.
    pub(crate) fn writable_mask(&self, offset: usize, len: usize) -> u32 {
        Self::get_le(&self.writable, offset, len)
    }

    /// The write-1-to-clear mask of `len` bytes at `offset`.
    pub(crate) fn w1c_mask(&self, offset: usize, len: usize) -> u32 {
        Self::get_le(&self.w1c, offset, len)
    }

    /// The device-owned mask of `len` bytes at `offset`.
    pub(crate) fn device_mask(&self, offset: usize, len: usize) -> u32 {
        Self::get_le(&self.device, offset, len)
    }

    /// Bits of `len` bytes at `offset` that neither the guest nor the device ever changes.
    pub(crate) fn read_only_mask(&self, offset: usize, len: usize) -> u32 {
        let all = if len >= 4 {
            u32::MAX
        } else {
            (1u32 << (8 * len)) - 1
        };
        all & !(self.writable_mask(offset, len)
            | self.w1c_mask(offset, len)
            | self.device_mask(offset, len))
    }

    /// Device-side initialisation of a register: its reset value and its masks.
    /// `w1c` bits are also device-owned (the device sets them, the guest clears them).
    pub(crate) fn init(&mut self, offset: usize, len: usize, value: u32, writable: u32, w1c: u32) {
        Self::set_le(&mut self.bytes, offset, len, value);
        Self::set_le(&mut self.writable, offset, len, writable & !w1c);
        Self::set_le(&mut self.w1c, offset, len, w1c);
        let device = Self::get_le(&self.device, offset, len) | w1c;
        Self::set_le(&mut self.device, offset, len, device);
    }

    /// Marks bits as device-owned status (set by the device, read-only to the guest).
    pub(crate) fn mark_device_owned(&mut self, offset: usize, len: usize, mask: u32) {
        let device = Self::get_le(&self.device, offset, len) | mask;
        Self::set_le(&mut self.device, offset, len, device);
    }

    /// Device-side update of device-owned bits: `bits & mask` replace the current bits
    /// under `mask & device_mask`. Other bits are untouched.
    pub(crate) fn set_device_bits(&mut self, offset: usize, len: usize, mask: u32, bits: u32) {
        let mask = mask & self.device_mask(offset, len);
        let old = self.read(offset, len);
        Self::set_le(&mut self.bytes, offset, len, (old & !mask) | (bits & mask));
    }

    /// Guest write of `data` at `offset` through the masks. Bytes outside the block are
    /// dropped; the caller has already checked size and alignment.
    pub(crate) fn guest_write(&mut self, offset: usize, data: &[u8]) {
        for (i, &value) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i) else {
                return;
            };
            let (Some(old), Some(&w), Some(&c)) =
                (self.bytes.get(o), self.writable.get(o), self.w1c.get(o))
            else {
                return;
            };
            let new = masked_byte(*old, value, w, c);
            if let Some(b) = self.bytes.get_mut(o) {
                *b = new;
            }
        }
    }

    /// Device-side raw store of a register value, ignoring masks (used while building the
    /// device and by post-write fixups that undo an unsupported value).
    pub(crate) fn set_raw(&mut self, offset: usize, len: usize, value: u32) {
        Self::set_le(&mut self.bytes, offset, len, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masked_byte_combines_masks() {
        // writable low nibble, w1c bit 7, bit 6 read-only and set.
        let old = 0b1100_0101;
        assert_eq!(masked_byte(old, 0b0000_1010, 0x0f, 0x80), 0b1100_1010);
        // Writing 1 to the w1c bit clears it; bit 6 stays.
        assert_eq!(masked_byte(old, 0b1000_0101, 0x0f, 0x80), 0b0100_0101);
        // A bit in both masks behaves as w1c only.
        assert_eq!(masked_byte(0x80, 0x00, 0x80, 0x80), 0x80);
        assert_eq!(masked_byte(0x00, 0x80, 0x80, 0x80), 0x00);
    }

    #[test]
    fn read_write_little_endian_and_bounds() {
        let mut b = RegisterBlock::new();
        b.init(0x10, 4, 0x1234_5678, 0xffff_0000, 0);
        assert_eq!(b.u32(0x10), 0x1234_5678);
        assert_eq!(b.u16(0x12), 0x1234);
        assert_eq!(b.u8(0x10), 0x78);
        b.guest_write(0x10, &[0xff, 0xff, 0xaa, 0xbb]);
        assert_eq!(b.u32(0x10), 0xbbaa_5678);
        // Beyond the end: reads 0, writes dropped, no panic.
        assert_eq!(b.u32(CONFIG_SPACE_SIZE - 2), 0);
        b.guest_write(CONFIG_SPACE_SIZE - 1, &[1, 2, 3, 4]);
        b.guest_write(usize::MAX, &[1, 2]);
        assert_eq!(b.read(usize::MAX, 4), 0);
    }

    #[test]
    fn w1c_bits_are_device_owned_and_cleared_by_one() {
        let mut b = RegisterBlock::new();
        b.init(0x06, 2, 0x0010, 0, 0xf900);
        assert_eq!(b.device_mask(0x06, 2), 0xf900);
        assert_eq!(b.read_only_mask(0x06, 2), 0x06ff);
        b.set_device_bits(0x06, 2, 0xffff, 0x8100);
        assert_eq!(b.u16(0x06), 0x8110);
        b.guest_write(0x06, &[0x00, 0x80]);
        assert_eq!(b.u16(0x06), 0x0110);
        b.guest_write(0x06, &[0xff, 0x00]);
        assert_eq!(b.u16(0x06), 0x0110);
    }

    #[test]
    fn set_device_bits_only_touches_device_bits() {
        let mut b = RegisterBlock::new();
        b.init(0x40, 4, 0x0000_0003, 0x0000_00f0, 0);
        b.mark_device_owned(0x40, 4, 0x0000_0100);
        b.set_device_bits(0x40, 4, u32::MAX, u32::MAX);
        assert_eq!(b.u32(0x40), 0x0000_0103);
    }
}
