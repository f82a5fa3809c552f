//! Per-pixel work of the 3D pipeline: coverage, depth test and write, perspective-correct
//! texturing and colour write, in integers only.
//!
//! * Coverage is the 2D rasteriser's (`super::super::raster`): edge functions on a
//!   1/256-pixel grid, pixel centres, top-left fill rule, zero-area triangles skipped; the
//!   box is clipped to the scissor (viewport and render target).
//! * Facing: a triangle counter-clockwise on screen is front-facing; `CULL_BACK` discards
//!   clockwise ones, `CULL_FRONT` counter-clockwise ones.
//! * Depth (`z / w`, linear on screen) and colour are interpolated affinely; texture
//!   coordinates are perspective-correct: `u * q`, `v * q` and `q = 2^40 / w` are
//!   interpolated affinely and divided per pixel.
//! * Depth test: a pixel passes if its depth (rounded, in `0..=DEPTH_ONE`) is less than the
//!   depth buffer's; with the test off every pixel passes. Depth write stores it for each
//!   passing pixel.
//! * A row's colour (and depth) bytes from its first to its last written pixel are reported
//!   dirty.

use crate::cmd::{CULL_BACK, CULL_FRONT, DEPTH_ONE};

use super::super::raster::{
    advance, ceil_pixel, floor_pixel, modulate, orient, pack, span, Axis, Edge, Plane, Point,
    Sampler, ATTR_FRAC, ATTR_ROUND, BPP, HALF_PIXEL, PIXEL,
};
use super::super::surface::{DirtySpans, Surface};
use super::geometry::ScreenVertex;

/// How a triangle's pixels get their colour.
#[derive(Debug, Clone, Copy)]
enum Colour {
    /// One colour.
    Flat(u32),
    /// Interpolated A, R, G, B.
    Smooth([Plane; 4]),
    /// Interpolated colour times the texel at perspective-correct u, v (`u * q`, `v * q`,
    /// `q` planes).
    Textured([Plane; 4], [Plane; 3], Sampler),
}

/// Draws 3D triangles into one render target (and depth buffer) of one graphics memory.
pub(super) struct Raster3d<'a> {
    /// The whole graphics memory.
    pub(super) gmem: &'a mut [u8],
    /// Render target, checked against `gmem`.
    pub(super) target: Surface,
    /// Depth buffer, checked and at least the target's size, when `test` or `write`.
    pub(super) depth: Option<Surface>,
    /// Depth test enabled.
    pub(super) test: bool,
    /// Depth write enabled.
    pub(super) write: bool,
    /// Texture of textured draws, non-empty and checked.
    pub(super) texture: Option<Surface>,
    /// Cull mode.
    pub(super) cull: u32,
    /// Pixels that may be drawn: columns `x0..=x1`, rows `y0..=y1` (viewport and target).
    pub(super) scissor: [i64; 4],
    /// Colour bytes written.
    pub(super) spans: &'a mut DirtySpans,
    /// Depth bytes written.
    pub(super) depth_spans: &'a mut DirtySpans,
}

impl Raster3d<'_> {
    /// Draw one triangle of screen vertices.
    pub(super) fn triangle(&mut self, v: &[ScreenVertex; 3]) {
        let mut v = *v;
        let mut p = v.map(|v| Point { x: v.x, y: v.y });
        let mut area = orient(p[0], p[1], p[2]);
        let culled = match self.cull {
            CULL_BACK => area > 0,
            CULL_FRONT => area < 0,
            _ => false,
        };
        if area == 0 || culled {
            return;
        }
        if area < 0 {
            p.swap(1, 2);
            v.swap(1, 2);
            area = -area;
        }
        let min = |f: fn(&Point) -> i64| p.iter().map(f).fold(i64::MAX, i64::min);
        let max = |f: fn(&Point) -> i64| p.iter().map(f).fold(i64::MIN, i64::max);
        let [sx0, sy0, sx1, sy1] = self.scissor;
        let x0 = ceil_pixel(min(|q| q.x)).max(sx0);
        let y0 = ceil_pixel(min(|q| q.y)).max(sy0);
        let x1 = floor_pixel(max(|q| q.x)).min(sx1);
        let y1 = floor_pixel(max(|q| q.y)).min(sy1);
        if x0 > x1 || y0 > y1 {
            return;
        }
        let origin = Point {
            x: x0 * PIXEL + HALF_PIXEL,
            y: y0 * PIXEL + HALF_PIXEL,
        };
        let edges = [
            Edge::new(p[1], p[2], origin),
            Edge::new(p[2], p[0], origin),
            Edge::new(p[0], p[1], origin),
        ];
        let z = Plane::new(&edges, area, v.map(|v| v.z));
        let colour = self.colour(&v, &edges, area);
        let step_x = edges.map(|e| e.step_x);
        let mut e = edges.map(|e| e.origin + e.bias);
        for y in y0..=y1 {
            if let Some((lo, hi)) = span(&e, &step_x, x1 - x0) {
                self.row(&z, &colour, y, x0 + lo, (hi - lo + 1) as usize, lo, y - y0);
            }
            for (e, edge) in e.iter_mut().zip(&edges) {
                *e += edge.step_y;
            }
        }
    }

    fn colour(&self, v: &[ScreenVertex; 3], edges: &[Edge; 3], area: i64) -> Colour {
        let planes = || [0, 1, 2, 3].map(|k| Plane::new(edges, area, v.map(|v| v.color[k])));
        match self.texture {
            Some(t) => Colour::Textured(
                planes(),
                [
                    Plane::new(edges, area, v.map(|v| v.uq[0])),
                    Plane::new(edges, area, v.map(|v| v.uq[1])),
                    Plane::new(edges, area, v.map(|v| v.q)),
                ],
                Sampler {
                    offset: t.offset as usize,
                    stride: t.stride as usize,
                    u: Axis::new(t.width),
                    v: Axis::new(t.height),
                },
            ),
            None if v[0].color == v[1].color && v[1].color == v[2].color => {
                let c = v[0].color.map(|c| c.clamp(0, 255) as u32);
                Colour::Flat((c[0] << 24) | (c[1] << 16) | (c[2] << 8) | c[3])
            }
            None => Colour::Smooth(planes()),
        }
    }

    /// Test, shade and write `n` pixels of row `y` from column `x`; `rx`, `ry` are the same
    /// position relative to the box's first pixel.
    #[allow(clippy::too_many_arguments)]
    fn row(&mut self, z: &Plane, colour: &Colour, y: i64, x: i64, n: usize, rx: i64, ry: i64) {
        let cbase = self.target.row(y as u16).start + x as usize * BPP;
        let dbase = self.depth.map(|d| d.row(y as u16).start + x as usize * BPP);
        let at = Span {
            cbase,
            dbase: dbase.unwrap_or(0),
            n,
            z: z.at(rx, ry),
            dz: z.dx,
        };
        let (test, write) = (dbase.is_some() && self.test, dbase.is_some() && self.write);
        let gmem = &mut *self.gmem;
        let written = match colour {
            Colour::Flat(c) => depth_modes(gmem, &at, test, write, Flat(*c)),
            Colour::Smooth(p) => depth_modes(
                gmem,
                &at,
                test,
                write,
                Smooth {
                    c: p.map(|p| p.at(rx, ry)),
                    dc: p.map(|p| p.dx),
                },
            ),
            Colour::Textured(p, t, s) => depth_modes(
                gmem,
                &at,
                test,
                write,
                Textured {
                    c: p.map(|p| p.at(rx, ry)),
                    dc: p.map(|p| p.dx),
                    t: t.map(|p| p.at(rx, ry)),
                    dt: t.map(|p| p.dx),
                    s: *s,
                },
            ),
        };
        if let Some((first, last)) = written {
            let len = ((last - first + 1) * BPP) as u64;
            self.spans.push((cbase + first * BPP) as u64, len);
            if let (Some(b), true) = (dbase, write) {
                self.depth_spans.push((b + first * BPP) as u64, len);
            }
        }
    }
}

/// Where one row's pixels go and the depth at its first pixel.
struct Span {
    /// Graphics-memory offset of the first colour pixel.
    cbase: usize,
    /// Graphics-memory offset of the first depth value (unused without depth).
    dbase: usize,
    /// Pixels.
    n: usize,
    /// Depth plane value at the first pixel, and its step.
    z: i64,
    dz: i64,
}

/// A pixel's colour, stepped along a row.
trait Shader {
    /// The colour of the current pixel.
    fn colour(&self, gmem: &[u8]) -> u32;
    /// Move to the next pixel.
    fn step(&mut self);
}

/// One colour.
struct Flat(u32);

impl Shader for Flat {
    #[inline(always)]
    fn colour(&self, _: &[u8]) -> u32 {
        self.0
    }
    #[inline(always)]
    fn step(&mut self) {}
}

/// Interpolated A, R, G, B.
struct Smooth {
    c: [i64; 4],
    dc: [i64; 4],
}

impl Shader for Smooth {
    #[inline(always)]
    fn colour(&self, _: &[u8]) -> u32 {
        pack(&self.c)
    }
    #[inline(always)]
    fn step(&mut self) {
        advance(&mut self.c, &self.dc);
    }
}

/// Interpolated colour times the texel at perspective-correct u, v.
struct Textured {
    c: [i64; 4],
    dc: [i64; 4],
    t: [i64; 3],
    dt: [i64; 3],
    s: Sampler,
}

impl Shader for Textured {
    #[inline(always)]
    fn colour(&self, gmem: &[u8]) -> u32 {
        let q = self.t[2] >> 16;
        let (u, v) = if q > 0 {
            (self.t[0] / q, self.t[1] / q)
        } else {
            (0, 0)
        };
        modulate(self.s.texel(gmem, u, v), pack(&self.c))
    }
    #[inline(always)]
    fn step(&mut self) {
        advance(&mut self.c, &self.dc);
        advance(&mut self.t, &self.dt);
    }
}

/// [`pixels`] for the depth test and write modes (one loop each, no per-pixel branch on
/// the mode).
fn depth_modes<S: Shader>(
    gmem: &mut [u8],
    at: &Span,
    test: bool,
    write: bool,
    sh: S,
) -> Option<(usize, usize)> {
    match (test, write) {
        (false, false) => pixels::<S, false, false>(gmem, at, sh),
        (true, false) => pixels::<S, true, false>(gmem, at, sh),
        (false, true) => pixels::<S, false, true>(gmem, at, sh),
        (true, true) => pixels::<S, true, true>(gmem, at, sh),
    }
}

/// Test, shade and write one row's pixels; the first and last pixel written, if any.
#[inline(always)]
fn pixels<S: Shader, const TEST: bool, const WRITE: bool>(
    gmem: &mut [u8],
    at: &Span,
    mut sh: S,
) -> Option<(usize, usize)> {
    let (mut first, mut last) = (usize::MAX, 0);
    let mut zv = at.z;
    for i in 0..at.n {
        let depth = (zv.wrapping_add(ATTR_ROUND) >> ATTR_FRAC).clamp(0, i64::from(DEPTH_ONE));
        let depth = depth as u32;
        let d_at = at.dbase + i * BPP;
        let pass = !TEST || read_u32(gmem, d_at).is_some_and(|stored| depth < stored);
        if pass {
            let px = sh.colour(gmem);
            write_u32(gmem, at.cbase + i * BPP, px);
            if WRITE {
                write_u32(gmem, d_at, depth);
            }
            first = first.min(i);
            last = i;
        }
        zv = zv.wrapping_add(at.dz);
        sh.step();
    }
    (first <= last).then_some((first, last))
}

/// The little-endian u32 at `at`, if it lies in `gmem`.
#[inline(always)]
fn read_u32(gmem: &[u8], at: usize) -> Option<u32> {
    gmem.get(at..at + 4)
        .and_then(|b| b.try_into().ok())
        .map(u32::from_le_bytes)
}

/// Store `v` at `at` if it lies in `gmem`.
#[inline(always)]
fn write_u32(gmem: &mut [u8], at: usize, v: u32) {
    if let Some(d) = gmem.get_mut(at..at + 4) {
        d.copy_from_slice(&v.to_le_bytes());
    }
}
