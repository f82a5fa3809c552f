//! Stream header, records and errors.

use snafu::Snafu;

/// Magic at the start of every stream.
pub const STREAM_MAGIC: [u8; 8] = *b"VGPUMIG\0";

/// Largest record payload accepted (checked before allocation).
pub const MAX_RECORD: u32 = 16 << 20;

/// Length of the end record's payload: SHA-256 of the stream (32 bytes), then XXH3-128 of
/// the guest RAM page bytes (16 bytes, little-endian).
pub const END_LEN: u32 = 48;

/// The running XXH3-128 over guest RAM page bytes.
#[derive(Clone, Default)]
pub struct RamHash(xxhash_rust::xxh3::Xxh3);

impl std::fmt::Debug for RamHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RamHash")
    }
}

impl RamHash {
    /// A fresh hash.
    pub fn new() -> Self {
        Self::default()
    }

    /// Hash more page bytes.
    pub fn update(&mut self, b: &[u8]) {
        self.0.update(b);
    }

    /// The digest so far, little-endian.
    pub fn digest(&self) -> [u8; 16] {
        self.0.digest128().to_le_bytes()
    }
}

/// Longest mdev type name.
pub const MAX_TYPE_NAME: usize = 64;

/// Errors reading or writing a stream. Every message names what is wrong and where.
#[derive(Debug, Snafu)]
#[snafu(visibility(pub))]
pub enum StreamError {
    /// The transport failed.
    #[snafu(display("stream I/O failed at byte {offset}: {source}"))]
    Io {
        /// Stream offset.
        offset: u64,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The stream ended early.
    #[snafu(display("stream truncated at byte {offset}: expected {what}"))]
    Truncated {
        /// Stream offset.
        offset: u64,
        /// What was expected there.
        what: &'static str,
    },
    /// Not a migration stream.
    #[snafu(display("not a vgpu-migrate stream: bad magic {found:02x?} at byte 0"))]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// A major version this build cannot read.
    #[snafu(display(
        "stream format version {major}.{minor} is not supported (this build reads {expected}.x)"
    ))]
    Version {
        /// Major found.
        major: u16,
        /// Minor found.
        minor: u16,
        /// Major supported.
        expected: u16,
    },
    /// A header field is invalid.
    #[snafu(display("stream header field {field} is invalid: {why}"))]
    BadHeader {
        /// The field.
        field: &'static str,
        /// What is wrong.
        why: String,
    },
    /// An unknown record kind.
    #[snafu(display("unknown record kind {kind:#x} at byte {offset}"))]
    UnknownRecord {
        /// Kind found.
        kind: u32,
        /// Stream offset.
        offset: u64,
    },
    /// A record longer than the cap, or of the wrong length for its kind.
    #[snafu(display("record {kind} at byte {offset} has length {length}: {why}"))]
    BadLength {
        /// Record kind name.
        kind: &'static str,
        /// Stream offset.
        offset: u64,
        /// Length found.
        length: u32,
        /// What is wrong.
        why: String,
    },
    /// A RAM record outside guest RAM.
    #[snafu(display("record {kind} at byte {offset} covers {gpa:#x}+{len:#x}, outside guest RAM (size {ram:#x})"))]
    BadAddress {
        /// Record kind name.
        kind: &'static str,
        /// Stream offset.
        offset: u64,
        /// First address.
        gpa: u64,
        /// Length.
        len: u64,
        /// Guest RAM size.
        ram: u64,
    },
    /// The stream digest does not match.
    #[snafu(display("stream digest mismatch at byte {offset}: the stream is corrupt"))]
    Digest {
        /// Offset of the end record.
        offset: u64,
    },
    /// Bytes after the end record.
    #[snafu(display("unexpected data after the end record at byte {offset}"))]
    Trailing {
        /// Offset of the first extra byte.
        offset: u64,
    },
    /// The consumer of a record's bulk bytes refused them (see `RecordSink`).
    #[snafu(display("applying the record payload at byte {offset} failed: {source}"))]
    Sink {
        /// Stream offset of the piece.
        offset: u64,
        /// The consumer's error.
        source: super::sink::SinkError,
    },
    /// Records in an order the protocol does not allow.
    #[snafu(display("record {kind} at byte {offset} is out of order: {why}"))]
    Order {
        /// Record kind name.
        kind: &'static str,
        /// Stream offset.
        offset: u64,
        /// What is wrong.
        why: &'static str,
    },
}

/// `Result` with a [`StreamError`].
pub type Result<T, E = StreamError> = std::result::Result<T, E>;

/// The stream header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// Format major version.
    pub major: u16,
    /// Format minor version.
    pub minor: u16,
    /// Feature flags (reserved, 0).
    pub flags: u32,
    /// Guest RAM size in bytes.
    pub ram_size: u64,
    /// Page size of RAM records.
    pub page_size: u32,
    /// The vGPU's mdev type.
    pub mdev_type: String,
}

impl Header {
    /// Encode.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32 + self.mdev_type.len());
        v.extend_from_slice(&STREAM_MAGIC);
        v.extend_from_slice(&self.major.to_le_bytes());
        v.extend_from_slice(&self.minor.to_le_bytes());
        v.extend_from_slice(&self.flags.to_le_bytes());
        v.extend_from_slice(&self.ram_size.to_le_bytes());
        v.extend_from_slice(&self.page_size.to_le_bytes());
        v.extend_from_slice(&(self.mdev_type.len() as u16).to_le_bytes());
        v.extend_from_slice(self.mdev_type.as_bytes());
        v
    }
}

/// Record kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum RecordKind {
    /// `gpa:u64` then whole pages.
    RamPages = 1,
    /// `gpa:u64 pages:u64`: pages the target must zero.
    RamZero = 2,
    /// One chunk of device data, as the device-state region produced it.
    DeviceData = 3,
    /// End of the device data (the device's stream is complete).
    DeviceEnd = 4,
    /// PCI config space state.
    Config = 5,
    /// vCPU state.
    Vcpu = 6,
    /// The source stopped its vCPU: `stopped_ns:u64` (CLOCK_MONOTONIC). What follows is
    /// the stop-and-copy residue.
    Switchover = 7,
    /// `seq:u64`: the target answers with a `Synced` control message once it has consumed
    /// everything before this record (the source learns how far behind the target is).
    Sync = 8,
    /// End of stream: SHA-256 of the stream before this record (less page and device bytes)
    /// and XXH3-128 of the guest RAM page bytes.
    End = 0xff,
}

impl RecordKind {
    /// Decode a kind value.
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::RamPages,
            2 => Self::RamZero,
            3 => Self::DeviceData,
            4 => Self::DeviceEnd,
            5 => Self::Config,
            6 => Self::Vcpu,
            7 => Self::Switchover,
            8 => Self::Sync,
            0xff => Self::End,
            _ => return None,
        })
    }

    /// Name for messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::RamPages => "RAM_PAGES",
            Self::RamZero => "RAM_ZERO",
            Self::DeviceData => "DEVICE_DATA",
            Self::DeviceEnd => "DEVICE_END",
            Self::Config => "CONFIG",
            Self::Vcpu => "VCPU",
            Self::Switchover => "SWITCHOVER",
            Self::Sync => "SYNC",
            Self::End => "END",
        }
    }
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    /// Consecutive guest pages from `gpa`.
    RamPages {
        /// First page's address.
        gpa: u64,
        /// Page contents (a whole number of pages).
        data: Vec<u8>,
    },
    /// Pages to clear.
    RamZero {
        /// First page's address.
        gpa: u64,
        /// Number of pages.
        pages: u64,
    },
    /// A device data chunk.
    DeviceData(Vec<u8>),
    /// The device data is complete.
    DeviceEnd,
    /// PCI config space state bytes.
    Config(Vec<u8>),
    /// vCPU state bytes.
    Vcpu(Vec<u8>),
    /// Answer with `Synced { seq }` once everything before is consumed.
    Sync {
        /// Sequence number.
        seq: u64,
    },
    /// The source stopped its vCPU at this CLOCK_MONOTONIC time.
    Switchover {
        /// Nanoseconds.
        stopped_ns: u64,
    },
}
