//! The engine's saved state and its versioned byte format.
//!
//! # Format (version 1.0, little-endian, 60 bytes exactly)
//!
//! ```text
//! 0   magic "VENG"
//! 4   major u16 = 1, minor u16 = 0
//! 8   payload length u32 = 48
//! 12  flags u32: bit 0 in a batch, bit 1 halted; other bits must be 0
//! 16  batch start u64          24  batch offset u32
//! 28  vertex buffer u64
//! 36  render target: offset u32, stride u32, width u16, height u16
//! 48  texture:       offset u32, stride u32, width u16, height u16
//! ```

use snafu::Snafu;

use crate::regs::SYS_BASE;

use super::exec::GTT_END;
use super::surface::{Surface, SurfaceError};

/// Magic number of the engine state.
const MAGIC: [u8; 4] = *b"VENG";
/// Format major version this build writes and reads.
const MAJOR: u16 = 1;
/// Format minor version this build writes and reads.
const MINOR: u16 = 0;
/// Bytes before the payload.
const HEADER_LEN: usize = 12;
/// Bytes of the version 1.0 payload.
const PAYLOAD_LEN: usize = 48;
/// Bytes of the whole encoding; also the input cap.
pub(crate) const ENCODED_LEN: usize = HEADER_LEN + PAYLOAD_LEN;

/// Flags bit: the engine is executing a batch.
const FLAG_IN_BATCH: u32 = 1 << 0;
/// Flags bit: the engine is halted by an error.
const FLAG_HALTED: u32 = 1 << 1;
/// Every defined flags bit.
const FLAGS_ALL: u32 = FLAG_IN_BATCH | FLAG_HALTED;

/// The engine's state beyond the register file: enough to resume at the exact command where
/// it stopped. The ring head and tail are registers, not part of this state; the ring
/// position to return to after a batch is `REG_RING_HEAD`, which already points past the
/// `BATCH_START`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EngineState {
    /// Executing a batch buffer.
    pub in_batch: bool,
    /// Graphics address of the current batch (0 outside a batch).
    pub batch_start: u64,
    /// Byte offset of the next command in the current batch (0 outside a batch).
    pub batch_offset: u32,
    /// Render target set by `SET_RENDER_TARGET` (empty after reset).
    pub render_target: Surface,
    /// Texture set by `SET_TEXTURE` (empty after reset).
    pub texture: Surface,
    /// Vertex buffer graphics address set by `SET_VERTEX_BUFFER` (0 after reset).
    pub vertex_buffer: u64,
    /// Halted by an error until reset.
    pub halted: bool,
}

/// Why an engine state was refused, as bytes or as a state.
#[derive(Debug, Clone, PartialEq, Eq, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum EngineStateError {
    /// The input is longer than any engine state; nothing was parsed.
    #[snafu(display("engine state of {len} bytes exceeds the {max}-byte cap"))]
    Oversized {
        /// Input length.
        len: usize,
        /// The cap.
        max: usize,
    },
    /// The input ended early.
    #[snafu(display(
        "engine state truncated in the {section}: {needed} bytes needed, {len} given"
    ))]
    Truncated {
        /// "header" or "payload".
        section: &'static str,
        /// Bytes needed up to the end of that section.
        needed: usize,
        /// Input length.
        len: usize,
    },
    /// The magic number is not the engine's.
    #[snafu(display("bad magic {found:02x?}"))]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// A format version this build does not read.
    #[snafu(display("unsupported engine state version {major}.{minor}"))]
    UnsupportedVersion {
        /// Major version found.
        major: u16,
        /// Minor version found.
        minor: u16,
    },
    /// The declared payload length is not the version's.
    #[snafu(display("payload of {len} bytes declared, version 1.0 has {expected}"))]
    PayloadLength {
        /// Declared length.
        len: u32,
        /// The version's length.
        expected: usize,
    },
    /// Undefined flag bits are set.
    #[snafu(display("undefined flags {flags:#x}"))]
    UnknownFlags {
        /// The flags dword.
        flags: u32,
    },
    /// A saved surface does not fit the graphics memory.
    #[snafu(display("the saved {which} does not fit graphics memory"))]
    BadSurface {
        /// "render target" or "texture".
        which: &'static str,
        /// What is wrong with it.
        source: SurfaceError,
    },
    /// The batch position is not a dword-aligned address in the GTT range.
    #[snafu(display(
        "batch position {start:#x} + {offset:#x} is not a dword address in the GTT range"
    ))]
    BatchPosition {
        /// Saved batch start.
        start: u64,
        /// Saved batch offset.
        offset: u32,
    },
    /// Outside a batch, the batch fields are not zero.
    #[snafu(display("not in a batch, but batch position is {start:#x} + {offset:#x}"))]
    StaleBatch {
        /// Saved batch start.
        start: u64,
        /// Saved batch offset.
        offset: u32,
    },
    /// The vertex buffer is neither unset (0) nor in the GTT range.
    #[snafu(display("vertex buffer {addr:#x} is outside the GTT range"))]
    VertexBuffer {
        /// Saved vertex buffer address.
        addr: u64,
    },
}

/// Result of engine state handling.
pub type Result<T, E = EngineStateError> = std::result::Result<T, E>;

/// Whether `addr` lies in the GTT range.
pub(crate) fn in_gtt_range(addr: u64) -> bool {
    (SYS_BASE..GTT_END).contains(&addr)
}

impl EngineState {
    /// Check every field against a graphics memory of `gmem_size` bytes: what a running
    /// engine could have reached.
    pub fn validate(&self, gmem_size: u64) -> Result<()> {
        self.render_target
            .check(gmem_size)
            .map_err(|source| EngineStateError::BadSurface {
                which: "render target",
                source,
            })?;
        self.texture
            .check(gmem_size)
            .map_err(|source| EngineStateError::BadSurface {
                which: "texture",
                source,
            })?;
        let (start, offset) = (self.batch_start, self.batch_offset);
        if self.in_batch {
            let end = start.checked_add(u64::from(offset));
            let ok = in_gtt_range(start)
                && start % 4 == 0
                && offset % 4 == 0
                && end.is_some_and(|end| end <= GTT_END);
            snafu::ensure!(ok, BatchPositionSnafu { start, offset });
        } else {
            snafu::ensure!(start == 0 && offset == 0, StaleBatchSnafu { start, offset });
        }
        let vb = self.vertex_buffer;
        snafu::ensure!(vb == 0 || in_gtt_range(vb), VertexBufferSnafu { addr: vb });
        Ok(())
    }

    /// Encode as version 1.0 (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ENCODED_LEN);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&MAJOR.to_le_bytes());
        b.extend_from_slice(&MINOR.to_le_bytes());
        b.extend_from_slice(&(PAYLOAD_LEN as u32).to_le_bytes());
        let mut flags = 0;
        if self.in_batch {
            flags |= FLAG_IN_BATCH;
        }
        if self.halted {
            flags |= FLAG_HALTED;
        }
        b.extend_from_slice(&flags.to_le_bytes());
        b.extend_from_slice(&self.batch_start.to_le_bytes());
        b.extend_from_slice(&self.batch_offset.to_le_bytes());
        b.extend_from_slice(&self.vertex_buffer.to_le_bytes());
        for s in [&self.render_target, &self.texture] {
            b.extend_from_slice(&s.offset.to_le_bytes());
            b.extend_from_slice(&s.stride.to_le_bytes());
            b.extend_from_slice(&s.width.to_le_bytes());
            b.extend_from_slice(&s.height.to_le_bytes());
        }
        b
    }

    /// Decode version 1.0, checking the cap, magic, version, lengths and flags. The fields'
    /// values are checked by [`EngineState::validate`] (through `Engine::from_state`).
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        let len = b.len();
        snafu::ensure!(
            len <= ENCODED_LEN,
            OversizedSnafu {
                len,
                max: ENCODED_LEN
            }
        );
        let mut r = Reader(b);
        let short_header = || {
            TruncatedSnafu {
                section: "header",
                needed: HEADER_LEN,
                len,
            }
            .build()
        };
        let magic: [u8; 4] = r.take().ok_or_else(short_header)?;
        snafu::ensure!(magic == MAGIC, BadMagicSnafu { found: magic });
        let major = r.u16().ok_or_else(short_header)?;
        let minor = r.u16().ok_or_else(short_header)?;
        snafu::ensure!(
            major == MAJOR && minor == MINOR,
            UnsupportedVersionSnafu { major, minor }
        );
        let payload = r.u32().ok_or_else(short_header)?;
        snafu::ensure!(
            payload as usize == PAYLOAD_LEN,
            PayloadLengthSnafu {
                len: payload,
                expected: PAYLOAD_LEN
            }
        );
        snafu::ensure!(
            len == ENCODED_LEN,
            TruncatedSnafu {
                section: "payload",
                needed: ENCODED_LEN,
                len
            }
        );
        // The length is exact from here on: a short read cannot happen, but is still an error.
        let short = || {
            TruncatedSnafu {
                section: "payload",
                needed: ENCODED_LEN,
                len,
            }
            .build()
        };
        let flags = r.u32().ok_or_else(short)?;
        snafu::ensure!(flags & !FLAGS_ALL == 0, UnknownFlagsSnafu { flags });
        let batch_start = r.u64().ok_or_else(short)?;
        let batch_offset = r.u32().ok_or_else(short)?;
        let vertex_buffer = r.u64().ok_or_else(short)?;
        let render_target = r.surface().ok_or_else(short)?;
        let texture = r.surface().ok_or_else(short)?;
        Ok(Self {
            in_batch: flags & FLAG_IN_BATCH != 0,
            batch_start,
            batch_offset,
            render_target,
            texture,
            vertex_buffer,
            halted: flags & FLAG_HALTED != 0,
        })
    }
}

/// A little-endian cursor over untrusted bytes: every read is checked.
struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        let (head, rest) = self.0.split_first_chunk::<N>()?;
        self.0 = rest;
        Some(*head)
    }

    fn u16(&mut self) -> Option<u16> {
        self.take().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take().map(u64::from_le_bytes)
    }

    fn surface(&mut self) -> Option<Surface> {
        Some(Surface {
            offset: self.u32()?,
            stride: self.u32()?,
            width: self.u16()?,
            height: self.u16()?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> EngineState {
        EngineState {
            in_batch: true,
            batch_start: SYS_BASE + 0x1000,
            batch_offset: 0x40,
            render_target: Surface::from_dwords(0, 256, 64 | (32 << 16)),
            texture: Surface::from_dwords(0x8000, 32, 8 | (8 << 16)),
            vertex_buffer: SYS_BASE + 0x2000,
            halted: false,
        }
    }

    #[test]
    fn bytes_round_trip() {
        for s in [EngineState::default(), sample()] {
            let b = s.to_bytes();
            assert_eq!(b.len(), ENCODED_LEN);
            assert_eq!(EngineState::from_bytes(&b), Ok(s));
        }
    }

    #[test]
    fn every_field_changes_the_bytes() {
        let base = sample();
        let bytes = base.to_bytes();
        let changes: [Change; 13] = [
            |s| s.in_batch = false,
            |s| s.batch_start += 4,
            |s| s.batch_offset += 4,
            |s| s.render_target.offset += 1,
            |s| s.render_target.stride += 1,
            |s| s.render_target.width += 1,
            |s| s.render_target.height += 1,
            |s| s.texture.offset += 1,
            |s| s.texture.stride += 1,
            |s| s.texture.width += 1,
            |s| s.texture.height += 1,
            |s| s.vertex_buffer += 1,
            |s| s.halted = true,
        ];
        for change in changes {
            let mut s = base.clone();
            change(&mut s);
            assert_ne!(s, base);
            let b = s.to_bytes();
            assert_ne!(b, bytes);
            assert_eq!(EngineState::from_bytes(&b), Ok(s));
        }
    }

    #[test]
    fn from_bytes_rejects_every_truncation() {
        let b = sample().to_bytes();
        for len in 0..b.len() {
            assert!(
                matches!(
                    EngineState::from_bytes(&b[..len]),
                    Err(EngineStateError::Truncated { .. })
                ),
                "prefix of {len} bytes"
            );
        }
    }

    #[test]
    fn from_bytes_rejects_oversized_input() {
        let mut b = sample().to_bytes();
        b.push(0);
        assert_eq!(
            EngineState::from_bytes(&b),
            Err(EngineStateError::Oversized {
                len: ENCODED_LEN + 1,
                max: ENCODED_LEN
            })
        );
        let huge = vec![0u8; 1 << 20];
        assert!(matches!(
            EngineState::from_bytes(&huge),
            Err(EngineStateError::Oversized { .. })
        ));
    }

    #[test]
    fn from_bytes_rejects_bad_header_and_flags() {
        let good = sample().to_bytes();
        let mut b = good.clone();
        b[0] = b'X';
        assert!(matches!(
            EngineState::from_bytes(&b),
            Err(EngineStateError::BadMagic { .. })
        ));
        for (at, value) in [(4, 2u8), (6, 1)] {
            let mut b = good.clone();
            b[at] = value;
            assert!(matches!(
                EngineState::from_bytes(&b),
                Err(EngineStateError::UnsupportedVersion { .. })
            ));
        }
        let mut b = good.clone();
        b[8] = 49;
        assert_eq!(
            EngineState::from_bytes(&b),
            Err(EngineStateError::PayloadLength {
                len: 49,
                expected: PAYLOAD_LEN
            })
        );
        let mut b = good;
        b[12] |= 1 << 2;
        assert_eq!(
            EngineState::from_bytes(&b),
            Err(EngineStateError::UnknownFlags { flags: 0b101 })
        );
    }

    #[test]
    fn validate_accepts_reachable_states() {
        assert_eq!(EngineState::default().validate(0), Ok(()));
        assert_eq!(sample().validate(1 << 20), Ok(()));
        let mut s = sample();
        s.batch_offset = (GTT_END - s.batch_start) as u32;
        assert_eq!(s.validate(1 << 20), Ok(()));
    }

    /// A change to a state.
    type Change = fn(&mut EngineState);

    #[test]
    fn validate_rejects_each_bad_field() {
        let gmem = 1 << 20;
        let cases: [(Change, &str); 10] = [
            (|s| s.render_target.offset = 1 << 20, "render target range"),
            (|s| s.render_target.stride = 4, "render target stride"),
            (|s| s.texture.height = 0xffff, "texture range"),
            (|s| s.batch_start = 0x1000, "batch below the GTT range"),
            (|s| s.batch_start = GTT_END, "batch past the GTT range"),
            (|s| s.batch_start += 2, "batch misaligned"),
            (
                |s| s.batch_offset = 1 << 30,
                "batch offset past the GTT range",
            ),
            (|s| s.in_batch = false, "stale batch fields"),
            (|s| s.vertex_buffer = 0x10, "vertex buffer in gmem"),
            (
                |s| s.vertex_buffer = u64::MAX,
                "vertex buffer past the GTT range",
            ),
        ];
        for (change, what) in cases {
            let mut s = sample();
            change(&mut s);
            assert!(s.validate(gmem).is_err(), "{what} accepted");
        }
    }
}
