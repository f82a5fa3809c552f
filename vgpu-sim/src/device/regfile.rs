//! The register file as plain state: every stateful MMIO register, the section it is saved
//! in, and its write semantics as data.
//!
//! Each register is listed exactly once in [`REGS`], with the [`Section`] that carries it,
//! so no register can be saved twice or forgotten (a test checks the offsets are unique and
//! sorted). Identification registers (`REG_ID`, `REG_VERSION`, `REG_GMEM_SIZE_*`,
//! `REG_GTT_ENTRIES`) are not state: they follow from the mdev type, which the context
//! header names.
//!
//! Write semantics ([`Kind`]), applied by the device's MMIO path:
//!
//! | kind        | guest write                                       |
//! |-------------|---------------------------------------------------|
//! | `Ro`        | ignored (the engine or device sets it)            |
//! | `Rw`        | `(old & !valid) \| (value & valid)`                |
//! | `W1c`       | `old & !(value & valid)`                          |
//! | `Special`   | handled by code in `mmio.rs` (ring, display, irq) |
//!
//! `valid` is also what a restored value may hold: a bit outside it is rejected.

use crate::regs::*;

/// Which context section carries a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Section {
    /// Guest-programmed configuration: ring start and control, scratch.
    Mmio,
    /// The ring position and the engine's read-back registers.
    Engine,
    /// Interrupt registers and the error latch.
    Irq,
    /// The display plane.
    Display,
}

/// How a guest write treats a register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Guest writes are ignored.
    Ro,
    /// Read-write through the valid mask.
    Rw,
    /// Write 1 to clear, through the valid mask.
    W1c,
    /// Handled by code (side effects or conditions).
    Special,
}

/// One register.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegSpec {
    /// MMIO offset.
    pub offset: u32,
    /// Name used in error messages.
    pub name: &'static str,
    /// Section that saves it.
    pub section: Section,
    /// Guest write semantics.
    pub kind: Kind,
    /// Bits the register can hold.
    pub valid: u32,
}

const fn r(offset: u32, name: &'static str, section: Section, kind: Kind, valid: u32) -> RegSpec {
    RegSpec {
        offset,
        name,
        section,
        kind,
        valid,
    }
}

/// Ring head and tail: dword-aligned byte offsets below the largest ring (4 MiB).
pub const RING_OFFSET_MASK: u32 = 0x003f_fffc;
/// Ring start low dword: page aligned.
pub const RING_START_LO_MASK: u32 = 0xffff_f000;
/// Ring control: enable and size field.
pub const RING_CTL_MASK: u32 = RING_CTL_ENABLE | (RING_CTL_SIZE_MASK << RING_CTL_SIZE_SHIFT);
/// Error bits of `REG_ERROR_STATUS`.
pub const ERROR_BITS: u32 = INT_GTT_ERROR | INT_CMD_ERROR | INT_ENGINE_HANG;
/// Bits of `REG_ENGINE_STATUS`.
pub const ENGINE_STATUS_BITS: u32 = ENGINE_BUSY | ENGINE_IN_BATCH | ENGINE_HALTED;

use Kind::*;
use Section::*;

/// Every stateful register, sorted by offset.
pub const REGS: &[RegSpec] = &[
    r(REG_ISR, "ISR", Irq, Ro, INT_ALL),
    r(REG_IMR, "IMR", Irq, Rw, INT_ALL),
    r(REG_IIR, "IIR", Irq, Special, INT_ALL),
    r(REG_IER, "IER", Irq, Special, INT_ALL),
    r(REG_ERROR_STATUS, "ERROR_STATUS", Irq, Special, ERROR_BITS),
    r(REG_ERROR_ADDR_LO, "ERROR_ADDR_LO", Irq, Ro, u32::MAX),
    r(REG_ERROR_ADDR_HI, "ERROR_ADDR_HI", Irq, Ro, u32::MAX),
    r(
        REG_RING_START_LO,
        "RING_START_LO",
        Mmio,
        Special,
        RING_START_LO_MASK,
    ),
    r(REG_RING_START_HI, "RING_START_HI", Mmio, Special, u32::MAX),
    r(
        REG_RING_HEAD,
        "RING_HEAD",
        Engine,
        Special,
        RING_OFFSET_MASK,
    ),
    r(REG_RING_TAIL, "RING_TAIL", Engine, Rw, RING_OFFSET_MASK),
    r(REG_RING_CTL, "RING_CTL", Mmio, Special, RING_CTL_MASK),
    r(REG_SEQNO, "SEQNO", Engine, Ro, u32::MAX),
    r(REG_ACTHD_LO, "ACTHD_LO", Engine, Ro, u32::MAX),
    r(REG_ACTHD_HI, "ACTHD_HI", Engine, Ro, u32::MAX),
    r(REG_BB_ADDR_LO, "BB_ADDR_LO", Engine, Ro, u32::MAX),
    r(REG_BB_ADDR_HI, "BB_ADDR_HI", Engine, Ro, u32::MAX),
    r(REG_BB_OFFSET, "BB_OFFSET", Engine, Ro, u32::MAX),
    r(
        REG_ENGINE_STATUS,
        "ENGINE_STATUS",
        Engine,
        Ro,
        ENGINE_STATUS_BITS,
    ),
    r(REG_CMD_COUNT, "CMD_COUNT", Engine, Ro, u32::MAX),
    r(REG_DSP_CTL, "DSP_CTL", Display, Rw, DSP_CTL_ENABLE),
    r(REG_DSP_SURF, "DSP_SURF", Display, Special, u32::MAX),
    r(REG_DSP_STRIDE, "DSP_STRIDE", Display, Rw, u32::MAX),
    r(REG_DSP_SIZE, "DSP_SIZE", Display, Rw, u32::MAX),
    r(REG_FLIP_COUNT, "FLIP_COUNT", Display, Ro, u32::MAX),
    r(REG_SCRATCH0, "SCRATCH0", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 4, "SCRATCH1", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 8, "SCRATCH2", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 12, "SCRATCH3", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 16, "SCRATCH4", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 20, "SCRATCH5", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 24, "SCRATCH6", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 28, "SCRATCH7", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 32, "SCRATCH8", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 36, "SCRATCH9", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 40, "SCRATCH10", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 44, "SCRATCH11", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 48, "SCRATCH12", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 52, "SCRATCH13", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 56, "SCRATCH14", Mmio, Rw, u32::MAX),
    r(REG_SCRATCH0 + 60, "SCRATCH15", Mmio, Rw, u32::MAX),
];

/// Number of stateful registers.
pub const NREGS: usize = REGS.len();

/// Position of the register at `offset` in [`REGS`].
pub fn index_of(offset: u32) -> Option<usize> {
    REGS.binary_search_by_key(&offset, |s| s.offset).ok()
}

/// The registers of `section`, in [`REGS`] order (the order they are saved in).
pub fn section_regs(section: Section) -> impl Iterator<Item = (usize, &'static RegSpec)> {
    REGS.iter()
        .enumerate()
        .filter(move |(_, s)| s.section == section)
}

/// The values of every stateful register (plain data; behaviour lives in the device).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Registers {
    values: [u32; NREGS],
}

impl Default for Registers {
    /// Power-on values: everything 0, all interrupts masked in IMR.
    fn default() -> Self {
        let mut r = Self { values: [0; NREGS] };
        r.set(REG_IMR, INT_ALL);
        r
    }
}

impl Registers {
    /// Value of the register at `offset` (0 for an offset that is not stateful).
    pub fn get(&self, offset: u32) -> u32 {
        index_of(offset).map_or(0, |i| self.values[i])
    }

    /// Set the register at `offset`, keeping only its valid bits. Other offsets are ignored.
    pub fn set(&mut self, offset: u32, value: u32) {
        if let Some(i) = index_of(offset) {
            self.values[i] = value & REGS[i].valid;
        }
    }

    /// Value by position in [`REGS`].
    pub fn at(&self, index: usize) -> u32 {
        self.values[index]
    }

    /// Set by position in [`REGS`], unmasked (the caller validated the value).
    pub(crate) fn set_at(&mut self, index: usize, value: u32) {
        self.values[index] = value;
    }

    /// A 64-bit value held in a low/high register pair.
    pub fn get64(&self, lo: u32, hi: u32) -> u64 {
        u64::from(self.get(lo)) | (u64::from(self.get(hi)) << 32)
    }

    /// Ring size in bytes, from `REG_RING_CTL`.
    pub fn ring_size(&self) -> u64 {
        ring_size(self.get(REG_RING_CTL))
    }

    /// Whether the ring is enabled.
    pub fn ring_enabled(&self) -> bool {
        self.get(REG_RING_CTL) & RING_CTL_ENABLE != 0
    }

    /// Ring start graphics address.
    pub fn ring_start(&self) -> u64 {
        self.get64(REG_RING_START_LO, REG_RING_START_HI)
    }
}

/// Ring size in bytes for a `REG_RING_CTL` value.
pub fn ring_size(ctl: u32) -> u64 {
    (u64::from((ctl >> RING_CTL_SIZE_SHIFT) & RING_CTL_SIZE_MASK) + 1) * PAGE_SIZE
}

/// Whether a ring at `start` of `size` bytes lies inside the GTT range, page aligned.
pub fn ring_in_gtt(start: u64, size: u64) -> bool {
    let end = SYS_BASE + GTT_ENTRIES * PAGE_SIZE;
    start % PAGE_SIZE == 0 && start >= SYS_BASE && start.checked_add(size).is_some_and(|e| e <= end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_register_is_listed_once_sorted() {
        for w in REGS.windows(2) {
            assert!(w[0].offset < w[1].offset, "{} / {}", w[0].name, w[1].name);
        }
        for s in REGS {
            assert_eq!(s.offset % 4, 0, "{}", s.name);
            assert!(u64::from(s.offset) < MSIX_TABLE_OFFSET, "{}", s.name);
        }
        assert_eq!(
            section_regs(Section::Mmio).count(),
            3 + SCRATCH_COUNT as usize
        );
        assert_eq!(section_regs(Section::Display).count(), 5);
        for id in [
            REG_ID,
            REG_VERSION,
            REG_GMEM_SIZE_LO,
            REG_GMEM_SIZE_HI,
            REG_GTT_ENTRIES,
        ] {
            assert_eq!(index_of(id), None);
        }
    }

    #[test]
    fn set_keeps_valid_bits() {
        let mut r = Registers::default();
        assert_eq!(r.get(REG_IMR), INT_ALL);
        r.set(REG_RING_HEAD, 0xffff_ffff);
        assert_eq!(r.get(REG_RING_HEAD), RING_OFFSET_MASK);
        r.set(0x9999, 5);
        assert_eq!(r.get(0x9999), 0);
        r.set(REG_RING_CTL, RING_CTL_ENABLE | (3 << RING_CTL_SIZE_SHIFT));
        assert_eq!(r.ring_size(), 4 * PAGE_SIZE);
        assert!(r.ring_enabled());
        r.set(REG_RING_START_HI, 1);
        assert_eq!(r.ring_start(), SYS_BASE);
        assert!(ring_in_gtt(SYS_BASE, 4096));
        assert!(!ring_in_gtt(SYS_BASE - 4096, 4096));
        assert!(!ring_in_gtt(
            SYS_BASE + GTT_ENTRIES * PAGE_SIZE - 4096,
            8192
        ));
        assert!(!ring_in_gtt(SYS_BASE + 4, 4096));
    }
}
