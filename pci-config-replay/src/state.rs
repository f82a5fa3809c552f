//! The saved state of a configuration space and its versioned byte format.
//!
//! Layout (all integers little-endian):
//!
//! ```text
//! off  len  field
//!   0    8  magic "VGPUPCFG"
//!   8    2  major version (1)
//!  10    2  minor version (0)
//!  12    4  config length in bytes (must be 4096)
//!  16    4  MSI-X table length in bytes (16 * vectors, 1..=2048 vectors)
//!  20    4  PBA length in 64-bit words (ceil(vectors / 64))
//!  24   48  BAR sizes, 6 x u64 by BAR number (0 = none)
//!  72    -  config bytes, MSI-X table bytes, PBA words
//!  end   4  CRC-32 (IEEE) of everything before it
//! ```
//!
//! Parsing treats the input as untrusted: the total size is capped before anything is
//! read, every length is checked against its own bound before allocation, and every
//! failure is a typed [`StateError`].

use byteorder::{ByteOrder, LittleEndian};
use snafu::{ensure, OptionExt};

use crate::bar::bar_sizes;
use crate::config::ConfigSpace;
use crate::error::state_error::{
    BadMagicSnafu, BarSizeSnafu, ChecksumSnafu, ConfigLengthSnafu, PbaBitOutOfRangeSnafu,
    PbaLengthSnafu, TableLengthSnafu, TooLargeSnafu, TrailingBytesSnafu, TruncatedSnafu,
    UnsupportedVersionSnafu,
};
use crate::error::StateError;
use crate::params::{MSIX_ENTRY_SIZE, MSIX_MAX_VECTORS};
use crate::regs::{BAR_COUNT, CONFIG_SPACE_SIZE};

/// Magic number opening a serialized state.
pub const STATE_MAGIC: [u8; 8] = *b"VGPUPCFG";
/// Format major version written and read by this build.
pub const STATE_VERSION_MAJOR: u16 = 1;
/// Format minor version written and read by this build.
pub const STATE_VERSION_MINOR: u16 = 0;
/// Length of the fixed header.
pub const STATE_HEADER_LEN: usize = 72;
const MAX_TABLE_LEN: usize = MSIX_MAX_VECTORS as usize * MSIX_ENTRY_SIZE as usize;
const MAX_PBA_WORDS: usize = (MSIX_MAX_VECTORS as usize).div_ceil(64);
/// Largest valid serialized state; longer input is refused before it is read.
pub const STATE_MAX_LEN: usize =
    STATE_HEADER_LEN + CONFIG_SPACE_SIZE + MAX_TABLE_LEN + MAX_PBA_WORDS * 8 + 4;

/// Everything needed to recreate a configuration space's guest-visible state. Plain data:
/// no masks (they follow from the device's params), no live handles.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSpaceState {
    /// The 4 KiB of configuration bytes.
    pub config: Box<[u8; CONFIG_SPACE_SIZE]>,
    /// The size of each BAR by BAR number (0 for high dwords and unimplemented BARs);
    /// sizes are not visible in the bytes once an address is programmed.
    pub bar_sizes: [u64; BAR_COUNT],
    /// The MSI-X table, 16 bytes per vector.
    pub msix_table: Vec<u8>,
    /// The MSI-X pending bit array, one bit per vector.
    pub msix_pba: Vec<u64>,
}

impl ConfigSpace {
    /// A copy of the guest-visible state.
    pub fn state(&self) -> ConfigSpaceState {
        ConfigSpaceState {
            config: Box::new(*self.bytes()),
            bar_sizes: bar_sizes(self.params()),
            msix_table: self.msix_table().entry_bytes().to_vec(),
            msix_pba: self.msix_table().pba_words().to_vec(),
        }
    }
}

/// CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320).
pub fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            let mask = (crc & 1).wrapping_neg();
            crc = (crc >> 1) ^ (0xedb8_8320 & mask);
        }
    }
    !crc
}

fn len_u32(len: usize) -> u32 {
    // Over-long sections serialize as u32::MAX, which parse refuses.
    u32::try_from(len).unwrap_or(u32::MAX)
}

/// Reads consecutive fields and sections out of the input, never past its end.
struct Reader<'a> {
    buf: &'a [u8],
    section: &'static str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StateError> {
        let available = self.buf.len();
        let (head, tail) = self.buf.split_at_checked(n).context(TruncatedSnafu {
            section: self.section,
            needed: n,
            available,
        })?;
        self.buf = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StateError> {
        let available = self.buf.len();
        let (head, tail) = self.buf.split_first_chunk::<N>().context(TruncatedSnafu {
            section: self.section,
            needed: N,
            available,
        })?;
        self.buf = tail;
        Ok(*head)
    }

    fn u16(&mut self) -> Result<u16, StateError> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, StateError> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, StateError> {
        self.array().map(u64::from_le_bytes)
    }
}

impl ConfigSpaceState {
    /// Serializes the state in the versioned format described in the module docs.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            STATE_HEADER_LEN
                + CONFIG_SPACE_SIZE
                + self.msix_table.len()
                + self.msix_pba.len() * 8
                + 4,
        );
        out.extend_from_slice(&STATE_MAGIC);
        out.extend_from_slice(&STATE_VERSION_MAJOR.to_le_bytes());
        out.extend_from_slice(&STATE_VERSION_MINOR.to_le_bytes());
        out.extend_from_slice(&len_u32(CONFIG_SPACE_SIZE).to_le_bytes());
        out.extend_from_slice(&len_u32(self.msix_table.len()).to_le_bytes());
        out.extend_from_slice(&len_u32(self.msix_pba.len()).to_le_bytes());
        for size in self.bar_sizes {
            out.extend_from_slice(&size.to_le_bytes());
        }
        out.extend_from_slice(&self.config[..]);
        out.extend_from_slice(&self.msix_table);
        for word in &self.msix_pba {
            out.extend_from_slice(&word.to_le_bytes());
        }
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Parses untrusted bytes produced by [`ConfigSpaceState::to_bytes`].
    ///
    /// Checks, in order: size cap, header present, magic, version, each section length,
    /// total length (truncation, trailing bytes), checksum, BAR sizes, PBA bits in range.
    pub fn from_bytes(input: &[u8]) -> Result<Self, StateError> {
        ensure!(
            input.len() <= STATE_MAX_LEN,
            TooLargeSnafu {
                len: input.len(),
                max: STATE_MAX_LEN
            }
        );
        let mut r = Reader {
            buf: input,
            section: "header",
        };
        let magic = r.array::<8>()?;
        ensure!(magic == STATE_MAGIC, BadMagicSnafu { found: magic });
        let major = r.u16()?;
        let minor = r.u16()?;
        ensure!(
            major == STATE_VERSION_MAJOR && minor == STATE_VERSION_MINOR,
            UnsupportedVersionSnafu { major, minor }
        );
        let config_len = r.u32()?;
        ensure!(
            config_len as usize == CONFIG_SPACE_SIZE,
            ConfigLengthSnafu { len: config_len }
        );
        let table_len = r.u32()?;
        let entry = MSIX_ENTRY_SIZE as usize;
        let table_bytes = table_len as usize;
        ensure!(
            (entry..=MAX_TABLE_LEN).contains(&table_bytes) && table_bytes % entry == 0,
            TableLengthSnafu { len: table_len }
        );
        let vectors = (table_bytes / entry) as u32;
        let pba_len = r.u32()?;
        let expected = vectors.div_ceil(64);
        ensure!(
            pba_len == expected,
            PbaLengthSnafu {
                len: pba_len,
                vectors,
                expected
            }
        );
        let mut bar_sizes = [0u64; BAR_COUNT];
        for size in bar_sizes.iter_mut() {
            *size = r.u64()?;
        }

        r.section = "config section";
        let config = Box::new(r.array::<CONFIG_SPACE_SIZE>()?);
        r.section = "MSI-X table section";
        let table = r.take(table_bytes)?;
        r.section = "PBA section";
        let pba_bytes = r.take(pba_len as usize * 8)?;
        r.section = "checksum";
        let crc = r.array::<4>()?;
        ensure!(r.buf.is_empty(), TrailingBytesSnafu { count: r.buf.len() });
        let body = input
            .split_last_chunk::<4>()
            .map_or(input, |(body, _)| body);
        let found = u32::from_le_bytes(crc);
        let computed = crc32(body);
        ensure!(found == computed, ChecksumSnafu { found, computed });

        for (bar, &size) in bar_sizes.iter().enumerate() {
            ensure!(
                size == 0 || (size.is_power_of_two() && size >= 16),
                BarSizeSnafu {
                    bar: bar as u8,
                    size
                }
            );
        }
        let msix_pba: Vec<u64> = pba_bytes
            .chunks_exact(8)
            .map(LittleEndian::read_u64)
            .collect();
        for (i, word) in msix_pba.iter().enumerate() {
            for bit in 0..64u32 {
                let vector = i as u32 * 64 + bit;
                ensure!(
                    word & (1 << bit) == 0 || vector < vectors,
                    PbaBitOutOfRangeSnafu { vector, vectors }
                );
            }
        }
        Ok(Self {
            config,
            bar_sizes,
            msix_table: table.to_vec(),
            msix_pba,
        })
    }
}

mod view;

#[cfg(test)]
mod tests;
