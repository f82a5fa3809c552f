//! Surfaces (rectangles of 32-bit pixels in graphics memory) and the dirty-span collector.

use std::ops::Range;

use snafu::Snafu;

use super::EngineBus;

/// Bytes per pixel: 32-bit ARGB, stored little-endian (B, G, R, A in memory).
pub const BYTES_PER_PIXEL: u32 = 4;

/// A rectangle of 32-bit ARGB pixels in graphics memory, as the commands carry it: render
/// target, texture, blit operands and checksum surfaces. Plain data; [`Surface::check`] says
/// whether it fits a graphics memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Surface {
    /// Byte offset of the top-left pixel in graphics memory.
    pub offset: u32,
    /// Bytes from the start of one row to the start of the next.
    pub stride: u32,
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
}

/// Why a [`Surface`] does not fit graphics memory.
#[derive(Debug, Clone, PartialEq, Eq, Snafu)]
#[snafu(visibility(pub(crate)))]
pub enum SurfaceError {
    /// Rows would overlap: the stride is less than a row of pixels.
    #[snafu(display("stride of {stride} bytes is less than {width} pixels of 4 bytes"))]
    Stride {
        /// The stride asked for.
        stride: u32,
        /// The width asked for.
        width: u16,
    },
    /// The last pixel lies beyond graphics memory.
    #[snafu(display("surface at {offset:#x} ends at {end:#x}, beyond {gmem_size:#x} bytes"))]
    OutOfRange {
        /// The surface's offset.
        offset: u32,
        /// First byte after the surface (saturated at `u64::MAX`).
        end: u64,
        /// The graphics memory size.
        gmem_size: u64,
    },
}

impl Surface {
    /// A surface from command dwords: offset, stride, `width | height << 16`.
    pub fn from_dwords(offset: u32, stride: u32, size: u32) -> Self {
        Self {
            offset,
            stride,
            width: (size & 0xffff) as u16,
            height: (size >> 16) as u16,
        }
    }

    /// The size dword of the commands: `width | height << 16`.
    pub fn size_dword(&self) -> u32 {
        u32::from(self.width) | (u32::from(self.height) << 16)
    }

    /// Whether the surface has no pixels.
    pub fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// Bytes of pixels in one row.
    pub fn row_bytes(&self) -> u64 {
        u64::from(self.width) * u64::from(BYTES_PER_PIXEL)
    }

    /// First byte after the last pixel (the offset itself for an empty surface), or `None`
    /// on overflow.
    pub fn end(&self) -> Option<u64> {
        if self.is_empty() {
            return Some(u64::from(self.offset));
        }
        u64::from(self.height - 1)
            .checked_mul(u64::from(self.stride))?
            .checked_add(self.row_bytes())?
            .checked_add(u64::from(self.offset))
    }

    /// Check that rows do not overlap and that every pixel lies in a graphics memory of
    /// `gmem_size` bytes.
    pub fn check(&self, gmem_size: u64) -> Result<(), SurfaceError> {
        if u64::from(self.stride) < self.row_bytes() {
            return StrideSnafu {
                stride: self.stride,
                width: self.width,
            }
            .fail();
        }
        match self.end() {
            Some(end) if end <= gmem_size => Ok(()),
            end => OutOfRangeSnafu {
                offset: self.offset,
                end: end.unwrap_or(u64::MAX),
                gmem_size,
            }
            .fail(),
        }
    }

    /// Byte range of row `y` in graphics memory. Only meaningful for a surface that passed
    /// [`Surface::check`] against the memory it is used with (then it cannot overflow).
    pub(crate) fn row(&self, y: u16) -> Range<usize> {
        let start = u64::from(self.offset) + u64::from(y) * u64::from(self.stride);
        let start = start as usize;
        start..start + self.row_bytes() as usize
    }

    /// Byte range from the first to the last pixel (empty for an empty surface). Only
    /// meaningful for a surface that passed [`Surface::check`].
    pub(crate) fn extent(&self) -> Range<usize> {
        let start = self.offset as usize;
        start..self.end().map_or(start, |end| end as usize)
    }
}

/// Spans of graphics memory written by one command, merged when contiguous, reported to the
/// bus once the command no longer borrows graphics memory.
#[derive(Debug, Default)]
pub(crate) struct DirtySpans {
    spans: Vec<(u64, u64)>,
}

impl DirtySpans {
    /// Record that `len` bytes at `offset` were written.
    pub(crate) fn push(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        if let Some(last) = self.spans.last_mut() {
            if last.0.checked_add(last.1) == Some(offset) {
                last.1 += len;
                return;
            }
        }
        self.spans.push((offset, len));
    }

    /// Record that the byte range `r` was written.
    pub(crate) fn push_range(&mut self, r: &Range<usize>) {
        self.push(r.start as u64, (r.end - r.start) as u64);
    }

    /// Report every span with `mark_gmem_dirty` and forget them.
    pub(crate) fn flush(&mut self, bus: &mut dyn EngineBus) {
        for &(offset, len) in &self.spans {
            bus.mark_gmem_dirty(offset, len);
        }
        self.spans.clear();
    }

    /// The spans recorded since the last flush.
    #[cfg(test)]
    pub(crate) fn spans(&self) -> &[(u64, u64)] {
        &self.spans
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dwords_round_trip() {
        let s = Surface::from_dwords(0x1000, 256, 64 | (48 << 16));
        assert_eq!((s.width, s.height), (64, 48));
        assert_eq!(s.size_dword(), 64 | (48 << 16));
    }

    #[test]
    fn check_accepts_exact_fit_and_rejects_one_byte_more() {
        // 4 rows of 16 pixels, stride 100: last row ends at 0x10 + 3 * 100 + 64.
        let s = Surface::from_dwords(0x10, 100, 16 | (4 << 16));
        let end = 0x10 + 3 * 100 + 64;
        assert_eq!(s.end(), Some(end));
        assert_eq!(s.check(end), Ok(()));
        assert!(matches!(
            s.check(end - 1),
            Err(SurfaceError::OutOfRange { .. })
        ));
        assert_eq!(s.row(1), 0x10 + 100..0x10 + 100 + 64);
        assert_eq!(s.extent(), 0x10..end as usize);
    }

    #[test]
    fn check_rejects_overlapping_rows() {
        let s = Surface::from_dwords(0, 63, 16 | (2 << 16));
        assert_eq!(
            s.check(1 << 20),
            Err(SurfaceError::Stride {
                stride: 63,
                width: 16
            })
        );
    }

    #[test]
    fn extreme_values_do_not_overflow() {
        let s = Surface::from_dwords(u32::MAX, u32::MAX, u32::MAX);
        assert!(s.end().is_some());
        assert_eq!(s.check(u64::MAX), Ok(()));
        assert!(s.check(1 << 30).is_err());
        let empty = Surface::from_dwords(100, 0, 0);
        assert!(empty.is_empty());
        assert_eq!(empty.check(100), Ok(()));
        assert!(empty.check(99).is_err());
    }

    #[test]
    fn spans_merge_when_contiguous() {
        let mut d = DirtySpans::default();
        d.push(0, 16);
        d.push(16, 16);
        d.push(64, 8);
        d.push(64, 0);
        d.push_range(&(72..80));
        assert_eq!(d.spans(), &[(0, 32), (64, 16)]);
    }
}
