//! RAM channels: guest RAM pages on several TCP connections beside the main stream, as
//! QEMU's multifd moves RAM (`--channels N`).
//!
//! The main connection carries everything it always did (the control messages, the
//! device's data, zero runs of the main stream, config, vCPU, the switchover and the end);
//! in pre-copy and stop-and-copy the source's main thread only cuts the dirty bitmap into
//! runs of at most [`MAX_UNIT_PAGES`] pages and hands them to the channels in turn. Each
//! channel's thread reads its pages from guest RAM into a buffer of its own, hashes them
//! while they are in its cache, and writes them; each target thread reads a unit, hashes it
//! while it is in its cache, and writes it into guest RAM. So the copies and the hashing of
//! guest RAM spread over the cores of both hosts, and a page never waits behind the
//! device's data.
//!
//! ```text
//! channel := hello unit* end
//! hello   := "VGPUCHAN" session:u64 index:u32 count:u32       (the target's Hello's
//!                                                                session; index < count)
//! unit    := kind:u32 pages:u32 gpa:u64 seq:u64 payload
//!   PAGES (1): payload = pages * 4096 bytes, to guest RAM at gpa (1 <= pages <= 128)
//!   ZERO  (2): no payload; pages pages from gpa are zero      (1 <= pages <= 128)
//!   MARK  (3): no payload; every unit of round `seq` is before this one
//! end     := kind=END(4) pages=0 gpa=0 seq=0 xxh3_128(every unit before it, headers and
//!            payloads, in order; little-endian):16
//! ```
//!
//! Ordering: a page sent twice (in two rounds) may go on two channels. The source ends
//! each pre-copy round with a MARK on every channel before the main stream's SYNC, and the
//! target answers a SYNC only once every channel has applied its MARK; the source starts
//! the next round only after that answer. So a page's later copy is always applied after
//! its earlier one. At the end the target commits nothing before every channel's END has
//! arrived and its digest matched: a corrupted byte on a channel is refused as on the main
//! stream. Every unit's address is checked against guest RAM before a byte is written.

mod recv;
mod send;

pub use recv::{accept_channels, RamReceivers};
pub use send::{ChannelTotals, RamChannels};

/// First bytes of a RAM channel's connection.
pub const CHANNEL_MAGIC: [u8; 8] = *b"VGPUCHAN";
/// Bytes of a channel's hello.
pub const HELLO_LEN: usize = 24;
/// Bytes of a unit header.
pub const UNIT_HEADER: usize = 24;
/// Most pages in one unit (512 KiB).
pub const MAX_UNIT_PAGES: u32 = 128;
/// Most RAM channels a migration may open.
pub const MAX_CHANNELS: u32 = 8;

/// What a unit is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitKind {
    /// Pages with their bytes.
    Pages = 1,
    /// Pages the target must zero.
    Zero = 2,
    /// The end of a pre-copy round on this channel.
    Mark = 3,
    /// The channel's end, with its digest.
    End = 4,
}

/// A unit's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    /// Kind.
    pub kind: UnitKind,
    /// Pages (PAGES, ZERO), else 0.
    pub pages: u32,
    /// Guest address of the first page (PAGES, ZERO), else 0.
    pub gpa: u64,
    /// Round (MARK), else 0.
    pub seq: u64,
}

impl Unit {
    /// The header's bytes.
    pub fn encode(&self) -> [u8; UNIT_HEADER] {
        let mut b = [0u8; UNIT_HEADER];
        b[..4].copy_from_slice(&(self.kind as u32).to_le_bytes());
        b[4..8].copy_from_slice(&self.pages.to_le_bytes());
        b[8..16].copy_from_slice(&self.gpa.to_le_bytes());
        b[16..].copy_from_slice(&self.seq.to_le_bytes());
        b
    }

    /// A header from its bytes, or what is wrong with them (its kind and page count;
    /// addresses are checked by the receiver, which knows guest RAM's size).
    pub fn decode(b: &[u8; UNIT_HEADER]) -> Result<Self, String> {
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let u64_at = |i: usize| {
            let mut x = [0u8; 8];
            x.copy_from_slice(&b[i..i + 8]);
            u64::from_le_bytes(x)
        };
        let kind = match u32_at(0) {
            1 => UnitKind::Pages,
            2 => UnitKind::Zero,
            3 => UnitKind::Mark,
            4 => UnitKind::End,
            k => return Err(format!("unknown unit kind {k}")),
        };
        let u = Self {
            kind,
            pages: u32_at(4),
            gpa: u64_at(8),
            seq: u64_at(16),
        };
        let paged = matches!(kind, UnitKind::Pages | UnitKind::Zero);
        if paged && !(1..=MAX_UNIT_PAGES).contains(&u.pages) {
            return Err(format!(
                "a unit of {} pages (1 to {MAX_UNIT_PAGES} allowed)",
                u.pages
            ));
        }
        if !paged && u.pages != 0 {
            return Err(format!("a {kind:?} unit with {} pages", u.pages));
        }
        Ok(u)
    }
}

/// A channel's hello: which migration (the target's session) and which channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelHello {
    /// The target's session, from its hello.
    pub session: u64,
    /// This channel.
    pub index: u32,
    /// Channels in all.
    pub count: u32,
}

impl ChannelHello {
    /// The hello's bytes.
    pub fn encode(&self) -> [u8; HELLO_LEN] {
        let mut b = [0u8; HELLO_LEN];
        b[..8].copy_from_slice(&CHANNEL_MAGIC);
        b[8..16].copy_from_slice(&self.session.to_le_bytes());
        b[16..20].copy_from_slice(&self.index.to_le_bytes());
        b[20..].copy_from_slice(&self.count.to_le_bytes());
        b
    }

    /// A hello from its bytes (`None` without the magic).
    pub fn decode(b: &[u8; HELLO_LEN]) -> Option<Self> {
        if b[..8] != CHANNEL_MAGIC {
            return None;
        }
        let mut s = [0u8; 8];
        s.copy_from_slice(&b[8..16]);
        Some(Self {
            session: u64::from_le_bytes(s),
            index: u32::from_le_bytes([b[16], b[17], b[18], b[19]]),
            count: u32::from_le_bytes([b[20], b[21], b[22], b[23]]),
        })
    }
}

/// A fresh session number for a target's hello (random keys of the standard hasher: a
/// stranger's connection cannot guess it, a stale source's channel cannot match it).
pub fn new_session() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(super::clock::monotonic_ns());
    h.write_u32(std::process::id());
    h.finish()
}

#[cfg(test)]
mod tests;
