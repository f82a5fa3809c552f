//! The migration stream: what travels from source to target, and what a snapshot file holds
//! (a snapshot is a migration to a file, as QEMU's `savevm`/`exec:` migration is).
//!
//! ```text
//! stream  := header record* end
//! header  := "VGPUMIG\0" major:u16 minor:u16 flags:u32 ram_size:u64 page_size:u32
//!            type_len:u16 mdev_type:[u8; type_len]
//! record  := kind:u32 length:u32 payload:[u8; length]
//! end     := kind=END length=48 sha256(every byte before this record, except the
//!            page bytes of RAM_PAGES records and the payloads of DEVICE_DATA records)
//!            xxh3_128(the page bytes of every RAM_PAGES record, in order; little-endian)
//! ```
//!
//! Bulk guest RAM is checked with XXH3-128 instead of SHA-256: the check is against
//! corruption, not an adversary (the stream is not authenticated either way), and SHA-256
//! on every RAM byte on both ends capped the whole migration at about 0.45 GB/s on two
//! cores. Everything else (record headers, addresses, zero runs, config, vCPU state, the
//! switchover and sync marks) stays under SHA-256.
//!
//! Device data is left out of the stream digest on purpose: the device's context format
//! carries its own SHA-256 per section and a digest chaining the whole context, which the
//! target device checks before it commits anything; hashing those bytes twice would halve
//! the target's speed for nothing.
//!
//! Record kinds ([`RecordKind`]): guest RAM pages (a run of consecutive pages), zero runs (pages
//! the target must clear), device data chunks exactly as the device-state region produced
//! them, the end of the device data, PCI config space, vCPU state, the switchover mark (when the source stopped its vCPU), and the end marker. All
//! integers are little-endian. A reader checks every length against a cap before it
//! allocates, every address against guest RAM, and the whole stream's SHA-256 before the
//! target commits anything to its device.

mod reader;
mod record;
mod sink;
mod writer;

pub use reader::{StreamReader, TrailerCheck};
pub use record::{
    Header, RamHash, Record, RecordKind, StreamError, END_LEN, MAX_RECORD, STREAM_MAGIC,
};
pub use sink::{RecordSink, SinkError};
pub use writer::{BulkWrite, StreamWriter, WriteStats};

/// Stream format major version.
pub const STREAM_MAJOR: u16 = 1;
/// Stream format minor version.
pub const STREAM_MINOR: u16 = 0;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_sink;
