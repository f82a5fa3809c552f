//! Triangle rasterisation in integer arithmetic, so that every machine draws the same bits.
//!
//! * Vertices arrive in 16.16 fixed point and are snapped (floored) to 1/256 pixel, which
//!   keeps every edge value within 52 bits of an `i64`.
//! * Coverage: the three edge functions are evaluated at pixel centres (`x + 0.5`,
//!   `y + 0.5`); a centre on an edge belongs to the triangle only if the edge is a top or a
//!   left edge, so triangles sharing an edge cover each pixel on it exactly once. A triangle
//!   wound the other way is reordered first; degenerate (zero-area) triangles draw nothing.
//! * Traversal: rows of the bounding box clipped to the render target. The edge values at the
//!   start of each row are stepped incrementally; each row's covered span follows from them
//!   with one integer division per edge, so no pixel outside the triangle is visited.
//! * Attributes (A, R, G, B, texture u and v) are planes in fixed point with 24 fractional
//!   bits, evaluated exactly in 128 bits at the box's first pixel and stepped with wrapping
//!   adds (only values inside the triangle are used, and those fit).
//! * Texturing: nearest sampling, wrap addressing (`u = 1.0` is one texture width), texel
//!   times colour per channel, rounded (`round(t * c / 255)`).

use crate::cmd::Vertex;

use super::surface::{DirtySpans, Surface, BYTES_PER_PIXEL};

/// Sub-pixel bits kept from the 16.16 vertex coordinates.
pub(super) const SUBPIXEL_BITS: u32 = 8;
/// Shift from 16.16 to the sub-pixel grid.
const SNAP_SHIFT: u32 = 16 - SUBPIXEL_BITS;
/// One pixel on the sub-pixel grid.
pub(super) const PIXEL: i64 = 1 << SUBPIXEL_BITS;
/// Half a pixel on the sub-pixel grid (pixel centres).
pub(super) const HALF_PIXEL: i64 = PIXEL / 2;
/// Fractional bits of interpolated attributes.
pub(super) const ATTR_FRAC: u32 = 24;
/// Half an attribute unit, for rounding.
pub(super) const ATTR_ROUND: i64 = 1 << (ATTR_FRAC - 1);
/// Bytes per pixel as a `usize`.
pub(super) const BPP: usize = BYTES_PER_PIXEL as usize;

/// A vertex position on the sub-pixel grid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Point {
    pub(super) x: i64,
    pub(super) y: i64,
}

impl Point {
    fn snap(v: &Vertex) -> Self {
        Self {
            x: i64::from(v.x >> SNAP_SHIFT),
            y: i64::from(v.y >> SNAP_SHIFT),
        }
    }
}

/// Twice the signed area of `a, b, c`: positive when the triangle is clockwise on the screen
/// (y grows downwards), and then positive for points inside, on the right of `a -> b`.
pub(super) fn orient(a: Point, b: Point, c: Point) -> i64 {
    (b.x - a.x) * (c.y - a.y) - (b.y - a.y) * (c.x - a.x)
}

/// Whether `a -> b` is a top edge (horizontal, interior below) or a left edge (going up) of a
/// triangle with positive [`orient`].
fn is_top_left(a: Point, b: Point) -> bool {
    let (dx, dy) = (b.x - a.x, b.y - a.y);
    dy < 0 || (dy == 0 && dx > 0)
}

/// First pixel whose centre is at or after `c` (sub-pixel units).
pub(super) fn ceil_pixel(c: i64) -> i64 {
    (c - HALF_PIXEL + PIXEL - 1) >> SUBPIXEL_BITS
}

/// Last pixel whose centre is at or before `c` (sub-pixel units).
pub(super) fn floor_pixel(c: i64) -> i64 {
    (c - HALF_PIXEL) >> SUBPIXEL_BITS
}

/// One edge function over the clipped bounding box.
#[derive(Debug, Clone, Copy)]
pub(super) struct Edge {
    /// Value at the box's first pixel centre (the weight of the opposite vertex).
    pub(super) origin: i64,
    /// 0 for top and left edges, -1 for the others (their centres on the edge are outside).
    pub(super) bias: i64,
    /// Change per pixel to the right.
    pub(super) step_x: i64,
    /// Change per pixel down.
    pub(super) step_y: i64,
}

impl Edge {
    pub(super) fn new(a: Point, b: Point, origin: Point) -> Self {
        Self {
            origin: orient(a, b, origin),
            bias: if is_top_left(a, b) { 0 } else { -1 },
            step_x: (a.y - b.y) * PIXEL,
            step_y: (b.x - a.x) * PIXEL,
        }
    }
}

/// The covered pixels `lo..=hi` (relative to the box's left column, which is `last` pixels
/// wide minus one) of a row whose biased edge values at the left column are `e`.
pub(super) fn span(e: &[i64; 3], step_x: &[i64; 3], last: i64) -> Option<(i64, i64)> {
    let (mut lo, mut hi) = (0, last);
    for (&e, &s) in e.iter().zip(step_x) {
        if s > 0 {
            if e < 0 {
                // First k with e + k * s >= 0.
                lo = lo.max((s - 1 - e) / s);
            }
        } else if e < 0 {
            return None;
        } else if s < 0 {
            // Last k with e + k * s >= 0.
            hi = hi.min(e / -s);
        }
    }
    (lo <= hi).then_some((lo, hi))
}

/// An attribute as a plane in fixed point (`ATTR_FRAC` fractional bits) over the box.
#[derive(Debug, Clone, Copy)]
pub(super) struct Plane {
    origin: i64,
    pub(super) dx: i64,
    dy: i64,
}

impl Plane {
    pub(super) fn new(edges: &[Edge; 3], area: i64, values: [i64; 3]) -> Self {
        let weigh = |w: [i64; 3]| {
            let sum: i128 = w
                .iter()
                .zip(values)
                .map(|(&w, a)| i128::from(w) * i128::from(a))
                .sum();
            // |sum| < 2^85, so the shift cannot overflow; the result wraps into i64 on purpose.
            ((sum << ATTR_FRAC).div_euclid(i128::from(area))) as i64
        };
        Self {
            origin: weigh(edges.map(|e| e.origin)),
            dx: weigh(edges.map(|e| e.step_x)),
            dy: weigh(edges.map(|e| e.step_y)),
        }
    }

    /// Value at (`x`, `y`) pixels from the box's first pixel.
    pub(super) fn at(&self, x: i64, y: i64) -> i64 {
        self.origin
            .wrapping_add(self.dx.wrapping_mul(x))
            .wrapping_add(self.dy.wrapping_mul(y))
    }
}

/// The four channels of an ARGB colour, A first.
fn channels(c: u32) -> [i64; 4] {
    [24, 16, 8, 0].map(|s| i64::from((c >> s) & 0xff))
}

/// One interpolated channel, rounded and clamped to 0..=255.
pub(super) fn channel(v: i64) -> u32 {
    (v.wrapping_add(ATTR_ROUND) >> ATTR_FRAC).clamp(0, 255) as u32
}

/// Texel times colour, per channel: `round(t * c / 255)`, exactly.
pub(super) fn modulate(t: u32, c: u32) -> u32 {
    let mut out = 0;
    for s in [0, 8, 16, 24] {
        let m = ((t >> s) & 0xff) * ((c >> s) & 0xff) + 128;
        out |= ((m + (m >> 8)) >> 8) << s;
    }
    out
}

/// Texel coordinates along one axis of `n` texels (`n > 0`): `u = 1.0` (16.16) spans them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Axis {
    n: i64,
    /// `n - 1` when `n` is a power of two: wrapping is then a mask, not a division.
    mask: Option<i64>,
}

impl Axis {
    pub(super) fn new(n: u16) -> Self {
        Self {
            n: i64::from(n),
            mask: n.is_power_of_two().then(|| i64::from(n) - 1),
        }
    }

    /// The texel index of 16.16 coordinate `u`, wrapped into `0..n`.
    fn texel(&self, u: i64) -> usize {
        let t = u.wrapping_mul(self.n) >> 16;
        let t = match self.mask {
            Some(m) => t & m,
            None if (0..self.n).contains(&t) => t,
            None => t.rem_euclid(self.n),
        };
        t as usize
    }
}

/// Nearest, wrapping texture lookups in graphics memory.
#[derive(Debug, Clone, Copy)]
pub(super) struct Sampler {
    pub(super) offset: usize,
    pub(super) stride: usize,
    pub(super) u: Axis,
    pub(super) v: Axis,
}

impl Sampler {
    /// The texel at 16.16 coordinates `u`, `v` (0 if it somehow lies outside `gmem`).
    pub(super) fn texel(&self, gmem: &[u8], u: i64, v: i64) -> u32 {
        let (tx, ty) = (self.u.texel(u), self.v.texel(v));
        let i = self.offset + ty * self.stride + tx * BPP;
        gmem.get(i..i + BPP)
            .and_then(|b| b.try_into().ok())
            .map_or(0, u32::from_le_bytes)
    }
}

/// How a triangle's pixels get their colour.
#[derive(Debug, Clone, Copy)]
enum Shade {
    /// One colour (untextured, all vertices alike).
    Flat(u32),
    /// Interpolated A, R, G, B.
    Smooth([Plane; 4]),
    /// Interpolated colour times the texel at interpolated u, v.
    Textured([Plane; 4], [Plane; 2], Sampler),
}

/// Draws triangles into one render target of one graphics memory.
pub(crate) struct Rasterizer<'a> {
    /// The whole graphics memory.
    pub(crate) gmem: &'a mut [u8],
    /// Render target, checked against `gmem`.
    pub(crate) target: Surface,
    /// Texture for textured draws, non-empty and checked against `gmem`.
    pub(crate) texture: Option<Surface>,
    /// Scratch row of shaded pixels (reused: no allocation per pixel or per span).
    pub(crate) row: &'a mut Vec<u32>,
    /// Where the written spans go.
    pub(crate) spans: &'a mut DirtySpans,
}

impl Rasterizer<'_> {
    /// Draw one triangle.
    pub(crate) fn triangle(&mut self, v: &[Vertex; 3]) {
        let mut v = *v;
        let mut p = v.map(|v| Point::snap(&v));
        let mut area = orient(p[0], p[1], p[2]);
        if area == 0 {
            return;
        }
        if area < 0 {
            p.swap(1, 2);
            v.swap(1, 2);
            area = -area;
        }
        let min = |f: fn(&Point) -> i64| p.iter().map(f).fold(i64::MAX, i64::min);
        let max = |f: fn(&Point) -> i64| p.iter().map(f).fold(i64::MIN, i64::max);
        let x0 = ceil_pixel(min(|q| q.x)).max(0);
        let y0 = ceil_pixel(min(|q| q.y)).max(0);
        let x1 = floor_pixel(max(|q| q.x)).min(i64::from(self.target.width) - 1);
        let y1 = floor_pixel(max(|q| q.y)).min(i64::from(self.target.height) - 1);
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
        let shade = self.shade(&v, &edges, area);
        let step_x = edges.map(|e| e.step_x);
        let mut e = edges.map(|e| e.origin + e.bias);
        for y in y0..=y1 {
            if let Some((lo, hi)) = span(&e, &step_x, x1 - x0) {
                self.fill(&shade, y, x0 + lo, (hi - lo + 1) as usize, lo, y - y0);
            }
            for (e, edge) in e.iter_mut().zip(&edges) {
                *e += edge.step_y;
            }
        }
    }

    fn shade(&self, v: &[Vertex; 3], edges: &[Edge; 3], area: i64) -> Shade {
        let colors = || {
            let c = v.map(|v| channels(v.color));
            [0, 1, 2, 3].map(|k| Plane::new(edges, area, [c[0][k], c[1][k], c[2][k]]))
        };
        match self.texture {
            Some(t) => Shade::Textured(
                colors(),
                [
                    Plane::new(edges, area, v.map(|v| i64::from(v.u))),
                    Plane::new(edges, area, v.map(|v| i64::from(v.v))),
                ],
                Sampler {
                    offset: t.offset as usize,
                    stride: t.stride as usize,
                    u: Axis::new(t.width),
                    v: Axis::new(t.height),
                },
            ),
            None if v[0].color == v[1].color && v[1].color == v[2].color => Shade::Flat(v[0].color),
            None => Shade::Smooth(colors()),
        }
    }

    /// Shade and write `n` pixels of row `y` from column `x`; `rx`, `ry` are the same
    /// position relative to the box's first pixel.
    fn fill(&mut self, shade: &Shade, y: i64, x: i64, n: usize, rx: i64, ry: i64) {
        let start = self.target.row(y as u16).start + x as usize * BPP;
        let range = start..start + n * BPP;
        if self.row.len() < n {
            self.row.resize(n, 0);
        }
        let out = &mut self.row[..n];
        match shade {
            Shade::Flat(c) => out.fill(*c),
            Shade::Smooth(planes) => {
                let mut c = planes.map(|p| p.at(rx, ry));
                let d = planes.map(|p| p.dx);
                for px in out.iter_mut() {
                    *px = pack(&c);
                    advance(&mut c, &d);
                }
            }
            Shade::Textured(planes, uv, sampler) => {
                let mut c = planes.map(|p| p.at(rx, ry));
                let d = planes.map(|p| p.dx);
                let mut t = uv.map(|p| p.at(rx, ry));
                let dt = uv.map(|p| p.dx);
                let gmem: &[u8] = self.gmem;
                for px in out.iter_mut() {
                    let texel = sampler.texel(gmem, t[0] >> ATTR_FRAC, t[1] >> ATTR_FRAC);
                    *px = modulate(texel, pack(&c));
                    advance(&mut c, &d);
                    advance(&mut t, &dt);
                }
            }
        }
        if let Some(dst) = self.gmem.get_mut(range.clone()) {
            for (d, c) in dst.chunks_exact_mut(BPP).zip(out.iter()) {
                d.copy_from_slice(&c.to_le_bytes());
            }
            self.spans.push_range(&range);
        }
    }
}

/// Pack interpolated A, R, G, B into ARGB.
pub(super) fn pack(c: &[i64; 4]) -> u32 {
    (channel(c[0]) << 24) | (channel(c[1]) << 16) | (channel(c[2]) << 8) | channel(c[3])
}

/// Step every value by its per-pixel delta.
pub(super) fn advance<const N: usize>(values: &mut [i64; N], deltas: &[i64; N]) {
    for (v, d) in values.iter_mut().zip(deltas) {
        *v = v.wrapping_add(*d);
    }
}

#[cfg(test)]
mod tests;
