//! The scene: seeded meshes that move and spin, computed with integer arithmetic only so
//! that every machine renders the same bits.

use alloc::vec::Vec;

use crate::cmd::Vertex;

use super::layout::TEX_DIM;

/// Number of meshes in the scene.
pub const MESHES: u32 = 6;

/// One full turn in angle units.
pub const TURN: u32 = 1 << 16;

/// splitmix64: a small, well-mixed, seedable generator.
#[derive(Debug, Clone)]
pub struct SplitMix(u64);

impl SplitMix {
    /// A generator from `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A value in `lo..hi` (`hi > lo`).
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + (self.next_u64() % (hi - lo) as u64) as i64
    }
}

/// sin of `angle` (in 1/65536 turns) in 16.16 fixed point, by Bhaskara I's rational
/// approximation evaluated in integers (within 0.2% of the true value, and exact to the bit
/// on every machine).
pub fn sin_q16(angle: u32) -> i32 {
    const T: i64 = (TURN / 2) as i64;
    let a = i64::from(angle % TURN);
    let (t, sign) = if a < T { (a, 1) } else { (a - T, -1) };
    let p = t * (T - t);
    let num = 16 * p * 65536;
    let den = 5 * T * T - 4 * p;
    (sign * num / den) as i32
}

/// cos of `angle` in 16.16 fixed point.
pub fn cos_q16(angle: u32) -> i32 {
    sin_q16(angle.wrapping_add(TURN / 4))
}

/// The fixed parameters of one mesh, drawn from the seed.
#[derive(Debug, Clone, Copy)]
pub struct Mesh {
    /// Triangles in the fan.
    pub triangles: u32,
    /// Radius in pixels.
    pub radius: i64,
    /// Spin speed (angle units per frame).
    pub spin: u32,
    /// Orbit speeds (angle units per frame) for x and y.
    pub orbit: (u32, u32),
    /// Orbit phases.
    pub phase: (u32, u32),
    /// Colours of centre and rim.
    pub colors: (u32, u32),
    /// Texture index, or `None` for a flat-shaded mesh.
    pub texture: Option<u32>,
}

/// The meshes of the scene for `seed` and a total triangle budget.
pub fn meshes(seed: u64, triangles: u32, height: u32) -> Vec<Mesh> {
    let mut rng = SplitMix::new(seed ^ 0x5eed_0f5c_e7e5);
    let per = (triangles / MESHES).max(1);
    let min_r = i64::from(height / 12).max(4);
    let max_r = i64::from(height / 4).max(min_r + 1);
    (0..MESHES)
        .map(|i| Mesh {
            triangles: if i == 0 {
                triangles.saturating_sub(per * (MESHES - 1)).max(1)
            } else {
                per
            },
            radius: rng.range(min_r, max_r),
            spin: rng.range(200, 1400) as u32,
            orbit: (rng.range(60, 500) as u32, rng.range(60, 500) as u32),
            phase: (rng.next_u64() as u32, rng.next_u64() as u32),
            colors: (
                0xff00_0000 | rng.next_u64() as u32 & 0xff_ffff,
                0xff00_0000 | rng.next_u64() as u32 & 0xff_ffff,
            ),
            texture: (i % 2 == 1).then_some(i / 2 % super::layout::TEXTURES as u32),
        })
        .collect()
}

/// The vertices of `mesh` at `frame` in a `width` x `height` target, three per triangle.
pub fn mesh_vertices(mesh: &Mesh, frame: u64, width: u32, height: u32, out: &mut Vec<Vertex>) {
    let f = frame as u32;
    let cx = i64::from(width / 2)
        + i64::from(width / 3)
            * i64::from(sin_q16(
                mesh.phase.0.wrapping_add(f.wrapping_mul(mesh.orbit.0)),
            ))
            / 65536;
    let cy = i64::from(height / 2)
        + i64::from(height / 3)
            * i64::from(cos_q16(
                mesh.phase.1.wrapping_add(f.wrapping_mul(mesh.orbit.1)),
            ))
            / 65536;
    let spin = f.wrapping_mul(mesh.spin);
    let n = mesh.triangles;
    let rim = |k: u32| -> (i64, i64, i32, i32) {
        let a = spin.wrapping_add(((u64::from(k) * u64::from(TURN)) / u64::from(n)) as u32);
        // A wavy rim: radius varies with k, so the fan is a star, not a disc.
        let r = mesh.radius * (48 + i64::from(k % 3) * 8) / 64;
        let (s, c) = (i64::from(sin_q16(a)), i64::from(cos_q16(a)));
        let u = (32768 + c / 2) as i32;
        let v = (32768 + s / 2) as i32;
        ((cx << 16) + r * c, (cy << 16) + r * s, u, v)
    };
    let centre = Vertex {
        x: (cx << 16) as i32,
        y: (cy << 16) as i32,
        u: 32768,
        v: 32768,
        color: mesh.colors.0,
    };
    for k in 0..n {
        let (x0, y0, u0, v0) = rim(k);
        let (x1, y1, u1, v1) = rim((k + 1) % n);
        out.push(centre);
        out.push(Vertex {
            x: x0 as i32,
            y: y0 as i32,
            u: u0,
            v: v0,
            color: mesh.colors.1,
        });
        out.push(Vertex {
            x: x1 as i32,
            y: y1 as i32,
            u: u1,
            v: v1,
            color: mesh.colors.1 ^ 0x0040_4040,
        });
    }
}

/// Texel (`x`, `y`) of texture `t` for `seed`: a seeded checkerboard with a gradient.
pub fn texel(seed: u64, t: u64, x: u32, y: u32) -> u32 {
    let mut rng = SplitMix::new(seed ^ (t + 1).wrapping_mul(0x7e57_7e57));
    let a = rng.next_u64() as u32 | 0xff00_0000;
    let b = rng.next_u64() as u32 | 0xff00_0000;
    let cell = 8 << (t % 3);
    let base = if ((x / cell) + (y / cell)) % 2 == 0 {
        a
    } else {
        b
    };
    let g = (x * 255 / TEX_DIM) as u8;
    base ^ u32::from(g) ^ (u32::from((y * 255 / TEX_DIM) as u8) << 8)
}

/// Clear colour of `frame`.
pub fn clear_color(seed: u64, frame: u64) -> u32 {
    let mut rng = SplitMix::new(seed ^ frame.wrapping_mul(0x0123_4567_89ab));
    0xff00_0000 | (rng.next_u64() as u32 & 0x003f_3f3f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;

    #[test]
    fn sine_is_close_and_odd() {
        for a in (0..TURN).step_by(97) {
            let exact = (f64::from(a) / f64::from(TURN) * std::f64::consts::TAU).sin();
            let got = f64::from(sin_q16(a)) / 65536.0;
            assert!((exact - got).abs() < 0.002, "angle {a}: {got} vs {exact}");
        }
        assert_eq!(sin_q16(0), 0);
        assert_eq!(sin_q16(TURN / 4), 65536);
        assert_eq!(cos_q16(0), 65536);
    }

    #[test]
    fn meshes_are_seeded() {
        let a = meshes(1, 600, 720);
        let b = meshes(1, 600, 720);
        let c = meshes(2, 600, 720);
        assert_eq!(format!("{a:?}"), format!("{b:?}"));
        assert_ne!(format!("{a:?}"), format!("{c:?}"));
        assert_eq!(a.iter().map(|m| m.triangles).sum::<u32>(), 600);
        let mut v = Vec::new();
        mesh_vertices(&a[0], 7, 1280, 720, &mut v);
        assert_eq!(v.len() as u32, a[0].triangles * 3);
        let mut w = Vec::new();
        mesh_vertices(&a[0], 8, 1280, 720, &mut w);
        assert_ne!(v, w, "the scene moves");
    }
}
