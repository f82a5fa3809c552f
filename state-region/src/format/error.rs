//! Errors of the context format.

use snafu::Snafu;

use super::{END_SECTION_ID, FORMAT_MAJOR, MDEV_TYPE_NAME_MAX};

/// What is wrong with a context stream, and where.
///
/// Every variant of a decoding error carries the stream byte offset it was found at and,
/// where one is involved, the section id, so a one-line message is enough to find the fault
/// with a hex dump.
#[derive(Debug, Snafu, Clone, PartialEq, Eq)]
#[snafu(visibility(pub(crate)))]
pub enum FormatError {
    /// The stream does not start with [`MAGIC`](super::MAGIC).
    #[snafu(display("byte {offset}: bad magic, this is not a vGPU context stream"))]
    BadMagic {
        /// Offset of the first byte that differs from the magic.
        offset: u64,
    },
    /// The format major version is not [`FORMAT_MAJOR`].
    #[snafu(display(
        "byte {offset}: format version {major}.{minor} is not supported (this reader reads {FORMAT_MAJOR}.x)"
    ))]
    UnsupportedVersion {
        /// Offset of the version fields.
        offset: u64,
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// The mdev type name is empty, over [`MDEV_TYPE_NAME_MAX`] bytes, or not UTF-8.
    #[snafu(display("byte {offset}: bad mdev type name: {reason}"))]
    BadMdevTypeName {
        /// Offset of the name's length field or of the name.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The context belongs to another mdev type than the one resuming it.
    #[snafu(display("byte {offset}: context is for mdev type {found:?}, expected {expected:?}"))]
    WrongMdevType {
        /// Offset of the name.
        offset: u64,
        /// The type of the device resuming the context.
        expected: String,
        /// The type named in the stream.
        found: String,
    },
    /// A section declares a payload longer than the reader's cap for its id.
    #[snafu(display(
        "byte {offset}: section {id} declares {length} payload bytes, over its cap of {cap}"
    ))]
    SectionTooLong {
        /// Offset of the section header.
        offset: u64,
        /// Section id.
        id: u32,
        /// Declared payload length.
        length: u64,
        /// The reader's cap for this id.
        cap: u64,
    },
    /// A section id the reader does not know.
    #[snafu(display("byte {offset}: unknown section id {id}"))]
    UnknownSection {
        /// Offset of the section header.
        offset: u64,
        /// Section id.
        id: u32,
    },
    /// A section's digest (or the end section's stream digest) does not match.
    #[snafu(display("byte {offset}: {}", digest_subject(*id)))]
    DigestMismatch {
        /// Offset of the digest.
        offset: u64,
        /// Section id ([`END_SECTION_ID`] for the stream digest).
        id: u32,
    },
    /// The section sink refused a section's header, a payload piece, or the whole section.
    #[snafu(display("byte {offset}: section {id} rejected: {reason}"))]
    Rejected {
        /// Stream offset of what was refused.
        offset: u64,
        /// Section id.
        id: u32,
        /// The sink's reason.
        reason: String,
    },
    /// The stream ended in the middle of something, or before the end section.
    #[snafu(display("byte {offset}: stream ends {what}"))]
    Truncated {
        /// Number of bytes the stream had.
        offset: u64,
        /// What it ended inside of.
        what: String,
    },
    /// Bytes follow the end section.
    #[snafu(display("byte {offset}: data after the end section"))]
    TrailingData {
        /// Offset of the first byte after the end section.
        offset: u64,
    },
    /// An encoder was given a different number of payload bytes than the section declared.
    #[snafu(display("section {id}: declared {declared} payload bytes but was given {given}"))]
    LengthMismatch {
        /// Section id.
        id: u32,
        /// Length declared in the section header.
        declared: u64,
        /// Bytes given.
        given: u64,
    },
    /// An encoder was asked for a section with the reserved id [`END_SECTION_ID`].
    #[snafu(display("section id {id} is reserved for the end section"))]
    ReservedId {
        /// The id asked for.
        id: u32,
    },
    /// A context header that cannot be encoded (an empty or over-long mdev type name).
    #[snafu(display("mdev type name {name:?} is not 1 to {MDEV_TYPE_NAME_MAX} bytes"))]
    BadHeader {
        /// The name given.
        name: String,
    },
}

/// `Result` with a [`FormatError`].
pub type Result<T, E = FormatError> = std::result::Result<T, E>;

fn digest_subject(id: u32) -> String {
    if id == END_SECTION_ID {
        "the end section's stream digest does not match the header and sections before it"
            .to_string()
    } else {
        format!("section {id} does not match its SHA-256 digest")
    }
}
