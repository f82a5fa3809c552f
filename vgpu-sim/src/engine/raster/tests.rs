use super::*;

/// One pixel in 16.16.
const ONE: i32 = 1 << 16;

fn vtx(x: i32, y: i32, color: u32) -> Vertex {
    Vertex {
        x,
        y,
        u: 0,
        v: 0,
        color,
    }
}

/// A render target with a padded stride, so that spans never merge across rows.
fn target(w: u16, h: u16) -> Surface {
    Surface {
        offset: 64,
        stride: (u32::from(w) + 3) * 4,
        width: w,
        height: h,
    }
}

fn gmem_for(s: &Surface) -> Vec<u8> {
    vec![0; s.end().unwrap_or(0) as usize + 64]
}

/// Per-pixel count of how many of `tris` cover it, from the spans the rasteriser reports.
fn coverage(t: &Surface, tris: &[[Vertex; 3]]) -> Vec<u32> {
    let mut gmem = gmem_for(t);
    let mut row = Vec::new();
    let mut spans = DirtySpans::default();
    let mut counts = vec![0; usize::from(t.width) * usize::from(t.height)];
    for tri in tris {
        let mut r = Rasterizer {
            gmem: &mut gmem,
            target: *t,
            texture: None,
            row: &mut row,
            spans: &mut spans,
        };
        r.triangle(tri);
        for &(off, len) in spans.spans() {
            for b in (off..off + len).step_by(4) {
                let rel = b - u64::from(t.offset);
                let (y, x) = (rel / u64::from(t.stride), rel % u64::from(t.stride) / 4);
                assert!(x < u64::from(t.width) && y < u64::from(t.height));
                counts[(y * u64::from(t.width) + x) as usize] += 1;
            }
        }
        spans = DirtySpans::default();
    }
    counts
}

/// Coverage by brute force: every pixel centre against the three biased edge functions.
fn reference(t: &Surface, tri: &[Vertex; 3]) -> Vec<u32> {
    let mut p = tri.map(|v| Point::snap(&v));
    let area = orient(p[0], p[1], p[2]);
    if area < 0 {
        p.swap(1, 2);
    }
    let mut out = vec![0; usize::from(t.width) * usize::from(t.height)];
    if area == 0 {
        return out;
    }
    for y in 0..i64::from(t.height) {
        for x in 0..i64::from(t.width) {
            let c = Point {
                x: x * PIXEL + HALF_PIXEL,
                y: y * PIXEL + HALF_PIXEL,
            };
            let inside = [(1, 2), (2, 0), (0, 1)].iter().all(|&(a, b)| {
                let bias = if is_top_left(p[a], p[b]) { 0 } else { -1 };
                orient(p[a], p[b], c) + bias >= 0
            });
            out[(y * i64::from(t.width) + x) as usize] = u32::from(inside);
        }
    }
    out
}

/// A small deterministic generator (64-bit LCG, high bits).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u32 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) as u32
    }

    /// Uniform in `lo..hi`.
    fn range(&mut self, lo: i32, hi: i32) -> i32 {
        lo + (self.next() % (hi - lo) as u32) as i32
    }
}

#[test]
fn right_triangle_covers_the_expected_pixels() {
    // (0,0), (8,0), (0,8): centres with x + y + 1 < 8, the hypotenuse being a right edge.
    let t = target(16, 16);
    for tri in [
        [vtx(0, 0, 1), vtx(8 * ONE, 0, 1), vtx(0, 8 * ONE, 1)],
        [vtx(0, 0, 1), vtx(0, 8 * ONE, 1), vtx(8 * ONE, 0, 1)],
    ] {
        let c = coverage(&t, &[tri]);
        assert_eq!(c.iter().sum::<u32>(), 28);
        for y in 0..16 {
            for x in 0..16 {
                assert_eq!(c[y * 16 + x], u32::from(x + y <= 6), "pixel {x},{y}");
            }
        }
    }
}

#[test]
fn top_left_rule_on_a_square() {
    // A 4x4 square at (2,2) split along its diagonal: centres on the top and left sides are
    // inside, on the bottom and right sides outside; each pixel exactly once.
    let t = target(10, 10);
    let (a, b, c, d) = (
        vtx(2 * ONE + ONE / 2, 2 * ONE + ONE / 2, 1),
        vtx(6 * ONE + ONE / 2, 2 * ONE + ONE / 2, 1),
        vtx(6 * ONE + ONE / 2, 6 * ONE + ONE / 2, 1),
        vtx(2 * ONE + ONE / 2, 6 * ONE + ONE / 2, 1),
    );
    let cov = coverage(&t, &[[a, b, c], [a, d, c]]);
    for y in 0..10 {
        for x in 0..10 {
            let want = u32::from((2..6).contains(&x) && (2..6).contains(&y));
            assert_eq!(cov[y * 10 + x], want, "pixel {x},{y}");
        }
    }
}

#[test]
fn matches_brute_force_on_random_triangles() {
    let t = target(37, 29);
    let mut rng = Lcg(1);
    for i in 0..3000 {
        // Mostly on screen, some far off it, some tiny, some with huge coordinates.
        let span = match i % 4 {
            0 => 4 * ONE,
            1 => 45 * ONE,
            2 => 1 << 30,
            _ => ONE / 2,
        };
        let base = (rng.range(-8, 40) * ONE, rng.range(-8, 32) * ONE);
        let tri = [0, 1, 2].map(|_| {
            let x = base.0.saturating_add(rng.range(-span / 2, span / 2));
            let y = base.1.saturating_add(rng.range(-span / 2, span / 2));
            vtx(x, y, 1)
        });
        assert_eq!(
            coverage(&t, &[tri]),
            reference(&t, &tri),
            "triangle {i}: {tri:?}"
        );
    }
}

#[test]
fn a_jittered_mesh_covers_every_pixel_exactly_once() {
    // A grid reaching past the target, inner vertices jittered by sub-pixel amounts, cells
    // split along alternating diagonals with alternating windings.
    let t = target(48, 40);
    let (cols, rows, cell) = (9, 8, 7 * ONE);
    let mut rng = Lcg(7);
    let mut grid = vec![vtx(0, 0, 1); (cols + 1) * (rows + 1)];
    for j in 0..=rows {
        for i in 0..=cols {
            let edge = i == 0 || j == 0 || i == cols || j == rows;
            let jitter = |r: &mut Lcg| {
                if edge {
                    0
                } else {
                    r.range(-3 * ONE / 2, 3 * ONE / 2)
                }
            };
            let x = -3 * ONE + i as i32 * cell + jitter(&mut rng);
            let y = -3 * ONE + j as i32 * cell + jitter(&mut rng);
            grid[j * (cols + 1) + i] = vtx(x, y, 1);
        }
    }
    let mut tris = Vec::new();
    for j in 0..rows {
        for i in 0..cols {
            let at = |di: usize, dj: usize| grid[(j + dj) * (cols + 1) + i + di];
            let (a, b, c, d) = (at(0, 0), at(1, 0), at(1, 1), at(0, 1));
            if (i + j) % 2 == 0 {
                tris.push([a, b, c]);
                tris.push([a, d, c]);
            } else {
                tris.push([a, b, d]);
                tris.push([b, c, d]);
            }
        }
    }
    let cov = coverage(&t, &tris);
    assert!(cov.iter().all(|&c| c == 1), "{cov:?}");
}

#[test]
fn degenerate_and_offscreen_triangles_draw_nothing() {
    let t = target(8, 8);
    let tris = [
        [
            vtx(0, 0, 1),
            vtx(4 * ONE, 4 * ONE, 1),
            vtx(8 * ONE, 8 * ONE, 1),
        ],
        [vtx(ONE, ONE, 1); 3],
        [
            vtx(-100 * ONE, 0, 1),
            vtx(-90 * ONE, 0, 1),
            vtx(-95 * ONE, 8 * ONE, 1),
        ],
        [
            vtx(i32::MIN, i32::MIN, 1),
            vtx(i32::MIN, i32::MAX, 1),
            vtx(i32::MIN + ONE, 0, 1),
        ],
    ];
    for tri in tris {
        assert!(coverage(&t, &[tri]).iter().all(|&c| c == 0), "{tri:?}");
    }
    // The extreme opposite: a triangle larger than the coordinate space covers it all.
    let huge = [
        vtx(i32::MIN, i32::MIN, 1),
        vtx(i32::MAX, 0, 1),
        vtx(0, i32::MAX, 1),
    ];
    assert!(coverage(&t, &[huge]).iter().all(|&c| c == 1));
    assert_eq!(coverage(&t, &[huge]), reference(&t, &huge));
}

/// Draw `tris` on a zeroed `w` x `h` target and return its pixels.
fn render(w: u16, h: u16, texture: Option<(Surface, Vec<u32>)>, tris: &[[Vertex; 3]]) -> Vec<u32> {
    let t = target(w, h);
    let mut gmem = gmem_for(&t);
    if let Some((tex, texels)) = &texture {
        gmem.resize(tex.end().unwrap_or(0) as usize, 0);
        for (i, px) in texels.iter().enumerate() {
            let (x, y) = (i % usize::from(tex.width), i / usize::from(tex.width));
            let at = tex.offset as usize + y * tex.stride as usize + x * 4;
            gmem[at..at + 4].copy_from_slice(&px.to_le_bytes());
        }
    }
    let mut row = Vec::new();
    let mut spans = DirtySpans::default();
    let mut r = Rasterizer {
        gmem: &mut gmem,
        target: t,
        texture: texture.map(|(s, _)| s),
        row: &mut row,
        spans: &mut spans,
    };
    for tri in tris {
        r.triangle(tri);
    }
    let mut out = Vec::new();
    for y in 0..h {
        for px in gmem[t.row(y)].chunks_exact(4) {
            out.push(u32::from_le_bytes([px[0], px[1], px[2], px[3]]));
        }
    }
    out
}

#[test]
fn colour_is_interpolated_and_rounded() {
    // Red goes 0 -> 255 from x = 0 to x = 64, blue 255 -> 0 from y = 0 to y = 64, alpha and
    // green are constant. At centre (x + 0.5, y + 0.5), red = round(255 (2x + 1) / 128) and
    // blue = round(255 (127 - 2y) / 128); neither is ever half-way.
    let tri = [
        vtx(0, 0, 0xff00_40ff),
        vtx(64 * ONE, 0, 0xffff_40ff),
        vtx(0, 64 * ONE, 0xff00_4000),
    ];
    let px = render(64, 64, None, &[tri]);
    let round = |n: u32| (255 * n + 64) / 128;
    for y in 0..64u32 {
        for x in 0..64u32 {
            let got = px[(y * 64 + x) as usize];
            if x + y > 62 {
                assert_eq!(got, 0, "pixel {x},{y} outside");
                continue;
            }
            let want = 0xff00_4000 | (round(2 * x + 1) << 16) | round(127 - 2 * y);
            assert_eq!(got, want, "pixel {x},{y}");
        }
    }
}

#[test]
fn flat_triangles_take_the_fast_path_with_the_same_result() {
    let tri = [
        vtx(ONE / 3, ONE, 0x8012_3456),
        vtx(20 * ONE, 2 * ONE, 0x8012_3456),
        vtx(5 * ONE, 17 * ONE, 0x8012_3456),
    ];
    let px = render(24, 24, None, &[tri]);
    let covered = px.iter().filter(|&&p| p != 0).count();
    assert!(covered > 100);
    assert!(px.iter().all(|&p| p == 0 || p == 0x8012_3456));
}

#[test]
fn modulate_is_rounded_product() {
    for t in 0..=255u32 {
        for c in 0..=255u32 {
            let want = (t * c * 2 + 255) / 510;
            assert_eq!(modulate(t, c), want, "{t} * {c}");
            assert_eq!(modulate(t << 24, c << 24), want << 24);
        }
    }
}

#[test]
fn texture_is_sampled_nearest_with_wrap() {
    // A 4x2 texture with distinct texels, on an 8x8 target: u spans 0..2 (two repeats) across
    // the target and v spans -1..1 down it, white vertex colour leaves texels unchanged.
    let tex = Surface {
        offset: 0x1000,
        stride: 4 * 4 + 8,
        width: 4,
        height: 2,
    };
    let texels: Vec<u32> = (0..8).map(|i| 0xff00_0000 | (i * 0x11_1111)).collect();
    let white = 0xffff_ffff;
    let corner = |x: i32, y: i32, u: i32, v: i32| Vertex {
        x,
        y,
        u,
        v,
        color: white,
    };
    let (tl, tr) = (corner(0, 0, 0, -ONE), corner(8 * ONE, 0, 2 * ONE, -ONE));
    let (bl, br) = (
        corner(0, 8 * ONE, 0, ONE),
        corner(8 * ONE, 8 * ONE, 2 * ONE, ONE),
    );
    let px = render(
        8,
        8,
        Some((tex, texels.clone())),
        &[[tl, tr, br], [tl, bl, br]],
    );
    for y in 0..8i64 {
        for x in 0..8i64 {
            // u = 2 (x + 0.5) / 8, texel x = floor(4 u) mod 4 = (x + 0.5) mod 4 -> x mod 4;
            // v = -1 + 2 (y + 0.5) / 8, texel y = floor(2 v) mod 2 = floor((y + 0.5 - 4) / 2).
            let tx = x.rem_euclid(4);
            let ty = ((2 * y + 1 - 8).div_euclid(4)).rem_euclid(2);
            let want = texels[(ty * 4 + tx) as usize];
            assert_eq!(px[(y * 8 + x) as usize], want, "pixel {x},{y}");
        }
    }
}

#[test]
fn texels_are_modulated_by_the_colour() {
    let tex = Surface {
        offset: 0x400,
        stride: 4,
        width: 1,
        height: 1,
    };
    let tri = |c| {
        [
            Vertex {
                x: 0,
                y: 0,
                u: 0,
                v: 0,
                color: c,
            },
            Vertex {
                x: 4 * ONE,
                y: 0,
                u: 0,
                v: 0,
                color: c,
            },
            Vertex {
                x: 0,
                y: 4 * ONE,
                u: 0,
                v: 0,
                color: c,
            },
        ]
    };
    // A: ff * 80, R: 80 * ff, G: 40 * 00, B: c0 * 40 = 48.19.
    let px = render(4, 4, Some((tex, vec![0xff80_40c0])), &[tri(0x80ff_0040)]);
    assert_eq!(px[0], 0x8080_0030);
}

#[test]
#[ignore = "timing, run by hand: cargo test --release -- --ignored --nocapture"]
fn perf_1280x720_frame() {
    let t = Surface {
        offset: 0,
        stride: 1280 * 4,
        width: 1280,
        height: 720,
    };
    let tex = Surface {
        offset: t.end().unwrap_or(0) as u32,
        stride: 256 * 4,
        width: 256,
        height: 256,
    };
    let mut gmem = vec![0u8; tex.end().unwrap_or(0) as usize];
    let mut rng = Lcg(3);
    let tris: Vec<[Vertex; 3]> = (0..3000)
        .map(|_| {
            let (cx, cy) = (rng.range(0, 1280) * ONE, rng.range(0, 720) * ONE);
            [0, 1, 2].map(|_| Vertex {
                x: cx + rng.range(-40 * ONE, 40 * ONE),
                y: cy + rng.range(-40 * ONE, 40 * ONE),
                u: rng.range(-ONE, 2 * ONE),
                v: rng.range(-ONE, 2 * ONE),
                color: rng.next(),
            })
        })
        .collect();
    for texture in [None, Some(tex)] {
        let (mut row, mut spans) = (Vec::new(), DirtySpans::default());
        let mut pixels = 0;
        let start = std::time::Instant::now();
        for _ in 0..10 {
            let mut r = Rasterizer {
                gmem: &mut gmem,
                target: t,
                texture,
                row: &mut row,
                spans: &mut spans,
            };
            for tri in &tris {
                r.triangle(tri);
            }
            pixels = spans.spans().iter().map(|s| s.1 / 4).sum::<u64>();
            spans = DirtySpans::default();
        }
        println!("{pixels} pixels");
        println!(
            "textured {}: {:?} per frame",
            texture.is_some(),
            start.elapsed() / 10
        );
    }
}
