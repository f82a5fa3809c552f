//! The vGPU's register map: BAR0 layout, MMIO register offsets and their bits.
//!
//! This file is the contract between the device model and the guest driver
//! ([`crate::workload`]); both use only these names.
//!
//! # BAR0 (16 MiB, 64-bit non-prefetchable)
//!
//! ```text
//! 0x000000 .. 0x010000   MMIO register file (64 KiB; each stateful register is saved in
//!                        exactly one section: MMIO, ENGINE, IRQ or DISPLAY)
//!    0x00f000            MSI-X table   (inside the register file's range, routed to config)
//!    0x00f800            MSI-X PBA
//! 0x800000 .. 0xc00000   GTT window: entry i (u64, little-endian) at 0x800000 + 8 * i
//! ```
//!
//! # BAR2 (aperture, 64-bit prefetchable)
//!
//! A linear window onto graphics memory: BAR2 offset `o` is graphics memory byte `o`.
//!
//! # Graphics addresses
//!
//! The engine addresses memory with 64-bit graphics addresses:
//! `0 .. gmem_size` is the device's own graphics memory; `SYS_BASE + i * 4096 + o` goes through
//! GTT entry `i` to a guest-physical page (ring, batches, vertex buffers, seqno and checksum
//! log all live in guest RAM and are reached that way).

/// Size of BAR0.
pub const BAR0_SIZE: u64 = 16 << 20;
/// Size of the MMIO register file at the start of BAR0.
pub const MMIO_SIZE: u64 = 64 << 10;
/// Offset of the MSI-X table in BAR0.
pub const MSIX_TABLE_OFFSET: u64 = 0xf000;
/// Offset of the MSI-X pending bit array in BAR0.
pub const MSIX_PBA_OFFSET: u64 = 0xf800;
/// Number of MSI-X vectors (vector 0: all engine and display events).
pub const MSIX_VECTORS: u16 = 1;
/// Offset of the GTT window in BAR0.
pub const GTT_WINDOW_OFFSET: u64 = 0x80_0000;
/// Number of GTT entries (4 KiB pages; 256 MiB of guest RAM mappable at once).
pub const GTT_ENTRIES: u64 = 65536;
/// Size of one GTT entry in bytes.
pub const GTT_ENTRY_SIZE: u64 = 8;
/// Page size of the GTT and of graphics-memory dirty tracking.
pub const PAGE_SIZE: u64 = 4096;
/// First graphics address that translates through the GTT.
pub const SYS_BASE: u64 = 1 << 32;

/// GTT entry bit: the entry maps a page.
pub const GTT_PRESENT: u64 = 1 << 0;
/// GTT entry bit: the device may write the page.
pub const GTT_WRITABLE: u64 = 1 << 1;
/// GTT entry: guest-physical address of the page (bits 12..52).
pub const GTT_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

// ---- Identification (read-only) ----
/// `'VGPU'`: identifies the device to the driver.
pub const REG_ID: u32 = 0x0000;
/// The value of [`REG_ID`].
pub const ID_VALUE: u32 = 0x5647_5055;
/// Register layout version (major << 16 | minor).
pub const REG_VERSION: u32 = 0x0004;
/// Graphics memory size in bytes, low dword.
pub const REG_GMEM_SIZE_LO: u32 = 0x0008;
/// Graphics memory size in bytes, high dword.
pub const REG_GMEM_SIZE_HI: u32 = 0x000c;
/// Number of GTT entries.
pub const REG_GTT_ENTRIES: u32 = 0x0010;

// ---- Interrupts (IIR/IMR/IER style, as in Intel's render engine) ----
/// Live status of every interrupt source (read-only).
pub const REG_ISR: u32 = 0x0100;
/// Interrupt mask: a 1 masks the source from IIR.
pub const REG_IMR: u32 = 0x0104;
/// Interrupt identity: latched events; write 1 to clear.
pub const REG_IIR: u32 = 0x0108;
/// Interrupt enable: IIR bits that raise the MSI.
pub const REG_IER: u32 = 0x010c;
/// The `USER_INTERRUPT` command executed.
pub const INT_USER: u32 = 1 << 0;
/// A `PIPE_CONTROL` post-sync write completed.
pub const INT_PIPE_NOTIFY: u32 = 1 << 1;
/// A `FLIP` took effect.
pub const INT_FLIP_DONE: u32 = 1 << 2;
/// A GTT entry pointed outside guest RAM, or the engine used an unmapped address.
pub const INT_GTT_ERROR: u32 = 1 << 3;
/// The engine met a malformed command.
pub const INT_CMD_ERROR: u32 = 1 << 4;
/// Every defined interrupt bit.
pub const INT_ALL: u32 =
    INT_USER | INT_PIPE_NOTIFY | INT_FLIP_DONE | INT_GTT_ERROR | INT_CMD_ERROR | INT_ENGINE_HANG;
/// Interrupt: the hang check stopped a batch that ran past [`MAX_BATCH_BYTES`] without its
/// `BATCH_END` (the engine halts, as for a command error, until reset).
pub const INT_ENGINE_HANG: u32 = 1 << 5;
/// The engine's hang check: a batch may run at most this many bytes of commands. It counts
/// commands, not time, so a migrated engine hangs at the same command as one that never
/// moved.
pub const MAX_BATCH_BYTES: u32 = 16 << 20;

/// Latched error cause (write 1 to clear), bits as the `INT_*` error bits.
pub const REG_ERROR_STATUS: u32 = 0x0120;
/// Address involved in the first latched error, low dword.
pub const REG_ERROR_ADDR_LO: u32 = 0x0124;
/// Address involved in the first latched error, high dword.
pub const REG_ERROR_ADDR_HI: u32 = 0x0128;

// ---- Render ring ----
/// Ring start graphics address, low dword (must be page aligned, in the GTT range).
pub const REG_RING_START_LO: u32 = 0x0200;
/// Ring start graphics address, high dword.
pub const REG_RING_START_HI: u32 = 0x0204;
/// Ring head: byte offset of the next command to fetch (writable only while disabled).
pub const REG_RING_HEAD: u32 = 0x0208;
/// Ring tail: byte offset after the last submitted command (the driver writes it to submit).
pub const REG_RING_TAIL: u32 = 0x020c;
/// Ring control: [`RING_CTL_ENABLE`] and the size in pages minus one in bits 12..21.
pub const REG_RING_CTL: u32 = 0x0210;
/// Ring control: ring enabled.
pub const RING_CTL_ENABLE: u32 = 1 << 0;
/// Ring control: shift of the size field (pages - 1).
pub const RING_CTL_SIZE_SHIFT: u32 = 12;
/// Ring control: mask of the size field after shifting.
pub const RING_CTL_SIZE_MASK: u32 = 0x3ff;
/// Last seqno written by `PIPE_CONTROL` (read-only mirror).
pub const REG_SEQNO: u32 = 0x0214;
/// Graphics address of the command being executed, low dword (read-only).
pub const REG_ACTHD_LO: u32 = 0x0218;
/// Graphics address of the command being executed, high dword (read-only).
pub const REG_ACTHD_HI: u32 = 0x021c;
/// Current batch start address, low dword (read-only; 0 outside a batch).
pub const REG_BB_ADDR_LO: u32 = 0x0220;
/// Current batch start address, high dword (read-only).
pub const REG_BB_ADDR_HI: u32 = 0x0224;
/// Byte offset of the next command within the current batch (read-only).
pub const REG_BB_OFFSET: u32 = 0x0228;
/// Engine status (read-only): [`ENGINE_BUSY`], [`ENGINE_IN_BATCH`], [`ENGINE_HALTED`].
pub const REG_ENGINE_STATUS: u32 = 0x0230;
/// Engine status: commands are pending (head != tail or inside a batch).
pub const ENGINE_BUSY: u32 = 1 << 0;
/// Engine status: executing a batch buffer.
pub const ENGINE_IN_BATCH: u32 = 1 << 1;
/// Engine status: halted by a command error until reset.
pub const ENGINE_HALTED: u32 = 1 << 2;
/// Number of commands executed since reset (read-only, wraps).
pub const REG_CMD_COUNT: u32 = 0x0234;

// ---- Display plane ----
/// Display control: bit 0 enables the plane.
pub const REG_DSP_CTL: u32 = 0x0300;
/// Display control: plane enabled.
pub const DSP_CTL_ENABLE: u32 = 1 << 0;
/// Graphics-memory offset of the displayed surface (updated by `FLIP`).
pub const REG_DSP_SURF: u32 = 0x0304;
/// Stride of the displayed surface in bytes.
pub const REG_DSP_STRIDE: u32 = 0x0308;
/// Displayed size: width in bits 0..16, height in bits 16..32.
pub const REG_DSP_SIZE: u32 = 0x030c;
/// Number of flips since reset (read-only).
pub const REG_FLIP_COUNT: u32 = 0x0310;

// ---- Scratch ----
/// 16 dwords of guest-writable scratch (a driver may keep anything there; saved with MMIO).
pub const REG_SCRATCH0: u32 = 0x0400;
/// Number of scratch registers.
pub const SCRATCH_COUNT: u32 = 16;
