//! The device's PCI identity, its BAR0 register map and the line's byte transform.
//!
//! ```text
//!  BAR0 (4 KiB, 64-bit, non-prefetchable)      BAR2 (4 KiB, 64-bit, prefetchable)
//!  0x000 ID        RO  "SER1"                   0x000..0x1000 scratch RAM, read/write,
//!  0x004 TX        WO  byte -> TX FIFO                         any width (migrated)
//!  0x008 RX        RO  pops the RX FIFO (0 if empty)
//!  0x00c LSR       RO  DR | OE | THRE | TEMT (OE cleared by the read)
//!  0x010 IER       RW  bit 0: interrupt on received data
//!  0x014 ISR       RW1C bit 0: received data latched (the pending-interrupt latch)
//!  0x018 KEY       RW  low byte: transform key
//!  0x01c TX_COUNT  RO  bytes accepted into the TX FIFO since reset
//!  0x020 RX_COUNT  RO  bytes the line moved into the RX FIFO since reset
//!  0x024 RX_LEVEL  RO  bytes in the RX FIFO
//!  0x028 TX_LEVEL  RO  bytes in the TX FIFO
//!  0x800 MSI-X table (1 vector), 0xc00 MSI-X PBA
//! ```
//!
//! The line (advanced by the platform, one byte per unit of work) takes the TX FIFO's head,
//! while the RX FIFO has room, and delivers [`transform`]`(byte, KEY, RX_COUNT)`: what the
//! guest reads back depends on device state (the key and the byte counter), so a migration
//! that lost either would show in the guest's log.

use pci_config_replay::ConfigParams;

/// PCI vendor ID (Red Hat's, as QEMU's emulated devices use).
pub const VENDOR_ID: u16 = 0x1b36;
/// PCI device ID (QEMU's `pci-serial` ID).
pub const DEVICE_ID: u16 = 0x0002;
/// Size of BAR0 (registers and MSI-X).
pub const BAR0_SIZE: u64 = 4096;
/// Size of BAR2 (scratch memory).
pub const BAR2_SIZE: u64 = 4096;
/// MSI-X vectors.
pub const MSIX_VECTORS: u16 = 1;
/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u64 = 0x800;
/// Offset of the MSI-X PBA in BAR0.
pub const MSIX_PBA_OFFSET: u64 = 0xc00;

/// Register: identification, reads [`ID_VALUE`].
pub const REG_ID: u64 = 0x00;
/// Register: transmit holding register (write a byte).
pub const REG_TX: u64 = 0x04;
/// Register: receive buffer (read pops a byte).
pub const REG_RX: u64 = 0x08;
/// Register: line status.
pub const REG_LSR: u64 = 0x0c;
/// Register: interrupt enable.
pub const REG_IER: u64 = 0x10;
/// Register: interrupt status (write 1 to clear).
pub const REG_ISR: u64 = 0x14;
/// Register: transform key.
pub const REG_KEY: u64 = 0x18;
/// Register: bytes accepted for transmission.
pub const REG_TX_COUNT: u64 = 0x1c;
/// Register: bytes received.
pub const REG_RX_COUNT: u64 = 0x20;
/// Register: RX FIFO level.
pub const REG_RX_LEVEL: u64 = 0x24;
/// Register: TX FIFO level.
pub const REG_TX_LEVEL: u64 = 0x28;
/// End of the register block.
pub const REGS_END: u64 = 0x2c;

/// What [`REG_ID`] reads.
pub const ID_VALUE: u32 = u32::from_le_bytes(*b"SER1");

/// LSR: data ready (the RX FIFO holds a byte).
pub const LSR_DR: u32 = 1 << 0;
/// LSR: overrun (a TX write found the TX FIFO full; the byte was dropped). Cleared on read.
pub const LSR_OE: u32 = 1 << 1;
/// LSR: the TX FIFO has room.
pub const LSR_THRE: u32 = 1 << 5;
/// LSR: the TX FIFO is empty.
pub const LSR_TEMT: u32 = 1 << 6;

/// IER/ISR: received data.
pub const INT_RX: u32 = 1 << 0;
/// Every interrupt bit.
pub const INT_ALL: u32 = INT_RX;

/// Depth of the TX FIFO.
pub const TX_DEPTH: usize = 16;
/// Depth of the RX FIFO.
pub const RX_DEPTH: usize = 32;

/// The byte the line delivers for `byte`, the `seq`-th byte it carries, under `key`.
pub fn transform(byte: u8, key: u8, seq: u64) -> u8 {
    (byte ^ key).rotate_left(3).wrapping_add(seq as u8)
}

/// The device's PCI config parameters.
pub fn config_params() -> ConfigParams {
    ConfigParams {
        vendor_id: VENDOR_ID,
        device_id: DEVICE_ID,
        subsystem_vendor_id: VENDOR_ID,
        subsystem_id: 0x0100,
        revision: 0x01,
        bar0_size: BAR0_SIZE,
        bar2_size: BAR2_SIZE,
        msix_table_size: MSIX_VECTORS,
        msix_table_offset: MSIX_TABLE_OFFSET,
        msix_pba_offset: MSIX_PBA_OFFSET,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_are_valid_and_transform_depends_on_key_and_seq() {
        assert_eq!(config_params().validate(), Ok(()));
        assert_ne!(transform(0x41, 0, 0), transform(0x41, 1, 0));
        assert_ne!(transform(0x41, 0, 0), transform(0x41, 0, 1));
        assert_eq!(
            transform(0x41, 0x10, 5),
            (0x51u8).rotate_left(3).wrapping_add(5)
        );
    }
}
