//! The effect of each command.

use sha2::{Digest, Sha256};

use super::super::testbus::{Cmds, TestBus, RESULTS, RING, VERTICES};
use super::super::{EngineBus, Surface};
use super::{device, reg64, run_all, GMEM};
use crate::cmd::{Vertex, DRAW_TEXTURED};
use crate::regs::{
    INT_FLIP_DONE, INT_PIPE_NOTIFY, INT_USER, REG_ACTHD_HI, REG_ACTHD_LO, REG_CMD_COUNT,
    REG_DSP_SURF, REG_ENGINE_STATUS, REG_FLIP_COUNT, REG_RING_HEAD, REG_SEQNO,
};

const ONE: i32 = 1 << 16;

fn vtx(x: i32, y: i32, color: u32) -> Vertex {
    Vertex {
        x: x * ONE,
        y: y * ONE,
        u: 0,
        v: 0,
        color,
    }
}

/// Pixels of a `w` x `h` surface at `offset` with `stride`.
fn pixels(bus: &TestBus, offset: usize, stride: usize, w: usize, h: usize) -> Vec<u32> {
    (0..h)
        .flat_map(|y| (0..w).map(move |x| (x, y)))
        .map(|(x, y)| bus.pixel(offset + y * stride + x * 4))
        .collect()
}

#[test]
fn noop_retires_and_updates_the_mirrors() {
    let (mut e, mut bus) = device(Cmds::default().noop().noop());
    assert!(!e.is_idle(&bus));
    assert_eq!(run_all(&mut e, &mut bus), 2);
    assert_eq!(bus.reg(REG_RING_HEAD), 8);
    assert_eq!(reg64(&bus, REG_ACTHD_LO, REG_ACTHD_HI), RING + 8);
    assert_eq!(bus.reg(REG_CMD_COUNT), 2);
    assert_eq!(bus.reg(REG_ENGINE_STATUS), 0);
    assert!(e.is_idle(&bus));
    assert_eq!(run_all(&mut e, &mut bus), 0);
    assert!(bus.raised.is_empty() && bus.dirty.is_empty());
}

#[test]
fn clear_fills_exactly_the_render_target_and_marks_its_rows() {
    // 16x4 pixels with 16 bytes of padding per row: padding must stay untouched.
    let (offset, stride) = (0x100, 16 * 4 + 16);
    let cmds = Cmds::default()
        .render_target(offset, stride, 16, 4)
        .clear(0xaabb_ccdd);
    let (mut e, mut bus) = device(cmds);
    assert_eq!(run_all(&mut e, &mut bus), 2);
    let (o, s) = (offset as usize, stride as usize);
    assert!(pixels(&bus, o, s, 16, 4).iter().all(|&p| p == 0xaabb_ccdd));
    assert_eq!(&bus.gmem[o..o + 4], &[0xdd, 0xcc, 0xbb, 0xaa]);
    let written = 16 * 4 * 4;
    assert_eq!(bus.gmem.iter().filter(|&&b| b != 0).count(), written);
    let rows: Vec<_> = (0..4).map(|y| ((o + y * s) as u64, 64)).collect();
    assert_eq!(bus.dirty, rows);
    assert_eq!(
        e.state().render_target,
        Surface::from_dwords(offset, stride, 16 | (4 << 16))
    );
}

#[test]
fn clear_of_a_packed_target_is_one_dirty_span() {
    let cmds = Cmds::default().render_target(0, 32 * 4, 32, 8).clear(1);
    let (mut e, mut bus) = device(cmds);
    run_all(&mut e, &mut bus);
    assert_eq!(bus.dirty, vec![(0, 32 * 4 * 8)]);
}

#[test]
fn draw_rasterises_the_vertex_buffer_and_marks_spans() {
    // Two triangles forming the square (2,2)-(10,10) on a 16x16 target: 64 pixels.
    let quad = [
        vtx(2, 2, 0xff00_ff00),
        vtx(10, 2, 0xff00_ff00),
        vtx(10, 10, 0xff00_ff00),
        vtx(2, 2, 0xff00_ff00),
        vtx(2, 10, 0xff00_ff00),
        vtx(10, 10, 0xff00_ff00),
    ];
    let cmds = Cmds::default()
        .render_target(0, 16 * 4, 16, 16)
        .clear(0)
        .vertex_buffer(VERTICES)
        .draw(0, 6, 0);
    let (mut e, mut bus) = device(cmds);
    bus.put_vertices(VERTICES, &quad);
    assert_eq!(run_all(&mut e, &mut bus), 4);
    let px = pixels(&bus, 0, 64, 16, 16);
    for y in 0..16 {
        for x in 0..16 {
            let inside = (2..10).contains(&x) && (2..10).contains(&y);
            assert_eq!(px[y * 16 + x] != 0, inside, "pixel {x},{y}");
        }
    }
    // After the clear's one span, only rows 2..10, columns 2..10 are reported.
    for &(off, len) in &bus.dirty[1..] {
        let (y, x) = (off / 64, off % 64 / 4);
        assert!(
            (2..10).contains(&y) && x >= 2 && x + len / 4 <= 10,
            "{off} {len}"
        );
    }
    assert_eq!(e.state().vertex_buffer, VERTICES);
}

#[test]
fn draw_reads_from_the_first_vertex() {
    let cmds = Cmds::default()
        .render_target(0, 8 * 4, 8, 8)
        .vertex_buffer(VERTICES)
        .draw(1, 3, 0);
    let (mut e, mut bus) = device(cmds);
    let far = vtx(100, 100, 5);
    bus.put_vertices(
        VERTICES,
        &[far, vtx(0, 0, 7), vtx(8, 0, 7), vtx(0, 8, 7), far],
    );
    run_all(&mut e, &mut bus);
    assert_eq!(bus.pixel(0), 7);
    // The triangle covers 28 pixels (see the rasteriser's tests), each with one byte 7.
    assert_eq!(bus.gmem.iter().filter(|&&b| b == 7).count(), 28);
}

#[test]
fn textured_draw_samples_graphics_memory() {
    // A 2x2 texture stretched over an 8x8 target: each texel covers a 4x4 quadrant.
    let tex = 0x1000;
    let texels = [0xff11_1111u32, 0xff22_2222, 0xff33_3333, 0xff44_4444];
    let corner = |x: i32, y: i32| Vertex {
        x: x * ONE,
        y: y * ONE,
        u: x * ONE / 8,
        v: y * ONE / 8,
        color: 0xffff_ffff,
    };
    let cmds = Cmds::default()
        .render_target(0, 8 * 4, 8, 8)
        .texture(tex, 2 * 4, 2, 2)
        .vertex_buffer(VERTICES)
        .draw(0, 6, DRAW_TEXTURED);
    let (mut e, mut bus) = device(cmds);
    for (i, t) in texels.iter().enumerate() {
        let at = tex as usize + 4 * i;
        bus.gmem[at..at + 4].copy_from_slice(&t.to_le_bytes());
    }
    let (a, b, c, d) = (corner(0, 0), corner(8, 0), corner(8, 8), corner(0, 8));
    bus.put_vertices(VERTICES, &[a, b, c, a, d, c]);
    assert_eq!(run_all(&mut e, &mut bus), 4);
    let px = pixels(&bus, 0, 32, 8, 8);
    for y in 0..8 {
        for x in 0..8 {
            assert_eq!(px[y * 8 + x], texels[(y / 4) * 2 + x / 4], "pixel {x},{y}");
        }
    }
}

#[test]
fn blit_copies_a_rectangle() {
    let cmds = Cmds::default().blit(0x100, 40, 0x1000, 24, 5, 3);
    let (mut e, mut bus) = device(cmds);
    for (i, b) in bus.gmem[0x100..0x200].iter_mut().enumerate() {
        *b = (i as u8).wrapping_add(1);
    }
    let before = bus.gmem.clone();
    assert_eq!(run_all(&mut e, &mut bus), 1);
    for y in 0..3 {
        let (s, d) = (0x100 + 40 * y, 0x1000 + 24 * y);
        assert_eq!(bus.gmem[d..d + 20], before[s..s + 20]);
        assert_eq!(bus.gmem[d + 20..d + 24], [0; 4]);
    }
    let want: Vec<_> = (0..3).map(|y| (0x1000 + 24 * y, 20)).collect();
    assert_eq!(bus.dirty, want);
}

#[test]
fn overlapping_blit_copies_as_if_through_a_buffer() {
    // Move 4 rows of 4 pixels one row down and one pixel right, in place.
    let stride = 64;
    let cmds = Cmds::default().blit(0, stride, stride + 4, stride, 4, 4);
    let (mut e, mut bus) = device(cmds);
    for y in 0..5usize {
        for x in 0..6usize {
            let at = y * stride as usize + x * 4;
            bus.gmem[at..at + 4].copy_from_slice(&((y * 16 + x) as u32).to_le_bytes());
        }
    }
    let before = bus.clone();
    run_all(&mut e, &mut bus);
    for y in 0..4usize {
        for x in 0..4usize {
            let src = before.pixel(y * stride as usize + x * 4);
            assert_eq!(bus.pixel((y + 1) * stride as usize + (x + 1) * 4), src);
        }
    }
}

#[test]
fn store_dword_writes_guest_memory() {
    let (mut e, mut bus) = device(Cmds::default().store(RESULTS + 4, 0xdead_beef));
    assert_eq!(run_all(&mut e, &mut bus), 1);
    assert_eq!(bus.get(RESULTS + 4), 0xdead_beef);
    assert!(bus.raised.is_empty());
}

#[test]
fn pipe_control_writes_the_seqno_and_notifies() {
    let (mut e, mut bus) = device(Cmds::default().pipe_control(RESULTS, 42));
    run_all(&mut e, &mut bus);
    assert_eq!(bus.get(RESULTS), 42);
    assert_eq!(bus.reg(REG_SEQNO), 42);
    assert_eq!(bus.raised, vec![INT_PIPE_NOTIFY]);
}

#[test]
fn user_interrupt_raises_user() {
    let (mut e, mut bus) = device(Cmds::default().user_interrupt());
    run_all(&mut e, &mut bus);
    assert_eq!(bus.raised, vec![INT_USER]);
}

#[test]
fn checksum_hashes_the_rows_only() {
    let (offset, stride, w, h) = (0x200usize, 48usize, 8usize, 5usize);
    let cmds = Cmds::default().checksum(offset as u32, stride as u32, w as u32, h as u32, RESULTS);
    let (mut e, mut bus) = device(cmds);
    for (i, b) in bus.gmem.iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    let mut h256 = Sha256::new();
    for y in 0..h {
        let at = offset + y * stride;
        h256.update(&bus.gmem[at..at + w * 4]);
    }
    let digest = h256.finalize();
    run_all(&mut e, &mut bus);
    let got = &bus.ram[(RESULTS - crate::regs::SYS_BASE) as usize..][..8];
    assert_eq!(got, &digest[..8]);
    // The padding between rows is not part of it.
    bus.gmem[offset + w * 4] ^= 0xff;
    let (mut e, mut again) =
        device(Cmds::default().checksum(offset as u32, stride as u32, w as u32, h as u32, RESULTS));
    again.gmem = bus.gmem.clone();
    run_all(&mut e, &mut again);
    assert_eq!(again.ram, bus.ram);
}

#[test]
fn flip_shows_the_surface_and_counts() {
    let (mut e, mut bus) = device(Cmds::default().flip(0x1000).flip(GMEM as u32 - 4));
    assert_eq!(run_all(&mut e, &mut bus), 2);
    assert_eq!(bus.reg(REG_DSP_SURF), GMEM as u32 - 4);
    assert_eq!(bus.reg(REG_FLIP_COUNT), 2);
    assert_eq!(bus.raised, vec![INT_FLIP_DONE, INT_FLIP_DONE]);
}
