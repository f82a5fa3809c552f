//! Per-vertex work: transform, lighting, clipping and projection, in integers only.
//!
//! * Transform: `clip = MVP * (x, y, z, 1)` with 16.16 entries, products summed exactly in
//!   128 bits, then shifted (floor) back to 16.16.
//! * Lighting (lit draws): `n' = NORMAL * n` (upper-left 3x3, 2.14 result),
//!   `d = max(0, n' . L)` in 16.16, `i = min(1.0, ambient + diffuse * d)`, and each of R, G, B
//!   becomes `round(c * i)`; alpha is kept. Unlit draws keep the vertex colour.
//! * Clipping, in clip space, against `w >= W_MIN`, the near plane `z >= 0`, the far plane
//!   `z <= w`, and a guard band `|x|, |y| <= GUARD * w` (outside it the screen coordinates
//!   would grow without bound; inside it the rasteriser's scissor does the rest). Each plane
//!   cuts the polygon (Sutherland-Hodgman); a new vertex on an edge is interpolated from the
//!   edge's inside end, so two triangles sharing an edge cut it at the same point.
//! * Projection: `sx = vx + (x / w + 1) * vw / 2`, `sy = vy + (1 - y / w) * vh / 2` on the
//!   1/256-pixel grid, depth `z / w * DEPTH_ONE`, and `q = 2^40 / w`, `u * q`, `v * q`
//!   for perspective-correct texture coordinates.

use crate::cmd::{Vertex3d, DEPTH_ONE};

use super::state::{Light, Pipeline3dState, Viewport};

/// Guard band: clip space `|x|, |y|` beyond `GUARD * w` is cut away.
const GUARD: i64 = 4;
/// Smallest `w` kept (16.16: 1/256).
const W_MIN: i64 = 256;
/// Texture coordinates are clamped to +-`UV_LIMIT` (16.16: 16 repeats).
const UV_LIMIT: i64 = 16 << 16;
/// Clip-space coordinates are clamped to +-`CLIP_LIMIT` after the transform.
const CLIP_LIMIT: i64 = 1 << 47;
/// Numerator of `q = 2^40 / w`.
const Q_ONE: i128 = 1 << 40;
/// Sub-pixel steps per pixel of the screen coordinates.
const SUBPIXEL: i128 = 256;
/// Most vertices a clipped triangle can have (3, plus one per plane).
pub(super) const MAX_POLY: usize = 3 + PLANES;
/// Number of clip planes.
const PLANES: usize = 7;

/// A vertex after transform and lighting, in clip space.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ClipVertex {
    /// x, y, z, w in 16.16.
    pub(super) pos: [i64; 4],
    /// u, v in 16.16.
    pub(super) uv: [i64; 2],
    /// A, R, G, B in 0..=255.
    pub(super) color: [i64; 4],
}

/// A vertex on screen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct ScreenVertex {
    /// Position on the 1/256-pixel grid.
    pub(super) x: i64,
    /// Position on the 1/256-pixel grid.
    pub(super) y: i64,
    /// Depth in `0..=DEPTH_ONE`.
    pub(super) z: i64,
    /// `2^40 / w`.
    pub(super) q: i64,
    /// `u * q` and `v * q` (16.16 times q, shifted back by 16).
    pub(super) uq: [i64; 2],
    /// A, R, G, B in 0..=255.
    pub(super) color: [i64; 4],
}

/// `m * (p, 1)` in 16.16 for rows `0..N`.
fn mul<const N: usize>(m: &[i32; 16], p: [i64; 3], one: i64) -> [i64; N] {
    let mut out = [0; N];
    for (r, o) in out.iter_mut().enumerate() {
        let row = &m[4 * r..4 * r + 4];
        let sum: i128 = row
            .iter()
            .zip([p[0], p[1], p[2], one])
            .map(|(&a, b)| i128::from(a) * i128::from(b))
            .sum();
        *o = (sum >> 16).clamp(-i128::from(CLIP_LIMIT), i128::from(CLIP_LIMIT)) as i64;
    }
    out
}

/// The light intensity (16.16, `0..=1.0`) for an object-space normal.
fn intensity(normal: &[i32; 16], light: &Light, n: [i16; 3]) -> i64 {
    let n = n.map(i64::from);
    // The 3x3 part only: the fourth column is multiplied by 0.
    let world: [i64; 3] = mul(normal, n, 0);
    let dot: i128 = world
        .iter()
        .zip(light.dir)
        .map(|(&a, b)| i128::from(a) * i128::from(b))
        .sum();
    let d = (dot >> 14).clamp(0, 1 << 16) as i64;
    let i = i64::from(light.ambient) + ((i64::from(light.diffuse) * d) >> 16);
    i.clamp(0, 1 << 16)
}

/// Transform and (if `lit`) light one vertex.
pub(super) fn transform(v: &Vertex3d, st: &Pipeline3dState, lit: bool) -> ClipVertex {
    let pos = mul(&st.mvp, v.pos.map(i64::from), 1 << 16);
    let uv = v.uv.map(|t| i64::from(t).clamp(-UV_LIMIT, UV_LIMIT));
    let mut color = [24, 16, 8, 0].map(|s| i64::from((v.color >> s) & 0xff));
    if lit {
        let i = intensity(&st.normal, &st.light, v.normal);
        for c in &mut color[1..] {
            *c = (*c * i + (1 << 15)) >> 16;
        }
    }
    ClipVertex { pos, uv, color }
}

/// Signed distance of `v` to clip plane `k` (inside when `>= 0`).
fn distance(k: usize, v: &ClipVertex) -> i64 {
    let [x, y, z, w] = v.pos;
    match k {
        0 => w - W_MIN,
        1 => z,
        2 => w - z,
        3 => GUARD * w + x,
        4 => GUARD * w - x,
        5 => GUARD * w + y,
        _ => GUARD * w - y,
    }
}

/// The point where edge `a` (inside, distance `da >= 0`) to `b` (outside, `db < 0`) meets
/// the plane.
fn cut(a: &ClipVertex, b: &ClipVertex, da: i64, db: i64) -> ClipVertex {
    let den = i128::from(da) - i128::from(db);
    let lerp = |p: i64, q: i64| {
        let t = (i128::from(q) - i128::from(p)) * i128::from(da);
        (i128::from(p) + t.div_euclid(den)) as i64
    };
    let mut out = ClipVertex::default();
    for i in 0..4 {
        out.pos[i] = lerp(a.pos[i], b.pos[i]);
        out.color[i] = lerp(a.color[i], b.color[i]);
    }
    for i in 0..2 {
        out.uv[i] = lerp(a.uv[i], b.uv[i]);
    }
    out
}

/// A clipped polygon: `len` vertices of `v`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Polygon {
    pub(super) v: [ClipVertex; MAX_POLY],
    pub(super) len: usize,
}

/// Clip a triangle against every plane; `None` when nothing is left.
pub(super) fn clip(tri: [ClipVertex; 3]) -> Option<Polygon> {
    let mut poly = Polygon {
        v: [ClipVertex::default(); MAX_POLY],
        len: 3,
    };
    poly.v[..3].copy_from_slice(&tri);
    for k in 0..PLANES {
        let d: [i64; 3] = tri.map(|v| distance(k, &v));
        if d.iter().all(|&d| d < 0) {
            return None;
        }
    }
    for k in 0..PLANES {
        let mut out = [ClipVertex::default(); MAX_POLY];
        let mut n = 0;
        let mut push = |v: ClipVertex| {
            // At most one vertex more per plane: `MAX_POLY` holds them all.
            if let Some(slot) = out.get_mut(n) {
                *slot = v;
                n += 1;
            }
        };
        for i in 0..poly.len {
            let a = poly.v[i];
            let b = poly.v[(i + 1) % poly.len];
            let (da, db) = (distance(k, &a), distance(k, &b));
            if da >= 0 {
                push(a);
                if db < 0 {
                    push(cut(&a, &b, da, db));
                }
            } else if db >= 0 {
                push(cut(&b, &a, db, da));
            }
        }
        if n < 3 {
            return None;
        }
        poly = Polygon { v: out, len: n };
    }
    Some(poly)
}

/// Whether no vertex of `tri` is outside any plane (the common case: no clipping).
pub(super) fn inside(tri: &[ClipVertex; 3]) -> bool {
    tri.iter().all(|v| (0..PLANES).all(|k| distance(k, v) >= 0))
}

/// Perspective divide and viewport mapping of a vertex that passed clipping (`w >= W_MIN`).
pub(super) fn project(v: &ClipVertex, vp: Viewport) -> ScreenVertex {
    let [x, y, z, w] = v.pos.map(i128::from);
    let w = w.max(1);
    let half_w = i128::from(vp.width) * SUBPIXEL / 2;
    let half_h = i128::from(vp.height) * SUBPIXEL / 2;
    let sx = i128::from(vp.x) * SUBPIXEL + ((x + w) * half_w).div_euclid(w);
    let sy = i128::from(vp.y) * SUBPIXEL + ((w - y) * half_h).div_euclid(w);
    let depth = (z * i128::from(DEPTH_ONE)).div_euclid(w);
    let q = Q_ONE / w;
    let uq = v.uv.map(|t| ((i128::from(t) * q) >> 16) as i64);
    ScreenVertex {
        x: sx as i64,
        y: sy as i64,
        z: depth.clamp(0, i128::from(DEPTH_ONE)) as i64,
        q: q as i64,
        uq,
        color: v.color,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::{FIXED_ONE, NORMAL_ONE};
    use crate::engine::pipeline3d::state::IDENTITY;

    const ONE: i64 = 1 << 16;

    fn cv(x: i64, y: i64, z: i64, w: i64) -> ClipVertex {
        ClipVertex {
            pos: [x, y, z, w],
            uv: [0, 0],
            color: [255, 255, 255, 255],
        }
    }

    #[test]
    fn identity_transform_and_unlit_colour() {
        let st = Pipeline3dState::default();
        let v = Vertex3d {
            pos: [FIXED_ONE / 2, -FIXED_ONE, 3],
            normal: [0, 0, NORMAL_ONE],
            uv: [FIXED_ONE, 1 << 30],
            color: 0x8040_2010,
        };
        let c = transform(&v, &st, false);
        assert_eq!(c.pos, [ONE / 2, -ONE, 3, ONE]);
        assert_eq!(c.uv, [ONE, UV_LIMIT], "texture coordinates are clamped");
        assert_eq!(c.color, [0x80, 0x40, 0x20, 0x10]);
    }

    #[test]
    fn lighting_is_ambient_plus_clamped_diffuse() {
        let mut st = Pipeline3dState {
            light: Light {
                dir: [0, 0, FIXED_ONE],
                ambient: FIXED_ONE / 4,
                diffuse: FIXED_ONE / 2,
            },
            ..Pipeline3dState::default()
        };
        let mut v = Vertex3d {
            normal: [0, 0, NORMAL_ONE],
            color: 0xff_c8_64_00,
            ..Vertex3d::default()
        };
        // Facing the light: 0.25 + 0.5 = 0.75.
        assert_eq!(transform(&v, &st, true).color, [255, 150, 75, 0]);
        // Facing away: ambient only, never negative.
        v.normal = [0, 0, -NORMAL_ONE];
        assert_eq!(transform(&v, &st, true).color, [255, 50, 25, 0]);
        // The normal matrix turns the normal: a rotation of 180 degrees about x.
        st.normal = IDENTITY;
        st.normal[5] = -FIXED_ONE;
        st.normal[10] = -FIXED_ONE;
        assert_eq!(transform(&v, &st, true).color, [255, 150, 75, 0]);
        // Intensity saturates at 1.0.
        st.light.ambient = FIXED_ONE;
        assert_eq!(transform(&v, &st, true).color, [255, 200, 100, 0]);
    }

    #[test]
    fn a_triangle_inside_is_not_cut() {
        let t = [
            cv(0, 0, ONE / 2, ONE),
            cv(ONE, 0, ONE / 2, ONE),
            cv(0, ONE, 0, ONE),
        ];
        assert!(inside(&t));
        let p = clip(t).expect("kept");
        assert_eq!(p.len, 3);
        assert_eq!(&p.v[..3], &t);
    }

    #[test]
    fn near_plane_cuts_a_crossing_triangle_into_a_quad() {
        // One vertex behind the near plane (z < 0): the result has 4 vertices, all z >= 0,
        // and the cut points lie on z = 0 at the right place.
        let t = [
            cv(-ONE, 0, -ONE, 2 * ONE),
            cv(ONE, 0, ONE, 2 * ONE),
            cv(0, ONE, ONE, 2 * ONE),
        ];
        assert!(!inside(&t));
        let p = clip(t).expect("kept");
        assert_eq!(p.len, 4);
        for v in &p.v[..4] {
            assert!(v.pos[2] >= 0, "{v:?}");
        }
        assert!(p.v[..4].iter().any(|v| v.pos == [0, 0, 0, 2 * ONE]));
        assert!(p.v[..4]
            .iter()
            .any(|v| v.pos == [-ONE / 2, ONE / 2, 0, 2 * ONE]));
    }

    #[test]
    fn triangles_behind_the_camera_or_beyond_far_vanish() {
        let behind = [
            cv(0, 0, -ONE, ONE),
            cv(ONE, 0, -ONE, ONE),
            cv(0, ONE, -1, ONE),
        ];
        assert!(clip(behind).is_none());
        let negative_w = [
            cv(0, 0, ONE, -ONE),
            cv(ONE, 0, ONE, -ONE),
            cv(0, ONE, ONE, -1),
        ];
        assert!(clip(negative_w).is_none());
        let far = [
            cv(0, 0, 3 * ONE, ONE),
            cv(ONE, 0, 2 * ONE, ONE),
            cv(0, ONE, 5 * ONE, ONE),
        ];
        assert!(clip(far).is_none());
    }

    #[test]
    fn shared_edges_are_cut_at_the_same_point() {
        let a = cv(-3 * ONE, ONE, -ONE, 2 * ONE);
        let b = cv(ONE, -ONE, 3 * ONE, 2 * ONE);
        let (c, d) = (cv(0, ONE, ONE, 2 * ONE), cv(ONE, ONE, ONE, 2 * ONE));
        let on_plane = |p: &Polygon| -> Vec<[i64; 4]> {
            p.v[..p.len]
                .iter()
                .filter(|v| v.pos[2] == 0)
                .map(|v| v.pos)
                .collect()
        };
        let p1 = clip([a, b, c]).expect("kept");
        let p2 = clip([b, a, d]).expect("kept");
        let cut1 = on_plane(&p1);
        assert!(
            cut1.iter().any(|x| on_plane(&p2).contains(x)),
            "{p1:?} {p2:?}"
        );
    }

    #[test]
    fn projection_maps_ndc_corners_to_the_viewport() {
        let vp = Viewport {
            x: 10,
            y: 20,
            width: 100,
            height: 50,
        };
        let s = project(&cv(-2 * ONE, 2 * ONE, 0, 2 * ONE), vp);
        assert_eq!((s.x, s.y, s.z), (10 * 256, 20 * 256, 0));
        let s = project(&cv(2 * ONE, -2 * ONE, 2 * ONE, 2 * ONE), vp);
        assert_eq!((s.x, s.y, s.z), (110 * 256, 70 * 256, i64::from(DEPTH_ONE)));
        assert_eq!(s.q, 1 << 23, "q = 2^40 / 2.0");
        let s = project(&cv(0, 0, ONE, 4 * ONE), vp);
        assert_eq!(
            (s.x, s.y, s.z),
            (60 * 256, 45 * 256, i64::from(DEPTH_ONE) / 4)
        );
    }
}
