//! The GTT entry format and what validating an entry can conclude.
//!
//! One entry is a little-endian `u64` mapping one 4 KiB page:
//!
//! ```text
//!  63        52 51                         12 11      2   1   0
//! ┌────────────┬─────────────────────────────┬─────────┬───┬───┐
//! │  reserved  │ guest-physical page address │reserved │ W │ P │
//! └────────────┴─────────────────────────────┴─────────┴───┴───┘
//! ```
//!
//! The device model (`vgpu-sim::regs`) uses the same bit values; a test there checks it.

/// Bytes mapped by one entry.
pub const PAGE_SIZE: u64 = 4096;
/// Entry bit: the entry maps a page.
pub const PTE_PRESENT: u64 = 1 << 0;
/// Entry bit: the device may write the page.
pub const PTE_WRITABLE: u64 = 1 << 1;
/// Entry bits holding the guest-physical page address (bits 12..52).
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// Bits that must be zero in a present entry.
pub const PTE_RESERVED_MASK: u64 = !(PTE_PRESENT | PTE_WRITABLE | PTE_ADDR_MASK);

/// Why a present entry was pointed at the scratch page instead of guest RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScratchReason {
    /// The page at `gpa` is not (wholly) inside guest RAM.
    OutsideRam {
        /// The guest-physical page address the entry named.
        gpa: u64,
    },
    /// Reserved bits are set.
    ReservedBits {
        /// The reserved bits that were set.
        bits: u64,
    },
}

/// The outcome of writing (or re-validating) one entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryStatus {
    /// The entry is not present: DMA through it faults.
    NotPresent,
    /// The entry maps guest RAM.
    Mapped {
        /// Guest-physical page address.
        gpa: u64,
        /// Whether device writes are allowed.
        writable: bool,
    },
    /// The entry is invalid and now maps the scratch page; the device should raise its
    /// GTT error interrupt.
    Scratch(ScratchReason),
}

impl EntryStatus {
    /// Whether the entry was rejected (mapped to scratch): the device signals an error.
    pub fn is_error(&self) -> bool {
        matches!(self, EntryStatus::Scratch(_))
    }
}
