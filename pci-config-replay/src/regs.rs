//! Type-0 configuration header: register offsets and named bits.
//!
//! Every constant cites the section of the PCI Local Bus Specification 3.0 (or the
//! PCI Express Base Specification 4.0 where PCIe changes the meaning) that defines it.
//! Capability registers live beside their capability in [`crate::caps`].

/// Size of the conventional (PCI-compatible) configuration space.
/// PCI Local Bus 3.0 §6.1 Configuration Space Organization: 256 bytes per function.
pub const CONFIG_SPACE_STD_SIZE: usize = 0x100;
/// Size of the whole configuration space including the extended space.
/// PCI Express Base 4.0 §7.2.2 PCI Express Enhanced Configuration Access Mechanism: 4 KiB.
pub const CONFIG_SPACE_SIZE: usize = 0x1000;

/// PCI Local Bus 3.0 §6.2.1 Device Identification: Vendor ID (16 bits, read-only).
pub const VENDOR_ID: usize = 0x00;
/// PCI Local Bus 3.0 §6.2.1 Device Identification: Device ID (16 bits, read-only).
pub const DEVICE_ID: usize = 0x02;
/// PCI Local Bus 3.0 §6.2.2 Device Control: Command register (16 bits).
pub const COMMAND: usize = 0x04;
/// PCI Local Bus 3.0 §6.2.3 Device Status: Status register (16 bits).
pub const STATUS: usize = 0x06;
/// PCI Local Bus 3.0 §6.2.1 Device Identification: Revision ID (8 bits, read-only).
pub const REVISION_ID: usize = 0x08;
/// PCI Local Bus 3.0 §6.2.1 Device Identification: Class Code, programming interface byte.
pub const CLASS_PROG_IF: usize = 0x09;
/// PCI Local Bus 3.0 §6.2.1 Device Identification: Class Code, sub-class byte.
pub const CLASS_SUBCLASS: usize = 0x0a;
/// PCI Local Bus 3.0 §6.2.1 Device Identification: Class Code, base class byte.
pub const CLASS_BASE: usize = 0x0b;
/// PCI Local Bus 3.0 §6.2.4 Miscellaneous Registers: Cache Line Size (8 bits, read/write).
pub const CACHE_LINE_SIZE: usize = 0x0c;
/// PCI Local Bus 3.0 §6.2.4 Miscellaneous Registers: Latency Timer
/// (PCI Express Base 4.0 §7.5.1.1.7: hardwired to 0).
pub const LATENCY_TIMER: usize = 0x0d;
/// PCI Local Bus 3.0 §6.2.1 Device Identification: Header Type (8 bits, read-only).
pub const HEADER_TYPE: usize = 0x0e;
/// PCI Local Bus 3.0 §6.2.4 Miscellaneous Registers: Built-in Self Test (not implemented: 0).
pub const BIST: usize = 0x0f;
/// PCI Local Bus 3.0 §6.2.5 Base Addresses: first Base Address Register (BAR0).
pub const BAR0: usize = 0x10;
/// Number of Base Address Registers in a type-0 header.
/// PCI Local Bus 3.0 §6.2.5 Base Addresses: offsets 10h through 24h.
pub const BAR_COUNT: usize = 6;
/// PCI Local Bus 3.0 §6.2.4 Miscellaneous Registers: CardBus CIS Pointer (not implemented: 0).
pub const CARDBUS_CIS: usize = 0x28;
/// PCI Local Bus 3.0 §6.2.4 Miscellaneous Registers: Subsystem Vendor ID (16 bits, read-only).
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2c;
/// PCI Local Bus 3.0 §6.2.4 Miscellaneous Registers: Subsystem ID (16 bits, read-only).
pub const SUBSYSTEM_ID: usize = 0x2e;
/// PCI Local Bus 3.0 §6.2.5.2 Expansion ROM Base Address (not implemented: reads 0).
pub const EXPANSION_ROM: usize = 0x30;
/// PCI Local Bus 3.0 §6.7 Capabilities List: Capabilities Pointer (8 bits, read-only).
pub const CAPABILITIES_POINTER: usize = 0x34;
/// PCI Local Bus 3.0 §6.2.4 Miscellaneous Registers: Interrupt Line (8 bits, read/write).
pub const INTERRUPT_LINE: usize = 0x3c;
/// PCI Local Bus 3.0 §6.2.4 Miscellaneous Registers: Interrupt Pin (8 bits, read-only).
pub const INTERRUPT_PIN: usize = 0x3d;
/// PCI Local Bus 3.0 §6.2.4 Miscellaneous Registers: Min_Gnt (PCIe: hardwired to 0).
pub const MIN_GNT: usize = 0x3e;
/// PCI Local Bus 3.0 §6.2.4 Miscellaneous Registers: Max_Lat (PCIe: hardwired to 0).
pub const MAX_LAT: usize = 0x3f;

/// PCI Local Bus 3.0 §6.2.2 Command register: I/O Space enable (legacy VGA ports).
pub const COMMAND_IO_SPACE: u16 = 1 << 0;
/// PCI Local Bus 3.0 §6.2.2 Command register: Memory Space enable.
pub const COMMAND_MEMORY_SPACE: u16 = 1 << 1;
/// PCI Local Bus 3.0 §6.2.2 Command register: Bus Master enable.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;
/// PCI Local Bus 3.0 §6.2.2 Command register: Special Cycles (PCIe: hardwired to 0).
pub const COMMAND_SPECIAL_CYCLES: u16 = 1 << 3;
/// PCI Local Bus 3.0 §6.2.2 Command register: Memory Write and Invalidate enable
/// (PCIe: hardwired to 0).
pub const COMMAND_MWI: u16 = 1 << 4;
/// PCI Local Bus 3.0 §6.2.2 Command register: VGA Palette Snoop (PCIe: hardwired to 0).
pub const COMMAND_VGA_PALETTE_SNOOP: u16 = 1 << 5;
/// PCI Local Bus 3.0 §6.2.2 Command register: Parity Error Response.
pub const COMMAND_PARITY_ERROR_RESPONSE: u16 = 1 << 6;
/// PCI Local Bus 3.0 §6.2.2 Command register: IDSEL stepping (PCIe: hardwired to 0).
pub const COMMAND_STEPPING: u16 = 1 << 7;
/// PCI Local Bus 3.0 §6.2.2 Command register: SERR# enable.
pub const COMMAND_SERR: u16 = 1 << 8;
/// PCI Local Bus 3.0 §6.2.2 Command register: Fast Back-to-Back enable (PCIe: hardwired to 0).
pub const COMMAND_FAST_B2B: u16 = 1 << 9;
/// PCI Local Bus 3.0 §6.2.2 Command register: Interrupt Disable (INTx# assertion disabled).
pub const COMMAND_INTX_DISABLE: u16 = 1 << 10;
/// Command bits the guest may change; every other bit is hardwired to 0.
pub const COMMAND_WRITABLE: u16 = COMMAND_IO_SPACE
    | COMMAND_MEMORY_SPACE
    | COMMAND_BUS_MASTER
    | COMMAND_PARITY_ERROR_RESPONSE
    | COMMAND_SERR
    | COMMAND_INTX_DISABLE;

/// PCI Local Bus 3.0 §6.2.3 Status register: Interrupt Status (INTx# pending, read-only).
pub const STATUS_INTERRUPT: u16 = 1 << 3;
/// PCI Local Bus 3.0 §6.2.3 Status register: Capabilities List present (read-only 1).
pub const STATUS_CAPABILITIES_LIST: u16 = 1 << 4;
/// PCI Local Bus 3.0 §6.2.3 Status register: 66 MHz capable (PCIe: hardwired to 0).
pub const STATUS_66MHZ: u16 = 1 << 5;
/// PCI Local Bus 3.0 §6.2.3 Status register: Fast Back-to-Back capable (PCIe: hardwired to 0).
pub const STATUS_FAST_B2B: u16 = 1 << 7;
/// PCI Local Bus 3.0 §6.2.3 Status register: Master Data Parity Error (write 1 to clear).
pub const STATUS_MASTER_DATA_PARITY_ERROR: u16 = 1 << 8;
/// PCI Local Bus 3.0 §6.2.3 Status register: DEVSEL timing field (PCIe: hardwired to 0).
pub const STATUS_DEVSEL_MASK: u16 = 0b11 << 9;
/// PCI Local Bus 3.0 §6.2.3 Status register: Signaled Target Abort (write 1 to clear).
pub const STATUS_SIGNALED_TARGET_ABORT: u16 = 1 << 11;
/// PCI Local Bus 3.0 §6.2.3 Status register: Received Target Abort (write 1 to clear).
pub const STATUS_RECEIVED_TARGET_ABORT: u16 = 1 << 12;
/// PCI Local Bus 3.0 §6.2.3 Status register: Received Master Abort (write 1 to clear).
pub const STATUS_RECEIVED_MASTER_ABORT: u16 = 1 << 13;
/// PCI Local Bus 3.0 §6.2.3 Status register: Signaled System Error (write 1 to clear).
pub const STATUS_SIGNALED_SYSTEM_ERROR: u16 = 1 << 14;
/// PCI Local Bus 3.0 §6.2.3 Status register: Detected Parity Error (write 1 to clear).
pub const STATUS_DETECTED_PARITY_ERROR: u16 = 1 << 15;
/// Status bits that are write-1-to-clear error flags.
pub const STATUS_W1C: u16 = STATUS_MASTER_DATA_PARITY_ERROR
    | STATUS_SIGNALED_TARGET_ABORT
    | STATUS_RECEIVED_TARGET_ABORT
    | STATUS_RECEIVED_MASTER_ABORT
    | STATUS_SIGNALED_SYSTEM_ERROR
    | STATUS_DETECTED_PARITY_ERROR;

/// PCI Local Bus 3.0 §6.2.1 Device Identification: base class 03h, display controller.
pub const CLASS_DISPLAY: u8 = 0x03;
/// PCI Local Bus 3.0 Appendix D Class Codes: display sub-class 00h, VGA-compatible controller.
pub const SUBCLASS_VGA: u8 = 0x00;
/// PCI Local Bus 3.0 Appendix D Class Codes: VGA-compatible programming interface 00h.
pub const PROG_IF_VGA: u8 = 0x00;
/// The full 24-bit class code of a VGA-compatible display controller (0x030000).
pub const CLASS_CODE_VGA: u32 =
    (CLASS_DISPLAY as u32) << 16 | (SUBCLASS_VGA as u32) << 8 | PROG_IF_VGA as u32;

/// PCI Local Bus 3.0 §6.2.1 Header Type: layout 00h, a type-0 (endpoint) header.
pub const HEADER_TYPE_ENDPOINT: u8 = 0x00;
/// PCI Local Bus 3.0 §6.2.1 Header Type: bit 7 set for a multi-function device.
pub const HEADER_TYPE_MULTIFUNCTION: u8 = 1 << 7;

/// PCI Local Bus 3.0 §6.2.4 Interrupt Pin: value 1 selects INTA#.
pub const INTERRUPT_PIN_INTA: u8 = 0x01;

/// PCI Local Bus 3.0 §6.2.5.1 Address Maps: bit 0 of a BAR, 0 = memory space indicator.
pub const BAR_IO_SPACE: u32 = 1 << 0;
/// PCI Local Bus 3.0 §6.2.5.1 Address Maps: type field (bits 2:1) mask of a memory BAR.
pub const BAR_MEM_TYPE_MASK: u32 = 0b11 << 1;
/// PCI Local Bus 3.0 §6.2.5.1 Address Maps: type 10b, located anywhere in 64-bit space.
pub const BAR_MEM_TYPE_64: u32 = 0b10 << 1;
/// PCI Local Bus 3.0 §6.2.5.1 Address Maps: bit 3, prefetchable memory.
pub const BAR_MEM_PREFETCHABLE: u32 = 1 << 3;
/// PCI Local Bus 3.0 §6.2.5.1 Address Maps: the four low bits of a memory BAR are
/// read-only type information; the address occupies bits 31:4.
pub const BAR_MEM_INFO_MASK: u32 = 0xf;

/// PCI Local Bus 3.0 §6.7 Capabilities List: Power Management capability ID.
pub const CAP_ID_PM: u8 = 0x01;
/// PCI Local Bus 3.0 §6.8.1 MSI Capability Structure: MSI capability ID.
pub const CAP_ID_MSI: u8 = 0x05;
/// PCI Express Base 4.0 §7.5.3.1 PCI Express Capability List Register: capability ID.
pub const CAP_ID_PCIE: u8 = 0x10;
/// PCI Express Base 4.0 §7.7.2.1 MSI-X Capability Header: capability ID.
pub const CAP_ID_MSIX: u8 = 0x11;
/// PCI Local Bus 3.0 §6.7 Capabilities List: the two low bits of a pointer are reserved.
pub const CAP_POINTER_MASK: u8 = 0xfc;

/// PCI Express Base 4.0 §7.6.3 PCI Express Extended Capability Header: offset of the first
/// extended capability.
pub const EXT_CAP_START: usize = 0x100;
/// PCI Express Base 4.0 §7.6.3: Extended Capability ID field (bits 15:0).
pub const EXT_CAP_ID_MASK: u32 = 0xffff;
/// PCI Express Base 4.0 §7.6.3: Capability Version field shift (bits 19:16).
pub const EXT_CAP_VERSION_SHIFT: u32 = 16;
/// PCI Express Base 4.0 §7.6.3: Next Capability Offset field shift (bits 31:20).
pub const EXT_CAP_NEXT_SHIFT: u32 = 20;
/// PCI Express Base 4.0 §7.9.5 Vendor-Specific Extended Capability ID.
pub const EXT_CAP_ID_VSEC: u16 = 0x000b;
/// PCI Express Base 4.0 §7.8.2 Latency Tolerance Reporting (LTR) Extended Capability ID.
pub const EXT_CAP_ID_LTR: u16 = 0x0018;

/// Builds an extended capability header dword (PCI Express Base 4.0 §7.6.3).
pub const fn ext_cap_header(id: u16, version: u8, next: u16) -> u32 {
    (id as u32)
        | ((version as u32 & 0xf) << EXT_CAP_VERSION_SHIFT)
        | ((next as u32 & 0xfff) << EXT_CAP_NEXT_SHIFT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_code_is_vga() {
        assert_eq!(CLASS_CODE_VGA, 0x030000);
    }

    #[test]
    fn command_writable_excludes_hardwired_bits() {
        for bit in [
            COMMAND_SPECIAL_CYCLES,
            COMMAND_MWI,
            COMMAND_VGA_PALETTE_SNOOP,
            COMMAND_STEPPING,
            COMMAND_FAST_B2B,
        ] {
            assert_eq!(COMMAND_WRITABLE & bit, 0);
        }
        assert_eq!(COMMAND_WRITABLE, 0x0547);
    }

    #[test]
    fn status_w1c_are_the_error_bits() {
        assert_eq!(STATUS_W1C, 0xf900);
        assert_eq!(
            STATUS_W1C & (STATUS_INTERRUPT | STATUS_CAPABILITIES_LIST),
            0
        );
    }

    #[test]
    fn ext_cap_header_packs_fields() {
        assert_eq!(ext_cap_header(0x000b, 1, 0x110), 0x1101_000b);
        assert_eq!(ext_cap_header(0x0018, 1, 0), 0x0001_0018);
    }
}
