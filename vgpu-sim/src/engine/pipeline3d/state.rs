//! The 3D pipeline's saved state and its versioned byte format.
//!
//! # Format (version 1.0, little-endian, 196 bytes exactly)
//!
//! ```text
//! 0    magic "V3DS"
//! 4    major u16 = 1, minor u16 = 0
//! 8    payload length u32 = 184
//! 12   viewport: x u16, y u16, width u16, height u16
//! 20   MVP matrix: 16 x i32 (row-major, 16.16)
//! 84   normal matrix: 16 x i32
//! 148  depth buffer: offset u32, stride u32, width u16, height u16
//! 160  depth flags u32 (DEPTH_TEST | DEPTH_WRITE; other bits must be 0)
//! 164  cull mode u32 (0 none, 1 back, 2 front)
//! 168  light: direction x, y, z i32, ambient i32, diffuse i32
//! 188  index buffer u64
//! ```

use snafu::Snafu;

use crate::cmd::{CULL_FRONT, DEPTH_TEST, DEPTH_WRITE, FIXED_ONE, MAX_VIEWPORT};

use super::super::state::in_gtt_range;
use super::super::surface::{Surface, SurfaceError};

/// Magic number of the 3D pipeline state.
const MAGIC: [u8; 4] = *b"V3DS";
/// Format major version this build writes and reads.
pub const MAJOR: u16 = 1;
/// Format minor version this build writes and reads.
pub const MINOR: u16 = 0;
/// Bytes before the payload.
const HEADER_LEN: usize = 12;
/// Bytes of the version 1.0 payload.
const PAYLOAD_LEN: usize = 184;
/// Bytes of the whole encoding; also the input cap.
pub const ENCODED_LEN: usize = HEADER_LEN + PAYLOAD_LEN;

/// The 4x4 identity in 16.16.
pub const IDENTITY: [i32; 16] = [
    FIXED_ONE, 0, 0, 0, 0, FIXED_ONE, 0, 0, 0, 0, FIXED_ONE, 0, 0, 0, 0, FIXED_ONE,
];

/// The viewport rectangle: NDC x = -1..1 maps to `x..x + width`, y = 1..-1 to
/// `y..y + height` (pixels). Nothing outside it (or the render target) is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Viewport {
    /// Left column.
    pub x: u16,
    /// Top row.
    pub y: u16,
    /// Width in pixels (0: draws nothing).
    pub width: u16,
    /// Height in pixels (0: draws nothing).
    pub height: u16,
}

impl Viewport {
    /// Whether every field is within [`MAX_VIEWPORT`].
    pub fn is_valid(&self) -> bool {
        [self.x, self.y, self.width, self.height]
            .iter()
            .all(|&v| u32::from(v) <= MAX_VIEWPORT)
    }
}

/// The directional light of lit draws.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Light {
    /// Direction from a surface towards the light, world space, 16.16 (unit length).
    pub dir: [i32; 3],
    /// Ambient intensity, 16.16 in `0..=1.0`.
    pub ambient: i32,
    /// Diffuse intensity, 16.16 in `0..=1.0`.
    pub diffuse: i32,
}

impl Default for Light {
    fn default() -> Self {
        Self {
            dir: [0, 0, FIXED_ONE],
            ambient: FIXED_ONE,
            diffuse: 0,
        }
    }
}

impl Light {
    /// Whether ambient and diffuse are in `0..=1.0`.
    pub fn is_valid(&self) -> bool {
        (0..=FIXED_ONE).contains(&self.ambient) && (0..=FIXED_ONE).contains(&self.diffuse)
    }
}

/// Everything the 3D commands set: saved in its own section so that a restored engine
/// draws the next triangle exactly as the source would have.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pipeline3dState {
    /// Set by `SET_VIEWPORT` (empty after reset).
    pub viewport: Viewport,
    /// Set by `LOAD_MATRIX` slot 0 (identity after reset).
    pub mvp: [i32; 16],
    /// Set by `LOAD_MATRIX` slot 1 (identity after reset).
    pub normal: [i32; 16],
    /// Set by `SET_DEPTH_BUFFER` (empty after reset).
    pub depth_buffer: Surface,
    /// `DEPTH_TEST` | `DEPTH_WRITE`, set by `SET_DEPTH_STATE` (0 after reset).
    pub depth_flags: u32,
    /// Set by `SET_CULL_MODE` (none after reset).
    pub cull: u32,
    /// Set by `SET_LIGHT` (full ambient, no diffuse after reset).
    pub light: Light,
    /// Set by `SET_INDEX_BUFFER` (0 after reset).
    pub index_buffer: u64,
}

impl Default for Pipeline3dState {
    fn default() -> Self {
        Self {
            viewport: Viewport::default(),
            mvp: IDENTITY,
            normal: IDENTITY,
            depth_buffer: Surface::default(),
            depth_flags: 0,
            cull: 0,
            light: Light::default(),
            index_buffer: 0,
        }
    }
}

/// Why a 3D pipeline state was refused, as bytes or as a state.
#[derive(Debug, Clone, PartialEq, Eq, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum Pipeline3dStateError {
    /// The input is not exactly as long as the format says.
    #[snafu(display("3D pipeline state of {len} bytes, version 1.0 has {expected}"))]
    Length {
        /// Input length.
        len: usize,
        /// The format's length.
        expected: usize,
    },
    /// The magic number is not the 3D pipeline's.
    #[snafu(display("bad magic {found:02x?}"))]
    BadMagic {
        /// The bytes found.
        found: [u8; 4],
    },
    /// A format version this build does not read.
    #[snafu(display("unsupported 3D pipeline state version {major}.{minor}"))]
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
    /// A field holds a value no command could have set.
    #[snafu(display("{what} {value:#x} is not a value the 3D commands accept"))]
    BadField {
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
    },
    /// The saved depth buffer does not fit graphics memory.
    #[snafu(display("the saved depth buffer does not fit graphics memory"))]
    BadDepthBuffer {
        /// What is wrong with it.
        source: SurfaceError,
    },
}

impl Pipeline3dState {
    /// Check every field against a graphics memory of `gmem_size` bytes: what the commands
    /// could have set.
    pub fn validate(&self, gmem_size: u64) -> Result<(), Pipeline3dStateError> {
        let bad = |what, value: u64| Err(Pipeline3dStateError::BadField { what, value });
        if !self.viewport.is_valid() {
            let v = self.viewport;
            let packed = [v.x, v.y, v.width, v.height]
                .iter()
                .fold(0u64, |a, &x| (a << 16) | u64::from(x));
            return bad("viewport", packed);
        }
        if self.depth_flags & !(DEPTH_TEST | DEPTH_WRITE) != 0 {
            return bad("depth flags", self.depth_flags.into());
        }
        if self.cull > CULL_FRONT {
            return bad("cull mode", self.cull.into());
        }
        if !self.light.is_valid() {
            let l = self.light;
            return bad(
                "light ambient/diffuse",
                (u64::from(l.ambient as u32) << 32) | u64::from(l.diffuse as u32),
            );
        }
        let ib = self.index_buffer;
        if ib != 0 && !in_gtt_range(ib) {
            return bad("index buffer", ib);
        }
        self.depth_buffer
            .check(gmem_size)
            .map_err(|source| Pipeline3dStateError::BadDepthBuffer { source })
    }

    /// Encode as version 1.0 (see the module documentation).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(ENCODED_LEN);
        b.extend_from_slice(&MAGIC);
        b.extend_from_slice(&MAJOR.to_le_bytes());
        b.extend_from_slice(&MINOR.to_le_bytes());
        b.extend_from_slice(&(PAYLOAD_LEN as u32).to_le_bytes());
        let v = self.viewport;
        for x in [v.x, v.y, v.width, v.height] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        for m in self.mvp.iter().chain(&self.normal) {
            b.extend_from_slice(&m.to_le_bytes());
        }
        let d = self.depth_buffer;
        b.extend_from_slice(&d.offset.to_le_bytes());
        b.extend_from_slice(&d.stride.to_le_bytes());
        b.extend_from_slice(&d.width.to_le_bytes());
        b.extend_from_slice(&d.height.to_le_bytes());
        b.extend_from_slice(&self.depth_flags.to_le_bytes());
        b.extend_from_slice(&self.cull.to_le_bytes());
        let l = self.light;
        for x in [l.dir[0], l.dir[1], l.dir[2], l.ambient, l.diffuse] {
            b.extend_from_slice(&x.to_le_bytes());
        }
        b.extend_from_slice(&self.index_buffer.to_le_bytes());
        b
    }

    /// Decode version 1.0, checking the length, magic and version. The fields' values are
    /// checked by [`Pipeline3dState::validate`].
    pub fn from_bytes(b: &[u8]) -> Result<Self, Pipeline3dStateError> {
        snafu::ensure!(
            b.len() == ENCODED_LEN,
            LengthSnafu {
                len: b.len(),
                expected: ENCODED_LEN
            }
        );
        let mut r = Cursor(b);
        let magic: [u8; 4] = r.take();
        snafu::ensure!(magic == MAGIC, BadMagicSnafu { found: magic });
        let major = u16::from_le_bytes(r.take());
        let minor = u16::from_le_bytes(r.take());
        snafu::ensure!(
            major == MAJOR && minor == MINOR,
            UnsupportedVersionSnafu { major, minor }
        );
        let payload = u32::from_le_bytes(r.take());
        snafu::ensure!(
            payload as usize == PAYLOAD_LEN,
            PayloadLengthSnafu {
                len: payload,
                expected: PAYLOAD_LEN
            }
        );
        let mut u16s = [0u16; 4];
        for x in &mut u16s {
            *x = u16::from_le_bytes(r.take());
        }
        let mut mvp = [0i32; 16];
        let mut normal = [0i32; 16];
        for m in mvp.iter_mut().chain(normal.iter_mut()) {
            *m = i32::from_le_bytes(r.take());
        }
        let depth_buffer = Surface {
            offset: u32::from_le_bytes(r.take()),
            stride: u32::from_le_bytes(r.take()),
            width: u16::from_le_bytes(r.take()),
            height: u16::from_le_bytes(r.take()),
        };
        let depth_flags = u32::from_le_bytes(r.take());
        let cull = u32::from_le_bytes(r.take());
        let mut l = [0i32; 5];
        for x in &mut l {
            *x = i32::from_le_bytes(r.take());
        }
        let index_buffer = u64::from_le_bytes(r.take());
        Ok(Self {
            viewport: Viewport {
                x: u16s[0],
                y: u16s[1],
                width: u16s[2],
                height: u16s[3],
            },
            mvp,
            normal,
            depth_buffer,
            depth_flags,
            cull,
            light: Light {
                dir: [l[0], l[1], l[2]],
                ambient: l[3],
                diffuse: l[4],
            },
            index_buffer,
        })
    }
}

/// A cursor over bytes whose total length was checked first: every `take` is in bounds.
struct Cursor<'a>(&'a [u8]);

impl Cursor<'_> {
    fn take<const N: usize>(&mut self) -> [u8; N] {
        match self.0.split_first_chunk::<N>() {
            Some((head, rest)) => {
                self.0 = rest;
                *head
            }
            // Unreachable after the length check; zeros rather than a panic.
            None => [0; N],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::regs::SYS_BASE;

    fn sample() -> Pipeline3dState {
        let mut mvp = IDENTITY;
        mvp[3] = 5;
        Pipeline3dState {
            viewport: Viewport {
                x: 1,
                y: 2,
                width: 30,
                height: 40,
            },
            mvp,
            normal: [7; 16],
            depth_buffer: Surface::from_dwords(0x1000, 64, 16 | (8 << 16)),
            depth_flags: DEPTH_TEST | DEPTH_WRITE,
            cull: 1,
            light: Light {
                dir: [1, 2, 3],
                ambient: 100,
                diffuse: 200,
            },
            index_buffer: SYS_BASE + 0x40,
        }
    }

    #[test]
    fn bytes_round_trip_at_the_exact_length() {
        for s in [Pipeline3dState::default(), sample()] {
            let b = s.to_bytes();
            assert_eq!(b.len(), ENCODED_LEN);
            assert_eq!(Pipeline3dState::from_bytes(&b), Ok(s));
        }
    }

    /// A change to a state.
    type Change = fn(&mut Pipeline3dState);

    #[test]
    fn every_field_changes_the_bytes() {
        let base = sample();
        let bytes = base.to_bytes();
        let changes: [Change; 15] = [
            |s| s.viewport.x += 1,
            |s| s.viewport.y += 1,
            |s| s.viewport.width += 1,
            |s| s.viewport.height += 1,
            |s| s.mvp[15] += 1,
            |s| s.normal[0] += 1,
            |s| s.depth_buffer.offset += 4,
            |s| s.depth_buffer.stride += 4,
            |s| s.depth_buffer.width += 1,
            |s| s.depth_buffer.height += 1,
            |s| s.depth_flags = 0,
            |s| s.cull = 2,
            |s| s.light.dir[2] += 1,
            |s| s.light.diffuse += 1,
            |s| s.index_buffer += 4,
        ];
        for change in changes {
            let mut s = base.clone();
            change(&mut s);
            assert_ne!(s.to_bytes(), bytes);
            assert_eq!(Pipeline3dState::from_bytes(&s.to_bytes()), Ok(s));
        }
    }

    #[test]
    fn from_bytes_rejects_bad_length_magic_and_version() {
        let good = sample().to_bytes();
        for len in [0, 11, ENCODED_LEN - 1, ENCODED_LEN + 1] {
            let mut b = good.clone();
            b.resize(len, 0);
            assert!(matches!(
                Pipeline3dState::from_bytes(&b),
                Err(Pipeline3dStateError::Length { .. })
            ));
        }
        let mut b = good.clone();
        b[1] = b'X';
        assert!(matches!(
            Pipeline3dState::from_bytes(&b),
            Err(Pipeline3dStateError::BadMagic { .. })
        ));
        for at in [4, 6] {
            let mut b = good.clone();
            b[at] ^= 1;
            assert!(matches!(
                Pipeline3dState::from_bytes(&b),
                Err(Pipeline3dStateError::UnsupportedVersion { .. })
            ));
        }
        let mut b = good;
        b[8] = 1;
        assert!(matches!(
            Pipeline3dState::from_bytes(&b),
            Err(Pipeline3dStateError::PayloadLength { .. })
        ));
    }

    #[test]
    fn validate_accepts_reachable_and_rejects_each_bad_field() {
        assert_eq!(Pipeline3dState::default().validate(0), Ok(()));
        assert_eq!(sample().validate(1 << 20), Ok(()));
        let cases: [(Change, &str); 7] = [
            (|s| s.viewport.width = 8193, "viewport"),
            (|s| s.depth_flags = 4, "depth flags"),
            (|s| s.cull = 3, "cull"),
            (|s| s.light.ambient = FIXED_ONE + 1, "ambient"),
            (|s| s.light.diffuse = -1, "diffuse"),
            (|s| s.index_buffer = 4, "index buffer"),
            (|s| s.depth_buffer.offset = 1 << 20, "depth buffer"),
        ];
        for (change, what) in cases {
            let mut s = sample();
            change(&mut s);
            assert!(s.validate(1 << 20).is_err(), "{what}");
        }
    }
}
