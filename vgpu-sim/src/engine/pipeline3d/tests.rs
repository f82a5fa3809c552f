//! The 3D commands over the test device: exact pixels for small cases, the rasteriser's
//! edge cases, every refusal, and the state a restored engine resumes with.

use crate::cmd::*;
use crate::regs::{INT_CMD_ERROR, INT_GTT_ERROR, SYS_BASE};

use super::super::testbus::{Cmds, TestBus, VERTICES};
use super::super::Engine;
use super::{Pipeline3dState, Viewport};

/// Graphics memory of the test device.
const GMEM: usize = 0x40000;
/// Depth buffer offset in graphics memory.
const DEPTH: u32 = 0x10000;
/// A texture's offset in graphics memory.
const TEX: u32 = 0x20000;
/// Index buffer (graphics address).
const INDICES: u64 = SYS_BASE + 0xc000;
/// Matrices (graphics address).
const MATRIX: u64 = SYS_BASE + 0xd000;
/// Upload source (graphics address).
const UPLOAD_SRC: u64 = SYS_BASE + 0xa000;
/// 1.0 in 16.16.
const ONE: i32 = FIXED_ONE;
/// The clear colour of the tests' targets.
const BG: u32 = 0xff00_0000;

fn v(x: i32, y: i32, z: i32, color: u32) -> Vertex3d {
    Vertex3d {
        pos: [x, y, z],
        normal: [0, 0, NORMAL_ONE],
        uv: [0, 0],
        color,
    }
}

fn lo_hi(a: u64) -> [u32; 2] {
    [a as u32, (a >> 32) as u32]
}

/// A `w` x `h` target at 0 cleared to [`BG`], a depth buffer cleared to the far plane,
/// viewport over the target, the vertex and index buffers set.
fn setup(w: u32, h: u32) -> Cmds {
    Cmds::default()
        .render_target(0, w * 4, w, h)
        .clear(BG)
        .op(OP_SET_DEPTH_BUFFER, &[DEPTH, w * 4, w | (h << 16)])
        .op(OP_CLEAR_DEPTH, &[DEPTH_ONE])
        .op(OP_SET_VIEWPORT, &[0, w | (h << 16)])
        .vertex_buffer(VERTICES)
        .op(OP_SET_INDEX_BUFFER, &lo_hi(INDICES))
}

fn draw(c: Cmds, first: u32, count: u32, n: u32, flags: u32) -> Cmds {
    c.op(OP_DRAW_INDEXED, &[first, count, 0, n, flags])
}

/// Run `cmds` over `verts` and `indices`; the bus and engine after.
fn run(cmds: Cmds, verts: &[Vertex3d], indices: &[u32]) -> (Engine, TestBus) {
    let mut bus = TestBus::new(GMEM);
    for (i, v) in verts.iter().enumerate() {
        let o = (VERTICES - SYS_BASE) as usize + i * VERTEX3D_SIZE;
        bus.ram[o..o + VERTEX3D_SIZE].copy_from_slice(&v.to_bytes());
    }
    bus.put(INDICES, indices);
    bus.submit(&cmds.0);
    let mut e = Engine::new();
    e.run(&mut bus, usize::MAX);
    (e, bus)
}

/// The target's `w` x `h` pixels at offset 0.
fn image(bus: &TestBus, w: usize, h: usize) -> Vec<u32> {
    (0..w * h).map(|i| bus.pixel(i * 4)).collect()
}

/// The target as rows of '#' (drawn) and '.' (background).
fn coverage(bus: &TestBus, w: usize, h: usize) -> Vec<String> {
    let img = image(bus, w, h);
    img.chunks(w)
        .map(|r| r.iter().map(|&p| if p == BG { '.' } else { '#' }).collect())
        .collect()
}

#[test]
fn a_triangle_covers_exactly_the_expected_pixels() {
    // Identity MVP: NDC = object space. On an 8x8 viewport NDC (-1,1) is pixel corner
    // (0,0) and (1,-1) is (8,8). The triangle (0,0), (8,0), (0,8) covers the centres with
    // x + y < 7, and those on the hypotenuse (x + y = 7) only if it is a top or left edge:
    // it is neither (it goes down-left), so they stay out.
    let verts = [
        v(-ONE, ONE, ONE / 2, 0xffff_0000),
        v(ONE, ONE, ONE / 2, 0xffff_0000),
        v(-ONE, -ONE, ONE / 2, 0xffff_0000),
    ];
    let (e, bus) = run(draw(setup(8, 8), 0, 3, 3, 0), &verts, &[0, 1, 2]);
    assert!(!e.is_halted(), "{:?}", e.last_error());
    let want = [
        "#######.", "######..", "#####...", "####....", "###.....", "##......", "#.......",
        "........",
    ];
    assert_eq!(coverage(&bus, 8, 8), want);
    assert_eq!(bus.pixel(0), 0xffff_0000);
}

#[test]
fn triangles_sharing_edges_cover_every_pixel_exactly_once() {
    // A fan of 6 triangles around an off-centre point covers the 10x10 viewport; each
    // triangle drawn alone into a fresh target: every pixel belongs to exactly one.
    let c = (ONE / 5, -ONE / 3);
    let ring = [
        (-ONE, ONE),
        (ONE / 3, ONE),
        (ONE, ONE),
        (ONE, -ONE),
        (-ONE / 7, -ONE),
        (-ONE, -ONE),
    ];
    let mut verts = vec![v(c.0, c.1, ONE / 2, 0xffff_ffff)];
    verts.extend(ring.iter().map(|&(x, y)| v(x, y, ONE / 2, 0xffff_ffff)));
    let mut count = vec![0u32; 100];
    for k in 0..6u32 {
        let idx = [0, 1 + k, 1 + (k + 1) % 6];
        let (_, bus) = run(draw(setup(10, 10), 0, 3, 7, 0), &verts, &idx);
        for (c, p) in count.iter_mut().zip(image(&bus, 10, 10)) {
            *c += u32::from(p != BG);
        }
    }
    assert!(count.iter().all(|&c| c == 1), "{count:?}");
}

#[test]
fn degenerate_off_screen_and_empty_viewport_draw_nothing() {
    let verts = [
        v(-ONE, ONE, ONE / 2, 0xffff_ffff),
        v(ONE, ONE, ONE / 2, 0xffff_ffff),
        v(0, ONE, ONE / 2, 0xffff_ffff),
        // Off screen to the right (inside the guard band, outside the viewport).
        v(2 * ONE, ONE, ONE / 2, 0xffff_ffff),
        v(3 * ONE, ONE, ONE / 2, 0xffff_ffff),
        v(2 * ONE, -ONE, ONE / 2, 0xffff_ffff),
    ];
    let (e, bus) = run(draw(setup(8, 8), 0, 6, 6, 0), &verts, &[0, 1, 2, 3, 4, 5]);
    assert!(!e.is_halted());
    assert!(image(&bus, 8, 8).iter().all(|&p| p == BG));
    // An empty viewport draws nothing, even a triangle over the whole target.
    let big = [
        v(-ONE, ONE, ONE / 2, 0xffff_ffff),
        v(ONE, ONE, ONE / 2, 0xffff_ffff),
        v(-ONE, -ONE, ONE / 2, 0xffff_ffff),
    ];
    let cmds = draw(setup(8, 8).op(OP_SET_VIEWPORT, &[0, 0]), 0, 3, 3, 0);
    let (_, bus2) = run(cmds, &big, &[0, 1, 2]);
    assert!(image(&bus2, 8, 8).iter().all(|&p| p == BG));
    let n = bus2.dirty.len();
    assert_eq!(n, 2, "only the two clears: {:?}", bus2.dirty);
}

#[test]
fn cull_mode_discards_by_winding() {
    // Counter-clockwise on screen (front) and clockwise (back), side by side.
    let verts = [
        v(-ONE, ONE, ONE / 2, 0xff11_1111),
        v(-ONE, -ONE, ONE / 2, 0xff11_1111),
        v(-ONE / 4, -ONE, ONE / 2, 0xff11_1111),
        v(ONE / 4, ONE, ONE / 2, 0xff22_2222),
        v(ONE, ONE, ONE / 2, 0xff22_2222),
        v(ONE, -ONE, ONE / 2, 0xff22_2222),
    ];
    let idx = [0, 1, 2, 3, 4, 5];
    let colours = |mode| {
        let cmds = draw(setup(8, 8).op(OP_SET_CULL_MODE, &[mode]), 0, 6, 6, 0);
        let (_, bus) = run(cmds, &verts, &idx);
        let img = image(&bus, 8, 8);
        (img.contains(&0xff11_1111), img.contains(&0xff22_2222))
    };
    assert_eq!(colours(CULL_NONE), (true, true));
    assert_eq!(colours(CULL_BACK), (true, false));
    assert_eq!(colours(CULL_FRONT), (false, true));
}

#[test]
fn depth_test_keeps_the_nearest_whatever_the_order() {
    // Two full-viewport quads: near (z 0.25, red) and far (z 0.75, blue).
    let quad = |z, c| {
        [
            v(-ONE, ONE, z, c),
            v(ONE, ONE, z, c),
            v(ONE, -ONE, z, c),
            v(-ONE, -ONE, z, c),
        ]
    };
    let mut verts = quad(ONE / 4, 0xffff_0000).to_vec();
    verts.extend(quad(3 * ONE / 4, 0xff00_00ff));
    let near_first = [0, 1, 2, 0, 2, 3, 4, 5, 6, 4, 6, 7];
    let far_first = [4, 5, 6, 4, 6, 7, 0, 1, 2, 0, 2, 3];
    let depth_on = |c: Cmds| c.op(OP_SET_DEPTH_STATE, &[DEPTH_TEST | DEPTH_WRITE]);
    for idx in [near_first, far_first] {
        let (_, bus) = run(draw(depth_on(setup(4, 4)), 0, 12, 8, 0), &verts, &idx);
        assert!(image(&bus, 4, 4).iter().all(|&p| p == 0xffff_0000));
        // The depth buffer holds the near quad's depth: 0.25 of DEPTH_ONE.
        let d = u32::from_le_bytes(
            bus.gmem[DEPTH as usize..DEPTH as usize + 4]
                .try_into()
                .unwrap(),
        );
        assert_eq!(d, DEPTH_ONE / 4);
    }
    // Without the test, the last drawn wins.
    let (_, bus) = run(draw(setup(4, 4), 0, 12, 8, 0), &verts, &near_first);
    assert!(image(&bus, 4, 4).iter().all(|&p| p == 0xff00_00ff));
    // Test without write: the far quad passes against the cleared buffer, which stays.
    let cmds = setup(4, 4).op(OP_SET_DEPTH_STATE, &[DEPTH_TEST]);
    let (_, bus) = run(draw(cmds, 0, 12, 8, 0), &verts, &far_first);
    assert!(image(&bus, 4, 4).iter().all(|&p| p == 0xffff_0000));
    let d = u32::from_le_bytes(
        bus.gmem[DEPTH as usize..DEPTH as usize + 4]
            .try_into()
            .unwrap(),
    );
    assert_eq!(d, DEPTH_ONE);
}

/// A perspective matrix looking down +z: clip = (x, y, z - 1, z), so w = z, the near plane
/// is z = 1 and nothing is beyond the far plane.
fn put_perspective(bus: &mut TestBus) {
    let m: [i32; 16] = [ONE, 0, 0, 0, 0, ONE, 0, 0, 0, 0, ONE, -ONE, 0, 0, ONE, 0];
    bus.put(MATRIX, &m.map(|x| x as u32));
}

fn run_with_matrix(cmds: Cmds, verts: &[Vertex3d], idx: &[u32], prep: fn(&mut TestBus)) -> TestBus {
    let mut bus = TestBus::new(GMEM);
    for (i, v) in verts.iter().enumerate() {
        let o = (VERTICES - SYS_BASE) as usize + i * VERTEX3D_SIZE;
        bus.ram[o..o + VERTEX3D_SIZE].copy_from_slice(&v.to_bytes());
    }
    bus.put(INDICES, idx);
    prep(&mut bus);
    bus.submit(&cmds.0);
    let mut e = Engine::new();
    e.run(&mut bus, usize::MAX);
    assert!(!e.is_halted(), "{:?}", e.last_error());
    bus
}

#[test]
fn near_plane_clipping_keeps_a_crossing_triangle_from_wrapping() {
    // A (-1,-1,2) and B (1,-1,2) in front, C (0,3,-2) behind the camera. The visible part
    // is the quad A, B, (0.75, 0, 1), (-0.75, 0, 1): NDC y from -0.5 to 0, rows 8..12 of a
    // 16x16 viewport. Unclipped, C would project to y = -1.5 and the triangle would wrap.
    let verts = [
        v(-ONE, -ONE, 2 * ONE, 0xffff_ffff),
        v(ONE, -ONE, 2 * ONE, 0xffff_ffff),
        v(0, 3 * ONE, -2 * ONE, 0xffff_ffff),
    ];
    let cmds = draw(
        setup(16, 16).op(
            OP_LOAD_MATRIX,
            &[MATRIX_MVP, MATRIX as u32, (MATRIX >> 32) as u32],
        ),
        0,
        3,
        3,
        0,
    );
    let bus = run_with_matrix(cmds, &verts, &[0, 1, 2], put_perspective);
    let cov = coverage(&bus, 16, 16);
    for (y, row) in cov.iter().enumerate() {
        assert_eq!(row.contains('#'), (8..12).contains(&y), "row {y}: {row}");
    }
    // Row 8 spans NDC x -0.75..0.75 (columns 2..=13), row 11 -0.5625..0.5625 (4..=11).
    assert_eq!(cov[8], "..############..");
    assert_eq!(cov[11], "....########....");
}

#[test]
fn texture_coordinates_are_perspective_correct() {
    // A quad receding to the right: x = -1 at z = 1 (NDC -1) to x = 1 at z = 3 (NDC 1/3);
    // u runs 0..1 along it over a 2x1 texture (black, white). u = 0.5 is at x = 0, z = 2:
    // NDC 0, the middle of the 12-pixel viewport. Affine interpolation would put it at
    // NDC -1/3, column 4.
    let mut verts = [
        v(-ONE, ONE, ONE, 0xffff_ffff),
        v(ONE, 3 * ONE, 3 * ONE, 0xffff_ffff),
        v(ONE, -3 * ONE, 3 * ONE, 0xffff_ffff),
        v(-ONE, -ONE, ONE, 0xffff_ffff),
    ];
    for (v, u) in verts.iter_mut().zip([0, ONE, ONE, 0]) {
        v.uv = [u, 0];
    }
    let cmds = setup(12, 12)
        .op(
            OP_LOAD_MATRIX,
            &[MATRIX_MVP, MATRIX as u32, (MATRIX >> 32) as u32],
        )
        .texture(TEX, 8, 2, 1);
    let cmds = draw(cmds, 0, 6, 4, DRAW3D_TEXTURED);
    let bus = run_with_matrix(cmds, &verts, &[0, 1, 2, 0, 2, 3], |bus| {
        put_perspective(bus);
        bus.gmem[TEX as usize..TEX as usize + 8]
            .copy_from_slice(&[0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff]);
    });
    let (b, w) = (0xff00_0000u32, 0xffff_ffffu32);
    for y in [5, 6] {
        let row: Vec<u32> = (0..12).map(|x| bus.pixel((y * 12 + x) * 4)).collect();
        // The background is black too: columns 8.. are outside the quad.
        assert_eq!(row, [b, b, b, b, b, b, w, w, b, b, b, b], "row {y}");
    }
}

#[test]
fn lit_draws_scale_the_colour_by_the_light() {
    let verts = [
        v(-ONE, ONE, ONE / 2, 0xff64_c8ff),
        v(ONE, ONE, ONE / 2, 0xff64_c8ff),
        v(-ONE, -ONE, ONE / 2, 0xff64_c8ff),
    ];
    // Normal (0,0,1), light towards +z at half diffuse, quarter ambient: 0.75.
    let cmds = setup(4, 4).op(
        OP_SET_LIGHT,
        &[0, 0, ONE as u32, (ONE / 4) as u32, (ONE / 2) as u32],
    );
    let (_, bus) = run(draw(cmds, 0, 3, 3, DRAW3D_LIT), &verts, &[0, 1, 2]);
    assert_eq!(bus.pixel(0), 0xff4b_96bf);
    // Unlit: the vertex colour.
    let cmds = setup(4, 4).op(
        OP_SET_LIGHT,
        &[0, 0, ONE as u32, (ONE / 4) as u32, (ONE / 2) as u32],
    );
    let (_, bus) = run(draw(cmds, 0, 3, 3, 0), &verts, &[0, 1, 2]);
    assert_eq!(bus.pixel(0), 0xff64_c8ff);
}

#[test]
fn a_texture_rendered_in_one_pass_is_sampled_by_the_next() {
    // Pass 1: a 2x2 target at TEX, cleared, left half drawn green. Pass 2: a full-screen
    // quad on the 4x4 main target samples it with u, v 0..1.
    let mut verts = [
        v(-ONE, ONE, ONE / 2, 0xff00_ff00),
        v(0, ONE, ONE / 2, 0xff00_ff00),
        v(0, -ONE, ONE / 2, 0xff00_ff00),
        v(-ONE, -ONE, ONE / 2, 0xff00_ff00),
        v(-ONE, ONE, ONE / 2, 0xffff_ffff),
        v(ONE, ONE, ONE / 2, 0xffff_ffff),
        v(ONE, -ONE, ONE / 2, 0xffff_ffff),
        v(-ONE, -ONE, ONE / 2, 0xffff_ffff),
    ];
    for (v, uv) in verts[4..]
        .iter_mut()
        .zip([[0, 0], [ONE, 0], [ONE, ONE], [0, ONE]])
    {
        v.uv = uv;
    }
    let cmds = Cmds::default()
        .render_target(TEX, 8, 2, 2)
        .clear(0xff80_0000)
        .op(OP_SET_VIEWPORT, &[0, 2 | (2 << 16)])
        .vertex_buffer(VERTICES)
        .op(OP_SET_INDEX_BUFFER, &lo_hi(INDICES))
        .op(OP_DRAW_INDEXED, &[0, 6, 0, 8, 0])
        .render_target(0, 16, 4, 4)
        .clear(BG)
        .op(OP_SET_VIEWPORT, &[0, 4 | (4 << 16)])
        .texture(TEX, 8, 2, 2)
        .op(OP_DRAW_INDEXED, &[6, 6, 0, 8, DRAW3D_TEXTURED]);
    let (e, bus) = run(cmds, &verts, &[0, 1, 2, 0, 2, 3, 4, 5, 6, 4, 6, 7]);
    assert!(!e.is_halted(), "{:?}", e.last_error());
    let (g, r) = (0xff00_ff00u32, 0xff80_0000u32);
    let want: Vec<u32> = (0..16).map(|i| if i % 4 < 2 { g } else { r }).collect();
    assert_eq!(image(&bus, 4, 4), want);
}

#[test]
fn upload_copies_rows_from_guest_ram_and_marks_them() {
    let cmds = Cmds::default().op(
        OP_UPLOAD,
        &[
            UPLOAD_SRC as u32,
            (UPLOAD_SRC >> 32) as u32,
            0x100,
            64,
            2 | (3 << 16),
        ],
    );
    let mut bus = TestBus::new(GMEM);
    let px: Vec<u32> = (1..=6).collect();
    bus.put(UPLOAD_SRC, &px);
    bus.submit(&cmds.0);
    let mut e = Engine::new();
    e.run(&mut bus, usize::MAX);
    assert!(!e.is_halted());
    for y in 0..3 {
        for x in 0..2 {
            assert_eq!(bus.pixel(0x100 + y * 64 + x * 4), (y * 2 + x + 1) as u32);
        }
    }
    assert_eq!(bus.dirty, vec![(0x100, 8), (0x140, 8), (0x180, 8)]);
}

/// Run `cmds` (after [`setup`]) over one triangle and return the interrupt raised.
fn refused(cmds: Cmds) -> (u32, String) {
    let verts = [v(0, 0, 0, 0); 3];
    let (e, bus) = run(cmds, &verts, &[0, 1, 2]);
    assert!(e.is_halted());
    (
        bus.iir(),
        e.last_error().map(|e| e.to_string()).unwrap_or_default(),
    )
}

#[test]
fn every_bad_3d_command_halts_with_a_reason() {
    let cases: Vec<(Cmds, u32, &str)> = vec![
        (
            setup(4, 4).op(OP_SET_VIEWPORT, &[0, 8193]),
            INT_CMD_ERROR,
            "viewport",
        ),
        (
            setup(4, 4).op(OP_LOAD_MATRIX, &[2, MATRIX as u32, 0]),
            INT_CMD_ERROR,
            "slot",
        ),
        (
            setup(4, 4).op(OP_LOAD_MATRIX, &[0, 4, 0]),
            INT_GTT_ERROR,
            "unmapped",
        ),
        (
            setup(4, 4).op(OP_SET_DEPTH_STATE, &[4]),
            INT_CMD_ERROR,
            "depth state",
        ),
        (
            setup(4, 4).op(OP_SET_CULL_MODE, &[3]),
            INT_CMD_ERROR,
            "cull",
        ),
        (
            setup(4, 4).op(OP_SET_LIGHT, &[0, 0, 0, ONE as u32 + 1, 0]),
            INT_CMD_ERROR,
            "light",
        ),
        (
            setup(4, 4).op(OP_SET_DEPTH_BUFFER, &[GMEM as u32, 16, 4 | (4 << 16)]),
            INT_CMD_ERROR,
            "depth buffer",
        ),
        (
            draw(setup(4, 4), 0, 4, 3, 0),
            INT_CMD_ERROR,
            "multiple of 3",
        ),
        (
            draw(setup(4, 4), 0, 3, MAX_DRAW_VERTICES + 1, 0),
            INT_CMD_ERROR,
            "exceeds",
        ),
        (draw(setup(4, 4), 0, 3, 3, 4), INT_CMD_ERROR, "flags"),
        (
            draw(setup(4, 4), 0, 3, 3, DRAW3D_TEXTURED),
            INT_CMD_ERROR,
            "texture",
        ),
        (draw(setup(4, 4), 0, 3, 2, 0), INT_CMD_ERROR, "index 2"),
        (
            draw(
                setup(4, 4)
                    .op(OP_SET_DEPTH_BUFFER, &[DEPTH, 16, 4 | (3 << 16)])
                    .op(OP_SET_DEPTH_STATE, &[DEPTH_TEST]),
                0,
                3,
                3,
                0,
            ),
            INT_CMD_ERROR,
            "does not cover",
        ),
        (
            // Rows past the end of guest RAM: the DMA faults part-way.
            setup(4, 4).op(
                OP_UPLOAD,
                &[
                    (SYS_BASE + 0xff00) as u32,
                    (SYS_BASE >> 32) as u32,
                    0,
                    64,
                    16 | (16 << 16),
                ],
            ),
            INT_GTT_ERROR,
            "unmapped",
        ),
        (
            draw(
                setup(4, 4).op(OP_SET_INDEX_BUFFER, &lo_hi(SYS_BASE + 0xfffc)),
                0,
                3,
                3,
                0,
            ),
            INT_GTT_ERROR,
            "unmapped",
        ),
    ];
    for (cmds, int, why) in cases {
        let (iir, msg) = refused(cmds);
        assert_eq!(iir & int, int, "{why}: {msg}");
        assert!(msg.contains(why), "{why}: {msg}");
    }
}

#[test]
fn the_3d_state_follows_the_commands_and_survives_a_restore() {
    let m: [i32; 16] = core::array::from_fn(|i| i as i32 * 3 - 7);
    let cmds = setup(8, 4)
        .op(
            OP_LOAD_MATRIX,
            &[MATRIX_NORMAL, MATRIX as u32, (MATRIX >> 32) as u32],
        )
        .op(OP_SET_DEPTH_STATE, &[DEPTH_WRITE])
        .op(OP_SET_CULL_MODE, &[CULL_FRONT])
        .op(OP_SET_LIGHT, &[1, 2, 3, 4, 5])
        .op(OP_SET_VIEWPORT, &[1 | (2 << 16), 5 | (6 << 16)]);
    let mut bus = TestBus::new(GMEM);
    bus.put(MATRIX, &m.map(|x| x as u32));
    bus.submit(&cmds.0);
    let mut e = Engine::new();
    e.run(&mut bus, usize::MAX);
    let st = e.pipeline3d_state();
    let want = Pipeline3dState {
        viewport: Viewport {
            x: 1,
            y: 2,
            width: 5,
            height: 6,
        },
        normal: m,
        depth_buffer: super::super::Surface::from_dwords(DEPTH, 32, 8 | (4 << 16)),
        depth_flags: DEPTH_WRITE,
        cull: CULL_FRONT,
        light: super::Light {
            dir: [1, 2, 3],
            ambient: 4,
            diffuse: 5,
        },
        index_buffer: INDICES,
        ..Pipeline3dState::default()
    };
    assert_eq!(st, want);
    let restored = Engine::from_states(GMEM as u64, &e.state(), &st).expect("restores");
    assert_eq!(restored.pipeline3d_state(), want);
    assert!(Engine::from_states(0x100, &e.state(), &st).is_err());
    let mut e = restored;
    e.reset();
    assert_eq!(e.pipeline3d_state(), Pipeline3dState::default());
}
