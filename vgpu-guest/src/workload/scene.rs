//! The scene: seeded objects (cubes, spheres, tori) spinning over a textured floor, a
//! moving camera, a turning light, and screens showing what the render-to-texture passes'
//! cameras see. Integer arithmetic only, so every machine renders the same bits.

use alloc::vec::Vec;

use super::layout::TEX_DIM;
use super::math3d::{
    self, look_at, normalize, perspective, rotate, scale, translate, Mat4, Vec3, IDENTITY, ONE,
};
use super::mesh::{self, MeshBuilder, MeshRange};

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

/// The camera's focal length, cot(30 degrees) in 16.16 (a 60-degree vertical field of view).
const FOCAL: i64 = 113_512;
/// Near plane distance (16.16).
const NEAR: i64 = ONE / 2;
/// Far plane distance (16.16).
const FAR: i64 = 60 * ONE;
/// Half-size of the floor (16.16).
const FLOOR_HALF: i64 = 12 * ONE;
/// Radius of the ring of screens (16.16).
const SCREEN_RING: i64 = 10 * ONE;

/// Which object mesh an object uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// A subdivided cube.
    Cube = 0,
    /// A UV sphere.
    Sphere = 1,
    /// A torus.
    Torus = 2,
}

/// One object of the scene, drawn from the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Object {
    /// Its mesh.
    pub shape: Shape,
    /// Position (16.16).
    pub pos: Vec3,
    /// Uniform scale (16.16).
    pub scale: i64,
    /// Spin about y per frame (angle units).
    pub spin: u32,
    /// Spin phase.
    pub phase: u32,
    /// Tilt about x (angle units).
    pub tilt: u32,
    /// Texture slot.
    pub texture: u32,
    /// Vertex colour (ARGB).
    pub color: u32,
}

/// The scene's objects for `seed`: `count` of them on rings around the origin.
pub fn objects(seed: u64, count: u32, slots: u32) -> Vec<Object> {
    let mut rng = SplitMix::new(seed ^ 0x5eed_0f5c_e7e5);
    (0..count)
        .map(|i| {
            let angle = (u64::from(i) * u64::from(TURN) / u64::from(count.max(1))) as u32
                + rng.range(0, 2000) as u32;
            let radius = rng.range(3 * ONE, 6 * ONE);
            let shape = match rng.next_u64() % 3 {
                0 => Shape::Cube,
                1 => Shape::Sphere,
                _ => Shape::Torus,
            };
            Object {
                shape,
                pos: [
                    (radius * i64::from(sin_q16(angle))) >> 16,
                    rng.range(ONE, 2 * ONE),
                    (radius * i64::from(cos_q16(angle))) >> 16,
                ],
                scale: rng.range(ONE / 2, ONE),
                spin: rng.range(200, 1400) as u32,
                phase: rng.next_u64() as u32,
                tilt: rng.range(0, (TURN / 4) as i64) as u32,
                texture: i % slots.max(1),
                color: 0xff80_8080 | (rng.next_u64() as u32 & 0x007f_7f7f),
            }
        })
        .collect()
}

/// One draw of a pass: matrices, mesh, texture, flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Draw {
    /// Model-view-projection.
    pub mvp: Mat4,
    /// Normal matrix (model rotation).
    pub normal: Mat4,
    /// Index of the mesh in [`SceneMeshes::all`].
    pub mesh: usize,
    /// Texture: `Ok(slot)` for an uploaded texture, `Err(pass)` for a pass's target.
    pub texture: Result<u32, u32>,
    /// Lit draw.
    pub lit: bool,
}

/// Where the scene's meshes are in the shared buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SceneMeshes {
    /// Cube, sphere, torus, floor, screen.
    pub all: [MeshRange; 5],
}

/// Index of the floor in [`SceneMeshes::all`].
pub const FLOOR: usize = 3;
/// Index of the screen in [`SceneMeshes::all`].
pub const SCREEN: usize = 4;

/// Build the meshes for `triangles` per pass over `objects` objects.
pub fn build_meshes(triangles: u32, objects: u32) -> (MeshBuilder, SceneMeshes) {
    let mut b = MeshBuilder::default();
    let per = triangles.saturating_sub(2 * 8 * 8 + 2) / objects.max(1);
    let (k, (rings, segs), (n, m)) = mesh::tessellation(per);
    let all = [
        b.cube(k, 0xffff_ffff),
        b.sphere(rings, segs, 0xffff_ffff),
        b.torus(n, m, 0xffff_ffff),
        b.floor(8, 6, 0xffff_ffff),
        b.screen(0xffff_ffff),
    ];
    (b, SceneMeshes { all })
}

/// Triangles drawn per frame.
pub fn triangles_per_frame(meshes: &SceneMeshes, objs: &[Object], passes: u32) -> u64 {
    let scene: u64 = objs
        .iter()
        .map(|o| u64::from(meshes.all[o.shape as usize].triangles()))
        .sum::<u64>()
        + u64::from(meshes.all[FLOOR].triangles());
    scene * u64::from(passes + 1) + u64::from(passes * meshes.all[SCREEN].triangles())
}

/// The camera of `pass` (0 is the main view; `1..=passes` the render-to-texture views) at
/// `frame`: (eye, target).
fn camera(frame: u64, pass: u32, passes: u32) -> (Vec3, Vec3) {
    let f = frame as u32;
    if pass == 0 {
        let a = f.wrapping_mul(300);
        let bob = i64::from(sin_q16(f.wrapping_mul(700))) / 2;
        let eye = [
            9 * i64::from(sin_q16(a)),
            7 * ONE / 2 + bob,
            9 * i64::from(cos_q16(a)),
        ];
        return (eye, [0, ONE / 2, 0]);
    }
    let b = (u64::from(pass - 1) * u64::from(TURN) / u64::from(passes.max(1))) as u32;
    let a = b.wrapping_sub(f.wrapping_mul(200));
    let eye = [
        5 * i64::from(sin_q16(a)),
        6 * ONE,
        5 * i64::from(cos_q16(a)),
    ];
    (eye, [0, ONE, 0])
}

/// The light's direction at `frame` (towards the light, unit length, 16.16).
pub fn light_dir(frame: u64) -> [i32; 3] {
    let a = (frame as u32).wrapping_mul(150);
    let d = normalize([i64::from(sin_q16(a)), ONE, i64::from(cos_q16(a))]);
    d.map(|x| x as i32)
}

/// The draws of `pass` at `frame` into a `width` x `height` target: every object, the
/// floor, and in the main pass (0) one screen per render-to-texture pass.
pub fn draws(
    objs: &[Object],
    frame: u64,
    pass: u32,
    passes: u32,
    (width, height): (u32, u32),
    out: &mut Vec<Draw>,
) {
    let (eye, target) = camera(frame, pass, passes);
    let vp = math3d::mul(
        &perspective(FOCAL, width, height, NEAR, FAR),
        &look_at(eye, target, [0, ONE, 0]),
    );
    let f = frame as u32;
    for o in objs {
        let rot = math3d::mul(
            &rotate(1, o.phase.wrapping_add(f.wrapping_mul(o.spin))),
            &rotate(0, o.tilt),
        );
        let model = math3d::mul(&translate(o.pos), &math3d::mul(&rot, &scale(o.scale)));
        out.push(Draw {
            mvp: math3d::mul(&vp, &model),
            normal: rot,
            mesh: o.shape as usize,
            texture: Ok(o.texture),
            lit: true,
        });
    }
    out.push(Draw {
        mvp: math3d::mul(&vp, &scale(FLOOR_HALF)),
        normal: IDENTITY,
        mesh: FLOOR,
        texture: Ok(0),
        lit: true,
    });
    if pass != 0 {
        return;
    }
    for p in 0..passes {
        let theta = (u64::from(p) * u64::from(TURN) / u64::from(passes.max(1))) as u32 + TURN / 8;
        let pos = [
            (SCREEN_RING * i64::from(sin_q16(theta))) >> 16,
            5 * ONE / 2,
            (SCREEN_RING * i64::from(cos_q16(theta))) >> 16,
        ];
        let face = rotate(1, theta.wrapping_add(TURN / 2));
        let model = math3d::mul(&translate(pos), &math3d::mul(&face, &scale(2 * ONE)));
        out.push(Draw {
            mvp: math3d::mul(&vp, &model),
            normal: face,
            mesh: SCREEN,
            texture: Err(p),
            lit: false,
        });
    }
}

/// Texture `t` of the pool for `seed`: a seeded checkerboard with a gradient.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checker {
    a: u32,
    b: u32,
    /// log2 of the cell edge in texels.
    cell_shift: u32,
}

impl Checker {
    /// The texture `t` for `seed`.
    pub fn new(seed: u64, t: u64) -> Self {
        let mut rng = SplitMix::new(seed ^ (t + 1).wrapping_mul(0x7e57_7e57));
        Self {
            a: rng.next_u64() as u32 | 0xff00_0000,
            b: rng.next_u64() as u32 | 0xff00_0000,
            cell_shift: 3 + (t % 3) as u32,
        }
    }

    /// Texel (`x`, `y`).
    pub fn texel(&self, x: u32, y: u32) -> u32 {
        let base = if ((x >> self.cell_shift) + (y >> self.cell_shift)) % 2 == 0 {
            self.a
        } else {
            self.b
        };
        let g = (x * 255 / TEX_DIM) as u8;
        base ^ u32::from(g) ^ (u32::from((y * 255 / TEX_DIM) as u8) << 8)
    }

    /// Row `y` into `out` (4 bytes a texel).
    pub fn row(&self, y: u32, out: &mut [u8]) {
        for (x, px) in out.chunks_exact_mut(4).enumerate() {
            px.copy_from_slice(&self.texel(x as u32, y).to_le_bytes());
        }
    }
}

/// Texel (`x`, `y`) of texture `t` for `seed` (see [`Checker`]).
pub fn texel(seed: u64, t: u64, x: u32, y: u32) -> u32 {
    Checker::new(seed, t).texel(x, y)
}

/// Clear colour of `frame`.
pub fn clear_color(seed: u64, frame: u64) -> u32 {
    let mut rng = SplitMix::new(seed ^ frame.wrapping_mul(0x0123_4567_89ab));
    0xff00_0000 | (rng.next_u64() as u32 & 0x003f_3f3f)
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn the_scene_is_seeded_and_moves() {
        let a = objects(1, 8, 4);
        assert_eq!(a, objects(1, 8, 4));
        assert_ne!(a, objects(2, 8, 4));
        let mut d7 = Vec::new();
        draws(&a, 7, 0, 2, (320, 200), &mut d7);
        assert_eq!(d7.len(), 8 + 1 + 2);
        let mut d8 = Vec::new();
        draws(&a, 8, 0, 2, (320, 200), &mut d8);
        assert_ne!(d7, d8, "the scene moves");
        let (_, m) = build_meshes(3000, 8);
        let t = triangles_per_frame(&m, &a, 1);
        assert!((4_000..=8_000).contains(&t), "{t}");
    }
}
