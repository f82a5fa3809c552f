//! The vGPU context format: what a device's saved state looks like as a byte stream.
//!
//! Little-endian throughout. A stream is a context header, any number of typed sections, and
//! an end section:
//!
//! ```text
//!  context header                      section (repeated)                    end section
//! +--------+-----+-----+-----+------+  +----+-----+-----+------+-------+----+  +------+--------+
//! | magic  |major|minor| len | name |  | id |major|minor|length|payload| D  |  | id=0 | chain  |
//! | 8 B    | u16 | u16 | u16 | len B|  | u32| u16 | u16 | u64  |length | 32 |  | len=0| digest |
//! +--------+-----+-----+-----+------+  +----+-----+-----+------+-------+----+  +------+--------+
//!  "VGPUCTX\0"                          \______ 16-byte header ______/
//! ```
//!
//! * The context header names the format version ([`FORMAT_MAJOR`].[`FORMAT_MINOR`]; a
//!   reader accepts any minor of its major) and the mdev type the context belongs to
//!   (at most [`MDEV_TYPE_NAME_MAX`] bytes of UTF-8).
//! * A section's trailing digest `D` is SHA-256 over its 16-byte header and its payload, so a
//!   producer can stream a large payload (512 MiB of graphics memory) and hash it on the
//!   way, and a consumer can verify it without buffering it. Covering the header too means a
//!   corrupted id, version or length is caught at that section, not applied to the wrong one.
//! * Section ids and per-section versions are the device's business; the format only reserves
//!   [`END_SECTION_ID`] for the end marker.
//! * The end section has length 0 and its digest *chains the whole stream*: SHA-256 over the
//!   encoded context header, every section digest in order, and the end section's own
//!   header. It catches what per-section digests cannot: a corrupted context header (a
//!   changed minor version or type name), and sections dropped, duplicated or reordered.
//!
//! Encoding goes through [`ContextEncoder`] (which keeps the chain); decoding through the
//! push parser [`ContextParser`], which takes the stream in chunks of arbitrary sizes,
//! checks each section's length against a per-id cap *before* telling its
//! [`SectionSink`] (so nothing is ever allocated from an unchecked length), streams payload
//! pieces to the sink, and only buffers headers and digests. It takes a feed in batches of
//! [`BATCH`] bytes and hashes the sections of a batch on several cores ([`parallel`]),
//! which is why a large payload is best written as several sections. [`scan`] and
//! [`inspect`] are non-streaming helpers for tools.

mod encode;
mod error;
mod header;
pub mod parallel;
mod parser;
mod scan;
mod sink;

#[cfg(test)]
mod batch_tests;
#[cfg(test)]
mod tests;

pub use encode::{ContextEncoder, SectionEncoder};
pub use error::{FormatError, Result};
pub use header::{hex, section_encoded_len, ContextHeader, SectionHeader};
pub use parser::ContextParser;
pub use scan::{inspect, scan, ContextSummary, SectionInfo};
pub use sink::{DiscardSink, ParserLimits, SectionSink};

/// The first eight bytes of every context stream.
pub const MAGIC: [u8; 8] = *b"VGPUCTX\0";
/// Major version of the format this crate writes; a reader rejects any other major.
pub const FORMAT_MAJOR: u16 = 1;
/// Minor version of the format this crate writes; a reader accepts any minor of its major.
pub const FORMAT_MINOR: u16 = 0;
/// Cap on the length of the mdev type name in the context header, in bytes.
pub const MDEV_TYPE_NAME_MAX: usize = 64;
/// Size of the fixed part of the context header: magic, major, minor, name length.
pub const CONTEXT_HEADER_FIXED_SIZE: usize = 14;
/// Size of an encoded [`SectionHeader`].
pub const SECTION_HEADER_SIZE: usize = 16;
/// Size of a section's trailing SHA-256 digest.
pub const DIGEST_SIZE: usize = 32;
/// Section id reserved for the end marker (length 0, digest chaining the whole stream).
pub const END_SECTION_ID: u32 = 0;
/// Encoded size of the end section.
pub const END_SECTION_SIZE: usize = SECTION_HEADER_SIZE + DIGEST_SIZE;
/// Most bytes of one `feed` the parser parses, hashes (on several cores) and delivers at a
/// time.
pub const BATCH: usize = 1 << 20;
