//! The fixed-function 3D pipeline: state commands, indexed triangle lists read by DMA from
//! guest RAM, transform, lighting, clipping, depth-tested perspective-correct texturing, and
//! uploads from guest RAM into graphics memory. Integer arithmetic only: every machine draws
//! the same bits.
//!
//! # Commands
//!
//! | command | effect | refused (`INT_CMD_ERROR` unless noted) |
//! |---|---|---|
//! | `SET_VIEWPORT xy, wh` | NDC x -1..1 maps to columns `x..x+w`, y 1..-1 to rows `y..y+h`; pixels outside it are never drawn; an empty viewport draws nothing | any field above `MAX_VIEWPORT` |
//! | `LOAD_MATRIX slot, addr` | reads 16 i32 (row-major, 16.16) by DMA into the MVP (slot 0) or normal (slot 1) matrix | other slots; a DMA fault (`INT_GTT_ERROR`) |
//! | `SET_DEPTH_BUFFER off, stride, wh` | the depth buffer: one little-endian u32 per pixel | a surface outside graphics memory |
//! | `SET_DEPTH_STATE flags` | `DEPTH_TEST`: a pixel passes only if its depth is less than the buffer's; `DEPTH_WRITE`: passing pixels store their depth | other bits |
//! | `SET_CULL_MODE m` | 0 none, 1 discard clockwise-on-screen (back) faces, 2 discard counter-clockwise (front) faces | other modes |
//! | `SET_LIGHT x, y, z, amb, dif` | direction towards the light (world space, 16.16) and intensities | an intensity outside 0..=1.0 |
//! | `CLEAR_DEPTH v` | fills the depth buffer with `v` (`DEPTH_ONE` is the far plane) | a depth buffer outside graphics memory |
//! | `SET_INDEX_BUFFER addr` | where `DRAW_INDEXED` reads u32 indices | an address outside the GTT range (`INT_GTT_ERROR`) |
//! | `DRAW_INDEXED first, count, base, n, flags` | reads vertices `base..base+n` of the vertex buffer (`Vertex3d`, 32 bytes) and indices `first..first+count`; draws `count / 3` triangles into the render target | `count % 3 != 0`, `n > MAX_DRAW_VERTICES`, unknown flags, `DRAW3D_TEXTURED` without a texture, depth on and a depth buffer smaller than the target, an index `>= n` (triangles before it are drawn); DMA faults (`INT_GTT_ERROR`) |
//! | `UPLOAD src, off, stride, wh` | copies `h` packed rows of `w * 4` bytes from guest RAM into the surface: a DMA read that dirties graphics memory | a surface outside graphics memory; DMA faults |
//!
//! The render target and texture are the 2D commands' (`SET_RENDER_TARGET`,
//! `SET_TEXTURE`): any surface can be both, so a pass can render into a texture that a later
//! draw samples (render to texture).
//!
//! # Per vertex ([`geometry`])
//!
//! `clip = MVP * (x, y, z, 1)`; lit draws scale R, G, B by
//! `min(1, ambient + diffuse * max(0, (NORMAL * n) . L))`. Clipping keeps `w >= 1/256`,
//! `0 <= z <= w` (near and far planes) and `|x|, |y| <= 4w` (guard band); a triangle that
//! crosses a plane becomes a polygon of up to 10 vertices, drawn as a fan, so nothing behind
//! the camera wraps around. Projection: `sx = vx + (x/w + 1) * vw/2`,
//! `sy = vy + (1 - y/w) * vh/2` (1/256 pixel), depth `z/w * DEPTH_ONE`.
//!
//! # Per pixel ([`raster`])
//!
//! Coverage with the 2D rasteriser's edge functions and top-left rule (shared edges drawn
//! once), depth and colour interpolated on screen, texture coordinates perspective-correct
//! (`u/w`, `v/w`, `1/w` interpolated, divided per pixel), nearest sampling with wrapping,
//! texel times colour.

mod geometry;
mod ops;
mod raster;
mod state;
#[cfg(test)]
mod tests;

pub use state::{Light, Pipeline3dState, Pipeline3dStateError, Viewport, IDENTITY};

/// Encoded length of a [`Pipeline3dState`].
pub const STATE_LEN: usize = state::ENCODED_LEN;
/// Format version (major, minor) of a [`Pipeline3dState`]'s bytes.
pub const STATE_VERSION: (u16, u16) = (state::MAJOR, state::MINOR);

/// Scratch buffers of the 3D commands (not state: empty after restore, same results).
#[derive(Debug, Default)]
pub(crate) struct Scratch3d {
    /// Transformed vertices of the current draw.
    clip: Vec<geometry::ClipVertex>,
    /// Index bytes read by DMA.
    indices: Vec<u8>,
    /// Depth-buffer bytes written by the current command.
    depth_spans: super::surface::DirtySpans,
}
