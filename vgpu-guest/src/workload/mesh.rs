//! The scene's meshes, built once in guest RAM in object space: cubes, UV spheres, tori, a
//! floor and the screens. Integer arithmetic only.

use alloc::vec::Vec;

use crate::cmd::Vertex3d;

use super::math3d::{isqrt, ONE};
use super::scene::{cos_q16, sin_q16, TURN};

/// Where one mesh lies in the shared vertex and index buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MeshRange {
    /// First vertex (the draw's base vertex).
    pub base_vertex: u32,
    /// Vertices.
    pub vertices: u32,
    /// First index.
    pub first_index: u32,
    /// Indices (three per triangle).
    pub indices: u32,
}

impl MeshRange {
    /// Triangles drawn.
    pub fn triangles(&self) -> u32 {
        self.indices / 3
    }
}

/// Vertex and index buffers being built.
#[derive(Debug, Default)]
pub struct MeshBuilder {
    /// Vertices.
    pub vertices: Vec<Vertex3d>,
    /// Indices, relative to each mesh's base vertex.
    pub indices: Vec<u32>,
}

/// A normal in 2.14 from a 16.16 unit vector.
fn n14(v: [i64; 3]) -> [i16; 3] {
    v.map(|x| (x >> 2).clamp(-(1 << 14), 1 << 14) as i16)
}

fn p32(v: [i64; 3]) -> [i32; 3] {
    v.map(|x| x as i32)
}

impl MeshBuilder {
    fn begin(&self) -> (u32, u32) {
        (self.vertices.len() as u32, self.indices.len() as u32)
    }

    fn end(&self, (bv, fi): (u32, u32)) -> MeshRange {
        MeshRange {
            base_vertex: bv,
            vertices: self.vertices.len() as u32 - bv,
            first_index: fi,
            indices: self.indices.len() as u32 - fi,
        }
    }

    /// A grid of `(cols + 1) x (rows + 1)` vertices from `at(i, j)`, two triangles per cell,
    /// counter-clockwise about `d/di x d/dj` (about the opposite if `flip`).
    fn grid(
        &mut self,
        (cols, rows): (u32, u32),
        base: u32,
        flip: bool,
        mut at: impl FnMut(u32, u32) -> Vertex3d,
    ) {
        for j in 0..=rows {
            for i in 0..=cols {
                self.vertices.push(at(i, j));
            }
        }
        let w = cols + 1;
        let local = self.vertices.len() as u32 - (cols + 1) * (rows + 1) - base;
        for j in 0..rows {
            for i in 0..cols {
                let a = local + j * w + i;
                let (b, c, d) = (a + 1, a + w, a + w + 1);
                if flip {
                    self.indices.extend_from_slice(&[a, c, b, b, c, d]);
                } else {
                    self.indices.extend_from_slice(&[a, b, c, b, d, c]);
                }
            }
        }
    }

    /// A cube of half-size 1.0 with each face split into `k x k` quads.
    pub fn cube(&mut self, k: u32, color: u32) -> MeshRange {
        let start = self.begin();
        let k = k.max(1);
        // Each face: normal axis, sign; u and v axes chosen so that u x v = normal.
        let faces: [(usize, i64, usize, usize); 6] = [
            (0, 1, 1, 2),
            (0, -1, 2, 1),
            (1, 1, 2, 0),
            (1, -1, 0, 2),
            (2, 1, 0, 1),
            (2, -1, 1, 0),
        ];
        for (axis, sign, ua, va) in faces {
            self.grid((k, k), start.0, false, |i, j| {
                let mut p = [0i64; 3];
                p[axis] = sign * ONE;
                let s = |t: u32| -ONE + 2 * ONE * i64::from(t) / i64::from(k);
                p[ua] = s(i);
                p[va] = s(j);
                let mut n = [0i64; 3];
                n[axis] = sign * ONE;
                Vertex3d {
                    pos: p32(p),
                    normal: n14(n),
                    uv: [
                        (ONE * i64::from(i) / i64::from(k)) as i32,
                        (ONE * i64::from(j) / i64::from(k)) as i32,
                    ],
                    color,
                }
            });
        }
        self.end(start)
    }

    /// A UV sphere of radius 1.0 with `rings` x `segments` cells.
    pub fn sphere(&mut self, rings: u32, segments: u32, color: u32) -> MeshRange {
        let start = self.begin();
        let (rings, segments) = (rings.max(2), segments.max(3));
        // d/dlongitude x d/dlatitude points inwards: flip.
        self.grid((segments, rings), start.0, true, |i, j| {
            // Latitude from the north pole (j = 0) to the south; longitude with i.
            let lat = (u64::from(j) * u64::from(TURN / 2) / u64::from(rings)) as u32;
            let lon = (u64::from(i) * u64::from(TURN) / u64::from(segments)) as u32;
            let (sl, cl) = (i64::from(sin_q16(lat)), i64::from(cos_q16(lat)));
            let (so, co) = (i64::from(sin_q16(lon)), i64::from(cos_q16(lon)));
            let n = [(sl * so) >> 16, cl, (sl * co) >> 16];
            Vertex3d {
                pos: p32(n),
                normal: n14(n),
                uv: [
                    (2 * ONE * i64::from(i) / i64::from(segments)) as i32,
                    (ONE * i64::from(j) / i64::from(rings)) as i32,
                ],
                color,
            }
        });
        self.end(start)
    }

    /// A torus (ring radius 0.7, tube radius 0.3) of `n` x `m` cells.
    pub fn torus(&mut self, n: u32, m: u32, color: u32) -> MeshRange {
        let start = self.begin();
        let (n, m) = (n.max(3), m.max(3));
        let (big, small) = (ONE * 7 / 10, ONE * 3 / 10);
        self.grid((n, m), start.0, false, |i, j| {
            let a = (u64::from(i) * u64::from(TURN) / u64::from(n)) as u32;
            let b = (u64::from(j) * u64::from(TURN) / u64::from(m)) as u32;
            let (sa, ca) = (i64::from(sin_q16(a)), i64::from(cos_q16(a)));
            let (sb, cb) = (i64::from(sin_q16(b)), i64::from(cos_q16(b)));
            let normal = [(cb * ca) >> 16, sb, -((cb * sa) >> 16)];
            let r = big + ((small * cb) >> 16);
            Vertex3d {
                pos: p32([(r * ca) >> 16, (small * sb) >> 16, -((r * sa) >> 16)]),
                normal: n14(normal),
                uv: [
                    (4 * ONE * i64::from(i) / i64::from(n)) as i32,
                    (ONE * i64::from(j) / i64::from(m)) as i32,
                ],
                color,
            }
        });
        self.end(start)
    }

    /// A square in the xz plane (y = 0, facing +y) of half-size 1.0 split into `k x k`
    /// cells, its texture repeated `repeat` times.
    pub fn floor(&mut self, k: u32, repeat: i64, color: u32) -> MeshRange {
        let start = self.begin();
        let k = k.max(1);
        self.grid((k, k), start.0, false, |i, j| {
            let s = |t: u32| -ONE + 2 * ONE * i64::from(t) / i64::from(k);
            Vertex3d {
                pos: p32([s(i), 0, -s(j)]),
                normal: n14([0, ONE, 0]),
                uv: [
                    (repeat * ONE * i64::from(i) / i64::from(k)) as i32,
                    (repeat * ONE * i64::from(j) / i64::from(k)) as i32,
                ],
                color,
            }
        });
        self.end(start)
    }

    /// A square in the xy plane (facing +z) of half-size 1.0, texture 0..1 with v down.
    pub fn screen(&mut self, color: u32) -> MeshRange {
        let start = self.begin();
        // +x x -y is -z: flip to face +z.
        self.grid((1, 1), start.0, true, |i, j| Vertex3d {
            pos: p32([
                -ONE + 2 * ONE * i64::from(i),
                ONE - 2 * ONE * i64::from(j),
                0,
            ]),
            normal: n14([0, 0, ONE]),
            uv: [(ONE * i64::from(i)) as i32, (ONE * i64::from(j)) as i32],
            color,
        });
        self.end(start)
    }
}

/// Tessellation of the three object meshes for about `per` triangles each:
/// (cube k, sphere rings and segments, torus n and m).
pub fn tessellation(per: u32) -> (u32, (u32, u32), (u32, u32)) {
    let per = u64::from(per.max(12));
    let k = isqrt(per / 12).max(1) as u32;
    let seg = isqrt(per).max(4) as u32;
    let tn = isqrt(per).max(6) as u32;
    (k, (seg / 2, seg), (tn, (tn / 2).max(3)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn meshes_have_the_expected_counts_and_valid_indices() {
        let mut b = MeshBuilder::default();
        let c = b.cube(2, 0);
        assert_eq!((c.vertices, c.triangles()), (6 * 9, 6 * 8));
        let s = b.sphere(4, 8, 0);
        assert_eq!((s.vertices, s.triangles()), (5 * 9, 2 * 4 * 8));
        let t = b.torus(8, 4, 0);
        assert_eq!((t.vertices, t.triangles()), (9 * 5, 2 * 8 * 4));
        for m in [c, s, t] {
            let idx = &b.indices[m.first_index as usize..(m.first_index + m.indices) as usize];
            assert!(idx.iter().all(|&i| i < m.vertices), "{m:?}");
        }
    }

    #[test]
    fn every_mesh_winds_counter_clockwise_about_its_normals() {
        // For each non-degenerate triangle, (b - a) x (c - a) points along the normals.
        let mut b = MeshBuilder::default();
        let meshes = [
            b.cube(2, 0),
            b.sphere(6, 12, 0),
            b.torus(12, 6, 0),
            b.floor(3, 2, 0),
            b.screen(0),
        ];
        for m in meshes {
            let range = m.first_index as usize..(m.first_index + m.indices) as usize;
            for t in b.indices[range].chunks(3) {
                let v = [0, 1, 2].map(|k| b.vertices[(m.base_vertex + t[k]) as usize]);
                let d = |p: &Vertex3d, q: &Vertex3d| {
                    [0, 1, 2].map(|k| i64::from(q.pos[k]) - i64::from(p.pos[k]))
                };
                let (e1, e2) = (d(&v[0], &v[1]), d(&v[0], &v[2]));
                let n = [
                    e1[1] * e2[2] - e1[2] * e2[1],
                    e1[2] * e2[0] - e1[0] * e2[2],
                    e1[0] * e2[1] - e1[1] * e2[0],
                ];
                if n == [0; 3] {
                    continue; // a degenerate triangle at a sphere's pole
                }
                let normal =
                    [0, 1, 2].map(|k| v.iter().map(|v| i64::from(v.normal[k])).sum::<i64>());
                let dot: i128 = (0..3)
                    .map(|k| i128::from(n[k]) * i128::from(normal[k]))
                    .sum();
                assert!(dot > 0, "{m:?}: {v:?}");
            }
        }
    }
}
