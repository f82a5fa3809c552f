//! The device's saved state and its own byte format.
//!
//! ```text
//!  offset  size  field
//!  0       8     magic "SERIALST"
//!  8       2     major version (1)      10  2  minor version (0)
//!  12      4     payload length N (little-endian)
//!  16      N     payload:
//!                  key u8, flags u8 (bit 0 overrun, bit 1 interrupt owed), IER u8, ISR u8,
//!                  TX_COUNT u64, RX_COUNT u64, TX level u16, RX level u16,
//!                  TX FIFO bytes, RX FIFO bytes, BAR2 scratch (4096 bytes),
//!                  config length u32, config (`ConfigSpaceState::to_bytes`, own CRC)
//!  16+N    4     CRC-32 of bytes 0..16+N
//! ```
//!
//! [`SerialState::from_bytes`] refuses, with a typed error, input that is truncated, of
//! another magic or major version, of a length other than declared, with a bad checksum,
//! with a FIFO level over its depth, with unknown register bits, with counters that do not
//! add up, or with a config space this device's params could not have produced. It builds
//! nothing until every check passed.

use pci_config_replay::{
    crc32, ConfigSpace, ConfigSpaceState, HostRegion, HostResources, STATE_MAX_LEN,
};
use snafu::{ensure, ResultExt, Snafu};

use crate::regs::{config_params, BAR2_SIZE, INT_ALL, RX_DEPTH, TX_DEPTH};

/// Magic of a saved state.
pub const MAGIC: [u8; 8] = *b"SERIALST";
/// Major version written and read.
pub const VERSION_MAJOR: u16 = 1;
/// Minor version written.
pub const VERSION_MINOR: u16 = 0;
/// Header length (magic, versions, payload length).
pub const HEADER_LEN: usize = 16;
/// Fixed part of the payload before the FIFO bytes.
const FIXED_LEN: usize = 4 + 8 + 8 + 2 + 2;
/// Largest valid saved state.
pub const MAX_LEN: usize =
    HEADER_LEN + FIXED_LEN + TX_DEPTH + RX_DEPTH + BAR2_SIZE as usize + 4 + STATE_MAX_LEN + 4;

const FLAG_OVERRUN: u8 = 1 << 0;
const FLAG_OWED: u8 = 1 << 1;

/// Why a saved state was refused.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum StateError {
    /// Fewer bytes than the format needs.
    #[snafu(display("saved state truncated: {what} needs {need} bytes, {len} present"))]
    Truncated {
        /// What was being read.
        what: &'static str,
        /// Bytes needed.
        need: usize,
        /// Bytes present.
        len: usize,
    },
    /// Longer than any valid state.
    #[snafu(display("saved state of {len} bytes is over the {max}-byte maximum"))]
    TooLong {
        /// Length found.
        len: usize,
        /// Maximum.
        max: usize,
    },
    /// Not a serial device state.
    #[snafu(display("saved state has magic {found:02x?}, expected \"SERIALST\""))]
    BadMagic {
        /// Magic found.
        found: [u8; 8],
    },
    /// A major version this build does not read.
    #[snafu(display("saved state version {major}.{minor}; this device reads {VERSION_MAJOR}.x"))]
    Version {
        /// Major found.
        major: u16,
        /// Minor found.
        minor: u16,
    },
    /// The declared payload length does not match the input.
    #[snafu(display("saved state declares a {declared}-byte payload, {actual} bytes present"))]
    Length {
        /// Declared.
        declared: usize,
        /// Present.
        actual: usize,
    },
    /// The CRC does not match.
    #[snafu(display("saved state checksum {stored:#010x}, computed {computed:#010x}"))]
    Checksum {
        /// Stored CRC.
        stored: u32,
        /// Computed CRC.
        computed: u32,
    },
    /// A FIFO level over the FIFO's depth.
    #[snafu(display("saved {fifo} FIFO level {len} is over its depth {max}"))]
    FifoLength {
        /// "TX" or "RX".
        fifo: &'static str,
        /// Level found.
        len: usize,
        /// Depth.
        max: usize,
    },
    /// A register with bits this device does not implement.
    #[snafu(display("saved {field} has unknown bits: {value:#x}"))]
    Field {
        /// Field name.
        field: &'static str,
        /// Value found.
        value: u32,
    },
    /// Counters that no run of the device could produce.
    #[snafu(display(
        "saved counters do not add up: TX_COUNT {tx_count} != RX_COUNT {rx_count} + TX level {tx_len}"
    ))]
    Counters {
        /// TX_COUNT.
        tx_count: u64,
        /// RX_COUNT.
        rx_count: u64,
        /// TX FIFO level.
        tx_len: usize,
    },
    /// Bytes after the config space inside the payload.
    #[snafu(display("saved state payload has {extra} bytes after the config space"))]
    Trailing {
        /// Extra bytes.
        extra: usize,
    },
    /// The config space bytes do not parse.
    #[snafu(display("saved config space: {source}"))]
    Config {
        /// The cause.
        source: pci_config_replay::StateError,
    },
    /// The config space is not one this device's params could produce.
    #[snafu(display("saved config space does not fit this device: {source}"))]
    ConfigMismatch {
        /// The cause.
        source: pci_config_replay::ReplayError,
    },
}

/// Everything the device carries across a migration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialState {
    /// Transform key.
    pub key: u8,
    /// IER.
    pub ier: u32,
    /// ISR (the pending-interrupt latch).
    pub isr: u32,
    /// LSR overrun bit.
    pub overrun: bool,
    /// An interrupt was raised and not yet signalled (no sink, or the device was stopped).
    pub owed: bool,
    /// TX_COUNT.
    pub tx_count: u64,
    /// RX_COUNT.
    pub rx_count: u64,
    /// TX FIFO, head first.
    pub tx_fifo: Vec<u8>,
    /// RX FIFO, head first.
    pub rx_fifo: Vec<u8>,
    /// BAR2 scratch memory.
    pub scratch: Vec<u8>,
    /// The PCI config space, device-owned bits (MSI-X PBA) included.
    pub config: ConfigSpaceState,
}

/// A little-endian reader that names what it reads when input runs out.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], StateError> {
        let left = self.b.len() - self.pos;
        ensure!(
            left >= n,
            TruncatedSnafu {
                what,
                need: n,
                len: left
            }
        );
        let s = &self.b[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, StateError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, StateError> {
        let s = self.take(2, what)?;
        Ok(u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, StateError> {
        let s = self.take(4, what)?;
        Ok(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, StateError> {
        let mut a = [0u8; 8];
        a.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }
}

/// Host resources backing every BAR and vector of the device's own config space: the
/// device rebuilds its config for itself, not for a VMM's host.
pub(crate) fn own_resources() -> HostResources {
    HostResources {
        bar_regions: [
            Some(HostRegion::vfio_bar(0, 0)),
            None,
            Some(HostRegion::vfio_bar(2, 0)),
            None,
            None,
            None,
        ],
        interrupt_sinks: (0..u32::from(crate::regs::MSIX_VECTORS)).collect(),
    }
}

impl SerialState {
    /// Encode in the format above.
    pub fn to_bytes(&self) -> Vec<u8> {
        let config = self.config.to_bytes();
        let mut p = Vec::with_capacity(FIXED_LEN + BAR2_SIZE as usize + config.len() + 64);
        let flags =
            if self.overrun { FLAG_OVERRUN } else { 0 } | if self.owed { FLAG_OWED } else { 0 };
        p.extend_from_slice(&[self.key, flags, self.ier as u8, self.isr as u8]);
        p.extend_from_slice(&self.tx_count.to_le_bytes());
        p.extend_from_slice(&self.rx_count.to_le_bytes());
        p.extend_from_slice(&(self.tx_fifo.len() as u16).to_le_bytes());
        p.extend_from_slice(&(self.rx_fifo.len() as u16).to_le_bytes());
        p.extend_from_slice(&self.tx_fifo);
        p.extend_from_slice(&self.rx_fifo);
        p.extend_from_slice(&self.scratch);
        p.extend_from_slice(&(config.len() as u32).to_le_bytes());
        p.extend_from_slice(&config);
        let mut out = Vec::with_capacity(HEADER_LEN + p.len() + 4);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&VERSION_MAJOR.to_le_bytes());
        out.extend_from_slice(&VERSION_MINOR.to_le_bytes());
        out.extend_from_slice(&(p.len() as u32).to_le_bytes());
        out.extend_from_slice(&p);
        let crc = crc32(&out);
        out.extend_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decode and check everything (see the module docs).
    pub fn from_bytes(b: &[u8]) -> Result<Self, StateError> {
        ensure!(
            b.len() <= MAX_LEN,
            TooLongSnafu {
                len: b.len(),
                max: MAX_LEN
            }
        );
        let mut c = Cursor { b, pos: 0 };
        let mut magic = [0u8; 8];
        magic.copy_from_slice(c.take(8, "the magic")?);
        ensure!(magic == MAGIC, BadMagicSnafu { found: magic });
        let major = c.u16("the major version")?;
        let minor = c.u16("the minor version")?;
        ensure!(major == VERSION_MAJOR, VersionSnafu { major, minor });
        let declared = c.u32("the payload length")? as usize;
        let actual = b.len().saturating_sub(HEADER_LEN + 4);
        ensure!(
            declared == actual && b.len() >= HEADER_LEN + 4,
            LengthSnafu { declared, actual }
        );
        let end = HEADER_LEN + declared;
        let stored = u32::from_le_bytes([b[end], b[end + 1], b[end + 2], b[end + 3]]);
        let computed = crc32(&b[..end]);
        ensure!(stored == computed, ChecksumSnafu { stored, computed });
        let mut c = Cursor {
            b: &b[..end],
            pos: HEADER_LEN,
        };
        let key = c.u8("the key")?;
        let flags = c.u8("the flags")?;
        ensure!(
            flags & !(FLAG_OVERRUN | FLAG_OWED) == 0,
            FieldSnafu {
                field: "flags",
                value: u32::from(flags)
            }
        );
        let ier = u32::from(c.u8("IER")?);
        ensure!(
            ier & !INT_ALL == 0,
            FieldSnafu {
                field: "IER",
                value: ier
            }
        );
        let isr = u32::from(c.u8("ISR")?);
        ensure!(
            isr & !INT_ALL == 0,
            FieldSnafu {
                field: "ISR",
                value: isr
            }
        );
        let tx_count = c.u64("TX_COUNT")?;
        let rx_count = c.u64("RX_COUNT")?;
        let tx_len = usize::from(c.u16("the TX level")?);
        let rx_len = usize::from(c.u16("the RX level")?);
        ensure!(
            tx_len <= TX_DEPTH,
            FifoLengthSnafu {
                fifo: "TX",
                len: tx_len,
                max: TX_DEPTH
            }
        );
        ensure!(
            rx_len <= RX_DEPTH,
            FifoLengthSnafu {
                fifo: "RX",
                len: rx_len,
                max: RX_DEPTH
            }
        );
        ensure!(
            rx_count.checked_add(tx_len as u64) == Some(tx_count),
            CountersSnafu {
                tx_count,
                rx_count,
                tx_len
            }
        );
        let tx_fifo = c.take(tx_len, "the TX FIFO")?.to_vec();
        let rx_fifo = c.take(rx_len, "the RX FIFO")?.to_vec();
        let scratch = c.take(BAR2_SIZE as usize, "the scratch memory")?.to_vec();
        let config_len = c.u32("the config length")? as usize;
        let config_bytes = c.take(config_len, "the config space")?;
        let extra = end - c.pos;
        ensure!(extra == 0, TrailingSnafu { extra });
        let config = ConfigSpaceState::from_bytes(config_bytes).context(ConfigSnafu)?;
        Ok(Self {
            key,
            ier,
            isr,
            overrun: flags & FLAG_OVERRUN != 0,
            owed: flags & FLAG_OWED != 0,
            tx_count,
            rx_count,
            tx_fifo,
            rx_fifo,
            scratch,
            config,
        })
    }

    /// Rebuild the config space on this device's own params; refuses a state those params
    /// could not have produced (another device ID, BAR size or table size).
    pub fn rebuild_config(&self) -> Result<ConfigSpace, StateError> {
        let (config, _) = ConfigSpace::from_state(config_params(), &self.config, &own_resources())
            .context(ConfigMismatchSnafu)?;
        Ok(config)
    }
}

#[cfg(test)]
mod tests;
