//! Error types of the crate, one enum per concern.

use snafu::Snafu;

/// Why a [`crate::ConfigParams`] cannot describe a device.
#[derive(Debug, Clone, PartialEq, Eq, Snafu)]
#[snafu(module(params_error), visibility(pub(crate)))]
pub enum ParamsError {
    /// A BAR size is not a power of two of at least 4 KiB.
    #[snafu(display("BAR{bar} size {size:#x} is not a power of two of at least 4 KiB"))]
    BarSize {
        /// The BAR number.
        bar: u8,
        /// The size asked for.
        size: u64,
    },
    /// The MSI-X table size is outside 1..=2048.
    #[snafu(display("MSI-X table size {size} is outside 1..=2048"))]
    MsixTableSize {
        /// The number of vectors asked for.
        size: u16,
    },
    /// An MSI-X structure offset is not QWORD-aligned or does not fit the 32-bit field.
    #[snafu(display("MSI-X {what} offset {offset:#x} is not 8-byte aligned below 4 GiB"))]
    MsixOffset {
        /// "table" or "PBA".
        what: &'static str,
        /// The offset asked for.
        offset: u64,
    },
    /// An MSI-X structure does not fit inside BAR0.
    #[snafu(display("MSI-X {what} ends at {end:#x}, beyond BAR0 of {bar0_size:#x} bytes"))]
    MsixOutsideBar0 {
        /// "table" or "PBA".
        what: &'static str,
        /// First byte after the structure.
        end: u64,
        /// The BAR0 size.
        bar0_size: u64,
    },
    /// The MSI-X table and PBA overlap.
    #[snafu(display("MSI-X table {table:#x} and PBA {pba:#x} overlap"))]
    MsixOverlap {
        /// The table offset.
        table: u64,
        /// The PBA offset.
        pba: u64,
    },
}

/// Why a configuration access is not one the device supports.
#[derive(Debug, Clone, PartialEq, Eq, Snafu)]
#[snafu(module(access_error), visibility(pub(crate)))]
pub enum AccessError {
    /// The access size is not 1, 2 or 4 bytes.
    #[snafu(display("access of {len} bytes at {offset:#x} is not 1, 2 or 4 bytes"))]
    Size {
        /// The offset accessed.
        offset: u64,
        /// The length asked for.
        len: usize,
    },
    /// The access is not naturally aligned.
    #[snafu(display("access of {len} bytes at {offset:#x} is not naturally aligned"))]
    Alignment {
        /// The offset accessed.
        offset: u64,
        /// The length asked for.
        len: usize,
    },
    /// The access does not lie inside the 4 KiB configuration space.
    #[snafu(display("access of {len} bytes at {offset:#x} is beyond the 4 KiB space"))]
    OutOfRange {
        /// The offset accessed.
        offset: u64,
        /// The length asked for.
        len: usize,
    },
}

/// Why a serialized [`crate::ConfigSpaceState`] was refused.
#[derive(Debug, Clone, PartialEq, Eq, Snafu)]
#[snafu(module(state_error), visibility(pub(crate)))]
pub enum StateError {
    /// The input is larger than any valid state; nothing was allocated.
    #[snafu(display("state of {len} bytes exceeds the {max}-byte cap"))]
    TooLarge {
        /// Input length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The input ended inside a section.
    #[snafu(display("state truncated in the {section}: {needed} bytes needed, {available} left"))]
    Truncated {
        /// Which section was being read.
        section: &'static str,
        /// Bytes the section needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// The magic number is not ours.
    #[snafu(display("bad magic {found:02x?}"))]
    BadMagic {
        /// The bytes found.
        found: [u8; 8],
    },
    /// The format version is not one this build reads.
    #[snafu(display("unsupported format version {major}.{minor}"))]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// The configuration section is not exactly 4 KiB.
    #[snafu(display("configuration section of {len} bytes, expected 4096"))]
    ConfigLength {
        /// The length declared.
        len: u32,
    },
    /// The MSI-X table section is not a whole number of 16-byte entries, 1..=2048 of them.
    #[snafu(display("MSI-X table section of {len} bytes is not 1..=2048 16-byte entries"))]
    TableLength {
        /// The length declared.
        len: u32,
    },
    /// The PBA section does not match the number of MSI-X vectors.
    #[snafu(display("PBA of {len} words for {vectors} vectors, expected {expected}"))]
    PbaLength {
        /// The number of 64-bit words declared.
        len: u32,
        /// The number of vectors in the table.
        vectors: u32,
        /// The number of words those vectors need.
        expected: u32,
    },
    /// A BAR size is neither 0 nor a power of two of at least 16 bytes.
    #[snafu(display("BAR{bar} size {size:#x} is not 0 or a power of two of at least 16"))]
    BarSize {
        /// The BAR number.
        bar: u8,
        /// The size found.
        size: u64,
    },
    /// A PBA bit is set for a vector beyond the table.
    #[snafu(display("PBA bit {vector} is set but the table has {vectors} vectors"))]
    PbaBitOutOfRange {
        /// The vector whose bit is set.
        vector: u32,
        /// The number of vectors in the table.
        vectors: u32,
    },
    /// Bytes follow the checksum.
    #[snafu(display("{count} trailing bytes after the checksum"))]
    TrailingBytes {
        /// How many.
        count: usize,
    },
    /// The CRC-32 does not match the contents.
    #[snafu(display("checksum {found:#010x} does not match contents ({computed:#010x})"))]
    Checksum {
        /// The checksum stored in the input.
        found: u32,
        /// The checksum of the contents.
        computed: u32,
    },
}

/// Why host resources could not be assigned to a guest-visible BAR or vector.
#[derive(Debug, Clone, PartialEq, Eq, Snafu)]
#[snafu(module(resource_error), visibility(pub(crate)))]
pub enum ResourceError {
    /// A decoding BAR has no host region.
    #[snafu(display("BAR{bar} decodes but the host gave it no region"))]
    MissingBarRegion {
        /// The BAR number.
        bar: u8,
    },
    /// An enabled interrupt vector has no host sink.
    #[snafu(display("vector {vector} is enabled but the host gave it no interrupt sink"))]
    MissingInterruptSink {
        /// The vector.
        vector: u16,
    },
}

/// Why a saved configuration space could not be replayed onto a target device.
#[derive(Debug, Clone, PartialEq, Eq, Snafu)]
#[snafu(module(replay_error), visibility(pub(crate)))]
pub enum ReplayError {
    /// A read-only field differs between the saved device and the target device.
    #[snafu(display(
        "read-only {field} at {offset:#05x} differs: saved {saved:#x}, target {target:#x}"
    ))]
    ReadOnlyMismatch {
        /// The register or field name.
        field: &'static str,
        /// Its offset in configuration space.
        offset: u16,
        /// The saved value of its read-only bits.
        saved: u32,
        /// The target's value of its read-only bits.
        target: u32,
    },
    /// A BAR's size differs between the saved device and the target device.
    #[snafu(display("BAR{bar} size differs: saved {saved:#x}, target {target:#x}"))]
    BarSizeMismatch {
        /// The BAR number.
        bar: u8,
        /// The saved size.
        saved: u64,
        /// The target's size.
        target: u64,
    },
    /// The MSI-X table length differs between the saved device and the target device.
    #[snafu(display("MSI-X table length differs: saved {saved} bytes, target {target} bytes"))]
    MsixTableLength {
        /// Saved table bytes.
        saved: usize,
        /// Target table bytes.
        target: usize,
    },
    /// The PBA length differs between the saved device and the target device.
    #[snafu(display("PBA length differs: saved {saved} words, target {target} words"))]
    PbaLength {
        /// Saved PBA words.
        saved: usize,
        /// Target PBA words.
        target: usize,
    },
    /// A reserved (read-only) bit of a saved MSI-X table entry is set.
    #[snafu(display(
        "MSI-X vector {vector} dword {dword} has read-only bits {bits:#x} set in the saved table"
    ))]
    MsixEntryReadOnly {
        /// The vector.
        vector: u16,
        /// The dword within the 16-byte entry.
        dword: u8,
        /// The offending bits.
        bits: u32,
    },
    /// A saved PBA bit is set for a vector beyond the table.
    #[snafu(display("saved PBA has bit {vector} set beyond the table"))]
    PbaBitOutOfRange {
        /// The vector.
        vector: u32,
    },
    /// After the replay the target does not hold the saved value (the saved state holds a
    /// value the device refuses, such as an unsupported power state).
    #[snafu(display(
        "replay diverged at {what} {offset:#x}: saved {saved:#04x}, target {target:#04x}"
    ))]
    Diverged {
        /// "config", "MSI-X table" or "PBA".
        what: &'static str,
        /// Byte offset (PBA: word index).
        offset: usize,
        /// Expected value.
        saved: u64,
        /// Value the target holds.
        target: u64,
    },
    /// The target's params do not describe a device.
    #[snafu(display("target params are invalid"))]
    Params {
        /// What is wrong with them.
        source: ParamsError,
    },
    /// The target host cannot back what the guest had enabled.
    #[snafu(display("target host resources do not cover the guest's device"))]
    Resources {
        /// What is missing.
        source: ResourceError,
    },
}

/// Why a [`crate::ConfigPort`] access failed: a message, or the error underneath.
#[derive(Debug, Snafu)]
#[snafu(module(port_error), visibility(pub(crate)))]
pub enum PortError {
    /// The port refused the access, with a reason.
    #[snafu(display("{message}"))]
    Message {
        /// What went wrong.
        message: String,
    },
    /// The port's own I/O failed.
    #[snafu(display("{what}"))]
    Io {
        /// What the port was doing.
        what: String,
        /// The underlying error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl PortError {
    /// A port error carrying only a message.
    pub fn msg(message: impl Into<String>) -> Self {
        Self::Message {
            message: message.into(),
        }
    }

    /// A port error wrapping the error underneath.
    pub fn from_source(
        what: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Io {
            what: what.into(),
            source: source.into(),
        }
    }
}

/// Why [`crate::probe`] could not describe a device as [`crate::ConfigParams`].
#[derive(Debug, Snafu)]
#[snafu(module(probe_error), visibility(pub(crate)))]
pub enum ProbeError {
    /// A configuration access through the port failed.
    #[snafu(display("{doing} at config offset {offset:#x}"))]
    Port {
        /// What the probe was doing.
        doing: &'static str,
        /// The configuration offset accessed.
        offset: u64,
        /// The port's error.
        source: PortError,
    },
    /// The vendor ID reads all ones: no function answers.
    #[snafu(display("no function answers: vendor ID reads {vendor:#06x}"))]
    NotPresent {
        /// The vendor ID read.
        vendor: u16,
    },
    /// The Status register says the function has no capability list.
    #[snafu(display("the function has no capability list (status {status:#06x})"))]
    NoCapabilities {
        /// The Status register read.
        status: u16,
    },
    /// The capability list points into the header, loops, or is too long.
    #[snafu(display("capability list is malformed at pointer {pointer:#x}: {reason}"))]
    CapabilityList {
        /// The offending pointer.
        pointer: u8,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// No MSI-X capability in the list.
    #[snafu(display("the function has no MSI-X capability (capabilities: {found:?})"))]
    NoMsix {
        /// The capability IDs found, in list order.
        found: Vec<u8>,
    },
    /// The MSI-X table or PBA is not in BAR0.
    #[snafu(display("MSI-X {what} is in BAR{bir}; this model keeps it in BAR0"))]
    MsixBir {
        /// "table" or "PBA".
        what: &'static str,
        /// The BAR Indicator read.
        bir: u8,
    },
    /// A BAR this model expects to be memory is an I/O BAR.
    #[snafu(display("BAR{bar} is an I/O BAR ({value:#010x}); expected 64-bit memory"))]
    IoBar {
        /// The BAR number.
        bar: u8,
        /// The BAR's value.
        value: u32,
    },
    /// A BAR this model expects to be 64-bit is not.
    #[snafu(display("BAR{bar} is not a 64-bit memory BAR ({value:#010x})"))]
    Not64Bit {
        /// The BAR number.
        bar: u8,
        /// The BAR's value.
        value: u32,
    },
    /// A BAR's prefetchable bit is not the model's.
    #[snafu(display("BAR{bar} prefetchable is {found}; this model has {expected}"))]
    Prefetchable {
        /// The BAR number.
        bar: u8,
        /// The bit read.
        found: bool,
        /// The bit the model has.
        expected: bool,
    },
    /// Sizing found no writable address bits: the BAR is not implemented.
    #[snafu(display("BAR{bar} reads back no address bits after sizing: not implemented"))]
    BarNotImplemented {
        /// The BAR number.
        bar: u8,
    },
    /// What was read does not make valid params (sizes, MSI-X geometry).
    #[snafu(display("the probed device does not fit this model"))]
    Params {
        /// What is wrong with the params read.
        source: ParamsError,
    },
}
