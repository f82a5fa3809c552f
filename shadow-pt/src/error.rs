//! Errors of the shadow GTT.

use snafu::Snafu;

/// Errors of requests made by the device model (never by the guest directly).
#[derive(Debug, Snafu, Clone, PartialEq, Eq)]
#[snafu(visibility(pub(crate)))]
pub enum ShadowError {
    /// An entry index past the end of the table.
    #[snafu(display("GTT entry {index} does not exist (the table has {entries})"))]
    EntryIndex {
        /// Index asked for.
        index: u64,
        /// Number of entries.
        entries: usize,
    },
    /// A table of a size this crate does not build.
    #[snafu(display("a GTT of {entries} entries is not supported (1..={max})"))]
    TableSize {
        /// Entries asked for.
        entries: usize,
        /// Largest supported table.
        max: usize,
    },
    /// Saved entries whose count differs from the table's.
    #[snafu(display("saved GTT has {got} entries, the table has {expected}"))]
    EntryCount {
        /// Entries in the saved state.
        got: usize,
        /// Entries in this table.
        expected: usize,
    },
}

/// A DMA access the shadow could not carry out. `offset` is the faulting byte offset from
/// the start of the GTT-mapped space (entry `offset / PAGE_SIZE`).
#[derive(Debug, Snafu, Clone, Copy, PartialEq, Eq)]
#[snafu(visibility(pub(crate)))]
pub enum DmaError {
    /// The entry covering `offset` is not present.
    #[snafu(display("DMA at GTT offset {offset:#x} through a non-present entry"))]
    NotPresent {
        /// Faulting offset.
        offset: u64,
    },
    /// A write through an entry without the writable bit.
    #[snafu(display("DMA write at GTT offset {offset:#x} through a read-only entry"))]
    ReadOnly {
        /// Faulting offset.
        offset: u64,
    },
    /// The entry maps guest memory reached through a port ([`crate::RemoteDma`]), and the
    /// port failed (its peer answered with an error or garbage, or not at all).
    #[snafu(display("remote DMA at GTT offset {offset:#x} failed"))]
    Remote {
        /// Faulting offset (the start of the failed run of pages).
        offset: u64,
    },
    /// The access runs past the last entry.
    #[snafu(display("DMA at GTT offset {offset:#x} is beyond the last GTT entry"))]
    OutOfRange {
        /// Faulting offset.
        offset: u64,
    },
}

impl DmaError {
    /// The faulting offset from the start of the GTT-mapped space.
    pub fn offset(&self) -> u64 {
        match *self {
            DmaError::NotPresent { offset }
            | DmaError::ReadOnly { offset }
            | DmaError::Remote { offset }
            | DmaError::OutOfRange { offset } => offset,
        }
    }
}

/// `Result` with a [`ShadowError`].
pub type Result<T, E = ShadowError> = std::result::Result<T, E>;
